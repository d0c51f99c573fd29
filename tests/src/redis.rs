//! Real `redis-server` processes for the cluster tests, on free loopback ports, that a test can kill and
//! restart: one server, or a three-master Redis Cluster built with `redis-cli --cluster create`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::process::free_port;

/// How long a redis-server may take to answer its first PING.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

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
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect())
    }
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
}

fn require(program: &str, hint: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).exists()));
    if !found {
        bail!("{program} not found: {hint} (scripts/install-test-deps does)");
    }
    Ok(())
}
