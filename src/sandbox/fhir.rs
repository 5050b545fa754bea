//! A small FHIR R4 server for the demo and the tests: serves Encounter, Condition, Procedure and
//! Observation resources built from canonical records, with `meta.lastUpdated`, searches by
//! `_lastUpdated` (ge/gt/le/lt/eq), `_id` and `_count`, by organisation as R4 defines it
//! (Encounter `service-provider`, Procedure and Observation `performer`, each with the
//! `:identifier` modifier: `system|value` tokens, comma-separated = any of them), and paging
//! through `link[relation=next]` (`_offset`). An optional bearer token is required when configured.

use crate::model::{Code, DiagnosisKind, LocalTime, ObservationValue, PatientId, Record, OID_HSA};
use anyhow::Result;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// The records to serve, each with its last-updated instant; called on every request so a
/// test or the demo can change the journal between pulls.
pub type RecordFeed = Arc<dyn Fn() -> Vec<(Record, DateTime<Utc>)> + Send + Sync>;

#[derive(Clone)]
pub struct FhirSandbox {
    pub feed: RecordFeed,
    /// Require `Authorization: Bearer <token>` when set.
    pub bearer_token: Option<String>,
    /// Page size when the client does not ask (Cambio's COS uses 20).
    pub default_count: usize,
    pub max_count: usize,
    /// Raw resources served as they are (with their own `meta.lastUpdated`), for bad-data tests.
    pub extra: Vec<Value>,
    /// Path and query of every request, for tests that check what was asked.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// `https` when served over TLS (for absolute next links).
    pub scheme: &'static str,
}

impl FhirSandbox {
    pub fn new(feed: RecordFeed) -> FhirSandbox {
        FhirSandbox { feed, bearer_token: None, default_count: 20, max_count: 500, extra: vec![], requests: Arc::default(), scheme: "http" }
    }
}

/// Routes `/{type}`; nest it under a base path if wanted.
pub fn router(sb: FhirSandbox) -> axum::Router {
    axum::Router::new().route("/{ty}", axum::routing::get(search)).with_state(sb)
}

/// Serve on `listener` (TLS when `tls` is given) and return the base URL.
pub fn spawn(mut sb: FhirSandbox, listener: std::net::TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> Result<String> {
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    match tls {
        Some(cfg) => {
            sb.scheme = "https";
            let app = router(sb);
            let cfg = axum_server::tls_rustls::RustlsConfig::from_config(cfg);
            tokio::spawn(axum_server::from_tcp_rustls(listener, cfg).serve(app.into_make_service()));
            Ok(format!("https://127.0.0.1:{port}"))
        }
        None => {
            let app = router(sb);
            let l = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(async move { axum::serve(l, app).await });
            Ok(format!("http://127.0.0.1:{port}"))
        }
    }
}

fn outcome(status: StatusCode, text: &str) -> Response {
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "error", "code": "processing", "diagnostics": text }]
    });
    (status, [("content-type", "application/fhir+json")], body.to_string()).into_response()
}

