//! CSV export: one line per cell, `;`-separated (what Swedish spreadsheet tools expect),
//! UTF-8, header line first. Numbers are empty unless the status is `reported*`.

use super::{CellStatus, Labels};
use crate::units::UnitNames;
use crate::store::PvkResultRow;

/// `unit` is the unit as people read it, "name (HSA id)" (`crate::units`); `unit_hsa_id` the id.
pub const CSV_COLUMNS: [&str; 11] = ["rule_year", "unit_hsa_id", "year", "month", "indicator", "status", "numerator", "denominator", "note", "indicator_name", "unit"];

/// The regional measures' file (FaR, vårdval per FTE): never sent to PVK, for the region's own
/// follow-up. `value` is the share in percent, or for per-FTE measures the count per full-time
/// equivalent (denominator in hundredths of an FTE); `requirement` is the region's per-FTE
/// requirement.
pub const REGIONAL_CSV_COLUMNS: [&str; 13] =
    ["rule_year", "unit_hsa_id", "year", "month", "measure", "measure_name", "status", "numerator", "denominator", "value", "requirement", "note", "unit"];

pub fn field(s: &str) -> String {
    if s.contains([';', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A cell's status and, when it is reported, its numerator and denominator as text (blank
/// otherwise: a suppressed or uncomputable cell never shows its counts).
fn shown_counts(r: &PvkResultRow) -> (CellStatus, bool, String, String) {
    let status = CellStatus::of(r);
    let reported = matches!(status, CellStatus::Reported | CellStatus::ReportedSmallCell);
    let shown = |v: Option<i64>| if reported { v.map(|n| n.to_string()).unwrap_or_default() } else { String::new() };
    (status, reported, shown(r.numerator), shown(r.denominator))
}

pub fn render_csv(rows: &[&PvkResultRow], labels: &Labels, units: &UnitNames) -> String {
    let mut out = CSV_COLUMNS.join(";");
    out.push_str("\r\n");
    for r in rows {
        let (status, _, num, den) = shown_counts(r);
        let cols = [
            r.rule_year.to_string(),
            field(&r.unit),
            r.year.to_string(),
            r.month.to_string(),
            field(&r.indicator),
            status.as_str().to_string(),
            num,
            den,
            field(r.note.as_deref().unwrap_or("")),
            field(labels.get(&(r.rule_year, r.indicator.clone())).map(|l| l.name.as_str()).unwrap_or("")),
            field(&units.label(&r.unit)),
        ];
        out.push_str(&cols.join(";"));
        out.push_str("\r\n");
    }
    out
}

pub fn render_regional_csv(rows: &[&PvkResultRow], labels: &Labels, units: &UnitNames) -> String {
    let mut out = REGIONAL_CSV_COLUMNS.join(";");
    out.push_str("\r\n");
    for r in rows {
        let (status, reported, num, den) = shown_counts(r);
        let label = labels.get(&(r.rule_year, r.indicator.clone()));
        let requirement = label.and_then(|l| l.per_fte_requirement);
        let value = match (reported, r.numerator, r.denominator) {
            // Percent for a share; count per FTE for a per-FTE measure (denominator in hundredths).
            (true, Some(n), Some(d)) if d > 0 => format!("{:.1}", n as f64 * 100.0 / d as f64),
            _ => String::new(),
        };
        let cols = [
            r.rule_year.to_string(),
            field(&r.unit),
            r.year.to_string(),
            r.month.to_string(),
            field(&r.indicator),
            field(label.map(|l| l.name.as_str()).unwrap_or("")),
            status.as_str().to_string(),
            num,
            den,
            value,
            requirement.map(|q| q.to_string()).unwrap_or_default(),
            field(r.note.as_deref().unwrap_or("")),
            field(&units.label(&r.unit)),
        ];
        out.push_str(&cols.join(";"));
        out.push_str("\r\n");
    }
    out
}
