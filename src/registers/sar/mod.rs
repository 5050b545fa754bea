//! Svenska Artrosregistret (SAR): from a patient's canonical journal records to the SAR
//! registrations that should exist — pure functions, no network or store I/O (only the mapping
//! file is read, once, by [`SarMapper::load`]).
//!
//! Map of the module:
//! - `mapping.rs`: the connector's mapping file (journal term → register column, code tables,
//!   episode diagnoses, opt-out term, occasion windows), loaded and checked against the
//!   register metadata.
//! - `episode.rs`: episodes (patient × joint × unit, opened by the first visit with an artros
//!   diagnosis) and their occasions (first visit, 3 months, 1 year).
//! - `forms.rs`: where each registration (FVPat, FVPT, M3Pat, M3PT, Y1Pat) is built and
//!   validated column by column.
//! - `coverage.rs`: täckningsgrad (episodes found vs registrations delivered).
//! - `check.rs`: `config check` for SAR connectors.
//!
//! # The SAR rules
//!
//! Written down here once; `mapping.toml`, `connector.toml` and the sandbox generator's truth
//! (`sandbox::journal::truth`, which computes the expected registrations independently) refer
//! to this list.
//!
//! 1. **Journal.** Only the patient's own records count, never nullified ones (a nullified
//!    contact, diagnosis, activity or observation contributes nothing, and what it produced is
//!    retracted), never anything dated after today (planned visits are not occasions).
//! 2. **Episode.** Patient × joint × unit, opened by the first care contact at one of the
//!    connector's units that carries (main or secondary) an artros diagnosis configured for the
//!    joint. Its date is the first visit. No episode, no registration.
//! 3. **Answers** belong to the care contact they name (its unit and day), else to their own
//!    unit and day. Days are calendar days in Europe/Stockholm. A term documented twice on one
//!    occasion: the later entry counts.
//! 4. **Occasions.** The first visit (FVPat, FVPT) is the episode's first-visit day. A follow-up
//!    (M3Pat + M3PT at 3 months, Y1Pat at 1 year) is the *first* day inside its window on which
//!    an answer of any of its forms is documented at the episode's unit. Windows are days after
//!    the first visit, both ends inclusive (`connector.toml`, shipped 75–150 and 330–540). A
//!    visit without answers is not the occasion; answers on later days of the window are not
//!    read; nothing is due before the window opens.
//! 5. **Due forms.** Once an occasion took place every form of it is due: sent when each
//!    mandatory column has a valid value, otherwise put on the worklist ("att komplettera")
//!    naming the missing columns, never sent half-filled. That includes a form nobody filled in
//!    at the occasion (the physiotherapist's M3PT when only the patient answered).
//! 6. **Session counts** (M3PT) are the physiotherapist's recorded counts at the 3-month visit
//!    (observations, shipped `mapping.toml`). A mapping may count activities instead
//!    (`count_activities`: at the unit, from the first visit through the occasion).
//! 7. **First visit before follow-ups.** A follow-up is sent only when both first-visit forms of
//!    its episode are complete. Until then it waits on the worklist with the incomplete
//!    first-visit form(s) named in `missing`: the two forms are one occasion and share the joint
//!    and side that identify the episode, so the register never holds a follow-up of an
//!    episode it cannot place, and completing the first visit releases everything at once.
//! 8. **One registration per patient, episode and form** (keys below); a later change of the
//!    journal updates it.
//! 9. **Opt-out.** A register objection (the `[opt_out]` term with one of its values) that no
//!    later entry withdraws means nothing is sent and everything sent is retracted.
//! 10. **Identity.** Patients with a reserve number only are not registered.
//!
//! Keys: an episode is `register|unit|patient_key|joint` and a registration's idempotency key is
//! the episode key plus `|form`. `patient_key` is the patient pseudonym, never the personnummer.
//! No date is part of a key: a corrected first-visit or follow-up date changes the payload
//! (EventDate) of the same key, which the outbox sends as an update. The price is that a second
//! episode of the same joint at the same unit years later is not recognised as a new one.

mod check;
mod coverage;
pub mod episode;
pub mod forms;
pub mod mapping;

pub use check::{check, check_connector};
pub use coverage::{coverage, CoverageRow};
pub use mapping::{offline_metadata, Mapping, Occasion};

use crate::config::{ConnectorDef, Problem};
use crate::model::{PatientId, Record};
use crate::outbox::{Incomplete, Payload, RegisterIntent};
use crate::sinks::stratum::metadata::RegisterMetadata;
use crate::store::{EpisodeRow, RecordKey};
use chrono::NaiveDate;
use episode::{find_episodes, find_occasion, opted_out, window_open, Journal, OccasionAt};
use mapping::Source;
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
}

/// An audit-worthy observation about a patient's mapping. Never carries personal data: it names
/// keys (pseudonymous), forms, columns and document ids, never values or identities.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SarNote {
    pub kind: NoteKind,
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
        let episodes = find_episodes(m, &self.units, &journal);
        for ep in &episodes {
            out.episodes.push(EpisodeRow {
                episode_key: episode_key(input, &ep.unit, &ep.joint),
                connector: input.connector.to_string(),
                unit: ep.unit.clone(),
                patient_key: input.patient_key.to_string(),
                joint: ep.joint.clone(),
                first_visit_date: ep.first_visit.format("%Y-%m-%d").to_string(),
                forms_due: m.forms.iter().filter(|f| window_open(m, ep, f.occasion, input.today)).map(|f| f.name.clone()).collect(),
            });
        }
        let Some(subject) = input.patient.national_12() else {
            // Kept as an episode (it is real care) but never sent: SAR takes national ids only.
            if !episodes.is_empty() {
                out.notes.push(SarNote {
                    kind: NoteKind::ReserveNumber,
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
            let ekey = episode_key(input, &ep.unit, &ep.joint);
            let mut first_visit_incomplete: Vec<String> = vec![];
            for occasion in [Occasion::FirstVisit, Occasion::ThreeMonths, Occasion::OneYear] {
                let forms: Vec<_> = m.forms.iter().filter(|f| f.occasion == occasion).collect();
                if forms.is_empty() {
                    continue;
                }
                // The occasion is shared by its forms (one 3-month visit for M3Pat and M3PT).
                let terms: Vec<_> = forms
                    .iter()
                    .flat_map(|f| f.columns.iter())
                    .filter_map(|c| match &c.source {
                        Source::Observation(t) => Some(t.clone()),
                        _ => None,
                    })
                    .collect();
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

fn episode_key(input: &PatientInput, unit: &str, joint: &str) -> String {
    format!("{}|{unit}|{}|{joint}", input.register, input.patient_key)
}
