//! Readiness against a real Redis: an edge and the broker answer `/readyz` with 200 while Redis does, with
//! 503 (and the reason) while it is away, and with 200 again once it is back; `/healthz` answers
//! throughout, since a process waiting for its registry is alive, and restarting it would drop its
//! tunnels.

use std::time::Duration;

use deskbroker_tests::platform::eventually;
use deskbroker_tests::redis::Redis;
use deskbroker_tests::{Broker, Edge};

use crate::SECRET;

async fn probe(url: String) -> Option<(u16, String)> {
    let answer = reqwest::get(url).await.ok()?;
    Some((answer.status().as_u16(), answer.text().await.ok()?))
}

#[tokio::test]
async fn edges_and_the_broker_are_not_ready_while_redis_is_away() {
    let mut redis = Redis::start().await.unwrap();
    let args = ["--ops-listen", "127.0.0.1:0"];
    let edge = Edge::start_node("edge-1", &redis.url(), SECRET, &args, &[])
        .await
        .unwrap();
    let edge_ops = edge.ops_addr();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"tenants": []}"#).unwrap();
    let env = [("DESKBROKER_OPS_LISTEN", "127.0.0.1:0")];
    let broker = Broker::start_with_env(&redis.url(), &config, "admin-key", &env)
        .await
        .unwrap();
    let broker_ops = broker.ops_addr();
    let readyz = [
        format!("http://{edge_ops}/readyz"),
        format!("http://{broker_ops}/readyz"),
        format!("http://{}/readyz", broker.addr),
    ];
    let healthz = [
        format!("http://{edge_ops}/healthz"),
        format!("http://{broker_ops}/healthz"),
    ];
    let all = |expected: (u16, &'static str)| {
        let urls = readyz.clone();
        async move {
            for url in urls {
                if probe(url).await != Some((expected.0, expected.1.to_owned())) {
                    return false;
                }
            }
            true
        }
    };
    assert!(all((200, "ready")).await, "ready with Redis");

    redis.kill().await;
    let away = || all((503, "registry unavailable"));
    eventually(Duration::from_secs(10), "not ready without Redis", away).await;
    for url in &healthz {
        assert_eq!(probe(url.clone()).await, Some((200, "ok".into())), "{url}");
    }

    redis.restart().await.unwrap();
    let back = || all((200, "ready"));
    eventually(Duration::from_secs(10), "ready again with Redis back", back).await;
}
