//! Planned restarts and a lost node cost a user a pause, not a click: sessions of the web page in headless
//! Chromium (noVNC on a real Xvnc running an xterm, and guacamole-common-js over the WebSocket, HTTP and
//! chained tunnels to the test guacd) through HAProxy round robin in front of three edges on Redis, while
//! every edge in turn is stopped with SIGTERM and started again, as a rolling update does, and then one is
//! killed with SIGKILL. Every session comes back by itself (exclusive ones too, neither refused nor taken
//! over because of their own previous tunnel, and none refused by the tenant's limit, which the pages fill
//! exactly), and what was typed into the xterm before is
//! still there after: the line it reads ends up holding text typed before and after. A revoked session and
//! an idle one do not come back, and the page says why.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use deskbroker_broker::{RedisRegistry, Registry};
use deskbroker_shared::cluster::ControlEvent;
use deskbroker_shared::ids::{SessionId, SessionToken, TokenDigest};
use deskbroker_tests::browser::{self, Balancer, Sessions};
use deskbroker_tests::process::free_port;
use deskbroker_tests::redis::Redis;
use deskbroker_tests::{Broker, Edge, TestGuacd, Xvnc};

/// The tunnels the reconnect test holds at once, one per page: also the tenant's limit, so that a
/// reconnect that waited for a lost tunnel's slot would show.
const TUNNELS: u32 = 12;

/// The edges' node ids and the arguments each starts with, so that one can be started again as itself.
struct Edges {
    args: Vec<Vec<String>>,
    running: Vec<Option<Edge>>,
    redis_url: String,
}

impl Edges {
    async fn start(&mut self, i: usize) {
        let args: Vec<&str> = self.args[i].iter().map(String::as_str).collect();
        let id = format!("edge-{}", i + 1);
        let edge = Edge::start_node(&id, &self.redis_url, "s3cret", &args, &[]).await;
        self.running[i] = Some(edge.unwrap());
    }
}

/// Asks the pages until every one says it is connected, for at most `limit`; returns the last report.
async fn all_open(sessions: &mut Sessions, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let pages = sessions.report().await.unwrap();
        if pages.iter().all(|page| page["state"] == "open") || Instant::now() > deadline {
            return pages;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_all_open(pages: &[Value], after: &str) {
    for page in pages {
        assert_eq!(
            page["state"], "open",
            "{} after {after}: the page says {:?}; console: {}",
            page["name"], page["status"], page["console"]
        );
    }
}

/// The median and the largest of `pauses`, in ms.
fn p50_and_max(mut pauses: Vec<u64>) -> (u64, u64) {
    pauses.sort_unstable();
    let max = pauses.last().copied().unwrap_or(0);
    (pauses.get(pauses.len() / 2).copied().unwrap_or(0), max)
}

fn pauses(pages: &[Value]) -> Vec<u64> {
    pages
        .iter()
        .flat_map(|page| page["pauses"].as_array().cloned().unwrap_or_default())
        .filter_map(|pause| pause.as_u64())
        .collect()
}

/// Three edges on Redis behind HAProxy, serving `sessions` (a session file's text, in which `{vnc}` and
/// `{guacd}` stand for the Xvnc's and the test guacd's addresses), with an xterm on the Xvnc that writes
/// the first line typed into it to `typed`, and the test guacd recording what it is sent.
struct Stack {
    edges: Edges,
    balancer: Balancer,
    _broker: Broker,
    typed: std::path::PathBuf,
    record: std::path::PathBuf,
    redis: Redis,
    _guacd: TestGuacd,
    _xterm: tokio::process::Child,
    _xvnc: Xvnc,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start(sessions: &str) -> Option<Stack> {
        if !browser::available().unwrap() {
            return None;
        }
        let xvnc = Xvnc::start().await.unwrap()?;
        let dir = tempfile::tempdir().unwrap();
        let typed = dir.path().join("typed");
        let xterm = xvnc.xterm(&typed).unwrap();
        let record = dir.path().join("guacd-input");
        let guacd = TestGuacd::start(&["--record", record.to_str().unwrap()])
            .await
            .unwrap();
        let redis = Redis::start().await.unwrap();
        // The tenant of every session, allowed exactly as many tunnels as the tests open: a reconnect that
        // had to wait for a lost tunnel's slot would be refused.
        let config = dir.path().join("tenants.json");
        let tenants = json!({"tenants": [{
            "id": "acme",
            "key_sha256": TokenDigest::of("acme-key-0123456789").to_hex(),
            "limits": {"max_tunnels": TUNNELS},
        }]});
        std::fs::write(&config, tenants.to_string()).unwrap();
        let broker = Broker::start_with_env(&redis.url(), &config, "admin-key", &[])
            .await
            .unwrap();
        let sessions_file = dir.path().join("sessions");
        let sessions = sessions
            .replace("{vnc}", &xvnc.addr.to_string())
            .replace("{guacd}", &guacd.addr.to_string());
        std::fs::write(&sessions_file, sessions).unwrap();
        let web = browser::web_dir().join("dist");
        let listen: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port().unwrap()))
            .collect();
        let mut edges = Edges {
            args: listen
                .iter()
                .map(|addr| {
                    [
                        "--listen",
                        addr,
                        "--web-dir",
                        web.to_str().unwrap(),
                        "--sessions",
                        sessions_file.to_str().unwrap(),
                        // What a stopping node still holds after its grace is closed soon, with the
                        // status that says to try again.
                        "--drain-timeout",
                        "1s",
                    ]
                    .map(str::to_owned)
                    .to_vec()
                })
                .collect(),
            running: (0..3).map(|_| None).collect(),
            redis_url: redis.url(),
        };
        for i in 0..3 {
            edges.start(i).await;
        }
        let addrs: Vec<_> = listen.iter().map(|addr| addr.parse().unwrap()).collect();
        let balancer = Balancer::start(&addrs).await.unwrap();
        Some(Stack {
            edges,
            balancer,
            _broker: broker,
            typed,
            record,
            redis,
            _guacd: guacd,
            _xterm: xterm,
            _xvnc: xvnc,
            _dir: dir,
        })
    }

    fn page(&self, name: &str, token: &str, transport: &str) -> Value {
        let url = self
            .balancer
            .url(&format!("/?token={token}&transport={transport}"));
        json!({ "name": name, "url": url })
    }
}

