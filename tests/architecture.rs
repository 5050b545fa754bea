//! ARCHITECTURE.md's rules of dependency, checked against the code: every file under `src/` is
//! read, comments, string literals and `#[cfg(test)]` modules are blanked (a unit test may use
//! the sandbox; a comment may name any module), and every `crate::…` / `registerbrygga::…` path
//! and every use of a network crate is held against the rules. A rule broken names the file,
//! the line and the rule.

use std::collections::BTreeSet;
use std::path::Path;

/// One reference to another part of the crate (or to a network crate) in a source file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Reference {
    line: usize,
    /// `cli`, `store`, `sandbox::tls`, … (the first two path segments after `crate::`), or the
    /// network crate's path (`reqwest`, `tokio::net`, …).
    target: String,
}

/// Crates and modules that do network or database I/O.
const NETWORK: &[&str] = &["reqwest", "sqlx", "tokio::net", "std::net", "hyper", "axum", "odbc_api", "tokio_rustls", "rustls"];

/// The rules, as in ARCHITECTURE.md ("Rules of dependency"). `file` is the path under `src/`.
fn violations(file: &str, refs: &[Reference]) -> Vec<String> {
    let module = |m: &'static str| refs.iter().filter(move |r| r.target == m || r.target.starts_with(&format!("{m}::")));
    let in_dir = |d: &str| file.starts_with(&format!("{d}/")) || file == format!("{d}.rs");
    let mut out = vec![];
    let mut bad = |r: &Reference, rule: &str| out.push(format!("src/{file}:{}: uses {} — {rule}", r.line, r.target));

    // The command line's types stay in the command line: the CLI builds plain arguments (or the
    // callee's own option structs) and calls in.
    if file != "cli.rs" && file != "main.rs" {
        for r in module("cli") {
            bad(r, "`cli` types do not travel beyond cli.rs and main.rs");
        }
    }
    if file == "daemon.rs" {
        for r in module("demo") {
            bad(r, "the daemon does not call into `demo`");
        }
    }
    // One direction, as the data flows: the scheduler reads the configuration.
    if file == "config.rs" || in_dir("config") {
        for r in module("scheduler") {
            bad(r, "`config` does not depend on the scheduler (the scheduler reads the configuration)");
        }
    }
    if in_dir("model") {
        for r in refs.iter().filter(|r| !r.target.starts_with("model") && !NETWORK.contains(&r.target.as_str())) {
            bad(r, "`model` depends on nothing in the crate");
        }
    }
    if in_dir("registers") || in_dir("outbox") || in_dir("model") {
        for m in ["store", "sinks", "sources", "delivery", "pipeline", "admin", "daemon", "app", "scheduler", "sandbox", "demo"] {
            for r in module(m) {
                bad(r, "`registers/*`, `outbox` and `model` are pure: no store, sinks, sources or network");
            }
        }
        for r in refs.iter().filter(|r| NETWORK.contains(&r.target.as_str())) {
            bad(r, "`registers/*`, `outbox` and `model` are pure: no network");
        }
    }
    if in_dir("sources") {
        for r in module("store") {
            bad(r, "`sources/*` never touch the store (the pipeline writes)");
        }
    }
    // The sandbox plays the other side: only `demo` (which also holds the `sandbox` command) and
    // the shared TLS helpers may be used from the daemon.
    if !in_dir("sandbox") && file != "demo.rs" {
        for r in module("sandbox").filter(|r| r.target != "sandbox::tls") {
            bad(r, "nothing in the daemon depends on `sandbox` except `demo`, the `sandbox` command and `sandbox/tls.rs`");
        }
    }
    out
}

