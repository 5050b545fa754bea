//! Användare och API-nycklar, Inställningar (admin).

use super::*;

// ---------------------------------------------------------------------------------------------
// Användare och API-nycklar (admin)

struct UserView {
    username: String,
    role: &'static str,
    patient_data: bool,
    disabled: bool,
    created: String,
    /// "hela regionen", or the units by name.
    units: String,
}

struct TokenView {
    id: i64,
    name: String,
    username: String,
    created_by: String,
    created: String,
    last_used: String,
    revoked: bool,
    expires: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersTpl {
    l: Layout,
    users: Vec<UserView>,
    tokens: Vec<TokenView>,
    new_token: Option<String>,
}

async fn users_page(state: &AdminState, p: &Principal, msg: Option<String>, new_token: Option<String>) -> PageResult {
    p.require(Role::Admin)?;
    p.require_region()?;
    let names = unit_names(state);
    let users = db::users(&state.app.store)
        .await?
        .into_iter()
        .map(|u| UserView {
            units: if u.units.is_empty() { "hela regionen".into() } else { u.units.iter().map(|h| names.label(h)).collect::<Vec<_>>().join(", ") },
            username: u.username,
            role: u.role.as_str(),
            patient_data: u.patient_data,
            disabled: u.disabled,
            created: t(u.created),
        })
        .collect();
    let tokens = db::tokens(&state.app.store)
        .await?
        .into_iter()
        .map(|k| TokenView {
            id: k.id,
            name: k.name,
            username: k.username,
            created_by: k.created_by,
            created: t(k.created),
            last_used: t_opt(k.last_used),
            revoked: k.revoked.is_some(),
            expires: t(k.expires),
        })
        .collect();
    render(UsersTpl { l: layout(p, "/anvandare", "Användare och API-nycklar", flash(&msg)), users, tokens, new_token })
}

pub async fn users(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(m): Query<MsgQuery>) -> PageResult {
    users_page(&state, &p, m.meddelande, None).await
}

#[derive(Deserialize)]
pub struct UserForm {
    pub csrf: Option<String>,
    pub username: String,
    pub role: String,
    pub patient_data: Option<String>,
    pub disabled: Option<String>,
    pub password: Option<String>,
    /// HSA ids, comma-separated; empty keeps the current list, "alla" = the whole region.
    #[serde(default)]
    pub units: Option<String>,
}

pub async fn user_save(State(state): State<AdminState>, Extension(p): Extension<Principal>, Form(f): Form<UserForm>) -> PageResult {
    p.require(Role::Admin)?;
    p.require_region()?;
    p.check_csrf(f.csrf.as_deref())?;
    let username = f.username.trim().to_string();
    auth::check_username(&username).map_err(|_| Fail::BadRequest("Ogiltigt användarnamn: 1–64 bokstäver, siffror eller . - _ @.".into()))?;
    let role = Role::parse(&f.role).ok_or_else(|| Fail::BadRequest("Okänd roll.".into()))?;
    let patient_data = f.patient_data.is_some();
    let disabled = f.disabled.is_some();
    if username == p.username && (disabled || role != Role::Admin) {
        return Err(Fail::BadRequest("Du kan inte stänga av dig själv eller ta bort din egen administratörsroll.".into()).into());
    }
    let password = nz(&f.password);
    let hash = match &password {
        Some(pw) => {
            auth::check_password_strength(pw).map_err(|_| Fail::BadRequest("Lösenordet måste ha minst 10 tecken.".into()))?;
            Some(auth::hash_password(pw.clone()).await?)
        }
        None => None,
    };
    // Units: left empty, an existing user keeps its list; "alla" gives the whole region back.
    let units = match nz(&f.units) {
        None => None,
        Some(s) if s.eq_ignore_ascii_case("alla") => Some(vec![]),
        Some(s) => {
            let list = db::parse_units(&s);
            if let Some(bad) = list.iter().find(|u| crate::model::HsaId::parse(u).is_err()) {
                return Err(Fail::BadRequest(format!("{bad:?} är inget HSA-id.")).into());
            }
            Some(list)
        }
    };
    if username == p.username && units.as_ref().is_some_and(|l| !l.is_empty()) {
        return Err(Fail::BadRequest("Du kan inte begränsa dig själv till enheter.".into()).into());
    }
    let exists = db::user(&state.app.store, &username).await?.is_some();
    if !exists && hash.is_none() {
        return Err(Fail::BadRequest("En ny användare behöver ett lösenord.".into()).into());
    }
    db::put_user(&state.app.store, &username, hash.as_deref(), role, patient_data, disabled).await?;
    if let Some(list) = &units {
        db::set_user_units(&state.app.store, &username, list).await?;
    }
    state
        .app
        .store
        .audit(vec![NewAuditEvent::by(
            &p.username,
            kind::USER_CHANGED,
            &correlation_id(),
            format!("user:{username}"),
            serde_json::json!({"action": if exists { "updated" } else { "created" }, "role": role.as_str(), "patient_data": patient_data, "disabled": disabled, "password_set": password.is_some(), "units": units, "via": "page"}),
        )])
        .await?;
    Ok(see_other("/anvandare?meddelande=sparad"))
}

#[derive(Deserialize)]
pub struct TokenForm {
    pub csrf: Option<String>,
    pub name: String,
    /// Must be the signed-in user (tokens act only for their own user).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub days: Option<u32>,
}

pub async fn token_create(State(state): State<AdminState>, Extension(p): Extension<Principal>, Form(f): Form<TokenForm>) -> PageResult {
    p.require(Role::Admin)?;
    p.require_region()?;
    p.check_csrf(f.csrf.as_deref())?;
    let (_, token) = auth::create_api_token(&state, &p, &f.name, f.username.as_deref(), f.days).await?;
    // Rendered directly (not redirected) so the token is shown once and never lands in a URL.
    users_page(&state, &p, None, Some(token)).await
}

pub async fn token_revoke(State(state): State<AdminState>, Extension(p): Extension<Principal>, Path(id): Path<i64>, Form(f): Form<auth::CsrfForm>) -> PageResult {
    p.require(Role::Admin)?;
    p.require_region()?;
    p.check_csrf(f.csrf.as_deref())?;
    if !auth::revoke_api_token(&state, &p, id).await? {
        return Err(Fail::NotFound.into());
    }
    Ok(see_other("/anvandare?meddelande=nyckel-aterkallad"))
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsTpl {
    l: Layout,
    /// The running configuration as JSON, for admins only.
    json: Option<String>,
    status: Vec<crate::admin::status::ConnectorStatus>,
    messages: Vec<(String, String)>,
}

/// Where a message belongs, in Swedish.
fn area_sv(area: &str) -> String {
    match area {
        "pvk" => "Primärvårdskvalitet".into(),
        "sar" => "Svenska Artrosregistret".into(),
        "config" => "Konfiguration".into(),
        other => other.to_string(),
    }
}

/// The configuration's status (every role: the overview's status panel links here) and, for
/// admins, the running configuration.
pub async fn settings(State(state): State<AdminState>, Extension(p): Extension<Principal>) -> PageResult {
    // Every connector of the region: not for a unit-limited user.
    p.require_region()?;
    let json = if p.can(Role::Admin) { Some(serde_json::to_string_pretty(&api::config_view(&state)).map_err(|e| Fail::Internal(e.into()))?) } else { None };
    let messages = (state.warnings)().into_iter().map(|w| (area_sv(&w.area), w.text)).collect();
    render(SettingsTpl { l: layout(&p, "/installningar", "Inställningar", None), json, status: (state.status)(), messages })
}
