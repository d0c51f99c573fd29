//! `deskbroker-edge`: reads flags, starts logging, fills the registry, binds, serves until SIGINT or
//! SIGTERM, then drains (see docs/lifecycle.md).

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use deskbroker_broker::{MemoryRegistry, session_file};
use deskbroker_demo::DemoDesktop;
use deskbroker_edge::config::{Args, LogFormat};
use deskbroker_shared::ids::{SessionToken, TenantId};
use deskbroker_shared::session::{HostPort, Session, Target};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));

    let registry = MemoryRegistry::new();
    if let Some(path) = &args.sessions {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading session file {}", path.display()))?;
        let sessions = session_file::parse(&text).with_context(|| path.display().to_string())?;
        info!(count = sessions.len(), file = %path.display(), "sessions loaded");
        for (token, session) in sessions {
            registry.insert(&token, session);
        }
    }
    let demo = match args.demo {
        true => Some(start_demo(&registry, shutdown.clone()).await?),
        false => None,
    };

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    info!(addr = %listener.local_addr()?, "listening");
    let edge = deskbroker_edge::Edge::new(Arc::new(registry), args.edge_config());
    deskbroker_edge::run(listener, edge, shutdown).await?;
    if let Some(demo) = demo {
        demo.await?;
    }
    info!("stopped");
    Ok(())
}

/// Starts the demo desktop on a loopback port and grants it to the token `demo`.
async fn start_demo(
    registry: &MemoryRegistry,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo desktop")?;
    let addr = listener.local_addr()?;
    let session = Session {
        tenant: TenantId::new(session_file::DEFAULT_TENANT),
        target: Target::Vnc {
            addr: HostPort {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
        },
        expires: None,
    };
    registry.insert(&SessionToken::new("demo"), session);
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
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("stop requested");
    shutdown.cancel();
}
