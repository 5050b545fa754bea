//! The long-running daemon: scheduler, connector runs, delivery workers, admin listener.

use crate::app::App;
use crate::cli::{BackfillArgs, RunArgs};
use anyhow::{bail, Result};

pub async fn run(_app: App, _args: RunArgs) -> Result<i32> {
    bail!("`run` is not available yet: the delivery engine and schedules land with issue #5")
}

pub async fn backfill(_app: App, _args: BackfillArgs) -> Result<i32> {
    bail!("`backfill` is not available yet: it lands with issue #8")
}
