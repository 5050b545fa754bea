//! Patient lists for sites without the engagement index: a file (one personnummer per line) or a
//! SQL query returning one text column. Invalid lines become refusals naming the line or row,
//! never the value.

use crate::config::Secret;
use crate::model::{PatientId, Refusal};
use anyhow::{Context, Result};
use chrono::NaiveDate;
use std::path::Path;

/// Patients found, in order and without duplicates, plus the refused entries.
#[derive(Debug, Default)]
pub struct PatientList {
    pub patients: Vec<PatientId>,
    pub refused: Vec<Refusal>,
}

/// Drop repeated patients, keeping each one's first place. A region's list is every inhabitant,
/// so no second copy of it is built to find the repeats: one sorted index per patient.
pub fn dedup_in_order(patients: &mut Vec<PatientId>) {
    let mut order: Vec<u32> = (0..patients.len() as u32).collect();
    order.sort_by(|&a, &b| patients[a as usize].cmp(&patients[b as usize]).then(a.cmp(&b)));
    let mut repeat = vec![false; patients.len()];
    for w in order.windows(2) {
        if patients[w[0] as usize] == patients[w[1] as usize] {
            repeat[w[1] as usize] = true;
        }
    }
    drop(order);
    let mut i = 0;
    patients.retain(|_| {
        i += 1;
        !repeat[i - 1]
    });
    patients.shrink_to_fit();
}

/// One personnummer or samordningsnummer per line; `#` starts a comment; blank lines are skipped.
/// Read line by line: only the parsed identities are held.
pub async fn from_file(path: &Path, today: NaiveDate) -> Result<PatientList> {
    use tokio::io::AsyncBufReadExt;
    let cannot = || format!("cannot read patient list {}", path.display());
    let file = tokio::fs::File::open(path).await.with_context(cannot)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut list = PatientList::default();
    let mut lines = tokio::io::BufReader::new(file).lines();
    let mut i = 0;
    while let Some(line) = lines.next_line().await.with_context(cannot)? {
        i += 1;
        let value = line.split('#').next().unwrap_or("").trim();
        if value.is_empty() {
            continue;
        }
        match PatientId::parse_national(value, today) {
            Ok(p) => list.patients.push(p),
            Err(e) => list.refused.push(Refusal { document: format!("patient list {name}"), field: format!("line {i}"), reason: format!("invalid patient identity: {e}") }),
        }
    }
    dedup_in_order(&mut list.patients);
    Ok(list)
}

/// Run `query` (one text column) against a `postgres://` or `sqlite:` database.
pub async fn from_sql(url: &Secret, query: &str, today: NaiveDate) -> Result<PatientList> {
    let rows: Vec<Option<String>> = crate::sources::sql::text_rows(url, query, 1, "patient query").await?.into_iter().map(|mut r| r.remove(0)).collect();
    let mut list = PatientList::default();
    for (i, v) in rows.into_iter().enumerate() {
        let refuse = |reason: String| Refusal { document: "patient query".into(), field: format!("row {}", i + 1), reason };
        match v.as_deref().map(str::trim) {
            None | Some("") => list.refused.push(refuse("no value".into())),
            Some(s) => match PatientId::parse_national(s, today) {
                Ok(p) => list.patients.push(p),
                Err(e) => list.refused.push(refuse(format!("invalid patient identity: {e}"))),
            },
        }
    }
    dedup_in_order(&mut list.patients);
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A personnummer with its Luhn check digit.
    fn pnr(date: &str, serial: &str) -> PatientId {
        let nine: Vec<u8> = format!("{}{serial}", &date[2..]).bytes().map(|b| b - b'0').collect();
        let check = crate::model::luhn_check_digit(&nine);
        PatientId::parse_national(&format!("{date}{serial}{check}"), NaiveDate::from_ymd_opt(2026, 12, 5).unwrap()).unwrap()
    }

    #[test]
    fn repeats_go_and_each_patient_keeps_its_first_place() {
        let (a, b, c) = (pnr("19720303", "345"), pnr("19500101", "123"), pnr("19610202", "234"));
        let mut list = vec![a.clone(), b.clone(), a.clone(), c.clone(), b.clone(), a.clone()];
        dedup_in_order(&mut list);
        assert_eq!(list, vec![a, b, c]);
        let mut empty: Vec<PatientId> = vec![];
        dedup_in_order(&mut empty);
        assert!(empty.is_empty());
    }
}
