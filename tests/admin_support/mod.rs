//! Shared by the admin tests: a real admin server on a random loopback port over a real store,
//! seeded with one of everything (a dead letter, a delivered record, a worklist entry, SAR
//! episodes, a PVK result with a patient list, a quarantine item, a run), users, and a small
//! HTTP client that keeps a session cookie and CSRF token by hand.
#![allow(dead_code)]

use crate::common::{self, TestStore};
use chrono::{NaiveDate, Utc};
use registerbrygga::admin::{self, store as adb, AdminState, Role};
use registerbrygga::app::App;
use registerbrygga::config::{Loaded, Settings};
use registerbrygga::model::PatientId;
use registerbrygga::store::*;
use serde_json::json;
use std::sync::Arc;

/// A valid test personnummer (Tolvan Tolvansson), in both spellings a page could use.
pub const PNR: &str = "191212121212";
pub const PNR_DASH: &str = "19121212-1212";
pub const PATIENT_NAME: &str = "Tolvan Tolvansson";
pub const PASSWORD: &str = "ett-långt-lösenord-1";
pub const UNIT: &str = "SE2321000156-FT01";
/// The register refused the unit's context (its access had not been granted yet); once the
/// register's administrators fix that, an operator replays the record.
pub const REJECT_REASON: &str = "403 NoContext: enheten 1701 saknar behörighet i registret";

pub fn app_for(ts: &TestStore, tweak: impl FnOnce(&mut Settings)) -> App {
    let mut settings = Settings::default();
    settings.admin.cookie_secure = true;
    tweak(&mut settings);
    App { loaded: Arc::new(Loaded { settings, failed_sections: vec![], connectors: vec![], files: vec![] }), store: ts.store.clone(), pseudo: common::pseudo(), instance_id: "test-1".into() }
}

pub struct Running {
    pub base: String,
    pub state: AdminState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            s.send(()).ok();
        }
    }
}

/// Serve the real router on 127.0.0.1:<random>.
pub async fn serve(state: AdminState) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = state.settings().tls_cert_file.is_some();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let s = state.clone();
    let task = tokio::spawn(async move {
        admin::serve_with(s, listener, async move {
            rx.await.ok();
        })
        .await
    });
    let base = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
    Running { base, state, stop: Some(tx), task }
}

pub async fn add_user(app: &App, name: &str, role: Role, patient_data: bool) {
    let hash = admin::auth::hash_password(PASSWORD.into()).await.unwrap();
    adb::put_user(&app.store, name, Some(&hash), role, patient_data, false).await.unwrap();
}

/// The three roles, plus an operator with the patient-data right and a läsare whose row carries
/// the right (which must not help it).
pub async fn add_standard_users(app: &App) {
    add_user(app, "lasa", Role::Reader, true).await;
    add_user(app, "oper", Role::Operator, false).await;
    add_user(app, "pat", Role::Operator, true).await;
    add_user(app, "boss", Role::Admin, false).await;
}

pub struct Seeded {
    pub dead_id: i64,
    pub dead_key: String,
    pub delivered_id: i64,
    pub quarantine_id: i64,
    pub patient_key: String,
}

fn payload() -> (serde_json::Map<String, serde_json::Value>, serde_json::Map<String, serde_json::Value>) {
    // A complete, valid FVPat registration (so a replay can really be delivered).
    let p = json!({
        "SubjectKey": PNR, "EventDate": "2026-03-02", "FV_PainNRS": 6,
        "FV_EQ5D_Mobility": 2, "FV_EQ5D_SelfCare": 1, "FV_EQ5D_UsualActivities": 2,
        "FV_EQ5D_PainDiscomfort": 3, "FV_EQ5D_AnxietyDepression": 1, "FV_EQVAS": 70,
        "FV_WantsSurgery": false, "FV_MainJoint": 2
    })
    .as_object()
    .unwrap()
    .clone();
    let mut l = serde_json::Map::new();
    l.insert("SubjectKey".into(), json!(PNR));
    (p, l)
}

fn upsert(key: &str, subject: &str) -> OutboxChange {
    let (payload, lookup) = payload();
    OutboxChange::Upsert {
        key: RecordKey { idem_key: key.into(), register: "sar".into(), connector: "sar-fysio".into(), unit: UNIT.into(), form: "FVPat".into(), subject: Some(subject.into()) },
        payload,
        lookup,
        correlation_id: "seed".into(),
        detail: json!({"why": "seed"}),
    }
}

