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
// Input: the bytes read and not yet parsed. They are tokenised synchronously with quick-xml's
// slice reader (events borrow the buffer, no copy per event); the source is awaited only when
// a token runs past the end of what has arrived. A small response is usually parsed in one go.

/// Most bytes taken from the source per read; with `READ_CHUNK` the buffer stays small however
/// large the document (memory flat), and a whole per-patient response fits in one read.
const READ_CHUNK: usize = 256 * 1024;
/// Bytes `fill` takes when more is ready at once than the unfinished token needs.
const GREEDY_BYTES: usize = 64 * 1024;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

struct Input<R> {
    inner: R,
    buf: Vec<u8>,
    /// Parse position in `buf` (everything before it has been handed out).
    pos: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Bytes taken from `inner` (never more than `max`).
    taken: u64,
    max: u64,
    eof: bool,
    /// Newlines before `base` and the offset of the last one (for line numbers in errors).
    newlines: u64,
    last_newline: Option<u64>,
    /// A read failure held back until the bytes before it have been parsed.
    failed: Option<DocumentError>,
    /// `buf[..utf8_upto]` has been checked to be UTF-8 (the rest is at most one character cut
    /// by the end of a read).
    utf8_upto: usize,
    /// No invalid UTF-8 met so far. While it holds, every complete token is UTF-8 (tokens start
    /// and end at ASCII delimiters), so names and text need no check of their own.
    utf8: bool,
}

impl<R: AsyncBufRead + Unpin> Input<R> {
    fn new(inner: R, max: u64, mut buf: Vec<u8>) -> Input<R> {
        buf.clear();
        Input {
            inner,
            buf,
            pos: 0,
            base: 0,
            taken: 0,
            max,
            eof: false,
            newlines: 0,
            last_newline: None,
            failed: None,
            utf8_upto: 0,
            utf8: true,
        }
    }

    /// Check what arrived since the last check, once: one pass over the bytes at memory speed
    /// instead of a check per name and text run.
    fn check_utf8(&mut self) {
        if !self.utf8 {
            return;
        }
        match std::str::from_utf8(&self.buf[self.utf8_upto..]) {
            Ok(_) => self.utf8_upto = self.buf.len(),
            // A character cut by the end of the read: checked when the rest arrives.
            Err(e) if e.error_len().is_none() && !self.eof => self.utf8_upto += e.valid_up_to(),
            // Invalid bytes somewhere: from here on every token is checked on its own, so the
            // error names the place as before.
            Err(_) => self.utf8 = false,
        }
    }

    /// 1-based line and column of a stream offset.
    fn line_col(&self, pos: u64) -> (u64, u64) {
        let upto = (pos.saturating_sub(self.base) as usize).min(self.buf.len());
        let head = &self.buf[..upto];
        let line = 1 + self.newlines + head.iter().filter(|b| **b == b'\n').count() as u64;
        let last = head.iter().rposition(|b| *b == b'\n').map(|i| self.base + i as u64).or(self.last_newline);
        let line_start = last.map(|o| o + 1).unwrap_or(0);
        (line, pos.saturating_sub(line_start) + 1)
    }

    /// Read more of the document: at least as much again as the unfinished token at `pos`, so
    /// re-scanning a long token stays linear. Sets `eof` at the end of the source.
    async fn fill(&mut self, doc: &str) -> Result<(), DocumentError> {
        let r = self.fill_raw(doc).await;
        self.check_utf8();
        r
    }

    async fn fill_raw(&mut self, doc: &str) -> Result<(), DocumentError> {
        let partial = self.buf.len() - self.pos;
        if partial as u64 > MAX_TOKEN_BYTES {
            return Err(DocumentError::permanent(
                doc,
                "",
                format!("a single XML token is larger than {MAX_TOKEN_BYTES} bytes: refused as hostile, reading stopped"),
            ));
        }
        if self.pos > 0 {
            let done = &self.buf[..self.pos];
            // Kept for error positions; memchr, because a scalar scan here cost ~10 % of parsing.
            self.newlines += memchr::memchr_iter(b'\n', done).count() as u64;
            if let Some(i) = memchr::memrchr(b'\n', done) {
                self.last_newline = Some(self.base + i as u64);
            }
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.utf8_upto = self.utf8_upto.saturating_sub(self.pos);
            self.pos = 0;
        }
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let want = partial.max(1);
        let mut got = 0usize;
        loop {
            // Wait for what is needed; beyond that take only what is already there (up to
            // GREEDY_BYTES), so small network chunks are parsed in one pass without waiting.
            let next = if got < want {
                self.inner.fill_buf().await
            } else if got < GREEDY_BYTES {
                match futures::FutureExt::now_or_never(self.inner.fill_buf()) {
                    Some(r) => r,
                    None => return Ok(()),
                }
            } else {
                return Ok(());
            };
            let failure = match next {
                Err(e) => DocumentError::transient(
                    doc,
                    "",
                    format!("connection failed while reading the response: {}", sanitise(&e.to_string(), 300)),
                ),
                Ok([]) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(_) if self.taken >= self.max => DocumentError::permanent(
                    doc,
                    "",
                    format!("response is larger than max_response_bytes ({} bytes): refused as hostile, reading stopped", self.max),
                ),
                Ok(chunk) => {
                    let remaining = self.max - self.taken;
                    let n = chunk.len().min(READ_CHUNK).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    self.buf.extend_from_slice(&chunk[..n]);
                    Pin::new(&mut self.inner).consume(n);
                    self.taken += n as u64;
                    got += n;
                    continue;
                }
            };
            // What already arrived is parsed first; the failure comes when more is needed.
            if got == 0 {
                return Err(failure);
            }
            self.failed = Some(failure);
            return Ok(());
        }
    }
}

type NsId = u16;
/// Id of "no namespace".
const NO_NS: NsId = 0;
/// A binding whose namespace has not been looked up in the table yet.
const NS_UNSET: NsId = NsId::MAX;
const XML_NS: &[u8] = b"http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &[u8] = b"http://www.w3.org/2000/xmlns/";

