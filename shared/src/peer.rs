//! The peer API: what other nodes and the broker ask of a node's peer listener. Both sides build its paths
//! and headers from here, so they cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, TunnelId};

/// The header carrying the cluster secret on every request to a peer listener.
pub const CLUSTER_SECRET_HEADER: &str = "deskbroker-cluster-secret";

/// Where forwarded HTTP tunnel requests go, with the browser's query string unchanged.
pub const TUNNEL_PATH: &str = "/tunnel";

/// The route of a tunnel's byte counts, as the peer listener's router writes it.
pub const TRAFFIC_ROUTE: &str = "/tunnels/{session}/{tunnel}/traffic";

/// The path of one tunnel's byte counts.
pub fn traffic_path(session: &SessionId, tunnel: &TunnelId) -> String {
    format!("/tunnels/{session}/{tunnel}/traffic")
}

/// What a node's peer listener answers about one of its tunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficReport {
    /// Bytes from the browser to the VNC server or guacd.
    pub to_upstream: u64,
    /// Bytes from the VNC server or guacd to the browser.
    pub from_upstream: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traffic_path_fills_the_route() {
        let (session, tunnel) = (SessionId::new("s"), TunnelId::from_random_bytes([1; 16]));
        let filled = TRAFFIC_ROUTE
            .replace("{session}", session.as_str())
            .replace("{tunnel}", &tunnel.to_string());
        assert_eq!(traffic_path(&session, &tunnel), filled);
    }
}
