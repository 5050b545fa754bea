//! The PVK engine: canonical records → unit-by-month numerators, denominators and patient lists.
//!
//! Patients are processed one at a time ([`Computation::add`]) and only counters are kept in
//! memory: each cell's patient-list entries are encoded as they are computed and handed in
//! blocks to a [`ListSpill`] (in memory, or the daemon's encrypted temporary file), and a cell's
//! list is rendered only when it is written ([`PatientLists::render`]). So a region's patients
//! are streamed from the store and neither their records nor their lists are held at once. Month windows are calendar-aligned: a 12-month window for March 2026
//! is 2025-04-01 … 2026-03-31 (or up to `today` while the month is running).
//!
//! Semantics (the exact SKR definitions are not public; research/pvk.md):
//! - base population: a vårdcentral's listed patients (the listing snapshot of each computed
//!   month: listed on its last day counted) or a rehab unit's visitors (a care contact at the
//!   unit in the visit window);
//! - population: base ∩ age limits ∩ a diagnosis from the code sets in the look-back window,
//!   counted from primary-care units only (`options.primary_care_units`; scope `primary_care`,
//!   the same for vårdcentral and rehab variants unless the rule says `unit` or `any`),
//!   optionally a drug criterion and a new-onset condition;
//! - drug criterion: prescriptions of the set signed in scope (default: at the vårdcentral
//!   itself; at a rehab unit, at any primary-care unit), at least `min_distinct` substances and,
//!   with `min_days`, that many prescribed days in all, in the look-back window; "and" narrows
//!   the diagnosis population, "or" is another way in (its first prescription can be the index);
//! - proportion: numerator = population members with a measure event in the window;
//! - prevalence: numerator = base members in the population, denominator = base;
//! - mångsökare: numerator = base members with more than `threshold` visits in the window;
//! - per FTE (regional, vårdval): numerator = the unit's visits (or distinct patients) of the
//!   configured professions and contact types in the calendar year up to the month's last day
//!   counted; denominator = the unit's FTE for that year in hundredths (`options.fte`), else the
//!   cell is not computable.
//!
//! The details, as tests/pvk_truth.rs recomputes them from the sandbox's ground truth:
//! - nullified records never count (activities and observations arrive nullified when their
//!   `status` says makulerad); an observation counts only with a value;
//! - age limits are taken at the month's last day counted and narrow the base too, so a
//!   prevalence's denominator is the base within the limits (Ink01: listed patients ≥ 20);
//! - membership needs a listed diagnosis in scope in the look-back window; the index date is the
//!   earliest listed diagnosis in that window at any unit; new onset excludes a patient with an
//!   excluded diagnosis at any unit (or, for an "or" drug criterion, the criterion met) in the
//!   clear months before the index date;
//! - `anchor = "index"`: the measure window runs from the index date to the earlier of index +
//!   `window_months` and the month's last day counted; otherwise it is the `window_months`
//!   ending with the month;
//! - measure and mångsökare scopes default to the rehab unit's own records, and at a
//!   vårdcentral to every primary-care unit's; mångsökare counts contacts of the configured types;
//! - listed patients without records are in the base; small-cell protection applies to counts
//!   of patients (not to visit counts or FTE).

use super::quality::{self, KnownCodes, QualityTally};
use super::rules::{Anchor, CodeSetKind, Combine, CountMode, FteCount, Indicator, IndicatorKind, RuleSet, Scope, Variant, ATC};
use super::{DrugList, Listing, Prescription, PvkEngine, SmallCellMode, UnitKind, NOT_COMPUTABLE};
use crate::model::{normalise_icd, HsaId, PatientId, Record};
use crate::model::add_months;
use crate::outbox::{PatientList, PvkQualityRow, PvkResultRow};
use chrono::{Datelike, Months, NaiveDate};
use std::collections::{BTreeMap, HashMap};

/// One patient's canonical records, as the pipeline (or the sandbox's ground truth) has them.
#[derive(Clone, Debug)]
pub struct PatientRecords {
    /// The keyed pseudonym (`Pseudonymizer::patient_key`).
    pub patient_key: String,
    pub patient: PatientId,
    pub records: Vec<Record>,
}

/// Everything one computation needs. For streaming from the store use [`PvkEngine::begin`].
#[derive(Clone, Copy, Debug)]
pub struct ComputeInput<'a> {
    pub patients: &'a [PatientRecords],
    /// Listed patients per vårdcentral; without it vårdcentral variants are not computable.
    pub listing: Option<&'a Listing>,
    /// Prescriptions; without it drug-based sub-cohorts are not computable.
    pub drugs: Option<&'a DrugList>,
    /// Units to compute for (vårdcentral or rehab per the connector's `vardcentraler`).
    pub units: &'a [HsaId],
    /// Reported months `(year, month)`.
    pub months: &'a [(i32, u32)],
    /// Computation date: the end of a running month, and the century rule of identities.
    pub today: NaiveDate,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PvkOutput {
    pub results: Vec<PvkResultRow>,
    pub quality: Vec<PvkQualityRow>,
}

impl PvkEngine {
    /// Compute every rule year × unit × month × indicator for the given patients.
    pub fn compute(&self, input: &ComputeInput) -> PvkOutput {
        let mut c = self.begin(input.listing, input.drugs, input.units, input.months, input.today);
        for p in input.patients {
            c.add(&p.patient_key, &p.patient, &p.records);
        }
        c.finish()
    }