/// One `xmlns` / `xmlns:p` declaration in scope.
struct Binding {
    /// Depth of the declaring element (1 = the document element).
    level: usize,
    /// Prefix in `Scope::bound` (`None`: the default namespace).
    prefix: Option<(usize, usize)>,
    uri: (usize, usize),
    id: NsId,
}

/// Open elements and namespace scopes: quick-xml's namespace resolution and end-name check,
/// kept here because the slice reader starts afresh after every refill.
struct Scope {
    open: Vec<u8>,
    open_starts: Vec<usize>,
    bindings: Vec<Binding>,
    bound: Vec<u8>,
    /// Namespace URIs met so far; an id is an index (0 = no namespace).
    namespaces: Vec<String>,
}

enum Resolved<'a> {
    Ns(NsId),
    Unknown(&'a [u8]),
    TooMany,
}

impl Scope {
    fn new() -> Scope {
        Scope { namespaces: vec![String::new()], ..Scope::empty() }
    }

    /// A scope that allocates nothing (a placeholder; `reset` makes it usable).
    fn empty() -> Scope {
        Scope { open: Vec::new(), open_starts: Vec::new(), bindings: Vec::new(), bound: Vec::new(), namespaces: Vec::new() }
    }

    /// Back to the state of `new`, keeping the allocations.
    fn reset(&mut self) {
        self.open.clear();
        self.open_starts.clear();
        self.bindings.clear();
        self.bound.clear();
        self.namespaces.truncate(1);
        if self.namespaces.is_empty() {
            self.namespaces.push(String::new());
        }
    }

    /// Bytes held (roughly), to decide whether to keep it for the next document.
    fn capacity(&self) -> usize {
        self.open.capacity() + self.open_starts.capacity() * 8 + self.bindings.capacity() * 48 + self.bound.capacity() + self.namespaces.iter().map(String::capacity).sum::<usize>()
    }

    fn intern(namespaces: &mut Vec<String>, ns: &[u8]) -> Option<NsId> {
        if let Some(i) = namespaces.iter().position(|n| n.as_bytes() == ns) {
            return Some(i as NsId);
        }
        // A document declaring hundreds of namespaces is not a RIV-TA response.
        if namespaces.len() >= 256 {
            return None;
        }
        namespaces.push(String::from_utf8_lossy(ns).into_owned());
        Some((namespaces.len() - 1) as NsId)
    }

    /// An element starts: remember its name and its namespace declarations.
    fn open(&mut self, s: &BytesStart) -> Result<(), quick_xml::Error> {
        self.open_starts.push(self.open.len());
        self.open.extend_from_slice(s.name().as_ref());
        let level = self.open_starts.len();
        let attrs = s.attributes_raw();
        if !attrs.windows(5).any(|w| w == b"xmlns") {
            return Ok(());
        }
        // As quick-xml's resolver: raw attribute values, reading stops at a malformed attribute.
        for a in s.attributes().with_checks(false) {
            let Ok(a) = a else { break };
            let v: &[u8] = &a.value;
            let prefix = match a.key.as_namespace_binding() {
                None => continue,
                Some(PrefixDeclaration::Default) => None,
                Some(PrefixDeclaration::Named(b"xml")) => {
                    if v != XML_NS {
                        return Err(NamespaceError::InvalidXmlPrefixBind(v.to_vec()).into());
                    }
                    continue;
                }
                Some(PrefixDeclaration::Named(b"xmlns")) => return Err(NamespaceError::InvalidXmlnsPrefixBind(v.to_vec()).into()),
                Some(PrefixDeclaration::Named(p)) => {
                    if v == XML_NS {
                        return Err(NamespaceError::InvalidPrefixForXml(p.to_vec()).into());
                    }
                    if v == XMLNS_NS {
                        return Err(NamespaceError::InvalidPrefixForXmlns(p.to_vec()).into());
                    }
                    Some(p)
                }
            };
            let prefix = prefix.map(|p| {
                let at = self.bound.len();
                self.bound.extend_from_slice(p);
                (at, self.bound.len())
            });
            let at = self.bound.len();
            self.bound.extend_from_slice(v);
            self.bindings.push(Binding { level, prefix, uri: (at, self.bound.len()), id: NS_UNSET });
        }
        Ok(())
    }

    /// The namespace of an element name in the current scope.
    fn resolve<'n>(&mut self, name: QName<'n>) -> Resolved<'n> {
        let (_, prefix) = name.decompose();
        let want = prefix.map(|p| p.into_inner());
        let Scope { bindings, bound, namespaces, .. } = self;
        for b in bindings.iter_mut().rev() {
            let same = match (b.prefix, want) {
                (None, None) => true,
                (Some((s, e)), Some(p)) => &bound[s..e] == p,
                _ => false,
            };
            if !same {
                continue;
            }
            if b.uri.0 == b.uri.1 {
                // `xmlns=""` leaves names unqualified; `xmlns:p=""` undeclares p.
                return match want {
                    None => Resolved::Ns(NO_NS),
                    Some(p) => Resolved::Unknown(p),
                };
            }
            if b.id != NS_UNSET {
                return Resolved::Ns(b.id);
            }
            let uri = &bound[b.uri.0..b.uri.1];
            return match Self::intern(namespaces, uri) {
                // A URI that is not UTF-8 never matches its (lossy) table entry, so every element
                // in it takes a new id, as before: not cached.
                Some(id) if std::str::from_utf8(uri).is_ok() => {
                    b.id = id;
                    Resolved::Ns(id)
                }
                Some(id) => Resolved::Ns(id),
                None => Resolved::TooMany,
            };
        }
        let fixed = match want {
            None => return Resolved::Ns(NO_NS),
            Some(b"xml") => XML_NS,
            Some(b"xmlns") => XMLNS_NS,
            Some(p) => return Resolved::Unknown(p),
        };
        match Self::intern(namespaces, fixed) {
            Some(id) => Resolved::Ns(id),
            None => Resolved::TooMany,
        }
    }

    /// An element ends; `name` is checked against the open one (as quick-xml's check_end_names).
    fn close(&mut self, name: Option<&[u8]>) -> Result<(), quick_xml::Error> {
        let decode = |b: &[u8]| std::str::from_utf8(b).map(str::to_string).unwrap_or_default();
        match self.open_starts.pop() {
            Some(start) => {
                if let Some(name) = name {
                    if name != &self.open[start..] {
                        return Err(IllFormedError::MismatchedEndTag { expected: decode(&self.open[start..]), found: decode(name) }.into());
                    }
                }
                self.open.truncate(start);
            }
            None => return Err(IllFormedError::UnmatchedEndTag(decode(name.unwrap_or_default())).into()),
        }
        let depth = self.open_starts.len();
        // Bindings are pushed in document order, so the last one has the deepest level: most
        // elements declare nothing and end here.
        if !matches!(self.bindings.last(), Some(b) if b.level > depth) {
            return Ok(());
        }
        if let Some(i) = self.bindings.iter().position(|b| b.level > depth) {
            let from = self.bindings[i].prefix.map(|p| p.0).unwrap_or(self.bindings[i].uri.0);
            self.bindings.truncate(i);
            self.bound.truncate(from);
        }
        Ok(())
    }
}

