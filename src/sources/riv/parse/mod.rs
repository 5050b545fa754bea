//! Streaming parser for RIV-TA response documents (GetCareContacts 3, GetDiagnosis 2,
//! GetActivities 1, GetObservations 1.1, GetCareDocumentation 2.1, GetUpdates 1) into canonical
//! records. A GetCareDocumentation note's keywords are read with the context's keyword table
//! ([`super::keywords`]).
//!
//! The document is read event by event with quick-xml's namespace-aware reader from any
//! `AsyncBufRead` (an HTTP body, a file). Only one item (a care contact, a diagnosis, one activity
//! or observation plus its group header) is held in memory at a time, so memory stays flat however
//! large the response is. Names are matched on local name *and* namespace URI: an element in the
//! wrong namespace is refused, never guessed at.
//!
//! Hostile input is refused, not survived by luck: any `<!DOCTYPE` (no DTDs, so no entity
//! expansion), more than `max_response_bytes`, a single token over [`MAX_TOKEN_BYTES`], an item
//! over [`MAX_ITEM_BYTES`] or nesting deeper than [`MAX_DEPTH`]. Malformed XML is refused with its
//! line and column. Refusal reasons name the document and field, never the value.

use super::contract::{Contract, SOAP11_NS};
use crate::model::{
    normalise_icd, stockholm, Activity, CareContact, Code, Diagnosis, DiagnosisKind, HsaId, IdError, LocalTime, Observation, ObservationValue,
    PatientId, Provenance, Record, Refusal, OID_ICD10SE,
};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use quick_xml::errors::{IllFormedError, SyntaxError};
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{NamespaceError, PrefixDeclaration, QName};
use quick_xml::Reader;
use std::borrow::Cow;
use std::pin::Pin;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

mod items;
mod tree;
mod xml;

pub use items::NULLIFIED_STATUS_CODES;
use items::*;
use tree::*;
use xml::*;

/// A single XML token (tag or text run) larger than this is hostile for these contracts.
pub const MAX_TOKEN_BYTES: u64 = 8 * 1024 * 1024;
/// One item (care contact, diagnosis, activity, observation, engagement) larger than this is hostile.
pub const MAX_ITEM_BYTES: usize = 16 * 1024 * 1024;
/// Deeper nesting than this is hostile (the contracts nest at most about ten levels).
pub const MAX_DEPTH: usize = 48;

/// What the parser needs to know besides the bytes.
#[derive(Clone, Debug)]
pub struct ParseContext {
    pub connector: String,
    pub fetched_at: DateTime<Utc>,
    /// Today (dates after tomorrow are refused; identities are checked against it).
    pub today: NaiveDate,
    pub reserve_oids: Vec<String>,
    /// Code systems accepted for activity codes, observation types and diagnosis codes.
    pub known_code_systems: Vec<String>,
    /// Care units read; records of other units are left out (counted). Empty = all units.
    pub units: Vec<HsaId>,
    pub max_response_bytes: u64,
    /// The contract asked for; a response of another contract is refused.
    pub expected: Option<Contract>,
    /// The patient asked for; an item about someone else is refused.
    pub expected_patient: Option<PatientId>,
    /// The connector's keyword table, for keyword notes (GetCareDocumentation); without one a
    /// note's keywords cannot be read and the note is refused.
    pub keywords: Option<std::sync::Arc<super::keywords::KeywordTable>>,
}

impl ParseContext {
    /// Defaults as in `SourceSettings::default()`.
    pub fn new(connector: &str, today: NaiveDate) -> ParseContext {
        let s = crate::config::SourceSettings::default();
        ParseContext {
            connector: connector.to_string(),
            fetched_at: Utc::now(),
            today,
            reserve_oids: s.reserve_oids,
            known_code_systems: s.known_code_systems,
            units: vec![],
            max_response_bytes: s.max_response_bytes,
            expected: None,
            expected_patient: None,
            keywords: None,
        }
    }

