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
    async fn exec(&mut self, sql: &str, args: &[Val]) -> Result<u64> {
        let r = bind(sqlx::query(sql), args).execute(&mut *self.0).await.with_context(|| format!("SQL failed: {}", first_line(sql)))?;
        Ok(r.rows_affected())
    }
    async fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Rows> {
        let rows = bind(sqlx::query(sql), args).fetch_all(&mut *self.0).await.with_context(|| format!("SQL failed: {}", first_line(sql)))?;
        Ok(rows.into_iter().map(|r| Box::new(SRow(r)) as Box<dyn Row>).collect())
    }
    async fn commit(self: Box<Self>) -> Result<()> {
        Ok(())
    }
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

fn bind<'q>(mut q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>, args: &'q [Val]) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    for a in args {
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

#[async_trait]
impl Tx for SqliteTx {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
    async fn exec(&mut self, sql: &str, args: &[Val]) -> Result<u64> {
        let r = bind(sqlx::query(sql), args).execute(&mut *self.0).await.with_context(|| format!("SQL failed: {}", first_line(sql)))?;
        Ok(r.rows_affected())
    }
    async fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Rows> {
        let rows = bind(sqlx::query(sql), args).fetch_all(&mut *self.0).await.with_context(|| format!("SQL failed: {}", first_line(sql)))?;
        Ok(rows.into_iter().map(|r| Box::new(SRow(r)) as Box<dyn Row>).collect())
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
