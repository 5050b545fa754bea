//! XML export in the namespace `urn:registerbrygga:pvk:aggregate-export:1.0`, valid against
//! `conformance/pvk-export/pvk-aggregate-export-1.0.xsd` (the tests check with xmllint).

use super::{CellStatus, Labels, RunInfo};
use crate::store::PvkResultRow;
use anyhow::Result;
use quick_xml::events::{BytesDecl, BytesText, Event};
use quick_xml::Writer;

pub const NAMESPACE: &str = "urn:registerbrygga:pvk:aggregate-export:1.0";
pub const SCHEMA_FILE: &str = "pvk-aggregate-export-1.0.xsd";

fn text<W: std::io::Write>(w: &mut Writer<W>, name: &str, value: &str) -> std::io::Result<()> {
    w.create_element(name).write_text_content(BytesText::new(value))?;
    Ok(())
}

pub fn render_xml(rows: &[&PvkResultRow], run: &RunInfo, labels: &Labels) -> Result<Vec<u8>> {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.create_element("PvkAggregateExport")
        .with_attribute(("xmlns", NAMESPACE))
        .with_attribute(("formatVersion", "1.0"))
        .write_inner_content(|w| {
            w.create_element("Header").write_inner_content(|w| {
                text(w, "GeneratedAt", &run.generated_at.format("%Y-%m-%dT%H:%M:%SZ").to_string())?;
                text(w, "Connector", &run.connector)?;
                text(w, "RunId", &run.run_id)?;
                text(w, "Producer", concat!("registerbrygga ", env!("CARGO_PKG_VERSION")))?;
                text(w, "CellCount", &rows.len().to_string())
            })?;
            for r in rows {
                w.create_element("Cell").write_inner_content(|w| {
                    text(w, "RuleYear", &r.rule_year.to_string())?;
                    text(w, "UnitHsaId", &r.unit)?;
                    text(w, "Year", &r.year.to_string())?;
                    text(w, "Month", &r.month.to_string())?;
                    text(w, "Indicator", &r.indicator)?;
                    if let Some(l) = labels.get(&(r.rule_year, r.indicator.clone())) {
                        text(w, "IndicatorName", &l.name)?;
                    }
                    let note = r.note.as_deref().unwrap_or("");
                    match CellStatus::of(r) {
                        status @ (CellStatus::Reported | CellStatus::ReportedSmallCell) => {
                            w.create_element("Reported").write_inner_content(|w| {
                                text(w, "Numerator", &r.numerator.unwrap_or_default().to_string())?;
                                text(w, "Denominator", &r.denominator.unwrap_or_default().to_string())?;
                                text(w, "SmallCell", if status == CellStatus::ReportedSmallCell { "true" } else { "false" })
                            })?;
                            if !note.is_empty() {
                                text(w, "Note", note)?;
                            }
                        }
                        CellStatus::Suppressed => {
                            w.create_element("Suppressed").write_inner_content(|w| text(w, "Reason", if note.is_empty() { "small-cell protection" } else { note }))?;
                        }
                        CellStatus::NotComputable => {
                            w.create_element("NotComputable").write_inner_content(|w| text(w, "Reason", if note.is_empty() { "not computable" } else { note }))?;
                        }
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })?;
    let mut out = w.into_inner();
    out.push(b'\n');
    Ok(out)
}
