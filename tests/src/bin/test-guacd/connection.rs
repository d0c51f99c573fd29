//! One user's connection to the test guacd, from `select` to the end.
//!
//! Test commands (a real guacd logs and ignores unknown opcodes; this one acts on these):
//! - `x-flood,<count>,<size>,<seed>`: sends `deskbroker_tests::flood::instructions`, written in pieces of
//!   1 to 4096 bytes so instructions straddle TCP segments, then `x-flood-end,<count>`.
//! - `x-repeat,<times>[,ascii]`: sends `deskbroker_tests::flood::block` `times` over, a block per write,
//!   then `x-flood-end,<times>`: for benchmarks.
//! - `x-big,<n>`: one `x-big` instruction of `n` mixed-width code points, written 1 to 7 bytes at a time.
//! - What users send comes back as `echo,<opcode>,<args…>`, with `∅` for an empty element.
//! - `x-disconnect`: `disconnect`, then close. `x-eof`: close at once. `x-error,<code>,<message>`: an
//!   `error` instruction, then close.
//! - `x-hang`: says nothing more, not even `nop`, and never aborts, as guacd 1.6 has been seen going silent
//!   after its handshake; keeps the socket open, reading and dropping what it is sent, until the client
//!   closes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, sleep_until, timeout};

use deskbroker_shared::InstructionBuffer;
use deskbroker_shared::instruction::Instruction;
use deskbroker_tests::flood;

use crate::state::Guacd;
use crate::{png, protocols};

/// guacd waits this long for each handshake instruction (`GUACD_USEC_TIMEOUT`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// guacd's largest blob payload (`GUAC_PROTOCOL_BLOB_MAX_LENGTH`).
const BLOB_MAX: usize = 6048;
/// Largest flood a test may ask for.
const FLOOD_MAX_BYTES: u64 = 1 << 30;

struct Reader {
    stream: OwnedReadHalf,
    buffer: InstructionBuffer,
}

impl Reader {
    /// The next instruction, or `None` at EOF.
    async fn next(&mut self) -> anyhow::Result<Option<Instruction>> {
        loop {
            if let Some(bytes) = self.buffer.next_instruction()? {
                return Ok(Some(Instruction::parse(&bytes)?));
            }
            if self.stream.read_buf(self.buffer.read_buf(8192)).await? == 0 {
                return Ok(None);
            }
        }
    }
}

struct Writer {
    stream: OwnedWriteHalf,
    last_sent: Instant,
    seed: u64,
}

impl Writer {
    async fn send(&mut self, instruction: &Instruction) -> anyhow::Result<()> {
        self.send_raw(instruction.encode().as_bytes()).await
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Writes `bytes` in pieces of 1 to `max` bytes, flushed one by one.
    async fn send_split(&mut self, bytes: &[u8], max: usize) -> anyhow::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            let piece = 1 + (self.seed as usize) % max;
            let (now, later) = rest.split_at(piece.min(rest.len()));
            self.send_raw(now).await?;
            self.stream.flush().await?;
            if self.seed.is_multiple_of(8) {
                tokio::task::yield_now().await;
            }
            rest = later;
        }
        Ok(())
    }
}

pub async fn serve(stream: TcpStream, guacd: Arc<Guacd>) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let mut reader = Reader {
        stream: read,
        buffer: InstructionBuffer::default(),
    };
    let mut writer = Writer {
        stream: write,
        last_sent: Instant::now(),
        seed: 0x2545_f491_4f6c_dd1d,
    };

    let Some(select) = timeout(HANDSHAKE_TIMEOUT, reader.next())
        .await
        .context("no select")??
    else {
        return Ok(());
    };
    if select.opcode != "select" || select.args.len() != 1 {
        bail!("expected select with one argument, got {select:?}"); // guacd closes without a word
    }
    let target = &select.args[0];
    let (id, protocol) = if target.starts_with('$') {
        let known = guacd.connections().get(target).copied();
        let Some(protocol) = known else {
            writer
                .send(&Instruction::new("error", ["No such connection.", "516"]))
                .await?;
            return Ok(());
        };
        (target.clone(), protocol)
    } else {
        let Some((protocol, _)) = ["vnc", "rdp", "ssh"]
            .iter()
            .zip(0..)
            .find(|(p, _)| **p == target)
        else {
            bail!("no plugin for protocol {target:?}"); // the plugin fails to load: EOF before args
        };
        (format!("${}", uuid::Uuid::new_v4()), *protocol)
    };
    let names = protocols::args(protocol).unwrap_or_default();
    let version = guacd.version.iter().map(String::as_str);
    writer
        .send(&Instruction::new(
            "args",
            version.chain(names.iter().copied()),
        ))
        .await?;

    let mut handshake = vec![select.clone()];
    let connect = loop {
        let Some(instruction) = timeout(HANDSHAKE_TIMEOUT, reader.next())
            .await
            .context("handshake")??
        else {
            return Ok(());
        };
        handshake.push(instruction.clone());
        match instruction.opcode.as_str() {
            "size" if instruction.args.len() < 2 => bail!("size needs at least two arguments"),
            "connect" => break instruction,
            _ => {}
        }
    };
    writer
        .send(&Instruction::new("ready", [id.clone()]))
        .await?;
    let expected = names.len() + usize::from(guacd.version.is_some());
    if connect.args.len() != expected {
        bail!("client did not return the expected number of arguments"); // after ready, as guacd does
    }
    guacd.connections().insert(id.clone(), protocol);
    let result = session(&mut reader, &mut writer, &guacd, &handshake).await;
    guacd.connections().remove(&id);
    result
}

