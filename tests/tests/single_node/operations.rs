//! What an operator sees and what ends a forgotten tunnel: the metrics a scrape of the ops listener shows for
//! a tunnel (opened, its bytes, why it closed), the audit events of its opening and closing, the idle
//! timeout on a person's input (screen updates and the client's own messages do not count), and the
//! liveness deadline of a browser that stops answering pings.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{
    GuacWs, HttpTunnel, STEP, Ws, close_frame, connect_data, ws_connect,
};
use deskbroker_tests::upstreams::Echo;
use deskbroker_tests::{Edge, TestGuacd, Xvnc};

use crate::Node;
use crate::websockify::wait_for;

/// The text of a scrape of the ops listener at `ops`.
async fn scrape(ops: &str) -> String {
    let response = reqwest::get(format!("http://{ops}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// The value of the sample `series` (name and labels, as written) in a scrape, if it is there.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
}

/// The JSON log events of `edge` with the field `event` equal to `name`.
fn events(edge: &Edge, name: &str) -> Vec<Value> {
    edge.process
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["event"] == name)
        .collect()
}

#[tokio::test]
async fn a_scrape_shows_a_tunnel_opened_its_bytes_and_why_it_closed() {
    let echo = Echo::start().await.unwrap();
    let sessions = format!("relay: {}\n", echo.addr);
    let node = Node::start(&sessions, &["--ops-listen", "127.0.0.1:0"]).await;
    let ops = node.edge.ops_addr().to_string();

    // A relay moves a checksummed megabyte each way, and is scraped while it is open.
    let url = format!("{}/websockify?token=relay", node.ws());
    let (mut socket, _) = ws_connect(&url, &["binary"]).await.unwrap();
    let payload: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    socket.send(Message::binary(payload.clone())).await.unwrap();
    let mut echoed = BytesMut::new();
    while echoed.len() < payload.len() {
        match timeout(STEP, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Binary(bytes) => echoed.extend_from_slice(&bytes),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(Sha256::digest(&echoed), Sha256::digest(&payload));
    let open = scrape(&ops).await;
    assert_eq!(
        sample(&open, r#"deskbroker_tunnels_open{kind="websockify"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &open,
            r#"deskbroker_tunnels_opened_total{kind="websockify"}"#
        ),
        Some(1.0)
    );
    let from_browser =
        r#"deskbroker_tunnel_bytes_total{kind="websockify",direction="from_browser"}"#;
    let to_browser = r#"deskbroker_tunnel_bytes_total{kind="websockify",direction="to_browser"}"#;
    assert_eq!(
        sample(&open, from_browser),
        Some(payload.len() as f64),
        "counted live"
    );

    // The browser closes it; a bad token is refused.
    socket.close(None).await.unwrap();
    wait_for(
        || echo.closed.load(Ordering::SeqCst) == 1,
        "the upstream closes",
    )
    .await;
    let (mut refused, _) = ws_connect(&format!("{}/websockify?token=nope", node.ws()), &["binary"])
        .await
        .unwrap();
    assert_eq!(close_frame(&mut refused).await.unwrap().0, 4403);
    let closed = r#"deskbroker_tunnels_closed_total{kind="websockify",reason="normal"}"#;
    let mut after = String::new();
    for _ in 0..100 {
        after = scrape(&ops).await;
        if sample(&after, closed) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sample(&after, closed), Some(1.0), "{after}");
    assert_eq!(
        sample(&after, r#"deskbroker_tunnels_open{kind="websockify"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(&after, from_browser),
        Some(payload.len() as f64),
        "kept after the close"
    );
    assert_eq!(sample(&after, to_browser), Some(payload.len() as f64));
    let refusal = r#"deskbroker_tunnels_refused_total{kind="websockify",reason="bad_token"}"#;
    assert_eq!(sample(&after, refusal), Some(1.0));
    assert!(
        sample(
            &after,
            r#"deskbroker_tunnel_duration_seconds_count{kind="websockify"}"#
        ) == Some(1.0)
    );
    let draining = after
        .lines()
        .find(|line| line.starts_with("deskbroker_draining{"));
    assert!(
        draining.is_some_and(|line| line.ends_with(" 0")),
        "{draining:?}"
    );
    assert!(after.contains("process_resident_memory_bytes "), "{after}");
    assert!(after.contains("process_open_fds "));

    // Metrics are the ops listener's only: the browser listener has none.
    let public = reqwest::get(node.edge.http_url("/metrics")).await.unwrap();
    assert_eq!(public.status(), 404);

    // Who, what, how long, why it ended: one audit event for the opening, one for the closing.
    let opened = events(&node.edge, "tunnel_opened");
    let closed = events(&node.edge, "tunnel_closed");
    assert_eq!(
        (opened.len(), closed.len()),
        (1, 1),
        "{opened:?} {closed:?}"
    );
    let (opened, closed) = (&opened[0], &closed[0]);
    assert_eq!(opened["kind"], "websockify");
    assert_eq!(opened["client"], "127.0.0.1");
    assert_eq!(opened["tunnel"], closed["tunnel"]);
    assert_eq!(opened["session"], closed["session"]);
    assert_eq!(closed["from_browser_bytes"], payload.len());
    assert_eq!(closed["to_browser_bytes"], payload.len());
    assert_eq!(closed["reason"], "normal");
    assert_eq!(closed["status"], 1000);
    assert!(closed["duration_ms"].as_u64().is_some());
}

/// Opens a relay to Xvnc with `token` and runs the RFB handshake (security None), leaving the server's
/// first update unread.
async fn rfb_viewer(node: &Node, token: &str) -> Ws {
    let url = format!("{}/websockify?token={token}", node.ws());
    let (mut socket, _) = ws_connect(&url, &["binary"]).await.unwrap();
    let mut pending = BytesMut::new();
    let mut read = async |socket: &mut Ws, n: usize| {
        while pending.len() < n {
            match timeout(STEP, socket.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                Message::Binary(bytes) => pending.extend_from_slice(&bytes),
                other => panic!("unexpected {other:?}"),
            }
        }
        pending.split_to(n).to_vec()
    };
    assert_eq!(read(&mut socket, 12).await, b"RFB 003.008\n");
    socket
        .send(Message::binary(b"RFB 003.008\n".to_vec()))
        .await
        .unwrap();
    let count = read(&mut socket, 1).await[0] as usize;
    assert!(read(&mut socket, count).await.contains(&1), "security None");
    socket.send(Message::binary(vec![1])).await.unwrap();
    assert_eq!(read(&mut socket, 4).await, [0, 0, 0, 0]);
    socket.send(Message::binary(vec![1])).await.unwrap(); // ClientInit, shared
    socket
}

/// Runs a viewer for `period`: every 200 ms it asks for an incremental update, as noVNC does, and reads
/// what the server sent; when `types`, every second it also presses and releases Shift. Returns how the
/// relay closed, if it did.
async fn watch(socket: &mut Ws, period: Duration, types: bool) -> Option<(u16, String)> {
    let request = Message::binary(vec![3, 1, 0, 0, 0, 0, 0, 16, 0, 16]);
    let shift = |down: u8| Message::binary(vec![4, down, 0, 0, 0, 0, 0xff, 0xe1]);
    let mut updates = tokio::time::interval(Duration::from_millis(200));
    let mut keys = tokio::time::interval(Duration::from_secs(1));
    let until = Instant::now() + period;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return None,
            message = socket.next() => match message {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Some((frame.code.into(), frame.reason.to_string()));
                }
                Some(Ok(_)) => {}
                other => panic!("the relay ended without a close frame: {other:?}"),
            },
            _ = updates.tick() => drop(socket.send(request.clone()).await),
            _ = keys.tick(), if types => {
                socket.send(shift(1)).await.unwrap();
                socket.send(shift(0)).await.unwrap();
            }
        }
    }
}

/// Runs a Guacamole client for `period` that acknowledges frames (`sync`), pings and resizes, as
/// guacamole-common-js does by itself; when `types`, it also presses a key every second. Returns the
/// close status, if the tunnel closed.
async fn guac_client(tunnel: &mut GuacWs, period: Duration, types: bool) -> Option<String> {
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    let mut keys = tokio::time::interval(Duration::from_secs(1));
    let until = Instant::now() + period;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return None,
            message = tunnel.socket.next() => match message {
                Some(Ok(Message::Close(Some(frame)))) => return Some(frame.reason.to_string()),
                Some(Ok(_)) => {}
                other => panic!("the tunnel ended without a close frame: {other:?}"),
            },
            _ = ticks.tick() => {
                for instruction in [
                    Instruction::new("", ["ping", "1700000000123"]),
                    Instruction::new("sync", ["1700000000123"]),
                    Instruction::new("nop", Vec::<String>::new()),
                    Instruction::new("size", ["1024", "768"]),
                ] {
                    drop(tunnel.send(&instruction).await);
                }
            }
            _ = keys.tick(), if types => {
                tunnel.send(&Instruction::new("key", ["65", "1"])).await.unwrap();
                tunnel.send(&Instruction::new("key", ["65", "0"])).await.unwrap();
            }
        }
    }
}