    /// Start a streaming computation: `add` each patient once, then `finish`. Patient lists
    /// are kept in memory until `finish`; a region's computation uses [`PvkEngine::begin_spilled`].
    pub fn begin<'a, 'd>(
        &'a self,
        listing: Option<&'d Listing>,
        drugs: Option<&'d DrugList>,
        units: &[HsaId],
        months: &[(i32, u32)],
        today: NaiveDate,
    ) -> Computation<'a, 'd> {
        Computation::new(self, listing, drugs, units, months, today, Box::new(MemorySpill::default()))
    }

    /// As `begin`, with the patient-list entries kept in `spill` until
    /// [`Computation::finish_lists`] renders them one cell at a time.
    pub fn begin_spilled<'a, 'd>(
        &'a self,
        listing: Option<&'d Listing>,
        drugs: Option<&'d DrugList>,
        units: &[HsaId],
        months: &[(i32, u32)],
        today: NaiveDate,
        spill: Box<dyn ListSpill + 'a>,
    ) -> Computation<'a, 'd> {
        Computation::new(self, listing, drugs, units, months, today, spill)
    }
}

#[derive(Clone, Copy, Debug)]
struct MonthCtx {
    year: i32,
    month: u32,
    /// Last day counted: the month's last day, or `today` in a running month.
    end: NaiveDate,
    future: bool,
    partial: bool,
}

fn first_of(y: i32, m: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, 1).expect("valid month")
}

impl MonthCtx {
    fn new(year: i32, month: u32, today: NaiveDate) -> MonthCtx {
        let first = first_of(year, month);
        let (ny, nm) = add_months(year, month, 1);
        let last = first_of(ny, nm).pred_opt().expect("a day before");
        MonthCtx { year, month, end: last.min(today), future: first > today, partial: last > today && first <= today }
    }
    /// First day of the `n`-month window that ends with this month.
    fn window_start(&self, n: u32) -> NaiveDate {
        let (y, m) = add_months(self.year, self.month, -(n.max(1) as i32 - 1));
        first_of(y, m)
    }
}

/// An event matched to a code set: when, where (index into the computed units), by whom.
#[derive(Clone, Copy, Debug)]
struct Ev {
    date: NaiveDate,
    unit: Option<u16>,
    prof: Option<u16>,
    /// Registered at a primary-care unit (`options.primary_care_units`).
    pc: bool,
}

/// An activity or observation of the patient being added (borrows the records).
struct Coded<'r> {
    date: NaiveDate,
    unit: Option<u16>,
    prof: Option<u16>,
    pc: bool,
    system: &'r str,
    code: &'r str,
}

impl Coded<'_> {
    fn ev(&self) -> Ev {
        Ev { date: self.date, unit: self.unit, prof: self.prof, pc: self.pc }
    }
}

#[derive(Clone, Debug)]
struct Visit {
    date: NaiveDate,
    unit: Option<u16>,
    pc: bool,
    prof: Option<u16>,
    ctype: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct Entry {
    numerator: bool,
    index: Option<NaiveDate>,
    profs: Vec<u16>,
    visits: Option<u32>,
}

/// Where a computation keeps the encoded patient-list entries of its cells until the lists are
/// rendered: whole blocks, each put once and read back once or twice. In memory
/// ([`MemorySpill`]) for tests and small computations; the daemon's after-pull step gives a
/// temporary file, so a region's lists do not have to fit in memory.
pub trait ListSpill: Send + Sync {
    /// Keep a block; the handle reads it back.
    fn put(&mut self, block: &[u8]) -> std::io::Result<u64>;
    fn get(&self, handle: u64) -> std::io::Result<Vec<u8>>;
}

/// Blocks kept in memory.
#[derive(Debug, Default)]
pub struct MemorySpill(Vec<Vec<u8>>);

impl ListSpill for MemorySpill {
    fn put(&mut self, block: &[u8]) -> std::io::Result<u64> {
        self.0.push(block.to_vec());
        Ok(self.0.len() as u64 - 1)
    }
    fn get(&self, handle: u64) -> std::io::Result<Vec<u8>> {
        self.0.get(handle as usize).cloned().ok_or_else(|| std::io::Error::other("no such spill block"))
    }
}

/// A cell's entries are buffered up to this many bytes, then put to the spill as one block:
/// memory is this times the number of cells (units × months × indicators), whatever the region.
const SPILL_BLOCK: usize = 4096;

#[derive(Clone, Debug, Default)]
struct Cell {
    num: i64,
    den: i64,
    /// Encoded entries not yet spilled (`encode_entry`).
    tail: Vec<u8>,
    /// Spilled blocks, in order.
    blocks: Vec<u64>,
}

/// Per rule set and indicator: which units it applies to and why it cannot be computed.
#[derive(Clone, Debug)]
struct Plan {
    applies: Vec<bool>,
    blocked: Vec<Option<String>>,
}

/// `'a` is what the patient lists keep after [`Computation::finish_lists`] (the engine, the
/// spill); `'d` the listing and drug list, which the caller may drop once the lists are made.
pub struct Computation<'a, 'd> {
    engine: &'a PvkEngine,
    listing: Option<&'d Listing>,
    drugs: Option<&'d DrugList>,
    units: Vec<(HsaId, UnitKind)>,
    unit_index: HashMap<String, u16>,
    months: Vec<MonthCtx>,
    month_index: HashMap<(i32, u32), u16>,
    today: NaiveDate,
    plans: Vec<Vec<Plan>>,
    offsets: Vec<usize>,
    cells: Vec<Cell>,
    spill: Box<dyn ListSpill + 'a>,
    /// The first spill failure; `finish` reports it.
    spill_error: Option<std::io::Error>,
    profs: Vec<String>,
    prof_index: HashMap<String, u16>,
    /// Listing periods whose patient has been added (indices into `Listing::entries`).
    seen: Vec<bool>,
    known: KnownCodes,
    quality: QualityTally,
}

impl std::fmt::Debug for Computation<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Computation({} units, {} months, {} cells)", self.units.len(), self.months.len(), self.cells.len())
    }
}

