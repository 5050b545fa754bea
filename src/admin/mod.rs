//! Admin side: HTTP API, Swedish web pages, users and roles, metrics, health.

use crate::app::App;
use crate::cli::UsersCmd;
use anyhow::{bail, Result};

pub async fn users_cli(_app: &App, _cmd: UsersCmd) -> Result<i32> {
    bail!("`users` is not available yet: it lands with issue #7")
}

/// Start the admin listener if enabled. (The admin pages land with issue #7; until then the
/// daemon runs without them.)
pub async fn spawn(_app: &App, _rt: &crate::daemon::Runtime, _shutdown: tokio::sync::watch::Receiver<bool>) -> Result<Option<tokio::task::JoinHandle<()>>> {
    Ok(None)
}
