//! The Stratum register API client: metadata, per-unit sessions, and the `Sink` that turns a
//! claimed outbox record into POST / PUT (changed columns) / DELETE.
//!
//! Nothing here logs or returns a payload value, a personnummer, a query string or a URL with
//! the API key: error strings are built from status codes, column names and the register's
//! own message (with long digit runs masked, in case a real register echoes a personnummer).

use super::metadata::{Domain, Form, Question, RegisterInfo, RegisterMetadata, Unit};
use super::session::UnitSession;
use super::validate::{self, Mode};
use crate::config::{RegisterSettings, TlsClientSettings};
use crate::sinks::{SendResult, Sink};
use crate::store::{Claimed, Op, Store};
use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub type Columns = Map<String, Value>;

/// A registration the register already holds, as a query found it.
#[derive(Clone)]
pub struct FoundRegistration {
    pub event_id: String,
    pub unit_code: Option<String>,
    /// The registration's columns (personal data: never log them).
    pub columns: Columns,
}

impl std::fmt::Debug for FoundRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FoundRegistration {{ event_id: {}, unit_code: {:?}, columns: {} }}", self.event_id, self.unit_code, self.columns.len())
    }
}

/// A metadata call the register answered with an error status.
#[derive(Debug)]
struct MetadataHttpError {
    status: u16,
    retry_after: Option<Duration>,
    message: String,
}

impl std::fmt::Display for MetadataHttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MetadataHttpError {}

/// What one HTTP exchange returned (an answer of any status; transport failures are `Err`).
struct Reply {
    status: u16,
    success: bool,
    data: Value,
    code: Option<String>,
    message: Option<String>,
    retry_after: Option<Duration>,
}

impl Reply {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status) && self.success
    }
    /// The register's reason, for a rejection: status, code and message (digit runs masked).
    fn reason(&self) -> String {
        let mut s = format!("register answered {}", self.status);
        if let Some(c) = &self.code {
            s.push_str(&format!(" {}", mask_digits(c)));
        }
        if let Some(m) = &self.message {
            let m = mask_digits(m);
            let m: String = m.chars().take(400).collect();
            s.push_str(&format!(": {m}"));
        }
        s
    }
}