    pub fn from_settings(connector: &str, settings: &crate::config::SourceSettings, today: NaiveDate) -> ParseContext {
        ParseContext {
            connector: connector.to_string(),
            fetched_at: Utc::now(),
            today,
            reserve_oids: settings.reserve_oids.clone(),
            known_code_systems: settings.known_code_systems.clone(),
            units: vec![],
            max_response_bytes: settings.max_response_bytes,
            expected: None,
            expected_patient: None,
            keywords: None,
        }
    }
}

/// `result` of a response (GetCareContacts, GetDiagnosis).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RivResult {
    pub code: String,
    pub error_code: Option<String>,
    pub log_id: Option<String>,
    pub sub_code: Option<String>,
    /// Sanitised (identity-shaped digit runs removed).
    pub message: Option<String>,
}

/// One engagement of a resident (GetUpdates).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Engagement {
    pub service_domain: String,
    pub categorization: String,
    pub logical_address: String,
    pub source_system: String,
    pub owner: Option<String>,
    pub business_object_id: String,
}

/// A resident with engagements (GetUpdates).
#[derive(Clone, Debug)]
pub struct Resident {
    pub patient: PatientId,
    pub engagements: Vec<Engagement>,
}

/// The engagement index's resident id exactly as sent, for `registeredResidentLastFetched`.
/// Personal data: Debug is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct RawResidentId(String);

impl RawResidentId {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RawResidentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawResidentId(<redacted>)")
    }
}

/// What a GetUpdates page says besides its residents.
#[derive(Clone, Debug, Default)]
pub struct UpdatesPage {
    pub complete: bool,
    /// The last resident of the page (ask for the next page after it).
    pub last_resident: Option<RawResidentId>,
}

/// One thing read from a document, in document order.
// Records are the common case; boxing them would only add an allocation per item.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Item {
    Record(Record),
    Refused(Refusal),
    Resident(Resident),
}

/// What the whole document said besides its items.
#[derive(Clone, Debug)]
pub struct DocSummary {
    pub document: String,
    pub contract: Contract,
    pub result: Option<RivResult>,
    pub updates: Option<UpdatesPage>,
    /// Records left out because their unit is not one of the configured units.
    pub outside_units: usize,
    /// Bytes read.
    pub bytes: u64,
}

/// A parsed document: records and refused items kept apart.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub document: String,
    pub contract: Contract,
    pub records: Vec<Record>,
    pub refused: Vec<Refusal>,
    pub residents: Vec<Resident>,
    pub result: Option<RivResult>,
    pub updates: Option<UpdatesPage>,
    pub outside_units: usize,
}

impl Parsed {
    pub fn log_ids(&self) -> Vec<String> {
        self.result.as_ref().and_then(|r| r.log_id.clone()).into_iter().collect()
    }
}

/// A whole document refused or failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentError {
    pub refusal: Refusal,
    /// Worth retrying (transport failure, server fault, resultCode ERROR other than INVALID_REQUEST).
    pub transient: bool,
    /// The producer's `logId`, when it gave one.
    pub log_id: Option<String>,
}

impl DocumentError {
    pub fn permanent(document: &str, field: &str, reason: impl Into<String>) -> DocumentError {
        DocumentError { refusal: refusal(document, field, reason), transient: false, log_id: None }
    }
    pub fn transient(document: &str, field: &str, reason: impl Into<String>) -> DocumentError {
        DocumentError { refusal: refusal(document, field, reason), transient: true, log_id: None }
    }
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.refusal)
    }
}

impl std::error::Error for DocumentError {}

fn refusal(document: &str, field: &str, reason: impl Into<String>) -> Refusal {
    Refusal { document: document.to_string(), field: field.to_string(), reason: reason.into() }
}

