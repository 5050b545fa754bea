//! Where a registration is built: one form (SAR: FVPat, FVPT, M3Pat, M3PT or Y1Pat) of one
//! course on its occasion day, column by column as the mapping says, each value checked against
//! the column's domain. Values that do not fit are left out and reported; what stays missing of
//! the mandatory columns is returned so the caller can decide intent vs. worklist.

use super::episode::{answer, count_activities, first_visit_answer, Episode, Journal};
use super::mapping::{convert_number, fit, ColumnSpec, Conversion, FormSpec, Mapping, Occasion, Source};
use super::{Note, NoteKind};
use crate::model::ObservationValue;
use crate::outbox::Payload;
use chrono::NaiveDate;
use serde_json::Value;
use std::collections::BTreeSet;

/// One built registration.
pub struct BuiltForm {
    pub payload: Payload,
    /// Mandatory columns without a (valid) value, in metadata order.
    pub missing: Vec<String>,
    /// Columns whose journal value fitted no domain and was left out.
    pub left_out: Vec<String>,
    /// Source documents that contributed (ids only).
    pub documents: BTreeSet<String>,
}

/// Build `form` for `ep` on `event_date`. `subject_12` is the personnummer (SubjectKey).
#[allow(clippy::too_many_arguments)]
pub fn build_form(
    mapping: &Mapping,
    form: &FormSpec,
    j: &Journal,
    ep: &Episode,
    event_date: NaiveDate,
    subject_12: &str,
    idem_key: &str,
    notes: &mut Vec<Note>,
) -> BuiltForm {
    let mut payload = Payload::new();
    payload.insert(form.subject_column.clone(), Value::from(subject_12));
    payload.insert(form.event_date_column.clone(), Value::from(event_date.format("%Y-%m-%d").to_string()));
    let mut documents = BTreeSet::new();
    documents.insert(ep.opening_contact.provenance.document_id.clone());
    documents.extend(ep.diagnosis.map(|d| d.provenance.document_id.clone()));
    documents.extend(ep.diagnosis_documents.iter().cloned());
    let mut left_out = vec![];
    for col in &form.columns {
        let note = |kind: NoteKind, document: Option<String>, reason: String| Note {
            kind,
            unit: Some(ep.unit.clone()),
            idem_key: Some(idem_key.to_string()),
            form: Some(form.name.clone()),
            column: Some(col.column.clone()),
            document,
            reason,
        };
        let (value, doc) = match column_value(mapping, col, form.occasion, j, ep, event_date, &mut documents) {
            Ok(Some(Found { value, document, conflict })) => {
                if conflict {
                    // Not fatal: the later entry is taken to be the clinician's correction.
                    notes.push(note(NoteKind::ConflictingAnswers, document.clone(), "several different answers on the occasion; the latest entry was used".into()));
                }
                (value, document)
            }
            Ok(None) => continue,
            Err((kind, doc, reason)) => {
                notes.push(note(kind, doc, reason));
                left_out.push(col.column.clone());
                continue;
            }
        };
        match fit(&col.domain, &value) {
            Ok(()) => {
                payload.insert(col.column.clone(), value);
            }
            Err(m) => {
                notes.push(note(NoteKind::ValueOutsideDomain, doc, format!("value left out: {}", m.reason())));
                left_out.push(col.column.clone());
            }
        }
    }
    let missing = form.mandatory.iter().filter(|c| !payload.contains_key(c.as_str())).cloned().collect();
    BuiltForm { payload, missing, left_out, documents }
}

type ColumnError = (NoteKind, Option<String>, String);

/// A column's value as found in the journal.
struct Found {
    value: Value,
    document: Option<String>,
    conflict: bool,
}