/// Blank comments, string and char literals (keeping line breaks), so only code is searched.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |s: &[u8], out: &mut String| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&rest[..end], &mut out);
            i += end;
        } else if rest.starts_with(b"/*") {
            let end = src[i + 2..].find("*/").map(|e| e + 4).unwrap_or(rest.len());
            blank(&rest[..end], &mut out);
            i += end;
        } else if (rest[0] == b'r' || rest.starts_with(b"br")) && {
            let s = if rest[0] == b'b' { &rest[2..] } else { &rest[1..] };
            let hashes = s.iter().take_while(|&&c| c == b'#').count();
            s.get(hashes) == Some(&b'"') && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        } {
            let pre = if rest[0] == b'b' { 2 } else { 1 };
            let hashes = rest[pre..].iter().take_while(|&&c| c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = pre + hashes + 1;
            let end = src[i + body..].find(&close).map(|e| body + e + close.len()).unwrap_or(rest.len());
            blank(&rest[..end], &mut out);
            i += end;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&rest[..end], &mut out);
            i += end;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{..}', 'é') or a lifetime ('a): only the former is blanked.
            let end = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
            } else {
                let ch = src[i + 1..].chars().next().map(|c| c.len_utf8()).unwrap_or(1);
                (rest.get(1 + ch) == Some(&b'\'')).then_some(2 + ch)
            };
            match end {
                Some(e) => {
                    blank(&rest[..e], &mut out);
                    i += e;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = src[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Blank every `#[cfg(test)] mod … { … }` (unit tests may use anything, e.g. the sandbox).
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    let mut from = 0;
    while let Some(p) = out[from..].find("#[cfg(test)]").map(|p| p + from) {
        let after = &out[p..];
        let Some(brace) = after.find('{') else { break };
        if !after[..brace].contains("mod ") || after[..brace].contains(';') {
            from = p + 1;
            continue;
        }
        let mut depth = 0;
        let mut end = after.len();
        for (k, c) in after[brace..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = brace + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        let blanked: String = after[..end].chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect();
        out.replace_range(p..p + end, &blanked);
        from = p + end;
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every `crate::a::b`, `crate::{a, b::c}` and `registerbrygga::…` path, as `a` or `a::b`, and
/// every use of a network crate.
fn references(src: &str) -> Vec<Reference> {
    let code = without_test_modules(&code_only(src));
    let mut refs = BTreeSet::new();
    let line_of = |pos: usize| code[..pos].matches('\n').count() + 1;
    for root in ["crate::", "registerbrygga::"] {
        let mut from = 0;
        while let Some(p) = code[from..].find(root).map(|p| p + from) {
            from = p + root.len();
            if p > 0 && code[..p].chars().next_back().is_some_and(|c| is_ident(c)) {
                continue;
            }
            let rest = &code[from..];
            if let Some(group) = rest.strip_prefix('{') {
                // crate::{a, b::{c, d}, e}: the top-level names of the group.
                let mut depth = 0;
                let mut item = String::new();
                let mut items = vec![];
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                        _ if depth == 0 => item.push(c),
                        _ => {}
                    }
                }
                items.push(item);
                for it in items {
                    let path: Vec<&str> = it.split("::").map(str::trim).filter(|s| !s.is_empty()).collect();
                    if let Some(first) = path.first() {
                        let first = first.split_whitespace().next().unwrap_or("");
                        let target = match path.get(1) {
                            Some(second) if second.chars().all(is_ident) => format!("{first}::{second}"),
                            _ => first.to_string(),
                        };
                        refs.insert(Reference { line: line_of(p), target });
                    }
                }
            } else {
                let seg: Vec<&str> = rest.split("::").take(2).map(|s| s.split(|c: char| !is_ident(c)).next().unwrap_or("")).collect();
                let (first, second) = (seg.first().copied().unwrap_or(""), seg.get(1).copied().unwrap_or(""));
                let first_len = first.len();
                let target = if !second.is_empty() && rest[first_len..].starts_with("::") { format!("{first}::{second}") } else { first.to_string() };
                if !first.is_empty() {
                    refs.insert(Reference { line: line_of(p), target });
                }
            }
        }
    }
    for net in NETWORK {
        let mut from = 0;
        while let Some(p) = code[from..].find(net).map(|p| p + from) {
            from = p + net.len();
            let before_ok = p == 0 || !code[..p].chars().next_back().is_some_and(|c| is_ident(c) || c == ':');
            let after_ok = code[from..].starts_with("::") || !code[from..].chars().next().is_some_and(|c| is_ident(c));
            if before_ok && after_ok && code[from..].starts_with("::") {
                refs.insert(Reference { line: line_of(p), target: net.to_string() });
            }
        }
    }
    refs.into_iter().collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_code_keeps_the_rules_of_dependency() {
    let mut files = vec![];
    rust_files(Path::new("src"), &mut files);
    files.sort();
    assert!(files.len() > 50, "src/ read from the crate root");
    let mut all = vec![];
    for f in &files {
        let rel = f.strip_prefix("src").unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(f).unwrap();
        all.extend(violations(&rel, &references(&text)));
    }
    assert!(all.is_empty(), "imports that run against ARCHITECTURE.md's rules of dependency:\n{}", all.join("\n"));
    let arch = std::fs::read_to_string("ARCHITECTURE.md").unwrap();
    assert!(arch.contains("tests/architecture.rs"), "ARCHITECTURE.md names the test that holds its rules");
}

/// The checker itself finds each kind of break (so the test above cannot pass by seeing nothing).
#[test]
fn the_checker_finds_every_kind_of_break() {
    let cases: &[(&str, &str, &str)] = &[
        ("daemon.rs", "use crate::cli::{BackfillArgs, RunArgs};", "`cli` types"),
        ("admin/mod.rs", "pub async fn f(c: crate::cli::UsersCmd) {}", "`cli` types"),
        ("daemon.rs", "fn f() { crate::demo::deliver_with_progress(); }", "into `demo`"),
        ("config.rs", "use crate::{model, scheduler::parse_cron};", "scheduler"),
        ("registers/sar/mod.rs", "use crate::store::{EpisodeRow, RecordKey};", "pure"),
        ("registers/pvk/mod.rs", "fn f() -> crate::sinks::export::Labels { todo() }", "pure"),
        ("outbox/mod.rs", "use crate::store::ChangeSet;", "pure"),
        ("registers/mod.rs", "async fn f() { reqwest::get(\"x\").await; }", "no network"),
        ("sources/riv/mod.rs", "use crate::store::Store;", "never touch the store"),
        ("pipeline/mod.rs", "use crate::sandbox::journal::Population;", "`sandbox`"),
        ("model/mod.rs", "use crate::config::Settings;", "`model` depends on nothing"),
    ];
    for (file, src, rule) in cases {
        let v = violations(file, &references(src));
        assert!(v.iter().any(|m| m.contains(rule)), "{file}: `{src}` not caught as `{rule}`: {v:?}");
    }
    // What the rules allow: the TLS helpers, a unit test using the sandbox, comments and strings
    // naming a module, the scheduler reading the configuration.
    let allowed: &[(&str, &str)] = &[
        ("sources/riv/client.rs", "let c = crate::sandbox::tls::http_client(&t, d, false)?;"),
        ("sources/riv/parse.rs", "fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::sandbox::journal::Population;\n}\n"),
        ("daemon.rs", "// crate::demo::run is the demo\nlet s = \"crate::cli::RunArgs\"; let c = '\"'; fn g<'a>(x: &'a str) {}"),
        ("scheduler/mod.rs", "use crate::config::CatchUp;"),
        ("demo.rs", "use crate::sandbox::env::SandboxEnv;"),
        ("cli.rs", "use crate::cli::Cli;"),
    ];
    for (file, src) in allowed {
        let v = violations(file, &references(src));
        assert!(v.is_empty(), "{file}: `{src}` wrongly refused: {v:?}");
    }
}
