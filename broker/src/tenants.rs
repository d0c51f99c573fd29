//! Tenants: who may ask for sessions, to reach what, and how much. Pure rules, no I/O.
//!
//! A tenant is found by its API key's SHA-256 (the key itself is never stored). Its policy names the hosts
//! (IP addresses, CIDR blocks, DNS names with an optional `*.` wildcard), ports and target kinds its
//! sessions may reach; for guacd sessions the rule applies to every host guacd is told to reach (the
//! desktop's `hostname` and `port`, and an SSH, SFTP, gateway or repeater host: `guacd_params::HOSTS`), the
//! request may set only the parameters `guacd_params` allows its protocol, and the guacd itself must be one
//! the broker's configuration names. What only the operator may set (recording, drives, paths on guacd's
//! file system) comes from the tenant's `guacd_params`, set by the operator. Limits cap concurrent tunnels
//! and session lifetime, and set the idle timeout of its sessions ([`idle_timeout`]).

pub mod idle_timeout;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use deskbroker_shared::cidr::Cidr;
use deskbroker_shared::guacd_params;
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
    /// guacd parameters the operator sets on every guacd session of the tenant, over what the request
    /// asked (recording paths, drives: what a tenant's request may not set).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub guacd_params: BTreeMap<String, String>,
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
    /// Between [`defaults::MIN_LIFETIME`] and [`defaults::LONGEST_LIFETIME`] when read from JSON.
    #[serde(default = "default_max_lifetime", with = "max_lifetime")]
    pub max_lifetime: Duration,
    /// The idle timeout of a session that asks for none; none: its tunnels are never closed for idling
    /// (unless `max_idle_timeout` is set). Between [`defaults::MIN_IDLE_TIMEOUT`] and
    /// [`defaults::LONGEST_IDLE_TIMEOUT`] when read from JSON, like `max_idle_timeout`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "idle_timeout::limit"
    )]
    pub idle_timeout: Option<Duration>,
    /// The longest idle timeout a session may have: a longer ask, or none, gets this.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "idle_timeout::limit"
    )]
    pub max_idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tunnels: defaults::MAX_TUNNELS,
            max_lifetime: defaults::MAX_LIFETIME,
            idle_timeout: None,
            max_idle_timeout: None,
        }
    }
}

fn default_max_tunnels() -> u32 {
    defaults::MAX_TUNNELS
}

fn default_max_lifetime() -> Duration {
    defaults::MAX_LIFETIME
}

/// A lifetime limit written as `8h`, `30m`, `90s`: refused outside what a session may live, so that no
/// tenant can be given sessions that are dead at birth or that end past what the clock holds.
mod max_lifetime {
    use std::time::Duration;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::defaults::{LONGEST_LIFETIME, MIN_LIFETIME};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*duration).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        let duration = humantime::parse_duration(&text).map_err(D::Error::custom)?;
        if !(MIN_LIFETIME..=LONGEST_LIFETIME).contains(&duration) {
            return Err(D::Error::custom(format_args!(
                "max_lifetime {text:?} is not between {} and {}",
                humantime::format_duration(MIN_LIFETIME),
                humantime::format_duration(LONGEST_LIFETIME),
            )));
        }
        Ok(duration)
    }
}

/// Why the lifetime a session or share asks for is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLifetime {
    #[error("lifetime {text:?} is not a duration like `30m` or `8h`: {reason}")]
    Unreadable { text: String, reason: String },
    #[error(
        "lifetime {0:?} is shorter than {min}: the token would be dead before a browser could use it",
        min = humantime::format_duration(defaults::MIN_LIFETIME)
    )]
    TooShort(String),
    #[error("a session starting now would end past what the clock can hold")]
    PastTheClock,
}

