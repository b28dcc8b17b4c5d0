//! The real server on ephemeral ports, called with the tonic client; the
//! binary's start-up refusal and its SIGTERM handling.

mod common;

use celgate::engine::EngineConfig;
use celgate::policy::PolicySet;
use celgate::server::{serve_on, State};
use common::{free_port, get_blocking};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn req(path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let h: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    let v = serde_json::json!({"attributes": {"request": {"http": {"method": "GET", "path": path, "headers": h}}}});
    celgate::request_json::from_value(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_over_grpc_and_graceful_shutdown() {
    let set = PolicySet::load(&[repo("policies")]).expect("bundled policies load");
    let state = State::new(set, EngineConfig::default());
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(state, grpc, http, async {
        let _ = stop_rx.await;
    }));

    let mut client = AuthorizationClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap();

    let ok = client
        .check(req("/api/orders", &[("x-api-key", "demo-key-alice")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = ok.http_response else {
        panic!("expected an OK response: {ok:?}")
    };
    let added: Vec<(String, String)> = ok
        .headers
        .iter()
        .map(|h| {
            let h = h.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect();
    assert_eq!(added, vec![("x-user".to_string(), "alice".to_string())]);
    assert_eq!(ok.headers_to_remove, vec!["x-api-key".to_string()]);

    let denied = client
        .check(req("/api/orders", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.status.as_ref().unwrap().code, 7, "PERMISSION_DENIED");
    let Some(HttpResponse::DeniedResponse(d)) = denied.http_response else {
        panic!("expected a denial")
    };
    assert_eq!(d.status.unwrap().code, 401);
    assert_eq!(d.body, "missing api key\n");

    // An empty request (no attributes at all) is judged, not rejected.
    let empty = client
        .check(CheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(empty.http_response, Some(HttpResponse::DeniedResponse(ref d)) if d.status.unwrap().code == 404),
        "{empty:?}"
    );

    let (status, body) = tokio::task::spawn_blocking(move || get_blocking(http_addr, "/readyz"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"policies\":3"), "{body}");
    let (status, _) = tokio::task::spawn_blocking(move || get_blocking(http_addr, "/livez"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);

    drop(client);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops after shutdown")
        .unwrap()
        .expect("clean exit");
}

#[test]
fn binary_refuses_broken_policies_naming_file_policy_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: { name: typo }\nspec:\n  evaluation: { mode: Envoy }\n  validations:\n  - expression: envoy.Allowed().Response()\n  - expression: 'envoy.Denied(403'\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(["serve", "--policies"])
        .arg(&file)
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to start"), "{err}");
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("ValidatingPolicy \"typo\""), "{err}");
    assert!(err.contains("spec.validations[1].expression"), "{err}");
}

#[test]
fn binary_exits_zero_on_sigterm() {
    let http_port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(["serve", "--policies"])
        .arg(repo("policies"))
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    let start = Instant::now();
    while get_blocking(addr, "/readyz").map(|r| r.0).ok() != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("celgate did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
