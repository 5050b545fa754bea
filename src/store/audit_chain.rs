//! The hash chain of the audit log: append under the head lock, verify, prune with an anchor.

use super::sql::{Dialect, Tx};
use super::{from_us, now_us, Store};
use crate::args;
use crate::audit::{AuditEvent, NewAuditEvent};
use anyhow::Result;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of one event: SHA-256 over its fields and the previous hash, `\x1f`-separated.
pub fn chain_hash(seq: i64, at_us: i64, actor: &str, kind: &str, correlation_id: &str, subject: &str, detail: &str, prev_hash: &str) -> String {
    let mut h = Sha256::new();
    for part in [seq.to_string().as_str(), at_us.to_string().as_str(), actor, kind, correlation_id, subject, detail, prev_hash] {
        h.update(part.as_bytes());
        h.update([0x1f]);
    }
    hex::encode(h.finalize())
}

pub(super) async fn append(tx: &mut dyn Tx, events: &[NewAuditEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let lock = if tx.dialect() == Dialect::Postgres { " FOR UPDATE" } else { "" };
    let head = tx.row(&format!("SELECT seq, hash, at_us FROM audit_head WHERE id = 1{lock}"), &[]).await?.expect("audit_head row exists");
    let (mut seq, mut prev, mut last_at) = (head.i64(0)?, head.text(1)?, head.i64(2)?);
    // Multi-row inserts: one statement per chunk of events, not one per event.
    for chunk in events.chunks(200) {
        let mut vals: Vec<super::sql::Val> = Vec::with_capacity(chunk.len() * 9);
        let mut rows = Vec::with_capacity(chunk.len());
        for e in chunk {
            seq += 1;
            // Monotone time even if replicas' clocks differ a little: pruning by time stays a prefix.
            let at = now_us().max(last_at);
            let detail = serde_json::to_string(&e.detail)?;
            let hash = chain_hash(seq, at, &e.actor, &e.kind, &e.correlation_id, &e.subject, &detail, &prev);
            let b = vals.len();
            rows.push(format!("(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8, b + 9));
            vals.extend([seq.into(), at.into(), e.actor.as_str().into(), e.kind.as_str().into(), e.correlation_id.as_str().into(), e.subject.as_str().into(), detail.into(), prev.as_str().into(), hash.as_str().into()]);
            prev = hash;
            last_at = at;
        }
        tx.exec(&format!("INSERT INTO audit_events (seq, at_us, actor, kind, correlation_id, subject, detail, prev_hash, hash) VALUES {}", rows.join(", ")), &vals).await?;
    }
    tx.exec("UPDATE audit_head SET seq = $1, hash = $2, at_us = $3 WHERE id = 1", args![seq, prev, last_at]).await?;
    Ok(())
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub ok: bool,
    pub events_checked: i64,
    /// The chain starts after this sequence number (pruned events before it).
    pub anchor_seq: i64,
    pub head_seq: i64,
    /// The first bad event (or the place where one is missing) and why.
    pub first_bad_seq: Option<i64>,
    pub problem: Option<String>,
}

impl Store {
    /// Walk the chain from its anchor to the head.
    pub async fn audit_verify(&self) -> Result<VerifyReport> {
        let mut tx = self.read().await?;
        let anchor = tx.row("SELECT seq, hash FROM audit_anchor WHERE id = 1", &[]).await?;
        let (anchor_seq, anchor_hash) = match anchor {
            Some(r) => (r.i64(0)?, r.text(1)?),
            None => (0, GENESIS_HASH.to_string()),
        };
        let head = tx.row("SELECT seq, hash FROM audit_head WHERE id = 1", &[]).await?.expect("audit_head row exists");
        let (head_seq, head_hash) = (head.i64(0)?, head.text(1)?);
        let mut expected_seq = anchor_seq + 1;
        let mut prev = anchor_hash;
        let mut checked = 0i64;
        let fail = |seq: i64, why: String, checked: i64| VerifyReport {
            ok: false,
            events_checked: checked,
            anchor_seq,
            head_seq,
            first_bad_seq: Some(seq),
            problem: Some(why),
        };
        let mut last_seen = anchor_seq;
        loop {
            let rows = tx
                .rows(
                    "SELECT seq, at_us, actor, kind, correlation_id, subject, detail, prev_hash, hash FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT 5000",
                    args![last_seen],
                )
                .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let seq = r.i64(0)?;
                if seq != expected_seq {
                    return Ok(fail(expected_seq, format!("event {expected_seq} is missing (next present is {seq})"), checked));
                }
                let stored_prev = r.text(7)?;
                if stored_prev != prev {
                    return Ok(fail(seq, format!("event {seq} does not follow event {}: the chain was reordered or an event removed", seq - 1), checked));
                }
                let h = chain_hash(seq, r.i64(1)?, &r.text(2)?, &r.text(3)?, &r.text(4)?, &r.text(5)?, &r.text(6)?, &stored_prev);
                if h != r.text(8)? {
                    return Ok(fail(seq, format!("event {seq} was edited: its content does not match its hash"), checked));
                }
                prev = h;
                expected_seq += 1;
                checked += 1;
                last_seen = seq;
            }
        }
        if last_seen != head_seq || prev != head_hash {
            return Ok(fail(last_seen + 1, format!("the chain ends at event {last_seen} but the head says {head_seq}: events at the end were removed"), checked));
        }
        Ok(VerifyReport { ok: true, events_checked: checked, anchor_seq, head_seq, first_bad_seq: None, problem: None })
    }

    /// Remove events older than `cutoff_us`, keep the chain verifiable from an anchor.
    /// PostgreSQL drops whole monthly partitions; SQLite deletes in batches and then frees the
    /// space. Returns the number of events removed.
    pub async fn audit_prune(&self, cutoff_us: i64, actor: &str) -> Result<i64> {
        let mut tx = self.begin().await?;
        let mut removed = 0i64;
        let mut cutoff = cutoff_us;
        if tx.dialect() == Dialect::Postgres {
            // Whole months only: round the cutoff down to a partition boundary.
            let parts = tx
                .rows(
                    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                     JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'audit_events' AND c.relname <> 'audit_events_default'",
                    &[],
                )
                .await?;
            let mut droppable = vec![];
            let mut boundary = i64::MIN;
            for r in &parts {
                let name = r.text(0)?;
                let bound = r.text(1)?;
                // "FOR VALUES FROM ('x') TO ('y')"
                let nums: Vec<i64> = bound.split(|c: char| !c.is_ascii_digit() && c != '-').filter_map(|s| s.parse().ok()).collect();
                if nums.len() == 2 && nums[1] <= cutoff_us {
                    droppable.push(name);
                    boundary = boundary.max(nums[1]);
                }
            }
            cutoff = if boundary == i64::MIN { i64::MIN } else { boundary };
            if cutoff == i64::MIN {
                return Ok(0);
            }
            let last = tx.row("SELECT seq, hash FROM audit_events WHERE at_us < $1 ORDER BY seq DESC LIMIT 1", args![cutoff]).await?;
            let Some(last) = last else { return Ok(0) };
            let (aseq, ahash) = (last.i64(0)?, last.text(1)?);
            set_anchor(&mut *tx, aseq, &ahash).await?;
            for name in droppable {
                let n = tx.row(&format!("SELECT COUNT(*) FROM {name}"), &[]).await?.map(|r| r.i64(0)).transpose()?.unwrap_or(0);
                tx.exec(&format!("DROP TABLE {name}"), &[]).await?;
                removed += n;
            }
            removed += tx.exec("DELETE FROM audit_events_default WHERE seq <= $1", args![aseq]).await? as i64;
        } else {
            let last = tx.row("SELECT seq, hash FROM audit_events WHERE at_us < $1 ORDER BY seq DESC LIMIT 1", args![cutoff]).await?;
            let Some(last) = last else { return Ok(0) };
            let (aseq, ahash) = (last.i64(0)?, last.text(1)?);
            set_anchor(&mut *tx, aseq, &ahash).await?;
            tx.commit().await?;
            // Batched deletes keep each write transaction short.
            loop {
                let mut t = self.begin().await?;
                let n = t.exec("DELETE FROM audit_events WHERE seq IN (SELECT seq FROM audit_events WHERE seq <= $1 LIMIT 5000)", args![aseq]).await?;
                t.commit().await?;
                removed += n as i64;
                if n == 0 {
                    break;
                }
            }
            self.reclaim().await?;
            tx = self.begin().await?;
        }
        append(
            &mut *tx,
            &[NewAuditEvent::by(actor, crate::audit::kind::AUDIT_PRUNED, &crate::audit::correlation_id(), "audit", serde_json::json!({"removed": removed, "before_us": cutoff}))],
        )
        .await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// Search events (newest first).
    pub async fn audit_search(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let mut sql = String::from("SELECT seq, at_us, actor, kind, correlation_id, subject, detail, prev_hash, hash FROM audit_events WHERE 1 = 1");
        let mut a = vec![];
        if let Some(k) = &q.kind {
            a.push(super::sql::Val::Text(format!("{k}%")));
            sql.push_str(&format!(" AND kind LIKE ${}", a.len()));
        }
        if let Some(s) = &q.subject {
            a.push(super::sql::Val::Text(s.clone()));
            sql.push_str(&format!(" AND subject = ${}", a.len()));
        }
        if let Some(s) = &q.actor {
            a.push(super::sql::Val::Text(s.clone()));
            sql.push_str(&format!(" AND actor = ${}", a.len()));
        }
        if let Some(s) = &q.correlation_id {
            a.push(super::sql::Val::Text(s.clone()));
            sql.push_str(&format!(" AND correlation_id = ${}", a.len()));
        }
        if let Some(t) = q.from_us {
            a.push(super::sql::Val::I64(t));
            sql.push_str(&format!(" AND at_us >= ${}", a.len()));
        }
        if let Some(t) = q.to_us {
            a.push(super::sql::Val::I64(t));
            sql.push_str(&format!(" AND at_us < ${}", a.len()));
        }
        a.push(super::sql::Val::I64(q.limit.unwrap_or(200).min(5000)));
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", a.len()));
        let mut tx = self.read().await?;
        let rows = tx.rows(&sql, &a).await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEvent {
                    seq: r.i64(0)?,
                    at: from_us(r.i64(1)?),
                    actor: r.text(2)?,
                    kind: r.text(3)?,
                    correlation_id: r.text(4)?,
                    subject: r.text(5)?,
                    detail: serde_json::from_str(&r.text(6)?).unwrap_or(serde_json::Value::Null),
                    prev_hash: r.text(7)?,
                    hash: r.text(8)?,
                })
            })
            .collect()
    }
}

async fn set_anchor(tx: &mut dyn Tx, seq: i64, hash: &str) -> Result<()> {
    tx.exec(
        "INSERT INTO audit_anchor (id, seq, hash, pruned_us) VALUES (1, $1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, pruned_us = excluded.pruned_us",
        args![seq, hash, now_us()],
    )
    .await?;
    Ok(())
}

#[derive(Clone, Debug, Default, serde::Deserialize, Serialize)]
pub struct AuditQuery {
    pub kind: Option<String>,
    pub subject: Option<String>,
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub limit: Option<i64>,
}
