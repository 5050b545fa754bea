//! Security hardening (issue 17, items 7–13), each on SQLite and PostgreSQL where a store is
//! involved: payloads bound to their rows and `keys rotate`; sources refused over plain HTTP;
//! API tokens and sessions; the keyed audit chain, its exported head and the retention floor.

mod admin_support;
mod common;

use admin_support::*;
use common::TestStore;
use registerbrygga::admin::{self, AdminState, Role};
use registerbrygga::config::{SourceKind, SourceSettings};
use registerbrygga::crypto::{key_id, Cipher};
use registerbrygga::store::sql::Val;
use registerbrygga::store::{sealed, AuditQuery, Store};
use serde_json::{json, Value};

const NEW_KEY: [u8; 32] = [11u8; 32];
const AUDIT_KEY: [u8; 32] = [13u8; 32];

async fn exec(store: &Store, sql: &str, args: &[Val]) -> u64 {
    let mut tx = store.begin().await.unwrap();
    let n = tx.exec(sql, args).await.unwrap();
    tx.commit().await.unwrap();
    n
}

async fn reopen(ts: &TestStore, keys: &[[u8; 32]]) -> Store {
    Store::open(&ts.settings, Cipher::new(keys).unwrap()).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// 13. Payloads bound to their rows; keys rotate

both_backends!(a_payload_moved_to_another_row_does_not_decrypt, |ts: TestStore| async move {
    let app = app_for(&ts, |_| {});
    let seeded = seed(&app).await;
    let s = &ts.store;
    // Someone with database access copies the delivered patient's payload over the dead
    // letter's (another patient's registration): it must not be read as that row's.
    assert!(s.record(seeded.dead_id).await.unwrap().unwrap().payload.is_some());
    exec(s, "UPDATE records SET payload = (SELECT payload FROM records WHERE id = $1) WHERE id = $2", &[Val::I64(seeded.delivered_id), Val::I64(seeded.dead_id)]).await;
    let err = s.record(seeded.dead_id).await.expect_err("a payload moved from another row must fail authentication");
    assert!(format!("{err:#}").contains("authentication"), "{err:#}");
    // The same holds between columns and tables: a lookup is not a payload, a worklist entry's
    // identity is not another's.
    exec(s, "UPDATE records SET payload = lookup WHERE id = $1", &[Val::I64(seeded.delivered_id)]).await;
    assert!(s.record(seeded.delivered_id).await.is_err());
});

both_backends!(keys_rotate_rewrites_every_payload_so_the_old_key_can_go, |ts: TestStore| async move {
    let app = app_for(&ts, |_| {});
    let seeded = seed(&app).await;
    let original = ts.store.record(seeded.dead_id).await.unwrap().unwrap().payload.unwrap();
    // A store from before the binding: its payloads are unbound (v1) under the old key.
    exec(&ts.store, "DELETE FROM kv WHERE key = $1", &[Val::from(sealed::PAYLOADS_BOUND)]).await;
    let old = reopen(&ts, &[common::TEST_KEY]).await;
    let legacy = old.cipher().encrypt_unbound_v1(&serde_json::to_vec(&original).unwrap());
    exec(&old, "UPDATE records SET payload = $1 WHERE id = $2", &[Val::Bytes(legacy), Val::I64(seeded.dead_id)]).await;
    assert_eq!(old.record(seeded.dead_id).await.unwrap().unwrap().payload.as_ref(), Some(&original), "old rows stay readable");
    // And one written as the release before `v3` wrote it (bound, base64, not packed).
    let delivered = old.record(seeded.delivered_id).await.unwrap().unwrap();
    let version: i64 = {
        let mut tx = old.read().await.unwrap();
        tx.rows("SELECT version FROM records WHERE id = $1", &[Val::I64(seeded.delivered_id)]).await.unwrap()[0].i64(0).unwrap()
    };
    let v2 = old.cipher().encrypt_v2(&sealed::record_payload(&delivered.idem_key, version), &serde_json::to_vec(&delivered.payload).unwrap());
    exec(&old, "UPDATE records SET payload = $1 WHERE id = $2", &[Val::Bytes(v2), Val::I64(seeded.delivered_id)]).await;
    assert_eq!(old.record(seeded.delivered_id).await.unwrap().unwrap().payload, delivered.payload, "v2 rows stay readable");

    // New key first, old key after it: rotate.
    let both = reopen(&ts, &[NEW_KEY, common::TEST_KEY]).await;
    let report = both.rotate_payload_keys("it-drift").await.unwrap();
    assert!(report.rewritten >= 6, "{report:?}");
    assert_eq!(report.key_id, key_id(&NEW_KEY));
    // Again: nothing left to do.
    assert_eq!(both.rotate_payload_keys("it-drift").await.unwrap().rewritten, 0);

    // The old key removed: everything still reads.
    let new_only = reopen(&ts, &[NEW_KEY]).await;
    assert_eq!(new_only.record(seeded.dead_id).await.unwrap().unwrap().payload.as_ref(), Some(&original));
    assert!(new_only.registration(&new_only.record(seeded.delivered_id).await.unwrap().unwrap().idem_key).await.unwrap().unwrap().delivered_payload.is_some());
    assert_eq!(new_only.worklist(None, None).await.unwrap().len(), 1);
    let list = new_only.pvk_patient_list("pvk-vc", 2026, UNIT, 2026, 3, "KOL_spirometri").await.unwrap().unwrap();
    assert_eq!(list[0]["namn"], PATIENT_NAME);
    assert_eq!(new_only.record(seeded.delivered_id).await.unwrap().unwrap().payload, delivered.payload);
    let prefix = format!("v3:{}:", key_id(&NEW_KEY));
    let mut tx = new_only.read().await.unwrap();
    for col in sealed::SEALED {
        for r in tx.rows(&format!("SELECT {} FROM {} WHERE {} IS NOT NULL", col.column, col.table, col.column), &[]).await.unwrap() {
            assert!(r.bytes(0).unwrap().starts_with(prefix.as_bytes()), "{}.{} not under the new key", col.table, col.column);
        }
    }
    drop(tx);
    let audit = new_only.audit_search(&AuditQuery { kind: Some("keys.rotated".into()), ..Default::default() }).await.unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[1].actor, "it-drift");

    // Once every payload is bound, an unbound ciphertext is refused (it could only be planted).
    let planted = new_only.cipher().encrypt_unbound_v1(&serde_json::to_vec(&original).unwrap());
    exec(&new_only, "UPDATE records SET payload = $1 WHERE id = $2", &[Val::Bytes(planted), Val::I64(seeded.dead_id)]).await;
    assert!(new_only.record(seeded.dead_id).await.is_err());
});

