//! `bench`: deskbroker against its peers in one run, on the same client and the same upstream, reported as
//! a Markdown table (median and min-max of the repetitions). `scripts/bench` runs the full suite;
//! `scripts/bench --short` (what CI runs) checks that the suite runs and that every byte arrives.
//!
//! Measured per relay: one stream's throughput, 50 concurrent streams' throughput (checked by count and
//! SHA-256, and again by count alone, since hashing caps the client), the relay's CPU seconds per GiB moved
//! and its peak memory (its whole process tree, PSS) on the unhashed runs, and the round-trip latency of
//! 32-byte messages after a warm-up.

mod guacamole;
mod registry;
mod relays;
mod system;

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Parser;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use relays::Relay;

#[derive(Debug, Parser)]
struct Args {
    /// Small sizes and one repetition: proves the suite runs and bytes arrive whole.
    #[arg(long)]
    short: bool,
    /// The websockify program to compare with (a venv's `bin/websockify`).
    #[arg(long)]
    websockify: Option<String>,
    /// guacamole-lite's launcher (`tests/peers/guacamole-lite.js`, once `npm ci` has installed it there).
    #[arg(long)]
    guacamole_lite: Option<std::path::PathBuf>,
}

struct Plan {
    repetitions: usize,
    /// Idle tunnels held open through deskbroker, and through websockify (a process each). Each tunnel takes
    /// two descriptors in the edge and two here (client and echo server): this machine's hard limit of
    /// 20,000 descriptors per process caps the count below 10,000.
    idle: usize,
    idle_websockify: usize,
    /// Tunnels opened through one node with Redis, for the connect rate.
    connects: usize,
    one_stream: u64,
    streams: usize,
    per_stream: u64,
    round_trips: usize,
    /// Blocks of `x-repeat` (about 280 KiB each) read through each Guacamole tunnel, and round trips.
    guac_blocks: u64,
    guac_trips: usize,
}

