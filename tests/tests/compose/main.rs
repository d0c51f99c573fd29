//! The compose cluster (`docker-compose.yml`) as a user runs it: brought up from the image, then used only
//! through the load balancer's published port. Sessions come from the broker's API behind it; noVNC-style
//! bytes go through `/websockify` and a Guacamole HTTP tunnel's requests land on every edge (round robin),
//! all checksummed; one edge is killed, and the tunnels on the others keep flowing while new sessions
//! connect; `down` leaves nothing behind. It needs Docker, docker-compose and the images, so
//! `scripts/compose-test` makes them and runs it, and `scripts/test` (which needs no Docker) leaves it out.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use deskbroker_tests::clients::{HttpTunnel, api, connect_data};
use deskbroker_tests::flows::{self, RelayFlow, Report, Shape};
use deskbroker_tests::guac_flows::HttpFlow;
use deskbroker_tests::platform::eventually;
use deskbroker_tests::process::free_port;

const ADMIN: &str = "compose-test-admin-key";
const KEY: &str = "compose-test-tenant-key";
const EDGES: [&str; 3] = ["edge-1", "edge-2", "edge-3"];
const SHAPE: Shape = Shape {
    max_message: 16 * 1024,
    max_pause_ms: 20,
};

/// One compose project of the repository's files and the test's additions, on a port of its own; taken
/// down, volumes and all, when dropped.
struct Compose {
    project: String,
    port: u16,
}

impl Compose {
    fn new() -> Self {
        Self {
            project: format!("deskbroker-test-{}", std::process::id()),
            port: free_port().expect("a free port"),
        }
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut command = std::process::Command::new("docker-compose");
        command
            .current_dir(root)
            .args(["-p", &self.project, "--profile", "guacd"])
            .args([
                "-f",
                "docker-compose.yml",
                "-f",
                "tests/compose/docker-compose.test.yml",
            ])
            .args(args)
            .env("DESKBROKER_PORT", self.port.to_string())
            .env("DESKBROKER_ADMIN_KEY", ADMIN)
            .env("DESKBROKER_CLUSTER_SECRET", "compose-test-cluster-secret");
        command
    }

