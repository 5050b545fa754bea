//! (d) What the store does to each document before writing it: JSON, then the cipher. The
//! current format (`v3`: compressed against the dictionary, binary) against `v2`, the format
//! before it (JSON, AES-GCM, base64 text), over the sandbox's records of every kind, one core.

use crate::cases::SealMode;
use crate::{cpu_seconds, pin_to_one_cpu};
use anyhow::{bail, Result};
use registerbrygga::crypto::{Aad, Cipher};
use registerbrygga::model::Record;
use serde_json::{json, Value};
use std::time::Instant;

pub fn run(patients: usize, mode: SealMode) -> Result<Value> {
    let records = crate::parse::records(patients)?;
    let cipher = Cipher::new(&[[7u8; 32]])?;
    let aad = Aad::new("documents.payload", &["bench", "doc"]);
    let cpu = pin_to_one_cpu();
    let json_bytes: usize = records.iter().map(|r| serde_json::to_vec(r).map(|v| v.len()).unwrap_or(0)).sum();
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let sealed: Vec<Vec<u8>> = records
        .iter()
        .map(|r| {
            let plain = serde_json::to_vec(r).expect("records serialise");
            match mode {
                SealMode::Current => cipher.encrypt(&aad, &plain),
                SealMode::V2 => cipher.encrypt_v2(&aad, &plain),
            }
        })
        .collect();
    let seal_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let opened: Vec<Record> = sealed.iter().map(|s| cipher.decrypt_json(&aad, s)).collect::<Result<_>>()?;
    let open_s = t.elapsed().as_secs_f64();
    if opened != records {
        bail!("a record did not come back as it was sealed");
    }
    let n = records.len() as f64;
    let stored: usize = sealed.iter().map(Vec::len).sum();
    Ok(json!({
        "seconds": seal_s + open_s,
        "cpu_seconds": cpu_seconds() - cpu0,
        "pinned_cpu": cpu,
        "records": records.len(),
        "seal_us_per_record": seal_s / n * 1e6,
        "open_us_per_record": open_s / n * 1e6,
        "json_bytes_per_record": json_bytes as f64 / n,
        "stored_bytes_per_record": stored as f64 / n,
    }))
}
