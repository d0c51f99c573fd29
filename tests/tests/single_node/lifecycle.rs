//! Stopping a node: tunnels get the drain timeout to end by themselves, then are closed with a status the
//! browser understands, and the process exits cleanly.

use deskbroker_tests::clients::{GuacWs, close_frame, connect_data, ws_connect};
use deskbroker_tests::upstreams::Echo;

use crate::guacd_node;

#[tokio::test]
async fn sigterm_drains_then_closes_tunnels_with_a_status() {
    let echo = Echo::start().await.unwrap();
    let (guacd, _) = guacd_node(&[], &[]).await;
    let sessions = format!("e: {}\ng: guacd://{}/vnc\n", echo.addr, guacd.addr);
    let mut node = crate::Node::start(&sessions, &["--drain-timeout", "1s"]).await;
    let (mut relay, _) = ws_connect(&format!("{}/websockify?token=e", node.ws()), &[])
        .await
        .unwrap();
    let mut tunnel = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();

    let stopping = tokio::spawn(async move {
        let status = node.edge.process.terminate().await.unwrap();
        (status, node)
    });
    assert_eq!(
        close_frame(&mut relay).await.unwrap().0,
        4503,
        "the relay says: try again"
    );
    assert_eq!(
        close_frame(&mut tunnel.socket).await.unwrap(),
        (1011, "520".into())
    );
    let (status, _node) = stopping.await.unwrap();
    assert!(status.success(), "clean exit: {status:?}");
}
