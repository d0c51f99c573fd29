//! Real browsers, real clients: the web client page in headless Chromium, through HAProxy (round robin, no
//! stickiness) in front of two edges sharing a Redis, to the demo desktop, a real Xvnc running an xterm, and
//! the test guacd over both Guacamole tunnels. Screenshots and browser logs are left in tests/artifacts/.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

mod reconnect;

use std::time::Duration;

use serde_json::{Value, json};

use deskbroker_tests::browser::{self, Balancer};
use deskbroker_tests::redis::Redis;
use deskbroker_tests::{Edge, TestGuacd, Xvnc};

struct Stack {
    balancer: Balancer,
    edges: Vec<Edge>,
    record: std::path::PathBuf,
    xvnc: Option<(Xvnc, std::path::PathBuf)>,
    _guacd: TestGuacd,
    _redis: Redis,
    _dir: tempfile::TempDir,
    _xterm: Option<tokio::process::Child>,
}

impl Stack {
    async fn start() -> Option<Stack> {
        if !browser::available().unwrap() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("guacd-input");
        let redis = Redis::start().await.unwrap();
        let guacd = TestGuacd::start(&["--record", record.to_str().unwrap()])
            .await
            .unwrap();
        let xvnc = Xvnc::start().await.unwrap();
        let mut sessions = format!("g: guacd://{}/vnc?hostname=desk-1\n", guacd.addr);
        let mut xterm = None;
        let xvnc = xvnc.map(|xvnc| {
            let typed = dir.path().join("typed");
            xterm = Some(xvnc.xterm(&typed).unwrap());
            sessions.push_str(&format!("x: {}\n", xvnc.addr));
            (xvnc, typed)
        });
        let path = dir.path().join("sessions");
        std::fs::write(&path, sessions).unwrap();
        let web = browser::web_dir().join("dist");
        let mut edges = Vec::new();
        for i in 1..=2 {
            let id = format!("edge-{i}");
            let mut args = vec!["--web-dir", web.to_str().unwrap()];
            args.extend(["--sessions", path.to_str().unwrap()]);
            if i == 1 {
                args.push("--demo");
            }
            let edge = Edge::start_node(&id, &redis.url(), "s3cret", &args, &[]).await;
            edges.push(edge.unwrap());
        }
        let balancer = Balancer::start(&edges.iter().map(|e| e.addr).collect::<Vec<_>>())
            .await
            .unwrap();
        Some(Stack {
            balancer,
            edges,
            record,
            xvnc,
            _guacd: guacd,
            _redis: redis,
            _dir: dir,
            _xterm: xterm,
        })
    }

    /// Opens the page for `token`, saves the screenshot as `name`, and checks the page connected and shows
    /// a picture.
    async fn open(&self, name: &str, token: &str, transport: &str, extra: Value) -> Value {
        let screenshot = browser::artifacts().join(format!("{name}.png"));
        let mut job = json!({
            "url": self.balancer.url(&format!("/?token={token}&transport={transport}")),
            "screenshot": screenshot,
        });
        job.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let report = browser::open_page(job).await.unwrap();
        std::fs::write(
            browser::artifacts().join(format!("{name}.console.txt")),
            report["console"].to_string(),
        )
        .unwrap();
        let status = report["status"].as_str().unwrap_or_default();
        if !status.starts_with("Connected") {
            for edge in &self.edges {
                eprintln!("--- edge log\n{}", edge.process.logs());
            }
        }
        assert!(
            status.starts_with("Connected"),
            "{name}: the page says {status:?}; console: {}",
            report["console"]
        );
        let xterm_log = self.xvnc.as_ref().map(|(_, typed)| {
            std::fs::read_to_string(typed.with_extension("xterm.log")).unwrap_or_default()
        });
        assert!(
            report["colours"].as_u64().unwrap_or(0) > 1,
            "{name}: the screen is blank; xterm: {xterm_log:?}"
        );
        report
    }

    fn forwarded(&self) -> bool {
        self.edges
            .iter()
            .any(|edge| edge.process.logs().contains("forwarding to the owner"))
    }

