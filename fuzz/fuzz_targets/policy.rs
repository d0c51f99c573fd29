//! A tenant's policy (`Policy::check`) over targets, and address blocks (`Cidr`), both built from the
//! input: addresses and blocks in every spelling (IPv4, IPv6, IPv4-mapped IPv6), names and wildcards from a
//! small alphabet so that they meet, and free text.
//!
//! Checks: nothing panics; a block parses exactly when the reference below says it is one, contains an
//! address exactly when the reference does, and reads back from its display form; and the policy's
//! verdict, violation included, is the reference's, for VNC targets and for guacd targets with the
//! desktop and one more host parameter (the allowlist of parameters is `guacd_params`' data). The reference compares addresses bit by bit as 16
//! bytes with their family (IPv4 and IPv4-mapped IPv6 are one family), where the code under test uses
//! masks on `u32`/`u128`: an address is in a block whatever either is spelled as.

#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use deskbroker_broker::tenants::{Policy, PolicyViolation};
use deskbroker_shared::cidr::Cidr;
use deskbroker_shared::guacd_params;
use deskbroker_shared::session::{HostPort, Target};
use libfuzzer_sys::fuzz_target;

const LABELS: [&str; 6] = ["acme", "svc", "desk-1", "evilacme", "ACME", "x"];
const PROTOCOLS: [&str; 3] = ["vnc", "rdp", "ssh"];
const KINDS: [&str; 5] = ["vnc", "guacd-vnc", "guacd-rdp", "guacd-ssh", "guacd-"];

#[derive(Arbitrary, Debug)]
enum Address {
    V4([u8; 4]),
    V6([u8; 16]),
    /// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`).
    Mapped([u8; 4]),
}

