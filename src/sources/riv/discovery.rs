//! Patient lists for sites without the engagement index: a file (one personnummer per line) or a
//! SQL query returning one text column. Invalid lines become refusals naming the line or row,
//! never the value.

use crate::config::Secret;
use crate::model::{PatientId, Refusal};
use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use std::collections::HashSet;
use std::path::Path;

/// Patients found, in order and without duplicates, plus the refused entries.
#[derive(Debug, Default)]
pub struct PatientList {
    pub patients: Vec<PatientId>,
    pub refused: Vec<Refusal>,
}

impl PatientList {
    fn push(&mut self, seen: &mut HashSet<PatientId>, p: PatientId) {
        if seen.insert(p.clone()) {
            self.patients.push(p);
        }
    }
}

/// One personnummer or samordningsnummer per line; `#` starts a comment; blank lines are skipped.
pub async fn from_file(path: &Path, today: NaiveDate) -> Result<PatientList> {
    let text = tokio::fs::read_to_string(path).await.with_context(|| format!("cannot read patient list {}", path.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut list = PatientList::default();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let value = line.split('#').next().unwrap_or("").trim();
        if value.is_empty() {
            continue;
        }
        match PatientId::parse_national(value, today) {
            Ok(p) => list.push(&mut seen, p),
            Err(e) => list.refused.push(Refusal {
                document: format!("patient list {name}"),
                field: format!("line {}", i + 1),
                reason: format!("invalid patient identity: {e}"),
            }),
        }
    }
    Ok(list)
}

/// Run `query` (one text column) against a `postgres://` or `sqlite:` database.
pub async fn from_sql(url: &Secret, query: &str, today: NaiveDate) -> Result<PatientList> {
    use sqlx::Connection;
    let url = url.read_string().context("patient query database URL")?;
    // Database errors can quote values; they are redacted before they travel on.
    let redact = |e: sqlx::Error| anyhow::anyhow!("{}", crate::telemetry::redact(&e.to_string()));
    let rows: Vec<Option<String>> = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut conn = sqlx::PgConnection::connect(&url).await.map_err(redact).context("cannot connect to the patient query database")?;
        let rows = sqlx::query_scalar::<_, Option<String>>(query).fetch_all(&mut conn).await.map_err(redact).context("patient query failed")?;
        let _ = conn.close().await;
        rows
    } else if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(&url).await.map_err(redact).context("cannot open the patient query database")?;
        let rows = sqlx::query_scalar::<_, Option<String>>(query).fetch_all(&mut conn).await.map_err(redact).context("patient query failed")?;
        let _ = conn.close().await;
        rows
    } else {
        bail!("patient query URL must start with postgres:// or sqlite:");
    };
    let mut list = PatientList::default();
    let mut seen = HashSet::new();
    for (i, v) in rows.into_iter().enumerate() {
        let refuse = |reason: String| Refusal { document: "patient query".into(), field: format!("row {}", i + 1), reason };
        match v.as_deref().map(str::trim) {
            None | Some("") => list.refused.push(refuse("no value".into())),
            Some(s) => match PatientId::parse_national(s, today) {
                Ok(p) => list.push(&mut seen, p),
                Err(e) => list.refused.push(refuse(format!("invalid patient identity: {e}"))),
            },
        }
    }
    Ok(list)
}
