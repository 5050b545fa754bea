//! Courses and occasions: which courses a patient's journal holds (SAR: artros grundbehandling),
//! when their first visit and follow-up occasions (the connector's windows; SAR: 3 months and
//! 1 year) took place, and which answers belong to an occasion.
//!
//! Rules (the full list is in the module doc of `registers::sar`; mapping.toml repeats them
//! for the region):
//! - Only this patient's records, never nullified ones, never dated after `today` (planned
//!   visits are not occasions).
//! - A course is patient × unit. It opens at a care contact at one of the connector's units
//!   that meets the inclusion (`[course] inclusion`: a joint's or a `[course] diagnoses` code as
//!   the contact's main diagnosis, or the region's inclusion term); its first-visit date is that contact's date.
//!   A diagnosis belongs to the contact it names, or, naming none, to the contact at its unit on
//!   its day.
//! - (Optional, SAR) The joints diagnosed (main or secondary) at the unit within the
//!   first-visit window are the course's joint classification, each with one or both sides (a "bilateral" code).
//! - A later including contact at the unit opens a new course only when it is more than
//!   `gap_days` after the current course's last occasion; otherwise it belongs to that course.
//! - An observation or activity belongs to the care contact it names (that contact's unit and
//!   day); one naming no known contact belongs to its own unit and day (Europe/Stockholm). One
//!   with neither a unit nor a contact is not attributed to any occasion.
//! - First-visit answers come from the first-visit window at the unit (the first-visit day
//!   first, then the nearest day, the earlier of two equally near).
//! - A follow-up occasion is the first day inside its window on which the follow-up mark (if
//!   configured) or else answers for the occasion's forms are documented at the course's unit
//!   (if the occasion's forms read no answers, the first care contact there in the window). A
//!   course's windows end before the next course's first-visit window.

use super::mapping::{FollowUpMark, Inclusion, Mapping, Occasion, OptOutRule, Source};
use crate::model::{Activity, CareContact, Code, Diagnosis, Observation, ObservationValue, PatientId, Record};
use chrono::{Duration, NaiveDate};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A patient's usable journal: this patient's records that are not nullified.
pub struct Journal<'a> {
    pub contacts: Vec<&'a CareContact>,
    pub diagnoses: Vec<&'a Diagnosis>,
    pub activities: Vec<&'a Activity>,
    pub observations: Vec<&'a Observation>,
    contact_by_id: HashMap<&'a str, &'a CareContact>,
    today: NaiveDate,
}

pub fn same_code(a: &Code, b: &Code) -> bool {
    a.system == b.system && a.code == b.code
}

impl<'a> Journal<'a> {
    /// Returns the journal and how many records of other patients were dropped.
    pub fn new(records: &'a [Record], patient: &PatientId, today: NaiveDate) -> (Journal<'a>, usize) {
        let mut j = Journal { contacts: vec![], diagnoses: vec![], activities: vec![], observations: vec![], contact_by_id: HashMap::new(), today };
        let mut foreign = 0;
        for r in records {
            if r.patient() != patient {
                foreign += 1;
                continue;
            }
            if r.nullified() {
                continue;
            }
            match r {
                Record::CareContact(c) => j.contacts.push(c),
                Record::Diagnosis(d) => j.diagnoses.push(d),
                Record::Activity(a) => j.activities.push(a),
                Record::Observation(o) => j.observations.push(o),
            }
        }
        // Planned (future) and undated contacts are not visits.
        j.contacts.retain(|c| c.start.is_some_and(|s| s.date_naive() <= today));
        j.contacts.sort_by(|a, b| (a.start, &a.provenance.document_id).cmp(&(b.start, &b.provenance.document_id)));
        for c in &j.contacts {
            if let Some(id) = c.care_contact_id.as_deref() {
                j.contact_by_id.entry(id).or_insert(c);
            }
        }
        (j, foreign)
    }

