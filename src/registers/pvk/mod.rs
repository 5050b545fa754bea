//! Primärvårdskvalitet (PVK): indicator rules as data, a pure engine that turns canonical
//! records into unit-by-month numerators and denominators with the patient lists behind them,
//! aggregates for delivery, and a data-quality report.
//!
//! What leaves the region is only the aggregate (`aggregate_intents`, `sinks::export`); the patient
//! lists stay in the store, encrypted. This module reads its own rule, listing and drug-list files
//! and does no other I/O.
//!
//! Connector options (`[options]` in `connector.toml`):
//! ```toml
//! rule_years = [2026]                  # rules/<year>.toml; or rule_files = ["sandbox-2026.toml"]
//! rules_dir = "rules"                  # relative to the connector folder
//! vardcentraler = ["SE…-VC01"]         # units computed with the listed-population variants;
//!                                      # every other unit is a rehab unit (visitors)
//! listing = { file = "listing.csv" }   # or { sql = "SELECT personnummer, hsa_id[, listad_from, listad_tom] …", url = { env = "…" } }
//!                                      # optional period columns: the snapshot of each computed month
//! drug_list = { file = "drugs.csv" }   # prescriptions signed (personnummer, atc, date, days, prescriber unit)
//! primary_care_units = ["SE…"]         # units whose diagnoses count as primary care's (default: `units`)
//! fte = { "SE…-FT01" = { "2026" = 2.5 } }  # full-time physiotherapists per unit and year (vårdval)
//! small_cells = { threshold = 5, mode = "suppress" }   # or mode = "flag"
//! physician_professions = ["LAKARE"]   # profession codes that count as physician (quality report)
//! register_metadata = "…/pvk-aggregate.json"  # offline `config check` of indicator codes
//! ```

pub mod aggregate;
pub mod engine;
pub mod import;
pub mod quality;
pub mod rules;

pub use aggregate::{aggregate_intents, aggregate_plan, AggregatePlan, Skipped, FORM_NAME};
pub use engine::{Computation, ComputeInput, ListSpill, MemorySpill, PatientLists, PatientRecords, PvkOutput};
pub use rules::{CodeSet, Indicator, IndicatorKind, RuleSet, Variant};

use crate::config::{ConnectorDef, ConnectorKind, Loaded, Problem, Secret};
use crate::crypto::Pseudonymizer;
use crate::model::{HsaId, PatientId};
use crate::registers::metadata::RegisterMetadata;
use chrono::NaiveDate;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// What the export files say about an indicator besides its code (from the rule set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndicatorLabel {
    /// "Ar12 – Andel patienter med artros som deltagit i artrosskola".
    pub name: String,
    /// Per-FTE measures: the region's requirement per full-time equivalent and year.
    pub per_fte_requirement: Option<u32>,
}

/// Labels by (rule year, register code).
pub type Labels = std::collections::BTreeMap<(i32, String), IndicatorLabel>;

// ------------------------------------------------------------------------------- options

/// Start of the note on a small cell that is sent flagged (the export marks it `SmallCell`).
pub const SMALL_CELL_FLAG: &str = "small cell:";

/// Start of the note of a cell that cannot be computed, followed by what is missing.
pub const NOT_COMPUTABLE: &str = "ej beräkningsbar:";

pub use rules::{is_regional_code, REGIONAL_PREFIX};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SmallCellMode {
    /// The cell is marked suppressed and is not sent; the local row keeps its numbers.
    #[default]
    Suppress,
    /// The cell is sent as computed, with a note.
    Flag,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmallCellPolicy {
    /// Counts from 1 up to (not including) this are small cells.
    pub threshold: u32,
    pub mode: SmallCellMode,
}

impl Default for SmallCellPolicy {
    fn default() -> Self {
        SmallCellPolicy { threshold: 5, mode: SmallCellMode::Suppress }
    }
}

/// Where listing (or drug) data comes from: a file this module reads, or a SQL query the
/// pipeline runs and hands over as rows ([`Listing::from_rows`]).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub url: Option<Secret>,
    /// How many columns the query returns: a listing 2 (personnummer, hsa_id) or 4 (+ listed
    /// from, listed until, `YYYY-MM-DD` or NULL); a drug list 3 (personnummer, atc, date) or 5
    /// (+ prescribed days, prescriber's unit HSA id).
    #[serde(default)]
    pub columns: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
struct OptionsDef {
    rule_years: Vec<i32>,
    rule_files: Vec<String>,
    rules_dir: Option<PathBuf>,
    vardcentraler: Vec<String>,
    listing: Option<DataSource>,
    drug_list: Option<DataSource>,
    small_cells: SmallCellPolicy,
    physician_professions: Vec<String>,
    register_metadata: Option<PathBuf>,
    primary_care_units: Option<Vec<String>>,
    fte: BTreeMap<String, BTreeMap<String, f64>>,
}

const KNOWN_OPTIONS: &[&str] = &[
    "rule_years",
    "rule_files",
    "rules_dir",
    "vardcentraler",
    "listing",
    "drug_list",
    "small_cells",
    "physician_professions",
    "register_metadata",
    "exports",
    "months",
    "primary_care_units",
    "fte",
    "import",
];

/// The connector options the engine uses, validated.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub rules_dir: PathBuf,
    pub vardcentraler: BTreeSet<HsaId>,
    pub listing: Option<DataSource>,
    pub drug_list: Option<DataSource>,
    pub small_cells: SmallCellPolicy,
    pub physician_professions: Vec<String>,
    pub register_metadata: Option<PathBuf>,
    /// HSA ids of primary-care units (diagnosis scope `primary_care`).
    pub primary_care_units: BTreeSet<String>,
    /// Full-time equivalents (hundredths) per (unit HSA id, year), for per-FTE measures.
    pub fte: BTreeMap<(String, i32), i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnitKind {
    Vardcentral,
    Rehab,
}

impl UnitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Vardcentral => "vardcentral",
            UnitKind::Rehab => "rehab",
        }
    }
}