const MIB: u64 = 1 << 20;
const CHUNK: usize = 256 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plan = match args.short {
        true => Plan {
            idle: 500,
            idle_websockify: 20,
            connects: 200,
            repetitions: 1,
            one_stream: 64 * MIB,
            streams: 50,
            per_stream: MIB,
            round_trips: 200,
            guac_blocks: 16,
            guac_trips: 50,
        },
        false => Plan {
            idle: 9_000,
            idle_websockify: 100,
            connects: 2_000,
            repetitions: 5,
            one_stream: 1024 * MIB,
            streams: 50,
            per_stream: 20 * MIB,
            round_trips: 2000,
            guac_blocks: 1024,
            guac_trips: 1000,
        },
    };
    let source = start_source().await?;
    let echo = start_echo().await?;
    let dir = tempfile::tempdir()?;
    let sessions = dir.path().join("sessions");
    std::fs::write(&sessions, format!("source: {source}\necho: {echo}\n"))?;

    println!(
        "| relay | 1 stream MiB/s (hashed / not) | {n} streams MiB/s (hashed / not) \
         | relay CPU s/GiB (1 / {n} streams) | relay peak memory, {n} streams | echo p50 / p90 / p99 us |",
        n = plan.streams
    );
    println!("|---|---|---|---|---|---|");
    let kinds = ["direct", "socat", "websockify", "deskbroker"];
    for kind in kinds {
        let mut one = Vec::new();
        let mut many = Vec::new();
        let mut one_raw = Vec::new();
        let mut many_raw = Vec::new();
        let mut cpu_one = Vec::new();
        let mut cpu_many = Vec::new();
        let mut memory = Vec::new();
        let mut latency = Vec::new();
        let mut name = kind;
        for _ in 0..plan.repetitions {
            let Some(source_relay) =
                start(kind, source, &sessions, args.websockify.as_deref()).await?
            else {
                break;
            };
            name = source_relay.name();
            let run = throughput(&source_relay, 1, plan.one_stream, true).await?;
            one.push(run.mib_per_s);
            let run = throughput(&source_relay, 1, plan.one_stream, false).await?;
            one_raw.push(run.mib_per_s);
            cpu_one.extend(run.cpu_per_gib);
            let run = throughput(&source_relay, plan.streams, plan.per_stream, true).await?;
            many.push(run.mib_per_s);
            let run = throughput(&source_relay, plan.streams, plan.per_stream, false).await?;
            many_raw.push(run.mib_per_s);
            cpu_many.extend(run.cpu_per_gib);
            memory.extend(run.peak_kib);
            drop(source_relay);
            let Some(echo_relay) = start(kind, echo, &sessions, args.websockify.as_deref()).await?
            else {
                break;
            };
            latency.push(round_trips(&echo_relay, plan.round_trips).await?);
        }
        if one.is_empty() {
            println!("| {kind} | not run (missing) | | | | |");
            continue;
        }
        let lat = |i: usize| median(&latency.iter().map(|l: &[f64; 3]| l[i]).collect::<Vec<_>>());
        println!(
            "| {name} | {} / {} | {} / {} | {} / {} | {} | {:.0} / {:.0} / {:.0} |",
            spread(&one, 0),
            spread(&one_raw, 0),
            spread(&many, 0),
            spread(&many_raw, 0),
            spread(&cpu_one, 2),
            spread(&cpu_many, 2),
            memory_cell(&memory),
            lat(0),
            lat(1),
            lat(2),
        );
    }
    println!();
    println!("| relay | idle tunnels | memory per idle tunnel (PSS) | a new tunnel still relays |");
    println!("|---|---|---|---|");
    for (kind, count) in [
        ("deskbroker", plan.idle),
        ("websockify", plan.idle_websockify),
    ] {
        let Some(relay) = start(kind, echo, &sessions, args.websockify.as_deref()).await? else {
            continue;
        };
        let per_tunnel = idle(&relay, count).await?;
        println!("| {} | {count} | {per_tunnel:.1} KiB | yes |", relay.name());
    }

    println!();
    println!(
        "| back pressure | edge memory growth while a reader is stalled | second tunnel's MiB/s: alone / beside it |"
    );
    println!("|---|---|---|");
    let relay = Relay::deskbroker(&sessions).await?;
    let (growth, alone, beside) = back_pressure(&relay, plan.per_stream * 8).await?;
    let ratio = beside / alone;
    println!(
        "| deskbroker | {:.1} MiB | {alone:.0} / {beside:.0} ({ratio:.2}x) |",
        growth as f64 / 1024.0
    );
    drop(relay);

    guacamole_tunnels(&plan, args.guacamole_lite.as_deref()).await?;

    println!();
    println!(
        "| registry | tunnels opened | tunnels/s on one node | Redis commands per tunnel: open / close | Redis commands while all stay open |"
    );
    println!("|---|---|---|---|---|");
    let hold = std::time::Duration::from_secs(if args.short { 3 } else { 10 });
    let costs = registry::measure(&sessions, plan.connects, hold).await?;
    println!(
        "| Redis 7, lease 2 s | {} | {:.0} | {:.1} / {:.1} | {} in {} s (renewals: independent of the tunnel count) |",
        costs.tunnels,
        costs.per_second,
        costs.open,
        costs.close,
        costs.held,
        costs.held_for.as_secs()
    );
    Ok(())
}