async fn search(
    State(sb): State<FhirSandbox>,
    Path(ty): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if let Ok(mut r) = sb.requests.lock() {
        r.push(uri.to_string());
    }
    if let Some(t) = &sb.bearer_token {
        let ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {t}"));
        if !ok {
            return outcome(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        }
    }
    if !["Encounter", "Condition", "Procedure", "Observation"].contains(&ty.as_str()) {
        return outcome(StatusCode::NOT_FOUND, "unsupported resource type");
    }
    let q = q.unwrap_or_default();
    let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    let mut filters = vec![];
    let mut ids: Option<Vec<String>> = None;
    // (system, value) tokens of an organisation filter; a resource matches any of them.
    let mut organisations: Option<Vec<(Option<String>, String)>> = None;
    let mut count = sb.default_count;
    let mut offset = 0usize;
    for (k, v) in &pairs {
        match k.as_str() {
            "_lastUpdated" => match parse_date_filter(v) {
                Some(f) => filters.push(f),
                None => return outcome(StatusCode::BAD_REQUEST, "bad _lastUpdated"),
            },
            "_count" => count = v.parse().unwrap_or(sb.default_count).clamp(1, sb.max_count),
            "_offset" => offset = v.parse().unwrap_or(0),
            "_id" => ids = Some(v.split(',').map(str::to_string).collect()),
            "service-provider:identifier" | "performer:identifier" => {
                let param = if ty == "Encounter" { "service-provider:identifier" } else { "performer:identifier" };
                if k != param || ty == "Condition" {
                    // As a strict server does: a parameter the resource type does not define.
                    return outcome(StatusCode::BAD_REQUEST, &format!("unknown search parameter {k} for {ty}"));
                }
                organisations = Some(
                    v.split(',')
                        .map(|tok| match tok.split_once('|') {
                            Some((s, val)) => (Some(s.to_string()), val.to_string()),
                            None => (None, tok.to_string()),
                        })
                        .collect(),
                );
            }
            _ => {}
        }
    }
    let mut all: Vec<(DateTime<Utc>, String, Value)> = build(&(sb.feed)(), &ty);
    for v in &sb.extra {
        if v.get("resourceType").and_then(|t| t.as_str()) == Some(ty.as_str()) {
            let lu = v
                .pointer("/meta/lastUpdated")
                .and_then(|t| t.as_str())
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
            let id = v.get("id").and_then(|i| i.as_str()).unwrap_or("").to_string();
            all.push((lu, id, v.clone()));
        }
    }
    all.retain(|(lu, id, r)| {
        filters.iter().all(|f| f(*lu)) && ids.as_ref().map_or(true, |ids| ids.contains(id)) && organisations.as_ref().map_or(true, |orgs| organisation_matches(&ty, r, orgs))
    });
    all.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let total = all.len();
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    let link = |off: usize| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            if k != "_offset" {
                s.append_pair(k, v);
            }
        }
        s.append_pair("_offset", &off.to_string());
        format!("{}://{host}{}?{}", sb.scheme, uri.path(), s.finish())
    };
    let mut links = vec![json!({ "relation": "self", "url": link(offset) })];
    if offset + count < total {
        links.push(json!({ "relation": "next", "url": link(offset + count) }));
    }
    let entries: Vec<Value> = all
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|(_, id, r)| json!({ "fullUrl": format!("{}://{host}/{ty}/{id}", sb.scheme), "resource": r, "search": { "mode": "match" } }))
        .collect();
    let bundle = json!({ "resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries });
    (StatusCode::OK, [("content-type", "application/fhir+json")], bundle.to_string()).into_response()
}

/// Whether a resource's organisation reference (Encounter.serviceProvider, Procedure.performer.actor,
/// Observation.performer) carries one of the identifier tokens. A resource without one does not match.
fn organisation_matches(ty: &str, r: &Value, tokens: &[(Option<String>, String)]) -> bool {
    let refs: Vec<&Value> = match ty {
        "Encounter" => r.get("serviceProvider").into_iter().collect(),
        "Procedure" => r["performer"].as_array().map(|a| a.iter().filter_map(|p| p.get("actor")).collect()).unwrap_or_default(),
        _ => r["performer"].as_array().map(|a| a.iter().collect()).unwrap_or_default(),
    };
    refs.iter().any(|x| {
        let (sys, val) = (x.pointer("/identifier/system").and_then(|s| s.as_str()), x.pointer("/identifier/value").and_then(|s| s.as_str()));
        tokens.iter().any(|(ts, tv)| val == Some(tv.as_str()) && ts.as_deref().map_or(true, |ts| sys == Some(ts)))
    })
}

type DateFilter = Box<dyn Fn(DateTime<Utc>) -> bool + Send>;

fn parse_date_filter(v: &str) -> Option<DateFilter> {
    let (prefix, rest) = if v.len() > 2 && v.as_bytes()[..2].iter().all(|b| b.is_ascii_alphabetic()) { v.split_at(2) } else { ("eq", v) };
    let t = DateTime::parse_from_rfc3339(rest)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| chrono::NaiveDate::parse_from_str(rest, "%Y-%m-%d").ok().map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc()))?;
    Some(match prefix {
        "ge" => Box::new(move |x| x >= t),
        "gt" => Box::new(move |x| x > t),
        "le" => Box::new(move |x| x <= t),
        "lt" => Box::new(move |x| x < t),
        "eq" => Box::new(move |x| x == t),
        _ => return None,
    })
}

