//! The outbox: one `registrations` row per idempotency key (what the register holds) and one
//! `records` row per version of what we want it to hold, with the state machine
//! `pending → sending → delivered | rejected | dead`, plus `superseded` and `retracted`, and
//! `held` for a version kept back because a person withdrew the key (it waits until a person
//! lifts the hold).
//!
//! Only the newest version of a key is ever claimed, and never while another version of it is
//! in flight: an older version that comes back from a failed attempt, an expired lease or a
//! shutdown while a newer one waits becomes `superseded`, so it can never overwrite the newer
//! one (or undo a withdrawal) in the register.
//!
//! Lease times (claim, heartbeat, rescue) come from the database's clock on PostgreSQL, so
//! replicas whose clocks disagree still agree on when a lease has expired.
//!
//! Whether a version is sent as create (POST), update (PUT) or delete is decided at send time
//! from the registration row, so a version that supersedes an unsent create simply becomes the
//! create.

use super::sql::{Dialect, Tx, Val};
use super::{from_us, now_us, ApplyOutcome, Store};
use crate::args;
use crate::audit::{kind, NewAuditEvent};
use crate::outbox::changes::{OutboxChange, RecordKey, Registration};
use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    Pending,
    Sending,
    Delivered,
    Rejected,
    Dead,
    Superseded,
    Retracted,
    Held,
}

impl RecordState {
    pub const ALL: [RecordState; 8] = [
        RecordState::Pending,
        RecordState::Sending,
        RecordState::Delivered,
        RecordState::Rejected,
        RecordState::Dead,
        RecordState::Superseded,
        RecordState::Retracted,
        RecordState::Held,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Pending => "pending",
            RecordState::Sending => "sending",
            RecordState::Delivered => "delivered",
            RecordState::Rejected => "rejected",
            RecordState::Dead => "dead",
            RecordState::Superseded => "superseded",
            RecordState::Retracted => "retracted",
            RecordState::Held => "held",
        }
    }
    pub fn parse(s: &str) -> Result<RecordState> {
        Ok(match s {
            "pending" => RecordState::Pending,
            "sending" => RecordState::Sending,
            "delivered" => RecordState::Delivered,
            "rejected" => RecordState::Rejected,
            "dead" => RecordState::Dead,
            "superseded" => RecordState::Superseded,
            "retracted" => RecordState::Retracted,
            "held" => RecordState::Held,
            other => bail!("unknown record state {other}"),
        })
    }
    /// Swedish label for the admin pages.
    pub fn label_sv(self) -> &'static str {
        match self {
            RecordState::Pending => "väntar",
            RecordState::Sending => "skickas",
            RecordState::Delivered => "levererad",
            RecordState::Rejected => "avvisad",
            RecordState::Dead => "misslyckad",
            RecordState::Superseded => "ersatt",
            RecordState::Retracted => "återkallad",
            RecordState::Held => "spärrad",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Make the register hold this payload (create or update).
    Upsert,
    /// Make the register hold nothing for this key (delete if present).
    Retract,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Retract => "retract",
        }
    }
    fn parse(s: &str) -> Op {
        if s == "retract" {
            Op::Retract
        } else {
            Op::Upsert
        }
    }
}

pub fn payload_hash(payload: &serde_json::Map<String, serde_json::Value>) -> String {
    // serde_json's Map is ordered by key, so the serialisation is canonical.
    hex::encode(&Sha256::digest(serde_json::to_vec(payload).expect("json"))[..16])
}

/// A version of a register record, as stored.
#[derive(Clone, Debug, Serialize)]
pub struct OutboxRecord {
    pub id: i64,
    pub idem_key: String,
    pub version: i64,
    pub register: String,
    pub connector: String,
    pub unit: String,
    pub form: String,
    pub subject: Option<String>,
    pub op: Op,
    /// Decrypted payload (personal data: never log it).
    #[serde(skip)]
    pub payload: Option<serde_json::Map<String, serde_json::Value>>,
    pub payload_hash: Option<String>,
    #[serde(skip)]
    pub lookup: Option<serde_json::Map<String, serde_json::Value>>,
    pub state: RecordState,
    pub reason: Option<String>,
    pub attempts: i64,
    pub next_attempt: DateTime<Utc>,
    pub first_attempt: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_expires: Option<DateTime<Utc>>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub register_ref: Option<String>,
    pub correlation_id: String,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub delivered: Option<DateTime<Utc>>,
}

/// A claimed record, ready to send.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub record: OutboxRecord,
    pub registration: Registration,
    pub attempt_id: i64,
    /// An earlier attempt for this key may have reached the register without us learning the
    /// outcome (crash, timeout, expired lease): look the registration up before creating it.
    pub outcome_unknown_before: bool,
    /// Lookup columns of every earlier version that may have reached the register.
    pub earlier_lookups: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// A `registrations` row selected with [`REGISTRATION_COLS`], its delivered payload still
/// encrypted (a NULL payload column reads as no payload).
fn sealed_registration_from_row(r: &dyn super::sql::Row) -> Result<(Registration, Option<Vec<u8>>)> {
    let reg = Registration {
        idem_key: r.text(0)?,
        register: r.text(1)?,
        connector: r.text(2)?,
        unit: r.text(3)?,
        form: r.text(4)?,
        subject: r.text_opt(5)?,
        event_id: r.text_opt(6)?,
        delivered_hash: r.text_opt(7)?,
        delivered_payload: None,
        state: r.text(9)?,
    };
    Ok((reg, r.bytes_opt(8)?))
}

/// A record's encrypted columns, opened after the claim's transaction.
struct SealedRecord {
    payload: Option<Vec<u8>>,
    lookup: Option<Vec<u8>>,
}

/// What a claim read inside its transaction, still encrypted.
#[derive(Default)]
struct SealedClaim {
    records: Vec<(OutboxRecord, SealedRecord)>,
    /// Registration and its encrypted delivered payload, by key.
    registrations: std::collections::HashMap<String, (Registration, Option<Vec<u8>>)>,
    /// Earlier attempts with an unknown outcome: (version, encrypted lookup) by key.
    earlier: std::collections::HashMap<String, Vec<(i64, Option<Vec<u8>>)>>,
    attempt_of: std::collections::HashMap<i64, i64>,
    lookup_window: bool,
}

/// A batch's outcomes, ready to be written ([`Store::finish_many`]).
struct PreparedFinish {
    now: i64,
    items: Vec<FinishItem>,
}

struct FinishItem {
    id: i64,
    idem_key: String,
    op: Op,
    payload_hash: Option<String>,
    /// The record's attempt count as claimed: a row claimed again since is not this attempt's.
    attempts: i64,
    /// id, what happened, status, error, register reference, next attempt, attempt count.
    record_vals: [Val; 7],
    /// attempt id, ended, operation, outcome, status, detail, register reference.
    attempt_vals: [Val; 7],
    sent: NewAuditEvent,
    /// Earlier unknown outcomes of the key are settled (a delivered version).
    settles: bool,
    /// Delivered, rejected or dead: written only if the lease was still ours.
    settled_event: Option<NewAuditEvent>,
    delivered: Option<Delivered>,
}

struct Delivered {
    event_id: Option<String>,
    /// The payload as the register now holds it, encrypted (upserts).
    sealed_payload: Option<Vec<u8>>,
}

