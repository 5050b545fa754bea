//! registerbrygga: journal data → Svenska Artrosregistret and Primärvårdskvalitet.
//! See ARCHITECTURE.md for the map of the code and what may depend on what.

pub mod admin;
pub mod audit;
pub mod config;
pub mod crypto;
pub mod delivery;
pub mod model;
pub mod outbox;
pub mod pipeline;
pub mod registers;
pub mod runtime;
pub mod sandbox;
pub mod scheduler;
pub mod sinks;
pub mod sources;
pub mod store;
pub mod table;
pub mod telemetry;
pub mod units;
pub mod app;
pub mod checks;
pub mod cli;
pub mod daemon;
pub mod demo;