/// Replace runs of 10 or more digits (a personnummer, with or without century) with `…`.
fn mask_digits(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            out.push_str(if run.len() >= 10 { "…" } else { &run });
            run.clear();
            out.push(c);
        }
    }
    out.push_str(if run.len() >= 10 { "…" } else { &run });
    out
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterDoc {
    #[serde(flatten)]
    info: RegisterInfo,
    #[serde(default)]
    forms: Vec<Form>,
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// A transport failure described without its URL (which carries the API key and, for lookups,
/// the query values).
fn transport_error(e: reqwest::Error, timeout: Duration) -> String {
    let kind = if e.is_timeout() {
        format!("no answer within {}s", timeout.as_secs())
    } else if e.is_connect() {
        "could not connect".to_string()
    } else if e.is_body() || e.is_decode() {
        "connection failed while reading the answer".to_string()
    } else {
        "connection closed or reset before an answer".to_string()
    };
    // The innermost cause (hyper, io, rustls) says what happened and carries no URL.
    let e = e.without_url();
    let Some(mut root) = std::error::Error::source(&e) else { return kind };
    while let Some(s) = root.source() {
        root = s;
    }
    format!("{kind} ({root})")
}

/// The Stratum client for one configured register.
pub struct StratumClient {
    name: String,
    register_id: u32,
    /// `<base_url>/stratum/api`
    api: String,
    api_key: Option<String>,
    tls: TlsClientSettings,
    timeout: Duration,
    /// Journal unit HSA id → Stratum UnitCode.
    bindings: HashMap<String, String>,
    store: Option<Store>,
    /// Cookie-less client for metadata (no session state needed).
    http: reqwest::Client,
    meta: RwLock<Option<Arc<RegisterMetadata>>>,
    meta_loading: tokio::sync::Mutex<()>,
    sessions: Mutex<HashMap<String, Arc<UnitSession>>>,
}

impl StratumClient {
    /// `store` lets a send persist an EventID found by lookup before it goes on (crash safety);
    /// without one, the id is only returned in `Delivered.event_id`.
    pub fn new(name: &str, settings: &RegisterSettings, store: Option<Store>) -> Result<StratumClient> {
        let base = settings.base_url.trim_end_matches('/');
        if base.is_empty() {
            bail!("registers.{name}.base_url is empty");
        }
        let api_key = settings.api_key.as_ref().map(|s| s.read_string().with_context(|| format!("registers.{name}.api_key"))).transpose()?;
        let timeout = Duration::from_secs(settings.timeout_seconds.max(1));
        let http = crate::sandbox::tls::http_client(&settings.tls, timeout, false).with_context(|| format!("registers.{name}.tls"))?;
        Ok(StratumClient {
            name: name.to_string(),
            register_id: settings.register_id,
            api: format!("{base}/stratum/api"),
            api_key,
            tls: settings.tls.clone(),
            timeout,
            bindings: settings.units.iter().map(|u| (u.hsa_id.clone(), u.unit_code.clone())).collect(),
            store,
            http,
            meta: RwLock::new(None),
            meta_loading: tokio::sync::Mutex::new(()),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn register_id(&self) -> u32 {
        self.register_id
    }

    /// The metadata last loaded (None before the first successful load).
    pub fn metadata(&self) -> Option<Arc<RegisterMetadata>> {
        self.meta.read().expect("metadata lock").clone()
    }

    /// Read register, forms, questions, domains and units from the metadata endpoints and keep
    /// them. On failure the metadata held so far stays in use.
    pub async fn load_metadata(&self) -> Result<Arc<RegisterMetadata>> {
        let _one_at_a_time = self.meta_loading.lock().await;
        self.load_locked().await
    }

    async fn load_locked(&self) -> Result<Arc<RegisterMetadata>> {
        let m = Arc::new(self.fetch_metadata().await?);
        *self.meta.write().expect("metadata lock") = Some(m.clone());
        tracing::info!(register = %self.name, forms = m.forms.len(), domains = m.domains.len(), units = m.units.len(), "Stratum metadata loaded");
        Ok(m)
    }

    /// The daily refresh (same as `load_metadata`, named for the daemon).
    pub async fn refresh(&self) -> Result<Arc<RegisterMetadata>> {
        self.load_metadata().await
    }

    async fn fetch_metadata(&self) -> Result<RegisterMetadata> {
        let id = self.register_id;
        let reg: RegisterDoc = self.get_data(&format!("/metadata/registers/{id}")).await?;
        if reg.info.register_id != id {
            bail!("metadata for register {id} describes register {}", reg.info.register_id);
        }
        let questions = futures::future::try_join_all(
            reg.forms.iter().map(|f| async move { self.get_data::<Vec<Question>>(&format!("/metadata/questions/form/{}", f.form_id)).await }),
        )
        .await?;
        let mut forms = reg.forms;
        for (f, q) in forms.iter_mut().zip(questions) {
            f.questions = q;
        }
        let domain_ids: BTreeSet<u32> = forms.iter().flat_map(|f| f.questions.iter().map(|q| q.domain.domain_id)).collect();
        let domains =
            futures::future::try_join_all(domain_ids.iter().map(|d| async move { self.get_data::<Domain>(&format!("/metadata/domains/{d}")).await })).await?;
        let units: Vec<Unit> = self.get_data(&format!("/metadata/units/register/{id}")).await?;
        Ok(RegisterMetadata { register: reg.info, forms, domains, units })
    }

    /// A metadata GET. These are idempotent, so transient failures (transport errors, 5xx, 429)
    /// are retried here a few times with backoff: a register that drops one request in five must
    /// not keep the metadata — a dozen requests — from ever loading.
    async fn get_data<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let wait = Duration::from_millis(50u64 << attempt.min(4));
            let r = match self.call(&self.http, Method::GET, path, &[], None).await {
                Ok(r) => r,
                Err(e) if attempt < METADATA_ATTEMPTS => {
                    tracing::debug!(path, attempt, "metadata request failed, retrying: {e}");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => return Err(anyhow!("GET {path}: {e}")),
            };
            if r.status == 401 {
                let message = format!("GET {path}: the register refused the API key (401); check registers.{}.api_key", self.name);
                return Err(MetadataHttpError { status: r.status, retry_after: r.retry_after, message }.into());
            }
            if (r.status >= 500 || r.status == 429) && attempt < METADATA_ATTEMPTS {
                tokio::time::sleep(r.retry_after.map(|ra| ra.min(Duration::from_secs(5))).unwrap_or(wait)).await;
                continue;
            }
            if !r.ok() {
                return Err(MetadataHttpError { status: r.status, retry_after: r.retry_after, message: format!("GET {path}: {}", r.reason()) }.into());
            }
            return serde_json::from_value(r.data).with_context(|| format!("GET {path}: unexpected answer"));
        }
    }

    async fn metadata_or_load(&self) -> Result<Arc<RegisterMetadata>> {
        if let Some(m) = self.metadata() {
            return Ok(m);
        }
        // Concurrent first sends wait for one load instead of each loading.
        let _one_at_a_time = self.meta_loading.lock().await;
        if let Some(m) = self.metadata() {
            return Ok(m);
        }
        self.load_locked().await
    }

    /// Problems with the unit bindings against the loaded metadata (for `config check`).
    pub fn binding_problems(&self) -> Vec<String> {
        let Some(m) = self.metadata() else { return vec!["metadata not loaded".into()] };
        let mut v: Vec<String> = self
            .bindings
            .iter()
            .filter(|(_, code)| m.unit_by_code(code).is_none())
            .map(|(hsa, code)| format!("unit {hsa}: UnitCode {code} is not a unit of register {}", self.register_id))
            .collect();
        v.sort();
        v
    }

    /// One HTTP exchange: the API key as `apikey`, JSON in and out, the envelope unpacked.
    async fn call(&self, http: &reqwest::Client, method: Method, path: &str, query: &[(&str, &str)], body: Option<&Value>) -> Result<Reply, String> {
        let mut req = http.request(method, format!("{}{}", self.api, path));
        if let Some(k) = &self.api_key {
            req = req.query(&[("apikey", k.as_str())]);
        }
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| transport_error(e, self.timeout))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let bytes = resp.bytes().await.map_err(|e| transport_error(e, self.timeout))?;
        let env: Option<Envelope> = serde_json::from_slice(&bytes).ok();
        Ok(match env {
            Some(e) => Reply {
                status,
                success: e.success,
                data: e.data,
                code: e.code.map(|c| match c {
                    Value::String(s) => s,
                    other => other.to_string(),
                }),
                message: e.message,
                retry_after,
            },
            // Not our envelope (a proxy's error page, an empty 204): judge by status alone.
            None => Reply { status, success: (200..300).contains(&status), data: Value::Null, code: None, message: None, retry_after },
        })
    }

    /// Turn an answer that is not a success into the delivery engine's verdict.
    ///
    /// 401 is Transient, not Rejected: a wrong or expired key fails every record alike, so
    /// rejecting them would dead-letter the whole backlog; a transient error lets the circuit
    /// breaker pause the register until the key is fixed, then everything flows again.
    fn classify(&self, op: &str, r: &Reply) -> SendResult {
        let op = op.to_string();
        let status = Some(r.status);
        match r.status {
            401 => SendResult::Transient {
                operation: op,
                http_status: status,
                error: format!("the register refused the API key (401): check registers.{}.api_key; the register is paused, records are kept", self.name),
                retry_after: r.retry_after,
            },
            408 | 429 => SendResult::Transient { operation: op, http_status: status, error: r.reason(), retry_after: r.retry_after },
            s if s >= 500 => SendResult::Transient { operation: op, http_status: status, error: r.reason(), retry_after: r.retry_after },
            s if (400..500).contains(&s) => SendResult::Rejected { operation: op, http_status: status, reason: r.reason() },
            // A 2xx with success=false is the register saying no.
            s if (200..300).contains(&s) => SendResult::Rejected { operation: op, http_status: status, reason: r.reason() },
            _ => SendResult::Transient { operation: op, http_status: status, error: format!("unexpected answer {}", r.status), retry_after: None },
        }
    }

    fn transient(op: &str, error: String) -> SendResult {
        SendResult::Transient { operation: op.to_string(), http_status: None, error, retry_after: None }
    }

    fn rejected(op: &str, reason: String) -> SendResult {
        SendResult::Rejected { operation: op.to_string(), http_status: None, reason }
    }

    fn session(&self, unit_code: &str) -> Result<Arc<UnitSession>, SendResult> {
        let mut map = self.sessions.lock().expect("sessions lock");
        if let Some(s) = map.get(unit_code) {
            return Ok(s.clone());
        }
        let http = crate::sandbox::tls::http_client(&self.tls, self.timeout, true).map_err(|e| Self::transient("CONTEXT", format!("cannot build the HTTP client: {e}")))?;
        let s = Arc::new(UnitSession::new(http));
        map.insert(unit_code.to_string(), s.clone());
        Ok(s)
    }

    /// The unit's session with its context selected.
    async fn ready_session(&self, unit_code: &str) -> Result<Arc<UnitSession>, SendResult> {
        let s = self.session(unit_code)?;
        if s.is_ready() {
            return Ok(s);
        }
        let mut selected = s.selecting.lock().await;
        if s.is_ready() {
            return Ok(s.clone());
        }
        let r = self.call(&s.http, Method::GET, "/authentication/contexts", &[], None).await.map_err(|e| Self::transient("CONTEXT", e))?;
        if !r.ok() {
            return Err(self.classify("CONTEXT", &r));
        }
        let contexts = r.data.as_array().cloned().unwrap_or_default();
        let found = contexts.iter().find_map(|c| {
            let unit = c.get("Unit")?;
            let code_matches = unit.get("UnitCode").and_then(|v| v.as_str().map(str::to_string).or_else(|| v.as_i64().map(|n| n.to_string()))).as_deref() == Some(unit_code);
            let reg = unit.get("Register").and_then(|r| r.get("RegisterID")).and_then(Value::as_u64);
            (code_matches && reg.map_or(true, |r| r == self.register_id as u64)).then(|| c.get("ContextID").and_then(Value::as_u64)).flatten()
        });
        let Some(ctx) = found else {
            return Err(Self::rejected("CONTEXT", format!("the API key has no context for unit {unit_code} in register {}", self.register_id)));
        };
        let r = self
            .call(&s.http, Method::PUT, "/authentication/context", &[], Some(&json!({"Context": {"ContextID": ctx}})))
            .await
            .map_err(|e| Self::transient("CONTEXT", e))?;
        if !r.ok() {
            return Err(self.classify("CONTEXT", &r));
        }
        *selected = Some(ctx as u32);
        s.set_ready(true);
        tracing::debug!(register = %self.name, unit = unit_code, context = ctx, "Stratum context selected");
        Ok(s.clone())
    }

    /// A call in the unit's context. If the register says the session has no context (it
    /// expired, or the register restarted), select it again and repeat once.
    async fn unit_call(&self, unit_code: &str, op: &str, method: Method, path: &str, query: &[(&str, &str)], body: Option<&Value>) -> Result<Reply, SendResult> {
        for attempt in 0..2 {
            let s = self.ready_session(unit_code).await?;
            let r = self.call(&s.http, method.clone(), path, query, body).await.map_err(|e| Self::transient(op, e))?;
            if r.status == 403 && r.code.as_deref() == Some("NoContext") && attempt == 0 {
                s.set_ready(false);
                *s.selecting.lock().await = None;
                continue;
            }
            return Ok(r);
        }
        unreachable!("the loop returns")
    }

    fn unit_code_for(&self, hsa: &str) -> Result<&str, SendResult> {
        self.bindings
            .get(hsa)
            .map(String::as_str)
            .ok_or_else(|| Self::rejected("VALIDATE", format!("unit {hsa} has no binding in registers.{}.units", self.name)))
    }

    /// Registrations of `form` in the unit's context whose columns equal the given values.
    pub async fn query(&self, unit_hsa: &str, form: &str, conditions: &[(String, Value)]) -> Result<Vec<FoundRegistration>> {
        let meta = self.metadata_or_load().await?;
        let f = meta.form(form).ok_or_else(|| anyhow!("form {form} is not in the metadata of register {}", self.register_id))?;
        let unit = self.unit_code_for(unit_hsa).map_err(|e| anyhow!("{}", result_text(&e)))?;
        let conds: Columns = conditions.iter().cloned().collect();
        self.lookup(unit, f, &conds).await.map_err(|e| anyhow!("{}", result_text(&e)))
    }

    async fn lookup(&self, unit_code: &str, form: &Form, conds: &Columns) -> Result<Vec<FoundRegistration>, SendResult> {
        if conds.is_empty() {
            return Err(Self::rejected("LOOKUP", "a lookup needs at least one column".into()));
        }
        let mut parts = vec![];
        for (col, v) in conds {
            let Some(lit) = validate::query_literal(v) else {
                return Err(Self::rejected("LOOKUP", format!("column {col}: this value cannot be used in a registration query")));
            };
            parts.push(format!("{col} eq {lit}"));
        }
        let q = parts.join(",");
        let path = format!("/registrations/form/{}", form.form_id);
        let r = self.unit_call(unit_code, "LOOKUP", Method::GET, &path, &[("query", q.as_str())], None).await?;
        if !r.ok() {
            return Err(self.classify("LOOKUP", &r));
        }
        let items = match r.data {
            Value::Array(a) => a,
            Value::Null => vec![],
            _ => return Err(Self::transient("LOOKUP", "unexpected answer to a registration query".into())),
        };
        let mut out = vec![];
        for it in items {
            let Some(eid) = event_id_of(&it) else { continue };
            let unit_code = it.get("Unit").and_then(|u| u.get("UnitCode")).and_then(Value::as_str).map(str::to_string);
            let columns = it.get("Data").and_then(Value::as_object).cloned().unwrap_or_default();
            out.push(FoundRegistration { event_id: eid, unit_code, columns });
        }
        Ok(out)
    }

    /// Look the record's registration up with its own lookup columns and every earlier
    /// version's. One distinct registration is the answer; several are for an operator.
    async fn find_existing(&self, unit_code: &str, form: &Form, c: &Claimed) -> Result<Option<FoundRegistration>, SendResult> {
        let mut sets: Vec<&Columns> = vec![];
        if let Some(l) = &c.record.lookup {
            sets.push(l);
        }
        sets.extend(c.earlier_lookups.iter());
        let mut found: Vec<FoundRegistration> = vec![];
        let mut seen_sets: Vec<&Columns> = vec![];
        for set in sets {
            if set.is_empty() || seen_sets.contains(&set) {
                continue;
            }
            seen_sets.push(set);
            for f in self.lookup(unit_code, form, set).await? {
                if !found.iter().any(|g| g.event_id == f.event_id) {
                    found.push(f);
                }
            }
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            n => Err(Self::rejected("LOOKUP", format!("{n} registrations of form {} match this record in unit {unit_code}; an operator must decide which one it is", form.form_name))),
        }
    }

    /// Keep an EventID found by lookup before anything else happens, so a crash cannot lose it.
    async fn adopt(&self, c: &Claimed, found: &FoundRegistration, form: &Form) -> Result<Columns, SendResult> {
        let held: Columns = found.columns.iter().filter(|(k, _)| form.question(k).is_some()).map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(store) = &self.store {
            store
                .adopt_event_id(&c.record.idem_key, &found.event_id, Some(&held))
                .await
                .map_err(|e| Self::transient("ADOPT", format!("cannot store the EventID found by lookup: {e}")))?;
        }
        tracing::info!(register = %self.name, form = %form.form_name, record = c.record.id, event_id = %found.event_id, "adopted an existing Stratum registration");
        Ok(held)
    }

    async fn send_claimed(&self, c: &Claimed) -> SendResult {
        let meta = match self.metadata_or_load().await {
            Ok(m) => m,
            Err(e) => {
                // Without metadata nothing can be checked, whatever the status: try again later.
                let http = e.downcast_ref::<MetadataHttpError>();
                return SendResult::Transient {
                    operation: "METADATA".into(),
                    http_status: http.map(|h| h.status),
                    error: format!("register metadata not available: {e:#}"),
                    retry_after: http.and_then(|h| h.retry_after),
                };
            }
        };
        let Some(form) = meta.form(&c.record.form) else {
            return Self::rejected("VALIDATE", format!("form {} is not in the metadata of register {}", c.record.form, self.register_id));
        };
        let unit = match self.unit_code_for(&c.record.unit) {
            Ok(u) => u.to_string(),
            Err(e) => return e,
        };
        let r = match c.record.op {
            Op::Upsert => self.upsert(c, &meta, form, &unit).await,
            Op::Retract => self.retract(c, form, &unit).await,
        };
        r.unwrap_or_else(|e| e)
    }

    async fn upsert(&self, c: &Claimed, meta: &RegisterMetadata, form: &Form, unit: &str) -> Result<SendResult, SendResult> {
        let Some(payload) = c.record.payload.as_ref() else {
            return Err(Self::rejected("VALIDATE", "the record has no payload".into()));
        };
        // The payload is always the whole registration, so it must be a valid create.
        let problems = validate::validate(meta, form, payload, Mode::Create);
        if !problems.is_empty() {
            return Err(Self::rejected("VALIDATE", validate::describe(&problems)));
        }
        let mut event_id = c.registration.event_id.clone();
        let mut held = c.registration.delivered_payload.clone();
        let mut adopted = false;
        if event_id.is_none() && c.outcome_unknown_before {
            if let Some(f) = self.find_existing(unit, form, c).await? {
                held = Some(self.adopt(c, &f, form).await?);
                event_id = Some(f.event_id);
                adopted = true;
            }
        }
        let Some(eid) = event_id else {
            return self.post(c, meta, form, unit, payload).await;
        };
        self.put_changes(meta, form, unit, &eid, payload, held.as_ref(), adopted).await
    }

    async fn post(&self, c: &Claimed, meta: &RegisterMetadata, form: &Form, unit: &str, payload: &Columns) -> Result<SendResult, SendResult> {
        let path = format!("/registrations/form/{}", form.form_id);
        let body = Value::Object(payload.clone());
        let r = self.unit_call(unit, "POST", Method::POST, &path, &[], Some(&body)).await?;
        if r.ok() {
            let Some(eid) = event_id_of(&r.data) else {
                // Created, but we cannot address it: the next attempt looks it up.
                return Err(SendResult::Transient { operation: "POST".into(), http_status: Some(r.status), error: "the register accepted the registration but returned no EventID".into(), retry_after: None });
            };
            return Ok(SendResult::Delivered { operation: "POST".into(), http_status: Some(r.status), event_id: Some(eid), detail: None });
        }
        if r.status == 409 {
            // Already there (an earlier attempt landed, or someone registered it by hand).
            let Some(found) = self.find_existing(unit, form, c).await? else {
                return Err(self.classify("POST", &r));
            };
            let held = self.adopt(c, &found, form).await?;
            return self.put_changes(meta, form, unit, &found.event_id, payload, Some(&held), true).await;
        }
        Err(self.classify("POST", &r))
    }

    #[allow(clippy::too_many_arguments)]
    async fn put_changes(&self, meta: &RegisterMetadata, form: &Form, unit: &str, eid: &str, payload: &Columns, held: Option<&Columns>, adopted: bool) -> Result<SendResult, SendResult> {
        let changes = diff(form, payload, held);
        let adopted_note = adopted.then(|| "adopted an existing registration found by lookup".to_string());
        if changes.is_empty() {
            let op = if adopted { "ADOPT" } else { "NOOP" };
            return Ok(SendResult::Delivered { operation: op.into(), http_status: None, event_id: Some(eid.to_string()), detail: adopted_note });
        }
        let problems = validate::validate(meta, form, &changes, Mode::Update);
        if !problems.is_empty() {
            return Err(Self::rejected("VALIDATE", validate::describe(&problems)));
        }
        let path = format!("/registrations/form/{}/{}", form.form_id, eid);
        let r = self.unit_call(unit, "PUT", Method::PUT, &path, &[], Some(&Value::Object(changes))).await?;
        if r.ok() {
            return Ok(SendResult::Delivered { operation: "PUT".into(), http_status: Some(r.status), event_id: Some(eid.to_string()), detail: adopted_note });
        }
        Err(self.classify("PUT", &r))
    }

    async fn retract(&self, c: &Claimed, form: &Form, unit: &str) -> Result<SendResult, SendResult> {
        let mut eid = c.registration.event_id.clone();
        if eid.is_none() && c.outcome_unknown_before {
            eid = self.find_existing(unit, form, c).await?.map(|f| f.event_id);
        }
        let Some(eid) = eid else {
            return Ok(SendResult::Delivered { operation: "NOOP".into(), http_status: None, event_id: None, detail: Some("the register holds nothing for this record".into()) });
        };
        let r = self.unit_call(unit, "DELETE", Method::DELETE, &format!("/registrations/{eid}"), &[], None).await?;
        if r.ok() {
            return Ok(SendResult::Delivered { operation: "DELETE".into(), http_status: Some(r.status), event_id: Some(eid), detail: None });
        }
        if r.status == 404 {
            return Ok(SendResult::Delivered { operation: "DELETE".into(), http_status: Some(404), event_id: Some(eid), detail: Some("already gone from the register".into()) });
        }
        Err(self.classify("DELETE", &r))
    }
}

/// Columns to PUT: those whose value differs from what the register holds, and `null` for
/// optional answers it holds that the new version no longer has. Without a record of what it
/// holds, the whole payload.
/// How many times one metadata GET is tried before the load fails.
const METADATA_ATTEMPTS: u32 = 4;

pub fn diff(form: &Form, payload: &Columns, held: Option<&Columns>) -> Columns {
    let Some(held) = held else { return payload.clone() };
    let mut out = Columns::new();
    for (k, v) in payload {
        if !held.get(k).is_some_and(|h| validate::same_value(h, v)) {
            out.insert(k.clone(), v.clone());
        }
    }
    for (k, h) in held {
        if !payload.contains_key(k) && !h.is_null() && form.question(k).is_some() {
            out.insert(k.clone(), Value::Null);
        }
    }
    out
}

fn event_id_of(v: &Value) -> Option<String> {
    match v.get("EventID")? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn result_text(r: &SendResult) -> String {
    match r {
        SendResult::Delivered { operation, .. } => operation.clone(),
        SendResult::Transient { error, .. } => error.clone(),
        SendResult::Rejected { reason, .. } => reason.clone(),
    }
}

#[async_trait]
impl Sink for StratumClient {
    async fn send(&self, claimed: &Claimed) -> SendResult {
        let r = self.send_claimed(claimed).await;
        match &r {
            SendResult::Delivered { operation, http_status, .. } => {
                tracing::debug!(register = %self.name, form = %claimed.record.form, record = claimed.record.id, op = %operation, status = ?http_status, "delivered")
            }
            SendResult::Transient { operation, http_status, error, .. } => {
                tracing::warn!(register = %self.name, form = %claimed.record.form, record = claimed.record.id, op = %operation, status = ?http_status, error = %error, "transient failure")
            }
            SendResult::Rejected { operation, http_status, reason } => {
                tracing::warn!(register = %self.name, form = %claimed.record.form, record = claimed.record.id, op = %operation, status = ?http_status, reason = %reason, "rejected")
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_runs_are_masked() {
        assert_eq!(mask_digits("SubjectKey 191212121212 finns"), "SubjectKey … finns");
        assert_eq!(mask_digits("1212121212"), "…");
        assert_eq!(mask_digits("column FV_PainNRS outside 0..10"), "column FV_PainNRS outside 0..10");
    }

    #[test]
    fn diff_sends_changes_and_clears() {
        let m = RegisterMetadata::from_json(include_bytes!("../../../conformance/stratum/sar-104.json")).unwrap();
        let f = m.form("FVPat").unwrap();
        let held: Columns = json!({"SubjectKey": "191212121212", "FV_PainNRS": 6, "FV_WeightKg": 80.0, "FV_SickLeave": true}).as_object().unwrap().clone();
        let now: Columns = json!({"SubjectKey": "191212121212", "FV_PainNRS": 4, "FV_WeightKg": 80}).as_object().unwrap().clone();
        let d = diff(f, &now, Some(&held));
        assert_eq!(Value::Object(d), json!({"FV_PainNRS": 4, "FV_SickLeave": null}));
        assert!(diff(f, &now, Some(&now)).is_empty());
        assert_eq!(diff(f, &now, None), now);
    }
}
