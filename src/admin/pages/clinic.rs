//! Mottagning: one clinic's own page — its worklist, its SAR registrations, coverage and
//! indicators, its PVK indicators and its failures (issue 19). The landing page of a user
//! limited to that unit; `/mottagning` lists the units a user may open (the chooser).

use super::*;
use crate::admin::store::UnitScope;

struct UnitLink {
    href: String,
    label: String,
}

#[derive(Template)]
#[template(path = "clinic_choose.html")]
struct ChooseTpl {
    l: Layout,
    units: Vec<UnitLink>,
}

/// Every unit a configured connector reads (the region's units).
fn configured_units(state: &AdminState) -> Vec<String> {
    let mut units: Vec<String> = state.app.loaded.connectors.iter().flat_map(|c| c.units.iter().cloned()).collect();
    units.sort();
    units.dedup();
    units
}

fn clinic_href(hsa: &str) -> String {
    format!("/mottagning/{}", urlencoding::encode(hsa))
}

pub async fn clinic_choose(State(state): State<AdminState>, Extension(p): Extension<Principal>) -> PageResult {
    let units: Vec<String> = if p.scope.is_region() { configured_units(&state) } else { p.scope.units().to_vec() };
    if let [one] = units.as_slice() {
        return Ok(see_other(&clinic_href(one)));
    }
    let names = unit_names(&state);
    let units = units.iter().map(|u| UnitLink { href: clinic_href(u), label: names.label(u) }).collect();
    render(ChooseTpl { l: layout(&p, "/mottagning", "Välj mottagning", None), units })
}

struct WorkRow {
    form: String,
    patient_key: String,
    document: String,
    event_date: String,
    since: String,
}

struct CovView {
    month: String,
    form: String,
    due: i64,
    present: i64,
    percent: String,
}

struct SarIndView {
    year: i32,
    name: String,
    occasion: String,
    value: String,
    counts: String,
    target: String,
}

struct PvkView {
    indicator: String,
    month: String,
    counts: String,
    share: String,
}

struct FailView {
    id: i64,
    register: String,
    form: String,
    state: &'static str,
    state_label: &'static str,
    reason: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "clinic.html")]
struct ClinicTpl {
    l: Layout,
    hsa: String,
    /// Link to the chooser when the user has more than this unit.
    choose: bool,
    worklist: Vec<WorkRow>,
    sar_delivered: i64,
    coverage_due: i64,
    coverage_present: i64,
    coverage_percent: String,
    coverage: Vec<CovView>,
    sar_indicators: Vec<SarIndView>,
    pvk: Vec<PvkView>,
    failed: Vec<FailView>,
    failed_total: i64,
    failed_more: bool,
    can_operate: bool,
}

pub async fn clinic(State(state): State<AdminState>, Extension(p): Extension<Principal>, Path(hsa): Path<String>) -> PageResult {
    // Another unit's page does not exist for a unit-limited user; nor does a page for
    // something that is no HSA id.
    p.require_unit(&hsa)?;
    if crate::model::HsaId::parse(&hsa).is_err() {
        return Err(Fail::NotFound.into());
    }
    let names = unit_names(&state);
    // Every query below takes this one unit as its scope.
    let scope = UnitScope::only(std::slice::from_ref(&hsa));
    let store = &state.app.store;

    let worklist = api::worklist_entries(&state, &p, None, Some(hsa.clone()), None)
        .await?
        .into_iter()
        .map(|e| WorkRow {
            document: if e.document.is_empty() {
                e.missing.join(", ")
            } else {
                e.document.iter().map(|d| d.name.clone().or(d.term.clone()).unwrap_or_else(|| d.column.clone())).collect::<Vec<_>>().join(", ")
            },
            form: e.form,
            patient_key: e.patient_key.chars().take(12).collect(),
            event_date: s_opt(e.event_date),
            since: t(e.since),
        })
        .collect();

    let delivered = db::TransferQuery { register: Some("sar".into()), states: vec![RecordState::Delivered], latest_only: true, limit: 1, scope: scope.clone(), ..Default::default() };
    let (_, sar_delivered) = db::transfers(store, &delivered).await?;

    let cov = api::coverage(store, &scope).await?;
    let (due, present) = cov.iter().fold((0, 0), |(d, p), r| (d + r.due, p + r.present));
    let coverage = cov.into_iter().map(|r| CovView { percent: pct(r.present, r.due), month: r.month, form: r.form, due: r.due, present: r.present }).collect();

    let mut sar_indicators = vec![];
    for c in api::sar_indicators_of(&state.app, &scope, &Default::default()).await.map_err(Fail::from)? {
        for r in c.rows {
            for i in &r.indicators {
                sar_indicators.push(SarIndView {
                    year: r.year,
                    name: i.name.to_string(),
                    occasion: i.occasion.to_string(),
                    value: match (i.value, i.id) {
                        (Some(v), "age") => format!("{v:.1} år"),
                        (Some(v), _) => format!("{v:.0} %"),
                        (None, _) => "–".into(),
                    },
                    counts: if i.id == "age" || i.denominator == 0 { String::new() } else { format!("{} av {}", i.numerator, i.denominator) },
                    target: i.target.to_string(),
                });
            }
        }
    }

    // PVK: the latest month of each indicator.
    let data = api::pvk_data(&state, &scope, None, None, None).await?;
    let indicator_names: BTreeMap<(String, i32, String), String> = data.indicators.iter().map(|i| ((i.connector.clone(), i.rule_year, i.indicator.clone()), i.name.clone())).collect();
    let mut latest: BTreeMap<(String, i32, String), &crate::store::PvkResultRow> = BTreeMap::new();
    for r in &data.results {
        let e = latest.entry((r.connector.clone(), r.rule_year, r.indicator.clone())).or_insert(r);
        if (r.year, r.month) > (e.year, e.month) {
            *e = r;
        }
    }
    let pvk = latest
        .into_iter()
        .map(|(k, r)| PvkView {
            indicator: indicator_names.get(&k).cloned().unwrap_or_else(|| r.indicator.clone()),
            month: format!("{:04}-{:02}", r.year, r.month),
            counts: match (r.numerator, r.denominator) {
                (Some(n), Some(d)) if !r.suppressed => format!("{n} av {d}"),
                _ if r.suppressed => "för få för att visas".into(),
                _ => "–".into(),
            },
            share: match (r.numerator, r.denominator) {
                (Some(n), Some(d)) if !r.suppressed => pct(n, d),
                _ => "–".into(),
            },
        })
        .collect();

    let failed_q = db::TransferQuery { states: vec![RecordState::Rejected, RecordState::Dead], latest_only: true, limit: 50, scope, ..Default::default() };
    let (failed, failed_total) = db::transfers(store, &failed_q).await?;

    render(ClinicTpl {
        l: layout(&p, "/mottagning", &names.label(&hsa), None),
        choose: p.scope.units().len() > 1 || p.scope.is_region(),
        hsa,
        worklist,
        sar_delivered,
        coverage_due: due,
        coverage_present: present,
        coverage_percent: pct(present, due),
        coverage,
        sar_indicators,
        pvk,
        failed: failed
            .iter()
            .cloned()
            .map(|r| FailView {
                id: r.id,
                register: r.register,
                form: r.form,
                state: r.state.as_str(),
                state_label: state_label(r.state),
                reason: s_opt(scrub_opt(&r.reason.or(r.last_error))),
                updated: t(r.updated),
            })
            .collect(),
        failed_more: failed_total > failed.len() as i64,
        failed_total,
        can_operate: p.can(Role::Operator),
    })
}
