//! Checksummed traffic for fault scenarios: clients that keep a tunnel busy until told to stop, check
//! every byte that comes back against what they sent, and say how their tunnel ended. Here the raw relay
//! to an echo desktop (`/websockify`) and what every flow shares; the Guacamole tunnels' flows are in
//! [`crate::guac_flows`].
//!
//! Every wait has a deadline ([`HANG`]): a flow that gets no answer in time ends as [`End::Hung`], so a
//! scenario can tell a request that hangs from one that failed.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::clients::{STEP, Ws, ws_connect};

/// How long any one answer may take before the request counts as hung: well past anything a loaded
/// machine delays a relay by, well short of what a browser waits.
pub const HANG: Duration = Duration::from_secs(10);

/// How a flow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Told to stop: every byte sent came back, and the tunnel is still open.
    Stopped,
    /// The tunnel was closed with this code and reason (WebSocket), or this Guacamole status (the HTTP
    /// tunnel's `error` instruction, or `Guacamole-Status-Code` of a refused request).
    Closed(u16, String),
    /// The connection failed without a close (a reset, a request that got no HTTP answer, a read
    /// response cut short).
    Failed(String),
    /// What came back is not what was sent.
    Corrupt(String),
    /// No answer within [`HANG`].
    Hung(String),
}

/// What a flow moved, and how and when it ended.
#[derive(Debug)]
pub struct Report {
    pub sent: u64,
    /// Bytes that came back, checked, in order.
    pub echoed: u64,
    pub round_trips: u64,
    pub end: End,
    pub ended_at: Instant,
}

impl Report {
    /// No byte lost: the flow was stopped, not ended, and everything it sent came back.
    pub fn lossless(&self) -> bool {
        self.end == End::Stopped && self.sent == self.echoed
    }
}

/// splitmix64: deterministic per seed, so a failing flow can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `range` (inclusive).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// Printable ASCII, which every Guacamole element may hold.
    pub fn text(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(b'!' + (self.next_u64() % 94) as u8))
            .collect()
    }
}

/// Opens the relay at `url`: the socket if it echoes, or the close code it was refused with.
pub async fn open(url: &str) -> Result<Ws, u16> {
    let (mut socket, _) = ws_connect(url, &[]).await.unwrap();
    match echoes(&mut socket).await {
        Ok(()) => Ok(socket),
        Err(code) => Err(code),
    }
}

/// Whether a relay still echoes; the close code if it was closed.
pub async fn echoes(socket: &mut Ws) -> Result<(), u16> {
    // A refused socket may be closing already: its close frame is what to read then.
    let _ = socket.send(Message::binary(vec![7])).await;
    loop {
        match timeout(STEP, socket.next()).await.unwrap() {
            Some(Ok(Message::Binary(_))) => return Ok(()),
            Some(Ok(Message::Close(Some(frame)))) => return Err(frame.code.into()),
            Some(Ok(_)) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Shapes of a relay flow's traffic.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Largest message, in bytes (each is 1 to this many).
    pub max_message: usize,
    /// Longest pause between round trips, in milliseconds (each is 0 to this many).
    pub max_pause_ms: u64,
}

/// A raw relay to an echo desktop, kept busy with random messages.
pub struct RelayFlow {
    pub socket: Ws,
    rng: Rng,
    shape: Shape,
    sent: u64,
    echoed: u64,
    round_trips: u64,
}

impl RelayFlow {
    pub fn new(socket: Ws, seed: u64, shape: Shape) -> Self {
        Self {
            socket,
            rng: Rng::new(seed),
            shape,
            sent: 0,
            echoed: 0,
            round_trips: 0,
        }
    }

    /// Round trips until `stop` (checked between them) or the tunnel ends.
    pub async fn run(mut self, stop: CancellationToken) -> (Self, Report) {
        let end = loop {
            if let Err(end) = self.round_trip().await {
                break end;
            }
            let pause = Duration::from_millis(self.rng.between(0, self.shape.max_pause_ms));
            tokio::select! {
                () = stop.cancelled() => break End::Stopped,
                () = tokio::time::sleep(pause) => {}
            }
        };
        let report = self.report(end);
        (self, report)
    }

    /// One random message out, and the same bytes back (the relay may cut them into other frames).
    pub async fn round_trip(&mut self) -> Result<(), End> {
        let len = self.rng.between(1, self.shape.max_message as u64) as usize;
        let message = self.rng.bytes(len);
        let sent = self.socket.send(Message::binary(message.clone())).await;
        sent.map_err(|error| End::Failed(format!("send: {error}")))?;
        self.sent += len as u64;
        let mut back = Vec::with_capacity(len);
        while back.len() < len {
            let next = timeout(HANG, self.socket.next()).await;
            let next =
                next.map_err(|_| End::Hung(format!("{} of {len} bytes back", back.len())))?;
            match next {
                Some(Ok(Message::Binary(data))) => back.extend_from_slice(&data),
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Err(End::Closed(frame.code.into(), frame.reason.to_string()));
                }
                Some(Ok(Message::Close(None))) => return Err(End::Closed(1005, String::new())),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(End::Failed(error.to_string())),
                None => return Err(End::Failed("socket ended".into())),
            }
        }
        if back != message {
            let at = back.iter().zip(&message).position(|(a, b)| a != b);
            return Err(End::Corrupt(format!(
                "{len} bytes back, first difference at {at:?}"
            )));
        }
        self.echoed += len as u64;
        self.round_trips += 1;
        Ok(())
    }

    /// Bytes sent so far, and bytes that came back checked.
    pub fn counts(&self) -> (u64, u64) {
        (self.sent, self.echoed)
    }

    fn report(&self, end: End) -> Report {
        Report {
            sent: self.sent,
            echoed: self.echoed,
            round_trips: self.round_trips,
            end,
            ended_at: Instant::now(),
        }
    }

    /// Closes the relay as a browser does, and waits (bounded) for the edge's answer.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
        let _ = timeout(HANG, async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
    }
}
