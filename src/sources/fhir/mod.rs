//! FHIR R4 source: Encounter, Condition, Procedure and Observation searched with
//! `_lastUpdated=ge<changed_since>` and `_count`, following `link[relation=next]`, mapped to
//! canonical records and grouped per patient. The patient is the `subject.identifier`
//! (personnummer `urn:oid:1.2.752.129.2.1.3.1`, samordningsnummer `…3.3`, or a configured
//! reserve-number OID); a bare `Patient/123` reference is refused, it identifies no one outside
//! that server.
//!
//! Whether a Condition is the main diagnosis comes from its Encounter's ranked `diagnosis` list
//! (R4 has no rank on Condition); encounters not changed in this pull are looked up by `_id`.
//!
//! Pages stream: the records of one page are handed to the pipeline (per patient) before the
//! next page is fetched, so a pull holds about one page of records, however long it is (a
//! patient's records may then come in several batches; the pipeline maps a patient's whole
//! stored history each time). What outlives a page is an index of encounters (id → unit, and
//! the condition ranks of their diagnosis lists), to place and rank what later pages refer to.
//!
//! For a connector with units the searches ask the server for those units only, with the R4
//! search parameters that carry the organisation: Encounter `service-provider`, Procedure and
//! Observation `performer` (each `:identifier` = `urn:oid:<HSA OID>|<HSA id>`, one value per
//! unit). Condition has no such parameter in R4; a condition is placed by its encounter (looked
//! up by `_id` when not in the index) and dropped when that is another unit's.

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
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// The most records this source has held at once (mapped, not yet handed over) since it
    /// was built: about one page when pages stream.
    peak_buffered: AtomicUsize,
}

/// The search parameter that filters a resource type by the organisation (unit) it belongs to.
pub fn unit_search_parameter(ty: &str) -> Option<&'static str> {
    match ty {
        "Encounter" => Some("service-provider:identifier"),
        "Procedure" | "Observation" => Some("performer:identifier"),
        _ => None,
    }
}

/// What outlives a page: encounters by id (their unit) and document id, and condition ranks.
#[derive(Default)]
struct EncounterIndex {
    unit_of: HashMap<String, Option<crate::model::HsaId>>,
    contact_of_document: HashMap<String, String>,
    ranks: HashMap<String, u32>,
}

impl EncounterIndex {
    fn note_ranks(&mut self, v: &serde_json::Value) {
        if let Ok(e) = serde_json::from_value::<resources::Encounter>(v.clone()) {
            for d in e.diagnosis {
                if let Some(id) = d.condition.as_ref().and_then(|r| r.id_of("Condition")) {
                    self.ranks.insert(id, d.rank.unwrap_or(1));
                }
            }
        }
    }

    fn note_contact(&mut self, c: &crate::model::CareContact) {
        if let Some(id) = &c.care_contact_id {
            self.unit_of.insert(id.clone(), c.unit.clone());
            self.contact_of_document.insert(c.provenance.document_id.clone(), id.clone());
        }
    }

    /// Give records the contact id and unit of an encounter they refer to (as
    /// `join_to_contacts` does within a batch).
    fn place(&self, records: &mut [crate::model::Record]) {
        use crate::model::Record;
        for r in records.iter_mut() {
            let (cc, unit) = match r {
                Record::CareContact(_) => continue,
                Record::Diagnosis(d) => (&mut d.care_contact_id, &mut d.unit),
                Record::Activity(a) => (&mut a.care_contact_id, &mut a.unit),
                Record::Observation(o) => (&mut o.care_contact_id, &mut o.unit),
            };
            let Some(id) = cc.as_mut() else { continue };
            if !self.unit_of.contains_key(id.as_str()) {
                if let Some(real) = self.contact_of_document.get(id.as_str()) {
                    *id = real.clone();
                }
            }
            if unit.is_none() {
                if let Some(u) = self.unit_of.get(id.as_str()) {
                    *unit = u.clone();
                }
            }
        }
    }
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
        Ok(FhirSource { settings: settings.clone(), http, base, peak_buffered: AtomicUsize::new(0) })
    }

    /// The most records the source has held at once since it was built (see the field).
    pub fn peak_buffered_records(&self) -> usize {
        self.peak_buffered.load(Ordering::Relaxed)
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
}

async fn send(out: &mpsc::Sender<SourceItem>, item: SourceItem) -> Result<()> {
    out.send(item).await.map_err(|_| anyhow!("the pipeline stopped receiving source items"))
}

fn id_of(v: &serde_json::Value) -> String {
    v.get("id").and_then(|i| i.as_str()).map(|s| sanitise(s, 64)).unwrap_or_else(|| "?".into())
}