/// A person's withdrawal that holds a key.
#[derive(Clone, Debug, Serialize)]
pub struct Hold {
    pub idem_key: String,
    pub by: String,
    pub reason: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

/// What lifting a hold did.
#[derive(Clone, Debug, Serialize)]
pub struct Lifted {
    pub idem_key: String,
    /// The kept-back version now queued to be sent, if the journal wanted one meanwhile.
    pub requeued: Option<i64>,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The register now holds this version (or nothing, for a retract).
    Delivered { operation: String, http_status: Option<u16>, event_id: Option<String>, detail: Option<String> },
    /// Transient failure: try again at `next_at`.
    Retry { operation: String, http_status: Option<u16>, error: String, next_at: DateTime<Utc> },
    /// The register said no (4xx) with a reason.
    Rejected { operation: String, http_status: Option<u16>, reason: String },
    /// Retries exhausted.
    Dead { operation: String, http_status: Option<u16>, error: String },
}

pub(super) const REGISTRATION_COLS: &str = "idem_key, register, connector, unit, form, subject, event_id, delivered_hash, delivered_payload, state";

pub(super) const RECORD_COLS: &str = "id, idem_key, version, register, connector, unit, form, subject, op, payload, payload_hash, lookup, state, reason, attempts, \
     next_attempt_us, first_attempt_us, lease_owner, lease_expires_us, last_status, last_error, register_ref, correlation_id, created_us, updated_us, delivered_us";

impl Store {
    /// A `registrations` row selected with [`REGISTRATION_COLS`] (a NULL payload column reads as
    /// no payload, for listings that do not need it decrypted).
    pub(super) fn registration_from_row(&self, r: &dyn super::sql::Row) -> Result<Registration> {
        let (mut reg, sealed) = sealed_registration_from_row(r)?;
        reg.delivered_payload = sealed.map(|b| self.cipher.decrypt_json(&super::sealed::delivered_payload(&reg.idem_key), &b)).transpose()?;
        Ok(reg)
    }

    pub(super) fn record_from_row(&self, r: &dyn super::sql::Row) -> Result<OutboxRecord> {
        let (mut record, sealed) = self.sealed_record_from_row(r)?;
        record.payload = sealed.payload.map(|b| self.cipher.decrypt_json(&super::sealed::record_payload(&record.idem_key, record.version), &b)).transpose()?;
        record.lookup = sealed.lookup.map(|b| self.cipher.decrypt_json(&super::sealed::record_lookup(&record.idem_key, record.version), &b)).transpose()?;
        Ok(record)
    }

    /// A `records` row selected with [`RECORD_COLS`], its payload and lookup still encrypted.
    fn sealed_record_from_row(&self, r: &dyn super::sql::Row) -> Result<(OutboxRecord, SealedRecord)> {
        let record = OutboxRecord {
            id: r.i64(0)?,
            idem_key: r.text(1)?,
            version: r.i64(2)?,
            register: r.text(3)?,
            connector: r.text(4)?,
            unit: r.text(5)?,
            form: r.text(6)?,
            subject: r.text_opt(7)?,
            op: Op::parse(&r.text(8)?),
            payload: None,
            payload_hash: r.text_opt(10)?,
            lookup: None,
            state: RecordState::parse(&r.text(12)?)?,
            reason: r.text_opt(13)?,
            attempts: r.i64(14)?,
            next_attempt: from_us(r.i64(15)?),
            first_attempt: r.i64_opt(16)?.map(from_us),
            lease_owner: r.text_opt(17)?,
            lease_expires: r.i64_opt(18)?.map(from_us),
            last_status: r.i64_opt(19)?,
            last_error: r.text_opt(20)?,
            register_ref: r.text_opt(21)?,
            correlation_id: r.text(22)?,
            created: from_us(r.i64(23)?),
            updated: from_us(r.i64(24)?),
            delivered: r.i64_opt(25)?.map(from_us),
        };
        Ok((record, SealedRecord { payload: r.bytes_opt(9)?, lookup: r.bytes_opt(11)? }))
    }

    pub(super) async fn registration_in(&self, tx: &mut dyn Tx, idem_key: &str) -> Result<Option<Registration>> {
        let r = tx
            .row(
                &format!("SELECT {REGISTRATION_COLS} FROM registrations WHERE idem_key = $1"),
                args![idem_key],
            )
            .await?;
        r.map(|r| self.registration_from_row(&*r)).transpose()
    }

    pub async fn registration(&self, idem_key: &str) -> Result<Option<Registration>> {
        let mut tx = self.read().await?;
        self.registration_in(&mut *tx, idem_key).await
    }

    /// Claim up to `limit` due records (optionally of some registers) for `owner` with a lease.
    /// PostgreSQL uses `FOR UPDATE SKIP LOCKED` so replicas never claim the same row; SQLite's
    /// single writer gives the same guarantee. Only the newest version of a key is claimed, and
    /// a key with a version in flight is skipped, so versions of one registration are sent in
    /// order and an older one never after a newer one.
    pub async fn claim(&self, owner: &str, registers: &[String], limit: u32, lease_seconds: u64) -> Result<Vec<Claimed>> {
        let mut tx = self.begin().await?;
        let sealed = self.claim_in(&mut *tx, owner, registers, limit, lease_seconds).await?;
        tx.commit().await?;
        self.open_claim(sealed)
    }

    /// Settle a sent batch and claim the next one in one transaction: the delivery engine's
    /// steady state, one commit per batch instead of two. The claim goes first, so the audit
    /// head (appended by the settling) is still the last lock the transaction takes. Returns,
    /// per attempt, whether the lease was still ours, and the next batch.
    pub async fn finish_and_claim(&self, owner: &str, done: Vec<(&Claimed, Outcome)>, registers: &[String], limit: u32, lease_seconds: u64) -> Result<(Vec<bool>, Vec<Claimed>)> {
        let prepared = self.prepare_finish(done);
        let mut tx = self.begin().await?;
        let sealed = self.claim_in(&mut *tx, owner, registers, limit, lease_seconds).await?;
        let full = prepared.items.len() == limit as usize;
        let kept = self.finish_in(&mut *tx, owner, prepared, full).await?;
        tx.commit().await?;
        Ok((kept, self.open_claim(sealed)?))
    }

