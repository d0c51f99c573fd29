//! A node's life, in-process: `start` on an in-memory registry, a tunnel through it, `stop`. The
//! black-box suites do the same to the binary with SIGTERM; this is what a test that embeds a node sees.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use deskbroker_broker::{MemoryRegistry, Registry};
use deskbroker_edge::Config;
use deskbroker_shared::ids::{NodeId, SessionId, SessionToken, TenantId};
use deskbroker_shared::session::{Session, Target};

/// A TCP server that sends back what it receives, on a free loopback port.
async fn echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0; 4096];
                while let Ok(read) = stream.read(&mut buffer).await {
                    if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_node_started_in_process_relays_then_stops_with_its_tunnels_closed() {
    let registry = Arc::new(MemoryRegistry::new());
    let target = Target::parse(&echo().await.to_string()).unwrap();
    // A session file's session, as the operator's: its tenant has no record, and no quota.
    let session = Session {
        trusted_target: true,
        ..Session::new(SessionId::new("e"), TenantId::new("t"), target)
    };
    let mut config = Config::alone(NodeId::new("in-process"));
    config.sessions = vec![(SessionToken::new("e"), session)];
    config.timeouts.drain = Duration::from_millis(200);
    let node = deskbroker_edge::start(registry.clone(), config)
        .await
        .unwrap();
    assert_eq!(registry.nodes().await.unwrap().len(), 1, "it joined");

    let mut request = format!("ws://{}/websockify?token=e", node.addr())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "binary".parse().unwrap());
    let (mut relay, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    relay.send(Message::binary(b"ping".to_vec())).await.unwrap();
    let echoed = relay.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_data().as_ref(), b"ping");

    // The relay does not end by itself: the stop closes it after the drain timeout, with "try again".
    let addr = node.addr();
    let stopping = tokio::spawn(node.stop());
    let closed = loop {
        match relay.next().await {
            Some(Ok(Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(closed.code, CloseCode::from(4503));
    stopping.await.unwrap().expect("a clean stop");
    assert!(registry.nodes().await.unwrap().is_empty(), "it left");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens after the stop"
    );
}
