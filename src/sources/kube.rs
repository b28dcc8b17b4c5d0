//! The Kubernetes source: `ValidatingPolicy` (Envoy mode only) and
//! `PolicyException` objects of `policies.kyverno.io`, watched cluster-wide
//! with kube-rs (list, then watch; a relist after `410 Gone`; retries with
//! backoff).
//!
//! A cluster is shared, so one object must not spoil the others: each
//! object is compiled on its own as it arrives ([`Store`]). One that does
//! not compile keeps its last good version serving (or stays out if it never
//! loaded) and is reported per object; one whose name a file policy already
//! uses is refused the same way. PolicyExceptions count only in the
//! namespaces of `--exception-namespaces`; the others are reported as
//! ignored. The objects that load join the file documents in one set.
//!
//! Objects labelled [`SHADOW_LABEL`]` = "true"` feed the shadow set
//! (`--shadow-policies`, [`crate::server::shadow`]) instead: they are
//! compared with the served set's answers and never enforced.
//!
//! The CRDs come from Kyverno; `deploy/crds/` holds a copy of their schema
//! for clusters without Kyverno, and `deploy/kubernetes/crd-source/rbac.yaml` the ClusterRole.

use super::{rebuild, Sources};
use crate::policy::load::Document;
use crate::policy::{LoadError, PolicySet, KUBE_PREFIX};
use crate::server::State;
use futures_util::StreamExt as _;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const GROUP: &str = "policies.kyverno.io";

/// The label that puts an object into the shadow set (value `"true"`).
pub const SHADOW_LABEL: &str = "celgate.dev/shadow";

/// Whether an object carries [`SHADOW_LABEL`]` = "true"`.
pub fn is_shadow(v: &serde_json::Value) -> bool {
    v.pointer("/metadata/labels")
        .and_then(|l| l.get(SHADOW_LABEL))
        .and_then(|x| x.as_str())
        .is_some_and(|x| x.trim().eq_ignore_ascii_case("true"))
}

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

/// Where PolicyExceptions from the cluster may live (`--exception-namespaces`).
/// Anyone who may create a PolicyException can switch a policy off, so by
/// default only celgate's own namespace counts; the default of this type is
/// no namespace at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ExceptionNamespaces {
    /// Every namespace (`*`).
    All,
    /// These namespaces only (none when empty).
    Only(BTreeSet<String>),
    #[default]
    None,
}

#[derive(Debug, thiserror::Error)]
#[error("--exception-namespaces: {0:?} is not a namespace name (lower-case letters, digits and '-', at most 63) nor `*`")]
pub struct NamespaceError(pub String);

impl ExceptionNamespaces {
    /// From the comma-separated entries of the flag: `*` for all, empty
    /// entries skipped (so an empty value means none).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, NamespaceError> {
        let mut only = BTreeSet::new();
        let mut all = false;
        for e in entries {
            let e = e.as_ref().trim();
            if e == "*" {
                all = true;
            } else if !e.is_empty() {
                if !is_namespace_name(e) {
                    return Err(NamespaceError(e.to_owned()));
                }
                only.insert(e.to_owned());
            }
        }
        Ok(match (all, only.is_empty()) {
            (true, _) => ExceptionNamespaces::All,
            (false, true) => ExceptionNamespaces::None,
            (false, false) => ExceptionNamespaces::Only(only),
        })
    }

    /// Whether a PolicyException in `namespace` counts.
    pub fn allows(&self, namespace: Option<&str>) -> bool {
        match self {
            ExceptionNamespaces::All => true,
            ExceptionNamespaces::Only(s) => namespace.is_some_and(|n| s.contains(n)),
            ExceptionNamespaces::None => false,
        }
    }
}

impl std::fmt::Display for ExceptionNamespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExceptionNamespaces::All => f.write_str("*"),
            ExceptionNamespaces::Only(s) => {
                f.write_str(&s.iter().cloned().collect::<Vec<_>>().join(","))
            }
            ExceptionNamespaces::None => f.write_str("(none)"),
        }
    }
}

