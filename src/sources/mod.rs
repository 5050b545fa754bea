//! Source connectors: read and normalise journal data into canonical records. One folder each.

pub mod riv;