impl Limits {
    /// When a session starting at `now` and asking for `requested` (`30m`, `8h`) expires: after what it asks
    /// for, capped at the tenant's `max_lifetime`; after that maximum when it asks for nothing. A lifetime
    /// too short to connect with is refused. A longer one is capped rather than refused, so that a backend
    /// asking for its usual lifetime keeps working when an admin lowers the limit; the answer's
    /// `expires_at` says what it got.
    pub fn expiry(
        &self,
        now: SystemTime,
        requested: Option<&str>,
    ) -> Result<SystemTime, BadLifetime> {
        // Limits read from JSON are within the ceiling already; built in code, they may not be.
        let longest = self.max_lifetime.min(defaults::LONGEST_LIFETIME);
        let lifetime = match requested {
            None => longest,
            Some(text) => {
                let asked =
                    humantime::parse_duration(text).map_err(|error| BadLifetime::Unreadable {
                        text: text.to_owned(),
                        reason: error.to_string(),
                    })?;
                if asked < defaults::MIN_LIFETIME {
                    return Err(BadLifetime::TooShort(text.to_owned()));
                }
                asked.min(longest)
            }
        };
        // At most a year from now: this fails only on a clock set near the end of `SystemTime`.
        now.checked_add(lifetime).ok_or(BadLifetime::PastTheClock)
    }

    /// The idle timeout of a new session asking for `requested` (`15m`): that, else the tenant's
    /// `idle_timeout`, cut to `max_idle_timeout` (the rule in [`idle_timeout`]).
    pub fn session_idle_timeout(
        &self,
        requested: Option<&str>,
    ) -> Result<idle_timeout::Granted, idle_timeout::BadIdleTimeout> {
        idle_timeout::grant(requested, self.idle_timeout, self.max_idle_timeout)
    }

    /// The idle timeout of a share of a session whose own is `joined`: that one, or a shorter one it asks
    /// for, never a longer one; and within the tenant's `max_idle_timeout`, as every session is.
    pub fn share_idle_timeout(
        &self,
        requested: Option<&str>,
        joined: Option<Duration>,
    ) -> Result<idle_timeout::Granted, idle_timeout::BadIdleTimeout> {
        let ceiling = [self.max_idle_timeout, joined].into_iter().flatten().min();
        idle_timeout::grant(requested, joined, ceiling)
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
    #[error("guacd parameter {0:?} may only be set by the operator")]
    OperatorOnly(String),
    #[error("guacd parameter {name:?} is not one a tenant may set for {protocol}")]
    UnknownParam { protocol: String, name: String },
    #[error("guacd parameter {0:?} is not a port")]
    BadPort(String),
}

impl Policy {
    /// Checks a tenant's target against the policy: its kind, every host and port it reaches, and for a
    /// guacd target that its request sets only parameters a tenant may set.
    pub fn check(&self, target: &Target) -> Result<(), PolicyViolation> {
        match target {
            Target::Vnc { addr } => {
                self.allows_kind("vnc")?;
                self.allows(&addr.host, addr.port)
            }
            Target::Guacd {
                protocol, params, ..
            } => {
                self.allows_kind(&format!("guacd-{protocol}"))?;
                for name in params.keys() {
                    if guacd_params::operator_only(name) {
                        return Err(PolicyViolation::OperatorOnly(name.clone()));
                    }
                    if !guacd_params::tenant_may_set(protocol, name) {
                        let (protocol, name) = (protocol.clone(), name.clone());
                        return Err(PolicyViolation::UnknownParam { protocol, name });
                    }
                }
                let desktop = params.get("hostname").filter(|h| !h.is_empty());
                if desktop.is_none() || !params.contains_key("port") {
                    return Err(PolicyViolation::MissingRemote);
                }
                for param in guacd_params::HOSTS {
                    let Some(host) = params.get(param.host).filter(|h| !h.is_empty()) else {
                        continue;
                    };
                    let port = match params.get(param.port) {
                        Some(port) => port
                            .parse()
                            .map_err(|_| PolicyViolation::BadPort(param.port.into()))?,
                        None => param.default_port,
                    };
                    self.allows(host, port)?;
                }
                Ok(())
            }
        }
    }

