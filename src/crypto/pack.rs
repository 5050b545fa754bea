//! What is encrypted in a `v3` ciphertext: a form byte, then the plaintext as that form says.
//!
//! A stored document is JSON of a few hundred bytes, mostly the same field names and code
//! systems in every row, which a compressor alone barely shrinks (deflate: 567 → 351 bytes,
//! sandbox sample). Against a preset dictionary of those names it stores in about a third.
//! Smaller rows are what makes a region's store smaller and cheaper to write and read.
//!
//! zstd, because it is made for small inputs with a dictionary: the dictionary is digested
//! once per process, so compressing a document costs about 1 µs, less than its encryption
//! (deflate, reset and primed with the dictionary per document, cost 14 µs).
//!
//! A dictionary is part of the stored format: once released it never changes (old rows need it
//! to decompress). A better one gets a new form byte beside it.

use anyhow::{anyhow, bail, Result};
use std::cell::RefCell;
use std::sync::OnceLock;
use zstd::bulk::{Compressor, Decompressor};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

/// The plaintext as given.
const PLAIN: u8 = 0;
/// A zstd frame compressed against [`DICTIONARY_1`] (as raw content).
const ZSTD_1: u8 = 1;

/// Skeletons of our record JSON (serde's field names), the national code systems' OIDs
/// (ICD-10-SE, KVÅ, SNOMED CT SE, HSA: `../shared/research/sources.md`) and common values; no
/// personal data. Fixed forever, see the module comment.
const DICTIONARY_1: &[u8] = include_bytes!("dictionary-1.json");

/// zstd's level: one of its fast levels, as the region's pull is CPU-bound. Per sandbox
/// document (567 bytes): level 1 stores it in 218 bytes for 3.4 µs, -1 in 237 for 1.1 µs, -4 in
/// 243 for 0.9 µs (`BENCHMARKS.md`, fifth round).
const LEVEL: i32 = -4;

/// Plaintexts in this range are compressed: documents and registrations. Larger ones are
/// patient lists, which their writers compress as they write them; tiny ones do not gain.
const PACK_MIN: usize = 48;
const PACK_MAX: usize = 16 * 1024;

fn encoder_dictionary() -> &'static EncoderDictionary<'static> {
    static D: OnceLock<EncoderDictionary<'static>> = OnceLock::new();
    D.get_or_init(|| EncoderDictionary::copy(DICTIONARY_1, LEVEL))
}

fn decoder_dictionary() -> &'static DecoderDictionary<'static> {
    static D: OnceLock<DecoderDictionary<'static>> = OnceLock::new();
    D.get_or_init(|| DecoderDictionary::copy(DICTIONARY_1))
}

thread_local! {
    // One context each per thread: creating one per document would cost more than the work.
    static COMPRESSOR: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

/// The form byte and the plaintext in that form, with room for the AEAD tag.
pub(super) fn pack(plaintext: &[u8]) -> Vec<u8> {
    if (PACK_MIN..=PACK_MAX).contains(&plaintext.len()) {
        let packed = COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_none() {
                *c = Compressor::with_prepared_dictionary(encoder_dictionary()).ok();
            }
            c.as_mut().and_then(|c| c.compress(plaintext).ok())
        });
        // Kept only when it is smaller; a compressor that failed leaves the payload plain.
        if let Some(z) = packed.filter(|z| z.len() < plaintext.len()) {
            let mut out = Vec::with_capacity(1 + z.len() + 16);
            out.push(ZSTD_1);
            out.extend_from_slice(&z);
            return out;
        }
    }
    let mut out = Vec::with_capacity(plaintext.len() + 1 + 16);
    out.push(PLAIN);
    out.extend_from_slice(plaintext);
    out
}

