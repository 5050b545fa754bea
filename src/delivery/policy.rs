//! Retry policy, circuit breaker: what a send result means for the record and the register.

use crate::config::{CircuitSettings, RetrySettings};
use crate::sinks::SendResult;
use crate::store::{Claimed, Outcome};
use backon::BackoffBuilder;
use chrono::{DateTime, Utc};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The delay before retry number `attempt` (1-based: the delay after the first failure is
/// `delay(1)`), per the register's policy. Uses backon's exponential backoff with jitter.
pub fn delay(policy: &RetrySettings, attempt: u32) -> Duration {
    let mut b = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(policy.initial_delay_ms.max(1)))
        .with_factor(policy.multiplier.max(1.0))
        .with_max_delay(Duration::from_millis(policy.max_delay_ms.max(policy.initial_delay_ms.max(1))))
        .without_max_times();
    if policy.jitter {
        b = b.with_jitter();
    }
    let n = attempt.clamp(1, 64) as usize;
    b.build().nth(n - 1).unwrap_or(Duration::from_millis(policy.max_delay_ms))
}

/// Turn a send result into the record's next state: delivered, retry later (with backoff and
/// the register's `Retry-After`), rejected, or dead when the retry budget is spent.
pub fn outcome_for(claimed: &Claimed, result: SendResult, policy: &RetrySettings, now: DateTime<Utc>) -> Outcome {
    match result {
        SendResult::Delivered { operation, http_status, event_id, detail } => Outcome::Delivered { operation, http_status, event_id, detail },
        SendResult::Rejected { operation, http_status, reason } => Outcome::Rejected { operation, http_status, reason },
        SendResult::Transient { operation, http_status, error, retry_after } => {
            let attempts = claimed.record.attempts.max(1) as u32;
            let first = claimed.record.first_attempt.unwrap_or(now);
            let elapsed = (now - first).to_std().unwrap_or_default();
            let out_of_attempts = policy.max_attempts > 0 && attempts >= policy.max_attempts;
            let out_of_time = policy.max_elapsed_seconds > 0 && elapsed >= Duration::from_secs(policy.max_elapsed_seconds);
            if out_of_attempts || out_of_time {
                let why = if out_of_attempts { format!("gave up after {attempts} attempts") } else { format!("gave up after {}s", elapsed.as_secs()) };
                return Outcome::Dead { operation, http_status, error: format!("{error} ({why})") };
            }
            let mut wait = delay(policy, attempts);
            if let Some(ra) = retry_after {
                // The register asked for this much; never come back sooner.
                wait = wait.max(ra);
            }
            let next_at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(1));
            Outcome::Retry { operation, http_status, error, next_at }
        }
    }
}

/// Pauses a register that keeps failing: after `failure_threshold` consecutive transient
/// failures it opens for `open_seconds`, then lets one trial batch through (half-open).
///
/// A trial that sends nothing (every record of the register still in backoff, the batch filled
/// by another register, the claim failed) is handed back with [`Breaker::release_trial`], and a
/// trial whose outcome never arrives expires after `trial_seconds`: either way the next look
/// gets a new trial, so a half-open register is never paused for good.
#[derive(Debug)]
pub struct Breaker {
    settings: CircuitSettings,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// When the current half-open trial was handed out.
    trial_since: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerEvent {
    None,
    Opened,
    Closed,
}

/// What [`Breaker::allow`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: send freely.
    Closed,
    /// Half-open: this caller holds the one trial; it must report a success or failure, or
    /// hand the trial back when it sent nothing.
    Trial,
    /// Open (or another trial is out): send nothing.
    Denied,
}

impl Admission {
    pub fn allowed(self) -> bool {
        self != Admission::Denied
    }
}

impl Breaker {
    pub fn new(settings: CircuitSettings) -> Breaker {
        Breaker { settings, state: Mutex::new(BreakerState::default()) }
    }

