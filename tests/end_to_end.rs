//! The whole chain on loopback: the sandbox journal (RIV-TA over mTLS) → the RIV-TA consumer →
//! the SAR episode engine → the outbox → the delivery engine → the Stratum emulator (mTLS), on
//! both store backends. The expected registrations come from the sandbox generator's own
//! bookkeeping (its `Truth`), never from the mapper.

mod common;

use common::e2e::{form_name, start, E2e};
use registerbrygga::config::Backend;
use registerbrygga::outbox::RetractReason;
use registerbrygga::registers::sar::mapping::{convert_number, Conversion, Source};
use registerbrygga::registers::sar::SarMapper;
use registerbrygga::sandbox::journal::{AnswerValue, Contract, ExpectedRegistration, Joint, SarForm};
use registerbrygga::sandbox::stratum::EmulatedRegistration;
use registerbrygga::sandbox::vocabulary::{answer, obs};
use registerbrygga::sinks::stratum::metadata::RegisterMetadata;
use registerbrygga::sinks::stratum::validate::same_value;
use registerbrygga::store::{AuditQuery, RecordFilter, RecordState};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

async fn sar_population_ends_exactly_as_expected(backend: Backend) {
    let e = start(backend, 120, "e2e_sar").await;
    let r = e.run("artrosregistret").await;
    assert_eq!(r.status, "ok", "{r:?}");
    e.deliver().await;
    let expected = e.expected();
    assert!(expected.len() > 20, "the population has artros registrations: {}", expected.len());
    let held = e.held();
    let missing: Vec<_> = expected.difference(&held).collect();
    let extra: Vec<_> = held.difference(&expected).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}\nextra {extra:?}");
    // Nothing created twice.
    assert_eq!(e.env.emulator.counts().total().post as usize, expected.len());
    // Incomplete forms are on the worklist, not in the register.
    let worklist = e.app.store.worklist(Some("artrosregistret"), None).await.unwrap();
    let expected_worklist = e.env.population.truth().sar_worklist();
    assert_eq!(worklist.len(), expected_worklist.len(), "worklist {worklist:?}");
    // A second run reads the same journal: nothing changes, nothing is sent.
    let r2 = e.run("artrosregistret").await;
    assert_eq!((r2.records_created, r2.records_updated, r2.records_retracted), (0, 0, 0), "{r2:?}");
    assert!(e.app.store.audit_verify().await.unwrap().ok);
    let rejected = e.app.store.records(&RecordFilter { state: Some(RecordState::Rejected), limit: Some(10), ..Default::default() }).await.unwrap();
    assert!(rejected.is_empty(), "{:?}", rejected.iter().map(|r| &r.reason).collect::<Vec<_>>());
    let ev = e.app.store.audit_search(&AuditQuery { kind: Some("record.delivered".into()), limit: Some(5000), ..Default::default() }).await.unwrap();
    assert_eq!(ev.len(), expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sar_population_ends_exactly_as_expected_sqlite() {
    sar_population_ends_exactly_as_expected(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sar_population_ends_exactly_as_expected_postgres() {
    sar_population_ends_exactly_as_expected(Backend::Postgres).await;
}

// ------------------------------------------------------------------------------------------
// The "done when" proofs on a population of thousands of patients.

/// Patients in the scenario: enough for every random case of the generator to occur many times
/// (about 1,000 registrations), small enough for the suite.
const SCENARIO_PATIENTS: usize = 1500;

/// (subject key, unit code, form, event date): how a registration is told apart in the register.
type RegKey = (String, String, String, String);

fn unit_code(hsa: &str) -> String {
    format!("17{}", &hsa[hsa.len() - 2..])
}

fn reg_key(r: &ExpectedRegistration) -> RegKey {
    (r.subject_key.clone(), unit_code(&r.unit), form_name(r.form).to_string(), r.event_date.to_string())
}

/// The SAR mapping as the daemon under test loaded it (the sandbox's copy of the connector).
fn sandbox_mapper(e: &E2e) -> SarMapper {
    let (connectors, problems) = registerbrygga::config::load_connectors(&e.env.connectors_dir());
    assert!(problems.is_empty(), "{problems:?}");
    let c = connectors.into_iter().find(|c| c.name == "artrosregistret").unwrap();
    let meta = RegisterMetadata::from_json(&std::fs::read("conformance/stratum/sar-104.json").unwrap()).unwrap();
    SarMapper::load(&c, &meta).unwrap()
}

fn joint_name(j: Joint) -> &'static str {
    match j {
        Joint::Hip => "hip",
        Joint::Knee => "knee",
        Joint::Hand => "hand",
    }
}

/// A journal answer as the register holds it: through the mapping's code table or number
/// conversion (computed here from the truth, not by the mapper).
fn register_value(conv: &Conversion, v: &AnswerValue) -> Value {
    match (conv, v) {
        (Conversion::Codes { values, table }, AnswerValue::Code(c)) => values.get(c.as_ref()).unwrap_or_else(|| panic!("{c} in code table {table}")).clone(),
        (Conversion::Number { decimals, rounding, integer }, v) => {
            let x = match v {
                AnswerValue::Quantity(q) => *q,
                AnswerValue::Code(c) => c.parse().expect("a numeric answer code"),
            };
            convert_number(x, *decimals, *rounding, *integer).unwrap()
        }
        (c, v) => panic!("the shipped mapping has no {c:?} for {v:?}"),
    }
}

/// Every column the register should hold for `r`: the envelope, the course's joint and joint
/// classification, and each mapped answer the journal has (optional answers not documented are
/// absent).
fn expected_columns(m: &SarMapper, r: &ExpectedRegistration) -> Map<String, Value> {
    let f = m.mapping().forms.iter().find(|f| f.name == form_name(r.form)).unwrap();
    let mut out = Map::new();
    out.insert(f.subject_column.clone(), Value::from(r.subject_key.clone()));
    out.insert(f.event_date_column.clone(), Value::from(r.event_date.to_string()));
    for c in &f.columns {
        let v = match (&c.source, &c.conversion) {
            (Source::Observation(term), conv) => r.answers.get(&term.code).map(|a| register_value(conv, a)),
            (Source::EpisodeJoint, Conversion::Codes { values, .. }) => Some(values[joint_name(r.joint)].clone()),
            (Source::CourseHasJoint(j), _) => Some(Value::from(r.joints.keys().any(|x| joint_name(*x) == j))),
            (Source::CourseSides(j), _) => r.joints.iter().find(|(x, _)| joint_name(**x) == j).map(|(_, both)| Value::from(if *both { 2 } else { 1 })),
            (src, _) => panic!("the shipped mapping reads no {src:?}"),
        };
        if let Some(v) = v {
            out.insert(c.column.clone(), v);
        }
    }
    out
}

fn same_columns(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same_value(v, w)))
}