/// Make text from a producer safe for logs and refusals: identity-shaped digit runs replaced,
/// control characters dropped, length capped.
pub fn sanitise(text: &str, max_chars: usize) -> String {
    let cleaned: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let red = crate::telemetry::redact(cleaned.trim());
    // Long digit runs of any shape (an id split differently) go too.
    let mut out = String::new();
    let mut digits = String::new();
    for c in red.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() >= 8 {
            out.push_str("<number>");
        } else {
            out.push_str(&digits);
        }
        digits.clear();
        out.push(c);
    }
    out.pop();
    if out.chars().count() > max_chars {
        out = out.chars().take(max_chars).collect::<String>() + "…";
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Entry points

/// Parse a response document, handing each item to `on_item` as soon as it is read.
/// Items already handed over are not taken back when the document turns out to be refused later
/// (e.g. a `resultCode ERROR` at the end); callers that need all-or-nothing use [`parse_response`].
pub async fn parse_response_with<R, F>(reader: R, doc_name: &str, ctx: &ParseContext, mut on_item: F) -> Result<DocSummary, DocumentError>
where
    R: AsyncBufRead + Unpin,
    F: FnMut(Item),
{
    let mut x = XmlStream::new(reader, doc_name, ctx.max_response_bytes);
    let mut d = Driver { x: &mut x, ctx, sink: &mut on_item, doc: doc_name.to_string(), outside_units: 0 };
    let (contract, result, updates) = d.run().await?;
    let outside_units = d.outside_units;
    let bytes = x.lex.input.taken;
    Ok(DocSummary { document: doc_name.to_string(), contract, result, updates, outside_units, bytes })
}

/// Parse a whole response document: all records and refused items, or the document's refusal.
pub async fn parse_response<R: AsyncBufRead + Unpin>(reader: R, doc_name: &str, ctx: &ParseContext) -> Result<Parsed, DocumentError> {
    let mut records = vec![];
    let mut refused = vec![];
    let mut residents = vec![];
    let s = parse_response_with(reader, doc_name, ctx, |item| match item {
        Item::Record(r) => records.push(r),
        Item::Refused(r) => refused.push(r),
        Item::Resident(r) => residents.push(r),
    })
    .await?;
    Ok(Parsed {
        document: s.document,
        contract: s.contract,
        records,
        refused,
        residents,
        result: s.result,
        updates: s.updates,
        outside_units: s.outside_units,
    })
}

/// Parse a document held in memory (no runtime needed: reading a slice never waits).
pub fn parse_bytes(bytes: &[u8], doc_name: &str, ctx: &ParseContext) -> Result<Parsed, DocumentError> {
    futures::executor::block_on(parse_response(bytes, doc_name, ctx))
}

// ---------------------------------------------------------------------------------------------
// Document driver

struct Driver<'a, R, F> {
    x: &'a mut XmlStream<R>,
    ctx: &'a ParseContext,
    sink: &'a mut F,
    doc: String,
    outside_units: usize,
}

impl<'a, R: AsyncBufRead + Unpin, F: FnMut(Item)> Driver<'a, R, F> {
    fn item_label(&self, contract: Contract, index: usize, document_id: Option<&str>) -> String {
        match document_id {
            Some(id) => format!("{} {}[{index}] documentId {}", self.doc, contract.item_element(), sanitise(id, 80)),
            None => format!("{} {}[{index}]", self.doc, contract.item_element()),
        }
    }

    fn emit_record(&mut self, r: Record) {
        if !self.ctx.units.is_empty() {
            if let Some(u) = r.unit() {
                if !self.ctx.units.contains(u) {
                    self.outside_units += 1;
                    return;
                }
            }
        }
        (self.sink)(Item::Record(r));
    }

    fn refuse(&mut self, document: String, fe: FieldError) {
        (self.sink)(Item::Refused(Refusal { document, field: fe.field, reason: fe.reason }));
    }

    /// First element of the document, skipping the prolog.
    async fn first_element(&mut self) -> Result<(NsId, Cow<'static, str>), DocumentError> {
        loop {
            match self.x.next().await? {
                Ev::Start { ns, local } => return Ok((ns, local)),
                Ev::Text { blank: true } => continue,
                Ev::Text { .. } => return Err(self.x.malformed("text before the document element", self.x.position())),
                Ev::End => return Err(self.x.malformed("end tag before the document element", self.x.position())),
                Ev::Eof => return Err(DocumentError::permanent(&self.doc, "", "the document is empty")),
            }
        }
    }

