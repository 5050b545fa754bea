//! The region's data warehouse over SQL (`kind = "sql"`), through ODBC (odbc-api over unixODBC),
//! so Microsoft SQL Server (FreeTDS or Microsoft's driver), Oracle and PostgreSQL (psqlODBC) all
//! work with the region's own driver. Our own store keeps sqlx; this is only the region's side.
//!
//! The connector's source gives one query per record kind — `care_contacts`, `diagnoses`,
//! `activities`, `observations` — and optionally `patients` (who changed since `:since`). A pull
//! goes as the RIV-TA contracts do: the patients changed since the watermark minus the overlap
//! (the `patients` query, or the connector's patient file or SQL list), then each patient's
//! records for the window. Named parameters are bound in the order they appear (`:patient`,
//! `:from` and `:to` as `YYYY-MM-DD`, `:since` as `YYYY-MM-DD HH:MM:SS` Swedish local time), all
//! as text, so every driver converts them the same way.
//!
//! Rows are read by column name (alias them in the query); the documented columns are in
//! docs/runbook.md ("Connect the data warehouse"). Each column's SQL type is checked before the
//! first row is read: a query returning a wrong type (a number where a time belongs) stops the
//! pull with an error naming the query and the column. A row's bad value (an invalid personnummer,
//! an unknown code system, a date in the future) is refused with the query, row's document id and
//! column named — never the value — and goes to quarantine like a RIV-TA item; the patient's other
//! rows are kept. Keyword values as the journal wrote them (`keyword` + `value_text`) are read
//! with the connector's keyword table, exactly as keyword notes are.

use crate::config::{PatientDiscovery, SourceSettings};
use crate::model::{
    normalise_icd, stockholm, Activity, CareContact, Code, Diagnosis, DiagnosisKind, HsaId, LocalTime, Observation, ObservationValue, PatientId,
    Provenance, Record, Refusal, OID_ICD10SE, OID_KVA,
};
use crate::sources::riv::keywords::KeywordTable;
use crate::sources::{PatientBatch, PullRequest, PullSummary, Source, SourceItem};
use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use chrono::{NaiveDate, NaiveDateTime, Utc};
use odbc_api::{buffers::TextRowSet, Cursor, DataType, IntoParameter, ResultSetMetadata};
use std::collections::HashMap;
use std::sync::OnceLock;
use tokio::sync::mpsc;

/// Rows fetched per round trip.
const BATCH_ROWS: usize = 256;
/// Longest text a column may hold (note text is not read here; ids and codes are short).
const MAX_TEXT: usize = 4096;

/// The process's ODBC environment (the driver manager wants one).
fn environment() -> Result<&'static odbc_api::Environment> {
    static ENV: OnceLock<odbc_api::Environment> = OnceLock::new();
    if let Some(e) = ENV.get() {
        return Ok(e);
    }
    let e = odbc_api::Environment::new().map_err(|e| anyhow!("cannot set up ODBC (is unixODBC installed?): {e}"))?;
    Ok(ENV.get_or_init(|| e))
}

/// What a column must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Ids and codes: character data (integer keys too).
    Text,
    /// A date or a timestamp (or its ISO text).
    Time,
    /// A number.
    Number,
    /// A flag: bit, boolean, 0/1, or text (true/false, J/N).
    Flag,
}

impl Class {
    fn accepts(self, t: &DataType) -> bool {
        use DataType as D;
        let text = matches!(t, D::Char { .. } | D::WChar { .. } | D::Varchar { .. } | D::WVarchar { .. } | D::LongVarchar { .. } | D::WLongVarchar { .. });
        let integer = matches!(t, D::Integer | D::SmallInt | D::TinyInt | D::BigInt);
        let number = integer || matches!(t, D::Numeric { .. } | D::Decimal { .. } | D::Float { .. } | D::Real | D::Double);
        match self {
            Class::Text => text || integer || matches!(t, D::Unknown),
            Class::Time => text || matches!(t, D::Date | D::Timestamp { .. }),
            Class::Number => number,
            Class::Flag => text || integer || matches!(t, D::Bit),
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Class::Text => "text (or an integer key)",
            Class::Time => "a date or timestamp",
            Class::Number => "a number",
            Class::Flag => "a flag (bit, boolean, 0/1 or text)",
        }
    }
}