#[test]
fn sources_refuse_plain_http_except_allowed_loopback() {
    use registerbrygga::sources::{fhir::FhirSource, riv::RivSource};
    let src = |kind: SourceKind, url: &str, allow: bool| SourceSettings { kind, base_url: url.into(), allow_plain_http_loopback: allow, ..Default::default() };
    for kind in [SourceKind::Riv, SourceKind::Fhir] {
        let build = |s: &SourceSettings| match kind {
            SourceKind::Riv => RivSource::new(s).map(|_| ()),
            _ => FhirSource::new(s).map(|_| ()),
        };
        for (url, allow, ok) in [
            ("http://ntjp.region.se/vp", false, false),
            ("http://ntjp.region.se/vp", true, false),
            ("http://10.1.2.3:8080/fhir", true, false),
            ("http://127.0.0.1:8080/vp", false, false),
            ("http://127.0.0.1:8080/vp", true, true),
            ("http://[::1]:8080/vp", true, true),
            ("http://localhost:8080/vp", true, true),
            ("ftp://ntjp.region.se/vp", true, false),
            ("https://ntjp.region.se/vp", false, true),
        ] {
            let r = build(&src(kind, url, allow));
            assert_eq!(r.is_ok(), ok, "{kind:?} {url} allow={allow}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("base_url"), "{e}");
            }
        }
        // The engagement index too.
        let mut s = src(kind, "https://ntjp.region.se/vp", false);
        s.engagement_index_url = "http://ei.region.se/vp".into();
        if kind == SourceKind::Riv {
            assert!(RivSource::new(&s).is_err());
        }
    }
    // `config check` names the setting.
    let mut settings = registerbrygga::config::Settings::default();
    settings.sources.insert("journal".into(), src(SourceKind::Fhir, "http://fhir.region.se/r4", false));
    let loaded = registerbrygga::config::Loaded { settings, failed_sections: vec![], connectors: vec![], files: vec![] };
    let problems = registerbrygga::config::check_static(&loaded);
    assert!(problems.iter().any(|p| !p.warning && p.to_string().contains("sources.journal.base_url") && p.to_string().contains("https")), "{problems:?}");
}

