//! The Stratum register API client (SAR registrations, PVK aggregates): metadata-driven
//! validation, one session per unit context, POST/PUT/DELETE, EventID kept per registration.

pub mod client;
pub mod metadata;
mod session;
pub mod validate;

pub use client::{FoundRegistration, StratumClient};
