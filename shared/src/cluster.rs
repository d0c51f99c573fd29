//! What the registry records about a cluster: nodes with their leases, tunnels with their owners, and the
//! rule that decides whether a record still stands.
//!
//! A node renews one lease (its [`NodeRecord`], with an expiry) on a short period; a tunnel's record names
//! its owner node and the owner's incarnation. A tunnel is alive only while its owner's lease runs and the
//! owner has not restarted since (a new incarnation): that way no per-tunnel renewal is ever needed, and a
//! crashed node's tunnels are gone everywhere as soon as its lease lapses.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, SessionId, TenantId, TokenDigest, TunnelId};
use crate::time::unix_ms;

/// One run of a node process: new at every start, so a restarted node's old tunnels are recognisably gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Incarnation(pub uuid::Uuid);

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A node's lease: who it is, where peers reach it, and until when it is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub incarnation: Incarnation,
    /// Base URL of the node's peer listener, e.g. `http://10.0.3.7:8081`.
    pub peer_url: String,
    /// When the lease lapses unless renewed (Unix ms).
    pub expires_ms: u64,
}

impl NodeRecord {
    pub fn is_alive(&self, now: SystemTime) -> bool {
        unix_ms(now) < self.expires_ms
    }

    /// The same record with its lease renewed from `now`.
    pub fn renewed(&self, now: SystemTime, lease: Duration) -> Self {
        Self {
            expires_ms: unix_ms(now) + lease.as_millis() as u64,
            ..self.clone()
        }
    }
}

/// Which endpoint a tunnel came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TunnelKind {
    Websockify,
    WebsocketTunnel,
    HttpTunnel,
}

impl TunnelKind {
    pub const ALL: [TunnelKind; 3] = [Self::Websockify, Self::WebsocketTunnel, Self::HttpTunnel];

    /// Its name in records, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Websockify => "websockify",
            Self::WebsocketTunnel => "websocket-tunnel",
            Self::HttpTunnel => "http-tunnel",
        }
    }
}

/// A tunnel as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRecord {
    pub id: TunnelId,
    pub owner: NodeId,
    pub incarnation: Incarnation,
    pub tenant: TenantId,
    /// The session it belongs to.
    pub session: SessionId,
    pub kind: TunnelKind,
    pub created_ms: u64,
    /// Digest of the HTTP tunnel's `Guacamole-Tunnel-Token`, by which any node finds it.
    pub http_token: Option<TokenDigest>,
    /// guacd's connection id (`$…`), which shares of the session join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
}

impl TunnelRecord {
    /// A tunnel stands while its owner, in the same incarnation, holds a live lease.
    pub fn is_alive(&self, owner: Option<&NodeRecord>, now: SystemTime) -> bool {
        owner.is_some_and(|node| node.incarnation == self.incarnation && node.is_alive(now))
    }

    /// What holds the tunnel's quota slot.
    pub fn slot_holder(&self) -> SlotHolder {
        SlotHolder {
            tunnel: self.id,
            owner: self.owner.clone(),
            incarnation: self.incarnation,
        }
    }
}

/// What holds one of a tenant's quota slots: a tunnel, with the node (and its incarnation) that opened it,
/// so that a tenant at its limit tells the slots of tunnels that died with their node from the slots
/// alone. The registry keeps it as `<tunnel>:<incarnation>:<owner>`, the owner last since an operator
/// names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotHolder {
    pub tunnel: TunnelId,
    pub owner: NodeId,
    pub incarnation: Incarnation,
}

impl SlotHolder {
    pub fn encode(&self) -> String {
        format!("{}:{}:{}", self.tunnel, self.incarnation, self.owner)
    }

    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, ':');
        let tunnel = TunnelId::parse(parts.next()?)?;
        let incarnation = Incarnation(parts.next()?.parse().ok()?);
        let owner = NodeId::new(parts.next()?);
        Some(Self {
            tunnel,
            owner,
            incarnation,
        })
    }
}

/// Messages every node hears on the registry's control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum ControlEvent {
    /// The session was revoked: close its tunnels wherever they are, and refuse its token until
    /// `until_ms` (its expiry, Unix ms), even if the registry loses the revocation.
    SessionClosed {
        session: SessionId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until_ms: Option<u64>,
    },
    /// The tenant was removed: close every tunnel of its sessions.
    TenantClosed { tenant: TenantId },
    /// A newer connection took over an exclusive session: close this tunnel of it.
    TakenOver {
        session: SessionId,
        tunnel: TunnelId,
    },
}

impl ControlEvent {
    /// Its `event` tag, as it goes on the channel.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SessionClosed { .. } => "session-closed",
            Self::TenantClosed { .. } => "tenant-closed",
            Self::TakenOver { .. } => "taken-over",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(expires_ms: u64) -> NodeRecord {
        NodeRecord {
            id: NodeId::new("a"),
            incarnation: Incarnation(uuid::Uuid::from_u128(1)),
            peer_url: "http://a".into(),
            expires_ms,
        }
    }

    fn tunnel(incarnation: u128) -> TunnelRecord {
        TunnelRecord {
            id: TunnelId::from_random_bytes([1; 16]),
            owner: NodeId::new("a"),
            incarnation: Incarnation(uuid::Uuid::from_u128(incarnation)),
            tenant: TenantId::new("t"),
            session: SessionId::new("s"),
            kind: TunnelKind::HttpTunnel,
            created_ms: 0,
            http_token: None,
            connection: None,
        }
    }

    #[test]
    fn a_tunnel_lives_with_its_owners_lease_and_incarnation() {
        let now = SystemTime::now();
        let live = node(unix_ms(now) + 1000);
        assert!(tunnel(1).is_alive(Some(&live), now));
        assert!(!tunnel(2).is_alive(Some(&live), now), "the owner restarted");
        assert!(
            !tunnel(1).is_alive(Some(&node(unix_ms(now))), now),
            "the lease lapsed"
        );
        assert!(!tunnel(1).is_alive(None, now), "the owner is unknown");
        let renewed = node(0).renewed(now, Duration::from_secs(5));
        assert_eq!(renewed.expires_ms, unix_ms(now) + 5000);
    }

    #[test]
    fn a_slot_holder_round_trips_whatever_its_node_is_named() {
        let mut record = tunnel(1);
        record.owner = NodeId::new("pod:7 a");
        let holder = record.slot_holder();
        assert_eq!(SlotHolder::parse(&holder.encode()), Some(holder));
        assert_eq!(SlotHolder::parse(&record.id.to_string()), None);
    }

    #[test]
    fn an_event_is_named_by_its_tag() {
        let event = ControlEvent::TenantClosed {
            tenant: TenantId::new("t"),
        };
        let json: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event"], event.name());
    }

    #[test]
    fn a_kind_has_one_name_in_records_logs_and_metrics() {
        for kind in TunnelKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
        }
    }

    #[test]
    fn records_round_trip_through_json() {
        let record = tunnel(1);
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"kind\":\"http-tunnel\""), "{json}");
        assert_eq!(serde_json::from_str::<TunnelRecord>(&json).unwrap(), record);
    }
}