// ---------------------------------------------------------------------------------------------
// 11. API tokens and sessions

async fn setup(ts: &TestStore, tweak: impl FnOnce(&mut registerbrygga::config::Settings)) -> (Running, Seeded) {
    let app = app_for(ts, tweak);
    add_standard_users(&app).await;
    let seeded = seed(&app).await;
    (serve(AdminState::new(app)).await, seeded)
}

both_backends!(api_tokens_act_only_for_their_owner_expire_and_die_with_the_password, |ts: TestStore| async move {
    let (srv, seeded) = setup(&ts, |_| {}).await;
    let boss = Client::login(&srv.base, "boss", PASSWORD).await;
    // Not for someone else, not longer than the configured maximum.
    for body in [json!({"name": "x", "username": "pat"}), json!({"name": "x", "days": 400})] {
        let r = boss.post_json("/api/v1/tokens", body, true).await;
        assert_eq!(r.status, 400, "{}", r.body);
    }
    assert_eq!(ts.store.read().await.unwrap().rows("SELECT id FROM api_tokens", &[]).await.unwrap().len(), 0);
    let r = boss.post_json("/api/v1/tokens", json!({"name": "skript", "days": 7}), true).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let (id, token) = (v["id"].as_i64().unwrap(), v["token"].as_str().unwrap().to_string());
    let t = Client::with_bearer(&srv.base, &token);

    // Each use is traced to the token: the replay it makes names it.
    let r = t.post_json("/api/v1/replay", json!({"ids": [seeded.dead_id], "reason": "registret rättat"}), false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ev = ts.store.audit_search(&AuditQuery { kind: Some("replay".into()), ..Default::default() }).await.unwrap();
    assert_eq!(ev[0].actor, format!("boss/token:{id}"));
    // … and a search for the user finds what their tokens did.
    assert!(!ts.store.audit_search(&AuditQuery { actor: Some("boss".into()), kind: Some("replay".into()), ..Default::default() }).await.unwrap().is_empty());

    // Expiry: a token past its time is refused.
    let expires: i64 = ts.store.read().await.unwrap().row("SELECT expires_us FROM api_tokens WHERE id = $1", &[Val::I64(id)]).await.unwrap().unwrap().i64(0).unwrap();
    let week = 7 * 86_400_000_000i64;
    assert!((expires - registerbrygga::store::now_us() - week).abs() < 60_000_000, "7 days from now");
    exec(&ts.store, "UPDATE api_tokens SET expires_us = $1 WHERE id = $2", &[Val::I64(registerbrygga::store::now_us() - 1), Val::I64(id)]).await;
    assert_eq!(t.get("/api/v1/me").await.status, 401);

    // A password change revokes the user's tokens (and ends their sessions).
    let r = boss.post_json("/api/v1/tokens", json!({"name": "skript2"}), true).await;
    let token2 = serde_json::from_str::<Value>(&r.body).unwrap()["token"].as_str().unwrap().to_string();
    let t2 = Client::with_bearer(&srv.base, &token2);
    assert_eq!(t2.get("/api/v1/me").await.status, 200);
    let hash = admin::auth::hash_password("ett-helt-nytt-lösenord".into()).await.unwrap();
    admin::store::put_user(&ts.store, "boss", Some(&hash), Role::Admin, false, false).await.unwrap();
    assert_eq!(t2.get("/api/v1/me").await.status, 401);
    assert_eq!(boss.get("/api/v1/me").await.status, 401);
});

both_backends!(sessions_end_when_idle_and_use_the_host_prefix, |ts: TestStore| async move {
    let (srv, _) = setup(&ts, |s| s.admin.session_idle_minutes = 15).await;
    let anon = Client::anonymous(&srv.base);
    let ok = anon.post_login(&[("username", "oper"), ("password", PASSWORD)]).await;
    assert_eq!(ok.status, 303);
    let cookie = ok.headers.get("set-cookie").unwrap().to_str().unwrap().to_string();
    assert!(cookie.starts_with("__Host-rb_session=") && cookie.contains("; Secure") && cookie.contains("Path=/") && !cookie.contains("Domain"), "{cookie}");
    let c = Client::login(&srv.base, "oper", PASSWORD).await;
    assert_eq!(c.get("/api/v1/me").await.status, 200);
    // The old cookie name is not read any more.
    let mut renamed = Client::anonymous(&srv.base);
    renamed.cookie = c.cookie.clone().map(|v| v.replace("__Host-", ""));
    assert_eq!(renamed.get("/api/v1/me").await.status, 401);
    // Unused for 16 minutes (but well inside session_minutes): ended.
    exec(&ts.store, "UPDATE sessions SET last_seen_us = $1", &[Val::I64(registerbrygga::store::now_us() - 16 * 60_000_000)]).await;
    assert_eq!(c.get("/api/v1/me").await.status, 401);
});

// ---------------------------------------------------------------------------------------------
// 10. The keyed audit chain

fn ev(n: usize) -> Vec<registerbrygga::audit::NewAuditEvent> {
    (0..n).map(|i| registerbrygga::audit::NewAuditEvent::by("anna", "config.reload", "corr", format!("s{i}"), json!({"i": i}))).collect()
}

/// What someone with database access but without the key does after editing an event: recompute
/// every later plain hash and the head, so the plain chain is consistent again.
async fn rewrite_from(store: &Store, seq: i64) {
    let mut tx = store.begin().await.unwrap();
    tx.exec("UPDATE audit_events SET detail = $1 WHERE seq = $2", &[Val::from("{\"i\":\"rewritten\"}"), Val::I64(seq)]).await.unwrap();
    let prev_row = tx.row("SELECT hash FROM audit_events WHERE seq = $1", &[Val::I64(seq - 1)]).await.unwrap();
    let mut prev = prev_row.map(|r| r.text(0).unwrap()).unwrap_or_else(|| registerbrygga::store::GENESIS_HASH.to_string());
    let rows = tx.rows("SELECT seq, at_us, actor, kind, correlation_id, subject, detail FROM audit_events WHERE seq >= $1 ORDER BY seq", &[Val::I64(seq)]).await.unwrap();
    let mut last = seq;
    for r in &rows {
        let s = r.i64(0).unwrap();
        let h = registerbrygga::store::chain_hash(s, r.i64(1).unwrap(), &r.text(2).unwrap(), &r.text(3).unwrap(), &r.text(4).unwrap(), &r.text(5).unwrap(), &r.text(6).unwrap(), &prev);
        tx.exec("UPDATE audit_events SET prev_hash = $1, hash = $2 WHERE seq = $3", &[Val::from(prev.clone()), Val::from(h.clone()), Val::I64(s)]).await.unwrap();
        prev = h;
        last = s;
    }
    tx.exec("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", &[Val::I64(last), Val::from(prev)]).await.unwrap();
    tx.commit().await.unwrap();
}

both_backends!(a_rewritten_audit_log_is_caught_only_with_the_key, |ts: TestStore| async move {
    // Without a key (today's chain), a consistent rewrite passes: that is the threat.
    ts.store.audit(ev(5)).await.unwrap();
    rewrite_from(&ts.store, 3).await;
    assert!(ts.store.audit_verify().await.unwrap().ok);

    // An existing store gets the key: its chain continues keyed from the head it has now.
    let mut keyed = reopen(&ts, &[common::TEST_KEY]).await;
    keyed.enable_audit_mac(AUDIT_KEY).await.unwrap();
    keyed.audit(ev(5)).await.unwrap();
    let r = keyed.audit_verify().await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.events_checked, 10);
    let hashes = keyed.audit_search(&AuditQuery::default()).await.unwrap();
    assert!(hashes.iter().filter(|e| e.seq > 5).all(|e| e.hash.starts_with("m1:")));

    // The same rewrite after the mark is caught (event 7 is the first rewritten).
    rewrite_from(&keyed, 7).await;
    let r = keyed.audit_verify().await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(7), "{r:?}");

    // Removing or moving the mark to hide it is caught as well.
    exec(&keyed, "UPDATE kv SET value = $1 WHERE key = 'audit.hmac_from'", &[Val::from("{\"seq\": 100, \"mac\": \"00\"}")]).await;
    assert!(!keyed.audit_verify().await.unwrap().ok);
    exec(&keyed, "DELETE FROM kv WHERE key = 'audit.hmac_from'", &[]).await;
    assert!(keyed.audit_verify().await.unwrap().problem.unwrap().contains("mark is missing"));
    // A verifier without the key says it cannot check keyed events instead of passing them.
    let r = reopen(&ts, &[common::TEST_KEY]).await.audit_verify().await.unwrap();
    assert!(!r.ok && r.problem.unwrap().contains("audit_key"));
});

