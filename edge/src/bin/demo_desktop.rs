//! `deskbroker-demo-desktop`: the built-in demo desktop on its own, a VNC server for a cluster to connect to
//! (docker-compose.yml runs it as the desktop its sessions reach). `deskbroker-edge --demo` serves the same
//! desktop inside one node instead.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use deskbroker_broker::process::{self, LogArgs};
use deskbroker_demo::{Config, DemoDesktop};

/// The demo desktop (RFB 3.8, no authentication, a moving test pattern), serving any VNC viewer until
/// SIGINT or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "deskbroker-demo-desktop", version)]
struct Args {
    /// Address for VNC viewers.
    #[arg(long, env = "DESKBROKER_DEMO_LISTEN", default_value = "127.0.0.1:5900")]
    listen: SocketAddr,

    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    process::init_logging(&args.log).context("DESKBROKER_LOG")?;
    let stop = process::stop_signal().context("installing the stop signal handlers")?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    info!(addr = %listener.local_addr()?, "demo desktop serving");
    let shutdown = CancellationToken::new();
    let desktop = DemoDesktop::new(Config::default());
    let serving = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { desktop.serve(listener, shutdown).await }
    });
    stop.await;
    shutdown.cancel();
    serving.await?;
    info!("stopped");
    Ok(())
}
