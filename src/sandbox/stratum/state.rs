//! The emulated register: metadata served from the contract files, contexts and API-key rights,
//! sessions, registrations in memory, and every rule of `conformance/stratum/README.md`.
//! No HTTP here: `server.rs` maps these results to responses.
//!
//! Locks are `std::sync::Mutex`es held for a few map operations and never across an await.

use crate::sinks::stratum::metadata::{Form, RegisterMetadata, Unit};
use crate::sinks::stratum::validate::{self, Mode};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// A refusal: HTTP status, envelope `code`, message (names columns, never values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn err(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError { status, code, message: message.into() }
}

/// What one API key may do: every context, or only these (RegisterID, UnitCode) pairs.
#[derive(Clone, Debug)]
pub struct ApiKeyRights {
    pub key: String,
    pub contexts: Option<Vec<(u32, String)>>,
}

#[derive(Clone, Debug)]
pub struct Context {
    pub context_id: u32,
    pub register_id: u32,
    pub unit: Unit,
}

/// Accepted writes of one form in one unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub post: u64,
    pub put: u64,
    pub delete: u64,
}

impl OpCounts {
    fn add(&mut self, o: OpCounts) {
        self.post += o.post;
        self.put += o.put;
        self.delete += o.delete;
    }
}

/// Accepted POST/PUT/DELETE per (RegisterID, form name, UnitCode), and all requests seen.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub by_form_unit: BTreeMap<(u32, String, String), OpCounts>,
    /// Every HTTP request that reached the emulator (faulted ones included).
    pub requests: u64,
}

impl Counts {
    /// Counts of a form (by name) in a unit, summed over registers.
    pub fn get(&self, form: &str, unit_code: &str) -> OpCounts {
        let mut o = OpCounts::default();
        for ((_, f, u), c) in &self.by_form_unit {
            if f == form && u == unit_code {
                o.add(*c);
            }
        }
        o
    }
    pub fn total(&self) -> OpCounts {
        let mut o = OpCounts::default();
        for c in self.by_form_unit.values() {
            o.add(*c);
        }
        o
    }
}

/// A registration as the emulator holds it (personal data: for tests and the sandbox only).
#[derive(Clone, Debug, PartialEq)]
pub struct EmulatedRegistration {
    pub event_id: u64,
    pub register_id: u32,
    pub form_id: u32,
    pub form_name: String,
    pub unit_code: String,
    pub subject_key: Option<String>,
    pub event_date: Option<String>,
    pub columns: Map<String, Value>,
}

impl EmulatedRegistration {
    fn to_json(&self, unit_id: u32) -> Value {
        json!({
            "EventID": self.event_id,
            "FormID": self.form_id,
            "Unit": {"UnitID": unit_id, "UnitCode": self.unit_code},
            "Data": self.columns,
        })
    }
}

struct FormInfo {
    register: usize,
    form: usize,
    subject_col: Option<String>,
    date_col: Option<String>,
}

#[derive(Clone)]
pub struct Session {
    pub key: String,
    pub context: Option<u32>,
}

#[derive(Default)]
struct Data {
    next_event_id: u64,
    regs: HashMap<u64, EmulatedRegistration>,
    /// (FormID, UnitCode) → EventIDs, for queries.
    by_form_unit: HashMap<(u32, String), BTreeSet<u64>>,
    /// (FormID, UnitCode, SubjectKey, EventDate) → EventIDs: the 409 rule, and the index for
    /// lookups by subject and date (several when the rule is off).
    unique: HashMap<(u32, String, String, String), BTreeSet<u64>>,
    counts: BTreeMap<(u32, String, String), OpCounts>,
}

pub struct Emulated {
    pub registers: Vec<RegisterMetadata>,
    forms: HashMap<u32, FormInfo>,
    pub contexts: Vec<Context>,
    keys: HashMap<String, ApiKeyRights>,
    /// Metadata answers, serialised once.
    pub meta_register: HashMap<u32, Bytes>,
    pub meta_units: HashMap<u32, Bytes>,
    pub meta_questions: HashMap<u32, Bytes>,
    pub meta_domains: HashMap<u32, Bytes>,
    sessions: Mutex<HashMap<String, Session>>,
    data: Mutex<Data>,
    /// The 409 rule (one registration per form, unit, subject and date). Off, the emulator
    /// accepts duplicates like a register without the rule would, so a test can see them.
    unique_rule: AtomicBool,
}

