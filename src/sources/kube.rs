//! The Kubernetes source: `ValidatingPolicy` (Envoy mode only) and
//! `PolicyException` objects of `policies.kyverno.io`, watched cluster-wide
//! with kube-rs (list, then watch; a relist after `410 Gone`; retries with
//! backoff). Objects join the file documents in one set, combined by name as
//! for files (a name defined twice is refused like any broken change).
//!
//! The CRDs come from Kyverno; `deploy/crds/` holds a copy of their schema
//! for clusters without Kyverno, and `deploy/kubernetes/crd-source/rbac.yaml` the ClusterRole.

use super::{rebuild, Sources};
use crate::server::State;
use futures_util::StreamExt as _;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client};
use std::sync::Arc;
use std::time::Duration;

pub const GROUP: &str = "policies.kyverno.io";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("no Kubernetes configuration (in-cluster or kubeconfig): {0}")]
    Config(String),
    #[error("the initial list of {what} did not complete within {timeout:?}: is the CRD installed at {GROUP}/{version}, and may celgate list it? (last error: {last})")]
    Sync {
        what: &'static str,
        version: String,
        timeout: Duration,
        last: String,
    },
}

/// The kinds watched: (kind, plural).
pub const KINDS: [(&str, &str); 2] = [
    ("ValidatingPolicy", "validatingpolicies"),
    ("PolicyException", "policyexceptions"),
];

/// A client from the in-cluster environment or the kubeconfig.
pub async fn default_client() -> Result<Client, KubeError> {
    Client::try_default()
        .await
        .map_err(|e| KubeError::Config(e.to_string()))
}

/// Whether a ValidatingPolicy object is one for celgate (Envoy mode);
/// ordinary admission policies of the cluster are not ours and are left out
/// quietly.
fn wanted(kind: &str, v: &serde_json::Value) -> bool {
    kind != "ValidatingPolicy"
        || v.pointer("/spec/evaluation/mode").and_then(|m| m.as_str()) == Some("Envoy")
}

/// The name an object goes by in the set: `namespace/name` for namespaced
/// objects (PolicyExceptions live in namespaces, and two namespaces may use
/// one name), the plain name otherwise.
fn key(o: &DynamicObject) -> Option<String> {
    let name = o.metadata.name.as_deref()?;
    Some(match o.metadata.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    })
}

fn to_entry(kind: &str, o: &DynamicObject) -> Option<(String, serde_json::Value)> {
    let name = key(o)?;
    let mut v = serde_json::to_value(o).ok()?;
    v["metadata"]["name"] = serde_json::Value::String(name.clone());
    // The API server's bookkeeping is not part of the policy.
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations"));
    }
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    wanted(kind, &v).then_some((name, v))
}

/// Watches both kinds until the task is dropped. Resolves `synced` once both
/// initial lists are in and the set is rebuilt with them.
pub async fn run(
    client: Client,
    version: String,
    sources: Arc<Sources>,
    state: Arc<State>,
    synced: tokio::sync::watch::Sender<Result<(), String>>,
) {
    let mut streams = Vec::new();
    for (kind, plural) in KINDS {
        let gvk = GroupVersionKind::gvk(GROUP, &version, kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let s = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |e| (kind, e));
        streams.push(s.boxed());
    }
    let mut all = futures_util::stream::select_all(streams);
    let mut buffers: [Option<Vec<(String, serde_json::Value)>>; 2] = [None, None];
    let mut listed = [false, false];
    while let Some((kind, event)) = all.next().await {
        let i = usize::from(kind != KINDS[0].0);
        let changed = match event {
            Ok(Event::Init) => {
                buffers[i] = Some(Vec::new());
                false
            }
            Ok(Event::InitApply(o)) => {
                if let (Some(b), Some(e)) = (buffers[i].as_mut(), to_entry(kind, &o)) {
                    b.push(e);
                }
                false
            }
            Ok(Event::InitDone) => {
                let objects = buffers[i].take().unwrap_or_default();
                tracing::info!(kind, objects = objects.len(), "Kubernetes list complete");
                sources.kube_replace(kind, objects);
                listed[i] = true;
                true
            }
            Ok(Event::Apply(o)) => {
                match to_entry(kind, &o) {
                    Some((name, v)) => {
                        tracing::info!(kind, name = %name, "Kubernetes object applied");
                        sources.kube_apply(kind, name, v);
                    }
                    // A policy switched away from Envoy mode is no longer ours.
                    None => {
                        if let Some(name) = key(&o) {
                            sources.kube_delete(kind, &name);
                        }
                    }
                }
                true
            }
            Ok(Event::Delete(o)) => {
                if let Some(name) = key(&o) {
                    tracing::info!(kind, name = %name, "Kubernetes object deleted");
                    sources.kube_delete(kind, &name);
                }
                true
            }
            Err(e) => {
                tracing::warn!(kind, error = %e, "Kubernetes watch error; retrying");
                if !(listed[0] && listed[1]) {
                    let _ = synced.send(Err(e.to_string()));
                }
                false
            }
        };
        if changed && listed[0] && listed[1] {
            let (s, st) = (sources.clone(), state.clone());
            let _ = tokio::task::spawn_blocking(move || rebuild(&st, &s)).await;
            synced.send_if_modified(|v| {
                let first = v.is_err();
                *v = Ok(());
                first
            });
        }
    }
}

/// Starts the watch and waits (at most `timeout`) for the first complete
/// set, so celgate never serves without the cluster's policies.
pub async fn start(
    client: Client,
    version: String,
    sources: Arc<Sources>,
    state: Arc<State>,
    timeout: Duration,
) -> Result<tokio::task::JoinHandle<()>, KubeError> {
    let (tx, mut rx) = tokio::sync::watch::channel(Err("not listed yet".to_owned()));
    let task = tokio::spawn(run(client, version.clone(), sources, state, tx));
    let ok = matches!(
        tokio::time::timeout(timeout, rx.wait_for(|r| r.is_ok())).await,
        Ok(Ok(_))
    );
    match ok {
        true => Ok(task),
        _ => {
            let last = rx.borrow().clone().err().unwrap_or_default();
            task.abort();
            Err(KubeError::Sync {
                what: "ValidatingPolicy and PolicyException objects",
                version,
                timeout,
                last,
            })
        }
    }
}
