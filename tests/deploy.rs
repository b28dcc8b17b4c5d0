//! Static checks of what ships under `deploy/` (no Kubernetes API server runs
//! on the build machines): every document parses, names its kind, and the
//! ClusterRole grants exactly what the Kubernetes source watches.

use celgate::sources::kube::{GROUP, KINDS};
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;

fn documents(file: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn rbac_grants_read_access_to_the_watched_resources_only() {
    let docs = documents("deploy/kubernetes/crd-source/rbac.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ClusterRole", "ClusterRoleBinding"]);
    // The ServiceAccount is the base's.
    let sa = &documents("deploy/kubernetes/base/serviceaccount.yaml")[0];
    let role = &docs[0];
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["apiGroups"], serde_json::json!([GROUP]));
    let plurals: Vec<&str> = KINDS.iter().map(|(_, p)| *p).collect();
    assert_eq!(rules[0]["resources"], serde_json::json!(plurals));
    assert_eq!(
        rules[0]["verbs"],
        serde_json::json!(["get", "list", "watch"])
    );
    let binding = &docs[1];
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    let kustomization = &documents("deploy/kubernetes/base/kustomization.yaml")[0];
    assert_eq!(
        binding["subjects"][0]["namespace"],
        kustomization["namespace"]
    );
}

#[test]
fn crd_copy_defines_both_kinds_with_one_storage_version() {
    let docs = documents("deploy/crds/policies.kyverno.io.yaml");
    assert_eq!(docs.len(), 2);
    for (doc, (kind, plural)) in docs.iter().zip(KINDS) {
        assert_eq!(doc["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(doc["kind"], "CustomResourceDefinition");
        assert_eq!(doc["metadata"]["name"], format!("{plural}.{GROUP}"));
        assert_eq!(doc["spec"]["group"], GROUP);
        assert_eq!(doc["spec"]["names"]["kind"], kind);
        assert_eq!(doc["spec"]["names"]["plural"], plural);
        let versions = doc["spec"]["versions"].as_array().unwrap();
        let served: Vec<&str> = versions
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(
            served.contains(&"v1alpha1"),
            "the default --kube-api-version is served"
        );
        assert_eq!(versions.iter().filter(|v| v["storage"] == true).count(), 1);
        for v in versions {
            let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
            assert_eq!(spec["type"], "object");
        }
    }
}
