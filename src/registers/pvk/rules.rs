//! PVK rule sets as data: `connectors/<name>/rules/<file>.toml`, one file per revision year.
//!
//! A file has four parts: `[rule_set]` (year, name, whether the whole set has been checked
//! against SKR's definitions), `[defaults]` (windows in months), `[code_sets.<name>]` (every code
//! list with its source and `verified` flag) and `[[indicators]]` (population, measure, variant).
//! Indicators refer to code sets by name, so one confirmed list serves several indicators and a
//! code added to a list changes every indicator using it without a code change.
//!
//! Loading collects every problem (file, key, reason) instead of stopping at the first one.

use crate::config::Problem;
use crate::model::{normalise_icd, OID_ICD10SE, OID_KVA, OID_SNOMED_SE};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The code "system" of drug code sets: ATC codes as the drug list file gives them.
pub const ATC: &str = "atc";

// ------------------------------------------------------------------------------- file format

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    rule_set: Header,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    code_sets: BTreeMap<String, CodeSetDef>,
    #[serde(default)]
    indicators: Vec<IndicatorDef>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    year: i32,
    name: String,
    #[serde(default)]
    description: Option<String>,
    verified: bool,
    #[serde(default)]
    note: Option<String>,
    /// The files the set was imported from (`pvk import`), or where it was written from.
    #[serde(default)]
    source: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Defaults {
    /// How far back a population diagnosis counts (VGR keeps 1.5 years of history).
    lookback_months: u32,
    /// Measurement window for actions.
    window_months: u32,
    /// Rehab units: a patient belongs to the unit if visited within this window.
    visit_window_months: u32,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults { lookback_months: 18, window_months: 12, visit_window_months: 12 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeSetKind {
    Diagnosis,
    Activity,
    Observation,
    Drug,
}

impl CodeSetKind {
    fn as_str(self) -> &'static str {
        match self {
            CodeSetKind::Diagnosis => "diagnosis",
            CodeSetKind::Activity => "activity",
            CodeSetKind::Observation => "observation",
            CodeSetKind::Drug => "drug",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchMode {
    /// `M17` matches `M170`, `M171`, …
    Prefix,
    Exact,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeSetDef {
    kind: CodeSetKind,
    /// `icd10se`, `kva`, `snomed`, `atc`, or an OID (e.g. a region's local keyword system).
    system: String,
    #[serde(default, rename = "match")]
    match_mode: Option<MatchMode>,
    codes: Vec<String>,
    verified: bool,
    /// URL or file the codes come from (or, for an empty list, where they must come from).
    source: String,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// Listed patients of a vårdcentral (needs listing data).
    Vardcentral,
    /// Visitors of a rehab unit in the period.
    Rehab,
    /// Both kinds of unit, each with its own base population.
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndicatorKind {
    /// Numerator: population members with a measure event; denominator: the population.
    Proportion,
    /// Numerator: base members in the population; denominator: the base (listed/visitors).
    Prevalence,
    /// Mångsökare: base members with more than `threshold` visits in a rolling window.
    FrequentAttenders,
    /// Vårdval follow-up (regional only): visits or unique patients of the configured
    /// professions at the unit in the calendar year so far, per full-time equivalent. Numerator:
    /// the count; denominator: the unit's FTE for the year in hundredths (`options.fte`).
    PerFte,
}

impl IndicatorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IndicatorKind::Proportion => "proportion",
            IndicatorKind::Prevalence => "prevalence",
            IndicatorKind::FrequentAttenders => "frequent_attenders",
            IndicatorKind::PerFte => "per_fte",
        }
    }
}

/// Which units' records count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Only records registered at the unit being computed.
    Unit,
    /// Records from any unit the source delivers.
    Any,
    /// Records from primary-care units only (`options.primary_care_units`, by default the
    /// connector's units): PVK extracts primary-care data; diagnoses set in hospital are not
    /// part of it (SKR osteoporos page, research/pvk-indicator-facts.md).
    PrimaryCare,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    /// The window ends with the reported month.
    #[default]
    Period,
    /// The window starts at the population's index date (new-onset indicators).
    Index,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Drug criterion narrows the diagnosis population (KOL: ≥2 maintenance drugs).
    And,
    /// Drug criterion is an alternative way into the population (Os: long cortisone use).
    Or,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CountMode {
    /// Every care contact counts.
    #[default]
    Contacts,
    /// Distinct days with a contact.
    Days,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndicatorDef {
    id: String,
    #[serde(default)]
    register_code: Option<String>,
    title: String,
    variant: Variant,
    kind: IndicatorKind,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    population: PopulationDef,
    #[serde(default)]
    measure: Option<MeasureDef>,
    #[serde(default)]
    frequent_attenders: Option<FrequentAttendersDef>,
    #[serde(default)]
    per_fte: Option<PerFteDef>,
    /// A regional measure (vårdval follow-up, FaR): register code starts with `REG`, shown and
    /// exported apart, never sent to the PVK register.
    #[serde(default)]
    regional: bool,
    /// Where the indicator's windows (look-back, measure window) come from.
    #[serde(default)]
    windows_source: Option<String>,
    /// SKR's definition is not public: what is missing. The indicator is then reported as
    /// "ej beräkningsbar: <this>" until a region's rule set fills it in.
    #[serde(default)]
    definition_missing: Option<String>,
    /// The id is not confirmed as SKR's: why (shown on pages and in `config check`).
    #[serde(default)]
    provisional: Option<String>,
}

/// What a per-FTE measure counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FteCount {
    /// Care contacts (visits) at the unit.
    Visits,
    /// Distinct patients with a visit at the unit.
    Patients,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PerFteDef {
    count: FteCount,
    /// Professions whose contacts count (empty: every profession).
    #[serde(default)]
    professions: Vec<String>,
    /// careContactCode values that count (empty: every contact type).
    #[serde(default)]
    contact_types: Vec<String>,
    /// The region's requirement per full-time equivalent and year.
    requirement: u32,
    /// Where the requirement comes from.
    source: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PopulationDef {
    everyone: bool,
    diagnoses: Vec<String>,
    lookback_months: Option<u32>,
    scope: Option<Scope>,
    min_age: Option<u32>,
    max_age: Option<u32>,
    new_onset: Option<NewOnsetDef>,
    drugs: Option<DrugCriterionDef>,
    visit_window_months: Option<u32>,
    /// careContactCode values that make a patient a visitor (empty: every contact type).
    visit_contact_types: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOnsetDef {
    /// No diagnosis from `exclude` (default: the population's own sets) in this many months
    /// before the index date.
    clear_months: u32,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrugCriterionDef {
    code_set: String,
    #[serde(default = "one")]
    min_distinct: u32,
    #[serde(default)]
    lookback_months: Option<u32>,
    combine: Combine,
    description: String,
    /// Prescribed treatment days (summed over the set's prescriptions in the look-back window)
    /// the criterion needs, e.g. "longer cortisone treatment". None: any prescription counts.
    #[serde(default)]
    min_days: Option<u32>,
    /// Whose prescriptions count: `unit` (signed at the unit computed; PVK's rule, VGR), `any`,
    /// or `primary_care`. Default: `unit` at a vårdcentral, `primary_care` at a rehab unit
    /// (which prescribes no drugs itself).
    #[serde(default)]
    scope: Option<Scope>,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MeasureDef {
    activities: Vec<String>,
    observations: Vec<String>,
    window_months: Option<u32>,
    anchor: Anchor,
    scope: Option<Scope>,
    /// Only events performed by these professions count (empty: any profession).
    professions: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FrequentAttendersDef {
    /// A patient counts with strictly more visits than this.
    #[serde(default = "twenty")]
    threshold: u32,
    #[serde(default = "twelve")]
    window_months: u32,
    /// careContactCode values that count as a visit (empty: every contact type).
    #[serde(default)]
    contact_types: Vec<String>,
    #[serde(default)]
    count: CountMode,
    #[serde(default)]
    scope: Option<Scope>,
}

fn twenty() -> u32 {
    20
}
fn twelve() -> u32 {
    12
}

// ------------------------------------------------------------------------------- compiled form

/// One code list, resolved (system as OID or `atc`, codes normalised).
#[derive(Clone, Debug, PartialEq)]
pub struct CodeSet {
    pub name: String,
    pub kind: CodeSetKind,
    pub system: String,
    pub match_mode: MatchMode,
    pub codes: Vec<String>,
    pub verified: bool,
    pub source: String,
    pub note: Option<String>,
}

impl CodeSet {
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// Does `(system, code)` belong to the set? Diagnosis codes are compared normalised.
    pub fn matches(&self, system: &str, code: &str) -> bool {
        if system != self.system {
            return false;
        }
        let normalised;
        let code = if self.kind == CodeSetKind::Diagnosis || self.system == OID_KVA || self.system == ATC {
            normalised = normalise_icd(code);
            normalised.as_str()
        } else {
            code.trim()
        };
        match self.match_mode {
            MatchMode::Exact => self.codes.iter().any(|c| c == code),
            MatchMode::Prefix => self.codes.iter().any(|c| code.starts_with(c.as_str())),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct NewOnset {
    pub clear_months: u32,
    /// Code set indices whose presence before the index date means "not new".
    pub exclude: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DrugCriterion {
    pub code_set: usize,
    pub min_distinct: u32,
    pub lookback_months: u32,
    pub combine: Combine,
    pub description: String,
    pub min_days: Option<u32>,
    pub scope: Option<Scope>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Population {
    pub everyone: bool,
    pub diagnoses: Vec<usize>,
    pub lookback_months: u32,
    pub scope: Option<Scope>,
    pub min_age: Option<u32>,
    pub max_age: Option<u32>,
    pub new_onset: Option<NewOnset>,
    pub drugs: Option<DrugCriterion>,
    pub visit_window_months: u32,
    pub visit_contact_types: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Measure {
    pub activities: Vec<usize>,
    pub observations: Vec<usize>,
    pub window_months: u32,
    pub anchor: Anchor,
    pub scope: Option<Scope>,
    pub professions: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FrequentAttenders {
    pub threshold: u32,
    pub window_months: u32,
    pub contact_types: Vec<String>,
    pub count: CountMode,
    pub scope: Option<Scope>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PerFte {
    pub count: FteCount,
    pub professions: Vec<String>,
    pub contact_types: Vec<String>,
    pub requirement: u32,
    pub source: String,
}

/// Register codes of regional measures start with this; nothing with it is ever sent to PVK.
pub const REGIONAL_PREFIX: &str = "REG";

/// Is this register code a regional measure's (never sent to the PVK register)?
pub fn is_regional_code(code: &str) -> bool {
    code.starts_with(REGIONAL_PREFIX)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Indicator {
    /// SKR's id as written (`T/S01`) or our name for a regional one.
    pub id: String,
    /// The register's `Indikator` ValueCode (`TS01`); also the `indicator` of result rows.
    pub register_code: String,
    pub title: String,
    pub variant: Variant,
    pub kind: IndicatorKind,
    pub note: Option<String>,
    pub population: Population,
    pub measure: Option<Measure>,
    pub frequent_attenders: Option<FrequentAttenders>,
    pub per_fte: Option<PerFte>,
    pub regional: bool,
    pub windows_source: Option<String>,
    pub definition_missing: Option<String>,
    pub provisional: Option<String>,
}

impl Indicator {
    /// "Ar12 – Andel patienter med …": how the indicator is named wherever it is shown.
    pub fn display_name(&self) -> String {
        format!("{} – {}", self.id, self.title)
    }
}

/// One revision year's rules, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSet {
    pub year: i32,
    pub name: String,
    pub description: Option<String>,
    pub verified: bool,
    pub note: Option<String>,
    pub source: Option<String>,
    pub file: PathBuf,
    pub code_sets: Vec<CodeSet>,
    pub indicators: Vec<Indicator>,
}

impl RuleSet {
    pub fn code_set(&self, name: &str) -> Option<&CodeSet> {
        self.code_sets.iter().find(|c| c.name == name)
    }

    pub fn indicator(&self, register_code: &str) -> Option<&Indicator> {
        self.indicators.iter().find(|i| i.register_code == register_code)
    }

    /// Every code set an indicator depends on.
    pub fn sets_of(&self, ind: &Indicator) -> Vec<usize> {
        let mut v = ind.population.diagnoses.clone();
        if let Some(n) = &ind.population.new_onset {
            v.extend(&n.exclude);
        }
        if let Some(d) = &ind.population.drugs {
            v.push(d.code_set);
        }
        if let Some(m) = &ind.measure {
            v.extend(&m.activities);
            v.extend(&m.observations);
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Names of the empty code lists an indicator depends on (it is not computable while any).
    pub fn missing_code_lists(&self, ind: &Indicator) -> Vec<&str> {
        self.sets_of(ind).into_iter().filter(|i| self.code_sets[*i].is_empty()).map(|i| self.code_sets[i].name.as_str()).collect()
    }

    /// What the rule set itself lacks for the indicator, in Swedish (None: beräkningsbar as far
    /// as the rules go; data such as listing, drug list or FTE is checked when computing).
    pub fn missing(&self, ind: &Indicator) -> Option<String> {
        let mut reasons = vec![];
        if let Some(d) = &ind.definition_missing {
            reasons.push(format!("SKR:s definition är inte offentlig ({})", d.trim()));
        }
        let lists = self.missing_code_lists(ind);
        if !lists.is_empty() {
            reasons.push(format!("kodlista saknas ({})", lists.join(", ")));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

// ------------------------------------------------------------------------------- loading

fn resolve_system(s: &str) -> Option<String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "icd10se" | "icd-10-se" => Some(OID_ICD10SE.to_string()),
        "kva" | "kvå" => Some(OID_KVA.to_string()),
        "snomed" | "snomed-ct-se" => Some(OID_SNOMED_SE.to_string()),
        "atc" => Some(ATC.to_string()),
        other => {
            let is_oid = !other.is_empty()
                && other.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                && other.contains('.');
            is_oid.then(|| s.trim().to_string())
        }
    }
}

fn valid_icd(code: &str, prefix: bool) -> bool {
    let b = code.as_bytes();
    let min = if prefix { 1 } else { 3 };
    b.len() >= min
        && b.len() <= 7
        && b[0].is_ascii_uppercase()
        && b[1..].iter().take(2).all(|c| c.is_ascii_digit())
        && b.iter().skip(3).all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
}

/// KVÅ codes: five characters, two letters, a letter or digit, two digits (DV200, NGB49).
pub fn valid_kva(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 5
        && b[0].is_ascii_uppercase()
        && b[1].is_ascii_uppercase()
        && (b[2].is_ascii_uppercase() || b[2].is_ascii_digit())
        && b[3].is_ascii_digit()
        && b[4].is_ascii_digit()
}

/// ICD-10-SE code shape (normalised, without dot): letter, two digits, up to four more.
pub fn valid_icd_code(code: &str) -> bool {
    valid_icd(code, false)
}

fn line_of(text: &str, offset: usize) -> String {
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    let content = text.lines().nth(line - 1).unwrap_or("").trim();
    format!("line {line} `{content}`")
}

/// Load and validate one rule file. `Err` holds every error found; `Ok` carries the warnings
/// (one per unverified code list, and one when the set as a whole is not verified).
pub fn load_file(path: &Path) -> Result<(RuleSet, Vec<Problem>), Vec<Problem>> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| vec![Problem::error(&label, "", format!("cannot read rule file: {e}"))])?;
    parse(&text, path)
}

/// Validate rule text as if read from `path` (used by `load_file` and by tests).
pub fn parse(text: &str, path: &Path) -> Result<(RuleSet, Vec<Problem>), Vec<Problem>> {
    let label = path.display().to_string();
    let file: RuleFile = toml::from_str(text).map_err(|e| {
        let key = e.span().map(|s| line_of(text, s.start)).unwrap_or_default();
        vec![Problem::error(&label, key, e.message().to_string())]
    })?;
    let mut errors = vec![];
    let mut warnings = vec![];
    let err = |errors: &mut Vec<Problem>, key: String, reason: String| errors.push(Problem::error(&label, key, reason));

    let d = &file.defaults;
    for (k, v) in [("defaults.lookback_months", d.lookback_months), ("defaults.window_months", d.window_months), ("defaults.visit_window_months", d.visit_window_months)] {
        if v == 0 || v > 120 {
            err(&mut errors, k.into(), "must be between 1 and 120 months".into());
        }
    }
    if !(2000..=2100).contains(&file.rule_set.year) {
        err(&mut errors, "rule_set.year".into(), "must be a revision year between 2000 and 2100".into());
    }

    // Code sets.
    let mut code_sets = vec![];
    let mut index = BTreeMap::new();
    for (name, def) in &file.code_sets {
        let key = format!("code_sets.{name}");
        let Some(system) = resolve_system(&def.system) else {
            err(&mut errors, format!("{key}.system"), format!("unknown code system '{}' (use icd10se, kva, snomed, atc or an OID)", def.system));
            continue;
        };
        if def.source.trim().is_empty() {
            err(&mut errors, format!("{key}.source"), "every code list must cite its source".into());
        }
        if def.verified && def.codes.is_empty() {
            err(&mut errors, format!("{key}.verified"), "an empty code list cannot be verified".into());
        }
        if !def.verified && def.note.as_deref().unwrap_or("").trim().is_empty() {
            err(&mut errors, format!("{key}.note"), "an unverified code list needs a note saying what must be checked or filled in".into());
        }
        let expect_system = match def.kind {
            CodeSetKind::Diagnosis => Some(OID_ICD10SE),
            CodeSetKind::Drug => Some(ATC),
            _ => None,
        };
        if let Some(s) = expect_system {
            if system != s {
                err(&mut errors, format!("{key}.system"), format!("a {} code set must use {}", def.kind.as_str(), if s == ATC { "atc" } else { "icd10se" }));
            }
        }
        let match_mode = def.match_mode.unwrap_or(match def.kind {
            CodeSetKind::Diagnosis | CodeSetKind::Drug => MatchMode::Prefix,
            _ => MatchMode::Exact,
        });
        let mut codes = vec![];
        let mut seen = BTreeSet::new();
        for (i, raw) in def.codes.iter().enumerate() {
            let ckey = format!("{key}.codes[{i}]");
            let code = if def.kind == CodeSetKind::Diagnosis || system == OID_KVA || system == ATC { normalise_icd(raw) } else { raw.trim().to_string() };
            if code.is_empty() {
                err(&mut errors, ckey, "empty code".into());
                continue;
            }
            if def.kind == CodeSetKind::Diagnosis && !valid_icd(&code, match_mode == MatchMode::Prefix) {
                err(&mut errors, ckey, format!("'{raw}' is not an ICD-10-SE code (letter, two digits, optional extension; no dot needed)"));
                continue;
            }
            if system == OID_KVA && match_mode == MatchMode::Exact && !valid_kva(&code) {
                err(&mut errors, ckey, format!("'{raw}' is not a KVÅ code (five characters such as DV200)"));
                continue;
            }
            if !seen.insert(code.clone()) {
                err(&mut errors, ckey, format!("'{raw}' is listed twice"));
                continue;
            }
            codes.push(code);
        }
        if !def.verified {
            let what = if codes.is_empty() { "empty and unverified".to_string() } else { format!("unverified ({} codes)", codes.len()) };
            warnings.push(Problem::warning(
                &label,
                &key,
                format!("{} code list is {what}: {}", def.kind.as_str(), def.note.as_deref().unwrap_or("").trim()),
            ));
        }
        index.insert(name.clone(), code_sets.len());
        code_sets.push(CodeSet {
            name: name.clone(),
            kind: def.kind,
            system,
            match_mode,
            codes,
            verified: def.verified,
            source: def.source.trim().to_string(),
            note: def.note.clone(),
        });
    }

    let resolve = |errors: &mut Vec<Problem>, key: &str, names: &[String], kinds: &[CodeSetKind]| -> Vec<usize> {
        let mut out = vec![];
        for (i, n) in names.iter().enumerate() {
            match index.get(n) {
                None => errors.push(Problem::error(&label, format!("{key}[{i}]"), format!("no code set named '{n}'"))),
                Some(&ix) => {
                    let k = code_sets[ix].kind;
                    if !kinds.contains(&k) {
                        let want = kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" or ");
                        errors.push(Problem::error(&label, format!("{key}[{i}]"), format!("code set '{n}' is a {} set; {want} expected", k.as_str())));
                    } else {
                        out.push(ix);
                    }
                }
            }
        }
        out
    };

    // Indicators.
    let mut indicators = vec![];
    let mut ids = BTreeSet::new();
    let mut codes = BTreeSet::new();
    for (i, def) in file.indicators.iter().enumerate() {
        let key = format!("indicators[{i}] ({})", def.id);
        if def.id.trim().is_empty() {
            err(&mut errors, format!("indicators[{i}].id"), "missing".into());
        }
        if !ids.insert(def.id.clone()) {
            err(&mut errors, format!("{key}.id"), format!("indicator '{}' is defined twice", def.id));
        }
        let register_code = def.register_code.clone().unwrap_or_else(|| def.id.clone());
        if register_code.is_empty() || !register_code.bytes().all(|b| b.is_ascii_alphanumeric()) {
            err(&mut errors, format!("{key}.register_code"), format!("'{register_code}' must be letters and digits only (give register_code explicitly for ids like T/S01)"));
        }
        if def.regional != is_regional_code(&register_code) {
            let why = if def.regional { format!("a regional measure's register code starts with {REGIONAL_PREFIX}") } else { format!("only regional measures (regional = true) use register codes starting with {REGIONAL_PREFIX}") };
            err(&mut errors, format!("{key}.register_code"), format!("'{register_code}': {why}"));
        }
        if def.kind == IndicatorKind::PerFte && !def.regional {
            err(&mut errors, format!("{key}.regional"), "a per_fte measure is a regional vårdval follow-up (regional = true)".into());
        }
        if def.definition_missing.as_deref().is_some_and(|d| d.trim().is_empty()) {
            err(&mut errors, format!("{key}.definition_missing"), "say what is missing".into());
        }
        if !codes.insert(register_code.clone()) {
            err(&mut errors, format!("{key}.register_code"), format!("register code '{register_code}' is used twice"));
        }
        if def.title.trim().is_empty() {
            err(&mut errors, format!("{key}.title"), "missing".into());
        }
        let p = &def.population;
        let diagnoses = resolve(&mut errors, &format!("{key}.population.diagnoses"), &p.diagnoses, &[CodeSetKind::Diagnosis]);
        if p.everyone && (!p.diagnoses.is_empty() || p.drugs.is_some() || p.new_onset.is_some()) {
            err(&mut errors, format!("{key}.population.everyone"), "everyone = true cannot be combined with diagnoses, drugs or new_onset".into());
        }
        let needs_cohort = !matches!(def.kind, IndicatorKind::FrequentAttenders | IndicatorKind::PerFte);
        let drug_or = p.drugs.as_ref().is_some_and(|d| d.combine == Combine::Or);
        if needs_cohort && !p.everyone && p.diagnoses.is_empty() && !drug_or && def.definition_missing.is_none() {
            err(&mut errors, format!("{key}.population"), "give diagnoses (code set names), a drug criterion with combine = \"or\", or everyone = true".into());
        }
        if !needs_cohort && (!p.diagnoses.is_empty() || p.drugs.is_some() || p.new_onset.is_some()) {
            err(&mut errors, format!("{key}.population"), format!("a {} indicator counts the whole base population; diagnoses, drugs and new_onset do not apply", def.kind.as_str()));
        }
        if let (Some(lo), Some(hi)) = (p.min_age, p.max_age) {
            if lo > hi {
                err(&mut errors, format!("{key}.population.min_age"), "min_age is above max_age".into());
            }
        }
        let lookback_months = p.lookback_months.unwrap_or(d.lookback_months);
        let visit_window_months = p.visit_window_months.unwrap_or(d.visit_window_months);
        for (k, v) in [("lookback_months", lookback_months), ("visit_window_months", visit_window_months)] {
            if v == 0 || v > 120 {
                err(&mut errors, format!("{key}.population.{k}"), "must be between 1 and 120 months".into());
            }
        }
        let new_onset = p.new_onset.as_ref().map(|n| {
            if n.clear_months == 0 || n.clear_months > 120 {
                err(&mut errors, format!("{key}.population.new_onset.clear_months"), "must be between 1 and 120 months".into());
            }
            let exclude = if n.exclude.is_empty() {
                diagnoses.clone()
            } else {
                resolve(&mut errors, &format!("{key}.population.new_onset.exclude"), &n.exclude, &[CodeSetKind::Diagnosis])
            };
            NewOnset { clear_months: n.clear_months, exclude }
        });
        let drugs = p.drugs.as_ref().and_then(|dc| {
            let ix = resolve(&mut errors, &format!("{key}.population.drugs.code_set"), std::slice::from_ref(&dc.code_set), &[CodeSetKind::Drug]);
            if dc.min_distinct == 0 {
                err(&mut errors, format!("{key}.population.drugs.min_distinct"), "must be at least 1".into());
            }
            if dc.description.trim().is_empty() {
                err(&mut errors, format!("{key}.population.drugs.description"), "describe the requirement (it is shown when the indicator cannot be computed)".into());
            }
            if dc.min_days.is_some_and(|d| d == 0 || d > 3650) {
                err(&mut errors, format!("{key}.population.drugs.min_days"), "must be between 1 and 3650 days".into());
            }
            ix.first().map(|&code_set| DrugCriterion {
                code_set,
                min_distinct: dc.min_distinct,
                lookback_months: dc.lookback_months.unwrap_or(lookback_months),
                combine: dc.combine,
                description: dc.description.trim().to_string(),
                min_days: dc.min_days,
                scope: dc.scope,
            })
        });
        let undefined = def.definition_missing.is_some();
        let measure = match (def.kind, &def.measure) {
            // SKR's definition is not public: the indicator is declared, never computed.
            (IndicatorKind::Proportion, None) if undefined => None,
            (IndicatorKind::Proportion, None) => {
                err(&mut errors, format!("{key}.measure"), "a proportion indicator needs a measure (activity or observation code sets)".into());
                None
            }
            (IndicatorKind::Proportion, Some(m)) => {
                let activities = resolve(&mut errors, &format!("{key}.measure.activities"), &m.activities, &[CodeSetKind::Activity]);
                let observations = resolve(&mut errors, &format!("{key}.measure.observations"), &m.observations, &[CodeSetKind::Observation]);
                if m.activities.is_empty() && m.observations.is_empty() {
                    err(&mut errors, format!("{key}.measure"), "name at least one activity or observation code set (an empty list is declared in [code_sets], not left out)".into());
                }
                let window_months = m.window_months.unwrap_or(d.window_months);
                if window_months == 0 || window_months > 120 {
                    err(&mut errors, format!("{key}.measure.window_months"), "must be between 1 and 120 months".into());
                }
                if m.anchor == Anchor::Index && p.everyone {
                    err(&mut errors, format!("{key}.measure.anchor"), "anchor = \"index\" needs a diagnosis population".into());
                }
                Some(Measure { activities, observations, window_months, anchor: m.anchor, scope: m.scope, professions: m.professions.clone() })
            }
            (_, Some(_)) => {
                err(&mut errors, format!("{key}.measure"), format!("a {} indicator has no measure", def.kind.as_str()));
                None
            }
            (_, None) => None,
        };
        let frequent_attenders = match (def.kind, &def.frequent_attenders) {
            (IndicatorKind::FrequentAttenders, Some(f)) => {
                if f.window_months == 0 || f.window_months > 120 {
                    err(&mut errors, format!("{key}.frequent_attenders.window_months"), "must be between 1 and 120 months".into());
                }
                Some(FrequentAttenders { threshold: f.threshold, window_months: f.window_months, contact_types: f.contact_types.clone(), count: f.count, scope: f.scope })
            }
            (IndicatorKind::FrequentAttenders, None) => Some(FrequentAttenders { threshold: 20, window_months: 12, contact_types: vec![], count: CountMode::Contacts, scope: None }),
            (_, Some(_)) => {
                err(&mut errors, format!("{key}.frequent_attenders"), "only for kind = \"frequent_attenders\"".into());
                None
            }
            (_, None) => None,
        };
        let per_fte = match (def.kind, &def.per_fte) {
            (IndicatorKind::PerFte, Some(f)) => {
                if f.requirement == 0 {
                    err(&mut errors, format!("{key}.per_fte.requirement"), "must be above 0".into());
                }
                if f.source.trim().is_empty() {
                    err(&mut errors, format!("{key}.per_fte.source"), "cite where the requirement comes from".into());
                }
                Some(PerFte { count: f.count, professions: f.professions.clone(), contact_types: f.contact_types.clone(), requirement: f.requirement, source: f.source.trim().to_string() })
            }
            (IndicatorKind::PerFte, None) => {
                err(&mut errors, format!("{key}.per_fte"), "a per_fte measure needs [indicators.per_fte] (count, requirement, source)".into());
                None
            }
            (_, Some(_)) => {
                err(&mut errors, format!("{key}.per_fte"), "only for kind = \"per_fte\"".into());
                None
            }
            (_, None) => None,
        };
        indicators.push(Indicator {
            id: def.id.clone(),
            register_code,
            title: def.title.trim().to_string(),
            variant: def.variant,
            kind: def.kind,
            note: def.note.clone(),
            population: Population {
                everyone: p.everyone,
                diagnoses,
                lookback_months,
                scope: p.scope,
                min_age: p.min_age,
                max_age: p.max_age,
                new_onset,
                drugs,
                visit_window_months,
                visit_contact_types: p.visit_contact_types.clone(),
            },
            measure,
            frequent_attenders,
            per_fte,
            regional: def.regional,
            windows_source: def.windows_source.clone(),
            definition_missing: def.definition_missing.as_ref().map(|d| d.trim().to_string()),
            provisional: def.provisional.clone(),
        });
    }
    if indicators.is_empty() && errors.is_empty() {
        err(&mut errors, "indicators".into(), "the rule set defines no indicators".into());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let rs = RuleSet {
        year: file.rule_set.year,
        name: file.rule_set.name.clone(),
        description: file.rule_set.description.clone(),
        verified: file.rule_set.verified,
        note: file.rule_set.note.clone(),
        source: file.rule_set.source.clone(),
        file: path.to_path_buf(),
        code_sets,
        indicators,
    };
    // Per-indicator computability is not a warning here: `config check` lists every indicator
    // as "beräkningsbar" or with what it lacks (`pvk::indicator_report`).
    if !rs.verified {
        warnings.push(Problem::warning(&label, "rule_set.verified", format!("rule set '{}' is not verified against SKR's indicator definitions: {}", rs.name, rs.note.as_deref().unwrap_or("").trim())));
    }
    Ok((rs, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icd_and_kva_shapes() {
        assert!(valid_icd("M17", true));
        assert!(valid_icd("F438A", false));
        assert!(!valid_icd("17M", true));
        assert!(valid_kva("DV200"));
        assert!(valid_kva("NGB49"));
        assert!(!valid_kva("DV20"));
    }

    #[test]
    fn prefix_and_exact_match() {
        let set = CodeSet {
            name: "x".into(),
            kind: CodeSetKind::Diagnosis,
            system: OID_ICD10SE.into(),
            match_mode: MatchMode::Prefix,
            codes: vec!["M17".into()],
            verified: true,
            source: "s".into(),
            note: None,
        };
        assert!(set.matches(OID_ICD10SE, "M17.1"));
        assert!(set.matches(OID_ICD10SE, "m171"));
        assert!(!set.matches(OID_ICD10SE, "M18"));
        assert!(!set.matches(OID_KVA, "M171"));
    }
}
