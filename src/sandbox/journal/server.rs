//! The sandbox journal's RIV-TA producer: SOAP 1.1 over HTTPS with mutual TLS on loopback, at
//! `/vp/<domain path>/<Contract>/<major>/rivtabp21` like the national service platform.
//!
//! A request is checked as the platform and a producer would: POST, the right SOAPAction, a SOAP
//! 1.1 envelope whose body element has the contract's namespace and name, a known
//! `LogicalAddress`. Anything else gets a SOAP fault. Field errors (an unknown patient-id type,
//! a malformed date, a missing interactionAgreementId) get `resultCode ERROR` with
//! `errorCode INVALID_REQUEST`. Faults can be injected at runtime and every request is counted.

use super::population::{utc_secs, Rng, SharedPopulation};
use super::soap::{self, SoapRequest};
use super::xml::{self, ClinicalResponse, Outcome, Query};
use super::{Contract, Domain};
use crate::model::{OID_PERSONNUMMER, OID_SAMORDNINGSNUMMER};
use crate::sandbox::tls::CertSet;
use crate::sandbox::vocabulary::{CARE_GIVER, SOURCE_SYSTEM};
use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The national aggregating services' logical address (research/sources.md §1.1).
pub const NATIONAL_LOGICAL_ADDRESS: &str = "5565594230";

#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// GetUpdates page size (registeredResidentEngagement elements per response).
    pub page_size: usize,
    /// Accepted `LogicalAddress` values; empty = the national address, the source system, the
    /// care giver and every unit of the population.
    pub logical_addresses: Vec<String>,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions { page_size: 500, logical_addresses: vec![] }
    }
}

/// Faults to inject, as shares of requests (0.0–1.0). The draws are deterministic per request
/// number, so a share of 1.0 always fires and 0.0 never does.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// HTTP 500 with a plain-text body (a broken platform).
    pub http_500: f64,
    /// HTTP 500 with a SOAP fault (`soapenv:Server`).
    pub soap_fault: f64,
    /// A well-formed response with `result/resultCode ERROR` and no documents.
    pub result_error: f64,
    /// Delay the response by `slow_delay` first.
    pub slow: f64,
    pub slow_delay: Duration,
    /// Only these contracts (empty = all).
    pub contracts: Vec<Contract>,
}

/// What the server has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub total: u64,
    pub by_contract: BTreeMap<Contract, u64>,
    pub http_500: u64,
    pub soap_faults: u64,
    pub result_errors: u64,
    pub slow: u64,
    /// Requests refused as invalid (SOAP fault or INVALID_REQUEST).
    pub rejected: u64,
    /// Documents served (contacts, diagnoses, activity and observation groups' items, patients
    /// in GetUpdates pages).
    pub documents: u64,
}

struct ServerState {
    pop: SharedPopulation,
    logical_addresses: Vec<String>,
    page_size: AtomicUsize,
    faults: RwLock<Faults>,
    counts: Mutex<RequestCounts>,
    seq: AtomicU64,
}

pub struct JournalServer;

impl JournalServer {
    /// Serve `population` on `addr` (port 0 = any free port) with mTLS from `certs`.
    pub async fn start(population: SharedPopulation, certs: &CertSet, addr: SocketAddr) -> Result<JournalHandle> {
        JournalServer::start_with(population, certs, addr, JournalOptions::default()).await
    }

    pub async fn start_with(population: SharedPopulation, certs: &CertSet, addr: SocketAddr, options: JournalOptions) -> Result<JournalHandle> {
        let logical_addresses = if options.logical_addresses.is_empty() {
            let mut v = vec![NATIONAL_LOGICAL_ADDRESS.to_string(), SOURCE_SYSTEM.to_string(), CARE_GIVER.to_string()];
            v.extend(population.units().iter().map(|u| u.hsa_id.clone()));
            v
        } else {
            options.logical_addresses
        };
        let state = Arc::new(ServerState {
            pop: population,
            logical_addresses,
            page_size: AtomicUsize::new(options.page_size.max(1)),
            faults: RwLock::new(Faults::default()),
            counts: Mutex::new(RequestCounts::default()),
            seq: AtomicU64::new(0),
        });
        let app = axum::Router::new().fallback(handle).with_state(state.clone());
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot bind the sandbox journal to {addr}"))?;
        let bound = listener.local_addr()?;
        let tls = axum_server::tls_rustls::RustlsConfig::from_config(certs.server_config_mtls()?);
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(listener, tls).handle(handle.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = server.serve(app.into_make_service()).await {
                tracing::error!(error = %e, "sandbox journal stopped");
            }
        });
        handle.listening().await.context("the sandbox journal did not start listening")?;
        tracing::info!(%bound, patients = state.pop.len(), "sandbox journal listening");
        Ok(JournalHandle { addr: bound, state, handle, task })
    }
}

