//! The registry at cluster scale: many nodes' memberships in this one process (the real `Membership` and
//! registry code, each node with its own id and incarnation, renewing on the real lease) and tunnel
//! records spread over them, against one Redis and against a three-master Redis Cluster on this machine.
//!
//! Measured for each size: the registry's load in the steady state (commands per second, Redis CPU, bytes
//! Redis sends, from `INFO`, and the same per node and renewal period); Redis memory per tunnel record; the
//! connect path's registry latency while tunnels open and close at a steady rate; how long after a node dies
//! (it stops renewing, and never leaves) its last record is gone; and how long an emptied registry takes to
//! be refilled by the nodes, at what peak command rate. At the end every node leaves, and the registry must
//! be left as it was before they came.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use deskbroker_broker::tenants::{Limits, Tenant};
use deskbroker_broker::{Membership, Recorded, RedisRegistry, Registry};
use deskbroker_shared::cluster::{TunnelKind, TunnelRecord};
use deskbroker_shared::ids::{NodeId, SessionId, SessionToken, TenantId, TokenDigest, TunnelId};
use deskbroker_shared::keys;
use deskbroker_shared::session::{Session, Target};
use deskbroker_shared::time::unix_ms;
use deskbroker_tests::redis::{Redis, RedisCluster};

/// The lease every simulated node holds: the edge's default, so the renewal period is a real one.
const LEASE: Duration = Duration::from_secs(10);
const PERIOD: Duration = Duration::from_millis(3_333);

/// Registry connections the simulated nodes share (a real node has one each; Redis's work per command is
/// the same either way, and the generator's own CPU is spared).
const CONNECTIONS: usize = 8;

/// Tunnels of one session, and tenants the tunnels are spread over.
const PER_SESSION: usize = 10;
const TENANTS: usize = 100;

/// How long an emptied registry is watched being refilled.
const REFILL_DEADLINE: Duration = Duration::from_secs(360);

/// Nodes leaving at once at the end.
const LEAVING: usize = 32;

/// Tunnel records written at once while filling.
const WRITING: usize = 512;

/// One size of the cluster, and how long to watch it.
#[derive(Clone)]
pub struct Size {
    pub nodes: usize,
    pub tunnels: usize,
    /// The tunnels of the node that dies.
    pub dead_node_tunnels: usize,
    /// Tunnels opened (and closed again after a second) per second, for how long.
    pub churn: u32,
    pub churn_for: Duration,
    pub steady_for: Duration,
}

#[derive(Debug)]
pub struct Row {
    pub backend: &'static str,
    pub nodes: usize,
    pub tunnels: usize,
    pub steady: Rates,
    pub bytes_per_tunnel: f64,
    pub open: Latency,
    pub close: Latency,
    pub churned_per_s: f64,
    pub dead_node_tunnels: usize,
    pub dead_gone_after: Duration,
    /// How long the refill took, or how far it got by its deadline.
    pub refill: Result<Duration, String>,
    pub refill_peak_per_s: f64,
    /// Keys left in the registry after every node left.
    pub left_behind: u64,
}

/// The registry's load over a window.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// Commands the nodes sent (a script's call counts once) …
    pub sent_per_s: f64,
    /// … and what Redis ran (a script's own calls too).
    pub commands_per_s: f64,
    /// Redis CPU seconds per second, all masters together.
    pub cpu: f64,
    pub sent_bytes_per_s: f64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One Redis, or the masters of a Cluster.
struct Backend {
    name: &'static str,
    url: String,
    masters: Vec<Redis>,
}

impl Backend {
    async fn single() -> anyhow::Result<Self> {
        let redis = Redis::start().await?;
        Ok(Self {
            name: "Redis",
            url: redis.url(),
            masters: vec![redis],
        })
    }

    async fn cluster() -> anyhow::Result<Self> {
        let cluster = RedisCluster::start().await?;
        Ok(Self {
            name: "Redis Cluster, 3 masters",
            url: cluster.url(),
            masters: cluster.masters,
        })
    }

