//! A node's side of the lease rules: it renews its own lease, keeps a view of the other nodes, cleans up
//! after nodes whose lease lapsed, and knows its own tunnels so it can record them again if the registry
//! loses them (Redis restarted empty).
//!
//! Leases cost one registry write and one read per node per renewal period, whatever the number of
//! tunnels. A tunnel's owner is alive while its record in the view has not expired: since the view is
//! refreshed every renewal period and a lease is renewed three times per lease, a live owner never looks
//! expired, and a dead one looks expired everywhere within one lease of its last renewal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use deskbroker_shared::cluster::{Incarnation, NodeRecord, TunnelRecord};
use deskbroker_shared::ids::{NodeId, TunnelId};

use crate::defaults::RENEWALS_PER_LEASE;
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
}

#[derive(Default)]
struct State {
    view: HashMap<NodeId, NodeRecord>,
    tunnels: HashMap<TunnelId, TunnelRecord>,
    /// Removals that failed while the registry was away, retried at each renewal.
    unremoved: Vec<TunnelRecord>,
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
            }),
        }
    }

    pub fn me(&self) -> &NodeRecord {
        &self.inner.me
    }

    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.inner.registry
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections are single map operations: none can leave the state half-updated.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins the cluster: forgets what an earlier run of this node left behind, then takes a lease.
    pub async fn join(&self) -> Result<()> {
        self.inner.registry.remove_node(&self.inner.me.id).await?;
        self.renew().await?;
        self.refresh().await
    }

    /// Renews the lease every lease/3 until `shutdown`, then leaves the cluster.
    pub async fn run(&self, shutdown: CancellationToken) {
        let period = self.inner.lease / RENEWALS_PER_LEASE;
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => break,
            }
            if let Err(error) = self.tick().await {
                warn!(%error, "lease renewal failed; open tunnels keep flowing");
            }
        }
        match self.inner.registry.remove_node(&self.inner.me.id).await {
            Ok(()) => info!("left the cluster"),
            Err(error) => warn!(%error, "could not leave the cluster; the lease will lapse"),
        }
    }

    /// One renewal round: the lease, the view, cleanup of lapsed nodes, retried removals.
    pub async fn tick(&self) -> Result<()> {
        self.renew().await?;
        self.refresh().await?;
        let lapsed: Vec<NodeId> = {
            let now = SystemTime::now();
            let state = self.lock();
            state
                .view
                .values()
                .filter(|node| !node.is_alive(now))
                .map(|node| node.id.clone())
                .collect()
        };
        for id in lapsed {
            info!(node = %id, "node lease lapsed; removing its records");
            self.inner.registry.remove_node(&id).await?;
            self.lock().view.remove(&id);
        }
        let unremoved = std::mem::take(&mut self.lock().unremoved);
        for tunnel in unremoved {
            self.remove_record(tunnel).await;
        }
        Ok(())
    }

    async fn renew(&self) -> Result<()> {
        let record = self.inner.me.renewed(SystemTime::now(), self.inner.lease);
        if self.inner.registry.renew(&record).await? == Renewal::Fresh {
            let tunnels: Vec<TunnelRecord> = self.lock().tunnels.values().cloned().collect();
            if !tunnels.is_empty() {
                info!(
                    tunnels = tunnels.len(),
                    "the registry had lost this node; recording its tunnels again"
                );
            }
            for tunnel in &tunnels {
                self.inner.registry.add_tunnel(tunnel).await?;
            }
        }
        Ok(())
    }

    /// Reads every node's lease into the view.
    pub async fn refresh(&self) -> Result<()> {
        let nodes = self.inner.registry.nodes().await?;
        self.lock().view = nodes
            .into_iter()
            .map(|node| (node.id.clone(), node))
            .collect();
        Ok(())
    }

    /// The live owner of a tunnel record, if it has one; refreshes the view once for a node it has not
    /// seen yet (one that joined since the last renewal).
    pub async fn live_owner(&self, tunnel: &TunnelRecord) -> Result<Option<NodeRecord>> {
        if !self.lock().view.contains_key(&tunnel.owner) {
            self.refresh().await?;
        }
        let owner = self.lock().view.get(&tunnel.owner).cloned();
        Ok(owner.filter(|owner| tunnel.is_alive(Some(owner), SystemTime::now())))
    }

    /// Live nodes as this node sees them.
    pub fn live_nodes(&self) -> Vec<NodeRecord> {
        let now = SystemTime::now();
        self.lock()
            .view
            .values()
            .filter(|node| node.is_alive(now))
            .cloned()
            .collect()
    }

    /// Records a tunnel this node opened.
    pub async fn add_tunnel(&self, tunnel: TunnelRecord) -> Result<()> {
        self.lock().tunnels.insert(tunnel.id, tunnel.clone());
        let added = self.inner.registry.add_tunnel(&tunnel).await;
        if added.is_err() {
            self.lock().tunnels.remove(&tunnel.id);
        }
        added
    }

    /// Forgets a tunnel this node closed, or failed to record (whatever of it reached the registry goes,
    /// its quota slot included); a failed removal is retried at the next renewals.
    pub async fn remove_tunnel(&self, tunnel: &TunnelRecord) {
        self.lock().tunnels.remove(&tunnel.id);
        self.remove_record(tunnel.clone()).await;
    }

    /// [`Membership::remove_tunnel`] for a caller that cannot wait: the registry is told at the next
    /// renewal.
    pub fn remove_tunnel_later(&self, tunnel: &TunnelRecord) {
        let mut state = self.lock();
        state.tunnels.remove(&tunnel.id);
        state.unremoved.push(tunnel.clone());
    }

    async fn remove_record(&self, tunnel: TunnelRecord) {
        if let Err(error) = self.inner.registry.remove_tunnel(&tunnel).await {
            debug!(tunnel = %tunnel.id, %error, "tunnel record removal deferred");
            self.lock().unremoved.push(tunnel);
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

    fn rand_bytes() -> [u8; 16] {
        *uuid::Uuid::new_v4().as_bytes()
    }

    #[tokio::test]
    async fn a_lapsed_node_is_cleaned_up_and_its_tunnels_are_gone() {
        let registry = Arc::new(MemoryRegistry::new());
        let lease = Duration::from_secs(10);
        let a = Membership::new(registry.clone(), NodeId::new("a"), "http://a".into(), lease);
        let b = Membership::new(registry.clone(), NodeId::new("b"), "http://b".into(), lease);
        a.join().await.unwrap();
        b.join().await.unwrap();
        let on_b = tunnel(b.me());
        b.add_tunnel(on_b.clone()).await.unwrap();
        assert_eq!(
            a.live_owner(&on_b).await.unwrap().map(|n| n.id),
            Some(NodeId::new("b"))
        );

        // b crashed: its last renewal was more than a lease ago. At its next round a sees it lapsed and
        // removes its records.
        let long_ago = SystemTime::now() - 2 * lease;
        registry
            .renew(&b.me().renewed(long_ago, lease))
            .await
            .unwrap();
        a.tick().await.unwrap();
        assert_eq!(a.live_owner(&on_b).await.unwrap(), None);
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
    async fn a_registry_that_lost_everything_gets_the_tunnels_back() {
        let registry = Arc::new(MemoryRegistry::new());
        let a = Membership::new(
            registry.clone(),
            NodeId::new("a"),
            "http://a".into(),
            Duration::from_secs(9),
        );
        a.join().await.unwrap();
        a.add_tunnel(tunnel(a.me())).await.unwrap();
        registry.remove_node(&NodeId::new("a")).await.unwrap(); // what a Redis restart looks like
        a.tick().await.unwrap();
        assert_eq!(
            registry.tunnels_of(&NodeId::new("a")).await.unwrap().len(),
            1
        );
    }
}
