//! The long-running daemon and the commands built on the same wiring (`run`, `run --once`,
//! `backfill`, `demo`): sources, mappers, register clients, the delivery engine, the scheduler
//! and the admin listener, with graceful shutdown on SIGTERM.

use crate::app::App;
use crate::config::{ConnectorKind, RegisterKind};
use crate::delivery::{DeliveryEngine, Lane};
use crate::pipeline::{run_connector, ConnectorRuntime, PatientMapper, RunKind};
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
    /// Warnings for the admin pages (e.g. unverified PVK code lists).
    pub warnings: Vec<crate::admin::Warning>,
    /// Per connector: code lists, rule sets, indicators (the admin status panel).
    pub status: Vec<crate::admin::status::ConnectorStatus>,
    pub clients: BTreeMap<String, Arc<StratumClient>>,
    pub engine: Arc<DeliveryEngine>,
}

/// Build the source named in a connector.
pub fn build_source(app: &App, name: &str) -> Result<Arc<dyn Source>> {
    let s = app.settings().sources.get(name).with_context(|| format!("no source named '{name}'"))?;
    crate::sources::from_settings(s).with_context(|| format!("source '{name}'"))
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
    let mut warnings = vec![];
    let mut status = vec![];
    for def in &app.loaded.connectors {
        if !def.enabled {
            continue;
        }
        let source = build_source(app, &def.source)?;
        let (mapper, after): (Option<Arc<dyn PatientMapper>>, Option<Arc<dyn crate::pipeline::AfterPull>>) = match def.kind {
            // Any Stratum register: the engine is the connector folder's data.
            ConnectorKind::StratumRegister => {
                let meta = metadata_for(app, clients.get(&def.register), def).await?;
                let (mapper, remarks) = crate::pipeline::register::register_mapper(def, &meta)?;
                status.push(crate::admin::status::ConnectorStatus::remarks_only(&def.name, &def.register, remarks));
                (Some(mapper), None)
            }
            ConnectorKind::Pvk => {
                let engine = crate::registers::pvk::PvkEngine::load(def).map_err(|ps| anyhow!("connector '{}': {}", def.name, ps.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")))?;
                // One short summary, not one banner per code list (details: `config check`).
                warnings.push(crate::admin::Warning { area: "pvk".into(), text: engine.summary() });
                status.push(crate::admin::status::ConnectorStatus::from_pvk(&engine, &def.register));
                let reg = settings.registers.get(&def.register).with_context(|| format!("connector '{}': no register '{}'", def.name, def.register))?;
                let metadata = if reg.kind == RegisterKind::Stratum {
                    let client = clients.get(&def.register);
                    let meta = match client {
                        Some(c) => c.load_metadata().await.ok(),
                        None => None,
                    };
                    match meta {
                        Some(m) => Some(m),
                        None => def
                            .options
                            .get("register_metadata")
                            .and_then(|v| v.as_str())
                            .and_then(|f| std::fs::read(def.dir.join(f)).ok())
                            .and_then(|b| RegisterMetadata::from_json(&b).ok())
                            .map(Arc::new),
                    }
                } else {
                    None
                };
                let export_dirs = def
                    .options
                    .get("exports")
                    .and_then(|v| v.as_array())
                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>())
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|name| settings.registers.get(name).and_then(|r| r.export_dir.clone()).map(|d| (name.to_string(), d)))
                    .collect();
                let months_back = def.options.get("months").and_then(|v| v.as_integer()).unwrap_or(13).clamp(1, 60) as u32;
                let after = PvkAfter { engine, def: def.clone(), metadata, bindings: reg.units.clone(), export_dirs, months_back };
                (None, Some(Arc::new(after) as Arc<dyn crate::pipeline::AfterPull>))
            }
        };
        connectors.push(ConnectorRuntime { def: def.clone(), source, mapper, after });
    }
    let engine = Arc::new(DeliveryEngine::new(app.store.clone(), lanes, settings.delivery.clone(), &app.instance_id));
    Ok(Runtime { connectors: Arc::new(connectors), clients, engine, warnings, status })
}

