//! The file source: every kind of change on disk reaches the request path as
//! a complete new set, a change that does not load leaves the last good set
//! serving (visible in `/readyz`) and the next good change recovers; under
//! load, swaps never produce a wrong or mixed answer.

mod common;

use celgate::engine::{evaluate, EngineConfig};
use celgate::policy::PolicySet;
use celgate::server::{serve_on, State};
use celgate::sources::files::{watch, watch_with, FileWatcher, WatchOptions};
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

/// As `start`, with the given options, `--allow-empty` and initial set
/// (which need not load from `paths`).
fn start_with(
    paths: &[PathBuf],
    set: PolicySet,
    allow_empty: bool,
    options: WatchOptions,
) -> (Arc<State>, FileWatcher) {
    let state = State::new(set, EngineConfig::default());
    let w = watch_with(
        state.clone(),
        Sources::new(paths.to_vec(), allow_empty),
        options,
    )
    .expect("watch");
    (state, w)
}

fn errors(state: &State) -> u64 {
    // Acquire: the error it counts is recorded before the count.
    state.reload.errors_total.load(Ordering::Acquire)
}

fn last_error(state: &State) -> String {
    state
        .reload
        .last_error()
        .map(|e| e.errors.join("\n"))
        .unwrap_or_default()
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
        // Acquire: the error it counts is recorded before the count.
        state.reload.errors_total.load(Ordering::Acquire) == 1
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
        // Acquire: the error it counts is recorded before the count.
        state.reload.errors_total.load(Ordering::Acquire) == 2
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
    // ConfigMap swaps are atomic: a short settle keeps the swaps frequent.
    let paths = [dir.path().to_path_buf()];
    let (state, _w) = start_with(
        &paths,
        PolicySet::load(&paths).unwrap(),
        false,
        WatchOptions {
            quiet: QUIET,
            settle: Duration::from_millis(10),
            ..Default::default()
        },
    );
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

/// Serves `state` on loopback; the HTTP address and a stop handle.
async fn serve_http(
    state: Arc<State>,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        serve_on(state, grpc, http, async {
            let _ = stop_rx.await;
        })
        .await
        .expect("serves");
    });
    (http_addr, stop_tx, server)
}

fn metrics(addr: std::net::SocketAddr) -> String {
    common::get_blocking(addr, "/metrics").unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_an_empty_set_is_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    write(&file, &policy("p", 401));
    let (state, _w) = start(&[dir.path().to_path_buf()]);
    let (http_addr, stop, server) = serve_http(state.clone()).await;
    let get = move |p: &'static str| tokio::task::spawn_blocking(move || http_get(http_addr, p));

    // The only file renamed away: nothing would be served.
    std::fs::rename(&file, dir.path().join("p.yaml.bak")).unwrap();
    eventually("the empty set is refused", || errors(&state) == 1);
    assert_eq!(status(&state), 401, "the last good set keeps answering");
    let (code, ready) = get("/readyz").await.unwrap();
    assert_eq!(code, 200, "still ready: the last good set serves");
    let err = ready["lastReloadError"]["errors"].to_string();
    assert!(
        err.contains("no Envoy-mode ValidatingPolicy") && err.contains("--allow-empty"),
        "{ready}"
    );
    let m = tokio::task::spawn_blocking(move || metrics(http_addr))
        .await
        .unwrap();
    assert!(
        m.lines()
            .any(|l| l == "celgate_policy_reload_errors_total 1"),
        "{m}"
    );

    // Only documents that are skipped (here a typo'd-looking but legal
    // Kubernetes-mode policy) are no better.
    write(
        &file,
        &policy("p", 402).replace("mode: Envoy", "mode: Kubernetes"),
    );
    eventually("a set of skipped documents is refused too", || {
        errors(&state) == 2
    });
    assert_eq!(status(&state), 401);

    // A good change applies and clears the error.
    write(&file, &policy("p", 403));
    eventually("the good change applies", || status(&state) == 403);
    assert_eq!(last_error(&state), "");

    let _ = stop.send(());
    server.await.unwrap();
}

