//! RIV-TA SOAP consumer (GetCareContacts 3, GetDiagnosis 2, GetActivities 1, GetObservations 1.1,
//! GetCareDocumentation 2.1 keyword notes when `observations` is `notes` or `both`, engagement
//! index GetUpdates).
//!
//! A pull finds the patients to read (engagement index, a file or a SQL query), then fetches each
//! patient's four contracts for the window with bounded concurrency. A patient is delivered as one
//! batch only when every one of its documents was read; otherwise each failed document becomes a
//! refused item (transient failures keep the watermark back) and the patient's batch is withheld,
//! so a mapper never sees half a patient.

pub mod client;
pub mod contract;
pub mod discovery;
pub mod inspect;
pub mod keywords;
pub mod parse;
pub mod request;

pub use client::RivClient;
pub use contract::Contract;
pub use parse::{parse_bytes, parse_response, parse_response_with, DocumentError, ParseContext, Parsed};

use crate::config::{ObservationSource, PatientDiscovery, SourceSettings, UnitFilter};
use crate::model::{HsaId, PatientId, Record};
use crate::sources::{PatientBatch, PullRequest, PullSummary, Source, SourceItem};
use anyhow::{anyhow, bail, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use std::collections::HashMap;
use tokio::sync::mpsc;

/// A GetUpdates chain longer than this is not paging but a loop.
const MAX_UPDATE_PAGES: usize = 100_000;

pub struct RivSource {
    settings: SourceSettings,
    client: RivClient,
}

/// What fetching one patient gave.
struct PatientOutcome {
    items: Vec<SourceItem>,
    documents: usize,
    /// A transient failure: the watermark must not pass this pull.
    incomplete: bool,
}

impl RivSource {
    /// A RIV-TA source for `settings` (base URL, logical address, consumer HSA id, TLS, limits).
    pub fn new(settings: &SourceSettings) -> Result<RivSource> {
        if settings.base_url.trim().is_empty() {
            bail!("a RIV-TA source needs base_url");
        }
        crate::sources::check_transport("base_url", &settings.base_url, settings.allow_plain_http_loopback).map_err(anyhow::Error::msg)?;
        if !settings.engagement_index_url.trim().is_empty() {
            crate::sources::check_transport("engagement_index_url", &settings.engagement_index_url, settings.allow_plain_http_loopback).map_err(anyhow::Error::msg)?;
        }
        Ok(RivSource { settings: settings.clone(), client: RivClient::new(settings)? })
    }

    pub fn client(&self) -> &RivClient {
        &self.client
    }

    fn context(&self, req: &PullRequest) -> ParseContext {
        let mut ctx = ParseContext::from_settings(&req.connector, &self.settings, req.today);
        ctx.units = req.units.clone();
        ctx
    }

    /// Patients to fetch, per the connector's discovery mode. Refused entries go to `out`.
    async fn discover(&self, req: &PullRequest, out: &mpsc::Sender<SourceItem>, summary: &mut PullSummary) -> Result<discovery::PatientQueue> {
        let list = match &req.discovery {
            PatientDiscovery::EngagementIndex { service_domains } => return self.discover_updates(req, service_domains, out, summary).await,
            PatientDiscovery::File { path } => {
                let full = if path.is_absolute() { path.clone() } else { req.connector_dir.join(path) };
                discovery::from_file(&full, req.today).await?
            }
            PatientDiscovery::Sql { url, query } => discovery::from_sql(url, query, req.today).await?,
            PatientDiscovery::All => bail!(
                "patient discovery `all` is not supported by a RIV-TA source (the contracts answer per patient): use engagement_index, file or sql"
            ),
        };
        for r in list.refused {
            summary.refused += 1;
            send(out, SourceItem::Refused { refusal: r, patient: None, raw: None, transient: false }).await?;
        }
        Ok(list.patients)
    }

    /// Engagement index GetUpdates since the watermark, per service domain, paged with
    /// `registeredResidentLastFetched` until `responseIsComplete`.
    async fn discover_updates(
        &self,
        req: &PullRequest,
        domains: &[String],
        out: &mpsc::Sender<SourceItem>,
        summary: &mut PullSummary,
    ) -> Result<discovery::PatientQueue> {
        let since: DateTime<Utc> =
            req.changed_since.unwrap_or_else(|| crate::model::stockholm(req.window_from.and_time(chrono::NaiveTime::MIN)).with_timezone(&Utc));
        let mut ctx = self.context(req);
        ctx.expected = Some(Contract::GetUpdates);
        let mut patients = discovery::PatientQueue::default();
        // A patient with many engagements comes back on many pages: repeats are dropped as the
        // list doubles, so it never holds much more than the distinct patients.
        let mut dedup_at = 4096;
        for domain in domains {
            let mut last: Option<parse::RawResidentId> = None;
            let mut pages = 0usize;
            loop {
                pages += 1;
                if pages > MAX_UPDATE_PAGES {
                    bail!("engagement index GetUpdates for {domain}: more than {MAX_UPDATE_PAGES} pages; stopping");
                }
                let body = request::get_updates(domain, since, last.as_ref().map(|r| r.as_str()));
                ctx.fetched_at = Utc::now();
                let page = self
                    .client
                    .call(Contract::GetUpdates, &body, &req.correlation_id, &ctx)
                    .await
                    .map_err(|e| anyhow!("engagement index GetUpdates for {domain}: {}", e.refusal))?;
                summary.documents += 1;
                for r in page.refused {
                    summary.refused += 1;
                    send(out, SourceItem::Refused { refusal: r, patient: None, raw: None, transient: false }).await?;
                }
                for res in page.residents {
                    if res.engagements.iter().any(|e| self.engagement_counts(e, &req.units)) {
                        patients.push(res.patient);
                    }
                }
                if patients.len() >= dedup_at {
                    patients.dedup_in_order();
                    dedup_at = (patients.len() * 2).max(4096);
                }
                let info = page.updates.unwrap_or_default();
                if info.complete {
                    break;
                }
                match info.last_resident {
                    None => bail!("engagement index GetUpdates for {domain}: response is not complete but names no resident to continue after"),
                    Some(l) if last.as_ref() == Some(&l) => {
                        bail!("engagement index GetUpdates for {domain}: the next page starts where the last one did; stopping")
                    }
                    Some(l) => last = Some(l),
                }
            }
        }
        patients.dedup_in_order();
        Ok(patients)
    }

    /// An engagement counts when it is held at one of our units (logical address or owner) and,
    /// if source systems are configured, by one of them.
    fn engagement_counts(&self, e: &parse::Engagement, units: &[HsaId]) -> bool {
        let unit_ok = units.is_empty() || units.iter().any(|u| u.as_str() == e.logical_address || Some(u.as_str()) == e.owner.as_deref());
        let system_ok = self.settings.source_systems.is_empty() || self.settings.source_systems.iter().any(|s| s == &e.source_system);
        unit_ok && system_ok
    }

    /// The connector's keyword table when notes are read (an error when it is missing).
    fn keyword_table(&self, req: &PullRequest) -> Result<Option<std::sync::Arc<keywords::KeywordTable>>> {
        if self.settings.observations == ObservationSource::Structured {
            return Ok(None);
        }
        match keywords::KeywordTable::for_connector(&req.connector_dir)? {
            Some(t) => Ok(Some(t)),
            None => bail!(
                "observations = \"{}\" reads keyword notes, but the connector folder {} has no {}",
                if self.settings.observations == ObservationSource::Notes { "notes" } else { "both" },
                req.connector_dir.display(),
                keywords::FILE_NAME
            ),
        }
    }

    /// Every contract for one patient over the window.
    async fn fetch_patient(&self, req: &PullRequest, patient: PatientId, table: Option<std::sync::Arc<keywords::KeywordTable>>) -> PatientOutcome {
        let mut ctx = self.context(req);
        ctx.keywords = table;
        ctx.expected_patient = Some(patient.clone());
        let care_giver = Some(self.settings.care_giver_hsa_id.as_str()).filter(|s| !s.is_empty());
        let q = request::PatientQuery { patient: &patient, units: &req.units, care_giver, from: req.window_from, to: req.window_to };
        let calls = patient_calls_with(&q, self.settings.unit_filter, self.settings.observations);
        let mut batch = PatientBatch { patient: patient.clone(), records: vec![], refusals: vec![], log_ids: vec![] };
        let mut documents = 0;
        for (contract, body) in calls {
            ctx.expected = Some(contract);
            ctx.fetched_at = Utc::now();
            match self.client.call(contract, &body, &req.correlation_id, &ctx).await {
                Ok(p) => {
                    documents += 1;
                    batch.log_ids.extend(p.log_ids());
                    batch.records.extend(p.records);
                    batch.refusals.extend(p.refused);
                }
                Err(e) => {
                    // The rest of this patient would be withheld anyway; stop asking.
                    tracing::warn!(document = %e.refusal.document, reason = %e.refusal.reason, transient = e.transient, "patient not read");
                    let incomplete = e.transient;
                    let item = SourceItem::Refused { refusal: e.refusal, patient: Some(patient), raw: None, transient: e.transient };
                    return PatientOutcome { items: vec![item], documents, incomplete };
                }
            }
        }
        join_to_contacts(&mut batch.records);
        if self.settings.unit_filter == UnitFilter::Response && !req.units.is_empty() {
            // Asked for every unit: what the parser could not place at one of ours (no unit of
            // its own, none from its care contact) is not ours to keep.
            batch.records.retain(|r| !matches!(r, Record::Activity(_) | Record::Observation(_)) || r.unit().is_some());
        }
        PatientOutcome { items: vec![SourceItem::Patient(batch)], documents, incomplete: false }
    }
}

/// The requests for one patient, in order: care contacts, diagnoses, then activities and
/// observations (per unit when `unit_filter` is `request`: `careUnitId` takes one unit).
pub fn patient_calls(q: &request::PatientQuery, unit_filter: UnitFilter) -> Vec<(Contract, Vec<u8>)> {
    patient_calls_with(q, unit_filter, ObservationSource::Structured)
}

/// As [`patient_calls`], with observations from GetObservations, keyword notes
/// (GetCareDocumentation, which takes every unit in one request) or both.
pub fn patient_calls_with(q: &request::PatientQuery, unit_filter: UnitFilter, observations: ObservationSource) -> Vec<(Contract, Vec<u8>)> {
    let mut calls = vec![(Contract::GetCareContacts, request::get_care_contacts(q)), (Contract::GetDiagnosis, request::get_diagnosis(q))];
    let units: Vec<Option<&HsaId>> = match unit_filter {
        UnitFilter::Request if !q.units.is_empty() => q.units.iter().map(Some).collect(),
        _ => vec![None],
    };
    for u in &units {
        calls.push((Contract::GetActivities, request::get_activities(q, *u)));
    }
    if observations != ObservationSource::Notes {
        for u in &units {
            calls.push((Contract::GetObservations, request::get_observations(q, *u)));
        }
    }
    if observations != ObservationSource::Structured {
        calls.push((Contract::GetCareDocumentation, request::get_care_documentation(q)));
    }
    calls
}

async fn send(out: &mpsc::Sender<SourceItem>, item: SourceItem) -> Result<()> {
    out.send(item).await.map_err(|_| anyhow!("the pipeline stopped receiving source items"))
}

/// Link a patient's diagnoses, activities and observations to their care contacts: a reference
/// to the contact's document id becomes its care-contact id, and a record without a unit takes
/// its contact's unit.
pub fn join_to_contacts(records: &mut [Record]) {
    let mut unit_of: HashMap<String, Option<HsaId>> = HashMap::new();
    let mut id_of_document: HashMap<String, String> = HashMap::new();
    for r in records.iter() {
        if let Record::CareContact(c) = r {
            if let Some(id) = &c.care_contact_id {
                unit_of.insert(id.clone(), c.unit.clone());
                id_of_document.insert(c.provenance.document_id.clone(), id.clone());
            }
        }
    }
    for r in records.iter_mut() {
        let (cc, unit) = match r {
            Record::CareContact(_) => continue,
            Record::Diagnosis(d) => (&mut d.care_contact_id, &mut d.unit),
            Record::Activity(a) => (&mut a.care_contact_id, &mut a.unit),
            Record::Observation(o) => (&mut o.care_contact_id, &mut o.unit),
        };
        let Some(id) = cc.as_mut() else { continue };
        if !unit_of.contains_key(id.as_str()) {
            if let Some(real) = id_of_document.get(id.as_str()) {
                *id = real.clone();
            }
        }
        if unit.is_none() {
            if let Some(u) = unit_of.get(id.as_str()) {
                *unit = u.clone();
            }
        }
    }
}

#[async_trait]
impl Source for RivSource {
    async fn pull(&self, req: &PullRequest, out: mpsc::Sender<SourceItem>) -> Result<PullSummary> {
        let mut summary = PullSummary { started_at: Some(Utc::now()), complete: true, ..Default::default() };
        let table = self.keyword_table(req)?;
        let patients = self.discover(req, &out, &mut summary).await?;
        let concurrency = self.settings.concurrency.max(1);
        let mut outcomes = futures::stream::iter(patients).map(|p| self.fetch_patient(req, p, table.clone())).buffer_unordered(concurrency);
        while let Some(o) = outcomes.next().await {
            summary.documents += o.documents;
            if o.incomplete {
                summary.complete = false;
            }
            for item in o.items {
                match &item {
                    SourceItem::Patient(b) => {
                        summary.patients += 1;
                        summary.refused += b.refusals.len();
                    }
                    SourceItem::Refused { .. } => summary.refused += 1,
                }
                send(&out, item).await?;
            }
        }
        Ok(summary)
    }

    async fn commit(&self, _summary: &PullSummary) -> Result<()> {
        Ok(())
    }
}
