//! Tenants: who may ask for sessions, to reach what, and how much. Pure rules, no I/O.
//!
//! A tenant is found by its API key's SHA-256 (the key itself is never stored). Its policy names the hosts
//! (IP addresses, CIDR blocks, DNS names with an optional `*.` wildcard), ports and target kinds its
//! sessions may reach; for guacd sessions the rule applies to the remote desktop (the `hostname` and `port`
//! parameters), and the guacd itself must be one the broker's configuration names. Limits cap concurrent
//! tunnels and session lifetime.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use deskbroker_shared::ids::{TenantId, TokenDigest};
use deskbroker_shared::session::Target;

use crate::defaults;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub id: TenantId,
    /// SHA-256 of the tenant's API key, in hex.
    pub key_sha256: TokenDigest,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `10.0.0.0/8`, `192.168.1.7`, `desk-1.acme.svc`, `*.acme.svc`; nothing is allowed when empty.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// `5901`, `5900-5999`; nothing is allowed when empty.
    #[serde(default)]
    pub ports: Vec<String>,
    /// `vnc` (raw VNC through /websockify), `guacd-vnc`, `guacd-rdp`, `guacd-ssh`, …
    #[serde(default)]
    pub kinds: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_tunnels")]
    pub max_tunnels: u32,
    #[serde(default = "default_max_lifetime", with = "humantime_serde_compat")]
    pub max_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tunnels: defaults::MAX_TUNNELS,
            max_lifetime: defaults::MAX_LIFETIME,
        }
    }
}

fn default_max_tunnels() -> u32 {
    defaults::MAX_TUNNELS
}

fn default_max_lifetime() -> Duration {
    defaults::MAX_LIFETIME
}

/// Durations written as `8h`, `30m`, `90s`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*duration).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Why a target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    #[error("target kind {0:?} is not allowed for this tenant")]
    Kind(String),
    #[error("host {0:?} is not allowed for this tenant")]
    Host(String),
    #[error("port {0} is not allowed for this tenant")]
    Port(u16),
    #[error("a guacd target needs `hostname` and `port` parameters")]
    MissingRemote,
}

impl Policy {
    /// Checks a target against the policy: its kind, and the host and port of the desktop it reaches.
    pub fn check(&self, target: &Target) -> Result<(), PolicyViolation> {
        let (kind, host, port) = match target {
            Target::Vnc { addr } => ("vnc".to_owned(), addr.host.clone(), addr.port),
            Target::Guacd {
                protocol, params, ..
            } => {
                let host = params.get("hostname").filter(|h| !h.is_empty());
                let port = params.get("port").and_then(|p| p.parse().ok());
                let (Some(host), Some(port)) = (host, port) else {
                    return Err(PolicyViolation::MissingRemote);
                };
                (format!("guacd-{protocol}"), host.clone(), port)
            }
        };
        if !self.kinds.contains(&kind) {
            return Err(PolicyViolation::Kind(kind));
        }
        if !self.hosts.iter().any(|rule| host_matches(rule, &host)) {
            return Err(PolicyViolation::Host(host));
        }
        if !self.ports.iter().any(|rule| port_matches(rule, port)) {
            return Err(PolicyViolation::Port(port));
        }
        Ok(())
    }
}

fn host_matches(rule: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let rule = rule.trim().to_ascii_lowercase();
    if let Some((network, bits)) = rule.split_once('/') {
        let (Ok(network), Ok(bits), Ok(ip)) = (
            IpAddr::from_str(network),
            bits.parse::<u32>(),
            IpAddr::from_str(&host),
        ) else {
            return false;
        };
        return in_cidr(network, bits, ip);
    }
    if let Some(suffix) = rule.strip_prefix("*.") {
        // A name that merely ends like the suffix (evilacme.svc) is not in it.
        return host.ends_with(&format!(".{suffix}"));
    }
    match (IpAddr::from_str(&rule), IpAddr::from_str(&host)) {
        (Ok(rule), Ok(host)) => rule == host,
        _ => rule == host,
    }
}

fn in_cidr(network: IpAddr, bits: u32, ip: IpAddr) -> bool {
    match (network, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

fn port_matches(rule: &str, port: u16) -> bool {
    match rule.trim().split_once('-') {
        Some((low, high)) => match (low.parse::<u16>(), high.parse::<u16>()) {
            (Ok(low), Ok(high)) => (low..=high).contains(&port),
            _ => false,
        },
        None => rule.trim().parse::<u16>() == Ok(port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            hosts: vec![
                "10.0.0.0/8".into(),
                "*.acme.svc".into(),
                "192.168.1.7".into(),
                "fd00::/8".into(),
            ],
            ports: vec!["5900-5999".into(), "3389".into()],
            kinds: vec!["vnc".into(), "guacd-rdp".into()],
        }
    }

    fn check(target: &str) -> Result<(), PolicyViolation> {
        policy().check(&Target::parse(target).unwrap())
    }

    #[test]
    fn allows_only_what_the_policy_names() {
        assert_eq!(check("10.1.2.3:5901"), Ok(()));
        assert_eq!(check("desk.acme.svc:5900"), Ok(()));
        assert_eq!(check("[fd00::5]:5901"), Ok(()));
        assert_eq!(
            check("guacd://g:4822/rdp?hostname=10.9.9.9&port=3389"),
            Ok(())
        );
        assert_eq!(
            check("11.0.0.1:5901"),
            Err(PolicyViolation::Host("11.0.0.1".into()))
        );
        assert_eq!(
            check("evilacme.svc:5901"),
            Err(PolicyViolation::Host("evilacme.svc".into()))
        );
        assert_eq!(
            check("acme.svc:5901"),
            Err(PolicyViolation::Host("acme.svc".into()))
        );
        assert_eq!(check("10.1.2.3:22"), Err(PolicyViolation::Port(22)));
        assert_eq!(
            check("guacd://g:4822/ssh?hostname=10.0.0.1&port=22"),
            Err(PolicyViolation::Kind("guacd-ssh".into()))
        );
        assert_eq!(
            check("guacd://g:4822/rdp?hostname=10.0.0.1"),
            Err(PolicyViolation::MissingRemote)
        );
        assert!(
            Policy::default()
                .check(&Target::parse("10.0.0.1:5900").unwrap())
                .is_err(),
            "empty allows nothing"
        );
    }

    #[test]
    fn tenants_read_from_json_with_defaults() {
        let tenant: Tenant = serde_json::from_str(&format!(
            r#"{{"id":"acme","key_sha256":"{}","limits":{{"max_lifetime":"30m"}}}}"#,
            TokenDigest::of("k").to_hex()
        ))
        .unwrap();
        assert_eq!(tenant.limits.max_lifetime, Duration::from_secs(1800));
        assert_eq!(tenant.limits.max_tunnels, defaults::MAX_TUNNELS);
        assert!(
            serde_json::from_str::<Tenant>(r#"{"id":"x","key_sha256":"00","color":1}"#).is_err()
        );
    }
}