    fn contact(&self, id: Option<&str>) -> Option<&'a CareContact> {
        id.and_then(|id| self.contact_by_id.get(id).copied())
    }

    /// The (day, unit) an observation belongs to, if any and not after today.
    pub fn observation_place(&self, o: &'a Observation) -> Option<(NaiveDate, &'a str)> {
        let (d, u) = match self.contact(o.care_contact_id.as_deref()) {
            Some(c) => (c.start?.date_naive(), c.unit.as_ref()?.as_str()),
            None => (o.time?.date_naive(), o.unit.as_ref()?.as_str()),
        };
        (d <= self.today).then_some((d, u))
    }

    /// The (day, unit) an activity belongs to, if any and not after today.
    pub fn activity_place(&self, a: &'a Activity) -> Option<(NaiveDate, &'a str)> {
        let (d, u) = match self.contact(a.care_contact_id.as_deref()) {
            Some(c) => (c.start?.date_naive(), c.unit.as_ref()?.as_str()),
            None => (a.time?.date_naive(), a.unit.as_ref()?.as_str()),
        };
        (d <= self.today).then_some((d, u))
    }

    /// Does this diagnosis belong to this contact?
    fn diagnosis_at(&self, d: &Diagnosis, c: &CareContact) -> bool {
        if let (Some(dc), Some(cc)) = (d.care_contact_id.as_deref(), c.care_contact_id.as_deref()) {
            if self.contact_by_id.contains_key(dc) {
                return dc == cc;
            }
        }
        let (Some(cs), Some(cu)) = (c.start, c.unit.as_ref()) else { return false };
        d.time.is_some_and(|t| t.date_naive() == cs.date_naive()) && d.unit.as_ref() == Some(cu)
    }
}

/// One treatment course: patient × unit, from its first visit.
#[derive(Clone, Debug)]
pub struct Episode<'a> {
    pub unit: String,
    pub first_visit: NaiveDate,
    /// 0 for the patient's first course at the unit, 1 for the next…
    pub ordinal: usize,
    pub opening_contact: &'a CareContact,
    /// The opening main diagnosis (or the first joint diagnosis in the window).
    pub diagnosis: Option<&'a Diagnosis>,
    /// The course's joint: the opening diagnosis's (None when nothing in the window classifies).
    pub joint: Option<String>,
    /// The joint classification: joint name → both sides.
    pub joints: BTreeMap<String, bool>,
    /// Diagnoses that made the classification (document ids).
    pub diagnosis_documents: Vec<String>,
    /// The course's windows end on this day (the day before the next course's first-visit window).
    pub until: Option<NaiveDate>,
}

impl Episode<'_> {
    /// The joint classification as text: `hip+knee` (empty when none).
    pub fn joints_text(&self) -> String {
        self.joints.keys().cloned().collect::<Vec<_>>().join("+")
    }
}

/// The observation terms the forms of an occasion read (the occasion is shared by its forms).
pub fn occasion_terms(mapping: &Mapping, occasion: Occasion) -> Vec<Code> {
    mapping
        .forms
        .iter()
        .filter(|f| f.occasion == occasion)
        .flat_map(|f| f.columns.iter())
        .filter_map(|c| match &c.source {
            Source::Observation(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// Does this contact meet the course inclusion? Returns the opening diagnosis if one did.
fn includes<'a>(mapping: &Mapping, j: &Journal<'a>, c: &'a CareContact, here: &[&'a Diagnosis]) -> Option<Option<&'a Diagnosis>> {
    for rule in &mapping.inclusion {
        match rule {
            Inclusion::MainDiagnosis => {
                if let Some(d) = here.iter().find(|d| d.kind == crate::model::DiagnosisKind::Main && mapping.opens(&d.code.code)) {
                    return Some(Some(d));
                }
            }
            Inclusion::AnyDiagnosis => {
                if let Some(d) = here.iter().find(|d| mapping.opens(&d.code.code)) {
                    return Some(Some(d));
                }
            }
            Inclusion::Term(t) => {
                let (Some(start), Some(unit)) = (c.start, c.unit.as_ref()) else { continue };
                let place = (start.date_naive(), unit.as_str());
                if j.observations.iter().any(|o| same_code(&o.term, t) && j.observation_place(o) == Some(place)) {
                    return Some(None);
                }
            }
        }
    }
    None
}

/// Every course in the journal, in order of first visit (then unit).
pub fn find_episodes<'a>(mapping: &Mapping, units: &BTreeSet<String>, j: &Journal<'a>, today: NaiveDate) -> Vec<Episode<'a>> {
    let mut out: Vec<Episode<'a>> = vec![];
    for c in &j.contacts {
        let Some(unit) = c.unit.as_ref().map(|u| u.as_str()) else { continue };
        if !units.contains(unit) {
            continue;
        }
        let Some(start) = c.start else { continue };
        let day = start.date_naive();
        let mut here: Vec<&'a Diagnosis> = j.diagnoses.iter().copied().filter(|d| d.code.system == mapping.diagnosis_system && j.diagnosis_at(d, c)).collect();
        here.sort_by_key(|d| (d.kind != crate::model::DiagnosisKind::Main, d.provenance.document_id.clone()));
        let Some(opening) = includes(mapping, j, c, &here) else { continue };
        if let Some(current) = out.iter().rev().find(|e| e.unit == unit) {
            // Part of the current course unless the gap after its last occasion has passed.
            if day <= last_occasion(mapping, j, current, day, today) + Duration::days(mapping.gap_days) {
                continue;
            }
        }
        let ordinal = out.iter().filter(|e| e.unit == unit).count();
        let mut ep = Episode {
            unit: unit.to_string(),
            first_visit: day,
            ordinal,
            opening_contact: c,
            diagnosis: opening,
            joint: None,
            joints: BTreeMap::new(),
            diagnosis_documents: vec![],
            until: None,
        };
        classify(mapping, j, &mut ep);
        if let Some(prev) = out.iter_mut().rev().find(|e| e.unit == unit) {
            prev.until = Some(day + Duration::days(mapping.first_visit_window.from_day) - Duration::days(1));
        }
        out.push(ep);
    }
    out.sort_by(|a, b| (a.first_visit, &a.unit).cmp(&(b.first_visit, &b.unit)));
    out
}

