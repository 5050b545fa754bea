//! Request documents. Each body is a standalone element declaring its own namespace prefixes
//! (`r:` the responder namespace, `c:` the core-component namespace), so it validates against its
//! XSD as it is and drops into the SOAP envelope unchanged.
//!
//! Element placement follows the schemas: elements declared in the responder schema (the request's
//! own fields) are in the responder namespace; the children of core types (`patientId/id`,
//! `datePeriod/start`, `careUnitId/root` …) are in the core namespace.

use super::contract::{Contract, REGISTRY_NS, SOAP11_NS};
use crate::model::{HsaId, PatientId, OID_HSA};
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use chrono_tz::Europe::Stockholm;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;
use uuid::Uuid;

/// What one patient's clinical requests ask for.
#[derive(Clone, Debug)]
pub struct PatientQuery<'a> {
    pub patient: &'a PatientId,
    /// Care units to limit the answer to (empty: no limit).
    pub units: &'a [HsaId],
    /// Care giver (vårdgivare) HSA id, if configured.
    pub care_giver: Option<&'a str>,
    pub from: NaiveDate,
    pub to: NaiveDate,
}

/// A small writer over a Vec. Writing into memory cannot fail, so results are not threaded through.
struct X {
    w: Writer<Vec<u8>>,
}

impl X {
    fn new() -> X {
        X { w: Writer::new(Vec::with_capacity(1024)) }
    }
    fn open(&mut self, name: &str) {
        let _ = self.w.write_event(Event::Start(BytesStart::new(name)));
    }
    fn open_with(&mut self, name: &str, attrs: &[(&str, &str)]) {
        let mut s = BytesStart::new(name);
        for (k, v) in attrs {
            s.push_attribute((*k, *v));
        }
        let _ = self.w.write_event(Event::Start(s));
    }
    fn close(&mut self, name: &str) {
        let _ = self.w.write_event(Event::End(BytesEnd::new(name)));
    }
    fn leaf(&mut self, name: &str, text: &str) {
        self.open(name);
        let _ = self.w.write_event(Event::Text(BytesText::new(text)));
        self.close(name);
    }
    /// An II (`root` + `extension`) under the responder element `name`.
    fn ii(&mut self, name: &str, root: &str, extension: &str) {
        self.open(name);
        self.leaf("c:root", root);
        self.leaf("c:extension", extension);
        self.close(name);
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.w.get_mut().extend_from_slice(bytes);
    }
    fn finish(self) -> Vec<u8> {
        self.w.into_inner()
    }
}

fn root_attrs(contract: Contract, with_core: bool) -> Vec<(&'static str, &'static str)> {
    let mut a = vec![("xmlns:r", contract.responder_ns())];
    if with_core {
        a.push(("xmlns:c", contract.core_ns()));
    }
    a
}

fn day(d: NaiveDate) -> String {
    d.format("%Y%m%d").to_string()
}

/// `YYYYMMDDhhmmss` local time for the start or end of a day.
fn day_bound(d: NaiveDate, end: bool) -> String {
    let t = if end { NaiveTime::from_hms_opt(23, 59, 59).unwrap_or(NaiveTime::MIN) } else { NaiveTime::MIN };
    d.and_time(t).format("%Y%m%d%H%M%S").to_string()
}

/// The patient's id for a request. Personal data: it goes into the body only, never into a log.
fn patient_value(p: &PatientId) -> &str {
    p.raw()
}

/// GetCareContacts 3.0 request body.
pub fn get_care_contacts(q: &PatientQuery) -> Vec<u8> {
    let c = Contract::GetCareContacts;
    let mut x = X::new();
    x.open_with("r:GetCareContacts", &root_attrs(c, true));
    for u in q.units {
        x.leaf("r:careUnitHSAId", u.as_str());
    }
    if let Some(cg) = q.care_giver {
        x.leaf("r:careGiverHSAId", cg);
    }
    x.open("r:patientId");
    x.leaf("c:id", patient_value(q.patient));
    x.leaf("c:type", q.patient.oid());
    x.close("r:patientId");
    x.open("r:datePeriod");
    x.leaf("c:start", &day(q.from));
    x.leaf("c:end", &day(q.to));
    x.close("r:datePeriod");
    x.close("r:GetCareContacts");
    x.finish()
}

/// GetDiagnosis 2.0 request body.
pub fn get_diagnosis(q: &PatientQuery) -> Vec<u8> {
    units_patient_period(Contract::GetDiagnosis, "r:GetDiagnosis", "r:careUnitHSAId", q)
}

/// GetCareDocumentation 2.1 request body (journal notes; its unit element is spelt
/// `careUnitHSAid`, with a lower-case d, unlike GetDiagnosis's `careUnitHSAId`).
pub fn get_care_documentation(q: &PatientQuery) -> Vec<u8> {
    units_patient_period(Contract::GetCareDocumentation, "r:GetCareDocumentation", "r:careUnitHSAid", q)
}

