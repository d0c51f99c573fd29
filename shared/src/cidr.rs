//! Address blocks (`10.0.0.0/8`, `fd00::/8`, or one address), as operators and tenants write them, and the
//! one rule for whether an address is in one. IPv4 addresses written as IPv6 (`::ffff:127.0.0.1`) are
//! compared as the IPv4 addresses they are, so no spelling slips past a rule.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    bits: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an address or address block: {0:?}")]
pub struct BadCidr(pub String);

impl Cidr {
    /// The block of exactly one address.
    pub fn host(ip: IpAddr) -> Self {
        let ip = ip.to_canonical();
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        Self { network: ip, bits }
    }

    /// Whether every address of `other` is in this block.
    pub fn contains_block(&self, other: &Cidr) -> bool {
        self.bits <= other.bits && self.contains(other.network)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(text: &str) -> Result<Self, BadCidr> {
        let bad = || BadCidr(text.to_owned());
        let (address, bits) = match text.trim().split_once('/') {
            Some((address, bits)) => (address, Some(bits)),
            None => (text.trim(), None),
        };
        let written = IpAddr::from_str(address).map_err(|_| bad())?;
        let most = if written.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(bits) => bits
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= most)
                .ok_or_else(bad)?,
            None => most,
        };
        let network = written.to_canonical();
        // An IPv4 block written as IPv6 (`::ffff:10.0.0.0/104`) is that IPv4 block.
        let bits = match (written, network) {
            (IpAddr::V6(_), IpAddr::V4(_)) => bits.checked_sub(96).ok_or_else(bad)?,
            _ => bits,
        };
        Ok(Self { network, bits })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses_however_written() {
        let private: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(private.contains(ip("10.200.3.4")));
        assert!(private.contains(ip("::ffff:10.1.1.1")));
        assert!(!private.contains(ip("11.0.0.1")));
        let loopback: Cidr = "::ffff:127.0.0.0/104".parse().unwrap();
        assert_eq!(
            loopback.to_string(),
            "127.0.0.0/8",
            "mapped blocks are IPv4"
        );
        assert!(loopback.contains(ip("127.1.2.3")));
        let one: Cidr = "fd00::7".parse().unwrap();
        assert!(one.contains(ip("fd00::7")));
        assert!(!one.contains(ip("fd00::8")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        assert!(!"0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("::1")));
        assert_eq!(Cidr::host(ip("::ffff:1.2.3.4")), "1.2.3.4".parse().unwrap());
    }

    #[test]
    fn refuses_what_is_not_a_block() {
        for text in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "host.example",
            "10.0.0/8",
            "::ffff:10.0.0.0/64",
        ] {
            assert!(text.parse::<Cidr>().is_err(), "{text}");
        }
    }
}
