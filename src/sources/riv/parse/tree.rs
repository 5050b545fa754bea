//! Item trees (one reused arena) and typed field access, with refusals that name the field.

use super::*;

// ---------------------------------------------------------------------------------------------
// Item trees (one reused arena) and field access

pub(super) const NIL: u32 = u32::MAX;

pub(super) struct TNode {
    /// Local name, a range of `Tree::names`.
    pub(super) name: (u32, u32),
    /// Text, a range of `Tree::texts` (runs between child elements that are only whitespace
    /// are not content and left out).
    pub(super) text: (u32, u32),
    pub(super) first: u32,
    pub(super) last: u32,
    pub(super) next: u32,
    /// Index in `Tree::wrong_ns` when the element is not in the namespace its position requires.
    pub(super) wrong: u32,
}

pub(super) struct Open {
    pub(super) node: u32,
    pub(super) depth: usize,
    /// Where this element's text starts in `Tree::pending`.
    pub(super) text_from: usize,
}

/// Item trees, built into buffers that are reused from item to item.
#[derive(Default)]
pub(super) struct Tree {
    pub(super) nodes: Vec<TNode>,
    pub(super) names: String,
    pub(super) texts: String,
    /// Text of the open elements, innermost last (an element's text moves to `texts` when it ends).
    pub(super) pending: String,
    pub(super) wrong_ns: Vec<String>,
    pub(super) stack: Vec<Open>,
}

#[derive(Clone, Copy)]
pub(super) struct Mark {
    pub(super) nodes: usize,
    pub(super) names: usize,
    pub(super) texts: usize,
    pub(super) wrong: usize,
}

impl Tree {
    pub(super) fn mark(&self) -> Mark {
        Mark { nodes: self.nodes.len(), names: self.names.len(), texts: self.texts.len(), wrong: self.wrong_ns.len() }
    }

    /// Forget every node made after `m` (they must not be linked from older ones).
    pub(super) fn reset(&mut self, m: Mark) {
        self.nodes.truncate(m.nodes);
        self.names.truncate(m.names);
        self.texts.truncate(m.texts);
        self.wrong_ns.truncate(m.wrong);
        self.pending.clear();
        self.stack.clear();
    }

    pub(super) fn clear(&mut self) {
        self.reset(Mark { nodes: 0, names: 0, texts: 0, wrong: 0 });
    }

    /// Bytes held (roughly), to decide whether to keep it for the next document.
    pub(super) fn capacity(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<TNode>()
            + self.names.capacity()
            + self.texts.capacity()
            + self.pending.capacity()
            + self.stack.capacity() * std::mem::size_of::<Open>()
    }

    /// A node that is not read from the document (a group's header holder).
    pub(super) fn detached(&mut self, name: &str) -> u32 {
        self.node(name, None)
    }

    pub(super) fn node(&mut self, name: &str, wrong: Option<String>) -> u32 {
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
    pub(super) fn adopt(&mut self, parent: u32, child: u32) {
        match self.nodes[parent as usize].last {
            NIL => self.nodes[parent as usize].first = child,
            last => self.nodes[last as usize].next = child,
        }
        self.nodes[parent as usize].last = child;
    }

    /// An element starts: a child of the innermost open one, or a new root.
    pub(super) fn open(&mut self, name: &str, wrong: Option<String>, depth: usize) -> u32 {
        let n = self.node(name, wrong);
        if let Some(parent) = self.stack.last().map(|o| o.node) {
            self.adopt(parent, n);
        }
        self.stack.push(Open { node: n, depth, text_from: self.pending.len() });
        n
    }

    pub(super) fn text(&mut self, t: &str) {
        if let Some(o) = self.stack.last() {
            // Whitespace between child elements is not content.
            if self.nodes[o.node as usize].first == NIL || !t.trim().is_empty() {
                self.pending.push_str(t);
            }
        }
    }

    /// The innermost element ends; `true` when it was the root.
    pub(super) fn close(&mut self) -> bool {
        let Some(o) = self.stack.pop() else { return true };
        let from = self.texts.len() as u32;
        self.texts.push_str(&self.pending[o.text_from..]);
        self.pending.truncate(o.text_from);
        self.nodes[o.node as usize].text = (from, self.texts.len() as u32);
        self.stack.is_empty()
    }

    pub(super) fn name(&self, n: u32) -> &str {
        let (a, b) = self.nodes[n as usize].name;
        &self.names[a as usize..b as usize]
    }

    pub(super) fn raw_text(&self, n: u32) -> &str {
        let (a, b) = self.nodes[n as usize].text;
        &self.texts[a as usize..b as usize]
    }

    pub(super) fn wrong(&self, n: u32) -> Option<&str> {
        match self.nodes[n as usize].wrong {
            NIL => None,
            w => Some(self.wrong_ns[w as usize].as_str()),
        }
    }

    pub(super) fn children(&self, n: u32) -> impl Iterator<Item = u32> + '_ {
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
    pub(super) fn child(&self, n: u32, name: &str) -> Option<u32> {
        self.children(n).find(|c| self.name(*c) == name)
    }

    /// What a subtree counts towards the item size limit (the whole subtree from `n` to the
    /// end of the arena: it was the last one built).
    pub(super) fn size_from(&self, n: u32) -> usize {
        self.nodes[n as usize..].iter().map(|t| (t.name.1 - t.name.0) as usize + (t.text.1 - t.text.0) as usize + 16).sum()
    }
}

/// An item failed on one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FieldError {
    pub(super) field: String,
    pub(super) reason: String,
}

