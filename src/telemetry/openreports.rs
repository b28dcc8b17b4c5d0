//! `serve --report-kube`: the report written to Kubernetes as OpenReports
//! objects (`openreports.io/v1alpha1`, kind `Report`), one per policy, on an
//! interval, by server-side apply (created on the first write, updated on
//! the next ones). A policy that drops out of the report (removed by a
//! reload, then an hour without counts) has its object deleted; with the
//! pod known (POD_NAME and POD_UID, in the report's namespace) the objects
//! are owned by the pod, so Kubernetes deletes them with it.
//!
//! Each object's `summary` holds the counts since the start, as OpenReports
//! results: `pass` (allowed), `fail` (denied), `warn` (would-be denials of
//! Audit/Warn policies), `error` (evaluation errors, audit ones included),
//! `skip` (skipped, exempted, no result). `results[]` has one entry per
//! outcome that occurred, with the exact counts since the start and over
//! the recent windows in `properties`. Nothing from requests is written.

use super::report::{self, PolicyReport, ReportDoc, FIELDS, WINDOWS};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The field manager of the server-side applies.
pub const MANAGER: &str = "celgate";
/// `source` of the objects and of their results.
pub const SOURCE: &str = "celgate";

#[derive(Debug, thiserror::Error)]
pub enum OpenReportsError {
    #[error("writing Report {name} in namespace {namespace}: {source}")]
    Write {
        name: String,
        namespace: String,
        source: kube::Error,
    },
    #[error("deleting Report {name} in namespace {namespace}: {source}")]
    Delete {
        name: String,
        namespace: String,
        source: kube::Error,
    },
}

/// The OpenReports result of a count field, if it has one (`evaluated` and
/// `shadow_disagreements` are not results of the policy's own).
pub fn result_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "allowed" => "pass",
        "denied" => "fail",
        "audit_deny" => "warn",
        "errors" | "audit_error" => "error",
        "no_result" | "skipped" | "exempted" => "skip",
        _ => return None,
    })
}

/// The API resource written.
pub fn api_resource() -> ApiResource {
    ApiResource {
        group: "openreports.io".into(),
        version: "v1alpha1".into(),
        api_version: "openreports.io/v1alpha1".into(),
        kind: "Report".into(),
        plural: "reports".into(),
    }
}

/// The object name of a policy's report: `celgate-<policy>`, with
/// `-<replica>` when the replica is known (POD_NAME), so replicas do not
/// overwrite each other. Made a valid DNS subdomain; a name that had to be
/// changed gets a short hash of the original, so two policies never share
/// an object.
pub fn object_name(policy: &str, replica: Option<&str>) -> String {
    let raw = match replica {
        Some(r) => format!("celgate-{policy}-{r}"),
        None => format!("celgate-{policy}"),
    };
    let mut name: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name != raw || name.len() > 253 {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(raw.as_bytes());
        let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        name.truncate(240);
        name = format!("{}-{hash}", name.trim_end_matches(['-', '.']));
    }
    name
}

/// Where the objects go and who writes them.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub namespace: String,
    /// The pod's name (POD_NAME): a suffix of every object name, so
    /// replicas do not overwrite each other.
    pub pod: Option<String>,
    /// The pod's UID (POD_UID), given only when the pod is in `namespace`:
    /// the objects are then owned by the pod (a reference across
    /// namespaces would have them garbage-collected at once).
    pub pod_uid: Option<String>,
}

/// The `Report` object of one policy at `now`.
pub fn report_object(p: &PolicyReport, target: &Target, name: &str, now: SystemTime) -> Value {
    let namespace = target.namespace.as_str();
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let timestamp = json!({"seconds": since.as_secs(), "nanos": since.subsec_nanos()});
    let mut summary = json!({"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0});
    let mut results = Vec::new();
    for (i, field) in FIELDS.iter().enumerate() {
        let Some(result) = result_of(field) else {
            continue;
        };
        let n = p.since_start.0[i];
        if n == 0 {
            continue;
        }
        summary[result] = json!(summary[result].as_u64().unwrap_or(0) + n);
        let mut properties = serde_json::Map::new();
        properties.insert("outcome".into(), json!(field));
        properties.insert("since_start".into(), json!(n.to_string()));
        for (window, _) in WINDOWS {
            let c = p.window(window).map_or(0, |c| c.0[i]);
            properties.insert(window.into(), json!(c.to_string()));
        }
        results.push(json!({
            "source": SOURCE,
            "policy": p.name,
            "result": result,
            "scored": true,
            "timestamp": timestamp,
            "message": format!("{}: {n} since start", describe(field)),
            "properties": properties,
        }));
    }
    let mut obj = json!({
        "apiVersion": "openreports.io/v1alpha1",
        "kind": "Report",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGER},
            "annotations": {
                "celgate.dev/policy": p.name,
                "celgate.dev/served": p.served.to_string(),
            },
        },
        "source": SOURCE,
        "summary": summary,
        "results": results,
    });
    if let (Some(pod), Some(uid)) = (&target.pod, &target.pod_uid) {
        obj["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod,
            "uid": uid,
        }]);
    }
    obj
}

