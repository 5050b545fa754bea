//! The admin pages in a real browser: headless Chromium driven through chromedriver (started
//! here on a free port). An operator signs in, opens Misslyckade, finds the rejected transfer,
//! presses "Försök igen" with a reason and sees it re-queued; the audit log names who and why.
//! Screenshots of every page go to `test-artifacts/screenshots/`.
//!
//! chromedriver and Chromium are required: without them this test fails with a clear message
//! (it never skips). CI installs Debian's `chromium` and `chromium-driver`.

mod admin_support;
mod common;

use admin_support::*;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use registerbrygga::admin::{AdminState, Role, Warning};
use registerbrygga::config::Backend;
use registerbrygga::store::{AuditQuery, RecordState};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn find_binary(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Some(PathBuf::from(p));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

async fn start_driver() -> Driver {
    let bin = find_binary("RB_CHROMEDRIVER", &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver", "/usr/local/bin/chromedriver"]).unwrap_or_else(|| {
        panic!("chromedriver not found (looked at RB_CHROMEDRIVER, /usr/bin/chromedriver, /usr/lib/chromium/chromedriver): install Debian's chromium-driver package; the browser test must not be skipped")
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start chromedriver {}: {e} (install Debian's chromium-driver, or point RB_CHROMEDRIVER at one)", bin.display()));
    let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await {
            if r.status().is_success() {
                return driver;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on {} within 10 s", driver.url);
}

async fn browser(driver: &Driver, profile: &Path) -> Browser {
    let chromium = find_binary("RB_CHROMIUM", &["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"])
        .unwrap_or_else(|| panic!("Chromium not found (looked at RB_CHROMIUM, /usr/bin/chromium): install Debian's chromium package"));
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1366,1400", "--lang=sv-SE",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    // The WebDriver connection is plain HTTP, but fantoccini's connector wants a TLS provider.
    rustls::crypto::ring::default_provider().install_default().ok();
    let mut b = ClientBuilder::rustls().expect("rustls connector");
    b.capabilities(caps.as_object().unwrap().clone());
    let c = b.connect(&driver.url).await.unwrap_or_else(|e| panic!("cannot open a Chromium session through chromedriver: {e}"));
    c.set_window_size(1366, 1400).await.unwrap();
    c
}

fn shots_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts/screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(b: &Browser, name: &str) {
    let png = b.screenshot().await.unwrap();
    std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
}

async fn path_of(b: &Browser) -> String {
    let u = b.current_url().await.unwrap();
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    }
}

async fn text_of(b: &Browser, css: &str) -> String {
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).text().await.unwrap()
}

async fn sign_out_and_in(b: &Browser, user: &str) {
    b.find(Locator::XPath("//button[normalize-space()='Logga ut']")).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("input[name=username]")).await.unwrap();
    b.find(Locator::Css("input[name=username]")).await.unwrap().send_keys(user).await.unwrap();
    b.find(Locator::Css("input[name=password]")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    b.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("nav.menu")).await.unwrap();
    assert!(text_of(b, "header .who").await.contains(user));
}

/// The step after a replay. Today nothing sends, so the record stays "väntar"; when the lead
/// plugs in the delivery engine, it runs here and returns the state the page should then show
/// ("levererad").
async fn deliver(srv: &Running) -> Option<&'static str> {
    use registerbrygga::config::{RegisterSettings, Secret, UnitBinding};
    use registerbrygga::delivery::{DeliveryEngine, Lane};
    use registerbrygga::sandbox::stratum::{self as emulator, EmulatorOptions};
    use registerbrygga::sandbox::tls::{sandbox_client_settings, CertSet};
    use registerbrygga::sinks::stratum::StratumClient;
    let dir = common::test_dir();
    let certs = CertSet::ensure(&dir.path().join("certs")).unwrap();
    let emu = emulator::start(EmulatorOptions::new(certs.clone())).await.unwrap();
    let key = dir.path().join("apikey");
    std::fs::write(&key, emu.api_key()).unwrap();
    let settings = RegisterSettings {
        base_url: emu.base_url(),
        register_id: 104,
        api_key: Some(Secret::from_file(key)),
        tls: sandbox_client_settings(&certs),
        units: vec![UnitBinding { hsa_id: UNIT.into(), unit_code: "1701".into(), name: None }],
        ..Default::default()
    };
    let store = srv.state.app.store.clone();
    let client = std::sync::Arc::new(StratumClient::new("sar", &settings, Some(store.clone())).unwrap());
    let engine = DeliveryEngine::new(store, vec![Lane::new("sar", client, settings)], Default::default(), "browser-test");
    engine.drain(Duration::from_secs(20)).await.unwrap();
    assert_eq!(emu.registrations(104, "FVPat").len(), 1, "the replayed record reached the register");
    Some("levererad")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_replays_a_failed_transfer_in_the_browser() {
    let ts = common::store_for(Backend::Sqlite, "browser").await;
    // Plain HTTP on loopback: the Secure cookie flag is off, as for the demo.
    let app = app_for(&ts, |s| s.admin.cookie_secure = false);
    add_user(&app, "oper", Role::Operator, true).await;
    add_user(&app, "lasa", Role::Reader, false).await;
    add_user(&app, "boss", Role::Admin, false).await;
    let seeded = seed(&app).await;
    let srv = serve(
        AdminState::new(app)
            .with_next_runs(|| vec![("sar-fysio".into(), Some(chrono::Utc::now() + chrono::Duration::hours(3)))])
            .with_warnings(|| vec![Warning { area: "pvk".into(), text: "Kodlistan KOL (J44) för 2026 är inte verifierad mot källan: läs andelarna med försiktighet.".into() }]),
    )
    .await;
    let driver = start_driver().await;
    let profile = tempfile::tempdir().unwrap();
    let b = browser(&driver, profile.path()).await;

    // A page without a session leads to the sign-in form.
    b.goto(&format!("{}/misslyckade", srv.base)).await.unwrap();
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("input[name=username]")).await.unwrap();
    assert!(path_of(&b).await.starts_with("/login"), "redirected to the sign-in page");
    assert_eq!(text_of(&b, "h1").await, "Inloggning");
    shot(&b, "01-inloggning").await;

    // Sign in.
    b.find(Locator::Css("input[name=username]")).await.unwrap().send_keys("oper").await.unwrap();
    b.find(Locator::Css("input[name=password]")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    b.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("table#failed")).await.unwrap();
    assert_eq!(path_of(&b).await, "/misslyckade", "back to the page asked for");
    assert_eq!(text_of(&b, "h1").await, "Misslyckade överföringar");

    // Find the failed transfer and its reason.
    let row = b.find(Locator::Css(&format!("tr#rad-{}", seeded.dead_id))).await.expect("the rejected transfer is listed");
    let row_text = row.text().await.unwrap();
    assert!(row_text.contains("saknar behörighet i registret") && row_text.contains("avvisad"), "row shows the register's reason: {row_text}");
    shot(&b, "02-misslyckade").await;

    // Försök igen, with a reason.
    let why = "Behörigheten för enheten är ordnad i registret";
    row.find(Locator::Css("input[name=reason]")).await.unwrap().send_keys(why).await.unwrap();
    row.find(Locator::XPath(".//button[normalize-space()='Försök igen']")).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("#state")).await.unwrap();
    assert!(path_of(&b).await.starts_with(&format!("/overforingar/{}", seeded.dead_id)));
    assert_eq!(text_of(&b, "#state").await, "väntar");
    assert!(text_of(&b, ".flash").await.contains("köad för ett nytt försök"));
    let history = text_of(&b, "main").await;
    assert!(history.contains("Nytt försök begärt") && history.contains(why) && history.contains("oper"));
    shot(&b, "03-overforing-efter-nytt-forsok").await;

    // The store agrees, and the audit log names who and why.
    assert_eq!(ts.store.record(seeded.dead_id).await.unwrap().unwrap().state, RecordState::Pending);
    let ev = ts.store.audit_search(&AuditQuery { kind: Some("replay".into()), ..Default::default() }).await.unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].actor.as_str(), ev[0].detail["reason"].as_str()), ("oper", Some(why)));

    // Pluggable delivery: once an engine sends, the page shows the final state.
    if let Some(expected) = deliver(&srv).await {
        let mut last = String::new();
        for _ in 0..100 {
            b.refresh().await.unwrap();
            last = text_of(&b, "#state").await;
            if last == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(last, expected);
    }

    // The transfer is gone from Misslyckade.
    b.goto(&format!("{}/misslyckade", srv.base)).await.unwrap();
    assert!(text_of(&b, "main").await.contains("Inga misslyckade överföringar"));

    // Every other page renders in Swedish; keep a picture of each.
    for (path, name, heading) in [
        ("/", "04-oversikt", "Översikt"),
        ("/overforingar", "05-overforingar", "Överföringar"),
        ("/att-komplettera", "06-att-komplettera", "Att komplettera"),
        ("/tackningsgrad", "07-tackningsgrad", "Täckningsgrad per mottagning"),
        ("/pvk", "08-pvk", "PVK-indikatorer per enhet"),
        ("/granskningslogg", "09-granskningslogg", "Granskningslogg"),
        ("/karantan", "10-karantan", "Karantän"),
    ] {
        b.goto(&format!("{}{path}", srv.base)).await.unwrap();
        assert_eq!(text_of(&b, "h1").await, heading, "{path}");
        shot(&b, name).await;
    }
    // The overview shows the next run the scheduler reported.
    b.goto(&format!("{}/", srv.base)).await.unwrap();
    assert!(text_of(&b, "main").await.contains("sar-fysio"));

    // A patient list needs a reason before it is shown.
    b.goto(&format!("{}/pvk", srv.base)).await.unwrap();
    b.find(Locator::LinkText("Visa lista")).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("textarea[name=reason]")).await.unwrap();
    assert!(!text_of(&b, "main").await.contains(PNR_DASH));
    shot(&b, "11-patientlista-skal").await;
    b.find(Locator::Css("textarea[name=reason]")).await.unwrap().send_keys("Genomgång inför teamträff").await.unwrap();
    b.find(Locator::XPath("//button[normalize-space()='Visa patientlistan']")).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("p.warn")).await.unwrap();
    assert!(text_of(&b, "main").await.contains(PNR_DASH));
    shot(&b, "12-patientlista").await;
    assert_eq!(ts.store.audit_search(&AuditQuery { kind: Some("patient_data.view".into()), ..Default::default() }).await.unwrap().len(), 1);

    // Sign out; a läsare signs in and sees neither identities nor the button.
    sign_out_and_in(&b, "lasa").await;
    b.goto(&format!("{}/overforingar/{}", srv.base, seeded.dead_id)).await.unwrap();
    let page = b.source().await.unwrap();
    assert_no_identity("transfer page (läsare, browser)", &page);
    assert!(!page.contains("Försök igen") && !page.contains("Visa värden"));
    shot(&b, "13-overforing-lasare").await;
    assert!(b.find(Locator::LinkText("Användare")).await.is_err(), "no admin menu for a läsare");

    // An admin manages users and API tokens and reads the configuration.
    sign_out_and_in(&b, "boss").await;
    b.goto(&format!("{}/anvandare", srv.base)).await.unwrap();
    assert_eq!(text_of(&b, "h1").await, "Användare och API-nycklar");
    b.find(Locator::Css("input[name=name]")).await.unwrap().send_keys("prometheus").await.unwrap();
    b.find(Locator::XPath("//button[normalize-space()='Skapa nyckel']")).await.unwrap().click().await.unwrap();
    let shown = text_of(&b, "div.warn pre").await;
    assert!(shown.starts_with("rbt_"), "the new token is shown once");
    shot(&b, "14-anvandare").await;
    b.goto(&format!("{}/installningar", srv.base)).await.unwrap();
    assert_eq!(text_of(&b, "h1").await, "Inställningar");
    shot(&b, "15-installningar").await;

    b.close().await.unwrap();
}