    fn allows_kind(&self, kind: &str) -> Result<(), PolicyViolation> {
        match self.kinds.iter().any(|k| k == kind) {
            true => Ok(()),
            false => Err(PolicyViolation::Kind(kind.to_owned())),
        }
    }

    fn allows(&self, host: &str, port: u16) -> Result<(), PolicyViolation> {
        if !self.hosts.iter().any(|rule| host_matches(rule, host)) {
            return Err(PolicyViolation::Host(host.to_owned()));
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
    // An address or a block: the host must be an address in it. `Cidr` is the one rule for that, so an
    // IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is the IPv4 address it is, on either side.
    if let Ok(block) = Cidr::from_str(&rule) {
        return IpAddr::from_str(&host).is_ok_and(|ip| block.contains(ip));
    }
    if rule.contains('/') {
        return false;
    }
    if let Some(suffix) = rule.strip_prefix("*.") {
        // A name that merely ends like the suffix (evilacme.svc) is not in it.
        return host.ends_with(&format!(".{suffix}"));
    }
    rule == host
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
    fn every_host_guacd_is_told_to_reach_is_held_to_the_policy() {
        let rdp = "guacd://g:4822/rdp?hostname=10.9.9.9&port=3389";
        let refused = [
            ("&gateway-hostname=169.254.169.254", "169.254.169.254"),
            ("&sftp-hostname=db.internal&sftp-port=5901", "db.internal"),
        ];
        for (extra, host) in refused {
            assert_eq!(
                check(&format!("{rdp}{extra}")),
                Err(PolicyViolation::Host(host.into())),
                "{extra}"
            );
        }
        assert_eq!(
            check(&format!(
                "{rdp}&gateway-hostname=10.0.0.7&gateway-port=3389"
            )),
            Ok(()),
            "an allowed gateway on an allowed port"
        );
        assert_eq!(
            check(&format!("{rdp}&gateway-hostname=10.0.0.7")),
            Err(PolicyViolation::Port(443)),
            "a gateway's port defaults to 443"
        );
        let vnc = Policy {
            kinds: vec!["guacd-vnc".into()],
            ..policy()
        };
        let repeater =
            "guacd://g:4822/vnc?hostname=10.1.1.1&port=5901&dest-host=127.0.0.1&dest-port=5900";
        assert_eq!(
            vnc.check(&Target::parse(repeater).unwrap()),
            Err(PolicyViolation::Host("127.0.0.1".into()))
        );
    }

    #[test]
    fn a_request_sets_only_what_a_tenant_may_set() {
        let rdp = "guacd://g:4822/rdp?hostname=10.9.9.9&port=3389";
        for operator in [
            "recording-path=/etc",
            "create-recording-path=true",
            "drive-path=/",
            "enable-drive=true",
            "wol-broadcast-addr=10.255.255.255",
        ] {
            let name = operator.split('=').next().unwrap();
            assert_eq!(
                check(&format!("{rdp}&{operator}")),
                Err(PolicyViolation::OperatorOnly(name.into())),
                "{operator}"
            );
        }
        assert_eq!(
            check(&format!("{rdp}&typescript-path=/tmp")),
            Err(PolicyViolation::OperatorOnly("typescript-path".into()))
        );
        assert_eq!(
            check(&format!("{rdp}&font-size=12")),
            Err(PolicyViolation::UnknownParam {
                protocol: "rdp".into(),
                name: "font-size".into()
            })
        );
        assert_eq!(
            check(&format!("{rdp}&username=bob&password=x&ignore-cert=true")),
            Ok(())
        );
    }

    #[test]
    fn a_lifetime_is_capped_at_the_limit_and_refused_when_too_short_to_use() {
        let limits = Limits {
            max_lifetime: Duration::from_secs(3600),
            ..Limits::default()
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let hour = now + Duration::from_secs(3600);
        assert_eq!(
            limits.expiry(now, None),
            Ok(hour),
            "the limit is the default"
        );
        assert_eq!(
            limits.expiry(now, Some("10m")),
            Ok(now + Duration::from_secs(600))
        );
        assert_eq!(
            limits.expiry(now, Some("1s")),
            Ok(now + Duration::from_secs(1))
        );
        for long in ["100h", "300000000000y"] {
            assert_eq!(limits.expiry(now, Some(long)), Ok(hour), "{long}");
        }
        for short in ["0s", "0ms", "999ms"] {
            assert_eq!(
                limits.expiry(now, Some(short)),
                Err(BadLifetime::TooShort(short.into()))
            );
        }
        assert!(matches!(
            limits.expiry(now, Some("soon")),
            Err(BadLifetime::Unreadable { .. })
        ));
        assert!(matches!(
            limits.expiry(now, Some("99999999999999999999999y")),
            Err(BadLifetime::Unreadable { .. })
        ));

        // Limits built in code, past the ceiling, still end within a year; a clock at its end refuses.
        let endless = Limits {
            max_lifetime: Duration::MAX,
            ..Limits::default()
        };
        assert_eq!(
            endless.expiry(now, None),
            Ok(now + defaults::LONGEST_LIFETIME)
        );
        let end_of_time = SystemTime::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64);
        assert_eq!(
            endless.expiry(end_of_time, None),
            Err(BadLifetime::PastTheClock)
        );
    }

    #[test]
    fn a_max_lifetime_outside_what_a_session_may_live_is_refused() {
        let tenant = |max_lifetime: &str| {
            serde_json::from_str::<Tenant>(&format!(
                r#"{{"id":"acme","key_sha256":"{}","limits":{{"max_lifetime":"{max_lifetime}"}}}}"#,
                TokenDigest::of("k").to_hex()
            ))
        };
        for refused in ["0s", "500ms", "300000000000y", "2y"] {
            assert!(tenant(refused).is_err(), "{refused}");
        }
        for taken in ["1s", "8h", "1y"] {
            assert!(tenant(taken).is_ok(), "{taken}");
        }
    }

    #[test]
    fn addresses_match_however_they_are_spelled() {
        // Found by fuzzing against a reference: IPv4 addresses and blocks written as IPv6
        // (`::ffff:a.b.c.d`) were compared as IPv6, so `::/0` let a target reach any IPv4 desktop.
        let check = |host: &str, target: &str| {
            let policy = Policy {
                hosts: vec![host.into()],
                ports: vec!["5900".into()],
                kinds: vec!["vnc".into()],
            };
            policy.check(&Target::parse(target).unwrap())
        };
        assert_eq!(check("::ffff:10.0.0.0/104", "10.1.2.3:5900"), Ok(()));
        assert_eq!(check("10.0.0.0/8", "[::ffff:10.1.2.3]:5900"), Ok(()));
        assert_eq!(check("10.0.0.7", "[::ffff:10.0.0.7]:5900"), Ok(()));
        assert_eq!(check("::FFFF:10.0.0.7", "10.0.0.7:5900"), Ok(()));
        assert_eq!(
            check("::/0", "[::ffff:127.0.0.1]:5900"),
            Err(PolicyViolation::Host("::ffff:127.0.0.1".into())),
            "an IPv6 rule does not reach IPv4"
        );
        assert_eq!(
            check("10.0.0.0/33", "10.0.0.1:5900"),
            Err(PolicyViolation::Host("10.0.0.1".into()))
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
        assert_eq!(
            (tenant.limits.idle_timeout, tenant.limits.max_idle_timeout),
            (None, None),
            "a record from before idle timeouts has none"
        );
        assert!(
            serde_json::from_str::<Tenant>(r#"{"id":"x","key_sha256":"00","color":1}"#).is_err()
        );
    }
}
