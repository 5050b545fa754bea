//! The glue between a register engine and the pipeline: a connector of kind
//! `stratum_register` becomes the pipeline's per-patient mapper. Which engine, with which
//! occasions, forms and keys, is the connector folder's data (`registers::engine`); nothing
//! here knows a register by name.

use super::{MapOutput, PatientMapper};
use crate::config::ConnectorDef;
use crate::registers::engine::{PatientInput, RegisterEngine};
use crate::registers::metadata::RegisterMetadata;
use anyhow::{anyhow, Result};
use std::sync::Arc;

/// The register engine as the pipeline's per-patient mapper.
pub struct EngineMapper(pub RegisterEngine);

impl PatientMapper for EngineMapper {
    fn map_patient(&self, i: &PatientInput<'_>) -> MapOutput {
        let out = self.0.map_patient(i);
        MapOutput {
            intents: out.intents,
            incomplete: out.incomplete,
            episodes: out.episodes,
            opted_out: out.opted_out,
            notes: out.notes.iter().map(|n| serde_json::to_string(n).unwrap_or_default()).collect(),
        }
    }
}

/// Load a register connector's mapping folder against the register's metadata: the mapper the
/// pipeline runs, or every problem of the mapping in one error.
/// Also returns how many remarks the mapping raised, for the admin's status panel.
pub fn register_mapper(def: &ConnectorDef, metadata: &RegisterMetadata) -> Result<(Arc<dyn PatientMapper>, usize)> {
    let engine = RegisterEngine::load(def, metadata).map_err(|ps| anyhow!("connector '{}': {}", def.name, ps.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; ")))?;
    let remarks = engine.warnings().len();
    Ok((Arc::new(EngineMapper(engine)), remarks))
}
