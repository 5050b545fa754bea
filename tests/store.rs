//! Store behaviour, run against both SQLite and PostgreSQL.

mod common;

use chrono::{NaiveDate, Utc};
use common::TestStore;
use registerbrygga::audit::NewAuditEvent;
use registerbrygga::model::*;
use registerbrygga::store::*;
use registerbrygga::store::sql::Dialect;
use serde_json::json;

fn contact(doc: &str, pnr: &str, unit: &str) -> Record {
    let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
    Record::CareContact(CareContact {
        provenance: Provenance { connector: "c".into(), source_system: "SE2321000156-SRC1".into(), document_id: doc.into(), fetched_at: Utc::now() },
        patient: PatientId::parse_national(pnr, today).unwrap(),
        care_contact_id: Some(doc.into()),
        unit: Some(HsaId::parse(unit).unwrap()),
        start: Some(stockholm(NaiveDate::from_ymd_opt(2026, 3, 2).unwrap().and_hms_opt(9, 0, 0).unwrap())),
        end: None,
        contact_type: Some(Code::new("1.2.752.129.2.2.2.25", "1")),
        status: None,
        profession: None,
        nullified: false,
    })
}

fn key(k: &str) -> RecordKey {
    RecordKey { idem_key: k.into(), register: "sar".into(), connector: "c".into(), unit: "SE2321000156-FT01".into(), form: "FVPat".into(), subject: Some("p1".into()) }
}

fn upsert(k: &str, v: i64) -> OutboxChange {
    let mut payload = serde_json::Map::new();
    payload.insert("SubjectKey".into(), json!("191212121212"));
    payload.insert("FV_PainNRS".into(), json!(v));
    let mut lookup = serde_json::Map::new();
    lookup.insert("SubjectKey".into(), json!("191212121212"));
    OutboxChange::Upsert { key: key(k), payload, lookup, correlation_id: "corr".into(), detail: json!({}) }
}

fn delivered(event: &str) -> Outcome {
    Outcome::Delivered { operation: "POST".into(), http_status: Some(200), event_id: Some(event.into()), detail: None }
}

both_backends!(documents_are_idempotent_and_encrypted, |ts: TestStore| async move {
    let s = &ts.store;
    let rec = contact("doc-1", "191212121212", "SE2321000156-FT01");
    let up = |r: Record| ChangeSet { documents: vec![DocumentUpsert { connector: "c".into(), patient_key: "pk1".into(), record: r, content_hash: None }], ..Default::default() };
    let o = s.apply(up(rec.clone())).await.unwrap();
    assert_eq!((o.documents_new, o.documents_changed, o.documents_unchanged), (1, 0, 0));
    // The same document read again (later fetch time) is one record.
    let mut again = rec.clone();
    if let Record::CareContact(c) = &mut again {
        c.provenance.fetched_at = Utc::now() + chrono::Duration::hours(1);
    }
    let o = s.apply(up(again)).await.unwrap();
    assert_eq!((o.documents_new, o.documents_changed, o.documents_unchanged), (0, 0, 1));
    // A changed document is an update of the same record.
    let mut changed = rec.clone();
    if let Record::CareContact(c) = &mut changed {
        c.nullified = true;
    }
    let o = s.apply(up(changed.clone())).await.unwrap();
    assert_eq!(o.documents_changed, 1);
    let docs = s.patient_documents("c", "pk1").await.unwrap();
    assert_eq!(docs, vec![changed]);
    assert_eq!(s.document_count("c").await.unwrap(), 1);
    // At rest the payload is ciphertext bound to its row (v3): the personnummer is nowhere in the table.
    let mut tx = s.read().await.unwrap();
    let rows = tx.rows("SELECT payload FROM documents", &[]).await.unwrap();
    let raw = rows[0].bytes(0).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("v3:"), "{text}");
    assert!(!text.contains("191212121212") && !text.contains("doc-1"));
});

both_backends!(watermarks_and_kv, |ts: TestStore| async move {
    let s = &ts.store;
    assert_eq!(s.watermark("c", "u").await.unwrap(), None);
    let t = Utc::now();
    s.apply(ChangeSet { watermarks: vec![("c".into(), "u".into(), t)], ..Default::default() }).await.unwrap();
    assert_eq!(s.watermark("c", "u").await.unwrap().unwrap().timestamp_micros(), t.timestamp_micros());
    s.kv_put("a", "1").await.unwrap();
    s.kv_put("a", "2").await.unwrap();
    assert_eq!(s.kv_get("a").await.unwrap().as_deref(), Some("2"));
});

