//! `registerbrygga mapping scaffold`: a connector folder for a Stratum register, written from
//! the register's metadata (forms, questions, domains, units), and — when the folder exists —
//! what changed in the metadata since it was written. Pure: the caller fetches the metadata
//! and reads and writes the files.
//!
//! The folder holds `connector.toml` (when to run, which units, the occasion windows),
//! `mapping.toml` (every register column of every form, commented with its question text, type,
//! domain with its values `ValueCode = label`, and mandatory flag; the source left empty) and
//! `metadata.json` (the metadata it was written from: `config check` offline reads it).
//!
//! Conventions of the output (checked by `tests/second_register.rs`):
//! - every line that states a register fact says where it comes from: `metadata:` (the
//!   register's own metadata API) or `provisional:` with what the region must confirm;
//! - a mandatory column is an active line with an empty source, so `config check` fails until
//!   the region fills it in; an optional column is a commented-out line to uncomment when mapped;
//! - a line `#> Form.Column | …` records the column's metadata as written. A rerun compares
//!   these records against the register's metadata now: columns added, removed or changed
//!   (question, type, domain, domain values, mandatory flag) — the file is never overwritten.

use crate::registers::metadata::{Domain, Form, Question, RegisterMetadata};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The files of a new connector folder.
#[derive(Clone, Debug, PartialEq)]
pub struct Scaffold {
    pub connector_toml: String,
    pub mapping_toml: String,
    /// The metadata as pretty JSON (`metadata.json`).
    pub metadata_json: String,
}

/// A column's difference between the mapping's `#>` records and the register's metadata now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnChange {
    Added { form: String, column: String, now: String },
    Removed { form: String, column: String, was: String },
    Changed { form: String, column: String, was: String, now: String },
}

impl std::fmt::Display for ColumnChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColumnChange::Added { form, column, now } => write!(f, "added    {form}.{column}: {now}"),
            ColumnChange::Removed { form, column, was } => write!(f, "removed  {form}.{column}: was {was}"),
            ColumnChange::Changed { form, column, was, now } => write!(f, "changed  {form}.{column}: was {was}; now {now}"),
        }
    }
}

/// Metadata columns the mapper fills itself (SubjectKey, EventDate, UnitCode): never mapped.
fn is_envelope(q: &Question) -> bool {
    q.mapped_to.is_some()
}

