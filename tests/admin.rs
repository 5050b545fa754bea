//! The admin side over real HTTP on loopback with a real store (SQLite, and the key behaviours on
//! PostgreSQL too): authentication and its single 401, CSRF, roles, patient-data views recorded
//! with a reason, replay, OpenAPI coverage of the router, metrics and readiness.

mod admin_support;
mod common;

use admin_support::*;
use common::TestStore;
use registerbrygga::admin::{self, AdminState, ReadinessCheck, Role};
use registerbrygga::config::{Backend, Secret};
use registerbrygga::store::{AuditQuery, RecordState};
use serde_json::{json, Value};
use std::collections::BTreeSet;

async fn setup(ts: &TestStore) -> (Running, Seeded) {
    let app = app_for(ts, |_| {});
    add_standard_users(&app).await;
    let seeded = seed(&app).await;
    (serve(AdminState::new(app)).await, seeded)
}

fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/login")
}

// ---------------------------------------------------------------------------------------------
// Authentication

both_backends!(every_protected_route_answers_401_the_same_way, |ts: TestStore| async move {
    let (srv, seeded) = setup(&ts).await;
    let anon = Client::anonymous(&srv.base);
    let wrong_token = Client::with_bearer(&srv.base, "rbt_not-a-real-token");
    let mut wrong_cookie = Client::anonymous(&srv.base);
    wrong_cookie.cookie = Some("__Host-rb_session=forged-session-token".into());
    let mut expected: Option<String> = None;
    let mut checked = 0;
    for (method, path) in admin::routes() {
        if is_public(path) {
            continue;
        }
        let p = fill(path, &seeded);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for (who, c) in [("no credentials", &anon), ("wrong bearer token", &wrong_token), ("forged cookie", &wrong_cookie)] {
            let r = c.request(m.clone(), &p).await;
            assert_eq!(r.status, 401, "{method} {p} with {who}");
            assert!(r.headers.get("www-authenticate").is_some(), "{method} {p}: WWW-Authenticate");
            match &expected {
                None => expected = Some(r.body.clone()),
                Some(e) => assert_eq!(&r.body, e, "{method} {p} with {who}: the 401 body must not vary"),
            }
            checked += 1;
        }
    }
    assert!(checked > 100);
    // An unknown route looks exactly like a known one to a client without credentials.
    for p in ["/finns-inte", "/api/v1/finns-inte", "/api/v2/records", "/.env"] {
        let r = anon.get(p).await;
        assert_eq!((r.status, &r.body), (401, expected.as_ref().unwrap()), "unknown route {p}");
    }
    // Browsers get the same status, with a page that leads to the sign-in form.
    let known = anon.get_html("/misslyckade").await;
    let unknown = anon.get_html("/finns-inte").await;
    assert_eq!((known.status, unknown.status), (401, 401));
    assert!(known.body.contains("/login?next=%2Fmisslyckade") && known.body.contains("Inloggning krävs"));
    assert_eq!(known.body.replace("%2Fmisslyckade", "X"), unknown.body.replace("%2Ffinns-inte", "X"));
    // Public routes stay public.
    assert_eq!(anon.get("/healthz").await.status, 200);
    assert_eq!(anon.get("/readyz").await.status, 200);
    let login = anon.get("/login").await;
    assert!(login.status == 200 && login.body.contains("Användarnamn") && login.body.contains("Lösenord") && login.body.contains("Logga in"));
});

