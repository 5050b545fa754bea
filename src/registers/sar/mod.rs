//! Svenska Artrosregistret (SAR): from a patient's canonical journal records to the SAR
//! registrations that should exist — pure functions, no network or store I/O (only the mapping
//! file is read, once, by [`SarMapper::load`]).
//!
//! Map of the module:
//! - `mapping.rs`: the connector's mapping file (journal term → register column, code tables,
//!   episode diagnoses, opt-out term, occasion windows), loaded and checked against the
//!   register metadata.
//! - `episode.rs`: treatment courses (patient × unit, opened by a first visit that meets the
//!   inclusion), their joint classification and occasions (first visit, 3 months, 1 year).
//! - `forms.rs`: where each registration (FVPat, FVPT, M3Pat, M3PT, Y1Pat) is built and
//!   validated column by column.
//! - `coverage.rs`: täckningsgrad (courses found vs registrations delivered).
//! - `check.rs`: `config check` for SAR connectors.
//! - `indicators.rs`: the register's own indicators per clinic and year of first visit,
//!   computed from the registrations the register holds.
//!
//! # The SAR rules
//!
//! Written down here once; `mapping.toml` (`[course]`), `connector.toml` and the sandbox
//! generator's truth (`sandbox::journal::truth`, which computes the expected registrations
//! independently) refer to this list. The register registers one treatment course
//! (grundbehandling) per patient with the joint classification inside it, and reports by year
//! of first visit (`shared/research/sar-register-facts.md`).
//!
//! 1. **Journal.** Only the patient's own records count, never nullified ones (a nullified
//!    contact, diagnosis, activity or observation contributes nothing, and what it produced is
//!    retracted), never anything dated after today (planned visits are not occasions).
//! 2. **Course.** Patient × unit. It opens at a care contact at one of the connector's units
//!    that meets `[course] inclusion`: `main_diagnosis` (a configured joint's diagnosis is the
//!    contact's main diagnosis), `any_diagnosis` (main or secondary) or `term:<CODE>` (the
//!    region's inclusion term documented at the contact). A secondary-only diagnosis opens
//!    nothing unless configured. Its date is the first visit. No course, no registration.
//! 3. **Joint classification.** Every joint diagnosed (main or secondary) at the unit within the
//!    first-visit window is in the course, with one or both sides (a code listed `bilateral`);
//!    the course's joint is the opening main diagnosis's. Joints are ICD-10-SE code patterns in
//!    `[course.joints]` (M19 counts only with the hand/wrist site). An artros code
//!    (`report_unmatched`) that classifies no joint is reported as a note, never guessed.
//! 4. **Later courses.** An including contact more than `gap_days` (default 365) after the
//!    course's last occasion opens a new course at the unit; otherwise it belongs to the
//!    current one. A course's follow-up windows end before the next course's first-visit window.
//! 5. **Answers** belong to the care contact they name (its unit and day), else to their own
//!    unit and day. Days are calendar days in Europe/Stockholm. A term documented twice on one
//!    day: the later entry counts.
//! 6. **Occasions.** The first visit (FVPat, FVPT; EventDate = the first visit) takes answers
//!    from the first-visit window (default 14 days before to 14 after): the first-visit day
//!    first, else the nearest day, the earlier of two equally near. A follow-up (M3Pat + M3PT,
//!    Y1Pat) is the *first* day inside its window (days after the first visit, both ends
//!    inclusive; `connector.toml`, shipped 91–152 = "3–5 months" and 365–540 = "12 months or
//!    later") on which the follow-up mark (`[course] follow_up_mark`: a term or a contact type)
//!    is documented at the unit — or, without a mark, an answer of any of its forms. Answers are
//!    read from that day only; nothing is due before the window opens.
//! 7. **Due forms.** Once an occasion took place every form of it is due: sent when each
//!    mandatory column has a valid value, otherwise put on the worklist ("att komplettera")
//!    naming the missing columns, never sent half-filled. That includes a form nobody filled in
//!    at the occasion (the physiotherapist's M3PT when only the patient answered).
//! 8. **Session counts** (M3PT) are the physiotherapist's recorded counts at the 3-month visit
//!    (observations, shipped `mapping.toml`). A mapping may count activities instead
//!    (`count_activities`: at the unit, from the first visit through the occasion).
//! 9. **First visit before follow-ups.** A follow-up is sent only when both first-visit forms of
//!    its course are complete. Until then it waits on the worklist with the incomplete
//!    first-visit form(s) named in `missing`.
//! 10. **One registration per patient, course and form** (keys below); a later change of the
//!    journal updates it.
//! 11. **Opt-out.** A register objection (the `[opt_out]` term with one of its values) that no
//!    later entry withdraws means nothing is sent and everything sent is retracted.
//! 12. **Identity.** Patients with a reserve number only are not registered.
//!
//! Keys: a course is `register|unit|patient_key|course` for the patient's first course at the
//! unit and `register|unit|patient_key|course@YYYY-MM-DD` (its first-visit date) for a later
//! one; a registration's idempotency key is the course key plus `|form`. `patient_key` is the
//! patient pseudonym, never the personnummer. A corrected first-visit date of the first course
//! changes the payload (EventDate) of the same key; a later course never overwrites an earlier
//! one. Keys of the old scheme (`…|<joint>|form`, one episode per joint) were carried over by
//! the store migration `0005_sar_course_keys` (both backends): nothing is sent again.

