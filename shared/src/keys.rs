//! Redis key names, built here and nowhere else. Keys that belong to one thing carry its id as a hash tag
//! (`{…}`), so each command touches one slot and the layout works unchanged on Redis Cluster.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `deskbroker:nodes` | hash | node id → `NodeRecord` JSON (the lease, renewed in place), or a fence `{"cleaning_until_ms":…}` while another node removes a lapsed node's records |
//! | `deskbroker:node-expiries:{deskbroker:nodes}` | sorted set | node id by its lease's expiry (Unix ms): which leases run and which ran out, without reading the table; in the node table's slot, so that one script keeps both |
//! | `deskbroker:node-tunnels:{<node>}` | set | ids of the tunnels the node owns |
//! | `deskbroker:tunnel:{<tunnel>}` | string | `TunnelRecord` JSON |
//! | `deskbroker:http-tunnel:{<digest>}` | string | `TunnelRecord` JSON, by SHA-256 of the tunnel token |
//! | `deskbroker:session:{<digest>}` | string | `Session` JSON, by SHA-256 of the session token, expiring with it |
//! | `deskbroker:session-id:{<session>}` | string | the session token's digest, by session id, expiring with it |
//! | `deskbroker:session-tunnels:{<session>}` | set | ids of the session's open tunnels |
//! | `deskbroker:revoked:{<session>}` | string | present for a while after the session was closed |
//! | `deskbroker:removed-tenant:{<tenant>}` | string | present for a while after the tenant was removed |
//! | `deskbroker:tenant-sessions:{<tenant>}` | set | ids of the tenant's sessions (expired ones pruned when listed) |
//! | `deskbroker:tenant-tunnels:{<tenant>}` | set | the tenant's used slots, each `<tunnel>:<incarnation>:<owner>` (`SlotHolder`) |
//! | `deskbroker:tenants` | hash | tenant id → `Tenant` JSON |
//! | `deskbroker:tenant-keys` | hash | SHA-256 of an API key → tenant id |
//! | `deskbroker:restored:{<marker>}` | string | present while the registry holds what the operator configured (see the broker's `restore.rs`) |
//! | `deskbroker:control` | pub/sub channel | `ControlEvent` JSON, heard by every node |

use crate::ids::{NodeId, SessionId, TenantId, TokenDigest, TunnelId};

pub const NODES: &str = "deskbroker:nodes";
/// Hashed by the node table's name (a key without braces hashes whole), so it lives in the same slot.
pub const NODE_EXPIRIES: &str = "deskbroker:node-expiries:{deskbroker:nodes}";
pub const TENANTS: &str = "deskbroker:tenants";
pub const TENANT_KEYS: &str = "deskbroker:tenant-keys";
pub const CONTROL: &str = "deskbroker:control";

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

pub fn session_id(id: &SessionId) -> String {
    format!("deskbroker:session-id:{{{id}}}")
}

pub fn session_tunnels(id: &SessionId) -> String {
    format!("deskbroker:session-tunnels:{{{id}}}")
}

pub fn revoked(id: &SessionId) -> String {
    format!("deskbroker:revoked:{{{id}}}")
}

pub fn tenant_sessions(tenant: &TenantId) -> String {
    format!("deskbroker:tenant-sessions:{{{tenant}}}")
}

pub fn tenant_tunnels(tenant: &TenantId) -> String {
    format!("deskbroker:tenant-tunnels:{{{tenant}}}")
}

pub fn removed_tenant(tenant: &TenantId) -> String {
    format!("deskbroker:removed-tenant:{{{tenant}}}")
}

pub fn marker(name: &str) -> String {
    format!("deskbroker:restored:{{{name}}}")
}
