//! From what the mappers want the registers to hold to outbox changes.
//!
//! Mappers (pure) say, for one subject (a patient, or a PVK unit-month), which register records
//! should exist now ([`RegisterIntent`]) and which cannot be sent yet ([`Incomplete`]).
//! [`reconcile`] compares that with what the store already intends for the subject and yields
//! the [`ChangeSet`] parts: upserts for new or changed records, retractions for records no longer
//! wanted (opt-out, nullified documents), worklist entries for incomplete ones. The state machine
//! itself lives in `store::outbox`; the shapes handed to the store are in [`changes`].

pub mod changes;

pub use changes::*;

use crate::audit::{kind, NewAuditEvent, SYSTEM};
use crate::model::PatientId;
use chrono::NaiveDate;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

pub type Payload = serde_json::Map<String, serde_json::Value>;

/// A register record that should exist with this content.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegisterIntent {
    pub key: RecordKey,
    /// `ColumnName → value`, complete and valid for the form (personal data: never log it).
    #[serde(skip)]
    pub payload: Payload,
    /// Columns that identify an existing registration (e.g. SubjectKey + EventDate).
    #[serde(skip)]
    pub lookup: Payload,
    /// Why it exists (audit detail; no personal data).
    pub detail: serde_json::Value,
}

/// A registration that should exist but lacks mandatory answers in the journal.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incomplete {
    pub idem_key: String,
    pub unit: String,
    pub form: String,
    pub missing: Vec<String>,
    pub event_date: Option<NaiveDate>,
}

/// Why a subject's earlier records are no longer wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetractReason {
    /// The patient objects to quality-register reporting.
    OptOut,
    /// The journal no longer supports the record (nullified or changed documents).
    NoLongerSupported,
}

impl RetractReason {
    pub fn text(self) -> &'static str {
        match self {
            RetractReason::OptOut => "patient objects to quality-register reporting (opt-out)",
            RetractReason::NoLongerSupported => "the journal no longer supports this registration (document nullified or changed)",
        }
    }
}

/// What the store already holds for a subject: the latest version's (op, state) per key, and the
/// keys currently on the worklist.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    /// idem_key → (op, state) of the latest version.
    pub intents: BTreeMap<String, (String, String)>,
    pub worklist: BTreeSet<String>,
}

/// Turn a subject's desired state into outbox and worklist changes (appended to `cs`).
#[allow(clippy::too_many_arguments)]
pub fn reconcile(
    cs: &mut ChangeSet,
    connector: &str,
    subject: &str,
    patient: Option<&PatientId>,
    intents: Vec<RegisterIntent>,
    incomplete: Vec<Incomplete>,
    existing: &Existing,
    opted_out: bool,
    correlation_id: &str,
) {
    let wanted: BTreeSet<String> = intents.iter().map(|i| i.key.idem_key.clone()).collect();
    let pending_keys: BTreeSet<String> = incomplete.iter().map(|i| i.idem_key.clone()).collect();
    for i in intents {
        cs.outbox.push(OutboxChange::Upsert { key: i.key, payload: i.payload, lookup: i.lookup, correlation_id: correlation_id.to_string(), detail: i.detail });
    }
    // Records we intended before and no longer want: retract (unless already retracted). An
    // incomplete one that was sent earlier stays in the register until it is complete again.
    let reason = if opted_out { RetractReason::OptOut } else { RetractReason::NoLongerSupported };
    let mut retracted = 0;
    for (key, (op, _state)) in &existing.intents {
        if wanted.contains(key) || op == "retract" || (!opted_out && pending_keys.contains(key)) {
            continue;
        }
        cs.outbox.push(OutboxChange::Retract { idem_key: key.clone(), reason: reason.text().to_string(), correlation_id: correlation_id.to_string(), actor: SYSTEM.to_string() });
        retracted += 1;
    }
    if opted_out && retracted > 0 {
        cs.audit.push(NewAuditEvent::system(kind::OPT_OUT, correlation_id, subject, serde_json::json!({"connector": connector, "retracted": retracted})));
    }
    // Worklist: add what is incomplete now, remove what no longer is.
    if let Some(p) = patient {
        for inc in &incomplete {
            if opted_out {
                continue;
            }
            cs.worklist.push(WorklistChange::Put {
                idem_key: inc.idem_key.clone(),
                connector: connector.to_string(),
                unit: inc.unit.clone(),
                form: inc.form.clone(),
                patient_key: subject.to_string(),
                patient: p.clone(),
                missing: inc.missing.clone(),
                event_date: inc.event_date.map(|d| d.to_string()),
            });
            if !existing.worklist.contains(&inc.idem_key) {
                cs.audit.push(NewAuditEvent::system(
                    kind::WORKLIST_ADDED,
                    correlation_id,
                    &inc.idem_key,
                    serde_json::json!({"form": inc.form, "unit": inc.unit, "missing": inc.missing}),
                ));
            }
        }
    }
    for key in &existing.worklist {
        if opted_out || !pending_keys.contains(key) {
            cs.worklist.push(WorklistChange::Remove { idem_key: key.clone() });
            cs.audit.push(NewAuditEvent::system(kind::WORKLIST_RESOLVED, correlation_id, key, serde_json::json!({"now": if wanted.contains(key) { "complete" } else { "not needed" }})));
        }
    }
}
