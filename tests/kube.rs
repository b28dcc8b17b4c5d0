//! The Kubernetes source against a small fake API server that speaks list
//! and watch (streamed JSON watch events, bookmarks, `410 Gone` forcing a
//! relist): policies and exceptions added, modified and deleted change
//! decisions; non-Envoy policies are left out; PolicyExceptions count only in
//! the allowed namespaces; each object loads on its own, so a broken one
//! keeps its last good version (or nothing) and never holds back the others
//! nor a new process's start. The fake also takes the writes of
//! `--report-kube` (server-side apply and delete of OpenReports objects).

mod common;

use axum::body::Body;
use axum::extract::{Path as AxPath, RawQuery, State as AxState};
use axum::response::IntoResponse;
use axum::routing::get;
use celgate::engine::{evaluate, EngineConfig};
use celgate::policy::PolicySet;
use celgate::server::State;
use celgate::sources::kube::{ExceptionNamespaces, ObjectState};
use celgate::sources::{kube as source, Sources};
use common::{free_port, get_blocking, loopback};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

const BASE: &str = "/apis/policies.kyverno.io/v1alpha1";

#[derive(Default)]
struct Store {
    /// plural → name → object
    objects: BTreeMap<String, BTreeMap<String, Value>>,
}

struct Fake {
    store: Mutex<Store>,
    version: AtomicU64,
    lists: Mutex<HashMap<String, u64>>,
    /// (plural, resourceVersion, line): live watch events.
    events: broadcast::Sender<(String, u64, String)>,
    /// The same events, kept so a watch started at a resourceVersion gets
    /// what happened since, as from a real API server (errors are live only).
    history: Mutex<Vec<(String, u64, String)>>,
}

impl Fake {
    fn next_version(&self) -> String {
        (self.version.fetch_add(1, Ordering::SeqCst) + 1).to_string()
    }

    fn emit(&self, plural: &str, event: Value) {
        let line = format!("{event}\n");
        let rv = event["object"]["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok());
        // Recorded before it is sent, so a watch that subscribes in between
        // finds it in the history and skips the live copy.
        if let Some(rv) = rv {
            let mut h = self.history.lock().unwrap();
            h.push((plural.to_owned(), rv, line.clone()));
        }
        let _ = self
            .events
            .send((plural.to_owned(), rv.unwrap_or(u64::MAX), line));
    }

    fn apply(&self, plural: &str, mut obj: Value) {
        obj["metadata"]["resourceVersion"] = json!(self.next_version());
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        let existed = self
            .store
            .lock()
            .unwrap()
            .objects
            .entry(plural.to_owned())
            .or_default()
            .insert(name, obj.clone())
            .is_some();
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        self.emit(plural, json!({"type": kind, "object": obj}));
    }

    /// Changes the store without an event: only a relist shows it.
    fn apply_silently(&self, plural: &str, mut obj: Value) {
        obj["metadata"]["resourceVersion"] = json!(self.next_version());
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        self.store
            .lock()
            .unwrap()
            .objects
            .entry(plural.to_owned())
            .or_default()
            .insert(name, obj);
    }

    fn delete(&self, plural: &str, name: &str) {
        let obj = self
            .store
            .lock()
            .unwrap()
            .objects
            .get_mut(plural)
            .and_then(|m| m.remove(name))
            .expect("object exists");
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(self.next_version());
        self.emit(plural, json!({"type": "DELETED", "object": obj}));
    }

    fn bookmark(&self, plural: &str) {
        let v = self.next_version();
        self.emit(
            plural,
            json!({"type": "BOOKMARK", "object": {
                "apiVersion": "policies.kyverno.io/v1alpha1",
                "kind": kind_of(plural),
                "metadata": {"resourceVersion": v}
            }}),
        );
    }

    fn gone(&self, plural: &str) {
        self.emit(
            plural,
            json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "too old resource version",
                "reason": "Expired", "code": 410
            }}),
        );
    }

    fn lists(&self, plural: &str) -> u64 {
        self.lists.lock().unwrap().get(plural).copied().unwrap_or(0)
    }
}

fn kind_of(plural: &str) -> &'static str {
    match plural {
        "validatingpolicies" => "ValidatingPolicy",
        _ => "PolicyException",
    }
}

