//! A soak: a thousand concurrent tunnels over three edges, each client opening a relay on a random node,
//! echoing random checksummed messages through it and closing it after a random number of round trips,
//! then opening the next, until the soak's time is up. Afterwards every edge's memory and descriptors are
//! back near where they started, the registry holds as many keys as before, no slot is held and no byte
//! was lost.
//!
//! It runs for `DESKBROKER_SOAK_SECONDS` (10 s when unset, the default run's share of the suite's time):
//! `DESKBROKER_SOAK_SECONDS=600 cargo test -p deskbroker-tests --test faults soak -- --nocapture`
//! soaks for ten minutes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::Barrier;
use tokio::time::Instant;

use deskbroker_tests::clients::ws_connect;
use deskbroker_tests::flows::{End, RelayFlow, Rng, Shape};
use deskbroker_tests::platform::{Options, Platform, eventually};
use deskbroker_tests::process::LEASE;
use deskbroker_tests::redis::Keyspace;
use deskbroker_tests::upstreams::{descriptors, rss_kib};

use crate::one_at_a_time;

const TUNNELS: usize = 1000;
/// The soak's length when `DESKBROKER_SOAK_SECONDS` is not set.
const DEFAULT_SECONDS: u64 = 10;
/// Descriptors the test process needs: a client socket and the echo desktop's socket per tunnel, and
/// room for the rest.
const DESCRIPTORS: u64 = 2 * TUNNELS as u64 + 1024;
/// Small messages and unhurried clients: a thousand of them are CPU enough for this machine's cores,
/// which the edges, Redis and the clients share.
const SOAK: Shape = Shape {
    max_message: 2048,
    max_pause_ms: 200,
};
/// Round trips a tunnel makes before its client closes it: 1 to this many.
const MAX_ROUND_TRIPS: u64 = 30;

fn soak_time() -> Duration {
    let seconds = std::env::var("DESKBROKER_SOAK_SECONDS").ok();
    let seconds = seconds.map(|s| {
        s.parse()
            .expect("DESKBROKER_SOAK_SECONDS: a number of seconds")
    });
    Duration::from_secs(seconds.unwrap_or(DEFAULT_SECONDS))
}

/// Raises this process's descriptor limit to what the soak needs (within the hard limit), as an operator
/// would with `ulimit -n`; the edges it starts inherit it.
fn enough_descriptors() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|current| current < DESCRIPTORS) {
        let raised = Rlimit {
            current: Some(
                limit
                    .maximum
                    .map_or(DESCRIPTORS, |max| max.min(DESCRIPTORS)),
            ),
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, raised).expect("raising the descriptor limit");
    }
    let current = getrlimit(Resource::Nofile).current;
    assert!(
        current.is_none_or(|current| current >= DESCRIPTORS),
        "the soak needs {DESCRIPTORS} descriptors and the hard limit allows {current:?}: raise it \
         (ulimit -Hn)"
    );
}

/// What the clients saw, together.
#[derive(Default)]
struct Tally {
    open: AtomicUsize,
    peak: AtomicUsize,
    tunnels: AtomicU64,
    round_trips: AtomicU64,
    bytes: AtomicU64,
    /// Connects refused with a retry status (a slot not yet given back by a tunnel just closed).
    retried: AtomicU64,
}

impl Tally {
    fn opened(&self) {
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(open, Ordering::SeqCst);
        self.tunnels.fetch_add(1, Ordering::SeqCst);
    }
}

/// Opens a relay on one of `urls` and makes its first round trip: the flow, or how it was refused.
async fn open_one(urls: &[String], rng: &mut Rng, seed: u64) -> Result<RelayFlow, End> {
    let url = &urls[rng.between(0, urls.len() as u64 - 1) as usize];
    let (socket, _) = ws_connect(url, &[])
        .await
        .map_err(|error| End::Failed(error.to_string()))?;
    let mut flow = RelayFlow::new(socket, seed, SOAK);
    flow.round_trip().await?;
    Ok(flow)
}

/// One client: opens its first relay, waits for every other client's, then opens, echoes through and
/// closes relays until `until`. Returns the first failure, if any.
async fn client(
    i: u64,
    urls: Arc<Vec<String>>,
    tally: Arc<Tally>,
    all_open: Arc<Barrier>,
    peak_checked: Arc<Barrier>,
    until: Instant,
) -> Result<(), String> {
    let mut rng = Rng::new(i);
    let mut seed = i << 32;
    let first = open_retrying(&urls, &mut rng, seed, &tally).await;
    // Every client holds a relay at once: the platform is checked at its peak. A client whose first
    // relay failed waits too, so that the others are not kept waiting for it.
    all_open.wait().await;
    peak_checked.wait().await;
    let mut flow = first.map_err(|end| format!("client {i}: first relay: {end:?}"))?;
    loop {
        let round_trips = rng.between(1, MAX_ROUND_TRIPS);
        for _ in 0..round_trips {
            flow.round_trip()
                .await
                .map_err(|end| format!("client {i}: {end:?}"))?;
            tally.round_trips.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(rng.between(0, SOAK.max_pause_ms))).await;
        }
        let (sent, echoed) = flow.counts();
        if sent != echoed {
            return Err(format!("client {i}: {sent} bytes sent, {echoed} back"));
        }
        tally.bytes.fetch_add(echoed, Ordering::SeqCst);
        flow.close().await;
        tally.open.fetch_sub(1, Ordering::SeqCst);
        if Instant::now() >= until {
            return Ok(());
        }
        seed += 1;
        let next = open_retrying(&urls, &mut rng, seed, &tally).await;
        flow = next.map_err(|end| format!("client {i}: {end:?}"))?;
    }
}

