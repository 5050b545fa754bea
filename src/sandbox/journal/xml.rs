//! Response writers. Each response is written straight into byte buffers, a chunk at a time
//! (a patient with thousands of documents is never one giant string), and is valid against the
//! contract's XSD in `conformance/riv`:
//!
//! - The response root declares every namespace itself (the SOAP envelope can be stripped): the
//!   responder namespace as `tns`, the contract's core namespace as the default.
//! - GetActivities 1.0, GetObservations 1.1 and GetUpdates 1.0 have no `result` element; ours is
//!   added through the schemas' `xs:any namespace="##other"` extension point, in the core
//!   namespace with the core `ResultType` shape, so a consumer reads `result/resultCode` and
//!   `result/logId` the same way in all five.

use super::population::{Contact, DocKind, Header, Plan, Population, SharedPopulation};
use super::{term_unit, AnswerValue, Contract, Domain, UNKNOWN_CODE_SYSTEM};
use super::{DOCUMENT_ID_ROOT, OID_GENDER};
use crate::model::{IdKind, OID_HSA, OID_PERSONNUMMER, OID_SAMORDNINGSNUMMER};
use crate::sandbox::vocabulary::{relation, status, CARE_GIVER, LOCAL_TERMS, SOURCE_SYSTEM};
use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};
use std::io::Write;

const ENVELOPE_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// Chunks handed to the HTTP body.
const CHUNK: usize = 32 * 1024;

/// What a request asks for, after parsing. Empty lists mean "no filter".
#[derive(Clone, Debug, Default)]
pub(crate) struct Query {
    pub units: Vec<String>,
    pub from: Option<NaiveDateTime>,
    pub to: Option<NaiveDateTime>,
    pub care_contact_ids: Vec<String>,
    /// activityCode / observationType codes.
    pub codes: Vec<String>,
    /// activityId / observationId extensions.
    pub ids: Vec<String>,
    /// False when the request names another source system or care giver than ours.
    pub ours: bool,
}

/// The `result` a response carries.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    Ok,
    /// `resultCode ERROR` (fault injection), no items.
    Error(String),
    /// `resultCode ERROR` with `errorCode INVALID_REQUEST`, no items.
    Invalid(String),
}

// -- low-level writing --------------------------------------------------------------------------

fn esc(w: &mut Vec<u8>, s: &str) {
    if !s.bytes().any(|b| matches!(b, b'&' | b'<' | b'>')) {
        w.extend_from_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'&' => w.extend_from_slice(b"&amp;"),
            b'<' => w.extend_from_slice(b"&lt;"),
            b'>' => w.extend_from_slice(b"&gt;"),
            _ => w.push(b),
        }
    }
}

pub(super) fn el(w: &mut Vec<u8>, tag: &str, text: &str) {
    w.push(b'<');
    w.extend_from_slice(tag.as_bytes());
    w.push(b'>');
    esc(w, text);
    w.extend_from_slice(b"</");
    w.extend_from_slice(tag.as_bytes());
    w.push(b'>');
}

pub(super) fn open(w: &mut Vec<u8>, tag: &str) {
    w.push(b'<');
    w.extend_from_slice(tag.as_bytes());
    w.push(b'>');
}

pub(super) fn close(w: &mut Vec<u8>, tag: &str) {
    w.extend_from_slice(b"</");
    w.extend_from_slice(tag.as_bytes());
    w.push(b'>');
}

/// An element whose text is written by `text` (ids and times are written in place, without a
/// String each: a region-year is millions of them).
pub(super) fn el_with(w: &mut Vec<u8>, tag: &str, text: impl FnOnce(&mut Vec<u8>)) {
    open(w, tag);
    text(w);
    close(w, tag);
}

