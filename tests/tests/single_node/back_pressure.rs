//! A browser that stops reading: the node's memory stays flat (guacd is held back through TCP instead), and
//! other tunnels on the node are served as before. A client that floods WebSocket pings is cut off.

use std::time::Duration;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{GuacWs, HttpTunnel, close_frame, connect_data, ws_connect};
use deskbroker_tests::raw_ws::RawWs;
use deskbroker_tests::upstreams::{Echo, rss_kib};

use crate::{Node, guacd_node};

/// The largest flood the test guacd sends: 1 GiB, far more than any buffer may hold.
fn flood() -> Instruction {
    Instruction::new("x-flood", ["131072", "8000", "3"])
}

/// Samples the edge's memory for a while after a stalled reader started a flood; returns the peak growth.
async fn growth_while_stalled(node: &Node, baseline: u64) -> u64 {
    let mut peak = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(rss_kib(node.edge.process.pid()).saturating_sub(baseline));
    }
    peak
}

/// Another tunnel on the same node still gets its writes echoed promptly.
async fn still_served(node: &Node) {
    let mut other = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    for i in 0..50 {
        let key = Instruction::new("key", [i.to_string(), "1".into()]);
        other.send(&key).await.unwrap();
        loop {
            let echo = other.until("echo").await.unwrap();
            if echo.args[0] == "key" {
                assert_eq!(echo.args[1], i.to_string());
                break;
            }
        }
    }
}

#[tokio::test]
async fn a_stalled_websocket_reader_holds_bounded_memory() {
    let (_guacd, node) = guacd_node(&[], &[]).await;
    let baseline = rss_kib(node.edge.process.pid());
    let mut stalled = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    stalled.send(&flood()).await.unwrap();
    // From here on the browser reads nothing.
    let growth = growth_while_stalled(&node, baseline).await;
    assert!(growth < 32 * 1024, "edge memory grew by {growth} KiB");
    still_served(&node).await;
}

#[tokio::test]
async fn a_stalled_http_reader_holds_bounded_memory() {
    let (_guacd, node) = guacd_node(&[], &[]).await;
    let baseline = rss_kib(node.edge.process.pid());
    let stalled = HttpTunnel::connect(&node.http(), &connect_data("g"))
        .await
        .unwrap();
    stalled.write(flood().encode()).await.unwrap();
    // No read request ever comes; writes keep the tunnel alive.
    let keep_alive = async {
        for _ in 0..5 {
            stalled.write("3.nop;").await.unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    };
    let (growth, ()) = tokio::join!(growth_while_stalled(&node, baseline), keep_alive);
    assert!(growth < 32 * 1024, "edge memory grew by {growth} KiB");
    still_served(&node).await;
}

/// What a flood of WebSocket pings that never reads the pongs costs the edge, on `path`: the peak memory
/// growth, and whether the edge ended the connection before the whole flood was written.
async fn ping_flood(node: &Node, path: &str, protocol: &str) -> (u64, bool) {
    let pid = node.edge.process.pid();
    let baseline = rss_kib(pid);
    let mut flooder = RawWs::connect(node.edge.addr, path, protocol)
        .await
        .unwrap();
    let total = 256 << 20;
    let sampling = async {
        let mut peak = 0;
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            peak = peak.max(rss_kib(pid).saturating_sub(baseline));
        }
        peak
    };
    let (written, peak) = tokio::join!(flooder.ping_flood(total), sampling);
    (peak, written < total)
}

#[tokio::test]
async fn a_ping_flood_that_reads_nothing_is_cut_off_with_bounded_memory() {
    let echo = Echo::start().await.unwrap();
    let (_guacd, node) = guacd_node(&[], &[]).await;
    let sessions = format!("e: {}\ng: guacd://{}/vnc\n", echo.addr, _guacd.addr);
    let relay_node = Node::start(&sessions, &[]).await;
    for (node, path, protocol) in [
        (&relay_node, "/websockify?token=e", "binary"),
        (&node, "/websocket-tunnel?token=g", "guacamole"),
    ] {
        let (growth, cut_off) = ping_flood(node, path, protocol).await;
        assert!(
            growth < 32 * 1024,
            "{path}: edge memory grew by {growth} KiB"
        );
        assert!(cut_off, "{path}: the edge took the whole flood");
    }
    still_served(&node).await;
}

#[tokio::test]
async fn a_client_sending_pings_faster_than_allowed_is_closed_with_a_status() {
    let echo = Echo::start().await.unwrap();
    let (guacd, _) = guacd_node(&[], &[]).await;
    let sessions = format!("e: {}\ng: guacd://{}/vnc\n", echo.addr, guacd.addr);
    let node = Node::start(&sessions, &[]).await;
    let cases = [
        (
            "/websockify?token=e",
            "binary",
            (1008, "too many control frames"),
        ),
        ("/websocket-tunnel?token=g", "guacamole", (1009, "781")),
    ];
    for (path, protocol, expected) in cases {
        let (mut socket, _) = ws_connect(&format!("{}{path}", node.ws()), &[protocol])
            .await
            .unwrap();
        for _ in 0..100 {
            if socket.send(Message::Ping(vec![1; 8].into())).await.is_err() {
                break;
            }
        }
        let (code, reason) = close_frame(&mut socket).await.unwrap();
        assert_eq!((code, reason.as_str()), expected, "{path}");
    }
}