/// The HTTP tunnel on its owner and forwarded by another node, and the WebSocket tunnel against
/// guacamole-lite, all in front of the same test guacd, repetitions interleaved; then whether multi-byte
/// text arrives intact through each (last, since it brings guacamole-lite down).
async fn guacamole_tunnels(plan: &Plan, lite: Option<&std::path::Path>) -> anyhow::Result<()> {
    use guacamole::Case;
    let mut setup = guacamole::Setup::start(lite).await?;
    let mut cases = vec![Case::Owner, Case::Forwarded, Case::Deskbroker];
    cases.extend(setup.lite.as_ref().map(|_| Case::Lite));
    let mut samples: Vec<Vec<guacamole::Sample>> = cases.iter().map(|_| Vec::new()).collect();
    for _ in 0..plan.repetitions {
        for (case, runs) in cases.iter().zip(&mut samples) {
            let sample = setup.sample(*case, plan.guac_blocks, plan.guac_trips).await;
            runs.push(sample.with_context(|| case.name())?);
        }
    }
    let mut intact = Vec::new();
    for case in &cases {
        intact.push(match setup.intact(*case, 16).await {
            Ok(()) => "yes".to_owned(),
            Err(error) => format!("no: {error}"),
        });
    }
    if let Some(lite) = &mut setup.lite
        && !lite.alive()
        && let Some(verdict) = intact.last_mut()
    {
        verdict.push_str("; the server process died, with all its connections");
    }
    println!();
    println!(
        "| Guacamole tunnel | read MiB/s | relay CPU s/GiB read | write round trip p50 / p90 / p99 us \
         | multi-byte text intact |"
    );
    println!("|---|---|---|---|---|");
    for ((case, runs), intact) in cases.iter().zip(&samples).zip(&intact) {
        let mut trips: Vec<f64> = runs.iter().flat_map(|s| s.round_trips.clone()).collect();
        trips.sort_by(f64::total_cmp);
        let at = |q: f64| trips[((trips.len() - 1) as f64 * q) as usize];
        println!(
            "| {} | {} | {} | {:.0} / {:.0} / {:.0} | {intact} |",
            case.name(),
            spread(&runs.iter().map(|s| s.mib_per_s).collect::<Vec<_>>(), 0),
            spread(&runs.iter().map(|s| s.cpu_per_gib).collect::<Vec<_>>(), 2),
            at(0.5),
            at(0.9),
            at(0.99),
        );
    }
    Ok(())
}

/// A browser that stops reading: one tunnel asks for a gigabyte and reads nothing. Returns the edge's memory
/// growth (KiB) meanwhile, and a second tunnel's throughput alone and beside the stalled one.
async fn back_pressure(relay: &Relay, bytes: u64) -> anyhow::Result<(u64, f64, f64)> {
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
async fn idle(relay: &Relay, count: usize) -> anyhow::Result<f64> {
    let pid = relay.pid().context("a relay process")?;
    let before = system::pss_kib(pid);
    let held = relay.open_echo_tunnels(count).await?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = system::pss_kib(pid);
    round_trips(relay, 10).await?;
    drop(held);
    Ok(after.saturating_sub(before) as f64 / count as f64)
}

async fn start(
    kind: &str,
    upstream: SocketAddr,
    sessions: &std::path::Path,
    websockify: Option<&str>,
) -> anyhow::Result<Option<Relay>> {
    Ok(Some(match kind {
        "direct" => Relay::Direct { upstream },
        "socat" => Relay::socat(upstream).await?,
        "websockify" => match websockify {
            Some(program) => Relay::websockify(program, upstream).await?,
            None => return Ok(None),
        },
        _ => Relay::deskbroker(sessions).await?,
    }))
}

/// The upstream for throughput: reads an 8-byte length, then writes that many bytes of a fixed pattern.
async fn start_source() -> anyhow::Result<SocketAddr> {
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

async fn start_echo() -> anyhow::Result<SocketAddr> {
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
fn expected_hash(n: u64) -> Vec<u8> {
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

struct Run {
    mib_per_s: f64,
    cpu_per_gib: Option<f64>,
    peak_kib: Option<u64>,
}

/// Pulls `bytes` through the relay on each of `streams` connections at once; checks the count, and the
/// SHA-256 when `hash` (a single-threaded hash caps a stream near 1 GiB/s, so both are measured).
async fn throughput(
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
async fn round_trips(relay: &Relay, count: usize) -> anyhow::Result<[f64; 3]> {
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

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `median (min-max)`, or `-` when nothing was measured.
fn spread(values: &[f64], decimals: usize) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match values.len() {
        1 => format!("{:.*}", decimals, values[0]),
        _ => format!(
            "{:.*} ({:.*}-{:.*})",
            decimals,
            median(values),
            decimals,
            min,
            decimals,
            max
        ),
    }
}

fn memory_cell(kib: &[u64]) -> String {
    let mib: Vec<f64> = kib.iter().map(|k| *k as f64 / 1024.0).collect();
    match mib.is_empty() {
        true => "-".into(),
        false => format!("{} MiB", spread(&mib, 1)),
    }
}
