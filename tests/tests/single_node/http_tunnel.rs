//! `/tunnel`: guacamole-common-js's HTTPTunnel against the test guacd, with two reads in flight as the JS
//! keeps them, so every response must give way to its successor.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::{Instant, timeout};

use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{HttpError, HttpTunnel, ReadEvent, connect_data};
use deskbroker_tests::flood;
use deskbroker_tests::upstreams::sockets;

use crate::websockify::wait_for;
use crate::{GUACD_SILENCE, SILENCE_MARGIN, guacd_node};

fn not_found() -> HttpError {
    HttpError {
        http: 404,
        guac: Some(516),
        message: Some("No such tunnel.".into()),
    }
}

#[tokio::test]
async fn connect_read_write_with_takeover_byte_exact() {
    let (_guacd, node) = guacd_node(&[], &[]).await;
    let tunnel = HttpTunnel::connect(&node.http(), &connect_data("g"))
        .await
        .unwrap();
    assert_eq!(tunnel.uuid.len(), 36, "the body is the bare UUID");
    assert_eq!(tunnel.token.len(), 44, "33 random bytes in Base64");
    let mut events = tunnel.read(vec![node.http()]);
    let connect = events.until("echo").await;
    assert_eq!(connect.args[0], "select");
    events.until("sync").await;

    // Output: a flood, read through many responses that take over from each other.
    let (count, size, seed) = (3000u64, 2000usize, 11u64);
    let command = Instruction::new(
        "x-flood",
        [count.to_string(), size.to_string(), seed.to_string()],
    );
    tunnel.write(command.encode()).await.unwrap();
    let mut expected = Sha256::new();
    flood::instructions(count, size, seed).for_each(|i| expected.update(i.as_bytes()));
    let mut received = Sha256::new();
    let mut got = 0;
    // Writes go on while the reads stream.
    let writer = async {
        for i in 0..200 {
            let key = Instruction::new("key", [i.to_string(), "1".into()]);
            tunnel
                .write(format!("3.nop;{}", key.encode()))
                .await
                .unwrap();
        }
    };
    let reader = async {
        let mut keys = 0;
        while got < count || keys < 200 {
            let instruction = events.next().await;
            match instruction.opcode.as_str() {
                "x-data" => {
                    received.update(instruction.encode().as_bytes());
                    got += 1;
                }
                "echo" if instruction.args[0] == "key" => {
                    assert_eq!(
                        instruction.args[1],
                        keys.to_string(),
                        "writes arrive in order"
                    );
                    keys += 1;
                }
                _ => {}
            }
        }
    };
    tokio::join!(writer, reader);
    assert_eq!(
        received.finalize(),
        expected.finalize(),
        "output arrived whole and in order"
    );
    assert!(
        tunnel.responses.load(Ordering::SeqCst) > 2,
        "reads took over from each other"
    );

    // A big instruction that guacd writes a few bytes at a time.
    tunnel
        .write(Instruction::new("x-big", ["8192"]).encode())
        .await
        .unwrap();
    assert_eq!(events.until("x-big").await.args[0].chars().count(), 8192);

    // guacd ends the connection: its last word arrives, then reads end the normal way (404/516).
    tunnel
        .write(Instruction::new("x-disconnect", Vec::<String>::new()).encode())
        .await
        .unwrap();
    let (seen, ending) = events.end().await;
    assert!(seen.iter().any(|i| i.opcode == "disconnect"), "{seen:?}");
    assert!(
        matches!(ending, ReadEvent::Failed(ref e) if *e == not_found()),
        "{ending:?}"
    );
    assert_eq!(tunnel.write("3.nop;").await, Err(not_found()));
}

