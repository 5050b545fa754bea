//! Översikt: the day chart and the per-register summary.

use super::*;

// ---------------------------------------------------------------------------------------------
// Översikt

struct OverviewRow {
    connector: String,
    register: String,
    last_run: String,
    last_status: String,
    last_status_class: String,
    next_run: String,
    delivered_today: i64,
    failed_today: i64,
}

struct Chart {
    title: String,
    svg: String,
    total_ok: i64,
    total_bad: i64,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewTpl {
    status: Option<String>,
    messages: usize,
    l: Layout,
    rows: Vec<OverviewRow>,
    charts: Vec<Chart>,
    queue_depth: i64,
    dead_letters: i64,
    quarantine_open: i64,
    worklist: i64,
}

/// Stacked bars per day (delivered green, failed red), inline SVG with a tooltip per day.
pub fn day_chart(days: &[(String, i64, i64)]) -> String {
    let max = days.iter().map(|d| d.1 + d.2).max().unwrap_or(0).max(1);
    let (bw, gap, h, left) = (11.0_f64, 3.0_f64, 90.0_f64, 28.0_f64);
    let w = left + days.len() as f64 * (bw + gap);
    let total_h = h + 18.0;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{total_h:.0}" viewBox="0 0 {w:.0} {total_h:.0}" role="img" aria-label="Levererade och misslyckade per dygn"><text x="0" y="9" font-size="10" fill="#5b6b7a">{max}</text><text x="0" y="{h:.0}" font-size="10" fill="#5b6b7a">0</text><line x1="{left}" y1="{h}" x2="{w:.0}" y2="{h}" stroke="#b9c3cc"/>"##
    );
    for (i, (day, ok, bad)) in days.iter().enumerate() {
        let x = left + i as f64 * (bw + gap);
        let ok_h = h * *ok as f64 / max as f64;
        let bad_h = h * *bad as f64 / max as f64;
        s.push_str(&format!(
            r##"<g><title>{day}: {ok} levererade, {bad} misslyckade</title><rect x="{x:.1}" y="0" width="{bw}" height="{h}" fill="transparent"/><rect x="{x:.1}" y="{:.1}" width="{bw}" height="{ok_h:.1}" fill="#2e7d32"/><rect x="{x:.1}" y="{:.1}" width="{bw}" height="{bad_h:.1}" fill="#c62828"/></g>"##,
            h - ok_h,
            h - ok_h - bad_h
        ));
    }
    if let (Some(first), Some(last)) = (days.first(), days.last()) {
        s.push_str(&format!(r##"<text x="{left}" y="{:.0}" font-size="10" fill="#5b6b7a">{}</text>"##, h + 14.0, first.0.get(5..).unwrap_or(&first.0)));
        s.push_str(&format!(r##"<text x="{w:.0}" y="{:.0}" font-size="10" fill="#5b6b7a" text-anchor="end">{}</text>"##, h + 14.0, last.0.get(5..).unwrap_or(&last.0)));
    }
    s.push_str("</svg>");
    s
}

pub async fn overview(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(m): Query<MsgQuery>) -> PageResult {
    // The region's overview is not a unit user's: it lands on its clinic's page.
    if !p.scope.is_region() {
        return Ok(see_other(&auth::landing(&p.scope)));
    }
    let o = api::overview_data(&state).await?;
    let rows = o
        .connectors
        .iter()
        .map(|c| {
            let (status, class) = c.last_run.as_ref().map(|r| run_status_sv(&r.status)).unwrap_or(("", ""));
            OverviewRow {
                connector: c.connector.clone(),
                register: c.register.clone(),
                last_run: c.last_run.as_ref().map(|r| t(r.started)).unwrap_or_else(|| "–".into()),
                last_status: status.into(),
                last_status_class: class.into(),
                next_run: t_opt(c.next_run),
                delivered_today: c.delivered_today,
                failed_today: c.failed_today,
            }
        })
        .collect();
    // 30 days ending today (UTC days, as the store counts them), zeros filled in.
    let today = Utc::now().date_naive();
    let days: Vec<String> = (0..30).rev().map(|d| (today - chrono::Duration::days(d)).format("%Y-%m-%d").to_string()).collect();
    let mut per_register: BTreeMap<String, BTreeMap<String, (i64, i64)>> = BTreeMap::new();
    for d in &o.days {
        let e = per_register.entry(d.register.clone()).or_default().entry(d.day.clone()).or_default();
        e.0 += d.delivered;
        e.1 += d.failed;
    }
    let charts = per_register
        .into_iter()
        .map(|(register, m)| {
            let series: Vec<(String, i64, i64)> = days.iter().map(|d| (d.clone(), m.get(d).map(|x| x.0).unwrap_or(0), m.get(d).map(|x| x.1).unwrap_or(0))).collect();
            Chart { title: format!("Register {register}"), total_ok: series.iter().map(|x| x.1).sum(), total_bad: series.iter().map(|x| x.2).sum(), svg: day_chart(&series) }
        })
        .collect();
    let l = layout(&p, "/", "Översikt", flash(&m.meddelande));
    // One status panel instead of a banner per warning; the details are on the settings page.
    let status = super::super::status::summary_sv(&(state.status)());
    let messages = (state.warnings)().len();
    render(OverviewTpl { l, status, messages, rows, charts, queue_depth: o.queue_depth, dead_letters: o.dead_letters, quarantine_open: o.quarantine_open, worklist: o.worklist })
}
