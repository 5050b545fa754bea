//! `registerbrygga pvk import FILE…`: SKR's yearly indicator files → a rule set
//! (`rules/<year>.toml`), so a region loads the official code lists instead of typing them.
//!
//! SKR publishes "Indikatorerna i Primärvårdskvalitet, fullständig förteckning inklusive
//! KIK-länkar och ID:n" and "Diagnoslistor <år>" as spreadsheets (research/pvk.md §1.1); their
//! exact column layout is not public, so the layout is configuration (`[options.import]` of the
//! PVK connector) and the defaults below are the best known. A file is an `.xlsx` workbook (read
//! with calamine) or a `.csv` file, which stands for one sheet named by the file's stem
//! (`Indikatorer.csv`, `Kodlistor.csv`).
//!
//! Two sheets, found across all files given:
//! - **indicators** (default sheet `Indikatorer`), one row per indicator; columns (defaults):
//!   `ID` (Ar12, T/S01), `Indikator` (name), `Enhet` (VC | Rehab | Alla), `Typ` (Andel |
//!   Förekomst), `Diagnoslistor` (list names, comma-separated), and optional `Åtgärdslistor`,
//!   `Läkemedelslista`, `Läkemedel minst antal`, `Läkemedel minst dagar`, `Läkemedel villkor`
//!   (och | eller), `Ålder från`, `Period månader` (diagnosis look-back), `Mätperiod månader`,
//!   `Nyinsjuknad månader` (no diagnosis this long before: the measure window then starts at
//!   the new diagnosis), `Källa` (e.g. the KIK link);
//! - **code lists** (default sheet `Kodlistor`), one row per code: `Lista` (list name),
//!   `Kodverk` (ICD-10-SE | KVÅ | ATC | an OID for a local keyword system), `Kod`.
//!
//! Every code list in the written rule set cites `"<file>, <sheet>, rad <first>–<last>"` and is
//! `verified = true` (it is SKR's own list). An unknown layout is an error naming the sheet or
//! column expected and what was found. Parsing and rendering are pure; only [`read_sheets`] and
//! [`run`] touch files.

use super::rules::{self, RuleSet};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One sheet: where it came from and its rows as text (row 1 is the header).
#[derive(Clone, Debug, PartialEq)]
pub struct Sheet {
    pub file: String,
    pub name: String,
    pub rows: Vec<Vec<String>>,
}

/// Sheet and column names (`[options.import]`), defaults as best known.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Layout {
    pub indicator_sheet: String,
    pub code_list_sheet: String,
    pub columns: Columns,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    pub id: String,
    pub title: String,
    pub unit_type: String,
    pub kind: String,
    pub diagnosis_lists: String,
    pub action_lists: String,
    pub drug_list: String,
    pub drug_min_distinct: String,
    pub drug_min_days: String,
    pub drug_combine: String,
    pub min_age: String,
    pub lookback_months: String,
    pub window_months: String,
    pub new_onset_months: String,
    pub source: String,
    pub list: String,
    pub system: String,
    pub code: String,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { indicator_sheet: "Indikatorer".into(), code_list_sheet: "Kodlistor".into(), columns: Columns::default() }
    }
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            id: "ID".into(),
            title: "Indikator".into(),
            unit_type: "Enhet".into(),
            kind: "Typ".into(),
            diagnosis_lists: "Diagnoslistor".into(),
            action_lists: "Åtgärdslistor".into(),
            drug_list: "Läkemedelslista".into(),
            drug_min_distinct: "Läkemedel minst antal".into(),
            drug_min_days: "Läkemedel minst dagar".into(),
            drug_combine: "Läkemedel villkor".into(),
            min_age: "Ålder från".into(),
            lookback_months: "Period månader".into(),
            window_months: "Mätperiod månader".into(),
            new_onset_months: "Nyinsjuknad månader".into(),
            source: "Källa".into(),
            list: "Lista".into(),
            system: "Kodverk".into(),
            code: "Kod".into(),
        }
    }
}

