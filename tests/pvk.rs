//! Primärvårdskvalitet: rule loading, every indicator family, variants, aggregates, exports,
//! data quality and config check. Hand-built populations, no store, no network; the listing-query
//! tests read a SQLite file and a database on the test PostgreSQL cluster.

mod common;

use chrono::NaiveDate;
use registerbrygga::config::{ConnectorDef, Loaded, Settings, UnitBinding};
use registerbrygga::crypto::Pseudonymizer;
use registerbrygga::model::{
    luhn_check_digit, stockholm, Activity, CareContact, Code, Diagnosis, DiagnosisKind, HsaId, Observation, ObservationValue, PatientId, Provenance, Record,
    OID_ICD10SE, OID_KVA,
};
use registerbrygga::registers::pvk::{self, aggregate_intents, aggregate_plan, ComputeInput, DrugList, Listing, PatientRecords, PvkEngine, PvkOutput};
use registerbrygga::sandbox::vocabulary::{act, obs, profession, LOCAL_TERMS};
use registerbrygga::sinks::export::{write_exports, RunInfo, CSV_COLUMNS};
use registerbrygga::sinks::stratum::metadata::RegisterMetadata;
use registerbrygga::store::PvkResultRow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const FT01: &str = "SE2321000156-FT01";
const FT02: &str = "SE2321000156-FT02";
const VC01: &str = "SE2321000156-VC01";
const CARE_CONTACT_VISIT: &str = "1";
const CARE_CONTACT_PHONE: &str = "2";

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 4, 15).unwrap()
}

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn pseudo() -> Pseudonymizer {
    Pseudonymizer::new([9u8; 32])
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn metadata() -> RegisterMetadata {
    RegisterMetadata::from_json(&std::fs::read(repo().join("conformance/stratum/pvk-aggregate.json")).unwrap()).unwrap()
}

fn bindings() -> Vec<UnitBinding> {
    (1..=4).map(|i| UnitBinding { hsa_id: format!("SE2321000156-FT0{i}"), unit_code: format!("170{i}"), name: None }).collect()
}

/// A valid personnummer born on `birth` (YYYYMMDD) with the given serial.
fn pnr(birth: &str, serial: u32) -> PatientId {
    let short = format!("{}{:03}", &birth[2..], serial);
    let digits: Vec<u8> = short.bytes().map(|b| b - b'0').collect();
    let c = luhn_check_digit(&digits);
    PatientId::parse_national(&format!("{birth}{:03}{c}", serial), today()).unwrap()
}

static DOC: AtomicU64 = AtomicU64::new(1);

fn prov() -> Provenance {
    Provenance {
        connector: "pvk".into(),
        source_system: "SE2321000156-COS1".into(),
        document_id: format!("doc-{}", DOC.fetch_add(1, Ordering::Relaxed)),
        fetched_at: chrono::Utc::now(),
    }
}

fn at(date: &str) -> Option<registerbrygga::model::LocalTime> {
    Some(stockholm(d(date).and_hms_opt(10, 0, 0).unwrap()))
}

fn local(code: &str) -> Code {
    Code::new(LOCAL_TERMS, code)
}

fn visit(p: &PatientId, unit: &str, date: &str, ctype: &str, prof: &str) -> Record {
    Record::CareContact(CareContact {
        provenance: prov(),
        patient: p.clone(),
        care_contact_id: Some(format!("cc-{}", DOC.fetch_add(1, Ordering::Relaxed))),
        unit: Some(HsaId::parse(unit).unwrap()),
        start: at(date),
        end: None,
        contact_type: Some(Code::new("1.2.752.129.2.2.2.25", ctype)),
        status: None,
        profession: Some(local(prof)),
        nullified: false,
    })
}

fn diag(p: &PatientId, unit: &str, date: &str, icd: &str) -> Record {
    Record::Diagnosis(Diagnosis {
        provenance: prov(),
        patient: p.clone(),
        care_contact_id: None,
        unit: Some(HsaId::parse(unit).unwrap()),
        code: Code::new(OID_ICD10SE, icd),
        kind: DiagnosisKind::Main,
        chronic: None,
        time: at(date),
        profession: Some(local(profession::PHYSICIAN)),
        nullified: false,
    })
}

fn activity(p: &PatientId, unit: &str, date: &str, code: Code, prof: &str) -> Record {
    Record::Activity(Activity {
        provenance: prov(),
        patient: p.clone(),
        care_contact_id: None,
        unit: Some(HsaId::parse(unit).unwrap()),
        code,
        time: at(date),
        status: None,
        profession: Some(local(prof)),
        nullified: false,
    })
}

fn observation(p: &PatientId, unit: &str, date: &str, term: &str, value: Option<f64>) -> Record {
    Record::Observation(Observation {
        provenance: prov(),
        patient: p.clone(),
        care_contact_id: None,
        unit: Some(HsaId::parse(unit).unwrap()),
        term: local(term),
        value: value.map(|v| ObservationValue::Quantity { value: v, unit: Some("m".into()) }),
        time: at(date),
        profession: Some(local(profession::PHYSIOTHERAPIST)),
        nullified: false,
    })
}

fn patient(p: &PatientId, records: Vec<Record>) -> PatientRecords {
    PatientRecords { patient_key: pseudo().patient_key(p), patient: p.clone(), records }
}

/// A PVK connector definition reading rules from `dir/rules` with extra `[options]` lines.
fn connector(dir: &Path, units: &[&str], options: &str) -> ConnectorDef {
    let units = units.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    let text = format!(
        "name = \"pvk\"\nkind = \"pvk\"\nsource = \"journal\"\nregister = \"pvk\"\nschedule = \"0 2 * * *\"\nunits = [{units}]\npatients = {{ mode = \"all\" }}\n[options]\n{options}\n"
    );
    let mut c: ConnectorDef = toml::from_str(&text).unwrap();
    c.dir = dir.to_path_buf();
    c
}

fn shipped() -> PathBuf {
    repo().join("connectors/primarvardskvalitet")
}

/// The shipped sandbox rules, no small-cell protection (threshold 1), for exact counts. The
/// region's primary care is FT01, FT02 and VC01 unless `extra` says otherwise (diagnoses
/// elsewhere, e.g. at hospital unit SJH1, do not count).
fn sandbox_engine(units: &[&str], extra: &str) -> PvkEngine {
    let primary = if extra.contains("primary_care_units") { String::new() } else { format!("primary_care_units = [\"{FT01}\", \"{FT02}\", \"{VC01}\"]\n") };
    let c = connector(&shipped(), units, &format!("rule_files = [\"sandbox-2026.toml\"]\nsmall_cells = {{ threshold = 1 }}\n{primary}{extra}"));
    PvkEngine::load(&c).unwrap_or_else(|e| panic!("{e:#?}"))
}

fn hsa(units: &[&str]) -> Vec<HsaId> {
    units.iter().map(|u| HsaId::parse(u).unwrap()).collect()
}

fn compute(engine: &PvkEngine, patients: &[PatientRecords], listing: Option<&Listing>, drugs: Option<&DrugList>, units: &[&str], months: &[(i32, u32)]) -> PvkOutput {
    let units = hsa(units);
    engine.compute(&ComputeInput { patients, listing, drugs, units: &units, months, today: today() })
}

fn row<'a>(out: &'a PvkOutput, rule_year: i32, unit: &str, month: (i32, u32), indicator: &str) -> &'a PvkResultRow {
    out.results
        .iter()
        .find(|r| r.rule_year == rule_year && r.unit == unit && (r.year, r.month) == month && r.indicator == indicator)
        .unwrap_or_else(|| panic!("no row {rule_year} {unit} {month:?} {indicator}"))
}

fn counts(r: &PvkResultRow) -> (Option<i64>, Option<i64>) {
    (r.numerator, r.denominator)
}

