//! `GET /report` and `celgate report` against the real binary: exact
//! per-policy counts after a known sequence of checks, recent windows that
//! forget old counts while the since-start ones keep them, a policy removed
//! by a reload marked, the table pinned as a snapshot, HTTPS, and the exit
//! status when the server cannot be reached.

mod common;

use common::{free_port, get_blocking, loopback, serve_ready};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Denies /admin; skipped elsewhere (a matchCondition).
const DENY_ADMIN: &str = r#"apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: report-deny-admin
spec:
  evaluation:
    mode: Envoy
  matchConditions:
  - name: admin
    expression: object.attributes.request.http.path.startsWith("/admin")
  validations:
  - expression: envoy.Denied(403).Response()
"#;

/// An evaluation error on /boom (ignored: failurePolicy Ignore); no result
/// elsewhere.
const ERRORS: &str = r#"apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: report-errors
spec:
  evaluation:
    mode: Envoy
  failurePolicy: Ignore
  validations:
  - expression: >
      object.attributes.request.http.path == "/boom" && object.attributes.request.http.headers["no-such-header"] == "x"
        ? envoy.Denied(403).Response()
        : null
"#;

/// Allows /public; no result elsewhere.
const ALLOW_PUBLIC: &str = r#"apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: report-allow-public
spec:
  evaluation:
    mode: Envoy
  validations:
  - expression: >
      object.attributes.request.http.path.startsWith("/public")
        ? envoy.Allowed().Response()
        : null
"#;

/// Would deny /admin, but is not enforced (`validationActions: [Audit]`);
/// no result elsewhere.
const AUDIT_ADMIN: &str = r#"apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: report-audit-admin
spec:
  evaluation:
    mode: Envoy
  validationActions: [Audit]
  validations:
  - expression: >
      object.attributes.request.http.path == "/admin"
        ? envoy.Denied(403).Response()
        : null
"#;

/// The shadow set: allows /admin, which the served set denies.
const SHADOW_OPEN: &str = r#"apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: report-shadow-open
spec:
  evaluation:
    mode: Envoy
  validations:
  - expression: >
      object.attributes.request.http.path == "/admin"
        ? envoy.Allowed().Response()
        : null
"#;

fn write_policies(dir: &Path) {
    std::fs::write(dir.join("00-audit-admin.yaml"), AUDIT_ADMIN).unwrap();
    std::fs::write(dir.join("01-deny-admin.yaml"), DENY_ADMIN).unwrap();
    std::fs::write(dir.join("02-errors.yaml"), ERRORS).unwrap();
    std::fs::write(dir.join("03-allow-public.yaml"), ALLOW_PUBLIC).unwrap();
}

struct Server {
    child: Child,
    grpc: u16,
    http: u16,
}

impl Server {
    fn start(policies: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let (child, grpc, http) = serve_ready(policies, extra, env);
        Server { child, grpc, http }
    }

