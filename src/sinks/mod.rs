//! Sinks: how a claimed outbox record reaches its register. `stratum/` speaks the Stratum
//! register API (SAR registrations and PVK aggregates); `export/` writes PVK files.

use crate::store::Claimed;
use async_trait::async_trait;
use std::time::Duration;

pub mod export;
pub mod stratum;

/// The result of one send, classified for the delivery engine's state machine.
#[derive(Clone, Debug, PartialEq)]
pub enum SendResult {
    /// The register now holds the record (or no longer holds it, for a retraction).
    /// `operation` is `POST`, `PUT`, `DELETE`, `NOOP` (nothing to change) or `ADOPT`.
    Delivered { operation: String, http_status: Option<u16>, event_id: Option<String>, detail: Option<String> },
    /// Try again later: timeout, connection error, 5xx, 429. `retry_after` from the register.
    Transient { operation: String, http_status: Option<u16>, error: String, retry_after: Option<Duration> },
    /// The register (or our metadata validation before sending) said no; the reason names the
    /// column. Never retried automatically.
    Rejected { operation: String, http_status: Option<u16>, reason: String },
}

#[async_trait]
pub trait Sink: Send + Sync {
    async fn send(&self, claimed: &Claimed) -> SendResult;
}
