//! The delivery engine against the Stratum emulator (real client, real mTLS on loopback) on both
//! store backends: faults injected, every registration ends in the register exactly once;
//! rejections keep the register's reason; the circuit breaker pauses a register that is down;
//! several engines (replicas) share one store without sending anything twice; a half-open
//! breaker is never stuck; an older version never overwrites a newer one or undoes a withdrawal;
//! shutdown leaves the leases of sends still in flight; keys re-created after a restore are
//! looked up first (against an emulator without the 409 rule, which would accept a duplicate);
//! a drain takes over the leases a dead process left; the alert rules name only metrics
//! `/metrics` publishes.

mod admin_support;
mod common;

use common::TestStore;
use registerbrygga::config::{CircuitSettings, DeliverySettings, RegisterSettings, RetrySettings, Secret, UnitBinding};
use registerbrygga::delivery::{DeliveryEngine, Lane};
use registerbrygga::sandbox::stratum::{self as emulator, EmulatorHandle, EmulatorOptions, Faults};
use registerbrygga::sandbox::tls::{sandbox_client_settings, CertSet};
use registerbrygga::sinks::stratum::StratumClient;
use registerbrygga::store::*;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

const UNITS: [(&str, &str); 4] = [("SE2321000156-FT01", "1701"), ("SE2321000156-FT02", "1702"), ("SE2321000156-FT03", "1703"), ("SE2321000156-FT04", "1704")];

/// A valid 12-digit personnummer for index `i` (Luhn check digit computed).
fn pnr(i: usize) -> String {
    let body = format!("{:02}{:02}{:02}{:03}", 40 + (i / 9000) % 50, 1 + (i / 300) % 12, 1 + (i / 10) % 28, 100 + i % 900);
    let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
    format!("19{body}{}", registerbrygga::model::luhn_check_digit(&digits))
}

fn fv(pnr: &str, date: &str, nrs: i64) -> Map<String, Value> {
    json!({
        "SubjectKey": pnr, "EventDate": date, "FV_PainNRS": nrs,
        "FV_EQ5D_Mobility": 2, "FV_EQ5D_SelfCare": 1, "FV_EQ5D_UsualActivities": 2,
        "FV_EQ5D_PainDiscomfort": 3, "FV_EQ5D_AnxietyDepression": 1, "FV_EQVAS": 70,
        "FV_WantsSurgery": false, "FV_MainJoint": 2
    })
    .as_object()
    .unwrap()
    .clone()
}

fn upsert(i: usize, nrs: i64) -> OutboxChange {
    let p = pnr(i);
    let unit = UNITS[i % 4].0;
    let payload = fv(&p, "2026-03-02", nrs);
    let mut lookup = Map::new();
    lookup.insert("SubjectKey".into(), json!(p));
    lookup.insert("EventDate".into(), json!("2026-03-02"));
    OutboxChange::Upsert {
        key: RecordKey { idem_key: format!("sar|{unit}|pk{i}|knee|FVPat"), register: "sar".into(), connector: "artros".into(), unit: unit.into(), form: "FVPat".into(), subject: Some(format!("pk{i}")) },
        payload,
        lookup,
        correlation_id: "test".into(),
        detail: json!({}),
    }
}

struct Env {
    emu: EmulatorHandle,
    settings: RegisterSettings,
}

async fn start(ts: &TestStore) -> Env {
    let certs = CertSet::ensure(&ts.dir.path().join("certs")).unwrap();
    let emu = emulator::start(EmulatorOptions::new(certs.clone())).await.unwrap();
    let key_file = ts.dir.path().join("apikey");
    std::fs::write(&key_file, emu.api_key()).unwrap();
    let settings = RegisterSettings {
        base_url: emu.base_url(),
        register_id: 104,
        api_key: Some(Secret::from_file(key_file)),
        tls: sandbox_client_settings(&certs),
        units: UNITS.iter().map(|(h, c)| UnitBinding { hsa_id: h.to_string(), unit_code: c.to_string(), name: None }).collect(),
        timeout_seconds: 2,
        rate_limit_per_second: 10_000,
        retry: RetrySettings { initial_delay_ms: 20, multiplier: 2.0, max_delay_ms: 400, max_attempts: 60, max_elapsed_seconds: 600, jitter: true },
        circuit: CircuitSettings { failure_threshold: 1000, open_seconds: 1, ..Default::default() },
        ..Default::default()
    };
    Env { emu, settings }
}