#[tokio::test]
async fn every_session_comes_back_by_itself_through_a_rolling_restart_and_a_kill() {
    // Twelve pages, three of each kind: two share a session, the third has an exclusive one of its own (a
    // reconnect must not be refused, nor taken over, because of its own previous tunnel); one of the
    // chained pages is a read-only view, which must stay one.
    let kinds = [
        ("novnc", "x", "chained"),
        ("ws", "g", "websocket"),
        ("http", "g", "http"),
        ("chained", "g", "chained"),
    ];
    let mut sessions = String::from(
        "x: {vnc} tenant=acme\ng: guacd://{guacd}/vnc?hostname=desk-1 tenant=acme\n\
         view: guacd://{guacd}/vnc?hostname=desk-1 tenant=acme read_only\n",
    );
    for (kind, token, _) in kinds {
        let target = if token == "x" {
            "{vnc}"
        } else {
            "guacd://{guacd}/vnc?hostname=desk-1"
        };
        sessions.push_str(&format!("{kind}-x: {target} tenant=acme exclusive\n"));
    }
    let Some(mut stack) = Stack::start(&sessions).await else {
        return;
    };
    let (typed, record) = (stack.typed.clone(), stack.record.clone());
    let page = |name: &str, token: &str, transport: &str| stack.page(name, token, transport);
    let pages: Vec<Value> = kinds
        .iter()
        .flat_map(|(kind, token, transport)| {
            (1..=3).map(move |n| {
                let token = match (*kind, n) {
                    (_, 3) => format!("{kind}-x"),
                    ("chained", 2) => "view".to_owned(),
                    _ => (*token).to_owned(),
                };
                page(&format!("{kind}-{n}"), &token, transport)
            })
        })
        .collect();
    let pages = Value::Array(pages);
    let (mut sessions, ready) = Sessions::open(pages).await.unwrap();
    assert_all_open(ready["pages"].as_array().unwrap(), "opening");
    sessions.type_into("novnc-1", "before").await.unwrap();
    sessions.type_into("ws-1", "b").await.unwrap();

    // A rolling update: each edge in turn told to stop, and started again once it has.
    for i in 0..3 {
        let mut edge = stack.edges.running[i].take().unwrap();
        let stopped = edge.process.stop().await.unwrap();
        assert!(stopped.success(), "edge {i} stopped cleanly: {stopped:?}");
        stack.edges.start(i).await;
        let pages = all_open(&mut sessions, Duration::from_secs(30)).await;
        assert_all_open(&pages, &format!("edge {i}'s restart"));
    }
    let rolled = sessions.report().await.unwrap();
    let (p50, max) = p50_and_max(pauses(&rolled));
    eprintln!(
        "measured: rolling restart of 3 edges under {} sessions: {} reconnects, pause p50 {p50} ms, max {max} ms",
        rolled.len(),
        pauses(&rolled).len()
    );

    // A node lost outright.
    stack.edges.running[1].take().unwrap().process.kill().await;
    stack.edges.start(1).await;
    let killed = all_open(&mut sessions, Duration::from_secs(30)).await;
    assert_all_open(&killed, "edge 2's kill");
    // Each page's pauses since the rolling restart's.
    let after_kill: Vec<u64> = killed
        .iter()
        .zip(&rolled)
        .flat_map(|(now, then)| {
            let seen = then["pauses"].as_array().map_or(0, Vec::len);
            let all = now["pauses"].as_array().cloned().unwrap_or_default();
            all.into_iter()
                .skip(seen)
                .filter_map(|pause| pause.as_u64())
        })
        .collect();
    let (p50, max) = p50_and_max(after_kill.clone());
    eprintln!(
        "measured: an edge killed under {} sessions: {} reconnects, pause p50 {p50} ms, max {max} ms",
        killed.len(),
        after_kill.len()
    );

    // The desktops kept their state: the xterm's line holds what was typed before and after.
    // The view first: by the time the others' keys are in, its key would be too, were it let through.
    sessions.type_into("chained-2", "v").await.unwrap();
    sessions.type_into("novnc-2", " after\n").await.unwrap();
    sessions.type_into("ws-2", "a").await.unwrap();
    let mut line = String::new();
    for _ in 0..50 {
        line = std::fs::read_to_string(&typed).unwrap_or_default();
        if !line.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        line, "before after",
        "the xterm kept what was typed before the restarts"
    );
    let keys = std::fs::read_to_string(&record).unwrap_or_default();
    let pressed =
        |keysym: u32| keys.contains(&format!("3.key,{}.{keysym},1.1;", keysym.to_string().len()));
    assert!(
        pressed(u32::from(b'b')) && pressed(u32::from(b'a')),
        "guacd heard keys before and after"
    );
    assert!(
        !pressed(u32::from(b'v')),
        "the read-only view stayed read-only through its reconnects"
    );
    // At the tenant's exact limit, no reconnect met the limit: a reconnect takes the slot of the tunnel
    // it names as its previous one (the Guacamole pages do), then of any of the tenant's tunnels that died
    // with their node, or of its exclusive session's older tunnel, in one step (never two the same one).
    // (What each page retried on, since it opened.)
    let limited: Vec<_> = killed
        .iter()
        .filter(|page| {
            let retried = page["retried"].as_array().cloned().unwrap_or_default();
            retried.iter().any(|status| status == 797 || status == 4429)
        })
        .map(|page| page["name"].clone())
        .collect();
    assert!(
        limited.is_empty(),
        "pages refused by their tenant's limit: {limited:?}"
    );
    sessions.quit().await;
}

