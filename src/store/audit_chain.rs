//! The hash chain of the audit log: append under the head lock, verify, prune with an anchor.
//!
//! With `security.audit_key` (a secret held outside the database) every event appended is
//! chained with HMAC-SHA256 under that key (`m1:<hex>`) instead of plain SHA-256, so someone
//! who can write the database but does not hold the key cannot recompute the chain after an
//! edit. An existing store's chain continues: the first keyed event follows the head as it was
//! when the key was first configured, and that point (the *mark*) is itself keyed, as is the
//! anchor left by pruning. A signed head ([`SignedHead`]) is exported periodically to the log
//! (and a file), so a truncated tail is detected against the last exported head.

use super::sql::{Dialect, Tx};
use super::{from_us, now_us, Store};
use crate::args;
use crate::audit::{AuditEvent, NewAuditEvent};
use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// kv: the last sequence number chained without the key, with its MAC.
pub const HMAC_FROM: &str = "audit.hmac_from";
/// kv: the MAC of the anchor left by pruning.
pub const ANCHOR_MAC: &str = "audit.anchor_mac";
const KEYED_PREFIX: &str = "m1:";

/// The audit key: HMAC-SHA256 over the chain.
#[derive(Clone)]
pub struct AuditMac {
    key: Arc<[u8; 32]>,
}

impl std::fmt::Debug for AuditMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditMac(..)")
    }
}

impl AuditMac {
    pub fn new(key: [u8; 32]) -> AuditMac {
        AuditMac { key: Arc::new(key) }
    }
    /// HMAC of `\x1f`-terminated parts, hex.
    pub fn mac(&self, parts: &[&str]) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key[..]).expect("any key length");
        for p in parts {
            m.update(p.as_bytes());
            m.update(&[0x1f]);
        }
        hex::encode(m.finalize().into_bytes())
    }
    fn check(&self, parts: &[&str], mac: &str) -> bool {
        let expected = self.mac(parts);
        expected.len() == mac.len() && expected.bytes().zip(mac.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
    }
}

/// The keyed hash of one event: HMAC over the same fields as [`chain_hash`].
pub fn chain_hash_keyed(mac: &AuditMac, seq: i64, at_us: i64, actor: &str, kind: &str, correlation_id: &str, subject: &str, detail: &str, prev_hash: &str) -> String {
    format!("{KEYED_PREFIX}{}", mac.mac(&[seq.to_string().as_str(), at_us.to_string().as_str(), actor, kind, correlation_id, subject, detail, prev_hash]))
}

/// The audit head as exported: sequence number, hash and time, signed with the audit key.
/// Kept outside the database (log, file), it lets `audit verify --head` detect a truncated tail.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedHead {
    pub seq: i64,
    pub hash: String,
    pub at_us: i64,
    pub sig: String,
}

impl SignedHead {
    fn parts(&self) -> [String; 4] {
        ["audit-head".into(), self.seq.to_string(), self.hash.clone(), self.at_us.to_string()]
    }
}

/// The hash of one event: SHA-256 over its fields and the previous hash, `\x1f`-separated.
pub fn chain_hash(seq: i64, at_us: i64, actor: &str, kind: &str, correlation_id: &str, subject: &str, detail: &str, prev_hash: &str) -> String {
    let mut h = Sha256::new();
    for part in [seq.to_string().as_str(), at_us.to_string().as_str(), actor, kind, correlation_id, subject, detail, prev_hash] {
        h.update(part.as_bytes());
        h.update([0x1f]);
    }
    hex::encode(h.finalize())
}

pub(super) async fn append(tx: &mut dyn Tx, mac: Option<&AuditMac>, events: &[NewAuditEvent]) -> Result<()> {
    append_as(tx, mac, events, false).await
}

