//! Shared test helpers: a fresh store on SQLite (temp file) or PostgreSQL (a new database on the
//! cluster `scripts/test` started; its URL is in RB_TEST_PG_URL). A PostgreSQL test fails — it
//! does not skip — when that database is missing.
#![allow(dead_code)]

pub mod warehouse;

use registerbrygga::config::{Backend, Secret, StoreSettings};
use registerbrygga::crypto::{Cipher, Pseudonymizer};
use registerbrygga::store::Store;
use std::path::PathBuf;

pub const TEST_KEY: [u8; 32] = [7u8; 32];
pub const TEST_PSEUDO_KEY: [u8; 32] = [9u8; 32];

pub fn cipher() -> Cipher {
    Cipher::new(&[TEST_KEY]).unwrap()
}

pub fn pseudo() -> Pseudonymizer {
    Pseudonymizer::new(TEST_PSEUDO_KEY)
}

/// The admin URL of the test cluster. Panics with a clear message when it is not there.
pub fn pg_admin_url() -> String {
    std::env::var("RB_TEST_PG_URL").expect(
        "RB_TEST_PG_URL is not set: PostgreSQL tests need the cluster that scripts/test starts \
         (run the suite with scripts/test). They fail rather than skip.",
    )
}

/// Create a fresh database on the test cluster and return its URL.
pub async fn fresh_pg_url(prefix: &str) -> String {
    use sqlx::Connection;
    let admin = pg_admin_url();
    // PostgreSQL cuts names at 63 bytes: a long test name must not cut off the unique part.
    let prefix: String = prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).take(48).collect();
    let name = format!("rb_{}_{}", prefix, &uuid::Uuid::new_v4().simple().to_string()[..10]).to_lowercase();
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("the test PostgreSQL cluster is reachable");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
    conn.close().await.ok();
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin);
    format!("{base}/{name}")
}

pub struct TestStore {
    pub store: Store,
    pub settings: StoreSettings,
    pub dir: TestDir,
}

/// A per-test folder that is *not* deleted while the process runs: SQLite caches open files by
/// inode, and deleting a database a dropped pool still holds lets a later test's new file reuse
/// the inode and fail to open. `scripts/test` clears the parent folder before each run.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

pub fn test_dir() -> TestDir {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rb-tests");
    std::fs::create_dir_all(&root).unwrap();
    TestDir(tempfile::Builder::new().prefix("t").tempdir_in(&root).unwrap().keep())
}

pub async fn store_for(backend: Backend, name: &str) -> TestStore {
    let dir = test_dir();
    let settings = match backend {
        Backend::Sqlite => StoreSettings { backend, sqlite_path: dir.path().join("test.db"), postgres_url: None, max_connections: 4 },
        Backend::Postgres => {
            let url = fresh_pg_url(name).await;
            let var = format!("RB_TEST_URL_{}", uuid::Uuid::new_v4().simple());
            std::env::set_var(&var, &url);
            StoreSettings { backend, sqlite_path: PathBuf::new(), postgres_url: Some(Secret::from_env(&var)), max_connections: 8 }
        }
    };
    let store = Store::open(&settings, cipher()).await.expect("store opens");
    TestStore { store, settings, dir }
}

/// Generate `<name>_sqlite` and `<name>_postgres` tests from one async body taking a `TestStore`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let ts = $crate::common::store_for(registerbrygga::config::Backend::Sqlite, stringify!($name)).await;
                ($body)(ts).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let ts = $crate::common::store_for(registerbrygga::config::Backend::Postgres, stringify!($name)).await;
                ($body)(ts).await;
            }
        }
    };
}

/// Raw SQL against a test store's database (for tamper tests), by backend.
pub async fn raw_exec(ts: &TestStore, sql: &str) {
    let mut tx = ts.store.begin().await.unwrap();
    tx.exec(sql, &[]).await.unwrap();
    tx.commit().await.unwrap();
}

pub mod e2e;
