//! SQLite backend: the embedded default. WAL, `BEGIN IMMEDIATE` for writers, own migrations.

use crate::store::sql::{Backend, Dialect, Row, Rows, Tx, Val};
use anyhow::{Context, Result};
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row as _, Sqlite, SqlitePool, Transaction};
use std::path::Path;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/sqlite/migrations");

pub struct SqliteBackend {
    pool: SqlitePool,
}

impl SqliteBackend {
    pub async fn open(path: &Path, max_connections: u32) -> Result<SqliteBackend> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(false);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(2))
            .connect_with(opts)
            .await
            .with_context(|| format!("cannot open SQLite database {}", path.display()))?;
        Ok(SqliteBackend { pool })
    }
}

struct SqliteTx(Transaction<'static, Sqlite>);

/// Reads run on a plain pooled connection: WAL gives each statement a consistent snapshot and
/// no transaction is left to roll back when the reader is dropped.
struct SqliteRead(sqlx::pool::PoolConnection<Sqlite>);

#[async_trait]
impl Tx for SqliteRead {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
    async fn exec_as(&mut self, sql: &str, args: &[Val], keep: bool) -> Result<u64> {
        exec_on(&mut self.0, sql, args, keep).await
    }
    async fn rows_as(&mut self, sql: &str, args: &[Val], keep: bool) -> Result<Rows> {
        rows_on(&mut self.0, sql, args, keep).await
    }
    async fn commit(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

async fn exec_on(conn: &mut sqlx::SqliteConnection, sql: &str, args: &[Val], keep: bool) -> Result<u64> {
    let (text, vals) = anonymous(sql, args);
    let r = bind(sqlx::query(&text).persistent(keep), &vals).execute(conn).await.with_context(|| format!("SQL failed: {}", first_line(sql)))?;
    Ok(r.rows_affected())
}

async fn rows_on(conn: &mut sqlx::SqliteConnection, sql: &str, args: &[Val], keep: bool) -> Result<Rows> {
    let (text, vals) = anonymous(sql, args);
    let rows = bind(sqlx::query(&text).persistent(keep), &vals).fetch_all(conn).await.with_context(|| format!("SQL failed: {}", first_line(sql)))?;
    Ok(rows.into_iter().map(|r| Box::new(SRow(r)) as Box<dyn Row>).collect())
}

struct SRow(SqliteRow);

impl Row for SRow {
    fn i64_opt(&self, idx: usize) -> Result<Option<i64>> {
        Ok(self.0.try_get::<Option<i64>, _>(idx)?)
    }
    fn f64_opt(&self, idx: usize) -> Result<Option<f64>> {
        Ok(self.0.try_get::<Option<f64>, _>(idx)?)
    }
    fn text_opt(&self, idx: usize) -> Result<Option<String>> {
        Ok(self.0.try_get::<Option<String>, _>(idx)?)
    }
    fn bytes_opt(&self, idx: usize) -> Result<Option<Vec<u8>>> {
        Ok(self.0.try_get::<Option<Vec<u8>>, _>(idx)?)
    }
}

fn bind<'q>(mut q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>, args: &[&'q Val]) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    for a in args.iter().copied() {
        q = match a {
            Val::I64(v) => q.bind(*v),
            Val::F64(v) => q.bind(*v),
            Val::Text(v) => q.bind(v.as_str()),
            Val::Bytes(v) => q.bind(v.as_slice()),
            Val::Null(_) => q.bind(Option::<i64>::None),
        };
    }
    q
}

/// The statement with its `$n` placeholders made anonymous (`?`), and the arguments in the order
/// the placeholders use them (a value used twice is bound twice).
///
/// Why: sqlx asks SQLite for the name of every numbered parameter it binds, and SQLite finds a
/// name by scanning the statement's list of names, so binding a multi-row statement was
/// quadratic in its parameters: a fifth of the store's writer time in a backfill. Anonymous
/// parameters have no names to scan. Text in quotes and comments is left alone; a statement
/// with any other kind of parameter is passed on unchanged.
fn anonymous<'s, 'a>(sql: &'s str, args: &'a [Val]) -> (std::borrow::Cow<'s, str>, Vec<&'a Val>) {
    match rewrite(sql, args) {
        Some((text, vals)) => (std::borrow::Cow::Owned(text), vals),
        None => (std::borrow::Cow::Borrowed(sql), args.iter().collect()),
    }
}

