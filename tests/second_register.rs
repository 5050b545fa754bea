//! A second Stratum register, connected without code: the sandbox's own register
//! `sandboxregistret` (register 901, an invention of the sandbox — `src/sandbox/stratum/
//! registers/`: a first-visit form and a 6-month form, its own column names, domains and unit
//! codes). Its connector folder is written by `mapping scaffold` from the emulator's metadata,
//! its sources are filled in as a region would, `config check --online` accepts it, and the
//! real daemon (`run --once`) delivers exactly the expected registrations, puts exactly the
//! expected form on the worklist, audits each, and counts täckningsgrad — on SQLite and
//! PostgreSQL. A changed domain in the register's metadata is reported by a rerun of the
//! scaffold.

mod common;

use chrono::{Duration, NaiveDate};
use common::e2e::{start, E2e};
use registerbrygga::config::{Backend, Loaded};
use registerbrygga::registers::scaffold::ColumnChange;
use registerbrygga::sandbox::journal::{AnswerValue, VisitSpec};
use registerbrygga::sandbox::stratum::{self as emulator, EmulatorOptions};
use registerbrygga::sandbox::vocabulary::{obs, profession, LOCAL_TERMS};
use registerbrygga::store::AuditQuery;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const REGISTER: &str = "sandboxregistret";
const REGISTER_ID: u32 = 901;
const FT01: &str = "SE2321000156-FT01";
const FT02: &str = "SE2321000156-FT02";
/// The sandbox region's inclusion keyword for the back programme and its follow-up mark: journal
/// terms the sandbox journal writes for the patients this test adds them to.
const INCLUSION: &str = "RYGGPROGRAM";
const FOLLOW_UP: &str = "RYGGPROGRAM-UPPFOLJNING";

/// The register's configuration as a region writes it (its own UnitCodes for the journal units).
fn register_section(e: &E2e, base_url: &str) -> String {
    let d = |p: &PathBuf| p.display().to_string();
    let c = &e.env.certs;
    format!(
        "\n[registers.{REGISTER}]\nkind = \"stratum\"\nbase_url = \"{base_url}\"\nregister_id = {REGISTER_ID}\napi_key = {{ file = \"{}\" }}\n\
         tls = {{ ca_file = \"{}\", client_cert_file = \"{}\", client_key = {{ file = \"{}\" }} }}\n\
         units = [{{ hsa_id = \"{FT01}\", unit_code = \"9A01\" }}, {{ hsa_id = \"{FT02}\", unit_code = \"9A02\" }}]\n",
        d(&e.env.dir.join("stratum.apikey")),
        d(&c.ca),
        d(&c.client_cert),
        d(&c.client_key)
    )
}

fn load_options(e: &E2e) -> registerbrygga::config::LoadOptions {
    registerbrygga::config::LoadOptions {
        config_dir: Some(PathBuf::from("config")),
        extra_file: Some(e.env.config_file()),
        environment: Some("local".into()),
        overrides: vec![],
        skip_env: true,
    }
}

fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the scaffold wrote `{from}`");
    text.replacen(from, to, 1)
}