/// Read every sheet of the files: `.xlsx` (every worksheet) or `.csv` (one sheet, named by the
/// file's stem; `;`, tab or `,` separated, UTF-8).
pub fn read_sheets(files: &[PathBuf]) -> Result<Vec<Sheet>> {
    let mut out = vec![];
    for f in files {
        let label = f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| f.display().to_string());
        let ext = f.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        match ext.as_str() {
            "xlsx" | "xlsm" => {
                use calamine::{open_workbook, Reader, Xlsx};
                let mut wb: Xlsx<_> = open_workbook(f).map_err(|e| anyhow!("{label}: not a readable .xlsx workbook: {e}"))?;
                for name in wb.sheet_names() {
                    let range = wb.worksheet_range(&name).map_err(|e| anyhow!("{label}, sheet '{name}': {e}"))?;
                    let rows = range.rows().map(|r| r.iter().map(|c| cell_text(c)).collect()).collect();
                    out.push(Sheet { file: label.clone(), name, rows });
                }
            }
            "csv" | "txt" => {
                let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
                let name = f.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
                let rows = text.lines().map(|l| super::split_line(l).into_iter().map(str::to_string).collect()).collect();
                out.push(Sheet { file: label, name, rows });
            }
            _ => bail!("{label}: give .xlsx or .csv files (SKR's spreadsheets, or a sheet saved as CSV)"),
        }
    }
    Ok(out)
}

fn cell_text(c: &calamine::Data) -> String {
    use calamine::Data;
    match c {
        Data::Empty => String::new(),
        // Whole numbers come as floats from spreadsheets: 12.0 → "12".
        Data::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        other => other.to_string().trim().to_string(),
    }
}

/// A sheet with its header resolved: column name → index.
struct Table<'a> {
    sheet: &'a Sheet,
    header_row: usize,
    cols: BTreeMap<String, usize>,
}

impl<'a> Table<'a> {
    /// The first non-empty row is the header.
    fn new(sheet: &'a Sheet) -> Table<'a> {
        let header_row = sheet.rows.iter().position(|r| r.iter().any(|c| !c.trim().is_empty())).unwrap_or(0);
        let cols = sheet.rows.get(header_row).map(|r| r.iter().enumerate().map(|(i, c)| (c.trim().to_lowercase(), i)).collect()).unwrap_or_default();
        Table { sheet, header_row, cols }
    }
    fn col(&self, name: &str) -> Option<usize> {
        self.cols.get(&name.trim().to_lowercase()).copied()
    }
    fn require(&self, name: &str, key: &str) -> Result<usize> {
        self.col(name).ok_or_else(|| {
            let found: Vec<&str> = self.sheet.rows.get(self.header_row).map(|r| r.iter().map(|c| c.trim()).filter(|c| !c.is_empty()).collect()).unwrap_or_default();
            anyhow!(
                "{}, sheet '{}': no column '{name}' (expected by import.columns.{key}; columns found: {})",
                self.sheet.file,
                self.sheet.name,
                if found.is_empty() { "none".to_string() } else { found.join(", ") }
            )
        })
    }
    /// (1-based row number, row) of every data row that is not blank.
    fn rows(&self) -> impl Iterator<Item = (usize, &'a Vec<String>)> + 'a {
        let start = self.header_row + 1;
        self.sheet.rows.iter().enumerate().skip(start).filter(|(_, r)| r.iter().any(|c| !c.trim().is_empty())).map(|(i, r)| (i + 1, r))
    }
}

fn get(r: &[String], i: Option<usize>) -> &str {
    i.and_then(|i| r.get(i)).map(|s| s.trim()).unwrap_or("")
}

fn find_sheet<'a>(sheets: &'a [Sheet], name: &str, key: &str) -> Result<&'a Sheet> {
    sheets.iter().find(|s| s.name.trim().eq_ignore_ascii_case(name.trim())).ok_or_else(|| {
        let found: Vec<String> = sheets.iter().map(|s| format!("{} ({})", s.name, s.file)).collect();
        anyhow!("no sheet '{name}' (expected by import.{key}; sheets found: {})", if found.is_empty() { "none".into() } else { found.join(", ") })
    })
}

/// A code list as imported: system, codes and where each came from.
#[derive(Clone, Debug, Default)]
struct ImportedList {
    system: String,
    codes: Vec<String>,
    file: String,
    sheet: String,
    rows: (usize, usize),
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list_key(name: &str) -> String {
    // Rule-set keys: lower case, letters, digits and underscores.
    let mut k: String = name
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'å' | 'ä' => 'a',
            'ö' => 'o',
            'é' => 'e',
            c if c.is_ascii_alphanumeric() => c,
            _ => '_',
        })
        .collect();
    while k.contains("__") {
        k = k.replace("__", "_");
    }
    k.trim_matches('_').to_string()
}

