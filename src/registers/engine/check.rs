//! `config check` for register connectors: every mapping problem (file, key, reason).

use super::mapping;
use crate::config::{ConnectorDef, ConnectorKind, Loaded, Problem};
use crate::registers::metadata::RegisterMetadata;

/// Check every enabled or disabled connector of kind `stratum_register`. `online` is the metadata fetched from
/// the register, when the caller has it; otherwise each connector is checked against its offline
/// metadata file (`options.metadata_file`, default `conformance/stratum/sar-104.json`).
pub fn check(loaded: &Loaded, online: Option<&RegisterMetadata>) -> Vec<Problem> {
    let mut problems = vec![];
    for c in loaded.connectors.iter().filter(|c| c.kind == ConnectorKind::StratumRegister) {
        match online {
            Some(m) => problems.extend(check_connector(c, m)),
            None => match mapping::offline_metadata(c) {
                Ok(m) => problems.extend(check_connector(c, &m)),
                Err(p) => problems.push(p),
            },
        }
    }
    problems
}

/// Load one connector's mapping against `metadata` and return every problem, warnings included.
pub fn check_connector(c: &ConnectorDef, metadata: &RegisterMetadata) -> Vec<Problem> {
    mapping::load(c, metadata).1
}
