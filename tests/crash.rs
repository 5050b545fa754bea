//! Crash safety and replicas (issue #5). The real daemon runs as a separate process against the
//! sandbox (journal + Stratum emulator on loopback, mTLS, without the 409 rule so a duplicate
//! create would be accepted and seen) while the emulator injects faults; the
//! test kills it with SIGKILL at random moments, restarts it, and at the end the register holds
//! exactly the expected registrations — none missing, none twice — and the audit chain verifies.
//! Three daemons on one PostgreSQL share the work, survive losing one, and fire every schedule
//! tick exactly once.

mod common;

use rand::{Rng, SeedableRng};
use registerbrygga::config::Backend;
use registerbrygga::sandbox::env::{SandboxEnv, SandboxSpec};
use registerbrygga::sandbox::stratum::Faults;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LEASE_SECONDS: &str = "6";

struct Harness {
    env: SandboxEnv,
    dir: PathBuf,
    extra_env: Vec<(String, String)>,
    spawned: usize,
}

impl Harness {
    async fn start(backend: Backend, patients: usize, name: &str) -> Harness {
        let dir = common::test_dir().path().to_path_buf();
        let today = registerbrygga::pipeline::today_stockholm();
        let env = SandboxEnv::start(&dir.join("sandbox"), SandboxSpec::new(23, patients, today)).await.unwrap();
        // Without the 409 rule the register accepts (and counts) a second create of the same
        // registration, so a duplicate shows in what it holds instead of being refused.
        env.emulator.set_unique_rule(false);
        let mut extra_env = vec![
            ("RB__ADMIN__ENABLED".to_string(), "false".to_string()),
            ("RB__TELEMETRY__FORMAT".into(), "json".into()),
            ("RB__TELEMETRY__LEVEL".into(), "registerbrygga=debug,info".into()),
            // A short client timeout so the emulator's held answers become timeouts.
            ("RB__REGISTERS__SAR__TIMEOUT_SECONDS".into(), "2".into()),
            ("RB__REGISTERS__PVK__TIMEOUT_SECONDS".into(), "2".into()),
            ("RB__DELIVERY__LEASE_SECONDS".into(), LEASE_SECONDS.into()),
            // SIGKILL interrupts sends, and an interrupted send counts as an attempt: give the
            // retry budget room so nothing ends as a dead letter under this much abuse.
            ("RB__REGISTERS__SAR__RETRY__MAX_ATTEMPTS".into(), "200".into()),
            ("RB__REGISTERS__PVK__RETRY__MAX_ATTEMPTS".into(), "200".into()),
            ("RB__DELIVERY__HEARTBEAT_SECONDS".into(), "2".into()),
            ("RB__DELIVERY__RESCUE_INTERVAL_SECONDS".into(), "1".into()),
            ("RB__DELIVERY__POLL_INTERVAL_MS".into(), "50".into()),
            ("RB__SERVICE__SHUTDOWN_GRACE_SECONDS".into(), "5".into()),
        ];
        if backend == Backend::Postgres {
            let url = common::fresh_pg_url(name).await;
            extra_env.push(("RB_CRASH_PG_URL".into(), url));
            extra_env.push(("RB__STORE__BACKEND".into(), "postgres".into()));
            extra_env.push(("RB__STORE__POSTGRES_URL__ENV".into(), "RB_CRASH_PG_URL".into()));
        }
        Harness { env, dir, extra_env, spawned: 0 }
    }

