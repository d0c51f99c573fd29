//! A tunnel's registration: everything the node records about a tunnel it owns, held by one value.
//!
//! Opening a tunnel takes three things in order, before any upstream socket is opened: a quota slot of its
//! tenant, its record in the registry (so that any node finds it), and its entry in the node's own map (so
//! that the control channel, the session's expiry and the node's stop can reach it). A [`Registration`]
//! owns all three from the first step on; once the upstream is connected, [`Registration::connected`]
//! adds guacd's connection id to the record and takes over an exclusive session. Every tunnel kind ends
//! by calling [`Registration::release`]; on any error path, a `Registration` that is simply dropped
//! releases the same things, its registry records at the next lease renewal. Either way each is released
//! exactly once, and the membership orders every registry write about the tunnel (see `Membership`).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use deskbroker_broker::{Membership, Recorded, RegistryError, restore};
use deskbroker_shared::cluster::{ControlEvent, Incarnation, SlotHolder, TunnelKind, TunnelRecord};
use deskbroker_shared::ids::{NodeId, TenantId, TokenDigest, TunnelId};
use deskbroker_shared::session::{HostPort, Session};
use deskbroker_shared::time::unix_ms;
use deskbroker_shared::{GuacStatus, RelayClose};

use crate::defaults::RECONNECT_PATIENCE;
use crate::error::TunnelError;
use crate::forward;
use crate::local::{LocalTunnel, LocalTunnels, Traffic};
use crate::metrics::{end_reason, metrics};

/// What is being registered, besides the session it belongs to.
pub struct Tunnel {
    pub id: TunnelId,
    pub kind: TunnelKind,
    /// Digest of an HTTP tunnel's `Guacamole-Tunnel-Token`, by which any node finds it.
    pub http_token: Option<TokenDigest>,
    /// The browser's address, for the logs.
    pub client: Option<IpAddr>,
    /// The tunnel of the same session that this one replaces, as the reconnecting page names it.
    pub replaces: Option<TunnelId>,
}

/// A tunnel this node owns, with all that the node recorded about it.
pub struct Registration {
    tunnel: LocalTunnel,
    local: LocalTunnels,
    membership: Membership,
    exclusive: bool,
    client: Option<IpAddr>,
    /// Since when the tunnel is open (connected upstream): only an open tunnel is logged and counted as
    /// closed.
    opened: Option<Instant>,
    released: bool,
}

impl Registration {
    /// Registers a tunnel of `session`, owned by this node and stopped with `parent` (the node's own stop)
    /// or when the session expires. Refuses it when the session's tenant is gone (the operator's own
    /// sessions have none, and no limit), has no slot left, or the registry cannot record it.
    pub async fn open(
        membership: &Membership,
        local: &LocalTunnels,
        parent: &CancellationToken,
        tunnel: Tunnel,
        session: &Session,
    ) -> Result<Self, TunnelError> {
        let registry = membership.registry();
        let limit = match registry.tenant(&session.tenant).await? {
            Some(tenant) => Some(tenant.limits.max_tunnels),
            None if session.trusted_target => None,
            // The registry lost its data and the broker has not written its tenants back yet: the
            // tenant may be one of them, so the client is told to try again, not that its token is bad.
            None if !registry.marked(restore::TENANTS_MARKER).await? => {
                return Err(RegistryError::Unavailable(
                    "the tenants are being written back".into(),
                )
                .into());
            }
            None => return Err(TunnelError::BadToken),
        };
        let me = membership.me();
        let record = TunnelRecord {
            id: tunnel.id,
            owner: me.id.clone(),
            incarnation: me.incarnation,
            tenant: session.tenant.clone(),
            session: session.id.clone(),
            kind: tunnel.kind,
            created_ms: unix_ms(SystemTime::now()),
            http_token: tunnel.http_token,
            connection: None,
        };
        let registration = Self {
            tunnel: local.insert(
                record.clone(),
                (session.expires, session.idle_timeout),
                parent,
            ),
            local: local.clone(),
            membership: membership.clone(),
            exclusive: session.exclusive,
            client: tunnel.client,
            opened: None,
            released: false,
        };
        // A reconnect takes its previous tunnel's slot before a free one: a free slot may be the one that
        // another reconnect, whose previous tunnel was closed already, is about to ask for.
        let mut recorded = match take_previous(membership, &record, tunnel.replaces, limit).await {
            Ok(true) => membership.add_tunnel(record.clone(), None).await,
            Ok(false) => membership.add_tunnel(record.clone(), limit).await,
            Err(error) => Err(error),
        };
        if matches!(recorded, Ok(Recorded::NoSlot)) {
            // At the limit, a new tunnel takes the slot of one that died with its node, instead of waiting
            // for that node's lease to lapse and give it back, and a new tunnel of an exclusive session
            // the slot of its older one, which it ends anyway; a reconnect whose predecessor is on a live
            // node that is ending it waits a moment for its slot.
            recorded = match replace_lost(membership, &record, session.exclusive).await {
                Ok(Predecessor::Lost) => membership.add_tunnel(record, limit).await,
                Ok(Predecessor::Live) => {
                    let patience = tokio::time::Instant::now() + RECONNECT_PATIENCE;
                    loop {
                        tokio::time::sleep(RECONNECT_PATIENCE / 10).await;
                        let again = membership.add_tunnel(record.clone(), limit).await;
                        if !matches!(again, Ok(Recorded::NoSlot))
                            || tokio::time::Instant::now() >= patience
                        {
                            break again;
                        }
                    }
                }
                Ok(Predecessor::None) => Ok(Recorded::NoSlot),
                Err(error) => Err(error),
            };
        }
        match recorded {
            Ok(Recorded::Yes) => Ok(registration),
            Ok(Recorded::NoSlot) => {
                registration.release().await;
                Err(TunnelError::TooMany)
            }
            Err(error) => {
                registration.release().await;
                Err(error.into())
            }
        }
    }