/// One patient's entry in one cell's list, as spilled: the patient's pseudonym, identity and
/// identity kind, then the entry. Lengths are little-endian prefixes.
fn encode_entry(out: &mut Vec<u8>, key: &str, raw: &str, kind: &str, e: &Entry) {
    for s in [key, raw, kind] {
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.push(e.numerator as u8 | (e.index.is_some() as u8) << 1 | (e.visits.is_some() as u8) << 2);
    if let Some(d) = e.index {
        out.extend_from_slice(&d.num_days_from_ce().to_le_bytes());
    }
    if let Some(v) = e.visits {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(e.profs.len() as u16).to_le_bytes());
    for p in &e.profs {
        out.extend_from_slice(&p.to_le_bytes());
    }
}

/// A decoded entry, borrowing the cell's bytes.
struct Listed<'b> {
    key: &'b str,
    raw: &'b str,
    kind: &'b str,
    entry: Entry,
}

struct Decoder<'b> {
    bytes: &'b [u8],
    at: usize,
}

impl<'b> Decoder<'b> {
    fn take(&mut self, n: usize) -> std::io::Result<&'b [u8]> {
        let s = self.bytes.get(self.at..self.at + n).ok_or_else(|| std::io::Error::other("truncated patient-list spill"))?;
        self.at += n;
        Ok(s)
    }
    fn u16(&mut self) -> std::io::Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("two bytes")))
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("four bytes")))
    }
    fn str(&mut self) -> std::io::Result<&'b str> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(std::io::Error::other)
    }
    fn entry(&mut self) -> std::io::Result<Listed<'b>> {
        let (key, raw, kind) = (self.str()?, self.str()?, self.str()?);
        let flags = self.take(1)?[0];
        let index = if flags & 2 != 0 {
            Some(NaiveDate::from_num_days_from_ce_opt(self.u32()? as i32).ok_or_else(|| std::io::Error::other("bad date in patient-list spill"))?)
        } else {
            None
        };
        let visits = if flags & 4 != 0 { Some(self.u32()?) } else { None };
        let n = self.u16()? as usize;
        let profs = (0..n).map(|_| self.u16()).collect::<std::io::Result<_>>()?;
        Ok(Listed { key, raw, kind, entry: Entry { numerator: flags & 1 != 0, index, profs, visits } })
    }
}

/// Measures and mångsökare: a rehab unit's own records; a vårdcentral's listed patients'
/// records from any primary-care unit.
fn default_scope(kind: UnitKind) -> Scope {
    match kind {
        UnitKind::Rehab => Scope::Unit,
        UnitKind::Vardcentral => Scope::PrimaryCare,
    }
}

/// Drug criteria: prescriptions signed at the vårdcentral itself (PVK counts prescriptions
/// signed at the unit, VGR); a rehab unit prescribes none, so primary care's.
fn drug_scope(kind: UnitKind) -> Scope {
    match kind {
        UnitKind::Vardcentral => Scope::Unit,
        UnitKind::Rehab => Scope::PrimaryCare,
    }
}

fn variant_applies(v: Variant, kind: UnitKind) -> bool {
    matches!((v, kind), (Variant::Any, _) | (Variant::Rehab, UnitKind::Rehab) | (Variant::Vardcentral, UnitKind::Vardcentral))
}

fn sub_months(d: NaiveDate, n: u32) -> NaiveDate {
    d.checked_sub_months(Months::new(n)).unwrap_or(NaiveDate::MIN)
}

fn age_at(birth: NaiveDate, at: NaiveDate) -> i32 {
    let mut age = at.year() - birth.year();
    if (at.month(), at.day()) < (birth.month(), birth.day()) {
        age -= 1;
    }
    age
}

impl<'a, 'd> Computation<'a, 'd> {
    fn new(
        engine: &'a PvkEngine,
        listing: Option<&'d Listing>,
        drugs: Option<&'d DrugList>,
        units: &[HsaId],
        months: &[(i32, u32)],
        today: NaiveDate,
        spill: Box<dyn ListSpill + 'a>,
    ) -> Self {
        let mut uniq_units: Vec<HsaId> = vec![];
        for u in units {
            if !uniq_units.contains(u) {
                uniq_units.push(u.clone());
            }
        }
        let units: Vec<(HsaId, UnitKind)> = uniq_units.into_iter().map(|u| {
            let k = engine.unit_kind(&u);
            (u, k)
        }).collect();
        let unit_index = units.iter().enumerate().map(|(i, (u, _))| (u.as_str().to_string(), i as u16)).collect();
        let mut ms: Vec<(i32, u32)> = months.iter().copied().filter(|(_, m)| (1..=12).contains(m)).collect();
        ms.sort_unstable();
        ms.dedup();
        let months: Vec<MonthCtx> = ms.iter().map(|(y, m)| MonthCtx::new(*y, *m, today)).collect();
        let month_index = ms.iter().enumerate().map(|(i, k)| (*k, i as u16)).collect();
        let mut plans = vec![];
        let mut offsets = vec![];
        let mut total = 0;
        for rs in &engine.rule_sets {
            offsets.push(total);
            total += rs.indicators.len() * units.len() * months.len();
            plans.push(rs.indicators.iter().map(|ind| plan_for(rs, ind, &units, listing.is_some(), drugs.is_some())).collect());
        }
        Computation {
            engine,
            listing,
            drugs,
            known: KnownCodes::from_rule_sets(&engine.rule_sets),
            quality: QualityTally::default(),
            units,
            unit_index,
            months,
            month_index,
            today,
            plans,
            offsets,
            cells: vec![Cell::default(); total],
            spill,
            spill_error: None,
            profs: vec![],
            prof_index: HashMap::new(),
            seen: vec![false; listing.map_or(0, |l| l.len())],
        }
    }

