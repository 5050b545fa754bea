//! What the pure side hands to the store: the [`ChangeSet`] one logical step writes in one
//! transaction (documents, outbox changes, worklist, episodes, PVK results) and the rows it is
//! made of, plus [`Registration`], what the register holds under a key.
//!
//! These are plain data. They live here, not in `store`, so that `registers/*` and `outbox`
//! build them without depending on the store (ARCHITECTURE.md, rules of dependency); `store`
//! re-exports them and is the only one that writes them.

use crate::audit::NewAuditEvent;
use crate::model::{PatientId, Record};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Identity of a register record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordKey {
    /// Idempotency key: register, unit, patient-episode or aggregate key, form.
    pub idem_key: String,
    pub register: String,
    pub connector: String,
    /// Journal unit HSA id.
    pub unit: String,
    /// Register form name (e.g. `FVPat`, `Indikatorvarde`).
    pub form: String,
    /// Patient pseudonym, or the aggregate's description; never a personnummer.
    pub subject: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OutboxChange {
    /// The register should hold this payload (`ColumnName → value`) under this key.
    Upsert {
        key: RecordKey,
        payload: serde_json::Map<String, serde_json::Value>,
        /// Columns that find an existing registration if an earlier send had an unknown outcome.
        lookup: serde_json::Map<String, serde_json::Value>,
        correlation_id: String,
        /// Why (audit detail, no personal data).
        detail: serde_json::Value,
    },
    /// The register should no longer hold anything under this key (opt-out, nullified…).
    Retract { idem_key: String, reason: String, correlation_id: String, actor: String },
}

/// What the register holds under a key, as far as we know.
#[derive(Clone, Debug, Serialize)]
pub struct Registration {
    pub idem_key: String,
    pub register: String,
    pub connector: String,
    pub unit: String,
    pub form: String,
    pub subject: Option<String>,
    /// The register's reference (Stratum EventID).
    pub event_id: Option<String>,
    pub delivered_hash: Option<String>,
    #[serde(skip)]
    pub delivered_payload: Option<serde_json::Map<String, serde_json::Value>>,
    /// `absent`, `present` or `retracted`.
    pub state: String,
}

/// A clinical document as stored (the canonical record, encrypted at rest).
#[derive(Clone, Debug)]
pub struct DocumentUpsert {
    pub connector: String,
    pub patient_key: String,
    pub record: Record,
    /// `record.content_hash()` when the caller already computed it (it is not cheap).
    pub content_hash: Option<String>,
}

#[derive(Clone, Debug)]
pub struct NewQuarantine {
    pub connector: String,
    pub run_id: Option<i64>,
    pub document: String,
    pub field: String,
    pub reason: String,
    pub patient_key: Option<String>,
    /// The offending raw bytes (encrypted at rest), when there are any worth keeping.
    pub raw: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub enum WorklistChange {
    /// A registration that cannot be sent yet because mandatory answers are missing.
    Put { idem_key: String, connector: String, unit: String, form: String, patient_key: String, patient: PatientId, missing: Vec<String>, event_date: Option<String> },
    Remove { idem_key: String },
}

/// A SAR episode found in the journal (for täckningsgrad): which forms are due by now.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpisodeRow {
    pub episode_key: String,
    pub connector: String,
    pub unit: String,
    pub patient_key: String,
    pub joint: String,
    pub first_visit_date: String,
    /// Form names due (their window has opened) for this episode.
    pub forms_due: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PvkResultRow {
    pub connector: String,
    pub rule_year: i32,
    pub unit: String,
    pub year: i32,
    pub month: u32,
    pub indicator: String,
    pub numerator: Option<i64>,
    pub denominator: Option<i64>,
    pub computable: bool,
    pub suppressed: bool,
    pub note: Option<String>,
    /// Patient-level list behind the numbers (personal data: encrypted, shown only with the right).
    #[serde(skip)]
    pub patient_list: Option<PatientList>,
}

/// A cell's patient list as it is stored: its compact JSON text, gzip-compressed. A region's
/// base-population list names every listed patient of a vårdcentral; compressed it is a fifth
/// of the text, and the engine writes it straight into the compressor
/// ([`PatientList::writer`]), so the full text never sits in memory. Its `Debug` never shows
/// the identities inside.
#[derive(Clone, PartialEq)]
pub struct PatientList(Vec<u8>);

/// gzip's magic bytes: what tells a compressed list from one stored as plain JSON text (lists
/// written before compression, whose first byte is `{`).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

impl PatientList {
    pub fn new(list: &serde_json::Value) -> PatientList {
        let mut w = PatientList::writer();
        serde_json::to_writer(&mut w, list).expect("writing to memory does not fail");
        w.finish().expect("writing to memory does not fail")
    }

    /// Write a list's JSON text into this, then `finish`.
    pub fn writer() -> PatientListWriter {
        PatientListWriter(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()))
    }

    /// The stored form (what the store encrypts).
    pub fn stored(&self) -> &[u8] {
        &self.0
    }

    /// The list as a JSON value (for reading it, e.g. in tests and the admin side).
    pub fn value(&self) -> serde_json::Value {
        PatientList::parse_stored(&self.0).expect("a PatientList holds valid compressed JSON")
    }

    /// Read a stored list: compressed, or plain JSON text as lists were first stored.
    pub fn parse_stored(bytes: &[u8]) -> anyhow::Result<serde_json::Value> {
        if bytes.starts_with(&GZIP_MAGIC) {
            Ok(serde_json::from_reader(flate2::read::GzDecoder::new(bytes))?)
        } else {
            Ok(serde_json::from_slice(bytes)?)
        }
    }
}

/// Compresses a patient list's JSON text as it is written.
pub struct PatientListWriter(flate2::write::GzEncoder<Vec<u8>>);

impl std::io::Write for PatientListWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl PatientListWriter {
    pub fn finish(self) -> std::io::Result<PatientList> {
        Ok(PatientList(self.0.finish()?))
    }
}

impl std::fmt::Debug for PatientList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PatientList({} bytes compressed)", self.0.len())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PvkQualityRow {
    pub connector: String,
    pub unit: String,
    pub year: i32,
    pub month: u32,
    pub measure: String,
    pub count: i64,
}

