//! PostgreSQL backend: region scale, shared by replicas. Own migrations; `FOR UPDATE SKIP LOCKED`
//! claims; monthly partitions for the audit log.

use crate::store::sql::{Backend, Dialect, NullKind, Row, Rows, Tx, Val};
use anyhow::{Context, Result};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row as _, Transaction};
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/postgres/migrations");

pub struct PgBackend {
    pool: PgPool,
}

impl PgBackend {
    pub async fn open(url: &str, max_connections: u32) -> Result<PgBackend> {
        // Never echo the URL: it carries the password.
        let opts = PgConnectOptions::from_str(url).context("invalid PostgreSQL URL")?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await
            .context("cannot connect to PostgreSQL")?;
        Ok(PgBackend { pool })
    }
}

struct PgTx(Transaction<'static, Postgres>);
struct PRow(PgRow);

impl Row for PRow {
    fn i64_opt(&self, idx: usize) -> Result<Option<i64>> {
        // COUNT(*) and SUM are INT8/NUMERIC in PostgreSQL; accept the integer widths.
        if let Ok(v) = self.0.try_get::<Option<i64>, _>(idx) {
            return Ok(v);
        }
        if let Ok(v) = self.0.try_get::<Option<i32>, _>(idx) {
            return Ok(v.map(i64::from));
        }
        Ok(self.0.try_get::<Option<i16>, _>(idx)?.map(i64::from))
    }
    fn f64_opt(&self, idx: usize) -> Result<Option<f64>> {
        if let Ok(v) = self.0.try_get::<Option<f64>, _>(idx) {
            return Ok(v);
        }
        Ok(self.i64_opt(idx)?.map(|v| v as f64))
    }
    fn text_opt(&self, idx: usize) -> Result<Option<String>> {
        Ok(self.0.try_get::<Option<String>, _>(idx)?)
    }
    fn bytes_opt(&self, idx: usize) -> Result<Option<Vec<u8>>> {
        Ok(self.0.try_get::<Option<Vec<u8>>, _>(idx)?)
    }
}

fn bind<'q>(mut q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>, args: &'q [Val]) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    for a in args {
        q = match a {
            Val::I64(v) => q.bind(*v),
            Val::F64(v) => q.bind(*v),
            Val::Text(v) => q.bind(v.as_str()),
            Val::Bytes(v) => q.bind(v.as_slice()),
            Val::Null(NullKind::I64) => q.bind(Option::<i64>::None),
            Val::Null(NullKind::F64) => q.bind(Option::<f64>::None),
            Val::Null(NullKind::Text) => q.bind(Option::<String>::None),
            Val::Null(NullKind::Bytes) => q.bind(Option::<Vec<u8>>::None),
        };
    }
    q
}

#[async_trait]
impl Tx for PgTx {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
    async fn exec_as(&mut self, sql: &str, args: &[Val], keep: bool) -> Result<u64> {
        let r = bind(sqlx::query(sql).persistent(keep), args)
            .execute(&mut *self.0)
            .await
            .with_context(|| format!("SQL failed: {}", crate::store::sqlite::first_line(sql)))?;
        Ok(r.rows_affected())
    }
    async fn rows_as(&mut self, sql: &str, args: &[Val], keep: bool) -> Result<Rows> {
        let rows = bind(sqlx::query(sql).persistent(keep), args)
            .fetch_all(&mut *self.0)
            .await
            .with_context(|| format!("SQL failed: {}", crate::store::sqlite::first_line(sql)))?;
        Ok(rows.into_iter().map(|r| Box::new(PRow(r)) as Box<dyn Row>).collect())
    }
    async fn commit(self: Box<Self>) -> Result<()> {
        self.0.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl Backend for PgBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
    async fn begin(&self) -> Result<Box<dyn Tx>> {
        Ok(Box::new(PgTx(self.pool.begin().await?)))
    }
    async fn read(&self) -> Result<Box<dyn Tx>> {
        Ok(Box::new(PgTx(self.pool.begin().await?)))
    }
    async fn migrate(&self) -> Result<()> {
        // Replicas starting together: the migrator takes an advisory lock itself.
        MIGRATOR.run(&self.pool).await.context("PostgreSQL migrations failed")?;
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
        Ok(())
    }
    async fn close(&self) {
        self.pool.close().await;
    }
}