/// Stands for an empty element in an `echo`: guacamole-common-js's HTTP tunnel takes any empty element
/// (`0.`) for the end of a read response, so guacd never sends one, and neither may we.
pub const EMPTY: &str = "\u{2205}";

fn echo(instruction: &Instruction) -> Instruction {
    let args = std::iter::once(instruction.opcode.clone()).chain(instruction.args.iter().cloned());
    Instruction::new(
        "echo",
        args.map(|arg| {
            if arg.is_empty() {
                EMPTY.to_owned()
            } else {
                arg
            }
        }),
    )
}

async fn session(
    reader: &mut Reader,
    writer: &mut Writer,
    guacd: &Guacd,
    handshake: &[Instruction],
) -> anyhow::Result<()> {
    for instruction in handshake {
        writer.send(&echo(instruction)).await?;
    }
    let size = handshake.iter().find(|i| i.opcode == "size");
    let dimension = |n: usize, default: &str| {
        size.and_then(|s| s.args.get(n))
            .cloned()
            .unwrap_or(default.into())
    };
    writer
        .send(&Instruction::new(
            "size",
            ["0".into(), dimension(0, "1024"), dimension(1, "768")],
        ))
        .await?;
    draw(writer).await?;

    let mut last_input = Instant::now();
    loop {
        let nop_at = writer.last_sent + guacd.nop_interval;
        let abort_at = last_input + guacd.client_timeout;
        let instruction = tokio::select! {
            next = reader.next() => match next? {
                Some(instruction) => instruction,
                None => return Ok(()),
            },
            () = sleep_until(nop_at) => {
                writer.send_raw(b"3.nop;").await?;
                continue;
            }
            () = sleep_until(abort_at) => {
                writer.send(&Instruction::new("error", ["Aborted. See logs.", "776"])).await?;
                return Ok(());
            }
        };
        last_input = Instant::now();
        if let Some(record) = &guacd.record
            && !matches!(instruction.opcode.as_str(), "nop" | "sync")
        {
            use std::io::Write;
            let mut record = record
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = writeln!(record, "{}", instruction.encode());
        }
        let args = &instruction.args;
        match instruction.opcode.as_str() {
            "nop" | "sync" => {}
            "disconnect" | "x-disconnect" => {
                writer.send_raw(b"10.disconnect;").await?;
                return Ok(());
            }
            "x-eof" => return Ok(()),
            "x-hang" => return hang(reader).await,
            "x-error" => {
                let (code, message) = (arg(args, 0), arg(args, 1));
                writer
                    .send(&Instruction::new("error", [message, code]))
                    .await?;
                return Ok(());
            }
            "x-flood" => {
                let count: u64 = arg(args, 0).parse()?;
                let size: usize = arg(args, 1).parse()?;
                let seed: u64 = arg(args, 2).parse()?;
                if count.saturating_mul(size as u64) > FLOOD_MAX_BYTES {
                    writer
                        .send(&Instruction::new("error", ["Flood too large.", "768"]))
                        .await?;
                    return Ok(());
                }
                for wire in flood::instructions(count, size, seed) {
                    writer.send_split(wire.as_bytes(), 4096).await?;
                }
                writer
                    .send(&Instruction::new("x-flood-end", [count.to_string()]))
                    .await?;
            }
            "x-repeat" => {
                let times: u64 = arg(args, 0).parse()?;
                let block = flood::block(arg(args, 1) == "ascii");
                if times.saturating_mul(block.len() as u64) > FLOOD_MAX_BYTES {
                    writer
                        .send(&Instruction::new("error", ["Flood too large.", "768"]))
                        .await?;
                    return Ok(());
                }
                for _ in 0..times {
                    writer.send_raw(block).await?;
                }
                writer
                    .send(&Instruction::new("x-flood-end", [times.to_string()]))
                    .await?;
            }
            "x-big" => {
                let n: usize = arg(args, 0).parse()?;
                let big = Instruction::new("x-big", [flood::big_text(n)]).encode();
                writer.send_split(big.as_bytes(), 7).await?;
            }
            _ => writer.send(&echo(&instruction)).await?,
        }
    }
}

/// Reads and drops until the client closes: the socket stays open and drained, so only the client's own
/// deadline can end the connection, never a full buffer or a reset.
async fn hang(reader: &mut Reader) -> anyhow::Result<()> {
    let mut sink = vec![0; 8192];
    while reader.stream.read(&mut sink).await? != 0 {}
    Ok(())
}

fn arg(args: &[String], n: usize) -> String {
    args.get(n).cloned().unwrap_or_default()
}

/// Draws a gradient into layer 0 as guacd 1.6 does: an `img` stream of PNG data in base64 `blob`s,
/// `end`, then `sync` with the timestamp and the frame count.
async fn draw(writer: &mut Writer) -> anyhow::Result<()> {
    let image = png::encode(64, 64, |x, y| [(x * 4) as u8, (y * 4) as u8, 160]);
    writer
        .send(&Instruction::new(
            "img",
            ["1", "14", "0", "image/png", "0", "0"],
        ))
        .await?;
    for chunk in image.chunks(BLOB_MAX) {
        let data = base64::engine::general_purpose::STANDARD.encode(chunk);
        writer
            .send(&Instruction::new("blob", ["1".to_owned(), data]))
            .await?;
    }
    writer.send(&Instruction::new("end", ["1"])).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    writer
        .send(&Instruction::new("sync", [now.to_string(), "1".into()]))
        .await
}