pub(super) type Fr<T> = Result<T, FieldError>;

pub(super) fn ferr(field: impl FieldName, reason: impl Into<String>) -> FieldError {
    FieldError { field: field.name(), reason: reason.into() }
}

/// A field path as a refusal names it. Paths are passed along unrendered ([`Field`]) and
/// written out only when an error needs them: a clean item builds none.
pub(super) trait FieldName: Copy {
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
pub(super) struct Field<'a> {
    pub(super) path: Path<'a>,
    pub(super) rel: &'a str,
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
pub(super) struct Path<'p> {
    pub(super) up: Option<&'p Path<'p>>,
    pub(super) seg: &'p str,
}

impl Path<'_> {
    pub(super) fn write(&self, out: &mut String) {
        if let Some(u) = self.up {
            u.write(out);
            out.push('/');
        }
        out.push_str(self.seg);
    }

    pub(super) fn render(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }
}

/// A view of one node of the tree and its field path.
#[derive(Clone, Copy)]
pub(super) struct At<'t, 'p> {
    pub(super) t: &'t Tree,
    pub(super) node: u32,
    pub(super) path: Path<'p>,
}

impl<'t, 'p> At<'t, 'p> {
    pub(super) fn root(t: &'t Tree, node: u32, path: &'p str) -> At<'t, 'p> {
        At { t, node, path: Path { up: None, seg: path } }
    }

    pub(super) fn field(&self, rel: &str) -> String {
        self.f(rel).name()
    }

    /// The field at `rel`, rendered only if an error names it.
    pub(super) fn f<'s>(&'s self, rel: &'s str) -> Field<'s> {
        Field { path: self.path, rel }
    }

    /// The element at `rel` (a `/`-separated path of local names), if present.
    pub(super) fn opt<'s>(&'s self, rel: &'s str) -> Fr<Option<At<'t, 's>>> {
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

    pub(super) fn req<'s>(&'s self, rel: &'s str) -> Fr<At<'t, 's>> {
        self.opt(rel)?.ok_or_else(|| ferr(&self.field(rel), "mandatory element is missing"))
    }

    pub(super) fn text(&self) -> &'t str {
        self.t.raw_text(self.node).trim()
    }

    /// Text of an optional element; an empty element counts as absent.
    pub(super) fn opt_text(&self, rel: &str) -> Fr<Option<&'t str>> {
        Ok(self.opt(rel)?.map(|a| a.text()).filter(|t| !t.is_empty()))
    }

    pub(super) fn req_text(&self, rel: &str) -> Fr<&'t str> {
        let a = self.req(rel)?;
        let t = a.text();
        if t.is_empty() {
            return Err(ferr(&a.path.render(), "mandatory element is empty"));
        }
        Ok(t)
    }

    /// All children named `name` in the right namespace.
    pub(super) fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = At<'t, 's>> + 's {
        let t = self.t;
        t.children(self.node)
            .filter(move |c| t.name(*c) == name && t.wrong(*c).is_none())
            .map(move |c| At { t, node: c, path: Path { up: Some(&self.path), seg: name } })
    }
}

pub(super) fn parse_bool(text: &str, field: impl FieldName) -> Fr<bool> {
    match text {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ferr(field, "not a boolean (true/false)")),
    }
}

pub(super) fn opt_bool(a: &At, rel: &str) -> Fr<Option<bool>> {
    match a.opt_text(rel)? {
        Some(t) => parse_bool(t, a.f(rel)).map(Some),
        None => Ok(None),
    }
}

pub(super) fn req_bool(a: &At, rel: &str) -> Fr<bool> {
    parse_bool(a.req_text(rel)?, a.f(rel))
}