both_backends!(sign_in_sessions_and_failed_logins, |ts: TestStore| async move {
    let (srv, _) = setup(&ts).await;
    let anon = Client::anonymous(&srv.base);
    let wrong_pw = anon.post_login(&[("username", "oper"), ("password", "fel-lösenord-hemligt")]).await;
    let no_user = anon.post_login(&[("username", "ingen-sadan"), ("password", "fel-lösenord-hemligt")]).await;
    assert_eq!((wrong_pw.status, no_user.status), (401, 401));
    // (Each form carries a fresh token; apart from it the answers are the same.)
    let token = regex::Regex::new(r#"name="login_csrf" value="[^"]+""#).unwrap();
    assert_eq!(token.replace(&wrong_pw.body, ""), token.replace(&no_user.body, ""), "no hint whether the user exists");
    assert!(wrong_pw.body.contains("Fel användarnamn eller lösenord"));
    assert!(wrong_pw.headers.get_all("set-cookie").iter().all(|v| !v.to_str().unwrap().contains("rb_session=")));

    // Failed attempts are audited, without what was typed as a password.
    let failed = ts.store.audit_search(&AuditQuery { kind: Some("login.failed".into()), ..Default::default() }).await.unwrap();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().any(|e| e.subject == "user:oper"));
    assert!(failed.iter().any(|e| e.subject == "user:?" && e.detail["username_hash"].is_string()));
    let all = serde_json::to_string(&ts.store.audit_search(&AuditQuery::default()).await.unwrap()).unwrap();
    assert!(!all.contains("fel-lösenord-hemligt") && !all.contains(PASSWORD) && !all.contains("ingen-sadan"));

    // A good sign-in sets a hardened cookie.
    let ok = anon.post_login(&[("username", "oper"), ("password", PASSWORD), ("next", "/misslyckade")]).await;
    assert_eq!(ok.status, 303);
    assert_eq!(ok.headers.get("location").unwrap(), "/misslyckade");
    let cookie = ok.headers.get("set-cookie").unwrap().to_str().unwrap().to_string();
    for attr in ["__Host-rb_session=", "HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attr), "cookie lacks {attr}: {cookie}");
    }
    // The token is stored hashed only.
    let token = cookie.split(';').next().unwrap().trim_start_matches("__Host-rb_session=").to_string();
    let mut tx = ts.store.read().await.unwrap();
    let rows = tx.rows("SELECT token_hash FROM sessions", &[]).await.unwrap();
    assert!(!rows.is_empty() && rows.iter().all(|r| r.text(0).unwrap() != token));
    drop(tx);
    // A sign-in posted from elsewhere (no form token, or one that does not match the cookie)
    // is refused even with the right password, and no session is made.
    let forged = anon.post_form("/login", &[("username", "oper"), ("password", PASSWORD)]).await;
    let (cookie, _) = login_form_token(&anon.http, &srv.base).await;
    let mismatched = Client::send_raw(
        anon.http.post(format!("{}/login", srv.base)).header("cookie", cookie).form(&[("username", "oper"), ("password", PASSWORD), ("login_csrf", "gissat")]),
    )
    .await;
    for r in [&forged, &mismatched] {
        assert_eq!(r.status, 403, "{}", r.body);
        assert!(r.body.contains("Inloggningsformuläret har gått ut"));
        assert!(r.headers.get_all("set-cookie").iter().all(|v| !v.to_str().unwrap().contains("rb_session=")));
    }
    // An open redirect is refused.
    let evil = anon.post_login(&[("username", "oper"), ("password", PASSWORD), ("next", "//evil.example/")]).await;
    assert_eq!(evil.headers.get("location").unwrap(), "/");

    let c = Client::login(&srv.base, "oper", PASSWORD).await;
    let page = c.get("/").await;
    assert!(page.body.contains("Översikt") && page.body.contains("Logga ut") && page.body.contains("oper"));
    assert!(page.headers.get("cache-control").unwrap().to_str().unwrap().contains("no-store"));
    let logins = ts.store.audit_search(&AuditQuery { kind: Some("login".into()), actor: Some("oper".into()), ..Default::default() }).await.unwrap();
    assert!(logins.iter().any(|e| e.kind == "login"));

    // Logout needs the CSRF token, then the session is gone.
    assert_eq!(c.post_form("/logout", &[]).await.status, 403);
    let out = c.post_form_csrf("/logout", &[]).await;
    assert_eq!(out.status, 303);
    assert_eq!(c.get("/").await.status, 401);
    let logouts = ts.store.audit_search(&AuditQuery { kind: Some("logout".into()), ..Default::default() }).await.unwrap();
    assert_eq!(logouts.len(), 1);
    assert_eq!(logouts[0].actor, "oper");
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_admin_and_users_cli() {
    let ts = common::store_for(Backend::Sqlite, "bootstrap").await;
    std::env::set_var("RB_TEST_BOOTSTRAP_PW", "första-lösenordet-1");
    let app = app_for(&ts, |s| s.admin.bootstrap_admin_password = Some(Secret::from_env("RB_TEST_BOOTSTRAP_PW")));
    let srv = serve(AdminState::new(app.clone())).await;
    // serve_with creates the admin before it accepts connections; wait for the port.
    let anon = Client::anonymous(&srv.base);
    for _ in 0..50 {
        if anon.http.get(format!("{}/healthz", srv.base)).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let c = Client::login(&srv.base, "admin", "första-lösenordet-1").await;
    assert!(c.get("/anvandare").await.body.contains("Användare och API-nycklar"));

    // `users set` with the password from the environment, then `users list`.
    std::env::set_var("RB_NEW_PASSWORD", "cli-lösenordet-12");
    let code = registerbrygga::cli::users_cli(&app, registerbrygga::cli::UsersCmd::Set { username: "kalle".into(), role: "operatör".into(), patient_data: true, units: None }).await.unwrap();
    assert_eq!(code, 0);
    let u = admin::store::user(&app.store, "kalle").await.unwrap().unwrap();
    assert_eq!((u.role, u.patient_data), (Role::Operator, true));
    assert!(u.password_hash.starts_with("$argon2id$"));
    Client::login(&srv.base, "kalle", "cli-lösenordet-12").await;
    assert_eq!(registerbrygga::cli::users_cli(&app, registerbrygga::cli::UsersCmd::List { json: true }).await.unwrap(), 0);
    let changed = app.store.audit_search(&AuditQuery { kind: Some("user.changed".into()), ..Default::default() }).await.unwrap();
    assert!(changed.iter().any(|e| e.subject == "user:kalle") && changed.iter().any(|e| e.subject == "user:admin"));
    // `--units` limits the user to its care units (kept as given, sorted, without duplicates);
    // something that is no HSA id is refused and changes nothing.
    let set = |units: &str| registerbrygga::cli::UsersCmd::Set { username: "kalle".into(), role: "operatör".into(), patient_data: true, units: Some(units.into()) };
    assert_eq!(registerbrygga::cli::users_cli(&app, set("SE2321000156-FT02, SE2321000156-FT01,SE2321000156-FT02")).await.unwrap(), 0);
    let u = admin::store::user(&app.store, "kalle").await.unwrap().unwrap();
    assert_eq!(u.units, vec!["SE2321000156-FT01".to_string(), "SE2321000156-FT02".to_string()]);
    assert!(registerbrygga::cli::users_cli(&app, set("191212121212")).await.is_err());
    assert_eq!(admin::store::user(&app.store, "kalle").await.unwrap().unwrap().units.len(), 2);
    let changed = app.store.audit_search(&AuditQuery { kind: Some("user.changed".into()), subject: Some("user:kalle".into()), ..Default::default() }).await.unwrap();
    assert!(changed.iter().any(|e| e.detail["units"] == json!(["SE2321000156-FT01", "SE2321000156-FT02"])));
    // Several units: the sign-in lands on the chooser.
    let r = Client::anonymous(&srv.base).post_login(&[("username", "kalle"), ("password", "cli-lösenordet-12")]).await;
    assert_eq!(r.headers.get("location").unwrap(), "/mottagning");
    // A second start does not create another admin or reset the password.
    admin::bootstrap_admin(&app).await.unwrap();
    assert_eq!(admin::store::users(&app.store).await.unwrap().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// CSRF and roles

both_backends!(state_changes_need_the_csrf_token, |ts: TestStore| async move {
    let (srv, seeded) = setup(&ts).await;
    let c = Client::login(&srv.base, "oper", PASSWORD).await;
    let id = seeded.dead_id.to_string();
    let missing = c.post_form("/misslyckade/forsok-igen", &[("id", &id), ("reason", "rättat i journalen")]).await;
    let wrong = c.post_form("/misslyckade/forsok-igen", &[("id", &id), ("reason", "rättat i journalen"), ("csrf", "fel-token")]).await;
    assert_eq!((missing.status, wrong.status), (403, 403));
    assert!(missing.body.contains("CSRF"));
    let api = c.post_json("/api/v1/replay", json!({"ids": [seeded.dead_id], "reason": "rättat"}), false).await;
    assert_eq!(api.status, 403);
    assert_eq!(ts.store.record(seeded.dead_id).await.unwrap().unwrap().state, RecordState::Rejected, "nothing re-queued without the token");
    for (path, fields) in [
        (format!("/karantan/{}/losa", seeded.quarantine_id), vec![("note", "rättat")]),
        (format!("/overforingar/{}/aterkalla", seeded.dead_id), vec![("reason", "patienten avböjer")]),
    ] {
        assert_eq!(c.post_form(&path, &fields).await.status, 403, "{path}");
    }
    assert_eq!(ts.store.quarantine(None, true, 10).await.unwrap().len(), 1);
    // A bearer token is never sent by a browser on its own: no CSRF token needed.
    let token = token_for(&srv.state, "oper").await;
    let t = Client::with_bearer(&srv.base, &token);
    let r = t.post_json("/api/v1/replay", json!({"ids": [seeded.dead_id], "reason": "rättat via skript"}), false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["requeued"], json!([seeded.dead_id]));
});

/// Every GET route (pages and API) as `user`: status and body.
async fn crawl(c: &Client, seeded: &Seeded) -> Vec<(String, u16, String)> {
    let mut out = vec![];
    let paths: BTreeSet<String> = admin::routes().into_iter().filter(|(m, p)| *m == "GET" && !is_public(p)).map(|(_, p)| format!("{}{}", fill(p, seeded), query_for(p))).collect();
    for p in paths {
        let r = c.get(&p).await;
        out.push((p, r.status, r.body));
    }
    for extra in [format!("/overforingar/{}", seeded.delivered_id), "/api/v1/worklists?reason=uppf%C3%B6ljning".to_string(), "/overforingar?q=FVPat&all_versions=true".into(), "/karantan?alla=1".into()] {
        let r = c.get(&extra).await;
        out.push((extra, r.status, r.body));
    }
    out
}

both_backends!(a_reader_sees_no_identities_and_cannot_act, |ts: TestStore| async move {
    let (srv, seeded) = setup(&ts).await;
    let c = Client::login(&srv.base, "lasa", PASSWORD).await;
    let pages = crawl(&c, &seeded).await;
    for (p, status, body) in &pages {
        assert!(*status == 200 || *status == 403, "GET {p} as läsare: {status}");
        assert_no_identity(&format!("GET {p} (läsare)"), body);
    }
    // The pages a läsare reads do show the work, just not who.
    let failed = c.get("/misslyckade").await;
    assert!(failed.body.contains(&seeded.dead_key) && failed.body.contains("saknar behörighet i registret"));
    assert!(!failed.body.contains("Försök igen</button>"), "no replay button for a läsare");
    let work = c.get("/att-komplettera").await;
    assert!(work.body.contains(&seeded.patient_key) && work.body.contains("U3_PainNRS"));
    assert!(!work.body.contains("Visa identiteter"));
    // Patient lists and payload values are refused, whatever the user row says.
    assert_eq!(c.get(&format!("/pvk/patientlista{}", query_for("/pvk/patientlista"))).await.status, 403);
    let api_list = c.get(&format!("/api/v1/pvk/patient-list{}&reason=kontroll", query_for("/api/v1/pvk/patient-list"))).await;
    assert_eq!(api_list.status, 403);
    assert_no_identity("patient list API (läsare)", &api_list.body);
    assert_eq!(c.get("/api/v1/worklists?reason=kontroll").await.status, 403);
    let reveal = c.post_form_csrf(&format!("/overforingar/{}/personuppgifter", seeded.dead_id), &[("reason", "kontroll")]).await;
    assert_eq!(reveal.status, 403);
    assert_no_identity("payload reveal (läsare)", &reveal.body);
    // No replay, retract, resolve or user admin for a läsare.
    let replay = c.post_form_csrf("/misslyckade/forsok-igen", &[("id", &seeded.dead_id.to_string()), ("reason", "försöker")]).await;
    assert_eq!(replay.status, 403);
    assert_eq!(c.post_json("/api/v1/replay", json!({"ids": [seeded.dead_id], "reason": "försöker"}), true).await.status, 403);
    assert_eq!(c.post_form_csrf(&format!("/karantan/{}/losa", seeded.quarantine_id), &[("note", "klart")]).await.status, 403);
    assert_eq!(c.get("/anvandare").await.status, 403);
    assert_eq!(c.get("/api/v1/config").await.status, 403);
    assert_eq!(ts.store.record(seeded.dead_id).await.unwrap().unwrap().state, RecordState::Rejected);
    let views = ts.store.audit_search(&AuditQuery { kind: Some("patient_data.view".into()), ..Default::default() }).await.unwrap();
    assert!(views.is_empty(), "nothing was shown, so nothing is recorded");
    // An operator without the patient-data right also sees no identities anywhere.
    let o = Client::login(&srv.base, "oper", PASSWORD).await;
    for (p, _, body) in crawl(&o, &seeded).await {
        assert_no_identity(&format!("GET {p} (operatör)"), &body);
    }
});

// ---------------------------------------------------------------------------------------------
// Replay

both_backends!(an_operator_replay_requeues_and_is_audited, |ts: TestStore| async move {
    let (srv, seeded) = setup(&ts).await;
    let c = Client::login(&srv.base, "oper", PASSWORD).await;
    let failed = c.get("/misslyckade").await;
    assert!(failed.body.contains(&format!("rad-{}", seeded.dead_id)) && failed.body.contains("Försök igen"));
    let dl: Value = serde_json::from_str(&c.get("/api/v1/dead-letters").await.body).unwrap();
    assert_eq!((dl["total"].as_i64(), dl["items"][0]["id"].as_i64()), (Some(1), Some(seeded.dead_id)));
    assert_eq!(dl["items"][0]["reason"], json!(REJECT_REASON));
    let delivered: Value = serde_json::from_str(&c.get("/api/v1/records?state=delivered&register=sar&unit=SE2321000156-FT01&form=FVPat").await.body).unwrap();
    assert_eq!((delivered["total"].as_i64(), delivered["items"][0]["id"].as_i64()), (Some(1), Some(seeded.delivered_id)));
    let none: Value = serde_json::from_str(&c.get("/api/v1/records?from=2001-01-01&to=2001-12-31").await.body).unwrap();
    assert_eq!(none["total"], json!(0));
    assert_eq!(c.get("/api/v1/records?state=borta").await.status, 400);
    // Without a reason, nothing happens.
    let no_reason = c.post_form_csrf("/misslyckade/forsok-igen", &[("id", &seeded.dead_id.to_string()), ("reason", " ")]).await;
    assert_eq!(no_reason.status, 400);
    assert_eq!(ts.store.record(seeded.dead_id).await.unwrap().unwrap().state, RecordState::Rejected);

    let why = "Smärtskattningen rättad i journalen";
    let r = c.post_form_csrf("/misslyckade/forsok-igen", &[("id", &seeded.dead_id.to_string()), ("reason", why)]).await;
    assert_eq!(r.status, 303);
    let to = r.headers.get("location").unwrap().to_str().unwrap().to_string();
    assert_eq!(to, format!("/overforingar/{}?meddelande=koad", seeded.dead_id));
    let page = c.get(&to).await;
    assert!(page.body.contains("köad för ett nytt försök") && page.body.contains("väntar"));
    assert!(page.body.contains("Nytt försök begärt") && page.body.contains(why));
    let rec = ts.store.record(seeded.dead_id).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempts), (RecordState::Pending, 0));
    let ev = ts.store.audit_search(&AuditQuery { kind: Some("replay".into()), subject: Some(seeded.dead_key.clone()), ..Default::default() }).await.unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].actor, "oper");
    assert_eq!(ev[0].detail["reason"], json!(why));
    assert_eq!(ev[0].detail["from_state"], json!("rejected"));
    assert!(!c.get("/misslyckade").await.body.contains(&format!("rad-{}", seeded.dead_id)));
    let dl: Value = serde_json::from_str(&c.get("/api/v1/dead-letters").await.body).unwrap();
    assert_eq!(dl["total"], json!(0));
    let hist: Value = serde_json::from_str(&c.get(&format!("/api/v1/records/{}", seeded.dead_id)).await.body).unwrap();
    assert_eq!(hist["record"]["state"], json!("pending"));
    assert!(hist["audit"].as_array().unwrap().iter().any(|e| e["kind"] == "replay" && e["actor"] == "oper"));
    assert_eq!(hist["attempts"].as_array().unwrap().len(), 1);
    // The chain still verifies after all of this.
    assert!(ts.store.audit_verify().await.unwrap().ok);
    // The API: a second replay of a record that is no longer failed is skipped, not an error.
    let again = c.post_json("/api/v1/replay", json!({"ids": [seeded.dead_id], "reason": "igen"}), true).await;
    assert_eq!(again.status, 200);
    assert_eq!(serde_json::from_str::<Value>(&again.body).unwrap()["skipped"], json!([seeded.dead_id]));
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retract_and_quarantine_actions_are_audited() {
    let ts = common::store_for(Backend::Sqlite, "actions").await;
    let (srv, seeded) = setup(&ts).await;
    let c = Client::login(&srv.base, "oper", PASSWORD).await;
    let r = c.post_form_csrf(&format!("/karantan/{}/losa", seeded.quarantine_id), &[("note", "källan rättad")]).await;
    assert_eq!(r.status, 303);
    assert!(ts.store.quarantine(None, true, 10).await.unwrap().is_empty());
    let r = c.post_form_csrf(&format!("/overforingar/{}/aterkalla", seeded.delivered_id), &[("reason", "patienten avböjer registrering")]).await;
    assert_eq!(r.status, 303);
    let page = c.get(r.headers.get("location").unwrap().to_str().unwrap()).await;
    assert!(page.body.contains("Återkallelsen är köad") && page.body.contains("Manuell återkallelse"));
    let ev = ts.store.audit_search(&AuditQuery { kind: Some("retract.manual".into()), ..Default::default() }).await.unwrap();
    assert_eq!((ev.len(), ev[0].actor.as_str()), (1, "oper"));
    let q = ts.store.audit_search(&AuditQuery { kind: Some("quarantine.resolved".into()), ..Default::default() }).await.unwrap();
    assert_eq!((q.len(), q[0].actor.as_str()), (1, "oper"));
}

// ---------------------------------------------------------------------------------------------
// Patient-data views

both_backends!(patient_lists_need_a_reason_and_are_recorded, |ts: TestStore| async move {
    let (srv, seeded) = setup(&ts).await;
    let c = Client::login(&srv.base, "pat", PASSWORD).await;
    let key_fields = [("connector", "pvk-vc"), ("rule_year", "2026"), ("unit", UNIT), ("year", "2026"), ("month", "3"), ("indicator", "KOL_spirometri")];
    let views = || async { ts.store.audit_search(&AuditQuery { kind: Some("patient_data.view".into()), ..Default::default() }).await.unwrap() };

    // The GET only asks why.
    let form = c.get(&format!("/pvk/patientlista{}", query_for("/pvk/patientlista"))).await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("Ange varför") && form.body.contains("Visa patientlistan"));
    assert_no_identity("reason form", &form.body);
    // Without a reason: refused, nothing shown, nothing recorded.
    let refused = c.post_form_csrf("/pvk/patientlista", &key_fields).await;
    assert_eq!(refused.status, 400);
    assert_no_identity("list without reason", &refused.body);
    let api_refused = c.get(&format!("/api/v1/pvk/patient-list{}", query_for("/api/v1/pvk/patient-list"))).await;
    assert_eq!(api_refused.status, 400);
    assert_no_identity("API list without reason", &api_refused.body);
    assert!(views().await.is_empty());

    // With a reason: shown, and recorded with who, which list and why.
    let why = "Genomgång av KOL-patienter inför teamträff";
    let mut fields = key_fields.to_vec();
    fields.push(("reason", why));
    let shown = c.post_form_csrf("/pvk/patientlista", &fields).await;
    assert_eq!(shown.status, 200);
    assert!(shown.body.contains(PNR_DASH) && shown.body.contains(PATIENT_NAME) && shown.body.contains("Visningen är loggad"));
    let v = views().await;
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].actor, "pat");
    assert_eq!(v[0].subject, format!("pvk:pvk-vc:2026:{UNIT}:2026-03:KOL_spirometri"));
    assert_eq!(v[0].detail["reason"], json!(why));
    assert_eq!(v[0].detail["list"], json!("pvk_patient_list"));

    let api = c.get(&format!("/api/v1/pvk/patient-list{}&reason=kontroll%20av%20lista", query_for("/api/v1/pvk/patient-list"))).await;
    assert_eq!(api.status, 200);
    assert!(api.body.contains(PNR_DASH));
    assert_eq!(views().await.len(), 2);

    // The worklist: pseudonyms by default, identities after a reason.
    let plain = c.get("/att-komplettera").await;
    assert_no_identity("worklist before reason", &plain.body);
    assert!(plain.body.contains("Visa identiteter"));
    let ids = c.post_form_csrf("/att-komplettera", &[("unit", ""), ("reason", "ringa patienter om uppföljning")]).await;
    assert_eq!(ids.status, 200);
    assert!(ids.body.contains(PNR_DASH));
    let v = views().await;
    assert_eq!(v.len(), 3);
    assert_eq!(v[0].detail["list"], json!("worklist"));
    // A transfer's values, too.
    let vals = c.post_form_csrf(&format!("/overforingar/{}/personuppgifter", seeded.dead_id), &[("reason", "kontrollera avvisat värde")]).await;
    assert_eq!(vals.status, 200);
    assert!(vals.body.contains(PNR) && vals.body.contains("FV_PainNRS"));
    assert_eq!(views().await[0].subject, seeded.dead_key);
    // An operator without the right may not, even with a reason.
    let o = Client::login(&srv.base, "oper", PASSWORD).await;
    assert_eq!(o.post_form_csrf("/pvk/patientlista", &fields).await.status, 403);
    assert_eq!(views().await.len(), 4);
});