    /// The upstream at `upstream` is connected: records guacd's connection id (which shares join), and
    /// takes over an exclusive session, closing its older tunnels wherever they are. From here on the
    /// tunnel is open: logged as opened, and as closed by [`Registration::close`].
    pub async fn connected(
        &mut self,
        upstream: &HostPort,
        connection: Option<String>,
    ) -> Result<(), TunnelError> {
        if connection.is_some() {
            self.tunnel.record.connection = connection;
            let record = self.tunnel.record.clone();
            self.membership.update_tunnel(record).await?;
        }
        if self.exclusive {
            take_over(&self.membership, &self.tunnel.record).await?;
        }
        self.opened = Some(Instant::now());
        let record = &self.tunnel.record;
        metrics().tunnel_opened(record.kind);
        info!(
            target: "audit",
            event = "tunnel_opened",
            node = %record.owner,
            tenant = %record.tenant,
            session = %record.session,
            tunnel = %record.id,
            kind = record.kind.name(),
            client = self.client.map(tracing::field::display),
            upstream = %upstream,
            connection = record.connection.as_deref(),
        );
        Ok(())
    }

    pub fn record(&self) -> &TunnelRecord {
        &self.tunnel.record
    }

    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.tunnel.traffic
    }

    /// Waits until the tunnel is stopped from outside (revoked, expired, taken over, the node stopping),
    /// and says why.
    pub async fn stopped(&self) -> TunnelError {
        self.tunnel.stopped().await
    }

    /// The tunnel has ended, as `end` says (`Ok` when either side closed it): logs and counts its end,
    /// then releases it.
    pub async fn close(self, end: &Result<(), TunnelError>) {
        if let Some(opened) = self.opened {
            let record = &self.tunnel.record;
            let lived = opened.elapsed();
            let reason = end_reason(end);
            metrics().tunnel_closed(record.kind, reason, lived);
            let (from_browser, to_browser) = self.tunnel.traffic.totals();
            let status = match (record.kind, end) {
                (TunnelKind::Websockify, Ok(())) => RelayClose::Normal.code(),
                (TunnelKind::Websockify, Err(error)) => error.relay_close().code(),
                (_, Ok(())) => GuacStatus::Success.code(),
                (_, Err(error)) => error.status().code(),
            };
            info!(
                target: "audit",
                event = "tunnel_closed",
                node = %record.owner,
                tenant = %record.tenant,
                session = %record.session,
                tunnel = %record.id,
                kind = record.kind.name(),
                client = self.client.map(tracing::field::display),
                from_browser_bytes = from_browser,
                to_browser_bytes = to_browser,
                duration_ms = lived.as_millis() as u64,
                reason,
                status,
            );
        }
        self.release().await;
    }

    /// Releases the tunnel's entry, records and slot now, waiting for the registry (a failed removal is
    /// retried at the next renewals).
    async fn release(mut self) {
        self.released = true;
        self.local.remove(&self.tunnel.record);
        self.membership.remove_tunnel(&self.tunnel.record).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.local.remove(&self.tunnel.record);
        self.membership.remove_tunnel_later(&self.tunnel.record);
    }
}

/// What a new tunnel refused a slot found.
enum Predecessor {
    /// The slot of a tunnel that ends anyway, which it took.
    Lost,
    /// None, but its session has tunnels on live nodes: this may be a reconnect whose predecessor is being
    /// closed.
    Live,
    /// None.
    None,
}

