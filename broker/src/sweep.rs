//! The sweep of a registry that keeps its records itself: its owner runs [`sweep`] beside it, and what
//! has expired (sessions, revocations) gives its memory back within [`SWEEP_INTERVAL`]. Redis expires its
//! keys by itself; its sweep costs a call that does nothing.
//!
//! A sweep, not a purge on every write: what the issue measured was a node that created sessions and then
//! took none for minutes, and a purge that rides on writes never runs on such a node. Each step is a
//! bounded batch ([`SWEEP_BATCH`]), earliest first from an index by expiry, so however much expired at
//! once, no lookup waits long behind the sweep.

use std::sync::Arc;

use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::defaults::{SWEEP_BATCH, SWEEP_INTERVAL};
use crate::registry::Registry;

/// Drops what has expired from `registry` every [`SWEEP_INTERVAL`], a batch at a time, until `stop`.
pub async fn sweep(registry: Arc<dyn Registry>, stop: CancellationToken) {
    let mut every = interval(SWEEP_INTERVAL);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        let mut dropped = 0;
        loop {
            let batch = match registry.purge_expired(SWEEP_BATCH).await {
                Ok(batch) => batch,
                Err(error) => {
                    debug!(side = "registry", %error, "registry sweep failed");
                    break;
                }
            };
            dropped += batch;
            if batch < SWEEP_BATCH || stop.is_cancelled() {
                break;
            }
            // A full batch: there may be more. Let lookups have the lock first.
            tokio::task::yield_now().await;
        }
        if dropped > 0 {
            debug!(records = dropped, "expired registry records dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use deskbroker_shared::ids::{SessionId, SessionToken, TenantId};
    use deskbroker_shared::session::{Session, Target};

    use super::*;
    use crate::memory::MemoryRegistry;

    #[tokio::test(start_paused = true)]
    async fn the_sweep_drops_everything_expired_within_an_interval_however_much() {
        let registry = Arc::new(MemoryRegistry::new());
        let expired = SystemTime::now() - Duration::from_secs(1);
        let count = 5 * SWEEP_BATCH + 3;
        for i in 0..count {
            let session = Session {
                expires: Some(expired),
                ..Session::new(
                    SessionId::new(format!("s-{i}")),
                    TenantId::new("t"),
                    Target::parse("127.0.0.1:5900").unwrap(),
                )
            };
            registry.insert(&SessionToken::new(format!("token-{i}")), session);
        }
        let stop = CancellationToken::new();
        let sweeping = tokio::spawn(sweep(registry.clone(), stop.clone()));
        tokio::time::sleep(SWEEP_INTERVAL + Duration::from_millis(1)).await;
        assert_eq!(
            registry.purge(SystemTime::now(), usize::MAX),
            0,
            "nothing was left"
        );
        stop.cancel();
        sweeping.await.unwrap();
    }
}
