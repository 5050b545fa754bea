//! Care units by name: every page, export and summary shows a unit as "name (HSA id)" — nobody
//! at a clinic knows their unit by its HSA id alone (issue 19).
//!
//! Where a name comes from, first found wins:
//! 1. the configuration, beside the unit bindings: `[registers.X].units = [{ hsa_id, unit_code,
//!    name }]`, and `[registers.X].unit_names` for units the register has no code for (an export
//!    register, a vårdcentral whose aggregates go to files only);
//! 2. the register's own unit metadata (`Units[].UnitName` by `HSAID` in the Stratum metadata,
//!    conformance/stratum/README.md `GET /metadata/units/register/{RegisterID}`), read from the
//!    metadata file each connector names for its offline check (`options.metadata_file` or
//!    `options.register_metadata`).
//!
//! A unit with no name anywhere is shown by its HSA id alone.

use crate::config::Loaded;
use std::collections::BTreeMap;

/// The one way a unit is written for people: "name (HSA id)", or the bare id without a name.
pub fn unit_label(name: Option<&str>, hsa_id: &str) -> String {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => format!("{n} ({hsa_id})"),
        None => hsa_id.to_string(),
    }
}

/// HSA id → unit name, from the configuration and the registers' metadata files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitNames(BTreeMap<String, String>);

impl UnitNames {
    pub fn from_loaded(loaded: &Loaded) -> UnitNames {
        let mut names = BTreeMap::new();
        for reg in loaded.settings.registers.values() {
            for b in &reg.units {
                if let Some(n) = b.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                    names.entry(b.hsa_id.clone()).or_insert_with(|| n.to_string());
                }
            }
            for (hsa, n) in &reg.unit_names {
                if !n.trim().is_empty() {
                    names.entry(hsa.clone()).or_insert_with(|| n.trim().to_string());
                }
            }
        }
        for c in &loaded.connectors {
            for key in ["metadata_file", "register_metadata"] {
                let Some(rel) = c.options.get(key).and_then(|v| v.as_str()) else { continue };
                let path = c.dir.join(rel);
                // A missing or unreadable file is `config check`'s to report; names are a nicety.
                let Ok(bytes) = std::fs::read(&path) else { continue };
                let Ok(meta) = crate::sinks::stratum::metadata::RegisterMetadata::from_json(&bytes) else { continue };
                for u in meta.units {
                    if let Some(hsa) = u.hsa_id.filter(|h| c.units.contains(h)) {
                        if !u.unit_name.trim().is_empty() {
                            names.entry(hsa).or_insert_with(|| u.unit_name.trim().to_string());
                        }
                    }
                }
            }
        }
        UnitNames(names)
    }

    pub fn with(mut self, hsa_id: &str, name: &str) -> UnitNames {
        self.0.insert(hsa_id.to_string(), name.to_string());
        self
    }

    pub fn name(&self, hsa_id: &str) -> Option<&str> {
        self.0.get(hsa_id).map(String::as_str)
    }

    /// "name (HSA id)" by [`unit_label`].
    pub fn label(&self, hsa_id: &str) -> String {
        unit_label(self.name(hsa_id), hsa_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_the_unit_and_keeps_the_id() {
        assert_eq!(unit_label(Some("Rehab Fryken"), "SE2321000156-FT02"), "Rehab Fryken (SE2321000156-FT02)");
        assert_eq!(unit_label(Some("  "), "SE2321000156-FT02"), "SE2321000156-FT02");
        assert_eq!(unit_label(None, "SE2321000156-FT02"), "SE2321000156-FT02");
    }
}
