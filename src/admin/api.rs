//! The JSON API under `/api/v1` (described in `openapi.json`), health endpoints, and the
//! read/act helpers the pages share with it.
//!
//! Nothing here returns a patient identity unless the caller has the patient-data right *and*
//! gave a reason, and then the view is recorded as `patient_data.view` before it is returned.
//! Free text that comes from outside (register reasons, error details) passes the identity
//! redactor before it is shown, in case a register echoes a personnummer.

use super::auth::{self, Principal};
use super::store::{self as db, Role, TransferQuery, TransferRow, UnitScope};
use super::{AdminState, ApiError, Fail, ReadinessCheck};
use crate::audit::{correlation_id, kind, AuditEvent, NewAuditEvent};
use crate::store::{Attempt, AuditQuery, ChangeSet, OutboxChange, OutboxRecord, RecordState, Registration, Store};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

type ApiResult<T> = Result<Json<T>, ApiError>;

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// Redact identity-shaped digit runs in external free text. HSA ids (`SE` + a ten-digit
/// organisation number + `-…`) are kept whole: they name units, not patients, and the plain
/// redactor would garble every one of them.
pub fn scrub(s: &str) -> String {
    static HSA: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let hsa = HSA.get_or_init(|| regex::Regex::new(r"SE[0-9]{10}-[A-Za-z0-9]+").expect("valid regex"));
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for m in hsa.find_iter(s) {
        out.push_str(&crate::telemetry::redact(&s[last..m.start()]));
        out.push_str(m.as_str());
        last = m.end();
    }
    out.push_str(&crate::telemetry::redact(&s[last..]));
    out
}

pub fn scrub_opt(s: &Option<String>) -> Option<String> {
    s.as_deref().map(scrub)
}

pub fn scrub_json(v: &mut Value) {
    match v {
        Value::String(s) => *s = scrub(s),
        Value::Array(a) => a.iter_mut().for_each(scrub_json),
        Value::Object(o) => o.values_mut().for_each(scrub_json),
        _ => {}
    }
}

fn scrub_record(mut r: OutboxRecord) -> OutboxRecord {
    r.reason = scrub_opt(&r.reason);
    r.last_error = scrub_opt(&r.last_error);
    r.payload = None;
    r.lookup = None;
    r
}

fn scrub_row(mut r: TransferRow) -> TransferRow {
    r.reason = scrub_opt(&r.reason);
    r.last_error = scrub_opt(&r.last_error);
    r
}

fn scrub_attempt(mut a: Attempt) -> Attempt {
    a.detail = scrub_opt(&a.detail);
    a
}

fn scrub_event(mut e: AuditEvent) -> AuditEvent {
    scrub_json(&mut e.detail);
    e
}

/// Empty form/query values mean "no filter".
pub fn nz(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

pub fn stockholm_day_start(d: NaiveDate) -> i64 {
    let naive = d.and_hms_opt(0, 0, 0).expect("midnight");
    chrono_tz::Europe::Stockholm
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc).timestamp_micros())
        .unwrap_or_else(|| naive.and_utc().timestamp_micros())
}

pub fn parse_day(s: &Option<String>) -> Result<Option<NaiveDate>, Fail> {
    match nz(s) {
        None => Ok(None),
        Some(v) => NaiveDate::parse_from_str(&v, "%Y-%m-%d").map(Some).map_err(|_| Fail::BadRequest(format!("Ogiltigt datum {v:?} (ÅÅÅÅ-MM-DD)."))),
    }
}

pub fn parse_states(s: &Option<String>) -> Result<Vec<RecordState>, Fail> {
    match nz(s) {
        None => Ok(vec![]),
        Some(v) => v.split(',').map(|x| RecordState::parse(x.trim()).map_err(|_| Fail::BadRequest(format!("Okänd status {x:?}.")))).collect(),
    }
}

/// A stated reason for a patient-data view or a state change: required, short, redacted.
pub fn reason(s: &Option<String>) -> Result<String, Fail> {
    let r = nz(s).ok_or_else(|| Fail::BadRequest("Ange ett skäl.".into()))?;
    if r.chars().count() < 3 {
        return Err(Fail::BadRequest("Skälet är för kort.".into()));
    }
    if r.chars().count() > 500 {
        return Err(Fail::BadRequest("Skälet är för långt (högst 500 tecken).".into()));
    }
    Ok(scrub(&r))
}

/// Record one use of the patient-data right, with the pseudonyms of the patients it shows (the
/// PDL access log: `audit search --patient` answers who has seen a patient). Called *before*
/// the data is returned; event and patients are written in one transaction.
pub async fn record_patient_view(state: &AdminState, p: &Principal, list: &str, subject: &str, reason: &str, rows: usize, patients: &[String]) -> Result<(), Fail> {
    if !p.patient_data {
        return Err(Fail::Forbidden);
    }
    let event = NewAuditEvent::by(&p.actor(), kind::PATIENT_DATA_VIEW, &correlation_id(), subject, json!({"list": list, "reason": reason, "rows": rows, "via": match p.via { auth::Via::Session => "page", auth::Via::Token => "api" }}));
    state.app.store.audit_patient_view(event, patients).await?;
    Ok(())
}

