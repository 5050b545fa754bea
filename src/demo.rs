//! `registerbrygga demo`: the sandbox journal and registers on loopback, the real daemon on
//! SQLite against them (shipped `config/local.toml` and connectors), a backfill with progress
//! bars, a summary, and the admin pages left running with a printed demo login.

use crate::admin::store::{put_user, Role};
use crate::app::App;
use crate::daemon::build_runtime;
use crate::pipeline::{run_connector, RunKind};
use crate::sandbox::env::{SandboxEnv, SandboxSpec};
use crate::store::{RecordFilter, RecordState};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// What `demo` runs (the command line fills it from `demo`'s flags).
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Size of the synthetic population.
    pub patients: u32,
    pub seed: u64,
    /// Print the summary and return instead of leaving the admin pages running.
    pub no_serve: bool,
    /// Admin listen address.
    pub listen: String,
    /// Working folder for the demo database and certificates (default: var/demo).
    pub dir: Option<PathBuf>,
}

/// What `sandbox` serves (the command line fills it from `sandbox`'s flags).
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    pub patients: u32,
    pub seed: u64,
    /// Folder for the generated certificates and keys.
    pub dir: PathBuf,
    /// The peers' ports (the command's defaults are config/local.toml's 7443 and 7444); 0: any free port.
    pub journal_port: u16,
    pub stratum_port: u16,
}