/// The joint classification: every joint diagnosed at the unit within the first-visit window.
fn classify<'a>(mapping: &Mapping, j: &Journal<'a>, ep: &mut Episode<'a>) {
    let w = mapping.first_visit_window;
    let (from, to) = (ep.first_visit + Duration::days(w.from_day), ep.first_visit + Duration::days(w.to_day));
    let mut found: Vec<(NaiveDate, &'a Diagnosis)> = vec![];
    for c in &j.contacts {
        let (Some(s), Some(u)) = (c.start, c.unit.as_ref()) else { continue };
        let d = s.date_naive();
        if u.as_str() != ep.unit || d < from || d > to {
            continue;
        }
        for dx in j.diagnoses.iter().copied().filter(|dx| dx.code.system == mapping.diagnosis_system && j.diagnosis_at(dx, c)) {
            found.push((d, dx));
        }
    }
    found.sort_by(|a, b| (a.0, a.1.kind != crate::model::DiagnosisKind::Main, &a.1.provenance.document_id).cmp(&(b.0, b.1.kind != crate::model::DiagnosisKind::Main, &b.1.provenance.document_id)));
    for (_, dx) in found {
        let Some(joint) = mapping.joint_of(&dx.code.code) else { continue };
        let both = mapping.bilateral(&dx.code.code);
        let e = ep.joints.entry(joint.to_string()).or_insert(false);
        *e |= both;
        ep.diagnosis_documents.push(dx.provenance.document_id.clone());
        if ep.diagnosis.is_none() {
            ep.diagnosis = Some(dx);
        }
    }
    ep.joint = ep.diagnosis.and_then(|d| mapping.joint_of(&d.code.code)).map(str::to_string);
}

/// The course's last occasion before `before` (its first visit if no follow-up took place).
fn last_occasion(mapping: &Mapping, j: &Journal, ep: &Episode, before: NaiveDate, today: NaiveDate) -> NaiveDate {
    let mut last = ep.first_visit;
    for o in mapping.all_occasions().skip(1) {
        if mapping.forms.iter().all(|f| f.occasion != o) {
            continue;
        }
        if let OccasionAt::On(d) = find_occasion(mapping, j, ep, o, &occasion_terms(mapping, o), today.min(before - Duration::days(1))) {
            last = last.max(d);
        }
    }
    last
}

/// Where an occasion of an episode stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OccasionAt {
    /// Its window has not opened yet: nothing is due.
    NotOpen,
    /// Due, but no answers are documented in the window (yet).
    Due,
    /// It took place on this day.
    On(NaiveDate),
}

/// Has the window of `occasion` opened by `today`?
pub fn window_open(mapping: &Mapping, ep: &Episode, occasion: Occasion, today: NaiveDate) -> bool {
    if occasion.is_first_visit() {
        return ep.first_visit <= today;
    }
    ep.first_visit + Duration::days(mapping.window(occasion).from_day) <= today
}

