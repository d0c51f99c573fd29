//! The edge's own metrics, beside the registry's (`deskbroker_broker::metrics`): tunnels opened, refused
//! and closed, by kind and reason, and how long they lived; HTTP-tunnel requests forwarded to owners and
//! served for peers; control events applied and control-channel reconnects. Each is counted where it
//! happens, once per tunnel or request, never per byte: the bytes relayed and the tunnels open are read
//! from the node's own tunnels at the scrape (`ops.rs`), from the atomics the relays already keep.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

use deskbroker_broker::metrics::{Histograms, Labels, latency_histogram};
use deskbroker_shared::cluster::TunnelKind;

use crate::error::TunnelError;

pub struct Metrics {
    opened: Family<Labels<1>, Counter>,
    refused: Family<Labels<2>, Counter>,
    closed: Family<Labels<2>, Counter>,
    duration: Histograms<1>,
    forwarded: Family<Labels<2>, Counter>,
    forward_latency: Histograms<1>,
    served_for_peers: Family<Labels<1>, Counter>,
    control_events: Family<Labels<1>, Counter>,
    control_reconnects: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    opened: Family::default(),
    refused: Family::default(),
    closed: Family::default(),
    duration: Family::new_with_constructor(|| {
        // A second to a day, in steps of four: tunnels live from a glance to a working day.
        prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 4.0, 9),
        )
    }),
    forwarded: Family::default(),
    forward_latency: Family::new_with_constructor(latency_histogram),
    served_for_peers: Family::default(),
    control_events: Family::default(),
    control_reconnects: Counter::default(),
});

pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The `reason` of a tunnel's end: `normal` when either side closed it, else its error's.
pub fn end_reason(end: &Result<(), TunnelError>) -> &'static str {
    end.as_ref().err().map_or("normal", TunnelError::reason)
}

impl Metrics {
    pub fn tunnel_opened(&self, kind: TunnelKind) {
        self.opened.get_or_create(&[("kind", kind.name())]).inc();
    }

    pub fn tunnel_refused(&self, kind: TunnelKind, error: &TunnelError) {
        let labels = [("kind", kind.name()), ("reason", error.reason())];
        self.refused.get_or_create(&labels).inc();
    }

    pub fn tunnel_closed(&self, kind: TunnelKind, reason: &'static str, lived: Duration) {
        let labels = [("kind", kind.name()), ("reason", reason)];
        self.closed.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&[("kind", kind.name())])
            .observe(lived.as_secs_f64());
    }

    /// A request forwarded to a tunnel's owner (`op`: `read` or `write`), and how long its answer's head
    /// took.
    pub fn forwarded(&self, op: &'static str, result: &'static str, took: Duration) {
        let labels = [("op", op), ("result", result)];
        self.forwarded.get_or_create(&labels).inc();
        self.forward_latency
            .get_or_create(&[("op", op)])
            .observe(took.as_secs_f64());
    }

    pub fn served_for_peer(&self, result: &'static str) {
        let labels = [("result", result)];
        self.served_for_peers.get_or_create(&labels).inc();
    }

    /// A control event applied (`session-closed`, `tenant-closed`, `taken-over`), live or caught up
    /// after a reconnect.
    pub fn control_event(&self, event: &'static str) {
        self.control_events.get_or_create(&[("event", event)]).inc();
    }

    pub fn control_reconnected(&self) {
        self.control_reconnects.inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tunnels_opened",
            "Tunnels opened (connected upstream), by kind.",
            self.opened.clone(),
        );
        registry.register(
            "tunnels_refused",
            "Tunnels refused before they opened, by kind and reason.",
            self.refused.clone(),
        );
        registry.register(
            "tunnels_closed",
            "Tunnels closed after they opened, by kind and reason.",
            self.closed.clone(),
        );
        registry.register_with_unit(
            "tunnel_duration",
            "How long closed tunnels were open, by kind.",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "forwarded_requests",
            "HTTP-tunnel requests forwarded to the tunnel's owner, by operation and result.",
            self.forwarded.clone(),
        );
        registry.register_with_unit(
            "forward_head_duration",
            "Time from forwarding a request to the owner's response head, by operation.",
            Unit::Seconds,
            self.forward_latency.clone(),
        );
        registry.register(
            "peer_requests",
            "HTTP-tunnel requests served for other nodes, by result.",
            self.served_for_peers.clone(),
        );
        registry.register(
            "control_events",
            "Control events applied to this node's tunnels, by event.",
            self.control_events.clone(),
        );
        registry.register(
            "control_channel_reconnects",
            "Subscriptions to the control channel after the first.",
            self.control_reconnects.clone(),
        );
    }
}