impl Address {
    fn ip(&self) -> IpAddr {
        match self {
            Address::V4(a) => IpAddr::V4(Ipv4Addr::from(*a)),
            Address::V6(a) => IpAddr::V6(Ipv6Addr::from(*a)),
            Address::Mapped(a) => IpAddr::V6(Ipv4Addr::from(*a).to_ipv6_mapped()),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Name {
    labels: Vec<u8>,
    trailing_dot: bool,
}

impl Name {
    fn text(&self) -> String {
        let labels: Vec<&str> = self
            .labels
            .iter()
            .take(4)
            .map(|i| LABELS[usize::from(*i) % LABELS.len()])
            .collect();
        let mut text = labels.join(".");
        if self.trailing_dot {
            text.push('.');
        }
        text
    }
}

#[derive(Arbitrary, Debug)]
enum HostRule {
    Block(Address, u8),
    Address(Address),
    Name(Name),
    Wildcard(Name),
    Text(String),
}

impl HostRule {
    fn text(&self) -> String {
        match self {
            HostRule::Block(address, bits) => format!("{}/{bits}", address.ip()),
            HostRule::Address(address) => address.ip().to_string(),
            HostRule::Name(name) => name.text(),
            HostRule::Wildcard(name) => format!("*.{}", name.text()),
            HostRule::Text(text) => text.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Host {
    Address(Address),
    Name(Name),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum PortRule {
    One(u16),
    Range(u16, u16),
    Text(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    hosts: Vec<HostRule>,
    ports: Vec<PortRule>,
    kinds: Vec<u8>,
    host: Host,
    port: u16,
    guacd: Option<Guacd>,
}

/// A guacd target: its protocol, whether `hostname` and `port` are given, and one more parameter that
/// names a host (a repeater, SFTP, a gateway: `guacd_params::HOSTS`), with its port or not.
#[derive(Arbitrary, Debug)]
struct Guacd {
    protocol: u8,
    with_host: bool,
    with_port: bool,
    other: Option<(u8, Host, Option<Port>)>,
}

#[derive(Arbitrary, Debug)]
enum Port {
    Number(u16),
    Text(String),
}

impl Host {
    fn text(&self) -> String {
        match self {
            Host::Address(address) => address.ip().to_string(),
            Host::Name(name) => name.text(),
            Host::Text(text) => text.clone(),
        }
    }
}

fuzz_target!(|input: Input| {
    let host = input.host.text();
    let policy = Policy {
        hosts: input.hosts.iter().map(HostRule::text).collect(),
        ports: input
            .ports
            .iter()
            .map(|rule| match rule {
                PortRule::One(port) => port.to_string(),
                PortRule::Range(low, high) => format!("{low}-{high}"),
                PortRule::Text(text) => text.clone(),
            })
            .collect(),
        kinds: input
            .kinds
            .iter()
            .map(|i| KINDS[usize::from(*i) % KINDS.len()].to_owned())
            .collect(),
    };

    for rule in &policy.hosts {
        check_block(rule, &host);
    }

    let (target, expected) = match &input.guacd {
        None => {
            let addr = HostPort {
                host: host.clone(),
                port: input.port,
            };
            let expected = policy_allows_kind(&policy, "vnc")
                .and_then(|()| policy_allows(&policy, &host, input.port));
            (Target::Vnc { addr }, expected)
        }
        Some(guacd) => {
            let protocol = PROTOCOLS[usize::from(guacd.protocol) % PROTOCOLS.len()];
            let mut params = BTreeMap::new();
            if guacd.with_host {
                params.insert("hostname".to_owned(), host.clone());
            }
            if guacd.with_port {
                params.insert("port".to_owned(), input.port.to_string());
            }
            if let Some((which, other, port)) = &guacd.other {
                let param = &guacd_params::HOSTS[1 + usize::from(*which) % 3];
                params.insert(param.host.to_owned(), other.text());
                match port {
                    Some(Port::Number(port)) => {
                        params.insert(param.port.to_owned(), port.to_string())
                    }
                    Some(Port::Text(port)) => params.insert(param.port.to_owned(), port.clone()),
                    None => None,
                };
            }
            let expected = guacd_expected(&policy, protocol, &params);
            let target = Target::Guacd {
                addr: HostPort {
                    host: "guacd".into(),
                    port: 4822,
                },
                protocol: protocol.to_owned(),
                params,
            };
            (target, expected)
        }
    };
    assert_eq!(policy.check(&target), expected, "{policy:?} {target:?}");
});

/// What the policy must say of a guacd target: its kind, then the parameters a tenant may set, then the
/// desktop, then every host guacd is told to reach, in `guacd_params::HOSTS` order.
fn guacd_expected(
    policy: &Policy,
    protocol: &str,
    params: &BTreeMap<String, String>,
) -> Result<(), PolicyViolation> {
    policy_allows_kind(policy, &format!("guacd-{protocol}"))?;
    for name in params.keys() {
        if guacd_params::operator_only(name) {
            return Err(PolicyViolation::OperatorOnly(name.clone()));
        }
        if !guacd_params::tenant_may_set(protocol, name) {
            return Err(PolicyViolation::UnknownParam {
                protocol: protocol.to_owned(),
                name: name.clone(),
            });
        }
    }
    if params.get("hostname").is_none_or(|h| h.is_empty()) || !params.contains_key("port") {
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
        policy_allows(policy, host, port)?;
    }
    Ok(())
}

fn policy_allows_kind(policy: &Policy, kind: &str) -> Result<(), PolicyViolation> {
    match policy.kinds.iter().any(|k| k == kind) {
        true => Ok(()),
        false => Err(PolicyViolation::Kind(kind.to_owned())),
    }
}

fn policy_allows(policy: &Policy, host: &str, port: u16) -> Result<(), PolicyViolation> {
    if !policy.hosts.iter().any(|rule| host_allowed(rule, host)) {
        return Err(PolicyViolation::Host(host.to_owned()));
    }
    if !policy.ports.iter().any(|rule| port_allowed(rule, port)) {
        return Err(PolicyViolation::Port(port));
    }
    Ok(())
}

/// A block as the reference reads it: its address as 16 bytes, whether it is IPv4, and the prefix length
/// over the 16 bytes.
fn reference_block(text: &str) -> Option<([u8; 16], bool, usize)> {
    let text = text.trim();
    let (address, bits) = match text.split_once('/') {
        Some((address, bits)) => (address, Some(bits)),
        None => (text, None),
    };
    let written: IpAddr = address.parse().ok()?;
    let (bytes, v4) = reference_address(written);
    let bits = match (bits, written) {
        (None, _) => 128,
        (Some(bits), IpAddr::V4(_)) => {
            96 + usize::from(bits.parse::<u8>().ok().filter(|b| *b <= 32)?)
        }
        (Some(bits), IpAddr::V6(_)) => usize::from(bits.parse::<u8>().ok().filter(|b| *b <= 128)?),
    };
    // An IPv4 block written as IPv6 must not reach above the IPv4 part.
    if v4 && bits < 96 {
        return None;
    }
    Some((bytes, v4, bits))
}

/// An address as 16 bytes and whether it is IPv4 (written so, or as IPv4-mapped IPv6).
fn reference_address(ip: IpAddr) -> ([u8; 16], bool) {
    match ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), true),
        IpAddr::V6(v6) => {
            let bytes = v6.octets();
            (
                bytes,
                bytes[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
            )
        }
    }
}

fn reference_contains(block: ([u8; 16], bool, usize), ip: IpAddr) -> bool {
    let (network, v4, bits) = block;
    let (address, ip_v4) = reference_address(ip);
    let bit = |bytes: &[u8; 16], i: usize| bytes[i / 8] >> (7 - i % 8) & 1;
    v4 == ip_v4 && (0..bits).all(|i| bit(&network, i) == bit(&address, i))
}

fn check_block(rule: &str, host: &str) {
    let parsed = rule.parse::<Cidr>();
    let reference = reference_block(rule);
    assert_eq!(parsed.is_ok(), reference.is_some(), "{rule:?} is a block");
    let (Ok(block), Some(reference)) = (parsed, reference) else {
        return;
    };
    assert_eq!(
        block.to_string().parse::<Cidr>(),
        Ok(block),
        "{block} reads back"
    );
    if let Ok(ip) = host.parse::<IpAddr>() {
        assert_eq!(
            block.contains(ip),
            reference_contains(reference, ip),
            "{rule} has {ip}"
        );
        assert!(Cidr::host(ip).contains(ip));
    }
}

fn host_allowed(rule: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let rule = rule.trim().to_ascii_lowercase();
    if let Some(block) = reference_block(&rule) {
        return host
            .parse::<IpAddr>()
            .is_ok_and(|ip| reference_contains(block, ip));
    }
    if rule.contains('/') {
        return false;
    }
    match rule.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|name| name.ends_with('.')),
        None => rule == host,
    }
}

fn port_allowed(rule: &str, port: u16) -> bool {
    let rule = rule.trim();
    match rule.split_once('-') {
        Some((low, high)) => match (low.parse::<u16>(), high.parse::<u16>()) {
            (Ok(low), Ok(high)) => low <= port && port <= high,
            _ => false,
        },
        None => rule.parse() == Ok(port),
    }
}