/// One token as the layers above see it.
enum Tok<'b> {
    /// `local` is the local name as text (lossy when it is not UTF-8).
    Start { ns: NsId, ns_name: &'b str, local: Cow<'b, str> },
    End,
    Text(Cow<'b, str>),
    Eof,
}

struct Lexer<R> {
    input: Input<R>,
    scope: Scope,
    /// The end half of an empty-element tag whose start half was the last token handed out.
    pending_end: bool,
    doc: String,
}

impl<R: AsyncBufRead + Unpin> Lexer<R> {
    fn malformed(&self, what: impl std::fmt::Display, pos: u64) -> DocumentError {
        malformed(&self.input, &self.doc, what, pos)
    }

    /// Stream offset just after the last token handed out.
    fn position(&self) -> u64 {
        self.input.base + self.input.pos as u64
    }

    /// Hand tokens to `f` until it returns `true` (then `Ok(true)`) or the bytes read so far
    /// end inside a token (then `Ok(false)`: `fill` and call again; nothing is lost).
    fn pump<F>(&mut self, mut f: F) -> Result<bool, DocumentError>
    where
        F: FnMut(Tok<'_>) -> Result<bool, DocumentError>,
    {
        if self.pending_end {
            self.pending_end = false;
            self.scope.close(None).map_err(|e| self.malformed(e, self.position()))?;
            if f(Tok::End)? {
                return Ok(true);
            }
        }
        let Lexer { input, scope, pending_end, doc } = self;
        let start = input.pos;
        let mut data = &input.buf[start..];
        // quick-xml drops a BOM at the start of its input: right at the start of the document
        // that is wanted, anywhere else it is a U+FEFF in text and is handed out as such.
        let mut skip = 0usize;
        let mut bom = false;
        if data.starts_with(UTF8_BOM) {
            skip = UTF8_BOM.len();
            bom = input.base + start as u64 != 0;
            data = &data[skip..];
        }
        let origin = input.base + (start + skip) as u64;
        let eof = input.eof;
        let checked = input.utf8;
        let mut r = Reader::from_reader(data);
        let cfg = r.config_mut();
        cfg.expand_empty_elements = false;
        cfg.check_end_names = false;
        cfg.allow_unmatched_ends = true;
        cfg.trim_text(false);
        loop {
            let ev_start = r.buffer_position() as usize;
            let at = origin + ev_start as u64;
            let ev = r.read_event();
            let complete = match &ev {
                Ok(Event::Text(_)) => eof || (r.buffer_position() as usize) < data.len(),
                Ok(Event::Eof) => eof,
                // Unclosed markup at the end of what has arrived (`<!` alone cannot tell yet).
                Err(quick_xml::Error::Syntax(SyntaxError::InvalidBangMarkup)) => eof || data.len() - ev_start >= 3,
                Err(quick_xml::Error::Syntax(_)) => eof,
                _ => true,
            };
            if !complete {
                input.pos = if bom { start } else { start + skip + ev_start };
                return Ok(false);
            }
            if bom {
                bom = false;
                if let Ok(Event::Text(t)) = &ev {
                    let t = t.unescape().map_err(|e| malformed(input, doc, e, at))?;
                    let mut s = String::from("\u{FEFF}");
                    s.push_str(&t);
                    if f(Tok::Text(Cow::Owned(s)))? {
                        input.pos = start + skip + r.buffer_position() as usize;
                        return Ok(true);
                    }
                    continue;
                }
                if f(Tok::Text(Cow::Borrowed("\u{FEFF}")))? {
                    input.pos = start + skip;
                    return Ok(true);
                }
            }
            let stop = match ev {
                Err(e) => return Err(malformed(input, doc, &e, origin + r.error_position())),
                Ok(Event::Start(s)) => {
                    let ns = open_start(scope, &s).map_err(|e| e.into_error(input, doc, at))?;
                    f(Tok::Start { ns, ns_name: &scope.namespaces[ns as usize], local: name_text(s.local_name().into_inner(), checked) })?
                }
                Ok(Event::Empty(s)) => {
                    let ns = open_start(scope, &s).map_err(|e| e.into_error(input, doc, at))?;
                    if f(Tok::Start { ns, ns_name: &scope.namespaces[ns as usize], local: name_text(s.local_name().into_inner(), checked) })? {
                        *pending_end = true;
                        true
                    } else {
                        scope.close(None).map_err(|e| malformed(input, doc, e, at))?;
                        f(Tok::End)?
                    }
                }
                Ok(Event::End(e)) => {
                    scope.close(Some(e.name().as_ref())).map_err(|e| malformed(input, doc, e, at))?;
                    f(Tok::End)?
                }
                Ok(Event::Text(t)) => {
                    let t = text_of(t, checked).map_err(|e| malformed(input, doc, e, at))?;
                    f(Tok::Text(t))?
                }
                Ok(Event::CData(c)) => {
                    let t = c.decode().map_err(|e| malformed(input, doc, e, at))?;
                    f(Tok::Text(t))?
                }
                Ok(Event::DocType(_)) => {
                    return Err(DocumentError::permanent(
                        doc,
                        "<!DOCTYPE>",
                        "document type declarations are not accepted (no DTDs, no entity expansion): refused as hostile",
                    ))
                }
                Ok(Event::Eof) => f(Tok::Eof)?,
                Ok(Event::Decl(_) | Event::PI(_) | Event::Comment(_)) => false,
            };
            if stop {
                input.pos = start + skip + r.buffer_position() as usize;
                return Ok(true);
            }
        }
    }
}

/// Bytes of a complete token as text; `checked`: `Input::check_utf8` has found the input to be
/// UTF-8, so this token is (it starts and ends at ASCII delimiters).
fn token_str(b: &[u8], checked: bool) -> Result<&str, std::str::Utf8Error> {
    if checked {
        debug_assert!(std::str::from_utf8(b).is_ok());
        // SAFETY: `checked` holds only while every byte of the buffer, but at most one
        // character cut at its end, has been found to be UTF-8 (`Input::check_utf8`), and a
        // complete token ends before that cut and starts and ends at ASCII delimiters.
        Ok(unsafe { std::str::from_utf8_unchecked(b) })
    } else {
        std::str::from_utf8(b)
    }
}

/// An element's local name as text (lossy when it is not UTF-8: it is refused by name later).
fn name_text(b: &[u8], checked: bool) -> Cow<'_, str> {
    match token_str(b, checked) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

/// A text run, entities resolved: quick-xml's `unescape`, without checking UTF-8 a second time.
fn text_of(t: quick_xml::events::BytesText<'_>, checked: bool) -> Result<Cow<'_, str>, quick_xml::Error> {
    if !checked {
        return t.unescape();
    }
    match t.into_inner() {
        Cow::Borrowed(b) => {
            let s = token_str(b, true).map_err(quick_xml::encoding::EncodingError::from)?;
            if memchr::memchr(b'&', b).is_none() {
                return Ok(Cow::Borrowed(s));
            }
            Ok(quick_xml::escape::unescape(s)?)
        }
        Cow::Owned(v) => {
            let s = String::from_utf8(v).map_err(|e| quick_xml::encoding::EncodingError::from(e.utf8_error()))?;
            Ok(Cow::Owned(quick_xml::escape::unescape(&s)?.into_owned()))
        }
    }
}

fn malformed<R: AsyncBufRead + Unpin>(input: &Input<R>, doc: &str, what: impl std::fmt::Display, pos: u64) -> DocumentError {
    let (line, col) = input.line_col(pos);
    DocumentError::permanent(doc, "", format!("malformed XML at line {line}, column {col}: {}", sanitise(&what.to_string(), 200)))
}

enum StartError {
    Xml(quick_xml::Error),
    Unknown(String),
    TooMany,
}

impl StartError {
    fn into_error<R: AsyncBufRead + Unpin>(self, input: &Input<R>, doc: &str, at: u64) -> DocumentError {
        match self {
            StartError::Xml(e) => malformed(input, doc, e, at),
            StartError::Unknown(p) => malformed(input, doc, format!("namespace prefix `{p}` is not declared"), at),
            StartError::TooMany => DocumentError::permanent(doc, "", "more than 256 namespaces: refused as hostile"),
        }
    }
}

/// Open the scope of a start tag and resolve its namespace.
fn open_start(scope: &mut Scope, s: &BytesStart) -> Result<NsId, StartError> {
    scope.open(s).map_err(StartError::Xml)?;
    match scope.resolve(s.name()) {
        Resolved::Ns(id) => Ok(id),
        Resolved::Unknown(p) => Err(StartError::Unknown(String::from_utf8_lossy(p).into_owned())),
        Resolved::TooMany => Err(StartError::TooMany),
    }
}

// ---------------------------------------------------------------------------------------------
// Event layer

enum Ev {
    Start { ns: NsId, local: Cow<'static, str> },
    End,
    /// A text run; only whether it is blank matters at this level.
    Text { blank: bool },
    Eof,
}

/// Element names the driver looks at, so a start tag at that level costs no allocation.
fn element_name(local: &[u8]) -> Cow<'static, str> {
    const KNOWN: &[&str] = &[
        "careContact",
        "diagnosis",
        "activityGroup",
        "observationGroup",
        "activity",
        "observation",
        "patient",
        "performerRole",
        "sourceSystem",
        "registeredResidentEngagement",
        "responseIsComplete",
        "result",
        "Envelope",
        "Header",
        "Body",
        "Fault",
        "GetCareContactsResponse",
        "GetDiagnosisResponse",
        "GetActivitiesResponse",
        "GetObservationsResponse",
        "GetUpdatesResponse",
        "careDocumentation",
        "GetCareDocumentationResponse",
    ];
    match KNOWN.iter().find(|k| k.as_bytes() == local) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(String::from_utf8_lossy(local).into_owned()),
    }
}

/// The namespace an element at a given depth must be in.
#[derive(Clone, Copy)]
enum Expect {
    Any,
    All(NsId),
    /// The responder namespace down to `depth`, the core namespace below.
    Split { resp: NsId, core: NsId, depth: usize },
}

impl Expect {
    fn at(self, d: usize) -> Option<NsId> {
        match self {
            Expect::Any => None,
            Expect::All(n) => Some(n),
            Expect::Split { resp, core, depth } => Some(if d <= depth { resp } else { core }),
        }
    }
}

struct XmlStream<R> {
    lex: Lexer<R>,
    tree: Tree,
    doc: String,
}

/// Most bytes of buffers a finished parse leaves to the next one on its thread.
const SPARE_MAX_BYTES: usize = 4 * 1024 * 1024;

thread_local! {
    /// The buffers of the last finished parse on this thread: a pull parses hundreds of
    /// thousands of small documents, and growing every buffer from nothing for each one cost
    /// more than a tenth of the parse.
    static SPARE: std::cell::Cell<Option<(Vec<u8>, Tree, Scope)>> = const { std::cell::Cell::new(None) };
}

impl<R> Drop for XmlStream<R> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.lex.input.buf);
        let (tree, scope) = (std::mem::take(&mut self.tree), std::mem::replace(&mut self.lex.scope, Scope::empty()));
        // A hostile or huge document's buffers are not kept.
        if buf.capacity() + tree.capacity() + scope.capacity() <= SPARE_MAX_BYTES {
            SPARE.set(Some((buf, tree, scope)));
        }
    }
}