/// The process's stop and reload signals, taken over once when `run` starts and kept for the
/// whole process. A signal that arrives while no serving period listens (during start-up, or
/// between the periods of a reload) stays pending until the next one does, instead of being
/// lost or, before any handler exists, ending the process by its default action.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn take_over() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())?, hup: signal(SignalKind::hangup())? })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal: `true` for a stop (SIGTERM or Ctrl-C), `false` for a reload (SIGHUP).
    async fn next_is_stop(&mut self) -> bool {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => true,
                _ = self.int.recv() => true,
                _ = self.hup.recv() => false,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            true
        }
    }
}

/// Where `registerbrygga config reload` leaves its request for every replica to see.
pub const RELOAD_GENERATION: &str = "config.reload.generation";
pub const RELOAD_REQUEST: &str = "config.reload.request";

/// What ends one serving period.
enum Next {
    Stop,
    Reload { loaded: Box<crate::config::Loaded>, actor: String, reason: String },
}

async fn reload_generation(app: &App) -> i64 {
    app.store.kv_get(RELOAD_GENERATION).await.ok().flatten().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Wait for SIGTERM/Ctrl-C (stop) or a reload request (SIGHUP, or `config reload` seen in the
/// store as a generation above `seen`). A reload is applied only if the new configuration loads
/// without errors; a rejected one is audited and the daemon carries on with what it has.
async fn stop_or_reload(app: &App, opts: &crate::config::LoadOptions, signals: &mut Signals, seen: &mut i64) -> Next {
    loop {
        let (actor, reason) = tokio::select! {
            stop = signals.next_is_stop() => {
                if stop {
                    return Next::Stop;
                }
                ("signal".to_string(), "SIGHUP".to_string())
            }
            _ = tokio::time::sleep(Duration::from_secs(5)) => {
                let g = reload_generation(app).await;
                if g <= *seen {
                    continue;
                }
                *seen = g;
                let req: serde_json::Value = app.store.kv_get(RELOAD_REQUEST).await.ok().flatten().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
                (req["actor"].as_str().unwrap_or("unknown").to_string(), req["reason"].as_str().unwrap_or("").to_string())
            }
        };
        let (loaded, mut problems) = crate::config::load_collect(opts);
        if let Some(l) = &loaded {
            problems.extend(crate::checks::check_static(l));
        }
        let errors: Vec<String> = problems.iter().filter(|p| !p.warning).map(|p| p.to_string()).collect();
        match loaded {
            Some(l) if errors.is_empty() => return Next::Reload { loaded: Box::new(l), actor, reason },
            _ => {
                tracing::warn!(errors = errors.len(), "configuration reload refused; running on with the current configuration");
                let _ = app
                    .store
                    .audit(vec![crate::audit::NewAuditEvent::by(
                        &actor,
                        crate::audit::kind::CONFIG_RELOAD,
                        &crate::audit::correlation_id(),
                        &app.instance_id,
                        serde_json::json!({"applied": false, "reason": reason, "problems": errors}),
                    )])
                    .await;
            }
        }
    }
}

/// How `run` runs (the command line fills it from `run`'s flags).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Run every connector once now, deliver, and exit (instead of following the schedules).
    pub once: bool,
    /// Only this connector (with `once`).
    pub connector: Option<String>,
}

/// `registerbrygga run`: serve until stopped; a configuration reload (SIGHUP or
/// `registerbrygga config reload`) drains, re-reads everything and serves again.
pub async fn run(app: App, args: RunOptions, opts: crate::config::LoadOptions) -> Result<i32> {
    // Signals and the reload generation are taken before anything else, so a request made
    // while the daemon starts or reloads is answered by the next serving period.
    let mut signals = Signals::take_over()?;
    let mut seen = reload_generation(&app).await;
    let mut app = app;
    loop {
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
        match serve(app.clone(), rt, stop_or_reload(&app, &opts, &mut signals, &mut seen)).await? {
            Next::Stop => return Ok(0),
            Next::Reload { loaded, actor, reason } => {
                tracing::info!("configuration reloaded");
                app = App::open(*loaded).await?;
                app.store
                    .audit(vec![crate::audit::NewAuditEvent::by(
                        &actor,
                        crate::audit::kind::CONFIG_RELOAD,
                        &crate::audit::correlation_id(),
                        &app.instance_id,
                        serde_json::json!({"applied": true, "reason": reason, "files": app.loaded.files}),
                    )])
                    .await?;
            }
        }
    }
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

/// Serve until `stop` resolves: scheduler, delivery, metadata refresh, admin pages. Returns
/// what `stop` resolved to (for `run`: stop, or reload with the new configuration).
pub async fn serve<T>(app: App, rt: Runtime, stop: impl std::future::Future<Output = T>) -> Result<T> {
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
    // Housekeeping once a day: audit retention (with the chain kept verifiable) and, on
    // PostgreSQL, the audit partitions for the months ahead.
    let mut rx_house = rx.clone();
    let house_app = app.clone();
    let housekeeping = tokio::spawn(async move {
        loop {
            if let Err(e) = house_app.store.ensure_audit_partitions(chrono::Utc::now()).await {
                tracing::warn!(error = %e, "audit partitions");
            }
            match house_app.settings().audit.prune_cutoff(None) {
                Err(e) => tracing::warn!(error = %e, "audit retention not applied"),
                Ok(cutoff) => match house_app.store.audit_prune(cutoff.timestamp_micros(), "system").await {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "audit retention pruned old events"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "audit retention failed"),
                },
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {},
                _ = rx_house.changed() => return,
            }
        }
    });
    let head_export = spawn_head_export(&app, rx.clone());
    let admin = spawn_admin(&app, &rt, rx.clone()).await?;
    tracing::info!(instance = %app.instance_id, "registerbrygga is running");
    let why = stop.await;
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
    let _ = housekeeping.await;
    let _ = head_export.await;
    if let Some(a) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
    }
    app.store.close().await;
    Ok(why)
}

