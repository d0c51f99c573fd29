//! `/websocket-tunnel`: guacamole-common-js's WebSocketTunnel against the test guacd.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::clients::{GuacWs, close_frame, connect_data, ws_connect};
use deskbroker_tests::flood;

use crate::websockify::wait_for;
use crate::{GUACD_SILENCE, SILENCE_MARGIN, guacd_node};

fn echo_of(instruction: &Instruction) -> Instruction {
    let mut args = vec![instruction.opcode.clone()];
    args.extend(instruction.args.iter().cloned());
    Instruction::new("echo", args)
}

/// Reads the handshake as the test guacd reports it back: (opcode, args) of each instruction it got.
async fn handshake_seen(tunnel: &mut GuacWs) -> Vec<Instruction> {
    let mut seen = Vec::new();
    loop {
        let echo = tunnel.until("echo").await.unwrap();
        let got = Instruction::new(echo.args[0].clone(), echo.args[1..].iter().cloned());
        let done = got.opcode == "connect";
        seen.push(got);
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn opens_with_the_uuid_and_runs_the_guacd_handshake_from_the_session() {
    let (_guacd, node) = guacd_node(&[], &[]).await;
    let mut tunnel = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    assert_eq!(
        tunnel.uuid.len(),
        36,
        "the first frame carries the tunnel UUID"
    );
    let seen = handshake_seen(&mut tunnel).await;
    let opcodes: Vec<_> = seen.iter().map(|i| i.opcode.as_str()).collect();
    assert_eq!(
        opcodes,
        [
            "select", "size", "audio", "video", "image", "timezone", "connect"
        ]
    );
    assert_eq!(seen[0].args, ["vnc"]);
    assert_eq!(seen[1].args, ["1280", "720", "96"]);
    assert_eq!(seen[2].args, ["audio/L16"]);
    assert_eq!(seen[4].args, ["image/png", "image/jpeg"]);
    assert_eq!(seen[5].args, ["Europe/Paris"]);
    let connect = &seen[6].args;
    assert_eq!(connect[0], "VERSION_1_5_0");
    // Values go in the order of guacd's args: hostname, port, …, password as the session says.
    assert_eq!(&connect[1..3], ["desk-1", "5901"]);
    assert!(
        connect.iter().any(|v| v == "s=cret"),
        "password from the session"
    );
    // Then guacd draws.
    tunnel.until("img").await.unwrap();
    tunnel.until("blob").await.unwrap();
    tunnel.until("end").await.unwrap();
    tunnel.until("sync").await.unwrap();
}

#[tokio::test]
async fn negotiates_down_to_an_older_guacd() {
    let (_guacd, node) = guacd_node(&["--protocol-version", "VERSION_1_1_0"], &[]).await;
    let mut tunnel = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    let seen = handshake_seen(&mut tunnel).await;
    assert_eq!(seen.last().unwrap().args[0], "VERSION_1_1_0");
    assert!(seen.iter().any(|i| i.opcode == "timezone"));

    let (_guacd, node) = guacd_node(&["--protocol-version", "none"], &[]).await;
    let mut tunnel = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    let seen = handshake_seen(&mut tunnel).await;
    assert!(
        !seen.iter().any(|i| i.opcode == "timezone"),
        "no timezone before 1.1.0"
    );
    assert_eq!(
        seen.last().unwrap().args[0],
        "desk-1",
        "no version slot for a pre-1.1 guacd"
    );
}

#[tokio::test]
async fn answers_pings_itself_and_relays_input_whole_and_in_order() {
    let (_guacd, node) = guacd_node(&[], &[]).await;
    let mut tunnel = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    handshake_seen(&mut tunnel).await;
    let ping = Instruction::new("", ["ping", "1700000000123"]);
    tunnel.send(&ping).await.unwrap();
    loop {
        let raw = tunnel.next_raw().await.unwrap();
        let instruction = Instruction::parse(&raw).unwrap();
        assert_ne!(instruction, echo_of(&ping), "pings never reach guacd");
        if instruction.is_internal() {
            assert_eq!(instruction, ping, "the ping comes back unchanged");
            break;
        }
    }
    let sent: Vec<Instruction> = (0..500)
        .map(|i| {
            Instruction::new(
                "key",
                [
                    format!("{}", 0x61 + i % 26),
                    format!("{}", i % 2),
                    "caf\u{e9}\u{1F600}".into(),
                ],
            )
        })
        .collect();
    for instruction in &sent {
        tunnel.send(instruction).await.unwrap();
    }
    for instruction in &sent {
        assert_eq!(&tunnel.until("echo").await.unwrap(), &echo_of(instruction));
    }
}

#[tokio::test]
async fn relays_guacd_output_byte_exact_in_whole_instructions() {
    let (_guacd, node) = guacd_node(&[], &[]).await;
    let mut tunnel = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    handshake_seen(&mut tunnel).await;
    let (count, size, seed) = (3000, 3000, 7);
    tunnel
        .send(&Instruction::new(
            "x-flood",
            [count.to_string(), size.to_string(), seed.to_string()],
        ))
        .await
        .unwrap();
    let mut expected = Sha256::new();
    for instruction in flood::instructions(count, size as usize, seed) {
        expected.update(instruction.as_bytes());
    }
    let mut received = Sha256::new();
    let mut got = 0;
    while got < count {
        let raw = tunnel.next_raw().await.unwrap();
        if raw.starts_with(b"6.x-data,") {
            received.update(&raw);
            got += 1;
        }
    }
    assert_eq!(received.finalize(), expected.finalize());
    tunnel.until("x-flood-end").await.unwrap();

    // One instruction of 8192 code points, mixed widths, written by guacd a few bytes at a time.
    tunnel
        .send(&Instruction::new("x-big", ["8192"]))
        .await
        .unwrap();
    let big = tunnel.until("x-big").await.unwrap();
    assert_eq!(big.args[0].chars().count(), 8192);
}

#[tokio::test]
async fn guacd_ending_closes_normally_and_refusals_carry_the_status() {
    let (_guacd, node) = guacd_node(&[], &[]).await;
    let mut tunnel = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    tunnel
        .send(&Instruction::new("x-error", ["519", "Upstream gone."]))
        .await
        .unwrap();
    let error = tunnel.until("error").await.unwrap();
    assert_eq!(
        error.args,
        ["Upstream gone.", "519"],
        "guacd's error reaches the client"
    );
    assert_eq!(
        close_frame(&mut tunnel.socket).await.unwrap(),
        (1000, "0".into())
    );

    let refused = |data: String| {
        let url = format!("{}/websocket-tunnel?{data}", node.ws());
        async move {
            let (mut socket, protocol) = ws_connect(&url, &["guacamole"])
                .await
                .expect("upgrade accepted");
            assert_eq!(protocol.as_deref(), Some("guacamole"));
            close_frame(&mut socket).await.unwrap()
        }
    };
    assert_eq!(
        refused("GUAC_WIDTH=1".into()).await,
        (1008, "769".into()),
        "no token"
    );
    assert_eq!(
        refused(connect_data("nope")).await,
        (1008, "769".into()),
        "unknown token"
    );
    assert_eq!(
        refused(connect_data("raw")).await,
        (1002, "768".into()),
        "a raw VNC session"
    );
    assert_eq!(
        refused(connect_data("bogus")).await,
        (1011, "515".into()),
        "guacd has no such protocol"
    );

    let wrong = ws_connect(
        &format!("{}/websocket-tunnel?{}", node.ws(), connect_data("g")),
        &["binary"],
    )
    .await;
    assert!(
        matches!(wrong, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 400)
    );
}

#[tokio::test]
async fn bad_input_closes_only_its_own_tunnel() {
    let (_guacd, node) = guacd_node(&[], &[]).await;
    let mut survivor = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    handshake_seen(&mut survivor).await;

    // Half an instruction waits for its other half in the next frame.
    let mut split = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    handshake_seen(&mut split).await;
    split.socket.send(Message::text("3.key,1.a")).await.unwrap();
    split.socket.send(Message::text(",1.1;")).await.unwrap();
    assert_eq!(split.until("echo").await.unwrap().args, ["key", "a", "1"]);

    let cases = [
        (Message::text("banana;"), (1002, "768")),
        (
            Message::text(format!("4.blob,8193.{};", "a".repeat(8193))),
            (1009, "781"),
        ),
        (Message::binary(vec![1, 2, 3]), (1003, "783")),
    ];
    for (message, expected) in cases {
        let mut victim = GuacWs::connect(&node.ws(), &connect_data("g"))
            .await
            .unwrap();
        victim.socket.send(message).await.unwrap();
        let (code, reason) = close_frame(&mut victim.socket).await.unwrap();
        assert_eq!((code, reason.as_str()), expected);
    }
    let over = Message::text("a".repeat(70 * 1024));
    let mut victim = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    victim.socket.send(over).await.unwrap();
    assert_eq!(
        close_frame(&mut victim.socket).await.unwrap(),
        (1009, "781".into())
    );

    let still = Instruction::new("key", ["65", "1"]);
    survivor.send(&still).await.unwrap();
    assert_eq!(survivor.until("echo").await.unwrap(), echo_of(&still));
}

#[tokio::test]
async fn an_expired_token_is_refused_before_any_guacd_connection() {
    let echo = deskbroker_tests::upstreams::Echo::start().await.unwrap();
    let sessions = format!(
        "old: guacd://{}/vnc expires=2000-01-01T00:00:00Z\n",
        echo.addr
    );
    let node = crate::Node::start(&sessions, &[]).await;
    let url = format!("{}/websocket-tunnel?{}", node.ws(), connect_data("old"));
    let (mut socket, _) = ws_connect(&url, &["guacamole"]).await.unwrap();
    assert_eq!(
        close_frame(&mut socket).await.unwrap(),
        (1008, "769".into())
    );
    let refused =
        deskbroker_tests::clients::HttpTunnel::connect(&node.http(), &connect_data("old")).await;
    assert_eq!(
        refused.err().map(|e| (e.http, e.guac)),
        Some((403, Some(769)))
    );
    assert_eq!(
        echo.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "guacd was never dialled"
    );
}

#[tokio::test]
async fn a_guacd_that_goes_silent_after_its_handshake_is_closed_with_514() {
    let (guacd, node) = guacd_node(&[], &[]).await;
    let mut tunnel = GuacWs::connect(&node.ws(), &connect_data("g"))
        .await
        .unwrap();
    handshake_seen(&mut tunnel).await;
    tunnel.until("sync").await.unwrap(); // guacd's last word: the drawing is done
    tunnel
        .send(&Instruction::new("x-hang", Vec::<String>::new()))
        .await
        .unwrap();
    let hung = Instant::now();

    // The client pings every 500 ms as guacamole-common-js does. The edge answers each one itself, which
    // interrupts its wait on guacd: the silence deadline must run on through every answer.
    let ping = Instruction::new("", ["ping", "1700000000123"]);
    let mut pings = tokio::time::interval(Duration::from_millis(500));
    let closed = timeout(GUACD_SILENCE + Duration::from_secs(5), async {
        loop {
            tokio::select! {
                message = tunnel.socket.next() => match message {
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return (u16::from(frame.code), frame.reason.to_string());
                    }
                    Some(Ok(Message::Text(text))) => {
                        assert!(text.starts_with("0.,"), "guacd said nothing more: {text}");
                    }
                    Some(Ok(_)) => {}
                    other => panic!("the socket ended without a close frame: {other:?}"),
                },
                _ = pings.tick() => tunnel.send(&ping).await.unwrap(),
            }
        }
    })
    .await
    .expect("closed soon after the silence deadline");
    let after = hung.elapsed();
    eprintln!("closed {after:?} after x-hang");
    assert_eq!(closed, (1011, "514".into()), "UPSTREAM_TIMEOUT");
    assert!(
        after >= GUACD_SILENCE - SILENCE_MARGIN,
        "closed after {after:?}, before guacd's silence deadline"
    );
    wait_for(
        || guacd.process.logs().contains("connection closed"),
        "the test guacd sees its connection closed",
    )
    .await;
}
