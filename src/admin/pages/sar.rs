//! Artrosregistrets indikatorer.

use super::*;

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
    let all = api::sar_indicators_of(&state.app, &p.scope, &q).await.map_err(Fail::from)?;
    let names = unit_names(&state);
    let several = all.len() > 1;
    let mut groups = vec![];
    for c in all {
        for r in c.rows {
            let unit = names.label(&r.unit);
            let title = if several { format!("{unit} – {} ({}; {} förlopp)", r.year, c.connector, r.courses) } else { format!("{unit} – {} ({} förlopp)", r.year, r.courses) };
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
