//! A session, a tunnel and a quota slot end exactly once, whatever fails: a session's expiry ends its
//! tunnels, a refused connect dials nothing, and a node that froze or was cut off from Redis neither
//! brings back tunnels that closed meanwhile nor keeps more than its tenant's quota. Each test ends with
//! the invariant: open tunnels == registry records == slots held <= `max_tunnels`, and the live view
//! lists exactly the open tunnels.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use deskbroker_tests::Edge;
use deskbroker_tests::clients::{STEP, close_frame};
use deskbroker_tests::flows::{echoes, open};
use deskbroker_tests::platform::eventually;
use deskbroker_tests::process::LEASE;
use deskbroker_tests::proxy::Proxy;

use crate::{ACME, LOOPBACK_ALLOWED, Platform, SECRET};

#[tokio::test]
async fn a_session_ends_its_tunnels_when_it_expires() {
    let platform = Platform::start().await;
    let key = platform.tenant("brief", 5).await;
    let path = platform
        .relay_session(&key, json!({"lifetime": "3s"}))
        .await;
    let mut relays = Vec::new();
    for node in 0..3 {
        relays.push(open(&format!("{}{path}", platform.ws(node))).await.unwrap());
    }
    for relay in &mut relays {
        let closed = close_frame(relay).await.unwrap();
        assert_eq!(closed, (4410, "session expired".into()));
    }
    let gone = || async { platform.slots("brief").await == 0 };
    eventually(STEP, "the expired session's slots are given back", gone).await;
    platform.assert_invariant("brief", &key, 0, 5).await;
}

#[tokio::test]
async fn a_refused_connect_dials_nothing_and_a_tenant_without_a_record_gets_nothing() {
    let platform = Platform::start().await;
    let key = platform.tenant("small", 2).await;
    let path = platform.relay_session(&key, json!({})).await;
    let mut held = Vec::new();
    for node in 0..2 {
        held.push(open(&format!("{}{path}", platform.ws(node))).await.unwrap());
    }
    let dialled = platform.echo.accepted.load(Ordering::SeqCst);
    for node in 0..6 {
        let refused = open(&format!("{}{path}", platform.ws(node % 3)))
            .await
            .err();
        assert_eq!(refused, Some(4429));
    }
    assert_eq!(
        platform.echo.accepted.load(Ordering::SeqCst),
        dialled,
        "a connect refused for the quota opened no socket to the desktop"
    );
    platform.assert_invariant("small", &key, 2, 2).await;

    // A tenant whose record is gone (while its sessions are not) is not a tenant without limits.
    let orphan = platform.tenant("orphan", 5).await;
    let path = platform.relay_session(&orphan, json!({})).await;
    let cli = ["HDEL", "deskbroker:tenants", "orphan"];
    platform.redis.cli(&cli).await.unwrap();
    let refused = open(&format!("{}{path}", platform.ws(0))).await.err();
    assert_eq!(refused, Some(4403), "refused as an unknown token is");
    assert_eq!(platform.echo.accepted.load(Ordering::SeqCst), dialled);
    assert_eq!(platform.slots("orphan").await, 0);
}

#[tokio::test]
async fn tunnels_closed_while_their_node_was_frozen_do_not_come_back() {
    const TUNNELS: usize = 40;
    let platform = Platform::start().await;
    let key = platform.tenant("frozen", TUNNELS as u32).await;
    let path = platform.relay_session(&key, json!({})).await;
    let mut relays = Vec::new();
    for _ in 0..TUNNELS {
        relays.push(open(&format!("{}{path}", platform.ws(0))).await.unwrap());
    }
    platform
        .assert_invariant("frozen", &key, TUNNELS, TUNNELS)
        .await;

    // The node freezes until its lease lapses and the others remove its records; its clients leave
    // while it is frozen, so it meets their departures and its own return at the same moment.
    let frozen = &platform.edges[0].process;
    frozen.freeze().await.unwrap();
    let cleaned = || async { platform.slots("frozen").await == 0 };
    eventually(3 * LEASE, "the frozen node's records are removed", cleaned).await;
    for relay in &mut relays {
        let _ = relay.close(None).await;
    }
    drop(relays);
    frozen.thaw().await.unwrap();

    // Back, it renews its lease (finding it lost) and ends the relays whose clients left: what it
    // records again must be none of them.
    let nodes = || async {
        let field = platform
            .redis
            .cli(&["HGET", "deskbroker:nodes", "edge-1"])
            .await;
        field.is_ok_and(|lines| lines.first().is_some_and(|l| l.contains("expires_ms")))
    };
    eventually(3 * LEASE, "the thawed node renews its lease", nodes).await;
    tokio::time::sleep(LEASE).await;
    platform.assert_invariant("frozen", &key, 0, TUNNELS).await;

    // And every slot is the tenant's again.
    let mut reopened = Vec::new();
    for i in 0..TUNNELS {
        let url = format!("{}{path}", platform.ws(i % 3));
        reopened.push(open(&url).await.expect("every slot is free"));
    }
    platform
        .assert_invariant("frozen", &key, TUNNELS, TUNNELS)
        .await;
}

