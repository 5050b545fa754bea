//! The Swedish web pages: server-rendered (askama templates in `templates/`), plain HTML forms,
//! no scripts. Every state-changing form carries the session's CSRF token. Patient identities
//! appear only after a patient-data user has stated a reason, and that view is recorded first.

use super::api::{self, nz, scrub, scrub_opt, PatientListQuery, RecordsQuery};
use super::auth::{self, Principal};
use super::store::{self as db, Role};
use super::{AdminState, Fail, PageError};
use crate::audit::{correlation_id, kind, AuditEvent, NewAuditEvent};
use crate::store::{OutboxRecord, RecordState};
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Form};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

type PageResult = Result<Response, PageError>;

// ---------------------------------------------------------------------------------------------
// Layout and small helpers

pub struct Nav {
    pub href: &'static str,
    pub label: &'static str,
    pub active: bool,
}

pub struct Layout {
    pub title: String,
    pub user: String,
    pub role: &'static str,
    pub patient_data: bool,
    pub csrf: String,
    pub nav: Vec<Nav>,
    pub flash: Option<String>,
    pub warnings: Vec<String>,
    pub version: &'static str,
}

const MENU: &[(&str, &str, Role)] = &[
    ("/", "Översikt", Role::Reader),
    ("/overforingar", "Överföringar", Role::Reader),
    ("/misslyckade", "Misslyckade", Role::Reader),
    ("/att-komplettera", "Att komplettera", Role::Reader),
    ("/tackningsgrad", "Täckningsgrad", Role::Reader),
    ("/artrosregistret/indikatorer", "Artrosregistrets indikatorer", Role::Reader),
    ("/pvk", "PVK-indikatorer", Role::Reader),
    ("/karantan", "Karantän", Role::Reader),
    ("/granskningslogg", "Granskningslogg", Role::Reader),
    ("/anvandare", "Användare", Role::Admin),
    ("/installningar", "Inställningar", Role::Admin),
];

fn layout(p: &Principal, active: &str, title: &str, flash: Option<String>) -> Layout {
    Layout {
        title: title.to_string(),
        user: p.username.clone(),
        role: p.role.as_str(),
        patient_data: p.patient_data,
        csrf: p.csrf_value(),
        nav: MENU.iter().filter(|(_, _, r)| p.can(*r)).map(|(href, label, _)| Nav { href, label, active: *href == active }).collect(),
        flash,
        warnings: vec![],
        version: env!("CARGO_PKG_VERSION"),
    }
}

fn render(t: impl Template) -> PageResult {
    let body = t.render().map_err(|e| Fail::Internal(anyhow::anyhow!("template: {e}")))?;
    Ok(Html(body).into_response())
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// Time in Swedish local time.
pub fn t(dt: DateTime<Utc>) -> String {
    dt.with_timezone(&chrono_tz::Europe::Stockholm).format("%Y-%m-%d %H:%M").to_string()
}

fn t_opt(dt: Option<DateTime<Utc>>) -> String {
    dt.map(t).unwrap_or_else(|| "–".into())
}

fn s_opt(s: Option<String>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or_else(|| "–".into())
}

fn pct(n: i64, d: i64) -> String {
    if d == 0 {
        return "–".into();
    }
    format!("{:.1} %", 100.0 * n as f64 / d as f64).replace('.', ",")
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Bool(true) => "ja".into(),
        Value::Bool(false) => "nej".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn qs(pairs: &[(&str, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            s.append_pair(k, v);
        }
    }
    s.finish()
}

/// Fixed messages after a redirect (never echoing request text into the page).
fn flash(code: &Option<String>) -> Option<String> {
    Some(
        match code.as_deref()? {
            "koad" => "Överföringen är köad för ett nytt försök.",
            "ej-koad" => "Överföringen kunde inte köas om: den är inte längre misslyckad, eller en nyare version finns.",
            "aterkallad" => "Återkallelsen är köad och skickas till registret.",
            "lost" => "Karantänposten är markerad som löst.",
            "sparad" => "Användaren är sparad.",
            "nyckel-aterkallad" => "API-nyckeln är återkallad.",
            _ => return None,
        }
        .to_string(),
    )
}

#[derive(Deserialize, Default)]
pub struct MsgQuery {
    pub meddelande: Option<String>,
}

pub fn state_label(s: RecordState) -> &'static str {
    s.label_sv()
}

fn run_status_sv(s: &str) -> (&'static str, &'static str) {
    match s {
        "running" => ("pågår", "st-sending"),
        "ok" | "succeeded" | "success" | "completed" | "done" => ("klar", "st-delivered"),
        "failed" | "error" => ("misslyckades", "st-dead"),
        "partial" => ("delvis klar", "st-pending"),
        "skipped" => ("hoppades över", ""),
        _ => ("okänd", ""),
    }
}

pub fn audit_label(kind_: &str) -> &'static str {
    match kind_ {
        kind::RUN_STARTED => "Körning startad",
        kind::RUN_ENDED => "Körning avslutad",
        kind::DOCUMENT_FETCHED => "Dokument hämtat",
        kind::DOCUMENTS_FETCHED => "Dokument hämtade",
        kind::SOURCE_ERROR => "Fel i källan",
        kind::RECORD_CREATED => "Post skapad",
        kind::RECORD_UPDATED => "Post ändrad",
        kind::RECORD_RETRACTED => "Post återkallad",
        kind::ATTEMPT_SENT => "Försök skickat",
        kind::RECORD_DELIVERED => "Levererad",
        kind::RECORD_REJECTED => "Avvisad av registret",
        kind::RECORD_DEAD => "Misslyckad, försöken slut",
        kind::LEASE_RESCUED => "Lås återtaget",
        kind::QUARANTINED => "Satt i karantän",
        kind::QUARANTINE_RESOLVED => "Karantän löst",
        kind::REPLAY => "Nytt försök begärt",
        kind::RETRACT_MANUAL => "Manuell återkallelse",
        kind::WITHDRAWAL_HOLD => "Spärrad tills en person häver den",
        kind::WITHDRAWAL_LIFTED => "Spärr hävd",
        kind::RECORD_HELD => "Ny version spärrad, inte skickad",
        kind::OPT_OUT => "Patienten avböjer registrering",
        kind::NULLIFIED => "Dokument makulerat",
        kind::WORKLIST_ADDED => "Till att komplettera",
        kind::WORKLIST_RESOLVED => "Kompletterad",
        kind::CONFIG_LOADED => "Konfiguration läst",
        kind::CONFIG_RELOAD => "Konfiguration omläst",
        kind::LOGIN => "Inloggning",
        kind::LOGIN_FAILED => "Misslyckad inloggning",
        kind::LOGOUT => "Utloggning",
        kind::USER_CHANGED => "Användare ändrad",
        kind::PATIENT_DATA_VIEW => "Visning av patientuppgifter",
        kind::AUDIT_PRUNED => "Logg gallrad",
        kind::TICK_FIRED => "Schemalagd körning",
        kind::METADATA_LOADED => "Registrets metadata läst",
        kind::CIRCUIT_OPEN => "Registret pausat (brytare)",
        kind::CIRCUIT_CLOSED => "Registret återupptaget",
        kind::EXPORT_WRITTEN => "Exportfil skriven",
        kind::PVK_COMPUTED => "PVK beräknad",
        kind::BACKFILL => "Omläsning",
        _ => "Händelse",
    }
}

