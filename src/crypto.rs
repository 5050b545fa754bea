//! Encryption at rest (AES-256-GCM) and the keyed patient pseudonym (HMAC-SHA256).
//!
//! Ciphertext layout: `v3:<key id>:` ‖ nonce ‖ ciphertext‖tag, binary. The key id lets a region
//! rotate keys: new writes use the first key, reads accept every configured key. The plaintext
//! under the encryption starts with a form byte ([`pack`]): a document or a registration is
//! zstd-compressed against a fixed dictionary of our record JSON first, which stores one in
//! about a third of its size. Before `v3`, `v2:<key id>:` + base64(nonce ‖ ciphertext‖tag) held the bare
//! plaintext; `v2` still reads, and `keys rotate` rewrites it as `v3`.
//!
//! A `v2`/`v3` ciphertext is bound to where it is stored: its column and its row's identity are the
//! AES-GCM associated data ([`Aad`]), so a ciphertext copied into another row (one patient's
//! payload under another's key) fails authentication instead of being read as that row's.
//! `v1` ciphertexts (written before the binding) carry no associated data; they stay readable
//! until `keys rotate` has rewritten them as `v3`, after which the store refuses them
//! ([`Cipher::refuse_unbound`]), so an old unbound ciphertext cannot be planted either.

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::sync::Arc;

mod pack;

#[derive(Clone)]
pub struct Cipher {
    keys: Arc<Vec<(String, Aes256Gcm)>>,
    /// Whether `v1` (unbound) ciphertexts are still accepted.
    accept_unbound: bool,
}

/// The associated data of one stored ciphertext: its column and its row's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aad(Vec<u8>);