    /// What every master has done so far, summed.
    async fn sample(&self) -> anyhow::Result<Sample> {
        let mut total = Sample {
            at: Instant::now(),
            ..Sample::default()
        };
        for master in &self.masters {
            let info = master.cli(&["INFO", "all"]).await?;
            total.add(&info);
        }
        Ok(total)
    }

    /// How many keys of each kind (`deskbroker:<kind>:…`) the masters hold: what a refill that fell
    /// short, or a leave that left something, is short of or left.
    async fn key_kinds(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        let mut kinds = BTreeMap::new();
        for master in &self.masters {
            for key in master.cli(&["--scan"]).await? {
                let kind = key.splitn(3, ':').take(2).collect::<Vec<_>>().join(":");
                *kinds.entry(kind).or_insert(0) += 1;
            }
        }
        Ok(kinds)
    }

    /// Empties every master, the one that holds the node table last: a renewal that finds the table
    /// empty is how the nodes learn of the loss (a flush leaves a server's run id as it was), so none may
    /// learn of it, and record its tunnels again, while another master still has keys to lose.
    async fn flush(&self) -> anyhow::Result<()> {
        let mut masters = Vec::new();
        for master in &self.masters {
            let holds_nodes = master.cli(&["EXISTS", keys::NODES]).await? == ["1"];
            masters.push((holds_nodes, master));
        }
        masters.sort_by_key(|&(holds_nodes, _)| holds_nodes);
        for (_, master) in masters {
            master.cli(&["FLUSHALL"]).await?;
        }
        Ok(())
    }
}

/// Counters from `INFO all`.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// Commands the simulated nodes sent, by their own count.
    sent_by_nodes: u64,
    /// Commands served, less the `INFO` calls that asked.
    commands: u64,
    cpu: f64,
    memory: u64,
    sent: u64,
    keys: u64,
}

impl Default for Sample {
    fn default() -> Self {
        Self {
            at: Instant::now(),
            sent_by_nodes: commands_sent(),
            commands: 0,
            cpu: 0.0,
            memory: 0,
            sent: 0,
            keys: 0,
        }
    }
}

impl Sample {
    fn add(&mut self, info: &[String]) {
        for line in info {
            let Some((key, value)) = line.trim().split_once(':') else {
                continue;
            };
            let number = || value.parse::<f64>().unwrap_or(0.0);
            match key {
                "used_cpu_sys" | "used_cpu_user" => self.cpu += number(),
                "used_memory" => self.memory += number() as u64,
                "total_net_output_bytes" => self.sent += number() as u64,
                "db0" => self.keys += field(value, "keys"),
                _ if key.starts_with("cmdstat_") && key != "cmdstat_info" => {
                    self.commands += field(value, "calls");
                }
                _ => {}
            }
        }
    }

    fn rates_since(&self, before: &Sample) -> Rates {
        let seconds = (self.at - before.at).as_secs_f64();
        Rates {
            sent_per_s: (self.sent_by_nodes - before.sent_by_nodes) as f64 / seconds,
            commands_per_s: (self.commands - before.commands) as f64 / seconds,
            cpu: (self.cpu - before.cpu) / seconds,
            sent_bytes_per_s: (self.sent - before.sent) as f64 / seconds,
        }
    }
}

/// The kinds of keys `now` holds fewer of than `before`, and how many fewer.
fn difference(
    before: &BTreeMap<String, i64>,
    now: &BTreeMap<String, i64>,
) -> BTreeMap<String, i64> {
    before
        .iter()
        .map(|(kind, &n)| (kind.clone(), n - now.get(kind).copied().unwrap_or(0)))
        .filter(|&(_, short)| short > 0)
        .collect()
}

