//! Delivering everything due with a progress bar over the queue: for the commands a person
//! watches (`backfill --deliver`, `demo`), not for the running daemon.

use super::DeliveryEngine;
use anyhow::Result;
use std::time::Duration;

/// Deliver until the queue is empty or only records waiting for a later retry are left; returns
/// the number of attempts made.
pub async fn drain_with_progress(engine: &DeliveryEngine) -> Result<usize> {
    let store = &engine.store;
    let total = store.queue_depth().await?.max(0) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(indicatif::ProgressStyle::with_template("{prefix:>22} {bar:40} {pos}/{len} records ({per_sec}, eta {eta})").expect("template"));
    bar.set_prefix("delivery");
    let mut sent = 0;
    loop {
        let n = engine.drain(Duration::from_secs(2)).await?;
        sent += n;
        let left = store.queue_depth().await?.max(0) as u64;
        bar.set_position(total.saturating_sub(left));
        if left == 0 || (n == 0 && store.due_now_count().await? == 0) {
            break;
        }
    }
    bar.finish();
    Ok(sent)
}