/// Hands the slot of the tunnel a reconnect names as its previous one (`replaces`) to `newest`, and ends
/// that tunnel, wherever it is and whether or not its node noticed it is no longer used: true when the
/// slot was handed. Only a tunnel of the same session is taken, and only its own client was told its id.
/// Without a limit there are no slots, and the previous tunnel ends by itself.
async fn take_previous(
    membership: &Membership,
    newest: &TunnelRecord,
    previous: Option<TunnelId>,
    limit: Option<u32>,
) -> Result<bool, RegistryError> {
    let (Some(previous), Some(_)) = (previous, limit) else {
        return Ok(false);
    };
    match membership.registry().tunnel(&previous).await? {
        Some(older) if older.session == newest.session && older.id != newest.id => {
            take_slot(membership, &older.slot_holder(), Some(&older), newest).await
        }
        _ => Ok(false),
    }
}

/// At the tenant's limit, takes for `newest` the slot of a tunnel that ends anyway: of an exclusive
/// session, an older tunnel of it wherever it is; otherwise one of the tenant's tunnels, of whichever
/// session, whose node is gone, since a tunnel that died with its node holds nothing but its slot until
/// the lease lapses. The slot is handed over atomically (of two new tunnels, each gets a slot of its own),
/// the tunnel's records are removed at once, and its node, should it be there after all, is told to close
/// it (521 / 4409). Tunnels on live nodes keep their slots, and the limit holds.
async fn replace_lost(
    membership: &Membership,
    newest: &TunnelRecord,
    exclusive: bool,
) -> Result<Predecessor, RegistryError> {
    let session = membership
        .registry()
        .session_tunnels(&newest.session)
        .await?;
    let others: Vec<&TunnelRecord> = session.iter().filter(|t| t.id != newest.id).collect();
    if exclusive {
        for older in others.iter().filter(|t| is_older(t, newest)) {
            if take_slot(membership, &older.slot_holder(), Some(older), newest).await? {
                return Ok(Predecessor::Lost);
            }
        }
    }
    for holder in dead_holders(membership, &newest.tenant).await? {
        if take_slot(membership, &holder, None, newest).await? {
            return Ok(Predecessor::Lost);
        }
    }
    Ok(match others.is_empty() {
        true => Predecessor::None,
        false => Predecessor::Live,
    })
}

/// The holders of a tenant's slots whose node is gone: its lease lapsed, it runs as another incarnation
/// now, or its peer listener refuses connections (killed, while its lease still runs). Each node is judged
/// once, however many slots it holds, and the probes go at once.
async fn dead_holders(
    membership: &Membership,
    tenant: &TenantId,
) -> Result<Vec<SlotHolder>, RegistryError> {
    let me = membership.me();
    let holders = membership.registry().slot_holders(tenant).await?;
    let nodes: Vec<(&NodeId, Incarnation)> = holders
        .iter()
        .map(|holder| (&holder.owner, holder.incarnation))
        .filter(|&(owner, incarnation)| (owner, incarnation) != (&me.id, me.incarnation))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let live = membership.live_owners(&nodes).await?;
    let mut gone = HashSet::new();
    let mut probes = Vec::new();
    for (&(owner, incarnation), node) in nodes.iter().zip(live) {
        match node {
            None => {
                gone.insert((owner, incarnation));
            }
            Some(node) => probes.push(async move {
                let refused = forward::refuses_connections(&node.peer_url).await;
                refused.then_some((owner, incarnation))
            }),
        }
    }
    gone.extend(join_all(probes).await.into_iter().flatten());
    let dead = holders
        .iter()
        .filter(|holder| gone.contains(&(&holder.owner, holder.incarnation)))
        .cloned()
        .collect();
    Ok(dead)
}

/// Hands the slot `holder` holds to `newest`, and ends its tunnel (`older`, when the caller has read its
/// record already): false when another new tunnel was handed it first.
async fn take_slot(
    membership: &Membership,
    holder: &SlotHolder,
    older: Option<&TunnelRecord>,
    newest: &TunnelRecord,
) -> Result<bool, RegistryError> {
    let registry = membership.registry();
    let handed = registry
        .hand_over_slot(&newest.tenant, holder, &newest.slot_holder())
        .await?;
    if !handed {
        return Ok(false);
    }
    let older = match older {
        Some(older) => Some(older.clone()),
        None => registry.tunnel(&holder.tunnel).await?,
    };
    // A slot without a record was taken by a node that died before it wrote one.
    if let Some(older) = older {
        let event = ControlEvent::TakenOver {
            session: older.session.clone(),
            tunnel: older.id,
        };
        registry.publish(&event).await?;
        registry.remove_tunnel(&older).await?;
    }
    info!(tenant = %newest.tenant, session = %newest.session, replaced = %holder.tunnel, owner = %holder.owner, "the tenant's slot of a reconnect's previous tunnel, of a tunnel whose node is gone, or of an exclusive session's older tunnel, goes to a new tunnel");
    Ok(true)
}

