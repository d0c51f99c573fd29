//! The relays under test, behind one interface: no relay (direct TCP), socat with 256 KiB buffers,
//! websockify 0.13, and deskbroker's edge. Each is started in front of the same upstream, and each is
//! reached by the same client code (TCP for the plain relays, WebSocket binary frames for the others).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::MaybeTlsStream;

use deskbroker_tests::Edge;
use deskbroker_tests::clients::ws_connect;
use deskbroker_tests::process::free_port;

use crate::sizes::CHUNK;

/// Every connection of the benchmark comes from one address, as through a load balancer: the edges take
/// it for a trusted proxy, so that only the node's connection cap applies to it.
pub const ONE_CLIENT_MANY_USERS: (&str, &str) = ("DESKBROKER_TRUSTED_PROXIES", "127.0.0.1");

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
            &[("DESKBROKER_LOG", "info"), ONE_CLIENT_MANY_USERS],
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
            anyhow::ensure!(conn.receive().await?.len() == 1, "no echo");
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
            Relay::Direct { upstream } => Conn::new(TcpStream::connect(upstream).await?, None),
            Relay::Socat { port, .. } => {
                Conn::new(TcpStream::connect(("127.0.0.1", *port)).await?, None)
            }
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

/// A client's connection: plain TCP, or a WebSocket carrying binary frames. Both read into one buffer and
/// hand out slices of it, so that every relay's client costs the same: one copy out of the kernel, no
/// other. (tungstenite, used for the handshake, copies each frame twice more.)
pub struct Conn {
    stream: TcpStream,
    buf: Box<[u8]>,
    /// What has been read but not handed out: `buf[start..end]`.
    start: usize,
    end: usize,
    /// For a WebSocket, the payload bytes of the current frame not yet handed out.
    frame: Option<Frame>,
}

#[derive(Default)]
struct Frame {
    left: u64,
    data: bool,
}

impl Conn {
    fn new(stream: TcpStream, frame: Option<Frame>) -> Self {
        Self {
            stream,
            buf: vec![0; CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            frame,
        }
    }

    async fn ws(url: &str) -> anyhow::Result<Self> {
        let (socket, _) = ws_connect(url, &["binary"]).await?;
        // Nothing arrives before the client speaks, so tungstenite holds no bytes past the handshake.
        match socket.into_inner() {
            MaybeTlsStream::Plain(stream) => Ok(Self::new(stream, Some(Frame::default()))),
            _ => bail!("a TLS stream"),
        }
    }

    /// Sends `bytes`: as they are, or as one masked binary frame.
    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        if self.frame.is_none() {
            return Ok(self.stream.write_all(bytes).await?);
        }
        let mut frame = vec![0x82];
        match bytes.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x5a, 0xa5, 0x3c, 0xc3];
        frame.extend_from_slice(&mask);
        frame.extend(bytes.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        Ok(self.stream.write_all(&frame).await?)
    }

    /// The next bytes that arrived; empty at the end.
    pub async fn receive(&mut self) -> anyhow::Result<&[u8]> {
        loop {
            let Some(frame) = &mut self.frame else {
                if self.start == self.end && !self.fill().await? {
                    return Ok(&[]);
                }
                let range = self.start..self.end;
                self.start = self.end;
                return Ok(&self.buf[range]);
            };
            if frame.left > 0 && self.start < self.end {
                let take = frame.left.min((self.end - self.start) as u64) as usize;
                let range = self.start..self.start + take;
                frame.left -= take as u64;
                self.start += take;
                if frame.data {
                    return Ok(&self.buf[range]);
                }
                continue;
            }
            if frame.left == 0 {
                match header(&self.buf[self.start..self.end]) {
                    Some((_, 0x8)) => return Ok(&[]),
                    Some((length, opcode)) => {
                        self.start += length.0;
                        frame.left = length.1;
                        frame.data = matches!(opcode, 0x0 | 0x2);
                        continue;
                    }
                    None => {}
                }
            }
            if !self.fill().await? {
                return Ok(&[]);
            }
        }
    }

    /// Reads more, after moving what is left to the front; false at the end.
    async fn fill(&mut self) -> anyhow::Result<bool> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }
}

/// A server frame's header at the start of `bytes`, if it is all there: ((header length, payload length),
/// opcode). Server frames are not masked.
fn header(bytes: &[u8]) -> Option<((usize, u64), u8)> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    let opcode = first & 0x0f;
    let length = match second & 0x7f {
        126 => (
            4,
            u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as u64,
        ),
        127 => (10, u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?)),
        n => (2, n as u64),
    };
    Some((length, opcode))
}
