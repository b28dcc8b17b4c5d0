//! The file source: every kind of change on disk reaches the request path as
//! a complete new set, a change that does not load leaves the last good set
//! serving (visible in `/readyz`) and the next good change recovers; under
//! load, swaps never produce a wrong or mixed answer.

mod common;

use celgate::engine::{evaluate, EngineConfig};
use celgate::policy::PolicySet;
use celgate::server::{serve_on, State};
use celgate::sources::files::{watch, FileWatcher};
use celgate::sources::Sources;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const QUIET: Duration = Duration::from_millis(50);

/// A policy that denies every request with `status`.
fn policy(name: &str, status: u16) -> String {
    format!(
        "apiVersion: policies.kyverno.io/v1alpha1\nkind: ValidatingPolicy\nmetadata:\n  name: {name}\nspec:\n  evaluation:\n    mode: Envoy\n  validations:\n  - expression: envoy.Denied({status}).Response()\n"
    )
}

fn request() -> CheckRequest {
    celgate::request_json::from_value(&serde_json::json!(
        {"attributes": {"request": {"http": {"method": "GET", "path": "/x"}}}}
    ))
    .unwrap()
}

fn status(state: &State) -> i32 {
    evaluate(&state.policies.load(), &EngineConfig::default(), &request()).http_status()
}

fn start(paths: &[PathBuf]) -> (Arc<State>, FileWatcher) {
    let set = PolicySet::load(paths).expect("initial set loads");
    let state = State::new(set, EngineConfig::default());
    let w = watch(state.clone(), Sources::files(paths.to_vec()), QUIET).expect("watch");
    (state, w)
}

/// Waits up to 10 s for `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn rewrite_in_place_of_a_file_given_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    write(&file, &policy("p", 401));
    let (state, _w) = start(std::slice::from_ref(&file));
    assert_eq!(status(&state), 401);
    write(&file, &policy("p", 402));
    eventually("the rewrite applies", || status(&state) == 402);
    // A file beside it that was not named is not loaded.
    write(&dir.path().join("other.yaml"), &policy("a-other", 499));
    std::thread::sleep(QUIET * 4);
    assert_eq!(status(&state), 402);
}

#[test]
fn editor_style_rename_into_place() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("p.yaml"), &policy("p", 401));
    let (state, _w) = start(&[dir.path().to_path_buf()]);
    assert_eq!(status(&state), 401);
    let tmp = dir.path().join(".p.yaml.swp");
    write(&tmp, &policy("p", 403));
    std::fs::rename(&tmp, dir.path().join("p.yaml")).unwrap();
    eventually("the renamed file applies", || status(&state) == 403);
}

#[test]
fn new_files_in_subdirectories_and_deletions() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("z.yaml"), &policy("z-last", 401));
    let (state, _w) = start(&[dir.path().to_path_buf()]);
    let sub = dir.path().join("team-a");
    std::fs::create_dir(&sub).unwrap();
    write(&sub.join("a.yml"), &policy("a-first", 405));
    eventually("the new file applies", || status(&state) == 405);
    assert_eq!(state.policies.load().policies.len(), 2);
    std::fs::remove_file(sub.join("a.yml")).unwrap();
    eventually("the deletion applies", || status(&state) == 401);
    assert_eq!(state.policies.load().policies.len(), 1);
}

/// The kubelet's way: files are links into `..data`, a link to a versioned
/// folder that is replaced by renaming a new link over it.
struct ConfigMapDir {
    root: PathBuf,
    version: u32,
}

impl ConfigMapDir {
    fn new(root: &Path, files: &[(&str, String)]) -> Self {
        let mut c = ConfigMapDir {
            root: root.to_path_buf(),
            version: 0,
        };
        c.publish(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name)).unwrap();
        }
        c
    }

    fn publish(&mut self, files: &[(&str, String)]) {
        self.version += 1;
        let old = format!(
            "..2026_11_24_00_00_{:02}.{}",
            self.version - 1,
            self.version - 1
        );
        let new = format!("..2026_11_24_00_00_{:02}.{}", self.version, self.version);
        let dir = self.root.join(&new);
        std::fs::create_dir(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
        let _ = std::fs::remove_dir_all(self.root.join(old));
    }
}

