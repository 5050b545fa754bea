//! The Stratum register API client (SAR registrations, PVK aggregates): metadata-driven
//! validation, one session per unit context, POST/PUT/DELETE, EventID kept per registration.

pub mod client;
/// The register's metadata is the registers' contract description (the mappers read it too);
/// it lives in `registers/metadata.rs` and is re-exported here for the client and validation.
pub use crate::registers::metadata;
mod session;
pub mod validate;

pub use client::{FoundRegistration, StratumClient};