/// Pseudonyms in a row's patient list with the given role.
fn listed(r: &PvkResultRow, role: &str) -> Vec<String> {
    let list = r.patient_list.as_ref().expect("a computable row has a patient list").value();
    list["patients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["roles"].as_array().unwrap().iter().any(|x| x == role))
        .map(|p| p["patient_key"].as_str().unwrap().to_string())
        .collect()
}

fn write_rules(name: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules").join(name), text).unwrap();
    dir
}

const MAR: (i32, u32) = (2026, 3);

// --------------------------------------------------------------------------------- rule sets

#[test]
fn shipped_rule_sets_load_cover_the_register_and_warn_for_every_unverified_list() {
    let meta = metadata();
    for (opt, label) in [("rule_years = [2026]", "2026.toml"), ("rule_files = [\"sandbox-2026.toml\"]", "sandbox-2026.toml")] {
        let engine = PvkEngine::load(&connector(&shipped(), &[FT01, VC01], &format!("{opt}\nvardcentraler = [\"{VC01}\"]")))
            .unwrap_or_else(|e| panic!("{label}: {e:#?}"));
        let rs = &engine.rule_sets[0];
        assert_eq!(rs.year, 2026);
        let codes: Vec<&str> = rs.indicators.iter().map(|i| i.register_code.as_str()).collect();
        for want in [
            "Ar03", "Ar04", "Ar11", "Ar12", "Ar13", "KOL06", "KOL07", "KOL08", "KOL09", "KOL12", "KOL13", "KOL14", "KOL15", "TS01", "TS05", "TS11", "Hj01", "Os04", "Os10",
            "Os11", "Ink01", "Ink02", "Ink03", "Dep01", "St01", "St02", "St11", "St12", "Sm01", "Sm11", "Dem11", "Dem12", "Dem13", "LevFA11", "LevFA12", "LevKO11", "LevKO12",
            "MS01", "REGFAR01", "REGVV01", "REGVV02",
        ] {
            assert!(codes.contains(&want), "{label} lacks {want}");
        }
        assert_eq!(rs.indicator("TS01").unwrap().id, "T/S01");
        // FaR is no PVK indicator: a regional measure with its own prefix.
        assert!(!codes.contains(&"FaR01"));
        let far = rs.indicator("REGFAR01").unwrap();
        assert!(far.regional && far.id.starts_with("REG-"));
        assert!(rs.indicators.iter().all(|i| i.regional == i.register_code.starts_with("REG")));
        // Mångsökare stays, its id marked provisional with the reason.
        assert!(rs.indicator("MS01").unwrap().provisional.as_deref().unwrap().contains("samsjuklighet"));
        // KOL09/KOL15 are not limited to the two-drug subgroup; KOL06–08/12–14 are.
        for code in ["KOL09", "KOL15"] {
            assert!(rs.indicator(code).unwrap().population.drugs.is_none(), "{label} {code}");
        }
        for code in ["KOL06", "KOL07", "KOL08", "KOL12", "KOL13", "KOL14"] {
            assert_eq!(rs.indicator(code).unwrap().population.drugs.as_ref().map(|d| d.min_distinct), Some(2), "{label} {code}");
        }
        // Longer cortisone treatment is a duration, not a single prescription.
        assert_eq!(rs.indicator("Os11").unwrap().population.drugs.as_ref().and_then(|d| d.min_days), Some(90));
        // Every indicator says where its windows come from.
        assert!(rs.indicators.iter().all(|i| i.windows_source.is_some()), "{label}");
        assert!(pvk::check_against_metadata(&engine, &meta).is_empty(), "{label}: every register code is in the Indikator domain");
        // Every code list cites a source; every unverified one produces a warning naming it.
        for cs in &rs.code_sets {
            assert!(!cs.source.is_empty());
            let warned = engine.warnings.iter().any(|w| w.warning && w.key == format!("code_sets.{}", cs.name));
            assert_eq!(warned, !cs.verified, "{label}: code_sets.{} verified={} warned={warned}", cs.name, cs.verified);
        }
    }
    // Only sources that confirm codes are verified: hip/knee artros (M16/M17) and FaR (DV200).
    let engine = PvkEngine::load(&connector(&shipped(), &[FT01], "rule_years = [2026]")).unwrap();
    let verified: Vec<&str> = engine.rule_sets[0].code_sets.iter().filter(|c| c.verified).map(|c| c.name.as_str()).collect();
    assert_eq!(verified, vec!["artros_hoft_kna", "far", "langvarig_smarta"]);
    let sandbox = sandbox_engine(&[FT01], "");
    assert!(sandbox.rule_sets[0].code_sets.iter().filter(|c| c.system == LOCAL_TERMS).all(|c| !c.verified && c.note.as_deref().unwrap().contains("sandbox codes, demo only")));
}

#[test]
fn shipped_2026_rules_report_missing_code_lists_as_not_computable_never_zero() {
    let engine = PvkEngine::load(&connector(&shipped(), &[FT01], "rule_years = [2026]\nsmall_cells = { threshold = 1 }")).unwrap();
    let p = pnr("19500101", 11);
    let pats = vec![patient(&p, vec![visit(&p, FT01, "2026-03-02", "1", profession::PHYSIOTHERAPIST), diag(&p, FT01, "2026-03-02", "M17.1")])];
    let out = compute(&engine, &pats, None, None, &[FT01], &[MAR]);
    let ar12 = row(&out, 2026, FT01, MAR, "Ar12");
    assert!(!ar12.computable);
    assert_eq!(counts(ar12), (None, None));
    assert_eq!(ar12.note.as_deref(), Some("ej beräkningsbar: kodlista saknas (artrosskola)"));
    assert!(ar12.patient_list.is_none());
    let kol12 = row(&out, 2026, FT01, MAR, "KOL12");
    assert!(!kol12.computable);
    assert!(kol12.note.as_deref().unwrap().contains("läkemedelsdata saknas"));
    // Where SKR's definition is not public, the row says what is missing.
    let lev = row(&out, 2026, FT01, MAR, "LevFA11");
    assert!(!lev.computable && lev.note.as_deref().unwrap().starts_with("ej beräkningsbar: SKR:s definition är inte offentlig"), "{:?}", lev.note);
    assert!(!row(&out, 2026, FT01, MAR, "St11").computable, "St11 needs the rehab symptom list");
    // What the shipped lists can compute, they compute.
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "Ar11")), (Some(1), Some(1)));
    assert!(row(&out, 2026, FT01, MAR, "TS11").computable);
    assert!(row(&out, 2026, FT01, MAR, "MS01").computable);
    // Not computable cells are never sent.
    let intents = aggregate_intents(&out.results, &metadata(), &bindings(), "pvk", today());
    assert!(intents.iter().all(|i| i.payload["Q_Indicator"] != "Ar12" && i.payload["Q_Indicator"] != "KOL12"));
    assert!(intents.iter().any(|i| i.payload["Q_Indicator"] == "Ar11"));
}

// --------------------------------------------------------------------------------- indicator families

#[test]
fn artros_rehab_prevalence_and_actions_keep_the_performing_profession() {
    let engine = sandbox_engine(&[FT01, FT02], "");
    let a = pnr("19500101", 21); // artros, artrosskola by a physiotherapist
    let b = pnr("19520202", 31); // artros, supervised exercise at another unit only
    let c = pnr("19600303", 41); // visitor without artros
    let e = pnr("19480404", 51); // artros, but last visit 14 months ago: not a visitor now
    let pats = vec![
        patient(&a, vec![visit(&a, FT01, "2026-01-10", "1", profession::PHYSIOTHERAPIST), diag(&a, FT01, "2026-01-10", "M17.0"), activity(&a, FT01, "2026-02-01", local(act::ARTROSSKOLA), profession::PHYSIOTHERAPIST)]),
        patient(&b, vec![visit(&b, FT01, "2025-12-01", "1", profession::PHYSIOTHERAPIST), diag(&b, FT01, "2025-12-01", "M16.1"), visit(&b, FT02, "2026-02-01", "1", profession::PHYSIOTHERAPIST), activity(&b, FT02, "2026-02-01", local(act::SUPERVISED_EXERCISE), profession::PHYSIOTHERAPIST)]),
        patient(&c, vec![visit(&c, FT01, "2026-03-05", "1", profession::OCCUPATIONAL_THERAPIST), diag(&c, FT01, "2026-03-05", "M54.5")]),
        patient(&e, vec![visit(&e, FT01, "2025-01-10", "1", profession::PHYSIOTHERAPIST), diag(&e, FT01, "2025-01-10", "M17.0")]),
    ];
    let out = compute(&engine, &pats, None, None, &[FT01, FT02], &[MAR]);
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "Ar11")), (Some(2), Some(3)));
    let ar12 = row(&out, 2026, FT01, MAR, "Ar12");
    assert_eq!(counts(ar12), (Some(1), Some(2)));
    let key = |p: &PatientId| pseudo().patient_key(p);
    assert_eq!(listed(ar12, "numerator"), vec![key(&a)]);
    let mut den = listed(ar12, "denominator");
    den.sort();
    let mut want = vec![key(&a), key(&b)];
    want.sort();
    assert_eq!(den, want);
    let list = ar12.patient_list.as_ref().unwrap().value();
    assert_eq!(list["by_profession"][profession::PHYSIOTHERAPIST], 1);
    let pa = list["patients"].as_array().unwrap().iter().find(|p| p["patient_key"] == key(&a).as_str()).unwrap();
    assert_eq!(pa["professions"], serde_json::json!([profession::PHYSIOTHERAPIST]));
    assert_eq!(pa["id"], a.raw(), "the local list carries the identity for authorised follow-up");
    // Rehab scope: B's exercise at FT02 does not count for FT01 …
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "Ar13")), (Some(0), Some(2)));
    // … while at FT02 B's diagnosis (set at FT01, primary care) counts: one diagnosis scope, and
    // B's exercise there is FT02's.
    assert_eq!(counts(row(&out, 2026, FT02, MAR, "Ar13")), (Some(1), Some(1)));
    // A diagnosis set outside primary care does not count: with FT01 not primary care, B is not in
    // FT02's population and A, C and E are out of FT01's.
    let only_ft02 = sandbox_engine(&[FT01, FT02], &format!("primary_care_units = [\"{FT02}\"]"));
    let out2 = compute(&only_ft02, &pats, None, None, &[FT01, FT02], &[MAR]);
    assert_eq!(counts(row(&out2, 2026, FT02, MAR, "Ar13")), (Some(0), Some(0)));
    assert_eq!(counts(row(&out2, 2026, FT01, MAR, "Ar11")), (Some(0), Some(3)));
    // Vårdcentral variants are not produced for rehab units.
    assert!(!out.results.iter().any(|r| r.indicator == "Ar03"));
}

#[test]
fn kol_prevalence_measures_and_observations_and_declared_drug_requirement() {
    // Sandbox rules: 6MWT counts as an activity or as an observation with a value.
    let engine = sandbox_engine(&[FT01], "");
    let a = pnr("19450505", 61);
    let b = pnr("19460606", 71);
    let c = pnr("19470707", 81);
    let pats = vec![
        patient(&a, vec![visit(&a, FT01, "2026-02-01", "1", profession::PHYSIOTHERAPIST), diag(&a, "SE2321000156-VC01", "2025-11-01", "J44.9"), observation(&a, FT01, "2026-02-01", obs::SIX_MINUTE_WALK, Some(320.0))]),
        patient(&b, vec![visit(&b, FT01, "2026-02-01", "1", profession::PHYSIOTHERAPIST), diag(&b, FT01, "2026-02-01", "J44.1"), observation(&b, FT01, "2026-02-01", obs::SIX_MINUTE_WALK, None), activity(&b, FT01, "2026-02-03", local(act::PATIENT_EDUCATION_KOL), profession::NURSE)]),
        patient(&c, vec![visit(&c, FT01, "2026-02-01", "1", profession::PHYSIOTHERAPIST), diag(&c, FT01, "2026-02-01", "J44.9"), activity(&c, FT01, "2026-03-01", local(act::SIX_MINUTE_WALK_TEST), profession::PHYSIOTHERAPIST)]),
    ];
    // Everyone on two maintenance drugs, signed at the vårdcentral (primary care).
    let rx = |p: &PatientId| {
        ["R03AK06", "R03BB04"].map(|atc| (p.raw().to_string(), atc.to_string(), d("2026-01-05"), Some(90u32), Some(VC01.to_string())))
    };
    let drugs = DrugList::from_prescriptions([rx(&a), rx(&b), rx(&c)].concat(), today());
    let out = compute(&engine, &pats, None, Some(&drugs), &[FT01], &[MAR]);
    // A's diagnosis was set at a vårdcentral: primary care, so it counts at the rehab unit.
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "KOL12")), (Some(2), Some(3)), "an observation without a value is not a performed test");
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "KOL15")), (Some(1), Some(3)));
    // KOL15 (patient education) needs no drug list at all; KOL12 does.
    let out = compute(&engine, &pats, None, None, &[FT01], &[MAR]);
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "KOL15")), (Some(1), Some(3)));
    assert!(!row(&out, 2026, FT01, MAR, "KOL12").computable);

    // The real rule shape: KOL patients with ≥2 maintenance drugs. Without drug data: not computable.
    let rules = r#"
