//! SAR mapper: from hand-built canonical journal records to the registrations that should exist.
//! Pure and fast: no store, no network. The shipped connector (connectors/artrosregistret) and
//! the register metadata (conformance/stratum/sar-104.json) are the configuration under test.

use chrono::{Duration, NaiveDate, Utc};
use registerbrygga::config::{load_connectors, ConnectorDef, Loaded, Problem};
use registerbrygga::model::{
    luhn_check_digit, normalise_icd, stockholm, Activity, CareContact, Code, Diagnosis, DiagnosisKind, HsaId, LocalTime, Observation, ObservationValue,
    PatientId, Provenance, Record, OID_ICD10SE,
};
use registerbrygga::outbox::RegisterIntent;
use registerbrygga::registers::sar::{self, coverage, CoverageRow, NoteKind, PatientInput, SarMapper, SarOutcome};
use registerbrygga::sandbox::vocabulary::{act, answer, obs, LOCAL_TERMS, SOURCE_SYSTEM};
use registerbrygga::sinks::stratum::metadata::RegisterMetadata;
use registerbrygga::store::{EpisodeRow, Registration};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FT01: &str = "SE2321000156-FT01";
const FT02: &str = "SE2321000156-FT02";
const VC01: &str = "SE2321000156-VC01";
const PATIENT_KEY: &str = "pk3f9a0c1d2e";

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn at(d: NaiveDate, hour: u32) -> LocalTime {
    stockholm(d.and_hms_opt(hour, 0, 0).unwrap())
}

/// A valid personnummer (Luhn) born on `yymmdd` with serial `nnn`, as 10 digits.
fn pnr10(yymmdd: &str, nnn: &str) -> String {
    let digits: Vec<u8> = format!("{yymmdd}{nnn}").bytes().map(|b| b - b'0').collect();
    format!("{yymmdd}{nnn}{}", luhn_check_digit(&digits))
}

fn national(yymmdd: &str, nnn: &str) -> PatientId {
    PatientId::parse_national(&pnr10(yymmdd, nnn), day("2026-11-23")).unwrap()
}

fn metadata() -> RegisterMetadata {
    RegisterMetadata::from_json(&std::fs::read("conformance/stratum/sar-104.json").unwrap()).unwrap()
}

fn shipped_connector() -> ConnectorDef {
    let (connectors, problems) = load_connectors(Path::new("connectors"));
    assert!(problems.is_empty(), "{problems:?}");
    connectors.into_iter().find(|c| c.name == "artrosregistret").unwrap()
}

fn shipped_mapper() -> SarMapper {
    SarMapper::load(&shipped_connector(), &metadata()).unwrap_or_else(|p| panic!("{p:?}"))
}

/// A copy of the shipped connector in a temp folder, with `edit` applied to its mapping.toml
/// and `edit_connector` to its connector.toml.
fn edited_connector(edit: impl Fn(String) -> String, edit_connector: impl Fn(String) -> String) -> (tempfile::TempDir, ConnectorDef) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("artrosregistret");
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new("connectors/artrosregistret");
    let meta_abs = std::fs::canonicalize("conformance/stratum/sar-104.json").unwrap();
    let connector = std::fs::read_to_string(src.join("connector.toml"))
        .unwrap()
        .replace("../../conformance/stratum/sar-104.json", meta_abs.to_str().unwrap());
    std::fs::write(dir.join("connector.toml"), edit_connector(connector)).unwrap();
    std::fs::write(dir.join("mapping.toml"), edit(std::fs::read_to_string(src.join("mapping.toml")).unwrap())).unwrap();
    let (connectors, problems) = load_connectors(tmp.path());
    assert!(problems.is_empty(), "{problems:?}");
    let c = connectors.into_iter().next().unwrap();
    (tmp, c)
}

fn replace_once(text: String, from: &str, to: &str) -> String {
    assert!(text.contains(from), "mapping.toml contains {from:?}");
    text.replacen(from, to, 1)
}

// ------------------------------------------------------------------------------ journal builder

/// A patient's journal, built record by record the way the sandbox journal writes it.
struct Journal {
    patient: PatientId,
    records: Vec<Record>,
    seq: u32,
    contacts: BTreeMap<String, (String, NaiveDate)>,
}

fn prov(doc: &str) -> Provenance {
    Provenance { connector: "artrosregistret".into(), source_system: SOURCE_SYSTEM.into(), document_id: doc.into(), fetched_at: Utc::now() }
}

impl Journal {
    fn new(patient: PatientId) -> Journal {
        Journal { patient, records: vec![], seq: 0, contacts: BTreeMap::new() }
    }

    fn next(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}-{}", self.seq)
    }

    /// A visit; returns its care contact id (also its document id).
    fn visit(&mut self, unit: &str, d: NaiveDate) -> String {
        let id = self.next("cc");
        self.contacts.insert(id.clone(), (unit.to_string(), d));
        self.records.push(Record::CareContact(CareContact {
            provenance: prov(&id),
            patient: self.patient.clone(),
            care_contact_id: Some(id.clone()),
            unit: Some(HsaId::parse(unit).unwrap()),
            start: Some(at(d, 9)),
            end: Some(at(d, 10)),
            contact_type: Some(Code::new("1.2.752.129.2.2.2.25", "1")),
            status: None,
            profession: None,
            nullified: false,
        }));
        id
    }

    fn diagnosis(&mut self, contact: &str, icd: &str) -> String {
        self.diagnosis_of(contact, icd, DiagnosisKind::Main)
    }

    fn secondary(&mut self, contact: &str, icd: &str) -> String {
        self.diagnosis_of(contact, icd, DiagnosisKind::Secondary)
    }

    fn diagnosis_of(&mut self, contact: &str, icd: &str, kind: DiagnosisKind) -> String {
        let (unit, d) = self.contacts[contact].clone();
        let id = self.next("dx");
        self.records.push(Record::Diagnosis(Diagnosis {
            provenance: prov(&id),
            patient: self.patient.clone(),
            care_contact_id: Some(contact.to_string()),
            unit: Some(HsaId::parse(&unit).unwrap()),
            code: Code::new(OID_ICD10SE, &normalise_icd(icd)),
            kind,
            chronic: None,
            time: Some(at(d, 9)),
            profession: None,
            nullified: false,
        }));
        id
    }

    fn answer(&mut self, contact: &str, term: &str, value: ObservationValue) -> String {
        let (unit, d) = self.contacts[contact].clone();
        let id = self.next("obs");
        self.records.push(Record::Observation(Observation {
            provenance: prov(&id),
            patient: self.patient.clone(),
            care_contact_id: Some(contact.to_string()),
            unit: Some(HsaId::parse(&unit).unwrap()),
            term: Code::new(LOCAL_TERMS, term),
            value: Some(value),
            time: Some(at(d, 9)),
            profession: None,
            nullified: false,
        }));
        id
    }

    fn number(&mut self, contact: &str, term: &str, x: f64) -> String {
        self.answer(contact, term, ObservationValue::Quantity { value: x, unit: None })
    }

    fn coded(&mut self, contact: &str, term: &str, code: &str) -> String {
        self.answer(contact, term, ObservationValue::Code { code: Code::new(LOCAL_TERMS, code) })
    }

    /// An observation documented outside any visit (e.g. a phone call), at `unit` on `d`.
    fn loose_coded(&mut self, unit: &str, d: NaiveDate, hour: u32, term: &str, code: &str) -> String {
        let id = self.next("obs");
        self.records.push(Record::Observation(Observation {
            provenance: prov(&id),
            patient: self.patient.clone(),
            care_contact_id: None,
            unit: Some(HsaId::parse(unit).unwrap()),
            term: Code::new(LOCAL_TERMS, term),
            value: Some(ObservationValue::Code { code: Code::new(LOCAL_TERMS, code) }),
            time: Some(at(d, hour)),
            profession: None,
            nullified: false,
        }));
        id
    }

    fn activity(&mut self, unit: &str, d: NaiveDate, code: &str) -> String {
        let id = self.next("act");
        self.records.push(Record::Activity(Activity {
            provenance: prov(&id),
            patient: self.patient.clone(),
            care_contact_id: None,
            unit: Some(HsaId::parse(unit).unwrap()),
            code: Code::new(LOCAL_TERMS, code),
            time: Some(at(d, 13)),
            status: None,
            profession: None,
            nullified: false,
        }));
        id
    }

    fn record_mut(&mut self, doc: &str) -> &mut Record {
        self.records.iter_mut().find(|r| r.provenance().document_id == doc).unwrap_or_else(|| panic!("no document {doc}"))
    }

    fn nullify(&mut self, doc: &str) {
        match self.record_mut(doc) {
            Record::CareContact(r) => r.nullified = true,
            Record::Diagnosis(r) => r.nullified = true,
            Record::Activity(r) => r.nullified = true,
            Record::Observation(r) => r.nullified = true,
        }
    }

    fn set_value(&mut self, doc: &str, value: ObservationValue) {
        match self.record_mut(doc) {
            Record::Observation(o) => o.value = Some(value),
            _ => panic!("{doc} is not an observation"),
        }
    }

    /// Every FVPat and FVPT answer (mandatory and a few optional ones); returns term → document.
    fn first_visit_answers(&mut self, contact: &str) -> BTreeMap<&'static str, String> {
        let mut docs = BTreeMap::new();
        for (term, x) in [
            (obs::PAIN_NRS, 6.0),
            (obs::PAIN_FREQUENCY, 4.0),
            (obs::EQ5D_MOBILITY, 2.0),
            (obs::EQ5D_SELFCARE, 1.0),
            (obs::EQ5D_ACTIVITIES, 2.0),
            (obs::EQ5D_PAIN, 3.0),
            (obs::EQ5D_ANXIETY, 1.0),
            (obs::EQ_VAS, 65.0),
            (obs::ASES_PAIN, 72.25),
            (obs::ACTIVITY_MINUTES, 120.0),
            (obs::HEIGHT, 172.0),
            (obs::WEIGHT, 82.46),
        ] {
            docs.insert(term, self.number(contact, term, x));
        }
        for (term, code) in [
            (obs::WANTS_SURGERY, answer::NO),
            (obs::FEAR_OF_MOVEMENT, answer::YES),
            (obs::MAIN_JOINT, answer::KNEE),
            (obs::SIDE, answer::RIGHT),
            (obs::XRAY_DONE, answer::YES),
        ] {
            docs.insert(term, self.coded(contact, term, code));
        }
        docs
    }

    /// Every M3Pat/Y1Pat answer plus the PT's M3PT items (session counts, adherence).
    fn follow_up_answers(&mut self, contact: &str, nrs: f64) -> BTreeMap<&'static str, String> {
        let mut docs = BTreeMap::new();
        for (term, x) in [
            (obs::EDUCATION_SESSIONS, 3.0),
            (obs::SUPERVISED_EXERCISE_SESSIONS, 6.0),
            (obs::PAIN_NRS, nrs),
            (obs::EQ5D_MOBILITY, 1.0),
            (obs::EQ5D_SELFCARE, 1.0),
            (obs::EQ5D_ACTIVITIES, 1.0),
            (obs::EQ5D_PAIN, 2.0),
            (obs::EQ5D_ANXIETY, 1.0),
            (obs::EQ_VAS, 80.0),
            (obs::SATISFACTION, 1.0),
            (obs::USES_KNOWLEDGE, 2.0),
            (obs::EXERCISE_ADHERENCE, 1.0),
        ] {
            docs.insert(term, self.number(contact, term, x));
        }
        // The follow-up visit is marked as such (the shipped `follow_up_mark`).
        for (term, code) in [(obs::WANTS_SURGERY, answer::NO), (obs::FOLLOW_UP_MARK, answer::YES)] {
            docs.insert(term, self.coded(contact, term, code));
        }
        docs
    }
}

