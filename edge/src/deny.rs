//! The operator's deny list for tenants' targets: addresses no tenant's session may reach, whatever its
//! policy allows by name. By default: loopback, link-local (where clouds serve instance metadata) and the
//! node's own addresses. Names are resolved at the moment of connecting, and the socket is opened to an
//! address that was checked, never to the name again: a DNS answer that changes between the check and the
//! connect (rebinding) changes nothing. guacd is given the checked address in place of the name.

use std::net::{IpAddr, SocketAddr};

use tokio::net::lookup_host;

use deskbroker_shared::cidr::Cidr;
use deskbroker_shared::session::HostPort;

use crate::error::TunnelError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    blocks: Vec<Cidr>,
}

impl DenyList {
    pub fn new(blocks: Vec<Cidr>) -> Self {
        Self { blocks }
    }

    /// The empty list, in a `static`.
    pub const fn new_const() -> Self {
        Self { blocks: Vec::new() }
    }

    pub fn denies(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|block| block.contains(ip))
    }

    /// The addresses `addr` resolves to now, less those the list denies; refused when none remain.
    pub async fn resolve(&self, addr: &HostPort) -> Result<Vec<SocketAddr>, TunnelError> {
        let resolved = lookup_host((addr.host.as_str(), addr.port))
            .await
            .map_err(|source| TunnelError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let allowed: Vec<SocketAddr> = resolved.filter(|a| !self.denies(a.ip())).collect();
        match allowed.is_empty() {
            true => Err(TunnelError::Denied(addr.clone())),
            false => Ok(allowed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(blocks: &[&str]) -> DenyList {
        DenyList::new(blocks.iter().map(|b| b.parse().unwrap()).collect())
    }

    fn addr(host: &str) -> HostPort {
        HostPort {
            host: host.into(),
            port: 5900,
        }
    }

    #[tokio::test]
    async fn names_and_literals_are_checked_as_the_addresses_they_are() {
        let loopback = list(&["127.0.0.0/8", "::1/128"]);
        for denied in ["localhost", "127.0.0.1", "127.1", "::1", "::ffff:127.0.0.1"] {
            let refused = loopback.resolve(&addr(denied)).await;
            assert!(
                matches!(refused, Err(TunnelError::Denied(_))),
                "{denied}: {refused:?}"
            );
        }
        let allowed = loopback.resolve(&addr("192.0.2.7")).await.unwrap();
        assert_eq!(allowed, ["192.0.2.7:5900".parse().unwrap()]);
        let open = DenyList::default()
            .resolve(&addr("localhost"))
            .await
            .unwrap();
        assert!(!open.is_empty(), "no list, no refusal");
    }
}