[rule_set]
year = 2026
name = "kol test"
verified = false
note = "test"
[code_sets.kol]
kind = "diagnosis"
system = "icd10se"
codes = ["J44"]
verified = false
source = "test"
note = "test"
[code_sets.underhall]
kind = "drug"
system = "atc"
codes = ["R03AK", "R03BB"]
verified = false
source = "test"
note = "test codes"
[code_sets.gangtest]
kind = "activity"
system = "2.25.317202611230001"
codes = ["6MWT-GENOMFORT"]
verified = false
source = "test"
note = "test"
[[indicators]]
id = "KOL12"
title = "6MWT"
variant = "rehab"
kind = "proportion"
[indicators.population]
diagnoses = ["kol"]
scope = "any"
drugs = { code_set = "underhall", min_distinct = 2, combine = "and", scope = "any", description = "minst två underhållsläkemedel" }
[indicators.measure]
activities = ["gangtest"]
"#;
    let dir = write_rules("2026.toml", rules);
    let engine = PvkEngine::load(&connector(dir.path(), &[FT01], "rule_years = [2026]\nsmall_cells = { threshold = 1 }")).unwrap();
    let out = compute(&engine, &pats, None, None, &[FT01], &[MAR]);
    let r = row(&out, 2026, FT01, MAR, "KOL12");
    assert!(!r.computable && r.note.as_deref().unwrap().contains("läkemedelsdata saknas (minst två underhållsläkemedel"));
    // With a drug list: C has two distinct maintenance drugs, A only one (twice), B none.
    let drugs = DrugList::from_rows(
        vec![
            (c.raw().to_string(), "R03AK06".to_string(), d("2025-10-01")),
            (c.raw().to_string(), "R03BB04".to_string(), d("2026-01-01")),
            (a.raw().to_string(), "R03AK06".to_string(), d("2025-10-01")),
            (a.raw().to_string(), "R03AK06".to_string(), d("2026-01-01")),
        ],
        today(),
    );
    let out = compute(&engine, &pats, None, Some(&drugs), &[FT01], &[MAR]);
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "KOL12")), (Some(1), Some(1)));
}

#[test]
fn stroke_heart_failure_depression_and_stress_prevalence() {
    let engine = sandbox_engine(&[FT01], "");
    let a = pnr("19400101", 91);
    let b = pnr("19410101", 101);
    let c = pnr("19800101", 111);
    let pats = vec![
        patient(&a, vec![visit(&a, FT01, "2026-03-01", "1", profession::PHYSIOTHERAPIST), diag(&a, "SE2321000156-VC01", "2025-06-01", "I63.9")]),
        patient(&b, vec![visit(&b, FT01, "2026-03-01", "1", profession::PHYSIOTHERAPIST), diag(&b, FT01, "2026-03-01", "G45.9")]),
        patient(&c, vec![visit(&c, FT01, "2026-03-01", "1", profession::OCCUPATIONAL_THERAPIST), diag(&c, FT01, "2026-03-01", "F43.8A")]),
    ];
    let out = compute(&engine, &pats, None, None, &[FT01], &[MAR]);
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "TS11")), (Some(1), Some(3)), "stroke only; TIA is not stroke");
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "St11")), (Some(1), Some(3)));
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "St12")), (Some(1), Some(3)));
}

#[test]
fn vardcentral_variants_need_listing_data_and_count_listed_patients_without_records() {
    let engine = sandbox_engine(&[FT01, VC01], &format!("vardcentraler = [\"{VC01}\"]"));
    let a = pnr("19500101", 121); // listed, heart failure diagnosed at a hospital unit
    let b = pnr("19600101", 131); // listed, stroke + TIA
    let c = pnr("19700101", 141); // listed, no records at all
    let x = pnr("19550101", 151); // not listed, heart failure at VC01
    let pats = vec![
        patient(&a, vec![diag(&a, "SE2321000156-SJH1", "2025-12-01", "I50.9")]),
        patient(&b, vec![visit(&b, VC01, "2026-01-05", "1", profession::PHYSICIAN), diag(&b, VC01, "2026-01-05", "I63.4"), diag(&b, VC01, "2026-01-05", "G45.9"), diag(&b, VC01, "2026-02-05", "F32.1"), diag(&b, VC01, "2026-02-05", "F43.8A")]),
        patient(&x, vec![visit(&x, VC01, "2026-01-05", "1", profession::PHYSICIAN), diag(&x, VC01, "2026-01-05", "I50.1")]),
    ];
    // Without listing: every vårdcentral indicator is reported, as not computable.
    let out = compute(&engine, &pats, None, None, &[FT01, VC01], &[MAR]);
    for code in ["Ar03", "Ar04", "KOL06", "TS01", "TS05", "Hj01", "Os04", "Ink01", "Ink03", "Dep01", "St01", "St02"] {
        let r = row(&out, 2026, VC01, MAR, code);
        assert!(!r.computable, "{code}");
        assert_eq!(counts(r), (None, None), "{code}: never zero");
        assert!(r.note.as_deref().unwrap().contains("listningsdata saknas"), "{code}: {:?}", r.note);
    }
    assert!(!row(&out, 2026, VC01, MAR, "MS01").computable, "the any-variant at a vårdcentral needs the listing too");
    assert!(!out.results.iter().any(|r| r.unit == VC01 && r.indicator == "Ar12"), "rehab variants are not produced for vårdcentraler");
    assert!(row(&out, 2026, FT01, MAR, "MS01").computable);

    let listing = Listing::from_rows(vec![(a.raw(), VC01), (b.raw(), VC01), (c.raw(), VC01), ("191212121213", VC01), (x.raw(), "not-an-hsa-id")], today(), &pseudo());
    assert_eq!(listing.refused_lines, vec![4, 5], "invalid rows are refused by line, without their values");
    let out = compute(&engine, &pats, Some(&listing), None, &[FT01, VC01], &[(2026, 1), MAR]);
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "Hj01")), (Some(0), Some(3)), "a's heart failure was diagnosed in hospital, not in primary care; x is not listed");
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "TS01")), (Some(1), Some(3)));
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "TS05")), (Some(1), Some(3)));
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "Dep01")), (Some(1), Some(3)));
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "St01")), (Some(1), Some(3)));
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "St02")), (Some(1), Some(3)));
    assert_eq!(counts(row(&out, 2026, VC01, (2026, 1), "Dep01")), (Some(0), Some(3)), "diagnosed in February");
    // Counted anywhere (scope = "any"), a's hospital diagnosis would count.
    let any = sandbox_engine(&[FT01, VC01], &format!("vardcentraler = [\"{VC01}\"]\nprimary_care_units = [\"{VC01}\", \"SE2321000156-SJH1\"]"));
    let out = compute(&any, &pats, Some(&listing), None, &[FT01, VC01], &[MAR]);
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "Hj01")), (Some(1), Some(3)));
    assert_eq!(listed(row(&out, 2026, VC01, MAR, "Hj01"), "numerator"), vec![pseudo().patient_key(&a)]);
}

/// The sandbox engine with a vårdcentral whose listing (and drug list) come from queries against
/// `url`, which is given as a secret (a file in `dir` holding it).
fn engine_with_queries(dir: &Path, url: &str, listing: &str, drugs: Option<&str>) -> PvkEngine {
    let secret = dir.join("region-db.url");
    std::fs::write(&secret, url).unwrap();
    let source = |sql: &str| format!("{{ sql = \"{sql}\", url = {{ file = \"{}\" }} }}", secret.display());
    let mut options = format!("vardcentraler = [\"{VC01}\"]\nlisting = {}", source(listing));
    if let Some(d) = drugs {
        options.push_str(&format!("\ndrug_list = {}", source(d)));
    }
    sandbox_engine(&[FT01, VC01], &options)
}

