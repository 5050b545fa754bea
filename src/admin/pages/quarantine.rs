//! Karantän.

use super::*;

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
    let items = api::quarantine_items(&state, &p.scope, None, !show_all, 500).await?;
    let rows = items
        .into_iter()
        .map(|i| QView {
            id: i.id,
            at: t(i.at),
            connector: i.connector,
            document: i.document,
            field: i.field,
            reason: sv::sv(&i.reason),
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
    api::do_resolve_quarantine(&state, &p, id, &note).await?;
    Ok(see_other("/karantan?meddelande=lost"))
}