async fn handler(
    AxState(fake): AxState<Arc<Fake>>,
    AxPath(plural): AxPath<String>,
    RawQuery(q): RawQuery,
) -> axum::response::Response {
    let watch = q
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    if watch {
        let since: u64 = q
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| kv.strip_prefix("resourceVersion="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // Subscribe first, then replay what happened since `since`; live
        // events already replayed are skipped by their resourceVersion.
        let rx = fake.events.subscribe();
        let backlog: Vec<String> = fake
            .history
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, rv, _)| *p == plural && *rv > since)
            .map(|(_, _, line)| line.clone())
            .collect();
        let last = fake
            .history
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, rv, _)| *p == plural && *rv > since)
            .map(|(_, rv, _)| *rv)
            .max()
            .unwrap_or(since);
        let replay =
            futures_util::stream::iter(backlog.into_iter().map(Ok::<_, std::convert::Infallible>));
        let live = futures_util::stream::unfold((rx, plural), move |(mut rx, plural)| async move {
            loop {
                match rx.recv().await {
                    // u64::MAX marks live-only events (410 errors).
                    Ok((p, rv, line)) if p == plural && (rv > last || rv == u64::MAX) => {
                        return Some((Ok::<_, std::convert::Infallible>(line), (rx, plural)))
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let stream = futures_util::StreamExt::chain(replay, live);
        return (
            [("content-type", "application/json")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    *fake
        .lists
        .lock()
        .unwrap()
        .entry(plural.clone())
        .or_default() += 1;
    let items: Vec<Value> = fake
        .store
        .lock()
        .unwrap()
        .objects
        .get(&plural)
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    let v = fake.version.load(Ordering::SeqCst).to_string();
    axum::Json(json!({
        "apiVersion": "policies.kyverno.io/v1alpha1",
        "kind": format!("{}List", kind_of(&plural)),
        "metadata": {"resourceVersion": v},
        "items": items,
    }))
    .into_response()
}

/// The OpenReports objects, by `namespace/name`: server-side apply stores
/// the applied object whole (enough for one field manager), delete removes
/// it; `writes` counts applies.
const REPORTS: &str = "/apis/openreports.io/v1alpha1/namespaces/{ns}/reports/{name}";

async fn report_apply(
    AxState(fake): AxState<Arc<Fake>>,
    AxPath((ns, name)): AxPath<(String, String)>,
    RawQuery(q): RawQuery,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let q = q.unwrap_or_default();
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if ct != "application/apply-patch+yaml" || !q.contains("fieldManager=celgate") {
        return (axum::http::StatusCode::BAD_REQUEST, format!("{ct} {q}")).into_response();
    }
    let mut obj: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(obj["metadata"]["name"], name.as_str());
    assert_eq!(obj["metadata"]["namespace"], ns.as_str());
    obj["metadata"]["resourceVersion"] = json!(fake.next_version());
    fake.store
        .lock()
        .unwrap()
        .objects
        .entry("reports".into())
        .or_default()
        .insert(format!("{ns}/{name}"), obj.clone());
    *fake
        .lists
        .lock()
        .unwrap()
        .entry("report-writes".into())
        .or_default() += 1;
    axum::Json(obj).into_response()
}

async fn report_delete(
    AxState(fake): AxState<Arc<Fake>>,
    AxPath((ns, name)): AxPath<(String, String)>,
) -> axum::response::Response {
    let removed = fake
        .store
        .lock()
        .unwrap()
        .objects
        .entry("reports".into())
        .or_default()
        .remove(&format!("{ns}/{name}"));
    match removed {
        Some(obj) => axum::Json(obj).into_response(),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})),
        )
            .into_response(),
    }
}

async fn start_fake() -> (Arc<Fake>, kube::Client, String) {
    let (tx, _) = broadcast::channel(1024);
    let fake = Arc::new(Fake {
        store: Mutex::default(),
        version: AtomicU64::new(100),
        lists: Mutex::default(),
        events: tx,
        history: Mutex::default(),
    });
    let app = axum::Router::new()
        .route(&format!("{BASE}/{{plural}}"), get(handler))
        .route(
            REPORTS,
            axum::routing::patch(report_apply).delete(report_delete),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}");
    let config = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    (fake, client, url)
}

fn policy(name: &str, mode: &str, validation: &str) -> Value {
    json!({
        "apiVersion": "policies.kyverno.io/v1alpha1",
        "kind": "ValidatingPolicy",
        "metadata": {"name": name, "uid": "u-1", "generation": 1,
                     "creationTimestamp": "2026-11-24T00:00:00Z",
                     "managedFields": [{"manager": "kubectl"}]},
        "spec": {
            "evaluation": {"mode": mode},
            "validations": [{"expression": validation}]
        },
        "status": {"conditions": []}
    })
}

fn exception(name: &str, policy: &str, condition: &str) -> Value {
    exception_in("team-a", name, policy, condition)
}

fn exception_in(namespace: &str, name: &str, policy: &str, condition: &str) -> Value {
    json!({
        "apiVersion": "policies.kyverno.io/v1alpha1",
        "kind": "PolicyException",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "policyRefs": [{"name": policy, "kind": "ValidatingPolicy"}],
            "matchConditions": [{"name": "c", "expression": condition}]
        }
    })
}

fn status(state: &State, path: &str) -> i32 {
    let req = celgate::request_json::from_value(&json!(
        {"attributes": {"request": {"http": {"method": "GET", "path": path}}}}
    ))
    .unwrap();
    evaluate(&state.policies.load(), &EngineConfig::default(), &req).http_status()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_exceptions_follow_the_cluster() {
    let (fake, client, _) = start_fake().await;
    fake.apply(
        "validatingpolicies",
        policy("deny-admin", "Envoy", "object.attributes.request.http.path.startsWith('/admin') ? envoy.Denied(403).Response() : null"),
    );
    // An ordinary admission policy of the cluster: not ours.
    fake.apply(
        "validatingpolicies",
        policy("admission", "Kubernetes", "envoy.Denied(500).Response()"),
    );
    // A file policy joins the cluster's by name (it sorts after).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("files.yaml"),
        "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: {name: z-from-file}\nspec:\n  evaluation: {mode: Envoy}\n  validations:\n  - expression: \"object.attributes.request.http.path == '/file' ? envoy.Denied(418).Response() : null\"\n",
    )
    .unwrap();
    let paths = vec![dir.path().to_path_buf()];
    let state = State::new(PolicySet::load(&paths).unwrap(), EngineConfig::default());
    let sources = Sources::with_kube(paths, ExceptionNamespaces::parse(&["team-a"]).unwrap());
    let _task = source::start(
        client,
        "v1alpha1".into(),
        sources.clone(),
        state.clone(),
        Duration::from_secs(10),
    )
    .await
    .expect("initial sync");

    // After the initial sync both sources serve, and nothing else.
    assert_eq!(status(&state, "/admin"), 403);
    assert_eq!(status(&state, "/file"), 418);
    assert_eq!(status(&state, "/other"), 200);
    let names: Vec<String> = state
        .policies
        .load()
        .policies
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(names, ["deny-admin", "z-from-file"]);
    let set = state.policies.load();
    assert_eq!(set.policies[0].location.source(), "kubernetes");
    assert_eq!(set.policies[1].location.source(), "file");

    // Modify.
    fake.apply(
        "validatingpolicies",
        policy("deny-admin", "Envoy", "object.attributes.request.http.path.startsWith('/admin') ? envoy.Denied(451).Response() : null"),
    );
    eventually("the modification applies", || {
        status(&state, "/admin") == 451
    })
    .await;

    // An exception from the cluster exempts /admin/health.
    fake.apply(
        "policyexceptions",
        exception(
            "health",
            "deny-admin",
            "object.attributes.request.http.path == '/admin/health'",
        ),
    );
    eventually("the exception applies", || {
        status(&state, "/admin/health") == 200
    })
    .await;
    let names: Vec<String> = state
        .policies
        .load()
        .exceptions
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(
        names,
        ["team-a/health"],
        "namespaced objects are named namespace/name"
    );
    assert_eq!(status(&state, "/admin"), 451);

    // Bookmarks change nothing.
    let applied = state.reload.applied_total.load(Ordering::Relaxed);
    fake.bookmark("validatingpolicies");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state.reload.applied_total.load(Ordering::Relaxed), applied);

    // A broken object is refused on its own; everything else keeps serving.
    fake.apply(
        "validatingpolicies",
        policy("broken", "Envoy", "envoy.Denied(403"),
    );
    eventually("the broken object is reported", || {
        state.reload.kube().is_some_and(|r| r.broken == 1)
    })
    .await;
    let r = state.reload.kube().unwrap();
    assert_eq!(r.objects[0].name, "broken");
    let errors = serde_json::to_string(&r.objects[0].errors).unwrap();
    assert!(
        errors.contains("spec.validations[0].expression"),
        "{errors}"
    );
    assert!(
        state.reload.last_error().is_none(),
        "not a set-wide failure"
    );
    assert_eq!(status(&state, "/admin"), 451);
    fake.delete("validatingpolicies", "broken");
    eventually("deleting it clears the report", || {
        state.reload.kube().is_some_and(|r| r.broken == 0)
    })
    .await;

    // 410 Gone forces a relist, which brings a change no event announced.
    let lists = fake.lists("validatingpolicies");
    fake.apply_silently(
        "validatingpolicies",
        policy("a-relisted", "Envoy", "object.attributes.request.http.path == '/relisted' ? envoy.Denied(409).Response() : null"),
    );
    fake.gone("validatingpolicies");
    eventually("the relist brings the new policy", || {
        status(&state, "/relisted") == 409
    })
    .await;
    assert!(
        fake.lists("validatingpolicies") > lists,
        "a relist happened"
    );

    // Deletions: the exception, then the policy.
    fake.delete("policyexceptions", "health");
    eventually("the exception is gone", || {
        status(&state, "/admin/health") == 451
    })
    .await;
    fake.delete("validatingpolicies", "deny-admin");
    eventually("the policy is gone", || status(&state, "/admin") == 200).await;

    // A policy switched to another mode leaves the set.
    fake.apply(
        "validatingpolicies",
        policy("a-relisted", "Kubernetes", "envoy.Denied(409).Response()"),
    );
    eventually("the non-Envoy version is dropped", || {
        status(&state, "/relisted") == 200
    })
    .await;
}

