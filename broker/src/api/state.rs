//! What every handler of the API shares: the registry, the configuration, and who is calling.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

use deskbroker_shared::ids::{SessionToken, TokenDigest};
use deskbroker_shared::seal::Sealer;
use deskbroker_shared::session::{HostPort, Session};

use super::error::ApiError;
use super::traffic::TrafficSource;
use crate::registry::Registry;
use crate::tenants::Tenant;

/// What the API needs besides the registry.
#[derive(Clone, Default)]
pub struct ApiConfig {
    /// Where tunnels' byte counts come from; without one the live view shows none.
    pub traffic: Option<Arc<dyn TrafficSource>>,
    /// SHA-256 of the admin key; without one, no caller is an administrator.
    pub admin_key: Option<TokenDigest>,
    /// Named groups of guacd addresses that sessions may use; a session names a pool or one of its members.
    pub guacd_pools: BTreeMap<String, Vec<HostPort>>,
    /// What seals the sessions' tokens, so that they outlive the registry's data; without it tokens are
    /// random, and live only as long as their record.
    pub sealer: Option<Sealer>,
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

/// Who is calling. The tenant is boxed: its record is some hundreds of bytes, the admin none.
pub enum Caller {
    Admin,
    Tenant(Box<Tenant>),
}

impl Caller {
    /// Who the key belongs to, for the audit log: `admin`, or the tenant's id (never the key).
    pub fn name(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Tenant(tenant) => tenant.id.to_string(),
        }
    }
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

    pub(super) fn registry(&self) -> &dyn Registry {
        self.inner.registry.as_ref()
    }

    /// A token for a new session: sealed when the API has keys.
    pub(super) fn token_for(&self, session: &Session) -> SessionToken {
        match &self.inner.config.sealer {
            Some(sealer) => sealer.seal(session),
            None => SessionToken::random(),
        }
    }

    /// Where tunnels' byte counts come from, if anywhere.
    pub(super) fn traffic(&self) -> Option<&dyn TrafficSource> {
        self.inner.config.traffic.as_deref()
    }

    /// Authenticates the caller by its bearer key.
    pub(super) async fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let key = bearer_key(headers).ok_or(ApiError::Unauthorized)?;
        let digest = TokenDigest::of(key);
        if let Some(admin) = &self.inner.config.admin_key {
            let bytes = |d: &TokenDigest| d.to_hex().into_bytes();
            if bool::from(bytes(admin).ct_eq(&bytes(&digest))) {
                return Ok(Caller::Admin);
            }
        }
        match self.registry().tenant_by_key(&digest).await? {
            Some(tenant) => Ok(Caller::Tenant(Box::new(tenant))),
            None => Err(ApiError::Unauthorized),
        }
    }

    /// A guacd for a session: a member of the named pool (round robin), or an address some pool lists.
    pub(super) fn guacd(&self, name: &str) -> Result<HostPort, ApiError> {
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

/// The key of `Authorization: Bearer <key>`. The scheme is case-insensitive, as every HTTP authentication
/// scheme is (RFC 9110, section 11.1), and may be followed by more than one space.
fn bearer_key(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    let key = key.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}
