//! Reading the rendered objects as a kubelet would: a workload's pod template, its containers, their
//! ports by name or number, label selectors, and which container runs which of our binaries.

use serde_json::Value;

use crate::Rendered;

/// The binaries of the image (deploy/Dockerfile puts both on PATH).
pub const BINARIES: [&str; 2] = ["deskbroker-edge", "deskbroker-broker"];

/// A workload's pod template.
pub fn template(workload: &Value) -> &Value {
    &workload["spec"]["template"]
}

pub fn containers(workload: &Value) -> &[Value] {
    template(workload)["spec"]["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The binary a container runs, when it is one of ours: the manifests name it as the command, so they
/// do not depend on the image's entrypoint.
pub fn binary(container: &Value) -> Option<&'static str> {
    let command = container["command"][0].as_str()?;
    BINARIES.into_iter().find(|binary| *binary == command)
}

/// The containers of every workload that run one of our binaries, with their workload and binary.
pub fn ours(rendered: &Rendered) -> Vec<(&Value, &Value, &'static str)> {
    let mut found = Vec::new();
    for workload in rendered.workloads() {
        for container in containers(workload) {
            if let Some(binary) = binary(container) {
                found.push((workload, container, binary));
            }
        }
    }
    found
}

/// Whether a selector (`matchLabels` only: the manifests use nothing else) picks pods with `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let match_labels =
        if selector.get("matchLabels").is_some() || selector.get("matchExpressions").is_some() {
            assert!(
                selector.get("matchExpressions").is_none(),
                "matchExpressions are not read here: {selector}"
            );
            &selector["matchLabels"]
        } else {
            // A Service's selector is the map itself.
            selector
        };
    let Some(wanted) = match_labels.as_object() else {
        return true;
    };
    wanted
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// The workloads whose pods `selector` picks.
pub fn selected<'a>(
    workloads: impl Iterator<Item = &'a Value>,
    selector: &Value,
) -> Vec<&'a Value> {
    workloads
        .filter(|workload| selects(selector, &template(workload)["metadata"]["labels"]))
        .collect()
}

/// A container port of the workload's pods, given by name or number: its number, if it has it.
pub fn container_port(workload: &Value, port: &Value) -> Option<u64> {
    containers(workload)
        .iter()
        .flat_map(|container| container["ports"].as_array().into_iter().flatten())
        .find(|candidate| match port {
            Value::String(name) => candidate["name"] == name.as_str(),
            _ => candidate["containerPort"] == *port,
        })
        .and_then(|candidate| candidate["containerPort"].as_u64())
}

/// A container's env entry by name.
pub fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|entry| entry["name"] == name)
}

/// The port of a `host:port` listen address.
pub fn listen_port(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("not a host:port address: {addr}"))
}

/// A `humantime` duration (`10s`), in seconds.
pub fn seconds(duration: &str) -> u64 {
    humantime::parse_duration(duration)
        .unwrap_or_else(|error| panic!("{duration}: {error}"))
        .as_secs()
}