/// A FHIR id: `[A-Za-z0-9-.]{1,64}`.
pub fn fhir_id(s: &str) -> String {
    let mut id: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).take(64).collect();
    if id.is_empty() {
        id.push('x');
    }
    id
}

fn uri(system: &str) -> String {
    if system.contains(':') {
        system.to_string()
    } else {
        format!("urn:oid:{system}")
    }
}

fn coding(c: &Code) -> Value {
    let mut v = json!({ "system": uri(&c.system), "code": c.code });
    if let Some(d) = &c.display {
        v["display"] = json!(d);
    }
    v
}

fn concept(c: &Code) -> Value {
    json!({ "coding": [coding(c)] })
}

fn subject(p: &PatientId) -> Value {
    // The identity goes into the resource: this is the protocol payload, never a log line.
    json!({ "identifier": { "system": format!("urn:oid:{}", p.oid()), "value": p.raw() } })
}

fn hsa_ref(h: &str) -> Value {
    json!({ "identifier": { "system": format!("urn:oid:{OID_HSA}"), "value": h } })
}

fn ts(t: &LocalTime) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, false)
}

fn meta(lu: DateTime<Utc>, source: &str) -> Value {
    json!({ "lastUpdated": lu.to_rfc3339_opts(SecondsFormat::Secs, true), "source": source })
}

