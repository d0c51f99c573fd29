//! `/websockify`: noVNC's relay to the demo desktop, a real Xvnc, and echo upstreams checked byte for byte.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use deskbroker_tests::Edge;
use deskbroker_tests::clients::{GuacWs, STEP, Ws, close_frame, connect_data, ws_connect};
use deskbroker_tests::upstreams::{Echo, Silent, Source, rss_kib};

use crate::Node;

/// Reads exactly `n` bytes from the binary frames of a relay.
async fn read_exact(socket: &mut Ws, pending: &mut BytesMut, n: usize) -> Vec<u8> {
    while pending.len() < n {
        let message = tokio::time::timeout(STEP, socket.next())
            .await
            .expect("data in time");
        match message.expect("socket open").expect("frame") {
            Message::Binary(bytes) => pending.extend_from_slice(&bytes),
            other => panic!("expected binary data, got {other:?}"),
        }
    }
    pending.split_to(n).to_vec()
}

/// Runs the RFB 3.8 handshake (security None) and returns (width, height, name).
async fn rfb_handshake(socket: &mut Ws) -> (u16, u16, String) {
    let mut pending = BytesMut::new();
    let banner = read_exact(socket, &mut pending, 12).await;
    assert_eq!(banner, b"RFB 003.008\n");
    socket
        .send(Message::binary(b"RFB 003.008\n".to_vec()))
        .await
        .unwrap();
    let count = read_exact(socket, &mut pending, 1).await[0] as usize;
    let types = read_exact(socket, &mut pending, count).await;
    assert!(types.contains(&1), "security None offered: {types:?}");
    socket.send(Message::binary(vec![1])).await.unwrap();
    assert_eq!(
        read_exact(socket, &mut pending, 4).await,
        [0, 0, 0, 0],
        "security result OK"
    );
    socket.send(Message::binary(vec![1])).await.unwrap(); // ClientInit, shared
    let init = read_exact(socket, &mut pending, 24).await;
    let (width, height) = (
        u16::from_be_bytes([init[0], init[1]]),
        u16::from_be_bytes([init[2], init[3]]),
    );
    let bits_per_pixel = init[4];
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    let name =
        String::from_utf8_lossy(&read_exact(socket, &mut pending, name_len).await).into_owned();
    // A full, non-incremental update in the server's own pixel format.
    let mut request = vec![3, 0, 0, 0, 0, 0];
    request.extend_from_slice(&width.to_be_bytes());
    request.extend_from_slice(&height.to_be_bytes());
    socket.send(Message::binary(request)).await.unwrap();
    let header = read_exact(socket, &mut pending, 4).await;
    assert_eq!(header[0], 0, "FramebufferUpdate");
    let rects = u16::from_be_bytes([header[2], header[3]]);
    let mut pixels = 0usize;
    for _ in 0..rects {
        let rect = read_exact(socket, &mut pending, 12).await;
        let (w, h) = (
            u16::from_be_bytes([rect[4], rect[5]]),
            u16::from_be_bytes([rect[6], rect[7]]),
        );
        let encoding = i32::from_be_bytes([rect[8], rect[9], rect[10], rect[11]]);
        assert_eq!(encoding, 0, "raw encoding");
        let bytes = usize::from(w) * usize::from(h) * usize::from(bits_per_pixel / 8);
        read_exact(socket, &mut pending, bytes).await;
        pixels += usize::from(w) * usize::from(h);
    }
    assert_eq!(
        pixels,
        usize::from(width) * usize::from(height),
        "the update covers the screen"
    );
    (width, height, name)
}

