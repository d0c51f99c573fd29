//! The Prometheus metrics that the registry and the membership count, and the scrape that both binaries
//! answer `/metrics` with. What is counted goes into process-wide handles (one process is one node or one
//! broker), each an atomic or a small labelled map; a scrape builds a registry over them, adds what the
//! binary counts of its own (the edge's tunnels), and the process's own figures, and writes the text
//! format. docs/operations.md lists every metric; its names and labels are the glossary's.

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::HeaderName;
use axum::http::header::CONTENT_TYPE;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A label set of static names and values: the only kind deskbroker uses, so that counting allocates
/// nothing and no label takes a value from the network.
pub type Labels<const N: usize> = [(&'static str, &'static str); N];

/// A family of histograms, each made with the same buckets.
pub type Histograms<const N: usize> = Family<Labels<N>, Histogram, fn() -> Histogram>;

/// Latency buckets from 0.5 ms to about 16 s, doubling: a Redis command on a LAN takes well under a
/// millisecond, and a deadline of seconds is the other end.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// What the registry and the membership count.
pub struct Metrics {
    /// Registry commands (a pipeline counts once) by command and result.
    pub registry_commands: Family<Labels<2>, Counter>,
    pub registry_latency: Histograms<1>,
    /// Lease renewals by outcome.
    pub lease_renewals: Family<Labels<1>, Counter>,
    /// Nodes whose lease ran at this node's last renewal.
    pub nodes_alive: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    registry_commands: Family::default(),
    registry_latency: Family::new_with_constructor(latency_histogram),
    lease_renewals: Family::default(),
    nodes_alive: Gauge::default(),
});

pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Counts one registry command (or pipeline) that took `took`.
    pub fn registry_command(&self, command: &'static str, result: &'static str, took: Duration) {
        let labels = [("command", command), ("result", result)];
        self.registry_commands.get_or_create(&labels).inc();
        self.registry_latency
            .get_or_create(&[("command", command)])
            .observe(took.as_secs_f64());
    }

    pub fn lease_renewal(&self, outcome: &'static str) {
        self.lease_renewals
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "registry_commands",
            "Registry commands sent (a pipeline counts once), by command and result.",
            self.registry_commands.clone(),
        );
        registry.register_with_unit(
            "registry_command_duration",
            "Time from sending a registry command to its answer, by command.",
            Unit::Seconds,
            self.registry_latency.clone(),
        );
        registry.register(
            "lease_renewals",
            "This node's lease renewals, by outcome.",
            self.lease_renewals.clone(),
        );
        registry.register(
            "nodes_alive",
            "Nodes whose lease ran at this node's last renewal.",
            self.nodes_alive.clone(),
        );
    }
}

/// A `/metrics` answer: the scrape in the OpenMetrics text format (which is what the library writes, and
/// what Prometheus asks for first).
pub fn answer(text: String) -> ([(HeaderName, &'static str); 1], String) {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(CONTENT_TYPE, content_type)], text)
}

/// Writes every metric of the process in Prometheus' text format: deskbroker's own under the
/// `deskbroker_` prefix (those of this crate, and those `add` registers), then the process's.
pub fn scrape(add: impl FnOnce(&mut Registry)) -> String {
    let mut root = Registry::default();
    let ours = root.sub_registry_with_prefix("deskbroker");
    metrics().register(ours);
    add(ours);
    root.register_collector(Box::new(Process));
    let mut text = String::new();
    // Writing into a String cannot fail; a collector's error would leave the scrape short, not wrong.
    let _ = prometheus_client::encoding::text::encode(&mut text, &root);
    text
}

/// Writes a gauge of the process's own: `process_open_fds` and `process_resident_memory_bytes`, read
/// from `/proc` at each scrape (where there is one), as Prometheus' own client libraries name them.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let gauge = ConstGauge::new(fds.count() as i64);
            let metric = encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors.",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        if let Some(bytes) = resident_bytes() {
            let gauge = ConstGauge::new(bytes as i64);
            let metric = encoder.encode_descriptor(
                "process_resident_memory",
                "Resident memory.",
                Some(&Unit::Bytes),
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// `VmRSS` from `/proc/self/status`.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Writes one counter or gauge per label set, under one descriptor: for collectors that read their values
/// at the scrape.
pub fn encode_each<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    counter: bool,
    values: impl IntoIterator<Item = (S, u64)>,
) -> Result<(), std::fmt::Error> {
    let metric_type = match counter {
        true => MetricType::Counter,
        false => MetricType::Gauge,
    };
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in values {
        let metric = family.encode_family(&labels)?;
        match counter {
            true => ConstCounter::new(value).encode(metric)?,
            false => ConstGauge::new(value as i64).encode(metric)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_names_what_was_counted_with_its_labels() {
        metrics().registry_command("HGETALL", "ok", Duration::from_millis(2));
        metrics().lease_renewal("renewed");
        let text = scrape(|_| {});
        assert!(
            text.contains(r#"deskbroker_registry_commands_total{command="HGETALL",result="ok"}"#),
            "{text}"
        );
        assert!(text.contains("deskbroker_registry_command_duration_seconds_bucket"));
        assert!(text.contains(r#"deskbroker_lease_renewals_total{outcome="renewed"}"#));
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_open_fds "));
        assert!(text.ends_with("# EOF\n"));
    }
}
