//! Episodes and occasions: which artros episodes a patient's journal holds, when their first
//! visit, 3-month and 1-year occasions took place, and which answers belong to an occasion.
//!
//! Rules (the full list is in the module doc of `registers::sar`; mapping.toml repeats them
//! for the region):
//! - Only this patient's records, never nullified ones, never dated after `today` (planned
//!   visits are not occasions).
//! - An episode is patient × joint × unit. It opens at the first care contact at one of the
//!   connector's units that carries (main or secondary) a diagnosis configured for the joint; its
//!   first-visit date is that contact's date. A diagnosis belongs to the contact it names, or,
//!   naming none, to the contact at its unit on its day.
//! - An observation or activity belongs to the care contact it names (that contact's unit and
//!   day); one naming no known contact belongs to its own unit and day (Europe/Stockholm). One
//!   with neither a unit nor a contact is not attributed to any occasion.
//! - A follow-up occasion is the first day inside its window on which answers for the
//!   occasion's forms are documented at the episode's unit (if the occasion's forms read no
//!   answers, the first care contact there in the window).

use super::mapping::{Mapping, Occasion, OptOutRule};
use crate::model::{Activity, CareContact, Code, Diagnosis, Observation, ObservationValue, PatientId, Record};
use chrono::{Duration, NaiveDate};
use std::collections::{BTreeSet, HashMap};

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

/// One artros episode: patient × joint × unit.
#[derive(Clone, Debug)]
pub struct Episode<'a> {
    pub joint: String,
    pub unit: String,
    pub first_visit: NaiveDate,
    pub opening_contact: &'a CareContact,
    pub diagnosis: &'a Diagnosis,
}

/// Every episode in the journal, in order of first visit (then unit, joint).
pub fn find_episodes<'a>(mapping: &Mapping, units: &BTreeSet<String>, j: &Journal<'a>) -> Vec<Episode<'a>> {
    let mut out: Vec<Episode<'a>> = vec![];
    for c in &j.contacts {
        let Some(unit) = c.unit.as_ref().map(|u| u.as_str()) else { continue };
        if !units.contains(unit) {
            continue;
        }
        let Some(start) = c.start else { continue };
        let mut here: Vec<&'a Diagnosis> = j.diagnoses.iter().copied().filter(|d| d.code.system == mapping.diagnosis_system && j.diagnosis_at(d, c)).collect();
        // Main diagnosis first, so it is the one an episode names.
        here.sort_by_key(|d| (d.kind != crate::model::DiagnosisKind::Main, d.provenance.document_id.clone()));
        for d in here {
            let Some(joint) = mapping.joint_of(&d.code.code) else { continue };
            if out.iter().any(|e| e.joint == joint && e.unit == unit) {
                continue;
            }
            out.push(Episode { joint: joint.to_string(), unit: unit.to_string(), first_visit: start.date_naive(), opening_contact: c, diagnosis: d });
        }
    }
    out.sort_by(|a, b| (a.first_visit, &a.unit, &a.joint).cmp(&(b.first_visit, &b.unit, &b.joint)));
    out
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
    ep.first_visit + Duration::days(mapping.window(occasion).from_day) <= today
}

/// Find the occasion: the first visit itself, or the first day in the follow-up window on which
/// one of `terms` is documented at the episode's unit (any contact there if `terms` is empty).
pub fn find_occasion(mapping: &Mapping, j: &Journal, ep: &Episode, occasion: Occasion, terms: &[Code], today: NaiveDate) -> OccasionAt {
    if occasion == Occasion::FirstVisit {
        return OccasionAt::On(ep.first_visit);
    }
    if !window_open(mapping, ep, occasion, today) {
        return OccasionAt::NotOpen;
    }
    let w = mapping.window(occasion);
    let (from, to) = (ep.first_visit + Duration::days(w.from_day), ep.first_visit + Duration::days(w.to_day));
    let in_window = |d: NaiveDate| d >= from && d <= to;
    let first = if terms.is_empty() {
        j.contacts
            .iter()
            .filter(|c| c.unit.as_ref().map(|u| u.as_str()) == Some(ep.unit.as_str()))
            .filter_map(|c| c.start.map(|s| s.date_naive()))
            .filter(|d| in_window(*d))
            .min()
    } else {
        j.observations
            .iter()
            .filter(|o| terms.iter().any(|t| same_code(t, &o.term)))
            .filter_map(|o| j.observation_place(o))
            .filter(|(d, u)| *u == ep.unit && in_window(*d))
            .map(|(d, _)| d)
            .min()
    };
    first.map(OccasionAt::On).unwrap_or(OccasionAt::Due)
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