/// A DNS label, as Kubernetes requires of namespace names.
pub fn is_namespace_name(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The ServiceAccount's namespace, mounted into every pod with a token.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// celgate's own namespace: `POD_NAMESPACE` (the downward API), else the
/// ServiceAccount's namespace file; `None` outside a pod.
pub fn own_namespace() -> Option<String> {
    let from_env = std::env::var("POD_NAMESPACE").ok();
    let from_file = || std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok();
    from_env
        .filter(|n| !n.trim().is_empty())
        .or_else(from_file)
        .map(|n| n.trim().to_owned())
        .filter(|n| is_namespace_name(n))
}

/// The pseudo-path of an object in the set: `kubernetes:/<kind>/<name>`.
fn object_path(kind: &str, key: &str) -> PathBuf {
    PathBuf::from(format!("{KUBE_PREFIX}/{kind}/{key}"))
}

/// The (kind, key) of an object from its pseudo-path.
fn object_of(path: &std::path::Path) -> Option<(String, String)> {
    let s = path
        .to_str()?
        .strip_prefix(KUBE_PREFIX)?
        .strip_prefix('/')?;
    let (kind, key) = s.split_once('/')?;
    Some((kind.to_owned(), key.to_owned()))
}

/// What is wrong with one object: the field and a kind of error, never the
/// text of an expression (an object may inline a secret, and these reports
/// are served on unauthenticated endpoints). `celgate validate` on the
/// object's YAML gives the full message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectError {
    /// e.g. `spec.validations[0].expression`; absent when the object as a
    /// whole is at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `cel` (an expression does not compile), `invalid` (a field is missing
    /// or wrong), `nameClash` (a file policy has the name), `panic`, `other`.
    pub error: &'static str,
    /// For `nameClash`: the file that defines the name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with: Option<String>,
}

impl From<&LoadError> for ObjectError {
    fn from(e: &LoadError) -> Self {
        let (field, error) = match e {
            LoadError::Cel { field, .. } => (Some(field.clone()), "cel"),
            LoadError::Invalid { field, .. } => (Some(field.clone()), "invalid"),
            LoadError::Duplicate { .. } => (Some("metadata.name".to_owned()), "nameClash"),
            _ => (None, "other"),
        };
        ObjectError {
            field,
            error,
            with: None,
        }
    }
}

impl std::fmt::Display for ObjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(self.error)?;
        if let Some(w) = &self.with {
            write!(f, " with {w}")?;
        }
        Ok(())
    }
}

/// How one object stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ObjectState {
    /// Its latest version loads and serves.
    Ok,
    /// Its latest version does not load (or clashes by name): the last good
    /// version serves, if there is one.
    Broken,
    /// A PolicyException outside `--exception-namespaces`: never served.
    Ignored,
}

/// One object that is not `ok`, as `/readyz` and `/policies` list it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReport {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub state: ObjectState,
    /// Whether an earlier version of a broken object still serves.
    pub serving_last_good_version: bool,
    /// Since when it has been in this state.
    #[serde(with = "super::rfc3339")]
    pub since: SystemTime,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ObjectError>,
}

/// The Kubernetes objects by state, with every one that is not `ok`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeReport {
    pub ok: usize,
    pub broken: usize,
    pub ignored: usize,
    pub exception_namespaces: String,
    /// Broken objects first, then ignored ones; at most [`MAX_LISTED`].
    pub objects: Vec<ObjectReport>,
    /// Objects not listed for that bound.
    #[serde(skip_serializing_if = "is_zero")]
    pub omitted: usize,
}

/// The most objects a report lists: `/readyz` is probed often, and a
/// cluster may hold many PolicyExceptions of other namespaces.
pub const MAX_LISTED: usize = 100;

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    /// Changed since it was last compiled.
    Pending,
    Ok,
    Broken(Vec<ObjectError>),
}

#[derive(Debug)]
struct Entry {
    namespace: Option<String>,
    /// The latest version from the API server.
    current: serde_json::Value,
    /// The latest version that compiled on its own: what serves.
    good: Option<serde_json::Value>,
    check: Check,
    /// When `check` (or the clash) last changed state.
    since: SystemTime,
    /// The file that already defines this object's name, if one does.
    clash: Option<String>,
    /// For a PolicyException that compiles on its own: what fails when its
    /// conditions compile in the scope of the policies it names (a
    /// variable the policy lacks, a type it does not fit), found in the
    /// last build of the set; empty when nothing does.
    conflict: Vec<ObjectError>,
    /// Whether the WARN for an ignored exception was logged.
    ignored_logged: bool,
}

