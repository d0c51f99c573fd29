//! A node's life: [`start`] brings up everything a node runs (the demo desktop, the sessions it was given,
//! its listeners, its lease in the cluster, the registry's sweep, the control channel) and returns a
//! [`NodeHandle`]; [`NodeHandle::stop`] takes it down in the order docs/lifecycle.md describes, and says
//! whether it stopped cleanly. The binary reads flags and calls these; a test can run a node in its own
//! process.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use deskbroker_broker::process::{StopError, Tasks};
use deskbroker_broker::restore;
use deskbroker_broker::sweep::sweep;
use deskbroker_broker::{Membership, Registry, RegistryError};

use crate::config::Config;
use crate::control;
use crate::defaults::{CLOSE_TIMEOUT, STOP_TIMEOUT};
use crate::http_tunnel::HttpTunnels;
use crate::listener;
use crate::node::Node;
use crate::server::{self, Routes};
use crate::standalone::{self, StandaloneError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("storing sessions: {0}")]
    Sessions(RegistryError),
    #[error("joining the cluster: {0}")]
    Join(RegistryError),
    #[error(transparent)]
    Standalone(#[from] StandaloneError),
}

/// A running node.
pub struct NodeHandle {
    node: Node,
    addr: SocketAddr,
    peer_addr: Option<SocketAddr>,
    ops_addr: Option<SocketAddr>,
    /// Stops the browser listener.
    stop_accepting: CancellationToken,
    /// Ends the lease: the node leaves the cluster.
    leave: CancellationToken,
    /// Stops the demo desktop.
    stop_demo: CancellationToken,
    tasks: Tasks,
}

/// Starts a node on `registry` (in-memory for a node alone, Redis for a cluster).
pub async fn start(registry: Arc<dyn Registry>, config: Config) -> Result<NodeHandle, StartError> {
    let mut tasks = Tasks::default();
    let mut routes = Router::new();
    let mut sessions = config.sessions;
    let stop_demo = CancellationToken::new();
    if config.demo {
        let demo = standalone::start_demo(&mut sessions, stop_demo.clone()).await?;
        let serve = demo.serve;
        tasks.spawn("the demo desktop", async move {
            serve.await;
            Ok(())
        });
        routes = demo.routes;
    }
    // The session file's sessions (and the demo's) come back by themselves if the registry loses them.
    let marker = format!("sessions:{}", config.node_id);
    let sessions = Arc::new(sessions);
    let mut write_sessions = {
        let (registry, sessions) = (registry.clone(), sessions.clone());
        move || {
            let (registry, sessions) = (registry.clone(), sessions.clone());
            async move {
                for (token, session) in sessions.iter() {
                    registry.put_session(token, session).await?;
                }
                Ok(())
            }
        }
    };
    if !sessions.is_empty() {
        restore::write(registry.as_ref(), &marker, &mut write_sessions)
            .await
            .map_err(StartError::Sessions)?;
    }

    let listener = bind(config.listen).await?;
    let peer_listener = bind_if(config.peer_listen).await?;
    let ops_listener = bind_if(config.ops_listen).await?;
    let addr = local_addr(&listener, config.listen)?;
    let peer_addr = peer_listener.as_ref().map(|(_, addr)| *addr);
    let ops_addr = ops_listener.as_ref().map(|(_, addr)| *addr);
    let peer_url = match (config.advertise, peer_addr) {
        (Some(url), _) => url,
        (None, Some(peer_addr)) => format!("http://{peer_addr}"),
        (None, None) => String::new(),
    };
    let membership = Membership::new(registry, config.node_id, peer_url, config.lease);
    membership.join().await.map_err(StartError::Join)?;
    let node = Node::new(
        membership.clone(),
        config.cluster_secret,
        config.timeouts,
        config.upstream_deny,
        config.sealer,
    );
    // The lease outlives the listeners: tunnels draining are still owned, and found, until they end.
    let leave = CancellationToken::new();
    if !sessions.is_empty() {
        let kept = restore::keep(
            membership.registry().clone(),
            marker,
            leave.clone(),
            write_sessions,
        );
        tasks.spawn("the session file's sessions", async move {
            kept.await;
            Ok(())
        });
    }
    // Revocations of sealed tokens go back into a registry that lost them.
    if node.revocations().is_some() {
        let marker = format!("revocations:{}", node.membership().me().id);
        let registry = node.membership().registry().clone();
        let node = node.clone();
        let write = move || {
            let node = node.clone();
            async move {
                let registry = node.membership().registry();
                for (session, until) in node.revocations().map(|r| r.all()).unwrap_or_default() {
                    registry.put_revocation(&session, until).await?;
                }
                Ok(())
            }
        };
        let kept = restore::keep(registry, marker, leave.clone(), write);
        tasks.spawn("the remembered revocations", async move {
            kept.await;
            Ok(())
        });
    }
    // The registry's upkeep: a node alone holds its sessions in memory, and they expire only by this.
    tasks.spawn("the registry sweep", {
        let (registry, leave) = (membership.registry().clone(), leave.clone());
        async move {
            sweep(registry, leave).await;
            Ok(())
        }
    });
    tasks.spawn("the lease", {
        let (node, leave) = (node.clone(), leave.clone());
        async move {
            let evict = |tunnel: &_| node.local().evict(tunnel);
            node.membership().run(leave, evict).await;
            Ok(())
        }
    });
    if let Some(plane) = config.control_plane {
        routes = routes.merge(standalone::control_plane(&node, plane, config.demo).await?);
    }
    let state = Routes {
        node: node.clone(),
        http_tunnels: HttpTunnels::default(),
    };
    let app = server::public(state.clone(), config.web_dir.as_deref()).merge(routes);
    let stop_accepting = CancellationToken::new();
    let header_timeout = config.connections.header_timeout;
    let browsers = listener::serve(listener, app, config.connections, stop_accepting.clone());
    tasks.spawn("the browser listener", browsers);
    tasks.spawn("the control channel", control::follow(node.clone()));
    if let Some((ops_listener, ops_addr)) = ops_listener {
        // The probes answer until the very end, so that a draining node is seen draining.
        let limits = listener::for_peers(header_timeout);
        let ops = listener::serve(
            ops_listener,
            server::ops(state.clone(), config.metrics_tenants),
            limits,
            leave.clone(),
        );
        tasks.spawn("the ops listener", ops);
        info!(addr = %ops_addr, "ops listening");
    }
    if let Some((peer_listener, peer_addr)) = peer_listener {
        // Peers keep forwarding to this node's tunnels while they drain, so this listener stops with them.
        let limits = listener::for_peers(header_timeout);
        let peers = listener::serve(
            peer_listener,
            server::peers(state),
            limits,
            node.closing().clone(),
        );
        tasks.spawn("the peer listener", peers);
        info!(addr = %peer_addr, url = %membership.me().peer_url, "peer listening");
    }
    info!(%addr, node = %membership.me().id, "listening");
    Ok(NodeHandle {
        node,
        addr,
        peer_addr,
        ops_addr,
        stop_accepting,
        leave,
        stop_demo,
        tasks,
    })
}