    /// A whole element read into the (cleared) tree and handed to `f`.
    async fn with_subtree<T>(
        &mut self,
        local: &str,
        ns: NsId,
        depth: usize,
        expected: Expect,
        f: impl FnOnce(&Tree, u32) -> T,
    ) -> Result<T, DocumentError> {
        self.x.tree.clear();
        let node = self.x.subtree(local, ns, depth, expected).await?;
        Ok(f(&self.x.tree, node))
    }

    async fn run(&mut self) -> Result<(Contract, Option<RivResult>, Option<UpdatesPage>), DocumentError> {
        let soap = self.x.id_of(SOAP11_NS);
        let (mut ns, mut local) = self.first_element().await?;
        // Open elements of the envelope around the response (0 for a bare response element).
        let mut wrapper_depth = 0usize;
        if local == "Envelope" {
            if ns != soap {
                return Err(DocumentError::permanent(
                    &self.doc,
                    "Envelope",
                    format!("SOAP envelope in namespace {}, expected {SOAP11_NS} (SOAP 1.1)", self.x.ns_name(ns)),
                ));
            }
            loop {
                match self.x.next().await? {
                    Ev::Start { ns: n, local: l } if n == soap && l == "Header" => self.x.skip().await?,
                    Ev::Start { ns: n, local: l } if n == soap && l == "Body" => break,
                    Ev::Start { local: l, .. } => {
                        return Err(DocumentError::permanent(&self.doc, &format!("Envelope/{l}"), "unexpected element in the SOAP envelope"))
                    }
                    Ev::Text { .. } => {}
                    Ev::End | Ev::Eof => return Err(DocumentError::permanent(&self.doc, "Envelope/Body", "SOAP envelope without a Body")),
                }
            }
            wrapper_depth = 2;
            loop {
                match self.x.next().await? {
                    Ev::Start { ns: n, local: l } => {
                        ns = n;
                        local = l;
                        break;
                    }
                    Ev::Text { .. } => {}
                    Ev::End | Ev::Eof => return Err(DocumentError::permanent(&self.doc, "Envelope/Body", "SOAP Body is empty")),
                }
            }
            if local == "Fault" && ns == soap {
                let doc = self.doc.clone();
                return Err(self.with_subtree(&local, ns, 0, Expect::Any, |t, n| soap_fault(&doc, t, n)).await?);
            }
        }
        let Some(contract) = Contract::from_response_element(&local) else {
            return Err(DocumentError::permanent(
                &self.doc,
                &sanitise(&local, 80),
                "not a response of GetCareContacts 3, GetDiagnosis 2, GetActivities 1, GetObservations 1, GetCareDocumentation 2 or GetUpdates 1",
            ));
        };
        if self.x.ns_name(ns) != contract.responder_ns() {
            let actual = self.x.ns_name(ns).to_string();
            let actual = if actual.is_empty() { "no namespace".to_string() } else { format!("namespace {}", sanitise(&actual, 120)) };
            return Err(DocumentError::permanent(
                &self.doc,
                &local,
                format!("response element is in {actual}, expected {}: refused", contract.responder_ns()),
            ));
        }
        if let Some(exp) = self.ctx.expected {
            if exp != contract {
                return Err(DocumentError::permanent(&self.doc, &local, format!("expected a {} response, got {}", exp.label(), contract.label())));
            }
        }
        let resp = ns;
        let core = self.x.id_of(contract.core_ns());
        let expected = Expect::Split { resp, core, depth: contract.responder_depth() };
        let mut result = None;
        let mut updates = if contract == Contract::GetUpdates { Some(UpdatesPage::default()) } else { None };
        let mut index = 0usize;
        let mut seen_complete = false;
        loop {
            match self.x.next().await? {
                Ev::Start { ns: n, local: l } => {
                    // GetActivities 1.0, GetObservations 1.1 and GetUpdates 1.0 define no result
                    // element; a producer may still put one at the extension point in the
                    // contract's core namespace (as the sandbox journal does): read it.
                    if l == "result" && result.is_none() && contract.result_ns().is_some_and(|r| self.x.ns_name(n) == r) {
                        let r = self.with_subtree(&l, n, 1, Expect::All(n), |t, node| riv_result(&At::root(t, node, "result"))).await?;
                        result = Some(r.map_err(|fe| DocumentError::permanent(&self.doc, &fe.field, fe.reason))?);
                        continue;
                    }
                    if n == core && n != resp && l == "result" && result.is_none() {
                        let r = self.with_subtree(&l, n, 1, Expect::All(core), |t, node| riv_result(&At::root(t, node, "result"))).await?;
                        result = Some(r.map_err(|fe| DocumentError::permanent(&self.doc, &fe.field, fe.reason))?);
                        continue;
                    }
                    if n != resp {
                        if l == contract.item_element() || l == "result" {
                            self.with_subtree(&l, n, 1, expected, |_, _| ()).await?;
                            let label = self.item_label(contract, index, None);
                            index += 1;
                            let actual = self.x.ns_name(n).to_string();
                            self.refuse(
                                label,
                                ferr(l.as_ref(), format!("element is in namespace {}, expected {}", sanitise(&actual, 120), contract.responder_ns())),
                            );
                        } else {
                            // Extension elements (xs:any ##other) are allowed and not ours to read.
                            self.x.skip().await?;
                        }
                        continue;
                    }
                    match (contract, l.as_ref()) {
                        (Contract::GetCareContacts, "careContact") | (Contract::GetDiagnosis, "diagnosis") => {
                            let ctx = self.ctx;
                            let (mapped, label_id) = self
                                .with_subtree(&l, n, 1, expected, |t, node| {
                                    let at = At::root(t, node, &l);
                                    let mapped = if contract == Contract::GetCareContacts {
                                        care_contact(&at, ctx).map(Record::CareContact)
                                    } else {
                                        diagnosis(&at, ctx).map(Record::Diagnosis)
                                    };
                                    // The refusal names the item by its document id; looked up only then.
                                    let label_id = if mapped.is_err() { Some(node_doc_id(t, node, contract)) } else { None };
                                    (mapped, label_id)
                                })
                                .await?;
                            let i = index;
                            index += 1;
                            match mapped {
                                Ok(r) => self.emit_record(r),
                                Err(fe) => {
                                    let label = self.item_label(contract, i, label_id.flatten().as_deref());
                                    self.refuse(label, fe);
                                }
                            }
                        }
                        (Contract::GetCareDocumentation, "careDocumentation") => {
                            let ctx = self.ctx;
                            let (mapped, label_id) = self
                                .with_subtree(&l, n, 1, expected, |t, node| {
                                    let mapped = care_documentation(&At::root(t, node, &l), ctx);
                                    (mapped, node_doc_id(t, node, contract))
                                })
                                .await?;
                            let label = self.item_label(contract, index, label_id.as_deref());
                            index += 1;
                            match mapped {
                                Ok((records, refused)) => {
                                    for r in records {
                                        self.emit_record(r);
                                    }
                                    for fe in refused {
                                        self.refuse(label.clone(), fe);
                                    }
                                }
                                Err(fe) => self.refuse(label, fe),
                            }
                        }
                        (Contract::GetActivities, "activityGroup") | (Contract::GetObservations, "observationGroup") => {
                            self.group(contract, &l, index, expected).await?;
                            index += 1;
                        }
                        (Contract::GetUpdates, "registeredResidentEngagement") => {
                            let ctx = self.ctx;
                            let (raw, r) = self.with_subtree(&l, n, 1, expected, |t, node| resident(&At::root(t, node, &l), ctx)).await?;
                            let label = self.item_label(contract, index, None);
                            index += 1;
                            if let (Some(u), Some(raw)) = (updates.as_mut(), raw) {
                                u.last_resident = Some(raw);
                            }
                            match r {
                                Ok(r) => (self.sink)(Item::Resident(r)),
                                Err(fe) => self.refuse(label, fe),
                            }
                        }
                        (Contract::GetUpdates, "responseIsComplete") => {
                            let v = self.with_subtree(&l, n, 1, expected, |t, node| parse_bool(t.raw_text(node).trim(), "responseIsComplete")).await?;
                            let v = v.map_err(|fe| DocumentError::permanent(&self.doc, &fe.field, fe.reason))?;
                            seen_complete = true;
                            if let Some(u) = updates.as_mut() {
                                u.complete = v;
                            }
                        }
                        (_, "result") => {
                            let r = self.with_subtree(&l, n, 1, expected, |t, node| riv_result(&At::root(t, node, "result"))).await?;
                            result = Some(r.map_err(|fe| DocumentError::permanent(&self.doc, &fe.field, fe.reason))?);
                        }
                        _ => {
                            let field = format!("{}/{}", contract.response_element(), sanitise(&l, 80));
                            self.x.skip().await?;
                            self.refuse(self.doc.clone(), ferr(&field, "element not in the contract; ignored"));
                        }
                    }
                }
                Ev::Text { .. } => {}
                Ev::End => break,
                Ev::Eof => return Err(self.x.eof_error()),
            }
        }
        // Whatever follows the response element: the envelope's closing tags, nothing else.
        loop {
            match self.x.next().await? {
                Ev::End if wrapper_depth > 0 => wrapper_depth -= 1,
                Ev::Text { blank: true } => {}
                Ev::Eof if wrapper_depth == 0 => break,
                Ev::Eof => return Err(self.x.eof_error()),
                Ev::Start { .. } | Ev::Text { .. } | Ev::End => return Err(self.x.malformed("content after the response element", self.x.position())),
            }
        }
        if contract == Contract::GetUpdates && !seen_complete {
            return Err(DocumentError::permanent(&self.doc, "GetUpdatesResponse/responseIsComplete", "mandatory element is missing"));
        }
        if contract == Contract::GetCareContacts && result.is_none() {
            return Err(DocumentError::permanent(&self.doc, "GetCareContactsResponse/result", "mandatory element is missing"));
        }
        if let Some(r) = &result {
            if r.code == "ERROR" {
                let permanent = r.error_code.as_deref() == Some("INVALID_REQUEST");
                let mut reason = format!("resultCode ERROR ({})", r.error_code.as_deref().unwrap_or("no errorCode"));
                if let Some(id) = &r.log_id {
                    reason.push_str(&format!(", logId {id}"));
                }
                if let Some(m) = &r.message {
                    reason.push_str(&format!(": {m}"));
                }
                return Err(DocumentError {
                    refusal: refusal(&self.doc, "result/resultCode", reason),
                    transient: !permanent,
                    log_id: r.log_id.clone(),
                });
            }
        }
        Ok((contract, result, updates))
    }

