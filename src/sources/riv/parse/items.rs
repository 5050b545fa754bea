//! Contract mappings: one RIV-TA item (care contact, diagnosis, care documentation, activity,
//! observation, resident) to canonical records.

use super::*;

// ---------------------------------------------------------------------------------------------
// Contract mappings

/// Header common to care contacts and diagnoses (PatientSummaryHeaderType).
pub(super) struct Header {
    pub(super) document_id: String,
    pub(super) source_system: String,
    pub(super) patient: PatientId,
    pub(super) care_contact_id: Option<String>,
    pub(super) nullified: bool,
    pub(super) profession: Option<Code>,
    pub(super) unit: Option<HsaId>,
    pub(super) document_time: Option<LocalTime>,
    pub(super) author_time: LocalTime,
}

pub(super) fn header(h: &At, ctx: &ParseContext) -> Fr<Header> {
    header_with(h, "sourceSystemHSAId", ctx)
}

/// `source_system_element`: GetCareDocumentation's header (CPatientSummaryHeaderType) spells it
/// `sourceSystemHSAid`.
pub(super) fn header_with(h: &At, source_system_element: &str, ctx: &ParseContext) -> Fr<Header> {
    let document_id = h.req_text("documentId")?.to_string();
    let source_system = h.req_text(source_system_element)?.to_string();
    let document_time = match h.opt_text("documentTime")? {
        Some(t) => Some(stockholm(ts14(t, h.f("documentTime"))?)),
        None => None,
    };
    let pid = h.req("patientId")?;
    let patient = patient_id(pid.req_text("id")?, pid.f("id"), pid.req_text("type")?, pid.f("type"), ctx)?;
    let ahp = h.req("accountableHealthcareProfessional")?;
    let author_time = stockholm(ts14(ahp.req_text("authorTime")?, ahp.f("authorTime"))?);
    let profession = cv_optional(&ahp, "healthcareProfessionalRoleCode")?;
    let unit = match hsa(ahp.opt_text("healthcareProfessionalCareUnitHSAId")?, ahp.f("healthcareProfessionalCareUnitHSAId"))? {
        Some(u) => Some(u),
        None => hsa(ahp.opt_text("healthcareProfessionalOrgUnit/orgUnitHSAId")?, ahp.f("healthcareProfessionalOrgUnit/orgUnitHSAId"))?,
    };
    if let Some(la) = h.opt("legalAuthenticator")? {
        ts14(la.req_text("signatureTime")?, la.f("signatureTime"))?;
    }
    req_bool(h, "approvedForPatient")?;
    let nullified = opt_bool(h, "nullified")?.unwrap_or(false);
    let care_contact_id = h.opt_text("careContactId")?.map(str::to_string);
    Ok(Header { document_id, source_system, patient, care_contact_id, nullified, profession, unit, document_time, author_time })
}

pub(super) fn care_contact(item: &At, ctx: &ParseContext) -> Fr<CareContact> {
    let h = header(&item.req("careContactHeader")?, ctx)?;
    let body = item.req("careContactBody")?;
    let contact_type = cv_optional(&body, "careContactCode")?;
    let status = cv_optional(&body, "careContactStatus")?;
    let unit = match hsa(body.opt_text("careContactOrgUnit/orgUnitHSAId")?, body.f("careContactOrgUnit/orgUnitHSAId"))? {
        Some(u) => Some(u),
        None => h.unit.clone(),
    };
    let (mut start, mut end) = (None, None);
    if let Some(p) = body.opt("careContactTimePeriod")? {
        let sf = p.f("start");
        start = Some(not_future(stockholm(ts14(p.req_text("start")?, sf)?), ctx.today, sf)?);
        if let Some(e) = p.opt_text("end")? {
            let ef = p.f("end");
            end = Some(not_future(stockholm(ts14(e, ef)?), ctx.today, ef)?);
        }
    }
    if let Some(api) = body.opt("additionalPatientInformation")? {
        if let Some(dob) = api.opt("dateOfBirth")? {
            dob.req_text("format")?;
            dob.req_text("value")?;
        }
    }
    // The contact's own id is what diagnoses and activities refer to; without one, its document id.
    let care_contact_id = h.care_contact_id.clone().unwrap_or_else(|| h.document_id.clone());
    Ok(CareContact {
        provenance: provenance(ctx, &h.source_system, &h.document_id),
        patient: h.patient,
        care_contact_id: Some(care_contact_id),
        unit,
        start,
        end,
        contact_type,
        status,
        profession: h.profession,
        nullified: h.nullified,
    })
}

