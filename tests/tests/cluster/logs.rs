//! No secret in any log, at any level, in a cluster: a broker and two edges on one Redis, all started with
//! `DESKBROKER_LOG=trace`. A tenant creates a guacd session with a password through the broker; an HTTP
//! tunnel opens on one edge and is read and written through the other, which forwards to the owner with
//! the cluster secret; a WebSocket tunnel opens on the second; the broker asks the owners for the tunnels'
//! traffic with the secret too. Then every line each process logged is searched for every token, key,
//! secret, password and input.

use serde_json::json;

use deskbroker_shared::ids::TokenDigest;
use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{GuacWs, HttpTunnel, api, connect_data};
use deskbroker_tests::logs::{leaks, secret};
use deskbroker_tests::redis::Redis;
use deskbroker_tests::{Broker, Edge, TestGuacd};

#[tokio::test]
async fn a_cluster_at_trace_level_logs_no_token_key_secret_password_or_payload() {
    let redis = Redis::start().await.unwrap();
    let guacd = TestGuacd::start(&[]).await.unwrap();
    let cluster_secret = secret("cluster-secret");
    let tenant_key = secret("tenant-key");
    let admin_key = secret("admin-key");
    let password = secret("password");
    let input = secret("input");

    let config = json!({
        "tenants": [{
            "id": "acme",
            "key_sha256": TokenDigest::of(&tenant_key).to_hex(),
            "policy": {"hosts": ["192.0.2.0/24"], "ports": ["5901"], "kinds": ["guacd-vnc"]},
        }],
        "guacd_pools": {"default": [guacd.addr.to_string()]}
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let trace = ("DESKBROKER_LOG", "trace");
    let env = [
        trace,
        ("DESKBROKER_CLUSTER_SECRET", cluster_secret.as_str()),
    ];
    let url = redis.url();
    let mut broker = Broker::start_with_env(&url, &path, &admin_key, &env)
        .await
        .unwrap();
    let mut edges = Vec::new();
    for id in ["edge-1", "edge-2"] {
        let edge = Edge::start_node(id, &url, &cluster_secret, &[], &[trace]).await;
        edges.push(edge.unwrap());
    }

    let target = json!({"kind": "guacd", "protocol": "vnc", "guacd": "default",
                        "params": {"hostname": "192.0.2.10", "port": "5901",
                                   "password": password}});
    let sessions = broker.url("/api/v1/sessions");
    let body = json!({"target": target});
    let (status, session) = api("POST", &sessions, &tenant_key, Some(body)).await;
    assert_eq!(status, 201, "{session}");
    let token = session["token"].as_str().unwrap().to_owned();
    let id = session["id"].as_str().unwrap();

    // Connected on the first edge, read and written through the second, which forwards to the first.
    let (first, second) = (edges[0].http_url(""), edges[1].http_url(""));
    let tunnel = HttpTunnel::connect(&first, &connect_data(&token))
        .await
        .unwrap();
    let mut reads = tunnel.read(vec![second.clone()]);
    tunnel
        .write_to(&second, Instruction::new("blob", ["1", &input]).encode())
        .await
        .unwrap();
    assert_eq!(reads.echo_of("blob").await, ["1", input.as_str()]);

    // A WebSocket tunnel on the second edge, and a request the broker refuses for what it carries.
    let mut ws_tunnel = GuacWs::connect(&edges[1].ws_url(""), &connect_data(&token))
        .await
        .unwrap();
    ws_tunnel
        .send(&Instruction::new("blob", ["1", &input]))
        .await
        .unwrap();
    while !ws_tunnel.until("echo").await.unwrap().args.contains(&input) {}
    let malformed = json!({"target": target, "read_only": password});
    let refused = api("POST", &sessions, &tenant_key, Some(malformed)).await;
    assert!(refused.0 >= 400, "{refused:?}");

    // The broker asks the owner for the tunnel's traffic, through its peer port.
    let session_url = broker.url(&format!("/api/v1/sessions/{id}"));
    let (status, seen) = api("GET", &session_url, &tenant_key, None).await;
    assert_eq!(status, 200, "{seen}");
    let tunnels = seen["tunnels"].as_array().unwrap();
    assert!(
        tunnels.iter().all(|t| t["bytes_in"].as_u64() > Some(0)),
        "{seen}"
    );
    let nodes = api("GET", &broker.url("/api/v1/nodes"), &admin_key, None).await;
    assert_eq!(nodes.0, 200, "{nodes:?}");
    assert_eq!(api("DELETE", &session_url, &admin_key, None).await.0, 204);
    reads.end().await;
    drop(ws_tunnel);

    broker.process.stop().await.unwrap();
    for edge in &mut edges {
        edge.process.stop().await.unwrap();
    }
    let secrets = [
        ("cluster secret", cluster_secret.as_str()),
        ("tenant key", &tenant_key),
        ("admin key", &admin_key),
        ("session token", &token),
        ("HTTP tunnel token", &tunnel.token),
        ("guacd password", &password),
        ("typed input", &input),
    ];
    let processes = [
        ("the broker", &broker.process),
        ("edge-1", &edges[0].process),
        ("edge-2", &edges[1].process),
    ];
    let found = leaks(&processes, &secrets);
    assert!(found.is_empty(), "{}", found.join("\n"));

    // Not because nothing was logged: the level was trace, and the ids are there.
    for (name, process) in processes {
        let logs = process.logs();
        assert!(
            logs.contains(r#""level":"TRACE""#),
            "{name}: no trace event"
        );
    }
    assert!(
        broker.process.logs().contains(id),
        "the session id is logged"
    );
    assert!(
        edges[0].process.logs().contains(&tunnel.uuid),
        "the tunnel id is logged"
    );
}