/// The columns of each query: (name, class, required).
pub fn columns(kind: &str) -> &'static [(&'static str, Class, bool)] {
    use Class::*;
    const COMMON: [(&str, Class, bool); 5] =
        [("patient_id", Text, true), ("patient_id_type", Text, false), ("document_id", Text, true), ("care_contact_id", Text, false), ("unit_hsa_id", Text, false)];
    match kind {
        "patients" => &[("patient_id", Text, true), ("patient_id_type", Text, false)],
        "care_contacts" => &[
            COMMON[0], COMMON[1], COMMON[2], COMMON[3], COMMON[4],
            ("start_time", Time, true), ("end_time", Time, false), ("contact_type", Text, false), ("status", Text, false),
            ("profession", Text, false), ("nullified", Flag, false), ("source_system", Text, false),
        ],
        "diagnoses" => &[
            COMMON[0], COMMON[1], COMMON[2], COMMON[3], COMMON[4],
            ("code", Text, true), ("code_system", Text, false), ("main", Flag, true), ("chronic", Flag, false), ("time", Time, true),
            ("profession", Text, false), ("nullified", Flag, false), ("source_system", Text, false),
        ],
        "activities" => &[
            COMMON[0], COMMON[1], COMMON[2], COMMON[3], COMMON[4],
            ("code", Text, true), ("code_system", Text, false), ("time", Time, true), ("status", Text, false),
            ("profession", Text, false), ("nullified", Flag, false), ("source_system", Text, false),
        ],
        "observations" => &[
            COMMON[0], COMMON[1], COMMON[2], COMMON[3], COMMON[4],
            ("term", Text, false), ("term_system", Text, false), ("keyword", Text, false), ("value_number", Number, false),
            ("value_unit", Text, false), ("value_code", Text, false), ("value_code_system", Text, false), ("value_text", Text, false),
            ("time", Time, true), ("profession", Text, false), ("nullified", Flag, false), ("source_system", Text, false),
        ],
        _ => &[],
    }
}

/// One row, by column name (lower case); `None` = SQL NULL or an empty string.
pub type Row = HashMap<String, Option<String>>;

/// Replace `:name` placeholders by `?`, returning the names in order. `::` (PostgreSQL casts) and
/// text inside quotes are left alone.
pub fn placeholders(query: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(query.len());
    let mut names = vec![];
    let chars: Vec<char> = query.chars().collect();
    let mut i = 0;
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
            out.push(c);
            i += 1;
            continue;
        }
        if c == ':' && i + 1 < chars.len() && chars[i + 1] == ':' {
            out.push_str("::");
            i += 2;
            continue;
        }
        if c == ':' && i + 1 < chars.len() && (chars[i + 1].is_ascii_alphabetic() || chars[i + 1] == '_') {
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            names.push(chars[i + 1..j].iter().collect::<String>().to_lowercase());
            out.push('?');
            i = j;
            continue;
        }
        out.push(c);
        i += 1;
    }
    (out, names)
}