/// The plaintext [`pack`] was given.
pub(super) fn unpack(mut packed: Vec<u8>) -> Result<Vec<u8>> {
    match packed.first().copied() {
        Some(PLAIN) => {
            packed.remove(0);
            Ok(packed)
        }
        Some(ZSTD_1) => {
            let frame = &packed[1..];
            // The frame says its size; only what `pack` wrote is authenticated in here, so a
            // size past what it packs is damage.
            let n = match zstd::zstd_safe::get_frame_content_size(frame) {
                Ok(Some(n)) if n as usize <= PACK_MAX => n as usize,
                _ => bail!("stored payload has no valid compressed size"),
            };
            DECOMPRESSOR.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(Decompressor::with_prepared_dictionary(decoder_dictionary()).map_err(|e| anyhow!("zstd: {e}"))?);
                }
                let out = d.as_mut().expect("set above").decompress(frame, n).map_err(|e| anyhow!("stored payload does not decompress: {e}"))?;
                if out.len() != n {
                    bail!("stored payload decompresses to {} bytes, its frame says {n}", out.len());
                }
                Ok(out)
            })
        }
        Some(form) => bail!("stored payload has an unknown form {form}"),
        None => bail!("stored payload is empty"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_shrink_and_every_size_round_trips() {
        let doc = br#"{"record":"diagnosis","provenance":{"connector":"artrosregistret","source_system":"SE2321000156-COS1","document_id":"46C1-D162-2","fetched_at":"2026-12-05T18:59:11.057846324Z"},"patient":{"kind":"personnummer","value":"193202278564"},"care_contact_id":"46C1-VK162-2","unit":"SE2321000156-FT02","code":{"system":"1.2.752.116.1.1.1.1.3","code":"M751"},"kind":"main","chronic":false,"time":"2026-02-23T13:00:00+01:00","profession":{"system":"2.25.317202611230001","code":"FYSIOTERAPEUT","display":"Fysioterapeut"},"nullified":false}"#;
        let p = pack(doc);
        assert_eq!(p[0], ZSTD_1);
        assert!(p.len() * 2 < doc.len(), "{} of {}", p.len(), doc.len());
        assert_eq!(unpack(p).unwrap(), doc);
        // Below the range, random (incompressible: already compressed lists) and above the
        // range: stored plain.
        let mut noise = vec![0u8; PACK_MAX];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut noise);
        for n in (PACK_MIN..=PACK_MAX).step_by(61).chain([PACK_MAX]) {
            let p = pack(&noise[..n]);
            assert_eq!(p[0], PLAIN, "{n}");
            assert_eq!(unpack(p).unwrap(), &noise[..n]);
        }
        for x in [&b"{}"[..], &vec![b'a'; PACK_MAX + 1][..], &[][..]] {
            let p = pack(x);
            assert_eq!(p[0], PLAIN);
            assert_eq!(unpack(p).unwrap(), x);
        }
        // Part JSON, part noise, at random sizes: whatever zstd makes of it round trips.
        let mut rng = rand::thread_rng();
        for _ in 0..300 {
            let n = rand::Rng::gen_range(&mut rng, 0..PACK_MAX);
            let mut x = doc.repeat(n / doc.len() + 1);
            x.truncate(n);
            for b in x.iter_mut().skip(rand::Rng::gen_range(&mut rng, 0..=n)) {
                *b = rand::Rng::gen(&mut rng);
            }
            assert_eq!(unpack(pack(&x)).unwrap(), x);
        }
        // Repetitive inputs at the top of the range still round trip (the output grows).
        let big = doc.repeat(PACK_MAX / doc.len());
        assert_eq!(unpack(pack(&big)).unwrap(), big);
    }

    #[test]
    fn damage_is_an_error() {
        assert!(unpack(vec![]).is_err());
        assert!(unpack(vec![7, 1, 2]).is_err());
        assert!(unpack(vec![ZSTD_1, 0xff, 0xff, 0xff]).is_err());
        let mut p = pack(&b"{\"record\":\"care_contact\",\"nullified\":false,\"status\":null}".repeat(3));
        p.truncate(p.len() - 3);
        assert!(unpack(p).is_err());
    }
}