#[tokio::test]
async fn listing_and_drug_lists_come_from_the_regions_database_when_configured_as_sql() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("region.db");
    let url = format!("sqlite:{}?mode=rwc", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let (a, b, c) = (pnr("19500101", 121), pnr("19600101", 131), pnr("19700101", 141));
    sqlx::query("CREATE TABLE listing (pnr TEXT, hsa TEXT); CREATE TABLE drugs (pnr TEXT, atc TEXT, given TEXT)").execute(&mut conn).await.unwrap();
    for (p, u) in [(a.raw(), VC01), (b.raw(), VC01), (c.raw(), VC01), ("191212121213", VC01), (a.raw(), "not-an-hsa-id")] {
        sqlx::query("INSERT INTO listing VALUES (?, ?)").bind(p).bind(u).execute(&mut conn).await.unwrap();
    }
    for (p, atc, date) in [(a.raw(), "R03AK06", "2026-01-10"), (b.raw(), "R03BB04", "2026-02-01"), (c.raw(), "R03BB04", "förra veckan")] {
        sqlx::query("INSERT INTO drugs VALUES (?, ?, ?)").bind(p).bind(atc).bind(date).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
    let engine = engine_with_queries(dir.path(), &url, "SELECT pnr, hsa FROM listing", Some("SELECT pnr, atc, given FROM drugs"));
    let inputs = registerbrygga::daemon::pvk_inputs(&engine, today(), &pseudo()).await.unwrap();
    assert_eq!(inputs.listing.as_ref().map(|l| l.len()), Some(3), "three usable listing rows");
    assert_eq!(inputs.listing_refused, 2, "an invalid personnummer and an invalid HSA id are refused");
    assert_eq!(inputs.drugs_refused, 1, "a row without a date is refused");
    assert!(inputs.drugs.is_some());
    // With the listing read from the database, the vårdcentral variants become computable.
    let pats = vec![patient(&a, vec![diag(&a, "SE2321000156-SJH1", "2025-12-01", "I50.9")])];
    let out = compute(&engine, &pats, inputs.listing.as_ref(), inputs.drugs.as_ref(), &[FT01, VC01], &[MAR]);
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "Hj01")), (Some(0), Some(3)), "a's diagnosis was set in hospital");
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "TS01")), (Some(0), Some(3)));

    // A failing query is an error naming what failed, never a silent empty listing.
    let broken = engine_with_queries(dir.path(), &url, "SELECT pnr, hsa FROM no_such_table", None);
    let err = format!("{:#}", registerbrygga::daemon::pvk_inputs(&broken, today(), &pseudo()).await.err().expect("the query fails"));
    assert!(err.contains("PVK listing query") && err.contains("query failed"), "{err}");
}

#[tokio::test]
async fn listing_query_runs_against_postgresql_too() {
    use sqlx::Connection;
    let url = common::fresh_pg_url("pvk_listing").await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let (a, b) = (pnr("19500101", 121), pnr("19600101", 131));
    sqlx::query("CREATE TABLE listning (personnummer TEXT, hsa_id TEXT)").execute(&mut conn).await.unwrap();
    for (p, u) in [(a.raw(), VC01), (b.raw(), VC01), ("12345", VC01)] {
        sqlx::query("INSERT INTO listning VALUES ($1, $2)").bind(p).bind(u).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_queries(dir.path(), &url, "SELECT personnummer, hsa_id FROM listning", None);
    let inputs = registerbrygga::daemon::pvk_inputs(&engine, today(), &pseudo()).await.unwrap();
    assert_eq!((inputs.listing.as_ref().map(|l| l.len()), inputs.listing_refused), (Some(2), 1));
}

#[test]
fn listing_file_is_read_with_header_and_refuses_bad_lines_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("listing.csv");
    let a = pnr("19500101", 161);
    std::fs::write(&f, format!("# listing snapshot\npersonnummer;hsa_id\n{};{VC01}\n12345;{VC01}\n", a.raw())).unwrap();
    let l = Listing::read_file(&f, today(), &pseudo()).unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l.unit_of(&a).map(|h| h.as_str()), Some(VC01));
    assert_eq!(l.refused_lines, vec![4]);
    std::fs::write(&f, "pnr;unit\n").unwrap();
    let err = Listing::read_file(&f, today(), &pseudo()).unwrap_err().to_string();
    assert!(err.contains("personnummer and hsa_id"));
}

#[test]
fn incontinence_age_limits_apply_to_numerator_and_denominator() {
    let engine = sandbox_engine(&[VC01], &format!("vardcentraler = [\"{VC01}\"]"));
    let young = pnr("20070101", 171); // 19 at the end of March 2026
    let adult = pnr("19960101", 181);
    let plain = pnr("19860101", 191);
    let turns20 = pnr("20060331", 201); // 20 on the last day of the month
    let pats = vec![
        patient(&young, vec![diag(&young, VC01, "2026-02-01", "N39.3")]),
        patient(&adult, vec![diag(&adult, VC01, "2026-02-01", "N39.4"), activity(&adult, VC01, "2026-02-10", local(act::PELVIC_FLOOR_TRAINING), profession::PHYSIOTHERAPIST)]),
        patient(&plain, vec![]),
        patient(&turns20, vec![diag(&turns20, VC01, "2026-02-01", "R32")]),
    ];
    let listing = Listing::from_rows([&young, &adult, &plain, &turns20].iter().map(|p| (p.raw().to_string(), VC01)), today(), &pseudo());
    let out = compute(&engine, &pats, Some(&listing), None, &[VC01], &[(2026, 2), MAR]);
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "Ink01")), (Some(2), Some(3)));
    assert_eq!(counts(row(&out, 2026, VC01, (2026, 2), "Ink01")), (Some(1), Some(2)), "not yet 20 at the end of February");
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "Ink03")), (Some(1), Some(2)));
}

#[test]
fn osteoporosis_new_onset_look_back_age_and_index_anchored_measure() {
    let engine = sandbox_engine(&[FT01], "");
    let new = pnr("19600101", 211); // new osteoporosis, balance training after the diagnosis
    let old = pnr("19600202", 221); // osteoporosis already 6 months before: not new
    let young = pnr("19800303", 231); // new, but under 50
    let before = pnr("19600404", 241); // new, training only before the index date
    let long_ago = pnr("19600505", 251); // earlier diagnosis 2 years before: outside the clear window → new
    let v = |p: &PatientId| visit(p, FT01, "2026-03-02", "1", profession::PHYSIOTHERAPIST);
    let pats = vec![
        patient(&new, vec![v(&new), diag(&new, "SE2321000156-VC01", "2025-10-01", "M81.0"), activity(&new, FT01, "2025-11-01", local(act::BALANCE_TRAINING), profession::PHYSIOTHERAPIST)]),
        patient(&old, vec![v(&old), diag(&old, FT01, "2025-06-01", "M81.9"), diag(&old, FT01, "2024-12-01", "M81.9"), activity(&old, FT01, "2025-07-01", local(act::FALL_PREVENTION), profession::PHYSIOTHERAPIST)]),
        patient(&young, vec![v(&young), diag(&young, FT01, "2025-10-01", "M81.0")]),
        patient(&before, vec![v(&before), diag(&before, FT01, "2025-10-01", "M80.0"), activity(&before, FT01, "2025-09-01", local(act::BALANCE_TRAINING), profession::PHYSIOTHERAPIST)]),
        patient(&long_ago, vec![v(&long_ago), diag(&long_ago, FT01, "2025-09-01", "M81.0"), diag(&long_ago, FT01, "2023-09-01", "M81.0")]),
    ];
    // No prescriptions at all: the cortisone alternative adds nobody.
    let out = compute(&engine, &pats, None, Some(&DrugList::default()), &[FT01], &[MAR]);
    let os11 = row(&out, 2026, FT01, MAR, "Os11");
    assert_eq!(counts(os11), (Some(1), Some(3)));
    let key = |p: &PatientId| pseudo().patient_key(p);
    let mut den = listed(os11, "denominator");
    den.sort();
    let mut want = vec![key(&new), key(&before), key(&long_ago)];
    want.sort();
    assert_eq!(den, want);
    let entry = os11.patient_list.as_ref().unwrap().value()["patients"].as_array().unwrap().iter().find(|p| p["patient_key"] == key(&new).as_str()).unwrap().clone();
    assert_eq!(entry["index_date"], "2025-10-01");
}

#[test]
fn far_counts_kva_dv200_among_visitors() {
    let engine = sandbox_engine(&[FT01], "");
    let a = pnr("19700101", 261);
    let b = pnr("19710101", 271);
    let pats = vec![
        patient(&a, vec![visit(&a, FT01, "2026-03-02", "1", profession::PHYSIOTHERAPIST), activity(&a, FT01, "2026-03-02", Code::new(OID_KVA, "DV200"), profession::PHYSIOTHERAPIST)]),
        patient(&b, vec![visit(&b, FT01, "2026-03-02", "1", profession::PHYSIOTHERAPIST), activity(&b, FT01, "2026-03-02", Code::new(OID_KVA, "DV201"), profession::PHYSIOTHERAPIST)]),
    ];
    let out = compute(&engine, &pats, None, None, &[FT01], &[MAR]);
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "REGFAR01")), (Some(1), Some(2)));
}

#[test]
fn mangsokare_threshold_window_and_contact_types() {
    let engine = sandbox_engine(&[FT01], "");
    let visits = |p: &PatientId, n: u32, ctype: &str, start: NaiveDate| -> Vec<Record> {
        (0..n).map(|i| visit(p, FT01, &(start + chrono::Days::new(i as u64 * 7)).to_string(), ctype, profession::PHYSIOTHERAPIST)).collect()
    };
    let over = pnr("19700101", 281); // 21 visits: more than 20
    let at20 = pnr("19700202", 291); // exactly 20: not more than 20
    let phone = pnr("19700303", 301); // 25 phone contacts only
    let old = pnr("19700404", 311); // 21 visits, 10 of them before the 12-month window
    let pats = vec![
        patient(&over, visits(&over, 21, CARE_CONTACT_VISIT, d("2025-09-01"))),
        patient(&at20, visits(&at20, 20, CARE_CONTACT_VISIT, d("2025-09-01"))),
        patient(&phone, [visits(&phone, 25, CARE_CONTACT_PHONE, d("2025-09-01")), visits(&phone, 1, CARE_CONTACT_VISIT, d("2026-03-01"))].concat()),
        patient(&old, [visits(&old, 10, CARE_CONTACT_VISIT, d("2024-12-01")), visits(&old, 11, CARE_CONTACT_VISIT, d("2025-09-01"))].concat()),
    ];
    let out = compute(&engine, &pats, None, None, &[FT01], &[MAR]);
    let ms = row(&out, 2026, FT01, MAR, "MS01");
    assert_eq!(counts(ms), (Some(1), Some(4)));
    assert_eq!(listed(ms, "numerator"), vec![pseudo().patient_key(&over)]);
    assert_eq!(ms.patient_list.as_ref().unwrap().value()["patients"][0]["visits"], 21);

    // Same data, rules counting every contact type and a threshold of 19.
    let text = std::fs::read_to_string(shipped().join("rules/sandbox-2026.toml"))
        .unwrap()
        .replace("threshold = 20", "threshold = 19")
        .replace("contact_types = [\"1\"]", "contact_types = []");
    let dir = write_rules("2026.toml", &text);
    let engine = PvkEngine::load(&connector(dir.path(), &[FT01], "rule_years = [2026]\nsmall_cells = { threshold = 1 }")).unwrap();
    let out = compute(&engine, &pats, None, None, &[FT01], &[MAR]);
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "MS01")), (Some(3), Some(4)), "over, at20 and phone");
}

