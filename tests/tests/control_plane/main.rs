//! The control plane, through its API only: a Redis, three edges, the broker, a test guacd and a VNC-like
//! echo server. The backend creates sessions, browsers connect anywhere, the backend lists and kills.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

mod access;
mod hostile;
mod lifecycle;
mod limits;
mod live_view;
mod sessions;
mod sharing;

use serde_json::{Value, json};
use tempfile::TempDir;

use deskbroker_shared::ids::TokenDigest;
use deskbroker_tests::redis::Redis;
use deskbroker_tests::upstreams::Echo;
use deskbroker_tests::{Broker, Edge, TestGuacd};

pub const ADMIN: &str = "admin-key-0123456789";
pub const ACME: &str = "acme-key-0123456789";
pub const GLOBEX: &str = "globex-key-0123456789";
/// The edges' cluster secret.
pub const SECRET: &str = "s3cret";
/// The tenants' desktops here are on loopback, which a node denies tenants by default.
pub const LOOPBACK_ALLOWED: [(&str, &str); 1] = [("DESKBROKER_UPSTREAM_DENY", "link-local")];

pub struct Platform {
    pub redis: Redis,
    pub edges: Vec<Edge>,
    pub broker: Broker,
    pub guacd: TestGuacd,
    pub echo: Echo,
    pub http: reqwest::Client,
    _dir: TempDir,
}

impl Platform {
    pub async fn start() -> Platform {
        let redis = Redis::start().await.unwrap();
        let guacd = TestGuacd::start(&[]).await.unwrap();
        let echo = Echo::start().await.unwrap();
        let tenant = |id: &str, key: &str| {
            json!({
                "id": id,
                "key_sha256": TokenDigest::of(key).to_hex(),
                "policy": {"hosts": ["127.0.0.1", "*.acme.test"], "ports": ["1-65535"], "kinds": ["vnc", "guacd-vnc"]},
                "limits": {"max_tunnels": 5, "max_lifetime": "1h"}
            })
        };
        let config = json!({
            "tenants": [tenant("acme", ACME), tenant("globex", GLOBEX)],
            "guacd_pools": {"default": [guacd.addr.to_string()]}
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let broker = Broker::start(&redis.url(), &path, ADMIN).await.unwrap();
        let mut edges = Vec::new();
        for i in 1..=3 {
            let id = format!("edge-{i}");
            let edge = Edge::start_node(&id, &redis.url(), SECRET, &[], &LOOPBACK_ALLOWED).await;
            edges.push(edge.unwrap());
        }
        Platform {
            redis,
            edges,
            broker,
            guacd,
            echo,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// Calls the API with a key; returns the status and the JSON body (Null when empty).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method, self.broker.url(path))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a session for a tenant; panics unless it is created.
    pub async fn session(&self, key: &str, body: Value) -> Value {
        let (status, session) = self.api("POST", "/api/v1/sessions", key, Some(body)).await;
        assert_eq!(status, 201, "{session}");
        session
    }

    pub fn vnc_target(&self) -> Value {
        json!({"kind": "vnc", "host": "127.0.0.1", "port": self.echo.addr.port()})
    }

    /// A desktop behind the test guacd, which connects nowhere: its name need only resolve, since the
    /// edge checks the address a tenant's desktop name resolves to.
    pub fn guacd_target(&self) -> Value {
        json!({"kind": "guacd", "protocol": "vnc", "guacd": "default",
               "params": {"hostname": "127.0.0.1", "port": "5901", "password": "hunter2"}})
    }

    pub fn ws(&self, node: usize) -> String {
        self.edges[node].ws_url("")
    }

    pub fn http_url(&self, node: usize) -> String {
        self.edges[node].http_url("")
    }
}
