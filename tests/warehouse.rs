//! The regional data warehouse over ODBC (`kind = "sql"`), against the throwaway PostgreSQL
//! through Debian's psqlODBC driver (`odbc-postgresql`), with a warehouse-shaped schema: visits,
//! diagnoses, KVÅ and keyword values in separate tables, filled from the sandbox journal.
//! Every test here needs the cluster `scripts/test` starts (RB_TEST_PG_URL).

mod common;

use chrono::{NaiveDate, Utc};
use common::warehouse::{fill, population, riv_records, settings};
use registerbrygga::config::PatientDiscovery;
use registerbrygga::model::Record;
use registerbrygga::sources::warehouse::WarehouseSource;
use registerbrygga::sources::{PullRequest, PullSummary, Source, SourceItem};
use sqlx::Connection;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

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
