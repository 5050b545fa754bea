//! Täckningsgrad.

use super::*;

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
    let rows = api::coverage(&state.app.store, &p.scope).await?;
    let names = unit_names(&state);
    let several = rows.iter().map(|r| &r.connector).collect::<std::collections::BTreeSet<_>>().len() > 1;
    let mut units: BTreeMap<String, CovUnit> = BTreeMap::new();
    for r in rows {
        let name = if several { format!("{} – {}", names.label(&r.unit), r.connector) } else { names.label(&r.unit) };
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
    let unmatched = api::sar_unmatched_diagnoses(&state.app.store, &p.scope)
        .await?
        .into_iter()
        .map(|((connector, unit), n)| (if several { format!("{} – {connector}", names.label(&unit)) } else { names.label(&unit) }, n))
        .collect();
    render(CoverageTpl { l: layout(&p, "/tackningsgrad", "Täckningsgrad per mottagning", None), units, unmatched })
}
