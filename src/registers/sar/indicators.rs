//! The register's own indicators ("Artrosregistrets indikatorer"), per clinic and year of first
//! visit, computed from what was sent — so a clinic sees them before the register shows them.
//! Pure: the caller hands in the registrations the register holds (their delivered payloads).
//!
//! Definitions and targets: the register's public statistics texts
//! (`shared/research/sar-register-facts.md`, source: Registercentrum's `stratum-widgets`,
//! `boa/statistics.js`). A course is a first-visit patient registration (FVPat); its follow-ups
//! are the patient's registrations at the same unit with the latest first visit on or before
//! their date. Which register column holds which answer is data (`[indicators]` in the
//! connector's mapping.toml), as the column names are the register's metadata.
//!
//! - `completed-school` (3 months): share of courses with a 3-month patient registration; ≥ 80 %.
//! - `fysisk-aktivitet` (1 year): share with activity minutes + 2 × exercise minutes ≥ 150 a
//!   week, of the 1-year registrations reporting either; ≥ 80 %.
//! - `pain-nrs` (1 year): share with NRS improved ≥ 2 from the first visit.
//! - `eqvas` (1 year): share with EQ VAS improved ≥ 10; those at ≥ 90 at the first visit count
//!   as unchanged; not shown for fewer than 10 registrations at the occasion; ≥ 30 %.
//! - `eqindex` (1 year): needs an EQ-5D-5L value set; no Swedish value set is cited in our
//!   sources, so it is shown as "index saknas", never computed with an invented one.
//! - `xray` (first visit): share X-rayed before basic treatment; at most 50–70 %.
//! - `age` (first visit): mean age at the first visit; ≤ 58 years.
//! - `no-prior-medical-joint-help` (first visit): share who came directly; ≥ 15 %.
//! - `stop-medication` (3 months): of those on joint medication at the first visit who answered
//!   at 3 months, the share who stopped; ≥ 30 %.

use crate::outbox::Payload;
use chrono::{Datelike, NaiveDate};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// One registration the register holds.
#[derive(Clone, Debug)]
pub struct Held {
    pub unit: String,
    pub form: String,
    pub payload: Payload,
}

/// Filters of the register's reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `kvinna` or `man`.
    pub sex: Option<String>,
    /// `-54`, `55-64`, `65-74`, `75-` (provisional bands: the register's are not public).
    pub age_group: Option<String>,
    /// A joint name of the mapping (`hip`, `knee`, `hand`).
    pub joint: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IndicatorValue {
    pub id: &'static str,
    pub name: &'static str,
    pub occasion: &'static str,
    pub numerator: u32,
    pub denominator: u32,
    /// Percent (share indicators) or the mean (age); `None` when not shown.
    pub value: Option<f64>,
    /// Why no value is shown (small unit, no value set, no data).
    pub note: Option<String>,
    pub target: &'static str,
    /// The value meets the target (None when there is no target or no value).
    pub meets_target: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IndicatorRow {
    pub unit: String,
    pub year: i32,
    pub courses: u32,
    pub indicators: Vec<IndicatorValue>,
}

/// The sex (from the personnummer's second-last digit: odd = man) and birth date of a
/// 12-digit SubjectKey (samordningsnummer: day + 60).
fn person(subject: &str) -> Option<(bool, NaiveDate)> {
    let b = subject.as_bytes();
    if b.len() != 12 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| subject[r].parse::<u32>().ok();
    let mut day = n(6..8)?;
    if day > 60 {
        day -= 60;
    }
    let birth = NaiveDate::from_ymd_opt(n(0..4)? as i32, n(4..6)?, day)?;
    Some((((b[10] - b'0') % 2) == 1, birth))
}

fn age_at(birth: NaiveDate, d: NaiveDate) -> i32 {
    let mut a = d.year() - birth.year();
    if (d.month(), d.day()) < (birth.month(), birth.day()) {
        a -= 1;
    }
    a
}

/// The age band of the filters.
pub fn age_group(age: i32) -> &'static str {
    match age {
        ..=54 => "-54",
        55..=64 => "55-64",
        65..=74 => "65-74",
        _ => "75-",
    }
}