#[tokio::test]
async fn demo_desktop_answers_with_its_rfb_banner_and_frames() {
    // Configured through the environment alone, as a container would be.
    let edge = Edge::start_with_env(&[], &[("DESKBROKER_DEMO", "true")])
        .await
        .unwrap();
    let (mut socket, protocol) = ws_connect(&edge.ws_url("/websockify?token=demo"), &["binary"])
        .await
        .unwrap();
    assert_eq!(
        protocol.as_deref(),
        Some("binary"),
        "the binary subprotocol is echoed"
    );
    let (width, height, name) = rfb_handshake(&mut socket).await;
    assert!(width > 0 && height > 0);
    assert!(name.contains("deskbroker"), "{name}");
}

#[tokio::test]
async fn a_real_xvnc_desktop_works_through_the_relay() {
    let Some(xvnc) = deskbroker_tests::Xvnc::start().await.unwrap() else {
        return;
    };
    let node = Node::start(&format!("x: {}\n", xvnc.addr), &[]).await;
    // Modern noVNC offers no subprotocol at all.
    let (mut socket, protocol) = ws_connect(&format!("{}/websockify?token=x", node.ws()), &[])
        .await
        .unwrap();
    assert_eq!(protocol, None);
    let (width, height, _) = rfb_handshake(&mut socket).await;
    assert_eq!((width, height), (640, 480));
}

/// Sends `total` pseudo-random bytes through the relay to an echo server and checks they all come back,
/// in order, by hash.
async fn echo_through(socket: &mut Ws, total: usize, frame: usize) {
    let (mut sink, mut stream) = socket.split();
    let sender = async {
        let mut hash = Sha256::new();
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut sent = 0;
        while sent < total {
            let len = frame.min(total - sent);
            let chunk: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            hash.update(&chunk);
            sink.send(Message::binary(chunk)).await.unwrap();
            sent += len;
        }
        hash.finalize()
    };
    let receiver = async {
        let mut hash = Sha256::new();
        let mut received = 0;
        while received < total {
            let message = tokio::time::timeout(STEP, stream.next())
                .await
                .expect("echo in time");
            let Message::Binary(bytes) = message.unwrap().unwrap() else {
                panic!("binary frames only")
            };
            received += bytes.len();
            hash.update(&bytes);
        }
        assert_eq!(received, total);
        hash.finalize()
    };
    let (sent, received) = tokio::join!(sender, receiver);
    assert_eq!(sent, received, "bytes came back whole and in order");
}

#[tokio::test]
async fn relays_every_byte_both_ways_in_order() {
    let echo = Echo::start().await.unwrap();
    let node = Node::start(&format!("e: {}\n", echo.addr), &[]).await;
    let url = format!("{}/websockify?token=e", node.ws());
    let (mut big, _) = ws_connect(&url, &["binary"]).await.unwrap();
    let (mut small, _) = ws_connect(&url, &["binary"]).await.unwrap();
    tokio::join!(
        echo_through(&mut big, 32 << 20, 200_000),
        echo_through(&mut small, 1 << 20, 7)
    );
}

#[tokio::test]
async fn closing_either_side_closes_the_other() {
    let echo = Echo::start().await.unwrap();
    let node = Node::start(&format!("e: {}\n", echo.addr), &[]).await;
    let url = format!("{}/websockify?token=e", node.ws());

    let (mut socket, _) = ws_connect(&url, &["binary"]).await.unwrap();
    echo_through(&mut socket, 1000, 100).await;
    socket.close(None).await.unwrap();
    wait_for(
        || echo.closed.load(Ordering::SeqCst) == 1,
        "the upstream socket closes",
    )
    .await;

    // An upstream that ends its side: the browser gets a normal close.
    let quitter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = Node::start(&format!("q: {}\n", quitter.local_addr().unwrap()), &[]).await;
    let (mut socket, _) = ws_connect(&format!("{}/websockify?token=q", node.ws()), &[])
        .await
        .unwrap();
    let (stream, _) = quitter.accept().await.unwrap();
    drop(stream);
    assert_eq!(close_frame(&mut socket).await.unwrap().0, 1000);
}