    /// The claim's statements; payloads stay sealed until the transaction has committed, so the
    /// writer lock is not held while they are decrypted.
    async fn claim_in(&self, tx: &mut dyn Tx, owner: &str, registers: &[String], limit: u32, lease_seconds: u64) -> Result<SealedClaim> {
        let now = now_us();
        let mut a: Vec<Val> = vec![];
        let clock = db_clock(tx.dialect(), &mut a);
        let reg_filter = if registers.is_empty() {
            String::new()
        } else {
            let ph = registers.iter().map(|r| {
                a.push(Val::Text(r.clone()));
                format!("${}", a.len())
            });
            format!(" AND r.register IN ({})", ph.collect::<Vec<_>>().join(", "))
        };
        a.push(Val::I64(limit as i64));
        let lim = a.len();
        let lock = if tx.dialect() == Dialect::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        a.push(owner.into());
        let own = a.len();
        a.push((lease_seconds as i64 * 1_000_000).into());
        let lease = a.len();
        a.push(now.into());
        let at = a.len();
        // Choose and claim in one statement (the chosen ids are a CTE, evaluated once; `UPDATE …
        // RETURNING`), then a fixed handful per batch, not per record: registrations, earlier
        // unknown outcomes, and the in-flight attempt rows in one insert.
        let sql = format!(
            "WITH chosen AS (
               SELECT r.id FROM records r WHERE r.state = 'pending' AND r.next_attempt_us <= {clock}{reg_filter}
               AND NOT EXISTS (SELECT 1 FROM records s WHERE s.idem_key = r.idem_key AND (s.state = 'sending' OR s.version > r.version))
               ORDER BY r.next_attempt_us, r.id LIMIT ${lim}{lock})
             UPDATE records SET state = 'sending', lease_owner = ${own}, lease_expires_us = {clock} + ${lease}, attempts = attempts + 1,
               first_attempt_us = COALESCE(first_attempt_us, ${at}), updated_us = ${at}
             WHERE {BY_ID_STATE} = 'pending' AND id IN (SELECT id FROM chosen)
             RETURNING {RECORD_COLS}"
        );
        let rows = tx.rows(&sql, &a).await?;
        let mut records: Vec<(OutboxRecord, SealedRecord)> = rows.iter().map(|r| self.sealed_record_from_row(&**r)).collect::<Result<_>>()?;
        drop(rows);
        // RETURNING gives no order: due first, as chosen.
        records.sort_by_key(|(r, _)| (r.next_attempt, r.id));
        let mut out = SealedClaim::default();
        if records.is_empty() {
            return Ok(out);
        }
        // A full batch's statements have the same text batch after batch: kept prepared.
        let full = records.len() == limit as usize;
        let keys: Vec<Val> = records.iter().map(|(r, _)| Val::Text(r.idem_key.clone())).collect();
        // With the registrations: whether a restore's lookup window is open (see
        // `mark_unknown_after_restore`), read in the same statement.
        let mut b = vec![Val::Text(LOOKUP_UNTIL_KEY.into())];
        let ph = in_list(&mut b, keys.clone());
        for r in tx.rows_repeated(&format!("SELECT {REGISTRATION_COLS}, (SELECT value FROM kv WHERE key = $1) FROM registrations WHERE idem_key IN ({ph})"), &b, full).await? {
            let (reg, sealed) = sealed_registration_from_row(&*r)?;
            if let Some(until) = r.text_opt(10)? {
                out.lookup_window = until.parse::<i64>().is_ok_and(|u| u > now);
            }
            out.registrations.insert(reg.idem_key.clone(), (reg, sealed));
        }
        // Earlier attempts whose outcome we never learned, and the lookups of their versions.
        let mut b = vec![];
        let ph = in_list(&mut b, keys);
        for u in tx
            .rows_repeated(
                &format!(
                "SELECT DISTINCT a.idem_key, a.record_id, r.lookup, r.version FROM attempts a JOIN records r ON r.id = a.record_id
                     WHERE a.idem_key IN ({ph}) AND a.outcome IN ('in_flight', 'unknown', 'transient')"
                ),
                &b,
                full,
            )
            .await?
        {
            out.earlier.entry(u.text(0)?).or_default().push((u.i64(3)?, u.bytes_opt(2)?));
        }
        let mut b: Vec<Val> = vec![];
        let mut tuples = vec![];
        for (r, _) in &records {
            let base = b.len();
            tuples.push(format!("(${}, ${}, ${}, ${}, 'send', 'in_flight')", base + 1, base + 2, base + 3, base + 4));
            b.extend([Val::I64(r.id), Val::Text(r.idem_key.clone()), owner.into(), now.into()]);
        }
        for r in tx.rows_repeated(&format!("INSERT INTO attempts (record_id, idem_key, owner, started_us, operation, outcome) VALUES {} RETURNING id, record_id", tuples.join(", ")), &b, full).await? {
            out.attempt_of.insert(r.i64(1)?, r.i64(0)?);
        }
        out.records = records;
        Ok(out)
    }

    /// Decrypt what a claim read, after its transaction.
    fn open_claim(&self, mut c: SealedClaim) -> Result<Vec<Claimed>> {
        let mut out = Vec::with_capacity(c.records.len());
        for (mut record, sealed) in c.records {
            let Some((mut registration, delivered)) = c.registrations.remove(&record.idem_key) else { bail!("record {} has no registration row", record.id) };
            registration.delivered_payload = delivered.map(|b| self.cipher.decrypt_json(&super::sealed::delivered_payload(&registration.idem_key), &b)).transpose()?;
            record.payload = sealed.payload.map(|b| self.cipher.decrypt_json(&super::sealed::record_payload(&record.idem_key, record.version), &b)).transpose()?;
            record.lookup = sealed.lookup.map(|b| self.cipher.decrypt_json(&super::sealed::record_lookup(&record.idem_key, record.version), &b)).transpose()?;
            let earlier = c.earlier.remove(&record.idem_key);
            let earlier_lookups = earlier
                .as_ref()
                .map(|e| {
                    e.iter()
                        .filter_map(|(version, l)| l.as_ref().map(|l| self.cipher.decrypt_json(&super::sealed::record_lookup(&record.idem_key, *version), l)))
                        .collect::<Result<Vec<_>>>()
                })
                .transpose()?;
            // After a restore, a key the store does not know an EventID for may still be in the
            // register (made after the backup was taken): look before creating.
            let restored_unknown = c.lookup_window && registration.event_id.is_none();
            let outcome_unknown_before = earlier.is_some() || restored_unknown;
            let attempt_id = *c.attempt_of.get(&record.id).expect("an attempt row per claimed record");
            out.push(Claimed { record, registration, attempt_id, outcome_unknown_before, earlier_lookups: earlier_lookups.unwrap_or_default() });
        }
        Ok(out)
    }

    /// Renew the leases of records still being sent by `owner`.
    pub async fn heartbeat(&self, owner: &str, ids: &[i64], lease_seconds: u64) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let mut a = vec![Val::I64(lease_seconds as i64 * 1_000_000), Val::Text(owner.to_string())];
        let clock = db_clock(tx.dialect(), &mut a);
        let ph = in_list(&mut a, ids.iter().map(|i| Val::I64(*i)).collect());
        let n = tx
            .exec(&format!("UPDATE records SET lease_expires_us = {clock} + $1 WHERE lease_owner = $2 AND {BY_ID_STATE} = 'sending' AND id IN ({ph})"), &a)
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Record how an attempt ended, in one transaction with its audit events. Returns false if
    /// the lease was lost meanwhile (another replica rescued the record); the outcome is then
    /// kept on the attempt only.
    pub async fn finish(&self, claimed: &Claimed, owner: &str, outcome: Outcome) -> Result<bool> {
        Ok(self.finish_many(owner, vec![(claimed, outcome)]).await?.pop().unwrap_or(false))
    }

    /// Finish many attempts in one transaction (the delivery engine's batches), set-based: a
    /// fixed number of statements per batch whatever its size (lock the rows still ours, one
    /// multi-row update of the records, one of the registrations, the attempt rows, one audit
    /// append). Returns, per attempt, whether the lease was still ours.
    pub async fn finish_many(&self, owner: &str, done: Vec<(&Claimed, Outcome)>) -> Result<Vec<bool>> {
        if done.is_empty() {
            return Ok(vec![]);
        }
        let prepared = self.prepare_finish(done);
        let mut tx = self.begin().await?;
        let kept = self.finish_in(&mut *tx, owner, prepared, false).await?;
        tx.commit().await?;
        Ok(kept)
    }

