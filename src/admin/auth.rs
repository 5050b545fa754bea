//! Sign-in, sessions, API tokens, roles and CSRF.
//!
//! - Passwords: argon2id (PHC string in `users.password_hash`).
//! - Sessions: random 32-byte tokens; only their SHA-256 is stored, with an expiry and an idle
//!   timeout (`admin.session_idle_minutes`). The cookie is `HttpOnly; SameSite=Strict`, and with
//!   `admin.cookie_secure` it is `Secure` and named with the `__Host-` prefix (the browser then
//!   refuses it from a sibling domain or over plain HTTP).
//! - API tokens (`rbt_…`): random 32 bytes, stored as SHA-256, acting as their owner only: a
//!   signed-in user mints tokens for themself (an admin cannot mint one for someone else; the
//!   command line `users token` can, for service users such as Prometheus). They expire
//!   (`admin.token_days`), are revoked when the owner's password changes, and every event a
//!   token causes names it (actor `user/token:<id>`).
//! - CSRF: a random token per session, required on every state-changing request that a browser
//!   could send on its own (cookie sessions); bearer tokens are never sent implicitly.
//! - A failed sign-in gets one answer whatever the cause (unknown user, wrong password, disabled)
//!   and takes the same time: an unknown user is checked against a dummy hash.

use super::store::{self as db, Role, UnitScope, User};
use super::{AdminState, Fail, PUBLIC_PATHS};
use crate::audit::{correlation_id, kind, NewAuditEvent};
use anyhow::{anyhow, bail, Result};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::OnceLock;

pub const SESSION_COOKIE: &str = "rb_session";
/// The sign-in form's own CSRF token (double submit: this cookie and a hidden field must
/// match), so another site cannot sign a browser in under an account of its choosing.
pub const LOGIN_CSRF_COOKIE: &str = "rb_login";

/// A cookie's name as set and read: `__Host-` prefixed when cookies are `Secure` (the prefix
/// needs `Secure`, `Path=/` and no `Domain`, which every cookie here has).
pub fn cookie_name(base: &str, secure: bool) -> String {
    if secure {
        format!("__Host-{base}")
    } else {
        base.to_string()
    }
}

/// A session's last use is written at most this often (idle timeout precision vs. writes).
const SESSION_TOUCH_US: i64 = 60_000_000;
pub const CSRF_HEADER: &str = "x-csrf-token";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Session,
    Token,
}

/// The authenticated caller, put in the request's extensions by [`middleware`].
#[derive(Clone, Debug)]
pub struct Principal {
    pub username: String,
    pub role: Role,
    /// May see patient identities (each view recorded with a reason).
    pub patient_data: bool,
    /// The care units the caller is limited to (the whole region for most users).
    pub scope: UnitScope,
    pub via: Via,
    /// The API token used (token callers only).
    pub token_id: Option<i64>,
    /// The session's CSRF token (cookie sessions only).
    pub csrf: Option<String>,
    session_hash: Option<String>,
}

