//! The run-time cost budget: an expression whose work grows with what the
//! request sends is stopped once the request has spent its budget
//! (`--cost-budget`), and the policy's `failurePolicy` decides: `Fail`
//! denies with the failure denial. The load-time estimate would refuse the
//! policy below first; it is raised here (`--max-expression-cost`) so that
//! the meter is what stops it.

mod common;

use celgate::engine::{evaluate, EngineConfig, ErrorKind};
use celgate::policy::PolicySet;
use common::{free_ports, http_get, loopback, wait_http_200, ChildGuard};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Denies a tool call whose `ids` repeat: `distinct()` compares every pair,
/// so its work is the square of the list a client sends.
const POLICY: &str = r#"apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: { name: distinct-ids }
spec:
  evaluation: { mode: Envoy }
  failurePolicy: Fail
  variables:
  - name: args
    expression: mcp.Parse(object.attributes.request.http.body).ToolCall.Arguments
  validations:
  - expression: >
      size(variables.args.ids.distinct()) != size(variables.args.ids)
        ? envoy.Denied(400).WithBody("repeated ids").Response()
        : null
"#;

fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("distinct.yaml"), POLICY).unwrap();
    dir
}

/// A tools/call whose `ids` are `n` distinct numbers.
fn body(n: usize) -> String {
    let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"fetch","arguments":{{"ids":[{}]}}}}}}"#,
        ids.join(",")
    )
}

fn request(body: String) -> CheckRequest {
    celgate::request_json::from_value(&serde_json::json!({
        "attributes": {"request": {"http": {"method": "POST", "path": "/mcp", "body": body}}}
    }))
    .unwrap()
}

fn load(dir: &Path) -> PolicySet {
    celgate::cel::check::cost::configure(u64::MAX);
    celgate::mcp::configure(1 << 20);
    PolicySet::load(&[dir.to_path_buf()]).expect("the policy loads with the estimate raised")
}

#[test]
fn a_quadratic_expression_on_a_200_kb_body_is_stopped_and_denied() {
    let dir = policy_dir();
    let set = load(dir.path());
    let config = EngineConfig::default();

    // A small list is decided by the policy.
    let d = evaluate(&set, &config, &request(body(100)));
    assert!(d.allowed(), "{d:?}");

    let big = body(36_000);
    assert!(big.len() >= 200_000, "{} bytes", big.len());
    let started = Instant::now();
    let d = evaluate(&set, &config, &request(big));
    let took = started.elapsed();
    println!("200 KB body: stopped after {took:?}");
    assert!(!d.allowed());
    assert_eq!(d.http_status(), 403);
    let e = d.error.as_ref().expect("an evaluation error decided");
    assert_eq!(e.kind, ErrorKind::CostExceeded, "{e:?}");
    assert_eq!(e.field, "spec.validations[0].expression");
    // The pairs are counted before they are compared: stopping takes the
    // time to parse the body, not the time to compare 648 million pairs
    // (seconds). Generous for a debug build on a busy machine.
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // The same request within a budget large enough is decided by the policy.
    let roomy = EngineConfig {
        cost_budget: u64::MAX,
        ..EngineConfig::default()
    };
    let d = evaluate(&set, &roomy, &request(body(2_000)));
    assert!(d.allowed(), "{d:?}");
    let tight = EngineConfig {
        cost_budget: 1_000,
        ..EngineConfig::default()
    };
    let d = evaluate(&set, &tight, &request(body(2_000)));
    assert_eq!(
        d.error.as_ref().map(|e| e.kind),
        Some(ErrorKind::CostExceeded)
    );
}

#[test]
fn the_decision_deadline_stops_an_evaluation_as_the_budget_does() {
    let dir = policy_dir();
    let set = load(dir.path());
    let unmetered = EngineConfig {
        cost_budget: u64::MAX,
        ..EngineConfig::default()
    };
    // Without a budget nothing else would stop it; a deadline already
    // passed stops it at the first reading of the clock (the meter reads it
    // every 16,384 units, and parsing the body alone charges more).
    let started = Instant::now();
    let (d, _) = celgate::engine::evaluate_within(
        &set,
        &unmetered,
        &request(body(36_000)),
        Some(Instant::now()),
        false,
    );
    let took = started.elapsed();
    println!("stopped by a passed deadline after {took:?}");
    assert!(!d.allowed());
    assert_eq!(
        d.error.as_ref().map(|e| e.kind),
        Some(ErrorKind::CostExceeded)
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// Through the binary: four such requests at once are denied with the
/// failure denial, and gRPC health and `/readyz` answer meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_while_costly_requests_are_stopped() {
    let dir = policy_dir();
    let ports = free_ports(2);
    let (grpc, http) = (loopback(ports[0]), loopback(ports[1]));
    let logs = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(common::celgate_bin());
    cmd.args(["serve", "--no-watch", "--policies"])
        .arg(dir.path())
        .args(["--grpc-addr", &grpc.to_string()])
        .args(["--http-addr", &http.to_string()])
        .args(["--max-expression-cost", "18446744073709551615"])
        .args(["--decision-timeout-ms", "30000"]);
    let mut server = ChildGuard::spawn("celgate", cmd, logs.path());
    wait_http_200(http, "/readyz", Duration::from_secs(15), &mut server)
        .await
        .unwrap();

    let big = body(36_000);
    let mut calls = Vec::new();
    for _ in 0..4 {
        let req = request(big.clone());
        calls.push(tokio::spawn(async move {
            let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
                .await
                .unwrap();
            let t = Instant::now();
            let r = client.check(req).await.unwrap().into_inner();
            (r, t.elapsed())
        }));
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        let ready = http_get(http, "/readyz", &[]).await.unwrap();
        assert_eq!(ready.status, 200);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("slowest health + /readyz round while four costly requests ran: {worst:?}");
    assert!(worst < Duration::from_secs(1), "probes took {worst:?}");
    for c in calls {
        let (r, took) = c.await.unwrap();
        println!("costly request answered in {took:?}");
        let Some(HttpResponse::DeniedResponse(d)) = r.http_response else {
            panic!("not denied: {r:?}");
        };
        assert_eq!(d.status.map(|s| s.code), Some(403));
        assert!(
            d.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .any(|h| { h.key == "x-celgate-failure" && h.value == "evaluation" }),
            "{:?}",
            d.headers
        );
    }
    server.stop();
}