pub(super) fn diagnosis(item: &At, ctx: &ParseContext) -> Fr<Diagnosis> {
    let h = header(&item.req("diagnosisHeader")?, ctx)?;
    let body = item.req("diagnosisBody")?;
    let kind = match body.req_text("typeOfDiagnosis")? {
        "Huvuddiagnos" => DiagnosisKind::Main,
        "Bidiagnos" => DiagnosisKind::Secondary,
        _ => return Err(ferr(&body.field("typeOfDiagnosis"), "not Huvuddiagnos or Bidiagnos")),
    };
    let chronic = opt_bool(&body, "chronicDiagnosis")?;
    let time = match body.opt_text("diagnosisTime")? {
        Some(t) => {
            let f = body.f("diagnosisTime");
            Some(not_future(stockholm(ts14(t, f)?), ctx.today, f)?)
        }
        None => h.document_time,
    };
    let Some(cv) = body.opt("diagnosisCode")? else {
        return Err(ferr(body.f("diagnosisCode"), "no diagnosis code (optional in the contract, but a diagnosis without a code cannot be used)"));
    };
    let code = cv.opt_text("code")?.ok_or_else(|| ferr(&cv.field("code"), "no diagnosis code"))?;
    let system = cv.opt_text("codeSystem")?.ok_or_else(|| ferr(&cv.field("codeSystem"), "no code system"))?;
    let mut code = Code { system: system.to_string(), code: code.to_string(), display: cv.opt_text("displayName")?.map(str::to_string) };
    check_known(&code, cv.f("codeSystem"), ctx)?;
    if code.system == OID_ICD10SE {
        code.code = normalise_icd(&code.code);
        if code.code.is_empty() || !code.code.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ferr(&cv.field("code"), "not an ICD-10-SE code"));
        }
    }
    for (i, rd) in body.all("relatedDiagnosis").enumerate() {
        if rd.opt_text("documentId")?.is_none() {
            return Err(ferr(&format!("{}[{i}]/documentId", rd.path.render()), "mandatory element is missing"));
        }
    }
    Ok(Diagnosis {
        provenance: provenance(ctx, &h.source_system, &h.document_id),
        patient: h.patient,
        care_contact_id: h.care_contact_id,
        unit: h.unit,
        code,
        kind,
        chronic,
        time,
        profession: h.profession,
        nullified: h.nullified,
    })
}

