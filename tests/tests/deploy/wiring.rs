//! The objects fit together and follow the house rules, checked as data: what a cluster would only show
//! by failing (a Service on a port no pod has, a grace period shorter than the drain).

use crate::manifests::{
    container_port, containers, env, listen_port, ours, seconds, selected, template,
};
use crate::{KUSTOMIZATIONS, OVERLAY, Rendered, id, render};

/// What a stopping edge takes after its drain timeout at most: 2 s to close what is left, 5 s for the
/// listeners and the lease, and 1 s to have forwarded reads released (docs/lifecycle.md).
const EDGE_STOP_AFTER_DRAIN: u64 = 8;
/// What the broker gives requests in progress when it stops (docs/lifecycle.md).
const BROKER_STOP: u64 = 5;
/// The edge's drain timeout and grace when the manifests do not set them (docs/operations.md's flags).
const DEFAULT_DRAIN: &str = "10s";
const DEFAULT_DRAIN_GRACE: &str = "2s";
/// The UID the image runs as.
const UID: u64 = 65532;

fn each(check: impl Fn(&Rendered)) {
    for kustomization in KUSTOMIZATIONS {
        let Some(rendered) = render(kustomization) else {
            return;
        };
        check(&rendered);
    }
}

#[test]
fn every_pod_runs_unprivileged_on_a_read_only_root() {
    each(|rendered| {
        for workload in rendered.workloads() {
            let pod = &template(workload)["spec"]["securityContext"];
            assert_eq!(pod["runAsNonRoot"], true, "{}", id(workload));
            for container in containers(workload) {
                let at = format!("{} container {}", id(workload), container["name"]);
                let security = &container["securityContext"];
                assert_eq!(security["allowPrivilegeEscalation"], false, "{at}");
                assert_eq!(security["readOnlyRootFilesystem"], true, "{at}");
                assert_eq!(
                    security["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{at}"
                );
                assert!(security["capabilities"]["add"].is_null(), "{at}");
                let seccomp = security["seccompProfile"]["type"]
                    .as_str()
                    .or(pod["seccompProfile"]["type"].as_str());
                assert_eq!(seccomp, Some("RuntimeDefault"), "{at}");
                for resource in ["cpu", "memory"] {
                    for bound in ["requests", "limits"] {
                        assert!(
                            container["resources"][bound][resource].is_string(),
                            "{at}: no {bound}.{resource}"
                        );
                    }
                }
            }
        }
        for (workload, container, _) in ours(rendered) {
            let uid = container["securityContext"]["runAsUser"]
                .as_u64()
                .or(template(workload)["spec"]["securityContext"]["runAsUser"].as_u64());
            assert_eq!(uid, Some(UID), "{}", id(workload));
        }
    });
}

#[test]
fn the_grace_period_covers_the_pre_stop_sleep_and_the_drain() {
    each(|rendered| {
        let found = ours(rendered);
        assert_eq!(found.len(), 2, "one edge and one broker container");
        for (workload, container, binary) in found {
            let grace = template(workload)["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30);
            let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .unwrap_or_else(|| panic!("{}: no preStop sleep", id(workload)));
            let stop = match binary {
                "deskbroker-edge" => {
                    let set = |name, default| {
                        let value = env(container, name).and_then(|entry| entry["value"].as_str());
                        seconds(value.unwrap_or(default))
                    };
                    set("DESKBROKER_DRAIN_GRACE", DEFAULT_DRAIN_GRACE)
                        + set("DESKBROKER_DRAIN_TIMEOUT", DEFAULT_DRAIN)
                        + EDGE_STOP_AFTER_DRAIN
                }
                _ => BROKER_STOP,
            };
            assert!(
                grace > pre_stop + stop,
                "{}: a grace period of {grace} s does not cover {pre_stop} s of preStop and {stop} s of stop",
                id(workload)
            );
        }
    });
}

#[test]
fn an_edge_is_named_after_its_pod_and_advertises_its_pod_ip() {
    each(|rendered| {
        let (workload, edge, _) = ours(rendered)
            .into_iter()
            .find(|(_, _, binary)| *binary == "deskbroker-edge")
            .expect("an edge");
        let field = |name: &str| {
            env(edge, name).map(|entry| entry["valueFrom"]["fieldRef"]["fieldPath"].clone())
        };
        assert_eq!(field("DESKBROKER_NODE_ID"), Some("metadata.name".into()));
        assert_eq!(field("POD_IP"), Some("status.podIP".into()));
        let peer = container_port(workload, &"peer".into()).expect("a container port named peer");
        let value = |name: &str| {
            env(edge, name)
                .and_then(|entry| entry["value"].as_str())
                .unwrap_or_default()
        };
        assert_eq!(value("DESKBROKER_PEER_LISTEN"), format!("0.0.0.0:{peer}"));
        assert_eq!(
            value("DESKBROKER_ADVERTISE"),
            format!("http://$(POD_IP):{peer}")
        );
        let http = container_port(workload, &"http".into()).expect("a container port named http");
        assert_eq!(listen_port(value("DESKBROKER_LISTEN")), http);
        // $(POD_IP) is expanded only from variables defined before it.
        let names: Vec<_> = edge["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| &entry["name"])
            .collect();
        let position = |name: &str| names.iter().position(|entry| *entry == name).unwrap();
        assert!(position("POD_IP") < position("DESKBROKER_ADVERTISE"));
    });
}

#[test]
fn services_probes_and_policies_name_ports_the_pods_have() {
    each(|rendered| {
        for service in rendered.of_kind("Service") {
            let pods = selected(rendered.workloads(), &service["spec"]["selector"]);
            if service["metadata"]["name"] == "deskbroker-redis" && pods.is_empty() {
                continue;
            }
            assert!(!pods.is_empty(), "{} selects no pods", id(service));
            for port in service["spec"]["ports"].as_array().unwrap() {
                for pod in &pods {
                    assert!(
                        container_port(pod, &port["targetPort"]).is_some(),
                        "{}: {} has no port {}",
                        id(service),
                        id(pod),
                        port["targetPort"]
                    );
                }
            }
        }
        for workload in rendered.workloads() {
            for container in containers(workload) {
                for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                    let probe = &container[probe];
                    for action in ["httpGet", "tcpSocket"] {
                        let port = &probe[action]["port"];
                        if !port.is_null() {
                            assert!(
                                container_port(workload, port).is_some(),
                                "{}: probe port {port}",
                                id(workload)
                            );
                        }
                    }
                }
            }
        }
        for policy in rendered.of_kind("NetworkPolicy") {
            let pods = selected(rendered.workloads(), &policy["spec"]["podSelector"]);
            // The base's Redis policy selects the platform's Redis, which only the overlay has.
            if pods.is_empty() && policy["metadata"]["name"] == "deskbroker-redis" {
                continue;
            }
            assert!(!pods.is_empty(), "{} selects no pods", id(policy));
            for rule in policy["spec"]["ingress"].as_array().unwrap() {
                for port in rule["ports"].as_array().into_iter().flatten() {
                    for pod in &pods {
                        assert!(
                            container_port(pod, &port["port"]).is_some(),
                            "{}: {} has no port {}",
                            id(policy),
                            id(pod),
                            port["port"]
                        );
                    }
                }
                // Every peer named by a rule is a pod of these manifests (or the overlay's Redis).
                for peer in rule["from"].as_array().into_iter().flatten() {
                    if let Some(selector) = peer.get("podSelector") {
                        assert!(
                            peer.get("namespaceSelector").is_none(),
                            "{}: pods of any namespace",
                            id(policy)
                        );
                        let matched = selected(rendered.workloads(), selector);
                        assert!(
                            !matched.is_empty() || policy["metadata"]["name"] == "deskbroker-redis",
                            "{}: {selector} matches nothing",
                            id(policy)
                        );
                    }
                }
            }
        }
    });
}

#[test]
fn the_peer_port_admits_only_edges_and_the_broker() {
    each(|rendered| {
        let policy = rendered
            .get("NetworkPolicy", "deskbroker-edge")
            .expect("the edges' policy");
        let edge = rendered.get("Deployment", "deskbroker-edge").unwrap();
        let peer = container_port(edge, &"peer".into()).unwrap();
        for rule in policy["spec"]["ingress"].as_array().unwrap() {
            let ports: Vec<u64> = rule["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|port| container_port(edge, &port["port"]))
                .collect();
            if !ports.is_empty() && !ports.contains(&peer) {
                continue;
            }
            let from = rule["from"]
                .as_array()
                .expect("the peer port's rule names who may connect");
            for peer in from {
                let matched = selected(rendered.workloads(), &peer["podSelector"]);
                let names: Vec<_> = matched
                    .iter()
                    .map(|workload| &workload["metadata"]["name"])
                    .collect();
                assert!(
                    !names.is_empty()
                        && names
                            .iter()
                            .all(|name| *name == "deskbroker-edge" || *name == "deskbroker-broker"),
                    "the peer port admits {names:?}"
                );
            }
        }
    });
}

#[test]
fn the_autoscaler_and_the_budgets_name_what_exists() {
    each(|rendered| {
        for hpa in rendered.of_kind("HorizontalPodAutoscaler") {
            let target = &hpa["spec"]["scaleTargetRef"];
            let workload = rendered
                .get(
                    target["kind"].as_str().unwrap(),
                    target["name"].as_str().unwrap(),
                )
                .unwrap_or_else(|| panic!("{}: no {target}", id(hpa)));
            // A count in the workload would be applied again at every `kubectl apply`, undoing the
            // autoscaler's and ending the tunnels of the edges it removes.
            assert!(
                workload["spec"]["replicas"].is_null(),
                "{} sets replicas, which {} owns",
                id(workload),
                id(hpa)
            );
            let metric = &hpa["spec"]["metrics"][0]["resource"];
            assert_eq!(metric["name"], "cpu");
            for container in containers(workload) {
                assert!(
                    container["resources"]["requests"]["cpu"].is_string(),
                    "CPU utilization needs a CPU request"
                );
            }
        }
        for budget in rendered.of_kind("PodDisruptionBudget") {
            let pods = selected(rendered.workloads(), &budget["spec"]["selector"]);
            assert_eq!(
                pods.len(),
                1,
                "{} selects {} workloads",
                id(budget),
                pods.len()
            );
        }
    });
}

#[test]
fn the_ingress_keeps_websockets_and_streamed_reads_open() {
    let Some(rendered) = render(OVERLAY) else {
        return;
    };
    let ingress = rendered.of_kind("Ingress").next().expect("an Ingress");
    let annotation = |name: &str| {
        ingress["metadata"]["annotations"][format!("nginx.ingress.kubernetes.io/{name}")]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} annotation"))
            .to_owned()
    };
    for timeout in ["proxy-read-timeout", "proxy-send-timeout"] {
        assert!(
            annotation(timeout).parse::<u64>().unwrap() >= 3600,
            "{timeout}"
        );
    }
    assert_eq!(annotation("proxy-buffering"), "off");
    assert_eq!(annotation("proxy-request-buffering"), "off");
    for rule in ingress["spec"]["rules"].as_array().unwrap() {
        for path in rule["http"]["paths"].as_array().unwrap() {
            let backend = &path["backend"]["service"];
            let service = rendered
                .get("Service", backend["name"].as_str().unwrap())
                .expect("the Ingress's Service");
            let has_port = service["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|port| {
                    port["name"] == backend["port"]["name"]
                        || port["port"] == backend["port"]["number"]
                });
            assert!(has_port, "{}: no port {}", id(service), backend["port"]);
        }
    }
}

/// Every Secret and ConfigMap the overlay's pods refer to is in the overlay, with the keys they read.
#[test]
fn the_overlay_has_every_secret_and_config_map_it_refers_to() {
    let Some(rendered) = render(OVERLAY) else {
        return;
    };
    for workload in rendered.workloads() {
        for container in containers(workload) {
            for entry in container["env"].as_array().into_iter().flatten() {
                for (reference, kind) in
                    [("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")]
                {
                    let reference = &entry["valueFrom"][reference];
                    if reference.is_null() {
                        continue;
                    }
                    let object = rendered
                        .get(kind, reference["name"].as_str().unwrap())
                        .unwrap_or_else(|| {
                            panic!("{}: no {kind} {}", id(workload), reference["name"])
                        });
                    let key = reference["key"].as_str().unwrap();
                    assert!(
                        !object["data"][key].is_null(),
                        "{}: {kind} has no {key}",
                        id(workload)
                    );
                }
            }
        }
        for volume in template(workload)["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(name) = volume["configMap"]["name"].as_str() {
                assert!(
                    rendered.get("ConfigMap", name).is_some(),
                    "{}: no ConfigMap {name}",
                    id(workload)
                );
            }
        }
    }
}
