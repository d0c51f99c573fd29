//! The relays under test, behind one interface: no relay (direct TCP), socat with 256 KiB buffers,
//! websockify 0.13, and deskbroker's edge. Each is started in front of the same upstream, and each is
//! reached by the same client code (TCP for the plain relays, WebSocket binary frames for the others).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use deskbroker_tests::Edge;
use deskbroker_tests::clients::{Ws, ws_connect};
use deskbroker_tests::process::free_port;

pub enum Relay {
    Direct { upstream: SocketAddr },
    Socat { port: u16, child: Child },
    Websockify { port: u16, child: Child },
    Deskbroker { edge: Edge },
}

impl Relay {
    pub fn name(&self) -> &'static str {
        match self {
            Relay::Direct { .. } => "direct TCP",
            Relay::Socat { .. } => "socat, 256 KiB",
            Relay::Websockify { .. } => "websockify 0.13",
            Relay::Deskbroker { .. } => "deskbroker",
        }
    }

    pub async fn socat(upstream: SocketAddr) -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new("socat")
            .arg("-b262144")
            .arg(format!(
                "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=128"
            ))
            .arg(format!("TCP:{upstream}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("socat (apt-get install socat)")?;
        wait_port(port).await?;
        Ok(Relay::Socat { port, child })
    }

    pub async fn websockify(program: &str, upstream: SocketAddr) -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new(program)
            .arg(format!("127.0.0.1:{port}"))
            .arg(upstream.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("websockify (scripts/bench installs it with pip)")?;
        wait_port(port).await?;
        Ok(Relay::Websockify { port, child })
    }

    pub async fn deskbroker(sessions: &std::path::Path) -> anyhow::Result<Self> {
        let edge = Edge::start_with_env(
            &["--sessions", sessions.to_str().unwrap_or_default()],
            &[("DESKBROKER_LOG", "info")],
        )
        .await?;
        Ok(Relay::Deskbroker { edge })
    }

    /// The process whose tree does the relaying, if any.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Relay::Direct { .. } => None,
            Relay::Socat { child, .. } | Relay::Websockify { child, .. } => child.id(),
            Relay::Deskbroker { edge } => Some(edge.process.pid()),
        }
    }

    /// Opens `count` tunnels to the echo upstream, 64 at a time, each proven by one echoed byte.
    pub async fn open_echo_tunnels(&self, count: usize) -> anyhow::Result<Vec<Conn>> {
        let opening = futures_util::stream::iter(0..count).map(|_| async {
            let mut conn = self.connect("echo").await?;
            conn.send(b"!").await?;
            let mut byte = [0u8; 1];
            anyhow::ensure!(conn.receive(&mut byte).await? == 1, "no echo");
            anyhow::Ok(conn)
        });
        opening
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// A client connection through the relay; `token` picks the upstream on deskbroker.
    pub async fn connect(&self, token: &str) -> anyhow::Result<Conn> {
        Ok(match self {
            Relay::Direct { upstream } => Conn::Tcp(TcpStream::connect(upstream).await?),
            Relay::Socat { port, .. } => Conn::Tcp(TcpStream::connect(("127.0.0.1", *port)).await?),
            Relay::Websockify { port, .. } => Conn::ws(&format!("ws://127.0.0.1:{port}/")).await?,
            Relay::Deskbroker { edge } => {
                Conn::ws(&edge.ws_url(&format!("/websockify?token={token}"))).await?
            }
        })
    }
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..400 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nothing listens on {port}")
}

/// A client's connection: plain TCP, or a WebSocket carrying binary frames.
pub enum Conn {
    Tcp(TcpStream),
    Ws(Box<Ws>, Vec<u8>),
}

impl Conn {
    async fn ws(url: &str) -> anyhow::Result<Self> {
        let (socket, _) = ws_connect(url, &["binary"]).await?;
        Ok(Conn::Ws(Box::new(socket), Vec::new()))
    }

    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Conn::Tcp(stream) => stream.write_all(bytes).await?,
            Conn::Ws(socket, _) => socket.send(Message::binary(bytes.to_vec())).await?,
        }
        Ok(())
    }

    /// Reads some bytes into `buf`; 0 at the end.
    pub async fn receive(&mut self, buf: &mut [u8]) -> anyhow::Result<usize> {
        match self {
            Conn::Tcp(stream) => Ok(stream.read(buf).await?),
            Conn::Ws(socket, pending) => {
                while pending.is_empty() {
                    match socket.next().await {
                        Some(Ok(Message::Binary(bytes))) => pending.extend_from_slice(&bytes),
                        Some(Ok(Message::Close(_))) | None => return Ok(0),
                        Some(Ok(_)) => continue,
                        Some(Err(error)) => return Err(error.into()),
                    }
                }
                let n = pending.len().min(buf.len());
                buf[..n].copy_from_slice(&pending[..n]);
                pending.drain(..n);
                Ok(n)
            }
        }
    }
}