pub fn envelope(data: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(&json!({"success": true, "data": data})).expect("json"))
}

impl Emulated {
    pub fn new(registers: Vec<RegisterMetadata>, keys: Vec<ApiKeyRights>) -> Emulated {
        let mut forms = HashMap::new();
        let mut contexts = vec![];
        let (mut meta_register, mut meta_units, mut meta_questions, mut meta_domains) = (HashMap::new(), HashMap::new(), HashMap::new(), HashMap::new());
        for (ri, r) in registers.iter().enumerate() {
            let rid = r.register.register_id;
            let form_list: Vec<Value> = r
                .forms
                .iter()
                .map(|f| json!({"FormID": f.form_id, "FormName": f.form_name, "FormTitle": f.form_title, "Occasion": f.occasion}))
                .collect();
            let mut reg = serde_json::to_value(&r.register).expect("json");
            reg["Forms"] = Value::Array(form_list);
            meta_register.insert(rid, envelope(&reg));
            meta_units.insert(rid, envelope(&serde_json::to_value(&r.units).expect("json")));
            for (fi, f) in r.forms.iter().enumerate() {
                meta_questions.insert(f.form_id, envelope(&serde_json::to_value(&f.questions).expect("json")));
                forms.insert(
                    f.form_id,
                    FormInfo { register: ri, form: fi, subject_col: r.subject_column(f).map(str::to_string), date_col: r.event_date_column(f).map(str::to_string) },
                );
            }
            // Domain ids are global in Stratum; the first register to define one wins.
            for d in &r.domains {
                meta_domains.entry(d.domain_id).or_insert_with(|| envelope(&serde_json::to_value(d).expect("json")));
            }
            for u in &r.units {
                contexts.push(Context { context_id: contexts.len() as u32 + 1, register_id: rid, unit: u.clone() });
            }
        }
        Emulated {
            registers,
            forms,
            contexts,
            keys: keys.into_iter().map(|k| (k.key.clone(), k)).collect(),
            meta_register,
            meta_units,
            meta_questions,
            meta_domains,
            sessions: Mutex::new(HashMap::new()),
            data: Mutex::new(Data { next_event_id: 1, ..Default::default() }),
            unique_rule: AtomicBool::new(true),
        }
    }

    /// Turn the 409 rule on or off (on by default).
    pub fn set_unique_rule(&self, on: bool) {
        self.unique_rule.store(on, Ordering::Relaxed);
    }

    fn enforce_unique(&self) -> bool {
        self.unique_rule.load(Ordering::Relaxed)
    }

    /// The API key's rights, or 401.
    pub fn authenticate(&self, key: Option<&str>) -> Result<&ApiKeyRights, ApiError> {
        key.and_then(|k| self.keys.get(k)).ok_or_else(|| err(401, "Unauthorized", "missing or wrong API key"))
    }

    fn allowed(rights: &ApiKeyRights, c: &Context) -> bool {
        rights.contexts.as_ref().map_or(true, |list| list.iter().any(|(r, u)| *r == c.register_id && *u == c.unit.unit_code))
    }

    pub fn contexts_json(&self, rights: &ApiKeyRights) -> Value {
        Value::Array(
            self.contexts
                .iter()
                .filter(|c| Self::allowed(rights, c))
                .map(|c| {
                    json!({
                        "ContextID": c.context_id,
                        "Unit": {"UnitID": c.unit.unit_id, "UnitCode": c.unit.unit_code, "UnitName": c.unit.unit_name, "Register": {"RegisterID": c.register_id}},
                        "Role": {"RoleName": "Registrerare"}
                    })
                })
                .collect(),
        )
    }

