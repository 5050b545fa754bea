//! Source connectors: RIV-TA consumer over real mTLS on loopback, the files drop directory, the
//! FHIR source against the sandbox FHIR server. Fixtures are built here and validated against the
//! official XSDs with xmllint. No test prints or asserts a personnummer in a log line.

mod common;

use chrono::{NaiveDate, TimeZone, Utc};
use registerbrygga::config::{PatientDiscovery, RetrySettings, Secret, SourceKind, SourceSettings};
use registerbrygga::model::*;
use registerbrygga::sandbox::tls::{sandbox_client_settings, CertSet};
use registerbrygga::sandbox::vocabulary::LOCAL_TERMS;
use registerbrygga::sources::riv::{parse_bytes, Contract, ParseContext, RivSource};
use registerbrygga::sources::{PatientBatch, PullRequest, PullSummary, Source, SourceItem};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

// ---------------------------------------------------------------------------------------------
// Identities and fixed dates

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 5, 1).unwrap()
}

/// A valid personnummer for a birth date and serial (check digit computed).
fn pnr(birth: &str, serial: &str) -> String {
    let short = format!("{}{}", &birth[2..], serial);
    let digits: Vec<u8> = short.bytes().map(|b| b - b'0').collect();
    format!("{birth}{serial}{}", luhn_check_digit(&digits))
}

/// The same number with a wrong check digit.
fn wrong_check_digit(p: &str) -> String {
    let last = p.as_bytes()[11] - b'0';
    format!("{}{}", &p[..11], (last + 1) % 10)
}

fn pid(p: &str) -> PatientId {
    PatientId::parse_national(p, today()).unwrap()
}

const SS: &str = "SE2321000156-SRC1";
const FT01: &str = "SE2321000156-FT01";
const FT02: &str = "SE2321000156-FT02";
const ELSEWHERE: &str = "SE2321000156-XX99";
const PHYSIO: &str = "FYSIOTERAPEUT";

// ---------------------------------------------------------------------------------------------
// RIV-TA response fixtures (each shaped per its XSD; validated with xmllint below)

mod fx {
    use super::*;

    pub const CC_NS: &str = "urn:riv:clinicalprocess:logistics:logistics:GetCareContactsResponder:3";
    pub const CC_CORE: &str = "urn:riv:clinicalprocess:logistics:logistics:3";
    pub const DIA_NS: &str = "urn:riv:clinicalprocess:healthcond:description:GetDiagnosisResponder:2";
    pub const DIA_CORE: &str = "urn:riv:clinicalprocess:healthcond:description:2";
    pub const ACT_NS: &str = "urn:riv:clinicalprocess:activity:actions:GetActivitiesResponder:1";
    pub const ACT_CORE: &str = "urn:riv:clinicalprocess:activity:actions:1";
    pub const OBS_NS: &str = "urn:riv:clinicalprocess:healthcond:basic:GetObservationsResponder:1";
    pub const OBS_CORE: &str = "urn:riv:clinicalprocess:healthcond:basic:1";
    pub const EI_NS: &str = "urn:riv:itintegration:engagementindex:GetUpdatesResponder:1";
    pub const EI_CORE: &str = "urn:riv:itintegration:engagementindex:1";

    #[derive(Clone)]
    pub struct Contact {
        pub doc: String,
        pub patient: String,
        pub patient_type: String,
        pub unit: String,
        pub start: String,
        pub end: Option<String>,
        pub code: String,
        pub care_contact_id: Option<String>,
        pub nullified: bool,
        /// Leave out `accountableHealthcareProfessional` (mandatory).
        pub drop_professional: bool,
    }

    impl Contact {
        pub fn new(doc: &str, patient: &str, unit: &str, start: &str) -> Contact {
            Contact {
                doc: doc.into(),
                patient: patient.into(),
                patient_type: OID_PERSONNUMMER.into(),
                unit: unit.into(),
                start: start.into(),
                end: None,
                code: "1".into(),
                care_contact_id: Some(format!("KK-{doc}")),
                nullified: false,
                drop_professional: false,
            }
        }
    }

    pub fn care_contact(c: &Contact) -> String {
        let professional = if c.drop_professional {
            String::new()
        } else {
            format!(
                "<c:accountableHealthcareProfessional><c:authorTime>{start}</c:authorTime>\
                 <c:healthcareProfessionalRoleCode><c:code>{PHYSIO}</c:code><c:codeSystem>{LOCAL_TERMS}</c:codeSystem></c:healthcareProfessionalRoleCode>\
                 <c:healthcareProfessionalCareUnitHSAId>{unit}</c:healthcareProfessionalCareUnitHSAId></c:accountableHealthcareProfessional>",
                start = c.start,
                unit = c.unit
            )
        };
        let end = c.end.as_ref().map(|e| format!("<c:end>{e}</c:end>")).unwrap_or_default();
        let nullified = if c.nullified { "<c:nullified>true</c:nullified><c:nullifiedReason>Felregistrerad</c:nullifiedReason>" } else { "" };
        let ccid = c.care_contact_id.as_ref().map(|i| format!("<c:careContactId>{i}</c:careContactId>")).unwrap_or_default();
        format!(
            "<careContact><c:careContactHeader><c:documentId>{doc}</c:documentId><c:sourceSystemHSAId>{SS}</c:sourceSystemHSAId>\
             <c:documentTime>{start}</c:documentTime><c:patientId><c:id>{p}</c:id><c:type>{pt}</c:type></c:patientId>{professional}\
             <c:approvedForPatient>true</c:approvedForPatient>{nullified}{ccid}</c:careContactHeader>\
             <c:careContactBody><c:careContactCode><c:code>{code}</c:code><c:codeSystem>1.2.752.129.2.2.2.25</c:codeSystem><c:displayName>Besök</c:displayName></c:careContactCode>\
             <c:careContactOrgUnit><c:orgUnitHSAId>{unit}</c:orgUnitHSAId><c:orgUnitName>Fysioterapin</c:orgUnitName></c:careContactOrgUnit>\
             <c:careContactTimePeriod><c:start>{start}</c:start>{end}</c:careContactTimePeriod></c:careContactBody></careContact>",
            doc = c.doc,
            p = c.patient,
            pt = c.patient_type,
            start = c.start,
            unit = c.unit,
            code = c.code,
        )
    }

    pub fn care_contacts_response(items: &[String]) -> String {
        format!(
            "<GetCareContactsResponse xmlns=\"{CC_NS}\" xmlns:c=\"{CC_CORE}\">{}<result><c:resultCode>OK</c:resultCode><c:logId>log-cc-1</c:logId></result></GetCareContactsResponse>",
            items.concat()
        )
    }

    pub fn care_contacts_error(error_code: Option<&str>, log_id: &str) -> String {
        let ec = error_code.map(|e| format!("<c:errorCode>{e}</c:errorCode>")).unwrap_or_default();
        format!(
            "<GetCareContactsResponse xmlns=\"{CC_NS}\" xmlns:c=\"{CC_CORE}\"><result><c:resultCode>ERROR</c:resultCode>{ec}<c:logId>{log_id}</c:logId><c:message>Tekniskt fel</c:message></result></GetCareContactsResponse>"
        )
    }

    #[derive(Clone)]
    pub struct Diag {
        pub doc: String,
        pub patient: String,
        pub unit: String,
        pub time: String,
        pub code: String,
        pub system: String,
        pub main: bool,
        pub care_contact_id: Option<String>,
    }

    impl Diag {
        pub fn new(doc: &str, patient: &str, unit: &str, time: &str, code: &str) -> Diag {
            Diag {
                doc: doc.into(),
                patient: patient.into(),
                unit: unit.into(),
                time: time.into(),
                code: code.into(),
                system: OID_ICD10SE.into(),
                main: true,
                care_contact_id: None,
            }
        }
    }

    pub fn diagnosis(d: &Diag) -> String {
        let ccid = d.care_contact_id.as_ref().map(|i| format!("<c:careContactId>{i}</c:careContactId>")).unwrap_or_default();
        let kind = if d.main { "Huvuddiagnos" } else { "Bidiagnos" };
        format!(
            "<diagnosis><c:diagnosisHeader><c:documentId>{doc}</c:documentId><c:sourceSystemHSAId>{SS}</c:sourceSystemHSAId>\
             <c:patientId><c:id>{p}</c:id><c:type>{OID_PERSONNUMMER}</c:type></c:patientId>\
             <c:accountableHealthcareProfessional><c:authorTime>{t}</c:authorTime><c:healthcareProfessionalCareUnitHSAId>{unit}</c:healthcareProfessionalCareUnitHSAId></c:accountableHealthcareProfessional>\
             <c:approvedForPatient>true</c:approvedForPatient>{ccid}</c:diagnosisHeader>\
             <c:diagnosisBody><c:typeOfDiagnosis>{kind}</c:typeOfDiagnosis><c:chronicDiagnosis>true</c:chronicDiagnosis><c:diagnosisTime>{t}</c:diagnosisTime>\
             <c:diagnosisCode><c:code>{code}</c:code><c:codeSystem>{sys}</c:codeSystem><c:displayName>Knäledsartros</c:displayName></c:diagnosisCode></c:diagnosisBody></diagnosis>",
            doc = d.doc,
            p = d.patient,
            t = d.time,
            unit = d.unit,
            code = d.code,
            sys = d.system,
        )
    }

    pub fn diagnosis_response(items: &[String]) -> String {
        format!(
            "<GetDiagnosisResponse xmlns=\"{DIA_NS}\" xmlns:c=\"{DIA_CORE}\">{}<result><c:resultCode>OK</c:resultCode><c:logId>log-dia-1</c:logId></result></GetDiagnosisResponse>",
            items.concat()
        )
    }

    fn ii(root: &str, ext: &str) -> String {
        format!("<c:root>{root}</c:root><c:extension>{ext}</c:extension>")
    }

    /// Group header shared by activities and observations.
    fn group_head(patient: &str, unit: &str) -> String {
        format!(
            "<c:patient><c:id>{pid}</c:id><c:dateOfBirth>{dob}</c:dateOfBirth></c:patient>\
             <c:performerRole><c:code><c:code>{PHYSIO}</c:code><c:codeSystem>{LOCAL_TERMS}</c:codeSystem></c:code>\
             <c:careUnit><c:id>{unit_ii}</c:id><c:careGiver><c:id>{cg}</c:id></c:careGiver></c:careUnit></c:performerRole>\
             <c:sourceSystem><c:id>{ss}</c:id></c:sourceSystem>",
            pid = ii(OID_PERSONNUMMER, patient),
            dob = &patient[..8],
            unit_ii = ii(OID_HSA, unit),
            cg = ii(OID_HSA, "SE2321000156-0001"),
            ss = ii(OID_HSA, SS),
        )
    }

    /// A relation to the care contact `ccid` (the engagement-index categorisation `vko`).
    fn relation(ccid: &str, unit: &str, time_format: &str, time: &str) -> String {
        format!(
            "<c:relation><c:code><c:code>REFR</c:code><c:codeSystem>2.16.840.1.113883.5.1002</c:codeSystem></c:code>\
             <c:referredInformation><c:id>{id}</c:id><c:time><c:format>{time_format}</c:format><c:value>{time}</c:value></c:time>\
             <c:type>vko</c:type><c:informationOwner><c:id>{owner}</c:id></c:informationOwner></c:referredInformation></c:relation>",
            id = ii(SS, ccid),
            owner = ii(OID_HSA, unit),
        )
    }

    /// One activity; `time` is YYYYMMDDhhmmss (the actions enum has no day-only format).
    pub fn activity(id: &str, code: &str, system: &str, time: &str, ccid: Option<(&str, &str)>) -> String {
        let rel = ccid.map(|(c, unit)| relation(c, unit, "YYYYMMDDhhmmss", time)).unwrap_or_default();
        format!(
            "<c:activity><c:id>{idii}</c:id><c:code><c:code>{code}</c:code><c:codeSystem>{system}</c:codeSystem></c:code>\
             <c:time><c:start><c:format>YYYYMMDDhhmmss</c:format><c:value>{time}</c:value></c:start></c:time>\
             <c:approvedForPatient>true</c:approvedForPatient><c:registrationTime>{time}</c:registrationTime>{rel}</c:activity>",
            idii = ii(SS, id),
        )
    }

    pub fn activity_group(patient: &str, unit: &str, activities: &[String]) -> String {
        format!("<activityGroup>{}{}</activityGroup>", group_head(patient, unit), activities.concat())
    }

