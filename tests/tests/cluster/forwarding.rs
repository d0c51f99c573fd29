//! Any node serves any HTTP tunnel: connect on one node, read on another, write on a third, and every byte
//! arrives, in order, as if there were one node.

use sha2::{Digest, Sha256};

use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{HttpTunnel, connect_data};
use deskbroker_tests::flood;
use deskbroker_tests::redis::{Redis, RedisCluster};

use crate::Cluster;

/// Connect on node 1, every read on node 2, every write on node 3; then reads and writes round-robin over
/// all three. Output and input are checked by hash and order.
async fn tunnel_across_nodes(cluster: &Cluster) {
    let tunnel = match HttpTunnel::connect(&cluster.http(0), &connect_data("g")).await {
        Ok(t) => t,
        Err(e) => panic!("{e:?}\n{}", cluster.edges[0].process.logs()),
    };
    let mut reads = tunnel.read(vec![cluster.http(1)]);
    assert_eq!(
        reads.echo_of("select").await,
        ["vnc"],
        "the handshake reached guacd"
    );
    exchange(&tunnel, &mut reads, &[cluster.http(2)], 1).await;

    let tunnel = HttpTunnel::connect(&cluster.http(1), &connect_data("g"))
        .await
        .unwrap();
    let mut reads = tunnel.read(cluster.all_http());
    exchange(&tunnel, &mut reads, &cluster.all_http(), 2).await;
}

/// Asks guacd for a flood while sending keys; checks both ways.
async fn exchange(
    tunnel: &HttpTunnel,
    reads: &mut deskbroker_tests::clients::Reader,
    writers: &[String],
    seed: u64,
) {
    let (count, size) = (1500u64, 3000usize);
    let flood_command = Instruction::new(
        "x-flood",
        [count.to_string(), size.to_string(), seed.to_string()],
    );
    tunnel
        .write_to(&writers[0], flood_command.encode())
        .await
        .unwrap();
    let mut expected = Sha256::new();
    flood::instructions(count, size, seed).for_each(|i| expected.update(i.as_bytes()));

    let keys = 150;
    let writing = async {
        for i in 0..keys {
            let key = Instruction::new("key", [i.to_string(), "1".into()]);
            tunnel
                .write_to(
                    &writers[i % writers.len()],
                    format!("3.nop;{}", key.encode()),
                )
                .await
                .unwrap();
        }
    };
    let reading = async {
        let (mut received, mut data, mut echoed) = (Sha256::new(), 0, 0);
        while data < count || echoed < keys {
            let instruction = reads.next().await;
            match instruction.opcode.as_str() {
                "x-data" => {
                    received.update(instruction.encode().as_bytes());
                    data += 1;
                }
                "echo" if instruction.args[0] == "key" => {
                    assert_eq!(
                        instruction.args[1],
                        echoed.to_string(),
                        "writes arrive in order"
                    );
                    echoed += 1;
                }
                _ => {}
            }
        }
        received.finalize()
    };
    let ((), received) = tokio::join!(writing, reading);
    assert_eq!(
        received,
        expected.finalize(),
        "guacd's output arrived whole and in order"
    );
}

#[tokio::test]
async fn three_nodes_and_redis_serve_one_tunnel_together() {
    let redis = Redis::start().await.unwrap();
    let cluster = Cluster::start(&redis.url(), 3).await;
    tunnel_across_nodes(&cluster).await;
    // The registry shows each node once, and the tunnel under its owner.
    let nodes = redis.cli(&["hkeys", "deskbroker:nodes"]).await.unwrap();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
}

#[tokio::test]
async fn the_same_on_a_three_master_redis_cluster() {
    let redis = RedisCluster::start().await.unwrap();
    let cluster = Cluster::start(&redis.url(), 3).await;
    tunnel_across_nodes(&cluster).await;
}
