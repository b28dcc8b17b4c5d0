//! The Kubernetes source against a small fake API server that speaks list
//! and watch (streamed JSON watch events, bookmarks, `410 Gone` forcing a
//! relist): policies and exceptions added, modified and deleted change
//! decisions; non-Envoy policies are left out; a broken object is refused
//! with the last good set serving.

mod common;

use axum::body::Body;
use axum::extract::{Path as AxPath, RawQuery, State as AxState};
use axum::response::IntoResponse;
use axum::routing::get;
use celgate::engine::{evaluate, EngineConfig};
use celgate::policy::PolicySet;
use celgate::server::State;
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
    json!({
        "apiVersion": "policies.kyverno.io/v1alpha1",
        "kind": "PolicyException",
        "metadata": {"name": name, "namespace": "team-a"},
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
    let sources = Sources::files(paths);
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

    // A broken object is refused; the last good set keeps serving.
    fake.apply(
        "validatingpolicies",
        policy("broken", "Envoy", "envoy.Denied(403"),
    );
    eventually("the broken object is refused", || {
        state.reload.errors_total.load(Ordering::Relaxed) >= 1
    })
    .await;
    let err = state.reload.last_error().unwrap().errors.join("\n");
    assert!(err.contains("kubernetes:/ValidatingPolicy/broken"), "{err}");
    assert!(err.contains("spec.validations[0].expression"), "{err}");
    assert_eq!(status(&state, "/admin"), 451);
    fake.delete("validatingpolicies", "broken");
    eventually("deleting it recovers", || {
        state.reload.last_error().is_none()
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
