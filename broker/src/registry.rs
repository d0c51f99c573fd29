//! The registry's interface: the [`Registry`] trait every part of deskbroker talks to, its error, and the
//! few rules every implementation shares. The in-memory and Redis implementations live beside it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use deskbroker_shared::cluster::{ControlEvent, NodeRecord, SlotHolder, TunnelRecord};
use deskbroker_shared::ids::{NodeId, SessionId, SessionToken, TenantId, TokenDigest, TunnelId};
use deskbroker_shared::session::Session;

use crate::tenants::Tenant;

/// A boxed future, so that the edge can hold any registry as `Arc<dyn Registry>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The registry could not answer (as opposed to answering "no such thing").
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    #[error("registry holds a record that does not parse: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// Whether a lease renewal found the node's record in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The record was there and is renewed.
    Renewed,
    /// The registry did not know the node (first start, it lost its data, or another node removed the
    /// node's records after its lease lapsed): the node must record its tunnels again.
    Fresh,
    /// Another node is removing this node's records, its lease having lapsed: nothing was written, and
    /// the node renews again at its next round (which then finds itself `Fresh`).
    Fenced,
}

/// What a lease renewal found: the node's own record, and the cluster's leases, so that a node learns
/// both in one command whatever the cluster's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub renewal: Renewal,
    /// Nodes whose lease runs, this one included.
    pub live: usize,
    /// Nodes whose lease ran out (at most [`defaults::LAPSED_PER_RENEWAL`]), whose records are to go.
    pub lapsed: Vec<NodeId>,
}

