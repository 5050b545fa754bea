//! Checks outgoing column values against the register's metadata, before any HTTP call.
//!
//! Pure functions: the client runs them on every payload so a value the register would refuse
//! becomes a rejection naming the column (no request, no retry), and the emulator runs the same
//! rules on what it receives, because both follow one contract (`conformance/stratum/README.md`).
//! Messages name the column and the rule, never the value: values are personal data.

use super::metadata::{Domain, Form, Question, RegisterMetadata};
use serde_json::{Map, Value};
use std::fmt;

/// Whether the columns are a whole new registration or the changed columns of an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// POST: every mandatory column must be present and non-null.
    Create,
    /// PUT: only the columns given are checked; a mandatory one may not be cleared.
    Update,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    UnknownColumn,
    MissingMandatory,
    WrongType,
    NotInDomain,
    OutOfRange,
    SubjectKeyFormat,
    /// The metadata names a domain it does not describe: nothing can be checked.
    UnknownDomain,
}

impl Rule {
    /// Stable code for the register envelope's `code` field.
    pub fn code(self) -> &'static str {
        match self {
            Rule::UnknownColumn => "UnknownColumn",
            Rule::MissingMandatory => "MissingMandatory",
            Rule::WrongType => "WrongType",
            Rule::NotInDomain => "NotInDomain",
            Rule::OutOfRange => "OutOfRange",
            Rule::SubjectKeyFormat => "InvalidSubjectKey",
            Rule::UnknownDomain => "UnknownDomain",
        }
    }
}

/// One refused column. `detail` describes the rule (type, bounds, domain name), not the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub column: String,
    pub rule: Rule,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.detail)
    }
}

/// All violations, joined for a rejection reason or an error message.
pub fn describe(violations: &[Violation]) -> String {
    violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("; ")
}

fn v(column: &str, rule: Rule, detail: impl Into<String>) -> Violation {
    Violation { column: column.to_string(), rule, detail: detail.into() }
}

/// Check `columns` for `form`. Returns every violation, in column order, missing columns last.
pub fn validate(meta: &RegisterMetadata, form: &Form, columns: &Map<String, Value>, mode: Mode) -> Vec<Violation> {
    let mut out = vec![];
    for (name, value) in columns {
        match form.question(name) {
            None => out.push(v(name, Rule::UnknownColumn, format!("not a column of form {}", form.form_name))),
            Some(q) => {
                if let Err(e) = check_value(meta, q, value) {
                    out.push(e);
                }
            }
        }
    }
    if mode == Mode::Create {
        for q in form.questions.iter().filter(|q| q.is_mandatory) {
            if !columns.contains_key(&q.column_name) {
                out.push(v(&q.column_name, Rule::MissingMandatory, "mandatory but missing"));
            }
        }
    }
    out
}

/// Check one value against its question (mandatory, SubjectKey format) and domain.
pub fn check_value(meta: &RegisterMetadata, q: &Question, value: &Value) -> Result<(), Violation> {
    let col = q.column_name.as_str();
    if value.is_null() {
        // Null clears an optional answer; a mandatory one cannot be empty.
        return if q.is_mandatory { Err(v(col, Rule::MissingMandatory, "mandatory but empty")) } else { Ok(()) };
    }
    let Some(domain) = meta.domain(q.domain.domain_id) else {
        return Err(v(col, Rule::UnknownDomain, format!("domain {} is not in the register metadata", q.domain.domain_id)));
    };
    check_domain(col, domain, value)?;
    if q.mapped_to.as_deref() == Some("SubjectKey") && !is_subject_key(value) {
        return Err(v(col, Rule::SubjectKeyFormat, "SubjectKey must be 12 digits (YYYYMMDDNNNN)"));
    }
    if q.mapped_to.as_deref() == Some("EventDate") && !value.as_str().is_some_and(is_date) {
        return Err(v(col, Rule::WrongType, "EventDate must be a date YYYY-MM-DD"));
    }
    Ok(())
}