/// `YYYYMMDDhhmmss` (TimeStampType).
pub(super) fn ts14(text: &str, field: impl FieldName) -> Fr<NaiveDateTime> {
    if text.len() != 14 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ferr(field, "not a timestamp of the form YYYYMMDDhhmmss"));
    }
    datetime14(text.as_bytes()).ok_or_else(|| ferr(field, "not a valid date and time"))
}

/// The number written by ASCII digits `d` (checked by the caller).
pub(super) fn digits(d: &[u8]) -> u32 {
    d.iter().fold(0, |n, b| n * 10 + u32::from(b - b'0'))
}

/// 14 ASCII digits `YYYYMMDDhhmmss` as a date and time (chrono's `%Y%m%d%H%M%S`, without
/// parsing the format string each time; a leap second `60` is left to chrono itself).
pub(super) fn datetime14(b: &[u8]) -> Option<NaiveDateTime> {
    let s = digits(&b[12..14]);
    if s > 59 {
        let text = std::str::from_utf8(b).ok()?;
        return NaiveDateTime::parse_from_str(text, "%Y%m%d%H%M%S").ok();
    }
    date8(b)?.and_hms_opt(digits(&b[8..10]), digits(&b[10..12]), s)
}

/// 8 ASCII digits `YYYYMMDD` as a date.
pub(super) fn date8(b: &[u8]) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(digits(&b[..4]) as i32, digits(&b[4..6]), digits(&b[6..8]))
}

/// A PartialTimeStamp, interpreted.
pub(super) enum Partial {
    /// Coarser than a day (YYYY, YYYYMM): kept as written.
    Coarse(String),
    Day(NaiveDate),
    Time(NaiveDateTime),
}

pub(super) fn partial(a: &At) -> Fr<Partial> {
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

pub(super) fn partial_time(a: &At) -> Fr<LocalTime> {
    match partial(a)? {
        Partial::Day(d) => Ok(stockholm(d.and_time(chrono::NaiveTime::MIN))),
        Partial::Time(t) => Ok(stockholm(t)),
        Partial::Coarse(_) => Err(ferr(&a.field("value"), "given only to the year or month; a day is needed")),
    }
}

/// Refuse clinical times after tomorrow (clock errors, typos, test data leaking in).
pub(super) fn not_future(t: LocalTime, today: NaiveDate, field: impl FieldName) -> Fr<LocalTime> {
    if t.date_naive() > today + chrono::Duration::days(1) {
        return Err(ferr(field, "date lies in the future"));
    }
    Ok(t)
}

/// A CV whose code is optional (logistics, description): `None` when there is no code.
pub(super) fn cv_optional(a: &At, rel: &str) -> Fr<Option<Code>> {
    let Some(cv) = a.opt(rel)? else { return Ok(None) };
    let Some(code) = cv.opt_text("code")? else { return Ok(None) };
    let system = cv.opt_text("codeSystem")?.unwrap_or("");
    Ok(Some(Code { system: system.to_string(), code: code.to_string(), display: cv.opt_text("displayName")?.map(str::to_string) }))
}

/// A CV with code and codeSystem mandatory (actions, basic).
pub(super) fn cv_required(a: &At) -> Fr<Code> {
    Ok(Code {
        system: a.req_text("codeSystem")?.to_string(),
        code: a.req_text("code")?.to_string(),
        display: a.opt_text("displayName")?.map(str::to_string),
    })
}

pub(super) fn check_known(code: &Code, field: impl FieldName, ctx: &ParseContext) -> Fr<()> {
    if !ctx.known_code_systems.iter().any(|k| k == &code.system) {
        let sys = sanitise(&code.system, 80);
        return Err(ferr(field, format!("code system {sys} is not in known_code_systems")));
    }
    Ok(())
}

pub(super) fn hsa(text: Option<&str>, field: impl FieldName) -> Fr<Option<HsaId>> {
    match text {
        None => Ok(None),
        Some(t) => HsaId::parse(t).map(Some).map_err(|e| ferr(field, format!("not a valid HSA id ({})", e.0))),
    }
}

pub(super) fn patient_id(id: &str, id_field: impl FieldName, oid: &str, oid_field: impl FieldName, ctx: &ParseContext) -> Fr<PatientId> {
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

pub(super) fn provenance(ctx: &ParseContext, source_system: &str, document_id: &str) -> Provenance {
    Provenance {
        connector: ctx.connector.clone(),
        source_system: source_system.to_string(),
        document_id: document_id.to_string(),
        fetched_at: ctx.fetched_at,
    }
}
