//! Admin side: HTTP API, Swedish web pages, users and roles, metrics, health.
//!
//! One axum router serves everything. Every route except `/healthz`, `/readyz` and `/login`
//! needs a session cookie (pages) or `Authorization: Bearer <token>` (scripts, Prometheus); the
//! check runs in front of routing, so an unauthenticated client gets the same 401 for a route
//! that exists and one that does not. Every form carries a CSRF token: the session's on signed-in
//! pages, and on the sign-in form a token that must match its own cookie (double submit). The
//! route table below is also what the OpenAPI test compares `/api/v1/openapi.json` against.

pub mod api;
pub mod auth;
pub mod guard;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod status;
pub mod store;

use crate::app::App;
use crate::audit::{correlation_id, kind, NewAuditEvent};
use anyhow::{bail, Context, Result};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use auth::Principal;
pub use metrics::{record_circuit, record_run, record_send};
pub use store::Role;

/// When each connector runs next (the scheduler knows; `None` = not scheduled).
pub type NextRuns = Arc<dyn Fn() -> Vec<(String, Option<DateTime<Utc>>)> + Send + Sync>;
/// Readiness of the daemon's own parts (e.g. each register's metadata loaded).
pub type Readiness = Arc<dyn Fn() -> Vec<ReadinessCheck> + Send + Sync>;
/// Unit names from the registers' live metadata (HSA id, name), for "name (HSA id)".
pub type UnitMetadataNames = Arc<dyn Fn() -> Vec<(String, String)> + Send + Sync>;
/// Warnings to show on the pages, e.g. PVK code lists not yet verified against their source.
pub type Warnings = Arc<dyn Fn() -> Vec<Warning> + Send + Sync>;
pub type Statuses = Arc<dyn Fn() -> Vec<status::ConnectorStatus> + Send + Sync>;

#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct ReadinessCheck {
    pub name: String,
    pub ok: bool,
    /// Short reason when not ok (no personal data).
    pub detail: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct Warning {
    /// Where it belongs: `pvk`, `sar`, `config`, …
    pub area: String,
    pub text: String,
}

/// Everything the admin handlers need. The daemon fills the providers; defaults say "unknown"
/// (next runs "–", no extra readiness checks, no warnings).
#[derive(Clone)]
pub struct AdminState {
    pub app: App,
    pub next_runs: NextRuns,
    pub readiness: Readiness,
    pub warnings: Warnings,
    /// The configuration's status per connector (code lists, rule sets, indicators): one panel
    /// on the overview, details on the settings page.
    pub status: Statuses,
    /// Unit names the registers' live metadata gives (the daemon fills it; empty by default).
    pub unit_metadata_names: UnitMetadataNames,
    /// Sign-in delays, the password-check and request limits, batched failure auditing.
    pub guard: Arc<guard::Guard>,
}

impl AdminState {
    pub fn new(app: App) -> AdminState {
        let guard = Arc::new(guard::Guard::new(&app.settings().admin));
        AdminState { app, next_runs: Arc::new(Vec::new), readiness: Arc::new(Vec::new), warnings: Arc::new(Vec::new), status: Arc::new(Vec::new), unit_metadata_names: Arc::new(Vec::new), guard }
    }
    pub fn with_next_runs(mut self, f: impl Fn() -> Vec<(String, Option<DateTime<Utc>>)> + Send + Sync + 'static) -> Self {
        self.next_runs = Arc::new(f);
        self
    }
    pub fn with_readiness(mut self, f: impl Fn() -> Vec<ReadinessCheck> + Send + Sync + 'static) -> Self {
        self.readiness = Arc::new(f);
        self
    }
    pub fn with_warnings(mut self, f: impl Fn() -> Vec<Warning> + Send + Sync + 'static) -> Self {
        self.warnings = Arc::new(f);
        self
    }
    pub fn with_status(mut self, f: impl Fn() -> Vec<status::ConnectorStatus> + Send + Sync + 'static) -> Self {
        self.status = Arc::new(f);
        self
    }
    pub fn with_unit_metadata_names(mut self, f: impl Fn() -> Vec<(String, String)> + Send + Sync + 'static) -> Self {
        self.unit_metadata_names = Arc::new(f);
        self
    }
    /// Unit names for the pages: configuration, the registers' live metadata, metadata files.
    pub fn unit_names(&self) -> crate::units::UnitNames {
        crate::units::UnitNames::from_loaded_with(&self.app.loaded, (self.unit_metadata_names)())
    }
    pub fn settings(&self) -> &crate::config::AdminSettings {
        &self.app.settings().admin
    }
}

