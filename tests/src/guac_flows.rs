//! Checksummed traffic through the Guacamole tunnels, as [`crate::flows`] makes it through raw relays: a
//! WebSocket tunnel and an HTTP tunnel to the test guacd, kept busy with keyed instructions that guacd
//! echoes, each checked as it comes back. Every wait has the same deadline ([`HANG`]).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use deskbroker_shared::InstructionBuffer;
use deskbroker_shared::instruction::Instruction;

use crate::clients::{GuacWs, HttpTunnel, ReadEvent, Reader, Ws};
use crate::flows::{End, HANG, Report, Rng};

/// The instruction a Guacamole flow sends: `key,<n>,<payload>`, echoed by the test guacd.
fn keyed(n: u64, payload: &str) -> Instruction {
    Instruction::new("key", [n.to_string(), payload.to_owned()])
}

/// Whether `instruction` is the test guacd's echo of `keyed(n, payload)`.
fn is_echo_of(instruction: &Instruction, n: u64) -> Option<&str> {
    let args = &instruction.args;
    let ours = instruction.opcode == "echo" && args.len() == 3 && args[0] == "key";
    (ours && args[1] == n.to_string()).then(|| args[2].as_str())
}

/// A Guacamole WebSocket tunnel to the test guacd, kept busy with keyed instructions it echoes.
pub struct GuacWsFlow {
    socket: Ws,
    input: InstructionBuffer,
    rng: Rng,
    sent: u64,
    echoed: u64,
    round_trips: u64,
}

impl GuacWsFlow {
    pub fn new(tunnel: GuacWs, seed: u64) -> Self {
        Self {
            socket: tunnel.socket,
            input: InstructionBuffer::default(),
            rng: Rng::new(seed),
            sent: 0,
            echoed: 0,
            round_trips: 0,
        }
    }

    pub async fn run(mut self, stop: CancellationToken) -> (Self, Report) {
        let end = loop {
            if let Err(end) = self.round_trip().await {
                break end;
            }
            tokio::select! {
                () = stop.cancelled() => break End::Stopped,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        };
        let report = Report {
            sent: self.sent,
            echoed: self.echoed,
            round_trips: self.round_trips,
            end,
            ended_at: Instant::now(),
        };
        (self, report)
    }

    async fn round_trip(&mut self) -> Result<(), End> {
        let n = self.round_trips;
        let len = self.rng.between(1, 2000) as usize;
        let payload = self.rng.text(len);
        let message = Message::text(keyed(n, &payload).encode());
        let sent = self.socket.send(message).await;
        sent.map_err(|error| End::Failed(format!("send: {error}")))?;
        self.sent += len as u64;
        loop {
            let instruction = self.next().await?;
            if let Some(back) = is_echo_of(&instruction, n) {
                if back != payload {
                    return Err(End::Corrupt(format!("echo of key {n} differs")));
                }
                self.echoed += len as u64;
                self.round_trips += 1;
                return Ok(());
            }
        }
    }

    async fn next(&mut self) -> Result<Instruction, End> {
        loop {
            if let Some(bytes) = self.input.next_instruction().map_err(corrupt)? {
                return Instruction::parse(&bytes).map_err(corrupt);
            }
            let next = timeout(HANG, self.socket.next()).await;
            match next.map_err(|_| End::Hung("no instruction".into()))? {
                Some(Ok(Message::Text(text))) => self.input.extend_from_slice(text.as_bytes()),
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Err(End::Closed(frame.code.into(), frame.reason.to_string()));
                }
                Some(Ok(Message::Close(None))) => return Err(End::Closed(1005, String::new())),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(End::Failed(error.to_string())),
                None => return Err(End::Failed("socket ended".into())),
            }
        }
    }
}

fn corrupt(error: impl std::fmt::Display) -> End {
    End::Corrupt(error.to_string())
}

/// An HTTP tunnel kept busy with keyed instructions, each written through one of `writers` in turn and
/// read back through the read loop (which reads through its own nodes).
pub struct HttpFlow {
    pub tunnel: HttpTunnel,
    reads: Reader,
    writers: Vec<String>,
    rng: Rng,
    sent: u64,
    echoed: u64,
    round_trips: u64,
}

