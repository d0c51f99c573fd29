//! The peer listener: where other nodes forward HTTP tunnel requests for tunnels this node owns.
//!
//! Every request must carry the cluster secret (`DESKBROKER_CLUSTER_SECRET`), compared in constant time;
//! a node with no secret configured refuses every peer request, so the peer port is never an
//! unauthenticated way into a tunnel. A peer request is served from this node's own tunnels only, never
//! forwarded again: a request for a tunnel this node does not own gets 404/516.

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::{debug, warn};

use deskbroker_shared::GuacStatus;
use deskbroker_shared::ids::TunnelToken;
use deskbroker_shared::peer::{CLUSTER_SECRET_HEADER, TrafficQuery};
use deskbroker_shared::tunnel_op::TUNNEL_TOKEN_HEADER;

use crate::defaults::TRAFFIC_QUERY_LIMIT;
use crate::error::error_response;
use crate::http_tunnel::{self, HttpTunnels};
use crate::metrics::metrics;
use crate::node::Node;

/// True when the request carries this node's cluster secret.
fn authenticated(node: &Node, headers: &HeaderMap) -> bool {
    let presented = headers.get(CLUSTER_SECRET_HEADER).map(|v| v.as_bytes());
    let allowed = match (node.cluster_secret(), presented) {
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

/// An HTTP tunnel request another node forwarded: served from this node's own tunnels only.
pub async fn tunnel(
    State(node): State<Node>,
    State(tunnels): State<HttpTunnels>,
    request: Request<Body>,
) -> Response {
    if !authenticated(&node, request.headers()) {
        metrics().served_for_peer("unauthenticated");
        return error_response(GuacStatus::ClientUnauthorized, "Peer request refused.");
    }
    let response =
        http_tunnel::serve(&node, &tunnels, request, http_tunnel::Scope::LocalOnly).await;
    metrics().served_for_peer(match response.status() {
        status if status.is_success() => "answered",
        StatusCode::NOT_FOUND => "no_such_tunnel",
        _ => "refused",
    });
    response
}

/// A stopping node asks this owner to end the read it forwards of the tunnel named by the request's
/// `Guacamole-Tunnel-Token`: the read ends at its next instruction boundary, and the client's next read
/// goes to a node that stays. 204 when the tunnel is here, 404 otherwise.
pub async fn release_read(
    State(node): State<Node>,
    State(tunnels): State<HttpTunnels>,
    headers: HeaderMap,
) -> StatusCode {
    if !authenticated(&node, &headers) {
        return StatusCode::FORBIDDEN;
    }
    let token = headers
        .get(TUNNEL_TOKEN_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(TunnelToken::new);
    match token.and_then(|token| tunnels.get(&token)) {
        Some(tunnel) => {
            debug!(tunnel = %tunnel.id, "the node forwarding its read is stopping; ending the read");
            tunnel.release_read();
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

/// What this node's tunnels of the sessions asked for have moved, for the control plane's live view: one
/// request for all of them. The body is read only from a caller with the secret, and only so far.
pub async fn traffic(State(node): State<Node>, request: Request<Body>) -> Response {
    if !authenticated(&node, request.headers()) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let Ok(body) = axum::body::to_bytes(request.into_body(), TRAFFIC_QUERY_LIMIT).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    match serde_json::from_slice::<TrafficQuery>(&body) {
        Ok(query) => Json(node.traffic(&query.sessions)).into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}
