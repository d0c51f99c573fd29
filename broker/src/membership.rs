//! A node's side of the lease rules: it renews its own lease, keeps a view of the other nodes, cleans up
//! after nodes whose lease lapsed, and knows its own tunnels so it can record them again if the registry
//! loses them (Redis restarted empty).
//!
//! Leases cost one registry command per node per renewal period, whatever the number of tunnels or of
//! nodes: the renewal also says which leases ran out (the registry keeps an index by expiry), and the
//! node that hears of one first removes its records. A node reads other nodes' records only as it needs
//! them (a tunnel's owner, to forward to it), one command per period for all of those it used within the
//! last two leases. A tunnel's owner is alive while its record in the view has not expired: since the records
//! in use are read again every renewal period and a lease is renewed three times per lease, a live owner
//! never looks expired, and a dead one looks expired everywhere within one lease of its last renewal.
//!
//! A node that uses another it found earlier (a forward to a tunnel's owner) asks [`Membership::lease_of`]
//! each time, or waits on [`Membership::lapsed`] while it uses it: both judge by the rules of
//! [`crate::lease`], which conclude a lapse only from a read of the registry.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use deskbroker_shared::cluster::{Incarnation, NodeRecord, TunnelRecord};
use deskbroker_shared::ids::{NodeId, TenantId, TunnelId};
use deskbroker_shared::time::unix_ms;

use crate::defaults::{REFILL_AT_ONCE, REFILL_RATE, RENEWAL_RETRY, RENEWALS_PER_LEASE};
use crate::lease::{Lease, Reads};
use crate::metrics::metrics;
use crate::registry::{Registry, Renewal, Result};

#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<dyn Registry>,
    me: NodeRecord,
    lease: Duration,
    state: Mutex<State>,
    /// Bumped after every read of the view, for those waiting on [`Membership::lapsed`].
    read: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// The nodes this one asked about lately, as last read.
    view: HashMap<NodeId, Seen>,
    reads: Reads,
    tunnels: HashMap<TunnelId, Arc<Owned>>,
    /// Removals that failed while the registry was away, retried at each renewal.
    unremoved: Vec<Arc<Owned>>,
    /// When the last renewal that the registry confirmed was sent: the lease runs a lease from then.
    confirmed: Option<Instant>,
    /// The registry's servers' runs as last read (see [`Registry::server_runs`]).
    runs: Option<Vec<String>>,
    /// Tunnels to record again, HTTP tunnels first (other nodes look those up by token): every tunnel
    /// from the renewal that found the registry may have lost them, a paced share written at each renewal
    /// (one that fails half-way leaves the rest owed).
    owed: VecDeque<Arc<Owned>>,
    /// The most live leases a renewal reported within the last lease, and when: a refill's share is taken
    /// by it, since the renewals just after the registry lost its data count only the nodes that renewed
    /// since.
    most_live: Option<(usize, Instant)>,
    /// The last renewal failed: whether the registry found this node missing is not known.
    answer_lost: bool,
}

/// A node as this node last read it.
struct Seen {
    /// Its record, `None` when the registry did not hold it.
    record: Option<NodeRecord>,
    /// When that read was sent, in Unix ms; 0 before the first.
    read_ms: u64,
    /// When this node last asked about it: one not asked about for two leases is forgotten.
    used: Instant,
}

impl Seen {
    fn unread() -> Self {
        Self {
            record: None,
            read_ms: 0,
            used: Instant::now(),
        }
    }
}

/// One tunnel's registry state, owned by its node. Every write about the tunnel (its slot and records, a
/// later update, writing it again after the registry lost it, its removal) is made under `writes`, one at
/// a time, and none is made once its removal began: a stale write can never bring back a removed tunnel.
struct Owned {
    record: Mutex<TunnelRecord>,
    removed: AtomicBool,
    writes: tokio::sync::Mutex<()>,
}

