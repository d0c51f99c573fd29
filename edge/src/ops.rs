//! The probes' handlers: `/healthz` answers while the process does (liveness), `/readyz` whether the node
//! can take new tunnels now (200 `ready`, or 503 with the reason), for load balancers and Kubernetes'
//! readiness probe.

use axum::extract::State;
use axum::http::StatusCode;

use crate::node::Node;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(node): State<Node>) -> (StatusCode, String) {
    match node.ready().await {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why.to_string()),
    }
}
