//! The control plane's configuration file (`--config`, JSON): the tenants to create at start, and the
//! guacd pools sessions may use.
//!
//! ```json
//! {
//!   "tenants": [
//!     { "id": "acme", "key_sha256": "<hex SHA-256 of the API key>",
//!       "policy": { "hosts": ["10.0.0.0/8", "*.acme.svc"], "ports": ["5900-5999", "3389"],
//!                   "kinds": ["vnc", "guacd-rdp"] },
//!       "limits": { "max_tunnels": 20, "max_lifetime": "8h" } }
//!   ],
//!   "guacd_pools": { "default": ["guacd-0.guacd:4822", "guacd-1.guacd:4822"] }
//! }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use deskbroker_shared::session::HostPort;

use crate::tenants::Tenant;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    #[serde(default)]
    pub tenants: Vec<Tenant>,
    #[serde(default)]
    pub guacd_pools: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Json(#[from] serde_json::Error),
    #[error("guacd pool {pool:?}: {error}")]
    Guacd {
        pool: String,
        error: deskbroker_shared::session::BadHostPort,
    },
}

impl BrokerConfig {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Ok(serde_json::from_str(text)?)
    }

    /// The guacd pools with their addresses parsed.
    pub fn pools(&self) -> Result<BTreeMap<String, Vec<HostPort>>, ConfigError> {
        self.guacd_pools
            .iter()
            .map(|(pool, addrs)| {
                let parsed = addrs
                    .iter()
                    .map(|addr| HostPort::parse(addr))
                    .collect::<Result<Vec<_>, _>>();
                parsed
                    .map(|addrs| (pool.clone(), addrs))
                    .map_err(|error| ConfigError::Guacd {
                        pool: pool.clone(),
                        error,
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_example() {
        let text = format!(
            r#"{{"tenants":[{{"id":"acme","key_sha256":"{}","policy":{{"hosts":["10.0.0.0/8"],"ports":["5900"],"kinds":["vnc"]}}}}],
                "guacd_pools":{{"default":["127.0.0.1:4822"]}}}}"#,
            deskbroker_shared::ids::TokenDigest::of("k").to_hex()
        );
        let config = BrokerConfig::parse(&text).unwrap();
        assert_eq!(config.tenants.len(), 1);
        assert_eq!(config.pools().unwrap()["default"][0].port, 4822);
        assert!(
            BrokerConfig::parse(r#"{"tenant":[]}"#).is_err(),
            "unknown fields are errors"
        );
    }
}