impl Owned {
    fn record(&self) -> TunnelRecord {
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// What recording a tunnel came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Its slot is taken and its records written.
    Yes,
    /// Its tenant has no slot left: nothing was written.
    NoSlot,
}

impl Membership {
    pub fn new(registry: Arc<dyn Registry>, id: NodeId, peer_url: String, lease: Duration) -> Self {
        let me = NodeRecord {
            id,
            incarnation: Incarnation(uuid::Uuid::new_v4()),
            peer_url,
            expires_ms: 0,
        };
        let state = Mutex::default();
        Self {
            inner: Arc::new(Inner {
                registry,
                me,
                lease,
                state,
                read: watch::Sender::new(0),
            }),
        }
    }

    pub fn me(&self) -> &NodeRecord {
        &self.inner.me
    }

    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.inner.registry
    }

    /// Whether this node's lease runs, by the last renewal the registry confirmed: one that cannot renew
    /// (the registry away, or fenced while another node cleans up after its lapse) is taken for gone by
    /// the others within the lease, so it is no place for new tunnels.
    pub fn lease_held(&self) -> bool {
        let confirmed = self.lock().confirmed;
        confirmed.is_some_and(|sent| sent.elapsed() < self.inner.lease)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections are single map operations: none can leave the state half-updated.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn period(&self) -> Duration {
        self.inner.lease / RENEWALS_PER_LEASE
    }

    /// Joins the cluster: forgets what an earlier run of this node left behind, then takes a lease.
    pub async fn join(&self) -> Result<()> {
        self.inner.registry.remove_node(&self.inner.me.id).await?;
        self.renew(&|_| {}).await.map(drop)
    }

    /// Renews the lease every lease/3 until `shutdown`, then leaves the cluster. `evict` is told of each
    /// tunnel this node can no longer own (see [`Membership::tick`]).
    pub async fn run(&self, shutdown: CancellationToken, evict: impl Fn(&TunnelRecord) + Sync) {
        let mut ticks = tokio::time::interval(self.period());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => break,
            }
            if let Err(error) = self.tick(&evict).await {
                warn!(%error, "lease renewal failed; open tunnels keep flowing");
                ticks.reset_after(RENEWAL_RETRY.min(self.period()));
            }
        }
        match self.inner.registry.remove_node(&self.inner.me.id).await {
            Ok(()) => info!("left the cluster"),
            Err(error) => warn!(%error, "could not leave the cluster; the lease will lapse"),
        }
    }

    /// One renewal round: the lease, the view, cleanup of lapsed nodes, retried removals. When the lease
    /// may have lapsed, the node records its tunnels again, each within its tenant's quota, and `evict`
    /// is told of each that no longer fits: the node can no longer own it.
    pub async fn tick(&self, evict: &(dyn Fn(&TunnelRecord) + Sync)) -> Result<()> {
        let lapsed = self.renew(evict).await?;
        for id in lapsed.iter().filter(|id| **id != self.inner.me.id) {
            if self.inner.registry.remove_lapsed_node(id).await? {
                info!(node = %id, "node lease lapsed; removed its records");
            }
        }
        self.refresh().await?;
        let unremoved = std::mem::take(&mut self.lock().unremoved);
        for owned in unremoved {
            self.remove_records(owned).await;
        }
        Ok(())
    }

    /// Renews the lease. When the registry did not know this node (first start, Redis lost its data,
    /// another node cleaned up after it), the lease may have lapsed since the last renewal the registry
    /// confirmed (the registry's answers were lost, so the first is not known), or one of the registry's
    /// servers restarted (a Cluster master back empty lost its slots, wherever the lease is kept),
    /// records every tunnel again. Returns the nodes whose lease the registry found lapsed.
    async fn renew(&self, evict: &(dyn Fn(&TunnelRecord) + Sync)) -> Result<Vec<NodeId>> {
        let sent = Instant::now();
        let record = self.inner.me.renewed(SystemTime::now(), self.inner.lease);
        let registry = &self.inner.registry;
        let (heartbeat, runs) = tokio::join!(registry.renew(&record), registry.server_runs());
        let heartbeat = heartbeat.inspect_err(|_| {
            metrics().lease_renewal("failed");
            self.lock().answer_lost = true;
        })?;
        let renewal = heartbeat.renewal;
        metrics().lease_renewal(match renewal {
            Renewal::Renewed => "renewed",
            Renewal::Fresh => "fresh",
            Renewal::Fenced => "fenced",
        });
        if renewal == Renewal::Fenced {
            info!("another node is removing this node's records after its lease lapsed; waiting");
            return Ok(Vec::new());
        }
        metrics().nodes_alive.set(heartbeat.live as i64);
        let (owed, live) = {
            let mut state = self.lock();
            let most = match state.most_live {
                Some((most, at)) if most > heartbeat.live && at.elapsed() < self.inner.lease => {
                    (most, at)
                }
                _ => (heartbeat.live, Instant::now()),
            };
            state.most_live = Some(most);
            // Runs not read this time (a server away) are read again at the next renewal.
            let before = match runs {
                Ok(runs) => state.runs.replace(runs),
                Err(_) => state.runs.clone(),
            };
            let restarted = before.is_some_and(|before| Some(&before) != state.runs.as_ref());
            if restarted {
                info!("a registry server restarted, and may have lost what it held");
            }
            if renewal == Renewal::Fresh || restarted {
                // Records were lost (the registry lost its data, or cleaned up after us): the others'
                // records come back only as they renew.
                state.reads.recreated_ms = Some(unix_ms(SystemTime::now()));
            }
            // Two renewal periods without a confirmed renewal: the lease may have lapsed (the threshold
            // leaves room for clocks that differ a little).
            let last = state.confirmed.replace(sent);
            let doubtful =
                last.is_some_and(|last| last.elapsed() >= self.inner.lease - self.period());
            // A renewal that failed may have reached the registry and lost only its answer: had that one
            // found the node missing, this one would not, and nothing would be recorded again.
            let answer_lost = std::mem::take(&mut state.answer_lost);
            if renewal == Renewal::Fresh || doubtful || restarted || answer_lost {
                let mut all: Vec<Arc<Owned>> = state.tunnels.values().cloned().collect();
                all.sort_by_cached_key(|owned| owned.record().http_token.is_none());
                if !all.is_empty() {
                    info!(
                        tunnels = all.len(),
                        "the lease may have lapsed; recording this node's tunnels again"
                    );
                }
                state.owed = all.into();
            }
            (!state.owed.is_empty(), most.0)
        };
        // Recording again what is still there changes nothing.
        if owed {
            self.record_again(evict, live).await?;
        }
        Ok(heartbeat.lapsed)
    }

    /// Records again this node's share of the tunnels owed, each within its tenant's quota now: of
    /// [`REFILL_RATE`] tunnels a second for the whole cluster, the share of one of `live` nodes, for at
    /// most half a renewal period, [`REFILL_AT_ONCE`] at a time. A registry that every node refills at
    /// once so keeps answering renewals and connects, and this node's renewals keep their pace, however
    /// many tunnels it holds.
    async fn record_again(
        &self,
        evict: &(dyn Fn(&TunnelRecord) + Sync),
        live: usize,
    ) -> Result<()> {
        let share = f64::from(REFILL_RATE) / live.max(1) as f64 * self.period().as_secs_f64();
        let budget = (share.ceil() as usize).max(1);
        let stop_by = Instant::now() + self.period() / 2;
        let mut limits: HashMap<TenantId, Option<u32>> = HashMap::new();
        let mut written = 0;
        while written < budget && Instant::now() < stop_by {
            let batch: Vec<Arc<Owned>> = {
                let state = self.lock();
                let at_once = REFILL_AT_ONCE.min(budget - written);
                state.owed.iter().take(at_once).cloned().collect()
            };
            if batch.is_empty() {
                break;
            }
            let tenants: HashSet<TenantId> = batch
                .iter()
                .map(|owned| owned.record().tenant)
                .filter(|tenant| !limits.contains_key(tenant))
                .collect();
            let found = join_all(tenants.iter().map(|id| self.inner.registry.tenant(id))).await;
            for (id, tenant) in tenants.into_iter().zip(found) {
                limits.insert(id, tenant?.map(|tenant| tenant.limits.max_tunnels));
            }
            let writes = batch.iter().map(|owned| {
                let limit = limits.get(&owned.record().tenant).copied().flatten();
                self.write(owned, limit)
            });
            // A batch that failed is owed whole: writing again what is there changes nothing.
            let outcomes: Vec<Option<Recorded>> =
                join_all(writes).await.into_iter().collect::<Result<_>>()?;
            for (owned, outcome) in batch.iter().zip(outcomes) {
                if outcome == Some(Recorded::NoSlot) {
                    let record = owned.record();
                    warn!(tunnel = %record.id, tenant = %record.tenant, "no slot left for a tunnel after the lease lapsed; closing it");
                    if let Some(owned) = self.forget(&record.id) {
                        // What another node's cleanup may have left of it.
                        self.remove_records(owned).await;
                    }
                    evict(&record);
                }
            }
            self.lock().owed.drain(..batch.len());
            written += batch.len();
        }
        let left = self.lock().owed.len();
        debug!(written, left, "tunnels recorded again");
        Ok(())
    }

    /// Reads again the records of the nodes this one asked about within the last two leases, and forgets
    /// the others: one command, as large as the number of nodes this one uses, not as the cluster. (A
    /// wait on a node asks again once its lease would have run out, up to a lease after the read it
    /// judged by.)
    pub async fn refresh(&self) -> Result<()> {
        let ids: Vec<NodeId> = {
            let mut state = self.lock();
            let kept = 2 * self.inner.lease;
            state.view.retain(|_, seen| seen.used.elapsed() < kept);
            state.view.keys().cloned().collect()
        };
        self.read(&ids).await
    }

    /// Reads these nodes' records into the view.
    async fn read(&self, ids: &[NodeId]) -> Result<()> {
        let sent_ms = unix_ms(SystemTime::now());
        let records = self.inner.registry.node_records(ids).await?;
        {
            let mut state = self.lock();
            for (id, record) in ids.iter().zip(records) {
                let seen = state.view.entry(id.clone()).or_insert_with(Seen::unread);
                (seen.record, seen.read_ms) = (record, sent_ms);
            }
        }
        self.inner.read.send_modify(|reads| *reads += 1);
        Ok(())
    }

    /// What the view says of `known`, a node found live earlier (see [`crate::lease`]). Reads no registry:
    /// a node not in the view is read at the next renewal, and taken as live until then.
    pub fn lease_of(&self, known: &NodeRecord) -> Lease {
        let mut state = self.lock();
        let now_ms = unix_ms(SystemTime::now());
        let reads = state.reads;
        let seen = state
            .view
            .entry(known.id.clone())
            .or_insert_with(Seen::unread);
        seen.used = Instant::now();
        match seen.read_ms {
            0 => Lease::Live(known.clone()),
            read_ms => reads.judge(
                known,
                seen.record.as_ref(),
                read_ms,
                self.inner.lease,
                now_ms,
            ),
        }
    }

    /// Returns once `known` has lapsed in the view; never while the registry cannot be read. It looks at the
    /// view once the node's lease would have run out and after each read from then on, so a wait costs a
    /// timer and a wake-up per renewal period past the expiry, nothing per byte.
    pub fn lapsed(&self, known: NodeRecord) -> impl Future<Output = ()> + Send + 'static {
        let membership = self.clone();
        let mut reads = self.inner.read.subscribe();
        async move {
            let mut known = known;
            loop {
                reads.borrow_and_update();
                match membership.lease_of(&known) {
                    Lease::Lapsed => return,
                    Lease::Live(current) => known = current,
                }
                // A lease does not lapse before its expiry (a restarted or departed node's connections
                // break by themselves), and after it only a read can tell.
                let left = known.expires_ms.saturating_sub(unix_ms(SystemTime::now()));
                tokio::time::sleep(Duration::from_millis(left)).await;
                if reads.changed().await.is_err() {
                    // Cannot happen: this future holds the membership, and with it the sender.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// The node `owner` if its lease runs in `incarnation` (a tunnel's owner, if it has one); reads its
    /// record (one command) unless the view read it in `incarnation` within the last renewal period: a
    /// node the view has not seen yet (one that joined since), or has seen as another incarnation (one
    /// started again as itself since, whose new tunnels the view is older than).
    pub async fn live_owner(
        &self,
        owner: &NodeId,
        incarnation: Incarnation,
    ) -> Result<Option<NodeRecord>> {
        let mut live = self.live_owners(&[(owner, incarnation)]).await?;
        Ok(live.pop().flatten())
    }

    /// [`Membership::live_owner`] for several nodes at once, in order: those the view does not hold
    /// fresh are read in one command.
    pub async fn live_owners(
        &self,
        owners: &[(&NodeId, Incarnation)],
    ) -> Result<Vec<Option<NodeRecord>>> {
        let stale: Vec<NodeId> = {
            let mut state = self.lock();
            let period_ms = self.period().as_millis() as u64;
            let now_ms = unix_ms(SystemTime::now());
            owners
                .iter()
                .filter(|(owner, incarnation)| {
                    !state.view.get_mut(*owner).is_some_and(|seen| {
                        seen.used = Instant::now();
                        let seen_as = seen.record.as_ref().map(|node| node.incarnation);
                        seen_as == Some(*incarnation)
                            && now_ms.saturating_sub(seen.read_ms) < period_ms
                    })
                })
                .map(|(owner, _)| (*owner).clone())
                .collect()
        };
        if !stale.is_empty() {
            self.read(&stale).await?;
        }
        let state = self.lock();
        let now = SystemTime::now();
        Ok(owners
            .iter()
            .map(|(owner, incarnation)| {
                let node = state.view.get(*owner).and_then(|seen| seen.record.clone());
                node.filter(|node| node.incarnation == *incarnation && node.is_alive(now))
            })
            .collect())
    }

    /// Records a tunnel this node opened: takes one of its tenant's `limit` slots (none without a
    /// limit), then writes its records. Whatever the outcome, the tunnel ends with
    /// [`Membership::remove_tunnel`] (or its `_later` form), which removes whatever was written.
    pub async fn add_tunnel(&self, tunnel: TunnelRecord, limit: Option<u32>) -> Result<Recorded> {
        let owned = Arc::new(Owned {
            record: Mutex::new(tunnel.clone()),
            removed: AtomicBool::new(false),
            writes: tokio::sync::Mutex::new(()),
        });
        self.lock().tunnels.insert(tunnel.id, owned.clone());
        let recorded = self.write(&owned, limit).await?.unwrap_or(Recorded::NoSlot);
        if recorded == Recorded::NoSlot {
            // Nothing was written: nothing to remove.
            self.forget(&tunnel.id);
        }
        Ok(recorded)
    }

    /// Writes a tunnel's new record (guacd's connection id, once known).
    pub async fn update_tunnel(&self, tunnel: TunnelRecord) -> Result<()> {
        let Some(owned) = self.lock().tunnels.get(&tunnel.id).cloned() else {
            return Ok(());
        };
        *owned
            .record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = tunnel;
        self.write(&owned, None).await.map(drop)
    }

    /// Takes the tunnel's slot (with a limit) and writes its records, unless its removal began; `None`
    /// when it did.
    async fn write(&self, owned: &Owned, limit: Option<u32>) -> Result<Option<Recorded>> {
        let _writing = owned.writes.lock().await;
        if owned.removed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let record = owned.record();
        let registry = &self.inner.registry;
        if let Some(limit) = limit
            && !registry
                .reserve_slot(&record.tenant, &record.slot_holder(), limit)
                .await?
        {
            return Ok(Some(Recorded::NoSlot));
        }
        registry.add_tunnel(&record).await?;
        Ok(Some(Recorded::Yes))
    }

    /// Forgets a tunnel this node closed, or failed to record (whatever of it reached the registry goes,
    /// its quota slot included); a failed removal is retried at the next renewals.
    pub async fn remove_tunnel(&self, tunnel: &TunnelRecord) {
        // Not there: refused for want of a slot, or evicted, and removed then.
        if let Some(owned) = self.forget(&tunnel.id) {
            self.remove_records(owned).await;
        }
    }

    /// [`Membership::remove_tunnel`] for a caller that cannot wait: the registry is told at the next
    /// renewal.
    pub fn remove_tunnel_later(&self, tunnel: &TunnelRecord) {
        if let Some(owned) = self.forget(&tunnel.id) {
            self.lock().unremoved.push(owned);
        }
    }

    /// Takes a tunnel out of the node's map and stops every later write about it.
    fn forget(&self, id: &TunnelId) -> Option<Arc<Owned>> {
        let owned = self.lock().tunnels.remove(id)?;
        owned.removed.store(true, Ordering::SeqCst);
        Some(owned)
    }

    /// Removes a forgotten tunnel's records, after any write about it still under way.
    async fn remove_records(&self, owned: Arc<Owned>) {
        let removed = {
            let _writing = owned.writes.lock().await;
            self.inner.registry.remove_tunnel(&owned.record()).await
        };
        if let Err(error) = removed {
            debug!(tunnel = %owned.record().id, %error, "tunnel record removal deferred");
            self.lock().unremoved.push(owned);
        }
    }
}

#[cfg(test)]
mod tests {
    use deskbroker_shared::cluster::TunnelKind;
    use deskbroker_shared::ids::{TenantId, TokenDigest};

    use super::*;
    use crate::memory::MemoryRegistry;

    fn tunnel(owner: &NodeRecord) -> TunnelRecord {
        TunnelRecord {
            id: TunnelId::from_random_bytes(rand_bytes()),
            owner: owner.id.clone(),
            incarnation: owner.incarnation,
            tenant: TenantId::new("t"),
            session: deskbroker_shared::ids::SessionId::new("s"),
            kind: TunnelKind::HttpTunnel,
            created_ms: 0,
            http_token: Some(TokenDigest::of("h")),
            connection: None,
        }
    }

    /// Node `id` of `registry`, not joined yet.
    fn member(registry: &Arc<MemoryRegistry>, id: &str, lease: Duration) -> Membership {
        Membership::new(
            registry.clone(),
            NodeId::new(id),
            format!("http://{id}"),
            lease,
        )
    }

    fn rand_bytes() -> [u8; 16] {
        *uuid::Uuid::new_v4().as_bytes()
    }

    #[tokio::test]
    async fn a_lapsed_node_is_cleaned_up_and_its_tunnels_are_gone() {
        let registry = Arc::new(MemoryRegistry::new());
        let lease = Duration::from_secs(10);
        let a = member(&registry, "a", lease);
        let b = member(&registry, "b", lease);
        a.join().await.unwrap();
        b.join().await.unwrap();
        let on_b = tunnel(b.me());
        b.add_tunnel(on_b.clone(), None).await.unwrap();
        assert_eq!(
            a.live_owner(&on_b.owner, on_b.incarnation)
                .await
                .unwrap()
                .map(|n| n.id),
            Some(NodeId::new("b"))
        );

        // b crashed: its last renewal was more than a lease ago. At its next round a sees it lapsed and
        // removes its records.
        let long_ago = SystemTime::now() - 2 * lease;
        registry
            .renew(&b.me().renewed(long_ago, lease))
            .await
            .unwrap();
        a.tick(&|_| {}).await.unwrap();
        assert_eq!(
            a.live_owner(&on_b.owner, on_b.incarnation).await.unwrap(),
            None
        );
        assert!(
            registry
                .tunnels_of(&NodeId::new("b"))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            registry
                .http_tunnel(&TokenDigest::of("h"))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_wait_on_a_known_node_ends_at_the_first_read_after_its_lease_ran_out() {
        let registry = Arc::new(MemoryRegistry::new());
        let lease = Duration::from_millis(300);
        let a = member(&registry, "a", lease);
        let b = member(&registry, "b", lease);
        b.join().await.unwrap();
        a.join().await.unwrap();
        let known = match a.lease_of(b.me()) {
            Lease::Live(known) => known,
            Lease::Lapsed => panic!("b just joined"),
        };
        let lapsed = tokio::spawn(a.lapsed(known));

        // b renews, a reads: b lives on past its first expiry.
        tokio::time::sleep(lease / 2).await;
        b.tick(&|_| {}).await.unwrap();
        a.refresh().await.unwrap();
        tokio::time::sleep(lease).await;
        assert!(!lapsed.is_finished(), "no read has shown b lapsed yet");

        // b stopped renewing long ago; a's next read shows it.
        a.refresh().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), lapsed)
            .await
            .expect("the wait ends at the read")
            .unwrap();
        assert_eq!(a.lease_of(b.me()), Lease::Lapsed);
    }

    #[tokio::test]
    async fn a_registry_that_lost_everything_gets_the_tunnels_back() {
        let registry = Arc::new(MemoryRegistry::new());
        let a = Membership::new(
            registry.clone(),
            NodeId::new("a"),
            "http://a".into(),
            Duration::from_secs(9),
        );
        a.join().await.unwrap();
        a.add_tunnel(tunnel(a.me()), None).await.unwrap();
        registry.remove_node(&NodeId::new("a")).await.unwrap(); // what a Redis restart looks like
        a.tick(&|_| {}).await.unwrap();
        assert_eq!(
            registry.tunnels_of(&NodeId::new("a")).await.unwrap().len(),
            1
        );
    }

    /// A registry that lost everything gets a node's tunnels back a paced share per renewal, HTTP tunnels
    /// (which other nodes look up) first, rather than all at once inside one renewal.
    #[tokio::test]
    async fn a_refill_is_paced_over_renewals_http_tunnels_first() {
        let registry = Arc::new(MemoryRegistry::new());
        // A renewal period of 20 ms: a share of 100 tunnels per renewal, for the one live node.
        let lease = Duration::from_millis(60);
        let a = member(&registry, "a", lease);
        a.join().await.unwrap();
        for n in 0..250 {
            let mut record = tunnel(a.me());
            if n % 25 != 0 {
                record.http_token = None;
            }
            a.add_tunnel(record, None).await.unwrap();
        }
        registry.remove_node(&NodeId::new("a")).await.unwrap();
        let recorded = || async { registry.tunnels_of(&NodeId::new("a")).await.unwrap() };
        let mut counts = Vec::new();
        for _ in 0..3 {
            a.tick(&|_| {}).await.unwrap();
            let now = recorded().await;
            if counts.is_empty() {
                let http = now.iter().filter(|t| t.http_token.is_some()).count();
                assert_eq!(http, 10, "the HTTP tunnels come first");
            }
            counts.push(now.len());
        }
        assert_eq!(counts, [100, 200, 250]);
    }

    /// Just after the registry lost its data, a renewal counts only the nodes that renewed since: the
    /// refill's share is taken by the most live leases seen within the last lease instead, or the first
    /// nodes to notice would each write the whole cluster's rate at once.
    #[tokio::test]
    async fn a_refill_after_a_loss_takes_its_share_by_the_nodes_live_before_it() {
        let registry = Arc::new(MemoryRegistry::new());
        // A renewal period of 200 ms: a share of 500 tunnels per renewal for one of two live nodes.
        let lease = Duration::from_millis(600);
        let a = member(&registry, "a", lease);
        let b = member(&registry, "b", lease);
        a.join().await.unwrap();
        b.join().await.unwrap();
        for _ in 0..1500 {
            a.add_tunnel(tunnel(a.me()), None).await.unwrap();
        }
        a.tick(&|_| {}).await.unwrap();
        for node in ["a", "b"] {
            registry.remove_node(&NodeId::new(node)).await.unwrap();
        }
        a.tick(&|_| {}).await.unwrap();
        let recorded = registry.tunnels_of(&NodeId::new("a")).await.unwrap();
        assert!(
            (1..=500).contains(&recorded.len()),
            "{} recorded: one of two nodes' share",
            recorded.len()
        );
    }
}