type Entry = (&'static str, &'static str, MethodRouter<AdminState>);

/// The route table: (method, path, handler). The router is built from it and the OpenAPI test
/// checks it against the hand-written description.
fn table() -> Vec<Entry> {
    vec![
        // Operations
        ("GET", "/healthz", get(api::healthz)),
        ("GET", "/readyz", get(api::readyz)),
        ("GET", "/metrics", get(metrics::handler)),
        // Sign-in
        ("GET", "/login", get(auth::login_page)),
        ("POST", "/login", post(auth::login_submit)),
        ("POST", "/logout", post(auth::logout)),
        // Pages
        ("GET", "/", get(pages::overview)),
        ("GET", "/mottagning", get(pages::clinic_choose)),
        ("GET", "/mottagning/{hsa}", get(pages::clinic)),
        ("GET", "/overforingar", get(pages::transfers)),
        ("GET", "/overforingar/{id}", get(pages::transfer)),
        ("POST", "/overforingar/{id}/personuppgifter", post(pages::transfer_with_payload)),
        ("POST", "/overforingar/{id}/aterkalla", post(pages::retract)),
        ("GET", "/misslyckade", get(pages::failed)),
        ("POST", "/misslyckade/forsok-igen", post(pages::replay)),
        ("GET", "/att-komplettera", get(pages::worklist)),
        ("POST", "/att-komplettera", post(pages::worklist_identities)),
        ("POST", "/att-komplettera/hanterad", post(pages::worklist_handled)),
        ("GET", "/tackningsgrad", get(pages::coverage)),
        ("GET", "/artrosregistret/indikatorer", get(pages::sar_indicators)),
        ("GET", "/pvk", get(pages::pvk)),
        ("GET", "/pvk/patientlista", get(pages::pvk_list_form)),
        ("POST", "/pvk/patientlista", post(pages::pvk_list)),
        ("GET", "/granskningslogg", get(pages::audit)),
        ("GET", "/karantan", get(pages::quarantine)),
        ("POST", "/karantan/{id}/losa", post(pages::resolve_quarantine)),
        ("GET", "/anvandare", get(pages::users)),
        ("POST", "/anvandare", post(pages::user_save)),
        ("POST", "/anvandare/nycklar", post(pages::token_create)),
        ("POST", "/anvandare/nycklar/{id}/aterkalla", post(pages::token_revoke)),
        ("GET", "/installningar", get(pages::settings)),
        // JSON API
        ("GET", "/api/v1/openapi.json", get(openapi::handler)),
        ("GET", "/api/v1/health", get(api::health)),
        ("GET", "/api/v1/me", get(api::me)),
        ("GET", "/api/v1/overview", get(api::overview)),
        ("GET", "/api/v1/runs", get(api::runs)),
        ("GET", "/api/v1/records", get(api::records)),
        ("GET", "/api/v1/records/{id}", get(api::record)),
        ("GET", "/api/v1/records/{id}/attempts", get(api::record_attempts)),
        ("POST", "/api/v1/records/{id}/retract", post(api::retract)),
        ("POST", "/api/v1/records/{id}/lift-hold", post(api::lift_hold)),
        ("GET", "/api/v1/dead-letters", get(api::dead_letters)),
        ("POST", "/api/v1/replay", post(api::replay)),
        ("GET", "/api/v1/quarantine", get(api::quarantine)),
        ("POST", "/api/v1/quarantine/{id}/resolve", post(api::resolve_quarantine)),
        ("GET", "/api/v1/worklists", get(api::worklists)),
        ("GET", "/api/v1/coverage/sar", get(api::sar_coverage)),
        ("GET", "/api/v1/sar/indicators", get(api::sar_indicators)),
        ("GET", "/api/v1/pvk/results", get(api::pvk_results)),
        ("GET", "/api/v1/pvk/patient-list", get(api::pvk_patient_list)),
        ("GET", "/api/v1/audit", get(api::audit)),
        ("GET", "/api/v1/audit/verify", get(api::audit_verify)),
        ("GET", "/api/v1/users", get(api::users)),
        ("GET", "/api/v1/tokens", get(api::tokens)),
        ("POST", "/api/v1/tokens", post(api::token_create)),
        ("DELETE", "/api/v1/tokens/{id}", delete(api::token_revoke)),
        ("GET", "/api/v1/config", get(api::config)),
    ]
}