/// The request shape GetDiagnosis and GetCareDocumentation share: every unit, the patient and a
/// `timePeriod`; only the root and the unit element's spelling differ.
fn units_patient_period(c: Contract, root: &str, unit_element: &str, q: &PatientQuery) -> Vec<u8> {
    let mut x = X::new();
    x.open_with(root, &root_attrs(c, true));
    for u in q.units {
        x.leaf(unit_element, u.as_str());
    }
    x.open("r:patientId");
    x.leaf("c:id", patient_value(q.patient));
    x.leaf("c:type", q.patient.oid());
    x.close("r:patientId");
    x.open("r:timePeriod");
    x.leaf("c:start", &day(q.from));
    x.leaf("c:end", &day(q.to));
    x.close("r:timePeriod");
    x.close(root);
    x.finish()
}

/// GetActivities 1.0 and GetObservations 1.1 share their request shape; `careUnitId` takes one
/// unit, so these are asked once per unit.
fn activities_or_observations(c: Contract, q: &PatientQuery, unit: Option<&HsaId>, agreement: Uuid) -> Vec<u8> {
    let root = if c == Contract::GetActivities { "r:GetActivities" } else { "r:GetObservations" };
    let mut x = X::new();
    x.open_with(root, &root_attrs(c, true));
    x.ii("r:patientId", q.patient.oid(), patient_value(q.patient));
    x.open("r:time");
    x.leaf("c:start", &day_bound(q.from, false));
    x.leaf("c:end", &day_bound(q.to, true));
    x.close("r:time");
    if let Some(cg) = q.care_giver {
        x.ii("r:careGiverId", OID_HSA, cg);
    }
    if let Some(u) = unit {
        x.ii("r:careUnitId", OID_HSA, u.as_str());
    }
    x.leaf("r:interactionAgreementId", &agreement.hyphenated().to_string());
    x.close(root);
    x.finish()
}

/// GetActivities 1.0 request body (a fresh UUIDv4 `interactionAgreementId` each call).
pub fn get_activities(q: &PatientQuery, unit: Option<&HsaId>) -> Vec<u8> {
    activities_or_observations(Contract::GetActivities, q, unit, Uuid::new_v4())
}

/// GetObservations 1.1 request body (a fresh UUIDv4 `interactionAgreementId` each call).
pub fn get_observations(q: &PatientQuery, unit: Option<&HsaId>) -> Vec<u8> {
    activities_or_observations(Contract::GetObservations, q, unit, Uuid::new_v4())
}

/// Engagement index GetUpdates 1.0 request body: changes in `service_domain` since `since`
/// (sent as Swedish local time), after the resident `last_fetched` when paging.
pub fn get_updates(service_domain: &str, since: DateTime<Utc>, last_fetched: Option<&str>) -> Vec<u8> {
    let c = Contract::GetUpdates;
    let mut x = X::new();
    x.open_with("r:GetUpdates", &root_attrs(c, false));
    x.leaf("r:serviceDomain", service_domain);
    x.leaf("r:timeStamp", &since.with_timezone(&Stockholm).format("%Y%m%d%H%M%S").to_string());
    if let Some(l) = last_fetched {
        x.leaf("r:registeredResidentLastFetched", l);
    }
    x.close("r:GetUpdates");
    x.finish()
}

/// Wrap a body in a SOAP 1.1 envelope with the `LogicalAddress` header.
pub fn envelope(logical_address: &str, body: &[u8]) -> Vec<u8> {
    let mut x = X::new();
    let _ = x.w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
    x.open_with("soapenv:Envelope", &[("xmlns:soapenv", SOAP11_NS)]);
    x.open("soapenv:Header");
    x.open_with("add:LogicalAddress", &[("xmlns:add", REGISTRY_NS)]);
    let _ = x.w.write_event(Event::Text(BytesText::new(logical_address)));
    x.close("add:LogicalAddress");
    x.close("soapenv:Header");
    x.open("soapenv:Body");
    x.raw(body);
    x.close("soapenv:Body");
    x.close("soapenv:Envelope");
    x.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_carries_logical_address_and_body() {
        let e = envelope("5565594230", b"<r:X xmlns:r=\"urn:x\"/>");
        let s = String::from_utf8(e).unwrap();
        assert!(s.contains("<add:LogicalAddress xmlns:add=\"urn:riv:itintegration:registry:1\">5565594230</add:LogicalAddress>"), "{s}");
        assert!(s.contains("<soapenv:Body><r:X xmlns:r=\"urn:x\"/></soapenv:Body>"), "{s}");
    }
}
