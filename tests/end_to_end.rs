//! The whole chain on loopback: the sandbox journal (RIV-TA over mTLS) → the RIV-TA consumer →
//! the SAR episode engine → the outbox → the delivery engine → the Stratum emulator (mTLS), on
//! both store backends. The expected registrations come from the sandbox generator's own
//! bookkeeping (its `Truth`), never from the mapper.

mod common;

use registerbrygga::app::App;
use registerbrygga::config::Backend;
use registerbrygga::daemon::build_runtime;
use registerbrygga::pipeline::{run_connector, RunKind};
use registerbrygga::sandbox::env::{SandboxEnv, SandboxSpec};
use registerbrygga::sandbox::journal::SarForm;
use registerbrygga::store::{AuditQuery, RecordFilter, RecordState};
use std::collections::BTreeSet;
use std::time::Duration;

pub struct E2e {
    pub env: SandboxEnv,
    pub app: App,
    pub rt: registerbrygga::daemon::Runtime,
}

pub async fn start(backend: Backend, patients: usize, name: &str) -> E2e {
    let dir = common::test_dir();
    let today = registerbrygga::pipeline::today_stockholm();
    let env = SandboxEnv::start(dir.path(), SandboxSpec::new(11, patients, today)).await.unwrap();
    let mut overrides = vec![("admin.enabled".to_string(), "false".to_string()), ("delivery.poll_interval_ms".into(), "20".into())];
    if backend == Backend::Postgres {
        let url = common::fresh_pg_url(name).await;
        let var = format!("RB_E2E_URL_{}", uuid::Uuid::new_v4().simple());
        std::env::set_var(&var, &url);
        overrides.push(("store.backend".into(), "postgres".into()));
        overrides.push(("store.postgres_url.env".into(), var));
    }
    let loaded = env.load_config(overrides).unwrap();
    let app = App::open(loaded).await.unwrap();
    let rt = build_runtime(&app).await.unwrap();
    E2e { env, app, rt }
}

impl E2e {
    pub async fn run(&self, connector: &str) -> registerbrygga::pipeline::RunReport {
        let c = registerbrygga::pipeline::find(&self.rt.connectors, connector).unwrap();
        run_connector(&self.app, c, RunKind::Manual, false, self.env.today, None).await.unwrap()
    }
    pub async fn deliver(&self) {
        for _ in 0..200 {
            self.rt.engine.drain(Duration::from_secs(2)).await.unwrap();
            if self.app.store.queue_depth().await.unwrap() == 0 {
                return;
            }
        }
        panic!("delivery did not finish");
    }
    /// (subject key, unit code, form, event date) of every SAR registration the emulator holds.
    pub fn held(&self) -> BTreeSet<(String, String, String, String)> {
        let mut out = BTreeSet::new();
        for f in ["FVPat", "FVPT", "M3Pat", "M3PT", "Y1Pat"] {
            for r in self.env.emulator.registrations(104, f) {
                out.insert((r.subject_key.clone().unwrap_or_default(), r.unit_code.clone(), f.to_string(), r.event_date.clone().unwrap_or_default()));
            }
        }
        out
    }
    pub fn expected(&self) -> BTreeSet<(String, String, String, String)> {
        let unit_code = |hsa: &str| format!("17{}", &hsa[hsa.len() - 2..]);
        self.env
            .population
            .truth()
            .sar_expected()
            .into_iter()
            .map(|e| (e.subject_key.clone(), unit_code(&e.unit), form_name(e.form).to_string(), e.event_date.to_string()))
            .collect()
    }
}

pub fn form_name(f: SarForm) -> &'static str {
    match f {
        SarForm::FVPat => "FVPat",
        SarForm::FVPT => "FVPT",
        SarForm::M3Pat => "M3Pat",
        SarForm::M3PT => "M3PT",
        SarForm::Y1Pat => "Y1Pat",
    }
}

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