#[tokio::test]
async fn a_node_cut_off_from_redis_records_its_tunnels_again_within_the_quota() {
    let platform = Platform::start().await;
    let key = platform.tenant("parted", 5).await;
    // A fourth node reaches Redis through a link that stalls: its commands wait, and their answers
    // arrive after the node gave up on them.
    let link = Proxy::start(([127, 0, 0, 1], platform.redis.port).into())
        .await
        .unwrap();
    let url = format!("redis://{}", link.addr);
    let edge = Edge::start_node("edge-parted", &url, SECRET, &[], &LOOPBACK_ALLOWED)
        .await
        .unwrap();
    let path = platform.relay_session(&key, json!({})).await;
    let mut parted = Vec::new();
    for _ in 0..5 {
        parted.push(open(&edge.ws_url(&path)).await.unwrap());
    }
    platform.assert_invariant("parted", &key, 5, 5).await;

    // Cut off past its lease, its records are removed, and the tenant opens three tunnels elsewhere.
    link.pause();
    let cleaned = || async { platform.slots("parted").await == 0 };
    eventually(4 * LEASE, "the cut-off node's records are removed", cleaned).await;
    let mut elsewhere = Vec::new();
    for node in 0..3 {
        elsewhere.push(open(&format!("{}{path}", platform.ws(node))).await.unwrap());
    }
    for relay in &mut parted {
        assert_eq!(echoes(relay).await, Ok(()), "relays run on while cut off");
    }

    // Healed, it records its tunnels again while slots are left, and closes the rest with "try again".
    link.resume();
    let recorded = || async { platform.slots("parted").await == 5 };
    eventually(
        4 * LEASE,
        "the healed node records its tunnels again",
        recorded,
    )
    .await;
    tokio::time::sleep(LEASE).await;
    let mut open_on_parted = 0;
    for relay in &mut parted {
        match echoes(relay).await {
            Ok(()) => open_on_parted += 1,
            Err(code) => assert_eq!(code, 4503, "closed with the retry status"),
        }
    }
    assert_eq!(open_on_parted, 2, "two of its five fit in the quota");
    for relay in &mut elsewhere {
        assert_eq!(echoes(relay).await, Ok(()));
    }
    platform.assert_invariant("parted", &key, 5, 5).await;
}

#[tokio::test]
async fn configured_tenants_come_back_after_redis_restarts_empty() {
    let mut platform = Platform::start().await;
    platform.redis.restart().await.unwrap();
    // From the first request on, the broker answers for itself: its link to Redis is made again at
    // once (never a 503), and the configured tenants are written again within a few seconds.
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let (status, body) = platform.api("GET", "/api/v1/sessions", ACME, None).await;
        match status {
            200 => break,
            401 => assert!(
                tokio::time::Instant::now() < deadline,
                "acme never came back"
            ),
            _ => panic!("{status} {body}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let path = platform.relay_session(ACME, json!({})).await;
    open(&format!("{}{path}", platform.ws(1))).await.unwrap();
}

#[tokio::test]
async fn sessions_made_through_the_api_survive_redis_restarting_empty() {
    let mut platform = Platform::start().await;
    let live = platform.relay_session(ACME, json!({})).await;
    let revoked = platform
        .session(ACME, json!({"target": platform.vnc_target()}))
        .await;
    let path = format!("/api/v1/sessions/{}", revoked["id"].as_str().unwrap());
    assert_eq!(platform.api("DELETE", &path, ACME, None).await.0, 204);
    let revoked = revoked["urls"]["websockify"].as_str().unwrap().to_owned();
    let mut running = open(&format!("{}{live}", platform.ws(0))).await.unwrap();

    // Redis comes back with nothing: no session, no revocation, no tenant.
    platform.redis.restart().await.unwrap();
    let back = || async { platform.api("GET", "/api/v1/sessions", ACME, None).await.0 == 200 };
    eventually(STEP, "the configured tenant comes back", back).await;

    // The token still opens, on any node; the revoked one is still refused; the running relay runs.
    let opened = open(&format!("{}{live}", platform.ws(1))).await.unwrap();
    for node in 0..3 {
        let refused = open(&format!("{}{revoked}", platform.ws(node))).await.err();
        assert_eq!(refused, Some(4403), "the revoked token on node {node}");
    }
    assert_eq!(echoes(&mut running).await, Ok(()));
    // Used again, the session is back in the registry: listed, with both its tunnels.
    let relisted = || async { platform.listed(ACME).await == 2 };
    eventually(
        STEP,
        "the session is listed again with its tunnels",
        relisted,
    )
    .await;
    platform.assert_invariant("acme", ACME, 2, 5).await;
    drop((running, opened));
}