#[test]
fn with_allow_empty_a_reload_may_empty_the_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    write(&file, &policy("p", 401));
    let paths = [dir.path().to_path_buf()];
    let (state, _w) = start_with(
        &paths,
        PolicySet::load(&paths).unwrap(),
        true,
        WatchOptions {
            quiet: QUIET,
            ..Default::default()
        },
    );
    std::fs::remove_file(&file).unwrap();
    eventually("the empty set applies", || status(&state) == 200);
    assert_eq!(errors(&state), 0);
}

#[test]
fn a_misspelt_mode_is_a_refused_reload_not_a_skipped_policy() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    write(&file, &policy("p", 401));
    let (state, _w) = start(&[dir.path().to_path_buf()]);
    write(
        &file,
        &format!(
            "{}---\n{}",
            policy("p", 401),
            policy("q", 402).replace("mode: Envoy", "mode: envoy")
        ),
    );
    eventually("the misspelt mode is refused", || errors(&state) == 1);
    assert!(
        last_error(&state).contains("spec.evaluation.mode"),
        "{}",
        last_error(&state)
    );
}

#[test]
fn a_replaced_directory_is_still_watched() {
    let root = tempfile::tempdir().unwrap();
    let w = root.path().join("w");
    std::fs::create_dir(&w).unwrap();
    write(&w.join("p.yaml"), &policy("p", 401));
    let (state, _w) = start(std::slice::from_ref(&w));
    assert_eq!(status(&state), 401);

    // mv w w.old; mkdir w; write a policy in the new w.
    std::fs::rename(&w, root.path().join("w.old")).unwrap();
    std::fs::create_dir(&w).unwrap();
    write(&w.join("p.yaml"), &policy("p", 402));
    eventually("the new directory's policy is loaded", || {
        status(&state) == 402
    });
    // Later edits in the new directory are seen, edits in the old are not.
    write(&w.join("p.yaml"), &policy("p", 403));
    eventually("a later edit is loaded", || status(&state) == 403);
    write(&root.path().join("w.old/p.yaml"), &policy("p", 499));
    std::thread::sleep(QUIET * 6);
    assert_eq!(status(&state), 403);

    // Removed and created again.
    std::fs::remove_dir_all(&w).unwrap();
    let gone = w.display().to_string();
    eventually("the removal is a refused reload", || {
        last_error(&state).contains(&gone)
    });
    assert_eq!(status(&state), 403, "the last good set keeps serving");
    std::fs::create_dir(&w).unwrap();
    write(&w.join("p.yaml"), &policy("p", 405));
    eventually("the re-created directory's policy is loaded", || {
        status(&state) == 405
    });
    write(&w.join("p.yaml"), &policy("p", 406));
    eventually("and it is watched", || status(&state) == 406);
    assert_eq!(last_error(&state), "");
}

#[test]
fn a_path_created_after_start_is_loaded_and_watched() {
    let root = tempfile::tempdir().unwrap();
    let later = root.path().join("later");
    let deep_file = root.path().join("not/yet/p.yaml");
    let (state, _w) = start_with(
        &[later.clone(), deep_file.clone()],
        PolicySet::empty(),
        true,
        WatchOptions {
            quiet: QUIET,
            ..Default::default()
        },
    );
    std::fs::create_dir(&later).unwrap();
    write(&later.join("p.yaml"), &policy("p", 401));
    // Not loaded while the other path is missing: that is an error.
    eventually("the missing path is reported", || {
        last_error(&state).contains("not/yet/p.yaml")
    });
    std::fs::create_dir_all(deep_file.parent().unwrap()).unwrap();
    write(&deep_file, &policy("q", 402));
    eventually("both paths load", || status(&state) == 401);
    assert_eq!(state.policies.load().policies.len(), 2);
    write(&later.join("p.yaml"), &policy("p", 403));
    eventually("the new directory is watched", || status(&state) == 403);
    write(&deep_file, &policy("a-q", 404));
    eventually("the new file is watched", || status(&state) == 404);
}