/// Export the audit head, signed with the audit key, every `audit.head_export_minutes` (and once
/// at shutdown): one log line, and one JSON line appended to `audit.head_export_file`. Kept
/// outside the database, the last export lets `audit verify --head` detect a truncated tail.
fn spawn_head_export(app: &App, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    let app = app.clone();
    tokio::spawn(async move {
        let minutes = app.settings().audit.head_export_minutes;
        if minutes == 0 {
            return;
        }
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(minutes * 60)) => false,
                _ = shutdown.changed() => true,
            };
            if let Err(e) = export_head(&app).await {
                tracing::warn!(error = %format!("{e:#}"), "audit head export failed");
            }
            if stopping {
                return;
            }
        }
    })
}

/// One export of the signed audit head (see [`spawn_head_export`]).
pub async fn export_head(app: &App) -> Result<Option<crate::store::SignedHead>> {
    let Some(h) = app.store.audit_head_signed().await? else { return Ok(None) };
    let line = serde_json::to_string(&h)?;
    tracing::info!(target: "registerbrygga::audit_head", seq = h.seq, hash = %h.hash, at_us = h.at_us, sig = %h.sig, "audit head");
    if let Some(path) = &app.settings().audit.head_export_file {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("audit.head_export_file {}", path.display()))?;
        writeln!(f, "{line}")?;
        f.sync_data()?;
    }
    Ok(Some(h))
}

/// The admin state with the daemon's providers: next runs, readiness of the registers' metadata,
/// warnings and the configuration's status (used by [`spawn_admin`] and by the page tests).
pub fn admin_state(app: &App, rt: &Runtime) -> crate::admin::AdminState {
    let connectors = rt.connectors.clone();
    let clients: Vec<Arc<StratumClient>> = rt.clients.values().cloned().collect();
    let warnings = rt.warnings.clone();
    let status = rt.status.clone();
    let metadata_clients = clients.clone();
    crate::admin::AdminState::new(app.clone())
        .with_unit_metadata_names(move || {
            metadata_clients.iter().filter_map(|c| c.metadata()).flat_map(|m| m.units.iter().filter_map(|u| Some((u.hsa_id.clone()?, u.unit_name.clone()))).collect::<Vec<_>>()).collect()
        })
        .with_next_runs(move || crate::scheduler::runner::next_runs(&connectors, chrono::Utc::now()))
        .with_readiness(move || {
            clients
                .iter()
                .map(|c| crate::admin::ReadinessCheck {
                    name: format!("register {} metadata", c.name()),
                    ok: c.metadata().is_some(),
                    detail: c.metadata().is_none().then(|| "not loaded yet".to_string()),
                })
                .collect()
        })
        .with_warnings(move || warnings.clone())
        .with_status(move || status.clone())
}

