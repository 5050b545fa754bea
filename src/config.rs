//! Layered configuration: `config/default.toml` → `config/<RB_ENV>.toml` → `--config FILE` →
//! `RB__SECTION__KEY` environment variables; connector definitions from `connectors/*/connector.toml`.
//!
//! Secrets (API keys, database URLs with passwords, encryption keys) are never literal values in a
//! file: they are written as `{ file = "…" }` or `{ env = "VAR" }` and read when needed.
//!
//! `check()` collects every problem at once, each naming file, key and reason.

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A problem found by `config check` (or at start-up): where, which key, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    pub key: String,
    pub reason: String,
    /// Warnings (e.g. unverified PVK code lists) do not fail the check.
    pub warning: bool,
}

impl Problem {
    pub fn error(file: impl Into<String>, key: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem { file: file.into(), key: key.into(), reason: reason.into(), warning: false }
    }
    pub fn warning(file: impl Into<String>, key: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem { file: file.into(), key: key.into(), reason: reason.into(), warning: true }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let level = if self.warning { "warning" } else { "error" };
        write!(f, "{level}: {}: {}: {}", self.file, self.key, self.reason)
    }
}

/// Where a secret comes from. Deliberately has no inline-value form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

impl Secret {
    pub fn from_env(var: &str) -> Secret {
        Secret { file: None, env: Some(var.to_string()) }
    }
    pub fn from_file(p: impl Into<PathBuf>) -> Secret {
        Secret { file: Some(p.into()), env: None }
    }
    /// Read the secret's bytes. Errors name the source, never the value.
    pub fn read_bytes(&self) -> Result<Vec<u8>> {
        if let Some(var) = &self.env {
            if let Ok(v) = std::env::var(var) {
                return Ok(v.into_bytes());
            }
            if self.file.is_none() {
                return Err(anyhow!("environment variable {var} is not set"));
            }
        }
        if let Some(p) = &self.file {
            return std::fs::read(p).with_context(|| format!("cannot read secret file {}", p.display()));
        }
        Err(anyhow!("secret has neither `file` nor `env`"))
    }
    pub fn read_string(&self) -> Result<String> {
        Ok(String::from_utf8(self.read_bytes()?).context("secret is not UTF-8")?.trim().to_string())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    /// `local`, `production`, … (selects `config/<environment>.toml`; set by RB_ENV).
    pub environment: String,
    /// Name of this replica in leases and audit events (default: hostname-pid).
    pub instance_id: Option<String>,
    pub connectors_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Stop (and release leases) within this many seconds of SIGTERM.
    pub shutdown_grace_seconds: u64,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            environment: "local".into(),
            instance_id: None,
            connectors_dir: "connectors".into(),
            data_dir: "var".into(),
            shutdown_grace_seconds: 20,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: Backend,
    pub sqlite_path: PathBuf,
    /// PostgreSQL URL (it holds a password, so it is a secret).
    pub postgres_url: Option<Secret>,
    pub max_connections: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings { backend: Backend::Sqlite, sqlite_path: "var/registerbrygga.db".into(), postgres_url: None, max_connections: 8 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    /// Keys for AES-256-GCM of payloads at rest; the first encrypts, all decrypt (rotation).
    pub encryption_keys: Vec<Secret>,
    /// Key of the HMAC that pseudonymises patient ids in logs and lookups.
    pub pseudonym_key: Option<Secret>,
    /// Key of the HMAC that chains the audit log (held outside the database, so database access
    /// alone cannot rewrite the log unnoticed). Strongly recommended; `config check` warns
    /// without it.
    pub audit_key: Option<Secret>,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        SecuritySettings { encryption_keys: vec![], pseudonym_key: None, audit_key: None }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    pub format: LogFormat,
    /// An EnvFilter directive, e.g. `info` or `registerbrygga=debug`.
    pub level: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings { format: LogFormat::Human, level: "info".into() }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    pub enabled: bool,
    pub listen: String,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Mark session cookies `Secure` (turn off only for plain-HTTP loopback demos).
    pub cookie_secure: bool,
    pub session_minutes: u64,
    /// A session unused this long ends (its cookie may still be within `session_minutes`).
    pub session_idle_minutes: u64,
    /// Longest validity of an API token (days); a token may be made shorter.
    pub token_days: u32,
    /// Failed sign-ins for one user name, and from one address, before each further failure
    /// doubles the wait (1 s, 2 s, 4 s … up to `login_max_delay_seconds`).
    pub login_free_failures_per_user: u32,
    pub login_free_failures_per_ip: u32,
    pub login_max_delay_seconds: u64,
    /// Password checks (argon2id, ~19 MiB each) run at once at most.
    pub password_checks_in_parallel: usize,
    /// Requests in progress at most (more are refused with 503), and each one's time limit.
    pub max_requests_in_progress: usize,
    pub request_timeout_seconds: u64,
    /// Initial admin password (only used when no user exists yet).
    pub bootstrap_admin_password: Option<Secret>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            tls_cert_file: None,
            tls_key_file: None,
            cookie_secure: true,
            session_minutes: 480,
            session_idle_minutes: 30,
            token_days: 90,
            login_free_failures_per_user: 5,
            login_free_failures_per_ip: 20,
            login_max_delay_seconds: 900,
            password_checks_in_parallel: 2,
            max_requests_in_progress: 64,
            request_timeout_seconds: 30,
            bootstrap_admin_password: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverySettings {
    pub enabled: bool,
    /// Concurrent senders per replica.
    pub workers: usize,
    pub batch_size: u32,
    pub lease_seconds: u64,
    pub heartbeat_seconds: u64,
    pub rescue_interval_seconds: u64,
    /// How long an idle worker waits before it looks for work again.
    pub poll_interval_ms: u64,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            enabled: true,
            workers: 4,
            batch_size: 64,
            lease_seconds: 60,
            heartbeat_seconds: 15,
            rescue_interval_seconds: 10,
            poll_interval_ms: 500,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerSettings {
    pub enabled: bool,
    /// How often a replica looks for due ticks.
    pub poll_seconds: u64,
    /// A connector run holds its lease this long and renews it while running.
    pub run_lease_seconds: u64,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings { enabled: true, poll_seconds: 15, run_lease_seconds: 120 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Events older than this are pruned (the chain stays verifiable from its anchor).
    pub retention_days: u32,
    /// The region's minimum retention of the log (its PDL access-log rule): neither
    /// `retention_days` nor `audit prune --older-than-days` may go below it.
    pub min_retention_days: u32,
    /// How often the signed audit head is exported to the log (and `head_export_file`); 0 = never.
    pub head_export_minutes: u64,
    /// Also append each signed head, one JSON line, to this file (keep it off the database host).
    pub head_export_file: Option<PathBuf>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings { retention_days: 3650, min_retention_days: 3650, head_export_minutes: 60, head_export_file: None }
    }
}

impl AuditSettings {
    /// The pruning cutoff for `days` (default `retention_days`), refused below the floor.
    pub fn prune_cutoff(&self, days: Option<u32>) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
        let days = days.unwrap_or(self.retention_days);
        if days < self.min_retention_days {
            anyhow::bail!("the audit log is kept at least {} days (audit.min_retention_days); {days} is below that", self.min_retention_days);
        }
        Ok(chrono::Utc::now() - chrono::Duration::days(days as i64))
    }
}

/// Client-side TLS: CA bundle and (for mTLS / SITHS) a client certificate and key.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsClientSettings {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key: Option<Secret>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    pub initial_delay_ms: u64,
    pub multiplier: f32,
    pub max_delay_ms: u64,
    pub max_attempts: u32,
    /// Give up after this long since the first attempt, whatever the count (0 = no limit).
    pub max_elapsed_seconds: u64,
    pub jitter: bool,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings { initial_delay_ms: 500, multiplier: 2.0, max_delay_ms: 300_000, max_attempts: 12, max_elapsed_seconds: 86_400, jitter: true }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitSettings {
    /// Consecutive transient failures that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit pauses the register before one trial send.
    pub open_seconds: u64,
    /// The longest a half-open trial may stay unanswered before another one is let through
    /// (a trial whose outcome never arrives must not pause the register for good).
    pub trial_seconds: u64,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings { failure_threshold: 20, open_seconds: 30, trial_seconds: 120 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UnitBinding {
    /// The journal's care unit.
    pub hsa_id: String,
    /// The register's UnitCode for it.
    pub unit_code: String,
    /// The unit's name as people know it; pages, exports and summaries show "name (HSA id)"
    /// (`crate::units`). Left out: the register's unit metadata names it, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A unit's name where the register has no code for it (`[registers.X].unit_names`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UnitName {
    pub hsa_id: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    /// The Stratum register API.
    Stratum,
    /// Files (XML + CSV) in a directory, for PVK tools that take files.
    Export,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegisterSettings {
    pub kind: RegisterKind,
    /// e.g. `https://boa.registercentrum.se` (the client appends `/stratum/api/...`).
    pub base_url: String,
    pub register_id: u32,
    pub api_key: Option<Secret>,
    pub tls: TlsClientSettings,
    pub units: Vec<UnitBinding>,
    /// Names of units the register has no code for, e.g. vårdcentraler whose PVK aggregates go
    /// to export files only; bound units are named in `units`. A list, not a table keyed by HSA
    /// id: the configuration loader lower-cases table keys.
    pub unit_names: Vec<UnitName>,
    pub timeout_seconds: u64,
    pub rate_limit_per_second: u32,
    pub metadata_refresh_hours: u64,
    pub retry: RetrySettings,
    pub circuit: CircuitSettings,
    /// Export registers: where files are written.
    pub export_dir: Option<PathBuf>,
    /// Registers that take only national identities (personnummer/samordningsnummer).
    pub national_ids_only: bool,
}

impl Default for RegisterSettings {
    fn default() -> Self {
        RegisterSettings {
            kind: RegisterKind::Stratum,
            base_url: String::new(),
            register_id: 0,
            api_key: None,
            tls: TlsClientSettings::default(),
            units: vec![],
            unit_names: Default::default(),
            timeout_seconds: 30,
            rate_limit_per_second: 200,
            metadata_refresh_hours: 24,
            retry: RetrySettings::default(),
            circuit: CircuitSettings::default(),
            export_dir: None,
            national_ids_only: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// RIV-TA SOAP services (through NTjP or directly).
    Riv,
    /// RIV-TA response documents dropped in a directory.
    Files,
    /// FHIR R4 REST.
    Fhir,
    /// The region's data warehouse over ODBC: one query per record kind (`sources::warehouse`).
    Sql,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceSettings {
    pub kind: SourceKind,
    /// RIV-TA: base URL to which `<domain path>/<Contract>/<major>/rivtabp21` is appended.
    /// FHIR: the FHIR base URL.
    pub base_url: String,
    /// RIV-TA `LogicalAddress` header (e.g. the national aggregating service's address).
    pub logical_address: String,
    /// Engagement index endpoint base (GetUpdates); empty = same as base_url.
    pub engagement_index_url: String,
    /// Our HSA id as the service consumer (x-rivta-original-serviceconsumer-hsaid).
    pub consumer_hsa_id: String,
    pub care_giver_hsa_id: String,
    pub tls: TlsClientSettings,
    pub timeout_seconds: u64,
    /// Refuse a response larger than this (bytes) as hostile.
    pub max_response_bytes: u64,
    /// Patients fetched in parallel.
    pub concurrency: usize,
    /// OIDs of regional reserve-number schemes accepted (kept and flagged).
    pub reserve_oids: Vec<String>,
    /// Code systems the mappers understand; anything else is refused with the field named.
    pub known_code_systems: Vec<String>,
    /// Files source: the drop directory and where processed/refused files go.
    pub directory: Option<PathBuf>,
    pub processed_directory: Option<PathBuf>,
    /// A file is read only after it has not changed for this long (half-written guard).
    pub settle_seconds: u64,
    /// FHIR: OAuth2 bearer token source (client credentials handled by the region's gateway).
    pub bearer_token: Option<Secret>,
    pub retry: RetrySettings,
    /// RIV-TA engagement index: source systems (HSA ids) whose engagements count; empty = all.
    pub source_systems: Vec<String>,
    /// FHIR: resources asked for per search page (`_count`).
    pub page_size: u32,
    /// FHIR: refuse a search page larger than this (bytes) as hostile; a page is held whole
    /// while it is parsed, so this is far below `max_response_bytes`.
    pub max_page_bytes: u64,
    /// RIV-TA: where GetActivities and GetObservations are limited to the connector's units.
    pub unit_filter: UnitFilter,
    /// RIV-TA: where observations (measurements, keyword answers) come from: the structured
    /// GetObservations contract, keyword notes (GetCareDocumentation read with the connector's
    /// `keywords.toml`), or both.
    pub observations: ObservationSource,
    /// SQL (data warehouse): the ODBC connection string, a secret (it holds the password).
    pub connection: Option<Secret>,
    /// SQL (data warehouse): the queries, one per record kind (see `sources::warehouse`).
    pub queries: WarehouseQueries,
    /// SQL (data warehouse): the source system named in provenance when a row gives none.
    pub source_system: String,
    /// Accept plain `http://` endpoints, and only on loopback (a sandbox or a local tunnel).
    /// Anything else must be `https://`.
    pub allow_plain_http_loopback: bool,
}

/// The data warehouse's queries. Each returns the documented columns (by name); `:patient`,
/// `:from`, `:to` and `:since` are bound as parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarehouseQueries {
    /// Patients with data changed since `:since` (column `patient_id`, optional `patient_id_type`).
    pub patients: Option<String>,
    pub care_contacts: Option<String>,
    pub diagnoses: Option<String>,
    pub activities: Option<String>,
    pub observations: Option<String>,
}

/// Where a RIV-TA source reads observations from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservationSource {
    /// GetObservations 1.1.
    #[default]
    Structured,
    /// GetCareDocumentation 2.1 keyword notes, read with the connector's keyword table.
    Notes,
    /// Both contracts.
    Both,
}

/// How GetActivities and GetObservations, whose `careUnitId` takes a single unit, are limited to
/// a connector's units (GetCareContacts and GetDiagnosis take them all in one request either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitFilter {
    /// One request per unit with `careUnitId`: the journal sends only what we may read. The
    /// choice under PDL (ask only for what the connector may read): other units' items never
    /// leave the journal. Costs 2 + 2 × units requests per patient.
    #[default]
    Request,
    /// One request per patient without `careUnitId`; items of other units are dropped on arrival
    /// (counted, never stored), and so are items whose unit cannot be told. 4 requests per
    /// patient, but other units' items cross the wire: a region turns this on deliberately.
    Response,
}

impl Default for SourceSettings {
    fn default() -> Self {
        SourceSettings {
            kind: SourceKind::Riv,
            base_url: String::new(),
            logical_address: "5565594230".into(),
            engagement_index_url: String::new(),
            consumer_hsa_id: String::new(),
            care_giver_hsa_id: String::new(),
            tls: TlsClientSettings::default(),
            timeout_seconds: 60,
            max_response_bytes: 2 * 1024 * 1024 * 1024,
            concurrency: 8,
            reserve_oids: vec![],
            known_code_systems: vec![
                crate::model::OID_ICD10SE.into(),
                crate::model::OID_KVA.into(),
                crate::model::OID_SNOMED_SE.into(),
            ],
            directory: None,
            processed_directory: None,
            settle_seconds: 5,
            bearer_token: None,
            retry: RetrySettings { initial_delay_ms: 200, max_attempts: 4, max_delay_ms: 5_000, ..RetrySettings::default() },
            source_systems: vec![],
            page_size: 100,
            max_page_bytes: 32 * 1024 * 1024,
            unit_filter: UnitFilter::Request,
            observations: ObservationSource::Structured,
            connection: None,
            queries: WarehouseQueries::default(),
            source_system: String::new(),
            allow_plain_http_loopback: false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    /// Population seed and size used by `demo` and `sandbox`.
    pub seed: u64,
    pub patients: u32,
    /// Bind address of the sandbox servers (ports are chosen freely when 0).
    pub host: String,
    pub journal_port: u16,
    pub stratum_port: u16,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings { seed: 2026, patients: 400, host: "127.0.0.1".into(), journal_port: 0, stratum_port: 0 }
    }
}

/// Everything outside the connector folders.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub service: ServiceSettings,
    pub store: StoreSettings,
    pub security: SecuritySettings,
    pub telemetry: TelemetrySettings,
    pub admin: AdminSettings,
    pub delivery: DeliverySettings,
    pub scheduler: SchedulerSettings,
    pub audit: AuditSettings,
    pub registers: BTreeMap<String, RegisterSettings>,
    pub sources: BTreeMap<String, SourceSettings>,
    pub sandbox: SandboxSettings,
}

// ---------------------------------------------------------------------------------------------
// Connector definitions

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorKind {
    /// A Stratum register's registrations, built by the register engine from the connector's
    /// mapping folder (`registers::engine`). `sar` is the earlier name (Svenska Artrosregistret
    /// was the first such connector) and still reads.
    #[serde(alias = "sar")]
    StratumRegister,
    /// Primärvårdskvalitet indicators.
    Pvk,
}

impl ConnectorKind {
    /// The earlier name of [`ConnectorKind::StratumRegister`], kept so code written against it
    /// reads on (SAR is one register connector among others now).
    #[allow(non_upper_case_globals)]
    pub const Sar: ConnectorKind = ConnectorKind::StratumRegister;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Ticks missed while no replica ran are skipped; the next regular tick runs.
    Skip,
    /// If any ticks were missed, run once now (not once per missed tick).
    RunOnce,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum PatientDiscovery {
    /// Engagement index `GetUpdates` since the watermark.
    EngagementIndex {
        /// Service domains to ask about.
        #[serde(default = "default_domains")]
        service_domains: Vec<String>,
    },
    /// A file with one personnummer per line (sites without the index).
    File { path: PathBuf },
    /// A SQL query returning one column of personnummer, run against `url`.
    Sql { url: Secret, query: String },
    /// Everything the source offers (files and FHIR sources, which are not per patient).
    All,
}

pub fn default_domains() -> Vec<String> {
    vec![
        "riv:clinicalprocess:logistics:logistics".into(),
        "riv:clinicalprocess:healthcond:description".into(),
        "riv:clinicalprocess:activity:actions".into(),
        "riv:clinicalprocess:healthcond:basic".into(),
    ]
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSettings {
    /// First run (no watermark yet) starts this many days back.
    #[serde(default = "default_initial_days")]
    pub initial_days: u32,
    /// Each run re-reads this much before the watermark (late and corrected documents).
    #[serde(default = "default_overlap_hours")]
    pub overlap_hours: u32,
    /// A changed patient's documents are fetched this many days back (episodes span a year+).
    #[serde(default = "default_history_days")]
    pub history_days: u32,
}

fn default_initial_days() -> u32 {
    730
}
fn default_overlap_hours() -> u32 {
    48
}
fn default_history_days() -> u32 {
    730
}

impl Default for WindowSettings {
    fn default() -> Self {
        WindowSettings { initial_days: default_initial_days(), overlap_hours: default_overlap_hours(), history_days: default_history_days() }
    }
}

/// `connectors/<name>/connector.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorDef {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub kind: ConnectorKind,
    /// Key into `[sources]`.
    pub source: String,
    /// Key into `[registers]`.
    pub register: String,
    /// Cron expression (5 fields, or 6 with seconds), evaluated in Europe/Stockholm.
    pub schedule: String,
    #[serde(default = "default_catch_up")]
    pub catch_up: CatchUp,
    /// HSA ids of the care units this connector reads and reports for.
    pub units: Vec<String>,
    #[serde(default)]
    pub window: WindowSettings,
    pub patients: PatientDiscovery,
    /// Kind-specific settings, read by the register module (e.g. the SAR mapping file name, the
    /// PVK rule years). Kept as TOML here so the foundation does not depend on the mappers.
    #[serde(default)]
    pub options: toml::Table,
    /// Folder the definition was read from (set by the loader).
    #[serde(skip)]
    pub dir: PathBuf,
}

fn yes() -> bool {
    true
}
fn default_catch_up() -> CatchUp {
    CatchUp::RunOnce
}

/// Settings plus connectors, as the daemon runs with them.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub settings: Settings,
    /// Sections that failed to deserialise (their defaults are in `settings`; checks skip them).
    pub failed_sections: Vec<String>,
    pub connectors: Vec<ConnectorDef>,
    /// Files that contributed, in order (for messages).
    pub files: Vec<PathBuf>,
}

/// Where to look for configuration.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Folder holding `default.toml` and `<env>.toml` (default `config`).
    pub config_dir: Option<PathBuf>,
    /// Extra file given with `--config`.
    pub extra_file: Option<PathBuf>,
    /// Environment name (default: RB_ENV, else `local`).
    pub environment: Option<String>,
    /// Overrides applied last (`section.key` → value), used by `demo` and tests.
    pub overrides: Vec<(String, String)>,
    /// Read RB__ variables (tests turn this off for isolation).
    pub skip_env: bool,
}

fn layered(opts: &LoadOptions) -> (config::ConfigBuilder<config::builder::DefaultState>, Vec<PathBuf>) {
    let dir = opts.config_dir.clone().unwrap_or_else(|| PathBuf::from("config"));
    let env_name = opts
        .environment
        .clone()
        .or_else(|| std::env::var("RB_ENV").ok())
        .unwrap_or_else(|| "local".to_string());
    let mut files = vec![];
    let mut b = config::Config::builder();
    for p in [dir.join("default.toml"), dir.join(format!("{env_name}.toml"))] {
        if p.exists() {
            b = b.add_source(config::File::from(p.as_path()).format(config::FileFormat::Toml));
            files.push(p);
        }
    }
    if let Some(p) = &opts.extra_file {
        b = b.add_source(config::File::from(p.as_path()).format(config::FileFormat::Toml).required(true));
        files.push(p.clone());
    }
    if !opts.skip_env {
        b = b.add_source(config::Environment::with_prefix("RB").prefix_separator("__").separator("__").try_parsing(true));
    }
    for (k, v) in &opts.overrides {
        b = b.set_override(k.as_str(), v.as_str()).expect("override keys are valid");
    }
    b = b.set_override("service.environment", env_name).expect("valid key");
    (b, files)
}

/// Never echo configuration values in messages: a secret pasted by mistake must not reach a
/// terminal or a log. Quoted values are elided.
fn scrub(msg: &str) -> String {
    if msg.contains("struct Secret") {
        return "a secret must be { file = \"…\" } or { env = \"VAR\" }, never a literal value".to_string();
    }
    let mut out = String::with_capacity(msg.len());
    let mut in_quote = false;
    for c in msg.chars() {
        if c == '"' {
            if in_quote {
                out.push_str("…\"");
            } else {
                out.push('"');
            }
            in_quote = !in_quote;
        } else if !in_quote {
            out.push(c);
        }
    }
    out
}

fn config_error_problem(e: &config::ConfigError, default_file: &str) -> Problem {
    let p = config_error_problem_raw(e, default_file);
    Problem { reason: scrub(&p.reason), ..p }
}

fn config_error_problem_raw(e: &config::ConfigError, default_file: &str) -> Problem {
    match e {
        config::ConfigError::Type { origin, unexpected, expected, key } => Problem::error(
            origin.clone().unwrap_or_else(|| default_file.to_string()),
            key.clone().unwrap_or_default(),
            format!("found {unexpected}, expected {expected}"),
        ),
        config::ConfigError::FileParse { uri, cause } => {
            Problem::error(uri.clone().unwrap_or_else(|| default_file.to_string()), "", format!("cannot parse: {cause}"))
        }
        other => Problem::error(default_file, "", other.to_string()),
    }
}

const SECTIONS: &[&str] = &["service", "store", "security", "telemetry", "admin", "delivery", "scheduler", "audit", "registers", "sources", "sandbox"];

/// Load settings and connectors, collecting every problem rather than stopping at the first.
pub fn load_collect(opts: &LoadOptions) -> (Option<Loaded>, Vec<Problem>) {
    let mut problems = vec![];
    let (builder, files) = layered(opts);
    let files_label = files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    let cfg = match builder.build() {
        Ok(c) => c,
        Err(e) => return (None, vec![config_error_problem(&e, &files_label)]),
    };
    // Unknown top-level sections.
    if let Ok(table) = cfg.get_table("") {
        for k in table.keys() {
            if !SECTIONS.contains(&k.as_str()) {
                problems.push(Problem::error(&files_label, k, "unknown section"));
            }
        }
    }
    // Deserialise section by section so one mistake does not hide the next.
    let mut settings = Settings::default();
    let mut failed: Vec<String> = vec![];
    macro_rules! section {
        ($name:literal, $field:ident) => {
            match cfg.get::<config::Value>($name) {
                Ok(v) => match serde_path_to_error::deserialize(v) {
                    Ok(x) => settings.$field = x,
                    Err(e) => {
                        failed.push($name.to_string());
                        // The path names the key inside the section; the inner error keeps the
                        // origin (file) when the config crate knows it.
                        let path = e.path().to_string();
                        let mut p = config_error_problem(e.inner(), &files_label);
                        p.key = if path.is_empty() || path == "." { $name.to_string() } else { format!("{}.{}", $name, path) };
                        problems.push(p)
                    }
                },
                Err(config::ConfigError::NotFound(_)) => {}
                Err(e) => {
                    failed.push($name.to_string());
                    let mut p = config_error_problem(&e, &files_label);
                    p.key = $name.to_string();
                    problems.push(p)
                }
            }
        };
    }
    section!("service", service);
    section!("store", store);
    section!("security", security);
    section!("telemetry", telemetry);
    section!("admin", admin);
    section!("delivery", delivery);
    section!("scheduler", scheduler);
    section!("audit", audit);
    section!("registers", registers);
    section!("sources", sources);
    section!("sandbox", sandbox);

    let (connectors, mut cproblems) = load_connectors(&settings.service.connectors_dir);
    problems.append(&mut cproblems);
    (Some(Loaded { settings, failed_sections: failed, connectors, files }), problems)
}

/// Load, failing on the first error (for `run`; `config check` uses `check`).
pub fn load(opts: &LoadOptions) -> Result<Loaded> {
    let (loaded, problems) = load_collect(opts);
    let errors: Vec<_> = problems.iter().filter(|p| !p.warning).collect();
    if !errors.is_empty() {
        let text = errors.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n");
        return Err(anyhow!("configuration has {} problem(s):\n{text}", errors.len()));
    }
    loaded.ok_or_else(|| anyhow!("configuration could not be loaded"))
}

/// Read every `connectors/*/connector.toml`.
pub fn load_connectors(dir: &Path) -> (Vec<ConnectorDef>, Vec<Problem>) {
    let mut out = vec![];
    let mut problems = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        problems.push(Problem::error(dir.display().to_string(), "service.connectors_dir", "folder not found"));
        return (out, problems);
    };
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    for d in dirs {
        let file = d.join("connector.toml");
        if !file.exists() {
            continue;
        }
        let label = file.display().to_string();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::error(&label, "", format!("cannot read: {e}")));
                continue;
            }
        };
        match toml::from_str::<ConnectorDef>(&text) {
            Ok(mut c) => {
                c.dir = d.clone();
                out.push(c);
            }
            Err(e) => {
                let key = e.span().map(|s| line_of(&text, s.start)).unwrap_or_default();
                problems.push(Problem::error(&label, key, e.message().to_string()));
            }
        }
    }
    (out, problems)
}

fn line_of(text: &str, offset: usize) -> String {
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    let content = text.lines().nth(line - 1).unwrap_or("").trim();
    format!("line {line} `{content}`")
}

/// Validation of the loaded configuration that needs no I/O beyond reading local files.
/// Schedules and register-specific checks (mapping columns against metadata, PVK code lists)
/// are added by `crate::checks`, which calls into the scheduler and the register modules.
pub fn check_static(loaded: &Loaded) -> Vec<Problem> {
    let s = &loaded.settings;
    let mut p = vec![];
    let main_file = loaded.files.first().map(|f| f.display().to_string()).unwrap_or_else(|| "config".into());
    if s.store.backend == Backend::Postgres && s.store.postgres_url.is_none() {
        p.push(Problem::error(&main_file, "store.postgres_url", "backend is postgres but no postgres_url secret is given"));
    }
    if let Some(secret) = &s.store.postgres_url {
        check_secret(&mut p, &main_file, "store.postgres_url", secret);
        check_pg_tls(&mut p, &main_file, "store.postgres_url", secret);
    }
    let security_ok = !loaded.failed_sections.iter().any(|f| f == "security");
    if security_ok && s.security.encryption_keys.is_empty() {
        p.push(Problem::error(&main_file, "security.encryption_keys", "no encryption key configured (payloads are encrypted at rest)"));
    }
    for (i, k) in s.security.encryption_keys.iter().enumerate() {
        let key = format!("security.encryption_keys[{i}]");
        match k.read_bytes() {
            Ok(b) => {
                if let Err(e) = crate::crypto::decode_key(&b) {
                    p.push(Problem::error(&main_file, &key, e.to_string()));
                }
            }
            Err(e) => p.push(Problem::error(&main_file, &key, format!("{e}{}", missing_secret_hint(&key, k)))),
        }
    }
    match &s.security.pseudonym_key {
        None if !security_ok => {}
        None => p.push(Problem::error(&main_file, "security.pseudonym_key", "no pseudonym key configured")),
        Some(k) => check_secret(&mut p, &main_file, "security.pseudonym_key", k),
    }
    match &s.security.audit_key {
        None if !security_ok => {}
        None => p.push(Problem::warning(
            &main_file,
            "security.audit_key",
            "no audit key: the audit chain is plain SHA-256, which anyone who can write the database can recompute after an edit",
        )),
        Some(k) => match k.read_bytes() {
            Ok(b) => {
                if let Err(e) = crate::crypto::decode_key(&b) {
                    p.push(Problem::error(&main_file, "security.audit_key", e.to_string()));
                }
            }
            Err(e) => p.push(Problem::error(&main_file, "security.audit_key", e.to_string())),
        },
    }
    if s.audit.retention_days < s.audit.min_retention_days {
        p.push(Problem::error(
            &main_file,
            "audit.retention_days",
            format!("{} is below audit.min_retention_days ({}), the region's minimum for the access log", s.audit.retention_days, s.audit.min_retention_days),
        ));
    }
    if s.admin.tls_cert_file.is_some() != s.admin.tls_key_file.is_some() {
        p.push(Problem::error(&main_file, "admin.tls_cert_file", "TLS needs both tls_cert_file and tls_key_file"));
    }
    for (name, r) in &s.registers {
        let k = format!("registers.{name}");
        if r.kind == RegisterKind::Stratum {
            if r.base_url.is_empty() {
                p.push(Problem::error(&main_file, format!("{k}.base_url"), "missing"));
            } else if !(r.base_url.starts_with("https://") || r.base_url.starts_with("http://127.") || r.base_url.starts_with("http://localhost")) {
                p.push(Problem::error(&main_file, format!("{k}.base_url"), "must be https:// (plain http only on loopback)"));
            }
            if r.register_id == 0 {
                p.push(Problem::error(&main_file, format!("{k}.register_id"), "missing"));
            }
        }
        if r.kind == RegisterKind::Export && r.export_dir.is_none() {
            p.push(Problem::error(&main_file, format!("{k}.export_dir"), "an export register needs export_dir"));
        }
        for (i, u) in r.units.iter().enumerate() {
            if let Err(e) = crate::model::HsaId::parse(&u.hsa_id) {
                p.push(Problem::error(&main_file, format!("{k}.units[{i}].hsa_id"), e.to_string()));
            }
        }
        for (i, u) in r.unit_names.iter().enumerate() {
            if let Err(e) = crate::model::HsaId::parse(&u.hsa_id) {
                p.push(Problem::error(&main_file, format!("{k}.unit_names[{i}].hsa_id"), e.to_string()));
            }
        }
        if r.retry.multiplier < 1.0 {
            p.push(Problem::error(&main_file, format!("{k}.retry.multiplier"), "must be at least 1.0"));
        }
        if r.retry.max_attempts == 0 && r.retry.max_elapsed_seconds == 0 {
            p.push(Problem::error(&main_file, format!("{k}.retry"), "set max_attempts or max_elapsed_seconds, or records would retry forever"));
        }
        if let Some(key) = &r.api_key {
            check_secret(&mut p, &main_file, &format!("{k}.api_key"), key);
        }
    }
    for (name, src) in &s.sources {
        let k = format!("sources.{name}");
        match src.kind {
            SourceKind::Riv | SourceKind::Fhir => {
                if src.base_url.is_empty() {
                    p.push(Problem::error(&main_file, format!("{k}.base_url"), "missing"));
                } else if let Err(e) = crate::sources::check_transport("base_url", &src.base_url, src.allow_plain_http_loopback) {
                    p.push(Problem::error(&main_file, format!("{k}.base_url"), e));
                }
                if !src.engagement_index_url.is_empty() {
                    if let Err(e) = crate::sources::check_transport("engagement_index_url", &src.engagement_index_url, src.allow_plain_http_loopback) {
                        p.push(Problem::error(&main_file, format!("{k}.engagement_index_url"), e));
                    }
                }
            }
            SourceKind::Files => {
                if src.directory.is_none() {
                    p.push(Problem::error(&main_file, format!("{k}.directory"), "a files source needs a directory"));
                }
            }
            SourceKind::Sql => {
                match &src.connection {
                    None => p.push(Problem::error(&main_file, format!("{k}.connection"), "a sql source needs an ODBC connection string (a secret)")),
                    Some(c) => check_secret(&mut p, &main_file, &format!("{k}.connection"), c),
                }
                let q = &src.queries;
                for (key, query) in [("care_contacts", &q.care_contacts), ("diagnoses", &q.diagnoses), ("activities", &q.activities)] {
                    if query.as_deref().is_none_or(|s| s.trim().is_empty()) {
                        p.push(Problem::error(&main_file, format!("{k}.queries.{key}"), "missing"));
                    }
                }
            }
        }
        if src.kind == SourceKind::Riv && !src.consumer_hsa_id.is_empty() {
            if let Err(e) = crate::model::HsaId::parse(&src.consumer_hsa_id) {
                p.push(Problem::error(&main_file, format!("{k}.consumer_hsa_id"), e.to_string()));
            }
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for c in &loaded.connectors {
        let f = c.dir.join("connector.toml").display().to_string();
        if !names.insert(c.name.clone()) {
            p.push(Problem::error(&f, "name", format!("connector name '{}' is used twice", c.name)));
        }
        if !s.sources.contains_key(&c.source) {
            p.push(Problem::error(&f, "source", format!("no source named '{}' in [sources]", c.source)));
        }
        if !s.registers.contains_key(&c.register) {
            p.push(Problem::error(&f, "register", format!("no register named '{}' in [registers]", c.register)));
        }
        if c.units.is_empty() {
            p.push(Problem::error(&f, "units", "no care units listed"));
        }
        for (i, u) in c.units.iter().enumerate() {
            if let Err(e) = crate::model::HsaId::parse(u) {
                p.push(Problem::error(&f, format!("units[{i}]"), e.to_string()));
            } else if let Some(reg) = s.registers.get(&c.register) {
                if reg.kind == RegisterKind::Stratum && !reg.units.iter().any(|b| &b.hsa_id == u) {
                    let text = format!("unit {u} has no binding in [registers.{}].units", c.register);
                    // PVK aggregates of an unbound unit (e.g. a vårdcentral) go to export files only.
                    p.push(if c.kind == ConnectorKind::Pvk {
                        Problem::warning(&f, format!("units[{i}]"), format!("{text}: its aggregates go to export files only"))
                    } else {
                        Problem::error(&f, format!("units[{i}]"), text)
                    });
                }
            }
        }
        if let PatientDiscovery::Sql { url, .. } = &c.patients {
            check_pg_tls(&mut p, &f, "patients.url", url);
        }
        if let PatientDiscovery::File { path } = &c.patients {
            let full = if path.is_absolute() { path.clone() } else { c.dir.join(path) };
            if !full.exists() {
                p.push(Problem::error(&f, "patients.path", format!("file {} not found", full.display())));
            }
        }
    }
    p
}

/// A PostgreSQL connection that leaves the host carries personal data and passwords: the
/// runbook asks for `sslmode=verify-full` (TLS, the server's certificate checked against
/// `sslrootcert` or the system's roots, and its name against the host). Anything weaker is a
/// warning naming the setting; loopback and Unix-socket connections are exempt. The URL itself
/// is never quoted (it holds a password).
pub fn check_pg_tls(p: &mut Vec<Problem>, file: &str, key: &str, secret: &Secret) {
    let Ok(url) = secret.read_string() else { return }; // unreadable secrets are reported elsewhere
    let url = url.trim();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return;
    }
    let Ok(u) = reqwest::Url::parse(url) else {
        p.push(Problem::error(file, key, "not a valid PostgreSQL URL"));
        return;
    };
    let param = |name: &str| u.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.to_string());
    let host = param("host").unwrap_or_else(|| u.host_str().unwrap_or("").to_string());
    let local = host.is_empty()
        || host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if local {
        return;
    }
    match param("sslmode").as_deref() {
        Some("verify-full") => {}
        Some("verify-ca") => p.push(Problem::warning(file, key, "sslmode=verify-ca checks the certificate's CA but not that it names the host: use sslmode=verify-full")),
        Some(m @ ("disable" | "allow" | "prefer" | "require")) => p.push(Problem::warning(
            file,
            key,
            format!("sslmode={m} does not verify the server (or does not encrypt): use sslmode=verify-full (with sslrootcert=<CA file> for a private CA)"),
        )),
        Some(other) => p.push(Problem::error(file, key, format!("unknown sslmode {other:?}"))),
        None => p.push(Problem::warning(file, key, "no sslmode: the default (prefer) falls back to plain text and never verifies the server; use sslmode=verify-full")),
    }
}

fn check_secret(p: &mut Vec<Problem>, file: &str, key: &str, secret: &Secret) {
    if secret.file.is_none() && secret.env.is_none() {
        p.push(Problem::error(file, key, "a secret needs `file` or `env`"));
    } else if let Err(e) = secret.read_bytes() {
        p.push(Problem::error(file, key, format!("{e}{}", missing_secret_hint(key, secret))));
    }
}

/// How to create a missing secret file: the sandbox's own files come from `registerbrygga
/// sandbox` (which the shipped `config/local.toml` points at); a key is 32 random bytes.
fn missing_secret_hint(key: &str, secret: &Secret) -> String {
    let Some(f) = secret.file.as_ref().filter(|f| !f.exists()) else { return String::new() };
    if f.components().any(|c| c.as_os_str() == "sandbox") {
        format!(" — `registerbrygga sandbox` creates it (the sandbox's keys, certificates and API key under {}; README, \"First run\")", f.parent().map(|d| d.display().to_string()).unwrap_or_default())
    } else if key.starts_with("security.") {
        format!(" — a key is 32 random bytes: `openssl rand -base64 32 > {}` (docs/runbook.md, \"Configure a region\")", f.display())
    } else {
        String::new()
    }
}

impl Loaded {
    pub fn connector(&self, name: &str) -> Option<&ConnectorDef> {
        self.connectors.iter().find(|c| c.name == name)
    }
}
