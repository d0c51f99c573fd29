//! Serving an HTTP tunnel request on a node that does not own the tunnel: find the owner, then forward the
//! request to the owner's peer listener and stream the answer back, both bodies as they come.
//!
//! The owner is found from the registry by the digest of the `Guacamole-Tunnel-Token` (one round trip on a
//! miss), then cached per token; a failed forward drops the cache entry. An owner whose lease lapsed, or
//! that cannot be reached, means the tunnel is gone: the client gets 404 with Guacamole status 516 at once.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::debug;

use deskbroker_broker::Membership;
use deskbroker_shared::GuacStatus;
use deskbroker_shared::cluster::NodeRecord;
use deskbroker_shared::ids::{ClusterSecret, TokenDigest};
use deskbroker_shared::peer::{CLUSTER_SECRET_HEADER, TUNNEL_PATH};

use crate::defaults::{OWNER_CACHE_ENTRIES, PEER_CONNECT_TIMEOUT};
use crate::error::{TunnelError, error_response};

pub struct Forwarder {
    client: Client<HttpConnector, Body>,
    secret: Option<ClusterSecret>,
    owners: Mutex<HashMap<TokenDigest, NodeRecord>>,
}

/// What a lookup for a token that is not local found.
pub enum Owner {
    /// Another node, alive, holds it.
    Peer(NodeRecord),
    /// No live node holds it.
    Gone,
}

impl Forwarder {
    pub fn new(secret: Option<ClusterSecret>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(PEER_CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            client,
            secret,
            owners: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<TokenDigest, NodeRecord>> {
        // Single map operations only: the cache cannot be left half-updated.
        self.owners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Finds the live owner of the tunnel with this token, from the cache or the registry.
    pub async fn owner(
        &self,
        membership: &Membership,
        token: &TokenDigest,
    ) -> Result<Owner, TunnelError> {
        if let Some(owner) = self.cache().get(token).cloned() {
            return Ok(Owner::Peer(owner));
        }
        let Some(record) = membership.registry().http_tunnel(token).await? else {
            return Ok(Owner::Gone);
        };
        if record.owner == membership.me().id {
            // Ours by the record, but not in our map: it has ended here.
            return Ok(Owner::Gone);
        }
        let Some(owner) = membership.live_owner(&record).await? else {
            return Ok(Owner::Gone);
        };
        let mut cache = self.cache();
        if cache.len() >= OWNER_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(*token, owner.clone());
        Ok(Owner::Peer(owner))
    }

    /// Sends the request to the owner's peer listener and streams its answer back.
    pub async fn forward(
        &self,
        owner: &NodeRecord,
        token: &TokenDigest,
        request: Request<Body>,
    ) -> Response {
        let Some(secret) = &self.secret else {
            return error_response(GuacStatus::ServerError, "No cluster secret configured.");
        };
        let (mut parts, body) = request.into_parts();
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let Ok(uri) = format!(
            "{}{TUNNEL_PATH}{query}",
            owner.peer_url.trim_end_matches('/')
        )
        .parse::<Uri>() else {
            return error_response(GuacStatus::ServerError, "Bad peer URL.");
        };
        parts.uri = uri;
        parts.headers.remove(axum::http::header::HOST);
        if let Ok(value) = HeaderValue::from_str(secret.expose()) {
            parts.headers.insert(CLUSTER_SECRET_HEADER, value);
        }
        debug!(peer = %owner.id, "forwarding to the owner");
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                if response.status() == axum::http::StatusCode::NOT_FOUND {
                    self.cache().remove(token);
                }
                response.map(Body::new).into_response()
            }
            Err(error) => {
                debug!(peer = %owner.id, %error, "forward failed; the owner is gone");
                self.cache().remove(token);
                error_response(GuacStatus::ResourceNotFound, "No such tunnel.")
            }
        }
    }
}