impl Aad {
    /// `column` as `table.column`; `row` the values that identify the row (its key columns).
    /// Encoded as a JSON array, so no two different identities give the same bytes.
    pub fn new(column: &str, row: &[&str]) -> Aad {
        let mut v: Vec<&str> = Vec::with_capacity(row.len() + 1);
        v.push(column);
        v.extend_from_slice(row);
        Aad(serde_json::to_vec(&v).expect("strings serialise"))
    }
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
        Ok(Cipher { keys: Arc::new(keys), accept_unbound: true })
    }

    /// From now on refuse `v1` ciphertexts (the store says so once `keys rotate` has bound
    /// every stored payload to its row).
    pub fn refuse_unbound(&mut self) {
        self.accept_unbound = false;
    }

    pub fn accepts_unbound(&self) -> bool {
        self.accept_unbound
    }

    /// Id of the key that encrypts (the first configured).
    pub fn current_key_id(&self) -> &str {
        &self.keys[0].0
    }

    /// The prefix every ciphertext written now starts with: a stored value with this prefix
    /// needs no rewriting by `keys rotate`.
    pub fn current_prefix(&self) -> String {
        format!("v3:{}:", self.keys[0].0)
    }

    pub fn encrypt(&self, aad: &Aad, plaintext: &[u8]) -> Vec<u8> {
        let (id, aead) = &self.keys[0];
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        // The form byte is inside the encryption, so it is authenticated with the rest.
        let mut body = pack::pack(plaintext);
        aead.encrypt_in_place(Nonce::from_slice(&nonce), &aad.0, &mut body).expect("AES-GCM encryption does not fail");
        let mut out = Vec::with_capacity(4 + id.len() + nonce.len() + body.len());
        out.extend_from_slice(b"v3:");
        out.extend_from_slice(id.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        out
    }

    pub fn decrypt(&self, aad: &Aad, stored: &[u8]) -> Result<Vec<u8>> {
        const FORMAT: &str = "stored ciphertext is not in the v1/v2/v3 format";
        // `<version>:<key id>:<body>`; the version and the key id are short ASCII.
        let mut colons = stored.iter().take(48).enumerate().filter(|(_, b)| **b == b':').map(|(i, _)| i);
        let (Some(c1), Some(c2)) = (colons.next(), colons.next()) else { bail!(FORMAT) };
        let (version, id, body) = (&stored[..c1], std::str::from_utf8(&stored[c1 + 1..c2]).map_err(|_| anyhow!(FORMAT))?, &stored[c2 + 1..]);
        let (bound, packed) = match version {
            b"v3" => (true, true),
            b"v2" => (true, false),
            b"v1" if self.accept_unbound => (false, false),
            b"v1" => bail!("stored ciphertext is unbound (v1) but every payload was bound to its row by `keys rotate`: refused as planted"),
            _ => bail!(FORMAT),
        };
        let (_, aead) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| anyhow!("no configured key has id {id} (was a key removed too early?)"))?;
        let decoded;
        let body = if packed {
            body
        } else {
            decoded = B64.decode(body).context("ciphertext is not base64")?;
            &decoded[..]
        };
        if body.len() < 12 + 16 {
            bail!("ciphertext too short");
        }
        let aad: &[u8] = if bound { &aad.0 } else { b"" };
        let plain = aead
            .decrypt(Nonce::from_slice(&body[..12]), Payload { msg: &body[12..], aad })
            .map_err(|_| anyhow!("ciphertext failed authentication (key {id}; a payload moved from another row fails here too)"))?;
        if packed {
            pack::unpack(plain)
        } else {
            Ok(plain)
        }
    }

    pub fn encrypt_json<T: serde::Serialize>(&self, aad: &Aad, v: &T) -> Vec<u8> {
        self.encrypt(aad, &serde_json::to_vec(v).expect("serialisable"))
    }

    pub fn decrypt_json<T: serde::de::DeserializeOwned>(&self, aad: &Aad, stored: &[u8]) -> Result<T> {
        Ok(serde_json::from_slice(&self.decrypt(aad, stored)?)?)
    }

    /// Write a `v1` (unbound) ciphertext as the code before the row binding did: only for
    /// tests of the migration path.
    #[doc(hidden)]
    pub fn encrypt_unbound_v1(&self, plaintext: &[u8]) -> Vec<u8> {
        self.encrypt_base64("v1", b"", plaintext)
    }

    /// Write a `v2` ciphertext (bound, base64, not packed) as the code before `v3` did: only for
    /// tests of the migration path.
    #[doc(hidden)]
    pub fn encrypt_v2(&self, aad: &Aad, plaintext: &[u8]) -> Vec<u8> {
        self.encrypt_base64("v2", &aad.0, plaintext)
    }

    /// The layout before `v3`: `<version>:<key id>:` + base64(nonce ‖ ciphertext‖tag).
    fn encrypt_base64(&self, version: &str, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let (id, aead) = &self.keys[0];
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = aead.encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad }).expect("AES-GCM encryption does not fail");
        let mut body = nonce.to_vec();
        body.extend_from_slice(&ct);
        format!("{version}:{id}:{}", B64.encode(body)).into_bytes()
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
        hex::encode(self.patient_key_bytes(id))
    }

    /// The pseudonym's 12 bytes, for holding many of them compactly (hex is `patient_key`).
    pub fn patient_key_bytes(&self, id: &crate::model::PatientId) -> [u8; 12] {
        self.mac12(&format!("{:?}:{}", id.kind(), id.raw()))
    }

    pub fn hash_str(&self, s: &str) -> String {
        hex::encode(self.mac12(s))
    }

    /// The first 12 bytes of the keyed HMAC-SHA256 of `s`.
    fn mac12(&self, s: &str) -> [u8; 12] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key[..]).expect("any key length");
        mac.update(s.as_bytes());
        let mut out = [0u8; 12];
        out.copy_from_slice(&mac.finalize().into_bytes()[..12]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rotation() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let a = Aad::new("t.c", &["row"]);
        let old = Cipher::new(&[k1]).unwrap();
        let ct = old.encrypt(&a, b"hello");
        assert!(!String::from_utf8_lossy(&ct).contains("hello"));
        let rotated = Cipher::new(&[k2, k1]).unwrap();
        assert_eq!(rotated.decrypt(&a, &ct).unwrap(), b"hello");
        let ct2 = rotated.encrypt(&a, b"x");
        assert!(old.decrypt(&a, &ct2).is_err());
        let mut tampered = ct.clone();
        let n = tampered.len();
        tampered[n - 2] = if tampered[n - 2] == b'A' { b'B' } else { b'A' };
        assert!(old.decrypt(&a, &tampered).is_err());
    }

    #[test]
    fn bound_to_row_and_unbound_legacy() {
        let c = Cipher::new(&[[3u8; 32]]).unwrap();
        let ct = c.encrypt(&Aad::new("records.payload", &["k1", "1"]), b"p");
        assert!(c.decrypt(&Aad::new("records.payload", &["k2", "1"]), &ct).is_err(), "another row's identity");
        assert!(c.decrypt(&Aad::new("records.lookup", &["k1", "1"]), &ct).is_err(), "another column");
        // Part boundaries matter: ["a,b"] is not ["a", "b"].
        assert_ne!(Aad::new("x", &["a\",\"b"]), Aad::new("x", &["a", "b"]));
        // `v2` (bound, base64, written before `v3`) still reads, under its own row only.
        let row = Aad::new("records.payload", &["k1", "1"]);
        let v2 = c.encrypt_v2(&row, b"{\"EventDate\":\"2026-04-14\"}");
        assert!(v2.starts_with(b"v2:"));
        assert_eq!(c.decrypt(&row, &v2).unwrap(), b"{\"EventDate\":\"2026-04-14\"}");
        assert!(c.decrypt(&Aad::new("records.payload", &["k2", "1"]), &v2).is_err());
        let v3 = c.encrypt(&row, &b"{\"record\":\"care_contact\",\"nullified\":false}".repeat(4));
        assert!(v3.starts_with(c.current_prefix().as_bytes()) && c.current_prefix().starts_with("v3:"));
        assert!(v3.len() < 4 * 42, "packed: {} bytes", v3.len());
        let legacy = c.encrypt_unbound_v1(b"old");
        assert_eq!(c.decrypt(&Aad::new("any", &[]), &legacy).unwrap(), b"old");
        let mut strict = c.clone();
        strict.refuse_unbound();
        assert!(strict.decrypt(&Aad::new("any", &[]), &legacy).is_err());
    }

    #[test]
    fn key_decoding() {
        assert!(decode_key(B64.encode([7u8; 32]).as_bytes()).is_ok());
        assert!(decode_key(hex::encode([7u8; 32]).as_bytes()).is_ok());
        assert!(decode_key(b"short").is_err());
    }
}
