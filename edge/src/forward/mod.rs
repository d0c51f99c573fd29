//! Serving an HTTP tunnel request on a node that does not own the tunnel: find the owner, then forward the
//! request to the owner's peer listener and stream the answer back, both bodies as they come.
//!
//! The owner is found from the registry by the digest of the `Guacamole-Tunnel-Token` (one round trip on a
//! miss), then cached per token, and checked against its lease in the node's view at every use; a failed
//! forward drops the cache entry. An owner whose lease lapsed, or that cannot be reached, means the tunnel is
//! lost with its node: the client gets 502 with Guacamole status 520 at once, which says to open it again
//! (a tunnel that simply ended is 404/516, the client's normal end of stream).
//!
//! A forward has deadlines of its own (`bodies.rs` carries them), so that an owner that is frozen or stuck
//! holds no request: the connection ([`PEER_CONNECT_TIMEOUT`]), the response head once the request body is
//! sent ([`PEER_HEAD_TIMEOUT`]), a response body that stalls ([`PEER_BODY_STALL_TIMEOUT`]), and, all along,
//! the owner's lease. Before the head, a failure is answered 502/520; after it, the response is cut.

mod bodies;
mod error;
mod reads;

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use deskbroker_broker::Membership;
use deskbroker_broker::lease::Lease;
use deskbroker_shared::GuacStatus;
use deskbroker_shared::cluster::NodeRecord;
use deskbroker_shared::ids::{ClusterSecret, TokenDigest};
use deskbroker_shared::peer::{CLUSTER_SECRET_HEADER, RELEASE_READ_PATH, TUNNEL_PATH};
use deskbroker_shared::tunnel_op::TUNNEL_TOKEN_HEADER;

use self::bodies::{Lapse, Sending, Watched};
use self::error::ForwardError;
use self::reads::Reads;
use crate::defaults::{
    OWNER_CACHE_ENTRIES, PEER_BODY_STALL_TIMEOUT, PEER_CONNECT_TIMEOUT, PEER_HEAD_TIMEOUT,
    RELEASE_TIMEOUT,
};
use crate::error::{TunnelError, error_response};
use crate::metrics::metrics;

/// What a client is told when the node that holds its tunnel is gone or cannot be reached: 520
/// UPSTREAM_UNAVAILABLE, one of the statuses that say to open the tunnel again (docs/errors.md).
pub const OWNER_LOST: &str = "The tunnel's node is gone; reconnect.";

pub struct Forwarder {
    client: Client<HttpConnector, Body>,
    secret: Option<ClusterSecret>,
    owners: Mutex<HashMap<TokenDigest, NodeRecord>>,
    reads: Reads,
}

