//! Encryption at rest (AES-256-GCM) and the keyed patient pseudonym (HMAC-SHA256).
//!
//! Ciphertext layout: `v1:<key id>:` + base64(nonce ‖ ciphertext‖tag). The key id lets a region
//! rotate keys: new writes use the first key, reads accept every configured key.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Clone)]
pub struct Cipher {
    keys: Arc<Vec<(String, Aes256Gcm)>>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cipher(keys: {:?})", self.keys.iter().map(|k| &k.0).collect::<Vec<_>>())
    }
}

/// Decode key material: 32 raw bytes, or base64 / hex of 32 bytes (surrounding whitespace ignored).
pub fn decode_key(material: &[u8]) -> Result<[u8; 32]> {
    if material.len() == 32 {
        let mut k = [0u8; 32];
        k.copy_from_slice(material);
        return Ok(k);
    }
    let text = std::str::from_utf8(material).context("key is neither 32 raw bytes nor text")?.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text)?
    } else {
        B64.decode(text).context("key is not valid base64 or hex")?
    };
    if bytes.len() != 32 {
        bail!("key must be 32 bytes (256 bits), got {}", bytes.len());
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&bytes);
    Ok(k)
}

/// A short, non-secret id of a key (first 8 hex of its SHA-256), stored with each ciphertext.
pub fn key_id(key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(key)[..4])
}

impl Cipher {
    /// `keys[0]` encrypts; all decrypt.
    pub fn new(keys: &[[u8; 32]]) -> Result<Cipher> {
        if keys.is_empty() {
            bail!("at least one encryption key is required");
        }
        let keys = keys
            .iter()
            .map(|k| (key_id(k), Aes256Gcm::new_from_slice(k).expect("32-byte key")))
            .collect();
        Ok(Cipher { keys: Arc::new(keys) })
    }

    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let (id, aead) = &self.keys[0];
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = aead.encrypt(Nonce::from_slice(&nonce), plaintext).expect("AES-GCM encryption does not fail");
        let mut body = nonce.to_vec();
        body.extend_from_slice(&ct);
        format!("v1:{id}:{}", B64.encode(body)).into_bytes()
    }

    pub fn decrypt(&self, stored: &[u8]) -> Result<Vec<u8>> {
        let s = std::str::from_utf8(stored).map_err(|_| anyhow!("stored ciphertext is not in the v1 format"))?;
        let mut parts = s.splitn(3, ':');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("stored ciphertext is not in the v1 format");
        };
        let (_, aead) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| anyhow!("no configured key has id {id} (was a key removed too early?)"))?;
        let body = B64.decode(body).context("ciphertext is not base64")?;
        if body.len() < 12 + 16 {
            bail!("ciphertext too short");
        }
        aead.decrypt(Nonce::from_slice(&body[..12]), &body[12..])
            .map_err(|_| anyhow!("ciphertext failed authentication (key {id})"))
    }

    pub fn encrypt_json<T: serde::Serialize>(&self, v: &T) -> Vec<u8> {
        self.encrypt(&serde_json::to_vec(v).expect("serialisable"))
    }

    pub fn decrypt_json<T: serde::de::DeserializeOwned>(&self, stored: &[u8]) -> Result<T> {
        Ok(serde_json::from_slice(&self.decrypt(stored)?)?)
    }
}

/// Keyed pseudonym of a patient id: the only patient reference allowed in logs, metrics and
/// store lookups. Without the key it cannot be reversed by enumerating personnummer.
#[derive(Clone)]
pub struct Pseudonymizer {
    key: Arc<[u8; 32]>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer(..)")
    }
}

impl Pseudonymizer {
    pub fn new(key: [u8; 32]) -> Pseudonymizer {
        Pseudonymizer { key: Arc::new(key) }
    }

    /// 24 hex characters (96 bits): enough to be unique in a region, short in a log line.
    pub fn patient_key(&self, id: &crate::model::PatientId) -> String {
        self.hash_str(&format!("{:?}:{}", id.kind(), id.raw()))
    }

    pub fn hash_str(&self, s: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key[..]).expect("any key length");
        mac.update(s.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rotation() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let old = Cipher::new(&[k1]).unwrap();
        let ct = old.encrypt(b"hello");
        assert!(!String::from_utf8_lossy(&ct).contains("hello"));
        let rotated = Cipher::new(&[k2, k1]).unwrap();
        assert_eq!(rotated.decrypt(&ct).unwrap(), b"hello");
        let ct2 = rotated.encrypt(b"x");
        assert!(old.decrypt(&ct2).is_err());
        let mut tampered = ct.clone();
        let n = tampered.len();
        tampered[n - 2] = if tampered[n - 2] == b'A' { b'B' } else { b'A' };
        assert!(old.decrypt(&tampered).is_err());
    }

    #[test]
    fn key_decoding() {
        assert!(decode_key(B64.encode([7u8; 32]).as_bytes()).is_ok());
        assert!(decode_key(hex::encode([7u8; 32]).as_bytes()).is_ok());
        assert!(decode_key(b"short").is_err());
    }
}