both_backends!(a_truncated_tail_is_caught_against_the_exported_head, |ts: TestStore| async move {
    let mut store = reopen(&ts, &[common::TEST_KEY]).await;
    store.enable_audit_mac(AUDIT_KEY).await.unwrap();
    store.audit(ev(8)).await.unwrap();
    let head = store.audit_head_signed().await.unwrap().unwrap();
    assert_eq!(head.seq, 8);
    assert!(store.audit_verify_against(Some(&head)).await.unwrap().ok);
    // The last three events removed and the head set back to a real (keyed) event: the chain
    // itself is consistent, but it no longer reaches the exported head.
    let five = store.audit_search(&AuditQuery::default()).await.unwrap().into_iter().find(|e| e.seq == 5).unwrap();
    exec(&store, "DELETE FROM audit_events WHERE seq > 5", &[]).await;
    exec(&store, "UPDATE audit_head SET seq = 5, hash = $1 WHERE id = 1", &[Val::from(five.hash)]).await;
    assert!(store.audit_verify().await.unwrap().ok);
    let r = store.audit_verify_against(Some(&head)).await.unwrap();
    assert!(!r.ok && r.problem.as_deref().unwrap().contains("removed"), "{r:?}");
    // A forged export is refused.
    let mut forged = head.clone();
    forged.seq = 5;
    assert!(store.audit_verify_against(Some(&forged)).await.is_err());
});

