//! `deskbroker-edge`'s command-line flags, each with a `DESKBROKER_*` environment equivalent, and how they
//! become a [`Config`]. Parsed by the binary's `main`, the only place the edge reads its environment.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;

use deskbroker_broker::config::BrokerConfig;
use deskbroker_broker::process::LogArgs;
use deskbroker_shared::cidr::Cidr;
use deskbroker_shared::ids::{ClusterSecret, NodeId, SessionToken, TokenDigest};
use deskbroker_shared::seal::{self, SealKey};
use deskbroker_shared::session::Session;

use crate::config::{Config, Connections, ControlPlane, Timeouts};
use crate::defaults;
use crate::deny::DenyList;

#[derive(Debug, Parser)]
#[command(
    name = "deskbroker-edge",
    version,
    about = "deskbroker's data-plane node"
)]
pub struct Args {
    /// Address for browser connections.
    #[arg(long, env = "DESKBROKER_LISTEN", default_value_t = defaults::LISTEN)]
    pub listen: SocketAddr,

    /// Session file: one `<token>: <target>` per line (docs/sessions.md).
    #[arg(long, env = "DESKBROKER_SESSIONS")]
    pub sessions: Option<PathBuf>,

    /// Start the built-in demo desktop on loopback and serve it as the session with token `demo`.
    #[arg(long, env = "DESKBROKER_DEMO")]
    pub demo: bool,

    /// Control-plane configuration (tenants, guacd pools); a node without Redis serves the control-plane API
    /// itself (docs/control-plane.md).
    #[arg(long, env = "DESKBROKER_CONFIG")]
    pub config: Option<PathBuf>,

    /// The control plane's admin key; prefer the variable.
    #[arg(long, env = "DESKBROKER_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// The built web client page (`web/dist`, made by `npm run build` in `web/`), served at `/`.
    #[arg(long, env = "DESKBROKER_WEB_DIR")]
    pub web_dir: Option<PathBuf>,

    #[command(flatten)]
    pub log: LogArgs,

    /// Redis holding the cluster's registry: `redis://host:port`, `redis+cluster://host:port[,…]` for a
    /// Redis Cluster, or `redis+sentinel://host:port[,…]/<master name>` for a Redis behind Sentinel.
    /// Without it the node runs alone with an in-memory registry.
    #[arg(long = "redis", env = "DESKBROKER_REDIS_URL")]
    pub redis_url: Option<String>,

    /// This node's name in the cluster (default: $HOSTNAME, the pod name on Kubernetes).
    #[arg(long, env = "DESKBROKER_NODE_ID")]
    pub node_id: Option<String>,

    /// Address for requests forwarded by other nodes.
    #[arg(long, env = "DESKBROKER_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,

    /// Address for the probes (`/healthz`, `/readyz`), apart from browsers and peers.
    #[arg(long, env = "DESKBROKER_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,

    /// URL other nodes use to reach the peer listener (default: http://<peer listen address>).
    #[arg(long, env = "DESKBROKER_ADVERTISE")]
    pub advertise: Option<String>,

    /// Secret every node of the cluster shares; peer requests without it are refused.
    #[arg(long, env = "DESKBROKER_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// Keys that open sealed session tokens (Base64 of 32 bytes each, comma-separated), the broker's
    /// (docs/reliability.md); without them, the cluster secret's derived key. Prefer the variable.
    #[arg(long, env = "DESKBROKER_SESSION_KEYS", hide_env_values = true, value_parser = session_keys)]
    pub session_keys: Option<SessionKeys>,

    /// How long a silent node keeps its lease, and its tunnels (e.g. `10s`).
    #[arg(long, env = "DESKBROKER_LEASE", default_value_t = defaults::LEASE.into())]
    pub lease: humantime::Duration,

