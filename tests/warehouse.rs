//! The regional data warehouse over ODBC (`kind = "sql"`), against the throwaway PostgreSQL
//! through Debian's psqlODBC driver (`odbc-postgresql`), with a warehouse-shaped schema: visits,
//! diagnoses, KVÅ and keyword values in separate tables, filled from the sandbox journal.
//! Every test here needs the cluster `scripts/test` starts (RB_TEST_PG_URL).

mod common;

use chrono::{NaiveDate, Utc};
use registerbrygga::config::{PatientDiscovery, Secret, SourceKind, SourceSettings, WarehouseQueries};
use registerbrygga::model::{ObservationValue, Record};
use registerbrygga::sandbox::journal::{render_patient, Contract, Population, PopulationSpec, SharedPopulation, OID_RESERVE_VARMLAND};
use registerbrygga::sandbox::vocabulary::LOCAL_TERMS;
use registerbrygga::sources::riv::keywords::{KeywordTable, ValueType};
use registerbrygga::sources::riv::{parse_bytes, ParseContext};
use registerbrygga::sources::warehouse::WarehouseSource;
use registerbrygga::sources::{PullRequest, PullSummary, Source, SourceItem};
use sqlx::Connection;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

const SCHEMA: &str = "
CREATE SCHEMA dw;
CREATE TABLE dw.vardkontakt (pnr text, pnr_typ text, dok_id text, kontakt_id text, enhet text, start_tid timestamp, slut_tid timestamp,
  kontakttyp text, yrke text, makulerad boolean, kallsystem text, andrad timestamp);
CREATE TABLE dw.diagnos (pnr text, pnr_typ text, dok_id text, kontakt_id text, enhet text, kod text, kodverk text, huvud boolean,
  kronisk boolean, tid timestamp, yrke text, makulerad boolean, kallsystem text);
CREATE TABLE dw.atgard (pnr text, pnr_typ text, dok_id text, kontakt_id text, enhet text, kod text, kodverk text, tid timestamp,
  status text, yrke text, makulerad boolean, kallsystem text);
CREATE TABLE dw.sokordsvarde (pnr text, pnr_typ text, dok_id text, kontakt_id text, enhet text, sokord text, varde text, tid timestamp,
  yrke text, makulerad boolean, kallsystem text);
";

fn queries() -> WarehouseQueries {
    let common = "pnr AS patient_id, pnr_typ AS patient_id_type, dok_id AS document_id, kontakt_id AS care_contact_id, enhet AS unit_hsa_id, \
                  yrke AS profession, makulerad AS nullified, kallsystem AS source_system";
    WarehouseQueries {
        patients: Some("SELECT DISTINCT pnr AS patient_id, pnr_typ AS patient_id_type FROM dw.vardkontakt WHERE andrad >= CAST(:since AS timestamp)".into()),
        care_contacts: Some(format!(
            "SELECT {common}, start_tid AS start_time, slut_tid AS end_time, kontakttyp AS contact_type FROM dw.vardkontakt \
             WHERE pnr = :patient AND start_tid::date BETWEEN CAST(:from AS date) AND CAST(:to AS date)"
        )),
        diagnoses: Some(format!(
            "SELECT {common}, kod AS code, kodverk AS code_system, huvud AS main, kronisk AS chronic, tid AS time FROM dw.diagnos \
             WHERE pnr = :patient AND tid::date BETWEEN CAST(:from AS date) AND CAST(:to AS date)"
        )),
        activities: Some(format!(
            "SELECT {common}, kod AS code, kodverk AS code_system, tid AS time, status FROM dw.atgard WHERE pnr = :patient AND tid::date BETWEEN CAST(:from AS date) AND CAST(:to AS date)"
        )),
        observations: Some(format!(
            "SELECT {common}, sokord AS keyword, varde AS value_text, tid AS time FROM dw.sokordsvarde WHERE pnr = :patient AND tid::date BETWEEN CAST(:from AS date) AND CAST(:to AS date)"
        )),
    }
}

/// `Driver={PostgreSQL Unicode};Server=…` for a `postgres://user:pass@host:port/db` URL.
fn odbc_string(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let (auth, hostdb) = rest.rsplit_once('@').unwrap_or(("", rest));
    let (user, pass) = auth.split_once(':').unwrap_or((auth, ""));
    let (hostport, db) = hostdb.split_once('/').unwrap();
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    let host = if host.is_empty() || host.starts_with('%') { "127.0.0.1" } else { host };
    format!("Driver={{PostgreSQL Unicode}};Server={host};Port={port};Database={db};Uid={user};Pwd={pass};")
}

fn population(n: usize) -> (SharedPopulation, NaiveDate) {
    let today = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
    (Arc::new(Population::generate(&PopulationSpec::new(23, n, today))), today)
}

fn riv_ctx(today: NaiveDate) -> ParseContext {
    let mut c = ParseContext::new("dw", today);
    c.known_code_systems.push(LOCAL_TERMS.into());
    c.reserve_oids.push(OID_RESERVE_VARMLAND.into());
    c
}

