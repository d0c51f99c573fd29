//! A WebSocket client that writes frames as raw bytes, for the floods no real client sends: pings as fast
//! as a socket takes them, without ever reading the answers. Writing pre-built frames in large chunks makes
//! such a flood cost the test almost nothing, so that what is measured is the edge.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket past its upgrade, as a plain TCP stream.
pub struct RawWs {
    pub stream: TcpStream,
}

impl RawWs {
    /// Upgrades `path_and_query` on `addr`, offering `protocol`.
    pub async fn connect(
        addr: std::net::SocketAddr,
        path_and_query: &str,
        protocol: &str,
    ) -> anyhow::Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        // The answer's headers, byte by byte: nothing after them may be consumed here.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = tokio::time::timeout(Duration::from_secs(10), stream.read_u8())
                .await
                .context("no upgrade answer")??;
            head.push(byte);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            bail!("not upgraded: {}", String::from_utf8_lossy(&head));
        }
        Ok(Self { stream })
    }

    /// Writes masked ping frames (125-byte payloads, the largest a control frame may carry) until `bytes`
    /// are written or the edge stops taking them; returns how many bytes went out.
    pub async fn ping_flood(&mut self, bytes: usize) -> usize {
        let chunk = ping_frames(512);
        let mut written = 0;
        while written < bytes {
            match tokio::time::timeout(Duration::from_secs(5), self.stream.write_all(&chunk)).await
            {
                Ok(Ok(())) => written += chunk.len(),
                // Refused, reset, or no longer read: the flood is over.
                _ => break,
            }
        }
        written
    }

    /// Reads what the edge sent until it closes the connection; returns the close frame's code, if one
    /// came (pongs and data frames before it are skipped).
    pub async fn close_code(&mut self) -> Option<u16> {
        let mut received = Vec::new();
        let reading = async {
            let mut buffer = vec![0; 64 * 1024];
            while let Ok(read) = self.stream.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
                received.extend_from_slice(&buffer[..read]);
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(20), reading).await;
        close_code_in(&received)
    }
}

/// `count` masked ping frames of 125 bytes each (masking key zero: the payload goes as it is).
fn ping_frames(count: usize) -> Vec<u8> {
    let mut frames = Vec::with_capacity(count * 131);
    for _ in 0..count {
        frames.extend_from_slice(&[0x89, 0x80 | 125, 0, 0, 0, 0]);
        frames.extend_from_slice(&[b'p'; 125]);
    }
    frames
}

/// The code of the first close frame in unmasked server frames.
fn close_code_in(mut bytes: &[u8]) -> Option<u16> {
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, header) = match bytes[1] & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
                4,
            ),
            127 => (
                usize::try_from(u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?)).ok()?,
                10,
            ),
            len => (usize::from(len), 2),
        };
        let payload = bytes.get(header..header + len)?;
        if opcode == 0x8 {
            return Some(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]));
        }
        bytes = &bytes[header + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_close_code_after_other_frames() {
        let mut bytes = vec![0x8a, 3, b'a', b'b', b'c'];
        bytes.extend_from_slice(&[0x88, 4, 0x03, 0xf0, b'x', b'y']);
        assert_eq!(close_code_in(&bytes), Some(1008));
        assert_eq!(close_code_in(&[0x8a, 1, b'a']), None);
        assert_eq!(ping_frames(2).len(), 262);
    }
}
