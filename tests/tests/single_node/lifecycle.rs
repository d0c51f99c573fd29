//! Stopping a node: tunnels get the drain timeout to end by themselves, then are closed with a status the
//! browser understands, and the process exits cleanly.

use std::time::Duration;

use deskbroker_tests::clients::{GuacWs, close_frame, connect_data, ws_connect};
use deskbroker_tests::platform::eventually;
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

/// The probes on the ops listener: ready while the node serves; from the moment it is told to stop, not
/// ready (503 `draining`) while its tunnels drain, so that load balancers and Kubernetes take it out of
/// rotation; alive throughout.
#[tokio::test]
async fn the_ops_listener_says_not_ready_from_the_moment_a_node_drains() {
    let echo = Echo::start().await.unwrap();
    let sessions = format!("e: {}\n", echo.addr);
    let args = ["--drain-timeout", "5s", "--ops-listen", "127.0.0.1:0"];
    let mut node = crate::Node::start(&sessions, &args).await;
    let ops = node.edge.ops_addr();
    let probe = |base: String, path: &'static str| async move {
        let answer = reqwest::get(format!("{base}{path}")).await.ok()?;
        Some((answer.status().as_u16(), answer.text().await.ok()?))
    };
    let ops = format!("http://{ops}");
    let ready = Some((200, "ready".to_owned()));
    assert_eq!(probe(ops.clone(), "/readyz").await, ready);
    assert_eq!(
        probe(ops.clone(), "/healthz").await,
        Some((200, "ok".into()))
    );
    assert_eq!(
        probe(node.http(), "/readyz").await,
        ready,
        "the public port too"
    );

    // A tunnel open keeps the node draining.
    let (relay, _) = ws_connect(&format!("{}/websockify?token=e", node.ws()), &[])
        .await
        .unwrap();
    let pid = node.edge.process.pid().to_string();
    let signalled = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(signalled.await.unwrap().success());
    let draining =
        || async { probe(ops.clone(), "/readyz").await == Some((503, "draining".to_owned())) };
    eventually(Duration::from_secs(5), "/readyz says draining", draining).await;
    assert_eq!(
        probe(ops.clone(), "/healthz").await,
        Some((200, "ok".into())),
        "alive while draining"
    );
    drop(relay);
    let status = node.edge.process.terminate().await.unwrap();
    assert!(status.success(), "clean exit: {status:?}");
}
