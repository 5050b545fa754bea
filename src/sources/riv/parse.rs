//! Streaming parser for RIV-TA response documents (GetCareContacts 3, GetDiagnosis 2,
//! GetActivities 1, GetObservations 1.1, GetUpdates 1) into canonical records.
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
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

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
    let bytes = x.reader.get_ref().consumed;
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
// Byte stream guard: size limit, token limit, line tracking, transport errors told apart.

#[derive(Clone, Debug)]
enum StreamFailure {
    TooLarge,
    TokenTooLarge,
    Transport(String),
}

/// Newline offsets remembered for line numbers in error messages.
const NEWLINE_RING: usize = 4096;

struct Limited<R> {
    inner: R,
    max: u64,
    consumed: u64,
    token_start: u64,
    scanned: u64,
    newlines_dropped: u64,
    ring: VecDeque<u64>,
    failure: Option<StreamFailure>,
}

impl<R> Limited<R> {
    fn new(inner: R, max: u64) -> Limited<R> {
        Limited { inner, max, consumed: 0, token_start: 0, scanned: 0, newlines_dropped: 0, ring: VecDeque::new(), failure: None }
    }

    /// 1-based line and column of a byte offset.
    fn line_col(&self, pos: u64) -> (u64, u64) {
        let mut line = 1 + self.newlines_dropped;
        let mut line_start = 0u64;
        for &o in &self.ring {
            if o < pos {
                line += 1;
                line_start = o + 1;
            } else {
                break;
            }
        }
        (line, pos.saturating_sub(line_start) + 1)
    }
}

impl<R: AsyncBufRead + Unpin> AsyncRead for Limited<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = match self.as_mut().poll_fill_buf(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(buf)) => {
                let n = buf.len().min(out.remaining());
                out.put_slice(&buf[..n]);
                n
            }
        };
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncBufRead + Unpin> AsyncBufRead for Limited<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.consumed.saturating_sub(this.token_start) > MAX_TOKEN_BYTES {
            this.failure = Some(StreamFailure::TokenTooLarge);
            return Poll::Ready(Err(io::Error::other("token too large")));
        }
        let buf = match Pin::new(&mut this.inner).poll_fill_buf(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                this.failure = Some(StreamFailure::Transport(e.to_string()));
                return Poll::Ready(Err(e));
            }
            Poll::Ready(Ok(b)) => b,
        };
        if buf.is_empty() {
            return Poll::Ready(Ok(buf));
        }
        let remaining = this.max.saturating_sub(this.consumed);
        if remaining == 0 {
            this.failure = Some(StreamFailure::TooLarge);
            return Poll::Ready(Err(io::Error::other("response too large")));
        }
        let n = (buf.len() as u64).min(remaining) as usize;
        let buf = &buf[..n];
        let from = this.scanned.saturating_sub(this.consumed) as usize;
        if from < n {
            for (i, b) in buf[from..].iter().enumerate() {
                if *b == b'\n' {
                    if this.ring.len() == NEWLINE_RING {
                        this.ring.pop_front();
                        this.newlines_dropped += 1;
                    }
                    this.ring.push_back(this.consumed + (from + i) as u64);
                }
            }
            this.scanned = this.consumed + n as u64;
        }
        Poll::Ready(Ok(buf))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.consumed += amt as u64;
        Pin::new(&mut this.inner).consume(amt);
    }
}

// ---------------------------------------------------------------------------------------------
// Event layer

type NsId = u16;
/// Id of "no namespace".
const NO_NS: NsId = 0;

enum Ev {
    Start { ns: NsId, local: String },
    End,
    Text(String),
    Eof,
}

struct XmlStream<R> {
    reader: NsReader<Limited<R>>,
    buf: Vec<u8>,
    namespaces: Vec<String>,
    doc: String,
    max: u64,
}

