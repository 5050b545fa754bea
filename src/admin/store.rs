//! The admin side's own queries (users, sessions, API tokens, list pages), written against the
//! store's public `Tx` seam so `src/store/` stays untouched.

use crate::args;
use crate::store::sql::Val;
use crate::store::{from_us, now_us, RecordState, Store};
use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// What a user may do. Ordered: each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Role {
    /// Read everything except patient identities.
    #[serde(rename = "läsare")]
    Reader,
    /// Also replay, retract and resolve quarantine.
    #[serde(rename = "operatör")]
    Operator,
    /// Also users, API tokens and the configuration view.
    #[serde(rename = "admin")]
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "läsare",
            Role::Operator => "operatör",
            Role::Admin => "admin",
        }
    }
    /// Accepts the Swedish names and their ASCII spellings (for shells without å/ö).
    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_lowercase().as_str() {
            "läsare" | "lasare" | "reader" => Some(Role::Reader),
            "operatör" | "operator" | "operatoer" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub username: String,
    #[serde(skip)]
    pub password_hash: String,
    pub role: Role,
    pub patient_data: bool,
    pub disabled: bool,
    pub created: DateTime<Utc>,
    /// The care units (HSA ids) the user is limited to; empty = the whole region.
    pub units: Vec<String>,
}

/// Which care units a caller may see: the whole region, or only a list of HSA ids. Every data
/// path of the admin side takes one (the list queries, the detail lookups, the actions), so a
/// unit-limited user sees only its units' rows everywhere, pages and API alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UnitScope {
    /// Empty: the whole region.
    units: Vec<String>,
}

impl UnitScope {
    pub fn region() -> UnitScope {
        UnitScope { units: vec![] }
    }
    pub fn only(units: &[String]) -> UnitScope {
        let mut units: Vec<String> = units.iter().map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect();
        units.sort();
        units.dedup();
        UnitScope { units }
    }
    pub fn is_region(&self) -> bool {
        self.units.is_empty()
    }
    /// The units a limited caller may see (empty for the region).
    pub fn units(&self) -> &[String] {
        &self.units
    }
    pub fn allows(&self, unit: &str) -> bool {
        self.is_region() || self.units.iter().any(|u| u == unit)
    }
    /// A connector's data whose rows carry no unit (quarantined documents): only a caller who
    /// may see every unit the connector reads.
    pub fn allows_all(&self, units: &[String]) -> bool {
        self.is_region() || units.iter().all(|u| self.allows(u))
    }
    /// ` AND <col> IN ($n, …)` for a limited caller, nothing for the region.
    pub fn sql(&self, col: &str, a: &mut Vec<Val>) -> String {
        if self.is_region() {
            return String::new();
        }
        let list: Vec<String> = self
            .units
            .iter()
            .map(|u| {
                a.push(Val::Text(u.clone()));
                format!("${}", a.len())
            })
            .collect();
        format!(" AND {col} IN ({})", list.join(", "))
    }
}

/// A unit list as given on the command line or the users page (`HSA1,HSA2`, spaces allowed).
pub fn parse_units(s: &str) -> Vec<String> {
    UnitScope::only(&s.split([',', ' ', '\n']).map(str::to_string).collect::<Vec<_>>()).units
}

#[derive(Clone, Debug, Serialize)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    pub username: String,
    pub created_by: String,
    pub created: DateTime<Utc>,
    pub last_used: Option<DateTime<Utc>>,
    pub revoked: Option<DateTime<Utc>>,
    pub expires: DateTime<Utc>,
}

/// A session or token resolved to its user.
#[derive(Clone, Debug)]
pub struct SessionRow {
    pub user: User,
    pub csrf: String,
    pub expires: DateTime<Utc>,
    pub last_seen_us: i64,
}

