//! Redis key names, built here and nowhere else. Keys that belong to one thing carry its id as a hash tag
//! (`{…}`), so each command touches one slot and the layout works unchanged on Redis Cluster.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `deskbroker:nodes` | hash | node id → `NodeRecord` JSON (the lease, renewed in place) |
//! | `deskbroker:node-tunnels:{<node>}` | set | ids of the tunnels the node owns |
//! | `deskbroker:tunnel:{<tunnel>}` | string | `TunnelRecord` JSON |
//! | `deskbroker:http-tunnel:{<digest>}` | string | `TunnelRecord` JSON, by SHA-256 of the tunnel token |
//! | `deskbroker:session:{<digest>}` | string | `Session` JSON, by SHA-256 of the session token, expiring with it |

use crate::cluster::NodeId;
use crate::ids::{TokenDigest, TunnelId};

pub const NODES: &str = "deskbroker:nodes";

pub fn node_tunnels(node: &NodeId) -> String {
    format!("deskbroker:node-tunnels:{{{node}}}")
}

pub fn tunnel(id: &TunnelId) -> String {
    format!("deskbroker:tunnel:{{{id}}}")
}

pub fn http_tunnel(token: &TokenDigest) -> String {
    format!("deskbroker:http-tunnel:{{{}}}", token.to_hex())
}

pub fn session(token: &TokenDigest) -> String {
    format!("deskbroker:session:{{{}}}", token.to_hex())
}