impl<R: AsyncBufRead + Unpin> XmlStream<R> {
    fn new(inner: R, doc: &str, max: u64) -> XmlStream<R> {
        let mut reader = NsReader::from_reader(Limited::new(inner, max));
        let cfg = reader.config_mut();
        cfg.expand_empty_elements = true;
        cfg.check_end_names = true;
        cfg.trim_text(false);
        XmlStream { reader, buf: Vec::with_capacity(4096), namespaces: vec![String::new()], doc: doc.to_string(), max }
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

    fn id_of(&mut self, ns: &str) -> NsId {
        Self::intern(&mut self.namespaces, ns.as_bytes()).unwrap_or(NsId::MAX)
    }

    fn ns_name(&self, id: NsId) -> &str {
        self.namespaces.get(id as usize).map(|s| s.as_str()).unwrap_or("")
    }

    fn malformed(&self, what: impl std::fmt::Display, pos: u64) -> DocumentError {
        let (line, col) = self.reader.get_ref().line_col(pos);
        DocumentError::permanent(&self.doc, "", format!("malformed XML at line {line}, column {col}: {}", sanitise(&what.to_string(), 200)))
    }

    fn xml_error(&self, e: quick_xml::Error) -> DocumentError {
        if let quick_xml::Error::Io(_) = &e {
            return match &self.reader.get_ref().failure {
                Some(StreamFailure::TooLarge) => DocumentError::permanent(
                    &self.doc,
                    "",
                    format!("response is larger than max_response_bytes ({} bytes): refused as hostile, reading stopped", self.max),
                ),
                Some(StreamFailure::TokenTooLarge) => DocumentError::permanent(
                    &self.doc,
                    "",
                    format!("a single XML token is larger than {MAX_TOKEN_BYTES} bytes: refused as hostile, reading stopped"),
                ),
                Some(StreamFailure::Transport(m)) => {
                    DocumentError::transient(&self.doc, "", format!("connection failed while reading the response: {}", sanitise(m, 300)))
                }
                None => DocumentError::transient(&self.doc, "", format!("read error: {}", sanitise(&e.to_string(), 300))),
            };
        }
        self.malformed(e, self.reader.error_position())
    }

    async fn next(&mut self) -> Result<Ev, DocumentError> {
        loop {
            self.buf.clear();
            {
                let lim = self.reader.get_mut();
                lim.token_start = lim.consumed;
            }
            let pos = self.reader.buffer_position();
            let Self { reader, buf, namespaces, .. } = self;
            let res = reader.read_resolved_event_into_async(buf).await;
            let (ns, ev) = match res {
                Ok(v) => v,
                Err(e) => return Err(self.xml_error(e)),
            };
            match ev {
                Event::Start(s) => {
                    let local = String::from_utf8_lossy(s.local_name().as_ref()).into_owned();
                    let ns = match ns {
                        ResolveResult::Unbound => NO_NS,
                        ResolveResult::Bound(n) => match Self::intern(namespaces, n.as_ref()) {
                            Some(id) => id,
                            None => return Err(DocumentError::permanent(&self.doc, "", "more than 256 namespaces: refused as hostile")),
                        },
                        ResolveResult::Unknown(p) => {
                            let p = String::from_utf8_lossy(&p).into_owned();
                            return Err(self.malformed(format!("namespace prefix `{p}` is not declared"), pos));
                        }
                    };
                    return Ok(Ev::Start { ns, local });
                }
                Event::End(_) => return Ok(Ev::End),
                Event::Text(t) => match t.unescape() {
                    Ok(s) => return Ok(Ev::Text(s.into_owned())),
                    Err(e) => return Err(self.malformed(e, pos)),
                },
                Event::CData(c) => match c.decode() {
                    Ok(s) => return Ok(Ev::Text(s.into_owned())),
                    Err(e) => return Err(self.malformed(e, pos)),
                },
                Event::DocType(_) => {
                    return Err(DocumentError::permanent(
                        &self.doc,
                        "<!DOCTYPE>",
                        "document type declarations are not accepted (no DTDs, no entity expansion): refused as hostile",
                    ))
                }
                Event::Empty(_) => {
                    // expand_empty_elements is on; an Empty event cannot arrive.
                    return Err(self.malformed("unexpected empty-element event", pos));
                }
                Event::Eof => return Ok(Ev::Eof),
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) => continue,
            }
        }
    }

