//! Where the live view's byte counts come from: the nodes that own the tunnels. Each node listed as an
//! owner is asked once for all its tunnels of the sessions shown, every node at the same time, each within
//! [`TRAFFIC_TIMEOUT`]: a list waits for its slowest node at most that long, whatever the number of tunnels
//! and however many nodes hang. The broker asks the owners' peer listeners (with the cluster secret); a
//! node serving the API itself reads its own counters.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Request};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::debug;

use deskbroker_shared::cluster::{NodeRecord, TunnelRecord};
use deskbroker_shared::ids::{ClusterSecret, NodeId, SessionId, TunnelId};
use deskbroker_shared::peer::{
    CLUSTER_SECRET_HEADER, TRAFFIC_PATH, TrafficAnswer, TrafficQuery, TrafficReport,
};

use crate::defaults::{PEER_CONNECT_TIMEOUT, TRAFFIC_TIMEOUT};
use crate::registry::BoxFuture;

pub trait TrafficSource: Send + Sync + 'static {
    /// What `node`'s tunnels of `sessions` have moved, if it answers.
    fn traffic<'a>(
        &'a self,
        node: &'a NodeRecord,
        sessions: &'a [SessionId],
    ) -> BoxFuture<'a, Option<TrafficAnswer>>;
}

/// What `tunnels` have moved, as their owners count it: a tunnel missing from the answer is one whose owner
/// did not answer in time (or no longer holds it).
pub async fn counts(
    source: &dyn TrafficSource,
    nodes: &HashMap<NodeId, NodeRecord>,
    tunnels: &[&TunnelRecord],
) -> HashMap<TunnelId, TrafficReport> {
    let mut asked: HashMap<&NodeId, BTreeSet<&SessionId>> = HashMap::new();
    for tunnel in tunnels {
        asked
            .entry(&tunnel.owner)
            .or_default()
            .insert(&tunnel.session);
    }
    let questions = asked.into_iter().filter_map(|(id, sessions)| {
        let node = nodes.get(id)?;
        let sessions: Vec<SessionId> = sessions.into_iter().cloned().collect();
        Some(async move {
            let answer = tokio::time::timeout(TRAFFIC_TIMEOUT, source.traffic(node, &sessions));
            let answer = answer.await.ok().flatten();
            if answer.is_none() {
                debug!(node = %node.id, "no byte counts from the node in time");
            }
            (&node.id, answer.unwrap_or_default())
        })
    });
    let answers = futures_util::future::join_all(questions).await;
    // A node speaks only for the tunnels the registry says it owns.
    let owners: HashMap<&TunnelId, &NodeId> = tunnels.iter().map(|t| (&t.id, &t.owner)).collect();
    let mut counts = HashMap::new();
    for (node, answer) in answers {
        let own = answer
            .tunnels
            .into_iter()
            .filter(|(tunnel, _)| owners.get(tunnel) == Some(&node));
        counts.extend(own);
    }
    counts
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
        node: &'a NodeRecord,
        sessions: &'a [SessionId],
    ) -> BoxFuture<'a, Option<TrafficAnswer>> {
        Box::pin(async move {
            let url = format!("{}{TRAFFIC_PATH}", node.peer_url.trim_end_matches('/'));
            let query = TrafficQuery {
                sessions: sessions.to_vec(),
            };
            let body = serde_json::to_vec(&query).ok()?;
            let mut request = Request::post(url).body(Body::from(body)).ok()?;
            let headers = request.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(
                CLUSTER_SECRET_HEADER,
                HeaderValue::from_str(self.secret.expose()).ok()?,
            );
            let response = self.client.request(request).await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body = response.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice(&body).ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use deskbroker_shared::cluster::{Incarnation, TunnelKind};
    use deskbroker_shared::ids::TenantId;

    use super::*;

    /// Nodes that answer for every tunnel they are asked about, from a table; `hung` never answers.
    struct Table {
        reports: HashMap<(NodeId, SessionId), Vec<TunnelId>>,
        hung: NodeId,
        asked: std::sync::Mutex<Vec<NodeId>>,
    }

    impl TrafficSource for Table {
        fn traffic<'a>(
            &'a self,
            node: &'a NodeRecord,
            sessions: &'a [SessionId],
        ) -> BoxFuture<'a, Option<TrafficAnswer>> {
            self.asked.lock().unwrap().push(node.id.clone());
            Box::pin(async move {
                if node.id == self.hung {
                    std::future::pending::<()>().await;
                }
                let report = TrafficReport {
                    to_upstream: 1,
                    from_upstream: 2,
                };
                let tunnels = sessions
                    .iter()
                    .filter_map(|s| self.reports.get(&(node.id.clone(), s.clone())))
                    .flatten()
                    .map(|id| (*id, report))
                    .collect();
                Some(TrafficAnswer { tunnels })
            })
        }
    }

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: NodeId::new(id),
            incarnation: Incarnation(uuid::Uuid::from_u128(1)),
            peer_url: format!("http://{id}"),
            expires_ms: u64::MAX,
        }
    }

    fn tunnel(owner: &str, session: &str, n: u8) -> TunnelRecord {
        TunnelRecord {
            id: TunnelId::from_random_bytes([n; 16]),
            owner: NodeId::new(owner),
            incarnation: Incarnation(uuid::Uuid::from_u128(1)),
            tenant: TenantId::new("t"),
            session: SessionId::new(session),
            kind: TunnelKind::Websockify,
            created_ms: 0,
            http_token: None,
            connection: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_owner_is_asked_once_all_at_once_and_a_hung_one_costs_one_deadline() {
        let tunnels: Vec<TunnelRecord> = (0..40)
            .map(|n| tunnel("hung", &format!("s{}", n % 3), n))
            .chain((40..45).map(|n| tunnel("live", &format!("s{}", n % 3), n)))
            .collect();
        let mut reports: HashMap<(NodeId, SessionId), Vec<TunnelId>> = HashMap::new();
        for t in &tunnels {
            let key = (t.owner.clone(), t.session.clone());
            reports.entry(key).or_default().push(t.id);
        }
        // The live node also claims a tunnel the registry gives to the hung one: not believed.
        let claimed = (NodeId::new("live"), SessionId::new("s0"));
        reports.entry(claimed).or_default().push(tunnels[0].id);
        let source = Table {
            reports,
            hung: NodeId::new("hung"),
            asked: Default::default(),
        };
        let nodes = HashMap::from([
            (NodeId::new("hung"), node("hung")),
            (NodeId::new("live"), node("live")),
        ]);

        let started = tokio::time::Instant::now();
        let shown: Vec<&TunnelRecord> = tunnels.iter().collect();
        let counts = counts(&source, &nodes, &shown).await;
        assert_eq!(
            started.elapsed(),
            TRAFFIC_TIMEOUT,
            "one deadline, not one per tunnel"
        );

        let mut asked = source.asked.into_inner().unwrap();
        asked.sort();
        assert_eq!(asked, [NodeId::new("hung"), NodeId::new("live")]);
        let counted: BTreeSet<TunnelId> = counts.keys().copied().collect();
        let live: BTreeSet<TunnelId> = tunnels[40..].iter().map(|t| t.id).collect();
        assert_eq!(counted, live, "the live node's tunnels, and only those");
    }
}