fn digits(w: &mut Vec<u8>, v: u32, width: usize) {
    let mut buf = [b'0'; 10];
    let mut v = v;
    let mut i = buf.len();
    while v > 0 || i == buf.len() {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let n = buf.len() - i;
    for _ in n..width {
        w.push(b'0');
    }
    w.extend_from_slice(&buf[i..]);
}

fn date8(w: &mut Vec<u8>, d: NaiveDate) {
    digits(w, d.year() as u32, 4);
    digits(w, d.month(), 2);
    digits(w, d.day(), 2);
}

/// `YYYYMMDDhhmmss`.
fn timestamp(w: &mut Vec<u8>, t: NaiveDateTime) {
    date8(w, t.date());
    digits(w, t.hour(), 2);
    digits(w, t.minute(), 2);
    digits(w, t.second(), 2);
}

pub(super) fn ts_el(w: &mut Vec<u8>, tag: &str, t: NaiveDateTime) {
    el_with(w, tag, |w| timestamp(w, t));
}

/// A CV: code, codeSystem, displayName (both CV flavours accept this sequence).
fn cv(w: &mut Vec<u8>, tag: &str, code: &str, system: &str, display: Option<&str>) {
    open(w, tag);
    el(w, "code", code);
    el(w, "codeSystem", system);
    if let Some(d) = display {
        el(w, "displayName", d);
    }
    close(w, tag);
}

fn ii(w: &mut Vec<u8>, tag: &str, root: &str, extension: &str) {
    ii_with(w, tag, root, |w| esc(w, extension));
}

fn ii_with(w: &mut Vec<u8>, tag: &str, root: &str, extension: impl FnOnce(&mut Vec<u8>)) {
    open(w, tag);
    el(w, "root", root);
    el_with(w, "extension", extension);
    close(w, tag);
}

fn partial_ts(w: &mut Vec<u8>, tag: &str, t: NaiveDateTime) {
    open(w, tag);
    el(w, "format", "YYYYMMDDhhmmss");
    el_with(w, "value", |w| timestamp(w, t));
    close(w, tag);
}

pub(crate) fn envelope_start(w: &mut Vec<u8>) {
    w.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soapenv:Envelope xmlns:soapenv=\"");
    w.extend_from_slice(ENVELOPE_NS.as_bytes());
    w.extend_from_slice(b"\"><soapenv:Header/><soapenv:Body>");
}

pub(crate) fn envelope_end(w: &mut Vec<u8>) {
    w.extend_from_slice(b"</soapenv:Body></soapenv:Envelope>\n");
}

/// A SOAP 1.1 fault (`soapenv:Client` for a bad request, `soapenv:Server` otherwise).
pub(crate) fn soap_fault(client: bool, message: &str) -> Vec<u8> {
    let mut w = Vec::with_capacity(512);
    envelope_start(&mut w);
    open(&mut w, "soapenv:Fault");
    el(&mut w, "faultcode", if client { "soapenv:Client" } else { "soapenv:Server" });
    el(&mut w, "faultstring", message);
    close(&mut w, "soapenv:Fault");
    envelope_end(&mut w);
    w
}

fn root_start(w: &mut Vec<u8>, c: Contract) {
    write!(w, "<tns:{}Response xmlns:tns=\"{}\" xmlns=\"{}\">", c.name(), c.responder_ns(), c.core_ns()).expect("write to Vec");
}

fn root_end(w: &mut Vec<u8>, c: Contract) {
    write!(w, "</tns:{}Response>", c.name()).expect("write to Vec");
}

fn result(w: &mut Vec<u8>, c: Contract, outcome: &Outcome, log_id: &str) {
    // In the schema for contacts and diagnoses (responder namespace); GetCareDocumentation 2.1's
    // is `m1:result` of the domain's 2.1 extension schema, its children in that namespace too
    // (declared as the default namespace here); an extension elsewhere.
    let tag = if matches!(c, Contract::GetCareContacts | Contract::GetDiagnosis) { "tns:result" } else { "result" };
    if c == Contract::GetCareDocumentation {
        w.extend_from_slice(b"<result xmlns=\"urn:riv:clinicalprocess:healthcond:description:2.1\">");
    } else {
        open(w, tag);
    }
    match outcome {
        Outcome::Ok => {
            el(w, "resultCode", "OK");
            el(w, "logId", log_id);
        }
        Outcome::Error(m) => {
            el(w, "resultCode", "ERROR");
            el(w, "logId", log_id);
            el(w, "message", m);
        }
        Outcome::Invalid(m) => {
            el(w, "resultCode", "ERROR");
            el(w, "errorCode", "INVALID_REQUEST");
            el(w, "logId", log_id);
            el(w, "message", m);
        }
    }
    close(w, tag);
}