/// A state fed by the fake, PolicyExceptions counting in `namespaces`.
async fn watched(
    client: kube::Client,
    paths: Vec<std::path::PathBuf>,
    namespaces: &[&str],
) -> (Arc<State>, tokio::task::JoinHandle<()>) {
    let state = State::new(PolicySet::load(&paths).unwrap(), EngineConfig::default());
    let sources = Sources::with_kube(paths, ExceptionNamespaces::parse(namespaces).unwrap());
    let task = source::start(
        client,
        "v1alpha1".into(),
        sources,
        state.clone(),
        Duration::from_secs(10),
    )
    .await
    .expect("initial sync");
    (state, task)
}

fn deny(name: &str, path: &str, code: u16) -> Value {
    policy(
        name,
        "Envoy",
        &format!(
            "object.attributes.request.http.path.startsWith('{path}') ? envoy.Denied({code}).Response() : null"
        ),
    )
}

fn report_of(state: &State, name: &str) -> Option<source::ObjectReport> {
    state
        .reload
        .kube()
        .and_then(|r| r.objects.into_iter().find(|o| o.name == name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_count_only_in_the_allowed_namespaces() {
    let (fake, client, _) = start_fake().await;
    fake.apply("validatingpolicies", deny("deny-admin", "/admin", 403));
    // A user of another namespace tries to switch the policy off for everything.
    fake.apply(
        "policyexceptions",
        exception_in("team-a", "escape", "deny-admin", "true"),
    );
    let (state, _task) = watched(client, Vec::new(), &["celgate", "ops"]).await;
    assert_eq!(
        status(&state, "/admin"),
        403,
        "the foreign exception is ignored"
    );
    assert_eq!(status(&state, "/admin/health"), 403);
    assert!(state.policies.load().exceptions.is_empty());
    let r = state.reload.kube().unwrap();
    assert_eq!((r.ok, r.broken, r.ignored), (1, 0, 1), "{r:?}");
    assert_eq!(r.exception_namespaces, "celgate,ops");
    let o = report_of(&state, "escape").unwrap();
    assert_eq!(o.state, ObjectState::Ignored);
    assert_eq!(o.namespace.as_deref(), Some("team-a"));
    assert_eq!(o.kind, "PolicyException");
    assert!(!o.serving_last_good_version);

    // One in an allowed namespace applies, beside the ignored one.
    fake.apply(
        "policyexceptions",
        exception_in(
            "ops",
            "health",
            "deny-admin",
            "object.attributes.request.http.path == '/admin/health'",
        ),
    );
    eventually("the allowed exception applies", || {
        status(&state, "/admin/health") == 200
    })
    .await;
    assert_eq!(status(&state, "/admin"), 403, "still ignored");
    let names: Vec<String> = state
        .policies
        .load()
        .exceptions
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, ["ops/health"]);

    // Moving the foreign one's content into an allowed namespace is what it
    // takes; editing it in place changes nothing.
    fake.apply(
        "policyexceptions",
        exception_in("team-a", "escape", "deny-admin", "1 == 1"),
    );
    fake.bookmark("policyexceptions");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&state, "/admin"), 403);
    assert_eq!(state.reload.kube().unwrap().ignored, 1);

    // The metric.
    let m = celgate::telemetry::metrics::global().render("");
    assert!(m.contains("celgate_kube_objects{state=\"ignored\"}"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_with_a_star_and_none_by_default() {
    let (fake, client, _) = start_fake().await;
    fake.apply("validatingpolicies", deny("deny-admin", "/admin", 403));
    fake.apply(
        "policyexceptions",
        exception_in("team-a", "all", "deny-admin", "true"),
    );
    let (state, _task) = watched(client.clone(), Vec::new(), &["*"]).await;
    assert_eq!(status(&state, "/admin"), 200, "`*`: any namespace counts");
    // The library's default (no namespace known): none count.
    let state = State::new(PolicySet::empty(), EngineConfig::default());
    let _task = source::start(
        client,
        "v1alpha1".into(),
        Sources::files(Vec::new()),
        state.clone(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(status(&state, "/admin"), 403);
    assert_eq!(state.reload.kube().unwrap().ignored, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_object_holds_back_nothing() {
    let (fake, client, _) = start_fake().await;
    fake.apply("validatingpolicies", deny("a-good", "/a", 401));
    fake.apply("validatingpolicies", deny("b-good", "/b", 402));
    let (state, _task) = watched(client, Vec::new(), &["celgate"]).await;
    assert_eq!(status(&state, "/a"), 401);
    assert_eq!(status(&state, "/b"), 402);

    // A brand-new broken object: absent, reported, nothing else changes.
    let secret = "'SECRET-IN-EXPRESSION-42'";
    fake.apply(
        "validatingpolicies",
        policy(
            "c-new-broken",
            "Envoy",
            &format!("{secret} == envoy.Denied(403"),
        ),
    );
    eventually("the broken object is reported", || {
        report_of(&state, "c-new-broken").is_some()
    })
    .await;
    let o = report_of(&state, "c-new-broken").unwrap();
    assert_eq!(o.state, ObjectState::Broken);
    assert!(!o.serving_last_good_version, "it never loaded");
    assert_eq!(o.errors.len(), 1, "{o:?}");
    assert_eq!(
        o.errors[0].field.as_deref(),
        Some("spec.validations[0].expression")
    );
    assert_eq!(o.errors[0].error, "cel");
    let shown = serde_json::to_string(&state.reload.kube()).unwrap();
    assert!(!shown.contains("SECRET-IN-EXPRESSION"), "{shown}");
    assert!(state.policies.load().get("c-new-broken").is_none());
    assert!(state.reload.last_error().is_none());

    // A good object still takes changes after the broken one arrived.
    fake.apply("validatingpolicies", deny("a-good", "/a", 451));
    eventually("a change to a good object applies", || {
        status(&state, "/a") == 451
    })
    .await;
    // And a new good object joins.
    fake.apply("validatingpolicies", deny("d-new", "/d", 404));
    eventually("a new good object applies", || status(&state, "/d") == 404).await;

    // A bad update: the last good version keeps serving.
    fake.apply(
        "validatingpolicies",
        policy("b-good", "Envoy", "envoy.Denied(999"),
    );
    eventually("the bad update is reported", || {
        report_of(&state, "b-good").is_some()
    })
    .await;
    let o = report_of(&state, "b-good").unwrap();
    assert!(o.serving_last_good_version, "{o:?}");
    assert_eq!(status(&state, "/b"), 402, "the last good version serves");
    let r = state.reload.kube().unwrap();
    assert_eq!((r.ok, r.broken, r.ignored), (2, 2, 0), "{r:?}");
    let m = celgate::telemetry::metrics::global().render("");
    assert!(m.contains("# TYPE celgate_kube_objects gauge"), "{m}");

    // Both still take good changes afterwards, and the fixed one recovers.
    fake.apply("validatingpolicies", deny("a-good", "/a", 409));
    fake.apply("validatingpolicies", deny("b-good", "/b", 418));
    eventually("the fixed object serves its new version", || {
        status(&state, "/b") == 418 && status(&state, "/a") == 409
    })
    .await;
    assert!(report_of(&state, "b-good").is_none());

    // A relist (410 Gone) keeps the broken one's state, not re-adding it.
    fake.gone("validatingpolicies");
    fake.apply("validatingpolicies", deny("d-new", "/d", 405));
    eventually("changes flow after the relist", || {
        status(&state, "/d") == 405
    })
    .await;
    assert!(report_of(&state, "c-new-broken").is_some());
    assert!(state.policies.load().get("c-new-broken").is_none());

    // Deleted, it leaves the report.
    fake.delete("validatingpolicies", "c-new-broken");
    eventually("the deleted broken object leaves the report", || {
        state
            .reload
            .kube()
            .is_some_and(|r| r.broken == 0 && r.ok == 3)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_a_file_holds_refuses_only_the_kubernetes_object() {
    let (fake, client, _) = start_fake().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shared.yaml"),
        "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: {name: shared}\nspec:\n  evaluation: {mode: Envoy}\n  validations:\n  - expression: \"object.attributes.request.http.path == '/shared' ? envoy.Denied(418).Response() : null\"\n",
    )
    .unwrap();
    fake.apply("validatingpolicies", deny("shared", "/shared", 403));
    fake.apply("validatingpolicies", deny("other", "/other", 401));
    let (state, _task) = watched(client, vec![dir.path().to_path_buf()], &["celgate"]).await;
    assert_eq!(status(&state, "/shared"), 418, "the file's policy serves");
    assert_eq!(status(&state, "/other"), 401, "the other object serves");
    assert!(state.reload.last_error().is_none());
    let o = report_of(&state, "shared").unwrap();
    assert_eq!(o.state, ObjectState::Broken);
    assert_eq!(o.errors[0].error, "nameClash");
    assert!(
        o.errors[0]
            .with
            .as_deref()
            .is_some_and(|f| f.ends_with("shared.yaml")),
        "{o:?}"
    );
    fake.apply("validatingpolicies", deny("other", "/other", 402));
    eventually("the others keep updating", || {
        status(&state, "/other") == 402
    })
    .await;
    fake.delete("validatingpolicies", "shared");
    eventually("the clash leaves the report", || {
        report_of(&state, "shared").is_none()
    })
    .await;
    assert_eq!(status(&state, "/shared"), 418);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_clearly_without_the_crd() {
    // An API server that answers 404 for everything.
    let app = axum::Router::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    let state = State::new(PolicySet::empty(), EngineConfig::default());
    let err = source::start(
        client,
        "v1alpha1".into(),
        Sources::files(Vec::new()),
        state,
        Duration::from_secs(2),
    )
    .await
    .expect_err("no CRD, no start");
    let msg = err.to_string();
    assert!(msg.contains("policies.kyverno.io/v1alpha1"), "{msg}");
}

fn reports(fake: &Fake) -> BTreeMap<String, Value> {
    fake.store
        .lock()
        .unwrap()
        .objects
        .get("reports")
        .cloned()
        .unwrap_or_default()
}

/// `serve --report-kube`: an OpenReports `Report` per policy, created on
/// the first interval and updated with the new counts on the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_is_written_as_one_openreports_object_per_policy() {
    let (fake, client, _) = start_fake().await;
    fake.apply(
        "validatingpolicies",
        policy(
            "or-deny-admin",
            "Envoy",
            "object.attributes.request.http.path == '/admin' ? envoy.Denied(403).Response() : null",
        ),
    );
    fake.apply(
        "validatingpolicies",
        policy("or-pass", "Envoy", "envoy.Allowed().Response()"),
    );
    let (state, _task) = watched(client.clone(), Vec::new(), &["team-a"]).await;
    assert_eq!(status(&state, "/admin"), 403);
    assert_eq!(status(&state, "/x"), 200);
    assert_eq!(status(&state, "/y"), 200);
    let writer = celgate::telemetry::openreports::spawn(
        client,
        celgate::telemetry::openreports::Target {
            namespace: "team-a".into(),
            pod: Some("celgate-0".into()),
            pod_uid: None,
        },
        Duration::from_millis(300),
        state.clone(),
    );
    let deny = "team-a/celgate-or-deny-admin-celgate-0";
    let pass = "team-a/celgate-or-pass-celgate-0";
    eventually("both reports written", || {
        let r = reports(&fake);
        r.contains_key(deny) && r.contains_key(pass)
    })
    .await;
    let r = reports(&fake);
    // The other tests of this process evaluated policies this set does not
    // serve: written too, as no longer served (the report keeps removed
    // policies for an hour).
    for (name, obj) in &r {
        let served = obj["metadata"]["annotations"]["celgate.dev/served"] == "true";
        assert_eq!(served, name == deny || name == pass, "{name}");
    }
    let d = &r[deny];
    assert_eq!(d["apiVersion"], "openreports.io/v1alpha1");
    assert_eq!(d["kind"], "Report");
    assert_eq!(d["source"], "celgate");
    assert_eq!(
        d["metadata"]["annotations"]["celgate.dev/policy"],
        "or-deny-admin"
    );
    assert_eq!(
        d["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "celgate"
    );
    assert_eq!(
        d["summary"],
        json!({"pass": 0, "fail": 1, "warn": 0, "error": 0, "skip": 2})
    );
    let results = d["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{d}");
    let fail = &results[0];
    assert_eq!(fail["policy"], "or-deny-admin");
    assert_eq!(fail["result"], "fail");
    assert_eq!(fail["source"], "celgate");
    assert!(fail["timestamp"]["seconds"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(fail["properties"]["outcome"], "denied");
    assert_eq!(fail["properties"]["since_start"], "1");
    assert_eq!(fail["properties"]["last_5m"], "1");
    assert_eq!(results[1]["result"], "skip");
    assert_eq!(results[1]["properties"]["outcome"], "no_result");
    assert_eq!(
        r[pass]["summary"],
        json!({"pass": 2, "fail": 0, "warn": 0, "error": 0, "skip": 0})
    );

    // New counts reach the objects on a following interval.
    assert_eq!(status(&state, "/admin"), 403);
    assert_eq!(status(&state, "/admin"), 403);
    eventually("the deny report updated", || {
        reports(&fake)[deny]["summary"]["fail"] == 3
    })
    .await;
    assert_eq!(reports(&fake)[pass]["summary"]["pass"], 2);
    assert!(fake.lists("report-writes") >= 4);
    writer.abort();
}

/// The binary with `--report-kube`: the objects appear in its own
/// namespace, named after the policy and the pod; without a namespace it
/// refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_writes_reports_with_report_kube() {
    let (fake, _, server) = start_fake().await;
    fake.apply(
        "validatingpolicies",
        policy("bin-reported", "Envoy", "envoy.Allowed().Response()"),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &server);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_celgate"));
    cmd.args(["serve", "--kube", "--policies", ""])
        .args(["--report-kube", "--report-interval-s", "1"])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .env("KUBECONFIG", &config)
        .env("POD_NAMESPACE", "celgate")
        .env("POD_NAME", "celgate-7f9c")
        .env("POD_UID", "0b5d-uid")
        .env_remove("CELGATE_REPORT_NAMESPACE")
        .env_remove("KUBERNETES_SERVICE_HOST");
    let mut child = common::ChildGuard::spawn("report-kube", cmd, dir.path());
    let start = Instant::now();
    let key = "celgate/celgate-bin-reported-celgate-7f9c";
    while !reports(&fake).contains_key(key) {
        if let Err(e) = child.check_alive() {
            panic!("{e}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no report: {}",
            child.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(child);
    // In its own namespace the pod owns the objects.
    assert_eq!(
        reports(&fake)[key]["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Pod", "name": "celgate-7f9c", "uid": "0b5d-uid"}])
    );

    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_celgate"))
            .args(["serve", "--kube", "--policies", "", "--report-kube"])
            .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
            .env("KUBECONFIG", &config)
            .env_remove("POD_NAMESPACE")
            .env_remove("CELGATE_REPORT_NAMESPACE")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--report-kube needs --report-namespace"),
        "{err}"
    );
}

fn kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{server}\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: u}}\ncurrent-context: fake\n"
        ),
    )
    .unwrap();
    path
}

/// The binary as deployed: `serve --kube` with a kubeconfig, Kubernetes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_cluster_policies_with_kube_flag() {
    let (fake, _, server) = start_fake().await;
    fake.apply(
        "validatingpolicies",
        policy("from-cluster", "Envoy", "envoy.Denied(403).Response()"),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &server);
    let http_port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(["serve", "--kube", "--policies", ""])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .env("KUBECONFIG", &config)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let listed = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        loop {
            if let Ok((200, body)) = get_blocking(loopback(http_port), "/policies") {
                return body;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(v["policies"][0]["name"], "from-cluster", "{v}");
    assert_eq!(v["policies"][0]["source"], "kubernetes", "{v}");
    assert_eq!(v["policies"].as_array().unwrap().len(), 1, "no files: {v}");

    // Without the CRD the binary refuses to start, saying what to check.
    let empty = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = empty.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(empty, axum::Router::new()).await });
    let config = kubeconfig(dir.path(), &format!("http://{addr}"));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_celgate"))
            .args([
                "serve",
                "--kube",
                "--policies",
                "",
                "--kube-sync-timeout-s",
                "1",
            ])
            .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
            .env("KUBECONFIG", &config)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the CRD installed"), "{err}");
}

/// Waits until `path` answers 200 and returns the body.
async fn get_200(port: u16, path: &'static str, child: &mut common::ChildGuard) -> String {
    let start = Instant::now();
    loop {
        let r = tokio::task::spawn_blocking(move || get_blocking(loopback(port), path))
            .await
            .unwrap();
        if let Ok((200, body)) = r {
            return body;
        }
        if let Err(e) = child.check_alive() {
            panic!("{e}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{path} not 200: {}",
            child.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn_server(
    config: &std::path::Path,
    log_dir: &std::path::Path,
    name: &str,
) -> (common::ChildGuard, u16) {
    let http_port = free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_celgate"));
    cmd.args(["serve", "--kube", "--policies", ""])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .env("KUBECONFIG", config)
        .env("POD_NAMESPACE", "celgate")
        .env_remove("CELGATE_EXCEPTION_NAMESPACES")
        .env_remove("KUBERNETES_SERVICE_HOST");
    (common::ChildGuard::spawn(name, cmd, log_dir), http_port)
}

fn served(policies: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(policies).unwrap();
    v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A rollout while a broken object exists: the old process keeps the last
/// good version, and a new process starts, serves every object that loads
/// and reports the rest, ready all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_starts_beside_a_broken_object() {
    let (fake, _, server) = start_fake().await;
    fake.apply("validatingpolicies", deny("a-good", "/a", 401));
    fake.apply("validatingpolicies", deny("b-soon-broken", "/b", 402));
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &server);
    let (mut old, old_port) = spawn_server(&config, dir.path(), "old");
    let listed = get_200(old_port, "/policies", &mut old).await;
    assert_eq!(served(&listed), ["a-good", "b-soon-broken"]);

    // A bad update to one object, and an exception from a user's namespace.
    fake.apply(
        "validatingpolicies",
        policy(
            "b-soon-broken",
            "Envoy",
            "'HIDDEN-TEXT-7' == envoy.Denied(402",
        ),
    );
    fake.apply(
        "policyexceptions",
        exception_in("team-a", "escape", "a-good", "true"),
    );
    let start = Instant::now();
    loop {
        let ready: Value =
            serde_json::from_str(&get_200(old_port, "/readyz", &mut old).await).unwrap();
        if ready["kubernetes"]["broken"] == 1 && ready["kubernetes"]["ignored"] == 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = get_200(old_port, "/policies", &mut old).await;
    assert_eq!(
        served(&listed),
        ["a-good", "b-soon-broken"],
        "the old process keeps the last good version"
    );

    // The new process of the rollout.
    let (mut new, new_port) = spawn_server(&config, dir.path(), "new");
    let ready = get_200(new_port, "/readyz", &mut new).await;
    let listed = get_200(new_port, "/policies", &mut new).await;
    assert_eq!(served(&listed), ["a-good"], "what loads serves: {listed}");
    let v: Value = serde_json::from_str(&ready).unwrap();
    let k = &v["kubernetes"];
    assert_eq!(
        (&k["ok"], &k["broken"], &k["ignored"]),
        (&json!(1), &json!(1), &json!(1)),
        "{v}"
    );
    assert_eq!(k["exceptionNamespaces"], "celgate", "{v}");
    let broken = k["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["state"] == "broken")
        .unwrap();
    assert_eq!(broken["name"], "b-soon-broken");
    assert_eq!(broken["kind"], "ValidatingPolicy");
    assert_eq!(broken["servingLastGoodVersion"], false);
    assert_eq!(
        broken["errors"][0]["field"],
        "spec.validations[0].expression"
    );
    let ignored = k["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["state"] == "ignored")
        .unwrap();
    assert_eq!(
        (&ignored["namespace"], &ignored["name"]),
        (&json!("team-a"), &json!("escape"))
    );
    assert!(v["lastReloadError"].is_null(), "{v}");
    let pv: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        pv["kubernetes"], v["kubernetes"],
        "/policies reports the same"
    );
    let metrics = get_200(new_port, "/metrics", &mut new).await;
    for line in [
        "celgate_kube_objects{state=\"ok\"} 1",
        "celgate_kube_objects{state=\"broken\"} 1",
        "celgate_kube_objects{state=\"ignored\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }

    // The good object still follows the cluster in the new process.
    fake.apply("validatingpolicies", deny("c-later", "/c", 404));
    let start = Instant::now();
    while served(&get_200(new_port, "/policies", &mut new).await) != ["a-good", "c-later"] {
        assert!(start.elapsed() < Duration::from_secs(15));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    old.stop();
    new.stop();
    // The expression's text is in no endpoint and no log line; the ignored
    // exception is logged once per process.
    for (name, text) in [
        ("readyz", ready.as_str()),
        ("policies", listed.as_str()),
        ("old log", &old.log_tail()),
        ("new log", &new.log_tail()),
    ] {
        assert!(!text.contains("HIDDEN-TEXT"), "{name}: {text}");
    }
    for log in [old.log_tail(), new.log_tail()] {
        assert_eq!(log.matches("PolicyException ignored").count(), 1, "{log}");
    }
}

/// `serve --kube` counts files and cluster objects together after the first
/// sync: with no Envoy-mode policy in either it refuses to start, unless
/// `--allow-empty`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_refuses_an_empty_cluster_unless_allowed() {
    let (fake, _, server) = start_fake().await;
    // Only an admission policy of the cluster: nothing of ours.
    fake.apply(
        "validatingpolicies",
        policy("admission", "Kubernetes", "envoy.Denied(500).Response()"),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), &server);
    let http_port = free_port();
    let run = move |extra: &'static [&'static str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_celgate"))
            .args(["serve", "--kube", "--policies", ""])
            .args(extra)
            .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .env("KUBECONFIG", &config)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("CELGATE_ALLOW_EMPTY")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut refused = run(&[]);
    let out = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        while refused.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = refused.kill();
                panic!("serve --kube started with no Envoy-mode policy");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        refused.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to start") && err.contains("no Envoy-mode ValidatingPolicy"),
        "{err}"
    );

    let mut allowed = run(&["--allow-empty"]);
    let ready = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        loop {
            if let Ok((200, body)) = get_blocking(loopback(http_port), "/readyz") {
                return body;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await;
    let _ = allowed.kill();
    let _ = allowed.wait();
    let v: Value = serde_json::from_str(&ready.unwrap()).unwrap();
    assert_eq!(v["policies"], 0, "{v}");
}

/// Objects labelled `celgate.dev/shadow: "true"` feed the shadow set and are
/// never served; changing the label moves an object between the sets; the
/// shadow set's objects load on their own like the served ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_labelled_shadow_form_the_shadow_set_and_are_never_served() {
    use celgate::server::shadow::{Shadow, ShadowOptions};
    let shadow_label = |mut p: Value, on: &str| {
        p["metadata"]["labels"] = json!({ source::SHADOW_LABEL: on });
        p
    };
    let (fake, client, _) = start_fake().await;
    fake.apply(
        "validatingpolicies",
        policy("deny-admin", "Envoy", "object.attributes.request.http.path.startsWith('/admin') ? envoy.Denied(403).Response() : null"),
    );
    fake.apply(
        "validatingpolicies",
        shadow_label(
            policy("shadow-deny-beta", "Envoy", "object.attributes.request.http.path == '/beta' ? envoy.Denied(451).Response() : null"),
            "true",
        ),
    );
    let state = State::with_options(
        PolicySet::empty(),
        EngineConfig::default(),
        celgate::server::ServeOptions {
            shadow: Some(Shadow::new(
                PolicySet::empty(),
                ShadowOptions::default(),
                false,
            )),
            ..Default::default()
        },
    );
    let namespaces = ExceptionNamespaces::parse(&["team-a"]).unwrap();
    let live = Sources::with_kube(Vec::new(), namespaces.clone());
    let shadow_sources = Sources::shadow_set(Vec::new(), namespaces, true);
    let _task = source::start_routed(
        client,
        "v1alpha1".into(),
        source::Routes {
            live,
            shadow: Some(shadow_sources),
        },
        state.clone(),
        Duration::from_secs(10),
    )
    .await
    .expect("initial sync");
    let shadow = state.options.shadow.as_ref().unwrap();
    let names =
        |set: &PolicySet| -> Vec<String> { set.policies.iter().map(|p| p.name.clone()).collect() };
    assert_eq!(names(&state.policies.load()), ["deny-admin"]);
    eventually("the shadow set holds the labelled policy", || {
        names(&shadow.policies.load()) == ["shadow-deny-beta"]
    })
    .await;
    assert_eq!(
        status(&state, "/beta"),
        200,
        "a shadow policy is never served"
    );
    assert_eq!(status(&state, "/admin"), 403);
    let shadow_status = |path: &str| {
        let req = celgate::request_json::from_value(&json!(
            {"attributes": {"request": {"http": {"method": "GET", "path": path}}}}
        ))
        .unwrap();
        evaluate(&shadow.policies.load(), &EngineConfig::default(), &req).http_status()
    };
    assert_eq!(shadow_status("/beta"), 451);
    let series = celgate::telemetry::metrics::global().render("");
    assert!(
        !series.contains("{policy=\"shadow-deny-beta\""),
        "a shadow policy has no served-set series:\n{series}"
    );

    // A broken shadow object keeps its last good version; the served set
    // does not notice.
    fake.apply(
        "validatingpolicies",
        shadow_label(
            policy("shadow-deny-beta", "Envoy", "envoy.Denied(403"),
            "true",
        ),
    );
    eventually("the broken shadow object is reported", || {
        shadow.reload.kube().is_some_and(|r| r.broken == 1)
    })
    .await;
    assert_eq!(shadow_status("/beta"), 451);
    assert!(state.reload.kube().is_some_and(|r| r.broken == 0));

    // The label taken off: the policy moves to the served set.
    fake.apply(
        "validatingpolicies",
        shadow_label(
            policy("shadow-deny-beta", "Envoy", "object.attributes.request.http.path == '/beta' ? envoy.Denied(451).Response() : null"),
            "false",
        ),
    );
    eventually("the unlabelled policy serves", || {
        status(&state, "/beta") == 451
    })
    .await;
    eventually("and left the shadow set", || {
        shadow.policies.load().policies.is_empty()
    })
    .await;

    // Labelled again, then deleted: gone from both.
    fake.apply(
        "validatingpolicies",
        shadow_label(
            policy("shadow-deny-beta", "Envoy", "object.attributes.request.http.path == '/beta' ? envoy.Denied(451).Response() : null"),
            "true",
        ),
    );
    eventually("back in the shadow set", || shadow_status("/beta") == 451).await;
    assert_eq!(status(&state, "/beta"), 200);
    fake.delete("validatingpolicies", "shadow-deny-beta");
    eventually("deleted from the shadow set", || {
        shadow.policies.load().policies.is_empty()
    })
    .await;
    assert_eq!(names(&state.policies.load()), ["deny-admin"]);
}

/// A policy denying /admin with 403, its variable `user` read from x-user
/// when `with_user`.
fn deny_admin_with(with_user: bool) -> Value {
    let mut p = deny("deny-admin", "/admin", 403);
    if with_user {
        p["spec"]["variables"] = json!([{"name": "user",
            "expression": "object.attributes.request.http.headers[?'x-user'].orValue('')"}]);
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_that_no_longer_fits_its_policy_is_refused_alone() {
    let (fake, client, _) = start_fake().await;
    fake.apply("validatingpolicies", deny_admin_with(true));
    fake.apply("validatingpolicies", deny("deny-other", "/other", 409));
    // It reads the policy's variable (and the path: requests carry no x-user).
    fake.apply(
        "policyexceptions",
        exception(
            "by-user",
            "deny-admin",
            "variables.user == '' && object.attributes.request.http.path == '/admin/health'",
        ),
    );
    let (state, _task) = watched(client, Vec::new(), &["team-a"]).await;
    assert_eq!(status(&state, "/admin/health"), 200, "exempted");
    assert_eq!(status(&state, "/admin"), 403);

    // The policy drops the variable: the exception no longer compiles in
    // its scope. It is refused and reported; the policy change, and every
    // other object, still load.
    fake.apply("validatingpolicies", deny_admin_with(false));
    fake.apply("validatingpolicies", deny("deny-other", "/other", 410));
    eventually("the other policy's change applies", || {
        status(&state, "/other") == 410
    })
    .await;
    assert_eq!(status(&state, "/admin/health"), 403, "no longer exempted");
    assert!(state.policies.load().exceptions.is_empty());
    let o = report_of(&state, "by-user").unwrap();
    assert_eq!(o.state, ObjectState::Broken);
    assert!(!o.serving_last_good_version);
    assert_eq!(
        o.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["spec.matchConditions[0].expression: cel"]
    );
    assert!(state.reload.last_error().is_none());

    // The variable is back: so is the exception.
    fake.apply("validatingpolicies", deny_admin_with(true));
    eventually("the exception applies again", || {
        status(&state, "/admin/health") == 200
    })
    .await;
    assert!(report_of(&state, "by-user").is_none());
}
