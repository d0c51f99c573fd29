//! Following the control channel: a revoked session's tunnels close, a removed tenant's, and the older
//! tunnel of an exclusive session that a newer connection took over. The channel keeps nothing for a
//! subscriber that was away, so each time the node subscribes again it asks the registry what was revoked
//! meanwhile.

use std::io;
use std::time::SystemTime;

use futures_util::StreamExt;
use tracing::warn;

use deskbroker_broker::defaults::REVOCATION_MEMORY;
use deskbroker_shared::cluster::ControlEvent;
use deskbroker_shared::ids::SessionId;
use deskbroker_shared::time::from_unix_ms;

use crate::defaults::CONTROL_RETRY;
use crate::metrics::metrics;
use crate::node::Node;

/// Acts on control events until the node closes its tunnels; subscribes again whenever the subscription
/// breaks (Redis away), then closes what was revoked meanwhile.
pub async fn follow(node: Node) -> io::Result<()> {
    let registry = node.membership().registry().clone();
    let mut first = true;
    while !node.closing().is_cancelled() {
        if !std::mem::take(&mut first) {
            metrics().control_reconnected();
        }
        let subscribed = match registry.subscribe().await {
            Ok(events) => close_revoked(&node).await.map(|()| events),
            Err(error) => Err(error),
        };
        let mut events = match subscribed {
            Ok(events) => events,
            Err(error) => {
                warn!(%error, "control channel unavailable; retrying");
                tokio::select! {
                    () = tokio::time::sleep(CONTROL_RETRY) => continue,
                    () = node.closing().cancelled() => break,
                }
            }
        };
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                () = node.closing().cancelled() => return Ok(()),
            };
            if let Some(event) = &event {
                metrics().control_event(event.name());
            }
            match event {
                Some(ControlEvent::SessionClosed { session, until_ms }) => {
                    let until = until_ms.map(from_unix_ms);
                    remember(&node, &session, until);
                    node.local().close_session(&session)
                }
                Some(ControlEvent::TenantClosed { tenant }) => node.local().close_tenant(&tenant),
                Some(ControlEvent::TakenOver { session, tunnel }) => {
                    node.local().take_over(&session, &tunnel)
                }
                None => break,
            }
        }
    }
    Ok(())
}

/// Closes the tunnels of sessions revoked, and of tenants removed, while this node was not listening.
async fn close_revoked(node: &Node) -> deskbroker_broker::Result<()> {
    let registry = node.membership().registry();
    let sessions = node.local().sessions();
    for session in registry.revoked(&sessions).await? {
        metrics().control_event("session-closed");
        remember(node, &session, None);
        node.local().close_session(&session);
    }
    let tenants = node.local().tenants();
    for tenant in registry.removed_tenants(&tenants).await? {
        metrics().control_event("tenant-closed");
        node.local().close_tenant(&tenant);
    }
    Ok(())
}

/// Remembers a revocation for sealed tokens: until the session's expiry, or the registry's usual day
/// when it is not known.
fn remember(node: &Node, session: &SessionId, until: Option<SystemTime>) {
    if let Some(revocations) = node.revocations() {
        let until = until.unwrap_or_else(|| SystemTime::now() + REVOCATION_MEMORY);
        revocations.remember(session.clone(), until);
    }
}