    /// Skip the rest of an element whose start was just read.
    async fn skip(&mut self) -> Result<(), DocumentError> {
        let mut depth = 1usize;
        loop {
            match self.next().await? {
                Ev::Start { .. } => depth += 1,
                Ev::End => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                Ev::Text(_) => {}
                Ev::Eof => return Err(self.eof_error()),
            }
        }
    }

    fn eof_error(&self) -> DocumentError {
        self.malformed("the document ends inside an element", self.reader.buffer_position())
    }

    /// Read the rest of an element (its start was just read) into a tree. `expected(depth)`
    /// gives the namespace the element at that depth must be in (`None`: any).
    async fn subtree(
        &mut self,
        local: String,
        ns: NsId,
        depth: usize,
        expected: &(dyn Fn(usize) -> Option<NsId> + Sync),
    ) -> Result<Node, DocumentError> {
        let mut stack: Vec<(Node, usize)> = vec![(self.node(local, ns, expected(depth)), depth)];
        let mut bytes = 0usize;
        loop {
            match self.next().await? {
                Ev::Start { ns, local } => {
                    let d = stack.last().map(|(_, d)| d + 1).unwrap_or(depth);
                    if d > MAX_DEPTH {
                        return Err(DocumentError::permanent(&self.doc, "", format!("elements nested deeper than {MAX_DEPTH}: refused as hostile")));
                    }
                    bytes += local.len() + 16;
                    let n = self.node(local, ns, expected(d));
                    stack.push((n, d));
                }
                Ev::Text(t) => {
                    bytes += t.len();
                    if let Some((n, _)) = stack.last_mut() {
                        // Whitespace between child elements is not content.
                        if n.children.is_empty() || !t.trim().is_empty() {
                            n.text.push_str(&t);
                        }
                    }
                }
                Ev::End => {
                    let Some((n, _)) = stack.pop() else { return Err(self.eof_error()) };
                    match stack.last_mut() {
                        Some((parent, _)) => parent.children.push(n),
                        None => return Ok(n),
                    }
                }
                Ev::Eof => return Err(self.eof_error()),
            }
            if bytes > MAX_ITEM_BYTES {
                return Err(DocumentError::permanent(&self.doc, "", format!("one item is larger than {MAX_ITEM_BYTES} bytes: refused as hostile")));
            }
        }
    }

    fn node(&self, name: String, ns: NsId, expected: Option<NsId>) -> Node {
        let wrong_ns = match expected {
            Some(e) if e != ns => Some(self.ns_name(ns).to_string()),
            _ => None,
        };
        Node { name, text: String::new(), children: vec![], wrong_ns }
    }
}

// ---------------------------------------------------------------------------------------------
// Item trees and field access

#[derive(Clone, Debug)]
struct Node {
    name: String,
    text: String,
    children: Vec<Node>,
    /// Set when the element is not in the namespace its position requires (holds the actual one).
    wrong_ns: Option<String>,
}

impl Node {
    fn empty(name: &str) -> Node {
        Node { name: name.to_string(), text: String::new(), children: vec![], wrong_ns: None }
    }
}

/// An item failed on one field.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldError {
    field: String,
    reason: String,
}

type Fr<T> = Result<T, FieldError>;

fn ferr(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError { field: field.to_string(), reason: reason.into() }
}

/// A view owning its path string (paths are built as items are walked).
struct At<'a> {
    node: &'a Node,
    path: String,
}

impl<'a> At<'a> {
    fn root(node: &'a Node, path: &str) -> At<'a> {
        At { node, path: path.to_string() }
    }

    fn field(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.path.clone()
        } else {
            format!("{}/{rel}", self.path)
        }
    }

    /// The element at `rel` (a `/`-separated path of local names), if present.
    fn opt(&self, rel: &str) -> Fr<Option<At<'a>>> {
        let mut node = self.node;
        let mut path = self.path.clone();
        for seg in rel.split('/').filter(|s| !s.is_empty()) {
            path.push('/');
            path.push_str(seg);
            let mut wrong = None;
            let mut found = None;
            for c in &node.children {
                if c.name == seg {
                    if c.wrong_ns.is_none() {
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
                    let actual = w.wrong_ns.as_deref().unwrap_or("");
                    let actual = if actual.is_empty() { "no namespace".to_string() } else { format!("namespace {actual}") };
                    return Err(ferr(&path, format!("element is in {actual}, not the namespace the contract requires")));
                }
                (None, None) => return Ok(None),
            }
        }
        Ok(Some(At { node, path }))
    }

