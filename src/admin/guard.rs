//! What keeps a flood of sign-ins (or of any requests) from taking the admin side or the daemon
//! down:
//!
//! - **Growing delay** per client address and per user name: attempts count as failures until
//!   they succeed (so attempts sent in parallel see each other); after a few free ones each
//!   further failure doubles the time before that address or name may try again (up to
//!   `admin.login_max_delay_seconds`); an attempt inside that time is answered 429 at once, with
//!   no password check and no store access. The table is bounded (oldest entries go first).
//! - **Password checks in parallel** are bounded by a small semaphore: argon2id takes ~19 MiB and
//!   a core for tens of milliseconds per check, so 200 at once would take gigabytes.
//! - **Failed sign-ins are audited in batches**: each failure queues its event; whoever finds no
//!   batch being written writes everything queued in one transaction. The audit chain's head
//!   lock is taken once per batch, not once per failure, and the queue is bounded (what does not
//!   fit is counted in the next event).
//! - **Every request** has a time limit and the listener a limit on requests in progress; beyond
//!   it a request is refused at once (503), except the health probes.

use crate::audit::NewAuditEvent;
use crate::store::Store;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Entries of the failure table at most (a flood from many addresses cannot grow it further).
const MAX_TRACKED: usize = 10_000;
/// Failed sign-in events queued at most; more are counted.
const MAX_QUEUED: usize = 1_000;

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

pub struct Guard {
    free_per_user: u32,
    free_per_ip: u32,
    max_delay: Duration,
    failures: Mutex<HashMap<String, Failures>>,
    /// Password checks in progress.
    pub password_checks: Arc<Semaphore>,
    /// Requests in progress on the listener.
    pub requests: Arc<Semaphore>,
    pub request_timeout: Duration,
    queue: Mutex<(Vec<NewAuditEvent>, u64)>,
    writing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Guard(..)")
    }
}

impl Guard {
    pub fn new(s: &crate::config::AdminSettings) -> Guard {
        Guard {
            free_per_user: s.login_free_failures_per_user.max(1),
            free_per_ip: s.login_free_failures_per_ip.max(1),
            max_delay: Duration::from_secs(s.login_max_delay_seconds.max(1)),
            failures: Mutex::new(HashMap::new()),
            password_checks: Arc::new(Semaphore::new(s.password_checks_in_parallel.max(1))),
            requests: Arc::new(Semaphore::new(s.max_requests_in_progress.max(1))),
            request_timeout: Duration::from_secs(s.request_timeout_seconds.max(1)),
            queue: Mutex::new((Vec::new(), 0)),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    fn delay_for(&self, f: Failures, free: u32) -> Duration {
        if f.count <= free {
            return Duration::ZERO;
        }
        let step = (f.count - free - 1).min(20);
        Duration::from_secs(1u64 << step).min(self.max_delay)
    }

    /// How long `ip` / `user` must still wait before another attempt (zero: go ahead). `user` is
    /// a keyed hash of the name typed (it may be a password typed in the wrong field).
    pub fn wait(&self, ip: Option<&str>, user: &str) -> Duration {
        let map = self.failures.lock().expect("guard lock");
        let mut wait = Duration::ZERO;
        for (key, free) in keys(ip, user, self.free_per_ip, self.free_per_user) {
            if let Some(f) = map.get(&key) {
                wait = wait.max(self.delay_for(*f, free).saturating_sub(f.last.elapsed()));
            }
        }
        wait
    }

    /// A sign-in attempt is about to be checked: counted as a failure until it succeeds.
    pub fn attempt(&self, ip: Option<&str>, user: &str) {
        let mut map = self.failures.lock().expect("guard lock");
        for (key, _) in keys(ip, user, self.free_per_ip, self.free_per_user) {
            if !map.contains_key(&key) && map.len() >= MAX_TRACKED {
                // Forget what has cooled down; if nothing has, the oldest entry.
                let max = self.max_delay;
                map.retain(|_, f| f.last.elapsed() < max);
                if map.len() >= MAX_TRACKED {
                    if let Some(oldest) = map.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| k.clone()) {
                        map.remove(&oldest);
                    }
                }
            }
            let e = map.entry(key).or_insert(Failures { count: 0, last: Instant::now() });
            e.count = e.count.saturating_add(1);
            e.last = Instant::now();
        }
    }

    pub fn succeeded(&self, ip: Option<&str>, user: &str) {
        let mut map = self.failures.lock().expect("guard lock");
        for (key, _) in keys(ip, user, self.free_per_ip, self.free_per_user) {
            map.remove(&key);
        }
    }

    pub fn tracked(&self) -> usize {
        self.failures.lock().expect("guard lock").len()
    }

    /// Queue a failed sign-in's audit event and write what is queued, unless a write is under
    /// way already (that writer takes this event too).
    pub async fn audit_failure(&self, store: &Store, event: NewAuditEvent) -> anyhow::Result<()> {
        {
            let mut q = self.queue.lock().expect("queue lock");
            if q.0.len() < MAX_QUEUED {
                q.0.push(event);
            } else {
                q.1 += 1;
            }
        }
        loop {
            let Ok(_writing) = self.writing.try_lock() else { return Ok(()) };
            loop {
                let (mut batch, overflow) = {
                    let mut q = self.queue.lock().expect("queue lock");
                    (std::mem::take(&mut q.0), std::mem::take(&mut q.1))
                };
                if overflow > 0 {
                    batch.push(NewAuditEvent::by(
                        "anonymous",
                        crate::audit::kind::LOGIN_FAILED,
                        &crate::audit::correlation_id(),
                        "user:?",
                        serde_json::json!({"via": "password", "not_itemised": overflow, "why": "more failed sign-ins at once than the audit queue holds"}),
                    ));
                }
                if batch.is_empty() {
                    break;
                }
                store.audit(batch).await?;
            }
            drop(_writing);
            // An event queued while the lock was being released would otherwise wait for the
            // next failure.
            if self.queue.lock().expect("queue lock").0.is_empty() {
                return Ok(());
            }
        }
    }
}

fn keys(ip: Option<&str>, user: &str, free_ip: u32, free_user: u32) -> Vec<(String, u32)> {
    let mut k = vec![(format!("user:{user}"), free_user)];
    if let Some(ip) = ip {
        k.push((format!("ip:{ip}"), free_ip));
    }
    k
}

/// 429 with `Retry-After`.
pub fn too_many(wait: Duration, body: Response) -> Response {
    let mut res = body;
    *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let secs = wait.as_secs().max(1).to_string();
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_str(&secs).expect("digits"));
    res
}

/// In front of everything: a time limit per request and a bound on requests in progress
/// (health probes pass, so an orchestrator does not restart a busy replica).
pub async fn limit_requests(axum::extract::State(state): axum::extract::State<super::AdminState>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    let Ok(_permit) = state.guard.requests.clone().try_acquire_owned() else {
        let mut res = (StatusCode::SERVICE_UNAVAILABLE, "Servern har för många pågående förfrågningar. Försök igen om en stund.").into_response();
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return res;
    };
    match tokio::time::timeout(state.guard.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "Förfrågan tog för lång tid och avbröts.").into_response(),
    }
}
