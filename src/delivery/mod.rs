//! The delivery engine: workers claim due outbox records with a lease, send them outside the
//! claim transaction (heartbeating long sends), and record each outcome with its audit event.
//! Per register: a retry policy (backon), a circuit breaker and a rate limit (governor). A
//! rescuer returns expired leases to `pending`. Replicas share the work through the store only.

pub mod policy;
pub mod progress;

use crate::audit::{kind, NewAuditEvent};
use crate::config::{DeliverySettings, RegisterSettings};
use crate::sinks::{SendResult, Sink};
use crate::store::{Claimed, Store};
use anyhow::Result;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use policy::{Admission, Breaker, BreakerEvent};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// One register as the engine sees it.
pub struct Lane {
    pub name: String,
    pub sink: Arc<dyn Sink>,
    pub settings: RegisterSettings,
    pub breaker: Breaker,
    limiter: DefaultDirectRateLimiter,
}

impl Lane {
    pub fn new(name: &str, sink: Arc<dyn Sink>, settings: RegisterSettings) -> Lane {
        let rate = NonZeroU32::new(settings.rate_limit_per_second.max(1)).expect("non-zero");
        Lane {
            name: name.to_string(),
            sink,
            breaker: Breaker::new(settings.circuit.clone()),
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(rate)),
            settings,
        }
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub rejected: AtomicU64,
    pub dead: AtomicU64,
    pub rescued: AtomicU64,
    pub lost_leases: AtomicU64,
}

pub struct DeliveryEngine {
    store: Store,
    lanes: BTreeMap<String, Arc<Lane>>,
    settings: DeliverySettings,
    owner: String,
    /// Wakes idle workers when new records are queued (same process).
    pub wake: Arc<Notify>,
    pub counters: Arc<Counters>,
}

impl DeliveryEngine {
    pub fn new(store: Store, lanes: Vec<Lane>, settings: DeliverySettings, owner: &str) -> DeliveryEngine {
        DeliveryEngine {
            store,
            lanes: lanes.into_iter().map(|l| (l.name.clone(), Arc::new(l))).collect(),
            settings,
            owner: owner.to_string(),
            wake: Arc::new(Notify::new()),
            counters: Arc::new(Counters::default()),
        }
    }

    pub fn registers(&self) -> Vec<String> {
        self.lanes.keys().cloned().collect()
    }