    /// The instructions that reached guacd with `opcode`, in order.
    fn received(&self, opcode: &str) -> Vec<String> {
        let text = std::fs::read_to_string(&self.record).unwrap_or_default();
        let prefix = format!("{}.{opcode},", opcode.len());
        text.lines()
            .filter(|line| line.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    }
}

/// The keysym presses (`key,<keysym>,1`) that reached guacd, as characters.
fn typed(presses: &[String]) -> String {
    presses
        .iter()
        .filter_map(|line| {
            let instruction = deskbroker_shared::Instruction::parse(line.as_bytes()).ok()?;
            let pressed = instruction.args.get(1)? == "1";
            let keysym: u32 = instruction.args.first()?.parse().ok()?;
            (pressed && keysym < 0x100)
                .then(|| char::from_u32(keysym))
                .flatten()
        })
        .collect()
}

#[tokio::test]
async fn novnc_shows_the_demo_desktop_through_the_balancer() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let typing = json!({"click": [500, 350], "type": "k", "settleMs": 1500});
    stack.open("novnc-demo", "demo", "chained", typing).await;
    // The demo desktop runs beside the first edge and says what it received.
    let input = reqwest::get(stack.edges[0].http_url("/demo/input"))
        .await
        .unwrap();
    let input: Value = serde_json::from_str(&input.text().await.unwrap()).unwrap();
    assert_eq!(
        input["last_key"], 0x6b,
        "the key typed in the page reached the demo desktop: {input}"
    );
    assert!(
        input["x"].as_u64().unwrap() > 0,
        "the click moved its pointer: {input}"
    );
}

#[tokio::test]
async fn novnc_types_into_an_xterm_on_a_real_xvnc() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let Some((_, typed_file)) = &stack.xvnc else {
        return;
    };
    stack
        .open(
            "novnc-xterm",
            "x",
            "chained",
            json!({"click": [300, 200], "type": "hello deskbroker\n", "settleMs": 1500}),
        )
        .await;
    let mut seen = String::new();
    for _ in 0..50 {
        seen = std::fs::read_to_string(typed_file).unwrap_or_default();
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let xterm_log =
        std::fs::read_to_string(typed_file.with_extension("xterm.log")).unwrap_or_default();
    assert_eq!(
        seen, "hello deskbroker",
        "what the browser typed reached the xterm; xterm said: {xterm_log}"
    );
}

#[tokio::test]
async fn guacamole_over_the_http_tunnel_across_nodes() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    stack
        .open(
            "guacamole-http",
            "g",
            "http",
            json!({"click": [300, 200], "type": "abc", "settleMs": 1500}),
        )
        .await;
    assert_eq!(
        typed(&stack.received("key")),
        "abc",
        "keys reached guacd in order"
    );
    assert!(
        !stack.received("mouse").is_empty(),
        "the click reached guacd"
    );
    assert!(
        stack.forwarded(),
        "some requests landed on the node that does not own the tunnel"
    );
}

#[tokio::test]
async fn guacamole_over_the_websocket_tunnel() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    stack
        .open(
            "guacamole-websocket",
            "g",
            "websocket",
            json!({"click": [300, 200], "type": "xyz", "settleMs": 1500}),
        )
        .await;
    assert_eq!(
        typed(&stack.received("key")),
        "xyz",
        "keys reached guacd in order"
    );
    assert!(
        !stack.received("mouse").is_empty(),
        "the click reached guacd"
    );
}

#[tokio::test]
async fn guacamole_over_the_chained_tunnel() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    stack
        .open(
            "guacamole-chained",
            "g",
            "chained",
            json!({"type": "q", "settleMs": 1000}),
        )
        .await;
    assert_eq!(typed(&stack.received("key")), "q");
}

#[tokio::test]
async fn a_refused_token_is_explained_in_words() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    for transport in ["chained", "http"] {
        let job = json!({
            "url": stack.balancer.url(&format!("/?token=nope&transport={transport}")),
            "screenshot": browser::artifacts().join(format!("refused-{transport}.png")),
            "expect": "error",
        });
        let report = browser::open_page(job).await.unwrap();
        assert_eq!(
            report["status"], "Unknown or expired session token.",
            "{report}"
        );
    }
}