// --------------------------------------------------------------------------------- rule changes

const MINI: &str = r#"
[rule_set]
year = YEAR
name = "mini YEAR"
verified = false
note = "test"
[code_sets.artros]
kind = "diagnosis"
system = "icd10se"
codes = ["M17"]
verified = true
source = "test"
[code_sets.skola]
kind = "activity"
system = "2.25.317202611230001"
codes = [CODES]
verified = false
source = "test"
note = "test"
[[indicators]]
id = "Ar12"
title = "Artrosskola"
variant = "rehab"
kind = "proportion"
[indicators.population]
diagnoses = ["artros"]
[indicators.measure]
activities = ["skola"]
"#;

fn mini(year: i32, codes: &[&str]) -> String {
    MINI.replace("YEAR", &year.to_string()).replace("CODES", &codes.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", "))
}

fn artros_patients() -> Vec<PatientRecords> {
    let a = pnr("19500101", 321);
    let b = pnr("19500202", 331);
    vec![
        patient(&a, vec![visit(&a, FT01, "2026-03-02", "1", profession::PHYSIOTHERAPIST), diag(&a, FT01, "2026-03-02", "M17.1"), activity(&a, FT01, "2026-03-02", local("ARTROSSKOLA"), profession::PHYSIOTHERAPIST)]),
        patient(&b, vec![visit(&b, FT01, "2026-03-02", "1", profession::PHYSIOTHERAPIST), diag(&b, FT01, "2026-03-02", "M17.1"), activity(&b, FT01, "2026-03-02", local("ARTROSSKOLA-DIGITAL"), profession::PHYSIOTHERAPIST)]),
    ]
}

#[test]
fn a_code_added_to_a_rule_file_changes_results_without_code_changes() {
    let pats = artros_patients();
    let dir = write_rules("2026.toml", &mini(2026, &["ARTROSSKOLA"]));
    let c = connector(dir.path(), &[FT01], "rule_years = [2026]\nsmall_cells = { threshold = 1 }");
    let before = compute(&PvkEngine::load(&c).unwrap(), &pats, None, None, &[FT01], &[MAR]);
    assert_eq!(counts(row(&before, 2026, FT01, MAR, "Ar12")), (Some(1), Some(2)));
    std::fs::write(dir.path().join("rules/2026.toml"), mini(2026, &["ARTROSSKOLA", "ARTROSSKOLA-DIGITAL"])).unwrap();
    let after = compute(&PvkEngine::load(&c).unwrap(), &pats, None, None, &[FT01], &[MAR]);
    assert_eq!(counts(row(&after, 2026, FT01, MAR, "Ar12")), (Some(2), Some(2)));
    // Emptying the list makes the indicator not computable, not zero.
    std::fs::write(dir.path().join("rules/2026.toml"), mini(2026, &[])).unwrap();
    let empty = compute(&PvkEngine::load(&c).unwrap(), &pats, None, None, &[FT01], &[MAR]);
    let r = row(&empty, 2026, FT01, MAR, "Ar12");
    assert!(!r.computable && r.numerator.is_none());
}

#[test]
fn two_rule_years_are_computed_side_by_side_and_one_is_delivered_per_cell() {
    let pats = artros_patients();
    let dir = write_rules("2025.toml", &mini(2025, &["ARTROSSKOLA"]));
    std::fs::write(dir.path().join("rules/2026.toml"), mini(2026, &["ARTROSSKOLA", "ARTROSSKOLA-DIGITAL"])).unwrap();
    let engine = PvkEngine::load(&connector(dir.path(), &[FT01], "rule_years = [2025, 2026]\nsmall_cells = { threshold = 1 }")).unwrap();
    let months = [(2025, 12), MAR];
    let out = compute(&engine, &pats, None, None, &[FT01], &months);
    assert_eq!(counts(row(&out, 2025, FT01, MAR, "Ar12")), (Some(1), Some(2)));
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "Ar12")), (Some(2), Some(2)));
    let plan = aggregate_plan(&out.results, &metadata(), &bindings(), "pvk", today());
    let by_key: Vec<(String, serde_json::Value)> = plan.intents.iter().map(|i| (i.key.idem_key.clone(), i.payload["Q_Varde"].clone())).collect();
    // 2026-03 is delivered from the 2026 rules; 2025-12 from the 2025 rules; one intent per cell.
    assert!(by_key.contains(&("pvk|1701|2026|3|Ar12".to_string(), serde_json::json!(2))), "{by_key:?}");
    assert!(by_key.contains(&("pvk|1701|2025|12|Ar12".to_string(), serde_json::json!(0))), "{by_key:?}");
    assert_eq!(plan.intents.len(), 2);
    assert_eq!(plan.skipped.iter().filter(|s| s.reason.contains("another rule year")).count(), 2);

    // Two files declaring the same year are refused.
    std::fs::write(dir.path().join("rules/other.toml"), mini(2026, &["X"])).unwrap();
    let err = PvkEngine::load(&connector(dir.path(), &[FT01], "rule_years = [2026]\nrule_files = [\"other.toml\"]")).unwrap_err();
    assert!(err.iter().any(|p| p.reason.contains("two rule sets for revision year 2026")), "{err:#?}");
}

// --------------------------------------------------------------------------------- small cells, aggregates

#[test]
fn small_cells_are_suppressed_or_flagged_never_altered() {
    let pats = artros_patients();
    let dir = write_rules("2026.toml", &mini(2026, &["ARTROSSKOLA"]));
    let suppress = PvkEngine::load(&connector(dir.path(), &[FT01], "rule_years = [2026]")).unwrap();
    let out = compute(&suppress, &pats, None, None, &[FT01], &[MAR]);
    let r = row(&out, 2026, FT01, MAR, "Ar12");
    assert!(r.computable && r.suppressed);
    assert_eq!(counts(r), (Some(1), Some(2)), "the local row keeps the true numbers");
    assert!(r.note.as_deref().unwrap().contains("below 5"));
    assert!(aggregate_intents(&out.results, &metadata(), &bindings(), "pvk", today()).is_empty(), "suppressed cells are not sent");

    let flag = PvkEngine::load(&connector(dir.path(), &[FT01], "rule_years = [2026]\nsmall_cells = { threshold = 3, mode = \"flag\" }")).unwrap();
    let out = compute(&flag, &pats, None, None, &[FT01], &[MAR]);
    let r = row(&out, 2026, FT01, MAR, "Ar12");
    assert!(r.computable && !r.suppressed);
    assert!(r.note.as_deref().unwrap().starts_with(pvk::SMALL_CELL_FLAG));
    let intents = aggregate_intents(&out.results, &metadata(), &bindings(), "pvk", today());
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0].payload["Q_Varde"], 1);

    // Zero is not a small cell.
    let none: Vec<PatientRecords> = vec![];
    let out = compute(&suppress, &none, None, None, &[FT01], &[MAR]);
    let r = row(&out, 2026, FT01, MAR, "Ar12");
    assert!(!r.suppressed && counts(r) == (Some(0), Some(0)));
}

/// A sandbox population large enough to pass small-cell protection at FT01.
fn population() -> Vec<PatientRecords> {
    (0..30)
        .map(|i| {
            let p = pnr(&format!("19{:02}0{}1{}", 40 + i % 40, 1 + i % 9, i % 3), 400 + i);
            let mut r = vec![visit(&p, FT01, "2026-03-02", "1", profession::PHYSIOTHERAPIST), visit(&p, VC01, "2026-03-03", "1", profession::PHYSICIAN)];
            if i % 2 == 0 {
                r.push(diag(&p, FT01, "2026-03-02", "M17.1"));
            }
            if i % 4 == 0 {
                r.push(activity(&p, FT01, "2026-03-02", local(act::ARTROSSKOLA), profession::PHYSIOTHERAPIST));
            }
            if i % 3 == 0 {
                r.push(activity(&p, FT01, "2026-03-02", Code::new(OID_KVA, "DV200"), profession::PHYSIOTHERAPIST));
            }
            if i % 10 == 0 {
                // Three KOL patients: a small cell at FT01.
                r.push(diag(&p, FT01, "2026-03-02", "J44.9"));
            }
            patient(&p, r)
        })
        .collect()
}

fn identities(pats: &[PatientRecords]) -> Vec<String> {
    let mut v = vec![];
    for p in pats {
        v.push(p.patient_key.clone());
        v.push(p.patient.raw().to_string());
        v.push(p.patient.raw()[2..].to_string());
    }
    v
}

