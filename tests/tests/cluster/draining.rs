//! A node stopped (SIGTERM) while it carries a forwarded HTTP-tunnel read: two edges on Redis, a tunnel
//! owned by the first, its reads through the second, on a desktop so quiet that a read stays open for
//! seconds. The second is told to stop and the "load balancer" sends new reads to the first, as one
//! would once the second turns not ready. The read the stopping node carries ends cleanly, at an
//! instruction boundary (`0.;`), instead of being cut when the node exits; the tunnel goes on through
//! the first node and loses nothing: every key written across the stop is echoed, in order, and a
//! checksummed flood arrives whole.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{HttpTunnel, ReadEvent, connect_data};
use deskbroker_tests::flood;
use deskbroker_tests::redis::Redis;
use deskbroker_tests::{Edge, TestGuacd};

use crate::SECRET;

#[tokio::test]
async fn a_node_told_to_stop_ends_the_reads_it_forwards_cleanly_and_loses_no_tunnel() {
    let redis = Redis::start().await.unwrap();
    // guacd says `nop` only every 12 s (within the edge's 15 s silence deadline): an idle read stays open.
    let guacd = TestGuacd::start(&["--nop-interval-ms", "12000"])
        .await
        .unwrap();
    let sessions = format!("g: guacd://{}/vnc?hostname=desk-1\n", guacd.addr);
    let (_dir, path) = deskbroker_tests::process::session_file(&sessions).unwrap();
    let args = ["--sessions", path.to_str().unwrap()];
    let owner = Edge::start_node("edge-1", &redis.url(), SECRET, &args, &[])
        .await
        .unwrap();
    let mut forwarder = Edge::start_node("edge-2", &redis.url(), SECRET, &args, &[])
        .await
        .unwrap();
    let (at_owner, at_forwarder) = (owner.http_url(""), forwarder.http_url(""));

    let tunnel = HttpTunnel::connect(&at_owner, &connect_data("g"))
        .await
        .unwrap();
    let route = Arc::new(Mutex::new(at_forwarder.clone()));
    let reads_go_to = route.clone();
    let mut reads = tunnel.read_routed(move |_| reads_go_to.lock().unwrap().clone());
    reads.until("sync").await; // the drawing is done: the desktop is quiet from here
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Stopped while it holds the tunnel's open read; new reads go to the owner from now on.
    *route.lock().unwrap() = at_owner.clone();
    let told = Instant::now();
    let stopping = async {
        let exited = forwarder.process.stop().await.unwrap();
        (exited, told.elapsed())
    };
    let keys = 20;
    let writing = async {
        // Quiet for longer than a stop may take (its drain grace, and the 5 s it gives listeners), so
        // that the read the node carries can end only by its doing.
        tokio::time::sleep(Duration::from_secs(6)).await;
        for i in 0..keys {
            let key = Instruction::new("key", [i.to_string(), "1".into()]);
            tunnel.write_to(&at_owner, key.encode()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let echoed = async {
        let mut seen = Vec::new();
        while seen.len() < keys {
            seen.push(reads.echo_of("key").await[0].parse::<usize>().unwrap());
        }
        seen
    };
    let ((), echoed, (exited, took)) = tokio::join!(writing, echoed, stopping);
    assert_eq!(echoed, (0..keys).collect::<Vec<_>>(), "every key, in order");
    eprintln!("the forwarding node exited {took:?} after it was told to stop");
    assert!(exited.success(), "a clean stop: {exited:?}");
    let logs = forwarder.process.logs();
    assert!(logs.contains("asked the owners to end the reads"), "{logs}");

    // The tunnel goes on through the owner, whole.
    let (count, size) = (300u64, 3000usize);
    let ask = Instruction::new("x-flood", [count.to_string(), size.to_string(), "7".into()]);
    tunnel.write_to(&at_owner, ask.encode()).await.unwrap();
    let mut expected = Sha256::new();
    flood::instructions(count, size, 7).for_each(|i| expected.update(i.as_bytes()));
    let mut got = Sha256::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), reads.0.recv()).await {
            Ok(Some(ReadEvent::Instruction(bytes))) => {
                let instruction = Instruction::parse(&bytes).unwrap();
                match instruction.opcode.as_str() {
                    "x-flood-end" => break,
                    "x-data" => got.update(&bytes),
                    _ => {}
                }
            }
            other => panic!("the tunnel broke: {other:?}"),
        }
    }
    assert_eq!(
        got.finalize(),
        expected.finalize(),
        "the flood arrived whole"
    );
}
