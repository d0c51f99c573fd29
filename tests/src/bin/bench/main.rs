//! `bench`: deskbroker against its peers in one run, on the same client and the same upstream, reported as
//! a Markdown table (median and min-max of the repetitions). `scripts/bench` runs the full suite;
//! `scripts/bench --short` (what CI runs) checks that the suite runs and that every byte arrives.
//!
//! Measured per relay: one stream's throughput, 50 concurrent streams' throughput (checked by count and
//! SHA-256, and again by count alone, since hashing caps the client), the relay's CPU seconds per GiB moved
//! and its peak memory (its whole process tree, PSS) on the unhashed runs, and the round-trip latency of
//! 32-byte messages after a warm-up. The `scale` section measures the registry with up to a thousand
//! simulated nodes and a million tunnel records (`scale.rs`, docs/scale.md).

mod guacamole;
mod registry;
mod relays;
mod scale;
mod sizes;
mod streams;
mod system;
mod upstreams;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use relays::Relay;
use sizes::MIB;
use streams::{back_pressure, idle, round_trips, throughput};
use upstreams::{start_echo, start_source};

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
    /// Run only these sections (all when none is named), e.g. `--only relays --only guacamole`.
    #[arg(long, value_enum)]
    only: Vec<Section>,
    /// The scale section's sizes instead of the plan's, as `<nodes>:<tunnels>`, e.g. `--scale 1000:100000`.
    #[arg(long, value_parser = scale_size)]
    scale: Vec<(usize, usize)>,
}

fn scale_size(text: &str) -> Result<(usize, usize), String> {
    let (nodes, tunnels) = text.split_once(':').ok_or("expected <nodes>:<tunnels>")?;
    let number = |n: &str| {
        n.replace('_', "")
            .parse::<usize>()
            .map_err(|e| e.to_string())
    };
    Ok((number(nodes)?, number(tunnels)?))
}

/// The benchmark's sections, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    Relays,
    Idle,
    BackPressure,
    Guacamole,
    Registry,
    Scale,
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
    /// The registry's scale section: cluster sizes.
    scale: Vec<scale::Size>,
}

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
            scale: [10, 40]
                .map(|nodes| scale::Size {
                    nodes,
                    tunnels: 1_000,
                    dead_node_tunnels: 500,
                    churn: 200,
                    churn_for: Duration::from_secs(3),
                    steady_for: Duration::from_secs(5),
                })
                .into(),
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
            // The node count's effect at a fixed 10,000 tunnels, then a million tunnels on 1,000 nodes.
            scale: [
                (10, 10_000),
                (100, 10_000),
                (1_000, 10_000),
                (1_000, 1_000_000),
            ]
            .map(|(nodes, tunnels)| scale::Size {
                nodes,
                tunnels,
                dead_node_tunnels: 20_000,
                churn: 2_000,
                churn_for: Duration::from_secs(10),
                steady_for: Duration::from_secs(20),
            })
            .into(),
        },
    };
    let source = start_source().await?;
    let echo = start_echo().await?;
    let dir = tempfile::tempdir()?;
    let sessions = dir.path().join("sessions");
    std::fs::write(&sessions, format!("source: {source}\necho: {echo}\n"))?;

    let runs = |section| args.only.is_empty() || args.only.contains(&section);
    if runs(Section::Relays) {
        relays(&plan, source, echo, &sessions, args.websockify.as_deref()).await?;
    }
    if runs(Section::Idle) {
        idle_tunnels(&plan, echo, &sessions, args.websockify.as_deref()).await?;
    }
    if runs(Section::BackPressure) {
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
    }
    if runs(Section::Guacamole) {
        guacamole_tunnels(&plan, args.guacamole_lite.as_deref()).await?;
    }
    if runs(Section::Registry) {
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
    }
    if runs(Section::Scale) {
        let mut sizes = plan.scale;
        if let Some(template) = sizes.last().cloned()
            && !args.scale.is_empty()
        {
            sizes = args
                .scale
                .iter()
                .map(|&(nodes, tunnels)| scale::Size {
                    nodes,
                    tunnels,
                    ..template.clone()
                })
                .collect();
        }
        let mut rows = Vec::new();
        for size in &sizes {
            rows.extend(scale::measure(size).await?);
        }
        scale::print(&rows);
        scale::check_flat(&rows)?;
    }
    Ok(())
}

/// Throughput, CPU, memory and latency through each relay.
async fn relays(
    plan: &Plan,
    source: SocketAddr,
    echo: SocketAddr,
    sessions: &std::path::Path,
    websockify: Option<&str>,
) -> anyhow::Result<()> {
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
            let Some(source_relay) = start(kind, source, sessions, websockify).await? else {
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
            let Some(echo_relay) = start(kind, echo, sessions, websockify).await? else {
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
    Ok(())
}

/// Memory per idle tunnel through deskbroker and websockify.
async fn idle_tunnels(
    plan: &Plan,
    echo: SocketAddr,
    sessions: &std::path::Path,
    websockify: Option<&str>,
) -> anyhow::Result<()> {
    println!();
    println!("| relay | idle tunnels | memory per idle tunnel (PSS) | a new tunnel still relays |");
    println!("|---|---|---|---|");
    for (kind, count) in [
        ("deskbroker", plan.idle),
        ("websockify", plan.idle_websockify),
    ] {
        let Some(relay) = start(kind, echo, sessions, websockify).await? else {
            continue;
        };
        let per_tunnel = idle(&relay, count).await?;
        println!("| {} | {count} | {per_tunnel:.1} KiB | yes |", relay.name());
    }
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