#[test]
fn aggregates_carry_no_identity_have_stable_keys_and_the_form_columns() {
    let engine = PvkEngine::load(&connector(&shipped(), &[FT01, VC01], &format!("rule_files = [\"sandbox-2026.toml\"]\nvardcentraler = [\"{VC01}\"]"))).unwrap();
    let pats = population();
    let listing = Listing::from_rows(pats.iter().map(|p| (p.patient.raw().to_string(), VC01)), today(), &pseudo());
    let out = compute(&engine, &pats, Some(&listing), None, &[FT01, VC01], &[(2026, 2), MAR]);
    let plan = aggregate_plan(&out.results, &metadata(), &bindings(), "pvk", today());
    assert!(!plan.intents.is_empty());
    let forbidden = identities(&pats);
    for i in &plan.intents {
        let text = format!("{} {} {} {} {:?}", serde_json::to_string(&i.payload).unwrap(), serde_json::to_string(&i.lookup).unwrap(), i.detail, serde_json::to_string(&i.key).unwrap(), i);
        for f in &forbidden {
            assert!(!text.contains(f.as_str()), "an aggregate carries an identity");
        }
        let mut cols: Vec<&str> = i.payload.keys().map(|k| k.as_str()).collect();
        cols.sort_unstable();
        assert_eq!(cols, vec!["Q_Date", "Q_Indicator", "Q_Month", "Q_Namnare", "Q_Unit", "Q_Varde", "Q_Year"]);
        let mut lookup: Vec<&str> = i.lookup.keys().map(|k| k.as_str()).collect();
        lookup.sort_unstable();
        assert_eq!(lookup, vec!["Q_Indicator", "Q_Month", "Q_Unit", "Q_Year"]);
        assert_eq!(i.key.form, "Indikatorvarde");
        assert_eq!(i.key.register, "pvk");
        assert_eq!(i.payload["Q_Date"], "2026-04-15");
        let want = format!("pvk|{}|{}|{}|{}", i.payload["Q_Unit"].as_str().unwrap(), i.payload["Q_Year"], i.payload["Q_Month"], i.payload["Q_Indicator"].as_str().unwrap());
        assert_eq!(i.key.idem_key, want);
        assert_eq!(i.key.unit, FT01, "vårdcentraler have no register binding: files only");
    }
    assert!(plan.intents.iter().any(|i| i.key.idem_key == "pvk|1701|2026|3|Ar12"));
    assert!(plan.intents.iter().any(|i| i.key.idem_key == "pvk|1701|2026|3|MS01" || i.key.idem_key == "pvk|1701|2026|3|Ar11"));
    // FaR is computed (a regional measure) but never planned for the register.
    assert!(out.results.iter().any(|r| r.indicator == "REGFAR01" && r.computable));
    assert!(plan.intents.iter().all(|i| !i.payload["Q_Indicator"].as_str().unwrap().starts_with("REG")));
    assert!(plan.skipped.iter().any(|s| s.indicator == "REGFAR01" && s.reason.contains("regional measure")));
    assert!(plan.skipped.iter().any(|s| s.unit == VC01 && s.reason.contains("no binding")));
    let keys: std::collections::BTreeSet<&str> = plan.intents.iter().map(|i| i.key.idem_key.as_str()).collect();
    assert_eq!(keys.len(), plan.intents.len(), "one intent per key");

    // A recomputation gives the same keys; changed data changes the payload under the same key.
    let again = compute(&engine, &pats, Some(&listing), None, &[FT01, VC01], &[(2026, 2), MAR]);
    let plan2 = aggregate_plan(&again.results, &metadata(), &bindings(), "pvk", today());
    assert_eq!(plan.intents, plan2.intents);
    let mut more = pats.clone();
    let extra = pnr("19500909", 990);
    more.push(patient(&extra, vec![visit(&extra, FT01, "2026-03-09", "1", profession::PHYSIOTHERAPIST), diag(&extra, FT01, "2026-03-09", "M16.0")]));
    let changed = compute(&engine, &more, Some(&listing), None, &[FT01, VC01], &[(2026, 2), MAR]);
    let plan3 = aggregate_plan(&changed.results, &metadata(), &bindings(), "pvk", today());
    let ar11 = |p: &pvk::AggregatePlan| p.intents.iter().find(|i| i.key.idem_key == "pvk|1701|2026|3|Ar11").unwrap().payload["Q_Varde"].clone();
    assert_eq!(ar11(&plan), 15);
    assert_eq!(ar11(&plan3), 16);

    // Debug output of rows never shows the patient list or an identity.
    let dbg = format!("{:?}", out.results.iter().map(|r| serde_json::to_string(r).unwrap()).collect::<Vec<_>>());
    for f in &forbidden {
        assert!(!dbg.contains(f.as_str()));
    }
}

#[test]
fn an_indicator_missing_from_the_register_domain_is_not_sent() {
    let dir = write_rules("2026.toml", &mini(2026, &["ARTROSSKOLA"]).replace("id = \"Ar12\"", "id = \"Ar99\""));
    let engine = PvkEngine::load(&connector(dir.path(), &[FT01], "rule_years = [2026]\nsmall_cells = { threshold = 1 }")).unwrap();
    let out = compute(&engine, &artros_patients(), None, None, &[FT01], &[MAR]);
    let plan = aggregate_plan(&out.results, &metadata(), &bindings(), "pvk", today());
    assert!(plan.intents.is_empty());
    assert!(plan.skipped[0].reason.contains("Indikator domain"));
    let problems = pvk::check_against_metadata(&engine, &metadata());
    assert_eq!(problems.len(), 1);
    assert!(!problems[0].warning && problems[0].key.contains("Ar99") && problems[0].reason.contains("not in the register's Indikator domain"));
}

// --------------------------------------------------------------------------------- exports

#[test]
fn xml_export_validates_against_the_shipped_xsd_and_csv_has_its_columns() {
    let engine = PvkEngine::load(&connector(&shipped(), &[FT01, VC01], &format!("rule_files = [\"sandbox-2026.toml\"]\nvardcentraler = [\"{VC01}\"]"))).unwrap();
    let pats = population();
    let out = compute(&engine, &pats, None, None, &[FT01, VC01], &[(2026, 2), MAR, (2026, 5)]);
    let dir = tempfile::tempdir().unwrap();
    let run = RunInfo { connector: "pvk".into(), run_id: "run-42".into(), generated_at: chrono::DateTime::parse_from_rfc3339("2026-04-15T01:00:00Z").unwrap().to_utc() };
    // Units by name in the CSV files (one named, one not: the bare id then).
    let names = registerbrygga::units::UnitNames::default().with(FT01, "Fysioterapin Klarälven");
    let files = write_exports(&out.results, &dir.path().join("out"), &run, &engine.labels(), &names).unwrap();
    assert_eq!(files.len(), 3, "PVK XML and CSV, and the regional measures' own file");
    let pvk_rows = out.results.iter().filter(|r| !r.indicator.starts_with("REG")).count();
    let regional_rows = out.results.len() - pvk_rows;
    assert!(regional_rows > 0);
    let xml = &files[0];
    assert!(xml.ends_with("pvk-aggregates-pvk-20260415T010000Z.xml"));
    let xsd = repo().join("conformance/pvk-export/pvk-aggregate-export-1.0.xsd");
    let res = std::process::Command::new("xmllint").arg("--noout").arg("--schema").arg(&xsd).arg(xml).output().expect("xmllint runs");
    assert!(res.status.success(), "xmllint: {}", String::from_utf8_lossy(&res.stderr));
    let text = std::fs::read_to_string(xml).unwrap();
    assert!(text.contains("<Suppressed>") && text.contains("<NotComputable>") && text.contains("<Reported>"));
    assert!(text.contains(&format!("<CellCount>{pvk_rows}</CellCount>")));
    assert!(!text.contains("REGFAR01") && !text.contains("REGVV01"), "regional measures are not in the PVK file");
    assert!(text.contains("<IndicatorName>Ar12 – Andel patienter med höft- eller knäartros som deltagit i artrosskola (rehabenhet)</IndicatorName>"));

    let csv = std::fs::read_to_string(&files[1]).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap().split(';').collect::<Vec<_>>(), CSV_COLUMNS.to_vec());
    assert_eq!(csv.lines().count(), pvk_rows + 1);
    assert!(!csv.contains("REGFAR01"));
    assert!(csv.contains(";Ar11 – Förekomst av diagnos höft- eller knäartros (rehabenhet);Fysioterapin Klarälven (SE2321000156-FT01)\r\n"), "the indicator's name, then the unit by name");
    assert!(csv.contains(&format!(";{VC01}\r\n")), "a unit without a name: its HSA id");
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(';').collect();
        assert!(f.len() >= 10, "{line}");
        let reported = f[5].starts_with("reported");
        assert_eq!(!f[6].is_empty(), reported, "numbers only for reported cells: {line}");
    }
    assert!(csv.contains(";not_computable;;;"));
    // The regional file: FaR and the per-FTE measures, with names, never the PVK register's.
    let regional = std::fs::read_to_string(&files[2]).unwrap();
    assert!(files[2].file_name().unwrap().to_string_lossy().starts_with("regional-measures-pvk-"));
    assert_eq!(regional.lines().next().unwrap().split(';').collect::<Vec<_>>(), registerbrygga::sinks::export::REGIONAL_CSV_COLUMNS.to_vec());
    assert_eq!(regional.lines().count(), regional_rows + 1);
    assert!(regional.contains("REGFAR01;REG-FaR01 – Regionalt mått: andel patienter som fått fysisk aktivitet på recept (FaR);"));
    assert!(regional.contains("REGVV01;REG-VV01 – Vårdval: besök per heltidsarbetande fysioterapeut (krav 1 200 per år);not_computable"));
    for f in identities(&pats) {
        assert!(!text.contains(f.as_str()) && !csv.contains(f.as_str()), "an export carries an identity");
    }
    // Atomic writes leave no temp files behind.
    let names: Vec<String> = std::fs::read_dir(dir.path().join("out")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 3, "{names:?}");

    // The schema really constrains: a suppressed cell with numbers is invalid.
    let broken = text.replacen("<Suppressed>", "<Suppressed><Numerator>1</Numerator>", 1);
    let bad = dir.path().join("bad.xml");
    std::fs::write(&bad, broken).unwrap();
    let res = std::process::Command::new("xmllint").arg("--noout").arg("--schema").arg(&xsd).arg(&bad).output().unwrap();
    assert!(!res.status.success());
}