fn map(mapper: &SarMapper, j: &Journal, today: NaiveDate) -> SarOutcome {
    mapper.map_patient(&PatientInput {
        connector: "artrosregistret",
        register: "sar",
        patient: &j.patient,
        patient_key: PATIENT_KEY,
        records: &j.records,
        today,
    })
}

fn intent<'a>(out: &'a SarOutcome, form: &str) -> &'a RegisterIntent {
    out.intents.iter().find(|i| i.key.form == form).unwrap_or_else(|| panic!("no {form} intent in {:?}", forms_of(out)))
}

fn forms_of(out: &SarOutcome) -> Vec<&str> {
    out.intents.iter().map(|i| i.key.form.as_str()).collect()
}

fn keys_of(out: &SarOutcome) -> Vec<String> {
    out.intents.iter().map(|i| i.key.idem_key.clone()).collect()
}

/// The complete path: knee artros at FT01, first visit, artrosskola, 3-month and 1-year visits.
struct Complete {
    j: Journal,
    fv: NaiveDate,
    fv_contact: String,
    fv_docs: BTreeMap<&'static str, String>,
    dx: String,
    m3_docs: BTreeMap<&'static str, String>,
}

fn complete_patient() -> Complete {
    let mut j = Journal::new(national("550315", "238"));
    let fv = day("2025-01-15");
    let fv_contact = j.visit(FT01, fv);
    let dx = j.diagnosis(&fv_contact, "M17.1");
    let fv_docs = j.first_visit_answers(&fv_contact);
    for offset in [7, 14, 21] {
        j.activity(FT01, fv + Duration::days(offset), act::ARTROSSKOLA);
    }
    for offset in [10, 17, 24, 31, 38, 45] {
        j.activity(FT01, fv + Duration::days(offset), act::SUPERVISED_EXERCISE);
    }
    // Artrosskola given at another unit does not count for this episode.
    j.activity(FT02, fv + Duration::days(8), act::ARTROSSKOLA);
    let m3 = j.visit(FT01, fv + Duration::days(95));
    let m3_docs = j.follow_up_answers(&m3, 3.0);
    // A session after the 3-month occasion is not counted in it.
    j.activity(FT01, fv + Duration::days(100), act::ARTROSSKOLA);
    let y1 = j.visit(FT01, fv + Duration::days(370));
    j.follow_up_answers(&y1, 2.0);
    Complete { j, fv, fv_contact, fv_docs, dx, m3_docs }
}

// ------------------------------------------------------------------------------------- tests