    fn req(&self, rel: &str) -> Fr<At<'a>> {
        self.opt(rel)?.ok_or_else(|| ferr(&self.field(rel), "mandatory element is missing"))
    }

    fn text(&self) -> &'a str {
        self.node.text.trim()
    }

    /// Text of an optional element; an empty element counts as absent.
    fn opt_text(&self, rel: &str) -> Fr<Option<&'a str>> {
        Ok(self.opt(rel)?.map(|a| a.text()).filter(|t| !t.is_empty()))
    }

    fn req_text(&self, rel: &str) -> Fr<&'a str> {
        let a = self.req(rel)?;
        let t = a.text();
        if t.is_empty() {
            return Err(ferr(&a.path, "mandatory element is empty"));
        }
        Ok(t)
    }

    /// All children named `name` in the right namespace.
    fn all(&self, name: &str) -> Vec<At<'a>> {
        self.node
            .children
            .iter()
            .filter(|c| c.name == name && c.wrong_ns.is_none())
            .map(|c| At { node: c, path: format!("{}/{name}", self.path) })
            .collect()
    }
}

fn parse_bool(text: &str, field: &str) -> Fr<bool> {
    match text {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ferr(field, "not a boolean (true/false)")),
    }
}

fn opt_bool(a: &At, rel: &str) -> Fr<Option<bool>> {
    match a.opt_text(rel)? {
        Some(t) => parse_bool(t, &a.field(rel)).map(Some),
        None => Ok(None),
    }
}

fn req_bool(a: &At, rel: &str) -> Fr<bool> {
    parse_bool(a.req_text(rel)?, &a.field(rel))
}

