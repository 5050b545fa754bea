//! A deterministic synthetic region. `Population::generate` keeps one compact header per patient
//! (identity, sex, birth date, listing, a summary for the engagement index); a patient's journal
//! is derived again from `(seed, patient index)` whenever it is asked for, then the patient's
//! mutation overlay is replayed on top. So a region-year of a million contacts costs a few tens
//! of bytes per patient in memory, and the same seed always gives the same documents.

use super::truth::{Condition, Defect};

// The SAR course scenarios (issue 14) live in their own file; a child module, so they reuse the
// builder and the artros course without widening what this file exports.
#[path = "sar_cases.rs"]
mod sar_cases;
use super::{AnswerValue, Domain, Joint, SarForm, Side};

mod builder;
mod edits;
mod headers;

use builder::*;
use edits::*;
use headers::*;
pub(crate) use edits::identity;
use crate::model::{luhn_check_digit, stockholm, IdKind, OID_KVA};
use crate::sandbox::vocabulary::{self as vocab, act, answer, kva, obs, profession, LOCAL_TERMS};
use anyhow::{anyhow, bail, ensure, Result};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc, Weekday};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The population as the server and the tests share it. Mutations take `&self`.
pub type SharedPopulation = Arc<Population>;

/// A care unit of the sandbox region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSpec {
    pub hsa_id: String,
    pub name: String,
}