    /// Everything about a batch's outcomes that does not need the database (the row values,
    /// the delivered payloads encrypted, the audit events), built before the transaction so the
    /// writer lock is held for the statements only.
    fn prepare_finish(&self, done: Vec<(&Claimed, Outcome)>) -> PreparedFinish {
        let now = now_us();
        let mut items = Vec::with_capacity(done.len());
        for (c, o) in done {
            let rec = &c.record;
            let (what, status, error, reg_ref, next_at): (&'static str, Option<u16>, Option<String>, Option<String>, Option<i64>) = match &o {
                Outcome::Delivered { event_id, http_status, .. } => {
                    (if rec.op == Op::Retract { "retracted" } else { "delivered" }, *http_status, None, event_id.clone().or(c.registration.event_id.clone()), None)
                }
                Outcome::Retry { http_status, error, next_at, .. } => ("retry", *http_status, Some(error.clone()), None, Some(next_at.timestamp_micros())),
                Outcome::Rejected { http_status, reason, .. } => ("rejected", *http_status, Some(reason.clone()), None, None),
                Outcome::Dead { http_status, error, .. } => ("dead", *http_status, Some(error.clone()), None, None),
            };
            let record_vals = [Val::I64(rec.id), Val::Text(what.into()), Val::from(status.map(|s| s as i64)), Val::from(error), Val::from(reg_ref), Val::from(next_at), Val::I64(rec.attempts)];
            let (op_name, att_detail, att_outcome, att_ref) = match &o {
                Outcome::Delivered { operation, detail, event_id, .. } => (operation.clone(), detail.clone(), "ok", event_id.clone()),
                Outcome::Retry { operation, error, .. } => (operation.clone(), Some(error.clone()), "transient", None),
                Outcome::Rejected { operation, reason, .. } => (operation.clone(), Some(reason.clone()), "rejected", None),
                Outcome::Dead { operation, error, .. } => (operation.clone(), Some(error.clone()), "dead", None),
            };
            let sent = NewAuditEvent::system(
                kind::ATTEMPT_SENT,
                &rec.correlation_id,
                &rec.idem_key,
                serde_json::json!({"record": rec.id, "version": rec.version, "operation": op_name, "status": status, "outcome": att_outcome, "register_ref": att_ref, "attempt": rec.attempts}),
            );
            let attempt_vals = [
                Val::I64(c.attempt_id),
                now.into(),
                op_name.into(),
                att_outcome.into(),
                status.map(|s| s as i64).into(),
                att_detail.into(),
                att_ref.into(),
            ];
            // What happens only if the lease was still ours.
            let (settles, settled_event) = match &o {
                Outcome::Delivered { event_id, .. } => (
                    true,
                    Some(NewAuditEvent::system(
                        if rec.op == Op::Retract { kind::RECORD_RETRACTED } else { kind::RECORD_DELIVERED },
                        &rec.correlation_id,
                        &rec.idem_key,
                        serde_json::json!({"record": rec.id, "version": rec.version, "register": rec.register, "form": rec.form, "register_ref": event_id.clone().or(c.registration.event_id.clone())}),
                    )),
                ),
                Outcome::Retry { .. } => (false, None),
                Outcome::Rejected { reason, .. } => {
                    (false, Some(NewAuditEvent::system(kind::RECORD_REJECTED, &rec.correlation_id, &rec.idem_key, serde_json::json!({"record": rec.id, "status": status, "reason": reason}))))
                }
                Outcome::Dead { error, .. } => (
                    false,
                    Some(NewAuditEvent::system(kind::RECORD_DEAD, &rec.correlation_id, &rec.idem_key, serde_json::json!({"record": rec.id, "status": status, "error": error, "attempts": rec.attempts}))),
                ),
            };
            // What the register now holds, for a delivered version.
            let delivered = match &o {
                Outcome::Delivered { event_id, .. } => Some(Delivered {
                    event_id: event_id.clone(),
                    sealed_payload: if rec.op == Op::Upsert { rec.payload.as_ref().map(|p| self.cipher.encrypt_json(&super::sealed::delivered_payload(&rec.idem_key), p)) } else { None },
                }),
                _ => None,
            };
            items.push(FinishItem {
                id: rec.id,
                attempts: rec.attempts,
                idem_key: rec.idem_key.clone(),
                op: rec.op,
                payload_hash: rec.payload_hash.clone(),
                record_vals,
                attempt_vals,
                sent,
                settles,
                settled_event,
                delivered,
            });
        }
        PreparedFinish { now, items }
    }

