//! HTTP/SOAP transport: one POST per request, RIV-TA headers, mTLS through the shared client
//! builder, the response body streamed straight into the parser, retries with backon.

use super::contract::Contract;
use super::parse::{parse_bytes, parse_response, sanitise, DocumentError, ParseContext, Parsed};
use super::request;
use crate::config::{RetrySettings, SourceSettings};
use anyhow::Result;
use backon::{ExponentialBuilder, Retryable};
use futures::TryStreamExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A fault body worth reading from an HTTP 500 (SOAP 1.1 sends faults with status 500).
const MAX_FAULT_BYTES: usize = 64 * 1024;

pub struct RivClient {
    http: reqwest::Client,
    base_url: String,
    engagement_index_url: String,
    logical_address: String,
    consumer_hsa_id: String,
    max_response_bytes: u64,
    retry: RetrySettings,
}

/// The exponential backoff a `RetrySettings` describes.
pub fn backoff(r: &RetrySettings) -> ExponentialBuilder {
    let mut b = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(r.initial_delay_ms))
        .with_max_delay(Duration::from_millis(r.max_delay_ms.max(r.initial_delay_ms)))
        .with_factor(r.multiplier.max(1.0));
    b = if r.max_attempts == 0 { b.without_max_times() } else { b.with_max_times(r.max_attempts.saturating_sub(1) as usize) };
    if r.max_elapsed_seconds > 0 {
        b = b.with_total_delay(Some(Duration::from_secs(r.max_elapsed_seconds)));
    }
    if r.jitter {
        b = b.with_jitter();
    }
    b
}

fn trim_base(u: &str) -> String {
    u.trim().trim_end_matches('/').to_string()
}

impl RivClient {
    /// A client with the source's CA bundle and client certificate (mTLS, SITHS in production).
    pub fn new(settings: &SourceSettings) -> Result<RivClient> {
        let http = crate::sandbox::tls::http_client(&settings.tls, Duration::from_secs(settings.timeout_seconds.max(1)), false)?;
        let base_url = trim_base(&settings.base_url);
        let ei = trim_base(&settings.engagement_index_url);
        Ok(RivClient {
            http,
            engagement_index_url: if ei.is_empty() { base_url.clone() } else { ei },
            base_url,
            logical_address: settings.logical_address.clone(),
            consumer_hsa_id: settings.consumer_hsa_id.clone(),
            max_response_bytes: settings.max_response_bytes,
            retry: settings.retry.clone(),
        })
    }

    /// Endpoint URL: base + `/<domain path>/<Contract>/<major>/rivtabp21`.
    pub fn endpoint(&self, contract: Contract) -> String {
        let base = if contract == Contract::GetUpdates { &self.engagement_index_url } else { &self.base_url };
        format!("{base}{}", contract.path())
    }

    /// How a document fetched from `contract` is named in refusals: contract and URL path (the
    /// patient is named by the pipeline's pseudonym, never here).
    pub fn document_name(&self, contract: Contract) -> String {
        let url = self.endpoint(contract);
        let path = reqwest::Url::parse(&url).map(|u| u.path().to_string()).unwrap_or(contract.path());
        format!("{} at {path}", contract.label())
    }

    /// Send one request and parse its answer, retrying transient failures as `retry` says.
    pub async fn call(&self, contract: Contract, body: &[u8], correlation_id: &str, ctx: &ParseContext) -> Result<Parsed, DocumentError> {
        let attempts = AtomicU32::new(0);
        let res = (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.call_once(contract, body, correlation_id, ctx).await
        })
        .retry(backoff(&self.retry))
        .when(|e: &DocumentError| e.transient)
        .notify(|e: &DocumentError, wait: Duration| {
            tracing::warn!(document = %e.refusal.document, reason = %e.refusal.reason, retry_in_ms = wait.as_millis() as u64, "transient failure; retrying");
        })
        .await;
        res.map_err(|mut e| {
            let n = attempts.load(Ordering::Relaxed);
            if e.transient && n > 1 {
                e.refusal.reason = format!("{} (gave up after {n} attempts)", e.refusal.reason);
            }
            e
        })
    }

    /// One attempt, no retry.
    pub async fn call_once(&self, contract: Contract, body: &[u8], correlation_id: &str, ctx: &ParseContext) -> Result<Parsed, DocumentError> {
        let url = self.endpoint(contract);
        let doc = self.document_name(contract);
        let envelope = request::envelope(&self.logical_address, body);
        let resp = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=UTF-8")
            .header("SOAPAction", format!("\"{}\"", contract.soap_action()))
            .header("x-rivta-original-serviceconsumer-hsaid", &self.consumer_hsa_id)
            .header("x-skltp-correlation-id", correlation_id)
            .body(envelope)
            .send()
            .await
            .map_err(|e| transport_error(&doc, &e))?;
        let status = resp.status();
        if status.is_success() {
            let mut ctx = ctx.clone();
            ctx.max_response_bytes = ctx.max_response_bytes.min(self.max_response_bytes);
            if let Some(len) = resp.content_length() {
                if len > ctx.max_response_bytes {
                    return Err(DocumentError::permanent(
                        &doc,
                        "",
                        format!(
                            "response of {len} bytes is larger than max_response_bytes ({}): refused as hostile, not read",
                            ctx.max_response_bytes
                        ),
                    ));
                }
            }
            let stream = resp.bytes_stream().map_err(std::io::Error::other);
            let reader = tokio_util::io::StreamReader::new(stream);
            return parse_response(reader, &doc, &ctx).await;
        }
        if status == reqwest::StatusCode::INTERNAL_SERVER_ERROR {
            // SOAP 1.1 faults arrive with HTTP 500; tell a fault from a crashed server.
            if let Some(bytes) = read_bounded(resp, MAX_FAULT_BYTES).await {
                if let Err(e) = parse_bytes(&bytes, &doc, ctx) {
                    if e.refusal.field.ends_with("Fault") {
                        return Err(e);
                    }
                }
            }
        }
        let reason = format!("HTTP {status}");
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS || status == reqwest::StatusCode::REQUEST_TIMEOUT {
            Err(DocumentError::transient(&doc, "HTTP status", reason))
        } else {
            Err(DocumentError::permanent(&doc, "HTTP status", reason))
        }
    }
}

async fn read_bounded(resp: reqwest::Response, max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Ok(Some(chunk)) = stream.try_next().await {
        if out.len() + chunk.len() > max {
            return None;
        }
        out.extend_from_slice(&chunk);
    }
    Some(out)
}

/// Name a transport failure plainly: TLS, timeout or connection. Always worth a retry, and the
/// watermark must not pass it.
fn transport_error(doc: &str, e: &reqwest::Error) -> DocumentError {
    let mut chain = vec![];
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cur {
        chain.push(c.to_string());
        cur = c.source();
    }
    let detail = sanitise(&chain.join(": "), 400);
    let lower = detail.to_ascii_lowercase();
    let kind = if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") || lower.contains("alert") {
        "TLS failure"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    DocumentError::transient(doc, "transport", format!("{kind}: {detail}"))
}