    /// Close an HTTP tunnel after this long without a request (e.g. `15s`).
    #[arg(long, env = "DESKBROKER_HTTP_TUNNEL_TIMEOUT",
          default_value_t = defaults::HTTP_TUNNEL_TIMEOUT.into())]
    pub http_tunnel_timeout: humantime::Duration,

    /// On stop, how long to go on serving, not ready, while load balancers take the node out (e.g. `2s`).
    #[arg(long, env = "DESKBROKER_DRAIN_GRACE", default_value_t = defaults::DRAIN_GRACE.into())]
    pub drain_grace: humantime::Duration,

    /// On stop, how long to wait for tunnels to end before closing them (e.g. `10s`).
    #[arg(long, env = "DESKBROKER_DRAIN_TIMEOUT", default_value_t = defaults::DRAIN_TIMEOUT.into())]
    pub drain_timeout: humantime::Duration,

    /// How long a VNC server may take, once it accepted the connection, to send its greeting (e.g. `10s`).
    #[arg(long, env = "DESKBROKER_VNC_GREETING_TIMEOUT",
          default_value_t = defaults::VNC_GREETING_TIMEOUT.into())]
    pub vnc_greeting_timeout: humantime::Duration,

    /// Close a browser's WebSocket after this long without a frame from it; it is pinged meanwhile, and
    /// a browser that is there answers (e.g. `30s`).
    #[arg(long, env = "DESKBROKER_BROWSER_LIVENESS_TIMEOUT",
          default_value_t = defaults::BROWSER_LIVENESS_TIMEOUT.into())]
    pub browser_liveness_timeout: humantime::Duration,

    /// Tenants given a series of their own in the per-tenant tunnel gauge, the most loaded first (the
    /// rest summed as "other"); 0 (the default) for none.
    #[arg(long, env = "DESKBROKER_METRICS_TENANTS", default_value_t = 0)]
    pub metrics_tenants: usize,

    /// How long a client may take to send a request's headers, the first request's included.
    #[arg(long, env = "DESKBROKER_HEADER_TIMEOUT", default_value_t = defaults::HEADER_TIMEOUT.into())]
    pub header_timeout: humantime::Duration,

    /// Open browser connections at most, WebSockets included (default: half the descriptor limit, less a
    /// reserve: each tunnel holds two descriptors).
    #[arg(long, env = "DESKBROKER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Open browser connections at most from one client address.
    #[arg(long, env = "DESKBROKER_MAX_CONNECTIONS_PER_CLIENT",
          default_value_t = defaults::MAX_CONNECTIONS_PER_CLIENT)]
    pub max_connections_per_client: usize,

    /// Load balancers or proxies in front of the node (addresses or CIDR blocks, comma-separated): their
    /// connections carry many clients, so only --max-connections applies to them.
    #[arg(
        long = "trusted-proxy",
        env = "DESKBROKER_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<Cidr>,

    /// Where tenants' sessions may not lead, whatever their policies allow (comma-separated): address
    /// blocks, and `loopback`, `link-local` (cloud metadata services), `own` (this node's addresses).
    /// Names are resolved when a tunnel connects. --demo takes loopback off the list.
    #[arg(
        long,
        env = "DESKBROKER_UPSTREAM_DENY",
        value_delimiter = ',',
        default_value = "loopback,link-local,own"
    )]
    pub upstream_deny: Vec<DenyEntry>,
}

/// One entry of `--upstream-deny`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyEntry {
    Loopback,
    LinkLocal,
    /// The node's own addresses, as its interfaces have them at start.
    Own,
    Block(Cidr),
}

impl FromStr for DenyEntry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text.trim() {
            "loopback" => Self::Loopback,
            "link-local" => Self::LinkLocal,
            "own" => Self::Own,
            block => Self::Block(block.parse().map_err(|error| format!("{error}"))?),
        })
    }
}

impl DenyEntry {
    fn blocks(&self, host: &Host) -> Vec<Cidr> {
        let parse = |blocks: &[&str]| blocks.iter().filter_map(|b| b.parse().ok()).collect();
        match self {
            Self::Loopback => parse(&["127.0.0.0/8", "::1/128"]),
            Self::LinkLocal => parse(&["169.254.0.0/16", "fe80::/10"]),
            // The unspecified addresses reach the node itself too.
            Self::Own => host
                .addresses
                .iter()
                .map(|ip| Cidr::host(*ip))
                .chain(parse(&["0.0.0.0/32", "::/128"]))
                .collect(),
            Self::Block(block) => vec![*block],
        }
    }
}

/// What `main` learns of the machine the node runs on.
#[derive(Debug, Default)]
pub struct Host {
    /// `$HOSTNAME`: the node's id when none is given (the pod name on Kubernetes).
    pub name: Option<String>,
    /// The limit on open descriptors.
    pub descriptors: u64,
    /// The addresses of its network interfaces.
    pub addresses: Vec<IpAddr>,
}

/// The keys of `--session-keys`, parsed as the flags are.
#[derive(Debug, Clone)]
pub struct SessionKeys(Vec<SealKey>);

fn session_keys(text: &str) -> Result<SessionKeys, String> {
    seal::parse_keys(text)
        .map(SessionKeys)
        .map_err(|error| error.to_string())
}

