//! What the operator configured (the broker's tenants, an edge's session file) comes back by itself when the
//! registry loses its data, as a Redis without persistence does when it restarts. Whoever wrote it sets a
//! marker after it; [`keep`] looks for the marker every [`RESTORE_PERIOD`] (one `EXISTS`, and one `INFO`
//! per server) and, when it is gone or one of the registry's servers restarted (a Redis Cluster master
//! that comes back empty loses its slots, which need not be the marker's), writes everything again, then
//! the marker. Tenants and sessions created through the API are not configuration: see
//! docs/reliability.md for what survives a registry's data loss.

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::defaults::RESTORE_PERIOD;
use crate::registry::{Registry, Result};

/// The marker of the broker's configured tenants: while it is missing, a tenant the registry does not
/// know may be one the broker has yet to write back.
pub const TENANTS_MARKER: &str = "tenants";

/// Writes what `marker` stands for with `write`, then the marker.
pub async fn write<F, Fut>(registry: &dyn Registry, marker: &str, write: &mut F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    write().await?;
    registry.mark(marker).await
}

/// Writes it again whenever the marker is gone, until `stop`.
pub async fn keep<F, Fut>(
    registry: Arc<dyn Registry>,
    marker: String,
    stop: CancellationToken,
    mut write_all: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut ticks = tokio::time::interval(RESTORE_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut runs = registry.server_runs().await.ok();
    // Written again after a server restarted, until a write succeeds.
    let mut owed = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        // While the registry (or one of its servers) is away, the next round asks again.
        if let Ok(now) = registry.server_runs().await {
            owed |= runs.as_ref().is_some_and(|before| *before != now);
            runs = Some(now);
        }
        if !owed && registry.marked(&marker).await.unwrap_or(true) {
            continue;
        }
        info!(%marker, "the registry lost its data; writing the configuration again");
        match write(registry.as_ref(), &marker, &mut write_all).await {
            Ok(()) => owed = false,
            Err(error) => {
                warn!(%marker, %error, "could not write the configuration again; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::memory::MemoryRegistry;

    #[tokio::test(start_paused = true)]
    async fn what_the_registry_lost_is_written_again_and_only_then() {
        let registry = Arc::new(MemoryRegistry::new());
        let writes = Arc::new(AtomicUsize::new(0));
        let count = {
            let writes = writes.clone();
            move || {
                let writes = writes.clone();
                async move {
                    writes.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        };
        let stop = CancellationToken::new();
        let kept = tokio::spawn(keep(registry.clone(), "m".into(), stop.clone(), count));
        tokio::time::sleep(RESTORE_PERIOD * 3).await;
        assert_eq!(
            writes.load(Ordering::SeqCst),
            1,
            "written once, then marked"
        );
        assert!(registry.marked("m").await.unwrap());
        stop.cancel();
        kept.await.unwrap();
    }
}
