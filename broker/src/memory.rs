//! The embedded in-memory registry of single-node mode. Sessions are keyed by the SHA-256 digest of their
//! token, so a lookup's timing says nothing useful about the tokens held, and the final comparison of
//! digests is constant-time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use deskbroker_shared::cluster::{ControlEvent, NodeRecord, TunnelRecord};
use deskbroker_shared::ids::{NodeId, SessionId, SessionToken, TenantId, TokenDigest, TunnelId};
use deskbroker_shared::session::Session;

use crate::defaults::{CONTROL_BUFFER, REVOCATION_MEMORY};
use crate::registry::{BoxFuture, EventStream, Registry, Renewal, Result};
use crate::tenants::Tenant;

#[derive(Debug, Clone)]
pub struct MemoryRegistry {
    state: Arc<Mutex<State>>,
    control: broadcast::Sender<ControlEvent>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<TokenDigest, Session>,
    session_ids: HashMap<SessionId, TokenDigest>,
    nodes: HashMap<NodeId, NodeRecord>,
    tunnels: HashMap<TunnelId, TunnelRecord>,
    /// HTTP tunnels by the digest of their `Guacamole-Tunnel-Token`, for forwarding.
    http_tunnels: HashMap<TokenDigest, TunnelId>,
    /// Sessions revoked, and when.
    revoked: HashMap<SessionId, SystemTime>,
    tenants: HashMap<TenantId, Tenant>,
    markers: std::collections::HashSet<String>,
    /// Tenants removed (until one of the same id is put again).
    removed_tenants: std::collections::HashSet<TenantId>,
    slots: HashMap<TenantId, std::collections::HashSet<TunnelId>>,
}

impl State {
    /// Drops a tunnel's record, its token, and the quota slot it held (also a slot taken for a tunnel
    /// whose record was never written).
    fn remove_tunnel(&mut self, tunnel: &TunnelRecord) {
        if let Some(recorded) = self.tunnels.remove(&tunnel.id)
            && let Some(token) = &recorded.http_token
        {
            self.http_tunnels.remove(token);
        }
        if let Some(slots) = self.slots.get_mut(&tunnel.tenant) {
            slots.remove(&tunnel.id);
        }
    }