/// Loaded rule sets plus the connector's options. Cheap to share; `compute` borrows it.
#[derive(Clone, Debug)]
pub struct PvkEngine {
    pub connector: String,
    pub options: EngineOptions,
    pub rule_sets: Vec<RuleSet>,
    /// Warnings found while loading (unverified code lists, indicators not computable as shipped).
    pub warnings: Vec<Problem>,
}

fn resolve_path(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

impl PvkEngine {
    /// Read the connector's options and rule files. Every error is returned (file, key, reason).
    pub fn load(connector: &ConnectorDef) -> Result<PvkEngine, Vec<Problem>> {
        let cfile = connector.dir.join("connector.toml").display().to_string();
        let mut errors = vec![];
        let mut warnings = vec![];
        for k in connector.options.keys() {
            if !KNOWN_OPTIONS.contains(&k.as_str()) {
                warnings.push(Problem::warning(&cfile, format!("options.{k}"), "unknown PVK option (ignored)"));
            }
        }
        let def: OptionsDef = match toml::Value::Table(connector.options.clone()).try_into() {
            Ok(d) => d,
            Err(e) => return Err(vec![Problem::error(&cfile, "options", e.message().to_string())]),
        };
        let rules_dir = resolve_path(&connector.dir, def.rules_dir.as_deref().unwrap_or(Path::new("rules")));
        let mut files: Vec<(String, PathBuf, Option<i32>)> = vec![];
        for (i, y) in def.rule_years.iter().enumerate() {
            files.push((format!("options.rule_years[{i}]"), rules_dir.join(format!("{y}.toml")), Some(*y)));
        }
        for (i, f) in def.rule_files.iter().enumerate() {
            if f.contains("..") || f.contains('/') || f.contains('\\') {
                errors.push(Problem::error(&cfile, format!("options.rule_files[{i}]"), "a rule file name, not a path (files live in rules_dir)"));
                continue;
            }
            files.push((format!("options.rule_files[{i}]"), rules_dir.join(f), None));
        }
        if files.is_empty() {
            errors.push(Problem::error(&cfile, "options.rule_years", "no PVK rule set configured (rule_years = [2026] or rule_files = [\"…\"])"));
        }
        let mut rule_sets: Vec<RuleSet> = vec![];
        for (key, path, year) in files {
            if !path.exists() {
                errors.push(Problem::error(&cfile, &key, format!("rule file {} not found", path.display())));
                continue;
            }
            match rules::load_file(&path) {
                Ok((rs, mut w)) => {
                    if let Some(y) = year {
                        if rs.year != y {
                            errors.push(Problem::error(path.display().to_string(), "rule_set.year", format!("file is named for {y} but declares year {}", rs.year)));
                        }
                    }
                    if rule_sets.iter().any(|o| o.year == rs.year) {
                        errors.push(Problem::error(&cfile, &key, format!("two rule sets for revision year {} (results are keyed by rule year)", rs.year)));
                    }
                    warnings.append(&mut w);
                    rule_sets.push(rs);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        let mut vardcentraler = BTreeSet::new();
        for (i, u) in def.vardcentraler.iter().enumerate() {
            match HsaId::parse(u) {
                Ok(h) => {
                    if !connector.units.iter().any(|c| c == h.as_str()) {
                        errors.push(Problem::error(&cfile, format!("options.vardcentraler[{i}]"), format!("{u} is not one of the connector's units")));
                    }
                    vardcentraler.insert(h);
                }
                Err(e) => errors.push(Problem::error(&cfile, format!("options.vardcentraler[{i}]"), e.to_string())),
            }
        }
        for (name, src) in [("listing", &def.listing), ("drug_list", &def.drug_list)] {
            let Some(src) = src else { continue };
            match (&src.file, &src.sql) {
                (Some(f), None) => {
                    let full = resolve_path(&connector.dir, f);
                    if !full.exists() {
                        errors.push(Problem::error(&cfile, format!("options.{name}.file"), format!("file {} not found", full.display())));
                    }
                }
                (None, Some(_)) => {
                    let allowed: &[usize] = if name == "listing" { &[2, 4] } else { &[3, 5] };
                    if src.columns.is_some_and(|n| !allowed.contains(&n)) {
                        errors.push(Problem::error(&cfile, format!("options.{name}.columns"), format!("{} or {} columns", allowed[0], allowed[1])));
                    }
                    match &src.url {
                        None => errors.push(Problem::error(&cfile, format!("options.{name}.url"), "a SQL source needs url (a secret: { env = \"…\" } or { file = \"…\" })")),
                        Some(url) => crate::config::check_pg_tls(&mut warnings, &cfile, &format!("options.{name}.url"), url),
                    }
                }
                _ => errors.push(Problem::error(&cfile, format!("options.{name}"), "give exactly one of file or sql")),
            }
        }
        let primary_care_units: BTreeSet<String> = match &def.primary_care_units {
            Some(list) => {
                for (i, u) in list.iter().enumerate() {
                    if let Err(e) = HsaId::parse(u) {
                        errors.push(Problem::error(&cfile, format!("options.primary_care_units[{i}]"), e.to_string()));
                    }
                }
                list.iter().cloned().collect()
            }
            None => connector.units.iter().cloned().collect(),
        };
        let mut fte = BTreeMap::new();
        for (unit, years) in &def.fte {
            if !connector.units.iter().any(|c| c == unit) {
                errors.push(Problem::error(&cfile, format!("options.fte.\"{unit}\""), "not one of the connector's units"));
            }
            for (year, v) in years {
                let key = format!("options.fte.\"{unit}\".\"{year}\"");
                match year.parse::<i32>() {
                    Ok(y) if (2000..=2100).contains(&y) && *v > 0.0 && *v <= 1000.0 => {
                        fte.insert((unit.clone(), y), (v * 100.0).round() as i64);
                    }
                    Ok(_) => errors.push(Problem::error(&cfile, key, "a year 2000–2100 and a number of full-time equivalents above 0")),
                    Err(_) => errors.push(Problem::error(&cfile, key, "the key is a year, e.g. \"2026\" = 2.5")),
                }
            }
        }
        if def.small_cells.threshold > 100 {
            errors.push(Problem::error(&cfile, "options.small_cells.threshold", "unreasonably high (at most 100)"));
        }
        if !vardcentraler.is_empty() && def.listing.is_none() {
            warnings.push(Problem::warning(
                &cfile,
                "options.listing",
                "vårdcentraler are configured but no listing source: their indicators will be reported as not computable",
            ));
        }
        if !errors.is_empty() {
            // Warnings travel with the errors so `config check` shows them all at once.
            errors.append(&mut warnings);
            return Err(errors);
        }
        rule_sets.sort_by_key(|r| r.year);
        let listing = def.listing.map(|mut s| {
            s.file = s.file.map(|f| resolve_path(&connector.dir, &f));
            s
        });
        let drug_list = def.drug_list.map(|mut s| {
            s.file = s.file.map(|f| resolve_path(&connector.dir, &f));
            s
        });
        Ok(PvkEngine {
            connector: connector.name.clone(),
            options: EngineOptions {
                rules_dir,
                vardcentraler,
                listing,
                drug_list,
                small_cells: def.small_cells,
                physician_professions: def.physician_professions,
                register_metadata: def.register_metadata.map(|p| resolve_path(&connector.dir, &p)),
                primary_care_units,
                fte,
            },
            rule_sets,
            warnings,
        })
    }

    pub fn rule_set(&self, year: i32) -> Option<&RuleSet> {
        self.rule_sets.iter().find(|r| r.year == year)
    }

    /// The indicator behind a result row (for titles on the admin pages).
    pub fn indicator(&self, rule_year: i32, register_code: &str) -> Option<&Indicator> {
        self.rule_set(rule_year)?.indicator(register_code)
    }

    /// The unit's configured full-time equivalents for the year, in hundredths.
    pub fn fte_hundredths(&self, unit: &HsaId, year: i32) -> Option<i64> {
        self.options.fte.get(&(unit.as_str().to_string(), year)).copied()
    }

    /// Every indicator of every rule set with what it lacks (None: beräkningsbar), for
    /// `config check`, the admin summary and the API.
    pub fn computability(&self) -> Vec<(&RuleSet, &Indicator, Option<String>)> {
        let mut out = vec![];
        for rs in &self.rule_sets {
            for ind in &rs.indicators {
                let mut why: Vec<String> = rs.missing(ind).into_iter().collect();
                let vc_only = ind.variant == Variant::Vardcentral;
                if vc_only && self.options.listing.is_none() {
                    why.push("listningsdata saknas (options.listing)".into());
                }
                if let Some(d) = &ind.population.drugs {
                    if self.options.drug_list.is_none() {
                        why.push(format!("läkemedelsdata saknas ({}; options.drug_list)", d.description));
                    }
                }
                if ind.kind == IndicatorKind::PerFte && self.options.fte.is_empty() {
                    why.push("årsarbetskrafter saknas (options.fte)".into());
                }
                out.push((rs, ind, (!why.is_empty()).then(|| why.join("; "))));
            }
        }
        out
    }

    /// Names (and per-FTE requirements) of every indicator, for export files.
    pub fn labels(&self) -> Labels {
        let mut out = Labels::new();
        for rs in &self.rule_sets {
            for ind in &rs.indicators {
                out.insert(
                    (rs.year, ind.register_code.clone()),
                    IndicatorLabel { name: ind.display_name(), per_fte_requirement: ind.per_fte.as_ref().map(|f| f.requirement) },
                );
            }
        }
        out
    }

    /// One short Swedish line for the admin overview: how many PVK indicators can be computed.
    pub fn summary(&self) -> String {
        let all = self.computability();
        let national: Vec<_> = all.iter().filter(|(_, i, _)| !i.regional).collect();
        let ok = national.iter().filter(|(_, _, w)| w.is_none()).count();
        let no_def = national.iter().filter(|(_, i, _)| i.definition_missing.is_some()).count();
        let regional = all.len() - national.len();
        let regional_ok = all.iter().filter(|(_, i, w)| i.regional && w.is_none()).count();
        format!(
            "PVK ({}): {ok} av {} indikatorer beräkningsbara; {} saknar kodlistor eller data, {no_def} saknar offentlig definition. Regionala mått: {regional_ok} av {regional}. Detaljer: registerbrygga config check.",
            self.connector,
            national.len(),
            national.len() - ok - national.iter().filter(|(_, i, w)| w.is_some() && i.definition_missing.is_some()).count(),
        )
    }

    pub fn unit_kind(&self, unit: &HsaId) -> UnitKind {
        if self.options.vardcentraler.contains(unit) {
            UnitKind::Vardcentral
        } else {
            UnitKind::Rehab
        }
    }

    /// Read the configured listing file (`None` when no listing or a SQL listing is configured:
    /// the pipeline runs the query and builds the listing with [`Listing::from_rows`]).
    pub fn read_listing(&self, today: NaiveDate, pseudo: &Pseudonymizer) -> anyhow::Result<Option<Listing>> {
        match self.options.listing.as_ref().and_then(|s| s.file.as_ref()) {
            Some(f) => Ok(Some(Listing::read_file(f, today, pseudo)?)),
            None => Ok(None),
        }
    }

    /// The configured listing query (`listing = { sql = …, url = …, columns = 2 | 4 }`), which
    /// the caller runs (I/O stays at the edges) and hands to [`Listing::from_dated_rows`].
    pub fn listing_query(&self) -> Option<(&Secret, &str, usize)> {
        self.options.listing.as_ref().and_then(|s| Some((s.url.as_ref()?, s.sql.as_deref()?, s.columns.unwrap_or(2))))
    }

    /// The configured drug-list query (rows of personnummer, ATC code, date signed
    /// `YYYY-MM-DD`, and with `columns = 5` prescribed days and the prescriber's unit).
    pub fn drug_list_query(&self) -> Option<(&Secret, &str, usize)> {
        self.options.drug_list.as_ref().and_then(|s| Some((s.url.as_ref()?, s.sql.as_deref()?, s.columns.unwrap_or(3))))
    }

    /// Read the configured drug-list file (same rules as the listing).
    pub fn read_drug_list(&self, today: NaiveDate) -> anyhow::Result<Option<DrugList>> {
        match self.options.drug_list.as_ref().and_then(|s| s.file.as_ref()) {
            Some(f) => Ok(Some(DrugList::read_file(f, today)?)),
            None => Ok(None),
        }
    }
}

// ------------------------------------------------------------------------------- listing

/// One listing period: who (for the local patient list), their pseudonym, where listed, and
/// from/until when (open ends: listed before the data begins / still listed). Kept small: a
/// region's listing is every inhabitant, so each period is read once and held for the whole
/// computation (the pseudonym as its 12 bytes, the vårdcentral as an index into the listing's
/// units).
#[derive(Clone, Debug)]
pub struct ListedPatient {
    /// The personnummer or samordningsnummer, 12 digits (a listing holds national ids only).
    id: [u8; 12],
    key: [u8; 12],
    unit: u16,
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

impl ListedPatient {
    fn covers(&self, d: NaiveDate) -> bool {
        self.from.map_or(true, |f| f <= d) && self.to.map_or(true, |t| d <= t)
    }

    /// The period with its open ends closed at the calendar's ends.
    fn span(&self) -> (NaiveDate, NaiveDate) {
        (self.from.unwrap_or(NaiveDate::MIN), self.to.unwrap_or(NaiveDate::MAX))
    }

    fn overlaps(&self, other: &ListedPatient) -> bool {
        let ((a, b), (c, d)) = (self.span(), other.span());
        a <= d && c <= b
    }

    /// The patient's pseudonym, as [`Pseudonymizer::patient_key`] writes it.
    pub fn patient_key(&self) -> String {
        hex::encode(self.key)
    }

    /// The patient's identity.
    pub fn patient(&self) -> PatientId {
        let digits = std::str::from_utf8(&self.id).expect("ASCII digits");
        // Parsed when the listing was read, so it parses again; the date only matters for
        // ten-digit input.
        PatientId::parse_national(digits, NaiveDate::MAX).expect("a listing holds valid national ids")
    }
}

/// Listed population: personnummer → the vårdcentral the patient is listed at, per period.
/// The engine takes a snapshot per computed month (listed on the month's last day counted), so
/// a patient who moves between vårdcentraler counts at the old one before and the new one after.
/// A listing without periods is one snapshot valid for every month.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Sorted by the patient's identity, so a patient's periods are adjacent and found by
    /// binary search (no map from identity to periods beside them).
    entries: Vec<ListedPatient>,
    units: Vec<HsaId>,
    /// Line numbers (1-based) refused: invalid identity, HSA id or date, or an overlapping period.
    pub refused_lines: Vec<usize>,
}

fn split_line(line: &str) -> Vec<&str> {
    let sep = if line.contains(';') { ';' } else if line.contains('\t') { '\t' } else { ',' };
    line.split(sep).map(|s| s.trim().trim_matches('"')).collect()
}

/// An optional date column: empty is open, otherwise `YYYY-MM-DD`.
fn opt_date(s: Option<&str>) -> Result<Option<NaiveDate>, ()> {
    match s.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d").map(Some).map_err(|_| ()),
    }
}

/// A listing being read: periods that parsed, in input order with their row numbers; overlaps
/// are settled once all rows are in ([`ListingBuilder::finish`]).
struct ListingBuilder<'p> {
    today: NaiveDate,
    pseudo: &'p Pseudonymizer,
    rows: Vec<(usize, ListedPatient)>,
    units: Vec<HsaId>,
    unit_index: HashMap<String, u16>,
    refused_lines: Vec<usize>,
}

impl<'p> ListingBuilder<'p> {
    fn new(today: NaiveDate, pseudo: &'p Pseudonymizer) -> ListingBuilder<'p> {
        ListingBuilder { today, pseudo, rows: vec![], units: vec![], unit_index: HashMap::new(), refused_lines: vec![] }
    }

    fn row(&mut self, line: usize, id: &str, unit: &str, from: Option<&str>, to: Option<&str>) {
        match self.period(id, unit, from, to) {
            Some(e) => self.rows.push((line, e)),
            None => self.refused_lines.push(line),
        }
    }

    /// One row as a period; `None` refuses it (bad identity, HSA id or dates, or more
    /// vårdcentraler than a `u16` counts, which no region has).
    fn period(&mut self, id: &str, unit: &str, from: Option<&str>, to: Option<&str>) -> Option<ListedPatient> {
        let (Ok(patient), Ok(unit), Ok(from), Ok(to)) = (PatientId::parse_national(id, self.today), HsaId::parse(unit), opt_date(from), opt_date(to)) else {
            return None;
        };
        if from.zip(to).is_some_and(|(f, t)| f > t) {
            return None;
        }
        let unit = match self.unit_index.get(unit.as_str()) {
            Some(&u) => u,
            None => {
                let u = u16::try_from(self.units.len()).ok()?;
                self.unit_index.insert(unit.as_str().to_string(), u);
                self.units.push(unit);
                u
            }
        };
        let id = <[u8; 12]>::try_from(patient.raw().as_bytes()).ok()?;
        Some(ListedPatient { id, key: self.pseudo.patient_key_bytes(&patient), unit, from, to })
    }

    /// Sort by patient (stable, so each patient's rows keep their input order) and refuse a
    /// period that overlaps one of the same patient's earlier rows.
    fn finish(self) -> Listing {
        let ListingBuilder { mut rows, units, mut refused_lines, .. } = self;
        rows.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        let mut entries: Vec<ListedPatient> = Vec::with_capacity(rows.len());
        let mut group = 0;
        for (line, e) in rows {
            if entries.get(group).is_none_or(|g| g.id != e.id) {
                group = entries.len();
            }
            if entries[group..].iter().any(|p| p.overlaps(&e)) {
                refused_lines.push(line);
                continue;
            }
            entries.push(e);
        }
        refused_lines.sort_unstable();
        entries.shrink_to_fit();
        Listing { entries, units, refused_lines }
    }
}

impl Listing {
    /// Build from (personnummer, HSA id) pairs, e.g. rows of the configured SQL query.
    /// Returns the listing; unusable rows are counted in `refused_lines` (1-based row numbers).
    pub fn from_rows<I, A, B>(rows: I, today: NaiveDate, pseudo: &Pseudonymizer) -> Listing
    where
        I: IntoIterator<Item = (A, B)>,
        A: AsRef<str>,
        B: AsRef<str>,
    {
        Listing::from_dated_rows(rows.into_iter().map(|(a, b)| (a, b, None::<String>, None::<String>)), today, pseudo)
    }

    /// Build from (personnummer, HSA id, listed from, listed until) rows; the dates are
    /// `YYYY-MM-DD` or empty/None for an open end. A patient's periods must not overlap.
    pub fn from_dated_rows<I, A, B, C, D>(rows: I, today: NaiveDate, pseudo: &Pseudonymizer) -> Listing
    where
        I: IntoIterator<Item = (A, B, Option<C>, Option<D>)>,
        A: AsRef<str>,
        B: AsRef<str>,
        C: AsRef<str>,
        D: AsRef<str>,
    {
        let mut b = ListingBuilder::new(today, pseudo);
        for (i, (id, unit, from, to)) in rows.into_iter().enumerate() {
            b.row(i + 1, id.as_ref(), unit.as_ref(), from.as_ref().map(|s| s.as_ref()), to.as_ref().map(|s| s.as_ref()));
        }
        b.finish()
    }

    /// Read `personnummer;hsa_id[;listad_fran;listad_tom]` lines (header line required; `;`,
    /// tab or `,` separated; `#` comments). Errors name the file and line, never a value. The
    /// file is read line by line: only the parsed periods are held.
    pub fn read_file(path: &Path, today: NaiveDate, pseudo: &Pseudonymizer) -> anyhow::Result<Listing> {
        use std::io::BufRead;
        let cannot = |e: std::io::Error| anyhow::anyhow!("cannot read listing file {}: {e}", path.display());
        let file = std::fs::File::open(path).map_err(cannot)?;
        let mut b = ListingBuilder::new(today, pseudo);
        let mut columns: Option<(usize, usize, Option<usize>, Option<usize>)> = None;
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(cannot)?;
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let f = split_line(&line);
            let Some((pi, ui, fi, ti)) = columns else {
                let cols: Vec<String> = f.iter().map(|c| c.to_ascii_lowercase()).collect();
                let (Some(pi), Some(ui)) = (cols.iter().position(|c| c == "personnummer"), cols.iter().position(|c| c == "hsa_id" || c == "vardcentral")) else {
                    anyhow::bail!("listing file {}: header must name the columns personnummer and hsa_id (or vardcentral)", path.display());
                };
                let fi = cols.iter().position(|c| c == "listad_fran" || c == "listad_from" || c == "from");
                let ti = cols.iter().position(|c| c == "listad_tom" || c == "listad_till" || c == "to");
                columns = Some((pi, ui, fi, ti));
                continue;
            };
            let get = |i: Option<usize>| i.and_then(|i| f.get(i)).copied();
            b.row(n + 1, get(Some(pi)).unwrap_or(""), get(Some(ui)).unwrap_or(""), get(fi), get(ti));
        }
        Ok(b.finish())
    }

    /// A patient's listing periods, in their input order.
    fn periods(&self, patient: &PatientId) -> &[ListedPatient] {
        &self.entries[self.periods_of(patient)]
    }

    /// Where the patient is listed now (the period without an end, else the latest).
    pub fn unit_of(&self, patient: &PatientId) -> Option<&HsaId> {
        self.periods(patient).iter().max_by_key(|e| e.to.unwrap_or(NaiveDate::MAX)).map(|e| self.unit(e))
    }

    /// Where the patient was listed on `date` (the snapshot of a computed month).
    pub fn unit_at(&self, patient: &PatientId, date: NaiveDate) -> Option<&HsaId> {
        self.periods(patient).iter().find(|e| e.covers(date)).map(|e| self.unit(e))
    }

    /// The vårdcentral of one of this listing's periods.
    pub fn unit(&self, e: &ListedPatient) -> &HsaId {
        &self.units[e.unit as usize]
    }

    pub fn entries(&self) -> &[ListedPatient] {
        &self.entries
    }

    /// Indices into `entries` of a patient's listing periods.
    pub fn periods_of(&self, patient: &PatientId) -> std::ops::Range<usize> {
        let id = patient.raw().as_bytes();
        let lo = self.entries.partition_point(|e| &e.id[..] < id);
        let hi = lo + self.entries[lo..].partition_point(|e| &e.id[..] == id);
        lo..hi
    }

    /// Listing periods (a patient who moved has more than one).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One prescription as the drug-list query returns it: substance, the date it was signed, the
/// prescribed treatment days (if known) and the HSA id of the prescriber's unit. PVK counts
/// prescriptions signed at the unit, not dispensings (VGR, research/pvk.md §1.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prescription {
    pub atc: String,
    pub date: NaiveDate,
    pub days: Option<u32>,
    pub unit: Option<String>,
}

/// Prescriptions per patient, for drug-based sub-cohorts.
#[derive(Clone, Debug, Default)]
pub struct DrugList {
    by_id: HashMap<String, Vec<Prescription>>,
    pub refused_lines: Vec<usize>,
}

impl DrugList {
    /// Build from (personnummer, ATC, date) rows (no prescriber unit or duration known:
    /// such rows only count for criteria with scope `any` and no `min_days`).
    pub fn from_rows<I, A, B>(rows: I, today: NaiveDate) -> DrugList
    where
        I: IntoIterator<Item = (A, B, NaiveDate)>,
        A: AsRef<str>,
        B: AsRef<str>,
    {
        DrugList::from_prescriptions(rows.into_iter().map(|(a, b, d)| (a, b, d, None, None::<String>)), today)
    }

    /// Build from (personnummer, ATC, date signed, days prescribed, prescriber unit HSA id).
    pub fn from_prescriptions<I, A, B, U>(rows: I, today: NaiveDate) -> DrugList
    where
        I: IntoIterator<Item = (A, B, NaiveDate, Option<u32>, Option<U>)>,
        A: AsRef<str>,
        B: AsRef<str>,
        U: AsRef<str>,
    {
        let mut d = DrugList::default();
        for (i, (id, atc, date, days, unit)) in rows.into_iter().enumerate() {
            let atc = crate::model::normalise_icd(atc.as_ref());
            let unit = match unit.as_ref().map(|u| u.as_ref().trim()).filter(|u| !u.is_empty()) {
                None => Ok(None),
                Some(u) => HsaId::parse(u).map(|h| Some(h.as_str().to_string())),
            };
            match (PatientId::parse_national(id.as_ref(), today), unit) {
                (Ok(p), Ok(unit)) if !atc.is_empty() => d.by_id.entry(p.raw().to_string()).or_default().push(Prescription { atc, date, days, unit }),
                _ => d.refused_lines.push(i + 1),
            }
        }
        for v in d.by_id.values_mut() {
            v.sort_by_key(|a| a.date);
        }
        d
    }

    /// Read `personnummer;atc;date[;days;prescriber_unit]` lines (header required, date
    /// `YYYY-MM-DD`, days a whole number).
    pub fn read_file(path: &Path, today: NaiveDate) -> anyhow::Result<DrugList> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read drug list {}: {e}", path.display()))?;
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        let Some((_, header)) = lines.next() else { return Ok(DrugList::default()) };
        let cols: Vec<String> = split_line(header).iter().map(|c| c.to_ascii_lowercase()).collect();
        let (Some(pi), Some(ai), Some(di)) =
            (cols.iter().position(|c| c == "personnummer"), cols.iter().position(|c| c == "atc"), cols.iter().position(|c| c == "date"))
        else {
            anyhow::bail!("drug list {}: header must name the columns personnummer, atc and date (optional: days, prescriber_unit)", path.display());
        };
        let dayi = cols.iter().position(|c| c == "days");
        let ui = cols.iter().position(|c| c == "prescriber_unit");
        let mut rows = vec![];
        let mut refused = vec![];
        for (n, line) in lines {
            let f = split_line(line);
            let days = match dayi.and_then(|i| f.get(i)).map(|s| s.trim()).filter(|s| !s.is_empty()) {
                None => Some(None),
                Some(s) => s.parse::<u32>().ok().map(Some),
            };
            match (f.get(di).and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()), days) {
                (Some(date), Some(days)) => rows.push((
                    f.get(pi).copied().unwrap_or("").to_string(),
                    f.get(ai).copied().unwrap_or("").to_string(),
                    date,
                    days,
                    ui.and_then(|i| f.get(i)).map(|s| s.to_string()),
                    n + 1,
                )),
                _ => refused.push(n + 1),
            }
        }
        let line_nos: Vec<usize> = rows.iter().map(|r| r.5).collect();
        let mut d = DrugList::from_prescriptions(rows.into_iter().map(|(a, b, c, e, u, _)| (a, b, c, e, u)), today);
        refused.extend(d.refused_lines.iter().map(|r| line_nos[r - 1]));
        refused.sort_unstable();
        d.refused_lines = refused;
        Ok(d)
    }

    pub fn of(&self, patient: &PatientId) -> &[Prescription] {
        self.by_id.get(patient.raw()).map(|v| v.as_slice()).unwrap_or(&[])
    }
}