both_backends!(audit_verify_during_appends_is_no_false_alarm, |ts: TestStore| async move {
    let mut store = reopen(&ts, &[common::TEST_KEY]).await;
    store.enable_audit_mac(AUDIT_KEY).await.unwrap();
    for _ in 0..6 {
        store.audit(ev(2000)).await.unwrap();
    }
    let writer = store.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let appender = tokio::spawn(async move {
        let mut n = 0;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            writer.audit(ev(20)).await.unwrap();
            n += 1;
        }
        n
    });
    for _ in 0..4 {
        let r = store.audit_verify().await.unwrap();
        assert!(r.ok, "verify during appends: {r:?}");
        assert!(r.events_checked >= 12_000);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(appender.await.unwrap() > 0, "appends ran during the walks");
});

#[test]
fn retention_has_a_floor() {
    let mut a = registerbrygga::config::AuditSettings::default();
    a.min_retention_days = 1825;
    assert!(a.prune_cutoff(Some(30)).is_err());
    assert!(a.prune_cutoff(Some(1825)).is_ok());
    a.retention_days = 365;
    assert!(a.prune_cutoff(None).is_err());
    let mut settings = registerbrygga::config::Settings::default();
    settings.audit = a;
    let loaded = registerbrygga::config::Loaded { settings, failed_sections: vec![], connectors: vec![], files: vec![] };
    let problems = registerbrygga::config::check_static(&loaded);
    assert!(problems.iter().any(|p| !p.warning && p.to_string().contains("audit.retention_days")), "{problems:?}");
    assert!(problems.iter().any(|p| p.warning && p.to_string().contains("security.audit_key")), "{problems:?}");
}