// --------------------------------------------------------------------------------- data quality

#[test]
fn data_quality_counts_visits_without_diagnosis_and_unknown_codes() {
    let engine = sandbox_engine(&[FT01], "physician_professions = [\"LAKARE\"]");
    let a = pnr("19500101", 501);
    let mut nullified = diag(&a, FT01, "2026-03-04", "M17.1");
    if let Record::Diagnosis(x) = &mut nullified {
        x.nullified = true;
    }
    let with_diag = visit(&a, FT01, "2026-03-02", "1", profession::PHYSICIAN);
    let cc = if let Record::CareContact(c) = &with_diag { c.care_contact_id.clone() } else { None };
    let mut linked = diag(&a, "SE2321000156-FT02", "2026-03-02", "M17.1");
    if let Record::Diagnosis(x) = &mut linked {
        x.care_contact_id = cc;
    }
    let pats = vec![patient(
        &a,
        vec![
            with_diag,
            linked,
            visit(&a, FT01, "2026-03-03", "1", profession::PHYSIOTHERAPIST),
            visit(&a, FT01, "2026-03-04", "1", profession::PHYSIOTHERAPIST),
            nullified,
            visit(&a, FT01, "2026-03-05", "1", profession::PHYSICIAN),
            diag(&a, FT01, "2026-03-05", "XYZ"),
            activity(&a, FT01, "2026-03-03", Code::new(OID_KVA, "DV200"), profession::PHYSIOTHERAPIST),
            activity(&a, FT01, "2026-03-03", local(act::ARTROSSKOLA), profession::PHYSIOTHERAPIST),
            activity(&a, FT01, "2026-03-03", local("OKAND-ATGARD"), profession::PHYSIOTHERAPIST),
            activity(&a, FT01, "2026-03-03", Code::new("1.2.3.4", "Q1"), profession::PHYSIOTHERAPIST),
            activity(&a, FT01, "2026-03-03", Code::new(OID_KVA, "DV2"), profession::PHYSIOTHERAPIST),
            visit(&a, FT01, "2026-02-03", "1", profession::PHYSIOTHERAPIST),
        ],
    )];
    let out = compute(&engine, &pats, None, None, &[FT01], &[(2026, 2), MAR]);
    let q = |m: (i32, u32), measure: &str| {
        out.quality.iter().find(|r| r.unit == FT01 && (r.year, r.month) == m && r.measure == measure).map(|r| r.count).unwrap_or_else(|| panic!("no {measure}"))
    };
    assert_eq!(q(MAR, "visits"), 4);
    assert_eq!(q(MAR, "visits_without_diagnosis"), 2, "the 03-03 and 03-04 physiotherapy visits (the 03-04 diagnosis is nullified)");
    assert_eq!(q(MAR, "visits_without_diagnosis:FYSIOTERAPEUT"), 2);
    assert_eq!(q(MAR, "non_physician_visits_without_diagnosis"), 2);
    assert_eq!(q(MAR, "nullified_records"), 1);
    assert_eq!(q(MAR, "diagnoses"), 1, "the linked diagnosis is at FT02");
    assert_eq!(q(MAR, "unknown_codes:diagnosis"), 1);
    assert_eq!(q(MAR, "activities"), 5);
    assert_eq!(q(MAR, "activities_without_kva_or_known_code"), 3, "local unknown, foreign system, malformed KVÅ");
    assert_eq!(q(MAR, "unknown_codes:activity"), 2, "foreign system, malformed KVÅ");
    assert_eq!(q((2026, 2), "visits"), 1);
    assert_eq!(q((2026, 2), "visits_without_diagnosis:FYSIOTERAPEUT"), 1);
}

/// A diagnosis written at another contact the same day does not make a visit "with diagnosis";
/// the same-day fallback is only for a contact or diagnosis without a contact id.
#[test]
fn data_quality_links_diagnoses_by_contact_id_before_falling_back_to_the_day() {
    let engine = sandbox_engine(&[FT01], "physician_professions = [\"LAKARE\"]");
    let a = pnr("19500101", 502);
    let seen = visit(&a, FT01, "2026-03-10", "1", profession::PHYSIOTHERAPIST);
    let cc = if let Record::CareContact(c) = &seen { c.care_contact_id.clone() } else { None };
    let mut linked = diag(&a, FT01, "2026-03-10", "M17.1");
    if let Record::Diagnosis(x) = &mut linked {
        x.care_contact_id = cc;
    }
    let pats = vec![patient(
        &a,
        vec![
            seen,
            linked,
            // Same unit and day, its own contact id, no diagnosis of its own: without.
            visit(&a, FT01, "2026-03-10", "1", profession::NURSE),
            // A diagnosis naming no contact counts for the contacts at its unit that day.
            visit(&a, FT01, "2026-03-11", "1", profession::PHYSIOTHERAPIST),
            diag(&a, FT01, "2026-03-11", "M17.1"),
        ],
    )];
    let out = compute(&engine, &pats, None, None, &[FT01], &[MAR]);
    let q = |measure: &str| out.quality.iter().find(|r| (r.year, r.month) == MAR && r.measure == measure).map(|r| r.count).unwrap_or(0);
    assert_eq!(q("visits"), 3);
    assert_eq!(q("visits_without_diagnosis"), 1);
    assert_eq!(q("visits_without_diagnosis:SJUKSKOTERSKA"), 1);
}

// --------------------------------------------------------------------------------- config check

#[test]
fn config_check_reports_rule_errors_with_file_and_key_and_warns_for_unverified_lists() {
    let bad = r#"
[rule_set]
year = 2026
name = "broken"
verified = false
note = "test"
[code_sets.artros]
kind = "diagnosis"
system = "icd10se"
codes = ["M17", "17M"]
verified = true
source = ""
[code_sets.empty]
kind = "activity"
system = "kva"
codes = []
verified = true
source = "x"
[[indicators]]
id = "Ar12"
title = "x"
variant = "rehab"
kind = "proportion"
[indicators.population]
diagnoses = ["artros", "nope"]
[indicators.measure]
activities = ["artros"]
"#;
    let dir = write_rules("2026.toml", bad);
    let c = connector(dir.path(), &[FT01], "rule_years = [2026]\nvardcentraler = [\"SE2321000156-VC09\"]\nlisting = { file = \"missing.csv\" }\nrule_yaers = [2025]");
    let loaded = Loaded { settings: Settings::default(), failed_sections: vec![], connectors: vec![c], files: vec![] };
    let problems = pvk::check(&loaded);
    let has = |key: &str, reason: &str| problems.iter().any(|p| !p.warning && p.key.contains(key) && p.reason.contains(reason));
    assert!(has("code_sets.artros.codes[1]", "not an ICD-10-SE code"), "{problems:#?}");
    assert!(has("code_sets.artros.source", "cite its source"));
    assert!(has("code_sets.empty.verified", "cannot be verified"));
    assert!(has("population.diagnoses[1]", "no code set named 'nope'"));
    assert!(has("measure.activities[0]", "activity expected"));
    assert!(has("options.vardcentraler[0]", "not one of the connector's units"));
    assert!(has("options.listing.file", "not found"));
    assert!(problems.iter().filter(|p| !p.warning).all(|p| p.file.ends_with("2026.toml") || p.file.ends_with("connector.toml")));
    assert!(problems.iter().any(|p| p.warning && p.key == "options.rule_yaers"), "unknown options are warned about");

    // The shipped connector rules: no errors, one warning per unverified list, codes checked
    // against the register metadata when it is configured.
    let meta = repo().join("conformance/stratum/pvk-aggregate.json");
    let c = connector(&shipped(), &[FT01], &format!("rule_years = [2026]\nregister_metadata = \"{}\"", meta.display()));
    let loaded = Loaded { settings: Settings::default(), failed_sections: vec![], connectors: vec![c], files: vec![] };
    let problems = pvk::check(&loaded);
    assert!(problems.iter().all(|p| p.warning), "{problems:#?}");
    let unverified = PvkEngine::load(&loaded.connectors[0]).unwrap().rule_sets[0].code_sets.iter().filter(|c| !c.verified).count();
    assert_eq!(problems.iter().filter(|p| p.key.starts_with("code_sets.")).count(), unverified);
    // Per indicator, `config check` lists "beräkningsbar" or what is missing.
    let report = pvk::indicator_report(&loaded);
    assert!(report.iter().any(|l| l.contains("Ar12 – ") && l.ends_with("ej beräkningsbar: kodlista saknas (artrosskola)")), "{report:#?}");
    assert!(report.iter().any(|l| l.contains("Ar11 – ") && l.ends_with(": beräkningsbar")), "{report:#?}");
    assert!(report.iter().any(|l| l.contains("LevFA11 – ") && l.contains("SKR:s definition är inte offentlig")), "{report:#?}");
    assert!(report.iter().any(|l| l.contains("REG-VV01 – ") && l.contains("regionalt mått") && l.contains("årsarbetskrafter saknas")), "{report:#?}");
    assert!(report[0].starts_with("PVK-indikatorer, PVK (pvk): ") && report[0].contains(" indikatorer beräkningsbara"), "{}", report[0]);

    // A syntax error names the line.
    let dir = write_rules("2026.toml", "[rule_set]\nyear = \"x\"\n");
    let err = PvkEngine::load(&connector(dir.path(), &[FT01], "rule_years = [2026]")).unwrap_err();
    assert!(err[0].key.starts_with("line 2"), "{err:#?}");
}

// --------------------------------------------------------------------------------- streaming

