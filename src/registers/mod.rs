//! Register mappers: pure functions from canonical records to register records.
//! `engine/` builds the registrations of any Stratum register from its connector folder
//! (Svenska Artrosregistret is one such connector; `sar/` keeps SAR's rules and indicators);
//! `scaffold.rs` writes and compares a connector folder against a register's metadata;
//! `pvk/` computes Primärvårdskvalitet indicators. No I/O here except reading the connectors'
//! own definition files.

pub mod engine;
pub mod scaffold;
pub mod pvk;
pub mod sar;

use crate::config::{ConnectorKind, Loaded, Problem, RegisterKind};
use crate::sinks::stratum::metadata::RegisterMetadata;
use std::collections::BTreeMap;

/// Register-specific configuration checks (mapping files, rule sets). With `online`, each
/// Stratum register's metadata is fetched from the register itself (the check then proves the
/// mapping against what the register really has, and the unit bindings against its units);
/// otherwise the connectors' offline metadata files are used.
pub async fn check(loaded: &Loaded, online: bool) -> Vec<Problem> {
    let mut problems = vec![];
    let mut fetched: BTreeMap<String, RegisterMetadata> = BTreeMap::new();
    if online {
        for (name, r) in &loaded.settings.registers {
            if r.kind != RegisterKind::Stratum {
                continue;
            }
            let key = format!("registers.{name}");
            let client = match crate::sinks::stratum::StratumClient::new(name, r, None) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(Problem::error("config", &key, format!("cannot build the register client: {e:#}")));
                    continue;
                }
            };
            match client.load_metadata().await {
                Ok(m) => {
                    for b in client.binding_problems() {
                        problems.push(Problem::error("config", format!("{key}.units"), b));
                    }
                    fetched.insert(name.clone(), (*m).clone());
                }
                Err(e) => problems.push(Problem::error("config", &key, format!("register metadata not reachable: {e:#}"))),
            }
        }
    }
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
