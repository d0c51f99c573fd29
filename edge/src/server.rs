//! The edge node: one listener serving the three browser-facing tunnels, and the order in which it stops.
//!
//! [`Edge`] is the shared state, a cheap `Clone` handle. Tunnels run as tasks on a [`TaskTracker`] of
//! their own, because axum's graceful shutdown does not wait for upgraded WebSockets; every tunnel also
//! watches the `close_tunnels` token, which ends it with a status the browser understands. docs/lifecycle.md
//! describes the stop sequence.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use deskbroker_broker::Membership;
use deskbroker_shared::cluster::{ControlEvent, TunnelKind, TunnelRecord};
use deskbroker_shared::ids::{ClusterSecret, SessionId, SessionToken, TokenDigest, TunnelId};
use deskbroker_shared::peer::TrafficReport;
use deskbroker_shared::session::Session;
use deskbroker_shared::time::unix_ms;

use crate::defaults::{CLOSE_TIMEOUT, CONTROL_RETRY};
use crate::error::TunnelError;
use crate::forward::Forwarder;
use crate::http_tunnel::{self, HttpTunnels};
use crate::local::{LocalTunnel, LocalTunnels};
use crate::{websockify, ws_tunnel};

/// What the edge needs to know beyond its listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP tunnels without a request for this long are closed.
    pub http_tunnel_timeout: Duration,
    /// How long a stop waits for tunnels to end by themselves.
    pub drain_timeout: Duration,
    /// The built web client page, served at `/`.
    pub web_dir: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_tunnel_timeout: crate::defaults::HTTP_TUNNEL_TIMEOUT,
            drain_timeout: crate::defaults::DRAIN_TIMEOUT,
            web_dir: None,
        }
    }
}

#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

struct Inner {
    membership: Membership,
    local: LocalTunnels,
    forwarder: Forwarder,
    cluster_secret: Option<ClusterSecret>,
    config: Config,
    tunnels: TaskTracker,
    close_tunnels: CancellationToken,
    http_tunnels: HttpTunnels,
}

impl Edge {
    pub fn new(
        membership: Membership,
        cluster_secret: Option<ClusterSecret>,
        config: Config,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                membership,
                local: LocalTunnels::default(),
                forwarder: Forwarder::new(cluster_secret.clone()),
                cluster_secret,
                config,
                tunnels: TaskTracker::new(),
                close_tunnels: CancellationToken::new(),
                http_tunnels: HttpTunnels::default(),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Cancelled when the node closes its remaining tunnels.
    pub fn closing(&self) -> &CancellationToken {
        &self.inner.close_tunnels
    }

    pub fn http_tunnels(&self) -> &HttpTunnels {
        &self.inner.http_tunnels
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

    /// What one of this node's tunnels has moved.
    pub fn traffic(&self, session: &SessionId, tunnel: &TunnelId) -> Option<TrafficReport> {
        let (to_upstream, from_upstream) = self.inner.local.traffic(session, tunnel)?;
        Some(TrafficReport {
            to_upstream,
            from_upstream,
        })
    }

    /// Forgets a tunnel that has ended here.
    pub async fn forget_tunnel(&self, tunnel: &LocalTunnel) {
        self.inner.local.remove(tunnel);
        self.inner.membership.remove_tunnel(&tunnel.record.id).await;
    }

    /// Records a tunnel this node now owns, so that any node can find it, and returns it with what stops
    /// it. Refuses the tunnel when its tenant has no slot left, or the registry cannot record it. A
    /// tunnel of an exclusive session takes over: the session's older tunnels are closed, wherever they are.
    pub async fn record_tunnel(
        &self,
        id: TunnelId,
        kind: TunnelKind,
        session: &Session,
        http_token: Option<TokenDigest>,
        connection: Option<String>,
    ) -> Result<LocalTunnel, TunnelError> {
        let registry = self.inner.membership.registry();
        // Sessions of a tenant without a record (a session file's) have no limit.
        if let Some(tenant) = registry.tenant(&session.tenant).await?
            && !registry
                .reserve_slot(&tenant.id, &id, tenant.limits.max_tunnels)
                .await?
        {
            return Err(TunnelError::TooMany);
        }
        let me = self.inner.membership.me();
        let record = TunnelRecord {
            id,
            owner: me.id.clone(),
            incarnation: me.incarnation,
            tenant: session.tenant.clone(),
            session: session.id.clone(),
            kind,
            created_ms: unix_ms(SystemTime::now()),
            http_token,
            connection,
        };
        if let Err(error) = self.inner.membership.add_tunnel(record.clone()).await {
            let _ = registry.remove_tunnel(&record).await;
            return Err(error.into());
        }
        let tunnel = self.inner.local.insert(record, &self.inner.close_tunnels);
        if session.exclusive {
            self.take_over(&tunnel.record).await?;
        }
        Ok(tunnel)
    }

    /// Closes the older tunnels of this tunnel's (exclusive) session. Only older ones: of two connections
    /// racing, the newer wins on every node.
    async fn take_over(&self, newest: &TunnelRecord) -> Result<(), TunnelError> {
        let registry = self.inner.membership.registry();
        let age = |t: &TunnelRecord| (t.created_ms, t.id);
        for older in registry.session_tunnels(&newest.session).await? {
            if age(&older) < age(newest) {
                let event = ControlEvent::TakenOver {
                    session: older.session.clone(),
                    tunnel: older.id,
                };
                registry.publish(&event).await?;
            }
        }
        Ok(())
    }

    /// Runs a tunnel as a tracked task, so that a stop waits for it.
    pub fn spawn_tunnel<F>(&self, tunnel: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.tunnels.spawn(tunnel);
    }

    /// Wraps a tunnel future that something else spawns (axum spawns WebSocket upgrades).
    pub fn track_tunnel<F: Future>(
        &self,
        tunnel: F,
    ) -> tokio_util::task::task_tracker::TrackedFuture<F> {
        self.inner.tunnels.track_future(tunnel)
    }

    /// The live session a connect request's token grants.
    pub async fn session(&self, token: Option<&SessionToken>) -> Result<Session, TunnelError> {
        if self.inner.close_tunnels.is_cancelled() {
            return Err(TunnelError::ShuttingDown);
        }
        let token = token.ok_or(TunnelError::MissingToken)?;
        let session = self.inner.membership.registry().session(token).await?;
        session
            .filter(|session| !session.is_expired(SystemTime::now()))
            .ok_or(TunnelError::BadToken)
    }
}

pub fn router(edge: Edge) -> Router {
    let router = Router::new()
        .route("/websockify", any(websockify::handle))
        .route("/websocket-tunnel", any(ws_tunnel::handle))
        .route("/tunnel", any(http_tunnel::handle))
        .route("/healthz", get(|| async { "ok" }))
        .route("/client/session", get(crate::page::session));
    crate::page::with_files(router, edge.config().web_dir.as_deref()).with_state(edge)
}

/// Acts on the control channel (a revoked session's tunnels close) until the node closes its tunnels;
/// subscribes again whenever the subscription breaks, then closes what was revoked meanwhile.
async fn follow_control(edge: Edge) {
    let registry = edge.membership().registry().clone();
    while !edge.closing().is_cancelled() {
        let subscribed = match registry.subscribe().await {
            Ok(events) => close_revoked(&edge).await.map(|()| events),
            Err(error) => Err(error),
        };
        let mut events = match subscribed {
            Ok(events) => events,
            Err(error) => {
                warn!(%error, "control channel unavailable; retrying");
                tokio::select! {
                    () = tokio::time::sleep(CONTROL_RETRY) => continue,
                    () = edge.closing().cancelled() => return,
                }
            }
        };
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = edge.closing().cancelled() => return,
            };
            match event {
                Some(ControlEvent::SessionClosed { session }) => {
                    edge.inner.local.close_session(&session)
                }
                Some(ControlEvent::TakenOver { session, tunnel }) => {
                    edge.inner.local.take_over(&session, &tunnel)
                }
                None => break,
            }
        }
    }
}

