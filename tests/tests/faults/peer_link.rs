//! The peer link between two nodes broken while both still see Redis: node A's peer listener sits behind a
//! link the test cuts (or stalls), and A advertises the link's end as its peer URL. An HTTP tunnel owned
//! by A and used through node B gets the documented status (502, Guacamole 520: the tunnel is lost for B,
//! reconnect; or 404/516 once A has ended it, its read having been cut); A's own clients, and its lease, are
//! untouched.

use std::time::Duration;

use serde_json::json;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use deskbroker_tests::Edge;
use deskbroker_tests::clients::{HttpTunnel, connect_data};
use deskbroker_tests::flows::{End, HANG, open};
use deskbroker_tests::guac_flows::HttpFlow;
use deskbroker_tests::platform::{LOOPBACK_ALLOWED, Platform, SECRET, eventually};
use deskbroker_tests::process::{LEASE, free_port};
use deskbroker_tests::proxy::Proxy;

use crate::{Running, all_ended, all_running, ended, one_at_a_time, run_relay};

/// The node behind the link, and the link.
struct Behind {
    edge: Edge,
    link: Proxy,
}

/// Starts node `edge-a` on the platform's Redis with its peer listener behind a [`Proxy`], advertised
/// as the proxy's address: other nodes (and the broker's live view) reach it only through the link.
async fn behind_a_link(platform: &Platform) -> Behind {
    let port = free_port().unwrap();
    let link = Proxy::start(([127, 0, 0, 1], port).into()).await.unwrap();
    let listen = format!("127.0.0.1:{port}");
    let advertise = format!("http://{}", link.addr);
    let args = ["--peer-listen", &listen, "--advertise", &advertise];
    let redis = platform.redis.url();
    let edge = Edge::start_node("edge-a", &redis, SECRET, &args, &LOOPBACK_ALLOWED)
        .await
        .unwrap();
    Behind { edge, link }
}

/// The status a write through `base` gets: 200, or the HTTP status and Guacamole status of a refusal.
/// The forward's deadline for the owner's answer (`PEER_HEAD_TIMEOUT` in edge/src/defaults.rs).
const HEAD_DEADLINE: Duration = Duration::from_secs(20);

async fn write_status(tunnel: &HttpTunnel, base: &str) -> (u16, Option<u16>) {
    let written = timeout(HANG, tunnel.write_to(base, "3.nop;")).await;
    match written.expect("the write is answered in time, not left hanging") {
        Ok(()) => (200, None),
        Err(error) => (error.http, error.guac),
    }
}

