//! The broker's probes, on its API listener and on its ops listener (`--ops-listen`): `/healthz` (alive:
//! the process answers) and `/readyz` (200 `ready` while the registry answers within its deadline, every
//! server of a Cluster; 503 with the reason otherwise, and from the moment the broker begins to stop).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

#[derive(Clone)]
struct Probes {
    registry: Arc<dyn Registry>,
    stopping: CancellationToken,
}

/// The probes of a broker on `registry`, not ready once `stopping` is cancelled.
pub fn router(registry: Arc<dyn Registry>, stopping: CancellationToken) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Probes { registry, stopping })
}

async fn readyz(State(probes): State<Probes>) -> (StatusCode, &'static str) {
    if probes.stopping.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping");
    }
    match probes.registry.server_runs().await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "registry unavailable"),
    }
}
