//! What two edges on a real Redis tell a scrape: an HTTP tunnel opened on the first and read and written
//! through the second shows as the second's forwards (answered, with their latencies) and the first's
//! requests served for a peer; both count the Redis commands they sent, their lease renewals and the nodes
//! alive; a revocation on the control channel is applied, and a Redis restart is a failed renewal and a
//! control-channel reconnect.

use std::time::Duration;

use deskbroker_broker::{RedisRegistry, Registry};
use deskbroker_shared::cluster::ControlEvent;
use deskbroker_shared::ids::SessionId;
use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{HttpTunnel, connect_data};
use deskbroker_tests::platform::eventually;
use deskbroker_tests::redis::Redis;
use deskbroker_tests::{Edge, TestGuacd};

use crate::SECRET;

async fn scrape(ops: &str) -> String {
    let response = reqwest::get(format!("http://{ops}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200, "{ops}");
    response.text().await.unwrap()
}

/// The value of the sample `series` (name and labels, as written), 0 when it is not there.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_scrape_shows_forwards_registry_commands_leases_and_control_events() {
    let mut redis = Redis::start().await.unwrap();
    let guacd = TestGuacd::start(&[]).await.unwrap();
    let sessions = format!("g: guacd://{}/vnc?hostname=desk-1\n", guacd.addr);
    let (_dir, path) = deskbroker_tests::process::session_file(&sessions).unwrap();
    let mut edges = Vec::new();
    for i in 0..2 {
        let args = [
            "--sessions",
            path.to_str().unwrap(),
            "--ops-listen",
            "127.0.0.1:0",
        ];
        let id = format!("edge-{}", i + 1);
        edges.push(
            Edge::start_node(&id, &redis.url(), SECRET, &args, &[])
                .await
                .unwrap(),
        );
    }
    let ops: Vec<String> = edges
        .iter()
        .map(|edge| edge.ops_addr().to_string())
        .collect();
    let (owner, other) = (edges[0].http_url(""), edges[1].http_url(""));

    let tunnel = HttpTunnel::connect(&owner, &connect_data("g"))
        .await
        .unwrap();
    let mut reads = tunnel.read(vec![other.clone()]);
    reads.until("sync").await;
    let key = Instruction::new("key", ["65", "1"]);
    tunnel.write_to(&other, key.encode()).await.unwrap();
    assert_eq!(reads.echo_of("key").await, ["65", "1"]);

    let (at_owner, at_other) = (scrape(&ops[0]).await, scrape(&ops[1]).await);
    let answered =
        |op: &str| format!(r#"deskbroker_forwarded_requests_total{{op="{op}",result="answered"}}"#);
    assert!(sample(&at_other, &answered("read")) >= 1.0, "{at_other}");
    assert!(sample(&at_other, &answered("write")) >= 1.0);
    let head = r#"deskbroker_forward_head_duration_seconds_count{op="write"}"#;
    assert!(sample(&at_other, head) >= 1.0);
    let served = r#"deskbroker_peer_requests_total{result="answered"}"#;
    assert!(sample(&at_owner, served) >= 2.0, "{at_owner}");
    let http_open = r#"deskbroker_tunnels_open{kind="http-tunnel"}"#;
    assert_eq!(
        (sample(&at_owner, http_open), sample(&at_other, http_open)),
        (1.0, 0.0)
    );
    for text in [&at_owner, &at_other] {
        let renewed = r#"deskbroker_lease_renewals_total{outcome="renewed"}"#;
        assert!(sample(text, renewed) >= 1.0, "{text}");
        let sent = r#"deskbroker_registry_commands_total{command="EVALSHA",result="ok"}"#;
        assert!(sample(text, sent) >= 1.0, "{text}");
        assert!(text.contains("deskbroker_registry_command_duration_seconds_bucket"));
    }

    // Each node counts the other alive at its next renewal.
    for ops in &ops {
        let both = || async { sample(&scrape(ops).await, "deskbroker_nodes_alive") == 2.0 };
        eventually(Duration::from_secs(5), "two nodes alive", both).await;
    }

    // A revocation on the control channel reaches both nodes.
    let registry = RedisRegistry::connect(&redis.url()).await.unwrap();
    let revoked = ControlEvent::SessionClosed {
        session: SessionId::new("gone"),
        until_ms: None,
    };
    registry.publish(&revoked).await.unwrap();
    let applied = r#"deskbroker_control_events_total{event="session-closed"}"#;
    for ops in &ops {
        let seen = || async { sample(&scrape(ops).await, applied) == 1.0 };
        eventually(Duration::from_secs(5), "the revocation is applied", seen).await;
    }

    // Redis restarts: a renewal fails, and the control channel subscribes again.
    redis.kill().await;
    let failed = || async {
        sample(
            &scrape(&ops[0]).await,
            r#"deskbroker_lease_renewals_total{outcome="failed"}"#,
        ) >= 1.0
    };
    eventually(Duration::from_secs(10), "a renewal fails", failed).await;
    redis.restart().await.unwrap();
    let reconnected = || async {
        sample(
            &scrape(&ops[0]).await,
            "deskbroker_control_channel_reconnects_total",
        ) >= 1.0
    };
    eventually(
        Duration::from_secs(10),
        "the control channel is back",
        reconnected,
    )
    .await;
    let text = scrape(&ops[0]).await;
    assert!(text.contains(r#"result="unavailable""#), "{text}");
}
