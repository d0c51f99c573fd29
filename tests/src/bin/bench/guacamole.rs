//! Guacamole tunnels in front of the test guacd: the HTTP tunnel through a three-node cluster on Redis, its
//! requests landing on the node that owns the tunnel or on another one (which forwards them), and the
//! WebSocket tunnel against guacamole-lite.
//!
//! Read throughput: the client asks guacd for `x-repeat` (a fixed block of 4,000-code-point instructions,
//! sent over and over) and reads until `x-flood-end`, hashing what arrives against what was sent. Round
//! trip: the client writes one `key` instruction and waits for guacd's `echo` of it on the read side.
//! Relay CPU: the user and system seconds of every relay process (all three edges) per GiB read.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{GuacWs, HttpTunnel, ReadEvent, Reader, connect_data};
use deskbroker_tests::process::{free_port, session_file};
use deskbroker_tests::redis::Redis;
use deskbroker_tests::{Edge, TestGuacd, flood};

use crate::relays::ONE_CLIENT_MANY_USERS;
use crate::sizes::MIB;
use crate::system;

/// What one way of reaching guacd did: read MiB/s, relay CPU s/GiB, and write round trips in microseconds.
pub struct Sample {
    pub mib_per_s: f64,
    pub cpu_per_gib: f64,
    pub round_trips: Vec<f64>,
}

/// The three-node cluster, the guacd behind it, and guacamole-lite beside it when it is installed.
pub struct Setup {
    _guacd: TestGuacd,
    edges: Vec<Edge>,
    _redis: Redis,
    _dir: tempfile::TempDir,
    pub lite: Option<GuacamoleLite>,
}

impl Setup {
    pub async fn start(guacamole_lite: Option<&Path>) -> anyhow::Result<Self> {
        let guacd = TestGuacd::start(&[]).await?;
        let redis = Redis::start().await?;
        let (dir, sessions) = session_file(&format!(
            "guac: guacd://{}/vnc?hostname=desk-1\n",
            guacd.addr
        ))?;
        let mut edges = Vec::new();
        for i in 1..=3 {
            let id = format!("bench-{i}");
            let args = ["--sessions", sessions.to_str().unwrap_or_default()];
            let env = [
                ("DESKBROKER_LOG", "warn,deskbroker_edge=info"),
                ONE_CLIENT_MANY_USERS,
            ];
            let edge = Edge::start_node(&id, &redis.url(), "bench-secret", &args, &env).await;
            edges.push(edge?);
        }
        let lite = match guacamole_lite {
            Some(script) => Some(GuacamoleLite::start(script, guacd.addr).await?),
            None => None,
        };
        Ok(Self {
            _guacd: guacd,
            edges,
            _redis: redis,
            _dir: dir,
            lite,
        })
    }

    /// The CPU seconds so far of the processes relaying `case`: all three edges, or guacamole-lite.
    fn cpu_seconds(&self, case: Case) -> f64 {
        match (case, &self.lite) {
            (Case::Lite, Some(lite)) => lite.child.id().map_or(0.0, system::cpu_seconds),
            _ => self
                .edges
                .iter()
                .map(|edge| system::cpu_seconds(edge.process.pid()))
                .sum(),
        }
    }

    /// Opens a tunnel as `case` says. HTTP tunnels are opened on the first node, which owns them.
    async fn open(&self, case: Case) -> anyhow::Result<Link> {
        let http = |landing: usize| async move {
            let owner = self.edges[0].http_url("");
            let base = self.edges[landing].http_url("");
            let tunnel = HttpTunnel::connect(&owner, &connect_data("guac"))
                .await
                .map_err(|error| anyhow::anyhow!("connect: {error:?}"))?;
            let reader = tunnel.read(vec![base.clone()]);
            anyhow::Ok(Link::Http {
                tunnel,
                base,
                reader,
            })
        };
        Ok(match case {
            Case::Owner => http(0).await?,
            Case::Forwarded => http(1).await?,
            Case::Deskbroker => {
                let base = self.edges[0].ws_url("");
                Link::Ws(Box::new(
                    GuacWs::connect(&base, &connect_data("guac")).await?,
                ))
            }
            Case::Lite => {
                let lite = self
                    .lite
                    .as_ref()
                    .context("guacamole-lite is not installed")?;
                let base = format!("ws://127.0.0.1:{}", lite.port);
                Link::Ws(Box::new(
                    GuacWs::connect(&base, &format!("token={}", lite.token)).await?,
                ))
            }
        })
    }

    /// Read throughput and relay CPU on ASCII text, then write round trips, on a new tunnel.
    pub async fn sample(&self, case: Case, blocks: u64, trips: usize) -> anyhow::Result<Sample> {
        let mut link = self.open(case).await?;
        let cpu_before = self.cpu_seconds(case);
        let started = Instant::now();
        let bytes = link.read(blocks, true).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = self.cpu_seconds(case) - cpu_before;
        let round_trips = link.round_trips(trips).await?;
        link.close().await;
        Ok(Sample {
            mib_per_s: bytes as f64 / MIB as f64 / elapsed,
            cpu_per_gib: cpu / (bytes as f64 / (1u64 << 30) as f64),
            round_trips,
        })
    }

