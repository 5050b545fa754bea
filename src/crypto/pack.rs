//! What is encrypted in a `v3` ciphertext: a form byte, then the plaintext as that form says.
//!
//! A stored document is JSON of a few hundred bytes, mostly the same field names and code
//! systems in every row, which deflate alone barely shrinks (567 → 351 bytes, sandbox sample).
//! Against a preset dictionary of those names it stores in about a third (→ 179). Smaller rows are
//! what makes a region-year's store faster: SQLite's cost is in the pages it writes.
//!
//! A dictionary is part of the stored format: once released it never changes (old rows need it
//! to inflate). A better one gets a new form byte beside it.

use anyhow::{anyhow, bail, Result};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;

/// The plaintext as given.
const PLAIN: u8 = 0;
/// Raw deflate against [`DICTIONARY_1`].
const DEFLATE_1: u8 = 1;

/// Skeletons of our record JSON (serde's field names), the national code systems' OIDs
/// (ICD-10-SE, KVÅ, SNOMED CT SE, HSA: `../shared/research/sources.md`) and common values; no
/// personal data. Fixed forever, see the module comment.
const DICTIONARY_1: &[u8] = include_bytes!("dictionary-1.json");

/// Plaintexts in this range are deflated: documents and registrations. Larger ones are patient
/// lists, which their writers compress as they write them; tiny ones do not gain.
const PACK_MIN: usize = 48;
pub(super) const PACK_MAX: usize = 16 * 1024;

thread_local! {
    // One stream each per thread, reset per use: a fresh deflate state is ~256 KiB to allocate.
    // Level 2: zlib-rs 0.6.8's level 1 ("quick") panicked on incompressible inputs of some sizes
    // (its pending buffer overflowed); the test below walks those sizes.
    static DEFLATER: RefCell<Compress> = RefCell::new(deflater());
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

fn deflater() -> Compress {
    Compress::new(Compression::new(2), false)
}

/// The form byte and the plaintext in that form, with room for the AEAD tag.
pub(super) fn pack(plaintext: &[u8]) -> Vec<u8> {
    if (PACK_MIN..=PACK_MAX).contains(&plaintext.len()) {
        // Room for deflate's worst case (stored blocks: 5 bytes per 16 KiB, plus its end), so
        // the stream always ends; `compress_vec` must never run out of output.
        let mut out = Vec::with_capacity(1 + plaintext.len() + plaintext.len() / 1024 + 64 + 16);
        out.push(DEFLATE_1);
        // Should the compressor ever panic (a bug of its own, as level 1 had), the payload is
        // stored plain and the thread gets a fresh compressor: a write is never lost to it.
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            DEFLATER.with(|d| {
                let mut d = d.borrow_mut();
                d.reset();
                d.set_dictionary(DICTIONARY_1).is_ok() && matches!(d.compress_vec(plaintext, &mut out, FlushCompress::Finish), Ok(Status::StreamEnd))
            })
        }))
        .unwrap_or_else(|_| {
            DEFLATER.with(|d| *d.borrow_mut() = deflater());
            false
        });
        // Kept only when it is smaller.
        if done && out.len() <= plaintext.len() {
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
        Some(DEFLATE_1) => INFLATER.with(|i| {
            let mut i = i.borrow_mut();
            i.reset(false);
            i.set_dictionary(DICTIONARY_1).map_err(|e| anyhow!("stored payload's dictionary: {e}"))?;
            let mut out = Vec::with_capacity((packed.len() * 4).min(PACK_MAX + 1));
            loop {
                let read = i.total_in() as usize;
                match i.decompress_vec(&packed[1 + read..], &mut out, FlushDecompress::Finish) {
                    Ok(Status::StreamEnd) => return Ok(out),
                    // Only what `pack` wrote is authenticated in here, so more than it packs is damage.
                    // Room left and no end: the input ran out.
                    Ok(_) if out.len() < out.capacity() => bail!("stored payload ends early"),
                    Ok(_) if out.len() < PACK_MAX => out.reserve(out.capacity().max(256)),
                    Ok(_) => bail!("stored payload inflates past {PACK_MAX} bytes"),
                    Err(e) => bail!("stored payload does not inflate: {e}"),
                }
            }
        }),
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
        assert_eq!(p[0], DEFLATE_1);
        assert!(p.len() * 2 < doc.len(), "{} of {}", p.len(), doc.len());
        assert_eq!(unpack(p).unwrap(), doc);
        // Below the range, random (incompressible: already compressed lists) and above the
        // range: stored plain. Every size of noise, as deflate's stored blocks vary with it.
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
        // Half JSON, half noise, at random sizes: whatever deflate makes of it round trips.
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
        assert!(unpack(vec![DEFLATE_1, 0xff, 0xff, 0xff]).is_err());
        let mut p = pack(&b"{\"record\":\"care_contact\",\"nullified\":false,\"status\":null}".repeat(3));
        p.truncate(p.len() - 3);
        assert!(unpack(p).is_err());
    }
}