/// A journal note (GetCareDocumentation 2.1): its keywords, read with the connector's keyword
/// table, become observations carrying the note's patient, unit, author (profession), time and
/// care contact; each points at the note by its document id (`<documentId>#<term>`). A keyword
/// that cannot be read is refused on its own (second list) and the rest of the note kept; an
/// error in the note's header refuses the whole note.
pub(super) fn care_documentation(item: &At, ctx: &ParseContext) -> Fr<(Vec<Record>, Vec<FieldError>)> {
    let h = header_with(&item.req("careDocumentationHeader")?, "sourceSystemHSAid", ctx)?;
    let body = item.req("careDocumentationBody")?;
    let note = body.req("clinicalDocumentNote")?;
    let text_field = "careDocumentationBody/clinicalDocumentNote/clinicalDocumentNoteText";
    let Some(text) = note.opt_text("clinicalDocumentNoteText")? else { return Ok((vec![], vec![])) };
    let Some(table) = ctx.keywords.as_deref() else {
        return Err(ferr(text_field, "no keyword table (keywords.toml in the connector folder): the note's keywords cannot be read"));
    };
    // The keywords' time is the note's (the visit it documents); its author's time otherwise.
    let time = not_future(h.document_time.unwrap_or(h.author_time), ctx.today, "careDocumentationHeader/documentTime")?;
    let x = table.extract(text);
    let records = x
        .values
        .into_iter()
        .map(|e| {
            Record::Observation(Observation {
                provenance: provenance(ctx, &h.source_system, &format!("{}#{}", h.document_id, e.term.code)),
                patient: h.patient.clone(),
                care_contact_id: h.care_contact_id.clone(),
                unit: h.unit.clone(),
                term: e.term,
                value: Some(e.value),
                time: Some(time),
                profession: h.profession.clone(),
                nullified: h.nullified,
            })
        })
        .collect();
    let refused = x
        .refused
        .into_iter()
        .map(|r| ferr(&format!("{text_field}/{}", r.heading), format!("keyword {} ({}): {}", r.heading, r.term, r.reason)))
        .collect();
    Ok((records, refused))
}

/// The part of an activity or observation group that its items share.
#[derive(Clone)]
pub(super) struct GroupHeader {
    pub(super) patient: PatientId,
    pub(super) profession: Option<Code>,
    pub(super) unit: Option<HsaId>,
    pub(super) source_system: String,
}

pub(super) fn group_header(g: &At, ctx: &ParseContext) -> Fr<GroupHeader> {
    let p = g.req("patient")?;
    let id = p.req("id")?;
    let patient = patient_id(id.req_text("extension")?, id.f("extension"), id.req_text("root")?, id.f("root"), ctx)?;
    p.req_text("dateOfBirth")?;
    let role = g.req("performerRole")?;
    let profession = Some(cv_required(&role.req("code")?)?);
    let unit = match role.opt("careUnit")? {
        Some(cu) => {
            let id = cu.req("id")?;
            cu.req("careGiver")?;
            hsa(Some(id.req_text("extension")?), id.f("extension"))?
        }
        None => None,
    };
    let ss = g.req("sourceSystem")?;
    let source_system = ss.req("id")?.req_text("extension")?.to_string();
    Ok(GroupHeader { patient, profession, unit, source_system })
}

