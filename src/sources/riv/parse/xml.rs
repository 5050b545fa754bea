//! The XML layer of the RIV-TA parser: the input buffer, namespace scopes, the lexer over
//! quick-xml's slice reader and the event stream with its limits (token, item, depth).

use super::*;

// ---------------------------------------------------------------------------------------------
// Input: the bytes read and not yet parsed. They are tokenised synchronously with quick-xml's
// slice reader (events borrow the buffer, no copy per event); the source is awaited only when
// a token runs past the end of what has arrived. A small response is usually parsed in one go.

/// Most bytes taken from the source per read; with `READ_CHUNK` the buffer stays small however
/// large the document (memory flat), and a whole per-patient response fits in one read.
pub(super) const READ_CHUNK: usize = 256 * 1024;
/// Bytes `fill` takes when more is ready at once than the unfinished token needs.
pub(super) const GREEDY_BYTES: usize = 64 * 1024;
pub(super) const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

pub(super) struct Input<R> {
    pub(super) inner: R,
    pub(super) buf: Vec<u8>,
    /// Parse position in `buf` (everything before it has been handed out).
    pub(super) pos: usize,
    /// Stream offset of `buf[0]`.
    pub(super) base: u64,
    /// Bytes taken from `inner` (never more than `max`).
    pub(super) taken: u64,
    pub(super) max: u64,
    pub(super) eof: bool,
    /// Newlines before `base` and the offset of the last one (for line numbers in errors).
    pub(super) newlines: u64,
    pub(super) last_newline: Option<u64>,
    /// A read failure held back until the bytes before it have been parsed.
    pub(super) failed: Option<DocumentError>,
    /// `buf[..utf8_upto]` has been checked to be UTF-8 (the rest is at most one character cut
    /// by the end of a read).
    pub(super) utf8_upto: usize,
    /// No invalid UTF-8 met so far. While it holds, every complete token is UTF-8 (tokens start
    /// and end at ASCII delimiters), so names and text need no check of their own.
    pub(super) utf8: bool,
}