impl Entry {
    fn state(&self, kind: &str, allowed: &ExceptionNamespaces) -> ObjectState {
        if kind == "PolicyException" && !allowed.allows(self.namespace.as_deref()) {
            ObjectState::Ignored
        } else if self.clash.is_some()
            || !self.conflict.is_empty()
            || matches!(self.check, Check::Broken(_))
        {
            ObjectState::Broken
        } else {
            ObjectState::Ok
        }
    }
}

/// The objects the watch has seen, each with the outcome of compiling it on
/// its own, so that one broken object never holds back the others.
#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<(String, String), Entry>,
    exception_namespaces: ExceptionNamespaces,
    /// Set by the first complete list: only then is there anything to report.
    listed: bool,
}

impl Store {
    pub fn new(exception_namespaces: ExceptionNamespaces) -> Self {
        Store {
            exception_namespaces,
            ..Default::default()
        }
    }

    pub fn apply(&mut self, kind: &str, key: String, value: serde_json::Value) {
        let namespace = value
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        match self.objects.get_mut(&(kind.to_owned(), key.clone())) {
            Some(e) if e.current == value => {}
            Some(e) => {
                e.current = value;
                e.namespace = namespace;
                e.check = Check::Pending;
            }
            None => {
                self.objects.insert(
                    (kind.to_owned(), key),
                    Entry {
                        namespace,
                        current: value,
                        good: None,
                        check: Check::Pending,
                        since: SystemTime::now(),
                        clash: None,
                        conflict: Vec::new(),
                        ignored_logged: false,
                    },
                );
            }
        }
    }

    /// Every object of `kind` after a (re)list: what is not listed is gone;
    /// what is unchanged keeps its state.
    pub fn replace(&mut self, kind: &str, objects: Vec<(String, serde_json::Value)>) {
        let names: BTreeSet<&str> = objects.iter().map(|(n, _)| n.as_str()).collect();
        self.objects
            .retain(|(k, n), _| k != kind || names.contains(n.as_str()));
        for (name, v) in objects {
            self.apply(kind, name, v);
        }
        self.listed = true;
    }

    pub fn delete(&mut self, kind: &str, key: &str) {
        self.objects.remove(&(kind.to_owned(), key.to_owned()));
    }

    /// The versions not compiled yet, and not ignored.
    fn pending(&mut self) -> Vec<((String, String), serde_json::Value)> {
        let allowed = self.exception_namespaces.clone();
        let mut out = Vec::new();
        for ((kind, key), e) in &mut self.objects {
            if e.state(kind, &allowed) == ObjectState::Ignored {
                if !e.ignored_logged {
                    e.ignored_logged = true;
                    tracing::warn!(
                        kind = %kind,
                        namespace = e.namespace.as_deref().unwrap_or(""),
                        name = short_name(key),
                        exception_namespaces = %allowed,
                        "PolicyException ignored: its namespace is not in --exception-namespaces"
                    );
                }
                continue;
            }
            if e.check == Check::Pending {
                out.push(((kind.clone(), key.clone()), e.current.clone()));
            }
        }
        out
    }

    /// Records the outcome of compiling `value` on its own, unless a newer
    /// version arrived meanwhile (that one is compiled next time).
    fn record(
        &mut self,
        id: &(String, String),
        value: serde_json::Value,
        result: Result<(), Vec<ObjectError>>,
    ) {
        let Some(e) = self.objects.get_mut(id) else {
            return;
        };
        if e.current != value {
            return;
        }
        let (kind, key) = id;
        let was_broken = matches!(e.check, Check::Broken(_));
        match result {
            Ok(()) => {
                if was_broken {
                    tracing::info!(kind = %kind, name = %key, "Kubernetes object loads again");
                }
                if was_broken || e.good.is_none() {
                    e.since = SystemTime::now();
                }
                e.good = Some(value);
                e.check = Check::Ok;
            }
            Err(errors) => {
                let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
                tracing::warn!(
                    kind = %kind,
                    name = %key,
                    errors = %list.join("; "),
                    serving = if e.good.is_some() { "its last good version" } else { "nothing (it never loaded)" },
                    "Kubernetes object does not load; the other objects are not affected (`celgate validate` on its YAML shows the detail)"
                );
                if !was_broken {
                    e.since = SystemTime::now();
                }
                e.check = Check::Broken(errors);
            }
        }
    }