    fn cell_index(&self, rs: usize, ind: usize, u: usize, m: usize) -> usize {
        self.offsets[rs] + (ind * self.units.len() + u) * self.months.len() + m
    }

    fn prof_id(profs: &mut Vec<String>, index: &mut HashMap<String, u16>, code: Option<&crate::model::Code>) -> Option<u16> {
        let c = code?.code.trim();
        if c.is_empty() {
            return None;
        }
        if let Some(i) = index.get(c) {
            return Some(*i);
        }
        let i = profs.len() as u16;
        profs.push(c.to_string());
        index.insert(c.to_string(), i);
        Some(i)
    }

    /// Add a patient whose identity is taken from the records (no-op for an empty slice).
    pub fn add_records(&mut self, patient_key: &str, records: &[Record]) {
        if let Some(first) = records.first() {
            let patient = first.patient().clone();
            self.add(patient_key, &patient, records);
        }
    }

    /// Add one patient (each patient once per computation).
    pub fn add(&mut self, patient_key: &str, patient: &PatientId, records: &[Record]) {
        if let Some(l) = self.listing {
            for i in l.periods_of(patient) {
                self.seen[i] = true;
            }
        }
        let unit_index = &self.unit_index;
        let unit_of = |h: Option<&HsaId>| h.and_then(|h| unit_index.get(h.as_str()).copied());
        let primary = &self.engine.options.primary_care_units;
        let pc_of = |h: Option<&HsaId>| h.is_some_and(|h| primary.contains(h.as_str()));
        // Data quality counts every record, nullified or not.
        {
            let month_index = &self.month_index;
            let month_of = |d: NaiveDate| month_index.get(&(d.year(), d.month())).copied();
            quality::tally(&mut self.quality, records, &unit_of, &month_of, &self.known, &self.engine.options.physician_professions);
        }

        let mut visits = vec![];
        let mut diags: Vec<(NaiveDate, Option<u16>, &str, String, bool)> = vec![];
        let mut acts: Vec<Coded> = vec![];
        let mut obs: Vec<Coded> = vec![];
        for r in records.iter().filter(|r| !r.nullified()) {
            let Some(date) = r.date() else { continue };
            let unit = unit_of(r.unit());
            let pc = pc_of(r.unit());
            match r {
                Record::CareContact(c) => {
                    let prof = Self::prof_id(&mut self.profs, &mut self.prof_index, c.profession.as_ref());
                    visits.push(Visit { date, unit, pc, prof, ctype: c.contact_type.as_ref().map(|t| t.code.trim().to_string()) })
                }
                Record::Diagnosis(d) => diags.push((date, unit, d.code.system.as_str(), normalise_icd(&d.code.code), pc)),
                Record::Activity(a) => {
                    let p = Self::prof_id(&mut self.profs, &mut self.prof_index, a.profession.as_ref());
                    acts.push(Coded { date, unit, prof: p, pc, system: a.code.system.as_str(), code: a.code.code.as_str() });
                }
                Record::Observation(o) => {
                    // An observation counts as performed only when it carries a value.
                    if o.value.is_some() {
                        let p = Self::prof_id(&mut self.profs, &mut self.prof_index, o.profession.as_ref());
                        obs.push(Coded { date, unit, prof: p, pc, system: o.term.system.as_str(), code: o.term.code.as_str() });
                    }
                }
            }
        }
        visits.sort_by_key(|v| v.date);

        // The listing snapshot of each computed month: where the patient was listed on the
        // month's last day counted.
        let listed_at: Vec<Option<u16>> = self
            .months
            .iter()
            .map(|m| self.listing.and_then(|l| l.unit_at(patient, m.end)).and_then(|h| self.unit_index.get(h.as_str()).copied()))
            .collect();
        let relevant: Vec<usize> = (0..self.units.len())
            .filter(|&u| match self.units[u].1 {
                UnitKind::Vardcentral => listed_at.contains(&Some(u as u16)),
                UnitKind::Rehab => visits.iter().any(|v| v.unit == Some(u as u16)),
            })
            .collect();
        if relevant.is_empty() {
            return;
        }
        let birth = patient.birth_date();
        let drug_rows: &[Prescription] = self.drugs.map(|d| d.of(patient)).unwrap_or(&[]);
        // The identity kind as the list shows it, rendered once per patient that is listed.
        let mut id_kind: Option<String> = None;

        let engine = self.engine;
        for (ri, rs) in engine.rule_sets.iter().enumerate() {
            // Events per code set, sorted by date.
            let sets: Vec<Vec<Ev>> = rs
                .code_sets
                .iter()
                .map(|cs| {
                    let mut v: Vec<Ev> = match cs.kind {
                        CodeSetKind::Diagnosis => diags.iter().filter(|d| cs.matches(d.2, &d.3)).map(|d| Ev { date: d.0, unit: d.1, prof: None, pc: d.4 }).collect(),
                        CodeSetKind::Activity => acts.iter().filter(|a| cs.matches(a.system, a.code)).map(Coded::ev).collect(),
                        CodeSetKind::Observation => obs.iter().filter(|o| cs.matches(o.system, o.code)).map(Coded::ev).collect(),
                        CodeSetKind::Drug => vec![],
                    };
                    v.sort_by_key(|e| e.date);
                    v
                })
                .collect();
            for &u in &relevant {
                let kind = self.units[u].1;
                // Visit dates at the unit, sorted: the common base test is a binary search.
                let unit_dates: Vec<NaiveDate> = visits.iter().filter(|v| v.unit == Some(u as u16)).map(|v| v.date).collect();
                for (ii, ind) in rs.indicators.iter().enumerate() {
                    let plan = &self.plans[ri][ii];
                    if !plan.applies[u] || plan.blocked[u].is_some() {
                        continue;
                    }
                    // Nothing to count for a proportion when the patient has none of its diagnoses.
                    let p = &ind.population;
                    if ind.kind == IndicatorKind::Proportion
                        && !p.everyone
                        && p.drugs.as_ref().map_or(true, |d| d.combine != Combine::Or)
                        && p.diagnoses.iter().all(|s| sets[*s].is_empty())
                    {
                        continue;
                    }
                    for mi in 0..self.months.len() {
                        let m = self.months[mi];
                        if m.future || (kind == UnitKind::Vardcentral && listed_at[mi] != Some(u as u16)) {
                            continue;
                        }
                        let ctx = Ctx {
                            rs,
                            ind,
                            sets: &sets,
                            visits: &visits,
                            unit_dates: &unit_dates,
                            drugs: drug_rows,
                            unit: u as u16,
                            unit_hsa: self.units[u].0.as_str(),
                            primary,
                            kind,
                            m,
                            birth,
                            profs: &self.profs,
                        };
                        let Some((den, num, entry)) = ctx.evaluate() else { continue };
                        let ci = self.cell_index(ri, ii, u, mi);
                        let cell = &mut self.cells[ci];
                        cell.den += den;
                        cell.num += num;
                        if let Some(e) = entry {
                            let kind = id_kind.get_or_insert_with(|| format!("{:?}", patient.kind()).to_lowercase());
                            encode_entry(&mut cell.tail, patient_key, patient.raw(), kind, &e);
                            if cell.tail.len() >= SPILL_BLOCK {
                                match self.spill.put(&cell.tail) {
                                    Ok(h) => cell.blocks.push(h),
                                    Err(e) => {
                                        self.spill_error.get_or_insert(e);
                                    }
                                }
                                cell.tail.clear();
                            }
                        }
                    }
                }
            }
        }
    }

