//! `deskbroker-broker` as a running service: [`start`] stores the configured tenants (and stores them again
//! whenever the registry loses them), binds the API's listener and serves it; [`BrokerHandle::stop`] stops
//! it, with a deadline. The binary only reads flags and files and calls these, so a test can run the
//! control plane in its own process too.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use deskbroker_shared::ids::{ClusterSecret, TokenDigest};
use deskbroker_shared::seal::Sealer;

use crate::api::traffic::PeerTraffic;
use crate::api::{self, Api, ApiConfig};
use crate::config::{BrokerConfig, ConfigError};
use crate::defaults::STOP_TIMEOUT;
use crate::process::{StopError, Tasks};
use crate::registry::{Registry, RegistryError};
use crate::{metrics, probes, restore};

/// What a broker needs besides its registry.
#[derive(Debug)]
pub struct Settings {
    /// Address for the API (which serves the probes too).
    pub listen: SocketAddr,
    /// Address for the probes alone, apart from the API.
    pub ops_listen: Option<SocketAddr>,
    /// Tenants to store at start, and the guacd pools sessions may use.
    pub config: BrokerConfig,
    /// SHA-256 of the admin key; without one, no caller is an administrator.
    pub admin_key: Option<TokenDigest>,
    /// To ask nodes for their tunnels' byte counts; without it the live view shows none.
    pub cluster_secret: Option<ClusterSecret>,
    /// What seals session tokens (see `deskbroker_shared::seal`); without it tokens are random.
    pub sealer: Option<Sealer>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("storing the configured tenants: {0}")]
    Tenants(#[from] RegistryError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running broker.
pub struct BrokerHandle {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: Tasks,
}

/// Stores the configured tenants, then serves the API on `settings.listen` until stopped.
pub async fn start(
    registry: Arc<dyn Registry>,
    settings: Settings,
) -> Result<BrokerHandle, StartError> {
    let guacd_pools = settings.config.pools()?;
    let tenants = Arc::new(settings.config.tenants.clone());
    let mut write_tenants = {
        let registry = registry.clone();
        move || {
            let (registry, tenants) = (registry.clone(), tenants.clone());
            async move {
                for tenant in tenants.iter() {
                    registry.put_tenant(tenant).await?;
                }
                Ok(())
            }
        }
    };
    restore::write(
        registry.as_ref(),
        restore::TENANTS_MARKER,
        &mut write_tenants,
    )
    .await?;
    let api_config = ApiConfig {
        // The live view's byte counts come from the owning nodes, asked with the cluster secret.
        traffic: settings
            .cluster_secret
            .map(|secret| PeerTraffic::new(secret) as _),
        admin_key: settings.admin_key,
        guacd_pools,
        sealer: settings.sealer,
    };
    let listener = bind(settings.listen).await?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: settings.listen,
        source,
    })?;
    let stop = CancellationToken::new();
    let mut tasks = Tasks::default();
    // A Redis that restarted empty gets the configured tenants back.
    let kept = restore::keep(
        registry.clone(),
        restore::TENANTS_MARKER.into(),
        stop.clone(),
        write_tenants,
    );
    tasks.spawn("the configured tenants", async move {
        kept.await;
        Ok(())
    });
    // The ops listener keeps answering (not ready) until the API listener has stopped.
    let stopped = CancellationToken::new();
    if let Some(ops_addr) = settings.ops_listen {
        let ops = bind(ops_addr).await?;
        if let Ok(bound) = ops.local_addr() {
            info!(addr = %bound, "ops listening");
        }
        let metrics = || async { metrics::answer(metrics::scrape(|_| {})) };
        let probes = probes::router(registry.clone(), stop.clone()).route("/metrics", get(metrics));
        let server =
            axum::serve(ops, probes).with_graceful_shutdown(stopped.clone().cancelled_owned());
        tasks.spawn("the ops listener", server.into_future());
    }
    let app = api::router(Api::new(registry.clone(), api_config))
        .merge(probes::router(registry, stop.clone()));
    let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    tasks.spawn("the API listener", {
        let stopped = stopped.clone();
        async move {
            let served = server.await;
            stopped.cancel();
            served
        }
    });
    info!(%addr, tenants = settings.config.tenants.len(), "listening");
    Ok(BrokerHandle { addr, stop, tasks })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

impl BrokerHandle {
    /// The address the API listens on (the port chosen, when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in progress finish within [`STOP_TIMEOUT`], and returns.
    pub async fn stop(self) -> Result<(), StopError> {
        self.stop.cancel();
        self.tasks.join(STOP_TIMEOUT).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryRegistry;

    #[tokio::test]
    async fn serves_the_api_until_stopped() {
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            ops_listen: None,
            config: BrokerConfig::default(),
            admin_key: None,
            cluster_secret: None,
            sealer: None,
        };
        let broker = start(Arc::new(MemoryRegistry::new()), settings)
            .await
            .unwrap();
        let addr = broker.addr();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /api/v1/sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

        broker.stop().await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "nothing listens after the stop"
        );
    }
}