/// Each patient's records as the RIV-TA contracts give them.
fn riv_records(pop: &SharedPopulation, today: NaiveDate) -> BTreeMap<String, Vec<Record>> {
    let c = riv_ctx(today);
    let mut out: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for p in 0..pop.len() {
        for k in [Contract::GetCareContacts, Contract::GetDiagnosis, Contract::GetActivities, Contract::GetObservations] {
            let parsed = parse_bytes(&render_patient(pop, k, p), "riv", &c).unwrap();
            out.entry(pop.patient_id(p).raw().to_string()).or_default().extend(parsed.records);
        }
    }
    for v in out.values_mut() {
        registerbrygga::sources::riv::join_to_contacts(v);
    }
    out
}

fn ts(t: &Option<registerbrygga::model::LocalTime>) -> Option<chrono::NaiveDateTime> {
    t.map(|t| t.naive_local())
}

/// The warehouse a region's ETL would have filled from the same journal.
async fn fill(url: &str, records: &BTreeMap<String, Vec<Record>>) {
    let table = KeywordTable::load(Path::new("connectors/artrosregistret/keywords.toml")).unwrap();
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(SCHEMA).execute(&mut db).await.unwrap();
    let changed = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
    for recs in records.values() {
        for r in recs {
            let p = r.patient();
            let prov = r.provenance();
            let prof = |c: &Option<registerbrygga::model::Code>| c.as_ref().map(|c| c.code.clone());
            match r {
                Record::CareContact(c) => {
                    sqlx::query("INSERT INTO dw.vardkontakt VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)")
                        .bind(p.raw()).bind(p.oid()).bind(&prov.document_id).bind(&c.care_contact_id).bind(c.unit.as_ref().map(|u| u.as_str().to_string()))
                        .bind(ts(&c.start)).bind(ts(&c.end)).bind(c.contact_type.as_ref().map(|c| c.code.clone())).bind(prof(&c.profession))
                        .bind(c.nullified).bind(&prov.source_system).bind(changed)
                        .execute(&mut db).await.unwrap();
                }
                Record::Diagnosis(d) => {
                    sqlx::query("INSERT INTO dw.diagnos VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)")
                        .bind(p.raw()).bind(p.oid()).bind(&prov.document_id).bind(&d.care_contact_id).bind(d.unit.as_ref().map(|u| u.as_str().to_string()))
                        .bind(&d.code.code).bind(&d.code.system).bind(d.kind == registerbrygga::model::DiagnosisKind::Main).bind(d.chronic)
                        .bind(ts(&d.time)).bind(prof(&d.profession)).bind(d.nullified).bind(&prov.source_system)
                        .execute(&mut db).await.unwrap();
                }
                Record::Activity(a) => {
                    sqlx::query("INSERT INTO dw.atgard VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)")
                        .bind(p.raw()).bind(p.oid()).bind(&prov.document_id).bind(&a.care_contact_id).bind(a.unit.as_ref().map(|u| u.as_str().to_string()))
                        .bind(&a.code.code).bind(&a.code.system).bind(ts(&a.time)).bind(a.status.as_ref().map(|c| c.code.clone()))
                        .bind(prof(&a.profession)).bind(a.nullified).bind(&prov.source_system)
                        .execute(&mut db).await.unwrap();
                }
                Record::Observation(o) => {
                    // Keyword values as Cosmic stores them: the heading and the answer as written.
                    let k = table.by_term(&o.term.code).unwrap_or_else(|| panic!("term {} in the keyword table", o.term.code));
                    let text = match (&o.value, k.value_type) {
                        (Some(ObservationValue::Quantity { value, .. }), ValueType::Quantity) => value.to_string().replace('.', ","),
                        (Some(ObservationValue::Code { code }), ValueType::Code) => k.values.iter().find(|(_, c)| **c == code.code).unwrap().0.clone(),
                        other => panic!("unexpected value {other:?}"),
                    };
                    sqlx::query("INSERT INTO dw.sokordsvarde VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)")
                        .bind(p.raw()).bind(p.oid()).bind(&prov.document_id).bind(&o.care_contact_id).bind(o.unit.as_ref().map(|u| u.as_str().to_string()))
                        .bind(&k.headings[0]).bind(text).bind(ts(&o.time)).bind(prof(&o.profession)).bind(o.nullified).bind(&prov.source_system)
                        .execute(&mut db).await.unwrap();
                }
            }
        }
    }
    db.close().await.ok();
}

fn settings(url: &str) -> SourceSettings {
    let var = format!("RB_DW_{}", uuid::Uuid::new_v4().simple());
    std::env::set_var(&var, odbc_string(url));
    let mut s = SourceSettings { kind: SourceKind::Sql, connection: Some(Secret::from_env(&var)), queries: queries(), ..SourceSettings::default() };
    s.known_code_systems.push(LOCAL_TERMS.into());
    s.reserve_oids.push(OID_RESERVE_VARMLAND.into());
    s
}

