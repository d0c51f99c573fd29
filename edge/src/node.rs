//! The node's shared state, which every handler takes: its membership in the cluster (the registry and
//! the lease), its own tunnels, the forwarder to other nodes, its deadlines, and what stops its tunnels.
//!
//! [`Node`] is a cheap `Clone` handle. It sits below every handler and knows none of them: handlers import
//! it, the router imports handlers, and the lifecycle (`lifecycle.rs`) builds it and runs the router.
//! Tunnels run as tasks on a [`TaskTracker`] of their own, because axum's graceful shutdown does not wait
//! for upgraded WebSockets; every tunnel also watches the `close_tunnels` token, which ends it with a
//! status the browser understands.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TrackedFuture;
use tracing::info;

use deskbroker_broker::Membership;
use deskbroker_shared::ids::{ClusterSecret, SessionId, SessionToken};
use deskbroker_shared::peer::{TrafficAnswer, TrafficReport};
use deskbroker_shared::seal::Sealer;
use deskbroker_shared::session::Session;

use crate::config::Timeouts;
use crate::deny::DenyList;
use crate::error::TunnelError;
use crate::forward::Forwarder;
use crate::local::LocalTunnels;
use crate::registration::{Registration, Tunnel};
use crate::revocations::Revocations;

/// Why a node cannot take new tunnels now (`/readyz` answers 503 with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("draining")]
    Draining,
    #[error("lease not held")]
    LeaseNotHeld,
    #[error("registry unavailable")]
    RegistryUnavailable,
}

#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    membership: Membership,
    local: LocalTunnels,
    forwarder: Forwarder,
    cluster_secret: Option<ClusterSecret>,
    timeouts: Timeouts,
    deny: DenyList,
    sealer: Option<Sealer>,
    revocations: Revocations,
    tunnels: TaskTracker,
    /// Cancelled when the node refuses new tunnels (a stop, past its grace).
    refusing: CancellationToken,
    close_tunnels: CancellationToken,
}