/// A browser that closes gets the edge's close frame back, as RFC 6455 §5.5.1 asks and websockify does:
/// without it every browser-initiated close is seen as 1006, not clean.
#[tokio::test]
async fn a_browsers_close_is_answered_with_a_close_on_both_endpoints() {
    let echo = Echo::start().await.unwrap();
    let (_guacd, node) = crate::guacd_node(&[], &[]).await;
    let relay = Node::start(&format!("e: {}\n", echo.addr), &[]).await;

    let url = format!("{}/websockify?token=e", relay.ws());
    let (mut socket, _) = ws_connect(&url, &["binary"]).await.unwrap();
    echo_through(&mut socket, 1000, 10).await;
    let mut guac = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    for (path, socket) in [
        ("/websockify", &mut socket),
        ("/websocket-tunnel", &mut guac.socket),
    ] {
        let frame = CloseFrame {
            code: CloseCode::Away,
            reason: "page closed".into(),
        };
        socket.close(Some(frame)).await.unwrap();
        let answer = close_frame(socket).await;
        assert_eq!(answer.unwrap(), (1001, "page closed".into()), "{path}");
    }
}

#[tokio::test]
async fn refusals_are_close_codes_and_open_no_upstream_socket() {
    let echo = Echo::start().await.unwrap();
    let sessions = format!(
        "e: {addr}\nold: {addr} expires=2000-01-01T00:00:00Z\ndown: 127.0.0.1:1\ng: guacd://{addr}/vnc\n",
        addr = echo.addr
    );
    let node = Node::start(&sessions, &[]).await;
    let close = |query: &'static str| {
        let url = format!("{}/websockify{query}", node.ws());
        async move {
            let (mut socket, _) = ws_connect(&url, &["binary"])
                .await
                .expect("the upgrade is accepted");
            close_frame(&mut socket).await.unwrap()
        }
    };
    assert_eq!(close("").await, (4400, "missing token".into()));
    assert_eq!(
        close("?token=nope").await,
        (4403, "unknown or expired token".into())
    );
    assert_eq!(
        close("?token=old").await,
        (4403, "unknown or expired token".into())
    );
    assert_eq!(
        close("?token=g").await.0,
        4400,
        "a guacd session is not a VNC session"
    );
    assert_eq!(close("?token=down").await.0, 4502, "unreachable VNC server");
    assert_eq!(
        echo.accepted.load(Ordering::SeqCst),
        0,
        "no refused request reached the upstream"
    );

    // A subprotocol other than binary is refused before the upgrade, as websockify does.
    let refused = ws_connect(&format!("{}/websockify?token=e", node.ws()), &["base64"]).await;
    assert!(
        matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 400)
    );

    // Text frames are not RFB.
    let (mut socket, _) = ws_connect(&format!("{}/websockify?token=e", node.ws()), &[])
        .await
        .unwrap();
    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(close_frame(&mut socket).await.unwrap().0, 1003);
    // And the node still serves.
    let (mut socket, _) = ws_connect(&format!("{}/websockify?token=e", node.ws()), &[])
        .await
        .unwrap();
    echo_through(&mut socket, 10_000, 1000).await;
}

