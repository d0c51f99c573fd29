//! The backend's story: create a session, a browser connects on any node, the backend sees where, then
//! kills it and it closes everywhere.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use deskbroker_tests::Edge;
use deskbroker_tests::clients::{HttpTunnel, STEP, close_frame, connect_data, ws_connect};
use deskbroker_tests::proxy::Proxy;

use crate::{ACME, ADMIN, LOOPBACK_ALLOWED, Platform, SECRET};

#[tokio::test]
async fn create_connect_anywhere_list_and_kill_everywhere() {
    let platform = Platform::start().await;
    let vnc = platform
        .session(
            ACME,
            json!({"target": platform.vnc_target(), "lifetime": "10m"}),
        )
        .await;
    let token = vnc["token"].as_str().unwrap();
    let id = vnc["id"].as_str().unwrap();
    assert_eq!(
        vnc["urls"]["websockify"],
        format!("/websockify?token={token}")
    );
    assert!(!vnc.to_string().contains("hunter2"));

    // A browser opens the relay on node 2.
    let (mut relay, _) = ws_connect(
        &format!(
            "{}{}",
            platform.ws(1),
            vnc["urls"]["websockify"].as_str().unwrap()
        ),
        &[],
    )
    .await
    .unwrap();
    relay.send(Message::binary(b"ping".to_vec())).await.unwrap();
    let echoed = tokio::time::timeout(STEP, relay.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), b"ping");

    // A guacd session, opened over HTTP on node 1 and read through node 3.
    let desk = platform
        .session(ACME, json!({"target": platform.guacd_target()}))
        .await;
    let desk_token = desk["token"].as_str().unwrap();
    let tunnel = HttpTunnel::connect(&platform.http_url(0), &connect_data(desk_token))
        .await
        .unwrap();
    let mut reads = tunnel.read(vec![platform.http_url(2)]);
    let connect = reads.echo_of("connect").await;
    assert!(
        connect.contains(&"hunter2".to_owned()),
        "the stored password reached guacd"
    );

    // The backend sees both, on the nodes that own them.
    let (status, listed) = platform.api("GET", "/api/v1/sessions", ACME, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let (_, seen) = platform
        .api("GET", &format!("/api/v1/sessions/{id}"), ACME, None)
        .await;
    assert_eq!(seen["tunnels"][0]["node"], "edge-2", "{seen}");
    assert_eq!(seen["tunnels"][0]["kind"], "websockify");
    assert_eq!(
        seen["tunnels"][0]["bytes_in"], 4,
        "the owner counts what it relayed: {seen}"
    );
    assert_eq!(seen["tunnels"][0]["bytes_out"], 4);
    assert!(
        seen.get("token").is_none(),
        "the token is shown only at creation"
    );
    let (_, nodes) = platform.api("GET", "/api/v1/nodes", ADMIN, None).await;
    assert_eq!(nodes.as_array().unwrap().len(), 3);
    assert_eq!(
        nodes[0]["tunnels"].as_array().unwrap().len(),
        1,
        "edge-1 owns the HTTP tunnel: {nodes}"
    );

    // Kill both: they close wherever they are, and their tokens stop working.
    let started = Instant::now();
    let (status, _) = platform
        .api("DELETE", &format!("/api/v1/sessions/{id}"), ACME, None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        close_frame(&mut relay).await.unwrap(),
        (4410, "session closed".into())
    );
    eprintln!(
        "measured: relay on another node closed {:?} after DELETE",
        started.elapsed()
    );
    let desk_id = desk["id"].as_str().unwrap();
    assert_eq!(
        platform
            .api("DELETE", &format!("/api/v1/sessions/{desk_id}"), ACME, None)
            .await
            .0,
        204
    );
    let (seen, _) = reads.end().await;
    let error = seen
        .iter()
        .find(|i| i.opcode == "error")
        .expect("the reader is told why");
    assert_eq!(error.args[1], "523", "SESSION_CLOSED");

    let (mut again, _) = ws_connect(&format!("{}/websockify?token={token}", platform.ws(0)), &[])
        .await
        .unwrap();
    assert_eq!(
        close_frame(&mut again).await.unwrap().0,
        4403,
        "a revoked token is refused"
    );
    assert_eq!(
        platform
            .api("GET", &format!("/api/v1/sessions/{id}"), ACME, None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn sessions_expire() {
    let platform = Platform::start().await;
    let short = platform
        .session(
            ACME,
            json!({"target": platform.vnc_target(), "lifetime": "1s"}),
        )
        .await;
    let url = format!(
        "{}/websockify?token={}",
        platform.ws(0),
        short["token"].as_str().unwrap()
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (mut socket, _) = ws_connect(&url, &[]).await.unwrap();
    assert_eq!(close_frame(&mut socket).await.unwrap().0, 4403);
    // Lifetimes are capped by the tenant's limit.
    let long = platform
        .session(
            ACME,
            json!({"target": platform.vnc_target(), "lifetime": "100h"}),
        )
        .await;
    let expires = humantime::parse_rfc3339(long["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires < std::time::SystemTime::now() + Duration::from_secs(3601));
}

#[tokio::test]
async fn a_node_cut_off_from_redis_closes_what_was_revoked_meanwhile() {
    let platform = Platform::start().await;
    // A fourth node reaches Redis through a link the test can cut.
    let link = Proxy::start(([127, 0, 0, 1], platform.redis.port).into())
        .await
        .unwrap();
    let url = format!("redis://{}", link.addr);
    let edge = Edge::start_node("edge-cut-off", &url, SECRET, &[], &LOOPBACK_ALLOWED)
        .await
        .unwrap();
    let vnc = platform
        .session(ACME, json!({"target": platform.vnc_target()}))
        .await;
    let path = format!("/websockify?token={}", vnc["token"].as_str().unwrap());
    let (mut relay, _) = ws_connect(&edge.ws_url(&path), &[]).await.unwrap();
    let mut echo = async |bytes: &[u8]| {
        relay.send(Message::binary(bytes.to_vec())).await.unwrap();
        let echoed = tokio::time::timeout(STEP, relay.next()).await.unwrap();
        assert_eq!(echoed.unwrap().unwrap().into_data().as_ref(), bytes);
    };
    echo(b"before").await;

    // The session is killed while the node cannot hear the control channel: its relay runs on.
    link.cut();
    let id = vnc["id"].as_str().unwrap();
    let (status, _) = platform
        .api("DELETE", &format!("/api/v1/sessions/{id}"), ACME, None)
        .await;
    assert_eq!(status, 204);
    echo(b"meanwhile").await;

    // Back in touch, the node asks what was revoked while it was away, and closes the relay.
    link.heal();
    assert_eq!(
        close_frame(&mut relay).await.unwrap(),
        (4410, "session closed".into())
    );
}
