//! The long-running daemon and the commands built on the same wiring (`run`, `run --once`,
//! `backfill`, `demo`): sources, mappers, register clients, the delivery engine, the scheduler
//! and the admin listener, with graceful shutdown on SIGTERM.

use crate::app::App;
use crate::cli::{BackfillArgs, RunArgs};
use crate::config::{ConnectorKind, RegisterKind, SourceKind};
use crate::delivery::{DeliveryEngine, Lane};
use crate::pipeline::{run_connector, ConnectorRuntime, MapInput, MapOutput, PatientMapper, RunKind};
use crate::registers::sar::{PatientInput, SarMapper};
use crate::sinks::stratum::metadata::RegisterMetadata;
use crate::sinks::stratum::StratumClient;
use crate::sources::Source;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Everything a running process needs besides the App.
pub struct Runtime {
    pub connectors: Arc<Vec<ConnectorRuntime>>,
    pub clients: BTreeMap<String, Arc<StratumClient>>,
    pub engine: Arc<DeliveryEngine>,
}

/// The SAR episode engine as the pipeline's per-patient mapper.
struct SarAdapter(SarMapper);

impl PatientMapper for SarAdapter {
    fn map_patient(&self, i: &MapInput<'_>) -> MapOutput {
        let out = self.0.map_patient(&PatientInput {
            connector: i.connector,
            register: i.register,
            patient: i.patient,
            patient_key: i.patient_key,
            records: i.records,
            today: i.today,
        });
        MapOutput {
            intents: out.intents,
            incomplete: out.incomplete,
            episodes: out.episodes,
            opted_out: out.opted_out,
            notes: out.notes.iter().map(|n| serde_json::to_string(n).unwrap_or_default()).collect(),
        }
    }
}

/// Build the source named in a connector.
pub fn build_source(app: &App, name: &str) -> Result<Arc<dyn Source>> {
    let s = app.settings().sources.get(name).with_context(|| format!("no source named '{name}'"))?;
    match s.kind {
        SourceKind::Riv | SourceKind::Files | SourceKind::Fhir => {
            Err(anyhow!("source '{name}': the {:?} source is not wired yet", s.kind))
        }
    }
}

/// Register metadata for a connector: from the register (online) when its client has it,
/// otherwise the connector's offline `metadata_file`.
async fn metadata_for(app: &App, client: Option<&Arc<StratumClient>>, def: &crate::config::ConnectorDef) -> Result<Arc<RegisterMetadata>> {
    if let Some(c) = client {
        match c.load_metadata().await {
            Ok(m) => return Ok(m),
            Err(e) => tracing::warn!(register = %def.register, error = %e, "register metadata not reachable; using the connector's offline copy"),
        }
    }
    let file = def.options.get("metadata_file").and_then(|v| v.as_str()).context("register unreachable and no offline metadata_file in the connector's options")?;
    let path = def.dir.join(file);
    let _ = app;
    Ok(Arc::new(RegisterMetadata::from_json(&std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?)?))
}