mod check;
mod coverage;
pub mod episode;
pub mod forms;
pub mod indicators;
pub mod mapping;

pub use check::{check, check_connector};
pub use coverage::{coverage, CoverageRow};
pub use mapping::{offline_metadata, Mapping, Occasion};

use crate::config::{ConnectorDef, Problem};
use crate::model::{PatientId, Record};
use crate::outbox::{Incomplete, Payload, RegisterIntent};
use crate::registers::metadata::RegisterMetadata;
use crate::outbox::{EpisodeRow, RecordKey};
use chrono::NaiveDate;
use episode::{find_episodes, find_occasion, occasion_terms, opted_out, window_open, Journal, OccasionAt};
use serde::Serialize;
use std::collections::BTreeSet;

/// A loaded SAR connector: its mapping, validated against the register metadata.
#[derive(Clone, Debug)]
pub struct SarMapper {
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
pub struct SarOutcome {
    pub intents: Vec<RegisterIntent>,
    pub incomplete: Vec<Incomplete>,
    /// Episodes found, with the forms due by today (for täckningsgrad).
    pub episodes: Vec<EpisodeRow>,
    /// The patient objects to quality-register reporting: nothing is sent, earlier sends are
    /// retracted by `outbox::reconcile`.
    pub opted_out: bool,
    /// Things worth auditing (no personal data).
    pub notes: Vec<SarNote>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    /// The patient has only a reserve number; SAR takes national identities only.
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
pub struct SarNote {
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

impl SarMapper {
    /// Load the connector's mapping (its `options.mapping` file) and validate it against the
    /// register metadata. Errors come back as every problem found; warnings stay available
    /// through [`SarMapper::warnings`].
    pub fn load(connector: &ConnectorDef, metadata: &RegisterMetadata) -> Result<SarMapper, Vec<Problem>> {
        match mapping::load(connector, metadata) {
            (Some(mapping), warnings) => Ok(SarMapper { mapping, units: connector.units.iter().cloned().collect(), warnings }),
            (None, problems) => Err(problems),
        }
    }

    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// From one patient's journal to the SAR registrations that should exist now: first visit
    /// (FVPat, FVPT), 3 months (M3Pat, M3PT), 1 year (Y1Pat) per episode.
    ///
    /// - Opt-out first: an objection yields `opted_out` and nothing else.
    /// - Follow-ups exist only for an episode (which needs a first visit) and only once their
    ///   occasion took place; while a first-visit registration of the episode is incomplete, its
    ///   follow-ups are held on the worklist too (`missing` names the first-visit form), so the
    ///   register never holds a follow-up without its first visit and a delivered follow-up is
    ///   not retracted because a first-visit answer was corrected away.
    /// - A registration missing mandatory columns is an [`Incomplete`], never a half-filled intent.
    pub fn map_patient(&self, input: &PatientInput) -> SarOutcome {
        let m = &self.mapping;
        let mut out = SarOutcome::default();
        let (journal, foreign) = Journal::new(input.records, input.patient, input.today);
        if foreign > 0 {
            out.notes.push(SarNote {
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
                episode_key: episode_key(input, ep),
                connector: input.connector.to_string(),
                unit: ep.unit.clone(),
                patient_key: input.patient_key.to_string(),
                joint: ep.joints_text(),
                first_visit_date: ep.first_visit.format("%Y-%m-%d").to_string(),
                forms_due: m.forms.iter().filter(|f| window_open(m, ep, f.occasion, input.today)).map(|f| f.name.clone()).collect(),
            });
        }
        let Some(subject) = input.patient.national_12() else {
            // Kept as an episode (it is real care) but never sent: SAR takes national ids only.
            if !episodes.is_empty() {
                out.notes.push(SarNote {
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
            let ekey = episode_key(input, ep);
            let mut first_visit_incomplete: Vec<String> = vec![];
            for occasion in [Occasion::FirstVisit, Occasion::ThreeMonths, Occasion::OneYear] {
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
                    if occasion != Occasion::FirstVisit {
                        missing.extend(first_visit_incomplete.iter().cloned());
                    }
                    if !missing.is_empty() {
                        if occasion == Occasion::FirstVisit {
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
                        "occasion": occasion.as_str(),
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

impl SarMapper {
    /// Artros diagnoses at the connector's units that classify no joint (M19 at another site…):
    /// reported, never guessed.
    fn report_unmatched(&self, j: &Journal, notes: &mut Vec<SarNote>) {
        for d in &j.diagnoses {
            let at_unit = d.unit.as_ref().is_some_and(|u| self.units.contains(u.as_str()));
            if d.code.system == self.mapping.diagnosis_system && at_unit && self.mapping.unmatched_artros(&d.code.code) {
                notes.push(SarNote {
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

/// A course's key: `register|unit|patient_key|course` for the patient's first course at the
/// unit, `…|course@YYYY-MM-DD` (its first-visit date) for a later one.
fn episode_key(input: &PatientInput, ep: &episode::Episode) -> String {
    let base = format!("{}|{}|{}|{COURSE}", input.register, ep.unit, input.patient_key);
    if ep.ordinal == 0 {
        base
    } else {
        format!("{base}@{}", ep.first_visit.format("%Y-%m-%d"))
    }
}

/// The course token of keys (the old scheme had the joint name here; migration
/// `0005_sar_course_keys` carried those keys over).
pub const COURSE: &str = "course";