    fn command(&mut self, args: &[&str], instance: &str) -> Command {
        self.spawned += 1;
        let log = std::fs::File::create(self.dir.join(format!("daemon-{:03}-{instance}.log", self.spawned))).unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_registerbrygga"));
        c.arg("--config-dir").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config"));
        c.arg("--config").arg(self.env.config_file());
        c.arg("--env").arg("local");
        c.args(args);
        c.current_dir(env!("CARGO_MANIFEST_DIR"));
        for (k, _) in std::env::vars() {
            if k.starts_with("RB__") {
                c.env_remove(k);
            }
        }
        c.envs(self.extra_env.iter().cloned());
        c.env("RB__SERVICE__INSTANCE_ID", instance);
        c.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log));
        c
    }

    fn backfill(&mut self, instance: &str) -> Child {
        let from = (self.env.today - chrono::Duration::days(900)).to_string();
        let to = self.env.today.to_string();
        self.command(&["backfill", "--from", &from, "--to", &to, "--deliver"], instance).spawn().unwrap()
    }

    /// Until the daemon has nothing left to deliver (retries included): `run --once` repeatedly.
    /// Each run drains for at most a minute (leases left by the killed runs expire within
    /// `LEASE_SECONDS` and are taken over by the drain), so a handful of runs is plenty.
    fn finish(&mut self) {
        for _ in 0..8 {
            let status = self.command(&["run", "--once"], "final").status().unwrap();
            assert!(status.success(), "run --once failed; see the logs in {}", self.dir.display());
            if self.queued().is_empty() {
                return;
            }
        }
        let left: Vec<String> = self
            .queued()
            .iter()
            .take(10)
            .map(|r| format!("{} {} attempts={} next={} lease={} error={}", r["id"], r["state"], r["attempts"], r["next_attempt"], r["lease_owner"], r["last_error"]))
            .collect();
        panic!("work left after the final runs (logs in {}):\n{}", self.dir.display(), left.join("\n"));
    }

    /// Records still pending or sending.
    fn queued(&mut self) -> Vec<serde_json::Value> {
        let out = self.command(&["transfers", "list", "--json", "--limit", "100000"], "check").stdout(Stdio::piped()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("transfers list: {e}: {text}"));
        v.as_array().unwrap().iter().filter(|r| r["state"] == "pending" || r["state"] == "sending").cloned().collect()
    }

    fn audit_ok(&mut self) -> bool {
        self.command(&["audit", "verify"], "verify").status().unwrap().success()
    }

    /// (subject, unit, form, event date): a patient may hold two courses at one unit (a later
    /// course after the gap), told apart by their dates.
    fn held_sar(&self) -> Vec<(String, String, String, String)> {
        let mut v = vec![];
        for f in ["FVPat", "FVPT", "M3Pat", "M3PT", "Y1Pat"] {
            for r in self.env.emulator.registrations(104, f) {
                v.push((r.subject_key.clone().unwrap_or_default(), r.unit_code.clone(), f.to_string(), r.event_date.clone().unwrap_or_default()));
            }
        }
        v.sort();
        v
    }

    fn expected_sar(&self) -> Vec<(String, String, String, String)> {
        let mut v: Vec<(String, String, String, String)> = self
            .env
            .population
            .truth()
            .sar_expected()
            .into_iter()
            .map(|e| (e.subject_key.clone(), format!("17{}", &e.unit[e.unit.len() - 2..]), format!("{:?}", e.form), e.event_date.to_string()))
            .collect();
        v.sort();
        v
    }

    /// (connector, document key, content hash) of every stored journal record.
    async fn document_keys(&self, backend: Backend) -> BTreeSet<(String, String, String)> {
        match backend {
            Backend::Sqlite => sqlite_document_keys(&self.env.db_path()).await,
            Backend::Postgres => {
                let url = self.extra_env.iter().find(|(k, _)| k == "RB_CRASH_PG_URL").unwrap().1.clone();
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                let rows: Vec<(String, String, String)> = sqlx::query_as("SELECT connector, doc_key, content_hash FROM documents").fetch_all(&pool).await.unwrap();
                rows.into_iter().collect()
            }
        }
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().map(|x| x == "log").unwrap_or(false) {
                all.push_str(&std::fs::read_to_string(p).unwrap_or_default());
            }
        }
        all
    }
}

async fn sqlite_document_keys(path: &Path) -> BTreeSet<(String, String, String)> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display())).await.unwrap();
    let rows: Vec<(String, String, String)> = sqlx::query_as("SELECT connector, doc_key, content_hash FROM documents").fetch_all(&pool).await.unwrap();
    pool.close().await;
    rows.into_iter().collect()
}

fn sigterm(c: &Child) {
    unsafe {
        libc::kill(c.id() as i32, libc::SIGTERM);
    }
}

