//! The whole platform, as the control-plane and fault tests drive it: a registry (one Redis, or a Redis
//! Cluster), the broker, edges, a test guacd and a VNC-like echo server. The backend makes tenants and
//! sessions through the API; browsers connect to any edge.
//!
//! It also holds the invariant every scenario ends with: for each tenant, open tunnels == registry
//! records == slots held <= `max_tunnels`, and the live view lists exactly the open tunnels. Each count
//! is read where it lives (records and slots in Redis, the live view through the API), never inferred.

use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use deskbroker_shared::ids::TokenDigest;

use crate::redis::{Keyspace, Redis};
use crate::upstreams::Echo;
use crate::{Broker, Edge, TestGuacd};

pub const ADMIN: &str = "admin-key-0123456789";
pub const ACME: &str = "acme-key-0123456789";
pub const GLOBEX: &str = "globex-key-0123456789";
/// The edges' cluster secret.
pub const SECRET: &str = "s3cret";
/// The tenants' desktops here are on loopback, which a node denies tenants by default.
pub const LOOPBACK_ALLOWED: [(&str, &str); 1] = [("DESKBROKER_UPSTREAM_DENY", "link-local")];

/// The pattern of every tunnel record's key.
const TUNNEL_RECORDS: &str = "deskbroker:tunnel:*";

/// What a platform starts with besides the defaults.
pub struct Options {
    /// Edges, named `edge-1`, `edge-2`, …
    pub edges: usize,
    /// Flags added to every edge's.
    pub edge_args: Vec<String>,
    /// Tenants configured in the broker's file, besides acme and globex: they come back by themselves
    /// when Redis loses its data, as tenants made through the API do not.
    pub tenants: Vec<Value>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            edges: 3,
            edge_args: Vec::new(),
            tenants: Vec::new(),
        }
    }
}

/// A tenant as the broker's configuration file holds it: raw VNC and guacd VNC desktops on loopback.
pub fn configured_tenant(id: &str, key: &str, max_tunnels: u32) -> Value {
    json!({
        "id": id,
        "key_sha256": TokenDigest::of(key).to_hex(),
        "policy": {"hosts": ["127.0.0.1", "*.acme.test"], "ports": ["1-65535"], "kinds": ["vnc", "guacd-vnc"]},
        "limits": {"max_tunnels": max_tunnels, "max_lifetime": "1h"}
    })
}

pub struct Platform<R: Keyspace = Redis> {
    pub redis: R,
    pub edges: Vec<Edge>,
    pub broker: Broker,
    pub guacd: TestGuacd,
    pub echo: Echo,
    pub http: reqwest::Client,
    _dir: TempDir,
}