// ---------------------------------------------------------------------------------------------
// OpenAPI, metrics, readiness, TLS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_route() {
    let ts = common::store_for(Backend::Sqlite, "openapi").await;
    let (srv, seeded) = setup(&ts).await;
    add_user(&srv.state.app, "chef", Role::Admin, true).await;
    let token = token_for(&srv.state, "chef").await;
    let c = Client::with_bearer(&srv.base, &token);
    let r = c.get("/api/v1/openapi.json").await;
    assert_eq!(r.status, 200);
    let doc: Value = serde_json::from_str(&r.body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| ops.as_object().unwrap().keys().map(move |m| (m.to_uppercase(), p.clone())))
        .collect();
    let routed: BTreeSet<(String, String)> = admin::routes().into_iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(routed.difference(&documented).collect::<Vec<_>>(), Vec::<&(String, String)>::new(), "routes missing from openapi.json");
    assert_eq!(documented.difference(&routed).collect::<Vec<_>>(), Vec::<&(String, String)>::new(), "openapi.json lists routes the router does not serve");
    // Every documented GET answers (as an admin, with seeded ids), and unknown paths are 404.
    for (m, p) in &routed {
        if m == "GET" {
            let mut path = format!("{}{}", fill(p, &seeded), query_for(p));
            if p == "/api/v1/pvk/patient-list" {
                path.push_str("&reason=kontroll");
            }
            let r = c.get(&path).await;
            assert!(r.status == 200, "GET {path}: {} {}", r.status, &r.body[..r.body.len().min(200)]);
        }
    }
    assert_eq!(c.get("/api/v1/finns-inte").await.status, 404);
    assert_eq!(c.get("/finns-inte").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_the_series_and_no_identities() {
    let ts = common::store_for(Backend::Sqlite, "metrics").await;
    let (srv, _) = setup(&ts).await;
    // What the delivery engine will report per send.
    admin::record_send("sar", "delivered", std::time::Duration::from_millis(120));
    admin::record_send("sar", "rejected", std::time::Duration::from_millis(40));
    admin::record_send("191212121212", "delivered", std::time::Duration::from_millis(1));
    admin::record_run("sar-fysio", "ok", std::time::Duration::from_secs(3));
    let token = token_for(&srv.state, "lasa").await;
    let r = Client::with_bearer(&srv.base, &token).get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("content-type").unwrap().to_str().unwrap().starts_with("text/plain"));
    let m = r.body;
    for series in [
        "rb_records{register=\"sar\",state=\"rejected\"} 1",
        "rb_records{register=\"sar\",state=\"delivered\"} 1",
        "rb_attempts_total{register=\"sar\",outcome=\"rejected\"} 1",
        "rb_attempts_total{register=\"sar\",outcome=\"ok\"} 1",
        "rb_runs_total{connector=\"sar-fysio\",status=\"ok\"} 1",
        "rb_queue_depth 0",
        "rb_lease_rescues_total 0",
        "rb_quarantine_open 1",
        "rb_worklist_items 1",
        "rb_send_duration_seconds_bucket{register=\"sar\",outcome=\"delivered\",le=\"0.25\"} 1",
        "rb_send_duration_seconds_count{register=\"sar\",outcome=\"rejected\"} 1",
        "rb_run_duration_seconds_bucket{connector=\"sar-fysio\",status=\"ok\",le=\"5\"} 1",
        "# TYPE rb_send_duration_seconds histogram",
    ] {
        assert!(m.contains(series), "missing {series:?} in\n{m}");
    }
    assert!(m.contains("register=\"redacted\""), "an identity-shaped label value is replaced");
    let long_digits = regex::Regex::new(r"[0-9]{10,}").unwrap();
    assert!(!long_digits.is_match(&m), "a 10+ digit run in /metrics: {:?}", long_digits.find(&m));
    assert_no_identity("/metrics", &m);
    // Without credentials: 401 (the Prometheus scrape config sends a bearer token).
    assert_eq!(Client::anonymous(&srv.base).get("/metrics").await.status, 401);
}