/// A running sandbox journal.
pub struct JournalHandle {
    addr: SocketAddr,
    state: Arc<ServerState>,
    handle: axum_server::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl JournalHandle {
    /// `https://127.0.0.1:<port>/vp`: append a contract's path.
    pub fn base_url(&self) -> String {
        format!("https://{}/vp", self.addr)
    }
    pub fn url(&self, contract: Contract) -> String {
        format!("{}{}", self.base_url(), contract.path())
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn population(&self) -> &SharedPopulation {
        &self.state.pop
    }
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.write().expect("faults") = faults;
    }
    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }
    pub fn set_page_size(&self, n: usize) {
        self.state.page_size.store(n.max(1), Ordering::Relaxed);
    }
    pub fn requests(&self) -> RequestCounts {
        self.state.counts.lock().expect("counts").clone()
    }
    pub fn reset_requests(&self) {
        *self.state.counts.lock().expect("counts") = RequestCounts::default();
    }
    pub async fn shutdown(self) {
        self.handle.graceful_shutdown(Some(Duration::from_secs(2)));
        let _ = self.task.await;
    }
}

fn xml_response(status: StatusCode, body: Body) -> Response {
    Response::builder().status(status).header("content-type", "text/xml; charset=utf-8").body(body).expect("static headers")
}

fn fault(state: &ServerState, message: &str) -> Response {
    state.counts.lock().expect("counts").rejected += 1;
    xml_response(StatusCode::INTERNAL_SERVER_ERROR, Body::from(xml::soap_fault(true, message)))
}

/// Draw for one fault kind on request `n`.
fn fires(share: f64, n: u64, kind: u64) -> bool {
    share >= 1.0 || Rng::new(super::population::mix(n, kind)).chance(share)
}

async fn handle(State(state): State<Arc<ServerState>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let Some(contract) = uri.path().strip_prefix("/vp").and_then(Contract::from_path) else {
        return (StatusCode::NOT_FOUND, "no such service\n").into_response();
    };
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST a SOAP envelope\n").into_response();
    }
    let n = state.seq.fetch_add(1, Ordering::Relaxed);
    {
        let mut c = state.counts.lock().expect("counts");
        c.total += 1;
        *c.by_contract.entry(contract).or_default() += 1;
    }

    let faults = state.faults.read().expect("faults").clone();
    let applies = faults.contracts.is_empty() || faults.contracts.contains(&contract);
    if applies && fires(faults.slow, n, 1) {
        state.counts.lock().expect("counts").slow += 1;
        tokio::time::sleep(faults.slow_delay).await;
    }
    if applies && fires(faults.http_500, n, 2) {
        state.counts.lock().expect("counts").http_500 += 1;
        return (StatusCode::INTERNAL_SERVER_ERROR, "simulated platform failure\n").into_response();
    }
    if applies && fires(faults.soap_fault, n, 3) {
        state.counts.lock().expect("counts").soap_faults += 1;
        return xml_response(StatusCode::INTERNAL_SERVER_ERROR, Body::from(xml::soap_fault(false, "simulated producer fault")));
    }

    // The platform's checks: SOAPAction, envelope, body element, logical address.
    let action = headers.get("soapaction").and_then(|v| v.to_str().ok()).map(|s| s.trim().trim_matches('"').to_string());
    if action.as_deref() != Some(contract.soap_action().as_str()) {
        return fault(&state, "missing or wrong SOAPAction for this service");
    }
    let req = match soap::parse(&body) {
        Ok(r) => r,
        Err(m) => return fault(&state, m),
    };
    if req.body_ns != contract.responder_ns() || req.body_name != contract.name() {
        return fault(&state, "the body element does not match the service (name or namespace)");
    }
    match &req.logical_address {
        None => return fault(&state, "missing LogicalAddress header"),
        Some(a) if !state.logical_addresses.iter().any(|x| x == a) => return fault(&state, "unknown LogicalAddress"),
        Some(_) => {}
    }

    let log_id = uuid::Uuid::new_v4().to_string();
    let error = applies && fires(faults.result_error, n, 4);
    if error {
        state.counts.lock().expect("counts").result_errors += 1;
    }

    if contract == Contract::GetUpdates {
        return get_updates(&state, &req, error, &log_id);
    }

    let (patient, query, outcome) = match clinical_query(&state, contract, &req) {
        Ok((p, q)) => (p, q, if error { Outcome::Error("simulated producer error".into()) } else { Outcome::Ok }),
        Err(m) => {
            state.counts.lock().expect("counts").rejected += 1;
            (None, Query::default(), Outcome::Invalid(m.into()))
        }
    };
    let response = ClinicalResponse::new(state.pop.clone(), contract, patient, &query, outcome, log_id);
    state.counts.lock().expect("counts").documents += response.document_count() as u64;
    tracing::debug!(contract = contract.name(), documents = response.document_count(), "sandbox journal answered");
    let stream = futures::stream::iter(response.map(|chunk| Ok::<_, std::convert::Infallible>(Bytes::from(chunk))));
    xml_response(StatusCode::OK, Body::from_stream(stream))
}

