//! FHIR R4 source: Encounter, Condition, Procedure and Observation searched with
//! `_lastUpdated=ge<changed_since>` and `_count`, following `link[relation=next]`, mapped to
//! canonical records and grouped per patient. The patient is the `subject.identifier`
//! (personnummer `urn:oid:1.2.752.129.2.1.3.1`, samordningsnummer `…3.3`, or a configured
//! reserve-number OID); a bare `Patient/123` reference is refused, it identifies no one outside
//! that server.
//!
//! Whether a Condition is the main diagnosis comes from its Encounter's ranked `diagnosis` list
//! (R4 has no rank on Condition); encounters not changed in this pull are looked up by `_id`.

pub mod resources;

use crate::config::SourceSettings;
use crate::model::{PatientId, Refusal};
use crate::sources::riv::client::backoff;
use crate::sources::riv::join_to_contacts;
use crate::sources::riv::parse::sanitise;
use crate::sources::{PatientBatch, PullRequest, PullSummary, Source, SourceItem};
use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use backon::Retryable;
use chrono::{SecondsFormat, Utc};
use futures::TryStreamExt;
use resources::MapContext;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::mpsc;

/// The resource types read, in order (encounters first: they rank the conditions).
pub const RESOURCE_TYPES: [&str; 4] = ["Encounter", "Condition", "Procedure", "Observation"];
/// More pages than this in one search is a loop, not paging.
const MAX_PAGES: usize = 100_000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    resource_type: String,
    #[serde(default)]
    link: Vec<Link>,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Link {
    relation: String,
    url: String,
}

#[derive(Debug, Deserialize)]
struct Entry {
    resource: Option<serde_json::Value>,
}

#[derive(Debug)]
struct PageError {
    reason: String,
    transient: bool,
}

pub struct FhirSource {
    settings: SourceSettings,
    http: reqwest::Client,
    base: reqwest::Url,
}

impl FhirSource {
    pub fn new(settings: &SourceSettings) -> Result<FhirSource> {
        let raw = settings.base_url.trim();
        if raw.is_empty() {
            bail!("a FHIR source needs base_url");
        }
        crate::sources::check_transport("base_url", raw, settings.allow_plain_http_loopback).map_err(anyhow::Error::msg)?;
        let base = reqwest::Url::parse(&format!("{}/", raw.trim_end_matches('/'))).context("base_url is not a URL")?;
        let http = crate::sandbox::tls::http_client(&settings.tls, Duration::from_secs(settings.timeout_seconds.max(1)), false)?;
        Ok(FhirSource { settings: settings.clone(), http, base })
    }

