//! Granskningslogg.

use super::*;

// ---------------------------------------------------------------------------------------------
// Granskningslogg

#[derive(Deserialize, Default)]
pub struct AuditPageQuery {
    pub kind: Option<String>,
    pub subject: Option<String>,
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<String>,
    pub verifiera: Option<String>,
}

struct AuditFilterView {
    kind: String,
    subject: String,
    actor: String,
    correlation_id: String,
    from: String,
    to: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditTpl {
    l: Layout,
    q: AuditFilterView,
    kinds: Vec<(String, String)>,
    events: Vec<EventView>,
    limit: i64,
    verify: Option<(bool, String)>,
}

pub async fn audit(State(state): State<AdminState>, Extension(p): Extension<Principal>, Query(q): Query<AuditPageQuery>) -> PageResult {
    // The region's whole log: not for a unit-limited user.
    p.require_region()?;
    let params = api::AuditParams {
        kind: q.kind.clone(),
        subject: q.subject.clone(),
        actor: q.actor.clone(),
        correlation_id: q.correlation_id.clone(),
        from: q.from.clone(),
        to: q.to.clone(),
        limit: nz(&q.limit).and_then(|l| l.parse().ok()),
    };
    let aq = params.to_query()?;
    let events = api::audit_events(&state.app.store, &aq).await?;
    let verify = if nz(&q.verifiera).is_some() {
        let r = state.app.store.audit_verify().await?;
        Some(if r.ok {
            (true, format!("Kedjan är hel: {} händelser kontrollerade.", r.events_checked))
        } else {
            (false, format!("Kedjan är bruten vid händelse {}: {}", r.first_bad_seq.unwrap_or(0), r.problem.unwrap_or_default()))
        })
    } else {
        None
    };
    render(AuditTpl {
        l: layout(&p, "/granskningslogg", "Granskningslogg", None),
        q: AuditFilterView {
            kind: nz(&q.kind).unwrap_or_default(),
            subject: nz(&q.subject).unwrap_or_default(),
            actor: nz(&q.actor).unwrap_or_default(),
            correlation_id: nz(&q.correlation_id).unwrap_or_default(),
            from: nz(&q.from).unwrap_or_default(),
            to: nz(&q.to).unwrap_or_default(),
        },
        kinds: kind_options(),
        events: events.iter().map(event_view).collect(),
        limit: aq.limit.unwrap_or(200),
        verify,
    })
}
