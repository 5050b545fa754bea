//! Aggregates out: result rows → Stratum registrations of form `Indikatorvarde` (form 2179),
//! one per unit, month and indicator. Only numbers leave: no patient list, no pseudonym.
//!
//! Decisions:
//! - Regional measures (register code `REG…`: FaR, vårdval visits and patients per FTE) are
//!   never sent, whatever the register's metadata says: they are not PVK indicators.
//! - Suppressed (small-cell) and not-computable cells are not sent. An earlier registration of a
//!   cell that becomes suppressed is retracted by `outbox::reconcile`, because it is no longer
//!   among the intents.
//! - Units without a binding (e.g. vårdcentraler delivered as files only) are not sent.
//! - When two rule years cover the same month, the one sent is the rule year equal to the
//!   month's year, else the latest earlier one, else the earliest later one (the idempotency key
//!   has no rule year, so a register holds one value per cell).
//! - `Q_Date` is the computation date (`today`), so a recomputation that changes nothing but the
//!   date still updates the registration (PUT, never a second POST).

use crate::config::UnitBinding;
use crate::outbox::{Payload, RegisterIntent};
use crate::registers::metadata::RegisterMetadata;
use crate::outbox::{PvkResultRow, RecordKey};
use chrono::NaiveDate;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

pub const FORM_NAME: &str = "Indikatorvarde";
const COLUMNS: [&str; 7] = ["Q_Unit", "Q_Year", "Q_Month", "Q_Indicator", "Q_Varde", "Q_Namnare", "Q_Date"];

/// A cell that is not sent, and why (no personal data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub unit: String,
    pub year: i32,
    pub month: u32,
    pub indicator: String,
    pub rule_year: i32,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AggregatePlan {
    pub intents: Vec<RegisterIntent>,
    pub skipped: Vec<Skipped>,
}

/// The idempotency key of one aggregate cell.
pub fn idem_key(unit_code: &str, year: i32, month: u32, indicator: &str) -> String {
    format!("pvk|{unit_code}|{year}|{month}|{indicator}")
}

/// The registrations the register should hold for these results (see [`aggregate_plan`]).
pub fn aggregate_intents(results: &[PvkResultRow], metadata: &RegisterMetadata, bindings: &[UnitBinding], register: &str, today: NaiveDate) -> Vec<RegisterIntent> {
    aggregate_plan(results, metadata, bindings, register, today).intents
}

/// Registrations to send, plus every cell left out with the reason (for the audit detail).
pub fn aggregate_plan(results: &[PvkResultRow], metadata: &RegisterMetadata, bindings: &[UnitBinding], register: &str, today: NaiveDate) -> AggregatePlan {
    let mut plan = AggregatePlan::default();
    let skip = |plan: &mut AggregatePlan, r: &PvkResultRow, reason: &str| {
        plan.skipped.push(Skipped { unit: r.unit.clone(), year: r.year, month: r.month, indicator: r.indicator.clone(), rule_year: r.rule_year, reason: reason.to_string() })
    };
    let (regional, results): (Vec<&PvkResultRow>, Vec<&PvkResultRow>) = results.iter().partition(|r| super::is_regional_code(&r.indicator));
    for r in regional {
        skip(&mut plan, r, "regional measure: never sent to the PVK register");
    }
    let Some(form) = metadata.form(FORM_NAME) else {
        for r in results {
            skip(&mut plan, r, "the register has no form Indikatorvarde");
        }
        return plan;
    };
    let missing: Vec<&str> = COLUMNS.iter().copied().filter(|c| !form.questions.iter().any(|q| q.column_name == *c)).collect();
    if !missing.is_empty() {
        let reason = format!("form Indikatorvarde lacks column(s) {}", missing.join(", "));
        for r in results {
            skip(&mut plan, r, &reason);
        }
        return plan;
    }
    let indicator_values: Option<BTreeSet<String>> = form
        .questions
        .iter()
        .find(|q| q.column_name == "Q_Indicator")
        .and_then(|q| metadata.domain(q.domain.domain_id))
        .filter(|d| d.is_enumerated)
        .map(|d| d.domain_values.iter().filter(|v| v.is_active).map(|v| super::json_code(&v.value_code)).collect());

    // One row per cell: choose the rule year (see module docs).
    let mut chosen: BTreeMap<(String, i32, u32, String), &PvkResultRow> = BTreeMap::new();
    for r in results {
        let k = (r.unit.clone(), r.year, r.month, r.indicator.clone());
        match chosen.get(&k) {
            Some(prev) if rank(prev.rule_year, r.year) <= rank(r.rule_year, r.year) => skip(&mut plan, r, "another rule year is delivered for this month"),
            Some(prev) => {
                let prev = *prev;
                skip(&mut plan, prev, "another rule year is delivered for this month");
                chosen.insert(k, r);
            }
            None => {
                chosen.insert(k, r);
            }
        }
    }
    for r in chosen.values() {
        let Some(binding) = bindings.iter().find(|b| b.hsa_id == r.unit) else {
            skip(&mut plan, r, "unit has no binding to a register UnitCode");
            continue;
        };
        if !r.computable {
            skip(&mut plan, r, "not computable");
            continue;
        }
        if r.suppressed {
            skip(&mut plan, r, "suppressed (small-cell protection)");
            continue;
        }
        let (Some(num), Some(den)) = (r.numerator, r.denominator) else {
            skip(&mut plan, r, "no numbers");
            continue;
        };
        if let Some(values) = &indicator_values {
            if !values.contains(&r.indicator) {
                skip(&mut plan, r, "indicator is not in the register's Indikator domain");
                continue;
            }
        }
        let mut payload = Payload::new();
        payload.insert("Q_Unit".into(), json!(binding.unit_code));
        payload.insert("Q_Year".into(), json!(r.year));
        payload.insert("Q_Month".into(), json!(r.month));
        payload.insert("Q_Indicator".into(), json!(r.indicator));
        payload.insert("Q_Varde".into(), json!(num));
        payload.insert("Q_Namnare".into(), json!(den));
        payload.insert("Q_Date".into(), json!(today.format("%Y-%m-%d").to_string()));
        let mut lookup = Payload::new();
        for c in ["Q_Unit", "Q_Year", "Q_Month", "Q_Indicator"] {
            lookup.insert(c.into(), payload[c].clone());
        }
        plan.intents.push(RegisterIntent {
            key: RecordKey {
                idem_key: idem_key(&binding.unit_code, r.year, r.month, &r.indicator),
                register: register.to_string(),
                connector: r.connector.clone(),
                unit: r.unit.clone(),
                form: form.form_name.clone(),
                subject: Some(format!("{} {}-{:02} {}", binding.unit_code, r.year, r.month, r.indicator)),
            },
            payload,
            lookup,
            detail: json!({
                "indicator": r.indicator,
                "rule_year": r.rule_year,
                "unit_code": binding.unit_code,
                "year": r.year,
                "month": r.month,
                "numerator": num,
                "denominator": den,
            }),
        });
    }
    plan
}

/// Lower is preferred: the month's own year, then earlier years (latest first), then later ones.
fn rank(rule_year: i32, year: i32) -> (u8, i32) {
    if rule_year == year {
        (0, 0)
    } else if rule_year < year {
        (1, year - rule_year)
    } else {
        (2, rule_year - year)
    }
}
