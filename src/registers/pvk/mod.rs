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
//! listing = { file = "listing.csv" }   # or { sql = "SELECT personnummer, hsa_id …", url = { env = "…" } }
//! drug_list = { file = "drugs.csv" }   # prescriptions, for drug-based sub-cohorts (KOL, Os)
//! small_cells = { threshold = 5, mode = "suppress" }   # or mode = "flag"
//! physician_professions = ["LAKARE"]   # profession codes that count as physician (quality report)
//! register_metadata = "…/pvk-aggregate.json"  # offline `config check` of indicator codes
//! ```

pub mod aggregate;
pub mod engine;
pub mod quality;
pub mod rules;

pub use aggregate::{aggregate_intents, aggregate_plan, AggregatePlan, Skipped, FORM_NAME};
pub use engine::{Computation, ComputeInput, PatientRecords, PvkOutput};
pub use rules::{CodeSet, Indicator, IndicatorKind, RuleSet, Variant};

use crate::config::{ConnectorDef, ConnectorKind, Loaded, Problem, Secret};
use crate::crypto::Pseudonymizer;
use crate::model::{HsaId, PatientId};
use crate::sinks::stratum::metadata::RegisterMetadata;
use chrono::NaiveDate;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

// ------------------------------------------------------------------------------- options

/// Start of the note on a small cell that is sent flagged (the export marks it `SmallCell`).
pub const SMALL_CELL_FLAG: &str = "small cell:";

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
}

const KNOWN_OPTIONS: &[&str] =
    &["rule_years", "rule_files", "rules_dir", "vardcentraler", "listing", "drug_list", "small_cells", "physician_professions", "register_metadata", "exports", "months"];

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
                (None, Some(_)) => match &src.url {
                    None => errors.push(Problem::error(&cfile, format!("options.{name}.url"), "a SQL source needs url (a secret: { env = \"…\" } or { file = \"…\" })")),
                    Some(url) => crate::config::check_pg_tls(&mut warnings, &cfile, &format!("options.{name}.url"), url),
                },
                _ => errors.push(Problem::error(&cfile, format!("options.{name}"), "give exactly one of file or sql")),
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

    /// The configured listing query (`listing = { sql = …, url = … }`), which the caller runs
    /// (I/O stays at the edges) and hands to [`Listing::from_rows`].
    pub fn listing_query(&self) -> Option<(&Secret, &str)> {
        self.options.listing.as_ref().and_then(|s| Some((s.url.as_ref()?, s.sql.as_deref()?)))
    }

    /// The configured drug-list query (rows of personnummer, ATC code, date `YYYY-MM-DD`).
    pub fn drug_list_query(&self) -> Option<(&Secret, &str)> {
        self.options.drug_list.as_ref().and_then(|s| Some((s.url.as_ref()?, s.sql.as_deref()?)))
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

/// One listed patient: who (for the local patient list), their pseudonym, and where listed.
#[derive(Clone, Debug)]
pub struct ListedPatient {
    pub patient: PatientId,
    pub patient_key: String,
    pub unit: HsaId,
}

/// Listed population: personnummer → the vårdcentral the patient is listed at. A snapshot (the
/// listing as of the file's date) applied to every month computed.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    entries: Vec<ListedPatient>,
    by_id: HashMap<String, usize>,
    /// Line numbers (1-based) refused: invalid identity or HSA id, or listed twice.
    pub refused_lines: Vec<usize>,
}

