//! The administrator's part of the API: tenants (listed, created or replaced, removed) and nodes. Only the
//! admin key may call these.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use deskbroker_shared::cluster::{ControlEvent, NodeRecord, TunnelKind};
use deskbroker_shared::ids::{TenantId, TokenDigest};

use super::error::ApiError;
use super::extract::{Admin, ApiJson, ApiPath};
use super::sessions::close;
use super::state::Api;
use crate::tenants::{Limits, Policy, Tenant};

/// A tenant as the API shows it: never its key, not even hashed.
#[derive(Debug, Serialize)]
pub struct TenantView {
    pub id: TenantId,
    pub policy: Policy,
    pub limits: Limits,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub guacd_params: BTreeMap<String, String>,
}

impl From<Tenant> for TenantView {
    fn from(tenant: Tenant) -> Self {
        Self {
            id: tenant.id,
            policy: tenant.policy,
            limits: tenant.limits,
            guacd_params: tenant.guacd_params,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// The tenant's API key; only its SHA-256 is kept.
    pub key: String,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub limits: Limits,
    /// guacd parameters set on every guacd session of the tenant, over what its requests ask: the only
    /// way to set recording, drives and paths on guacd's file system.
    #[serde(default)]
    pub guacd_params: BTreeMap<String, String>,
}

pub async fn tenants(State(api): State<Api>, _: Admin) -> Result<Json<Vec<TenantView>>, ApiError> {
    let tenants = api.registry().tenants().await?;
    Ok(Json(tenants.into_iter().map(TenantView::from).collect()))
}

pub async fn put_tenant(
    State(api): State<Api>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(spec): ApiJson<TenantSpec>,
) -> Result<Json<TenantView>, ApiError> {
    if spec.key.len() < 16 {
        return Err(ApiError::BadRequest(
            "a tenant key needs at least 16 characters".into(),
        ));
    }
    let tenant = Tenant {
        id: TenantId::new(id),
        key_sha256: TokenDigest::of(&spec.key),
        policy: spec.policy,
        limits: spec.limits,
        guacd_params: spec.guacd_params,
    };
    api.registry().put_tenant(&tenant).await?;
    tracing::info!(target: "audit", event = "tenant_changed", tenant = %tenant.id, by = "admin");
    Ok(Json(tenant.into()))
}

/// Removes a tenant and closes all its sessions: their tokens stop working at once, everywhere.
pub async fn delete_tenant(
    State(api): State<Api>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = TenantId::new(id);
    if !api.registry().remove_tenant(&id).await? {
        return Err(ApiError::NotFound("tenant"));
    }
    // Every node closes the tenant's tunnels at once, whatever state its sessions are in.
    let event = ControlEvent::TenantClosed { tenant: id.clone() };
    api.registry().publish(&event).await?;
    let sessions = api.registry().sessions_of(&id).await?;
    for session in &sessions {
        close(&api, &session.id).await?;
    }
    tracing::info!(
        target: "audit",
        event = "tenant_deleted",
        tenant = %id,
        by = "admin",
        sessions = sessions.len(),
    );
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub id: String,
    pub peer_url: String,
    pub alive: bool,
    pub lease_expires_at: String,
    pub tunnels: Vec<NodeTunnel>,
}

#[derive(Debug, Serialize)]
pub struct NodeTunnel {
    pub id: String,
    pub session: String,
    pub tenant: String,
    pub kind: TunnelKind,
}

pub async fn nodes(State(api): State<Api>, _: Admin) -> Result<Json<Vec<NodeView>>, ApiError> {
    let now = std::time::SystemTime::now();
    let mut views = Vec::new();
    for node in api.registry().nodes().await? {
        let NodeRecord {
            id,
            peer_url,
            expires_ms,
            ..
        } = &node;
        let tunnels = api.registry().tunnels_of(id).await?;
        views.push(NodeView {
            id: id.to_string(),
            peer_url: peer_url.clone(),
            alive: node.is_alive(now),
            lease_expires_at: humantime::format_rfc3339_millis(
                deskbroker_shared::time::from_unix_ms(*expires_ms),
            )
            .to_string(),
            tunnels: tunnels
                .into_iter()
                .filter(|t| t.is_alive(Some(&node), now))
                .map(|t| NodeTunnel {
                    id: t.id.to_string(),
                    session: t.session.to_string(),
                    tenant: t.tenant.to_string(),
                    kind: t.kind,
                })
                .collect(),
        });
    }
    views.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(views))
}
