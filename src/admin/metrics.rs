//! `/metrics` in the Prometheus text format.
//!
//! Two kinds of series:
//! - counted in the shared store at scrape time (records by state, attempts by outcome, runs,
//!   queue depth, lease rescues), so every replica reports the same cluster-wide totals;
//! - measured in this process through hooks the engine calls ([`record_send`], [`record_run`]):
//!   latency histograms.
//!
//! Labels are only register, connector, state, outcome and status names — never a patient, a
//! record key or free text. Every label value also passes the identity redactor and a length cap.
//!
//! The endpoint needs credentials like every other route: Prometheus sends an API token as
//! `authorization: { type: Bearer, credentials_file: … }` in its scrape config.

use super::auth::Principal;
use super::{store as db, AdminState, ApiError};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install our recorder as the process-wide `metrics` recorder, once. Safe to call any number of
/// times from anywhere (the router and the hooks both call it). If some other recorder was
/// installed first, the hooks go to that one and `/metrics` shows the store-counted series only.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0])
                .expect("non-empty buckets");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(_) => {
                    tracing::warn!("a metrics recorder was already installed; /metrics shows store-counted series only");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("rb_records", "Register records by register and state (all versions).");
    describe_counter!("rb_attempts_total", "Delivery attempts by register and outcome (counted in the store).");
    describe_counter!("rb_runs_total", "Connector runs by connector and status (counted in the store).");
    describe_gauge!("rb_queue_depth", "Records waiting to be sent or being sent.");
    describe_counter!("rb_lease_rescues_total", "Expired delivery leases returned to the queue (from the audit log).");
    describe_gauge!("rb_quarantine_open", "Quarantined input items not yet resolved.");
    describe_gauge!("rb_worklist_items", "Registrations waiting for missing answers in the journal.");
    describe_histogram!("rb_send_duration_seconds", Unit::Seconds, "Time to send one record to a register, by register and outcome.");
    describe_histogram!("rb_run_duration_seconds", Unit::Seconds, "Duration of connector runs, by connector and status.");
    describe_gauge!("rb_circuit_open", "1 while this replica's circuit breaker pauses a register, else 0.");
    describe_gauge!("rb_build_info", "Build information (value is always 1).");
}

/// A label value that is safe to publish: short, plain, no identity-shaped digits.
pub fn label(v: &str) -> String {
    let clean: String = v.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')).take(64).collect();
    let red = crate::telemetry::redact(&clean).replace("<pnr>", "redacted");
    // A bare long digit run that the redactor's date rule did not catch is still no label.
    if red.chars().filter(|c| c.is_ascii_digit()).count() >= 10 {
        return "redacted".into();
    }
    if red.is_empty() {
        "unknown".into()
    } else {
        red
    }
}

/// The delivery engine calls this once per send attempt.
pub fn record_send(register: &str, outcome: &str, duration: Duration) {
    install();
    metrics::histogram!("rb_send_duration_seconds", "register" => label(register), "outcome" => label(outcome)).record(duration.as_secs_f64());
}

/// The scheduler calls this when a connector run ends.
pub fn record_run(connector: &str, status: &str, duration: Duration) {
    install();
    metrics::histogram!("rb_run_duration_seconds", "connector" => label(connector), "status" => label(status)).record(duration.as_secs_f64());
}

/// The delivery engine calls this when a register's circuit breaker opens or closes (and once
/// per register at start, so the series exists before anything goes wrong).
pub fn record_circuit(register: &str, open: bool) {
    install();
    metrics::gauge!("rb_circuit_open", "register" => label(register)).set(if open { 1.0 } else { 0.0 });
}

/// Label sets of `rb_records` published before: a state that drops to zero is reported as 0
/// instead of vanishing.
static SEEN_RECORDS: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

/// Render the exposition text, refreshing the store-counted series first.
pub async fn render(state: &AdminState) -> anyhow::Result<String> {
    let handle = install();
    let g = db::gauges(&state.app.store).await?;
    let mut now: BTreeSet<(String, String)> = BTreeSet::new();
    for (register, st, n) in &g.records {
        let key = (label(register), label(st));
        metrics::gauge!("rb_records", "register" => key.0.clone(), "state" => key.1.clone()).set(*n as f64);
        now.insert(key);
    }
    {
        let mut seen = SEEN_RECORDS.lock().expect("metrics lock");
        for (register, st) in seen.difference(&now) {
            metrics::gauge!("rb_records", "register" => register.clone(), "state" => st.clone()).set(0.0);
        }
        seen.extend(now);
    }
    for (register, outcome, n) in &g.attempts {
        metrics::counter!("rb_attempts_total", "register" => label(register), "outcome" => label(outcome)).absolute(*n as u64);
    }
    for (connector, status, n) in &g.runs {
        metrics::counter!("rb_runs_total", "connector" => label(connector), "status" => label(status)).absolute(*n as u64);
    }
    metrics::gauge!("rb_queue_depth").set(g.queue_depth as f64);
    metrics::counter!("rb_lease_rescues_total").absolute(g.lease_rescues as u64);
    metrics::gauge!("rb_quarantine_open").set(g.quarantine_open as f64);
    metrics::gauge!("rb_worklist_items").set(g.worklist as f64);
    metrics::gauge!("rb_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(match handle {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => fallback_text(&g),
    })
}

/// Used only when another recorder owns the process: the store-counted series, hand-written.
fn fallback_text(g: &db::StoreGauges) -> String {
    let mut s = String::new();
    s.push_str("# TYPE rb_records gauge\n");
    for (r, st, n) in &g.records {
        s.push_str(&format!("rb_records{{register=\"{}\",state=\"{}\"}} {n}\n", label(r), label(st)));
    }
    s.push_str("# TYPE rb_attempts_total counter\n");
    for (r, o, n) in &g.attempts {
        s.push_str(&format!("rb_attempts_total{{register=\"{}\",outcome=\"{}\"}} {n}\n", label(r), label(o)));
    }
    s.push_str("# TYPE rb_runs_total counter\n");
    for (c, st, n) in &g.runs {
        s.push_str(&format!("rb_runs_total{{connector=\"{}\",status=\"{}\"}} {n}\n", label(c), label(st)));
    }
    s.push_str(&format!("# TYPE rb_queue_depth gauge\nrb_queue_depth {}\n", g.queue_depth));
    s.push_str(&format!("# TYPE rb_lease_rescues_total counter\nrb_lease_rescues_total {}\n", g.lease_rescues));
    s
}

pub async fn handler(State(state): State<AdminState>, Extension(p): Extension<Principal>) -> Result<Response, ApiError> {
    // Region-wide counts: a unit-limited caller is refused (metrics are not split by unit).
    p.require_region()?;
    let text = render(&state).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}
