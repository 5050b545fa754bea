//! `config check`: every problem at once — file, key, reason.

use crate::config::{self, LoadOptions, Problem};

/// Load, validate statically, then ask each register module about its own files.
pub async fn check_all(opts: &LoadOptions, online: bool) -> Vec<Problem> {
    let (loaded, mut problems) = config::load_collect(opts);
    let Some(loaded) = loaded else { return problems };
    problems.extend(config::check_static(&loaded));
    problems.extend(crate::registers::check(&loaded, online).await);
    problems.extend(keyword_tables(&loaded));
    problems
}

/// Every connector's keyword table (`keywords.toml`) must load; a connector whose source reads
/// keyword notes must have one.
fn keyword_tables(loaded: &config::Loaded) -> Vec<Problem> {
    use crate::sources::riv::keywords::{KeywordTable, FILE_NAME};
    let mut p = vec![];
    for c in &loaded.connectors {
        let f = c.dir.join(FILE_NAME);
        if f.exists() {
            if let Err(e) = KeywordTable::load(&f) {
                p.push(Problem::error(&f.display().to_string(), "keyword", format!("{e:#}")));
            }
        } else if loaded.settings.sources.get(&c.source).is_some_and(|s| s.kind == config::SourceKind::Riv && s.observations != config::ObservationSource::Structured) {
            p.push(Problem::error(&c.dir.join("connector.toml").display().to_string(), "source", format!("source {} reads keyword notes, but this connector has no {FILE_NAME}", c.source)));
        }
    }
    p
}