    /// Whether text with multi-byte characters, cut wherever guacd's writes fall, arrives intact.
    pub async fn intact(&self, case: Case, blocks: u64) -> anyhow::Result<()> {
        let mut link = self.open(case).await?;
        link.read(blocks, false).await?;
        link.close().await;
        Ok(())
    }
}

/// The ways a benchmark reaches the test guacd.
#[derive(Debug, Clone, Copy)]
pub enum Case {
    /// deskbroker's HTTP tunnel, every request on the node that owns it.
    Owner,
    /// deskbroker's HTTP tunnel, every request on another node, which forwards it to the owner.
    Forwarded,
    /// deskbroker's WebSocket tunnel.
    Deskbroker,
    /// guacamole-lite's WebSocket tunnel.
    Lite,
}

impl Case {
    pub fn name(self) -> &'static str {
        match self {
            Case::Owner => "HTTP tunnel, on the owner node",
            Case::Forwarded => "HTTP tunnel, on another node (forwarded)",
            Case::Deskbroker => "WebSocket tunnel, deskbroker",
            Case::Lite => "WebSocket tunnel, guacamole-lite 1.2.0",
        }
    }
}

/// A client's open tunnel to guacd.
enum Link {
    Http {
        tunnel: HttpTunnel,
        base: String,
        reader: Reader,
    },
    Ws(Box<GuacWs>),
}

impl Link {
    async fn write(&mut self, instruction: &Instruction) -> anyhow::Result<()> {
        match self {
            Link::Http { tunnel, base, .. } => tunnel
                .write_to(base, instruction.encode())
                .await
                .map_err(|error| anyhow::anyhow!("write: {error:?}")),
            Link::Ws(socket) => socket.send(instruction).await,
        }
    }

    /// The next instruction's wire bytes.
    async fn next(&mut self) -> anyhow::Result<bytes::Bytes> {
        match self {
            Link::Http { reader, .. } => match reader.0.recv().await {
                Some(ReadEvent::Instruction(bytes)) => Ok(bytes),
                other => bail!("reading ended: {other:?}"),
            },
            Link::Ws(socket) => socket.next_raw().await,
        }
    }

    async fn close(mut self) {
        let _ = self.write(&Instruction::new("disconnect", [""; 0])).await;
    }

    /// Asks guacd for `blocks` blocks and reads them, checking count and hash; returns the bytes read.
    async fn read(&mut self, blocks: u64, ascii: bool) -> anyhow::Result<u64> {
        let block = flood::block(ascii);
        let mut expected = Sha256::new();
        for _ in 0..blocks {
            expected.update(block);
        }
        let text = if ascii { "ascii" } else { "mixed" };
        self.write(&Instruction::new(
            "x-repeat",
            [blocks.to_string(), text.into()],
        ))
        .await?;
        let mut hash = Sha256::new();
        let mut got = 0u64;
        loop {
            let bytes = self.next().await?;
            if bytes.starts_with(b"6.x-data,") {
                hash.update(&bytes);
                got += bytes.len() as u64;
            } else if bytes.starts_with(b"11.x-flood-end,") {
                break;
            }
        }
        let sent = blocks * block.len() as u64;
        ensure!(got == sent, "{got} bytes arrived of {sent}");
        ensure!(
            hash.finalize() == expected.finalize(),
            "bytes arrived changed"
        );
        Ok(sent)
    }

    /// Times `trips` writes of one `key` instruction until guacd's echo of it is read, after a tenth as
    /// many warm-ups; in microseconds.
    async fn round_trips(&mut self, trips: usize) -> anyhow::Result<Vec<f64>> {
        let key = Instruction::new("key", ["65", "1"]);
        let mut times = Vec::with_capacity(trips);
        for i in 0..trips + trips / 10 {
            let started = Instant::now();
            self.write(&key).await?;
            while !self.next().await?.starts_with(b"4.echo,3.key,") {}
            if i >= trips / 10 {
                times.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(times)
    }
}

/// guacamole-lite (npm) in front of the same guacd, started by `tests/peers/guacamole-lite.js`.
pub struct GuacamoleLite {
    child: Child,
    port: u16,
    token: String,
}

impl GuacamoleLite {
    async fn start(script: &Path, guacd: SocketAddr) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut child = Command::new("node")
            .arg(script)
            .arg(port.to_string())
            .arg(guacd.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("node (guacamole-lite)")?;
        let stdout = child.stdout.take().context("guacamole-lite's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await? {
            if let Some(token) = line.strip_prefix("ready ") {
                // It logs each connection to stdout, and dies of EPIPE if nobody reads it.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Ok(Self {
                    child,
                    port,
                    token: token.to_owned(),
                });
            }
        }
        bail!("guacamole-lite exited before listening")
    }

    /// Whether its process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}