fn check_domain(col: &str, d: &Domain, value: &Value) -> Result<(), Violation> {
    let type_ok = match d.data_type.as_str() {
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "decimal" => value.is_number(),
        "date" => value.as_str().is_some_and(is_date),
        "string" => value.is_string(),
        other => return Err(v(col, Rule::UnknownDomain, format!("domain {} has unknown data type {other}", d.domain_id))),
    };
    if !type_ok {
        let expected = match d.data_type.as_str() {
            "date" => "a date YYYY-MM-DD",
            "boolean" => "true or false",
            "integer" => "an integer",
            "decimal" => "a number",
            _ => "a string",
        };
        return Err(v(col, Rule::WrongType, format!("wrong type, expected {expected}")));
    }
    if d.is_enumerated {
        let ok = d.domain_values.iter().any(|dv| dv.is_active && same_code(&dv.value_code, value));
        if !ok {
            return Err(v(col, Rule::NotInDomain, format!("not an active value of domain {} ({})", d.domain_name, d.domain_id)));
        }
    }
    if let Some(x) = value.as_f64() {
        let below = d.min.is_some_and(|m| x < m);
        let above = d.max.is_some_and(|m| x > m);
        if below || above {
            let bound = |b: Option<f64>| b.map(|b| b.to_string()).unwrap_or_default();
            return Err(v(col, Rule::OutOfRange, format!("outside the range {}..{} of domain {}", bound(d.min), bound(d.max), d.domain_id)));
        }
    }
    Ok(())
}

/// A `ValueCode` equals a value when both are the same number or the same string.
pub fn same_code(code: &Value, value: &Value) -> bool {
    match (code, value) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        _ => false,
    }
}

/// Two column values are the same answer (5 and 5.0 are; "5" and 5 are not).
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn is_subject_key(value: &Value) -> bool {
    value.as_str().is_some_and(|s| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()))
}

