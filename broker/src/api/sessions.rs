//! `/api/v1/sessions`: create a session (the policy is checked here), list and read sessions with their
//! open tunnels, and kill one (its token is revoked and every node closes its tunnels).

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use deskbroker_shared::cluster::{ControlEvent, NodeRecord, TunnelKind, TunnelRecord};
use deskbroker_shared::ids::{NodeId, SessionId, TenantId, TunnelId};
use deskbroker_shared::peer::TrafficReport;
use deskbroker_shared::session::{HostPort, Session, Target};
use deskbroker_shared::time::{from_unix_ms, unix_ms};

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use super::state::{Api, Caller};
use super::traffic;
use crate::defaults::MAX_SESSION_RECORD;
use crate::registry::session_record_len;
use crate::tenants::Tenant;

/// What to connect to, as the backend describes it.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TargetSpec {
    /// A VNC server, relayed as it is (`/websockify`).
    Vnc { host: String, port: u16 },
    /// A desktop reached through guacd: `guacd` names a pool, or an address a pool lists.
    Guacd {
        protocol: String,
        guacd: String,
        #[serde(default)]
        params: BTreeMap<String, String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub target: TargetSpec,
    /// `30m`, `8h`; at most the tenant's limit, which is also the default.
    pub lifetime: Option<String>,
    /// `15m`, `1h`: how long its tunnels may go without input; at least 10s, at most the tenant's
    /// `max_idle_timeout`, and the tenant's `idle_timeout` when not given (see `tenants::idle_timeout`).
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub exclusive: bool,
    #[serde(default)]
    pub read_only: bool,
    /// Only for the admin key: the tenant the session belongs to.
    pub tenant: Option<TenantId>,
}

