//! Who a browser request came from, for the logs: the connection's peer address, or, when that peer is
//! a trusted proxy (`--trusted-proxy`), the client its `X-Forwarded-For` names. The header is read from
//! the right, past the trusted proxies' own entries, so a client cannot name itself: what it wrote is to
//! the left of what its proxy appended. Used only to say who connected, never to decide anything.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::HeaderMap;

use deskbroker_shared::cidr::Cidr;

/// The header a proxy appends its client's address to.
const FORWARDED_FOR: &str = "x-forwarded-for";

/// A connection's peer, as the listener saw it, with the proxies it trusts.
#[derive(Debug, Clone)]
pub struct Peer {
    addr: IpAddr,
    trusted: Arc<[Cidr]>,
}

impl Peer {
    pub fn new(addr: IpAddr, trusted: Arc<[Cidr]>) -> Self {
        Self {
            addr: addr.to_canonical(),
            trusted,
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|proxy| proxy.contains(ip))
    }

    /// The client's address: the last `X-Forwarded-For` entry that is not a trusted proxy, when the
    /// peer is one; the peer's own otherwise, and when the header is missing or does not parse.
    pub fn client(&self, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(self.addr) {
            return self.addr;
        }
        let entries = headers
            .get_all(FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim);
        let hops: Vec<&str> = entries.collect();
        for hop in hops.into_iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.is_trusted(ip) => continue,
                Ok(ip) => return ip.to_canonical(),
                Err(_) => break,
            }
        }
        self.addr
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn peer(addr: &str) -> Peer {
        let trusted: Vec<Cidr> = ["10.0.0.0/8"].iter().map(|c| c.parse().unwrap()).collect();
        Peer::new(addr.parse().unwrap(), trusted.into())
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(FORWARDED_FOR, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        let headers = forwarded(&["198.51.100.7"]);
        assert_eq!(
            peer("203.0.113.1").client(&headers).to_string(),
            "203.0.113.1"
        );
        assert_eq!(
            peer("10.1.2.3").client(&headers).to_string(),
            "198.51.100.7"
        );
        assert_eq!(
            peer("10.1.2.3").client(&HeaderMap::new()).to_string(),
            "10.1.2.3"
        );
    }

    #[test]
    fn the_client_is_the_rightmost_entry_past_the_trusted_proxies() {
        // The client wrote a spoofed entry; its proxy appended the real address; an inner proxy its own.
        let headers = forwarded(&["192.0.2.66, 198.51.100.7", "10.9.9.9"]);
        assert_eq!(
            peer("10.1.2.3").client(&headers).to_string(),
            "198.51.100.7"
        );
        let garbled = forwarded(&["198.51.100.7, not-an-address"]);
        assert_eq!(peer("10.1.2.3").client(&garbled).to_string(), "10.1.2.3");
        let mapped = forwarded(&["::ffff:198.51.100.7"]);
        assert_eq!(peer("10.1.2.3").client(&mapped).to_string(), "198.51.100.7");
    }
}