    /// An activity or observation group, read one item at a time: the group header (patient,
    /// performer, source system) precedes the items in the schema's sequence. The header's
    /// elements stay in the tree; each item is mapped and then dropped from it.
    async fn group(&mut self, contract: Contract, name: &str, index: usize, expected: Expect) -> Result<(), DocumentError> {
        let item_name = if contract == Contract::GetActivities { "activity" } else { "observation" };
        self.x.tree.clear();
        let head = self.x.tree.detached(name);
        let mut head_bytes = 0usize;
        let mut mapped: Option<Result<GroupHeader, FieldError>> = None;
        let mut skipped = 0usize;
        let mut item_index = 0usize;
        loop {
            match self.x.next().await? {
                Ev::Start { ns, local } => {
                    let mark = self.x.tree.mark();
                    let node = self.x.subtree(&local, ns, 2, expected).await?;
                    let tree = &self.x.tree;
                    if local == item_name && tree.wrong(node).is_none() {
                        if mapped.is_none() {
                            mapped = Some(group_header(&At::root(tree, head, name), self.ctx));
                        }
                        let i = item_index;
                        item_index += 1;
                        match &mapped {
                            Some(Ok(g)) => {
                                // The item's path starts at the group; the label indexes the item.
                                let group_path = Path { up: None, seg: name };
                                let at = At { t: tree, node, path: Path { up: Some(&group_path), seg: item_name } };
                                let r = if contract == Contract::GetActivities {
                                    activity(&at, g, self.ctx).map(Record::Activity)
                                } else {
                                    observation(&at, g, self.ctx).map(Record::Observation)
                                };
                                match r {
                                    Ok(r) => self.emit_record(r),
                                    Err(fe) => {
                                        let mut label = format!("{} {item_name}[{i}]", self.item_label(contract, index, None));
                                        if let Some(ext) = tree.child(node, "id").and_then(|id| tree.child(id, "extension")) {
                                            label = format!("{label} id {}", sanitise(tree.raw_text(ext).trim(), 80));
                                        }
                                        self.refuse(label, fe);
                                    }
                                }
                            }
                            _ => skipped += 1,
                        }
                        self.x.tree.reset(mark);
                    } else {
                        head_bytes += tree.size_from(node);
                        if head_bytes > MAX_ITEM_BYTES {
                            return Err(DocumentError::permanent(
                                &self.doc,
                                name,
                                format!("group header larger than {MAX_ITEM_BYTES} bytes: refused as hostile"),
                            ));
                        }
                        self.x.tree.adopt(head, node);
                    }
                }
                Ev::Text { .. } => {}
                Ev::End => break,
                Ev::Eof => return Err(self.x.eof_error()),
            }
        }
        let group_label = self.item_label(contract, index, None);
        match mapped {
            None => {
                // No item at all: still check the header so its faults are reported, then say so.
                let fe = match group_header(&At::root(&self.x.tree, head, name), self.ctx) {
                    Err(fe) => fe,
                    Ok(_) => ferr(&format!("{name}/{item_name}"), format!("mandatory element is missing (at least one {item_name})")),
                };
                self.refuse(group_label, fe);
            }
            Some(Err(fe)) => {
                let reason = format!("{}; the group's {skipped} {item_name}(s) were not read", fe.reason);
                self.refuse(group_label, FieldError { field: fe.field, reason });
            }
            Some(Ok(_)) => {}
        }
        self.x.tree.clear();
        Ok(())
    }
}