    /// Listed patients with no records still count in their vårdcentral's base population;
    /// then build the rows with their patient lists.
    pub fn finish(self) -> PvkOutput {
        let (mut out, lists) = self.finish_lists().expect("an in-memory spill does not fail");
        for r in &mut out.results {
            r.patient_list = lists.render(r).expect("an in-memory spill does not fail");
        }
        out
    }

    /// As `finish`, but the rows come without patient lists: each list is rendered from the
    /// spill when it is asked for ([`PatientLists::render`]), so only one list at a time is in
    /// memory while they are written.
    pub fn finish_lists(mut self) -> std::io::Result<(PvkOutput, PatientLists<'a>)> {
        if let Some(listing) = self.listing {
            for (i, e) in listing.entries().iter().enumerate() {
                if !self.seen[i] && self.unit_index.contains_key(listing.unit(e).as_str()) {
                    self.add(&e.patient_key(), &e.patient(), &[]);
                }
            }
        }
        if let Some(e) = self.spill_error.take() {
            return Err(e);
        }
        let policy = self.engine.options.small_cells;
        let t = policy.threshold as i64;
        let small = |n: i64| n > 0 && n < t;
        let mut results = vec![];
        let mut listed: HashMap<ListKey, (usize, usize, usize)> = HashMap::new();
        for (ri, rs) in self.engine.rule_sets.iter().enumerate() {
            for (u, (unit, _)) in self.units.iter().enumerate() {
                for (ii, ind) in rs.indicators.iter().enumerate() {
                    let plan = &self.plans[ri][ii];
                    if !plan.applies[u] {
                        continue;
                    }
                    for (mi, m) in self.months.iter().enumerate() {
                        let mut row = PvkResultRow {
                            connector: self.engine.connector.clone(),
                            rule_year: rs.year,
                            unit: unit.as_str().to_string(),
                            year: m.year,
                            month: m.month,
                            indicator: ind.register_code.clone(),
                            numerator: None,
                            denominator: None,
                            computable: false,
                            suppressed: false,
                            note: None,
                            patient_list: None,
                        };
                        // Per-FTE measures: the denominator is the unit's FTE for the year.
                        let fte = (ind.kind == IndicatorKind::PerFte).then(|| self.engine.fte_hundredths(unit, m.year));
                        if let Some(reason) = &plan.blocked[u] {
                            row.note = Some(format!("{NOT_COMPUTABLE} {reason}"));
                        } else if m.future {
                            row.note = Some(format!("{NOT_COMPUTABLE} månaden ligger efter beräkningsdagen"));
                        } else if fte == Some(None) {
                            row.note = Some(format!("{NOT_COMPUTABLE} årsarbetskrafter saknas för enheten {} (options.fte)", m.year));
                        } else {
                            let ci = self.cell_index(ri, ii, u, mi);
                            let cell = &self.cells[ci];
                            let mut notes = vec![];
                            row.computable = true;
                            row.numerator = Some(cell.num);
                            row.denominator = Some(fte.flatten().unwrap_or(cell.den));
                            // A per-FTE denominator is no count of patients; visits are no patients.
                            let counts_patients = ind.kind != IndicatorKind::PerFte || ind.per_fte.as_ref().is_some_and(|f| f.count == FteCount::Patients);
                            let small_den = fte.is_none() && small(cell.den);
                            if counts_patients && (small(cell.num) || small_den) {
                                match policy.mode {
                                    SmallCellMode::Suppress => {
                                        row.suppressed = true;
                                        notes.push(format!("suppressed: a count is below {t} (small-cell protection); kept locally, not sent"));
                                    }
                                    SmallCellMode::Flag => notes.push(format!("{} a count is below {t} (flagged; sent as computed)", super::SMALL_CELL_FLAG)),
                                }
                            }
                            if m.partial {
                                notes.push(format!("partial month: data up to {}", self.today));
                            }
                            row.note = (!notes.is_empty()).then(|| notes.join("; "));
                            listed.insert(ListKey::of(&row), (ri, ii, ci));
                        }
                        results.push(row);
                    }
                }
            }
        }
        let quality = quality::rows(&self.quality, &self.engine.connector, &self.units, &self.months.iter().map(|m| (m.year, m.month)).collect::<Vec<_>>());
        let lists = PatientLists { engine: self.engine, cells: self.cells, spill: self.spill, profs: self.profs, listed };
        Ok((PvkOutput { results, quality }, lists))
    }
}