/// Whether A's lease runs, as the registry holds it.
async fn lease_runs(platform: &Platform) -> bool {
    let record = platform.redis.cli(&["HGET", "deskbroker:nodes", "edge-a"]);
    let record = record.await.unwrap();
    let record: serde_json::Value = serde_json::from_str(record.first().unwrap()).unwrap();
    let now = deskbroker_shared::time::unix_ms(std::time::SystemTime::now());
    record["expires_ms"].as_u64().unwrap() > now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_peer_link_fails_forwarded_requests_at_once_and_spares_the_owners_own_clients() {
    let _alone = one_at_a_time().await;
    let platform = Platform::start().await;
    let key = platform
        .tenant_of_kinds("linked", 10, &["vnc", "guacd-vnc"])
        .await;
    let path = platform.relay_session(&key, json!({})).await;
    let desk = platform
        .session(&key, json!({"target": platform.guacd_target()}))
        .await;
    let data = connect_data(desk["token"].as_str().unwrap());
    let Behind { edge: a, link } = behind_a_link(&platform).await;
    let (a_url, b_url) = (a.http_url(""), platform.http_url(0));

    // A's own clients: a relay, and an HTTP tunnel used through A. And one used through B.
    let stop = CancellationToken::new();
    let relay = run_relay(0, open(&a.ws_url(&path)).await.unwrap(), 1, &stop);
    let own = HttpTunnel::connect(&a_url, &data).await.unwrap();
    let own = HttpFlow::new(own, vec![a_url.clone()], vec![a_url.clone()], 2);
    let own = Running {
        node: 0,
        task: tokio::spawn(own.run(stop.clone())),
    };
    let forwarded = HttpTunnel::connect(&a_url, &data).await.unwrap();
    let forwarded = HttpFlow::new(forwarded, vec![b_url.clone()], vec![b_url.clone()], 3);
    let forwarded = Running {
        node: 1,
        task: tokio::spawn(forwarded.run(CancellationToken::new())),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    platform.assert_invariant("linked", &key, 3, 10).await;

    link.cut();
    let cut = Instant::now();
    let (_, forwarded, report) = ended(forwarded, HANG).await;
    let noticed = report.ended_at - cut;
    // Its read was cut with the link: the owner ends the tunnel (the read's bytes are lost, and a client
    // closes a tunnel whose read failed), so B finds it lost (520) or, once the owner removed its record,
    // gone (516). Either way the client through B is told.
    assert!(
        matches!(report.end, End::Closed(520 | 516, _) | End::Failed(_)),
        "the client through B is told: {report:?}"
    );
    let started = Instant::now();
    let status = write_status(&forwarded.tunnel, &b_url).await;
    let answered = started.elapsed();
    assert!(
        matches!(status, (502, Some(520)) | (404, Some(516))),
        "the tunnel is lost or gone, for B: {status:?}"
    );

    // A still sees Redis: its lease runs past a whole lease, and its own clients do not notice.
    tokio::time::sleep(LEASE).await;
    assert!(lease_runs(&platform).await, "A's lease runs on");
    assert!(all_running(std::slice::from_ref(&relay)) && all_running(std::slice::from_ref(&own)));
    stop.cancel();
    let mut own_flows = all_ended(vec![relay]).await;
    let (_, own, own_report) = all_ended(vec![own]).await.pop().unwrap();
    let (_, relay, relay_report) = own_flows.pop().unwrap();
    assert!(relay_report.lossless(), "A's relay: {relay_report:?}");
    assert!(own_report.lossless(), "A's own HTTP tunnel: {own_report:?}");
    eprintln!(
        "measured: peer link cut: the client through B told in {noticed:?}, a request through B \
         answered {status:?} in {answered:?}; through A, a relay ({} round trips) and an HTTP tunnel \
         ({} round trips) ran on, none lost",
        relay_report.round_trips, own_report.round_trips
    );
    // The tunnel whose read the cut took down is ended by A, which owns it, once it notices (at guacd's
    // next output at the latest): its read's bytes are lost, and a real client has closed it. Its slot
    // comes back with it; A's own tunnels run on.
    let ended = || async { platform.slots("linked").await == 2 };
    eventually(2 * LEASE, "the abandoned tunnel gives its slot back", ended).await;
    platform.assert_invariant("linked", &key, 2, 10).await;

    // Healed, B reaches A again, and finds the tunnel gone: its client opens a new one.
    link.heal();
    assert_eq!(
        write_status(&forwarded.tunnel, &b_url).await,
        (404, Some(516))
    );
    relay.close().await;
    own.disconnect().await;
    let closed = || async { platform.slots("linked").await == 0 };
    eventually(2 * LEASE, "every slot comes back", closed).await;
    platform.assert_invariant("linked", &key, 0, 10).await;
}

/// A peer link that stalls (bytes stop, connections stay open) rather than breaks: a request through B
/// must still be answered, with the status for an owner that cannot be reached, once the forward's
/// 20 s deadline for the owner's answer passes (the owner's lease runs: only the deadline can tell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_peer_link_answers_forwarded_requests_in_time() {
    let _alone = one_at_a_time().await;
    let platform = Platform::start().await;
    let key = platform
        .tenant_of_kinds("stalled", 10, &["guacd-vnc"])
        .await;
    let desk = platform
        .session(&key, json!({"target": platform.guacd_target()}))
        .await;
    let data = connect_data(desk["token"].as_str().unwrap());
    let Behind { edge: a, link } = behind_a_link(&platform).await;
    let b_url = platform.http_url(0);
    let tunnel = HttpTunnel::connect(&a.http_url(""), &data).await.unwrap();
    assert_eq!(write_status(&tunnel, &b_url).await, (200, None));

    link.pause();
    let started = Instant::now();
    let written = timeout(HEAD_DEADLINE + HANG, tunnel.write_to(&b_url, "3.nop;")).await;
    let status =
        match written.expect("the write is answered after the head deadline, not left hanging") {
            Ok(()) => (200, None),
            Err(error) => (error.http, error.guac),
        };
    eprintln!(
        "measured: peer link stalled: a request through B answered {status:?} in {:?}",
        started.elapsed()
    );
    assert_eq!(
        status,
        (502, Some(520)),
        "the owner cannot be reached: reconnect"
    );
    link.resume();
}
