//! The seam between the store's logic and its two databases.
//!
//! The store's domain logic (outbox state machine, audit chain, watermarks…) is written once,
//! against [`Tx`]: run a statement with positional `$n` parameters, read rows with typed getters.
//! `sqlite/` and `postgres/` implement it (both accept `$1`-style parameters) and keep their own
//! migrations; the few statements that must differ ask [`Dialect`].

use anyhow::Result;
use async_trait::async_trait;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Whether a statement is prepared once and kept in its connection's statement cache.
/// Statements built with many parameters (multi-row inserts, IN lists) change text with every
/// batch size: caching each would churn the cache, on PostgreSQL cost a planning round trip per
/// batch, and on SQLite keep up to a hundred compiled multi-row statements per connection (a
/// heap profile of a region's backfill showed them as the largest SQLite allocation, growing
/// with the number of batch sizes seen). Short, fixed statements are prepared once.
pub(crate) fn persistent(args: &[Val]) -> bool {
    args.len() <= 16
}

/// The most parameters a statement kept by [`Tx::exec_repeated`] may have (a delivery batch of 64
/// settles with 128 audit events of 9 parameters each).
const KEPT_MAX_PARAMETERS: usize = 2048;

/// A bound parameter.
#[derive(Clone, Debug)]
pub enum Val {
    I64(i64),
    F64(f64),
    Text(String),
    Bytes(Vec<u8>),
    /// A NULL of the given kind (PostgreSQL wants to know the parameter's type).
    Null(NullKind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NullKind {
    I64,
    F64,
    Text,
    Bytes,
}

impl Val {
    fn kind(&self) -> NullKind {
        match self {
            Val::I64(_) => NullKind::I64,
            Val::F64(_) => NullKind::F64,
            Val::Text(_) => NullKind::Text,
            Val::Bytes(_) => NullKind::Bytes,
            Val::Null(k) => *k,
        }
    }
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::I64(v)
    }
}
impl From<i32> for Val {
    fn from(v: i32) -> Val {
        Val::I64(v as i64)
    }
}
impl From<u32> for Val {
    fn from(v: u32) -> Val {
        Val::I64(v as i64)
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Val {
        Val::I64(v as i64)
    }
}
impl From<f64> for Val {
    fn from(v: f64) -> Val {
        Val::F64(v)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.to_string())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Val {
        Val::Text(v.clone())
    }
}
impl From<Vec<u8>> for Val {
    fn from(v: Vec<u8>) -> Val {
        Val::Bytes(v)
    }
}
impl<T: Into<Val> + Default> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        match v {
            Some(v) => v.into(),
            None => Val::Null(T::default().into().kind()),
        }
    }
}

/// A result row with typed, index-based getters.
pub trait Row: Send + Sync {
    fn i64_opt(&self, idx: usize) -> Result<Option<i64>>;
    fn f64_opt(&self, idx: usize) -> Result<Option<f64>>;
    fn text_opt(&self, idx: usize) -> Result<Option<String>>;
    fn bytes_opt(&self, idx: usize) -> Result<Option<Vec<u8>>>;

    fn i64(&self, idx: usize) -> Result<i64> {
        self.i64_opt(idx)?.ok_or_else(|| anyhow::anyhow!("column {idx} is NULL"))
    }
    fn f64(&self, idx: usize) -> Result<f64> {
        self.f64_opt(idx)?.ok_or_else(|| anyhow::anyhow!("column {idx} is NULL"))
    }
    fn text(&self, idx: usize) -> Result<String> {
        self.text_opt(idx)?.ok_or_else(|| anyhow::anyhow!("column {idx} is NULL"))
    }
    fn bytes(&self, idx: usize) -> Result<Vec<u8>> {
        self.bytes_opt(idx)?.ok_or_else(|| anyhow::anyhow!("column {idx} is NULL"))
    }
    fn bool(&self, idx: usize) -> Result<bool> {
        Ok(self.i64(idx)? != 0)
    }
}

pub type Rows = Vec<Box<dyn Row>>;

/// One open transaction (or, for reads, one connection).
#[async_trait]
pub trait Tx: Send {
    fn dialect(&self) -> Dialect;
    /// Run a statement; `keep`: prepare it once and keep it in the connection's statement cache.
    async fn exec_as(&mut self, sql: &str, args: &[Val], keep: bool) -> Result<u64>;
    /// Run a statement and read its rows; `keep` as for [`Tx::exec_as`].
    async fn rows_as(&mut self, sql: &str, args: &[Val], keep: bool) -> Result<Rows>;
    async fn commit(self: Box<Self>) -> Result<()>;

    async fn exec(&mut self, sql: &str, args: &[Val]) -> Result<u64> {
        self.exec_as(sql, args, persistent(args)).await
    }

    async fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Rows> {
        self.rows_as(sql, args, persistent(args)).await
    }

    async fn row(&mut self, sql: &str, args: &[Val]) -> Result<Option<Box<dyn Row>>> {
        Ok(self.rows(sql, args).await?.into_iter().next())
    }

    /// [`Tx::exec`]; `repeats`: the caller runs this very text again and again (the statements
    /// of a full delivery batch), so it is kept prepared although it has more parameters than
    /// [`persistent`] allows. The caller bounds how many such texts there are. Why: preparing a
    /// full batch's multi-row statements was about a seventh of the SQLite thread's time in
    /// delivery, while every batch ran the same texts (BENCHMARKS.md, issue 18 seventh round).
    async fn exec_repeated(&mut self, sql: &str, args: &[Val], repeats: bool) -> Result<u64> {
        self.exec_as(sql, args, kept(args, repeats)).await
    }

    /// [`Tx::rows`]; `repeats` as for [`Tx::exec_repeated`].
    async fn rows_repeated(&mut self, sql: &str, args: &[Val], repeats: bool) -> Result<Rows> {
        self.rows_as(sql, args, kept(args, repeats)).await
    }
}

fn kept(args: &[Val], repeats: bool) -> bool {
    persistent(args) || (repeats && args.len() <= KEPT_MAX_PARAMETERS)
}

/// A database: opens transactions and runs its own migrations.
#[async_trait]
pub trait Backend: Send + Sync {
    fn dialect(&self) -> Dialect;
    /// A write transaction (SQLite: `BEGIN IMMEDIATE`, so writers queue instead of failing).
    async fn begin(&self) -> Result<Box<dyn Tx>>;
    /// A read-only view (may be a plain transaction; never blocks writers on SQLite WAL).
    async fn read(&self) -> Result<Box<dyn Tx>>;
    async fn migrate(&self) -> Result<()>;
    /// Whether every migration this binary knows has been applied.
    async fn migrations_current(&self) -> Result<bool>;
    /// Free space after large deletes (SQLite: checkpoint + incremental vacuum; PG: nothing).
    async fn reclaim(&self) -> Result<()>;
    async fn close(&self);
}

/// Positional parameter list: `args![a, b, c]`.
#[macro_export]
macro_rules! args {
    ($($x:expr),* $(,)?) => { &[$($crate::store::sql::Val::from($x)),*] };
}