/// A result row's identity: rule year, unit, year, month, indicator.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ListKey(i32, String, i32, u32, String);

impl ListKey {
    fn of(r: &PvkResultRow) -> ListKey {
        ListKey(r.rule_year, r.unit.clone(), r.year, r.month, r.indicator.clone())
    }
}

/// The patient lists of a finished computation, rendered one at a time from the spill.
pub struct PatientLists<'a> {
    engine: &'a PvkEngine,
    cells: Vec<Cell>,
    spill: Box<dyn ListSpill + 'a>,
    profs: Vec<String>,
    /// Computable rows → (rule set, indicator, cell).
    listed: HashMap<ListKey, (usize, usize, usize)>,
}

impl std::fmt::Debug for PatientLists<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PatientLists({} lists)", self.listed.len())
    }
}

impl PatientLists<'_> {
    /// The local patient list behind a computable row (`None` for any other row). Personal
    /// data by design: it carries the pseudonym and the identity so authorised staff can follow
    /// up patients; the store keeps it encrypted and nothing that leaves the region reads it.
    pub fn render(&self, row: &PvkResultRow) -> std::io::Result<Option<PatientList>> {
        let Some(&(ri, ii, ci)) = self.listed.get(&ListKey::of(row)) else { return Ok(None) };
        let rs = &self.engine.rule_sets[ri];
        let ind = &rs.indicators[ii];
        let cell = &self.cells[ci];
        let mut bytes = vec![];
        for h in &cell.blocks {
            bytes.extend_from_slice(&self.spill.get(*h)?);
        }
        bytes.extend_from_slice(&cell.tail);
        // One pass tallies professions and notes where each entry starts; the entries are
        // sorted as (pseudonym, offset) pairs and decoded again as they are written, so a
        // base-population list is never held decoded.
        let mut d = Decoder { bytes: &bytes, at: 0 };
        let mut order: Vec<(&str, usize)> = vec![];
        let mut by_prof: BTreeMap<&str, i64> = BTreeMap::new();
        while d.at < bytes.len() {
            let at = d.at;
            let e = d.entry()?;
            for p in &e.entry.profs {
                *by_prof.entry(self.profs[*p as usize].as_str()).or_default() += 1;
            }
            order.push((e.key, at));
        }
        order.sort_unstable();
        // The list's fields in the order `serde_json` writes an object (sorted keys), with the
        // patients written one at a time instead of as one value tree.
        let head = serde_json::json!({
            "list_format": 1,
            "rule_year": rs.year,
            "indicator": ind.register_code,
            "indicator_id": ind.id,
            "title": ind.title,
            "lists": if ind.kind == IndicatorKind::Proportion && !ind.population.everyone { "denominator" } else { "numerator" },
            "regional": ind.regional,
            "numerator": cell.num,
            "denominator": cell.den,
            "by_profession": by_prof,
            "patients": null,
        });
        let serde_json::Value::Object(head) = head else { unreachable!("an object") };
        // Written straight into the list's compressor: the text of a large list never exists
        // whole.
        use std::io::Write;
        let mut w = PatientList::writer();
        w.write_all(b"{")?;
        for (i, (k, v)) in head.iter().enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            serde_json::to_writer(&mut w, k)?;
            w.write_all(b":")?;
            if k != "patients" {
                serde_json::to_writer(&mut w, v)?;
                continue;
            }
            w.write_all(b"[")?;
            for (j, &(_, at)) in order.iter().enumerate() {
                if j > 0 {
                    w.write_all(b",")?;
                }
                let e = Decoder { bytes: &bytes, at }.entry()?;
                // Every listed patient is in the denominator; prevalence and mångsökare lists
                // hold only numerator patients (listing a whole base population helps nobody).
                let mut roles = vec!["denominator"];
                if e.entry.numerator {
                    roles.push("numerator");
                }
                let mut o = serde_json::json!({
                    "patient_key": e.key,
                    "id": e.raw,
                    "id_kind": e.kind,
                    "roles": roles,
                });
                if let Some(d) = e.entry.index {
                    o["index_date"] = serde_json::json!(d.to_string());
                }
                if !e.entry.profs.is_empty() {
                    o["professions"] = serde_json::json!(e.entry.profs.iter().map(|p| self.profs[*p as usize].as_str()).collect::<Vec<_>>());
                }
                if let Some(v) = e.entry.visits {
                    o["visits"] = serde_json::json!(v);
                }
                serde_json::to_writer(&mut w, &o)?;
            }
            w.write_all(b"]")?;
        }
        w.write_all(b"}")?;
        Ok(Some(w.finish()?))
    }
}

