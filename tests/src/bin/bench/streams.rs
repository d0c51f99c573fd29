//! What a relay does to plain byte streams: one stream's and many streams' throughput (checked by count
//! and SHA-256), the round-trip latency of small messages, memory per idle tunnel, and whether a stalled
//! reader slows anyone but itself. Every function takes a started `Relay` and leaves it running.

use std::time::Instant;

use anyhow::{Context, ensure};
use sha2::{Digest, Sha256};

use crate::relays::Relay;
use crate::sizes::MIB;
use crate::system;
use crate::upstreams::expected_hash;

/// A browser that stops reading: one tunnel asks for a gigabyte and reads nothing. Returns the edge's memory
/// growth (KiB) meanwhile, and a second tunnel's throughput alone and beside the stalled one.
pub async fn back_pressure(relay: &Relay, bytes: u64) -> anyhow::Result<(u64, f64, f64)> {
    let pid = relay.pid().context("a relay process")?;
    let alone = throughput(relay, 1, bytes, false).await?.mib_per_s;
    let before = system::pss_kib(pid);
    let mut stalled = relay.connect("source").await?;
    stalled.send(&(1u64 << 30).to_be_bytes()).await?;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let beside = throughput(relay, 1, bytes, false).await?.mib_per_s;
    let growth = system::pss_kib(pid).saturating_sub(before);
    drop(stalled);
    Ok((growth, alone, beside))
}

/// Opens `count` tunnels to the echo upstream and leaves them idle; returns the relay's memory per tunnel,
/// after checking that a new tunnel still relays.
pub async fn idle(relay: &Relay, count: usize) -> anyhow::Result<f64> {
    let pid = relay.pid().context("a relay process")?;
    let before = system::pss_kib(pid);
    let held = relay.open_echo_tunnels(count).await?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = system::pss_kib(pid);
    round_trips(relay, 10).await?;
    drop(held);
    Ok(after.saturating_sub(before) as f64 / count as f64)
}

/// One throughput run: MiB/s over all streams, and the relay's CPU seconds per GiB and peak memory (KiB),
/// when the relay is a process of its own.
pub struct Run {
    pub mib_per_s: f64,
    pub cpu_per_gib: Option<f64>,
    pub peak_kib: Option<u64>,
}

/// Pulls `bytes` through the relay on each of `streams` connections at once; checks the count, and the
/// SHA-256 when `hash_bytes` (a single-threaded hash caps a stream near 1 GiB/s, so both are measured).
pub async fn throughput(
    relay: &Relay,
    streams: usize,
    bytes: u64,
    hash_bytes: bool,
) -> anyhow::Result<Run> {
    let expected = expected_hash(bytes);
    let cpu_before = relay.pid().map(system::cpu_seconds);
    let sampler = relay.pid().map(system::MemorySampler::start);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut conn = relay.connect("source").await?;
        let expected = expected.clone();
        tasks.push(tokio::spawn(async move {
            conn.send(&bytes.to_be_bytes()).await?;
            let mut hash = Sha256::new();
            let mut got = 0u64;
            while got < bytes {
                let chunk = conn.receive().await?;
                ensure!(
                    !chunk.is_empty(),
                    "stream ended after {got} of {bytes} bytes"
                );
                if hash_bytes {
                    hash.update(chunk);
                }
                got += chunk.len() as u64;
            }
            ensure!(got == bytes, "{got} bytes arrived of {bytes}");
            ensure!(
                !hash_bytes || hash.finalize().to_vec() == expected,
                "bytes arrived changed"
            );
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("stream task")??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = bytes * streams as u64;
    let gib = total as f64 / (1u64 << 30) as f64;
    let cpu_per_gib = match (relay.pid(), cpu_before) {
        (Some(pid), Some(before)) => Some((system::cpu_seconds(pid) - before) / gib),
        _ => None,
    };
    let peak_kib = match sampler {
        Some(sampler) => Some(sampler.stop().await),
        None => None,
    };
    Ok(Run {
        mib_per_s: total as f64 / MIB as f64 / elapsed,
        cpu_per_gib,
        peak_kib,
    })
}

/// p50, p90 and p99 of 32-byte round trips, in microseconds, after a tenth as many warm-ups.
pub async fn round_trips(relay: &Relay, count: usize) -> anyhow::Result<[f64; 3]> {
    let mut conn = relay.connect("echo").await?;
    let message = [0x42u8; 32];
    let mut times = Vec::with_capacity(count);
    for i in 0..count + count / 10 {
        let started = Instant::now();
        conn.send(&message).await?;
        let mut got = 0;
        while got < message.len() {
            let n = conn.receive().await?.len();
            ensure!(n > 0, "echo ended");
            got += n;
        }
        if i >= count / 10 {
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    Ok([at(0.5), at(0.9), at(0.99)])
}
