//! The embedded in-memory registry of single-node mode. Sessions are keyed by the SHA-256 digest of their
//! token, so a lookup's timing says nothing useful about the tokens held, and the final comparison of
//! digests is constant-time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use deskbroker_shared::cluster::{NodeId, NodeRecord, TunnelRecord};
use deskbroker_shared::ids::{SessionToken, TokenDigest, TunnelId};
use deskbroker_shared::session::Session;

use crate::{BoxFuture, Registry, Renewal, Result};

#[derive(Debug, Clone, Default)]
pub struct MemoryRegistry {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<TokenDigest, Session>,
    nodes: HashMap<NodeId, NodeRecord>,
    tunnels: HashMap<TunnelId, TunnelRecord>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the session a token grants.
    pub fn insert(&self, token: &SessionToken, session: Session) {
        self.lock().sessions.insert(token.digest(), session);
    }

    /// Revokes a token; true if it granted a session.
    pub fn remove(&self, token: &SessionToken) -> bool {
        self.lock().sessions.remove(&token.digest()).is_some()
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
        let mut state = self.lock();
        state.nodes.remove(id);
        state.tunnels.retain(|_, tunnel| &tunnel.owner != id);
        ready(())
    }

    fn add_tunnel<'a>(&'a self, tunnel: &'a TunnelRecord) -> BoxFuture<'a, Result<()>> {
        self.lock().tunnels.insert(tunnel.id, tunnel.clone());
        ready(())
    }

    fn remove_tunnel<'a>(&'a self, tunnel: &'a TunnelRecord) -> BoxFuture<'a, Result<()>> {
        self.lock().tunnels.remove(&tunnel.id);
        ready(())
    }

    fn http_tunnel<'a>(
        &'a self,
        token: &'a TokenDigest,
    ) -> BoxFuture<'a, Result<Option<TunnelRecord>>> {
        let state = self.lock();
        let found = state
            .tunnels
            .values()
            .find(|t| t.http_token.as_ref() == Some(token))
            .cloned();
        ready(found)
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use deskbroker_shared::ids::TenantId;
    use deskbroker_shared::session::Target;

    use super::*;

    fn session(expires: Option<SystemTime>) -> Session {
        Session {
            tenant: TenantId::new("t"),
            target: Target::parse("127.0.0.1:5900").unwrap(),
            expires,
        }
    }

    #[tokio::test]
    async fn finds_live_sessions_only() {
        let registry = MemoryRegistry::new();
        let past = SystemTime::now() - Duration::from_secs(1);
        registry.insert(&SessionToken::new("live"), session(None));
        registry.insert(&SessionToken::new("old"), session(Some(past)));
        let lookup = |t: &'static str| {
            let registry = registry.clone();
            async move { registry.session(&SessionToken::new(t)).await.unwrap() }
        };
        assert!(lookup("live").await.is_some());
        assert!(lookup("old").await.is_none());
        assert!(lookup("nope").await.is_none());
        assert!(registry.remove(&SessionToken::new("live")));
        assert!(lookup("live").await.is_none());
    }
}
