//! The running application's shared context: configuration, store, keys, identity of this
//! replica. Built once by the CLI and handed to every long-running part.

use crate::config::{Loaded, Settings};
use crate::crypto::{decode_key, Cipher, Pseudonymizer};
use crate::store::Store;
use anyhow::{Context, Result};
use std::sync::Arc;

#[derive(Clone)]
pub struct App {
    pub loaded: Arc<Loaded>,
    pub store: Store,
    pub pseudo: Pseudonymizer,
    /// Name of this replica in leases, ticks and audit events.
    pub instance_id: String,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "App({})", self.instance_id)
    }
}

/// Read the configured keys: the cipher for payloads at rest and the pseudonymiser.
pub fn keys(settings: &Settings) -> Result<(Cipher, Pseudonymizer)> {
    let mut keys = vec![];
    for (i, k) in settings.security.encryption_keys.iter().enumerate() {
        let bytes = k.read_bytes().with_context(|| format!("security.encryption_keys[{i}]"))?;
        keys.push(decode_key(&bytes).with_context(|| format!("security.encryption_keys[{i}]"))?);
    }
    let cipher = Cipher::new(&keys).context("security.encryption_keys")?;
    let pk = settings.security.pseudonym_key.as_ref().context("security.pseudonym_key is not configured")?;
    let pseudo = Pseudonymizer::new(decode_key(&pk.read_bytes().context("security.pseudonym_key")?).context("security.pseudonym_key")?);
    Ok((cipher, pseudo))
}

pub fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

impl App {
    pub async fn open(loaded: Loaded) -> Result<App> {
        let (cipher, pseudo) = keys(&loaded.settings)?;
        let mut store = Store::open(&loaded.settings.store, cipher).await?;
        if let Some(k) = &loaded.settings.security.audit_key {
            let key = decode_key(&k.read_bytes().context("security.audit_key")?).context("security.audit_key")?;
            store.enable_audit_mac(key).await?;
        }
        let instance_id = loaded.settings.service.instance_id.clone().unwrap_or_else(default_instance_id);
        Ok(App { loaded: Arc::new(loaded), store, pseudo, instance_id })
    }

    pub fn settings(&self) -> &Settings {
        &self.loaded.settings
    }
}