/// Closes the tunnels of sessions revoked while this node was not listening (it was cut off from Redis):
/// the control channel keeps nothing for a subscriber that was away, but the registry remembers.
async fn close_revoked(edge: &Edge) -> deskbroker_broker::Result<()> {
    let sessions = edge.inner.local.sessions();
    for session in edge.membership().registry().revoked(&sessions).await? {
        edge.inner.local.close_session(&session);
    }
    Ok(())
}

/// Sends small writes at once: a keystroke's echo or a frame's last bytes must not wait, under Nagle's
/// algorithm, for the ACK of what went before (up to the peer's 40 ms delayed ACK).
fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%error, "TCP_NODELAY not set");
    }
}

/// Serves until `shutdown` is cancelled, then stops: no new connections, tunnels get the drain timeout to
/// end by themselves, the rest are closed with a status, and the function returns.
pub async fn run(
    listener: TcpListener,
    peer_listener: Option<TcpListener>,
    edge: Edge,
    extra_routes: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(edge.clone()).merge(extra_routes);
    let server = axum::serve(listener.tap_io(no_delay), app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let server = tokio::spawn(server.into_future());
    tokio::spawn(follow_control(edge.clone()));
    if let Some(peer_listener) = peer_listener {
        // Peers keep forwarding to this node's tunnels while they drain, so this listener stops with them.
        let peers = axum::serve(
            peer_listener.tap_io(no_delay),
            crate::peer::router(edge.clone()),
        )
        .with_graceful_shutdown(edge.closing().clone().cancelled_owned());
        tokio::spawn(peers.into_future());
    }

    shutdown.cancelled().await;
    let tunnels = &edge.inner.tunnels;
    tunnels.close();
    info!(open = tunnels.len(), "draining tunnels");
    if tokio::time::timeout(edge.config().drain_timeout, tunnels.wait())
        .await
        .is_err()
    {
        info!(
            open = tunnels.len(),
            "drain deadline passed, closing tunnels"
        );
        edge.inner.close_tunnels.cancel();
        if tokio::time::timeout(CLOSE_TIMEOUT, tunnels.wait())
            .await
            .is_err()
        {
            warn!(open = tunnels.len(), "tunnels still open at exit");
        }
    }
    edge.inner.close_tunnels.cancel();
    match tokio::time::timeout(CLOSE_TIMEOUT, server).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(std::io::Error::other(panic)),
        Err(_) => Ok(()),
    }
}
