//! `config check`: every problem at once — file, key, reason.

use crate::config::{self, LoadOptions, Loaded, Problem, RegisterKind};
use crate::registers::metadata::RegisterMetadata;
use std::collections::BTreeMap;

/// Load, validate statically, then ask each register module about its own files.
pub async fn check_all(opts: &LoadOptions, online: bool) -> Vec<Problem> {
    let (loaded, mut problems) = config::load_collect(opts);
    let Some(loaded) = loaded else { return problems };
    problems.extend(check_static(&loaded));
    problems.extend(check_registers(&loaded, online).await);
    problems.extend(keyword_tables(&loaded));
    problems
}

/// Everything that can be checked without the network: the settings and connectors
/// (`config::check_static`) and every connector's schedule. Used by `config check` and by a
/// running daemon before it applies a reload. (The schedule is checked here, not in `config`,
/// so that `config` does not depend on the scheduler: the scheduler reads the configuration.)
pub fn check_static(loaded: &Loaded) -> Vec<Problem> {
    let mut p = config::check_static(loaded);
    for c in &loaded.connectors {
        if let Err(e) = crate::scheduler::parse_cron(&c.schedule) {
            p.push(Problem::error(&c.dir.join("connector.toml").display().to_string(), "schedule", format!("invalid cron expression: {e}")));
        }
    }
    p
}

/// Register-specific checks (`registers::check`). With `online`, each Stratum register's
/// metadata is fetched from the register itself first (the check then proves the mapping
/// against what the register really has, and the unit bindings against its units); otherwise
/// the connectors' offline metadata files are used.
pub async fn check_registers(loaded: &Loaded, online: bool) -> Vec<Problem> {
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
    problems.extend(crate::registers::check(loaded, &fetched));
    problems
}

/// Every connector's keyword table (`keywords.toml`) must load; a connector whose source reads
/// keyword notes must have one.
fn keyword_tables(loaded: &config::Loaded) -> Vec<Problem> {
    use crate::sources::riv::keywords::{KeywordTable, FILE_NAME};
    let mut p = vec![];
    for c in &loaded.connectors {
        let f = c.dir.join(FILE_NAME);
        if f.exists() {
            if let Err(e) = KeywordTable::load(&f) {
                p.push(Problem::error(&f.display().to_string(), "keyword", format!("{e:#}")));
            }
        } else if loaded.settings.sources.get(&c.source).is_some_and(|s| s.kind == config::SourceKind::Riv && s.observations != config::ObservationSource::Structured) {
            p.push(Problem::error(&c.dir.join("connector.toml").display().to_string(), "source", format!("source {} reads keyword notes, but this connector has no {FILE_NAME}", c.source)));
        }
    }
    p
}

/// What `mapping scaffold` did: wrote a new folder, or compared an existing one.
#[derive(Debug)]
pub struct ScaffoldOutcome {
    pub dir: std::path::PathBuf,
    /// A new folder was written (false: one existed and was only compared).
    pub written: bool,
    /// Against an existing mapping: columns added, removed or changed in the register's
    /// metadata since the mapping was written.
    pub changes: Vec<crate::registers::scaffold::ColumnChange>,
}

/// `mapping scaffold --register NAME [--out DIR]`: fetch the register's metadata from Stratum
/// and write a connector folder (`registers::scaffold`) into `out` (default: the connectors
/// folder, `<connectors_dir>/<NAME>`); if the folder already has a mapping, compare instead
/// and write nothing.
pub async fn mapping_scaffold(loaded: &config::Loaded, register: &str, out: Option<&std::path::Path>) -> anyhow::Result<ScaffoldOutcome> {
    use anyhow::Context;
    let r = loaded.settings.registers.get(register).with_context(|| format!("no register '{register}' in [registers]"))?;
    anyhow::ensure!(r.kind == config::RegisterKind::Stratum, "register '{register}' is not a Stratum register");
    let client = crate::sinks::stratum::StratumClient::new(register, r, None).with_context(|| format!("register '{register}'"))?;
    let meta = client.load_metadata().await.with_context(|| format!("register '{register}': metadata not reachable"))?;
    let dir = out.map(std::path::Path::to_path_buf).unwrap_or_else(|| loaded.settings.service.connectors_dir.join(register));
    let mapping = dir.join("mapping.toml");
    if mapping.exists() {
        let text = std::fs::read_to_string(&mapping).with_context(|| format!("cannot read {}", mapping.display()))?;
        return Ok(ScaffoldOutcome { changes: crate::registers::scaffold::compare(&text, &meta), dir, written: false });
    }
    let units: Vec<String> = r.units.iter().map(|u| u.hsa_id.clone()).collect();
    let s = crate::registers::scaffold::scaffold(register, &meta, &units);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in [("connector.toml", &s.connector_toml), ("mapping.toml", &s.mapping_toml), ("metadata.json", &s.metadata_json)] {
        let f = dir.join(name);
        anyhow::ensure!(!f.exists(), "{} exists; not overwritten", f.display());
        std::fs::write(&f, text).with_context(|| format!("cannot write {}", f.display()))?;
    }
    Ok(ScaffoldOutcome { dir, written: true, changes: vec![] })
}