pub trait Registry: Send + Sync + 'static {
    /// The live session a token grants: `None` when the token is unknown, expired or revoked.
    fn session<'a>(&'a self, token: &'a SessionToken) -> BoxFuture<'a, Result<Option<Session>>>;

    /// Grants a session to a token, until the session's expiry.
    fn put_session<'a>(
        &'a self,
        token: &'a SessionToken,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<()>>;

    /// Writes a node's lease (its record with a fresh expiry), and says which leases run and which ran
    /// out, by the node's clock: one command, its cost independent of the number of nodes.
    fn renew<'a>(&'a self, node: &'a NodeRecord) -> BoxFuture<'a, Result<Heartbeat>>;

    /// Every node record, live or lapsed (what the control plane lists; nodes read only the records they
    /// need, with [`Registry::node_records`]).
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRecord>>>;

    /// The records of these nodes, in order: `None` for one the registry does not hold. A node whose
    /// records another is removing shows as lapsed.
    fn node_records<'a>(
        &'a self,
        ids: &'a [NodeId],
    ) -> BoxFuture<'a, Result<Vec<Option<NodeRecord>>>>;

    /// Removes a node and the records of every tunnel it owned (the node's own start and stop).
    fn remove_node<'a>(&'a self, id: &'a NodeId) -> BoxFuture<'a, Result<()>>;

    /// Removes a node and its tunnels' records if its lease has lapsed, keeping the node from renewing
    /// while that is under way (see [`Renewal::Fenced`]); false when it had not lapsed (it renewed
    /// meanwhile) or another node is doing it.
    fn remove_lapsed_node<'a>(&'a self, id: &'a NodeId) -> BoxFuture<'a, Result<bool>>;

    /// Takes one of a tenant's tunnel slots for `holder`, atomically: false when all `limit` are taken.
    /// The slot is given back when the tunnel's record is removed (also by the cleanup of a lapsed node).
    fn reserve_slot<'a>(
        &'a self,
        tenant: &'a TenantId,
        holder: &'a SlotHolder,
        limit: u32,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Hands the tenant slot `from` holds to `to`, atomically: false when `from` holds none (another
    /// tunnel was handed it first, or it was given back). A new tunnel at the limit takes over a dead
    /// tunnel's slot this way, so that two can never both take the same one.
    fn hand_over_slot<'a>(
        &'a self,
        tenant: &'a TenantId,
        from: &'a SlotHolder,
        to: &'a SlotHolder,
    ) -> BoxFuture<'a, Result<bool>>;

    /// What holds each of a tenant's slots.
    fn slot_holders<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<Vec<SlotHolder>>>;

    fn add_tunnel<'a>(&'a self, tunnel: &'a TunnelRecord) -> BoxFuture<'a, Result<()>>;

    fn remove_tunnel<'a>(&'a self, tunnel: &'a TunnelRecord) -> BoxFuture<'a, Result<()>>;

    /// A tunnel's record, by its id.
    fn tunnel<'a>(&'a self, id: &'a TunnelId) -> BoxFuture<'a, Result<Option<TunnelRecord>>>;

    /// The HTTP tunnel whose `Guacamole-Tunnel-Token` has this digest, whoever owns it.
    fn http_tunnel<'a>(
        &'a self,
        token: &'a TokenDigest,
    ) -> BoxFuture<'a, Result<Option<TunnelRecord>>>;

    /// The tunnels a node has recorded.
    fn tunnels_of<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, Result<Vec<TunnelRecord>>>;

    /// The tunnels recorded for a session.
    fn session_tunnels<'a>(
        &'a self,
        session: &'a SessionId,
    ) -> BoxFuture<'a, Result<Vec<TunnelRecord>>>;

    /// A live session by its public id, with its token's digest.
    fn session_by_id<'a>(
        &'a self,
        id: &'a SessionId,
    ) -> BoxFuture<'a, Result<Option<(TokenDigest, Session)>>>;

    /// A tenant's live sessions.
    fn sessions_of<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<Vec<Session>>>;

    /// Revokes a session's token; true if it was live. The registry remembers it for
    /// [`defaults::REVOCATION_MEMORY`].
    fn revoke<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, Result<bool>>;

    /// Drops at most `budget` records whose time has passed (sessions past their expiry, revocations past
    /// [`defaults::REVOCATION_MEMORY`]), earliest first, and says how many it dropped: fewer than `budget`
    /// means none is left. The in-memory registry keeps its records itself and needs its owner to call
    /// this now and then; Redis expires its keys by itself, and drops nothing here.
    fn purge_expired(&self, budget: usize) -> BoxFuture<'_, Result<usize>>;

    /// Writes a revocation again (one a node remembers, into a registry that lost it), until `until` or
    /// for [`defaults::REVOCATION_MEMORY`], whichever is longer.
    fn put_revocation<'a>(
        &'a self,
        id: &'a SessionId,
        until: std::time::SystemTime,
    ) -> BoxFuture<'a, Result<()>>;

    /// Which of these sessions were revoked: what a node that missed control events checks its tunnels
    /// against once it hears the channel again.
    fn revoked<'a>(&'a self, ids: &'a [SessionId]) -> BoxFuture<'a, Result<Vec<SessionId>>>;

    fn put_tenant<'a>(&'a self, tenant: &'a Tenant) -> BoxFuture<'a, Result<()>>;

    fn tenant<'a>(&'a self, id: &'a TenantId) -> BoxFuture<'a, Result<Option<Tenant>>>;

    /// The tenant whose API key has this digest.
    fn tenant_by_key<'a>(&'a self, key: &'a TokenDigest) -> BoxFuture<'a, Result<Option<Tenant>>>;

    fn tenants(&self) -> BoxFuture<'_, Result<Vec<Tenant>>>;

    /// Removes a tenant; its sessions stop working (the edges check the tenant on every connect). The
    /// registry remembers the removal for [`defaults::REVOCATION_MEMORY`].
    fn remove_tenant<'a>(&'a self, id: &'a TenantId) -> BoxFuture<'a, Result<bool>>;

    /// Which of these tenants were removed: what a node that missed control events checks its tunnels
    /// against once it hears the channel again.
    fn removed_tenants<'a>(&'a self, ids: &'a [TenantId]) -> BoxFuture<'a, Result<Vec<TenantId>>>;

    /// Whether the registry holds a marker (see `restore.rs`): gone only when it lost its data.
    fn marked<'a>(&'a self, marker: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// Sets a marker, after writing what it stands for.
    fn mark<'a>(&'a self, marker: &'a str) -> BoxFuture<'a, Result<()>>;

    /// What identifies the current run of each of the registry's servers (a Redis's `run_id`, one per
    /// master of a Cluster), sorted. It changes when a server restarted, which may have lost what it
    /// held even though the others, and the node's own lease, kept theirs: a Cluster master without a
    /// replica comes back empty, with its slots. A registry that cannot restart on its own says nothing.
    fn server_runs(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Tells every node (this one included) about an event.
    fn publish<'a>(&'a self, event: &'a ControlEvent) -> BoxFuture<'a, Result<()>>;

    /// The control events from now on; the stream ends when the subscription breaks, and the caller
    /// subscribes again.
    fn subscribe(&self) -> BoxFuture<'_, Result<EventStream>>;
}

/// Control events as they arrive.
pub type EventStream = Pin<Box<dyn futures_core::Stream<Item = ControlEvent> + Send>>;

/// How long a session record may live in a registry: until its expiry, or forever without one.
pub fn session_ttl(session: &Session, now: std::time::SystemTime) -> Option<Duration> {
    session
        .expires
        .map(|expires| expires.duration_since(now).unwrap_or_default())
}

/// The size of a session's record as a registry stores it: its JSON, the target in its URL form. What
/// [`defaults::MAX_SESSION_RECORD`](crate::defaults::MAX_SESSION_RECORD) bounds.
pub fn session_record_len(session: &Session) -> usize {
    /// Counts what is written, and keeps none of it.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // A session is strings, numbers and a map with string keys, and the writer never fails: serialising
    // it cannot fail.
    let _ = serde_json::to_writer(&mut count, session);
    count.0
}
