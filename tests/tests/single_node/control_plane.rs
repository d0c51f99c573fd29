//! A node without Redis serves the control-plane API itself, so the one-command demo has it too.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use deskbroker_tests::Edge;
use deskbroker_tests::clients::{STEP, close_frame, ws_connect};
use deskbroker_tests::upstreams::Echo;

#[tokio::test]
async fn the_demo_node_serves_the_api_with_its_demo_tenant() {
    let echo = Echo::start().await.unwrap();
    let edge = Edge::start(&["--demo"]).await.unwrap();
    let http = reqwest::Client::new();
    let target = format!(
        r#"{{"target": {{"kind": "vnc", "host": "127.0.0.1", "port": {}}}}}"#,
        echo.addr.port()
    );
    let created = http
        .post(edge.http_url("/api/v1/sessions"))
        .bearer_auth("demo")
        .header("content-type", "application/json")
        .body(target)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let session: serde_json::Value = serde_json::from_str(&created.text().await.unwrap()).unwrap();
    let url = edge.ws_url(session["urls"]["websockify"].as_str().unwrap());
    let (mut socket, _) = ws_connect(&url, &[]).await.unwrap();
    socket.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    tokio::time::timeout(STEP, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let id = session["id"].as_str().unwrap();
    let seen = http
        .get(edge.http_url(&format!("/api/v1/sessions/{id}")))
        .bearer_auth("demo")
        .send()
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_str(&seen.text().await.unwrap()).unwrap();
    assert_eq!(seen["tunnels"][0]["bytes_in"], 3, "{seen}");
    let killed = http
        .delete(edge.http_url(&format!("/api/v1/sessions/{id}")))
        .bearer_auth("demo")
        .send()
        .await
        .unwrap();
    assert_eq!(killed.status(), 204);
    assert_eq!(close_frame(&mut socket).await.unwrap().0, 4410);
    let spec = http
        .get(edge.http_url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(spec.status(), 200);
}