    /// The settling statements of [`Store::finish_many`], inside the caller's transaction.
    /// `full`: a full delivery batch, whose statements are kept prepared when every one of its
    /// records takes the same path (their texts then repeat batch after batch).
    async fn finish_in(&self, tx: &mut dyn Tx, owner: &str, p: PreparedFinish, full: bool) -> Result<Vec<bool>> {
        if p.items.is_empty() {
            return Ok(vec![]);
        }
        let n = p.items.len();
        let keep = |rows: usize| full && rows == n;
        let now = p.now;
        let mut b: Vec<Val> = vec![owner.into()];
        let ph = in_list(&mut b, p.items.iter().map(|i| Val::I64(i.id)).collect());
        // Lock the rows still ours (PostgreSQL) so a rescuer or another replica cannot take one
        // between this check and the update; the update below is guarded as well. "Ours" is
        // this attempt's lease: a row rescued and claimed again since (by this owner, too) has
        // counted another attempt.
        let lock = if tx.dialect() == Dialect::Postgres { " FOR UPDATE" } else { "" };
        let mut ours: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
        for r in tx.rows_repeated(&format!("SELECT id, attempts FROM records WHERE id IN ({ph}) AND {BY_ID_STATE} = 'sending' AND lease_owner = $1{lock}"), &b, keep(n)).await? {
            ours.insert(r.i64(0)?, r.i64(1)?);
        }
        let ours = |i: &FinishItem| ours.get(&i.id) == Some(&i.attempts);
        // Every state change in one guarded multi-row update: a row this worker no longer owns
        // is never touched, whatever happened since the claim. Per row: id, what happened,
        // status, error, register reference, next attempt.
        let mut vals: Vec<Val> = vec![now.into(), owner.into()];
        let mut tuples = vec![];
        for i in p.items.iter().filter(|i| ours(i)) {
            let base = vals.len();
            tuples.push(format!("(${}, ${}, ${}, ${}, ${}, ${}, ${})", base + 1, base + 2, base + 3, base + 4, base + 5, base + 6, base + 7));
            vals.extend(i.record_vals.iter().cloned());
        }
        let mut kept: std::collections::HashSet<i64> = std::collections::HashSet::new();
        if !tuples.is_empty() {
            // A retried version goes back to the queue, unless a newer version of the key is
            // waiting: then it is superseded and never sent again.
            let sql = format!(
                "UPDATE records SET
                   state = CASE WHEN v.column2 = 'retry' THEN (CASE WHEN {NEWER_EXISTS} THEN 'superseded' ELSE 'pending' END) ELSE v.column2 END,
                   lease_owner = NULL, lease_expires_us = NULL, last_status = v.column3, last_error = v.column4,
                   reason = CASE WHEN v.column2 = 'rejected' THEN v.column4 ELSE records.reason END,
                   register_ref = CASE WHEN v.column2 IN ('delivered', 'retracted') THEN v.column5 ELSE records.register_ref END,
                   next_attempt_us = CASE WHEN v.column2 = 'retry' THEN v.column6 ELSE records.next_attempt_us END,
                   delivered_us = CASE WHEN v.column2 IN ('delivered', 'retracted') THEN $1 ELSE records.delivered_us END,
                   updated_us = $1
                 FROM (VALUES {}) AS v
                 WHERE records.id = v.column1 AND {BY_ID_STATE} = 'sending' AND records.lease_owner = $2 AND records.attempts = v.column7
                 RETURNING records.id",
                tuples.join(", ")
            );
            for r in tx.rows_repeated(&sql, &vals, keep(tuples.len())).await? {
                kept.insert(r.i64(0)?);
            }
        }
        // What the register now holds, one statement per kind of change. Within a batch a key
        // appears once (claim takes one version per key); if not, the last one wins, as it
        // would with a statement per record.
        let mut present: Vec<(&str, Option<&String>, Option<&String>, Option<&Vec<u8>>)> = vec![];
        let mut retracted: Vec<&str> = vec![];
        // Too late to settle the record, but what the register told us is a fact worth keeping:
        // a create that succeeded must not be repeated by whoever sends next.
        let mut late_creates: Vec<(&str, &String, Option<&String>, Option<&Vec<u8>>)> = vec![];
        for i in &p.items {
            let Some(d) = &i.delivered else { continue };
            if kept.contains(&i.id) {
                present.retain(|x| x.0 != i.idem_key);
                retracted.retain(|k| *k != i.idem_key);
                if i.op == Op::Retract {
                    retracted.push(&i.idem_key);
                } else {
                    present.push((&i.idem_key, d.event_id.as_ref(), i.payload_hash.as_ref(), d.sealed_payload.as_ref()));
                }
            } else if let Some(eid) = &d.event_id {
                if i.op == Op::Upsert {
                    late_creates.push((&i.idem_key, eid, i.payload_hash.as_ref(), d.sealed_payload.as_ref()));
                }
            }
        }
        if !present.is_empty() {
            let rows = present.len();
            let mut a: Vec<Val> = vec![now.into()];
            let mut t = vec![];
            for (key, eid, hash, payload) in present {
                let base = a.len();
                t.push(format!("(${}, ${}, ${}, ${})", base + 1, base + 2, base + 3, base + 4));
                a.extend([Val::from(key), Val::from(eid.cloned()), Val::from(hash.cloned()), payload.map(|p| Val::Bytes(p.clone())).unwrap_or(Val::Null(super::sql::NullKind::Bytes))]);
            }
            tx.exec_repeated(
                &format!(
                    "UPDATE registrations SET event_id = COALESCE(v.column2, registrations.event_id), delivered_hash = v.column3, delivered_payload = v.column4,
                       state = 'present', updated_us = $1 FROM (VALUES {}) AS v WHERE registrations.idem_key = v.column1",
                    t.join(", ")
                ),
                &a,
                keep(rows),
            )
            .await?;
        }
        if !retracted.is_empty() {
            let mut a: Vec<Val> = vec![now.into()];
            let ph = in_list(&mut a, retracted.into_iter().map(Val::from).collect());
            tx.exec(
                &format!("UPDATE registrations SET event_id = NULL, delivered_hash = NULL, delivered_payload = NULL, state = 'retracted', updated_us = $1 WHERE idem_key IN ({ph})"),
                &a,
            )
            .await?;
        }
        for (key, eid, hash, payload) in late_creates {
            tx.exec(
                "UPDATE registrations SET event_id = $1, delivered_hash = $2, delivered_payload = $3, state = 'present', updated_us = $4 WHERE idem_key = $5 AND event_id IS NULL",
                args![eid, hash.cloned(), payload.cloned(), now, key],
            )
            .await?;
        }
        // Audit events in the order of the batch; earlier unknown outcomes of a key are settled
        // once a version is delivered.
        let mut out = Vec::with_capacity(p.items.len());
        let mut events = Vec::with_capacity(p.items.len() * 2);
        let mut settled: Vec<Val> = vec![];
        let mut attempts: Vec<Val> = vec![];
        let mut attempt_rows = vec![];
        for i in p.items {
            let still_ours = kept.contains(&i.id);
            events.push(i.sent);
            if still_ours {
                if i.settles {
                    settled.push(Val::Text(i.idem_key));
                }
                events.extend(i.settled_event);
            }
            let base = attempts.len();
            attempt_rows.push(format!("(${}, ${}, ${}, ${}, ${}, ${}, ${})", base + 1, base + 2, base + 3, base + 4, base + 5, base + 6, base + 7));
            attempts.extend(i.attempt_vals);
            out.push(still_ours);
        }
        if !settled.is_empty() {
            let rows = settled.len();
            let mut b = vec![];
            let ph = in_list(&mut b, settled);
            tx.exec_repeated(&format!("UPDATE attempts SET outcome = 'settled' WHERE idem_key IN ({ph}) AND outcome IN ('in_flight', 'unknown', 'transient')"), &b, keep(rows)).await?;
        }
        // The in-flight rows written at claim time become the final attempt rows (after the
        // settling above, which would otherwise catch them), updated in place.
        let rows = attempt_rows.len();
        tx.exec_repeated(
            &format!(
                "UPDATE attempts SET ended_us = v.column2, operation = v.column3, outcome = v.column4, http_status = v.column5, detail = v.column6, register_ref = v.column7
                 FROM (VALUES {}) AS v WHERE attempts.id = v.column1",
                attempt_rows.join(", ")
            ),
            &attempts,
            keep(rows),
        )
        .await?;
        // The audit head is locked last, after every row this transaction touches: taking it
        // early would let two transactions wait on each other (PostgreSQL deadlock). A full
        // batch delivered has two events a record, the same count (and text) every time.
        super::audit_chain::append_as(tx, self.audit_mac.as_ref(), &events, full && events.len() == 2 * n).await?;
        Ok(out)
    }

    /// Which key (if any) already holds this register reference.
    pub async fn event_id_owner(&self, register: &str, event_id: &str) -> Result<Option<String>> {
        let mut tx = self.read().await?;
        let r = tx.row("SELECT idem_key FROM registrations WHERE register = $1 AND event_id = $2 AND state = 'present'", args![register, event_id]).await?;
        r.map(|r| r.text(0)).transpose()
    }

