//! Operations commands as a user runs them: `demo` (the README's first command), `backfill
//! --dry-run` (reports without storing or sending), `inspect`, `audit verify` on a tampered
//! store, and `recover --after-restore`.

mod common;

use registerbrygga::sandbox::env::{SandboxEnv, SandboxSpec};
use std::path::Path;
use std::process::Command;

fn cmd(env: Option<&SandboxEnv>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_registerbrygga"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, _) in std::env::vars() {
        if k.starts_with("RB__") || k == "RB_LOG" {
            c.env_remove(k);
        }
    }
    if let Some(e) = env {
        c.arg("--config-dir").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config")).arg("--config").arg(e.config_file()).arg("--env").arg("local");
        c.env("RB__ADMIN__ENABLED", "false");
    }
    c
}

#[test]
fn demo_runs_end_to_end_and_prints_its_summary() {
    let dir = common::test_dir();
    let out = cmd(None)
        .args(["demo", "--no-serve", "--patients", "60", "--dir"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "demo failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for needle in ["Summary", "artrosregistret", "primarvardskvalitet", "FVPat", "per indicator", "Worklist", "Failures: 0 rejected, 0 dead", "Audit chain: verified"] {
        assert!(text.contains(needle), "missing {needle:?} in the demo summary:\n{text}");
    }
    let fv: usize = text.lines().find(|l| l.trim_start().starts_with("FVPat")).and_then(|l| l.split_whitespace().nth(1)).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(fv > 0, "registrations were delivered:\n{text}");
    // The worklist is a table (unit, form, items, most often missing), not a debug map.
    let wl: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("Worklist")).take_while(|l| !l.starts_with("Failures")).collect();
    assert!(!wl.is_empty() && !wl.concat().contains('{') && !wl.concat().contains("\":"), "the worklist is printed as a map:\n{}", wl.join("\n"));
    let items: usize = wl[0].split_whitespace().find_map(|w| w.parse().ok()).expect("item count");
    if items > 0 {
        let header = wl[1].split_whitespace().collect::<Vec<_>>();
        assert_eq!(header[..3], ["unit", "form", "items"], "{}", wl.join("\n"));
        assert!(wl[2].trim_start().starts_with("----"), "{}", wl.join("\n"));
        let sum: usize = wl[3..].iter().filter_map(|l| l.split_whitespace().nth(2)?.parse::<usize>().ok()).sum();
        assert_eq!(sum, items, "the rows add up to the count:\n{}", wl.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_dry_run_reports_without_storing_or_sending() {
    let dir = common::test_dir();
    let today = registerbrygga::pipeline::today_stockholm();
    let env = SandboxEnv::start(&dir.path().join("sandbox"), SandboxSpec::new(3, 60, today)).await.unwrap();
    let from = (today - chrono::Duration::days(900)).to_string();
    let to = today.to_string();
    let run = |dry: bool| {
        let mut c = cmd(Some(&env));
        c.args(["backfill", "--from", &from, "--to", &to, "--json"]);
        if dry {
            c.arg("--dry-run");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let dry = run(true);
    let sar = dry["runs"].as_array().unwrap().iter().find(|r| r["connector"] == "artrosregistret").unwrap().clone();
    assert_eq!(sar["status"], "dry-run");
    let would = sar["records_created"].as_u64().unwrap();
    assert!(would > 0, "the dry run reports what would be sent: {sar}");
    let writes = env.emulator.counts().total();
    assert_eq!((writes.post, writes.put, writes.delete), (0, 0, 0), "a dry run sends nothing (it may read the register's metadata)");
    // Nothing was stored: listing transfers finds none.
    let out = cmd(Some(&env)).args(["transfers", "list", "--json"]).output().unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().len(), 0);
    // The real backfill then queues exactly what the dry run announced.
    let real = run(false);
    let r = real["runs"].as_array().unwrap().iter().find(|r| r["connector"] == "artrosregistret").unwrap().clone();
    assert_eq!(r["records_created"].as_u64().unwrap(), would);
    // A second dry run over the same period would change nothing.
    let again = run(true);
    let a = again["runs"].as_array().unwrap().iter().find(|r| r["connector"] == "artrosregistret").unwrap().clone();
    assert_eq!((a["records_created"].as_u64(), a["records_updated"].as_u64(), a["records_retracted"].as_u64()), (Some(0), Some(0), Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_command_names_the_tampered_event_and_recover_marks_unknowns() {
    let dir = common::test_dir();
    let today = registerbrygga::pipeline::today_stockholm();
    let env = SandboxEnv::start(&dir.path().join("sandbox"), SandboxSpec::new(4, 30, today)).await.unwrap();
    let from = (today - chrono::Duration::days(900)).to_string();
    let out = cmd(Some(&env)).args(["backfill", "--from", &from, "--to", &today.to_string()]).output().unwrap();
    assert!(out.status.success());
    let ok = cmd(Some(&env)).args(["audit", "verify", "--json"]).output().unwrap();
    assert!(ok.status.success());
    // After a restore nothing is known to be delivered: recover marks the undelivered keys.
    let rec = cmd(Some(&env)).args(["recover", "--after-restore", "--actor", "drift"]).output().unwrap();
    let text = String::from_utf8_lossy(&rec.stdout).to_string();
    assert!(rec.status.success() && text.contains("will be looked up"), "{text}");
    let n: u64 = text.split_whitespace().next().unwrap().parse().unwrap();
    assert!(n > 0);
    // Edit one event in the database: the command fails and names it.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", env.db_path().display())).await.unwrap();
    sqlx::query("UPDATE audit_events SET actor = 'mallory' WHERE seq = 5").execute(&pool).await.unwrap();
    pool.close().await;
    let bad = cmd(Some(&env)).args(["audit", "verify"]).output().unwrap();
    let text = String::from_utf8_lossy(&bad.stdout).to_string();
    assert!(!bad.status.success(), "{text}");
    assert!(text.contains("BROKEN at event 5"), "{text}");
}

#[test]
fn inspect_prints_records_and_refusals_apart() {
    let dir = common::test_dir();
    let today = registerbrygga::pipeline::today_stockholm();
    let pop = std::sync::Arc::new(registerbrygga::sandbox::journal::Population::generate(&registerbrygga::sandbox::journal::PopulationSpec::new(9, 5, today)));
    let doc = registerbrygga::sandbox::journal::render_patient(&pop, registerbrygga::sandbox::journal::Contract::GetCareContacts, 0);
    let file = dir.path().join("contacts.xml");
    std::fs::write(&file, &doc).unwrap();
    let out = cmd(None).args(["inspect", "--json"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["records"].as_array().unwrap().is_empty());
    assert!(v["refused"].is_array());
    // Human output: a table whose patient column holds the patient's pseudonym (no `null`, no
    // personnummer); identities only with --show-identities.
    let pnr = pop.patient_id(0).raw().to_string();
    let out = cmd(None).arg("inspect").arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    let rows: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("records")).skip(1).take_while(|l| !l.trim().is_empty()).collect();
    assert!(rows.len() >= 3, "header, rule and records:\n{text}");
    assert_eq!(rows[0].split_whitespace().take(3).collect::<Vec<_>>(), ["kind", "patient", "document"], "{text}");
    let is_pseudonym = |w: &str| w.len() == 24 && w.bytes().all(|b| b.is_ascii_hexdigit());
    for r in &rows[2..] {
        let cells: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(cells[0], "care_contact", "the kind column names the record kind:\n{text}");
        assert!(is_pseudonym(cells[1]), "the patient column holds a pseudonym: {r}");
    }
    assert!(!text.contains("null"), "{text}");
    assert!(!text.contains(&pnr) && !text.contains(&pnr[2..]), "inspect printed a personnummer without being asked:\n{text}");
    assert!(text.contains("patients: pseudonyms"), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&cmd(None).args(["inspect", "--json"]).arg(&file).output().unwrap().stdout).unwrap();
    assert!(v["records"].as_array().unwrap().iter().all(|r| r["patient"]["id"] == "<redacted>" && is_pseudonym(r["patient"]["pseudonym"].as_str().unwrap())));
    let shown = String::from_utf8_lossy(&cmd(None).args(["inspect", "--show-identities"]).arg(&file).output().unwrap().stdout).to_string();
    assert!(shown.contains(&pnr) && shown.contains("identities shown"), "--show-identities prints the identity:\n{shown}");
    let help = String::from_utf8_lossy(&cmd(None).args(["inspect", "--help"]).output().unwrap().stdout).to_string();
    assert!(help.contains("--show-identities") && help.contains("pseudonym"), "{help}");

    // A broken document is refused as a whole: non-zero exit, the reason names the document.
    std::fs::write(&file, b"<not-xml").unwrap();
    let out = cmd(None).args(["inspect"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
}

/// (actor, detail) of audit events of a kind, read with the sqlite3-free sqlx driver on a
/// private runtime (the closure that calls it is synchronous).
fn rusqlite_free_read(db: &Path, kind: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let db = db.to_path_buf();
    let kind = kind.to_string();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async move {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display())).await?;
            let rows: Vec<(String, String)> = sqlx::query_as("SELECT actor, detail FROM audit_events WHERE kind = ?1 ORDER BY seq").bind(&kind).fetch_all(&pool).await?;
            pool.close().await;
            Ok(rows.into_iter().map(|(a, d)| serde_json::json!({"actor": a, "detail": serde_json::from_str::<serde_json::Value>(&d).unwrap_or_default()})).collect())
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("reader thread panicked"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_reload_is_applied_when_valid_and_audited_with_who_and_why() {
    let dir = common::test_dir();
    let today = registerbrygga::pipeline::today_stockholm();
    let env = SandboxEnv::start(&dir.path().join("sandbox"), SandboxSpec::new(6, 10, today)).await.unwrap();
    let log_path = dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut daemon = cmd(Some(&env)).arg("run").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
    // What the daemon said, for the failure messages.
    let said = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Read the audit log straight from the database: while the configuration file is broken on
    // purpose, CLI commands (which load it) would refuse to start.
    let db = env.db_path();
    let audit = |kind: &str| -> Vec<serde_json::Value> {
        let Ok(conn) = rusqlite_free_read(&db, kind) else { return vec![] };
        conn
    };
    let wait_for = |pred: &dyn Fn(&[serde_json::Value]) -> bool| {
        // Polled often, so that the next step follows the event closely (the signal below then
        // tends to arrive while the daemon is between serving periods).
        for _ in 0..300 {
            if pred(&audit("config.reload")) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    };
    // Wait until the daemon is up (its first config.loaded event).
    for _ in 0..60 {
        if !audit("config.loaded").is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // The register answers slowly from now on, so a reload's new serving period takes a while to
    // start (it loads the register metadata first): the signal below arrives inside that gap.
    env.emulator.set_faults(registerbrygga::sandbox::stratum::Faults { slow_share: 1.0, slow_ms: 500, ..Default::default() });
    // A valid reload, requested through the store: applied by the running daemon, with who and why.
    let out = cmd(Some(&env)).args(["config", "reload", "--reason", "ny enhet tillagd", "--actor", "anna"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        wait_for(&|ev| ev.iter().any(|e| e["detail"]["applied"] == true && e["actor"] == "anna" && e["detail"]["reason"] == "ny enhet tillagd")),
        "the reload was applied and audited: {:?}\n{}",
        audit("config.reload"),
        said()
    );
    // An invalid configuration is refused on SIGHUP; the daemon keeps running. The signal is sent
    // at once, while the daemon may still be starting its new serving period: it must not be lost.
    let cfg = std::fs::read_to_string(env.config_file()).unwrap();
    std::fs::write(env.config_file(), format!("{cfg}\n[delivery]\nworkers = \"many\"\n")).unwrap();
    unsafe {
        libc::kill(daemon.id() as i32, libc::SIGHUP);
    }
    assert!(wait_for(&|ev| ev.iter().any(|e| e["detail"]["applied"] == false && e["actor"] == "signal")), "the bad reload was refused and audited\n{}", said());
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon still runs\n{}", said());
    env.emulator.clear_faults();
    std::fs::write(env.config_file(), cfg).unwrap();
    unsafe {
        libc::kill(daemon.id() as i32, libc::SIGTERM);
    }
    let status = daemon.wait().unwrap();
    assert!(status.success(), "clean shutdown on SIGTERM: {status}\n{}", said());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_serves_the_same_journal_over_fhir() {
    use registerbrygga::model::Record;
    use registerbrygga::sources::{PullRequest, SourceItem};
    let dir = common::test_dir();
    let today = registerbrygga::pipeline::today_stockholm();
    let env = SandboxEnv::start(&dir.path().join("sandbox"), SandboxSpec::new(8, 25, today)).await.unwrap();
    let loaded = env.load_config(vec![]).unwrap();
    let settings = loaded.settings.sources.get("journal_fhir").expect("the sandbox configures a FHIR source").clone();
    let source = registerbrygga::sources::from_settings(&settings).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let req = PullRequest {
        connector: "fhir".into(),
        units: registerbrygga::sandbox::vocabulary::REHAB_UNITS.iter().chain(registerbrygga::sandbox::vocabulary::VC_UNITS.iter()).map(|u| registerbrygga::model::HsaId::parse(u).unwrap()).collect(),
        changed_since: None,
        window_from: today - chrono::Duration::days(900),
        window_to: today,
        discovery: registerbrygga::config::PatientDiscovery::All,
        connector_dir: dir.path().to_path_buf(),
        correlation_id: "t".into(),
        today,
    };
    let pull = tokio::spawn(async move { source.pull(&req, tx).await });
    let mut fhir_contacts = std::collections::BTreeSet::new();
    while let Some(item) = rx.recv().await {
        if let SourceItem::Patient(b) = item {
            for r in b.records {
                if let Record::CareContact(c) = &r {
                    fhir_contacts.insert(c.care_contact_id.clone());
                }
            }
        }
    }
    assert!(pull.await.unwrap().unwrap().complete);
    // The same care contacts (by care contact id: FHIR resources have ids of their own) as the
    // RIV-TA documents of the same journal.
    let ctx = registerbrygga::sources::riv::ParseContext::new("riv", today);
    let mut riv_contacts = std::collections::BTreeSet::new();
    for i in 0..env.population.len() {
        let doc = registerbrygga::sandbox::journal::render_patient(&env.population, registerbrygga::sandbox::journal::Contract::GetCareContacts, i);
        for r in registerbrygga::sources::riv::parse_bytes(&doc, "riv", &ctx).unwrap().records {
            if let Record::CareContact(c) = &r {
                riv_contacts.insert(c.care_contact_id.clone());
            }
        }
    }
    assert!(!riv_contacts.is_empty());
    assert_eq!(fhir_contacts, riv_contacts);
}