/// One page's outcome in a search.
enum Page {
    Read { resources: Vec<serde_json::Value>, next: Option<reqwest::Url> },
    Failed,
}

impl FhirSource {
    /// Fetch page `n` of a search of `ty`; the resources of type `ty` and the next page's URL.
    /// A failure (or a loop, or a link off the server) is reported to `out` as `Failed`.
    #[allow(clippy::too_many_arguments)]
    async fn read_page(
        &self,
        ty: &str,
        url: reqwest::Url,
        n: usize,
        seen: &mut HashSet<String>,
        token: Option<&str>,
        out: &mpsc::Sender<SourceItem>,
        summary: &mut PullSummary,
    ) -> Result<Page> {
        let document = format!("FHIR {ty} search");
        let fail = |reason: String, transient: bool| SourceItem::Refused {
            refusal: Refusal { document: document.clone(), field: format!("page {n}"), reason },
            patient: None,
            raw: None,
            transient,
        };
        if n > MAX_PAGES || !seen.insert(url.to_string()) {
            send(out, fail("the next link leads back to a page already read; stopping".into(), false)).await?;
            return Ok(Page::Failed);
        }
        match self.page(&url, token).await {
            Ok(bundle) => {
                summary.documents += 1;
                // Searches may carry an OperationOutcome (search mode `outcome`) or included resources.
                let resources = bundle.entry.into_iter().filter_map(|e| e.resource).filter(|r| r.get("resourceType").and_then(|t| t.as_str()) == Some(ty)).collect();
                let next = match bundle.link.iter().find(|l| l.relation == "next") {
                    None => None,
                    Some(next) => match self.base.join(&next.url) {
                        Ok(nu) if self.same_origin(&nu) => Some(nu),
                        _ => {
                            send(out, fail("the next link leaves the FHIR server; not followed".into(), false)).await?;
                            return Ok(Page::Failed);
                        }
                    },
                };
                Ok(Page::Read { resources, next })
            }
            Err(pe) => {
                send(out, fail(pe.reason, pe.transient)).await?;
                Ok(Page::Failed)
            }
        }
    }

    /// Map one page's resources, place them (the page's own encounters, then the index), drop
    /// other units' records, and hand them to the pipeline per patient, before the next page.
    #[allow(clippy::too_many_arguments)]
    async fn hand_over(
        &self,
        ty: &str,
        resources: Vec<serde_json::Value>,
        index: &mut EncounterIndex,
        req: &PullRequest,
        (default_source, fetched_at): (&str, chrono::DateTime<Utc>),
        patients: &mut HashSet<PatientId>,
        out: &mpsc::Sender<SourceItem>,
        summary: &mut PullSummary,
    ) -> Result<()> {
        let ranks = std::mem::take(&mut index.ranks);
        let ctx = MapContext {
            connector: &req.connector,
            default_source,
            fetched_at,
            today: req.today,
            reserve_oids: &self.settings.reserve_oids,
            known_code_systems: &self.settings.known_code_systems,
            ranks: &ranks,
        };
        let mut batches: Vec<PatientBatch> = vec![];
        let mut at: HashMap<PatientId, usize> = HashMap::new();
        let mut held = 0usize;
        for v in resources {
            let id = id_of(&v);
            let mapped = match ty {
                "Encounter" => serde_json::from_value(v).map_err(|e| e.classify()).map(|r| resources::encounter(&r, &ctx)),
                "Condition" => serde_json::from_value(v).map_err(|e| e.classify()).map(|r| resources::condition(&r, &ctx)),
                "Procedure" => serde_json::from_value(v).map_err(|e| e.classify()).map(|r| resources::procedure(&r, &ctx)),
                _ => serde_json::from_value(v).map_err(|e| e.classify()).map(|r| resources::observation(&r, &ctx)),
            };
            let refusal = match mapped {
                Ok(Ok(rec)) => {
                    if let crate::model::Record::CareContact(c) = &rec {
                        index.note_contact(c);
                    }
                    let i = *at.entry(rec.patient().clone()).or_insert_with(|| {
                        batches.push(PatientBatch { patient: rec.patient().clone(), records: vec![], refusals: vec![], log_ids: vec![] });
                        batches.len() - 1
                    });
                    batches[i].records.push(rec);
                    held += 1;
                    continue;
                }
                Ok(Err(r)) => Refusal { document: format!("FHIR {ty}/{id}"), field: r.field, reason: r.reason },
                Err(cat) => Refusal { document: format!("FHIR {ty}/{id}"), field: ty.to_string(), reason: format!("fields do not have FHIR R4 types ({cat:?})") },
            };
            summary.refused += 1;
            send(out, SourceItem::Refused { refusal, patient: None, raw: None, transient: false }).await?;
        }
        index.ranks = ranks;
        self.peak_buffered.fetch_max(held, Ordering::Relaxed);
        for mut b in batches {
            join_to_contacts(&mut b.records);
            index.place(&mut b.records);
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
            patients.insert(b.patient.clone());
            send(out, SourceItem::Patient(b)).await?;
        }
        Ok(())
    }