impl Args {
    /// The node's configuration: the flags, with what `main` read from the session and configuration files
    /// and learnt of the host.
    pub fn into_config(
        self,
        sessions: Vec<(SessionToken, Session)>,
        broker: BrokerConfig,
        host: &Host,
    ) -> Config {
        let defaults = Connections::for_descriptors(host.descriptors);
        let loopback = DenyEntry::Loopback.blocks(host);
        let upstream_deny = self
            .upstream_deny
            .iter()
            .flat_map(|entry| entry.blocks(host))
            // The demo is for trying deskbroker out on one machine.
            .filter(|block| !self.demo || !loopback.iter().any(|l| l.contains_block(block)))
            .collect();
        let connections = Connections {
            header_timeout: self.header_timeout.into(),
            max: self.max_connections.unwrap_or(defaults.max),
            per_client: self.max_connections_per_client,
            trusted_proxies: self.trusted_proxies,
        };
        let node_id = self
            .node_id
            .or_else(|| host.name.clone())
            .unwrap_or_else(|| format!("edge-{}", uuid::Uuid::new_v4()));
        // In a cluster the control plane is deskbroker-broker's; alone, the node serves it itself.
        let control_plane = self.redis_url.is_none().then(|| ControlPlane {
            config: broker,
            admin_key: self.admin_key.as_deref().map(TokenDigest::of),
        });
        Config {
            listen: self.listen,
            peer_listen: self.peer_listen,
            ops_listen: self.ops_listen,
            advertise: self.advertise,
            node_id: NodeId::new(node_id),
            lease: self.lease.into(),
            sealer: seal::configured(
                self.session_keys.as_ref().map(|keys| keys.0.as_slice()),
                self.cluster_secret.as_deref(),
            ),
            cluster_secret: self.cluster_secret.map(ClusterSecret::new),
            sessions,
            demo: self.demo,
            control_plane,
            web_dir: self.web_dir,
            timeouts: Timeouts {
                http_tunnel: self.http_tunnel_timeout.into(),
                drain_grace: self.drain_grace.into(),
                drain: self.drain_timeout.into(),
                vnc_greeting: self.vnc_greeting_timeout.into(),
                browser_liveness: self.browser_liveness_timeout.into(),
            },
            connections,
            upstream_deny: DenyList::new(upstream_deny),
            metrics_tenants: self.metrics_tenants,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pod() -> Host {
        Host {
            name: Some("pod-7".into()),
            descriptors: 4096,
            addresses: vec!["10.1.2.3".parse().unwrap(), "127.0.0.1".parse().unwrap()],
        }
    }

    fn config(args: &[&str]) -> Config {
        let args = Args::try_parse_from(args).unwrap();
        args.into_config(Vec::new(), BrokerConfig::default(), &pod())
    }

    #[test]
    fn the_deny_list_names_loopback_link_local_and_the_nodes_addresses() {
        let deny = config(&["edge"]).upstream_deny;
        for denied in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "fe80::1",
            "10.1.2.3",
            "0.0.0.0",
        ] {
            assert!(deny.denies(denied.parse().unwrap()), "{denied}");
        }
        assert!(!deny.denies("10.1.2.4".parse().unwrap()));

        let demo = config(&["edge", "--demo"]).upstream_deny;
        assert!(
            !demo.denies("127.0.0.1".parse().unwrap()),
            "the demo reaches loopback"
        );
        assert!(demo.denies("169.254.169.254".parse().unwrap()));

        let chosen = config(&["edge", "--upstream-deny", "192.0.2.0/24,link-local"]).upstream_deny;
        assert!(chosen.denies("192.0.2.9".parse().unwrap()));
        assert!(!chosen.denies("127.0.0.1".parse().unwrap()));
        assert!(Args::try_parse_from(["edge", "--upstream-deny", "nowhere"]).is_err());
    }

    #[test]
    fn flags_parse() {
        let args = Args::try_parse_from([
            "edge",
            "--demo",
            "--http-tunnel-timeout",
            "2s",
            "--vnc-greeting-timeout",
            "500ms",
        ])
        .unwrap();
        assert!(args.demo);
        assert_eq!(*args.http_tunnel_timeout, Duration::from_secs(2));
        assert_eq!(*args.vnc_greeting_timeout, Duration::from_millis(500));
        assert_eq!(args.listen, defaults::LISTEN);
        assert!(Args::try_parse_from(["edge", "--listen", "nowhere"]).is_err());
    }

    #[test]
    fn defaults_come_from_the_defaults_module() {
        let args = Args::try_parse_from(["edge"]).unwrap();
        let config = args.into_config(Vec::new(), BrokerConfig::default(), &pod());
        assert_eq!(config.node_id, NodeId::new("pod-7"));
        assert_eq!(config.connections, Connections::for_descriptors(4096));
        assert_eq!(config.connections.max, (4096 - 64) / 2);
        assert_eq!(config.lease, defaults::LEASE);
        assert_eq!(config.timeouts, Timeouts::default());
        assert!(
            config.control_plane.is_some(),
            "alone, the node serves the API"
        );

        let args = Args::try_parse_from([
            "edge",
            "--redis",
            "redis://r",
            "--node-id",
            "a",
            "--trusted-proxy",
            "10.0.0.0/8,192.0.2.7",
        ])
        .unwrap();
        let config = args.into_config(Vec::new(), BrokerConfig::default(), &pod());
        assert_eq!(config.connections.trusted_proxies.len(), 2);
        assert_eq!(config.node_id, NodeId::new("a"));
        assert!(
            config.control_plane.is_none(),
            "in a cluster, the broker serves it"
        );
    }
}
