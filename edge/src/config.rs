//! What a node is told when it starts: typed values only. The binary builds a [`Config`] from its flags
//! and files (`flags.rs`); a test builds one directly. Nothing here reads the environment or a file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use deskbroker_broker::config::BrokerConfig;
use deskbroker_shared::cidr::Cidr;
use deskbroker_shared::ids::{ClusterSecret, NodeId, SessionToken, TokenDigest};
use deskbroker_shared::seal::Sealer;
use deskbroker_shared::session::Session;

use crate::defaults;
use crate::deny::DenyList;

#[derive(Debug)]
pub struct Config {
    /// Address for browser connections (port 0: any free port, reported by the running node).
    pub listen: SocketAddr,
    /// Address for requests forwarded by other nodes; none for a node that runs alone.
    pub peer_listen: Option<SocketAddr>,
    /// Address for the probes (`/healthz`, `/readyz`), apart from browsers; none: the browser listener's.
    pub ops_listen: Option<SocketAddr>,
    /// URL other nodes use to reach the peer listener (default: `http://<peer listen address>`).
    pub advertise: Option<String>,
    /// This node's unique name in the cluster.
    pub node_id: NodeId,
    /// How long after its last renewal a silent node is considered gone, with its tunnels.
    pub lease: Duration,
    /// The secret every node of the cluster shares; without it, peer requests are refused.
    pub cluster_secret: Option<ClusterSecret>,
    /// What opens sealed session tokens when the registry does not know them.
    pub sealer: Option<Sealer>,
    /// Sessions to store in the registry at start (a session file's).
    pub sessions: Vec<(SessionToken, Session)>,
    /// Serve the built-in demo desktop as the session with token `demo`.
    pub demo: bool,
    /// Serve the control-plane API on the browser listener: for a node without a separate broker.
    pub control_plane: Option<ControlPlane>,
    /// The built web client page, served at `/`.
    pub web_dir: Option<PathBuf>,
    pub timeouts: Timeouts,
    /// What the browser listener lets in.
    pub connections: Connections,
    /// Where tenants' sessions may not lead, whatever their policies allow.
    pub upstream_deny: DenyList,
    /// Tenants given a series of their own in `deskbroker_tenant_tunnels_open` (the most loaded first;
    /// the rest are summed as `other`): bounds the metric's cardinality. 0: no per-tenant series.
    pub metrics_tenants: usize,
}

/// What a listener lets in (`listener.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connections {
    /// How long a client may take to send a request's headers, the first request's included.
    pub header_timeout: Duration,
    /// Open connections at most, upgraded WebSockets included.
    pub max: usize,
    /// Open connections at most from one client address.
    pub per_client: usize,
    /// Proxies (load balancers) whose connections carry many clients: only `max` applies to them.
    pub trusted_proxies: Vec<Cidr>,
}

impl Connections {
    /// The defaults, for a node allowed `descriptors` open files: each tunnel holds two (the browser's
    /// socket and the upstream's).
    pub fn for_descriptors(descriptors: u64) -> Self {
        let max = descriptors.saturating_sub(defaults::DESCRIPTOR_RESERVE) / 2;
        Self {
            header_timeout: defaults::HEADER_TIMEOUT,
            max: usize::try_from(max.max(1)).unwrap_or(usize::MAX),
            per_client: defaults::MAX_CONNECTIONS_PER_CLIENT,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The control plane a node serves itself.
#[derive(Debug, Default)]
pub struct ControlPlane {
    /// Tenants to store at start, and guacd pools.
    pub config: BrokerConfig,
    /// SHA-256 of the admin key; without one, no caller is an administrator.
    pub admin_key: Option<TokenDigest>,
}

/// The deadlines an operator may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// HTTP tunnels without a request for this long are closed.
    pub http_tunnel: Duration,
    /// How long a stop goes on serving, not ready, before it refuses new tunnels.
    pub drain_grace: Duration,
    /// How long a stop waits for tunnels to end by themselves.
    pub drain: Duration,
    /// How long a VNC server may take, once connected, to send its greeting.
    pub vnc_greeting: Duration,
    /// How long a browser's WebSocket may go without a frame (it is pinged meanwhile) before it is
    /// taken for gone.
    pub browser_liveness: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            http_tunnel: defaults::HTTP_TUNNEL_TIMEOUT,
            drain_grace: defaults::DRAIN_GRACE,
            drain: defaults::DRAIN_TIMEOUT,
            vnc_greeting: defaults::VNC_GREETING_TIMEOUT,
            browser_liveness: defaults::BROWSER_LIVENESS_TIMEOUT,
        }
    }
}

impl Config {
    /// A node alone, on loopback with any free port, with nothing configured (nothing denied either): what a
    /// test starts from.
    pub fn alone(node_id: NodeId) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            peer_listen: None,
            ops_listen: None,
            advertise: None,
            node_id,
            lease: defaults::LEASE,
            cluster_secret: None,
            sealer: None,
            sessions: Vec::new(),
            demo: false,
            control_plane: None,
            web_dir: None,
            timeouts: Timeouts::default(),
            connections: Connections::for_descriptors(1024),
            upstream_deny: DenyList::default(),
            metrics_tenants: 0,
        }
    }
}