impl<R: AsyncBufRead + Unpin> XmlStream<R> {
    fn new(inner: R, doc: &str, max: u64) -> XmlStream<R> {
        let (buf, mut tree, mut scope) = SPARE.take().unwrap_or_else(|| (Vec::new(), Tree::default(), Scope::new()));
        tree.clear();
        scope.reset();
        XmlStream { lex: Lexer { input: Input::new(inner, max, buf), scope, pending_end: false, doc: doc.to_string() }, tree, doc: doc.to_string() }
    }

    fn id_of(&mut self, ns: &str) -> NsId {
        Scope::intern(&mut self.lex.scope.namespaces, ns.as_bytes()).unwrap_or(NsId::MAX)
    }

    fn ns_name(&self, id: NsId) -> &str {
        self.lex.scope.namespaces.get(id as usize).map(|s| s.as_str()).unwrap_or("")
    }

    fn malformed(&self, what: impl std::fmt::Display, pos: u64) -> DocumentError {
        self.lex.malformed(what, pos)
    }

    fn position(&self) -> u64 {
        self.lex.position()
    }

    async fn fill(&mut self) -> Result<(), DocumentError> {
        let Lexer { input, doc, .. } = &mut self.lex;
        input.fill(doc).await
    }

    async fn next(&mut self) -> Result<Ev, DocumentError> {
        loop {
            let mut out = None;
            let got = self.lex.pump(|t| {
                out = Some(match t {
                    Tok::Start { ns, local, .. } => Ev::Start { ns, local: element_name(local.as_bytes()) },
                    Tok::End => Ev::End,
                    Tok::Text(s) => Ev::Text { blank: s.trim().is_empty() },
                    Tok::Eof => Ev::Eof,
                });
                Ok(true)
            })?;
            if let (true, Some(ev)) = (got, out) {
                return Ok(ev);
            }
            self.fill().await?;
        }
    }

