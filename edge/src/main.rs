//! `deskbroker-edge`: reads flags and files, starts logging, opens the registry, starts the node, serves
//! until SIGINT or SIGTERM, then stops it (see docs/lifecycle.md).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tracing::info;

use deskbroker_broker::config::BrokerConfig;
use deskbroker_broker::process;
use deskbroker_broker::{MemoryRegistry, RedisRegistry, Registry, session_file};
use deskbroker_edge::flags::{Args, Host};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    process::init_logging(&args.log).context("DESKBROKER_LOG")?;
    let stop = process::stop_signal().context("installing the stop signal handlers")?;

    let sessions = match &args.sessions {
        Some(path) => {
            session_file::parse(&read(path)?).with_context(|| path.display().to_string())?
        }
        None => Vec::new(),
    };
    let broker = match &args.config {
        Some(path) => {
            BrokerConfig::parse(&read(path)?).with_context(|| path.display().to_string())?
        }
        None => BrokerConfig::default(),
    };
    let registry: Arc<dyn Registry> = match &args.redis_url {
        Some(url) => Arc::new(
            RedisRegistry::connect(url)
                .await
                .context("connecting to Redis")?,
        ),
        None => Arc::new(MemoryRegistry::new()),
    };
    let host = Host {
        name: std::env::var("HOSTNAME").ok(),
        descriptors: process::raise_descriptor_limit().context("raising the descriptor limit")?,
        addresses: if_addrs::get_if_addrs()
            .context("listing the network interfaces")?
            .iter()
            .map(|interface| interface.ip())
            .collect(),
    };
    let config = args.into_config(sessions, broker, &host);
    let node = deskbroker_edge::start(registry, config).await?;
    stop.await;
    node.stop().await?;
    info!("stopped");
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