impl<R: AsyncBufRead + Unpin> Input<R> {
    pub(super) fn new(inner: R, max: u64, mut buf: Vec<u8>) -> Input<R> {
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
    pub(super) fn check_utf8(&mut self) {
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
    pub(super) fn line_col(&self, pos: u64) -> (u64, u64) {
        let upto = (pos.saturating_sub(self.base) as usize).min(self.buf.len());
        let head = &self.buf[..upto];
        let line = 1 + self.newlines + head.iter().filter(|b| **b == b'\n').count() as u64;
        let last = head.iter().rposition(|b| *b == b'\n').map(|i| self.base + i as u64).or(self.last_newline);
        let line_start = last.map(|o| o + 1).unwrap_or(0);
        (line, pos.saturating_sub(line_start) + 1)
    }

    /// Read more of the document: at least as much again as the unfinished token at `pos`, so
    /// re-scanning a long token stays linear. Sets `eof` at the end of the source.
    pub(super) async fn fill(&mut self, doc: &str) -> Result<(), DocumentError> {
        let r = self.fill_raw(doc).await;
        self.check_utf8();
        r
    }

    pub(super) async fn fill_raw(&mut self, doc: &str) -> Result<(), DocumentError> {
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

pub(super) type NsId = u16;
/// Id of "no namespace".
pub(super) const NO_NS: NsId = 0;
/// A binding whose namespace has not been looked up in the table yet.
pub(super) const NS_UNSET: NsId = NsId::MAX;
pub(super) const XML_NS: &[u8] = b"http://www.w3.org/XML/1998/namespace";
pub(super) const XMLNS_NS: &[u8] = b"http://www.w3.org/2000/xmlns/";

/// One `xmlns` / `xmlns:p` declaration in scope.
pub(super) struct Binding {
    /// Depth of the declaring element (1 = the document element).
    pub(super) level: usize,
    /// Prefix in `Scope::bound` (`None`: the default namespace).
    pub(super) prefix: Option<(usize, usize)>,
    pub(super) uri: (usize, usize),
    pub(super) id: NsId,
}

/// Open elements and namespace scopes: quick-xml's namespace resolution and end-name check,
/// kept here because the slice reader starts afresh after every refill.
pub(super) struct Scope {
    pub(super) open: Vec<u8>,
    pub(super) open_starts: Vec<usize>,
    pub(super) bindings: Vec<Binding>,
    pub(super) bound: Vec<u8>,
    /// Namespace URIs met so far; an id is an index (0 = no namespace).
    pub(super) namespaces: Vec<String>,
}

pub(super) enum Resolved<'a> {
    Ns(NsId),
    Unknown(&'a [u8]),
    TooMany,
}

impl Scope {
    pub(super) fn new() -> Scope {
        Scope { namespaces: vec![String::new()], ..Scope::empty() }
    }

    /// A scope that allocates nothing (a placeholder; `reset` makes it usable).
    pub(super) fn empty() -> Scope {
        Scope { open: Vec::new(), open_starts: Vec::new(), bindings: Vec::new(), bound: Vec::new(), namespaces: Vec::new() }
    }

    /// Back to the state of `new`, keeping the allocations.
    pub(super) fn reset(&mut self) {
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
    pub(super) fn capacity(&self) -> usize {
        self.open.capacity() + self.open_starts.capacity() * 8 + self.bindings.capacity() * 48 + self.bound.capacity() + self.namespaces.iter().map(String::capacity).sum::<usize>()
    }

    pub(super) fn intern(namespaces: &mut Vec<String>, ns: &[u8]) -> Option<NsId> {
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
    pub(super) fn open(&mut self, s: &BytesStart) -> Result<(), quick_xml::Error> {
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
    pub(super) fn resolve<'n>(&mut self, name: QName<'n>) -> Resolved<'n> {
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
    pub(super) fn close(&mut self, name: Option<&[u8]>) -> Result<(), quick_xml::Error> {
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
pub(super) enum Tok<'b> {
    /// `local` is the local name as text (lossy when it is not UTF-8).
    Start { ns: NsId, ns_name: &'b str, local: Cow<'b, str> },
    End,
    Text(Cow<'b, str>),
    Eof,
}

pub(super) struct Lexer<R> {
    pub(super) input: Input<R>,
    pub(super) scope: Scope,
    /// The end half of an empty-element tag whose start half was the last token handed out.
    pub(super) pending_end: bool,
    pub(super) doc: String,
}

impl<R: AsyncBufRead + Unpin> Lexer<R> {
    pub(super) fn malformed(&self, what: impl std::fmt::Display, pos: u64) -> DocumentError {
        malformed(&self.input, &self.doc, what, pos)
    }

    /// Stream offset just after the last token handed out.
    pub(super) fn position(&self) -> u64 {
        self.input.base + self.input.pos as u64
    }

    /// Hand tokens to `f` until it returns `true` (then `Ok(true)`) or the bytes read so far
    /// end inside a token (then `Ok(false)`: `fill` and call again; nothing is lost).
    pub(super) fn pump<F>(&mut self, mut f: F) -> Result<bool, DocumentError>
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
pub(super) fn token_str(b: &[u8], checked: bool) -> Result<&str, std::str::Utf8Error> {
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
pub(super) fn name_text(b: &[u8], checked: bool) -> Cow<'_, str> {
    match token_str(b, checked) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

/// A text run, entities resolved: quick-xml's `unescape`, without checking UTF-8 a second time.
pub(super) fn text_of(t: quick_xml::events::BytesText<'_>, checked: bool) -> Result<Cow<'_, str>, quick_xml::Error> {
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

pub(super) fn malformed<R: AsyncBufRead + Unpin>(input: &Input<R>, doc: &str, what: impl std::fmt::Display, pos: u64) -> DocumentError {
    let (line, col) = input.line_col(pos);
    DocumentError::permanent(doc, "", format!("malformed XML at line {line}, column {col}: {}", sanitise(&what.to_string(), 200)))
}

pub(super) enum StartError {
    Xml(quick_xml::Error),
    Unknown(String),
    TooMany,
}

impl StartError {
    pub(super) fn into_error<R: AsyncBufRead + Unpin>(self, input: &Input<R>, doc: &str, at: u64) -> DocumentError {
        match self {
            StartError::Xml(e) => malformed(input, doc, e, at),
            StartError::Unknown(p) => malformed(input, doc, format!("namespace prefix `{p}` is not declared"), at),
            StartError::TooMany => DocumentError::permanent(doc, "", "more than 256 namespaces: refused as hostile"),
        }
    }
}

/// Open the scope of a start tag and resolve its namespace.
pub(super) fn open_start(scope: &mut Scope, s: &BytesStart) -> Result<NsId, StartError> {
    scope.open(s).map_err(StartError::Xml)?;
    match scope.resolve(s.name()) {
        Resolved::Ns(id) => Ok(id),
        Resolved::Unknown(p) => Err(StartError::Unknown(String::from_utf8_lossy(p).into_owned())),
        Resolved::TooMany => Err(StartError::TooMany),
    }
}

// ---------------------------------------------------------------------------------------------
// Event layer

pub(super) enum Ev {
    Start { ns: NsId, local: Cow<'static, str> },
    End,
    /// A text run; only whether it is blank matters at this level.
    Text { blank: bool },
    Eof,
}

/// Element names the driver looks at, so a start tag at that level costs no allocation.
pub(super) fn element_name(local: &[u8]) -> Cow<'static, str> {
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
pub(super) enum Expect {
    Any,
    All(NsId),
    /// The responder namespace down to `depth`, the core namespace below.
    Split { resp: NsId, core: NsId, depth: usize },
}

impl Expect {
    pub(super) fn at(self, d: usize) -> Option<NsId> {
        match self {
            Expect::Any => None,
            Expect::All(n) => Some(n),
            Expect::Split { resp, core, depth } => Some(if d <= depth { resp } else { core }),
        }
    }
}

pub(super) struct XmlStream<R> {
    pub(super) lex: Lexer<R>,
    pub(super) tree: Tree,
    pub(super) doc: String,
}

/// Most bytes of buffers a finished parse leaves to the next one on its thread.
pub(super) const SPARE_MAX_BYTES: usize = 4 * 1024 * 1024;

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
    pub(super) fn new(inner: R, doc: &str, max: u64) -> XmlStream<R> {
        let (buf, mut tree, mut scope) = SPARE.take().unwrap_or_else(|| (Vec::new(), Tree::default(), Scope::new()));
        tree.clear();
        scope.reset();
        XmlStream { lex: Lexer { input: Input::new(inner, max, buf), scope, pending_end: false, doc: doc.to_string() }, tree, doc: doc.to_string() }
    }

    pub(super) fn id_of(&mut self, ns: &str) -> NsId {
        Scope::intern(&mut self.lex.scope.namespaces, ns.as_bytes()).unwrap_or(NsId::MAX)
    }

    pub(super) fn ns_name(&self, id: NsId) -> &str {
        self.lex.scope.namespaces.get(id as usize).map(|s| s.as_str()).unwrap_or("")
    }

    pub(super) fn malformed(&self, what: impl std::fmt::Display, pos: u64) -> DocumentError {
        self.lex.malformed(what, pos)
    }

    pub(super) fn position(&self) -> u64 {
        self.lex.position()
    }

    pub(super) async fn fill(&mut self) -> Result<(), DocumentError> {
        let Lexer { input, doc, .. } = &mut self.lex;
        input.fill(doc).await
    }

    pub(super) async fn next(&mut self) -> Result<Ev, DocumentError> {
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
    pub(super) async fn skip(&mut self) -> Result<(), DocumentError> {
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

    pub(super) fn eof_error(&self) -> DocumentError {
        self.malformed("the document ends inside an element", self.position())
    }

    /// Read the rest of an element (its start was just read) into the tree, as a new root.
    /// `expected` gives the namespace the element at each depth must be in.
    pub(super) async fn subtree(&mut self, local: &str, ns: NsId, depth: usize, expected: Expect) -> Result<u32, DocumentError> {
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
