//! The whole chain on loopback, shared by the end-to-end tests: a sandbox region (journal +
//! Stratum emulator) and the real daemon wiring (App + Runtime) pointed at it, on either store
//! backend.

use registerbrygga::app::App;
use registerbrygga::config::{Backend, Loaded};
use registerbrygga::daemon::build_runtime;
use registerbrygga::pipeline::{run_connector, RunKind};
use registerbrygga::sandbox::env::{SandboxEnv, SandboxSpec};
use registerbrygga::sandbox::journal::SarForm;
use std::collections::BTreeSet;
use std::time::Duration;

pub struct E2e {
    pub env: SandboxEnv,
    pub app: App,
    pub rt: registerbrygga::daemon::Runtime,
}

/// A sandbox of `patients` (seed 11, today) and the daemon against it.
pub async fn start(backend: Backend, patients: usize, name: &str) -> E2e {
    let today = registerbrygga::pipeline::today_stockholm();
    start_with(backend, SandboxSpec::new(11, patients, today), name).await
}

/// Like [`start`], with the sandbox spec given (e.g. `bad_item_share`).
pub async fn start_with(backend: Backend, spec: SandboxSpec, name: &str) -> E2e {
    let dir = super::test_dir();
    let env = SandboxEnv::start(dir.path(), spec).await.unwrap();
    let mut overrides = vec![("admin.enabled".to_string(), "false".to_string()), ("delivery.poll_interval_ms".into(), "20".into())];
    if backend == Backend::Postgres {
        let url = super::fresh_pg_url(name).await;
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
        self.run_on(connector, self.env.today).await
    }
    /// Run a connector as if the computation date were `today`.
    pub async fn run_on(&self, connector: &str, today: chrono::NaiveDate) -> registerbrygga::pipeline::RunReport {
        let c = registerbrygga::pipeline::find(&self.rt.connectors, connector).unwrap();
        run_connector(&self.app, c, RunKind::Manual, false, today, None).await.unwrap()
    }
    /// Rebuild the runtime from a changed configuration (same store, same sandbox), as a
    /// restart with edited connector files would.
    pub async fn reconfigure(&mut self, edit: impl FnOnce(&mut Loaded)) {
        let mut loaded = (*self.app.loaded).clone();
        edit(&mut loaded);
        self.app = App { loaded: std::sync::Arc::new(loaded), ..self.app.clone() };
        self.rt = build_runtime(&self.app).await.unwrap();
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
    /// The SAR registrations the generator's truth says the register should hold.
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
