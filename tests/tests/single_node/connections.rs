//! What the browser listener lets in: connections that send no request, or send it too slowly, give their
//! descriptors back; connections over the node's or a client's cap are refused with a status; a node out
//! of descriptors waits instead of spinning, and its open tunnels go on.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use deskbroker_tests::Edge;
use deskbroker_tests::clients::{Ws, ws_connect};
use deskbroker_tests::upstreams::{Echo, sockets};

use crate::Node;
use crate::websockify::wait_for;

/// Opens `count` connections: half send nothing, half the start of a request and never its end.
async fn slow_clients(edge: &Edge, count: usize) -> Vec<TcpStream> {
    let mut clients = Vec::new();
    for i in 0..count {
        let mut stream = TcpStream::connect(edge.addr).await.unwrap();
        if i % 2 == 1 {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        clients.push(stream);
    }
    clients
}

/// What the edge answers a connection that sends a whole request: the status line and the headers.
async fn answer(edge: &Edge) -> String {
    let mut stream = TcpStream::connect(edge.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer)).await;
    answer
}

/// A raw relay to the echo server that has relayed one byte.
async fn relay(node: &Node) -> Ws {
    let (mut relay, _) = ws_connect(&format!("{}/websockify?token=e", node.ws()), &["binary"])
        .await
        .unwrap();
    echoes(&mut relay).await;
    relay
}

async fn echoes(relay: &mut Ws) {
    relay.send(Message::binary(vec![7])).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), relay.next())
        .await
        .expect("an echo")
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), [7]);
}

#[tokio::test]
async fn connections_without_a_whole_request_are_closed_after_the_header_timeout() {
    let node = Node::start("", &["--header-timeout", "1s"]).await;
    let pid = node.edge.process.pid();
    let before = sockets(pid);
    let mut clients = slow_clients(&node.edge, 100).await;
    wait_for(|| sockets(pid) >= before + 100, "the edge holds them all").await;
    wait_for(
        || sockets(pid) <= before,
        "the edge gave their sockets back",
    )
    .await;
    let mut ended = [0; 1];
    for client in &mut clients {
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut ended)).await;
        assert!(read.is_ok(), "closed by the edge");
    }
    assert!(answer(&node.edge).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_over_the_nodes_cap_are_refused_with_a_status() {
    let echo = Echo::start().await.unwrap();
    let sessions = format!("e: {}\n", echo.addr);
    let node = Node::start(&sessions, &["--max-connections", "10"]).await;
    let mut open = relay(&node).await;
    let _held = slow_clients(&node.edge, 9).await;
    let refused = answer(&node.edge).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("Guacamole-Status-Code: 513"), "{refused}");
    assert!(refused.contains("Retry-After: 1"), "{refused}");
    echoes(&mut open).await;
    drop(_held);
    let mut answered = String::new();
    for _ in 0..50 {
        answered = answer(&node.edge).await;
        if answered.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answered.starts_with("HTTP/1.1 200"),
        "the places came back: {answered}"
    );
}

#[tokio::test]
async fn a_client_over_its_cap_is_refused_unless_it_is_a_trusted_proxy() {
    let node = Node::start("", &["--max-connections-per-client", "3"]).await;
    let _held = slow_clients(&node.edge, 3).await;
    let refused = answer(&node.edge).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.contains("Guacamole-Status-Code: 797"), "{refused}");

    let args = [
        "--max-connections-per-client",
        "3",
        "--trusted-proxy",
        "127.0.0.0/8",
    ];
    let proxied = Node::start("", &args).await;
    let _held = slow_clients(&proxied.edge, 10).await;
    assert!(answer(&proxied.edge).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_node_out_of_descriptors_backs_off_and_keeps_its_tunnels() {
    let echo = Echo::start().await.unwrap();
    let (dir, path) =
        deskbroker_tests::process::session_file(&format!("e: {}\n", echo.addr)).unwrap();
    let args = [
        "--sessions",
        path.to_str().unwrap(),
        "--max-connections",
        "1000",
        "--header-timeout",
        "4s",
    ];
    let edge = Edge::start_with_descriptors(&args, 64).await.unwrap();
    let node = Node { edge, _dir: dir };
    let mut open = relay(&node).await;
    // Far more connections than descriptors: the rest wait in the listen backlog.
    let clients = slow_clients(&node.edge, 120).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    echoes(&mut open).await;
    let warnings = node
        .edge
        .process
        .logs()
        .lines()
        .filter(|line| line.contains("cannot accept connections") || line.contains("accept error"))
        .count();
    assert_eq!(warnings, 1, "said once, not once per attempt (in 3.5 s)");
    drop(clients);
    let mut answered = String::new();
    for _ in 0..100 {
        answered = answer(&node.edge).await;
        if answered.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answered.starts_with("HTTP/1.1 200"),
        "it accepts again: {answered}"
    );
    echoes(&mut open).await;
}
