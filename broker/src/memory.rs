//! The embedded in-memory registry of single-node mode. Sessions are keyed by the SHA-256 digest of their
//! token, so a lookup's timing says nothing useful about the tokens held, and the final comparison of
//! digests is constant-time.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use deskbroker_shared::ids::{SessionToken, TokenDigest};
use deskbroker_shared::session::Session;

use crate::{BoxFuture, Registry, RegistryError};

#[derive(Debug, Clone, Default)]
pub struct MemoryRegistry {
    sessions: Arc<RwLock<HashMap<TokenDigest, Session>>>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the session a token grants.
    pub fn insert(&self, token: &SessionToken, session: Session) {
        self.write().insert(token.digest(), session);
    }

    /// Revokes a token; true if it granted a session.
    pub fn remove(&self, token: &SessionToken) -> bool {
        self.write().remove(&token.digest()).is_some()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TokenDigest, Session>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts and removes).
        self.sessions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lookup(&self, token: &SessionToken, now: SystemTime) -> Option<Session> {
        let sessions = self
            .sessions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sessions
            .get(&token.digest())
            .filter(|session| !session.is_expired(now))
            .cloned()
    }
}

impl Registry for MemoryRegistry {
    fn session<'a>(
        &'a self,
        token: &'a SessionToken,
    ) -> BoxFuture<'a, Result<Option<Session>, RegistryError>> {
        let found = self.lookup(token, SystemTime::now());
        Box::pin(async move { Ok(found) })
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
        let lookup = |t: &str| registry.lookup(&SessionToken::new(t), SystemTime::now());
        assert!(lookup("live").is_some());
        assert!(lookup("old").is_none());
        assert!(lookup("nope").is_none());
        assert!(registry.remove(&SessionToken::new("live")));
        assert!(
            registry
                .session(&SessionToken::new("live"))
                .await
                .unwrap()
                .is_none()
        );
    }
}