fn plan_for(rs: &RuleSet, ind: &Indicator, units: &[(HsaId, UnitKind)], has_listing: bool, has_drugs: bool) -> Plan {
    let missing = rs.missing(ind);
    let mut applies = vec![];
    let mut blocked = vec![];
    for (_, kind) in units {
        applies.push(variant_applies(ind.variant, *kind));
        let mut reasons = vec![];
        if let Some(m) = &missing {
            reasons.push(m.clone());
        }
        if *kind == UnitKind::Vardcentral && !has_listing {
            reasons.push("listningsdata saknas (listade patienter per vårdcentral; options.listing)".to_string());
        }
        if let Some(d) = &ind.population.drugs {
            if !has_drugs {
                reasons.push(format!("läkemedelsdata saknas ({}; options.drug_list)", d.description));
            }
        }
        blocked.push((!reasons.is_empty()).then(|| reasons.join("; ")));
    }
    Plan { applies, blocked }
}

/// One indicator evaluated for one patient, unit and month.
struct Ctx<'c> {
    rs: &'c RuleSet,
    ind: &'c Indicator,
    sets: &'c [Vec<Ev>],
    visits: &'c [Visit],
    /// Sorted dates of the visits at `unit`.
    unit_dates: &'c [NaiveDate],
    drugs: &'c [Prescription],
    unit: u16,
    unit_hsa: &'c str,
    primary: &'c std::collections::BTreeSet<String>,
    kind: UnitKind,
    m: MonthCtx,
    birth: Option<NaiveDate>,
    profs: &'c [String],
}