/// Expected columns of every expected registration, by register key.
fn expected_registrations(e: &E2e, m: &SarMapper) -> BTreeMap<RegKey, Map<String, Value>> {
    let truth = e.env.population.truth();
    let mut out = BTreeMap::new();
    for r in truth.sar_expected() {
        out.insert(reg_key(&r), expected_columns(m, &r));
    }
    out
}

fn held_registrations(e: &E2e) -> BTreeMap<RegKey, EmulatedRegistration> {
    let mut out = BTreeMap::new();
    for f in SarForm::ALL.map(form_name) {
        for r in e.env.emulator.registrations(104, f) {
            let k = (r.subject_key.clone().unwrap_or_default(), r.unit_code.clone(), f.to_string(), r.event_date.clone().unwrap_or_default());
            assert!(out.insert(k, r).is_none(), "one registration per patient, episode and form");
        }
    }
    out
}

/// (subject key, unit, form, event date, missing) of the worklist the truth calls for: missing
/// answers as the register's columns, plus the first-visit forms a follow-up waits for.
fn expected_worklist(e: &E2e, m: &SarMapper) -> BTreeSet<(String, String, String, String, BTreeSet<String>)> {
    let mut out = BTreeSet::new();
    for r in e.env.population.truth().sar_worklist() {
        let f = m.mapping().forms.iter().find(|f| f.name == form_name(r.form)).unwrap();
        let mut missing: BTreeSet<String> = r
            .missing
            .iter()
            .map(|t| {
                f.columns
                    .iter()
                    .find(|c| matches!(&c.source, Source::Observation(o) if o.code == *t) && f.mandatory.contains(&c.column))
                    .unwrap_or_else(|| panic!("{t} is a mandatory column of {}", f.name))
                    .column
                    .clone()
            })
            .collect();
        missing.extend(r.waits_for.iter().map(|w| form_name(*w).to_string()));
        out.insert((r.subject_key.clone(), r.unit.clone(), f.name.clone(), r.event_date.to_string(), missing));
    }
    out
}

async fn held_worklist(e: &E2e) -> BTreeSet<(String, String, String, String, BTreeSet<String>)> {
    let items = e.app.store.worklist(Some("artrosregistret"), None).await.unwrap();
    let out: BTreeSet<_> = items
        .iter()
        .map(|w| {
            let subject = w.patient.as_ref().and_then(|p| p.national_12()).unwrap_or_default().to_string();
            (subject, w.unit.clone(), w.form.clone(), w.event_date.clone().unwrap_or_default(), w.missing.iter().cloned().collect())
        })
        .collect();
    assert_eq!(out.len(), items.len());
    out
}