    /// Drops a node and every tunnel it owned.
    fn remove_node(&mut self, id: &NodeId) {
        self.nodes.remove(id);
        let gone: Vec<TunnelRecord> = self
            .tunnels
            .values()
            .filter(|t| &t.owner == id)
            .cloned()
            .collect();
        for tunnel in &gone {
            self.remove_tunnel(tunnel);
        }
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            control: broadcast::channel(CONTROL_BUFFER).0,
        }
    }
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the session a token grants.
    pub fn insert(&self, token: &SessionToken, session: Session) {
        let mut state = self.lock();
        state.session_ids.insert(session.id.clone(), token.digest());
        state.sessions.insert(token.digest(), session);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a single map operation; none can leave the state half-updated.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An answer that is ready at once.
fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, Result<T>> {
    Box::pin(async move { Ok(value) })
}

impl Registry for MemoryRegistry {
    fn session<'a>(&'a self, token: &'a SessionToken) -> BoxFuture<'a, Result<Option<Session>>> {
        let now = SystemTime::now();
        let found = self
            .lock()
            .sessions
            .get(&token.digest())
            .filter(|s| !s.is_expired(now))
            .cloned();
        ready(found)
    }

    fn put_session<'a>(
        &'a self,
        token: &'a SessionToken,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        self.insert(token, session.clone());
        ready(())
    }

    fn renew<'a>(&'a self, node: &'a NodeRecord) -> BoxFuture<'a, Result<Renewal>> {
        let previous = self.lock().nodes.insert(node.id.clone(), node.clone());
        ready(if previous.is_some() {
            Renewal::Renewed
        } else {
            Renewal::Fresh
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRecord>>> {
        ready(self.lock().nodes.values().cloned().collect())
    }

    fn remove_node<'a>(&'a self, id: &'a NodeId) -> BoxFuture<'a, Result<()>> {
        self.lock().remove_node(id);
        ready(())
    }

    fn remove_lapsed_node<'a>(&'a self, id: &'a NodeId) -> BoxFuture<'a, Result<bool>> {
        // One lock: the node cannot renew in between, so it needs no fence.
        let mut state = self.lock();
        let now = SystemTime::now();
        let lapsed = state.nodes.get(id).is_some_and(|node| !node.is_alive(now));
        if lapsed {
            state.remove_node(id);
        }
        ready(lapsed)
    }

    fn reserve_slot<'a>(
        &'a self,
        tenant: &'a TenantId,
        tunnel: &'a TunnelId,
        limit: u32,
    ) -> BoxFuture<'a, Result<bool>> {
        let mut state = self.lock();
        let slots = state.slots.entry(tenant.clone()).or_default();
        let taken = slots.contains(tunnel) || slots.len() < limit as usize;
        if taken {
            slots.insert(*tunnel);
        }
        ready(taken)
    }

    fn add_tunnel<'a>(&'a self, tunnel: &'a TunnelRecord) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        let previous = state.tunnels.insert(tunnel.id, tunnel.clone());
        if let Some(token) = previous.and_then(|previous| previous.http_token) {
            state.http_tunnels.remove(&token);
        }
        if let Some(token) = tunnel.http_token {
            state.http_tunnels.insert(token, tunnel.id);
        }
        ready(())
    }

    fn remove_tunnel<'a>(&'a self, tunnel: &'a TunnelRecord) -> BoxFuture<'a, Result<()>> {
        self.lock().remove_tunnel(tunnel);
        ready(())
    }

    fn http_tunnel<'a>(
        &'a self,
        token: &'a TokenDigest,
    ) -> BoxFuture<'a, Result<Option<TunnelRecord>>> {
        let state = self.lock();
        let id = state.http_tunnels.get(token);
        ready(id.and_then(|id| state.tunnels.get(id)).cloned())
    }

    fn tunnels_of<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, Result<Vec<TunnelRecord>>> {
        ready(
            self.lock()
                .tunnels
                .values()
                .filter(|t| &t.owner == node)
                .cloned()
                .collect(),
        )
    }

    fn session_tunnels<'a>(
        &'a self,
        session: &'a SessionId,
    ) -> BoxFuture<'a, Result<Vec<TunnelRecord>>> {
        ready(
            self.lock()
                .tunnels
                .values()
                .filter(|t| &t.session == session)
                .cloned()
                .collect(),
        )
    }

    fn session_by_id<'a>(
        &'a self,
        id: &'a SessionId,
    ) -> BoxFuture<'a, Result<Option<(TokenDigest, Session)>>> {
        let now = SystemTime::now();
        let state = self.lock();
        let found = state.session_ids.get(id).and_then(|digest| {
            let session = state.sessions.get(digest).filter(|s| !s.is_expired(now))?;
            Some((*digest, session.clone()))
        });
        ready(found)
    }

    fn sessions_of<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<Vec<Session>>> {
        let now = SystemTime::now();
        let state = self.lock();
        let found = state
            .sessions
            .values()
            .filter(|s| &s.tenant == tenant && !s.is_expired(now))
            .cloned()
            .collect();
        ready(found)
    }

    fn revoke<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, Result<bool>> {
        let mut state = self.lock();
        let digest = state.session_ids.remove(id);
        let live = digest
            .and_then(|digest| state.sessions.remove(&digest))
            .is_some();
        if live {
            let now = SystemTime::now();
            state
                .revoked
                .retain(|_, at| now.duration_since(*at).unwrap_or_default() < REVOCATION_MEMORY);
            state.revoked.insert(id.clone(), now);
        }
        ready(live)
    }

    fn revoked<'a>(&'a self, ids: &'a [SessionId]) -> BoxFuture<'a, Result<Vec<SessionId>>> {
        let state = self.lock();
        ready(
            ids.iter()
                .filter(|id| state.revoked.contains_key(*id))
                .cloned()
                .collect(),
        )
    }

    fn put_tenant<'a>(&'a self, tenant: &'a Tenant) -> BoxFuture<'a, Result<()>> {
        let mut state = self.lock();
        state.removed_tenants.remove(&tenant.id);
        state.tenants.insert(tenant.id.clone(), tenant.clone());
        ready(())
    }

    fn tenant<'a>(&'a self, id: &'a TenantId) -> BoxFuture<'a, Result<Option<Tenant>>> {
        ready(self.lock().tenants.get(id).cloned())
    }

    fn tenant_by_key<'a>(&'a self, key: &'a TokenDigest) -> BoxFuture<'a, Result<Option<Tenant>>> {
        ready(
            self.lock()
                .tenants
                .values()
                .find(|t| &t.key_sha256 == key)
                .cloned(),
        )
    }

    fn tenants(&self) -> BoxFuture<'_, Result<Vec<Tenant>>> {
        ready(self.lock().tenants.values().cloned().collect())
    }

    fn remove_tenant<'a>(&'a self, id: &'a TenantId) -> BoxFuture<'a, Result<bool>> {
        let mut state = self.lock();
        let removed = state.tenants.remove(id).is_some();
        if removed {
            state.removed_tenants.insert(id.clone());
        }
        ready(removed)
    }

    fn removed_tenants<'a>(&'a self, ids: &'a [TenantId]) -> BoxFuture<'a, Result<Vec<TenantId>>> {
        let state = self.lock();
        let removed = ids.iter().filter(|id| state.removed_tenants.contains(*id));
        ready(removed.cloned().collect())
    }

    fn marked<'a>(&'a self, marker: &'a str) -> BoxFuture<'a, Result<bool>> {
        ready(self.lock().markers.contains(marker))
    }

    fn mark<'a>(&'a self, marker: &'a str) -> BoxFuture<'a, Result<()>> {
        self.lock().markers.insert(marker.to_owned());
        ready(())
    }

    fn publish<'a>(&'a self, event: &'a ControlEvent) -> BoxFuture<'a, Result<()>> {
        // No subscriber is not an error: nobody needs telling.
        let _ = self.control.send(event.clone());
        ready(())
    }

    fn subscribe(&self) -> BoxFuture<'_, Result<EventStream>> {
        let events = BroadcastStream::new(self.control.subscribe())
            .filter_map(|event| async move { event.ok() });
        ready(Box::pin(events) as EventStream)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use deskbroker_shared::session::Target;

    use super::*;

    fn session(id: &str, expires: Option<SystemTime>) -> Session {
        Session {
            expires,
            ..Session::new(
                SessionId::new(id),
                TenantId::new("t"),
                Target::parse("127.0.0.1:5900").unwrap(),
            )
        }
    }

    #[tokio::test]
    async fn finds_live_sessions_only() {
        let registry = MemoryRegistry::new();
        let past = SystemTime::now() - Duration::from_secs(1);
        registry.insert(&SessionToken::new("live"), session("s", None));
        registry.insert(&SessionToken::new("old"), session("s-old", Some(past)));
        let lookup = |t: &'static str| {
            let registry = registry.clone();
            async move { registry.session(&SessionToken::new(t)).await.unwrap() }
        };
        assert!(lookup("live").await.is_some());
        assert!(lookup("old").await.is_none());
        assert!(lookup("nope").await.is_none());
        assert!(registry.revoke(&SessionId::new("s")).await.unwrap());
        assert!(lookup("live").await.is_none(), "a revoked session is gone");
        let asked = [SessionId::new("s"), SessionId::new("other")];
        assert_eq!(
            registry.revoked(&asked).await.unwrap(),
            [SessionId::new("s")],
            "remembered as revoked"
        );
    }

    #[tokio::test]
    async fn finds_http_tunnels_by_token_until_they_end() {
        let registry = MemoryRegistry::new();
        let mut tunnel = TunnelRecord {
            id: TunnelId::from_random_bytes([7; 16]),
            owner: NodeId::new("a"),
            incarnation: deskbroker_shared::cluster::Incarnation(uuid::Uuid::from_u128(1)),
            tenant: TenantId::new("t"),
            session: SessionId::new("s"),
            kind: deskbroker_shared::cluster::TunnelKind::HttpTunnel,
            created_ms: 0,
            http_token: Some(TokenDigest::of("first")),
            connection: None,
        };
        let find = |token: &'static str| {
            let registry = registry.clone();
            async move { registry.http_tunnel(&TokenDigest::of(token)).await.unwrap() }
        };
        registry.add_tunnel(&tunnel).await.unwrap();
        assert_eq!(find("first").await.map(|t| t.id), Some(tunnel.id));
        assert!(find("other").await.is_none());

        // Written again with another token: only the new one finds it.
        tunnel.http_token = Some(TokenDigest::of("second"));
        registry.add_tunnel(&tunnel).await.unwrap();
        assert!(find("first").await.is_none());
        assert!(find("second").await.is_some());

        registry.remove_node(&NodeId::new("a")).await.unwrap();
        assert!(find("second").await.is_none());
    }
}
