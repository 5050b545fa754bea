//! Att komplettera: the worklist.

use super::*;

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
    units: Vec<(String, String)>,
    unit: String,
    showing_identities: bool,
}

#[derive(Deserialize)]
pub struct WorklistPageQuery {
    pub unit: Option<String>,
}

async fn worklist_page(state: &AdminState, p: &Principal, unit: Option<String>, why: Option<String>) -> PageResult {
    check_unit_filter(p, &unit)?;
    let names = unit_names(state);
    let all_units = unit_options(&names, p, db::distinct_units(&state.app.store, "worklist").await?);
    let showing = why.is_some();
    let entries = api::worklist_entries(state, p, None, unit.clone(), why).await?;
    let mut groups: BTreeMap<String, Vec<WorkItemView>> = BTreeMap::new();
    for e in entries {
        groups.entry(names.label(&e.unit)).or_default().push(WorkItemView {
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