#[tokio::test]
async fn a_browser_that_stops_reading_holds_bounded_memory_and_slows_no_one_else() {
    let source = Source::start().await.unwrap();
    let echo = Echo::start().await.unwrap();
    let node = Node::start(&format!("s: {}\ne: {}\n", source.addr, echo.addr), &[]).await;
    let pid = node.edge.process.pid();

    // The stalled browser: it opens the tunnel and never reads.
    let (_stalled, _) = ws_connect(&format!("{}/websockify?token=s", node.ws()), &[])
        .await
        .unwrap();
    wait_for(
        || source.written.load(Ordering::SeqCst) > 0,
        "the source starts writing",
    )
    .await;
    // Wait until the source is blocked: its count stops moving.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = source.written.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    let before = rss_kib(pid);
    // The edge buffers a bounded amount: the rest waits in the kernel's socket buffers, then in the source.
    assert!(
        last < 64 << 20,
        "the stalled tunnel absorbed {last} bytes before blocking"
    );

    // Another browser on the same node is served normally meanwhile.
    let (mut other, _) = ws_connect(&format!("{}/websockify?token=e", node.ws()), &[])
        .await
        .unwrap();
    echo_through(&mut other, 16 << 20, 65536).await;
    let after = rss_kib(pid);
    assert!(
        after < before + 32 * 1024,
        "edge memory grew from {before} KiB to {after} KiB"
    );
    // Still held back: whatever moved since (a pause taken for a stall on a busy machine) stays bounded.
    let written = source.written.load(Ordering::SeqCst);
    assert!(
        written < 64 << 20,
        "the stalled tunnel kept absorbing: {written} bytes"
    );
}

/// Opens the relay with `token`, sends a byte, and says whether it was echoed (the tunnel is open) or
/// refused, with which close code.
async fn echoed(node: &Node, token: &str) -> Result<Ws, u16> {
    let url = format!("{}/websockify?token={token}", node.ws());
    let (mut socket, _) = ws_connect(&url, &["binary"]).await.unwrap();
    socket.send(Message::binary(vec![7])).await.unwrap();
    match tokio::time::timeout(STEP, socket.next())
        .await
        .expect("an answer")
    {
        Some(Ok(Message::Binary(bytes))) if bytes[..] == [7] => Ok(socket),
        Some(Ok(Message::Close(Some(frame)))) => Err(frame.code.into()),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_vnc_server_that_never_greets_closes_its_tunnel_in_time_and_frees_its_slot() {
    // A tenant allowed one tunnel at a time, with a session on a VNC server that accepts the connection
    // and never sends its greeting, and one on an echo server.
    let (silent, echo) = (Silent::start().await.unwrap(), Echo::start().await.unwrap());
    let (dir, path) = crate::acme_config(1);
    let sessions = format!(
        "hung: {} tenant=acme
echo: {} tenant=acme
",
        silent.addr, echo.addr
    );
    let (_dir, sessions) = deskbroker_tests::process::session_file(&sessions).unwrap();
    let args = [
        "--sessions",
        sessions.to_str().unwrap(),
        "--config",
        path.to_str().unwrap(),
    ];
    let greeting = Duration::from_secs(1);
    let env = [("DESKBROKER_VNC_GREETING_TIMEOUT", "1s")];
    let node = Node {
        edge: Edge::start_with_env(&args, &env).await.unwrap(),
        _dir: dir,
    };

    // The client speaks first, so that only the server's silence can end the tunnel.
    let url = format!("{}/websockify?token=hung", node.ws());
    let opened = tokio::time::Instant::now();
    let (mut hung, _) = ws_connect(&url, &["binary"]).await.unwrap();
    hung.send(Message::binary(b"RFB 003.008\n".to_vec()))
        .await
        .unwrap();
    wait_for(
        || silent.accepted.load(Ordering::SeqCst) == 1,
        "the VNC server accepts",
    )
    .await;
    assert_eq!(
        echoed(&node, "echo").await.err(),
        Some(4429),
        "the slot is held"
    );

    let closed = tokio::time::timeout(greeting + Duration::from_secs(4), close_frame(&mut hung))
        .await
        .expect("closed soon after the greeting deadline")
        .unwrap();
    assert_eq!(closed, (4504, "VNC server sent no greeting in time".into()));
    assert!(opened.elapsed() >= greeting, "not before the deadline");
    wait_for(
        || silent.closed.load(Ordering::SeqCst) == 1,
        "the upstream socket is closed",
    )
    .await;
    assert!(
        echoed(&node, "echo").await.is_ok(),
        "the slot is free again"
    );
}

pub async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    for _ in 0..400 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}
