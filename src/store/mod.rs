//! The state store: watermarks, runs, ticks, clinical documents, the outbox, attempts,
//! quarantine, the audit chain, worklists and PVK results.
//!
//! The logic lives here once, written against [`sql::Tx`]; `sqlite/` and `postgres/` are the two
//! [`sql::Backend`]s (each with its own migrations). Every state change of one logical step goes
//! through [`Store::apply`] as one [`ChangeSet`], in one transaction: documents, outbox records,
//! watermarks and the audit events that explain them land together or not at all.
//!
//! Payload columns are encrypted here (AES-GCM) before they reach either database.

pub mod sql;
pub mod sqlite;
pub mod postgres;
mod outbox;
mod audit_chain;
mod queries;
pub mod sealed;

pub use audit_chain::{chain_hash, chain_hash_keyed, AuditMac, AuditQuery, SignedHead, VerifyReport, GENESIS_HASH};
pub use outbox::*;
pub use queries::*;
// The rows the pure side builds (defined beside the outbox so registers/outbox need no store).
pub use crate::model::add_months;
pub use crate::outbox::changes::*;

use crate::audit::NewAuditEvent;
use crate::config::{Backend as BackendKind, StoreSettings};
use crate::crypto::Cipher;
use crate::model::Record;
use crate::args;
use anyhow::{Context, Result};
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use sql::{Backend, Dialect, Tx};
use std::sync::Arc;

/// Documents per lookup query and per multi-row upsert in [`Store::apply`] (nine parameters a
/// row: 3,600 a statement, well inside SQLite's 32,766 and PostgreSQL's 65,535).
const DOCUMENT_CHUNK: usize = 400;
/// Outbox upserts per set-based chunk (twelve parameters a row) and PVK result rows per
/// multi-row upsert (thirteen).
const OUTBOX_CHUNK: usize = 200;
/// Stored (compressed) patient-list bytes after which a PVK result upsert is sent (see
/// `apply_in`): each is held three times until the statement ran (our ciphertext, the driver's
/// argument, the database's bound copy), so this bounds the write's memory.
const PVK_LIST_BYTES: usize = 1 << 20;
/// Patients per page when a connector's stored records are read back (`for_each_patient`): a
/// page's rows are held at once (their encrypted documents, then the records).
const PATIENT_PAGE: i64 = 100;

pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}
pub fn to_us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}
pub fn from_us(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    cipher: Cipher,
    /// The audit key (`security.audit_key`), when configured: the chain is HMAC'd with it.
    audit_mac: Option<audit_chain::AuditMac>,
    /// Outbox versions written since the planner's statistics were last refreshed (PostgreSQL).
    queued_since_analyze: Arc<std::sync::atomic::AtomicU64>,
}

/// After this many new outbox versions, PostgreSQL's statistics of `records` are refreshed at
/// once instead of at autovacuum's next round (a minute or more). Why: a backfill queues
/// thousands of records in seconds, and until the statistics know them the planner believes
/// the outbox empty and claims by sorting every pending record (45–110 ms per claim of 64 at
/// 10,000 pending, BENCHMARKS.md issue 18) instead of reading the claim index in order.
const ANALYZE_AFTER_QUEUED: u64 = 5_000;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({:?})", self.backend.dialect())
    }
}

/// Renders the patient list of a PVK result row as it is written (`Store::apply_with_lists`).
pub type PvkListSource<'a> = &'a mut (dyn FnMut(&PvkResultRow) -> Result<Option<PatientList>> + Send);

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub documents_new: u32,
    pub documents_changed: u32,
    pub documents_unchanged: u32,
    pub outbox_created: u32,
    pub outbox_updated: u32,
    pub outbox_retracted: u32,
    pub outbox_unchanged: u32,
    /// New versions kept back because a person's withdrawal holds their key.
    pub outbox_held: u32,
    pub quarantined: u32,
}

