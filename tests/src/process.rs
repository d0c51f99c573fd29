//! Starting the real processes a test needs, and knowing when they are ready: each prints its bound
//! address, so nothing waits on a sleep or races for a port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// How long a process may take to say it is listening.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The lease of the cluster nodes tests start: short, so that tests about lapsed leases finish quickly, yet
/// renewed every 1.3 s, so that a node on a loaded machine (several clusters run in parallel) may miss two
/// renewals in a row, each up to the 1 s Redis deadline, and still not lapse.
pub const LEASE: Duration = Duration::from_secs(4);

/// A built binary of this workspace, of the same profile as the running executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Beside this executable (a binary such as the benchmark), or beside its `deps/` folder (a test).
    let beside = exe.with_file_name(name);
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = if beside.exists() {
        beside
    } else {
        dir.join(name)
    };
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A child process killed on drop, whose output is kept for the failure message.
pub struct Process {
    child: Child,
    pub output: Arc<Mutex<Vec<String>>>,
    /// The tasks copying its stdout and stderr into `output`; they end when the process has exited.
    readers: Vec<JoinHandle<()>>,
}

impl Process {
    /// Spawns `command` and waits until a line of its stdout yields an address through `ready`.
    pub async fn start(
        mut command: Command,
        ready: impl Fn(&str) -> Option<SocketAddr>,
    ) -> anyhow::Result<(Self, SocketAddr)> {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().context("stderr")?;
        let mut readers = vec![tokio::spawn(keep_lines(
            BufReader::new(stderr),
            output.clone(),
        ))];
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let addr = tokio::time::timeout(READY_TIMEOUT, async {
            while let Some(line) = stdout.next_line().await? {
                output.lock().unwrap().push(line.clone());
                if let Some(addr) = ready(&line) {
                    return Ok(addr);
                }
            }
            bail!("exited before it was ready: {:?}", output.lock().unwrap())
        })
        .await
        .context("not ready in time")??;
        let rest = output.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                rest.lock().unwrap().push(line);
            }
        }));
        Ok((
            Self {
                child,
                output,
                readers,
            },
            addr,
        ))
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.pid().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().await?;
        Ok(self.child.wait().await?)
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops the process where it stands (SIGSTOP), as a hung node or a paused VM is.
    pub async fn freeze(&self) -> anyhow::Result<()> {
        self.signal("-STOP").await
    }

    /// Lets a frozen process go on (SIGCONT).
    pub async fn thaw(&self) -> anyhow::Result<()> {
        self.signal("-CONT").await
    }

    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().await?;
        anyhow::ensure!(status.success(), "kill {signal} {pid}: {status}");
        Ok(())
    }

    /// Stops the process with SIGTERM and waits until everything it wrote is in [`Process::logs`].
    pub async fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let status = tokio::time::timeout(READY_TIMEOUT, self.terminate())
            .await
            .context("did not exit in time")??;
        for reader in self.readers.drain(..) {
            tokio::time::timeout(READY_TIMEOUT, reader)
                .await
                .context("output not closed in time")??;
        }
        Ok(status)
    }

    pub fn logs(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

async fn keep_lines(
    reader: BufReader<impl tokio::io::AsyncRead + Unpin>,
    output: Arc<Mutex<Vec<String>>>,
) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        output.lock().unwrap().push(line);
    }
}

/// A running `deskbroker-edge`.
pub struct Edge {
    pub process: Process,
    pub addr: SocketAddr,
}

impl Edge {
    /// Starts an edge on a free loopback port with `args` added to the defaults.
    pub async fn start(args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(args, &[]).await
    }

    /// Starts an edge with flags and `DESKBROKER_*` environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut command = Command::new(binary("deskbroker-edge"));
        command.args(args);
        Self::spawn(command, env).await
    }

    /// Starts an edge allowed only `descriptors` open files (its soft and hard limit), as on a host with a
    /// low limit.
    pub async fn start_with_descriptors(args: &[&str], descriptors: u64) -> anyhow::Result<Self> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {descriptors} && exec \"$0\" \"$@\""))
            .arg(binary("deskbroker-edge"))
            .args(args);
        Self::spawn(command, &[]).await
    }

    async fn spawn(mut command: Command, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        command
            .env("DESKBROKER_LISTEN", "127.0.0.1:0")
            .env("DESKBROKER_LOG_FORMAT", "json")
            .env("DESKBROKER_LOG", "debug")
            .envs(env.iter().copied());
        let (process, addr) = Process::start(command, |line| {
            let event: serde_json::Value = serde_json::from_str(line).ok()?;
            (event["message"] == "listening").then(|| event["addr"].as_str()?.parse().ok())?
        })
        .await?;
        Ok(Self { process, addr })
    }

    /// Starts an edge as node `id` of a cluster on the Redis at `redis_url`, with a peer listener (on a
    /// free port, unless `args` name one), the cluster secret `secret` and the tests' [`LEASE`]; `args`
    /// and `env` are added.
    pub async fn start_node(
        id: &str,
        redis_url: &str,
        secret: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut all_args = vec!["--node-id", id];
        if !args.contains(&"--peer-listen") {
            all_args.extend(["--peer-listen", "127.0.0.1:0"]);
        }
        all_args.extend_from_slice(args);
        let lease = humantime::format_duration(LEASE).to_string();
        let mut all_env = vec![
            ("DESKBROKER_REDIS_URL", redis_url),
            ("DESKBROKER_CLUSTER_SECRET", secret),
            ("DESKBROKER_LEASE", &lease),
        ];
        all_env.extend_from_slice(env);
        Self::start_with_env(&all_args, &all_env).await
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr)
    }

    /// The ops listener's address, as the edge announced it: start it with `--ops-listen 127.0.0.1:0`
    /// (a port probed free beforehand can be taken by a parallel test before the edge binds it).
    pub fn ops_addr(&self) -> SocketAddr {
        ops_addr(&self.process)
    }

    pub fn http_url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }
}