fn node_doc_id(t: &Tree, node: u32, contract: Contract) -> Option<String> {
    let header = match contract {
        Contract::GetCareContacts => "careContactHeader",
        Contract::GetDiagnosis => "diagnosisHeader",
        Contract::GetCareDocumentation => "careDocumentationHeader",
        _ => return None,
    };
    let h = t.child(node, header)?;
    let d = t.child(h, "documentId")?;
    let text = t.raw_text(d).trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn soap_fault(doc: &str, t: &Tree, fault: u32) -> DocumentError {
    let get = |name: &str| t.child(fault, name).map(|c| t.raw_text(c).trim().to_string()).unwrap_or_default();
    let code = get("faultcode");
    let text = sanitise(&get("faultstring"), 300);
    // SOAP 1.1: `Client` faults are the request's fault (permanent); anything else may pass.
    let local_code = code.rsplit(':').next().unwrap_or("").to_string();
    let transient = !local_code.starts_with("Client");
    let reason =
        if text.is_empty() { format!("SOAP fault ({})", sanitise(&code, 60)) } else { format!("SOAP fault ({}): {text}", sanitise(&code, 60)) };
    DocumentError { refusal: refusal(doc, "Envelope/Body/Fault", reason), transient, log_id: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ParseContext {
        ParseContext::new("test", NaiveDate::from_ymd_opt(2026, 5, 1).unwrap())
    }

    #[test]
    fn sanitise_removes_identities_and_long_numbers() {
        let s = sanitise("no patient 191212121212 or 19121212-1212 here\u{7}", 200);
        assert!(!s.contains("1212121212"), "{s}");
        assert!(!s.contains("19121212"), "{s}");
        assert!(s.contains("no patient"));
        assert_eq!(sanitise("abc 1234", 200), "abc 1234");
    }

    #[test]
    fn doctype_is_refused() {
        let doc = br#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>"#;
        let e = parse_bytes(doc, "doc", &ctx()).unwrap_err();
        assert!(e.refusal.reason.contains("document type declarations"), "{e}");
        assert!(!e.transient);
    }

    #[test]
    fn malformed_names_line_and_column() {
        let doc = b"<GetCareContactsResponse xmlns=\"urn:riv:clinicalprocess:logistics:logistics:GetCareContactsResponder:3\">\n<careContact>\n</c></GetCareContactsResponse>";
        let e = parse_bytes(doc, "doc", &ctx()).unwrap_err();
        assert!(e.refusal.reason.contains("line 3"), "{e}");
    }

    /// Hands out a document in pieces of 1–7 bytes, saying "not ready" before every piece, so
    /// multi-byte characters and tokens are cut at every possible place.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        ready: bool,
    }

    impl tokio::io::AsyncRead for Trickle<'_> {
        fn poll_read(self: Pin<&mut Self>, _: &mut std::task::Context<'_>, _: &mut tokio::io::ReadBuf<'_>) -> std::task::Poll<std::io::Result<()>> {
            unreachable!("read through AsyncBufRead")
        }
    }

    impl AsyncBufRead for Trickle<'_> {
        fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<&[u8]>> {
            let this = self.get_mut();
            if !this.ready && !this.data.is_empty() {
                this.ready = true;
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            let n = this.data.len().min(1 + this.step % 7);
            std::task::Poll::Ready(Ok(&this.data[..n]))
        }
        fn consume(self: Pin<&mut Self>, amt: usize) {
            let this = self.get_mut();
            this.data = &this.data[amt..];
            this.step += 1;
            this.ready = false;
        }
    }

    fn sandbox_contacts() -> (Vec<u8>, ParseContext) {
        use crate::sandbox::journal::{render_patient, Contract as J, Population, PopulationSpec};
        let today = NaiveDate::from_ymd_opt(2026, 5, 1).unwrap();
        let pop = std::sync::Arc::new(Population::generate(&PopulationSpec::new(3, 40, today)));
        let doc = (0..pop.len()).map(|p| render_patient(&pop, J::GetCareContacts, p)).max_by_key(|d| d.len()).unwrap();
        let mut c = ParseContext::new("test", today);
        c.known_code_systems.push(crate::sandbox::vocabulary::LOCAL_TERMS.into());
        c.reserve_oids.push(crate::sandbox::journal::OID_RESERVE_VARMLAND.into());
        (doc, c)
    }

    fn trickled(doc: &[u8], c: &ParseContext) -> Result<Parsed, DocumentError> {
        futures::executor::block_on(parse_response(Trickle { data: doc, step: 0, ready: false }, "doc", c))
    }

    #[test]
    fn characters_cut_between_reads_are_read_whole() {
        let (doc, c) = sandbox_contacts();
        // Two- and three-byte characters in a display name and a document id.
        let text = String::from_utf8(doc).unwrap();
        let text = text.replacen("<displayName>", "<displayName>Vårdcentral Åre – ", 1).replacen("<documentId>", "<documentId>ö€", 1);
        let whole = parse_bytes(text.as_bytes(), "doc", &c).unwrap();
        let cut = trickled(text.as_bytes(), &c).unwrap();
        assert!(whole.records.len() > 1 && whole.refused.is_empty(), "{:?}", whole.refused);
        assert_eq!(whole.records, cut.records);
        let json = serde_json::to_string(&whole.records).unwrap();
        assert!(json.contains("Vårdcentral Åre – ") && json.contains("ö€"), "{json}");
    }

    #[test]
    fn invalid_utf8_is_refused_with_its_line() {
        let (doc, c) = sandbox_contacts();
        let at = doc.windows(12).rposition(|w| w == b"<documentId>").unwrap() + 12;
        let line = 1 + doc[..at].iter().filter(|b| **b == b'\n').count();
        let mut bad = doc.clone();
        bad.insert(at, 0xFF);
        for e in [parse_bytes(&bad, "doc", &c).unwrap_err(), trickled(&bad, &c).unwrap_err()] {
            assert!(e.refusal.reason.contains(&format!("malformed XML at line {line},")), "{e}");
            assert!(!e.transient);
        }
    }

    #[test]
    fn oversized_is_refused() {
        let mut c = ctx();
        c.max_response_bytes = 100;
        let doc = format!(
            "<GetDiagnosisResponse xmlns=\"urn:riv:clinicalprocess:healthcond:description:GetDiagnosisResponder:2\">{}</GetDiagnosisResponse>",
            " ".repeat(1000)
        );
        let e = parse_bytes(doc.as_bytes(), "doc", &c).unwrap_err();
        assert!(e.refusal.reason.contains("max_response_bytes"), "{e}");
    }
}

