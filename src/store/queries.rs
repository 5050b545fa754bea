//! Runs, schedule ticks, connector leases, and the read side used by the CLI and admin pages.

use super::outbox::{insert_returning_id, OutboxRecord, RecordState, RECORD_COLS};
use super::sql::Val;
use super::{from_us, now_us, Store};
use crate::args;
use crate::audit::{kind, NewAuditEvent};
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub id: i64,
    pub connector: String,
    pub kind: String,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub started: DateTime<Utc>,
    pub ended: Option<DateTime<Utc>>,
    pub status: String,
    pub owner: String,
    pub correlation_id: String,
    pub stats: serde_json::Value,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecordFilter {
    pub connector: Option<String>,
    pub register: Option<String>,
    pub unit: Option<String>,
    pub form: Option<String>,
    pub state: Option<RecordState>,
    pub idem_key: Option<String>,
    /// Only the latest version of each key (what an operator usually wants to see).
    #[serde(default)]
    pub latest_only: bool,
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub id: i64,
    pub record_id: i64,
    pub owner: String,
    pub started: DateTime<Utc>,
    pub ended: Option<DateTime<Utc>>,
    pub operation: String,
    pub outcome: String,
    pub http_status: Option<i64>,
    pub detail: Option<String>,
    pub register_ref: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct QuarantineItem {
    pub id: i64,
    pub connector: String,
    pub run_id: Option<i64>,
    pub at: DateTime<Utc>,
    pub document: String,
    pub field: String,
    pub reason: String,
    pub patient_key: Option<String>,
    pub resolved: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorklistItem {
    pub idem_key: String,
    pub connector: String,
    pub unit: String,
    pub form: String,
    pub patient_key: String,
    /// Decrypted patient identity; only shown to users with the patient-data right.
    #[serde(skip)]
    pub patient: Option<crate::model::PatientId>,
    pub missing: Vec<String>,
    pub event_date: Option<String>,
    pub since: DateTime<Utc>,
    /// Marked as handled outside the system: when, by whom, why (absent on open items).
    pub handled: Option<WorklistHandled>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorklistHandled {
    pub at: DateTime<Utc>,
    pub by: String,
    pub reason: String,
}

impl Store {
    // ------------------------------------------------------------------ runs

    pub async fn start_run(&self, connector: &str, kind_: &str, scheduled_for: Option<DateTime<Utc>>, owner: &str, correlation_id: &str) -> Result<i64> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let id = insert_returning_id(
            &mut *tx,
            "INSERT INTO runs (connector, kind, scheduled_for_us, started_us, status, owner, correlation_id, stats) VALUES ($1, $2, $3, $4, 'running', $5, $6, '{}')",
            args![connector, kind_, scheduled_for.map(|t| t.timestamp_micros()), now, owner, correlation_id],
        )
        .await?;
        super::audit_chain::append(
            &mut *tx,
            self.audit_mac.as_ref(),
            &[NewAuditEvent::system(kind::RUN_STARTED, correlation_id, connector, serde_json::json!({"run": id, "kind": kind_, "owner": owner, "scheduled_for": scheduled_for}))],
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn finish_run(&self, id: i64, status: &str, stats: &serde_json::Value, error: Option<&str>) -> Result<()> {
        let mut tx = self.begin().await?;
        let r = tx.row("SELECT connector, correlation_id FROM runs WHERE id = $1", args![id]).await?;
        tx.exec(
            "UPDATE runs SET ended_us = $1, status = $2, stats = $3, error = $4 WHERE id = $5",
            args![now_us(), status, serde_json::to_string(stats)?, error.map(|e| e.to_string()), id],
        )
        .await?;
        if let Some(r) = r {
            super::audit_chain::append(
                &mut *tx,
                self.audit_mac.as_ref(),
                &[NewAuditEvent::system(kind::RUN_ENDED, &r.text(1)?, r.text(0)?, serde_json::json!({"run": id, "status": status, "stats": stats, "error": error}))],
            )
            .await?;
        }
        tx.commit().await
    }

    pub async fn update_run_stats(&self, id: i64, stats: &serde_json::Value) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.exec("UPDATE runs SET stats = $1 WHERE id = $2", args![serde_json::to_string(stats)?, id]).await?;
        tx.commit().await
    }

    pub async fn runs(&self, connector: Option<&str>, limit: i64) -> Result<Vec<Run>> {
        let mut tx = self.read().await?;
        let rows = match connector {
            Some(c) => tx.rows(
                "SELECT id, connector, kind, scheduled_for_us, started_us, ended_us, status, owner, correlation_id, stats, error FROM runs WHERE connector = $1 ORDER BY id DESC LIMIT $2",
                args![c, limit],
            ).await?,
            None => tx.rows(
                "SELECT id, connector, kind, scheduled_for_us, started_us, ended_us, status, owner, correlation_id, stats, error FROM runs ORDER BY id DESC LIMIT $1",
                args![limit],
            ).await?,
        };
        rows.iter()
            .map(|r| {
                Ok(Run {
                    id: r.i64(0)?,
                    connector: r.text(1)?,
                    kind: r.text(2)?,
                    scheduled_for: r.i64_opt(3)?.map(from_us),
                    started: from_us(r.i64(4)?),
                    ended: r.i64_opt(5)?.map(from_us),
                    status: r.text(6)?,
                    owner: r.text(7)?,
                    correlation_id: r.text(8)?,
                    stats: serde_json::from_str(&r.text(9)?).unwrap_or_default(),
                    error: r.text_opt(10)?,
                })
            })
            .collect()
    }

    // ------------------------------------------------------------------ schedule ticks

    /// Claim a schedule tick. Exactly one caller (across replicas) gets `true` for a given
    /// (connector, scheduled_for): the primary key decides.
    pub async fn claim_tick(&self, connector: &str, scheduled_for: DateTime<Utc>, owner: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = tx
            .exec(
                "INSERT INTO ticks (connector, scheduled_for_us, claimed_by, claimed_us) VALUES ($1, $2, $3, $4) ON CONFLICT (connector, scheduled_for_us) DO NOTHING",
                args![connector, scheduled_for.timestamp_micros(), owner, now_us()],
            )
            .await?;
        if n == 1 {
            super::audit_chain::append(
                &mut *tx,
                self.audit_mac.as_ref(),
                &[NewAuditEvent::system(kind::TICK_FIRED, &crate::audit::correlation_id(), connector, serde_json::json!({"scheduled_for": scheduled_for, "owner": owner}))],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    pub async fn set_tick_run(&self, connector: &str, scheduled_for: DateTime<Utc>, run_id: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.exec("UPDATE ticks SET run_id = $1 WHERE connector = $2 AND scheduled_for_us = $3", args![run_id, connector, scheduled_for.timestamp_micros()]).await?;
        tx.commit().await
    }

    /// The latest tick claimed for a connector.
    pub async fn last_tick(&self, connector: &str) -> Result<Option<DateTime<Utc>>> {
        let mut tx = self.read().await?;
        let r = tx.row("SELECT MAX(scheduled_for_us) FROM ticks WHERE connector = $1", args![connector]).await?;
        Ok(r.and_then(|r| r.i64_opt(0).ok().flatten()).map(from_us))
    }

    /// All ticks of a connector (oldest first) with who claimed them.
    pub async fn ticks(&self, connector: &str) -> Result<Vec<(DateTime<Utc>, String)>> {
        let mut tx = self.read().await?;
        let rows = tx.rows("SELECT scheduled_for_us, claimed_by FROM ticks WHERE connector = $1 ORDER BY scheduled_for_us", args![connector]).await?;
        rows.iter().map(|r| Ok((from_us(r.i64(0)?), r.text(1)?))).collect()
    }

    // ------------------------------------------------------------------ connector leases

    /// Take the lease that keeps one run of a connector at a time across replicas: only when
    /// nobody holds it or the holder's lease has expired. A holder asking again is refused like
    /// anyone else (two runs in one replica must not overlap either); it renews with
    /// [`Store::renew_connector_lease`]. Expiry is judged by the database's clock.
    pub async fn acquire_connector_lease(&self, connector: &str, owner: &str, ttl_seconds: u64) -> Result<bool> {
        let mut tx = self.begin().await?;
        let mut a = vec![Val::from(connector), Val::from(owner), Val::I64(ttl_seconds as i64 * 1_000_000)];
        let clock = super::outbox::db_clock(tx.dialect(), &mut a);
        let n = tx
            .exec(
                &format!(
                    "INSERT INTO connector_leases (connector, owner, expires_us) VALUES ($1, $2, {clock} + $3)
                     ON CONFLICT (connector) DO UPDATE SET owner = excluded.owner, expires_us = excluded.expires_us
                     WHERE connector_leases.expires_us < {clock}"
                ),
                &a,
            )
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Extend a connector lease `owner` holds. False if it is no longer theirs.
    pub async fn renew_connector_lease(&self, connector: &str, owner: &str, ttl_seconds: u64) -> Result<bool> {
        let mut tx = self.begin().await?;
        let mut a = vec![Val::from(connector), Val::from(owner), Val::I64(ttl_seconds as i64 * 1_000_000)];
        let clock = super::outbox::db_clock(tx.dialect(), &mut a);
        let n = tx.exec(&format!("UPDATE connector_leases SET expires_us = {clock} + $3 WHERE connector = $1 AND owner = $2"), &a).await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    pub async fn release_connector_lease(&self, connector: &str, owner: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        tx.exec("DELETE FROM connector_leases WHERE connector = $1 AND owner = $2", args![connector, owner]).await?;
        tx.commit().await
    }

    // ------------------------------------------------------------------ records (read side)

    pub async fn records(&self, f: &RecordFilter) -> Result<Vec<OutboxRecord>> {
        let mut sql = format!("SELECT {RECORD_COLS} FROM records r WHERE 1 = 1");
        let mut a: Vec<Val> = vec![];
        let mut add = |sql: &mut String, cond: &str, v: Val| {
            a.push(v);
            sql.push_str(&format!(" AND {cond} ${}", a.len()));
        };
        if let Some(v) = &f.connector {
            add(&mut sql, "connector =", Val::Text(v.clone()));
        }
        if let Some(v) = &f.register {
            add(&mut sql, "register =", Val::Text(v.clone()));
        }
        if let Some(v) = &f.unit {
            add(&mut sql, "unit =", Val::Text(v.clone()));
        }
        if let Some(v) = &f.form {
            add(&mut sql, "form =", Val::Text(v.clone()));
        }
        if let Some(v) = f.state {
            add(&mut sql, "state =", Val::Text(v.as_str().into()));
        }
        if let Some(v) = &f.idem_key {
            add(&mut sql, "idem_key =", Val::Text(v.clone()));
        }
        if let Some(v) = f.from_us {
            add(&mut sql, "updated_us >=", Val::I64(v));
        }
        if let Some(v) = f.to_us {
            add(&mut sql, "updated_us <", Val::I64(v));
        }
        if f.latest_only {
            sql.push_str(" AND r.version = (SELECT MAX(x.version) FROM records x WHERE x.idem_key = r.idem_key)");
        }
        a.push(Val::I64(f.limit.unwrap_or(100).min(100_000)));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", a.len()));
        a.push(Val::I64(f.offset.unwrap_or(0)));
        sql.push_str(&format!(" OFFSET ${}", a.len()));
        let mut tx = self.read().await?;
        let rows = tx.rows(&sql, &a).await?;
        rows.iter().map(|r| self.record_from_row(&**r)).collect()
    }

    pub async fn record(&self, id: i64) -> Result<Option<OutboxRecord>> {
        let mut tx = self.read().await?;
        let r = tx.row(&format!("SELECT {RECORD_COLS} FROM records WHERE id = $1"), args![id]).await?;
        r.map(|r| self.record_from_row(&*r)).transpose()
    }

    /// Every version of a key, oldest first.
    pub async fn record_versions(&self, idem_key: &str) -> Result<Vec<OutboxRecord>> {
        let mut tx = self.read().await?;
        let rows = tx.rows(&format!("SELECT {RECORD_COLS} FROM records WHERE idem_key = $1 ORDER BY version"), args![idem_key]).await?;
        rows.iter().map(|r| self.record_from_row(&**r)).collect()
    }

    pub async fn attempts(&self, idem_key: &str) -> Result<Vec<Attempt>> {
        let mut tx = self.read().await?;
        let rows = tx
            .rows(
                // Through the key's records: attempts are indexed by key only while open
                // (migration 0009 SQLite, 0010 PostgreSQL), and every attempt names its record.
                "SELECT id, record_id, owner, started_us, ended_us, operation, outcome, http_status, detail, register_ref FROM attempts
                 WHERE record_id IN (SELECT id FROM records WHERE idem_key = $1) ORDER BY id",
                args![idem_key],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Attempt {
                    id: r.i64(0)?,
                    record_id: r.i64(1)?,
                    owner: r.text(2)?,
                    started: from_us(r.i64(3)?),
                    ended: r.i64_opt(4)?.map(from_us),
                    operation: r.text(5)?,
                    outcome: r.text(6)?,
                    http_status: r.i64_opt(7)?,
                    detail: r.text_opt(8)?,
                    register_ref: r.text_opt(9)?,
                })
            })
            .collect()
    }

    /// Count of latest-version records by state (optionally for one register).
    pub async fn state_counts(&self, register: Option<&str>) -> Result<Vec<(RecordState, i64)>> {
        let mut tx = self.read().await?;
        let rows = match register {
            Some(r) => tx.rows("SELECT state, COUNT(*) FROM records WHERE register = $1 GROUP BY state", args![r]).await?,
            None => tx.rows("SELECT state, COUNT(*) FROM records GROUP BY state", &[]).await?,
        };
        rows.iter().map(|r| Ok((RecordState::parse(&r.text(0)?)?, r.i64(1)?))).collect()
    }

    /// Records ready to send now (queue depth).
    pub async fn queue_depth(&self) -> Result<i64> {
        let mut tx = self.read().await?;
        let r = tx.row("SELECT COUNT(*) FROM records WHERE state IN ('pending', 'sending')", &[]).await?;
        Ok(r.map(|r| r.i64(0)).transpose()?.unwrap_or(0))
    }

    /// Pending records due now (not waiting for a later retry).
    pub async fn due_now_count(&self) -> Result<i64> {
        let mut tx = self.read().await?;
        let r = tx.row("SELECT COUNT(*) FROM records WHERE state = 'pending' AND next_attempt_us <= $1", args![now_us()]).await?;
        Ok(r.map(|r| r.i64(0)).transpose()?.unwrap_or(0))
    }

    /// Per day (UTC date) and register: delivered and failed records, for the overview chart.
    pub async fn daily_outcomes(&self, since_us: i64) -> Result<Vec<(String, String, i64, i64)>> {
        let mut tx = self.read().await?;
        let rows = tx
            .rows("SELECT register, state, updated_us FROM records WHERE updated_us >= $1 AND state IN ('delivered', 'retracted', 'rejected', 'dead')", args![since_us])
            .await?;
        let mut map: std::collections::BTreeMap<(String, String), (i64, i64)> = Default::default();
        for r in &rows {
            let day = from_us(r.i64(2)?).format("%Y-%m-%d").to_string();
            let e = map.entry((day, r.text(0)?)).or_default();
            match r.text(1)?.as_str() {
                "delivered" | "retracted" => e.0 += 1,
                _ => e.1 += 1,
            }
        }
        Ok(map.into_iter().map(|((d, reg), (ok, bad))| (d, reg, ok, bad)).collect())
    }

    // ------------------------------------------------------------------ quarantine

    pub async fn quarantine(&self, connector: Option<&str>, open_only: bool, limit: i64) -> Result<Vec<QuarantineItem>> {
        let mut sql = String::from("SELECT id, connector, run_id, at_us, document, field, reason, patient_key, resolved_us, resolved_by FROM quarantine WHERE 1 = 1");
        let mut a = vec![];
        if let Some(c) = connector {
            a.push(Val::Text(c.into()));
            sql.push_str(&format!(" AND connector = ${}", a.len()));
        }
        if open_only {
            sql.push_str(" AND resolved_us IS NULL");
        }
        a.push(Val::I64(limit));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", a.len()));
        let mut tx = self.read().await?;
        let rows = tx.rows(&sql, &a).await?;
        rows.iter()
            .map(|r| {
                Ok(QuarantineItem {
                    id: r.i64(0)?,
                    connector: r.text(1)?,
                    run_id: r.i64_opt(2)?,
                    at: from_us(r.i64(3)?),
                    document: r.text(4)?,
                    field: r.text(5)?,
                    reason: r.text(6)?,
                    patient_key: r.text_opt(7)?,
                    resolved: r.i64_opt(8)?.map(from_us),
                    resolved_by: r.text_opt(9)?,
                })
            })
            .collect()
    }

    pub async fn resolve_quarantine(&self, id: i64, actor: &str, note: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = tx.exec("UPDATE quarantine SET resolved_us = $1, resolved_by = $2 WHERE id = $3 AND resolved_us IS NULL", args![now_us(), actor, id]).await?;
        if n == 1 {
            super::audit_chain::append(
                &mut *tx,
                self.audit_mac.as_ref(),
                &[NewAuditEvent::by(actor, kind::QUARANTINE_RESOLVED, &crate::audit::correlation_id(), format!("quarantine:{id}"), serde_json::json!({"note": note}))],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    // ------------------------------------------------------------------ worklist

    /// The open worklist (items marked as handled outside the system are left out).
    pub async fn worklist(&self, connector: Option<&str>, unit: Option<&str>) -> Result<Vec<WorklistItem>> {
        self.worklist_items(connector, unit, false).await
    }

    /// The open worklist, or (`handled`) the items marked as handled outside the system.
    pub async fn worklist_items(&self, connector: Option<&str>, unit: Option<&str>, handled: bool) -> Result<Vec<WorklistItem>> {
        let mut sql = String::from(
            "SELECT idem_key, connector, unit, form, patient_key, patient_ref, missing, event_date, since_us, handled_us, handled_by, handled_reason FROM worklist WHERE 1 = 1",
        );
        sql.push_str(if handled { " AND handled_us IS NOT NULL" } else { " AND handled_us IS NULL" });
        let mut a = vec![];
        if let Some(c) = connector {
            a.push(Val::Text(c.into()));
            sql.push_str(&format!(" AND connector = ${}", a.len()));
        }
        if let Some(u) = unit {
            a.push(Val::Text(u.into()));
            sql.push_str(&format!(" AND unit = ${}", a.len()));
        }
        sql.push_str(" ORDER BY unit, since_us");
        let mut tx = self.read().await?;
        let rows = tx.rows(&sql, &a).await?;
        rows.iter()
            .map(|r| {
                Ok(WorklistItem {
                    idem_key: r.text(0)?,
                    connector: r.text(1)?,
                    unit: r.text(2)?,
                    form: r.text(3)?,
                    patient_key: r.text(4)?,
                    patient: Some(self.cipher.decrypt_json(&super::sealed::worklist_patient(&r.text(0)?), &r.bytes(5)?)?),
                    missing: serde_json::from_str(&r.text(6)?).unwrap_or_default(),
                    event_date: r.text_opt(7)?,
                    since: from_us(r.i64(8)?),
                    handled: match r.i64_opt(9)? {
                        Some(at) => Some(WorklistHandled { at: from_us(at), by: r.text_opt(10)?.unwrap_or_default(), reason: r.text_opt(11)?.unwrap_or_default() }),
                        None => None,
                    },
                })
            })
            .collect()
    }

    /// Mark an open worklist item as handled outside the system (a clinic decided not to
    /// complete it), audited as `worklist.handled` with the reason. `false` when there is no
    /// such open item. The mark holds until the item's data changes (see `apply`).
    pub async fn worklist_mark_handled(&self, idem_key: &str, actor: &str, reason: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = tx
            .exec("UPDATE worklist SET handled_us = $1, handled_by = $2, handled_reason = $3 WHERE idem_key = $4 AND handled_us IS NULL", args![now_us(), actor, reason, idem_key])
            .await?;
        if n == 1 {
            super::audit_chain::append(
                &mut *tx,
                self.audit_mac.as_ref(),
                &[NewAuditEvent::by(actor, kind::WORKLIST_HANDLED, &crate::audit::correlation_id(), idem_key, serde_json::json!({"reason": reason}))],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Worklist keys of one subject (patient pseudonym) under a connector.
    pub async fn worklist_keys_of_subject(&self, connector: &str, patient_key: &str) -> Result<Vec<String>> {
        let mut tx = self.read().await?;
        let rows = tx.rows("SELECT idem_key FROM worklist WHERE connector = $1 AND patient_key = $2", args![connector, patient_key]).await?;
        rows.iter().map(|r| r.text(0)).collect()
    }

    // ------------------------------------------------------------------ SAR coverage

    /// Stored episodes: (unit, first_visit_date, forms_due) for coverage.
    pub async fn episodes(&self, connector: &str) -> Result<Vec<super::EpisodeRow>> {
        let mut tx = self.read().await?;
        let rows = tx
            .rows("SELECT episode_key, connector, unit, patient_key, joint, first_visit_date, forms_due FROM sar_episodes WHERE connector = $1", args![connector])
            .await?;
        rows.iter()
            .map(|r| {
                Ok(super::EpisodeRow {
                    episode_key: r.text(0)?,
                    connector: r.text(1)?,
                    unit: r.text(2)?,
                    patient_key: r.text(3)?,
                    joint: r.text(4)?,
                    first_visit_date: r.text(5)?,
                    forms_due: serde_json::from_str(&r.text(6)?).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Registrations a register holds (state `present`), per connector.
    pub async fn registrations_present(&self, connector: &str) -> Result<Vec<super::Registration>> {
        let mut tx = self.read().await?;
        let rows = tx
            .rows(
                // The payload is not needed here: selected as NULL so nothing is decrypted.
                "SELECT idem_key, register, connector, unit, form, subject, event_id, delivered_hash, NULL AS delivered_payload, state FROM registrations WHERE connector = $1 AND state = 'present'",
                args![connector],
            )
            .await?;
        rows.iter().map(|r| self.registration_from_row(&**r)).collect()
    }

    /// What the register holds (state `present`) under a connector: unit, form and the delivered
    /// payload, decrypted (for the SAR indicators, computed in memory and shown as aggregates).
    pub async fn registrations_delivered(&self, connector: &str) -> Result<Vec<(String, String, serde_json::Map<String, serde_json::Value>)>> {
        let mut tx = self.read().await?;
        let rows = tx
            .rows("SELECT unit, form, delivered_payload, idem_key FROM registrations WHERE connector = $1 AND state = 'present' AND delivered_payload IS NOT NULL", args![connector])
            .await?;
        rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?, self.cipher.decrypt_json(&super::sealed::delivered_payload(&r.text(3)?), &r.bytes(2)?)?))).collect()
    }

    /// Idempotency keys (with state) of a subject's registrations under a connector.
    pub async fn registrations_of_subject(&self, connector: &str, subject: &str) -> Result<Vec<(String, String)>> {
        let mut tx = self.read().await?;
        let rows = tx.rows("SELECT idem_key, state FROM registrations WHERE connector = $1 AND subject = $2", args![connector, subject]).await?;
        rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?))).collect()
    }

    /// Latest record version's (op, state) for each of a subject's keys: what we intend now.
    pub async fn intents_of_subject(&self, connector: &str, subject: &str) -> Result<Vec<(String, String, String)>> {
        let mut tx = self.read().await?;
        let rows = tx
            .rows(
                "SELECT r.idem_key, r.op, r.state FROM records r WHERE r.connector = $1 AND r.subject = $2
                 AND r.version = (SELECT MAX(x.version) FROM records x WHERE x.idem_key = r.idem_key)",
                args![connector, subject],
            )
            .await?;
        rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?))).collect()
    }

    /// Latest record version's (key, op, state) for every key of a connector (PVK aggregates,
    /// whose subjects are cells rather than patients).
    pub async fn intents_of_connector(&self, connector: &str) -> Result<Vec<(String, String, String)>> {
        let mut tx = self.read().await?;
        let rows = tx
            .rows(
                "SELECT r.idem_key, r.op, r.state FROM records r WHERE r.connector = $1
                 AND r.version = (SELECT MAX(x.version) FROM records x WHERE x.idem_key = r.idem_key)",
                args![connector],
            )
            .await?;
        rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?))).collect()
    }

    // ------------------------------------------------------------------ PVK results

    pub async fn pvk_results(&self, connector: &str, rule_year: Option<i32>) -> Result<Vec<super::PvkResultRow>> {
        let mut tx = self.read().await?;
        let rows = match rule_year {
            Some(y) => tx.rows(
                "SELECT connector, rule_year, unit, year, month, indicator, numerator, denominator, computable, suppressed, note FROM pvk_results WHERE connector = $1 AND rule_year = $2 ORDER BY unit, year, month, indicator",
                args![connector, y],
            ).await?,
            None => tx.rows(
                "SELECT connector, rule_year, unit, year, month, indicator, numerator, denominator, computable, suppressed, note FROM pvk_results WHERE connector = $1 ORDER BY rule_year, unit, year, month, indicator",
                args![connector],
            ).await?,
        };
        rows.iter()
            .map(|r| {
                Ok(super::PvkResultRow {
                    connector: r.text(0)?,
                    rule_year: r.i64(1)? as i32,
                    unit: r.text(2)?,
                    year: r.i64(3)? as i32,
                    month: r.i64(4)? as u32,
                    indicator: r.text(5)?,
                    numerator: r.i64_opt(6)?,
                    denominator: r.i64_opt(7)?,
                    computable: r.bool(8)?,
                    suppressed: r.bool(9)?,
                    note: r.text_opt(10)?,
                    patient_list: None,
                })
            })
            .collect()
    }

    /// The patient list behind one result (personal data: callers record the view first).
    pub async fn pvk_patient_list(&self, connector: &str, rule_year: i32, unit: &str, year: i32, month: u32, indicator: &str) -> Result<Option<serde_json::Value>> {
        let mut tx = self.read().await?;
        let r = tx
            .row(
                "SELECT patient_list FROM pvk_results WHERE connector = $1 AND rule_year = $2 AND unit = $3 AND year = $4 AND month = $5 AND indicator = $6",
                args![connector, rule_year, unit, year, month, indicator],
            )
            .await?;
        match r.and_then(|r| r.bytes_opt(0).ok().flatten()) {
            Some(b) => Ok(Some(crate::outbox::PatientList::parse_stored(&self.cipher.decrypt(&super::sealed::pvk_patient_list(connector, rule_year, unit, year, month, indicator), &b)?)?)),
            None => Ok(None),
        }
    }

    pub async fn pvk_quality(&self, connector: &str) -> Result<Vec<super::PvkQualityRow>> {
        let mut tx = self.read().await?;
        let rows = tx
            .rows("SELECT connector, unit, year, month, measure, count FROM pvk_quality WHERE connector = $1 ORDER BY unit, year, month, measure", args![connector])
            .await?;
        rows.iter()
            .map(|r| {
                Ok(super::PvkQualityRow {
                    connector: r.text(0)?,
                    unit: r.text(1)?,
                    year: r.i64(2)? as i32,
                    month: r.i64(3)? as u32,
                    measure: r.text(4)?,
                    count: r.i64(5)?,
                })
            })
            .collect()
    }
}
