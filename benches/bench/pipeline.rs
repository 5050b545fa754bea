//! (b) and (d): a synthetic region from the sandbox journal over loopback (HTTPS + mTLS, the
//! real RIV-TA consumer, the real pipeline) into the outbox; and two baselines that stop
//! earlier: the source alone (fetch + parse, batches dropped) and a bare fetch loop.

use crate::cases::{PipeMode, PG, SQLITE};
use crate::cpu_seconds;
use anyhow::{bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use registerbrygga::app::App;
use registerbrygga::config::PatientDiscovery;
use registerbrygga::daemon::build_runtime;
use registerbrygga::model::{HsaId, Record};
use registerbrygga::pipeline::{find, run_connector, RunKind};
use registerbrygga::sandbox::env::{SandboxEnv, SandboxSpec};
use registerbrygga::sandbox::journal::{Population, PopulationSpec};
use registerbrygga::sources::riv::{patient_calls, request};
use registerbrygga::sources::{PullRequest, SourceItem};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SEED: u64 = 20_260_101;

/// What this child made to run its case (folders, databases), removed by [`clean_up`] when
/// the case ends, failed or not: a region-year is gigabytes, and left behind they filled the disk.
static SCRATCH: std::sync::Mutex<(Vec<PathBuf>, Vec<String>)> = std::sync::Mutex::new((vec![], vec![]));

/// A fresh folder for one child under `target/bench-tmp` (on disk, like a real database).
pub fn bench_dir(name: &str) -> Result<PathBuf> {
    let root = PathBuf::from("target/bench-tmp");
    std::fs::create_dir_all(&root)?;
    let dir = tempfile::Builder::new().prefix(name).tempdir_in(&root)?.keep();
    SCRATCH.lock().expect("scratch").0.push(dir.clone());
    Ok(dir)
}

/// Remove the case's folders and drop its databases.
pub async fn clean_up() {
    let (dirs, dbs) = std::mem::take(&mut *SCRATCH.lock().expect("scratch"));
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    if dbs.is_empty() {
        return;
    }
    use sqlx::Connection;
    let Ok(admin) = std::env::var("RB_BENCH_PG_URL") else { return };
    let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await else { return };
    for name in dbs {
        if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await {
            eprintln!("bench: could not drop the benchmark database {name}: {e}");
        }
    }
    conn.close().await.ok();
}

/// Patients needed for at least `contacts` care contacts (estimated from a small population
/// with the same seed; the child reports the real count).
fn patients_for(contacts: u64, today: chrono::NaiveDate) -> usize {
    let probe = Population::generate(&PopulationSpec::new(SEED, 4_000, today));
    let per = probe.stats().care_contacts as f64 / 4_000.0;
    ((contacts as f64 / per) * 1.01).ceil().max(30.0) as usize
}

/// A fresh database on the benchmark cluster; its URL.
pub async fn fresh_pg_url(prefix: &str) -> Result<String> {
    use sqlx::Connection;
    let admin = std::env::var("RB_BENCH_PG_URL").context("RB_BENCH_PG_URL is not set (scripts/bench starts a PostgreSQL cluster)")?;
    let name = format!("rb_bench_{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    conn.close().await.ok();
    SCRATCH.lock().expect("scratch").1.push(name.clone());
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin);
    Ok(format!("{base}/{name}"))
}

/// The sandbox of one case: in this process, or in a process of its own (`bench sandbox`), so
/// that this process's peak RSS is the daemon's alone.
enum Sandbox {
    Here(SandboxEnv),
    /// Its stdout stays open: the sandbox must not write into a closed pipe.
    Apart { child: std::process::Child, config: PathBuf, _stdout: std::io::BufReader<std::process::ChildStdout> },
}

impl Sandbox {
    async fn start(dir: &std::path::Path, patients: usize, today: chrono::NaiveDate, apart: bool) -> Result<Sandbox> {
        if !apart {
            return Ok(Sandbox::Here(SandboxEnv::start(dir, SandboxSpec::new(SEED, patients, today)).await?));
        }
        use std::io::{BufRead, Read};
        let free_port = || -> Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
        let spec = json!({"dir": dir, "patients": patients, "seed": SEED, "journal_port": free_port()?, "stratum_port": free_port()?});
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .arg("sandbox")
            .arg(spec.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the sandbox process")?;
        // `registerbrygga sandbox` prints its last line once it serves.
        let mut out = std::io::BufReader::new(child.stdout.take().context("sandbox stdout")?);
        let ready = out.by_ref().lines().map_while(|l| l.ok()).any(|l| l.starts_with("Stop with Ctrl-C"));
        if !ready {
            let _ = child.kill();
            bail!("the sandbox process ended before it served");
        }
        Ok(Sandbox::Apart { child, config: dir.join("sandbox.toml"), _stdout: out })
    }

    fn load_config(&self, overrides: Vec<(String, String)>) -> Result<registerbrygga::config::Loaded> {
        match self {
            Sandbox::Here(env) => env.load_config(overrides),
            Sandbox::Apart { config, .. } => registerbrygga::config::load(&registerbrygga::config::LoadOptions {
                config_dir: Some(PathBuf::from("config")),
                extra_file: Some(config.clone()),
                environment: Some("local".into()),
                overrides,
                skip_env: true,
            }),
        }
    }

    fn here(&self) -> Result<&SandboxEnv> {
        match self {
            Sandbox::Here(env) => Ok(env),
            Sandbox::Apart { .. } => bail!("this mode needs the sandbox in the same process (only \"full\" runs with it apart)"),
        }
    }

    async fn shutdown(self) {
        match self {
            Sandbox::Here(env) => env.shutdown().await,
            Sandbox::Apart { mut child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `bench sandbox '<spec>'`: serve a sandbox region until killed (the other side of
/// [`Sandbox::Apart`]).
pub async fn serve_sandbox(spec: &Value) -> Result<()> {
    let n = |k: &str| spec[k].as_u64().with_context(|| format!("sandbox spec needs {k}"));
    registerbrygga::demo::sandbox(registerbrygga::demo::SandboxOptions {
        patients: n("patients")? as u32,
        seed: n("seed")?,
        dir: PathBuf::from(spec["dir"].as_str().context("sandbox spec needs dir")?),
        journal_port: n("journal_port")? as u16,
        stratum_port: n("stratum_port")? as u16,
    })
    .await?;
    Ok(())
}

pub async fn run(backend: &str, contacts: u64, connector: &str, concurrency: usize, mode: PipeMode, unit_filter: Option<&str>, apart: bool) -> Result<Value> {
    let today = registerbrygga::pipeline::today_stockholm();
    let patients = patients_for(contacts, today);
    let dir = bench_dir("pipe")?;
    let t_setup = Instant::now();
    if apart && mode != PipeMode::Full {
        bail!("the sandbox runs in its own process for full runs only");
    }
    let env = Sandbox::start(&dir, patients, today, apart).await?;
    let mut overrides = vec![
        ("admin.enabled".to_string(), "false".to_string()),
        ("scheduler.enabled".into(), "false".into()),
        ("delivery.enabled".into(), "false".into()),
        ("sources.journal.concurrency".into(), concurrency.to_string()),
    ];
    if let Some(u) = unit_filter {
        overrides.push(("sources.journal.unit_filter".into(), u.to_string()));
    }
    match backend {
        SQLITE => {}
        PG => {
            let url = fresh_pg_url("pipe").await?;
            std::env::set_var("RB_BENCH_STORE_URL", url);
            overrides.push(("store.backend".into(), "postgres".into()));
            overrides.push(("store.postgres_url.env".into(), "RB_BENCH_STORE_URL".into()));
        }
        other => bail!("unknown backend {other}"),
    }
    let loaded = env.load_config(overrides)?;
    let app = App::open(loaded).await?;
    let rt = build_runtime(&app).await?;
    let c = find(&rt.connectors, connector)?.clone();
    let stats = env.here().ok().map(|e| e.population.stats().clone());
    let setup_s = t_setup.elapsed().as_secs_f64();

    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let mut out = match mode {
        PipeMode::Full => {
            // The last patient handled marks the end of pull + store; after-pull work follows.
            let last = Arc::new(Mutex::new(Instant::now()));
            let l2 = last.clone();
            let progress: registerbrygga::pipeline::Progress = Arc::new(move |_| *l2.lock().expect("lock") = Instant::now());
            let r = run_connector(&app, &c, RunKind::Manual, false, today, Some(progress)).await?;
            let secs = t.elapsed().as_secs_f64();
            let pull_s = last.lock().expect("lock").duration_since(t).as_secs_f64();
            if r.status != "ok" {
                bail!("run ended {}: {r:?}", r.status);
            }
            let kinds = document_counts(&app).await?;
            let states: BTreeMap<String, i64> = app.store.state_counts(None).await?.into_iter().map(|(s, n)| (s.as_str().to_string(), n)).collect();
            json!({
                "seconds": secs,
                "pull_store_seconds": pull_s,
                "after_pull_seconds": secs - pull_s,
                "patients": r.patients,
                "documents": kinds,
                "contacts": kinds.get("care_contact").copied().unwrap_or(0),
                "records": kinds.values().sum::<i64>(),
                "outbox": states,
                "report": r,
            })
        }
        PipeMode::Source => {
            let env = env.here()?;
            let req = pull_request(&c.def, today, env.population.last_update());
            let (tx, mut rx) = tokio::sync::mpsc::channel::<SourceItem>(64);
            let counter = tokio::spawn(async move {
                let mut kinds: BTreeMap<String, i64> = BTreeMap::new();
                let mut patients = 0u64;
                while let Some(item) = rx.recv().await {
                    if let SourceItem::Patient(b) = item {
                        patients += 1;
                        for r in &b.records {
                            *kinds.entry(kind_name(r).into()).or_default() += 1;
                        }
                    }
                }
                (patients, kinds)
            });
            let summary = c.source.pull(&req, tx).await?;
            let (patients, kinds) = counter.await?;
            let secs = t.elapsed().as_secs_f64();
            json!({
                "seconds": secs,
                "patients": patients,
                "documents": kinds,
                "contacts": kinds.get("care_contact").copied().unwrap_or(0),
                "records": kinds.values().sum::<i64>(),
                "requests": summary.documents,
            })
        }
        PipeMode::Fetch => {
            let settings = app.settings().sources.get(&c.def.source).context("source settings")?.clone();
            let env = env.here()?;
            let (requests, bytes) = fetch_loop(env, &settings, &c.def, today, concurrency).await?;
            json!({"seconds": t.elapsed().as_secs_f64(), "requests": requests, "bytes": bytes, "patients": env.population.len()})
        }
    };
    let secs = out["seconds"].as_f64().unwrap_or(1.0);
    out["cpu_seconds"] = json!(cpu_seconds() - cpu0);
    out["setup_seconds"] = json!(setup_s);
    let population_contacts = stats.as_ref().map(|s| s.care_contacts as f64);
    out["population"] = serde_json::to_value(&stats)?;
    out["population_contacts"] = json!(population_contacts);
    out["contacts_per_second"] = json!(out.get("contacts").and_then(Value::as_f64).or(population_contacts).unwrap_or(0.0) / secs);
    if let Some(r) = out.get("records").and_then(Value::as_f64) {
        out["records_per_second"] = json!(r / secs);
    }
    if let Ok(env) = env.here() {
        out["journal_requests"] = json!(env.journal.requests().total);
    }
    out["sandbox"] = json!(if apart { "process" } else { "here" });
    if backend == SQLITE {
        out["sqlite_bytes"] = json!(dir_size(&dir));
    }
    app.store.close().await;
    env.shutdown().await;
    Ok(out)
}

fn kind_name(r: &Record) -> &'static str {
    match r {
        Record::CareContact(_) => "care_contact",
        Record::Diagnosis(_) => "diagnosis",
        Record::Activity(_) => "activity",
        Record::Observation(_) => "observation",
    }
}

async fn document_counts(app: &App) -> Result<BTreeMap<String, i64>> {
    let mut tx = app.store.read().await?;
    let rows = tx.rows("SELECT kind, COUNT(*) FROM documents GROUP BY kind", &[]).await?;
    let mut out = BTreeMap::new();
    for r in rows {
        out.insert(r.text(0)?, r.i64(1)?);
    }
    Ok(out)
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| if e.path().is_dir() { dir_size(&e.path()) } else { e.metadata().map(|m| m.len()).unwrap_or(0) }).sum())
        .unwrap_or(0)
}

/// The request `run_connector` makes for a manual run of a connector without watermarks.
fn pull_request(def: &registerbrygga::config::ConnectorDef, today: chrono::NaiveDate, _last: chrono::DateTime<chrono::Utc>) -> PullRequest {
    PullRequest {
        connector: def.name.clone(),
        units: def.units.iter().filter_map(|u| HsaId::parse(u).ok()).collect(),
        changed_since: Some(chrono::Utc::now() - chrono::Duration::days(def.window.initial_days as i64)),
        window_from: today - chrono::Duration::days(def.window.history_days as i64),
        window_to: today,
        discovery: def.patients.clone(),
        connector_dir: def.dir.clone(),
        correlation_id: "bench".into(),
        today,
    }
}

/// The same per-patient requests the RIV source makes (`patient_calls`: care contacts, diagnoses,
/// activities and observations, per unit or not as `unit_filter` says), with the same client and
/// patient concurrency; the bodies are read to the end and dropped.
async fn fetch_loop(
    env: &SandboxEnv,
    settings: &registerbrygga::config::SourceSettings,
    def: &registerbrygga::config::ConnectorDef,
    today: chrono::NaiveDate,
    concurrency: usize,
) -> Result<(u64, u64)> {
    if !matches!(def.patients, PatientDiscovery::EngagementIndex { .. }) {
        bail!("the fetch baseline expects engagement-index discovery");
    }
    let http = registerbrygga::sandbox::tls::http_client(&settings.tls, Duration::from_secs(settings.timeout_seconds), false)?;
    let client = registerbrygga::sources::riv::RivClient::new(settings)?;
    let units: Vec<HsaId> = def.units.iter().filter_map(|u| HsaId::parse(u).ok()).collect();
    let from = today - chrono::Duration::days(def.window.history_days as i64);
    let care_giver = Some(settings.care_giver_hsa_id.as_str()).filter(|s| !s.is_empty());
    let total_req = std::sync::atomic::AtomicU64::new(0);
    let total_bytes = std::sync::atomic::AtomicU64::new(0);
    let one = |i: usize| {
        let (http, client, units, total_req, total_bytes) = (&http, &client, &units, &total_req, &total_bytes);
        async move {
            let patient = env.population.patient_id(i);
            let q = request::PatientQuery { patient: &patient, units, care_giver, from, to: today };
            for (contract, body) in patient_calls(&q, settings.unit_filter) {
                let resp = http
                    .post(client.endpoint(contract))
                    .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=UTF-8")
                    .header("SOAPAction", format!("\"{}\"", contract.soap_action()))
                    .header("x-rivta-original-serviceconsumer-hsaid", &settings.consumer_hsa_id)
                    .header("x-skltp-correlation-id", "bench")
                    .body(request::envelope(&settings.logical_address, &body))
                    .send()
                    .await?;
                if !resp.status().is_success() {
                    bail!("journal answered {}", resp.status());
                }
                let mut s = resp.bytes_stream();
                while let Some(chunk) = s.try_next().await? {
                    total_bytes.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                total_req.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    let mut s = futures::stream::iter(0..env.population.len()).map(one).buffer_unordered(concurrency.max(1));
    while let Some(r) = s.next().await {
        r?;
    }
    drop(s);
    Ok((total_req.load(std::sync::atomic::Ordering::Relaxed), total_bytes.load(std::sync::atomic::Ordering::Relaxed)))
}