const AUDIT_KINDS: &[&str] = &[
    kind::LOGIN,
    kind::LOGIN_FAILED,
    kind::LOGOUT,
    kind::PATIENT_DATA_VIEW,
    kind::REPLAY,
    kind::RETRACT_MANUAL,
    "withdrawal.",
    kind::USER_CHANGED,
    "record.",
    kind::ATTEMPT_SENT,
    "run.",
    "quarantine.",
    "worklist.",
    kind::LEASE_RESCUED,
    kind::TICK_FIRED,
    kind::OPT_OUT,
    kind::NULLIFIED,
    "config.",
    "circuit.",
    kind::PVK_COMPUTED,
    kind::EXPORT_WRITTEN,
    kind::BACKFILL,
    kind::AUDIT_PRUNED,
];

fn kind_options() -> Vec<(String, String)> {
    AUDIT_KINDS
        .iter()
        .map(|k| {
            let label = match *k {
                "record." => "Poster (alla)",
                "run." => "Körningar (alla)",
                "quarantine." => "Karantän (alla)",
                "worklist." => "Att komplettera (alla)",
                "config." => "Konfiguration (alla)",
                "circuit." => "Brytare (alla)",
                "withdrawal." => "Spärrar (alla)",
                other => audit_label(other),
            };
            (k.to_string(), label.to_string())
        })
        .collect()
}

pub struct EventView {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub label: &'static str,
    pub kind: String,
    pub subject: String,
    pub detail: String,
}

fn event_view(e: &AuditEvent) -> EventView {
    let mut detail = e.detail.to_string();
    if detail == "{}" || detail == "null" {
        detail = String::new();
    }
    if detail.chars().count() > 400 {
        detail = detail.chars().take(400).collect::<String>() + "…";
    }
    EventView { seq: e.seq, at: t(e.at), actor: e.actor.clone(), label: audit_label(&e.kind), kind: e.kind.clone(), subject: e.subject.clone(), detail }
}

// ---------------------------------------------------------------------------------------------
// Stand-alone pages: sign-in, "sign-in required", errors

#[derive(Template)]
#[template(path = "login.html")]
struct LoginTpl<'a> {
    next: Option<&'a str>,
    error: Option<&'a str>,
    username: &'a str,
    login_csrf: &'a str,
}

pub fn login_page(next: Option<&str>, error: Option<&str>, username: &str, login_csrf: &str) -> String {
    LoginTpl { next, error, username, login_csrf }.render().unwrap_or_else(|_| "Inloggning".into())
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessageTpl<'a> {
    title: &'a str,
    message: &'a str,
    link: &'a str,
    link_text: &'a str,
    refresh: Option<&'a str>,
}

pub fn login_required_page(target: &str) -> String {
    MessageTpl { title: "Inloggning krävs", message: "Du behöver logga in för att se den här sidan.", link: target, link_text: "Till inloggningen", refresh: Some(target) }
        .render()
        .unwrap_or_else(|_| "Inloggning krävs".into())
}

pub fn error_page(title: &str, message: &str) -> String {
    MessageTpl { title, message, link: "/", link_text: "Till översikten", refresh: None }.render().unwrap_or_else(|_| title.to_string())
}

// ---------------------------------------------------------------------------------------------
// Översikt

struct OverviewRow {
    connector: String,
    register: String,
    last_run: String,
    last_status: String,
    last_status_class: String,
    next_run: String,
    delivered_today: i64,
    failed_today: i64,
}