    /// The documents that serve: the last good version of every object that
    /// is not ignored, whose name no file policy holds and that compiles
    /// with the others (`with_clashing` adds those, to find out whether they
    /// still clash or conflict).
    fn documents(&self, with_clashing: bool) -> Vec<Document> {
        let allowed = &self.exception_namespaces;
        self.objects
            .iter()
            .filter(|((kind, _), e)| e.state(kind, allowed) != ObjectState::Ignored)
            .filter(|(_, e)| with_clashing || (e.clash.is_none() && e.conflict.is_empty()))
            .filter_map(|((kind, key), e)| {
                Some(Document {
                    path: object_path(kind, key),
                    index: 1,
                    line: 1,
                    value: e.good.clone()?,
                })
            })
            .collect()
    }

    /// Sets which objects clash by name with a file (object → the file).
    fn set_clashes(&mut self, clashes: &BTreeMap<(String, String), String>) {
        for (id, e) in &mut self.objects {
            let now = clashes.get(id).cloned();
            if now != e.clash {
                if let Some(file) = &now {
                    tracing::warn!(
                        kind = %id.0,
                        name = %id.1,
                        file = %file,
                        "Kubernetes object refused: a policy file defines the same name"
                    );
                } else {
                    tracing::info!(kind = %id.0, name = %id.1, "Kubernetes object no longer clashes with a file");
                }
                e.clash = now;
                e.since = SystemTime::now();
            }
        }
    }

    /// Sets which exceptions do not compile in the scope of a policy they
    /// name (object → its errors).
    fn set_conflicts(&mut self, conflicts: &BTreeMap<(String, String), Vec<ObjectError>>) {
        for (id, e) in &mut self.objects {
            let now = conflicts.get(id).cloned().unwrap_or_default();
            if now != e.conflict {
                if now.is_empty() {
                    tracing::info!(kind = %id.0, name = %id.1, "Kubernetes object compiles with the policies it names again");
                } else {
                    let list: Vec<String> = now.iter().map(ToString::to_string).collect();
                    tracing::warn!(
                        kind = %id.0,
                        name = %id.1,
                        errors = %list.join("; "),
                        "Kubernetes object refused: its conditions do not compile in the scope of a policy it names; the other objects are not affected (`celgate validate` on the objects' YAML shows the detail)"
                    );
                }
                e.conflict = now;
                e.since = SystemTime::now();
            }
        }
    }

    pub fn report(&self) -> Option<KubeReport> {
        if !self.listed {
            return None;
        }
        let allowed = &self.exception_namespaces;
        let mut r = KubeReport {
            exception_namespaces: allowed.to_string(),
            ..Default::default()
        };
        for ((kind, key), e) in &self.objects {
            let state = e.state(kind, allowed);
            match state {
                ObjectState::Ok => {
                    r.ok += 1;
                    continue;
                }
                ObjectState::Broken => r.broken += 1,
                ObjectState::Ignored => r.ignored += 1,
            }
            let mut errors = match (&e.check, state) {
                (Check::Broken(errs), ObjectState::Broken) => errs.clone(),
                _ => Vec::new(),
            };
            if state == ObjectState::Broken {
                errors.extend(e.conflict.iter().cloned());
            }
            if let (Some(file), ObjectState::Broken) = (&e.clash, state) {
                errors.push(ObjectError {
                    field: Some("metadata.name".into()),
                    error: "nameClash",
                    with: Some(file.clone()),
                });
            }
            r.objects.push(ObjectReport {
                kind: kind.clone(),
                namespace: e.namespace.clone(),
                name: short_name(key).to_owned(),
                state,
                serving_last_good_version: state == ObjectState::Broken
                    && e.clash.is_none()
                    && e.conflict.is_empty()
                    && e.good.is_some(),
                since: e.since,
                errors,
            });
        }
        // Stable: by state, then kind and name as stored.
        r.objects.sort_by_key(|o| o.state == ObjectState::Ignored);
        r.omitted = r.objects.len().saturating_sub(MAX_LISTED);
        r.objects.truncate(MAX_LISTED);
        Some(r)
    }
}

