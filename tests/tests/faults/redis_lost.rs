//! The registry lost under traffic: Redis killed and restarted empty, and one master of a three-master
//! Redis Cluster (no replicas) killed and restarted empty. Open tunnels never wait on Redis, so they flow
//! on byte for byte; what Redis lost comes back from those who hold it (the nodes their leases and
//! tunnels, the broker its configured tenants). Tenants and sessions made through the API are not among
//! them: the scenarios use a configured tenant, and on the Cluster a session whose keys the killed master
//! does not hold.

use serde_json::{Value, json};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use deskbroker_shared::ids::{SessionId, TokenDigest};
use deskbroker_tests::clients::{HttpTunnel, Ws, connect_data, ws_connect};
use deskbroker_tests::flows::{HANG, RelayFlow, open};
use deskbroker_tests::guac_flows::HttpFlow;
use deskbroker_tests::platform::{Options, Platform, configured_tenant, eventually};
use deskbroker_tests::process::LEASE;
use deskbroker_tests::redis::{Keyspace, RedisCluster, RedisSentinel};

use crate::{Running, all_ended, one_at_a_time, run_relay};

/// A tenant of the broker's configuration: written again by the broker when Redis comes back empty.
const STEADY: &str = "steady-key-0123456789";
const MAX: usize = 100;
const RELAYS: usize = 30;

fn options() -> Options {
    Options {
        tenants: vec![configured_tenant("steady", STEADY, MAX as u32)],
        ..Options::default()
    }
}

/// Opens `count` relays on `path`, spread over the nodes, each running a flow until `stop`.
async fn relays<R: Keyspace>(
    platform: &Platform<R>,
    path: &str,
    count: usize,
    stop: &CancellationToken,
) -> Vec<Running<RelayFlow>> {
    let mut running = Vec::new();
    for i in 0..count {
        let node = i % platform.edges.len();
        let socket = open(&format!("{}{path}", platform.ws(node))).await.unwrap();
        running.push(run_relay(node, socket, i as u64, stop));
    }
    running
}

