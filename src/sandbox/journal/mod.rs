//! The sandbox journal: a synthetic region's Cambio Cosmic as the national RIV-TA producers see it.
//!
//! - [`population`]: a deterministic, seeded population. Only a compact header per patient is
//!   kept; a patient's whole journal (contacts, diagnoses, activities, observations) is derived
//!   again from `(seed, patient index)` when asked for, plus the patient's mutation overlay.
//! - [`truth`]: the generator's own bookkeeping (what it meant to write), from which tests compute
//!   expected register outcomes without going through any mapper.
//! - [`xml`]: writers for the five responses, schema-valid against `conformance/riv`.
//! - [`server`]: SOAP 1.1 over HTTPS with mTLS on loopback, with fault injection and counters.
//!
//! Codes come from [`crate::sandbox::vocabulary`]. ICD-10-SE codes are written with their dot
//! (`M17.1`), as journals show them; the truth keeps them normalised (`M171`).
//!
//! What a consumer can rely on (the choices the contracts leave open):
//! - Every document carries `documentId` (contacts, diagnoses) or `id/extension` (activities,
//!   observations), stable across reads; a changed document keeps its id and changes content.
//! - Diagnoses link to their visit by `diagnosisHeader/careContactId`; activities and
//!   observations by a `relation` with code `VARDKONTAKT` whose `referredInformation/id/extension`
//!   is the visit's `careContactId` (`type` = `vko`).
//! - Contacts and diagnoses say `nullified`; activities and observations, which have no such
//!   element, carry `status` `MAKULERAD` (else `GENOMFORD`).
//! - Observation values: quantities as `pq` (unit per [`term_unit`]), yes/no, joint, side and
//!   ordinal answers (EQ-5D levels etc., "1".."5") as `cv` in LOCAL_TERMS. The physiotherapist's
//!   session counts at 3 months are observations too (`ARTROSSKOLA-ANTAL`,
//!   `HANDLEDD-TRANING-ANTAL`), next to the session activities.
//! - Every response has `result/resultCode` and `result/logId` (see [`xml`] for the three
//!   contracts whose schema has no `result`).
//! - The engagement index lists national ids only: its schema's `registeredResidentIdentification`
//!   pattern cannot hold a reserve number (`yyyymmddSNNC`). Reserve-number patients are served
//!   when asked for by id with their own OID ([`OID_RESERVE_VARMLAND`]), e.g. from a patient
//!   list ([`Population::write_patient_list`]).
//! - Times are local (Europe/Stockholm) wall-clock `YYYYMMDDhhmmss`, `timeStamp` of GetUpdates
//!   included.

pub mod population;
pub mod server;
mod soap;
pub mod truth;
pub mod xml;

pub use population::{archetype, Mutation, Population, PopulationSpec, PopulationStats, SharedPopulation, UnitSpec, VisitSpec};
pub use server::{Faults, JournalHandle, JournalOptions, JournalServer, RequestCounts, NATIONAL_LOGICAL_ADDRESS};
pub use xml::render_patient;
pub use truth::{
    ActivityTruth, Condition, Defect, DiagnosisTruth, EpisodeTruth, ExpectedRegistration, FormTruth, NullifiedDocument, ObservationTruth,
    PatientTruth, Truth, VisitTruth,
};

use crate::sandbox::vocabulary::{obs, unit};
use std::borrow::Cow;

/// OID of Region Värmland's reserve numbers (format `yyyymmddSNNC`), which the sandbox issues to a
/// few patients (research/sources.md §1.8).
pub const OID_RESERVE_VARMLAND: &str = "1.2.752.74.9.2";
/// KV Kön (gender) code system; `1` kvinna, `2` man.
pub const OID_GENDER: &str = "1.2.752.129.2.2.1.1";
/// A code system nobody knows, for deliberately bad items (an arc under the sandbox's own
/// 2.25 UUID OID, so it can never be a real one).
pub const UNKNOWN_CODE_SYSTEM: &str = "2.25.317202611230099";
/// II root of the sandbox journal's document ids (activity and observation `id/root`).
pub const DOCUMENT_ID_ROOT: &str = "2.25.317202611230002";