/// The rule set text for `year` from the sheets (pure).
pub fn render(sheets: &[Sheet], layout: &Layout, year: i32) -> Result<String> {
    let c = &layout.columns;
    let lists_sheet = find_sheet(sheets, &layout.code_list_sheet, "code_list_sheet")?;
    let lt = Table::new(lists_sheet);
    let (li, si, ci) = (lt.require(&c.list, "list")?, lt.require(&c.system, "system")?, lt.require(&c.code, "code")?);
    let mut lists: BTreeMap<String, ImportedList> = BTreeMap::new();
    for (n, r) in lt.rows() {
        let (name, system, code) = (get(r, Some(li)), get(r, Some(si)), get(r, Some(ci)));
        if name.is_empty() || code.is_empty() {
            bail!("{}, sheet '{}', row {n}: every code row needs '{}' and '{}'", lists_sheet.file, lists_sheet.name, c.list, c.code);
        }
        let system = match system.to_lowercase().replace(['-', ' '], "").as_str() {
            "icd10se" | "icd10" | "icd" => "icd10se".to_string(),
            "kvå" | "kva" => "kva".to_string(),
            "atc" => "atc".to_string(),
            s if s.contains('.') && s.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) => system.to_string(),
            _ => bail!("{}, sheet '{}', row {n}: '{}' is not a code system (ICD-10-SE, KVÅ, ATC or an OID)", lists_sheet.file, lists_sheet.name, system),
        };
        let e = lists.entry(name.to_string()).or_insert_with(|| ImportedList { system: system.clone(), file: lists_sheet.file.clone(), sheet: lists_sheet.name.clone(), rows: (n, n), ..Default::default() });
        if e.system != system {
            bail!("{}, sheet '{}', row {n}: list '{name}' mixes code systems ({} and {system})", lists_sheet.file, lists_sheet.name, e.system);
        }
        e.rows.1 = n;
        e.codes.push(code.to_string());
    }

    let ind_sheet = find_sheet(sheets, &layout.indicator_sheet, "indicator_sheet")?;
    let it = Table::new(ind_sheet);
    let (ii, ti, ui, ki, di) = (
        it.require(&c.id, "id")?,
        it.require(&c.title, "title")?,
        it.require(&c.unit_type, "unit_type")?,
        it.require(&c.kind, "kind")?,
        it.require(&c.diagnosis_lists, "diagnosis_lists")?,
    );
    let opt = |name: &str| it.col(name);
    let (ai, dli, dni, ddi, dci, agi, lbi, wi, noi, sri) = (
        opt(&c.action_lists),
        opt(&c.drug_list),
        opt(&c.drug_min_distinct),
        opt(&c.drug_min_days),
        opt(&c.drug_combine),
        opt(&c.min_age),
        opt(&c.lookback_months),
        opt(&c.window_months),
        opt(&c.new_onset_months),
        opt(&c.source),
    );
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut inds = String::new();
    let at = |n: usize| format!("{}, sheet '{}', row {n}", ind_sheet.file, ind_sheet.name);
    let names = |s: &str| -> Vec<String> { s.split([',', ';']).map(str::trim).filter(|x| !x.is_empty()).map(str::to_string).collect() };
    let num = |r: &[String], i: Option<usize>, n: usize, what: &str| -> Result<Option<u32>> {
        let v = get(r, i);
        if v.is_empty() {
            return Ok(None);
        }
        v.parse::<u32>().map(Some).map_err(|_| anyhow!("{}: '{what}' must be a whole number, not '{v}'", at(n)))
    };
    let mut count = 0;
    for (n, r) in it.rows() {
        let id = get(r, Some(ii));
        if id.is_empty() {
            bail!("{}: no indicator id in column '{}'", at(n), c.id);
        }
        let variant = match get(r, Some(ui)).to_lowercase().as_str() {
            "vc" | "vårdcentral" => "vardcentral",
            "rehab" | "rehabenhet" => "rehab",
            "alla" | "båda" | "" => "any",
            other => bail!("{}: '{}' is '{other}'; expected VC, Rehab or Alla", at(n), c.unit_type),
        };
        let kind = match get(r, Some(ki)).to_lowercase().as_str() {
            "andel" => "proportion",
            "förekomst" | "prevalens" => "prevalence",
            other => bail!("{}: '{}' is '{other}'; expected Andel or Förekomst", at(n), c.kind),
        };
        let resolve = |field: &str, col: &str| -> Result<Vec<String>> {
            names(field)
                .into_iter()
                .map(|l| if lists.contains_key(&l) { Ok(list_key(&l)) } else { Err(anyhow!("{}: list '{l}' in '{col}' is not in sheet '{}'", at(n), layout.code_list_sheet)) })
                .collect()
        };
        let diagnoses = resolve(get(r, Some(di)), &c.diagnosis_lists)?;
        let actions = resolve(get(r, ai), &c.action_lists)?;
        used.extend(names(get(r, Some(di))));
        used.extend(names(get(r, ai)));
        let register_code: String = id.chars().filter(|ch| ch.is_ascii_alphanumeric()).collect();
        inds.push_str(&format!("\n[[indicators]]\nid = {}\n", toml_str(id)));
        if register_code != id {
            inds.push_str(&format!("register_code = {}\n", toml_str(&register_code)));
        }
        inds.push_str(&format!("title = {}\nvariant = \"{variant}\"\nkind = \"{kind}\"\n", toml_str(get(r, Some(ti)))));
        let source = get(r, sri);
        inds.push_str(&format!("windows_source = {}\n", toml_str(&format!("{}{}", at(n), if source.is_empty() { String::new() } else { format!("; {source}") }))));
        inds.push_str("[indicators.population]\n");
        inds.push_str(&format!("diagnoses = [{}]\n", diagnoses.iter().map(|d| toml_str(d)).collect::<Vec<_>>().join(", ")));
        if let Some(a) = num(r, agi, n, &c.min_age)? {
            inds.push_str(&format!("min_age = {a}\n"));
        }
        if let Some(m) = num(r, lbi, n, &c.lookback_months)? {
            inds.push_str(&format!("lookback_months = {m}\n"));
        }
        let new_onset = num(r, noi, n, &c.new_onset_months)?;
        if let Some(m) = new_onset {
            inds.push_str(&format!("new_onset = {{ clear_months = {m} }}\n"));
        }
        let drug = get(r, dli);
        if !drug.is_empty() {
            if !lists.contains_key(drug) {
                bail!("{}: list '{drug}' in '{}' is not in sheet '{}'", at(n), c.drug_list, layout.code_list_sheet);
            }
            used.insert(drug.to_string());
            let combine = match get(r, dci).to_lowercase().as_str() {
                "" | "och" => "and",
                "eller" => "or",
                other => bail!("{}: '{}' is '{other}'; expected och or eller", at(n), c.drug_combine),
            };
            let mut d = format!("drugs = {{ code_set = {}, min_distinct = {}, combine = \"{combine}\"", toml_str(&list_key(drug)), num(r, dni, n, &c.drug_min_distinct)?.unwrap_or(1));
            if let Some(days) = num(r, ddi, n, &c.drug_min_days)? {
                d.push_str(&format!(", min_days = {days}"));
            }
            d.push_str(&format!(", description = {} }}\n", toml_str(&format!("läkemedelslista {drug}"))));
            inds.push_str(&d);
        }
        if kind == "proportion" {
            if actions.is_empty() {
                bail!("{}: an Andel indicator needs '{}'", at(n), c.action_lists);
            }
            inds.push_str(&format!("[indicators.measure]\nactivities = [{}]\n", actions.iter().map(|d| toml_str(d)).collect::<Vec<_>>().join(", ")));
            if let Some(w) = num(r, wi, n, &c.window_months)? {
                inds.push_str(&format!("window_months = {w}\n"));
            }
            if new_onset.is_some() {
                inds.push_str("anchor = \"index\"\n");
            }
        }
        count += 1;
    }
    if count == 0 {
        bail!("{}, sheet '{}': no indicator rows", ind_sheet.file, ind_sheet.name);
    }
    let files: BTreeSet<&str> = sheets.iter().map(|s| s.file.as_str()).collect();
    let files = files.into_iter().collect::<Vec<_>>().join(", ");
    let mut out = format!(
        "# Primärvårdskvalitet rule set {year}, written by `registerbrygga pvk import` from {files}.\n\
         # Every code list is SKR's own (source = file, sheet, rows). Edit the spreadsheets and import\n\
         # again rather than this file.\n\n[rule_set]\nyear = {year}\nname = {}\nverified = true\nsource = {}\n",
        toml_str(&format!("PVK {year} (import)")),
        toml_str(&files)
    );
    for (name, l) in lists.iter().filter(|(n, _)| used.contains(*n)) {
        let kind = match l.system.as_str() {
            "icd10se" => "diagnosis",
            "atc" => "drug",
            _ => "activity",
        };
        let rows = if l.rows.0 == l.rows.1 { format!("rad {}", l.rows.0) } else { format!("rad {}–{}", l.rows.0, l.rows.1) };
        out.push_str(&format!(
            "\n[code_sets.{}]\nkind = \"{kind}\"\nsystem = {}\ncodes = [{}]\nverified = true\nsource = {}\n",
            list_key(name),
            toml_str(&l.system),
            l.codes.iter().map(|c| toml_str(c)).collect::<Vec<_>>().join(", "),
            toml_str(&format!("{}, {}, {rows} (list '{name}')", l.file, l.sheet)),
        ));
    }
    out.push_str(&inds);
    Ok(out)
}