fn request(today: NaiveDate, since: Option<chrono::DateTime<Utc>>) -> PullRequest {
    PullRequest {
        connector: "dw".into(),
        units: vec![],
        changed_since: since,
        window_from: today - chrono::Duration::days(900),
        window_to: today,
        discovery: PatientDiscovery::All,
        connector_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/artrosregistret"),
        correlation_id: "test".into(),
        today,
    }
}

async fn pull(src: &WarehouseSource, req: &PullRequest) -> (anyhow::Result<PullSummary>, Vec<SourceItem>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let collect = tokio::spawn(async move {
        let mut v = vec![];
        while let Some(i) = rx.recv().await {
            v.push(i);
        }
        v
    });
    let r = src.pull(req, tx).await;
    (r, collect.await.unwrap())
}

/// A record's clinical content: display names (which the warehouse does not keep) and the fetch
/// time and connector left out.
fn clinical(r: &Record) -> String {
    let mut v = serde_json::to_value(r).unwrap();
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("display");
                m.remove("fetched_at");
                m.remove("connector");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    // Contact types carry no code system in the sandbox's GetCareContacts either way.
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warehouse_rows_become_the_same_records_as_the_riv_ta_contracts() {
    let (pop, today) = population(30);
    let riv = riv_records(&pop, today);
    let url = common::fresh_pg_url("dw_same").await;
    fill(&url, &riv).await;
    let src = WarehouseSource::new(&settings(&url)).unwrap();
    let (r, items) = pull(&src, &request(today, None)).await;
    let summary = r.unwrap();
    assert!(summary.complete);
    let mut got: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in &items {
        match i {
            SourceItem::Patient(b) => {
                assert!(b.refusals.is_empty(), "{:?}", b.refusals);
                got.entry(b.patient.raw().to_string()).or_default().extend(b.records.iter().map(clinical));
            }
            SourceItem::Refused { refusal, .. } => panic!("refused: {refusal}"),
        }
    }
    let want: BTreeMap<String, BTreeSet<String>> =
        riv.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.clone(), v.iter().map(clinical).collect())).collect();
    assert_eq!(got.len(), want.len());
    for (p, w) in &want {
        let g = &got[p];
        let missing: Vec<_> = w.difference(g).take(3).collect();
        let extra: Vec<_> = g.difference(w).take(3).collect();
        assert!(missing.is_empty() && extra.is_empty(), "patient records differ\nmissing {missing:#?}\nextra {extra:#?}");
    }

    // Incremental: only patients changed since the watermark are read again.
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let one = pop.patient_id(0).raw().to_string();
    sqlx::query("UPDATE dw.vardkontakt SET andrad = now() WHERE pnr = $1").bind(&one).execute(&mut db).await.unwrap();
    let since = Utc::now() - chrono::Duration::hours(48);
    let (r, items) = pull(&src, &request(today, Some(since))).await;
    r.unwrap();
    let patients: Vec<String> = items.iter().filter_map(|i| if let SourceItem::Patient(b) = i { Some(b.patient.raw().to_string()) } else { None }).collect();
    assert_eq!(patients, vec![one.clone()]);

    // Bad rows are refused with the column named, the rest of the patient kept.
    sqlx::query("UPDATE dw.diagnos SET kodverk = '2.25.999' WHERE pnr = $1 AND dok_id = (SELECT min(dok_id) FROM dw.diagnos WHERE pnr = $1)")
        .bind(&one).execute(&mut db).await.unwrap();
    sqlx::query("UPDATE dw.sokordsvarde SET varde = 'Vet ej' WHERE pnr = $1 AND dok_id = (SELECT min(dok_id) FROM dw.sokordsvarde WHERE pnr = $1 AND sokord = 'Sida')")
        .bind(&one).execute(&mut db).await.unwrap();
    let (r, items) = pull(&src, &request(today, Some(since))).await;
    r.unwrap();
    let SourceItem::Patient(b) = &items[0] else { panic!("{:?}", items[0]) };
    let fields: BTreeSet<&str> = b.refusals.iter().map(|r| r.field.as_str()).collect();
    assert!(fields.contains("code_system"), "{:?}", b.refusals);
    // Patient 0 (knee, the whole path) answered the side keyword.
    assert!(fields.contains("value_text"), "{:?}", b.refusals);
    assert!(b.refusals.iter().all(|r| !r.reason.contains("Vet ej") && !r.document.contains(&one)), "no values, no identity");
    assert_eq!(b.records.len() + b.refusals.len(), riv[&one].len());

    // A query returning a wrong column type stops the pull, naming the query and the column.
    let mut s = settings(&url);
    s.queries.care_contacts = Some("SELECT pnr AS patient_id, dok_id AS document_id, 17 AS start_time FROM dw.vardkontakt WHERE pnr = :patient".into());
    let src = WarehouseSource::new(&s).unwrap();
    let (r, _) = pull(&src, &request(today, Some(since))).await;
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("care_contacts") && e.contains("column start_time") && e.contains("date or timestamp"), "{e}");
    db.close().await.ok();
}
