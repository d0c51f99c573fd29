//! Things going wrong in a cluster: an owner killed outright or frozen, Redis stopped and restarted empty.

use std::time::Duration;

use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{HttpError, HttpTunnel, STEP, connect_data};
use deskbroker_tests::redis::Redis;

use crate::Cluster;

/// What a client is told of a tunnel whose node is gone: 502 with 520 UPSTREAM_UNAVAILABLE, which says to
/// open it again (a tunnel that ended is 404/516).
fn lost() -> Option<(u16, Option<u16>)> {
    Some((502, Some(520)))
}

/// Polls `probe` until it returns true, for at most `limit`.
async fn within<F, Fut>(limit: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A round trip through a tunnel from `node`: a key written comes back as an echo.
async fn round_trip(
    tunnel: &HttpTunnel,
    node: &str,
    reads: &mut deskbroker_tests::clients::Reader,
    n: usize,
) {
    let key = Instruction::new("key", [n.to_string(), "1".into()]);
    tunnel.write_to(node, key.encode()).await.unwrap();
    loop {
        if reads.echo_of("key").await[0] == n.to_string() {
            return;
        }
    }
}

#[tokio::test]
async fn killing_an_owner_ends_its_tunnels_only() {
    let redis = Redis::start().await.unwrap();
    let mut cluster = Cluster::start(&redis.url(), 3).await;
    let doomed = HttpTunnel::connect(&cluster.http(0), &connect_data("g"))
        .await
        .unwrap();
    let survivor = HttpTunnel::connect(&cluster.http(1), &connect_data("g"))
        .await
        .unwrap();
    // Both are used from node 3, so node 3 knows both owners.
    let mut doomed_reads = doomed.read(vec![cluster.http(2)]);
    let mut survivor_reads = survivor.read(vec![cluster.http(2)]);
    round_trip(&doomed, &cluster.http(2), &mut doomed_reads, 0).await;
    round_trip(&survivor, &cluster.http(2), &mut survivor_reads, 0).await;

    cluster.edges[0].process.kill().await; // kill -9
    let lease = deskbroker_tests::process::LEASE;
    let gone = within(lease + STEP / 10, || async {
        doomed
            .write_to(&cluster.http(2), "3.nop;")
            .await
            .err()
            .map(|e| (e.http, e.guac))
            == lost()
    })
    .await;
    assert!(
        gone,
        "the dead owner's tunnel reads as lost (502/520) within a lease"
    );
    let (_, ending) = doomed_reads.end().await;
    assert!(!matches!(
        ending,
        deskbroker_tests::clients::ReadEvent::Instruction(_)
    ));

    for n in 1..50 {
        round_trip(&survivor, &cluster.http(2), &mut survivor_reads, n).await;
    }
    // The survivor's client goes on writing meanwhile, as guacamole-common-js does (a client that stops
    // writing while it reads is taken for one whose writes are stuck, and told to reconnect).
    let forgotten = || async {
        let tunnels = redis
            .cli(&["smembers", "deskbroker:node-tunnels:{edge-1}"])
            .await
            .unwrap();
        let node = redis
            .cli(&["hget", "deskbroker:nodes", "edge-1"])
            .await
            .unwrap();
        tunnels.is_empty() && node.is_empty()
    };
    let deadline = tokio::time::Instant::now() + lease * 3;
    let mut n = 50;
    let mut cleaned = false;
    while !cleaned && tokio::time::Instant::now() < deadline {
        n += 1;
        round_trip(&survivor, &cluster.http(2), &mut survivor_reads, n).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        cleaned = forgotten().await;
    }
    assert!(cleaned, "the registry forgot the dead node and its tunnels");
    let live = redis
        .cli(&["smembers", "deskbroker:node-tunnels:{edge-2}"])
        .await
        .unwrap();
    assert_eq!(live.len(), 1, "the survivor is still recorded");
}

#[tokio::test]
async fn a_frozen_owners_tunnel_reads_as_lost_once_its_lease_lapses() {
    let redis = Redis::start().await.unwrap();
    let cluster = Cluster::start(&redis.url(), 3).await;
    let tunnel = HttpTunnel::connect(&cluster.http(0), &connect_data("g"))
        .await
        .unwrap();
    // Node 2 reads and writes it, so node 2 has the owner cached; node 3 has never seen it.
    let mut reads = tunnel.read(vec![cluster.http(1)]);
    round_trip(&tunnel, &cluster.http(1), &mut reads, 0).await;

    // The owner stops answering without closing anything: its peer port still accepts connections.
    cluster.edges[0].process.freeze().await.unwrap();
    let answered_in = deskbroker_tests::process::LEASE + STEP / 2;
    let through_cache = cluster.http(1);
    let write = tunnel.write_to(&through_cache, "3.nop;");
    let read = async {
        let response = tunnel
            .http
            .get(format!("{}/tunnel?read:{}:9", cluster.http(2), tunnel.uuid))
            .header("guacamole-tunnel-token", &tunnel.token)
            .send()
            .await
            .unwrap();
        let code = response.headers().get("guacamole-status-code");
        let code = code.map(|c| c.to_str().unwrap().parse::<u16>().unwrap());
        (response.status().as_u16(), code)
    };
    let (write, read, ending) = tokio::join!(
        tokio::time::timeout(answered_in, write),
        tokio::time::timeout(answered_in, read),
        tokio::time::timeout(answered_in, reads.end()),
    );
    cluster.edges[0].process.thaw().await.unwrap();

    assert_eq!(
        (write.is_ok(), read.is_ok(), ending.is_ok()),
        (true, true, true),
        "answered within {answered_in:?}: a write through the node that cached the owner, a read through \
         one that looks it up, the read that was in flight"
    );
    assert_eq!(write.unwrap().err().map(|e| (e.http, e.guac)), lost());
    assert_eq!(read.map(Some).unwrap(), lost());
    let (_, ending) = ending.unwrap();
    assert!(
        !matches!(ending, deskbroker_tests::clients::ReadEvent::Instruction(_)),
        "{ending:?}"
    );
}

/// A node killed and started again at once as itself (a container restarted in place) opens tunnels as its
/// new incarnation before the other nodes' views of the cluster have caught up: they forward to it, and do
/// not take its new tunnels for lost with its old incarnation.
#[tokio::test]
async fn a_tunnel_of_a_node_started_again_as_itself_is_forwarded_at_once() {
    let redis = Redis::start().await.unwrap();
    let mut cluster = Cluster::start(&redis.url(), 2).await;
    // Node 1 knows node 2's first incarnation.
    let before = HttpTunnel::connect(&cluster.http(1), &connect_data("g"))
        .await
        .unwrap();
    let mut reads = before.read(vec![cluster.http(0)]);
    round_trip(&before, &cluster.http(0), &mut reads, 0).await;

    cluster.start_again(1).await;
    let after = HttpTunnel::connect(&cluster.http(1), &connect_data("g"))
        .await
        .unwrap();
    let through = cluster.http(0);
    assert_eq!(
        after.write_to(&through, "3.nop;").await,
        Ok(()),
        "the new incarnation's tunnel is forwarded to"
    );
    let mut reads = after.read(vec![through.clone()]);
    round_trip(&after, &through, &mut reads, 1).await;
}

/// guacamole-common-js sends one write at a time, and a `nop` every 500 ms: a write that lands on a node
/// frozen before the load balancer noticed holds back every write after it. The tunnel's owner sees its
/// client's writes stop and ends the tunnel with 520, which says to reconnect, before guacd drops the user
/// for its silence (776, which says stop).
#[tokio::test]
async fn a_write_stuck_on_a_frozen_node_ends_its_tunnel_with_the_retry_status() {
    let redis = Redis::start().await.unwrap();
    let cluster = Cluster::start(&redis.url(), 3).await;
    let tunnel = HttpTunnel::connect(&cluster.http(0), &connect_data("g"))
        .await
        .unwrap();
    let mut reads = tunnel.read(vec![cluster.http(0)]);
    for n in 0..20 {
        round_trip(&tunnel, &cluster.http(0), &mut reads, n).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    cluster.edges[1].process.freeze().await.unwrap();
    let frozen = tokio::time::Instant::now();
    let frozen_node = cluster.http(1);
    let stuck = tunnel.write_to(&frozen_node, "3.nop;");
    let (seen, _) = tokio::select! {
        _ = stuck => panic!("the frozen node answered"),
        ended = reads.end() => ended,
    };
    let told_in = frozen.elapsed();
    cluster.edges[1].process.thaw().await.unwrap();

    let error = seen.iter().find(|i| i.opcode == "error");
    let status = error.map(|e| e.args[1].as_str());
    assert_eq!(status, Some("520"), "{seen:?}");
    eprintln!(
        "measured: a client whose write stuck on a frozen node was told to reconnect in {told_in:?}"
    );
}

#[tokio::test]
async fn tunnels_flow_while_redis_is_down_and_nodes_recover_when_it_returns_empty() {
    let mut redis = Redis::start().await.unwrap();
    let cluster = Cluster::start(&redis.url(), 3).await;
    let tunnel = HttpTunnel::connect(&cluster.http(0), &connect_data("g"))
        .await
        .unwrap();
    let mut reads = tunnel.read(vec![cluster.http(1)]);
    round_trip(&tunnel, &cluster.http(1), &mut reads, 0).await;

    redis.kill().await;
    // Open tunnels keep flowing, local and forwarded (the owner is cached).
    for n in 1..30 {
        round_trip(&tunnel, &cluster.http(1), &mut reads, n).await;
        round_trip(&tunnel, &cluster.http(0), &mut reads, 100 + n).await;
    }
    // New tunnels are refused at once, with a clear status.
    let started = tokio::time::Instant::now();
    let refused = HttpTunnel::connect(&cluster.http(2), &connect_data("g"))
        .await
        .err();
    assert_eq!(
        refused.map(|e: HttpError| (e.http, e.guac)),
        Some((503, Some(520)))
    );
    assert!(started.elapsed() < STEP, "refused promptly");

    redis.restart().await.unwrap();
    // Sessions were in Redis and are gone with it; the backend would store them again. The nodes put
    // themselves and their tunnels back, so a node that never saw this tunnel can find its owner.
    let recovered = within(Duration::from_secs(6), || async {
        redis.cli(&["hlen", "deskbroker:nodes"]).await.unwrap() == ["3"]
    })
    .await;
    assert!(recovered, "every node registered again");
    let found = within(Duration::from_secs(4), || async {
        tunnel.write_to(&cluster.http(2), "3.nop;").await.is_ok()
    })
    .await;
    assert!(
        found,
        "forwarding from a node that had never seen the tunnel works again"
    );
    round_trip(&tunnel, &cluster.http(2), &mut reads, 1000).await;
}
