//! Session records: what a token grants. The registry stores them; the edge reads the target from them, so
//! the browser never names a host or port itself.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, TenantId};

/// What a session token grants: a target, owned by a tenant, until an optional expiry, with the way it
/// may be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session's public name, used by the control plane; the token is the secret.
    pub id: SessionId,
    pub tenant: TenantId,
    pub target: Target,
    #[serde(with = "crate::time::unix_ms_option")]
    pub expires: Option<SystemTime>,
    /// At most one open tunnel; a new connection takes over from the old one.
    #[serde(default)]
    pub exclusive: bool,
    /// Output only: the server drops the browser's input.
    #[serde(default)]
    pub read_only: bool,
    /// A share: this session joins the running connection of that one instead of opening its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<SessionId>,
    /// The operator wrote this session (a session file, the demo): its target is trusted. A tenant's
    /// session (the default, also for records written before this field) is checked against the
    /// operator's deny list when its tunnels connect.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trusted_target: bool,
    /// How long a tunnel of the session may go without input from its browser before the edge closes
    /// it; none (also for records and tokens written before this field) is never. Stored in whole
    /// milliseconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::ms_option"
    )]
    pub idle_timeout: Option<Duration>,
}

impl Session {
    /// A session with the defaults: shared, with control, no expiry, no idle timeout.
    pub fn new(id: SessionId, tenant: TenantId, target: Target) -> Self {
        Self {
            id,
            tenant,
            target,
            expires: None,
            exclusive: false,
            read_only: false,
            join: None,
            trusted_target: false,
            idle_timeout: None,
        }
    }
}

impl Session {
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|expires| expires <= now)
    }
}

/// Where a session's tunnels go. Stored in its URL form ([`Target::parse`], [`Target::to_url`]).
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// A VNC server, relayed byte for byte over `/websockify`.
    Vnc { addr: HostPort },
    /// A guacd, driven through the Guacamole tunnels with this protocol and these connection parameters.
    Guacd {
        addr: HostPort,
        protocol: String,
        params: BTreeMap<String, String>,
    },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Vnc { .. } => "vnc",
            Target::Guacd { .. } => "guacd",
        }
    }

    pub fn addr(&self) -> &HostPort {
        match self {
            Target::Vnc { addr } | Target::Guacd { addr, .. } => addr,
        }
    }

    /// Parses a target as written in session files and API requests:
    /// `host:port` or `vnc://host:port` for a VNC server, and
    /// `guacd://host:port/<protocol>?<name>=<value>&…` for guacd (values percent-encoded).
    pub fn parse(text: &str) -> Result<Self, BadTarget> {
        if let Some(rest) = text.strip_prefix("guacd://") {
            let (addr, rest) = rest.split_once('/').ok_or(BadTarget::MissingProtocol)?;
            let (protocol, query) = rest.split_once('?').unwrap_or((rest, ""));
            if protocol.is_empty()
                || !protocol
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(BadTarget::MissingProtocol);
            }
            let params = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            return Ok(Target::Guacd {
                addr: HostPort::parse(addr)?,
                protocol: protocol.to_owned(),
                params,
            });
        }
        let addr = text.strip_prefix("vnc://").unwrap_or(text);
        Ok(Target::Vnc {
            addr: HostPort::parse(addr)?,
        })
    }
}

