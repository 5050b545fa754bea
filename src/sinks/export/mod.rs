//! PVK aggregate export files, for regions whose PVK tool takes files instead of the Stratum API:
//! one XML file (schema `conformance/pvk-export/pvk-aggregate-export-1.0.xsd`) and one CSV file
//! per run, written atomically (temp file in the same folder, fsync, rename).
//!
//! Regional measures (register code `REG…`: FaR, vårdval per FTE) are not PVK indicators: they
//! go to their own file, `regional-measures-<connector>-<time>.csv`, never into the PVK files.
//!
//! Only the numbers leave: a row's patient list is never read here. Suppressed and
//! not-computable cells are written with their status and reason but without numbers, so the
//! receiving tool can tell "nothing to report" from "zero".

pub(crate) mod csv;
mod xml;

use crate::store::PvkResultRow;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use self::csv::{render_csv, render_regional_csv, CSV_COLUMNS, REGIONAL_CSV_COLUMNS};
pub use self::xml::{render_xml, NAMESPACE, SCHEMA_FILE};

/// Who wrote the files and when (no personal data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInfo {
    pub connector: String,
    pub run_id: String,
    pub generated_at: DateTime<Utc>,
}

/// Names of the indicators (from the rule set), defined by the PVK engine that knows them.
pub use crate::registers::pvk::{IndicatorLabel, Labels};

/// How a cell is reported in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellStatus {
    Reported,
    /// Reported although a count is a small cell (small_cells.mode = "flag").
    ReportedSmallCell,
    Suppressed,
    NotComputable,
}

impl CellStatus {
    pub fn of(r: &PvkResultRow) -> CellStatus {
        if !r.computable || r.numerator.is_none() || r.denominator.is_none() {
            CellStatus::NotComputable
        } else if r.suppressed {
            CellStatus::Suppressed
        } else if r.note.as_deref().is_some_and(|n| n.contains(crate::registers::pvk::SMALL_CELL_FLAG)) {
            CellStatus::ReportedSmallCell
        } else {
            CellStatus::Reported
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CellStatus::Reported => "reported",
            CellStatus::ReportedSmallCell => "reported_small_cell",
            CellStatus::Suppressed => "suppressed",
            CellStatus::NotComputable => "not_computable",
        }
    }
}

fn sorted(results: &[PvkResultRow]) -> Vec<&PvkResultRow> {
    let mut v: Vec<&PvkResultRow> = results.iter().collect();
    v.sort_by(|a, b| (a.rule_year, &a.unit, a.year, a.month, &a.indicator).cmp(&(b.rule_year, &b.unit, b.year, b.month, &b.indicator)));
    v
}

/// Write `<stem>.xml` and `<stem>.csv` (PVK indicators) and, when there are regional
/// measures, `regional-measures-….csv` into `dir` (created if missing); returns their paths.
/// The CSV files name each unit ("name (HSA id)", `crate::units`).
pub fn write_exports(results: &[PvkResultRow], dir: &Path, run: &RunInfo, labels: &Labels, units: &crate::units::UnitNames) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create export folder {}", dir.display()))?;
    let safe: String = run.connector.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let at = run.generated_at.format("%Y%m%dT%H%M%SZ");
    let stem = format!("pvk-aggregates-{safe}-{at}");
    let (regional, rows): (Vec<&PvkResultRow>, Vec<&PvkResultRow>) = sorted(results).into_iter().partition(|r| crate::registers::pvk::is_regional_code(&r.indicator));
    let xml_path = dir.join(format!("{stem}.xml"));
    let csv_path = dir.join(format!("{stem}.csv"));
    write_atomic(&xml_path, &render_xml(&rows, run, labels)?)?;
    write_atomic(&csv_path, render_csv(&rows, labels, units).as_bytes())?;
    let mut out = vec![xml_path, csv_path];
    if !regional.is_empty() {
        let p = dir.join(format!("regional-measures-{safe}-{at}.csv"));
        write_atomic(&p, render_regional_csv(&regional, labels, units).as_bytes())?;
        out.push(p);
    }
    Ok(out)
}

/// Write to a temp file next to `path`, flush it to disk, then rename over `path`, so a reader
/// never sees a half-written file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("export");
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path).with_context(|| format!("cannot rename into {}", path.display()))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
