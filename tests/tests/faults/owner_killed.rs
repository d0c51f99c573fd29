//! An owner SIGKILLed under load: three edges carry 100 checksummed flows (raw relays to an echo desktop
//! on every node, and HTTP tunnels used through nodes other than their owner), and the first edge is
//! killed outright. Flows on the other nodes lose no byte; the dead node's clients are told within a
//! lease; no request hangs; the registry forgets the dead node and its tunnels.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use deskbroker_tests::clients::{HttpTunnel, connect_data};
use deskbroker_tests::flows::{End, open};
use deskbroker_tests::guac_flows::HttpFlow;
use deskbroker_tests::platform::{Platform, eventually};
use deskbroker_tests::process::LEASE;

use crate::{Running, all_ended, median_and_max, one_at_a_time, run_relay};

const RELAYS: usize = 93;
/// HTTP tunnels: the node that owns each, and the nodes its requests go through (never the owner, and
/// never the node killed unless it is the owner).
const HTTP_TUNNELS: [(usize, &[usize]); 7] = [
    (0, &[1]),
    (0, &[2]),
    (0, &[1, 2]),
    (1, &[2]),
    (1, &[2, 1]),
    (2, &[1]),
    (2, &[1, 2]),
];
const DOOMED: usize = 0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_killed_under_load_ends_its_own_tunnels_only() {
    let _alone = one_at_a_time().await;
    let mut platform = Platform::start().await;
    let kinds = ["vnc", "guacd-vnc"];
    let key = platform.tenant_of_kinds("busy", 200, &kinds).await;
    let path = platform.relay_session(&key, json!({})).await;
    let desk = platform
        .session(&key, json!({"target": platform.guacd_target()}))
        .await;
    let desk_token = desk["token"].as_str().unwrap().to_owned();

    let stop = CancellationToken::new();
    let mut relays = Vec::new();
    for i in 0..RELAYS {
        let node = i % 3;
        let socket = open(&format!("{}{path}", platform.ws(node))).await.unwrap();
        relays.push(run_relay(node, socket, i as u64, &stop));
    }
    let mut tunnels = Vec::new();
    for (i, (owner, through)) in HTTP_TUNNELS.iter().enumerate() {
        let data = connect_data(&desk_token);
        let tunnel = HttpTunnel::connect(&platform.http_url(*owner), &data)
            .await
            .unwrap();
        let via: Vec<String> = through.iter().map(|n| platform.http_url(*n)).collect();
        let flow = HttpFlow::new(tunnel, via.clone(), via, 1000 + i as u64);
        let task = tokio::spawn(flow.run(stop.clone()));
        tunnels.push(Running { node: *owner, task });
    }
    let flows = RELAYS + HTTP_TUNNELS.len();
    platform.assert_invariant("busy", &key, flows, 200).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let killed = Instant::now();
    platform.edges[DOOMED].process.kill().await;
    let (doomed_relays, relays): (Vec<_>, Vec<_>) =
        relays.into_iter().partition(|r| r.node == DOOMED);
    let (doomed_tunnels, tunnels): (Vec<_>, Vec<_>) =
        tunnels.into_iter().partition(|t| t.node == DOOMED);

    // The dead node's clients are told: each flow ends by itself, with a close or a failure.
    let mut told = Vec::new();
    for (_, _, report) in all_ended(doomed_relays).await {
        assert_told(&report.end);
        told.push(report.ended_at - killed);
    }
    for (_, _, report) in all_ended(doomed_tunnels).await {
        assert_told(&report.end);
        told.push(report.ended_at - killed);
    }
    let (median, slowest) = median_and_max(told.clone());
    assert!(
        slowest <= LEASE,
        "every client of the dead node is told within a lease ({LEASE:?}): {slowest:?}"
    );

    // The registry forgets it: its lease, its set, every record it owned.
    let forgotten = || async {
        let node = platform.redis.cli(&["HGET", "deskbroker:nodes", "edge-1"]);
        let set = ["SCARD", "deskbroker:node-tunnels:{edge-1}"];
        let owned = platform.tunnel_records().await;
        let owned = owned.iter().filter(|r| r["owner"] == "edge-1").count();
        node.await.unwrap().is_empty()
            && platform.redis.cli(&set).await.unwrap() == ["0"]
            && owned == 0
    };
    eventually(3 * LEASE, "the dead node's records are removed", forgotten).await;
    let records_gone = killed.elapsed();

    // Flows on the other nodes ran on through all of it: stopped now, every byte came back.
    stop.cancel();
    let relays = all_ended(relays).await;
    let tunnels = all_ended(tunnels).await;
    let (mut bytes, mut round_trips) = (0, 0);
    for (node, _, report) in &relays {
        assert!(report.lossless(), "relay on node {node}: {report:?}");
        bytes += report.echoed;
        round_trips += report.round_trips;
    }
    for (node, _, report) in &tunnels {
        assert!(report.lossless(), "HTTP tunnel owned by {node}: {report:?}");
        bytes += report.echoed;
        round_trips += report.round_trips;
    }
    let survivors = relays.len() + tunnels.len();
    eprintln!(
        "measured: owner killed under {flows} flows: {} clients of the dead node told in {median:?} \
         (median), {slowest:?} (slowest); its records gone {records_gone:?} after the kill; \
         {survivors} flows on the other nodes moved {bytes} bytes in {round_trips} round trips, none lost",
        told.len()
    );
    platform
        .assert_invariant("busy", &key, survivors, 200)
        .await;

    for (_, flow, _) in relays {
        flow.close().await;
    }
    for (_, flow, _) in tunnels {
        flow.disconnect().await;
    }
    let closed = || async { platform.slots("busy").await == 0 };
    eventually(2 * LEASE, "every slot comes back", closed).await;
    platform.assert_invariant("busy", &key, 0, 200).await;
}

/// A flow of the dead node ended the way a client notices: closed or failed, never hung, never with
/// wrong bytes, never still running.
fn assert_told(end: &End) {
    assert!(
        matches!(end, End::Closed(..) | End::Failed(_)),
        "the dead node's client is told: {end:?}"
    );
}