struct Chart {
    title: String,
    svg: String,
    total_ok: i64,
    total_bad: i64,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewTpl {
    l: Layout,
    rows: Vec<OverviewRow>,
    charts: Vec<Chart>,
    queue_depth: i64,
    dead_letters: i64,
    quarantine_open: i64,
    worklist: i64,
}

/// Stacked bars per day (delivered green, failed red), inline SVG with a tooltip per day.
pub fn day_chart(days: &[(String, i64, i64)]) -> String {
    let max = days.iter().map(|d| d.1 + d.2).max().unwrap_or(0).max(1);
    let (bw, gap, h, left) = (11.0_f64, 3.0_f64, 90.0_f64, 28.0_f64);
    let w = left + days.len() as f64 * (bw + gap);
    let total_h = h + 18.0;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{total_h:.0}" viewBox="0 0 {w:.0} {total_h:.0}" role="img" aria-label="Levererade och misslyckade per dygn"><text x="0" y="9" font-size="10" fill="#5b6b7a">{max}</text><text x="0" y="{h:.0}" font-size="10" fill="#5b6b7a">0</text><line x1="{left}" y1="{h}" x2="{w:.0}" y2="{h}" stroke="#b9c3cc"/>"##
    );
    for (i, (day, ok, bad)) in days.iter().enumerate() {
        let x = left + i as f64 * (bw + gap);
        let ok_h = h * *ok as f64 / max as f64;
        let bad_h = h * *bad as f64 / max as f64;
        s.push_str(&format!(
            r##"<g><title>{day}: {ok} levererade, {bad} misslyckade</title><rect x="{x:.1}" y="0" width="{bw}" height="{h}" fill="transparent"/><rect x="{x:.1}" y="{:.1}" width="{bw}" height="{ok_h:.1}" fill="#2e7d32"/><rect x="{x:.1}" y="{:.1}" width="{bw}" height="{bad_h:.1}" fill="#c62828"/></g>"##,
            h - ok_h,
            h - ok_h - bad_h
        ));
    }
    if let (Some(first), Some(last)) = (days.first(), days.last()) {
        s.push_str(&format!(r##"<text x="{left}" y="{:.0}" font-size="10" fill="#5b6b7a">{}</text>"##, h + 14.0, first.0.get(5..).unwrap_or(&first.0)));
        s.push_str(&format!(r##"<text x="{w:.0}" y="{:.0}" font-size="10" fill="#5b6b7a" text-anchor="end">{}</text>"##, h + 14.0, last.0.get(5..).unwrap_or(&last.0)));
    }
    s.push_str("</svg>");
    s
}

pub async fn overview(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(m): Query<MsgQuery>) -> PageResult {
    let o = api::overview_data(&state).await?;
    let rows = o
        .connectors
        .iter()
        .map(|c| {
            let (status, class) = c.last_run.as_ref().map(|r| run_status_sv(&r.status)).unwrap_or(("", ""));
            OverviewRow {
                connector: c.connector.clone(),
                register: c.register.clone(),
                last_run: c.last_run.as_ref().map(|r| t(r.started)).unwrap_or_else(|| "–".into()),
                last_status: status.into(),
                last_status_class: class.into(),
                next_run: t_opt(c.next_run),
                delivered_today: c.delivered_today,
                failed_today: c.failed_today,
            }
        })
        .collect();
    // 30 days ending today (UTC days, as the store counts them), zeros filled in.
    let today = Utc::now().date_naive();
    let days: Vec<String> = (0..30).rev().map(|d| (today - chrono::Duration::days(d)).format("%Y-%m-%d").to_string()).collect();
    let mut per_register: BTreeMap<String, BTreeMap<String, (i64, i64)>> = BTreeMap::new();
    for d in &o.days {
        let e = per_register.entry(d.register.clone()).or_default().entry(d.day.clone()).or_default();
        e.0 += d.delivered;
        e.1 += d.failed;
    }
    let charts = per_register
        .into_iter()
        .map(|(register, m)| {
            let series: Vec<(String, i64, i64)> = days.iter().map(|d| (d.clone(), m.get(d).map(|x| x.0).unwrap_or(0), m.get(d).map(|x| x.1).unwrap_or(0))).collect();
            Chart { title: format!("Register {register}"), total_ok: series.iter().map(|x| x.1).sum(), total_bad: series.iter().map(|x| x.2).sum(), svg: day_chart(&series) }
        })
        .collect();
    let mut l = layout(&p, "/", "Översikt", flash(&m.meddelande));
    l.warnings = (state.warnings)().into_iter().map(|w| w.text).collect();
    render(OverviewTpl { l, rows, charts, queue_depth: o.queue_depth, dead_letters: o.dead_letters, quarantine_open: o.quarantine_open, worklist: o.worklist })
}

// ---------------------------------------------------------------------------------------------
// Överföringar

struct RowView {
    id: i64,
    key: String,
    register: String,
    connector: String,
    unit: String,
    form: String,
    version: i64,
    state: &'static str,
    state_label: &'static str,
    reason: String,
    attempts: i64,
    updated: String,
}

fn row_view(r: db::TransferRow) -> RowView {
    let reason = match r.state {
        RecordState::Rejected => r.reason.clone().or(r.last_error.clone()),
        _ => r.last_error.clone().or(r.reason.clone()),
    };
    RowView {
        id: r.id,
        key: r.idem_key,
        register: r.register,
        connector: r.connector,
        unit: r.unit,
        form: r.form,
        version: r.version,
        state: r.state.as_str(),
        state_label: state_label(r.state),
        reason: s_opt(scrub_opt(&reason)),
        attempts: r.attempts,
        updated: t(r.updated),
    }
}

struct FilterView {
    q: String,
    connector: String,
    register: String,
    unit: String,
    form: String,
    state: String,
    from: String,
    to: String,
    all_versions: bool,
}

#[derive(Template)]
#[template(path = "transfers.html")]
struct TransfersTpl {
    l: Layout,
    f: FilterView,
    connectors: Vec<String>,
    registers: Vec<String>,
    units: Vec<String>,
    forms: Vec<String>,
    states: Vec<(String, String)>,
    rows: Vec<RowView>,
    total: i64,
    first: i64,
    last: i64,
    prev: Option<String>,
    next: Option<String>,
}

pub async fn transfers(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<RecordsQuery>) -> PageResult {
    const PER_PAGE: i64 = 50;
    let mut q = q;
    q.limit = Some(PER_PAGE);
    q.offset = None;
    let tq = q.to_query(PER_PAGE)?;
    let (rows, total) = db::transfers(&state.app.store, &tq).await?;
    let (connectors, registers, units, forms) = db::transfer_facets(&state.app.store).await?;
    let f = FilterView {
        q: nz(&q.q).unwrap_or_default(),
        connector: nz(&q.connector).unwrap_or_default(),
        register: nz(&q.register).unwrap_or_default(),
        unit: nz(&q.unit).unwrap_or_default(),
        form: nz(&q.form).unwrap_or_default(),
        state: nz(&q.state).unwrap_or_default(),
        from: nz(&q.from).unwrap_or_default(),
        to: nz(&q.to).unwrap_or_default(),
        all_versions: !tq.latest_only,
    };
    let page = tq.offset / PER_PAGE + 1;
    let link = |page: i64| {
        format!(
            "/overforingar?{}",
            qs(&[
                ("q", f.q.clone()),
                ("connector", f.connector.clone()),
                ("register", f.register.clone()),
                ("unit", f.unit.clone()),
                ("form", f.form.clone()),
                ("state", f.state.clone()),
                ("from", f.from.clone()),
                ("to", f.to.clone()),
                ("all_versions", if f.all_versions { "true".into() } else { String::new() }),
                ("page", page.to_string()),
            ])
        )
    };
    let prev = (page > 1).then(|| link(page - 1));
    let next = (tq.offset + PER_PAGE < total).then(|| link(page + 1));
    let mut states: Vec<(String, String)> = RecordState::ALL.iter().map(|s| (s.as_str().to_string(), s.label_sv().to_string())).collect();
    states.insert(0, ("pending,sending".into(), "i kö (väntar eller skickas)".into()));
    states.insert(1, ("rejected,dead".into(), "misslyckade (avvisade eller döda)".into()));
    let n = rows.len() as i64;
    render(TransfersTpl {
        l: layout(&p, "/overforingar", "Överföringar", None),
        f,
        connectors,
        registers,
        units,
        forms,
        states,
        rows: rows.into_iter().map(row_view).collect(),
        total,
        first: if n == 0 { 0 } else { tq.offset + 1 },
        last: tq.offset + n,
        prev,
        next,
    })
}

// ---------------------------------------------------------------------------------------------
// One transfer's history

struct RecView {
    id: i64,
    key: String,
    state: &'static str,
    state_label: &'static str,
    register: String,
    connector: String,
    unit: String,
    form: String,
    subject: String,
    version: i64,
    op: &'static str,
    attempts: i64,
    reason: String,
    created: String,
    updated: String,
    delivered: String,
}

fn rec_view(r: &OutboxRecord) -> RecView {
    let reason = match r.state {
        RecordState::Rejected => r.reason.clone().or(r.last_error.clone()),
        _ => r.last_error.clone().or(r.reason.clone()),
    };
    RecView {
        id: r.id,
        key: r.idem_key.clone(),
        state: r.state.as_str(),
        state_label: state_label(r.state),
        register: r.register.clone(),
        connector: r.connector.clone(),
        unit: r.unit.clone(),
        form: r.form.clone(),
        subject: s_opt(r.subject.clone()),
        version: r.version,
        op: match r.op {
            crate::store::Op::Upsert => "skapa/ändra",
            crate::store::Op::Retract => "återkalla",
        },
        attempts: r.attempts,
        reason: s_opt(scrub_opt(&reason)),
        created: t(r.created),
        updated: t(r.updated),
        delivered: t_opt(r.delivered),
    }
}

struct AttemptView {
    started: String,
    ended: String,
    record_id: i64,
    operation: String,
    outcome: String,
    http_status: String,
    detail: String,
    register_ref: String,
    owner: String,
}

struct RegView {
    state: String,
    event_id: String,
    hash: String,
}

#[derive(Template)]
#[template(path = "transfer.html")]
struct TransferTpl {
    l: Layout,
    rec: RecView,
    versions: Vec<RecView>,
    attempts: Vec<AttemptView>,
    events: Vec<EventView>,
    registration: Option<RegView>,
    columns: Vec<String>,
    /// (column, this version's value, the register's value) — only after a recorded reason.
    payload: Option<Vec<(String, String, String)>>,
    can_operate: bool,
    can_replay: bool,
    can_retract: bool,
}

fn outcome_sv(o: &str) -> String {
    match o {
        "ok" => "lyckades",
        "transient" => "tillfälligt fel",
        "rejected" => "avvisad",
        "dead" => "gav upp",
        "in_flight" => "pågår",
        "unknown" => "okänt utfall",
        "settled" => "utrett",
        other => other,
    }
    .to_string()
}

async fn transfer_page(state: &AdminState, p: &Principal, id: i64, msg: Option<String>, reveal: Option<String>) -> PageResult {
    let (h, payload, held) = api::history(&state.app.store, id).await?;
    let payload_rows = match reveal {
        Some(why) => {
            api::record_patient_view(state, p, "record_payload", &h.record.idem_key, &why, 1, &h.record.subject.clone().into_iter().collect::<Vec<_>>()).await?;
            let mut cols: Vec<String> = payload.as_ref().map(|m| m.keys().cloned().collect()).unwrap_or_default();
            for k in held.as_ref().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                if !cols.contains(&k) {
                    cols.push(k);
                }
            }
            let get = |m: &Option<serde_json::Map<String, Value>>, k: &str| m.as_ref().and_then(|m| m.get(k)).map(value_text).unwrap_or_else(|| "–".into());
            Some(cols.iter().map(|c| (c.clone(), get(&payload, c), get(&held, c))).collect())
        }
        None => None,
    };
    let latest = h.versions.last().map(|v| v.id) == Some(h.record.id);
    let failed = matches!(h.record.state, RecordState::Rejected | RecordState::Dead);
    let can_retract = latest && h.record.op == crate::store::Op::Upsert && !matches!(h.record.state, RecordState::Superseded);
    render(TransferTpl {
        l: layout(p, "/overforingar", &format!("Överföring {}", h.record.id), flash(&msg)),
        rec: rec_view(&h.record),
        versions: h.versions.iter().map(rec_view).collect(),
        attempts: h
            .attempts
            .iter()
            .map(|a| AttemptView {
                started: t(a.started),
                ended: t_opt(a.ended),
                record_id: a.record_id,
                operation: a.operation.clone(),
                outcome: outcome_sv(&a.outcome),
                http_status: a.http_status.map(|s| s.to_string()).unwrap_or_else(|| "–".into()),
                detail: s_opt(a.detail.clone()),
                register_ref: s_opt(a.register_ref.clone()),
                owner: a.owner.clone(),
            })
            .collect(),
        events: h.audit.iter().map(event_view).collect(),
        registration: h.registration.as_ref().map(|r| RegView {
            state: match r.state.as_str() {
                "present" => "registret har registreringen".into(),
                "absent" => "inte i registret".into(),
                "retracted" => "borttagen ur registret".into(),
                other => other.to_string(),
            },
            event_id: s_opt(r.event_id.clone()),
            hash: s_opt(r.delivered_hash.clone()),
        }),
        columns: h.columns.clone(),
        payload: payload_rows,
        can_operate: p.can(Role::Operator),
        can_replay: latest && failed,
        can_retract,
    })
}

pub async fn transfer(State(state): State<AdminState>, Extension(p): Extension<Principal>, Path(id): Path<i64>, Query(m): Query<MsgQuery>) -> PageResult {
    transfer_page(&state, &p, id, m.meddelande, None).await
}

#[derive(Deserialize)]
pub struct ReasonForm {
    pub csrf: Option<String>,
    pub reason: Option<String>,
}

pub async fn transfer_with_payload(State(state): State<AdminState>, Extension(p): Extension<Principal>, Path(id): Path<i64>, Form(f): Form<ReasonForm>) -> PageResult {
    p.check_csrf(f.csrf.as_deref())?;
    if !p.patient_data {
        return Err(Fail::Forbidden.into());
    }
    let why = api::reason(&f.reason)?;
    transfer_page(&state, &p, id, None, Some(why)).await
}

pub async fn retract(State(state): State<AdminState>, Extension(p): Extension<Principal>, Path(id): Path<i64>, Form(f): Form<ReasonForm>) -> PageResult {
    p.require(Role::Operator)?;
    p.check_csrf(f.csrf.as_deref())?;
    let why = api::reason(&f.reason)?;
    let key = api::do_retract(&state, &p, id, &why).await?;
    let latest = state.app.store.record_versions(&key).await?.last().map(|r| r.id).unwrap_or(id);
    Ok(see_other(&format!("/overforingar/{latest}?meddelande=aterkallad")))
}

// ---------------------------------------------------------------------------------------------
// Misslyckade

#[derive(Template)]
#[template(path = "failed.html")]
struct FailedTpl {
    l: Layout,
    rows: Vec<RowView>,
    total: i64,
    shown: i64,
    can_operate: bool,
    connectors: Vec<String>,
    registers: Vec<String>,
    connector: String,
    register: String,
}

#[derive(Deserialize)]
pub struct FailedQuery {
    pub connector: Option<String>,
    pub register: Option<String>,
    pub meddelande: Option<String>,
}

pub async fn failed(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<FailedQuery>) -> PageResult {
    let tq = db::TransferQuery {
        connector: nz(&q.connector),
        register: nz(&q.register),
        states: vec![RecordState::Rejected, RecordState::Dead],
        latest_only: true,
        limit: 500,
        ..Default::default()
    };
    let (rows, total) = db::transfers(&state.app.store, &tq).await?;
    let (connectors, registers, _, _) = db::transfer_facets(&state.app.store).await?;
    render(FailedTpl {
        l: layout(&p, "/misslyckade", "Misslyckade överföringar", flash(&q.meddelande)),
        shown: rows.len() as i64,
        rows: rows.into_iter().map(row_view).collect(),
        total,
        can_operate: p.can(Role::Operator),
        connectors,
        registers,
        connector: nz(&q.connector).unwrap_or_default(),
        register: nz(&q.register).unwrap_or_default(),
    })
}

#[derive(Deserialize)]
pub struct ReplayForm {
    pub csrf: Option<String>,
    pub id: i64,
    pub reason: Option<String>,
}

pub async fn replay(State(state): State<AdminState>, Extension(p): Extension<Principal>, Form(f): Form<ReplayForm>) -> PageResult {
    p.require(Role::Operator)?;
    p.check_csrf(f.csrf.as_deref())?;
    let why = api::reason(&f.reason)?;
    let done = state.app.store.replay(&[f.id], &p.username, &why).await?;
    if done.contains(&f.id) {
        Ok(see_other(&format!("/overforingar/{}?meddelande=koad", f.id)))
    } else {
        Ok(see_other("/misslyckade?meddelande=ej-koad"))
    }
}

// ---------------------------------------------------------------------------------------------
// Att komplettera

struct WorkItemView {
    patient: String,
    form: String,
    missing: String,
    event_date: String,
    since: String,
    connector: String,
}

struct WorkGroup {
    unit: String,
    items: Vec<WorkItemView>,
}

#[derive(Template)]
#[template(path = "worklist.html")]
struct WorklistTpl {
    l: Layout,
    groups: Vec<WorkGroup>,
    units: Vec<String>,
    unit: String,
    showing_identities: bool,
}

#[derive(Deserialize)]
pub struct WorklistPageQuery {
    pub unit: Option<String>,
}

async fn worklist_page(state: &AdminState, p: &Principal, unit: Option<String>, why: Option<String>) -> PageResult {
    let all_units = db::distinct_units(&state.app.store, "worklist").await?;
    let showing = why.is_some();
    let entries = api::worklist_entries(state, p, None, unit.clone(), why).await?;
    let mut groups: BTreeMap<String, Vec<WorkItemView>> = BTreeMap::new();
    for e in entries {
        groups.entry(e.unit.clone()).or_default().push(WorkItemView {
            patient: e.patient.clone().unwrap_or_else(|| e.patient_key.clone()),
            form: e.form,
            missing: if e.document.is_empty() {
                "–".into()
            } else {
                // What to document where: the journal keyword (name and code), then the column.
                e.document
                    .iter()
                    .map(|d| match (&d.term, &d.name) {
                        (Some(t), Some(n)) => format!("sökord {n} ({t}) → {}", d.column),
                        (Some(t), None) => format!("sökord {t} → {}", d.column),
                        (None, _) if d.waits_for => format!("första besöket först: {}", d.column),
                        (None, _) => d.column.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            event_date: s_opt(e.event_date),
            since: t(e.since),
            connector: e.connector,
        });
    }
    render(WorklistTpl {
        l: layout(p, "/att-komplettera", "Att komplettera", None),
        groups: groups.into_iter().map(|(unit, items)| WorkGroup { unit, items }).collect(),
        units: all_units,
        unit: unit.unwrap_or_default(),
        showing_identities: showing,
    })
}

pub async fn worklist(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<WorklistPageQuery>) -> PageResult {
    worklist_page(&state, &p, nz(&q.unit), None).await
}

#[derive(Deserialize)]
pub struct WorklistForm {
    pub csrf: Option<String>,
    pub unit: Option<String>,
    pub reason: Option<String>,
}

pub async fn worklist_identities(State(state): State<AdminState>, Extension(p): Extension<Principal>, Form(f): Form<WorklistForm>) -> PageResult {
    p.check_csrf(f.csrf.as_deref())?;
    if !p.patient_data {
        return Err(Fail::Forbidden.into());
    }
    let why = api::reason(&f.reason)?;
    worklist_page(&state, &p, nz(&f.unit), Some(why)).await
}

// ---------------------------------------------------------------------------------------------
// Täckningsgrad

struct CovRow {
    month: String,
    form: String,
    due: i64,
    present: i64,
    percent: String,
    width: String,
}

struct CovUnit {
    unit: String,
    due: i64,
    present: i64,
    percent: String,
    rows: Vec<CovRow>,
}

#[derive(Template)]
#[template(path = "coverage.html")]
struct CoverageTpl {
    l: Layout,
    units: Vec<CovUnit>,
    /// Data quality: (unit, artros diagnoses that classify no joint).
    unmatched: Vec<(String, usize)>,
}

pub async fn coverage(State(state): State<AdminState>, Extension(p): Extension<Principal>) -> PageResult {
    let rows = api::coverage(&state.app.store).await?;
    let several = rows.iter().map(|r| &r.connector).collect::<std::collections::BTreeSet<_>>().len() > 1;
    let mut units: BTreeMap<String, CovUnit> = BTreeMap::new();
    for r in rows {
        let name = if several { format!("{} ({})", r.unit, r.connector) } else { r.unit.clone() };
        let u = units.entry(name.clone()).or_insert_with(|| CovUnit { unit: name, due: 0, present: 0, percent: String::new(), rows: vec![] });
        u.due += r.due;
        u.present += r.present;
        let width = if r.due == 0 { 0.0 } else { 100.0 * r.present as f64 / r.due as f64 };
        u.rows.push(CovRow { month: r.month, form: r.form, due: r.due, present: r.present, percent: pct(r.present, r.due), width: format!("{width:.0}") });
    }
    let units = units
        .into_values()
        .map(|mut u| {
            u.percent = pct(u.present, u.due);
            u
        })
        .collect();
    let unmatched = api::sar_unmatched_diagnoses(&state.app.store)
        .await?
        .into_iter()
        .map(|((connector, unit), n)| (if several { format!("{unit} ({connector})") } else { unit }, n))
        .collect();
    render(CoverageTpl { l: layout(&p, "/tackningsgrad", "Täckningsgrad per mottagning", None), units, unmatched })
}

// ---------------------------------------------------------------------------------------------
// Artrosregistrets indikatorer

struct IndView {
    name: String,
    occasion: String,
    value: String,
    counts: String,
    target: String,
    status: String,
}

struct IndGroup {
    title: String,
    rows: Vec<IndView>,
}

#[derive(Template)]
#[template(path = "sar_indicators.html")]
struct SarIndicatorsTpl {
    l: Layout,
    groups: Vec<IndGroup>,
    sex: String,
    age_group: String,
    joint: String,
}

pub async fn sar_indicators(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<api::SarIndicatorQuery>) -> PageResult {
    let all = api::sar_indicators_of(&state.app, &q).await.map_err(Fail::from)?;
    let several = all.len() > 1;
    let mut groups = vec![];
    for c in all {
        for r in c.rows {
            let title = if several { format!("{} – {} ({}; {} förlopp)", r.unit, r.year, c.connector, r.courses) } else { format!("{} – {} ({} förlopp)", r.unit, r.year, r.courses) };
            let rows = r
                .indicators
                .iter()
                .map(|i| IndView {
                    name: i.name.to_string(),
                    occasion: i.occasion.to_string(),
                    value: match (i.value, i.id) {
                        (Some(v), "age") => format!("{v:.1} år"),
                        (Some(v), _) => format!("{v:.0} %"),
                        (None, _) => i.note.clone().unwrap_or_else(|| "–".into()),
                    },
                    counts: if i.id == "age" || i.denominator == 0 { String::new() } else { format!("{} av {}", i.numerator, i.denominator) },
                    target: i.target.to_string(),
                    status: match i.meets_target {
                        Some(true) => "uppnår målet".into(),
                        Some(false) => "under målet".into(),
                        None => String::new(),
                    },
                })
                .collect();
            groups.push(IndGroup { title, rows });
        }
    }
    render(SarIndicatorsTpl {
        l: layout(&p, "/artrosregistret/indikatorer", "Artrosregistrets indikatorer", None),
        groups,
        sex: q.sex.unwrap_or_default(),
        age_group: q.age_group.unwrap_or_default(),
        joint: q.joint.unwrap_or_default(),
    })
}

// ---------------------------------------------------------------------------------------------
// PVK

struct MonthView {
    month: String,
    numerator: String,
    denominator: String,
    share: String,
    note: String,
    list_href: String,
}

struct IndicatorView {
    name: String,
    svg: String,
    /// First and last month shown.
    range: String,
    months: Vec<MonthView>,
}

struct PvkBlock {
    connector: String,
    rule_year: i32,
    unit: String,
    indicators: Vec<IndicatorView>,
}

#[derive(Template)]
#[template(path = "pvk.html")]
struct PvkTpl {
    l: Layout,
    blocks: Vec<PvkBlock>,
    quality: Vec<(String, String, String, i64)>,
    all_units: Vec<String>,
    rule_years: Vec<String>,
    unit: String,
    rule_year: String,
}

#[derive(Deserialize)]
pub struct PvkPageQuery {
    pub unit: Option<String>,
    pub rule_year: Option<String>,
    pub connector: Option<String>,
}

/// Share per month as small bars (0–100 %); months without a computable share get a grey tick.
/// At least twelve slots wide so a short series does not crowd its labels; each bar is labelled
/// with its month number.
pub fn share_chart(points: &[(String, Option<f64>, String)]) -> String {
    let (bw, gap, h, left) = (14.0_f64, 5.0_f64, 60.0_f64, 34.0_f64);
    let w = left + points.len().max(12) as f64 * (bw + gap);
    let total_h = h + 16.0;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{total_h:.0}" viewBox="0 0 {w:.0} {total_h:.0}" role="img" aria-label="Andel per månad"><text x="0" y="9" font-size="10" fill="#5b6b7a">100 %</text><text x="0" y="{h:.0}" font-size="10" fill="#5b6b7a">0 %</text><line x1="{left}" y1="{h}" x2="{w:.0}" y2="{h}" stroke="#b9c3cc"/>"##
    );
    for (i, (month, share, tip)) in points.iter().enumerate() {
        let x = left + i as f64 * (bw + gap);
        let tip = askama_escape(tip);
        match share {
            Some(v) => {
                let bh = (h * v.clamp(0.0, 1.0)).max(1.0);
                s.push_str(&format!(r##"<g><title>{month}: {tip}</title><rect x="{x:.1}" y="{:.1}" width="{bw}" height="{bh:.1}" fill="#005a8c"/></g>"##, h - bh));
            }
            None => s.push_str(&format!(r##"<g><title>{month}: {tip}</title><rect x="{x:.1}" y="{:.1}" width="{bw}" height="2" fill="#b9c3cc"/></g>"##, h - 2.0)),
        }
        let mm = month.get(5..7).unwrap_or(month);
        s.push_str(&format!(r##"<text x="{:.1}" y="{:.0}" font-size="9" fill="#5b6b7a" text-anchor="middle">{mm}</text>"##, x + bw / 2.0, h + 12.0));
    }
    s.push_str("</svg>");
    s
}

fn askama_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub async fn pvk(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<PvkPageQuery>) -> PageResult {
    let rule_year: Option<i32> = nz(&q.rule_year).and_then(|y| y.parse().ok());
    let unit = nz(&q.unit);
    let data = api::pvk_data(&state, nz(&q.connector), None, None).await?;
    let mut all_units: Vec<String> = data.results.iter().map(|r| r.unit.clone()).collect();
    all_units.sort();
    all_units.dedup();
    let mut rule_years: Vec<String> = data.results.iter().map(|r| r.rule_year.to_string()).collect();
    rule_years.sort();
    rule_years.dedup();
    let mut grouped: BTreeMap<(String, i32, String), BTreeMap<String, Vec<&crate::store::PvkResultRow>>> = BTreeMap::new();
    for r in data.results.iter().filter(|r| unit.as_ref().map_or(true, |u| &r.unit == u) && rule_year.map_or(true, |y| r.rule_year == y)) {
        grouped.entry((r.connector.clone(), r.rule_year, r.unit.clone())).or_default().entry(r.indicator.clone()).or_default().push(r);
    }
    let blocks = grouped
        .into_iter()
        .map(|((connector, rule_year, unit), inds)| {
            let indicators = inds
                .into_iter()
                .map(|(name, mut rows)| {
                    rows.sort_by_key(|r| (r.year, r.month));
                    let mut points = vec![];
                    let months = rows
                        .iter()
                        .map(|r| {
                            let month = format!("{:04}-{:02}", r.year, r.month);
                            let share = match (r.computable && !r.suppressed, r.numerator, r.denominator) {
                                (true, Some(n), Some(d)) if d > 0 => Some(n as f64 / d as f64),
                                _ => None,
                            };
                            let mut note = vec![];
                            if !r.computable {
                                note.push("kan inte beräknas".to_string());
                            }
                            if r.suppressed {
                                note.push("undertryckt (för få patienter)".to_string());
                            }
                            if let Some(n) = &r.note {
                                note.push(scrub(n));
                            }
                            let share_text = match (r.numerator, r.denominator) {
                                (Some(n), Some(d)) if share.is_some() => pct(n, d),
                                _ => "–".into(),
                            };
                            points.push((month.clone(), share, format!("{share_text} ({}/{})", r.numerator.map(|n| n.to_string()).unwrap_or("–".into()), r.denominator.map(|n| n.to_string()).unwrap_or("–".into()))));
                            MonthView {
                                list_href: format!(
                                    "/pvk/patientlista?{}",
                                    qs(&[
                                        ("connector", connector.clone()),
                                        ("rule_year", rule_year.to_string()),
                                        ("unit", unit.clone()),
                                        ("year", r.year.to_string()),
                                        ("month", r.month.to_string()),
                                        ("indicator", r.indicator.clone()),
                                    ])
                                ),
                                month,
                                numerator: r.numerator.map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
                                denominator: r.denominator.map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
                                share: share_text,
                                note: if note.is_empty() { String::new() } else { note.join("; ") },
                            }
                        })
                        .collect();
                    let range = match (points.first(), points.last()) {
                        (Some(a), Some(b)) if a.0 != b.0 => format!("{} – {}", a.0, b.0),
                        (Some(a), _) => a.0.clone(),
                        _ => String::new(),
                    };
                    IndicatorView { name, svg: share_chart(&points), months, range }
                })
                .collect();
            PvkBlock { connector, rule_year, unit, indicators }
        })
        .collect();
    let quality = data
        .quality
        .iter()
        .filter(|r| unit.as_ref().map_or(true, |u| &r.unit == u))
        .map(|r| (r.unit.clone(), format!("{:04}-{:02}", r.year, r.month), r.measure.clone(), r.count))
        .collect();
    let mut l = layout(&p, "/pvk", "PVK-indikatorer per enhet", None);
    l.warnings = data.warnings.into_iter().map(|w| w.text).collect();
    render(PvkTpl { l, blocks, quality, all_units, rule_years, unit: unit.unwrap_or_default(), rule_year: rule_year.map(|y| y.to_string()).unwrap_or_default() })
}

#[derive(Template)]
#[template(path = "pvk_list.html")]
struct PvkListTpl {
    l: Layout,
    connector: String,
    rule_year: i32,
    unit: String,
    year: i32,
    month_num: u32,
    month: String,
    indicator: String,
    table: Option<(Vec<String>, Vec<Vec<String>>)>,
}

/// A JSON patient list as a table: objects become columns, scalars one column.
pub fn json_table(v: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    match v {
        Value::Array(items) if items.iter().all(|i| i.is_object()) => {
            let mut headers: Vec<String> = vec![];
            for i in items {
                for k in i.as_object().expect("object").keys() {
                    if !headers.contains(k) {
                        headers.push(k.clone());
                    }
                }
            }
            let rows = items.iter().map(|i| headers.iter().map(|h| i.get(h).map(value_text).unwrap_or_default()).collect()).collect();
            (headers, rows)
        }
        Value::Array(items) => (vec!["Patient".into()], items.iter().map(|i| vec![value_text(i)]).collect()),
        other => (vec!["Innehåll".into()], vec![vec![serde_json::to_string_pretty(other).unwrap_or_default()]]),
    }
}

fn pvk_list_tpl(p: &Principal, k: &api::ListKey, table: Option<(Vec<String>, Vec<Vec<String>>)>) -> PvkListTpl {
    PvkListTpl {
        l: layout(p, "/pvk", "Patientlista", None),
        connector: k.connector.clone(),
        rule_year: k.rule_year,
        unit: k.unit.clone(),
        year: k.year,
        month_num: k.month,
        month: format!("{:04}-{:02}", k.year, k.month),
        indicator: k.indicator.clone(),
        table,
    }
}

pub async fn pvk_list_form(Extension(p): Extension<Principal>, Query(q): Query<PatientListQuery>) -> PageResult {
    if !p.patient_data {
        return Err(Fail::Forbidden.into());
    }
    let k = q.key()?;
    render(pvk_list_tpl(&p, &k, None))
}

#[derive(Deserialize)]
pub struct PatientListForm {
    pub csrf: Option<String>,
    #[serde(flatten)]
    pub q: std::collections::HashMap<String, String>,
}

pub async fn pvk_list(State(state): State<AdminState>, Extension(p): Extension<Principal>, Form(f): Form<PatientListForm>) -> PageResult {
    p.check_csrf(f.csrf.as_deref())?;
    if !p.patient_data {
        return Err(Fail::Forbidden.into());
    }
    let get = |k: &str| f.q.get(k).cloned();
    let q = PatientListQuery {
        connector: get("connector"),
        rule_year: get("rule_year").and_then(|v| v.parse().ok()),
        unit: get("unit"),
        year: get("year").and_then(|v| v.parse().ok()),
        month: get("month").and_then(|v| v.parse().ok()),
        indicator: get("indicator"),
        reason: get("reason"),
    };
    let k = q.key()?;
    let why = match api::reason(&q.reason) {
        Ok(w) => w,
        // No reason: the list stays hidden; show the form again with the message.
        Err(Fail::BadRequest(m)) => {
            let mut t = pvk_list_tpl(&p, &k, None);
            t.l.warnings.push(m);
            let mut res = render(t)?;
            *res.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(res);
        }
        Err(e) => return Err(e.into()),
    };
    let list = api::patient_list(&state, &p, &k, &why).await?;
    render(pvk_list_tpl(&p, &k, Some(json_table(&list))))
}

// ---------------------------------------------------------------------------------------------
// Granskningslogg

#[derive(Deserialize, Default)]
pub struct AuditPageQuery {
    pub kind: Option<String>,
    pub subject: Option<String>,
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<String>,
    pub verifiera: Option<String>,
}

struct AuditFilterView {
    kind: String,
    subject: String,
    actor: String,
    correlation_id: String,
    from: String,
    to: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditTpl {
    l: Layout,
    q: AuditFilterView,
    kinds: Vec<(String, String)>,
    events: Vec<EventView>,
    limit: i64,
    verify: Option<(bool, String)>,
}

pub async fn audit(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<AuditPageQuery>) -> PageResult {
    let params = api::AuditParams {
        kind: q.kind.clone(),
        subject: q.subject.clone(),
        actor: q.actor.clone(),
        correlation_id: q.correlation_id.clone(),
        from: q.from.clone(),
        to: q.to.clone(),
        limit: nz(&q.limit).and_then(|l| l.parse().ok()),
    };
    let aq = params.to_query()?;
    let events = api::audit_events(&state.app.store, &aq).await?;
    let verify = if nz(&q.verifiera).is_some() {
        let r = state.app.store.audit_verify().await?;
        Some(if r.ok {
            (true, format!("Kedjan är hel: {} händelser kontrollerade.", r.events_checked))
        } else {
            (false, format!("Kedjan är bruten vid händelse {}: {}", r.first_bad_seq.unwrap_or(0), r.problem.unwrap_or_default()))
        })
    } else {
        None
    };
    render(AuditTpl {
        l: layout(&p, "/granskningslogg", "Granskningslogg", None),
        q: AuditFilterView {
            kind: nz(&q.kind).unwrap_or_default(),
            subject: nz(&q.subject).unwrap_or_default(),
            actor: nz(&q.actor).unwrap_or_default(),
            correlation_id: nz(&q.correlation_id).unwrap_or_default(),
            from: nz(&q.from).unwrap_or_default(),
            to: nz(&q.to).unwrap_or_default(),
        },
        kinds: kind_options(),
        events: events.iter().map(event_view).collect(),
        limit: aq.limit.unwrap_or(200),
        verify,
    })
}

// ---------------------------------------------------------------------------------------------
// Karantän

struct QView {
    id: i64,
    at: String,
    connector: String,
    document: String,
    field: String,
    reason: String,
    patient_key: String,
    resolved: String,
    open: bool,
}

#[derive(Template)]
#[template(path = "quarantine.html")]
struct QuarantineTpl {
    l: Layout,
    rows: Vec<QView>,
    show_all: bool,
    can_operate: bool,
}

#[derive(Deserialize)]
pub struct QuarantineQuery {
    pub alla: Option<String>,
    pub meddelande: Option<String>,
}

pub async fn quarantine(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<QuarantineQuery>) -> PageResult {
    let show_all = nz(&q.alla).is_some();
    let items = state.app.store.quarantine(None, !show_all, 500).await?;
    let rows = items
        .into_iter()
        .map(|i| QView {
            id: i.id,
            at: t(i.at),
            connector: i.connector,
            document: scrub(&i.document),
            field: i.field,
            reason: scrub(&i.reason),
            patient_key: s_opt(i.patient_key),
            resolved: match (&i.resolved, &i.resolved_by) {
                (Some(at), Some(by)) => format!("{} av {by}", t(*at)),
                (Some(at), None) => t(*at),
                _ => "nej".into(),
            },
            open: i.resolved.is_none(),
        })
        .collect();
    render(QuarantineTpl { l: layout(&p, "/karantan", "Karantän", flash(&q.meddelande)), rows, show_all, can_operate: p.can(Role::Operator) })
}

#[derive(Deserialize)]
pub struct NoteForm {
    pub csrf: Option<String>,
    pub note: Option<String>,
}

pub async fn resolve_quarantine(State(state): State<AdminState>, Extension(p): Extension<Principal>, Path(id): Path<i64>, Form(f): Form<NoteForm>) -> PageResult {
    p.require(Role::Operator)?;
    p.check_csrf(f.csrf.as_deref())?;
    let note = api::reason(&f.note)?;
    if !state.app.store.resolve_quarantine(id, &p.username, &note).await? {
        return Err(Fail::NotFound.into());
    }
    Ok(see_other("/karantan?meddelande=lost"))
}

// ---------------------------------------------------------------------------------------------
// Användare och API-nycklar (admin)

struct UserView {
    username: String,
    role: &'static str,
    patient_data: bool,
    disabled: bool,
    created: String,
}

struct TokenView {
    id: i64,
    name: String,
    username: String,
    created_by: String,
    created: String,
    last_used: String,
    revoked: bool,
    expires: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersTpl {
    l: Layout,
    users: Vec<UserView>,
    tokens: Vec<TokenView>,
    new_token: Option<String>,
}

async fn users_page(state: &AdminState, p: &Principal, msg: Option<String>, new_token: Option<String>) -> PageResult {
    p.require(Role::Admin)?;
    let users = db::users(&state.app.store)
        .await?
        .into_iter()
        .map(|u| UserView { username: u.username, role: u.role.as_str(), patient_data: u.patient_data, disabled: u.disabled, created: t(u.created) })
        .collect();
    let tokens = db::tokens(&state.app.store)
        .await?
        .into_iter()
        .map(|k| TokenView {
            id: k.id,
            name: k.name,
            username: k.username,
            created_by: k.created_by,
            created: t(k.created),
            last_used: t_opt(k.last_used),
            revoked: k.revoked.is_some(),
            expires: t(k.expires),
        })
        .collect();
    render(UsersTpl { l: layout(p, "/anvandare", "Användare och API-nycklar", flash(&msg)), users, tokens, new_token })
}

pub async fn users(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(m): Query<MsgQuery>) -> PageResult {
    users_page(&state, &p, m.meddelande, None).await
}

#[derive(Deserialize)]
pub struct UserForm {
    pub csrf: Option<String>,
    pub username: String,
    pub role: String,
    pub patient_data: Option<String>,
    pub disabled: Option<String>,
    pub password: Option<String>,
}

pub async fn user_save(State(state): State<AdminState>, Extension(p): Extension<Principal>, Form(f): Form<UserForm>) -> PageResult {
    p.require(Role::Admin)?;
    p.check_csrf(f.csrf.as_deref())?;
    let username = f.username.trim().to_string();
    auth::check_username(&username).map_err(|_| Fail::BadRequest("Ogiltigt användarnamn: 1–64 bokstäver, siffror eller . - _ @.".into()))?;
    let role = Role::parse(&f.role).ok_or_else(|| Fail::BadRequest("Okänd roll.".into()))?;
    let patient_data = f.patient_data.is_some();
    let disabled = f.disabled.is_some();
    if username == p.username && (disabled || role != Role::Admin) {
        return Err(Fail::BadRequest("Du kan inte stänga av dig själv eller ta bort din egen administratörsroll.".into()).into());
    }
    let password = nz(&f.password);
    let hash = match &password {
        Some(pw) => {
            auth::check_password_strength(pw).map_err(|_| Fail::BadRequest("Lösenordet måste ha minst 10 tecken.".into()))?;
            Some(auth::hash_password(pw.clone()).await?)
        }
        None => None,
    };
    let exists = db::user(&state.app.store, &username).await?.is_some();
    if !exists && hash.is_none() {
        return Err(Fail::BadRequest("En ny användare behöver ett lösenord.".into()).into());
    }
    db::put_user(&state.app.store, &username, hash.as_deref(), role, patient_data, disabled).await?;
    state
        .app
        .store
        .audit(vec![NewAuditEvent::by(
            &p.username,
            kind::USER_CHANGED,
            &correlation_id(),
            format!("user:{username}"),
            serde_json::json!({"action": if exists { "updated" } else { "created" }, "role": role.as_str(), "patient_data": patient_data, "disabled": disabled, "password_set": password.is_some(), "via": "page"}),
        )])
        .await?;
    Ok(see_other("/anvandare?meddelande=sparad"))
}

#[derive(Deserialize)]
pub struct TokenForm {
    pub csrf: Option<String>,
    pub name: String,
    /// Must be the signed-in user (tokens act only for their own user).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub days: Option<u32>,
}

pub async fn token_create(State(state): State<AdminState>, Extension(p): Extension<Principal>, Form(f): Form<TokenForm>) -> PageResult {
    p.require(Role::Admin)?;
    p.check_csrf(f.csrf.as_deref())?;
    let (_, token) = auth::create_api_token(&state, &p, &f.name, f.username.as_deref(), f.days).await?;
    // Rendered directly (not redirected) so the token is shown once and never lands in a URL.
    users_page(&state, &p, None, Some(token)).await
}

pub async fn token_revoke(State(state): State<AdminState>, Extension(p): Extension<Principal>, Path(id): Path<i64>, Form(f): Form<auth::CsrfForm>) -> PageResult {
    p.require(Role::Admin)?;
    p.check_csrf(f.csrf.as_deref())?;
    if !auth::revoke_api_token(&state, &p, id).await? {
        return Err(Fail::NotFound.into());
    }
    Ok(see_other("/anvandare?meddelande=nyckel-aterkallad"))
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsTpl {
    l: Layout,
    json: String,
}

pub async fn settings(State(state): State<AdminState>, Extension(p): Extension<Principal>) -> PageResult {
    p.require(Role::Admin)?;
    let json = serde_json::to_string_pretty(&api::config_view(&state)).map_err(|e| Fail::Internal(e.into()))?;
    render(SettingsTpl { l: layout(&p, "/installningar", "Inställningar", None), json })
}
