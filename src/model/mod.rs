//! Canonical clinical model: identities, units and the four record kinds, each with provenance
//! and a `nullified` flag. Depends on nothing else in the crate.

mod hsa;
mod identity;
mod records;

pub use hsa::{HsaError, HsaId};
pub use identity::{luhn_check_digit, IdError, IdKind, PatientId, OID_PERSONNUMMER, OID_SAMORDNINGSNUMMER};
pub use records::*;

/// `(year, month)` moved by `delta` months (negative: back), e.g. the monthly cells of PVK.
pub fn add_months(y: i32, m: u32, delta: i32) -> (i32, u32) {
    let idx = y * 12 + (m as i32 - 1) + delta;
    (idx.div_euclid(12), (idx.rem_euclid(12) + 1) as u32)
}
