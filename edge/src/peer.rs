//! The peer listener: where other nodes forward HTTP tunnel requests for tunnels this node owns.
//!
//! Every request must carry the cluster secret (`DESKBROKER_CLUSTER_SECRET`), compared in constant time;
//! a node with no secret configured refuses every peer request, so the peer port is never an
//! unauthenticated way into a tunnel. A peer request is served from this node's own tunnels only, never
//! forwarded again: a request for a tunnel this node does not own gets 404/516.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tracing::warn;

use deskbroker_shared::GuacStatus;
use deskbroker_shared::ids::{SessionId, TunnelId};
use deskbroker_shared::peer::CLUSTER_SECRET_HEADER;

use crate::guac::error_response;
use crate::http_tunnel;
use crate::server::Edge;

pub const CLUSTER_SECRET: HeaderName = HeaderName::from_static(CLUSTER_SECRET_HEADER);

pub fn router(edge: Edge) -> Router {
    Router::new()
        .route("/tunnel", any(tunnel))
        .route("/tunnels/{session}/{tunnel}/traffic", get(traffic))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(edge)
}

/// True when the request carries this node's cluster secret.
fn authenticated(edge: &Edge, headers: &HeaderMap) -> bool {
    let presented = headers.get(CLUSTER_SECRET).map(|v| v.as_bytes());
    let allowed = match (edge.cluster_secret(), presented) {
        (Some(secret), Some(presented)) => secret.matches(presented),
        _ => false,
    };
    if !allowed {
        warn!(
            side = "peer",
            "peer request without a valid cluster secret refused"
        );
    }
    allowed
}

async fn tunnel(State(edge): State<Edge>, request: Request<Body>) -> Response {
    if !authenticated(&edge, request.headers()) {
        return error_response(GuacStatus::ClientUnauthorized, "Peer request refused.");
    }
    http_tunnel::serve(edge, request, http_tunnel::Scope::LocalOnly).await
}

/// What one of this node's tunnels has moved, for the control plane's live view.
async fn traffic(
    State(edge): State<Edge>,
    Path((session, tunnel)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !authenticated(&edge, &headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let tunnel = TunnelId::parse(&tunnel);
    let report = tunnel.and_then(|tunnel| edge.traffic(&SessionId::new(session), &tunnel));
    match report {
        Some(report) => Json(report).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
