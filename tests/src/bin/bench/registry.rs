//! The registry's share of a tunnel: how many tunnels one node opens per second with Redis, and how many
//! Redis commands a tunnel costs over its life (to open, while open, to close), counted by Redis itself.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use deskbroker_tests::Edge;
use deskbroker_tests::redis::Redis;

use crate::relays::ONE_CLIENT_MANY_USERS;
use crate::relays::Relay;

pub struct Costs {
    pub tunnels: usize,
    pub per_second: f64,
    pub open: f64,
    pub close: f64,
    /// Commands while the tunnels stayed open, in total, and for how long.
    pub held: u64,
    pub held_for: Duration,
}

/// Lease of the measured node: short, so that renewals happen while the tunnels are held.
const LEASE: &str = "2s";

/// Redis commands served so far, not counting the INFO calls that ask.
async fn commands(redis: &Redis) -> anyhow::Result<u64> {
    let stats = redis.cli(&["info", "commandstats"]).await?;
    Ok(stats
        .iter()
        .filter(|line| line.starts_with("cmdstat_") && !line.starts_with("cmdstat_info:"))
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum())
}

pub async fn measure(sessions: &Path, tunnels: usize, hold: Duration) -> anyhow::Result<Costs> {
    let redis = Redis::start().await?;
    let args = [
        "--sessions",
        sessions.to_str().unwrap_or_default(),
        "--node-id",
        "bench",
        "--lease",
        LEASE,
    ];
    let env = [
        ("DESKBROKER_REDIS_URL", redis.url()),
        ("DESKBROKER_LOG", "warn,deskbroker_edge=info".into()),
        (ONE_CLIENT_MANY_USERS.0, ONE_CLIENT_MANY_USERS.1.into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let relay = Relay::Deskbroker {
        edge: Edge::start_with_env(&args, &env).await?,
    };

    let before = commands(&redis).await?;
    let started = Instant::now();
    let held = relay.open_echo_tunnels(tunnels).await?;
    let per_second = tunnels as f64 / started.elapsed().as_secs_f64();
    let opened = commands(&redis).await?;
    tokio::time::sleep(hold).await;
    let kept = commands(&redis).await?;
    drop(held);
    let key = "deskbroker:node-tunnels:{bench}";
    for _ in 0..200 {
        if redis
            .cli(&["scard", key])
            .await?
            .first()
            .map(String::as_str)
            == Some("0")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed = commands(&redis).await?;
    ensure!(
        redis
            .cli(&["scard", key])
            .await?
            .first()
            .map(String::as_str)
            == Some("0"),
        "records left behind"
    );
    let per = |n: u64| n as f64 / tunnels as f64;
    Ok(Costs {
        tunnels,
        per_second,
        open: per(opened - before),
        close: per(closed
            .checked_sub(kept)
            .context("command counter went back")?),
        held: kept - opened,
        held_for: hold,
    })
}
