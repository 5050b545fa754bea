//! A register connector's mapping: `connectors/<name>/mapping.toml` (which journal term fills
//! which register column, code tables, what opens a course, the opt-out term) plus the
//! connector's `[options]` (mapping file, occasion windows = the follow-up occasions, offline
//! metadata file), loaded and validated against the register's metadata. The file format is documented at the top of the shipped
//! `connectors/artrosregistret/mapping.toml`.
//!
//! Loading resolves everything the mapper needs (domains, mandatory columns, envelope columns)
//! once, so building a registration never consults the metadata again.

use crate::config::{ConnectorDef, Problem};
use crate::model::{normalise_icd, Code, OID_ICD10SE};
use crate::registers::metadata::{Domain, RegisterMetadata};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

// ------------------------------------------------------------------------------ resolved form

/// A measurement occasion of a course: an index into [`Mapping::occasions`]. Occasion 0 is the
/// first visit (day 0, answers from `[course] first_visit_window`); the follow-ups are the
/// connector's `[options.windows]`, ordered by their first day. Which occasions exist is data
/// (SAR: first_visit, three_months, one_year; another register declares its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Occasion(pub usize);

impl Occasion {
    /// The first visit: every course has it, it opens the course.
    pub const FIRST_VISIT: Occasion = Occasion(0);
    pub const FIRST_VISIT_NAME: &'static str = "first_visit";
    pub fn is_first_visit(self) -> bool {
        self == Occasion::FIRST_VISIT
    }
}

/// One occasion as declared: its name (what `forms.<Form>.occasion` and the metadata's
/// occasion hint say) and its window in days after the first visit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OccasionSpec {
    pub name: String,
    pub window: Window,
}

/// Days after the first visit, both ends inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub from_day: i64,
    pub to_day: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JointRule {
    pub name: String,
    /// Normalised ICD-10-SE code patterns (`M17`, `M151`, `M19?E`): a code matches when it is at
    /// least as long as the pattern and each position of the pattern is the code's or `?`.
    pub codes: Vec<String>,
    /// Patterns of the joint's codes that say both sides are affected (ICD-10 "bilateral").
    pub bilateral: Vec<String>,
}

/// Does a normalised ICD-10-SE code match a pattern (`M17`, `M19?E`)?
pub fn code_matches(code: &str, pattern: &str) -> bool {
    code.len() >= pattern.len() && code.bytes().zip(pattern.bytes()).all(|(c, p)| p == b'?' || c == p)
}

/// What opens a treatment course at a first visit (`[course] inclusion`).
#[derive(Clone, Debug, PartialEq)]
pub enum Inclusion {
    /// A joint's diagnosis is the contact's main diagnosis.
    MainDiagnosis,
    /// A joint's diagnosis at the contact, main or secondary.
    AnyDiagnosis,
    /// The region's inclusion term is documented at the contact.
    Term(Code),
}