fn user_from(r: &dyn crate::store::sql::Row, off: usize) -> Result<User> {
    Ok(User {
        username: r.text(off)?,
        password_hash: r.text(off + 1)?,
        // An unknown role in the table (hand-edited) gets the least rights, never more.
        role: Role::parse(&r.text(off + 2)?).unwrap_or(Role::Reader),
        patient_data: r.bool(off + 3)?,
        disabled: r.bool(off + 4)?,
        created: from_us(r.i64(off + 5)?),
        units: parse_units(&r.text(off + 6)?),
    })
}

const USER_COLS: &str = "u.username, u.password_hash, u.role, u.can_view_patients, u.disabled, u.created_us, u.units";

pub async fn user_count(store: &Store) -> Result<i64> {
    let mut tx = store.read().await?;
    Ok(tx.row("SELECT COUNT(*) FROM users", &[]).await?.map(|r| r.i64(0)).transpose()?.unwrap_or(0))
}

pub async fn user(store: &Store, username: &str) -> Result<Option<User>> {
    let mut tx = store.read().await?;
    let r = tx.row(&format!("SELECT {USER_COLS} FROM users u WHERE u.username = $1"), args![username]).await?;
    r.map(|r| user_from(&*r, 0)).transpose()
}

pub async fn users(store: &Store) -> Result<Vec<User>> {
    let mut tx = store.read().await?;
    let rows = tx.rows(&format!("SELECT {USER_COLS} FROM users u ORDER BY u.username"), &[]).await?;
    rows.iter().map(|r| user_from(&**r, 0)).collect()
}

/// Create or update a user. `password_hash: None` keeps the current password.
pub async fn put_user(store: &Store, username: &str, password_hash: Option<&str>, role: Role, patient_data: bool, disabled: bool) -> Result<bool> {
    let mut tx = store.begin().await?;
    let exists = tx.row("SELECT 1 FROM users WHERE username = $1", args![username]).await?.is_some();
    if exists {
        if let Some(h) = password_hash {
            tx.exec("UPDATE users SET password_hash = $1 WHERE username = $2", args![h, username]).await?;
            // A new password ends what the old one opened: the user's API tokens and sessions
            // (a leaked password or token must not outlive the change).
            tx.exec("UPDATE api_tokens SET revoked_us = $1 WHERE username = $2 AND revoked_us IS NULL", args![now_us(), username]).await?;
            tx.exec("DELETE FROM sessions WHERE username = $1", args![username]).await?;
        }
        tx.exec("UPDATE users SET role = $1, can_view_patients = $2, disabled = $3 WHERE username = $4", args![role.as_str(), patient_data, disabled, username])
            .await?;
    } else {
        let Some(h) = password_hash else { anyhow::bail!("a new user needs a password") };
        tx.exec(
            "INSERT INTO users (username, password_hash, role, can_view_patients, disabled, created_us) VALUES ($1, $2, $3, $4, $5, $6)",
            args![username, h, role.as_str(), patient_data, disabled, now_us()],
        )
        .await?;
    }
    if disabled {
        // A disabled user's sessions and tokens stop working at once.
        tx.exec("DELETE FROM sessions WHERE username = $1", args![username]).await?;
    }
    tx.commit().await?;
    Ok(!exists)
}

/// Limit a user to these care units (HSA ids); an empty list gives the whole region back.
pub async fn set_user_units(store: &Store, username: &str, units: &[String]) -> Result<()> {
    let units = UnitScope::only(units).units.join(",");
    let mut tx = store.begin().await?;
    let n = tx.exec("UPDATE users SET units = $1 WHERE username = $2", args![units, username]).await?;
    if n != 1 {
        anyhow::bail!("no user {username}");
    }
    tx.commit().await
}

