//! `registerbrygga config check`: every problem at once, each naming file, key and reason.

mod common;

use std::process::Command;

fn write(dir: &std::path::Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn check(dir: &std::path::Path, json: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_registerbrygga"));
    cmd.current_dir(dir).args(["config", "check", "--config-dir", "config"]);
    if json {
        cmd.arg("--json");
    }
    // Isolation from the developer's environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("RB__") || k == "RB_ENV" {
            cmd.env_remove(k);
        }
    }
    let out = cmd.env("RB_TEST_KEY", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

const GOOD_DEFAULT: &str = r#"
[service]
connectors_dir = "connectors"
[security]
encryption_keys = [{ env = "RB_TEST_KEY" }]
pseudonym_key = { env = "RB_TEST_KEY" }
[sources.journal]
kind = "riv"
base_url = "https://127.0.0.1:7443/vp"
[registers.sar]
kind = "stratum"
base_url = "https://127.0.0.1:7444"
register_id = 104
units = [{ hsa_id = "SE2321000156-FT01", unit_code = "1701" }]
"#;

const GOOD_CONNECTOR: &str = r#"
name = "demo"
kind = "sar"
source = "journal"
register = "sar"
schedule = "30 2 * * *"
units = ["SE2321000156-FT01"]
patients = { mode = "engagement_index" }

[options]
mapping = "mapping.toml"
metadata_file = "METADATA"
windows = { three_months = { from_day = 91, to_day = 152 }, one_year = { from_day = 365, to_day = 540 } }
"#;

/// A connector folder like the shipped SAR one (its mapping and the register metadata).
fn connector(dir: &std::path::Path, text: &str) {
    let metadata = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/stratum/sar-104.json");
    write(dir, "connectors/demo/connector.toml", &text.replace("METADATA", &metadata.display().to_string()));
    std::fs::copy(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/artrosregistret/mapping.toml"), dir.join("connectors/demo/mapping.toml")).unwrap();
}

#[test]
fn a_good_configuration_passes() {
    let d = common::test_dir();
    write(d.path(), "config/default.toml", GOOD_DEFAULT);
    connector(d.path(), GOOD_CONNECTOR);
    let (code, out) = check(d.path(), false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("configuration OK") || out.contains("0 error(s)"), "{out}");
}

#[test]
fn three_different_mistakes_are_all_reported() {
    let d = common::test_dir();
    // 1: a type error in a section; 2: a non-https register URL; 3: an invalid cron in a connector.
    let cfg = GOOD_DEFAULT.replace("[service]", "[delivery]\nworkers = \"many\"\n[service]").replace("https://127.0.0.1:7444", "ftp://registers.example");
    write(d.path(), "config/default.toml", &cfg);
    connector(d.path(), &GOOD_CONNECTOR.replace("30 2 * * *", "61 2 * * *"));
    let (code, out) = check(d.path(), false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("config/default.toml") && out.contains("delivery.workers"), "type error not reported with file and key:\n{out}");
    assert!(out.contains("registers.sar.base_url") && out.contains("https"), "URL problem not reported:\n{out}");
    assert!(out.contains("connectors/demo/connector.toml") && out.contains("schedule") && out.contains("cron"), "cron problem not reported:\n{out}");
    assert!(out.contains("3 error(s)"), "{out}");

    let (code, json) = check(d.path(), true);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.iter().filter(|p| p["warning"] == false).count(), 3, "{json}");
    for p in problems {
        assert!(!p["file"].as_str().unwrap().is_empty() && !p["key"].as_str().unwrap().is_empty() && !p["reason"].as_str().unwrap().is_empty(), "{p}");
    }
}

#[test]
fn secrets_cannot_be_literal_values_in_a_file() {
    let d = common::test_dir();
    let cfg = GOOD_DEFAULT.replace("pseudonym_key = { env = \"RB_TEST_KEY\" }", "pseudonym_key = \"c2VjcmV0\"");
    write(d.path(), "config/default.toml", &cfg);
    connector(d.path(), GOOD_CONNECTOR);
    let (code, out) = check(d.path(), false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("security"), "{out}");
    assert!(!out.contains("c2VjcmV0"), "a secret value must not be echoed:\n{out}");
}

#[test]
fn unknown_connector_references_and_units_are_reported_together() {
    let d = common::test_dir();
    write(d.path(), "config/default.toml", GOOD_DEFAULT);
    let c = GOOD_CONNECTOR.replace("source = \"journal\"", "source = \"nowhere\"").replace("register = \"sar\"", "register = \"nothing\"").replace("[\"SE2321000156-FT01\"]", "[\"SE2321000156-FT01\", \"XX-1\"]");
    connector(d.path(), &c);
    let (code, out) = check(d.path(), false);
    assert_eq!(code, 1);
    for needle in ["no source named 'nowhere'", "no register named 'nothing'", "units[1]"] {
        assert!(out.contains(needle), "missing {needle:?}:\n{out}");
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The newcomer's path: on a fresh clone `config check` says which command creates the missing
/// sandbox files, and after that one command (`registerbrygga sandbox`, as the README says) the
/// shipped local configuration checks without errors.
#[test]
fn a_fresh_clone_is_told_how_to_make_the_local_config_work_and_it_does_after_that() {
    let d = common::test_dir();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["config", "connectors", "conformance"] {
        copy_tree(&root.join(dir), &d.path().join(dir));
    }
    let fresh = |cmd: &mut Command| {
        cmd.current_dir(d.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("RB_") {
                cmd.env_remove(k);
            }
        }
    };
    let mut c = Command::new(env!("CARGO_BIN_EXE_registerbrygga"));
    c.args(["config", "check"]);
    fresh(&mut c);
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert!(!errors.is_empty(), "{text}");
    for e in &errors {
        assert!(e.contains("`registerbrygga sandbox` creates it"), "an error does not say how to fix it: {e}");
    }
    assert!(errors.iter().any(|e| e.contains("security.encryption_keys")) && errors.iter().any(|e| e.contains("registers.sar.api_key")), "{text}");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains("## First run") && readme.contains("registerbrygga sandbox"), "the README documents the command");

    // The one command (free ports here, so parallel tests do not collide).
    let mut c = Command::new(env!("CARGO_BIN_EXE_registerbrygga"));
    c.args(["sandbox", "--patients", "10", "--journal-port", "0", "--stratum-port", "0"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    fresh(&mut c);
    let mut sandbox = c.spawn().unwrap();
    let ready = d.path().join("var/sandbox/sandbox.toml");
    for _ in 0..600 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut c = Command::new(env!("CARGO_BIN_EXE_registerbrygga"));
    c.args(["config", "check"]);
    fresh(&mut c);
    let out = c.output().unwrap();
    let _ = sandbox.kill();
    let _ = sandbox.wait();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(ready.exists(), "the sandbox did not start");
    assert_eq!(out.status.code(), Some(0), "the shipped local config does not check clean after `registerbrygga sandbox`:\n{text}");
    assert!(text.lines().any(|l| l.starts_with("0 error(s)")) || text.contains("configuration OK"), "{text}");
}