impl Principal {
    /// Who did it, as the audit log records it: the user, and for token callers the token too
    /// (`anna/token:12`), so every use of a token can be traced to it.
    pub fn actor(&self) -> String {
        match self.token_id {
            Some(id) => format!("{}/token:{id}", self.username),
            None => self.username.clone(),
        }
    }
    pub fn can(&self, role: Role) -> bool {
        self.role >= role
    }
    pub fn require(&self, role: Role) -> Result<(), Fail> {
        if self.can(role) {
            Ok(())
        } else {
            Err(Fail::Forbidden)
        }
    }
    /// Region-wide pages and endpoints (settings, users, tokens, audit search, runs, metrics):
    /// refused to a unit-limited caller, whatever the role.
    pub fn require_region(&self) -> Result<(), Fail> {
        if self.scope.is_region() {
            Ok(())
        } else {
            Err(Fail::Forbidden)
        }
    }
    /// A row of this unit may be shown or acted on; other units' rows are "not found" (their
    /// existence is not revealed).
    pub fn require_unit(&self, unit: &str) -> Result<(), Fail> {
        if self.scope.allows(unit) {
            Ok(())
        } else {
            Err(Fail::NotFound)
        }
    }
    /// Check a submitted CSRF token. Bearer-token callers need none.
    pub fn check_csrf(&self, submitted: Option<&str>) -> Result<(), Fail> {
        match (&self.via, &self.csrf) {
            (Via::Token, _) => Ok(()),
            (Via::Session, Some(expected)) => match submitted {
                Some(s) if constant_time_eq(s.as_bytes(), expected.as_bytes()) => Ok(()),
                _ => Err(Fail::Csrf),
            },
            (Via::Session, None) => Err(Fail::Csrf),
        }
    }
    pub fn csrf_value(&self) -> String {
        self.csrf.clone().unwrap_or_default()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn check_password_strength(pw: &str) -> Result<()> {
    if pw.chars().count() < 10 {
        bail!("the password must have at least 10 characters");
    }
    if pw.len() > 1024 {
        bail!("the password is too long");
    }
    Ok(())
}

pub fn check_username(name: &str) -> Result<()> {
    let ok = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
    if !ok {
        bail!("a username is 1–64 letters, digits or . - _ @");
    }
    if name.chars().filter(|c| c.is_ascii_digit()).count() >= 10 {
        // Keeps anything that could be a personnummer out of audit subjects.
        bail!("a username must not contain ten or more digits");
    }
    Ok(())
}

/// Threads that run argon2 (each check takes ~19 MiB). A fixed pair, not the blocking pool:
/// every thread that ever ran a check keeps its allocator arena's memory, so a flood spread
/// over hundreds of blocking threads would keep hundreds of MiB after the checks were done.
const ARGON2_THREADS: usize = 2;

type Job = Box<dyn FnOnce() + Send>;

fn argon2_pool() -> &'static std::sync::mpsc::SyncSender<Job> {
    static POOL: OnceLock<std::sync::mpsc::SyncSender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(1024);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..ARGON2_THREADS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })
                .expect("argon2 thread starts");
        }
        tx
    })
}

/// Run `f` on the argon2 threads and wait for its answer without blocking the async threads.
async fn on_argon2_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    let pool = argon2_pool().clone();
    tokio::task::spawn_blocking(move || pool.send(job)).await?.map_err(|_| anyhow!("argon2 threads stopped"))?;
    rx.await.map_err(|_| anyhow!("argon2 thread dropped the job"))
}

/// Hash a password (argon2id, random salt) off the async threads.
pub async fn hash_password(pw: String) -> Result<String> {
    on_argon2_thread(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(pw.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| anyhow!("password hashing failed: {e}"))
    })
    .await?
}

/// Verify against a stored hash; `None` verifies against a dummy so an unknown user costs the
/// same time as a wrong password.
pub async fn verify_password(pw: String, stored: Option<String>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let real = stored.is_some();
    let hash = stored.unwrap_or_else(|| {
        DUMMY
            .get_or_init(|| Argon2::default().hash_password(random_token().as_bytes(), &SaltString::generate(&mut OsRng)).expect("hash").to_string())
            .clone()
    });
    on_argon2_thread(move || {
        let ok = PasswordHash::new(&hash).map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok()).unwrap_or(false);
        ok && real
    })
    .await
    .unwrap_or(false)
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    for v in headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(';') {
            if let Some((k, val)) = part.trim().split_once('=') {
                if k == name && !val.is_empty() {
                    return Some(val.to_string());
                }
            }
        }
    }
    None
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

/// The patient-data right counts only above läsare: a läsare never sees a patient identity,
/// whatever flag the user row carries.
pub fn effective_patient_data(u: &User) -> bool {
    u.patient_data && u.role >= Role::Operator
}

