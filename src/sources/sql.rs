//! Queries against a region's own databases: patient lists for sites without the engagement
//! index, and PVK's listing and drug lists. The URL (`postgres://…` or `sqlite:…`) is a secret;
//! every column is read as text (cast in the query where needed). Database errors can quote
//! values, so they are redacted before they travel on.

use crate::config::Secret;
use anyhow::{bail, Context, Result};

/// Run `query` and return its first `columns` columns of every row as text.
pub async fn text_rows(url: &Secret, query: &str, columns: usize, what: &str) -> Result<Vec<Vec<Option<String>>>> {
    use sqlx::{Connection, Row};
    let url = url.read_string().with_context(|| format!("{what}: database URL"))?;
    let redact = |e: sqlx::Error| anyhow::anyhow!("{}", crate::telemetry::redact(&e.to_string()));
    // The same steps for either driver; only the connection type differs.
    macro_rules! text_rows_with {
        ($conn:ty) => {{
            let mut conn = <$conn>::connect(&url).await.map_err(redact).with_context(|| format!("{what}: cannot connect to the database"))?;
            let rows = sqlx::query(query).fetch_all(&mut conn).await.map_err(redact).with_context(|| format!("{what}: query failed"))?;
            let _ = conn.close().await;
            rows.iter()
                .map(|r| (0..columns).map(|i| r.try_get::<Option<String>, _>(i).map_err(redact).with_context(|| format!("{what}: column {} is not text", i + 1))).collect())
                .collect()
        }};
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        text_rows_with!(sqlx::PgConnection)
    } else if url.starts_with("sqlite:") {
        text_rows_with!(sqlx::SqliteConnection)
    } else {
        bail!("{what}: the database URL must start with postgres:// or sqlite:");
    }
}