/// The five SAR forms (research/sar.md §1.1; conformance/stratum/sar-104.json).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum SarForm {
    FVPat,
    FVPT,
    M3Pat,
    M3PT,
    Y1Pat,
}

impl SarForm {
    pub const ALL: [SarForm; 5] = [SarForm::FVPat, SarForm::FVPT, SarForm::M3Pat, SarForm::M3PT, SarForm::Y1Pat];

    pub fn name(self) -> &'static str {
        match self {
            SarForm::FVPat => "FVPat",
            SarForm::FVPT => "FVPT",
            SarForm::M3Pat => "M3Pat",
            SarForm::M3PT => "M3PT",
            SarForm::Y1Pat => "Y1Pat",
        }
    }

    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The journal template's answers for this form: (observation term, mandatory). Mandatory
    /// follows the form's `IsMandatory` questions in sar-104.json. The joint and side are one
    /// pair of answers at the first visit that both first-visit forms read.
    pub fn template(self) -> &'static [(&'static str, bool)] {
        match self {
            SarForm::FVPat => FV_PAT,
            SarForm::FVPT => FV_PT,
            SarForm::M3Pat | SarForm::Y1Pat => FOLLOW_UP_PAT,
            SarForm::M3PT => M3_PT,
        }
    }

    pub fn mandatory(self) -> impl Iterator<Item = &'static str> {
        self.template().iter().filter(|(_, m)| *m).map(|(t, _)| *t)
    }

    pub fn has_term(self, term: &str) -> bool {
        self.template().iter().any(|(t, _)| *t == term)
    }
}

const FV_PAT: &[(&str, bool)] = &[
    (obs::MAIN_JOINT, true),
    (obs::SIDE, false),
    (obs::PAIN_NRS, true),
    (obs::PAIN_FREQUENCY, false),
    (obs::EQ5D_MOBILITY, true),
    (obs::EQ5D_SELFCARE, true),
    (obs::EQ5D_ACTIVITIES, true),
    (obs::EQ5D_PAIN, true),
    (obs::EQ5D_ANXIETY, true),
    (obs::EQ_VAS, true),
    (obs::ASES_PAIN, false),
    (obs::ASES_OTHER, false),
    (obs::WANTS_SURGERY, true),
    (obs::FEAR_OF_MOVEMENT, false),
    (obs::ACTIVITY_MINUTES, false),
    (obs::EXERCISE_MINUTES, false),
    (obs::OA_MEDICATION, false),
    (obs::SICK_LEAVE, false),
    (obs::WALKING_DIFFICULTY_OTHER, false),
    (obs::HEIGHT, false),
    (obs::WEIGHT, false),
    (obs::ON_WAITING_LIST, false),
    (obs::NO_PRIOR_MEDICAL_HELP, false),
];

const FV_PT: &[(&str, bool)] =
    &[(obs::MAIN_JOINT, true), (obs::SIDE, true), (obs::XRAY_DONE, false), (obs::CHAIR_STAND_30S, false), (obs::WALK_40M, false)];

const FOLLOW_UP_PAT: &[(&str, bool)] = &[
    (obs::PAIN_NRS, true),
    (obs::PAIN_FREQUENCY, false),
    (obs::EQ5D_MOBILITY, true),
    (obs::EQ5D_SELFCARE, true),
    (obs::EQ5D_ACTIVITIES, true),
    (obs::EQ5D_PAIN, true),
    (obs::EQ5D_ANXIETY, true),
    (obs::EQ_VAS, true),
    (obs::ASES_PAIN, false),
    (obs::ASES_OTHER, false),
    (obs::WANTS_SURGERY, true),
    (obs::FEAR_OF_MOVEMENT, false),
    (obs::ACTIVITY_MINUTES, false),
    (obs::EXERCISE_MINUTES, false),
    (obs::OA_MEDICATION, false),
    (obs::SICK_LEAVE, false),
    (obs::SATISFACTION, false),
    (obs::USES_KNOWLEDGE, false),
];

const M3_PT: &[(&str, bool)] =
    &[(obs::EDUCATION_SESSIONS, true), (obs::SUPERVISED_EXERCISE_SESSIONS, true), (obs::EXERCISE_ADHERENCE, false)];