/// Whether `tunnel` was opened before `newest`: by creation time, then id, so that every node orders two
/// tunnels opened in the same millisecond alike.
fn is_older(tunnel: &TunnelRecord, newest: &TunnelRecord) -> bool {
    (tunnel.created_ms, tunnel.id) < (newest.created_ms, newest.id)
}

/// Closes the older tunnels of this tunnel's (exclusive) session. Only older ones: of two connections
/// racing, the newer wins on every node.
async fn take_over(membership: &Membership, newest: &TunnelRecord) -> Result<(), TunnelError> {
    let registry = membership.registry();
    for older in registry.session_tunnels(&newest.session).await? {
        if is_older(&older, newest) {
            let event = ControlEvent::TakenOver {
                session: older.session.clone(),
                tunnel: older.id,
            };
            registry.publish(&event).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use deskbroker_broker::tenants::{Limits, Tenant};
    use deskbroker_broker::{MemoryRegistry, Registry};
    use deskbroker_shared::ids::{NodeId, SessionId, TenantId};
    use deskbroker_shared::session::Target;

    use super::*;

    /// A node of a tenant allowed one tunnel, and a session of that tenant.
    async fn one_slot() -> (Membership, LocalTunnels, Session) {
        let registry = Arc::new(MemoryRegistry::new());
        let tenant = Tenant {
            id: TenantId::new("t"),
            key_sha256: TokenDigest::of("key"),
            policy: Default::default(),
            limits: Limits {
                max_tunnels: 1,
                ..Limits::default()
            },
            guacd_params: Default::default(),
        };
        registry.put_tenant(&tenant).await.unwrap();
        let lease = Duration::from_secs(10);
        let membership = Membership::new(registry, NodeId::new("a"), String::new(), lease);
        membership.join().await.unwrap();
        let target = Target::parse("127.0.0.1:5900").unwrap();
        let session = Session::new(SessionId::new("s"), tenant.id, target);
        (membership, LocalTunnels::default(), session)
    }

    async fn open(
        (membership, local, session): &(Membership, LocalTunnels, Session),
    ) -> Result<Registration, TunnelError> {
        let tunnel = Tunnel {
            id: TunnelId::random(),
            kind: TunnelKind::Websockify,
            http_token: None,
            client: None,
            replaces: None,
        };
        let parent = CancellationToken::new();
        Registration::open(membership, local, &parent, tunnel, session).await
    }

    async fn recorded(node: &(Membership, LocalTunnels, Session)) -> usize {
        let registry = node.0.registry();
        registry.session_tunnels(&node.2.id).await.unwrap().len()
    }

    #[tokio::test]
    async fn a_release_gives_everything_back_at_once() {
        let node = one_slot().await;
        let first = open(&node).await.unwrap();
        assert_eq!(recorded(&node).await, 1);
        assert_eq!(node.1.sessions(), std::slice::from_ref(&node.2.id));
        let refused = open(&node).await.err();
        assert!(matches!(refused, Some(TunnelError::TooMany)), "{refused:?}");
        assert_eq!(recorded(&node).await, 1, "a refusal records nothing");
        assert_eq!(node.1.sessions().len(), 1, "nor keeps an entry");

        first.release().await;
        assert_eq!(recorded(&node).await, 0);
        assert!(node.1.sessions().is_empty());
        assert!(open(&node).await.is_ok(), "the slot is free again");
    }

    #[tokio::test]
    async fn a_registration_dropped_on_an_error_path_gives_everything_back() {
        let node = one_slot().await;
        drop(open(&node).await.unwrap());
        assert!(node.1.sessions().is_empty(), "the entry goes at once");
        // The registry is told at the next renewal, without waiting in the dropping task.
        node.0.tick(&|_| {}).await.unwrap();
        assert_eq!(recorded(&node).await, 0);
        assert!(open(&node).await.is_ok(), "the slot is free again");
    }

    /// A node that took a slot and died before it wrote its tunnel's record leaves a slot no record or
    /// cleanup ever gives back: the slot's holder names the dead node, so a tunnel at the limit takes it.
    #[tokio::test]
    async fn a_slot_its_dead_node_never_recorded_a_tunnel_for_is_taken_at_the_limit() {
        let node = one_slot().await;
        let orphan = SlotHolder {
            tunnel: TunnelId::random(),
            owner: NodeId::new("died-while-connecting"),
            incarnation: Incarnation(uuid::Uuid::from_u128(7)),
        };
        let registry = node.0.registry();
        assert!(
            registry
                .reserve_slot(&node.2.tenant, &orphan, 1)
                .await
                .unwrap()
        );

        let opened = open(&node).await.unwrap();
        let holders = registry.slot_holders(&node.2.tenant).await.unwrap();
        assert_eq!(holders, [opened.record().slot_holder()]);
    }
}
