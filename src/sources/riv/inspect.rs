//! `registerbrygga inspect FILE`.

use anyhow::{bail, Result};
use std::path::Path;

pub fn run(_file: &Path, _json: bool) -> Result<i32> {
    bail!("`inspect` is not available yet: it lands with issue #3")
}
