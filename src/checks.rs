//! `config check`: every problem at once — file, key, reason.

use crate::config::{self, LoadOptions, Problem};

/// Load, validate statically, then ask each register module about its own files.
pub async fn check_all(opts: &LoadOptions, online: bool) -> Vec<Problem> {
    let (loaded, mut problems) = config::load_collect(opts);
    let Some(loaded) = loaded else { return problems };
    problems.extend(config::check_static(&loaded));
    problems.extend(crate::registers::check(&loaded, online).await);
    problems
}
