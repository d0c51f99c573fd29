//! `deskbroker-broker`: the control plane the platform's backend calls. Reads flags and the configuration
//! file, stores the configured tenants in the registry, serves the API until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing::info;

use deskbroker_broker::api::traffic::PeerTraffic;
use deskbroker_broker::api::{self, Api, ApiConfig};
use deskbroker_broker::config::BrokerConfig;
use deskbroker_broker::{RedisRegistry, Registry};
use deskbroker_shared::ids::{ClusterSecret, TokenDigest};

#[derive(Debug, Parser)]
#[command(
    name = "deskbroker-broker",
    version,
    about = "deskbroker's control plane"
)]
struct Args {
    /// Address for the API.
    #[arg(
        long,
        env = "DESKBROKER_BROKER_LISTEN",
        default_value = "127.0.0.1:8090"
    )]
    listen: SocketAddr,
    /// The cluster's registry: `redis://host:port` or `redis+cluster://host:port[,…]`.
    #[arg(long = "redis", env = "DESKBROKER_REDIS_URL")]
    redis_url: String,
    /// Configuration file: tenants and guacd pools (docs/control-plane.md).
    #[arg(long, env = "DESKBROKER_CONFIG")]
    config: Option<PathBuf>,
    /// The cluster's secret, to ask nodes about their tunnels; prefer the variable.
    #[arg(long, env = "DESKBROKER_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// The admin key; prefer the variable.
    #[arg(long, env = "DESKBROKER_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DESKBROKER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .json()
        .flatten_event(true)
        .init();
    let registry: Arc<dyn Registry> = Arc::new(
        RedisRegistry::connect(&args.redis_url)
            .await
            .context("connecting to Redis")?,
    );
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            BrokerConfig::parse(&text)?
        }
        None => BrokerConfig::default(),
    };
    for tenant in &config.tenants {
        registry
            .put_tenant(tenant)
            .await
            .context("storing tenants")?;
    }
    let api_config = ApiConfig {
        // The live view's byte counts come from the owning nodes, asked with the cluster secret.
        traffic: args
            .cluster_secret
            .clone()
            .map(|secret| PeerTraffic::new(ClusterSecret::new(secret)) as _),
        admin_key: args.admin_key.as_deref().map(TokenDigest::of),
        guacd_pools: config.pools()?,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    info!(addr = %listener.local_addr()?, tenants = config.tenants.len(), "listening");
    let app = api::router(Api::new(registry, api_config));
    axum::serve(listener, app)
        .with_graceful_shutdown(stop_signal())
        .await?;
    info!("stopped");
    Ok(())
}

async fn stop_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
