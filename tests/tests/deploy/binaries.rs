//! The manifests held against the real binaries: every `DESKBROKER_*` variable they set is one the
//! binary reads (its `--help` lists them), and each binary, started with the overlay's command,
//! arguments and environment (its Secrets and ConfigMaps resolved as the kubelet would) against a real
//! Redis, starts, and answers every probe on the port the probe names.
//!
//! What a pod has and this machine has not is stood in for, and only that: the downward API's pod name
//! and IP (`<workload>-test`, 127.0.0.1), the listen addresses (0.0.0.0:<port> becomes 127.0.0.1:0, and
//! the probes' ports are found through the container port the address names), the Redis URL (the test's
//! Redis), and the paths of mounted volumes and of the image (under a temporary directory).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command as StdCommand;

use base64::Engine;
use deskbroker_tests::process::{Process, binary as built};
use deskbroker_tests::redis::Redis;
use serde_json::Value;
use tokio::process::Command;

use crate::manifests::{container_port, listen_port, ours, template};
use crate::{KUSTOMIZATIONS, OVERLAY, Rendered, id, render};

/// Paths the image holds (deploy/Dockerfile): the built web page.
const IMAGE_PATHS: [&str; 1] = ["/usr/share/deskbroker/web"];

/// The variables that are listen addresses, and the message each binary logs with the address bound.
const LISTENERS: [(&str, &str); 4] = [
    ("DESKBROKER_LISTEN", "listening"),
    ("DESKBROKER_PEER_LISTEN", "peer listening"),
    ("DESKBROKER_OPS_LISTEN", "ops listening"),
    ("DESKBROKER_BROKER_LISTEN", "listening"),
];

/// The `[env: NAME]` variables a binary's `--help` lists.
fn variables(binary: &str) -> Vec<String> {
    let output = StdCommand::new(built(binary))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success(), "{binary} --help");
    String::from_utf8(output.stdout)
        .unwrap()
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn every_variable_the_manifests_set_is_one_the_binary_reads() {
    for kustomization in KUSTOMIZATIONS {
        let Some(rendered) = render(kustomization) else {
            return;
        };
        for (workload, container, binary) in ours(&rendered) {
            let known = variables(binary);
            assert!(
                known.contains(&"DESKBROKER_LOG".to_owned()),
                "{binary} --help lists no variables: {known:?}"
            );
            for entry in container["env"].as_array().into_iter().flatten() {
                let name = entry["name"].as_str().unwrap();
                if name.starts_with("DESKBROKER_") {
                    assert!(
                        known.iter().any(|known| known == name),
                        "{kustomization}: {} sets {name}, which {binary} does not read",
                        id(workload)
                    );
                }
            }
        }
    }
}

/// Expands `$(NAME)` from the variables defined so far, as the kubelet does (an unknown one stays).
fn expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = value.to_owned();
    for (name, value) in defined {
        out = out.replace(&format!("$({name})"), value);
    }
    out
}

/// A pod's container as it would run here: its environment and arguments, with the stand-ins above.
struct Pod {
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// Container port → the variable whose listener serves it.
    listeners: HashMap<u64, &'static str>,
}

impl Pod {
    fn new(
        rendered: &Rendered,
        workload: &Value,
        container: &Value,
        redis: &str,
        root: &Path,
    ) -> Pod {
        let mounts = mount(rendered, workload, container, root);
        let local = |value: &str| -> String {
            let under = |prefix: &str| value == prefix || value.starts_with(&format!("{prefix}/"));
            let mut prefixes = mounts.iter().map(String::as_str).chain(IMAGE_PATHS);
            if prefixes.any(under) {
                format!("{}{value}", root.display())
            } else {
                value.to_owned()
            }
        };
        let mut env = Vec::new();
        let mut listeners = HashMap::new();
        for entry in container["env"].as_array().into_iter().flatten() {
            let name = entry["name"].as_str().unwrap().to_owned();
            let value = match entry["value"].as_str() {
                Some(value) => expand(value, &env),
                None => from(rendered, workload, &entry["valueFrom"]),
            };
            let value = if let Some((listener, _)) =
                LISTENERS.iter().find(|(listener, _)| *listener == name)
            {
                assert!(
                    value.starts_with("0.0.0.0:"),
                    "{name}={value}: a pod listens on all its addresses"
                );
                listeners.insert(listen_port(&value), *listener);
                "127.0.0.1:0".to_owned()
            } else if name == "DESKBROKER_REDIS_URL" {
                assert!(
                    value.starts_with("redis://") || value.starts_with("redis+cluster://"),
                    "{value}"
                );
                redis.to_owned()
            } else {
                local(&value)
            };
            env.push((name, value));
        }
        let args = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|arg| local(&expand(arg.as_str().unwrap(), &env)))
            .collect();
        Pod {
            env,
            args,
            listeners,
        }
    }
}