struct Course<'a> {
    unit: String,
    first_visit: NaiveDate,
    male: bool,
    age: i32,
    fv: &'a Payload,
    pt: Option<&'a Payload>,
    m3: Option<&'a Payload>,
    y1: Option<&'a Payload>,
}

fn num(p: Option<&Payload>, col: Option<&String>) -> Option<f64> {
    p?.get(col?)?.as_f64()
}

fn flag(p: Option<&Payload>, col: Option<&String>) -> Option<bool> {
    p?.get(col?)?.as_bool()
}

/// Compute the indicators per unit and year of first visit. `columns` maps the indicator
/// inputs (`[indicators]` of mapping.toml) to register columns; `subject` and `event_date` are
/// the envelope columns.
pub fn compute(held: &[Held], columns: &BTreeMap<String, String>, subject: &str, event_date: &str, filter: &Filter) -> Vec<IndicatorRow> {
    let date = |p: &Payload| p.get(event_date).and_then(Value::as_str).and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok());
    let subj = |p: &Payload| p.get(subject).and_then(Value::as_str).map(str::to_string);
    let mut courses: BTreeMap<(String, String, NaiveDate), Course> = BTreeMap::new();
    for h in held.iter().filter(|h| h.form == "FVPat") {
        let (Some(s), Some(d)) = (subj(&h.payload), date(&h.payload)) else { continue };
        let Some((male, birth)) = person(&s) else { continue };
        courses.insert((h.unit.clone(), s, d), Course { unit: h.unit.clone(), first_visit: d, male, age: age_at(birth, d), fv: &h.payload, pt: None, m3: None, y1: None });
    }
    for h in held.iter().filter(|h| h.form != "FVPat") {
        let (Some(s), Some(d)) = (subj(&h.payload), date(&h.payload)) else { continue };
        // The course: the latest first visit at the unit on or before this registration.
        let key = courses.range((h.unit.clone(), s.clone(), NaiveDate::MIN)..=(h.unit.clone(), s.clone(), d)).next_back().map(|(k, _)| k.clone());
        let Some(c) = key.and_then(|k| courses.get_mut(&k)) else { continue };
        match h.form.as_str() {
            "FVPT" if d == c.first_visit => c.pt = Some(&h.payload),
            "M3Pat" => c.m3 = Some(&h.payload),
            "Y1Pat" => c.y1 = Some(&h.payload),
            _ => {}
        }
    }
    let keep = |c: &Course| {
        filter.sex.as_deref().is_none_or(|s| (s == "man") == c.male)
            && filter.age_group.as_deref().is_none_or(|g| g == age_group(c.age))
            && filter.joint.as_deref().is_none_or(|j| flag(c.pt, columns.get(&format!("joint_{j}"))) == Some(true))
    };
    let mut groups: BTreeMap<(String, i32), Vec<&Course>> = BTreeMap::new();
    for c in courses.values().filter(|c| keep(c)) {
        groups.entry((c.unit.clone(), c.first_visit.year())).or_default().push(c);
    }
    groups
        .into_iter()
        .map(|((unit, year), cs)| IndicatorRow { unit, year, courses: cs.len() as u32, indicators: indicators(&cs, columns) })
        .collect()
}

fn share(id: &'static str, name: &'static str, occasion: &'static str, n: u32, d: u32, min: u32, target: &'static str, goal: Option<f64>, at_most: bool) -> IndicatorValue {
    let (value, note) = if d == 0 {
        (None, Some("inga registreringar".to_string()))
    } else if d < min {
        (None, Some(format!("visas inte: färre än {min} registreringar")))
    } else {
        (Some(100.0 * n as f64 / d as f64), None)
    };
    let meets_target = match (value, goal) {
        (Some(v), Some(g)) => Some(if at_most { v <= g } else { v >= g }),
        _ => None,
    };
    IndicatorValue { id, name, occasion, numerator: n, denominator: d, value, note, target, meets_target }
}

