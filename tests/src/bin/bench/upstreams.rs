//! The upstreams every relay is put in front of: a source that writes as many bytes of a fixed pattern as
//! it is asked for, for throughput, and an echo server, for latency and idle tunnels. Both run in this
//! process on port 0, so what is measured is the relay and not a remote host.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::sizes::CHUNK;

/// The upstream for throughput: reads an 8-byte length, then writes that many bytes of a fixed pattern.
pub async fn start_source() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let block = pattern();
        while let Ok((mut stream, _)) = listener.accept().await {
            let block = block.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(mut left) = stream.read_u64().await else {
                    return;
                };
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    if stream.write_all(&block[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}

pub async fn start_echo() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    Ok(addr)
}

fn pattern() -> std::sync::Arc<Vec<u8>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    std::sync::Arc::new(
        (0..CHUNK)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect(),
    )
}

/// What the pattern source sends for `n` bytes, hashed.
pub fn expected_hash(n: u64) -> Vec<u8> {
    let block = pattern();
    let mut hash = Sha256::new();
    let mut left = n;
    while left > 0 {
        let take = left.min(block.len() as u64) as usize;
        hash.update(&block[..take]);
        left -= take as u64;
    }
    hash.finalize().to_vec()
}
