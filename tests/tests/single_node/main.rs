//! One edge, no Redis: the three browser-facing tunnels end to end, with real processes on real sockets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

mod back_pressure;
mod connections;
mod control_plane;
mod http_tunnel;
mod lifecycle;
mod logs;
mod operations;
mod websockify;
mod ws_tunnel;

use std::time::Duration;

use deskbroker_tests::{Edge, TestGuacd};
use tempfile::TempDir;

/// The edge's deadline for a guacd that sends nothing (`GUACD_SILENCE_TIMEOUT`): guacd says `nop` after
/// 5 s of quiet, so 15 s without a byte means it is gone.
pub const GUACD_SILENCE: Duration = Duration::from_secs(15);

/// How much sooner than [`GUACD_SILENCE`] after a test's last instruction to guacd a silent guacd's tunnel
/// may end: the edge's clock starts at its last read from guacd, a moment before the test spoke, and a
/// loaded machine stretches that moment.
pub const SILENCE_MARGIN: Duration = Duration::from_secs(1);

/// An edge serving sessions written to a file, kept alive as long as this value.
pub struct Node {
    pub edge: Edge,
    _dir: TempDir,
}

impl Node {
    pub async fn start(sessions: &str, args: &[&str]) -> Node {
        let (dir, path) = deskbroker_tests::process::session_file(sessions).expect("session file");
        let mut all = vec!["--sessions", path.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let edge = Edge::start(&all).await.expect("edge starts");
        Node { edge, _dir: dir }
    }

    pub fn ws(&self) -> String {
        self.edge.ws_url("")
    }

    pub fn http(&self) -> String {
        self.edge.http_url("")
    }
}

/// A configuration file (`--config`) with the tenant `acme`, allowed `max_tunnels` at a time.
pub fn acme_config(max_tunnels: u32) -> (TempDir, std::path::PathBuf) {
    let config = serde_json::json!({"tenants": [{
        "id": "acme",
        "key_sha256": deskbroker_shared::ids::TokenDigest::of("acme-key-0123456789").to_hex(),
        "limits": {"max_tunnels": max_tunnels},
    }]});
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).expect("config written");
    (dir, path)
}

/// A test guacd and an edge with the session `g` (VNC through guacd) pointing at it.
pub async fn guacd_node(guacd_args: &[&str], edge_args: &[&str]) -> (TestGuacd, Node) {
    let guacd = TestGuacd::start(guacd_args)
        .await
        .expect("test guacd starts");
    let sessions = format!(
        "g: guacd://{}/vnc?hostname=desk-1&port=5901&password=s%3Dcret\n\
         r: guacd://{}/rdp?hostname=win-1\n\
         bogus: guacd://{}/telepathy\n\
         raw: 127.0.0.1:1\n",
        guacd.addr, guacd.addr, guacd.addr
    );
    let node = Node::start(&sessions, edge_args).await;
    (guacd, node)
}