    /// Skip the rest of an element whose start was just read.
    async fn skip(&mut self) -> Result<(), DocumentError> {
        let mut depth = 1usize;
        let mut eof = false;
        loop {
            let done = self.lex.pump(|t| {
                Ok(match t {
                    Tok::Start { .. } => {
                        depth += 1;
                        false
                    }
                    Tok::End => {
                        depth -= 1;
                        depth == 0
                    }
                    Tok::Text(_) => false,
                    Tok::Eof => {
                        eof = true;
                        true
                    }
                })
            })?;
            if eof {
                return Err(self.eof_error());
            }
            if done {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    fn eof_error(&self) -> DocumentError {
        self.malformed("the document ends inside an element", self.position())
    }

    /// Read the rest of an element (its start was just read) into the tree, as a new root.
    /// `expected` gives the namespace the element at each depth must be in.
    async fn subtree(&mut self, local: &str, ns: NsId, depth: usize, expected: Expect) -> Result<u32, DocumentError> {
        let wrong = match expected.at(depth) {
            Some(e) if e != ns => Some(self.ns_name(ns).to_string()),
            _ => None,
        };
        let root = self.tree.open(local, wrong, depth);
        let mut bytes = 0usize;
        let mut eof = false;
        loop {
            let tree = &mut self.tree;
            let doc = self.doc.as_str();
            let done = self.lex.pump(|t| {
                match t {
                    Tok::Start { ns, ns_name, local } => {
                        let d = tree.stack.last().map(|o| o.depth + 1).unwrap_or(depth);
                        if d > MAX_DEPTH {
                            return Err(DocumentError::permanent(doc, "", format!("elements nested deeper than {MAX_DEPTH}: refused as hostile")));
                        }
                        let wrong = match expected.at(d) {
                            Some(e) if e != ns => Some(ns_name.to_string()),
                            _ => None,
                        };
                        bytes += local.len() + 16;
                        tree.open(&local, wrong, d);
                    }
                    Tok::Text(s) => {
                        bytes += s.len();
                        tree.text(&s);
                    }
                    Tok::End => {
                        if tree.close() {
                            return Ok(true);
                        }
                    }
                    Tok::Eof => {
                        eof = true;
                        return Ok(true);
                    }
                }
                if bytes > MAX_ITEM_BYTES {
                    return Err(DocumentError::permanent(doc, "", format!("one item is larger than {MAX_ITEM_BYTES} bytes: refused as hostile")));
                }
                Ok(false)
            })?;
            if eof {
                return Err(self.eof_error());
            }
            if done {
                return Ok(root);
            }
            self.fill().await?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Item trees (one reused arena) and field access

const NIL: u32 = u32::MAX;

struct TNode {
    /// Local name, a range of `Tree::names`.
    name: (u32, u32),
    /// Text, a range of `Tree::texts` (runs between child elements that are only whitespace
    /// are not content and left out).
    text: (u32, u32),
    first: u32,
    last: u32,
    next: u32,
    /// Index in `Tree::wrong_ns` when the element is not in the namespace its position requires.
    wrong: u32,
}

struct Open {
    node: u32,
    depth: usize,
    /// Where this element's text starts in `Tree::pending`.
    text_from: usize,
}

/// Item trees, built into buffers that are reused from item to item.
#[derive(Default)]
struct Tree {
    nodes: Vec<TNode>,
    names: String,
    texts: String,
    /// Text of the open elements, innermost last (an element's text moves to `texts` when it ends).
    pending: String,
    wrong_ns: Vec<String>,
    stack: Vec<Open>,
}

#[derive(Clone, Copy)]
struct Mark {
    nodes: usize,
    names: usize,
    texts: usize,
    wrong: usize,
}

impl Tree {
    fn mark(&self) -> Mark {
        Mark { nodes: self.nodes.len(), names: self.names.len(), texts: self.texts.len(), wrong: self.wrong_ns.len() }
    }

    /// Forget every node made after `m` (they must not be linked from older ones).
    fn reset(&mut self, m: Mark) {
        self.nodes.truncate(m.nodes);
        self.names.truncate(m.names);
        self.texts.truncate(m.texts);
        self.wrong_ns.truncate(m.wrong);
        self.pending.clear();
        self.stack.clear();
    }

    fn clear(&mut self) {
        self.reset(Mark { nodes: 0, names: 0, texts: 0, wrong: 0 });
    }

    /// Bytes held (roughly), to decide whether to keep it for the next document.
    fn capacity(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<TNode>()
            + self.names.capacity()
            + self.texts.capacity()
            + self.pending.capacity()
            + self.stack.capacity() * std::mem::size_of::<Open>()
    }

    /// A node that is not read from the document (a group's header holder).
    fn detached(&mut self, name: &str) -> u32 {
        self.node(name, None)
    }

    fn node(&mut self, name: &str, wrong: Option<String>) -> u32 {
        let from = self.names.len() as u32;
        self.names.push_str(name);
        let wrong = match wrong {
            Some(w) => {
                self.wrong_ns.push(w);
                (self.wrong_ns.len() - 1) as u32
            }
            None => NIL,
        };
        self.nodes.push(TNode { name: (from, self.names.len() as u32), text: (0, 0), first: NIL, last: NIL, next: NIL, wrong });
        (self.nodes.len() - 1) as u32
    }

    /// Append `child` (a root) to `parent`'s children.
    fn adopt(&mut self, parent: u32, child: u32) {
        match self.nodes[parent as usize].last {
            NIL => self.nodes[parent as usize].first = child,
            last => self.nodes[last as usize].next = child,
        }
        self.nodes[parent as usize].last = child;
    }

    /// An element starts: a child of the innermost open one, or a new root.
    fn open(&mut self, name: &str, wrong: Option<String>, depth: usize) -> u32 {
        let n = self.node(name, wrong);
        if let Some(parent) = self.stack.last().map(|o| o.node) {
            self.adopt(parent, n);
        }
        self.stack.push(Open { node: n, depth, text_from: self.pending.len() });
        n
    }

    fn text(&mut self, t: &str) {
        if let Some(o) = self.stack.last() {
            // Whitespace between child elements is not content.
            if self.nodes[o.node as usize].first == NIL || !t.trim().is_empty() {
                self.pending.push_str(t);
            }
        }
    }

    /// The innermost element ends; `true` when it was the root.
    fn close(&mut self) -> bool {
        let Some(o) = self.stack.pop() else { return true };
        let from = self.texts.len() as u32;
        self.texts.push_str(&self.pending[o.text_from..]);
        self.pending.truncate(o.text_from);
        self.nodes[o.node as usize].text = (from, self.texts.len() as u32);
        self.stack.is_empty()
    }

    fn name(&self, n: u32) -> &str {
        let (a, b) = self.nodes[n as usize].name;
        &self.names[a as usize..b as usize]
    }

    fn raw_text(&self, n: u32) -> &str {
        let (a, b) = self.nodes[n as usize].text;
        &self.texts[a as usize..b as usize]
    }

    fn wrong(&self, n: u32) -> Option<&str> {
        match self.nodes[n as usize].wrong {
            NIL => None,
            w => Some(self.wrong_ns[w as usize].as_str()),
        }
    }

    fn children(&self, n: u32) -> impl Iterator<Item = u32> + '_ {
        let mut c = self.nodes[n as usize].first;
        std::iter::from_fn(move || {
            if c == NIL {
                return None;
            }
            let out = c;
            c = self.nodes[c as usize].next;
            Some(out)
        })
    }

    /// First child named `name`, in any namespace.
    fn child(&self, n: u32, name: &str) -> Option<u32> {
        self.children(n).find(|c| self.name(*c) == name)
    }

    /// What a subtree counts towards the item size limit (the whole subtree from `n` to the
    /// end of the arena: it was the last one built).
    fn size_from(&self, n: u32) -> usize {
        self.nodes[n as usize..].iter().map(|t| (t.name.1 - t.name.0) as usize + (t.text.1 - t.text.0) as usize + 16).sum()
    }
}

/// An item failed on one field.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldError {
    field: String,
    reason: String,
}

type Fr<T> = Result<T, FieldError>;

fn ferr(field: impl FieldName, reason: impl Into<String>) -> FieldError {
    FieldError { field: field.name(), reason: reason.into() }
}

/// A field path as a refusal names it. Paths are passed along unrendered ([`Field`]) and
/// written out only when an error needs them: a clean item builds none.
trait FieldName: Copy {
    fn name(self) -> String;
}

impl FieldName for &str {
    fn name(self) -> String {
        self.to_string()
    }
}

impl FieldName for &String {
    fn name(self) -> String {
        self.clone()
    }
}

/// The path of a node plus a relative path below it, not yet rendered.
#[derive(Clone, Copy)]
struct Field<'a> {
    path: Path<'a>,
    rel: &'a str,
}

impl FieldName for Field<'_> {
    fn name(self) -> String {
        let mut s = self.path.render();
        if !self.rel.is_empty() {
            s.push('/');
            s.push_str(self.rel);
        }
        s
    }
}

/// A field path, built as a chain of borrowed segments and written out only for a refusal.
#[derive(Clone, Copy)]
struct Path<'p> {
    up: Option<&'p Path<'p>>,
    seg: &'p str,
}

impl Path<'_> {
    fn write(&self, out: &mut String) {
        if let Some(u) = self.up {
            u.write(out);
            out.push('/');
        }
        out.push_str(self.seg);
    }