    /// Run workers and the rescuer until `shutdown` turns true; then let in-flight sends finish
    /// within the grace period. Workers still sending after it are aborted and their leases are
    /// left to expire (another replica's rescuer, or the next start, takes them over with the
    /// outcome marked unknown): releasing a lease while its send may still reach the register
    /// would let someone else send the same record at the same time. Only when every worker
    /// finished are the remaining leases given back at once.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>, grace: Duration) -> Result<()> {
        for lane in self.lanes.values() {
            crate::admin::metrics::record_circuit(&lane.name, lane.breaker.is_open());
        }
        let mut tasks = vec![];
        for i in 0..self.settings.workers.max(1) {
            let me = self.clone();
            let sd = shutdown.clone();
            tasks.push(tokio::spawn(async move { me.worker(i, sd).await }));
        }
        let me = self.clone();
        let sd = shutdown.clone();
        let rescuer = tokio::spawn(async move { me.rescuer(sd).await });
        let mut sd = shutdown.clone();
        while !*sd.borrow() {
            if sd.changed().await.is_err() {
                break;
            }
        }
        self.wake.notify_waiters();
        let deadline = tokio::time::Instant::now() + grace;
        let mut aborted = 0;
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
                aborted += 1;
            }
        }
        let _ = rescuer.await;
        if aborted > 0 {
            tracing::warn!(aborted, lease_seconds = self.settings.lease_seconds, "delivery workers were still sending after the grace period; aborted them and left their leases to expire");
            return Ok(());
        }
        let released = self.store.release_leases(&self.owner).await?;
        if released > 0 {
            tracing::info!(released, "released delivery leases on shutdown");
        }
        Ok(())
    }

    async fn rescuer(&self, mut shutdown: watch::Receiver<bool>) {
        let every = Duration::from_secs(self.settings.rescue_interval_seconds.max(1));
        while !*shutdown.borrow() {
            match self.store.rescue_expired().await {
                Ok(n) if n > 0 => {
                    self.counters.rescued.fetch_add(n, Ordering::Relaxed);
                    tracing::info!(rescued = n, "returned expired leases to pending");
                    self.wake.notify_waiters();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "lease rescue failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {},
                _ = shutdown.changed() => {},
            }
        }
    }

    /// Registers we may send to right now (circuit closed, or this caller holds the half-open
    /// trial).
    fn open_lanes(&self) -> Vec<(String, Admission)> {
        self.lanes.values().map(|l| (l.name.clone(), l.breaker.allow())).filter(|(_, a)| a.allowed()).collect()
    }

    /// One batch for the admitted registers. A trial that claimed nothing for its register is
    /// handed back (its records may all be in backoff longer than the open period, or the batch
    /// went to another register), so the breaker never waits for an outcome that cannot come.
    async fn deliver_admitted(&self, admitted: &[(String, Admission)]) -> Result<usize> {
        let lanes: Vec<String> = admitted.iter().map(|(n, _)| n.clone()).collect();
        let release_unused = |claimed: &[String]| {
            for (name, a) in admitted {
                if *a == Admission::Trial && !claimed.contains(name) {
                    self.lanes[name].breaker.release_trial();
                }
            }
        };
        match self.deliver_batch_with(&lanes, &release_unused).await {
            Ok(n) => Ok(n),
            Err(e) => {
                // The claim failed: nothing was sent, no trial outcome will come.
                release_unused(&[]);
                Err(e)
            }
        }
    }

    async fn worker(&self, _n: usize, shutdown: watch::Receiver<bool>) {
        let idle = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        while !*shutdown.borrow() {
            let lanes = self.open_lanes();
            if lanes.is_empty() {
                tokio::time::sleep(idle).await;
                continue;
            }
            match self.deliver_admitted(&lanes).await {
                Ok(0) => {
                    let notified = self.wake.notified();
                    tokio::select! {
                        _ = notified => {},
                        _ = tokio::time::sleep(idle) => {},
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "delivery batch failed; retrying");
                    tokio::time::sleep(idle).await;
                }
            }
        }
    }

    /// Claim and send one batch of these registers. Returns how many records were handled.
    pub async fn deliver_batch(&self, lanes: &[String]) -> Result<usize> {
        self.deliver_batch_with(lanes, &|_| {}).await
    }

    /// `after_claim` learns which registers got records, before anything is sent.
    async fn deliver_batch_with(&self, lanes: &[String], after_claim: &(dyn Fn(&[String]) + Sync)) -> Result<usize> {
        let claimed = self.store.claim(&self.owner, lanes, self.settings.batch_size, self.settings.lease_seconds).await?;
        let mut got: Vec<String> = claimed.iter().map(|c| c.record.register.clone()).collect();
        got.sort();
        got.dedup();
        after_claim(&got);
        if claimed.is_empty() {
            return Ok(0);
        }
        let n = claimed.len();
        // Heartbeat the whole batch while it is being sent.
        let ids: Vec<i64> = claimed.iter().map(|c| c.record.id).collect();
        let hb_store = self.store.clone();
        let hb_owner = self.owner.clone();
        let lease = self.settings.lease_seconds;
        let every = Duration::from_secs(self.settings.heartbeat_seconds.max(1));
        // Stopped by a signal, never aborted: cancelling a store call mid-transaction could
        // leave a pooled connection inside that transaction.
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {},
                    _ = &mut stop_rx => return,
                }
                if let Err(e) = hb_store.heartbeat(&hb_owner, &ids, lease).await {
                    tracing::warn!(error = %e, "lease heartbeat failed");
                }
            }
        });
        // Send concurrently within the batch; one register's records stay rate-limited.
        let sends = claimed.iter().map(|c| self.send_one(c));
        let results = futures::future::join_all(sends).await;
        let _ = stop_tx.send(());
        let _ = heartbeat.await;
        let now = chrono::Utc::now();
        let mut done = Vec::with_capacity(n);
        let mut circuit_events = vec![];
        for (c, result) in claimed.iter().zip(results) {
            let lane = &self.lanes[&c.record.register];
            let ev = match &result {
                SendResult::Transient { .. } => lane.breaker.failure(),
                _ => lane.breaker.success(),
            };
            if ev != BreakerEvent::None {
                circuit_events.push((lane.name.clone(), ev));
            }
            let outcome = policy::outcome_for(c, result, &lane.settings.retry, now);
            let label = match &outcome {
                crate::store::Outcome::Delivered { .. } => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    "delivered"
                }
                crate::store::Outcome::Retry { .. } => {
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    "retry"
                }
                crate::store::Outcome::Rejected { .. } => {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    "rejected"
                }
                crate::store::Outcome::Dead { .. } => {
                    self.counters.dead.fetch_add(1, Ordering::Relaxed);
                    "dead"
                }
            };
            let _ = label;
            done.push((c, outcome));
        }
        let kept = self.store.finish_many(&self.owner, done).await?;
        let lost = kept.iter().filter(|k| !**k).count() as u64;
        if lost > 0 {
            self.counters.lost_leases.fetch_add(lost, Ordering::Relaxed);
        }
        for (register, ev) in circuit_events {
            let (k, state) = match ev {
                BreakerEvent::Opened => (kind::CIRCUIT_OPEN, "open"),
                _ => (kind::CIRCUIT_CLOSED, "closed"),
            };
            crate::admin::metrics::record_circuit(&register, ev == BreakerEvent::Opened);
            tracing::warn!(register = %register, state, "circuit breaker changed");
            let _ = self.store.audit(vec![NewAuditEvent::system(k, &crate::audit::correlation_id(), &register, serde_json::json!({"owner": self.owner}))]).await;
        }
        Ok(n)
    }

    async fn send_one(&self, c: &Claimed) -> SendResult {
        let Some(lane) = self.lanes.get(&c.record.register) else {
            return SendResult::Rejected { operation: "NONE".into(), http_status: None, reason: format!("no register named '{}' is configured", c.record.register) };
        };
        lane.limiter.until_ready().await;
        let started = Instant::now();
        let r = lane.sink.send(c).await;
        let outcome = match &r {
            SendResult::Delivered { .. } => "delivered",
            SendResult::Transient { .. } => "transient",
            SendResult::Rejected { .. } => "rejected",
        };
        crate::admin::metrics::record_send(&lane.name, outcome, started.elapsed());
        r
    }

    /// Deliver until nothing is due (or `deadline` passes): for `run --once`, backfills and tests.
    /// Records waiting for a later retry are left for the running daemon.
    pub async fn drain(&self, deadline: Duration) -> Result<usize> {
        let end = Instant::now() + deadline;
        let mut total = 0;
        loop {
            let lanes = self.open_lanes();
            let n = if lanes.is_empty() { 0 } else { self.deliver_admitted(&lanes).await? };
            total += n;
            if n == 0 {
                let due_later = self.store.queue_depth().await?;
                if due_later == 0 || Instant::now() >= end {
                    return Ok(total);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if Instant::now() >= end {
                return Ok(total);
            }
        }
    }
}
