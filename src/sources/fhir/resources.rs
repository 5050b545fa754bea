//! The few FHIR R4 fields the source reads, as hand-written serde structs, and their mapping to
//! canonical records: Encounter → CareContact, Condition → Diagnosis, Procedure → Activity,
//! Observation → Observation.

use crate::model::{
    normalise_icd, stockholm, Activity, CareContact, Code, Diagnosis, DiagnosisKind, HsaId, LocalTime, Observation, ObservationValue, PatientId,
    Provenance, Record, OID_HSA, OID_ICD10SE,
};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Deserialize;
use std::collections::HashMap;

/// System of a code or identifier as the canonical model writes it: an OID without `urn:oid:`.
pub fn system_of(uri: &str) -> &str {
    uri.strip_prefix("urn:oid:").unwrap_or(uri)
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub last_updated: Option<String>,
    pub source: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Identifier {
    pub system: Option<String>,
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Reference {
    pub reference: Option<String>,
    pub identifier: Option<Identifier>,
}

impl Reference {
    /// The id of a literal reference `Type/id` to a resource of `ty`.
    pub fn id_of(&self, ty: &str) -> Option<String> {
        let r = self.reference.as_deref()?;
        let tail = r.rsplit_once("/_history/").map(|(a, _)| a).unwrap_or(r);
        let (t, id) = tail.rsplit_once('/')?;
        (t.ends_with(ty) && !id.is_empty()).then(|| id.to_string())
    }

    fn hsa(&self) -> Option<&str> {
        let i = self.identifier.as_ref()?;
        (system_of(i.system.as_deref()?) == OID_HSA).then_some(i.value.as_deref()?)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Coding {
    pub system: Option<String>,
    pub code: Option<String>,
    pub display: Option<String>,
}

impl Coding {
    fn to_code(&self) -> Option<Code> {
        Some(Code { system: system_of(self.system.as_deref().unwrap_or("")).to_string(), code: self.code.clone()?, display: self.display.clone() })
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CodeableConcept {
    #[serde(default)]
    pub coding: Vec<Coding>,
}

impl CodeableConcept {
    fn first(&self) -> Option<Code> {
        self.coding.iter().find_map(Coding::to_code)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Period {
    pub start: Option<String>,
    pub end: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Quantity {
    pub value: Option<f64>,
    pub unit: Option<String>,
    pub code: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Participant {
    #[serde(default, rename = "type")]
    pub type_: Vec<CodeableConcept>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct EncounterDiagnosis {
    pub condition: Option<Reference>,
    pub rank: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Encounter {
    pub id: Option<String>,
    #[serde(default)]
    pub meta: Meta,
    pub status: Option<String>,
    #[serde(default, rename = "type")]
    pub type_: Vec<CodeableConcept>,
    pub subject: Option<Reference>,
    pub period: Option<Period>,
    pub service_provider: Option<Reference>,
    #[serde(default)]
    pub participant: Vec<Participant>,
    #[serde(default)]
    pub diagnosis: Vec<EncounterDiagnosis>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub id: Option<String>,
    #[serde(default)]
    pub meta: Meta,
    pub verification_status: Option<CodeableConcept>,
    pub code: Option<CodeableConcept>,
    pub subject: Option<Reference>,
    pub encounter: Option<Reference>,
    pub recorded_date: Option<String>,
    pub onset_date_time: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Performer {
    pub function: Option<CodeableConcept>,
    pub actor: Option<Reference>,
    pub on_behalf_of: Option<Reference>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Procedure {
    pub id: Option<String>,
    #[serde(default)]
    pub meta: Meta,
    pub status: Option<String>,
    pub code: Option<CodeableConcept>,
    pub subject: Option<Reference>,
    pub encounter: Option<Reference>,
    pub performed_date_time: Option<String>,
    pub performed_period: Option<Period>,
    #[serde(default)]
    pub performer: Vec<Performer>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FhirObservation {
    pub id: Option<String>,
    #[serde(default)]
    pub meta: Meta,
    pub status: Option<String>,
    pub code: Option<CodeableConcept>,
    pub subject: Option<Reference>,
    pub encounter: Option<Reference>,
    pub effective_date_time: Option<String>,
    pub effective_period: Option<Period>,
    #[serde(default)]
    pub performer: Vec<Reference>,
    pub value_quantity: Option<Quantity>,
    pub value_codeable_concept: Option<CodeableConcept>,
    pub value_date_time: Option<String>,
    pub value_period: Option<Period>,
    pub value_string: Option<String>,
    pub value_integer: Option<i64>,
}

/// What mapping needs besides the resource.
pub struct MapContext<'a> {
    pub connector: &'a str,
    /// Used when a resource has no `meta.source`.
    pub default_source: &'a str,
    pub fetched_at: DateTime<Utc>,
    pub today: NaiveDate,
    pub reserve_oids: &'a [String],
    pub known_code_systems: &'a [String],
    /// Condition id → rank in its encounter's `diagnosis` list (1 = main).
    pub ranks: &'a HashMap<String, u32>,
}

/// A resource refused on one field (FHIR path), never quoting the value.
#[derive(Debug)]
pub struct Refused {
    pub field: String,
    pub reason: String,
}

type Mr<T> = Result<T, Refused>;

fn refused(field: &str, reason: impl Into<String>) -> Refused {
    Refused { field: field.to_string(), reason: reason.into() }
}

/// A FHIR date or dateTime as a local time; coarser than a day is refused.
fn parse_time(text: &str, field: &str) -> Mr<LocalTime> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t);
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(stockholm(d.and_time(chrono::NaiveTime::MIN)));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S") {
        return Ok(stockholm(t));
    }
    if text.len() <= 7 && text.chars().all(|c| c.is_ascii_digit() || c == '-') {
        return Err(refused(field, "given only to the year or month; a day is needed"));
    }
    Err(refused(field, "not a FHIR date or dateTime"))
}

fn clinical_time(text: &str, field: &str, ctx: &MapContext) -> Mr<LocalTime> {
    let t = parse_time(text, field)?;
    if t.date_naive() > ctx.today + chrono::Duration::days(1) {
        return Err(refused(field, "date lies in the future"));
    }
    Ok(t)
}

fn patient(subject: Option<&Reference>, ty: &str, ctx: &MapContext) -> Mr<PatientId> {
    let field = format!("{ty}.subject.identifier");
    let ident = subject
        .and_then(|s| s.identifier.as_ref())
        .ok_or_else(|| refused(&field, "missing; a literal reference alone does not identify the patient"))?;
    let value = ident.value.as_deref().ok_or_else(|| refused(&format!("{field}.value"), "missing"))?;
    let system = system_of(ident.system.as_deref().unwrap_or(""));
    if system.is_empty() {
        return Err(refused(&format!("{field}.system"), "missing"));
    }
    PatientId::parse_with_oid(value, system, ctx.reserve_oids, ctx.today).map_err(|e| match e {
        crate::model::IdError::UnknownType => refused(&format!("{field}.system"), "unknown patient identity system"),
        other => refused(&format!("{field}.value"), format!("invalid patient identity: {other}")),
    })
}

fn known_code(cc: Option<&CodeableConcept>, field: &str, ctx: &MapContext) -> Mr<Code> {
    let cc = cc.ok_or_else(|| refused(field, "missing"))?;
    let codes: Vec<Code> = cc.coding.iter().filter_map(Coding::to_code).collect();
    if codes.is_empty() {
        return Err(refused(&format!("{field}.coding"), "no coding with a code"));
    }
    codes
        .into_iter()
        .find(|c| ctx.known_code_systems.iter().any(|k| k == &c.system))
        .ok_or_else(|| refused(&format!("{field}.coding.system"), "no coding in a code system listed in known_code_systems"))
}

fn provenance(meta: &Meta, ty: &str, id: &str, ctx: &MapContext) -> Provenance {
    Provenance {
        connector: ctx.connector.to_string(),
        source_system: meta.source.clone().unwrap_or_else(|| ctx.default_source.to_string()),
        document_id: format!("{ty}/{id}"),
        fetched_at: ctx.fetched_at,
    }
}

fn id_of(id: &Option<String>, ty: &str) -> Mr<String> {
    id.clone().filter(|s| !s.is_empty()).ok_or_else(|| refused(&format!("{ty}.id"), "missing"))
}

fn unit(hsa: Option<&str>, field: &str) -> Mr<Option<HsaId>> {
    match hsa {
        None => Ok(None),
        Some(h) => HsaId::parse(h).map(Some).map_err(|e| refused(field, format!("not a valid HSA id ({})", e.0))),
    }
}

pub fn encounter(e: &Encounter, ctx: &MapContext) -> Mr<Record> {
    let id = id_of(&e.id, "Encounter")?;
    let patient = patient(e.subject.as_ref(), "Encounter", ctx)?;
    let (mut start, mut end) = (None, None);
    if let Some(p) = &e.period {
        if let Some(s) = &p.start {
            start = Some(clinical_time(s, "Encounter.period.start", ctx)?);
        }
        if let Some(s) = &p.end {
            end = Some(clinical_time(s, "Encounter.period.end", ctx)?);
        }
    }
    let status = e.status.clone().unwrap_or_default();
    Ok(Record::CareContact(CareContact {
        provenance: provenance(&e.meta, "Encounter", &id, ctx),
        patient,
        care_contact_id: Some(id),
        unit: unit(e.service_provider.as_ref().and_then(Reference::hsa), "Encounter.serviceProvider.identifier")?,
        start,
        end,
        contact_type: e.type_.iter().find_map(CodeableConcept::first),
        status: (!status.is_empty()).then(|| Code::new("http://hl7.org/fhir/encounter-status", &status)),
        profession: e.participant.iter().flat_map(|p| p.type_.iter()).find_map(CodeableConcept::first),
        nullified: status == "entered-in-error",
    }))
}

pub fn condition(c: &Condition, ctx: &MapContext) -> Mr<Record> {
    let id = id_of(&c.id, "Condition")?;
    let patient = patient(c.subject.as_ref(), "Condition", ctx)?;
    let mut code = known_code(c.code.as_ref(), "Condition.code", ctx)?;
    if code.system == OID_ICD10SE {
        code.code = normalise_icd(&code.code);
    }
    let time = match (c.recorded_date.as_deref(), c.onset_date_time.as_deref()) {
        (Some(t), _) => Some(clinical_time(t, "Condition.recordedDate", ctx)?),
        (None, Some(t)) => Some(clinical_time(t, "Condition.onsetDateTime", ctx)?),
        _ => None,
    };
    // Main or secondary comes from the encounter's ranked diagnosis list; unranked counts as main.
    let kind = match ctx.ranks.get(&id) {
        Some(r) if *r > 1 => DiagnosisKind::Secondary,
        _ => DiagnosisKind::Main,
    };
    let nullified = c.verification_status.as_ref().and_then(CodeableConcept::first).is_some_and(|v| v.code == "entered-in-error");
    Ok(Record::Diagnosis(Diagnosis {
        provenance: provenance(&c.meta, "Condition", &id, ctx),
        patient,
        care_contact_id: c.encounter.as_ref().and_then(|r| r.id_of("Encounter")),
        unit: None,
        code,
        kind,
        chronic: None,
        time,
        profession: None,
        nullified,
    }))
}

pub fn procedure(p: &Procedure, ctx: &MapContext) -> Mr<Record> {
    let id = id_of(&p.id, "Procedure")?;
    let patient = patient(p.subject.as_ref(), "Procedure", ctx)?;
    let code = known_code(p.code.as_ref(), "Procedure.code", ctx)?;
    let time = match (p.performed_date_time.as_deref(), p.performed_period.as_ref().and_then(|x| x.start.as_deref())) {
        (Some(t), _) => Some(clinical_time(t, "Procedure.performedDateTime", ctx)?),
        (None, Some(t)) => Some(clinical_time(t, "Procedure.performedPeriod.start", ctx)?),
        _ => return Err(refused("Procedure.performed[x]", "missing")),
    };
    let hsa = p.performer.iter().find_map(|x| x.on_behalf_of.as_ref().and_then(Reference::hsa).or_else(|| x.actor.as_ref().and_then(Reference::hsa)));
    let status = p.status.clone().unwrap_or_default();
    Ok(Record::Activity(Activity {
        provenance: provenance(&p.meta, "Procedure", &id, ctx),
        patient,
        care_contact_id: p.encounter.as_ref().and_then(|r| r.id_of("Encounter")),
        unit: unit(hsa, "Procedure.performer.onBehalfOf.identifier")?,
        code,
        time,
        status: (!status.is_empty()).then(|| Code::new("http://hl7.org/fhir/event-status", &status)),
        profession: p.performer.iter().find_map(|x| x.function.as_ref().and_then(CodeableConcept::first)),
        nullified: status == "entered-in-error",
    }))
}

pub fn observation(o: &FhirObservation, ctx: &MapContext) -> Mr<Record> {
    let id = id_of(&o.id, "Observation")?;
    let patient = patient(o.subject.as_ref(), "Observation", ctx)?;
    let term = known_code(o.code.as_ref(), "Observation.code", ctx)?;
    let time = match (o.effective_date_time.as_deref(), o.effective_period.as_ref().and_then(|x| x.start.as_deref())) {
        (Some(t), _) => Some(clinical_time(t, "Observation.effectiveDateTime", ctx)?),
        (None, Some(t)) => Some(clinical_time(t, "Observation.effectivePeriod.start", ctx)?),
        _ => return Err(refused("Observation.effective[x]", "missing")),
    };
    let value = if let Some(q) = &o.value_quantity {
        let v = q.value.filter(|v| v.is_finite()).ok_or_else(|| refused("Observation.valueQuantity.value", "missing"))?;
        Some(ObservationValue::Quantity { value: v, unit: q.code.clone().or_else(|| q.unit.clone()) })
    } else if let Some(cc) = &o.value_codeable_concept {
        Some(ObservationValue::Code { code: cc.first().ok_or_else(|| refused("Observation.valueCodeableConcept.coding", "no coding with a code"))? })
    } else if let Some(t) = &o.value_date_time {
        Some(match parse_time(t, "Observation.valueDateTime") {
            Ok(v) => ObservationValue::Date { value: v },
            Err(_) => ObservationValue::Text { value: t.clone() },
        })
    } else if let Some(p) = &o.value_period {
        let b = |s: &Option<String>, f: &str| s.as_deref().map(|t| parse_time(t, f)).transpose();
        Some(ObservationValue::Period { start: b(&p.start, "Observation.valuePeriod.start")?, end: b(&p.end, "Observation.valuePeriod.end")? })
    } else if let Some(s) = &o.value_string {
        Some(ObservationValue::Text { value: s.clone() })
    } else {
        o.value_integer.map(|i| ObservationValue::Quantity { value: i as f64, unit: None })
    };
    let status = o.status.clone().unwrap_or_default();
    Ok(Record::Observation(Observation {
        provenance: provenance(&o.meta, "Observation", &id, ctx),
        patient,
        care_contact_id: o.encounter.as_ref().and_then(|r| r.id_of("Encounter")),
        unit: unit(o.performer.iter().find_map(Reference::hsa), "Observation.performer.identifier")?,
        term,
        value,
        time,
        profession: None,
        nullified: status == "entered-in-error",
    }))
}
