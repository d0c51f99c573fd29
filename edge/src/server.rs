//! The routers: what each of the node's listeners serves, built from the handlers. This is the top of the
//! house: it imports the handlers, and only the lifecycle, which serves these routers, imports it.

use std::path::Path;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::routing::{any, get, post};

use deskbroker_shared::peer::{RELEASE_READ_PATH, TRAFFIC_PATH, TUNNEL_PATH};

use crate::http_tunnel::{self, HttpTunnels};
use crate::node::Node;
use crate::{ops, page, peer, websockify, ws_tunnel};

/// What the handlers take as state: the node, and the HTTP tunnels by token (which only the HTTP tunnel's
/// handlers, on either listener, need).
#[derive(Clone, FromRef)]
pub struct Routes {
    pub node: Node,
    pub http_tunnels: HttpTunnels,
}

/// The browser listener: the three tunnels, the probes, the page's question, the page itself.
pub fn public(routes: Routes, web_dir: Option<&Path>) -> Router {
    let router = Router::new()
        .route("/websockify", any(websockify::handle))
        .route("/websocket-tunnel", any(ws_tunnel::handle))
        .route("/tunnel", any(http_tunnel::handle))
        .route("/healthz", get(ops::public_healthz))
        .route("/readyz", get(ops::readyz))
        .route("/client/session", get(page::session));
    page::with_files(router, web_dir).with_state(routes)
}

/// The peer listener: HTTP tunnel requests forwarded by other nodes, and byte counts for the broker.
pub fn peers(routes: Routes) -> Router {
    Router::new()
        .route(TUNNEL_PATH, any(peer::tunnel))
        .route(TRAFFIC_PATH, post(peer::traffic))
        .route(RELEASE_READ_PATH, post(peer::release_read))
        .route("/healthz", get(ops::healthz))
        .with_state(routes)
}

/// The ops listener (`--ops-listen`): the probes and the metrics, on an address of their own, never the
/// public one. `metrics_tenants` bounds the per-tenant series.
pub fn ops(routes: Routes, metrics_tenants: usize) -> Router {
    let metrics = move |State(node): State<Node>| ops::metrics_text(node, metrics_tenants);
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(metrics))
        .with_state(routes)
}
