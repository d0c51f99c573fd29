//! Every rendered object against the Kubernetes schemas, strictly (no field the schema does not know),
//! for the oldest version the manifests support (1.30: the preStop `sleep` action) and the kubectl here.

use std::process::Command;

use crate::{KUSTOMIZATIONS, render_yaml, tool};

/// The Kubernetes versions the manifests are validated for.
const VERSIONS: [&str; 2] = ["1.30.0", "1.32.0"];

#[test]
fn the_base_and_the_overlay_render_and_pass_the_schemas() {
    let Some(validate) = tool("kubernetes-validate") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for kustomization in KUSTOMIZATIONS {
        let Some(yaml) = render_yaml(kustomization) else {
            return;
        };
        let file = dir.path().join(kustomization.replace('/', "-") + ".yaml");
        std::fs::write(&file, &yaml).unwrap();
        let objects = yaml.matches("\nkind: ").count() + usize::from(yaml.starts_with("kind: "));
        for version in VERSIONS {
            let output = Command::new(&validate)
                .args(["--strict", "--kubernetes-version", version])
                .arg(&file)
                .output()
                .expect("running kubernetes-validate");
            let report = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{kustomization} against Kubernetes {version}:\n{report}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            // One "passed" line per object: none was skipped for want of a schema.
            let passed = report
                .lines()
                .filter(|line| line.contains(" passed "))
                .count();
            assert!(
                passed == objects && objects > 0,
                "{kustomization} against {version}: {passed} of {objects} objects passed:\n{report}"
            );
        }
    }
}