pub async fn run(a: DemoOptions) -> Result<i32> {
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from("var/demo"));
    // Each demo starts from an empty database (certificates and keys are kept).
    for f in ["registerbrygga.db", "registerbrygga.db-wal", "registerbrygga.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let _ = std::fs::remove_dir_all(dir.join("export"));
    let today = crate::pipeline::today_stockholm();
    eprintln!("registerbrygga demo: starting the sandbox journal and registers ({} patients, seed {})", a.patients, a.seed);
    let mut spec = SandboxSpec::new(a.seed, a.patients as usize, today);
    // A few deliberately bad journal items, so quarantine has something to show.
    spec.bad_item_share = 0.01;
    let env = SandboxEnv::start(&dir, spec).await?;
    // PVK indicators the generator does not cover (långvarig smärta, demens, Ink02).
    crate::sandbox::pvk::apply_scenario(&env.population)?;
    let overrides = vec![
        ("admin.listen".to_string(), a.listen.clone()),
        // Plain HTTP on loopback for the demo: a Secure cookie would not be sent back.
        ("admin.cookie_secure".into(), "false".into()),
        ("telemetry.level".into(), "warn".into()),
        ("delivery.poll_interval_ms".into(), "100".into()),
    ];
    let loaded = env.load_config(overrides)?;
    crate::telemetry::init(&loaded.settings.telemetry);
    let app = App::open(loaded).await?;
    let rt = build_runtime(&app).await?;

    let history = chrono::Duration::days(960);
    let mut reports = vec![];
    for c in rt.connectors.iter() {
        let bar = indicatif::ProgressBar::new(env.population.len() as u64);
        bar.set_style(indicatif::ProgressStyle::with_template("{prefix:>22} {bar:40} {pos}/{len} patients ({per_sec}, eta {eta})").expect("template"));
        bar.set_prefix(c.def.name.clone());
        let b2 = bar.clone();
        let progress: crate::pipeline::Progress = Arc::new(move |n| b2.set_position(n));
        let r = run_connector(&app, c, RunKind::Backfill { from: today - history, to: today }, false, today, Some(progress)).await?;
        bar.finish();
        reports.push(r);
    }
    crate::delivery::progress::drain_with_progress(&rt.engine).await?;

    let password = demo_password();
    let hash = crate::admin::auth::hash_password(password.clone()).await?;
    put_user(&app.store, "demo", Some(&hash), Role::Admin, true, false).await?;
    // A clinic's user: limited to one unit, it lands on that clinic's page.
    put_user(&app.store, "mottagning", Some(&hash), Role::Operator, true, false).await?;
    crate::admin::store::set_user_units(&app.store, "mottagning", &[crate::sandbox::vocabulary::REHAB_UNITS[0].to_string()]).await?;

    print_summary(&app, &env, &reports).await?;
    println!();
    if a.no_serve {
        env.shutdown().await;
        app.store.close().await;
        return Ok(0);
    }
    println!("Admin pages:  http://{}/", a.listen);
    println!("Demo login:   demo / {password}   (role admin, with the patient-data right)");
    println!("              mottagning / {password}   (operatör limited to {}: its clinic's page)", crate::units::UnitNames::from_loaded(&app.loaded).label(crate::sandbox::vocabulary::REHAB_UNITS[0]));
    println!("The daemon keeps running (schedules, delivery). Stop with Ctrl-C.");
    crate::daemon::serve(app, rt, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    env.shutdown().await;
    Ok(0)
}

fn demo_password() -> String {
    use rand::Rng;
    let alphabet: Vec<char> = "abcdefghjkmnpqrstuvwxyz23456789".chars().collect();
    let mut r = rand::thread_rng();
    (0..12).map(|_| alphabet[r.gen_range(0..alphabet.len())]).collect()
}

async fn print_summary(app: &App, env: &SandboxEnv, reports: &[crate::pipeline::RunReport]) -> Result<()> {
    println!();
    println!("Summary");
    println!("=======");
    for r in reports {
        let docs = app.store.document_count(&r.connector).await?;
        let queued = r.records_created + r.after.get("aggregates_created").and_then(|v| v.as_u64()).unwrap_or(0);
        println!(
            "{:<22} {} — {} patients read, {} journal records stored, {} quarantined, {} register records queued",
            r.connector, r.status, r.patients, docs, r.quarantined, queued
        );
    }
    println!();
    println!("Registrations in Svenska Artrosregistret (emulator), per form:");
    for f in ["FVPat", "FVPT", "M3Pat", "M3PT", "Y1Pat"] {
        println!("  {:<6} {:>6}", f, env.emulator.registrations(104, f).len());
    }
    println!();
    // The register's own indicators for the demo population (the admin page
    // "Artrosregistrets indikatorer" shows the same, with filters).
    let units = crate::units::UnitNames::from_loaded(&app.loaded);
    println!("Artrosregistrets indikatorer (from what was sent), per unit and year of first visit:");
    for c in crate::admin::api::sar_indicators_of(app, &crate::admin::store::UnitScope::region(), &Default::default()).await? {
        for r in &c.rows {
            let parts: Vec<String> = r
                .indicators
                .iter()
                .map(|i| match (i.value, i.id) {
                    (Some(v), "age") => format!("{} {v:.1} år", i.id),
                    (Some(v), _) => format!("{} {v:.0} % ({}/{})", i.id, i.numerator, i.denominator),
                    (None, "eqindex") => format!("{} index saknas", i.id),
                    (None, _) => format!("{} –", i.id),
                })
                .collect();
            println!("  {} {} ({} förlopp): {}", units.label(&r.unit), r.year, r.courses, parts.join(", "));
        }
    }
    println!();
    println!("PVK aggregates in the indicator register (emulator), per indicator:");
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for r in env.emulator.registrations(218, "Indikatorvarde") {
        let ind = r.columns.get("Q_Indicator").and_then(|v| v.as_str()).unwrap_or("?").to_string();
        *per.entry(ind).or_default() += 1;
    }
    // Every configured indicator by name: aggregates sent, or why none (regional, not computable).
    let mut regional = vec![];
    for c in app.loaded.connectors.iter().filter(|c| c.kind == crate::config::ConnectorKind::Pvk) {
        let Ok(engine) = crate::registers::pvk::PvkEngine::load(c) else { continue };
        println!("  {}", engine.summary());
        for (_, ind, why) in engine.computability() {
            let line = match (per.get(&ind.register_code), why) {
                (_, Some(w)) => format!("{} — {} {w}", ind.display_name(), crate::registers::pvk::NOT_COMPUTABLE),
                _ if ind.regional => format!("{} — regionalt mått, skickas inte (se export och adminsidan)", ind.display_name()),
                (Some(n), None) => format!("{} — {n} aggregat", ind.display_name()),
                (None, None) => format!("{} — 0 aggregat (små tal undertrycks)", ind.display_name()),
            };
            if ind.regional {
                regional.push(line);
            } else {
                println!("  {line}");
            }
        }
    }
    if !regional.is_empty() {
        println!("Regional measures (never sent to PVK):");
        for l in regional {
            println!("  {l}");
        }
    }
    let exports = std::fs::read_dir(env.dir.join("export/pvk")).map(|d| d.count()).unwrap_or(0);
    println!("  export files written: {exports} (in {})", env.dir.join("export/pvk").display());
    println!();
    let worklist = app.store.worklist(None, None).await?;
    // Per unit and form: how many registrations wait for answers, and the answer most often missing.
    let mut cells: BTreeMap<(String, String), (usize, BTreeMap<String, usize>)> = BTreeMap::new();
    for w in &worklist {
        let cell = cells.entry((units.label(&w.unit), w.form.clone())).or_default();
        cell.0 += 1;
        for m in &w.missing {
            *cell.1.entry(m.clone()).or_default() += 1;
        }
    }
    println!("Worklist “att komplettera”: {} item(s)", worklist.len());
    if !cells.is_empty() {
        let mut table = crate::table::Table::new(&["unit", "form", ">items", "most often missing"]);
        for ((unit, form), (n, missing)) in &cells {
            let top = missing.iter().max_by_key(|(name, k)| (**k, std::cmp::Reverse((*name).clone()))).map(|(m, k)| format!("{m} ({k})")).unwrap_or_default();
            table.row([unit.clone(), form.clone(), n.to_string(), top]);
        }
        println!("{}", table.render(2));
    }
    let rejected = app.store.records(&RecordFilter { state: Some(RecordState::Rejected), limit: Some(100_000), ..Default::default() }).await?.len();
    let dead = app.store.records(&RecordFilter { state: Some(RecordState::Dead), limit: Some(100_000), ..Default::default() }).await?.len();
    let waiting = app.store.queue_depth().await?;
    let quarantine = app.store.quarantine(None, true, 100_000).await?.len();
    println!("Failures: {rejected} rejected, {dead} dead, {waiting} still waiting; {quarantine} journal item(s) in quarantine");
    let v = app.store.audit_verify().await?;
    println!("Audit chain: {} ({} events)", if v.ok { "verified" } else { "BROKEN" }, v.events_checked);
    Ok(())
}

/// `registerbrygga sandbox`: the peers alone, until Ctrl-C (acceptance testing of a region's
/// own configuration against known data).
pub async fn sandbox(a: SandboxOptions) -> Result<i32> {
    let today = crate::pipeline::today_stockholm();
    let mut spec = SandboxSpec::new(a.seed, a.patients as usize, today);
    spec.journal_addr = std::net::SocketAddr::from(([127, 0, 0, 1], a.journal_port));
    spec.stratum_addr = std::net::SocketAddr::from(([127, 0, 0, 1], a.stratum_port));
    let env = SandboxEnv::start(&a.dir, spec).await.context("starting the sandbox")?;
    println!("Sandbox journal (RIV-TA, mTLS): {}", env.journal.base_url());
    println!("Stratum emulator (mTLS):        {}", env.emulator.base_url());
    println!("Certificates (CA, client):      {}", env.certs.dir.display());
    println!("Stratum API key:                {}", env.dir.join("stratum.apikey").display());
    println!("Daemon configuration:           registerbrygga --config {} run", env.config_file().display());
    println!("Patients: {}, listing file {}", env.population.len(), env.dir.join("listing.csv").display());
    println!("Stop with Ctrl-C.");
    let _ = tokio::signal::ctrl_c().await;
    env.shutdown().await;
    Ok(0)
}