/// Resolve the caller from a bearer token (preferred when present) or the session cookie.
async fn resolve(state: &AdminState, headers: &HeaderMap) -> Result<Option<Principal>> {
    let store = &state.app.store;
    if let Some(t) = bearer(headers) {
        // A wrong bearer token is a failed authentication even if a cookie is present too.
        return Ok(match db::token_user(store, &token_hash(&t)).await? {
            Some((id, u)) => {
                db::touch_token(store, id).await.ok();
                Some(Principal { patient_data: effective_patient_data(&u), scope: UnitScope::only(&u.units), username: u.username, role: u.role, via: Via::Token, token_id: Some(id), csrf: None, session_hash: None })
            }
            None => None,
        });
    }
    let settings = state.settings();
    if let Some(c) = cookie_value(headers, &cookie_name(SESSION_COOKIE, settings.cookie_secure)) {
        let h = token_hash(&c);
        let idle_us = (settings.session_idle_minutes.max(1) as i64) * 60_000_000;
        if let Some(s) = db::session(store, &h, idle_us).await? {
            if crate::store::now_us() - s.last_seen_us > SESSION_TOUCH_US {
                db::touch_session(store, &h).await?;
            }
            return Ok(Some(Principal {
                patient_data: effective_patient_data(&s.user),
                scope: UnitScope::only(&s.user.units),
                username: s.user.username,
                role: s.user.role,
                via: Via::Session,
                token_id: None,
                csrf: Some(s.csrf),
                session_hash: Some(h),
            }));
        }
    }
    Ok(None)
}

/// In front of every route: public paths pass, everything else needs a valid caller.
pub async fn middleware(State(state): State<AdminState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if PUBLIC_PATHS.contains(&path.as_str()) {
        return next.run(req).await;
    }
    match resolve(&state, req.headers()).await {
        Ok(Some(p)) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Ok(None) => unauthorized(req.headers(), &path),
        Err(e) => Fail::Internal(e).api(),
    }
}

/// The one 401 answer. It depends only on what the client accepts and the path it asked for,
/// never on why the credentials failed or whether the path exists.
pub fn unauthorized(headers: &HeaderMap, path: &str) -> Response {
    let wants_html = !path.starts_with("/api/")
        && path != "/metrics"
        && headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    let mut res = if wants_html {
        let next = safe_next(path).unwrap_or_else(|| "/".into());
        let target = format!("/login?next={}", urlencoding::encode(&next));
        (StatusCode::UNAUTHORIZED, Html(super::pages::login_required_page(&target))).into_response()
    } else {
        (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({"error": "unauthorized", "message": "Inloggning krävs."}))).into_response()
    };
    res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"registerbrygga\""));
    res
}

/// Where a user starts: the overview for the region; a unit-limited user its clinic's page
/// (with several units, the chooser).
pub fn landing(scope: &UnitScope) -> String {
    match scope.units() {
        [] => "/".to_string(),
        [one] => format!("/mottagning/{}", urlencoding::encode(one)),
        _ => "/mottagning".to_string(),
    }
}

/// Only same-site relative paths may be a post-login target (no open redirect).
pub fn safe_next(s: &str) -> Option<String> {
    let ok = s.starts_with('/') && !s.starts_with("//") && !s.contains('\\') && !s.starts_with("/login") && s.len() < 512 && !s.chars().any(|c| c.is_control());
    ok.then(|| s.to_string())
}

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    pub next: Option<String>,
}

pub async fn login_page(State(state): State<AdminState>, axum::extract::Query(q): axum::extract::Query<LoginQuery>) -> Response {
    login_form(&state, StatusCode::OK, q.next.as_deref().and_then(safe_next).as_deref(), None, "")
}

/// The sign-in page with a fresh form token, set as a cookie as well.
fn login_form(state: &AdminState, status: StatusCode, next: Option<&str>, error: Option<&str>, username: &str) -> Response {
    let token = random_token();
    let mut res = (status, Html(super::pages::login_page(next, error, username, &token))).into_response();
    set_cookie(&mut res, &hardened_cookie(LOGIN_CSRF_COOKIE, &token, 3600, state.settings().cookie_secure));
    res
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub next: Option<String>,
    #[serde(default)]
    pub login_csrf: String,
}