impl NodeHandle {
    /// The browser listener's address (the port chosen, when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer listener's address, if the node has one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The ops listener's address, if the node has one.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Stops the node: not ready at once, while it goes on serving for the drain grace; then new tunnels
    /// are refused (try again elsewhere), no new connections are accepted, and the owners of the reads it
    /// forwards are asked to end them; its own tunnels get the drain timeout to end by themselves, then
    /// the rest are closed with a status that says to try again; the peer listener and the control
    /// channel stop with them; the node leaves the cluster; the demo desktop stops. An error says what
    /// did not stop in time (it was cut short) or failed.
    pub async fn stop(self) -> Result<(), StopError> {
        // Not ready first (`/readyz`, and `/healthz` on the browser listener, answer 503 from here on),
        // while load balancers take the node out of rotation.
        let tunnels = self.node.tunnels();
        tunnels.close();
        info!(grace = ?self.node.timeouts().drain_grace, "not ready; serving on while load balancers notice");
        tokio::time::sleep(self.node.timeouts().drain_grace).await;
        self.node.refuse_new_tunnels();
        self.stop_accepting.cancel();
        self.node.forwarder().release_reads().await;
        info!(open = tunnels.len(), "draining tunnels");
        let mut left = None;
        if timeout(self.node.timeouts().drain, tunnels.wait())
            .await
            .is_err()
        {
            info!(
                open = tunnels.len(),
                "drain deadline passed, closing tunnels"
            );
            self.node.closing().cancel();
            if timeout(CLOSE_TIMEOUT, tunnels.wait()).await.is_err() {
                warn!(open = tunnels.len(), "tunnels still open at exit");
                left = Some(StopError::TunnelsLeft {
                    open: tunnels.len(),
                });
            }
        }
        self.node.closing().cancel();
        self.leave.cancel();
        self.stop_demo.cancel();
        let stopped = self.tasks.join(STOP_TIMEOUT).await;
        left.map_or(stopped, Err)
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Binds `asked`, if the node was given one, with the address it got (the port chosen, for port 0).
async fn bind_if(
    asked: Option<SocketAddr>,
) -> Result<Option<(TcpListener, SocketAddr)>, StartError> {
    let Some(asked) = asked else {
        return Ok(None);
    };
    let listener = bind(asked).await?;
    let addr = local_addr(&listener, asked)?;
    Ok(Some((listener, addr)))
}

fn local_addr(listener: &TcpListener, asked: SocketAddr) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        addr: asked,
        source,
    })
}
