//! The register engine: from a patient's canonical journal records to the registrations a
//! Stratum register should hold — pure functions, no network or store I/O (only the connector's
//! mapping file is read, once, by [`RegisterEngine::load`]). Everything register-specific is
//! data in the connector's folder: what opens a course (`[course] inclusion`: diagnoses and/or
//! an inclusion term), which occasions exist (the first visit and the windows of
//! `connector.toml` `[options.windows]`), which forms each occasion fills (`[forms.<Form>]
//! occasion`), what identifies a registration (`[course] key`), and which register column each
//! journal term fills. Svenska Artrosregistret is one such connector (`connectors/
//! artrosregistret`; its rules are written down in `registers::sar`); the sandbox's second
//! register another. SAR's joint classification (`[course.joints]`, `course = "joint" |
//! "has_joint:…" | "sides:…"` columns) and activity counts (`count_activities`) are optional
//! features a mapping uses or leaves out — there is no second code path per register.
//!
//! Map of the module:
//! - `mapping.rs`: the connector's mapping file (journal term → register column, code tables,
//!   course rules, opt-out term, occasions and windows), loaded and checked against the
//!   register metadata.
//! - `episode.rs`: courses (patient × unit, opened by a first visit that meets the inclusion),
//!   their optional joint classification and their occasions.
//! - `forms.rs`: where each registration is built and validated column by column.
//! - `coverage.rs`: täckningsgrad (courses found vs registrations delivered), any register.
//! - `check.rs`: `config check` for register connectors.
//!
//! The rules the engine applies (journal, course, answers, occasions, due forms, first visit
//! before follow-ups, keys, opt-out, identity) are the numbered list in `registers::sar`'s
//! module docs, with "SAR" read as "the connector's register".

mod check;
mod coverage;
pub mod episode;
pub mod forms;
pub mod mapping;

pub use check::{check, check_connector};
pub use coverage::{coverage, CoverageRow};
pub use mapping::{offline_metadata, Mapping, Occasion, OccasionSpec};

use crate::config::{ConnectorDef, Problem};
use crate::model::{PatientId, Record};
use crate::outbox::{Incomplete, Payload, RegisterIntent};
use crate::registers::metadata::RegisterMetadata;
use crate::outbox::{EpisodeRow, RecordKey};
use chrono::NaiveDate;
use episode::{find_episodes, find_occasion, occasion_terms, opted_out, window_open, Journal, OccasionAt};
use serde::Serialize;
use std::collections::BTreeSet;

/// A loaded register connector: its mapping, validated against the register metadata.
#[derive(Clone, Debug)]
pub struct RegisterEngine {
    mapping: Mapping,
    units: BTreeSet<String>,
    warnings: Vec<Problem>,
}

/// One patient's journal, as the pipeline hands it to the mapper.
#[derive(Clone, Copy, Debug)]
pub struct PatientInput<'a> {
    pub connector: &'a str,
    /// The register's name in the configuration (`[registers.<name>]`), first part of keys.
    pub register: &'a str,
    pub patient: &'a PatientId,
    /// The patient's pseudonym (keys, subjects, episode rows).
    pub patient_key: &'a str,
    /// Everything known about the patient (nullified records included: they are skipped here).
    pub records: &'a [Record],
    pub today: NaiveDate,
}

/// What the register should hold for one patient now.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Outcome {
    pub intents: Vec<RegisterIntent>,
    pub incomplete: Vec<Incomplete>,
    /// Episodes found, with the forms due by today (for täckningsgrad).
    pub episodes: Vec<EpisodeRow>,
    /// The patient objects to quality-register reporting: nothing is sent, earlier sends are
    /// retracted by `outbox::reconcile`.
    pub opted_out: bool,
    /// Things worth auditing (no personal data).
    pub notes: Vec<Note>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    /// The patient has only a reserve number; the register takes national identities only.
    ReserveNumber,
    /// A value converted fine but fits no value of the column's domain (range, list, type).
    ValueOutsideDomain,
    /// A coded answer not in the mapping's code table (or in another code system).
    UnknownCode,
    /// The journal value has the wrong kind for the conversion (text where a number is expected…).
    UnconvertibleValue,
    /// Several different answers to one term on one occasion; the latest was used.
    ConflictingAnswers,
    /// Records of another patient were handed in and ignored.
    ForeignRecords,
    /// An artros diagnosis that classifies no configured joint (e.g. M19 at a site other than
    /// hand/wrist): reported, not guessed.
    UnmatchedDiagnosis,
}

