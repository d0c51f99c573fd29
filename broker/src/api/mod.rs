//! The control plane's HTTP API, under `/api/v1`: what the platform's backend calls to create, list, share
//! and kill sessions, and what an administrator calls to manage tenants and see nodes. JSON in and out;
//! errors as `{"code", "message"}`; the OpenAPI document is `broker/openapi.json`, served at
//! `/api/v1/openapi.json`.
//!
//! Callers authenticate with `Authorization: Bearer <key>`: the admin key, or a tenant's API key. A tenant
//! sees and touches only its own sessions; another tenant's session is "not found", never "forbidden".

mod admin;
mod error;
mod sessions;
pub mod traffic;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::routing::get;
use subtle::ConstantTimeEq;

use deskbroker_shared::ids::TokenDigest;
use deskbroker_shared::session::HostPort;

pub use error::ApiError;

use crate::Registry;
use crate::tenants::Tenant;

/// The OpenAPI document, kept in the repository beside the code it describes.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// What the API needs besides the registry.
#[derive(Clone, Default)]
pub struct ApiConfig {
    /// Where tunnels' byte counts come from; without one the live view shows none.
    pub traffic: Option<Arc<dyn traffic::TrafficSource>>,
    /// SHA-256 of the admin key; without one, no caller is an administrator.
    pub admin_key: Option<TokenDigest>,
    /// Named groups of guacd addresses that sessions may use; a session names a pool or one of its members.
    pub guacd_pools: BTreeMap<String, Vec<HostPort>>,
}

#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<dyn Registry>,
    config: ApiConfig,
    /// Round-robin position for choosing a pool member.
    next_guacd: AtomicUsize,
}

/// Who is calling.
pub enum Caller {
    Admin,
    Tenant(Tenant),
}

impl Api {
    pub fn new(registry: Arc<dyn Registry>, config: ApiConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                config,
                next_guacd: AtomicUsize::new(0),
            }),
        }
    }

    fn registry(&self) -> &dyn Registry {
        self.inner.registry.as_ref()
    }

    /// Authenticates the caller by its bearer key.
    async fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let key = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|key| !key.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let digest = TokenDigest::of(key);
        if let Some(admin) = &self.inner.config.admin_key {
            let bytes = |d: &TokenDigest| d.to_hex().into_bytes();
            if bool::from(bytes(admin).ct_eq(&bytes(&digest))) {
                return Ok(Caller::Admin);
            }
        }
        match self.registry().tenant_by_key(&digest).await? {
            Some(tenant) => Ok(Caller::Tenant(tenant)),
            None => Err(ApiError::Unauthorized),
        }
    }

    /// A guacd for a session: a member of the named pool (round robin), or an address some pool lists.
    fn guacd(&self, name: &str) -> Result<HostPort, ApiError> {
        let pools = &self.inner.config.guacd_pools;
        if let Some(pool) = pools.get(name).filter(|pool| !pool.is_empty()) {
            let next = self.inner.next_guacd.fetch_add(1, Ordering::Relaxed);
            return Ok(pool[next % pool.len()].clone());
        }
        let addr = HostPort::parse(name)
            .map_err(|_| ApiError::BadRequest(format!("unknown guacd {name:?}")))?;
        match pools.values().any(|pool| pool.contains(&addr)) {
            true => Ok(addr),
            false => Err(ApiError::BadRequest(format!("unknown guacd {name:?}"))),
        }
    }
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([("content-type", "application/json")], OPENAPI) }),
        )
        .route(
            "/api/v1/sessions",
            get(sessions::list).post(sessions::create),
        )
        .route(
            "/api/v1/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route(
            "/api/v1/sessions/{id}/shares",
            axum::routing::post(sessions::share),
        )
        .route("/api/v1/tenants", get(admin::tenants))
        .route(
            "/api/v1/tenants/{id}",
            axum::routing::put(admin::put_tenant).delete(admin::delete_tenant),
        )
        .route("/api/v1/nodes", get(admin::nodes))
        .with_state(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for path in [
            "/api/v1/openapi.json",
            "/api/v1/sessions",
            "/api/v1/sessions/{id}",
            "/api/v1/sessions/{id}/shares",
            "/api/v1/tenants",
            "/api/v1/tenants/{id}",
            "/api/v1/nodes",
        ] {
            assert!(paths.contains_key(path), "{path} is undocumented");
        }
        assert_eq!(
            paths.len(),
            7,
            "a documented path the router does not serve"
        );
    }
}