/// Start the admin listener (if enabled) with the daemon's providers: next runs, readiness of
/// the registers' metadata, warnings (unverified PVK code lists).
pub async fn spawn_admin(app: &App, rt: &Runtime, shutdown: watch::Receiver<bool>) -> Result<Option<tokio::task::JoinHandle<()>>> {
    if !app.settings().admin.enabled {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&app.settings().admin.listen).await.with_context(|| format!("admin.listen {}", app.settings().admin.listen))?;
    let state = admin_state(app, rt);
    let mut sd = shutdown;
    let stop = async move {
        while !*sd.borrow() {
            if sd.changed().await.is_err() {
                break;
            }
        }
    };
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = crate::admin::serve_with(state, listener, stop).await {
            tracing::warn!(error = %e, "admin listener stopped");
        }
    })))
}

/// What `backfill` reads and does (the command line fills it from `backfill`'s flags).
#[derive(Clone, Debug)]
pub struct BackfillOptions {
    /// First and last day, inclusive.
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
    /// Only this connector.
    pub connector: Option<String>,
    /// Validate and map without storing or sending; report what would be sent.
    pub dry_run: bool,
    /// Print the report as JSON.
    pub json: bool,
    /// Also deliver what the backfill queued before returning.
    pub deliver: bool,
}

/// `registerbrygga backfill`.
pub async fn backfill(app: App, args: BackfillOptions) -> Result<i32> {
    if args.from > args.to {
        bail!("--from must not be after --to");
    }
    let rt = build_runtime(&app).await?;
    let today = crate::pipeline::today_stockholm();
    let chosen: Vec<&ConnectorRuntime> = rt.connectors.iter().filter(|c| args.connector.as_deref().map(|n| n == c.def.name).unwrap_or(true)).collect();
    if chosen.is_empty() {
        bail!("no connector matches");
    }
    // With --deliver, sending starts at once, beside the reading (the engine's workers), and the
    // rest is drained at the end.
    let (stop_tx, stop_rx) = watch::channel(false);
    let background = (args.deliver && !args.dry_run).then(|| tokio::spawn(rt.engine.clone().run(stop_rx, Duration::from_secs(5))));
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
        delivered = crate::delivery::progress::drain_with_progress(&rt.engine).await?;
    }
    let _ = stop_tx.send(true);
    if let Some(b) = background {
        let _ = b.await;
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
            for w in &r.warnings {
                println!("  warning: {w}");
            }
        }
    }
    // 1: a run failed; 2: every run finished but one left something unread (a partial run,
    // e.g. dropped files not settled yet), so a script does not take it for a complete backfill.
    Ok(if reports.iter().any(|r| r.status == "failed") {
        1
    } else if reports.iter().any(|r| !r.dry_run && !r.complete || !r.warnings.is_empty()) {
        2
    } else {
        0
    })
}

/// What the PVK engine reads besides the journal: listing and drug lists, from files or from
/// the region's own database, with how many rows were refused (counted by row, never shown).
pub struct PvkInputs {
    pub listing: Option<crate::registers::pvk::Listing>,
    pub drugs: Option<crate::registers::pvk::DrugList>,
    pub listing_refused: usize,
    pub drugs_refused: usize,
}

