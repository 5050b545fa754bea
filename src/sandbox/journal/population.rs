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

/// Indices of items that are new or differ.
fn changed<'a, T: PartialEq>(before: &'a [T], after: &'a [T]) -> impl Iterator<Item = usize> + 'a {
    (0..after.len()).filter(move |i| before.get(*i) != Some(&after[*i]))
}

fn ts(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).expect("in range")
}

pub(crate) fn identity(h: &Header, today: NaiveDate) -> crate::model::PatientId {
    match h.kind {
        IdKind::Reserve => crate::model::PatientId::parse_reserve(h.id_str(), super::OID_RESERVE_VARMLAND),
        _ => crate::model::PatientId::parse_national(h.id_str(), today),
    }
    .expect("generated identities are valid")
}

/// Apply one edit to a plan.
fn apply_edit(plan: &mut Plan, e: &Edit) {
    match e {
        Edit::SetAnswer { episode, form, term, value, at } => {
            let ep = *episode as u8;
            let existing = plan
                .observations
                .iter()
                .enumerate()
                .filter(|(_, o)| o.episode == Some(ep) && o.forms & form.bit() != 0 && o.term == term.as_str() && !o.nullified)
                .map(|(i, _)| i)
                .next_back();
            match existing {
                Some(i) => {
                    let o = &mut plan.observations[i];
                    o.value = value.clone();
                    o.registered = Some(*at);
                }
                None => {
                    // `set_answer` checked that the form is recorded.
                    let Some(contact) = plan.observations.iter().find(|o| o.episode == Some(ep) && o.forms & form.bit() != 0).map(|o| o.contact) else {
                        return;
                    };
                    // An answer both first-visit forms read is one observation for both.
                    let forms = match form {
                        SarForm::FVPat | SarForm::FVPT if SarForm::FVPat.has_term(term) && SarForm::FVPT.has_term(term) => {
                            SarForm::FVPat.bit() | SarForm::FVPT.bit()
                        }
                        _ => form.bit(),
                    };
                    plan.observations.push(Obs {
                        contact,
                        term: Cow::Owned(term.clone()),
                        value: value.clone(),
                        episode: Some(ep),
                        forms,
                        nullified: false,
                        defect: None,
                        registered: Some(*at),
                    });
                }
            }
        }
        Edit::Nullify { kind, seq, cascade } => {
            let s = *seq as usize;
            match kind {
                DocKind::Contact => {
                    plan.contacts[s].nullified = true;
                    if *cascade {
                        plan.diagnoses.iter_mut().filter(|d| d.contact == *seq).for_each(|d| d.nullified = true);
                        plan.activities.iter_mut().filter(|d| d.contact == *seq).for_each(|d| d.nullified = true);
                        plan.observations.iter_mut().filter(|d| d.contact == *seq).for_each(|d| d.nullified = true);
                    }
                }
                DocKind::Diagnosis => plan.diagnoses[s].nullified = true,
                DocKind::Activity => plan.activities[s].nullified = true,
                DocKind::Observation => plan.observations[s].nullified = true,
            }
        }
        Edit::AddObjection { contact } => {
            plan.observations.push(Obs {
                contact: *contact,
                term: Cow::Borrowed(obs::REGISTER_OBJECTION),
                value: AnswerValue::coded(answer::YES),
                episode: None,
                forms: 0,
                nullified: false,
                defect: None,
                registered: None,
            });
        }
        Edit::AddVisit { spec, unit, prof, at } => {
            let c = plan.contacts.len() as u32;
            let start = spec.date.and_time(NaiveTime::from_hms_opt(10, 0, 0).expect("valid"));
            plan.contacts.push(Contact {
                start,
                minutes: 30,
                unit: *unit,
                phone: spec.phone,
                prof: *prof,
                staff: 1,
                registered: (*at).max(start + TimeDelta::minutes(30)),
                nullified: false,
                defect: None,
            });
            for (k, code) in spec.diagnoses.iter().enumerate() {
                plan.diagnoses.push(Dx { contact: c, code: Cow::Owned(code.clone()), main: k == 0, chronic: false, nullified: false, defect: None });
            }
            for a in &spec.activities {
                plan.activities.push(Act { contact: c, code: Cow::Owned(a.code.clone()), system: Cow::Owned(a.system.clone()), nullified: false, defect: None });
            }
            for (term, value) in &spec.observations {
                plan.observations.push(Obs {
                    contact: c,
                    term: Cow::Owned(term.clone()),
                    value: value.clone(),
                    episode: None,
                    forms: 0,
                    nullified: false,
                    defect: None,
                    registered: None,
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Headers: identity, sex, age, listing.

/// (female, age, kind, listed) of the archetypes.
fn archetype_header(i: usize) -> (bool, u32, IdKind, bool) {
    use archetype::*;
    match i {
        ARTROS_KNEE_COMPLETE => (true, 67, IdKind::Personnummer, true),
        ARTROS_HIP_AWAITING_Y1 => (false, 71, IdKind::Personnummer, true),
        ARTROS_DROPOUT_AFTER_SCHOOL => (true, 58, IdKind::Personnummer, true),
        ARTROS_M3PAT_INCOMPLETE => (true, 74, IdKind::Personnummer, true),
        ARTROS_OBJECTION => (true, 63, IdKind::Personnummer, true),
        ARTROS_SAMORDNINGSNUMMER => (true, 61, IdKind::Samordningsnummer, false),
        ARTROS_RESERVE_NUMBER => (false, 69, IdKind::Reserve, false),
        ARTROS_M3_NULLIFIED => (false, 66, IdKind::Personnummer, true),
        KOL => (false, 72, IdKind::Personnummer, true),
        STROKE => (true, 78, IdKind::Personnummer, true),
        TIA => (false, 69, IdKind::Personnummer, true),
        HEART_FAILURE => (false, 81, IdKind::Personnummer, true),
        OSTEOPOROSIS => (true, 76, IdKind::Personnummer, true),
        INCONTINENCE => (true, 45, IdKind::Personnummer, true),
        DEPRESSION => (true, 38, IdKind::Personnummer, true),
        STRESS => (true, 42, IdKind::Personnummer, true),
        FREQUENT_ATTENDER => (true, 55, IdKind::Personnummer, true),
        MUSCULOSKELETAL => (false, 47, IdKind::Personnummer, true),
        ARTROS_FVPT_INCOMPLETE => (true, 64, IdKind::Personnummer, true),
        ARTROS_Y1_INCOMPLETE => (false, 59, IdKind::Personnummer, true),
        ARTROS_RECENT => (true, 70, IdKind::Personnummer, true),
        UNLISTED => (false, 33, IdKind::Personnummer, false),
        _ => sar_cases::header(i),
    }
}

fn draw_header(spec: &PopulationSpec, i: u32, n_rehab: u8, seen: &mut HashSet<[u8; 12]>) -> Header {
    let mut r = Rng::new(mix(spec.seed ^ HEADER_STREAM, i as u64));
    let today = spec.today;
    let (female, age, kind, listed) = if spec.archetypes && (i as usize) < archetype::COUNT {
        archetype_header(i as usize)
    } else {
        let female = r.chance(0.62);
        // Physiotherapy patients: women over 50 are the largest group.
        let band = r.weighted(&[12.0, 18.0, 30.0, 30.0, 10.0]);
        let (lo, hi) = [(18, 34), (35, 49), (50, 64), (65, 79), (80, 95)][band];
        let age = r.range(lo, hi) as u32;
        let kind = match r.weighted(&[994.0, 4.0, 2.0]) {
            0 => IdKind::Personnummer,
            1 => IdKind::Samordningsnummer,
            _ => IdKind::Reserve,
        };
        // Only folkbokförda (personnummer) can be listed.
        let listed = kind == IdKind::Personnummer && r.chance(0.93);
        (female, age, kind, listed)
    };
    let n_vc = (spec.rehab_units.len() + spec.vc_units.len()) as u64 - n_rehab as u64;
    let home = r.below(n_rehab as u64) as u8;
    let listed_unit = n_rehab + r.below(n_vc) as u8;
    let mut attempt = 0u64;
    loop {
        let mut ir = Rng::new(mix(spec.seed ^ HEADER_STREAM ^ 0x1d, ((i as u64) << 16) | attempt));
        let birth = {
            let base = NaiveDate::from_ymd_opt(today.year() - age as i32, today.month(), today.day().min(28)).expect("valid date");
            base - TimeDelta::days(ir.range(1, 364))
        };
        let id = make_id(&mut ir, birth, female, kind);
        if seen.insert(id) {
            let listed = listed.then(|| {
                let adult = NaiveDate::from_ymd_opt(birth.year() + 18, birth.month(), birth.day().min(28)).expect("valid date");
                let since = (today - TimeDelta::days(ir.range(30, 3650))).max(adult);
                (listed_unit, since)
            });
            return Header { id, kind, female, birth, listed, home, first: 0, last: 0, domain_units: [0; 4] };
        }
        attempt += 1;
    }
}

fn make_id(r: &mut Rng, birth: NaiveDate, female: bool, kind: IdKind) -> [u8; 12] {
    let yyyy = birth.year() as u32;
    let mm = birth.month();
    let dd = birth.day() + if kind == IdKind::Samordningsnummer { 60 } else { 0 };
    let mut s = format!("{yyyy:04}{mm:02}{dd:02}");
    match kind {
        IdKind::Reserve => {
            // Värmland's reserve format yyyymmddSNNC (research/sources.md §1.8).
            let nn = r.range(10, 99);
            s.push('S');
            s.push_str(&format!("{nn:02}"));
            let digits: Vec<u8> = format!("{:02}{mm:02}{:02}{nn:02}", yyyy % 100, birth.day()).bytes().map(|b| b - b'0').collect();
            s.push((b'0' + luhn_check_digit(&digits)) as char);
        }
        _ => {
            // Serial NNN: the last of the three is even for women.
            let a = r.range(0, 99) as u32;
            let mut b = r.range(0, 4) as u32 * 2;
            if !female {
                b += 1;
            }
            if a == 0 && b == 0 {
                b = 2;
            }
            s.push_str(&format!("{a:02}{b}"));
            let digits: Vec<u8> = s[2..].bytes().map(|c| c - b'0').collect();
            s.push((b'0' + luhn_check_digit(&digits)) as char);
        }
    }
    s.as_bytes().try_into().expect("12 characters")
}

// ---------------------------------------------------------------------------------------------
// The builder: contacts and what is documented at them.

struct Builder {
    today: NaiveDate,
    start: NaiveDate,
    home: u8,
    vc: u8,
    /// Nullification draws come from their own stream, so the share does not move the rest.
    nrng: Rng,
    null_share: f64,
    plan: Plan,
}

fn workday(d: NaiveDate) -> NaiveDate {
    match d.weekday() {
        Weekday::Sat => d + TimeDelta::days(2),
        Weekday::Sun => d + TimeDelta::days(1),
        _ => d,
    }
}

fn days(n: i64) -> TimeDelta {
    TimeDelta::days(n)
}

/// The shipped SAR occasion windows, days after the first visit, inclusive
/// (connectors/artrosregistret/connector.toml): the generator's follow-up visits stay inside.
pub(crate) const M3_WINDOW: (i64, i64) = (91, 152);
pub(crate) const Y1_WINDOW: (i64, i64) = (365, 540);

/// The weekday `offset` days after `fv`, kept inside `window`: a weekend day moves to Monday,
/// or back to Friday where Monday would be past the window's end (a visit there would be no
/// follow-up for the register).
fn follow_up_day(fv: NaiveDate, offset: i64, window: (i64, i64)) -> NaiveDate {
    let d = workday(fv + days(offset));
    if (d - fv).num_days() <= window.1 {
        return d;
    }
    let mut d = fv + days(offset);
    while matches!(d.weekday(), Weekday::Sat | Weekday::Sun) {
        d -= days(1);
    }
    d
}

impl Builder {
    fn random_day(&self, r: &mut Rng) -> NaiveDate {
        self.start + days(r.range(0, (self.today - self.start).num_days()))
    }

    /// A contact on `date` (moved to a weekday); `None` outside the history window.
    #[allow(clippy::too_many_arguments)]
    fn contact(&mut self, r: &mut Rng, date: NaiveDate, unit: u8, prof: Prof, phone: bool, minutes: u16, nullable: bool) -> Option<u32> {
        let date = workday(date);
        if date < self.start || date > self.today {
            return None;
        }
        let minutes = if phone { 15 } else { minutes };
        let start = date.and_time(NaiveTime::from_hms_opt(8, 0, 0).expect("valid")) + TimeDelta::minutes(15 * r.range(0, 32));
        let registered = start + TimeDelta::minutes(minutes as i64 + r.range(5, 120));
        let nullified = nullable && self.nrng.chance(self.null_share);
        self.plan.contacts.push(Contact { start, minutes, unit, phone, prof, staff: r.range(1, 6) as u8, registered, nullified, defect: None });
        Some(self.plan.contacts.len() as u32 - 1)
    }

    /// A visit that counts (not nullified) or `None`.
    fn visit(&mut self, r: &mut Rng, date: NaiveDate, unit: u8, prof: Prof, phone: bool, minutes: u16) -> Option<u32> {
        let c = self.contact(r, date, unit, prof, phone, minutes, true)?;
        (!self.plan.contacts[c as usize].nullified).then_some(c)
    }

    fn nullified(&self, c: u32) -> bool {
        self.plan.contacts[c as usize].nullified
    }

    fn dx(&mut self, c: u32, code: &'static str, main: bool, chronic: bool) {
        let nullified = self.nullified(c);
        self.plan.diagnoses.push(Dx { contact: c, code: Cow::Borrowed(code), main, chronic, nullified, defect: None });
    }

    fn act(&mut self, c: u32, code: &'static str, system: &'static str) {
        let nullified = self.nullified(c);
        self.plan.activities.push(Act { contact: c, code: Cow::Borrowed(code), system: Cow::Borrowed(system), nullified, defect: None });
    }

    fn obs(&mut self, c: u32, term: &'static str, value: AnswerValue, episode: Option<u8>, forms: u8, nullified: bool) {
        let nullified = nullified || self.nullified(c);
        self.plan.observations.push(Obs { contact: c, term: Cow::Borrowed(term), value, episode, forms, nullified, defect: None, registered: None });
    }

    /// A visit with every document at it made nullified afterwards.
    fn nullify_contact(&mut self, c: u32) {
        apply_edit(&mut self.plan, &Edit::Nullify { kind: DocKind::Contact, seq: c, cascade: true });
    }

    /// Write a form's answers at contact `c`. Optional answers are sometimes left out; `drop`
    /// leaves out one (mandatory) answer on purpose. Now and then an answer is first entered
    /// wrong, nullified, and entered again.
    fn form(&mut self, r: &mut Rng, c: u32, ep: u8, forms: u8, answers: Vec<(&'static str, AnswerValue)>, drop: Option<&'static str>) {
        for (term, value) in answers {
            let mandatory = SarForm::ALL.iter().any(|f| forms & f.bit() != 0 && f.mandatory().any(|t| t == term));
            if Some(term) == drop || (!mandatory && r.chance(0.12)) {
                continue;
            }
            if self.nrng.chance(self.null_share * 2.0) {
                self.obs(c, term, wrong(&value), Some(ep), forms, true);
            }
            self.obs(c, term, value, Some(ep), forms, false);
        }
    }

    /// A series of sessions (`n` at most, `every` days apart) with an activity and maybe a
    /// diagnosis; returns how many took place (not nullified).
    #[allow(clippy::too_many_arguments)]
    fn series(
        &mut self,
        r: &mut Rng,
        first: NaiveDate,
        n: (i64, i64),
        every: i64,
        unit: u8,
        prof: Prof,
        activity: Option<&'static str>,
        dx: Option<&'static str>,
    ) -> u32 {
        let mut held = 0;
        for k in 0..r.range(n.0, n.1) {
            if !r.chance(0.85) {
                continue;
            }
            if let Some(c) = self.contact(r, first + days(k * every), unit, prof, false, 45, true) {
                if let Some(a) = activity {
                    self.act(c, a, LOCAL_TERMS);
                }
                if let Some(d) = dx {
                    if r.chance(0.6) {
                        self.dx(c, d, true, false);
                    }
                }
                if !self.nullified(c) {
                    held += 1;
                }
            }
        }
        held
    }

    /// Sort contacts by time and renumber every reference, so sequence numbers follow time.
    fn finish(&mut self) {
        let p = &mut self.plan;
        let mut idx: Vec<u32> = (0..p.contacts.len() as u32).collect();
        idx.sort_by_key(|i| (p.contacts[*i as usize].start, *i));
        let mut new_of = vec![0u32; idx.len()];
        for (new, old) in idx.iter().enumerate() {
            new_of[*old as usize] = new as u32;
        }
        let old = std::mem::take(&mut p.contacts);
        p.contacts = idx.iter().map(|i| old[*i as usize].clone()).collect();
        for d in &mut p.diagnoses {
            d.contact = new_of[d.contact as usize];
        }
        for a in &mut p.activities {
            a.contact = new_of[a.contact as usize];
        }
        for o in &mut p.observations {
            o.contact = new_of[o.contact as usize];
        }
        for e in &mut p.episodes {
            e.fv_contact = new_of[e.fv_contact as usize];
        }
        p.diagnoses.sort_by_key(|d| d.contact);
        p.activities.sort_by_key(|d| d.contact);
        p.observations.sort_by_key(|d| d.contact);
    }
}

/// A plausible wrong first entry for an answer that is then corrected.
fn wrong(v: &AnswerValue) -> AnswerValue {
    match v {
        AnswerValue::Quantity(q) => AnswerValue::Quantity(q + 1.0),
        AnswerValue::Code(c) => AnswerValue::coded(match c.as_ref() {
            answer::YES => answer::NO,
            answer::NO => answer::YES,
            "1" => "2",
            "2" => "3",
            "3" => "4",
            "4" => "5",
            "5" => "4",
            answer::LEFT => answer::RIGHT,
            answer::RIGHT => answer::LEFT,
            answer::BOTH => answer::LEFT,
            answer::HIP => answer::KNEE,
            _ => answer::HIP,
        }),
    }
}

fn yes_no(b: bool) -> AnswerValue {
    AnswerValue::coded(if b { answer::YES } else { answer::NO })
}

fn level(n: i64) -> AnswerValue {
    AnswerValue::coded(answer::LEVELS[(n.clamp(1, 5) - 1) as usize])
}

fn q(v: i64) -> AnswerValue {
    AnswerValue::Quantity(v as f64)
}

// ---------------------------------------------------------------------------------------------
// Artros: first visit → artrosskola → supervised exercise → 3 months → 1 year.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    AfterSchool,
    AfterExercise,
    AfterM3,
    Never,
}

struct ArtrosCourse {
    joint: Option<Joint>,
    /// First visit this many days before today (else anywhere in the window).
    fv_days_ago: Option<i64>,
    stop: Option<Stop>,
    /// Leave out this mandatory answer of this form.
    drop: Option<(SarForm, &'static str)>,
    objection_at_m3: bool,
    nullify_m3: bool,
    /// Every form recorded and complete, nothing left to chance (archetypes).
    clean: bool,
}

impl ArtrosCourse {
    fn random() -> ArtrosCourse {
        ArtrosCourse { joint: None, fv_days_ago: None, stop: None, drop: None, objection_at_m3: false, nullify_m3: false, clean: false }
    }
    fn fixed(joint: Joint, fv_days_ago: i64) -> ArtrosCourse {
        ArtrosCourse { joint: Some(joint), fv_days_ago: Some(fv_days_ago), stop: Some(Stop::Never), drop: None, objection_at_m3: false, nullify_m3: false, clean: true }
    }
}

/// The patient's answers at one occasion, before anything is left out.
struct Proms {
    nrs: i64,
    eq: [i64; 5],
    vas: i64,
    ases: (i64, i64),
    wants_surgery: bool,
    fear: bool,
    activity_min: i64,
    exercise_min: i64,
    medication: bool,
    sick_leave: bool,
}

impl Proms {
    fn baseline(r: &mut Rng, joint: Joint, age: u32) -> Proms {
        Proms {
            nrs: r.range(3, 8),
            eq: [r.range(1, 4), r.range(1, 2), r.range(1, 4), r.range(2, 4), r.range(1, 3)],
            vas: r.range(8, 17) * 5,
            ases: (r.range(3, 8) * 10, r.range(3, 8) * 10),
            wants_surgery: r.chance(match joint {
                Joint::Hip => 0.25,
                Joint::Knee => 0.2,
                Joint::Hand => 0.05,
            }),
            fear: r.chance(0.35),
            activity_min: r.range(3, 30) * 10,
            exercise_min: r.range(0, 12) * 10,
            medication: r.chance(0.55),
            sick_leave: age < 65 && r.chance(0.12),
        }
    }

    /// After treatment: mostly better, sometimes not.
    fn follow_up(&self, r: &mut Rng) -> Proms {
        Proms {
            nrs: (self.nrs - r.range(-1, 4)).clamp(0, 10),
            eq: self.eq.map(|l| (l - r.range(-1, 1).max(0)).clamp(1, 5)),
            vas: (self.vas + r.range(-2, 5) * 5).clamp(0, 100),
            ases: ((self.ases.0 / 10 + r.range(-1, 2)).clamp(1, 10) * 10, (self.ases.1 / 10 + r.range(-1, 2)).clamp(1, 10) * 10),
            wants_surgery: self.wants_surgery && r.chance(0.7),
            fear: self.fear && r.chance(0.5),
            activity_min: (self.activity_min + r.range(-3, 12) * 10).clamp(0, 10080),
            exercise_min: (self.exercise_min + r.range(-2, 9) * 10).clamp(0, 10080),
            medication: self.medication && r.chance(0.7),
            sick_leave: self.sick_leave && r.chance(0.4),
        }
    }

    fn answers(&self) -> Vec<(&'static str, AnswerValue)> {
        vec![
            (obs::PAIN_NRS, q(self.nrs)),
            (obs::PAIN_FREQUENCY, level((self.nrs / 2).max(1))),
            (obs::EQ5D_MOBILITY, level(self.eq[0])),
            (obs::EQ5D_SELFCARE, level(self.eq[1])),
            (obs::EQ5D_ACTIVITIES, level(self.eq[2])),
            (obs::EQ5D_PAIN, level(self.eq[3])),
            (obs::EQ5D_ANXIETY, level(self.eq[4])),
            (obs::EQ_VAS, q(self.vas)),
            (obs::ASES_PAIN, q(self.ases.0)),
            (obs::ASES_OTHER, q(self.ases.1)),
            (obs::WANTS_SURGERY, yes_no(self.wants_surgery)),
            (obs::FEAR_OF_MOVEMENT, yes_no(self.fear)),
            (obs::ACTIVITY_MINUTES, q(self.activity_min)),
            (obs::EXERCISE_MINUTES, q(self.exercise_min)),
            (obs::OA_MEDICATION, yes_no(self.medication)),
            (obs::SICK_LEAVE, yes_no(self.sick_leave)),
        ]
    }
}

/// One mandatory answer a hurried physiotherapist may leave out of a form.
fn droppable(form: SarForm, r: &mut Rng) -> &'static str {
    match form {
        SarForm::FVPT => obs::SIDE,
        SarForm::M3PT => r.pick(&[obs::EDUCATION_SESSIONS, obs::SUPERVISED_EXERCISE_SESSIONS]),
        _ => r.pick(&[obs::PAIN_NRS, obs::EQ_VAS, obs::EQ5D_MOBILITY, obs::EQ5D_ANXIETY, obs::WANTS_SURGERY]),
    }
}

fn course_artros(b: &mut Builder, r: &mut Rng, h: &Header, p: ArtrosCourse) {
    let age = h.age_on(b.today);
    let joint = p.joint.unwrap_or_else(|| [Joint::Knee, Joint::Hip, Joint::Hand][r.weighted(&[55.0, 35.0, 10.0])]);
    let side = [Side::Right, Side::Left, Side::Both][r.weighted(&[40.0, 35.0, 25.0])];
    let icd = match (joint, side) {
        (Joint::Hip, Side::Both) => "M16.0",
        (Joint::Hip, _) => r.pick(&["M16.1", "M16.1", "M16.1", "M16.9"]),
        (Joint::Knee, Side::Both) => "M17.0",
        (Joint::Knee, _) => r.pick(&["M17.1", "M17.1", "M17.1", "M17.9"]),
        (Joint::Hand, Side::Both) => "M18.0",
        (Joint::Hand, _) => r.pick(&["M18.1", "M18.9"]),
    };
    let unit = b.home;
    let fv = match p.fv_days_ago {
        Some(d) => b.today - days(d),
        None => b.random_day(r),
    };
    let stop = p.stop.unwrap_or_else(|| [Stop::AfterSchool, Stop::AfterExercise, Stop::AfterM3, Stop::Never][r.weighted(&[10.0, 7.0, 15.0, 68.0])]);
    let drop_for = |form: SarForm, r: &mut Rng| -> Option<&'static str> {
        match p.drop {
            Some((f, t)) if f == form => Some(t),
            _ if p.clean => None,
            _ => r.chance(0.05).then(|| droppable(form, r)),
        }
    };

    // Often a physician saw the joint first (then the patient did not come directly).
    let prior = r.chance(0.45);
    if prior {
        let before = days(r.range(7, 60));
        if let Some(c) = b.visit(r, fv - before, b.vc, Prof::Physician, false, 20) {
            b.dx(c, icd, true, false);
        }
    }
    let Some(fvc) = b.contact(r, fv, unit, Prof::Physio, false, 60, false) else { return };
    let fv = b.plan.contacts[fvc as usize].start.date();
    b.dx(fvc, icd, true, false);
    let ep = b.plan.episodes.len() as u8;
    b.plan.episodes.push(Episode { joint, side, icd, unit, fv_contact: fvc });
    let mut contacts = vec![fvc];

    // First visit: the joint and side (both first-visit forms read them), the patient's
    // answers, the physiotherapist's assessment.
    let both_fv = SarForm::FVPat.bit() | SarForm::FVPT.bit();
    let fvpat_drop = drop_for(SarForm::FVPat, r);
    let fvpt_drop = drop_for(SarForm::FVPT, r);
    let shared = vec![(obs::MAIN_JOINT, AnswerValue::coded(joint.code())), (obs::SIDE, AnswerValue::coded(side.code()))];
    b.form(r, fvc, ep, both_fv, shared, fvpat_drop.filter(|t| *t == obs::MAIN_JOINT).or(fvpt_drop));
    let base = Proms::baseline(r, joint, age);
    let mut fvpat = base.answers();
    let (height, weight) = if h.female { (r.range(152, 178), r.range(52, 105)) } else { (r.range(166, 194), r.range(64, 125)) };
    fvpat.extend([
        (obs::WALKING_DIFFICULTY_OTHER, yes_no(r.chance(0.15))),
        (obs::HEIGHT, q(height)),
        (obs::WEIGHT, q(weight)),
        (obs::ON_WAITING_LIST, yes_no(base.wants_surgery && r.chance(0.2))),
        (obs::NO_PRIOR_MEDICAL_HELP, yes_no(!prior && r.chance(0.6))),
    ]);
    b.form(r, fvc, ep, SarForm::FVPat.bit(), fvpat, fvpat_drop);
    let fvpt = vec![
        (obs::XRAY_DONE, yes_no(r.chance(0.5))),
        (obs::CHAIR_STAND_30S, q(r.range(6, 16))),
        (obs::WALK_40M, AnswerValue::Quantity(r.range(200, 450) as f64 / 10.0)),
    ];
    b.form(r, fvc, ep, SarForm::FVPT.bit(), fvpt, fvpt_drop);

    // Artrosskola: three theory sessions a week apart.
    let school = fv + days(r.range(7, 21));
    let m3_day = follow_up_day(fv, if p.clean || r.chance(0.8) { r.range(95, 125) } else { r.range(M3_WINDOW.0, M3_WINDOW.1) }, M3_WINDOW);
    let mut school_held = 0;
    for k in 0..3 {
        if !p.clean && !r.chance(0.9) {
            continue;
        }
        if let Some(c) = b.contact(r, school + days(7 * k), unit, Prof::Physio, false, 90, !p.clean) {
            b.act(c, act::ARTROSSKOLA, LOCAL_TERMS);
            if r.chance(0.5) {
                b.dx(c, icd, true, false);
            }
            if !b.nullified(c) {
                school_held += 1;
                contacts.push(c);
            }
        }
    }
    if stop == Stop::AfterSchool {
        finish_artros(b, r, &contacts, &p, None);
        return;
    }

    // Supervised exercise: twice a week for six weeks, before the 3-month visit.
    let mut exercise_held = 0;
    if p.clean || !r.chance(0.12) {
        let ex = school + days(14 + r.range(3, 10));
        for k in 0..12 {
            let d = workday(ex + days(7 * (k / 2) + 3 * (k % 2)));
            if d >= m3_day || (!p.clean && !r.chance(0.8)) {
                continue;
            }
            if let Some(c) = b.contact(r, d, unit, Prof::Physio, false, 60, !p.clean) {
                b.act(c, act::SUPERVISED_EXERCISE, LOCAL_TERMS);
                if r.chance(0.3) {
                    b.dx(c, icd, true, false);
                }
                if !b.nullified(c) {
                    exercise_held += 1;
                    contacts.push(c);
                }
            }
        }
    }
    if stop == Stop::AfterExercise {
        finish_artros(b, r, &contacts, &p, None);
        return;
    }

    // Three months: the patient's follow-up and the physiotherapist's count of sessions.
    let Some(m3c) = b.contact(r, m3_day, unit, Prof::Physio, false, 45, false) else {
        finish_artros(b, r, &contacts, &p, None);
        return;
    };
    contacts.push(m3c);
    b.dx(m3c, icd, true, false);
    b.obs(m3c, obs::FOLLOW_UP_MARK, AnswerValue::coded(answer::YES), None, 0, false);
    let m3 = base.follow_up(r);
    let mut m3pat = m3.answers();
    m3pat.extend([(obs::SATISFACTION, level(r.range(3, 5))), (obs::USES_KNOWLEDGE, level(r.range(1, 4)))]);
    let drop = drop_for(SarForm::M3Pat, r);
    b.form(r, m3c, ep, SarForm::M3Pat.bit(), m3pat, drop);
    if p.clean || r.chance(0.95) {
        let m3pt = vec![
            (obs::EDUCATION_SESSIONS, q(school_held)),
            (obs::SUPERVISED_EXERCISE_SESSIONS, q(exercise_held)),
            (obs::EXERCISE_ADHERENCE, level(if exercise_held >= 9 { 1 } else if exercise_held >= 5 { 2 } else { 3 })),
        ];
        let drop = drop_for(SarForm::M3PT, r);
        b.form(r, m3c, ep, SarForm::M3PT.bit(), m3pt, drop);
    }
    if p.nullify_m3 {
        b.nullify_contact(m3c);
    }
    if stop == Stop::AfterM3 {
        finish_artros(b, r, &contacts, &p, Some(m3c));
        return;
    }

    // One year: the patient answers once more, often by phone.
    let y1_day = follow_up_day(fv, if p.clean || r.chance(0.8) { r.range(370, 400) } else { r.range(Y1_WINDOW.0, Y1_WINDOW.1) }, Y1_WINDOW);
    let phone = r.chance(0.4);
    if let Some(y1c) = b.contact(r, y1_day, unit, Prof::Physio, phone, 30, false) {
        contacts.push(y1c);
        b.obs(y1c, obs::FOLLOW_UP_MARK, AnswerValue::coded(answer::YES), None, 0, false);
        let y1 = base.follow_up(r);
        let mut y1pat = y1.answers();
        y1pat.extend([(obs::SATISFACTION, level(r.range(2, 5))), (obs::USES_KNOWLEDGE, level(r.range(1, 5)))]);
        let drop = drop_for(SarForm::Y1Pat, r);
        b.form(r, y1c, ep, SarForm::Y1Pat.bit(), y1pat, drop);
    }
    finish_artros(b, r, &contacts, &p, Some(m3c));
}

/// A register objection: where the course asks for one, or now and then at random.
fn finish_artros(b: &mut Builder, r: &mut Rng, contacts: &[u32], p: &ArtrosCourse, m3: Option<u32>) {
    let at = if p.objection_at_m3 {
        m3
    } else if !p.clean && r.chance(0.03) {
        Some(r.pick(contacts))
    } else {
        None
    };
    if let Some(c) = at {
        b.obs(c, obs::REGISTER_OBJECTION, AnswerValue::coded(answer::YES), None, 0, false);
    }
}

// ---------------------------------------------------------------------------------------------
// PVK conditions.

fn vc_visits(b: &mut Builder, r: &mut Rng, n: (i64, i64), prof: Prof, code: &'static str, chronic: bool) {
    for _ in 0..r.range(n.0, n.1) {
        let d = b.random_day(r);
        let phone = r.chance(0.2);
        if let Some(c) = b.contact(r, d, b.vc, prof, phone, 20, true) {
            b.dx(c, code, true, chronic);
        }
    }
}

fn course_musculoskeletal(b: &mut Builder, r: &mut Rng, code: Option<&'static str>) {
    let code = code.unwrap_or_else(|| r.pick(&["M54.5", "M54.5", "M54.2", "M75.1", "M75.4", "M25.5", "M77.1", "M79.1", "S93.4", "M54.4", "M53.1", "M65.4"]));
    let prof = if matches!(code, "M65.4" | "M77.1") && r.chance(0.5) { Prof::OccTherapist } else { Prof::Physio };
    let d0 = b.random_day(r);
    if r.chance(0.2) {
        let before = days(r.range(3, 30));
        if let Some(c) = b.visit(r, d0 - before, b.vc, Prof::Physician, false, 20) {
            b.dx(c, code, true, false);
        }
    }
    let Some(c) = b.contact(r, d0, b.home, prof, false, 45, true) else { return };
    b.dx(c, code, true, false);
    let mut d = d0;
    for _ in 0..r.range(1, 7) {
        d += days(r.range(5, 21));
        let phone = r.chance(0.25);
        if let Some(c) = b.contact(r, d, b.home, prof, phone, 30, true) {
            if r.chance(0.65) {
                b.dx(c, code, true, false);
            }
            if !phone && r.chance(0.3) {
                b.act(c, act::SUPERVISED_EXERCISE, LOCAL_TERMS);
            }
        }
    }
}

fn course_kol(b: &mut Builder, r: &mut Rng, full: bool) {
    let code = if r.chance(0.85) { "J44.9" } else { "J44.1" };
    vc_visits(b, r, (1, 3), Prof::Physician, code, true);
    vc_visits(b, r, (1, 2), Prof::Nurse, code, true);
    if !(full || r.chance(0.55)) {
        return;
    }
    let unit = if r.chance(0.3) { b.vc } else { b.home };
    let d0 = b.random_day(r);
    if let Some(c) = b.visit(r, d0, unit, Prof::Physio, false, 60) {
        b.act(c, act::SIX_MINUTE_WALK_TEST, LOCAL_TERMS);
        b.obs(c, obs::SIX_MINUTE_WALK, q(r.range(50, 110) * 5), None, 0, false);
        b.dx(c, "J44.9", true, true);
    }
    let prof = if r.chance(0.5) { Prof::Nurse } else { Prof::Physio };
    b.series(r, d0 + days(7), (1, 2), 7, unit, prof, Some(act::PATIENT_EDUCATION_KOL), Some("J44.9"));
    if full || r.chance(0.35) {
        b.series(r, d0 + days(10), (1, 1), 7, unit, Prof::OccTherapist, Some(act::ENERGY_CONSERVATION), Some("J44.9"));
    }
    if full || r.chance(0.45) {
        let held = b.series(r, d0 + days(21), (8, 16), 3, unit, Prof::Physio, Some(act::SUPERVISED_EXERCISE), Some("J44.9"));
        if held > 4 && (full || r.chance(0.5)) {
            if let Some(c) = b.visit(r, d0 + days(80), unit, Prof::Physio, false, 60) {
                b.act(c, act::SIX_MINUTE_WALK_TEST, LOCAL_TERMS);
                b.obs(c, obs::SIX_MINUTE_WALK, q(r.range(60, 120) * 5), None, 0, false);
            }
        }
    }
}

fn course_stroke(b: &mut Builder, r: &mut Rng, full: bool) {
    let code = ["I63.9", "I61.9", "I64.9"][r.weighted(&[70.0, 15.0, 15.0])];
    vc_visits(b, r, (1, 2), Prof::Physician, code, true);
    vc_visits(b, r, (1, 2), Prof::Nurse, code, true);
    if full || r.chance(0.7) {
        let d0 = b.random_day(r);
        let a = if r.chance(0.5) { act::BALANCE_TRAINING } else { act::SUPERVISED_EXERCISE };
        b.series(r, d0, (3, 10), 7, b.home, Prof::Physio, Some(a), Some(code));
        b.series(r, d0 + days(3), (1, 4), 10, b.home, Prof::OccTherapist, None, Some(code));
    }
}

fn course_tia(b: &mut Builder, r: &mut Rng) {
    vc_visits(b, r, (1, 2), Prof::Physician, "G45.9", false);
    vc_visits(b, r, (0, 1), Prof::Nurse, "G45.9", false);
    if r.chance(0.15) {
        let d0 = b.random_day(r);
        b.series(r, d0, (2, 4), 7, b.home, Prof::Physio, Some(act::SUPERVISED_EXERCISE), Some("G45.9"));
    }
}

fn course_heart_failure(b: &mut Builder, r: &mut Rng, full: bool) {
    let code = ["I50.9", "I50.0", "I50.1"][r.weighted(&[70.0, 20.0, 10.0])];
    vc_visits(b, r, (1, 3), Prof::Physician, code, true);
    vc_visits(b, r, (2, 4), Prof::Nurse, code, true);
    if full || r.chance(0.3) {
        let d0 = b.random_day(r);
        b.series(r, d0, (6, 12), 4, b.home, Prof::Physio, Some(act::SUPERVISED_EXERCISE), Some(code));
    }
}

fn course_osteoporosis(b: &mut Builder, r: &mut Rng, full: bool) {
    let with_fracture = full || r.chance(0.4);
    let code = if with_fracture { "M80.9" } else { "M81.9" };
    let fracture = if full { "S72.0" } else { r.pick(&["S72.0", "S52.5", "S32.0", "S22.0"]) };
    let d0 = b.random_day(r);
    if with_fracture || r.chance(0.3) {
        let before = days(r.range(10, 40));
        if let Some(c) = b.visit(r, d0 - before, b.vc, Prof::Physician, false, 20) {
            b.dx(c, fracture, true, false);
        }
    }
    if let Some(c) = b.visit(r, d0, b.vc, Prof::Physician, false, 30) {
        b.dx(c, code, true, true);
        if with_fracture {
            b.dx(c, fracture, false, false);
        }
    }
    vc_visits(b, r, (0, 1), Prof::Nurse, code, true);
    if full || r.chance(0.55) {
        let unit = if r.chance(0.25) { b.vc } else { b.home };
        let start = d0 + days(r.range(7, 30));
        let kinds = [act::BALANCE_TRAINING, act::FALL_PREVENTION, act::SUPERVISED_EXERCISE];
        let first = if full { act::BALANCE_TRAINING } else { r.pick(&kinds) };
        b.series(r, start, (3, 8), 7, unit, Prof::Physio, Some(first), Some(code));
        if full || r.chance(0.4) {
            b.series(r, start + days(3), (1, 3), 7, unit, Prof::Physio, Some(act::FALL_PREVENTION), Some(code));
        }
    }
}

fn course_incontinence(b: &mut Builder, r: &mut Rng, female: bool, full: bool) {
    let code = if female { ["N39.3", "N39.4", "R32"][r.weighted(&[50.0, 30.0, 20.0])] } else { r.pick(&["N39.4", "R32"]) };
    let prof = if r.chance(0.5) { Prof::Nurse } else { Prof::Physician };
    vc_visits(b, r, (1, 2), prof, code, false);
    if full || r.chance(0.6) {
        let unit = if r.chance(0.3) { b.vc } else { b.home };
        let d0 = b.random_day(r);
        b.series(r, d0, (2, 5), 14, unit, Prof::Physio, Some(act::PELVIC_FLOOR_TRAINING), Some(code));
    }
}

fn course_depression(b: &mut Builder, r: &mut Rng, full: bool) {
    let code = ["F32.1", "F32.0", "F32.9", "F33.1"][r.weighted(&[35.0, 25.0, 25.0, 15.0])];
    vc_visits(b, r, (1, 3), Prof::Physician, code, false);
    vc_visits(b, r, (2, 6), Prof::Psychologist, code, false);
    if full || r.chance(0.3) {
        let d0 = b.random_day(r);
        b.series(r, d0, (3, 8), 7, b.home, Prof::Physio, Some(act::BODY_AWARENESS), Some(code));
    }
}

fn course_stress(b: &mut Builder, r: &mut Rng, full: bool) {
    let code = if full { "F43.8A" } else { ["F43.8A", "F43.2", "F43.9"][r.weighted(&[40.0, 30.0, 30.0])] };
    vc_visits(b, r, (1, 3), Prof::Physician, code, false);
    vc_visits(b, r, (1, 4), Prof::Psychologist, code, false);
    if full || r.chance(0.4) {
        // Rehab sets a symptom diagnosis as often as the physician's.
        let rehab_code = if full || r.chance(0.5) { r.pick(&["Z73.0", "R53.9"]) } else { code };
        let prof = if r.chance(0.7) { Prof::Physio } else { Prof::OccTherapist };
        let d0 = b.random_day(r);
        b.series(r, d0, (3, 8), 7, b.home, prof, Some(act::BODY_AWARENESS), Some(rehab_code));
    }
}

fn course_general_practice(b: &mut Builder, r: &mut Rng) {
    for _ in 0..r.range(1, 2) {
        let code = r.pick(&["J06.9", "R10.4", "I10.9", "E11.9", "Z00.0", "L30.9", "H10.9"]);
        let prof = if r.chance(0.6) { Prof::Physician } else { Prof::Nurse };
        vc_visits(b, r, (1, 1), prof, code, false);
    }
}

/// More than 20 visits within twelve months.
fn course_frequent_attender(b: &mut Builder, r: &mut Rng) {
    let span = (b.today - b.start).num_days();
    let from = b.start + days(r.range(0, (span - 365).max(0)));
    let n = r.range(23, 34);
    for k in 0..n {
        let d = from + days(k * 340 / n + r.range(0, 4));
        let (unit, prof) = if r.chance(0.7) { (b.vc, if r.chance(0.6) { Prof::Physician } else { Prof::Nurse }) } else { (b.home, Prof::Physio) };
        // Not nullable: the count must stay above 20.
        let phone = r.chance(0.3);
        if let Some(c) = b.contact(r, d, unit, prof, phone, 20, false) {
            if r.chance(0.8) {
                b.dx(c, r.pick(&["M79.7", "R51.9", "R10.4", "M54.5", "F41.9", "R53.9"]), true, false);
            }
        }
    }
}

/// FaR (KVÅ DV200) at one of the patient's visits with a physician or physiotherapist.
fn add_far(b: &mut Builder, r: &mut Rng) {
    let candidates: Vec<u32> = (0..b.plan.contacts.len() as u32)
        .filter(|c| {
            let k = &b.plan.contacts[*c as usize];
            !k.phone && !k.nullified && matches!(k.prof, Prof::Physician | Prof::Physio)
        })
        .collect();
    if candidates.is_empty() {
        return;
    }
    let c = r.pick(&candidates);
    b.act(c, kva::FAR, OID_KVA);
}

fn add_objection_somewhere(b: &mut Builder, r: &mut Rng) {
    let n = b.plan.contacts.len() as u64;
    if n > 0 {
        let c = r.below(n) as u32;
        b.obs(c, obs::REGISTER_OBJECTION, AnswerValue::coded(answer::YES), None, 0, false);
    }
}

fn run_condition(b: &mut Builder, r: &mut Rng, h: &Header, c: Condition, full: bool) {
    b.plan.conditions.push(c);
    match c {
        Condition::Artros => course_artros(b, r, h, ArtrosCourse::random()),
        Condition::Musculoskeletal => course_musculoskeletal(b, r, None),
        Condition::Kol => course_kol(b, r, full),
        Condition::Stroke => course_stroke(b, r, full),
        Condition::Tia => course_tia(b, r),
        Condition::HeartFailure => course_heart_failure(b, r, full),
        Condition::Osteoporosis => course_osteoporosis(b, r, full),
        Condition::Incontinence => course_incontinence(b, r, h.female, full),
        Condition::Depression => course_depression(b, r, full),
        Condition::Stress => course_stress(b, r, full),
        Condition::GeneralPractice => course_general_practice(b, r),
        Condition::FrequentAttender => course_frequent_attender(b, r),
    }
}

fn build_random(b: &mut Builder, r: &mut Rng, h: &Header, age: u32) {
    let f = h.female;
    let a = age;
    let table: [(Condition, f64); 12] = [
        (Condition::Musculoskeletal, 45.0),
        (Condition::Artros, if a >= 50 { 30.0 } else if a >= 40 { 8.0 } else { 1.0 }),
        (Condition::Kol, if a >= 45 { 4.0 } else { 0.0 }),
        (Condition::Stroke, if a >= 45 { 2.5 } else { 0.0 }),
        (Condition::Tia, if a >= 45 { 1.0 } else { 0.0 }),
        (Condition::HeartFailure, if a >= 55 { 2.5 } else { 0.0 }),
        // Old enough on every day of the history (osteoporosis from 50, incontinence from 20).
        (Condition::Osteoporosis, if a >= 52 { if f { 6.0 } else { 2.0 } } else { 0.0 }),
        (Condition::Incontinence, if a >= 22 { if f { 5.0 } else { 1.0 } } else { 0.0 }),
        (Condition::Depression, 6.0),
        (Condition::Stress, if (20..65).contains(&a) { 6.0 } else { 0.0 }),
        (Condition::GeneralPractice, 8.0),
        (Condition::FrequentAttender, 0.6),
    ];
    let weights: Vec<f64> = table.iter().map(|t| t.1).collect();
    let first = table[r.weighted(&weights)].0;
    run_condition(b, r, h, first, false);
    if r.chance(0.15) {
        let second = table[r.weighted(&weights)].0;
        if second != first && second != Condition::FrequentAttender {
            run_condition(b, r, h, second, false);
        }
    }
    if first != Condition::GeneralPractice && r.chance(0.35) {
        course_general_practice(b, r);
    }
    if r.chance(0.08) {
        add_far(b, r);
    }
    if first != Condition::Artros && r.chance(0.01) {
        add_objection_somewhere(b, r);
    }
}

fn build_archetype(i: usize, b: &mut Builder, r: &mut Rng, h: &Header) {
    use archetype::*;
    let artros = |b: &mut Builder, r: &mut Rng, c: ArtrosCourse| {
        b.plan.conditions.push(Condition::Artros);
        course_artros(b, r, h, c);
    };
    match i {
        ARTROS_KNEE_COMPLETE => artros(b, r, ArtrosCourse::fixed(Joint::Knee, 420)),
        ARTROS_HIP_AWAITING_Y1 => artros(b, r, ArtrosCourse::fixed(Joint::Hip, 180)),
        ARTROS_DROPOUT_AFTER_SCHOOL => artros(b, r, ArtrosCourse { stop: Some(Stop::AfterSchool), ..ArtrosCourse::fixed(Joint::Knee, 300) }),
        ARTROS_M3PAT_INCOMPLETE => {
            artros(b, r, ArtrosCourse { stop: Some(Stop::AfterM3), drop: Some((SarForm::M3Pat, obs::EQ_VAS)), ..ArtrosCourse::fixed(Joint::Hip, 200) })
        }
        ARTROS_OBJECTION => artros(b, r, ArtrosCourse { objection_at_m3: true, ..ArtrosCourse::fixed(Joint::Knee, 400) }),
        ARTROS_SAMORDNINGSNUMMER => artros(b, r, ArtrosCourse::fixed(Joint::Hand, 160)),
        ARTROS_RESERVE_NUMBER => artros(b, r, ArtrosCourse::fixed(Joint::Knee, 120)),
        ARTROS_M3_NULLIFIED => artros(b, r, ArtrosCourse { nullify_m3: true, stop: Some(Stop::AfterM3), ..ArtrosCourse::fixed(Joint::Hip, 250) }),
        KOL => {
            run_condition(b, r, h, Condition::Kol, true);
            add_far(b, r);
        }
        STROKE => run_condition(b, r, h, Condition::Stroke, true),
        TIA => run_condition(b, r, h, Condition::Tia, true),
        HEART_FAILURE => run_condition(b, r, h, Condition::HeartFailure, true),
        OSTEOPOROSIS => run_condition(b, r, h, Condition::Osteoporosis, true),
        INCONTINENCE => run_condition(b, r, h, Condition::Incontinence, true),
        DEPRESSION => {
            run_condition(b, r, h, Condition::Depression, true);
            add_far(b, r);
        }
        STRESS => run_condition(b, r, h, Condition::Stress, true),
        FREQUENT_ATTENDER => run_condition(b, r, h, Condition::FrequentAttender, true),
        MUSCULOSKELETAL => {
            b.plan.conditions.push(Condition::Musculoskeletal);
            course_musculoskeletal(b, r, Some("M54.5"));
        }
        ARTROS_FVPT_INCOMPLETE => artros(b, r, ArtrosCourse { drop: Some((SarForm::FVPT, obs::SIDE)), ..ArtrosCourse::fixed(Joint::Knee, 230) }),
        ARTROS_Y1_INCOMPLETE => artros(b, r, ArtrosCourse { drop: Some((SarForm::Y1Pat, obs::WANTS_SURGERY)), ..ArtrosCourse::fixed(Joint::Knee, 450) }),
        ARTROS_RECENT => artros(b, r, ArtrosCourse::fixed(Joint::Knee, 10)),
        UNLISTED => {
            b.plan.conditions.push(Condition::Musculoskeletal);
            course_musculoskeletal(b, r, Some("M75.1"));
        }
        _ => sar_cases::build(i, b, r, h),
    }
}

/// Deliberately bad items: a header personnummer with a wrong check digit, or a code in a code
/// system nobody knows. Never on SAR answers, objections, follow-up marks or artros diagnoses,
/// whose loss would change the registers' expected outcome in ways the truth does not describe.
fn apply_defects(plan: &mut Plan, r: &mut Rng, share: f64, kind: IdKind) {
    let national = kind != IdKind::Reserve;
    for c in &mut plan.contacts {
        if national && r.chance(share) {
            c.defect = Some(Defect::InvalidPersonnummer);
        }
    }
    for d in &mut plan.diagnoses {
        // Artros diagnoses (M15–M19) open and classify SAR courses: like SAR answers, never bad.
        if r.chance(share) && !matches!(d.code.get(..3), Some("M15" | "M16" | "M17" | "M18" | "M19")) {
            d.defect = Some(if national && r.chance(0.5) { Defect::InvalidPersonnummer } else { Defect::UnknownCodeSystem });
        }
    }
    for a in &mut plan.activities {
        if r.chance(share) {
            a.defect = Some(Defect::UnknownCodeSystem);
        }
    }
    for o in &mut plan.observations {
        if o.episode.is_none() && o.term != obs::REGISTER_OBJECTION && o.term != obs::FOLLOW_UP_MARK && r.chance(share) {
            o.defect = Some(Defect::UnknownCodeSystem);
        }
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