/// Every (method, path) the router serves.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// Paths reachable without credentials.
pub(crate) const PUBLIC_PATHS: &[&str] = &["/healthz", "/readyz", "/login"];

pub fn router(state: AdminState) -> Router {
    metrics::install();
    let mut r: Router<AdminState> = Router::new();
    for (_, path, mr) in table() {
        r = r.route(path, mr);
    }
    r.fallback(not_found)
        // Inside authentication: every page table as CSV (`?format=csv&tabell=N`) and its link.
        .layer(axum::middleware::from_fn(pages::csv::tables))
        // Added after the routes and the fallback, so it wraps both: unknown paths are
        // authenticated too and reveal nothing to a client without credentials.
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::middleware))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn(log_request))
        // Outermost: bounds requests in progress and their time before anything else runs.
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::limit_requests))
        .with_state(state)
}

async fn not_found(req: axum::extract::Request) -> Response {
    if req.uri().path().starts_with("/api/") {
        Fail::NotFound.api()
    } else {
        Fail::NotFound.page()
    }
}

/// One log line per request: method, the route *template* (never the raw path or query, which
/// may carry search text or a stated reason), status and time. Reads at debug level; changes,
/// refusals and errors at info/warn, so Prometheus scrapes do not flood the log.
async fn log_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = req.method().clone();
    let route = req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "(unrouted)".into());
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    if status >= 500 {
        tracing::warn!(%method, route, status, ms, "admin request");
    } else if method != axum::http::Method::GET || status >= 400 {
        tracing::info!(%method, route, status, ms, "admin request");
    } else {
        tracing::debug!(%method, route, status, ms, "admin request");
    }
    res
}

/// Headers on every response: no caching of pages that may hold personal data, no framing, no
/// scripts (the pages need none), no referrer leaking query strings.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    res
}

/// Serve the admin side on `listener` until `shutdown` resolves, with the default providers.
pub async fn serve(app: App, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    serve_with(AdminState::new(app), listener, shutdown).await
}

/// Serve with providers filled by the daemon. TLS (rustls) when `admin.tls_cert_file` and
/// `admin.tls_key_file` are set; plain HTTP otherwise.
pub async fn serve_with(state: AdminState, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    bootstrap_admin(&state.app).await?;
    let settings = state.settings().clone();
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => {
            let cfg = crate::sandbox::tls::server_config_from_files(cert, key).context("admin TLS")?;
            let std_listener = listener.into_std()?;
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                h.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
            });
            axum_server::from_tcp_rustls(std_listener, axum_server::tls_rustls::RustlsConfig::from_config(cfg)).handle(handle).serve(app).await?;
        }
        (None, None) => axum::serve(listener, app).with_graceful_shutdown(shutdown).await?,
        _ => bail!("admin TLS needs both tls_cert_file and tls_key_file"),
    }
    Ok(())
}

/// Create the first admin from `admin.bootstrap_admin_password` when there is no user at all.
pub async fn bootstrap_admin(app: &App) -> Result<()> {
    let Some(secret) = &app.settings().admin.bootstrap_admin_password else { return Ok(()) };
    if store::user_count(&app.store).await? > 0 {
        return Ok(());
    }
    let pw = secret.read_string().context("admin.bootstrap_admin_password")?;
    auth::check_password_strength(&pw).context("admin.bootstrap_admin_password")?;
    let hash = auth::hash_password(pw).await?;
    store::put_user(&app.store, "admin", Some(&hash), Role::Admin, false, false).await?;
    app.store
        .audit(vec![NewAuditEvent::by(
            crate::audit::SYSTEM,
            kind::USER_CHANGED,
            &correlation_id(),
            "user:admin",
            serde_json::json!({"action": "bootstrap", "role": Role::Admin.as_str(), "patient_data": false}),
        )])
        .await?;
    tracing::info!("created the bootstrap admin user `admin`");
    Ok(())
}

