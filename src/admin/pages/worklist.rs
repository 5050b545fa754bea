//! Att komplettera: the worklist, grouped by unit and patient (pseudonym; identities only behind
//! the recorded reveal), saying what to document (the journal keyword) for which occasion, and
//! letting an operator mark an item as handled outside the system (a reason, audited).

use super::*;

// ---------------------------------------------------------------------------------------------
// Att komplettera

struct WorkItemView {
    idem_key: String,
    form: String,
    occasion: String,
    missing: String,
    event_date: String,
    since: String,
    /// "2026-12-05 10:00, anna: skäl" for handled items.
    handled: String,
}

struct PatientGroup {
    patient: String,
    items: Vec<WorkItemView>,
}

struct WorkGroup {
    unit: String,
    count: usize,
    patients: Vec<PatientGroup>,
}

#[derive(Template)]
#[template(path = "worklist.html")]
struct WorklistTpl {
    l: Layout,
    groups: Vec<WorkGroup>,
    units: Vec<(String, String)>,
    unit: String,
    showing_identities: bool,
    /// Showing the items marked as handled outside the system instead of the open ones.
    handled: bool,
    can_operate: bool,
}

#[derive(Deserialize)]
pub struct WorklistPageQuery {
    pub unit: Option<String>,
    /// `hanterade`: the items marked as handled outside the system.
    pub visa: Option<String>,
    pub meddelande: Option<String>,
}

/// The occasion a register form stands for, in the clinic's words.
fn occasion_sv(form: &str) -> &'static str {
    match form {
        "FVPat" => "första besöket (patientens formulär)",
        "FVPT" => "första besöket (fysioterapeutens formulär)",
        "M3Pat" | "Uppf3m" => "uppföljning efter 3 månader (patientens formulär)",
        "M3PT" => "uppföljning efter 3 månader (fysioterapeutens formulär)",
        "Y1Pat" | "Uppf1ar" => "uppföljning efter 1 år (patientens formulär)",
        _ => "",
    }
}

async fn worklist_page(state: &AdminState, p: &Principal, unit: Option<String>, why: Option<String>, handled: bool, msg: Option<String>) -> PageResult {
    check_unit_filter(p, &unit)?;
    let names = unit_names(state);
    let all_units = unit_options(&names, p, db::distinct_units(&state.app.store, "worklist").await?);
    let showing = why.is_some();
    let entries = api::worklist_entries_of(state, p, None, unit.clone(), why, handled).await?;
    let mut groups: BTreeMap<String, BTreeMap<String, Vec<WorkItemView>>> = BTreeMap::new();
    for e in entries {
        groups.entry(names.label(&e.unit)).or_default().entry(e.patient.clone().unwrap_or_else(|| e.patient_key.clone())).or_default().push(WorkItemView {
            idem_key: e.idem_key.clone(),
            occasion: occasion_sv(&e.form).to_string(),
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
            handled: e.handled.map(|h| format!("{}, {}: {}", t(h.at), h.by, h.reason)).unwrap_or_default(),
        });
    }
    render(WorklistTpl {
        l: layout(p, "/att-komplettera", "Att komplettera", msg),
        groups: groups
            .into_iter()
            .map(|(unit, patients)| WorkGroup {
                unit,
                count: patients.values().map(|v| v.len()).sum(),
                patients: patients.into_iter().map(|(patient, items)| PatientGroup { patient, items }).collect(),
            })
            .collect(),
        units: all_units,
        unit: unit.unwrap_or_default(),
        showing_identities: showing,
        handled,
        can_operate: p.can(Role::Operator),
    })
}

pub async fn worklist(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<WorklistPageQuery>) -> PageResult {
    let msg = match q.meddelande.as_deref() {
        Some("hanterad") => Some("Posten är markerad som hanterad utanför systemet och visas under Hanterade.".to_string()),
        Some("ej-hanterad") => Some("Posten finns inte längre på listan (redan hanterad eller kompletterad).".to_string()),
        _ => None,
    };
    worklist_page(&state, &p, nz(&q.unit), None, q.visa.as_deref() == Some("hanterade"), msg).await
}

#[derive(Deserialize)]
pub struct WorklistForm {
    pub csrf: Option<String>,
    pub unit: Option<String>,
    pub reason: Option<String>,
    pub visa: Option<String>,
}

pub async fn worklist_identities(State(state): State<AdminState>, Extension(p): Extension<Principal>, Form(f): Form<WorklistForm>) -> PageResult {
    p.check_csrf(f.csrf.as_deref())?;
    if !p.patient_data {
        return Err(Fail::Forbidden.into());
    }
    let why = api::reason(&f.reason)?;
    worklist_page(&state, &p, nz(&f.unit), Some(why), f.visa.as_deref() == Some("hanterade"), None).await
}

#[derive(Deserialize)]
pub struct HandledForm {
    pub csrf: Option<String>,
    pub idem_key: String,
    pub reason: Option<String>,
    pub unit: Option<String>,
}

/// "Markera som hanterad utanför systemet": an operator, with a reason (audited as
/// `worklist.handled`). The item leaves the open list; the next run keeps the mark while the
/// item's data is unchanged.
pub async fn worklist_handled(State(state): State<AdminState>, Extension(p): Extension<Principal>, Form(f): Form<HandledForm>) -> PageResult {
    p.check_csrf(f.csrf.as_deref())?;
    p.require(Role::Operator)?;
    let why = api::reason(&f.reason)?;
    // Another unit's item does not exist for a unit-limited user.
    if !p.scope.is_region() {
        let unit = db::worklist_unit(&state.app.store, &f.idem_key).await?.ok_or(Fail::NotFound)?;
        p.require_unit(&unit)?;
    }
    let done = state.app.store.worklist_mark_handled(&f.idem_key, &p.username, &why).await.map_err(Fail::Internal)?;
    let mut q = vec![("meddelande", if done { "hanterad" } else { "ej-hanterad" }.to_string())];
    if let Some(u) = nz(&f.unit) {
        q.push(("unit", u));
    }
    Ok(see_other(&format!("/att-komplettera?{}", qs(&q))))
}