impl UnitSpec {
    pub fn new(hsa_id: &str, name: &str) -> UnitSpec {
        UnitSpec { hsa_id: hsa_id.to_string(), name: name.to_string() }
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct PopulationSpec {
    pub seed: u64,
    pub patients: usize,
    /// The journal's "today": nothing is dated after it.
    pub today: NaiveDate,
    /// Days of history before `today`. Artros first visits spread over the whole range, so
    /// with the default 540 days some episodes have reached their 1-year follow-up.
    pub history_days: u32,
    /// Physiotherapy/rehab units (artros care happens here).
    pub rehab_units: Vec<UnitSpec>,
    /// Vårdcentraler (listed population; physicians, nurses, psychologists, some rehab).
    pub vc_units: Vec<UnitSpec>,
    /// Share of documents written deliberately bad (invalid personnummer in the header, unknown
    /// code system) so quarantine is exercised. Zero for benchmarks.
    pub bad_item_share: f64,
    /// Share of ordinary visits nullified (makulerade), and of form answers first entered wrong,
    /// nullified and entered again.
    pub nullified_share: f64,
    /// The first patients are fixed archetypes (see [`archetype`]) so even a handful of
    /// patients covers every case. Off = every patient drawn at random.
    pub archetypes: bool,
}

impl PopulationSpec {
    pub fn new(seed: u64, patients: usize, today: NaiveDate) -> PopulationSpec {
        PopulationSpec {
            seed,
            patients,
            today,
            history_days: 540,
            rehab_units: vec![
                UnitSpec::new(vocab::REHAB_UNITS[0], "Fysioterapin Klarälven"),
                UnitSpec::new(vocab::REHAB_UNITS[1], "Rehab Fryken"),
                UnitSpec::new(vocab::REHAB_UNITS[2], "Fysio Vänerstrand"),
                UnitSpec::new(vocab::REHAB_UNITS[3], "Primärvårdsrehab Älvdalen"),
            ],
            vc_units: vec![
                UnitSpec::new(vocab::VC_UNITS[0], "Vårdcentralen Norrstrand"),
                UnitSpec::new(vocab::VC_UNITS[1], "Vårdcentralen Skåre"),
            ],
            bad_item_share: 0.0,
            nullified_share: 0.01,
            archetypes: true,
        }
    }
}

/// Fixed patients at the start of the population (when `PopulationSpec::archetypes`), so tests
/// of a small population can count on each case. Dates are relative to `today`.
pub mod archetype {
    /// Knee, the whole path: first visit ~14 months ago, school, exercise, 3 months, 1 year.
    pub const ARTROS_KNEE_COMPLETE: usize = 0;
    /// Hip, first visit ~6 months ago: complete through 3 months, 1 year not yet due.
    pub const ARTROS_HIP_AWAITING_Y1: usize = 1;
    /// Knee, stopped after artrosskola: no exercise, no follow-ups.
    pub const ARTROS_DROPOUT_AFTER_SCHOOL: usize = 2;
    /// Hip, the 3-month patient form lacks EQ VAS (a mandatory answer): worklist.
    pub const ARTROS_M3PAT_INCOMPLETE: usize = 3;
    /// Knee, complete path, register objection (KVALREG-SPARR) recorded at the 3-month visit.
    pub const ARTROS_OBJECTION: usize = 4;
    /// Hand, samordningsnummer, first visit ~5 months ago.
    pub const ARTROS_SAMORDNINGSNUMMER: usize = 5;
    /// Knee, regional reserve number (OID 1.2.752.74.9.2), first visit ~4 months ago.
    pub const ARTROS_RESERVE_NUMBER: usize = 6;
    /// Hip, the 3-month visit and everything documented at it nullified.
    pub const ARTROS_M3_NULLIFIED: usize = 7;
    /// KOL with 6MWT, patient education, energy conservation, supervised exercise; FaR.
    pub const KOL: usize = 8;
    pub const STROKE: usize = 9;
    pub const TIA: usize = 10;
    pub const HEART_FAILURE: usize = 11;
    /// Osteoporosis with a hip fracture, age ≥ 50, balance training and fall prevention.
    pub const OSTEOPOROSIS: usize = 12;
    pub const INCONTINENCE: usize = 13;
    /// Depression with body-awareness training and FaR.
    pub const DEPRESSION: usize = 14;
    /// Utmattningssyndrom (F43.8A) with rehab under a symptom diagnosis.
    pub const STRESS: usize = 15;
    /// More than 20 visits within 12 months.
    pub const FREQUENT_ATTENDER: usize = 16;
    /// Low-back pain, plain physiotherapy.
    pub const MUSCULOSKELETAL: usize = 17;
    /// Knee, the first-visit PT form lacks the side (mandatory there).
    pub const ARTROS_FVPT_INCOMPLETE: usize = 18;
    /// Knee, the 1-year form lacks "wants surgery" (mandatory).
    pub const ARTROS_Y1_INCOMPLETE: usize = 19;
    /// Knee, first visit ten days ago: only the first visit so far.
    pub const ARTROS_RECENT: usize = 20;
    /// Not listed at any vårdcentral; shoulder pain.
    pub const UNLISTED: usize = 21;
    /// SAR course cases (built in `sar_cases.rs`): knee and hip diagnosed at one first visit.
    pub const SAR_TWO_JOINTS: usize = 22;
    /// Knee artros only as a secondary diagnosis on a low-back-pain visit: no course.
    pub const SAR_SECONDARY_ONLY: usize = 23;
    /// M19 at a site other than hand/wrist: no course, reported.
    pub const SAR_M19_OTHER_SITE: usize = 24;
    /// Hip, the first-visit questionnaire answered days before the visit.
    pub const SAR_QUESTIONNAIRE_BEFORE: usize = 25;
    /// Knee, a pain score for another complaint in the 3-month window before the follow-up.
    pub const SAR_UNRELATED_PAIN_IN_M3: usize = 26;
    /// Knee, a complete course and a second course at the same unit about two years later.
    pub const SAR_SECOND_COURSE: usize = 27;
    pub const COUNT: usize = 28;
}

/// Counts of what was generated (nullified and bad items included).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PopulationStats {
    pub patients: usize,
    pub personnummer: usize,
    pub samordningsnummer: usize,
    pub reserve_numbers: usize,
    pub care_contacts: u64,
    pub diagnoses: u64,
    pub activities: u64,
    pub observations: u64,
    pub generation_millis: u64,
}

/// A visit a test adds to a patient's journal.
#[derive(Clone, Debug)]
pub struct VisitSpec {
    pub date: NaiveDate,
    /// HSA id of one of the population's units.
    pub unit: String,
    /// A profession code from the vocabulary.
    pub profession: String,
    pub phone: bool,
    /// ICD-10-SE codes; the first is the main diagnosis.
    pub diagnoses: Vec<String>,
    /// Activity codes with their system (LOCAL_TERMS or KVÅ).
    pub activities: Vec<crate::model::Code>,
    /// Observation terms (LOCAL_TERMS) and values.
    pub observations: Vec<(String, AnswerValue)>,
}

/// What a mutation did: the patient's new update time and the documents it wrote or changed.
#[derive(Clone, Debug)]
pub struct Mutation {
    pub updated_at: DateTime<Utc>,
    pub documents: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Random numbers: SplitMix64, written out so the stream never changes under a crate upgrade.

#[derive(Clone)]
pub(crate) struct Rng(u64);

pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut r = Rng(a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17));
    r.next_u64()
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        (((self.next_u64() >> 32) * n) >> 32).min(n.saturating_sub(1))
    }
    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
    }
    pub(crate) fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    /// Index drawn with the given weights.
    pub(crate) fn weighted(&mut self, ws: &[f64]) -> usize {
        let total: f64 = ws.iter().sum();
        let mut x = ((self.next_u64() >> 11) as f64) * (1.0 / (1u64 << 53) as f64) * total;
        for (i, w) in ws.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        ws.len() - 1
    }
}