fn describe(field: &str) -> &'static str {
    match field {
        "allowed" => "requests allowed",
        "denied" => "requests denied",
        "no_result" => "evaluations without a result",
        "skipped" => "requests skipped by matchConditions",
        "exempted" => "requests exempted by a PolicyException",
        "errors" => "evaluation errors",
        "audit_deny" => "would-be denials (audit)",
        "audit_error" => "evaluation errors (audit)",
        _ => "outcomes",
    }
}

/// Writes the report's policies to one namespace and remembers what it
/// wrote, to delete the objects of policies that drop out.
pub struct Writer {
    api: Api<DynamicObject>,
    target: Target,
    written: BTreeSet<String>,
}

impl Writer {
    pub fn new(client: kube::Client, target: Target) -> Writer {
        Writer {
            api: Api::namespaced_with(client, &target.namespace, &api_resource()),
            target,
            written: BTreeSet::new(),
        }
    }

    /// Applies one object per policy of `doc`, then deletes those of
    /// policies no longer in it. Every object is tried; the first error is
    /// returned.
    pub async fn write(&mut self, doc: &ReportDoc) -> Result<usize, OpenReportsError> {
        let now = SystemTime::now();
        let mut first_error = None;
        let mut current = BTreeSet::new();
        let params = PatchParams::apply(MANAGER).force();
        // A policy of the shadow set only has no outcomes of its own.
        for p in doc.policies.iter().filter(|p| p.served || !p.shadow) {
            let name = object_name(&p.name, self.target.pod.as_deref());
            let obj = report_object(p, &self.target, &name, now);
            current.insert(name.clone());
            match self.api.patch(&name, &params, &Patch::Apply(&obj)).await {
                Ok(_) => {
                    self.written.insert(name);
                }
                Err(source) => {
                    first_error.get_or_insert(OpenReportsError::Write {
                        name,
                        namespace: self.target.namespace.clone(),
                        source,
                    });
                }
            }
        }
        let gone: Vec<String> = self.written.difference(&current).cloned().collect();
        for name in gone {
            match self.api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    self.written.remove(&name);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    self.written.remove(&name);
                }
                Err(source) => {
                    first_error.get_or_insert(OpenReportsError::Delete {
                        name,
                        namespace: self.target.namespace.clone(),
                        source,
                    });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(current.len()),
        }
    }
}

/// Writes the report every `interval` (the first time one interval after
/// the start) for as long as the runtime runs; failures are logged and
/// retried on the next interval.
pub fn spawn(
    client: kube::Client,
    target: Target,
    interval: Duration,
    state: Arc<crate::server::State>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let namespace = target.namespace.clone();
        let mut writer = Writer::new(client, target);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let doc = report::view(&state);
            match writer.write(&doc).await {
                Ok(n) => {
                    tracing::debug!(reports = n, namespace = %namespace, "OpenReports written")
                }
                Err(e) => tracing::warn!(error = %e, "OpenReports: the report was not written"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_dns_subdomains_and_distinct() {
        assert_eq!(
            object_name("require-api-key", None),
            "celgate-require-api-key"
        );
        assert_eq!(
            object_name("require-api-key", Some("celgate-7d9f-x2")),
            "celgate-require-api-key-celgate-7d9f-x2"
        );
        let a = object_name("My_Policy", None);
        let b = object_name("my-policy", None);
        assert_ne!(a, b);
        assert!(a.starts_with("celgate-my-policy-"), "{a}");
        let long = object_name(&"x".repeat(400), None);
        assert!(long.len() <= 253, "{}", long.len());
    }

    #[test]
    fn every_outcome_field_has_a_result() {
        for f in FIELDS {
            let expected = !matches!(f, "evaluated" | "shadow_disagreements");
            assert_eq!(result_of(f).is_some(), expected, "{f}");
        }
    }
}
