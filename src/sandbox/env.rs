//! A whole sandbox region on loopback — journal (RIV-TA over mTLS), Stratum emulator (SAR and
//! PVK registers, mTLS) — plus the configuration that points the real daemon at it. Used by
//! `registerbrygga demo`, `registerbrygga sandbox`, the end-to-end tests and the benchmarks.
//!
//! The daemon is configured exactly as a region would configure it: a `--config` file layered on
//! `config/default.toml` and `config/local.toml`, certificates and keys as files, connectors in a
//! folder. Only the connectors' sandbox specifics differ from the shipped ones: the PVK connector
//! reads the sandbox rule set (the sandbox's local codes), the sandbox's listing file and its
//! PVK scenario's drug list and FTE (src/sandbox/pvk.rs).

use super::journal::{JournalHandle, JournalServer, Population, PopulationSpec, SharedPopulation};
use super::stratum::{self as emulator, EmulatorHandle, EmulatorOptions};
use super::tls::CertSet;
use anyhow::{Context, Result};
use chrono::NaiveDate;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct SandboxEnv {
    pub dir: PathBuf,
    pub certs: CertSet,
    pub population: SharedPopulation,
    pub journal: JournalHandle,
    pub emulator: EmulatorHandle,
    /// The same journal as FHIR R4 (Encounter, Condition, Observation, Procedure) over HTTPS.
    pub fhir_url: String,
    pub today: NaiveDate,
}

/// The population's records as the FHIR sandbox serves them: each patient's four RIV-TA
/// documents rendered and read back, so FHIR and RIV-TA carry the same journal.
fn fhir_feed(pop: SharedPopulation) -> super::fhir::RecordFeed {
    Arc::new(move || {
        use super::journal::{render_patient, Contract};
        let ctx = crate::sources::riv::ParseContext::new("sandbox-fhir", pop.spec().today);
        let mut out = vec![];
        for i in 0..pop.len() {
            let updated = pop.updated_at(i);
            for c in [Contract::GetCareContacts, Contract::GetDiagnosis, Contract::GetActivities, Contract::GetObservations] {
                let doc = render_patient(&pop, c, i);
                if let Ok(parsed) = crate::sources::riv::parse_bytes(&doc, "sandbox", &ctx) {
                    out.extend(parsed.records.into_iter().map(|r| (r, updated)));
                }
            }
        }
        out
    })
}

#[derive(Clone, Debug)]
pub struct SandboxSpec {
    pub seed: u64,
    pub patients: usize,
    pub today: NaiveDate,
    pub journal_addr: SocketAddr,
    pub stratum_addr: SocketAddr,
    /// Share of deliberately bad items in the journal (quarantine exercise).
    pub bad_item_share: f64,
}

impl SandboxSpec {
    pub fn new(seed: u64, patients: usize, today: NaiveDate) -> SandboxSpec {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        SandboxSpec { seed, patients, today, journal_addr: any, stratum_addr: any, bad_item_share: 0.0 }
    }
}

