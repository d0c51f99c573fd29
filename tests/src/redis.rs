//! Real `redis-server` processes for the cluster tests, on free loopback ports, that a test can kill and
//! restart: one server, or a three-master Redis Cluster built with `redis-cli --cluster create`. Both
//! are a [`Keyspace`]: what a test reads of the registry, wherever its keys live.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::process::free_port;

/// How long a redis-server may take to answer its first PING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a cluster master may be silent before the others mark it failed: short, so that a test sees a
/// cluster lose a master in seconds (Redis's default is 15 s), yet far above what a busy machine delays
/// the cluster bus by.
const CLUSTER_NODE_TIMEOUT_MS: &str = "3000";

/// What a test reads of the registry, on one server or across a cluster's masters.
#[allow(
    async_fn_in_trait,
    reason = "test fixtures, awaited in place by the test that owns them"
)]
pub trait Keyspace {
    /// The URL the edges and the broker are given.
    fn url(&self) -> String;

    /// Runs a redis-cli command about one key where that key lives; returns its output lines.
    async fn cli(&self, args: &[&str]) -> anyhow::Result<Vec<String>>;

    /// The string values of every key matching `pattern` (on the masters that run).
    async fn values(&self, pattern: &str) -> anyhow::Result<Vec<String>>;

    /// How many keys the registry holds (on the masters that run).
    async fn dbsize(&self) -> anyhow::Result<usize>;
}

