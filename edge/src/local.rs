//! This node's own tunnels, indexed by session, with what stops each one: the control channel closes a
//! revoked session's tunnels and the older tunnel of an exclusive session taken over, and the node's stop
//! closes them all. Each tunnel learns why it was stopped, to tell the browser.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio_util::sync::CancellationToken;
use tracing::info;

use deskbroker_shared::cluster::TunnelRecord;
use deskbroker_shared::ids::TunnelId;
use deskbroker_shared::session::SessionId;

use crate::error::TunnelError;

/// Why a tunnel was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    SessionClosed,
    TakenOver,
}

#[derive(Debug)]
struct Stopper {
    token: CancellationToken,
    reason: OnceLock<Reason>,
}

impl Stopper {
    fn stop(&self, reason: Reason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }
}

/// A tunnel this node owns: its registry record, and what stops it.
#[derive(Debug)]
pub struct LocalTunnel {
    pub record: TunnelRecord,
    stopper: Arc<Stopper>,
}

impl LocalTunnel {
    /// Waits until the tunnel is stopped from outside, and says why.
    pub async fn stopped(&self) -> TunnelError {
        self.stopper.token.cancelled().await;
        match self.stopper.reason.get() {
            Some(Reason::SessionClosed) => TunnelError::SessionClosed,
            Some(Reason::TakenOver) => TunnelError::TakenOver,
            // Only the node's stop cancels the parent token without a reason.
            None => TunnelError::ShuttingDown,
        }
    }
}

#[derive(Debug, Default)]
pub struct LocalTunnels {
    sessions: Mutex<HashMap<SessionId, HashMap<TunnelId, Arc<Stopper>>>>,
}

impl LocalTunnels {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, HashMap<TunnelId, Arc<Stopper>>>> {
        // Single map operations only: the index cannot be left half-updated.
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a tunnel, stopped with `parent` (the node's stop) or on its own.
    pub fn insert(&self, record: TunnelRecord, parent: &CancellationToken) -> LocalTunnel {
        let stopper = Arc::new(Stopper {
            token: parent.child_token(),
            reason: OnceLock::new(),
        });
        let mut sessions = self.lock();
        sessions
            .entry(record.session.clone())
            .or_default()
            .insert(record.id, stopper.clone());
        LocalTunnel { record, stopper }
    }

    pub fn remove(&self, tunnel: &LocalTunnel) {
        let mut sessions = self.lock();
        if let Some(tunnels) = sessions.get_mut(&tunnel.record.session) {
            tunnels.remove(&tunnel.record.id);
            if tunnels.is_empty() {
                sessions.remove(&tunnel.record.session);
            }
        }
    }

    /// Stops every tunnel of a revoked session.
    pub fn close_session(&self, session: &SessionId) {
        let tunnels = self.lock().remove(session).unwrap_or_default();
        if !tunnels.is_empty() {
            info!(%session, tunnels = tunnels.len(), "closing the tunnels of a closed session");
        }
        for stopper in tunnels.values() {
            stopper.stop(Reason::SessionClosed);
        }
    }

    /// Stops one tunnel of an exclusive session that a newer connection took over.
    pub fn take_over(&self, session: &SessionId, tunnel: &TunnelId) {
        let stopper = self
            .lock()
            .get(session)
            .and_then(|tunnels| tunnels.get(tunnel).cloned());
        if let Some(stopper) = stopper {
            info!(%session, %tunnel, "a newer connection took over the session");
            stopper.stop(Reason::TakenOver);
        }
    }
}