/// A session as the API shows it. Connection parameters are never shown: they may hold passwords.
#[derive(Debug, Serialize)]
pub struct SessionView {
    pub id: SessionId,
    pub tenant: TenantId,
    pub target: TargetView,
    pub expires_at: Option<String>,
    /// How long its tunnels may go without input (`15m`); absent when never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    pub exclusive: bool,
    pub read_only: bool,
    /// For a share: the session it joins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joins: Option<SessionId>,
    /// Only in the answer to its creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Only in the answer to its creation, and only when true: the lifetime asked for was cut to
    /// `expires_at` (the tenant's `max_lifetime`, or the session a share joins).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub lifetime_capped: bool,
    /// Only in the answer to its creation, and only when true: the idle timeout asked for was cut to
    /// `idle_timeout` (the tenant's `max_idle_timeout`, or the session a share joins).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub idle_timeout_capped: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub urls: Option<Urls>,
    pub tunnels: Vec<TunnelView>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TargetView {
    Vnc {
        host: String,
        port: u16,
    },
    Guacd {
        protocol: String,
        guacd: String,
        host: Option<String>,
        port: Option<String>,
    },
}

/// Where a client opens the session, relative to any edge.
#[derive(Debug, Serialize)]
pub struct Urls {
    pub websockify: String,
    pub websocket_tunnel: String,
    pub http_tunnel: String,
}

#[derive(Debug, Serialize)]
pub struct TunnelView {
    pub id: String,
    pub node: String,
    pub kind: TunnelKind,
    pub since: String,
    /// Whether the byte counts are known.
    pub traffic: Traffic,
    /// Bytes from the browser to the desktop, when the owning node answered.
    pub bytes_in: Option<u64>,
    /// Bytes from the desktop to the browser, when the owning node answered.
    pub bytes_out: Option<u64>,
}

/// Whether a tunnel's byte counts are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Traffic {
    /// `bytes_in` and `bytes_out` are the owning node's counts.
    Counted,
    /// The owning node did not answer in time (it hangs, or cannot be reached), or had just closed the
    /// tunnel: both counts are null.
    Unknown,
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

impl SessionView {
    /// A session with its `tunnels` and what each has moved, by `counts`.
    fn of(
        session: &Session,
        tunnels: &[TunnelRecord],
        counts: &HashMap<TunnelId, TrafficReport>,
    ) -> Self {
        let target = match &session.target {
            Target::Vnc { addr } => TargetView::Vnc {
                host: addr.host.clone(),
                port: addr.port,
            },
            Target::Guacd {
                addr,
                protocol,
                params,
            } => TargetView::Guacd {
                protocol: protocol.clone(),
                guacd: addr.to_string(),
                host: params.get("hostname").cloned(),
                port: params.get("port").cloned(),
            },
        };
        let tunnels = tunnels
            .iter()
            .map(|t| {
                let count = counts.get(&t.id);
                TunnelView {
                    id: t.id.to_string(),
                    node: t.owner.to_string(),
                    kind: t.kind,
                    since: rfc3339(from_unix_ms(t.created_ms)),
                    traffic: match count {
                        Some(_) => Traffic::Counted,
                        None => Traffic::Unknown,
                    },
                    bytes_in: count.map(|c| c.to_upstream),
                    bytes_out: count.map(|c| c.from_upstream),
                }
            })
            .collect();
        Self {
            id: session.id.clone(),
            tenant: session.tenant.clone(),
            target,
            expires_at: session.expires.map(rfc3339),
            idle_timeout: session
                .idle_timeout
                .map(|idle| humantime::format_duration(idle).to_string()),
            exclusive: session.exclusive,
            read_only: session.read_only,
            joins: session.join.clone(),
            token: None,
            lifetime_capped: false,
            idle_timeout_capped: false,
            urls: None,
            tunnels,
        }
    }
}

/// The tenant a request acts for: its own, or (admin only) the one it names.
async fn acting_tenant(
    api: &Api,
    caller: Caller,
    named: Option<TenantId>,
) -> Result<Tenant, ApiError> {
    match (caller, named) {
        (Caller::Tenant(tenant), None) => Ok(*tenant),
        (Caller::Tenant(tenant), Some(named)) if named == tenant.id => Ok(*tenant),
        (Caller::Tenant(_), Some(_)) => Err(ApiError::Forbidden),
        (Caller::Admin, Some(named)) => api
            .registry()
            .tenant(&named)
            .await?
            .ok_or(ApiError::NotFound("tenant")),
        (Caller::Admin, None) => Err(ApiError::BadRequest(
            "the admin key must name a tenant".into(),
        )),
    }
}

pub async fn create(
    State(api): State<Api>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateSession>,
) -> Result<Response, ApiError> {
    let by = caller.name();
    let tenant = acting_tenant(&api, caller, request.tenant).await?;
    let target = match request.target {
        TargetSpec::Vnc { host, port } => Target::Vnc {
            addr: HostPort { host, port },
        },
        TargetSpec::Guacd {
            protocol,
            guacd,
            params,
        } => Target::Guacd {
            addr: api.guacd(&guacd)?,
            protocol,
            params,
        },
    };
    tenant.policy.check(&target)?;
    let target = with_operator_params(target, &tenant);
    let now = SystemTime::now();
    let asked = request.lifetime.as_deref();
    let expires = tenant.limits.expiry(now, asked)?;
    let idle = tenant
        .limits
        .session_idle_timeout(request.idle_timeout.as_deref())?;
    let capped = Capped {
        lifetime: capped(asked, now, expires),
        idle_timeout: idle.capped,
    };
    let session = Session {
        expires: Some(expires),
        exclusive: request.exclusive,
        read_only: request.read_only,
        idle_timeout: idle.idle_timeout,
        ..Session::new(SessionId::random(), tenant.id.clone(), target)
    };
    created(&api, session, capped, &by).await
}

/// What the answer to a creation says was cut short of what was asked.
#[derive(Debug, Clone, Copy)]
struct Capped {
    lifetime: bool,
    idle_timeout: bool,
}

/// Whether a session got a shorter life than it asked for (the tenant's limit, or the session a share
/// joins, capped it): the answer says so.
fn capped(asked: Option<&str>, now: SystemTime, expires: SystemTime) -> bool {
    let asked = asked.and_then(|text| humantime::parse_duration(text).ok());
    asked.is_some_and(|asked| now.checked_add(asked).is_none_or(|until| until > expires))
}

/// The target with the operator's guacd parameters for the tenant laid over what its request asked.
fn with_operator_params(target: Target, tenant: &Tenant) -> Target {
    match target {
        Target::Guacd {
            addr,
            protocol,
            mut params,
        } => {
            params.extend(tenant.guacd_params.clone());
            Target::Guacd {
                addr,
                protocol,
                params,
            }
        }
        vnc => vnc,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateShare {
    /// Watch only (the default), or share control too.
    pub read_only: Option<bool>,
    /// At most what is left of the shared session's life and the tenant's `max_lifetime`; the shorter of
    /// the two is the default.
    pub lifetime: Option<String>,
    /// At most the shared session's idle timeout, which is the default (and the tenant's
    /// `max_idle_timeout`).
    pub idle_timeout: Option<String>,
}

/// `POST /api/v1/sessions/{id}/shares`: a second token that joins the running session, for guacd through
/// guacd's own join of the connection, for raw VNC as a second, shared, viewer.
pub async fn share(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<CreateShare>,
) -> Result<Response, ApiError> {
    let parent = visible(&api, &caller, &SessionId::new(id)).await?;
    let by = caller.name();
    let limits = match caller {
        Caller::Tenant(tenant) => tenant.limits,
        // The admin shares under the session's tenant's limits; a session file's tenant may have none.
        Caller::Admin => api
            .registry()
            .tenant(&parent.tenant)
            .await?
            .map(|tenant| tenant.limits)
            .unwrap_or_default(),
    };
    // A share is a session of its own, under the same rules, and never outlives the one it joins.
    let now = SystemTime::now();
    let asked = request.lifetime.as_deref();
    let own = limits.expiry(now, asked)?;
    let expires = parent.expires.map_or(own, |parent| parent.min(own));
    let idle = limits.share_idle_timeout(request.idle_timeout.as_deref(), parent.idle_timeout)?;
    let capped = Capped {
        lifetime: capped(asked, now, expires),
        idle_timeout: idle.capped,
    };
    let session = Session {
        expires: Some(expires),
        read_only: request.read_only.unwrap_or(true),
        join: Some(parent.id.clone()),
        idle_timeout: idle.idle_timeout,
        ..Session::new(
            SessionId::random(),
            parent.tenant.clone(),
            parent.target.clone(),
        )
    };
    created(&api, session, capped, &by).await
}

/// Stores a new session under a fresh token and answers with the token and the URLs to use it; a session
/// whose record would be over [`MAX_SESSION_RECORD`] is refused, and nothing is stored.
async fn created(
    api: &Api,
    session: Session,
    capped: Capped,
    by: &str,
) -> Result<Response, ApiError> {
    let size = session_record_len(&session);
    if size > MAX_SESSION_RECORD {
        return Err(ApiError::SessionTooLarge { size });
    }
    let token = api.token_for(&session);
    api.registry().put_session(&token, &session).await?;
    tracing::info!(
        target: "audit",
        event = match session.join {
            Some(_) => "session_shared",
            None => "session_created",
        },
        session = %session.id,
        tenant = %session.tenant,
        by,
        kind = session.target.kind(),
        joins = session.join.as_ref().map(tracing::field::display),
        read_only = session.read_only,
        exclusive = session.exclusive,
        expires_at = session.expires.map(|at| tracing::field::display(rfc3339(at))),
        idle_timeout_s = session.idle_timeout.map(|idle| idle.as_secs()),
    );
    let mut view = SessionView::of(&session, &[], &HashMap::new());
    let encoded = form_urlencoded::byte_serialize(token.expose().as_bytes()).collect::<String>();
    view.urls = Some(Urls {
        websockify: format!("/websockify?token={encoded}"),
        websocket_tunnel: format!("/websocket-tunnel?token={encoded}"),
        http_tunnel: "/tunnel".into(),
    });
    view.token = Some(token.expose().to_owned());
    view.lifetime_capped = capped.lifetime;
    view.idle_timeout_capped = capped.idle_timeout;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// A session the caller may see, or `NotFound` (also for another tenant's session).
async fn visible(api: &Api, caller: &Caller, id: &SessionId) -> Result<Session, ApiError> {
    let (_, session) = api
        .registry()
        .session_by_id(id)
        .await?
        .ok_or(ApiError::NotFound("session"))?;
    match caller {
        Caller::Tenant(tenant) if tenant.id != session.tenant => Err(ApiError::NotFound("session")),
        _ => Ok(session),
    }
}

pub async fn list(
    State(api): State<Api>,
    caller: Caller,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let tenants = match caller {
        Caller::Tenant(tenant) => vec![tenant.id],
        Caller::Admin => api
            .registry()
            .tenants()
            .await?
            .into_iter()
            .map(|t| t.id)
            .collect(),
    };
    let nodes = nodes(&api).await?;
    let mut sessions = Vec::new();
    for tenant in tenants {
        for session in api.registry().sessions_of(&tenant).await? {
            let tunnels = live_tunnels(&api, &session, &nodes).await?;
            sessions.push((session, tunnels));
        }
    }
    let tunnels: Vec<&TunnelRecord> = sessions.iter().flat_map(|(_, t)| t).collect();
    let counts = counts(&api, &nodes, &tunnels).await;
    let views = sessions.iter();
    let views = views.map(|(session, tunnels)| SessionView::of(session, tunnels, &counts));
    Ok(Json(views.collect()))
}

pub async fn get(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SessionView>, ApiError> {
    let session = visible(&api, &caller, &SessionId::new(id)).await?;
    let nodes = nodes(&api).await?;
    let tunnels = live_tunnels(&api, &session, &nodes).await?;
    let counts = counts(&api, &nodes, &tunnels.iter().collect::<Vec<_>>()).await;
    Ok(Json(SessionView::of(&session, &tunnels, &counts)))
}

async fn nodes(api: &Api) -> Result<HashMap<NodeId, NodeRecord>, ApiError> {
    Ok(api
        .registry()
        .nodes()
        .await?
        .into_iter()
        .map(|node| (node.id.clone(), node))
        .collect())
}

/// A session's live tunnels: those whose owners' leases run.
async fn live_tunnels(
    api: &Api,
    session: &Session,
    nodes: &HashMap<NodeId, NodeRecord>,
) -> Result<Vec<TunnelRecord>, ApiError> {
    let now = SystemTime::now();
    let tunnels = api.registry().session_tunnels(&session.id).await?;
    Ok(tunnels
        .into_iter()
        .filter(|t| t.is_alive(nodes.get(&t.owner), now))
        .collect())
}

/// What `tunnels` have moved, asked of every owner at once (see [`traffic::counts`]); none without a source.
async fn counts(
    api: &Api,
    nodes: &HashMap<NodeId, NodeRecord>,
    tunnels: &[&TunnelRecord],
) -> HashMap<TunnelId, TrafficReport> {
    match api.traffic() {
        Some(source) => traffic::counts(source, nodes, tunnels).await,
        None => HashMap::new(),
    }
}
pub async fn delete(
    State(api): State<Api>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let session = visible(&api, &caller, &SessionId::new(id)).await?;
    close(&api, &session.id).await?;
    tracing::info!(
        target: "audit",
        event = "session_deleted",
        session = %session.id,
        tenant = %session.tenant,
        by = caller.name(),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes a session's token and tells every node to close its tunnels.
pub async fn close(api: &Api, id: &SessionId) -> Result<(), ApiError> {
    // A sealed token stays valid until its expiry unless the nodes remember its revocation that long.
    let until = api.registry().session_by_id(id).await?;
    let until_ms = until.and_then(|(_, session)| session.expires).map(unix_ms);
    api.registry().revoke(id).await?;
    api.registry()
        .publish(&ControlEvent::SessionClosed {
            session: id.clone(),
            until_ms,
        })
        .await?;
    tracing::info!(session = %id, "session closed");
    Ok(())
}