/// Exactly `YYYY-MM-DD` and a real calendar date.
pub fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// A value as written in a registration query (`Col eq value`); None for values a query cannot
/// carry (null, arrays, objects, strings with the separator).
pub fn query_literal(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.contains(',') && !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sar() -> RegisterMetadata {
        RegisterMetadata::from_json(include_bytes!("../../../conformance/stratum/sar-104.json")).unwrap()
    }

    fn fv_pat() -> Map<String, Value> {
        let v = json!({
            "SubjectKey": "191212121212", "EventDate": "2026-03-02", "FV_PainNRS": 6,
            "FV_EQ5D_Mobility": 2, "FV_EQ5D_SelfCare": 1, "FV_EQ5D_UsualActivities": 2,
            "FV_EQ5D_PainDiscomfort": 3, "FV_EQ5D_AnxietyDepression": 1, "FV_EQVAS": 70,
            "FV_WantsSurgery": false, "FV_MainJoint": 2, "FV_WeightKg": 81.5, "FV_ASES_Pain": 65.0
        });
        v.as_object().unwrap().clone()
    }

    fn check(cols: Map<String, Value>, mode: Mode) -> Vec<Violation> {
        let m = sar();
        validate(&m, m.form("FVPat").unwrap(), &cols, mode)
    }

    fn one(cols: Map<String, Value>, mode: Mode) -> Violation {
        let vs = check(cols, mode);
        assert_eq!(vs.len(), 1, "{vs:?}");
        vs.into_iter().next().unwrap()
    }

    #[test]
    fn a_complete_valid_payload_passes() {
        assert!(check(fv_pat(), Mode::Create).is_empty());
    }

    #[test]
    fn unknown_column_is_named() {
        let mut p = fv_pat();
        p.insert("FV_Shoe".into(), json!(1));
        let e = one(p, Mode::Create);
        assert_eq!((e.column.as_str(), e.rule), ("FV_Shoe", Rule::UnknownColumn));
        let mut p = fv_pat();
        p.insert("UnitID".into(), json!(7101));
        assert_eq!(one(p, Mode::Create).column, "UnitID");
    }

    #[test]
    fn mandatory_columns_on_create_only() {
        let mut p = fv_pat();
        p.remove("FV_EQVAS");
        let e = one(p, Mode::Create);
        assert_eq!((e.column.as_str(), e.rule), ("FV_EQVAS", Rule::MissingMandatory));
        // An update carries only what changed.
        let p: Map<String, Value> = json!({"FV_PainNRS": 3}).as_object().unwrap().clone();
        assert!(check(p, Mode::Update).is_empty());
        // But it may not clear a mandatory answer; clearing an optional one is fine.
        let p: Map<String, Value> = json!({"FV_PainNRS": null, "FV_WeightKg": null}).as_object().unwrap().clone();
        let e = one(p, Mode::Update);
        assert_eq!((e.column.as_str(), e.rule), ("FV_PainNRS", Rule::MissingMandatory));
    }

    #[test]
    fn enumerated_values() {
        let mut p = fv_pat();
        p.insert("FV_MainJoint".into(), json!(4));
        let e = one(p, Mode::Create);
        assert_eq!((e.column.as_str(), e.rule), ("FV_MainJoint", Rule::NotInDomain));
        let mut p = fv_pat();
        p.insert("FV_EQ5D_Mobility".into(), json!("2"));
        assert_eq!(one(p, Mode::Create).rule, Rule::WrongType);
        // String codes (the PVK indicator list).
        let pvk = RegisterMetadata::from_json(include_bytes!("../../../conformance/stratum/pvk-aggregate.json")).unwrap();
        let f = pvk.form("Indikatorvarde").unwrap();
        let q = f.question("Q_Indicator").unwrap();
        assert!(check_value(&pvk, q, &json!("KOL06")).is_ok());
        assert_eq!(check_value(&pvk, q, &json!("KOL99")).unwrap_err().rule, Rule::NotInDomain);
    }

    #[test]
    fn inactive_codes_are_refused() {
        let mut m = sar();
        let d = m.domains.iter_mut().find(|d| d.domain_id == 10401).unwrap();
        d.domain_values[2].is_active = false;
        let code = d.domain_values[2].value_code.clone();
        let q = m.form("FVPat").unwrap().question("FV_MainJoint").unwrap().clone();
        assert_eq!(check_value(&m, &q, &code).unwrap_err().rule, Rule::NotInDomain);
    }

    #[test]
    fn min_and_max() {
        for (col, val) in [("FV_PainNRS", json!(11)), ("FV_PainNRS", json!(-1)), ("FV_EQVAS", json!(101)), ("FV_WeightKg", json!(24.9))] {
            let mut p = fv_pat();
            p.insert(col.into(), val);
            let e = one(p, Mode::Create);
            assert_eq!((e.column.as_str(), e.rule), (col, Rule::OutOfRange));
        }
        let mut p = fv_pat();
        p.insert("FV_PainNRS".into(), json!(10));
        p.insert("FV_EQVAS".into(), json!(0));
        assert!(check(p, Mode::Create).is_empty(), "bounds are inclusive");
    }

    #[test]
    fn types() {
        let cases = [
            ("FV_WantsSurgery", json!(1)),
            ("FV_WantsSurgery", json!("true")),
            ("FV_PainNRS", json!(5.5)),
            ("FV_PainNRS", json!("5")),
            ("FV_WeightKg", json!("81.5")),
            ("EventDate", json!("2026-3-2")),
            ("EventDate", json!("2026-02-30")),
            ("EventDate", json!("20260302")),
            ("EventDate", json!(20260302)),
        ];
        for (col, val) in cases {
            let mut p = fv_pat();
            p.insert(col.into(), val.clone());
            let e = one(p, Mode::Create);
            assert_eq!((e.column.as_str(), e.rule), (col, Rule::WrongType), "{val}");
        }
        let mut p = fv_pat();
        p.insert("FV_WeightKg".into(), json!(80));
        assert!(check(p, Mode::Create).is_empty(), "an integer is a decimal");
    }

    #[test]
    fn subject_key_is_twelve_digits() {
        for bad in [json!("19121212-1212"), json!("1212121212"), json!("1912121212120"), json!(191212121212u64), json!("19121212121X")] {
            let mut p = fv_pat();
            p.insert("SubjectKey".into(), bad.clone());
            let e = one(p, Mode::Create);
            assert_eq!(e.column, "SubjectKey");
            assert!(matches!(e.rule, Rule::SubjectKeyFormat | Rule::WrongType), "{bad}");
        }
    }

    #[test]
    fn messages_never_carry_the_value() {
        let mut p = fv_pat();
        p.insert("SubjectKey".into(), json!("19121212121"));
        p.insert("FV_PainNRS".into(), json!(77));
        p.insert("FV_MainJoint".into(), json!(55));
        p.insert("FV_EQVAS".into(), json!("hemligt"));
        let all = describe(&check(p, Mode::Create));
        for secret in ["19121212121", "77", "55", "hemligt"] {
            assert!(!all.contains(secret), "{all}");
        }
        assert!(all.contains("FV_PainNRS") && all.contains("FV_MainJoint") && all.contains("SubjectKey"));
    }

    #[test]
    fn query_literals_and_equality() {
        assert_eq!(query_literal(&json!("2026-03-02")).as_deref(), Some("2026-03-02"));
        assert_eq!(query_literal(&json!(7)).as_deref(), Some("7"));
        assert_eq!(query_literal(&json!("a,b")), None);
        assert_eq!(query_literal(&Value::Null), None);
        assert!(same_value(&json!(5), &json!(5.0)));
        assert!(!same_value(&json!(5), &json!("5")));
    }
}