/// The patients in a stored patient list, as pseudonyms: its `patient_key` fields, and the
/// identities in `personnummer` / `id` fields (lists written by other tools carry only those).
pub fn patient_keys_in(v: &Value, pseudo: &crate::crypto::Pseudonymizer) -> Vec<String> {
    let today = crate::pipeline::today_stockholm();
    let mut out = vec![];
    let mut walk_stack = vec![v];
    while let Some(v) = walk_stack.pop() {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(s)) = o.get("patient_key") {
                    out.push(s.clone());
                    continue;
                }
                for (k, x) in o {
                    match (k.as_str(), x) {
                        ("personnummer" | "id", Value::String(s)) => {
                            if let Ok(id) = crate::model::PatientId::parse_national(s, today) {
                                out.push(pseudo.patient_key(&id));
                            }
                        }
                        _ => walk_stack.push(x),
                    }
                }
            }
            Value::Array(a) => walk_stack.extend(a.iter()),
            _ => {}
        }
    }
    out
}

/// A patient identity for display: `ÅÅÅÅMMDD-NNNN` for national ids, the raw value otherwise.
pub fn show_identity(id: &crate::model::PatientId) -> String {
    match id.national_12() {
        Some(n) if n.len() == 12 => format!("{}-{}", &n[..8], &n[8..]),
        _ => id.raw().to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Health

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[derive(Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<ReadinessCheck>,
}

pub async fn readiness(state: &AdminState) -> Readiness {
    let store = &state.app.store;
    let mut checks = vec![];
    let ping = tokio::time::timeout(Duration::from_secs(3), store.ping()).await;
    let reachable = matches!(ping, Ok(Ok(())));
    checks.push(ReadinessCheck {
        name: "store".into(),
        ok: reachable,
        detail: match ping {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some("the database does not answer".into()),
            Err(_) => Some("the database did not answer within 3 s".into()),
        },
    });
    let migrations = if reachable { tokio::time::timeout(Duration::from_secs(3), store.migrations_current()).await.ok().and_then(|r| r.ok()) } else { None };
    checks.push(ReadinessCheck {
        name: "migrations".into(),
        ok: migrations == Some(true),
        detail: match migrations {
            Some(true) => None,
            Some(false) => Some("migrations are not current".into()),
            None => Some("unknown (store unreachable)".into()),
        },
    });
    checks.extend((state.readiness)());
    Readiness { ready: checks.iter().all(|c| c.ok), checks }
}

pub async fn readyz(State(state): State<AdminState>) -> Response {
    let r = readiness(&state).await;
    let code = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(r)).into_response()
}

pub async fn health(State(state): State<AdminState>, Extension(_p): Extension<Principal>) -> Response {
    readyz(State(state)).await
}

pub async fn me(Extension(p): Extension<Principal>) -> Json<Value> {
    Json(json!({"username": p.username, "role": p.role.as_str(), "patient_data": p.patient_data, "units": p.scope.units(), "via": match p.via { auth::Via::Session => "session", auth::Via::Token => "token" }}))
}

// ---------------------------------------------------------------------------------------------
// Overview

#[derive(Serialize, Clone)]
pub struct ConnectorSummary {
    pub connector: String,
    pub register: String,
    pub last_run: Option<crate::store::Run>,
    pub next_run: Option<DateTime<Utc>>,
    pub delivered_today: i64,
    pub failed_today: i64,
}

#[derive(Serialize, Clone)]
pub struct DayCount {
    pub day: String,
    pub register: String,
    pub delivered: i64,
    pub failed: i64,
}

#[derive(Serialize)]
pub struct Overview {
    pub connectors: Vec<ConnectorSummary>,
    pub days: Vec<DayCount>,
    pub queue_depth: i64,
    pub dead_letters: i64,
    pub quarantine_open: i64,
    pub worklist: i64,
}

pub async fn overview_data(state: &AdminState) -> Result<Overview, Fail> {
    let store = &state.app.store;
    let mut pairs: Vec<(String, String)> = state.app.loaded.connectors.iter().map(|c| (c.name.clone(), c.register.clone())).collect();
    for p in db::connector_registers(store).await? {
        if !pairs.contains(&p) {
            pairs.push(p);
        }
    }
    pairs.sort();
    let next: HashMap<String, Option<DateTime<Utc>>> = (state.next_runs)().into_iter().collect();
    let today = stockholm_day_start(Utc::now().with_timezone(&chrono_tz::Europe::Stockholm).date_naive());
    let counts: HashMap<(String, String), (i64, i64)> = db::outcomes_since(store, today).await?.into_iter().map(|(c, g, ok, bad)| ((c, g), (ok, bad))).collect();
    let mut connectors = vec![];
    for (c, g) in pairs {
        let last_run = store.runs(Some(&c), 1).await?.into_iter().next();
        let (ok, bad) = counts.get(&(c.clone(), g.clone())).copied().unwrap_or((0, 0));
        connectors.push(ConnectorSummary { next_run: next.get(&c).copied().flatten(), connector: c, register: g, last_run, delivered_today: ok, failed_today: bad });
    }
    let since = (Utc::now() - chrono::Duration::days(29)).date_naive().and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_micros();
    let days = store.daily_outcomes(since).await?.into_iter().map(|(day, register, delivered, failed)| DayCount { day, register, delivered, failed }).collect();
    let g = db::gauges(store).await?;
    let dead_letters = g.records.iter().filter(|(_, s, _)| s == "rejected" || s == "dead").map(|(_, _, n)| n).sum();
    Ok(Overview { connectors, days, queue_depth: g.queue_depth, dead_letters, quarantine_open: g.quarantine_open, worklist: g.worklist })
}

pub async fn overview(State(state): State<AdminState>, Extension(p): Extension<Principal>) -> ApiResult<Overview> {
    // Region-wide counts per connector: a unit-limited caller has its clinic page instead.
    p.require_region()?;
    Ok(Json(overview_data(&state).await?))
}

// ---------------------------------------------------------------------------------------------
// Runs and records

#[derive(Deserialize)]
pub struct RunsQuery {
    pub connector: Option<String>,
    pub limit: Option<i64>,
}

pub async fn runs(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<RunsQuery>) -> ApiResult<Vec<crate::store::Run>> {
    p.require_region()?;
    let mut runs = state.app.store.runs(nz(&q.connector).as_deref(), q.limit.unwrap_or(50).clamp(1, 1000)).await?;
    for r in &mut runs {
        r.error = scrub_opt(&r.error);
    }
    Ok(Json(runs))
}

#[derive(Deserialize, Default, Clone)]
pub struct RecordsQuery {
    pub connector: Option<String>,
    pub register: Option<String>,
    pub unit: Option<String>,
    pub form: Option<String>,
    /// One state or several, comma-separated.
    pub state: Option<String>,
    /// Substring of the key, or the register's reference.
    pub q: Option<String>,
    /// First day (YYYY-MM-DD, Europe/Stockholm), inclusive, on the last change.
    pub from: Option<String>,
    /// Last day, inclusive.
    pub to: Option<String>,
    /// `true`: every version, not only the latest of each key.
    pub all_versions: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    pub page: Option<i64>,
}

impl RecordsQuery {
    /// The store query for this caller: its unit scope goes into the query itself.
    pub fn to_query(&self, scope: &UnitScope, default_limit: i64) -> Result<TransferQuery, Fail> {
        let limit = self.limit.unwrap_or(default_limit).clamp(1, 1000);
        let offset = match (self.offset, self.page) {
            (Some(o), _) => o.max(0),
            (None, Some(p)) => (p.max(1) - 1) * limit,
            _ => 0,
        };
        Ok(TransferQuery {
            connector: nz(&self.connector),
            register: nz(&self.register),
            unit: nz(&self.unit),
            form: nz(&self.form),
            states: parse_states(&self.state)?,
            search: nz(&self.q),
            from_us: parse_day(&self.from)?.map(stockholm_day_start),
            to_us: parse_day(&self.to)?.map(|d| stockholm_day_start(d + chrono::Duration::days(1))),
            latest_only: !matches!(nz(&self.all_versions).as_deref(), Some("true" | "1" | "on" | "ja")),
            limit,
            offset,
            scope: scope.clone(),
        })
    }
}

#[derive(Serialize)]
pub struct Page<T> {
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub items: Vec<T>,
}

pub async fn records(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<RecordsQuery>) -> ApiResult<Page<TransferRow>> {
    let tq = q.to_query(&p.scope, 100)?;
    let (items, total) = db::transfers(&state.app.store, &tq).await?;
    Ok(Json(Page { total, limit: tq.limit, offset: tq.offset, items: items.into_iter().map(scrub_row).collect() }))
}

pub async fn dead_letters(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<RecordsQuery>) -> ApiResult<Page<TransferRow>> {
    let mut tq = q.to_query(&p.scope, 100)?;
    tq.states = vec![RecordState::Rejected, RecordState::Dead];
    tq.latest_only = true;
    let (items, total) = db::transfers(&state.app.store, &tq).await?;
    Ok(Json(Page { total, limit: tq.limit, offset: tq.offset, items: items.into_iter().map(scrub_row).collect() }))
}

/// One transfer's whole story: every version of its key, every attempt, the audit events about
/// the key, and what the register holds.
#[derive(Serialize)]
pub struct History {
    pub record: OutboxRecord,
    pub versions: Vec<OutboxRecord>,
    pub attempts: Vec<Attempt>,
    pub audit: Vec<AuditEvent>,
    pub registration: Option<Registration>,
    /// Column names of this version's payload (values are personal data; not included).
    pub columns: Vec<String>,
}

/// The history with payloads removed, plus the raw payloads for the patient-data view.
/// Another unit's record is "not found" to a unit-limited caller.
pub async fn history(store: &Store, scope: &UnitScope, id: i64) -> Result<(History, Option<serde_json::Map<String, Value>>, Option<serde_json::Map<String, Value>>), Fail> {
    let record = store.record(id).await?.filter(|r| scope.allows(&r.unit)).ok_or(Fail::NotFound)?;
    let payload = record.payload.clone();
    let versions = store.record_versions(&record.idem_key).await?;
    let attempts = store.attempts(&record.idem_key).await?;
    let audit = store.audit_search(&AuditQuery { subject: Some(record.idem_key.clone()), limit: Some(1000), ..Default::default() }).await?;
    let mut registration = store.registration(&record.idem_key).await?;
    let held = registration.as_mut().and_then(|r| r.delivered_payload.take());
    let columns = payload.as_ref().map(|p| p.keys().cloned().collect()).unwrap_or_default();
    Ok((
        History {
            record: scrub_record(record),
            versions: versions.into_iter().map(scrub_record).collect(),
            attempts: attempts.into_iter().map(scrub_attempt).collect(),
            audit: audit.into_iter().map(scrub_event).collect(),
            registration,
            columns,
        },
        payload,
        held,
    ))
}

pub async fn record(State(state): State<AdminState>, Extension(p): Extension<Principal>, Path(id): Path<i64>) -> ApiResult<History> {
    Ok(Json(history(&state.app.store, &p.scope, id).await?.0))
}

pub async fn record_attempts(State(state): State<AdminState>, Extension(p): Extension<Principal>, Path(id): Path<i64>) -> ApiResult<Vec<Attempt>> {
    let r = state.app.store.record(id).await?.filter(|r| p.scope.allows(&r.unit)).ok_or(Fail::NotFound)?;
    Ok(Json(state.app.store.attempts(&r.idem_key).await?.into_iter().map(scrub_attempt).collect()))
}

#[derive(Deserialize)]
pub struct ReasonBody {
    pub reason: Option<String>,
}

/// Retract a record's key on an operator's word: the register should no longer hold it.
pub async fn do_retract(state: &AdminState, p: &Principal, id: i64, why: &str) -> Result<String, Fail> {
    p.require(Role::Operator)?;
    let rec = state.app.store.record(id).await?.filter(|r| p.scope.allows(&r.unit)).ok_or(Fail::NotFound)?;
    let corr = correlation_id();
    state
        .app
        .store
        .apply(ChangeSet {
            outbox: vec![OutboxChange::Retract { idem_key: rec.idem_key.clone(), reason: why.to_string(), correlation_id: corr.clone(), actor: p.actor() }],
            audit: vec![NewAuditEvent::by(&p.actor(), kind::RETRACT_MANUAL, &corr, &rec.idem_key, json!({"record": id, "reason": why}))],
            ..Default::default()
        })
        .await?;
    Ok(rec.idem_key)
}

pub async fn retract(State(state): State<AdminState>, Extension(p): Extension<Principal>, headers: HeaderMap, Path(id): Path<i64>, Json(b): Json<ReasonBody>) -> ApiResult<Value> {
    p.require(Role::Operator)?;
    p.check_csrf(csrf_header(&headers))?;
    let why = reason(&b.reason)?;
    let key = do_retract(&state, &p, id, &why).await?;
    Ok(Json(json!({"retracted": key})))
}

/// Lift a withdrawal made by a person, on a person's word (operator, with a reason; audited):
/// the registration may be sent again, starting with what the journal said meanwhile.
pub async fn lift_hold(State(state): State<AdminState>, Extension(p): Extension<Principal>, headers: HeaderMap, Path(id): Path<i64>, Json(b): Json<ReasonBody>) -> ApiResult<Value> {
    p.require(Role::Operator)?;
    p.check_csrf(csrf_header(&headers))?;
    let why = reason(&b.reason)?;
    let rec = state.app.store.record(id).await?.filter(|r| p.scope.allows(&r.unit)).ok_or(Fail::NotFound)?;
    match state.app.store.lift_hold(&rec.idem_key, &p.username, &why).await? {
        Some(l) => Ok(Json(json!({"lifted": l.idem_key, "requeued": l.requeued}))),
        None => Err(Fail::BadRequest("Nyckeln är inte spärrad av en återkallelse.".into()).into()),
    }
}

/// Replay failed records on an operator's word; a unit-limited caller's ids of other units are
/// skipped as if they did not exist.
pub async fn replay_ids(state: &AdminState, p: &Principal, ids: &[i64], why: &str) -> Result<Vec<i64>, Fail> {
    p.require(Role::Operator)?;
    let ids: Vec<i64> = if p.scope.is_region() {
        ids.to_vec()
    } else {
        db::record_units(&state.app.store, ids).await?.into_iter().filter(|(_, u)| p.scope.allows(u)).map(|(id, _)| id).collect()
    };
    if ids.is_empty() {
        return Ok(vec![]);
    }
    Ok(state.app.store.replay(&ids, &p.actor(), why).await?)
}

fn csrf_header(h: &HeaderMap) -> Option<&str> {
    h.get(auth::CSRF_HEADER).and_then(|v| v.to_str().ok())
}

#[derive(Deserialize)]
pub struct ReplayBody {
    pub ids: Vec<i64>,
    pub reason: Option<String>,
}

pub async fn replay(State(state): State<AdminState>, Extension(p): Extension<Principal>, headers: HeaderMap, Json(b): Json<ReplayBody>) -> ApiResult<Value> {
    p.require(Role::Operator)?;
    p.check_csrf(csrf_header(&headers))?;
    let why = reason(&b.reason)?;
    if b.ids.is_empty() || b.ids.len() > 10_000 {
        return Err(Fail::BadRequest("Ange 1–10 000 id.".into()).into());
    }
    let done = replay_ids(&state, &p, &b.ids, &why).await?;
    let skipped: Vec<i64> = b.ids.iter().filter(|i| !done.contains(i)).copied().collect();
    Ok(Json(json!({"requeued": done, "skipped": skipped})))
}

// ---------------------------------------------------------------------------------------------
// Quarantine

#[derive(Deserialize)]
pub struct QuarantineQuery {
    pub connector: Option<String>,
    /// `false` to include resolved items.
    pub open_only: Option<bool>,
    pub limit: Option<i64>,
}

/// A quarantined document could not be read, so its unit is unknown: a unit-limited caller
/// sees the items of a connector only when it may see every unit that connector reads.
pub fn quarantine_visible(state: &AdminState, scope: &UnitScope, connector: &str) -> bool {
    scope.is_region() || state.app.loaded.connectors.iter().find(|c| c.name == connector).is_some_and(|c| scope.allows_all(&c.units))
}

pub async fn quarantine_items(state: &AdminState, scope: &UnitScope, connector: Option<&str>, open_only: bool, limit: i64) -> Result<Vec<crate::store::QuarantineItem>, Fail> {
    let mut items = state.app.store.quarantine(connector, open_only, limit).await?;
    items.retain(|i| quarantine_visible(state, scope, &i.connector));
    for i in &mut items {
        i.reason = scrub(&i.reason);
        i.document = scrub(&i.document);
    }
    Ok(items)
}

pub async fn quarantine(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<QuarantineQuery>) -> ApiResult<Vec<crate::store::QuarantineItem>> {
    Ok(Json(quarantine_items(&state, &p.scope, nz(&q.connector).as_deref(), q.open_only.unwrap_or(true), q.limit.unwrap_or(200).clamp(1, 5000)).await?))
}

/// Resolve a quarantined item; one the caller may not see is "not found".
pub async fn do_resolve_quarantine(state: &AdminState, p: &Principal, id: i64, note: &str) -> Result<(), Fail> {
    p.require(Role::Operator)?;
    if !p.scope.is_region() {
        let connector = db::quarantine_connector(&state.app.store, id).await?.ok_or(Fail::NotFound)?;
        if !quarantine_visible(state, &p.scope, &connector) {
            return Err(Fail::NotFound);
        }
    }
    if !state.app.store.resolve_quarantine(id, &p.actor(), note).await? {
        return Err(Fail::NotFound);
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct NoteBody {
    pub note: Option<String>,
}

pub async fn resolve_quarantine(State(state): State<AdminState>, Extension(p): Extension<Principal>, headers: HeaderMap, Path(id): Path<i64>, Json(b): Json<NoteBody>) -> ApiResult<Value> {
    p.require(Role::Operator)?;
    p.check_csrf(csrf_header(&headers))?;
    let note = reason(&b.note)?;
    do_resolve_quarantine(&state, &p, id, &note).await?;
    Ok(Json(json!({"resolved": id})))
}

// ---------------------------------------------------------------------------------------------
// Worklists

#[derive(Deserialize)]
pub struct WorklistQuery {
    pub connector: Option<String>,
    pub unit: Option<String>,
    /// With the patient-data right: show identities (recorded with this reason).
    pub reason: Option<String>,
}

#[derive(Serialize)]
pub struct WorklistEntry {
    pub idem_key: String,
    pub connector: String,
    pub unit: String,
    pub form: String,
    /// Keyed pseudonym of the patient.
    pub patient_key: String,
    /// The identity; only with the patient-data right and a stated reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    pub missing: Vec<String>,
    /// Per missing item, what to document in the journal: the keyword (code and name from the
    /// connector's mapping.toml) that fills the column; a first-visit form a follow-up waits for
    /// has no keyword.
    pub document: Vec<crate::registers::sar::mapping::DocumentHint>,
    /// The occasion's date (the visit the answers belong to).
    pub event_date: Option<String>,
    pub since: DateTime<Utc>,
    /// Set when a clinic marked the item as handled outside the system.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handled: Option<crate::store::WorklistHandled>,
}

/// The open worklist of the caller's units; identities only when `reason` is given (the view
/// is recorded first, naming exactly the patients shown).
pub async fn worklist_entries(state: &AdminState, p: &Principal, connector: Option<String>, unit: Option<String>, why: Option<String>) -> Result<Vec<WorklistEntry>, Fail> {
    worklist_entries_of(state, p, connector, unit, why, false).await
}

/// The open worklist, or (`handled`) the items marked as handled outside the system.
pub async fn worklist_entries_of(state: &AdminState, p: &Principal, connector: Option<String>, unit: Option<String>, why: Option<String>, handled: bool) -> Result<Vec<WorklistEntry>, Fail> {
    let mut items = state.app.store.worklist_items(connector.as_deref(), unit.as_deref(), handled).await?;
    items.retain(|i| p.scope.allows(&i.unit));
    let show = why.is_some();
    if let Some(why) = &why {
        let subject = format!("worklist:{}:{}", connector.as_deref().unwrap_or("*"), unit.as_deref().unwrap_or("*"));
        let shown: Vec<String> = items.iter().map(|i| i.patient_key.clone()).collect();
        record_patient_view(state, p, "worklist", &subject, why, items.len(), &shown).await?;
    }
    let mut hints: BTreeMap<String, BTreeMap<(String, String), crate::registers::sar::mapping::DocumentHint>> = BTreeMap::new();
    for c in state.app.loaded.connectors.iter().filter(|c| c.kind == crate::config::ConnectorKind::StratumRegister) {
        hints.insert(c.name.clone(), crate::registers::sar::mapping::document_hints(c));
    }
    Ok(items
        .into_iter()
        .map(|i| WorklistEntry {
            document: i
                .missing
                .iter()
                .map(|m| {
                    let h = hints.get(&i.connector);
                    h.and_then(|h| h.get(&(i.form.clone(), m.clone())).cloned()).unwrap_or(crate::registers::sar::mapping::DocumentHint {
                        column: m.clone(),
                        term: None,
                        name: None,
                        waits_for: h.is_some_and(|h| h.keys().any(|(f, _)| f == m)),
                    })
                })
                .collect(),
            patient: if show { i.patient.as_ref().map(show_identity) } else { None },
            idem_key: i.idem_key,
            connector: i.connector,
            unit: i.unit,
            form: i.form,
            patient_key: i.patient_key,
            missing: i.missing,
            event_date: i.event_date,
            since: i.since,
            handled: i.handled,
        })
        .collect())
}

pub async fn worklists(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<WorklistQuery>) -> ApiResult<Vec<WorklistEntry>> {
    let why = match nz(&q.reason) {
        Some(_) => {
            if !p.patient_data {
                return Err(Fail::Forbidden.into());
            }
            Some(reason(&q.reason)?)
        }
        None => None,
    };
    Ok(Json(worklist_entries(&state, &p, nz(&q.connector), nz(&q.unit), why).await?))
}

// ---------------------------------------------------------------------------------------------
// Täckningsgrad: every register connector (SAR and any other Stratum register)

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct CoverageRow {
    pub connector: String,
    pub unit: String,
    /// Month of the first visit (YYYY-MM).
    pub month: String,
    pub form: String,
    /// Episodes whose window for this form has opened.
    pub due: i64,
    /// Of those, registrations the register holds.
    pub present: i64,
}

/// Täckningsgrad: per register connector, unit × month × form, courses due vs registrations
/// present — computed by the register engine's own rule (`registers::engine::coverage`), so the
/// page and the mapper agree, for every connector of kind `stratum_register`.
pub async fn coverage(store: &Store, scope: &UnitScope) -> Result<Vec<CoverageRow>, Fail> {
    let mut out = vec![];
    for connector in db::distinct_connectors(store, "sar_episodes").await? {
        let episodes = store.episodes(&connector).await?;
        let present = store.registrations_present(&connector).await?;
        out.extend(crate::registers::engine::coverage(&episodes, &present).into_iter().map(|r| CoverageRow {
            connector: connector.clone(),
            unit: r.unit,
            month: r.month,
            form: r.form,
            due: r.expected as i64,
            present: r.delivered as i64,
        }));
    }
    out.retain(|r| scope.allows(&r.unit));
    Ok(out)
}

/// SAR data quality: artros diagnoses that classify no joint of the mapping (M19 at another
/// site, M15.0 …), per connector and unit, counted as distinct journal documents — from the
/// mapper's notes in the audit log (`mapping.note`, `unmatched_diagnosis`).
pub async fn sar_unmatched_diagnoses(store: &Store, scope: &UnitScope) -> Result<BTreeMap<(String, String), usize>, Fail> {
    let events = store.audit_search(&AuditQuery { kind: Some("mapping.note".into()), limit: Some(100_000), ..Default::default() }).await?;
    let mut docs: BTreeMap<(String, String), std::collections::BTreeSet<String>> = BTreeMap::new();
    for e in events {
        let Some(note) = e.detail.get("note").and_then(Value::as_str).and_then(|n| serde_json::from_str::<Value>(n).ok()) else { continue };
        if note["kind"].as_str() != Some("unmatched_diagnosis") {
            continue;
        }
        let (Some(unit), Some(doc)) = (note["unit"].as_str(), note["document"].as_str()) else { continue };
        if !scope.allows(unit) {
            continue;
        }
        docs.entry((e.subject.clone(), unit.to_string())).or_default().insert(doc.to_string());
    }
    Ok(docs.into_iter().map(|(k, v)| (k, v.len())).collect())
}

pub async fn sar_coverage(State(state): State<AdminState>, Extension(p): Extension<Principal>) -> ApiResult<Vec<CoverageRow>> {
    Ok(Json(coverage(&state.app.store, &p.scope).await?))
}

// ---------------------------------------------------------------------------------------------
// SAR: the register's own indicators

#[derive(Deserialize, Default)]
pub struct SarIndicatorQuery {
    pub connector: Option<String>,
    /// `kvinna` or `man`.
    pub sex: Option<String>,
    /// `-54`, `55-64`, `65-74`, `75-`.
    pub age_group: Option<String>,
    /// `hip`, `knee`, `hand`.
    pub joint: Option<String>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct SarIndicators {
    pub connector: String,
    pub rows: Vec<crate::registers::sar::indicators::IndicatorRow>,
}

/// Artrosregistrets indikatorer per SAR connector, unit and year of first visit, from what the
/// register holds (the delivered payloads), by the rules in `registers::sar::indicators`.
/// Only the scope's units: a unit-limited caller's figures are computed from its units alone.
pub async fn sar_indicators_of(app: &crate::app::App, scope: &UnitScope, q: &SarIndicatorQuery) -> anyhow::Result<Vec<SarIndicators>> {
    use crate::registers::sar::{indicators, mapping};
    let filter = indicators::Filter { sex: nz(&q.sex), age_group: nz(&q.age_group), joint: nz(&q.joint) };
    let mut out = vec![];
    for c in app.loaded.connectors.iter().filter(|c| c.kind == crate::config::ConnectorKind::StratumRegister) {
        if nz(&q.connector).is_some_and(|n| n != c.name) {
            continue;
        }
        // The mapping names the columns; loaded against the connector's offline metadata (the
        // same file `config check` uses), as the page must work while the register is down.
        let Ok(meta) = mapping::offline_metadata(c) else { continue };
        let (Some(m), _) = mapping::load(c, &meta) else { continue };
        // SAR's own indicators: only a mapping that names their columns (`[indicators]`).
        if m.indicator_columns.is_empty() {
            continue;
        }
        let Some(fv) = m.forms.iter().find(|f| f.occasion.is_first_visit()) else { continue };
        let held: Vec<indicators::Held> =
            app.store.registrations_delivered(&c.name).await?.into_iter().filter(|(unit, _, _)| scope.allows(unit)).map(|(unit, form, payload)| indicators::Held { unit, form, payload }).collect();
        let rows = indicators::compute(&held, &m.indicator_columns, &fv.subject_column, &fv.event_date_column, &filter);
        out.push(SarIndicators { connector: c.name.clone(), rows });
    }
    Ok(out)
}

pub async fn sar_indicators(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<SarIndicatorQuery>) -> ApiResult<Vec<SarIndicators>> {
    Ok(Json(sar_indicators_of(&state.app, &p.scope, &q).await.map_err(Fail::from)?))
}

// ---------------------------------------------------------------------------------------------
// PVK

#[derive(Deserialize)]
pub struct PvkQuery {
    pub connector: Option<String>,
    pub rule_year: Option<i32>,
    pub unit: Option<String>,
}

#[derive(Serialize)]
pub struct PvkResults {
    pub results: Vec<crate::store::PvkResultRow>,
    pub quality: Vec<crate::store::PvkQualityRow>,
    /// E.g. code lists not yet verified against their source: numbers to read with care.
    pub warnings: Vec<super::Warning>,
    /// Every configured indicator with its name and whether it can be computed.
    pub indicators: Vec<PvkIndicatorInfo>,
}

/// An indicator as the connector's rule sets define it.
#[derive(Clone, Debug, Serialize)]
pub struct PvkIndicatorInfo {
    pub connector: String,
    pub rule_year: i32,
    /// Register code (the `indicator` of result rows).
    pub indicator: String,
    pub id: String,
    /// "Ar12 – Andel patienter med …".
    pub name: String,
    /// A regional measure (FaR, vårdval per FTE): shown and exported, never sent to PVK.
    pub regional: bool,
    /// Per-FTE measures: the region's requirement per full-time equivalent and year.
    pub per_fte_requirement: Option<u32>,
    /// "beräkningsbar", or "ej beräkningsbar: <what is missing>".
    pub status: String,
    /// Why the id is provisional, if it is.
    pub provisional: Option<String>,
}

/// The indicators of every configured PVK connector (read from their rule files).
pub fn pvk_indicators(state: &AdminState) -> Vec<PvkIndicatorInfo> {
    let mut out = vec![];
    for c in state.app.loaded.connectors.iter().filter(|c| c.kind == crate::config::ConnectorKind::Pvk) {
        let Ok(engine) = crate::registers::pvk::PvkEngine::load(c) else { continue };
        for (rs, ind, why) in engine.computability() {
            out.push(PvkIndicatorInfo {
                connector: c.name.clone(),
                rule_year: rs.year,
                indicator: ind.register_code.clone(),
                id: ind.id.clone(),
                name: ind.display_name(),
                regional: ind.regional,
                per_fte_requirement: ind.per_fte.as_ref().map(|f| f.requirement),
                status: why.map_or_else(|| "beräkningsbar".to_string(), |w| format!("{} {w}", crate::registers::pvk::NOT_COMPUTABLE)),
                provisional: ind.provisional.clone(),
            });
        }
    }
    out
}

pub async fn pvk_data(state: &AdminState, scope: &UnitScope, connector: Option<String>, rule_year: Option<i32>, unit: Option<String>) -> Result<PvkResults, Fail> {
    let store = &state.app.store;
    let connectors = match connector {
        Some(c) => vec![c],
        None => db::distinct_connectors(store, "pvk_results").await?,
    };
    let mut results = vec![];
    let mut quality = vec![];
    for c in &connectors {
        results.extend(store.pvk_results(c, rule_year).await?.into_iter().filter(|r| scope.allows(&r.unit) && unit.as_ref().map_or(true, |u| &r.unit == u)));
        quality.extend(store.pvk_quality(c).await?.into_iter().filter(|r| scope.allows(&r.unit) && unit.as_ref().map_or(true, |u| &r.unit == u)));
    }
    for r in &mut results {
        r.note = scrub_opt(&r.note);
        r.patient_list = None;
    }
    let warnings = (state.warnings)().into_iter().filter(|w| w.area == "pvk").collect();
    let indicators = pvk_indicators(state);
    Ok(PvkResults { results, quality, warnings, indicators })
}

pub async fn pvk_results(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<PvkQuery>) -> ApiResult<PvkResults> {
    Ok(Json(pvk_data(&state, &p.scope, nz(&q.connector), q.rule_year, nz(&q.unit)).await?))
}

#[derive(Deserialize, Serialize, Clone, Default)]
pub struct PatientListQuery {
    pub connector: Option<String>,
    pub rule_year: Option<i32>,
    pub unit: Option<String>,
    pub year: Option<i32>,
    pub month: Option<u32>,
    pub indicator: Option<String>,
    pub reason: Option<String>,
}

pub struct ListKey {
    pub connector: String,
    pub rule_year: i32,
    pub unit: String,
    pub year: i32,
    pub month: u32,
    pub indicator: String,
}

impl PatientListQuery {
    pub fn key(&self) -> Result<ListKey, Fail> {
        let miss = || Fail::BadRequest("Ange connector, rule_year, unit, year, month och indicator.".into());
        Ok(ListKey {
            connector: nz(&self.connector).ok_or_else(miss)?,
            rule_year: self.rule_year.ok_or_else(miss)?,
            unit: nz(&self.unit).ok_or_else(miss)?,
            year: self.year.ok_or_else(miss)?,
            month: self.month.filter(|m| (1..=12).contains(m)).ok_or_else(miss)?,
            indicator: nz(&self.indicator).ok_or_else(miss)?,
        })
    }
}

/// The patient list behind one PVK result, recorded as a patient-data view first.
pub async fn patient_list(state: &AdminState, p: &Principal, k: &ListKey, why: &str) -> Result<Value, Fail> {
    if !p.patient_data {
        return Err(Fail::Forbidden);
    }
    p.require_unit(&k.unit)?;
    let list = state.app.store.pvk_patient_list(&k.connector, k.rule_year, &k.unit, k.year, k.month, &k.indicator).await?.ok_or(Fail::NotFound)?;
    let rows = list.as_array().map(|a| a.len()).unwrap_or(1);
    let subject = format!("pvk:{}:{}:{}:{:04}-{:02}:{}", k.connector, k.rule_year, k.unit, k.year, k.month, k.indicator);
    record_patient_view(state, p, "pvk_patient_list", &subject, why, rows, &patient_keys_in(&list, &state.app.pseudo)).await?;
    Ok(list)
}

pub async fn pvk_patient_list(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<PatientListQuery>) -> ApiResult<Value> {
    if !p.patient_data {
        return Err(Fail::Forbidden.into());
    }
    let why = reason(&q.reason)?;
    let k = q.key()?;
    Ok(Json(json!({"patients": patient_list(&state, &p, &k, &why).await?})))
}

// ---------------------------------------------------------------------------------------------
// Audit

#[derive(Deserialize, Default, Clone)]
pub struct AuditParams {
    pub kind: Option<String>,
    pub subject: Option<String>,
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<i64>,
}

impl AuditParams {
    pub fn to_query(&self) -> Result<AuditQuery, Fail> {
        Ok(AuditQuery {
            kind: nz(&self.kind),
            subject: nz(&self.subject),
            actor: nz(&self.actor),
            correlation_id: nz(&self.correlation_id),
            from_us: parse_day(&self.from)?.map(stockholm_day_start),
            to_us: parse_day(&self.to)?.map(|d| stockholm_day_start(d + chrono::Duration::days(1))),
            limit: Some(self.limit.unwrap_or(200).clamp(1, 5000)),
        })
    }
}

pub async fn audit_events(store: &Store, q: &AuditQuery) -> Result<Vec<AuditEvent>, Fail> {
    Ok(store.audit_search(q).await?.into_iter().map(scrub_event).collect())
}

pub async fn audit(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<AuditParams>) -> ApiResult<Vec<AuditEvent>> {
    // The region's whole log (every unit's keys, every user's views): not for a unit user.
    p.require_region()?;
    Ok(Json(audit_events(&state.app.store, &q.to_query()?).await?))
}

pub async fn audit_verify(State(state): State<AdminState>, Extension(p): Extension<Principal>) -> ApiResult<crate::store::VerifyReport> {
    p.require_region()?;
    Ok(Json(state.app.store.audit_verify().await?))
}

// ---------------------------------------------------------------------------------------------
// Users, tokens, configuration (admin)

pub async fn users(State(state): State<AdminState>, Extension(p): Extension<Principal>) -> ApiResult<Vec<db::User>> {
    p.require(Role::Admin)?;
    p.require_region()?;
    Ok(Json(db::users(&state.app.store).await?))
}

pub async fn tokens(State(state): State<AdminState>, Extension(p): Extension<Principal>) -> ApiResult<Vec<db::ApiToken>> {
    p.require(Role::Admin)?;
    p.require_region()?;
    Ok(Json(db::tokens(&state.app.store).await?))
}

#[derive(Deserialize)]
pub struct TokenBody {
    pub name: String,
    /// Must be the caller (tokens act only for their own user); may be left out.
    #[serde(default)]
    pub username: Option<String>,
    /// Validity in days (at most `admin.token_days`, the default).
    #[serde(default)]
    pub days: Option<u32>,
}

pub async fn token_create(State(state): State<AdminState>, Extension(p): Extension<Principal>, headers: HeaderMap, Json(b): Json<TokenBody>) -> Result<Response, ApiError> {
    p.require(Role::Admin)?;
    p.require_region()?;
    p.check_csrf(csrf_header(&headers))?;
    let (id, token) = auth::create_api_token(&state, &p, &b.name, b.username.as_deref(), b.days).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id, "token": token}))).into_response())
}

pub async fn token_revoke(State(state): State<AdminState>, Extension(p): Extension<Principal>, headers: HeaderMap, Path(id): Path<i64>) -> ApiResult<Value> {
    p.require(Role::Admin)?;
    p.require_region()?;
    p.check_csrf(csrf_header(&headers))?;
    if !auth::revoke_api_token(&state, &p, id).await? {
        return Err(Fail::NotFound.into());
    }
    Ok(Json(json!({"revoked": id})))
}

/// The running configuration. Secrets are references (`file`/`env`), never values.
pub fn config_view(state: &AdminState) -> Value {
    json!({
        "settings": state.app.settings(),
        "connectors": state.app.loaded.connectors,
        "files": state.app.loaded.files,
        "instance_id": state.app.instance_id,
    })
}

pub async fn config(State(state): State<AdminState>, Extension(p): Extension<Principal>) -> ApiResult<Value> {
    p.require(Role::Admin)?;
    p.require_region()?;
    Ok(Json(config_view(&state)))
}
