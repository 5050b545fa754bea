//! Where each encrypted column's ciphertext is bound: the associated data ([`Aad`]) of every
//! payload column, and `keys rotate`, which rewrites stored payloads under the current key.
//!
//! The associated data is the column (`table.column`) and the values that identify the row, so
//! a ciphertext moved to another row (another patient's record, another cell's patient list)
//! fails authentication. The same table drives the writers below and the rotation, so the two
//! can never disagree about what a row's identity is.

use super::sql::{Tx, Val};
use super::Store;
use crate::crypto::Aad;
use anyhow::{Context, Result};

/// kv key set once every stored payload is bound to its row (then `v1` ciphertexts are refused).
pub const PAYLOADS_BOUND: &str = "crypto.payloads_bound";

/// An encrypted column: its table, the primary key (to page and update by) and the columns whose
/// values form the associated data.
pub struct SealedColumn {
    pub table: &'static str,
    pub column: &'static str,
    /// Primary key columns, `true` for integer columns.
    pub key: &'static [(&'static str, bool)],
    /// Identity columns bound as associated data (integers as decimal text).
    pub identity: &'static [&'static str],
}

/// Every encrypted column of the store. A new payload column must be added here (and written
/// with [`aad`] over the same identity), or `keys rotate` would leave it under the old key.
pub const SEALED: &[SealedColumn] = &[
    SealedColumn { table: "documents", column: "payload", key: &[("connector", false), ("doc_key", false)], identity: &["connector", "doc_key"] },
    SealedColumn { table: "records", column: "payload", key: &[("id", true)], identity: &["idem_key", "version"] },
    SealedColumn { table: "records", column: "lookup", key: &[("id", true)], identity: &["idem_key", "version"] },
    SealedColumn { table: "registrations", column: "delivered_payload", key: &[("idem_key", false)], identity: &["idem_key"] },
    SealedColumn { table: "quarantine", column: "raw", key: &[("id", true)], identity: &["connector", "document", "field"] },
    SealedColumn { table: "worklist", column: "patient_ref", key: &[("idem_key", false)], identity: &["idem_key"] },
    SealedColumn {
        table: "pvk_results",
        column: "patient_list",
        key: &[("connector", false), ("rule_year", true), ("unit", false), ("year", true), ("month", true), ("indicator", false)],
        identity: &["connector", "rule_year", "unit", "year", "month", "indicator"],
    },
];

/// The associated data of `table.column` in the row with these identity values.
pub fn aad(table: &str, column: &str, identity: &[&str]) -> Aad {
    Aad::new(&format!("{table}.{column}"), identity)
}

pub fn document(connector: &str, doc_key: &str) -> Aad {
    aad("documents", "payload", &[connector, doc_key])
}
pub fn record_payload(idem_key: &str, version: i64) -> Aad {
    aad("records", "payload", &[idem_key, &version.to_string()])
}
pub fn record_lookup(idem_key: &str, version: i64) -> Aad {
    aad("records", "lookup", &[idem_key, &version.to_string()])
}
pub fn delivered_payload(idem_key: &str) -> Aad {
    aad("registrations", "delivered_payload", &[idem_key])
}
pub fn quarantine_raw(connector: &str, document: &str, field: &str) -> Aad {
    aad("quarantine", "raw", &[connector, document, field])
}
pub fn worklist_patient(idem_key: &str) -> Aad {
    aad("worklist", "patient_ref", &[idem_key])
}
pub fn pvk_patient_list(connector: &str, rule_year: i32, unit: &str, year: i32, month: u32, indicator: &str) -> Aad {
    aad("pvk_results", "patient_list", &[connector, &rule_year.to_string(), unit, &year.to_string(), &month.to_string(), indicator])
}

/// What `keys rotate` did, per column.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RotateReport {
    /// (table.column, rewritten, already current)
    pub columns: Vec<(String, u64, u64)>,
    pub rewritten: u64,
    pub key_id: String,
}

const ROTATE_BATCH: i64 = 500;

