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
    pub patients: PatientQueue,
    pub refused: Vec<Refusal>,
}

/// [`PatientQueue`]'s mark for an index into its reserve numbers (a packed national identity
/// never sets this bit).
const RESERVE: u64 = 1 << 63;

/// The patients a pull fetches, in order. A region's list is every inhabitant and is held for
/// the whole pull, so a national identity takes eight bytes ([`PatientId::pack`]); the rare
/// reserve number is kept whole beside the list.
#[derive(Debug, Default)]
pub struct PatientQueue {
    /// A packed national identity, or `RESERVE | index into reserve`.
    ids: Vec<u64>,
    reserve: Vec<PatientId>,
}

/// A queued patient as dedup compares it: packed national identities, then reserve numbers.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum QueuedKey<'a> {
    National(u64),
    Reserve(&'a PatientId),
}

impl PatientQueue {
    pub fn push(&mut self, p: PatientId) {
        match p.pack() {
            Some(v) => self.ids.push(v),
            None => {
                self.ids.push(RESERVE | self.reserve.len() as u64);
                self.reserve.push(p);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn key(&self, v: u64) -> QueuedKey<'_> {
        if v & RESERVE == 0 {
            QueuedKey::National(v)
        } else {
            QueuedKey::Reserve(&self.reserve[(v & !RESERVE) as usize])
        }
    }

    /// Drop repeated patients, keeping each one's first place. No second copy of the list is
    /// built to find the repeats: one sorted index per patient.
    pub fn dedup_in_order(&mut self) {
        let mut order: Vec<u32> = (0..self.ids.len() as u32).collect();
        order.sort_by(|&a, &b| self.key(self.ids[a as usize]).cmp(&self.key(self.ids[b as usize])).then(a.cmp(&b)));
        let mut repeat = vec![false; self.ids.len()];
        for w in order.windows(2) {
            if self.key(self.ids[w[0] as usize]) == self.key(self.ids[w[1] as usize]) {
                repeat[w[1] as usize] = true;
            }
        }
        drop(order);
        let mut i = 0;
        self.ids.retain(|_| {
            i += 1;
            !repeat[i - 1]
        });
        // The reserve numbers still queued, renumbered in queue order.
        let mut old: Vec<Option<PatientId>> = std::mem::take(&mut self.reserve).into_iter().map(Some).collect();
        for v in self.ids.iter_mut().filter(|v| **v & RESERVE != 0) {
            let p = old[(*v & !RESERVE) as usize].take().expect("each reserve number is queued once after dedup");
            *v = RESERVE | self.reserve.len() as u64;
            self.reserve.push(p);
        }
        self.ids.shrink_to_fit();
    }
}

impl FromIterator<PatientId> for PatientQueue {
    fn from_iter<I: IntoIterator<Item = PatientId>>(iter: I) -> PatientQueue {
        let mut q = PatientQueue::default();
        for p in iter {
            q.push(p);
        }
        q
    }
}

impl IntoIterator for PatientQueue {
    type Item = PatientId;
    type IntoIter = QueuedPatients;
    fn into_iter(self) -> QueuedPatients {
        QueuedPatients { ids: self.ids.into_iter(), reserve: self.reserve.into_iter().map(Some).collect() }
    }
}

/// The queue's patients in order, each made whole as it is taken.
pub struct QueuedPatients {
    ids: std::vec::IntoIter<u64>,
    reserve: Vec<Option<PatientId>>,
}

impl Iterator for QueuedPatients {
    type Item = PatientId;
    fn next(&mut self) -> Option<PatientId> {
        let v = self.ids.next()?;
        Some(if v & RESERVE == 0 { PatientId::unpack(v) } else { self.reserve[(v & !RESERVE) as usize].take().expect("a reserve number is taken once") })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ids.size_hint()
    }
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
    list.patients.dedup_in_order();
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
    list.patients.dedup_in_order();
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
        let (r1, r2) = (PatientId::parse_reserve("19500101R123", "1.2.752.97.3.1.3").unwrap(), PatientId::parse_reserve("19610202R234", "1.2.752.97.3.1.3").unwrap());
        let mut q: PatientQueue = [a.clone(), r2.clone(), b.clone(), a.clone(), r1.clone(), c.clone(), r2.clone(), b.clone(), a.clone()].into_iter().collect();
        assert_eq!(q.len(), 9);
        q.dedup_in_order();
        assert_eq!(q.len(), 5);
        assert_eq!(q.into_iter().collect::<Vec<_>>(), vec![a, r2, b, r1, c]);
        let mut empty = PatientQueue::default();
        empty.dedup_in_order();
        assert!(empty.is_empty());
        assert_eq!(empty.into_iter().count(), 0);
    }
}
