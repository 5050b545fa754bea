//! The delivery engine: workers claim due outbox records with a lease, send them outside the
//! claim transaction (heartbeating long sends), and record each outcome with its audit event.
//! Per register: a retry policy (backon), a circuit breaker and a rate limit (governor). A
//! rescuer returns expired leases to `pending`. Replicas share the work through the store only.

pub mod policy;
pub mod progress;

use crate::audit::{kind, NewAuditEvent};
use crate::config::{DeliverySettings, RegisterSettings};
use crate::sinks::{SendResult, Sink};
use crate::store::{Claimed, Outcome, Store};
use anyhow::Result;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use policy::{Admission, Breaker, BreakerEvent};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// A sent batch: each record's outcome, and the breaker changes the sends caused.
struct SentBatch<'a> {
    done: Vec<(&'a Claimed, Outcome)>,
    circuit_events: Vec<(String, BreakerEvent)>,
}

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
            if let Err(e) = self.rescue().await {
                tracing::warn!(error = %e, "lease rescue failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {},
                _ = shutdown.changed() => {},
            }
        }
    }

    /// Return expired leases to `pending`, counted, and wake the idle workers.
    async fn rescue(&self) -> Result<u64> {
        let n = self.store.rescue_expired().await?;
        if n > 0 {
            self.counters.rescued.fetch_add(n, Ordering::Relaxed);
            tracing::info!(rescued = n, "returned expired leases to pending");
            self.wake.notify_waiters();
        }
        Ok(n)
    }

    /// Registers we may send to right now (circuit closed, or this caller holds the half-open
    /// trial).
    fn open_lanes(&self) -> Vec<(String, Admission)> {
        self.lanes.values().map(|l| (l.name.clone(), l.breaker.allow())).filter(|(_, a)| a.allowed()).collect()
    }

    /// Claim one batch for the admitted registers. A trial that claimed nothing for its register
    /// is handed back (its records may all be in backoff longer than the open period, or the
    /// batch went to another register), so the breaker never waits for an outcome that cannot
    /// come.
    async fn claim_admitted(&self, admitted: &[(String, Admission)], settle: Option<Vec<(&Claimed, Outcome)>>) -> Result<(Vec<bool>, Vec<Claimed>)> {
        let lanes: Vec<String> = admitted.iter().map(|(n, _)| n.clone()).collect();
        let (limit, lease) = (self.settings.batch_size, self.settings.lease_seconds);
        let result = match settle {
            Some(done) if !done.is_empty() => self.store.finish_and_claim(&self.owner, done, &lanes, limit, lease).await,
            _ => self.store.claim(&self.owner, &lanes, limit, lease).await.map(|c| (vec![], c)),
        };
        let claimed_registers: Vec<&str> = match &result {
            Ok((_, c)) => c.iter().map(|c| c.record.register.as_str()).collect(),
            // The claim failed: nothing was sent, no trial outcome will come.
            Err(_) => vec![],
        };
        for (name, a) in admitted {
            if *a == Admission::Trial && !claimed_registers.contains(&name.as_str()) {
                self.lanes[name].breaker.release_trial();
            }
        }
        result
    }

    /// A worker: claim, send, then settle the batch and claim the next one in one store
    /// transaction, so the steady state costs one commit per batch. A batch in hand is always
    /// sent and settled, even after `shutdown` (within the grace period): it is never claimed
    /// and then left behind.
    async fn worker(&self, _n: usize, shutdown: watch::Receiver<bool>) {
        let idle = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        let mut batch: Vec<Claimed> = vec![];
        loop {
            let stopping = *shutdown.borrow();
            if batch.is_empty() {
                if stopping {
                    return;
                }
                let lanes = self.open_lanes();
                if lanes.is_empty() {
                    tokio::time::sleep(idle).await;
                    continue;
                }
                match self.claim_admitted(&lanes, None).await {
                    Ok((_, b)) if b.is_empty() => {
                        let notified = self.wake.notified();
                        tokio::select! {
                            _ = notified => {},
                            _ = tokio::time::sleep(idle) => {},
                        }
                        continue;
                    }
                    Ok((_, b)) => batch = b,
                    Err(e) => {
                        tracing::warn!(error = %e, "delivery batch failed; retrying");
                        tokio::time::sleep(idle).await;
                        continue;
                    }
                }
            }
            let claimed = std::mem::take(&mut batch);
            let sent = self.send_batch(&claimed).await;
            // The next batch's registers are chosen after this batch's outcomes reached the
            // breakers; none once shutting down.
            let next = if *shutdown.borrow() { vec![] } else { self.open_lanes() };
            match self.settle(sent, &next).await {
                Ok(b) => batch = b,
                Err(e) => {
                    tracing::warn!(error = %e, "delivery batch failed; retrying");
                    tokio::time::sleep(idle).await;
                }
            }
        }
    }

    /// Claim and send one batch of these registers. Returns how many records were handled.
    pub async fn deliver_batch(&self, lanes: &[String]) -> Result<usize> {
        let claimed = self.store.claim(&self.owner, lanes, self.settings.batch_size, self.settings.lease_seconds).await?;
        self.deliver_claimed(claimed).await
    }

    /// One batch for the admitted registers, settled on its own (for `drain`).
    async fn deliver_admitted(&self, admitted: &[(String, Admission)]) -> Result<usize> {
        let (_, claimed) = self.claim_admitted(admitted, None).await?;
        self.deliver_claimed(claimed).await
    }

    async fn deliver_claimed(&self, claimed: Vec<Claimed>) -> Result<usize> {
        if claimed.is_empty() {
            return Ok(0);
        }
        let sent = self.send_batch(&claimed).await;
        self.settle(sent, &[]).await?;
        Ok(claimed.len())
    }

    /// Send a claimed batch (concurrently; one register's records stay rate-limited), keeping
    /// its leases alive meanwhile. Returns each record's outcome; the breakers have seen them.
    async fn send_batch<'a>(&self, claimed: &'a [Claimed]) -> SentBatch<'a> {
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
        let results = futures::future::join_all(claimed.iter().map(|c| self.send_one(c))).await;
        let _ = stop_tx.send(());
        let _ = heartbeat.await;
        let now = chrono::Utc::now();
        let mut done = Vec::with_capacity(claimed.len());
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
            let counter = match &outcome {
                Outcome::Delivered { .. } => &self.counters.delivered,
                Outcome::Retry { .. } => &self.counters.retried,
                Outcome::Rejected { .. } => &self.counters.rejected,
                Outcome::Dead { .. } => &self.counters.dead,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            done.push((c, outcome));
        }
        SentBatch { done, circuit_events }
    }

    /// Record a sent batch's outcomes and, if `next` names admitted registers, claim the next
    /// batch in the same transaction. Returns the next batch.
    async fn settle(&self, sent: SentBatch<'_>, next: &[(String, Admission)]) -> Result<Vec<Claimed>> {
        let (kept, next_batch) = if next.is_empty() {
            (self.store.finish_many(&self.owner, sent.done).await?, vec![])
        } else {
            self.claim_admitted(next, Some(sent.done)).await?
        };
        let lost = kept.iter().filter(|k| !**k).count() as u64;
        if lost > 0 {
            self.counters.lost_leases.fetch_add(lost, Ordering::Relaxed);
        }
        for (register, ev) in sent.circuit_events {
            let (k, state) = match ev {
                BreakerEvent::Opened => (kind::CIRCUIT_OPEN, "open"),
                _ => (kind::CIRCUIT_CLOSED, "closed"),
            };
            crate::admin::metrics::record_circuit(&register, ev == BreakerEvent::Opened);
            tracing::warn!(register = %register, state, "circuit breaker changed");
            let _ = self.store.audit(vec![NewAuditEvent::system(k, &crate::audit::correlation_id(), &register, serde_json::json!({"owner": self.owner}))]).await;
        }
        Ok(next_batch)
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
    /// Leases left by a process that died (or whose workers were aborted at shutdown) are
    /// rescued here too once they expire, as the daemon's rescuer would: without it, a
    /// `run --once` after a crash found the crashed process's records forever `sending`.
    pub async fn drain(&self, deadline: Duration) -> Result<usize> {
        let end = Instant::now() + deadline;
        let rescue_every = Duration::from_secs(self.settings.rescue_interval_seconds.max(1));
        let mut next_rescue = Instant::now();
        let mut total = 0;
        loop {
            if Instant::now() >= next_rescue {
                self.rescue().await?;
                next_rescue = Instant::now() + rescue_every;
            }
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
