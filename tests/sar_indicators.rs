//! Artrosregistrets indikatorer: the sandbox population goes through the real daemon into the
//! Stratum emulator; the admin API and page show the register's indicators per clinic and year
//! of first visit; this test recomputes them independently from the registrations the emulator
//! holds (its own reading of the register's definitions, `shared/research/sar-register-facts.md`)
//! and compares, on both store backends.

mod admin_support;
mod common;

use admin_support::{add_user, serve, Client, PASSWORD};
use chrono::{Datelike, NaiveDate};
use common::e2e::start;
use registerbrygga::admin::{AdminState, Role};
use registerbrygga::config::Backend;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One course as the register holds it: the first-visit registrations and its follow-ups.
#[derive(Default)]
struct Course {
    fv: Map<String, Value>,
    pt: Option<Map<String, Value>>,
    m3: Option<Map<String, Value>>,
    y1: Option<Map<String, Value>>,
}

/// (numerator, denominator) per indicator id, per (HSA id, year), with the filter applied.
fn recompute(e: &common::e2e::E2e, female_only: bool, joint_col: Option<&str>) -> BTreeMap<(String, i32), BTreeMap<&'static str, (u32, u32)>> {
    let emu = &e.env.emulator;
    let hsa = |code: &str| format!("SE2321000156-FT{}", &code[2..]);
    let mut courses: BTreeMap<(String, String, NaiveDate), Course> = BTreeMap::new();
    let date = |r: &registerbrygga::sandbox::stratum::EmulatedRegistration| NaiveDate::parse_from_str(r.event_date.as_deref().unwrap(), "%Y-%m-%d").unwrap();
    for r in emu.registrations(104, "FVPat") {
        courses.insert((hsa(&r.unit_code), r.subject_key.clone().unwrap(), date(&r)), Course { fv: r.columns.clone(), ..Default::default() });
    }
    for form in ["FVPT", "M3Pat", "Y1Pat"] {
        for r in emu.registrations(104, form) {
            let (u, s, d) = (hsa(&r.unit_code), r.subject_key.clone().unwrap(), date(&r));
            // The course: the patient's latest first visit at the unit on or before this date.
            let Some((_, c)) = courses.range_mut((u.clone(), s.clone(), NaiveDate::MIN)..=(u, s, d)).next_back() else { continue };
            match form {
                "FVPT" => c.pt = Some(r.columns.clone()),
                "M3Pat" => c.m3 = Some(r.columns.clone()),
                _ => c.y1 = Some(r.columns.clone()),
            }
        }
    }
    let n = |m: &Option<Map<String, Value>>, c: &str| m.as_ref().and_then(|m| m.get(c)).and_then(Value::as_f64);
    let b = |m: &Option<Map<String, Value>>, c: &str| m.as_ref().and_then(|m| m.get(c)).and_then(Value::as_bool);
    let mut out: BTreeMap<(String, i32), BTreeMap<&'static str, (u32, u32)>> = BTreeMap::new();
    for ((unit, subject, fv), c) in &courses {
        let female = (subject.as_bytes()[10] - b'0') % 2 == 0;
        if female_only && !female {
            continue;
        }
        if let Some(col) = joint_col {
            if b(&c.pt, col) != Some(true) {
                continue;
            }
        }
        let cell = out.entry((unit.clone(), fv.year())).or_default();
        let mut add = |id: &'static str, hit: Option<bool>| {
            if let Some(h) = hit {
                let e = cell.entry(id).or_insert((0, 0));
                e.0 += u32::from(h);
                e.1 += 1;
            }
        };
        let fvm = Some(c.fv.clone());
        add("completed-school", Some(c.m3.is_some()));
        let (act, ex) = (n(&c.y1, "Y1_ActivityMinutesWeek"), n(&c.y1, "Y1_ExerciseMinutesWeek"));
        add("fysisk-aktivitet", (act.is_some() || ex.is_some()).then(|| act.unwrap_or(0.0) + 2.0 * ex.unwrap_or(0.0) >= 150.0));
        add("pain-nrs", n(&fvm, "FV_PainNRS").zip(n(&c.y1, "Y1_PainNRS")).map(|(a, y)| a - y >= 2.0));
        add("eqvas", n(&fvm, "FV_EQVAS").zip(n(&c.y1, "Y1_EQVAS")).map(|(a, y)| a < 90.0 && y - a >= 10.0));
        add("xray", b(&c.pt, "PT_XrayDone"));
        add("no-prior-medical-joint-help", b(&fvm, "FV_NoPriorMedicalHelp"));
        add("stop-medication", match (b(&fvm, "FV_OAMedication"), b(&c.m3, "M3_OAMedication")) {
            (Some(true), Some(m3)) => Some(!m3),
            _ => None,
        });
    }
    out
}