    fn render(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }
}

/// A view of one node of the tree and its field path.
#[derive(Clone, Copy)]
struct At<'t, 'p> {
    t: &'t Tree,
    node: u32,
    path: Path<'p>,
}

impl<'t, 'p> At<'t, 'p> {
    fn root(t: &'t Tree, node: u32, path: &'p str) -> At<'t, 'p> {
        At { t, node, path: Path { up: None, seg: path } }
    }

    fn field(&self, rel: &str) -> String {
        self.f(rel).name()
    }

    /// The field at `rel`, rendered only if an error names it.
    fn f<'s>(&'s self, rel: &'s str) -> Field<'s> {
        Field { path: self.path, rel }
    }

    /// The element at `rel` (a `/`-separated path of local names), if present.
    fn opt<'s>(&'s self, rel: &'s str) -> Fr<Option<At<'t, 's>>> {
        let mut node = self.node;
        let mut seg_end = 0usize;
        for seg in rel.split('/') {
            seg_end += seg.len();
            if !seg.is_empty() {
                let mut wrong = None;
                let mut found = None;
                for c in self.t.children(node) {
                    if self.t.name(c) == seg {
                        if self.t.wrong(c).is_none() {
                            found = Some(c);
                            break;
                        } else if wrong.is_none() {
                            wrong = Some(c);
                        }
                    }
                }
                match (found, wrong) {
                    (Some(c), _) => node = c,
                    (None, Some(w)) => {
                        let actual = self.t.wrong(w).unwrap_or("");
                        let actual = if actual.is_empty() { "no namespace".to_string() } else { format!("namespace {actual}") };
                        return Err(ferr(&self.field(&rel[..seg_end]), format!("element is in {actual}, not the namespace the contract requires")));
                    }
                    (None, None) => return Ok(None),
                }
            }
            seg_end += 1;
        }
        let path = if rel.is_empty() { self.path } else { Path { up: Some(&self.path), seg: rel } };
        Ok(Some(At { t: self.t, node, path }))
    }

    fn req<'s>(&'s self, rel: &'s str) -> Fr<At<'t, 's>> {
        self.opt(rel)?.ok_or_else(|| ferr(&self.field(rel), "mandatory element is missing"))
    }

    fn text(&self) -> &'t str {
        self.t.raw_text(self.node).trim()
    }

    /// Text of an optional element; an empty element counts as absent.
    fn opt_text(&self, rel: &str) -> Fr<Option<&'t str>> {
        Ok(self.opt(rel)?.map(|a| a.text()).filter(|t| !t.is_empty()))
    }

    fn req_text(&self, rel: &str) -> Fr<&'t str> {
        let a = self.req(rel)?;
        let t = a.text();
        if t.is_empty() {
            return Err(ferr(&a.path.render(), "mandatory element is empty"));
        }
        Ok(t)
    }

    /// All children named `name` in the right namespace.
    fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = At<'t, 's>> + 's {
        let t = self.t;
        t.children(self.node)
            .filter(move |c| t.name(*c) == name && t.wrong(*c).is_none())
            .map(move |c| At { t, node: c, path: Path { up: Some(&self.path), seg: name } })
    }
}