    /// Runs `docker-compose <args>` to its end and returns its standard output; panics if it failed.
    async fn run(&self, args: &[&str]) -> String {
        // Bringing the cluster up or down takes seconds here; a Docker that hangs fails the test.
        let output = tokio::process::Command::from(self.command(args)).output();
        let output = tokio::time::timeout(Duration::from_secs(300), output)
            .await
            .expect("docker-compose answers within 5 minutes")
            .expect("docker-compose runs");
        assert!(
            output.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn ws(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// What Docker still holds of the project: containers, networks and volumes, by its label.
    async fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = Vec::new();
        for kind in ["container", "network", "volume"] {
            let output = tokio::process::Command::new("docker")
                .args([kind, "ls", "-q", "--filter", &label])
                .args(if kind == "container" {
                    &["-a"][..]
                } else {
                    &[]
                })
                .output()
                .await
                .expect("docker runs");
            let listed = String::from_utf8_lossy(&output.stdout);
            left.extend(listed.split_whitespace().map(|id| format!("{kind} {id}")));
        }
        left
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self
            .command(&["down", "-v", "--remove-orphans", "-t", "5"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the images: scripts/compose-test runs it"]
async fn the_compose_cluster_relays_through_its_balancer_and_outlives_an_edge() {
    let compose = Compose::new();
    compose.run(&["up", "-d", "--no-build"]).await;
    let nodes = compose.url("/api/v1/nodes");
    eventually(
        Duration::from_secs(90),
        "the three edges joined",
        || async {
            let answered = reqwest::get(compose.url("/healthz")).await;
            answered.is_ok_and(|r| r.status() == 200)
                && api("GET", &nodes, ADMIN, None)
                    .await
                    .1
                    .as_array()
                    .map(Vec::len)
                    == Some(3)
        },
    )
    .await;
    let spec = json!({
        "key": KEY,
        "policy": {"hosts": ["echo", "desktop"], "ports": ["5900", "7777"], "kinds": ["vnc", "guacd-vnc"]},
        "limits": {"max_tunnels": 50, "max_lifetime": "1h"}
    });
    let tenant = compose.url("/api/v1/tenants/compose-test");
    let (status, body) = api("PUT", &tenant, ADMIN, Some(spec)).await;
    assert_eq!(status, 200, "{body}");

    // Raw relays to the echo desktop, and HTTP tunnels to guacd read and written through the balancer.
    let mut ids = Vec::new();
    let mut relays = Vec::new();
    for seed in 0..6 {
        let (id, flow) = relay(&compose, seed).await;
        ids.push(id);
        relays.push(flow);
    }
    let mut tunnels = Vec::new();
    for seed in 0..3 {
        tunnels.push(http_flow(&compose, 100 + seed).await);
    }
    let (tunnels, reports) = run_for(tunnels, Duration::from_secs(4), HttpFlow::run).await;
    assert_lossless("HTTP tunnels across the edges", &reports);
    for tunnel in tunnels {
        tunnel.disconnect().await;
    }
    let logs = compose
        .run(&["logs", "--no-color", "edge-1", "edge-2", "edge-3"])
        .await;
    assert!(
        logs.contains("forwarding to the owner"),
        "no edge served another's tunnel: the balancer kept each tunnel's requests on one edge"
    );

    // An edge killed under traffic: the relays it owned end, the others keep every byte.
    let (relays, reports) = run_for(relays, Duration::from_secs(2), RelayFlow::run).await;
    assert_lossless("relays before the kill", &reports);
    let owners = owners(&compose, &ids).await;
    let victim = EDGES
        .iter()
        .copied()
        .find(|edge| owners.iter().any(|owner| owner == edge))
        .expect("an edge owns a relay");
    let survivors: Vec<RelayFlow> = relays
        .into_iter()
        .zip(&owners)
        .filter(|(_, owner)| owner.as_str() != victim)
        .map(|(relay, _)| relay)
        .collect();
    assert!(
        !survivors.is_empty(),
        "every relay is on {victim}: {owners:?}"
    );
    let before: Vec<u64> = survivors.iter().map(|relay| relay.counts().1).collect();
    compose.run(&["kill", victim]).await;
    let (survivors, reports) = run_for(survivors, Duration::from_secs(5), RelayFlow::run).await;
    assert_lossless(&format!("relays on the edges {victim} was not"), &reports);
    let mut moved = 0;
    for (relay, before) in survivors.iter().zip(before) {
        let after = relay.counts().1;
        assert!(after > before, "a relay stopped moving when {victim} died");
        moved += after - before;
    }
    eprintln!(
        "measured: {victim} killed under {} relays; the {} on other edges moved {moved} bytes after it, \
         none lost",
        owners.len(),
        survivors.len()
    );

    // New sessions connect, and tunnels cross the surviving edges, as the balancer takes the dead edge out.
    let mut fresh = Vec::new();
    for seed in 200..206 {
        fresh.push(relay(&compose, seed).await.1);
    }
    let (_, reports) = run_for(fresh, Duration::from_secs(2), RelayFlow::run).await;
    assert_lossless("relays opened after the kill", &reports);
    let tunnel = http_flow(&compose, 300).await;
    let (_, reports) = run_for(vec![tunnel], Duration::from_secs(3), HttpFlow::run).await;
    assert_lossless("an HTTP tunnel opened after the kill", &reports);

    compose
        .run(&["down", "-v", "--remove-orphans", "-t", "5"])
        .await;
    let left = compose.leftovers().await;
    assert!(left.is_empty(), "down left {left:?}");
}

/// A session to the echo desktop, and its relay through the balancer; with the session's id.
async fn relay(compose: &Compose, seed: u64) -> (String, RelayFlow) {
    let target = json!({"kind": "vnc", "host": "echo", "port": 7777});
    let session = session(compose, target).await;
    let path = session["urls"]["websockify"]
        .as_str()
        .expect("a websockify URL");
    let socket = flows::open(&compose.ws(path))
        .await
        .expect("the relay echoes");
    let id = session["id"].as_str().expect("an id").to_owned();
    (id, RelayFlow::new(socket, seed, SHAPE))
}

/// A session to the desktop through guacd, and its HTTP tunnel, connected, read and written through the
/// balancer (so its requests land on every edge in turn).
async fn http_flow(compose: &Compose, seed: u64) -> HttpFlow {
    let target = json!({"kind": "guacd", "protocol": "vnc", "guacd": "default",
                        "params": {"hostname": "desktop", "port": "5900"}});
    let token = session(compose, target).await["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let base = compose.url("");
    let tunnel = HttpTunnel::connect(&base, &connect_data(&token))
        .await
        .expect("the HTTP tunnel connects");
    HttpFlow::new(tunnel, vec![base.clone()], vec![base], seed)
}

async fn session(compose: &Compose, target: Value) -> Value {
    let sessions = compose.url("/api/v1/sessions");
    let (status, session) = api("POST", &sessions, KEY, Some(json!({"target": target}))).await;
    assert_eq!(status, 201, "{session}");
    session
}

/// The node owning the one tunnel of each session of `ids`, in their order.
async fn owners(compose: &Compose, ids: &[String]) -> Vec<String> {
    let mut owners = Vec::new();
    for id in ids {
        let url = compose.url(&format!("/api/v1/sessions/{id}"));
        let (status, session) = api("GET", &url, KEY, None).await;
        assert_eq!(status, 200, "{session}");
        let tunnels = session["tunnels"]
            .as_array()
            .expect("the session's tunnels");
        assert_eq!(tunnels.len(), 1, "{session}");
        owners.push(tunnels[0]["node"].as_str().expect("its node").to_owned());
    }
    owners
}

/// Runs every flow for `how_long`, then stops them; returns them with their reports, in order.
async fn run_for<F, Fut>(
    flows: Vec<F>,
    how_long: Duration,
    run: fn(F, CancellationToken) -> Fut,
) -> (Vec<F>, Vec<Report>)
where
    F: Send + 'static,
    Fut: Future<Output = (F, Report)> + Send + 'static,
{
    let stop = CancellationToken::new();
    let running: Vec<_> = flows
        .into_iter()
        .map(|flow| tokio::spawn(run(flow, stop.clone())))
        .collect();
    tokio::time::sleep(how_long).await;
    stop.cancel();
    let mut done = (Vec::new(), Vec::new());
    for flow in running {
        let (flow, report) = flow.await.expect("a flow ran");
        done.0.push(flow);
        done.1.push(report);
    }
    done
}

fn assert_lossless(what: &str, reports: &[Report]) {
    for report in reports {
        assert!(
            report.lossless() && report.round_trips > 0,
            "{what}: {report:?}"
        );
    }
}
