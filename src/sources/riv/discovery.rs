//! Patient lists for sites without the engagement index: a file (one personnummer per line) or a
//! SQL query returning one text column. Invalid lines become refusals naming the line or row,
//! never the value.

use crate::config::Secret;
use crate::model::{PatientId, Refusal};
use anyhow::{Context, Result};
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
    let rows: Vec<Option<String>> = crate::sources::sql::text_rows(url, query, 1, "patient query").await?.into_iter().map(|mut r| r.remove(0)).collect();
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