/// An audit-worthy observation about a patient's mapping. Never carries personal data: it names
/// keys (pseudonymous), forms, columns and document ids, never values or identities.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Note {
    pub kind: NoteKind,
    /// The unit (HSA id) the note concerns, where one does (the data-quality view counts per unit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub idem_key: Option<String>,
    pub form: Option<String>,
    pub column: Option<String>,
    pub document: Option<String>,
    pub reason: String,
}

impl RegisterEngine {
    /// Load the connector's mapping (its `options.mapping` file) and validate it against the
    /// register metadata. Errors come back as every problem found; warnings stay available
    /// through [`RegisterEngine::warnings`].
    pub fn load(connector: &ConnectorDef, metadata: &RegisterMetadata) -> Result<RegisterEngine, Vec<Problem>> {
        match mapping::load(connector, metadata) {
            (Some(mapping), warnings) => Ok(RegisterEngine { mapping, units: connector.units.iter().cloned().collect(), warnings }),
            (None, problems) => Err(problems),
        }
    }

    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// From one patient's journal to the registrations that should exist now: per course, the
    /// forms of each occasion that took place (SAR: FVPat + FVPT at the first visit, M3Pat +
    /// M3PT at 3 months, Y1Pat at 1 year).
    ///
    /// - Opt-out first: an objection yields `opted_out` and nothing else.
    /// - Follow-ups exist only for an episode (which needs a first visit) and only once their
    ///   occasion took place; while a first-visit registration of the episode is incomplete, its
    ///   follow-ups are held on the worklist too (`missing` names the first-visit form), so the
    ///   register never holds a follow-up without its first visit and a delivered follow-up is
    ///   not retracted because a first-visit answer was corrected away.
    /// - A registration missing mandatory columns is an [`Incomplete`], never a half-filled intent.
    pub fn map_patient(&self, input: &PatientInput) -> Outcome {
        let m = &self.mapping;
        let mut out = Outcome::default();
        let (journal, foreign) = Journal::new(input.records, input.patient, input.today);
        if foreign > 0 {
            out.notes.push(Note {
                kind: NoteKind::ForeignRecords,
                unit: None,
                idem_key: None,
                form: None,
                column: None,
                document: None,
                reason: format!("{foreign} record(s) of another patient ignored"),
            });
        }
        if opted_out(&m.opt_out, &journal) {
            // Not expected in täckningsgrad either: the patient declined.
            out.opted_out = true;
            return out;
        }
        let episodes = find_episodes(m, &self.units, &journal, input.today);
        self.report_unmatched(&journal, &mut out.notes);
        for ep in &episodes {
            out.episodes.push(EpisodeRow {
                episode_key: episode_key(m, input, ep),
                connector: input.connector.to_string(),
                unit: ep.unit.clone(),
                patient_key: input.patient_key.to_string(),
                joint: ep.joints_text(),
                first_visit_date: ep.first_visit.format("%Y-%m-%d").to_string(),
                forms_due: m.forms.iter().filter(|f| window_open(m, ep, f.occasion, input.today)).map(|f| f.name.clone()).collect(),
            });
        }
        let Some(subject) = input.patient.national_12() else {
            // Kept as an episode (it is real care) but never sent: national ids only.
            if !episodes.is_empty() {
                out.notes.push(Note {
                    kind: NoteKind::ReserveNumber,
                    unit: None,
                    idem_key: None,
                    form: None,
                    column: None,
                    document: None,
                    reason: format!("patient has a reserve number only: {} episode(s) not registered", episodes.len()),
                });
            }
            return out;
        };
        for ep in &episodes {
            let ekey = episode_key(m, input, ep);
            let mut first_visit_incomplete: Vec<String> = vec![];
            for occasion in m.all_occasions() {
                let forms: Vec<_> = m.forms.iter().filter(|f| f.occasion == occasion).collect();
                if forms.is_empty() {
                    continue;
                }
                // The occasion is shared by its forms (one 3-month visit for M3Pat and M3PT).
                let terms = occasion_terms(m, occasion);
                let OccasionAt::On(day) = find_occasion(m, &journal, ep, occasion, &terms, input.today) else { continue };
                for form in forms {
                    let idem_key = format!("{ekey}|{}", form.name);
                    let built = forms::build_form(m, form, &journal, ep, day, subject, &idem_key, &mut out.notes);
                    let mut missing = built.missing;
                    if !occasion.is_first_visit() {
                        missing.extend(first_visit_incomplete.iter().cloned());
                    }
                    if !missing.is_empty() {
                        if occasion.is_first_visit() {
                            first_visit_incomplete.push(form.name.clone());
                        }
                        out.incomplete.push(Incomplete { idem_key, unit: ep.unit.clone(), form: form.name.clone(), missing, event_date: Some(day) });
                        continue;
                    }
                    let mut lookup = Payload::new();
                    for c in [&form.subject_column, &form.event_date_column] {
                        if let Some(v) = built.payload.get(c) {
                            lookup.insert(c.clone(), v.clone());
                        }
                    }
                    let detail = serde_json::json!({
                        "joint": ep.joint,
                        "joints": ep.joints,
                        "first_visit": ep.first_visit.format("%Y-%m-%d").to_string(),
                        "occasion": m.occasion_name(occasion),
                        "documents": built.documents,
                        "left_out": built.left_out,
                    });
                    out.intents.push(RegisterIntent {
                        key: RecordKey {
                            idem_key,
                            register: input.register.to_string(),
                            connector: input.connector.to_string(),
                            unit: ep.unit.clone(),
                            form: form.name.clone(),
                            subject: Some(input.patient_key.to_string()),
                        },
                        payload: built.payload,
                        lookup,
                        detail,
                    });
                }
            }
        }
        out
    }
}

