//! The Stratum client against the Stratum emulator: real HTTPS (mTLS) on loopback, records
//! claimed from a real store, and direct HTTP requests for the emulator's own rules.

mod common;

use common::TestStore;
use futures::StreamExt;
use registerbrygga::config::{Backend, RegisterSettings, Secret, UnitBinding};
use registerbrygga::sandbox::stratum::{self as emulator, ApiKeyRights, EmulatorHandle, EmulatorOptions, Faults};
use registerbrygga::sandbox::tls::{sandbox_client_settings, CertSet};
use registerbrygga::sinks::stratum::StratumClient;
use registerbrygga::sinks::{SendResult, Sink};
use registerbrygga::store::*;
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

const UNITS: [(&str, &str); 4] = [("SE2321000156-FT01", "1701"), ("SE2321000156-FT02", "1702"), ("SE2321000156-FT03", "1703"), ("SE2321000156-FT04", "1704")];

struct Env {
    emu: EmulatorHandle,
    certs: CertSet,
    ts: TestStore,
}

async fn env_with(extra_keys: Vec<ApiKeyRights>) -> Env {
    let ts = common::store_for(Backend::Sqlite, "stratum").await;
    let certs = CertSet::ensure(&ts.dir.path().join("certs")).unwrap();
    let mut opts = EmulatorOptions::new(certs.clone());
    opts.extra_keys = extra_keys;
    let emu = emulator::start(opts).await.unwrap();
    Env { emu, certs, ts }
}

async fn env() -> Env {
    env_with(vec![]).await
}

