//! A session deleted, then its tenant, while their tunnels carry traffic on every node: raw relays,
//! Guacamole WebSocket tunnels and HTTP tunnels used through other nodes. Every tunnel of the session,
//! then of the tenant, ends with the documented close (4410 "session closed" on a relay, 523
//! SESSION_CLOSED on a Guacamole tunnel), wherever it runs; the slots come back; another tenant's
//! tunnels never notice.

use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use deskbroker_tests::clients::{GuacWs, HttpTunnel, connect_data};
use deskbroker_tests::flows::{End, Report, open};
use deskbroker_tests::guac_flows::{GuacWsFlow, HttpFlow};
use deskbroker_tests::platform::{ACME, ADMIN, Platform, eventually};
use deskbroker_tests::process::LEASE;

use crate::{Running, all_ended, all_running, median_and_max, one_at_a_time, reports, run_relay};

const MAX: usize = 50;

/// Every flow ended with `expected`; returns how long after `since` each did.
fn closed_with(
    reports: &[Report],
    expected: &End,
    since: Instant,
    what: &str,
) -> Vec<std::time::Duration> {
    for report in reports {
        assert_eq!(&report.end, expected, "{what}: {report:?}");
    }
    reports.iter().map(|r| r.ended_at - since).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_session_then_its_tenant_ends_their_tunnels_everywhere() {
    let _alone = one_at_a_time().await;
    let platform = Platform::start().await;
    let key = platform
        .tenant_of_kinds("doomed", MAX as u32, &["vnc", "guacd-vnc"])
        .await;
    let stop = CancellationToken::new();

    // The session to delete first: nine relays, three on each node.
    let first = platform
        .session(&key, json!({"target": platform.vnc_target()}))
        .await;
    let first_path = first["urls"]["websockify"].as_str().unwrap();
    let mut first_relays = Vec::new();
    for i in 0..9 {
        let socket = open(&format!("{}{first_path}", platform.ws(i % 3))).await;
        first_relays.push(run_relay(i % 3, socket.unwrap(), i as u64, &stop));
    }
    // The tenant's other sessions: six relays, and on the guacd desktop a WebSocket tunnel on each node
    // and an HTTP tunnel owned by each node, used through the next.
    let second_path = platform.relay_session(&key, json!({})).await;
    let mut relays = Vec::new();
    for i in 0..6 {
        let socket = open(&format!("{}{second_path}", platform.ws(i % 3))).await;
        relays.push(run_relay(i % 3, socket.unwrap(), 100 + i as u64, &stop));
    }
    let desk = platform
        .session(&key, json!({"target": platform.guacd_target()}))
        .await;
    let data = connect_data(desk["token"].as_str().unwrap());
    let mut guac_ws = Vec::new();
    let mut http = Vec::new();
    for node in 0..3 {
        let tunnel = GuacWs::connect(&platform.ws(node), &data).await.unwrap();
        let flow = GuacWsFlow::new(tunnel, 200 + node as u64);
        let task = tokio::spawn(flow.run(stop.clone()));
        guac_ws.push(Running { node, task });
        let tunnel = HttpTunnel::connect(&platform.http_url(node), &data)
            .await
            .unwrap();
        let via = vec![platform.http_url((node + 1) % 3)];
        let flow = HttpFlow::new(tunnel, via.clone(), via, 300 + node as u64);
        let task = tokio::spawn(flow.run(stop.clone()));
        http.push(Running { node, task });
    }
    // Another tenant, on the same nodes and desktop.
    let acme_path = platform.relay_session(ACME, json!({})).await;
    let mut bystanders = Vec::new();
    for node in 0..3 {
        let socket = open(&format!("{}{acme_path}", platform.ws(node))).await;
        bystanders.push(run_relay(node, socket.unwrap(), 400 + node as u64, &stop));
    }
    platform.assert_invariant("doomed", &key, 21, MAX).await;
    platform.assert_invariant("acme", ACME, 3, 5).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;

    let id = first["id"].as_str().unwrap();
    let deleted = Instant::now();
    let (status, _) = platform
        .api("DELETE", &format!("/api/v1/sessions/{id}"), &key, None)
        .await;
    assert_eq!(status, 204);
    let first_reports = reports(all_ended(first_relays).await);
    let session_closed = End::Closed(4410, "session closed".into());
    let times = closed_with(
        &first_reports,
        &session_closed,
        deleted,
        "the deleted session's relay",
    );
    let (session_median, session_max) = median_and_max(times);
    let gone = || async { platform.slots("doomed").await == 12 };
    eventually(2 * LEASE, "the deleted session's slots come back", gone).await;
    let others_run = all_running(&relays) && all_running(&guac_ws) && all_running(&http);
    assert!(others_run, "the tenant's other sessions' tunnels run on");
    platform.assert_invariant("doomed", &key, 12, MAX).await;

    let removed = Instant::now();
    let (status, _) = platform
        .api("DELETE", "/api/v1/tenants/doomed", ADMIN, None)
        .await;
    assert_eq!(status, 204);
    let mut times = Vec::new();
    let relay_reports = reports(all_ended(relays).await);
    times.extend(closed_with(
        &relay_reports,
        &session_closed,
        removed,
        "relay",
    ));
    let guac_closed = End::Closed(1002, "523".into());
    let ws_reports = reports(all_ended(guac_ws).await);
    times.extend(closed_with(
        &ws_reports,
        &guac_closed,
        removed,
        "WebSocket tunnel",
    ));
    let http_reports = reports(all_ended(http).await);
    for report in &http_reports {
        assert!(
            matches!(report.end, End::Closed(523, _)),
            "the HTTP tunnel's reader is told SESSION_CLOSED: {report:?}"
        );
        times.push(report.ended_at - removed);
    }
    let (tenant_median, tenant_max) = median_and_max(times);
    let gone = || async { platform.slots("doomed").await == 0 };
    eventually(2 * LEASE, "the removed tenant's slots come back", gone).await;
    let slots_back = removed.elapsed();
    platform.assert_removed("doomed", &key).await;

    stop.cancel();
    let mut bytes = 0;
    for (node, flow, report) in all_ended(bystanders).await {
        assert!(report.lossless(), "acme's relay on node {node}: {report:?}");
        bytes += report.echoed;
        flow.close().await;
    }
    eprintln!(
        "measured: session deleted under traffic: its 9 relays on 3 nodes closed 4410 in \
         {session_median:?} (median), {session_max:?} (slowest); tenant removed: its 12 tunnels \
         (relays 4410, WebSocket tunnels 1002 \"523\", HTTP tunnels 523) closed in {tenant_median:?} \
         (median), {tenant_max:?} (slowest), its slots back {slots_back:?} after; another tenant's 3 \
         relays moved {bytes} bytes meanwhile, none lost"
    );
    let closed = || async { platform.slots("acme").await == 0 };
    eventually(2 * LEASE, "acme's slots come back", closed).await;
    platform.assert_invariant("acme", ACME, 0, 5).await;
}