pub async fn create_session(store: &Store, token_hash: &str, username: &str, csrf: &str, expires_us: i64) -> Result<()> {
    let now = now_us();
    let mut tx = store.begin().await?;
    // Housekeeping on the way in: expired sessions are worthless.
    tx.exec("DELETE FROM sessions WHERE expires_us < $1", args![now]).await?;
    tx.exec(
        "INSERT INTO sessions (token_hash, username, csrf, created_us, expires_us, last_seen_us) VALUES ($1, $2, $3, $4, $5, $4)",
        args![token_hash, username, csrf, now, expires_us],
    )
    .await?;
    tx.commit().await
}

/// A session that has neither expired nor been idle longer than `idle_us`.
pub async fn session(store: &Store, token_hash: &str, idle_us: i64) -> Result<Option<SessionRow>> {
    let now = now_us();
    let mut tx = store.read().await?;
    let r = tx
        .row(
            &format!(
                "SELECT {USER_COLS}, s.csrf, s.expires_us, s.last_seen_us FROM sessions s JOIN users u ON u.username = s.username
                 WHERE s.token_hash = $1 AND s.expires_us > $2 AND s.last_seen_us > $3 AND u.disabled = 0"
            ),
            args![token_hash, now, now - idle_us],
        )
        .await?;
    r.map(|r| Ok(SessionRow { user: user_from(&*r, 0)?, csrf: r.text(7)?, expires: from_us(r.i64(8)?), last_seen_us: r.i64(9)? })).transpose()
}

/// Mark a session as used now (its idle time starts again).
pub async fn touch_session(store: &Store, token_hash: &str) -> Result<()> {
    let mut tx = store.begin().await?;
    tx.exec("UPDATE sessions SET last_seen_us = $1 WHERE token_hash = $2", args![now_us(), token_hash]).await?;
    tx.commit().await
}

pub async fn delete_session(store: &Store, token_hash: &str) -> Result<()> {
    let mut tx = store.begin().await?;
    tx.exec("DELETE FROM sessions WHERE token_hash = $1", args![token_hash]).await?;
    tx.commit().await
}

pub async fn create_token(store: &Store, name: &str, token_hash: &str, username: &str, created_by: &str, expires_us: i64) -> Result<i64> {
    let mut tx = store.begin().await?;
    let r = tx
        .row(
            "INSERT INTO api_tokens (name, token_hash, username, created_by, created_us, expires_us) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            args![name, token_hash, username, created_by, now_us(), expires_us],
        )
        .await?
        .expect("RETURNING gives a row");
    let id = r.i64(0)?;
    tx.commit().await?;
    Ok(id)
}

/// The user behind a valid (not revoked, not expired, user not disabled) API token.
pub async fn token_user(store: &Store, token_hash: &str) -> Result<Option<(i64, User)>> {
    let mut tx = store.read().await?;
    let r = tx
        .row(
            &format!(
                "SELECT t.id, {USER_COLS} FROM api_tokens t JOIN users u ON u.username = t.username
                 WHERE t.token_hash = $1 AND t.revoked_us IS NULL AND t.expires_us > $2 AND u.disabled = 0"
            ),
            args![token_hash, now_us()],
        )
        .await?;
    r.map(|r| Ok((r.i64(0)?, user_from(&*r, 1)?))).transpose()
}

pub async fn touch_token(store: &Store, id: i64) -> Result<()> {
    let mut tx = store.begin().await?;
    tx.exec("UPDATE api_tokens SET last_used_us = $1 WHERE id = $2", args![now_us(), id]).await?;
    tx.commit().await
}

pub async fn tokens(store: &Store) -> Result<Vec<ApiToken>> {
    let mut tx = store.read().await?;
    let rows = tx
        .rows("SELECT id, name, username, created_by, created_us, last_used_us, revoked_us, expires_us FROM api_tokens ORDER BY id", &[])
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ApiToken {
                id: r.i64(0)?,
                name: r.text(1)?,
                username: r.text(2)?,
                created_by: r.text(3)?,
                created: from_us(r.i64(4)?),
                last_used: r.i64_opt(5)?.map(from_us),
                revoked: r.i64_opt(6)?.map(from_us),
                expires: from_us(r.i64(7)?),
            })
        })
        .collect()
}

