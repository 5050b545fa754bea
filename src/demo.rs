//! `registerbrygga demo`: the sandbox and the real daemon on loopback, on SQLite.

use crate::cli::{DemoArgs, Global};
use crate::delivery::DeliveryEngine;
use crate::store::Store;
use anyhow::{bail, Result};
use std::time::Duration;

pub async fn run(_g: Global, _args: DemoArgs) -> Result<i32> {
    bail!("`demo` is not available yet: it lands with issue #8")
}

/// Deliver everything due, with a progress bar over the queue.
pub async fn deliver_with_progress(engine: &DeliveryEngine, store: &Store) -> Result<usize> {
    let total = store.queue_depth().await?.max(0) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(indicatif::ProgressStyle::with_template("delivering {bar:40} {pos}/{len} ({per_sec}, eta {eta}) {msg}").expect("template"));
    let mut sent = 0;
    loop {
        let n = engine.drain(Duration::from_secs(2)).await?;
        sent += n;
        let left = store.queue_depth().await?.max(0) as u64;
        bar.set_position(total.saturating_sub(left));
        if left == 0 || (n == 0 && left > 0 && !has_due(store).await?) {
            break;
        }
    }
    bar.finish_with_message("done");
    Ok(sent)
}

/// Anything pending that is due now (not waiting for a later retry)?
async fn has_due(store: &Store) -> Result<bool> {
    let mut tx = store.read().await?;
    let r = tx.row("SELECT COUNT(*) FROM records WHERE state = 'pending' AND next_attempt_us <= $1", crate::args![crate::store::now_us()]).await?;
    Ok(r.map(|r| r.i64(0)).transpose()?.unwrap_or(0) > 0)
}
