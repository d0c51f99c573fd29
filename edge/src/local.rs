//! This node's own tunnels, indexed by session, with what stops each one: the session's expiry; the control
//! channel, which closes a revoked session's tunnels, a deleted tenant's, and the older tunnel of an
//! exclusive session taken over; the lease, when the node can no longer own a tunnel; and the node's stop,
//! which closes them all. Each tunnel learns why it was stopped, to tell the browser. Entries are made and
//! removed only by a tunnel's [`crate::registration::Registration`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::info;

use deskbroker_shared::cluster::{TunnelKind, TunnelRecord};
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

/// A moment kept in an atomic, so that a relay marks it with one relaxed store: when a tunnel last heard
/// from its browser, or last had a person's input. It starts at its creation.
#[derive(Debug)]
pub struct Stamp {
    since: Instant,
    /// The moment, in ms after `since`.
    at_ms: AtomicU64,
}

impl Default for Stamp {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            at_ms: AtomicU64::new(0),
        }
    }
}

impl Stamp {
    /// Now.
    pub fn set(&self) {
        let at = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.at_ms.store(at, Ordering::Relaxed);
    }

    pub fn at(&self) -> Instant {
        self.since + Duration::from_millis(self.at_ms.load(Ordering::Relaxed))
    }
}

/// Bytes a tunnel has moved, one relaxed atomic add per read or write, on the owner only; and when a
/// person last gave input, one relaxed store per input event.
#[derive(Debug, Default)]
pub struct Traffic {
    /// From the browser to the VNC server or guacd.
    to_upstream: AtomicU64,
    /// From the VNC server or guacd to the browser.
    from_upstream: AtomicU64,
    input: Stamp,
}

impl Traffic {
    /// A person typed, clicked, moved the pointer, pasted or sent a file (see the idle timeout).
    pub fn user_input(&self) {
        self.input.set();
    }

    /// When the idle timeout `idle` runs out, counted from the last input (or the tunnel's start).
    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.input.at() + idle
    }

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
    /// Its session's idle timeout.
    idle: Option<Duration>,
}

impl LocalTunnel {
    /// Waits until the tunnel is stopped from outside, its session expires, or nobody gave input for
    /// the session's idle timeout, and says why.
    pub async fn stopped(&self) -> TunnelError {
        let expiry = async {
            match self.expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let idle = async {
            let Some(idle) = self.idle else {
                return std::future::pending().await;
            };
            // A timer per idle period, not per input: input only moves the deadline the timer checks.
            loop {
                let deadline = self.traffic.idle_deadline(idle);
                if deadline <= Instant::now() {
                    return;
                }
                tokio::time::sleep_until(deadline).await;
            }
        };
        tokio::select! {
            () = self.stopper.token.cancelled() => {}
            () = expiry => return TunnelError::SessionExpired,
            () = idle => return TunnelError::IdleTimeout,
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
    map: Arc<Mutex<Map>>,
}

#[derive(Debug, Default)]
struct Map {
    sessions: HashMap<SessionId, HashMap<TunnelId, Entry>>,
    /// What the tunnels that ended moved, by kind: with the open tunnels' own counts, the node's total,
    /// which only grows (a tunnel's counts move here under the same lock that removes it).
    ended: HashMap<TunnelKind, (u64, u64)>,
}

#[derive(Debug, Clone)]
struct Entry {
    tenant: TenantId,
    kind: TunnelKind,
    stopper: Arc<Stopper>,
    traffic: Arc<Traffic>,
}

/// What the node's tunnels amount to now, by kind: how many are open, and the bytes all of them moved
/// since the node started (from the browser, to the browser); and how many each tenant has open.
#[derive(Debug, Default)]
pub struct Census {
    pub open: HashMap<TunnelKind, u64>,
    pub bytes: HashMap<TunnelKind, (u64, u64)>,
    pub by_tenant: HashMap<TenantId, u64>,
}

impl LocalTunnels {
    fn lock(&self) -> MutexGuard<'_, Map> {
        // Single map operations only: the index cannot be left half-updated.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a tunnel, stopped with `parent` (the node's stop), on its own, when its session `expires`, or
    /// after `idle` without input.
    pub fn insert(
        &self,
        record: TunnelRecord,
        (expires, idle): (Option<SystemTime>, Option<Duration>),
        parent: &CancellationToken,
    ) -> LocalTunnel {
        let stopper = Arc::new(Stopper {
            token: parent.child_token(),
            reason: OnceLock::new(),
        });
        let traffic = Arc::new(Traffic::default());
        let entry = Entry {
            tenant: record.tenant.clone(),
            kind: record.kind,
            stopper: stopper.clone(),
            traffic: traffic.clone(),
        };
        let mut map = self.lock();
        map.sessions
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
            idle,
        }
    }

    pub fn remove(&self, record: &TunnelRecord) {
        let mut map = self.lock();
        let Map { sessions, ended } = &mut *map;
        let Some(tunnels) = sessions.get_mut(&record.session) else {
            return;
        };
        if let Some(entry) = tunnels.remove(&record.id) {
            let (from_browser, to_browser) = entry.traffic.totals();
            let total = ended.entry(entry.kind).or_default();
            total.0 += from_browser;
            total.1 += to_browser;
        }
        if tunnels.is_empty() {
            sessions.remove(&record.session);
        }
    }

    /// The sessions this node has tunnels of.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.lock().sessions.keys().cloned().collect()
    }

    /// What the node's tunnels amount to now.
    pub fn census(&self) -> Census {
        let map = self.lock();
        let mut census = Census {
            bytes: map.ended.clone(),
            ..Census::default()
        };
        for entry in map.sessions.values().flat_map(HashMap::values) {
            *census.open.entry(entry.kind).or_default() += 1;
            *census.by_tenant.entry(entry.tenant.clone()).or_default() += 1;
            let (from_browser, to_browser) = entry.traffic.totals();
            let total = census.bytes.entry(entry.kind).or_default();
            total.0 += from_browser;
            total.1 += to_browser;
        }
        census
    }

    /// Stops every tunnel of a revoked session.
    pub fn close_session(&self, session: &SessionId) {
        // Left in the map: each tunnel's registration removes its entry, with its byte counts, as it ends.
        let tunnels = self
            .lock()
            .sessions
            .get(session)
            .cloned()
            .unwrap_or_default();
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
            .sessions
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
            .sessions
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
            .sessions
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
            .sessions
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
            .filter_map(|session| map.sessions.get(session))
            .flatten()
            .map(|(id, entry)| (*id, entry.traffic.totals()))
            .collect()
    }
}