const HEADER_STREAM: u64 = 0x4845_4144;
const PLAN_STREAM: u64 = 0x504c_414e;
const DEFECT_STREAM: u64 = 0x4445_4645;
const NULL_STREAM: u64 = 0x4e55_4c4c;

// ---------------------------------------------------------------------------------------------
// The compact per-patient header and the derived plan (a patient's whole journal).

#[derive(Clone, Debug)]
pub(crate) struct Header {
    /// ASCII, 12 characters: `YYYYMMDDNNNC` (samordningsnummer: day + 60) or `YYYYMMDDSNNC`.
    pub id: [u8; 12],
    pub kind: IdKind,
    pub female: bool,
    pub birth: NaiveDate,
    /// Listed vårdcentral (unit index) and since when.
    pub listed: Option<(u8, NaiveDate)>,
    /// The rehab unit the patient goes to.
    pub home: u8,
    /// Summary of the generated journal (UTC seconds): first contact, latest registration.
    pub first: i64,
    pub last: i64,
    /// Per engagement-index domain, a bit per unit holding data.
    pub domain_units: [u16; 4],
}

impl Header {
    pub(crate) fn id_str(&self) -> &str {
        std::str::from_utf8(&self.id).expect("ids are ASCII")
    }
    pub(crate) fn age_on(&self, d: NaiveDate) -> u32 {
        age_on(self.birth, d)
    }
}