/// The resources of type `ty` the records make, with their last-updated instants and ids.
pub fn build(records: &[(Record, DateTime<Utc>)], ty: &str) -> Vec<(DateTime<Utc>, String, Value)> {
    let mut out = vec![];
    for (r, lu) in records {
        let p = r.provenance();
        let v = match (ty, r) {
            ("Encounter", Record::CareContact(c)) => {
                let id = fhir_id(c.care_contact_id.as_deref().unwrap_or(&p.document_id));
                let diagnoses: Vec<Value> = records
                    .iter()
                    .filter_map(|(x, _)| match x {
                        Record::Diagnosis(d) if d.care_contact_id.is_some() && d.care_contact_id == c.care_contact_id && d.patient == c.patient => {
                            Some(json!({
                                "condition": { "reference": format!("Condition/{}", fhir_id(&d.provenance.document_id)) },
                                "rank": if d.kind == DiagnosisKind::Main { 1 } else { 2 }
                            }))
                        }
                        _ => None,
                    })
                    .collect();
                let mut e = json!({
                    "resourceType": "Encounter",
                    "id": id,
                    "meta": meta(*lu, &p.source_system),
                    "status": if c.nullified { "entered-in-error" } else { "finished" },
                    "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB" },
                    "subject": subject(&c.patient),
                });
                if let Some(t) = &c.contact_type {
                    e["type"] = json!([concept(t)]);
                }
                if c.start.is_some() || c.end.is_some() {
                    let mut per = json!({});
                    if let Some(s) = &c.start {
                        per["start"] = json!(ts(s));
                    }
                    if let Some(s) = &c.end {
                        per["end"] = json!(ts(s));
                    }
                    e["period"] = per;
                }
                if let Some(u) = &c.unit {
                    e["serviceProvider"] = hsa_ref(u.as_str());
                }
                if let Some(pr) = &c.profession {
                    e["participant"] = json!([{ "type": [concept(pr)] }]);
                }
                if !diagnoses.is_empty() {
                    e["diagnosis"] = json!(diagnoses);
                }
                Some((id, e))
            }
            ("Condition", Record::Diagnosis(d)) => {
                let id = fhir_id(&p.document_id);
                let mut c = json!({
                    "resourceType": "Condition",
                    "id": id,
                    "meta": meta(*lu, &p.source_system),
                    "verificationStatus": { "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": if d.nullified { "entered-in-error" } else { "confirmed" }
                    }] },
                    "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis" }] }],
                    "code": concept(&d.code),
                    "subject": subject(&d.patient),
                });
                if let Some(cc) = &d.care_contact_id {
                    c["encounter"] = json!({ "reference": format!("Encounter/{}", fhir_id(cc)) });
                }
                if let Some(t) = &d.time {
                    c["recordedDate"] = json!(ts(t));
                }
                Some((id, c))
            }
            ("Procedure", Record::Activity(a)) => {
                let id = fhir_id(&p.document_id);
                let mut performer = json!({ "actor": a.unit.as_ref().map(|u| hsa_ref(u.as_str())).unwrap_or(json!({ "display": "okänd" })) });
                if let Some(u) = &a.unit {
                    performer["onBehalfOf"] = hsa_ref(u.as_str());
                }
                if let Some(pr) = &a.profession {
                    performer["function"] = concept(pr);
                }
                let mut x = json!({
                    "resourceType": "Procedure",
                    "id": id,
                    "meta": meta(*lu, &p.source_system),
                    "status": if a.nullified { "entered-in-error" } else { "completed" },
                    "code": concept(&a.code),
                    "subject": subject(&a.patient),
                    "performer": [performer],
                });
                if let Some(cc) = &a.care_contact_id {
                    x["encounter"] = json!({ "reference": format!("Encounter/{}", fhir_id(cc)) });
                }
                if let Some(t) = &a.time {
                    x["performedDateTime"] = json!(ts(t));
                }
                Some((id, x))
            }
            ("Observation", Record::Observation(o)) => {
                let id = fhir_id(&p.document_id);
                let mut x = json!({
                    "resourceType": "Observation",
                    "id": id,
                    "meta": meta(*lu, &p.source_system),
                    "status": if o.nullified { "entered-in-error" } else { "final" },
                    "code": concept(&o.term),
                    "subject": subject(&o.patient),
                });
                if let Some(cc) = &o.care_contact_id {
                    x["encounter"] = json!({ "reference": format!("Encounter/{}", fhir_id(cc)) });
                }
                if let Some(t) = &o.time {
                    x["effectiveDateTime"] = json!(ts(t));
                }
                if let Some(u) = &o.unit {
                    let mut r = hsa_ref(u.as_str());
                    r["type"] = json!("Organization");
                    x["performer"] = json!([r]);
                }
                match &o.value {
                    Some(ObservationValue::Quantity { value, unit }) => {
                        let mut q = json!({ "value": value });
                        if let Some(u) = unit {
                            q["unit"] = json!(u);
                            q["system"] = json!("http://unitsofmeasure.org");
                            q["code"] = json!(u);
                        }
                        x["valueQuantity"] = q;
                    }
                    Some(ObservationValue::Code { code }) => x["valueCodeableConcept"] = concept(code),
                    Some(ObservationValue::Date { value }) => x["valueDateTime"] = json!(ts(value)),
                    Some(ObservationValue::Period { start, end }) => {
                        let mut per = json!({});
                        if let Some(s) = start {
                            per["start"] = json!(ts(s));
                        }
                        if let Some(e) = end {
                            per["end"] = json!(ts(e));
                        }
                        x["valuePeriod"] = per;
                    }
                    Some(ObservationValue::Text { value }) => x["valueString"] = json!(value),
                    None => {}
                }
                Some((id, x))
            }
            _ => None,
        };
        if let Some((id, v)) = v {
            out.push((*lu, id, v));
        }
    }
    out
}