/// The vendored axe-core (tests/admin_support/AXE.md: version, licence, checksums).
const AXE: &str = include_str!("admin_support/axe.min.js");
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

/// Run axe-core on the open page; the serious and critical violations, one line each.
async fn axe_violations(b: &Browser) -> Vec<String> {
    // Evaluated through WebDriver (the pages' CSP allows no page scripts), in the same call as
    // the run; a timeout answers with what went wrong rather than hanging.
    b.update_timeouts(fantoccini::wd::TimeoutConfiguration::new(Some(Duration::from_secs(120)), None, None)).await.unwrap();
    let js = format!(
        r#"const done = arguments[arguments.length - 1];
        {AXE}
        ;window.axe.run(document, {{ resultTypes: ['violations'] }})
          .then(r => done(JSON.stringify(r.violations.map(v => ({{ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 4).map(n => n.target.join(' ')) }})))))
          .catch(e => done(JSON.stringify([{{ id: 'axe-error', impact: 'critical', help: String(e), nodes: [] }}])));"#
    );
    let out = b.execute_async(&js, vec![]).await.expect("axe.run answers");
    let list: Vec<serde_json::Value> = serde_json::from_str(out.as_str().expect("a JSON string")).unwrap();
    list.iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious") | Some("critical")))
        .map(|v| format!("{} ({}): {} at {}", v["id"].as_str().unwrap_or("?"), v["impact"].as_str().unwrap_or("?"), v["help"].as_str().unwrap_or(""), v["nodes"]))
        .collect()
}