/// Debug builds only: the fault injection does not exist in release builds.
#[cfg(debug_assertions)]
#[test]
fn a_panic_in_a_rebuild_is_a_failed_reload_and_reloading_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("p.yaml"), &policy("p", 401));
    let (state, _w) = start(&[dir.path().to_path_buf()]);
    let marker = dir.path().join(".celgate-debug-panic-on-rebuild");
    write(&marker, "");
    eventually("the panic is a failed reload", || errors(&state) == 1);
    assert!(
        last_error(&state).contains("panicked"),
        "{}",
        last_error(&state)
    );
    assert_eq!(status(&state), 401);
    // And again: the reload thread survived the first.
    write(&dir.path().join("p.yaml"), &policy("p", 402));
    eventually("a second panic is reported too", || errors(&state) == 2);
    std::fs::remove_file(&marker).unwrap();
    eventually("the next good change applies", || status(&state) == 402);
    assert_eq!(last_error(&state), "");
}

#[test]
fn a_file_written_in_two_parts_is_loaded_whole() {
    // Loaded alone, the first part would answer 401 (a complete policy
    // that sorts first, then the start of a second document); whole, the
    // file answers 403.
    let half = format!(
        "{}---\napiVersion: policies.kyverno.io/v1alpha1\nkind: Valid",
        policy("a-half", 401)
    );
    let rest = "atingPolicy\nmetadata:\n  name: 0-full\nspec:\n  evaluation:\n    mode: Envoy\n  validations:\n  - expression: envoy.Denied(403).Response()\n";
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("m.yaml"), &policy("m-base", 418));
    let paths = [dir.path().to_path_buf()];
    let (state, _w) = start_with(
        &paths,
        PolicySet::load(&paths).unwrap(),
        false,
        WatchOptions {
            quiet: QUIET,
            settle: Duration::from_millis(600),
            ..Default::default()
        },
    );
    let file = dir.path().join("new.yaml");
    write(&file, &half);
    // A pause well past the quiet period, well inside quiet + settle.
    std::thread::sleep(QUIET * 3);
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(rest.as_bytes()).unwrap();
    }
    let mut seen = Vec::new();
    eventually("the whole file applies", || {
        let s = status(&state);
        if seen.last() != Some(&s) {
            seen.push(s);
        }
        s == 403
    });
    assert_eq!(seen, [418, 403], "answers seen meanwhile");
    assert_eq!(errors(&state), 0, "{}", last_error(&state));
}

