//! Command-line flags, each with a `DESKBROKER_*` environment equivalent. This is the only place the edge
//! reads its environment; everything after it receives typed values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::defaults;

#[derive(Debug, Parser)]
#[command(
    name = "deskbroker-edge",
    version,
    about = "deskbroker's data-plane node"
)]
pub struct Args {
    /// Address for browser connections.
    #[arg(long, env = "DESKBROKER_LISTEN", default_value = defaults::LISTEN)]
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

    /// Log format.
    #[arg(long, env = "DESKBROKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Redis holding the cluster's registry: `redis://host:port`, or `redis+cluster://host:port[,…]` for a
    /// Redis Cluster. Without it the node runs alone with an in-memory registry.
    #[arg(long = "redis", env = "DESKBROKER_REDIS_URL")]
    pub redis_url: Option<String>,

    /// This node's name in the cluster (default: $HOSTNAME, the pod name on Kubernetes).
    #[arg(long, env = "DESKBROKER_NODE_ID")]
    pub node_id: Option<String>,

    /// Address for requests forwarded by other nodes.
    #[arg(long, env = "DESKBROKER_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,

    /// URL other nodes use to reach the peer listener (default: http://<peer listen address>).
    #[arg(long, env = "DESKBROKER_ADVERTISE")]
    pub advertise: Option<String>,

    /// Secret every node of the cluster shares; peer requests without it are refused.
    #[arg(long, env = "DESKBROKER_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// How long a silent node keeps its lease, and its tunnels (e.g. `10s`).
    #[arg(long, env = "DESKBROKER_LEASE", value_parser = humantime::parse_duration, default_value = "10s")]
    pub lease: Duration,

    /// Close an HTTP tunnel after this long without a request (e.g. `15s`).
    #[arg(long, env = "DESKBROKER_HTTP_TUNNEL_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "15s")]
    pub http_tunnel_timeout: Duration,

    /// On stop, how long to wait for tunnels to end before closing them (e.g. `10s`).
    #[arg(long, env = "DESKBROKER_DRAIN_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "10s")]
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

impl Args {
    pub fn edge_config(&self) -> crate::Config {
        crate::Config {
            http_tunnel_timeout: self.http_tunnel_timeout,
            drain_timeout: self.drain_timeout,
            web_dir: self.web_dir.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let args = Args::try_parse_from(["edge", "--demo", "--http-tunnel-timeout", "2s"]).unwrap();
        assert!(args.demo);
        assert_eq!(args.http_tunnel_timeout, Duration::from_secs(2));
        assert_eq!(args.listen.to_string(), defaults::LISTEN);
        assert!(Args::try_parse_from(["edge", "--listen", "nowhere"]).is_err());
    }
}
