//! Sharing a running session, and read-only enforced by the server: a viewer's input never reaches the
//! desktop, while the desktop's output reaches the viewer.

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{GuacWs, HttpTunnel, STEP, close_frame, connect_data, ws_connect};

use crate::{ACME, Platform};

#[tokio::test]
async fn a_read_only_share_of_a_guacd_session_sees_but_cannot_touch() {
    let platform = Platform::start().await;
    let owner = platform
        .session(ACME, json!({"target": platform.guacd_target()}))
        .await;
    let mut desktop = GuacWs::connect(
        &platform.ws(0),
        &connect_data(owner["token"].as_str().unwrap()),
    )
    .await
    .unwrap();
    let connection = desktop.until("echo").await.unwrap(); // select of the owner's own connection
    assert_eq!(connection.args[0], "select");

    let path = format!("/api/v1/sessions/{}/shares", owner["id"].as_str().unwrap());
    let (status, share) = platform.api("POST", &path, ACME, Some(json!({}))).await;
    assert_eq!(status, 201, "{share}");
    assert_eq!(share["read_only"], true, "shares watch only unless asked");
    // The viewer comes in through another node, over the HTTP tunnel: guacd is asked to join.
    let viewer = HttpTunnel::connect(
        &platform.http_url(1),
        &connect_data(share["token"].as_str().unwrap()),
    )
    .await
    .unwrap();
    let mut reads = viewer.read(vec![platform.http_url(2)]);
    let select = reads.echo_of("select").await;
    assert!(
        select[0].starts_with('$'),
        "the share joins the running connection: {select:?}"
    );
    reads.until("img").await; // output reaches the viewer

    // Input from the viewer is dropped by the edge; an acknowledgement (which viewers may send) passes.
    let key = Instruction::new("key", ["65", "1"]);
    let ack = Instruction::new("ack", ["1", "OK", "0"]);
    viewer
        .write(format!("{}{}", key.encode(), ack.encode()))
        .await
        .unwrap();
    let echoed = reads.until("echo").await;
    assert_eq!(echoed.args[0], "ack", "the key never reached guacd");

    // A share with control passes input.
    let (_, control) = platform
        .api("POST", &path, ACME, Some(json!({"read_only": false})))
        .await;
    let mut helper = GuacWs::connect(
        &platform.ws(2),
        &connect_data(control["token"].as_str().unwrap()),
    )
    .await
    .unwrap();
    helper.send(&key).await.unwrap();
    loop {
        let echo = helper.until("echo").await.unwrap();
        if echo.args[0] == "key" {
            break;
        }
    }
}

#[tokio::test]
async fn a_read_only_vnc_session_never_forwards_input() {
    let platform = Platform::start().await;
    // The echo server plays a VNC server that records what reaches it, and says it back.
    let session = platform
        .session(
            ACME,
            json!({"target": platform.vnc_target(), "read_only": true}),
        )
        .await;
    let url = format!(
        "{}{}",
        platform.ws(1),
        session["urls"]["websockify"].as_str().unwrap()
    );
    let (mut socket, _) = ws_connect(&url, &["binary"]).await.unwrap();
    let mut sent = b"RFB 003.008\n".to_vec();
    sent.extend_from_slice(&[1, 0]); // security None, ClientInit (not shared)
    sent.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0, 0x61]); // KeyEvent
    sent.extend_from_slice(&[5, 1, 0, 10, 0, 20]); // PointerEvent
    sent.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']); // ClientCutText
    sent.extend_from_slice(&[3, 1, 0, 0, 0, 0, 0, 64, 0, 64]); // FramebufferUpdateRequest
    for piece in sent.chunks(5) {
        socket.send(Message::binary(piece.to_vec())).await.unwrap();
    }
    let mut expected = b"RFB 003.008\n".to_vec();
    expected.extend_from_slice(&[1, 0]);
    expected.extend_from_slice(&[3, 1, 0, 0, 0, 0, 0, 64, 0, 64]);
    let mut reached = Vec::new();
    while reached.len() < expected.len() {
        let message = tokio::time::timeout(STEP, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        reached.extend_from_slice(&message.into_data());
    }
    assert_eq!(
        reached, expected,
        "only what a viewer needs reached the VNC server"
    );

    // A client the relay cannot check is refused rather than trusted.
    let (mut old, _) = ws_connect(&url, &["binary"]).await.unwrap();
    old.send(Message::binary(b"RFB 003.003\n".to_vec()))
        .await
        .unwrap();
    assert_eq!(close_frame(&mut old).await.unwrap().0, 4400);
}