    /// Select a context for the session (creating the session when `session` is None or
    /// unknown). Returns the session id to set as cookie.
    pub fn select_context(&self, rights: &ApiKeyRights, session: Option<&str>, body: &[u8]) -> Result<String, ApiError> {
        let v: Value = serde_json::from_slice(body).map_err(|_| err(400, "BadRequest", "body must be {\"Context\":{\"ContextID\":N}}"))?;
        let id = v.get("Context").and_then(|c| c.get("ContextID")).and_then(Value::as_u64).ok_or_else(|| err(400, "BadRequest", "body must be {\"Context\":{\"ContextID\":N}}"))?;
        let ctx = self.contexts.iter().find(|c| c.context_id as u64 == id);
        match ctx {
            Some(c) if Self::allowed(rights, c) => {}
            _ => return Err(err(403, "Forbidden", format!("the API key has no right to context {id}"))),
        }
        let mut sessions = self.sessions.lock().expect("sessions");
        let sid = match session {
            Some(s) if sessions.get(s).is_some_and(|x| x.key == rights.key) => s.to_string(),
            _ => {
                use rand::Rng;
                let bytes: [u8; 16] = rand::thread_rng().gen();
                hex::encode(bytes)
            }
        };
        sessions.insert(sid.clone(), Session { key: rights.key.clone(), context: Some(id as u32) });
        Ok(sid)
    }

    /// The context the session selected, or 403 `NoContext`.
    pub fn session_context(&self, rights: &ApiKeyRights, session: Option<&str>) -> Result<&Context, ApiError> {
        let no_ctx = || err(403, "NoContext", "no unit context selected in this session (PUT /authentication/context first)");
        let sid = session.ok_or_else(no_ctx)?;
        let s = self.sessions.lock().expect("sessions").get(sid).cloned().ok_or_else(no_ctx)?;
        if s.key != rights.key {
            return Err(no_ctx());
        }
        let id = s.context.ok_or_else(no_ctx)?;
        let c = self.contexts.iter().find(|c| c.context_id == id).ok_or_else(no_ctx)?;
        if !Self::allowed(rights, c) {
            return Err(err(403, "Forbidden", format!("the API key has no right to context {id}")));
        }
        Ok(c)
    }

    fn form_in(&self, ctx: &Context, form_id: u32) -> Result<(&RegisterMetadata, &Form, &FormInfo), ApiError> {
        let info = self.forms.get(&form_id).ok_or_else(|| err(404, "UnknownForm", format!("form {form_id} does not exist")))?;
        let r = &self.registers[info.register];
        if r.register.register_id != ctx.register_id {
            return Err(err(404, "UnknownForm", format!("form {form_id} is not a form of register {}", ctx.register_id)));
        }
        Ok((r, &r.forms[info.form], info))
    }

    fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
        let v: Value = serde_json::from_slice(body).map_err(|_| err(400, "BadRequest", "body must be a JSON object of ColumnName: value"))?;
        let Value::Object(m) = v else { return Err(err(400, "BadRequest", "body must be a JSON object of ColumnName: value")) };
        if m.contains_key("UnitID") {
            return Err(err(400, "UnitIDNotAllowed", "column UnitID: the unit comes from the session context and may not be sent"));
        }
        Ok(m)
    }

    fn check(meta: &RegisterMetadata, form: &Form, cols: &Map<String, Value>, mode: Mode) -> Result<(), ApiError> {
        let problems = validate::validate(meta, form, cols, mode);
        match problems.first() {
            None => Ok(()),
            Some(first) => Err(err(400, first.rule.code(), validate::describe(&problems))),
        }
    }

    fn unique_key(info: &FormInfo, form_id: u32, unit: &str, cols: &Map<String, Value>) -> Option<(u32, String, String, String)> {
        let s = cols.get(info.subject_col.as_deref()?)?.as_str()?;
        let d = cols.get(info.date_col.as_deref()?)?.as_str()?;
        Some((form_id, unit.to_string(), s.to_string(), d.to_string()))
    }

    fn conflict(info: &FormInfo, form: &Form) -> ApiError {
        err(
            409,
            "Conflict",
            format!(
                "columns {}, {}: a registration of form {} for this subject and date already exists in this unit",
                info.subject_col.as_deref().unwrap_or(""),
                info.date_col.as_deref().unwrap_or(""),
                form.form_name
            ),
        )
    }

    pub fn create(&self, ctx: &Context, form_id: u32, body: &[u8]) -> Result<Value, ApiError> {
        let (meta, form, info) = self.form_in(ctx, form_id)?;
        let mut cols = Self::parse_body(body)?;
        Self::check(meta, form, &cols, Mode::Create)?;
        cols.retain(|_, v| !v.is_null());
        let unique = Self::unique_key(info, form_id, &ctx.unit.unit_code, &cols);
        let mut d = self.data.lock().expect("data");
        if self.enforce_unique() && unique.as_ref().is_some_and(|u| d.unique.get(u).is_some_and(|ids| !ids.is_empty())) {
            return Err(Self::conflict(info, form));
        }
        let id = d.next_event_id;
        d.next_event_id += 1;
        if let Some(u) = unique {
            d.unique.entry(u).or_default().insert(id);
        }
        d.by_form_unit.entry((form_id, ctx.unit.unit_code.clone())).or_default().insert(id);
        d.counts.entry((ctx.register_id, form.form_name.clone(), ctx.unit.unit_code.clone())).or_default().post += 1;
        let reg = EmulatedRegistration {
            event_id: id,
            register_id: ctx.register_id,
            form_id,
            form_name: form.form_name.clone(),
            unit_code: ctx.unit.unit_code.clone(),
            subject_key: info.subject_col.as_ref().and_then(|c| cols.get(c)).and_then(Value::as_str).map(str::to_string),
            event_date: info.date_col.as_ref().and_then(|c| cols.get(c)).and_then(Value::as_str).map(str::to_string),
            columns: cols,
        };
        d.regs.insert(id, reg);
        Ok(json!({"EventID": id}))
    }

    /// The registration `event_id` if it is visible in the context: 404 if it does not exist,
    /// 403 if it belongs to another unit or register.
    fn visible<'a>(d: &'a Data, ctx: &Context, event_id: u64) -> Result<&'a EmulatedRegistration, ApiError> {
        let r = d.regs.get(&event_id).ok_or_else(|| err(404, "NotFound", format!("registration {event_id} does not exist")))?;
        if r.register_id != ctx.register_id || r.unit_code != ctx.unit.unit_code {
            return Err(err(403, "Forbidden", format!("registration {event_id} belongs to another unit")));
        }
        Ok(r)
    }

    pub fn update(&self, ctx: &Context, form_id: u32, event_id: u64, body: &[u8]) -> Result<Value, ApiError> {
        let (meta, form, info) = self.form_in(ctx, form_id)?;
        let changes = Self::parse_body(body)?;
        Self::check(meta, form, &changes, Mode::Update)?;
        let mut d = self.data.lock().expect("data");
        let current = Self::visible(&d, ctx, event_id)?;
        if current.form_id != form_id {
            return Err(err(404, "NotFound", format!("registration {event_id} is not a registration of form {form_id}")));
        }
        let mut cols = current.columns.clone();
        for (k, v) in changes {
            if v.is_null() {
                cols.remove(&k);
            } else {
                cols.insert(k, v);
            }
        }
        let old_unique = Self::unique_key(info, form_id, &ctx.unit.unit_code, &current.columns);
        let new_unique = Self::unique_key(info, form_id, &ctx.unit.unit_code, &cols);
        if new_unique != old_unique {
            if let Some(u) = &new_unique {
                if self.enforce_unique() && d.unique.get(u).is_some_and(|ids| ids.iter().any(|other| *other != event_id)) {
                    return Err(Self::conflict(info, form));
                }
            }
            if let Some(u) = &old_unique {
                Self::unindex(&mut d, u, event_id);
            }
            if let Some(u) = new_unique {
                d.unique.entry(u).or_default().insert(event_id);
            }
        }
        d.counts.entry((ctx.register_id, form.form_name.clone(), ctx.unit.unit_code.clone())).or_default().put += 1;
        let unit_id = ctx.unit.unit_id;
        let r = d.regs.get_mut(&event_id).expect("checked above");
        r.subject_key = info.subject_col.as_ref().and_then(|c| cols.get(c)).and_then(Value::as_str).map(str::to_string);
        r.event_date = info.date_col.as_ref().and_then(|c| cols.get(c)).and_then(Value::as_str).map(str::to_string);
        r.columns = cols;
        Ok(r.to_json(unit_id))
    }

    pub fn delete(&self, ctx: &Context, event_id: u64) -> Result<(), ApiError> {
        let mut d = self.data.lock().expect("data");
        let r = Self::visible(&d, ctx, event_id)?.clone();
        let info = &self.forms[&r.form_id];
        if let Some(u) = Self::unique_key(info, r.form_id, &r.unit_code, &r.columns) {
            Self::unindex(&mut d, &u, event_id);
        }
        if let Some(set) = d.by_form_unit.get_mut(&(r.form_id, r.unit_code.clone())) {
            set.remove(&event_id);
        }
        d.regs.remove(&event_id);
        d.counts.entry((r.register_id, r.form_name.clone(), r.unit_code.clone())).or_default().delete += 1;
        Ok(())
    }

    /// `query=Col eq value[,Col2 eq v2]` within the context's unit.
    pub fn query(&self, ctx: &Context, form_id: u32, query: Option<&str>) -> Result<Value, ApiError> {
        let (_, form, info) = self.form_in(ctx, form_id)?;
        let mut conds: Vec<(&str, &str)> = vec![];
        if let Some(q) = query.filter(|q| !q.trim().is_empty()) {
            for part in q.split(',') {
                let (c, v) = part.split_once(" eq ").ok_or_else(|| err(400, "BadQuery", "query must be Col eq value[,Col2 eq value2]"))?;
                let c = c.trim();
                if form.question(c).is_none() {
                    return Err(err(400, "UnknownColumn", format!("column {c}: not a column of form {}", form.form_name)));
                }
                conds.push((c, v.trim()));
            }
        }
        let matches = |r: &EmulatedRegistration| conds.iter().all(|(c, v)| r.columns.get(*c).and_then(validate::query_literal).as_deref() == Some(*v));
        let d = self.data.lock().expect("data");
        let unit = &ctx.unit.unit_code;
        // SubjectKey + EventDate: one index probe instead of a scan of the unit's registrations.
        let subject = info.subject_col.as_deref().and_then(|c| conds.iter().find(|(k, _)| *k == c)).map(|(_, v)| *v);
        let date = info.date_col.as_deref().and_then(|c| conds.iter().find(|(k, _)| *k == c)).map(|(_, v)| *v);
        let ids: Vec<u64> = match (subject, date) {
            (Some(s), Some(dt)) => d.unique.get(&(form_id, unit.clone(), s.to_string(), dt.to_string())).map(|ids| ids.iter().copied().collect()).unwrap_or_default(),
            _ => d.by_form_unit.get(&(form_id, unit.clone())).map(|s| s.iter().copied().collect()).unwrap_or_default(),
        };
        let out: Vec<Value> = ids.iter().filter_map(|id| d.regs.get(id)).filter(|r| matches(r)).map(|r| r.to_json(ctx.unit.unit_id)).collect();
        Ok(Value::Array(out))
    }

    fn unindex(d: &mut Data, key: &(u32, String, String, String), event_id: u64) {
        if let Some(ids) = d.unique.get_mut(key) {
            ids.remove(&event_id);
            if ids.is_empty() {
                d.unique.remove(key);
            }
        }
    }

    pub fn counts(&self) -> BTreeMap<(u32, String, String), OpCounts> {
        self.data.lock().expect("data").counts.clone()
    }

    pub fn registrations(&self, register_id: u32, form: &str) -> Vec<EmulatedRegistration> {
        let d = self.data.lock().expect("data");
        let mut v: Vec<_> = d.regs.values().filter(|r| r.register_id == register_id && r.form_name == form).cloned().collect();
        v.sort_by_key(|r| r.event_id);
        v
    }

    /// Remove a registration outside the API, as a register user would by hand. Not counted
    /// among the API's writes. False if there is no such registration.
    pub fn remove_by_hand(&self, event_id: u64) -> bool {
        let mut d = self.data.lock().expect("data");
        let Some(r) = d.regs.remove(&event_id) else { return false };
        if let Some(u) = Self::unique_key(&self.forms[&r.form_id], r.form_id, &r.unit_code, &r.columns) {
            Self::unindex(&mut d, &u, event_id);
        }
        if let Some(set) = d.by_form_unit.get_mut(&(r.form_id, r.unit_code.clone())) {
            set.remove(&event_id);
        }
        true
    }

    /// Forget every session, as a register restart or session timeout would.
    pub fn expire_sessions(&self) {
        self.sessions.lock().expect("sessions").clear();
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().expect("sessions").len()
    }
}