fn random_key_file(p: &Path) -> Result<()> {
    if p.exists() {
        return Ok(());
    }
    use base64::Engine;
    use rand::RngCore;
    let mut k = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    std::fs::write(p, base64::engine::general_purpose::STANDARD.encode(k))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

impl SandboxEnv {
    /// Start the peers with their certificates, keys and files under `dir`.
    pub async fn start(dir: &Path, spec: SandboxSpec) -> Result<SandboxEnv> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let certs = CertSet::ensure(&dir.join("certs"))?;
        let mut pspec = PopulationSpec::new(spec.seed, spec.patients, spec.today);
        pspec.bad_item_share = spec.bad_item_share;
        let population: SharedPopulation = Arc::new(Population::generate(&pspec));
        let journal = JournalServer::start(population.clone(), &certs, spec.journal_addr).await?;
        let mut eo = EmulatorOptions::new(certs.clone());
        eo.bind = spec.stratum_addr;
        // The sandbox's own registers (data files) next to the contract's.
        eo.registers.extend(emulator::sandbox_registers());
        let emulator = emulator::start(eo).await?;
        std::fs::create_dir_all(dir.join("keys"))?;
        random_key_file(&dir.join("keys/encryption.key"))?;
        random_key_file(&dir.join("keys/pseudonym.key"))?;
        std::fs::write(dir.join("stratum.apikey"), emulator.api_key())?;
        population.write_listing(&dir.join("listing.csv"))?;
        super::pvk::write_drug_list(&population, &dir.join("drugs.csv"))?;
        population.write_patient_list(&dir.join("patients.txt"))?;
        let fhir_listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let fhir_url = super::fhir::spawn(super::fhir::FhirSandbox::new(fhir_feed(population.clone())), fhir_listener, Some(certs.server_config()?))?;
        let env = SandboxEnv { dir, certs, population, journal, emulator, fhir_url, today: spec.today };
        env.write_connectors()?;
        env.write_config()?;
        Ok(env)
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.join("sandbox.toml")
    }

    pub fn connectors_dir(&self) -> PathBuf {
        self.dir.join("connectors")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("registerbrygga.db")
    }

    /// The `--config` file layered over config/default.toml and config/local.toml.
    fn write_config(&self) -> Result<()> {
        let d = |p: &Path| p.display().to_string().replace('\\', "/");
        let tls = format!(
            "{{ ca_file = \"{}\", client_cert_file = \"{}\", client_key = {{ file = \"{}\" }} }}",
            d(&self.certs.ca),
            d(&self.certs.client_cert),
            d(&self.certs.client_key)
        );
        let text = format!(
            r#"# Written by the sandbox: points the daemon at the sandbox peers on loopback.
[service]
connectors_dir = "{connectors}"
data_dir = "{dir}"

[store]
sqlite_path = "{db}"

[security]
encryption_keys = [{{ file = "{dir}/keys/encryption.key" }}]
pseudonym_key = {{ file = "{dir}/keys/pseudonym.key" }}

[sources.journal]
base_url = "{journal}"
tls = {tls}

# The same journal over FHIR R4, for connectors that use `source = "journal_fhir"`.
[sources.journal_fhir]
kind = "fhir"
base_url = "{fhir}"
tls = {tls}

[registers.sar]
base_url = "{stratum}"
api_key = {{ file = "{dir}/stratum.apikey" }}
tls = {tls}

[registers.pvk]
base_url = "{stratum}"
api_key = {{ file = "{dir}/stratum.apikey" }}
tls = {tls}

[registers.pvk_files]
export_dir = "{dir}/export/pvk"
"#,
            connectors = d(&self.connectors_dir()),
            dir = d(&self.dir),
            db = d(&self.db_path()),
            journal = self.journal.base_url(),
            stratum = self.emulator.base_url(),
            fhir = self.fhir_url,
        );
        std::fs::write(self.config_file(), text)?;
        Ok(())
    }

    /// Copy the shipped connectors, pointing the PVK connector at the sandbox rule set and the
    /// sandbox's listing file (the sandbox journal writes sandbox codes).
    fn write_connectors(&self) -> Result<()> {
        let src = Path::new("connectors");
        let dst = self.connectors_dir();
        copy_dir(src, &dst).with_context(|| format!("cannot copy {} (run from the project folder)", src.display()))?;
        // Paths that point outside a connector's folder must keep pointing at the originals.
        for e in std::fs::read_dir(&dst)? {
            let f = e?.path().join("connector.toml");
            if !f.exists() {
                continue;
            }
            let orig_dir = src.join(f.parent().and_then(|p| p.file_name()).unwrap_or_default()).canonicalize()?;
            let mut t: toml::Table = toml::from_str(&std::fs::read_to_string(&f)?)?;
            if let Some(toml::Value::Table(o)) = t.get_mut("options") {
                for k in ["metadata_file", "register_metadata"] {
                    if let Some(toml::Value::String(rel)) = o.get(k) {
                        let abs = orig_dir.join(rel).display().to_string();
                        o.insert(k.into(), abs.into());
                    }
                }
            }
            std::fs::write(&f, toml::to_string(&t)?)?;
        }
        let pvk = dst.join("primarvardskvalitet/connector.toml");
        if pvk.exists() {
            let mut t: toml::Table = toml::from_str(&std::fs::read_to_string(&pvk)?)?;
            if let Some(toml::Value::Table(o)) = t.get_mut("options") {
                o.remove("rule_years");
                o.insert("rule_files".into(), toml::Value::Array(vec!["sandbox-2026.toml".into()]));
                let mut listing = toml::Table::new();
                listing.insert("file".into(), self.dir.join("listing.csv").display().to_string().into());
                o.insert("listing".into(), toml::Value::Table(listing));
                // PVK scenario (src/sandbox/pvk.rs): prescriptions and physiotherapist FTE.
                let mut drugs = toml::Table::new();
                drugs.insert("file".into(), self.dir.join("drugs.csv").display().to_string().into());
                o.insert("drug_list".into(), toml::Value::Table(drugs));
                let mut fte = toml::Table::new();
                for (unit, year, v) in super::pvk::fte(self.today) {
                    let t = fte.entry(unit).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    if let toml::Value::Table(t) = t {
                        t.insert(year.to_string(), v.into());
                    }
                }
                o.insert("fte".into(), toml::Value::Table(fte));
            }
            std::fs::write(&pvk, format!("# Sandbox copy: sandbox rule set and listing.\n{}", toml::to_string(&t)?))?;
        }
        Ok(())
    }

    /// Load the daemon's configuration against this sandbox (the repository's config folder +
    /// the sandbox's `--config` file), without reading RB__ variables.
    pub fn load_config(&self, overrides: Vec<(String, String)>) -> Result<crate::config::Loaded> {
        crate::config::load(&crate::config::LoadOptions {
            config_dir: Some(PathBuf::from("config")),
            extra_file: Some(self.config_file()),
            environment: Some("local".into()),
            overrides,
            skip_env: true,
        })
    }

    pub async fn shutdown(self) {
        self.journal.shutdown().await;
        self.emulator.shutdown().await;
    }
}

fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let to = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to)?;
        } else {
            std::fs::copy(e.path(), to)?;
        }
    }
    Ok(())
}