/// Fill in the scaffold's empty sources as the region would: its journal's code systems,
/// inclusion keyword, opt-out term, code tables, the journal term of each mapped column, the
/// 6-month window. The one optional column left commented out (R6_TraningMin) stays unmapped.
fn fill_in(dir: &std::path::Path) {
    let m = std::fs::read_to_string(dir.join("mapping.toml")).unwrap();
    let sys = format!("\"{LOCAL_TERMS}\"");
    let mut m = replace(&m, "observations = \"\"", &format!("observations = {sys}"));
    m = replace(&m, "# answers = \"\"", &format!("answers = {sys}"));
    m = replace(&m, "activities = \"\"", &format!("activities = {sys}"));
    m = replace(&m, "inclusion = []", &format!("inclusion = [\"term:{INCLUSION}\"]  # provisional: the sandbox region's inclusion keyword\nfollow_up_mark = \"term:{FOLLOW_UP}\"  # provisional: the sandbox region's follow-up keyword"));
    m = replace(&m, "term = \"\"\nvalues = []", &format!("term = \"{}\"\nvalues = [\"JA\"]", obs::REGISTER_OBJECTION));
    for (col, term) in [
        ("R0_Smarta", obs::PAIN_NRS),
        ("R0_Rorlighet", obs::EQ5D_MOBILITY),
        ("R0_Radsla", obs::FEAR_OF_MOVEMENT),
        ("R6_Smarta", obs::PAIN_NRS),
        ("R6_Rorlighet", obs::EQ5D_MOBILITY),
    ] {
        m = replace(&m, &format!("\n{col} = {{ observation = \"\""), &format!("\n{col} = {{ observation = \"{term}\""));
    }
    // An optional column the region maps: uncommented.
    m = replace(&m, "\n# R0_TraningMin = { observation = \"\"", &format!("\nR0_TraningMin = {{ observation = \"{}\"", obs::EXERCISE_MINUTES));
    m.push_str(
        "\n# The sandbox journal's answer codes → the register's ValueCodes (provisional: the sandbox's codes).\n\
         [codes.d90102]\n\"1\" = \"R1\"\n\"2\" = \"R2\"\n\"3\" = \"R3\"\n\"4\" = \"R4\"\n\"5\" = \"R5\"\n\n\
         [codes.d90103]\nJA = 1\nNEJ = 2\n",
    );
    std::fs::write(dir.join("mapping.toml"), m).unwrap();
    let c = std::fs::read_to_string(dir.join("connector.toml")).unwrap();
    let c = replace(&c, "six_months = { from_day = 0, to_day = 0 }  # provisional: window not filled in", "six_months = { from_day = 150, to_day = 240 }  # provisional: the sandbox register's window (its own invention)");
    std::fs::write(dir.join("connector.toml"), c).unwrap();
}

/// Every line of the filled-in folder that states a register fact (a column, an occasion, a
/// window, the units) cites the register's metadata or says provisional.
fn assert_cited(dir: &std::path::Path) {
    let m = std::fs::read_to_string(dir.join("mapping.toml")).unwrap();
    let mut in_columns = false;
    let mut n = 0;
    for line in m.lines() {
        if line.starts_with('[') {
            in_columns = line.ends_with(".columns]");
            continue;
        }
        let fact = (in_columns && !line.starts_with('#') && line.contains(" = {")) || line.starts_with("occasion = ");
        if fact {
            let comment = line.split_once('#').map(|(_, c)| c).unwrap_or("");
            assert!(comment.contains("metadata:") || comment.contains("provisional"), "no source: {line}");
            n += 1;
        }
    }
    assert_eq!(n, 2 + 6, "two occasions and six mapped columns checked");
    let c = std::fs::read_to_string(dir.join("connector.toml")).unwrap();
    let lines: Vec<&str> = c.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("units = ") || line.contains("from_day") {
            let cited = |l: &str| l.contains("metadata:") || l.contains("provisional");
            assert!(cited(line) || (i > 0 && cited(lines[i - 1])), "no source: {line}");
        }
    }
}

/// A patient of the sandbox population and what the test adds to the journal.
struct Added {
    patient: usize,
    unit: &'static str,
    first_visit: NaiveDate,
    /// The 6-month visit, if any.
    six_months: Option<NaiveDate>,
    /// Leave out the fear-of-movement answer (mandatory) at the first visit.
    without_fear: bool,
}

fn visit(date: NaiveDate, unit: &str, observations: Vec<(&str, AnswerValue)>) -> VisitSpec {
    VisitSpec {
        date,
        unit: unit.into(),
        profession: profession::PHYSIOTHERAPIST.into(),
        phone: false,
        diagnoses: vec![],
        activities: vec![],
        observations: observations.into_iter().map(|(t, v)| (t.to_string(), v)).collect(),
    }
}

fn add_to_journal(e: &E2e, a: &Added) {
    let mut first = vec![
        (INCLUSION, AnswerValue::code("JA")),
        (obs::PAIN_NRS, AnswerValue::Quantity(6.0)),
        (obs::EQ5D_MOBILITY, AnswerValue::code("3")),
        (obs::EXERCISE_MINUTES, AnswerValue::Quantity(90.0)),
    ];
    if !a.without_fear {
        first.push((obs::FEAR_OF_MOVEMENT, AnswerValue::code("JA")));
    }
    e.env.population.add_visit(a.patient, visit(a.first_visit, a.unit, first)).unwrap();
    if let Some(d) = a.six_months {
        let six = vec![(FOLLOW_UP, AnswerValue::code("JA")), (obs::PAIN_NRS, AnswerValue::Quantity(3.0)), (obs::EQ5D_MOBILITY, AnswerValue::code("2"))];
        e.env.population.add_visit(a.patient, visit(d, a.unit, six)).unwrap();
    }
}