pub async fn login_submit(State(state): State<AdminState>, connect: Option<Extension<ConnectInfo<SocketAddr>>>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let store = &state.app.store;
    let remote = connect.map(|c| c.0 .0.ip().to_string());
    let next = f.next.as_deref().and_then(safe_next);
    // The form must come from our own sign-in page (its cookie and hidden field agree).
    let form_ok = cookie_value(&headers, &cookie_name(LOGIN_CSRF_COOKIE, state.settings().cookie_secure)).is_some_and(|c| !c.is_empty() && constant_time_eq(c.as_bytes(), f.login_csrf.as_bytes()));
    if !form_ok {
        return login_form(&state, StatusCode::FORBIDDEN, next.as_deref(), Some("Inloggningsformuläret har gått ut eller kom inte från den här sidan. Försök igen."), "");
    }
    let username = f.username.trim().to_string();
    // Growing delay per address and per name: refused at once, before any password check.
    let name_key = state.app.pseudo.hash_str(&username);
    let wait = state.guard.wait(remote.as_deref(), &name_key);
    if !wait.is_zero() {
        let msg = format!("För många misslyckade inloggningar. Försök igen om {} sekunder.", wait.as_secs().max(1));
        return super::guard::too_many(wait, login_form(&state, StatusCode::TOO_MANY_REQUESTS, next.as_deref(), Some(&msg), ""));
    }
    // Counted before the check, so attempts sent in parallel see each other; a success clears it.
    state.guard.attempt(remote.as_deref(), &name_key);
    let user: Option<User> = if username.is_empty() || username.len() > 64 {
        None
    } else {
        match db::user(store, &username).await {
            Ok(u) => u,
            Err(e) => return Fail::Internal(e).page(),
        }
    };
    let known = user.is_some();
    let usable = user.filter(|u| !u.disabled);
    let ok = {
        // Few argon2 checks at once: each takes ~19 MiB and a core.
        let Ok(_permit) = state.guard.password_checks.acquire().await else { return Fail::Internal(anyhow!("password check limiter closed")).page() };
        verify_password(f.password, usable.as_ref().map(|u| u.password_hash.clone())).await
    };
    let corr = correlation_id();
    let Some(u) = usable.filter(|_| ok) else {
        // Audit who tried without ever writing what was typed as a password: a name that is
        // not a user (perhaps a password typed in the wrong field) is kept only as a keyed hash.
        let (subject, detail) = if known {
            (format!("user:{username}"), serde_json::json!({"via": "password", "remote": remote}))
        } else {
            ("user:?".to_string(), serde_json::json!({"via": "password", "remote": remote, "username_hash": state.app.pseudo.hash_str(&username)}))
        };
        // Batched: a flood of failures takes the audit chain's lock once per batch.
        if let Err(e) = state.guard.audit_failure(store, NewAuditEvent::by("anonymous", kind::LOGIN_FAILED, &corr, subject, detail)).await {
            return Fail::Internal(e).page();
        }
        return login_form(&state, StatusCode::UNAUTHORIZED, next.as_deref(), Some("Fel användarnamn eller lösenord."), "");
    };
    state.guard.succeeded(remote.as_deref(), &name_key);
    let token = random_token();
    let csrf = random_token();
    let minutes = state.settings().session_minutes.max(1);
    let expires = crate::store::now_us() + (minutes as i64) * 60_000_000;
    if let Err(e) = db::create_session(store, &token_hash(&token), &u.username, &csrf, expires).await {
        return Fail::Internal(e).page();
    }
    if let Err(e) = store
        .audit(vec![NewAuditEvent::by(&u.username, kind::LOGIN, &corr, format!("user:{}", u.username), serde_json::json!({"via": "password", "remote": remote}))])
        .await
    {
        return Fail::Internal(e).page();
    }
    let secure = state.settings().cookie_secure;
    let mut res = Redirect::to(&next.unwrap_or_else(|| landing(&UnitScope::only(&u.units)))).into_response();
    *res.status_mut() = StatusCode::SEE_OTHER;
    set_cookie(&mut res, &hardened_cookie(SESSION_COOKIE, &token, minutes * 60, secure));
    // The form token is spent.
    set_cookie(&mut res, &hardened_cookie(LOGIN_CSRF_COOKIE, "", 0, secure));
    res
}