/// The `pq` unit of a quantity term; `None` for coded (`cv`) terms.
pub fn term_unit(term: &str) -> Option<&'static str> {
    Some(match term {
        obs::PAIN_NRS | obs::EQ_VAS | obs::ASES_PAIN | obs::ASES_OTHER => unit::SCORE,
        obs::ACTIVITY_MINUTES | obs::EXERCISE_MINUTES => unit::MINUTES_PER_WEEK,
        obs::HEIGHT => unit::CENTIMETRE,
        obs::WEIGHT => unit::KILOGRAM,
        obs::CHAIR_STAND_30S | obs::EDUCATION_SESSIONS | obs::SUPERVISED_EXERCISE_SESSIONS => unit::COUNT,
        obs::WALK_40M => unit::SECOND,
        obs::SIX_MINUTE_WALK => unit::METRE,
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Joint {
    Hip,
    Knee,
    Hand,
}

impl Joint {
    /// The answer code (MEST-BESVARANDE-LED).
    pub fn code(self) -> &'static str {
        use crate::sandbox::vocabulary::answer;
        match self {
            Joint::Hip => answer::HIP,
            Joint::Knee => answer::KNEE,
            Joint::Hand => answer::HAND,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Side {
    Right,
    Left,
    Both,
}

impl Side {
    /// The answer code (SIDA).
    pub fn code(self) -> &'static str {
        use crate::sandbox::vocabulary::answer;
        match self {
            Side::Right => answer::RIGHT,
            Side::Left => answer::LEFT,
            Side::Both => answer::BOTH,
        }
    }
}

/// An observation value as the journal holds it. Quantities carry no unit here: the unit
/// follows from the term ([`term_unit`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AnswerValue {
    Quantity(f64),
    Code(Cow<'static, str>),
}

impl AnswerValue {
    pub fn code(c: &str) -> AnswerValue {
        AnswerValue::Code(Cow::Owned(c.to_string()))
    }
    pub(crate) const fn coded(c: &'static str) -> AnswerValue {
        AnswerValue::Code(Cow::Borrowed(c))
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            AnswerValue::Quantity(v) => Some(*v),
            AnswerValue::Code(_) => None,
        }
    }
    pub fn as_code(&self) -> Option<&str> {
        match self {
            AnswerValue::Code(c) => Some(c),
            AnswerValue::Quantity(_) => None,
        }
    }
}

/// The five RIV-TA contracts the journal serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Contract {
    GetCareContacts,
    GetDiagnosis,
    GetActivities,
    GetObservations,
    GetUpdates,
}

impl Contract {
    pub const ALL: [Contract; 5] =
        [Contract::GetCareContacts, Contract::GetDiagnosis, Contract::GetActivities, Contract::GetObservations, Contract::GetUpdates];

    pub fn name(self) -> &'static str {
        match self {
            Contract::GetCareContacts => "GetCareContacts",
            Contract::GetDiagnosis => "GetDiagnosis",
            Contract::GetActivities => "GetActivities",
            Contract::GetObservations => "GetObservations",
            Contract::GetUpdates => "GetUpdates",
        }
    }

    /// The path below the `/vp` base: `<domain path>/<Contract>/<major>/rivtabp21`.
    pub fn path(self) -> &'static str {
        match self {
            Contract::GetCareContacts => "/clinicalprocess/logistics/logistics/GetCareContacts/3/rivtabp21",
            Contract::GetDiagnosis => "/clinicalprocess/healthcond/description/GetDiagnosis/2/rivtabp21",
            Contract::GetActivities => "/clinicalprocess/activity/actions/GetActivities/1/rivtabp21",
            Contract::GetObservations => "/clinicalprocess/healthcond/basic/GetObservations/1/rivtabp21",
            Contract::GetUpdates => "/itintegration/engagementindex/GetUpdates/1/rivtabp21",
        }
    }

    /// Namespace of the request and response elements.
    pub fn responder_ns(self) -> &'static str {
        match self {
            Contract::GetCareContacts => "urn:riv:clinicalprocess:logistics:logistics:GetCareContactsResponder:3",
            Contract::GetDiagnosis => "urn:riv:clinicalprocess:healthcond:description:GetDiagnosisResponder:2",
            Contract::GetActivities => "urn:riv:clinicalprocess:activity:actions:GetActivitiesResponder:1",
            Contract::GetObservations => "urn:riv:clinicalprocess:healthcond:basic:GetObservationsResponder:1",
            Contract::GetUpdates => "urn:riv:itintegration:engagementindex:GetUpdatesResponder:1",
        }
    }

    /// Namespace of the contract's core components.
    pub fn core_ns(self) -> &'static str {
        match self {
            Contract::GetCareContacts => "urn:riv:clinicalprocess:logistics:logistics:3",
            Contract::GetDiagnosis => "urn:riv:clinicalprocess:healthcond:description:2",
            Contract::GetActivities => "urn:riv:clinicalprocess:activity:actions:1",
            Contract::GetObservations => "urn:riv:clinicalprocess:healthcond:basic:1",
            Contract::GetUpdates => "urn:riv:itintegration:engagementindex:1",
        }
    }

    /// `urn:riv:<domain>:<Contract>Responder:<major>:<Contract>`.
    pub fn soap_action(self) -> String {
        format!("{}:{}", self.responder_ns(), self.name())
    }

    /// The engagement-index service domain whose data this contract returns.
    pub fn service_domain(self) -> Option<&'static str> {
        Domain::ALL.iter().find(|d| d.contract() == self).map(|d| d.uri())
    }

    /// Schema of the response (relative to the repository root), for conformance tests.
    pub fn response_xsd(self) -> &'static str {
        match self {
            Contract::GetCareContacts => "conformance/riv/GetCareContacts-3.0/interactions/GetCareContactsInteraction/GetCareContactsResponder_3.0.xsd",
            Contract::GetDiagnosis => "conformance/riv/GetDiagnosis-2.0/interactions/GetDiagnosisInteraction/GetDiagnosisResponder_2.0.xsd",
            Contract::GetActivities => "conformance/riv/GetActivities-1.0/interactions/GetActivitiesInteraction/GetActivitiesResponder_1.0.xsd",
            Contract::GetObservations => {
                "conformance/riv/GetObservations-1.1/interactions/GetObservationsInteraction/GetObservationsResponder_1.1.xsd"
            }
            Contract::GetUpdates => "conformance/riv/EngagementIndex-1.0/interactions/GetUpdatesInteraction/GetUpdatesResponder_1.0.xsd",
        }
    }

    pub(crate) fn from_path(p: &str) -> Option<Contract> {
        Contract::ALL.into_iter().find(|c| c.path() == p)
    }
}