    /// Store a register reference learned before the send finished (e.g. found by lookup after an
    /// unknown outcome), so a crash right after cannot lose it.
    pub async fn adopt_event_id(&self, idem_key: &str, event_id: &str, payload: Option<&serde_json::Map<String, serde_json::Value>>) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.exec(
            "UPDATE registrations SET event_id = $1, state = 'present', delivered_payload = COALESCE($2, delivered_payload), delivered_hash = COALESCE($3, delivered_hash), updated_us = $4 WHERE idem_key = $5",
            args![event_id, payload.map(|p| self.cipher.encrypt_json(&super::sealed::delivered_payload(idem_key), p)), payload.map(super::payload_hash), now_us(), idem_key],
        )
        .await?;
        tx.commit().await
    }

    /// Return expired leases to `pending` (or `superseded` when a newer version of the key
    /// exists). Their in-flight attempts become `unknown`, so the next send looks before it
    /// creates. "Expired" is judged by the database's clock (PostgreSQL), the one every replica
    /// set its leases by.
    pub async fn rescue_expired(&self) -> Result<u64> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let lock = if tx.dialect() == Dialect::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let mut a = vec![];
        let clock = db_clock(tx.dialect(), &mut a);
        let rows = tx
            .rows(
                &format!("SELECT id, idem_key, version, correlation_id, lease_owner, CASE WHEN {NEWER_EXISTS} THEN 1 ELSE 0 END FROM records WHERE state = 'sending' AND lease_expires_us < {clock}{lock}"),
                &a,
            )
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let mut events = vec![];
        let mut ids = vec![];
        for r in &rows {
            let (id, key, corr, owner, newer) = (r.i64(0)?, r.text(1)?, r.text(3)?, r.text_opt(4)?, r.bool(5)?);
            let state = if newer { "superseded" } else { "pending" };
            ids.push(Val::I64(id));
            events.push(NewAuditEvent::system(kind::LEASE_RESCUED, &corr, &key, serde_json::json!({"record": id, "previous_owner": owner, "now": state})));
        }
        let mut b = vec![Val::I64(now)];
        let ph = in_list(&mut b, ids.clone());
        tx.exec(
            &format!("UPDATE records SET state = CASE WHEN {NEWER_EXISTS} THEN 'superseded' ELSE 'pending' END, lease_owner = NULL, lease_expires_us = NULL, updated_us = $1 WHERE id IN ({ph})"),
            &b,
        )
        .await?;
        let mut b = vec![Val::I64(now)];
        let ph = in_list(&mut b, ids);
        tx.exec(&format!("UPDATE attempts SET outcome = 'unknown', ended_us = $1 WHERE record_id IN ({ph}) AND outcome = 'in_flight'"), &b).await?;
        self.append_audit(&mut *tx, &events).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// Give back every lease `owner` holds (graceful shutdown, once no send of `owner` is in
    /// flight) without counting an attempt. A record with a newer version waiting becomes
    /// `superseded`, never `pending` again.
    pub async fn release_leases(&self, owner: &str) -> Result<u64> {
        let now = now_us();
        let mut tx = self.begin().await?;
        tx.exec(
            "UPDATE attempts SET outcome = 'unknown', ended_us = $1 WHERE outcome = 'in_flight' AND record_id IN (SELECT id FROM records WHERE state = 'sending' AND lease_owner = $2)",
            args![now, owner],
        )
        .await?;
        let n = tx
            .exec(
                &format!("UPDATE records SET state = CASE WHEN {NEWER_EXISTS} THEN 'superseded' ELSE 'pending' END, lease_owner = NULL, lease_expires_us = NULL, updated_us = $1 WHERE state = 'sending' AND lease_owner = $2"),
                args![now, owner],
            )
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// After restoring the store from a backup: every key the register may hold without the
    /// store knowing (no EventID, and a version not yet delivered) gets an "unknown outcome"
    /// attempt, so its next send looks the registration up in the register before creating it.
    /// Keys the store never heard of (registrations made after the backup) are covered by a
    /// window of `lookup_days` in which every create without a known EventID looks first.
    /// Returns the number of keys marked.
    pub async fn mark_unknown_after_restore(&self, actor: &str, lookup_days: u32) -> Result<u64> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let rows = tx
            .rows(
                "SELECT r.id, r.idem_key FROM records r JOIN registrations g ON g.idem_key = r.idem_key
                 WHERE g.event_id IS NULL AND r.state IN ('pending', 'sending', 'rejected', 'dead')
                 AND r.version = (SELECT MAX(x.version) FROM records x WHERE x.idem_key = r.idem_key)",
                &[],
            )
            .await?;
        for r in &rows {
            tx.exec(
                "INSERT INTO attempts (record_id, idem_key, owner, started_us, ended_us, operation, outcome, detail) VALUES ($1, $2, $3, $4, $4, 'restore', 'unknown', 'store restored from a backup')",
                args![r.i64(0)?, r.text(1)?, actor, now],
            )
            .await?;
        }
        tx.exec(
            &format!("UPDATE records SET state = CASE WHEN {NEWER_EXISTS} THEN 'superseded' ELSE 'pending' END, lease_owner = NULL, lease_expires_us = NULL, updated_us = $1 WHERE state = 'sending'"),
            args![now],
        )
        .await?;
        // Registrations made after the backup are unknown to the store altogether: for a while,
        // every create of a key without an EventID looks in the register first (the re-read
        // after the restore re-creates those keys).
        let until = now + lookup_days as i64 * 86_400 * 1_000_000;
        tx.exec(
            "INSERT INTO kv (key, value, updated_us) VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_us = excluded.updated_us",
            args![LOOKUP_UNTIL_KEY, until.to_string(), now],
        )
        .await?;
        self.append_audit(
            &mut *tx,
            &[NewAuditEvent::by(
                actor,
                "store.restored",
                &crate::audit::correlation_id(),
                "outbox",
                serde_json::json!({"keys_marked_unknown": rows.len(), "lookup_before_create_until": from_us(until)}),
            )],
        )
        .await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// Who withdrew a key by hand and why, while that withdrawal holds it.
    pub async fn hold(&self, idem_key: &str) -> Result<Option<Hold>> {
        let mut tx = self.read().await?;
        let r = tx.row("SELECT held_by, held_reason, held_us FROM registrations WHERE idem_key = $1 AND held_by IS NOT NULL", args![idem_key]).await?;
        r.map(|r| Ok(Hold { idem_key: idem_key.to_string(), by: r.text(0)?, reason: r.text_opt(1)?, since: r.i64_opt(2)?.map(from_us) })).transpose()
    }

    /// Lift a person's withdrawal of a key (a person decides, with a reason; audited). What the
    /// journal said meanwhile (the newest version, kept back as `held`) is queued to be sent.
    /// `None` if the key is not held.
    pub async fn lift_hold(&self, idem_key: &str, actor: &str, reason: &str) -> Result<Option<Lifted>> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let Some(r) = tx.row("SELECT held_by, held_reason FROM registrations WHERE idem_key = $1 AND held_by IS NOT NULL", args![idem_key]).await? else {
            tx.commit().await?;
            return Ok(None);
        };
        let (by, why) = (r.text(0)?, r.text_opt(1)?);
        tx.exec("UPDATE registrations SET held_by = NULL, held_reason = NULL, held_us = NULL WHERE idem_key = $1", args![idem_key]).await?;
        let newest = tx.row("SELECT id, state FROM records WHERE idem_key = $1 ORDER BY version DESC LIMIT 1", args![idem_key]).await?;
        let mut requeued = None;
        if let Some(n) = newest {
            if n.text(1)? == "held" {
                let id = n.i64(0)?;
                tx.exec(
                    "UPDATE records SET state = 'pending', next_attempt_us = $1, first_attempt_us = NULL, attempts = 0, updated_us = $1 WHERE id = $2",
                    args![now, id],
                )
                .await?;
                requeued = Some(id);
            }
        }
        self.append_audit(
            &mut *tx,
            &[NewAuditEvent::by(
                actor,
                kind::WITHDRAWAL_LIFTED,
                &crate::audit::correlation_id(),
                idem_key,
                serde_json::json!({"reason": reason, "held_by": by, "hold_reason": why, "requeued_record": requeued}),
            )],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(Lifted { idem_key: idem_key.to_string(), requeued }))
    }

    /// Re-queue rejected or dead records (the latest version of their key only), recording who
    /// and why. Returns the ids re-queued.
    pub async fn replay(&self, ids: &[i64], actor: &str, reason: &str) -> Result<Vec<i64>> {
        let now = now_us();
        let corr = crate::audit::correlation_id();
        let mut tx = self.begin().await?;
        let mut done = vec![];
        let mut events = vec![];
        for id in ids {
            let Some(r) = tx.row("SELECT idem_key, version, state FROM records WHERE id = $1", args![*id]).await? else { continue };
            let (key, version, state) = (r.text(0)?, r.i64(1)?, r.text(2)?);
            if state != "rejected" && state != "dead" {
                continue;
            }
            let newer = tx.row("SELECT 1 FROM records WHERE idem_key = $1 AND version > $2", args![&key, version]).await?.is_some();
            if newer {
                continue;
            }
            tx.exec(
                "UPDATE records SET state = 'pending', next_attempt_us = $1, first_attempt_us = NULL, attempts = 0, reason = NULL, updated_us = $1 WHERE id = $2",
                args![now, *id],
            )
            .await?;
            events.push(NewAuditEvent::by(actor, kind::REPLAY, &corr, &key, serde_json::json!({"record": id, "from_state": state, "reason": reason})));
            done.push(*id);
        }
        self.append_audit(&mut *tx, &events).await?;
        tx.commit().await?;
        Ok(done)
    }
}

/// `kv` key: until when (µs) creates of keys without an EventID look in the register first.
const LOOKUP_UNTIL_KEY: &str = "outbox.lookup_before_create_until_us";

/// SQL: a record's state where the rows are already named by id. The planners would otherwise
/// read the rows of that state through a state index (on PostgreSQL including every dead row
/// version the outbox's updates leave behind until vacuum: 10,000 index entries and 1,147 heap
/// pages for a batch of 64, 16 ms per statement) instead of looking the ids up by primary key.
/// An expression no index serves keeps them on the key (BENCHMARKS.md, issue 18).
const BY_ID_STATE: &str = "COALESCE(records.state, '')";