// -- the clinical responses ------------------------------------------------------------------------

/// A clinical response, rendered a chunk at a time.
pub(crate) struct ClinicalResponse {
    pop: SharedPopulation,
    contract: Contract,
    /// The patient and their journal (none: unknown patient, or an error outcome).
    patient: Option<(u32, Plan)>,
    /// Matching items: contacts, diagnoses, or (contact, item indices) groups.
    items: Vec<(u32, Vec<u32>)>,
    outcome: Outcome,
    log_id: String,
    pos: usize,
    state: u8,
}

impl ClinicalResponse {
    pub(crate) fn new(pop: SharedPopulation, contract: Contract, patient: Option<u32>, q: &Query, outcome: Outcome, log_id: String) -> Self {
        let patient = match (&outcome, patient) {
            (Outcome::Ok, Some(p)) if q.ours => Some((p, pop.plan(p as usize))),
            _ => None,
        };
        let items = patient.as_ref().map(|(p, plan)| select(&pop, *p, plan, contract, q)).unwrap_or_default();
        ClinicalResponse { pop, contract, patient, items, outcome, log_id, pos: 0, state: 0 }
    }

    /// Number of documents (contacts, diagnoses, activities or observations) in the response.
    pub(crate) fn document_count(&self) -> usize {
        self.items.iter().map(|(_, v)| v.len().max(1)).sum()
    }

}

/// One patient's whole response to a clinical contract (every unit, all history), as the server
/// would send it but with a fixed logId: for determinism checks and tools.
pub fn render_patient(pop: &SharedPopulation, contract: Contract, patient: usize) -> Vec<u8> {
    assert!(contract != Contract::GetUpdates, "GetUpdates is not per patient");
    let q = Query { ours: true, ..Query::default() };
    let mut out = Vec::new();
    for chunk in ClinicalResponse::new(pop.clone(), contract, Some(patient as u32), &q, Outcome::Ok, "sandbox".into()) {
        out.extend_from_slice(&chunk);
    }
    out
}

impl Iterator for ClinicalResponse {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.state == 2 {
            return None;
        }
        let mut w = Vec::with_capacity(CHUNK + 8 * 1024);
        if self.state == 0 {
            envelope_start(&mut w);
            root_start(&mut w, self.contract);
            self.state = 1;
        }
        if let Some((p, plan)) = &self.patient {
            let h = self.pop.header(*p as usize);
            let ctx = Ctx { pop: &self.pop, p: *p, h, plan };
            while self.pos < self.items.len() && w.len() < CHUNK {
                let (c, idx) = &self.items[self.pos];
                match self.contract {
                    Contract::GetCareContacts => ctx.care_contact(&mut w, *c),
                    Contract::GetDiagnosis => ctx.diagnosis(&mut w, idx[0]),
                    Contract::GetActivities => ctx.activity_group(&mut w, *c, idx),
                    Contract::GetObservations => ctx.observation_group(&mut w, *c, idx),
                    Contract::GetCareDocumentation => ctx.care_documentation(&mut w, *c, idx),
                    Contract::GetUpdates => unreachable!("GetUpdates is not a clinical response"),
                }
                self.pos += 1;
            }
        }
        if self.pos >= self.items.len() {
            result(&mut w, self.contract, &self.outcome, &self.log_id);
            root_end(&mut w, self.contract);
            envelope_end(&mut w);
            self.state = 2;
        }
        Some(w)
    }
}

fn in_window(q: &Query, t: NaiveDateTime) -> bool {
    q.from.map_or(true, |f| t >= f) && q.to.map_or(true, |e| t <= e)
}

