//! The Stratum register API client (SAR registrations, PVK aggregates): metadata-driven
//! validation, one session per unit context, POST/PUT/DELETE, EventID kept per registration.

pub mod metadata;