async fn indicators_match_the_register(backend: Backend) {
    let e = start(backend, 400, "sar_indicators").await;
    let r = e.run("artrosregistret").await;
    assert_eq!(r.status, "ok", "{r:?}");
    e.deliver().await;
    add_user(&e.app, "lasa", Role::Reader, false).await;
    let admin = serve(AdminState::new(e.app.clone())).await;
    let c = Client::login(&admin.base, "lasa", PASSWORD).await;

    for (query, female_only, joint) in [("", false, None), ("?sex=kvinna&joint=knee", true, Some("PT_JointKnee"))] {
        let api = c.get(&format!("/api/v1/sar/indicators{query}")).await;
        assert_eq!(api.status, 200, "{}", api.body);
        let v: Value = serde_json::from_str(&api.body).unwrap();
        let rows = v[0]["rows"].as_array().unwrap();
        let expected = recompute(&e, female_only, joint);
        assert!(!expected.is_empty());
        assert_eq!(rows.len(), expected.len(), "one row per unit and year of first visit");
        let mut compared = 0;
        for row in rows {
            let key = (row["unit"].as_str().unwrap().to_string(), row["year"].as_i64().unwrap() as i32);
            let want = &expected[&key];
            for ind in row["indicators"].as_array().unwrap() {
                let id = ind["id"].as_str().unwrap();
                let got = (ind["numerator"].as_u64().unwrap() as u32, ind["denominator"].as_u64().unwrap() as u32);
                match id {
                    "age" => assert_eq!(got.1, want["completed-school"].1, "mean age over every course"),
                    "eqindex" => assert_eq!(ind["note"].as_str().map(|s| s.starts_with("index saknas")), Some(true)),
                    _ => {
                        let w = want.get(id).copied().unwrap_or((0, 0));
                        assert_eq!(got, w, "{key:?} {id}");
                        if id == "eqvas" && w.1 < 10 {
                            assert!(ind["value"].is_null(), "not shown below 10 registrations");
                        } else if w.1 > 0 {
                            let pct = 100.0 * w.0 as f64 / w.1 as f64;
                            assert!((ind["value"].as_f64().unwrap() - pct).abs() < 1e-9, "{key:?} {id}");
                        }
                        compared += 1;
                    }
                }
            }
        }
        assert!(compared > 10, "{compared} values compared");
    }
    // The page shows them per clinic, with targets.
    let page = c.get_html("/artrosregistret/indikatorer").await;
    assert_eq!(page.status, 200);
    for text in ["Artrosregistrets indikatorer", "Registrerat 3-månadersbesök", "≥ 80 %", "index saknas", "SE2321000156-FT01"] {
        assert!(page.body.contains(text), "{text} on the page");
    }
    // M19 at another site (an archetype of the population) is in the data-quality view of the
    // Täckningsgrad page: per unit, not guessed into a course.
    let pop = &e.env.population;
    let unit = pop.truth().patient(registerbrygga::sandbox::journal::archetype::SAR_M19_OTHER_SITE).diagnoses[0].unit.clone();
    let cov = c.get_html("/tackningsgrad").await;
    assert_eq!(cov.status, 200);
    let section = &cov.body[cov.body.find("Datakvalitet").expect("a data-quality section")..];
    assert!(section.contains(&format!("({unit})</td>")), "{section}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indicators_match_the_register_sqlite() {
    indicators_match_the_register(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indicators_match_the_register_postgres() {
    indicators_match_the_register(Backend::Postgres).await;
}
