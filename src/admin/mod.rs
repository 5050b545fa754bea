//! Admin side: HTTP API, Swedish web pages, users and roles, metrics, health.

use crate::app::App;
use crate::cli::UsersCmd;
use anyhow::{bail, Result};

pub async fn users_cli(_app: &App, _cmd: UsersCmd) -> Result<i32> {
    bail!("`users` is not available yet: it lands with issue #7")
}
