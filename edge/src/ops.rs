//! The probes' handlers: `/readyz` answers whether the node can take new tunnels now (200 `ready`, or 503
//! with the reason), for load balancers and Kubernetes' readiness probe. `/healthz` (alive: the process
//! answers) needs no handler of its own.

use axum::extract::State;
use axum::http::StatusCode;

use crate::node::Node;

pub async fn readyz(State(node): State<Node>) -> (StatusCode, String) {
    match node.ready().await {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why.to_string()),
    }
}
