//! The revocations this node has heard of, remembered until their sessions would have expired. A sealed
//! token is refused by its revocation alone, and a registry that lost its data lost its revocations with
//! it: the node checks them itself, and writes them back into such a registry (see `lifecycle.rs`).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use deskbroker_shared::ids::SessionId;

use crate::defaults::REMEMBERED_REVOCATIONS;

#[derive(Debug, Default)]
pub struct Revocations {
    until: Mutex<HashMap<SessionId, SystemTime>>,
}

impl Revocations {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, SystemTime>> {
        // Single map operations only: the map cannot be left half-updated.
        self.until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers that `session` was revoked, until `until`. At [`REMEMBERED_REVOCATIONS`], what has
    /// expired goes first, then what expires soonest.
    pub fn remember(&self, session: SessionId, until: SystemTime) {
        let mut remembered = self.lock();
        if remembered.len() >= REMEMBERED_REVOCATIONS && !remembered.contains_key(&session) {
            let now = SystemTime::now();
            remembered.retain(|_, until| *until > now);
            let soonest = remembered
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(id, _)| id.clone());
            if remembered.len() >= REMEMBERED_REVOCATIONS
                && let Some(soonest) = soonest
            {
                remembered.remove(&soonest);
            }
        }
        let entry = remembered.entry(session).or_insert(until);
        *entry = (*entry).max(until);
    }

    pub fn contains(&self, session: &SessionId) -> bool {
        let now = SystemTime::now();
        self.lock().get(session).is_some_and(|until| *until > now)
    }

    /// Every revocation still in force, forgetting those that are not.
    pub fn all(&self) -> Vec<(SessionId, SystemTime)> {
        let now = SystemTime::now();
        let mut remembered = self.lock();
        remembered.retain(|_, until| *until > now);
        remembered
            .iter()
            .map(|(id, until)| (id.clone(), *until))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn revocations_are_kept_until_their_sessions_expire_and_bounded() {
        let revocations = Revocations::default();
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        revocations.remember(SessionId::new("past"), now - hour);
        revocations.remember(SessionId::new("live"), now + hour);
        assert!(revocations.contains(&SessionId::new("live")));
        assert!(!revocations.contains(&SessionId::new("past")));
        assert_eq!(revocations.all().len(), 1, "the expired one is forgotten");

        for i in 0..REMEMBERED_REVOCATIONS + 10 {
            let until = now + hour + Duration::from_secs(i as u64);
            revocations.remember(SessionId::new(format!("s{i}")), until);
        }
        assert_eq!(revocations.all().len(), REMEMBERED_REVOCATIONS);
        assert!(
            !revocations.contains(&SessionId::new("live")),
            "the soonest went"
        );
        let last = SessionId::new(format!("s{}", REMEMBERED_REVOCATIONS + 9));
        assert!(revocations.contains(&last));
    }
}
