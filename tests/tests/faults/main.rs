//! Fault scenarios: the platform under checksummed traffic while one of its parts fails. An owner killed
//! outright, the peer link between two nodes cut, Redis lost (restarted empty, or a Cluster master
//! killed), a session and a tenant deleted, and a soak of a thousand tunnels. Each ends with the
//! invariant: for each tenant, open tunnels == registry records == slots held <= `max_tunnels`, and the
//! live view lists exactly the open tunnels.
//!
//! The tests print what they measured (`measured:` lines), the figures of docs/reliability.md. None
//! asserts a speed: the only deadlines are those that tell a hang from an answer. They run one at a time
//! (each starts a whole platform, several kill parts of it, and the soak needs the machine), so their
//! figures are their own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

mod deletion;
mod owner_killed;
mod peer_link;
mod redis_lost;
mod soak;

use tokio::sync::{Mutex, MutexGuard};
use tokio::task::JoinHandle;
use tokio::time::{Duration, timeout};
use tokio_util::sync::CancellationToken;

use deskbroker_tests::clients::Ws;
use deskbroker_tests::flows::{HANG, RelayFlow, Report, Shape};

/// Held by each scenario for its whole run.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

async fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

/// The traffic of the scenarios' relays: messages of up to 16 KiB, a round trip every 0-40 ms.
const BUSY: Shape = Shape {
    max_message: 16 * 1024,
    max_pause_ms: 40,
};

/// A relay flow running in a task of its own, and the node it was opened on.
struct Running<F> {
    node: usize,
    task: JoinHandle<(F, Report)>,
}

fn run_relay(node: usize, socket: Ws, seed: u64, stop: &CancellationToken) -> Running<RelayFlow> {
    let flow = RelayFlow::new(socket, seed, BUSY);
    let task = tokio::spawn(flow.run(stop.clone()));
    Running { node, task }
}

/// Waits for a flow to end, for at most `limit` (a hang otherwise).
async fn ended<F>(running: Running<F>, limit: Duration) -> (usize, F, Report) {
    let (flow, report) = timeout(limit, running.task)
        .await
        .expect("the flow ended in time: nothing hangs")
        .expect("the flow's task");
    (running.node, flow, report)
}

/// Waits for every flow to end, each within `HANG` of the wait's start.
async fn all_ended<F>(running: Vec<Running<F>>) -> Vec<(usize, F, Report)> {
    let deadline = tokio::time::Instant::now() + HANG;
    let mut done = Vec::new();
    for flow in running {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        done.push(ended(flow, left).await);
    }
    done
}

/// Whether every flow still runs.
fn all_running<F>(flows: &[Running<F>]) -> bool {
    flows.iter().all(|flow| !flow.task.is_finished())
}

/// The reports of flows that ended.
fn reports<F>(ended: Vec<(usize, F, Report)>) -> Vec<Report> {
    ended.into_iter().map(|(_, _, report)| report).collect()
}

/// The median and the largest of some durations, for the figures.
fn median_and_max(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    (median, times.last().copied().unwrap_or_default())
}
