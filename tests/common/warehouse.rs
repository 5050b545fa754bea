//! A warehouse-shaped PostgreSQL schema (visits, diagnoses, KVÅ and keyword values in separate
//! tables, Swedish column names as a region's would be) filled from the sandbox journal, and the
//! queries and ODBC connection string that read it (`kind = "sql"`).
#![allow(dead_code)]

use chrono::NaiveDate;
use registerbrygga::config::{Secret, SourceKind, SourceSettings, WarehouseQueries};
use registerbrygga::model::{ObservationValue, Record};
use registerbrygga::sandbox::journal::{render_patient, Contract, Population, PopulationSpec, SharedPopulation, OID_RESERVE_VARMLAND};
use registerbrygga::sandbox::vocabulary::LOCAL_TERMS;
use registerbrygga::sources::riv::keywords::{KeywordTable, ValueType};
use registerbrygga::sources::riv::{parse_bytes, ParseContext};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub const SCHEMA: &str = "
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

pub fn queries() -> WarehouseQueries {
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
pub fn odbc_string(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let (auth, hostdb) = rest.rsplit_once('@').unwrap_or(("", rest));
    let (user, pass) = auth.split_once(':').unwrap_or((auth, ""));
    let (hostport, db) = hostdb.split_once('/').unwrap();
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    let host = if host.is_empty() || host.starts_with('%') { "127.0.0.1" } else { host };
    format!("Driver={{PostgreSQL Unicode}};Server={host};Port={port};Database={db};Uid={user};Pwd={pass};")
}

pub fn population(n: usize) -> (SharedPopulation, NaiveDate) {
    let today = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
    (Arc::new(Population::generate(&PopulationSpec::new(23, n, today))), today)
}

pub fn riv_ctx(today: NaiveDate) -> ParseContext {
    let mut c = ParseContext::new("dw", today);
    c.known_code_systems.push(LOCAL_TERMS.into());
    c.reserve_oids.push(OID_RESERVE_VARMLAND.into());
    c
}

/// Each patient's records as the RIV-TA contracts give them.
pub fn riv_records(pop: &SharedPopulation, today: NaiveDate) -> BTreeMap<String, Vec<Record>> {
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
pub async fn fill(url: &str, records: &BTreeMap<String, Vec<Record>>) {
    let table = KeywordTable::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/artrosregistret/keywords.toml")).unwrap();
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

pub fn settings(url: &str) -> SourceSettings {
    let var = format!("RB_DW_{}", uuid::Uuid::new_v4().simple());
    std::env::set_var(&var, odbc_string(url));
    let mut s = SourceSettings { kind: SourceKind::Sql, connection: Some(Secret::from_env(&var)), queries: queries(), ..SourceSettings::default() };
    s.known_code_systems.push(LOCAL_TERMS.into());
    s.reserve_oids.push(OID_RESERVE_VARMLAND.into());
    s
}