/// Wire sources, mappers, register clients and the delivery engine from the configuration.
pub async fn build_runtime(app: &App) -> Result<Runtime> {
    let settings = app.settings();
    let mut clients = BTreeMap::new();
    let mut lanes = vec![];
    for (name, r) in &settings.registers {
        if r.kind != RegisterKind::Stratum {
            continue;
        }
        let c = Arc::new(StratumClient::new(name, r, Some(app.store.clone())).with_context(|| format!("register '{name}'"))?);
        lanes.push(Lane::new(name, c.clone(), r.clone()));
        clients.insert(name.clone(), c);
    }
    let mut connectors = vec![];
    for def in &app.loaded.connectors {
        if !def.enabled {
            continue;
        }
        let source = build_source(app, &def.source)?;
        let (mapper, after): (Option<Arc<dyn PatientMapper>>, Option<Arc<dyn crate::pipeline::AfterPull>>) = match def.kind {
            ConnectorKind::Sar => {
                let meta = metadata_for(app, clients.get(&def.register), def).await?;
                let m = SarMapper::load(def, &meta).map_err(|ps| anyhow!("connector '{}': {}", def.name, ps.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")))?;
                (Some(Arc::new(SarAdapter(m))), None)
            }
            ConnectorKind::Pvk => (None, None),
        };
        connectors.push(ConnectorRuntime { def: def.clone(), source, mapper, after });
    }
    let engine = Arc::new(DeliveryEngine::new(app.store.clone(), lanes, settings.delivery.clone(), &app.instance_id));
    Ok(Runtime { connectors: Arc::new(connectors), clients, engine })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `registerbrygga run`.
pub async fn run(app: App, args: RunArgs) -> Result<i32> {
    let rt = build_runtime(&app).await?;
    app.store
        .audit(vec![crate::audit::NewAuditEvent::system(
            crate::audit::kind::CONFIG_LOADED,
            &crate::audit::correlation_id(),
            &app.instance_id,
            serde_json::json!({"connectors": rt.connectors.iter().map(|c| c.def.name.clone()).collect::<Vec<_>>(), "files": app.loaded.files}),
        )])
        .await?;
    if args.once {
        return run_once(&app, &rt, args.connector.as_deref()).await;
    }
    serve(app, rt, shutdown_signal()).await?;
    Ok(0)
}

/// Run every (or one) connector once, deliver what is due, exit.
pub async fn run_once(app: &App, rt: &Runtime, only: Option<&str>) -> Result<i32> {
    let today = crate::pipeline::today_stockholm();
    let mut failed = false;
    for c in rt.connectors.iter().filter(|c| only.map(|o| o == c.def.name).unwrap_or(true)) {
        let r = run_connector(app, c, RunKind::Manual, false, today, None).await?;
        println!("{}: {} ({} patients, {} created, {} updated, {} retracted, {} quarantined)", c.def.name, r.status, r.patients, r.records_created, r.records_updated, r.records_retracted, r.quarantined);
        failed |= r.status == "failed";
    }
    let n = rt.engine.drain(Duration::from_secs(60)).await?;
    println!("delivery: {n} attempt(s)");
    Ok(if failed { 1 } else { 0 })
}

/// Serve until `stop` resolves: scheduler, delivery, metadata refresh, admin pages.
pub async fn serve(app: App, rt: Runtime, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    let (tx, rx) = watch::channel(false);
    let grace = Duration::from_secs(app.settings().service.shutdown_grace_seconds);
    let engine = rt.engine.clone();
    let delivery = if app.settings().delivery.enabled { Some(tokio::spawn(engine.clone().run(rx.clone(), grace))) } else { None };
    let wake = engine.wake.clone();
    let scheduler = if app.settings().scheduler.enabled {
        let on_done: Arc<dyn Fn() + Send + Sync> = Arc::new(move || wake.notify_waiters());
        Some(tokio::spawn(crate::scheduler::runner::run(app.clone(), rt.connectors.clone(), rx.clone(), on_done)))
    } else {
        None
    };
    // Register metadata: at start (lazily, by the clients) and daily.
    let clients: Vec<Arc<StratumClient>> = rt.clients.values().cloned().collect();
    let refresh_hours = app.settings().registers.values().map(|r| r.metadata_refresh_hours).min().unwrap_or(24).max(1);
    let mut rx_refresh = rx.clone();
    let refresher = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(refresh_hours * 3600)) => {},
                _ = rx_refresh.changed() => return,
            }
            for c in &clients {
                if let Err(e) = c.refresh().await {
                    tracing::warn!(register = c.name(), error = %e, "metadata refresh failed");
                }
            }
        }
    });
    let admin = crate::admin::spawn(&app, &rt, rx.clone()).await?;
    tracing::info!(instance = %app.instance_id, "registerbrygga is running");
    stop.await;
    tracing::info!("shutting down: finishing in-flight work");
    let _ = tx.send(true);
    if let Some(s) = scheduler {
        let _ = tokio::time::timeout(grace, s).await;
    }
    if let Some(d) = delivery {
        match tokio::time::timeout(grace + Duration::from_secs(5), d).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "delivery shutdown"),
            Err(_) => tracing::warn!("delivery did not stop in time"),
            _ => {}
        }
    }
    refresher.abort();
    if let Some(a) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
    }
    app.store.close().await;
    Ok(())
}

/// `registerbrygga backfill`.
pub async fn backfill(app: App, args: BackfillArgs) -> Result<i32> {
    if args.from > args.to {
        bail!("--from must not be after --to");
    }
    let rt = build_runtime(&app).await?;
    let today = crate::pipeline::today_stockholm();
    let chosen: Vec<&ConnectorRuntime> = rt.connectors.iter().filter(|c| args.connector.as_deref().map(|n| n == c.def.name).unwrap_or(true)).collect();
    if chosen.is_empty() {
        bail!("no connector matches");
    }
    let mut reports = vec![];
    for c in chosen {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {prefix}: {pos} patients ({per_sec}, {elapsed}) {msg}").expect("template"));
        bar.set_prefix(c.def.name.clone());
        bar.enable_steady_tick(Duration::from_millis(200));
        let b2 = bar.clone();
        let progress: crate::pipeline::Progress = Arc::new(move |n| b2.set_position(n));
        let r = run_connector(&app, c, RunKind::Backfill { from: args.from, to: args.to }, args.dry_run, today, Some(progress)).await?;
        bar.finish_with_message(r.status.clone());
        reports.push(r);
    }
    let mut delivered = 0;
    if args.deliver && !args.dry_run {
        delivered = crate::demo::deliver_with_progress(&rt.engine, &app.store).await?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"runs": reports, "delivered": delivered}))?);
    } else {
        for r in &reports {
            let verb = if r.dry_run { "would" } else { "did" };
            println!(
                "{}: {} — {} patients; {verb} create {}, update {}, retract {}; {} quarantined; {} worklist items",
                r.connector, r.status, r.patients, r.records_created, r.records_updated, r.records_retracted, r.quarantined, r.worklist_items
            );
        }
    }
    Ok(if reports.iter().any(|r| r.status == "failed") { 1 } else { 0 })
}
