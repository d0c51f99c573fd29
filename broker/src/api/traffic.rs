//! Where the live view's byte counts come from: the node that owns the tunnel. The broker asks the owner's
//! peer listener (with the cluster secret); a node serving the API itself reads its own counters.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, Request};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use deskbroker_shared::cluster::{NodeRecord, TunnelRecord};
use deskbroker_shared::ids::ClusterSecret;
use deskbroker_shared::peer::{self, CLUSTER_SECRET_HEADER, TrafficReport};

use crate::defaults::{PEER_CONNECT_TIMEOUT, TRAFFIC_TIMEOUT};
use crate::registry::BoxFuture;

pub trait TrafficSource: Send + Sync + 'static {
    /// What a tunnel has moved, if its owner answers.
    fn traffic<'a>(
        &'a self,
        owner: &'a NodeRecord,
        tunnel: &'a TunnelRecord,
    ) -> BoxFuture<'a, Option<TrafficReport>>;
}

/// Asks the owning node's peer listener.
pub struct PeerTraffic {
    client: Client<HttpConnector, Body>,
    secret: ClusterSecret,
}

impl PeerTraffic {
    pub fn new(secret: ClusterSecret) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(PEER_CONNECT_TIMEOUT));
        Arc::new(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            secret,
        })
    }
}

impl TrafficSource for PeerTraffic {
    fn traffic<'a>(
        &'a self,
        owner: &'a NodeRecord,
        tunnel: &'a TunnelRecord,
    ) -> BoxFuture<'a, Option<TrafficReport>> {
        Box::pin(async move {
            let url = format!(
                "{}{}",
                owner.peer_url.trim_end_matches('/'),
                peer::traffic_path(&tunnel.session, &tunnel.id)
            );
            let mut request = Request::get(url).body(Body::empty()).ok()?;
            request.headers_mut().insert(
                CLUSTER_SECRET_HEADER,
                HeaderValue::from_str(self.secret.expose()).ok()?,
            );
            let asking = async {
                let response = self.client.request(request).await.ok()?;
                if !response.status().is_success() {
                    return None;
                }
                let body = response.into_body().collect().await.ok()?.to_bytes();
                serde_json::from_slice(&body).ok()
            };
            tokio::time::timeout(TRAFFIC_TIMEOUT, asking)
                .await
                .ok()
                .flatten()
        })
    }
}
