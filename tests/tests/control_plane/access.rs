//! The access suite: the ways in that must stay shut, tried one after the other against one platform. Each
//! is refused with its documented status (docs/errors.md), opens no socket to a desktop or to guacd, and
//! leaves the node serving everyone else: a canary relay on the same node echoes after every attempt.
//!
//! Floods live beside the mechanisms they test: slowloris and idle connections in
//! `single_node/connections.rs`, ping floods in `single_node/back_pressure.rs`, a desktop name that resolves
//! to a denied address in `hostile.rs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{
    GuacWs, HttpError, HttpTunnel, STEP, Ws, close_frame, connect_data, ws_connect,
};
use deskbroker_tests::upstreams::sockets;

use crate::{ACME, GLOBEX, Platform};

/// What every refusal must leave as it was: the sockets open to the desktop and to guacd, and a canary
/// relay on the node under attack that still echoes.
struct Watch<'a> {
    platform: &'a Platform,
    canary: Ws,
    desktops: usize,
    guacd_sockets: usize,
}

impl<'a> Watch<'a> {
    async fn start(platform: &'a Platform) -> Self {
        let session = platform
            .session(ACME, json!({"target": platform.vnc_target()}))
            .await;
        let path = format!("/websockify?token={}", session["token"].as_str().unwrap());
        let (canary, _) = ws_connect(&platform.edges[0].ws_url(&path), &[])
            .await
            .unwrap();
        let mut watch = Watch {
            platform,
            canary,
            desktops: 0,
            guacd_sockets: 0,
        };
        watch.still_serving().await;
        watch.settle();
        watch
    }

    /// Takes the sockets open now as the ones that may be open.
    fn settle(&mut self) {
        self.desktops = self.platform.echo.accepted.load(Ordering::SeqCst);
        self.guacd_sockets = sockets(self.platform.guacd.process.pid());
    }

    async fn still_serving(&mut self) {
        self.canary
            .send(Message::binary(vec![1, 2, 3]))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(STEP, self.canary.next())
            .await
            .unwrap();
        assert_eq!(echoed.unwrap().unwrap().into_data().as_ref(), [1, 2, 3]);
    }

    /// After a refusal: nothing was opened, and the node serves on.
    async fn nothing_opened(&mut self, what: &str) {
        let desktops = self.platform.echo.accepted.load(Ordering::SeqCst);
        assert_eq!(desktops, self.desktops, "{what}: a socket to the desktop");
        let guacd = sockets(self.platform.guacd.process.pid());
        assert!(guacd <= self.guacd_sockets, "{what}: a socket to guacd");
        self.still_serving().await;
    }
}

/// A session's token, and the three ways of opening it, each answered with its refusal (or `None`).
async fn refusals(platform: &Platform, vnc: &str, guacd: &str) -> [(String, Option<String>); 3] {
    let edge = &platform.edges[0];
    let path = format!("/websockify?token={vnc}");
    let (mut relay, _) = ws_connect(&edge.ws_url(&path), &[]).await.unwrap();
    let relay = close_frame(&mut relay)
        .await
        .ok()
        .map(|(code, _)| code.to_string());
    let tunnel = GuacWs::connect(&edge.ws_url(""), &connect_data(guacd)).await;
    let tunnel = tunnel.err().map(|error| error.to_string());
    let http = HttpTunnel::connect(&edge.http_url(""), &connect_data(guacd)).await;
    let http = http
        .err()
        .map(|e: HttpError| format!("{} {:?}", e.http, e.guac));
    [
        ("/websockify".into(), relay),
        ("/websocket-tunnel".into(), tunnel),
        ("/tunnel".into(), http),
    ]
}

/// Asserts the three refusals are the documented ones for a token that grants nothing.
fn unauthorized(what: &str, answers: [(String, Option<String>); 3]) {
    let [(_, relay), (_, tunnel), (_, http)] = answers;
    assert_eq!(relay.as_deref(), Some("4403"), "{what} on /websockify");
    assert!(
        tunnel.as_deref().is_some_and(|e| e.contains("769")),
        "{what} on /websocket-tunnel: {tunnel:?}"
    );
    assert_eq!(http.as_deref(), Some("403 Some(769)"), "{what} on /tunnel");
}

#[tokio::test]
async fn forged_expired_revoked_and_other_tenants_tokens_open_nothing() {
    let platform = Platform::start().await;
    let mut watch = Watch::start(&platform).await;

    let forged = refusals(&platform, "forged-0123456789", "forged-0123456789").await;
    unauthorized("a forged token", forged);
    watch.nothing_opened("a forged token").await;

    let short = json!({"lifetime": "1s"});
    let expiring = |target| {
        let mut body = short.clone();
        body["target"] = target;
        platform.session(ACME, body)
    };
    let vnc = expiring(platform.vnc_target()).await;
    let guacd = expiring(platform.guacd_target()).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let token = |session: &serde_json::Value| session["token"].as_str().unwrap().to_owned();
    unauthorized(
        "an expired token",
        refusals(&platform, &token(&vnc), &token(&guacd)).await,
    );
    watch.nothing_opened("an expired token").await;

    let vnc = platform
        .session(ACME, json!({"target": platform.vnc_target()}))
        .await;
    let guacd = platform
        .session(ACME, json!({"target": platform.guacd_target()}))
        .await;
    for session in [&vnc, &guacd] {
        let path = format!("/api/v1/sessions/{}", session["id"].as_str().unwrap());
        // Another tenant cannot see, kill or share it.
        for method in ["GET", "DELETE"] {
            let (status, body) = platform.api(method, &path, GLOBEX, None).await;
            assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
        }
        let shares = format!("{path}/shares");
        let (status, _) = platform.api("POST", &shares, GLOBEX, Some(json!({}))).await;
        assert_eq!(status, 404, "another tenant's share");
        let (status, _) = platform.api("DELETE", &path, ACME, None).await;
        assert_eq!(status, 204);
    }
    let revoked = refusals(&platform, &token(&vnc), &token(&guacd)).await;
    unauthorized("a revoked token", revoked);
    watch.nothing_opened("a revoked token").await;
}