#[tokio::test]
async fn the_idle_timeout_ends_a_session_that_only_watches_and_keeps_one_whose_user_types() {
    let Some(xvnc) = Xvnc::start().await.unwrap() else {
        return;
    };
    let guacd = TestGuacd::start(&[]).await.unwrap();
    let idle = Duration::from_secs(10);
    let guac = format!("guacd://{}/vnc?hostname=desk-1&port=5901", guacd.addr);
    let sessions = format!(
        "watch: {vnc} idle_timeout=10s\n\
         type: {vnc} idle_timeout=10s\n\
         g-watch: {guac} idle_timeout=10s\n\
         g-type: {guac} idle_timeout=10s\n\
         h-watch: {guac} idle_timeout=10s\n\
         free: {vnc}\n",
        vnc = xvnc.addr
    );
    let node = Node::start(&sessions, &[]).await;
    let mut watcher = rfb_viewer(&node, "watch").await;
    let mut typist = rfb_viewer(&node, "type").await;
    let mut free = rfb_viewer(&node, "free").await;
    let mut g_watcher = GuacWs::connect(&node.ws(), &connect_data("g-watch"))
        .await
        .unwrap();
    let mut g_typist = GuacWs::connect(&node.ws(), &connect_data("g-type"))
        .await
        .unwrap();
    let h_watcher = HttpTunnel::connect(&node.http(), &connect_data("h-watch"))
        .await
        .unwrap();
    let mut h_reads = h_watcher.read(vec![node.http()]);
    let opened = Instant::now();

    // The HTTP client writes a `sync` and a `nop` every 500 ms, as guacamole-common-js does; nothing else.
    let h_client = async {
        let mut ticks = tokio::time::interval(Duration::from_millis(500));
        let closed = async {
            loop {
                let instruction = h_reads.next().await;
                if instruction.opcode == "error" {
                    return instruction.args;
                }
            }
        };
        tokio::pin!(closed);
        loop {
            tokio::select! {
                args = &mut closed => return args,
                _ = ticks.tick() => drop(h_watcher.write("4.sync,13.1700000000123;3.nop;").await),
            }
        }
    };
    let period = idle + Duration::from_secs(5);
    let (watched, typed, freely, g_watched, g_typed, h_watched) = tokio::join!(
        watch(&mut watcher, period, false),
        watch(&mut typist, period, true),
        watch(&mut free, period, false),
        guac_client(&mut g_watcher, period, false),
        guac_client(&mut g_typist, period, true),
        timeout(period, h_client),
    );
    let elapsed = opened.elapsed();
    eprintln!("idle tunnels closed; {elapsed:?} after opening");
    assert_eq!(
        watched,
        Some((4408, "closed after a period without input".into()))
    );
    assert_eq!(typed, None, "a typist's session stays");
    assert_eq!(freely, None, "a session without an idle timeout stays");
    assert_eq!(g_watched.as_deref(), Some("522"), "SESSION_TIMEOUT");
    assert_eq!(g_typed, None);
    let h_watched = h_watched.expect("the HTTP tunnel ends within the period");
    assert_eq!(h_watched[1], "522");
    let closed = events(&node.edge, "tunnel_closed");
    let idled = closed.iter().filter(|e| e["reason"] == "idle_timeout");
    assert_eq!(idled.count(), 3, "{closed:?}");
    for event in &closed {
        let lived = Duration::from_millis(event["duration_ms"].as_u64().unwrap());
        assert!(
            lived >= idle - Duration::from_millis(500),
            "not before the timeout: {lived:?}"
        );
    }
}