/// Every cookie we set: `Path=/; HttpOnly; SameSite=Strict`, and `Secure` with the `__Host-`
/// name prefix when configured (max age 0 clears it).
pub fn hardened_cookie(base_name: &str, value: &str, max_age_seconds: u64, secure: bool) -> String {
    let name = cookie_name(base_name, secure);
    format!("{name}={value}; Path=/; Max-Age={max_age_seconds}; HttpOnly; SameSite=Strict{}", if secure { "; Secure" } else { "" })
}

fn set_cookie(res: &mut Response, cookie: &str) {
    res.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(cookie).expect("cookie is ASCII"));
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: Option<String>,
}

pub async fn logout(State(state): State<AdminState>, Extension(p): Extension<Principal>, Form(f): Form<CsrfForm>) -> Response {
    if let Err(e) = p.check_csrf(f.csrf.as_deref()) {
        return e.page();
    }
    if let Some(h) = &p.session_hash {
        if let Err(e) = db::delete_session(&state.app.store, h).await {
            return Fail::Internal(e).page();
        }
    }
    if let Err(e) = state
        .app
        .store
        .audit(vec![NewAuditEvent::by(&p.actor(), kind::LOGOUT, &correlation_id(), format!("user:{}", p.username), serde_json::json!({}))])
        .await
    {
        return Fail::Internal(e).page();
    }
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
    set_cookie(&mut res, &hardened_cookie(SESSION_COOKIE, "", 0, state.settings().cookie_secure));
    res
}

/// A new API token for the signed-in caller itself; returns (id, token). The token is shown once,
/// stored hashed. `for_user` (when a form or body names one) must be the caller: nobody mints a
/// token that acts as someone else, and a token cannot mint further tokens.
pub async fn create_api_token(state: &AdminState, actor: &Principal, name: &str, for_user: Option<&str>, days: Option<u32>) -> Result<(i64, String), Fail> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(Fail::BadRequest("Ange ett namn på nyckeln (högst 100 tecken).".into()));
    }
    if actor.via != Via::Session {
        return Err(Fail::Forbidden);
    }
    if for_user.is_some_and(|u| !u.trim().is_empty() && u.trim() != actor.username) {
        return Err(Fail::BadRequest("En API-nyckel kan bara skapas för den egna användaren.".into()));
    }
    let max = state.settings().token_days.max(1);
    let days = days.unwrap_or(max);
    if days == 0 || days > max {
        return Err(Fail::BadRequest(format!("En nyckel gäller 1–{max} dagar.")));
    }
    let (id, token) = mint_token(&state.app.store, name, &actor.username, &actor.actor(), days).await?;
    Ok((id, token))
}

/// Store a new token for `username` valid `days` days, audited as made by `actor`.
pub async fn mint_token(store: &crate::store::Store, name: &str, username: &str, actor: &str, days: u32) -> Result<(i64, String)> {
    if db::user(store, username).await?.is_none() {
        bail!("no user {username}");
    }
    let token = format!("rbt_{}", random_token());
    let expires = crate::store::now_us() + days as i64 * 86_400_000_000;
    let id = db::create_token(store, name, &token_hash(&token), username, actor, expires).await?;
    store
        .audit(vec![NewAuditEvent::by(
            actor,
            kind::USER_CHANGED,
            &correlation_id(),
            format!("user:{username}"),
            serde_json::json!({"action": "api_token.created", "token_id": id, "name": name, "days": days}),
        )])
        .await?;
    Ok((id, token))
}

pub async fn revoke_api_token(state: &AdminState, actor: &Principal, id: i64) -> Result<bool, Fail> {
    let done = db::revoke_token(&state.app.store, id).await?;
    if done {
        state
            .app
            .store
            .audit(vec![NewAuditEvent::by(&actor.actor(), kind::USER_CHANGED, &correlation_id(), format!("api_token:{id}"), serde_json::json!({"action": "api_token.revoked"}))])
            .await?;
    }
    Ok(done)
}