fn parse_bool(text: &str, field: impl FieldName) -> Fr<bool> {
    match text {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ferr(field, "not a boolean (true/false)")),
    }
}

fn opt_bool(a: &At, rel: &str) -> Fr<Option<bool>> {
    match a.opt_text(rel)? {
        Some(t) => parse_bool(t, a.f(rel)).map(Some),
        None => Ok(None),
    }
}

fn req_bool(a: &At, rel: &str) -> Fr<bool> {
    parse_bool(a.req_text(rel)?, a.f(rel))
}

/// `YYYYMMDDhhmmss` (TimeStampType).
fn ts14(text: &str, field: impl FieldName) -> Fr<NaiveDateTime> {
    if text.len() != 14 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ferr(field, "not a timestamp of the form YYYYMMDDhhmmss"));
    }
    datetime14(text.as_bytes()).ok_or_else(|| ferr(field, "not a valid date and time"))
}

/// The number written by ASCII digits `d` (checked by the caller).
fn digits(d: &[u8]) -> u32 {
    d.iter().fold(0, |n, b| n * 10 + u32::from(b - b'0'))
}

/// 14 ASCII digits `YYYYMMDDhhmmss` as a date and time (chrono's `%Y%m%d%H%M%S`, without
/// parsing the format string each time; a leap second `60` is left to chrono itself).
fn datetime14(b: &[u8]) -> Option<NaiveDateTime> {
    let s = digits(&b[12..14]);
    if s > 59 {
        let text = std::str::from_utf8(b).ok()?;
        return NaiveDateTime::parse_from_str(text, "%Y%m%d%H%M%S").ok();
    }
    date8(b)?.and_hms_opt(digits(&b[8..10]), digits(&b[10..12]), s)
}

/// 8 ASCII digits `YYYYMMDD` as a date.
fn date8(b: &[u8]) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(digits(&b[..4]) as i32, digits(&b[4..6]), digits(&b[6..8]))
}

/// A PartialTimeStamp, interpreted.
enum Partial {
    /// Coarser than a day (YYYY, YYYYMM): kept as written.
    Coarse(String),
    Day(NaiveDate),
    Time(NaiveDateTime),
}

fn partial(a: &At) -> Fr<Partial> {
    let format = a.req_text("format")?;
    let value = a.req_text("value")?;
    let vf = a.f("value");
    let expected_len = match format {
        "YYYY" => 4,
        "YYYYMM" => 6,
        "YYYYMMDD" => 8,
        "YYYYMMDDhh" => 10,
        "YYYYMMDDhhmm" => 12,
        "YYYYMMDDhhmmss" => 14,
        _ => return Err(ferr(&a.field("format"), "not one of the time formats of the contract")),
    };
    if value.len() != expected_len || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ferr(vf, format!("does not match its format {format}")));
    }
    match expected_len {
        4 | 6 => {
            let y: i32 = value[..4].parse().map_err(|_| ferr(vf, "not a year"))?;
            let m: u32 = if expected_len == 6 { value[4..6].parse().map_err(|_| ferr(vf, "not a month"))? } else { 1 };
            NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(|| ferr(vf, "not a valid date"))?;
            Ok(Partial::Coarse(value.to_string()))
        }
        8 => date8(value.as_bytes()).map(Partial::Day).ok_or_else(|| ferr(vf, "not a valid date")),
        _ => {
            let mut padded = [b'0'; 14];
            padded[..expected_len].copy_from_slice(value.as_bytes());
            datetime14(&padded).map(Partial::Time).ok_or_else(|| ferr(vf, "not a valid date and time"))
        }
    }
}