// ---------------------------------------------------------------------------------------------
// 7. PostgreSQL over TLS

/// A throwaway PostgreSQL cluster that accepts TCP only over TLS (`hostssl`), with a server
/// certificate from the sandbox CA (localhost, 127.0.0.1). Stopped when dropped.
struct TlsCluster {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    as_postgres: bool,
    port: u16,
    certs: registerbrygga::sandbox::tls::CertSet,
}

impl TlsCluster {
    fn cmd(&self, prog: &str) -> std::process::Command {
        let path = self.bin.join(prog);
        if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        }
    }

    fn start() -> TlsCluster {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries (scripts/test installs postgresql)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max_by_key(|p| p.display().to_string().split('/').nth(4).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0))
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        // initdb refuses root: as root the cluster runs as `postgres`, in a folder it owns.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new().prefix("rb-pgtls").tempdir_in("/tmp").unwrap().keep();
        let certs = registerbrygga::sandbox::tls::CertSet::ensure(&dir.join("certs")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = TlsCluster { dir: dir.clone(), bin, as_postgres, port, certs };
        let data = dir.join("data");
        if as_postgres {
            let _ = std::process::Command::new("useradd").args(["--system", "--no-create-home", "postgres"]).status();
            assert!(std::process::Command::new("chown").args(["-R", "postgres"]).arg(&dir).status().unwrap().success());
        }
        let ok = c.cmd("initdb").arg("-D").arg(&data).args(["-U", "rb", "--auth=trust", "-E", "UTF8", "--no-locale"]).stdout(std::process::Stdio::null()).status().unwrap();
        assert!(ok.success(), "initdb failed");
        // The key must be private to the server's user.
        std::fs::copy(&c.certs.server_cert, data.join("server.pem")).unwrap();
        std::fs::copy(&c.certs.server_key, data.join("server.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n").unwrap();
        if as_postgres {
            assert!(std::process::Command::new("chown").args(["-R", "postgres"]).arg(&data).status().unwrap().success());
        }
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=server.pem -c ssl_key_file=server.key -c fsync=off",
            dir.display()
        );
        let ok = c.cmd("pg_ctl").arg("-D").arg(&data).arg("-l").arg(dir.join("pg.log")).args(["-w", "-o", &opts, "start"]).stdout(std::process::Stdio::null()).status().unwrap();
        assert!(ok.success(), "pg_ctl start failed: {}", std::fs::read_to_string(dir.join("pg.log")).unwrap_or_default());
        c
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://rb@{host}:{}/postgres?{query}", self.port)
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = self.cmd("pg_ctl").arg("-D").arg(self.dir.join("data")).args(["-m", "immediate", "stop"]).stdout(std::process::Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pg_settings(url: &str) -> registerbrygga::config::StoreSettings {
    let var = format!("RB_TEST_TLS_URL_{}", uuid::Uuid::new_v4().simple());
    std::env::set_var(&var, url);
    registerbrygga::config::StoreSettings {
        backend: registerbrygga::config::Backend::Postgres,
        sqlite_path: Default::default(),
        postgres_url: Some(registerbrygga::config::Secret::from_env(&var)),
        max_connections: 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_with_require_and_verify_full() {
    let pg = TlsCluster::start();
    let ca = pg.certs.ca.display().to_string();
    // The documented `sslmode=require` works (it failed: sqlx had no TLS), and the connection
    // really is encrypted.
    let store = Store::open(&pg_settings(&pg.url("127.0.0.1", "sslmode=require")), common::cipher()).await.expect("sslmode=require connects");
    let mut tx = store.read().await.unwrap();
    let r = tx.row("SELECT CASE WHEN ssl THEN 'tls' ELSE 'plain' END FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().unwrap();
    assert_eq!(r.text(0).unwrap(), "tls");
    drop(tx);
    store.close().await;
    // verify-full: the server's certificate checked against the region's CA and the host name.
    let full = pg.url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}"));
    let store = Store::open(&pg_settings(&full), common::cipher()).await.expect("verify-full with the right CA connects");
    store.ping().await.unwrap();
    store.close().await;
    // … and refused with another CA (a server in the middle), or without TLS at all.
    let other = registerbrygga::sandbox::tls::CertSet::ensure(&pg.dir.join("other-ca")).unwrap();
    let wrong = pg.url("localhost", &format!("sslmode=verify-full&sslrootcert={}", other.ca.display()));
    assert!(Store::open(&pg_settings(&wrong), common::cipher()).await.is_err(), "a certificate from another CA must be refused");
    assert!(Store::open(&pg_settings(&pg.url("127.0.0.1", "sslmode=disable")), common::cipher()).await.is_err(), "the cluster takes TLS only");

    // The region's SQL sources (patient lists, PVK listing) take the same URLs.
    let secret = pg_settings(&full).postgres_url.unwrap();
    let rows = registerbrygga::sources::sql::text_rows(&secret, "SELECT '191212121212', 'SE2321000156-FT01'", 2, "listing").await.expect("SQL source over verify-full");
    assert_eq!(rows.len(), 1);

    // `config check` recommends verify-full for a database on another host.
    for (query, warned) in [("sslmode=require", true), ("", true), ("sslmode=verify-ca", true), ("sslmode=verify-full&sslrootcert=/etc/ca.pem", false)] {
        let var = format!("RB_TEST_TLS_CHECK_{}", uuid::Uuid::new_v4().simple());
        std::env::set_var(&var, format!("postgres://rb:hemligt@db.region.se/rb?{query}"));
        let mut p = vec![];
        registerbrygga::config::check_pg_tls(&mut p, "f", "store.postgres_url", &registerbrygga::config::Secret::from_env(&var));
        assert_eq!(p.iter().any(|x| x.warning && x.to_string().contains("verify-full")), warned, "{query}: {p:?}");
        assert!(!p.iter().any(|x| x.to_string().contains("hemligt")), "the password is never quoted");
    }
}


// ---------------------------------------------------------------------------------------------
// 9. PDL access log: who has seen patient X?

both_backends!(every_view_of_identities_is_found_by_the_patient, |ts: TestStore| async move {
    let (srv, seeded) = setup(&ts, |_| {}).await;
    let pat = Client::login(&srv.base, "pat", PASSWORD).await;
    // The worklist's identities, a PVK patient list and a transfer's payload, each with a reason.
    let r = pat.get("/api/v1/worklists?reason=uppf%C3%B6ljning").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let q = format!("/api/v1/pvk/patient-list?connector=pvk-vc&rule_year=2026&unit={UNIT}&year=2026&month=3&indicator=KOL_spirometri&reason=kvalitetsgranskning");
    let r = pat.get(&q).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = pat.post_form_csrf(&format!("/overforingar/{}/personuppgifter", seeded.dead_id), &[("reason", "rättelse av EQ VAS")]).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The seeded patient (Tolvan) was shown in all three; the other patient in none.
    let views = ts.store.audit_views_of_patient(&seeded.patient_key, 100).await.unwrap();
    let lists: std::collections::BTreeSet<String> = views.iter().map(|e| e.detail["list"].as_str().unwrap().to_string()).collect();
    assert_eq!(lists.into_iter().collect::<Vec<_>>(), vec!["pvk_patient_list", "record_payload", "worklist"], "{views:#?}");
    assert!(views.iter().all(|e| e.actor == "pat" && e.kind == "patient_data.view" && e.detail["patients"].as_i64() == Some(1)));
    let other = common::pseudo().patient_key(&registerbrygga::model::PatientId::parse_national("194107086995", chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()).unwrap());
    assert!(ts.store.audit_views_of_patient(&other, 100).await.unwrap().is_empty());
    // The patients shown are covered by the chain (a digest in the event) and the log verifies.
    assert!(views.iter().all(|e| e.detail["patients_digest"].as_str().is_some_and(|d| d.len() == 64)));
    assert!(ts.store.audit_verify().await.unwrap().ok);
});

// ---------------------------------------------------------------------------------------------
// 12. FHIR: a page is capped far below 2 GiB

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fhir_page_beyond_the_page_cap_is_refused() {
    use registerbrygga::sources::{fhir::FhirSource, PullRequest, Source, SourceItem};
    assert!(SourceSettings::default().max_page_bytes <= 64 * 1024 * 1024, "a page is held whole while parsed");
    // A server whose Encounter page is 3 MiB of padding (a Bundle all the same).
    let pad = "x".repeat(3 * 1024 * 1024);
    let app = axum::Router::new().route(
        "/{ty}",
        axum::routing::get(move |axum::extract::Path(ty): axum::extract::Path<String>| {
            let pad = pad.clone();
            async move {
                let body = if ty == "Encounter" { json!({"resourceType": "Bundle", "type": "searchset", "meta": {"pad": pad}, "entry": []}) } else { json!({"resourceType": "Bundle", "type": "searchset", "entry": []}) };
                ([("content-type", "application/fhir+json")], body.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let settings = SourceSettings {
        kind: SourceKind::Fhir,
        base_url: format!("http://127.0.0.1:{port}"),
        allow_plain_http_loopback: true,
        max_page_bytes: 1024 * 1024,
        ..Default::default()
    };
    let src = FhirSource::new(&settings).unwrap();
    let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
    let req = PullRequest {
        connector: "sar-test".into(),
        units: vec![],
        changed_since: None,
        window_from: today,
        window_to: today,
        discovery: registerbrygga::config::PatientDiscovery::All,
        connector_dir: ".".into(),
        correlation_id: "c".into(),
        today,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(100);
    let summary = src.pull(&req, tx).await.unwrap();
    let mut refused = vec![];
    while let Some(item) = rx.recv().await {
        if let SourceItem::Refused { refusal, .. } = item {
            refused.push(refusal);
        }
    }
    assert!(!summary.complete);
    assert!(refused.iter().any(|r| r.document == "FHIR Encounter search" && r.reason.contains("max_page_bytes")), "{refused:?}");
}

both_backends!(the_daemon_exports_a_signed_head_that_verify_accepts, |ts: TestStore| async move {
    let mut store = reopen(&ts, &[common::TEST_KEY]).await;
    store.enable_audit_mac(AUDIT_KEY).await.unwrap();
    store.audit(ev(3)).await.unwrap();
    let file = ts.dir.path().join("audit-heads.jsonl");
    let mut app = app_for(&ts, |s| s.audit.head_export_file = Some(file.clone()));
    app.store = store.clone();
    let first = registerbrygga::daemon::export_head(&app).await.unwrap().unwrap();
    store.audit(ev(2)).await.unwrap();
    let second = registerbrygga::daemon::export_head(&app).await.unwrap().unwrap();
    assert_eq!((first.seq, second.seq), (3, 5));
    // One JSON line per export, appended; the last is the head to check against.
    let lines: Vec<registerbrygga::store::SignedHead> = std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, vec![first, second.clone()]);
    assert!(store.audit_verify_against(Some(&second)).await.unwrap().ok);
    // Without the key there is nothing to sign.
    let mut plain_app = app_for(&ts, |_| {});
    plain_app.store = reopen(&ts, &[common::TEST_KEY]).await;
    assert!(registerbrygga::daemon::export_head(&plain_app).await.unwrap().is_none());
});