/// `name` of a `namespace/name` key.
fn short_name(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, n)| n)
}

/// Compiles one object alone; a panic in the compiler is that object's
/// error, not the reload's.
fn compile_alone(kind: &str, key: &str, value: &serde_json::Value) -> Result<(), Vec<ObjectError>> {
    if kind == "ValidatingPolicy" && mode(value) != Some("Envoy") {
        return Err(vec![ObjectError {
            field: Some("spec.evaluation.mode".into()),
            error: "invalid",
            with: None,
        }]);
    }
    let doc = Document {
        path: object_path(kind, key),
        index: 1,
        line: 1,
        value: value.clone(),
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        PolicySet::compile(vec![doc])
    })) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.0.iter().map(ObjectError::from).collect()),
        Err(_) => Err(vec![ObjectError {
            field: None,
            error: "panic",
            with: None,
        }]),
    }
}

/// Brings every changed object's check up to date (compiling outside the
/// lock, so the watch is never held up by a compile) and returns the
/// documents to build the set from.
/// `shadow`: the objects feed the shadow set, whose policy names must not
/// stay registered among the served set's series.
pub(super) fn prepare(store: &std::sync::Mutex<Store>, shadow: bool) -> Vec<Document> {
    let lock = || store.lock().unwrap_or_else(|e| e.into_inner());
    let pending = lock().pending();
    for (id, value) in pending {
        let result = compile_alone(&id.0, &id.1, &value);
        if shadow && id.0 == "ValidatingPolicy" {
            crate::telemetry::metrics::release_unused(&id.1);
        }
        lock().record(&id, value, result);
    }
    lock().documents(true)
}

/// The Kubernetes objects a failed build refuses because a file defines the
/// same name (object → that file). The Kubernetes one is refused, never the
/// file's.
pub(super) fn clashes(errors: &[LoadError]) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for e in errors {
        if let LoadError::Duplicate { first, second, .. } = e {
            let (obj, other) = match (object_of(&second.path), object_of(&first.path)) {
                (Some(o), _) => (o, &first.path),
                (None, Some(o)) => (o, &second.path),
                (None, None) => continue,
            };
            out.insert(obj, other.display().to_string());
        }
    }
    out
}

/// The Kubernetes PolicyExceptions a failed build refuses because their
/// conditions, which compile on their own, do not compile in the scope of a
/// policy they name (object → its errors). An exception left out exempts
/// nothing: the policies apply in full.
pub(super) fn conflicts(errors: &[LoadError]) -> BTreeMap<(String, String), Vec<ObjectError>> {
    let mut out: BTreeMap<_, Vec<ObjectError>> = BTreeMap::new();
    for e in errors {
        if let LoadError::Cel { location, kind, .. } | LoadError::Invalid { location, kind, .. } = e
        {
            if *kind != "PolicyException" {
                continue;
            }
            if let Some(obj) = object_of(&location.path) {
                out.entry(obj).or_default().push(ObjectError::from(e));
            }
        }
    }
    out
}