impl Platform {
    /// A Redis, the broker, three edges, a test guacd and an echo desktop.
    pub async fn start() -> Platform {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Platform {
        Self::start_on(Redis::start().await.unwrap(), options).await
    }
}

impl<R: Keyspace> Platform<R> {
    /// The platform on a registry of the test's choosing (a Redis Cluster, say).
    pub async fn start_on(redis: R, options: Options) -> Platform<R> {
        let guacd = TestGuacd::start(&[]).await.unwrap();
        let echo = Echo::start().await.unwrap();
        let mut tenants = vec![configured_tenant("acme", ACME, 5)];
        tenants.push(configured_tenant("globex", GLOBEX, 5));
        tenants.extend(options.tenants);
        let config = json!({
            "tenants": tenants,
            "guacd_pools": {"default": [guacd.addr.to_string()]}
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let broker = Broker::start(&redis.url(), &path, ADMIN).await.unwrap();
        let args: Vec<&str> = options.edge_args.iter().map(String::as_str).collect();
        let mut edges = Vec::new();
        for i in 1..=options.edges {
            let id = format!("edge-{i}");
            let edge = Edge::start_node(&id, &redis.url(), SECRET, &args, &LOOPBACK_ALLOWED).await;
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

    /// A relay session to the echo desktop for a tenant's key, with `extra` fields; returns its
    /// websockify path.
    pub async fn relay_session(&self, key: &str, extra: Value) -> String {
        let mut body = json!({"target": self.vnc_target()});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let session = self.session(key, body).await;
        session["urls"]["websockify"].as_str().unwrap().to_owned()
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

    /// A tenant of its own for a test, made through the API, allowed `max_tunnels` raw VNC tunnels;
    /// returns its API key.
    pub async fn tenant(&self, id: &str, max_tunnels: u32) -> String {
        self.tenant_of_kinds(id, max_tunnels, &["vnc"]).await
    }

    /// A tenant made through the API, allowed `max_tunnels` tunnels to desktops of `kinds`.
    pub async fn tenant_of_kinds(&self, id: &str, max_tunnels: u32, kinds: &[&str]) -> String {
        let key = format!("{id}-key-0123456789");
        let spec = json!({
            "key": key,
            "policy": {"hosts": ["127.0.0.1"], "ports": ["1-65535"], "kinds": kinds},
            "limits": {"max_tunnels": max_tunnels, "max_lifetime": "1h"}
        });
        let path = format!("/api/v1/tenants/{id}");
        let (status, body) = self.api("PUT", &path, ADMIN, Some(spec)).await;
        assert_eq!(status, 200, "{body}");
        key
    }

    /// The slots the registry holds for a tenant.
    pub async fn slots(&self, tenant: &str) -> usize {
        let key = format!("deskbroker:tenant-tunnels:{{{tenant}}}");
        let answer = self.redis.cli(&["SCARD", &key]).await.unwrap();
        answer.first().and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    /// Every tunnel record in the registry, as JSON.
    pub async fn tunnel_records(&self) -> Vec<Value> {
        let values = self.redis.values(TUNNEL_RECORDS).await.unwrap();
        values
            .iter()
            .filter_map(|value| serde_json::from_str(value).ok())
            .collect()
    }

    /// The tunnel records the registry holds for a tenant.
    pub async fn records(&self, tenant: &str) -> usize {
        let records = self.tunnel_records().await;
        records.iter().filter(|r| r["tenant"] == tenant).count()
    }

    /// The tunnels the live view lists for a tenant, asked with its key.
    pub async fn listed(&self, key: &str) -> usize {
        let (status, sessions) = self.api("GET", "/api/v1/sessions", key, None).await;
        assert_eq!(status, 200, "{sessions}");
        tunnels_in(&sessions, None)
    }

    /// The tunnels the live view lists for a tenant, asked with the admin key (which sees every tenant
    /// that has a record).
    pub async fn listed_by_admin(&self, tenant: &str) -> usize {
        let (status, sessions) = self.api("GET", "/api/v1/sessions", ADMIN, None).await;
        assert_eq!(status, 200, "{sessions}");
        tunnels_in(&sessions, Some(tenant))
    }

    /// The invariant after every scenario: `open` tunnels run, the registry holds exactly as many records
    /// and slots, no more than `max`, and the live view lists them.
    pub async fn assert_invariant(&self, tenant: &str, key: &str, open: usize, max: usize) {
        assert!(open <= max, "{open} tunnels open against a limit of {max}");
        assert_eq!(self.records(tenant).await, open, "records of {tenant}");
        assert_eq!(self.slots(tenant).await, open, "slots held by {tenant}");
        assert_eq!(self.listed(key).await, open, "tunnels listed for {tenant}");
    }

    /// The invariant for a tenant that was removed: nothing of its tunnels is left, and nothing lists
    /// them (its key no longer opens the API).
    pub async fn assert_removed(&self, tenant: &str, key: &str) {
        assert_eq!(self.records(tenant).await, 0, "records of {tenant}");
        assert_eq!(self.slots(tenant).await, 0, "slots held by {tenant}");
        assert_eq!(self.listed_by_admin(tenant).await, 0, "listed for {tenant}");
        let (status, _) = self.api("GET", "/api/v1/sessions", key, None).await;
        assert_eq!(status, 401, "the removed tenant's key opens nothing");
    }
}

/// The tunnels a live view's answer lists, of one tenant or all.
fn tunnels_in(sessions: &Value, tenant: Option<&str>) -> usize {
    let sessions = sessions.as_array().unwrap();
    sessions
        .iter()
        .filter(|session| tenant.is_none_or(|tenant| session["tenant"] == tenant))
        .map(|session| session["tunnels"].as_array().map_or(0, Vec::len))
        .sum()
}

/// Waits (polling, up to `limit`) until `check` holds; panics with `what` otherwise.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