/// `users set` (command line): create or update `username` with `role` (läsare, operatör or
/// admin) and `password` (checked for strength), audited as done by `actor` via the CLI.
/// `units`: `Some(list)` limits the user to those care units (HSA ids; empty = the whole
/// region), `None` keeps the current list. Returns whether the user was created, and the role.
pub async fn set_user_from_cli(app: &App, username: &str, role: &str, patient_data: bool, units: Option<Vec<String>>, password: String, actor: &str) -> Result<(bool, Role)> {
    let role = Role::parse(role).with_context(|| format!("unknown role {role:?}: use läsare, operatör or admin"))?;
    auth::check_username(username)?;
    if let Some(list) = &units {
        for u in list {
            crate::model::HsaId::parse(u).map_err(|e| anyhow::anyhow!("--units: {u:?}: {e}"))?;
        }
    }
    auth::check_password_strength(&password)?;
    let hash = auth::hash_password(password).await?;
    let created = store::put_user(&app.store, username, Some(&hash), role, patient_data, false).await?;
    if let Some(list) = &units {
        store::set_user_units(&app.store, username, list).await?;
    }
    app.store
        .audit(vec![NewAuditEvent::by(
            actor,
            kind::USER_CHANGED,
            &correlation_id(),
            format!("user:{username}"),
            serde_json::json!({"action": if created { "created" } else { "updated" }, "role": role.as_str(), "patient_data": patient_data, "units": units, "password_set": true, "via": "cli"}),
        )])
        .await?;
    Ok((created, role))
}

/// `users token` (command line): an API token acting as `username`, valid `days` (at most, and by
/// default, `admin.token_days`). Returns the token's id, the token (shown once) and its days.
pub async fn mint_token_from_cli(app: &App, username: &str, name: &str, days: Option<u32>, actor: &str) -> Result<(i64, String, u32)> {
    let max = app.settings().admin.token_days.max(1);
    let days = days.unwrap_or(max);
    if days == 0 || days > max {
        bail!("--days must be 1–{max} (admin.token_days)");
    }
    let (id, token) = auth::mint_token(&app.store, name.trim(), username, &format!("{actor} (cli)"), days).await?;
    Ok((id, token, days))
}

// ---------------------------------------------------------------------------------------------
// Errors: one kind, two renderings (JSON for the API, a Swedish page for browsers)

#[derive(Debug)]
pub enum Fail {
    Unauthorized,
    Forbidden,
    NotFound,
    BadRequest(String),
    Csrf,
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Fail {
        Fail::Internal(e)
    }
}

impl Fail {
    fn status(&self) -> StatusCode {
        match self {
            Fail::Unauthorized => StatusCode::UNAUTHORIZED,
            Fail::Forbidden | Fail::Csrf => StatusCode::FORBIDDEN,
            Fail::NotFound => StatusCode::NOT_FOUND,
            Fail::BadRequest(_) => StatusCode::BAD_REQUEST,
            Fail::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    fn log(&self) {
        if let Fail::Internal(e) = self {
            // The telemetry writer redacts identity-shaped digits; errors carry none by design.
            tracing::error!(error = %format!("{e:#}"), "admin request failed");
        }
    }
    fn code(&self) -> &'static str {
        match self {
            Fail::Unauthorized => "unauthorized",
            Fail::Forbidden => "forbidden",
            Fail::Csrf => "csrf",
            Fail::NotFound => "not_found",
            Fail::BadRequest(_) => "bad_request",
            Fail::Internal(_) => "internal",
        }
    }
    fn message_sv(&self) -> String {
        match self {
            Fail::Unauthorized => "Inloggning krävs.".into(),
            Fail::Forbidden => "Du har inte behörighet till detta.".into(),
            Fail::Csrf => "Formuläret kunde inte verifieras (CSRF). Ladda om sidan och försök igen.".into(),
            Fail::NotFound => "Sidan eller posten finns inte.".into(),
            Fail::BadRequest(m) => m.clone(),
            Fail::Internal(_) => "Ett internt fel inträffade. Händelsen är loggad.".into(),
        }
    }
    pub fn api(self) -> Response {
        self.log();
        (self.status(), axum::Json(serde_json::json!({"error": self.code(), "message": self.message_sv()}))).into_response()
    }
    pub fn page(self) -> Response {
        self.log();
        let title = match self {
            Fail::Forbidden | Fail::Csrf => "Åtkomst nekad",
            Fail::NotFound => "Hittades inte",
            Fail::BadRequest(_) => "Felaktig begäran",
            _ => "Fel",
        };
        (self.status(), axum::response::Html(pages::error_page(title, &self.message_sv()))).into_response()
    }
}

/// An error rendered as JSON.
pub struct ApiError(pub Fail);
/// An error rendered as a Swedish HTML page.
pub struct PageError(pub Fail);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.api()
    }
}
impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        self.0.page()
    }
}
impl<E: Into<Fail>> From<E> for ApiError {
    fn from(e: E) -> ApiError {
        ApiError(e.into())
    }
}
impl<E: Into<Fail>> From<E> for PageError {
    fn from(e: E) -> PageError {
        PageError(e.into())
    }
}