fn split_line(line: &str) -> Vec<&str> {
    let sep = if line.contains(';') { ';' } else if line.contains('\t') { '\t' } else { ',' };
    line.split(sep).map(|s| s.trim().trim_matches('"')).collect()
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
        let mut l = Listing::default();
        for (i, (id, unit)) in rows.into_iter().enumerate() {
            let (Ok(patient), Ok(unit)) = (PatientId::parse_national(id.as_ref(), today), HsaId::parse(unit.as_ref())) else {
                l.refused_lines.push(i + 1);
                continue;
            };
            if l.by_id.contains_key(patient.raw()) {
                l.refused_lines.push(i + 1);
                continue;
            }
            let patient_key = pseudo.patient_key(&patient);
            l.by_id.insert(patient.raw().to_string(), l.entries.len());
            l.entries.push(ListedPatient { patient, patient_key, unit });
        }
        l
    }

    /// Read `personnummer;hsa_id` lines (header line required; `;`, tab or `,` separated;
    /// `#` comments). Errors name the file and line, never a value.
    pub fn read_file(path: &Path, today: NaiveDate, pseudo: &Pseudonymizer) -> anyhow::Result<Listing> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read listing file {}: {e}", path.display()))?;
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        let Some((_, header)) = lines.next() else { return Ok(Listing::default()) };
        let cols: Vec<String> = split_line(header).iter().map(|c| c.to_ascii_lowercase()).collect();
        let (Some(pi), Some(ui)) = (cols.iter().position(|c| c == "personnummer"), cols.iter().position(|c| c == "hsa_id" || c == "vardcentral")) else {
            anyhow::bail!("listing file {}: header must name the columns personnummer and hsa_id (or vardcentral)", path.display());
        };
        let mut rows = vec![];
        let mut line_nos = vec![];
        for (n, line) in lines {
            let f = split_line(line);
            rows.push((f.get(pi).copied().unwrap_or("").to_string(), f.get(ui).copied().unwrap_or("").to_string()));
            line_nos.push(n + 1);
        }
        let mut l = Listing::from_rows(rows, today, pseudo);
        l.refused_lines = l.refused_lines.iter().map(|r| line_nos[r - 1]).collect();
        Ok(l)
    }

    pub fn unit_of(&self, patient: &PatientId) -> Option<&HsaId> {
        self.by_id.get(patient.raw()).map(|i| &self.entries[*i].unit)
    }

    pub fn entries(&self) -> &[ListedPatient] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Prescriptions (ATC code and date) per patient, for drug-based sub-cohorts.
#[derive(Clone, Debug, Default)]
pub struct DrugList {
    by_id: HashMap<String, Vec<(String, NaiveDate)>>,
    pub refused_lines: Vec<usize>,
}

impl DrugList {
    /// Build from (personnummer, ATC, date) rows.
    pub fn from_rows<I, A, B>(rows: I, today: NaiveDate) -> DrugList
    where
        I: IntoIterator<Item = (A, B, NaiveDate)>,
        A: AsRef<str>,
        B: AsRef<str>,
    {
        let mut d = DrugList::default();
        for (i, (id, atc, date)) in rows.into_iter().enumerate() {
            let atc = crate::model::normalise_icd(atc.as_ref());
            match PatientId::parse_national(id.as_ref(), today) {
                Ok(p) if !atc.is_empty() => d.by_id.entry(p.raw().to_string()).or_default().push((atc, date)),
                _ => d.refused_lines.push(i + 1),
            }
        }
        for v in d.by_id.values_mut() {
            v.sort_by_key(|a| a.1);
        }
        d
    }

    /// Read `personnummer;atc;date` lines (header required, date `YYYY-MM-DD`).
    pub fn read_file(path: &Path, today: NaiveDate) -> anyhow::Result<DrugList> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read drug list {}: {e}", path.display()))?;
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        let Some((_, header)) = lines.next() else { return Ok(DrugList::default()) };
        let cols: Vec<String> = split_line(header).iter().map(|c| c.to_ascii_lowercase()).collect();
        let (Some(pi), Some(ai), Some(di)) =
            (cols.iter().position(|c| c == "personnummer"), cols.iter().position(|c| c == "atc"), cols.iter().position(|c| c == "date"))
        else {
            anyhow::bail!("drug list {}: header must name the columns personnummer, atc and date", path.display());
        };
        let mut rows = vec![];
        let mut refused = vec![];
        for (n, line) in lines {
            let f = split_line(line);
            match f.get(di).and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()) {
                Some(date) => rows.push((f.get(pi).copied().unwrap_or("").to_string(), f.get(ai).copied().unwrap_or("").to_string(), date, n + 1)),
                None => refused.push(n + 1),
            }
        }
        let line_nos: Vec<usize> = rows.iter().map(|r| r.3).collect();
        let mut d = DrugList::from_rows(rows.into_iter().map(|(a, b, c, _)| (a, b, c)), today);
        refused.extend(d.refused_lines.iter().map(|r| line_nos[r - 1]));
        refused.sort_unstable();
        d.refused_lines = refused;
        Ok(d)
    }

    pub fn of(&self, patient: &PatientId) -> &[(String, NaiveDate)] {
        self.by_id.get(patient.raw()).map(|v| v.as_slice()).unwrap_or(&[])
    }
}

// ------------------------------------------------------------------------------- config check

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
        for (i, ind) in rs.indicators.iter().enumerate() {
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