/// The four engagement-index service domains and their categorisations (research/sources.md §1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Domain {
    Contacts = 0,
    Diagnoses = 1,
    Activities = 2,
    Observations = 3,
}

impl Domain {
    pub(crate) const ALL: [Domain; 4] = [Domain::Contacts, Domain::Diagnoses, Domain::Activities, Domain::Observations];

    pub(crate) fn uri(self) -> &'static str {
        match self {
            Domain::Contacts => "riv:clinicalprocess:logistics:logistics",
            Domain::Diagnoses => "riv:clinicalprocess:healthcond:description",
            Domain::Activities => "riv:clinicalprocess:activity:actions",
            Domain::Observations => "riv:clinicalprocess:healthcond:basic",
        }
    }

    pub(crate) fn categorization(self) -> &'static str {
        match self {
            Domain::Contacts => "vko",
            Domain::Diagnoses => "dia",
            Domain::Activities => "caa-ga",
            Domain::Observations => "chb-o",
        }
    }

    pub(crate) fn contract(self) -> Contract {
        match self {
            Domain::Contacts => Contract::GetCareContacts,
            Domain::Diagnoses => Contract::GetDiagnosis,
            Domain::Activities => Contract::GetActivities,
            Domain::Observations => Contract::GetObservations,
        }
    }

    pub(crate) fn from_uri(s: &str) -> Option<Domain> {
        let s = s.trim();
        Domain::ALL.into_iter().find(|d| d.uri() == s || s.strip_prefix("urn:") == Some(d.uri()))
    }
}
