//! Keyword notes (GetCareDocumentation 2.1 + the connector's keyword table): the sandbox's notes
//! are schema-valid, every keyword is read right, exactly the deliberately broken ones are
//! refused, and the same journal read over structured observations and over notes gives the same
//! canonical records and the same SAR registrations and PVK aggregates.

mod common;

use chrono::NaiveDate;
use registerbrygga::config::Backend;
use registerbrygga::model::{Record, Refusal};
use registerbrygga::sandbox::env::SandboxSpec;
use registerbrygga::sandbox::journal::{render_patient, Contract, Population, PopulationSpec, SharedPopulation, OID_RESERVE_VARMLAND};
use registerbrygga::sources::riv::keywords::KeywordTable;
use registerbrygga::sources::riv::{parse_bytes, request, ParseContext};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn table() -> Arc<KeywordTable> {
    Arc::new(KeywordTable::load(&repo("connectors/artrosregistret/keywords.toml")).unwrap())
}

fn ctx(today: NaiveDate) -> ParseContext {
    let mut c = ParseContext::new("test", today);
    c.known_code_systems.push(registerbrygga::sandbox::vocabulary::LOCAL_TERMS.into());
    c.reserve_oids.push(OID_RESERVE_VARMLAND.into());
    c.keywords = Some(table());
    c
}

fn population(patients: usize, bad: f64) -> (SharedPopulation, NaiveDate) {
    let today = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
    let mut spec = PopulationSpec::new(31, patients, today);
    spec.bad_item_share = bad;
    (Arc::new(Population::generate(&spec)), today)
}

/// The response element alone (xmllint validates it against the responder schema).
fn strip_envelope(doc: &[u8]) -> String {
    let s = String::from_utf8(doc.to_vec()).unwrap();
    let start = s.find("<tns:").unwrap();
    let end = s.rfind("</soapenv:Body>").unwrap();
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}", &s[start..end])
}

fn xmllint(xsd: &str, files: &[PathBuf]) {
    let out = std::process::Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(repo(xsd))
        .args(files)
        .output()
        .expect("xmllint is installed (scripts/test installs libxml2-utils)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// An observation as both routes must give it: everything but where it was read from.
fn clinical(r: &Record) -> String {
    let Record::Observation(o) = r else { panic!("not an observation: {r:?}") };
    let mut o = o.clone();
    o.provenance.document_id = String::new();
    o.provenance.fetched_at = chrono::DateTime::UNIX_EPOCH;
    serde_json::to_string(&o).unwrap()
}

#[test]
fn keyword_notes_and_their_request_validate_against_the_xsd() {
    let (pop, today) = population(40, 0.05);
    let dir = common::test_dir();
    let mut files = vec![];
    for p in 0..pop.len() {
        let doc = render_patient(&pop, Contract::GetCareDocumentation, p);
        let f = dir.path().join(format!("notes-{p}.xml"));
        std::fs::write(&f, strip_envelope(&doc)).unwrap();
        files.push(f);
    }
    xmllint(Contract::GetCareDocumentation.response_xsd(), &files);

    let patient = pop.patient_id(0);
    let units = vec![registerbrygga::model::HsaId::parse("SE2321000156-FT01").unwrap()];
    let q = request::PatientQuery { patient: &patient, units: &units, care_giver: None, from: today - chrono::Duration::days(30), to: today };
    let req = dir.path().join("request.xml");
    std::fs::write(&req, request::get_care_documentation(&q)).unwrap();
    xmllint(Contract::GetCareDocumentation.response_xsd(), &[req]);
}

#[test]
fn keyword_note_corpus_reads_every_keyword_and_refuses_exactly_the_broken_ones() {
    let (pop, today) = population(400, 0.5);
    let c = ctx(today);
    let mut structured: BTreeMap<String, usize> = BTreeMap::new();
    let mut notes: BTreeMap<String, usize> = BTreeMap::new();
    let (mut refused_structured, mut refused_notes): (Vec<Refusal>, Vec<Refusal>) = (vec![], vec![]);
    let mut texts = String::new();
    for p in 0..pop.len() {
        let s = parse_bytes(&render_patient(&pop, Contract::GetObservations, p), "obs", &c).unwrap();
        let mut doc = render_patient(&pop, Contract::GetCareDocumentation, p);
        if p == 0 {
            // A coded keyword with an answer the table does not allow, in a note that has no
            // other answer to it (the generator breaks only answers outside SAR episodes).
            let text = String::from_utf8(doc).unwrap().replacen(">Fysioterapeutisk bedömning\n", ">Fysioterapeutisk bedömning\nSpärr kvalitetsregister: Kanske\n", 1);
            doc = text.into_bytes();
        }
        texts.push_str(&String::from_utf8_lossy(&doc));
        let n = parse_bytes(&doc, "notes", &c).unwrap();
        for r in &s.records {
            *structured.entry(clinical(r)).or_default() += 1;
        }
        for r in &n.records {
            *notes.entry(clinical(r)).or_default() += 1;
            // Provenance points at the note.
            assert!(r.provenance().document_id.contains("-N") && r.provenance().document_id.contains('#'), "{:?}", r.provenance());
        }
        refused_structured.extend(s.refused);
        refused_notes.extend(n.refused);
    }
    assert!(structured.len() > 500, "a corpus worth the name: {}", structured.len());
    let missing: Vec<_> = structured.keys().filter(|k| notes.get(*k) != structured.get(*k)).take(5).collect();
    let extra: Vec<_> = notes.keys().filter(|k| !structured.contains_key(*k)).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "notes differ from the structured observations\nmissing {missing:#?}\nextra {extra:#?}");
    // Exactly the deliberately bad answers are refused, one refusal per keyword, each with its reason.
    assert!(!refused_structured.is_empty());
    assert_eq!(refused_notes.len(), refused_structured.len() + 1, "{refused_notes:#?}");
    let reasons: Vec<&str> = refused_notes.iter().map(|r| r.reason.as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("different values")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("not one of the allowed answers")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("not a number")), "{reasons:?}");
    for r in &refused_notes {
        assert!(r.field.starts_with("careDocumentationBody/clinicalDocumentNote/clinicalDocumentNoteText/"), "{r:?}");
        assert!(r.document.contains("careDocumentation[") && r.document.contains("documentId"), "{r:?}");
        assert!(!r.reason.contains("Kanske") && !r.reason.contains("ungefär"), "the value written is not repeated: {r:?}");
    }
    // The corpus carries the template variations the table must absorb.
    for v in ["NRS smärta:", "Smärta (NRS)", "SMÄRTA (NRS)", "  :   ", "EQ-5D Rörlighet", "eq5d rörlighet", " kg\n", "Anamnes:"] {
        assert!(texts.contains(v), "no note has `{v}`");
    }
}