/// One of everything the pages show; personal data (the personnummer, a name) sits in payloads,
/// the worklist and a PVK patient list — where a läsare must never see it.
pub async fn seed(app: &App) -> Seeded {
    let s = &app.store;
    let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
    let patient = PatientId::parse_national(PNR, today).unwrap();
    let pk = app.pseudo.patient_key(&patient);

    // A dead letter: the register rejects the first record.
    let dead_key = format!("sar|{UNIT}|{pk}|knee|FVPat");
    s.apply(ChangeSet { outbox: vec![upsert(&dead_key, &pk)], ..Default::default() }).await.unwrap();
    let c = s.claim("w1", &[], 1, 60).await.unwrap().pop().expect("claimed");
    s.finish(&c, "w1", Outcome::Rejected { operation: "POST".into(), http_status: Some(400), reason: REJECT_REASON.into() }).await.unwrap();
    let dead_id = c.record.id;

    // A delivered record (the register holds it), for coverage and history.
    let other = PatientId::parse_national("194107086995", today).unwrap();
    let pk2 = app.pseudo.patient_key(&other);
    let ok_key = format!("sar|{UNIT}|{pk2}|hip|FVPat");
    s.apply(ChangeSet { outbox: vec![upsert(&ok_key, &pk2)], ..Default::default() }).await.unwrap();
    let c = s.claim("w1", &[], 1, 60).await.unwrap().pop().expect("claimed");
    s.finish(&c, "w1", Outcome::Delivered { operation: "POST".into(), http_status: Some(200), event_id: Some("E-1001".into()), detail: None }).await.unwrap();
    let delivered_id = c.record.id;

    s.apply(ChangeSet {
        worklist: vec![WorklistChange::Put {
            idem_key: format!("sar|{UNIT}|{pk}|knee|M3Pat"),
            connector: "sar-fysio".into(),
            unit: UNIT.into(),
            form: "Uppf3m".into(),
            patient_key: pk.clone(),
            patient: patient.clone(),
            missing: vec!["U3_PainNRS".into(), "U3_Satisfaction".into()],
            event_date: Some("2026-06-02".into()),
        }],
        episodes: vec![
            (
                "sar-fysio".into(),
                pk.clone(),
                vec![EpisodeRow { episode_key: format!("sar|{UNIT}|{pk}|knee"), connector: "sar-fysio".into(), unit: UNIT.into(), patient_key: pk.clone(), joint: "knee".into(), first_visit_date: "2026-03-02".into(), forms_due: vec!["FVPat".into()] }],
            ),
            (
                "sar-fysio".into(),
                pk2.clone(),
                vec![EpisodeRow { episode_key: format!("sar|{UNIT}|{pk2}|hip"), connector: "sar-fysio".into(), unit: UNIT.into(), patient_key: pk2.clone(), joint: "hip".into(), first_visit_date: "2026-03-09".into(), forms_due: vec!["FVPat".into()] }],
            ),
        ],
        pvk_results: vec![
            PvkResultRow {
                connector: "pvk-vc".into(),
                rule_year: 2026,
                unit: UNIT.into(),
                year: 2026,
                month: 3,
                indicator: "KOL_spirometri".into(),
                numerator: Some(9),
                denominator: Some(20),
                computable: true,
                suppressed: false,
                note: None,
                patient_list: Some(PatientList::new(&json!([{"personnummer": PNR_DASH, "namn": PATIENT_NAME, "uppfyllt": false}]))),
            },
            PvkResultRow {
                connector: "pvk-vc".into(),
                rule_year: 2026,
                unit: UNIT.into(),
                year: 2026,
                month: 4,
                indicator: "KOL_spirometri".into(),
                numerator: Some(12),
                denominator: Some(21),
                computable: true,
                suppressed: false,
                note: None,
                patient_list: Some(PatientList::new(&json!([]))),
            },
        ],
        quarantine: vec![NewQuarantine {
            connector: "sar-fysio".into(),
            run_id: None,
            document: "doc-4711".into(),
            field: "patientId".into(),
            reason: "check digit does not match (Luhn)".into(),
            patient_key: None,
            raw: Some(b"<patientId>191212121213</patientId>".to_vec()),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let quarantine_id = s.quarantine(None, true, 10).await.unwrap()[0].id;
    let run = s.start_run("sar-fysio", "scheduled", Some(Utc::now()), "test-1", "corr-run").await.unwrap();
    s.finish_run(run, "ok", &json!({"documents": 3}), None).await.unwrap();
    Seeded { dead_id, dead_key, delivered_id, quarantine_id, patient_key: pk }
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP client

pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
    pub bearer: Option<String>,
}

pub struct Resp {
    pub status: u16,
    pub body: String,
    pub headers: reqwest::header::HeaderMap,
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

impl Client {
    pub fn anonymous(base: &str) -> Client {
        Client { http: http(), base: base.to_string(), cookie: None, csrf: None, bearer: None }
    }

    pub fn with_bearer(base: &str, token: &str) -> Client {
        Client { bearer: Some(token.to_string()), ..Client::anonymous(base) }
    }

    /// Sign in through the form; keeps the session cookie and picks up the CSRF token.
    pub async fn login(base: &str, user: &str, password: &str) -> Client {
        let mut c = Client::anonymous(base);
        let r = c.post_login(&[("username", user), ("password", password)]).await;
        assert_eq!(r.status, 303, "login of {user} failed: {}", r.body);
        let set = r.headers.get("set-cookie").expect("a session cookie").to_str().unwrap().to_string();
        let value = set.split(';').next().unwrap().trim().to_string();
        c.cookie = Some(value);
        let page = c.get("/").await;
        assert_eq!(page.status, 200);
        c.csrf = Some(csrf_from(&page.body).expect("a CSRF token on the page"));
        c
    }

    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut b = self.http.request(m, format!("{}{}", self.base, path));
        if let Some(c) = &self.cookie {
            b = b.header("cookie", c);
        }
        if let Some(t) = &self.bearer {
            b = b.bearer_auth(t);
        }
        b
    }

    pub async fn send_raw(b: reqwest::RequestBuilder) -> Resp {
        Self::send(b).await
    }

    async fn send(b: reqwest::RequestBuilder) -> Resp {
        let r = b.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        Resp { status, body: r.text().await.unwrap_or_default(), headers }
    }

    pub async fn get(&self, path: &str) -> Resp {
        Self::send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn get_html(&self, path: &str) -> Resp {
        Self::send(self.req(reqwest::Method::GET, path).header("accept", "text/html,application/xhtml+xml")).await
    }

    pub async fn request(&self, m: reqwest::Method, path: &str) -> Resp {
        Self::send(self.req(m, path)).await
    }

    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Resp {
        Self::send(self.req(reqwest::Method::POST, path).form(fields)).await
    }

    /// Post the sign-in form as a browser does: fetch the page first, then send its form token
    /// back in the hidden field and the cookie.
    pub async fn post_login(&self, fields: &[(&str, &str)]) -> Resp {
        let (cookie, token) = login_form_token(&self.http, &self.base).await;
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("login_csrf", &token));
        Self::send(self.http.post(format!("{}/login", self.base)).header("cookie", cookie).form(&all)).await
    }

    /// A form post with this session's CSRF token added.
    pub async fn post_form_csrf(&self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let csrf = self.csrf.clone().expect("logged in");
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("csrf", &csrf));
        self.post_form(path, &all).await
    }

    pub async fn post_json(&self, path: &str, body: serde_json::Value, csrf: bool) -> Resp {
        let mut b = self.req(reqwest::Method::POST, path).json(&body);
        if csrf {
            b = b.header("x-csrf-token", self.csrf.clone().expect("logged in"));
        }
        Self::send(b).await
    }
}

/// The sign-in page's form cookie (`name=value`) and the token in its hidden field.
pub async fn login_form_token(http: &reqwest::Client, base: &str) -> (String, String) {
    let page = http.get(format!("{base}/login")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-rb_login=") || v.starts_with("rb_login="))
        .expect("the sign-in page sets its form cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let body = page.text().await.unwrap();
    let re = regex::Regex::new(r#"name="login_csrf" value="([^"]+)""#).unwrap();
    let token = re.captures(&body).expect("the sign-in form carries its token")[1].to_string();
    (cookie, token)
}

pub fn csrf_from(html: &str) -> Option<String> {
    let re = regex::Regex::new(r#"name="csrf" value="([^"]+)""#).unwrap();
    re.captures(html).map(|c| c[1].to_string())
}

/// Create an API token for `user` directly (as an admin would on the users page).
pub async fn token_for(state: &AdminState, user: &str) -> String {
    let admin = adb::user(&state.app.store, user).await.unwrap().expect("user exists");
    let token = format!("rbt_test_{}", uuid::Uuid::new_v4().simple());
    adb::create_token(&state.app.store, "test", &admin::auth::token_hash(&token), &admin.username, "test", registerbrygga::store::now_us() + 86_400_000_000).await.unwrap();
    token
}

/// Every identity-shaped string the seed holds.
pub fn assert_no_identity(where_: &str, body: &str) {
    for needle in [PNR, PNR_DASH, "121212-1212", "1212121212", PATIENT_NAME, "Tolvan"] {
        assert!(!body.contains(needle), "{where_}: response contains patient identity {needle:?}");
    }
}

/// A route's path with its parameters filled from the seed.
pub fn fill(path: &str, seeded: &Seeded) -> String {
    let id = if path.starts_with("/karantan") || path.starts_with("/api/v1/quarantine") { seeded.quarantine_id } else { seeded.dead_id };
    path.replace("{id}", &id.to_string()).replace("{hsa}", UNIT)
}

/// Query strings that make parameterised GET routes meaningful.
pub fn query_for(path: &str) -> &'static str {
    match path {
        "/pvk/patientlista" | "/api/v1/pvk/patient-list" => "?connector=pvk-vc&rule_year=2026&unit=SE2321000156-FT01&year=2026&month=3&indicator=KOL_spirometri",
        _ => "",
    }
}

/// A demo-like region: the sandbox journal and registers, every shipped connector backfilled over
/// 960 days (as `registerbrygga demo` does, a few bad journal items included), delivered, and
/// the admin pages served with the daemon's own providers (warnings, configuration status).
/// Users: `boss` (admin with the patient-data right).
pub struct DemoLike {
    pub e: crate::common::e2e::E2e,
    pub srv: Running,
}

pub async fn demo_like(backend: registerbrygga::config::Backend, patients: usize) -> DemoLike {
    use registerbrygga::pipeline::{run_connector, RunKind};
    let today = registerbrygga::pipeline::today_stockholm();
    let mut spec = registerbrygga::sandbox::env::SandboxSpec::new(7, patients, today);
    spec.bad_item_share = 0.02;
    let e = crate::common::e2e::start_with(backend, spec, "demolike").await;
    registerbrygga::sandbox::pvk::apply_scenario(&e.env.population).unwrap();
    for c in e.rt.connectors.iter() {
        run_connector(&e.app, c, RunKind::Backfill { from: today - chrono::Duration::days(960), to: today }, false, today, None).await.unwrap();
    }
    e.deliver().await;
    let mut loaded = (*e.app.loaded).clone();
    loaded.settings.admin.cookie_secure = false;
    let app = App { loaded: Arc::new(loaded), ..e.app.clone() };
    add_user(&app, "boss", Role::Admin, true).await;
    let srv = serve(registerbrygga::daemon::admin_state(&app, &e.rt)).await;
    DemoLike { e, srv }
}

/// Every page an admin can open, with real ids and filters from the data (a transfer, a PVK
/// patient list form), so each template renders with content.
pub async fn every_page(store: &registerbrygga::store::Store) -> Vec<String> {
    let mut pages: Vec<String> = [
        "/", "/overforingar", "/misslyckade", "/att-komplettera", "/tackningsgrad", "/artrosregistret/indikatorer", "/pvk", "/granskningslogg",
        "/karantan", "/anvandare", "/installningar", "/mottagning", "/mottagning/SE2321000156-FT01",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let recs = store.records(&RecordFilter { limit: Some(1), ..Default::default() }).await.unwrap();
    if let Some(r) = recs.first() {
        pages.push(format!("/overforingar/{}", r.id));
    }
    let pvk = store.pvk_results("primarvardskvalitet", None).await.unwrap_or_default();
    if let Some(r) = pvk.iter().find(|r| r.numerator.unwrap_or(0) > 0) {
        pages.push(format!(
            "/pvk/patientlista?connector={}&rule_year={}&unit={}&year={}&month={}&indicator={}",
            r.connector, r.rule_year, r.unit, r.year, r.month, r.indicator
        ));
    }
    pages
}
