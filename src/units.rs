//! Care units by name: every page, export and summary shows a unit as "name (HSA id)" — nobody
//! at a clinic knows their unit by its HSA id alone (issue 19).
//!
//! Where a name comes from, first found wins:
//! 1. the configuration, beside the unit bindings: `[registers.X].units = [{ hsa_id, unit_code,
//!    name }]`, and `[registers.X].unit_names = [{ hsa_id, name }]` for units the register has no
//!    code for (an export register, a vårdcentral whose aggregates go to files only);
//! 2. the register's own unit metadata (`Units[].UnitName` by `HSAID` in the Stratum metadata,
//!    conformance/stratum/README.md `GET /metadata/units/register/{RegisterID}`): as the running
//!    daemon loaded it from the register, else from the metadata file each connector names for
//!    its offline check (`options.metadata_file` or `options.register_metadata`).
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
        Self::from_loaded_with(loaded, std::iter::empty())
    }

    /// With the names the registers' live metadata gave (HSA id, name), after the configuration's
    /// and before the metadata files'.
    pub fn from_loaded_with(loaded: &Loaded, live: impl IntoIterator<Item = (String, String)>) -> UnitNames {
        let mut names = BTreeMap::new();
        for reg in loaded.settings.registers.values() {
            for b in &reg.units {
                if let Some(n) = b.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                    names.entry(b.hsa_id.clone()).or_insert_with(|| n.to_string());
                }
            }
            for u in &reg.unit_names {
                if !u.name.trim().is_empty() {
                    names.entry(u.hsa_id.clone()).or_insert_with(|| u.name.trim().to_string());
                }
            }
        }
        for (hsa, n) in live {
            if !n.trim().is_empty() {
                names.entry(hsa).or_insert_with(|| n.trim().to_string());
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

    fn loaded(settings: crate::config::Settings) -> Loaded {
        // The shipped SAR connector's shape, its offline metadata the conformance copy.
        let mut c: crate::config::ConnectorDef = toml::from_str(
            r#"name = "sar"
kind = "sar"
source = "journal"
register = "sar"
schedule = "30 2 * * *"
units = ["SE2321000156-FT01", "SE2321000156-FT02"]
patients = { mode = "engagement_index" }
options = { metadata_file = "conformance/stratum/sar-104.json" }"#,
        )
        .expect("connector");
        c.dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        Loaded { settings, failed_sections: vec![], connectors: vec![c], files: vec![] }
    }

    #[test]
    fn names_come_from_the_bindings_then_the_register_metadata() {
        use crate::config::{RegisterSettings, Settings, UnitBinding};
        // Only the register's metadata: its UnitName by HSAID.
        let names = UnitNames::from_loaded(&loaded(Settings::default()));
        assert_eq!(names.label("SE2321000156-FT01"), "Fysioterapin Klarälven (SE2321000156-FT01)");
        assert_eq!(names.label("SE2321000156-FT02"), "Rehab Fryken (SE2321000156-FT02)");
        // A unit the connector does not read is not named from the metadata.
        assert_eq!(names.label("SE2321000156-FT03"), "SE2321000156-FT03");
        // The configuration wins; unit_names names units the register has no code for.
        let mut settings = Settings::default();
        let mut reg = RegisterSettings::default();
        reg.units = vec![UnitBinding { hsa_id: "SE2321000156-FT01".into(), unit_code: "1701".into(), name: Some("Fysio Klarälven, Karlstad".into()) }];
        reg.unit_names = vec![crate::config::UnitName { hsa_id: "SE2321000156-VC01".into(), name: "Vårdcentralen Norrstrand".into() }];
        settings.registers.insert("sar".into(), reg);
        let names = UnitNames::from_loaded(&loaded(settings));
        assert_eq!(names.label("SE2321000156-FT01"), "Fysio Klarälven, Karlstad (SE2321000156-FT01)");
        assert_eq!(names.label("SE2321000156-FT02"), "Rehab Fryken (SE2321000156-FT02)");
        assert_eq!(names.label("SE2321000156-VC01"), "Vårdcentralen Norrstrand (SE2321000156-VC01)");
        // The register's live metadata comes before the offline file.
        let live = UnitNames::from_loaded_with(&loaded(Settings::default()), [("SE2321000156-FT02".to_string(), "Rehab Fryken Kil".to_string())]);
        assert_eq!(live.label("SE2321000156-FT02"), "Rehab Fryken Kil (SE2321000156-FT02)");
        assert_eq!(live.label("SE2321000156-FT01"), "Fysioterapin Klarälven (SE2321000156-FT01)");
    }

    #[test]
    fn label_names_the_unit_and_keeps_the_id() {
        assert_eq!(unit_label(Some("Rehab Fryken"), "SE2321000156-FT02"), "Rehab Fryken (SE2321000156-FT02)");
        assert_eq!(unit_label(Some("  "), "SE2321000156-FT02"), "SE2321000156-FT02");
        assert_eq!(unit_label(None, "SE2321000156-FT02"), "SE2321000156-FT02");
    }
}
