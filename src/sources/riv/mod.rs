//! RIV-TA SOAP consumer (GetCareContacts 3, GetDiagnosis 2, GetActivities 1, GetObservations 1.1,
//! engagement index GetUpdates).

pub mod contract;
pub mod inspect;
pub mod parse;

pub use contract::Contract;
pub use parse::{parse_bytes, parse_response, parse_response_with, DocumentError, ParseContext, Parsed};