// ------------------------------------------------------------------------------- config check

/// `config check`'s indicator list: per PVK connector, rule year and indicator, "beräkningsbar"
/// or "ej beräkningsbar: <what is missing>"; regional measures and provisional ids marked.
pub fn indicator_report(loaded: &Loaded) -> Vec<String> {
    let mut out = vec![];
    for c in loaded.connectors.iter().filter(|c| c.kind == ConnectorKind::Pvk) {
        let Ok(engine) = PvkEngine::load(c) else { continue };
        out.push(format!("PVK-indikatorer, {}:", engine.summary()));
        for (rs, ind, why) in engine.computability() {
            let mut tags = vec![];
            if ind.regional {
                tags.push("regionalt mått, skickas inte".to_string());
            }
            if let Some(p) = &ind.provisional {
                tags.push(format!("preliminärt id: {}", p.trim()));
            }
            let tags = if tags.is_empty() { String::new() } else { format!(" [{}]", tags.join("; ")) };
            let state = match why {
                None => "beräkningsbar".to_string(),
                Some(w) => format!("{NOT_COMPUTABLE} {w}"),
            };
            out.push(format!("  {} {}{tags}: {state}", rs.year, ind.display_name()));
        }
    }
    out
}

/// `config check` for every PVK connector: rule files load, indicator codes are in the register's
/// `Indikator` domain (when metadata is at hand), and a warning for every unverified code list.
pub fn check(loaded: &Loaded) -> Vec<Problem> {
    let mut out = vec![];
    for c in loaded.connectors.iter().filter(|c| c.kind == ConnectorKind::Pvk) {
        let engine = match PvkEngine::load(c) {
            Ok(e) => e,
            Err(mut e) => {
                out.append(&mut e);
                continue;
            }
        };
        out.extend(engine.warnings.iter().cloned());
        let cfile = c.dir.join("connector.toml").display().to_string();
        match &engine.options.register_metadata {
            Some(p) => match std::fs::read(p).map_err(anyhow::Error::from).and_then(|b| RegisterMetadata::from_json(&b)) {
                Ok(m) => out.extend(check_against_metadata(&engine, &m)),
                Err(e) => out.push(Problem::error(&cfile, "options.register_metadata", format!("cannot read {}: {e}", p.display()))),
            },
            None => {
                let stratum = loaded.settings.registers.get(&c.register).is_some_and(|r| r.kind == crate::config::RegisterKind::Stratum);
                if stratum {
                    out.push(Problem::warning(
                        &cfile,
                        "options.register_metadata",
                        "indicator codes not checked against the register's Indikator domain (set register_metadata to the register's metadata JSON)",
                    ));
                }
            }
        }
    }
    out
}

