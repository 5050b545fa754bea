//! `registerbrygga demo`: the sandbox and the real daemon on loopback, on SQLite.

use crate::cli::{DemoArgs, Global};
use anyhow::{bail, Result};

pub async fn run(_g: Global, _args: DemoArgs) -> Result<i32> {
    bail!("`demo` is not available yet: it lands with issue #8")
}
