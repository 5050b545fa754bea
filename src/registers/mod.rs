//! Register mappers: pure functions from canonical records to register records.
//! `engine/` builds the registrations of any Stratum register from its connector folder
//! (Svenska Artrosregistret is one such connector; `sar/` keeps SAR's rules and indicators);
//! `scaffold.rs` writes and compares a connector folder against a register's metadata;
//! `pvk/` computes Primärvårdskvalitet indicators. No I/O here except reading the connectors'
//! own definition files.
//! `metadata.rs` is a Stratum register's description (forms, questions, domains, units): the
//! mappers read it, the Stratum client validates against it, the emulator serves it.

pub mod engine;
pub mod metadata;
pub mod scaffold;
pub mod pvk;
pub mod sar;

use crate::config::{ConnectorKind, Loaded, Problem};
use crate::registers::metadata::RegisterMetadata;
use std::collections::BTreeMap;

/// Register-specific configuration checks (mapping files, rule sets). `fetched` holds the
/// metadata fetched from each Stratum register itself (`config check --online`, fetched by
/// `checks.rs`: no network here); a connector whose register is not in it is checked against its
/// offline metadata file.
pub fn check(loaded: &Loaded, fetched: &BTreeMap<String, RegisterMetadata>) -> Vec<Problem> {
    let mut problems = vec![];
    for c in &loaded.connectors {
        let one = Loaded { connectors: vec![c.clone()], ..loaded.clone() };
        match c.kind {
            ConnectorKind::StratumRegister => problems.extend(engine::check(&one, fetched.get(&c.register))),
            ConnectorKind::Pvk => {
                problems.extend(pvk::check(&one));
                if let (Some(meta), Ok(engine)) = (fetched.get(&c.register), pvk::PvkEngine::load(c)) {
                    problems.extend(pvk::check_against_metadata(&engine, meta));
                }
            }
        }
    }
    problems
}