/// A reload compiles only the documents that changed: the others share the
/// compiled form of the set they replace (matched by their content), keep
/// their `loaded_at` and their warnings (at their place now), and the whole
/// set is still checked together.
#[test]
fn a_reload_reuses_what_did_not_change_and_checks_the_set_together() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(format!("{name}.yaml"));
    std::fs::write(p("a"), policy("a", 401)).unwrap();
    // An unknown spec field: a warning, which a reuse must say again.
    std::fs::write(
        p("b"),
        policy("b", 402).replace("  validations:", "  mystery: 1\n  validations:"),
    )
    .unwrap();
    std::fs::write(p("c"), policy("c", 403)).unwrap();
    let paths = vec![dir.path().to_path_buf()];
    let first = PolicySet::load(&paths).unwrap();
    assert_eq!(first.reused, 0);
    let warned = |s: &PolicySet| -> Vec<String> {
        s.warnings
            .iter()
            .filter(|w| w.policy.as_deref() == Some("b"))
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(warned(&first).len(), 1, "{:?}", first.warnings);

    std::thread::sleep(Duration::from_millis(5));
    // `a` changes; `b` becomes the second document of its file, after a
    // new policy `d`, but is the same document; `c` is untouched.
    std::fs::write(p("a"), policy("a", 404)).unwrap();
    let b_text = std::fs::read_to_string(p("b")).unwrap();
    std::fs::write(p("b"), format!("{}---\n{b_text}", policy("d", 406))).unwrap();
    let (second, _) = PolicySet::reload(&paths, Vec::new(), Some(&first));
    let second = second.unwrap();
    assert_eq!(second.reused, 2);
    let get = |s: &PolicySet, n: &str| {
        let p = s.get(n).unwrap();
        (p.compiled.clone(), p.loaded_at, p.location.clone())
    };
    let (a1, a1_at, _) = get(&first, "a");
    let (a2, a2_at, _) = get(&second, "a");
    assert!(!Arc::ptr_eq(&a1, &a2), "a changed: compiled again");
    assert!(a2_at > a1_at);
    for n in ["b", "c"] {
        let (x1, at1, _) = get(&first, n);
        let (x2, at2, _) = get(&second, n);
        assert!(Arc::ptr_eq(&x1, &x2), "{n} did not change: reused");
        assert_eq!(at1, at2, "{n} keeps when it was loaded");
    }
    let (b1, b2) = (get(&first, "b").2, get(&second, "b").2);
    assert_eq!((b1.document, b2.document), (1, 2), "b's place now");
    let w = warned(&second);
    assert_eq!(w.len(), 1, "the reused policy's warning is said again");
    assert!(
        w[0].contains(&b2.to_string()) && !w[0].contains(&b1.to_string()),
        "at its place now ({b2}): {w:?}"
    );
    // The new version decides (a is first in name order).
    assert_eq!(
        evaluate(&second, &EngineConfig::default(), &request()).http_status(),
        404
    );

    // The set is still checked together: a new document that clashes with
    // a reused one (the same name) refuses the reload.
    std::fs::write(dir.path().join("dup.yaml"), policy("c", 405)).unwrap();
    let (third, _) = PolicySet::reload(&paths, Vec::new(), Some(&second));
    let errors = third.expect_err("a duplicate name is refused").to_string();
    assert!(
        errors.contains("\"c\"") || errors.contains(" c"),
        "{errors}"
    );
    std::fs::remove_file(dir.path().join("dup.yaml")).unwrap();

    // An exception arriving later compiles against a reused policy's
    // variables.
    std::fs::write(
        dir.path().join("x.yaml"),
        "apiVersion: policies.kyverno.io/v1\nkind: PolicyException\nmetadata: { name: x }\n\
         spec:\n  policyRefs: [{ name: c }]\n  matchConditions:\n  - name: always\n    expression: 'true'\n",
    )
    .unwrap();
    let (fourth, _) = PolicySet::reload(&paths, Vec::new(), Some(&second));
    let fourth = fourth.unwrap();
    assert_eq!(fourth.reused, 4);
    assert_eq!(fourth.get("c").unwrap().exceptions.len(), 1);
    assert!(second.get("c").unwrap().exceptions.is_empty());
}