fn rewrite<'a>(sql: &str, args: &'a [Val]) -> Option<(String, Vec<&'a Val>)> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut vals = Vec::with_capacity(args.len());
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                // A quoted string or name; a doubled quote stays inside it.
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => i = sql[i..].find('\n').map_or(b.len(), |n| i + n),
            b'/' if b.get(i + 1) == Some(&b'*') => i = sql[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2),
            b'$' => {
                let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
                let n: usize = sql.get(i + 1..i + 1 + digits)?.parse().ok()?;
                vals.push(args.get(n.checked_sub(1)?)?);
                out.push_str(&sql[copied..i]);
                out.push('?');
                i += 1 + digits;
                copied = i;
            }
            b'?' | b':' | b'@' if b.get(i + 1).is_some_and(|c| c.is_ascii_alphanumeric()) => return None,
            _ => i += 1,
        }
    }
    if vals.is_empty() {
        return None;
    }
    out.push_str(&sql[copied..]);
    Some((out, vals))
}

#[async_trait]
impl Tx for SqliteTx {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
    async fn exec_as(&mut self, sql: &str, args: &[Val], keep: bool) -> Result<u64> {
        exec_on(&mut self.0, sql, args, keep).await
    }
    async fn rows_as(&mut self, sql: &str, args: &[Val], keep: bool) -> Result<Rows> {
        rows_on(&mut self.0, sql, args, keep).await
    }
    async fn commit(self: Box<Self>) -> Result<()> {
        self.0.commit().await?;
        Ok(())
    }
}

pub(crate) fn first_line(sql: &str) -> String {
    sql.split_whitespace().take(8).collect::<Vec<_>>().join(" ")
}

#[async_trait]
impl Backend for SqliteBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
    async fn begin(&self) -> Result<Box<dyn Tx>> {
        Ok(Box::new(SqliteTx(self.pool.begin_with("BEGIN IMMEDIATE").await?)))
    }
    async fn read(&self) -> Result<Box<dyn Tx>> {
        Ok(Box::new(SqliteRead(self.pool.acquire().await?)))
    }
    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await.context("SQLite migrations failed")?;
        Ok(())
    }
    async fn migrations_current(&self) -> Result<bool> {
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&self.pool)
            .await
            .unwrap_or_default();
        Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
    }
    async fn reclaim(&self) -> Result<()> {
        sqlx::query("PRAGMA incremental_vacuum").execute(&self.pool).await?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await?;
        Ok(())
    }
    async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: &[&Val]) -> Vec<String> {
        v.iter().map(|v| match v {
            Val::Text(s) => s.clone(),
            Val::I64(i) => i.to_string(),
            other => format!("{other:?}"),
        }).collect()
    }

    #[test]
    fn numbered_parameters_become_anonymous_in_the_order_they_are_used() {
        let args = [Val::I64(7), Val::from("a"), Val::from("b")];
        let (sql, vals) = anonymous("INSERT INTO t VALUES ($2, $1), ($3, $1) -- $9\n /* $8 */", &args);
        assert_eq!(sql, "INSERT INTO t VALUES (?, ?), (?, ?) -- $9\n /* $8 */");
        assert_eq!(texts(&vals), ["a", "7", "b", "7"]);
    }

    #[test]
    fn quoted_text_and_other_parameter_kinds_are_left_alone() {
        let args = [Val::from("x")];
        let (sql, vals) = anonymous("SELECT json_extract(v, '$.a''$1') FROM \"$2\" WHERE k = $1", &args);
        assert_eq!(sql, "SELECT json_extract(v, '$.a''$1') FROM \"$2\" WHERE k = ?");
        assert_eq!(texts(&vals), ["x"]);
        for unchanged in ["SELECT :name, $1", "SELECT ?1", "SELECT $2", "SELECT $0", "SELECT $x", "SELECT 1"] {
            let (sql, vals) = anonymous(unchanged, &args);
            assert_eq!(sql, unchanged);
            assert_eq!(vals.len(), 1);
        }
    }

    #[tokio::test]
    async fn a_statement_binds_the_same_values_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteBackend::open(&dir.path().join("t.db"), 2).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.exec("CREATE TABLE t (a TEXT, b INTEGER, c TEXT)", &[]).await.unwrap();
        let rows: Vec<String> = (0..300).map(|i| format!("(${}, $1, '$1')", i + 2)).collect();
        let mut args = vec![Val::I64(42)];
        args.extend((0..300).map(|i| Val::Text(format!("v{i}"))));
        assert_eq!(tx.exec(&format!("INSERT INTO t VALUES {}", rows.join(", ")), &args).await.unwrap(), 300);
        let r = tx.rows("SELECT a, b, c FROM t WHERE a IN ($2, $1) ORDER BY a", &[Val::from("v7"), Val::from("v299")]).await.unwrap();
        let got: Vec<(String, i64, String)> = r.iter().map(|r| (r.text(0).unwrap(), r.i64(1).unwrap(), r.text(2).unwrap())).collect();
        assert_eq!(got, [("v299".to_string(), 42, "$1".to_string()), ("v7".to_string(), 42, "$1".to_string())]);
    }
}
