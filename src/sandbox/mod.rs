//! Sandbox peers on loopback: the journal (RIV-TA producer), the Stratum emulator, the PVK
//! receiver. Real protocols, real rules — for the demo, the tests, benchmarks and acceptance tests.

pub mod fhir;
pub mod env;
pub mod journal;
pub mod pvk;
pub mod stratum;
pub mod tls;
pub mod vocabulary;
