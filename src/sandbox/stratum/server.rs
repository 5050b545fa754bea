//! HTTP for the emulator: an axum router for the contract's endpoints, behind a hyper service
//! that injects faults. Our own accept loop (rustls + hyper http1) rather than axum-server,
//! because a "dropped connection" fault needs the service to fail so hyper closes the
//! connection without writing any response.

use super::state::{envelope, ApiError, ApiKeyRights, Context, Emulated};
use super::Faults;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use axum::routing::{get, put};
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tower::ServiceExt;

pub const SESSION_COOKIE: &str = "stratum_session";

pub(super) struct Shared {
    pub emu: Emulated,
    pub faults: RwLock<(Faults, Option<Instant>)>,
    pub requests: AtomicU64,
}

type Q = Query<HashMap<String, String>>;

fn json_response(status: u16, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

fn failure(e: &ApiError) -> Response<Body> {
    let body = serde_json::json!({"success": false, "code": e.code, "message": e.message});
    json_response(e.status, Bytes::from(serde_json::to_vec(&body).expect("json")))
}

fn ok(data: &serde_json::Value) -> Response<Body> {
    json_response(200, envelope(data))
}

fn reply(r: Result<serde_json::Value, ApiError>) -> Response<Body> {
    match r {
        Ok(v) => ok(&v),
        Err(e) => failure(&e),
    }
}

fn session_cookie(h: &HeaderMap) -> Option<&str> {
    h.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == SESSION_COOKIE).then_some(v)
    })
}

fn rights<'a>(s: &'a Shared, q: &Q) -> Result<&'a ApiKeyRights, ApiError> {
    s.emu.authenticate(q.get("apikey").map(String::as_str))
}

fn in_context<'a>(s: &'a Shared, q: &Q, h: &HeaderMap) -> Result<&'a Context, ApiError> {
    let r = rights(s, q)?;
    s.emu.session_context(r, session_cookie(h))
}

fn cached(s: &Shared, q: &Q, m: &HashMap<u32, Bytes>, id: u32, what: &str) -> Response<Body> {
    if let Err(e) = rights(s, q) {
        return failure(&e);
    }
    match m.get(&id) {
        Some(b) => json_response(200, b.clone()),
        None => failure(&ApiError { status: 404, code: "NotFound", message: format!("{what} {id} does not exist") }),
    }
}

async fn meta_register(State(s): State<Arc<Shared>>, Path(id): Path<u32>, q: Q) -> Response<Body> {
    cached(&s, &q, &s.emu.meta_register, id, "register")
}
async fn meta_questions(State(s): State<Arc<Shared>>, Path(id): Path<u32>, q: Q) -> Response<Body> {
    cached(&s, &q, &s.emu.meta_questions, id, "form")
}
async fn meta_domain(State(s): State<Arc<Shared>>, Path(id): Path<u32>, q: Q) -> Response<Body> {
    cached(&s, &q, &s.emu.meta_domains, id, "domain")
}
async fn meta_units(State(s): State<Arc<Shared>>, Path(id): Path<u32>, q: Q) -> Response<Body> {
    cached(&s, &q, &s.emu.meta_units, id, "register")
}

async fn contexts(State(s): State<Arc<Shared>>, q: Q) -> Response<Body> {
    reply(rights(&s, &q).map(|r| s.emu.contexts_json(r)))
}

async fn select_context(State(s): State<Arc<Shared>>, q: Q, h: HeaderMap, body: Bytes) -> Response<Body> {
    let sid = match rights(&s, &q).and_then(|r| s.emu.select_context(r, session_cookie(&h), &body)) {
        Ok(sid) => sid,
        Err(e) => return failure(&e),
    };
    let mut r = ok(&serde_json::Value::Null);
    let cookie = format!("{SESSION_COOKIE}={sid}; Path=/; HttpOnly; Secure; SameSite=Strict");
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is ASCII"));
    r
}

async fn create_or_query_get(State(s): State<Arc<Shared>>, Path(form): Path<u32>, q: Q, h: HeaderMap) -> Response<Body> {
    reply(in_context(&s, &q, &h).and_then(|c| s.emu.query(c, form, q.get("query").map(String::as_str))))
}