/// One line that describes a domain: id, name, type, range, values (`ValueCode = label`).
fn domain_text(d: Option<&Domain>, id: u32) -> String {
    let Some(d) = d else { return format!("domain {id} (not in the metadata)") };
    let mut s = format!("{} · domain {} \"{}\"", d.data_type, d.domain_id, d.domain_name);
    match (d.min, d.max) {
        (Some(a), Some(b)) => write!(s, " {a}–{b}").unwrap(),
        (Some(a), None) => write!(s, " ≥ {a}").unwrap(),
        (None, Some(b)) => write!(s, " ≤ {b}").unwrap(),
        (None, None) => {}
    }
    if d.is_enumerated {
        let values: Vec<String> = d
            .domain_values
            .iter()
            .map(|v| {
                let code = match &v.value_code {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                format!("{code} = {}{}", v.value_name, if v.is_active { "" } else { " (inactive)" })
            })
            .collect();
        write!(s, ": {}", values.join(", ")).unwrap();
    }
    s
}

/// The record of one column as the scaffold writes it after `#> Form.Column | `.
fn column_record(meta: &RegisterMetadata, q: &Question) -> String {
    format!(
        "{} | {} | {}",
        q.prefix_text.as_deref().unwrap_or("(no question text)").replace('|', "/"),
        domain_text(meta.domain(q.domain.domain_id), q.domain.domain_id),
        if q.is_mandatory { "mandatory" } else { "optional" }
    )
}

/// Occasion names of the forms (the metadata's hint; `first_visit` when it gives none).
fn occasion_of(f: &Form) -> String {
    f.occasion.clone().filter(|o| !o.is_empty()).unwrap_or_else(|| "first_visit".into())
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Write a new connector folder for register `register` (its name in `[registers]`) from its
/// metadata. `units` are the HSA ids of the care units the connector reports for (the
/// register's unit bindings); empty = the metadata units' HSA ids.
pub fn scaffold(register: &str, meta: &RegisterMetadata, units: &[String]) -> Scaffold {
    let r = &meta.register;
    let cite = format!("metadata: Stratum register {} ({})", r.register_id, r.register_name);
    let units: Vec<String> = if units.is_empty() { meta.units.iter().filter_map(|u| u.hsa_id.clone()).collect() } else { units.to_vec() };
    let follow_ups: Vec<String> = {
        let mut v: Vec<String> = meta.forms.iter().map(occasion_of).filter(|o| o != "first_visit" && o != "aggregate").collect();
        v.dedup();
        let mut seen = std::collections::BTreeSet::new();
        v.retain(|o| seen.insert(o.clone()));
        v
    };

    let mut c = String::new();
    writeln!(c, "# {} (Stratum register {}): journal → registrations. Written by `registerbrygga mapping", r.register_name, r.register_id).unwrap();
    writeln!(c, "# scaffold --register {register}` from the register's metadata; what fills which column is in").unwrap();
    writeln!(c, "# mapping.toml. Lines marked provisional are the scaffold's defaults: the region confirms them.").unwrap();
    writeln!(c, "name = {}", quoted(register)).unwrap();
    writeln!(c, "kind = \"stratum_register\"").unwrap();
    writeln!(c, "# provisional: the source of the region's journal ([sources.<name>] in the configuration).").unwrap();
    writeln!(c, "source = \"journal\"").unwrap();
    writeln!(c, "register = {}", quoted(register)).unwrap();
    writeln!(c, "# provisional: nightly, Europe/Stockholm (a region's choice, not the register's).").unwrap();
    writeln!(c, "schedule = \"30 3 * * *\"").unwrap();
    writeln!(c, "catch_up = \"run_once\"").unwrap();
    writeln!(c, "# {cite}: the register's units (HSA ids of the unit bindings); the region keeps those it reports for.").unwrap();
    writeln!(c, "units = [{}]", units.iter().map(|u| quoted(u)).collect::<Vec<_>>().join(", ")).unwrap();
    writeln!(c).unwrap();
    writeln!(c, "# provisional: three years of history and a 48-hour overlap, as for Svenska Artrosregistret.").unwrap();
    writeln!(c, "[window]\ninitial_days = 1095\noverlap_hours = 48\nhistory_days = 1095\n").unwrap();
    writeln!(c, "[patients]\nmode = \"engagement_index\"\n").unwrap();
    writeln!(c, "[options]\nmapping = \"mapping.toml\"").unwrap();
    writeln!(c, "# The register metadata the scaffold read ({cite}); `config check` uses it offline.").unwrap();
    writeln!(c, "metadata_file = \"metadata.json\"").unwrap();
    writeln!(c).unwrap();
    writeln!(c, "# Follow-up occasions, in days after the first visit (both ends inclusive). The metadata names").unwrap();
    writeln!(c, "# the occasions ({cite}) but not their windows: fill each in from the register's").unwrap();
    writeln!(c, "# documentation and cite it (0–0 is refused by `config check`).").unwrap();
    writeln!(c, "[options.windows]").unwrap();
    for o in &follow_ups {
        writeln!(c, "{o} = {{ from_day = 0, to_day = 0 }}  # provisional: window not filled in").unwrap();
    }

    let mut m = String::new();
    writeln!(m, "# Journal → {} (Stratum register {}). Written by `registerbrygga mapping scaffold", r.register_name, r.register_id).unwrap();
    writeln!(m, "# --register {register}`; the file format is documented at the top of").unwrap();
    writeln!(m, "# connectors/artrosregistret/mapping.toml and the rules in src/registers/engine.").unwrap();
    writeln!(m, "#").unwrap();
    writeln!(m, "# Every column of every form is below, with its question text, type, domain (ValueCode = label)").unwrap();
    writeln!(m, "# and mandatory flag ({cite}). Mandatory columns are active lines with an empty source:").unwrap();
    writeln!(m, "# `config check` fails until each is filled in. Optional columns are commented out: uncomment").unwrap();
    writeln!(m, "# those the region maps. Lines starting `#>` record the metadata as written; a rerun of the").unwrap();
    writeln!(m, "# scaffold compares against them (keep them).").unwrap();
    writeln!(m).unwrap();
    writeln!(m, "# provisional: the region's journal code systems (OIDs).").unwrap();
    writeln!(m, "# `answers` (optional): the system of coded answers.").unwrap();
    writeln!(m, "[terms]\nobservations = \"\"\n# answers = \"\"\nactivities = \"\"\n").unwrap();
    writeln!(m, "# What opens a course (the file format: connectors/artrosregistret/mapping.toml [course]).").unwrap();
    writeln!(m, "# provisional: the register's inclusion criteria are the region's to fill in and cite.").unwrap();
    writeln!(m, "[course]\ninclusion = []\nfirst_visit_window = {{ before_days = 14, after_days = 14 }}\n").unwrap();
    writeln!(m, "# provisional: the journal's register objection (spärr) term and its values.").unwrap();
    writeln!(m, "[opt_out]\nterm = \"\"\nvalues = []\n").unwrap();
    // One commented code-table template per enumerated domain a column uses.
    let mut enumerated: BTreeMap<u32, &Domain> = BTreeMap::new();
    for f in &meta.forms {
        for q in f.questions.iter().filter(|q| !is_envelope(q)) {
            if let Some(d) = meta.domain(q.domain.domain_id).filter(|d| d.is_enumerated) {
                enumerated.insert(d.domain_id, d);
            }
        }
    }
    for d in enumerated.values() {
        writeln!(m, "# Code table for domain {} \"{}\" ({cite}): journal answer code → ValueCode.", d.domain_id, d.domain_name).unwrap();
        writeln!(m, "# [codes.d{}]", d.domain_id).unwrap();
        for v in &d.domain_values {
            writeln!(m, "# \"<journal code>\" = {}  # {}", v.value_code, v.value_name).unwrap();
        }
        writeln!(m).unwrap();
    }
    for f in &meta.forms {
        if occasion_of(f) == "aggregate" {
            continue;
        }
        writeln!(m, "# {}", "-".repeat(93)).unwrap();
        writeln!(m, "# {}: {} ({cite})", f.form_name, f.form_title.as_deref().unwrap_or("")).unwrap();
        writeln!(m, "[forms.{}]", f.form_name).unwrap();
        writeln!(m, "occasion = {}  # {cite}", quoted(&occasion_of(f))).unwrap();
        writeln!(m, "\n[forms.{}.columns]", f.form_name).unwrap();
        for q in f.questions.iter().filter(|q| !is_envelope(q)) {
            writeln!(m, "#> {}.{} | {}", f.form_name, q.column_name, column_record(meta, q)).unwrap();
            let enumerated = meta.domain(q.domain.domain_id).is_some_and(|d| d.is_enumerated);
            let codes = if enumerated { format!(", codes = \"d{}\"", q.domain.domain_id) } else { String::new() };
            let line = format!("{} = {{ observation = \"\"{codes} }}  # {cite}, form {}", q.column_name, f.form_name);
            if q.is_mandatory {
                writeln!(m, "{line}").unwrap();
            } else {
                writeln!(m, "# {line}").unwrap();
            }
        }
        writeln!(m).unwrap();
    }
    Scaffold { connector_toml: c, mapping_toml: m, metadata_json: serde_json::to_string_pretty(meta).unwrap_or_default() }
}

/// The `#>` records of an existing mapping: (form, column) → record.
pub fn records(mapping_toml: &str) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for line in mapping_toml.lines() {
        let Some(rest) = line.trim_start().strip_prefix("#>") else { continue };
        let Some((name, record)) = rest.trim().split_once(" | ") else { continue };
        let Some((form, column)) = name.trim().split_once('.') else { continue };
        out.insert((form.to_string(), column.to_string()), record.trim().to_string());
    }
    out
}

/// Compare an existing mapping (its `#>` records) with the register's metadata now: columns
/// added, removed and changed, in form and column order.
pub fn compare(mapping_toml: &str, meta: &RegisterMetadata) -> Vec<ColumnChange> {
    let mut was = records(mapping_toml);
    let mut out = vec![];
    for f in &meta.forms {
        if occasion_of(f) == "aggregate" {
            continue;
        }
        for q in f.questions.iter().filter(|q| !is_envelope(q)) {
            let now = column_record(meta, q);
            match was.remove(&(f.form_name.clone(), q.column_name.clone())) {
                None => out.push(ColumnChange::Added { form: f.form_name.clone(), column: q.column_name.clone(), now }),
                Some(w) if w != now => out.push(ColumnChange::Changed { form: f.form_name.clone(), column: q.column_name.clone(), was: w, now }),
                Some(_) => {}
            }
        }
    }
    for ((form, column), w) in was {
        out.push(ColumnChange::Removed { form, column, was: w });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sar() -> RegisterMetadata {
        RegisterMetadata::from_json(&std::fs::read("conformance/stratum/sar-104.json").unwrap()).unwrap()
    }

    /// Every non-envelope column of every form is in the mapping, once, as a record and as a
    /// (possibly commented) line; mandatory ones active with an empty source.
    #[test]
    fn every_column_is_written_with_its_record() {
        let meta = sar();
        let s = scaffold("sar", &meta, &[]);
        let recs = records(&s.mapping_toml);
        let mut n = 0;
        for f in &meta.forms {
            for q in f.questions.iter().filter(|q| q.mapped_to.is_none()) {
                n += 1;
                assert!(recs.contains_key(&(f.form_name.clone(), q.column_name.clone())), "{}.{}", f.form_name, q.column_name);
                let active = s.mapping_toml.lines().any(|l| l.starts_with(&format!("{} = {{ observation = \"\"", q.column_name)));
                assert_eq!(active, q.is_mandatory, "{}", q.column_name);
            }
        }
        assert_eq!(recs.len(), n);
        assert!(s.connector_toml.contains("three_months = { from_day = 0, to_day = 0 }"));
        assert!(s.mapping_toml.contains("1 = Höft"), "domain values as ValueCode = label");
        assert!(compare(&s.mapping_toml, &meta).is_empty(), "unchanged metadata: no change");
        toml::from_str::<toml::Table>(&s.mapping_toml).expect("mapping.toml parses");
        toml::from_str::<toml::Table>(&s.connector_toml).expect("connector.toml parses");
    }

    #[test]
    fn a_rerun_reports_added_removed_and_changed_columns() {
        let meta = sar();
        let s = scaffold("sar", &meta, &[]);
        let mut now = meta.clone();
        let removed = now.forms[0].questions.remove(3).column_name;
        now.forms[0].questions[2].is_mandatory = !now.forms[0].questions[2].is_mandatory;
        let mut extra = now.forms[0].questions[2].clone();
        extra.column_name = "FV_New".into();
        now.forms[0].questions.push(extra);
        let changes = compare(&s.mapping_toml, &now);
        assert!(changes.iter().any(|c| matches!(c, ColumnChange::Removed { column, .. } if *column == removed)), "{changes:?}");
        assert!(changes.iter().any(|c| matches!(c, ColumnChange::Added { column, .. } if column == "FV_New")), "{changes:?}");
        assert!(changes.iter().any(|c| matches!(c, ColumnChange::Changed { column, .. } if *column == now.forms[0].questions[2].column_name)), "{changes:?}");
        assert_eq!(changes.len(), 3, "{changes:?}");
    }
}