#[test]
fn configmap_symlink_swap() {
    let dir = tempfile::tempdir().unwrap();
    let mut cm = ConfigMapDir::new(
        dir.path(),
        &[("a.yaml", policy("a", 401)), ("b.yaml", policy("b", 409))],
    );
    let (state, _w) = start(&[dir.path().to_path_buf()]);
    assert_eq!(status(&state), 401);
    assert_eq!(
        state.policies.load().policies.len(),
        2,
        "versions are not loaded twice"
    );
    cm.publish(&[("a.yaml", policy("a", 402)), ("b.yaml", policy("b", 409))]);
    eventually("the swapped version applies", || status(&state) == 402);
    cm.publish(&[("b.yaml", policy("b", 409))]);
    eventually("a key removed from the ConfigMap goes away", || {
        status(&state) == 409
    });
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = common::get_blocking(addr, path).unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_changes_keep_the_last_good_set_and_show_in_readyz() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    write(&file, &policy("p", 401));
    let (state, _w) = start(&[dir.path().to_path_buf()]);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(state.clone(), grpc, http, async {
        let _ = stop_rx.await;
    }));
    let get = move |p: &'static str| tokio::task::spawn_blocking(move || http_get(http_addr, p));

    let (code, ready) = get("/readyz").await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(ready["lastReloadError"], serde_json::Value::Null);
    let (_, listed) = get("/policies").await.unwrap();
    assert_eq!(listed["policies"][0]["name"], "p");
    assert_eq!(listed["policies"][0]["source"], "file");
    let first_loaded = listed["policies"][0]["loadedAt"].clone();
    assert!(first_loaded.is_string());

    // Broken YAML: refused, counted, visible, still ready, old set serves.
    write(&file, "apiVersion: [unclosed\n");
    eventually("the broken YAML is refused", || {
        state.reload.errors_total.load(Ordering::Relaxed) == 1
    });
    assert_eq!(status(&state), 401);
    let (code, ready) = get("/readyz").await.unwrap();
    assert_eq!(code, 200, "still ready: the last good set serves");
    let err = ready["lastReloadError"]["errors"].to_string();
    assert!(err.contains("p.yaml") && err.contains("YAML"), "{ready}");
    assert_eq!(ready["reloads"]["errors"], 1);

    // Broken CEL: refused with the policy, field and CEL error named.
    write(&file, &policy("p", 402).replace("Response()", "Response("));
    eventually("the broken CEL is refused", || {
        state.reload.errors_total.load(Ordering::Relaxed) == 2
    });
    assert_eq!(status(&state), 401);
    let (_, ready) = get("/readyz").await.unwrap();
    let err = ready["lastReloadError"]["errors"].to_string();
    assert!(
        err.contains("\\\"p\\\"") && err.contains("spec.validations[0].expression"),
        "{ready}"
    );

    // The next good change applies and clears the error.
    write(&file, &policy("p", 403));
    eventually("the good change applies", || status(&state) == 403);
    let (_, ready) = get("/readyz").await.unwrap();
    assert_eq!(ready["lastReloadError"], serde_json::Value::Null, "{ready}");
    assert_eq!(ready["reloads"]["applied"], 1);
    let (_, listed) = get("/policies").await.unwrap();
    assert_ne!(listed["policies"][0]["loadedAt"], first_loaded);

    // Touching the file without changing it publishes nothing new.
    write(&dir.path().join("unrelated.txt"), "x");
    write(&file, &policy("p", 403));
    eventually("the unchanged reload is counted", || {
        state.reload.unchanged_total.load(Ordering::Relaxed) >= 1
    });
    assert_eq!(state.reload.applied_total.load(Ordering::Relaxed), 1);

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

/// Swaps the whole set many times a second (ConfigMap-style, two files
/// whose versions must go together) while clients hammer Check over gRPC.
/// Version 1 answers 401 (a.yaml decides; b.yaml would say 404); version 2
/// answers 403 (a.yaml says nothing, b.yaml decides). A set mixing a.yaml of
/// version 2 with b.yaml of version 1 would answer 404; any failed call or
/// other status is wrong too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_never_give_a_wrong_or_mixed_answer() {
    // A policy that never answers: its validation is the CEL `null`.
    let silent = policy("a", 1).replace("envoy.Denied(1).Response()", "\"null\"");
    let v1 = [("a.yaml", policy("a", 401)), ("b.yaml", policy("b", 404))];
    let v2 = [("a.yaml", silent), ("b.yaml", policy("b", 403))];

    let dir = tempfile::tempdir().unwrap();
    let mut cm = ConfigMapDir::new(dir.path(), &v1);
    let (state, _w) = start(&[dir.path().to_path_buf()]);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(state.clone(), grpc, http, async {
        let _ = stop_rx.await;
    }));

    let done = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default()); // 401, 403, other
    let mut clients = Vec::new();
    for _ in 0..4 {
        let done = done.clone();
        let counts = counts.clone();
        let mut client = AuthorizationClient::connect(format!("http://{grpc_addr}"))
            .await
            .unwrap();
        clients.push(tokio::spawn(async move {
            let mut wrong = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let r = client.check(request()).await;
                let code = match r.map(|r| r.into_inner().http_response) {
                    Ok(Some(HttpResponse::DeniedResponse(d))) => {
                        d.status.map(|s| s.code).unwrap_or(0)
                    }
                    other => {
                        wrong.push(format!("{other:?}"));
                        0
                    }
                };
                match code {
                    401 => counts[0].fetch_add(1, Ordering::Relaxed),
                    403 => counts[1].fetch_add(1, Ordering::Relaxed),
                    c => {
                        wrong.push(format!("status {c}"));
                        counts[2].fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            wrong
        }));
    }

    // Swap every 20 ms for 3 s, waiting for each version to be served
    // before publishing the next, so every swap reaches the request path.
    let swaps = tokio::task::spawn_blocking({
        let state = state.clone();
        move || {
            let mut swaps = 0;
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                let (files, want) = if swaps % 2 == 0 {
                    (&v2, 403)
                } else {
                    (&v1, 401)
                };
                cm.publish(files);
                eventually("the swap applies", || status(&state) == want);
                swaps += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            swaps
        }
    })
    .await
    .unwrap();
    done.store(true, Ordering::Relaxed);
    let mut wrong = Vec::new();
    for c in clients {
        wrong.extend(c.await.unwrap());
    }
    let (n401, n403, other) = (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
        counts[2].load(Ordering::Relaxed),
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(other, 0);
    assert!(swaps >= 10, "only {swaps} swaps");
    assert!(
        n401 > 0 && n403 > 0,
        "both versions answered: {n401} × 401, {n403} × 403"
    );
    assert_eq!(state.reload.errors_total.load(Ordering::Relaxed), 0);
    eprintln!("{swaps} swaps; {n401} × 401, {n403} × 403, 0 wrong");
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}
