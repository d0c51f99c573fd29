//! A node without Redis serves the control-plane API itself, so the one-command demo has it too.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use deskbroker_tests::Edge;
use deskbroker_tests::clients::{STEP, api, close_frame, ws_connect};
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

/// What the edge says it dropped from its registry, summed over its log so far.
fn records_dropped(edge: &Edge) -> u64 {
    edge.process
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["message"] == "expired registry records dropped")
        .filter_map(|event| event["records"].as_u64())
        .sum()
}

#[tokio::test]
async fn a_node_alone_drops_sessions_once_they_expire() {
    let key = "acme-key-0123456789";
    let config = serde_json::json!({"tenants": [{
        "id": "acme",
        "key_sha256": deskbroker_shared::ids::TokenDigest::of(key).to_hex(),
        "policy": {"hosts": ["192.0.2.1"], "ports": ["5900"], "kinds": ["vnc"]},
    }]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let edge = Edge::start(&["--config", path.to_str().unwrap()])
        .await
        .unwrap();
    let body = serde_json::json!({
        "target": {"kind": "vnc", "host": "192.0.2.1", "port": 5900}, "lifetime": "1s"
    });
    let url = edge.http_url("/api/v1/sessions");
    for _ in 0..20 {
        let (status, answer) = api("POST", &url, key, Some(body.clone())).await;
        assert_eq!(status, 201, "{answer}");
    }

    // Expired sessions are refused at once; their memory is given back within a sweep or two.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while records_dropped(&edge) < 20 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(records_dropped(&edge), 20, "{}", edge.process.logs());
    let (status, listed) = api("GET", &url, key, None).await;
    assert_eq!((status, listed), (200, serde_json::json!([])));
}