/// Registry commands this process has sent (a script's call or a pipeline counts once), by the count the
/// registry keeps for its metrics.
fn commands_sent() -> u64 {
    let text = deskbroker_broker::metrics::scrape(|_| {});
    let sent: f64 = text
        .lines()
        .filter(|line| line.starts_with("deskbroker_registry_commands_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    sent as u64
}

/// `name=<n>` in a line of comma-separated fields.
fn field(value: &str, name: &str) -> u64 {
    value
        .split(',')
        .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One simulated node: its membership, renewing in a task of its own.
struct Node {
    membership: Membership,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Node {
    /// Joins the cluster and renews from `delay` on (nodes start spread over a renewal period, as real
    /// ones do).
    async fn start(
        registry: Arc<dyn Registry>,
        id: String,
        delay: Duration,
    ) -> anyhow::Result<Self> {
        // A port nothing listens on: no simulated node is ever forwarded to.
        let membership = Membership::new(
            registry,
            NodeId::new(id),
            "http://127.0.0.1:9".into(),
            LEASE,
        );
        membership.join().await?;
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (membership, stop) = (membership.clone(), stop.clone());
            async move {
                tokio::time::sleep(delay).await;
                membership.run(stop, |_| {}).await;
            }
        });
        Ok(Self {
            membership,
            stop,
            task,
        })
    }

    /// Leaves the cluster, removing its records.
    async fn leave(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Dies: stops renewing, and leaves nothing.
    fn die(self) {
        self.task.abort();
    }
}

/// Everything one size runs on.
struct Fleet {
    registries: Vec<Arc<dyn Registry>>,
    nodes: Vec<Node>,
    tenants: Vec<Tenant>,
}

impl Fleet {
    async fn start(url: &str, nodes: usize) -> anyhow::Result<Self> {
        let mut registries: Vec<Arc<dyn Registry>> = Vec::new();
        for _ in 0..CONNECTIONS.min(nodes) {
            registries.push(Arc::new(RedisRegistry::connect(url).await?));
        }
        let tenants: Vec<Tenant> = (0..TENANTS)
            .map(|t| Tenant {
                id: TenantId::new(format!("tenant-{t}")),
                key_sha256: TokenDigest::of(&format!("key-{t}")),
                policy: Default::default(),
                limits: Limits {
                    max_tunnels: u32::MAX,
                    ..Limits::default()
                },
                guacd_params: Default::default(),
            })
            .collect();
        let mut fleet = Self {
            registries,
            nodes: Vec::new(),
            tenants,
        };
        fleet.put_tenants().await?;
        let joins = (0..nodes).map(|i| {
            let registry = fleet.registries[i % fleet.registries.len()].clone();
            Node::start(
                registry,
                format!("sim-{i}"),
                PERIOD * i as u32 / nodes as u32,
            )
        });
        let started: Vec<_> = futures_util::stream::iter(joins)
            .buffer_unordered(64)
            .collect()
            .await;
        fleet.nodes = started.into_iter().collect::<anyhow::Result<_>>()?;
        Ok(fleet)
    }

    /// Writes the tenants, as the broker does (again after the registry lost them).
    async fn put_tenants(&self) -> anyhow::Result<()> {
        for tenant in &self.tenants {
            self.registries[0].put_tenant(tenant).await?;
        }
        Ok(())
    }

    /// A tunnel record of `node`'s, the `i`th of the fleet.
    fn record(&self, node: &Membership, i: usize) -> TunnelRecord {
        let tenant = &self.tenants[i % TENANTS].id;
        let me = node.me();
        TunnelRecord {
            id: TunnelId::random(),
            owner: me.id.clone(),
            incarnation: me.incarnation,
            tenant: tenant.clone(),
            session: SessionId::new(format!("{tenant}-{}", i / (TENANTS * PER_SESSION))),
            kind: TunnelKind::Websockify,
            created_ms: unix_ms(SystemTime::now()),
            http_token: None,
            connection: None,
        }
    }

    /// Records `count` tunnels on `nodes` (round robin), within their tenants' (ample) quotas.
    async fn fill(&self, nodes: &[&Membership], count: usize) -> anyhow::Result<()> {
        let writes = (0..count).map(|i| {
            let node = nodes[i % nodes.len()];
            let record = self.record(node, i);
            async move { node.add_tunnel(record, Some(u32::MAX)).await }
        });
        let mut written = futures_util::stream::iter(writes).buffer_unordered(WRITING);
        while let Some(recorded) = written.next().await {
            ensure!(recorded? == Recorded::Yes, "a tunnel found no slot");
        }
        Ok(())
    }

    /// Every node leaves, a few dozen at a time, as a cluster that is shut down does: a thousand at the
    /// same instant over the generator's few connections would outrun the commands' deadline, and a
    /// node that fails to leave waits for a node that starts again to remove its records.
    async fn leave(self) {
        let leaving = self.nodes.into_iter().map(Node::leave);
        futures_util::stream::iter(leaving)
            .buffer_unordered(LEAVING)
            .collect::<Vec<()>>()
            .await;
    }
}

/// Runs one size against one Redis and against a three-master Cluster.
pub async fn measure(size: &Size) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for backend in [Backend::single().await?, Backend::cluster().await?] {
        let row = measure_on(&backend, size)
            .await
            .with_context(|| format!("{} nodes on {}", size.nodes, backend.name))?;
        eprintln!("measured: {row:?}");
        rows.push(row);
    }
    Ok(rows)
}

async fn measure_on(backend: &Backend, size: &Size) -> anyhow::Result<Row> {
    let empty = backend.sample().await?;
    let fleet = Fleet::start(&backend.url, size.nodes).await?;
    let before_tunnels = backend.sample().await?;
    let all: Vec<&Membership> = fleet.nodes.iter().map(|n| &n.membership).collect();
    fleet.fill(&all, size.tunnels).await?;
    let filled = backend.sample().await?;
    let bytes_per_tunnel =
        filled.memory.saturating_sub(before_tunnels.memory) as f64 / size.tunnels.max(1) as f64;

    // The steady state: every node renewing, nothing else. What it holds is what a refill must bring
    // back.
    tokio::time::sleep(PERIOD).await;
    let start = backend.sample().await?;
    tokio::time::sleep(size.steady_for).await;
    let full = backend.sample().await?;
    let steady = full.rates_since(&start);

    let kinds = backend.key_kinds().await?;
    let (open, close, churned_per_s) = churn(&fleet, &all, size).await?;

    // A node with many tunnels dies: the others' renewals find its lease lapsed and remove its records.
    let registry = fleet.registries[0].clone();
    let doomed = Node::start(registry.clone(), "sim-doomed".into(), Duration::ZERO).await?;
    fleet
        .fill(&[&doomed.membership], size.dead_node_tunnels)
        .await?;
    let doomed_id = doomed.membership.me().id.clone();
    doomed.die();
    let died = Instant::now();
    let deadline = died + 4 * LEASE;
    loop {
        let left = registry.tunnels_of(&doomed_id).await?.len();
        let listed = registry.nodes().await?.iter().any(|n| n.id == doomed_id);
        if left == 0 && !listed {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the dead node's {left} records stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead_gone_after = died.elapsed();

    // The registry loses everything; the broker writes its tenants back, the nodes their tunnels.
    backend.flush().await?;
    let flushed = Instant::now();
    fleet.put_tenants().await?;
    let mut last = backend.sample().await?;
    let mut peak: f64 = 0.0;
    let deadline = flushed + REFILL_DEADLINE;
    let refill = loop {
        if last.keys >= full.keys {
            break Ok(flushed.elapsed());
        }
        if Instant::now() >= deadline {
            let share = last.keys as f64 / full.keys as f64 * 100.0;
            let short = difference(&kinds, &backend.key_kinds().await?);
            let secs = REFILL_DEADLINE.as_secs();
            break Err(format!("{share:.1}% after {secs} s, short of {short:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = backend.sample().await?;
        peak = peak.max(now.rates_since(&last).commands_per_s);
        last = now;
    };

    fleet.leave().await;
    // Only the tenants' two keys may stay.
    let left_behind = backend.sample().await?.keys.saturating_sub(empty.keys + 2);
    if left_behind > 0 {
        let left = backend.key_kinds().await?;
        eprintln!(
            "{} nodes on {}: left behind {left:?}",
            size.nodes, backend.name
        );
    }
    ensure!(
        steady.commands_per_s > 0.0 && bytes_per_tunnel > 0.0 && open.p99_ms.is_finite(),
        "nothing measured: {steady:?}, {bytes_per_tunnel} B per tunnel, {open:?}"
    );
    Ok(Row {
        backend: backend.name,
        nodes: size.nodes,
        tunnels: size.tunnels,
        steady,
        bytes_per_tunnel,
        open,
        close,
        churned_per_s,
        dead_node_tunnels: size.dead_node_tunnels,
        dead_gone_after,
        refill,
        refill_peak_per_s: peak,
        left_behind,
    })
}

/// Opens `size.churn` tunnels a second for `size.churn_for`, each through the connect path's registry
/// calls (the session by its token, its tenant, a slot and the records), and closes each a second later.
/// Returns the open and close latencies and the rate reached.
async fn churn(
    fleet: &Fleet,
    nodes: &[&Membership],
    size: &Size,
) -> anyhow::Result<(Latency, Latency, f64)> {
    let registry = fleet.registries[0].clone();
    let tenant = &fleet.tenants[0];
    let token = SessionToken::new("scale-bench-session");
    let target = Target::parse("127.0.0.1:5900").context("target")?;
    let session = Session::new(SessionId::new("churn"), tenant.id.clone(), target);
    registry.put_session(&token, &session).await?;
    let opens = Arc::new(Mutex::new(Vec::new()));
    let closes = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (size.churn / 100).max(1) as usize;
    let mut running = Vec::new();
    let mut opened = 0;
    while started.elapsed() < size.churn_for {
        ticks.tick().await;
        for _ in 0..per_tick {
            let node = nodes[opened % nodes.len()].clone();
            let mut record = fleet.record(&node, opened);
            record.session = session.id.clone();
            record.tenant = tenant.id.clone();
            let (registry, token) = (registry.clone(), token.clone());
            let (opens, closes) = (opens.clone(), closes.clone());
            running.push(tokio::spawn(async move {
                let sent = Instant::now();
                let found = registry.session(&token).await?.context("session")?;
                let limit = registry.tenant(&found.tenant).await?.context("tenant")?;
                let recorded = node
                    .add_tunnel(record.clone(), Some(limit.limits.max_tunnels))
                    .await?;
                ensure!(recorded == Recorded::Yes, "no slot");
                push(&opens, sent.elapsed());
                tokio::time::sleep(Duration::from_secs(1)).await;
                let sent = Instant::now();
                node.remove_tunnel(&record).await;
                push(&closes, sent.elapsed());
                anyhow::Ok(())
            }));
            opened += 1;
        }
    }
    let rate = opened as f64 / started.elapsed().as_secs_f64();
    for task in running {
        task.await??;
    }
    let percentiles = |samples: &Mutex<Vec<Duration>>| {
        let mut ms: Vec<f64> = lock(samples)
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms.get(((ms.len().max(1) - 1) as f64 * q) as usize).copied();
        Latency {
            p50_ms: at(0.5).unwrap_or(f64::NAN),
            p99_ms: at(0.99).unwrap_or(f64::NAN),
        }
    };
    Ok((percentiles(&opens), percentiles(&closes), rate))
}

fn push(samples: &Mutex<Vec<Duration>>, sample: Duration) {
    lock(samples).push(sample);
}

fn lock(samples: &Mutex<Vec<Duration>>) -> std::sync::MutexGuard<'_, Vec<Duration>> {
    samples
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Row {
    /// A rate's share of one node's renewal period.
    fn per_node(&self, per_s: f64) -> f64 {
        per_s * PERIOD.as_secs_f64() / self.nodes as f64
    }
}

/// Every emptied registry was refilled, every node's leaving left it empty, and what a node costs the registry per renewal does not grow with
/// the number of nodes: between the smallest and the largest size on each backend, the commands a node sends and the bytes Redis sends it
/// per period stay within a quarter (and a little, for the noise of small counts).
pub fn check_flat(rows: &[Row]) -> anyhow::Result<()> {
    for row in rows {
        if let Err(short) = &row.refill {
            anyhow::bail!(
                "{} nodes on {}: not refilled: {short}",
                row.nodes,
                row.backend
            );
        }
        ensure!(
            row.left_behind == 0,
            "{} nodes on {}: {} keys left after every node left",
            row.nodes,
            row.backend,
            row.left_behind
        );
    }
    for backend in ["Redis", "Redis Cluster, 3 masters"] {
        let on: Vec<&Row> = rows.iter().filter(|row| row.backend == backend).collect();
        let (Some(small), Some(large)) = (
            on.iter().min_by_key(|row| row.nodes),
            on.iter().max_by_key(|row| row.nodes),
        ) else {
            continue;
        };
        for (what, of) in [
            (
                "commands sent",
                (|r: &Rates| r.sent_per_s) as fn(&Rates) -> f64,
            ),
            ("bytes Redis sends", |r: &Rates| r.sent_bytes_per_s),
        ] {
            let (few, many) = (
                small.per_node(of(&small.steady)),
                large.per_node(of(&large.steady)),
            );
            ensure!(
                many <= few * 1.25 + 1.0,
                "{backend}: {what} per node per renewal grew from {few:.1} at {} nodes to {many:.1} at {}",
                small.nodes,
                large.nodes
            );
        }
    }
    Ok(())
}

/// Prints the rows as the benchmark's Markdown tables.
pub fn print(rows: &[Row]) {
    println!();
    println!(
        "| registry at scale | nodes | tunnels | steady: commands sent/s (Redis runs/s) | Redis CPU | \
         Redis sends | per node per renewal: commands sent / KiB Redis sends | memory per tunnel |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.0} ({:.0}) | {:.0}% | {:.2} MiB/s | {:.1} / {:.2} | {:.0} B |",
            row.backend,
            row.nodes,
            row.tunnels,
            row.steady.sent_per_s,
            row.steady.commands_per_s,
            row.steady.cpu * 100.0,
            row.steady.sent_bytes_per_s / (1024.0 * 1024.0),
            row.per_node(row.steady.sent_per_s),
            row.per_node(row.steady.sent_bytes_per_s) / 1024.0,
            row.bytes_per_tunnel,
        );
    }
    println!();
    println!(
        "| registry at scale | nodes | tunnels | connect path p50 / p99 ms (open; close) at tunnels/s | \
         a dead node's records gone after | emptied registry refilled in | refill's peak commands/s \
         | keys left after all left |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.2} / {:.2}; {:.2} / {:.2} at {:.0} | {:.1} s ({} tunnels) | {} | {:.0} | {} |",
            row.backend,
            row.nodes,
            row.tunnels,
            row.open.p50_ms,
            row.open.p99_ms,
            row.close.p50_ms,
            row.close.p99_ms,
            row.churned_per_s,
            row.dead_gone_after.as_secs_f64(),
            row.dead_node_tunnels,
            match &row.refill {
                Ok(took) => format!("{:.1} s", took.as_secs_f64()),
                Err(short) => format!("not refilled: {short}"),
            },
            row.refill_peak_per_s,
            row.left_behind,
        );
    }
}
