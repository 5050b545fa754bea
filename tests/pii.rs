//! Personal data never reaches a log line: a full run of the real daemon against the sandbox
//! (bad items included, debug logging for every crate, human and JSON formats) is captured and
//! searched for anything shaped like a personnummer or samordningsnummer that is valid.

mod common;

use registerbrygga::model::PatientId;
use registerbrygga::sandbox::env::{SandboxEnv, SandboxSpec};
use std::path::Path;
use std::process::Command;

fn identities_in(text: &str, today: chrono::NaiveDate) -> Vec<String> {
    // 10 or 12 digits, optionally with '-'/'+' before the last four, not part of a longer run.
    let re = regex::Regex::new(r"(?:^|[^0-9])((?:18|19|20)?[0-9]{6}[-+]?[0-9]{4})(?:[^0-9]|$)").unwrap();
    let mut found = vec![];
    let mut pos = 0;
    while let Some(c) = re.captures_at(text, pos) {
        let m = c.get(1).unwrap();
        pos = m.end();
        if PatientId::parse_national(m.as_str(), today).is_ok() {
            found.push(format!("…{}…", &text[m.start().saturating_sub(30)..m.start()]));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_logs_no_personal_data() {
    let dir = common::test_dir();
    let today = registerbrygga::pipeline::today_stockholm();
    let mut spec = SandboxSpec::new(5, 80, today);
    spec.bad_item_share = 0.05; // invalid personnummer and unknown codes: the error paths log too
    let env = SandboxEnv::start(&dir.path().join("sandbox"), spec).await.unwrap();
    env.emulator.set_faults(registerbrygga::sandbox::stratum::Faults { error_share: 0.1, ..Default::default() });
    let mut all = String::new();
    for (format, run) in [("json", "backfill"), ("human", "once")] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_registerbrygga"));
        c.arg("--config-dir").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config")).arg("--config").arg(env.config_file()).arg("--env").arg("local");
        if run == "backfill" {
            c.args(["backfill", "--from", &(today - chrono::Duration::days(900)).to_string(), "--to", &today.to_string(), "--deliver"]);
        } else {
            c.args(["run", "--once"]);
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("RB__") || k == "RB_LOG" {
                c.env_remove(k);
            }
        }
        let out = c
            .env("RB__ADMIN__ENABLED", "false")
            .env("RB__TELEMETRY__FORMAT", format)
            // Everything at debug: our crate and every dependency.
            .env("RB__TELEMETRY__LEVEL", "debug")
            .output()
            .unwrap();
        assert!(out.status.success(), "{run} failed: {}", String::from_utf8_lossy(&out.stderr).chars().take(2000).collect::<String>());
        all.push_str(&String::from_utf8_lossy(&out.stdout));
        all.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(all.lines().count() > 200, "the run logged: {} lines", all.lines().count());
    assert!(all.contains("quarantine") || all.contains("refused") || all.contains("invalid"), "bad items were processed");
    let found = identities_in(&all, today);
    assert!(found.is_empty(), "personal identities in the logs: {} e.g. {:?}", found.len(), found.iter().take(3).collect::<Vec<_>>());
    // And none of the population's actual ids, in any form.
    for p in env.population.truth().patients() {
        let raw = p.id.raw().to_string();
        assert!(!all.contains(&raw), "a patient id reached the logs");
        if raw.len() == 12 {
            assert!(!all.contains(&raw[2..]), "a 10-digit patient id reached the logs");
        }
    }
    // Sanity of the checker itself: it does find a planted identity.
    assert_eq!(identities_in("x patient=19121212-1212 y", today).len(), 1);
}