#[tokio::test]
async fn a_browser_that_stops_answering_pings_is_closed_and_its_slot_freed() {
    // A tenant allowed two tunnels at a time, a relay and a Guacamole tunnel.
    let echo = Echo::start().await.unwrap();
    let guacd = TestGuacd::start(&[]).await.unwrap();
    let (dir, path) = crate::acme_config(2);
    let sessions = format!(
        "relay: {} tenant=acme\ng: guacd://{}/vnc?hostname=desk-1 tenant=acme\n",
        echo.addr, guacd.addr
    );
    let (_sessions_dir, sessions) = deskbroker_tests::process::session_file(&sessions).unwrap();
    let args = [
        "--sessions",
        sessions.to_str().unwrap(),
        "--config",
        path.to_str().unwrap(),
        "--ops-listen",
        "127.0.0.1:0",
        "--metrics-tenants",
        "1",
    ];
    let liveness = Duration::from_secs(3);
    let env = [("DESKBROKER_BROWSER_LIVENESS_TIMEOUT", "3s")];
    let node = Node {
        edge: Edge::start_with_env(&args, &env).await.unwrap(),
        _dir: dir,
    };
    let ops = node.edge.ops_addr().to_string();

    // A browser that answers (tungstenite answers pings while it reads) outlives the deadline.
    let url = format!("{}/websockify?token=relay", node.ws());
    let (mut live, _) = ws_connect(&url, &["binary"]).await.unwrap();
    live.send(Message::binary(vec![1])).await.unwrap();
    let mut pinged = false;
    let lived = timeout(liveness * 2, async {
        while let Some(Ok(message)) = live.next().await {
            pinged |= matches!(message, Message::Ping(_));
        }
    })
    .await;
    assert!(lived.is_err(), "an answering browser stays");
    assert!(pinged, "the edge pinged the quiet browser");
    live.close(None).await.unwrap();
    drop(live);
    wait_for(|| echo.closed.load(Ordering::SeqCst) == 1, "the relay ends").await;

    // Two browsers then vanish without a word: they neither send nor read, so they answer no ping.
    let (mut gone, _) = ws_connect(&url, &["binary"]).await.unwrap();
    gone.send(Message::binary(vec![2])).await.unwrap();
    let mut g_gone = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    g_gone.until("sync").await.unwrap();
    let vanished = Instant::now();
    wait_for(
        || echo.closed.load(Ordering::SeqCst) == 2,
        "the relay's upstream is freed",
    )
    .await;
    wait_for(
        || guacd.process.logs().contains("connection closed"),
        "the Guacamole tunnel's guacd connection is freed",
    )
    .await;
    let took = vanished.elapsed();
    eprintln!("unresponsive browsers closed {took:?} after they went quiet");
    assert!(
        took >= liveness - Duration::from_millis(500),
        "not before the deadline: {took:?}"
    );

    // Their slots are free: the tenant's two tunnels open again.
    let (mut again, _) = ws_connect(&url, &["binary"]).await.unwrap();
    again.send(Message::binary(vec![3])).await.unwrap();
    let answer = timeout(STEP, again.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(answer, Message::binary(vec![3]));
    let mut g_again = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    g_again.until("sync").await.unwrap();
    let text = scrape(&ops).await;
    let unresponsive = |kind: &str| {
        sample(
            &text,
            &format!(
                r#"deskbroker_tunnels_closed_total{{kind="{kind}",reason="browser_unresponsive"}}"#
            ),
        )
    };
    assert_eq!(unresponsive("websockify"), Some(1.0), "{text}");
    assert_eq!(unresponsive("websocket-tunnel"), Some(1.0));
    let by_tenant = r#"deskbroker_tenant_tunnels_open{tenant="acme"}"#;
    assert_eq!(
        sample(&text, by_tenant),
        Some(2.0),
        "the tenant's series, behind the flag"
    );
    drop((gone, g_gone));
}
