//! Many edges and one registry: any node serves any tunnel, by forwarding to its owner. Real redis-server
//! processes (one server, or a three-master Redis Cluster), real edge binaries, the test guacd.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

mod control_channel;
mod draining;
mod failures;
mod forwarding;
mod logs;
mod metrics;
mod peer_port;
mod probes;

use deskbroker_tests::{Edge, TestGuacd};
use tempfile::TempDir;

pub const SECRET: &str = "test-cluster-secret";

/// Edges sharing one registry, with the session `g` pointing at a test guacd.
pub struct Cluster {
    pub edges: Vec<Edge>,
    pub guacd: TestGuacd,
    redis_url: String,
    sessions: std::path::PathBuf,
    _dir: TempDir,
}

impl Cluster {
    pub async fn start(redis_url: &str, nodes: usize) -> Cluster {
        let guacd = TestGuacd::start(&[]).await.expect("test guacd");
        let sessions = format!("g: guacd://{}/vnc?hostname=desk-1\n", guacd.addr);
        let (dir, path) = deskbroker_tests::process::session_file(&sessions).expect("session file");
        let mut edges = Vec::new();
        for i in 1..=nodes {
            edges.push(start_edge(i, redis_url, &path).await);
        }
        Cluster {
            edges,
            guacd,
            redis_url: redis_url.to_owned(),
            sessions: path,
            _dir: dir,
        }
    }

    /// Kills a node and starts it again at once as itself (a container restarted in place): a new
    /// incarnation of the same node id.
    pub async fn start_again(&mut self, node: usize) {
        self.edges[node].process.kill().await;
        self.edges[node] = start_edge(node + 1, &self.redis_url, &self.sessions).await;
    }

    pub fn http(&self, node: usize) -> String {
        self.edges[node].http_url("")
    }

    pub fn all_http(&self) -> Vec<String> {
        (0..self.edges.len()).map(|i| self.http(i)).collect()
    }

    /// The peer listener's URL, from the edge's log.
    pub fn peer(&self, node: usize) -> String {
        let logs = self.edges[node].process.output.lock().unwrap().clone();
        logs.iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|event| event["message"] == "peer listening")
            .and_then(|event| event["url"].as_str().map(str::to_owned))
            .expect("peer listener announced")
    }
}

async fn start_edge(n: usize, redis_url: &str, sessions: &std::path::Path) -> Edge {
    let args = ["--sessions", sessions.to_str().unwrap()];
    Edge::start_node(&format!("edge-{n}"), redis_url, SECRET, &args, &[])
        .await
        .expect("edge starts")
}
