//! The scheduler loop: every few seconds each replica looks for due ticks, claims them in the
//! store (one winner per tick across replicas) and runs the connector under its lease, so a
//! connector never runs twice at once.

use super::{due_ticks, parse_cron, TickAction};
use crate::app::App;
use crate::audit::{kind, NewAuditEvent};
use crate::pipeline::{run_connector, ConnectorRuntime, RunKind};
use anyhow::Result;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Next scheduled time per connector (for the admin overview).
pub fn next_runs(rts: &[ConnectorRuntime], now: DateTime<Utc>) -> Vec<(String, Option<DateTime<Utc>>)> {
    rts.iter()
        .map(|rt| {
            let next = parse_cron(&rt.def.schedule).ok().and_then(|c| super::next_after(&c, now).ok());
            (rt.def.name.clone(), next)
        })
        .collect()
}

/// Run the schedules until shutdown. `on_run_done` is called after every run (e.g. to wake the
/// delivery workers).
pub async fn run(app: App, rts: Arc<Vec<ConnectorRuntime>>, mut shutdown: watch::Receiver<bool>, on_run_done: Arc<dyn Fn() + Send + Sync>) -> Result<()> {
    let started = Utc::now();
    let poll = Duration::from_secs(app.settings().scheduler.poll_seconds.max(1));
    // A tick later than this is "missed" and follows the catch-up policy.
    let grace = chrono::Duration::seconds((app.settings().scheduler.poll_seconds * 3 + 60) as i64);
    let mut running: Vec<tokio::task::JoinHandle<()>> = vec![];
    loop {
        if *shutdown.borrow() {
            break;
        }
        running.retain(|h| !h.is_finished());
        for rt in rts.iter().filter(|r| r.def.enabled) {
            let Ok(cron) = parse_cron(&rt.def.schedule) else { continue };
            let reference = match app.store.last_tick(&rt.def.name).await {
                Ok(Some(t)) => t,
                Ok(None) => started,
                Err(e) => {
                    tracing::warn!(connector = %rt.def.name, error = %e, "cannot read ticks");
                    continue;
                }
            };
            let now = Utc::now();
            let due = match due_ticks(&cron, reference, now, rt.def.catch_up, grace) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(connector = %rt.def.name, error = %e, "schedule evaluation failed");
                    continue;
                }
            };
            for (t, action) in due {
                let owner = match action {
                    TickAction::Run => app.instance_id.clone(),
                    TickAction::Skip => format!("{} (skipped: missed)", app.instance_id),
                };
                let won = match app.store.claim_tick(&rt.def.name, t, &owner).await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(connector = %rt.def.name, error = %e, "tick claim failed");
                        break;
                    }
                };
                if !won || action == TickAction::Skip {
                    continue;
                }
                let app2 = app.clone();
                let rt2 = rt.clone();
                let done = on_run_done.clone();
                running.push(tokio::spawn(async move {
                    run_under_lease(&app2, &rt2, t).await;
                    done();
                }));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {},
            _ = shutdown.changed() => {},
        }
    }
    // Let runs in progress finish their current patient; they are idempotent if cut short.
    for h in running {
        let _ = tokio::time::timeout(Duration::from_secs(app.settings().service.shutdown_grace_seconds), h).await;
    }
    Ok(())
}

/// Run a connector for a claimed tick while holding its lease (renewed while running).
pub async fn run_under_lease(app: &App, rt: &ConnectorRuntime, scheduled_for: DateTime<Utc>) {
    let name = rt.def.name.clone();
    let ttl = app.settings().scheduler.run_lease_seconds.max(10);
    // One holder per run, not per replica: a second tick of the same connector in this replica
    // while the first run goes on is refused like any other replica's.
    let holder = format!("{} run {}", app.instance_id, &uuid::Uuid::new_v4().simple().to_string()[..12]);
    match app.store.acquire_connector_lease(&name, &holder, ttl).await {
        Ok(true) => {}
        Ok(false) => {
            let _ = app
                .store
                .audit(vec![NewAuditEvent::system(kind::TICK_FIRED, &crate::audit::correlation_id(), &name, serde_json::json!({"scheduled_for": scheduled_for, "skipped": "a run of this connector is still in progress"}))])
                .await;
            return;
        }
        Err(e) => {
            tracing::warn!(connector = %name, error = %e, "cannot take the connector lease");
            return;
        }
    }
    let renew_store = app.store.clone();
    let renew_owner = holder.clone();
    let renew_name = name.clone();
    // Stopped by a signal, never aborted (a cancelled store call could strand a transaction).
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let renew = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(ttl / 3)) => {},
                _ = &mut stop_rx => return,
            }
            match renew_store.renew_connector_lease(&renew_name, &renew_owner, ttl).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(connector = %renew_name, "the connector lease was lost while the run went on"),
                Err(e) => tracing::warn!(connector = %renew_name, error = %e, "cannot renew the connector lease"),
            }
        }
    });
    let today = crate::pipeline::today_stockholm();
    let started = std::time::Instant::now();
    match run_connector(app, rt, RunKind::Scheduled { scheduled_for }, false, today, None).await {
        Ok(r) => {
            crate::admin::metrics::record_run(&name, &r.status, started.elapsed());
            tracing::info!(connector = %name, run = r.run_id, status = %r.status, patients = r.patients, created = r.records_created, updated = r.records_updated, retracted = r.records_retracted, "run finished")
        }
        Err(e) => tracing::warn!(connector = %name, error = %e, "run failed"),
    }
    let _ = stop_tx.send(());
    let _ = renew.await;
    let _ = app.store.release_connector_lease(&name, &holder).await;
}