    pub fn activities_response(groups: &[String]) -> String {
        format!("<GetActivitiesResponse xmlns=\"{ACT_NS}\" xmlns:c=\"{ACT_CORE}\">{}</GetActivitiesResponse>", groups.concat())
    }

    /// One observation with a value element's inner XML (`<c:pq>…</c:pq>` etc.).
    pub fn observation(id: &str, term: &str, system: &str, time: &str, value: &str, ccid: Option<(&str, &str)>) -> String {
        let rel = ccid.map(|(c, unit)| relation(c, unit, "YYYYMMDD", &time[..8])).unwrap_or_default();
        format!(
            "<c:observation><c:id>{idii}</c:id><c:type><c:code>{term}</c:code><c:codeSystem>{system}</c:codeSystem></c:type>\
             <c:time><c:start><c:format>YYYYMMDDhhmm</c:format><c:value>{t12}</c:value></c:start></c:time>\
             <c:value>{value}</c:value><c:valueNegation>false</c:valueNegation><c:approvedForPatient>true</c:approvedForPatient>{rel}</c:observation>",
            idii = ii(SS, id),
            t12 = &time[..12],
        )
    }

    pub fn pq(value: &str, unit: &str) -> String {
        format!("<c:pq><c:value>{value}</c:value><c:unit>{unit}</c:unit></c:pq>")
    }

    pub fn cv(code: &str) -> String {
        format!("<c:cv><c:code>{code}</c:code><c:codeSystem>{LOCAL_TERMS}</c:codeSystem></c:cv>")
    }

    pub fn ts(format: &str, value: &str) -> String {
        format!("<c:ts><c:format>{format}</c:format><c:value>{value}</c:value></c:ts>")
    }

    pub fn ivl(start: &str, end: &str) -> String {
        format!(
            "<c:ivl_ts><c:start><c:format>YYYYMMDD</c:format><c:value>{start}</c:value></c:start><c:end><c:format>YYYYMMDD</c:format><c:value>{end}</c:value></c:end></c:ivl_ts>"
        )
    }

    pub fn observation_group(patient: &str, unit: &str, observations: &[String]) -> String {
        format!("<observationGroup>{}{}</observationGroup>", group_head(patient, unit), observations.concat())
    }

    pub fn observations_response(groups: &[String]) -> String {
        format!("<GetObservationsResponse xmlns=\"{OBS_NS}\" xmlns:c=\"{OBS_CORE}\">{}</GetObservationsResponse>", groups.concat())
    }

    /// A resident with engagements given as (logical address, source system).
    pub fn resident(patient: &str, engagements: &[(&str, &str)]) -> String {
        let e: String = engagements
            .iter()
            .map(|(la, ss)| {
                format!(
                    "<engagement><c:registeredResidentIdentification>{patient}</c:registeredResidentIdentification>\
                     <c:serviceDomain>riv:clinicalprocess:logistics:logistics</c:serviceDomain><c:categorization>vko</c:categorization>\
                     <c:logicalAddress>{la}</c:logicalAddress><c:businessObjectInstanceIdentifier>NA</c:businessObjectInstanceIdentifier>\
                     <c:clinicalProcessInterestId>NA</c:clinicalProcessInterestId><c:mostRecentContent>20260301100000</c:mostRecentContent>\
                     <c:sourceSystem>{ss}</c:sourceSystem><c:dataController>2321000156</c:dataController><c:owner>{la}</c:owner></engagement>"
                )
            })
            .collect();
        format!("<registeredResidentEngagement><registeredResidentIdentification>{patient}</registeredResidentIdentification>{e}</registeredResidentEngagement>")
    }

    pub fn updates_response(complete: bool, residents: &[String]) -> String {
        format!(
            "<GetUpdatesResponse xmlns=\"{EI_NS}\" xmlns:c=\"{EI_CORE}\"><responseIsComplete>{complete}</responseIsComplete>{}</GetUpdatesResponse>",
            residents.concat()
        )
    }

    pub fn envelope(body: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\n<soap:Header/>\n<soap:Body>\n{body}\n</soap:Body>\n</soap:Envelope>\n"
        )
    }

    pub fn fault(code: &str, text: &str) -> String {
        envelope(&format!("<soap:Fault><faultcode>soap:{code}</faultcode><faultstring>{text}</faultstring></soap:Fault>"))
    }
}

// ---------------------------------------------------------------------------------------------
// xmllint

fn conformance(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/riv").join(rel)
}

fn response_xsd(c: Contract) -> PathBuf {
    conformance(match c {
        Contract::GetCareContacts => "GetCareContacts-3.0/interactions/GetCareContactsInteraction/GetCareContactsResponder_3.0.xsd",
        Contract::GetDiagnosis => "GetDiagnosis-2.0/interactions/GetDiagnosisInteraction/GetDiagnosisResponder_2.0.xsd",
        Contract::GetActivities => "GetActivities-1.0/interactions/GetActivitiesInteraction/GetActivitiesResponder_1.0.xsd",
        Contract::GetObservations => "GetObservations-1.1/interactions/GetObservationsInteraction/GetObservationsResponder_1.1.xsd",
        Contract::GetUpdates => "EngagementIndex-1.0/interactions/GetUpdatesInteraction/GetUpdatesResponder_1.0.xsd",
        Contract::GetCareDocumentation => {
            "GetCareDocumentation-2.1/interactions/GetCareDocumentationInteraction/GetCareDocumentationResponder_2.1.xsd"
        }
    })
}

/// Validate a standalone document against an XSD. xmllint's messages quote values, so they are
/// redacted before a failure shows them.
fn assert_valid(xsd: &Path, xml: &str, what: &str) {
    let dir = common::test_dir();
    let f = dir.path().join("doc.xml");
    std::fs::write(&f, xml).unwrap();
    let out =
        std::process::Command::new("xmllint").arg("--noout").arg("--schema").arg(xsd).arg(&f).output().expect("xmllint runs (install libxml2-utils)");
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} does not validate against {}:\n{}", xsd.display(), registerbrygga::telemetry::redact(&msg));
}

// ---------------------------------------------------------------------------------------------
// Records

fn contacts(b: &PatientBatch) -> Vec<&CareContact> {
    b.records.iter().filter_map(|r| if let Record::CareContact(c) = r { Some(c) } else { None }).collect()
}
fn diagnoses(b: &PatientBatch) -> Vec<&Diagnosis> {
    b.records.iter().filter_map(|r| if let Record::Diagnosis(c) = r { Some(c) } else { None }).collect()
}
fn activities(b: &PatientBatch) -> Vec<&Activity> {
    b.records.iter().filter_map(|r| if let Record::Activity(c) = r { Some(c) } else { None }).collect()
}
fn observations(b: &PatientBatch) -> Vec<&Observation> {
    b.records.iter().filter_map(|r| if let Record::Observation(c) = r { Some(c) } else { None }).collect()
}

fn local(y: i32, m: u32, d: u32, h: u32, mi: u32) -> LocalTime {
    stockholm(NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(h, mi, 0).unwrap())
}

fn parse_ctx() -> ParseContext {
    let mut c = ParseContext::new("test", today());
    c.known_code_systems.push(LOCAL_TERMS.into());
    c
}

/// No refusal text may carry an identity.
fn assert_no_identity(texts: &[String], ids: &[&str]) {
    for t in texts {
        for id in ids {
            assert!(!t.contains(id) && !t.contains(&id[2..]), "a refusal carries a patient identity");
        }
    }
}