async fn crash_and_recover(backend: Backend) {
    let mut h = Harness::start(backend, 100, "crash").await;
    h.env.emulator.set_faults(Faults {
        error_share: 0.20,
        rate_limit_share: 0.05,
        retry_after_seconds: 1,
        timeout_share: 0.05,
        timeout_ms: 2500,
        drop_share: 0.025,
        drop_after_share: 0.025,
        ..Default::default()
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let started = Instant::now();
    let mut kills = 0;
    let mut posts_seen = vec![];
    while kills < 12 {
        let mut child = h.backfill(&format!("victim{kills}"));
        let wait = Duration::from_millis(rng.gen_range(1500..12000));
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_some() {
            // It finished before the kill: that run counts as a clean pass, not a kill.
            continue;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        posts_seen.push(h.env.emulator.counts().total().post);
        eprintln!("kill {kills} after {wait:?}: register has {} writes; journal requests {:?}", posts_seen.last().unwrap(), h.env.journal.requests());
        assert!(started.elapsed() < Duration::from_secs(400), "the kill loop takes too long");
    }
    // Some kills must have landed while delivering (the register saw writes between kills).
    assert!(posts_seen.windows(2).filter(|w| w[1] > w[0]).count() >= 3, "kills landed during delivery: {posts_seen:?}");
    let mut last = h.backfill("survivor");
    assert!(last.wait().unwrap().success(), "the final backfill failed; logs in {}", h.dir.display());
    h.env.emulator.clear_faults();
    h.finish();

    let held = h.held_sar();
    let expected = h.expected_sar();
    let unique: BTreeSet<_> = held.iter().cloned().collect();
    assert_eq!(unique.len(), held.len(), "a registration was created twice");
    let out = h.command(&["transfers", "list", "--json", "--limit", "100000"], "check").stdout(Stdio::piped()).output().unwrap();
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&serde_json::Value> = all.as_array().unwrap().iter().filter(|r| r["state"] == "dead" || r["state"] == "rejected").collect();
    assert!(failed.is_empty(), "dead letters after the crashes: {failed:?}");
    let missing: Vec<_> = expected.iter().filter(|e| !unique.contains(*e)).collect();
    let extra: Vec<_> = held.iter().filter(|e| !expected.contains(e)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "after {kills} kills:\nmissing {missing:?}\nextra {extra:?}");
    assert_eq!(h.env.emulator.counts().get("FVPat", "1701").post as usize, held.iter().filter(|r| r.2 == "FVPat" && r.1 == "1701").count());
    // Every accepted create is one registration held: none was created twice and removed.
    let sar_posts: u64 = h.env.emulator.counts().by_form_unit.iter().filter(|((reg, _, _), _)| *reg == 104).map(|(_, c)| c.post).sum();
    assert_eq!(sar_posts as usize, held.len(), "accepted SAR creates vs registrations held");
    // PVK aggregates: at most one per unit, month and indicator.
    let mut cells = BTreeSet::new();
    for r in h.env.emulator.registrations(218, "Indikatorvarde") {
        let key = format!("{}|{}|{}|{}", r.columns["Q_Unit"], r.columns["Q_Year"], r.columns["Q_Month"], r.columns["Q_Indicator"]);
        assert!(cells.insert(key.clone()), "aggregate {key} delivered twice");
    }
    assert!(!cells.is_empty());
    assert!(h.audit_ok(), "audit verify failed after the crashes");
    // The store holds exactly the journal records a clean, uninterrupted read gives: the same
    // documents (by source key) with the same content.
    let crashed = h.document_keys(backend).await;
    let reference_db = h.dir.join("reference.db");
    let from = (h.env.today - chrono::Duration::days(900)).to_string();
    let to = h.env.today.to_string();
    let mut cmd = h.command(&["backfill", "--from", &from, "--to", &to], "reference");
    cmd.env("RB__STORE__BACKEND", "sqlite").env("RB__STORE__SQLITE_PATH", &reference_db).env_remove("RB__STORE__POSTGRES_URL__ENV");
    assert!(cmd.status().unwrap().success());
    let reference = sqlite_document_keys(&reference_db).await;
    assert!(reference.len() > 500, "the reference read found {} documents", reference.len());
    assert_eq!(crashed, reference, "after the crashes the store holds exactly the records a clean read gives");
    // No personal data in any log line of all those runs.
    let logs = h.logs();
    for p in h.env.population.truth().patients().take(400) {
        let id = p.id.raw().to_string();
        assert!(!logs.contains(&id), "a patient id reached the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_safety_sqlite() {
    crash_and_recover(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_safety_postgres() {
    crash_and_recover(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_killed_postgres() {
    let mut h = Harness::start(Backend::Postgres, 160, "replicas").await;
    // Every connector every 5 seconds; replicas look for due ticks every second.
    for c in ["artrosregistret", "primarvardskvalitet"] {
        let p = h.env.connectors_dir().join(c).join("connector.toml");
        let mut t: toml::Table = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        t.insert("schedule".into(), "*/5 * * * * *".into());
        t.insert("catch_up".into(), "skip".into());
        std::fs::write(&p, toml::to_string(&t).unwrap()).unwrap();
    }
    h.extra_env.push(("RB__SCHEDULER__POLL_SECONDS".into(), "1".into()));
    h.env.emulator.set_faults(Faults { error_share: 0.1, slow_share: 0.2, slow_ms: 50, ..Default::default() });
    let url = h.extra_env.iter().find(|(k, _)| k == "RB_CRASH_PG_URL").unwrap().1.clone();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut replicas: Vec<Child> = (0..3).map(|i| h.command(&["run"], &format!("replica{i}")).spawn().unwrap()).collect();
    // Wait until the schedule has fired twice, then SIGKILL the replica that claimed the latest
    // tick: the one carrying the schedule (and possibly mid-run, holding the connector's lease).
    // (Empty until a replica has run the migrations.)
    let ticks_of = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (i64, String)>("SELECT scheduled_for_us, claimed_by FROM ticks WHERE connector = 'artrosregistret' ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let before_kill = loop {
        let t = ticks_of(pool.clone()).await;
        if t.len() >= 2 || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(before_kill.len() >= 2, "the schedule fired before the kill: {before_kill:?}");
    let victim_name = before_kill.last().unwrap().1.split(' ').next().unwrap().to_string();
    let victim: usize = victim_name.trim_start_matches("replica").parse().expect("ticks are claimed by a replica");
    replicas[victim].kill().unwrap(); // SIGKILL
    replicas[victim].wait().unwrap();
    let killed_after = before_kill.last().unwrap().0;
    // The survivors carry on: everything expected reaches the register and the schedule keeps
    // firing (three more ticks after the kill).
    let expected = h.expected_sar();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let after = ticks_of(pool.clone()).await.into_iter().filter(|(t, _)| *t > killed_after).count();
        if (h.held_sar().len() >= expected.len() && after >= 3) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    for &i in &survivors {
        sigterm(&replicas[i]);
    }
    for &i in &survivors {
        let st = replicas[i].wait().unwrap();
        assert!(st.success(), "replica {i} did not shut down cleanly on SIGTERM: {st:?}");
    }
    h.env.emulator.clear_faults();
    h.finish();
    let held = h.held_sar();
    let unique: BTreeSet<_> = held.iter().cloned().collect();
    assert_eq!(unique.len(), held.len(), "a registration was created twice");
    assert_eq!(held, expected, "the register holds exactly the expected registrations");
    let sar_posts: u64 = h.env.emulator.counts().by_form_unit.iter().filter(|((reg, _, _), _)| *reg == 104).map(|(_, c)| c.post).sum();
    assert_eq!(sar_posts as usize, held.len(), "accepted SAR creates vs registrations held");

    // Every tick fired once: the ticks table has one row per (connector, time) by construction;
    // check that runs started for ticks never doubled.
    let doubled: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM (SELECT connector, scheduled_for_us FROM runs WHERE scheduled_for_us IS NOT NULL GROUP BY 1, 2 HAVING COUNT(*) > 1) d")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(doubled, 0, "a tick ran twice");
    let ticks = ticks_of(pool.clone()).await;
    let after: Vec<&(i64, String)> = ticks.iter().filter(|(t, _)| *t > killed_after).collect();
    assert!(after.len() >= 3, "the schedule kept firing after the kill: {ticks:?}");
    assert!(after.iter().all(|(_, by)| !by.starts_with(&victim_name)), "ticks after the kill were claimed by survivors only: {ticks:?}");
    // No gaps: consecutive ticks of a connector are 5 seconds apart, across the kill too.
    for w in ticks.windows(2) {
        assert_eq!(w[1].0 - w[0].0, 5_000_000, "a tick was skipped or doubled: {ticks:?}");
    }
    assert!(h.audit_ok());
}

/// Lease times come from the database's clock, not each replica's (issue 17 item 4). Replica A
/// (this process, true clock) claims a record with a one-hour lease; replica B, the real binary
/// run under libfaketime two hours ahead, delivers against the same store. Judged by B's own
/// clock A's lease would have expired an hour ago and B would rescue and resend the record; judged
/// by the server's clock (`clock_timestamp()`, see `db_clock`) it is still A's. PostgreSQL only:
/// replicas share a server there, while SQLite runs inside the one process, whose clock is the
/// store's clock by design — there is no second clock to disagree with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_clock_skew_postgres() {
    const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(Path::new(FAKETIME).exists(), "{FAKETIME} is missing: install the Debian package faketime (scripts/test does)");
    let mut h = Harness::start(Backend::Postgres, 20, "skew").await;
    // Fill the outbox (true clock, no delivery).
    let from = (h.env.today - chrono::Duration::days(900)).to_string();
    let to = h.env.today.to_string();
    let st = h.command(&["backfill", "--from", &from, "--to", &to], "filler").status().unwrap();
    assert!(st.success(), "backfill failed; see the logs in {}", h.dir.display());
    let url = h.extra_env.iter().find(|(k, _)| k == "RB_CRASH_PG_URL").unwrap().1.clone();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE state = 'pending'").fetch_one(&pool).await.unwrap();
    assert!(pending >= 3, "the backfill queued records to deliver: {pending}");

    // Replica A claims one record, through the store, with a one-hour lease.
    use base64::Engine;
    let key_text = std::fs::read_to_string(h.dir.join("sandbox/keys/encryption.key")).unwrap();
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD.decode(key_text.trim()).unwrap().try_into().unwrap();
    let var = format!("RB_SKEW_URL_{}", uuid::Uuid::new_v4().simple());
    std::env::set_var(&var, &url);
    let settings = registerbrygga::config::StoreSettings {
        backend: Backend::Postgres,
        sqlite_path: PathBuf::new(),
        postgres_url: Some(registerbrygga::config::Secret::from_env(&var)),
        max_connections: 2,
    };
    let store = registerbrygga::store::Store::open(&settings, registerbrygga::crypto::Cipher::new(&[key]).unwrap()).await.unwrap();
    let claimed = store.claim("skewA", &[], 1, 3600).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let held_id = claimed[0].record.id;
    let record_state = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (String, Option<String>, i64, i64)>("SELECT state, lease_owner, attempts, lease_expires_us FROM records WHERE id = $1")
            .bind(held_id)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = record_state(pool.clone()).await;
    assert_eq!((before.0.as_str(), before.1.as_deref(), before.2), ("sending", Some("skewA"), 1));

    // Replica B: the daemon two hours ahead, rescuing expired leases every second, no schedules
    // (delivery only).
    h.extra_env.push(("RB__SCHEDULER__ENABLED".into(), "false".into()));
    let started = chrono::Utc::now().timestamp_micros();
    let mut b = h.command(&["run"], "skewB");
    b.env("LD_PRELOAD", FAKETIME).env("FAKETIME", "+2h").env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let mut b = b.spawn().unwrap();
    // Until B has delivered every other record, then a few more rescue rounds.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let open: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE state IN ('pending', 'sending') AND id <> $1")
            .bind(held_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    sigterm(&b);
    let st = b.wait().unwrap();
    assert!(st.success(), "replica B did not shut down cleanly: {st:?}; logs in {}", h.dir.display());

    let by_b: Vec<(i64, String, i64)> =
        sqlx::query_as("SELECT record_id, outcome, started_us FROM attempts WHERE owner LIKE 'skewB%' ORDER BY id").fetch_all(&pool).await.unwrap();
    // A's record is untouched: still sending, A's lease, one attempt (A's), never sent by B.
    assert!(by_b.iter().all(|(id, _, _)| *id != held_id), "B claimed record {held_id}, on which A holds a lease");
    let after = record_state(pool.clone()).await;
    assert_eq!(after, before, "A's record is still A's, with its lease and attempt count unchanged");
    let rescued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE record_id = $1 AND owner <> 'skewA'").bind(held_id).fetch_one(&pool).await.unwrap();
    assert_eq!(rescued, 0, "no attempt on A's record but A's");
    // B really ran and claims: every record without a lease was claimed by B and delivered.
    let delivered: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE state = 'delivered'").fetch_one(&pool).await.unwrap();
    assert_eq!(delivered, pending - 1, "B delivered every record that had no lease; logs in {}", h.dir.display());
    assert!(by_b.len() as i64 >= pending - 1, "B made an attempt per record without a lease: {}", by_b.len());
    assert!(h.env.emulator.counts().by_form_unit.values().map(|c| c.post).sum::<u64>() > 0, "the register received B's sends");
    // Faketime was in effect in B: it stamped its attempts two hours ahead of the true time.
    let skew_us = by_b.iter().map(|(_, _, s)| s - started).min().unwrap();
    assert!((6_600_000_000..7_800_000_000).contains(&skew_us), "B's clock runs about two hours ahead (by {skew_us} µs)");
}
