//! The live view with a node that hangs: the session list still answers at once, with the hung node's
//! tunnels marked unknown and every other node's tunnels with their byte counts.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use deskbroker_tests::Edge;
use deskbroker_tests::clients::{STEP, Ws, ws_connect};

use crate::{ADMIN, LOOPBACK_ALLOWED, Platform, SECRET};

const KEY: &str = "initech-key-0123456789";

/// Opens the relay at `url` and has one 4-byte message echoed, so the tunnel has counts on both sides.
async fn open_relay(url: String) -> Ws {
    let (mut socket, _) = ws_connect(&url, &[]).await.unwrap();
    socket
        .send(Message::binary(b"ping".to_vec()))
        .await
        .unwrap();
    match tokio::time::timeout(STEP, socket.next()).await.unwrap() {
        Some(Ok(Message::Binary(echo))) => assert_eq!(echo.as_ref(), b"ping"),
        other => panic!("no echo: {other:?}"),
    }
    socket
}

#[tokio::test]
async fn a_hung_node_does_not_stall_the_session_list() {
    let platform = Platform::start().await;
    // A node with a long lease: frozen, it still looks alive to the cluster for the whole test, as a hung
    // node does until its lease runs out.
    let mut env = LOOPBACK_ALLOWED.to_vec();
    env.push(("DESKBROKER_LEASE", "60s"));
    let hung = Edge::start_node("edge-hung", &platform.redis.url(), SECRET, &[], &env)
        .await
        .unwrap();
    let tenant = json!({
        "key": KEY,
        "policy": {"hosts": ["127.0.0.1"], "ports": ["1-65535"], "kinds": ["vnc"]},
        "limits": {"max_tunnels": 64},
    });
    let (status, answer) = platform
        .api("PUT", "/api/v1/tenants/initech", ADMIN, Some(tenant))
        .await;
    assert_eq!(status, 200, "{answer}");
    let session = platform
        .session(KEY, json!({"target": platform.vnc_target()}))
        .await;
    let path = session["urls"]["websockify"].as_str().unwrap().to_owned();

    // Forty tunnels on the node that will hang, two on a healthy one.
    let on_hung = (0..40).map(|_| open_relay(hung.ws_url(&path)));
    let on_hung = futures_util::future::join_all(on_hung).await;
    let on_live = [
        open_relay(platform.edges[0].ws_url(&path)).await,
        open_relay(platform.edges[0].ws_url(&path)).await,
    ];

    hung.process.freeze().await.unwrap();
    let started = Instant::now();
    let (status, listed) = platform.api("GET", "/api/v1/sessions", KEY, None).await;
    let took = started.elapsed();
    hung.process.thaw().await.unwrap();

    assert_eq!(status, 200, "{listed}");
    let bound = Duration::from_secs(5);
    assert!(
        took < bound,
        "the list answered in {took:?}, not within {bound:?}: the hung node was waited for"
    );
    let tunnels = listed[0]["tunnels"].as_array().unwrap();
    let of = |node: &str| -> Vec<&Value> { tunnels.iter().filter(|t| t["node"] == node).collect() };
    let (hung_tunnels, live_tunnels) = (of("edge-hung"), of("edge-1"));
    assert_eq!(
        (hung_tunnels.len(), live_tunnels.len()),
        (on_hung.len(), on_live.len()),
        "{listed}"
    );
    for tunnel in hung_tunnels {
        assert_eq!(tunnel["traffic"], "unknown", "{tunnel}");
        assert_eq!(
            (&tunnel["bytes_in"], &tunnel["bytes_out"]),
            (&Value::Null, &Value::Null),
            "{tunnel}"
        );
    }
    for tunnel in live_tunnels {
        assert_eq!(tunnel["traffic"], "counted", "{tunnel}");
        assert_eq!(
            (&tunnel["bytes_in"], &tunnel["bytes_out"]),
            (&json!(4), &json!(4)),
            "{tunnel}"
        );
    }
}
