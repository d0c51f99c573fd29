//! `test-guacd`: a stand-in for Apache guacd 1.5/1.6, for deskbroker's tests (guacd is not packaged here).
//!
//! On the wire it behaves as guacd does: `select` (a protocol, or `$id` to join), `args` with the protocol
//! version and the plugin's parameter names, the client's handshake up to `connect`, `ready` with a
//! `$`-prefixed connection id, then drawing (`size`, an `img` stream of a PNG in `blob`s, `end`, `sync`),
//! `nop` after 5 s of silence and an abort after 15 s without input. What it receives after the handshake
//! comes back as `echo` instructions (and the handshake itself, right after `ready`), so tests can check
//! that input arrived whole and in order. Opcodes starting with `x-` are test commands (`connection.rs`).
//! Prints `listening <addr>` on stdout once bound.

mod connection;
mod png;
mod protocols;
mod state;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;

use state::Guacd;

#[derive(Debug, Parser)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Version announced in `args`; `none` behaves as a guacd older than 1.1.0, which announced none.
    #[arg(long, default_value = "VERSION_1_5_0")]
    protocol_version: String,
    /// Silence after which guacd sends `nop` (`GUAC_SOCKET_KEEP_ALIVE_INTERVAL`).
    #[arg(long, default_value_t = 5000)]
    nop_interval_ms: u64,
    /// Input silence after which guacd aborts the user (`GUACD_USEC_TIMEOUT`).
    #[arg(long, default_value_t = 15000)]
    client_timeout_ms: u64,
    /// Append every instruction users send after their handshake (but nop and sync) to this file, one per
    /// line, so browser tests can see what reached guacd.
    #[arg(long)]
    record: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    let guacd = Arc::new(Guacd {
        version: (args.protocol_version != "none").then_some(args.protocol_version),
        nop_interval: Duration::from_millis(args.nop_interval_ms),
        client_timeout: Duration::from_millis(args.client_timeout_ms),
        connections: Mutex::default(),
        record: match &args.record {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
            None => None,
        },
    });
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let guacd = guacd.clone();
        tokio::spawn(async move {
            if let Err(error) = connection::serve(stream, guacd).await {
                eprintln!("test-guacd: {peer}: {error}");
            }
            eprintln!("test-guacd: {peer}: connection closed");
        });
    }
}