fn refusal_texts(items: &[SourceItem]) -> Vec<String> {
    let mut out = vec![];
    for i in items {
        match i {
            SourceItem::Refused { refusal, .. } => out.push(refusal.to_string()),
            SourceItem::Patient(b) => out.extend(b.refusals.iter().map(|r| r.to_string())),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// RIV-TA: documents

fn good_documents(p: &str) -> Vec<(Contract, String)> {
    let mut c2 = fx::Contact::new("CC-2", p, FT02, "20260310140000");
    c2.end = Some("20260310143000".into());
    c2.nullified = true;
    c2.care_contact_id = None;
    let mut d2 = fx::Diag::new("DIA-2", p, FT01, "20260301101500", "M19.9");
    d2.main = false;
    d2.care_contact_id = Some("KK-CC-1".into());
    let mut d1 = fx::Diag::new("DIA-1", p, FT01, "20260301101000", "m17.1");
    d1.care_contact_id = Some("KK-CC-1".into());
    vec![
        (
            Contract::GetCareContacts,
            fx::care_contacts_response(&[fx::care_contact(&fx::Contact::new("CC-1", p, FT01, "20260301100000")), fx::care_contact(&c2)]),
        ),
        (Contract::GetDiagnosis, fx::diagnosis_response(&[fx::diagnosis(&d1), fx::diagnosis(&d2)])),
        (
            Contract::GetActivities,
            fx::activities_response(&[fx::activity_group(
                p,
                FT01,
                &[
                    fx::activity("ACT-1", "DV200", OID_KVA, "20260301103000", Some(("KK-CC-1", FT01))),
                    fx::activity("ACT-2", "ARTROSSKOLA", LOCAL_TERMS, "20260301104500", Some(("CC-1", FT01))),
                ],
            )]),
        ),
        (
            Contract::GetObservations,
            fx::observations_response(&[fx::observation_group(
                p,
                FT01,
                &[
                    fx::observation("OBS-1", "NRS-SMARTA", LOCAL_TERMS, "20260301100500", &fx::pq("6", "1"), Some(("KK-CC-1", FT01))),
                    fx::observation("OBS-2", "MEST-BESVARANDE-LED", LOCAL_TERMS, "20260301100600", &fx::cv("KNA"), None),
                    fx::observation("OBS-3", "RONTGEN-GJORD", LOCAL_TERMS, "20260301100700", &fx::ts("YYYYMMDD", "20250115"), None),
                    fx::observation("OBS-4", "SJUKSKRIVEN-LEDBESVAR", LOCAL_TERMS, "20260301100800", &fx::ivl("20260101", "20260131"), None),
                ],
            )]),
        ),
    ]
}

#[test]
fn riv_fixtures_validate_against_the_xsds() {
    let p = pnr("19500101", "123");
    for (c, doc) in good_documents(&p) {
        assert_valid(&response_xsd(c), &doc, c.name());
    }
    assert_valid(&response_xsd(Contract::GetCareContacts), &fx::care_contacts_error(Some("INVALID_REQUEST"), "l"), "error response");
    let upd = fx::updates_response(false, &[fx::resident(&p, &[(FT01, SS)])]);
    assert_valid(&response_xsd(Contract::GetUpdates), &upd, "GetUpdates");
}

#[test]
fn riv_requests_validate_against_the_xsds() {
    use registerbrygga::sources::riv::request;
    let p = pid(&pnr("19500101", "123"));
    let units = vec![HsaId::parse(FT01).unwrap(), HsaId::parse(FT02).unwrap()];
    let q = request::PatientQuery {
        patient: &p,
        units: &units,
        care_giver: Some("SE2321000156-0001"),
        from: NaiveDate::from_ymd_opt(2025, 5, 1).unwrap(),
        to: today(),
    };
    let xsd = |c: Contract| {
        let s = response_xsd(c).display().to_string();
        PathBuf::from(s.replace("Response", ""))
    };
    let bodies = [
        (Contract::GetCareContacts, request::get_care_contacts(&q)),
        (Contract::GetDiagnosis, request::get_diagnosis(&q)),
        (Contract::GetActivities, request::get_activities(&q, Some(&units[0]))),
        (Contract::GetActivities, request::get_activities(&q, None)),
        (Contract::GetObservations, request::get_observations(&q, Some(&units[1]))),
        (Contract::GetUpdates, request::get_updates("riv:clinicalprocess:logistics:logistics", Utc::now(), None)),
        (Contract::GetUpdates, request::get_updates("riv:clinicalprocess:logistics:logistics", Utc::now(), Some("191212121212"))),
    ];
    for (c, body) in bodies {
        let body = String::from_utf8(body).unwrap();
        assert_valid(&xsd(c), &body, &format!("{} request", c.name()));
    }
    // A fresh interactionAgreementId per request.
    let a = String::from_utf8(request::get_activities(&q, None)).unwrap();
    let b = String::from_utf8(request::get_activities(&q, None)).unwrap();
    assert_ne!(a, b);
}

#[test]
fn riv_each_contract_parses_into_canonical_records() {
    let p = pnr("19500101", "123");
    let ctx = parse_ctx();
    let docs = good_documents(&p);

    // Care contacts, bare and in an envelope alike.
    let cc = parse_bytes(docs[0].1.as_bytes(), "cc.xml", &ctx).unwrap();
    let cc_env = parse_bytes(fx::envelope(&docs[0].1).as_bytes(), "cc.xml", &ctx).unwrap();
    assert_eq!(cc.records, cc_env.records);
    assert_eq!(cc.contract, Contract::GetCareContacts);
    assert!(cc.refused.is_empty(), "{:?}", cc.refused);
    assert_eq!(cc.log_ids(), vec!["log-cc-1".to_string()]);
    let Record::CareContact(c1) = &cc.records[0] else { panic!("care contact expected") };
    assert_eq!(c1.patient, pid(&p));
    assert_eq!(c1.provenance.document_id, "CC-1");
    assert_eq!(c1.provenance.source_system, SS);
    assert_eq!(c1.provenance.connector, "test");
    assert_eq!(c1.care_contact_id.as_deref(), Some("KK-CC-1"));
    assert_eq!(c1.unit.as_ref().map(|u| u.as_str()), Some(FT01));
    assert_eq!(c1.start, Some(local(2026, 3, 1, 10, 0)));
    assert_eq!(c1.contact_type.as_ref().map(|c| c.code.as_str()), Some("1"));
    assert_eq!(c1.profession.as_ref().map(|c| c.code.as_str()), Some(PHYSIO));
    assert!(!c1.nullified);
    let Record::CareContact(c2) = &cc.records[1] else { panic!("care contact expected") };
    assert!(c2.nullified);
    assert_eq!(c2.end, Some(local(2026, 3, 10, 14, 30)));
    // Without careContactId the contact is known by its document id.
    assert_eq!(c2.care_contact_id.as_deref(), Some("CC-2"));

    let dia = parse_bytes(docs[1].1.as_bytes(), "dia.xml", &ctx).unwrap();
    assert!(dia.refused.is_empty(), "{:?}", dia.refused);
    let Record::Diagnosis(d1) = &dia.records[0] else { panic!("diagnosis expected") };
    assert_eq!(d1.code, Code { system: OID_ICD10SE.into(), code: "M171".into(), display: Some("Knäledsartros".into()) });
    assert_eq!(d1.kind, DiagnosisKind::Main);
    assert_eq!(d1.chronic, Some(true));
    assert_eq!(d1.care_contact_id.as_deref(), Some("KK-CC-1"));
    assert_eq!(d1.time, Some(local(2026, 3, 1, 10, 10)));
    let Record::Diagnosis(d2) = &dia.records[1] else { panic!("diagnosis expected") };
    assert_eq!((d2.kind, d2.code.code.as_str()), (DiagnosisKind::Secondary, "M199"));

    let act = parse_bytes(docs[2].1.as_bytes(), "act.xml", &ctx).unwrap();
    assert!(act.refused.is_empty(), "{:?}", act.refused);
    let Record::Activity(a1) = &act.records[0] else { panic!("activity expected") };
    assert_eq!(a1.code, Code::new(OID_KVA, "DV200"));
    assert_eq!(a1.provenance.document_id, "ACT-1");
    assert_eq!(a1.care_contact_id.as_deref(), Some("KK-CC-1"));
    assert_eq!(a1.unit.as_ref().map(|u| u.as_str()), Some(FT01));
    assert_eq!(a1.profession.as_ref().map(|c| c.code.as_str()), Some(PHYSIO));
    assert_eq!(a1.time, Some(local(2026, 3, 1, 10, 30)));
    assert_eq!(act.records.len(), 2);

    let obs = parse_bytes(docs[3].1.as_bytes(), "obs.xml", &ctx).unwrap();
    assert!(obs.refused.is_empty(), "{:?}", obs.refused);
    let values: Vec<_> = obs.records.iter().map(|r| if let Record::Observation(o) = r { o.value.clone() } else { None }).collect();
    assert_eq!(values[0], Some(ObservationValue::Quantity { value: 6.0, unit: Some("1".into()) }));
    assert_eq!(values[1], Some(ObservationValue::Code { code: Code::new(LOCAL_TERMS, "KNA") }));
    assert_eq!(values[2], Some(ObservationValue::Date { value: local(2025, 1, 15, 0, 0) }));
    assert_eq!(values[3], Some(ObservationValue::Period { start: Some(local(2026, 1, 1, 0, 0)), end: Some(local(2026, 1, 31, 0, 0)) }));
    let Record::Observation(o1) = &obs.records[0] else { panic!("observation expected") };
    assert_eq!(o1.term, Code::new(LOCAL_TERMS, "NRS-SMARTA"));
    assert_eq!(o1.care_contact_id.as_deref(), Some("KK-CC-1"));
    assert_eq!(o1.time, Some(local(2026, 3, 1, 10, 5)));

    // Records of units not asked for are left out and counted.
    let mut only_ft02 = parse_ctx();
    only_ft02.units = vec![HsaId::parse(FT02).unwrap()];
    let cc = parse_bytes(docs[0].1.as_bytes(), "cc.xml", &only_ft02).unwrap();
    assert_eq!((cc.records.len(), cc.outside_units), (1, 1));
}

#[test]
fn riv_unknown_code_systems_are_refused_naming_the_field() {
    let p = pnr("19500101", "123");
    let doc = fx::activities_response(&[fx::activity_group(
        &p,
        FT01,
        &[fx::activity("ACT-1", "DV200", OID_KVA, "20260301103000", None), fx::activity("ACT-9", "QX001", "1.2.3.4.5", "20260301103000", None)],
    )]);
    assert_valid(&response_xsd(Contract::GetActivities), &doc, "activities");
    // Default known systems: KVÅ is kept, the unknown one refused.
    let parsed = parse_bytes(doc.as_bytes(), "act.xml", &ParseContext::new("t", today())).unwrap();
    assert_eq!(parsed.records.len(), 1);
    assert_eq!(parsed.refused.len(), 1);
    let r = &parsed.refused[0];
    assert_eq!(r.field, "activityGroup/activity/code/codeSystem");
    assert!(r.document.contains("act.xml") && r.document.contains("ACT-9"), "{r}");
    assert!(r.reason.contains("not in known_code_systems"), "{r}");
}

/// GetActivities and GetObservations have no `nullified` element: a nullified (makulerad) item
/// carries the status MAKULERAD, and must come out nullified (it contributes nothing to a
/// register); any other status, or none, leaves it in force.
#[test]
fn riv_nullified_status_marks_activities_and_observations_nullified() {
    let p = pnr("19500101", "123");
    let ctx = parse_ctx();
    let status = |code: &str| format!("<c:status><c:code>{code}</c:code><c:codeSystem>{LOCAL_TERMS}</c:codeSystem></c:status>");
    // The schemas place `status` after the activity's `id` and after the observation's `type`.
    let with_status = |item: String, after: &str, code: Option<&str>| match code {
        Some(c) => item.replacen(after, &format!("{after}{}", status(c)), 1),
        None => item,
    };
    let acts: Vec<String> = [("A-1", Some("MAKULERAD")), ("A-2", Some("GENOMFORD")), ("A-3", None)]
        .iter()
        .map(|(id, st)| with_status(fx::activity(id, "DV200", OID_KVA, "20260301103000", None), "</c:id>", *st))
        .collect();
    let doc = fx::activities_response(&[fx::activity_group(&p, FT01, &acts)]);
    assert_valid(&response_xsd(Contract::GetActivities), &doc, "activities with status");
    let parsed = parse_bytes(doc.as_bytes(), "act.xml", &ctx).unwrap();
    let nullified: Vec<bool> = parsed.records.iter().map(|r| r.nullified()).collect();
    assert_eq!(nullified, [true, false, false]);

    let obs: Vec<String> = [("O-1", Some("MAKULERAD")), ("O-2", Some("GENOMFORD")), ("O-3", None)]
        .iter()
        .map(|(id, st)| with_status(fx::observation(id, "NRS-SMARTA", LOCAL_TERMS, "20260301103000", &fx::pq("6", "1"), None), "</c:type>", *st))
        .collect();
    let doc = fx::observations_response(&[fx::observation_group(&p, FT01, &obs)]);
    assert_valid(&response_xsd(Contract::GetObservations), &doc, "observations with status");
    let parsed = parse_bytes(doc.as_bytes(), "obs.xml", &ctx).unwrap();
    assert!(parsed.refused.is_empty(), "{:?}", parsed.refused);
    let nullified: Vec<bool> = parsed.records.iter().map(|r| r.nullified()).collect();
    assert_eq!(nullified, [true, false, false]);
}

// ---------------------------------------------------------------------------------------------
// RIV-TA over HTTPS with mTLS: a small producer on loopback serving canned documents

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    soap_action: String,
    consumer: String,
    correlation: String,
    content_type: String,
    body: String,
}

impl Seen {
    /// The operation from the SOAPAction (`…:GetCareContacts`).
    fn op(&self) -> &str {
        self.soap_action.trim_matches('"').rsplit(':').next().unwrap_or("")
    }
    /// The patient the request asks about.
    fn patient(&self) -> String {
        let Some(i) = self.body.find("<r:patientId>") else { return String::new() };
        let rest = &self.body[i..];
        let end = rest.find("</r:patientId>").unwrap_or(rest.len());
        let inner = &rest[..end];
        for tag in ["<c:id>", "<c:extension>"] {
            if let Some(j) = inner.find(tag) {
                let v = &inner[j + tag.len()..];
                return v[..v.find('<').unwrap_or(v.len())].to_string();
            }
        }
        String::new()
    }
    /// The single care unit asked for (GetActivities/GetObservations), if any.
    fn care_unit(&self) -> Option<String> {
        let i = self.body.find("<r:careUnitId>")?;
        let rest = &self.body[i..];
        let j = rest.find("<c:extension>")? + "<c:extension>".len();
        Some(rest[j..j + rest[j..].find('<')?].to_string())
    }
}

enum Reply {
    Xml(String),
    /// Answer after a pause (for concurrency checks).
    Slow(u64, Box<Reply>),
    Status(u16, String),
    /// `head`, then `chunk` `repeat` times, generated lazily; counts chunks produced.
    Stream {
        head: String,
        chunk: String,
        repeat: usize,
        produced: Arc<std::sync::atomic::AtomicUsize>,
    },
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct RivServer {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Most requests in flight at once.
    max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl RivServer {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn count(&self, op: &str, patient: &str) -> usize {
        self.seen().iter().filter(|s| s.op() == op && s.patient() == patient).count()
    }
}

async fn riv_server(tls: Arc<rustls::ServerConfig>, handler: Handler) -> RivServer {
    use axum::body::Body;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let st = (seen.clone(), handler, in_flight, max_in_flight.clone());
    let app = axum::Router::new().fallback(
        |axum::extract::State((seen, handler, in_flight, max_in_flight)): axum::extract::State<(
            Arc<Mutex<Vec<Seen>>>,
            Handler,
            Arc<AtomicUsize>,
            Arc<AtomicUsize>,
        )>,
         uri: Uri,
         headers: HeaderMap,
         body: String| async move {
            let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let s = Seen {
                path: uri.path().to_string(),
                soap_action: h("soapaction"),
                consumer: h("x-rivta-original-serviceconsumer-hsaid"),
                correlation: h("x-skltp-correlation-id"),
                content_type: h("content-type"),
                body,
            };
            seen.lock().unwrap().push(s.clone());
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            max_in_flight.fetch_max(now, Ordering::SeqCst);
            let xml = [("content-type", "text/xml; charset=UTF-8")];
            let mut reply = handler(&s);
            while let Reply::Slow(ms, inner) = reply {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                reply = *inner;
            }
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let r: Response = match reply {
                Reply::Slow(..) => unreachable!("unwrapped above"),
                Reply::Xml(x) => (xml, x).into_response(),
                Reply::Status(code, x) => (StatusCode::from_u16(code).unwrap(), xml, x).into_response(),
                Reply::Stream { head, chunk, repeat, produced } => {
                    let chunks = std::iter::once(head).chain((0..repeat).map(move |_| {
                        produced.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        chunk.clone()
                    }));
                    let stream = futures::stream::iter(chunks.map(|c| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(c))));
                    (xml, Body::from_stream(stream)).into_response()
                }
            };
            r
        },
    );
    let app = app.with_state(st);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    tokio::spawn(axum_server::from_tcp_rustls(listener, cfg).serve(app.into_make_service()));
    RivServer { url: format!("https://127.0.0.1:{port}"), seen, max_in_flight }
}

fn certs() -> (common::TestDir, CertSet) {
    let dir = common::test_dir();
    let set = CertSet::ensure(&dir.path().join("certs")).unwrap();
    (dir, set)
}

fn riv_settings(server: &RivServer, certs: &CertSet) -> SourceSettings {
    let mut known = SourceSettings::default().known_code_systems;
    known.push(LOCAL_TERMS.into());
    SourceSettings {
        kind: SourceKind::Riv,
        base_url: format!("{}/vp", server.url),
        consumer_hsa_id: "SE2321000156-RBRG".into(),
        care_giver_hsa_id: "SE2321000156-0001".into(),
        tls: sandbox_client_settings(certs),
        timeout_seconds: 10,
        concurrency: 4,
        known_code_systems: known,
        retry: RetrySettings { initial_delay_ms: 5, multiplier: 2.0, max_delay_ms: 20, max_attempts: 3, max_elapsed_seconds: 0, jitter: false },
        ..SourceSettings::default()
    }
}

fn pull_request(discovery: PatientDiscovery, dir: &Path) -> PullRequest {
    PullRequest {
        connector: "sar-test".into(),
        units: vec![HsaId::parse(FT01).unwrap(), HsaId::parse(FT02).unwrap()],
        changed_since: Some(Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap()),
        window_from: NaiveDate::from_ymd_opt(2025, 5, 1).unwrap(),
        window_to: today(),
        discovery,
        connector_dir: dir.to_path_buf(),
        correlation_id: "corr-test-1".into(),
        today: today(),
    }
}

async fn run_pull(src: &dyn Source, req: &PullRequest) -> (anyhow::Result<PullSummary>, Vec<SourceItem>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let collect = tokio::spawn(async move {
        let mut items = vec![];
        while let Some(i) = rx.recv().await {
            items.push(i);
        }
        items
    });
    let summary = src.pull(req, tx).await;
    (summary, collect.await.unwrap())
}

fn batch_of<'a>(items: &'a [SourceItem], p: &str) -> Option<&'a PatientBatch> {
    let id = pid(p);
    items.iter().find_map(|i| match i {
        SourceItem::Patient(b) if b.patient == id => Some(b),
        _ => None,
    })
}

/// Every batch of a patient merged into one (a streaming source may send several).
fn merged_of(items: &[SourceItem], p: &str) -> Option<PatientBatch> {
    let id = pid(p);
    let mut out: Option<PatientBatch> = None;
    for i in items {
        if let SourceItem::Patient(b) = i {
            if b.patient == id {
                match &mut out {
                    None => out = Some(b.clone()),
                    Some(o) => o.records.extend(b.records.iter().cloned()),
                }
            }
        }
    }
    out
}

fn refused_for<'a>(items: &'a [SourceItem], p: &str) -> Vec<(&'a Refusal, bool)> {
    let id = pid(p);
    items
        .iter()
        .filter_map(|i| match i {
            SourceItem::Refused { refusal, patient: Some(pp), transient, .. } if *pp == id => Some((refusal, *transient)),
            _ => None,
        })
        .collect()
}