#[tokio::test]
async fn a_revoked_session_and_an_idle_one_do_not_reconnect_and_the_page_says_why() {
    let sessions = "idle-vnc: {vnc} idle_timeout=10s\n\
                    idle-g: guacd://{guacd}/vnc?hostname=desk-1 idle_timeout=10s\n\
                    gone-vnc: {vnc}\n\
                    gone-g: guacd://{guacd}/vnc?hostname=desk-1\n";
    let Some(stack) = Stack::start(sessions).await else {
        return;
    };
    let pages = json!([
        stack.page("idle-vnc", "idle-vnc", "chained"),
        stack.page("idle-g", "idle-g", "websocket"),
        stack.page("gone-vnc", "gone-vnc", "chained"),
        stack.page("gone-g", "gone-g", "http"),
    ]);
    let (mut sessions, ready) = Sessions::open(pages).await.unwrap();
    assert_all_open(ready["pages"].as_array().unwrap(), "opening");

    // The two sessions of the operator's file are revoked as the control plane does it: the record goes,
    // and every node is told to close their tunnels.
    let registry = RedisRegistry::connect(&stack.redis.url()).await.unwrap();
    for token in ["gone-vnc", "gone-g"] {
        let digest = SessionToken::new(token).digest().to_hex();
        let session = SessionId::new(format!("file-{}", &digest[..16]));
        assert!(registry.revoke(&session).await.unwrap(), "{token} revoked");
        let closed = ControlEvent::SessionClosed {
            session,
            until_ms: None,
        };
        registry.publish(&closed).await.unwrap();
    }
    // The idle ones send nothing a person would: their timeout runs out.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let pages = sessions.report().await.unwrap();
    let said = |name: &str| {
        let page = pages.iter().find(|page| page["name"] == name).unwrap();
        assert_eq!(page["state"], "error", "{name} stopped: {page}");
        assert_eq!(page["reconnects"], 0, "{name} did not reconnect: {page}");
        page["status"].as_str().unwrap().to_owned()
    };
    assert_eq!(said("idle-vnc"), "Closed after 10 seconds without input.");
    assert_eq!(said("idle-g"), "Closed after 10 seconds without input.");
    assert_eq!(said("gone-vnc"), "The session was closed.");
    assert_eq!(said("gone-g"), "The session was closed.");
    sessions.quit().await;
}
