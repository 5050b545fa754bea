//! Source connectors: read and normalise journal data into canonical records. One folder each:
//! `riv/` (RIV-TA SOAP through NTjP), `files/` (RIV-TA response documents in a directory),
//! `fhir/` (FHIR R4 REST). Sources only read: they never write the store.
//!
//! The pipeline (`crate::pipeline`) asks a source to `pull` and receives one [`PatientBatch`] per
//! patient on a channel; after every batch is committed it calls `commit` (the files source moves
//! processed files aside then, never before).

use crate::config::PatientDiscovery;
use crate::model::{HsaId, PatientId, Record, Refusal};
use anyhow::Result;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use tokio::sync::mpsc;

pub mod fhir;
pub mod files;
pub mod riv;
pub mod sql;

/// Sources carry personal data, so their endpoints must be `https://`. Plain `http://` is
/// accepted only to a loopback address (a sandbox, a local TLS-terminating tunnel) and only when
/// the source says `allow_plain_http_loopback = true`. The error names the setting, never the URL's
/// credentials.
pub fn check_transport(key: &str, url: &str, allow_plain_http_loopback: bool) -> std::result::Result<(), String> {
    let u = reqwest::Url::parse(url.trim()).map_err(|e| format!("{key} is not a URL: {e}"))?;
    match u.scheme() {
        "https" => Ok(()),
        "http" => {
            let host = u.host_str().unwrap_or("");
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                Err(format!("{key} must be https:// (personal data never travels in plain HTTP; plain http:// is allowed only to loopback)"))
            } else if !allow_plain_http_loopback {
                Err(format!("{key} is plain http:// to loopback: set allow_plain_http_loopback = true on the source to allow it"))
            } else {
                Ok(())
            }
        }
        other => Err(format!("{key} has unsupported scheme {other}:// (use https://)")),
    }
}

/// What to pull.
#[derive(Clone, Debug)]
pub struct PullRequest {
    pub connector: String,
    /// Care units to read (requests are limited to them; records elsewhere are dropped).
    pub units: Vec<HsaId>,
    /// Patients changed since this instant (watermark minus overlap); `None` = everyone known.
    pub changed_since: Option<DateTime<Utc>>,
    /// The clinical window fetched for each changed patient (inclusive dates).
    pub window_from: NaiveDate,
    pub window_to: NaiveDate,
    pub discovery: PatientDiscovery,
    /// Folder of the connector (relative paths in `discovery` resolve against it).
    pub connector_dir: std::path::PathBuf,
    pub correlation_id: String,
    /// Today's date (for validating dates and identities); injectable for tests.
    pub today: NaiveDate,
}

/// Everything read about one patient in this pull.
#[derive(Clone, Debug)]
pub struct PatientBatch {
    pub patient: PatientId,
    pub records: Vec<Record>,
    /// Items refused inside otherwise good documents (field named, no personal data).
    pub refusals: Vec<Refusal>,
    /// `result/logId` values from the producer, for the audit trail.
    pub log_ids: Vec<String>,
}

#[derive(Clone, Debug)]
pub enum SourceItem {
    Patient(PatientBatch),
    /// A whole document (or a patient's fetch) refused or failed; goes to quarantine.
    Refused {
        refusal: Refusal,
        /// Pseudonym is computed by the pipeline; the source passes the id when it knows it.
        patient: Option<PatientId>,
        /// Offending raw bytes worth keeping (encrypted at rest), if any.
        raw: Option<Vec<u8>>,
        /// A transient failure (HTTP 5xx, timeout, TLS): the watermark must not pass it.
        transient: bool,
    },
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PullSummary {
    pub patients: usize,
    pub documents: usize,
    pub refused: usize,
    /// True when every patient was fetched; only then may the watermark advance.
    pub complete: bool,
    /// The instant the pull's change query started (the next watermark).
    pub started_at: Option<DateTime<Utc>>,
    /// Files consumed (files source), moved aside on `commit`.
    #[serde(skip)]
    pub files: Vec<std::path::PathBuf>,
}

#[async_trait]
pub trait Source: Send + Sync {
    /// Stream batches for `req` into `out`; return a summary when done.
    async fn pull(&self, req: &PullRequest, out: mpsc::Sender<SourceItem>) -> Result<PullSummary>;
    /// Every batch of the pull is committed: finish (e.g. move processed files aside).
    async fn commit(&self, summary: &PullSummary) -> Result<()>;
}

/// The source a `[sources.<name>]` section describes.
pub fn from_settings(settings: &crate::config::SourceSettings) -> Result<std::sync::Arc<dyn Source>> {
    use crate::config::SourceKind;
    Ok(match settings.kind {
        SourceKind::Riv => std::sync::Arc::new(riv::RivSource::new(settings)?),
        SourceKind::Files => std::sync::Arc::new(files::FilesSource::new(settings)?),
        SourceKind::Fhir => std::sync::Arc::new(fhir::FhirSource::new(settings)?),
    })
}