/// The items of `plan` the query asks for.
fn select(pop: &Population, p: u32, plan: &Plan, contract: Contract, q: &Query) -> Vec<(u32, Vec<u32>)> {
    let p_unit_ok = |c: &Contact| q.units.is_empty() || q.units.iter().any(|u| *u == pop.unit(c.unit).hsa_id);
    let contact_ok = |ci: u32| {
        let c = &plan.contacts[ci as usize];
        p_unit_ok(c) && in_window(q, c.start)
    };
    // careContactId filters (GetCareContacts, GetDiagnosis) name the contact by careContactId.
    let cc_ok = |ci: u32| q.care_contact_ids.is_empty() || q.care_contact_ids.iter().any(|id| *id == pop.care_contact_id(p, ci as usize));
    match contract {
        Contract::GetCareContacts => (0..plan.contacts.len() as u32).filter(|c| contact_ok(*c) && cc_ok(*c)).map(|c| (c, vec![])).collect(),
        Contract::GetDiagnosis => plan
            .diagnoses
            .iter()
            .enumerate()
            .filter(|(_, d)| contact_ok(d.contact) && cc_ok(d.contact))
            .map(|(i, d)| (d.contact, vec![i as u32]))
            .collect(),
        Contract::GetActivities => group(plan.activities.iter().enumerate().filter_map(|(i, a)| {
            let ok = contact_ok(a.contact)
                && (q.codes.is_empty() || q.codes.iter().any(|c| *c == a.code))
                && (q.ids.is_empty() || q.ids.iter().any(|id| *id == pop.doc_id(DocKind::Activity, p, i)));
            ok.then_some((a.contact, i as u32))
        })),
        Contract::GetObservations => group(plan.observations.iter().enumerate().filter_map(|(i, o)| {
            let ok = contact_ok(o.contact)
                && (q.codes.is_empty() || q.codes.iter().any(|c| *c == o.term))
                && (q.ids.is_empty() || q.ids.iter().any(|id| *id == pop.doc_id(DocKind::Observation, p, i)));
            ok.then_some((o.contact, i as u32))
        })),
        Contract::GetCareDocumentation => super::notes::select_notes(plan, |i| {
            let o = &plan.observations[i as usize];
            contact_ok(o.contact) && cc_ok(o.contact) && (q.ids.is_empty() || q.ids.iter().any(|id| *id == pop.doc_id(DocKind::Observation, p, i as usize)))
        }),
        Contract::GetUpdates => vec![],
    }
}

/// Consecutive (contact, item) pairs → one group per contact (items are ordered by contact).
fn group(it: impl Iterator<Item = (u32, u32)>) -> Vec<(u32, Vec<u32>)> {
    let mut out: Vec<(u32, Vec<u32>)> = Vec::new();
    for (c, i) in it {
        match out.last_mut() {
            Some((lc, v)) if *lc == c => v.push(i),
            _ => out.push((c, vec![i])),
        }
    }
    out
}

pub(super) struct Ctx<'a> {
    pub(super) pop: &'a Population,
    pub(super) p: u32,
    pub(super) h: &'a Header,
    pub(super) plan: &'a Plan,
}

