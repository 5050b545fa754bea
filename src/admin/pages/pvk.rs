//! PVK: indicators per unit and month, patient lists.

use super::*;

// ---------------------------------------------------------------------------------------------
// PVK

struct MonthView {
    month: String,
    numerator: String,
    denominator: String,
    share: String,
    /// The region's share the same month (every unit's computable, unsuppressed cells).
    region: String,
    /// min–median–max of the units' shares the same month, and how many units.
    spread: String,
    note: String,
    list_href: String,
}

struct IndicatorView {
    name: String,
    /// Per-FTE measure: the columns are count, FTE and count per FTE against the requirement.
    per_fte: bool,
    svg: String,
    /// First and last month shown.
    range: String,
    months: Vec<MonthView>,
}

struct PvkBlock {
    connector: String,
    rule_year: i32,
    unit: String,
    indicators: Vec<IndicatorView>,
    /// Regional measures (FaR, vårdval per FTE): shown apart, never sent to PVK.
    regional: Vec<IndicatorView>,
}

#[derive(Template)]
#[template(path = "pvk.html")]
struct PvkTpl {
    l: Layout,
    blocks: Vec<PvkBlock>,
    quality: Vec<(String, String, String, i64)>,
    all_units: Vec<(String, String)>,
    rule_years: Vec<String>,
    unit: String,
    rule_year: String,
}

#[derive(Deserialize)]
pub struct PvkPageQuery {
    pub unit: Option<String>,
    pub rule_year: Option<String>,
    pub connector: Option<String>,
}

/// Share per month as small bars (0–100 %); months without a computable share get a grey tick.
/// At least twelve slots wide so a short series does not crowd its labels; each bar is labelled
/// with its month number.
/// The region's share per month is drawn as a diamond, so unit and region differ by shape, not
/// only by colour; the table beside the chart is the text alternative.
pub fn share_chart(points: &[(String, Option<f64>, String)]) -> String {
    share_chart_with_region(points, &[])
}