impl Node {
    pub fn new(
        membership: Membership,
        cluster_secret: Option<ClusterSecret>,
        timeouts: Timeouts,
        deny: DenyList,
        sealer: Option<Sealer>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                membership,
                local: LocalTunnels::default(),
                forwarder: Forwarder::new(cluster_secret.clone()),
                cluster_secret,
                timeouts,
                deny,
                sealer,
                revocations: Revocations::default(),
                tunnels: TaskTracker::new(),
                refusing: CancellationToken::new(),
                close_tunnels: CancellationToken::new(),
            }),
        }
    }

    pub fn membership(&self) -> &Membership {
        &self.inner.membership
    }

    pub fn forwarder(&self) -> &Forwarder {
        &self.inner.forwarder
    }

    pub fn cluster_secret(&self) -> Option<&ClusterSecret> {
        self.inner.cluster_secret.as_ref()
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.inner.timeouts
    }

    /// Where `session`'s target may not lead: the operator's deny list for a tenant's session, nothing for
    /// the operator's own.
    pub fn deny_for(&self, session: &Session) -> &DenyList {
        static TRUSTED: DenyList = DenyList::new_const();
        match session.trusted_target {
            true => &TRUSTED,
            false => &self.inner.deny,
        }
    }

    /// This node's own tunnels.
    pub fn local(&self) -> &LocalTunnels {
        &self.inner.local
    }

    /// From now on, new tunnels are refused, with a status that says to try again (elsewhere).
    pub fn refuse_new_tunnels(&self) {
        self.inner.refusing.cancel();
    }

    /// Whether the node has been told to stop (it is not ready from then on).
    pub fn draining(&self) -> bool {
        self.inner.tunnels.is_closed()
    }

    /// Cancelled when the node closes its remaining tunnels.
    pub fn closing(&self) -> &CancellationToken {
        &self.inner.close_tunnels
    }

    /// Whether this node can take new tunnels now: it is not stopping, its lease runs, and the registry
    /// answers within its deadline (every server of a Cluster); otherwise why not.
    pub async fn ready(&self) -> Result<(), NotReady> {
        if self.draining() {
            return Err(NotReady::Draining);
        }
        if !self.inner.membership.lease_held() {
            return Err(NotReady::LeaseNotHeld);
        }
        match self.inner.membership.registry().server_runs().await {
            Ok(_) => Ok(()),
            Err(_) => Err(NotReady::RegistryUnavailable),
        }
    }

    /// The tunnels' tasks, which a stop waits for.
    pub fn tunnels(&self) -> &TaskTracker {
        &self.inner.tunnels
    }

    /// What this node's tunnels of `sessions` have moved.
    pub fn traffic(&self, sessions: &[SessionId]) -> TrafficAnswer {
        let tunnels = self.inner.local.traffic(sessions).into_iter();
        let tunnels = tunnels.map(|(id, (to_upstream, from_upstream))| {
            let report = TrafficReport {
                to_upstream,
                from_upstream,
            };
            (id, report)
        });
        TrafficAnswer {
            tunnels: tunnels.collect(),
        }
    }

    /// Registers a tunnel this node now owns, within its tenant's quota (see [`Registration::open`]).
    pub async fn register(
        &self,
        tunnel: Tunnel,
        session: &Session,
    ) -> Result<Registration, TunnelError> {
        let inner = &self.inner;
        Registration::open(
            &inner.membership,
            &inner.local,
            &inner.close_tunnels,
            tunnel,
            session,
        )
        .await
    }

    /// Runs a tunnel as a tracked task, so that a stop waits for it.
    pub fn spawn_tunnel<F>(&self, tunnel: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.tunnels.spawn(tunnel);
    }

    /// Wraps a tunnel future that something else spawns (axum spawns WebSocket upgrades).
    pub fn track_tunnel<F: Future>(&self, tunnel: F) -> TrackedFuture<F> {
        self.inner.tunnels.track_future(tunnel)
    }

    /// The revocations this node remembers, when it opens sealed tokens (with no sealer, a revoked
    /// token's record is simply gone).
    pub fn revocations(&self) -> Option<&Revocations> {
        self.inner.sealer.as_ref().map(|_| &self.inner.revocations)
    }

    /// The live session a connect request's token grants.
    pub async fn session(&self, token: Option<&SessionToken>) -> Result<Session, TunnelError> {
        if self.inner.refusing.is_cancelled() || self.inner.close_tunnels.is_cancelled() {
            return Err(TunnelError::ShuttingDown);
        }
        let token = token.ok_or(TunnelError::MissingToken)?;
        let session = match self.inner.membership.registry().session(token).await? {
            Some(session) => Some(session),
            None => self.unsealed(token).await?,
        };
        session
            .filter(|session| !session.is_expired(SystemTime::now()))
            .ok_or(TunnelError::BadToken)
    }

    /// The session a sealed token carries, when the registry does not know it (it lost its data): unless
    /// it expired or was revoked (as the registry or this node remembers). Its record is written back, so
    /// that the control plane lists it, and can revoke it, again.
    async fn unsealed(&self, token: &SessionToken) -> Result<Option<Session>, TunnelError> {
        let Some(session) = self.inner.sealer.as_ref().and_then(|s| s.open(token)) else {
            return Ok(None);
        };
        let registry = self.inner.membership.registry();
        let id = std::slice::from_ref(&session.id);
        let revoked = async { Ok::<_, TunnelError>(!registry.revoked(id).await?.is_empty()) };
        if session.is_expired(SystemTime::now())
            || self.inner.revocations.contains(&session.id)
            || revoked.await?
        {
            return Ok(None);
        }
        registry.put_session(token, &session).await?;
        // A revocation that came while it was written back wins.
        if !registry.revoked(id).await?.is_empty() {
            registry.revoke(&session.id).await?;
            return Ok(None);
        }
        info!(session = %session.id, "a sealed token's session was not in the registry; written back");
        Ok(Some(session))
    }
}
