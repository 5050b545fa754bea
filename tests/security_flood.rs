//! Sign-in floods (issue 17, item 8): 200 bad sign-ins at once against the real admin listener
//! leave the process's memory bounded, the daemon serving and the audit chain intact. Its own
//! test binary, because it measures the process's peak memory.

mod admin_support;
mod common;

use admin_support::*;
use common::TestStore;
use registerbrygga::admin::AdminState;
use registerbrygga::config::Backend;
use registerbrygga::store::AuditQuery;

async fn setup(ts: &TestStore, tweak: impl FnOnce(&mut registerbrygga::config::Settings)) -> (Running, Seeded) {
    let app = app_for(ts, tweak);
    add_standard_users(&app).await;
    let seeded = seed(&app).await;
    (serve(AdminState::new(app)).await, seeded)
}

// ---------------------------------------------------------------------------------------------
// 8. Sign-in floods

fn registerbrygga_http() -> reqwest::Client {
    admin_support::http()
}

fn peak_rss_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()).unwrap() / 1024
}

/// 200 bad sign-ins at once, `tweak` applied to the settings; returns (peak RSS growth in MiB,
/// answers by status).
async fn flood(ts: &TestStore, tweak: impl FnOnce(&mut registerbrygga::config::Settings)) -> (u64, std::collections::BTreeMap<u16, usize>, Running) {
    let (srv, _) = setup(ts, tweak).await;
    let token = token_for(&srv.state, "lasa").await;
    let before = peak_rss_mib();
    let mut tasks = vec![];
    // One client (its connection pool and TLS roots) for all 200 senders: the memory measured
    // is the server's, not 200 clients'.
    let shared = registerbrygga_http();
    for i in 0..200 {
        let base = srv.base.clone();
        let http = shared.clone();
        tasks.push(tokio::spawn(async move {
            let user = if i % 2 == 0 { "oper".to_string() } else { format!("gissning{i}") };
            // As a browser: the sign-in page (its form token), then the form.
            let page = http.get(format!("{base}/login")).send().await.unwrap();
            if page.status() != 200 {
                return page.status().as_u16();
            }
            let cookie = page.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find(|v| v.contains("rb_login=")).unwrap().split(';').next().unwrap().to_string();
            let body = page.text().await.unwrap();
            let token = regex::Regex::new(r#"name="login_csrf" value="([^"]+)""#).unwrap().captures(&body).unwrap()[1].to_string();
            let form = [("username", user.as_str()), ("password", "fel-lösenord-123"), ("login_csrf", token.as_str())];
            http.post(format!("{base}/login")).header("cookie", cookie).form(&form).send().await.unwrap().status().as_u16()
        }));
    }
    // The daemon keeps serving while the flood runs.
    let probe = Client::with_bearer(&srv.base, &token);
    let mut served = 0;
    for _ in 0..5 {
        assert_eq!(Client::anonymous(&srv.base).get("/healthz").await.status, 200);
        if probe.get("/api/v1/me").await.status == 200 {
            served += 1;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut answers = std::collections::BTreeMap::new();
    for t in tasks {
        *answers.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    assert!(served > 0 || probe.get("/api/v1/me").await.status == 200, "an API client is served during or right after the flood");
    (peak_rss_mib().saturating_sub(before), answers, srv)
}

/// One test, the two stores one after the other: the peak memory measured is this process's,
/// so nothing else may run beside it (hence its own test binary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_sign_ins_keeps_memory_bounded_and_the_daemon_serving() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let ts = common::store_for(backend, "flood").await;
        flood_once(&ts).await;
    }
}

async fn flood_once(ts: &TestStore) {
    let (grown, answers, srv) = flood(ts, |_| {}).await;
    // 200 argon2 checks at once would take 200 × 19 MiB ≈ 3.8 GiB; bounded, the growth is the
    // test's own clients and connections (about 150–250 MiB measured) plus two checks.
    assert!(grown < 600, "peak memory grew {grown} MiB during 200 parallel bad sign-ins");
    // Refused quickly (429 after the free failures, 503 beyond the requests in progress) or
    // checked (401); never an error or a session.
    assert!(answers.keys().all(|s| [401, 429, 503].contains(s)), "{answers:?}");
    assert!(answers.get(&429).copied().unwrap_or(0) > 0, "the growing delay refused some: {answers:?}");
    assert_eq!(Client::anonymous(&srv.base).get("/healthz").await.status, 200);
    // Every password actually checked is audited (in batches), none twice.
    let failed = ts.store.audit_search(&AuditQuery { kind: Some("login.failed".into()), limit: Some(1000), ..Default::default() }).await.unwrap();
    assert_eq!(failed.len(), answers.get(&401).copied().unwrap_or(0), "{answers:?}");
    assert!(srv.state.guard.tracked() <= 202);
    // The chain is intact after the burst.
    assert!(ts.store.audit_verify().await.unwrap().ok);
    eprintln!("{:?}: peak memory grew {grown} MiB; answers {answers:?}", ts.settings.backend);
}

/// The listener's own limits, with a handler that takes its time: beyond the requests in
/// progress a request is refused at once (503, health probes excepted), and one that runs past
/// the time limit is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_progress_and_their_time_are_bounded() {
    let ts = common::store_for(Backend::Sqlite, "limits").await;
    let app = app_for(&ts, |s| {
        s.admin.max_requests_in_progress = 2;
        s.admin.request_timeout_seconds = 1;
    });
    let state = AdminState::new(app);
    let router = axum::Router::new()
        .route("/slow", axum::routing::get(|| async { tokio::time::sleep(std::time::Duration::from_millis(1500)).await; "done" }))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .layer(axum::middleware::from_fn_with_state(state.clone(), registerbrygga::admin::guard::limit_requests))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = registerbrygga_http();
    let slow: Vec<_> = (0..2).map(|_| tokio::spawn({ let (h, b) = (http.clone(), base.clone()); async move { h.get(format!("{b}/slow")).send().await.unwrap().status().as_u16() } })).collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    assert_eq!(http.get(format!("{base}/slow")).send().await.unwrap().status().as_u16(), 503, "a third request in progress is refused");
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "refused at once");
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status().as_u16(), 200, "health probes pass");
    for s in slow {
        assert_eq!(s.await.unwrap(), 503, "cut off after request_timeout_seconds");
    }
}