/// Indicators added and removed, and code lists changed, between two rule sets.
pub fn diff(old: &RuleSet, new: &RuleSet) -> Vec<String> {
    let mut out = vec![];
    let ids = |r: &RuleSet| r.indicators.iter().map(|i| i.id.clone()).collect::<BTreeSet<_>>();
    let (a, b) = (ids(old), ids(new));
    for id in b.difference(&a) {
        out.push(format!("+ indikator {id}"));
    }
    for id in a.difference(&b) {
        out.push(format!("- indikator {id}"));
    }
    for cs in &new.code_sets {
        match old.code_set(&cs.name) {
            None => out.push(format!("+ kodlista {} ({} koder)", cs.name, cs.codes.len())),
            Some(o) if o.codes != cs.codes => {
                let (oa, na): (BTreeSet<&String>, BTreeSet<&String>) = (o.codes.iter().collect(), cs.codes.iter().collect());
                let added: Vec<&str> = na.difference(&oa).map(|s| s.as_str()).collect();
                let removed: Vec<&str> = oa.difference(&na).map(|s| s.as_str()).collect();
                out.push(format!("~ kodlista {}: +[{}] -[{}]", cs.name, added.join(", "), removed.join(", ")));
            }
            _ => {}
        }
    }
    for cs in &old.code_sets {
        if new.code_set(&cs.name).is_none() {
            out.push(format!("- kodlista {}", cs.name));
        }
    }
    out
}