both_backends!(readiness_follows_the_store_and_the_daemon, |ts: TestStore| async move {
    let app = app_for(&ts, |_| {});
    let metadata_ok = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = metadata_ok.clone();
    let state = AdminState::new(app).with_readiness(move || {
        let ok = flag.load(std::sync::atomic::Ordering::SeqCst);
        vec![ReadinessCheck { name: "register metadata: sar".into(), ok, detail: (!ok).then(|| "not loaded yet".into()) }]
    });
    let srv = serve(state).await;
    let anon = Client::anonymous(&srv.base);
    let r = anon.get("/readyz").await;
    assert_eq!(r.status, 503, "metadata not loaded yet");
    assert!(r.body.contains("register metadata: sar"));
    metadata_ok.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = anon.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["ready"], json!(true));
    // The store goes away: not ready, while the process is still alive.
    ts.store.close().await;
    let r = anon.get("/readyz").await;
    assert_eq!(r.status, 503);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["checks"][0]["name"], json!("store"));
    assert_eq!(v["checks"][0]["ok"], json!(false));
    assert_eq!(anon.get("/healthz").await.status, 200);
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_speaks_tls_when_configured() {
    let ts = common::store_for(Backend::Sqlite, "tls").await;
    let certs = registerbrygga::sandbox::tls::CertSet::ensure(&ts.dir.path().join("certs")).unwrap();
    let app = app_for(&ts, |s| {
        s.admin.tls_cert_file = Some(certs.server_cert.clone());
        s.admin.tls_key_file = Some(certs.server_key.clone());
    });
    add_user(&app, "oper", Role::Operator, false).await;
    let srv = serve(AdminState::new(app)).await;
    assert!(srv.base.starts_with("https://"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&certs.ca).unwrap()).unwrap();
    let client = reqwest::Client::builder().add_root_certificate(ca).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(r) = client.get(format!("{}/healthz", srv.base)).send().await {
            assert_eq!(r.status(), 200);
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "the TLS listener answers");
    let (cookie, token) = login_form_token(&client, &srv.base).await;
    let r = client
        .post(format!("{}/login", srv.base))
        .header("cookie", cookie)
        .form(&[("username", "oper"), ("password", PASSWORD), ("login_csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // Plain HTTP on the TLS port gets nowhere.
    let plain = srv.base.replace("https://", "http://");
    let r = http().get(format!("{plain}/healthz")).send().await;
    assert!(r.is_err() || r.unwrap().status() != 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_are_managed_by_admins_and_stored_hashed() {
    let ts = common::store_for(Backend::Sqlite, "tokens").await;
    let (srv, _) = setup(&ts).await;
    let boss = Client::login(&srv.base, "boss", PASSWORD).await;
    // A token acts only for its own user: an admin cannot mint one for someone else.
    let r = boss.post_json("/api/v1/tokens", json!({"name": "prometheus", "username": "lasa"}), true).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = boss.post_json("/api/v1/tokens", json!({"name": "prometheus"}), true).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("rbt_"));
    let t = Client::with_bearer(&srv.base, &token);
    let me: Value = serde_json::from_str(&t.get("/api/v1/me").await.body).unwrap();
    assert_eq!((me["username"].as_str(), me["role"].as_str(), me["via"].as_str()), (Some("boss"), Some("admin"), Some("token")));
    // A token cannot mint further tokens.
    assert_eq!(t.post_json("/api/v1/tokens", json!({"name": "more"}), false).await.status, 403);
    let listed = boss.get("/api/v1/tokens").await.body;
    assert!(listed.contains("prometheus") && !listed.contains(&token));
    let mut tx = ts.store.read().await.unwrap();
    let stored = tx.rows("SELECT token_hash FROM api_tokens", &[]).await.unwrap();
    assert!(stored.iter().all(|r| r.text(0).unwrap() != token));
    drop(tx);
    // Only admins manage tokens; a revoked token stops working.
    let oper = Client::login(&srv.base, "oper", PASSWORD).await;
    assert_eq!(oper.post_json("/api/v1/tokens", json!({"name": "x", "username": "oper"}), true).await.status, 403);
    let id = v["id"].as_i64().unwrap();
    let del = boss.http.delete(format!("{}/api/v1/tokens/{id}", srv.base)).header("cookie", boss.cookie.clone().unwrap()).header("x-csrf-token", boss.csrf.clone().unwrap()).send().await.unwrap();
    assert_eq!(del.status(), 200);
    assert_eq!(t.get("/api/v1/me").await.status, 401);
}

// ---------------------------------------------------------------------------------------------
// Users limited to their own units (issue 17 item 9, issue 19 items 1–2)

const OTHER_UNIT: &str = "SE2321000156-FT02";
const OTHER_NAME: &str = "Rehab Fryken";
const OWN_NAME: &str = "Fysioterapin Klarälven";
/// The other unit's patient (a valid test personnummer), in the forms a page could show.
const OTHER_PNR: &str = "195011182044";
const OTHER_PNR_DASH: &str = "19501118-2044";

struct OtherUnit {
    dead_id: i64,
    dead_key: String,
    delivered_id: i64,
    patient_key: String,
}

/// The second unit's data: a dead letter, a delivered record, a worklist entry, an episode and
/// a PVK result with a patient list — everything a unit-limited user of the first must not see.
async fn seed_other_unit(app: &registerbrygga::app::App) -> OtherUnit {
    use registerbrygga::store::*;
    let s = &app.store;
    let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
    let patient = registerbrygga::model::PatientId::parse_national(OTHER_PNR, today).unwrap();
    let pk = app.pseudo.patient_key(&patient);
    let upsert = |key: &str| {
        let payload = json!({"SubjectKey": OTHER_PNR, "EventDate": "2026-04-01", "FV_PainNRS": 4}).as_object().unwrap().clone();
        OutboxChange::Upsert {
            key: RecordKey { idem_key: key.into(), register: "sar".into(), connector: "sar-fysio".into(), unit: OTHER_UNIT.into(), form: "FVPat".into(), subject: Some(pk.clone()) },
            payload,
            lookup: json!({"SubjectKey": OTHER_PNR}).as_object().unwrap().clone(),
            correlation_id: "seed-other".into(),
            detail: json!({}),
        }
    };
    let dead_key = format!("sar|{OTHER_UNIT}|{pk}|hip|FVPat");
    s.apply(ChangeSet { outbox: vec![upsert(&dead_key)], ..Default::default() }).await.unwrap();
    let c = s.claim("w1", &[], 1, 60).await.unwrap().pop().expect("claimed");
    s.finish(&c, "w1", Outcome::Rejected { operation: "POST".into(), http_status: Some(400), reason: "400 FV_PainNRS saknas".into() }).await.unwrap();
    let dead_id = c.record.id;
    s.apply(ChangeSet { outbox: vec![upsert(&format!("sar|{OTHER_UNIT}|{pk}|course|FVPat"))], ..Default::default() }).await.unwrap();
    let c = s.claim("w1", &[], 1, 60).await.unwrap().pop().expect("claimed");
    s.finish(&c, "w1", Outcome::Delivered { operation: "POST".into(), http_status: Some(200), event_id: Some("E-2002".into()), detail: None }).await.unwrap();
    let delivered_id = c.record.id;
    s.apply(ChangeSet {
        worklist: vec![WorklistChange::Put {
            idem_key: format!("sar|{OTHER_UNIT}|{pk}|course|M3Pat"),
            connector: "sar-fysio".into(),
            unit: OTHER_UNIT.into(),
            form: "Uppf3m".into(),
            patient_key: pk.clone(),
            patient: patient.clone(),
            missing: vec!["U3_PainNRS".into()],
            event_date: Some("2026-07-01".into()),
        }],
        episodes: vec![(
            "sar-fysio".into(),
            pk.clone(),
            vec![EpisodeRow { episode_key: format!("sar|{OTHER_UNIT}|{pk}|course"), connector: "sar-fysio".into(), unit: OTHER_UNIT.into(), patient_key: pk.clone(), joint: "hip".into(), first_visit_date: "2026-04-01".into(), forms_due: vec!["FVPat".into()] }],
        )],
        pvk_results: vec![PvkResultRow {
            connector: "pvk-vc".into(),
            rule_year: 2026,
            unit: OTHER_UNIT.into(),
            year: 2026,
            month: 3,
            indicator: "KOL_spirometri".into(),
            numerator: Some(3),
            denominator: Some(7),
            computable: true,
            suppressed: false,
            note: None,
            patient_list: Some(PatientList::new(&json!([{"personnummer": OTHER_PNR_DASH, "uppfyllt": true}]))),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    OtherUnit { dead_id, dead_key, delivered_id, patient_key: pk }
}

/// Both units named beside their bindings, as a region configures them.
fn named_units(s: &mut registerbrygga::config::Settings) {
    use registerbrygga::config::{RegisterSettings, UnitBinding};
    let units = vec![
        UnitBinding { hsa_id: UNIT.into(), unit_code: "1701".into(), name: Some(OWN_NAME.into()) },
        UnitBinding { hsa_id: OTHER_UNIT.into(), unit_code: "1702".into(), name: Some(OTHER_NAME.into()) },
    ];
    s.registers.insert("sar".into(), RegisterSettings { units, ..Default::default() });
}

/// Sign in as a unit-limited user: it lands on its clinic's page (the CSRF token is taken there).
async fn login_unit(base: &str, user: &str) -> Client {
    let mut c = Client::anonymous(base);
    let r = c.post_login(&[("username", user), ("password", PASSWORD)]).await;
    assert_eq!(r.status, 303, "login of {user}: {}", r.body);
    assert_eq!(r.headers.get("location").unwrap(), &format!("/mottagning/{UNIT}"), "a one-unit user lands on its clinic's page");
    c.cookie = Some(r.headers.get("set-cookie").unwrap().to_str().unwrap().split(';').next().unwrap().to_string());
    let page = c.get(&format!("/mottagning/{UNIT}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    c.csrf = Some(csrf_from(&page.body).expect("a CSRF token on the clinic page"));
    c
}

fn assert_nothing_of_the_other_unit(where_: &str, body: &str, other: &OtherUnit) {
    for needle in [OTHER_UNIT, OTHER_NAME, OTHER_PNR, OTHER_PNR_DASH, "1118-2044", other.patient_key.as_str(), other.dead_key.as_str(), "E-2002", "FV_PainNRS saknas"] {
        assert!(!body.contains(needle), "{where_}: shows {needle:?} of the other unit");
    }
}

fn json_of(r: &Resp) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

both_backends!(a_unit_user_sees_only_its_units_everywhere, |ts: TestStore| async move {
    let app = app_for(&ts, named_units);
    add_standard_users(&app).await;
    let seeded = seed(&app).await;
    let other = seed_other_unit(&app).await;
    add_user(&app, "ft1", Role::Operator, true).await;
    admin::store::set_user_units(&app.store, "ft1", &[UNIT.to_string()]).await.unwrap();
    // An admin limited to a unit is still kept from the region-wide pages.
    add_user(&app, "ft1-admin", Role::Admin, false).await;
    admin::store::set_user_units(&app.store, "ft1-admin", &[UNIT.to_string()]).await.unwrap();
    let srv = serve(AdminState::new(app)).await;
    let region = Client::login(&srv.base, "pat", PASSWORD).await;
    let c = login_unit(&srv.base, "ft1").await;

    // Every GET route, pages and API: nothing of the other unit, whatever the status.
    let mut paths: BTreeSet<String> = admin::routes().into_iter().filter(|(m, p)| *m == "GET" && !is_public(p)).map(|(_, p)| format!("{}{}", fill(p, &seeded), query_for(p))).collect();
    paths.extend([
        format!("/overforingar/{}", seeded.delivered_id),
        format!("/overforingar?unit={OTHER_UNIT}"),
        "/overforingar?all_versions=true".into(),
        "/karantan?alla=1".into(),
        format!("/att-komplettera?unit={OTHER_UNIT}"),
        format!("/pvk?unit={OTHER_UNIT}"),
        "/api/v1/worklists?reason=uppf%C3%B6ljning%20av%20mottagningen".into(),
        format!("/api/v1/records?unit={OTHER_UNIT}"),
        format!("/api/v1/worklists?unit={OTHER_UNIT}"),
        format!("/api/v1/pvk/results?unit={OTHER_UNIT}"),
    ]);
    for p in &paths {
        let r = c.get(p).await;
        assert!(matches!(r.status, 200 | 303 | 400 | 403 | 404), "GET {p} as ft1: {} {}", r.status, r.body);
        assert_nothing_of_the_other_unit(&format!("GET {p} (ft1)"), &r.body, &other);
    }
    // The region user does see the other unit (the seed is really there).
    let all: Value = json_of(&region.get("/api/v1/records").await);
    assert_eq!(all["total"], json!(4));
    assert!(region.get(&format!("/mottagning/{OTHER_UNIT}")).await.body.contains(&format!("{OTHER_NAME} ({OTHER_UNIT})")));

    // Lists: only the unit's rows.
    let own = json_of(&c.get("/api/v1/records").await);
    assert_eq!(own["total"], json!(2));
    assert!(own["items"].as_array().unwrap().iter().all(|i| i["unit"] == json!(UNIT)));
    assert_eq!(json_of(&c.get(&format!("/api/v1/records?unit={OTHER_UNIT}")).await)["total"], json!(0));
    let dl = json_of(&c.get("/api/v1/dead-letters").await);
    assert_eq!((dl["total"].as_i64(), dl["items"][0]["id"].as_i64()), (Some(1), Some(seeded.dead_id)));
    let wl = json_of(&c.get("/api/v1/worklists").await);
    assert_eq!(wl.as_array().unwrap().len(), 1);
    assert_eq!(wl[0]["unit"], json!(UNIT));
    let cov = json_of(&c.get("/api/v1/coverage/sar").await);
    assert!(!cov.as_array().unwrap().is_empty() && cov.as_array().unwrap().iter().all(|r| r["unit"] == json!(UNIT)));
    let pvk = json_of(&c.get("/api/v1/pvk/results").await);
    assert_eq!(pvk["results"].as_array().unwrap().len(), 2);
    assert!(pvk["results"].as_array().unwrap().iter().all(|r| r["unit"] == json!(UNIT)));
    // Quarantined documents carry no unit: only a caller who may see every unit of the
    // connector sees them (here the connector is not configured, so only the region).
    assert_eq!(json_of(&c.get("/api/v1/quarantine").await), json!([]));
    assert_eq!(json_of(&region.get("/api/v1/quarantine").await).as_array().unwrap().len(), 1);
    assert_eq!(json_of(&c.get("/api/v1/me").await)["units"], json!([UNIT]));

    // Another unit's rows do not exist for it, by id either.
    for p in [format!("/api/v1/records/{}", other.dead_id), format!("/api/v1/records/{}/attempts", other.dead_id), format!("/overforingar/{}", other.delivered_id), format!("/mottagning/{OTHER_UNIT}")] {
        assert_eq!(c.get(&p).await.status, 404, "GET {p}");
    }
    let list_q = format!("?connector=pvk-vc&rule_year=2026&unit={OTHER_UNIT}&year=2026&month=3&indicator=KOL_spirometri");
    assert_eq!(c.get(&format!("/api/v1/pvk/patient-list{list_q}&reason=kontroll")).await.status, 404);
    assert_eq!(c.get(&format!("/pvk/patientlista{list_q}")).await.status, 404);
    // Region-wide pages and endpoints are refused.
    for who in [&c, &login_unit(&srv.base, "ft1-admin").await] {
        for p in ["/granskningslogg", "/anvandare", "/installningar", "/api/v1/audit", "/api/v1/audit/verify", "/api/v1/overview", "/api/v1/runs", "/api/v1/users", "/api/v1/tokens", "/api/v1/config", "/metrics"] {
            assert_eq!(who.get(p).await.status, 403, "GET {p}");
        }
    }
    // The overview sends it to its clinic; the menu has no region-wide pages.
    let home = c.get("/").await;
    assert_eq!((home.status, home.headers.get("location").unwrap().to_str().unwrap()), (303, format!("/mottagning/{UNIT}").as_str()));
    let clinic = c.get(&format!("/mottagning/{UNIT}")).await.body;
    assert!(clinic.contains(&format!("{OWN_NAME} ({UNIT})")), "the unit by name");
    assert!(clinic.contains("Min mottagning") && !clinic.contains("href=\"/granskningslogg\"") && !clinic.contains("href=\"/installningar\""));
    assert!(clinic.contains(&seeded.patient_key[..12]) && clinic.contains(&format!("/overforingar/{}", seeded.dead_id)) && clinic.contains("Täckningsgrad"));
    assert!(clinic.contains("KOL_spirometri") && clinic.contains("12 av 21"), "the latest PVK month");
    assert_no_identity("clinic page", &clinic);
    assert!(c.get("/overforingar").await.body.contains(&format!("{OWN_NAME} ({UNIT})")));

    // Actions on the other unit's rows: refused or skipped, and nothing changes.
    let replay = c.post_json("/api/v1/replay", json!({"ids": [other.dead_id, seeded.dead_id], "reason": "rättat"}), true).await;
    assert_eq!(json_of(&replay)["requeued"], json!([seeded.dead_id]));
    assert_eq!(ts.store.record(other.dead_id).await.unwrap().unwrap().state, RecordState::Rejected);
    let page_replay = c.post_form_csrf("/misslyckade/forsok-igen", &[("id", &other.dead_id.to_string()), ("reason", "rättat")]).await;
    assert_eq!(page_replay.headers.get("location").unwrap(), "/misslyckade?meddelande=ej-koad");
    assert_eq!(c.post_json(&format!("/api/v1/records/{}/retract", other.delivered_id), json!({"reason": "avböjer"}), true).await.status, 404);
    assert_eq!(c.post_json(&format!("/api/v1/records/{}/lift-hold", other.delivered_id), json!({"reason": "häv"}), true).await.status, 404);
    assert_eq!(c.post_form_csrf(&format!("/overforingar/{}/aterkalla", other.delivered_id), &[("reason", "avböjer")]).await.status, 404);
    assert_eq!(c.post_form_csrf(&format!("/overforingar/{}/personuppgifter", other.delivered_id), &[("reason", "kontroll")]).await.status, 404);
    assert_eq!(c.post_json(&format!("/api/v1/quarantine/{}/resolve", seeded.quarantine_id), json!({"note": "klart"}), true).await.status, 404);
    assert_eq!(ts.store.record(other.delivered_id).await.unwrap().unwrap().state, RecordState::Delivered);
    assert_eq!(ts.store.quarantine(None, true, 10).await.unwrap().len(), 1);
    let other_item = format!("sar|{OTHER_UNIT}|{}|course|M3Pat", other.patient_key);
    assert_eq!(c.post_form_csrf("/att-komplettera/hanterad", &[("idem_key", other_item.as_str()), ("reason", "hanteras på annat sätt")]).await.status, 404);
    assert_eq!(json_of(&region.get("/api/v1/worklists").await).as_array().unwrap().len(), 2, "the other unit's item is still open");

    // The PDL view log records exactly the patients it was shown: its unit's, never the other's.
    let shown = c.post_form_csrf("/att-komplettera", &[("reason", "uppföljning på mottagningen")]).await;
    assert_eq!(shown.status, 200);
    assert!(shown.body.contains(PNR_DASH) || shown.body.contains(PNR));
    assert_nothing_of_the_other_unit("worklist identities (ft1)", &shown.body, &other);
    let list = c.get(&format!("/api/v1/pvk/patient-list{}&reason=kontroll", query_for("/api/v1/pvk/patient-list"))).await;
    assert_eq!(list.status, 200);
    let views_own = ts.store.audit_views_of_patient(&seeded.patient_key, 100).await.unwrap();
    assert!(views_own.iter().filter(|e| e.actor == "ft1").count() >= 3, "worklist (API and page) and the patient list: {views_own:?}");
    assert!(ts.store.audit_views_of_patient(&other.patient_key, 100).await.unwrap().is_empty(), "the other unit's patient was never shown to anyone");

    // An admin limits a user on the users page: set, kept when left empty, refused when not an
    // HSA id, and given the whole region back with "alla".
    let boss = Client::login(&srv.base, "boss", PASSWORD).await;
    let save = |fields: Vec<(&'static str, &'static str)>| {
        let boss = &boss;
        async move { boss.post_form_csrf("/anvandare", &fields).await }
    };
    assert_eq!(save(vec![("username", "ft2"), ("role", "läsare"), ("password", PASSWORD), ("units", OTHER_UNIT)]).await.status, 303);
    let units = |ts: &TestStore| {
        let store = ts.store.clone();
        async move { admin::store::user(&store, "ft2").await.unwrap().unwrap().units }
    };
    assert_eq!(units(&ts).await, vec![OTHER_UNIT.to_string()]);
    assert!(boss.get("/anvandare").await.body.contains(&format!("{OTHER_NAME} ({OTHER_UNIT})")));
    assert_eq!(save(vec![("username", "ft2"), ("role", "operatör"), ("units", "")]).await.status, 303);
    assert_eq!(units(&ts).await, vec![OTHER_UNIT.to_string()], "an empty field keeps the list");
    assert_eq!(save(vec![("username", "ft2"), ("role", "operatör"), ("units", "FT02")]).await.status, 400);
    assert_eq!(save(vec![("username", "ft2"), ("role", "operatör"), ("units", "alla")]).await.status, 303);
    assert!(units(&ts).await.is_empty());
});
// Every text Swedish (issue 19, item 6)

/// The visible text of a page: tags, the style sheet and the SVG's markup removed, the common
/// entities decoded, whitespace collapsed.
fn visible_text(html: &str) -> String {
    let html = regex::Regex::new(r"(?s)<style.*?</style>|<!--.*?-->").unwrap().replace_all(html, " ");
    let text = regex::Regex::new(r"(?s)<[^>]*>").unwrap().replace_all(&html, " ");
    let text = text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&#x27;", "'");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An admin opens every page of a demo-like run (sandbox region, every shipped connector
/// backfilled and delivered, bad journal items in quarantine); no page shows one of the code's
/// English messages (tests/admin_support/english_messages.txt, generated from the code by
/// scripts/english-messages) nor the words the issue named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_of_a_demo_like_run_is_swedish() {
    let d = demo_like(Backend::Sqlite, 40).await;
    let list = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/admin_support/english_messages.txt")).unwrap();
    let mut english: Vec<String> = list.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).map(|l| l.to_lowercase()).collect();
    assert!(english.len() > 100, "the list of English messages is read");
    for extra in ["partial month", "unverified", "code list", "small-cell", "suppressed", "not computable", "data up to"] {
        english.push(extra.into());
    }
    let c = Client::login(&d.srv.base, "boss", PASSWORD).await;
    let pages = every_page(&d.e.app.store).await;
    assert!(pages.iter().any(|p| p.starts_with("/pvk/patientlista")), "the run produced PVK results with a patient list: {pages:?}");
    let mut found = vec![];
    let mut csv_tables = 0;
    for path in &pages {
        let r = c.get_html(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        // Every table has its CSV download: the link, text/csv, a header row, the page's texts.
        let tables = r.body.matches("<table").count();
        assert_eq!(r.body.matches("Ladda ner tabellen som CSV").count(), tables, "{path}: one CSV link per table");
        for n in 1..=tables {
            let sep = if path.contains('?') { '&' } else { '?' };
            let csv = c.get(&format!("{path}{sep}format=csv&tabell={n}")).await;
            assert_eq!(csv.status, 200, "{path} table {n}");
            assert_eq!(csv.headers.get("content-type").unwrap(), "text/csv; charset=utf-8", "{path} table {n}");
            assert!(csv.headers.get("content-disposition").unwrap().to_str().unwrap().starts_with("attachment"), "{path} table {n}");
            let header = csv.body.trim_start_matches('\u{feff}').lines().next().unwrap_or("").to_string();
            assert!(!header.is_empty() && !header.contains('<'), "{path} table {n}: header row {header:?}");
            csv_tables += 1;
        }
        let text = visible_text(&r.body).to_lowercase();
        for e in &english {
            if text.contains(e.as_str()) {
                let at = text.find(e.as_str()).unwrap();
                let from = text[..at].char_indices().rev().nth(60).map(|x| x.0).unwrap_or(0);
                let ctx: String = text[from..].chars().take(160).collect();
                found.push(format!("{path}: {e:?} in …{ctx}…"));
            }
        }
    }
    assert!(found.is_empty(), "English on the pages:\n{}", found.join("\n"));
    assert!(csv_tables >= 10, "tables downloaded as CSV: {csv_tables}");
    // One status panel on the overview; the details per connector on Inställningar.
    let overview = c.get_html("/").await.body;
    assert_eq!(overview.matches("class=\"status\"").count(), 1, "one status panel");
    assert!(!overview.contains("class=\"warn\""), "no banners on the overview");
    let panel = visible_text(&overview);
    assert!(regex::Regex::new(r"\d+ av \d+ kodlistor verifierade").unwrap().is_match(&panel) && panel.contains("visa"), "{panel}");
    let settings = visible_text(&c.get_html("/installningar").await.body);
    assert!(settings.contains("Koppling primarvardskvalitet") && settings.contains("ej verifierad") && settings.contains("Indikatorer:"), "details grouped by connector");
    assert!(settings.contains("Koppling artrosregistret"), "every connector has its section");
    assert!(!visible_text(&c.get_html("/pvk").await.body).contains("kodlistor"), "the PVK page repeats no status");
    // The PVK page compares: the region's share and the spread across units beside the unit's.
    let pvk = c.get_html("/pvk").await.body;
    assert!(pvk.contains("Regionen") && pvk.contains("Spridning mellan enheter") && pvk.contains("enheter)"), "PVK compares with the region and the units");
    assert!(pvk.contains("romber för regionen"), "the chart names its shapes for readers without colour");
    let csv = c.get("/pvk?format=csv&tabell=1").await.body;
    assert!(csv.lines().next().unwrap().contains("Månad;Täljare;Nämnare;Andel;Regionen;Spridning"), "{}", csv.lines().next().unwrap());
    let sar = c.get_html("/artrosregistret/indikatorer").await.body;
    assert!(sar.contains("Spridning mellan mottagningar") && sar.contains("mottagningar)"), "SAR indicators compare with the region");
    assert!(sar.contains("utveckling per år") && sar.contains("romber för regionen"), "each unit's trend is drawn, region marked by shape");
}

// ---------------------------------------------------------------------------------------------
// Worklist: handled outside the system (issue 19, item 5)

both_backends!(a_worklist_item_marked_handled_leaves_the_list_until_its_data_changes, |ts: TestStore| async move {
    use registerbrygga::model::PatientId;
    use registerbrygga::store::{ChangeSet, WorklistChange};
    let (srv, seeded) = setup(&ts).await;
    let app = &srv.state.app;
    let key = format!("sar|{UNIT}|{}|knee|M3Pat", seeded.patient_key);
    let put = |missing: Vec<&str>| ChangeSet {
        worklist: vec![WorklistChange::Put {
            idem_key: key.clone(),
            connector: "sar-fysio".into(),
            unit: UNIT.into(),
            form: "M3Pat".into(),
            patient_key: seeded.patient_key.clone(),
            patient: PatientId::parse_national(PNR, chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()).unwrap(),
            missing: missing.into_iter().map(String::from).collect(),
            event_date: Some("2026-06-02".into()),
        }],
        ..Default::default()
    };
    // The same data as the seed's item (what the next run writes while nothing changed).
    app.store.apply(put(vec!["U3_PainNRS", "U3_Satisfaction"])).await.unwrap();

    let oper = Client::login(&srv.base, "oper", PASSWORD).await;
    let page = oper.get_html("/att-komplettera").await.body;
    assert!(page.contains("Markera som hanterad utanför systemet") && page.contains("uppföljning efter 3 månader"), "the open item offers the action and names the occasion");
    // A reason is required; a läsare may not.
    assert_eq!(oper.post_form_csrf("/att-komplettera/hanterad", &[("idem_key", key.as_str()), ("reason", "")]).await.status, 400);
    let lasa = Client::login(&srv.base, "lasa", PASSWORD).await;
    assert_eq!(lasa.post_form_csrf("/att-komplettera/hanterad", &[("idem_key", key.as_str()), ("reason", "Patienten avböjde uppföljning")]).await.status, 403);
    let why = "Patienten avböjde uppföljning per telefon";
    let r = oper.post_form_csrf("/att-komplettera/hanterad", &[("idem_key", key.as_str()), ("reason", why)]).await;
    assert_eq!(r.status, 303, "{}", r.body);

    // Off the open list, findable under Hanterade with who and why; audited as its own kind.
    assert!(app.store.worklist(None, None).await.unwrap().iter().all(|i| i.idem_key != key));
    assert!(!oper.get_html("/att-komplettera").await.body.contains("uppföljning efter 3 månader"));
    let handled = oper.get_html("/att-komplettera?visa=hanterade").await.body;
    assert!(handled.contains(why) && handled.contains("oper"), "the handled filter shows the item with who and why");
    let ev = ts.store.audit_search(&AuditQuery { kind: Some("worklist.handled".into()), ..Default::default() }).await.unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].actor.as_str(), ev[0].subject.as_str(), ev[0].detail["reason"].as_str()), ("oper", key.as_str(), Some(why)));
    assert!(!oper.get_html("/granskningslogg").await.body.is_empty());

    // The next run with unchanged data keeps the mark; changed data brings the item back.
    app.store.apply(put(vec!["U3_PainNRS", "U3_Satisfaction"])).await.unwrap();
    assert!(app.store.worklist(None, None).await.unwrap().iter().all(|i| i.idem_key != key), "unchanged data: stays handled");
    assert_eq!(app.store.worklist_items(None, None, true).await.unwrap().len(), 1);
    app.store.apply(put(vec!["U3_PainNRS"])).await.unwrap();
    let open = app.store.worklist(None, None).await.unwrap();
    assert!(open.iter().any(|i| i.idem_key == key && i.handled.is_none()), "changed data: back on the open list");
    // Marking an item that is not open says so.
    let again = oper.post_form_csrf("/att-komplettera/hanterad", &[("idem_key", "sar|nothing"), ("reason", why)]).await;
    assert_eq!(again.status, 303);
    assert!(again.headers.get("location").unwrap().to_str().unwrap().contains("ej-hanterad"));
});