/// Read the listing and drug list the PVK connector is configured with (file or SQL query).
pub async fn pvk_inputs(engine: &crate::registers::pvk::PvkEngine, today: chrono::NaiveDate, pseudo: &crate::crypto::Pseudonymizer) -> Result<PvkInputs> {
    use crate::registers::pvk::{DrugList, Listing};
    let listing = match engine.listing_query() {
        Some((url, sql, columns)) => {
            let rows = crate::sources::sql::text_rows(url, sql, columns, "PVK listing query").await?;
            Some(Listing::from_dated_rows(
                rows.into_iter().map(|mut r| {
                    let (from, to) = if columns >= 4 { (r[2].take(), r[3].take()) } else { (None, None) };
                    (r[0].take().unwrap_or_default(), r[1].take().unwrap_or_default(), from, to)
                }),
                today,
                pseudo,
            ))
        }
        None => engine.read_listing(today, pseudo)?,
    };
    let (drugs, bad_dates) = match engine.drug_list_query() {
        Some((url, sql, columns)) => {
            let rows = crate::sources::sql::text_rows(url, sql, columns, "PVK drug-list query").await?;
            let (mut good, mut bad) = (vec![], 0usize);
            for mut r in rows {
                let date = r[2].as_deref().and_then(|d| chrono::NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d").ok());
                let days = if columns >= 5 { r[3].as_deref().map(|d| d.trim().parse::<u32>().ok()) } else { None };
                match (date, days) {
                    (Some(_), Some(None)) | (None, _) => bad += 1,
                    (Some(date), days) => {
                        let unit = if columns >= 5 { r[4].take() } else { None };
                        good.push((r[0].take().unwrap_or_default(), r[1].take().unwrap_or_default(), date, days.flatten(), unit))
                    }
                }
            }
            (Some(DrugList::from_prescriptions(good, today)), bad)
        }
        None => (engine.read_drug_list(today)?, 0),
    };
    Ok(PvkInputs {
        listing_refused: listing.as_ref().map_or(0, |l| l.refused_lines.len()),
        drugs_refused: drugs.as_ref().map_or(0, |d| d.refused_lines.len()) + bad_dates,
        listing,
        drugs,
    })
}

/// The PVK engine as the pipeline's after-pull step: recompute every unit and month in the
/// window from the stored records, keep results and patient lists (encrypted), queue the
/// aggregates (a recomputed month updates its earlier aggregate), write export files.
struct PvkAfter {
    engine: crate::registers::pvk::PvkEngine,
    def: crate::config::ConnectorDef,
    metadata: Option<Arc<RegisterMetadata>>,
    bindings: Vec<crate::config::UnitBinding>,
    export_dirs: Vec<(String, std::path::PathBuf)>,
    months_back: u32,
}

fn months_window(today: chrono::NaiveDate, back: u32) -> Vec<(i32, u32)> {
    use chrono::Datelike;
    (0..back as i32).rev().map(|i| crate::store::add_months(today.year(), today.month(), -i)).collect()
}

#[async_trait::async_trait]
impl crate::pipeline::AfterPull for PvkAfter {
    async fn after_pull(&self, app: &App, run: &crate::pipeline::RunInfo, dry_run: bool) -> Result<serde_json::Value> {
        use crate::outbox::{reconcile, Existing};
        let today = run.today;
        let months = months_window(today, self.months_back);
        let inputs = pvk_inputs(&self.engine, today, &app.pseudo).await?;
        let (listing, drugs) = (inputs.listing, inputs.drugs);
        let units: Vec<crate::model::HsaId> = self.def.units.iter().filter_map(|u| crate::model::HsaId::parse(u).ok()).collect();
        // Patients stream from the store; their list entries go to an encrypted temporary file
        // and each list is rendered only as the store writes it, so memory does not grow with
        // the region.
        let (out, lists) = {
            let spill = FileSpill::new().context("PVK patient lists: temporary file")?;
            let mut c = self.engine.begin_spilled(listing.as_ref(), drugs.as_ref(), &units, &months, today, Box::new(spill));
            app.store
                .for_each_patient(&self.def.name, |pk, recs| {
                    c.add_records(pk, &recs);
                    Ok(())
                })
                .await?;
            c.finish_lists().context("PVK patient lists: temporary file")?
        };
        // The lists are made: the listing and drug list (one entry per inhabitant and per
        // prescription, so they grow with the region) are not needed for the write below,
        // which is where the step's memory peaks.
        drop(listing);
        drop(drugs);
        let mut cs = crate::store::ChangeSet::default();
        let intents = match &self.metadata {
            Some(m) => crate::registers::pvk::aggregate_intents(&out.results, m, &self.bindings, &self.def.register, today),
            None => vec![],
        };
        let n_intents = intents.len();
        // Existing aggregates inside the recomputed months only; older months stay as they are.
        let in_window = |key: &str| {
            let p: Vec<&str> = key.split('|').collect();
            p.len() == 5 && months.iter().any(|(y, m)| p[2] == y.to_string() && p[3] == m.to_string())
        };
        let existing = Existing {
            intents: app.store.intents_of_connector(&self.def.name).await?.into_iter().filter(|(k, _, _)| in_window(k)).map(|(k, op, st)| (k, (op, st))).collect(),
            worklist: Default::default(),
        };
        reconcile(&mut cs, &self.def.name, &self.def.name, None, intents, vec![], &existing, false, &run.correlation_id);
        let computable = out.results.iter().filter(|r| r.computable).count();
        let cells = out.results.len();
        cs.audit.push(crate::audit::NewAuditEvent::system(
            crate::audit::kind::PVK_COMPUTED,
            &run.correlation_id,
            &self.def.name,
            serde_json::json!({"cells": out.results.len(), "computable": computable, "aggregates": n_intents, "months": months.len(), "listing_rows_refused": inputs.listing_refused, "drug_rows_refused": inputs.drugs_refused}),
        ));
        let mut files = vec![];
        if !dry_run {
            for (name, dir) in &self.export_dirs {
                let written = crate::sinks::export::write_exports(
                    &out.results,
                    dir,
                    &crate::sinks::export::RunInfo { connector: self.def.name.clone(), run_id: run.run_id.to_string(), generated_at: chrono::Utc::now() },
                    &self.engine.labels(),
                    &crate::units::UnitNames::from_loaded(&app.loaded),
                )?;
                cs.audit.push(crate::audit::NewAuditEvent::system(
                    crate::audit::kind::EXPORT_WRITTEN,
                    &run.correlation_id,
                    &self.def.name,
                    serde_json::json!({"register": name, "files": written.iter().map(|p| p.file_name().map(|f| f.to_string_lossy().to_string())).collect::<Vec<_>>()}),
                ));
                files.extend(written);
            }
        }
        cs.pvk_results = out.results;
        for r in &mut cs.pvk_results {
            r.connector = self.def.name.clone();
        }
        cs.pvk_quality = out.quality;
        let mut render = |r: &crate::store::PvkResultRow| lists.render(r).context("PVK patient lists: temporary file");
        let applied = if dry_run {
            app.store.preview_with_lists(cs, Some(&mut render)).await?
        } else {
            app.store.apply_with_lists(cs, Some(&mut render)).await?
        };
        Ok(serde_json::json!({
            "cells": cells,
            "computable": computable,
            "listing_rows_refused": inputs.listing_refused,
            "drug_rows_refused": inputs.drugs_refused,
            "aggregates": n_intents,
            "aggregates_created": applied.outbox_created,
            "aggregates_updated": applied.outbox_updated,
            "aggregates_retracted": applied.outbox_retracted,
            "export_files": files.len(),
        }))
    }
}

/// The PVK after-pull step's spill: list blocks in an unlinked temporary file (`TMPDIR`), each
/// encrypted with a key that lives only in this process and bound to its place, so patient
/// identities never rest on disk in the clear, and nothing is left behind after a crash.
struct FileSpill {
    file: std::fs::File,
    cipher: crate::crypto::Cipher,
    /// (offset, length) of each block's ciphertext.
    blocks: Vec<(u64, u32)>,
    len: u64,
}

impl FileSpill {
    fn new() -> Result<FileSpill> {
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Ok(FileSpill { file: tempfile::tempfile()?, cipher: crate::crypto::Cipher::new(&[key])?, blocks: vec![], len: 0 })
    }

    fn aad(handle: u64) -> crate::crypto::Aad {
        crate::crypto::Aad::new("pvk_list_spill", &[&handle.to_string()])
    }
}

impl crate::registers::pvk::ListSpill for FileSpill {
    fn put(&mut self, block: &[u8]) -> std::io::Result<u64> {
        use std::io::Write;
        let handle = self.blocks.len() as u64;
        let ct = self.cipher.encrypt(&Self::aad(handle), block);
        self.file.write_all(&ct)?;
        self.blocks.push((self.len, ct.len() as u32));
        self.len += ct.len() as u64;
        Ok(handle)
    }

    fn get(&self, handle: u64) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let &(at, n) = self.blocks.get(handle as usize).ok_or_else(|| std::io::Error::other("no such spill block"))?;
        let mut ct = vec![0u8; n as usize];
        self.file.read_exact_at(&mut ct, at)?;
        self.cipher.decrypt(&Self::aad(handle), &ct).map_err(|e| std::io::Error::other(format!("{e:#}")))
    }
}
