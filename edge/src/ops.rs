//! The ops handlers: `/healthz` answers while the process does (liveness), `/readyz` whether the node
//! can take new tunnels now (200 `ready`, or 503 with the reason), for load balancers and Kubernetes'
//! readiness probe; and `/metrics`, on the ops listener only: the registry's and the edge's counters, and
//! what the node's tunnels amount to, read from them at the scrape.

use std::fmt;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use deskbroker_broker::metrics::{self as registry_metrics, encode_each};
use deskbroker_shared::cluster::TunnelKind;

use crate::metrics::metrics;
use crate::node::Node;

pub async fn healthz() -> &'static str {
    "ok"
}

/// `/healthz` on the browser listener, which load balancers probe for rotation: 503 `draining` from the
/// moment the node is told to stop (as when it is full: the listener answers 503 past its cap).
pub async fn public_healthz(State(node): State<Node>) -> (StatusCode, &'static str) {
    match node.draining() {
        true => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        false => (StatusCode::OK, "ok"),
    }
}

pub async fn readyz(State(node): State<Node>) -> (StatusCode, String) {
    match node.ready().await {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why.to_string()),
    }
}

/// Every metric of the node; `tenants` bounds the per-tenant series (`--metrics-tenants`).
pub async fn metrics_text(node: Node, tenants: usize) -> impl IntoResponse {
    let text = registry_metrics::scrape(|registry| {
        metrics().register(registry);
        registry.register_collector(Box::new(Tunnels { node, tenants }));
    });
    registry_metrics::answer(text)
}

/// What the node's tunnels amount to at the scrape: open by kind (and by tenant), bytes by kind and
/// direction, and whether the node drains.
struct Tunnels {
    node: Node,
    tenants: usize,
}

impl fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnels").finish_non_exhaustive()
    }
}

impl Collector for Tunnels {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let census = self.node.local().census();
        let open = TunnelKind::ALL.map(|kind| {
            let count = census.open.get(&kind).copied().unwrap_or(0);
            ([("kind", kind.name())], count)
        });
        let help = "Tunnels open on this node, by kind.";
        encode_each(&mut encoder, ("tunnels_open", help), false, open)?;

        let bytes = TunnelKind::ALL.into_iter().flat_map(|kind| {
            let (from_browser, to_browser) = census.bytes.get(&kind).copied().unwrap_or((0, 0));
            [
                (
                    [("kind", kind.name()), ("direction", "from_browser")],
                    from_browser,
                ),
                (
                    [("kind", kind.name()), ("direction", "to_browser")],
                    to_browser,
                ),
            ]
        });
        let help = "Bytes relayed by this node's tunnels, open and closed, by kind and direction.";
        encode_each(&mut encoder, ("tunnel_bytes", help), true, bytes)?;

        if self.tenants > 0 {
            let mut by_tenant: Vec<_> = census.by_tenant.iter().collect();
            by_tenant.sort_unstable_by(|a, b| b.1.cmp(a.1).then(a.0.as_str().cmp(b.0.as_str())));
            let rest: u64 = by_tenant.iter().skip(self.tenants).map(|(_, n)| **n).sum();
            let named = by_tenant.iter().take(self.tenants);
            let series = named
                .map(|(tenant, n)| ([("tenant", tenant.as_str())], **n))
                .chain((rest > 0).then_some(([("tenant", "other")], rest)));
            let help = "Tunnels open on this node by tenant: the most loaded, the rest as other.";
            encode_each(&mut encoder, ("tenant_tunnels_open", help), false, series)?;
        }

        let draining = [([("node", self.node.membership().me().id.as_str())], {
            u64::from(self.node.draining())
        })];
        let help = "1 from the moment the node was told to stop.";
        encode_each(&mut encoder, ("draining", help), false, draining)
    }
}
