//! Register mappers: pure functions from canonical records to register records.
//! `sar/` builds Svenska Artrosregistret registrations; `pvk/` computes Primärvårdskvalitet
//! indicators. No I/O here except reading the connectors' own definition files.

pub mod pvk;
pub mod sar;

use crate::config::{Loaded, Problem};

/// Register-specific configuration checks (mapping files, rule sets).
pub async fn check(loaded: &Loaded, _online: bool) -> Vec<Problem> {
    let mut problems = vec![];
    // SAR against its offline metadata; the Stratum client's online metadata can be passed to
    // `sar::check` instead once it is wired here.
    problems.extend(sar::check(loaded, None));
    problems.extend(pvk::check(loaded));
    problems
}