/// Every indicator's register code must be a value of the `Q_Indicator` column's domain.
pub fn check_against_metadata(engine: &PvkEngine, meta: &RegisterMetadata) -> Vec<Problem> {
    let mut out = vec![];
    let domain = meta
        .form(FORM_NAME)
        .and_then(|f| f.questions.iter().find(|q| q.column_name == "Q_Indicator"))
        .and_then(|q| meta.domain(q.domain.domain_id));
    let Some(domain) = domain else {
        let label = engine.options.register_metadata.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        out.push(Problem::error(label, FORM_NAME, "register metadata has no form Indikatorvarde with a Q_Indicator column"));
        return out;
    };
    let values: BTreeSet<String> = domain.domain_values.iter().filter(|v| v.is_active).map(|v| json_code(&v.value_code)).collect();
    for rs in &engine.rule_sets {
        // Regional measures are never sent, so the register need not know them.
        for (i, ind) in rs.indicators.iter().enumerate().filter(|(_, i)| !i.regional) {
            if !values.contains(&ind.register_code) {
                out.push(Problem::error(
                    rs.file.display().to_string(),
                    format!("indicators[{i}] ({}).register_code", ind.id),
                    format!("'{}' is not in the register's Indikator domain ({})", ind.register_code, domain.domain_name),
                ));
            }
        }
    }
    out
}

pub(crate) fn json_code(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