    fn search_url(&self, ty: &str, params: &[(&str, String)]) -> Result<reqwest::Url> {
        let mut u = self.base.join(ty)?;
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
        }
        Ok(u)
    }

    fn same_origin(&self, u: &reqwest::Url) -> bool {
        u.scheme() == self.base.scheme() && u.host_str() == self.base.host_str() && u.port_or_known_default() == self.base.port_or_known_default()
    }

    async fn page(&self, url: &reqwest::Url, token: Option<&str>) -> Result<Bundle, PageError> {
        (|| self.page_once(url, token))
            .retry(backoff(&self.settings.retry))
            .when(|e: &PageError| e.transient)
            .notify(|e: &PageError, wait: Duration| tracing::warn!(path = %url.path(), reason = %e.reason, retry_in_ms = wait.as_millis() as u64, "FHIR page failed; retrying"))
            .await
    }

    async fn page_once(&self, url: &reqwest::Url, token: Option<&str>) -> Result<Bundle, PageError> {
        let mut rb = self.http.get(url.clone()).header(reqwest::header::ACCEPT, "application/fhir+json");
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let resp = rb.send().await.map_err(|e| {
            let mut chain = vec![];
            let mut cur: Option<&dyn std::error::Error> = Some(&e);
            while let Some(c) = cur {
                chain.push(c.to_string());
                cur = c.source();
            }
            PageError { reason: format!("request failed: {}", sanitise(&chain.join(": "), 400)), transient: true }
        })?;
        let status = resp.status();
        if !status.is_success() {
            let transient = status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
            let hint = if status.as_u16() == 401 || status.as_u16() == 403 { " (check bearer_token)" } else { "" };
            return Err(PageError { reason: format!("HTTP {status}{hint}"), transient });
        }
        let max = self.settings.max_page_bytes.min(self.settings.max_response_bytes);
        if resp.content_length().is_some_and(|l| l > max) {
            return Err(PageError { reason: format!("page larger than max_page_bytes ({max}): refused as hostile"), transient: false });
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        loop {
            match stream.try_next().await {
                Ok(Some(chunk)) => {
                    if (body.len() + chunk.len()) as u64 > max {
                        return Err(PageError {
                            reason: format!("page larger than max_page_bytes ({max}): refused as hostile, reading stopped"),
                            transient: false,
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(PageError { reason: format!("connection failed while reading: {}", sanitise(&e.to_string(), 300)), transient: true })
                }
            }
        }
        // serde_json's messages can quote values; say where, not what.
        let bundle: Bundle = serde_json::from_slice(&body).map_err(|e| PageError {
            reason: format!("not a FHIR Bundle ({:?} error at line {}, column {})", e.classify(), e.line(), e.column()),
            transient: false,
        })?;
        if bundle.resource_type != "Bundle" {
            return Err(PageError { reason: "not a FHIR Bundle (resourceType)".into(), transient: false });
        }
        Ok(bundle)
    }

    /// Every page of one search; resources of type `ty` handed to `each`. Returns false when a
    /// page failed (already reported to `out`).
    async fn search(
        &self,
        ty: &str,
        first: reqwest::Url,
        token: Option<&str>,
        out: &mpsc::Sender<SourceItem>,
        summary: &mut PullSummary,
        each: &mut (dyn FnMut(serde_json::Value) + Send),
    ) -> Result<bool> {
        let mut url = Some(first);
        let mut seen = HashSet::new();
        let mut n = 0usize;
        while let Some(u) = url.take() {
            n += 1;
            let document = format!("FHIR {ty} search");
            let fail = |reason: String, transient: bool| SourceItem::Refused {
                refusal: Refusal { document: document.clone(), field: format!("page {n}"), reason },
                patient: None,
                raw: None,
                transient,
            };
            if n > MAX_PAGES || !seen.insert(u.to_string()) {
                send(out, fail("the next link leads back to a page already read; stopping".into(), false)).await?;
                return Ok(false);
            }
            match self.page(&u, token).await {
                Ok(bundle) => {
                    summary.documents += 1;
                    for e in bundle.entry {
                        let Some(r) = e.resource else { continue };
                        // Searches may carry an OperationOutcome (search mode `outcome`) or included resources.
                        if r.get("resourceType").and_then(|t| t.as_str()) == Some(ty) {
                            each(r);
                        }
                    }
                    if let Some(next) = bundle.link.iter().find(|l| l.relation == "next") {
                        match self.base.join(&next.url) {
                            Ok(nu) if self.same_origin(&nu) => url = Some(nu),
                            _ => {
                                send(out, fail("the next link leaves the FHIR server; not followed".into(), false)).await?;
                                return Ok(false);
                            }
                        }
                    }
                }
                Err(pe) => {
                    send(out, fail(pe.reason, pe.transient)).await?;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

async fn send(out: &mpsc::Sender<SourceItem>, item: SourceItem) -> Result<()> {
    out.send(item).await.map_err(|_| anyhow!("the pipeline stopped receiving source items"))
}

fn id_of(v: &serde_json::Value) -> String {
    v.get("id").and_then(|i| i.as_str()).map(|s| sanitise(s, 64)).unwrap_or_else(|| "?".into())
}

#[async_trait]
impl Source for FhirSource {
    async fn pull(&self, req: &PullRequest, out: mpsc::Sender<SourceItem>) -> Result<PullSummary> {
        let mut summary = PullSummary { started_at: Some(Utc::now()), complete: true, ..Default::default() };
        let token = match &self.settings.bearer_token {
            Some(s) => Some(s.read_string().context("bearer_token")?),
            None => None,
        };
        let token = token.as_deref();
        let fetched_at = Utc::now();
        let mut params = vec![("_count", self.settings.page_size.max(1).to_string())];
        if let Some(since) = req.changed_since {
            params.push(("_lastUpdated", format!("ge{}", since.to_rfc3339_opts(SecondsFormat::Secs, true))));
        }
        let default_source = format!("fhir:{}", self.base.host_str().unwrap_or(""));

        // Gather the resources of each type (encounters first: their diagnosis lists rank conditions).
        let mut raw: HashMap<&str, Vec<serde_json::Value>> = HashMap::new();
        let mut ranks: HashMap<String, u32> = HashMap::new();
        for ty in RESOURCE_TYPES {
            let mut got = vec![];
            let ok = self.search(ty, self.search_url(ty, &params)?, token, &out, &mut summary, &mut |r| got.push(r)).await?;
            if !ok {
                summary.complete = false;
            }
            raw.insert(ty, got);
        }
        let note_ranks = |ranks: &mut HashMap<String, u32>, v: &serde_json::Value| {
            if let Ok(e) = serde_json::from_value::<resources::Encounter>(v.clone()) {
                for d in e.diagnosis {
                    if let Some(id) = d.condition.as_ref().and_then(|r| r.id_of("Condition")) {
                        ranks.insert(id, d.rank.unwrap_or(1));
                    }
                }
            }
        };
        for v in raw.get("Encounter").into_iter().flatten() {
            note_ranks(&mut ranks, v);
        }
        // Conditions whose encounter did not change in this window: look their ranks up.
        let mut missing: Vec<String> = vec![];
        for v in raw.get("Condition").into_iter().flatten() {
            let cid = v.get("id").and_then(|i| i.as_str()).unwrap_or("");
            if ranks.contains_key(cid) {
                continue;
            }
            let reference =
                resources::Reference { reference: v.pointer("/encounter/reference").and_then(|r| r.as_str()).map(str::to_string), identifier: None };
            if let Some(eid) = reference.id_of("Encounter") {
                if !missing.contains(&eid) {
                    missing.push(eid);
                }
            }
        }
        for chunk in missing.chunks(50) {
            let url = self.search_url("Encounter", &[("_id", chunk.join(",")), ("_count", chunk.len().to_string())])?;
            let mut found = vec![];
            if !self.search("Encounter", url, token, &out, &mut summary, &mut |r| found.push(r)).await? {
                summary.complete = false;
            }
            for v in &found {
                note_ranks(&mut ranks, v);
            }
        }

        let ctx = MapContext {
            connector: &req.connector,
            default_source: &default_source,
            fetched_at,
            today: req.today,
            reserve_oids: &self.settings.reserve_oids,
            known_code_systems: &self.settings.known_code_systems,
            ranks: &ranks,
        };
        let mut batches: Vec<PatientBatch> = vec![];
        let mut index: HashMap<PatientId, usize> = HashMap::new();
        for ty in RESOURCE_TYPES {
            for v in raw.remove(ty).unwrap_or_default() {
                let id = id_of(&v);
                let mapped = match ty {
                    "Encounter" => serde_json::from_value(v).map_err(|e| e.classify()).map(|r| resources::encounter(&r, &ctx)),
                    "Condition" => serde_json::from_value(v).map_err(|e| e.classify()).map(|r| resources::condition(&r, &ctx)),
                    "Procedure" => serde_json::from_value(v).map_err(|e| e.classify()).map(|r| resources::procedure(&r, &ctx)),
                    _ => serde_json::from_value(v).map_err(|e| e.classify()).map(|r| resources::observation(&r, &ctx)),
                };
                let refusal = match mapped {
                    Ok(Ok(rec)) => {
                        let i = *index.entry(rec.patient().clone()).or_insert_with(|| {
                            batches.push(PatientBatch { patient: rec.patient().clone(), records: vec![], refusals: vec![], log_ids: vec![] });
                            batches.len() - 1
                        });
                        batches[i].records.push(rec);
                        continue;
                    }
                    Ok(Err(r)) => Refusal { document: format!("FHIR {ty}/{id}"), field: r.field, reason: r.reason },
                    Err(cat) => Refusal {
                        document: format!("FHIR {ty}/{id}"),
                        field: ty.to_string(),
                        reason: format!("fields do not have FHIR R4 types ({cat:?})"),
                    },
                };
                summary.refused += 1;
                send(&out, SourceItem::Refused { refusal, patient: None, raw: None, transient: false }).await?;
            }
        }
        for mut b in batches {
            join_to_contacts(&mut b.records);
            if !req.units.is_empty() {
                // As the RIV source does when it asks for every unit: another unit's item is not
                // ours, and neither is an activity or observation that cannot be placed at a
                // unit (none of its own, none from its encounter).
                b.records.retain(|r| match r.unit() {
                    Some(u) => req.units.contains(u),
                    None => !matches!(r, crate::model::Record::Activity(_) | crate::model::Record::Observation(_)),
                });
            }
            if b.records.is_empty() {
                continue;
            }
            summary.patients += 1;
            send(&out, SourceItem::Patient(b)).await?;
        }
        Ok(summary)
    }

    async fn commit(&self, _summary: &PullSummary) -> Result<()> {
        Ok(())
    }
}