fn unit_code(hsa: &str) -> &'static str {
    match hsa {
        FT01 => "9A01",
        FT02 => "9A02",
        _ => panic!("not a unit of the register"),
    }
}

async fn second_register_end_to_end(backend: Backend) {
    let mut e = start(backend, 28, "e2e_second_register").await;
    let today = e.env.today;
    // The register as the region configures it.
    let mut cfg = std::fs::read_to_string(e.env.config_file()).unwrap();
    cfg.push_str(&register_section(&e, &e.env.emulator.base_url()));
    std::fs::write(e.env.config_file(), cfg).unwrap();

    // 1. The scaffold writes the connector folder from the register's metadata.
    let dir = e.env.connectors_dir().join(REGISTER);
    let loaded = registerbrygga::config::load(&load_options(&e)).unwrap();
    let r = registerbrygga::checks::mapping_scaffold(&loaded, REGISTER, Some(&dir)).await.unwrap();
    assert!(r.written && r.changes.is_empty(), "{r:?}");
    let mapping = std::fs::read_to_string(dir.join("mapping.toml")).unwrap();
    for col in ["R0_Smarta", "R0_Rorlighet", "R0_Radsla", "R0_TraningMin", "R6_Smarta", "R6_Rorlighet", "R6_TraningMin"] {
        assert_eq!(mapping.matches(&format!("{col} = {{ observation = \"\"")).count(), 1, "{col} listed once");
    }
    assert!(mapping.contains("#> RyggStart.R0_Rorlighet | Rörlighet i dag (nivå 1-5) | string · domain 90102 \"Rörlighetsnivå\": R1 = Inga problem, R2 = Lätta problem, R3 = Måttliga problem, R4 = Svåra problem, R5 = Kan inte | mandatory"), "{mapping}");
    assert!(mapping.contains("#> Rygg6m.R6_TraningMin | Träning, minuter per vecka | integer · domain 90104 \"Minuter per vecka\" 0–3000 | optional"), "{mapping}");

    // 2. Unfilled, `config check --online` refuses it, naming the empty sources.
    let problems = registerbrygga::checks::check_all(&load_options(&e), true).await;
    let errors: Vec<_> = problems.iter().filter(|p| !p.warning).collect();
    assert!(errors.iter().any(|p| p.file.ends_with("mapping.toml") && p.key == "terms.observations"), "{errors:?}");
    assert!(errors.iter().any(|p| p.file.ends_with("connector.toml") && p.key == "options.windows.six_months"), "{errors:?}");
    assert!(errors.iter().all(|p| p.file.contains(REGISTER)), "only the new connector has problems: {errors:?}");

    // 3. Filled in, it is accepted online: against the register's own metadata and units.
    fill_in(&dir);
    assert_cited(&dir);
    let problems = registerbrygga::checks::check_all(&load_options(&e), true).await;
    let errors: Vec<_> = problems.iter().filter(|p| !p.warning).collect();
    assert!(errors.is_empty(), "{errors:?}");

    // 4. The journal: three patients of the sandbox population start the back programme.
    let added = [
        // Whole path: first visit ~6.5 months ago, the 6-month visit three weeks ago.
        Added { patient: 14, unit: FT01, first_visit: today - Duration::days(200), six_months: Some(today - Duration::days(20)), without_fear: false },
        // First visit a month ago: the 6-month window has not opened.
        Added { patient: 13, unit: FT02, first_visit: today - Duration::days(30), six_months: None, without_fear: false },
        // The first-visit form lacks a mandatory answer; the 6-month window is open, no visit yet.
        Added { patient: 10, unit: FT01, first_visit: today - Duration::days(190), six_months: None, without_fear: true },
    ];
    for a in &added {
        add_to_journal(&e, a);
    }

    // 5. The daemon, rebuilt with the new connector, runs it once (`run --once`).
    let now = registerbrygga::config::load(&load_options(&e)).unwrap();
    e.reconfigure(|l: &mut Loaded| {
        l.settings.registers = now.settings.registers.clone();
        l.connectors = now.connectors.clone();
    })
    .await;
    assert!(e.rt.connectors.iter().any(|c| c.def.name == REGISTER && c.mapper.is_some()), "the engine runs the new connector from its folder");
    let code = registerbrygga::daemon::run_once(&e.app, &e.rt, Some(REGISTER)).await.unwrap();
    assert_eq!(code, 0);
    e.deliver().await;

    // Exactly the expected registrations, with the register's own columns and codes.
    let subject = |i: usize| e.env.population.patient_id(i).national_12().unwrap().to_string();
    let day = |d: NaiveDate| d.format("%Y-%m-%d").to_string();
    let mut held = BTreeMap::new();
    for form in ["RyggStart", "Rygg6m"] {
        for r in e.env.emulator.registrations(REGISTER_ID, form) {
            held.insert((r.subject_key.clone().unwrap(), r.unit_code.clone(), form.to_string(), r.event_date.clone().unwrap()), r.columns.clone());
        }
    }
    let a = &added[0];
    let b = &added[1];
    let expected: BTreeSet<(String, String, String, String)> = [
        (subject(a.patient), unit_code(a.unit).to_string(), "RyggStart".to_string(), day(a.first_visit)),
        (subject(a.patient), unit_code(a.unit).to_string(), "Rygg6m".to_string(), day(a.six_months.unwrap())),
        (subject(b.patient), unit_code(b.unit).to_string(), "RyggStart".to_string(), day(b.first_visit)),
    ]
    .into_iter()
    .collect();
    assert_eq!(held.keys().cloned().collect::<BTreeSet<_>>(), expected);
    let start_a = &held[&(subject(a.patient), "9A01".to_string(), "RyggStart".to_string(), day(a.first_visit))];
    assert_eq!(start_a["R0_Smarta"], serde_json::json!(6));
    assert_eq!(start_a["R0_Rorlighet"], serde_json::json!("R3"), "through the code table into the register's string codes");
    assert_eq!(start_a["R0_Radsla"], serde_json::json!(1));
    assert_eq!(start_a["R0_TraningMin"], serde_json::json!(90));
    let six_a = &held[&(subject(a.patient), "9A01".to_string(), "Rygg6m".to_string(), day(a.six_months.unwrap()))];
    assert_eq!((six_a["R6_Smarta"].clone(), six_a["R6_Rorlighet"].clone()), (serde_json::json!(3), serde_json::json!("R2")));
    assert!(six_a.get("R6_TraningMin").is_none(), "an unmapped optional column is not sent");
    assert_eq!(e.env.emulator.counts().total().post, 3, "each created once");

    // Exactly the expected worklist item: the third patient's first-visit form.
    let worklist = e.app.store.worklist(Some(REGISTER), None).await.unwrap();
    let items: Vec<_> = worklist.iter().map(|i| (i.unit.as_str(), i.form.as_str(), i.missing.clone(), i.event_date.clone())).collect();
    assert_eq!(items, [(FT01, "RyggStart", vec!["R0_Radsla".to_string()], Some(day(added[2].first_visit)))]);

    // Audit: each registration created and delivered once, the worklist item added once.
    let ours = |kind: &str| {
        let store = e.app.store.clone();
        let kind = kind.to_string();
        async move {
            let ev = store.audit_search(&AuditQuery { kind: Some(kind), limit: Some(10_000), ..Default::default() }).await.unwrap();
            ev.into_iter().filter(|x| x.subject.starts_with(&format!("{REGISTER}|"))).map(|x| x.subject).collect::<Vec<_>>()
        }
    };
    let created = ours("record.created").await;
    let delivered = ours("record.delivered").await;
    let worklisted = ours("worklist.added").await;
    assert_eq!(created.len(), 3, "{created:?}");
    assert_eq!(created.iter().collect::<BTreeSet<_>>(), delivered.iter().collect::<BTreeSet<_>>());
    assert_eq!(delivered.len(), 3);
    assert_eq!(worklisted, [worklist[0].idem_key.clone()]);
    for k in &created {
        assert!(k.contains("|course|"), "keys as the engine builds them: {k}");
    }
    assert!(e.app.store.audit_verify().await.unwrap().ok);

    // Täckningsgrad for this register: per unit, month of first visit and form.
    let rows = registerbrygga::admin::api::coverage(&e.app.store, &registerbrygga::admin::store::UnitScope::region()).await.unwrap();
    let mut got: BTreeMap<(String, String, String), (i64, i64)> = BTreeMap::new();
    for r in rows.into_iter().filter(|r| r.connector == REGISTER) {
        got.insert((r.unit, r.month, r.form), (r.due, r.present));
    }
    let month = |d: NaiveDate| d.format("%Y-%m").to_string();
    let mut want: BTreeMap<(String, String, String), (i64, i64)> = BTreeMap::new();
    let mut add = |unit: &str, d: NaiveDate, form: &str, present: i64| {
        let cell = want.entry((unit.to_string(), month(d), form.to_string())).or_default();
        cell.0 += 1;
        cell.1 += present;
    };
    add(FT01, a.first_visit, "RyggStart", 1);
    add(FT01, a.first_visit, "Rygg6m", 1);
    add(FT02, b.first_visit, "RyggStart", 1);
    add(FT01, added[2].first_visit, "RyggStart", 0);
    add(FT01, added[2].first_visit, "Rygg6m", 0);
    assert_eq!(got, want);

    // A second run reads the same journal: nothing changes.
    let r2 = e.run(REGISTER).await;
    assert_eq!((r2.records_created, r2.records_updated, r2.records_retracted), (0, 0, 0), "{r2:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_register_end_to_end_sqlite() {
    second_register_end_to_end(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_register_end_to_end_postgres() {
    second_register_end_to_end(Backend::Postgres).await;
}

/// The register changes a domain (a sixth mobility level) and drops a column: a rerun of the
/// scaffold against the existing folder reports both, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_of_the_scaffold_reports_a_changed_domain() {
    let e = start(Backend::Sqlite, 1, "second_register_rerun").await;
    let mut cfg = std::fs::read_to_string(e.env.config_file()).unwrap();
    cfg.push_str(&register_section(&e, &e.env.emulator.base_url()));
    std::fs::write(e.env.config_file(), &cfg).unwrap();
    let dir = e.env.dir.join("scaffolded");
    let loaded = registerbrygga::config::load(&load_options(&e)).unwrap();
    assert!(registerbrygga::checks::mapping_scaffold(&loaded, REGISTER, Some(&dir)).await.unwrap().written);
    let before = std::fs::read_to_string(dir.join("mapping.toml")).unwrap();
    // Unchanged metadata: nothing to report.
    let same = registerbrygga::checks::mapping_scaffold(&loaded, REGISTER, Some(&dir)).await.unwrap();
    assert!(!same.written && same.changes.is_empty(), "{same:?}");

    // The same register, its metadata changed, served by an emulator of its own.
    let mut registers = emulator::sandbox_registers();
    let sandbox = registers.iter_mut().find(|r| r.register.register_id == REGISTER_ID).expect("the sandbox register is served");
    let d = sandbox.domains.iter_mut().find(|d| d.domain_id == 90102).unwrap();
    let mut extra = d.domain_values[4].clone();
    extra.value_code = serde_json::json!("R6");
    extra.value_name = "Okänt".into();
    d.domain_values.push(extra);
    sandbox.forms[1].questions.retain(|q| q.column_name != "R6_TraningMin");
    let mut opts = EmulatorOptions::new(e.env.certs.clone());
    opts.api_key = Some(e.env.emulator.api_key());
    opts.registers = registers;
    let changed = emulator::start(opts).await.unwrap();
    std::fs::write(e.env.config_file(), cfg.replace(&e.env.emulator.base_url(), &changed.base_url())).unwrap();
    let loaded = registerbrygga::config::load(&load_options(&e)).unwrap();
    let r = registerbrygga::checks::mapping_scaffold(&loaded, REGISTER, Some(&dir)).await.unwrap();
    assert!(!r.written);
    let changed_cols: Vec<(&str, &str)> = r
        .changes
        .iter()
        .filter_map(|c| match c {
            ColumnChange::Changed { form, column, now, .. } => {
                assert!(now.contains("R6 = Okänt"), "{now}");
                Some((form.as_str(), column.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(changed_cols, [("RyggStart", "R0_Rorlighet"), ("Rygg6m", "R6_Rorlighet")], "every column on the changed domain: {:?}", r.changes);
    assert!(r.changes.contains(&ColumnChange::Removed {
        form: "Rygg6m".into(),
        column: "R6_TraningMin".into(),
        was: "Träning, minuter per vecka | integer · domain 90104 \"Minuter per vecka\" 0–3000 | optional".into()
    }));
    assert_eq!(r.changes.len(), 3, "{:?}", r.changes);
    assert_eq!(std::fs::read_to_string(dir.join("mapping.toml")).unwrap(), before, "nothing overwritten");
    changed.shutdown().await;
}

/// The engine's generic features, as data only, on the sandbox register's scaffold: a course
/// opened by a diagnosis without any joint classification (`[course] diagnoses`), its own key
/// token (`[course] key`), and the occasion named `six_months` with its window — read from the
/// sandbox journal's own documents (rendered and parsed as the daemon would), no network.
#[test]
fn a_diagnosis_opens_a_course_with_the_connectors_own_key_token() {
    use registerbrygga::registers::engine::{PatientInput, RegisterEngine};
    use registerbrygga::sandbox::journal::{render_patient, Contract, Population, PopulationSpec};
    let meta = emulator::sandbox_registers().into_iter().find(|r| r.register.register_id == REGISTER_ID).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(REGISTER);
    std::fs::create_dir_all(&dir).unwrap();
    let s = registerbrygga::registers::scaffold::scaffold(REGISTER, &meta, &[FT01.to_string()]);
    std::fs::write(dir.join("connector.toml"), &s.connector_toml).unwrap();
    std::fs::write(dir.join("mapping.toml"), &s.mapping_toml).unwrap();
    std::fs::write(dir.join("metadata.json"), &s.metadata_json).unwrap();
    fill_in(&dir);
    let m = std::fs::read_to_string(dir.join("mapping.toml")).unwrap();
    let m = replace(
        &m,
        &format!("inclusion = [\"term:{INCLUSION}\"]"),
        "inclusion = [\"main_diagnosis\"]  # provisional: test\ndiagnoses = [\"M54.5\"]  # provisional: test\nkey = \"ryggforlopp\"  # provisional: test",
    );
    std::fs::write(dir.join("mapping.toml"), m).unwrap();
    let (connectors, problems) = registerbrygga::config::load_connectors(tmp.path());
    assert!(problems.is_empty(), "{problems:?}");
    let engine = RegisterEngine::load(&connectors[0], &meta).unwrap_or_else(|p| panic!("{p:?}"));

    let today = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
    let pop = std::sync::Arc::new(Population::generate(&PopulationSpec::new(7, 28, today)));
    let patient = 13;
    let fv = today - Duration::days(200);
    let mut first = visit(fv, FT01, vec![(obs::PAIN_NRS, AnswerValue::Quantity(7.0)), (obs::EQ5D_MOBILITY, AnswerValue::code("4")), (obs::FEAR_OF_MOVEMENT, AnswerValue::code("NEJ"))]);
    first.diagnoses = vec!["M54.5".into()];
    pop.add_visit(patient, first).unwrap();
    let six = visit(fv + Duration::days(170), FT01, vec![(FOLLOW_UP, AnswerValue::code("JA")), (obs::PAIN_NRS, AnswerValue::Quantity(2.0)), (obs::EQ5D_MOBILITY, AnswerValue::code("1"))]);
    pop.add_visit(patient, six).unwrap();
    let mut ctx = registerbrygga::sources::riv::ParseContext::new("test", today);
    // The sandbox's local terms, as the sandbox configuration (config/local.toml) knows them.
    ctx.known_code_systems.push(LOCAL_TERMS.to_string());
    let mut records = vec![];
    for c in [Contract::GetCareContacts, Contract::GetDiagnosis, Contract::GetActivities, Contract::GetObservations] {
        records.extend(registerbrygga::sources::riv::parse_bytes(&render_patient(&pop, c, patient), "sandbox", &ctx).unwrap().records);
    }
    let id = pop.patient_id(patient);
    let out = engine.map_patient(&PatientInput { connector: REGISTER, register: REGISTER, patient: &id, patient_key: "pk1", records: &records, today });
    let got: Vec<(&str, &str, serde_json::Value)> = out.intents.iter().map(|i| (i.key.idem_key.as_str(), i.key.form.as_str(), i.detail["occasion"].clone())).collect();
    let start_key = format!("{REGISTER}|{FT01}|pk1|ryggforlopp|RyggStart");
    let six_key = format!("{REGISTER}|{FT01}|pk1|ryggforlopp|Rygg6m");
    assert_eq!(got, [(start_key.as_str(), "RyggStart", serde_json::json!("first_visit")), (six_key.as_str(), "Rygg6m", serde_json::json!("six_months"))], "{out:?}");
    assert_eq!(out.intents[0].payload["R0_Radsla"], serde_json::json!(2));
    assert_eq!(out.intents[1].payload["Besoksdatum"], serde_json::json!((fv + Duration::days(170)).format("%Y-%m-%d").to_string()));
    assert_eq!(out.intents[0].detail["joints"], serde_json::json!({}), "no joint classification: the mapping declares none");
    assert!(out.incomplete.is_empty(), "{:?}", out.incomplete);
    assert_eq!(out.episodes.len(), 1);
    assert_eq!(out.episodes[0].forms_due, ["RyggStart", "Rygg6m"]);
}