both_backends!(outbox_state_machine, |ts: TestStore| async move {
    let s = &ts.store;
    let o = s.apply(ChangeSet { outbox: vec![upsert("k1", 5)], ..Default::default() }).await.unwrap();
    assert_eq!(o.outbox_created, 1);
    // Same payload again: nothing new.
    let o = s.apply(ChangeSet { outbox: vec![upsert("k1", 5)], ..Default::default() }).await.unwrap();
    assert_eq!(o.outbox_unchanged, 1);
    // A change before delivery supersedes the unsent version.
    let o = s.apply(ChangeSet { outbox: vec![upsert("k1", 6)], ..Default::default() }).await.unwrap();
    assert_eq!(o.outbox_updated, 1);
    let versions = s.record_versions("k1").await.unwrap();
    assert_eq!(versions.iter().map(|v| v.state).collect::<Vec<_>>(), vec![RecordState::Superseded, RecordState::Pending]);

    let claimed = s.claim("w1", &[], 10, 60).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!(c.record.version, 2);
    assert_eq!(c.record.payload.as_ref().unwrap()["FV_PainNRS"], json!(6));
    assert!(c.registration.event_id.is_none());
    assert!(!c.outcome_unknown_before);
    // Claimed rows are not claimed twice.
    assert!(s.claim("w2", &[], 10, 60).await.unwrap().is_empty());
    assert!(s.finish(c, "w1", delivered("E1")).await.unwrap());
    let reg = s.registration("k1").await.unwrap().unwrap();
    assert_eq!(reg.event_id.as_deref(), Some("E1"));
    assert_eq!(reg.state, "present");
    assert_eq!(reg.delivered_payload.unwrap()["FV_PainNRS"], json!(6));

    // A later change becomes an update of the same registration.
    s.apply(ChangeSet { outbox: vec![upsert("k1", 7)], ..Default::default() }).await.unwrap();
    let c = s.claim("w1", &[], 10, 60).await.unwrap().remove(0);
    assert_eq!(c.registration.event_id.as_deref(), Some("E1"));
    // A 4xx: rejected with the reason.
    assert!(s
        .finish(&c, "w1", Outcome::Rejected { operation: "PUT".into(), http_status: Some(400), reason: "FV_PainNRS: outside 0-10".into() })
        .await
        .unwrap());
    let r = s.record(c.record.id).await.unwrap().unwrap();
    assert_eq!(r.state, RecordState::Rejected);
    assert_eq!(r.reason.as_deref(), Some("FV_PainNRS: outside 0-10"));
    // Replay re-queues it and records who and why.
    let done = s.replay(&[r.id], "operatör-anna", "kolumn rättad").await.unwrap();
    assert_eq!(done, vec![r.id]);
    let ev = s.audit_search(&AuditQuery { kind: Some("replay".into()), ..Default::default() }).await.unwrap();
    assert_eq!(ev[0].actor, "operatör-anna");
    assert_eq!(ev[0].detail["reason"], json!("kolumn rättad"));

    // Retract: a delivered registration gets a delete record.
    let c = s.claim("w1", &[], 10, 60).await.unwrap().remove(0);
    s.finish(&c, "w1", Outcome::Delivered { operation: "PUT".into(), http_status: Some(200), event_id: None, detail: None }).await.unwrap();
    let o = s
        .apply(ChangeSet { outbox: vec![OutboxChange::Retract { idem_key: "k1".into(), reason: "opt-out".into(), correlation_id: "c".into(), actor: "system".into() }], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(o.outbox_retracted, 1);
    let c = s.claim("w1", &[], 10, 60).await.unwrap().remove(0);
    assert_eq!(c.record.op, Op::Retract);
    assert_eq!(c.registration.event_id.as_deref(), Some("E1"));
    s.finish(&c, "w1", Outcome::Delivered { operation: "DELETE".into(), http_status: Some(200), event_id: None, detail: None }).await.unwrap();
    let reg = s.registration("k1").await.unwrap().unwrap();
    assert_eq!(reg.state, "retracted");
    assert!(reg.event_id.is_none());
    assert_eq!(s.record(c.record.id).await.unwrap().unwrap().state, RecordState::Retracted);

    // Retracting something never sent completes at once, with nothing to send.
    s.apply(ChangeSet { outbox: vec![upsert("k2", 1)], ..Default::default() }).await.unwrap();
    s.apply(ChangeSet { outbox: vec![OutboxChange::Retract { idem_key: "k2".into(), reason: "nullified".into(), correlation_id: "c".into(), actor: "system".into() }], ..Default::default() })
        .await
        .unwrap();
    assert!(s.claim("w1", &[], 10, 60).await.unwrap().is_empty());
    assert_eq!(s.registration("k2").await.unwrap().unwrap().state, "retracted");
    assert!(s.audit_verify().await.unwrap().ok);
});

both_backends!(expired_leases_are_rescued_and_flagged_unknown, |ts: TestStore| async move {
    let s = &ts.store;
    s.apply(ChangeSet { outbox: vec![upsert("k1", 1)], ..Default::default() }).await.unwrap();
    let c = s.claim("dead-worker", &[], 10, 0).await.unwrap().remove(0);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(s.rescue_expired().await.unwrap(), 1);
    let again = s.claim("w2", &[], 10, 60).await.unwrap().remove(0);
    assert_eq!(again.record.id, c.record.id);
    assert!(again.outcome_unknown_before, "an attempt with unknown outcome must make the next send look first");
    assert_eq!(again.earlier_lookups.len(), 1);
    assert_eq!(again.earlier_lookups[0]["SubjectKey"], json!("191212121212"));
    // The dead worker's late finish is refused (the lease is gone) but the EventID it learned
    // is kept, so nobody creates the registration a second time.
    assert!(!s.finish(&c, "dead-worker", delivered("E9")).await.unwrap());
    assert_eq!(s.registration("k1").await.unwrap().unwrap().event_id.as_deref(), Some("E9"));
    assert!(s.finish(&again, "w2", Outcome::Delivered { operation: "PUT".into(), http_status: Some(200), event_id: None, detail: None }).await.unwrap());
    assert_eq!(s.registration("k1").await.unwrap().unwrap().event_id.as_deref(), Some("E9"));
    // Heartbeats renew only one's own leases.
    s.apply(ChangeSet { outbox: vec![upsert("k3", 1)], ..Default::default() }).await.unwrap();
    let c = s.claim("w3", &[], 10, 1).await.unwrap().remove(0);
    assert_eq!(s.heartbeat("other", &[c.record.id], 60).await.unwrap(), 0);
    assert_eq!(s.heartbeat("w3", &[c.record.id], 60).await.unwrap(), 1);
    assert_eq!(s.release_leases("w3").await.unwrap(), 1);
    assert_eq!(s.record(c.record.id).await.unwrap().unwrap().state, RecordState::Pending);
});

both_backends!(versions_of_one_key_are_sent_in_order, |ts: TestStore| async move {
    let s = &ts.store;
    s.apply(ChangeSet { outbox: vec![upsert("k1", 1)], ..Default::default() }).await.unwrap();
    let c1 = s.claim("w1", &[], 10, 60).await.unwrap().remove(0);
    // While v1 is in flight, v2 arrives; it must wait for v1.
    s.apply(ChangeSet { outbox: vec![upsert("k1", 2)], ..Default::default() }).await.unwrap();
    assert!(s.claim("w2", &[], 10, 60).await.unwrap().is_empty());
    s.finish(&c1, "w1", delivered("E1")).await.unwrap();
    let c2 = s.claim("w2", &[], 10, 60).await.unwrap().remove(0);
    assert_eq!(c2.record.version, 2);
    assert_eq!(c2.registration.event_id.as_deref(), Some("E1"));
});

both_backends!(ticks_fire_once_and_leases_exclude, |ts: TestStore| async move {
    let s = &ts.store;
    let t = Utc::now();
    let mut wins = 0;
    for owner in ["a", "b", "c"] {
        if s.claim_tick("conn", t, owner).await.unwrap() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
    assert!(s.acquire_connector_lease("conn", "a", 60).await.unwrap());
    assert!(!s.acquire_connector_lease("conn", "b", 60).await.unwrap());
    assert!(s.renew_connector_lease("conn", "a", 60).await.unwrap(), "the holder renews");
    assert!(!s.renew_connector_lease("conn", "b", 60).await.unwrap(), "only the holder renews");
    s.release_connector_lease("conn", "a").await.unwrap();
    assert!(s.acquire_connector_lease("conn", "b", 0).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert!(s.acquire_connector_lease("conn", "c", 60).await.unwrap(), "an expired lease can be taken");
});

both_backends!(runs_quarantine_worklist, |ts: TestStore| async move {
    let s = &ts.store;
    let id = s.start_run("conn", "scheduled", None, "me", "corr1").await.unwrap();
    s.apply(ChangeSet {
        quarantine: vec![NewQuarantine {
            connector: "conn".into(),
            run_id: Some(id),
            document: "GetCareContacts doc-9".into(),
            field: "careContactHeader/patientId/id".into(),
            reason: "check digit does not match (Luhn)".into(),
            patient_key: None,
            raw: Some(b"<x/>".to_vec()),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    s.finish_run(id, "ok", &json!({"records": 3}), None).await.unwrap();
    let runs = s.runs(Some("conn"), 10).await.unwrap();
    assert_eq!(runs[0].status, "ok");
    assert_eq!(runs[0].stats["records"], json!(3));
    let q = s.quarantine(None, true, 10).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].field, "careContactHeader/patientId/id");
    assert!(s.resolve_quarantine(q[0].id, "admin", "fixed in journal").await.unwrap());
    assert!(s.quarantine(None, true, 10).await.unwrap().is_empty());

    let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
    let p = PatientId::parse_national("191212121212", today).unwrap();
    s.apply(ChangeSet {
        worklist: vec![WorklistChange::Put {
            idem_key: "k".into(),
            connector: "conn".into(),
            unit: "U1".into(),
            form: "FVPat".into(),
            patient_key: "pk".into(),
            patient: p.clone(),
            missing: vec!["FV_EQVAS".into()],
            event_date: Some("2026-03-02".into()),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let w = s.worklist(Some("conn"), None).await.unwrap();
    assert_eq!(w[0].missing, vec!["FV_EQVAS".to_string()]);
    assert_eq!(w[0].patient.as_ref(), Some(&p));
    s.apply(ChangeSet { worklist: vec![WorklistChange::Remove { idem_key: "k".into() }], ..Default::default() }).await.unwrap();
    assert!(s.worklist(None, None).await.unwrap().is_empty());
    let kinds: Vec<String> = s.audit_search(&AuditQuery::default()).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&"run.started".to_string()) && kinds.contains(&"run.ended".to_string()));
});

both_backends!(audit_chain_detects_edit_removal_and_reorder, |ts: TestStore| async move {
    let s = &ts.store;
    for i in 0..10 {
        s.audit(vec![NewAuditEvent::system("test.event", "corr", format!("s{i}"), json!({"i": i}))]).await.unwrap();
    }
    let ok = s.audit_verify().await.unwrap();
    assert!(ok.ok, "{ok:?}");
    assert_eq!(ok.events_checked, 10);

    // Edit one row directly in the database.
    common::raw_exec(&ts, "UPDATE audit_events SET detail = '{\"i\":99}' WHERE seq = 4").await;
    let r = s.audit_verify().await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(4));
    assert!(r.problem.unwrap().contains("edited"));
});

both_backends!(audit_chain_detects_removed_event, |ts: TestStore| async move {
    let s = &ts.store;
    for i in 0..6 {
        s.audit(vec![NewAuditEvent::system("test.event", "corr", format!("s{i}"), json!({"i": i}))]).await.unwrap();
    }
    common::raw_exec(&ts, "DELETE FROM audit_events WHERE seq = 3").await;
    let r = s.audit_verify().await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(3));
    // Removing the newest event is caught by the head.
    let ts2 = common::store_for(s_backend(s), "audit_tail").await;
    for i in 0..3 {
        ts2.store.audit(vec![NewAuditEvent::system("test.event", "corr", format!("s{i}"), json!({}))]).await.unwrap();
    }
    common::raw_exec(&ts2, "DELETE FROM audit_events WHERE seq = 3").await;
    let r = ts2.store.audit_verify().await.unwrap();
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.first_bad_seq, Some(3));
});

both_backends!(audit_prune_keeps_chain_verifiable, |ts: TestStore| async move {
    let s = &ts.store;
    for i in 0..20 {
        s.audit(vec![NewAuditEvent::system("test.event", "corr", format!("s{i}"), json!({"i": i}))]).await.unwrap();
    }
    // Everything so far is "old": prune up to a cutoff after all of them (rounded to a month on PG).
    let cutoff = match s.dialect() {
        registerbrygga::store::sql::Dialect::Sqlite => Utc::now().timestamp_micros() + 1,
        registerbrygga::store::sql::Dialect::Postgres => {
            // Move the events into last month's partition range so a whole partition can go.
            common::raw_exec(&ts, "UPDATE audit_events SET at_us = at_us - 40::bigint * 86400 * 1000000").await;
            Utc::now().timestamp_micros()
        }
    };
    // The raw UPDATE above does not touch hashes of at_us... so on PG verify would now fail;
    // prune removes exactly those rows and the anchor makes the rest verifiable again.
    let removed = s.audit_prune(cutoff, "admin").await.unwrap();
    assert!(removed >= 20, "removed {removed}");
    let r = s.audit_verify().await.unwrap();
    assert!(r.ok, "{r:?}");
    assert!(r.anchor_seq >= 20);
    s.audit(vec![NewAuditEvent::system("test.after", "corr", "x", json!({}))]).await.unwrap();
    assert!(s.audit_verify().await.unwrap().ok);
});

fn s_backend(s: &Store) -> registerbrygga::config::Backend {
    match s.dialect() {
        registerbrygga::store::sql::Dialect::Sqlite => registerbrygga::config::Backend::Sqlite,
        registerbrygga::store::sql::Dialect::Postgres => registerbrygga::config::Backend::Postgres,
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 17: stale versions, guarded finish, withdrawals that hold, connector leases.

fn retract(k: &str, actor: &str, reason: &str) -> OutboxChange {
    OutboxChange::Retract { idem_key: k.into(), reason: reason.into(), correlation_id: "corr".into(), actor: actor.into() }
}

fn retry_now() -> Outcome {
    Outcome::Retry { operation: "POST".into(), http_status: None, error: "timed out".into(), next_at: Utc::now() - chrono::Duration::seconds(1) }
}

/// (version, op, state) of every claimed record, sorted.
fn claimed_versions(c: &[Claimed]) -> Vec<(String, i64, Op)> {
    let mut v: Vec<(String, i64, Op)> = c.iter().map(|c| (c.record.idem_key.clone(), c.record.version, c.record.op)).collect();
    v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    v
}

both_backends!(only_the_newest_version_of_a_key_is_ever_claimed, |ts: TestStore| async move {
    let s = &ts.store;
    // v1 of three keys is in flight; meanwhile v2 of each is queued (an update, a withdrawal,
    // an update); then v1 comes back: a timeout (Retry), a shutdown (release), an expired lease.
    s.apply(ChangeSet { outbox: vec![upsert("k1", 1), upsert("k2", 1)], ..Default::default() }).await.unwrap();
    let first = s.claim("w1", &[], 10, 60).await.unwrap();
    assert_eq!(first.len(), 2);
    s.apply(ChangeSet { outbox: vec![upsert("k3", 1)], ..Default::default() }).await.unwrap();
    let k3 = s.claim("w3", &[], 10, 0).await.unwrap().remove(0);
    s.apply(ChangeSet { outbox: vec![upsert("k1", 2), retract("k2", "system", "opt-out"), upsert("k3", 2)], ..Default::default() }).await.unwrap();
    // Nothing of a key with a version in flight is claimed.
    assert!(s.claim("w2", &[], 10, 60).await.unwrap().is_empty());
    let c1 = first.iter().find(|c| c.record.idem_key == "k1").unwrap();
    let c2 = first.iter().find(|c| c.record.idem_key == "k2").unwrap();
    // k1: v1 times out and is due again at once.
    assert!(s.finish(c1, "w1", retry_now()).await.unwrap());
    // k2: w1 shuts down before k2's outcome is known... (release only what w1 still holds).
    assert_eq!(s.release_leases("w1").await.unwrap(), 1);
    // k3: the lease expires and the rescuer takes it back.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(s.rescue_expired().await.unwrap(), 1);
    for (k, id) in [("k1", c1.record.id), ("k2", c2.record.id), ("k3", k3.record.id)] {
        assert_eq!(s.record(id).await.unwrap().unwrap().state, RecordState::Superseded, "{k} v1 is superseded by v2, never sent again");
    }
    // Only the v2s are claimed; the withdrawal looks first (v1's outcome is unknown).
    let next = s.claim("w2", &[], 10, 60).await.unwrap();
    assert_eq!(claimed_versions(&next), vec![("k1".into(), 2, Op::Upsert), ("k2".into(), 2, Op::Retract), ("k3".into(), 2, Op::Upsert)]);
    assert!(next.iter().all(|c| c.outcome_unknown_before), "every v2 follows a v1 whose outcome is unknown");
    for c in &next {
        s.finish(c, "w2", Outcome::Delivered { operation: "PUT".into(), http_status: Some(200), event_id: Some(format!("E-{}", c.record.idem_key)), detail: None }).await.unwrap();
    }
    // Nothing older comes back, now or later.
    assert!(s.claim("w2", &[], 10, 60).await.unwrap().is_empty());
    assert_eq!(s.queue_depth().await.unwrap(), 0);
    assert!(s.audit_verify().await.unwrap().ok);
});

both_backends!(finish_updates_only_rows_the_worker_still_owns, |ts: TestStore| async move {
    let s = ts.store.clone();
    s.apply(ChangeSet { outbox: vec![upsert("k1", 1)], ..Default::default() }).await.unwrap();
    let c = s.claim("w1", &[], 10, 60).await.unwrap().remove(0);
    let id = c.record.id;
    // Another transaction holds the row while w1 finishes: in it the lease passes to w2 (as an
    // expiry, a rescue and w2's claim would). On PostgreSQL w1's finish reads the row before
    // that commits; it must still not write over w2's claim.
    let pg = s.dialect() == registerbrygga::store::sql::Dialect::Postgres;
    let mut holder = s.begin().await.unwrap();
    if pg {
        holder.rows("SELECT id FROM records WHERE id = $1 FOR UPDATE", &[registerbrygga::store::sql::Val::I64(id)]).await.unwrap();
    }
    let s2 = s.clone();
    let finishing = tokio::spawn(async move { s2.finish(&c, "w1", delivered("E1")).await.unwrap() });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    holder.exec("UPDATE records SET lease_owner = 'w2' WHERE id = $1", &[registerbrygga::store::sql::Val::I64(id)]).await.unwrap();
    holder.commit().await.unwrap();
    let kept = finishing.await.unwrap();
    assert!(!kept, "w1 no longer owns the row: its finish must not settle it");
    let r = s.record(id).await.unwrap().unwrap();
    assert_eq!((r.state, r.lease_owner.as_deref()), (RecordState::Sending, Some("w2")), "w2's claim is untouched");
    // What w1 learned is kept: the register holds E1, so w2 will not create it again.
    assert_eq!(s.registration("k1").await.unwrap().unwrap().event_id.as_deref(), Some("E1"));
});

both_backends!(a_withdrawal_by_a_person_holds_until_a_person_lifts_it, |ts: TestStore| async move {
    use registerbrygga::outbox::{reconcile, Existing, RegisterIntent};
    let s = &ts.store;
    // What the journal says about the patient, as the mapper would put it.
    let intent = |nrs: i64| {
        let OutboxChange::Upsert { key, payload, lookup, .. } = upsert("k1", nrs) else { unreachable!() };
        RegisterIntent { key, payload, lookup, detail: json!({}) }
    };
    let journal_run = |nrs: i64| async move {
        let existing = Existing { intents: s.intents_of_subject("c", "p1").await.unwrap().into_iter().map(|(k, op, st)| (k, (op, st))).collect(), worklist: Default::default() };
        let mut cs = ChangeSet::default();
        reconcile(&mut cs, "c", "p1", None, vec![intent(nrs)], vec![], &existing, false, "run");
        s.apply(cs).await.unwrap()
    };
    journal_run(5).await;
    let c = s.claim("w1", &[], 10, 60).await.unwrap().remove(0);
    s.finish(&c, "w1", delivered("E1")).await.unwrap();
    // A person withdraws the registration: the patient declines registration.
    let why = "patienten avböjer registrering";
    s.apply(ChangeSet { outbox: vec![retract("k1", "anna", why)], ..Default::default() }).await.unwrap();
    let c = s.claim("w1", &[], 10, 60).await.unwrap().remove(0);
    assert_eq!(c.record.op, Op::Retract);
    s.finish(&c, "w1", Outcome::Delivered { operation: "DELETE".into(), http_status: Some(200), event_id: None, detail: None }).await.unwrap();
    assert_eq!(s.hold("k1").await.unwrap().map(|h| (h.by, h.reason)), Some(("anna".to_string(), Some(why.to_string()))));
    // The journal changes: the mapper wants the registration again. Nothing is sent.
    let o = journal_run(8).await;
    assert_eq!(o.outbox_held, 1);
    assert!(s.claim("w1", &[], 10, 60).await.unwrap().is_empty(), "a held key is never sent");
    let versions = s.record_versions("k1").await.unwrap();
    assert_eq!(versions.last().unwrap().state, RecordState::Held);
    // The same journal content again changes nothing and says nothing new.
    assert_eq!(journal_run(8).await.outbox_unchanged, 1);
    let held = s.audit_search(&AuditQuery { kind: Some("record.held".into()), ..Default::default() }).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].detail["held_by"], json!("anna"));
    assert_eq!(held[0].detail["hold_reason"], json!(why));
    let hold = s.audit_search(&AuditQuery { kind: Some("withdrawal.hold".into()), ..Default::default() }).await.unwrap();
    assert_eq!((hold.len(), hold[0].actor.as_str()), (1, "anna"));
    // The register still holds nothing; a person lifts the hold, with a reason.
    assert!(s.lift_hold("k2-unknown", "bertil", "x").await.unwrap().is_none());
    let lifted = s.lift_hold("k1", "bertil", "patienten har ångrat sig").await.unwrap().unwrap();
    let c = s.claim("w1", &[], 10, 60).await.unwrap().remove(0);
    assert_eq!(Some(c.record.id), lifted.requeued);
    assert_eq!((c.record.op, c.record.payload.as_ref().unwrap()["FV_PainNRS"].clone()), (Op::Upsert, json!(8)));
    assert!(s.hold("k1").await.unwrap().is_none());
    let ev = s.audit_search(&AuditQuery { kind: Some("withdrawal.lifted".into()), ..Default::default() }).await.unwrap();
    assert_eq!((ev[0].actor.as_str(), ev[0].detail["reason"].as_str()), ("bertil", Some("patienten har ångrat sig")));
    // A withdrawal the journal caused (opt-out noted in the journal) does not hold.
    s.apply(ChangeSet { outbox: vec![upsert("k9", 1), retract("k9", "system", "opt-out")], ..Default::default() }).await.unwrap();
    assert!(s.hold("k9").await.unwrap().is_none());
    assert!(s.audit_verify().await.unwrap().ok);
});

both_backends!(a_connector_lease_is_not_granted_twice_to_the_same_owner, |ts: TestStore| async move {
    let s = &ts.store;
    assert!(s.acquire_connector_lease("conn", "replica-1", 60).await.unwrap());
    // A second run in the same replica (a later tick while the first run goes on) is refused.
    assert!(!s.acquire_connector_lease("conn", "replica-1", 60).await.unwrap(), "granted twice to the same owner");
    assert!(s.renew_connector_lease("conn", "replica-1", 60).await.unwrap());
    s.release_connector_lease("conn", "replica-1").await.unwrap();
    assert!(s.acquire_connector_lease("conn", "replica-1", 60).await.unwrap());
});

// The delivery engine's steady state: one transaction settles a sent batch and claims the next.
// The settled batch ends as `finish_many` would leave it (records, registrations, the in-flight
// attempt rows completed in place, audit), and the next batch is claimed with its own leases.
both_backends!(finish_and_claim_settles_one_batch_and_claims_the_next, |ts: TestStore| async move {
    let s = &ts.store;
    s.apply(ChangeSet { outbox: vec![upsert("f1", 1), upsert("f2", 2), upsert("f3", 3)], ..Default::default() }).await.unwrap();
    let first = s.claim("w1", &[], 2, 60).await.unwrap();
    assert_eq!(first.len(), 2);
    let events_before = s.audit_search(&AuditQuery { kind: Some("record.delivered".into()), ..Default::default() }).await.unwrap().len();
    let done = vec![
        (&first[0], delivered("E1")),
        (&first[1], Outcome::Rejected { operation: "POST".into(), http_status: Some(400), reason: "FV_PainNRS: outside 0-10".into() }),
    ];
    let (kept, next) = s.finish_and_claim("w1", done, &[], 2, 60).await.unwrap();
    assert_eq!(kept, vec![true, true]);
    // Only f3 was left to claim.
    assert_eq!(next.iter().map(|c| c.record.idem_key.as_str()).collect::<Vec<_>>(), vec!["f3"]);
    assert_eq!(next[0].record.payload.as_ref().unwrap()["FV_PainNRS"], json!(3));
    assert_eq!(s.record(next[0].record.id).await.unwrap().unwrap().state, RecordState::Sending);
    // The first batch is settled.
    assert_eq!(s.record(first[0].record.id).await.unwrap().unwrap().state, RecordState::Delivered);
    assert_eq!(s.registration(&first[0].record.idem_key).await.unwrap().unwrap().event_id.as_deref(), Some("E1"));
    let r = s.record(first[1].record.id).await.unwrap().unwrap();
    assert_eq!((r.state, r.reason.as_deref()), (RecordState::Rejected, Some("FV_PainNRS: outside 0-10")));
    // One attempt row per send, completed in place (no in-flight row left behind).
    for (c, outcome) in [(&first[0], "ok"), (&first[1], "rejected")] {
        let a = s.attempts(&c.record.idem_key).await.unwrap();
        assert_eq!(a.len(), 1, "{}", c.record.idem_key);
        assert_eq!((a[0].id, a[0].outcome.as_str()), (c.attempt_id, outcome));
        assert!(a[0].ended.is_some());
    }
    let after = s.audit_search(&AuditQuery { kind: Some("record.delivered".into()), ..Default::default() }).await.unwrap().len();
    assert_eq!(after, events_before + 1);
    assert!(s.audit_verify().await.unwrap().ok);
    // A lease lost meanwhile is not settled by the combined call either.
    s.apply(ChangeSet { outbox: vec![upsert("f4", 4)], ..Default::default() }).await.unwrap();
    let stolen = s.claim("gone", &[], 1, 0).await.unwrap().remove(0);
    assert_eq!(s.rescue_expired().await.unwrap(), 1);
    let (kept, next2) = s.finish_and_claim("gone", vec![(&stolen, delivered("E4")), (&next[0], delivered("E3"))], &[], 10, 60).await.unwrap();
    // `next[0]` belongs to w1, not to "gone": neither is settled; f4 is claimed again.
    assert_eq!(kept, vec![false, false]);
    assert_eq!(next2.iter().map(|c| c.record.idem_key.as_str()).collect::<Vec<_>>(), vec!["f4"]);
    assert_eq!(s.record(next[0].record.id).await.unwrap().unwrap().state, RecordState::Sending);
});

// Attempts are indexed by key only while open (migration 0009 SQLite, 0010 PostgreSQL): the next
// claim of a retried key still finds its transient attempt, settling closes it, and a key's
// history (read through its records) lists every attempt of every version. Full batches run
// the same statement texts twice here, kept prepared the second time.
both_backends!(attempts_open_by_key_and_history_by_version, |ts: TestStore| async move {
    let s = &ts.store;
    s.apply(ChangeSet { outbox: vec![upsert("h1", 1), upsert("h2", 2), upsert("h3", 3)], ..Default::default() }).await.unwrap();
    let first = s.claim("w", &[], 2, 60).await.unwrap();
    let (retried, sent) = (first[0].record.idem_key.clone(), first[1].record.idem_key.clone());
    let (kept, second) = s.finish_and_claim("w", vec![(&first[0], retry_now()), (&first[1], delivered("E-sent"))], &[], 2, 60).await.unwrap();
    assert_eq!(kept, vec![true, true]);
    // The claim came first in that transaction, while the retried key was still in flight.
    assert_eq!(second.iter().map(|c| (c.record.idem_key.as_str(), c.outcome_unknown_before)).collect::<Vec<_>>(), vec![("h3", false)]);
    let (kept, third) = s.finish_and_claim("w", vec![(&second[0], delivered("E-h3"))], &[], 1, 60).await.unwrap();
    assert_eq!(kept, vec![true]);
    assert_eq!(third.iter().map(|c| c.record.idem_key.as_str()).collect::<Vec<_>>(), vec![retried.as_str()], "the retried key is due again");
    assert!(third[0].outcome_unknown_before, "its transient attempt is still open and found by key");
    let (kept, none) = s.finish_and_claim("w", vec![(&third[0], delivered("E-retried"))], &[], 1, 60).await.unwrap();
    assert_eq!((kept, none.len()), (vec![true], 0));
    let outcomes = |a: Vec<registerbrygga::store::Attempt>| a.into_iter().map(|a| a.outcome).collect::<Vec<_>>();
    assert_eq!(outcomes(s.attempts(&retried).await.unwrap()), ["settled", "ok"]);
    assert_eq!(outcomes(s.attempts(&sent).await.unwrap()), ["ok"]);
    // A new version of the delivered key: its attempts join the key's history, in order.
    s.apply(ChangeSet { outbox: vec![upsert(&retried, 9)], ..Default::default() }).await.unwrap();
    let v2 = s.claim("w", &[], 2, 60).await.unwrap();
    assert_eq!((v2.len(), v2[0].record.version, v2[0].outcome_unknown_before), (1, 2, false));
    assert_eq!(s.finish_many("w", vec![(&v2[0], delivered("E-v2"))]).await.unwrap(), vec![true]);
    let history = s.attempts(&retried).await.unwrap();
    assert_eq!(outcomes(history.clone()), ["settled", "ok", "ok"]);
    assert!(history.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(history[2].record_id, v2[0].record.id);
    assert!(s.audit_verify().await.unwrap().ok);
});

// A backfill queues thousands of records in seconds; on PostgreSQL the store refreshes the
// statistics of `records` itself once 5,000 new versions arrived, so the claim is planned for
// the outbox as it is (not as autovacuum last saw it: empty). SQLite keeps no statistics.
both_backends!(a_large_queue_refreshes_the_outbox_statistics, |ts: TestStore| async move {
    let s = &ts.store;
    // What the planner believes `records` holds (pg_class.reltuples: -1 or 0 until analysed).
    let believed = || async {
        let mut tx = s.read().await.unwrap();
        let r = tx.row("SELECT reltuples::BIGINT FROM pg_class WHERE relname = 'records'", &[]).await.unwrap().unwrap();
        r.i64(0).unwrap()
    };
    if s.dialect() == Dialect::Postgres {
        assert!(believed().await <= 0);
    }
    for chunk in 0..6 {
        let changes = (0..1000).map(|i| upsert(&format!("q{chunk}-{i}"), 1)).collect();
        s.apply(ChangeSet { outbox: changes, ..Default::default() }).await.unwrap();
        if s.dialect() == Dialect::Postgres && chunk == 3 {
            assert!(believed().await <= 0, "not yet at 4,000");
        }
    }
    assert_eq!(s.queue_depth().await.unwrap(), 6000);
    if s.dialect() == Dialect::Postgres {
        // Refreshed once at 5,000 (and committed: statistics are transactional).
        assert_eq!(believed().await, 5000);
    }
});

// Reading a connector's records back goes page by page (PATIENT_PAGE patients): every patient
// comes once, in key order, with all of its records and none of another connector's.
both_backends!(for_each_patient_reads_every_patient_once_across_pages, |ts: TestStore| async move {
    let s = &ts.store;
    let mut cs = ChangeSet::default();
    for p in 0..257 {
        for d in 0..(1 + p % 3) {
            cs.documents.push(DocumentUpsert { connector: "c".into(), patient_key: format!("pk{p:04}"), record: contact(&format!("doc-{p}-{d}"), "191212121212", "SE2321000156-FT01"), content_hash: None });
        }
    }
    cs.documents.push(DocumentUpsert { connector: "other".into(), patient_key: "pk0000".into(), record: contact("doc-other", "191212121212", "SE2321000156-FT01"), content_hash: None });
    s.apply(cs).await.unwrap();
    let mut seen: Vec<(String, usize)> = vec![];
    s.for_each_patient("c", |pk, recs| {
        seen.push((pk.to_string(), recs.len()));
        Ok(())
    })
    .await
    .unwrap();
    let expected: Vec<(String, usize)> = (0..257).map(|p| (format!("pk{p:04}"), 1 + p % 3)).collect();
    assert_eq!(seen, expected);
});
