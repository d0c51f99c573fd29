//! The Kubernetes manifests (deploy/kubernetes) held against the Kubernetes schemas and against the
//! binaries: the kustomize base and the example overlay render with `kubectl kustomize`; every rendered
//! object passes `kubernetes-validate --strict`; the objects fit together (Services, probes, policies,
//! autoscaler and budgets name ports and pods that exist; the grace period covers the drain); and the
//! real `deskbroker-edge` and `deskbroker-broker`, started with the overlay's environment and arguments
//! against a real Redis, read every variable set, parse the arguments and answer every probe.
//!
//! No cluster runs here: what a cluster adds (scheduling, the downward API's values, the network
//! policies' enforcement, an Ingress controller) is not run, only checked as data.
//!
//! `kubectl` and `kubernetes-validate` (scripts/install-test-deps puts it in
//! target/kubernetes-validate/venv, whose Python also turns the rendered YAML into JSON) are required in
//! CI; elsewhere a missing one skips with the hint.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

mod binaries;
mod manifests;
mod schemas;
mod wiring;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The kustomizations a user applies or builds on.
pub const KUSTOMIZATIONS: [&str; 2] = ["base", "overlays/example"];

/// The overlay, complete enough to run: it has the Secrets and the ConfigMap the base refers to.
pub const OVERLAY: &str = "overlays/example";

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// The venv scripts/install-test-deps makes for kubernetes-validate.
fn venv_bin(program: &str) -> PathBuf {
    repo()
        .join("target/kubernetes-validate/venv/bin")
        .join(program)
}

/// A tool the deploy tests need: its path, or `None` (outside CI) when it is missing.
pub fn tool(program: &str) -> Option<PathBuf> {
    let path = match program {
        "kubectl" => std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(program))
                .find(|path| path.exists())
        }),
        _ => Some(venv_bin(program)).filter(|path| path.exists()),
    };
    if path.is_none() {
        let hint = format!(
            "{program} not found: scripts/install-test-deps installs kubernetes-validate; kubectl from \
             https://kubernetes.io/docs/tasks/tools/"
        );
        assert!(std::env::var_os("CI").is_none(), "{hint}");
        eprintln!("skipping: {hint}");
    }
    path
}

/// `kubectl kustomize` of one kustomization, as YAML; `None` when a tool is missing outside CI.
pub fn render_yaml(kustomization: &str) -> Option<String> {
    let kubectl = tool("kubectl")?;
    let dir = repo().join("deploy/kubernetes").join(kustomization);
    let output = Command::new(kubectl)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("running kubectl");
    assert!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).expect("YAML is UTF-8"))
}

/// The rendered objects of one kustomization.
pub struct Rendered {
    pub objects: Vec<Value>,
}

/// Renders `kustomization` and reads the objects; `None` when a tool is missing outside CI.
pub fn render(kustomization: &str) -> Option<Rendered> {
    let yaml = render_yaml(kustomization)?;
    let python = tool("python3")?;
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running the venv's python3");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "YAML to JSON failed");
    let objects: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(!objects.is_empty(), "{kustomization} renders nothing");
    Some(Rendered { objects })
}

impl Rendered {
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |object| object["kind"] == kind)
    }

    pub fn get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
    }

    /// Deployments and StatefulSets: what runs pods.
    pub fn workloads(&self) -> impl Iterator<Item = &Value> {
        self.objects
            .iter()
            .filter(|object| object["kind"] == "Deployment" || object["kind"] == "StatefulSet")
    }
}

/// An object's `kind/name`, for messages.
pub fn id(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}