/// SQL (in an `UPDATE records` or `SELECT … FROM records`): a newer version of the row's key
/// exists, whatever its state.
const NEWER_EXISTS: &str = "EXISTS (SELECT 1 FROM records n WHERE n.idem_key = records.idem_key AND n.version > records.version)";

/// The database's clock in microseconds, for lease times. PostgreSQL: an expression on the
/// server's clock, which every replica shares. SQLite runs inside this process, so its clock is
/// this process's: a bound parameter.
pub(super) fn db_clock(dialect: Dialect, params: &mut Vec<Val>) -> String {
    match dialect {
        Dialect::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT".into(),
        Dialect::Sqlite => {
            params.push(Val::I64(now_us()));
            format!("${}", params.len())
        }
    }
}

impl Store {
    async fn append_audit(&self, tx: &mut dyn Tx, events: &[NewAuditEvent]) -> Result<()> {
        super::audit_chain::append(tx, self.audit_mac.as_ref(), events).await
    }
}

/// The audit event of a version kept back because a person's withdrawal holds its key.
fn held_event(key: &RecordKey, version: i64, correlation_id: &str, by: &str, reason: &Option<String>) -> NewAuditEvent {
    NewAuditEvent::system(
        kind::RECORD_HELD,
        correlation_id,
        &key.idem_key,
        serde_json::json!({"version": version, "register": key.register, "form": key.form, "held_by": by, "hold_reason": reason,
            "why": "withdrawn by a person: not sent until a person lifts the hold"}),
    )
}

/// Append `vals` to the parameter list and return their placeholders (`$n, $n+1, …`).
pub(super) fn in_list(params: &mut Vec<Val>, vals: Vec<Val>) -> String {
    let mut ph = Vec::with_capacity(vals.len());
    for v in vals {
        params.push(v);
        ph.push(format!("${}", params.len()));
    }
    ph.join(", ")
}

pub(super) async fn insert_returning_id(tx: &mut dyn Tx, sql: &str, a: &[Val]) -> Result<i64> {
    let r = tx.row(&format!("{sql} RETURNING id"), a).await?.expect("RETURNING gives a row");
    r.i64(0)
}

/// Upserts of distinct keys, set-based: one query for the keys' latest versions and holds, one
/// multi-row insert of new registrations, one update superseding older unsent versions, one
/// multi-row insert of the new versions. Same outcome, counts and audit events, in the same
/// order, as [`apply_change`] one change at a time (the caller makes sure no key repeats).
pub(super) async fn apply_upserts(store: &Store, tx: &mut dyn Tx, changes: &[&OutboxChange], now: i64, out: &mut ApplyOutcome, audit: &mut Vec<NewAuditEvent>) -> Result<()> {
    struct Latest {
        version: i64,
        state: String,
        op: String,
        hash: Option<String>,
        held: Option<(String, Option<String>)>,
    }
    let ups: Vec<(&RecordKey, &serde_json::Map<String, serde_json::Value>, &serde_json::Map<String, serde_json::Value>, &str, &serde_json::Value)> = changes
        .iter()
        .filter_map(|c| match c {
            OutboxChange::Upsert { key, payload, lookup, correlation_id, detail } => Some((key, payload, lookup, correlation_id.as_str(), detail)),
            OutboxChange::Retract { .. } => None,
        })
        .collect();
    if ups.is_empty() {
        return Ok(());
    }
    // The latest version of each key, and whether a person's withdrawal holds it.
    let mut a = vec![];
    let ph = in_list(&mut a, ups.iter().map(|u| Val::Text(u.0.idem_key.clone())).collect());
    let mut latest: std::collections::HashMap<String, Latest> = Default::default();
    for l in tx
        .rows(
            &format!(
                "SELECT r.idem_key, r.version, r.state, r.op, r.payload_hash, g.held_by, g.held_reason FROM records r JOIN registrations g ON g.idem_key = r.idem_key
                 WHERE r.idem_key IN ({ph}) AND r.version = (SELECT MAX(m.version) FROM records m WHERE m.idem_key = r.idem_key)"
            ),
            &a,
        )
        .await?
    {
        let held = l.text_opt(5)?.map(|by| Ok::<_, anyhow::Error>((by, l.text_opt(6)?))).transpose()?;
        latest.insert(l.text(0)?, Latest { version: l.i64(1)?, state: l.text(2)?, op: l.text(3)?, hash: l.text_opt(4)?, held });
    }
    let mut new_regs: Vec<Val> = vec![Val::I64(now)];
    let mut reg_rows = vec![];
    let mut superseded: Vec<Val> = vec![Val::I64(now)];
    let mut superseded_n = 0;
    let mut rec_vals: Vec<Val> = vec![Val::I64(now)];
    let mut rec_rows = vec![];
    for (key, payload, lookup, correlation_id, detail) in ups {
        let hash = payload_hash(payload);
        let l = latest.get(&key.idem_key);
        if let Some(l) = l {
            if l.op == "upsert" && l.hash.as_deref() == Some(hash.as_str()) && l.state != "superseded" {
                out.outbox_unchanged += 1;
                continue;
            }
        } else {
            let b = new_regs.len();
            reg_rows.push(format!("(${}, ${}, ${}, ${}, ${}, ${}, 'absent', $1)", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6));
            new_regs.extend([Val::from(&key.idem_key), Val::from(&key.register), Val::from(&key.connector), Val::from(&key.unit), Val::from(&key.form), Val::from(key.subject.clone())]);
        }
        // Unsent and failed older versions are replaced by this one; one in flight finishes
        // first and is then superseded (claim takes only the newest version).
        superseded.push(Val::from(&key.idem_key));
        superseded_n += 1;
        let version = l.map_or(1, |l| l.version + 1);
        let held = l.and_then(|l| l.held.clone());
        // A key a person withdrew keeps what the journal now says, but sends nothing until a
        // person lifts the hold.
        let state = if held.is_some() { "held" } else { "pending" };
        let b = rec_vals.len();
        rec_rows.push(format!(
            "(${}, ${}, ${}, ${}, ${}, ${}, ${}, 'upsert', ${}, ${}, ${}, ${}, $1, ${}, $1, $1)",
            b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8, b + 9, b + 10, b + 11, b + 12
        ));
        rec_vals.extend([
            Val::from(&key.idem_key),
            Val::I64(version),
            Val::from(&key.register),
            Val::from(&key.connector),
            Val::from(&key.unit),
            Val::from(&key.form),
            Val::from(key.subject.clone()),
            Val::Bytes(store.cipher.encrypt_json(&super::sealed::record_payload(&key.idem_key, version), payload)),
            Val::from(hash),
            Val::Bytes(store.cipher.encrypt_json(&super::sealed::record_lookup(&key.idem_key, version), lookup)),
            Val::from(state),
            Val::from(correlation_id),
        ]);
        if let Some((by, reason)) = held {
            out.outbox_held += 1;
            audit.push(held_event(key, version, correlation_id, &by, &reason));
            continue;
        }
        let (k, counter) = if l.is_some() { (kind::RECORD_UPDATED, &mut out.outbox_updated) } else { (kind::RECORD_CREATED, &mut out.outbox_created) };
        *counter += 1;
        audit.push(NewAuditEvent::system(k, correlation_id, &key.idem_key, serde_json::json!({"version": version, "register": key.register, "form": key.form, "unit": key.unit, "why": detail})));
    }
    if !reg_rows.is_empty() {
        tx.exec(
            &format!("INSERT INTO registrations (idem_key, register, connector, unit, form, subject, state, updated_us) VALUES {} ON CONFLICT (idem_key) DO NOTHING", reg_rows.join(", ")),
            &new_regs,
        )
        .await?;
    }
    if superseded_n > 0 {
        let ph = (2..superseded_n + 2).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        tx.exec(&format!("UPDATE records SET state = 'superseded', updated_us = $1 WHERE idem_key IN ({ph}) AND state IN ('pending', 'rejected', 'dead', 'held')"), &superseded).await?;
    }
    if !rec_rows.is_empty() {
        tx.exec(
            &format!(
                "INSERT INTO records (idem_key, version, register, connector, unit, form, subject, op, payload, payload_hash, lookup, state, next_attempt_us, correlation_id, created_us, updated_us)
                 VALUES {}",
                rec_rows.join(", ")
            ),
            &rec_vals,
        )
        .await?;
    }
    Ok(())
}