pub fn share_chart_with_region(points: &[(String, Option<f64>, String)], region: &[Option<f64>]) -> String {
    let (bw, gap, h, left) = (14.0_f64, 5.0_f64, 60.0_f64, 34.0_f64);
    let w = left + points.len().max(12) as f64 * (bw + gap);
    let total_h = h + 16.0;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{total_h:.0}" viewBox="0 0 {w:.0} {total_h:.0}" role="img" aria-label="Andel per månad: staplar för enheten, romber för regionen; värdena står i tabellen"><text x="0" y="9" font-size="10" fill="#5b6b7a">100 %</text><text x="0" y="{h:.0}" font-size="10" fill="#5b6b7a">0 %</text><line x1="{left}" y1="{h}" x2="{w:.0}" y2="{h}" stroke="#b9c3cc"/>"##
    );
    for (i, (month, share, tip)) in points.iter().enumerate() {
        let x = left + i as f64 * (bw + gap);
        let tip = askama_escape(tip);
        match share {
            Some(v) => {
                let bh = (h * v.clamp(0.0, 1.0)).max(1.0);
                s.push_str(&format!(r##"<g><title>{month}: {tip}</title><rect x="{x:.1}" y="{:.1}" width="{bw}" height="{bh:.1}" fill="#005a8c"/></g>"##, h - bh));
            }
            None => s.push_str(&format!(r##"<g><title>{month}: {tip}</title><rect x="{x:.1}" y="{:.1}" width="{bw}" height="2" fill="#b9c3cc"/></g>"##, h - 2.0)),
        }
        if let Some(Some(r)) = region.get(i) {
            let cy = h - h * r.clamp(0.0, 1.0);
            let cx = x + bw / 2.0;
            s.push_str(&format!(
                r##"<g><title>{month}: regionen {:.0} %</title><path d="M{cx:.1} {:.1} L{:.1} {cy:.1} L{cx:.1} {:.1} L{:.1} {cy:.1} Z" fill="#f2a900" stroke="#1d2a36" stroke-width="1.2"/></g>"##,
                r * 100.0,
                cy - 5.0,
                cx + 5.0,
                cy + 5.0,
                cx - 5.0
            ));
        }
        let mm = month.get(5..7).unwrap_or(month);
        s.push_str(&format!(r##"<text x="{:.1}" y="{:.0}" font-size="9" fill="#5b6b7a" text-anchor="middle">{mm}</text>"##, x + bw / 2.0, h + 12.0));
    }
    s.push_str("</svg>");
    s
}

fn askama_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub async fn pvk(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<PvkPageQuery>) -> PageResult {
    let rule_year: Option<i32> = nz(&q.rule_year).and_then(|y| y.parse().ok());
    let unit = nz(&q.unit);
    check_unit_filter(&p, &unit)?;
    let data = api::pvk_data(&state, &p.scope, nz(&q.connector), None, None).await?;
    let names = unit_names(&state);
    let infos: BTreeMap<(String, i32, String), &api::PvkIndicatorInfo> =
        data.indicators.iter().map(|i| ((i.connector.clone(), i.rule_year, i.indicator.clone()), i)).collect();
    let mut all_units: Vec<String> = data.results.iter().map(|r| r.unit.clone()).collect();
    all_units.sort();
    all_units.dedup();
    let all_units = unit_options(&names, &p, all_units);
    let mut rule_years: Vec<String> = data.results.iter().map(|r| r.rule_year.to_string()).collect();
    rule_years.sort();
    rule_years.dedup();
    // The region and the spread across units, per indicator and month: computable cells whose
    // counts may be shown (suppressed cells stay out, so no unit's hidden count can be derived).
    let mut region: BTreeMap<(String, i32, String, i32, u32), (i64, i64, Vec<f64>)> = BTreeMap::new();
    for r in data.results.iter().filter(|r| r.computable && !r.suppressed) {
        if let (Some(n), Some(d)) = (r.numerator, r.denominator) {
            if d > 0 {
                let e = region.entry((r.connector.clone(), r.rule_year, r.indicator.clone(), r.year, r.month)).or_default();
                e.0 += n;
                e.1 += d;
                e.2.push(n as f64 / d as f64);
            }
        }
    }
    let mut grouped: BTreeMap<(String, i32, String), BTreeMap<String, Vec<&crate::store::PvkResultRow>>> = BTreeMap::new();
    for r in data.results.iter().filter(|r| unit.as_ref().map_or(true, |u| &r.unit == u) && rule_year.map_or(true, |y| r.rule_year == y)) {
        grouped.entry((r.connector.clone(), r.rule_year, r.unit.clone())).or_default().entry(r.indicator.clone()).or_default().push(r);
    }
    let blocks = grouped
        .into_iter()
        .map(|((connector, rule_year, unit), inds)| {
            let mut indicators = vec![];
            let mut regional = vec![];
            for (code, mut rows) in inds {
                    let info = infos.get(&(connector.clone(), rule_year, code.clone()));
                    let name = info.map_or_else(|| code.clone(), |i| i.name.clone());
                    let requirement = info.and_then(|i| i.per_fte_requirement);
                    let per_fte = requirement.is_some();
                    rows.sort_by_key(|r| (r.year, r.month));
                    let mut points = vec![];
                    let mut region_points = vec![];
                    let months = rows
                        .iter()
                        .map(|r| {
                            let month = format!("{:04}-{:02}", r.year, r.month);
                            let share = match (r.computable && !r.suppressed, r.numerator, r.denominator) {
                                // Per FTE: the count per full-time equivalent against the requirement.
                                (true, Some(n), Some(d)) if d > 0 && per_fte => Some(n as f64 * 100.0 / d as f64 / requirement.unwrap_or(1) as f64),
                                (true, Some(n), Some(d)) if d > 0 => Some(n as f64 / d as f64),
                                _ => None,
                            };
                            let mut note = vec![];
                            if !r.computable && r.note.is_none() {
                                note.push("ej beräkningsbar".to_string());
                            }
                            // The stored note already says why (translated below); no second phrase.
                            if r.suppressed && !r.note.as_deref().unwrap_or("").contains("suppressed") {
                                note.push("undertryckt (för få patienter)".to_string());
                            }
                            if let Some(n) = &r.note {
                                note.push(sv::sv(&scrub(n)));
                            }
                            let share_text = match (r.numerator, r.denominator) {
                                (Some(n), Some(d)) if share.is_some() && per_fte => {
                                    format!("{:.0} (krav {})", n as f64 * 100.0 / d as f64, requirement.unwrap_or_default())
                                }
                                (Some(n), Some(d)) if share.is_some() => pct(n, d),
                                _ => "–".into(),
                            };
                            let reg = region.get(&(connector.clone(), rule_year, code.clone(), r.year, r.month)).filter(|_| !per_fte);
                            region_points.push(reg.map(|g| g.0 as f64 / g.1 as f64));
                            let (region_text, spread) = match reg {
                                Some((n, d, shares)) => {
                                    let mut v = shares.clone();
                                    v.sort_by(|a, b| a.total_cmp(b));
                                    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
                                    let p = |x: f64| format!("{:.0} %", x * 100.0);
                                    (pct(*n, *d), format!("{}–{}–{} ({} enheter)", p(v[0]), p(median), p(v[v.len() - 1]), v.len()))
                                }
                                None => ("–".into(), "–".into()),
                            };
                            points.push((month.clone(), share, format!("{share_text} ({}/{})", r.numerator.map(|n| n.to_string()).unwrap_or("–".into()), r.denominator.map(|n| n.to_string()).unwrap_or("–".into()))));
                            MonthView {
                                list_href: format!(
                                    "/pvk/patientlista?{}",
                                    qs(&[
                                        ("connector", connector.clone()),
                                        ("rule_year", rule_year.to_string()),
                                        ("unit", unit.clone()),
                                        ("year", r.year.to_string()),
                                        ("month", r.month.to_string()),
                                        ("indicator", r.indicator.clone()),
                                    ])
                                ),
                                month,
                                numerator: r.numerator.map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
                                denominator: match r.denominator {
                                    // Per-FTE denominators are hundredths of a full-time equivalent.
                                    Some(d) if per_fte => format!("{},{:02}", d / 100, d % 100),
                                    Some(d) => d.to_string(),
                                    None => "–".into(),
                                },
                                share: share_text,
                                region: region_text,
                                spread,
                                note: if note.is_empty() { String::new() } else { note.join("; ") },
                            }
                        })
                        .collect();
                    let range = match (points.first(), points.last()) {
                        (Some(a), Some(b)) if a.0 != b.0 => format!("{} – {}", a.0, b.0),
                        (Some(a), _) => a.0.clone(),
                        _ => String::new(),
                    };
                    let view = IndicatorView { name, per_fte, svg: share_chart_with_region(&points, &region_points), months, range };
                    if crate::registers::pvk::is_regional_code(&code) {
                        regional.push(view);
                    } else {
                        indicators.push(view);
                    }
            }
            PvkBlock { connector, rule_year, unit: names.label(&unit), indicators, regional }
        })
        .collect();
    let quality = data
        .quality
        .iter()
        .filter(|r| unit.as_ref().map_or(true, |u| &r.unit == u))
        .map(|r| (names.label(&r.unit), format!("{:04}-{:02}", r.year, r.month), r.measure.clone(), r.count))
        .collect();
    let l = layout(&p, "/pvk", "PVK-indikatorer per enhet", None);
    render(PvkTpl { l, blocks, quality, all_units, rule_years, unit: unit.unwrap_or_default(), rule_year: rule_year.map(|y| y.to_string()).unwrap_or_default() })
}

#[derive(Template)]
#[template(path = "pvk_list.html")]
struct PvkListTpl {
    l: Layout,
    connector: String,
    rule_year: i32,
    unit: String,
    /// "name (HSA id)" for the heading; `unit` (the id) goes back in the form.
    unit_label: String,
    year: i32,
    month_num: u32,
    month: String,
    indicator: String,
    table: Option<(Vec<String>, Vec<Vec<String>>)>,
}

/// A JSON patient list as a table: objects become columns, scalars one column.
pub fn json_table(v: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    match v {
        Value::Array(items) if items.iter().all(|i| i.is_object()) => {
            let mut headers: Vec<String> = vec![];
            for i in items {
                for k in i.as_object().expect("object").keys() {
                    if !headers.contains(k) {
                        headers.push(k.clone());
                    }
                }
            }
            let rows = items.iter().map(|i| headers.iter().map(|h| i.get(h).map(value_text).unwrap_or_default()).collect()).collect();
            (headers, rows)
        }
        Value::Array(items) => (vec!["Patient".into()], items.iter().map(|i| vec![value_text(i)]).collect()),
        other => (vec!["Innehåll".into()], vec![vec![serde_json::to_string_pretty(other).unwrap_or_default()]]),
    }
}

fn pvk_list_tpl(state: &AdminState, p: &Principal, k: &api::ListKey, table: Option<(Vec<String>, Vec<Vec<String>>)>) -> PvkListTpl {
    PvkListTpl {
        unit_label: unit_names(state).label(&k.unit),
        l: layout(p, "/pvk", "Patientlista", None),
        connector: k.connector.clone(),
        rule_year: k.rule_year,
        unit: k.unit.clone(),
        year: k.year,
        month_num: k.month,
        month: format!("{:04}-{:02}", k.year, k.month),
        indicator: k.indicator.clone(),
        table,
    }
}

pub async fn pvk_list_form(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<PatientListQuery>) -> PageResult {
    if !p.patient_data {
        return Err(Fail::Forbidden.into());
    }
    let k = q.key()?;
    p.require_unit(&k.unit)?;
    render(pvk_list_tpl(&state, &p, &k, None))
}

#[derive(Deserialize)]
pub struct PatientListForm {
    pub csrf: Option<String>,
    #[serde(flatten)]
    pub q: std::collections::HashMap<String, String>,
}

pub async fn pvk_list(State(state): State<AdminState>, Extension(p): Extension<Principal>, Form(f): Form<PatientListForm>) -> PageResult {
    p.check_csrf(f.csrf.as_deref())?;
    if !p.patient_data {
        return Err(Fail::Forbidden.into());
    }
    let get = |k: &str| f.q.get(k).cloned();
    let q = PatientListQuery {
        connector: get("connector"),
        rule_year: get("rule_year").and_then(|v| v.parse().ok()),
        unit: get("unit"),
        year: get("year").and_then(|v| v.parse().ok()),
        month: get("month").and_then(|v| v.parse().ok()),
        indicator: get("indicator"),
        reason: get("reason"),
    };
    let k = q.key()?;
    p.require_unit(&k.unit)?;
    let why = match api::reason(&q.reason) {
        Ok(w) => w,
        // No reason: the list stays hidden; show the form again with the message.
        Err(Fail::BadRequest(m)) => {
            let mut t = pvk_list_tpl(&state, &p, &k, None);
            t.l.warnings.push(m);
            let mut res = render(t)?;
            *res.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(res);
        }
        Err(e) => return Err(e.into()),
    };
    let list = api::patient_list(&state, &p, &k, &why).await?;
    render(pvk_list_tpl(&state, &p, &k, Some(json_table(&list))))
}