/// The value of an env entry's `valueFrom`.
fn from(rendered: &Rendered, workload: &Value, source: &Value) -> String {
    if let Some(field) = source["fieldRef"]["fieldPath"].as_str() {
        return match field {
            "metadata.name" => format!("{}-test", workload["metadata"]["name"].as_str().unwrap()),
            "status.podIP" => "127.0.0.1".to_owned(),
            other => panic!("{}: no stand-in for the field {other}", id(workload)),
        };
    }
    for (reference, kind) in [("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")] {
        let reference = &source[reference];
        if reference.is_null() {
            continue;
        }
        let object = rendered
            .get(kind, reference["name"].as_str().unwrap())
            .expect("referred to");
        let data = object["data"][reference["key"].as_str().unwrap()]
            .as_str()
            .expect("the key");
        return if kind == "Secret" {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap(),
            )
            .unwrap()
        } else {
            data.to_owned()
        };
    }
    panic!("{}: no stand-in for {source}", id(workload))
}

/// Writes the container's ConfigMap volumes under `root`, and the image's paths; returns the mount paths.
fn mount(rendered: &Rendered, workload: &Value, container: &Value, root: &Path) -> Vec<String> {
    let volumes = template(workload)["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut paths = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let path = mount["mountPath"].as_str().unwrap();
        let volume = volumes
            .iter()
            .find(|volume| volume["name"] == mount["name"])
            .expect("the volume");
        let name = volume["configMap"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: only ConfigMap volumes are stood in for", id(workload)));
        let dir = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        let config_map = rendered.get("ConfigMap", name).expect("the ConfigMap");
        for (key, value) in config_map["data"].as_object().unwrap() {
            std::fs::write(dir.join(key), value.as_str().unwrap()).unwrap();
        }
        paths.push(path.to_owned());
    }
    for path in IMAGE_PATHS {
        let dir = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("index.html"),
            "<!doctype html><title>deskbroker</title>",
        )
        .unwrap();
    }
    paths
}

#[tokio::test]
async fn each_binary_starts_with_the_overlays_environment_and_answers_its_probes() {
    let Some(rendered) = render(OVERLAY) else {
        return;
    };
    let redis = Redis::start().await.expect("redis-server starts");
    let found = ours(&rendered);
    assert_eq!(found.len(), 2, "the edge and the broker");
    for (workload, container, binary) in found {
        let root = tempfile::tempdir().unwrap();
        let pod = Pod::new(&rendered, workload, container, &redis.url(), root.path());
        let mut command = Command::new(built(binary));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(pod.env.iter().map(|(name, value)| (name, value)))
            .args(&pod.args);
        let (mut process, _) = Process::start(command, |line| {
            let event: Value = serde_json::from_str(line).ok()?;
            (event["message"] == "listening").then(|| event["addr"].as_str()?.parse().ok())?
        })
        .await
        .unwrap_or_else(|error| panic!("{}: {binary} did not start: {error:#}", id(workload)));
        let bound = bound(&process.logs());
        let addr = |port: &Value| -> SocketAddr {
            let number = container_port(workload, port)
                .unwrap_or_else(|| panic!("no container port {port}"));
            let listener = pod.listeners.get(&number).unwrap_or_else(|| {
                panic!(
                    "{}: {binary} listens on nothing at container port {number}",
                    id(workload)
                )
            });
            let message = LISTENERS
                .iter()
                .find(|(name, _)| name == listener)
                .unwrap()
                .1;
            bound[message]
        };
        let mut probed = 0;
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            let probe = &container[probe];
            if let Some(path) = probe["httpGet"]["path"].as_str() {
                let url = format!("http://{}{path}", addr(&probe["httpGet"]["port"]));
                let response = reqwest::get(&url)
                    .await
                    .unwrap_or_else(|error| panic!("{url}: {error}"));
                assert_eq!(response.status(), 200, "{}: {url}", id(workload));
                probed += 1;
            }
            if !probe["tcpSocket"].is_null() {
                let target = addr(&probe["tcpSocket"]["port"]);
                tokio::net::TcpStream::connect(target)
                    .await
                    .unwrap_or_else(|error| panic!("{target}: {error}"));
                probed += 1;
            }
        }
        assert!(
            probed >= 2,
            "{}: readiness and liveness probes",
            id(workload)
        );
        let status = process.stop().await.unwrap();
        assert!(
            status.success(),
            "{}: {binary} stopped with {status}:\n{}",
            id(workload),
            process.logs()
        );
    }
}

/// The addresses a process logged as bound, by message (`listening`, `peer listening`).
fn bound(logs: &str) -> HashMap<String, SocketAddr> {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|event| {
            Some((
                event["message"].as_str()?.to_owned(),
                event["addr"].as_str()?.parse().ok()?,
            ))
        })
        .collect()
}
