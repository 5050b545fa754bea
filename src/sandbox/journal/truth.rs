//! Ground truth: what the generator meant to write, per patient, as plain bookkeeping. Tests
//! compute expected register outcomes from it without going through any mapper.
//!
//! Everything here is derived from the same plan the documents are rendered from (mutations
//! included), so the truth and the journal can never drift apart; but the truth speaks in the
//! generator's terms (episodes, forms, intended answers), not in documents.
//!
//! What SAR should hold ([`Truth::sar_expected`], [`Truth::sar_worklist`]) follows the SAR
//! engine's occasion rules, written down once in the module doc of `src/registers/sar/mod.rs`
//! (courses, joint classification, occasions, windows, session counts, worklist, first visit
//! before follow-ups). The generator plans one course (grundbehandling) per artros episode it
//! writes and keeps its follow-up visits inside the shipped windows (91–152 and 365–540 days
//! after the first visit, `connectors/artrosregistret/connector.toml`), each marked with the
//! follow-up keyword, so every follow-up it writes is one the register takes. The joint
//! classification is computed here from the diagnoses written, with this module's own copy of
//! the ICD-10-SE joint codes ([`joint_of_icd`]), not with the mapper's.

use super::population::{identity, DocKind, Plan, Population};
use super::{AnswerValue, Joint, SarForm, Side};
use crate::model::{normalise_icd, IdKind, PatientId};
use crate::sandbox::vocabulary::{answer, obs};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use std::collections::BTreeMap;
use std::ops::RangeInclusive;

/// Why a patient is in the journal (the generator's courses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Condition {
    Artros,
    Musculoskeletal,
    Kol,
    Stroke,
    Tia,
    HeartFailure,
    Osteoporosis,
    Incontinence,
    Depression,
    Stress,
    GeneralPractice,
    FrequentAttender,
}