impl Store {
    /// Open the configured backend and run its migrations.
    pub async fn open(settings: &StoreSettings, cipher: Cipher) -> Result<Store> {
        let backend: Arc<dyn Backend> = match settings.backend {
            BackendKind::Sqlite => Arc::new(sqlite::SqliteBackend::open(&settings.sqlite_path, settings.max_connections).await?),
            BackendKind::Postgres => {
                let url = settings
                    .postgres_url
                    .as_ref()
                    .context("store.postgres_url is not configured")?
                    .read_string()
                    .context("store.postgres_url")?;
                Arc::new(postgres::PgBackend::open(&url, settings.max_connections).await?)
            }
        };
        let mut store = Store { backend, cipher, audit_mac: None, queued_since_analyze: Default::default() };
        store.backend.migrate().await?;
        store.ensure_audit_partitions(Utc::now()).await?;
        // Once every payload is bound to its row, an unbound (v1) ciphertext can only be planted.
        if store.kv_get(sealed::PAYLOADS_BOUND).await?.as_deref() == Some("1") {
            store.cipher.refuse_unbound();
        }
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.backend.dialect()
    }

    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }

    pub async fn begin(&self) -> Result<Box<dyn Tx>> {
        self.backend.begin().await
    }

    pub async fn read(&self) -> Result<Box<dyn Tx>> {
        self.backend.read().await
    }

    pub async fn ping(&self) -> Result<()> {
        let mut tx = self.backend.read().await?;
        tx.rows("SELECT 1", &[]).await?;
        Ok(())
    }

    pub async fn migrations_current(&self) -> Result<bool> {
        self.backend.migrations_current().await
    }

    pub async fn close(&self) {
        self.backend.close().await
    }

    pub(crate) async fn reclaim(&self) -> Result<()> {
        self.backend.reclaim().await
    }

    /// Apply one change set in one transaction.
    pub async fn apply(&self, cs: ChangeSet) -> Result<ApplyOutcome> {
        self.apply_with_lists(cs, None).await
    }

    /// What `apply` would do, without doing it: the change set is applied inside a transaction
    /// that is then rolled back (backfill --dry-run).
    pub async fn preview(&self, cs: ChangeSet) -> Result<ApplyOutcome> {
        self.preview_with_lists(cs, None).await
    }

    /// As `apply`, with the patient list of each PVK result row that has none in the change
    /// set asked from `lists` as the row is written (the PVK after-pull step renders a region's
    /// lists one at a time from its spill instead of holding them all).
    pub async fn apply_with_lists(&self, cs: ChangeSet, lists: Option<PvkListSource<'_>>) -> Result<ApplyOutcome> {
        if cs.is_empty() {
            return Ok(ApplyOutcome::default());
        }
        let mut tx = self.backend.begin().await?;
        let out = self.apply_in(&mut *tx, cs, lists).await?;
        tx.commit().await?;
        self.note_queued(u64::from(out.outbox_created + out.outbox_updated)).await;
        Ok(out)
    }

    /// Count new outbox versions; refresh the statistics of `records` when enough arrived.
    async fn note_queued(&self, n: u64) {
        use std::sync::atomic::Ordering;
        if n == 0 || self.backend.dialect() != Dialect::Postgres {
            return;
        }
        if self.queued_since_analyze.fetch_add(n, Ordering::Relaxed) + n < ANALYZE_AFTER_QUEUED {
            return;
        }
        self.queued_since_analyze.store(0, Ordering::Relaxed);
        let analyzed = async {
            // Statistics are transactional: the ANALYZE counts once its transaction commits.
            let mut tx = self.backend.read().await?;
            tx.exec("ANALYZE records", &[]).await?;
            tx.commit().await
        };
        if let Err(e) = analyzed.await {
            tracing::warn!(error = %e, "refreshing the outbox statistics failed; autovacuum will");
        }
    }

    /// `preview` with lists, as `apply_with_lists`.
    pub async fn preview_with_lists(&self, cs: ChangeSet, lists: Option<PvkListSource<'_>>) -> Result<ApplyOutcome> {
        if cs.is_empty() {
            return Ok(ApplyOutcome::default());
        }
        let mut tx = self.backend.begin().await?;
        let out = self.apply_in(&mut *tx, cs, lists).await?;
        drop(tx); // rollback
        Ok(out)
    }

    pub(crate) async fn apply_in(&self, tx: &mut dyn Tx, cs: ChangeSet, mut lists: Option<PvkListSource<'_>>) -> Result<ApplyOutcome> {
        let mut out = ApplyOutcome::default();
        let now = now_us();
        // Documents in chunks: the stored hashes of a chunk are read with one query and its new
        // and changed documents written with one multi-row upsert. A statement per document made
        // the database's round trips (for SQLite, wake-ups of its worker thread) the store's
        // main cost in a region's backfill.
        let mut next = 0;
        while next < cs.documents.len() {
            // A key repeated within the change set starts a new chunk, so the repeat sees the
            // first write exactly as a statement-per-document loop would.
            let mut seen = std::collections::HashSet::new();
            let mut chunk = vec![];
            while next < cs.documents.len() && chunk.len() < DOCUMENT_CHUNK {
                let d = &cs.documents[next];
                let key = d.record.key();
                if !seen.insert((d.connector.as_str(), key.clone())) {
                    break;
                }
                chunk.push((d, key, d.content_hash.clone().unwrap_or_else(|| d.record.content_hash())));
                next += 1;
            }
            let mut by_connector: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
            for (d, key, _) in &chunk {
                by_connector.entry(d.connector.as_str()).or_default().push(key.as_str());
            }
            let mut stored: std::collections::HashMap<(String, String), String> = Default::default();
            for (connector, keys) in by_connector {
                let mut a = vec![sql::Val::from(connector)];
                let ph: Vec<String> = keys
                    .iter()
                    .map(|k| {
                        a.push(sql::Val::from(*k));
                        format!("${}", a.len())
                    })
                    .collect();
                let sql = format!("SELECT doc_key, content_hash FROM documents WHERE connector = $1 AND doc_key IN ({})", ph.join(", "));
                for r in tx.rows(&sql, &a).await? {
                    stored.insert((connector.to_string(), r.text(0)?), r.text(1)?);
                }
            }
            // $1 is the time; each row adds its nine values.
            let mut a: Vec<sql::Val> = vec![sql::Val::I64(now)];
            let mut rows = vec![];
            for (d, key, hash) in chunk {
                match stored.get(&(d.connector.clone(), key.clone())) {
                    Some(h) if *h == hash => {
                        out.documents_unchanged += 1;
                        continue;
                    }
                    Some(_) => out.documents_changed += 1,
                    None => out.documents_new += 1,
                }
                let b = a.len();
                a.push(sql::Val::from(&d.connector));
                a.push(sql::Val::from(&key));
                a.push(sql::Val::from(&d.patient_key));
                a.push(sql::Val::from(d.record.unit().map(|u| u.as_str().to_string())));
                a.push(sql::Val::from(d.record.kind().as_str()));
                a.push(sql::Val::from(hash));
                a.push(sql::Val::from(self.cipher.encrypt_json(&sealed::document(&d.connector, &key), &d.record)));
                a.push(sql::Val::from(d.record.nullified()));
                a.push(sql::Val::from(d.record.date().map(|x| x.to_string())));
                rows.push(format!("(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, $1, $1)", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8, b + 9));
            }
            if rows.is_empty() {
                continue;
            }
            tx.exec(
                &format!(
                    "INSERT INTO documents (connector, doc_key, patient_key, unit, kind, content_hash, payload, nullified, record_date, first_seen_us, updated_us)
                 VALUES {}
                 ON CONFLICT (connector, doc_key) DO UPDATE SET patient_key = excluded.patient_key, unit = excluded.unit,
                   content_hash = excluded.content_hash, payload = excluded.payload, nullified = excluded.nullified,
                   record_date = excluded.record_date, updated_us = excluded.updated_us",
                    rows.join(", ")
                ),
                &a,
            )
            .await?;
        }
        for q in &cs.quarantine {
            tx.exec(
                "INSERT INTO quarantine (connector, run_id, at_us, document, field, reason, patient_key, raw) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                args![&q.connector, q.run_id, now, &q.document, &q.field, &q.reason, q.patient_key.clone(), q.raw.as_ref().map(|r| self.cipher.encrypt(&sealed::quarantine_raw(&q.connector, &q.document, &q.field), r))],
            )
            .await?;
            out.quarantined += 1;
        }
        // Audit events are appended last (the chain's head row is the last lock taken).
        let mut audit = vec![];
        // Upserts in chunks of distinct keys, a few statements per chunk; a repeated key or a
        // retraction ends the chunk, so every change sees the ones before it.
        let mut next = 0;
        while next < cs.outbox.len() {
            let mut seen = std::collections::HashSet::new();
            let mut chunk = vec![];
            while next < cs.outbox.len() && chunk.len() < OUTBOX_CHUNK {
                match &cs.outbox[next] {
                    c @ OutboxChange::Upsert { key, .. } if seen.insert(key.idem_key.as_str()) => chunk.push(c),
                    _ => break,
                }
                next += 1;
            }
            if chunk.is_empty() {
                outbox::apply_change(self, tx, &cs.outbox[next], now, &mut out, &mut audit).await?;
                next += 1;
            } else {
                outbox::apply_upserts(self, tx, &chunk, now, &mut out, &mut audit).await?;
            }
        }
        for (connector, unit, value) in &cs.watermarks {
            tx.exec(
                "INSERT INTO watermarks (connector, unit, value_us, updated_us) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (connector, unit) DO UPDATE SET value_us = excluded.value_us, updated_us = excluded.updated_us",
                args![connector, unit, to_us(*value), now],
            )
            .await?;
        }
        for w in &cs.worklist {
            match w {
                WorklistChange::Put { idem_key, connector, unit, form, patient_key, patient, missing, event_date } => {
                    tx.exec(
                        "INSERT INTO worklist (idem_key, connector, unit, form, patient_key, patient_ref, missing, event_date, since_us, updated_us)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
                         ON CONFLICT (idem_key) DO UPDATE SET
                           -- A mark handled-outside-the-system holds while the data is unchanged.
                           handled_us = CASE WHEN worklist.missing = excluded.missing AND COALESCE(worklist.event_date, '') = COALESCE(excluded.event_date, '') THEN worklist.handled_us END,
                           handled_by = CASE WHEN worklist.missing = excluded.missing AND COALESCE(worklist.event_date, '') = COALESCE(excluded.event_date, '') THEN worklist.handled_by END,
                           handled_reason = CASE WHEN worklist.missing = excluded.missing AND COALESCE(worklist.event_date, '') = COALESCE(excluded.event_date, '') THEN worklist.handled_reason END,
                           missing = excluded.missing, event_date = excluded.event_date,
                           unit = excluded.unit, patient_ref = excluded.patient_ref, updated_us = excluded.updated_us",
                        args![idem_key, connector, unit, form, patient_key, self.cipher.encrypt_json(&sealed::worklist_patient(idem_key), patient), serde_json::to_string(missing)?, event_date.clone(), now],
                    )
                    .await?;
                }
                WorklistChange::Remove { idem_key } => {
                    tx.exec("DELETE FROM worklist WHERE idem_key = $1", args![idem_key]).await?;
                }
            }
        }
        for (connector, patient_key, rows) in &cs.episodes {
            tx.exec("DELETE FROM sar_episodes WHERE connector = $1 AND patient_key = $2", args![connector, patient_key]).await?;
            for e in rows {
                tx.exec(
                    "INSERT INTO sar_episodes (episode_key, connector, unit, patient_key, joint, first_visit_date, forms_due, updated_us)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (episode_key) DO UPDATE SET unit = excluded.unit, joint = excluded.joint,
                       first_visit_date = excluded.first_visit_date, forms_due = excluded.forms_due, updated_us = excluded.updated_us",
                    args![&e.episode_key, &e.connector, &e.unit, &e.patient_key, &e.joint, &e.first_visit_date, serde_json::to_string(&e.forms_due)?, now],
                )
                .await?;
            }
        }
        // Result cells in multi-row upserts; each patient list is encrypted once, as it is bound,
        // and a statement ends after PVK_LIST_BYTES of lists, so a region's lists never sit in
        // memory at once.
        let mut next = 0;
        while next < cs.pvk_results.len() {
            let mut a: Vec<sql::Val> = vec![sql::Val::I64(now)];
            let mut rows = vec![];
            let mut bytes = 0;
            while next < cs.pvk_results.len() && rows.len() < OUTBOX_CHUNK && bytes < PVK_LIST_BYTES {
                let r = &cs.pvk_results[next];
                next += 1;
                let rendered = match (&r.patient_list, lists.as_mut()) {
                    (None, Some(source)) => source(r)?,
                    _ => None,
                };
                let list = r.patient_list.as_ref().or(rendered.as_ref());
                let b = a.len();
                rows.push(format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, $1)",
                    b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8, b + 9, b + 10, b + 11, b + 12
                ));
                a.extend([
                    sql::Val::from(&r.connector),
                    sql::Val::from(r.rule_year),
                    sql::Val::from(&r.unit),
                    sql::Val::from(r.year),
                    sql::Val::from(r.month),
                    sql::Val::from(&r.indicator),
                    sql::Val::from(r.numerator),
                    sql::Val::from(r.denominator),
                    sql::Val::from(r.computable),
                    sql::Val::from(r.suppressed),
                    sql::Val::from(r.note.clone()),
                    list.map(|l| {
                        bytes += l.stored().len();
                        sql::Val::Bytes(self.cipher.encrypt(&sealed::pvk_patient_list(&r.connector, r.rule_year, &r.unit, r.year, r.month, &r.indicator), l.stored()))
                    })
                    .unwrap_or(sql::Val::Null(sql::NullKind::Bytes)),
                ]);
            }
            tx.exec(
                &format!(
                    "INSERT INTO pvk_results (connector, rule_year, unit, year, month, indicator, numerator, denominator, computable, suppressed, note, patient_list, computed_us)
                     VALUES {}
                     ON CONFLICT (connector, rule_year, unit, year, month, indicator) DO UPDATE SET numerator = excluded.numerator,
                       denominator = excluded.denominator, computable = excluded.computable, suppressed = excluded.suppressed,
                       note = excluded.note, patient_list = excluded.patient_list, computed_us = excluded.computed_us",
                    rows.join(", ")
                ),
                &a,
            )
            .await?;
        }
        for q in &cs.pvk_quality {
            tx.exec(
                "INSERT INTO pvk_quality (connector, unit, year, month, measure, count, computed_us) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (connector, unit, year, month, measure) DO UPDATE SET count = excluded.count, computed_us = excluded.computed_us",
                args![&q.connector, &q.unit, q.year, q.month, &q.measure, q.count, now],
            )
            .await?;
        }
        audit.extend(cs.audit.iter().cloned());
        audit_chain::append(tx, self.audit_mac.as_ref(), &audit).await?;
        Ok(out)
    }

    /// Append audit events on their own (for events with no other state change).
    pub async fn audit(&self, events: Vec<NewAuditEvent>) -> Result<()> {
        self.apply(ChangeSet { audit: events, ..Default::default() }).await.map(|_| ())
    }

    // ------------------------------------------------------------------ documents

    /// Content hashes of several patients' stored documents: patient_key → (doc_key → hash).
    pub async fn document_hashes_many(&self, connector: &str, patient_keys: &[String]) -> Result<std::collections::HashMap<String, std::collections::HashMap<String, String>>> {
        let mut out: std::collections::HashMap<String, std::collections::HashMap<String, String>> = Default::default();
        let mut tx = self.backend.read().await?;
        for chunk in patient_keys.chunks(500) {
            let mut a = vec![sql::Val::from(connector)];
            let ph = outbox::in_list(&mut a, chunk.iter().map(|k| sql::Val::from(k.as_str())).collect());
            for r in tx.rows(&format!("SELECT patient_key, doc_key, content_hash FROM documents WHERE connector = $1 AND patient_key IN ({ph})"), &a).await? {
                out.entry(r.text(0)?).or_default().insert(r.text(1)?, r.text(2)?);
            }
        }
        Ok(out)
    }

    /// Content hashes of a patient's stored documents (doc_key → hash), to skip unchanged reads.
    pub async fn document_hashes(&self, connector: &str, patient_key: &str) -> Result<std::collections::HashMap<String, String>> {
        let mut tx = self.backend.read().await?;
        let rows = tx
            .rows("SELECT doc_key, content_hash FROM documents WHERE connector = $1 AND patient_key = $2", args![connector, patient_key])
            .await?;
        rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?))).collect()
    }

    /// All stored canonical records of a patient for a connector (decrypted).
    pub async fn patient_documents(&self, connector: &str, patient_key: &str) -> Result<Vec<Record>> {
        let mut tx = self.backend.read().await?;
        let rows = tx.rows("SELECT payload, doc_key FROM documents WHERE connector = $1 AND patient_key = $2 ORDER BY doc_key", args![connector, patient_key]).await?;
        rows.iter().map(|r| self.cipher.decrypt_json(&sealed::document(connector, &r.text(1)?), &r.bytes(0)?)).collect()
    }

    /// Patient keys with stored documents for a connector (for recomputation without a source).
    pub async fn patient_keys(&self, connector: &str) -> Result<Vec<String>> {
        let mut tx = self.backend.read().await?;
        let rows = tx.rows("SELECT DISTINCT patient_key FROM documents WHERE connector = $1 ORDER BY patient_key", args![connector]).await?;
        rows.iter().map(|r| r.text(0)).collect()
    }

    pub async fn document_count(&self, connector: &str) -> Result<i64> {
        let mut tx = self.backend.read().await?;
        let r = tx.row("SELECT COUNT(*) FROM documents WHERE connector = $1", args![connector]).await?;
        Ok(r.map(|r| r.i64(0)).transpose()?.unwrap_or(0))
    }

    /// Stream every stored record of a connector, patient by patient (PVK recomputation).
    pub async fn for_each_patient<F>(&self, connector: &str, mut f: F) -> Result<()>
    where
        F: FnMut(&str, Vec<Record>) -> Result<()> + Send,
    {
        // Keyset pages of PATIENT_PAGE patients: neither the region's key list nor its records
        // are ever held at once, so memory stays flat as the region grows.
        let mut after: Option<String> = None;
        loop {
            let mut tx = self.backend.read().await?;
            let page: Vec<String> = match &after {
                None => tx.rows("SELECT DISTINCT patient_key FROM documents WHERE connector = $1 ORDER BY patient_key LIMIT $2", args![connector, PATIENT_PAGE]).await?,
                Some(a) => {
                    tx.rows("SELECT DISTINCT patient_key FROM documents WHERE connector = $1 AND patient_key > $2 ORDER BY patient_key LIMIT $3", args![connector, a, PATIENT_PAGE])
                        .await?
                }
            }
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<_>>()?;
            let (Some(lo), Some(hi)) = (page.first().cloned(), page.last().cloned()) else { break };
            after = Some(hi.clone());
            let rows = tx
                .rows(
                    "SELECT patient_key, payload, doc_key FROM documents WHERE connector = $1 AND patient_key >= $2 AND patient_key <= $3 ORDER BY patient_key, doc_key",
                    args![connector, lo, hi],
                )
                .await?;
            drop(tx);
            let mut current: Option<String> = None;
            let mut recs = vec![];
            for r in rows {
                let pk = r.text(0)?;
                if current.as_deref() != Some(pk.as_str()) {
                    if let Some(c) = current.take() {
                        f(&c, std::mem::take(&mut recs))?;
                    }
                    current = Some(pk);
                }
                recs.push(self.cipher.decrypt_json(&sealed::document(connector, &r.text(2)?), &r.bytes(1)?)?);
            }
            if let Some(c) = current {
                f(&c, recs)?;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ watermarks

    pub async fn watermark(&self, connector: &str, unit: &str) -> Result<Option<DateTime<Utc>>> {
        let mut tx = self.backend.read().await?;
        let r = tx.row("SELECT value_us FROM watermarks WHERE connector = $1 AND unit = $2", args![connector, unit]).await?;
        Ok(r.map(|r| r.i64(0)).transpose()?.map(from_us))
    }

    // ------------------------------------------------------------------ key/value

    pub async fn kv_get(&self, key: &str) -> Result<Option<String>> {
        let mut tx = self.backend.read().await?;
        let r = tx.row("SELECT value FROM kv WHERE key = $1", args![key]).await?;
        r.map(|r| r.text(0)).transpose()
    }

    pub async fn kv_put(&self, key: &str, value: &str) -> Result<()> {
        let mut tx = self.backend.begin().await?;
        tx.exec(
            "INSERT INTO kv (key, value, updated_us) VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_us = excluded.updated_us",
            args![key, value, now_us()],
        )
        .await?;
        tx.commit().await
    }

    // ------------------------------------------------------------------ audit partitions (PG)

    /// PostgreSQL: make sure monthly audit partitions exist from last month to three ahead.
    pub async fn ensure_audit_partitions(&self, now: DateTime<Utc>) -> Result<()> {
        if self.dialect() != Dialect::Postgres {
            return Ok(());
        }
        use chrono::Datelike;
        let mut tx = self.backend.begin().await?;
        // Replicas starting together must not create the same partitions at once (deadlock).
        tx.rows("SELECT pg_advisory_xact_lock(hashtext('registerbrygga.audit_partitions'))::text", &[]).await?;
        for offset in -1..=3i32 {
            let (y, m) = add_months(now.year(), now.month(), offset);
            let (ny, nm) = add_months(y, m, 1);
            let from = to_us(Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).unwrap());
            let to = to_us(Utc.with_ymd_and_hms(ny, nm, 1, 0, 0, 0).unwrap());
            let name = format!("audit_events_{y:04}{m:02}");
            let exists = tx.row("SELECT 1 FROM pg_class WHERE relname = $1", args![&name]).await?.is_some();
            if !exists {
                // Skip a month that already has rows in the default partition (cannot attach).
                let in_default = tx
                    .row("SELECT 1 FROM audit_events_default WHERE at_us >= $1 AND at_us < $2 LIMIT 1", args![from, to])
                    .await?
                    .is_some();
                if !in_default {
                    tx.exec(&format!("CREATE TABLE {name} PARTITION OF audit_events FOR VALUES FROM ({from}) TO ({to})"), &[]).await?;
                }
            }
        }
        tx.commit().await
    }
}

/// Helper for tests and tools: a string column list as SQL placeholders `$start..`.
pub fn placeholders(start: usize, n: usize) -> String {
    (start..start + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