fn partial_time(a: &At) -> Fr<LocalTime> {
    match partial(a)? {
        Partial::Day(d) => Ok(stockholm(d.and_time(chrono::NaiveTime::MIN))),
        Partial::Time(t) => Ok(stockholm(t)),
        Partial::Coarse(_) => Err(ferr(&a.field("value"), "given only to the year or month; a day is needed")),
    }
}

/// Refuse clinical times after tomorrow (clock errors, typos, test data leaking in).
fn not_future(t: LocalTime, today: NaiveDate, field: impl FieldName) -> Fr<LocalTime> {
    if t.date_naive() > today + chrono::Duration::days(1) {
        return Err(ferr(field, "date lies in the future"));
    }
    Ok(t)
}

/// A CV whose code is optional (logistics, description): `None` when there is no code.
fn cv_optional(a: &At, rel: &str) -> Fr<Option<Code>> {
    let Some(cv) = a.opt(rel)? else { return Ok(None) };
    let Some(code) = cv.opt_text("code")? else { return Ok(None) };
    let system = cv.opt_text("codeSystem")?.unwrap_or("");
    Ok(Some(Code { system: system.to_string(), code: code.to_string(), display: cv.opt_text("displayName")?.map(str::to_string) }))
}

/// A CV with code and codeSystem mandatory (actions, basic).
fn cv_required(a: &At) -> Fr<Code> {
    Ok(Code {
        system: a.req_text("codeSystem")?.to_string(),
        code: a.req_text("code")?.to_string(),
        display: a.opt_text("displayName")?.map(str::to_string),
    })
}

fn check_known(code: &Code, field: impl FieldName, ctx: &ParseContext) -> Fr<()> {
    if !ctx.known_code_systems.iter().any(|k| k == &code.system) {
        let sys = sanitise(&code.system, 80);
        return Err(ferr(field, format!("code system {sys} is not in known_code_systems")));
    }
    Ok(())
}

fn hsa(text: Option<&str>, field: impl FieldName) -> Fr<Option<HsaId>> {
    match text {
        None => Ok(None),
        Some(t) => HsaId::parse(t).map(Some).map_err(|e| ferr(field, format!("not a valid HSA id ({})", e.0))),
    }
}

fn patient_id(id: &str, id_field: impl FieldName, oid: &str, oid_field: impl FieldName, ctx: &ParseContext) -> Fr<PatientId> {
    let p = PatientId::parse_with_oid(id, oid, &ctx.reserve_oids, ctx.today).map_err(|e| match e {
        IdError::UnknownType => ferr(oid_field, "unknown patient identity type (OID); a regional reserve-number OID must be listed in reserve_oids"),
        other => ferr(id_field, format!("invalid patient identity: {other}")),
    })?;
    if let Some(exp) = &ctx.expected_patient {
        if exp != &p {
            return Err(ferr(id_field, "the patient differs from the patient asked for"));
        }
    }
    Ok(p)
}

fn provenance(ctx: &ParseContext, source_system: &str, document_id: &str) -> Provenance {
    Provenance {
        connector: ctx.connector.clone(),
        source_system: source_system.to_string(),
        document_id: document_id.to_string(),
        fetched_at: ctx.fetched_at,
    }
}

// ---------------------------------------------------------------------------------------------
// Contract mappings

/// Header common to care contacts and diagnoses (PatientSummaryHeaderType).
struct Header {
    document_id: String,
    source_system: String,
    patient: PatientId,
    care_contact_id: Option<String>,
    nullified: bool,
    profession: Option<Code>,
    unit: Option<HsaId>,
    document_time: Option<LocalTime>,
    author_time: LocalTime,
}

fn header(h: &At, ctx: &ParseContext) -> Fr<Header> {
    header_with(h, "sourceSystemHSAId", ctx)
}

/// `source_system_element`: GetCareDocumentation's header (CPatientSummaryHeaderType) spells it
/// `sourceSystemHSAid`.
fn header_with(h: &At, source_system_element: &str, ctx: &ParseContext) -> Fr<Header> {
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

fn care_contact(item: &At, ctx: &ParseContext) -> Fr<CareContact> {
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

fn diagnosis(item: &At, ctx: &ParseContext) -> Fr<Diagnosis> {
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
fn care_documentation(item: &At, ctx: &ParseContext) -> Fr<(Vec<Record>, Vec<FieldError>)> {
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
struct GroupHeader {
    patient: PatientId,
    profession: Option<Code>,
    unit: Option<HsaId>,
    source_system: String,
}

fn group_header(g: &At, ctx: &ParseContext) -> Fr<GroupHeader> {
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

fn contains_ignore_ascii_case(hay: &str, needle: &str) -> bool {
    hay.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The care contact an activity or observation belongs to, from its relations.
fn related_contact(item: &At) -> Fr<Option<String>> {
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

fn activity(a: &At, g: &GroupHeader, ctx: &ParseContext) -> Fr<Activity> {
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

fn is_nullified_status(c: &Code) -> bool {
    NULLIFIED_STATUS_CODES.iter().any(|n| c.code.eq_ignore_ascii_case(n))
}

/// The clinical time of a PartialTimePeriod: its start, else its end.
fn period_time(t: &At, ctx: &ParseContext) -> Fr<LocalTime> {
    let at = match (t.opt("start")?, t.opt("end")?) {
        (Some(s), _) => s,
        (None, Some(e)) => e,
        (None, None) => return Err(ferr(&t.path.render(), "has neither start nor end")),
    };
    let v = partial_time(&at)?;
    not_future(v, ctx.today, at.f("value"))
}

fn observation(o: &At, g: &GroupHeader, ctx: &ParseContext) -> Fr<Observation> {
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

fn observation_value(v: &At) -> Fr<ObservationValue> {
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

fn riv_result(r: &At) -> Fr<RivResult> {
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
fn resident(item: &At, ctx: &ParseContext) -> (Option<RawResidentId>, Fr<Resident>) {
    let raw = match item.req_text("registeredResidentIdentification") {
        Ok(r) => r,
        Err(e) => return (None, Err(e)),
    };
    (Some(RawResidentId(raw.to_string())), resident_inner(item, raw, ctx))
}

fn resident_inner(item: &At, raw: &str, ctx: &ParseContext) -> Fr<Resident> {
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