#[test]
fn a_note_without_a_keyword_table_is_refused_whole() {
    let (pop, today) = population(5, 0.0);
    let mut c = ctx(today);
    c.keywords = None;
    let n = parse_bytes(&render_patient(&pop, Contract::GetCareDocumentation, 0), "notes", &c).unwrap();
    assert!(n.records.is_empty());
    assert!(!n.refused.is_empty() && n.refused.iter().all(|r| r.reason.contains("no keyword table")), "{:?}", n.refused);
}

#[test]
fn inspect_lists_keywords_found_and_refused() {
    let (pop, _) = population(400, 0.5);
    let dir = common::test_dir();
    // A patient whose notes hold a broken keyword.
    let table = table();
    let p = (0..pop.len())
        .find(|p| {
            let doc = render_patient(&pop, Contract::GetCareDocumentation, *p);
            let c = ctx(pop.spec().today);
            parse_bytes(&doc, "n", &c).map(|n| !n.refused.is_empty() && !n.records.is_empty()).unwrap_or(false)
        })
        .expect("a patient with a broken keyword");
    let f = dir.path().join("notes.xml");
    std::fs::write(&f, render_patient(&pop, Contract::GetCareDocumentation, p)).unwrap();
    let _ = table;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_registerbrygga"))
        .args(["inspect", "--json", "--keywords"])
        .arg(repo("connectors/artrosregistret/keywords.toml"))
        .arg(&f)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["contract"], "GetCareDocumentation 2");
    assert!(!v["keywords"]["found"].as_array().unwrap().is_empty(), "{v}");
    assert!(!v["keywords"]["refused"].as_array().unwrap().is_empty(), "{v}");
    let text = serde_json::to_string(&v).unwrap();
    assert!(!text.contains(pop.patient_id(p).raw()), "no identity in the report");
}

// ---------------------------------------------------------------------------------------------
// Same truth, two routes through the whole daemon: structured GetObservations and keyword notes.

use common::e2e::{start_with, E2e};

/// Everything the emulator holds (SAR forms and PVK aggregates), without the emulator's ids.
fn held(e: &E2e) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for (reg, forms) in [(104u32, &["FVPat", "FVPT", "M3Pat", "M3PT", "Y1Pat"][..]), (218, &["Indikatorvarde"][..])] {
        for f in forms {
            for r in e.env.emulator.registrations(reg, f) {
                out.insert(format!("{reg}|{f}|{}|{:?}|{:?}|{}", r.unit_code, r.subject_key, r.event_date, serde_json::to_string(&r.columns).unwrap()));
            }
        }
    }
    out
}

