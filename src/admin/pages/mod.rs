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

mod overview;
mod transfers;
mod worklist;
mod coverage;
mod sar;
mod pvk;
mod audit;
mod quarantine;
mod settings;
mod clinic;
pub mod sv;
pub mod csv;
pub use overview::*;
pub use transfers::*;
pub use worklist::*;
pub use coverage::*;
pub use sar::*;
pub use pvk::*;
pub use audit::*;
pub use quarantine::*;
pub use settings::*;
pub use clinic::*;

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

/// (href, label, least role, region-wide): region-wide pages are left out of a unit-limited
/// user's menu (and refused to it), which gets its clinic's page instead.
const MENU: &[(&str, &str, Role, bool)] = &[
    ("/", "Översikt", Role::Reader, true),
    ("/mottagning", "Min mottagning", Role::Reader, false),
    ("/overforingar", "Överföringar", Role::Reader, false),
    ("/misslyckade", "Misslyckade", Role::Reader, false),
    ("/att-komplettera", "Att komplettera", Role::Reader, false),
    ("/tackningsgrad", "Täckningsgrad", Role::Reader, false),
    ("/artrosregistret/indikatorer", "Artrosregistrets indikatorer", Role::Reader, false),
    ("/pvk", "PVK-indikatorer", Role::Reader, false),
    ("/karantan", "Karantän", Role::Reader, false),
    ("/granskningslogg", "Granskningslogg", Role::Reader, true),
    ("/anvandare", "Användare", Role::Admin, true),
    ("/installningar", "Inställningar", Role::Reader, true),
];

fn layout(p: &Principal, active: &str, title: &str, flash: Option<String>) -> Layout {
    Layout {
        title: title.to_string(),
        user: p.username.clone(),
        role: p.role.as_str(),
        patient_data: p.patient_data,
        csrf: p.csrf_value(),
        nav: MENU
            .iter()
            .filter(|(_, _, r, region)| p.can(*r) && (p.scope.is_region() || !region))
            // A region user opens any clinic's page from the chooser.
            .map(|(href, label, _, _)| Nav { href, label: if *href == "/mottagning" && p.scope.is_region() { "Mottagningar" } else { label }, active: *href == active })
            .collect(),
        flash,
        warnings: vec![],
        version: env!("CARGO_PKG_VERSION"),
    }
}

/// Unit names for this request's pages ("name (HSA id)", `crate::units`).
fn unit_names(state: &AdminState) -> crate::units::UnitNames {
    state.unit_names()
}

/// Drop-down options (value = HSA id, text = "name (HSA id)") for the units a caller may see.
fn unit_options(names: &crate::units::UnitNames, p: &Principal, units: Vec<String>) -> Vec<(String, String)> {
    units.into_iter().filter(|u| p.scope.allows(u)).map(|u| (names.label(&u), u)).map(|(l, u)| (u, l)).collect()
}

/// A unit filter naming a unit the caller may not see: the page does not exist for it (the
/// id is not echoed back into a form or a link).
fn check_unit_filter(p: &Principal, unit: &Option<String>) -> Result<(), Fail> {
    match nz(unit) {
        Some(u) => p.require_unit(&u),
        None => Ok(()),
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
        kind::WORKLIST_HANDLED => "Hanterad utanför systemet",
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
    let mut detail = sv::sv(&e.detail.to_string());
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