pub async fn revoke_token(store: &Store, id: i64) -> Result<bool> {
    let mut tx = store.begin().await?;
    let n = tx.exec("UPDATE api_tokens SET revoked_us = $1 WHERE id = $2 AND revoked_us IS NULL", args![now_us(), id]).await?;
    tx.commit().await?;
    Ok(n == 1)
}

// ---------------------------------------------------------------------------------------------
// Transfers list (no payloads decrypted: the list never needs them)

#[derive(Clone, Debug, Default)]
pub struct TransferQuery {
    pub connector: Option<String>,
    pub register: Option<String>,
    pub unit: Option<String>,
    pub form: Option<String>,
    pub states: Vec<RecordState>,
    /// Substring of the idempotency key, or the register's reference.
    pub search: Option<String>,
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    pub latest_only: bool,
    pub limit: i64,
    pub offset: i64,
    /// The caller's units: rows of other units are never returned.
    pub scope: UnitScope,
}

#[derive(Clone, Debug, Serialize)]
pub struct TransferRow {
    pub id: i64,
    pub idem_key: String,
    pub version: i64,
    pub register: String,
    pub connector: String,
    pub unit: String,
    pub form: String,
    pub subject: Option<String>,
    pub op: String,
    pub state: RecordState,
    pub reason: Option<String>,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub register_ref: Option<String>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// One page of transfers matching `q`, and how many match in all.
pub async fn transfers(store: &Store, q: &TransferQuery) -> Result<(Vec<TransferRow>, i64)> {
    let mut cond = String::from(" WHERE 1 = 1");
    let mut a: Vec<Val> = vec![];
    fn ph(a: &mut Vec<Val>, v: Val) -> String {
        a.push(v);
        format!("${}", a.len())
    }
    for (col, v) in [("r.connector", &q.connector), ("r.register", &q.register), ("r.unit", &q.unit), ("r.form", &q.form)] {
        if let Some(v) = v {
            let p = ph(&mut a, Val::Text(v.clone()));
            cond.push_str(&format!(" AND {col} = {p}"));
        }
    }
    if !q.states.is_empty() {
        let list: Vec<String> = q.states.iter().map(|s| ph(&mut a, Val::Text(s.as_str().into()))).collect();
        cond.push_str(&format!(" AND r.state IN ({})", list.join(", ")));
    }
    if let Some(s) = &q.search {
        let like = ph(&mut a, Val::Text(format!("%{}%", s.replace(['%', '_'], ""))));
        let exact = ph(&mut a, Val::Text(s.clone()));
        cond.push_str(&format!(" AND (r.idem_key LIKE {like} OR r.register_ref = {exact})"));
    }
    if let Some(v) = q.from_us {
        let p = ph(&mut a, Val::I64(v));
        cond.push_str(&format!(" AND r.updated_us >= {p}"));
    }
    if let Some(v) = q.to_us {
        let p = ph(&mut a, Val::I64(v));
        cond.push_str(&format!(" AND r.updated_us < {p}"));
    }
    cond.push_str(&q.scope.sql("r.unit", &mut a));
    if q.latest_only {
        cond.push_str(" AND r.version = (SELECT MAX(x.version) FROM records x WHERE x.idem_key = r.idem_key)");
    }
    let mut tx = store.read().await?;
    let total = tx.row(&format!("SELECT COUNT(*) FROM records r{cond}"), &a).await?.map(|r| r.i64(0)).transpose()?.unwrap_or(0);
    let mut b = a.clone();
    b.push(Val::I64(q.limit.clamp(1, 1000)));
    let lim = b.len();
    b.push(Val::I64(q.offset.max(0)));
    let off = b.len();
    let rows = tx
        .rows(
            &format!(
                "SELECT r.id, r.idem_key, r.version, r.register, r.connector, r.unit, r.form, r.subject, r.op, r.state, r.reason, r.attempts,
                 r.last_status, r.last_error, r.register_ref, r.created_us, r.updated_us FROM records r{cond} ORDER BY r.updated_us DESC, r.id DESC LIMIT ${lim} OFFSET ${off}"
            ),
            &b,
        )
        .await?;
    let list = rows
        .iter()
        .map(|r| {
            Ok(TransferRow {
                id: r.i64(0)?,
                idem_key: r.text(1)?,
                version: r.i64(2)?,
                register: r.text(3)?,
                connector: r.text(4)?,
                unit: r.text(5)?,
                form: r.text(6)?,
                subject: r.text_opt(7)?,
                op: r.text(8)?,
                state: RecordState::parse(&r.text(9)?)?,
                reason: r.text_opt(10)?,
                attempts: r.i64(11)?,
                last_status: r.i64_opt(12)?,
                last_error: r.text_opt(13)?,
                register_ref: r.text_opt(14)?,
                created: from_us(r.i64(15)?),
                updated: from_us(r.i64(16)?),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((list, total))
}

/// Distinct values for the filter drop-downs: (connectors, registers, units, forms).
pub async fn transfer_facets(store: &Store, scope: &UnitScope) -> Result<(Vec<String>, Vec<String>, Vec<String>, Vec<String>)> {
    let mut a = vec![];
    let cond = scope.sql("unit", &mut a);
    let mut tx = store.read().await?;
    let col = |c: &str| format!("SELECT DISTINCT {c} FROM records WHERE 1 = 1{cond} ORDER BY {c}");
    let (qc, qg, qu, qf) = (col("connector"), col("register"), col("unit"), col("form"));
    let c = texts_with(&mut *tx, &qc, &a).await?;
    let g = texts_with(&mut *tx, &qg, &a).await?;
    let u = texts_with(&mut *tx, &qu, &a).await?;
    let f = texts_with(&mut *tx, &qf, &a).await?;
    Ok((c, g, u, f))
}

async fn texts(tx: &mut dyn crate::store::sql::Tx, sql: &str) -> Result<Vec<String>> {
    texts_with(tx, sql, &[]).await
}

async fn texts_with(tx: &mut dyn crate::store::sql::Tx, sql: &str, a: &[Val]) -> Result<Vec<String>> {
    tx.rows(sql, a).await?.iter().map(|r| r.text(0)).collect()
}

/// The connector of a quarantined item.
pub async fn quarantine_connector(store: &Store, id: i64) -> Result<Option<String>> {
    let mut tx = store.read().await?;
    tx.row("SELECT connector FROM quarantine WHERE id = $1", args![id]).await?.map(|r| r.text(0)).transpose()
}

/// The unit of a worklist item.
pub async fn worklist_unit(store: &Store, idem_key: &str) -> Result<Option<String>> {
    let mut tx = store.read().await?;
    tx.row("SELECT unit FROM worklist WHERE idem_key = $1", args![idem_key]).await?.map(|r| r.text(0)).transpose()
}

/// The unit of each of these records (for actions on ids: replay takes only the caller's).
pub async fn record_units(store: &Store, ids: &[i64]) -> Result<Vec<(i64, String)>> {
    let mut out = vec![];
    let mut tx = store.read().await?;
    for chunk in ids.chunks(500) {
        let a: Vec<Val> = chunk.iter().map(|i| Val::I64(*i)).collect();
        let list: Vec<String> = (1..=a.len()).map(|n| format!("${n}")).collect();
        let rows = tx.rows(&format!("SELECT id, unit FROM records WHERE id IN ({})", list.join(", ")), &a).await?;
        for r in rows.iter() {
            out.push((r.i64(0)?, r.text(1)?));
        }
    }
    Ok(out)
}

/// Per (connector, register): records delivered and failed since `since_us`.
pub async fn outcomes_since(store: &Store, since_us: i64) -> Result<Vec<(String, String, i64, i64)>> {
    let mut tx = store.read().await?;
    let rows = tx
        .rows(
            "SELECT connector, register, state, COUNT(*) FROM records WHERE updated_us >= $1 AND state IN ('delivered', 'retracted', 'rejected', 'dead')
             GROUP BY connector, register, state",
            args![since_us],
        )
        .await?;
    let mut map: std::collections::BTreeMap<(String, String), (i64, i64)> = Default::default();
    for r in &rows {
        let e = map.entry((r.text(0)?, r.text(1)?)).or_default();
        match r.text(2)?.as_str() {
            "delivered" | "retracted" => e.0 += r.i64(3)?,
            _ => e.1 += r.i64(3)?,
        }
    }
    Ok(map.into_iter().map(|((c, g), (ok, bad))| (c, g, ok, bad)).collect())
}

/// Every (connector, register) pair that has records.
pub async fn connector_registers(store: &Store) -> Result<Vec<(String, String)>> {
    let mut tx = store.read().await?;
    let rows = tx.rows("SELECT DISTINCT connector, register FROM records ORDER BY connector, register", &[]).await?;
    rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?))).collect()
}

pub async fn distinct_units(store: &Store, table: &'static str) -> Result<Vec<String>> {
    let mut tx = store.read().await?;
    texts(&mut *tx, &format!("SELECT DISTINCT unit FROM {table} ORDER BY unit")).await
}

pub async fn distinct_connectors(store: &Store, table: &'static str) -> Result<Vec<String>> {
    let mut tx = store.read().await?;
    let rows = tx.rows(&format!("SELECT DISTINCT connector FROM {table} ORDER BY connector"), &[]).await?;
    rows.iter().map(|r| r.text(0)).collect()
}

// ---------------------------------------------------------------------------------------------
// Metrics gauges (counted in the shared store, so every replica reports the same totals)

pub struct StoreGauges {
    pub records: Vec<(String, String, i64)>,
    pub attempts: Vec<(String, String, i64)>,
    pub runs: Vec<(String, String, i64)>,
    pub queue_depth: i64,
    pub lease_rescues: i64,
    pub quarantine_open: i64,
    pub worklist: i64,
}

pub async fn gauges(store: &Store) -> Result<StoreGauges> {
    let mut tx = store.read().await?;
    let triples = |rows: crate::store::sql::Rows| -> Result<Vec<(String, String, i64)>> { rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?, r.i64(2)?))).collect() };
    let records = triples(tx.rows("SELECT register, state, COUNT(*) FROM records GROUP BY register, state", &[]).await?)?;
    let attempts = triples(
        tx.rows("SELECT r.register, a.outcome, COUNT(*) FROM attempts a JOIN records r ON r.id = a.record_id GROUP BY r.register, a.outcome", &[])
            .await?,
    )?;
    let runs = triples(tx.rows("SELECT connector, status, COUNT(*) FROM runs GROUP BY connector, status", &[]).await?)?;
    let count = |r: Option<Box<dyn crate::store::sql::Row>>| -> Result<i64> { Ok(r.map(|r| r.i64(0)).transpose()?.unwrap_or(0)) };
    let queue_depth = count(tx.row("SELECT COUNT(*) FROM records WHERE state IN ('pending', 'sending')", &[]).await?)?;
    let lease_rescues = count(tx.row("SELECT COUNT(*) FROM audit_events WHERE kind = $1", args![crate::audit::kind::LEASE_RESCUED]).await?)?;
    let quarantine_open = count(tx.row("SELECT COUNT(*) FROM quarantine WHERE resolved_us IS NULL", &[]).await?)?;
    // Open items: those marked as handled outside the system wait for nobody.
    let worklist = count(tx.row("SELECT COUNT(*) FROM worklist WHERE handled_us IS NULL", &[]).await?)?;
    Ok(StoreGauges { records, attempts, runs, queue_depth, lease_rescues, quarantine_open, worklist })
}