impl Ctx<'_> {
    pub(super) fn id_type(&self) -> &'static str {
        match self.h.kind {
            IdKind::Personnummer => OID_PERSONNUMMER,
            IdKind::Samordningsnummer => OID_SAMORDNINGSNUMMER,
            IdKind::Reserve => super::OID_RESERVE_VARMLAND,
        }
    }

    /// The patient id as written in a document; a bad item carries a wrong check digit.
    pub(super) fn patient_id(&self, w: &mut Vec<u8>, bad: bool) {
        let mut id = self.h.id;
        if bad {
            id[11] = b'0' + (id[11] - b'0' + 1) % 10;
        }
        w.extend_from_slice(&id);
    }

    pub(super) fn doc_id(&self, w: &mut Vec<u8>, kind: DocKind, seq: u32) {
        self.pop.write_doc_id(w, kind, self.p, seq as usize);
    }

    pub(super) fn care_contact_id(&self, w: &mut Vec<u8>, contact: u32) {
        self.pop.write_care_contact_id(w, self.p, contact as usize);
    }

    fn staff(&self, w: &mut Vec<u8>, c: &Contact) {
        c.write_staff_hsa(w, &self.pop.unit(c.unit).hsa_id);
    }

    fn unit_hsa(&self, c: &Contact) -> &str {
        &self.pop.unit(c.unit).hsa_id
    }

    fn gender(&self, w: &mut Vec<u8>) {
        let (code, name) = if self.h.female { ("1", "Kvinna") } else { ("2", "Man") };
        cv(w, "gender", code, OID_GENDER, Some(name));
    }

    pub(super) fn professional(&self, w: &mut Vec<u8>, c: &Contact) {
        let unit = self.pop.unit(c.unit);
        open(w, "accountableHealthcareProfessional");
        ts_el(w, "authorTime", c.start);
        el_with(w, "healthcareProfessionalHSAId", |w| self.staff(w, c));
        cv(w, "healthcareProfessionalRoleCode", c.prof.code(), LOCAL_TERMS, Some(c.prof.display()));
        open(w, "healthcareProfessionalOrgUnit");
        el(w, "orgUnitHSAId", &unit.hsa_id);
        el(w, "orgUnitName", &unit.name);
        close(w, "healthcareProfessionalOrgUnit");
        el(w, "healthcareProfessionalCareUnitHSAId", &unit.hsa_id);
        el(w, "healthcareProfessionalCareGiverHSAId", CARE_GIVER);
        close(w, "accountableHealthcareProfessional");
        open(w, "legalAuthenticator");
        ts_el(w, "signatureTime", c.registered);
        el_with(w, "legalAuthenticatorHSAId", |w| self.staff(w, c));
        close(w, "legalAuthenticator");
    }

    fn header_start(&self, w: &mut Vec<u8>, tag: &str, (kind, seq): (DocKind, u32), title: &str, time: NaiveDateTime, bad_id: bool) {
        open(w, tag);
        el_with(w, "documentId", |w| self.doc_id(w, kind, seq));
        el(w, "sourceSystemHSAId", SOURCE_SYSTEM);
        el(w, "documentTitle", title);
        ts_el(w, "documentTime", time);
        open(w, "patientId");
        el_with(w, "id", |w| self.patient_id(w, bad_id));
        el(w, "type", self.id_type());
        close(w, "patientId");
    }

    fn nullified(w: &mut Vec<u8>, nullified: bool) {
        el(w, "nullified", if nullified { "true" } else { "false" });
        if nullified {
            el(w, "nullifiedReason", "Felregistrerad");
        }
    }

    fn care_contact(&self, w: &mut Vec<u8>, ci: u32) {
        let c = &self.plan.contacts[ci as usize];
        let bad = c.defect == Some(super::Defect::InvalidPersonnummer);
        open(w, "tns:careContact");
        self.header_start(w, "careContactHeader", (DocKind::Contact, ci), "Vårdkontakt", c.registered, bad);
        self.professional(w, c);
        el(w, "approvedForPatient", "true");
        Self::nullified(w, c.nullified);
        el_with(w, "careContactId", |w| self.care_contact_id(w, ci));
        close(w, "careContactHeader");
        open(w, "careContactBody");
        open(w, "careContactCode");
        el(w, "code", if c.phone { "2" } else { "1" });
        el(w, "displayName", if c.phone { "Telefon" } else { "Besök" });
        close(w, "careContactCode");
        open(w, "careContactOrgUnit");
        el(w, "orgUnitHSAId", self.unit_hsa(c));
        el(w, "orgUnitName", &self.pop.unit(c.unit).name);
        close(w, "careContactOrgUnit");
        open(w, "careContactTimePeriod");
        ts_el(w, "start", c.start);
        ts_el(w, "end", c.end());
        close(w, "careContactTimePeriod");
        open(w, "additionalPatientInformation");
        open(w, "dateOfBirth");
        el(w, "format", "YYYYMMDD");
        el_with(w, "value", |w| date8(w, self.h.birth));
        close(w, "dateOfBirth");
        self.gender(w);
        close(w, "additionalPatientInformation");
        close(w, "careContactBody");
        close(w, "tns:careContact");
    }

    fn diagnosis(&self, w: &mut Vec<u8>, di: u32) {
        let d = &self.plan.diagnoses[di as usize];
        let c = &self.plan.contacts[d.contact as usize];
        open(w, "tns:diagnosis");
        let bad_id = d.defect == Some(super::Defect::InvalidPersonnummer);
        self.header_start(w, "diagnosisHeader", (DocKind::Diagnosis, di), "Diagnos", c.registered, bad_id);
        self.professional(w, c);
        el(w, "approvedForPatient", "true");
        el_with(w, "careContactId", |w| self.care_contact_id(w, d.contact));
        Self::nullified(w, d.nullified);
        close(w, "diagnosisHeader");
        open(w, "diagnosisBody");
        el(w, "typeOfDiagnosis", if d.main { "Huvuddiagnos" } else { "Bidiagnos" });
        el(w, "chronicDiagnosis", if d.chronic { "true" } else { "false" });
        ts_el(w, "diagnosisTime", c.start);
        open(w, "diagnosisCode");
        el(w, "code", &d.code);
        if d.defect == Some(super::Defect::UnknownCodeSystem) {
            el(w, "codeSystem", UNKNOWN_CODE_SYSTEM);
        } else {
            el(w, "codeSystem", crate::model::OID_ICD10SE);
            el(w, "codeSystemName", "ICD-10-SE");
        }
        close(w, "diagnosisCode");
        close(w, "diagnosisBody");
        close(w, "tns:diagnosis");
    }

    /// patient, performerRole, legalAuthenticator, sourceSystem: the group head shared by
    /// GetActivities and GetObservations.
    fn group_head(&self, w: &mut Vec<u8>, c: &Contact) {
        let unit = self.pop.unit(c.unit);
        open(w, "patient");
        ii_with(w, "id", self.id_type(), |w| self.patient_id(w, false));
        el_with(w, "dateOfBirth", |w| date8(w, self.h.birth));
        self.gender(w);
        close(w, "patient");
        open(w, "performerRole");
        ii_with(w, "id", OID_HSA, |w| self.staff(w, c));
        cv(w, "code", c.prof.code(), LOCAL_TERMS, Some(c.prof.display()));
        open(w, "careUnit");
        ii(w, "id", OID_HSA, &unit.hsa_id);
        el(w, "name", &unit.name);
        open(w, "careGiver");
        ii(w, "id", OID_HSA, CARE_GIVER);
        close(w, "careGiver");
        close(w, "careUnit");
        close(w, "performerRole");
        open(w, "legalAuthenticator");
        ii_with(w, "id", OID_HSA, |w| self.staff(w, c));
        partial_ts(w, "time", c.registered);
        close(w, "legalAuthenticator");
        open(w, "sourceSystem");
        ii(w, "id", OID_HSA, SOURCE_SYSTEM);
        close(w, "sourceSystem");
    }

    fn status(w: &mut Vec<u8>, nullified: bool) {
        cv(w, "status", if nullified { status::NULLIFIED } else { status::COMPLETED }, LOCAL_TERMS, None);
    }

    /// The link to the care contact the item was documented at.
    fn relation(&self, w: &mut Vec<u8>, ci: u32, c: &Contact) {
        open(w, "relation");
        cv(w, "code", relation::CARE_CONTACT, LOCAL_TERMS, None);
        open(w, "referredInformation");
        ii_with(w, "id", DOCUMENT_ID_ROOT, |w| self.care_contact_id(w, ci));
        partial_ts(w, "time", c.start);
        el(w, "type", Domain::Contacts.categorization());
        open(w, "informationOwner");
        ii(w, "id", OID_HSA, self.unit_hsa(c));
        close(w, "informationOwner");
        close(w, "referredInformation");
        close(w, "relation");
    }

    fn activity_group(&self, w: &mut Vec<u8>, ci: u32, idx: &[u32]) {
        let c = &self.plan.contacts[ci as usize];
        open(w, "tns:activityGroup");
        self.group_head(w, c);
        for i in idx {
            let a = &self.plan.activities[*i as usize];
            open(w, "activity");
            ii_with(w, "id", DOCUMENT_ID_ROOT, |w| self.doc_id(w, DocKind::Activity, *i));
            Self::status(w, a.nullified);
            let system = if a.defect == Some(super::Defect::UnknownCodeSystem) { UNKNOWN_CODE_SYSTEM } else { &a.system };
            cv(w, "code", &a.code, system, None);
            open(w, "time");
            partial_ts(w, "start", c.start);
            partial_ts(w, "end", c.end());
            close(w, "time");
            el(w, "approvedForPatient", "true");
            ts_el(w, "registrationTime", c.registered);
            self.relation(w, ci, c);
            close(w, "activity");
        }
        close(w, "tns:activityGroup");
    }

    fn observation_group(&self, w: &mut Vec<u8>, ci: u32, idx: &[u32]) {
        let c = &self.plan.contacts[ci as usize];
        open(w, "tns:observationGroup");
        self.group_head(w, c);
        for i in idx {
            let o = &self.plan.observations[*i as usize];
            open(w, "observation");
            ii_with(w, "id", DOCUMENT_ID_ROOT, |w| self.doc_id(w, DocKind::Observation, *i));
            let system = if o.defect == Some(super::Defect::UnknownCodeSystem) { UNKNOWN_CODE_SYSTEM } else { LOCAL_TERMS };
            cv(w, "type", &o.term, system, None);
            Self::status(w, o.nullified);
            open(w, "time");
            partial_ts(w, "start", c.start);
            close(w, "time");
            open(w, "value");
            match &o.value {
                AnswerValue::Quantity(v) => {
                    open(w, "pq");
                    el_with(w, "value", |w| write!(w, "{v}").expect("write to Vec"));
                    el(w, "unit", term_unit(&o.term).unwrap_or("1"));
                    close(w, "pq");
                }
                AnswerValue::Code(code) => cv(w, "cv", code, LOCAL_TERMS, None),
            }
            close(w, "value");
            el(w, "valueNegation", "false");
            el(w, "approvedForPatient", "true");
            ts_el(w, "registrationTime", o.registered.unwrap_or(c.registered));
            self.relation(w, ci, c);
            close(w, "observation");
        }
        close(w, "tns:observationGroup");
    }
}

