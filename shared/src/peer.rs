//! The peer API: what other nodes and the broker ask of a node's peer listener. Both sides build its paths
//! and headers from here, so they cannot drift apart.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, TunnelId};

/// The header carrying the cluster secret on every request to a peer listener.
pub const CLUSTER_SECRET_HEADER: &str = "deskbroker-cluster-secret";

/// Where forwarded HTTP tunnel requests go, with the browser's query string unchanged.
pub const TUNNEL_PATH: &str = "/tunnel";

/// Where a node that is stopping asks a tunnel's owner to end the read it forwards (`POST`, with the
/// tunnel's `Guacamole-Tunnel-Token`): the owner ends it at its next instruction boundary, as a read ends
/// when a newer one arrives, and the client's next read goes to a node that stays.
pub const RELEASE_READ_PATH: &str = "/release-read";

/// Where the live view asks a node, in one `POST` of a [`TrafficQuery`], what its tunnels have moved.
pub const TRAFFIC_PATH: &str = "/traffic";

/// The sessions whose tunnels the live view shows: a node answers for those of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficQuery {
    pub sessions: Vec<SessionId>,
}

/// A node's answer to a [`TrafficQuery`]: each of its tunnels of those sessions, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficAnswer {
    pub tunnels: HashMap<TunnelId, TrafficReport>,
}

/// What one tunnel has moved, as its node counts it.
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
    fn an_answer_goes_over_the_wire_and_back() {
        let report = TrafficReport {
            to_upstream: 4,
            from_upstream: 5,
        };
        let tunnel = TunnelId::from_random_bytes([1; 16]);
        let answer = TrafficAnswer {
            tunnels: HashMap::from([(tunnel, report)]),
        };
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            json,
            format!(r#"{{"tunnels":{{"{tunnel}":{{"to_upstream":4,"from_upstream":5}}}}}}"#)
        );
        assert_eq!(
            serde_json::from_str::<TrafficAnswer>(&json).unwrap(),
            answer
        );
    }
}