/// One `redis-server` that keeps nothing on disk, so a restart comes back empty.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Vec::new()).await
    }

    /// Starts a server with `extra` arguments; a port taken between probing and binding (by a parallel
    /// test) is retried on another.
    async fn start_with(extra: Vec<String>) -> anyhow::Result<Self> {
        require("redis-server", "apt-get install redis-server")?;
        let mut failure = None;
        for _ in 0..3 {
            let dir = tempfile::tempdir()?;
            let mut redis = Self {
                port: free_port()?,
                child: None,
                extra: extra.clone(),
                _dir: dir,
            };
            if redis.extra.iter().any(|arg| arg == "--cluster-enabled") {
                // The cluster bus otherwise takes port + 10000, which may be taken or past 65535.
                redis
                    .extra
                    .extend(["--cluster-port".to_owned(), free_port()?.to_string()]);
            }
            match redis.spawn().await {
                Ok(()) => return Ok(redis),
                Err(error) => failure = Some(error),
            }
        }
        Err(failure.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    fn dir(&self) -> PathBuf {
        self._dir.path().to_owned()
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra)
            .current_dir(self.dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().context("spawning redis-server")?;
        // Generous: a loaded CI machine can take seconds to start a process; an exit ends the wait at once.
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if self.ping().await {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                bail!("redis-server on port {} exited: {status}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("redis-server on port {} did not answer", self.port)
    }

    async fn ping(&self) -> bool {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ping"])
            .output()
            .await;
        output.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the server runs (it was not killed, or was restarted since).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL): whatever it held is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn().await
    }

    /// Runs a redis-cli command against this server and returns its output lines.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<Vec<String>> {
        let output = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .await?;
        Ok(lines(&output.stdout))
    }

    /// The keys of this server matching `pattern`, and their string values, read in one pass.
    async fn local_values(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        let keys = self.cli(&["--scan", "--pattern", pattern]).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One redis-cli for every GET: it reads commands from a stdin that is not a terminal.
        let commands: String = keys.iter().map(|key| format!("GET {key}\n")).collect();
        let mut child = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut stdin = child.stdin.take().context("redis-cli stdin")?;
        stdin.write_all(commands.as_bytes()).await?;
        drop(stdin);
        let output = child.wait_with_output().await?;
        Ok(lines(&output.stdout))
    }

    async fn local_dbsize(&self) -> anyhow::Result<usize> {
        let answer = self.cli(&["DBSIZE"]).await?;
        let size = answer.first().and_then(|n| n.trim().parse().ok());
        size.with_context(|| format!("DBSIZE answered {answer:?}"))
    }
}

impl Keyspace for Redis {
    fn url(&self) -> String {
        Redis::url(self)
    }

    async fn cli(&self, args: &[&str]) -> anyhow::Result<Vec<String>> {
        Redis::cli(self, args).await
    }

    async fn values(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        self.local_values(pattern).await
    }

    async fn dbsize(&self) -> anyhow::Result<usize> {
        self.local_dbsize().await
    }
}

/// redis-cli's output lines, the empty ones (nil replies) left out.
fn lines(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// A Redis Cluster of three masters and no replicas.
pub struct RedisCluster {
    pub masters: Vec<Redis>,
}

impl RedisCluster {
    pub async fn start() -> anyhow::Result<Self> {
        require("redis-cli", "apt-get install redis-tools")?;
        let mut masters = Vec::new();
        for _ in 0..3 {
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                CLUSTER_NODE_TIMEOUT_MS,
            ];
            masters.push(Redis::start_with(args.map(String::from).to_vec()).await?);
        }
        let addrs: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(created.success(), "redis-cli --cluster create failed");
        for master in &masters {
            for attempt in 0.. {
                let info = master.cli(&["cluster", "info"]).await?;
                if info.iter().any(|line| line.trim() == "cluster_state:ok") {
                    break;
                }
                anyhow::ensure!(attempt < 800, "cluster state not ok");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Ok(Self { masters })
    }

    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The master that holds `key`'s slot, by its index in [`RedisCluster::masters`].
    pub async fn master_of(&self, key: &str) -> anyhow::Result<usize> {
        let running = self.running()?;
        let answer = running.cli(&["CLUSTER", "KEYSLOT", key]).await?;
        let slot: u16 = answer.first().context("no slot")?.trim().parse()?;
        let mut owner = None;
        for (index, master) in self.masters.iter().enumerate() {
            if !master.is_running() {
                continue;
            }
            let nodes = master.cli(&["CLUSTER", "NODES"]).await?;
            let own = nodes.iter().find(|line| line.contains("myself"));
            if own.is_some_and(|line| holds_slot(line, slot)) {
                owner = Some(index);
            }
        }
        owner.with_context(|| format!("no running master holds slot {slot} of {key}"))
    }

    /// Whether every running master says the cluster is ok (every slot served).
    pub async fn is_ok(&self) -> bool {
        for master in self.masters.iter().filter(|m| m.is_running()) {
            let info = master.cli(&["CLUSTER", "INFO"]).await.unwrap_or_default();
            if !info.iter().any(|line| line.trim() == "cluster_state:ok") {
                return false;
            }
        }
        true
    }

    fn running(&self) -> anyhow::Result<&Redis> {
        self.masters
            .iter()
            .find(|m| m.is_running())
            .context("no master runs")
    }
}

/// Whether a `CLUSTER NODES` line lists `slot` among its ranges (`0-5460 5462 …`).
fn holds_slot(line: &str, slot: u16) -> bool {
    line.split_whitespace().skip(8).any(|range| {
        let mut ends = range.splitn(2, '-').map(|n| n.parse::<u16>());
        match (ends.next(), ends.next()) {
            (Some(Ok(first)), Some(Ok(last))) => (first..=last).contains(&slot),
            (Some(Ok(only)), None) => only == slot,
            _ => false,
        }
    })
}

impl Keyspace for RedisCluster {
    fn url(&self) -> String {
        RedisCluster::url(self)
    }

    async fn cli(&self, args: &[&str]) -> anyhow::Result<Vec<String>> {
        // `-c` follows the cluster's redirections to the master that holds the key.
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        self.running()?.cli(&all).await
    }

    async fn values(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        let mut values = Vec::new();
        for master in self.masters.iter().filter(|m| m.is_running()) {
            values.extend(master.local_values(pattern).await?);
        }
        Ok(values)
    }

    async fn dbsize(&self) -> anyhow::Result<usize> {
        let mut size = 0;
        for master in self.masters.iter().filter(|m| m.is_running()) {
            size += master.local_dbsize().await?;
        }
        Ok(size)
    }
}

fn require(program: &str, hint: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).exists()));
    if !found {
        bail!("{program} not found: {hint} (scripts/install-test-deps does)");
    }
    Ok(())
}

