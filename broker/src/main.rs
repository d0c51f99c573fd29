//! `deskbroker-broker`: the control plane the platform's backend calls. Reads flags and the configuration
//! file, starts logging, connects to Redis, serves the API until SIGINT or SIGTERM, then stops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tracing::{info, warn};

use deskbroker_broker::config::BrokerConfig;
use deskbroker_broker::process::{self, LogArgs};
use deskbroker_broker::service::{self, Settings};
use deskbroker_broker::{RedisRegistry, defaults};
use deskbroker_shared::ids::{ClusterSecret, TokenDigest};
use deskbroker_shared::seal;

#[derive(Debug, Parser)]
#[command(
    name = "deskbroker-broker",
    version,
    about = "deskbroker's control plane"
)]
struct Args {
    /// Address for the API.
    #[arg(long, env = "DESKBROKER_BROKER_LISTEN", default_value = defaults::LISTEN)]
    listen: SocketAddr,
    /// Address for the probes (`/healthz`, `/readyz`) apart from the API, which serves them too.
    #[arg(long, env = "DESKBROKER_OPS_LISTEN")]
    ops_listen: Option<SocketAddr>,
    /// The cluster's registry: `redis://host:port`, `redis+cluster://host:port[,…]` or
    /// `redis+sentinel://host:port[,…]/<master name>`.
    #[arg(long = "redis", env = "DESKBROKER_REDIS_URL")]
    redis_url: String,
    /// Configuration file: tenants and guacd pools (docs/control-plane.md).
    #[arg(long, env = "DESKBROKER_CONFIG")]
    config: Option<PathBuf>,
    /// The cluster's secret, to ask nodes about their tunnels; prefer the variable.
    #[arg(long, env = "DESKBROKER_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Keys that seal session tokens (Base64 of 32 bytes each, comma-separated; the first seals, all
    /// open), the same on the broker and every node; without them, the cluster secret's derived key.
    /// Prefer the variable.
    #[arg(long, env = "DESKBROKER_SESSION_KEYS", hide_env_values = true)]
    session_keys: Option<String>,
    /// The admin key; prefer the variable.
    #[arg(long, env = "DESKBROKER_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    process::init_logging(&args.log).context("DESKBROKER_LOG")?;
    let stop = process::stop_signal().context("installing the stop signal handlers")?;
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            BrokerConfig::parse(&text).with_context(|| path.display().to_string())?
        }
        None => BrokerConfig::default(),
    };
    let registry = RedisRegistry::connect(&args.redis_url)
        .await
        .context("connecting to Redis")?;
    let keys = args
        .session_keys
        .as_deref()
        .map(seal::parse_keys)
        .transpose();
    let keys = keys.context("DESKBROKER_SESSION_KEYS")?;
    let sealer = seal::configured(keys.as_deref(), args.cluster_secret.as_deref());
    if sealer.is_none() {
        warn!(
            "no session keys and no cluster secret: tokens live only as long as the registry's data"
        );
    }
    let settings = Settings {
        listen: args.listen,
        ops_listen: args.ops_listen,
        config,
        admin_key: args.admin_key.as_deref().map(TokenDigest::of),
        cluster_secret: args.cluster_secret.map(ClusterSecret::new),
        sealer,
    };
    let broker = service::start(Arc::new(registry), settings).await?;
    stop.await;
    broker.stop().await?;
    info!("stopped");
    Ok(())
}
