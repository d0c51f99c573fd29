//! A tenant's tunnel quota holds cluster-wide under concurrent connects, and exclusive sessions keep one
//! tunnel: the newest, wherever it connects.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use deskbroker_tests::clients::{HttpTunnel, STEP, Ws, close_frame, connect_data, ws_connect};

use deskbroker_tests::Edge;
use deskbroker_tests::platform::{LOOPBACK_ALLOWED, SECRET, eventually};

use crate::{ACME, Platform};

/// Opens the relay and says whether it was accepted (it echoes) or refused (and with which close code).
async fn try_open(url: String) -> (Option<Ws>, Option<u16>) {
    let (mut socket, _) = ws_connect(&url, &[]).await.unwrap();
    socket.send(Message::binary(vec![7])).await.unwrap();
    match tokio::time::timeout(STEP, socket.next()).await.unwrap() {
        Some(Ok(Message::Binary(_))) => (Some(socket), None),
        Some(Ok(Message::Close(Some(frame)))) => (None, Some(frame.code.into())),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn the_quota_holds_under_fifty_concurrent_connects_and_slots_come_back() {
    let platform = Platform::start().await;
    let session = platform
        .session(ACME, json!({"target": platform.vnc_target()}))
        .await;
    let path = session["urls"]["websockify"].as_str().unwrap().to_owned();
    let attempts = (0..50).map(|i| try_open(format!("{}{path}", platform.ws(i % 3))));
    let results = futures_util::future::join_all(attempts).await;
    let accepted = results
        .iter()
        .filter(|(socket, _)| socket.is_some())
        .count();
    let refused: Vec<u16> = results.iter().filter_map(|(_, code)| *code).collect();
    assert_eq!(
        accepted, 5,
        "the tenant's limit of 5 is never exceeded, and is reached"
    );
    assert!(refused.iter().all(|code| *code == 4429), "{refused:?}");

    // Closing tunnels gives their slots back.
    drop(results);
    let mut reopened = None;
    for _ in 0..50 {
        if let (Some(socket), _) = try_open(format!("{}{path}", platform.ws(0))).await {
            reopened = Some(socket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened.is_some(), "a slot came back");
}

#[tokio::test]
async fn a_dead_nodes_slots_come_back_within_a_lease() {
    let mut platform = Platform::start().await;
    let session = platform
        .session(ACME, json!({"target": platform.vnc_target()}))
        .await;
    let path = session["urls"]["websockify"].as_str().unwrap().to_owned();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            try_open(format!("{}{path}", platform.ws(2)))
                .await
                .0
                .expect("within the limit"),
        );
    }
    assert_eq!(
        try_open(format!("{}{path}", platform.ws(0))).await.1,
        Some(4429)
    );
    platform.edges[2].process.kill().await;
    let mut reopened = false;
    for _ in 0..100 {
        if try_open(format!("{}{path}", platform.ws(0)))
            .await
            .0
            .is_some()
        {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened, "the dead node's slots were given back");
}

/// A reconnect after its node was killed: the tenant's one slot is still held by the dead node's tunnel,
/// whose lease runs on, and the new tunnel of the same session takes that slot at once instead of being
/// refused until the lease lapses. Another session of the tenant is still refused: the limit holds.
#[tokio::test]
async fn a_reconnect_after_its_node_was_killed_takes_the_dead_tunnels_slot() {
    let mut platform = Platform::start().await;
    let key = platform.tenant("one", 1).await;
    let path = platform.relay_session(&key, json!({})).await;
    let other = platform.relay_session(&key, json!({})).await;
    let (held, _) = try_open(format!("{}{path}", platform.ws(2))).await;
    let _held = held.expect("within the limit");
    platform.edges[2].process.kill().await;
    let killed = tokio::time::Instant::now();

    let (again, refused) = try_open(format!("{}{path}", platform.ws(0))).await;
    assert!(
        again.is_some(),
        "the reconnect is let in at once, not refused {refused:?}"
    );
    eprintln!(
        "measured: reconnect after a kill let in {:?} after the kill",
        killed.elapsed()
    );
    let (_, code) = try_open(format!("{}{other}", platform.ws(1))).await;
    assert_eq!(
        code,
        Some(4429),
        "another session of the tenant is still refused"
    );
    platform.assert_invariant("one", &key, 1, 1).await;
}

/// Two tabs of one session reconnect at once after their node was killed, at the tenant's exact limit: each
/// takes over one of the dead tunnels' slots, never both the same one (which would leave one of them
/// refused, and a slot held by nothing until the lease lapsed).
#[tokio::test]
async fn two_reconnects_at_once_each_take_over_a_slot_of_their_dead_tunnels() {
    let mut platform = Platform::start().await;
    let key = platform.tenant("one", 2).await;
    let path = platform.relay_session(&key, json!({})).await;
    let (first, _) = try_open(format!("{}{path}", platform.ws(2))).await;
    let (second, _) = try_open(format!("{}{path}", platform.ws(2))).await;
    let _held = (first.expect("within the limit"), second.expect("within"));
    platform.edges[2].process.kill().await;

    let (a, b) = tokio::join!(
        try_open(format!("{}{path}", platform.ws(0))),
        try_open(format!("{}{path}", platform.ws(1))),
    );
    assert!(
        a.0.is_some() && b.0.is_some(),
        "both reconnects are let in: {:?} {:?}",
        a.1,
        b.1
    );
    platform.assert_invariant("one", &key, 2, 2).await;
}

/// A tunnel that died with its node holds its tenant's slot for nobody, whichever session it was of. Two
/// pages at the tenant's exact limit, one of each session, lose their tunnels at once: A's with its
/// killed node, B's (on a live node) when the dead node carried its read. A's reconnect comes first and
/// finds B's slot free; B's then finds none, and takes the slot of A's dead tunnel (before: refused, 4429,
/// until the dead node's lease lapsed, though its own session had lost nothing to take over).
#[tokio::test]
async fn a_new_tunnel_at_the_limit_takes_the_slot_of_any_of_the_tenants_dead_tunnels() {
    let mut platform = Platform::start().await;
    let key = platform.tenant("two", 2).await;
    let a = platform.relay_session(&key, json!({})).await;
    let b = platform.relay_session(&key, json!({})).await;
    let (a_before, _) = try_open(format!("{}{a}", platform.ws(2))).await;
    let (b_before, _) = try_open(format!("{}{b}", platform.ws(0))).await;
    let _a_before = a_before.expect("within the limit");
    let mut b_before = b_before.expect("within the limit");
    platform.edges[2].process.kill().await;
    b_before.close(None).await.unwrap();
    let freed = || async { platform.slots("two").await == 1 };
    eventually(STEP, "B's old tunnel gives its slot back", freed).await;

    let (a_again, refused) = try_open(format!("{}{a}", platform.ws(0))).await;
    let _a_again = a_again.unwrap_or_else(|| panic!("A's reconnect: refused {refused:?}"));
    let (b_again, refused) = try_open(format!("{}{b}", platform.ws(1))).await;
    assert!(
        b_again.is_some(),
        "B's reconnect takes the dead tunnel's slot, not refused {refused:?}"
    );
    platform.assert_invariant("two", &key, 2, 2).await;
}

/// The other order, which no rule about dead nodes can settle: B's page reconnects first, because the
/// killed node carried its HTTP tunnel's read, while B's old tunnel lives on at its owner, which has not
/// yet noticed that the page gave it up. A reconnect that took any dead tunnel's slot would take A's, and
/// A's exclusive session would then find nothing to take (refused, 4429, until B's old tunnel timed out).
/// B's page names its old tunnel (`replaces`), and its reconnect takes that tunnel's slot and ends it
/// (521); A's takes the slot of its own dead tunnel.
#[tokio::test]
async fn a_reconnect_that_names_its_previous_tunnel_takes_that_slot_not_a_dead_one() {
    let mut platform = Platform::start().await;
    let key = platform
        .tenant_of_kinds("two", 2, &["vnc", "guacd-vnc"])
        .await;
    let a = platform
        .relay_session(&key, json!({"exclusive": true}))
        .await;
    let b = platform
        .session(&key, json!({"target": platform.guacd_target()}))
        .await;
    let b_data = connect_data(b["token"].as_str().unwrap());
    let (a_before, _) = try_open(format!("{}{a}", platform.ws(2))).await;
    let _a_before = a_before.expect("within the limit");
    let b_before = HttpTunnel::connect(&platform.http_url(0), &b_data)
        .await
        .expect("within the limit");
    let mut b_reads = b_before.read(vec![platform.http_url(0)]);
    platform.edges[2].process.kill().await;

    let replacing = format!("{b_data}&replaces={}", b_before.uuid);
    let b_again = HttpTunnel::connect(&platform.http_url(1), &replacing).await;
    assert!(b_again.is_ok(), "B's reconnect: {:?}", b_again.err());
    let (a_again, refused) = try_open(format!("{}{a}", platform.ws(0))).await;
    assert!(
        a_again.is_some(),
        "A's reconnect takes its dead tunnel's slot, not refused {refused:?}"
    );
    let ended = b_reads.until("error").await;
    let taken_over = ["Another connection took over this session.", "521"];
    assert_eq!(ended.args, taken_over, "B's old tunnel ends");
    platform.assert_invariant("two", &key, 2, 2).await;
}

/// At the tenant's exact limit, a new tunnel of an exclusive session is not refused because of the session's
/// own older tunnel, live on another node (a reconnect whose old tunnel's owner has not noticed it is gone):
/// it takes that tunnel's slot, and the older one is taken over.
#[tokio::test]
async fn an_exclusive_sessions_new_tunnel_at_the_limit_takes_its_older_ones_slot() {
    let platform = Platform::start().await;
    let key = platform.tenant("one", 1).await;
    let path = platform
        .relay_session(&key, json!({"exclusive": true}))
        .await;
    let (first, _) = try_open(format!("{}{path}", platform.ws(0))).await;
    let mut first = first.expect("within the limit");
    let (second, refused) = try_open(format!("{}{path}", platform.ws(1))).await;
    assert!(second.is_some(), "let in, not refused {refused:?}");
    assert_eq!(
        close_frame(&mut first).await.unwrap(),
        (4409, "taken over by another connection".into())
    );
    platform.assert_invariant("one", &key, 1, 1).await;
}

/// A node killed and started again at once as itself (a pod restarted in place) is a new incarnation: the
/// tunnels of its old one are lost, and a reconnect through it takes their slot, though the node id is its.
#[tokio::test]
async fn a_reconnect_through_a_node_started_again_as_itself_takes_its_old_tunnels_slot() {
    let mut platform = Platform::start().await;
    let key = platform.tenant("one", 1).await;
    let path = platform.relay_session(&key, json!({})).await;
    let (held, _) = try_open(format!("{}{path}", platform.ws(2))).await;
    let _held = held.expect("within the limit");
    platform.edges[2].process.kill().await;
    let url = platform.redis.url();
    platform.edges[2] = Edge::start_node("edge-3", &url, SECRET, &[], &LOOPBACK_ALLOWED)
        .await
        .unwrap();

    let (again, refused) = try_open(format!("{}{path}", platform.ws(2))).await;
    assert!(
        again.is_some(),
        "the reconnect is let in, not refused {refused:?}"
    );
    platform.assert_invariant("one", &key, 1, 1).await;
}

#[tokio::test]
async fn an_exclusive_session_keeps_only_its_newest_tunnel() {
    let platform = Platform::start().await;
    let session = platform
        .session(
            ACME,
            json!({"target": platform.vnc_target(), "exclusive": true}),
        )
        .await;
    let path = session["urls"]["websockify"].as_str().unwrap().to_owned();
    let (first, _) = try_open(format!("{}{path}", platform.ws(0))).await;
    let mut first = first.expect("the first connection opens");
    let (second, _) = try_open(format!("{}{path}", platform.ws(1))).await;
    let mut second = second.expect("the second connection takes over");
    assert_eq!(
        close_frame(&mut first).await.unwrap(),
        (4409, "taken over by another connection".into())
    );
    second.send(Message::binary(vec![9])).await.unwrap();
    let echoed = tokio::time::timeout(STEP, second.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), [9]);
    let id = session["id"].as_str().unwrap();
    let (_, seen) = platform
        .api("GET", &format!("/api/v1/sessions/{id}"), ACME, None)
        .await;
    let tunnels = seen["tunnels"].as_array().unwrap();
    assert_eq!(tunnels.len(), 1, "{seen}");
    assert_eq!(tunnels[0]["node"], "edge-2");
}