async fn create(State(s): State<Arc<Shared>>, Path(form): Path<u32>, q: Q, h: HeaderMap, body: Bytes) -> Response<Body> {
    reply(in_context(&s, &q, &h).and_then(|c| s.emu.create(c, form, &body)))
}

async fn update(State(s): State<Arc<Shared>>, Path((form, event)): Path<(u32, u64)>, q: Q, h: HeaderMap, body: Bytes) -> Response<Body> {
    reply(in_context(&s, &q, &h).and_then(|c| s.emu.update(c, form, event, &body)))
}

async fn delete(State(s): State<Arc<Shared>>, Path(event): Path<u64>, q: Q, h: HeaderMap) -> Response<Body> {
    reply(in_context(&s, &q, &h).and_then(|c| s.emu.delete(c, event)).map(|_| serde_json::Value::Null))
}

async fn not_found() -> Response<Body> {
    failure(&ApiError { status: 404, code: "NotFound", message: "no such endpoint".into() })
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/stratum/api/metadata/registers/{id}", get(meta_register))
        .route("/stratum/api/metadata/questions/form/{id}", get(meta_questions))
        .route("/stratum/api/metadata/domains/{id}", get(meta_domain))
        .route("/stratum/api/metadata/units/register/{id}", get(meta_units))
        .route("/stratum/api/authentication/contexts", get(contexts))
        .route("/stratum/api/authentication/context", put(select_context))
        .route("/stratum/api/registrations/form/{form}", get(create_or_query_get).post(create))
        .route("/stratum/api/registrations/form/{form}/{event}", put(update))
        .route("/stratum/api/registrations/{event}", axum::routing::delete(delete))
        .fallback(not_found)
        // Path or body rejections from axum itself come back in the register's envelope too.
        .layer(axum::middleware::map_response(envelope_rejections))
        .with_state(shared)
}

/// axum answers a bad path parameter with plain text; wrap it as the contract's envelope.
async fn envelope_rejections(r: Response<Body>) -> Response<Body> {
    let is_json = r.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    if is_json || r.status().is_success() {
        return r;
    }
    failure(&ApiError { status: r.status().as_u16(), code: "BadRequest", message: "malformed request".into() })
}

/// Returned by the service to make hyper close the connection without an answer.
#[derive(Debug)]
pub(super) struct DropConnection;
impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault injection: connection dropped")
    }
}
impl std::error::Error for DropConnection {}

fn roll(share: f64) -> bool {
    share > 0.0 && (share >= 1.0 || rand::thread_rng().gen::<f64>() < share)
}

/// One request: faults first, then the router.
pub(super) async fn handle(shared: Arc<Shared>, router: Router, req: Request<hyper::body::Incoming>) -> Result<Response<Body>, DropConnection> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let (f, down_until) = shared.faults.read().expect("faults").clone();
    if let Some(until) = down_until {
        let left = until.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            let mut r = failure(&ApiError { status: 503, code: "Maintenance", message: "the register is down for maintenance".into() });
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(left.as_secs().max(1)));
            return Ok(r);
        }
    }
    if roll(f.drop_share) {
        return Err(DropConnection);
    }
    if roll(f.rate_limit_share) {
        let mut r = failure(&ApiError { status: 429, code: "TooManyRequests", message: "too many requests".into() });
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(f.retry_after_seconds));
        return Ok(r);
    }
    if roll(f.error_share) {
        return Ok(failure(&ApiError { status: 500, code: "InternalError", message: "internal error".into() }));
    }
    if roll(f.slow_share) {
        tokio::time::sleep(Duration::from_millis(f.slow_ms)).await;
    }
    let resp = router.oneshot(req).await.unwrap_or_else(|never| match never {});
    // The write is done; now the answer goes missing (the outcome is unknown to the client).
    if roll(f.drop_after_share) {
        return Err(DropConnection);
    }
    if roll(f.timeout_share) {
        tokio::time::sleep(Duration::from_millis(f.timeout_ms)).await;
    }
    Ok(resp)
}

/// Accept TLS connections and serve them until `stop` turns true.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let router = router(shared.clone());
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (tcp, _) = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, shared, router) = (acceptor.clone(), shared.clone(), router.clone());
        conns.spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else { return };
            let svc = hyper::service::service_fn(move |req| handle(shared.clone(), router.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(tls), svc).await;
        });
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}
