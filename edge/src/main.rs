//! `deskbroker-edge`: reads flags, starts logging, opens the registry, binds, joins the cluster, serves until
//! SIGINT or SIGTERM, then drains (see docs/lifecycle.md).

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use deskbroker_broker::api::{self, Api, ApiConfig};
use deskbroker_broker::config::BrokerConfig;
use deskbroker_broker::tenants::{Limits, Policy, Tenant};
use deskbroker_broker::{Membership, MemoryRegistry, RedisRegistry, Registry, session_file};
use deskbroker_demo::DemoDesktop;
use deskbroker_edge::config::{Args, LogFormat};
use deskbroker_edge::peer::ClusterSecret;
use deskbroker_shared::cluster::NodeId;
use deskbroker_shared::ids::{SessionToken, TenantId, TokenDigest};
use deskbroker_shared::session::{HostPort, Session, SessionId, Target};

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
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            session_file::parse(&text).with_context(|| path.display().to_string())?
        }
        None => Vec::new(),
    };
    let demo = match args.demo {
        true => Some(start_demo(&mut sessions, shutdown.clone()).await?),
        false => None,
    };
    for (token, session) in &sessions {
        registry
            .put_session(token, session)
            .await
            .context("storing sessions")?;
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let peer_listener = match args.peer_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        ),
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

    if let Some(peer) = &peer_listener {
        info!(addr = %peer.local_addr()?, url = %membership.me().peer_url, "peer listening");
    }
    info!(addr = %listener.local_addr()?, node = %membership.me().id, "listening");
    let control_plane = match &args.redis_url {
        // In a cluster the control plane is deskbroker-broker; alone, the node serves it itself.
        Some(_) => None,
        None => Some(control_plane(&args, membership.registry().clone()).await?),
    };
    let secret = args.cluster_secret.clone().map(ClusterSecret::new);
    let edge = deskbroker_edge::Edge::new(membership, secret, args.edge_config());
    deskbroker_edge::run(listener, peer_listener, edge, control_plane, shutdown).await?;
    leave.cancel();
    leases.await?;
    if let Some(demo) = demo {
        demo.await?;
    }
    info!("stopped");
    Ok(())
}

/// The control-plane API for a node without Redis: the configured tenants, and with `--demo` a tenant
/// `demo` (API key `demo`) that may reach VNC servers on loopback.
async fn control_plane(args: &Args, registry: Arc<dyn Registry>) -> anyhow::Result<axum::Router> {
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            BrokerConfig::parse(&text)?
        }
        None => BrokerConfig::default(),
    };
    let mut tenants = config.tenants.clone();
    if args.demo {
        let policy = Policy {
            hosts: vec!["127.0.0.1".into()],
            ports: vec!["1-65535".into()],
            kinds: vec!["vnc".into()],
        };
        let key_sha256 = TokenDigest::of("demo");
        tenants.push(Tenant {
            id: TenantId::new("demo"),
            key_sha256,
            policy,
            limits: Limits::default(),
        });
    }
    for tenant in &tenants {
        registry.put_tenant(tenant).await?;
    }
    let api_config = ApiConfig {
        admin_key: args.admin_key.as_deref().map(TokenDigest::of),
        guacd_pools: config.pools()?,
    };
    Ok(api::router(Api::new(registry, api_config)))
}

/// Starts the demo desktop on a loopback port and grants it to the token `demo`.
async fn start_demo(
    sessions: &mut Vec<(SessionToken, Session)>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo desktop")?;
    let addr = listener.local_addr()?;
    let target = Target::Vnc {
        addr: HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
    };
    let tenant = TenantId::new(session_file::DEFAULT_TENANT);
    let session = Session::new(SessionId::new("demo"), tenant, target);
    sessions.push((SessionToken::new("demo"), session));
    info!(%addr, "demo desktop serving; open /websockify?token=demo");
    let desktop = DemoDesktop::new(deskbroker_demo::Config::default());
    Ok(tokio::spawn(async move {
        desktop.serve(listener, shutdown).await
    }))
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