/// Reads and writes are raw bytes, never cached, never sniffed: Chromium holds back a response it may sniff
/// until it has more than a few bytes, which on an idle desktop kept each read open twice as long.
#[tokio::test]
async fn reads_and_writes_are_neither_cached_nor_sniffed() {
    let (_guacd, node) = guacd_node(&[], &[]).await;
    let tunnel = HttpTunnel::connect(&node.http(), &connect_data("g"))
        .await
        .unwrap();
    // The write first: a read dropped before its end ends the tunnel.
    for op in ["write", "read"] {
        let url = format!("{}/tunnel?{op}:{}:0", node.http(), tunnel.uuid);
        let request = match op {
            "read" => tunnel.http.get(url),
            _ => tunnel.http.post(url).body("3.nop;"),
        };
        let response = request
            .header("guacamole-tunnel-token", &tunnel.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{op}");
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("content-type"), "application/octet-stream", "{op}");
        assert_eq!(header("cache-control"), "no-cache", "{op}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{op}");
    }
}

#[tokio::test]
async fn the_token_identifies_the_tunnel_not_the_url() {
    let (_guacd, node) = guacd_node(&[], &[]).await;
    let mut tunnel = HttpTunnel::connect(&node.http(), &connect_data("g"))
        .await
        .unwrap();
    let other = HttpTunnel::connect(&node.http(), &connect_data("g"))
        .await
        .unwrap();
    tunnel.uuid = other.uuid.clone(); // the URL names the other tunnel; the token still says which
    let mut events = tunnel.read(vec![node.http()]);
    tunnel
        .write(Instruction::new("key", ["1", "1"]).encode())
        .await
        .unwrap();
    assert_eq!(events.until("echo").await.args[0], "select");
    loop {
        let echo = events.until("echo").await;
        if echo.args[0] == "key" {
            break;
        }
    }
    let forged = HttpTunnel {
        token: "A".repeat(44),
        ..tunnel
    };
    assert_eq!(forged.write("3.nop;").await, Err(not_found()));
}

#[tokio::test]
async fn malformed_requests_get_the_servlets_errors() {
    let (_guacd, node) = guacd_node(&[], &[]).await;
    let http = reqwest::Client::new();
    let status = |response: reqwest::Response| {
        let code = response
            .headers()
            .get("guacamole-status-code")
            .map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), code)
    };
    let get = |query: &str| http.get(format!("{}/tunnel{query}", node.http())).send();
    assert_eq!(status(get("").await.unwrap()), (400, Some("768".into())));
    assert_eq!(
        status(get("?frobnicate").await.unwrap()),
        (400, Some("768".into()))
    );
    assert_eq!(
        status(get("?read:x:0").await.unwrap()),
        (400, Some("768".into())),
        "no token header"
    );
    let unknown = http
        .get(format!("{}/tunnel?read:x:0", node.http()))
        .header("guacamole-tunnel-token", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(status(unknown), (404, Some("516".into())));

    for (data, expected) in [
        ("GUAC_WIDTH=1".to_owned(), (403, 769)),
        (connect_data("nope"), (403, 769)),
        (connect_data("raw"), (400, 768)),
        (connect_data("bogus"), (502, 515)),
    ] {
        let error = HttpTunnel::connect(&node.http(), &data)
            .await
            .err()
            .expect("refused");
        assert_eq!(
            (error.http, error.guac),
            (expected.0, Some(expected.1)),
            "{data}"
        );
        assert!(error.message.is_some());
    }

    // Bad instructions end that tunnel, with the status that says why; other tunnels carry on.
    let survivor = HttpTunnel::connect(&node.http(), &connect_data("g"))
        .await
        .unwrap();
    let mut survivor_events = survivor.read(vec![node.http()]);
    for (body, expected) in [
        ("banana;".to_owned(), (400, 768)),
        ("3.key,1.a".to_owned(), (400, 768)),
        (
            format!(
                "4.blob,8192.{},8192.{};",
                "\u{4e2d}".repeat(8192),
                "a".repeat(8192)
            ),
            (413, 781),
        ),
    ] {
        let victim = HttpTunnel::connect(&node.http(), &connect_data("g"))
            .await
            .unwrap();
        let error = victim.write(body).await.expect_err("refused");
        assert_eq!((error.http, error.guac), (expected.0, Some(expected.1)));
        assert_eq!(
            victim.write("3.nop;").await.err().map(|e| e.http),
            Some(404),
            "the tunnel is closed"
        );
    }
    survivor
        .write(Instruction::new("key", ["7", "1"]).encode())
        .await
        .unwrap();
    loop {
        if survivor_events.until("echo").await.args[0] == "key" {
            break;
        }
    }
}