    /// May we send to this register now? While open: no. After the pause: one trial at a time,
    /// and a new one once the previous trial is older than `trial_seconds`.
    pub fn allow(&self) -> Admission {
        let mut s = self.state.lock().expect("breaker lock");
        let now = Instant::now();
        match s.open_until {
            None => Admission::Closed,
            Some(t) if now < t => Admission::Denied,
            Some(_) => {
                let bound = Duration::from_secs(self.settings.trial_seconds);
                match s.trial_since {
                    Some(since) if now.duration_since(since) < bound => Admission::Denied,
                    _ => {
                        s.trial_since = Some(now);
                        Admission::Trial
                    }
                }
            }
        }
    }

    /// The trial sent nothing (nothing of this register was claimed): give it back so the next
    /// look can try again.
    pub fn release_trial(&self) {
        self.state.lock().expect("breaker lock").trial_since = None;
    }

    pub fn is_open(&self) -> bool {
        self.state.lock().expect("breaker lock").open_until.is_some()
    }

    pub fn success(&self) -> BreakerEvent {
        let mut s = self.state.lock().expect("breaker lock");
        let was_open = s.open_until.is_some();
        *s = BreakerState::default();
        if was_open {
            BreakerEvent::Closed
        } else {
            BreakerEvent::None
        }
    }

    pub fn failure(&self) -> BreakerEvent {
        let mut s = self.state.lock().expect("breaker lock");
        s.consecutive_failures += 1;
        s.trial_since = None;
        let threshold = self.settings.failure_threshold.max(1);
        if s.consecutive_failures >= threshold {
            let was_open = s.open_until.is_some();
            s.open_until = Some(Instant::now() + Duration::from_secs(self.settings.open_seconds));
            if !was_open {
                return BreakerEvent::Opened;
            }
        }
        BreakerEvent::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetrySettings { initial_delay_ms: 100, multiplier: 2.0, max_delay_ms: 1000, max_attempts: 10, max_elapsed_seconds: 0, jitter: false };
        // (backon computes in floating point: compare whole milliseconds)
        assert_eq!(delay(&p, 1).as_millis(), 100);
        assert_eq!(delay(&p, 2).as_millis(), 200);
        assert_eq!(delay(&p, 3).as_millis(), 400);
        assert_eq!(delay(&p, 10).as_millis(), 1000);
        let j = RetrySettings { jitter: true, ..p };
        for n in 1..6 {
            let d = delay(&j, n);
            assert!(d.as_millis() >= delay(&p, n).as_millis() && d <= delay(&p, n) * 2 + Duration::from_millis(1), "{d:?}");
        }
    }

    #[test]
    fn breaker_opens_pauses_and_half_opens() {
        let b = Breaker::new(CircuitSettings { failure_threshold: 3, open_seconds: 0, trial_seconds: 3600 });
        assert_eq!(b.allow(), Admission::Closed);
        assert_eq!(b.failure(), BreakerEvent::None);
        assert_eq!(b.failure(), BreakerEvent::None);
        assert_eq!(b.failure(), BreakerEvent::Opened);
        // open_seconds = 0: immediately half-open, exactly one trial.
        assert_eq!(b.allow(), Admission::Trial);
        assert_eq!(b.allow(), Admission::Denied);
        assert_eq!(b.success(), BreakerEvent::Closed);
        assert!(b.allow().allowed() && b.allow().allowed());
        let long = Breaker::new(CircuitSettings { failure_threshold: 1, open_seconds: 3600, trial_seconds: 3600 });
        long.failure();
        assert_eq!(long.allow(), Admission::Denied);
    }

    #[test]
    fn a_trial_that_sent_nothing_or_never_ended_is_given_again() {
        let b = Breaker::new(CircuitSettings { failure_threshold: 1, open_seconds: 0, trial_seconds: 3600 });
        b.failure();
        assert_eq!(b.allow(), Admission::Trial);
        assert_eq!(b.allow(), Admission::Denied);
        // Nothing of the register was claimed: the trial is handed back.
        b.release_trial();
        assert_eq!(b.allow(), Admission::Trial);
        // A trial whose outcome never arrives expires (trial_seconds = 0: at once).
        let t = Breaker::new(CircuitSettings { failure_threshold: 1, open_seconds: 0, trial_seconds: 0 });
        t.failure();
        assert_eq!(t.allow(), Admission::Trial);
        assert_eq!(t.allow(), Admission::Trial);
        assert!(t.is_open());
    }
}