/// Find the occasion: the first visit itself, or the first day in the follow-up window (cut at
/// the next course) on which the follow-up mark, else one of `terms`, is documented at the
/// course's unit (any contact there if `terms` is empty and no mark is configured).
pub fn find_occasion(mapping: &Mapping, j: &Journal, ep: &Episode, occasion: Occasion, terms: &[Code], today: NaiveDate) -> OccasionAt {
    if occasion.is_first_visit() {
        return OccasionAt::On(ep.first_visit);
    }
    if !window_open(mapping, ep, occasion, today) {
        return OccasionAt::NotOpen;
    }
    let w = mapping.window(occasion);
    let mut to = ep.first_visit + Duration::days(w.to_day);
    if let Some(u) = ep.until {
        to = to.min(u);
    }
    let (from, to) = (ep.first_visit + Duration::days(w.from_day), to.min(today));
    let in_window = |d: NaiveDate| d >= from && d <= to;
    let at_unit = |c: &&&CareContact| c.unit.as_ref().map(|u| u.as_str()) == Some(ep.unit.as_str());
    let first = match &mapping.follow_up_mark {
        Some(FollowUpMark::Term(t)) => j
            .observations
            .iter()
            .filter(|o| same_code(t, &o.term))
            .filter_map(|o| j.observation_place(o))
            .filter(|(d, u)| *u == ep.unit && in_window(*d))
            .map(|(d, _)| d)
            .min(),
        Some(FollowUpMark::ContactType(code)) => j
            .contacts
            .iter()
            .filter(at_unit)
            .filter(|c| c.contact_type.as_ref().is_some_and(|t| &t.code == code))
            .filter_map(|c| c.start.map(|s| s.date_naive()))
            .filter(|d| in_window(*d))
            .min(),
        None if terms.is_empty() => j.contacts.iter().filter(at_unit).filter_map(|c| c.start.map(|s| s.date_naive())).filter(|d| in_window(*d)).min(),
        None => j
            .observations
            .iter()
            .filter(|o| terms.iter().any(|t| same_code(t, &o.term)))
            .filter_map(|o| j.observation_place(o))
            .filter(|(d, u)| *u == ep.unit && in_window(*d))
            .map(|(d, _)| d)
            .min(),
    };
    first.map(OccasionAt::On).unwrap_or(OccasionAt::Due)
}

/// The first-visit answer to `term`: from the first-visit window at the course's unit, the
/// first-visit day first, then the nearest day (the earlier of two equally near); on that day
/// the latest entry. With the day, and whether other entries that day disagree.
pub fn first_visit_answer<'a>(mapping: &Mapping, j: &Journal<'a>, ep: &Episode, term: &Code) -> Option<(&'a Observation, bool)> {
    let w = mapping.first_visit_window;
    let (from, to) = (ep.first_visit + Duration::days(w.from_day), ep.first_visit + Duration::days(w.to_day));
    let day = j
        .observations
        .iter()
        .filter(|o| same_code(&o.term, term))
        .filter_map(|o| j.observation_place(o))
        .filter(|(d, u)| *u == ep.unit && *d >= from && *d <= to)
        .map(|(d, _)| d)
        .min_by_key(|d| ((*d - ep.first_visit).num_days().abs(), *d))?;
    answer(j, &ep.unit, day, term)
}

/// The answer to `term` at (unit, day): the latest entry (by time, then document id), and
/// whether other entries that day disagree with it.
pub fn answer<'a>(j: &Journal<'a>, unit: &str, day: NaiveDate, term: &Code) -> Option<(&'a Observation, bool)> {
    let mut found: Vec<&'a Observation> =
        j.observations.iter().copied().filter(|o| same_code(&o.term, term) && j.observation_place(o) == Some((day, unit))).collect();
    found.sort_by(|a, b| (a.time, &a.provenance.document_id).cmp(&(b.time, &b.provenance.document_id)));
    let last = *found.last()?;
    let conflict = found.iter().any(|o| o.value != last.value);
    Some((last, conflict))
}

/// Activities with one of `codes` at `unit` from `from` through `to`: count and document ids.
pub fn count_activities(j: &Journal, unit: &str, from: NaiveDate, to: NaiveDate, codes: &[Code]) -> (u32, Vec<String>) {
    let mut docs = vec![];
    for a in &j.activities {
        if !codes.iter().any(|c| same_code(c, &a.code)) {
            continue;
        }
        if let Some((d, u)) = j.activity_place(a) {
            if u == unit && d >= from && d <= to {
                docs.push(a.provenance.document_id.clone());
            }
        }
    }
    (docs.len() as u32, docs)
}

/// Has the patient objected to quality-register reporting? An objection (the opt-out term with
/// one of the configured values) stands unless a later entry of the same term withdraws it; an
/// objection without a time cannot be shown to be withdrawn, so it stands.
pub fn opted_out(rule: &OptOutRule, j: &Journal) -> bool {
    let entries: Vec<&Observation> = j.observations.iter().copied().filter(|o| same_code(&o.term, &rule.term)).collect();
    let objects = |o: &Observation| matches!(&o.value, Some(ObservationValue::Code { code }) if rule.values.iter().any(|v| v == &code.code));
    entries.iter().filter(|o| objects(o)).any(|o| match o.time {
        None => true,
        Some(t) => !entries.iter().any(|w| !objects(w) && w.time.is_some_and(|wt| wt > t)),
    })
}
