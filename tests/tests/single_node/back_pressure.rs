//! A browser that stops reading: the node's memory stays flat (guacd is held back through TCP instead), and
//! other tunnels on the node are served as before.

use std::time::Duration;

use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{GuacWs, HttpTunnel, connect_data};
use deskbroker_tests::upstreams::rss_kib;

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