/// Whether the node at `peer_url` refuses connections to its peer listener: its process is gone (a live
/// node, even a frozen one, has the kernel accept them). Within [`PEER_CONNECT_TIMEOUT`]; an address that
/// does not answer at all is not taken for gone.
pub async fn refuses_connections(peer_url: &str) -> bool {
    let Some(authority) = peer_url
        .parse::<Uri>()
        .ok()
        .and_then(|uri| uri.authority().map(|a| a.as_str().to_owned()))
    else {
        return false;
    };
    let connecting = tokio::net::TcpStream::connect(authority);
    matches!(
        tokio::time::timeout(PEER_CONNECT_TIMEOUT, connecting).await,
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// What a lookup for a token that is not local found.
pub enum Owner {
    /// Another node, alive, holds it.
    Peer(NodeRecord),
    /// The node that held it is gone (its lease lapsed): the tunnel died with it, and the client should
    /// open a new one.
    Lost,
    /// No node holds it: it ended, or never was.
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
            reads: Reads::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<TokenDigest, NodeRecord>> {
        // Single map operations only: the cache cannot be left half-updated.
        self.owners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks the owner of every read this node forwards to end it now, at an instruction boundary, so that
    /// the clients' next reads go to nodes that stay (this one is stopping). Waits for their answers, at
    /// most [`RELEASE_TIMEOUT`]; a read whose owner does not answer is cut when this node exits.
    pub async fn release_reads(&self) {
        let Some(secret) = &self.secret else {
            return;
        };
        let reads = self.reads.listed();
        if reads.is_empty() {
            return;
        }
        let asks = reads.iter().map(|(owner, token)| {
            let url = format!(
                "{}{RELEASE_READ_PATH}",
                owner.peer_url.trim_end_matches('/')
            );
            let mut request = Request::post(url).body(Body::empty());
            if let Ok(request) = &mut request {
                let headers = request.headers_mut();
                headers.insert(TUNNEL_TOKEN_HEADER, token.clone());
                if let Ok(value) = HeaderValue::from_str(secret.expose()) {
                    headers.insert(CLUSTER_SECRET_HEADER, value);
                }
            }
            async move {
                match request {
                    Ok(request) => self.client.request(request).await.is_ok(),
                    Err(_) => false,
                }
            }
        });
        let answered =
            tokio::time::timeout(RELEASE_TIMEOUT, futures_util::future::join_all(asks)).await;
        let released = answered.map_or(0, |answers| answers.into_iter().filter(|ok| *ok).count());
        info!(
            reads = reads.len(),
            released, "asked the owners to end the reads forwarded through this node"
        );
    }

    /// Finds the live owner of the tunnel with this token, from the cache (if the view says its lease still
    /// runs, in the same incarnation) or the registry.
    pub async fn owner(
        &self,
        membership: &Membership,
        token: &TokenDigest,
    ) -> Result<Owner, TunnelError> {
        let cached = self.cache().get(token).cloned();
        if let Some(cached) = cached {
            return Ok(match membership.lease_of(&cached) {
                Lease::Live(owner) => Owner::Peer(owner),
                Lease::Lapsed => {
                    debug!(peer = %cached.id, "the cached owner's lease lapsed");
                    self.cache().remove(token);
                    Owner::Lost
                }
            });
        }
        let Some(record) = membership.registry().http_tunnel(token).await? else {
            return Ok(Owner::Gone);
        };
        if record.owner == membership.me().id {
            // Ours by the record, but not in our map: it has ended here.
            return Ok(Owner::Gone);
        }
        let Some(owner) = membership
            .live_owner(&record.owner, record.incarnation)
            .await?
        else {
            return Ok(Owner::Lost);
        };
        let mut cache = self.cache();
        if cache.len() >= OWNER_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(*token, owner.clone());
        Ok(Owner::Peer(owner))
    }

    /// Sends the request to the owner's peer listener and streams its answer back, within the forward's
    /// deadlines.
    pub async fn forward(
        &self,
        membership: &Membership,
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
        let op = match query.starts_with("?read:") {
            true => "read",
            false => "write",
        };
        let forwarded = Instant::now();
        // A read is listed while it streams, so that this node can have it ended if it stops.
        let listed = match op {
            "read" => parts
                .headers
                .get(TUNNEL_TOKEN_HEADER)
                .map(|token| self.reads.list(owner, token.clone())),
            _ => None,
        };
        let sent = CancellationToken::new();
        let request = Request::from_parts(parts, Body::new(Sending::new(body, sent.clone())));
        let mut lapsed: Lapse = Box::pin(membership.lapsed(owner.clone()));
        let peer = || owner.id.clone();
        let answer = tokio::select! {
            answer = self.client.request(request) => {
                answer.map_err(|source| ForwardError::Request { peer: peer(), source })
            }
            () = async { sent.cancelled().await; tokio::time::sleep(PEER_HEAD_TIMEOUT).await } => {
                Err(ForwardError::NoHead { peer: peer(), deadline: PEER_HEAD_TIMEOUT })
            }
            () = &mut lapsed => Err(ForwardError::Lapsed { peer: peer() }),
        };
        let result = match &answer {
            Ok(response) if response.status().is_success() => "answered",
            Ok(_) => "refused",
            Err(ForwardError::Request { .. }) => "unreachable",
            Err(ForwardError::NoHead { .. }) => "no_head",
            Err(_) => "owner_lapsed",
        };
        metrics().forwarded(op, result, forwarded.elapsed());
        match answer {
            Ok(response) => {
                if response.status() == axum::http::StatusCode::NOT_FOUND {
                    self.cache().remove(token);
                }
                response
                    .map(|body| {
                        let watched = Watched::new(body, peer(), lapsed, PEER_BODY_STALL_TIMEOUT);
                        Body::new(watched.listed(listed))
                    })
                    .into_response()
            }
            Err(error) => {
                match error.is_unanswered() {
                    true => warn!(side = "peer", %error, "forward failed; the tunnel is gone"),
                    false => debug!(side = "peer", %error, "forward failed; the owner is gone"),
                }
                self.cache().remove(token);
                error_response(GuacStatus::UpstreamUnavailable, OWNER_LOST)
            }
        }
    }
}