impl HttpFlow {
    /// Starts reading `tunnel` through `readers` (round robin, as [`HttpTunnel::read`]).
    pub fn new(tunnel: HttpTunnel, readers: Vec<String>, writers: Vec<String>, seed: u64) -> Self {
        let reads = tunnel.read(readers);
        Self {
            tunnel,
            reads,
            writers,
            rng: Rng::new(seed),
            sent: 0,
            echoed: 0,
            round_trips: 0,
        }
    }

    pub async fn run(mut self, stop: CancellationToken) -> (Self, Report) {
        let end = loop {
            if let Err(end) = self.round_trip().await {
                break end;
            }
            tokio::select! {
                () = stop.cancelled() => break End::Stopped,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        };
        let report = Report {
            sent: self.sent,
            echoed: self.echoed,
            round_trips: self.round_trips,
            end,
            ended_at: Instant::now(),
        };
        (self, report)
    }

    async fn round_trip(&mut self) -> Result<(), End> {
        let n = self.round_trips;
        let len = self.rng.between(1, 2000) as usize;
        let payload = self.rng.text(len);
        let writer = &self.writers[n as usize % self.writers.len()];
        let written = timeout(
            HANG,
            self.tunnel.write_to(writer, keyed(n, &payload).encode()),
        )
        .await;
        match written.map_err(|_| End::Hung(format!("write of key {n}")))? {
            Ok(()) => {}
            Err(error) if error.http == 0 => return Err(End::Failed(format!("{error:?}"))),
            Err(error) => {
                // A tunnel that ended has told its reader why, as the client reports it: look there.
                if let Some(told) = self.error_read().await {
                    return Err(told);
                }
                let message = error.message.unwrap_or_default();
                return Err(End::Closed(error.guac.unwrap_or(error.http), message));
            }
        }
        self.sent += len as u64;
        loop {
            let event = timeout(HANG, self.reads.0.recv()).await;
            let event = event.map_err(|_| End::Hung(format!("no echo of key {n}")))?;
            let instruction = match event {
                Some(ReadEvent::Instruction(bytes)) => parse(&bytes)?,
                Some(ReadEvent::Failed(error)) => {
                    let status = error.guac.unwrap_or(error.http);
                    return Err(End::Closed(status, error.message.unwrap_or_default()));
                }
                Some(ReadEvent::Broken(problem)) => return Err(End::Failed(problem)),
                None => return Err(End::Failed("reading ended".into())),
            };
            if let Some(told) = error_of(&instruction) {
                return Err(told);
            }
            if let Some(back) = is_echo_of(&instruction, n) {
                if back != payload {
                    return Err(End::Corrupt(format!("echo of key {n} differs")));
                }
                self.echoed += len as u64;
                self.round_trips += 1;
                return Ok(());
            }
        }
    }

    /// The `error` instruction the read loop delivered (or delivers within a second), if any.
    async fn error_read(&mut self) -> Option<End> {
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.reads.0.recv()).await {
            if let ReadEvent::Instruction(bytes) = event
                && let Ok(instruction) = Instruction::parse(&bytes)
                && let Some(told) = error_of(&instruction)
            {
                return Some(told);
            }
        }
        None
    }

    /// Ends the tunnel as a Guacamole client does (`disconnect`, which guacd answers by closing), through
    /// the node it was opened on.
    pub async fn disconnect(self) {
        let base = self.tunnel.base.clone();
        self.disconnect_through(&base).await;
    }

    /// Ends the tunnel with a `disconnect` written through `base`, and reads through `base` what guacd
    /// said last: the owner deregisters the tunnel once a read has seen the end (or after its idle
    /// timeout, for a client that no longer reads).
    pub async fn disconnect_through(self, base: &str) {
        let _ = timeout(HANG, self.tunnel.write_to(base, "10.disconnect;")).await;
        let mut last = self.tunnel.read(vec![base.to_owned()]);
        let _ = timeout(HANG, async {
            while let Some(ReadEvent::Instruction(_)) = last.0.recv().await {}
        })
        .await;
    }
}

/// What an `error` instruction (`error,<message>,<status>`) says, as the end of a flow.
fn error_of(instruction: &Instruction) -> Option<End> {
    if instruction.opcode != "error" {
        return None;
    }
    let status = instruction.args.get(1).and_then(|code| code.parse().ok());
    let message = instruction.args.first().cloned().unwrap_or_default();
    Some(End::Closed(status.unwrap_or(0), message))
}

fn parse(bytes: &Bytes) -> Result<Instruction, End> {
    Instruction::parse(bytes).map_err(corrupt)
}