async fn route(backend: Backend, observations: &str, name: &str) -> (std::collections::BTreeSet<String>, usize) {
    let today = registerbrygga::pipeline::today_stockholm();
    let mut spec = SandboxSpec::new(17, 80, today);
    spec.bad_item_share = 0.03;
    let mut e = start_with(backend, spec, name).await;
    let obs = observations.to_string();
    // The warehouse route: the region's ETL has copied the same journal into its warehouse.
    let warehouse = if observations == "warehouse" {
        let url = common::fresh_pg_url(&format!("{name}_dw")).await;
        let mut records = common::warehouse::riv_records(&e.env.population, e.env.today);
        // The RIV-TA routes find patients through the engagement index, which cannot list a
        // regional reserve number (its schema's id pattern); the warehouse would. Compared on
        // the patients all three routes can see.
        records.retain(|_, v| v.first().is_none_or(|r| r.patient().kind() != registerbrygga::model::IdKind::Reserve));
        common::warehouse::fill(&url, &records).await;
        Some(common::warehouse::settings(&url))
    } else {
        None
    };
    e.reconfigure(move |l| {
        let s = l.settings.sources.get_mut("journal").expect("the sandbox's journal source");
        match warehouse {
            Some(w) => *s = w,
            None if obs == "notes" => s.observations = registerbrygga::config::ObservationSource::Notes,
            None => s.observations = registerbrygga::config::ObservationSource::Structured,
        }
    })
    .await;
    let mut quarantined = 0;
    for c in ["artrosregistret", "primarvardskvalitet"] {
        let r = e.run(c).await;
        assert_eq!(r.status, "ok", "{observations}: {r:?}");
        quarantined += r.quarantined as usize;
    }
    e.deliver().await;
    let h = held(&e);
    e.env.shutdown().await;
    (h, quarantined)
}

/// Same truth, three routes: the structured RIV-TA contracts, keyword notes, the SQL warehouse.
async fn same_truth_over_structured_contracts_keyword_notes_and_the_warehouse(backend: Backend) {
    let (structured, q1) = route(backend, "structured", "kw_structured").await;
    let (notes, q2) = route(backend, "notes", "kw_notes").await;
    let (warehouse, _) = route(backend, "warehouse", "kw_warehouse").await;
    let only_s: Vec<_> = structured.difference(&warehouse).take(5).collect();
    let only_w: Vec<_> = warehouse.difference(&structured).take(5).collect();
    assert!(only_s.is_empty() && only_w.is_empty(), "RIV-TA and the warehouse differ\nstructured only {only_s:#?}\nwarehouse only {only_w:#?}");
    assert!(structured.iter().filter(|s| s.starts_with("104|")).count() > 10, "SAR registrations: {}", structured.len());
    assert!(structured.iter().any(|s| s.starts_with("218|")), "PVK aggregates");
    let only_s: Vec<_> = structured.difference(&notes).take(5).collect();
    let only_n: Vec<_> = notes.difference(&structured).take(5).collect();
    assert!(only_s.is_empty() && only_n.is_empty(), "the routes differ\nstructured only {only_s:#?}\nnotes only {only_n:#?}");
    assert_eq!(q1, q2, "the same items quarantined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_truth_over_structured_contracts_keyword_notes_and_the_warehouse_sqlite() {
    same_truth_over_structured_contracts_keyword_notes_and_the_warehouse(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_truth_over_structured_contracts_keyword_notes_and_the_warehouse_postgres() {
    same_truth_over_structured_contracts_keyword_notes_and_the_warehouse(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------
// config check knows keyword tables

fn config_check(dir: &Path) -> (i32, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_registerbrygga"));
    cmd.current_dir(dir).args(["config", "check", "--config-dir", "config"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("RB__") || k == "RB_ENV" {
            cmd.env_remove(k);
        }
    }
    let out = cmd.env("RB_TEST_KEY", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn config_check_wants_a_valid_keyword_table_when_notes_are_read() {
    let d = common::test_dir();
    let w = |rel: &str, text: &str| {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w(
        "config/default.toml",
        r#"
[service]
connectors_dir = "connectors"
[security]
encryption_keys = [{ env = "RB_TEST_KEY" }]
pseudonym_key = { env = "RB_TEST_KEY" }
[sources.journal]
kind = "riv"
base_url = "https://127.0.0.1:7443/vp"
observations = "notes"
[registers.sar]
kind = "stratum"
base_url = "https://127.0.0.1:7444"
register_id = 104
units = [{ hsa_id = "SE2321000156-FT01", unit_code = "1701" }]
"#,
    );
    let metadata = repo("conformance/stratum/sar-104.json");
    w(
        "connectors/demo/connector.toml",
        &format!(
            r#"
name = "demo"
kind = "sar"
source = "journal"
register = "sar"
schedule = "30 2 * * *"
units = ["SE2321000156-FT01"]
patients = {{ mode = "engagement_index" }}
[options]
mapping = "mapping.toml"
metadata_file = "{}"
windows = {{ three_months = {{ from_day = 75, to_day = 150 }}, one_year = {{ from_day = 330, to_day = 540 }} }}
"#,
            metadata.display()
        ),
    );
    std::fs::copy(repo("connectors/artrosregistret/mapping.toml"), d.path().join("connectors/demo/mapping.toml")).unwrap();
    let (code, out) = config_check(d.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("reads keyword notes") && out.contains("keywords.toml"), "{out}");
    let shipped = std::fs::read_to_string(repo("connectors/artrosregistret/keywords.toml")).unwrap();
    w("connectors/demo/keywords.toml", &shipped.replacen("headings = [\"Vikt\"]", "headings = [\"Sida\"]", 1));
    let (code, out) = config_check(d.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("connectors/demo/keywords.toml") && out.contains("already a heading"), "{out}");
    w("connectors/demo/keywords.toml", &shipped);
    let (code, out) = config_check(d.path());
    assert_eq!(code, 0, "{out}");
}