#[test]
fn streaming_computation_equals_batch_and_future_months_are_not_computable() {
    let engine = sandbox_engine(&[FT01], "");
    let pats = population();
    let units = hsa(&[FT01]);
    let months = [MAR, (2026, 4), (2026, 5)];
    let batch = engine.compute(&ComputeInput { patients: &pats, listing: None, drugs: None, units: &units, months: &months, today: today() });
    let mut c = engine.begin(None, None, &units, &months, today());
    for p in &pats {
        c.add_records(&p.patient_key, &p.records);
    }
    assert_eq!(c.finish(), batch);
    let may = row(&batch, 2026, FT01, (2026, 5), "Ar11");
    assert!(!may.computable && may.note.as_deref().unwrap().contains("efter beräkningsdagen"));
    let april = row(&batch, 2026, FT01, (2026, 4), "Ar11");
    assert!(april.computable && april.note.as_deref().unwrap().contains("partial month"));
}

// --------------------------------------------------------------------------------- issue 16

/// Drug criteria read prescriptions signed at the unit (a vårdcentral's own), with their
/// duration: "longer cortisone treatment" is prescribed days, not one prescription.
#[test]
fn drug_criteria_count_prescriptions_signed_at_the_unit_and_their_duration() {
    const VC02: &str = "SE2321000156-VC02";
    let engine = sandbox_engine(&[VC01, VC02], &format!("vardcentraler = [\"{VC01}\", \"{VC02}\"]\nprimary_care_units = [\"{VC01}\", \"{VC02}\"]"));
    let own = pnr("19450101", 601); // KOL, two drugs signed at VC01 (where listed)
    let elsewhere = pnr("19450202", 611); // KOL, two drugs but one signed at VC02
    let short = pnr("19500303", 621); // 70+, cortisone 30 days: not longer treatment
    let long = pnr("19500404", 631); // cortisone 30 + 70 days at VC01: longer treatment
    let pats = vec![
        patient(&own, vec![diag(&own, VC01, "2026-01-10", "J44.9"), activity(&own, VC01, "2026-02-10", local(act::SIX_MINUTE_WALK_TEST), profession::PHYSIOTHERAPIST)]),
        patient(&elsewhere, vec![diag(&elsewhere, VC01, "2026-01-10", "J44.9")]),
        patient(&short, vec![]),
        patient(&long, vec![]),
    ];
    let listing = Listing::from_rows([&own, &elsewhere, &short, &long].iter().map(|p| (p.raw().to_string(), VC01)), today(), &pseudo());
    let rx = |p: &PatientId, atc: &str, date: &str, days: u32, unit: &str| (p.raw().to_string(), atc.to_string(), d(date), Some(days), Some(unit.to_string()));
    let drugs = DrugList::from_prescriptions(
        vec![
            rx(&own, "R03AK06", "2025-12-01", 90, VC01),
            rx(&own, "R03BB04", "2026-01-05", 90, VC01),
            rx(&elsewhere, "R03AK06", "2025-12-01", 90, VC01),
            rx(&elsewhere, "R03BB04", "2026-01-05", 90, VC02),
            rx(&short, "H02AB06", "2026-02-01", 30, VC01),
            rx(&long, "H02AB06", "2025-12-01", 30, VC01),
            rx(&long, "H02AB06", "2026-02-01", 70, VC01),
        ],
        today(),
    );
    assert!(drugs.refused_lines.is_empty());
    let out = compute(&engine, &pats, Some(&listing), Some(&drugs), &[VC01, VC02], &[MAR]);
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "KOL06")), (Some(1), Some(1)), "only the patient whose two drugs were both signed here");
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "KOL09")), (Some(0), Some(2)), "patient education: every KOL patient, no drug restriction");
    let os04 = row(&out, 2026, VC01, MAR, "Os04");
    assert_eq!(counts(os04), (Some(0), Some(1)), "90 days or more of cortisone: only `long`");
    assert_eq!(listed(os04, "denominator"), vec![pseudo().patient_key(&long)]);
}

/// The listing is a snapshot per computed month: a patient who moved counts at the old
/// vårdcentral before and at the new one after.
#[test]
fn listing_periods_give_a_snapshot_per_month() {
    const VC02: &str = "SE2321000156-VC02";
    let engine = sandbox_engine(&[VC01, VC02], &format!("vardcentraler = [\"{VC01}\", \"{VC02}\"]"));
    let moved = pnr("19600101", 701);
    let stays = pnr("19610101", 711);
    let pats = vec![patient(&moved, vec![diag(&moved, VC01, "2025-12-01", "I50.9")]), patient(&stays, vec![])];
    let listing = Listing::from_dated_rows(
        // Patients interleaved, as a region's export may order them.
        vec![
            (stays.raw().to_string(), VC01.to_string(), Some("2025-01-01".to_string()), None),
            (moved.raw().to_string(), VC01.to_string(), None, Some("2026-02-14".to_string())),
            // Overlapping period: refused by line.
            (stays.raw().to_string(), VC02.to_string(), Some("2026-01-01".to_string()), None),
            (moved.raw().to_string(), VC02.to_string(), Some("2026-02-15".to_string()), None),
        ],
        today(),
        &pseudo(),
    );
    assert_eq!(listing.refused_lines, vec![3]);
    assert_eq!(listing.len(), 3);
    assert_eq!(listing.unit_of(&moved).map(|h| h.as_str()), Some(VC02), "listed now where the open period is");
    assert_eq!(listing.unit_of(&stays).map(|h| h.as_str()), Some(VC01));
    for e in listing.entries() {
        assert_eq!(e.patient_key(), pseudo().patient_key(&e.patient()), "the pseudonym kept compactly is the pseudonym");
        assert!([&moved, &stays].contains(&&e.patient()), "the identity kept compactly is the identity");
    }
    let out = compute(&engine, &pats, Some(&listing), None, &[VC01, VC02], &[(2026, 1), MAR]);
    assert_eq!(counts(row(&out, 2026, VC01, (2026, 1), "Hj01")), (Some(1), Some(2)));
    assert_eq!(counts(row(&out, 2026, VC02, (2026, 1), "Hj01")), (Some(0), Some(0)));
    assert_eq!(counts(row(&out, 2026, VC01, MAR, "Hj01")), (Some(0), Some(1)));
    assert_eq!(counts(row(&out, 2026, VC02, MAR, "Hj01")), (Some(1), Some(1)));
    // The listing file reads the same periods.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("listing.csv");
    std::fs::write(&f, format!("personnummer;vardcentral;listad_fran;listad_tom\n{m};{VC01};;2026-02-14\n{m};{VC02};2026-02-15;\n", m = moved.raw())).unwrap();
    let l = Listing::read_file(&f, today(), &pseudo()).unwrap();
    assert_eq!(l.unit_at(&moved, d("2026-01-31")).map(|h| h.as_str()), Some(VC01));
    assert_eq!(l.unit_at(&moved, d("2026-03-31")).map(|h| h.as_str()), Some(VC02));
}

/// Vårdval follow-up: physiotherapist visits and unique patients per full-time equivalent,
/// per clinic and calendar year, with the FTE configured per unit and year.
#[test]
fn per_fte_measures_count_the_years_physiotherapist_visits_and_patients() {
    let engine = sandbox_engine(&[FT01, FT02], &format!("fte = {{ \"{FT01}\" = {{ \"2026\" = 2.5 }} }}"));
    let a = pnr("19700101", 801);
    let b = pnr("19710101", 811);
    let pats = vec![
        patient(
            &a,
            vec![
                visit(&a, FT01, "2025-12-20", CARE_CONTACT_VISIT, profession::PHYSIOTHERAPIST), // last year
                visit(&a, FT01, "2026-01-10", CARE_CONTACT_VISIT, profession::PHYSIOTHERAPIST),
                visit(&a, FT01, "2026-02-10", CARE_CONTACT_VISIT, profession::PHYSIOTHERAPIST),
                visit(&a, FT01, "2026-02-11", CARE_CONTACT_PHONE, profession::PHYSIOTHERAPIST), // phone
                visit(&a, FT01, "2026-03-10", CARE_CONTACT_VISIT, profession::OCCUPATIONAL_THERAPIST), // not a physio
            ],
        ),
        patient(&b, vec![visit(&b, FT01, "2026-03-05", CARE_CONTACT_VISIT, profession::PHYSIOTHERAPIST), visit(&b, FT02, "2026-03-05", CARE_CONTACT_VISIT, profession::PHYSIOTHERAPIST)]),
    ];
    let out = compute(&engine, &pats, None, None, &[FT01, FT02], &[(2026, 1), MAR]);
    assert_eq!(counts(row(&out, 2026, FT01, (2026, 1), "REGVV01")), (Some(1), Some(250)));
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "REGVV01")), (Some(3), Some(250)), "year to date: a's two and b's one");
    assert_eq!(counts(row(&out, 2026, FT01, MAR, "REGVV02")), (Some(2), Some(250)));
    let ft02 = row(&out, 2026, FT02, MAR, "REGVV01");
    assert!(!ft02.computable && ft02.note.as_deref().unwrap().contains("årsarbetskrafter saknas"), "{:?}", ft02.note);
    // Computed, shown and exported; never planned for the register, even one that would accept it.
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(repo().join("conformance/stratum/pvk-aggregate.json")).unwrap()).unwrap();
    let values = meta["Domains"].as_array_mut().unwrap().iter_mut().find_map(|d| d.get_mut("DomainValues").and_then(|v| v.as_array_mut()).filter(|v| v.iter().any(|x| x["ValueCode"] == "Ar12"))).unwrap();
    for code in ["REGVV01", "REGVV02", "REGFAR01"] {
        values.push(serde_json::json!({"ValueCode": code, "ValueName": code, "Sequence": 900, "IsActive": true}));
    }
    let meta = RegisterMetadata::from_json(&serde_json::to_vec(&meta).unwrap()).unwrap();
    let plan = aggregate_plan(&out.results, &meta, &bindings(), "pvk", today());
    assert!(!plan.intents.is_empty());
    assert!(plan.intents.iter().all(|i| !i.payload["Q_Indicator"].as_str().unwrap().starts_with("REG")));
    assert_eq!(plan.skipped.iter().filter(|s| s.reason.contains("regional measure")).count(), out.results.iter().filter(|r| r.indicator.starts_with("REG")).count());
}
