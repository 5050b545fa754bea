//! Register mappers: pure functions from canonical records to register records.
//! `sar/` builds Svenska Artrosregistret registrations; `pvk/` computes Primärvårdskvalitet
//! indicators. No I/O here except reading the connectors' own definition files.

pub mod pvk;

use crate::config::{Loaded, Problem};

/// Register-specific configuration checks (mapping files, rule sets).
pub async fn check(loaded: &Loaded, _online: bool) -> Vec<Problem> {
    let mut out = vec![];
    out.extend(pvk::check(loaded));
    out
}