/// Tries to open a relay while the registry is (partly) away: the socket if it opened, or the close
/// code; never a wait past [`HANG`].
async fn attempt(url: &str) -> Result<Ws, u16> {
    let (mut socket, _) = ws_connect(url, &[]).await.unwrap();
    let answer = timeout(HANG, async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let _ = socket.send(Message::binary(vec![7])).await;
        loop {
            match socket.next().await {
                Some(Ok(Message::Binary(_))) => return Ok(()),
                Some(Ok(Message::Close(Some(frame)))) => return Err(frame.code.into()),
                Some(Ok(_)) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    match answer.await.expect("a connect is answered in time") {
        Ok(()) => Ok(socket),
        Err(code) => Err(code),
    }
}

/// Stops the flows and checks that every byte came back; returns the bytes moved and the flows.
async fn lossless<F>(stop: &CancellationToken, running: Vec<Running<F>>) -> (u64, Vec<F>) {
    stop.cancel();
    let mut bytes = 0;
    let mut flows = Vec::new();
    for (node, flow, report) in all_ended(running).await {
        assert!(report.lossless(), "flow on node {node}: {report:?}");
        bytes += report.echoed;
        flows.push(flow);
    }
    (bytes, flows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_flow_while_redis_restarts_empty_and_are_recorded_again() {
    let _alone = one_at_a_time().await;
    let mut platform = Platform::start_with(options()).await;
    let path = platform.relay_session(STEADY, json!({})).await;
    let desk = platform
        .session(STEADY, json!({"target": platform.guacd_target()}))
        .await;
    let stop = CancellationToken::new();
    let relays = relays(&platform, &path, RELAYS, &stop).await;
    // An HTTP tunnel owned by the first node, used through the second, which has its owner cached.
    let data = connect_data(desk["token"].as_str().unwrap());
    let tunnel = HttpTunnel::connect(&platform.http_url(0), &data)
        .await
        .unwrap();
    let via = vec![platform.http_url(1)];
    let forwarded = HttpFlow::new(tunnel, via.clone(), via, 99);
    let forwarded = vec![Running {
        node: 0,
        task: tokio::spawn(forwarded.run(stop.clone())),
    }];
    let open = RELAYS + 1;
    platform.assert_invariant("steady", STEADY, open, MAX).await;

    // Down for a lease: every node misses more than two renewals, and doubts its lease.
    platform.redis.kill().await;
    let killed = Instant::now();
    let refused = attempt(&format!("{}{path}", platform.ws(2))).await.err();
    let refused_in = killed.elapsed();
    assert_eq!(refused, Some(4503), "a connect without Redis: try again");
    tokio::time::sleep(LEASE.saturating_sub(refused_in)).await;
    platform.redis.restart().await.unwrap();
    let restarted = Instant::now();

    let nodes = || async {
        let nodes = platform.redis.cli(&["HLEN", "deskbroker:nodes"]).await;
        nodes.unwrap() == ["3"]
    };
    eventually(3 * LEASE, "every node records itself again", nodes).await;
    let nodes_back = restarted.elapsed();
    let tenant = || async {
        let found = platform
            .redis
            .cli(&["HEXISTS", "deskbroker:tenants", "steady"]);
        found.await.unwrap() == ["1"]
    };
    eventually(3 * LEASE, "the configured tenant is written again", tenant).await;
    let tenant_back = restarted.elapsed();
    let recorded = || async {
        platform.records("steady").await == open && platform.slots("steady").await == open
    };
    eventually(3 * LEASE, "every open tunnel is recorded again", recorded).await;
    let tunnels_back = restarted.elapsed();

    let (bytes, relays) = lossless(&stop, relays).await;
    let (http_bytes, mut forwarded) = lossless(&stop, forwarded).await;
    // Recorded again, the tunnels count against the quota and are found by owner; their sessions were
    // made through the API and are gone with Redis's data, so the live view has nothing to list them by.
    let listed = platform.listed(STEADY).await;
    eprintln!(
        "measured: Redis restarted empty under {open} flows: a connect meanwhile refused (4503) in \
         {refused_in:?}; nodes back {nodes_back:?}, the configured tenant {tenant_back:?}, every \
         tunnel recorded again {tunnels_back:?} after the restart; {} bytes moved, none lost; the live \
         view lists {listed} of them (their API-made sessions were lost)",
        bytes + http_bytes
    );
    assert_eq!(platform.records("steady").await, open);
    assert_eq!(platform.slots("steady").await, open);

    for flow in relays {
        flow.close().await;
    }
    forwarded.pop().unwrap().disconnect().await;
    let closed = || async { platform.slots("steady").await == 0 };
    eventually(2 * LEASE, "every slot comes back", closed).await;
    platform.assert_invariant("steady", STEADY, 0, MAX).await;
    // And a session made afterwards is a session like any other.
    let path = platform.relay_session(STEADY, json!({})).await;
    let stop = CancellationToken::new();
    let after = self::relays(&platform, &path, 6, &stop).await;
    platform.assert_invariant("steady", STEADY, 6, MAX).await;
    let (_, after) = lossless(&stop, after).await;
    for flow in after {
        flow.close().await;
    }
}

/// A registry that lost its data, before the broker has written its tenants back (it looks every 2 s): a
/// connect with a configured tenant's sealed token is told to try again (4503), not that its token is bad
/// (4403, which a client gives up on), and opens once the tenants are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_before_the_tenants_are_written_back_is_told_to_try_again() {
    let _alone = one_at_a_time().await;
    let platform = Platform::start_with(options()).await;
    let path = platform.relay_session(STEADY, json!({})).await;
    platform.broker.process.freeze().await.unwrap();
    platform.redis.cli(&["FLUSHALL"]).await.unwrap();
    let url = format!("{}{path}", platform.ws(0));
    let refused = attempt(&url).await.err();
    platform.broker.process.thaw().await.unwrap();
    assert_eq!(
        refused,
        Some(4503),
        "a valid token while its tenant is not back yet: try again"
    );
    let opens = || async { attempt(&url).await.is_ok() };
    eventually(
        3 * LEASE,
        "the connect opens once the tenants are back",
        opens,
    )
    .await;
}

/// The keys a session lives by, for finding where a Cluster keeps them.
fn session_keys(session: &Value) -> [String; 2] {
    let token = session["token"].as_str().unwrap();
    let id = SessionId::new(session["id"].as_str().unwrap());
    [
        deskbroker_shared::keys::session(&TokenDigest::of(token)),
        deskbroker_shared::keys::session_id(&id),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_flow_while_a_cluster_master_is_lost_and_nodes_record_again() {
    let _alone = one_at_a_time().await;
    let cluster = RedisCluster::start().await.unwrap();
    let mut platform = Platform::start_on(cluster, options()).await;
    // The master that holds the leases (`deskbroker:nodes`): while it is away no node can renew.
    let victim = platform
        .redis
        .master_of(deskbroker_shared::keys::NODES)
        .await;
    let victim = victim.unwrap();
    // A session made through the API is lost with the master that holds it; take one whose keys the
    // victim does not hold, so that its tunnels can be listed afterwards.
    let mut session = Value::Null;
    for _ in 0..50 {
        let made = platform
            .session(STEADY, json!({"target": platform.vnc_target()}))
            .await;
        let mut holders = Vec::new();
        for key in session_keys(&made) {
            holders.push(platform.redis.master_of(&key).await.unwrap());
        }
        if !holders.contains(&victim) {
            session = made;
            break;
        }
    }
    let path = session["urls"]["websockify"].as_str().unwrap().to_owned();
    let stop = CancellationToken::new();
    let relays = relays(&platform, &path, RELAYS, &stop).await;
    platform
        .assert_invariant("steady", STEADY, RELAYS, MAX)
        .await;

    platform.redis.masters[victim].kill().await;
    let killed = Instant::now();
    // Meanwhile: connects are answered at once, opened or refused with "try again".
    let mut opened_meanwhile = Vec::new();
    let mut refused = 0;
    for node in 0..3 {
        match attempt(&format!("{}{path}", platform.ws(node))).await {
            Ok(socket) => opened_meanwhile.push(RelayFlow::new(socket, 500, crate::BUSY)),
            Err(code) => {
                assert_eq!(code, 4503, "refused with the retry status");
                refused += 1;
            }
        }
    }
    let down = || async { !platform.redis.is_ok().await };
    eventually(5 * LEASE, "the other masters see the cluster down", down).await;
    let cluster_down = killed.elapsed();
    // Once the cluster is down, every command fails, on every master.
    let url = format!("{}{path}", platform.ws(1));
    let while_down = attempt(&url).await.err();
    assert_eq!(while_down, Some(4503));
    tokio::time::sleep(LEASE).await;

    platform.redis.masters[victim].restart().await.unwrap();
    let restarted = Instant::now();
    let ok = || async { platform.redis.is_ok().await };
    eventually(5 * LEASE, "the cluster is whole again", ok).await;
    let cluster_ok = restarted.elapsed();
    let open = RELAYS + opened_meanwhile.len();
    let recorded = || async {
        platform.records("steady").await == open && platform.slots("steady").await == open
    };
    eventually(3 * LEASE, "every open tunnel is recorded again", recorded).await;
    let tunnels_back = restarted.elapsed();

    let (bytes, relays) = lossless(&stop, relays).await;
    eprintln!(
        "measured: Redis Cluster master {victim} (the leases) killed under {RELAYS} relays: connects \
         meanwhile {} opened, {refused} refused (4503), at once; cluster down after {cluster_down:?}; \
         restarted empty, whole again {cluster_ok:?} and every tunnel recorded again \
         {tunnels_back:?} after; {bytes} bytes moved, none lost",
        opened_meanwhile.len()
    );
    platform.assert_invariant("steady", STEADY, open, MAX).await;
    for flow in relays.into_iter().chain(opened_meanwhile) {
        flow.close().await;
    }
    let closed = || async { platform.slots("steady").await == 0 };
    eventually(2 * LEASE, "every slot comes back", closed).await;
    platform.assert_invariant("steady", STEADY, 0, MAX).await;
}

/// A master without a replica that comes back empty before the other masters mark it failed (within
/// `cluster-node-timeout`) has lost what its slots held, while no command of the leases failed: no node
/// doubts its lease. Each node sees the master's new run, and records its tunnels again (before: 12 of
/// 30 records and all 30 slots were lost for good). Here the master holding the tenant's slot set,
/// killed for a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_back_empty_before_the_cluster_notices_gets_its_records_back() {
    let _alone = one_at_a_time().await;
    let cluster = RedisCluster::start().await.unwrap();
    let mut platform = Platform::start_on(cluster, options()).await;
    let slots_key =
        deskbroker_shared::keys::tenant_tunnels(&deskbroker_shared::ids::TenantId::new("steady"));
    let victim = platform.redis.master_of(&slots_key).await.unwrap();
    let path = platform.relay_session(STEADY, json!({})).await;
    let stop = CancellationToken::new();
    let relays = relays(&platform, &path, RELAYS, &stop).await;
    platform
        .assert_invariant("steady", STEADY, RELAYS, MAX)
        .await;

    platform.redis.masters[victim].kill().await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    platform.redis.masters[victim].restart().await.unwrap();
    let ok = || async { platform.redis.is_ok().await };
    eventually(5 * LEASE, "the cluster is whole again", ok).await;
    let restarted = Instant::now();
    let recorded = || async {
        platform.records("steady").await == RELAYS && platform.slots("steady").await == RELAYS
    };
    eventually(3 * LEASE, "every open tunnel is recorded again", recorded).await;
    let tunnels_back = restarted.elapsed();
    let (bytes, relays) = lossless(&stop, relays).await;
    eprintln!(
        "measured: Redis Cluster master {victim} (the tenant's slots) back empty after a second, \
         before the cluster noticed: every tunnel recorded again {tunnels_back:?} after; {bytes} \
         bytes moved, none lost"
    );
    for flow in relays {
        flow.close().await;
    }
    let closed = || async { platform.slots("steady").await == 0 };
    eventually(2 * LEASE, "every slot comes back", closed).await;
    // The tenant's key may have lived on the master too: the broker writes its configured tenants back
    // when it sees the master's new run, within a restore period (2 s).
    let key_back = || async {
        let (status, _) = platform.api("GET", "/api/v1/sessions", STEADY, None).await;
        status == 200
    };
    eventually(
        3 * LEASE,
        "the configured tenant's key opens the API again",
        key_back,
    )
    .await;
    platform.assert_invariant("steady", STEADY, 0, MAX).await;
}

/// Redis behind Sentinel, as the common Kubernetes Redis charts run it: the master killed under traffic.
/// The sentinels promote its replica, which has the data; the nodes and the broker follow them to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_flow_through_a_sentinel_failover_and_connects_come_back() {
    let _alone = one_at_a_time().await;
    let sentinel = RedisSentinel::start().await.unwrap();
    let mut platform = Platform::start_on(sentinel, options()).await;
    let path = platform.relay_session(STEADY, json!({})).await;
    let stop = CancellationToken::new();
    let relays = relays(&platform, &path, RELAYS, &stop).await;
    platform
        .assert_invariant("steady", STEADY, RELAYS, MAX)
        .await;

    let before = platform.redis.master_port().await.unwrap();
    platform.redis.servers[0].kill().await;
    let killed = Instant::now();
    let promoted = || async {
        let now = platform.redis.master_port().await;
        now.is_ok_and(|port| port != before)
    };
    eventually(6 * LEASE, "the sentinels promote the replica", promoted).await;
    let failed_over = killed.elapsed();
    // Connects are refused with "try again" until the nodes follow, then open, with the session made
    // before the failover (the replica has it).
    let url = format!("{}{path}", platform.ws(1));
    let mut refused = 0;
    let reopened = loop {
        match attempt(&url).await {
            Ok(socket) => break socket,
            Err(4503) if killed.elapsed() < 6 * LEASE => refused += 1,
            Err(code) => panic!("a connect after the failover was refused with {code}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let connects_back = killed.elapsed();

    let (bytes, relays) = lossless(&stop, relays).await;
    // A failover about as long as the lease lets the nodes' leases lapse on the new master until they
    // renew there (within a retry of its promotion), and a node that another cleaned up after records its
    // tunnels again: the registry and the live view agree again within a few renewals.
    let agree = || async {
        platform.records("steady").await == RELAYS + 1
            && platform.slots("steady").await == RELAYS + 1
            && platform.listed(STEADY).await == RELAYS + 1
    };
    eventually(
        3 * LEASE,
        "the registry and the live view agree again",
        agree,
    )
    .await;
    let listed_back = killed.elapsed();
    eprintln!(
        "measured: Sentinel failover under {RELAYS} relays: the replica promoted {failed_over:?} after \
         the master's death, connects open again after {connects_back:?} ({refused} refused with 4503 \
         meanwhile), the live view lists every tunnel again after {listed_back:?}; {bytes} bytes moved, \
         none lost"
    );
    platform
        .assert_invariant("steady", STEADY, RELAYS + 1, MAX)
        .await;
    for flow in relays {
        flow.close().await;
    }
    drop(reopened);
}