/// Everything one logical step writes, applied in one transaction.
#[derive(Clone, Debug, Default)]
pub struct ChangeSet {
    pub documents: Vec<DocumentUpsert>,
    pub outbox: Vec<OutboxChange>,
    pub quarantine: Vec<NewQuarantine>,
    pub audit: Vec<NewAuditEvent>,
    /// (connector, unit, value)
    pub watermarks: Vec<(String, String, DateTime<Utc>)>,
    pub worklist: Vec<WorklistChange>,
    /// Replace the stored episodes of (connector, patient_key) with these.
    pub episodes: Vec<(String, String, Vec<EpisodeRow>)>,
    pub pvk_results: Vec<PvkResultRow>,
    pub pvk_quality: Vec<PvkQualityRow>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
            && self.outbox.is_empty()
            && self.quarantine.is_empty()
            && self.audit.is_empty()
            && self.watermarks.is_empty()
            && self.worklist.is_empty()
            && self.episodes.is_empty()
            && self.pvk_results.is_empty()
            && self.pvk_quality.is_empty()
    }
}


#[cfg(test)]
mod tests {
    use super::PatientList;

    #[test]
    fn a_patient_list_is_stored_compressed_and_reads_back() {
        let patients: Vec<_> = (0..2000).map(|i| serde_json::json!({"patient_key": format!("{i:024x}"), "roles": ["denominator"]})).collect();
        let list = serde_json::json!({"list_format": 1, "patients": patients});
        let stored = PatientList::new(&list);
        assert!(stored.stored().starts_with(&super::GZIP_MAGIC), "stored compressed");
        assert!(stored.stored().len() * 4 < list.to_string().len(), "{} bytes stored for {} of text", stored.stored().len(), list.to_string().len());
        assert_eq!(stored.value(), list);
        assert_eq!(PatientList::parse_stored(stored.stored()).unwrap(), list);
    }

    #[test]
    fn a_list_stored_as_plain_json_text_still_reads() {
        let list = serde_json::json!({"list_format": 1, "patients": [{"patient_key": "abc"}]});
        assert_eq!(PatientList::parse_stored(list.to_string().as_bytes()).unwrap(), list);
        assert!(PatientList::parse_stored(b"\x1f\x8bnot gzip").is_err(), "a damaged list is an error, not a panic");
    }
}