/// Tenants' policies that differ only in literals share what they have in
/// common: one parse and one plan of each expression text (with the same
/// variable slots), not one per policy.
#[test]
fn identical_expressions_share_one_parse_and_one_plan() {
    let tenant = |t: &str| {
        format!(
            "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: {{ name: {t} }}\nspec:\n  \
             evaluation: {{ mode: Envoy }}\n  matchConditions:\n  - name: host\n    \
             expression: object.attributes.request.http.host == \"{t}.example.com\"\n  variables:\n  \
             - name: key\n    expression: object.attributes.request.http.headers[?\"x-api-key\"].orValue(\"\")\n  \
             validations:\n  - expression: 'variables.key == \"\" ? envoy.Denied(401).Response() : null'\n  \
             - expression: envoy.Allowed().WithHeader(\"x-tenant\", \"{t}\").Response()\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    for t in ["t1", "t2", "t3"] {
        std::fs::write(dir.path().join(format!("{t}.yaml")), tenant(t)).unwrap();
    }
    let set = PolicySet::load(&[dir.path().to_path_buf()]).unwrap();
    let (a, b) = (set.get("t1").unwrap(), set.get("t3").unwrap());
    // The variable and the first validation are the same text: shared.
    assert!(Arc::ptr_eq(
        &a.variables[0].expr.program,
        &b.variables[0].expr.program
    ));
    assert!(a.plans.variables[0].shares_plan_with(&b.plans.variables[0]));
    assert!(a.plans.validations[0].shares_plan_with(&b.plans.validations[0]));
    // The condition and the second validation differ: each its own.
    assert!(!Arc::ptr_eq(
        &a.match_conditions[0].expr.program,
        &b.match_conditions[0].expr.program
    ));
    assert!(!a.plans.validations[1].shares_plan_with(&b.plans.validations[1]));
    // And each still decides for its own tenant.
    for t in ["t1", "t2", "t3"] {
        let r = celgate::request_json::from_value(
            &serde_json::json!({"attributes": {"request": {"http": {
            "host": format!("{t}.example.com"), "headers": {"x-api-key": "k"}}}}}),
        )
        .unwrap();
        let d = evaluate(&set, &EngineConfig::default(), &r);
        assert_eq!(d.policy.as_deref(), Some(t));
        let json = celgate::decision::response_json(&d.response).to_string();
        assert!(json.contains(&format!("\"value\":\"{t}\"")), "{json}");
    }
}

/// An unchanged file is not read again: its policies are taken over from
/// the set being replaced. A file written just before it was read, or whose
/// size, times or identity changed, is read again.
#[test]
fn a_reload_does_not_read_the_files_that_did_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(format!("{name}.yaml"));
    for (n, s) in [("a", 401), ("b", 402), ("c", 403)] {
        std::fs::write(p(n), policy(n, s)).unwrap();
    }
    // Written long ago, as far as the reload can tell.
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    for n in ["a", "b", "c"] {
        std::fs::File::options()
            .write(true)
            .open(p(n))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    // Modified "in the future": always within the racy window, so always
    // read again (what a file written just before a reload gets).
    let racy = |path: &Path| {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
            .unwrap();
    };
    let paths = vec![dir.path().to_path_buf()];
    let first = PolicySet::load(&paths).unwrap();
    let b_before = std::fs::metadata(p("b")).unwrap();
    std::fs::write(p("a"), policy("a", 404)).unwrap();
    racy(&p("a"));
    let (second, _) = PolicySet::reload(&paths, Vec::new(), Some(&first));
    let second = second.unwrap();
    assert_eq!((second.files_read, second.reused), (1, 2), "only a is read");
    assert_eq!(
        evaluate(&second, &EngineConfig::default(), &request()).http_status(),
        404
    );
    // b's bytes overwritten with garbage of the same length, its
    // modification time put back: the change time, which every write moves,
    // still tells, so it is read again and refused.
    let garbage =
        "x: [".repeat(b_before.len() as usize / 4 + 1)[..b_before.len() as usize].to_owned();
    std::fs::write(p("b"), &garbage).unwrap();
    std::fs::File::options()
        .write(true)
        .open(p("b"))
        .unwrap()
        .set_modified(b_before.modified().unwrap())
        .unwrap();
    let (third, _) = PolicySet::reload(&paths, Vec::new(), Some(&second));
    assert!(third.is_err(), "a rewritten file is read again");
    // Its policy back: read, compiled the same, reused.
    std::fs::write(p("b"), policy("b", 402)).unwrap();
    racy(&p("b"));
    let (fourth, _) = PolicySet::reload(&paths, Vec::new(), Some(&second));
    let fourth = fourth.unwrap();
    // a (within the racy window) and b (changed) read; c taken over.
    assert_eq!((fourth.files_read, fourth.reused), (2, 3));
    // Within the racy window: read again every time, and still reused by
    // content.
    let (fifth, _) = PolicySet::reload(&paths, Vec::new(), Some(&fourth));
    let fifth = fifth.unwrap();
    assert_eq!((fifth.files_read, fifth.reused), (2, 3));
}
