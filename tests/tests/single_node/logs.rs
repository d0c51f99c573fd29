//! No secret in any log, at any level: an edge started with `DESKBROKER_LOG=trace` carries a websockify
//! relay, both Guacamole tunnels and the control-plane API, with distinctive tokens, keys, a guacd
//! password and typed input; then every line it logged is searched for each of them.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use deskbroker_shared::ids::TokenDigest;
use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{GuacWs, HttpTunnel, STEP, api, connect_data, ws_connect};
use deskbroker_tests::logs::{leaks, secret};
use deskbroker_tests::upstreams::Echo;
use deskbroker_tests::{Edge, TestGuacd};

/// Calls the edge's API with `key`.
async fn call(
    edge: &Edge,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    api(method, &edge.http_url(path), key, body).await
}

/// Sends a `blob` carrying `payload` and waits for the test guacd's echo of it.
async fn type_into(tunnel: &mut GuacWs, payload: &str) {
    tunnel
        .send(&Instruction::new("blob", ["1", payload]))
        .await
        .unwrap();
    loop {
        let echo = tunnel.until("echo").await.unwrap();
        if echo.args.iter().any(|arg| arg == payload) {
            return;
        }
    }
}

#[tokio::test]
async fn an_edge_at_trace_level_logs_no_token_key_password_or_payload() {
    let guacd = TestGuacd::start(&[]).await.unwrap();
    let echo = Echo::start().await.unwrap();
    let relay_token = secret("relay-token");
    let guacd_token = secret("guacd-token");
    let password = secret("password");
    let tenant_key = secret("tenant-key");
    let admin_key = secret("admin-key");
    let wrong_key = secret("wrong-key");
    let new_tenant_key = secret("new-tenant-key");
    let api_password = secret("api-password");
    let relay_input = secret("relay-input");
    let ws_input = secret("ws-tunnel-input");
    let http_input = secret("http-tunnel-input");

    let sessions = format!(
        "{relay_token}: {}\n\
         {guacd_token}: guacd://{}/vnc?hostname=desk-1&port=5901&password={password}\n",
        echo.addr, guacd.addr
    );
    let (dir, sessions) = deskbroker_tests::process::session_file(&sessions).unwrap();
    let config = json!({
        "tenants": [{
            "id": "acme",
            "key_sha256": TokenDigest::of(&tenant_key).to_hex(),
            "policy": {"hosts": ["127.0.0.1", "192.0.2.0/24"], "ports": ["1-65535"],
                       "kinds": ["vnc", "guacd-vnc"]},
        }],
        "guacd_pools": {"default": [guacd.addr.to_string()]}
    });
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let mut edge = Edge::start_with_env(
        &[
            "--sessions",
            sessions.to_str().unwrap(),
            "--config",
            config_path.to_str().unwrap(),
        ],
        &[
            ("DESKBROKER_LOG", "trace"),
            ("DESKBROKER_ADMIN_KEY", &admin_key),
        ],
    )
    .await
    .unwrap();

    // noVNC's relay: the token in the query string, input bytes echoed by the VNC side.
    let url = edge.ws_url(&format!("/websockify?token={relay_token}"));
    let (mut relay, _) = ws_connect(&url, &["binary"]).await.unwrap();
    relay
        .send(Message::binary(relay_input.clone().into_bytes()))
        .await
        .unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < relay_input.len() {
        let message = tokio::time::timeout(STEP, relay.next()).await.unwrap();
        echoed.extend_from_slice(&message.unwrap().unwrap().into_data());
    }
    assert_eq!(echoed, relay_input.as_bytes());
    relay.close(None).await.unwrap();

    // The WebSocket tunnel: the token in the query string, the password in guacd's `connect`.
    let mut ws_tunnel = GuacWs::connect(&edge.ws_url(""), &connect_data(&guacd_token))
        .await
        .unwrap();
    type_into(&mut ws_tunnel, &ws_input).await;

    // The HTTP tunnel: the token in the connect body, then the tunnel token in every request's header.
    let http_tunnel = HttpTunnel::connect(&edge.http_url(""), &connect_data(&guacd_token))
        .await
        .unwrap();
    let mut reads = http_tunnel.read(vec![edge.http_url("")]);
    http_tunnel
        .write(Instruction::new("blob", ["1", &http_input]).encode())
        .await
        .unwrap();
    assert_eq!(reads.echo_of("blob").await, ["1", http_input.as_str()]);

    // The API, with a tenant's key and the admin key, and requests it refuses for what they carry.
    let target = json!({"kind": "guacd", "protocol": "vnc", "guacd": "default",
                        "params": {"hostname": "192.0.2.10", "port": "5901",
                                   "password": api_password}});
    let (status, session) = call(
        &edge,
        "POST",
        "/api/v1/sessions",
        &tenant_key,
        Some(json!({"target": target})),
    )
    .await;
    assert_eq!(status, 201, "{session}");
    let api_token = session["token"].as_str().unwrap().to_owned();
    let id = session["id"].as_str().unwrap();
    let mut api_tunnel = GuacWs::connect(&edge.ws_url(""), &connect_data(&api_token))
        .await
        .unwrap();
    type_into(&mut api_tunnel, &ws_input).await;
    let path = format!("/api/v1/sessions/{id}");
    assert_eq!(call(&edge, "GET", &path, &tenant_key, None).await.0, 200);
    assert_eq!(
        call(&edge, "GET", "/api/v1/sessions", &admin_key, None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&edge, "GET", "/api/v1/sessions", &wrong_key, None)
            .await
            .0,
        401
    );
    let malformed = json!({"target": target, "exclusive": api_password});
    let refused = call(
        &edge,
        "POST",
        "/api/v1/sessions",
        &tenant_key,
        Some(malformed),
    )
    .await;
    assert!(refused.0 >= 400, "{refused:?}");
    let tenant = json!({"key": new_tenant_key});
    let put = call(
        &edge,
        "PUT",
        "/api/v1/tenants/globex",
        &admin_key,
        Some(tenant),
    )
    .await;
    assert_eq!(put.0, 200, "{put:?}");
    let malformed = json!({"key": new_tenant_key, "limits": new_tenant_key});
    let refused = call(
        &edge,
        "PUT",
        "/api/v1/tenants/globex",
        &admin_key,
        Some(malformed),
    )
    .await;
    assert!(refused.0 >= 400, "{refused:?}");
    assert_eq!(call(&edge, "DELETE", &path, &tenant_key, None).await.0, 204);

    // Ending the tunnels now, so that the edge stops at once.
    http_tunnel
        .write(Instruction::new("x-disconnect", Vec::<String>::new()).encode())
        .await
        .unwrap();
    reads.end().await;
    drop((ws_tunnel, api_tunnel));
    edge.process.stop().await.unwrap();
    let secrets = [
        ("websockify session token", relay_token.as_str()),
        ("guacd session token", &guacd_token),
        ("session token the API made", &api_token),
        ("HTTP tunnel token", &http_tunnel.token),
        ("guacd password", &password),
        ("guacd password given to the API", &api_password),
        ("tenant key", &tenant_key),
        ("admin key", &admin_key),
        ("wrong key", &wrong_key),
        ("new tenant's key", &new_tenant_key),
        ("relayed input", &relay_input),
        ("WebSocket tunnel input", &ws_input),
        ("HTTP tunnel input", &http_input),
    ];
    let found = leaks(&[("the edge", &edge.process)], &secrets);
    assert!(found.is_empty(), "{}", found.join("\n"));

    // Not because nothing was logged: the level was trace, and the ids are there.
    let logs = edge.process.logs();
    assert!(logs.contains(r#""level":"TRACE""#), "no trace event logged");
    assert!(logs.contains(&http_tunnel.uuid), "the tunnel id is logged");
    assert!(logs.contains(id), "the session id is logged");
}