    /// Conditions of a page whose encounter is not in the index: look those encounters up by
    /// `_id` (for the ranks of their diagnosis lists and their units).
    async fn look_up_encounters(
        &self,
        conditions: &[serde_json::Value],
        index: &mut EncounterIndex,
        ctx_parts: (&str, &str, chrono::DateTime<Utc>, chrono::NaiveDate),
        token: Option<&str>,
        out: &mpsc::Sender<SourceItem>,
        summary: &mut PullSummary,
    ) -> Result<()> {
        let mut missing: Vec<String> = vec![];
        for v in conditions {
            let cid = v.get("id").and_then(|i| i.as_str()).unwrap_or("");
            let reference = resources::Reference { reference: v.pointer("/encounter/reference").and_then(|r| r.as_str()).map(str::to_string), identifier: None };
            let Some(eid) = reference.id_of("Encounter") else { continue };
            // An encounter in the index has given its ranks and unit already.
            if !index.unit_of.contains_key(&eid) && !index.ranks.contains_key(cid) && !missing.contains(&eid) {
                missing.push(eid);
            }
        }
        let (connector, default_source, fetched_at, today) = ctx_parts;
        for chunk in missing.chunks(50) {
            let mut url = Some(self.search_url("Encounter", &[("_id", chunk.join(",")), ("_count", chunk.len().to_string())])?);
            let (mut seen, mut n) = (HashSet::new(), 0);
            while let Some(u) = url.take() {
                n += 1;
                match self.read_page("Encounter", u, n, &mut seen, token, out, summary).await? {
                    Page::Failed => {
                        summary.complete = false;
                        break;
                    }
                    Page::Read { resources: found, next } => {
                        url = next;
                        let no_ranks = HashMap::new();
                        let ctx = MapContext {
                            connector,
                            default_source,
                            fetched_at,
                            today,
                            reserve_oids: &self.settings.reserve_oids,
                            known_code_systems: &self.settings.known_code_systems,
                            ranks: &no_ranks,
                        };
                        for v in &found {
                            index.note_ranks(v);
                            if let Ok(Ok(crate::model::Record::CareContact(c))) = serde_json::from_value(v.clone()).map(|r| resources::encounter(&r, &ctx)) {
                                index.note_contact(&c);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
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
        // One token per unit, comma-separated: the server ORs them.
        let units = (!req.units.is_empty()).then(|| req.units.iter().map(|u| format!("urn:oid:{}|{}", crate::model::OID_HSA, u.as_str())).collect::<Vec<_>>().join(","));
        let default_source = format!("fhir:{}", self.base.host_str().unwrap_or(""));
        let mut index = EncounterIndex::default();
        let mut patients: HashSet<PatientId> = HashSet::new();

        // Encounters first: their diagnosis lists rank the conditions of later pages.
        for ty in RESOURCE_TYPES {
            let mut p = params.clone();
            if let (Some(units), Some(name)) = (&units, unit_search_parameter(ty)) {
                p.push((name, units.clone()));
            }
            let mut url = Some(self.search_url(ty, &p)?);
            let (mut seen, mut n) = (HashSet::new(), 0);
            while let Some(u) = url.take() {
                n += 1;
                let resources = match self.read_page(ty, u, n, &mut seen, token, &out, &mut summary).await? {
                    Page::Failed => {
                        summary.complete = false;
                        break;
                    }
                    Page::Read { resources, next } => {
                        url = next;
                        resources
                    }
                };
                match ty {
                    "Encounter" => resources.iter().for_each(|v| index.note_ranks(v)),
                    "Condition" => self.look_up_encounters(&resources, &mut index, (&req.connector, &default_source, fetched_at, req.today), token, &out, &mut summary).await?,
                    _ => {}
                }
                self.hand_over(ty, resources, &mut index, req, (&default_source, fetched_at), &mut patients, &out, &mut summary).await?;
            }
        }
        summary.patients = patients.len();
        Ok(summary)
    }

    async fn commit(&self, _summary: &PullSummary) -> Result<()> {
        Ok(())
    }
}