/// A deliberately bad item (only with `PopulationSpec::bad_item_share > 0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Defect {
    /// The document's patient id has a wrong check digit.
    InvalidPersonnummer,
    /// The code is in a code system nobody knows ([`super::UNKNOWN_CODE_SYSTEM`]).
    UnknownCodeSystem,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VisitTruth {
    pub document_id: String,
    pub care_contact_id: String,
    pub start: NaiveDateTime,
    pub date: NaiveDate,
    pub unit: String,
    /// careContactCode: 1 Besök, 2 Telefon.
    pub contact_type: u8,
    /// Profession code (vocabulary).
    pub profession: &'static str,
    pub nullified: bool,
    pub defect: Option<Defect>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DiagnosisTruth {
    pub document_id: String,
    pub care_contact_id: String,
    /// ICD-10-SE, normalised (`M171`).
    pub code: String,
    pub main: bool,
    pub chronic: bool,
    pub date: NaiveDate,
    pub unit: String,
    pub profession: &'static str,
    pub nullified: bool,
    pub defect: Option<Defect>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ActivityTruth {
    pub document_id: String,
    pub care_contact_id: String,
    pub code: String,
    pub system: String,
    pub date: NaiveDate,
    pub unit: String,
    pub profession: &'static str,
    pub nullified: bool,
    pub defect: Option<Defect>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ObservationTruth {
    pub document_id: String,
    pub care_contact_id: String,
    pub term: String,
    pub value: AnswerValue,
    pub date: NaiveDate,
    pub unit: String,
    pub profession: &'static str,
    /// The artros episode and SAR forms the answer belongs to.
    pub episode: Option<usize>,
    pub forms: Vec<SarForm>,
    pub nullified: bool,
    pub defect: Option<Defect>,
}

/// One SAR form of one episode.
#[derive(Clone, Debug, PartialEq)]
pub struct FormTruth {
    pub form: SarForm,
    /// At least one answer of the form was documented.
    pub recorded: bool,
    /// Recorded, not nullified, and every mandatory answer present.
    pub complete: bool,
    /// Everything documented for the form is nullified.
    pub nullified: bool,
    /// The day of the visit the answers were documented at.
    pub event_date: Option<NaiveDate>,
    pub care_contact_id: Option<String>,
    pub unit: Option<String>,
    /// The answers in force (nullified ones left out), by observation term.
    pub answers: BTreeMap<String, AnswerValue>,
    /// Mandatory answers that are not there.
    pub missing: Vec<&'static str>,
}

/// The joint an ICD-10-SE code (normalised) classifies, and whether it says both sides: hip M16,
/// knee M17, hand M18, M15.1, M15.2 and M19 with the hand/wrist site letter (D, E) in the fifth
/// position (the shipped mapping.toml cites the sources). Written independently of the mapper.
pub fn joint_of_icd(code: &str) -> Option<(Joint, bool)> {
    let b = code.as_bytes();
    let fourth = b.get(3).copied();
    match code.get(..3)? {
        "M16" => Some((Joint::Hip, matches!(fourth, Some(b'0' | b'2' | b'4' | b'6')))),
        "M17" => Some((Joint::Knee, matches!(fourth, Some(b'0' | b'2' | b'4')))),
        "M18" => Some((Joint::Hand, matches!(fourth, Some(b'0' | b'2' | b'4')))),
        "M15" if matches!(fourth, Some(b'1' | b'2')) => Some((Joint::Hand, false)),
        "M19" if b.len() >= 5 && matches!(b[4], b'D' | b'E') => Some((Joint::Hand, false)),
        _ => None,
    }
}

/// Days before and after the first visit whose answers and diagnoses belong to it (the shipped
/// `first_visit_window`).
pub const FIRST_VISIT_WINDOW: i64 = 14;

#[derive(Clone, Debug, PartialEq)]
pub struct EpisodeTruth {
    pub index: usize,
    pub unit: String,
    /// The course's joint (the first visit's main diagnosis).
    pub joint: Joint,
    /// The joint classification: each joint diagnosed at the unit within the first-visit window,
    /// with whether both sides are affected.
    pub joints: BTreeMap<Joint, bool>,
    pub side: Side,
    /// ICD-10-SE, normalised.
    pub icd: String,
    pub first_visit: NaiveDate,
    /// The five forms, in `SarForm::ALL` order.
    pub forms: Vec<FormTruth>,
}

impl EpisodeTruth {
    pub fn form(&self, f: SarForm) -> &FormTruth {
        self.forms.iter().find(|x| x.form == f).expect("every form is listed")
    }
}

/// A nullified document and what it carried (a code, a term and value, or a visit).
#[derive(Clone, Debug, PartialEq)]
pub struct NullifiedDocument {
    pub document_id: String,
    /// `care_contact`, `diagnosis`, `activity` or `observation`.
    pub kind: &'static str,
    pub carried: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PatientTruth {
    pub index: usize,
    pub id: PatientId,
    pub female: bool,
    pub birth_date: NaiveDate,
    /// Listed vårdcentral (HSA id) and since when.
    pub listing: Option<(String, NaiveDate)>,
    pub conditions: Vec<Condition>,
    pub visits: Vec<VisitTruth>,
    pub diagnoses: Vec<DiagnosisTruth>,
    pub activities: Vec<ActivityTruth>,
    pub observations: Vec<ObservationTruth>,
    pub episodes: Vec<EpisodeTruth>,
    /// Day of the first register objection in force.
    pub opt_out: Option<NaiveDate>,
    pub updated_at: DateTime<Utc>,
}

impl PatientTruth {
    pub(crate) fn from_plan(pop: &Population, index: usize, plan: &Plan) -> PatientTruth {
        let h = pop.header(index);
        let p = index as u32;
        let unit_of = |c: u32| pop.unit(plan.contacts[c as usize].unit).hsa_id.clone();
        let date_of = |c: u32| plan.contacts[c as usize].start.date();
        let prof_of = |c: u32| plan.contacts[c as usize].prof.code();
        let visits = plan
            .contacts
            .iter()
            .enumerate()
            .map(|(i, c)| VisitTruth {
                document_id: pop.doc_id(DocKind::Contact, p, i),
                care_contact_id: pop.care_contact_id(p, i),
                start: c.start,
                date: c.start.date(),
                unit: pop.unit(c.unit).hsa_id.clone(),
                contact_type: if c.phone { 2 } else { 1 },
                profession: c.prof.code(),
                nullified: c.nullified,
                defect: c.defect,
            })
            .collect();
        let diagnoses: Vec<DiagnosisTruth> = plan
            .diagnoses
            .iter()
            .enumerate()
            .map(|(i, d)| DiagnosisTruth {
                document_id: pop.doc_id(DocKind::Diagnosis, p, i),
                care_contact_id: pop.care_contact_id(p, d.contact as usize),
                code: normalise_icd(&d.code),
                main: d.main,
                chronic: d.chronic,
                date: date_of(d.contact),
                unit: unit_of(d.contact),
                profession: prof_of(d.contact),
                nullified: d.nullified,
                defect: d.defect,
            })
            .collect();
        let activities = plan
            .activities
            .iter()
            .enumerate()
            .map(|(i, a)| ActivityTruth {
                document_id: pop.doc_id(DocKind::Activity, p, i),
                care_contact_id: pop.care_contact_id(p, a.contact as usize),
                code: a.code.to_string(),
                system: a.system.to_string(),
                date: date_of(a.contact),
                unit: unit_of(a.contact),
                profession: prof_of(a.contact),
                nullified: a.nullified,
                defect: a.defect,
            })
            .collect();
        let observations: Vec<ObservationTruth> = plan
            .observations
            .iter()
            .enumerate()
            .map(|(i, o)| ObservationTruth {
                document_id: pop.doc_id(DocKind::Observation, p, i),
                care_contact_id: pop.care_contact_id(p, o.contact as usize),
                term: o.term.to_string(),
                value: o.value.clone(),
                date: date_of(o.contact),
                unit: unit_of(o.contact),
                profession: prof_of(o.contact),
                episode: o.episode.map(|e| e as usize),
                forms: SarForm::ALL.into_iter().filter(|f| o.forms & f.bit() != 0).collect(),
                nullified: o.nullified,
                defect: o.defect,
            })
            .collect();
        let episodes = plan
            .episodes
            .iter()
            .enumerate()
            .map(|(e, ep)| EpisodeTruth {
                index: e,
                unit: pop.unit(ep.unit).hsa_id.clone(),
                joint: ep.joint,
                joints: {
                    let (unit, fv) = (pop.unit(ep.unit).hsa_id.clone(), date_of(ep.fv_contact));
                    let mut joints = BTreeMap::new();
                    for d in diagnoses.iter().filter(|d| !d.nullified && d.defect.is_none() && d.unit == unit) {
                        if (d.date - fv).num_days().abs() <= FIRST_VISIT_WINDOW {
                            if let Some((j, both)) = joint_of_icd(&d.code) {
                                *joints.entry(j).or_insert(false) |= both;
                            }
                        }
                    }
                    joints
                },
                side: ep.side,
                icd: normalise_icd(ep.icd),
                first_visit: date_of(ep.fv_contact),
                forms: SarForm::ALL.into_iter().map(|f| form_truth(pop, p, plan, e, f)).collect(),
            })
            .collect();
        let opt_out = observations
            .iter()
            .filter(|o| o.term == obs::REGISTER_OBJECTION && o.value.as_code() == Some(answer::YES) && o.is_valid())
            .map(|o| o.date)
            .min();
        PatientTruth {
            index,
            id: identity(h, pop.spec().today),
            female: h.female,
            birth_date: h.birth,
            listing: h.listed.map(|(u, since)| (pop.unit(u).hsa_id.clone(), since)),
            conditions: plan.conditions.clone(),
            visits,
            diagnoses,
            activities,
            observations,
            episodes,
            opt_out,
            updated_at: pop.updated_at(index),
        }
    }

    pub fn kind(&self) -> IdKind {
        self.id.kind()
    }

    pub fn age_at(&self, d: NaiveDate) -> u32 {
        // Every generated id starts with the birth date, reserve numbers included.
        self.id.age_at(d).unwrap_or(0)
    }

    pub fn listed_at(&self) -> Option<&str> {
        self.listing.as_ref().map(|(u, _)| u.as_str())
    }

    pub fn form(&self, episode: usize, form: SarForm) -> &FormTruth {
        self.episodes[episode].form(form)
    }

    /// Visits that count: not nullified, not deliberately bad.
    pub fn valid_visits(&self) -> impl Iterator<Item = &VisitTruth> {
        self.visits.iter().filter(|v| !v.nullified && v.defect.is_none())
    }

    /// Valid visits (at `unit`, if given) within `window`.
    pub fn visits_in(&self, unit: Option<&str>, window: RangeInclusive<NaiveDate>) -> usize {
        self.valid_visits().filter(|v| unit.map_or(true, |u| v.unit == u) && window.contains(&v.date)).count()
    }

    /// A valid diagnosis whose normalised code starts with `prefix` (`M17`, `F438A`), at `unit`
    /// if given, within `window`.
    pub fn has_diagnosis(&self, prefix: &str, unit: Option<&str>, window: RangeInclusive<NaiveDate>) -> bool {
        let prefix = normalise_icd(prefix);
        self.diagnoses.iter().any(|d| {
            !d.nullified && d.defect.is_none() && d.code.starts_with(&prefix) && unit.map_or(true, |u| d.unit == u) && window.contains(&d.date)
        })
    }

    /// A valid activity with this code, at `unit` if given, within `window`.
    pub fn has_activity(&self, code: &str, unit: Option<&str>, window: RangeInclusive<NaiveDate>) -> bool {
        self.activities
            .iter()
            .any(|a| !a.nullified && a.defect.is_none() && a.code == code && unit.map_or(true, |u| a.unit == u) && window.contains(&a.date))
    }

    /// Valid observations of a term.
    pub fn observations_of<'a>(&'a self, term: &'a str) -> impl Iterator<Item = &'a ObservationTruth> + 'a {
        self.observations.iter().filter(move |o| o.term == term && o.is_valid())
    }

    /// Every nullified document and what it carried.
    pub fn nullified_documents(&self) -> Vec<NullifiedDocument> {
        let mut out = Vec::new();
        out.extend(self.visits.iter().filter(|v| v.nullified).map(|v| NullifiedDocument {
            document_id: v.document_id.clone(),
            kind: "care_contact",
            carried: format!("{} {} {}", v.date, v.unit, v.profession),
        }));
        out.extend(self.diagnoses.iter().filter(|d| d.nullified).map(|d| NullifiedDocument {
            document_id: d.document_id.clone(),
            kind: "diagnosis",
            carried: d.code.clone(),
        }));
        out.extend(self.activities.iter().filter(|a| a.nullified).map(|a| NullifiedDocument {
            document_id: a.document_id.clone(),
            kind: "activity",
            carried: a.code.clone(),
        }));
        out.extend(self.observations.iter().filter(|o| o.nullified).map(|o| NullifiedDocument {
            document_id: o.document_id.clone(),
            kind: "observation",
            carried: format!("{}={}", o.term, value_text(&o.value)),
        }));
        out
    }

    /// Deliberately bad documents: (document id, defect).
    pub fn bad_items(&self) -> Vec<(String, Defect)> {
        let mut out = Vec::new();
        out.extend(self.visits.iter().filter_map(|v| v.defect.map(|d| (v.document_id.clone(), d))));
        out.extend(self.diagnoses.iter().filter_map(|v| v.defect.map(|d| (v.document_id.clone(), d))));
        out.extend(self.activities.iter().filter_map(|v| v.defect.map(|d| (v.document_id.clone(), d))));
        out.extend(self.observations.iter().filter_map(|v| v.defect.map(|d| (v.document_id.clone(), d))));
        out
    }
}

impl ObservationTruth {
    pub fn is_valid(&self) -> bool {
        !self.nullified && self.defect.is_none()
    }
}

fn value_text(v: &AnswerValue) -> String {
    match v {
        AnswerValue::Quantity(q) => q.to_string(),
        AnswerValue::Code(c) => c.to_string(),
    }
}

fn form_truth(pop: &Population, p: u32, plan: &Plan, episode: usize, form: SarForm) -> FormTruth {
    let ep = episode as u8;
    let of_form: Vec<_> = plan.observations.iter().filter(|o| o.episode == Some(ep) && o.forms & form.bit() != 0).collect();
    let valid: Vec<_> = of_form.iter().filter(|o| !o.nullified && o.defect.is_none()).collect();
    let mut answers = BTreeMap::new();
    for o in &valid {
        answers.insert(o.term.to_string(), o.value.clone());
    }
    let recorded = !of_form.is_empty();
    let nullified = recorded && valid.is_empty();
    let missing: Vec<&'static str> = form.mandatory().filter(|t| !answers.contains_key(*t)).collect();
    let contact = valid.first().map(|o| o.contact).or(of_form.first().map(|o| o.contact));
    FormTruth {
        form,
        recorded,
        complete: recorded && !nullified && missing.is_empty(),
        nullified,
        event_date: contact.map(|c| plan.contacts[c as usize].start.date()),
        care_contact_id: contact.map(|c| pop.care_contact_id(p, c as usize)),
        unit: contact.map(|c| pop.unit(plan.contacts[c as usize].unit).hsa_id.clone()),
        answers,
        missing,
    }
}

/// A registration SAR should hold (or, on the worklist, one that waits for an answer).
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectedRegistration {
    pub patient: usize,
    /// 12 digits.
    pub subject_key: String,
    pub unit: String,
    pub episode: usize,
    pub form: SarForm,
    pub event_date: NaiveDate,
    pub answers: BTreeMap<String, AnswerValue>,
    /// Mandatory answers that are not there (observation terms).
    pub missing: Vec<&'static str>,
    /// A follow-up's incomplete first-visit forms, which it waits for.
    pub waits_for: Vec<SarForm>,
    /// The course's joint and joint classification (joint → both sides).
    pub joint: Joint,
    pub joints: BTreeMap<Joint, bool>,
}

/// The occasion a form belongs to: 0 first visit, 1 three months, 2 one year.
fn occasion_of(f: SarForm) -> u8 {
    match f {
        SarForm::FVPat | SarForm::FVPT => 0,
        SarForm::M3Pat | SarForm::M3PT => 1,
        SarForm::Y1Pat => 2,
    }
}

/// Queries over the whole population's truth. Each patient's truth is derived on demand.
pub struct Truth<'a> {
    pop: &'a Population,
}

impl<'a> Truth<'a> {
    pub(crate) fn new(pop: &'a Population) -> Truth<'a> {
        Truth { pop }
    }

    pub fn patient(&self, index: usize) -> PatientTruth {
        PatientTruth::from_plan(self.pop, index, &self.pop.plan(index))
    }

    pub fn patients(&self) -> impl Iterator<Item = PatientTruth> + 'a {
        let pop = self.pop;
        (0..pop.len()).map(move |i| PatientTruth::from_plan(pop, i, &pop.plan(i)))
    }

    /// The patients for which `pred` holds, e.g. "diagnosis X at unit U with activity Y in W":
    /// `truth.select(|p| p.has_diagnosis("M17", Some(u), w.clone()) && p.has_activity(y, Some(u), w.clone()))`.
    pub fn select(&self, pred: impl Fn(&PatientTruth) -> bool) -> Vec<PatientTruth> {
        self.patients().filter(|p| pred(p)).collect()
    }

    /// Patients changed after `t` (what the engagement index reports for `timeStamp = t`).
    pub fn changed_since(&self, t: DateTime<Utc>) -> Vec<usize> {
        (0..self.pop.len()).filter(|i| self.pop.updated_at(*i) > t).collect()
    }

    /// The registrations SAR should hold now, by the SAR engine's occasion rules (documented in
    /// one place: `src/registers/sar/mod.rs`), for patients with a national id and no register
    /// objection:
    /// - An episode's first visit always took place; a follow-up (3 months, 1 year) took place
    ///   when an answer of one of its forms is in force (not nullified), dated no later than
    ///   today. The occasion is then due for every one of its forms, recorded or not: a form
    ///   whose answers were never documented (or all nullified) is due with all its mandatory
    ///   answers missing.
    /// - A due form with every mandatory answer is held, unless it is a follow-up and a
    ///   first-visit form (FVPat or FVPT) lacks a mandatory answer: then it waits.
    pub fn sar_expected(&self) -> Vec<ExpectedRegistration> {
        self.sar(true)
    }

    /// The due forms that are not held (see [`Truth::sar_expected`]): those lacking a mandatory
    /// answer (`missing`) and follow-ups waiting for an incomplete first visit (`waits_for`).
    /// What must land on the manual-completion worklist ("att komplettera").
    pub fn sar_worklist(&self) -> Vec<ExpectedRegistration> {
        self.sar(false)
    }

    fn sar(&self, held: bool) -> Vec<ExpectedRegistration> {
        let today = self.pop.spec().today;
        let mut out = Vec::new();
        for p in self.patients() {
            let Some(key) = p.id.national_12() else { continue };
            if p.opt_out.is_some() {
                continue;
            }
            for ep in &p.episodes {
                let fv_incomplete: Vec<SarForm> =
                    [SarForm::FVPat, SarForm::FVPT].into_iter().filter(|f| !ep.form(*f).missing.is_empty()).collect();
                for f in &ep.forms {
                    let follow_up = occasion_of(f.form) != occasion_of(SarForm::FVPat);
                    // The occasion: the first visit, or the earliest visit with answers in force
                    // of any of the occasion's forms.
                    let (date, unit) = if follow_up {
                        let Some(o) = ep
                            .forms
                            .iter()
                            .filter(|g| occasion_of(g.form) == occasion_of(f.form) && g.recorded && !g.nullified)
                            .filter_map(|g| Some((g.event_date?, g.unit.clone()?)))
                            .min()
                        else {
                            continue;
                        };
                        o
                    } else {
                        (ep.first_visit, ep.unit.clone())
                    };
                    if date > today {
                        continue;
                    }
                    let waits_for = if follow_up { fv_incomplete.clone() } else { vec![] };
                    if (f.missing.is_empty() && waits_for.is_empty()) != held {
                        continue;
                    }
                    out.push(ExpectedRegistration {
                        patient: p.index,
                        subject_key: key.to_string(),
                        unit,
                        episode: ep.index,
                        form: f.form,
                        event_date: date,
                        answers: f.answers.clone(),
                        missing: f.missing.clone(),
                        waits_for,
                        joint: ep.joint,
                        joints: ep.joints.clone(),
                    });
                }
            }
        }
        out
    }
}
