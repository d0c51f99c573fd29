//! This node's own tunnels, indexed by session, with what stops each one: the session's expiry; the control
//! channel, which closes a revoked session's tunnels, a deleted tenant's, and the older tunnel of an
//! exclusive session taken over; the lease, when the node can no longer own a tunnel; and the node's stop,
//! which closes them all. Each tunnel learns why it was stopped, to tell the browser. Entries are made and
//! removed only by a tunnel's [`crate::registration::Registration`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::info;

use deskbroker_shared::cluster::TunnelRecord;
use deskbroker_shared::ids::{SessionId, TenantId, TunnelId};

use crate::error::TunnelError;

/// Why a tunnel was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    SessionClosed,
    TakenOver,
    LeaseLost,
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

/// Bytes a tunnel has moved: one relaxed atomic add per read or write, on the owner only.
#[derive(Debug, Default)]
pub struct Traffic {
    /// From the browser to the VNC server or guacd.
    to_upstream: AtomicU64,
    /// From the VNC server or guacd to the browser.
    from_upstream: AtomicU64,
}

impl Traffic {
    pub fn sent_upstream(&self, bytes: usize) {
        self.to_upstream.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn received_upstream(&self, bytes: usize) {
        self.from_upstream
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// (bytes from the browser, bytes to the browser).
    pub fn totals(&self) -> (u64, u64) {
        (
            self.to_upstream.load(Ordering::Relaxed),
            self.from_upstream.load(Ordering::Relaxed),
        )
    }
}

/// A tunnel this node owns: its registry record, what stops it, what it has moved.
#[derive(Debug)]
pub struct LocalTunnel {
    pub record: TunnelRecord,
    pub traffic: Arc<Traffic>,
    stopper: Arc<Stopper>,
    /// When its session expires.
    expires: Option<Instant>,
}

impl LocalTunnel {
    /// Waits until the tunnel is stopped from outside or its session expires, and says why.
    pub async fn stopped(&self) -> TunnelError {
        let expiry = async {
            match self.expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.stopper.token.cancelled() => {}
            () = expiry => return TunnelError::SessionExpired,
        }
        match self.stopper.reason.get() {
            Some(Reason::SessionClosed) => TunnelError::SessionClosed,
            Some(Reason::TakenOver) => TunnelError::TakenOver,
            Some(Reason::LeaseLost) => TunnelError::LeaseLost,
            // Only the node's stop cancels the parent token without a reason.
            None => TunnelError::ShuttingDown,
        }
    }
}

/// The node's map of its tunnels: a cheap `Clone` handle.
#[derive(Debug, Clone, Default)]
pub struct LocalTunnels {
    sessions: Arc<Mutex<HashMap<SessionId, HashMap<TunnelId, Entry>>>>,
}

#[derive(Debug, Clone)]
struct Entry {
    tenant: TenantId,
    stopper: Arc<Stopper>,
    traffic: Arc<Traffic>,
}

impl LocalTunnels {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, HashMap<TunnelId, Entry>>> {
        // Single map operations only: the index cannot be left half-updated.
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a tunnel, stopped with `parent` (the node's stop), on its own, or when its session `expires`.
    pub fn insert(
        &self,
        record: TunnelRecord,
        expires: Option<SystemTime>,
        parent: &CancellationToken,
    ) -> LocalTunnel {
        let stopper = Arc::new(Stopper {
            token: parent.child_token(),
            reason: OnceLock::new(),
        });
        let traffic = Arc::new(Traffic::default());
        let entry = Entry {
            tenant: record.tenant.clone(),
            stopper: stopper.clone(),
            traffic: traffic.clone(),
        };
        let mut sessions = self.lock();
        sessions
            .entry(record.session.clone())
            .or_default()
            .insert(record.id, entry);
        let now = SystemTime::now();
        let expires = expires.map(|at| Instant::now() + at.duration_since(now).unwrap_or_default());
        LocalTunnel {
            record,
            traffic,
            stopper,
            expires,
        }
    }

    pub fn remove(&self, record: &TunnelRecord) {
        let mut sessions = self.lock();
        if let Some(tunnels) = sessions.get_mut(&record.session) {
            tunnels.remove(&record.id);
            if tunnels.is_empty() {
                sessions.remove(&record.session);
            }
        }
    }

    /// The sessions this node has tunnels of.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.lock().keys().cloned().collect()
    }

    /// Stops every tunnel of a revoked session.
    pub fn close_session(&self, session: &SessionId) {
        let tunnels = self.lock().remove(session).unwrap_or_default();
        if !tunnels.is_empty() {
            info!(%session, tunnels = tunnels.len(), "closing the tunnels of a closed session");
        }
        for entry in tunnels.values() {
            entry.stopper.stop(Reason::SessionClosed);
        }
    }

    /// Stops every tunnel of a deleted tenant.
    pub fn close_tenant(&self, tenant: &TenantId) {
        let stoppers: Vec<Arc<Stopper>> = self
            .lock()
            .values()
            .flat_map(|tunnels| tunnels.values())
            .filter(|entry| &entry.tenant == tenant)
            .map(|entry| entry.stopper.clone())
            .collect();
        if !stoppers.is_empty() {
            info!(%tenant, tunnels = stoppers.len(), "closing the tunnels of a deleted tenant");
        }
        for stopper in stoppers {
            stopper.stop(Reason::SessionClosed);
        }
    }

    /// The tenants this node has tunnels of.
    pub fn tenants(&self) -> Vec<TenantId> {
        let mut tenants: Vec<TenantId> = self
            .lock()
            .values()
            .flat_map(|tunnels| tunnels.values())
            .map(|entry| entry.tenant.clone())
            .collect();
        tenants.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        tenants.dedup();
        tenants
    }

    /// Stops a tunnel the node can no longer own: its lease lapsed, and its tenant's slots were taken
    /// meanwhile.
    pub fn evict(&self, record: &TunnelRecord) {
        let entry = self
            .lock()
            .get(&record.session)
            .and_then(|tunnels| tunnels.get(&record.id).cloned());
        if let Some(entry) = entry {
            entry.stopper.stop(Reason::LeaseLost);
        }
    }

    /// Stops one tunnel of an exclusive session that a newer connection took over.
    pub fn take_over(&self, session: &SessionId, tunnel: &TunnelId) {
        let entry = self
            .lock()
            .get(session)
            .and_then(|tunnels| tunnels.get(tunnel).cloned());
        if let Some(entry) = entry {
            info!(%session, %tunnel, "a newer connection took over the session");
            entry.stopper.stop(Reason::TakenOver);
        }
    }

    /// What this node's tunnels of `sessions` have moved: (bytes from the browser, bytes to the browser).
    pub fn traffic(&self, sessions: &[SessionId]) -> Vec<(TunnelId, (u64, u64))> {
        let map = self.lock();
        sessions
            .iter()
            .filter_map(|session| map.get(session))
            .flatten()
            .map(|(id, entry)| (*id, entry.traffic.totals()))
            .collect()
    }
}