impl Store {
    /// Rewrite every stored payload that is not yet `v2` under the current (first) key: old keys'
    /// ciphertexts and unbound `v1` ones. Resumable (what is current is skipped) and safe beside
    /// a running daemon (a row changed meanwhile is left as its writer wrote it). When it
    /// completes, every payload is bound to its row and `v1` is refused from then on.
    pub async fn rotate_payload_keys(&self, actor: &str) -> Result<RotateReport> {
        let prefix = self.cipher.current_prefix().into_bytes();
        let mut report = RotateReport { key_id: self.cipher.current_key_id().to_string(), ..Default::default() };
        for col in SEALED {
            let (done, current) = self.rotate_column(col, &prefix).await.with_context(|| format!("rotating {}.{}", col.table, col.column))?;
            report.rewritten += done;
            report.columns.push((format!("{}.{}", col.table, col.column), done, current));
        }
        let mut tx = self.begin().await?;
        tx.exec(
            "INSERT INTO kv (key, value, updated_us) VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_us = excluded.updated_us",
            crate::args![PAYLOADS_BOUND, "1", super::now_us()],
        )
        .await?;
        super::audit_chain::append(
            &mut *tx,
            self.audit_mac.as_ref(),
            &[crate::audit::NewAuditEvent::by(
                actor,
                crate::audit::kind::KEYS_ROTATED,
                &crate::audit::correlation_id(),
                "security.encryption_keys",
                serde_json::json!({"key_id": report.key_id, "rewritten": report.rewritten, "columns": report.columns}),
            )],
        )
        .await?;
        tx.commit().await?;
        Ok(report)
    }

    async fn rotate_column(&self, col: &SealedColumn, prefix: &[u8]) -> Result<(u64, u64)> {
        // Qualified and aliased: PostgreSQL names a cast column after its source, which would
        // make ORDER BY ambiguous.
        let key_cols: Vec<String> = col.key.iter().map(|(c, _)| format!("t.{c}")).collect();
        let identity: Vec<String> = col.identity.iter().enumerate().map(|(i, c)| format!("CAST(t.{c} AS TEXT) AS aad_{i}")).collect();
        let order = key_cols.join(", ");
        let mut after: Option<Vec<Val>> = None;
        let (mut rewritten, mut current) = (0u64, 0u64);
        loop {
            let mut a: Vec<Val> = vec![];
            let filter = match &after {
                None => String::new(),
                Some(last) => {
                    let ph: Vec<String> = last
                        .iter()
                        .map(|v| {
                            a.push(v.clone());
                            format!("${}", a.len())
                        })
                        .collect();
                    format!("AND ({order}) > ({})", ph.join(", "))
                }
            };
            let sql = format!(
                "SELECT {order}, {}, t.{} FROM {} t WHERE t.{} IS NOT NULL {filter} ORDER BY {order} LIMIT {ROTATE_BATCH}",
                identity.join(", "),
                col.column,
                col.table,
                col.column
            );
            let mut tx = self.begin().await?;
            let rows = tx.rows(&sql, &a).await?;
            if rows.is_empty() {
                break;
            }
            let nk = col.key.len();
            let ni = col.identity.len();
            for r in &rows {
                let key: Vec<Val> = col.key.iter().enumerate().map(|(i, (_, int))| if *int { r.i64(i).map(Val::I64) } else { r.text(i).map(Val::Text) }).collect::<Result<_>>()?;
                after = Some(key.clone());
                let stored = r.bytes(nk + ni)?;
                if stored.starts_with(prefix) {
                    current += 1;
                    continue;
                }
                let ident: Vec<String> = (0..ni).map(|i| r.text(nk + i)).collect::<Result<_>>()?;
                let ident_refs: Vec<&str> = ident.iter().map(|s| s.as_str()).collect();
                let aad = aad(col.table, col.column, &ident_refs);
                let plain = self.cipher.decrypt(&aad, &stored).with_context(|| format!("row ({})", describe_key(&key)))?;
                let fresh = self.cipher.encrypt(&aad, &plain);
                rewrite(&mut *tx, col, &key, fresh, stored).await?;
                rewritten += 1;
            }
            tx.commit().await?;
            if (rows.len() as i64) < ROTATE_BATCH {
                break;
            }
        }
        Ok((rewritten, current))
    }
}

/// Only the row's own key names it in an error: the key columns are ids and pseudonyms.
fn describe_key(key: &[Val]) -> String {
    key.iter()
        .map(|v| match v {
            Val::I64(i) => i.to_string(),
            Val::Text(t) => t.clone(),
            _ => "?".into(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn rewrite(tx: &mut dyn Tx, col: &SealedColumn, key: &[Val], fresh: Vec<u8>, old: Vec<u8>) -> Result<()> {
    let mut a = vec![Val::Bytes(fresh), Val::Bytes(old)];
    let mut cond = vec![];
    for (i, (c, _)) in col.key.iter().enumerate() {
        a.push(key[i].clone());
        cond.push(format!("{c} = ${}", a.len()));
    }
    // Only if unchanged since read: a payload written meanwhile is already under the new key.
    tx.exec(&format!("UPDATE {} SET {} = $1 WHERE {} = $2 AND {}", col.table, col.column, col.column, cond.join(" AND ")), &a).await?;
    Ok(())
}
