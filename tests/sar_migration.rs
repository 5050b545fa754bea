//! The store migration `0005_sar_course_keys` on both backends: a store written before the SAR
//! course model (one episode per joint) is carried over to course keys when the store opens.

mod common;

use chrono::NaiveDate;
use common::TestStore;
use registerbrygga::model::PatientId;
use registerbrygga::store::*;
use serde_json::json;

const UNIT: &str = "SE2321000156-FT01";

fn upsert(idem_key: &str, form: &str) -> OutboxChange {
    let mut payload = serde_json::Map::new();
    payload.insert("SubjectKey".into(), json!("191212121212"));
    OutboxChange::Upsert {
        key: RecordKey { idem_key: idem_key.into(), register: "sar".into(), connector: "artros".into(), unit: UNIT.into(), form: form.into(), subject: Some("pk1".into()) },
        payload: payload.clone(),
        lookup: payload,
        correlation_id: "old".into(),
        detail: json!({}),
    }
}

fn episode(joint: &str, first_visit: &str) -> EpisodeRow {
    EpisodeRow {
        episode_key: format!("sar|{UNIT}|pk1|{joint}"),
        connector: "artros".into(),
        unit: UNIT.into(),
        patient_key: "pk1".into(),
        joint: joint.into(),
        first_visit_date: first_visit.into(),
        forms_due: vec!["FVPat".into(), "FVPT".into()],
    }
}

async fn keys(s: &Store, table: &str, col: &str) -> Vec<String> {
    let mut tx = s.read().await.unwrap();
    let mut v: Vec<String> = tx.rows(&format!("SELECT {col} FROM {table}"), &[]).await.unwrap().iter().map(|r| r.text(0).unwrap()).collect();
    v.sort();
    v
}

both_backends!(old_joint_keys_become_course_keys, |ts: TestStore| async move {
    let s = &ts.store;
    let patient = PatientId::parse_national("191212121212", NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()).unwrap();
    // As the old version left it: hip (first visit in January, delivered) and knee (March, its
    // FVPat delivered, its FVPT waiting on the worklist) at one unit, one patient.
    s.apply(ChangeSet {
        outbox: vec![upsert(&format!("sar|{UNIT}|pk1|hip|FVPat"), "FVPat"), upsert(&format!("sar|{UNIT}|pk1|knee|FVPat"), "FVPat")],
        worklist: vec![WorklistChange::Put {
            idem_key: format!("sar|{UNIT}|pk1|hip|FVPT"),
            connector: "artros".into(),
            unit: UNIT.into(),
            form: "FVPT".into(),
            patient_key: "pk1".into(),
            patient,
            missing: vec!["PT_Side".into()],
            event_date: Some("2025-01-10".into()),
        }],
        episodes: vec![("artros".into(), "pk1".into(), vec![episode("hip", "2025-01-10"), episode("knee", "2025-03-05")])],
        ..Default::default()
    })
    .await
    .unwrap();
    for _ in 0..2 {
        let c = s.claim("w1", &[], 1, 60).await.unwrap().pop().expect("claimed");
        s.finish(&c, "w1", Outcome::Delivered { operation: "POST".into(), http_status: Some(200), event_id: Some(format!("E-{}", c.record.id)), detail: None }).await.unwrap();
    }
    let mut tx = s.begin().await.unwrap();
    tx.exec("DELETE FROM _sqlx_migrations WHERE description = 'sar course keys'", &[]).await.unwrap();
    tx.commit().await.unwrap();

    // The store opens again: the migration runs.
    let s = Store::open(&ts.settings, common::cipher()).await.unwrap();
    let course = format!("sar|{UNIT}|pk1|course");
    // The earliest episode (hip) became the course, in every table; the knee episode's keys stay
    // as they were, for the next run to retract.
    assert_eq!(keys(&s, "registrations", "idem_key").await, [format!("{course}|FVPat"), format!("sar|{UNIT}|pk1|knee|FVPat")]);
    let records = keys(&s, "records", "idem_key").await;
    assert_eq!(records, [format!("{course}|FVPat"), format!("sar|{UNIT}|pk1|knee|FVPat")]);
    let attempts = keys(&s, "attempts", "idem_key").await;
    assert!(attempts.contains(&format!("{course}|FVPat")) && !attempts.iter().any(|k| k.contains("|hip|")), "{attempts:?}");
    assert_eq!(keys(&s, "worklist", "idem_key").await, [format!("{course}|FVPT")]);
    assert_eq!(keys(&s, "sar_episodes", "episode_key").await, [course.clone()]);
    // The delivered registration keeps its EventID and payload hash: nothing is sent again.
    let mut tx = s.read().await.unwrap();
    let row = tx.rows("SELECT event_id, delivered_hash, state FROM registrations WHERE idem_key = $1", &[registerbrygga::store::sql::Val::Text(format!("{course}|FVPat"))]).await.unwrap();
    assert!(row[0].text_opt(0).unwrap().is_some() && row[0].text_opt(1).unwrap().is_some());
    assert_eq!(row[0].text(2).unwrap(), "present");
});