/// The outbox half of `Store::apply`.
pub(super) async fn apply_change(store: &Store, tx: &mut dyn Tx, change: &OutboxChange, now: i64, out: &mut ApplyOutcome, audit: &mut Vec<NewAuditEvent>) -> Result<()> {
    match change {
        OutboxChange::Upsert { key, payload, lookup, correlation_id, detail } => {
            let hash = payload_hash(payload);
            // The latest version, and whether a person's withdrawal holds the key.
            let latest = tx
                .row(
                    "SELECT r.id, r.version, r.state, r.op, r.payload_hash, g.held_by, g.held_reason FROM records r JOIN registrations g ON g.idem_key = r.idem_key
                     WHERE r.idem_key = $1 ORDER BY r.version DESC LIMIT 1",
                    args![&key.idem_key],
                )
                .await?;
            let mut version = 1;
            let mut is_update = false;
            let mut held: Option<(String, Option<String>)> = None;
            if let Some(l) = &latest {
                let (state, op, lhash) = (l.text(2)?, l.text(3)?, l.text_opt(4)?);
                if op == "upsert" && lhash.as_deref() == Some(hash.as_str()) && state != "superseded" {
                    out.outbox_unchanged += 1;
                    return Ok(());
                }
                version = l.i64(1)? + 1;
                is_update = true;
                held = l.text_opt(5)?.map(|by| Ok::<_, anyhow::Error>((by, l.text_opt(6)?))).transpose()?;
            } else {
                tx.exec(
                    "INSERT INTO registrations (idem_key, register, connector, unit, form, subject, state, updated_us) VALUES ($1, $2, $3, $4, $5, $6, 'absent', $7)
                     ON CONFLICT (idem_key) DO NOTHING",
                    args![&key.idem_key, &key.register, &key.connector, &key.unit, &key.form, key.subject.clone(), now],
                )
                .await?;
            }
            // Unsent and failed older versions are replaced by this one; one in flight finishes
            // first and is then superseded (claim takes only the newest version).
            tx.exec(
                "UPDATE records SET state = 'superseded', updated_us = $1 WHERE idem_key = $2 AND state IN ('pending', 'rejected', 'dead', 'held')",
                args![now, &key.idem_key],
            )
            .await?;
            // A key a person withdrew keeps what the journal now says, but sends nothing until a
            // person lifts the hold.
            let state = if held.is_some() { "held" } else { "pending" };
            tx.exec(
                "INSERT INTO records (idem_key, version, register, connector, unit, form, subject, op, payload, payload_hash, lookup, state, next_attempt_us, correlation_id, created_us, updated_us)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'upsert', $8, $9, $10, $13, $11, $12, $11, $11)",
                args![
                    &key.idem_key,
                    version,
                    &key.register,
                    &key.connector,
                    &key.unit,
                    &key.form,
                    key.subject.clone(),
                    store.cipher.encrypt_json(&super::sealed::record_payload(&key.idem_key, version), payload),
                    &hash,
                    store.cipher.encrypt_json(&super::sealed::record_lookup(&key.idem_key, version), lookup),
                    now,
                    correlation_id,
                    state
                ],
            )
            .await?;
            if let Some((by, reason)) = held {
                out.outbox_held += 1;
                audit.push(held_event(key, version, correlation_id, &by, &reason));
                return Ok(());
            }
            let (k, counter) = if is_update { (kind::RECORD_UPDATED, &mut out.outbox_updated) } else { (kind::RECORD_CREATED, &mut out.outbox_created) };
            *counter += 1;
            audit.push(NewAuditEvent::system(k, correlation_id, &key.idem_key, serde_json::json!({"version": version, "register": key.register, "form": key.form, "unit": key.unit, "why": detail})));
        }
        OutboxChange::Retract { idem_key, reason, correlation_id, actor } => {
            let latest = tx
                .row(
                    "SELECT r.id, r.version, r.state, r.op, g.held_by FROM records r JOIN registrations g ON g.idem_key = r.idem_key
                     WHERE r.idem_key = $1 ORDER BY r.version DESC LIMIT 1",
                    args![idem_key],
                )
                .await?;
            let Some(l) = latest else {
                out.outbox_unchanged += 1;
                return Ok(());
            };
            let (version, state, op, held_by) = (l.i64(1)?, l.text(2)?, l.text(3)?, l.text_opt(4)?);
            // A withdrawal made by a person holds the key until a person lifts it: the journal
            // can no longer bring the registration back on its own.
            if actor != crate::audit::SYSTEM && held_by.is_none() {
                tx.exec("UPDATE registrations SET held_by = $1, held_reason = $2, held_us = $3 WHERE idem_key = $4", args![actor, reason, now, idem_key]).await?;
                audit.push(NewAuditEvent::by(actor, kind::WITHDRAWAL_HOLD, correlation_id, idem_key, serde_json::json!({"reason": reason, "until": "a person lifts the hold"})));
            }
            if op == "retract" && state != "superseded" {
                out.outbox_unchanged += 1;
                return Ok(());
            }
            let reg = store.registration_in(tx, idem_key).await?.expect("registration exists for a record");
            let in_flight = tx.row("SELECT 1 FROM records WHERE idem_key = $1 AND state = 'sending'", args![idem_key]).await?.is_some();
            let unknown = tx
                .row("SELECT 1 FROM attempts WHERE idem_key = $1 AND outcome IN ('in_flight', 'unknown', 'transient')", args![idem_key])
                .await?
                .is_some();
            tx.exec(
                "UPDATE records SET state = 'superseded', updated_us = $1 WHERE idem_key = $2 AND state IN ('pending', 'rejected', 'dead', 'held')",
                args![now, idem_key],
            )
            .await?;
            // Nothing can be in the register: the retraction is complete at once.
            let needs_send = reg.event_id.is_some() || in_flight || unknown;
            let state = if needs_send { "pending" } else { "retracted" };
            tx.exec(
                "INSERT INTO records (idem_key, version, register, connector, unit, form, subject, op, state, reason, next_attempt_us, correlation_id, created_us, updated_us)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'retract', $8, $9, $10, $11, $10, $10)",
                args![idem_key, version + 1, &reg.register, &reg.connector, &reg.unit, &reg.form, reg.subject.clone(), state, reason, now, correlation_id],
            )
            .await?;
            if !needs_send {
                tx.exec("UPDATE registrations SET state = 'retracted', updated_us = $1 WHERE idem_key = $2", args![now, idem_key]).await?;
            }
            out.outbox_retracted += 1;
            audit.push(NewAuditEvent::by(actor, kind::RECORD_RETRACTED, correlation_id, idem_key, serde_json::json!({"version": version + 1, "reason": reason, "send_delete": needs_send})));
        }
    }
    Ok(())
}