/// What `pvk import` did.
#[derive(Debug)]
pub struct ImportReport {
    pub written: PathBuf,
    pub indicators: usize,
    pub code_lists: usize,
    /// Against the previous year's rule set, when there is one.
    pub diff: Option<(PathBuf, Vec<String>)>,
}

/// Read the files, write `rules_dir/<year>.toml` (validated before it replaces anything), and
/// diff it against `rules_dir/<year-1>.toml` if that exists.
pub fn run(files: &[PathBuf], layout: &Layout, year: i32, rules_dir: &Path) -> Result<ImportReport> {
    let sheets = read_sheets(files)?;
    let text = render(&sheets, layout, year)?;
    std::fs::create_dir_all(rules_dir).with_context(|| format!("cannot create {}", rules_dir.display()))?;
    let target = rules_dir.join(format!("{year}.toml"));
    let (rs, _) = rules::parse(&text, &target).map_err(|ps| anyhow!("the imported rule set does not validate: {}", ps.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")))?;
    let tmp = rules_dir.join(format!(".{year}.toml.import"));
    std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &target).with_context(|| format!("cannot write {}", target.display()))?;
    let prev = rules_dir.join(format!("{}.toml", year - 1));
    let diff = if prev.exists() {
        let (old, _) = rules::load_file(&prev).map_err(|ps| anyhow!("previous rule set {}: {}", prev.display(), ps.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")))?;
        Some((prev, diff(&old, &rs)))
    } else {
        None
    };
    Ok(ImportReport { written: target, indicators: rs.indicators.len(), code_lists: rs.code_sets.len(), diff })
}