fn age_on(birth: NaiveDate, d: NaiveDate) -> u32 {
    let mut a = d.year() - birth.year();
    if (d.month(), d.day()) < (birth.month(), birth.day()) {
        a -= 1;
    }
    a.max(0) as u32
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prof {
    Physio,
    OccTherapist,
    Physician,
    Nurse,
    Psychologist,
}

impl Prof {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Prof::Physio => profession::PHYSIOTHERAPIST,
            Prof::OccTherapist => profession::OCCUPATIONAL_THERAPIST,
            Prof::Physician => profession::PHYSICIAN,
            Prof::Nurse => profession::NURSE,
            Prof::Psychologist => profession::PSYCHOLOGIST,
        }
    }
    pub(crate) fn display(self) -> &'static str {
        match self {
            Prof::Physio => "Fysioterapeut",
            Prof::OccTherapist => "Arbetsterapeut",
            Prof::Physician => "Läkare",
            Prof::Nurse => "Sjuksköterska",
            Prof::Psychologist => "Psykolog",
        }
    }
    fn letter(self) -> char {
        match self {
            Prof::Physio => 'F',
            Prof::OccTherapist => 'A',
            Prof::Physician => 'L',
            Prof::Nurse => 'S',
            Prof::Psychologist => 'P',
        }
    }
    fn from_code(c: &str) -> Option<Prof> {
        [Prof::Physio, Prof::OccTherapist, Prof::Physician, Prof::Nurse, Prof::Psychologist].into_iter().find(|p| p.code() == c)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Contact {
    pub start: NaiveDateTime,
    pub minutes: u16,
    pub unit: u8,
    pub phone: bool,
    pub prof: Prof,
    pub staff: u8,
    /// Signed (and registered) at.
    pub registered: NaiveDateTime,
    pub nullified: bool,
    pub defect: Option<Defect>,
}

impl Contact {
    pub(crate) fn end(&self) -> NaiveDateTime {
        self.start + TimeDelta::minutes(self.minutes as i64)
    }
    /// The professional's HSA id: the unit's id, a profession letter and a number.
    pub(crate) fn write_staff_hsa(&self, w: &mut Vec<u8>, unit_hsa: &str) {
        write!(w, "{unit_hsa}{}{:02}", self.prof.letter(), self.staff).expect("write to Vec");
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Dx {
    pub contact: u32,
    pub code: Cow<'static, str>,
    pub main: bool,
    pub chronic: bool,
    pub nullified: bool,
    pub defect: Option<Defect>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Act {
    pub contact: u32,
    pub code: Cow<'static, str>,
    pub system: Cow<'static, str>,
    pub nullified: bool,
    pub defect: Option<Defect>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Obs {
    pub contact: u32,
    pub term: Cow<'static, str>,
    pub value: AnswerValue,
    /// The artros episode and the SAR forms (bits of `SarForm::bit`) the answer belongs to.
    pub episode: Option<u8>,
    pub forms: u8,
    pub nullified: bool,
    pub defect: Option<Defect>,
    /// Set when the answer was changed after the visit.
    pub registered: Option<NaiveDateTime>,
}

#[derive(Clone, Debug)]
pub(crate) struct Episode {
    pub joint: Joint,
    pub side: Side,
    pub icd: &'static str,
    pub unit: u8,
    pub fv_contact: u32,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    pub contacts: Vec<Contact>,
    pub diagnoses: Vec<Dx>,
    pub activities: Vec<Act>,
    pub observations: Vec<Obs>,
    pub episodes: Vec<Episode>,
    pub conditions: Vec<Condition>,
}

impl Plan {
    /// (first contact start, latest registration) as UTC seconds; (0, 0) when empty.
    fn span(&self) -> (i64, i64) {
        let first = self.contacts.iter().map(|c| c.start).min();
        let last = self.contacts.iter().map(|c| c.registered).chain(self.observations.iter().filter_map(|o| o.registered)).max();
        match (first, last) {
            (Some(f), Some(l)) => (utc_secs(f), utc_secs(l)),
            _ => (0, 0),
        }
    }

    fn domain_units(&self) -> [u16; 4] {
        let mut m = [0u16; 4];
        for c in &self.contacts {
            m[Domain::Contacts as usize] |= 1 << c.unit;
        }
        for d in &self.diagnoses {
            m[Domain::Diagnoses as usize] |= 1 << self.contacts[d.contact as usize].unit;
        }
        for a in &self.activities {
            m[Domain::Activities as usize] |= 1 << self.contacts[a.contact as usize].unit;
        }
        for o in &self.observations {
            m[Domain::Observations as usize] |= 1 << self.contacts[o.contact as usize].unit;
        }
        m
    }
}

pub(crate) fn utc_secs(t: NaiveDateTime) -> i64 {
    stockholm(t).timestamp()
}

pub(crate) fn local_of(secs: i64) -> NaiveDateTime {
    DateTime::<Utc>::from_timestamp(secs, 0).expect("timestamps are in range").with_timezone(&chrono_tz::Europe::Stockholm).naive_local()
}

// ---------------------------------------------------------------------------------------------
// Mutations are kept as edits and replayed on the derived plan.

#[derive(Clone, Debug)]
pub(crate) enum Edit {
    SetAnswer { episode: usize, form: SarForm, term: String, value: AnswerValue, at: NaiveDateTime },
    Nullify { kind: DocKind, seq: u32, cascade: bool },
    AddObjection { contact: u32 },
    AddVisit { spec: VisitSpec, unit: u8, prof: Prof, at: NaiveDateTime },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DocKind {
    Contact,
    Diagnosis,
    Activity,
    Observation,
}

impl DocKind {
    fn letter(self) -> char {
        match self {
            DocKind::Contact => 'K',
            DocKind::Diagnosis => 'D',
            DocKind::Activity => 'A',
            DocKind::Observation => 'O',
        }
    }
}

// ---------------------------------------------------------------------------------------------

pub struct Population {
    spec: PopulationSpec,
    /// Prefix of every document id, from the seed (two sandboxes never share ids).
    tag: String,
    units: Vec<UnitSpec>,
    n_rehab: u8,
    headers: Vec<Header>,
    by_id: HashMap<[u8; 12], u32>,
    /// Patients with a national id, sorted by id: the engagement index's order.
    order: Vec<u32>,
    /// Per patient, the latest change (UTC seconds).
    updated: Vec<AtomicI64>,
    overlays: RwLock<HashMap<u32, Vec<Edit>>>,
    /// The latest update time handed out (mutations are strictly later than anything before).
    clock: Mutex<i64>,
    stats: PopulationStats,
}

impl std::fmt::Debug for Population {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Population").field("seed", &self.spec.seed).field("patients", &self.headers.len()).finish()
    }
}

impl Population {
    pub fn generate(spec: &PopulationSpec) -> Population {
        let started = std::time::Instant::now();
        let mut units = spec.rehab_units.clone();
        units.extend(spec.vc_units.iter().cloned());
        assert!(!spec.rehab_units.is_empty() && !spec.vc_units.is_empty(), "the sandbox needs at least one rehab unit and one vårdcentral");
        assert!(units.len() <= 16, "at most 16 units");
        let n_rehab = spec.rehab_units.len() as u8;
        let tag = format!("{:04X}", mix(spec.seed, 0x7a67) & 0xffff);

        // Identities are drawn in order so a collision can be re-drawn deterministically.
        let mut headers = Vec::with_capacity(spec.patients);
        let mut seen: HashSet<[u8; 12]> = HashSet::with_capacity(spec.patients);
        for i in 0..spec.patients {
            headers.push(draw_header(spec, i as u32, n_rehab, &mut seen));
        }
        drop(seen);

        let mut pop = Population {
            spec: spec.clone(),
            tag,
            units,
            n_rehab,
            headers,
            by_id: HashMap::new(),
            order: Vec::new(),
            updated: Vec::new(),
            overlays: RwLock::new(HashMap::new()),
            clock: Mutex::new(0),
            stats: PopulationStats::default(),
        };

        // Derive every journal once, in parallel, for the engagement-index summary and counts.
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
        let chunk = pop.headers.len().div_ceil(threads).max(1);
        // Per patient: first contact, latest registration, units per domain, document counts.
        type Summary = (i64, i64, [u16; 4], [u64; 4]);
        let summaries: Vec<Vec<Summary>> = std::thread::scope(|s| {
            let pop = &pop;
            let handles: Vec<_> = (0..pop.headers.len())
                .step_by(chunk)
                .map(|from| {
                    s.spawn(move || {
                        (from..(from + chunk).min(pop.headers.len()))
                            .map(|i| {
                                let plan = pop.derive_base(i as u32);
                                let (f, l) = plan.span();
                                let counts = [plan.contacts.len() as u64, plan.diagnoses.len() as u64, plan.activities.len() as u64, plan.observations.len() as u64];
                                (f, l, plan.domain_units(), counts)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("generation thread")).collect()
        });
        let mut stats = PopulationStats { patients: pop.headers.len(), ..Default::default() };
        let mut latest = 0i64;
        for (i, (f, l, m, c)) in summaries.into_iter().flatten().enumerate() {
            let h = &mut pop.headers[i];
            h.first = f;
            h.last = l;
            h.domain_units = m;
            latest = latest.max(l);
            stats.care_contacts += c[0];
            stats.diagnoses += c[1];
            stats.activities += c[2];
            stats.observations += c[3];
            match h.kind {
                IdKind::Personnummer => stats.personnummer += 1,
                IdKind::Samordningsnummer => stats.samordningsnummer += 1,
                IdKind::Reserve => stats.reserve_numbers += 1,
            }
        }
        pop.by_id = pop.headers.iter().enumerate().map(|(i, h)| (h.id, i as u32)).collect();
        let mut order: Vec<u32> = (0..pop.headers.len() as u32).filter(|i| pop.headers[*i as usize].kind != IdKind::Reserve).collect();
        order.sort_by(|a, b| pop.headers[*a as usize].id.cmp(&pop.headers[*b as usize].id));
        pop.order = order;
        pop.updated = pop.headers.iter().map(|h| AtomicI64::new(h.last)).collect();
        pop.clock = Mutex::new(latest);
        stats.generation_millis = started.elapsed().as_millis() as u64;
        pop.stats = stats;
        tracing::info!(patients = pop.stats.patients, contacts = pop.stats.care_contacts, millis = pop.stats.generation_millis, "sandbox journal population generated");
        pop
    }

    pub fn spec(&self) -> &PopulationSpec {
        &self.spec
    }
    pub fn len(&self) -> usize {
        self.headers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }
    pub fn stats(&self) -> &PopulationStats {
        &self.stats
    }
    pub fn units(&self) -> &[UnitSpec] {
        &self.units
    }
    /// The population's document-id prefix.
    pub fn tag(&self) -> &str {
        &self.tag
    }
    /// The latest update time of any patient (generated or mutated).
    pub fn last_update(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(*self.clock.lock().expect("clock"), 0).expect("in range")
    }
    /// A patient's latest update time.
    pub fn updated_at(&self, patient: usize) -> DateTime<Utc> {
        DateTime::from_timestamp(self.updated[patient].load(Ordering::Relaxed), 0).expect("in range")
    }

    /// The patient whose id (12 characters, any case, optional `-`) this is.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        let norm: Vec<u8> = id.trim().bytes().filter(|b| *b != b'-' && *b != b'+').map(|b| b.to_ascii_uppercase()).collect();
        let key: [u8; 12] = norm.as_slice().try_into().ok()?;
        self.by_id.get(&key).map(|i| *i as usize)
    }

    /// The patient's identity as the model parses it.
    pub fn patient_id(&self, patient: usize) -> crate::model::PatientId {
        identity(&self.headers[patient], self.spec.today)
    }

    pub(crate) fn header(&self, patient: usize) -> &Header {
        &self.headers[patient]
    }
    pub(crate) fn unit(&self, idx: u8) -> &UnitSpec {
        &self.units[idx as usize]
    }
    pub(crate) fn unit_index(&self, hsa: &str) -> Option<u8> {
        self.units.iter().position(|u| u.hsa_id == hsa).map(|i| i as u8)
    }
    pub(crate) fn order(&self) -> &[u32] {
        &self.order
    }

    /// Document ids: `<tag>-<K|D|A|O><patient>-<seq>`; care contact ids `<tag>-VK<patient>-<seq>`.
    pub(crate) fn doc_id(&self, kind: DocKind, patient: u32, seq: usize) -> String {
        let mut w = Vec::with_capacity(24);
        self.write_doc_id(&mut w, kind, patient, seq);
        String::from_utf8(w).expect("ASCII")
    }
    pub(crate) fn care_contact_id(&self, patient: u32, seq: usize) -> String {
        let mut w = Vec::with_capacity(24);
        self.write_care_contact_id(&mut w, patient, seq);
        String::from_utf8(w).expect("ASCII")
    }
    pub(crate) fn write_doc_id(&self, w: &mut Vec<u8>, kind: DocKind, patient: u32, seq: usize) {
        write!(w, "{}-{}{}-{}", self.tag, kind.letter(), patient, seq).expect("write to Vec");
    }
    pub(crate) fn write_care_contact_id(&self, w: &mut Vec<u8>, patient: u32, seq: usize) {
        write!(w, "{}-VK{}-{}", self.tag, patient, seq).expect("write to Vec");
    }
    fn parse_doc_id(&self, patient: u32, id: &str) -> Option<(DocKind, u32)> {
        let rest = id.strip_prefix(self.tag.as_str())?.strip_prefix('-')?;
        let (kind, rest) = match rest.strip_prefix("VK") {
            Some(r) => (DocKind::Contact, r),
            None => {
                let k = match rest.as_bytes().first()? {
                    b'K' => DocKind::Contact,
                    b'D' => DocKind::Diagnosis,
                    b'A' => DocKind::Activity,
                    b'O' => DocKind::Observation,
                    _ => return None,
                };
                (k, &rest[1..])
            }
        };
        let (p, seq) = rest.split_once('-')?;
        (p.parse::<u32>().ok()? == patient).then_some(())?;
        Some((kind, seq.parse().ok()?))
    }

    /// The patient's journal as it stands now (generated, then every mutation replayed).
    pub(crate) fn plan(&self, patient: usize) -> Plan {
        let mut plan = self.derive_base(patient as u32);
        if let Some(edits) = self.overlays.read().expect("overlays").get(&(patient as u32)) {
            for e in edits {
                apply_edit(&mut plan, e);
            }
        }
        plan
    }

    pub(crate) fn has_overlay(&self, patient: u32) -> bool {
        self.overlays.read().expect("overlays").contains_key(&patient)
    }

    /// Units per engagement-index domain for a patient (from the summary unless mutated).
    pub(crate) fn domain_units(&self, patient: u32) -> [u16; 4] {
        if self.has_overlay(patient) {
            self.plan(patient as usize).domain_units()
        } else {
            self.headers[patient as usize].domain_units
        }
    }
    pub(crate) fn updated_secs(&self, patient: u32) -> i64 {
        self.updated[patient as usize].load(Ordering::Relaxed)
    }

    /// The ground truth (the generator's bookkeeping).
    pub fn truth(&self) -> super::Truth<'_> {
        super::Truth::new(self)
    }

    /// Listed patients: (personnummer, vårdcentral HSA id, listed since), sorted by id.
    pub fn listing(&self) -> Vec<(String, String, NaiveDate)> {
        self.order
            .iter()
            .filter_map(|i| {
                let h = &self.headers[*i as usize];
                h.listed.map(|(u, since)| (h.id_str().to_string(), self.units[u as usize].hsa_id.clone(), since))
            })
            .collect()
    }

    /// Write the listing file for the vårdcentraler: UTF-8, `;`-separated, header line
    /// `personnummer;vardcentral;listad_fran`, dates `YYYY-MM-DD`. Returns the number of rows.
    pub fn write_listing(&self, path: &Path) -> Result<usize> {
        let rows = self.listing();
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(f, "personnummer;vardcentral;listad_fran")?;
        for (id, vc, since) in &rows {
            writeln!(f, "{id};{vc};{}", since.format("%Y-%m-%d"))?;
        }
        f.flush()?;
        Ok(rows.len())
    }

    /// Write every patient's id, one per line (patient discovery from a file).
    pub fn write_patient_list(&self, path: &Path) -> Result<usize> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for h in &self.headers {
            writeln!(f, "{}", h.id_str())?;
        }
        f.flush()?;
        Ok(self.headers.len())
    }

    // -- mutations --------------------------------------------------------------------------

    /// Set (or add, if it is missing) one answer of a recorded SAR form.
    pub fn set_answer(&self, patient: usize, episode: usize, form: SarForm, term: &str, value: AnswerValue) -> Result<Mutation> {
        ensure!(form.has_term(term), "the term is not an answer of {}", form.name());
        ensure!(super::term_unit(term).is_some() == matches!(value, AnswerValue::Quantity(_)), "value kind does not match the term");
        self.mutate(patient, |plan, at| {
            ensure!(episode < plan.episodes.len(), "no such artros episode");
            ensure!(
                plan.observations.iter().any(|o| o.episode == Some(episode as u8) && o.forms & form.bit() != 0),
                "{} is not recorded for that episode; add a visit instead",
                form.name()
            );
            Ok(Edit::SetAnswer { episode, form, term: term.to_string(), value, at })
        })
    }

    /// Nullify one document (a contact alone, a diagnosis, an activity or an observation).
    pub fn nullify_document(&self, patient: usize, document_id: &str) -> Result<Mutation> {
        self.nullify(patient, document_id, false)
    }

    /// Nullify a care contact and everything documented at it (by document id or careContactId).
    pub fn nullify_visit(&self, patient: usize, contact_id: &str) -> Result<Mutation> {
        self.nullify(patient, contact_id, true)
    }

    fn nullify(&self, patient: usize, id: &str, cascade: bool) -> Result<Mutation> {
        let (kind, seq) = self.parse_doc_id(patient as u32, id).ok_or_else(|| anyhow!("not a document of this patient"))?;
        ensure!(!cascade || kind == DocKind::Contact, "only a care contact nullifies with what was documented at it");
        self.mutate(patient, |plan, _| {
            let n = match kind {
                DocKind::Contact => plan.contacts.len(),
                DocKind::Diagnosis => plan.diagnoses.len(),
                DocKind::Activity => plan.activities.len(),
                DocKind::Observation => plan.observations.len(),
            };
            ensure!((seq as usize) < n, "no such document");
            Ok(Edit::Nullify { kind, seq, cascade })
        })
    }

    /// Record a register objection (KVALREG-SPARR = JA) at the patient's latest care contact.
    pub fn add_objection(&self, patient: usize) -> Result<Mutation> {
        self.mutate(patient, |plan, _| {
            let contact = (0..plan.contacts.len())
                .filter(|c| !plan.contacts[*c].nullified)
                .max_by_key(|c| plan.contacts[*c].start)
                .ok_or_else(|| anyhow!("the patient has no care contact to record the objection at"))?;
            Ok(Edit::AddObjection { contact: contact as u32 })
        })
    }

    /// Add a care contact with its diagnoses, activities and observations.
    pub fn add_visit(&self, patient: usize, visit: VisitSpec) -> Result<Mutation> {
        let unit = self.unit_index(&visit.unit).ok_or_else(|| anyhow!("unknown unit"))?;
        let prof = Prof::from_code(&visit.profession).ok_or_else(|| anyhow!("unknown profession code"))?;
        for (term, value) in &visit.observations {
            ensure!(super::term_unit(term).is_none() || matches!(value, AnswerValue::Quantity(_)), "value kind does not match the term");
        }
        self.mutate(patient, |_, at| Ok(Edit::AddVisit { spec: visit, unit, prof, at }))
    }

    /// One mutation, atomically: `make` builds the edit from the patient's journal as it stands
    /// (and the mutation's local time); the edit is recorded with an update time strictly after
    /// every earlier one, and the documents it wrote or changed are named.
    fn mutate(&self, patient: usize, make: impl FnOnce(&Plan, NaiveDateTime) -> Result<Edit>) -> Result<Mutation> {
        if patient >= self.headers.len() {
            bail!("patient index out of range");
        }
        let mut overlays = self.overlays.write().expect("overlays");
        let mut plan = self.derive_base(patient as u32);
        for e in overlays.get(&(patient as u32)).into_iter().flatten() {
            apply_edit(&mut plan, e);
        }
        let mut clock = self.clock.lock().expect("clock");
        let at = Utc::now().timestamp().max(*clock + 1);
        let edit = make(&plan, local_of(at))?;
        let before = plan.clone();
        apply_edit(&mut plan, &edit);
        let p = patient as u32;
        let mut documents = Vec::new();
        documents.extend(changed(&before.contacts, &plan.contacts).map(|i| self.doc_id(DocKind::Contact, p, i)));
        documents.extend(changed(&before.diagnoses, &plan.diagnoses).map(|i| self.doc_id(DocKind::Diagnosis, p, i)));
        documents.extend(changed(&before.activities, &plan.activities).map(|i| self.doc_id(DocKind::Activity, p, i)));
        documents.extend(changed(&before.observations, &plan.observations).map(|i| self.doc_id(DocKind::Observation, p, i)));
        *clock = at;
        overlays.entry(p).or_default().push(edit);
        self.updated[patient].store(at, Ordering::Relaxed);
        Ok(Mutation { updated_at: ts(at), documents })
    }

    // -- generation -------------------------------------------------------------------------

    /// The generated journal of one patient, before mutations.
    pub(crate) fn derive_base(&self, patient: u32) -> Plan {
        let h = &self.headers[patient as usize];
        let spec = &self.spec;
        let mut r = Rng::new(mix(spec.seed ^ PLAN_STREAM, patient as u64));
        let today = spec.today;
        let start = today - TimeDelta::days(spec.history_days as i64);
        let n_vc = (self.units.len() - self.n_rehab as usize) as u64;
        let vc = match h.listed {
            Some((u, _)) => u,
            None => self.n_rehab + r.below(n_vc) as u8,
        };
        let mut b = Builder {
            today,
            start,
            home: h.home,
            vc,
            nrng: Rng::new(mix(spec.seed ^ NULL_STREAM, patient as u64)),
            null_share: spec.nullified_share,
            plan: Plan::default(),
        };
        let age = h.age_on(today);
        if spec.archetypes && (patient as usize) < archetype::COUNT {
            build_archetype(patient as usize, &mut b, &mut r, h);
        } else {
            build_random(&mut b, &mut r, h, age);
        }
        b.finish();
        let mut plan = b.plan;
        if spec.bad_item_share > 0.0 {
            apply_defects(&mut plan, &mut Rng::new(mix(spec.seed ^ DEFECT_STREAM, patient as u64)), spec.bad_item_share, h.kind);
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_stable() {
        // The stream must never change: sandboxes and benchmarks are compared across versions.
        let mut r = Rng::new(42);
        assert_eq!(r.next_u64(), 0xBDD7_3226_2FEB_6E95);
        assert!((0..1000).all(|_| r.below(7) < 7));
        assert!((0..1000).all(|_| (3..=9).contains(&r.range(3, 9))));
    }

    #[test]
    fn ids_are_valid_and_distinct() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let pop = Population::generate(&PopulationSpec::new(7, 400, today));
        for i in 0..pop.len() {
            let id = pop.patient_id(i);
            assert_eq!(pop.index_of(id.raw()), Some(i));
        }
        assert_eq!(pop.by_id.len(), pop.len());
    }
}
