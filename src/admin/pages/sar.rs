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
    /// The region's value the same year (every unit's counts together).
    region: String,
    /// min–median–max of the units' values the same year, and how many units.
    spread: String,
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
    // Region and spread per (connector, year, indicator): counts summed over the units, the
    // units' own values for the spread.
    let mut region: BTreeMap<(String, i32, &'static str), (i64, i64, Vec<f64>)> = BTreeMap::new();
    for c in &all {
        for r in &c.rows {
            for i in &r.indicators {
                let e = region.entry((c.connector.clone(), r.year, i.id)).or_default();
                e.0 += i.numerator as i64;
                e.1 += i.denominator as i64;
                if let Some(v) = i.value {
                    e.2.push(v);
                }
            }
        }
    }
    let mut groups = vec![];
    for c in &all {
        for r in &c.rows {
            let unit = names.label(&r.unit);
            let title = if several { format!("{unit} – {} ({}; {} förlopp)", r.year, c.connector, r.courses) } else { format!("{unit} – {} ({} förlopp)", r.year, r.courses) };
            let rows = r
                .indicators
                .iter()
                .map(|i| {
                    let reg = region.get(&(c.connector.clone(), r.year, i.id));
                    let unit_fmt = |v: f64| if i.id == "age" { format!("{v:.1} år") } else { format!("{v:.0} %") };
                    IndView {
                    region: match reg {
                        Some((n, d, _)) if i.id != "age" && *d > 0 => format!("{:.0} % ({n} av {d})", *n as f64 * 100.0 / *d as f64),
                        _ => "–".into(),
                    },
                    spread: match reg {
                        Some((_, _, v)) if !v.is_empty() => {
                            let mut v = v.clone();
                            v.sort_by(|a, b| a.total_cmp(b));
                            let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
                            format!("{}–{}–{} ({} mottagningar)", unit_fmt(v[0]), unit_fmt(median), unit_fmt(v[v.len() - 1]), v.len())
                        }
                        _ => "–".into(),
                    },
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
                }})
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
