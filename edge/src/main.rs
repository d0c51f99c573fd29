//! `deskbroker-edge`: reads flags and files, starts logging, opens the registry, binds, joins the cluster,
//! serves until SIGINT or SIGTERM, then drains and leaves (see docs/lifecycle.md).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use deskbroker_broker::config::BrokerConfig;
use deskbroker_broker::{Membership, MemoryRegistry, RedisRegistry, Registry, session_file};
use deskbroker_edge::config::{Args, LogFormat};
use deskbroker_edge::{Edge, standalone};
use deskbroker_shared::ids::{ClusterSecret, NodeId};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));

    let registry: Arc<dyn Registry> = match &args.redis_url {
        Some(url) => Arc::new(
            RedisRegistry::connect(url)
                .await
                .context("connecting to Redis")?,
        ),
        None => Arc::new(MemoryRegistry::new()),
    };
    let mut sessions = match &args.sessions {
        Some(path) => {
            session_file::parse(&read(path)?).with_context(|| path.display().to_string())?
        }
        None => Vec::new(),
    };
    let config = match &args.config {
        Some(path) => {
            BrokerConfig::parse(&read(path)?).with_context(|| path.display().to_string())?
        }
        None => BrokerConfig::default(),
    };
    let (demo, mut routes) = match args.demo {
        true => {
            let demo = standalone::start_demo(&mut sessions, shutdown.clone()).await?;
            (Some(demo.task), demo.routes)
        }
        false => (None, axum::Router::new()),
    };
    for (token, session) in &sessions {
        registry
            .put_session(token, session)
            .await
            .context("storing sessions")?;
    }

    let listener = bind(args.listen).await?;
    let peer_listener = match args.peer_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let peer_url = match (&args.advertise, &peer_listener) {
        (Some(url), _) => url.clone(),
        (None, Some(listener)) => format!("http://{}", listener.local_addr()?),
        (None, None) => String::new(),
    };
    let node_id = args
        .node_id
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok());
    let node_id = NodeId::new(node_id.unwrap_or_else(|| format!("edge-{}", uuid::Uuid::new_v4())));
    let membership = Membership::new(registry, node_id, peer_url, args.lease);
    membership.join().await.context("joining the cluster")?;
    // The lease outlives the listener: tunnels draining are still owned, and found, until they end.
    let leave = CancellationToken::new();
    let leases = tokio::spawn({
        let (membership, leave) = (membership.clone(), leave.clone());
        async move { membership.run(leave).await }
    });

    let secret = args.cluster_secret.clone().map(ClusterSecret::new);
    let edge = Edge::new(membership.clone(), secret, args.edge_config());
    if args.redis_url.is_none() {
        // In a cluster the control plane is deskbroker-broker; alone, the node serves it itself.
        let admin_key = args.admin_key.as_deref();
        routes =
            routes.merge(standalone::control_plane(&edge, config, admin_key, args.demo).await?);
    }
    if let Some(peer) = &peer_listener {
        info!(addr = %peer.local_addr()?, url = %membership.me().peer_url, "peer listening");
    }
    info!(addr = %listener.local_addr()?, node = %membership.me().id, "listening");
    deskbroker_edge::run(listener, peer_listener, edge, routes, shutdown).await?;
    leave.cancel();
    leases.await?;
    if let Some(demo) = demo {
        demo.await?;
    }
    info!("stopped");
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DESKBROKER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("stop requested");
    shutdown.cancel();
}
