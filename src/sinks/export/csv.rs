//! CSV export: one line per cell, `;`-separated (what Swedish spreadsheet tools expect),
//! UTF-8, header line first. Numbers are empty unless the status is `reported*`.

use super::CellStatus;
use crate::store::PvkResultRow;

pub const CSV_COLUMNS: [&str; 9] = ["rule_year", "unit_hsa_id", "year", "month", "indicator", "status", "numerator", "denominator", "note"];

fn field(s: &str) -> String {
    if s.contains([';', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn render_csv(rows: &[&PvkResultRow]) -> String {
    let mut out = CSV_COLUMNS.join(";");
    out.push_str("\r\n");
    for r in rows {
        let status = CellStatus::of(r);
        let reported = matches!(status, CellStatus::Reported | CellStatus::ReportedSmallCell);
        let num = if reported { r.numerator.map(|n| n.to_string()).unwrap_or_default() } else { String::new() };
        let den = if reported { r.denominator.map(|n| n.to_string()).unwrap_or_default() } else { String::new() };
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
        ];
        out.push_str(&cols.join(";"));
        out.push_str("\r\n");
    }
    out
}