/// A valid answer for a mandatory term the generator may leave out.
fn valid_answer(term: &str) -> AnswerValue {
    match term {
        obs::PAIN_NRS => AnswerValue::Quantity(4.0),
        obs::EQ_VAS => AnswerValue::Quantity(70.0),
        obs::EQ5D_MOBILITY | obs::EQ5D_SELFCARE | obs::EQ5D_ACTIVITIES | obs::EQ5D_PAIN | obs::EQ5D_ANXIETY => AnswerValue::code("2"),
        obs::WANTS_SURGERY => AnswerValue::code(answer::NO),
        obs::EDUCATION_SESSIONS => AnswerValue::Quantity(3.0),
        obs::SUPERVISED_EXERCISE_SESSIONS => AnswerValue::Quantity(8.0),
        other => panic!("no valid answer chosen for {other}"),
    }
}

/// Every 12- and 10-digit run in `s` (identity-shaped numbers).
fn identity_shaped(s: &str, out: &mut BTreeSet<String>) {
    for run in s.split(|c: char| !c.is_ascii_digit()).filter(|r| r.len() >= 10) {
        out.insert(run.to_string());
    }
}

async fn scenario(backend: Backend) {
    let started = Instant::now();
    let e = start(backend, SCENARIO_PATIENTS, "e2e_scenario").await;
    let m = sandbox_mapper(&e);
    let pop = e.env.population.clone();
    let truth = pop.truth();
    let stratum = |e: &E2e| e.env.emulator.counts().total();

    // 1. The whole population: exactly the expected registrations, with the journal's values.
    let r1 = e.run("artrosregistret").await;
    assert_eq!(r1.status, "ok", "{r1:?}");
    e.deliver().await;
    let first_run = started.elapsed();
    let before = expected_registrations(&e, &m);
    assert!(before.len() > 700, "a population of thousands gives many registrations: {}", before.len());
    let held = held_registrations(&e);
    let missing: Vec<_> = before.keys().filter(|k| !held.contains_key(*k)).collect();
    let extra: Vec<_> = held.keys().filter(|k| !before.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}\nextra {extra:?}");
    for (k, cols) in &before {
        assert!(same_columns(&held[k].columns, cols), "{k:?}: the register holds {:?}, the journal says {cols:?}", held[k].columns);
    }
    let c1 = stratum(&e);
    assert_eq!((c1.post as usize, c1.put, c1.delete), (before.len(), 0, 0), "each registration created once");
    let per_episode_form: BTreeSet<_> = truth.sar_expected().iter().map(|r| (r.patient, r.episode, r.form)).collect();
    assert_eq!(per_episode_form.len(), held.len(), "one registration per patient, episode and form");
    // No follow-up without its (complete) first visit; nothing for opt-outs or reserve numbers.
    let first_visits: BTreeSet<(&str, &str)> = held.keys().filter(|k| k.2 == "FVPat").map(|k| (k.0.as_str(), k.1.as_str())).collect();
    let first_visits_pt: BTreeSet<(&str, &str)> = held.keys().filter(|k| k.2 == "FVPT").map(|k| (k.0.as_str(), k.1.as_str())).collect();
    for k in held.keys().filter(|k| !k.2.starts_with("FV")) {
        let ep = (k.0.as_str(), k.1.as_str());
        assert!(first_visits.contains(&ep) && first_visits_pt.contains(&ep), "{k:?} without its first visit");
    }
    let subjects: BTreeSet<&str> = held.keys().map(|k| k.0.as_str()).collect();
    let mut opted_out = 0;
    for p in truth.select(|p| p.opt_out.is_some() || p.id.national_12().is_none()) {
        opted_out += usize::from(p.opt_out.is_some() && !p.episodes.is_empty());
        assert!(p.id.national_12().map_or(true, |s| !subjects.contains(s)), "patient {} objected or has a reserve number", p.index);
    }
    assert!(opted_out > 0, "the population has artros patients who objected");
    // Incomplete registrations are on the worklist, naming what is missing.
    let wl_expected = expected_worklist(&e, &m);
    assert!(wl_expected.len() > 30, "{}", wl_expected.len());
    assert_eq!(held_worklist(&e).await, wl_expected);

    // 2. Changes in the journal, all picked from the truth, one patient each.
    let exp = truth.sar_expected();
    let worklist = truth.sar_worklist();
    let mut used = BTreeSet::new();
    let mut pick = |cands: Vec<&ExpectedRegistration>| -> ExpectedRegistration {
        let r = cands.into_iter().find(|r| !used.contains(&r.patient)).expect("a candidate").clone();
        used.insert(r.patient);
        r
    };
    let has = |p: usize, f: SarForm| exp.iter().any(|r| r.patient == p && r.form == f);
    // a) A delivered 3-month visit is nullified with everything documented at it.
    let a = pick(exp.iter().filter(|r| r.form == SarForm::M3Pat && has(r.patient, SarForm::M3PT)).collect());
    let a_visit = truth.patient(a.patient).form(a.episode, SarForm::M3Pat).care_contact_id.clone().unwrap();
    pop.nullify_visit(a.patient, &a_visit).unwrap();
    // b) A worklist registration is completed (not FVPT: its side is an FVPat answer too).
    let b = pick(
        worklist
            .iter()
            .filter(|r| r.waits_for.is_empty() && r.missing.len() == 1 && r.form != SarForm::FVPT && truth.patient(r.patient).form(r.episode, r.form).recorded)
            .collect(),
    );
    pop.set_answer(b.patient, b.episode, b.form, b.missing[0], valid_answer(b.missing[0])).unwrap();
    // c) One answer of a delivered registration changes.
    let c = pick(exp.iter().filter(|r| r.form == SarForm::M3Pat && r.answers.contains_key(obs::EQ_VAS)).collect());
    let vas = |r: &ExpectedRegistration| r.answers[obs::EQ_VAS].as_f64().unwrap();
    let c_vas = if vas(&c) >= 50.0 { vas(&c) - 10.0 } else { vas(&c) + 10.0 };
    pop.set_answer(c.patient, c.episode, c.form, obs::EQ_VAS, AnswerValue::Quantity(c_vas)).unwrap();
    // d) A patient with registrations objects to quality-register reporting.
    let d = pick(exp.iter().filter(|r| exp.iter().filter(|x| x.patient == r.patient).count() >= 4).collect());
    let d_keys: Vec<RegKey> = exp.iter().filter(|r| r.patient == d.patient).map(reg_key).collect();
    pop.add_objection(d.patient).unwrap();
    // e) Someone removed a registration in the register by hand; then the journal changes it.
    let ev = pick(exp.iter().filter(|r| r.form == SarForm::Y1Pat && r.answers.contains_key(obs::EQ_VAS)).collect());
    let ev_id = held[&reg_key(&ev)].event_id;
    assert!(e.env.emulator.remove_by_hand(ev_id));
    let ev_vas = if vas(&ev) >= 50.0 { vas(&ev) - 10.0 } else { vas(&ev) + 10.0 };
    pop.set_answer(ev.patient, ev.episode, ev.form, obs::EQ_VAS, AnswerValue::Quantity(ev_vas)).unwrap();

    // The engagement index: the second run fetches the changed patients only (changed since the
    // watermark less the connector's overlap), one GetCareContacts each.
    let def = &registerbrygga::pipeline::find(&e.rt.connectors, "artrosregistret").unwrap().def;
    let mut mark = None;
    for u in &def.units {
        let w = e.app.store.watermark(&def.name, u).await.unwrap().expect("a watermark after a complete run");
        mark = Some(mark.map_or(w, |m: chrono::DateTime<chrono::Utc>| m.min(w)));
    }
    let since = mark.unwrap() - chrono::Duration::hours(def.window.overlap_hours as i64);
    // GetUpdates' timeStamp has whole seconds.
    let since = chrono::DateTime::from_timestamp(since.timestamp(), 0).unwrap();
    let units: BTreeSet<&str> = def.units.iter().map(String::as_str).collect();
    let changed: BTreeSet<usize> =
        truth.changed_since(since).into_iter().filter(|i| truth.patient(*i).visits.iter().any(|v| units.contains(v.unit.as_str()))).collect();
    for p in &used {
        assert!(changed.contains(p), "mutated patient {p} is reported changed");
    }
    assert!(changed.len() < SCENARIO_PATIENTS / 10, "{} changed patients", changed.len());
    let requests_before = e.env.journal.requests();

    let r2 = e.run("artrosregistret").await;
    assert_eq!(r2.status, "ok", "{r2:?}");
    let requests = e.env.journal.requests();
    let fetched = |c: Contract| requests.by_contract.get(&c).copied().unwrap_or(0) - requests_before.by_contract.get(&c).copied().unwrap_or(0);
    assert_eq!(fetched(Contract::GetCareContacts) as usize, changed.len(), "the second run fetches the changed patients only");
    assert_eq!(r2.patients as usize, changed.len());
    e.deliver().await;

    let after = expected_registrations(&e, &m);
    let held = held_registrations(&e);
    let ev_key = reg_key(&ev);
    // Everything the truth expects is there with the journal's values, except the registration
    // removed by hand (its update was refused, see below).
    let missing: Vec<_> = after.keys().filter(|k| !held.contains_key(*k) && **k != ev_key).collect();
    let extra: Vec<_> = held.keys().filter(|k| !after.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}\nextra {extra:?}");
    for (k, r) in &held {
        assert!(same_columns(&r.columns, &after[k]), "{k:?}: the register holds {:?}, the journal says {:?}", r.columns, after[k]);
    }
    // Exactly the writes the changes call for: new keys POSTed, gone keys DELETEd, changed ones
    // PUT (the one removed by hand is refused, so not counted).
    let c2 = stratum(&e);
    let created = after.keys().filter(|k| !before.contains_key(*k)).count();
    let gone = before.keys().filter(|k| !after.contains_key(*k)).count();
    let changed_cols: Vec<&RegKey> = after.keys().filter(|k| before.get(*k).is_some_and(|b| !same_columns(b, &after[*k]))).collect();
    assert_eq!(changed_cols.len(), 2, "the two changed answers change two registrations: {changed_cols:?}");
    assert_eq!((c2.post - c1.post) as usize, created);
    assert_eq!((c2.delete - c1.delete) as usize, gone);
    // c) the one registration is updated in place: one PUT of the changed column, no POST for it.
    assert_eq!(c2.put - c1.put, 1, "one PUT for the changed answer");
    let ck = reg_key(&c);
    assert!(before.contains_key(&ck) && held.contains_key(&ck));
    assert!(same_value(&held[&ck].columns["M3_EQVAS"], &Value::from(c_vas as i64)));
    // a) the nullified 3-month visit's registrations are deleted.
    let mut ak = reg_key(&a);
    assert!(!held.contains_key(&ak));
    ak.2 = "M3PT".into();
    assert!(!held.contains_key(&ak));
    // b) the completed registration left the worklist and arrived.
    let bk = reg_key(&b);
    assert!(held.contains_key(&bk), "{bk:?} arrives once complete");
    let wl = held_worklist(&e).await;
    assert!(!wl.iter().any(|w| (w.0.as_str(), unit_code(&w.1), w.2.as_str()) == (b.subject_key.as_str(), unit_code(&b.unit), form_name(b.form))));
    assert_eq!(wl, expected_worklist(&e, &m));
    // d) the objection deletes every registration of the patient, audited without personal data.
    for k in &d_keys {
        assert!(!held.contains_key(k), "{k:?} of the patient who objected");
    }
    let d_pk = e.app.pseudo.patient_key(&pop.patient_id(d.patient));
    let oo = e.app.store.audit_search(&AuditQuery { kind: Some("patient.opt_out".into()), subject: Some(d_pk.clone()), ..Default::default() }).await.unwrap();
    assert_eq!(oo.len(), 1);
    assert_eq!(oo[0].detail["retracted"], Value::from(d_keys.len()));
    let retracted = e.app.store.audit_search(&AuditQuery { kind: Some("record.retracted".into()), limit: Some(5000), ..Default::default() }).await.unwrap();
    let d_retracted: BTreeSet<&str> =
        retracted.iter().filter(|ev| ev.subject.contains(&d_pk) && ev.detail["reason"].as_str() == Some(RetractReason::OptOut.text())).map(|ev| ev.subject.as_str()).collect();
    assert_eq!(d_retracted.len(), d_keys.len(), "a record.retracted (opt-out) per registration: {retracted:?}");
    // e) the register refused the update of the registration removed by hand: its own reason is
    // on the record and in the audit log. Every rejection in the store is of that kind.
    let rejected = e.app.store.records(&RecordFilter { state: Some(RecordState::Rejected), limit: Some(100), ..Default::default() }).await.unwrap();
    assert_eq!(rejected.len(), 1, "{:?}", rejected.iter().map(|r| (&r.idem_key, &r.reason)).collect::<Vec<_>>());
    let ev_pk = e.app.pseudo.patient_key(&pop.patient_id(ev.patient));
    for r in &rejected {
        assert!(r.idem_key.contains(&ev_pk) && r.form == "Y1Pat");
        let reason = r.reason.clone().unwrap_or_default();
        assert!(reason.starts_with("register answered 404") && reason.contains("does not exist"), "the register's reason: {reason}");
        assert_eq!(r.last_status, Some(404));
        let audit = e.app.store.audit_search(&AuditQuery { kind: Some("record.rejected".into()), subject: Some(r.idem_key.clone()), ..Default::default() }).await.unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].detail["reason"].as_str(), Some(reason.as_str()));
    }

    // A third run changes nothing.
    let r3 = e.run("artrosregistret").await;
    assert_eq!((r3.records_created, r3.records_updated, r3.records_retracted), (0, 0, 0), "{r3:?}");
    assert!(e.app.store.audit_verify().await.unwrap().ok);

    // No personnummer in any audit event (subject or detail).
    let ids: BTreeSet<String> = (0..pop.len()).filter_map(|i| pop.patient_id(i).national_12().map(str::to_string)).flat_map(|s| [s[2..].to_string(), s]).collect();
    let mut tx = e.app.store.read().await.unwrap();
    let rows = tx.rows("SELECT subject, detail FROM audit_events", &[]).await.unwrap();
    let mut found = BTreeSet::new();
    for row in &rows {
        identity_shaped(&row.text(0).unwrap(), &mut found);
        identity_shaped(&row.text(1).unwrap(), &mut found);
    }
    assert!(rows.len() > 1000 && found.is_disjoint(&ids), "{} audit events; identities found in them", rows.len());
    eprintln!(
        "scenario {backend:?}: {} patients, {} registrations; first run + delivery {:.1}s, all {:.1}s",
        SCENARIO_PATIENTS,
        before.len(),
        first_run.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_sqlite() {
    scenario(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_postgres() {
    scenario(Backend::Postgres).await;
}

// ------------------------------------------------------------------------------------------
// Issue 14: the register's treatment courses, end to end, and the key migration.

/// The SAR registrations the emulator holds for one patient: (form, event date, columns).
fn held_of(e: &E2e, subject: &str) -> Vec<(String, String, Map<String, Value>)> {
    let mut out = vec![];
    for f in SarForm::ALL.map(form_name) {
        for r in e.env.emulator.registrations(104, f) {
            if r.subject_key.as_deref() == Some(subject) {
                out.push((f.to_string(), r.event_date.clone().unwrap_or_default(), r.columns.clone()));
            }
        }
    }
    out.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    out
}

/// Rewrite the store's SAR keys to the scheme before issue 14 (`…|<joint>|form`) and forget that
/// migration 0004 (SAR course keys) ran: the store as an older version left it.
async fn back_to_the_old_key_scheme(e: &E2e) -> usize {
    use registerbrygga::store::sql::Val;
    let mut tx = e.app.store.begin().await.unwrap();
    let rows = tx.rows("SELECT episode_key, joint FROM sar_episodes", &[]).await.unwrap();
    let mut n = 0;
    for r in &rows {
        let (key, joints) = (r.text(0).unwrap(), r.text(1).unwrap());
        let Some(base) = key.strip_suffix("|course") else { continue };
        let joint = joints.split('+').next().unwrap().to_string();
        let old = format!("{base}|{joint}");
        for table in ["records", "registrations", "worklist", "attempts"] {
            let sql = format!("UPDATE {table} SET idem_key = $1 || substr(idem_key, length($2) + 1) WHERE substr(idem_key, 1, length($2) + 1) = $2 || '|'");
            tx.exec(&sql, &[Val::Text(old.clone()), Val::Text(key.clone())]).await.unwrap();
        }
        tx.exec("UPDATE sar_episodes SET episode_key = $1, joint = $2 WHERE episode_key = $3", &[Val::Text(old), Val::Text(joint), Val::Text(key)]).await.unwrap();
        n += 1;
    }
    tx.exec("DELETE FROM _sqlx_migrations WHERE description = 'sar course keys'", &[]).await.unwrap();
    tx.commit().await.unwrap();
    n
}

async fn sar_courses_end_to_end(backend: Backend) {
    use registerbrygga::sandbox::journal::archetype::*;
    let mut e = start(backend, 60, "e2e_courses").await;
    let pop = e.env.population.clone();
    let truth = pop.truth();
    let m = sandbox_mapper(&e);
    let r = e.run("artrosregistret").await;
    assert_eq!(r.status, "ok", "{r:?}");
    e.deliver().await;
    // Exactly the registrations the truth expects, with the journal's values.
    let expected = expected_registrations(&e, &m);
    let held = held_registrations(&e);
    let missing: Vec<_> = expected.keys().filter(|k| !held.contains_key(*k)).collect();
    let extra: Vec<_> = held.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}\nextra {extra:?}");
    for (k, cols) in &expected {
        assert!(same_columns(&held[k].columns, cols), "{k:?}: the register holds {:?}, the journal says {cols:?}", held[k].columns);
    }
    assert_eq!(held_worklist(&e).await, expected_worklist(&e, &m));
    let subject = |i: usize| pop.patient_id(i).national_12().unwrap().to_string();

    // Knee and hip at one first visit: one FVPat and one FVPT naming both joints.
    let two = held_of(&e, &subject(SAR_TWO_JOINTS));
    let fv: Vec<_> = two.iter().filter(|h| h.0.starts_with("FV")).collect();
    assert_eq!(fv.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(), ["FVPT", "FVPat"], "{two:?}");
    assert_eq!((&fv[0].2["PT_JointKnee"], &fv[0].2["PT_JointHip"], &fv[0].2["PT_JointHand"]), (&json!(true), &json!(true), &json!(false)));
    assert_eq!(fv[0].2["PT_Joint"], json!(2), "the main diagnosis: knee");
    // A secondary-only diagnosis and M19 at another site: no course, nothing held or waiting.
    let worklist = e.app.store.worklist(Some("artrosregistret"), None).await.unwrap();
    for p in [SAR_SECONDARY_ONLY, SAR_M19_OTHER_SITE] {
        assert!(held_of(&e, &subject(p)).is_empty(), "patient {p}");
        assert!(!worklist.iter().any(|w| w.patient.as_ref().and_then(|x| x.national_12()) == Some(subject(p).as_str())));
    }
    // The M19 diagnosis is reported (audit, no personal data), not guessed.
    let m19_pk = e.app.pseudo.patient_key(&pop.patient_id(SAR_M19_OTHER_SITE));
    let notes = e.app.store.audit_search(&AuditQuery { kind: Some("mapping.note".into()), limit: Some(5000), ..Default::default() }).await.unwrap();
    assert!(notes.iter().any(|n| n.detail.to_string().contains(&m19_pk) && n.detail.to_string().contains("unmatched_diagnosis")), "M19 at another site reported");
    // The questionnaire days before the first visit fills the first visit.
    let q = truth.patient(SAR_QUESTIONNAIRE_BEFORE);
    let qh = held_of(&e, &subject(SAR_QUESTIONNAIRE_BEFORE));
    assert!(qh.iter().any(|h| h.0 == "FVPat" && h.1 == q.episodes[0].first_visit.to_string()), "{qh:?}");
    assert!(q.episodes[0].form(SarForm::FVPat).event_date.unwrap() < q.episodes[0].first_visit, "the answers were documented before the visit");
    // The unrelated pain score in the 3-month window is not the 3-month occasion.
    let u = truth.patient(SAR_UNRELATED_PAIN_IN_M3);
    let m3_day = u.episodes[0].form(SarForm::M3Pat).event_date.unwrap();
    let uh = held_of(&e, &subject(SAR_UNRELATED_PAIN_IN_M3));
    assert_eq!(uh.iter().filter(|h| h.0 == "M3Pat").map(|h| h.1.clone()).collect::<Vec<_>>(), [m3_day.to_string()]);
    assert!(u.observations.iter().any(|o| o.term == obs::PAIN_NRS && o.episode.is_none() && o.date < m3_day && o.date >= u.episodes[0].first_visit));
    // A second course two years later: a registration of its own; the first stays.
    let s = truth.patient(SAR_SECOND_COURSE);
    assert_eq!(s.episodes.len(), 2);
    assert!((s.episodes[1].first_visit - s.episodes[0].first_visit).num_days() > 700);
    let sh = held_of(&e, &subject(SAR_SECOND_COURSE));
    let fvs: Vec<String> = sh.iter().filter(|h| h.0 == "FVPat").map(|h| h.1.clone()).collect();
    assert_eq!(fvs, [s.episodes[0].first_visit.to_string(), s.episodes[1].first_visit.to_string()]);
    assert!(sh.iter().any(|h| h.0 == "Y1Pat"), "the first course's 1-year follow-up is held");

    // The store as the old version left it (one key per joint) is carried over by the
    // migration when the daemon starts again: the same keys as before, nothing sent again.
    let keys_before = registration_keys(&e).await;
    let counts = e.env.emulator.counts().total();
    assert!(back_to_the_old_key_scheme(&e).await > 10);
    assert!(registration_keys(&e).await.iter().filter(|k| k.contains("|knee|") || k.contains("|hip|") || k.contains("|hand|")).count() > 10);
    let app = registerbrygga::app::App::open((*e.app.loaded).clone()).await.unwrap();
    e.rt = registerbrygga::daemon::build_runtime(&app).await.unwrap();
    e.app = app;
    assert_eq!(registration_keys(&e).await, keys_before, "every old key carried over to its course key");
    // A journal change after the migration updates the same registration (one PUT), it does not
    // create a second one.
    let k = truth.sar_expected().into_iter().find(|r| r.patient == ARTROS_KNEE_COMPLETE && r.form == SarForm::M3Pat).unwrap();
    let vas = k.answers[obs::EQ_VAS].as_f64().unwrap();
    let new_vas = if vas >= 50.0 { vas - 10.0 } else { vas + 10.0 };
    pop.set_answer(k.patient, k.episode, k.form, obs::EQ_VAS, AnswerValue::Quantity(new_vas)).unwrap();
    let r = e.run("artrosregistret").await;
    assert_eq!((r.records_created, r.records_updated, r.records_retracted), (0, 1, 0), "{r:?}");
    e.deliver().await;
    let after = e.env.emulator.counts().total();
    assert_eq!((after.post, after.put, after.delete), (counts.post, counts.put + 1, counts.delete), "nothing sent again");
    assert_eq!(held_registrations(&e).len(), expected.len());
    assert!(same_value(&held_registrations(&e)[&reg_key(&k)].columns["M3_EQVAS"], &Value::from(new_vas as i64)));
}

async fn registration_keys(e: &E2e) -> BTreeSet<String> {
    let mut tx = e.app.store.read().await.unwrap();
    tx.rows("SELECT idem_key FROM registrations", &[]).await.unwrap().iter().map(|r| r.text(0).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sar_courses_end_to_end_sqlite() {
    sar_courses_end_to_end(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sar_courses_end_to_end_postgres() {
    sar_courses_end_to_end(Backend::Postgres).await;
}

/// `config check --online` against the register (the emulator): per form, the register's
/// mandatory columns the mapping leaves unmapped and mapped columns the register lacks, by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_online_names_unmapped_mandatory_and_unknown_columns() {
    let e = start(Backend::Sqlite, 30, "check_online").await;
    let path = e.env.connectors_dir().join("artrosregistret/mapping.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace("\nFV_EQVAS = { observation = \"EQ-VAS\" }", "\nFV_EQVAS_Old = { observation = \"EQ-VAS\" }");
    assert_ne!(edited, text);
    std::fs::write(&path, edited).unwrap();
    let loaded = e.env.load_config(vec![]).unwrap();
    let problems = registerbrygga::checks::check_registers(&loaded, true).await;
    let texts: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(problems.iter().any(|p| p.key == "forms.FVPat.columns" && p.reason.contains("mandatory column FV_EQVAS is not mapped")), "{texts:#?}");
    assert!(problems.iter().any(|p| p.key == "forms.FVPat.columns.FV_EQVAS_Old" && p.reason.contains("no column FV_EQVAS_Old in form FVPat")), "{texts:#?}");
    assert!(!problems.iter().any(|p| p.reason.contains("not reachable")), "the check ran online: {texts:#?}");
}

// ------------------------------------------------------------------------------------------
// Issue 17: the watermark after a failed after-pull step

/// The PVK connector's after-pull step (indicators, aggregates, export files) fails: the run is
/// failed and its watermark stays, so the next run does the work again; once the cause is gone
/// the next run succeeds and moves it.
async fn watermark_stays_when_the_after_pull_step_fails(backend: Backend) {
    let e = common::e2e::start(backend, 20, "watermark").await;
    let connector = "primarvardskvalitet";
    let units = registerbrygga::pipeline::find(&e.rt.connectors, connector).unwrap().def.units.clone();
    assert!(!units.is_empty());
    // The export folder cannot be created: a file sits where it should be.
    let export = e.env.dir.join("export/pvk");
    let _ = std::fs::remove_dir_all(&export);
    std::fs::create_dir_all(export.parent().unwrap()).unwrap();
    std::fs::write(&export, b"not a folder").unwrap();
    let r = e.run(connector).await;
    assert_eq!(r.status, "failed", "{r:?}");
    assert!(!r.complete);
    for u in &units {
        assert_eq!(e.app.store.watermark(connector, u).await.unwrap(), None, "the watermark of {u} moved although the after-pull step failed");
    }
    let run = e.app.store.runs(Some(connector), 1).await.unwrap().remove(0);
    assert!(run.error.as_deref().unwrap_or("").contains("after-pull step failed"), "{:?}", run.error);
    std::fs::remove_file(&export).unwrap();
    let r = e.run(connector).await;
    assert_eq!(r.status, "ok", "{r:?}");
    for u in &units {
        assert!(e.app.store.watermark(connector, u).await.unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_stays_when_the_after_pull_step_fails_sqlite() {
    watermark_stays_when_the_after_pull_step_fails(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_stays_when_the_after_pull_step_fails_postgres() {
    watermark_stays_when_the_after_pull_step_fails(Backend::Postgres).await;
}
