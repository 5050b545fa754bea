//! Command line. Every command has `--help`; commands a script would read take `--json`.

use crate::app::App;
use crate::config::{self, LoadOptions, Problem};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "registerbrygga", version, about = "Moves care data from the journal to Svenska Artrosregistret and Primärvårdskvalitet, with retries and an audit trail.")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Default)]
pub struct Global {
    /// Extra configuration file, applied after config/default.toml and config/<RB_ENV>.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder with default.toml and <env>.toml.
    #[arg(long, global = true, value_name = "DIR", default_value = "config")]
    pub config_dir: PathBuf,
    /// Environment name (selects config/<env>.toml); default RB_ENV or "local".
    #[arg(long, global = true, value_name = "NAME")]
    pub env: Option<String>,
}

impl Global {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions { config_dir: Some(self.config_dir.clone()), extra_file: self.config.clone(), environment: self.env.clone(), ..Default::default() }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: schedules, pulls, delivery and the admin pages, until SIGTERM.
    Run(RunArgs),
    /// Start the sandbox journal and registers on loopback and run the real daemon against them.
    Demo(DemoArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Primärvårdskvalitet tools.
    #[command(subcommand)]
    Pvk(PvkCmd),
    /// Register mapping tools.
    #[command(subcommand)]
    Mapping(MappingCmd),
    /// Show what the daemon makes of a RIV-TA response document, as canonical records.
    ///
    /// Patients are shown as keyed pseudonyms (the form of the logs, the audit log and the admin
    /// pages; under the configured security.pseudonym_key when it can be read, else under a key
    /// made for this run). --show-identities prints personnummer instead.
    Inspect(InspectArgs),
    /// Re-read a period from the journal (with --dry-run: report what would be sent).
    Backfill(BackfillArgs),
    /// Transfers (register records) and their history.
    #[command(subcommand)]
    Transfers(TransfersCmd),
    /// Re-queue rejected or dead records, recording who and why.
    Replay(ReplayArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Admin users.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Encryption keys of payloads at rest.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Serve the sandbox journal, Stratum emulator and PVK receiver on loopback until Ctrl-C,
    /// on the ports config/local.toml names; creates the keys, certificates and API key that
    /// configuration reads (under var/sandbox/), so `config check` and `run` work with it.
    Sandbox(SandboxArgs),
    /// After restoring the store from a backup: make every send of a record the register may
    /// already hold look it up first, so nothing is created twice.
    Recover {
        /// Required, to say what happened.
        #[arg(long)]
        after_restore: bool,
        /// For this many days every create of a registration without a known EventID looks in
        /// the register first (registrations made after the backup are unknown to the store).
        #[arg(long, default_value_t = 7)]
        lookup_days: u32,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Lift a withdrawal made by a person (which holds its registration back from every later
    /// journal change) so the registration may be sent again. Audited with who and why.
    LiftHold {
        /// A record id of the registration (any version) …
        #[arg(long)]
        id: Option<i64>,
        /// … or its key.
        #[arg(long)]
        key: Option<String>,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Who (default: $USER).
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Run every connector once now, deliver, and exit (instead of following the schedules).
    #[arg(long)]
    pub once: bool,
    /// Only this connector (with --once).
    #[arg(long)]
    pub connector: Option<String>,
}

#[derive(Args, Debug, Clone, Default)]
pub struct DemoArgs {
    /// Size of the synthetic population.
    #[arg(long, default_value_t = 400)]
    pub patients: u32,
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Print the summary and exit instead of leaving the admin pages running.
    #[arg(long)]
    pub no_serve: bool,
    /// Admin listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Working folder for the demo database and certificates (default: var/demo).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Check the configuration and connectors; report every problem (file, key, reason).
    Check {
        #[arg(long)]
        json: bool,
        /// Also fetch register metadata to check mapped columns and domains.
        #[arg(long)]
        online: bool,
    },
    /// Ask every running replica to re-read its configuration (applied only if it is valid);
    /// recorded with who and why.
    Reload {
        #[arg(long)]
        reason: String,
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum MappingCmd {
    /// Write a connector folder (connector.toml, mapping.toml, metadata.json) for a Stratum
    /// register from its metadata: every column with its question, type, domain values and
    /// mandatory flag, the sources left empty. If the folder has a mapping already, report the
    /// columns added, removed and changed in the register's metadata instead (nothing written).
    Scaffold {
        /// The register's name in [registers].
        #[arg(long)]
        register: String,
        /// The folder to write (default: <connectors_dir>/<register>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PvkCmd {
    /// Read SKR's yearly indicator spreadsheets (.xlsx or .csv) and write the connector's rule
    /// set `rules/<year>.toml` (every code list with its file, sheet and rows); prints the
    /// difference against the previous year's rule set. Sheet and column names: the connector's
    /// `[options.import]` (defaults: src/registers/pvk/import.rs).
    Import {
        /// The PVK connector whose rules folder and layout are used (default: the only one).
        #[arg(long)]
        connector: Option<String>,
        /// The revision year of the files.
        #[arg(long)]
        year: i32,
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    /// A RIV-TA response document (SOAP envelope or bare response element).
    pub file: PathBuf,
    #[arg(long)]
    pub json: bool,
    /// Keyword table for GetCareDocumentation notes (a connector's keywords.toml).
    #[arg(long)]
    pub keywords: Option<PathBuf>,
    /// Print each patient's personnummer (samordningsnummer, reserve number) instead of the
    /// pseudonym. Personal data: for an operator's own terminal, never for a ticket or a log.
    #[arg(long)]
    pub show_identities: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BackfillArgs {
    /// First day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub from: chrono::NaiveDate,
    /// Last day (YYYY-MM-DD), inclusive.
    #[arg(long)]
    pub to: chrono::NaiveDate,
    #[arg(long)]
    pub connector: Option<String>,
    /// Validate and map without storing or sending; report what would be sent, changed, retracted.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
    /// Also deliver what the backfill queued before exiting.
    #[arg(long)]
    pub deliver: bool,
}

#[derive(Subcommand, Debug)]
pub enum TransfersCmd {
    /// List records (latest version of each by default).
    List {
        #[arg(long)]
        connector: Option<String>,
        #[arg(long)]
        register: Option<String>,
        #[arg(long)]
        unit: Option<String>,
        #[arg(long)]
        form: Option<String>,
        /// pending, sending, delivered, rejected, dead, superseded, retracted
        #[arg(long)]
        state: Option<String>,
        /// Every version, not only the latest.
        #[arg(long)]
        all_versions: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One record with every version, attempt and audit event of its key.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// Record ids to re-queue.
    #[arg(long = "id")]
    pub ids: Vec<i64>,
    /// Or: every record in this state (rejected or dead) …
    #[arg(long)]
    pub state: Option<String>,
    /// … of this connector …
    #[arg(long)]
    pub connector: Option<String>,
    /// … and register.
    #[arg(long)]
    pub register: Option<String>,
    /// Why (recorded in the audit log).
    #[arg(long)]
    pub reason: String,
    /// Who (default: $USER).
    #[arg(long)]
    pub actor: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check the hash chain from its anchor to the head; name the first bad event.
    Verify {
        #[arg(long)]
        json: bool,
        /// Also check that the chain still holds this exported head: a file of signed heads
        /// (the last line counts) or one head's JSON.
        #[arg(long, value_name = "FILE|JSON")]
        head: Option<String>,
    },
    /// Print the current head signed with the audit key (as the daemon exports it).
    Head,
    /// Search events (newest first).
    Search {
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        /// Every recorded view of this patient's identity (personnummer or samordningsnummer;
        /// looked up by its pseudonym, never stored or logged).
        #[arg(long)]
        patient: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Remove events older than the retention (or --older-than-days), keeping the chain verifiable.
    Prune {
        #[arg(long)]
        older_than_days: Option<u32>,
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    /// Create or update a user (password read from RB_NEW_PASSWORD or stdin).
    Set {
        username: String,
        /// läsare, operatör or admin
        #[arg(long)]
        role: String,
        /// May see patient-level lists (every view is recorded with a reason).
        #[arg(long)]
        patient_data: bool,
        /// Limit the user to these care units (HSA ids, comma-separated): it then sees only
        /// their data, lands on its clinic page and is refused the region-wide pages.
        /// `--units ""` gives the whole region back; left out, the current list is kept.
        #[arg(long)]
        units: Option<String>,
    },
    /// List users.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Make an API token acting as USERNAME (e.g. a läsare for Prometheus); printed once.
    Token {
        username: String,
        /// What the token is for.
        #[arg(long)]
        name: String,
        /// Validity in days (at most admin.token_days, the default).
        #[arg(long)]
        days: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Re-encrypt every stored payload under the first key of `security.encryption_keys` (and
    /// bind old unbound payloads to their rows), so the keys after it can be removed.
    Rotate {
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SandboxArgs {
    #[arg(long, default_value_t = 400)]
    pub patients: u32,
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Folder for the generated keys, certificates, API key and configuration.
    #[arg(long, default_value = "var/sandbox")]
    pub dir: PathBuf,
    /// The journal's port (config/local.toml names 7443; 0: any free port).
    #[arg(long, default_value_t = 7443)]
    pub journal_port: u16,
    /// The Stratum emulator's port (config/local.toml names 7444; 0: any free port).
    #[arg(long, default_value_t = 7444)]
    pub stratum_port: u16,
}

fn actor_or_user(a: &Option<String>) -> String {
    a.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".into())
}

pub fn print_problems(problems: &[Problem], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({
            "ok": !problems.iter().any(|p| !p.warning),
            "problems": problems,
        })).unwrap());
    } else if problems.is_empty() {
        println!("configuration OK");
    } else {
        for p in problems {
            println!("{p}");
        }
        let errors = problems.iter().filter(|p| !p.warning).count();
        println!("{} error(s), {} warning(s)", errors, problems.len() - errors);
    }
}

async fn open_app(g: &Global) -> Result<App> {
    let loaded = config::load(&g.load_options())?;
    crate::telemetry::init(&loaded.settings.telemetry);
    App::open(loaded).await
}

/// Entry point; returns the process exit code.
pub async fn main(cli: Cli) -> Result<i32> {
    let g = cli.global.clone();
    match cli.command {
        Command::Config(ConfigCmd::Check { json, online }) => {
            let problems = crate::checks::check_all(&g.load_options(), online).await;
            print_problems(&problems, json);
            if !json {
                // Per PVK indicator: beräkningsbar, or what is missing.
                if let (Some(loaded), _) = config::load_collect(&g.load_options()) {
                    for line in crate::registers::pvk::indicator_report(&loaded) {
                        println!("{line}");
                    }
                }
            }
            Ok(if problems.iter().any(|p| !p.warning) { 1 } else { 0 })
        }
        Command::Mapping(MappingCmd::Scaffold { register, out }) => {
            let loaded = config::load(&g.load_options())?;
            let r = crate::checks::mapping_scaffold(&loaded, &register, out.as_deref()).await?;
            if r.written {
                println!("wrote {} (connector.toml, mapping.toml, metadata.json): fill in the sources, then `config check --online`", r.dir.display());
            } else if r.changes.is_empty() {
                println!("{}: the register's metadata has not changed since the mapping was written", r.dir.display());
            } else {
                println!("{}: the register's metadata changed since the mapping was written (nothing overwritten):", r.dir.display());
                for c in &r.changes {
                    println!("  {c}");
                }
            }
            Ok(if r.changes.is_empty() { 0 } else { 3 })
        }
        Command::Pvk(PvkCmd::Import { connector, year, files }) => {
            let loaded = config::load(&g.load_options())?;
            let pvk: Vec<&crate::config::ConnectorDef> = loaded.connectors.iter().filter(|c| c.kind == crate::config::ConnectorKind::Pvk && connector.as_ref().map_or(true, |n| &c.name == n)).collect();
            let [c] = pvk.as_slice() else {
                anyhow::bail!("name the PVK connector with --connector (found {})", pvk.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "));
            };
            let layout: crate::registers::pvk::import::Layout = match c.options.get("import") {
                Some(v) => v.clone().try_into().map_err(|e: toml::de::Error| anyhow::anyhow!("{}: options.import: {}", c.name, e.message()))?,
                None => Default::default(),
            };
            let rules_dir = match c.options.get("rules_dir").and_then(|v| v.as_str()) {
                Some(d) => c.dir.join(d),
                None => c.dir.join("rules"),
            };
            let r = crate::registers::pvk::import::run(&files, &layout, year, &rules_dir)?;
            println!("wrote {} ({} indicators, {} code lists, every list verified with its source)", r.written.display(), r.indicators, r.code_lists);
            match r.diff {
                Some((prev, lines)) if lines.is_empty() => println!("no change against {}", prev.display()),
                Some((prev, lines)) => {
                    println!("against {}:", prev.display());
                    for l in lines {
                        println!("  {l}");
                    }
                }
                None => println!("no previous rule set ({}.toml) to compare with", year - 1),
            }
            Ok(0)
        }
        Command::Inspect(a) => {
            use crate::sources::riv::inspect::PatientView;
            // The configured pseudonym key when this machine has one; inspect itself needs none.
            let configured = config::load_collect(&g.load_options())
                .0
                .and_then(|l| l.settings.security.pseudonym_key.clone())
                .and_then(|k| k.read_bytes().ok())
                .and_then(|b| crate::crypto::decode_key(&b).ok());
            let view = configured.map(|k| PatientView::configured(crate::crypto::Pseudonymizer::new(k))).unwrap_or_else(PatientView::one_off);
            let view = if a.show_identities { view.with_identities() } else { view };
            crate::sources::riv::inspect::run_as(&a.file, a.json, a.keywords.as_deref(), &view)
        }
        Command::Audit(AuditCmd::Verify { json, head }) => {
            let app = open_app(&g).await?;
            let exported = head.as_deref().map(read_signed_head).transpose()?;
            let r = app.store.audit_verify_against(exported.as_ref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.ok {
                println!("audit chain OK: {} events checked (anchor {}, head {})", r.events_checked, r.anchor_seq, r.head_seq);
            } else {
                println!("audit chain BROKEN at event {}: {}", r.first_bad_seq.unwrap_or(0), r.problem.clone().unwrap_or_default());
            }
            Ok(if r.ok { 0 } else { 1 })
        }
        Command::Audit(AuditCmd::Search { kind, subject, actor, patient, limit, json }) => {
            let app = open_app(&g).await?;
            let ev = match patient {
                Some(p) => {
                    let today = crate::pipeline::today_stockholm();
                    let id = crate::model::PatientId::parse_national(p.trim(), today).map_err(|_| anyhow::anyhow!("--patient is not a valid personnummer or samordningsnummer"))?;
                    app.store.audit_views_of_patient(&app.pseudo.patient_key(&id), limit).await?
                }
                None => app.store.audit_search(&crate::store::AuditQuery { kind, subject, actor, limit: Some(limit), ..Default::default() }).await?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&ev)?);
            } else {
                for e in ev {
                    println!("{:>8}  {}  {:<10} {:<22} {}  {}", e.seq, e.at.format("%Y-%m-%d %H:%M:%S"), e.actor, e.kind, e.subject, e.detail);
                }
            }
            Ok(0)
        }
        Command::Audit(AuditCmd::Head) => {
            let app = open_app(&g).await?;
            let Some(h) = app.store.audit_head_signed().await? else { bail!("signing the head needs security.audit_key") };
            println!("{}", serde_json::to_string(&h)?);
            Ok(0)
        }
        Command::Audit(AuditCmd::Prune { older_than_days, actor }) => {
            let app = open_app(&g).await?;
            let cutoff = app.settings().audit.prune_cutoff(older_than_days)?;
            let n = app.store.audit_prune(cutoff.timestamp_micros(), &actor_or_user(&actor)).await?;
            println!("pruned {n} audit events older than {}", cutoff.format("%Y-%m-%d"));
            Ok(0)
        }
        Command::Transfers(TransfersCmd::List { connector, register, unit, form, state, all_versions, limit, json }) => {
            let app = open_app(&g).await?;
            let state = state.map(|s| crate::store::RecordState::parse(&s)).transpose()?;
            let recs = app
                .store
                .records(&crate::store::RecordFilter { connector, register, unit, form, state, latest_only: !all_versions, limit: Some(limit), ..Default::default() })
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&recs)?);
            } else {
                println!("{:>7}  {:<12} {:<10} {:<20} {:<8} {:>3} {:<11} {:>4}  {}", "id", "register", "form", "unit", "op", "v", "state", "att", "last error");
                for r in recs {
                    println!(
                        "{:>7}  {:<12} {:<10} {:<20} {:<8} {:>3} {:<11} {:>4}  {}",
                        r.id, r.register, r.form, r.unit, r.op.as_str(), r.version, r.state.as_str(), r.attempts, r.last_error.unwrap_or_default()
                    );
                }
            }
            Ok(0)
        }
        Command::Transfers(TransfersCmd::Show { id, json }) => {
            let app = open_app(&g).await?;
            let Some(rec) = app.store.record(id).await? else { bail!("no record {id}") };
            let versions = app.store.record_versions(&rec.idem_key).await?;
            let attempts = app.store.attempts(&rec.idem_key).await?;
            let events = app.store.audit_search(&crate::store::AuditQuery { subject: Some(rec.idem_key.clone()), limit: Some(500), ..Default::default() }).await?;
            let reg = app.store.registration(&rec.idem_key).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"record": rec, "registration": reg, "versions": versions, "attempts": attempts, "audit": events}))?);
            } else {
                println!("record {} ({}), key {}", rec.id, rec.state.as_str(), rec.idem_key);
                if let Some(reg) = reg {
                    println!("register holds: {} (EventID {})", reg.state, reg.event_id.unwrap_or_else(|| "-".into()));
                }
                for v in versions {
                    println!("  v{} {} {} attempts={} {}", v.version, v.op.as_str(), v.state.as_str(), v.attempts, v.reason.or(v.last_error).unwrap_or_default());
                }
                for a in attempts {
                    println!("  attempt {} {} {} status={:?} {}", a.id, a.operation, a.outcome, a.http_status, a.detail.unwrap_or_default());
                }
                for e in events.iter().rev() {
                    println!("  audit {} {} {} {}", e.seq, e.at.format("%Y-%m-%d %H:%M:%S"), e.kind, e.detail);
                }
            }
            Ok(0)
        }
        Command::Replay(a) => {
            let app = open_app(&g).await?;
            let mut ids = a.ids.clone();
            if let Some(s) = &a.state {
                let state = crate::store::RecordState::parse(s)?;
                if !matches!(state, crate::store::RecordState::Rejected | crate::store::RecordState::Dead) {
                    bail!("--state must be rejected or dead");
                }
                let recs = app
                    .store
                    .records(&crate::store::RecordFilter { state: Some(state), connector: a.connector.clone(), register: a.register.clone(), limit: Some(100_000), ..Default::default() })
                    .await?;
                ids.extend(recs.iter().map(|r| r.id));
            }
            if ids.is_empty() {
                bail!("nothing chosen: give --id or --state");
            }
            let done = app.store.replay(&ids, &actor_or_user(&a.actor), &a.reason).await?;
            if a.json {
                println!("{}", serde_json::json!({"requeued": done}));
            } else {
                println!("re-queued {} record(s): {:?}", done.len(), done);
            }
            Ok(0)
        }
        Command::Keys(KeysCmd::Rotate { actor, json }) => {
            let app = open_app(&g).await?;
            let r = app.store.rotate_payload_keys(&actor_or_user(&actor)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for (col, done, current) in &r.columns {
                    println!("{col:<32} rewritten {done:>9}  already current {current:>9}");
                }
                println!("every stored payload is now under key {} and bound to its row; older keys can be removed", r.key_id);
            }
            Ok(0)
        }
        Command::Users(cmd) => {
            let app = open_app(&g).await?;
            users_cli(&app, cmd).await
        }
        Command::Run(a) => {
            let app = open_app(&g).await?;
            crate::daemon::run(app, crate::daemon::RunOptions { once: a.once, connector: a.connector }, g.load_options()).await
        }
        Command::Config(ConfigCmd::Reload { reason, actor }) => {
            let app = open_app(&g).await?;
            let actor = actor_or_user(&actor);
            let gen: i64 = app.store.kv_get(crate::daemon::RELOAD_GENERATION).await?.and_then(|v| v.parse().ok()).unwrap_or(0) + 1;
            app.store.kv_put(crate::daemon::RELOAD_REQUEST, &serde_json::json!({"actor": actor, "reason": reason}).to_string()).await?;
            app.store.kv_put(crate::daemon::RELOAD_GENERATION, &gen.to_string()).await?;
            app.store
                .audit(vec![crate::audit::NewAuditEvent::by(&actor, crate::audit::kind::CONFIG_RELOAD, &crate::audit::correlation_id(), "config", serde_json::json!({"requested": true, "reason": reason, "generation": gen}))])
                .await?;
            println!("reload requested (generation {gen}); every running replica re-reads its configuration within a few seconds");
            Ok(0)
        }
        Command::Backfill(a) => {
            let app = open_app(&g).await?;
            let opts = crate::daemon::BackfillOptions { from: a.from, to: a.to, connector: a.connector, dry_run: a.dry_run, json: a.json, deliver: a.deliver };
            crate::daemon::backfill(app, opts).await
        }
        Command::Demo(a) => crate::demo::run(crate::demo::DemoOptions { patients: a.patients, seed: a.seed, no_serve: a.no_serve, listen: a.listen, dir: a.dir }).await,
        Command::Recover { after_restore, lookup_days, actor } => {
            if !after_restore {
                bail!("say --after-restore: this marks every undelivered registration's outcome as unknown");
            }
            let app = open_app(&g).await?;
            let n = app.store.mark_unknown_after_restore(&actor_or_user(&actor), lookup_days).await?;
            println!("{n} registration(s) will be looked up in the register before they are sent again");
            println!("for {lookup_days} day(s), every new registration is looked up in the register before it is created");
            Ok(0)
        }
        Command::LiftHold { id, key, reason, actor } => {
            let app = open_app(&g).await?;
            let key = match (id, key) {
                (Some(id), None) => app.store.record(id).await?.with_context(|| format!("no record {id}"))?.idem_key,
                (None, Some(k)) => k,
                _ => bail!("give exactly one of --id or --key"),
            };
            if reason.trim().is_empty() {
                bail!("--reason must say why the withdrawal no longer holds");
            }
            match app.store.lift_hold(&key, &actor_or_user(&actor), &reason).await? {
                None => bail!("{key} is not held by a withdrawal"),
                Some(l) => match l.requeued {
                    Some(r) => println!("lifted the hold on {key}; record {r} is queued to be sent"),
                    None => println!("lifted the hold on {key}; the next journal change may send it again"),
                },
            }
            Ok(0)
        }
        Command::Sandbox(a) => {
            crate::telemetry::init(&Default::default());
            crate::demo::sandbox(crate::demo::SandboxOptions { patients: a.patients, seed: a.seed, dir: a.dir, journal_port: a.journal_port, stratum_port: a.stratum_port }).await
        }
    }
}

/// `registerbrygga users set|list|token`.
pub async fn users_cli(app: &App, cmd: UsersCmd) -> Result<i32> {
    let actor = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    match cmd {
        UsersCmd::Set { username, role, patient_data, units } => {
            if patient_data && crate::admin::Role::parse(&role) == Some(crate::admin::Role::Reader) {
                eprintln!("note: --patient-data has no effect for a läsare (läsare never see patient identities)");
            }
            let pw = match std::env::var("RB_NEW_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    eprintln!("password for {username} (one line on stdin):");
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            let units = units.as_deref().map(crate::admin::store::parse_units);
            let limited = units.as_ref().filter(|l| !l.is_empty()).map(|l| format!(", units {}", l.join(","))).unwrap_or_default();
            let (created, role) = crate::admin::set_user_from_cli(app, &username, &role, patient_data, units, pw, &actor).await?;
            println!("{} user {username} ({}{}{limited})", if created { "created" } else { "updated" }, role.as_str(), if patient_data { ", patient_data" } else { "" });
            Ok(0)
        }
        UsersCmd::Token { username, name, days } => {
            let (id, token, days) = crate::admin::mint_token_from_cli(app, &username, &name, days, &actor).await?;
            eprintln!("token {id} for {username}, valid {days} days (shown once):");
            println!("{token}");
            Ok(0)
        }
        UsersCmd::List { json } => {
            let users = crate::admin::store::users(&app.store).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                println!("{:<24} {:<10} {:<13} {:<9} {:<17} units", "username", "role", "patient_data", "disabled", "created");
                for u in users {
                    let units = if u.units.is_empty() { "(hela regionen)".to_string() } else { u.units.join(",") };
                    println!("{:<24} {:<10} {:<13} {:<9} {:<17} {units}", u.username, u.role.as_str(), u.patient_data, u.disabled, u.created.format("%Y-%m-%d %H:%M"));
                }
            }
            Ok(0)
        }
    }
}

/// An exported signed head: inline JSON, or the last non-empty line of a file of them.
fn read_signed_head(arg: &str) -> Result<crate::store::SignedHead> {
    let text = if arg.trim_start().starts_with('{') {
        arg.to_string()
    } else {
        let all = std::fs::read_to_string(arg).with_context(|| format!("cannot read {arg}"))?;
        all.lines().rev().find(|l| !l.trim().is_empty()).with_context(|| format!("{arg} holds no head"))?.to_string()
    };
    serde_json::from_str(&text).context("not a signed audit head (seq, hash, at_us, sig)")
}

/// Read a whole file and report it with its name.
pub fn read_file(p: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}