/// The name the sentinels know the master by.
pub const SENTINEL_MASTER: &str = "deskbroker";

/// A master, its replica, and three sentinels watching them (quorum two), as the common Kubernetes Redis
/// charts run it. The sentinels take a master that does not answer for a second as down, and fail over to
/// the replica.
pub struct RedisSentinel {
    /// The master at the start, then its replica.
    pub servers: Vec<Redis>,
    sentinels: Vec<(u16, Child, tempfile::TempDir)>,
}

impl RedisSentinel {
    pub async fn start() -> anyhow::Result<Self> {
        // Without the delay, a diskless full sync waits 5 s for more replicas.
        let master =
            Redis::start_with(vec!["--repl-diskless-sync-delay".into(), "0".into()]).await?;
        let replica = Redis::start_with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ])
        .await?;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir()?;
            let port = free_port()?;
            let config = format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 2\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 4000\n",
                master.port
            );
            let path = dir.path().join("sentinel.conf");
            std::fs::write(&path, config)?;
            let child = Command::new("redis-server")
                .arg(&path)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("spawning redis-server --sentinel")?;
            sentinels.push((port, child, dir));
        }
        let sentinel = Self {
            servers: vec![master, replica],
            sentinels,
        };
        // The replica's link is up once it loaded the master's snapshot, but the master may stream it
        // nothing until the replica's first acknowledgement: a write seen on the replica shows the stream
        // flows, as it does for a replica that has run a while.
        sentinel.servers[0]
            .cli(&["set", "deskbroker-test:streaming", "1"])
            .await?;
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            let streamed = sentinel.servers[1]
                .cli(&["get", "deskbroker-test:streaming"])
                .await?;
            if streamed.first().is_some_and(|v| v == "1") && sentinel.master_port().await.is_ok() {
                sentinel.servers[0]
                    .cli(&["del", "deskbroker-test:streaming"])
                    .await?;
                return Ok(sentinel);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the replica did not sync, or the sentinels named no master");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The port of the master the sentinels name now.
    pub async fn master_port(&self) -> anyhow::Result<u16> {
        for (port, _, _) in &self.sentinels {
            let output = Command::new("redis-cli")
                .args([
                    "-p",
                    &port.to_string(),
                    "sentinel",
                    "get-master-addr-by-name",
                ])
                .arg(SENTINEL_MASTER)
                .output()
                .await?;
            if let Some(master) = lines(&output.stdout).get(1).and_then(|p| p.parse().ok()) {
                return Ok(master);
            }
        }
        bail!("no sentinel answered")
    }

    /// The server that is master now.
    async fn master(&self) -> anyhow::Result<&Redis> {
        let port = self.master_port().await?;
        let master = self.servers.iter().find(|server| server.port == port);
        master.context("the sentinels name a master that is not ours")
    }
}

impl Keyspace for RedisSentinel {
    fn url(&self) -> String {
        let sentinels: Vec<String> = (self.sentinels.iter())
            .map(|(port, _, _)| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+sentinel://{}/{SENTINEL_MASTER}", sentinels.join(","))
    }

    async fn cli(&self, args: &[&str]) -> anyhow::Result<Vec<String>> {
        self.master().await?.cli(args).await
    }

    async fn values(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        self.master().await?.local_values(pattern).await
    }

    async fn dbsize(&self) -> anyhow::Result<usize> {
        self.master().await?.local_dbsize().await
    }
}