/// The value of one column, with the document it came from. `Ok(None)`: nothing documented.
fn column_value(
    mapping: &Mapping,
    col: &ColumnSpec,
    occasion: Occasion,
    j: &Journal,
    ep: &Episode,
    event_date: NaiveDate,
    documents: &mut BTreeSet<String>,
) -> Result<Option<Found>, ColumnError> {
    match &col.source {
        Source::EpisodeJoint => match (&col.conversion, &ep.joint) {
            (_, None) => Ok(None),
            (Conversion::Codes { values, table }, Some(joint)) => match values.get(joint) {
                Some(v) => Ok(Some(Found { value: v.clone(), document: None, conflict: false })),
                None => Err((NoteKind::UnknownCode, None, format!("joint {joint} has no value in code table {table}"))),
            },
            _ => Ok(None),
        },
        Source::CourseHasJoint(joint) => Ok(Some(Found { value: Value::from(ep.joints.contains_key(joint)), document: None, conflict: false })),
        Source::CourseSides(joint) => {
            Ok(ep.joints.get(joint).map(|both| Found { value: Value::from(if *both { 2 } else { 1 }), document: None, conflict: false }))
        }
        Source::CountActivities(codes) => {
            let (n, docs) = count_activities(j, &ep.unit, ep.first_visit, event_date, codes);
            documents.extend(docs);
            let integer = col.domain.data_type == "integer";
            convert_number(n as f64, None, super::mapping::Rounding::Nearest, integer)
                .map(|value| Some(Found { value, document: None, conflict: false }))
                .map_err(|m| (NoteKind::ValueOutsideDomain, None, m.reason()))
        }
        Source::Observation(term) => {
            let found = if occasion.is_first_visit() { first_visit_answer(mapping, j, ep, term) } else { answer(j, &ep.unit, event_date, term) };
            let Some((obs, conflict)) = found else { return Ok(None) };
            let doc = obs.provenance.document_id.clone();
            documents.insert(doc.clone());
            let Some(value) = &obs.value else {
                return Err((NoteKind::UnconvertibleValue, Some(doc), "the observation has no value".into()));
            };
            convert_observation(mapping, &col.conversion, value)
                .map(|value| Some(Found { value, document: Some(doc.clone()), conflict }))
                .map_err(|(k, r)| (k, Some(doc), r))
        }
    }
}

fn parse_number(s: &str) -> Option<f64> {
    // Swedish journals write decimal commas.
    s.trim().replace(',', ".").parse::<f64>().ok()
}

/// Convert a journal value as the column's conversion says. Error reasons never contain the value.
fn convert_observation(mapping: &Mapping, conversion: &Conversion, value: &ObservationValue) -> Result<Value, (NoteKind, String)> {
    match conversion {
        Conversion::Codes { table, values } => {
            let ObservationValue::Code { code } = value else {
                return Err((NoteKind::UnconvertibleValue, format!("expected a coded answer for code table {table}")));
            };
            if let Some(sys) = &mapping.answer_system {
                if &code.system != sys {
                    return Err((NoteKind::UnknownCode, "the answer is coded in another code system than [terms].answers".into()));
                }
            }
            values.get(&code.code).cloned().ok_or((NoteKind::UnknownCode, format!("the answer code is not in code table {table}")))
        }
        Conversion::Number { decimals, rounding, integer } => {
            let x = match value {
                ObservationValue::Quantity { value, .. } => Some(*value),
                ObservationValue::Code { code } => parse_number(&code.code),
                ObservationValue::Text { value } => parse_number(value),
                _ => None,
            };
            let Some(x) = x else { return Err((NoteKind::UnconvertibleValue, "expected a number".into())) };
            convert_number(x, *decimals, *rounding, *integer).map_err(|m| (NoteKind::ValueOutsideDomain, format!("value left out: {}", m.reason())))
        }
        Conversion::Text => match value {
            ObservationValue::Text { value } => Ok(Value::from(value.clone())),
            _ => Err((NoteKind::UnconvertibleValue, "expected a text".into())),
        },
        Conversion::Date => match value {
            ObservationValue::Date { value } => Ok(Value::from(value.date_naive().format("%Y-%m-%d").to_string())),
            ObservationValue::Text { value } => NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d")
                .map(|d| Value::from(d.format("%Y-%m-%d").to_string()))
                .map_err(|_| (NoteKind::UnconvertibleValue, "expected a date".into())),
            _ => Err((NoteKind::UnconvertibleValue, "expected a date".into())),
        },
    }
}