/// `YYYYMMDDhhmmss` (TimeStampType).
fn ts14(text: &str, field: &str) -> Fr<NaiveDateTime> {
    if text.len() != 14 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ferr(field, "not a timestamp of the form YYYYMMDDhhmmss"));
    }
    NaiveDateTime::parse_from_str(text, "%Y%m%d%H%M%S").map_err(|_| ferr(field, "not a valid date and time"))
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
    let vf = a.field("value");
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
        return Err(ferr(&vf, format!("does not match its format {format}")));
    }
    match expected_len {
        4 | 6 => {
            let y: i32 = value[..4].parse().map_err(|_| ferr(&vf, "not a year"))?;
            let m: u32 = if expected_len == 6 { value[4..6].parse().map_err(|_| ferr(&vf, "not a month"))? } else { 1 };
            NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(|| ferr(&vf, "not a valid date"))?;
            Ok(Partial::Coarse(value.to_string()))
        }
        8 => NaiveDate::parse_from_str(value, "%Y%m%d").map(Partial::Day).map_err(|_| ferr(&vf, "not a valid date")),
        _ => {
            let padded = format!("{value:0<14}");
            NaiveDateTime::parse_from_str(&padded, "%Y%m%d%H%M%S").map(Partial::Time).map_err(|_| ferr(&vf, "not a valid date and time"))
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
fn not_future(t: LocalTime, today: NaiveDate, field: &str) -> Fr<LocalTime> {
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

fn check_known(code: &Code, field: &str, ctx: &ParseContext) -> Fr<()> {
    if !ctx.known_code_systems.iter().any(|k| k == &code.system) {
        let sys = sanitise(&code.system, 80);
        return Err(ferr(field, format!("code system {sys} is not in known_code_systems")));
    }
    Ok(())
}

fn hsa(text: Option<&str>, field: &str) -> Fr<Option<HsaId>> {
    match text {
        None => Ok(None),
        Some(t) => HsaId::parse(t).map(Some).map_err(|e| ferr(field, format!("not a valid HSA id ({})", e.0))),
    }
}

fn patient_id(id: &str, id_field: &str, oid: &str, oid_field: &str, ctx: &ParseContext) -> Fr<PatientId> {
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
}

fn header(h: &At, ctx: &ParseContext) -> Fr<Header> {
    let document_id = h.req_text("documentId")?.to_string();
    let source_system = h.req_text("sourceSystemHSAId")?.to_string();
    let document_time = match h.opt_text("documentTime")? {
        Some(t) => Some(stockholm(ts14(t, &h.field("documentTime"))?)),
        None => None,
    };
    let pid = h.req("patientId")?;
    let patient = patient_id(pid.req_text("id")?, &pid.field("id"), pid.req_text("type")?, &pid.field("type"), ctx)?;
    let ahp = h.req("accountableHealthcareProfessional")?;
    ts14(ahp.req_text("authorTime")?, &ahp.field("authorTime"))?;
    let profession = cv_optional(&ahp, "healthcareProfessionalRoleCode")?;
    let unit_field = ahp.field("healthcareProfessionalCareUnitHSAId");
    let unit = match hsa(ahp.opt_text("healthcareProfessionalCareUnitHSAId")?, &unit_field)? {
        Some(u) => Some(u),
        None => hsa(ahp.opt_text("healthcareProfessionalOrgUnit/orgUnitHSAId")?, &ahp.field("healthcareProfessionalOrgUnit/orgUnitHSAId"))?,
    };
    if let Some(la) = h.opt("legalAuthenticator")? {
        ts14(la.req_text("signatureTime")?, &la.field("signatureTime"))?;
    }
    req_bool(h, "approvedForPatient")?;
    let nullified = opt_bool(h, "nullified")?.unwrap_or(false);
    let care_contact_id = h.opt_text("careContactId")?.map(str::to_string);
    Ok(Header { document_id, source_system, patient, care_contact_id, nullified, profession, unit, document_time })
}

fn care_contact(item: &At, ctx: &ParseContext) -> Fr<CareContact> {
    let h = header(&item.req("careContactHeader")?, ctx)?;
    let body = item.req("careContactBody")?;
    let contact_type = cv_optional(&body, "careContactCode")?;
    let status = cv_optional(&body, "careContactStatus")?;
    let unit = match hsa(body.opt_text("careContactOrgUnit/orgUnitHSAId")?, &body.field("careContactOrgUnit/orgUnitHSAId"))? {
        Some(u) => Some(u),
        None => h.unit.clone(),
    };
    let (mut start, mut end) = (None, None);
    if let Some(p) = body.opt("careContactTimePeriod")? {
        let sf = p.field("start");
        start = Some(not_future(stockholm(ts14(p.req_text("start")?, &sf)?), ctx.today, &sf)?);
        if let Some(e) = p.opt_text("end")? {
            let ef = p.field("end");
            end = Some(not_future(stockholm(ts14(e, &ef)?), ctx.today, &ef)?);
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
            let f = body.field("diagnosisTime");
            Some(not_future(stockholm(ts14(t, &f)?), ctx.today, &f)?)
        }
        None => h.document_time,
    };
    let cf = body.field("diagnosisCode");
    let Some(cv) = body.opt("diagnosisCode")? else {
        return Err(ferr(&cf, "no diagnosis code (optional in the contract, but a diagnosis without a code cannot be used)"));
    };
    let code = cv.opt_text("code")?.ok_or_else(|| ferr(&cv.field("code"), "no diagnosis code"))?;
    let system = cv.opt_text("codeSystem")?.ok_or_else(|| ferr(&cv.field("codeSystem"), "no code system"))?;
    let mut code = Code { system: system.to_string(), code: code.to_string(), display: cv.opt_text("displayName")?.map(str::to_string) };
    check_known(&code, &cv.field("codeSystem"), ctx)?;
    if code.system == OID_ICD10SE {
        code.code = normalise_icd(&code.code);
        if code.code.is_empty() || !code.code.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ferr(&cv.field("code"), "not an ICD-10-SE code"));
        }
    }
    for (i, rd) in body.all("relatedDiagnosis").iter().enumerate() {
        if rd.opt_text("documentId")?.is_none() {
            return Err(ferr(&format!("{}[{i}]/documentId", rd.path), "mandatory element is missing"));
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
    let patient = patient_id(id.req_text("extension")?, &id.field("extension"), id.req_text("root")?, &id.field("root"), ctx)?;
    p.req_text("dateOfBirth")?;
    let role = g.req("performerRole")?;
    let profession = Some(cv_required(&role.req("code")?)?);
    let unit = match role.opt("careUnit")? {
        Some(cu) => {
            let id = cu.req("id")?;
            cu.req("careGiver")?;
            hsa(Some(id.req_text("extension")?), &id.field("extension"))?
        }
        None => None,
    };
    let ss = g.req("sourceSystem")?.req("id")?;
    let source_system = ss.req_text("extension")?.to_string();
    Ok(GroupHeader { patient, profession, unit, source_system })
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
        let t = ty.to_ascii_lowercase();
        // The engagement-index categorisation of care contacts is `vko`; producers also write the
        // contract or element name.
        if first_contact.is_none() && (t == "vko" || t.contains("carecontact") || t.contains("vardkontakt") || t.contains("vårdkontakt")) {
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
    check_known(&code, &code_at.field("codeSystem"), ctx)?;
    let time = period_time(&a.req("time")?, ctx)?;
    req_bool(a, "approvedForPatient")?;
    ts14(a.req_text("registrationTime")?, &a.field("registrationTime"))?;
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
    let (at, f) = match (t.opt("start")?, t.opt("end")?) {
        (Some(s), _) => {
            let f = s.field("value");
            (s, f)
        }
        (None, Some(e)) => {
            let f = e.field("value");
            (e, f)
        }
        (None, None) => return Err(ferr(&t.path, "has neither start nor end")),
    };
    let v = partial_time(&at)?;
    not_future(v, ctx.today, &f)
}

fn observation(o: &At, g: &GroupHeader, ctx: &ParseContext) -> Fr<Observation> {
    let id = o.req("id")?;
    let document_id = id.req_text("extension")?.to_string();
    id.req_text("root")?;
    let type_at = o.req("type")?;
    let term = cv_required(&type_at)?;
    check_known(&term, &type_at.field("codeSystem"), ctx)?;
    let time = period_time(&o.req("time")?, ctx)?;
    let value = observation_value(&o.req("value")?)?;
    if req_bool(o, "valueNegation")? {
        return Err(ferr(&o.field("valueNegation"), "negated observations are not supported"));
    }
    req_bool(o, "approvedForPatient")?;
    if let Some(rt) = o.opt_text("registrationTime")? {
        ts14(rt, &o.field("registrationTime"))?;
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
        return Err(ferr(&v.path, "has none of pq, ts, ivl_ts, cv"));
    }
    if count > 1 {
        return Err(ferr(&v.path, "has more than one of pq, ts, ivl_ts, cv"));
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
            return Err(ferr(&ivl.path, "has neither start nor end"));
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
    Err(ferr(&v.path, "has none of pq, ts, ivl_ts, cv"))
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
        .map_err(|e| ferr(&item.field("registeredResidentIdentification"), format!("invalid patient identity: {e}")))?;
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
    async fn first_element(&mut self) -> Result<(NsId, String), DocumentError> {
        loop {
            match self.x.next().await? {
                Ev::Start { ns, local } => return Ok((ns, local)),
                Ev::Text(t) if t.trim().is_empty() => continue,
                Ev::Text(_) => return Err(self.x.malformed("text before the document element", self.x.reader.buffer_position())),
                Ev::End => return Err(self.x.malformed("end tag before the document element", self.x.reader.buffer_position())),
                Ev::Eof => return Err(DocumentError::permanent(&self.doc, "", "the document is empty")),
            }
        }
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
                    Ev::Text(_) => {}
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
                    Ev::Text(_) => {}
                    Ev::End | Ev::Eof => return Err(DocumentError::permanent(&self.doc, "Envelope/Body", "SOAP Body is empty")),
                }
            }
            if local == "Fault" && ns == soap {
                let fault = self.x.subtree(local, ns, 0, &|_| None).await?;
                return Err(soap_fault(&self.doc, &fault));
            }
        }
        let Some(contract) = Contract::from_response_element(&local) else {
            return Err(DocumentError::permanent(
                &self.doc,
                &sanitise(&local, 80),
                "not a response of GetCareContacts 3, GetDiagnosis 2, GetActivities 1, GetObservations 1 or GetUpdates 1",
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
        let rdepth = contract.responder_depth();
        let expected = move |d: usize| Some(if d <= rdepth { resp } else { core });
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
                    if n == core && n != resp && l == "result" && result.is_none() {
                        let node = self.x.subtree(l.clone(), n, 1, &|_| Some(core)).await?;
                        let r = riv_result(&At::root(&node, "result")).map_err(|fe| DocumentError::permanent(&self.doc, &fe.field, fe.reason))?;
                        result = Some(r);
                        continue;
                    }
                    if n != resp {
                        if l == contract.item_element() || l == "result" {
                            let node = self.x.subtree(l.clone(), n, 1, &expected).await?;
                            let label = self.item_label(contract, index, None);
                            index += 1;
                            let actual = node.wrong_ns.clone().unwrap_or_default();
                            self.refuse(
                                label,
                                ferr(&l, format!("element is in namespace {}, expected {}", sanitise(&actual, 120), contract.responder_ns())),
                            );
                        } else {
                            // Extension elements (xs:any ##other) are allowed and not ours to read.
                            self.x.skip().await?;
                        }
                        continue;
                    }
                    match (contract, l.as_str()) {
                        (Contract::GetCareContacts, "careContact") | (Contract::GetDiagnosis, "diagnosis") => {
                            let node = self.x.subtree(l.clone(), n, 1, &expected).await?;
                            let at = At::root(&node, &l);
                            let doc_id = node_doc_id(&node, contract);
                            let label = self.item_label(contract, index, doc_id.as_deref());
                            index += 1;
                            let mapped = if contract == Contract::GetCareContacts {
                                care_contact(&at, self.ctx).map(Record::CareContact)
                            } else {
                                diagnosis(&at, self.ctx).map(Record::Diagnosis)
                            };
                            match mapped {
                                Ok(r) => self.emit_record(r),
                                Err(fe) => self.refuse(label, fe),
                            }
                        }
                        (Contract::GetActivities, "activityGroup") | (Contract::GetObservations, "observationGroup") => {
                            self.group(contract, &l, index, &expected).await?;
                            index += 1;
                        }
                        (Contract::GetUpdates, "registeredResidentEngagement") => {
                            let node = self.x.subtree(l.clone(), n, 1, &expected).await?;
                            let at = At::root(&node, &l);
                            let label = self.item_label(contract, index, None);
                            index += 1;
                            let (raw, r) = resident(&at, self.ctx);
                            if let (Some(u), Some(raw)) = (updates.as_mut(), raw) {
                                u.last_resident = Some(raw);
                            }
                            match r {
                                Ok(r) => (self.sink)(Item::Resident(r)),
                                Err(fe) => self.refuse(label, fe),
                            }
                        }
                        (Contract::GetUpdates, "responseIsComplete") => {
                            let node = self.x.subtree(l.clone(), n, 1, &expected).await?;
                            let v = parse_bool(node.text.trim(), "responseIsComplete")
                                .map_err(|fe| DocumentError::permanent(&self.doc, &fe.field, fe.reason))?;
                            seen_complete = true;
                            if let Some(u) = updates.as_mut() {
                                u.complete = v;
                            }
                        }
                        (_, "result") => {
                            let node = self.x.subtree(l.clone(), n, 1, &expected).await?;
                            let r = riv_result(&At::root(&node, "result")).map_err(|fe| DocumentError::permanent(&self.doc, &fe.field, fe.reason))?;
                            result = Some(r);
                        }
                        _ => {
                            let field = format!("{}/{}", contract.response_element(), sanitise(&l, 80));
                            self.x.skip().await?;
                            self.refuse(self.doc.clone(), ferr(&field, "element not in the contract; ignored"));
                        }
                    }
                }
                Ev::Text(_) => {}
                Ev::End => break,
                Ev::Eof => return Err(self.x.eof_error()),
            }
        }
        // Whatever follows the response element: the envelope's closing tags, nothing else.
        loop {
            match self.x.next().await? {
                Ev::End if wrapper_depth > 0 => wrapper_depth -= 1,
                Ev::Text(t) if t.trim().is_empty() => {}
                Ev::Eof if wrapper_depth == 0 => break,
                Ev::Eof => return Err(self.x.eof_error()),
                Ev::Start { .. } | Ev::Text(_) | Ev::End => {
                    return Err(self.x.malformed("content after the response element", self.x.reader.buffer_position()))
                }
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
    /// performer, source system) precedes the items in the schema's sequence.
    async fn group(
        &mut self,
        contract: Contract,
        name: &str,
        index: usize,
        expected: &(dyn Fn(usize) -> Option<NsId> + Sync),
    ) -> Result<(), DocumentError> {
        let item_name = if contract == Contract::GetActivities { "activity" } else { "observation" };
        let mut head = Node::empty(name);
        let mut head_bytes = 0usize;
        let mut mapped: Option<Result<GroupHeader, FieldError>> = None;
        let mut skipped = 0usize;
        let mut item_index = 0usize;
        let group_label = self.item_label(contract, index, None);
        loop {
            match self.x.next().await? {
                Ev::Start { ns, local } => {
                    let node = self.x.subtree(local.clone(), ns, 2, expected).await?;
                    if local == item_name && node.wrong_ns.is_none() {
                        if mapped.is_none() {
                            mapped = Some(group_header(&At::root(&head, name), self.ctx));
                        }
                        let i = item_index;
                        item_index += 1;
                        match &mapped {
                            Some(Ok(g)) => {
                                let g = g.clone();
                                // The item's path is indexed so the refusal points at the right one.
                                let wrap = Node { name: name.to_string(), text: String::new(), children: vec![node], wrong_ns: None };
                                let at = At::root(&wrap, name);
                                let label = format!("{group_label} {item_name}[{i}]");
                                let label = match wrap
                                    .children
                                    .first()
                                    .and_then(|n| n.children.iter().find(|c| c.name == "id"))
                                    .and_then(|id| id.children.iter().find(|c| c.name == "extension"))
                                {
                                    Some(ext) => format!("{label} id {}", sanitise(ext.text.trim(), 80)),
                                    None => label,
                                };
                                let item = match at.req(item_name) {
                                    Ok(a) => a,
                                    Err(fe) => {
                                        self.refuse(label, fe);
                                        continue;
                                    }
                                };
                                let r = if contract == Contract::GetActivities {
                                    activity(&item, &g, self.ctx).map(Record::Activity)
                                } else {
                                    observation(&item, &g, self.ctx).map(Record::Observation)
                                };
                                match r {
                                    Ok(r) => self.emit_record(r),
                                    Err(fe) => self.refuse(label, fe),
                                }
                            }
                            _ => skipped += 1,
                        }
                    } else {
                        head_bytes += node_size(&node);
                        if head_bytes > MAX_ITEM_BYTES {
                            return Err(DocumentError::permanent(
                                &self.doc,
                                name,
                                format!("group header larger than {MAX_ITEM_BYTES} bytes: refused as hostile"),
                            ));
                        }
                        head.children.push(node);
                    }
                }
                Ev::Text(_) => {}
                Ev::End => break,
                Ev::Eof => return Err(self.x.eof_error()),
            }
        }
        match mapped {
            None => {
                // No item at all: still check the header so its faults are reported, then say so.
                let fe = match group_header(&At::root(&head, name), self.ctx) {
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
        Ok(())
    }
}

fn node_size(n: &Node) -> usize {
    n.name.len() + n.text.len() + 16 + n.children.iter().map(node_size).sum::<usize>()
}

fn node_doc_id(node: &Node, contract: Contract) -> Option<String> {
    let header = match contract {
        Contract::GetCareContacts => "careContactHeader",
        Contract::GetDiagnosis => "diagnosisHeader",
        _ => return None,
    };
    let h = node.children.iter().find(|c| c.name == header)?;
    let d = h.children.iter().find(|c| c.name == "documentId")?;
    let t = d.text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn soap_fault(doc: &str, fault: &Node) -> DocumentError {
    let get = |name: &str| fault.children.iter().find(|c| c.name == name).map(|c| c.text.trim().to_string()).unwrap_or_default();
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