#[tokio::test]
async fn a_tunnel_token_opens_only_its_own_tunnel_and_the_peer_port_needs_the_secret() {
    let platform = Platform::start().await;
    let guacd = platform
        .session(ACME, json!({"target": platform.guacd_target()}))
        .await;
    let data = connect_data(guacd["token"].as_str().unwrap());
    let edge = platform.edges[0].http_url("");
    let tunnel = HttpTunnel::connect(&edge, &data).await.unwrap();
    let mut watch = Watch::start(&platform).await;

    // The URL's UUID is never trusted: a made-up token with the real UUID is a tunnel that does not exist.
    let http = reqwest::Client::new();
    let forged = http
        .post(format!("{edge}/tunnel?write:{}", tunnel.uuid))
        .header("guacamole-tunnel-token", "A".repeat(44))
        .body("3.nop;")
        .send()
        .await
        .unwrap();
    let code = forged.headers()["guacamole-status-code"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!((forged.status().as_u16(), code.as_str()), (404, "516"));
    watch.nothing_opened("a forged tunnel token").await;

    // The peer port without the cluster secret, or with a wrong one.
    let peer = platform.edges[0]
        .process
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["message"] == "peer listening")
        .and_then(|event| event["url"].as_str().map(str::to_owned))
        .unwrap();
    for secret in [None, Some("guess")] {
        let mut write = http
            .post(format!("{peer}/tunnel?write:{}", tunnel.uuid))
            .header("guacamole-tunnel-token", &tunnel.token)
            .body("3.nop;");
        if let Some(secret) = secret {
            write = write.header("deskbroker-cluster-secret", secret);
        }
        let refused = write.send().await.unwrap();
        let code = refused.headers()["guacamole-status-code"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            (refused.status().as_u16(), code.as_str()),
            (403, "769"),
            "{secret:?}"
        );
        let query = json!({"sessions": [guacd["id"]]});
        let mut ask = http.post(format!("{peer}/traffic")).body(query.to_string());
        if let Some(secret) = secret {
            ask = ask.header("deskbroker-cluster-secret", secret);
        }
        assert_eq!(
            ask.send().await.unwrap().status().as_u16(),
            403,
            "{secret:?}"
        );
    }
    watch
        .nothing_opened("the peer port without the secret")
        .await;
    tunnel.write("3.nop;").await.unwrap();
}

#[tokio::test]
async fn oversize_frames_and_instructions_close_only_their_own_tunnel() {
    let platform = Platform::start().await;
    let mut watch = Watch::start(&platform).await;
    let edge = &platform.edges[0];

    // A raw relay message over 4 MiB.
    let vnc = platform
        .session(ACME, json!({"target": platform.vnc_target()}))
        .await;
    let path = format!("/websockify?token={}", vnc["token"].as_str().unwrap());
    let (mut relay, _) = ws_connect(&edge.ws_url(&path), &[]).await.unwrap();
    // Open once it has relayed a byte.
    relay.send(Message::binary(vec![9])).await.unwrap();
    tokio::time::timeout(STEP, relay.next()).await.unwrap();
    watch.settle();
    let _ = relay.send(Message::binary(vec![0; 5 << 20])).await;
    assert_eq!(
        close_frame(&mut relay).await.unwrap(),
        (1009, "message too large".into())
    );
    watch.nothing_opened("a relay message over 4 MiB").await;

    // A Guacamole WebSocket message over 64 KiB, and an instruction over guacd's 8,192 code points.
    let guacd = platform
        .session(ACME, json!({"target": platform.guacd_target()}))
        .await;
    let data = connect_data(guacd["token"].as_str().unwrap());
    let mut tunnel = GuacWs::connect(&edge.ws_url(""), &data).await.unwrap();
    watch.settle();
    let huge = Instruction::new("key", ["x".repeat(70_000)]);
    let _ = tunnel.socket.send(Message::text(huge.encode())).await;
    assert_eq!(
        close_frame(&mut tunnel.socket).await.unwrap(),
        (1009, "781".into())
    );
    watch
        .nothing_opened("a WebSocket message over 64 KiB")
        .await;

    let http = HttpTunnel::connect(&edge.http_url(""), &data)
        .await
        .unwrap();
    watch.settle();
    let long = Instruction::new("key", ["x".repeat(9_000)]);
    let refused = http.write(long.encode()).await.unwrap_err();
    assert_eq!((refused.http, refused.guac), (413, Some(781)));
    let connect_body = format!("{data}&{}", "x".repeat(20_000));
    let refused = HttpTunnel::connect(&edge.http_url(""), &connect_body)
        .await
        .err()
        .unwrap();
    assert_eq!((refused.http, refused.guac), (413, Some(781)));
    watch
        .nothing_opened("an instruction over guacd's limits")
        .await;
}