impl Ctx<'_> {
    fn in_scope(&self, scope: Scope, unit: Option<u16>, pc: bool) -> bool {
        match scope {
            Scope::Any => true,
            Scope::Unit => unit == Some(self.unit),
            Scope::PrimaryCare => pc,
        }
    }

    /// Is a prescription signed where the drug criterion's scope says?
    fn prescribed_in_scope(&self, scope: Scope, p: &Prescription) -> bool {
        match scope {
            Scope::Any => true,
            Scope::Unit => p.unit.as_deref() == Some(self.unit_hsa),
            Scope::PrimaryCare => p.unit.as_deref().is_some_and(|u| self.primary.contains(u)),
        }
    }

    fn type_ok(types: &[String], t: &Option<String>) -> bool {
        types.is_empty() || t.as_ref().is_some_and(|t| types.iter().any(|x| x == t))
    }

    fn in_base(&self) -> bool {
        match self.kind {
            // The caller only evaluates vårdcentraler for patients listed there.
            UnitKind::Vardcentral => true,
            UnitKind::Rehab => {
                let p = &self.ind.population;
                let from = self.m.window_start(p.visit_window_months);
                if p.visit_contact_types.is_empty() {
                    let i = self.unit_dates.partition_point(|d| *d < from);
                    return i < self.unit_dates.len() && self.unit_dates[i] <= self.m.end;
                }
                self.visits.iter().any(|v| v.unit == Some(self.unit) && v.date >= from && v.date <= self.m.end && Self::type_ok(&p.visit_contact_types, &v.ctype))
            }
        }
    }

    fn age_ok(&self) -> bool {
        let p = &self.ind.population;
        if p.min_age.is_none() && p.max_age.is_none() {
            return true;
        }
        // Unknown age (reserve numbers) cannot satisfy an age limit.
        let Some(b) = self.birth else { return false };
        let age = age_at(b, self.m.end);
        p.min_age.map_or(true, |lo| age >= lo as i32) && p.max_age.map_or(true, |hi| age <= hi as i32)
    }

    /// Earliest date in [from, to] the drug criterion is met from, if it is: prescriptions of
    /// the set signed in scope (by default at the unit), at least `min_distinct` substances and,
    /// with `min_days`, at least that many prescribed treatment days in all.
    fn drug_first(&self, from: NaiveDate, to: NaiveDate) -> Option<NaiveDate> {
        let d = self.ind.population.drugs.as_ref()?;
        let set = &self.rs.code_sets[d.code_set];
        let scope = d.scope.unwrap_or(drug_scope(self.kind));
        let mut distinct: Vec<&str> = vec![];
        let mut first = None;
        let mut days: u64 = 0;
        for p in self.drugs {
            if p.date < from || p.date > to || !set.matches(ATC, &p.atc) || !self.prescribed_in_scope(scope, p) {
                continue;
            }
            first = Some(first.map_or(p.date, |f: NaiveDate| f.min(p.date)));
            days += p.days.unwrap_or(0) as u64;
            if !distinct.contains(&p.atc.as_str()) {
                distinct.push(&p.atc);
            }
        }
        let long_enough = d.min_days.map_or(true, |min| days >= min as u64);
        (distinct.len() as u32 >= d.min_distinct && long_enough).then_some(first).flatten()
    }

    /// `Some(index date)` if the patient is in the indicator's population.
    fn population(&self) -> Option<Option<NaiveDate>> {
        let p = &self.ind.population;
        if p.everyone {
            return Some(None);
        }
        let scope = p.scope.unwrap_or(Scope::PrimaryCare);
        let from = self.m.window_start(p.lookback_months);
        let end = self.m.end;
        let diag = |scoped: bool| {
            p.diagnoses
                .iter()
                .flat_map(|s| self.sets[*s].iter())
                .filter(|e| e.date >= from && e.date <= end && (!scoped || self.in_scope(scope, e.unit, e.pc)))
                .map(|e| e.date)
                .min()
        };
        // Membership needs a diagnosis in scope; the index (onset) date is the earliest anywhere.
        let diag_in_scope = diag(true);
        let diag_onset = diag_in_scope.and(diag(false));
        let index = match &p.drugs {
            None => diag_onset,
            Some(d) => {
                let drug = self.drug_first(self.m.window_start(d.lookback_months), end);
                match d.combine {
                    Combine::And => diag_onset.filter(|_| drug.is_some()),
                    Combine::Or => match (diag_onset, drug) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    },
                }
            }
        }?;
        if let Some(n) = &p.new_onset {
            let clear_from = sub_months(index, n.clear_months);
            let earlier = n.exclude.iter().flat_map(|s| self.sets[*s].iter()).any(|e| e.date >= clear_from && e.date < index);
            let earlier_drug = p.drugs.as_ref().is_some_and(|d| {
                d.combine == Combine::Or
                    && self.drug_first(clear_from, index.pred_opt().unwrap_or(index)).is_some_and(|first| first < index)
            });
            if earlier || earlier_drug {
                return None;
            }
        }
        Some(Some(index))
    }

    /// Professions behind the qualifying measure events, if any event qualifies.
    fn measure(&self, index: Option<NaiveDate>) -> Option<Vec<u16>> {
        let me = self.ind.measure.as_ref()?;
        let scope = me.scope.unwrap_or(default_scope(self.kind));
        let (from, to) = match (me.anchor, index) {
            (Anchor::Index, Some(i)) => (i, self.m.end.min(i.checked_add_months(Months::new(me.window_months)).unwrap_or(NaiveDate::MAX))),
            _ => (self.m.window_start(me.window_months), self.m.end),
        };
        let mut found = false;
        let mut profs: Vec<u16> = vec![];
        for s in me.activities.iter().chain(&me.observations) {
            for e in &self.sets[*s] {
                if e.date < from || e.date > to || !self.in_scope(scope, e.unit, e.pc) {
                    continue;
                }
                if !me.professions.is_empty() && !e.prof.is_some_and(|p| me.professions.iter().any(|x| *x == self.profs[p as usize])) {
                    continue;
                }
                found = true;
                if let Some(p) = e.prof {
                    if !profs.contains(&p) {
                        profs.push(p);
                    }
                }
            }
        }
        found.then_some(profs)
    }

    /// (added to the denominator, added to the numerator, list entry)
    fn evaluate(&self) -> Option<(i64, i64, Option<Entry>)> {
        if self.ind.kind == IndicatorKind::PerFte {
            return self.per_fte();
        }
        if !self.in_base() || !self.age_ok() {
            return None;
        }
        match self.ind.kind {
            IndicatorKind::Prevalence => {
                let index = self.population();
                let in_pop = index.is_some();
                Some((1, in_pop as i64, in_pop.then(|| Entry { numerator: true, index: index.flatten(), ..Default::default() })))
            }
            IndicatorKind::Proportion => {
                let index = self.population()?;
                let profs = self.measure(index);
                let num = profs.is_some();
                // A whole-population denominator (FaR) is not listed: only who got the action.
                let listed = num || !self.ind.population.everyone;
                Some((1, num as i64, listed.then(|| Entry { numerator: num, index, profs: profs.unwrap_or_default(), ..Default::default() })))
            }
            IndicatorKind::PerFte => None,
            IndicatorKind::FrequentAttenders => {
                let fa = self.ind.frequent_attenders.as_ref()?;
                let scope = fa.scope.unwrap_or(default_scope(self.kind));
                let from = self.m.window_start(fa.window_months);
                let counted = self.visits.iter().filter(|v| v.date >= from && v.date <= self.m.end && self.in_scope(scope, v.unit, v.pc) && Self::type_ok(&fa.contact_types, &v.ctype));
                let n = match fa.count {
                    CountMode::Contacts => counted.count() as u32,
                    CountMode::Days => {
                        let mut days: Vec<NaiveDate> = counted.map(|v| v.date).collect();
                        days.dedup();
                        days.len() as u32
                    }
                };
                let num = n > fa.threshold;
                Some((1, num as i64, num.then(|| Entry { numerator: true, visits: Some(n), ..Default::default() })))
            }
        }
    }

    /// Vårdval follow-up: this patient's visits at the unit by the configured professions in
    /// the calendar year up to the month's last day counted (visits), or 1 if any (patients).
    fn per_fte(&self) -> Option<(i64, i64, Option<Entry>)> {
        let f = self.ind.per_fte.as_ref()?;
        let from = first_of(self.m.year, 1);
        let n = self
            .visits
            .iter()
            .filter(|v| {
                v.unit == Some(self.unit)
                    && v.date >= from
                    && v.date <= self.m.end
                    && Self::type_ok(&f.contact_types, &v.ctype)
                    && (f.professions.is_empty() || v.prof.is_some_and(|p| f.professions.iter().any(|x| *x == self.profs[p as usize])))
            })
            .count() as i64;
        if n == 0 {
            return None;
        }
        let num = match f.count {
            FteCount::Visits => n,
            FteCount::Patients => 1,
        };
        Some((0, num, Some(Entry { numerator: true, visits: Some(n as u32), ..Default::default() })))
    }
}