/// [`open_one`], again after a pause while it is refused with a retry status.
async fn open_retrying(
    urls: &[String],
    rng: &mut Rng,
    seed: u64,
    tally: &Tally,
) -> Result<RelayFlow, End> {
    loop {
        match open_one(urls, rng, seed).await {
            Ok(flow) => {
                tally.opened();
                return Ok(flow);
            }
            Err(End::Closed(4429 | 4503, _)) => tally.retried.fetch_add(1, Ordering::SeqCst),
            Err(end) => return Err(end),
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each edge's resident memory (KiB) and open descriptors.
fn footprint<R: Keyspace>(platform: &Platform<R>) -> Vec<(u64, usize)> {
    let pids = platform.edges.iter().map(|edge| edge.process.pid());
    pids.map(|pid| (rss_kib(pid), descriptors(pid))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tunnels_come_and_go_and_leave_nothing_behind() {
    let _alone = one_at_a_time().await;
    enough_descriptors();
    let options = Options {
        // Every client is on loopback: one address, which the per-client cap would hold to 256.
        edge_args: vec!["--max-connections-per-client".into(), "4096".into()],
        ..Options::default()
    };
    let platform = Platform::start_with(options).await;
    let key = platform.tenant("soak", TUNNELS as u32).await;
    let path = platform.relay_session(&key, json!({})).await;
    let urls: Vec<String> = (0..3)
        .map(|n| format!("{}{path}", platform.ws(n)))
        .collect();
    let keys_before = platform.redis.dbsize().await.unwrap();
    let before = footprint(&platform);

    let soak = soak_time();
    let tally = Arc::new(Tally::default());
    let all_open = Arc::new(Barrier::new(TUNNELS + 1));
    let peak_checked = Arc::new(Barrier::new(TUNNELS + 1));
    let started = Instant::now();
    let until = started + soak;
    let clients: Vec<_> = (0..TUNNELS as u64)
        .map(|i| {
            let (urls, tally) = (Arc::new(urls.clone()), tally.clone());
            let (all_open, peak_checked) = (all_open.clone(), peak_checked.clone());
            tokio::spawn(client(i, urls, tally, all_open, peak_checked, until))
        })
        .collect();
    all_open.wait().await;
    let opened_in = started.elapsed();
    let at_peak = footprint(&platform);
    let mut owned = Vec::new();
    for n in 1..=platform.edges.len() {
        let set = format!("deskbroker:node-tunnels:{{edge-{n}}}");
        let count = platform.redis.cli(&["SCARD", &set]).await.unwrap();
        owned.push(count.first().cloned().unwrap_or_default());
    }
    let all_opened = tally.open.load(Ordering::SeqCst) == TUNNELS;
    if all_opened {
        platform
            .assert_invariant("soak", &key, TUNNELS, TUNNELS)
            .await;
    }
    peak_checked.wait().await;

    let mut failures = Vec::new();
    for client in clients {
        // Every client ends by itself: its waits are bounded (a hang fails it).
        if let Err(failure) = client.await.unwrap() {
            failures.push(failure);
        }
    }
    let ran = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} clients failed: {failures:?}",
        failures.len()
    );
    assert!(all_opened, "every client held a relay at the peak");
    assert_eq!(tally.open.load(Ordering::SeqCst), 0);

    let cleared = || async { platform.slots("soak").await == 0 };
    eventually(2 * LEASE, "every slot is given back", cleared).await;
    let keys = || async { platform.redis.dbsize().await.unwrap() == keys_before };
    eventually(2 * LEASE, "the registry holds what it held before", keys).await;
    let settled = || async {
        let now = footprint(&platform);
        now.iter()
            .zip(&before)
            .all(|((_, fds), (_, was))| fds <= was)
    };
    eventually(2 * LEASE, "every edge's descriptors are back", settled).await;
    let after = footprint(&platform);
    platform.assert_invariant("soak", &key, 0, TUNNELS).await;

    eprintln!(
        "measured: soak of {ran:?} ({soak:?} asked): {TUNNELS} relays open at once (all open {opened_in:?} \
         after the start), at most {} open; {} tunnels opened in all, {} round trips, {} bytes echoed, \
         none lost; {} connects retried (4429 while a closed tunnel's slot was on its way back)",
        tally.peak.load(Ordering::SeqCst),
        tally.tunnels.load(Ordering::SeqCst),
        tally.round_trips.load(Ordering::SeqCst),
        tally.bytes.load(Ordering::SeqCst),
        tally.retried.load(Ordering::SeqCst),
    );
    for (n, ((before, peak), after)) in before.iter().zip(&at_peak).zip(&after).enumerate() {
        eprintln!(
            "measured: edge-{}: RSS {} KiB before, {} KiB with its {} tunnels at the peak, {} KiB \
             after; descriptors {} before, {} at the peak, {} after",
            n + 1,
            before.0,
            peak.0,
            owned[n],
            after.0,
            before.1,
            peak.1,
            after.1
        );
    }
    eprintln!("measured: registry keys {keys_before} before, {keys_before} after");
    // The allocator keeps what it freed for the next tunnels, so memory does not fall back to a fresh
    // process's; what it must not do is grow with the tunnels opened (thousands here, a hundred
    // thousand in a long soak): what stays is bounded by twice what the peak's thousand open tunnels
    // held.
    for ((rss_before, _), ((rss_peak, _), (rss_after, _))) in
        before.iter().zip(at_peak.iter().zip(&after))
    {
        let held_at_peak = rss_peak.saturating_sub(*rss_before);
        assert!(
            rss_after.saturating_sub(*rss_before) <= 2 * held_at_peak,
            "memory is back near its baseline: {rss_before} KiB before, {rss_peak} KiB at the peak, \
             {rss_after} KiB after"
        );
    }
}