    fn report(&self) -> Value {
        let (status, body) = get_blocking(loopback(self.http), "/report").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn request(path: &str) -> CheckRequest {
    celgate::request_json::from_value(&serde_json::json!({"attributes": {
        "request": {"http": {"method": "GET", "host": "api.example", "path": path}}
    }}))
    .unwrap()
}

/// Sends the checks, one after another; the gRPC status codes.
async fn check(grpc: u16, paths: &[&str]) -> Vec<i32> {
    let mut c = AuthorizationClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .unwrap();
    let mut out = Vec::new();
    for p in paths {
        let resp = c.check(request(p)).await.unwrap().into_inner();
        out.push(resp.status.map(|s| s.code).unwrap_or(-1));
    }
    out
}

/// The checks of the first batch. The policies run by name:
/// report-allow-public allows /public (the others do not run) and has no
/// result elsewhere; report-audit-admin would deny /admin (not enforced:
/// the next policy runs) and has no result elsewhere; report-deny-admin
/// denies /admin and is skipped elsewhere; report-errors has an (ignored)
/// error on /boom and no result elsewhere. The shadow set allows /admin:
/// two disagreements, decided by report-deny-admin and report-shadow-open.
const BATCH: [&str; 7] = [
    "/admin", "/admin", "/public", "/public", "/public", "/boom", "/other",
];

fn policy<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {report}"))
}

/// The counts, as `field=n` for the non-zero ones, in field order.
fn nonzero(counts: &Value) -> String {
    let mut out = Vec::new();
    for f in celgate::telemetry::report::FIELDS {
        let n = counts[f]
            .as_u64()
            .unwrap_or_else(|| panic!("{f} in {counts}"));
        if n > 0 {
            out.push(format!("{f}={n}"));
        }
    }
    out.join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_counts_every_outcome_per_policy_and_prints_a_table() {
    let dir = tempfile::tempdir().unwrap();
    write_policies(dir.path());
    let shadow = tempfile::tempdir().unwrap();
    std::fs::write(shadow.path().join("open.yaml"), SHADOW_OPEN).unwrap();
    let shadow_arg = shadow.path().to_str().unwrap();
    let server = Server::start(
        dir.path(),
        &["--no-watch", "--shadow-policies", shadow_arg],
        &[],
    );
    // Before any check: every policy served, all zero, every field present.
    let r = server.report();
    let names: Vec<&str> = r["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    // In evaluation order (by name), then the shadow set.
    assert_eq!(
        names,
        [
            "report-allow-public",
            "report-audit-admin",
            "report-deny-admin",
            "report-errors",
            "report-shadow-open"
        ]
    );
    for p in r["policies"].as_array().unwrap() {
        let shadow = p["name"] == "report-shadow-open";
        assert_eq!(p["served"], !shadow, "{p}");
        assert_eq!(p["shadow"], shadow, "{p}");
        for w in ["since_start", "last_5m", "last_1h"] {
            assert_eq!(nonzero(&p[w]), "", "{p}");
            assert_eq!(
                p[w].as_object().unwrap().len(),
                celgate::telemetry::report::FIELDS.len()
            );
        }
    }
    assert_eq!(r["counting"], true);
    assert_eq!(r["windows"]["last_5m"]["minutes"], 5);
    assert_eq!(r["windows"]["last_1h"]["minutes"], 60);

    let codes = check(server.grpc, &BATCH).await;
    // PERMISSION_DENIED (7) for the two /admin, OK for the rest.
    assert_eq!(codes, [7, 7, 0, 0, 0, 0, 0]);
    // The shadow set decides after the answers are sent.
    let r = until(
        &server,
        "the shadow decisions",
        Duration::from_secs(10),
        |r| policy(r, "report-shadow-open")["since_start"]["shadow_disagreements"] == 2,
    );
    let expected = [
        ("report-allow-public", "evaluated=7 allowed=3 no_result=4"),
        ("report-audit-admin", "evaluated=4 no_result=2 audit_deny=2"),
        // The policy index rules it out for the paths it cannot match:
        // those are not counted (skipped counts evaluated false conditions).
        (
            "report-deny-admin",
            "evaluated=2 denied=2 shadow_disagreements=2",
        ),
        ("report-errors", "evaluated=2 no_result=1 errors=1"),
        ("report-shadow-open", "shadow_disagreements=2"),
    ];
    for (name, counts) in expected {
        let p = policy(&r, name);
        // A young process: the windows hold everything since the start.
        for w in ["since_start", "last_5m", "last_1h"] {
            assert_eq!(nonzero(&p[w]), counts, "{name} {w}: {p}");
        }
    }

    // The table, as `celgate report` prints it.
    let url = format!("http://127.0.0.1:{}", server.http);
    let out = Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(["report", "--url", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    insta::assert_snapshot!("report_table", String::from_utf8(out.stdout).unwrap());

    // --format json prints the server's report.
    let out = Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(["report", "--url", &url, "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        nonzero(&policy(&v, "report-errors")["since_start"]),
        "evaluated=2 no_result=1 errors=1"
    );
}

/// Polls the report until `cond` holds.
fn until(server: &Server, what: &str, within: Duration, cond: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let r = server.report();
        if cond(&r) {
            return r;
        }
        assert!(start.elapsed() < within, "{what}: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_forget_old_counts_and_removed_policies_are_marked() {
    let dir = tempfile::tempdir().unwrap();
    write_policies(dir.path());
    // A 200 ms "minute": the 5-minute window is 1 s, the hour 12 s (when a
    // removed policy drops out of the report: tested in the unit tests).
    let server = Server::start(
        dir.path(),
        &["--reload-quiet-ms", "50", "--reload-settle-ms", "0"],
        &[("CELGATE_TEST_REPORT_MINUTE_MS", "200")],
    );
    check(server.grpc, &BATCH).await;
    let r = server.report();
    assert_eq!(
        nonzero(&policy(&r, "report-deny-admin")["since_start"]),
        "evaluated=2 denied=2"
    );
    // The batch leaves the 5-minute window; since the start keeps it.
    until(
        &server,
        "the batch leaves last_5m",
        Duration::from_secs(10),
        |r| nonzero(&policy(r, "report-deny-admin")["last_5m"]).is_empty(),
    );
    check(server.grpc, &["/admin"]).await;
    let r = server.report();
    let p = policy(&r, "report-deny-admin");
    assert_eq!(nonzero(&p["last_5m"]), "evaluated=1 denied=1", "{p}");
    assert_eq!(nonzero(&p["since_start"]), "evaluated=3 denied=3", "{p}");
    assert!(
        r["windows"]["last_5m"]["seconds"].as_u64().unwrap() < 5,
        "{r}"
    );

    // A reload removes report-allow-public: it is listed after the served
    // policies, marked, with its counts.
    std::fs::remove_file(dir.path().join("03-allow-public.yaml")).unwrap();
    let r = until(&server, "the reload", Duration::from_secs(10), |r| {
        r["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "report-allow-public" && p["served"] == false)
    });
    let list: Vec<(&str, bool)> = r["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["served"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        list,
        [
            ("report-audit-admin", true),
            ("report-deny-admin", true),
            ("report-errors", true),
            ("report-allow-public", false)
        ]
    );
    assert_eq!(
        nonzero(&policy(&r, "report-allow-public")["since_start"]),
        "evaluated=8 allowed=3 no_result=5"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args([
            "report",
            "--url",
            &format!("http://127.0.0.1:{}", server.http),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    let removed: Vec<&str> = table.lines().filter(|l| l.contains("(removed)")).collect();
    assert_eq!(removed.len(), 1, "{table}");
    assert!(
        removed[0].starts_with("report-allow-public (removed)  since start  "),
        "{table}"
    );
}

#[test]
fn report_exits_1_when_the_server_cannot_be_reached_and_2_on_a_bad_url() {
    // A port nothing listens on.
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(["report", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("celgate report: http://127.0.0.1:{port}/report: ")),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(["report", "--url", "127.0.0.1:9192"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected http(s)://host[:port]"), "{err}");
}

/// A CA and a server certificate for localhost and 127.0.0.1: (CA PEM,
/// certificate PEM, key PEM).
fn tls_files() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "report CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress([127, 0, 0, 1].into()),
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (issuer.pem(), cert.pem(), key.serialize_pem())
}

/// `celgate report` over HTTPS: the server name is the URL's host (or
/// --server-name), the CA is --ca-cert; without it the server is not
/// trusted (exit 1).
#[test]
fn report_speaks_https_like_healthcheck() {
    let dir = tempfile::tempdir().unwrap();
    write_policies(dir.path());
    let (ca, cert, key) = tls_files();
    let tls = tempfile::tempdir().unwrap();
    for (name, pem) in [("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key)] {
        std::fs::write(tls.path().join(name), pem).unwrap();
    }
    let ca = tls.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_celgate"))
        .args(["serve", "--no-watch", "--policies"])
        .arg(dir.path())
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .arg("--http-tls-cert")
        .arg(tls.path().join("cert.pem"))
        .arg("--http-tls-key")
        .arg(tls.path().join("key.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let report = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_celgate"))
            .arg("report")
            .args(args)
            .output()
            .unwrap()
    };
    let by_ip = format!("https://127.0.0.1:{http}");
    let start = Instant::now();
    let out = loop {
        let out = report(&["--url", &by_ip, "--ca-cert", ca, "--format", "json"]);
        if out.status.success() {
            break out;
        }
        assert!(child.try_wait().unwrap().is_none(), "celgate exited");
        assert!(start.elapsed() < Duration::from_secs(30), "{out:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["policies"].as_array().unwrap().len(), 4, "{v}");
    let by_name = format!("https://localhost:{http}");
    let out = report(&["--url", &by_name, "--ca-cert", ca]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("POLICY "));
    let forced = format!("http://127.0.0.1:{http}");
    let out = report(&[
        "--url",
        &forced,
        "--ca-cert",
        ca,
        "--server-name",
        "localhost",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = report(&["--url", &by_ip]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ca-cert"), "{err}");
    let _ = child.kill();
    let _ = child.wait();
}
