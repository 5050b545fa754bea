//! The Stratum emulator: the contract in `conformance/stratum/README.md`, served over HTTPS on
//! loopback from the contract's metadata files (registers 104 and 218 at once; the sandbox adds
//! its own registers from `registers/*.json`, see [`sandbox_registers`]), with
//! registrations in memory, every validation rule, per-cookie sessions with unit contexts,
//! runtime fault injection, counts of accepted writes so tests can prove exactly-once, and a
//! mode without the 409 rule so a duplicate create is accepted (and seen) instead of refused.

mod server;
pub mod state;

pub use state::{ApiKeyRights, Counts, EmulatedRegistration, OpCounts};

use crate::sandbox::tls::CertSet;
use crate::sinks::stratum::metadata::RegisterMetadata;
use anyhow::{Context as _, Result};
use server::Shared;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The contract's metadata files, built in so the emulator needs no files at run time.
pub fn contract_registers() -> Vec<RegisterMetadata> {
    [include_bytes!("../../../conformance/stratum/sar-104.json").as_slice(), include_bytes!("../../../conformance/stratum/pvk-aggregate.json").as_slice()]
        .iter()
        .map(|b| RegisterMetadata::from_json(b).expect("the contract's metadata files parse"))
        .collect()
}

include!(concat!(env!("OUT_DIR"), "/sandbox_registers.rs"));

/// The sandbox's own registers (`src/sandbox/stratum/registers/*.json`, built in by
/// `build.rs`): inventions of the sandbox, served next to the contract's registers by
/// [`super::env::SandboxEnv`], so a second register is proved end to end by adding data only.
pub fn sandbox_registers() -> Vec<RegisterMetadata> {
    SANDBOX_REGISTER_FILES
        .iter()
        .map(|(name, b)| RegisterMetadata::from_json(b).unwrap_or_else(|e| panic!("sandbox register file {name} is not register metadata: {e}")))
        .collect()
}

/// Faults to inject, set at run time. Shares are probabilities per request (0.0–1.0).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Answer 500 before doing anything.
    pub error_share: f64,
    /// Answer 429 with `Retry-After: retry_after_seconds` before doing anything.
    pub rate_limit_share: f64,
    pub retry_after_seconds: u64,
    /// Wait `slow_ms`, then serve normally.
    pub slow_share: f64,
    pub slow_ms: u64,
    /// Close the connection without an answer, before doing anything.
    pub drop_share: f64,
    /// Do the work, then close the connection without an answer (outcome unknown to the client).
    pub drop_after_share: f64,
    /// Do the work, then hold the answer for `timeout_ms` (past the client's timeout).
    pub timeout_share: f64,
    pub timeout_ms: u64,
    /// Answer 503 with `Retry-After` to everything for this long, counted from `set_faults`.
    pub down_for: Option<Duration>,
}

pub struct EmulatorOptions {
    pub certs: CertSet,
    /// Require a client certificate signed by the sandbox CA (the demo does).
    pub mtls: bool,
    pub bind: SocketAddr,
    /// The main API key (rights to every context); random when None.
    pub api_key: Option<String>,
    /// More keys, e.g. one limited to some units (for 403 tests).
    pub extra_keys: Vec<ApiKeyRights>,
    pub registers: Vec<RegisterMetadata>,
    /// The 409 rule (one registration per form, unit, subject and date). Off: duplicates are
    /// accepted and counted, so a test can see a registration created twice.
    pub unique_rule: bool,
}

impl EmulatorOptions {
    pub fn new(certs: CertSet) -> EmulatorOptions {
        EmulatorOptions { certs, mtls: true, bind: SocketAddr::from(([127, 0, 0, 1], 0)), api_key: None, extra_keys: vec![], registers: contract_registers(), unique_rule: true }
    }
}

pub struct EmulatorHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    api_key: String,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Start the emulator on `opts.bind` (port 0 picks a free port).
pub async fn start(opts: EmulatorOptions) -> Result<EmulatorHandle> {
    let tls = if opts.mtls { opts.certs.server_config_mtls()? } else { opts.certs.server_config()? };
    let api_key = opts.api_key.unwrap_or_else(|| {
        use rand::Rng;
        hex::encode(rand::thread_rng().gen::<[u8; 16]>())
    });
    let mut keys = vec![ApiKeyRights { key: api_key.clone(), contexts: None }];
    keys.extend(opts.extra_keys);
    let emu = state::Emulated::new(opts.registers, keys);
    emu.set_unique_rule(opts.unique_rule);
    let shared = Arc::new(Shared { emu, faults: RwLock::new((Faults::default(), None)), requests: AtomicU64::new(0) });
    let listener = tokio::net::TcpListener::bind(opts.bind).await.with_context(|| format!("cannot bind the Stratum emulator to {}", opts.bind))?;
    let addr = listener.local_addr()?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(server::serve(listener, tls, shared.clone(), rx));
    tracing::info!(%addr, mtls = opts.mtls, "Stratum emulator listening");
    Ok(EmulatorHandle { shared, addr, api_key, stop, task })
}

impl EmulatorHandle {
    /// `https://127.0.0.1:<port>` (clients append `/stratum/api/...`).
    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn api_key(&self) -> String {
        self.api_key.clone()
    }
    pub fn set_faults(&self, f: Faults) {
        let until = f.down_for.map(|d| Instant::now() + d);
        *self.shared.faults.write().expect("faults") = (f, until);
    }
    pub fn clear_faults(&self) {
        self.set_faults(Faults::default())
    }
    /// Turn the 409 rule on or off at run time. Off, every valid POST is accepted and counted,
    /// duplicates included: the mode a test needs to see a registration created twice.
    pub fn set_unique_rule(&self, on: bool) {
        self.shared.emu.set_unique_rule(on)
    }
    pub fn counts(&self) -> Counts {
        Counts { by_form_unit: self.shared.emu.counts(), requests: self.shared.requests.load(Ordering::Relaxed) }
    }
    /// Every HTTP request received so far (faulted ones included).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
    /// The registrations the register holds for a form (by name), in EventID order.
    pub fn registrations(&self, register_id: u32, form: &str) -> Vec<EmulatedRegistration> {
        self.shared.emu.registrations(register_id, form)
    }
    /// Remove a registration as a register user would by hand (not through the API, not
    /// counted): the register's side of "someone deleted it in Stratum".
    pub fn remove_by_hand(&self, event_id: u64) -> bool {
        self.shared.emu.remove_by_hand(event_id)
    }
    /// Forget every session (a register restart or session timeout): clients must select
    /// their unit context again.
    pub fn expire_sessions(&self) {
        self.shared.emu.expire_sessions()
    }
    pub fn session_count(&self) -> usize {
        self.shared.emu.session_count()
    }
    /// Stop accepting, close every connection, and wait for the server task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