/// A running `deskbroker-broker`.
pub struct Broker {
    pub process: Process,
    pub addr: SocketAddr,
}

impl Broker {
    pub async fn start(
        redis_url: &str,
        config: &std::path::Path,
        admin_key: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with_env(redis_url, config, admin_key, &[]).await
    }

    /// Starts the broker with `DESKBROKER_*` environment variables added to (or replacing) the defaults.
    pub async fn start_with_env(
        redis_url: &str,
        config: &std::path::Path,
        admin_key: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary("deskbroker-broker"));
        command
            .env("DESKBROKER_BROKER_LISTEN", "127.0.0.1:0")
            .env("DESKBROKER_REDIS_URL", redis_url)
            .env("DESKBROKER_ADMIN_KEY", admin_key)
            .env("DESKBROKER_CLUSTER_SECRET", "s3cret")
            .env("DESKBROKER_LOG_FORMAT", "json")
            .env("DESKBROKER_LOG", "debug")
            .envs(env.iter().copied())
            .arg("--config")
            .arg(config);
        let (process, addr) = Process::start(command, |line| {
            let event: serde_json::Value = serde_json::from_str(line).ok()?;
            (event["message"] == "listening").then(|| event["addr"].as_str()?.parse().ok())?
        })
        .await?;
        Ok(Self { process, addr })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The ops listener's address, as the broker announced it (see [`Edge::ops_addr`]).
    pub fn ops_addr(&self) -> SocketAddr {
        ops_addr(&self.process)
    }
}

/// The address a process announced with its `ops listening` line.
fn ops_addr(process: &Process) -> SocketAddr {
    process
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["message"] == "ops listening")
        .and_then(|event| event["addr"].as_str()?.parse().ok())
        .expect("the ops listener was announced")
}

/// A running `test-guacd`.
pub struct TestGuacd {
    pub process: Process,
    pub addr: SocketAddr,
}

impl TestGuacd {
    pub async fn start(args: &[&str]) -> anyhow::Result<Self> {
        let mut command = Command::new(binary("test-guacd"));
        command.args(args);
        let (process, addr) = Process::start(command, |line| {
            line.strip_prefix("listening ")?.parse().ok()
        })
        .await?;
        Ok(Self { process, addr })
    }
}

/// Debian's Xvnc (tigervnc-standalone-server) on a free loopback port, without authentication.
pub struct Xvnc {
    pub process: Process,
    pub addr: SocketAddr,
    pub display: String,
}

impl Xvnc {
    /// Starts Xvnc, or returns `None` (outside CI) when it is not installed.
    pub async fn start() -> anyhow::Result<Option<Self>> {
        if which("Xvnc").is_none() {
            let hint = "Xvnc not found: apt-get install tigervnc-standalone-server";
            if std::env::var_os("CI").is_some() {
                bail!("{hint}");
            }
            eprintln!("skipping: {hint}");
            return Ok(None);
        }
        // A port can be taken between probing and binding, by a parallel test: try again on another.
        let mut failure = None;
        for _ in 0..3 {
            match Self::spawn().await {
                Ok(xvnc) => return Ok(Some(xvnc)),
                Err(error) => failure = Some(error),
            }
        }
        Err(failure.unwrap_or_else(|| anyhow::anyhow!("Xvnc did not start")))
    }

    /// Starts one Xvnc; the X server picks a free display itself and reports it (`-displayfd`), so parallel
    /// tests and stale lock files never collide.
    async fn spawn() -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut command = Command::new("Xvnc");
        command.args([
            "-displayfd",
            "1",
            "-rfbport",
            &port.to_string(),
            "-interface",
            "127.0.0.1",
        ]);
        command.args([
            "-SecurityTypes",
            "None",
            "-geometry",
            "640x480",
            "-depth",
            "24",
            "-nolisten",
            "tcp",
        ]);
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().context("spawning Xvnc")?;
        let stdout = child.stdout.take().context("Xvnc stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let number = tokio::time::timeout(READY_TIMEOUT, lines.next_line())
            .await
            .context("Xvnc did not report its display")??
            .context("Xvnc exited before reporting its display")?;
        let display = format!(":{}", number.trim());
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        for _ in 0..800 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                let process = Process {
                    child,
                    output: Arc::default(),
                    readers: Vec::new(),
                };
                return Ok(Self {
                    process,
                    addr,
                    display,
                });
            }
            if child.try_wait()?.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("Xvnc did not open {addr}")
    }
}

impl Xvnc {
    /// Runs an xterm near the top left (under a click at page 300,200) that reads one line and writes it to `output`: what the desktop's
    /// keyboard typed, checked on the X side.
    pub fn xterm(&self, output: &std::path::Path) -> anyhow::Result<Child> {
        let script = format!(
            "read line; printf %s \"$line\" > '{}'; exec sleep 3600",
            output.display()
        );
        let log = std::fs::File::create(output.with_extension("xterm.log"))?;
        Command::new("xterm")
            .args([
                "-display",
                &self.display,
                "-bg",
                "white",
                "-fg",
                "black",
                "-geometry",
                "80x20+10+10",
            ])
            .args(["-e", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawning xterm (apt-get install xterm)")
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|path| path.exists())
}

/// A port free right now; only for programs that cannot report the port they bound.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Writes a session file into a fresh temporary directory and returns its path.
pub fn session_file(contents: &str) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("sessions");
    std::fs::write(&path, contents)?;
    Ok((dir, path))
}
