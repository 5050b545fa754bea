//! The audit log: append-only, hash-chained events that explain every state change.
//!
//! Events are appended by the store inside the same transaction as the change they explain
//! (see `store::ChangeSet::audit`). Each event's hash covers its fields and the previous hash, so
//! `registerbrygga audit verify` detects an edited, removed or reordered event and names the first
//! bad one. Details never hold personal data: patients appear as keyed pseudonyms.

use serde::{Deserialize, Serialize};

/// Who did it: the daemon itself, or a named user.
pub const SYSTEM: &str = "system";

/// Event kinds, as stored. Kept as constants so a search on the admin page matches the code.
pub mod kind {
    pub const RUN_STARTED: &str = "run.started";
    pub const RUN_ENDED: &str = "run.ended";
    pub const DOCUMENT_FETCHED: &str = "document.fetched";
    pub const DOCUMENTS_FETCHED: &str = "documents.fetched";
    pub const SOURCE_ERROR: &str = "source.error";
    pub const RECORD_CREATED: &str = "record.created";
    pub const RECORD_UPDATED: &str = "record.updated";
    pub const RECORD_RETRACTED: &str = "record.retracted";
    pub const ATTEMPT_SENT: &str = "attempt.sent";
    pub const RECORD_DELIVERED: &str = "record.delivered";
    pub const RECORD_REJECTED: &str = "record.rejected";
    pub const RECORD_DEAD: &str = "record.dead";
    pub const LEASE_RESCUED: &str = "lease.rescued";
    pub const QUARANTINED: &str = "quarantine.added";
    pub const QUARANTINE_RESOLVED: &str = "quarantine.resolved";
    pub const REPLAY: &str = "replay";
    pub const RETRACT_MANUAL: &str = "retract.manual";
    /// A person's withdrawal holds the key: nothing is sent for it until a person lifts it.
    pub const WITHDRAWAL_HOLD: &str = "withdrawal.hold";
    pub const WITHDRAWAL_LIFTED: &str = "withdrawal.lifted";
    /// A new version for a held key was kept, not sent.
    pub const RECORD_HELD: &str = "record.held";
    pub const OPT_OUT: &str = "patient.opt_out";
    pub const NULLIFIED: &str = "document.nullified";
    pub const WORKLIST_ADDED: &str = "worklist.added";
    pub const WORKLIST_RESOLVED: &str = "worklist.resolved";
    /// A clinic marked a worklist item as handled outside the system (with a reason).
    pub const WORKLIST_HANDLED: &str = "worklist.handled";
    pub const CONFIG_LOADED: &str = "config.loaded";
    pub const CONFIG_RELOAD: &str = "config.reload";
    pub const LOGIN: &str = "login";
    pub const LOGIN_FAILED: &str = "login.failed";
    pub const LOGOUT: &str = "logout";
    pub const USER_CHANGED: &str = "user.changed";
    pub const PATIENT_DATA_VIEW: &str = "patient_data.view";
    pub const AUDIT_PRUNED: &str = "audit.pruned";
    pub const TICK_FIRED: &str = "schedule.tick";
    pub const METADATA_LOADED: &str = "register.metadata";
    pub const CIRCUIT_OPEN: &str = "circuit.open";
    pub const CIRCUIT_CLOSED: &str = "circuit.closed";
    pub const EXPORT_WRITTEN: &str = "export.written";
    pub const PVK_COMPUTED: &str = "pvk.computed";
    pub const BACKFILL: &str = "backfill";
    pub const KEYS_ROTATED: &str = "keys.rotated";
}

/// An event to append. `subject` names what it is about (a record's idempotency key, a
/// connector, a user); `detail` is free JSON without personal data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NewAuditEvent {
    pub actor: String,
    pub kind: String,
    pub correlation_id: String,
    pub subject: String,
    pub detail: serde_json::Value,
}

impl NewAuditEvent {
    pub fn system(kind: &str, correlation_id: &str, subject: impl Into<String>, detail: serde_json::Value) -> NewAuditEvent {
        NewAuditEvent { actor: SYSTEM.into(), kind: kind.into(), correlation_id: correlation_id.into(), subject: subject.into(), detail }
    }
    pub fn by(actor: &str, kind: &str, correlation_id: &str, subject: impl Into<String>, detail: serde_json::Value) -> NewAuditEvent {
        NewAuditEvent { actor: actor.into(), kind: kind.into(), correlation_id: correlation_id.into(), subject: subject.into(), detail }
    }
}

/// A stored event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    pub seq: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub kind: String,
    pub correlation_id: String,
    pub subject: String,
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// A fresh correlation id (ties a run's or a request's events together).
pub fn correlation_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}
