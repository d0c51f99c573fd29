//! The browser side of the end-to-end tests: Debian's Chromium driven by playwright-core (`web/e2e/page.mjs`)
//! through the built web client page, and HAProxy balancing round robin, without stickiness, in front of the
//! edges.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::process::free_port;

/// The workspace's `web/` folder.
pub fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../web")
}

/// Where screenshots and browser logs are left for people to look at.
pub fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// True when the browser tests can run here; outside CI a missing piece skips them with the reason.
pub fn available() -> anyhow::Result<bool> {
    let missing: Vec<&str> = [
        ("/usr/bin/chromium", "apt-get install chromium"),
        ("/usr/sbin/haproxy", "apt-get install haproxy"),
    ]
    .into_iter()
    .filter(|(path, _)| !std::path::Path::new(path).exists())
    .map(|(_, hint)| hint)
    .chain(
        (!web_dir().join("dist/index.html").exists())
            .then_some("cd web && npm ci && npm run build"),
    )
    .collect();
    match (missing.is_empty(), std::env::var_os("CI").is_some()) {
        (true, _) => Ok(true),
        (false, true) => bail!("browser tests need: {}", missing.join("; ")),
        (false, false) => {
            eprintln!("skipping browser test; missing: {}", missing.join("; "));
            Ok(false)
        }
    }
}

/// Opens the page as `job` says (see web/e2e/page.mjs) and returns what the page reported.
pub async fn open_page(job: Value) -> anyhow::Result<Value> {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new("node")
            .arg("e2e/page.mjs")
            .arg(job.to_string())
            .current_dir(web_dir())
            .output(),
    )
    .await
    .context("the browser took over a minute")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str::<Value>(line).ok());
    match report {
        Some(report) => Ok(report),
        None => bail!(
            "browser failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Pages of the web client kept open in one headless Chromium (`web/e2e/sessions.mjs`) while a test does
/// what it will to the nodes under them, and asked now and then how they are.
pub struct Sessions {
    child: Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Sessions {
    /// Opens `pages` (`[{name, url}]`) and waits until each says it is connected, or 30 s; returns the
    /// driver and its first report.
    pub async fn open(pages: Value) -> anyhow::Result<(Self, Value)> {
        use tokio::io::AsyncBufReadExt;
        let job = serde_json::json!({ "pages": pages });
        let mut child = Command::new("node")
            .arg("e2e/sessions.mjs")
            .arg(job.to_string())
            .current_dir(web_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning the browser")?;
        let stdin = child.stdin.take().context("the browser's stdin")?;
        let stdout = child.stdout.take().context("the browser's stdout")?;
        let mut sessions = Self {
            child,
            stdin,
            lines: tokio::io::BufReader::new(stdout).lines(),
        };
        let ready = sessions.answer().await?;
        Ok((sessions, ready))
    }

    async fn answer(&mut self) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(Duration::from_secs(90), self.lines.next_line())
            .await
            .context("the browser did not answer in time")??
            .context("the browser exited")?;
        Ok(serde_json::from_str(&line)?)
    }

    async fn command(&mut self, command: Value) -> anyhow::Result<Value> {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.answer().await
    }

    /// Every page's state, status, pauses and reconnects.
    pub async fn report(&mut self) -> anyhow::Result<Vec<Value>> {
        let report = self.command(serde_json::json!({ "cmd": "report" })).await?;
        Ok(report["pages"].as_array().cloned().unwrap_or_default())
    }

    /// Types `text` into the desktop of page `name`.
    pub async fn type_into(&mut self, name: &str, text: &str) -> anyhow::Result<()> {
        let command = serde_json::json!({ "cmd": "type", "name": name, "text": text });
        self.command(command).await.map(drop)
    }

    pub async fn quit(mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.stdin.write_all(b"{\"cmd\":\"quit\"}\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// HAProxy in HTTP mode, round robin per request, no stickiness: the product's configuration
/// (`deploy/haproxy.cfg`, which docker-compose.yml runs), with this test's address and backends.
pub struct Balancer {
    pub addr: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Balancer {
    pub async fn start(backends: &[SocketAddr]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let product = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/haproxy.cfg");
        let config = balancer_config(&std::fs::read_to_string(product)?, port, backends);
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config)?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning haproxy")?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        for _ in 0..800 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(Self {
                    addr,
                    _child: child,
                    _dir: dir,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("haproxy did not open {addr}")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// The product's HAProxy configuration with its `bind` on a loopback port and the `edges` backend's servers
/// replaced; other backends (the broker's) are left without servers, so they answer 503.
fn balancer_config(product: &str, port: u16, backends: &[SocketAddr]) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("    server edge{i} {addr} check\n"))
        .collect();
    let mut config = String::new();
    let mut in_edges = false;
    for line in product.lines() {
        let section = line.starts_with(|c: char| !c.is_whitespace() && c != '#');
        if section && std::mem::take(&mut in_edges) {
            config.push_str(&servers);
        }
        match line.trim_start() {
            "backend edges" => in_edges = true,
            bind if bind.starts_with("bind ") => {
                config.push_str(&format!("    bind 127.0.0.1:{port}\n"));
                continue;
            }
            server if server.starts_with("server ") => continue,
            _ => {}
        }
        config.push_str(line);
        config.push('\n');
    }
    if in_edges {
        config.push_str(&servers);
    }
    config
}