/// Marks the clashing and conflicting objects and returns the documents
/// without them.
pub(super) fn refuse_clashing(
    store: &std::sync::Mutex<Store>,
    clashes: &BTreeMap<(String, String), String>,
    conflicts: &BTreeMap<(String, String), Vec<ObjectError>>,
) -> Vec<Document> {
    let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
    s.set_clashes(clashes);
    s.set_conflicts(conflicts);
    s.documents(false)
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

/// The `spec.evaluation.mode` of an object, if it has one.
fn mode(v: &serde_json::Value) -> Option<&str> {
    v.pointer("/spec/evaluation/mode").and_then(|m| m.as_str())
}

/// Whether a ValidatingPolicy object is one for celgate (Envoy mode);
/// ordinary admission policies of the cluster are not ours and are left out
/// quietly. A mode that is Envoy but for case or spaces is ours, and
/// reported as broken rather than dropped.
fn wanted(kind: &str, v: &serde_json::Value) -> bool {
    kind != "ValidatingPolicy" || mode(v).is_some_and(|m| m.trim().eq_ignore_ascii_case("envoy"))
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

/// Where objects go: the served set's sources, and the shadow set's (for
/// objects labelled [`SHADOW_LABEL`]); without shadow sources labelled
/// objects are left out, never served.
#[derive(Debug, Clone)]
pub struct Routes {
    pub live: Arc<Sources>,
    pub shadow: Option<Arc<Sources>>,
}

impl Routes {
    fn replace(&self, kind: &str, objects: Vec<(String, serde_json::Value)>) {
        let (shadow, live): (Vec<_>, Vec<_>) = objects.into_iter().partition(|(_, v)| is_shadow(v));
        self.live.kube_replace(kind, live);
        if let Some(s) = &self.shadow {
            s.kube_replace(kind, shadow);
        }
    }

    fn apply(&self, kind: &str, name: String, v: serde_json::Value) {
        // A label change moves the object from one set to the other.
        if is_shadow(&v) {
            self.live.kube_delete(kind, &name);
            if let Some(s) = &self.shadow {
                s.kube_apply(kind, name, v);
            }
        } else {
            if let Some(s) = &self.shadow {
                s.kube_delete(kind, &name);
            }
            self.live.kube_apply(kind, name, v);
        }
    }

    fn delete(&self, kind: &str, name: &str) {
        self.live.kube_delete(kind, name);
        if let Some(s) = &self.shadow {
            s.kube_delete(kind, name);
        }
    }

    fn rebuild(&self, state: &State) {
        rebuild(state, &self.live);
        if let Some(s) = &self.shadow {
            rebuild(state, s);
        }
    }
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
    let routes = Routes {
        live: sources,
        shadow: None,
    };
    run_routed(client, version, routes, state, synced).await;
}

/// As [`run`], objects labelled for the shadow set going to its sources.
pub async fn run_routed(
    client: Client,
    version: String,
    routes: Routes,
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
                routes.replace(kind, objects);
                listed[i] = true;
                true
            }
            Ok(Event::Apply(o)) => {
                match to_entry(kind, &o) {
                    Some((name, v)) => {
                        tracing::info!(kind, name = %name, shadow = is_shadow(&v), "Kubernetes object applied");
                        routes.apply(kind, name, v);
                    }
                    // A policy switched away from Envoy mode is no longer ours.
                    None => {
                        if let Some(name) = key(&o) {
                            routes.delete(kind, &name);
                        }
                    }
                }
                true
            }
            Ok(Event::Delete(o)) => {
                if let Some(name) = key(&o) {
                    tracing::info!(kind, name = %name, "Kubernetes object deleted");
                    routes.delete(kind, &name);
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
            let (r, st) = (routes.clone(), state.clone());
            let _ = tokio::task::spawn_blocking(move || r.rebuild(&st)).await;
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
    let routes = Routes {
        live: sources,
        shadow: None,
    };
    start_routed(client, version, routes, state, timeout).await
}

/// As [`start`], objects labelled for the shadow set going to its sources.
pub async fn start_routed(
    client: Client,
    version: String,
    routes: Routes,
    state: Arc<State>,
    timeout: Duration,
) -> Result<tokio::task::JoinHandle<()>, KubeError> {
    let (tx, mut rx) = tokio::sync::watch::channel(Err("not listed yet".to_owned()));
    let task = tokio::spawn(run_routed(client, version.clone(), routes, state, tx));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_namespaces_parse_and_match() {
        let only = ExceptionNamespaces::parse(&["celgate", " ops ", ""]).unwrap();
        assert!(only.allows(Some("celgate")) && only.allows(Some("ops")));
        assert!(!only.allows(Some("team-a")));
        assert!(
            !only.allows(None),
            "a cluster-scoped exception is not in a namespace"
        );
        assert_eq!(only.to_string(), "celgate,ops");
        let all = ExceptionNamespaces::parse(&["*"]).unwrap();
        assert!(all.allows(Some("anything")) && all.allows(None));
        let none = ExceptionNamespaces::parse(&[""]).unwrap();
        assert_eq!(none, ExceptionNamespaces::None);
        assert!(!none.allows(Some("celgate")));
        assert_eq!(ExceptionNamespaces::default(), ExceptionNamespaces::None);
        for bad in ["Team-A", "team_a", "-a", "a-", "a/b", &"a".repeat(64)] {
            assert!(ExceptionNamespaces::parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn object_paths_round_trip() {
        let p = object_path("PolicyException", "team-a/x");
        assert_eq!(
            object_of(&p),
            Some(("PolicyException".into(), "team-a/x".into()))
        );
        assert_eq!(object_of(std::path::Path::new("policies/x.yaml")), None);
        assert_eq!(short_name("team-a/x"), "x");
        assert_eq!(short_name("x"), "x");
    }

    #[test]
    fn a_clash_refuses_the_kubernetes_object_whichever_comes_first() {
        let file = crate::policy::Location::for_path(std::path::Path::new("p/a.yaml"));
        let obj = crate::policy::Location::for_path(&object_path("ValidatingPolicy", "a"));
        for (first, second) in [(&file, &obj), (&obj, &file)] {
            let e = LoadError::Duplicate {
                kind: "ValidatingPolicy",
                name: "a".into(),
                first: Box::new(first.clone()),
                second: Box::new(second.clone()),
            };
            let c = clashes(&[e]);
            assert_eq!(
                c.get(&("ValidatingPolicy".to_owned(), "a".to_owned()))
                    .map(String::as_str),
                Some("p/a.yaml")
            );
        }
        // Two files: not a Kubernetes matter.
        let e = LoadError::Duplicate {
            kind: "ValidatingPolicy",
            name: "a".into(),
            first: Box::new(file.clone()),
            second: Box::new(file.clone()),
        };
        assert!(clashes(&[e]).is_empty());
    }

    #[test]
    fn a_newer_version_is_not_overwritten_by_an_older_outcome() {
        let mut s = Store::new(ExceptionNamespaces::None);
        let v1 = serde_json::json!({"v": 1});
        let v2 = serde_json::json!({"v": 2});
        s.apply("ValidatingPolicy", "a".into(), v1.clone());
        let id = ("ValidatingPolicy".to_owned(), "a".to_owned());
        s.apply("ValidatingPolicy", "a".into(), v2.clone());
        s.record(&id, v1, Ok(()));
        assert!(s.objects[&id].good.is_none());
        assert_eq!(s.objects[&id].check, Check::Pending);
        s.record(&id, v2.clone(), Ok(()));
        assert_eq!(s.objects[&id].good, Some(v2));
    }

    #[test]
    fn the_report_lists_broken_objects_first_and_is_bounded() {
        let mut s = Store::new(ExceptionNamespaces::None);
        for i in 0..MAX_LISTED + 5 {
            let v = serde_json::json!({"metadata": {"namespace": "team-a"}, "i": i});
            s.apply("PolicyException", format!("team-a/x{i:03}"), v);
        }
        let v = serde_json::json!({"spec": {"evaluation": {"mode": "Envoy"}}});
        s.apply("ValidatingPolicy", "z".into(), v.clone());
        let id = ("ValidatingPolicy".to_owned(), "z".to_owned());
        s.record(
            &id,
            v,
            Err(vec![ObjectError {
                field: None,
                error: "cel",
                with: None,
            }]),
        );
        s.replace(
            "ValidatingPolicy",
            vec![("z".into(), s.objects[&id].current.clone())],
        );
        let r = s.report().unwrap();
        assert_eq!((r.ok, r.broken, r.ignored), (0, 1, MAX_LISTED + 5));
        assert_eq!(r.objects.len(), MAX_LISTED);
        assert_eq!(r.omitted, 6);
        assert_eq!(r.objects[0].name, "z");
        assert_eq!(r.objects[0].state, ObjectState::Broken);
        assert_eq!(r.objects[1].state, ObjectState::Ignored);
    }
}