fn get_updates(state: &ServerState, req: &SoapRequest, error: bool, log_id: &str) -> Response {
    let Some(domain_uri) = req.first("serviceDomain") else {
        return fault(state, "serviceDomain is required");
    };
    let Some(since) = req.first("timeStamp").and_then(parse_timestamp) else {
        return fault(state, "timeStamp is required as YYYYMMDDhhmmss");
    };
    let after = req.first("registeredResidentLastFetched");
    let outcome = if error { Outcome::Error("simulated producer error".into()) } else { Outcome::Ok };
    let (page, complete) = match Domain::from_uri(domain_uri) {
        Some(d) if !error => xml::updates_page(&state.pop, d, utc_secs(since), after, state.page_size.load(Ordering::Relaxed)),
        _ => (vec![], true),
    };
    state.counts.lock().expect("counts").documents += page.len() as u64;
    // An unknown service domain has no engagements; render it with any domain, it lists none.
    let domain = Domain::from_uri(domain_uri).unwrap_or(Domain::Contacts);
    xml_response(StatusCode::OK, Body::from(xml::render_updates(&state.pop, domain, &page, complete, &outcome, log_id)))
}

fn parse_timestamp(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s.trim(), "%Y%m%d%H%M%S").ok()
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y%m%d").ok()
}

/// The patient and the filters of a clinical request; `Err` names what is invalid.
fn clinical_query(state: &ServerState, contract: Contract, req: &SoapRequest) -> Result<(Option<u32>, Query), &'static str> {
    let pop = &state.pop;
    let mut q = Query { ours: true, ..Query::default() };
    // PersonIdType {id, type} in the older contracts, II {root, extension} in the newer ones.
    let (id, oid) = match contract {
        Contract::GetCareContacts | Contract::GetDiagnosis | Contract::GetCareDocumentation => (req.first("patientId/id"), req.first("patientId/type")),
        _ => (req.first("patientId/extension"), req.first("patientId/root")),
    };
    let (Some(id), Some(oid)) = (id, oid) else { return Err("patientId is required") };
    let national = match oid {
        OID_PERSONNUMMER | OID_SAMORDNINGSNUMMER => true,
        super::OID_RESERVE_VARMLAND => false,
        _ => return Err("unknown patientId type"),
    };
    let patient = pop.index_of(id).filter(|i| pop.header(*i).kind.ne(&crate::model::IdKind::Reserve) == national).map(|i| i as u32);

    match contract {
        Contract::GetCareContacts | Contract::GetDiagnosis | Contract::GetCareDocumentation => {
            // GetCareDocumentation spells its unit and source-system elements with a lower-case d.
            let notes = contract == Contract::GetCareDocumentation;
            q.units = req.all(if notes { "careUnitHSAid" } else { "careUnitHSAId" });
            q.care_contact_ids = req.all("careContactId");
            let period = if contract == Contract::GetCareContacts { "datePeriod" } else { "timePeriod" };
            if let Some(s) = req.first(&format!("{period}/start")) {
                q.from = Some(parse_date(s).ok_or("malformed start date")?.and_time(NaiveTime::MIN));
            }
            if let Some(e) = req.first(&format!("{period}/end")) {
                q.to = Some(parse_date(e).ok_or("malformed end date")?.and_hms_opt(23, 59, 59).expect("valid"));
            }
            let givers = req.all("careGiverHSAId");
            if !givers.is_empty() && !givers.iter().any(|g| g == CARE_GIVER) {
                q.ours = false;
            }
            if req.first(if notes { "sourceSystemHSAid" } else { "sourceSystemHSAId" }).is_some_and(|s| s != SOURCE_SYSTEM) {
                q.ours = false;
            }
        }
        Contract::GetActivities | Contract::GetObservations => {
            let agreement = req.first("interactionAgreementId").ok_or("interactionAgreementId is required")?;
            let uuid = uuid::Uuid::parse_str(agreement).map_err(|_| "interactionAgreementId is not a UUID")?;
            if uuid.get_version_num() != 4 || agreement.len() != 36 {
                return Err("interactionAgreementId is not a version 4 UUID");
            }
            if let Some(s) = req.first("time/start") {
                q.from = Some(parse_timestamp(s).ok_or("malformed time/start")?);
            }
            if let Some(e) = req.first("time/end") {
                q.to = Some(parse_timestamp(e).ok_or("malformed time/end")?);
            }
            q.units = req.all("careUnitId/extension");
            let (code_path, id_path, source_path) = if contract == Contract::GetActivities {
                ("activityCode/code", "activityId/extension", "sourceSystemId/extension")
            } else {
                ("observationType/code", "observationId/extension", "sourceSystemHSAId")
            };
            q.codes = req.all(code_path);
            q.ids = req.all(id_path);
            if req.first("careGiverId/extension").is_some_and(|g| g != CARE_GIVER) || req.first(source_path).is_some_and(|s| s != SOURCE_SYSTEM) {
                q.ours = false;
            }
        }
        Contract::GetUpdates => unreachable!("GetUpdates has its own query"),
    }
    Ok((patient, q))
}
