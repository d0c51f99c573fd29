//! `test-echo`: a TCP server that sends every byte back, for tests whose upstream runs where the test
//! process cannot (a container of the compose cluster). Prints `listening <addr>` on stdout once bound.

use std::net::SocketAddr;

use clap::Parser;

use deskbroker_tests::upstreams::Echo;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let echo = Echo::bind(Args::parse().listen).await?;
    println!("listening {}", echo.addr);
    std::future::pending().await
}