pub(super) fn contains_ignore_ascii_case(hay: &str, needle: &str) -> bool {
    hay.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The care contact an activity or observation belongs to, from its relations.
pub(super) fn related_contact(item: &At) -> Fr<Option<String>> {
    let mut first_contact = None;
    for rel in item.all("relation") {
        rel.req("code")?;
        let ri = rel.req("referredInformation")?;
        let id = ri.req("id")?;
        let ext = id.req_text("extension")?;
        id.req_text("root")?;
        ri.req("time")?;
        let ty = ri.req_text("type")?;
        ri.req("informationOwner")?;
        // The engagement-index categorisation of care contacts is `vko`; producers also write the
        // contract or element name (compared ignoring ASCII case).
        if first_contact.is_none()
            && (ty.eq_ignore_ascii_case("vko") || ["carecontact", "vardkontakt", "vårdkontakt"].iter().any(|n| contains_ignore_ascii_case(ty, n)))
        {
            first_contact = Some(ext.to_string());
        }
    }
    Ok(first_contact)
}

pub(super) fn activity(a: &At, g: &GroupHeader, ctx: &ParseContext) -> Fr<Activity> {
    let id = a.req("id")?;
    let document_id = id.req_text("extension")?.to_string();
    id.req_text("root")?;
    let status = match a.opt("status")? {
        Some(s) => Some(cv_required(&s)?),
        None => None,
    };
    let code_at = a.req("code")?;
    let code = cv_required(&code_at)?;
    check_known(&code, code_at.f("codeSystem"), ctx)?;
    let time = period_time(&a.req("time")?, ctx)?;
    req_bool(a, "approvedForPatient")?;
    ts14(a.req_text("registrationTime")?, a.f("registrationTime"))?;
    let care_contact_id = related_contact(a)?;
    Ok(Activity {
        provenance: provenance(ctx, &g.source_system, &document_id),
        patient: g.patient.clone(),
        care_contact_id,
        unit: g.unit.clone(),
        code,
        time: Some(time),
        nullified: status.as_ref().is_some_and(is_nullified_status),
        status,
        profession: g.profession.clone(),
    })
}

/// `status` codes that mean the item was nullified (makulerad). GetActivities and
/// GetObservations have no `nullified` element, so the producer says it in `status`.
pub const NULLIFIED_STATUS_CODES: &[&str] = &["MAKULERAD"];

pub(super) fn is_nullified_status(c: &Code) -> bool {
    NULLIFIED_STATUS_CODES.iter().any(|n| c.code.eq_ignore_ascii_case(n))
}

/// The clinical time of a PartialTimePeriod: its start, else its end.
pub(super) fn period_time(t: &At, ctx: &ParseContext) -> Fr<LocalTime> {
    let at = match (t.opt("start")?, t.opt("end")?) {
        (Some(s), _) => s,
        (None, Some(e)) => e,
        (None, None) => return Err(ferr(&t.path.render(), "has neither start nor end")),
    };
    let v = partial_time(&at)?;
    not_future(v, ctx.today, at.f("value"))
}

pub(super) fn observation(o: &At, g: &GroupHeader, ctx: &ParseContext) -> Fr<Observation> {
    let id = o.req("id")?;
    let document_id = id.req_text("extension")?.to_string();
    id.req_text("root")?;
    let type_at = o.req("type")?;
    let term = cv_required(&type_at)?;
    check_known(&term, type_at.f("codeSystem"), ctx)?;
    let time = period_time(&o.req("time")?, ctx)?;
    let value = observation_value(&o.req("value")?)?;
    if req_bool(o, "valueNegation")? {
        return Err(ferr(&o.field("valueNegation"), "negated observations are not supported"));
    }
    req_bool(o, "approvedForPatient")?;
    if let Some(rt) = o.opt_text("registrationTime")? {
        ts14(rt, o.f("registrationTime"))?;
    }
    let care_contact_id = related_contact(o)?;
    let nullified = match o.opt("status")? {
        Some(s) => is_nullified_status(&cv_required(&s)?),
        None => false,
    };
    Ok(Observation {
        provenance: provenance(ctx, &g.source_system, &document_id),
        patient: g.patient.clone(),
        care_contact_id,
        unit: g.unit.clone(),
        term,
        value: Some(value),
        time: Some(time),
        profession: g.profession.clone(),
        nullified,
    })
}

pub(super) fn observation_value(v: &At) -> Fr<ObservationValue> {
    let pq = v.opt("pq")?;
    let ts = v.opt("ts")?;
    let ivl = v.opt("ivl_ts")?;
    let cv = v.opt("cv")?;
    let count = [pq.is_some(), ts.is_some(), ivl.is_some(), cv.is_some()].iter().filter(|b| **b).count();
    if count == 0 {
        return Err(ferr(&v.path.render(), "has none of pq, ts, ivl_ts, cv"));
    }
    if count > 1 {
        return Err(ferr(&v.path.render(), "has more than one of pq, ts, ivl_ts, cv"));
    }
    if let Some(pq) = pq {
        let raw = pq.req_text("value")?;
        let value: f64 = raw.parse().ok().filter(|f: &f64| f.is_finite()).ok_or_else(|| ferr(&pq.field("value"), "not a decimal number"))?;
        let unit = pq.req_text("unit")?;
        return Ok(ObservationValue::Quantity { value, unit: Some(unit.to_string()) });
    }
    if let Some(cv) = cv {
        return Ok(ObservationValue::Code { code: cv_required(&cv)? });
    }
    if let Some(ts) = ts {
        return Ok(match partial(&ts)? {
            Partial::Coarse(s) => ObservationValue::Text { value: s },
            Partial::Day(d) => ObservationValue::Date { value: stockholm(d.and_time(chrono::NaiveTime::MIN)) },
            Partial::Time(t) => ObservationValue::Date { value: stockholm(t) },
        });
    }
    if let Some(ivl) = ivl {
        let bound = |rel: &str| -> Fr<Option<Result<LocalTime, String>>> {
            match ivl.opt(rel)? {
                None => Ok(None),
                Some(b) => Ok(Some(match partial(&b)? {
                    Partial::Coarse(s) => Err(s),
                    Partial::Day(d) => Ok(stockholm(d.and_time(chrono::NaiveTime::MIN))),
                    Partial::Time(t) => Ok(stockholm(t)),
                })),
            }
        };
        let (s, e) = (bound("start")?, bound("end")?);
        if s.is_none() && e.is_none() {
            return Err(ferr(&ivl.path.render(), "has neither start nor end"));
        }
        if matches!(s, Some(Err(_))) || matches!(e, Some(Err(_))) {
            // A bound coarser than a day: keep the period as written rather than invent days.
            let show = |b: &Option<Result<LocalTime, String>>| match b {
                None => String::new(),
                Some(Ok(t)) => t.format("%Y%m%d%H%M%S").to_string(),
                Some(Err(raw)) => raw.clone(),
            };
            return Ok(ObservationValue::Text { value: format!("{}-{}", show(&s), show(&e)) });
        }
        return Ok(ObservationValue::Period { start: s.and_then(Result::ok), end: e.and_then(Result::ok) });
    }
    Err(ferr(&v.path.render(), "has none of pq, ts, ivl_ts, cv"))
}

pub(super) fn riv_result(r: &At) -> Fr<RivResult> {
    Ok(RivResult {
        code: r.req_text("resultCode")?.to_string(),
        error_code: r.opt_text("errorCode")?.map(str::to_string),
        log_id: r.opt_text("logId")?.map(|s| sanitise(s, 120)),
        sub_code: r.opt_text("subCode")?.map(|s| sanitise(s, 120)),
        message: r.opt_text("message")?.map(|s| sanitise(s, 300)),
    })
}

/// A resident of a GetUpdates page. The raw id comes back even when the item is refused: the
/// next page is asked for after it.
pub(super) fn resident(item: &At, ctx: &ParseContext) -> (Option<RawResidentId>, Fr<Resident>) {
    let raw = match item.req_text("registeredResidentIdentification") {
        Ok(r) => r,
        Err(e) => return (None, Err(e)),
    };
    (Some(RawResidentId(raw.to_string())), resident_inner(item, raw, ctx))
}

pub(super) fn resident_inner(item: &At, raw: &str, ctx: &ParseContext) -> Fr<Resident> {
    let patient = PatientId::parse_national(raw, ctx.today)
        .map_err(|e| ferr(item.f("registeredResidentIdentification"), format!("invalid patient identity: {e}")))?;
    let mut engagements = vec![];
    for e in item.all("engagement") {
        e.req_text("clinicalProcessInterestId")?;
        e.req_text("dataController")?;
        engagements.push(Engagement {
            service_domain: e.req_text("serviceDomain")?.to_string(),
            categorization: e.req_text("categorization")?.to_string(),
            logical_address: e.req_text("logicalAddress")?.to_string(),
            business_object_id: e.req_text("businessObjectInstanceIdentifier")?.to_string(),
            source_system: e.req_text("sourceSystem")?.to_string(),
            owner: e.opt_text("owner")?.map(str::to_string),
        });
    }
    Ok(Resident { patient, engagements })
}