/// The good answer for any patient: the documents of `good_documents`, activities and
/// observations only for FT01 (the unit the fixtures name).
fn good_reply(s: &Seen) -> Reply {
    let p = s.patient();
    let docs = good_documents(&p);
    let pick = |c: Contract| docs.iter().find(|(cc, _)| *cc == c).map(|(_, d)| d.clone()).unwrap();
    let other_unit = s.care_unit().is_some_and(|u| u != FT01);
    Reply::Xml(fx::envelope(&match s.op() {
        "GetCareContacts" => pick(Contract::GetCareContacts),
        "GetDiagnosis" => pick(Contract::GetDiagnosis),
        "GetActivities" if other_unit => fx::activities_response(&[]),
        "GetActivities" => pick(Contract::GetActivities),
        "GetObservations" if other_unit => fx::observations_response(&[]),
        "GetObservations" => pick(Contract::GetObservations),
        _ => String::new(),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riv_pull_over_mtls_pages_the_engagement_index_and_fetches_each_patient() {
    let (dir, certs) = certs();
    let (a, b, c, d) = (pnr("19500101", "123"), pnr("19610202", "234"), pnr("19720303", "345"), pnr("19830404", "456"));
    let bad = wrong_check_digit(&pnr("19400505", "567"));
    let (a2, b2, c2, d2, bad2) = (a.clone(), b.clone(), c.clone(), d.clone(), bad.clone());
    let handler: Handler = Arc::new(move |s: &Seen| {
        if s.op() != "GetUpdates" {
            return good_reply(s);
        }
        if !s.body.contains("registeredResidentLastFetched") {
            Reply::Xml(fx::envelope(&fx::updates_response(
                false,
                &[fx::resident(&a2, &[(FT01, SS)]), fx::resident(&b2, &[(ELSEWHERE, SS)]), fx::resident(&c2, &[(ELSEWHERE, SS), (FT02, SS)])],
            )))
        } else {
            Reply::Xml(fx::envelope(&fx::updates_response(
                true,
                &[fx::resident(&d2, &[(FT01, SS)]), fx::resident(&a2, &[(FT01, SS)]), fx::resident(&bad2, &[(FT01, SS)])],
            )))
        }
    });
    let server = riv_server(certs.server_config_mtls().unwrap(), handler).await;
    let mut settings = riv_settings(&server, &certs);
    settings.engagement_index_url = format!("{}/ei", server.url);
    let src = RivSource::new(&settings).unwrap();
    let domains = vec!["riv:clinicalprocess:logistics:logistics".to_string(), "riv:clinicalprocess:healthcond:basic".to_string()];
    let req = pull_request(PatientDiscovery::EngagementIndex { service_domains: domains }, dir.path());
    let (summary, items) = run_pull(&src, &req).await;
    let summary = summary.unwrap();

    // A and C (and D) have engagements at our units; B only elsewhere; the invalid id is refused.
    assert!(summary.complete);
    assert_eq!(summary.patients, 3);
    assert!(batch_of(&items, &a).is_some() && batch_of(&items, &c).is_some() && batch_of(&items, &d).is_some());
    assert!(batch_of(&items, &b).is_none());
    // 2 domains x 2 pages, then 3 patients x (contacts + diagnoses + 2 units x (activities + observations)).
    assert_eq!(summary.documents, 4 + 3 * 6);
    let refused: Vec<&Refusal> =
        items.iter().filter_map(|i| if let SourceItem::Refused { refusal, .. } = i { Some(refusal) } else { None }).collect();
    assert_eq!(refused.len(), 2, "the invalid resident is refused once per domain");
    assert_eq!(refused[0].field, "registeredResidentEngagement/registeredResidentIdentification");
    assert!(refused[0].reason.contains("invalid patient identity"), "{}", refused[0]);
    assert_no_identity(&refusal_texts(&items), &[&a, &b, &c, &d, &bad]);

    // The batch: every contract's records, joined to the contacts.
    let ba = batch_of(&items, &a).unwrap();
    assert_eq!((contacts(ba).len(), diagnoses(ba).len(), activities(ba).len(), observations(ba).len()), (2, 2, 2, 4));
    assert!(ba.refusals.is_empty(), "{:?}", ba.refusals);
    assert_eq!(ba.log_ids, vec!["log-cc-1".to_string(), "log-dia-1".to_string()]);
    let act2 = activities(ba).into_iter().find(|x| x.provenance.document_id == "ACT-2").unwrap();
    assert_eq!(act2.care_contact_id.as_deref(), Some("KK-CC-1"), "a reference to the contact's document id is joined to its care-contact id");
    assert!(ba.records.iter().all(|r| r.provenance().connector == "sar-test"));

    // What went over the wire.
    let seen = server.seen();
    let updates: Vec<&Seen> = seen.iter().filter(|s| s.op() == "GetUpdates").collect();
    assert_eq!(updates.len(), 4);
    assert!(updates.iter().all(|s| s.path == "/ei/itintegration/engagementindex/GetUpdates/1/rivtabp21"));
    assert_eq!(
        updates.iter().filter(|s| s.body.contains(&format!("<r:registeredResidentLastFetched>{c}</r:registeredResidentLastFetched>"))).count(),
        2
    );
    assert!(updates[0].body.contains("<r:timeStamp>20260401020000</r:timeStamp>"), "changed_since is sent as Swedish local time");
    for s in &seen {
        assert_eq!(s.consumer, "SE2321000156-RBRG");
        assert_eq!(s.correlation, "corr-test-1");
        assert!(s.content_type.starts_with("text/xml"));
        assert!(s.body.contains("<add:LogicalAddress xmlns:add=\"urn:riv:itintegration:registry:1\">5565594230</add:LogicalAddress>"));
        assert!(s.soap_action.starts_with('"') && s.soap_action.ends_with('"'));
    }
    let cc = seen.iter().find(|s| s.op() == "GetCareContacts").unwrap();
    assert_eq!(cc.path, "/vp/clinicalprocess/logistics/logistics/GetCareContacts/3/rivtabp21");
    assert_eq!(cc.soap_action, "\"urn:riv:clinicalprocess:logistics:logistics:GetCareContactsResponder:3:GetCareContacts\"");
    assert!(cc.body.contains(&format!("<r:careUnitHSAId>{FT01}</r:careUnitHSAId><r:careUnitHSAId>{FT02}</r:careUnitHSAId>")));
    assert!(cc.body.contains("<r:datePeriod><c:start>20250501</c:start><c:end>20260501</c:end></r:datePeriod>"));
    let paths: std::collections::BTreeSet<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    for p in [
        "/vp/clinicalprocess/healthcond/description/GetDiagnosis/2/rivtabp21",
        "/vp/clinicalprocess/activity/actions/GetActivities/1/rivtabp21",
        "/vp/clinicalprocess/healthcond/basic/GetObservations/1/rivtabp21",
    ] {
        assert!(paths.contains(p), "{p} not called");
    }
    assert_eq!(server.count("GetActivities", &a), 2, "activities are asked once per unit");
}

fn write_patient_list(dir: &Path, patients: &[&str]) -> PathBuf {
    let f = dir.join("patients.txt");
    let mut text = String::from("# patients for the test connector\n\n");
    for p in patients {
        text.push_str(p);
        text.push('\n');
    }
    std::fs::write(&f, text).unwrap();
    f
}

/// An entity-expansion bomb: a DTD whose entities expand to gigabytes.
fn entity_bomb() -> String {
    let mut dtd = String::from("<!ENTITY lol \"lol\">");
    for i in 1..=9 {
        let prev = if i == 1 { "lol".to_string() } else { format!("lol{}", i - 1) };
        dtd.push_str(&format!("<!ENTITY lol{i} \"{}\">", format!("&{prev};").repeat(10)));
    }
    format!(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE GetDiagnosisResponse [{dtd}]>\n<GetDiagnosisResponse xmlns=\"{}\">&lol9;</GetDiagnosisResponse>",
        fx::DIA_NS
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riv_bad_input_is_refused_clearly_and_the_rest_comes_through() {
    use std::collections::HashMap;
    let (dir, certs) = certs();
    let names =
        ["good", "malformed", "wrong_ns", "missing", "bad_id", "unknown_code", "future", "oversized", "bomb", "fault", "http500", "client_fault"];
    let ids: HashMap<&str, String> =
        names.iter().enumerate().map(|(i, n)| (*n, pnr(&format!("19{:02}0{}1{}", 40 + i, 1 + i % 9, i % 10), "123"))).collect();
    let by_pnr: HashMap<String, &str> = ids.iter().map(|(k, v)| (v.clone(), *k)).collect();
    let produced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let produced2 = produced.clone();
    let handler: Handler = Arc::new(move |s: &Seen| {
        let p = s.patient();
        let who = by_pnr.get(&p).copied().unwrap_or("good");
        match (who, s.op()) {
            ("malformed", "GetDiagnosis") => {
                let good = fx::envelope(&fx::diagnosis_response(&[fx::diagnosis(&fx::Diag::new("D1", &p, FT01, "20260301100000", "M17.1"))]));
                Reply::Xml(good.replace("</c:diagnosisBody>", "</c:diagnosisBdy>"))
            }
            ("wrong_ns", "GetCareContacts") => Reply::Xml(fx::envelope(
                &fx::care_contacts_response(&[]).replace(fx::CC_NS, "urn:riv:clinicalprocess:logistics:logistics:GetCareContactsResponder:2"),
            )),
            ("missing", "GetCareContacts") => {
                let mut c = fx::Contact::new("CC-M", &p, FT01, "20260301100000");
                c.drop_professional = true;
                Reply::Xml(fx::envelope(&fx::care_contacts_response(&[
                    fx::care_contact(&c),
                    fx::care_contact(&fx::Contact::new("CC-OK", &p, FT01, "20260302100000")),
                ])))
            }
            ("bad_id", "GetObservations") if s.care_unit().as_deref() == Some(FT01) => {
                Reply::Xml(fx::envelope(&fx::observations_response(&[fx::observation_group(
                    &wrong_check_digit(&p),
                    FT01,
                    &[fx::observation("O1", "NRS-SMARTA", LOCAL_TERMS, "20260301100500", &fx::pq("4", "1"), None)],
                )])))
            }
            ("unknown_code", "GetActivities") if s.care_unit().as_deref() == Some(FT01) => {
                Reply::Xml(fx::envelope(&fx::activities_response(&[fx::activity_group(
                    &p,
                    FT01,
                    &[
                        fx::activity("A-OK", "DV200", OID_KVA, "20260301103000", None),
                        fx::activity("A-BAD", "ZZ999", "1.2.752.999.1", "20260301103000", None),
                    ],
                )])))
            }
            ("future", "GetCareContacts") => Reply::Xml(fx::envelope(&fx::care_contacts_response(&[
                fx::care_contact(&fx::Contact::new("CC-F", &p, FT01, "20270101100000")),
                fx::care_contact(&fx::Contact::new("CC-N", &p, FT01, "20260301100000")),
            ]))),
            ("oversized", "GetObservations") => Reply::Stream {
                head: format!("<GetObservationsResponse xmlns=\"{}\" xmlns:c=\"{}\"><!--", fx::OBS_NS, fx::OBS_CORE),
                chunk: "x".repeat(64 * 1024),
                repeat: 1024,
                produced: produced2.clone(),
            },
            ("bomb", "GetDiagnosis") => Reply::Xml(entity_bomb()),
            ("fault", "GetActivities") => Reply::Status(500, fx::fault("Server", &format!("Internal error while reading patient {p}"))),
            ("http500", "GetCareContacts") => Reply::Status(500, "<html>Internal Server Error</html>".into()),
            ("client_fault", "GetDiagnosis") => Reply::Status(500, fx::fault("Client", "Invalid request: unknown logical address")),
            _ => good_reply(s),
        }
    });
    let server = riv_server(certs.server_config_mtls().unwrap(), handler).await;
    let mut settings = riv_settings(&server, &certs);
    settings.max_response_bytes = 256 * 1024;
    let src = RivSource::new(&settings).unwrap();
    let list: Vec<&str> = names.iter().map(|n| ids[n].as_str()).collect();
    write_patient_list(dir.path(), &list);
    let req = pull_request(PatientDiscovery::File { path: "patients.txt".into() }, dir.path());
    let (summary, items) = run_pull(&src, &req).await;
    let summary = summary.unwrap();
    let all: Vec<&str> = ids.values().map(|s| s.as_str()).collect();
    assert_no_identity(&refusal_texts(&items), &all);
    assert!(!summary.complete, "transient failures keep the watermark back");

    // Whole documents refused: the patient's batch is withheld, the document and reason named.
    let one = |n: &str| {
        let r = refused_for(&items, &ids[n]);
        assert_eq!(r.len(), 1, "{n}: {r:?}");
        assert!(batch_of(&items, &ids[n]).is_none(), "{n}: batch must be withheld");
        (r[0].0.clone(), r[0].1)
    };
    let (r, transient) = one("malformed");
    assert_eq!(r.document, "GetDiagnosis 2 at /vp/clinicalprocess/healthcond/description/GetDiagnosis/2/rivtabp21");
    assert!(r.reason.starts_with("malformed XML at line 5, column"), "{r}");
    assert!(!transient);
    let (r, transient) = one("wrong_ns");
    assert!(r.document.starts_with("GetCareContacts 3 at /vp/"), "{r}");
    assert_eq!(r.field, "GetCareContactsResponse");
    assert!(
        r.reason.contains("GetCareContactsResponder:2")
            && r.reason.contains("expected urn:riv:clinicalprocess:logistics:logistics:GetCareContactsResponder:3"),
        "{r}"
    );
    assert!(!transient);
    let (r, transient) = one("oversized");
    assert!(r.document.starts_with("GetObservations 1 at"), "{r}");
    assert!(r.reason.contains("larger than max_response_bytes") && r.reason.contains("reading stopped"), "{r}");
    assert!(!transient);
    assert!(produced.load(std::sync::atomic::Ordering::SeqCst) < 512, "the client stops reading an oversized response");
    let (r, transient) = one("bomb");
    assert_eq!(r.field, "<!DOCTYPE>");
    assert!(r.reason.contains("no DTDs, no entity expansion"), "{r}");
    assert!(!transient);
    let (r, transient) = one("fault");
    assert_eq!(r.field, "Envelope/Body/Fault");
    assert!(r.reason.starts_with("SOAP fault (soap:Server): Internal error while reading patient <pnr>"), "{r}");
    assert!(r.reason.contains("gave up after 3 attempts"), "{r}");
    assert!(transient);
    assert_eq!(server.count("GetActivities", &ids["fault"]), 3);
    let (r, transient) = one("http500");
    assert_eq!(r.document, "GetCareContacts 3 at /vp/clinicalprocess/logistics/logistics/GetCareContacts/3/rivtabp21");
    assert!(r.reason.starts_with("HTTP 500 Internal Server Error") && r.reason.contains("gave up after 3 attempts"), "{r}");
    assert!(transient);
    assert_eq!(server.count("GetCareContacts", &ids["http500"]), 3);
    let (r, transient) = one("client_fault");
    assert!(r.reason.contains("SOAP fault (soap:Client): Invalid request"), "{r}");
    assert!(!transient, "a Client fault is not retried");
    assert_eq!(server.count("GetDiagnosis", &ids["client_fault"]), 1);

    // Item-level refusals: the rest of the patient's documents still come through.
    let item = |n: &str| {
        let b = batch_of(&items, &ids[n]).unwrap_or_else(|| panic!("{n}: batch expected"));
        assert_eq!(b.refusals.len(), 1, "{n}: {:?}", b.refusals);
        (b.refusals[0].clone(), b)
    };
    let (r, b) = item("missing");
    assert_eq!(r.field, "careContact/careContactHeader/accountableHealthcareProfessional");
    assert_eq!(r.reason, "mandatory element is missing");
    assert!(r.document.contains("careContact[0] documentId CC-M"), "{r}");
    assert_eq!(contacts(b).len(), 1);
    assert_eq!(diagnoses(b).len(), 2);
    let (r, b) = item("bad_id");
    assert_eq!(r.field, "observationGroup/patient/id/extension");
    assert!(r.reason.starts_with("invalid patient identity: check digit"), "{r}");
    assert!(r.reason.contains("1 observation(s) were not read"), "{r}");
    assert!(observations(b).is_empty() && contacts(b).len() == 2);
    let (r, b) = item("unknown_code");
    assert_eq!(r.field, "activityGroup/activity/code/codeSystem");
    assert!(r.document.contains("id A-BAD"), "{r}");
    assert_eq!(activities(b).len(), 1);
    let (r, b) = item("future");
    assert_eq!(r.field, "careContact/careContactBody/careContactTimePeriod/start");
    assert_eq!(r.reason, "date lies in the future");
    assert_eq!(contacts(b).len(), 1);

    let good = batch_of(&items, &ids["good"]).unwrap();
    assert!(good.refusals.is_empty());
    assert_eq!(good.records.len(), 10);
    assert_eq!(summary.patients, 5);
    assert_eq!(summary.refused, 7 + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riv_tls_failures_are_clear_transient_refusals() {
    let (dir, certs) = certs();
    let p = pnr("19500101", "123");
    write_patient_list(dir.path(), &[&p]);
    let req = pull_request(PatientDiscovery::File { path: "patients.txt".into() }, dir.path());

    // The server asks for a client certificate the client does not present. Under TLS 1.2 the
    // refusal comes inside the handshake and is named as a TLS failure. Under TLS 1.3 the server
    // judges the certificate after the client's side of the handshake is done: its refusal
    // reaches the client as an alert or as a closed connection, whichever wins the race; either
    // way it is a transient refusal of the transport.
    for (tls12, config) in [(true, certs.server_config_mtls_versions(&[&rustls::version::TLS12]).unwrap()), (false, certs.server_config_mtls().unwrap())] {
        let server = riv_server(config, Arc::new(good_reply)).await;
        let mut settings = riv_settings(&server, &certs);
        settings.tls.client_cert_file = None;
        settings.tls.client_key = None;
        let (summary, items) = run_pull(&RivSource::new(&settings).unwrap(), &req).await;
        assert!(!summary.unwrap().complete);
        let r = refused_for(&items, &p);
        assert_eq!(r.len(), 1);
        let (refusal, transient) = r[0];
        assert!(transient);
        assert_eq!(refusal.document, "GetCareContacts 3 at /vp/clinicalprocess/logistics/logistics/GetCareContacts/3/rivtabp21");
        assert_eq!(refusal.field, "transport");
        if tls12 {
            assert!(refusal.reason.starts_with("TLS failure"), "{refusal}");
        }
        assert!(server.seen().is_empty(), "no request reached the producer");
    }

    // The server presents a certificate from a CA the client does not trust.
    let other = common::test_dir();
    let foreign = CertSet::ensure(&other.path().join("foreign")).unwrap();
    let server = riv_server(foreign.server_config_mtls().unwrap(), Arc::new(good_reply)).await;
    let settings = riv_settings(&server, &certs);
    let (summary, items) = run_pull(&RivSource::new(&settings).unwrap(), &req).await;
    assert!(!summary.unwrap().complete);
    let r = refused_for(&items, &p);
    assert_eq!(r.len(), 1);
    assert!(r[0].1);
    assert!(r[0].0.reason.starts_with("TLS failure") && r[0].0.reason.contains("certificate"), "{}", r[0].0);
    assert!(r[0].0.reason.contains("gave up after 3 attempts"), "{}", r[0].0);
    assert_no_identity(&refusal_texts(&items), &[&p]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riv_result_error_keeps_the_log_id_and_only_invalid_request_is_permanent() {
    let (dir, certs) = certs();
    let (inv, tech) = (pnr("19500101", "123"), pnr("19610202", "234"));
    let inv2 = inv.clone();
    let handler: Handler = Arc::new(move |s: &Seen| match s.op() {
        "GetCareContacts" if s.patient() == inv2 => Reply::Xml(fx::envelope(&fx::care_contacts_error(Some("INVALID_REQUEST"), "log-inv-7"))),
        "GetCareContacts" => Reply::Xml(fx::envelope(&fx::care_contacts_error(None, "log-tech-8"))),
        _ => good_reply(s),
    });
    let server = riv_server(certs.server_config_mtls().unwrap(), handler).await;
    let src = RivSource::new(&riv_settings(&server, &certs)).unwrap();
    write_patient_list(dir.path(), &[&inv, &tech]);
    let req = pull_request(PatientDiscovery::File { path: "patients.txt".into() }, dir.path());
    let (summary, items) = run_pull(&src, &req).await;
    assert!(!summary.unwrap().complete);
    let (r, transient) = refused_for(&items, &inv)[0];
    assert!(!transient);
    assert_eq!(r.field, "result/resultCode");
    assert!(r.reason.starts_with("resultCode ERROR (INVALID_REQUEST), logId log-inv-7"), "{r}");
    assert_eq!(server.count("GetCareContacts", &inv), 1);
    let (r, transient) = refused_for(&items, &tech)[0];
    assert!(transient);
    assert!(r.reason.contains("logId log-tech-8") && r.reason.contains("gave up after 3 attempts"), "{r}");
    assert_eq!(server.count("GetCareContacts", &tech), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riv_patient_lists_from_a_file_and_from_sql() {
    let (dir, certs) = certs();
    let (a, b, c) = (pnr("19500101", "123"), pnr("19610202", "234"), pnr("19720303", "345"));
    let server = riv_server(certs.server_config_mtls().unwrap(), Arc::new(good_reply)).await;
    let src = RivSource::new(&riv_settings(&server, &certs)).unwrap();

    // File: comments, blank lines, a duplicate, an invalid line (refused by line number).
    let bad = wrong_check_digit(&c);
    std::fs::write(dir.path().join("list.txt"), format!("# artros patients\n{a}\n\n{b}  # second\n{bad}\n{a}\n")).unwrap();
    let req = pull_request(PatientDiscovery::File { path: "list.txt".into() }, dir.path());
    let (summary, items) = run_pull(&src, &req).await;
    let summary = summary.unwrap();
    assert!(summary.complete);
    assert_eq!(summary.patients, 2);
    assert!(batch_of(&items, &a).is_some() && batch_of(&items, &b).is_some());
    let refused: Vec<&Refusal> =
        items.iter().filter_map(|i| if let SourceItem::Refused { refusal, .. } = i { Some(refusal) } else { None }).collect();
    assert_eq!(refused.len(), 1);
    assert_eq!((refused[0].document.as_str(), refused[0].field.as_str()), ("patient list list.txt", "line 5"));
    assert_no_identity(&refusal_texts(&items), &[&a, &b, &c]);

    // SQL: one text column from a SQLite database.
    let db = dir.path().join("patients.db");
    let url = format!("sqlite:{}?mode=rwc", db.display());
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE pat (pnr TEXT, unit TEXT)").execute(&mut conn).await.unwrap();
        for (p, u) in [(&a, FT01), (&c, FT02), (&bad, FT01), (&b, ELSEWHERE)] {
            sqlx::query("INSERT INTO pat VALUES (?, ?)").bind(p).bind(u).execute(&mut conn).await.unwrap();
        }
    }
    let var = format!("RB_TEST_PATIENT_DB_{}", uuid::Uuid::new_v4().simple());
    std::env::set_var(&var, &url);
    let req = pull_request(
        PatientDiscovery::Sql { url: Secret::from_env(&var), query: "SELECT pnr FROM pat WHERE unit LIKE 'SE2321000156-FT%' ORDER BY pnr".into() },
        dir.path(),
    );
    let (summary, items) = run_pull(&src, &req).await;
    assert_eq!(summary.unwrap().patients, 2);
    assert!(batch_of(&items, &a).is_some() && batch_of(&items, &c).is_some() && batch_of(&items, &b).is_none());
    let refused: Vec<&Refusal> =
        items.iter().filter_map(|i| if let SourceItem::Refused { refusal, .. } = i { Some(refusal) } else { None }).collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].document, "patient query");
    assert!(refused[0].field.starts_with("row "));

    // `all` makes no sense for per-patient contracts.
    let req = pull_request(PatientDiscovery::All, dir.path());
    let (summary, _) = run_pull(&src, &req).await;
    let e = summary.unwrap_err().to_string();
    assert!(e.contains("`all` is not supported by a RIV-TA source"), "{e}");
}

#[tokio::test]
async fn riv_parser_streams_items_while_the_document_is_still_arriving() {
    use registerbrygga::sources::riv::parse::{parse_response_with, Item};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let p = pnr("19500101", "123");
    let contact = fx::care_contact(&fx::Contact::new("CC-X", &p, FT01, "20260301100000"));
    let n = 4000; // about 5 MB
    let total = n * contact.len();
    let written = Arc::new(AtomicUsize::new(0));
    // A pipe much smaller than the document: the writer can only be ahead by 64 KiB.
    let (mut w, r) = tokio::io::duplex(64 * 1024);
    let w2 = written.clone();
    let writer = tokio::spawn(async move {
        w.write_all(format!("<GetCareContactsResponse xmlns=\"{}\" xmlns:c=\"{}\">", fx::CC_NS, fx::CC_CORE).as_bytes()).await.unwrap();
        for _ in 0..n {
            w.write_all(contact.as_bytes()).await.unwrap();
            w2.fetch_add(contact.len(), Ordering::SeqCst);
        }
        w.write_all(b"<result><c:resultCode>OK</c:resultCode><c:logId>l</c:logId></result></GetCareContactsResponse>").await.unwrap();
    });
    let mut first_at = None;
    let mut count = 0usize;
    let summary = parse_response_with(tokio::io::BufReader::new(r), "big.xml", &parse_ctx(), |item| {
        if let Item::Record(_) = item {
            count += 1;
            if first_at.is_none() {
                first_at = Some(written.load(Ordering::SeqCst));
            }
        }
    })
    .await
    .unwrap();
    writer.await.unwrap();
    assert_eq!(count, n);
    assert!(summary.bytes as usize > total);
    let first_at = first_at.unwrap();
    assert!(first_at < total / 20, "the first record arrived after {first_at} of {total} bytes were written");
}

#[test]
fn inspect_reports_records_and_refusals_apart() {
    use registerbrygga::sources::riv::inspect;
    let dir = common::test_dir();
    let p = pnr("19500101", "123");
    let good = dir.path().join("cc.xml");
    let mut c = fx::Contact::new("CC-9", &p, FT01, "20270101100000");
    c.care_contact_id = None;
    std::fs::write(
        &good,
        fx::envelope(&fx::care_contacts_response(&[fx::care_contact(&fx::Contact::new("CC-1", &p, FT01, "20260301100000")), fx::care_contact(&c)])),
    )
    .unwrap();
    let today = chrono::Utc::now().with_timezone(&chrono_tz::Europe::Stockholm).date_naive();
    let parsed = registerbrygga::sources::riv::parse_bytes(&std::fs::read(&good).unwrap(), "cc.xml", &ParseContext::new("inspect", today));
    let (v, code) = inspect::report("cc.xml", &parsed);
    assert_eq!(code, 0);
    assert_eq!(v["document"], "cc.xml");
    assert_eq!(v["records"].as_array().unwrap().len(), 1);
    assert_eq!(v["records"][0]["patient"]["id"], "<redacted>");
    assert_eq!(v["refused"][0]["field"], "careContact/careContactBody/careContactTimePeriod/start");
    assert!(!v.to_string().contains(&p[2..]), "inspect output never carries the identity");
    assert_eq!(inspect::run(&good, true).unwrap(), 0);

    let bad = dir.path().join("bad.xml");
    std::fs::write(&bad, "<GetCareContactsResponse xmlns=\"urn:wrong\"/>").unwrap();
    assert_eq!(inspect::run(&bad, false).unwrap(), 1);
    let bomb = dir.path().join("bomb.xml");
    std::fs::write(&bomb, entity_bomb()).unwrap();
    assert_eq!(inspect::run(&bomb, true).unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// Files source

fn age(path: &Path, secs: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(secs)).unwrap();
}

fn files_settings(dir: &Path, settle: u64) -> SourceSettings {
    let mut known = SourceSettings::default().known_code_systems;
    known.push(LOCAL_TERMS.into());
    SourceSettings {
        kind: SourceKind::Files,
        directory: Some(dir.to_path_buf()),
        settle_seconds: settle,
        known_code_systems: known,
        ..SourceSettings::default()
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn files_source_reads_settled_documents_groups_per_patient_and_moves_them_on_commit() {
    let root = common::test_dir();
    let drop = root.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let (p1, p2) = (pnr("19500101", "123"), pnr("19610202", "234"));
    let write = |name: &str, text: &str, old: bool| {
        let p = drop.join(name);
        std::fs::write(&p, text).unwrap();
        if old {
            age(&p, 600);
        }
    };
    write(
        "a-contacts.xml",
        &fx::envelope(&fx::care_contacts_response(&[
            fx::care_contact(&fx::Contact::new("CC-1", &p1, FT01, "20260301100000")),
            fx::care_contact(&fx::Contact::new("CC-2", &p2, FT02, "20260302100000")),
        ])),
        true,
    );
    let mut d = fx::Diag::new("DIA-1", &p1, FT01, "20260301101000", "M17.1");
    d.care_contact_id = Some("KK-CC-1".into());
    write("b-diagnoses.xml", &fx::diagnosis_response(&[fx::diagnosis(&d)]), true);
    write("c-halfway.xml.tmp", "<GetCareContactsResponse", true);
    write("d-fresh.xml", &fx::care_contacts_response(&[fx::care_contact(&fx::Contact::new("CC-3", &p2, FT01, "20260303100000"))]), false);
    write("e-broken.xml", "<GetCareContactsResponse xmlns=\"urn:x\"><careContact>", true);
    let mut future = fx::Contact::new("CC-F", &p2, FT01, "20300101100000");
    future.care_contact_id = None;
    write(
        "f-mixed.xml",
        &fx::care_contacts_response(&[fx::care_contact(&future), fx::care_contact(&fx::Contact::new("CC-4", &p2, ELSEWHERE, "20260304100000"))]),
        true,
    );

    let src = registerbrygga::sources::files::FilesSource::new(&files_settings(&drop, 2)).unwrap();
    let req = pull_request(PatientDiscovery::All, root.path());
    let started = std::time::Instant::now();
    let (summary, items) = run_pull(&src, &req).await;
    let summary = summary.unwrap();
    assert!(summary.complete && summary.warnings.is_empty(), "{summary:?}");
    assert_eq!(summary.patients, 2);
    assert_eq!(summary.documents, 4);
    let read: Vec<String> = summary.files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(read, vec!["a-contacts.xml", "b-diagnoses.xml", "d-fresh.xml", "e-broken.xml", "f-mixed.xml"], "the .tmp file is not read");
    // The file dropped just before the pull was waited for (a one-shot backfill reads it).
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500), "the pull waited for the fresh file to settle");

    // Grouped per patient across files; records of other units left out.
    let b1 = batch_of(&items, &p1).unwrap();
    assert_eq!((contacts(b1).len(), diagnoses(b1).len()), (1, 1));
    assert_eq!(b1.log_ids, vec!["log-cc-1".to_string(), "log-dia-1".to_string()]);
    let b2 = batch_of(&items, &p2).unwrap();
    assert_eq!(b2.records.len(), 2);
    let refused: Vec<&Refusal> =
        items.iter().filter_map(|i| if let SourceItem::Refused { refusal, .. } = i { Some(refusal) } else { None }).collect();
    assert_eq!(refused.len(), 2);
    assert!(refused.iter().any(|r| r.document == "e-broken.xml" && r.reason.contains("namespace")), "{refused:?}");
    assert!(refused.iter().any(|r| r.document.starts_with("f-mixed.xml careContact[0]") && r.reason == "date lies in the future"), "{refused:?}");
    assert_no_identity(&refusal_texts(&items), &[&p1, &p2]);

    // Commit moves them aside: processed and refused apart.
    src.commit(&summary).await.unwrap();
    assert_eq!(names_in(&drop.join("processed")), vec!["a-contacts.xml", "b-diagnoses.xml", "d-fresh.xml", "f-mixed.xml"]);
    assert_eq!(names_in(&drop.join("refused")), vec!["e-broken.xml"]);
    assert_eq!(names_in(&drop), vec!["c-halfway.xml.tmp", "processed", "refused"]);

    // Never read twice.
    let (summary, items) = run_pull(&src, &req).await;
    assert!(summary.unwrap().files.is_empty() && items.is_empty());
}

#[tokio::test]
async fn files_source_waits_for_a_file_to_stop_changing_and_rereads_an_uncommitted_pull() {
    let root = common::test_dir();
    let drop = root.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let p = pnr("19500101", "123");
    let full = fx::care_contacts_response(&[fx::care_contact(&fx::Contact::new("CC-1", &p, FT01, "20260301100000"))]);
    let f = drop.join("export.xml");
    // Half-written: the writer is still at it, and writes the rest while the pull waits.
    std::fs::write(&f, &full[..full.len() / 2]).unwrap();
    let src = registerbrygga::sources::files::FilesSource::new(&files_settings(&drop, 2)).unwrap();
    let req = pull_request(PatientDiscovery::All, root.path());
    let writer = {
        let (f, full) = (f.clone(), full.clone());
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
            std::fs::write(&f, &full).unwrap();
        })
    };
    let (summary, items) = run_pull(&src, &req).await;
    writer.await.unwrap();
    let summary = summary.unwrap();
    assert!(summary.files.is_empty() && items.is_empty(), "a file still being written is not read");
    // … and the run says so: incomplete (the watermark stays), with a warning for the report.
    assert!(!summary.complete);
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    assert!(summary.warnings[0].starts_with("1 file(s) not settled yet"), "{:?}", summary.warnings);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (summary, items) = run_pull(&src, &req).await;
    let summary = summary.unwrap();
    assert_eq!(summary.files.len(), 1);
    assert!(batch_of(&items, &p).is_some());

    // The run failed before commit: the connector's next pull reads the file again (the same
    // document is the same record), and once committed it is gone.
    let (again, items) = run_pull(&src, &req).await;
    let again = again.unwrap();
    assert_eq!(again.files.len(), 1);
    assert!(batch_of(&items, &p).is_some());
    src.commit(&again).await.unwrap();
    assert!(!f.exists());
    assert_eq!(names_in(&drop.join("processed")), vec!["export.xml"]);
    let (summary, _) = run_pull(&src, &req).await;
    assert!(summary.unwrap().files.is_empty());
}

#[tokio::test]
async fn files_source_applies_the_period_and_the_connectors_patient_selection() {
    let root = common::test_dir();
    let drop = root.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let (p1, p2) = (pnr("19500101", "123"), pnr("19610202", "234"));
    let write = |name: &str, text: &str| {
        let p = drop.join(name);
        std::fs::write(&p, text).unwrap();
        age(&p, 600);
    };
    write(
        "march.xml",
        &fx::care_contacts_response(&[
            fx::care_contact(&fx::Contact::new("CC-1", &p1, FT01, "20260301100000")),
            fx::care_contact(&fx::Contact::new("CC-2", &p2, FT01, "20260302100000")),
        ]),
    );
    write(
        "march-april.xml",
        &fx::care_contacts_response(&[
            fx::care_contact(&fx::Contact::new("CC-3", &p1, FT01, "20260303100000")),
            fx::care_contact(&fx::Contact::new("CC-4", &p1, FT01, "20260410100000")),
        ]),
    );
    let list = write_patient_list(root.path(), &[&p1]);
    let src = registerbrygga::sources::files::FilesSource::new(&files_settings(&drop, 2)).unwrap();
    // A backfill of March, for the connector's patient list (p1 only).
    let mut req = pull_request(PatientDiscovery::File { path: list }, root.path());
    req.window_from = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    req.window_to = NaiveDate::from_ymd_opt(2026, 3, 31).unwrap();
    let (summary, items) = run_pull(&src, &req).await;
    let summary = summary.unwrap();
    assert!(batch_of(&items, &p2).is_none(), "a patient outside the connector's selection is not read");
    let mut ids: Vec<&str> = contacts(batch_of(&items, &p1).unwrap()).iter().map(|c| c.provenance.document_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec!["CC-1", "CC-3"], "April is outside the period");
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    assert!(summary.warnings[0].contains("outside 2026-03-01 – 2026-03-31"), "{:?}", summary.warnings);
    src.commit(&summary).await.unwrap();
    // The file with April in it stays for the pull that covers April.
    assert_eq!(names_in(&drop), vec!["march-april.xml", "processed"]);
    req.window_to = NaiveDate::from_ymd_opt(2026, 4, 30).unwrap();
    let (summary, items) = run_pull(&src, &req).await;
    let summary = summary.unwrap();
    assert!(summary.warnings.is_empty());
    assert_eq!(contacts(batch_of(&items, &p1).unwrap()).len(), 2);
    src.commit(&summary).await.unwrap();
    assert_eq!(names_in(&drop), vec!["processed"]);
}

// ---------------------------------------------------------------------------------------------
// FHIR source against the sandbox FHIR server

fn prov(doc: &str) -> Provenance {
    Provenance { connector: "journal".into(), source_system: SS.into(), document_id: doc.into(), fetched_at: Utc::now() }
}

/// One patient's journal: a visit with two ranked diagnoses, a KVÅ procedure, two observations.
fn journal(p: &str, n: u32) -> Vec<Record> {
    let patient = pid(p);
    let unit = Some(HsaId::parse(FT01).unwrap());
    let cc = Some(format!("KK-{n}"));
    let at = local(2026, 3, n, 10, 0);
    let physio = Some(Code::new(LOCAL_TERMS, PHYSIO));
    let dia = |doc: &str, code: &str, kind| {
        Record::Diagnosis(Diagnosis {
            provenance: prov(doc),
            patient: patient.clone(),
            care_contact_id: cc.clone(),
            unit: None,
            code: Code::new(OID_ICD10SE, code),
            kind,
            chronic: None,
            time: Some(at),
            profession: None,
            nullified: false,
        })
    };
    let obs = |doc: &str, term: &str, value| {
        Record::Observation(Observation {
            provenance: prov(doc),
            patient: patient.clone(),
            care_contact_id: cc.clone(),
            unit: unit.clone(),
            term: Code::new(LOCAL_TERMS, term),
            value: Some(value),
            time: Some(at),
            profession: None,
            nullified: false,
        })
    };
    vec![
        Record::CareContact(CareContact {
            provenance: prov(&format!("CC-{n}")),
            patient: patient.clone(),
            care_contact_id: cc.clone(),
            unit: unit.clone(),
            start: Some(at),
            end: Some(local(2026, 3, n, 10, 45)),
            contact_type: Some(Code::new("1.2.752.129.2.2.2.25", "1")),
            status: None,
            profession: physio.clone(),
            nullified: false,
        }),
        dia(&format!("DIA-{n}-1"), "M171", DiagnosisKind::Main),
        dia(&format!("DIA-{n}-2"), "M199", DiagnosisKind::Secondary),
        Record::Activity(Activity {
            provenance: prov(&format!("ACT-{n}")),
            patient: patient.clone(),
            care_contact_id: cc.clone(),
            unit: unit.clone(),
            code: Code::new(OID_KVA, "DV200"),
            time: Some(at),
            status: None,
            profession: physio.clone(),
            nullified: false,
        }),
        obs(&format!("OBS-{n}-1"), "NRS-SMARTA", ObservationValue::Quantity { value: 6.0, unit: Some("1".into()) }),
        obs(&format!("OBS-{n}-2"), "MEST-BESVARANDE-LED", ObservationValue::Code { code: Code::new(LOCAL_TERMS, "KNA") }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_source_pages_filters_by_last_updated_and_maps_to_canonical_records() {
    use registerbrygga::sandbox::fhir::{spawn, FhirSandbox};
    use registerbrygga::sources::fhir::FhirSource;
    let (dir, certs) = certs();
    let (p1, p2, p3) = (pnr("19500101", "123"), pnr("19610202", "234"), pnr("19720303", "345"));
    let since = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap();
    let after = since + chrono::Duration::hours(5);
    let before = since - chrono::Duration::days(3);
    let mut feed: Vec<(Record, chrono::DateTime<Utc>)> = vec![];
    for (p, n) in [(&p1, 1), (&p2, 2), (&p3, 3)] {
        for (i, r) in journal(p, n).into_iter().enumerate() {
            // Patient 3's visit and its second observation have not changed since the watermark.
            let lu = if n == 3 && (i == 0 || i == 5) { before } else { after + chrono::Duration::minutes(i as i64) };
            feed.push((r, lu));
        }
    }
    let mut elsewhere = journal(&p2, 9).remove(0);
    if let Record::CareContact(c) = &mut elsewhere {
        c.unit = Some(HsaId::parse(ELSEWHERE).unwrap());
        c.care_contact_id = Some("KK-9".into());
    }
    feed.push((elsewhere, after));
    let feed = Arc::new(feed);
    let mut sb = FhirSandbox::new(Arc::new(move || feed.as_ref().clone()));
    sb.bearer_token = Some("sandbox-token".into());
    sb.extra = vec![
        serde_json::json!({ "resourceType": "Condition", "id": "no-ident", "meta": { "lastUpdated": "2026-04-02T00:00:00Z" },
            "code": { "coding": [{ "system": "urn:oid:1.2.752.116.1.1.1.1.3", "code": "M17.0" }] }, "subject": { "reference": "Patient/77" } }),
        serde_json::json!({ "resourceType": "Observation", "id": "odd-code", "meta": { "lastUpdated": "2026-04-02T00:00:00Z" }, "status": "final",
            "code": { "coding": [{ "system": "http://loinc.org", "code": "72514-3" }] },
            "subject": { "identifier": { "system": "urn:oid:1.2.752.129.2.1.3.1", "value": p1.clone() } }, "effectiveDateTime": "2026-03-01",
            "performer": [{ "type": "Organization", "identifier": { "system": "urn:oid:1.2.752.129.2.1.4.1", "value": FT01 } }] }),
    ];
    let requests = sb.requests.clone();
    let url = spawn(sb, std::net::TcpListener::bind("127.0.0.1:0").unwrap(), Some(certs.server_config_mtls().unwrap())).unwrap();

    let var = format!("RB_TEST_FHIR_TOKEN_{}", uuid::Uuid::new_v4().simple());
    std::env::set_var(&var, "sandbox-token");
    let mut known = SourceSettings::default().known_code_systems;
    known.push(LOCAL_TERMS.into());
    let settings = SourceSettings {
        kind: SourceKind::Fhir,
        base_url: url.clone(),
        tls: sandbox_client_settings(&certs),
        bearer_token: Some(Secret::from_env(&var)),
        page_size: 2,
        known_code_systems: known.clone(),
        retry: RetrySettings { initial_delay_ms: 5, multiplier: 2.0, max_delay_ms: 20, max_attempts: 3, max_elapsed_seconds: 0, jitter: false },
        ..SourceSettings::default()
    };
    let src = FhirSource::new(&settings).unwrap();
    let mut req = pull_request(PatientDiscovery::All, dir.path());
    req.changed_since = Some(since);
    let (summary, items) = run_pull(&src, &req).await;
    let summary = summary.unwrap();
    assert!(summary.complete);
    assert_eq!(summary.patients, 3);

    // Pages stream, so a patient's records may come in several batches: merge them.
    let b1 = &merged_of(&items, &p1).unwrap();
    let c1 = contacts(b1)[0];
    assert_eq!(c1.provenance.document_id, "Encounter/KK-1");
    assert_eq!(c1.provenance.source_system, SS);
    assert_eq!(c1.provenance.connector, "sar-test");
    assert_eq!((c1.start, c1.end), (Some(local(2026, 3, 1, 10, 0)), Some(local(2026, 3, 1, 10, 45))));
    assert_eq!(c1.unit.as_ref().map(|u| u.as_str()), Some(FT01));
    assert_eq!(c1.contact_type, Some(Code::new("1.2.752.129.2.2.2.25", "1")));
    assert_eq!(c1.profession, Some(Code::new(LOCAL_TERMS, PHYSIO)));
    let mut kinds: Vec<(String, DiagnosisKind)> = diagnoses(b1).iter().map(|d| (d.code.code.clone(), d.kind)).collect();
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(kinds, vec![("M171".to_string(), DiagnosisKind::Main), ("M199".to_string(), DiagnosisKind::Secondary)]);
    assert!(diagnoses(b1).iter().all(|d| d.care_contact_id.as_deref() == Some("KK-1") && d.unit.as_ref().map(|u| u.as_str()) == Some(FT01)));
    let a1 = activities(b1)[0];
    assert_eq!(
        (a1.code.clone(), a1.time, a1.profession.clone()),
        (Code::new(OID_KVA, "DV200"), Some(local(2026, 3, 1, 10, 0)), Some(Code::new(LOCAL_TERMS, PHYSIO)))
    );
    let values: Vec<_> = observations(b1).iter().map(|o| o.value.clone().unwrap()).collect();
    assert!(values.contains(&ObservationValue::Quantity { value: 6.0, unit: Some("1".into()) }));
    assert!(values.contains(&ObservationValue::Code { code: Code::new(LOCAL_TERMS, "KNA") }));

    // Patient 3: only what changed since the watermark, yet the secondary diagnosis is still
    // ranked (its encounter looked up by _id).
    let b3 = &merged_of(&items, &p3).unwrap();
    assert!(contacts(b3).is_empty());
    assert_eq!(observations(b3).len(), 1);
    assert_eq!(diagnoses(b3).iter().find(|d| d.code.code == "M199").unwrap().kind, DiagnosisKind::Secondary);
    // Patient 2's visit at another unit is left out.
    assert_eq!(contacts(&merged_of(&items, &p2).unwrap()).len(), 1);

    let refused: Vec<&Refusal> =
        items.iter().filter_map(|i| if let SourceItem::Refused { refusal, .. } = i { Some(refusal) } else { None }).collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().any(|r| r.document == "FHIR Condition/no-ident" && r.field == "Condition.subject.identifier"), "{refused:?}");
    assert!(refused.iter().any(|r| r.document == "FHIR Observation/odd-code" && r.field == "Observation.code.coding.system"), "{refused:?}");
    assert_no_identity(&refusal_texts(&items), &[&p1, &p2, &p3]);

    // Paging and the watermark went over the wire.
    let reqs = requests.lock().unwrap().clone();
    let searches: Vec<&String> = reqs.iter().filter(|r| !r.contains("_id=")).collect();
    assert!(searches.iter().all(|r| r.contains("_count=2") && r.contains("_lastUpdated=ge2026-04-01T00%3A00%3A00Z")), "{searches:?}");
    assert!(searches.iter().any(|r| r.contains("_offset=2")), "paging follows next links");
    assert!(reqs.iter().any(|r| r.starts_with("/Encounter?") && r.contains("_id=KK-3")), "{reqs:?}");
    assert_eq!(summary.documents, reqs.len());

    // A wrong token: every search refused, nothing passes the watermark.
    std::env::set_var(&var, "wrong");
    let (summary, items) = run_pull(&src, &req).await;
    let summary = summary.unwrap();
    assert!(!summary.complete);
    assert_eq!(summary.patients, 0);
    let refused: Vec<&Refusal> =
        items.iter().filter_map(|i| if let SourceItem::Refused { refusal, .. } = i { Some(refusal) } else { None }).collect();
    assert_eq!(refused.len(), 4);
    assert!(refused.iter().all(|r| r.reason.starts_with("HTTP 401") && r.reason.contains("bearer_token")), "{refused:?}");
}

/// Patient `i`'s journal (as [`journal`]) with ids of its own, at `unit`.
fn journal_of(i: usize, unit: &str) -> (String, Vec<Record>) {
    let p = pnr(&format!("1950{:02}{:02}", 1 + i / 28, 1 + i % 28), "123");
    let unit = HsaId::parse(unit).unwrap();
    let mut recs = journal(&p, (i % 28) as u32 + 1);
    for r in &mut recs {
        let (prov, cc, u) = match r {
            Record::CareContact(c) => (&mut c.provenance, &mut c.care_contact_id, &mut c.unit),
            Record::Diagnosis(d) => (&mut d.provenance, &mut d.care_contact_id, &mut d.unit),
            Record::Activity(a) => (&mut a.provenance, &mut a.care_contact_id, &mut a.unit),
            Record::Observation(o) => (&mut o.provenance, &mut o.care_contact_id, &mut o.unit),
        };
        prov.document_id = format!("P{i}-{}", prov.document_id);
        *cc = Some(format!("KK-P{i}"));
        if u.is_some() {
            *u = Some(unit.clone());
        }
    }
    (p, recs)
}

/// The FHIR source asks the server for the connector's units (the emulator honours it as a
/// FHIR server does), and hands each page to the pipeline before it fetches the next: over a
/// pull of many pages it never holds more than a page of records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_source_asks_for_its_units_and_streams_page_by_page() {
    use registerbrygga::sandbox::fhir::{spawn, FhirSandbox};
    use registerbrygga::sources::fhir::FhirSource;
    let (dir, certs) = certs();
    let at = Utc.with_ymd_and_hms(2026, 4, 2, 0, 0, 0).unwrap();
    let mut feed = vec![];
    let mut ours = vec![];
    for i in 0..40 {
        let (p, recs) = journal_of(i, if i % 2 == 0 { FT01 } else { FT02 });
        ours.push(p);
        feed.extend(recs.into_iter().map(|r| (r, at)));
    }
    let mut theirs = vec![];
    for i in 40..80 {
        let (p, recs) = journal_of(i, ELSEWHERE);
        theirs.push(p);
        feed.extend(recs.into_iter().map(|r| (r, at)));
    }
    let feed = Arc::new(feed);
    let sb = FhirSandbox::new(Arc::new(move || feed.as_ref().clone()));
    let requests = sb.requests.clone();
    let url = spawn(sb, std::net::TcpListener::bind("127.0.0.1:0").unwrap(), Some(certs.server_config_mtls().unwrap())).unwrap();
    let mut known = SourceSettings::default().known_code_systems;
    known.push(LOCAL_TERMS.into());
    let page = 5;
    let settings = SourceSettings { kind: SourceKind::Fhir, base_url: url, tls: sandbox_client_settings(&certs), page_size: page, known_code_systems: known, ..SourceSettings::default() };
    let src = FhirSource::new(&settings).unwrap();
    let req = pull_request(PatientDiscovery::All, dir.path());

    // A pipeline that takes one item at a time and notes how many requests the server had seen
    // when the first batch arrived.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let seen_by = requests.clone();
    let collect = tokio::spawn(async move {
        let (mut items, mut first) = (vec![], None);
        while let Some(i) = rx.recv().await {
            if first.is_none() && matches!(i, SourceItem::Patient(_)) {
                first = Some(seen_by.lock().unwrap().len());
            }
            items.push(i);
        }
        (items, first.unwrap_or(usize::MAX))
    });
    let summary = src.pull(&req, tx).await.unwrap();
    let (items, requests_before_first_batch) = collect.await.unwrap();
    assert!(summary.complete);
    assert_eq!(summary.patients, 40);

    // The unit filter went over the wire, with the parameter each resource type defines.
    let reqs = requests.lock().unwrap().clone();
    let tokens = format!("urn:oid:1.2.752.129.2.1.4.1|{FT01},urn:oid:1.2.752.129.2.1.4.1|{FT02}");
    for (ty, param) in [("Encounter", Some("service-provider:identifier")), ("Condition", None), ("Procedure", Some("performer:identifier")), ("Observation", Some("performer:identifier"))] {
        let searches: Vec<Vec<(String, String)>> = reqs
            .iter()
            .filter(|r| r.starts_with(&format!("/{ty}?")) && !r.contains("_id="))
            .map(|r| form_urlencoded::parse(r.split_once('?').unwrap().1.as_bytes()).into_owned().collect())
            .collect();
        assert!(!searches.is_empty(), "{ty} searched");
        for q in &searches {
            let got = q.iter().find(|(k, _)| k.ends_with(":identifier")).map(|(k, v)| (k.as_str(), v.as_str()));
            assert_eq!(got, param.map(|p| (p, tokens.as_str())), "{ty}: {q:?}");
        }
    }
    // … and the server honoured it: no other unit's resource was even sent (40 encounters of
    // ours a search at 5 a page is 8 pages for encounters, procedures and observations each; the
    // conditions, unfiltered by R4, bring the other unit's encounters to look up by _id).
    let pages = |ty: &str| reqs.iter().filter(|r| r.starts_with(&format!("/{ty}?")) && !r.contains("_id=")).count();
    assert_eq!((pages("Encounter"), pages("Procedure"), pages("Observation")), (8, 8, 16));
    for p in &theirs {
        assert!(merged_of(&items, p).is_none(), "another unit's patient reached the pipeline");
    }
    for p in &ours {
        let b = merged_of(&items, p).unwrap();
        assert_eq!((contacts(&b).len(), diagnoses(&b).len(), activities(&b).len(), observations(&b).len()), (1, 2, 1, 2));
    }

    // Streaming: the first batch arrived after the first page or two, not after the whole pull,
    // and the source never held more than one page of records.
    assert!(reqs.len() > 40, "{}", reqs.len());
    assert!(requests_before_first_batch <= 3, "the first batch waited for {requests_before_first_batch} of {} requests", reqs.len());
    let received: usize = items.iter().map(|i| if let SourceItem::Patient(b) = i { b.records.len() } else { 0 }).sum();
    assert_eq!(received, 40 * 6);
    assert!(src.peak_buffered_records() <= page as usize, "held {} records at once (page size {page})", src.peak_buffered_records());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riv_patients_are_fetched_with_bounded_concurrency() {
    let (dir, certs) = certs();
    let server = riv_server(certs.server_config_mtls().unwrap(), Arc::new(|s: &Seen| Reply::Slow(30, Box::new(good_reply(s))))).await;
    let mut settings = riv_settings(&server, &certs);
    settings.concurrency = 3;
    let patients: Vec<String> = (1..=8).map(|i| pnr(&format!("1960010{i}"), "222")).collect();
    write_patient_list(dir.path(), &patients.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let mut req = pull_request(PatientDiscovery::File { path: "patients.txt".into() }, dir.path());
    req.units = vec![HsaId::parse(FT01).unwrap()];
    let (summary, _) = run_pull(&RivSource::new(&settings).unwrap(), &req).await;
    assert_eq!(summary.unwrap().patients, 8);
    let max = server.max_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=3).contains(&max), "{max} requests were in flight at once (concurrency 3)");
}

#[test]
fn riv_parser_never_panics_on_truncated_or_corrupted_input() {
    let p = pnr("19500101", "123");
    let ctx = parse_ctx();
    // A tiny deterministic generator: the same corruptions every run.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (_, doc) in good_documents(&p) {
        let doc = fx::envelope(&doc).into_bytes();
        for cut in (0..doc.len()).step_by(13) {
            let _ = parse_bytes(&doc[..cut], "cut.xml", &ctx);
        }
        for _ in 0..300 {
            let mut d = doc.clone();
            for _ in 0..(1 + next() % 4) {
                let i = (next() as usize) % d.len();
                d[i] = b"<>/&;\"x\0\xff:="[(next() % 11) as usize];
            }
            let _ = parse_bytes(&d, "corrupt.xml", &ctx);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn riv_unit_filter_response_asks_once_per_patient_and_drops_other_units_on_arrival() {
    let (dir, certs) = certs();
    let p = pnr("19500101", "123");
    // Without careUnitId the journal answers for every unit: ours (FT01) and one elsewhere,
    // including an observation whose unit can only come from a care contact we never get.
    let handler: Handler = Arc::new(|s: &Seen| {
        assert!(s.care_unit().is_none(), "unit_filter = response never names a care unit");
        let p = s.patient();
        let elsewhere_act = fx::activity_group(&p, ELSEWHERE, &[fx::activity("ACT-X", "DV200", OID_KVA, "20260302103000", Some(("KK-CC-X", ELSEWHERE)))]);
        let elsewhere_obs = fx::observation_group(
            &p,
            ELSEWHERE,
            &[fx::observation("OBS-X", "NRS-SMARTA", LOCAL_TERMS, "20260302100500", &fx::pq("3", "1"), Some(("KK-CC-X", ELSEWHERE)))],
        );
        match s.op() {
            "GetActivities" => {
                let ours = good_documents(&p).into_iter().find(|(c, _)| *c == Contract::GetActivities).unwrap().1;
                let ours_groups = &ours[ours.find("<activityGroup>").unwrap()..ours.rfind("</activityGroup>").unwrap() + "</activityGroup>".len()];
                Reply::Xml(fx::envelope(&fx::activities_response(&[ours_groups.to_string(), elsewhere_act])))
            }
            "GetObservations" => {
                let ours = good_documents(&p).into_iter().find(|(c, _)| *c == Contract::GetObservations).unwrap().1;
                let ours_groups = &ours[ours.find("<observationGroup>").unwrap()..ours.rfind("</observationGroup>").unwrap() + "</observationGroup>".len()];
                Reply::Xml(fx::envelope(&fx::observations_response(&[ours_groups.to_string(), elsewhere_obs])))
            }
            _ => good_reply(s),
        }
    });
    let server = riv_server(certs.server_config_mtls().unwrap(), handler).await;
    let mut settings = riv_settings(&server, &certs);
    settings.unit_filter = registerbrygga::config::UnitFilter::Response;
    write_patient_list(dir.path(), &[&p]);
    let req = pull_request(PatientDiscovery::File { path: "patients.txt".into() }, dir.path());
    let (summary, items) = run_pull(&RivSource::new(&settings).unwrap(), &req).await;
    // Four requests for the patient, whatever the number of units.
    assert_eq!(summary.unwrap().documents, 4);
    assert_eq!(server.count("GetActivities", &p), 1);
    assert_eq!(server.count("GetObservations", &p), 1);
    let b = batch_of(&items, &p).unwrap();
    assert_eq!((contacts(b).len(), diagnoses(b).len(), activities(b).len(), observations(b).len()), (2, 2, 2, 4), "other units' items are dropped");
    assert!(b.records.iter().all(|r| r.provenance().document_id != "ACT-X" && r.provenance().document_id != "OBS-X"));
    assert!(b.records.iter().filter(|r| matches!(r, Record::Activity(_) | Record::Observation(_))).all(|r| r.unit().is_some()));
}
