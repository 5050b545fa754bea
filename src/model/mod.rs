//! Canonical clinical model: identities, units and the four record kinds, each with provenance
//! and a `nullified` flag. Depends on nothing else in the crate.

mod hsa;
mod identity;
mod records;

pub use hsa::{HsaError, HsaId};
pub use identity::{luhn_check_digit, IdError, IdKind, PatientId, OID_PERSONNUMMER, OID_SAMORDNINGSNUMMER};
pub use records::*;
