//! The whole chain on loopback: the sandbox journal (RIV-TA over mTLS) → the RIV-TA consumer →
//! the SAR episode engine → the outbox → the delivery engine → the Stratum emulator (mTLS), on
//! both store backends. The expected registrations come from the sandbox generator's own
//! bookkeeping (its `Truth`), never from the mapper.

mod common;

use common::e2e::start;
use registerbrygga::config::Backend;
use registerbrygga::store::{AuditQuery, RecordFilter, RecordState};

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