/// What marks a visit as a follow-up occasion (`[course] follow_up_mark`).
#[derive(Clone, Debug, PartialEq)]
pub enum FollowUpMark {
    /// An observation of this term at the unit that day.
    Term(Code),
    /// A care contact of this careContactCode at the unit that day.
    ContactType(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct OptOutRule {
    pub term: Code,
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    Nearest,
    Down,
    Up,
    Reject,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The answer documented at the occasion.
    Observation(Code),
    /// The course's joint: the joint of the first visit's main diagnosis (else the first one
    /// classified), through a code table keyed by joint name.
    EpisodeJoint,
    /// Is this joint in the course's joint classification? (true/false)
    CourseHasJoint(String),
    /// This joint's sides in the classification: 1 one side, 2 both sides (absent when the
    /// joint is not classified).
    CourseSides(String),
    /// Activities at the unit from the first visit through the occasion date.
    CountActivities(Vec<Code>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Conversion {
    Codes { table: String, values: BTreeMap<String, Value> },
    Number { decimals: Option<u32>, rounding: Rounding, integer: bool },
    Text,
    Date,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ColumnSpec {
    pub column: String,
    pub source: Source,
    pub conversion: Conversion,
    pub domain: Domain,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FormSpec {
    pub name: String,
    pub occasion: Occasion,
    pub subject_column: String,
    pub event_date_column: String,
    /// Mandatory columns other than the envelope (SubjectKey, EventDate), in metadata order.
    pub mandatory: Vec<String>,
    pub columns: Vec<ColumnSpec>,
}

/// A loaded, validated mapping.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    pub file: String,
    pub answer_system: Option<String>,
    pub diagnosis_system: String,
    pub joints: Vec<JointRule>,
    pub inclusion: Vec<Inclusion>,
    /// A later course needs its first visit more than this many days after the previous
    /// course's last occasion.
    pub gap_days: i64,
    /// Days before and after the first visit whose answers count for the first-visit forms.
    pub first_visit_window: Window,
    pub follow_up_mark: Option<FollowUpMark>,
    /// Indicator input → register column (`[indicators]`).
    pub indicator_columns: BTreeMap<String, String>,
    /// ICD-10-SE prefixes of artros codes that, matching no joint, are reported (not guessed).
    pub report_unmatched: Vec<String>,
    pub opt_out: OptOutRule,
    /// Diagnosis code patterns that open a course without classifying a joint (`[course]
    /// diagnoses`): registers without a joint classification.
    pub diagnoses: Vec<String>,
    /// The course token of keys (`[course] key`, default `course`): what identifies a
    /// registration is `register|unit|patient_key|<key>[@first visit]|form`.
    pub key_token: String,
    /// The first visit, then the follow-ups by window start (see [`Occasion`]).
    pub occasions: Vec<OccasionSpec>,
    /// By occasion, then in the metadata's form order.
    pub forms: Vec<FormSpec>,
}

impl Mapping {
    /// The window of an occasion; the first visit is day 0.
    pub fn window(&self, occasion: Occasion) -> Window {
        self.occasions[occasion.0].window
    }
    /// The occasion's name (`first_visit`, `three_months`…).
    pub fn occasion_name(&self, occasion: Occasion) -> &str {
        &self.occasions[occasion.0].name
    }
    /// The occasion of this name, if declared.
    pub fn occasion(&self, name: &str) -> Option<Occasion> {
        self.occasions.iter().position(|o| o.name == name).map(Occasion)
    }
    /// Every occasion, the first visit first.
    pub fn all_occasions(&self) -> impl Iterator<Item = Occasion> {
        (0..self.occasions.len()).map(Occasion)
    }
    /// Does this diagnosis code open a course (a joint's code, or one of `[course] diagnoses`)?
    pub fn opens(&self, icd: &str) -> bool {
        let code = normalise_icd(icd);
        self.joint_rule(&code).is_some() || self.diagnoses.iter().any(|p| code_matches(&code, p))
    }
    /// Which joint (if any) an ICD-10-SE code classifies.
    pub fn joint_of(&self, icd: &str) -> Option<&str> {
        self.joint_rule(icd).map(|j| j.name.as_str())
    }
    pub fn joint_rule(&self, icd: &str) -> Option<&JointRule> {
        let code = normalise_icd(icd);
        self.joints.iter().find(|j| j.codes.iter().any(|p| code_matches(&code, p)))
    }
    /// Does the code say both sides (of its joint)?
    pub fn bilateral(&self, icd: &str) -> bool {
        let code = normalise_icd(icd);
        self.joint_rule(&code).is_some_and(|j| j.bilateral.iter().any(|p| code_matches(&code, p)))
    }
    /// An artros code (one of `report_unmatched`) that matches no joint.
    pub fn unmatched_artros(&self, icd: &str) -> bool {
        let code = normalise_icd(icd);
        self.joint_rule(&code).is_none() && self.report_unmatched.iter().any(|p| code_matches(&code, p))
    }
}

// --------------------------------------------------------------------------------- file types

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionsFile {
    mapping: PathBuf,
    #[serde(default)]
    metadata_file: Option<PathBuf>,
    #[serde(default)]
    windows: BTreeMap<String, WindowFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    from_day: i64,
    to_day: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    terms: TermsFile,
    course: CourseFile,
    opt_out: OptOutFile,
    #[serde(default)]
    codes: BTreeMap<String, BTreeMap<String, toml::Value>>,
    forms: BTreeMap<String, FormFile>,
    /// Indicator input → register column (see `indicators.rs`).
    #[serde(default)]
    indicators: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TermsFile {
    observations: String,
    #[serde(default)]
    answers: Option<String>,
    activities: String,
    /// Keyword names as the journal shows them (code → name), for the worklist.
    #[serde(default)]
    names: BTreeMap<String, String>,
}

fn default_icd() -> String {
    OID_ICD10SE.to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CourseFile {
    #[serde(default = "default_icd")]
    diagnosis_system: String,
    #[serde(default = "default_inclusion")]
    inclusion: Vec<String>,
    #[serde(default = "default_gap")]
    gap_days: i64,
    #[serde(default)]
    first_visit_window: Option<FirstVisitWindowFile>,
    #[serde(default)]
    follow_up_mark: Option<String>,
    #[serde(default)]
    report_unmatched: Vec<String>,
    /// The joint classification (SAR): optional, a register without one leaves it out.
    #[serde(default)]
    joints: BTreeMap<String, JointFile>,
    /// Diagnosis code patterns that open a course without a joint classification.
    #[serde(default)]
    diagnoses: Vec<String>,
    /// The course token of registration keys.
    #[serde(default)]
    key: Option<String>,
}

fn default_inclusion() -> Vec<String> {
    vec!["main_diagnosis".into()]
}

fn default_gap() -> i64 {
    365
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FirstVisitWindowFile {
    before_days: i64,
    after_days: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JointFile {
    codes: Vec<String>,
    #[serde(default)]
    bilateral: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptOutFile {
    term: String,
    #[serde(default)]
    system: Option<String>,
    values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FormFile {
    occasion: String,
    columns: BTreeMap<String, ColumnFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnFile {
    #[serde(default)]
    observation: Option<String>,
    #[serde(default)]
    course: Option<String>,
    #[serde(default)]
    count_activities: Option<Vec<String>>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    codes: Option<String>,
    #[serde(default)]
    convert: Option<String>,
    #[serde(default)]
    decimals: Option<u32>,
    #[serde(default)]
    rounding: Option<String>,
    #[serde(default)]
    range: Option<[f64; 2]>,
}

// ------------------------------------------------------------------------------ domain checks

/// Why a value does not fit a column's domain. The reason text never contains the value (it may
/// be a patient's answer).
#[derive(Clone, Debug, PartialEq)]
pub enum Misfit {
    WrongType { expected: String },
    NotListed,
    Inactive,
    BelowMin(f64),
    AboveMax(f64),
    NotADate,
    TooManyDecimals,
}

impl Misfit {
    pub fn reason(&self) -> String {
        match self {
            Misfit::WrongType { expected } => format!("wrong type: the domain takes {expected}"),
            Misfit::NotListed => "not one of the domain's values".into(),
            Misfit::Inactive => "an inactive value of the domain".into(),
            Misfit::BelowMin(m) => format!("below the domain's minimum {m}"),
            Misfit::AboveMax(m) => format!("above the domain's maximum {m}"),
            Misfit::NotADate => "not a date YYYY-MM-DD".into(),
            Misfit::TooManyDecimals => "more decimals than the mapping allows (rounding = reject)".into(),
        }
    }
}

/// Does `v` fit `domain` (type, enumeration, range)?
pub fn fit(domain: &Domain, v: &Value) -> Result<(), Misfit> {
    let wrong = |expected: &str| Err(Misfit::WrongType { expected: expected.to_string() });
    match domain.data_type.as_str() {
        "boolean" => {
            if !v.is_boolean() {
                return wrong("true/false");
            }
        }
        "string" => {
            if !v.is_string() {
                return wrong("text");
            }
        }
        "date" => {
            let Some(s) = v.as_str() else { return wrong("a date YYYY-MM-DD") };
            if s.len() != 10 || chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_err() {
                return Err(Misfit::NotADate);
            }
        }
        "integer" => {
            if !(v.is_i64() || v.is_u64()) {
                return wrong("an integer");
            }
        }
        "decimal" => {
            if !v.is_number() {
                return wrong("a number");
            }
        }
        other => return wrong(&format!("an unknown data type `{other}`")),
    }
    if domain.is_enumerated {
        match domain.domain_values.iter().find(|dv| &dv.value_code == v) {
            None => return Err(Misfit::NotListed),
            Some(dv) if !dv.is_active => return Err(Misfit::Inactive),
            Some(_) => {}
        }
    }
    if let Some(x) = v.as_f64() {
        if let Some(min) = domain.min {
            if x < min {
                return Err(Misfit::BelowMin(min));
            }
        }
        if let Some(max) = domain.max {
            if x > max {
                return Err(Misfit::AboveMax(max));
            }
        }
    }
    Ok(())
}

/// Apply a number conversion. `Err` when the value cannot be represented (rounding = reject, NaN).
pub fn convert_number(x: f64, decimals: Option<u32>, rounding: Rounding, integer: bool) -> Result<Value, Misfit> {
    if !x.is_finite() {
        return Err(Misfit::WrongType { expected: "a finite number".into() });
    }
    let d = if integer { Some(decimals.unwrap_or(0)) } else { decimals };
    let rounded = match d {
        None => x,
        Some(d) => {
            let f = 10f64.powi(d as i32);
            let scaled = x * f;
            let r = match rounding {
                Rounding::Nearest => scaled.round(),
                Rounding::Down => scaled.floor(),
                Rounding::Up => scaled.ceil(),
                Rounding::Reject => {
                    if (scaled - scaled.round()).abs() > 1e-9 {
                        return Err(Misfit::TooManyDecimals);
                    }
                    scaled.round()
                }
            };
            r / f
        }
    };
    if integer {
        Ok(Value::from(rounded as i64))
    } else {
        serde_json::Number::from_f64(rounded).map(Value::Number).ok_or(Misfit::WrongType { expected: "a finite number".into() })
    }
}

// ------------------------------------------------------------------------------------ loading

/// `options` of a SAR connector, parsed.
pub struct SarOptions {
    pub mapping_path: PathBuf,
    pub metadata_file: Option<PathBuf>,
    windows: BTreeMap<String, WindowFile>,
}

fn connector_file(c: &ConnectorDef) -> String {
    c.dir.join("connector.toml").display().to_string()
}

fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Parse the connector's `[options]` (problems name connector.toml and the `options.` key).
pub fn options(c: &ConnectorDef) -> Result<SarOptions, Problem> {
    let parsed: OptionsFile = toml::Value::Table(c.options.clone())
        .try_into()
        .map_err(|e: toml::de::Error| Problem::error(connector_file(c), "options", e.message().to_string()))?;
    Ok(SarOptions {
        mapping_path: resolve(&c.dir, &parsed.mapping),
        metadata_file: parsed.metadata_file.map(|p| resolve(&c.dir, &p)),
        windows: parsed.windows,
    })
}

fn line_of(text: &str, offset: usize) -> String {
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    let content = text.lines().nth(line - 1).unwrap_or("").trim();
    format!("line {line} `{content}`")
}

fn toml_to_json(v: &toml::Value) -> Option<Value> {
    match v {
        toml::Value::Integer(i) => Some(Value::from(*i)),
        toml::Value::Boolean(b) => Some(Value::from(*b)),
        toml::Value::String(s) => Some(Value::from(s.clone())),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number),
        _ => None,
    }
}

fn is_numeric(domain: &Domain) -> bool {
    matches!(domain.data_type.as_str(), "integer" | "decimal")
}

/// Load the connector's mapping and validate it against `metadata`. Returns the mapping when
/// there is no error, and every problem found (errors and warnings) either way.
pub fn load(c: &ConnectorDef, metadata: &RegisterMetadata) -> (Option<Mapping>, Vec<Problem>) {
    let mut problems = vec![];
    let opts = match options(c) {
        Ok(o) => o,
        Err(p) => return (None, vec![p]),
    };
    let cfile = connector_file(c);
    let file = opts.mapping_path.display().to_string();
    let text = match std::fs::read_to_string(&opts.mapping_path) {
        Ok(t) => t,
        Err(e) => return (None, vec![Problem::error(&cfile, "options.mapping", format!("cannot read {file}: {e}"))]),
    };
    let raw: MappingFile = match toml::from_str(&text) {
        Ok(m) => m,
        Err(e) => {
            let key = e.span().map(|s| line_of(&text, s.start)).unwrap_or_default();
            return (None, vec![Problem::error(&file, key, e.message().to_string())]);
        }
    };
    let err = |p: &mut Vec<Problem>, key: String, reason: String| p.push(Problem::error(&file, key, reason));

    // Windows (connector.toml): each names a follow-up occasion. A window no form uses is an
    // error (a misspelt occasion would otherwise silently produce nothing).
    let used_occasions: BTreeSet<&str> = raw.forms.values().map(|f| f.occasion.as_str()).collect();
    let name_ok = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let mut windows: BTreeMap<String, Window> = BTreeMap::new();
    for (name, w) in &opts.windows {
        let key = format!("options.windows.{name}");
        if name == Occasion::FIRST_VISIT_NAME || !name_ok(name) || !used_occasions.contains(name.as_str()) {
            problems.push(Problem::error(
                &cfile,
                key,
                format!("unknown occasion window: no form of {} has occasion = \"{name}\" (a follow-up occasion is a lower-case name that forms use; first_visit has no window here)", opts.mapping_path.display()),
            ));
        } else if w.from_day < 1 || w.to_day < w.from_day {
            problems.push(Problem::error(&cfile, key, format!("invalid window {}–{} days: needs 1 ≤ from_day ≤ to_day", w.from_day, w.to_day)));
        } else {
            windows.insert(name.clone(), Window { from_day: w.from_day, to_day: w.to_day });
        }
    }
    let mut follow_ups: Vec<OccasionSpec> = windows.iter().map(|(n, w)| OccasionSpec { name: n.clone(), window: *w }).collect();
    follow_ups.sort_by_key(|o| (o.window.from_day, o.name.clone()));
    for pair in follow_ups.windows(2) {
        if pair[0].window.to_day >= pair[1].window.from_day {
            problems.push(Problem::error(&cfile, "options.windows", format!("the {} and {} windows overlap (one visit would count for both)", pair[0].name, pair[1].name)));
        }
    }

    // Terms, episodes, opt-out.
    for (k, v) in [("terms.observations", &raw.terms.observations), ("terms.activities", &raw.terms.activities)] {
        if v.trim().is_empty() {
            err(&mut problems, k.into(), "empty code system".into());
        }
    }
    let mut joints = vec![];
    let mut seen_prefixes: Vec<(String, String)> = vec![];
    let by_diagnosis = raw.course.inclusion.iter().any(|i| i == "main_diagnosis" || i == "any_diagnosis");
    if by_diagnosis && raw.course.joints.is_empty() && raw.course.diagnoses.is_empty() {
        err(&mut problems, "course.joints".into(), "no joint (or [course] diagnoses) configured: no course can open by diagnosis".into());
    }
    let pattern_ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'?');
    for (name, jf) in &raw.course.joints {
        let key = format!("course.joints.{name}");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            err(&mut problems, key.clone(), "a joint name is lower-case ASCII letters, digits and _ (code tables and the register's joint columns name it)".into());
        }
        if jf.codes.is_empty() {
            err(&mut problems, format!("{key}.codes"), "no ICD-10-SE code".into());
        }
        let mut norm = vec![];
        for p in &jf.codes {
            let n = normalise_icd(p);
            if !pattern_ok(&n) {
                err(&mut problems, format!("{key}.codes"), format!("`{p}` is not an ICD-10-SE code pattern (letters, digits, ? for any)"));
                continue;
            }
            for (other_joint, other) in &seen_prefixes {
                let overlap = n.bytes().zip(other.bytes()).all(|(a, b)| a == b || a == b'?' || b == b'?');
                if other_joint != name && overlap {
                    err(&mut problems, format!("{key}.codes"), format!("{n} overlaps {other} of joint {other_joint}: a diagnosis must classify one joint only"));
                }
            }
            seen_prefixes.push((name.clone(), n.clone()));
            norm.push(n);
        }
        let mut bilateral = vec![];
        for p in &jf.bilateral {
            let n = normalise_icd(p);
            if !pattern_ok(&n) || !norm.iter().any(|c| code_matches(&n, c)) {
                err(&mut problems, format!("{key}.bilateral"), format!("`{p}` is not one of the joint's codes"));
                continue;
            }
            bilateral.push(n);
        }
        joints.push(JointRule { name: name.clone(), codes: norm, bilateral });
    }
    let mut inclusion = vec![];
    for (i, v) in raw.course.inclusion.iter().enumerate() {
        match v.as_str() {
            "main_diagnosis" => inclusion.push(Inclusion::MainDiagnosis),
            "any_diagnosis" => inclusion.push(Inclusion::AnyDiagnosis),
            t if t.starts_with("term:") && t.len() > 5 => inclusion.push(Inclusion::Term(Code::new(&raw.terms.observations, t[5..].trim()))),
            _ => err(&mut problems, format!("course.inclusion[{i}]"), "unknown inclusion (main_diagnosis, any_diagnosis or term:<CODE>)".into()),
        }
    }
    if raw.course.inclusion.is_empty() {
        err(&mut problems, "course.inclusion".into(), "no inclusion: no course can open".into());
    }
    if raw.course.gap_days < 1 {
        err(&mut problems, "course.gap_days".into(), "the gap between courses is at least one day".into());
    }
    let first_visit_window = match &raw.course.first_visit_window {
        None => Window { from_day: -14, to_day: 14 },
        Some(w) if w.before_days < 0 || w.after_days < 0 || w.before_days > 60 || w.after_days > 60 => {
            err(&mut problems, "course.first_visit_window".into(), "before_days and after_days are 0–60 days".into());
            Window { from_day: 0, to_day: 0 }
        }
        Some(w) => Window { from_day: -w.before_days, to_day: w.after_days },
    };
    let follow_up_mark = match raw.course.follow_up_mark.as_deref() {
        None => None,
        Some(t) if t.starts_with("term:") && t.len() > 5 => Some(FollowUpMark::Term(Code::new(&raw.terms.observations, t[5..].trim()))),
        Some(t) if t.starts_with("contact_type:") && t.len() > 13 => Some(FollowUpMark::ContactType(t[13..].trim().to_string())),
        Some(_) => {
            err(&mut problems, "course.follow_up_mark".into(), "unknown mark (term:<CODE> or contact_type:<CODE>)".into());
            None
        }
    };
    if let Some(o) = follow_ups.first() {
        if o.window.from_day <= first_visit_window.to_day {
            problems.push(Problem::error(&cfile, format!("options.windows.{}", o.name), "the window starts inside the first-visit window (one visit would count for both)"));
        }
    }
    let mut diagnoses = vec![];
    for (i, p) in raw.course.diagnoses.iter().enumerate() {
        let n = normalise_icd(p);
        if !pattern_ok(&n) {
            err(&mut problems, format!("course.diagnoses[{i}]"), format!("`{p}` is not a code pattern (letters, digits, ? for any)"));
        } else {
            diagnoses.push(n);
        }
    }
    let key_token = raw.course.key.clone().unwrap_or_else(|| "course".to_string());
    if key_token.is_empty() || !key_token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        err(&mut problems, "course.key".into(), "the key token is ASCII letters, digits, _ and - (it is part of every registration key)".into());
    }
    let mut occasions = vec![OccasionSpec { name: Occasion::FIRST_VISIT_NAME.to_string(), window: first_visit_window }];
    occasions.extend(follow_ups);
    let report_unmatched: Vec<String> = raw.course.report_unmatched.iter().map(|p| normalise_icd(p)).collect();
    if raw.opt_out.term.trim().is_empty() {
        err(&mut problems, "opt_out.term".into(), "empty term: opt-outs would never be seen".into());
    }
    if raw.opt_out.values.is_empty() {
        err(&mut problems, "opt_out.values".into(), "no value: opt-outs would never be seen".into());
    }
    let opt_out = OptOutRule {
        term: Code::new(raw.opt_out.system.as_deref().unwrap_or(&raw.terms.observations), raw.opt_out.term.trim()),
        values: raw.opt_out.values.clone(),
    };

    // Code tables.
    let mut tables: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for (name, entries) in &raw.codes {
        let mut t = BTreeMap::new();
        for (code, v) in entries {
            match toml_to_json(v) {
                Some(j) => {
                    t.insert(code.clone(), j);
                }
                None => err(&mut problems, format!("codes.{name}.{code}"), "a ValueCode is an integer, boolean, decimal or string".into()),
            }
        }
        tables.insert(name.clone(), t);
    }

    // Forms, against the metadata.
    let mut forms = vec![];
    let mut used_tables = BTreeSet::new();
    for (fname, f) in &raw.forms {
        let fkey = format!("forms.{fname}");
        let Some(meta) = metadata.form(fname) else {
            let known = metadata.forms.iter().map(|f| f.form_name.as_str()).collect::<Vec<_>>().join(", ");
            err(&mut problems, fkey, format!("unknown form (register {} has {known})", metadata.register.register_id));
            continue;
        };
        if let Some(hint) = &meta.occasion {
            if hint != &f.occasion {
                err(&mut problems, format!("{fkey}.occasion"), format!("the register metadata gives this form the occasion {hint}"));
            }
        }
        let occasion = match occasions.iter().position(|o| o.name == f.occasion) {
            Some(i) => Occasion(i),
            None if f.occasion != Occasion::FIRST_VISIT_NAME && name_ok(&f.occasion) => {
                problems.push(Problem::error(&cfile, format!("options.windows.{}", f.occasion), format!("form {fname} needs this window")));
                continue;
            }
            None => {
                err(&mut problems, format!("{fkey}.occasion"), format!("unknown occasion `{}` (first_visit or a window of [options.windows])", f.occasion));
                continue;
            }
        };
        let subject = metadata.subject_column(meta).map(str::to_string);
        let event_date = metadata.event_date_column(meta).map(str::to_string);
        if subject.is_none() || event_date.is_none() {
            err(&mut problems, fkey.clone(), "the metadata gives this form no SubjectKey or EventDate column".into());
        }
        let envelope: BTreeSet<&str> = [subject.as_deref(), event_date.as_deref()].into_iter().flatten().collect();
        let mut columns = vec![];
        for (col, spec) in &f.columns {
            let key = format!("{fkey}.columns.{col}");
            let Some(q) = meta.questions.iter().find(|q| &q.column_name == col) else {
                err(&mut problems, key, format!("no column {col} in form {fname}"));
                continue;
            };
            if envelope.contains(col.as_str()) {
                err(&mut problems, key, "an envelope column (SubjectKey/EventDate) is filled by the mapper, not mapped".into());
                continue;
            }
            let Some(domain) = metadata.domain(q.domain.domain_id) else {
                err(&mut problems, key, format!("the metadata has no domain {}", q.domain.domain_id));
                continue;
            };
            match column_spec(col, spec, domain, &raw.terms, &tables, &joints) {
                Ok((c, table)) => {
                    if let Some(t) = table {
                        used_tables.insert(t);
                    }
                    columns.push(c);
                }
                Err(reasons) => {
                    for r in reasons {
                        err(&mut problems, key.clone(), r);
                    }
                }
            }
        }
        let mandatory: Vec<String> =
            meta.questions.iter().filter(|q| q.is_mandatory && !envelope.contains(q.column_name.as_str())).map(|q| q.column_name.clone()).collect();
        for m in &mandatory {
            if !f.columns.contains_key(m) {
                err(&mut problems, format!("{fkey}.columns"), format!("mandatory column {m} is not mapped: every {fname} registration would stay incomplete"));
            }
        }
        forms.push((
            metadata.forms.iter().position(|x| x.form_name == *fname).unwrap_or(usize::MAX),
            FormSpec {
                name: fname.clone(),
                occasion,
                subject_column: subject.unwrap_or_default(),
                event_date_column: event_date.unwrap_or_default(),
                mandatory,
                columns,
            },
        ));
    }
    // First-visit forms come first: follow-ups wait for them (see `super::map_patient`).
    forms.sort_by_key(|(i, f)| (f.occasion, *i));
    let forms: Vec<FormSpec> = forms.into_iter().map(|(_, f)| f).collect();
    if raw.forms.is_empty() {
        err(&mut problems, "forms".into(), "no form mapped".into());
    }
    for t in tables.keys() {
        if !used_tables.contains(t) {
            problems.push(Problem::warning(&file, format!("codes.{t}"), "code table is not used by any column"));
        }
    }
    for mf in &metadata.forms {
        if !raw.forms.contains_key(&mf.form_name) {
            problems.push(Problem::warning(&file, "forms", format!("form {} is not mapped: its registrations are left to manual entry", mf.form_name)));
        }
    }
    for (i, u) in c.units.iter().enumerate() {
        if !metadata.units.is_empty() && !metadata.units.iter().any(|m| m.hsa_id.as_deref() == Some(u.as_str())) {
            problems.push(Problem::warning(&cfile, format!("units[{i}]"), format!("unit {u} is not among the register's units")));
        }
    }

    for (k, col) in &raw.indicators {
        if !metadata.forms.iter().any(|f| f.questions.iter().any(|q| &q.column_name == col)) {
            problems.push(Problem::warning(&file, format!("indicators.{k}"), format!("no form of the register has column {col}: the indicator is not computed")));
        }
    }
    if problems.iter().any(|p| !p.warning) {
        return (None, problems);
    }
    let mapping = Mapping {
        file,
        answer_system: raw.terms.answers.clone(),
        diagnosis_system: raw.course.diagnosis_system.clone(),
        joints,
        inclusion,
        gap_days: raw.course.gap_days,
        first_visit_window,
        follow_up_mark,
        indicator_columns: raw.indicators.clone(),
        report_unmatched,
        opt_out,
        diagnoses,
        key_token,
        occasions,
        forms,
    };
    (Some(mapping), problems)
}

/// Resolve one column's source and conversion and check that every value it can produce fits
/// the column's domain. Returns the spec and the code table it uses, or every reason it is wrong.
fn column_spec(
    col: &str,
    spec: &ColumnFile,
    domain: &Domain,
    terms: &TermsFile,
    tables: &BTreeMap<String, BTreeMap<String, Value>>,
    joints: &[JointRule],
) -> Result<(ColumnSpec, Option<String>), Vec<String>> {
    let mut reasons = vec![];
    let sources = [spec.observation.is_some(), spec.course.is_some(), spec.count_activities.is_some()].iter().filter(|b| **b).count();
    if sources != 1 {
        return Err(vec!["give exactly one source: observation, course or count_activities".into()]);
    }
    let source = if let Some(term) = &spec.observation {
        Source::Observation(Code::new(spec.system.as_deref().unwrap_or(&terms.observations), term.trim()))
    } else if let Some(what) = &spec.course {
        let known = |j: &str| joints.iter().any(|r| r.name == j);
        match what.split_once(':') {
            None if what == "joint" => Source::EpisodeJoint,
            Some(("has_joint", j)) if known(j) => {
                if domain.data_type != "boolean" {
                    return Err(vec![format!("course = \"has_joint:…\" fills a boolean column, not {}", domain.data_type)]);
                }
                return Ok((ColumnSpec { column: col.to_string(), source: Source::CourseHasJoint(j.to_string()), conversion: Conversion::Text, domain: domain.clone() }, None));
            }
            Some(("sides", j)) if known(j) => {
                let bad: Vec<String> = [1, 2].iter().filter(|v| fit(domain, &Value::from(**v)).is_err()).map(|v| format!("sides value {v} does not fit domain {} `{}`", domain.domain_id, domain.domain_name)).collect();
                if !bad.is_empty() {
                    return Err(bad);
                }
                return Ok((ColumnSpec { column: col.to_string(), source: Source::CourseSides(j.to_string()), conversion: Conversion::Text, domain: domain.clone() }, None));
            }
            _ => return Err(vec![format!("unknown course value `{what}` (joint, has_joint:<joint> or sides:<joint> of a configured joint)")]),
        }
    } else {
        let codes = spec.count_activities.as_ref().expect("one source");
        if codes.is_empty() {
            return Err(vec!["count_activities lists no activity code".into()]);
        }
        let system = spec.system.as_deref().unwrap_or(&terms.activities);
        Source::CountActivities(codes.iter().map(|c| Code::new(system, c.trim())).collect())
    };
    let dt = domain.data_type.as_str();
    let mut table_used = None;
    let conversion = if let Some(t) = &spec.codes {
        if matches!(source, Source::CountActivities(_)) {
            reasons.push("a count is a number: `codes` does not apply".into());
        }
        if spec.convert.is_some() || spec.decimals.is_some() || spec.rounding.is_some() || spec.range.is_some() {
            reasons.push("`codes` cannot be combined with convert, decimals, rounding or range".into());
        }
        match tables.get(t) {
            None => {
                reasons.push(format!("no code table [codes.{t}]"));
                Conversion::Codes { table: t.clone(), values: BTreeMap::new() }
            }
            Some(values) => {
                table_used = Some(t.clone());
                for (code, v) in values {
                    if let Err(m) = fit(domain, v) {
                        reasons.push(format!("code table {t}: {code} → {v} does not fit domain {} `{}`: {}", domain.domain_id, domain.domain_name, m.reason()));
                    }
                }
                if source == Source::EpisodeJoint {
                    for j in joints {
                        if !values.contains_key(&j.name) {
                            reasons.push(format!("code table {t} has no value for joint {}", j.name));
                        }
                    }
                }
                Conversion::Codes { table: t.clone(), values: values.clone() }
            }
        }
    } else {
        if source == Source::EpisodeJoint {
            reasons.push("the episode's joint needs a code table (`codes`)".into());
        }
        match spec.convert.as_deref() {
            Some("text") | Some("date") => {
                let want = if spec.convert.as_deref() == Some("text") { "string" } else { "date" };
                if dt != want {
                    reasons.push(format!("convert = {} cannot fill a {dt} column (domain {})", spec.convert.as_deref().unwrap_or(""), domain.domain_id));
                }
                if !matches!(source, Source::Observation(_)) {
                    reasons.push("text and date conversions take an observation".into());
                }
                if spec.decimals.is_some() || spec.rounding.is_some() || spec.range.is_some() {
                    reasons.push("decimals, rounding and range apply to numbers only".into());
                }
                if spec.convert.as_deref() == Some("text") {
                    Conversion::Text
                } else {
                    Conversion::Date
                }
            }
            Some("number") | None => {
                let integer = dt == "integer";
                if !is_numeric(domain) {
                    reasons.push(format!("a number cannot fill a {dt} column (domain {} `{}`)", domain.domain_id, domain.domain_name));
                }
                if integer && spec.decimals.unwrap_or(0) > 0 {
                    reasons.push("decimals > 0 into an integer column".into());
                }
                let rounding = match spec.rounding.as_deref() {
                    None | Some("nearest") => Rounding::Nearest,
                    Some("down") => Rounding::Down,
                    Some("up") => Rounding::Up,
                    Some("reject") => Rounding::Reject,
                    Some(other) => {
                        reasons.push(format!("unknown rounding `{other}` (nearest, down, up or reject)"));
                        Rounding::Nearest
                    }
                };
                if matches!(source, Source::CountActivities(_)) && (spec.range.is_some() || spec.decimals.is_some() || spec.rounding.is_some()) {
                    reasons.push("a count takes no range, decimals or rounding".into());
                }
                if domain.is_enumerated && is_numeric(domain) {
                    if matches!(source, Source::CountActivities(_)) {
                        reasons.push(format!("a count cannot fill an enumerated column (domain {} `{}`)", domain.domain_id, domain.domain_name));
                    } else {
                        match spec.range {
                            None => reasons.push(format!(
                                "a number into an enumerated column (domain {} `{}`) needs `range = [min, max]` of the journal's values",
                                domain.domain_id, domain.domain_name
                            )),
                            Some([lo, hi]) if lo > hi || hi - lo > 1000.0 || lo.fract() != 0.0 || hi.fract() != 0.0 => {
                                reasons.push("range must be two integers, min ≤ max, at most 1000 apart".into())
                            }
                            Some([lo, hi]) => {
                                for x in lo as i64..=hi as i64 {
                                    let v = convert_number(x as f64, spec.decimals, rounding, integer).unwrap_or(Value::Null);
                                    if let Err(m) = fit(domain, &v) {
                                        reasons.push(format!("journal value {x} (range {lo}–{hi}) does not fit domain {} `{}`: {}", domain.domain_id, domain.domain_name, m.reason()));
                                    }
                                }
                            }
                        }
                    }
                } else if let Some([lo, hi]) = spec.range {
                    if lo > hi {
                        reasons.push("range min is above max".into());
                    }
                    if let Some(min) = domain.min {
                        if lo < min {
                            reasons.push(format!("range starts at {lo}, below the domain's minimum {min}"));
                        }
                    }
                    if let Some(max) = domain.max {
                        if hi > max {
                            reasons.push(format!("range ends at {hi}, above the domain's maximum {max}"));
                        }
                    }
                }
                Conversion::Number { decimals: spec.decimals, rounding, integer }
            }
            Some(other) => {
                reasons.push(format!("unknown convert `{other}` (number, text or date)"));
                Conversion::Text
            }
        }
    };
    if !reasons.is_empty() {
        return Err(reasons);
    }
    Ok((ColumnSpec { column: col.to_string(), source, conversion, domain: domain.clone() }, table_used))
}

/// What a physiotherapist documents in the journal for one register column: the keyword (sökord)
/// code and its name from `[terms.names]`, for the worklist ("att komplettera").
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DocumentHint {
    pub column: String,
    /// The journal keyword code, or `None` when the column is not filled from a keyword (the
    /// course's joint, counted activities, a first-visit form a follow-up waits for).
    pub term: Option<String>,
    pub name: Option<String>,
    /// The item is a first-visit form this follow-up waits for, not a column.
    pub waits_for: bool,
}

/// For every form and column of a SAR connector's mapping, the journal keyword that fills it.
/// Reads mapping.toml only (no register metadata): an unreadable file gives an empty map.
pub fn document_hints(c: &ConnectorDef) -> BTreeMap<(String, String), DocumentHint> {
    let mut out = BTreeMap::new();
    let Ok(opts) = options(c) else { return out };
    let Ok(text) = std::fs::read_to_string(&opts.mapping_path) else { return out };
    let Ok(raw) = toml::from_str::<MappingFile>(&text) else { return out };
    for (form, f) in &raw.forms {
        for (col, spec) in &f.columns {
            let term = spec.observation.as_ref().map(|t| t.trim().to_string());
            let name = term.as_ref().and_then(|t| raw.terms.names.get(t).cloned());
            out.insert((form.clone(), col.clone()), DocumentHint { column: col.clone(), term, name, waits_for: false });
        }
    }
    out
}

/// The register metadata for an offline check: the connector's `metadata_file` option, else
/// `conformance/stratum/sar-104.json` under the working directory.
pub fn offline_metadata(c: &ConnectorDef) -> Result<RegisterMetadata, Problem> {
    let opts = options(c)?;
    let (path, key) = match &opts.metadata_file {
        Some(p) => (p.clone(), "options.metadata_file"),
        None => (PathBuf::from("conformance/stratum/sar-104.json"), "options"),
    };
    let bytes = std::fs::read(&path).map_err(|e| {
        Problem::error(connector_file(c), key, format!("cannot read register metadata {} for the offline check: {e}", path.display()))
    })?;
    RegisterMetadata::from_json(&bytes)
        .map_err(|e| Problem::error(path.display().to_string(), "", format!("not register metadata: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registers::metadata::DomainValue;

    fn shipped() -> (ConnectorDef, RegisterMetadata) {
        let (connectors, problems) = crate::config::load_connectors(Path::new("connectors"));
        assert!(problems.is_empty(), "{problems:?}");
        let c = connectors.into_iter().find(|c| c.name == "artrosregistret").expect("shipped SAR connector");
        let m = RegisterMetadata::from_json(&std::fs::read("conformance/stratum/sar-104.json").unwrap()).unwrap();
        (c, m)
    }

    /// Every column the shipped mapping fills exists in sar-104.json, every conversion fits its
    /// domain, every mandatory column is mapped: no problem at all, not even a warning.
    #[test]
    fn shipped_mapping_fits_the_register_metadata() {
        let (c, meta) = shipped();
        assert_eq!(offline_metadata(&c).unwrap(), meta, "metadata_file points at the conformance file");
        let (mapping, problems) = load(&c, &meta);
        assert!(problems.is_empty(), "{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"));
        let mapping = mapping.unwrap();
        let names: Vec<_> = mapping.forms.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["FVPat", "FVPT", "M3Pat", "M3PT", "Y1Pat"]);
        for f in &mapping.forms {
            let meta_form = meta.form(&f.name).unwrap();
            for col in &f.columns {
                let q = meta_form.questions.iter().find(|q| q.column_name == col.column).expect("column exists in the form");
                assert_eq!(q.domain.domain_id, col.domain.domain_id);
                if let Conversion::Codes { values, .. } = &col.conversion {
                    for v in values.values() {
                        assert_eq!(fit(&col.domain, v), Ok(()), "{}: {v}", col.column);
                    }
                }
            }
            for m in &f.mandatory {
                assert!(f.columns.iter().any(|c| &c.column == m), "{}: {m} mapped", f.name);
            }
        }
        let names: Vec<_> = mapping.occasions.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["first_visit", "three_months", "one_year"]);
        assert_eq!(mapping.window(mapping.occasion("three_months").unwrap()), Window { from_day: 91, to_day: 152 });
        assert_eq!(mapping.window(mapping.occasion("one_year").unwrap()), Window { from_day: 365, to_day: 540 });
        assert_eq!(mapping.first_visit_window, Window { from_day: -14, to_day: 14 });
        assert_eq!(mapping.joint_of("M19.0E"), Some("hand"));
        assert_eq!(mapping.joint_of("M19.0G"), None);
        assert!(mapping.unmatched_artros("M19.0G"));
        assert_eq!(mapping.joint_of("M15.1"), Some("hand"));
        assert!(mapping.bilateral("M17.0") && !mapping.bilateral("M17.1"));
        assert_eq!(mapping.joint_of("M17.1"), Some("knee"));
        assert_eq!(mapping.joint_of("M16"), Some("hip"));
        assert_eq!(mapping.joint_of("M180"), Some("hand"));
        assert_eq!(mapping.joint_of("M54"), None);
    }

    #[test]
    fn shipped_mapping_uses_the_sandbox_vocabulary() {
        use crate::sandbox::vocabulary::{obs, LOCAL_TERMS};
        let (c, meta) = shipped();
        let mapping = load(&c, &meta).0.unwrap();
        assert_eq!(mapping.opt_out.term, Code::new(LOCAL_TERMS, obs::REGISTER_OBJECTION));
        let mut terms = BTreeSet::new();
        for col in mapping.forms.iter().flat_map(|f| f.columns.iter()) {
            match &col.source {
                Source::Observation(t) => {
                    assert_eq!(t.system, LOCAL_TERMS);
                    terms.insert(t.code.clone());
                }
                Source::CountActivities(codes) => terms.extend(codes.iter().map(|c| c.code.clone())),
                Source::EpisodeJoint | Source::CourseHasJoint(_) | Source::CourseSides(_) => {}
            }
        }
        for t in [obs::PAIN_NRS, obs::EQ_VAS, obs::SIDE, obs::MAIN_JOINT, obs::EXERCISE_ADHERENCE, obs::EDUCATION_SESSIONS, obs::SUPERVISED_EXERCISE_SESSIONS] {
            assert!(terms.contains(t), "{t} is mapped");
        }
    }

    fn domain(data_type: &str, values: &[i64], min: Option<f64>, max: Option<f64>) -> Domain {
        Domain {
            domain_id: 1,
            domain_name: "d".into(),
            data_type: data_type.into(),
            is_enumerated: !values.is_empty(),
            domain_values: values.iter().map(|v| DomainValue { value_code: Value::from(*v), value_name: v.to_string(), sequence: None, is_active: true }).collect(),
            min,
            max,
        }
    }

    #[test]
    fn values_are_checked_against_type_list_and_range() {
        let nrs = domain("integer", &[], Some(0.0), Some(10.0));
        assert_eq!(fit(&nrs, &Value::from(10)), Ok(()));
        assert_eq!(fit(&nrs, &Value::from(11)), Err(Misfit::AboveMax(10.0)));
        assert!(matches!(fit(&nrs, &Value::from(true)), Err(Misfit::WrongType { .. })));
        assert!(matches!(fit(&nrs, &serde_json::json!(2.5)), Err(Misfit::WrongType { .. })));
        let joint = domain("integer", &[1, 2, 3], None, None);
        assert_eq!(fit(&joint, &Value::from(4)), Err(Misfit::NotListed));
        let toggle = domain("boolean", &[], None, None);
        assert!(matches!(fit(&toggle, &Value::from(1)), Err(Misfit::WrongType { .. })));
        let date = domain("date", &[], None, None);
        assert_eq!(fit(&date, &Value::from("2026-02-30")), Err(Misfit::NotADate));
        assert_eq!(fit(&date, &Value::from("2026-02-28")), Ok(()));
        // The reason never repeats the value.
        assert!(!Misfit::AboveMax(10.0).reason().contains("11"));
    }

    #[test]
    fn numbers_round_as_configured() {
        assert_eq!(convert_number(6.5, None, Rounding::Nearest, true), Ok(Value::from(7)));
        assert_eq!(convert_number(6.5, None, Rounding::Down, true), Ok(Value::from(6)));
        assert_eq!(convert_number(6.2, None, Rounding::Up, true), Ok(Value::from(7)));
        assert_eq!(convert_number(6.2, None, Rounding::Reject, true), Err(Misfit::TooManyDecimals));
        assert_eq!(convert_number(6.0, None, Rounding::Reject, true), Ok(Value::from(6)));
        assert_eq!(convert_number(82.46, Some(1), Rounding::Nearest, false), Ok(serde_json::json!(82.5)));
        assert_eq!(convert_number(82.46, None, Rounding::Nearest, false), Ok(serde_json::json!(82.46)));
        assert!(convert_number(f64::NAN, None, Rounding::Nearest, true).is_err());
    }
}