impl Env {
    fn settings_with_key(&self, register_id: u32, key: &str) -> RegisterSettings {
        let key_file = self.ts.dir.path().join(format!("apikey-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&key_file, key).unwrap();
        RegisterSettings {
            base_url: self.emu.base_url(),
            register_id,
            api_key: Some(Secret::from_file(key_file)),
            tls: sandbox_client_settings(&self.certs),
            units: UNITS.iter().map(|(h, c)| UnitBinding { hsa_id: h.to_string(), unit_code: c.to_string(), name: None }).collect(),
            // Generous: the test machine is shared; the timeout tests use `quick_client`.
            timeout_seconds: 5,
            ..Default::default()
        }
    }
    fn client(&self, register_id: u32) -> StratumClient {
        StratumClient::new("sar", &self.settings_with_key(register_id, &self.emu.api_key()), Some(self.ts.store.clone())).unwrap()
    }
    /// A client that gives up after one second (for the timeout faults).
    fn quick_client(&self) -> StratumClient {
        let mut s = self.settings_with_key(104, &self.emu.api_key());
        s.timeout_seconds = 1;
        StratumClient::new("sar", &s, Some(self.ts.store.clone())).unwrap()
    }
    fn store(&self) -> &Store {
        &self.ts.store
    }
}

fn pnr(i: usize) -> String {
    format!("19{:02}0101{:04}", 40 + i % 50, i % 10_000)
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// A complete, valid FVPat registration.
fn fv(pnr: &str, date: &str, nrs: i64) -> Map<String, Value> {
    obj(json!({
        "SubjectKey": pnr, "EventDate": date, "FV_PainNRS": nrs,
        "FV_EQ5D_Mobility": 2, "FV_EQ5D_SelfCare": 1, "FV_EQ5D_UsualActivities": 2,
        "FV_EQ5D_PainDiscomfort": 3, "FV_EQ5D_AnxietyDepression": 1, "FV_EQVAS": 70,
        "FV_WantsSurgery": false, "FV_MainJoint": 2, "FV_WeightKg": 81.5
    }))
}

fn lookup_of(p: &Map<String, Value>) -> Map<String, Value> {
    ["SubjectKey", "EventDate"].iter().filter_map(|k| p.get(*k).map(|v| (k.to_string(), v.clone()))).collect()
}

fn upsert(idem: &str, unit: &str, form: &str, register: &str, payload: Map<String, Value>, lookup: Map<String, Value>) -> OutboxChange {
    OutboxChange::Upsert {
        key: RecordKey { idem_key: idem.into(), register: register.into(), connector: "c".into(), unit: unit.into(), form: form.into(), subject: Some("pseudo".into()) },
        payload,
        lookup,
        correlation_id: "corr".into(),
        detail: json!({}),
    }
}

async fn apply(s: &Store, changes: Vec<OutboxChange>) {
    s.apply(ChangeSet { outbox: changes, ..Default::default() }).await.unwrap();
}

async fn claim_one(s: &Store, idem: &str) -> Claimed {
    let mut all = s.claim("test", &[], 1000, 60).await.unwrap();
    assert_eq!(all.len(), 1, "expected exactly one claimable record");
    let c = all.pop().unwrap();
    assert_eq!(c.record.idem_key, idem);
    c
}

/// Apply an upsert of an FVPat registration for unit FT01 and claim it.
async fn fv_claim(s: &Store, idem: &str, payload: Map<String, Value>) -> Claimed {
    let l = lookup_of(&payload);
    apply(s, vec![upsert(idem, UNITS[0].0, "FVPat", "sar", payload, l)]).await;
    claim_one(s, idem).await
}

async fn finish(s: &Store, c: &Claimed, r: &SendResult) {
    let outcome = match r.clone() {
        SendResult::Delivered { operation, http_status, event_id, detail } => Outcome::Delivered { operation, http_status, event_id, detail },
        SendResult::Transient { operation, http_status, error, .. } => Outcome::Retry { operation, http_status, error, next_at: chrono::Utc::now() },
        SendResult::Rejected { operation, http_status, reason } => Outcome::Rejected { operation, http_status, reason },
    };
    assert!(s.finish(c, "test", outcome).await.unwrap());
}

fn delivered(r: &SendResult) -> (String, Option<String>) {
    match r {
        SendResult::Delivered { operation, event_id, .. } => (operation.clone(), event_id.clone()),
        other => panic!("expected Delivered, got {other:?}"),
    }
}

fn transient(r: &SendResult) -> (Option<u16>, String, Option<Duration>) {
    match r {
        SendResult::Transient { http_status, error, retry_after, .. } => (*http_status, error.clone(), *retry_after),
        other => panic!("expected Transient, got {other:?}"),
    }
}

fn rejected(r: &SendResult) -> (String, Option<u16>, String) {
    match r {
        SendResult::Rejected { operation, http_status, reason } => (operation.clone(), *http_status, reason.clone()),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_read_from_the_endpoints() {
    let e = env().await;
    let contract = emulator::contract_registers();
    for (id, file) in [(104u32, &contract[0]), (218, &contract[1])] {
        let c = e.client(id);
        assert!(c.metadata().is_none());
        let m = c.load_metadata().await.unwrap();
        assert_eq!(m.register, file.register);
        assert_eq!(m.forms, file.forms, "forms with their questions, in order");
        assert_eq!(m.units, file.units);
        for f in &m.forms {
            for q in &f.questions {
                assert_eq!(m.domain(q.domain.domain_id), file.domain(q.domain.domain_id), "{}", q.column_name);
            }
        }
        assert!(c.binding_problems().is_empty(), "{:?}", c.binding_problems());
        assert!(c.metadata().is_some());
    }
    let sar = e.client(104).refresh().await.unwrap();
    assert_eq!(sar.domain(10401).unwrap().domain_values.len(), 3);
    // A register that does not exist is an error, not an empty register.
    assert!(e.client(999).load_metadata().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_values_are_rejected_before_any_request() {
    let e = env().await;
    let c = e.client(104);
    c.load_metadata().await.unwrap();
    let base = fv("194001010001", "2026-03-02", 6);
    let mut cases: Vec<(&str, Map<String, Value>)> = vec![];
    let mut p = base.clone();
    p.insert("FV_ShoeSize".into(), json!(43));
    cases.push(("FV_ShoeSize", p));
    let mut p = base.clone();
    p.insert("UnitID".into(), json!(7101));
    cases.push(("UnitID", p));
    let mut p = base.clone();
    p.remove("FV_EQVAS");
    cases.push(("FV_EQVAS", p));
    let mut p = base.clone();
    p.insert("FV_MainJoint".into(), json!(9));
    cases.push(("FV_MainJoint", p));
    let mut p = base.clone();
    p.insert("FV_PainNRS".into(), json!(11));
    cases.push(("FV_PainNRS", p));
    let mut p = base.clone();
    p.insert("FV_WantsSurgery".into(), json!("ja"));
    cases.push(("FV_WantsSurgery", p));
    let mut p = base.clone();
    p.insert("EventDate".into(), json!("2026-02-30"));
    cases.push(("EventDate", p));
    let mut p = base.clone();
    p.insert("SubjectKey".into(), json!("4001010001"));
    cases.push(("SubjectKey", p));
    for (i, (column, payload)) in cases.into_iter().enumerate() {
        let before = e.emu.requests();
        let idem = format!("bad-{i}");
        let claimed = fv_claim(e.store(), &idem, payload).await;
        let r = c.send(&claimed).await;
        let (op, status, reason) = rejected(&r);
        assert_eq!((op.as_str(), status), ("VALIDATE", None));
        assert!(reason.contains(column), "{column}: {reason}");
        assert!(!reason.contains("194001010001") && !reason.contains("4001010001"), "{reason}");
        assert_eq!(e.emu.requests(), before, "{column}: no HTTP request for an invalid record");
        finish(e.store(), &claimed, &r).await;
    }
    // A unit without a binding is refused by name, also without a request.
    let before = e.emu.requests();
    let p = fv("194001010002", "2026-03-02", 6);
    apply(e.store(), vec![upsert("nobind", "SE2321000156-XX99", "FVPat", "sar", p.clone(), lookup_of(&p))]).await;
    let claimed = claim_one(e.store(), "nobind").await;
    let (_, _, reason) = rejected(&c.send(&claimed).await);
    assert!(reason.contains("SE2321000156-XX99"), "{reason}");
    assert_eq!(e.emu.requests(), before);
    assert_eq!(e.emu.counts().total(), emulator::OpCounts::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_then_put_only_changes_then_delete() {
    let e = env().await;
    let (s, c) = (e.store(), e.client(104));
    let v1 = fv("194001010003", "2026-03-02", 6);
    let claimed = fv_claim(s, "k1", v1.clone()).await;
    let r = c.send(&claimed).await;
    let (op, eid) = delivered(&r);
    assert_eq!(op, "POST");
    let eid = eid.expect("POST returns the EventID");
    finish(s, &claimed, &r).await;
    let held = e.emu.registrations(104, "FVPat");
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].event_id.to_string(), held[0].unit_code.as_str()), (eid.clone(), "1701"));
    assert_eq!(held[0].columns, v1);
    assert_eq!(held[0].subject_key.as_deref(), Some("194001010003"));

    // Version 2: one answer changed, one optional answer gone.
    let mut v2 = v1.clone();
    v2.insert("FV_PainNRS".into(), json!(3));
    v2.remove("FV_WeightKg");
    let claimed = fv_claim(s, "k1", v2.clone()).await;
    assert_eq!(claimed.registration.event_id.as_deref(), Some(eid.as_str()));
    let r = c.send(&claimed).await;
    assert_eq!(delivered(&r), ("PUT".to_string(), Some(eid.clone())));
    finish(s, &claimed, &r).await;
    let held = e.emu.registrations(104, "FVPat");
    assert_eq!(held[0].columns, v2, "the register holds exactly version 2");
    assert_eq!(e.emu.counts().get("FVPat", "1701"), emulator::OpCounts { post: 1, put: 1, delete: 0 });

    // Nothing differs from what the register holds: no request at all.
    let mut same = claimed.clone();
    same.registration.delivered_payload = Some(v2.clone());
    let before = e.emu.requests();
    assert_eq!(delivered(&c.send(&same).await), ("NOOP".to_string(), Some(eid.clone())));
    assert_eq!(e.emu.requests(), before);

    // Retract: DELETE; a second DELETE of the same registration finds it gone and is fine.
    apply(s, vec![OutboxChange::Retract { idem_key: "k1".into(), reason: "opt-out".into(), correlation_id: "corr".into(), actor: "test".into() }]).await;
    let claimed = claim_one(s, "k1").await;
    assert_eq!(claimed.record.op, Op::Retract);
    let r = c.send(&claimed).await;
    assert_eq!(delivered(&r).0, "DELETE");
    assert!(e.emu.registrations(104, "FVPat").is_empty());
    let again = c.send(&claimed).await;
    assert!(matches!(&again, SendResult::Delivered { operation, http_status: Some(404), .. } if operation == "DELETE"), "{again:?}");
    finish(s, &claimed, &r).await;
    assert_eq!(s.registration("k1").await.unwrap().unwrap().event_id, None);
    assert_eq!(e.emu.counts().get("FVPat", "1701"), emulator::OpCounts { post: 1, put: 1, delete: 1 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_write_concurrently_each_in_its_own_context() {
    let e = env().await;
    let (s, sar, pvk) = (e.store(), e.client(104), e.client(218));
    let mut changes = vec![];
    for i in 0..40 {
        let (hsa, _) = UNITS[i % 4];
        let p = fv(&pnr(i), "2026-03-02", (i % 11) as i64);
        changes.push(upsert(&format!("sar-{i}"), hsa, "FVPat", "sar", p.clone(), lookup_of(&p)));
    }
    for i in 0..8 {
        let (hsa, code) = UNITS[i % 2];
        let p = obj(json!({"Q_Unit": code, "Q_Year": 2026, "Q_Month": 1 + i / 2, "Q_Indicator": "KOL06", "Q_Varde": i, "Q_Namnare": 10, "Q_Date": "2026-04-01"}));
        let l = obj(json!({"Q_Unit": code, "Q_Year": 2026, "Q_Month": 1 + i / 2, "Q_Indicator": "KOL06"}));
        changes.push(upsert(&format!("pvk-{i}"), hsa, "Indikatorvarde", "pvk", p, l));
    }
    apply(s, changes).await;
    let claimed = s.claim("test", &[], 1000, 60).await.unwrap();
    assert_eq!(claimed.len(), 48);
    // All at once: the first write of each unit races its context selection.
    let results = futures::future::join_all(claimed.iter().map(|c| {
        let client = if c.record.register == "pvk" { &pvk } else { &sar };
        async move { (c, client.send(c).await) }
    }))
    .await;
    for (c, r) in &results {
        assert_eq!(delivered(r).0, "POST", "{}", c.record.idem_key);
        finish(s, c, r).await;
    }
    let unit_of = |hsa: &str| UNITS.iter().find(|(h, _)| *h == hsa).unwrap().1;
    let held = e.emu.registrations(104, "FVPat");
    assert_eq!(held.len(), 40);
    for i in 0..40 {
        let r = held.iter().find(|r| r.subject_key.as_deref() == Some(pnr(i).as_str())).unwrap();
        assert_eq!(r.unit_code, unit_of(UNITS[i % 4].0), "registration {i} landed in the wrong unit");
    }
    for u in UNITS {
        assert_eq!(e.emu.counts().get("FVPat", u.1).post, 10);
    }
    let aggregates = e.emu.registrations(218, "Indikatorvarde");
    assert_eq!(aggregates.len(), 8);
    for a in &aggregates {
        assert_eq!(a.columns["Q_Unit"], json!(a.unit_code), "an aggregate row landed in another unit's context");
    }
    // One session per (register, unit) that wrote.
    assert_eq!(e.emu.session_count(), 4 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_on_create_adopts_the_existing_registration() {
    let e = env().await;
    let (s, c) = (e.store(), e.client(104));
    // Someone registered the visit already (by hand, or a lost earlier answer), with NRS 8.
    let other = StratumClient::new("other", &e.settings_with_key(104, &e.emu.api_key()), None).unwrap();
    let by_hand = fv("194001010004", "2026-03-02", 8);
    apply(s, vec![upsert("hand", UNITS[0].0, "FVPat", "sar", by_hand.clone(), lookup_of(&by_hand))]).await;
    let hc = claim_one(s, "hand").await;
    let (_, existing) = delivered(&other.send(&hc).await);
    finish(s, &hc, &SendResult::Rejected { operation: "x".into(), http_status: None, reason: "test".into() }).await;

    let ours = fv("194001010004", "2026-03-02", 5);
    let claimed = fv_claim(s, "k409", ours.clone()).await;
    assert!(!claimed.outcome_unknown_before);
    let r = c.send(&claimed).await;
    assert_eq!(delivered(&r), ("PUT".to_string(), existing.clone()));
    // Adopted and persisted before the PUT went out.
    assert_eq!(s.registration("k409").await.unwrap().unwrap().event_id, existing);
    finish(s, &claimed, &r).await;
    let held = e.emu.registrations(104, "FVPat");
    assert_eq!(held.len(), 1, "no second registration");
    assert_eq!(held[0].columns, ours);
    assert_eq!(e.emu.counts().get("FVPat", "1701"), emulator::OpCounts { post: 1, put: 1, delete: 0 });

    // Identical content: adopt without writing.
    let same = fv("194001010005", "2026-03-03", 4);
    apply(s, vec![upsert("hand2", UNITS[0].0, "FVPat", "sar", same.clone(), lookup_of(&same))]).await;
    let hc = claim_one(s, "hand2").await;
    let (_, existing) = delivered(&other.send(&hc).await);
    finish(s, &hc, &SendResult::Rejected { operation: "x".into(), http_status: None, reason: "test".into() }).await;
    let claimed = fv_claim(s, "k409b", same).await;
    let r = c.send(&claimed).await;
    assert_eq!(delivered(&r), ("ADOPT".to_string(), existing));
    assert_eq!(e.emu.counts().get("FVPat", "1701"), emulator::OpCounts { post: 2, put: 1, delete: 0 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_is_looked_up_before_creating() {
    let e = env().await;
    let (s, c) = (e.store(), e.quick_client());
    c.load_metadata().await.unwrap();
    let v1 = fv("194001010006", "2026-03-02", 6);
    let claimed = fv_claim(s, "ku", v1.clone()).await;
    // Warm the unit's session so the fault hits the POST itself.
    c.query(UNITS[0].0, "FVPat", &[("SubjectKey".into(), json!("000000000000"))]).await.unwrap();
    // The register stores the registration, then the connection drops: outcome unknown.
    e.emu.set_faults(Faults { drop_after_share: 1.0, ..Default::default() });
    let r = c.send(&claimed).await;
    let (status, error, _) = transient(&r);
    assert_eq!(status, None);
    assert!(!error.contains("194001010006") && !error.contains(&e.emu.api_key()), "{error}");
    finish(s, &claimed, &r).await;
    e.emu.clear_faults();
    assert_eq!(e.emu.registrations(104, "FVPat").len(), 1, "the write landed although the answer was lost");

    let claimed = claim_one(s, "ku").await;
    assert!(claimed.outcome_unknown_before);
    assert_eq!(claimed.registration.event_id, None);
    let r = c.send(&claimed).await;
    let (op, eid) = delivered(&r);
    assert_eq!(op, "ADOPT");
    assert_eq!(eid, Some(e.emu.registrations(104, "FVPat")[0].event_id.to_string()));
    finish(s, &claimed, &r).await;
    assert_eq!(e.emu.counts().get("FVPat", "1701"), emulator::OpCounts { post: 1, put: 0, delete: 0 }, "created exactly once");

    // Same with a timeout (the answer comes after the client gave up), and a new version with
    // another EventDate queued meanwhile: the earlier version's lookup finds the registration.
    let v2 = fv("194001010007", "2026-04-01", 6);
    let claimed = fv_claim(s, "kt", v2.clone()).await;
    e.emu.set_faults(Faults { timeout_share: 1.0, timeout_ms: 2500, ..Default::default() });
    let t0 = Instant::now();
    let r = c.send(&claimed).await;
    let (_, error, _) = transient(&r);
    assert!(error.contains("no answer within"), "{error}");
    assert!(t0.elapsed() < Duration::from_millis(2400));
    finish(s, &claimed, &r).await;
    e.emu.clear_faults();
    let mut v3 = v2.clone();
    v3.insert("EventDate".into(), json!("2026-04-02"));
    let claimed = fv_claim(s, "kt", v3.clone()).await;
    assert!(claimed.outcome_unknown_before);
    assert_eq!(claimed.earlier_lookups.len(), 1);
    let r = c.send(&claimed).await;
    assert_eq!(delivered(&r).0, "PUT");
    finish(s, &claimed, &r).await;
    let held: Vec<_> = e.emu.registrations(104, "FVPat").into_iter().filter(|r| r.subject_key.as_deref() == Some("194001010007")).collect();
    assert_eq!(held.len(), 1, "created exactly once");
    assert_eq!(held[0].columns, v3);

    // A retraction after an unknown outcome looks up too; when nothing is there it is a no-op.
    let v4 = fv("194001010008", "2026-05-01", 1);
    let claimed = fv_claim(s, "kr", v4).await;
    e.emu.set_faults(Faults { drop_share: 1.0, ..Default::default() });
    let r = c.send(&claimed).await;
    transient(&r);
    finish(s, &claimed, &r).await;
    e.emu.clear_faults();
    apply(s, vec![OutboxChange::Retract { idem_key: "kr".into(), reason: "opt-out".into(), correlation_id: "c".into(), actor: "t".into() }]).await;
    let claimed = claim_one(s, "kr").await;
    assert_eq!((claimed.record.op, claimed.outcome_unknown_before), (Op::Retract, true));
    let r = c.send(&claimed).await;
    assert_eq!(delivered(&r), ("NOOP".to_string(), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_errors_and_broken_connections_are_transient() {
    let e = env().await;
    let (s, c) = (e.store(), e.quick_client());
    let claimed = fv_claim(s, "kf", fv("194001010009", "2026-03-02", 6)).await;
    c.load_metadata().await.unwrap();
    c.query(UNITS[0].0, "FVPat", &[("SubjectKey".into(), json!("000000000000"))]).await.unwrap();
    let cases = [
        (Faults { rate_limit_share: 1.0, retry_after_seconds: 7, ..Default::default() }, Some(429), Some(Duration::from_secs(7))),
        (Faults { error_share: 1.0, ..Default::default() }, Some(500), None),
        (Faults { drop_share: 1.0, ..Default::default() }, None, None),
        (Faults { timeout_share: 1.0, timeout_ms: 2000, ..Default::default() }, None, None),
    ];
    for (f, status, retry_after) in cases {
        e.emu.set_faults(f.clone());
        let r = c.send(&claimed).await;
        let (st, error, ra) = transient(&r);
        assert_eq!((st, ra), (status, retry_after), "{f:?}: {error}");
        assert!(!error.contains("194001010009") && !error.contains(&e.emu.api_key()) && !error.contains("apikey"), "{error}");
    }
    // A maintenance window: 503 with Retry-After until it ends.
    e.emu.set_faults(Faults { down_for: Some(Duration::from_secs(3)), ..Default::default() });
    let (st, _, ra) = transient(&c.send(&claimed).await);
    assert_eq!(st, Some(503));
    assert!(ra.is_some_and(|d| d >= Duration::from_secs(1) && d <= Duration::from_secs(3)), "{ra:?}");
    // Slow but within the timeout is just slow.
    e.emu.set_faults(Faults { slow_share: 1.0, slow_ms: 300, ..Default::default() });
    let t0 = Instant::now();
    let r = c.send(&claimed).await;
    e.emu.clear_faults();
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // The timeout case above created it (the answer was late), so the send may be POST or a
    // conflict resolved by adoption; either way one registration exists.
    let (op, _) = delivered(&r);
    assert!(op == "POST" || op == "ADOPT" || op == "PUT", "{op}");
    assert_eq!(e.emu.registrations(104, "FVPat").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_selects_its_context_again_and_a_stopped_register_is_transient() {
    let e = env().await;
    let (s, c) = (e.store(), e.client(104));
    let claimed = fv_claim(s, "ks1", fv("194001010012", "2026-03-02", 6)).await;
    let r = c.send(&claimed).await;
    assert_eq!(delivered(&r).0, "POST");
    finish(s, &claimed, &r).await;
    e.emu.expire_sessions();
    let claimed = fv_claim(s, "ks2", fv("194001010013", "2026-03-02", 6)).await;
    let r = c.send(&claimed).await;
    assert_eq!(delivered(&r).0, "POST");
    finish(s, &claimed, &r).await;
    let held = e.emu.registrations(104, "FVPat");
    assert_eq!(held.iter().map(|r| r.unit_code.as_str()).collect::<Vec<_>>(), vec!["1701", "1701"]);
    // The register goes away entirely: connection errors are transient.
    let claimed = fv_claim(s, "ks3", fv("194001010014", "2026-03-02", 6)).await;
    e.emu.shutdown().await;
    let (st, error, _) = transient(&c.send(&claimed).await);
    assert_eq!(st, None);
    assert!(!error.contains("194001010014"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_pauses_and_a_unit_without_rights_is_rejected() {
    let limited = "limited-key-0001".to_string();
    let e = env_with(vec![ApiKeyRights { key: limited.clone(), contexts: Some(vec![(104, "1701".into())]) }]).await;
    let s = e.store();
    let claimed = fv_claim(s, "kw", fv("194001010010", "2026-03-02", 6)).await;
    // Wrong key: transient (every record would fail alike; the circuit breaker pauses).
    let wrong = StratumClient::new("sar", &e.settings_with_key(104, "not-the-key"), None).unwrap();
    let (st, error, _) = transient(&wrong.send(&claimed).await);
    assert_eq!(st, Some(401));
    assert!(error.contains("API key") && !error.contains("not-the-key"), "{error}");

    // The limited key may write for 1701 only.
    let lc = StratumClient::new("sar", &e.settings_with_key(104, &limited), None).unwrap();
    let r = lc.send(&claimed).await;
    assert_eq!(delivered(&r).0, "POST");
    let mut other_unit = claimed.clone();
    other_unit.record.unit = UNITS[1].0.into();
    let (op, _, reason) = rejected(&lc.send(&other_unit).await);
    assert_eq!(op, "CONTEXT");
    assert!(reason.contains("1702"), "{reason}");
    // Asking the register directly for a context the key has no right to: 403.
    let raw = Raw::new(&e, Some(&limited));
    let (st, body) = raw.call(reqwest::Method::PUT, "/authentication/context", &[], Some(json!({"Context": {"ContextID": 2}}))).await;
    assert_eq!(st, 403, "{body}");
    assert_eq!(body["success"], json!(false));
}

/// Direct HTTP to the emulator, with its own cookie jar.
struct Raw {
    http: reqwest::Client,
    api: String,
    key: Option<String>,
}

impl Raw {
    fn new(e: &Env, key: Option<&str>) -> Raw {
        Raw {
            http: registerbrygga::sandbox::tls::http_client(&sandbox_client_settings(&e.certs), Duration::from_secs(5), true).unwrap(),
            api: format!("{}/stratum/api", e.emu.base_url()),
            key: key.map(str::to_string),
        }
    }
    async fn call(&self, m: reqwest::Method, path: &str, query: &[(&str, &str)], body: Option<Value>) -> (u16, Value) {
        let mut rq = self.http.request(m, format!("{}{}", self.api, path));
        if let Some(k) = &self.key {
            rq = rq.query(&[("apikey", k)]);
        }
        rq = rq.query(query);
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let r = rq.send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap())
    }
    async fn select(&self, register: u32, unit_code: &str) -> u64 {
        let (st, ctx) = self.call(reqwest::Method::GET, "/authentication/contexts", &[], None).await;
        assert_eq!(st, 200);
        let id = ctx["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["Unit"]["UnitCode"] == json!(unit_code) && c["Unit"]["Register"]["RegisterID"] == json!(register))
            .unwrap()["ContextID"]
            .as_u64()
            .unwrap();
        let (st, _) = self.call(reqwest::Method::PUT, "/authentication/context", &[], Some(json!({"Context": {"ContextID": id}}))).await;
        assert_eq!(st, 200);
        id
    }
}

fn assert_refusal(st: u16, body: &Value, status: u16, column: &str, secret: &str) {
    assert_eq!(st, status, "{body}");
    assert_eq!(body["success"], json!(false));
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains(column), "message must name {column}: {msg}");
    assert!(secret.is_empty() || !msg.contains(secret), "message must not carry the value: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_enforces_the_contract() {
    use reqwest::Method;
    let e = env().await;
    let key = e.emu.api_key();
    // Authentication.
    let (st, body) = Raw::new(&e, None).call(Method::GET, "/metadata/registers/104", &[], None).await;
    assert_eq!((st, &body["success"]), (401, &json!(false)));
    let (st, _) = Raw::new(&e, Some("wrong")).call(Method::GET, "/authentication/contexts", &[], None).await;
    assert_eq!(st, 401);
    let raw = Raw::new(&e, Some(&key));
    // Metadata shapes: the register lists forms without questions; questions come per form.
    let (st, reg) = raw.call(Method::GET, "/metadata/registers/104", &[], None).await;
    assert_eq!(st, 200);
    assert_eq!(reg["data"]["RegisterID"], json!(104));
    assert_eq!(reg["data"]["Forms"].as_array().unwrap().len(), 5);
    assert!(reg["data"]["Forms"][0].get("Questions").is_none());
    let (_, q) = raw.call(Method::GET, "/metadata/questions/form/1041", &[], None).await;
    assert_eq!(q["data"][0]["ColumnName"], json!("SubjectKey"));
    let (_, d) = raw.call(Method::GET, "/metadata/domains/10401", &[], None).await;
    assert_eq!(d["data"]["DomainValues"].as_array().unwrap().len(), 3);
    let (_, u) = raw.call(Method::GET, "/metadata/units/register/218", &[], None).await;
    assert_eq!(u["data"].as_array().unwrap().len(), 4);
    let (st, nf) = raw.call(Method::GET, "/metadata/domains/4242", &[], None).await;
    assert_eq!((st, &nf["success"]), (404, &json!(false)));
    let (_, ctx) = raw.call(Method::GET, "/authentication/contexts", &[], None).await;
    assert_eq!(ctx["data"].as_array().unwrap().len(), 8, "4 units in each of 2 registers");

    // Writes need a context; a context must exist.
    let good = Value::Object(fv("194001010011", "2026-03-02", 6));
    let (st, body) = raw.call(Method::POST, "/registrations/form/1041", &[], Some(good.clone())).await;
    assert_eq!((st, body["code"].as_str()), (403, Some("NoContext")));
    let (st, _) = raw.call(Method::PUT, "/authentication/context", &[], Some(json!({"Context": {"ContextID": 999}}))).await;
    assert_eq!(st, 403);
    raw.select(104, "1701").await;

    // Every value rule, each naming the column and never the value.
    let with = |col: &str, v: Value| {
        let mut p = fv("194001010011", "2026-03-02", 6);
        p.insert(col.into(), v);
        Some(Value::Object(p))
    };
    let post = |b| raw.call(Method::POST, "/registrations/form/1041", &[], b);
    let (st, b) = post(with("UnitID", json!(7101))).await;
    assert_refusal(st, &b, 400, "UnitID", "7101");
    let (st, b) = post(with("FV_Secret", json!("hemligt"))).await;
    assert_refusal(st, &b, 400, "FV_Secret", "hemligt");
    let (st, b) = post(with("FV_MainJoint", json!(77))).await;
    assert_refusal(st, &b, 400, "FV_MainJoint", "77");
    let (st, b) = post(with("FV_EQVAS", json!(4711))).await;
    assert_refusal(st, &b, 400, "FV_EQVAS", "4711");
    let (st, b) = post(with("FV_WeightKg", json!("sjuttio"))).await;
    assert_refusal(st, &b, 400, "FV_WeightKg", "sjuttio");
    let (st, b) = post(with("EventDate", json!("2026-13-01"))).await;
    assert_refusal(st, &b, 400, "EventDate", "2026-13-01");
    let (st, b) = post(with("SubjectKey", json!("19400101-0011"))).await;
    assert_refusal(st, &b, 400, "SubjectKey", "0011");
    let mut missing = fv("194001010011", "2026-03-02", 6);
    missing.remove("FV_MainJoint");
    let (st, b) = post(Some(Value::Object(missing))).await;
    assert_refusal(st, &b, 400, "FV_MainJoint", "");
    let (st, b) = post(Some(json!([1, 2]))).await;
    assert_eq!((st, &b["success"]), (400, &json!(false)));
    assert_eq!(e.emu.counts().total().post, 0, "nothing refused was stored");

    // Create; the same form, subject and date again in the same unit: 409 naming the columns.
    let (st, b) = post(Some(good.clone())).await;
    assert_eq!(st, 200, "{b}");
    let first = b["data"]["EventID"].as_u64().unwrap();
    let (st, b) = post(Some(good.clone())).await;
    assert_refusal(st, &b, 409, "SubjectKey", "194001010011");
    assert!(b["message"].as_str().unwrap().contains("EventDate"));
    let (st, b) = post(with("EventDate", json!("2026-03-09"))).await;
    assert_eq!(st, 200);
    let second = b["data"]["EventID"].as_u64().unwrap();
    // The same subject and date in another unit is another registration.
    let raw2 = Raw::new(&e, Some(&key));
    raw2.select(104, "1702").await;
    let (st, _) = raw2.call(Method::POST, "/registrations/form/1041", &[], Some(good.clone())).await;
    assert_eq!(st, 200);
    // A form of another register is not writable in this context.
    let (st, _) = post(Some(json!({"Q_Year": 2026}))).await;
    assert_eq!(st, 400);
    let (st, _) = raw.call(Method::POST, "/registrations/form/2179", &[], Some(json!({"Q_Year": 2026}))).await;
    assert_eq!(st, 404);

    // PUT: changed columns only; value rules apply; moving onto another registration's date is 409.
    let put = |id: u64, b: Value| {
        let path = format!("/registrations/form/1041/{id}");
        let raw = &raw;
        async move { raw.call(Method::PUT, &path, &[], Some(b)).await }
    };
    let (st, b) = put(first, json!({"FV_PainNRS": 2, "FV_WeightKg": null})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["Data"]["FV_PainNRS"], json!(2));
    assert!(b["data"]["Data"].get("FV_WeightKg").is_none());
    let (st, b) = put(first, json!({"FV_PainNRS": 12})).await;
    assert_refusal(st, &b, 400, "FV_PainNRS", "12");
    let (st, b) = put(first, json!({"FV_EQVAS": null})).await;
    assert_refusal(st, &b, 400, "FV_EQVAS", "");
    let (st, b) = put(first, json!({"UnitID": 7102})).await;
    assert_refusal(st, &b, 400, "UnitID", "7102");
    let (st, _) = put(second, json!({"EventDate": "2026-03-02"})).await;
    assert_eq!(st, 409);
    let (st, _) = put(424242, json!({"FV_PainNRS": 1})).await;
    assert_eq!(st, 404);

    // Queries run in the session's unit.
    let q = [("query", "SubjectKey eq 194001010011,EventDate eq 2026-03-02")];
    let (st, b) = raw.call(Method::GET, "/registrations/form/1041", &q, None).await;
    assert_eq!(st, 200);
    let found = b["data"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0]["EventID"].as_u64(), &found[0]["Unit"]["UnitCode"]), (Some(first), &json!("1701")));
    let (_, b) = raw.call(Method::GET, "/registrations/form/1041", &[("query", "SubjectKey eq 194001010011")], None).await;
    assert_eq!(b["data"].as_array().unwrap().len(), 2);
    let (st, _) = raw.call(Method::GET, "/registrations/form/1041", &[("query", "Shoe eq 1")], None).await;
    assert_eq!(st, 400);
    let (st, _) = raw.call(Method::GET, "/registrations/form/1041", &[("query", "nonsense")], None).await;
    assert_eq!(st, 400);

    // Another unit's session can neither see nor delete this unit's registration.
    let (_, b) = raw2.call(Method::GET, "/registrations/form/1041", &[("query", "SubjectKey eq 194001010011")], None).await;
    assert_eq!(b["data"].as_array().unwrap().len(), 1);
    let (st, _) = raw2.call(Method::DELETE, &format!("/registrations/{first}"), &[], None).await;
    assert_eq!(st, 403);
    let (st, _) = raw.call(Method::DELETE, &format!("/registrations/{first}"), &[], None).await;
    assert_eq!(st, 200);
    let (st, _) = raw.call(Method::DELETE, &format!("/registrations/{first}"), &[], None).await;
    assert_eq!(st, 404);
    let (st, b) = raw.call(Method::GET, "/registrations/abc", &[], None).await;
    assert_eq!((st, &b["success"]), (405, &json!(false)));
    let (st, b) = raw.call(Method::DELETE, "/registrations/abc", &[], None).await;
    assert_eq!((st, &b["success"]), (400, &json!(false)));
    assert_eq!(e.emu.counts().get("FVPat", "1701"), emulator::OpCounts { post: 2, put: 1, delete: 1 });
    assert_eq!(e.emu.counts().get("FVPat", "1702"), emulator::OpCounts { post: 1, put: 0, delete: 0 });

    // mTLS: no client certificate, no connection.
    let mut no_cert = sandbox_client_settings(&e.certs);
    no_cert.client_cert_file = None;
    let bare = registerbrygga::sandbox::tls::http_client(&no_cert, Duration::from_secs(5), false).unwrap();
    assert!(bare.get(format!("{}/stratum/api/metadata/registers/104?apikey={key}", e.emu.base_url())).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_over_loopback() {
    let e = env().await;
    let (s, c) = (e.store(), e.client(104));
    let n = 2000;
    let mut changes = vec![];
    for i in 0..n {
        let p = fv(&pnr(i), "2026-03-02", (i % 11) as i64);
        changes.push(upsert(&format!("t-{i}"), UNITS[i % 4].0, "FVPat", "sar", p.clone(), lookup_of(&p)));
    }
    apply(s, changes).await;
    let claimed = s.claim("test", &[], n as u32, 600).await.unwrap();
    assert_eq!(claimed.len(), n);
    c.load_metadata().await.unwrap();
    let t0 = Instant::now();
    let results: Vec<SendResult> = futures::stream::iter(claimed.iter().map(|cl| c.send(cl))).buffer_unordered(64).collect().await;
    let secs = t0.elapsed().as_secs_f64();
    assert!(results.iter().all(|r| matches!(r, SendResult::Delivered { .. })));
    assert_eq!(e.emu.counts().total().post, n as u64);
    println!("stratum throughput: {n} POSTs in {secs:.2}s = {:.0}/s", n as f64 / secs);
}