/// Run `query` with named parameters; check the columns' types against `kind`'s list; return the
/// rows. Errors name the query and the column, never a value.
fn run_query(conn: &odbc_api::Connection<'_>, kind: &str, query: &str, params: &HashMap<&str, String>) -> Result<Vec<Row>> {
    let (sql, names) = placeholders(query);
    let mut values = vec![];
    for n in &names {
        let v = params.get(n.as_str()).ok_or_else(|| anyhow!("query {kind}: unknown parameter :{n} (known: :patient, :from, :to, :since)"))?;
        values.push(v.clone().into_parameter());
    }
    let redact = |e: odbc_api::Error| anyhow!("{}", crate::telemetry::redact(&e.to_string()));
    let Some(mut cursor) = conn.execute(&sql, &values[..], None).map_err(redact).with_context(|| format!("query {kind} failed"))? else {
        bail!("query {kind} returned no result set");
    };
    let n = cursor.num_result_cols().map_err(redact)? as u16;
    let mut names = vec![];
    for i in 1..=n {
        let name = cursor.col_name(i).map_err(redact)?.to_lowercase();
        let ty = cursor.col_data_type(i).map_err(redact)?;
        if let Some((_, class, _)) = columns(kind).iter().find(|(c, _, _)| *c == name) {
            if !class.accepts(&ty) {
                bail!("query {kind}: column {name} is {ty:?}, but must be {}", class.describe());
            }
        }
        names.push(name);
    }
    for (c, _, required) in columns(kind) {
        if *required && !names.iter().any(|n| n == c) {
            bail!("query {kind}: column {c} is missing (alias the column as {c})");
        }
    }
    let buffer = TextRowSet::for_cursor(BATCH_ROWS, &mut cursor, Some(MAX_TEXT)).map_err(redact)?;
    let mut block = cursor.bind_buffer(buffer).map_err(redact)?;
    let mut rows = vec![];
    while let Some(batch) = block.fetch().map_err(redact).with_context(|| format!("query {kind}: reading rows"))? {
        for r in 0..batch.num_rows() {
            let mut row = Row::new();
            for (c, name) in names.iter().enumerate() {
                let v = batch.at_as_str(c, r).map_err(|_| anyhow!("query {kind}: column {name} is not UTF-8 text"))?;
                row.insert(name.clone(), v.map(str::trim).filter(|s| !s.is_empty()).map(str::to_string));
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

/// What mapping needs besides the row.
pub struct MapContext<'a> {
    pub connector: &'a str,
    pub source_system: &'a str,
    pub today: NaiveDate,
    pub reserve_oids: &'a [String],
    pub known_code_systems: &'a [String],
    pub keywords: Option<&'a KeywordTable>,
    pub fetched_at: chrono::DateTime<Utc>,
}

/// A row's field that cannot be used: (column, reason).
type Fr<T> = std::result::Result<T, (&'static str, String)>;

fn get<'r>(row: &'r Row, col: &str) -> Option<&'r str> {
    row.get(col).and_then(|v| v.as_deref())
}

fn req<'r>(row: &'r Row, col: &'static str) -> Fr<&'r str> {
    get(row, col).ok_or((col, "is empty (NULL)".to_string()))
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.fff]` or `YYYY-MM-DD`, Swedish local time.
pub fn parse_time(s: &str) -> Option<LocalTime> {
    let s = s.trim();
    let t = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M"))
        .ok()
        .or_else(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(|d| d.and_time(chrono::NaiveTime::MIN)))?;
    Some(stockholm(t))
}

fn time(row: &Row, col: &'static str, today: NaiveDate) -> Fr<Option<LocalTime>> {
    let Some(v) = get(row, col) else { return Ok(None) };
    let t = parse_time(v).ok_or((col, "is not a date or timestamp (YYYY-MM-DD[ HH:MM:SS])".to_string()))?;
    if t.date_naive() > today + chrono::Duration::days(1) {
        return Err((col, "date lies in the future".into()));
    }
    Ok(Some(t))
}

fn flag(row: &Row, col: &'static str) -> Fr<Option<bool>> {
    let Some(v) = get(row, col) else { return Ok(None) };
    match v.to_lowercase().as_str() {
        "1" | "true" | "t" | "j" | "ja" | "y" | "yes" => Ok(Some(true)),
        "0" | "false" | "f" | "n" | "nej" | "no" => Ok(Some(false)),
        _ => Err((col, "is not a flag (1/0, true/false, J/N)".into())),
    }
}

fn patient(row: &Row, ctx: &MapContext) -> Fr<PatientId> {
    let id = req(row, "patient_id")?;
    let r = match get(row, "patient_id_type") {
        Some(oid) => PatientId::parse_with_oid(id, oid, ctx.reserve_oids, ctx.today),
        None => PatientId::parse_national(id, ctx.today),
    };
    r.map_err(|e| ("patient_id", format!("invalid patient identity: {e}")))
}

fn unit(row: &Row) -> Fr<Option<HsaId>> {
    match get(row, "unit_hsa_id") {
        None => Ok(None),
        Some(u) => HsaId::parse(u).map(Some).map_err(|e| ("unit_hsa_id", format!("not a valid HSA id ({})", e.0))),
    }
}

fn code_in(row: &Row, code_col: &'static str, system_col: &'static str, default_system: &str, ctx: &MapContext) -> Fr<Code> {
    let code = req(row, code_col)?;
    let system = get(row, system_col).unwrap_or(default_system);
    if !ctx.known_code_systems.iter().any(|k| k == system) {
        return Err((system_col, format!("code system {} is not in known_code_systems", crate::sources::riv::parse::sanitise(system, 80))));
    }
    Ok(Code::new(system, code))
}

/// A local code (status, contact type, profession) in the source's first non-standard system.
fn local_code(row: &Row, col: &'static str, ctx: &MapContext) -> Option<Code> {
    let system = ctx.known_code_systems.iter().find(|s| ![OID_ICD10SE, OID_KVA, crate::model::OID_SNOMED_SE].contains(&s.as_str()));
    get(row, col).map(|c| Code::new(system.map(String::as_str).unwrap_or(""), c))
}

/// Map one row of `kind` to a canonical record.
pub fn map_row(kind: &str, row: &Row, ctx: &MapContext) -> Fr<Record> {
    let patient = patient(row, ctx)?;
    let document_id = req(row, "document_id")?.to_string();
    let provenance = Provenance {
        connector: ctx.connector.to_string(),
        source_system: get(row, "source_system").unwrap_or(ctx.source_system).to_string(),
        document_id: document_id.clone(),
        fetched_at: ctx.fetched_at,
    };
    let unit = unit(row)?;
    let care_contact_id = get(row, "care_contact_id").map(str::to_string);
    let nullified = flag(row, "nullified")?.unwrap_or(false);
    let profession = local_code(row, "profession", ctx);
    Ok(match kind {
        "care_contacts" => Record::CareContact(CareContact {
            provenance,
            patient,
            care_contact_id: Some(care_contact_id.unwrap_or(document_id)),
            unit,
            start: Some(time(row, "start_time", ctx.today)?.ok_or(("start_time", "is empty (NULL)".to_string()))?),
            end: time(row, "end_time", ctx.today)?,
            contact_type: get(row, "contact_type").map(|c| Code::new("", c)),
            status: local_code(row, "status", ctx),
            profession,
            nullified,
        }),
        "diagnoses" => {
            let mut code = code_in(row, "code", "code_system", OID_ICD10SE, ctx)?;
            if code.system == OID_ICD10SE {
                code.code = normalise_icd(&code.code);
                if code.code.is_empty() || !code.code.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(("code", "not an ICD-10-SE code".into()));
                }
            }
            let main = flag(row, "main")?.ok_or(("main", "is empty (NULL)".to_string()))?;
            Record::Diagnosis(Diagnosis {
                provenance,
                patient,
                care_contact_id,
                unit,
                code,
                kind: if main { DiagnosisKind::Main } else { DiagnosisKind::Secondary },
                chronic: flag(row, "chronic")?,
                time: time(row, "time", ctx.today)?,
                profession,
                nullified,
            })
        }
        "activities" => Record::Activity(Activity {
            provenance,
            patient,
            care_contact_id,
            unit,
            code: code_in(row, "code", "code_system", OID_KVA, ctx)?,
            time: time(row, "time", ctx.today)?,
            status: local_code(row, "status", ctx),
            profession,
            nullified,
        }),
        "observations" => {
            let (term, value) = observation_value(row, ctx)?;
            Record::Observation(Observation { provenance, patient, care_contact_id, unit, term, value: Some(value), time: time(row, "time", ctx.today)?, profession, nullified })
        }
        other => return Err(("", format!("unknown query kind {other}"))),
    })
}

/// An observation's term and value: a coded or numeric value as stored, or a keyword's text read
/// with the keyword table.
fn observation_value(row: &Row, ctx: &MapContext) -> Fr<(Code, ObservationValue)> {
    if let (Some(heading), Some(text)) = (get(row, "keyword"), get(row, "value_text")) {
        let table = ctx.keywords.ok_or(("keyword", "keyword values need the connector's keyword table (keywords.toml)".to_string()))?;
        let k = table.lookup(heading).ok_or(("keyword", "not a keyword of the keyword table".to_string()))?;
        let x = table.extract(&format!("{}: {text}", k.headings[0]));
        if let Some(r) = x.refused.first() {
            return Err(("value_text", format!("keyword {} ({}): {}", r.heading, r.term, r.reason)));
        }
        let e = x.values.into_iter().next().ok_or(("value_text", "no value".to_string()))?;
        return Ok((e.term, e.value));
    }
    let term = code_in(row, "term", "term_system", "", ctx)?;
    let value = match (get(row, "value_number"), get(row, "value_code")) {
        (Some(n), None) => {
            let v: f64 = n.parse().ok().filter(|f: &f64| f.is_finite()).ok_or(("value_number", "not a number".to_string()))?;
            ObservationValue::Quantity { value: v, unit: get(row, "value_unit").map(str::to_string) }
        }
        (None, Some(c)) => ObservationValue::Code { code: Code::new(get(row, "value_code_system").unwrap_or(&term.system), c) },
        (Some(_), Some(_)) => return Err(("value_code", "both value_number and value_code are given".into())),
        (None, None) => return Err(("value_number", "no value (value_number, value_code or keyword + value_text)".into())),
    };
    Ok((term, value))
}

pub struct WarehouseSource {
    settings: SourceSettings,
}

impl WarehouseSource {
    pub fn new(settings: &SourceSettings) -> Result<WarehouseSource> {
        if settings.connection.is_none() {
            bail!("a sql source needs `connection` (an ODBC connection string, as a secret)");
        }
        Ok(WarehouseSource { settings: settings.clone() })
    }
}

/// `YYYY-MM-DD HH:MM:SS` Swedish local time.
fn local_text(t: chrono::DateTime<Utc>) -> String {
    t.with_timezone(&chrono_tz::Europe::Stockholm).format("%Y-%m-%d %H:%M:%S").to_string()
}

#[async_trait]
impl Source for WarehouseSource {
    async fn pull(&self, req: &PullRequest, out: mpsc::Sender<SourceItem>) -> Result<PullSummary> {
        let mut summary = PullSummary { started_at: Some(Utc::now()), complete: true, ..Default::default() };
        let keywords = KeywordTable::for_connector(&req.connector_dir)?;
        // Patients from a file or the region's SQL list are read here; the `patients` query runs
        // on the warehouse connection below.
        let listed = match &req.discovery {
            PatientDiscovery::File { path } => {
                let full = if path.is_absolute() { path.clone() } else { req.connector_dir.join(path) };
                Some(crate::sources::riv::discovery::from_file(&full, req.today).await?)
            }
            PatientDiscovery::Sql { url, query } => Some(crate::sources::riv::discovery::from_sql(url, query, req.today).await?),
            _ => None,
        };
        if listed.is_none() && self.settings.queries.patients.is_none() {
            bail!("a sql source needs queries.patients, or the connector's patients as a file or a SQL list");
        }
        let conn_str = self.settings.connection.as_ref().context("connection")?.read_string().context("sql source: connection")?;
        let settings = self.settings.clone();
        let req = req.clone();
        let summary = tokio::task::spawn_blocking(move || -> Result<PullSummary> {
            let env = environment()?;
            let conn = env
                .connect_with_connection_string(&conn_str, odbc_api::ConnectionOptions::default())
                .map_err(|e| anyhow!("{}", crate::telemetry::redact(&e.to_string())))
                .context("sql source: cannot connect to the data warehouse")?;
            let since = req.changed_since.unwrap_or_else(|| stockholm(req.window_from.and_time(chrono::NaiveTime::MIN)).with_timezone(&Utc));
            let mut params: HashMap<&str, String> = HashMap::new();
            params.insert("since", local_text(since));
            params.insert("from", req.window_from.format("%Y-%m-%d").to_string());
            params.insert("to", req.window_to.format("%Y-%m-%d").to_string());
            let send = |item: SourceItem| out.blocking_send(item).map_err(|_| anyhow!("the pipeline stopped receiving source items"));
            let source_system = if settings.source_system.is_empty() { "warehouse".to_string() } else { settings.source_system.clone() };
            let ctx = MapContext {
                connector: &req.connector,
                source_system: &source_system,
                today: req.today,
                reserve_oids: &settings.reserve_oids,
                known_code_systems: &settings.known_code_systems,
                keywords: keywords.as_deref(),
                fetched_at: Utc::now(),
            };
            let patients: Vec<PatientId> = match listed {
                Some(l) => {
                    for r in l.refused {
                        summary.refused += 1;
                        send(SourceItem::Refused { refusal: r, patient: None, raw: None, transient: false })?;
                    }
                    l.patients.into_iter().collect()
                }
                None => {
                    let q = settings.queries.patients.as_deref().unwrap_or_default();
                    let mut seen = std::collections::HashSet::new();
                    let mut ps = vec![];
                    for (i, row) in run_query(&conn, "patients", q, &params)?.iter().enumerate() {
                        match patient(row, &ctx) {
                            Ok(p) => {
                                if seen.insert(p.clone()) {
                                    ps.push(p);
                                }
                            }
                            Err((col, reason)) => {
                                summary.refused += 1;
                                let refusal = Refusal { document: format!("sql patients row {i}"), field: col.into(), reason };
                                send(SourceItem::Refused { refusal, patient: None, raw: None, transient: false })?;
                            }
                        }
                    }
                    ps
                }
            };
            let kinds = [
                ("care_contacts", &settings.queries.care_contacts),
                ("diagnoses", &settings.queries.diagnoses),
                ("activities", &settings.queries.activities),
                ("observations", &settings.queries.observations),
            ];
            for p in patients {
                params.insert("patient", p.raw().to_string());
                let mut batch = PatientBatch { patient: p.clone(), records: vec![], refusals: vec![], log_ids: vec![] };
                for (kind, query) in kinds {
                    let Some(query) = query else { continue };
                    let rows = run_query(&conn, kind, query, &params)?;
                    summary.documents += rows.len();
                    for (i, row) in rows.iter().enumerate() {
                        match map_row(kind, row, &ctx) {
                            Ok(r) if r.patient() != &p => batch.refusals.push(Refusal {
                                document: format!("sql {kind} row {i}"),
                                field: "patient_id".into(),
                                reason: "the patient differs from the patient asked for".into(),
                            }),
                            Ok(r) => {
                                if req.units.is_empty() || r.unit().is_none_or(|u| req.units.contains(u)) {
                                    batch.records.push(r);
                                }
                            }
                            Err((col, reason)) => {
                                let doc = get(row, "document_id").map(|d| format!(" document_id {}", crate::sources::riv::parse::sanitise(d, 80))).unwrap_or_default();
                                batch.refusals.push(Refusal { document: format!("sql {kind} row {i}{doc}"), field: col.into(), reason });
                            }
                        }
                    }
                }
                crate::sources::riv::join_to_contacts(&mut batch.records);
                summary.patients += 1;
                summary.refused += batch.refusals.len();
                send(SourceItem::Patient(batch))?;
            }
            Ok(summary)
        })
        .await
        .map_err(|e| anyhow!("the warehouse reader failed: {e}"))??;
        Ok(summary)
    }

    async fn commit(&self, _summary: &PullSummary) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_question_marks_in_order() {
        let (sql, names) = placeholders("SELECT a::text, ':x' FROM t WHERE p = :patient AND d BETWEEN :from AND :to OR p = :patient");
        assert_eq!(sql, "SELECT a::text, ':x' FROM t WHERE p = ? AND d BETWEEN ? AND ? OR p = ?");
        assert_eq!(names, ["patient", "from", "to", "patient"]);
    }
}
