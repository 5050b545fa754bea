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
    /// On a unit's first group: the unit's trend over the years, one chart per indicator.
    trend_unit: String,
    trend: Vec<(String, String)>,
}

/// Value per year as bars (0–100 %) with the region's value as a diamond; each bar carries its
/// value as text, so the chart reads without colour; the tables below are the text alternative.
fn year_chart(points: &[(i32, Option<f64>, Option<f64>)]) -> String {
    let (bw, gap, h, left, top) = (26.0_f64, 14.0_f64, 70.0_f64, 34.0_f64, 12.0_f64);
    let w = left + points.len().max(3) as f64 * (bw + gap);
    let total_h = top + h + 16.0;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{total_h:.0}" viewBox="0 0 {w:.0} {total_h:.0}" role="img" aria-label="Värde per år: staplar för mottagningen, romber för regionen; värdena står i tabellerna"><text x="0" y="{:.0}" font-size="10" fill="#5b6b7a">100 %</text><text x="0" y="{:.0}" font-size="10" fill="#5b6b7a">0 %</text><line x1="{left}" y1="{:.0}" x2="{w:.0}" y2="{:.0}" stroke="#b9c3cc"/>"##,
        top + 4.0,
        top + h,
        top + h,
        top + h
    );
    for (i, (year, v, region)) in points.iter().enumerate() {
        let x = left + i as f64 * (bw + gap);
        let base = top + h;
        if let Some(v) = v {
            let bh = (h * (v / 100.0).clamp(0.0, 1.0)).max(1.0);
            s.push_str(&format!(r##"<g><title>{year}: {v:.0} %</title><rect x="{x:.1}" y="{:.1}" width="{bw}" height="{bh:.1}" fill="#005a8c"/></g>"##, base - bh));
            s.push_str(&format!(r##"<text x="{:.1}" y="{:.1}" font-size="9" fill="#1d2a36" text-anchor="middle">{v:.0}</text>"##, x + bw / 2.0, (base - bh - 2.0).max(9.0)));
        }
        if let Some(r) = region {
            let cy = base - h * (r / 100.0).clamp(0.0, 1.0);
            let cx = x + bw + 4.0;
            s.push_str(&format!(
                r##"<g><title>{year}: regionen {r:.0} %</title><path d="M{cx:.1} {:.1} L{:.1} {cy:.1} L{cx:.1} {:.1} L{:.1} {cy:.1} Z" fill="#f2a900" stroke="#1d2a36" stroke-width="1.2"/></g>"##,
                cy - 5.0,
                cx + 5.0,
                cy + 5.0,
                cx - 5.0
            ));
        }
        s.push_str(&format!(r##"<text x="{:.1}" y="{:.0}" font-size="9" fill="#5b6b7a" text-anchor="middle">{year}</text>"##, x + bw / 2.0, base + 12.0));
    }
    s.push_str("</svg>");
    s
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
    // Each unit's values per indicator and year (percentages only; the mean age has no 0–100 scale).
    let mut trends: BTreeMap<(String, String), BTreeMap<(&'static str, String), Vec<(i32, Option<f64>, Option<f64>)>>> = BTreeMap::new();
    for c in &all {
        for r in &c.rows {
            for i in r.indicators.iter().filter(|i| i.id != "age") {
                let reg = region.get(&(c.connector.clone(), r.year, i.id)).and_then(|(n, d, _)| (*d > 0).then(|| *n as f64 * 100.0 / *d as f64));
                trends.entry((c.connector.clone(), r.unit.clone())).or_default().entry((i.id, i.name.to_string())).or_default().push((r.year, i.value, reg));
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
            let first = groups.last().map_or(true, |g: &IndGroup| !g.title.starts_with(&format!("{} –", r.unit)));
            let trend = match trends.remove(&(c.connector.clone(), r.unit.clone())) {
                Some(t) if first => t
                    .into_iter()
                    .map(|((_, name), mut pts)| {
                        pts.sort_by_key(|p| p.0);
                        (name, year_chart(&pts))
                    })
                    .collect(),
                _ => vec![],
            };
            groups.push(IndGroup { title, rows, trend_unit: r.unit.clone(), trend });
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