#[test]
fn complete_path_gives_five_registrations_with_the_right_values() {
    let mapper = shipped_mapper();
    let c = complete_patient();
    let out = map(&mapper, &c.j, c.fv + Duration::days(400));
    assert!(!out.opted_out);
    assert!(out.incomplete.is_empty(), "{:?}", out.incomplete);
    assert_eq!(forms_of(&out), ["FVPat", "FVPT", "M3Pat", "M3PT", "Y1Pat"]);
    let pnr12 = c.j.patient.national_12().unwrap().to_string();
    assert_eq!(pnr12.len(), 12);

    let fv = intent(&out, "FVPat");
    assert_eq!(fv.key.idem_key, format!("sar|{FT01}|{PATIENT_KEY}|course|FVPat"));
    assert_eq!(fv.key.register, "sar");
    assert_eq!(fv.key.connector, "artrosregistret");
    assert_eq!(fv.key.unit, FT01);
    assert_eq!(fv.key.subject.as_deref(), Some(PATIENT_KEY));
    let p = &fv.payload;
    assert_eq!(p["SubjectKey"], json!(pnr12));
    assert_eq!(p["EventDate"], json!("2025-01-15"));
    assert_eq!(p["FV_PainNRS"], json!(6));
    assert_eq!(p["FV_PainFrequency"], json!(4));
    assert_eq!(p["FV_EQ5D_Mobility"], json!(2));
    assert_eq!(p["FV_EQ5D_PainDiscomfort"], json!(3));
    assert_eq!(p["FV_EQVAS"], json!(65));
    assert_eq!(p["FV_ASES_Pain"], json!(72.3), "one decimal, half away from zero");
    assert_eq!(p["FV_WeightKg"], json!(82.5));
    assert_eq!(p["FV_HeightCm"], json!(172));
    assert_eq!(p["FV_WantsSurgery"], json!(false));
    assert_eq!(p["FV_FearOfMovement"], json!(true));
    assert_eq!(p["FV_MainJoint"], json!(2));
    assert_eq!(p["FV_MainSide"], json!(1));
    assert!(!p.contains_key("FV_SickLeave"), "not documented, optional: left out");
    assert_eq!(fv.lookup, serde_json::from_value::<serde_json::Map<String, Value>>(json!({"SubjectKey": pnr12, "EventDate": "2025-01-15"})).unwrap());

    let pt = &intent(&out, "FVPT").payload;
    assert_eq!(pt["PT_Joint"], json!(2), "knee from the episode's diagnosis M17");
    assert_eq!(pt["PT_Side"], json!(1));
    assert_eq!(pt["PT_XrayDone"], json!(true));
    assert_eq!((&pt["PT_JointKnee"], &pt["PT_JointHip"], &pt["PT_JointHand"]), (&json!(true), &json!(false), &json!(false)));
    assert_eq!(pt["PT_KneeSides"], json!(1), "M17.1: one side");
    assert!(!pt.contains_key("PT_HipSides"));
    assert!(!pt.contains_key("PT_ChairStand30s") && !pt.contains_key("PT_Walk40mSeconds"), "not SAR variables");

    let m3 = &intent(&out, "M3Pat").payload;
    assert_eq!(m3["EventDate"], json!("2025-04-20"));
    assert_eq!(m3["M3_PainNRS"], json!(3));
    assert_eq!(m3["M3_EQVAS"], json!(80));
    assert_eq!(m3["M3_Satisfaction"], json!(1));
    assert_eq!(m3["M3_UsesKnowledge"], json!(2));

    let m3pt = &intent(&out, "M3PT").payload;
    assert_eq!(m3pt["EventDate"], json!("2025-04-20"));
    assert_eq!(m3pt["M3PT_EducationSessions"], json!(3), "the physiotherapist's count at the 3-month visit");
    assert_eq!(m3pt["M3PT_SupervisedExerciseSessions"], json!(6));
    assert_eq!(m3pt["M3PT_ExerciseAdherence"], json!(1));

    let y1 = &intent(&out, "Y1Pat").payload;
    assert_eq!(y1["EventDate"], json!("2026-01-20"));
    assert_eq!(y1["Y1_PainNRS"], json!(2));

    // Every payload holds only columns of its form.
    let meta = metadata();
    for i in &out.intents {
        let form = meta.form(&i.key.form).unwrap();
        for col in i.payload.keys() {
            assert!(form.questions.iter().any(|q| &q.column_name == col), "{col} in {}", i.key.form);
        }
    }
    // The audit detail names documents, not people.
    let detail = &fv.detail;
    assert_eq!(detail["joint"], json!("knee"));
    assert_eq!(detail["first_visit"], json!("2025-01-15"));
    let docs: Vec<&str> = detail["documents"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert!(docs.contains(&c.fv_contact.as_str()) && docs.contains(&c.dx.as_str()) && docs.contains(&c.fv_docs[obs::PAIN_NRS].as_str()));

    assert_eq!(
        out.episodes,
        vec![EpisodeRow {
            episode_key: format!("sar|{FT01}|{PATIENT_KEY}|course"),
            connector: "artrosregistret".into(),
            unit: FT01.into(),
            patient_key: PATIENT_KEY.into(),
            joint: "knee".into(),
            first_visit_date: "2025-01-15".into(),
            forms_due: vec!["FVPat".into(), "FVPT".into(), "M3Pat".into(), "M3PT".into(), "Y1Pat".into()],
        }]
    );
    assert!(out.notes.is_empty(), "{:?}", out.notes);
}

#[test]
fn no_follow_up_without_a_first_visit() {
    let mapper = shipped_mapper();
    let mut j = Journal::new(national("480101", "123"));
    let fv = day("2025-02-03");
    // Artros diagnosed at the vårdcentral (not a connector unit); the PT unit sees the patient
    // without an artros diagnosis, then documents 3-month and 1-year answers.
    let vc = j.visit(VC01, fv);
    j.diagnosis(&vc, "M17.0");
    let pt = j.visit(FT01, fv + Duration::days(5));
    j.diagnosis(&pt, "M25.5");
    let m3 = j.visit(FT01, fv + Duration::days(95));
    j.follow_up_answers(&m3, 4.0);
    let y1 = j.visit(FT01, fv + Duration::days(370));
    j.follow_up_answers(&y1, 4.0);
    let out = map(&mapper, &j, fv + Duration::days(400));
    assert!(out.intents.is_empty(), "{:?}", forms_of(&out));
    assert!(out.incomplete.is_empty());
    assert!(out.episodes.is_empty());
}

#[test]
fn follow_ups_wait_for_their_windows() {
    let mapper = shipped_mapper();
    let c = complete_patient();
    // Before the 3-month window opens (day 91): only the first visit; the M3 visit on day 95 is
    // not in the journal yet either (future-dated records are ignored).
    let out = map(&mapper, &c.j, c.fv + Duration::days(90));
    assert_eq!(forms_of(&out), ["FVPat", "FVPT"]);
    assert_eq!(out.episodes[0].forms_due, ["FVPat", "FVPT"]);
    // Window open, M3 visit not yet happened: due (counted for coverage) but nothing produced.
    let out = map(&mapper, &c.j, c.fv + Duration::days(93));
    assert_eq!(forms_of(&out), ["FVPat", "FVPT"]);
    assert_eq!(out.episodes[0].forms_due, ["FVPat", "FVPT", "M3Pat", "M3PT"]);
    assert!(out.incomplete.is_empty());
    // After the 3-month visit; 1-year window not open.
    let out = map(&mapper, &c.j, c.fv + Duration::days(200));
    assert_eq!(forms_of(&out), ["FVPat", "FVPT", "M3Pat", "M3PT"]);
    // A planned visit in the future is not an occasion even if answers were pre-documented.
    let out = map(&mapper, &c.j, c.fv + Duration::days(367));
    assert_eq!(forms_of(&out), ["FVPat", "FVPT", "M3Pat", "M3PT"]);
    assert_eq!(out.episodes[0].forms_due, ["FVPat", "FVPT", "M3Pat", "M3PT", "Y1Pat"]);
}

#[test]
fn follow_up_occasion_is_the_first_day_in_the_window_carrying_answers() {
    let mapper = shipped_mapper();
    let mut j = Journal::new(national("600606", "456"));
    let fv = day("2025-03-01");
    let c = j.visit(FT01, fv);
    j.diagnosis(&c, "M16.1");
    j.first_visit_answers(&c);
    // Answers on day 60 (before the window) and day 153 (after it) do not count.
    let early = j.visit(FT01, fv + Duration::days(60));
    j.follow_up_answers(&early, 5.0);
    let late = j.visit(FT01, fv + Duration::days(153));
    j.follow_up_answers(&late, 5.0);
    let out = map(&mapper, &j, fv + Duration::days(300));
    assert_eq!(forms_of(&out), ["FVPat", "FVPT"], "no answers inside 91–152 days");
    // A visit on day 95 without the follow-up mark is not the occasion, even with a pain score
    // documented there for another complaint; the marked visit on day 91 (the window's first
    // day) at the unit is.
    let unrelated = j.visit(FT01, fv + Duration::days(95));
    j.number(&unrelated, obs::PAIN_NRS, 8.0);
    let out = map(&mapper, &j, fv + Duration::days(300));
    assert_eq!(forms_of(&out), ["FVPat", "FVPT"], "an unrelated pain score is not the 3-month occasion");
    let edge = j.visit(FT01, fv + Duration::days(91));
    j.follow_up_answers(&edge, 2.0);
    let out = map(&mapper, &j, fv + Duration::days(300));
    assert_eq!(intent(&out, "M3Pat").payload["EventDate"], json!((fv + Duration::days(91)).to_string()));
    assert_eq!(intent(&out, "M3Pat").payload["M3_PainNRS"], json!(2));
    assert_eq!(intent(&out, "M3PT").payload["EventDate"], json!((fv + Duration::days(91)).to_string()));
}

/// M3PT's session counts are the physiotherapist's recorded counts (shipped mapping); counting
/// the session activities instead is a region's mapping choice, and still works.
#[test]
fn session_counts_are_the_physiotherapists_count_or_counted_activities_if_mapped_so() {
    let mut c = complete_patient();
    let today = c.fv + Duration::days(120);
    let edu = c.m3_docs[obs::EDUCATION_SESSIONS].clone();
    c.j.set_value(&edu, ObservationValue::Quantity { value: 9.0, unit: None });
    let out = map(&shipped_mapper(), &c.j, today);
    assert_eq!(intent(&out, "M3PT").payload["M3PT_EducationSessions"], json!(9), "the recorded count, not the three activities");

    let (_tmp, connector) = edited_connector(
        |m| {
            let m = replace_once(m, r#"M3PT_EducationSessions = { observation = "ARTROSSKOLA-ANTAL" }"#, r#"M3PT_EducationSessions = { count_activities = ["ARTROSSKOLA"] }"#);
            replace_once(m, r#"M3PT_SupervisedExerciseSessions = { observation = "HANDLEDD-TRANING-ANTAL" }"#, r#"M3PT_SupervisedExerciseSessions = { count_activities = ["HANDLEDD-TRANING"] }"#)
        },
        |c| c,
    );
    let counting = SarMapper::load(&connector, &metadata()).unwrap();
    let m3pt = map(&counting, &c.j, today);
    let p = &intent(&m3pt, "M3PT").payload;
    assert_eq!(p["M3PT_EducationSessions"], json!(3), "artrosskola at FT01 from the first visit through the 3-month occasion");
    assert_eq!(p["M3PT_SupervisedExerciseSessions"], json!(6));

    // An unrecorded count is a missing mandatory answer: M3PT waits on the worklist, M3Pat goes.
    c.j.nullify(&edu);
    let out = map(&shipped_mapper(), &c.j, today);
    assert_eq!(forms_of(&out), ["FVPat", "FVPT", "M3Pat"]);
    let inc = out.incomplete.iter().find(|i| i.form == "M3PT").expect("M3PT on the worklist");
    assert_eq!(inc.missing, ["M3PT_EducationSessions"]);
}

#[test]
fn occasion_windows_are_configuration() {
    let (_tmp, connector) = edited_connector(|m| m, |c| replace_once(c, "three_months = { from_day = 91, to_day = 152 }", "three_months = { from_day = 30, to_day = 60 }"));
    let mapper = SarMapper::load(&connector, &metadata()).unwrap();
    let mut j = Journal::new(national("600606", "456"));
    let fv = day("2025-03-01");
    let c = j.visit(FT01, fv);
    j.diagnosis(&c, "M17.9");
    j.first_visit_answers(&c);
    let m3 = j.visit(FT01, fv + Duration::days(45));
    j.follow_up_answers(&m3, 4.0);
    let out = map(&mapper, &j, fv + Duration::days(100));
    assert_eq!(intent(&out, "M3Pat").payload["EventDate"], json!("2025-04-15"));
    assert!(map(&shipped_mapper(), &j, fv + Duration::days(100)).intents.iter().all(|i| i.key.form != "M3Pat"));
}

#[test]
fn missing_mandatory_answer_goes_to_the_worklist_until_the_journal_is_complete() {
    let mapper = shipped_mapper();
    let mut c = complete_patient();
    c.j.nullify(&c.fv_docs[obs::EQ_VAS].clone());
    let out = map(&mapper, &c.j, c.fv + Duration::days(120));
    // FVPat is not sent half-filled; FVPT is complete and goes.
    assert_eq!(forms_of(&out), ["FVPT"]);
    let fv_key = format!("sar|{FT01}|{PATIENT_KEY}|course|FVPat");
    let inc = out.incomplete.iter().find(|i| i.form == "FVPat").expect("FVPat on the worklist");
    assert_eq!(inc.idem_key, fv_key);
    assert_eq!(inc.unit, FT01);
    assert_eq!(inc.missing, ["FV_EQVAS"]);
    assert_eq!(inc.event_date, Some(c.fv));
    // Its follow-ups wait for the first visit (and stay on the worklist, naming it).
    let m3 = out.incomplete.iter().find(|i| i.form == "M3Pat").expect("M3Pat waits");
    assert_eq!(m3.missing, ["FVPat"]);
    assert_eq!(m3.event_date, Some(c.fv + Duration::days(95)));
    assert!(out.incomplete.iter().any(|i| i.form == "M3PT" && i.missing == ["FVPat"]));

    // The physiotherapist completes the journal: the same key becomes an intent.
    let fvc = c.fv_contact.clone();
    c.j.number(&fvc, obs::EQ_VAS, 70.0);
    let out = map(&mapper, &c.j, c.fv + Duration::days(120));
    assert!(out.incomplete.is_empty(), "{:?}", out.incomplete);
    assert_eq!(forms_of(&out), ["FVPat", "FVPT", "M3Pat", "M3PT"]);
    assert_eq!(intent(&out, "FVPat").key.idem_key, fv_key);
    assert_eq!(intent(&out, "FVPat").payload["FV_EQVAS"], json!(70));
}

#[test]
fn a_changed_answer_changes_the_payload_under_the_same_key() {
    let mapper = shipped_mapper();
    let mut c = complete_patient();
    let today = c.fv + Duration::days(400);
    let before = map(&mapper, &c.j, today);
    c.j.set_value(&c.m3_docs[obs::PAIN_NRS].clone(), ObservationValue::Quantity { value: 1.0, unit: None });
    let after = map(&mapper, &c.j, today);
    assert_eq!(keys_of(&before), keys_of(&after));
    let (b, a) = (intent(&before, "M3Pat"), intent(&after, "M3Pat"));
    assert_ne!(b.payload, a.payload);
    assert_eq!(a.payload["M3_PainNRS"], json!(1));
    assert_eq!(intent(&before, "FVPat").payload, intent(&after, "FVPat").payload, "other registrations unchanged");

    // A corrected first-visit date (the first contact was a mistake; the real first visit is a
    // day later) keeps every key and changes EventDate.
    let real = c.j.visit(FT01, c.fv + Duration::days(1));
    c.j.diagnosis(&real, "M17.1");
    c.j.first_visit_answers(&real);
    c.j.nullify(&c.fv_contact.clone());
    let moved = map(&mapper, &c.j, today);
    assert_eq!(keys_of(&moved), keys_of(&before));
    assert_eq!(intent(&moved, "FVPat").payload["EventDate"], json!("2025-01-16"));
    assert_eq!(moved.episodes[0].episode_key, before.episodes[0].episode_key);
}

#[test]
fn opt_out_means_nothing_is_registered() {
    let mapper = shipped_mapper();
    let mut c = complete_patient();
    let today = c.fv + Duration::days(400);
    let objection = c.j.loose_coded(FT02, c.fv + Duration::days(200), 10, obs::REGISTER_OBJECTION, answer::YES);
    let out = map(&mapper, &c.j, today);
    assert!(out.opted_out);
    assert!(out.intents.is_empty() && out.incomplete.is_empty() && out.episodes.is_empty());

    // A later entry withdrawing the objection restores the registrations.
    let withdrawal = c.j.loose_coded(FT02, c.fv + Duration::days(250), 10, obs::REGISTER_OBJECTION, answer::NO);
    let out = map(&mapper, &c.j, today);
    assert!(!out.opted_out);
    assert_eq!(out.intents.len(), 5);
    // An objection nullified in the journal does not count.
    c.j.nullify(&withdrawal);
    c.j.nullify(&objection);
    assert_eq!(map(&mapper, &c.j, today).intents.len(), 5);
}

#[test]
fn nullified_documents_stop_contributing() {
    let mapper = shipped_mapper();
    let mut c = complete_patient();
    let today = c.fv + Duration::days(400);
    // The 3-month answers are nullified: M3 registrations lose their basis (reconcile retracts).
    for doc in c.m3_docs.values().cloned().collect::<Vec<_>>() {
        c.j.nullify(&doc);
    }
    let out = map(&mapper, &c.j, today);
    assert_eq!(forms_of(&out), ["FVPat", "FVPT", "Y1Pat"]);
    assert!(out.incomplete.is_empty());
    // The first visit's documents are nullified: no episode, nothing at all.
    c.j.nullify(&c.fv_contact.clone());
    c.j.nullify(&c.dx.clone());
    for doc in c.fv_docs.values().cloned().collect::<Vec<_>>() {
        c.j.nullify(&doc);
    }
    let out = map(&mapper, &c.j, today);
    assert!(out.intents.is_empty(), "{:?}", forms_of(&out));
    assert!(out.incomplete.is_empty() && out.episodes.is_empty());
}

#[test]
fn nullified_diagnosis_alone_closes_the_episode() {
    let mapper = shipped_mapper();
    let mut c = complete_patient();
    c.j.nullify(&c.dx.clone());
    let out = map(&mapper, &c.j, c.fv + Duration::days(400));
    assert!(out.intents.is_empty() && out.episodes.is_empty());
}

#[test]
fn reserve_number_is_kept_and_flagged_but_never_registered() {
    let mapper = shipped_mapper();
    let mut j = Journal::new(PatientId::parse_reserve("19550315R123", "1.2.752.74.9.2").unwrap());
    let fv = day("2025-01-15");
    let c = j.visit(FT01, fv);
    j.diagnosis(&c, "M17.1");
    j.first_visit_answers(&c);
    let out = map(&mapper, &j, fv + Duration::days(10));
    assert!(out.intents.is_empty() && out.incomplete.is_empty());
    assert_eq!(out.episodes.len(), 1, "the episode is real care and counts for coverage");
    assert_eq!(out.notes.len(), 1);
    assert_eq!(out.notes[0].kind, NoteKind::ReserveNumber);
    assert!(!serde_json::to_string(&out.notes).unwrap().contains("R123"));
}

#[test]
fn hand_joint_follows_the_configuration() {
    let hand = |icd: &str| {
        let mut j = Journal::new(national("520909", "345"));
        let fv = day("2025-05-05");
        let c = j.visit(FT01, fv);
        j.diagnosis(&c, icd);
        j.first_visit_answers(&c);
        map(&shipped_mapper(), &j, fv + Duration::days(10))
    };
    // Thumb base (M18), Heberden (M15.1), Bouchard (M15.2), M19 at the hand (E) or wrist (D).
    for icd in ["M18.0", "M15.1", "M15.2", "M19.0E", "M19.9D"] {
        let out = hand(icd);
        assert_eq!(out.episodes.len(), 1, "{icd}");
        assert_eq!(out.episodes[0].joint, "hand", "{icd}");
        assert_eq!(intent(&out, "FVPT").payload["PT_Joint"], json!(3), "{icd}");
        assert_eq!(intent(&out, "FVPT").payload["PT_JointHand"], json!(true), "{icd}");
        assert!(intent(&out, "FVPT").key.idem_key.ends_with("|course|FVPT"));
    }
    assert_eq!(intent(&hand("M18.0"), "FVPT").payload["PT_HandSides"], json!(2), "M18.0 is bilateral");
    // M19 at another site (G), without a site, or polyarthrosis (M15.0): no course, reported.
    for icd in ["M19.0G", "M19.9", "M15.0"] {
        let out = hand(icd);
        assert!(out.episodes.is_empty() && out.intents.is_empty(), "{icd}");
        let note = out.notes.iter().find(|n| n.kind == NoteKind::UnmatchedDiagnosis).unwrap_or_else(|| panic!("{icd} reported"));
        assert!(note.document.is_some() && !note.reason.contains(&normalise_icd(icd)), "{note:?}");
    }
}

#[test]
fn values_outside_the_domain_are_left_out_and_reported() {
    let mapper = shipped_mapper();
    let mut c = complete_patient();
    let today = c.fv + Duration::days(30);
    let fvc = c.fv_contact.clone();
    // Optional column out of range (height 250 cm > 230) and an unknown answer code: left out,
    // the registration still goes.
    c.j.set_value(&c.fv_docs[obs::HEIGHT].clone(), ObservationValue::Quantity { value: 250.0, unit: Some("cm".into()) });
    c.j.set_value(&c.fv_docs[obs::FEAR_OF_MOVEMENT].clone(), ObservationValue::Code { code: Code::new(LOCAL_TERMS, "KANSKE") });
    let out = map(&mapper, &c.j, today);
    let fv = intent(&out, "FVPat");
    assert!(!fv.payload.contains_key("FV_HeightCm") && !fv.payload.contains_key("FV_FearOfMovement"));
    assert_eq!(fv.detail["left_out"], json!(["FV_FearOfMovement", "FV_HeightCm"]));
    let height = out.notes.iter().find(|n| n.column.as_deref() == Some("FV_HeightCm")).expect("height reported");
    assert_eq!(height.kind, NoteKind::ValueOutsideDomain);
    assert_eq!(height.document.as_deref(), Some(c.fv_docs[obs::HEIGHT].as_str()));
    assert!(!height.reason.contains("250"), "no value in the note: {}", height.reason);
    let fear = out.notes.iter().find(|n| n.column.as_deref() == Some("FV_FearOfMovement")).expect("unknown code reported");
    assert_eq!(fear.kind, NoteKind::UnknownCode);
    assert!(!fear.reason.contains("KANSKE"));

    // A mandatory column out of range (NRS 14): the registration is incomplete, naming it.
    c.j.set_value(&c.fv_docs[obs::PAIN_NRS].clone(), ObservationValue::Quantity { value: 14.0, unit: None });
    let out = map(&mapper, &c.j, today);
    assert!(out.intents.iter().all(|i| i.key.form != "FVPat"));
    assert_eq!(out.incomplete[0].form, "FVPat");
    assert_eq!(out.incomplete[0].missing, ["FV_PainNRS"]);
    assert!(out.notes.iter().any(|n| n.column.as_deref() == Some("FV_PainNRS") && n.kind == NoteKind::ValueOutsideDomain));

    // Two different answers to one term on the first visit: the later one is used and reported.
    c.j.set_value(&c.fv_docs[obs::PAIN_NRS].clone(), ObservationValue::Quantity { value: 6.0, unit: None });
    let corrected = c.j.number(&fvc, obs::EQ5D_MOBILITY, 3.0);
    if let Record::Observation(o) = c.j.record_mut(&corrected) {
        o.time = Some(at(c.fv, 11));
    }
    let out = map(&mapper, &c.j, today);
    assert_eq!(intent(&out, "FVPat").payload["FV_EQ5D_Mobility"], json!(3));
    assert!(out.notes.iter().any(|n| n.kind == NoteKind::ConflictingAnswers && n.column.as_deref() == Some("FV_EQ5D_Mobility")));
}

/// The register registers one treatment course with the joint classification inside it: knee
/// and hip diagnosed at one first visit give one FVPat and one FVPT naming both joints.
#[test]
fn two_joints_at_one_first_visit_make_one_course_naming_both() {
    let mapper = shipped_mapper();
    let mut j = Journal::new(national("501224", "678"));
    let fv = day("2025-06-02");
    let c = j.visit(FT01, fv);
    j.diagnosis(&c, "M17.0");
    j.secondary(&c, "M16.1");
    j.first_visit_answers(&c);
    // A hand diagnosis a week later at the same unit is inside the first-visit window: classified.
    let week = j.visit(FT01, fv + Duration::days(7));
    j.diagnosis(&week, "M18.1");
    // The same knee seen at another unit later is a course of that unit.
    let other = j.visit(FT02, fv + Duration::days(20));
    j.diagnosis(&other, "M17.0");
    let out = map(&mapper, &j, fv + Duration::days(30));
    let eps: Vec<(&str, &str)> = out.episodes.iter().map(|e| (e.unit.as_str(), e.joint.as_str())).collect();
    assert_eq!(eps, [(FT01, "hand+hip+knee"), (FT02, "knee")]);
    let ft01: Vec<&RegisterIntent> = out.intents.iter().filter(|i| i.key.unit == FT01).collect();
    assert_eq!(ft01.iter().map(|i| i.key.form.as_str()).collect::<Vec<_>>(), ["FVPat", "FVPT"], "one FVPat and one FVPT");
    assert_eq!(keys_of(&out).iter().filter(|k| k.contains(FT01)).cloned().collect::<Vec<_>>(), [format!("sar|{FT01}|{PATIENT_KEY}|course|FVPat"), format!("sar|{FT01}|{PATIENT_KEY}|course|FVPT")]);
    let pt = &intent(&out, "FVPT").payload;
    assert_eq!(pt["PT_Joint"], json!(2), "the first visit's main diagnosis: knee");
    assert_eq!((&pt["PT_JointKnee"], &pt["PT_JointHip"], &pt["PT_JointHand"]), (&json!(true), &json!(true), &json!(true)));
    assert_eq!((&pt["PT_KneeSides"], &pt["PT_HipSides"], &pt["PT_HandSides"]), (&json!(2), &json!(1), &json!(1)), "M17.0 bilateral, M16.1 and M18.1 one side");
    // FT02's first visit has no answers: on the worklist.
    assert!(out.incomplete.iter().all(|i| i.unit == FT02));
    assert_eq!(out.incomplete.len(), 2);
}

/// Inclusion: only a main diagnosis opens a course (shipped); a secondary-only diagnosis does
/// when the region configures `any_diagnosis`; a region's inclusion term opens one too.
#[test]
fn a_secondary_only_diagnosis_opens_no_course_unless_configured() {
    let mut j = Journal::new(national("610101", "222"));
    let fv = day("2025-06-02");
    let c = j.visit(FT01, fv);
    j.diagnosis(&c, "M54.5");
    j.secondary(&c, "M17.1");
    j.first_visit_answers(&c);
    let out = map(&shipped_mapper(), &j, fv + Duration::days(30));
    assert!(out.episodes.is_empty() && out.intents.is_empty() && out.incomplete.is_empty());
    let (_tmp, any) = edited_connector(|m| replace_once(m, r#"inclusion = ["main_diagnosis"]"#, r#"inclusion = ["any_diagnosis"]"#), |c| c);
    let out = map(&SarMapper::load(&any, &metadata()).unwrap(), &j, fv + Duration::days(30));
    assert_eq!(out.episodes.len(), 1);
    assert_eq!(intent(&out, "FVPT").payload["PT_Joint"], json!(2));

    // The inclusion term: a course opened by the term, its joint from the diagnoses in the window.
    let mut j = Journal::new(national("610101", "222"));
    let c = j.visit(FT01, fv);
    j.coded(&c, "ARTROS-INKLUSION", answer::YES);
    j.first_visit_answers(&c);
    let later = j.visit(FT01, fv + Duration::days(3));
    j.secondary(&later, "M16.9");
    let (_tmp, term) = edited_connector(|m| replace_once(m, r#"inclusion = ["main_diagnosis"]"#, r#"inclusion = ["main_diagnosis", "term:ARTROS-INKLUSION"]"#), |c| c);
    let out = map(&SarMapper::load(&term, &metadata()).unwrap(), &j, fv + Duration::days(30));
    assert_eq!(out.episodes.len(), 1);
    assert_eq!(out.episodes[0].first_visit_date, fv.to_string());
    assert_eq!(intent(&out, "FVPT").payload["PT_Joint"], json!(1), "hip, diagnosed within the first-visit window");
    assert!(map(&shipped_mapper(), &j, fv + Duration::days(30)).episodes.is_empty());
}

/// The first-visit questionnaire often comes days before the visit: its answers count.
#[test]
fn first_visit_answers_come_from_the_window_around_the_visit() {
    let mapper = shipped_mapper();
    let mut j = Journal::new(national("570707", "444"));
    let fv = day("2025-09-10");
    let questionnaire = j.visit(FT01, fv - Duration::days(3));
    j.first_visit_answers(&questionnaire);
    let c = j.visit(FT01, fv);
    j.diagnosis(&c, "M16.1");
    // Documented at the visit too: the first-visit day wins over the questionnaire.
    j.number(&c, obs::EQ_VAS, 40.0);
    let out = map(&mapper, &j, fv + Duration::days(20));
    assert!(out.incomplete.is_empty(), "{:?}", out.incomplete);
    let p = &intent(&out, "FVPat").payload;
    assert_eq!(p["EventDate"], json!(fv.to_string()), "the first visit's date");
    assert_eq!(p["FV_PainNRS"], json!(6), "from the questionnaire three days before");
    assert_eq!(p["FV_EQVAS"], json!(40));
    // Outside the window (15 days before): not read.
    let mut j2 = Journal::new(national("570707", "444"));
    let early = j2.visit(FT01, fv - Duration::days(15));
    j2.first_visit_answers(&early);
    let c2 = j2.visit(FT01, fv);
    j2.diagnosis(&c2, "M16.1");
    let out = map(&mapper, &j2, fv + Duration::days(20));
    assert!(out.intents.is_empty());
    assert!(out.incomplete.iter().any(|i| i.form == "FVPat" && i.missing.contains(&"FV_PainNRS".to_string())));
}

/// A new course years later is a new registration with its first-visit date in the key; it
/// never overwrites the earlier one. Within the gap, a new diagnosis belongs to the course.
#[test]
fn a_later_course_after_the_gap_is_a_new_registration() {
    let mapper = shipped_mapper();
    let mut c = complete_patient();
    // Knee again 100 days after the 1-year visit: inside the gap, same course.
    let again = c.j.visit(FT01, c.fv + Duration::days(465));
    c.j.diagnosis(&again, "M17.1");
    let out = map(&mapper, &c.j, c.fv + Duration::days(500));
    assert_eq!(out.episodes.len(), 1);
    // Two years after the first visit (more than 365 days after the 1-year occasion).
    let fv2 = c.fv + Duration::days(740);
    let second = c.j.visit(FT01, fv2);
    c.j.diagnosis(&second, "M17.1");
    c.j.first_visit_answers(&second);
    let out = map(&mapper, &c.j, fv2 + Duration::days(10));
    assert_eq!(out.episodes.len(), 2);
    let second_key = format!("sar|{FT01}|{PATIENT_KEY}|course@{fv2}");
    assert_eq!(out.episodes[1].episode_key, second_key);
    assert_eq!(out.episodes[0].episode_key, format!("sar|{FT01}|{PATIENT_KEY}|course"));
    let fvpats: Vec<(&str, &Value)> = out.intents.iter().filter(|i| i.key.form == "FVPat").map(|i| (i.key.idem_key.as_str(), &i.payload["EventDate"])).collect();
    assert_eq!(fvpats, [(format!("sar|{FT01}|{PATIENT_KEY}|course|FVPat").as_str(), &json!(c.fv.to_string())), (format!("{second_key}|FVPat").as_str(), &json!(fv2.to_string()))]);
    assert_eq!(out.intents.len(), 7, "five of the first course, two of the second");
}

#[test]
fn keys_and_audit_data_never_contain_the_personnummer() {
    let mapper = shipped_mapper();
    let mut c = complete_patient();
    c.j.set_value(&c.fv_docs[obs::EQ_VAS].clone(), ObservationValue::Quantity { value: 130.0, unit: None });
    let out = map(&mapper, &c.j, c.fv + Duration::days(400));
    let pnr12 = c.j.patient.national_12().unwrap().to_string();
    let forms = [&pnr12[..], &pnr12[2..], &pnr12[2..8]];
    let mut texts: Vec<String> = vec![];
    for i in &out.intents {
        texts.push(i.key.idem_key.clone());
        texts.push(i.key.subject.clone().unwrap());
        texts.push(i.detail.to_string());
        assert_eq!(i.payload["SubjectKey"], json!(pnr12), "the personnummer goes only in the payload");
    }
    for i in &out.incomplete {
        texts.push(serde_json::to_string(i).unwrap());
    }
    for e in &out.episodes {
        texts.push(serde_json::to_string(e).unwrap());
    }
    texts.push(serde_json::to_string(&out.notes).unwrap());
    texts.push(serde_json::to_string(&out).unwrap());
    assert!(!out.incomplete.is_empty() && !out.notes.is_empty());
    for t in &texts {
        for f in forms {
            assert!(!t.contains(f), "personal data in {t}");
        }
        assert!(!t.contains("130"), "an answer in {t}");
    }
}

// ---------------------------------------------------------------------------------- coverage

#[test]
fn coverage_counts_due_and_delivered_per_unit_month_and_form() {
    let ep = |key: &str, unit: &str, first: &str, forms: &[&str]| EpisodeRow {
        episode_key: key.into(),
        connector: "artrosregistret".into(),
        unit: unit.into(),
        patient_key: key.split('|').nth(2).unwrap().into(),
        joint: key.rsplit('|').next().unwrap().into(),
        first_visit_date: first.into(),
        forms_due: forms.iter().map(|f| f.to_string()).collect(),
    };
    let reg = |key: &str, state: &str| Registration {
        idem_key: key.into(),
        register: "sar".into(),
        connector: "artrosregistret".into(),
        unit: key.split('|').nth(1).unwrap().into(),
        form: key.rsplit('|').next().unwrap().into(),
        subject: Some(key.split('|').nth(2).unwrap().into()),
        event_id: Some("1".into()),
        delivered_hash: None,
        delivered_payload: None,
        state: state.into(),
    };
    let episodes = [
        ep("sar|FT01|p1|knee", "FT01", "2025-01-15", &["FVPat", "FVPT", "M3Pat"]),
        ep("sar|FT01|p1|hip", "FT01", "2025-01-20", &["FVPat", "FVPT"]),
        ep("sar|FT01|p2|knee", "FT01", "2025-02-03", &["FVPat", "FVPT"]),
        ep("sar|FT02|p3|knee", "FT02", "2025-01-10", &["FVPat", "FVPT"]),
    ];
    let delivered = [
        reg("sar|FT01|p1|knee|FVPat", "present"),
        reg("sar|FT01|p1|knee|M3Pat", "present"),
        // The same patient's other episode is not delivered just because one of theirs is.
        reg("sar|FT01|p1|hip|FVPT", "retracted"),
        reg("sar|FT02|p3|knee|FVPat", "present"),
        reg("sar|FT02|p3|knee|FVPT", "present"),
    ];
    let rows = coverage(&episodes, &delivered);
    let row = |unit: &str, month: &str, form: &str, expected: u32, delivered: u32| CoverageRow { unit: unit.into(), month: month.into(), form: form.into(), expected, delivered };
    assert_eq!(
        rows,
        [
            row("FT01", "2025-01", "FVPT", 2, 0),
            row("FT01", "2025-01", "FVPat", 2, 1),
            row("FT01", "2025-01", "M3Pat", 1, 1),
            row("FT01", "2025-02", "FVPT", 1, 0),
            row("FT01", "2025-02", "FVPat", 1, 0),
            row("FT02", "2025-01", "FVPT", 1, 1),
            row("FT02", "2025-01", "FVPat", 1, 1),
        ]
    );
}

#[test]
fn coverage_of_mapped_episodes_and_their_intents() {
    // End to end on the mapper's own output: what it intends, once delivered, covers what it expects.
    let mapper = shipped_mapper();
    let c = complete_patient();
    let out = map(&mapper, &c.j, c.fv + Duration::days(400));
    let delivered: Vec<Registration> = out
        .intents
        .iter()
        .map(|i| Registration {
            idem_key: i.key.idem_key.clone(),
            register: i.key.register.clone(),
            connector: i.key.connector.clone(),
            unit: i.key.unit.clone(),
            form: i.key.form.clone(),
            subject: i.key.subject.clone(),
            event_id: None,
            delivered_hash: None,
            delivered_payload: None,
            state: "present".into(),
        })
        .collect();
    let rows = coverage(&out.episodes, &delivered);
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r.expected == 1 && r.delivered == 1 && r.month == "2025-01" && r.unit == FT01));
}

// ------------------------------------------------------------------------------ config check

fn errors(problems: &[Problem]) -> Vec<&Problem> {
    problems.iter().filter(|p| !p.warning).collect()
}

fn check_mapping(edit: impl Fn(String) -> String) -> Vec<Problem> {
    let (_tmp, c) = edited_connector(edit, |c| c);
    let problems = sar::check_connector(&c, &metadata());
    // SarMapper::load refuses exactly when the check has errors.
    assert_eq!(SarMapper::load(&c, &metadata()).is_err(), !errors(&problems).is_empty());
    problems
}

fn has(problems: &[Problem], key: &str, reason_part: &str) -> bool {
    problems.iter().any(|p| !p.warning && p.key == key && p.reason.contains(reason_part) && p.file.ends_with("mapping.toml"))
}

#[test]
fn check_passes_the_shipped_connector() {
    let problems = sar::check_connector(&shipped_connector(), &metadata());
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn check_catches_a_column_that_is_not_in_the_form() {
    let p = check_mapping(|m| replace_once(m, "FV_PainNRS = {", "FV_PainNRSX = {"));
    assert!(has(&p, "forms.FVPat.columns.FV_PainNRSX", "no column FV_PainNRSX in form FVPat"), "{p:?}");
    // …and, since FV_PainNRS is mandatory, that it is no longer mapped.
    assert!(has(&p, "forms.FVPat.columns", "mandatory column FV_PainNRS is not mapped"), "{p:?}");
    // A column of another form is not in this one either.
    let p = check_mapping(|m| replace_once(m, "PT_XrayDone = {", "M3_EQVAS = {"));
    assert!(has(&p, "forms.FVPT.columns.M3_EQVAS", "no column"), "{p:?}");
}

#[test]
fn check_catches_conversions_that_do_not_fit_the_domain() {
    // HOFT → 4 where the joint domain has 1–3.
    let p = check_mapping(|m| replace_once(m, "\nHOFT = 1\n", "\nHOFT = 4\n"));
    assert!(has(&p, "forms.FVPat.columns.FV_MainJoint", "HOFT → 4 does not fit domain 10401"), "{p:?}");
    // A boolean table into an integer column.
    let p = check_mapping(|m| replace_once(m, r#"PT_Side = { observation = "SIDA", codes = "side" }"#, r#"PT_Side = { observation = "SIDA", codes = "yes_no" }"#));
    assert!(has(&p, "forms.FVPT.columns.PT_Side", "JA → true does not fit"), "{p:?}");
    // Numbers into an enumerated column: a journal range outside the domain's values, or no range.
    let p = check_mapping(|m| replace_once(m, r#"FV_PainFrequency = { observation = "SMARTFREKVENS", range = [1, 5] }"#, r#"FV_PainFrequency = { observation = "SMARTFREKVENS", range = [0, 5] }"#));
    assert!(has(&p, "forms.FVPat.columns.FV_PainFrequency", "journal value 0"), "{p:?}");
    let p = check_mapping(|m| replace_once(m, r#"FV_EQ5D_Mobility = { observation = "EQ5D-RORLIGHET", range = [1, 5] }"#, r#"FV_EQ5D_Mobility = { observation = "EQ5D-RORLIGHET" }"#));
    assert!(has(&p, "forms.FVPat.columns.FV_EQ5D_Mobility", "needs `range"), "{p:?}");
    // A number into a boolean column; a count into an enumerated one; decimals into an integer.
    let p = check_mapping(|m| replace_once(m, r#"PT_XrayDone = { observation = "RONTGEN-GJORD", codes = "yes_no" }"#, r#"PT_XrayDone = { observation = "RONTGEN-GJORD" }"#));
    assert!(has(&p, "forms.FVPT.columns.PT_XrayDone", "a number cannot fill a boolean column"), "{p:?}");
    let p = check_mapping(|m| replace_once(m, r#"M3PT_ExerciseAdherence = { observation = "FOLJSAMHET-TRANING", range = [1, 3] }"#, r#"M3PT_ExerciseAdherence = { count_activities = ["HANDLEDD-TRANING"] }"#));
    assert!(has(&p, "forms.M3PT.columns.M3PT_ExerciseAdherence", "a count cannot fill an enumerated column"), "{p:?}");
    let p = check_mapping(|m| replace_once(m, r#"FV_PainNRS = { observation = "NRS-SMARTA" }"#, r#"FV_PainNRS = { observation = "NRS-SMARTA", decimals = 1 }"#));
    assert!(has(&p, "forms.FVPat.columns.FV_PainNRS", "decimals > 0 into an integer column"), "{p:?}");
    // A journal range wider than a numeric domain (VAS 0–100 into NRS 0–10).
    let p = check_mapping(|m| replace_once(m, r#"FV_PainNRS = { observation = "NRS-SMARTA" }"#, r#"FV_PainNRS = { observation = "NRS-SMARTA", range = [0, 100] }"#));
    assert!(has(&p, "forms.FVPat.columns.FV_PainNRS", "above the domain's maximum 10"), "{p:?}");
    // The episode joint table lacks a configured joint.
    let p = check_mapping(|m| replace_once(m, "hand = 3\n", ""));
    assert!(has(&p, "forms.FVPT.columns.PT_Joint", "no value for joint hand"), "{p:?}");
}

#[test]
fn check_catches_unknown_forms_envelope_columns_and_bad_episode_rules() {
    let p = check_mapping(|m| m + "\n[forms.M6Pat]\noccasion = \"three_months\"\n[forms.M6Pat.columns]\n");
    assert!(has(&p, "forms.M6Pat", "unknown form"), "{p:?}");
    let p = check_mapping(|m| replace_once(m, "[forms.FVPT.columns]\n", "[forms.FVPT.columns]\nSubjectKey = { observation = \"X\", convert = \"text\" }\n"));
    assert!(has(&p, "forms.FVPT.columns.SubjectKey", "envelope column"), "{p:?}");
    let p = check_mapping(|m| replace_once(m, "occasion = \"one_year\"", "occasion = \"three_months\""));
    assert!(has(&p, "forms.Y1Pat.occasion", "one_year"), "{p:?}");
    let p = check_mapping(|m| replace_once(m, r#"codes = ["M18", "M151""#, r#"codes = ["M1", "M18", "M151""#));
    assert!(p.iter().any(|x| x.key.starts_with("course.joints.") && x.reason.contains("overlaps")), "{p:?}");
    let p = check_mapping(|m| replace_once(m, r#"inclusion = ["main_diagnosis"]"#, r#"inclusion = ["secondary"]"#));
    assert!(has(&p, "course.inclusion[0]", "unknown inclusion"), "{p:?}");
    let p = check_mapping(|m| replace_once(m, r#"bilateral = ["M160""#, r#"bilateral = ["M170""#));
    assert!(has(&p, "course.joints.hip.bilateral", "not one of the joint's codes"), "{p:?}");
    let p = check_mapping(|m| replace_once(m, "values = [\"JA\"]", "values = []"));
    assert!(has(&p, "opt_out.values", "no value"), "{p:?}");
    // A syntax slip is reported with its line.
    let p = check_mapping(|m| replace_once(m, "FV_EQVAS = { observation = \"EQ-VAS\" }", "FV_EQVAS = { observaton = \"EQ-VAS\" }"));
    assert!(p.iter().any(|x| x.key.contains("FV_EQVAS") && x.reason.contains("observaton")), "{p:?}");
}

#[test]
fn check_catches_invalid_windows() {
    let check_windows = |from: &str, to: &str| {
        let (_tmp, c) = edited_connector(|m| m, |c| replace_once(c, from, to));
        sar::check_connector(&c, &metadata())
    };
    let p = check_windows("three_months = { from_day = 91, to_day = 152 }", "three_months = { from_day = 150, to_day = 75 }");
    assert!(p.iter().any(|x| x.key == "options.windows.three_months" && x.reason.contains("invalid window") && x.file.ends_with("connector.toml")), "{p:?}");
    let p = check_windows("one_year = { from_day = 365, to_day = 540 }", "one_year = { from_day = 120, to_day = 540 }");
    assert!(p.iter().any(|x| x.key == "options.windows" && x.reason.contains("overlap")), "{p:?}");
    let p = check_windows("one_year = { from_day = 365, to_day = 540 }", "six_months = { from_day = 170, to_day = 200 }");
    assert!(p.iter().any(|x| x.key == "options.windows.six_months" && x.reason.contains("unknown occasion")), "{p:?}");
    assert!(p.iter().any(|x| x.key == "options.windows.one_year" && x.reason.contains("Y1Pat needs this window")), "{p:?}");
}

#[test]
fn config_check_runs_every_sar_connector() {
    let (tmp, bad) = edited_connector(|m| replace_once(m, "\nHOFT = 1\n", "\nHOFT = 4\n"), |c| c);
    let loaded = Loaded { settings: Default::default(), failed_sections: vec![], connectors: vec![shipped_connector(), bad], files: vec![PathBuf::from("config/default.toml")] };
    let problems = sar::check(&loaded, None);
    assert_eq!(errors(&problems).len(), 1, "{problems:?}");
    assert!(problems[0].file.starts_with(tmp.path().to_str().unwrap()));
    // With metadata given (as the online check will), it is used instead of the offline file.
    let mut online = metadata();
    online.forms.retain(|f| f.form_name != "Y1Pat");
    let problems = sar::check(&loaded, Some(&online));
    assert!(problems.iter().any(|p| p.key == "forms.Y1Pat" && p.reason.contains("unknown form")), "{problems:?}");
}

// ------------------------------------------------------------- through the outbox's reconcile

/// What `outbox::reconcile` makes of an outcome, given that all five registrations of the
/// complete path were delivered before: (upserted keys' forms, retracted forms, worklist forms).
fn reconciled(out: &SarOutcome, before: &SarOutcome, patient: &PatientId) -> (Vec<String>, Vec<(String, String)>, Vec<String>) {
    use registerbrygga::outbox::{reconcile, Existing};
    use registerbrygga::store::{ChangeSet, OutboxChange, WorklistChange};
    let existing = Existing {
        intents: before.intents.iter().map(|i| (i.key.idem_key.clone(), ("upsert".to_string(), "delivered".to_string()))).collect(),
        worklist: Default::default(),
    };
    let mut cs = ChangeSet::default();
    reconcile(&mut cs, "artrosregistret", PATIENT_KEY, Some(patient), out.intents.clone(), out.incomplete.clone(), &existing, out.opted_out, "corr-1");
    let form = |k: &str| k.rsplit('|').next().unwrap().to_string();
    let mut upserts = vec![];
    let mut retracts = vec![];
    for ch in &cs.outbox {
        match ch {
            OutboxChange::Upsert { key, .. } => upserts.push(form(&key.idem_key)),
            OutboxChange::Retract { idem_key, reason, .. } => retracts.push((form(idem_key), reason.clone())),
        }
    }
    let worklist = cs.worklist.iter().filter_map(|w| if let WorklistChange::Put { idem_key, .. } = w { Some(form(idem_key)) } else { None }).collect();
    (upserts, retracts, worklist)
}

#[test]
fn reconcile_retracts_what_lost_its_basis_and_keeps_what_waits() {
    use registerbrygga::outbox::RetractReason;
    let mapper = shipped_mapper();
    let c = complete_patient();
    let today = c.fv + Duration::days(400);
    let before = map(&mapper, &c.j, today);
    assert_eq!(before.intents.len(), 5);

    // Opt-out: everything sent is retracted as an opt-out.
    let mut j = Journal { patient: c.j.patient.clone(), records: c.j.records.clone(), seq: 1000, contacts: c.j.contacts.clone() };
    j.loose_coded(FT01, c.fv + Duration::days(380), 8, obs::REGISTER_OBJECTION, answer::YES);
    let (up, re, wl) = reconciled(&map(&mapper, &j, today), &before, &j.patient);
    assert!(up.is_empty() && wl.is_empty());
    assert_eq!(re.len(), 5);
    assert!(re.iter().all(|(_, r)| r == RetractReason::OptOut.text()));

    // The 3-month answers are nullified: the two M3 registrations are retracted, the rest stay.
    let mut j = Journal { patient: c.j.patient.clone(), records: c.j.records.clone(), seq: 1000, contacts: c.j.contacts.clone() };
    for doc in c.m3_docs.values() {
        j.nullify(doc);
    }
    let (up, re, wl) = reconciled(&map(&mapper, &j, today), &before, &j.patient);
    assert_eq!(up, ["FVPat", "FVPT", "Y1Pat"]);
    assert_eq!(re, [("M3PT".to_string(), RetractReason::NoLongerSupported.text().to_string()), ("M3Pat".to_string(), RetractReason::NoLongerSupported.text().to_string())]);
    assert!(wl.is_empty());

    // A first-visit answer is nullified: FVPat goes to the worklist and so do its follow-ups;
    // nothing already in the register is retracted for it.
    let mut j = Journal { patient: c.j.patient.clone(), records: c.j.records.clone(), seq: 1000, contacts: c.j.contacts.clone() };
    j.nullify(&c.fv_docs[obs::PAIN_NRS]);
    let (up, re, wl) = reconciled(&map(&mapper, &j, today), &before, &j.patient);
    assert_eq!(up, ["FVPT"]);
    assert!(re.is_empty(), "{re:?}");
    assert_eq!(wl, ["FVPat", "M3Pat", "M3PT", "Y1Pat"]);
}

/// Every mapped column of the shipped mapping cites its source or says provisional.
#[test]
fn every_shipped_column_cites_a_source_or_says_provisional() {
    let text = std::fs::read_to_string("connectors/artrosregistret/mapping.toml").unwrap();
    let mut in_columns = false;
    let mut n = 0;
    for line in text.lines() {
        if line.starts_with('[') {
            in_columns = line.ends_with(".columns]");
            continue;
        }
        if in_columns && !line.starts_with('#') && line.contains(" = {") {
            let comment = line.split_once('#').map(|(_, c)| c).unwrap_or("");
            assert!(comment.contains("facts:") || comment.contains("provisional"), "no source: {line}");
            n += 1;
        }
    }
    assert!(n > 60, "{n} columns checked");
}

#[test]
fn the_worklist_names_the_journal_keyword_of_each_column() {
    let hints = sar::mapping::document_hints(&shipped_connector());
    let h = &hints[&("FVPat".to_string(), "FV_EQVAS".to_string())];
    assert_eq!((h.term.as_deref(), h.name.as_deref()), (Some("EQ-VAS"), Some("EQ VAS 0–100")));
    let j = &hints[&("FVPT".to_string(), "PT_Joint".to_string())];
    assert_eq!(j.term, None, "the course's joint is not a keyword");
}