impl RegisterEngine {
    /// Artros diagnoses at the connector's units that classify no joint (M19 at another site…):
    /// reported, never guessed.
    fn report_unmatched(&self, j: &Journal, notes: &mut Vec<Note>) {
        for d in &j.diagnoses {
            let at_unit = d.unit.as_ref().is_some_and(|u| self.units.contains(u.as_str()));
            if d.code.system == self.mapping.diagnosis_system && at_unit && self.mapping.unmatched_artros(&d.code.code) {
                notes.push(Note {
                    kind: NoteKind::UnmatchedDiagnosis,
                    unit: d.unit.as_ref().map(|u| u.as_str().to_string()),
                    idem_key: None,
                    form: None,
                    column: None,
                    document: Some(d.provenance.document_id.clone()),
                    reason: "an artros diagnosis that classifies no joint of the mapping ([course.joints]): no course, not guessed".into(),
                });
            }
        }
    }
}

/// A course's key: `register|unit|patient_key|<key>` for the patient's first course at the
/// unit, `…|<key>@YYYY-MM-DD` (its first-visit date) for a later one. `<key>` is the mapping's
/// `[course] key` ([`COURSE`] unless a connector says otherwise).
fn episode_key(m: &Mapping, input: &PatientInput, ep: &episode::Episode) -> String {
    let base = format!("{}|{}|{}|{}", input.register, ep.unit, input.patient_key, m.key_token);
    if ep.ordinal == 0 {
        base
    } else {
        format!("{base}@{}", ep.first_visit.format("%Y-%m-%d"))
    }
}

/// The default course token of keys (SAR's; the old scheme had the joint name here and
/// migration `0005_sar_course_keys` carried those keys over).
pub const COURSE: &str = "course";