fn engine(ts: &TestStore, env: &Env, owner: &str, settings: RegisterSettings) -> DeliveryEngine {
    engine_with(ts, env, owner, settings, DeliverySettings { workers: 4, batch_size: 16, lease_seconds: 10, heartbeat_seconds: 2, rescue_interval_seconds: 1, poll_interval_ms: 20, enabled: true })
}

fn engine_with(ts: &TestStore, env: &Env, owner: &str, settings: RegisterSettings, delivery: DeliverySettings) -> DeliveryEngine {
    let client = Arc::new(StratumClient::new("sar", &settings, Some(ts.store.clone())).unwrap());
    DeliveryEngine::new(ts.store.clone(), vec![Lane::new("sar", client, settings)], delivery, owner)
    .tap(|_| {
        let _ = &env.emu;
    })
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&Self)) -> Self {
        f(&self);
        self
    }
}
impl<T> Tap for T {}

/// Drain until nothing is pending or sending (retries included), or give up.
async fn deliver_all(ts: &TestStore, e: &DeliveryEngine, within: Duration) {
    let end = std::time::Instant::now() + within;
    loop {
        // The drain itself rescues leases lost to injected timeouts.
        e.drain(Duration::from_secs(1)).await.unwrap();
        if ts.store.queue_depth().await.unwrap() == 0 {
            return;
        }
        if std::time::Instant::now() >= end {
            let left = ts.store.records(&RecordFilter { limit: Some(5), ..Default::default() }).await.unwrap();
            for r in left.iter().filter(|r| matches!(r.state, RecordState::Pending | RecordState::Sending)) {
                eprintln!("left: {} {:?} attempts={} next={} err={:?}", r.id, r.state, r.attempts, r.next_attempt, r.last_error);
            }
            panic!("delivery did not finish in {within:?}: {} left", ts.store.queue_depth().await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn emulator_subjects(env: &Env) -> Vec<String> {
    let mut s: Vec<String> = env.emu.registrations(104, "FVPat").iter().map(|r| r.subject_key.clone().unwrap_or_default()).collect();
    s.sort();
    s
}

both_backends!(faults_still_end_exactly_once, |ts: TestStore| async move {
    let env = start(&ts).await;
    let n = 160;
    ts.store.apply(ChangeSet { outbox: (0..n).map(|i| upsert(i, 5)).collect(), ..Default::default() }).await.unwrap();
    env.emu.set_faults(Faults { error_share: 0.20, rate_limit_share: 0.05, retry_after_seconds: 1, timeout_share: 0.05, timeout_ms: 2500, drop_share: 0.025, drop_after_share: 0.025, ..Default::default() });
    let e = engine(&ts, &env, "w1", env.settings.clone());
    deliver_all(&ts, &e, Duration::from_secs(60)).await;
    env.emu.clear_faults();

    let mut expected: Vec<String> = (0..n).map(pnr).collect();
    expected.sort();
    expected.dedup();
    assert_eq!(expected.len(), n, "test personnummer must be distinct");
    assert_eq!(emulator_subjects(&env), expected, "the register holds every registration exactly once");
    let posts = env.emu.counts().total().post;
    assert_eq!(posts, n as u64, "each registration was created once (lookups resolved unknown outcomes)");
    let delivered = ts.store.records(&RecordFilter { state: Some(RecordState::Delivered), limit: Some(10_000), ..Default::default() }).await.unwrap();
    assert_eq!(delivered.len(), n);
    assert!(e.counters.retried.load(std::sync::atomic::Ordering::Relaxed) > 0, "faults were injected and retried");
    let v = ts.store.audit_verify().await.unwrap();
    assert!(v.ok, "{v:?}");

    // A journal change afterwards is one PUT of the changed column, not a second registration.
    ts.store.apply(ChangeSet { outbox: vec![upsert(3, 9)], ..Default::default() }).await.unwrap();
    deliver_all(&ts, &e, Duration::from_secs(30)).await;
    let total = env.emu.counts().total();
    assert_eq!(total.post, n as u64);
    assert_eq!(total.put, 1);
    let held = env.emu.registrations(104, "FVPat");
    let one = held.iter().find(|r| r.subject_key.as_deref() == Some(pnr(3).as_str())).unwrap();
    assert_eq!(one.columns["FV_PainNRS"], json!(9));
});

both_backends!(rejection_keeps_the_registers_reason, |ts: TestStore| async move {
    let env = start(&ts).await;
    // Valid for our validation, refused by the register: a duplicate of SubjectKey + EventDate in
    // one unit under a different key (two journal episodes mapped to the same date). The register
    // answers 409; the lookup finds the first episode's registration, which must not be taken over.
    let mut a = upsert(1, 5);
    let mut b = upsert(1, 6);
    if let OutboxChange::Upsert { key, .. } = &mut b {
        key.idem_key = "sar|SE2321000156-FT02|pk1|hip|FVPat".into();
    }
    if let OutboxChange::Upsert { payload, .. } = &mut a {
        payload.insert("FV_MainJoint".into(), json!(2));
    }
    ts.store.apply(ChangeSet { outbox: vec![a], ..Default::default() }).await.unwrap();
    let e = engine(&ts, &env, "w1", env.settings.clone());
    deliver_all(&ts, &e, Duration::from_secs(30)).await;
    ts.store.apply(ChangeSet { outbox: vec![b], ..Default::default() }).await.unwrap();
    deliver_all(&ts, &e, Duration::from_secs(30)).await;
    // Local validation failures are rejections too, with the column named and no HTTP call.
    let mut bad = upsert(2, 5);
    if let OutboxChange::Upsert { payload, .. } = &mut bad {
        payload.insert("FV_PainNRS".into(), json!(11));
    }
    let before = env.emu.requests();
    ts.store.apply(ChangeSet { outbox: vec![bad], ..Default::default() }).await.unwrap();
    deliver_all(&ts, &e, Duration::from_secs(30)).await;
    let rejected = ts.store.records(&RecordFilter { state: Some(RecordState::Rejected), limit: Some(10), ..Default::default() }).await.unwrap();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    // The duplicate episode is not silently merged into the first one's registration.
    let dup = rejected.iter().find(|r| r.idem_key.contains("|hip|")).unwrap();
    assert!(dup.reason.as_deref().unwrap_or("").contains("already holds"), "{:?}", dup.reason);
    assert_eq!(env.emu.registrations(104, "FVPat").iter().filter(|r| r.subject_key.as_deref() == Some(pnr(1).as_str())).count(), 1);
    let bad = rejected.iter().find(|r| r.idem_key.contains("pk2")).unwrap();
    assert!(bad.reason.as_deref().unwrap_or("").contains("FV_PainNRS"), "{:?}", bad.reason);
    assert!(env.emu.requests() >= before);
    let ev = ts.store.audit_search(&AuditQuery { kind: Some("record.rejected".into()), ..Default::default() }).await.unwrap();
    assert!(ev.iter().any(|e| e.detail["reason"].as_str().unwrap_or("").contains("FV_PainNRS")));
    assert!(!serde_json::to_string(&ev).unwrap().contains(&pnr(2)), "no personnummer in the audit log");
});

both_backends!(circuit_breaker_pauses_a_register_that_is_down, |ts: TestStore| async move {
    let env = start(&ts).await;
    let mut s = env.settings.clone();
    s.circuit = CircuitSettings { failure_threshold: 3, open_seconds: 2, ..Default::default() };
    ts.store.apply(ChangeSet { outbox: (0..30).map(|i| upsert(i, 5)).collect(), ..Default::default() }).await.unwrap();
    env.emu.set_faults(Faults { error_share: 1.0, ..Default::default() });
    let e = engine(&ts, &env, "w1", s);
    e.drain(Duration::from_secs(1)).await.unwrap();
    let during = env.emu.requests();
    tokio::time::sleep(Duration::from_millis(500)).await;
    e.drain(Duration::from_millis(500)).await.unwrap();
    assert_eq!(env.emu.requests(), during, "an open circuit sends nothing");
    let ev = ts.store.audit_search(&AuditQuery { kind: Some("circuit.open".into()), ..Default::default() }).await.unwrap();
    assert_eq!(ev.len(), 1);
    // The register recovers: after the pause a trial succeeds and everything is delivered.
    env.emu.clear_faults();
    tokio::time::sleep(Duration::from_secs(2)).await;
    deliver_all(&ts, &e, Duration::from_secs(60)).await;
    assert_eq!(env.emu.registrations(104, "FVPat").len(), 30);
    assert_eq!(ts.store.audit_search(&AuditQuery { kind: Some("circuit.closed".into()), ..Default::default() }).await.unwrap().len(), 1);
});

both_backends!(replicas_share_the_work_without_duplicates, |ts: TestStore| async move {
    let env = start(&ts).await;
    let n = 200;
    ts.store.apply(ChangeSet { outbox: (0..n).map(|i| upsert(i, 4)).collect(), ..Default::default() }).await.unwrap();
    env.emu.set_faults(Faults { error_share: 0.1, slow_share: 0.2, slow_ms: 30, ..Default::default() });
    let engines: Vec<Arc<DeliveryEngine>> = (0..3).map(|i| Arc::new(engine(&ts, &env, &format!("replica-{i}"), env.settings.clone()))).collect();
    let mut handles = vec![];
    for e in &engines {
        let e = e.clone();
        handles.push(tokio::spawn(async move { e.drain(Duration::from_secs(60)).await.unwrap() }));
    }
    for h in handles {
        h.await.unwrap();
    }
    deliver_all(&ts, &engines[0], Duration::from_secs(60)).await;
    assert_eq!(emulator_subjects(&env).len(), n);
    assert_eq!(env.emu.counts().total().post, n as u64);
    let worked: Vec<u64> = engines.iter().map(|e| e.counters.delivered.load(std::sync::atomic::Ordering::Relaxed)).collect();
    assert!(worked.iter().filter(|w| **w > 0).count() >= 2, "work was shared: {worked:?}");
    assert!(ts.store.audit_verify().await.unwrap().ok);
});

// ---------------------------------------------------------------------------------------------
// Issue 17

both_backends!(half_open_breaker_survives_backoff_longer_than_the_open_period, |ts: TestStore| async move {
    let env = start(&ts).await;
    let mut s = env.settings.clone();
    // The register fails once; the breaker opens for 1 s, but the records' backoff is 3 s: the
    // first trial after the open period finds nothing due.
    s.circuit = CircuitSettings { failure_threshold: 1, open_seconds: 1, ..Default::default() };
    s.retry = RetrySettings { initial_delay_ms: 3000, multiplier: 1.0, max_delay_ms: 3000, max_attempts: 10, max_elapsed_seconds: 600, jitter: false };
    ts.store.apply(ChangeSet { outbox: (0..3).map(|i| upsert(i, 5)).collect(), ..Default::default() }).await.unwrap();
    env.emu.set_faults(Faults { error_share: 1.0, ..Default::default() });
    let e = engine(&ts, &env, "w1", s);
    e.drain(Duration::from_millis(300)).await.unwrap();
    assert_eq!(ts.store.audit_search(&AuditQuery { kind: Some("circuit.open".into()), ..Default::default() }).await.unwrap().len(), 1);
    env.emu.clear_faults();
    // The register is back. Delivery must resume once the records are due.
    deliver_all(&ts, &e, Duration::from_secs(20)).await;
    assert_eq!(env.emu.registrations(104, "FVPat").len(), 3);
    assert_eq!(ts.store.audit_search(&AuditQuery { kind: Some("circuit.closed".into()), ..Default::default() }).await.unwrap().len(), 1);
});

both_backends!(an_older_version_never_overwrites_a_newer_one_or_undoes_a_withdrawal, |ts: TestStore| async move {
    let env = start(&ts).await;
    let mut s = env.settings.clone();
    // v1's retry comes well after v2 has been delivered.
    s.retry = RetrySettings { initial_delay_ms: 1500, multiplier: 1.0, max_delay_ms: 1500, max_attempts: 20, max_elapsed_seconds: 600, jitter: false };
    let e = Arc::new(engine(&ts, &env, "w1", s));
    // One delivery first, so the unit's session and the metadata are in place.
    ts.store.apply(ChangeSet { outbox: vec![upsert(8, 5)], ..Default::default() }).await.unwrap();
    deliver_all(&ts, &e, Duration::from_secs(20)).await;
    // v1 of two registrations goes out; the register stores both but its answers come too late.
    ts.store.apply(ChangeSet { outbox: vec![upsert(0, 5), upsert(4, 5)], ..Default::default() }).await.unwrap();
    env.emu.set_faults(Faults { timeout_share: 1.0, timeout_ms: 3000, ..Default::default() });
    let e2 = e.clone();
    let batch = tokio::spawn(async move { e2.deliver_batch(&["sar".to_string()]).await.unwrap() });
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !(emulator_subjects(&env).contains(&pnr(0)) && emulator_subjects(&env).contains(&pnr(4))) {
        assert!(std::time::Instant::now() < until, "the register never received v1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While v1 is in flight: the journal changes one (v2 = an update) and the patient of the
    // other opts out (v2 = a withdrawal).
    let withdrawn = match upsert(4, 5) {
        OutboxChange::Upsert { key, .. } => key.idem_key,
        _ => unreachable!(),
    };
    ts.store
        .apply(ChangeSet {
            outbox: vec![upsert(0, 9), OutboxChange::Retract { idem_key: withdrawn, reason: "opt-out".into(), correlation_id: "t".into(), actor: "system".into() }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(batch.await.unwrap(), 2, "v1 of both timed out");
    env.emu.clear_faults();
    deliver_all(&ts, &e, Duration::from_secs(30)).await;
    // Past v1's retry time: nothing older comes back.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    deliver_all(&ts, &e, Duration::from_secs(30)).await;
    let held = env.emu.registrations(104, "FVPat");
    let updated: Vec<_> = held.iter().filter(|r| r.subject_key.as_deref() == Some(pnr(0).as_str())).collect();
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0].columns["FV_PainNRS"], json!(9), "v2's answer stays; v1 did not overwrite it");
    assert!(!emulator_subjects(&env).contains(&pnr(4)), "the withdrawal holds: v1 did not re-create the registration");
    assert_eq!(env.emu.counts().total().post, 3, "no registration was created twice");
});

both_backends!(shutdown_leaves_the_leases_of_sends_still_in_flight, |ts: TestStore| async move {
    let env = start(&ts).await;
    let mut s = env.settings.clone();
    s.timeout_seconds = 30;
    ts.store.apply(ChangeSet { outbox: vec![upsert(1, 5)], ..Default::default() }).await.unwrap();
    // Every request hangs for 5 s: the send is still in flight when the grace period ends.
    env.emu.set_faults(Faults { slow_share: 1.0, slow_ms: 5000, ..Default::default() });
    let ds = DeliverySettings { workers: 2, batch_size: 16, lease_seconds: 2, heartbeat_seconds: 1, rescue_interval_seconds: 1, poll_interval_ms: 20, enabled: true };
    let e = Arc::new(engine_with(&ts, &env, "w1", s, ds));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(e.clone().run(rx, Duration::from_millis(500)));
    let id = ts.store.records(&RecordFilter { limit: Some(1), ..Default::default() }).await.unwrap()[0].id;
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while ts.store.record(id).await.unwrap().unwrap().state != RecordState::Sending {
        assert!(std::time::Instant::now() < until, "the record was never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = std::time::Instant::now();
    stop.send(true).unwrap();
    run.await.unwrap().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3), "shutdown waited {:?}", t0.elapsed());
    // The send may still reach the register: the lease is not handed back...
    let r = ts.store.record(id).await.unwrap().unwrap();
    assert_eq!((r.state, r.lease_owner.as_deref()), (RecordState::Sending, Some("w1")), "a lease whose send may be in flight is left to expire");
    // ...and the worker is gone: its heartbeat no longer renews the lease, which expires and
    // is rescued with the outcome unknown (the next send looks first).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(ts.store.rescue_expired().await.unwrap(), 1);
    env.emu.clear_faults();
    let again = ts.store.claim("w2", &[], 10, 60).await.unwrap().remove(0);
    assert_eq!(again.record.id, id);
    assert!(again.outcome_unknown_before);
});

// A process killed mid-send leaves its records `sending` under a lease nobody renews. A later
// `run --once` (a drain, with no daemon running and so no rescuer task) must take them over
// when the lease expires, not wait out its deadline with the work still queued.
both_backends!(a_drain_takes_over_the_leases_a_dead_process_left, |ts: TestStore| async move {
    let env = start(&ts).await;
    let n = 3;
    ts.store.apply(ChangeSet { outbox: (0..n).map(|i| upsert(i, 5)).collect(), ..Default::default() }).await.unwrap();
    let dead = ts.store.claim("dead", &[], 10, 1).await.unwrap();
    assert_eq!(dead.len(), n);
    let e = engine(&ts, &env, "next", env.settings.clone());
    let sent = e.drain(Duration::from_secs(20)).await.unwrap();
    assert_eq!(sent, n, "every record the dead process held was sent once its lease expired");
    assert_eq!(ts.store.queue_depth().await.unwrap(), 0);
    assert_eq!(e.counters.rescued.load(std::sync::atomic::Ordering::Relaxed), n as u64);
    assert_eq!(env.emu.counts().total().post, n as u64);
    for c in &dead {
        assert_eq!(ts.store.record(c.record.id).await.unwrap().unwrap().state, RecordState::Delivered);
    }
});

both_backends!(keys_recreated_after_a_restore_are_looked_up_before_they_are_created, |ts: TestStore| async move {
    let env = start(&ts).await;
    // A register without the 409 rule: a second create of the same registration is accepted.
    env.emu.set_unique_rule(false);
    let n = 5;
    ts.store.apply(ChangeSet { outbox: (0..n).map(|i| upsert(i, 5)).collect(), ..Default::default() }).await.unwrap();
    deliver_all(&ts, &engine(&ts, &env, "w1", env.settings.clone()), Duration::from_secs(30)).await;
    assert_eq!(env.emu.counts().total().post, n as u64);
    // The store is restored from a backup taken before any of this: it knows none of the keys.
    let backend = match ts.store.dialect() {
        registerbrygga::store::sql::Dialect::Sqlite => registerbrygga::config::Backend::Sqlite,
        registerbrygga::store::sql::Dialect::Postgres => registerbrygga::config::Backend::Postgres,
    };
    let restored = common::store_for(backend, "restored").await;
    restored.store.mark_unknown_after_restore("drift", 7).await.unwrap();
    // The re-read after the restore re-creates the keys; their first send looks first.
    restored.store.apply(ChangeSet { outbox: (0..n).map(|i| upsert(i, 5)).collect(), ..Default::default() }).await.unwrap();
    let e = engine(&restored, &env, "w2", env.settings.clone());
    deliver_all(&restored, &e, Duration::from_secs(30)).await;
    assert_eq!(env.emu.counts().total().post, n as u64, "nothing was created twice");
    let mut expected: Vec<String> = (0..n).map(pnr).collect();
    expected.sort();
    assert_eq!(emulator_subjects(&env), expected);
    // Every key now knows its registration again.
    for i in 0..n {
        let OutboxChange::Upsert { key, .. } = upsert(i, 5) else { unreachable!() };
        assert!(restored.store.registration(&key.idem_key).await.unwrap().unwrap().event_id.is_some());
    }
});

/// Metric names (`rb_…`, and the `registerbrygga_…` style an older runbook used) in a text.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let re = regex::Regex::new(r"\b(rb|registerbrygga)_[a-z0-9_]+\b").unwrap();
    re.find_iter(text).map(|m| m.as_str().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_use_only_metrics_the_exporter_publishes() {
    use registerbrygga::admin::{self, AdminState};
    let ts = common::store_for(registerbrygga::config::Backend::Sqlite, "alerts").await;
    let app = admin_support::app_for(&ts, |_| {});
    admin_support::add_standard_users(&app).await;
    admin_support::seed(&app).await;
    let srv = admin_support::serve(AdminState::new(app)).await;
    // What a running daemon reports by itself: a send, a run, each register's breaker.
    admin::record_send("sar", "delivered", Duration::from_millis(120));
    admin::record_run("artros", "ok", Duration::from_secs(2));
    admin::record_circuit("sar", false);
    let token = admin_support::token_for(&srv.state, "lasa").await;
    let m = admin_support::Client::with_bearer(&srv.base, &token).get("/metrics").await;
    assert_eq!(m.status, 200);
    // Series names, and the family names of `# TYPE` lines (a histogram's base name).
    let mut published: std::collections::BTreeSet<String> = m
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(|c| c == '{' || c == ' ').next().unwrap().to_string())
        .collect();
    published.extend(m.body.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).map(str::to_string));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules_text = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).expect("deploy/prometheus/alerts.yml exists");
    let rules: serde_yaml::Value = serde_yaml::from_str(&rules_text).unwrap();
    let mut exprs = vec![];
    for g in rules["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            assert!(r["alert"].as_str().is_some(), "every rule is an alert: {r:?}");
            exprs.push(r["expr"].as_str().expect("every rule has an expr").to_string());
        }
    }
    assert!(exprs.len() >= 5, "{exprs:?}");
    let in_rules = metric_names(&exprs.join("\n"));
    assert!(!in_rules.is_empty());
    // The runbook's alert section names metrics too; they must be real as well.
    let runbook = std::fs::read_to_string(root.join("docs/runbook.md")).unwrap();
    let alerts_section = runbook.split("## 5.").nth(1).and_then(|s| s.split("\n## ").next()).expect("runbook §5");
    let in_runbook = metric_names(alerts_section);
    assert!(!in_runbook.is_empty(), "the runbook's alert table names metrics");
    for name in in_rules.iter().chain(in_runbook.iter()) {
        assert!(published.contains(name), "{name} is not on /metrics; published: {published:?}");
    }
    // Every alert the rules define is explained in the runbook.
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let alert = r["alert"].as_str().unwrap();
            assert!(alerts_section.contains(alert), "the runbook's §5 does not explain {alert}");
        }
    }
}
