//! Överföringar, one transfer's history, Misslyckade (and replay).

use super::*;

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

fn row_view(r: db::TransferRow, names: &crate::units::UnitNames) -> RowView {
    let reason = match r.state {
        RecordState::Rejected => r.reason.clone().or(r.last_error.clone()),
        _ => r.last_error.clone().or(r.reason.clone()),
    };
    RowView {
        id: r.id,
        key: r.idem_key,
        register: r.register,
        connector: r.connector,
        unit: names.label(&r.unit),
        form: r.form,
        version: r.version,
        state: r.state.as_str(),
        state_label: state_label(r.state),
        reason: sv::sv(&s_opt(scrub_opt(&reason))),
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
    units: Vec<(String, String)>,
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
    check_unit_filter(&p, &q.unit)?;
    let tq = q.to_query(&p.scope, PER_PAGE)?;
    let (rows, total) = db::transfers(&state.app.store, &tq).await?;
    let (connectors, registers, units, forms) = db::transfer_facets(&state.app.store, &p.scope).await?;
    let names = unit_names(&state);
    let units = unit_options(&names, &p, units);
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
        rows: rows.into_iter().map(|r| row_view(r, &names)).collect(),
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

fn rec_view(r: &OutboxRecord, names: &crate::units::UnitNames) -> RecView {
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
        unit: names.label(&r.unit),
        form: r.form.clone(),
        subject: s_opt(r.subject.clone()),
        version: r.version,
        op: match r.op {
            crate::store::Op::Upsert => "skapa/ändra",
            crate::store::Op::Retract => "återkalla",
        },
        attempts: r.attempts,
        reason: sv::sv(&s_opt(scrub_opt(&reason))),
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
    let (h, payload, held) = api::history(&state.app.store, &p.scope, id).await?;
    let names = unit_names(state);
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
        rec: rec_view(&h.record, &names),
        versions: h.versions.iter().map(|v| rec_view(v, &names)).collect(),
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
        scope: p.scope.clone(),
        ..Default::default()
    };
    let (rows, total) = db::transfers(&state.app.store, &tq).await?;
    let (connectors, registers, _, _) = db::transfer_facets(&state.app.store, &p.scope).await?;
    let names = unit_names(&state);
    render(FailedTpl {
        l: layout(&p, "/misslyckade", "Misslyckade överföringar", flash(&q.meddelande)),
        shown: rows.len() as i64,
        rows: rows.into_iter().map(|r| row_view(r, &names)).collect(),
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
    let done = api::replay_ids(&state, &p, &[f.id], &why).await?;
    if done.contains(&f.id) {
        Ok(see_other(&format!("/overforingar/{}?meddelande=koad", f.id)))
    } else {
        Ok(see_other("/misslyckade?meddelande=ej-koad"))
    }
}