/// [`append`]; `keep`: the caller appends this many events again and again (a full delivery
/// batch), so the insert is kept prepared ([`Tx::exec_repeated`]).
pub(super) async fn append_as(tx: &mut dyn Tx, mac: Option<&AuditMac>, events: &[NewAuditEvent], keep: bool) -> Result<()> {
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
            let hash = match mac {
                Some(m) => chain_hash_keyed(m, seq, at, &e.actor, &e.kind, &e.correlation_id, &e.subject, &detail, &prev),
                None => chain_hash(seq, at, &e.actor, &e.kind, &e.correlation_id, &e.subject, &detail, &prev),
            };
            let b = vals.len();
            rows.push(format!("(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8, b + 9));
            vals.extend([seq.into(), at.into(), e.actor.as_str().into(), e.kind.as_str().into(), e.correlation_id.as_str().into(), e.subject.as_str().into(), detail.into(), prev.as_str().into(), hash.as_str().into()]);
            prev = hash;
            last_at = at;
        }
        tx.exec_repeated(&format!("INSERT INTO audit_events (seq, at_us, actor, kind, correlation_id, subject, detail, prev_hash, hash) VALUES {}", rows.join(", ")), &vals, keep).await?;
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
    /// Chain new audit events with HMAC under `key` from now on. The first time a store sees a
    /// key, the current head becomes the mark (keyed itself): events after it must be keyed.
    pub async fn enable_audit_mac(&mut self, key: [u8; 32]) -> Result<()> {
        let mac = AuditMac::new(key);
        let mut tx = self.begin().await?;
        let lock = if tx.dialect() == Dialect::Postgres { " FOR UPDATE" } else { "" };
        let head = tx.row(&format!("SELECT seq FROM audit_head WHERE id = 1{lock}"), &[]).await?.context("audit_head row exists")?;
        let seq = head.i64(0)?;
        let mark = serde_json::json!({"seq": seq, "mac": mac.mac(&["hmac-from", &seq.to_string()])}).to_string();
        tx.exec("INSERT INTO kv (key, value, updated_us) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING", args![HMAC_FROM, mark, now_us()]).await?;
        tx.commit().await?;
        self.audit_mac = Some(mac);
        Ok(())
    }

    /// The head, signed with the audit key (`None` without a key).
    pub async fn audit_head_signed(&self) -> Result<Option<SignedHead>> {
        let Some(mac) = &self.audit_mac else { return Ok(None) };
        let mut tx = self.read().await?;
        let head = tx.row("SELECT seq, hash, at_us FROM audit_head WHERE id = 1", &[]).await?.context("audit_head row exists")?;
        let mut h = SignedHead { seq: head.i64(0)?, hash: head.text(1)?, at_us: head.i64(2)?, sig: String::new() };
        let parts = h.parts();
        h.sig = mac.mac(&parts.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        Ok(Some(h))
    }

    /// Walk the chain from its anchor to the head as it was when the walk began: events
    /// appended meanwhile are not part of this check (and no false alarm).
    pub async fn audit_verify(&self) -> Result<VerifyReport> {
        self.audit_verify_against(None).await
    }

    /// [`Store::audit_verify`], and also check that the chain still holds an exported head
    /// (signed with the audit key): a tail removed since that export is reported.
    pub async fn audit_verify_against(&self, exported: Option<&SignedHead>) -> Result<VerifyReport> {
        let mut tx = self.read().await?;
        if tx.dialect() == Dialect::Postgres {
            // One snapshot for the whole walk (head, anchor, mark and events agree).
            tx.exec("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", &[]).await?;
        }
        // The head first: the walk stops there.
        let head = tx.row("SELECT seq, hash FROM audit_head WHERE id = 1", &[]).await?.expect("audit_head row exists");
        let (head_seq, head_hash) = (head.i64(0)?, head.text(1)?);
        let anchor = tx.row("SELECT seq, hash FROM audit_anchor WHERE id = 1", &[]).await?;
        let (anchor_seq, anchor_hash) = match anchor {
            Some(r) => (r.i64(0)?, r.text(1)?),
            None => (0, GENESIS_HASH.to_string()),
        };
        let fail_at = |seq: i64, why: String| VerifyReport { ok: false, events_checked: 0, anchor_seq, head_seq, first_bad_seq: Some(seq), problem: Some(why) };
        // The mark: events after it must carry the key's HMAC.
        let mark: Option<i64> = match tx.row("SELECT value FROM kv WHERE key = $1", args![HMAC_FROM]).await? {
            None => None,
            Some(r) => {
                let v: serde_json::Value = serde_json::from_str(&r.text(0)?).unwrap_or_default();
                let seq = v["seq"].as_i64().unwrap_or(-1);
                if let Some(mac) = &self.audit_mac {
                    if !mac.check(&["hmac-from", &seq.to_string()], v["mac"].as_str().unwrap_or("")) {
                        return Ok(fail_at(seq.max(0) + 1, "the HMAC start mark was edited (it does not carry the audit key's MAC)".into()));
                    }
                }
                Some(seq)
            }
        };
        if self.audit_mac.is_some() && mark.is_none() {
            return Ok(fail_at(anchor_seq + 1, "the HMAC start mark is missing (removed from the database?)".into()));
        }
        if let (Some(mac), Some(m)) = (&self.audit_mac, mark) {
            if anchor_seq > m {
                let stored = tx.row("SELECT value FROM kv WHERE key = $1", args![ANCHOR_MAC]).await?.map(|r| r.text(0)).transpose()?.unwrap_or_default();
                if !mac.check(&["anchor", &anchor_seq.to_string(), &anchor_hash], &stored) {
                    return Ok(fail_at(anchor_seq, "the anchor was moved: it does not carry the audit key's MAC (events at the start removed?)".into()));
                }
            }
        }
        if let Some(h) = exported {
            let Some(mac) = &self.audit_mac else { bail!("checking an exported head needs security.audit_key") };
            let parts = h.parts();
            if !mac.check(&parts.iter().map(|s| s.as_str()).collect::<Vec<_>>(), &h.sig) {
                bail!("the exported head's signature does not match the audit key");
            }
            if head_seq < h.seq {
                return Ok(fail_at(head_seq + 1, format!("the chain ends at event {head_seq} but event {} was exported as the head: events at the end were removed", h.seq)));
            }
            if h.seq > anchor_seq {
                let at = tx.row("SELECT hash FROM audit_events WHERE seq = $1", args![h.seq]).await?.map(|r| r.text(0)).transpose()?;
                if at.as_deref() != Some(h.hash.as_str()) {
                    return Ok(fail_at(h.seq, format!("event {} is not the one exported as the head: the chain was rewritten", h.seq)));
                }
            }
        }
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
                    "SELECT seq, at_us, actor, kind, correlation_id, subject, detail, prev_hash, hash FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT 5000",
                    args![last_seen, head_seq],
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
                let stored_hash = r.text(8)?;
                let keyed = stored_hash.starts_with(KEYED_PREFIX);
                if mark.is_some_and(|m| seq > m) && !keyed {
                    return Ok(fail(seq, format!("event {seq} comes after the HMAC start mark but is not keyed: it was rewritten without the audit key"), checked));
                }
                let h = if keyed {
                    let Some(mac) = &self.audit_mac else {
                        return Ok(fail(seq, format!("event {seq} is chained with the audit key: verifying it needs security.audit_key"), checked));
                    };
                    chain_hash_keyed(mac, seq, r.i64(1)?, &r.text(2)?, &r.text(3)?, &r.text(4)?, &r.text(5)?, &r.text(6)?, &stored_prev)
                } else {
                    chain_hash(seq, r.i64(1)?, &r.text(2)?, &r.text(3)?, &r.text(4)?, &r.text(5)?, &r.text(6)?, &stored_prev)
                };
                if h != stored_hash {
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
            set_anchor(&mut *tx, self.audit_mac.as_ref(), aseq, &ahash).await?;
            for name in droppable {
                let n = tx.row(&format!("SELECT COUNT(*) FROM {name}"), &[]).await?.map(|r| r.i64(0)).transpose()?.unwrap_or(0);
                tx.exec(&format!("DROP TABLE {name}"), &[]).await?;
                removed += n;
            }
            removed += tx.exec("DELETE FROM audit_events_default WHERE seq <= $1", args![aseq]).await? as i64;
            tx.exec("DELETE FROM audit_patient_views WHERE seq <= $1", args![aseq]).await?;
        } else {
            let last = tx.row("SELECT seq, hash FROM audit_events WHERE at_us < $1 ORDER BY seq DESC LIMIT 1", args![cutoff]).await?;
            let Some(last) = last else { return Ok(0) };
            let (aseq, ahash) = (last.i64(0)?, last.text(1)?);
            set_anchor(&mut *tx, self.audit_mac.as_ref(), aseq, &ahash).await?;
            tx.exec("DELETE FROM audit_patient_views WHERE seq <= $1", args![aseq]).await?;
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
            self.audit_mac.as_ref(),
            &[NewAuditEvent::by(actor, crate::audit::kind::AUDIT_PRUNED, &crate::audit::correlation_id(), "audit", serde_json::json!({"removed": removed, "before_us": cutoff}))],
        )
        .await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// Record a view of patient identities (PDL access log): the event and one row per patient
    /// shown (their pseudonyms), in one transaction. The event's detail carries the number of
    /// patients and a digest of their sorted pseudonyms, so the chain covers the list too.
    pub async fn audit_patient_view(&self, mut event: NewAuditEvent, patient_keys: &[String]) -> Result<i64> {
        let mut keys: Vec<&String> = patient_keys.iter().collect();
        keys.sort();
        keys.dedup();
        let mut h = Sha256::new();
        for k in &keys {
            h.update(k.as_bytes());
            h.update([0x1f]);
        }
        if let Some(o) = event.detail.as_object_mut() {
            o.insert("patients".into(), serde_json::json!(keys.len()));
            o.insert("patients_digest".into(), serde_json::json!(hex::encode(h.finalize())));
        }
        let mut tx = self.begin().await?;
        append(&mut *tx, self.audit_mac.as_ref(), &[event]).await?;
        let seq = tx.row("SELECT seq FROM audit_head WHERE id = 1", &[]).await?.context("audit_head row exists")?.i64(0)?;
        for chunk in keys.chunks(400) {
            let mut a: Vec<super::sql::Val> = vec![seq.into()];
            let rows: Vec<String> = chunk
                .iter()
                .map(|k| {
                    a.push(k.as_str().into());
                    format!("($1, ${})", a.len())
                })
                .collect();
            tx.exec(&format!("INSERT INTO audit_patient_views (seq, patient_key) VALUES {} ON CONFLICT DO NOTHING", rows.join(", ")), &a).await?;
        }
        tx.commit().await?;
        Ok(seq)
    }

    /// Every recorded view of one patient's identity (newest first): who saw them, when, why.
    pub async fn audit_views_of_patient(&self, patient_key: &str, limit: i64) -> Result<Vec<AuditEvent>> {
        let mut tx = self.read().await?;
        let rows = tx
            .rows(
                "SELECT e.seq, e.at_us, e.actor, e.kind, e.correlation_id, e.subject, e.detail, e.prev_hash, e.hash FROM audit_events e
                 JOIN audit_patient_views v ON v.seq = e.seq WHERE v.patient_key = $1 ORDER BY e.seq DESC LIMIT $2",
                args![patient_key, limit.clamp(1, 100_000)],
            )
            .await?;
        rows.iter().map(|r| event_from(&**r)).collect()
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
            // A user's events include those made with their API tokens (`anna/token:12`).
            a.push(super::sql::Val::Text(s.clone()));
            let n = a.len();
            a.push(super::sql::Val::Text(format!("{}/token:%", s.replace(['%', '_'], ""))));
            sql.push_str(&format!(" AND (actor = ${n} OR actor LIKE ${})", a.len()));
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
        rows.iter().map(|r| event_from(&**r)).collect()
    }
}

fn event_from(r: &dyn super::sql::Row) -> Result<AuditEvent> {
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
}

async fn set_anchor(tx: &mut dyn Tx, mac: Option<&AuditMac>, seq: i64, hash: &str) -> Result<()> {
    tx.exec(
        "INSERT INTO audit_anchor (id, seq, hash, pruned_us) VALUES (1, $1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, pruned_us = excluded.pruned_us",
        args![seq, hash, now_us()],
    )
    .await?;
    if let Some(m) = mac {
        // Only a holder of the key can move the start of the chain.
        tx.exec(
            "INSERT INTO kv (key, value, updated_us) VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_us = excluded.updated_us",
            args![ANCHOR_MAC, m.mac(&["anchor", &seq.to_string(), hash]), now_us()],
        )
        .await?;
    }
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