impl Target {
    /// The URL form that [`Target::parse`] reads. It holds connection parameters, passwords included: keep
    /// it out of logs.
    pub fn to_url(&self) -> String {
        match self {
            Target::Vnc { addr } => format!("vnc://{addr}"),
            Target::Guacd {
                addr,
                protocol,
                params,
            } => {
                let query = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(params)
                    .finish();
                match query.is_empty() {
                    true => format!("guacd://{addr}/{protocol}"),
                    false => format!("guacd://{addr}/{protocol}?{query}"),
                }
            }
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_url())
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let url = String::deserialize(deserializer)?;
        Target::parse(&url).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadTarget {
    #[error(transparent)]
    Address(#[from] BadHostPort),
    #[error("a guacd target needs a protocol: guacd://host:port/<protocol>")]
    MissingProtocol,
}

/// Connection parameters hold passwords: `Debug` shows their names only.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Vnc { addr } => f.debug_struct("Vnc").field("addr", addr).finish(),
            Target::Guacd {
                addr,
                protocol,
                params,
            } => f
                .debug_struct("Guacd")
                .field("addr", addr)
                .field("protocol", protocol)
                .field("params", &params.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// A host (name, IPv4 or IPv6 address) and a port, not resolved: in a cluster the name may only resolve on
/// the node that dials it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected host:port or [ipv6]:port, got {0:?}")]
pub struct BadHostPort(pub String);

impl HostPort {
    pub fn parse(text: &str) -> Result<Self, BadHostPort> {
        let bad = || BadHostPort(text.to_owned());
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.strip_suffix(']').ok_or_else(bad)?,
            None if host.contains(':') => return Err(bad()),
            None => host,
        };
        let port = port.parse().map_err(|_| bad())?;
        // No brackets inside: `[[a]]:1` would print as `[a]:1`, which reads back as another host.
        let stray = |c: char| c.is_whitespace() || matches!(c, '/' | '[' | ']');
        if host.is_empty() || host.contains(stray) {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_ports() {
        let v4 = HostPort::parse("127.0.0.1:5900").unwrap();
        assert_eq!((v4.host.as_str(), v4.port), ("127.0.0.1", 5900));
        let v6 = HostPort::parse("[::1]:4822").unwrap();
        assert_eq!(v6.to_string(), "[::1]:4822");
        assert_eq!(HostPort::parse("desk-1.ns.svc:5901").unwrap().port, 5901);
        for bad in ["", "host", ":1", "host:x", "::1:5900", "a b:1", "h:70000"] {
            assert!(HostPort::parse(bad).is_err(), "{bad}");
        }
        // Found writing the fuzz target's round trip: these parsed, and printed as another host's address.
        for bad in ["[[a]]:1", "[a]]:1", "a]:1", "[[::1]]:5900"] {
            assert_eq!(HostPort::parse(bad), Err(BadHostPort(bad.into())), "{bad}");
        }
    }

    #[test]
    fn parses_targets() {
        assert_eq!(Target::parse("10.0.0.5:5901").unwrap().kind(), "vnc");
        assert_eq!(
            Target::parse("vnc://desk:5900").unwrap().addr().host,
            "desk"
        );
        let Target::Guacd {
            addr,
            protocol,
            params,
        } = Target::parse("guacd://127.0.0.1:4822/rdp?hostname=win&password=a%26b").unwrap()
        else {
            panic!("not a guacd target");
        };
        assert_eq!((addr.port, protocol.as_str()), (4822, "rdp"));
        assert_eq!(params["password"], "a&b");
        assert_eq!(
            Target::parse("guacd://h:1"),
            Err(BadTarget::MissingProtocol)
        );
        assert!(Target::parse("guacd://h:1/").is_err());
        assert!(Target::parse("nonsense").is_err());
        for url in [
            "vnc://[::1]:5900",
            "guacd://g:4822/rdp?hostname=w&password=a%26b+c",
            "guacd://g:1/ssh",
        ] {
            assert_eq!(Target::parse(url).unwrap().to_url(), url);
        }
    }

    #[test]
    fn an_idle_timeout_is_stored_in_milliseconds_and_only_when_there_is_one() {
        let target = Target::parse("10.0.0.5:5901").unwrap();
        let plain = Session::new(SessionId::new("s"), TenantId::new("t"), target);
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("idle_timeout"), "{json}");
        let idle = Session {
            idle_timeout: Some(Duration::from_millis(90_500)),
            ..plain.clone()
        };
        let json = serde_json::to_string(&idle).unwrap();
        assert!(json.contains(r#""idle_timeout":90500"#), "{json}");
        assert_eq!(serde_json::from_str::<Session>(&json).unwrap(), idle);

        // A record written before the field: no idle timeout.
        let old = r#"{"id":"s","tenant":"t","target":"vnc://10.0.0.5:5901","expires":null}"#;
        assert_eq!(serde_json::from_str::<Session>(old).unwrap(), plain);
    }

    #[test]
    fn debug_hides_parameter_values() {
        let target = Target::Guacd {
            addr: HostPort::parse("guacd:4822").unwrap(),
            protocol: "rdp".into(),
            params: [("password".to_owned(), "hunter2".to_owned())].into(),
        };
        assert!(!format!("{target:?}").contains("hunter2"));
    }
}
