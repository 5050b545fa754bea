//! Data-quality report per unit and month: how much of what the indicators need is actually in
//! the journal. SKR names the gaps itself (research/pvk.md §1.6): visits without a diagnosis,
//! professions other than physicians that rarely write one, codes that vary between regions.
//!
//! Measures (`PvkQualityRow.measure`), all counts of records at the unit in the month:
//! - `visits`, `diagnoses`, `activities`, `nullified_records`
//! - `visits_without_diagnosis`: a care contact with no diagnosis on the same contact (or, when
//!   either lacks a contact id, at the same unit on the same day)
//! - `visits_without_diagnosis:<profession code>` (`unknown` when the contact has none)
//! - `non_physician_visits_without_diagnosis`: only when `physician_professions` is configured
//! - `activities_without_kva_or_known_code`: neither a well-formed KVÅ code nor a code any
//!   loaded code set knows (such an activity can never count in an indicator)
//! - `unknown_codes:diagnosis`: not ICD-10-SE, or not shaped like an ICD-10-SE code
//! - `unknown_codes:activity`: a code system no rule uses, or a malformed KVÅ code

use super::rules::{valid_icd_code, valid_kva, CodeSet, CodeSetKind, RuleSet};
use super::UnitKind;
use crate::model::{normalise_icd, HsaId, Record, OID_ICD10SE, OID_KVA};
use crate::outbox::PvkQualityRow;
use chrono::NaiveDate;
use std::collections::{BTreeMap, BTreeSet, HashSet};

pub const BASE_MEASURES: &[&str] = &[
    "visits",
    "diagnoses",
    "activities",
    "nullified_records",
    "visits_without_diagnosis",
    "activities_without_kva_or_known_code",
    "unknown_codes:diagnosis",
    "unknown_codes:activity",
];

/// The activity and observation code sets of every loaded rule set.
#[derive(Clone, Debug, Default)]
pub struct KnownCodes {
    sets: Vec<CodeSet>,
    systems: BTreeSet<String>,
}

impl KnownCodes {
    pub fn from_rule_sets(rule_sets: &[RuleSet]) -> KnownCodes {
        let sets: Vec<CodeSet> =
            rule_sets.iter().flat_map(|r| r.code_sets.iter()).filter(|c| matches!(c.kind, CodeSetKind::Activity | CodeSetKind::Observation)).cloned().collect();
        let mut systems: BTreeSet<String> = sets.iter().map(|c| c.system.clone()).collect();
        systems.insert(OID_KVA.to_string());
        KnownCodes { sets, systems }
    }

    fn knows(&self, system: &str, code: &str) -> bool {
        self.sets.iter().any(|s| s.kind == CodeSetKind::Activity && s.matches(system, code))
    }
}

#[derive(Clone, Debug, Default)]
pub struct QualityTally {
    counts: BTreeMap<(u16, u16, String), i64>,
    measures: BTreeSet<String>,
}

impl QualityTally {
    fn add(&mut self, u: u16, m: u16, measure: &str) {
        *self.counts.entry((u, m, measure.to_string())).or_default() += 1;
        if !BASE_MEASURES.contains(&measure) {
            self.measures.insert(measure.to_string());
        }
    }
}

/// Count one patient's records into the tally.
pub fn tally(
    t: &mut QualityTally,
    records: &[Record],
    unit_of: &dyn Fn(Option<&HsaId>) -> Option<u16>,
    month_of: &dyn Fn(NaiveDate) -> Option<u16>,
    known: &KnownCodes,
    physicians: &[String],
) {
    let mut contact_ids: HashSet<&str> = HashSet::new();
    // (unit, day) of every diagnosis, and of those naming no contact: the same-day fallback
    // applies only when the contact or the diagnosis lacks a contact id.
    let mut unit_days: HashSet<(Option<u16>, NaiveDate)> = HashSet::new();
    let mut unlinked_days: HashSet<(Option<u16>, NaiveDate)> = HashSet::new();
    for r in records.iter().filter(|r| !r.nullified()) {
        if let Record::Diagnosis(d) = r {
            if let Some(c) = &d.care_contact_id {
                contact_ids.insert(c.as_str());
            }
            if let Some(day) = r.date() {
                unit_days.insert((unit_of(d.unit.as_ref()), day));
                if d.care_contact_id.is_none() {
                    unlinked_days.insert((unit_of(d.unit.as_ref()), day));
                }
            }
        }
    }
    for r in records {
        let (Some(u), Some(day)) = (unit_of(r.unit()), r.date()) else { continue };
        let Some(m) = month_of(day) else { continue };
        if r.nullified() {
            t.add(u, m, "nullified_records");
            continue;
        }
        match r {
            Record::CareContact(c) => {
                t.add(u, m, "visits");
                let has = match c.care_contact_id.as_deref() {
                    Some(id) => contact_ids.contains(id) || unlinked_days.contains(&(Some(u), day)),
                    None => unit_days.contains(&(Some(u), day)),
                };
                if !has {
                    t.add(u, m, "visits_without_diagnosis");
                    let prof = c.profession.as_ref().map(|p| p.code.trim()).filter(|p| !p.is_empty());
                    t.add(u, m, &format!("visits_without_diagnosis:{}", prof.unwrap_or("unknown")));
                    if !physicians.is_empty() && prof.is_some_and(|p| !physicians.iter().any(|x| x == p)) {
                        t.add(u, m, "non_physician_visits_without_diagnosis");
                    }
                }
            }
            Record::Diagnosis(d) => {
                t.add(u, m, "diagnoses");
                if d.code.system != OID_ICD10SE || !valid_icd_code(&normalise_icd(&d.code.code)) {
                    t.add(u, m, "unknown_codes:diagnosis");
                }
            }
            Record::Activity(a) => {
                t.add(u, m, "activities");
                let kva = a.code.system == OID_KVA;
                let well_formed_kva = kva && valid_kva(&normalise_icd(&a.code.code));
                if !well_formed_kva && !known.knows(&a.code.system, &a.code.code) {
                    t.add(u, m, "activities_without_kva_or_known_code");
                }
                if (kva && !well_formed_kva) || !known.systems.contains(&a.code.system) {
                    t.add(u, m, "unknown_codes:activity");
                }
            }
            Record::Observation(_) => {}
        }
    }
}

/// Rows for every unit × month × measure (zeros included, so a recount replaces old numbers).
pub fn rows(t: &QualityTally, connector: &str, units: &[(HsaId, UnitKind)], months: &[(i32, u32)]) -> Vec<PvkQualityRow> {
    let mut out = vec![];
    for (ui, (unit, _)) in units.iter().enumerate() {
        for (mi, (y, m)) in months.iter().enumerate() {
            let measures = BASE_MEASURES.iter().map(|s| s.to_string()).chain(t.measures.iter().cloned());
            for measure in measures {
                let count = t.counts.get(&(ui as u16, mi as u16, measure.clone())).copied().unwrap_or(0);
                out.push(PvkQualityRow { connector: connector.to_string(), unit: unit.as_str().to_string(), year: *y, month: *m, measure, count });
            }
        }
    }
    out
}