fn indicators(cs: &[&Course], columns: &BTreeMap<String, String>) -> Vec<IndicatorValue> {
    let col = |k: &str| columns.get(k);
    let count = |f: &dyn Fn(&Course) -> Option<bool>| {
        let answered: Vec<bool> = cs.iter().filter_map(|c| f(c)).collect();
        (answered.iter().filter(|b| **b).count() as u32, answered.len() as u32)
    };
    let (m3n, m3d) = count(&|c| Some(c.m3.is_some()));
    let (pan, pad) = count(&|c| {
        let (a, e) = (num(c.y1, col("y1_activity_minutes")), num(c.y1, col("y1_exercise_minutes")));
        (a.is_some() || e.is_some()).then(|| a.unwrap_or(0.0) + 2.0 * e.unwrap_or(0.0) >= 150.0)
    });
    let (nrn, nrd) = count(&|c| Some(num(Some(c.fv), col("fv_pain_nrs"))? - num(c.y1, col("y1_pain_nrs"))? >= 2.0));
    let (vn, vd) = count(&|c| {
        let (a, b) = (num(Some(c.fv), col("fv_eq_vas"))?, num(c.y1, col("y1_eq_vas"))?);
        Some(a < 90.0 && b - a >= 10.0)
    });
    let (xn, xd) = count(&|c| flag(c.pt, col("fv_xray")));
    let (dn, dd) = count(&|c| flag(Some(c.fv), col("fv_no_prior_medical_help")));
    let (sn, sd) = count(&|c| match (flag(Some(c.fv), col("fv_medication")), flag(c.m3, col("m3_medication"))) {
        (Some(true), Some(m3)) => Some(!m3),
        _ => None,
    });
    let ages: Vec<i32> = cs.iter().map(|c| c.age).collect();
    let mean = (!ages.is_empty()).then(|| ages.iter().sum::<i32>() as f64 / ages.len() as f64);
    vec![
        share("completed-school", "Registrerat 3-månadersbesök", "3 månader", m3n, m3d, 1, "≥ 80 %", Some(80.0), false),
        share("fysisk-aktivitet", "Fysiskt aktiva ≥ 150 aktivitetsminuter/vecka", "1 år", pan, pad, 1, "≥ 80 %", Some(80.0), false),
        share("pain-nrs", "Smärta NRS förbättrad ≥ 2", "1 år", nrn, nrd, 1, "–", None, false),
        share("eqvas", "EQ VAS förbättrad ≥ 10", "1 år", vn, vd, 10, "≥ 30 %", Some(30.0), false),
        IndicatorValue {
            id: "eqindex",
            name: "EQ-5D-index förbättrat ≥ 0,1",
            occasion: "1 år",
            numerator: 0,
            denominator: 0,
            value: None,
            note: Some("index saknas: inget citerbart svenskt värdeset för EQ-5D-5L".into()),
            target: "≥ 30 %",
            meets_target: None,
        },
        share("xray", "Röntgade före grundbehandling", "Första besök", xn, xd, 1, "högst 50–70 %", Some(70.0), true),
        IndicatorValue {
            id: "age",
            name: "Medelålder vid start",
            occasion: "Första besök",
            numerator: ages.iter().sum::<i32>().max(0) as u32,
            denominator: ages.len() as u32,
            value: mean,
            note: None,
            target: "≤ 58 år",
            meets_target: mean.map(|m| m <= 58.0),
        },
        share("no-prior-medical-joint-help", "Kom direkt utan läkarbesök", "Första besök", dn, dd, 1, "≥ 15 %", Some(15.0), false),
        share("stop-medication", "Slutat med ledrelaterade läkemedel", "3 månader", sn, sd, 1, "≥ 30 %", Some(30.0), false),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sex_and_age_from_the_subject_key() {
        assert_eq!(person("195503152386").map(|p| p.0), Some(false));
        assert_eq!(person("195503152396").map(|p| p.0), Some(true));
        assert_eq!(person("195503752386").map(|p| p.1), NaiveDate::from_ymd_opt(1955, 3, 15), "samordningsnummer");
        assert_eq!(age_group(58), "55-64");
    }
}