async fn js(b: &Browser, code: &str) -> serde_json::Value {
    b.execute(code, vec![]).await.unwrap_or_else(|e| panic!("script {code}: {e}"))
}

async fn press(b: &Browser, key: &str) {
    b.active_element().await.unwrap().send_keys(key).await.unwrap();
}

/// An admin signs in on a demo-like run and opens every page: each passes axe-core with no
/// serious or critical violation, every table has a caption and scoped header cells, and a
/// screenshot of each page goes to test-artifacts/admin-*.png. With the keyboard alone: the first
/// Tab reaches the skip link (focus visible), Enter moves to the content, and Tab reaches the
/// page's form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_page_passes_axe_and_works_by_keyboard() {
    let d = demo_like(Backend::Sqlite, 40).await;
    let driver = start_driver().await;
    let profile = tempfile::tempdir().unwrap();
    let b = browser(&driver, profile.path()).await;
    b.goto(&format!("{}/login", d.srv.base)).await.unwrap();
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("input[name=username]")).await.unwrap();
    assert!(axe_violations(&b).await.is_empty(), "sign-in page: {:?}", axe_violations(&b).await);
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("admin-inloggning.png"), b.screenshot().await.unwrap()).unwrap();
    b.find(Locator::Css("input[name=username]")).await.unwrap().send_keys("boss").await.unwrap();
    b.find(Locator::Css("input[name=password]")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    b.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("nav.menu")).await.unwrap();

    // The overview: one status panel, no wall of banners.
    assert_eq!(b.find_all(Locator::Css("section.status")).await.unwrap().len(), 1, "one status panel on the overview");
    assert!(b.find_all(Locator::Css("main p.warn")).await.unwrap().is_empty(), "no warning banners on the overview");
    let panel = text_of(&b, "section.status").await;
    assert!(panel.contains("kodlistor verifierade") && panel.contains("visa"), "{panel}");

    let mut failures = vec![];
    for path in every_page(&d.e.app.store).await {
        b.goto(&format!("{}{path}", d.srv.base)).await.unwrap();
        b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("h1")).await.unwrap();
        let slug: String = path.trim_start_matches('/').split('?').next().unwrap().replace('/', "-");
        let name = if slug.is_empty() { "admin-oversikt".to_string() } else { format!("admin-{slug}") };
        std::fs::write(artifacts.join(format!("{name}.png")), b.screenshot().await.unwrap()).unwrap();
        for v in axe_violations(&b).await {
            failures.push(format!("{path}: {v}"));
        }
        let bad_tables = js(&b, "return [...document.querySelectorAll('table')].filter(t => !t.querySelector('caption')).length").await;
        let bad_th = js(&b, "return document.querySelectorAll('th:not([scope])').length").await;
        if bad_tables != 0 || bad_th != 0 {
            failures.push(format!("{path}: {bad_tables} table(s) without caption, {bad_th} header cell(s) without scope"));
        }
        // No other page repeats the status as banners.
        if path != "/installningar" && !b.find_all(Locator::Css("main p.warn")).await.unwrap().is_empty() && !path.starts_with("/pvk/patientlista") {
            failures.push(format!("{path}: a warning banner"));
        }
    }
    assert!(failures.is_empty(), "accessibility:\n{}", failures.join("\n"));

    // Keyboard: skip link first, focus visible, Enter to the content, Tab into the filter form.
    b.goto(&format!("{}/overforingar", d.srv.base)).await.unwrap();
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("h1")).await.unwrap();
    press(&b, TAB).await;
    assert_eq!(js(&b, "return document.activeElement.className").await, "skip", "the first Tab reaches the skip link");
    let outline = js(&b, "const s = getComputedStyle(document.activeElement); return s.outlineStyle + ' ' + s.outlineWidth + ' ' + s.left").await;
    assert!(!outline.as_str().unwrap().starts_with("none"), "focus is visible on the skip link: {outline}");
    press(&b, ENTER).await;
    assert_eq!(js(&b, "return location.hash").await, "#innehall");
    let mut reached = false;
    for _ in 0..20 {
        press(&b, TAB).await;
        if js(&b, "return !!document.activeElement.closest('main form') && ['SELECT','INPUT','BUTTON'].includes(document.activeElement.tagName)").await == true {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab from the content reaches the filter form's fields");
    b.close().await.unwrap();
}

/// A clinic's user: limited to one unit (`users set … --units`), it signs in on a demo-like
/// region, lands on its clinic's page, and opens every page its menu offers (and a transfer, its
/// worklist with identities, a patient list form). A screenshot of each goes to
/// test-artifacts/unit-*.png, and no page shows another unit's HSA id or name; the region-wide
/// pages are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_user_sees_only_its_clinic_in_the_browser() {
    const OWN: &str = "SE2321000156-FT01";
    const OWN_NAME: &str = "Fysioterapin Klarälven";
    // The sandbox's other units and the names config/local.toml gives them.
    const OTHERS: &[&str] = &[
        "SE2321000156-FT02", "SE2321000156-FT03", "SE2321000156-FT04", "SE2321000156-VC01", "SE2321000156-VC02",
        "Rehab Fryken", "Fysio Vänerstrand", "Primärvårdsrehab Älvdalen", "Vårdcentralen Norrstrand", "Vårdcentralen Skåre",
    ];
    let d = demo_like(Backend::Sqlite, 40).await;
    // The sandbox configuration (config/local.toml) names every sandbox unit, bound or not.
    let names = d.srv.state.unit_names();
    assert_eq!(names.label("SE2321000156-FT02"), "Rehab Fryken (SE2321000156-FT02)");
    assert_eq!(names.label("SE2321000156-VC01"), "Vårdcentralen Norrstrand (SE2321000156-VC01)");
    let app = d.srv.state.app.clone();
    add_user(&app, "ft1", Role::Operator, true).await;
    registerbrygga::admin::store::set_user_units(&app.store, "ft1", &[OWN.to_string()]).await.unwrap();
    // The region holds the other units' data (so "none shown" means filtered, not absent).
    let all = app.store.records(&registerbrygga::store::RecordFilter { limit: Some(100_000), ..Default::default() }).await.unwrap();
    assert!(all.iter().any(|r| r.unit != OWN) && all.iter().any(|r| r.unit == OWN), "the demo-like region has several units");

    let driver = start_driver().await;
    let profile = tempfile::tempdir().unwrap();
    let b = browser(&driver, profile.path()).await;
    b.goto(&format!("{}/login", d.srv.base)).await.unwrap();
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("input[name=username]")).await.unwrap();
    b.find(Locator::Css("input[name=username]")).await.unwrap().send_keys("ft1").await.unwrap();
    b.find(Locator::Css("input[name=password]")).await.unwrap().send_keys(PASSWORD).await.unwrap();
    b.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("nav.menu")).await.unwrap();
    assert_eq!(path_of(&b).await, format!("/mottagning/{OWN}"), "a unit user lands on its clinic's page");
    assert_eq!(text_of(&b, "h1").await, format!("{OWN_NAME} ({OWN})"));

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut leaks = vec![];
    let mut visit = |path: String, name: String, source: String| {
        for o in OTHERS {
            if source.contains(o) {
                leaks.push(format!("{path}: shows {o:?}"));
            }
        }
        name
    };
    // Every page of its menu, then pages reached from them.
    let mut pages: Vec<String> = vec![];
    for a in b.find_all(Locator::Css("nav.menu a")).await.unwrap() {
        pages.push(a.attr("href").await.unwrap().expect("menu links have a target"));
    }
    assert!(pages.contains(&"/mottagning".to_string()) && !pages.iter().any(|p| p == "/" || p == "/granskningslogg" || p == "/installningar" || p == "/anvandare"), "menu: {pages:?}");
    if let Some(r) = all.iter().find(|r| r.unit == OWN) {
        pages.push(format!("/overforingar/{}", r.id));
    }
    if let Some(r) = app.store.pvk_results("primarvardskvalitet", None).await.unwrap_or_default().iter().find(|r| r.unit == OWN && r.numerator.unwrap_or(0) > 0) {
        pages.push(format!("/pvk/patientlista?connector={}&rule_year={}&unit={}&year={}&month={}&indicator={}", r.connector, r.rule_year, r.unit, r.year, r.month, r.indicator));
    }
    for path in &pages {
        b.goto(&format!("{}{path}", d.srv.base)).await.unwrap();
        b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("h1")).await.unwrap();
        assert_ne!(text_of(&b, "h1").await, "Åtkomst nekad", "{path}");
        let slug: String = path.trim_start_matches('/').split('?').next().unwrap().replace('/', "-");
        let name = visit(path.clone(), format!("unit-{slug}"), b.source().await.unwrap());
        std::fs::write(artifacts.join(format!("{name}.png")), b.screenshot().await.unwrap()).unwrap();
    }
    // Its worklist with identities, after a stated reason.
    b.goto(&format!("{}/att-komplettera", d.srv.base)).await.unwrap();
    if let Ok(reason) = b.find(Locator::Css("main form textarea[name=reason], main form input[name=reason]")).await {
        reason.send_keys("Planering av uppföljningar").await.unwrap();
        reason.find(Locator::XPath("./ancestor::form//button")).await.unwrap().click().await.unwrap();
        b.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("h1")).await.unwrap();
        let name = visit("/att-komplettera (identiteter)".into(), "unit-att-komplettera-identiteter".into(), b.source().await.unwrap());
        std::fs::write(artifacts.join(format!("{name}.png")), b.screenshot().await.unwrap()).unwrap();
    }
    assert!(leaks.is_empty(), "another unit on a unit user's page:\n{}", leaks.join("\n"));
    // The region-wide pages are refused; so is another unit's clinic page.
    for path in ["/granskningslogg", "/installningar", "/anvandare"] {
        b.goto(&format!("{}{path}", d.srv.base)).await.unwrap();
        assert_eq!(text_of(&b, "h1").await, "Åtkomst nekad", "{path}");
    }
    b.goto(&format!("{}/mottagning/SE2321000156-FT02", d.srv.base)).await.unwrap();
    assert_eq!(text_of(&b, "h1").await, "Hittades inte");
    b.close().await.unwrap();
}
