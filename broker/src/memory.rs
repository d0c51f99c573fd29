//! The embedded in-memory registry of single-node mode. Sessions are keyed by the SHA-256 digest of their
//! token, so a lookup's timing says nothing useful about the tokens held, and the final comparison of
//! digests is constant-time.
//!
//! Nothing here expires by itself, as Redis keys do: sessions past their expiry and revocations past
//! [`REVOCATION_MEMORY`] are refused at once, but their memory comes back only when the registry's owner
//! calls [`MemoryRegistry::purge`] (the edge's sweep does, every second). Both are indexed by when they
//! end, so a purge looks only at what has ended, earliest first, a bounded batch per call.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use deskbroker_shared::cluster::{ControlEvent, NodeRecord, SlotHolder, TunnelRecord};
use deskbroker_shared::ids::{NodeId, SessionId, SessionToken, TenantId, TokenDigest, TunnelId};
use deskbroker_shared::session::Session;

use crate::defaults::{CONTROL_BUFFER, LAPSED_PER_RENEWAL, REVOCATION_MEMORY};
use crate::registry::{BoxFuture, EventStream, Heartbeat, Registry, Renewal, Result};
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
    /// Sessions by expiry, earliest first: what a purge looks at (sessions without one never expire).
    expiries: BTreeSet<(SystemTime, SessionId)>,
    /// Sessions revoked, and when.
    revoked: HashMap<SessionId, SystemTime>,
    /// The same, by time, earliest first.
    revocations: BTreeSet<(SystemTime, SessionId)>,
    tenants: HashMap<TenantId, Tenant>,
    markers: HashSet<String>,
    /// Tenants removed (until one of the same id is put again).
    removed_tenants: HashSet<TenantId>,
    /// The tunnels holding each tenant's quota slots; a tenant with none has no entry.
    slots: HashMap<TenantId, HashSet<SlotHolder>>,
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
            slots.remove(&tunnel.slot_holder());
            if slots.is_empty() {
                self.slots.remove(&tunnel.tenant);
            }
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

    /// Stores a session under a token's digest. A session id names one grant: a token stored again, or
    /// a session id stored under another token, replaces what was there, so that nothing is left that
    /// neither lookup nor purge can reach.
    fn insert_session(&mut self, digest: TokenDigest, session: Session) {
        if let Some(previous) = self.sessions.get(&digest) {
            let id = previous.id.clone();
            self.remove_session(&id);
        }
        self.remove_session(&session.id);
        if let Some(expires) = session.expires {
            self.expiries.insert((expires, session.id.clone()));
        }
        self.session_ids.insert(session.id.clone(), digest);
        self.sessions.insert(digest, session);
    }

    /// Removes a session with its id and its place in the expiry index; the session, if there was one.
    fn remove_session(&mut self, id: &SessionId) -> Option<Session> {
        let digest = self.session_ids.remove(id)?;
        let session = self.sessions.remove(&digest)?;
        if let Some(expires) = session.expires {
            self.expiries.remove(&(expires, session.id.clone()));
        }
        Some(session)
    }

    fn remember_revocation(&mut self, id: &SessionId, at: SystemTime) {
        if let Some(earlier) = self.revoked.insert(id.clone(), at) {
            self.revocations.remove(&(earlier, id.clone()));
        }
        self.revocations.insert((at, id.clone()));
    }

    /// Drops at most `budget` sessions expired at `now`, earliest first; how many it dropped.
    fn purge_sessions(&mut self, now: SystemTime, budget: usize) -> usize {
        let mut dropped = 0;
        while dropped < budget {
            let Some((expires, id)) = self.expiries.first().cloned() else {
                break;
            };
            if expires > now {
                break;
            }
            self.expiries.pop_first();
            self.remove_session(&id);
            dropped += 1;
        }
        dropped
    }

    /// Forgets at most `budget` revocations older than [`REVOCATION_MEMORY`] at `now`, earliest first.
    fn purge_revocations(&mut self, now: SystemTime, budget: usize) -> usize {
        let mut dropped = 0;
        while dropped < budget {
            let Some((at, id)) = self.revocations.first().cloned() else {
                break;
            };
            if now.duration_since(at).unwrap_or_default() < REVOCATION_MEMORY {
                break;
            }
            self.revocations.pop_first();
            self.revoked.remove(&id);
            dropped += 1;
        }
        dropped
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
        self.lock().insert_session(token.digest(), session);
    }

    /// Drops at most `budget` records whose time has passed at `now` (sessions past their expiry first,
    /// then revocations older than [`REVOCATION_MEMORY`]), earliest first, and says how many it dropped:
    /// fewer than `budget` means nothing is left to drop. The lock is held for one batch, so a caller
    /// with more to drop calls again, letting lookups in between.
    pub fn purge(&self, now: SystemTime, budget: usize) -> usize {
        let mut state = self.lock();
        let sessions = state.purge_sessions(now, budget);
        sessions + state.purge_revocations(now, budget - sessions)
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

    fn renew<'a>(&'a self, node: &'a NodeRecord) -> BoxFuture<'a, Result<Heartbeat>> {
        let mut state = self.lock();
        let previous = state.nodes.insert(node.id.clone(), node.clone());
        // The nodes of one process: few enough to look at each.
        let now = SystemTime::now();
        let (live, lapsed): (Vec<&NodeRecord>, Vec<&NodeRecord>) =
            state.nodes.values().partition(|node| node.is_alive(now));
        ready(Heartbeat {
            renewal: match previous {
                Some(_) => Renewal::Renewed,
                None => Renewal::Fresh,
            },
            live: live.len(),
            lapsed: lapsed
                .into_iter()
                .take(LAPSED_PER_RENEWAL)
                .map(|node| node.id.clone())
                .collect(),
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRecord>>> {
        ready(self.lock().nodes.values().cloned().collect())
    }

    fn node_records<'a>(
        &'a self,
        ids: &'a [NodeId],
    ) -> BoxFuture<'a, Result<Vec<Option<NodeRecord>>>> {
        let state = self.lock();
        ready(ids.iter().map(|id| state.nodes.get(id).cloned()).collect())
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
        holder: &'a SlotHolder,
        limit: u32,
    ) -> BoxFuture<'a, Result<bool>> {
        let mut state = self.lock();
        let slots = state.slots.entry(tenant.clone()).or_default();
        let taken = slots.contains(holder) || slots.len() < limit as usize;
        if taken {
            slots.insert(holder.clone());
        }
        ready(taken)
    }

    fn hand_over_slot<'a>(
        &'a self,
        tenant: &'a TenantId,
        from: &'a SlotHolder,
        to: &'a SlotHolder,
    ) -> BoxFuture<'a, Result<bool>> {
        let mut state = self.lock();
        let slots = state.slots.entry(tenant.clone()).or_default();
        let handed = slots.remove(from);
        if handed {
            slots.insert(to.clone());
        }
        ready(handed)
    }

    fn slot_holders<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<Vec<SlotHolder>>> {
        let holders = self.lock().slots.get(tenant).cloned().unwrap_or_default();
        ready(holders.into_iter().collect())
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

    fn tunnel<'a>(&'a self, id: &'a TunnelId) -> BoxFuture<'a, Result<Option<TunnelRecord>>> {
        ready(self.lock().tunnels.get(id).cloned())
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
        let live = state.remove_session(id).is_some();
        if live {
            state.remember_revocation(id, SystemTime::now());
        }
        ready(live)
    }

    fn purge_expired(&self, budget: usize) -> BoxFuture<'_, Result<usize>> {
        ready(self.purge(SystemTime::now(), budget))
    }

    fn put_revocation<'a>(
        &'a self,
        id: &'a SessionId,
        _until: SystemTime,
    ) -> BoxFuture<'a, Result<()>> {
        // Remembered for the registry's usual day: a node alone never loses its registry's data.
        self.lock().remember_revocation(id, SystemTime::now());
        ready(())
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

    /// What the registry holds: sessions, session ids, revocations.
    fn held(registry: &MemoryRegistry) -> (usize, usize, usize) {
        let state = registry.lock();
        (
            state.sessions.len(),
            state.session_ids.len(),
            state.revoked.len(),
        )
    }

    #[tokio::test]
    async fn expired_sessions_and_old_revocations_are_purged_a_batch_at_a_time() {
        let registry = MemoryRegistry::new();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        for i in 0..5 {
            let (token, id) = (format!("old-{i}"), format!("s-old-{i}"));
            let expired = now - Duration::from_secs(5 - i);
            registry.insert(&SessionToken::new(token), session(&id, Some(expired)));
        }
        registry.insert(
            &SessionToken::new("live"),
            session("s-live", Some(now + hour)),
        );
        registry.insert(&SessionToken::new("file"), session("s-file", None));
        registry.insert(
            &SessionToken::new("gone"),
            session("s-gone", Some(now + hour)),
        );
        assert!(registry.revoke(&SessionId::new("s-gone")).await.unwrap());
        assert_eq!(held(&registry), (7, 7, 1));

        // At most the budget per step, so that no step holds the lock for long.
        assert_eq!(registry.purge(now, 3), 3);
        assert_eq!(registry.purge(now, 3), 2, "fewer than the budget: done");
        assert_eq!(registry.purge(now, 3), 0);
        assert_eq!(
            held(&registry),
            (2, 2, 1),
            "the live sessions and the revocation"
        );
        let live = registry.session(&SessionToken::new("live")).await.unwrap();
        assert!(live.is_some());

        // A day later the revocation is forgotten, and the session with an expiry has expired; the one
        // without stays.
        let later = now + REVOCATION_MEMORY + Duration::from_secs(1);
        assert_eq!(registry.purge(later, 10), 2);
        assert_eq!(held(&registry), (1, 1, 0));
        assert!(
            registry
                .revoked(&[SessionId::new("s-gone")])
                .await
                .unwrap()
                .is_empty()
        );
        let file = registry.session(&SessionToken::new("file")).await.unwrap();
        assert!(file.is_some());
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