#[tokio::test]
async fn an_unused_tunnel_is_closed_and_its_guacd_socket_released() {
    // Writes every 500 ms keep a tunnel open, with 1.5 s to spare for a loaded machine.
    let idle = Duration::from_secs(2);
    let (_guacd, node) = guacd_node(&[], &["--http-tunnel-timeout", "2s"]).await;
    let pid = node.edge.process.pid();
    let tunnel = HttpTunnel::connect(&node.http(), &connect_data("g"))
        .await
        .unwrap();
    // The edge holds the guacd socket (and the client's keep-alive connection).
    let open = sockets(pid);
    tokio::time::sleep(idle).await;
    wait_for(|| sockets(pid) == open - 1, "the guacd socket is released").await;
    assert_eq!(tunnel.write("3.nop;").await, Err(not_found()));

    // A tunnel that is used stays open past the timeout.
    let tunnel = HttpTunnel::connect(&node.http(), &connect_data("g"))
        .await
        .unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tunnel.write("3.nop;").await.unwrap();
    }
}

#[tokio::test]
async fn a_guacd_that_goes_silent_after_its_handshake_ends_the_read_with_514() {
    let (guacd, node) = guacd_node(&[], &[]).await;
    let tunnel = HttpTunnel::connect(&node.http(), &connect_data("g"))
        .await
        .unwrap();
    let mut events = tunnel.read(vec![node.http()]);
    events.until("sync").await; // guacd's last word: the drawing is done
    tunnel
        .write(Instruction::new("x-hang", Vec::<String>::new()).encode())
        .await
        .unwrap();
    let hung = Instant::now();

    // The client writes a `nop` every 500 ms as guacamole-common-js does, so the tunnel is in use and
    // only guacd's silence can end it (the idle timeout is 15 s too).
    let mut nops = tokio::time::interval(Duration::from_millis(500));
    let mut writing = true;
    let error = timeout(GUACD_SILENCE + Duration::from_secs(5), async {
        loop {
            tokio::select! {
                event = events.0.recv() => match event.expect("reading") {
                    ReadEvent::Instruction(bytes) => {
                        let instruction = Instruction::parse(&bytes).expect("whole instruction");
                        assert_eq!(instruction.opcode, "error", "guacd said nothing more");
                        return instruction;
                    }
                    other => panic!("the read ended without an error: {other:?}"),
                },
                _ = nops.tick(), if writing => match tunnel.write("3.nop;").await {
                    Ok(()) => {}
                    // The tunnel ended between two events: its error is on its way.
                    Err(error) if error == not_found() => writing = false,
                    Err(error) => panic!("write refused: {error:?}"),
                },
            }
        }
    })
    .await
    .expect("ended soon after the silence deadline");
    let after = hung.elapsed();
    eprintln!("error {after:?} after x-hang");
    assert_eq!(
        error.args.get(1).map(String::as_str),
        Some("514"),
        "UPSTREAM_TIMEOUT: {error:?}"
    );
    assert!(
        after >= GUACD_SILENCE - SILENCE_MARGIN,
        "ended after {after:?}, before guacd's silence deadline"
    );

    // Then the reads end the normal way, and the tunnel is gone for writes too.
    let (seen, ending) = events.end().await;
    assert!(seen.is_empty(), "nothing after the error: {seen:?}");
    assert!(
        matches!(ending, ReadEvent::Failed(ref e) if *e == not_found()),
        "{ending:?}"
    );
    assert_eq!(tunnel.write("3.nop;").await, Err(not_found()));
    wait_for(
        || guacd.process.logs().contains("connection closed"),
        "the test guacd sees its connection closed",
    )
    .await;
}