// -- GetUpdates ---------------------------------------------------------------------------------

/// One page of the engagement index: patients (by index) changed after `since`, with data in
/// `domain`, after `after` in id order. Returns the page and whether it is the last.
pub(crate) fn updates_page(pop: &Population, domain: Domain, since: i64, after: Option<&str>, page_size: usize) -> (Vec<u32>, bool) {
    let order = pop.order();
    let start = match after {
        Some(a) => order.partition_point(|i| pop.header(*i as usize).id_str() <= a),
        None => 0,
    };
    let mut page = Vec::new();
    for i in &order[start..] {
        if pop.updated_secs(*i) <= since || pop.domain_units(*i)[domain as usize] == 0 {
            continue;
        }
        if page.len() == page_size.max(1) {
            return (page, false);
        }
        page.push(*i);
    }
    (page, true)
}

pub(crate) fn render_updates(pop: &Population, domain: Domain, page: &[u32], complete: bool, outcome: &Outcome, log_id: &str) -> Vec<u8> {
    let c = Contract::GetUpdates;
    let mut w = Vec::with_capacity(1024 + page.len() * 1200);
    envelope_start(&mut w);
    root_start(&mut w, c);
    let ok = matches!(outcome, Outcome::Ok);
    el(&mut w, "tns:responseIsComplete", if complete || !ok { "true" } else { "false" });
    if ok {
        for p in page {
            let h = pop.header(*p as usize);
            let units = pop.domain_units(*p)[domain as usize];
            let updated = super::population::local_of(pop.updated_secs(*p));
            let first = super::population::local_of(h.first);
            let last = super::population::local_of(h.last);
            open(&mut w, "tns:registeredResidentEngagement");
            el(&mut w, "tns:registeredResidentIdentification", h.id_str());
            for u in 0..16u8 {
                if units & (1 << u) == 0 {
                    continue;
                }
                open(&mut w, "tns:engagement");
                el(&mut w, "registeredResidentIdentification", h.id_str());
                el(&mut w, "serviceDomain", domain.uri());
                el(&mut w, "categorization", domain.categorization());
                el(&mut w, "logicalAddress", &pop.unit(u).hsa_id);
                el(&mut w, "businessObjectInstanceIdentifier", "NA");
                el(&mut w, "clinicalProcessInterestId", "NA");
                ts_el(&mut w, "mostRecentContent", last.max(updated));
                el(&mut w, "sourceSystem", SOURCE_SYSTEM);
                ts_el(&mut w, "creationTime", first);
                ts_el(&mut w, "updateTime", updated);
                el(&mut w, "dataController", CARE_GIVER);
                el(&mut w, "owner", SOURCE_SYSTEM);
                close(&mut w, "tns:engagement");
            }
            close(&mut w, "tns:registeredResidentEngagement");
        }
    }
    result(&mut w, c, outcome, log_id);
    root_end(&mut w, c);
    envelope_end(&mut w);
    w
}
