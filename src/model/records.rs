//! The canonical clinical records every source produces and every mapper reads.

use super::{HsaId, PatientId};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Europe::Stockholm;
use serde::{Deserialize, Serialize};

/// ICD-10-SE.
pub const OID_ICD10SE: &str = "1.2.752.116.1.1.1.1.3";
/// KVÅ (Klassifikation av vårdåtgärder).
pub const OID_KVA: &str = "1.2.752.116.1.3.2.1.4";
/// SNOMED CT SE.
pub const OID_SNOMED_SE: &str = "1.2.752.116.2.1.1";
/// HSA id as II root.
pub const OID_HSA: &str = "1.2.752.129.2.1.4.1";

/// Where a record came from. Never carries personal data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Connector that fetched it.
    pub connector: String,
    /// HSA id (or other id) of the source system.
    pub source_system: String,
    /// The source's stable id of the document (or activity/observation id).
    pub document_id: String,
    pub fetched_at: DateTime<Utc>,
}

/// A coded value: code system OID + code.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Code {
    pub system: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Code {
    pub fn new(system: &str, code: &str) -> Code {
        Code { system: system.to_string(), code: code.to_string(), display: None }
    }
}

/// A point in time as the journal gave it, interpreted in Europe/Stockholm and kept with its
/// offset so that both the local wall-clock time and the instant survive.
pub type LocalTime = DateTime<FixedOffset>;

/// Interpret a naive local time in Europe/Stockholm. In the autumn fold the earlier instant is
/// taken; a time inside the spring gap is moved forward by the gap (as wall clocks do).
pub fn stockholm(naive: NaiveDateTime) -> LocalTime {
    match Stockholm.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t.fixed_offset(),
        chrono::LocalResult::Ambiguous(a, _) => a.fixed_offset(),
        chrono::LocalResult::None => Stockholm
            .from_local_datetime(&(naive + chrono::Duration::hours(1)))
            .earliest()
            .expect("one hour after a DST gap exists")
            .fixed_offset(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosisKind {
    Main,
    Secondary,
}

/// A vårdkontakt (visit, phone contact, admission…).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CareContact {
    pub provenance: Provenance,
    pub patient: PatientId,
    pub care_contact_id: Option<String>,
    pub unit: Option<HsaId>,
    pub start: Option<LocalTime>,
    pub end: Option<LocalTime>,
    /// careContactCode (1 Besök, 2 Telefon, 3 Vårdtillfälle, 4 Dagsjukvård, 5 Annan).
    pub contact_type: Option<Code>,
    pub status: Option<Code>,
    /// Role (profession) code of the accountable professional, where given.
    pub profession: Option<Code>,
    pub nullified: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub provenance: Provenance,
    pub patient: PatientId,
    pub care_contact_id: Option<String>,
    pub unit: Option<HsaId>,
    /// ICD-10-SE code, normalised without the dot (e.g. `M170`).
    pub code: Code,
    pub kind: DiagnosisKind,
    pub chronic: Option<bool>,
    pub time: Option<LocalTime>,
    pub profession: Option<Code>,
    pub nullified: bool,
}

/// An åtgärd (procedure), typically KVÅ.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    pub provenance: Provenance,
    pub patient: PatientId,
    pub care_contact_id: Option<String>,
    pub unit: Option<HsaId>,
    pub code: Code,
    pub time: Option<LocalTime>,
    pub status: Option<Code>,
    pub profession: Option<Code>,
    pub nullified: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ObservationValue {
    Quantity { value: f64, unit: Option<String> },
    Code { code: Code },
    Date { value: LocalTime },
    Period { start: Option<LocalTime>, end: Option<LocalTime> },
    Text { value: String },
}

/// A coded observation (measurement, keyword answer, questionnaire item).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub provenance: Provenance,
    pub patient: PatientId,
    pub care_contact_id: Option<String>,
    pub unit: Option<HsaId>,
    pub term: Code,
    pub value: Option<ObservationValue>,
    pub time: Option<LocalTime>,
    pub profession: Option<Code>,
    pub nullified: bool,
}

/// One canonical record of any kind. (Tagged `record`, not `kind`: a diagnosis has a `kind`
/// field of its own.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    CareContact(CareContact),
    Diagnosis(Diagnosis),
    Activity(Activity),
    Observation(Observation),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    CareContact,
    Diagnosis,
    Activity,
    Observation,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::CareContact => "care_contact",
            RecordKind::Diagnosis => "diagnosis",
            RecordKind::Activity => "activity",
            RecordKind::Observation => "observation",
        }
    }
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::CareContact(_) => RecordKind::CareContact,
            Record::Diagnosis(_) => RecordKind::Diagnosis,
            Record::Activity(_) => RecordKind::Activity,
            Record::Observation(_) => RecordKind::Observation,
        }
    }
    pub fn provenance(&self) -> &Provenance {
        match self {
            Record::CareContact(r) => &r.provenance,
            Record::Diagnosis(r) => &r.provenance,
            Record::Activity(r) => &r.provenance,
            Record::Observation(r) => &r.provenance,
        }
    }
    pub fn patient(&self) -> &PatientId {
        match self {
            Record::CareContact(r) => &r.patient,
            Record::Diagnosis(r) => &r.patient,
            Record::Activity(r) => &r.patient,
            Record::Observation(r) => &r.patient,
        }
    }
    pub fn unit(&self) -> Option<&HsaId> {
        match self {
            Record::CareContact(r) => r.unit.as_ref(),
            Record::Diagnosis(r) => r.unit.as_ref(),
            Record::Activity(r) => r.unit.as_ref(),
            Record::Observation(r) => r.unit.as_ref(),
        }
    }
    pub fn nullified(&self) -> bool {
        match self {
            Record::CareContact(r) => r.nullified,
            Record::Diagnosis(r) => r.nullified,
            Record::Activity(r) => r.nullified,
            Record::Observation(r) => r.nullified,
        }
    }
    /// The clinically relevant time of the record (start of a contact, time of the rest).
    pub fn time(&self) -> Option<LocalTime> {
        match self {
            Record::CareContact(r) => r.start,
            Record::Diagnosis(r) => r.time,
            Record::Activity(r) => r.time,
            Record::Observation(r) => r.time,
        }
    }
    pub fn date(&self) -> Option<NaiveDate> {
        self.time().map(|t| t.date_naive())
    }
    /// Stable identity of the record in the source: kind + source system + document id.
    /// The same journal document read twice has the same key.
    pub fn key(&self) -> String {
        let p = self.provenance();
        format!("{}|{}|{}", self.kind().as_str(), p.source_system, p.document_id)
    }
    /// Hash of the clinical content (provenance's fetch time excluded), so a re-read of an
    /// unchanged document is recognised and a changed document becomes an update.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut clone = self.clone();
        match &mut clone {
            Record::CareContact(r) => r.provenance.fetched_at = DateTime::<Utc>::UNIX_EPOCH,
            Record::Diagnosis(r) => r.provenance.fetched_at = DateTime::<Utc>::UNIX_EPOCH,
            Record::Activity(r) => r.provenance.fetched_at = DateTime::<Utc>::UNIX_EPOCH,
            Record::Observation(r) => r.provenance.fetched_at = DateTime::<Utc>::UNIX_EPOCH,
        }
        let bytes = serde_json::to_vec(&clone).expect("records serialise");
        hex::encode(&Sha256::digest(&bytes)[..16])
    }
}

/// An item a source refused, kept apart from the records: which document, which field, why.
/// Never carries personal data (the reason strings are written without values).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Names the document: contract + document id or file name.
    pub document: String,
    /// Path of the offending field, e.g. `careContactHeader/patientId/id`.
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.document, self.field, self.reason)
    }
}

/// Normalise an ICD-10-SE code: upper case, no dot, no spaces (`m17.1` → `M171`).
pub fn normalise_icd(code: &str) -> String {
    code.chars().filter(|c| *c != '.' && !c.is_whitespace()).flat_map(|c| c.to_uppercase()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn stockholm_handles_both_dst_changes() {
        let spring = NaiveDate::from_ymd_opt(2026, 3, 29).unwrap().and_hms_opt(2, 30, 0).unwrap();
        let t = stockholm(spring);
        assert_eq!(t.format("%H:%M %z").to_string(), "03:30 +0200");
        let autumn = NaiveDate::from_ymd_opt(2026, 10, 25).unwrap().and_hms_opt(2, 30, 0).unwrap();
        let t = stockholm(autumn);
        assert_eq!(t.format("%H:%M %z").to_string(), "02:30 +0200");
        let winter = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap().and_hms_opt(9, 0, 0).unwrap();
        assert_eq!(stockholm(winter).offset().local_minus_utc(), 3600);
    }

    #[test]
    fn every_record_kind_survives_a_json_roundtrip() {
        use crate::model::{HsaId, PatientId};
        let prov = Provenance { connector: "c".into(), source_system: "s".into(), document_id: "d".into(), fetched_at: Utc::now() };
        let p = PatientId::parse_national("191212121212", NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()).unwrap();
        let t = Some(stockholm(NaiveDate::from_ymd_opt(2026, 1, 2).unwrap().and_hms_opt(8, 0, 0).unwrap()));
        let unit = Some(HsaId::parse("SE2321000156-FT01").unwrap());
        let recs = vec![
            Record::CareContact(CareContact { provenance: prov.clone(), patient: p.clone(), care_contact_id: None, unit: unit.clone(), start: t, end: None, contact_type: None, status: None, profession: None, nullified: false }),
            Record::Diagnosis(Diagnosis { provenance: prov.clone(), patient: p.clone(), care_contact_id: None, unit: unit.clone(), code: Code::new(OID_ICD10SE, "M170"), kind: DiagnosisKind::Main, chronic: None, time: t, profession: None, nullified: false }),
            Record::Activity(Activity { provenance: prov.clone(), patient: p.clone(), care_contact_id: None, unit: unit.clone(), code: Code::new(OID_KVA, "DV200"), time: t, status: None, profession: None, nullified: true }),
            Record::Observation(Observation { provenance: prov, patient: p, care_contact_id: None, unit, term: Code::new("x", "y"), value: Some(ObservationValue::Quantity { value: 3.0, unit: None }), time: t, profession: None, nullified: false }),
        ];
        for r in recs {
            let back: Record = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn icd_normalisation() {
        assert_eq!(normalise_icd("m17.1"), "M171");
        assert_eq!(normalise_icd("F43.8A"), "F438A");
    }
}
