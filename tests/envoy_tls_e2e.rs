//! A real Envoy calling celgate over mutual TLS, with the shipped
//! `examples/envoy/envoy-mtls.yaml` (only its ports, certificate paths and
//! ext_authz timeout changed):
//!
//! ```text
//! test client ──HTTP/1.1──▶ Envoy (ext_authz) ──gRPC Check over mTLS──▶ celgate --tls-client-ca --tls-client-san
//!                              │
//!                              └──(if allowed)──▶ echo upstream (in-test)
//! ```
//!
//! The certificates are made here with rcgen: one CA, celgate's server
//! certificate (DNS name `celgate.internal`), Envoy's client certificate
//! (a SPIFFE URI). With a client name celgate admits, the bundled policies
//! decide; with any other client certificate, or none, the handshake is
//! refused, ext_authz fails, and Envoy (`failure_mode_allow: false`) answers
//! 403 to every request: the caller never gets a decision.
//!
//! Needs an Envoy binary like tests/envoy_e2e.rs (`$CELGATE_ENVOY`, ...).

mod common;

use common::{http_get, repo_root, upstream_header, Gateway};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const EXAMPLE: &str = "examples/envoy/envoy-mtls.yaml";
const SPIFFE_ENVOY: &str = "spiffe://cluster.local/ns/gw/sa/envoy";
const SERVER_NAME: &str = "celgate.internal";

/// A CA and the PEM files it issued, in a temporary directory.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki {
            ca,
            dir: tempfile::tempdir().unwrap(),
        };
        pki.write("ca.pem", &pki.ca.pem());
        pki.leaf(
            "celgate",
            SanType::DnsName(SERVER_NAME.try_into().unwrap()),
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).unwrap();
    }

    /// A certificate of this CA with these names: (certificate, key), PEM.
    fn issue(&self, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, "leaf");
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes `<stem>.pem` and `<stem>.key`: a certificate of this CA with
    /// one name.
    fn leaf(&self, stem: &str, san: SanType, usage: ExtendedKeyUsagePurpose) {
        let (cert, key) = self.issue(vec![san], usage);
        self.write(&format!("{stem}.pem"), &cert);
        self.write(&format!("{stem}.key"), &key);
    }

    fn client(&self, stem: &str, uri: &str) {
        self.leaf(
            stem,
            SanType::URI(uri.try_into().unwrap()),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
    }

    /// celgate's TLS flags: its certificate, this CA for clients, one name
    /// allowed.
    fn celgate_args(&self) -> Vec<String> {
        let p = |n: &str| self.path(n).to_str().unwrap().to_owned();
        vec![
            "--tls-cert".into(),
            p("celgate.pem"),
            "--tls-key".into(),
            p("celgate.key"),
            "--tls-client-ca".into(),
            p("ca.pem"),
            "--tls-client-san".into(),
            SPIFFE_ENVOY.into(),
            // The refusal is logged at info.
            "--log".into(),
            "info".into(),
        ]
    }
}

/// Which client certificate Envoy presents.
#[derive(Clone, Copy)]
enum Client<'a> {
    /// `<stem>.pem` / `<stem>.key` in the Pki directory.
    Cert(&'a str),
    /// None at all (`tls_certificates` removed).
    None,
}

/// Every value of key `key` anywhere in `v`.
fn each_value_mut<'a>(v: &'a mut Value, key: &str, out: &mut Vec<&'a mut Value>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if k == key {
                    out.push(child);
                } else {
                    each_value_mut(child, key, out);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| each_value_mut(c, key, out)),
        _ => {}
    }
}

fn cluster_mut<'a>(config: &'a mut Value, name: &str) -> &'a mut Value {
    config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{EXAMPLE}: no cluster {name}"))
}

fn set_endpoint_port(cluster: &mut Value, port: u16) {
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]["port_value"] = port.into();
}

/// The shipped example with the test's ports, the Pki's files for
/// `certs/…`, `client` as Envoy's certificate and a longer ext_authz timeout
/// (a loaded CI machine must not turn into a 403).
fn envoy_config(example: &str, p: &common::Ports, pki: &Pki, client: Client) -> String {
    let mut config: Value = serde_yaml_ng::from_str(example).expect(EXAMPLE);
    config["admin"]["address"]["socket_address"]["port_value"] = p.admin.into();
    let listener = &mut config["static_resources"]["listeners"][0];
    listener["address"]["socket_address"]["port_value"] = p.listen.into();
    let mut timeouts = Vec::new();
    each_value_mut(listener, "grpc_service", &mut timeouts);
    assert_eq!(timeouts.len(), 1, "{EXAMPLE}: one ext_authz grpc_service");
    timeouts[0]["timeout"] = "5s".into();
    set_endpoint_port(cluster_mut(&mut config, "upstream"), p.upstream);
    let celgate = cluster_mut(&mut config, "celgate");
    set_endpoint_port(celgate, p.grpc);
    let common_tls = &mut celgate["transport_socket"]["typed_config"]["common_tls_context"];
    match client {
        Client::Cert(stem) => {
            let cert = &mut common_tls["tls_certificates"][0];
            cert["certificate_chain"]["filename"] = format!("certs/{stem}.pem").into();
            cert["private_key"]["filename"] = format!("certs/{stem}.key").into();
        }
        Client::None => {
            common_tls
                .as_object_mut()
                .unwrap()
                .remove("tls_certificates")
                .expect("tls_certificates");
        }
    }
    let mut files = Vec::new();
    each_value_mut(&mut config, "filename", &mut files);
    assert!(!files.is_empty(), "{EXAMPLE}: the certificate files");
    for f in files {
        let name = f.as_str().unwrap().to_owned();
        let stem = name
            .strip_prefix("certs/")
            .unwrap_or_else(|| panic!("{EXAMPLE}: {name} is not under certs/"));
        let path = pki.path(stem);
        assert!(path.is_file(), "{EXAMPLE} expects {name}");
        *f = path.to_str().unwrap().into();
    }
    serde_json::to_string_pretty(&config).unwrap()
}

/// celgate on the bundled policies with mTLS, and Envoy from the example
/// presenting `client`. Returns the gateway and Envoy's admin address.
async fn start(pki: &Pki, client: Client<'_>) -> (Gateway, SocketAddr) {
    let example = std::fs::read_to_string(repo_root().join(EXAMPLE)).expect(EXAMPLE);
    let args = pki.celgate_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut admin = 0;
    let gateway = Gateway::start(&repo_root().join("policies"), &args, |p| {
        admin = p.admin;
        envoy_config(&example, p, pki, client)
    })
    .await;
    (gateway, common::loopback(admin))
}

/// Envoy's counter `name` (0 when it does not exist yet).
async fn counter(admin: SocketAddr, name: &str) -> u64 {
    let resp = http_get(admin, &format!("/stats?filter=^{name}$"), &[])
        .await
        .expect("Envoy admin /stats");
    assert_eq!(resp.status, 200);
    resp.text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_with_an_allowed_client_certificate_gets_decisions() {
    let pki = Pki::new();
    pki.client("envoy", SPIFFE_ENVOY);
    let (h, admin) = start(&pki, Client::Cert("envoy")).await;

    // The bundled policies, decided by celgate over the mTLS connection.
    let (_, seen) = h.allowed("GET", "/healthz", &[], None).await;
    assert_eq!(seen["path"], "/healthz");
    let resp = h.denied(401, "GET", "/api/orders", &[], None).await;
    assert_eq!(resp.text(), "missing api key\n");
    assert_eq!(
        resp.header("www-authenticate"),
        Some(r#"ApiKey realm="celgate""#)
    );
    let resp = h
        .denied(403, "GET", "/api/orders", &[("x-api-key", "guess")], None)
        .await;
    assert_eq!(resp.text(), "unknown api key\n", "celgate's own 403");
    h.denied(404, "GET", "/admin", &[], None).await;
    let (_, seen) = h
        .allowed(
            "POST",
            "/api/orders",
            &[("x-api-key", "demo-key-bob")],
            Some(b"{}"),
        )
        .await;
    assert_eq!(upstream_header(&seen, "x-user"), vec!["bob"]);
    assert!(upstream_header(&seen, "x-api-key").is_empty());

    // Every check was answered, over TLS.
    assert_eq!(counter(admin, "http.ingress_http.ext_authz.error").await, 0);
    assert_eq!(counter(admin, "http.ingress_http.ext_authz.ok").await, 2);
    assert_eq!(
        counter(admin, "http.ingress_http.ext_authz.denied").await,
        3
    );
    assert!(counter(admin, "cluster.celgate.ssl.handshake").await >= 1);
    assert_eq!(
        counter(admin, "cluster.celgate.ssl.fail_verify_san").await,
        0
    );

    let mut h = h;
    h.celgate.check_alive().unwrap_or_else(|e| panic!("{e}"));
    h.envoy.check_alive().unwrap_or_else(|e| panic!("{e}"));
}

/// Requests a policy would allow (`/healthz`) or answer with its own 401
/// (`/api/orders` without a key) all get Envoy's 403 for a failed check,
/// and none reaches the upstream.
async fn assert_no_decision(h: &Gateway, admin: SocketAddr) {
    for (target, policy_status) in [("/healthz", 200), ("/api/orders", 401)] {
        let resp = h.denied(403, "GET", target, &[], None).await;
        assert_ne!(resp.status, policy_status);
        assert!(
            resp.header("www-authenticate").is_none(),
            "{target}: a header of celgate's denial reached the client: {:?}",
            resp.headers
        );
    }
    assert_eq!(counter(admin, "http.ingress_http.ext_authz.ok").await, 0);
    assert_eq!(
        counter(admin, "http.ingress_http.ext_authz.denied").await,
        0
    );
    assert_eq!(counter(admin, "http.ingress_http.ext_authz.error").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_name_outside_the_allow_list_gets_no_decision() {
    let pki = Pki::new();
    // Issued by the trusted CA, but for another service account.
    pki.client("other", "spiffe://cluster.local/ns/gw/sa/other");
    let (h, admin) = start(&pki, Client::Cert("other")).await;
    assert_no_decision(&h, admin).await;
    let log = h.celgate.log_tail();
    assert!(
        log.contains("none of its names is in --tls-client-san"),
        "celgate should say why it refused the handshake:\n{log}"
    );
    assert!(
        !log.contains("spiffe://cluster.local/ns/gw/sa/other"),
        "the refused client's name is not logged:\n{log}"
    );
    let mut h = h;
    h.celgate.check_alive().unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_without_a_client_certificate_gets_no_decision() {
    let pki = Pki::new();
    let (h, admin) = start(&pki, Client::None).await;
    assert_no_decision(&h, admin).await;
    let mut h = h;
    h.celgate.check_alive().unwrap_or_else(|e| panic!("{e}"));
}

/// Certificate files the example names must all be under `certs/`, and the
/// test above must have rewritten every one of them.
#[test]
fn example_names_its_certificate_files_under_certs() {
    let text = std::fs::read_to_string(repo_root().join(EXAMPLE)).unwrap();
    let mut config: Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut files = Vec::new();
    each_value_mut(&mut config, "filename", &mut files);
    let mut names: Vec<&str> = files.iter().map(|f| f.as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        ["certs/ca.pem", "certs/envoy.key", "certs/envoy.pem"],
        "{EXAMPLE}"
    );
    for name in names {
        assert!(
            text.contains(&format!("#   {name}")),
            "{EXAMPLE}: the comment lists {name}"
        );
    }
    for flag in [
        "--tls-cert certs/celgate.pem",
        "--tls-key certs/celgate.key",
        "--tls-client-ca certs/ca.pem",
        "--tls-client-san spiffe://cluster.local/ns/gw/sa/envoy",
    ] {
        assert!(
            text.contains(flag),
            "{EXAMPLE}: the run command uses {flag}"
        );
    }
}

// ---------------------------------------------------------------------------
// The Kubernetes variant: deploy/kubernetes/tls (celgate's flags) and
// tls/gateway (Envoy with file-based SDS), run here with the Secrets laid out
// as Kubernetes mounts them.
// ---------------------------------------------------------------------------

const TLS_OVERLAY: &str = "deploy/kubernetes/tls";

fn yaml_docs(file: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(repo_root().join(file)).expect(file);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect(file))
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// The Certificate `name` of `file`.
fn certificate(file: &str, name: &str) -> Value {
    yaml_docs(file)
        .into_iter()
        .find(|d| d["kind"] == "Certificate" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{file}: no Certificate {name}"))
}

/// A directory laid out like a Secret volume: each key a link to
/// `..data/<key>`, `..data` a link to a timestamped directory, replaced in
/// one rename when the Secret changes.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    fn new(dir: PathBuf, files: &[(&str, &str)]) -> SecretVolume {
        std::fs::create_dir_all(&dir).unwrap();
        let mut volume = SecretVolume { dir, version: 0 };
        volume.update(files);
        for (key, _) in files {
            std::os::unix::fs::symlink(format!("..data/{key}"), volume.dir.join(key)).unwrap();
        }
        volume
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..2026_11_30_00_00_{:02}.{}", self.version, self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        for (key, text) in files {
            std::fs::write(self.dir.join(&version).join(key), text).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }
}

/// Replaces every string equal to `from`, or starting with `from/`, with
/// `to` in its place.
fn move_paths(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) if s == from || s.starts_with(&format!("{from}/")) => {
            *s = format!("{to}{}", &s[from.len()..]);
        }
        Value::Object(m) => m.values_mut().for_each(|c| move_paths(c, from, to)),
        Value::Array(a) => a.iter_mut().for_each(|c| move_paths(c, from, to)),
        _ => {}
    }
}

/// The gateway's Envoy config with loopback addresses, the test's ports and
/// its files: `/etc/envoy/…` is `envoy_dir` (where the SDS files are
/// copied, their paths moved too), `/etc/celgate-client-tls` the client
/// Secret volume.
fn gateway_config(p: &common::Ports, envoy_dir: &Path, client_tls: &str) -> String {
    let file = format!("{TLS_OVERLAY}/gateway/envoy.yaml");
    let text = std::fs::read_to_string(repo_root().join(&file)).unwrap();
    let mut config: Value = serde_yaml_ng::from_str(&text).unwrap();
    config["admin"]["address"]["socket_address"]["port_value"] = p.admin.into();
    let listener = &mut config["static_resources"]["listeners"][0];
    listener["address"]["socket_address"] =
        serde_json::json!({"address": "127.0.0.1", "port_value": p.listen});
    let mut services = Vec::new();
    each_value_mut(listener, "grpc_service", &mut services);
    services[0]["timeout"] = "5s".into();
    for (cluster, port) in [("app", p.upstream), ("celgate", p.grpc)] {
        let c = cluster_mut(&mut config, cluster);
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"] = serde_json::json!({"address": "127.0.0.1", "port_value": port});
    }
    let envoy_dir = envoy_dir.to_str().unwrap();
    let mut sources = Vec::new();
    each_value_mut(&mut config, "path_config_source", &mut sources);
    assert_eq!(
        sources.len(),
        2,
        "{file}: the client certificate and the CA"
    );
    for source in sources {
        let path = source["path"].as_str().unwrap();
        let name = path
            .strip_prefix("/etc/envoy/")
            .unwrap_or_else(|| panic!("{file}: {path} is not in the ConfigMap's directory"));
        let sds_file = format!("{TLS_OVERLAY}/gateway/{name}");
        let mut sds: Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(repo_root().join(&sds_file)).expect(&sds_file),
        )
        .unwrap();
        move_paths(&mut sds, "/etc/celgate-client-tls", client_tls);
        std::fs::write(
            Path::new(envoy_dir).join(name),
            serde_json::to_string(&sds).unwrap(),
        )
        .unwrap();
    }
    move_paths(&mut config, "/etc/envoy", envoy_dir);
    move_paths(&mut config, "/etc/celgate-client-tls", client_tls);
    let text = serde_json::to_string_pretty(&config).unwrap();
    assert!(
        !text.contains("\"/etc/"),
        "{file}: a path left unmapped:\n{text}"
    );
    text
}

/// The Kubernetes gateway starts with a client certificate celgate refuses
/// (every request 403, no decision); cert-manager renews its Secret with an
/// allowed one, and Envoy's file-based SDS picks it up without a restart:
/// decisions again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_gateway_reloads_its_client_certificate_from_the_secret() {
    let pki = Pki::new();
    let root = pki.dir.path();

    // celgate's Secret (certificate.yaml's names) and the flags the overlay adds.
    let server = certificate(&format!("{TLS_OVERLAY}/certificate.yaml"), "celgate-tls");
    let dns: Vec<SanType> = strings(&server["spec"]["dnsNames"])
        .into_iter()
        .map(|n| SanType::DnsName(n.try_into().unwrap()))
        .collect();
    let (cert, key) = pki.issue(dns, ExtendedKeyUsagePurpose::ServerAuth);
    let ca = pki.ca.pem();
    let celgate_tls = SecretVolume::new(
        root.join("celgate-tls"),
        &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca)],
    );
    let patch = yaml_docs(&format!("{TLS_OVERLAY}/deployment-patch.yaml"));
    let mut args: Vec<String> = patch[0]
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| op["path"] == "/spec/template/spec/containers/0/args/-")
        .map(|op| op["value"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        args.iter().any(|a| a.starts_with("--tls-client-san=")),
        "{args:?}"
    );
    for a in &mut args {
        *a = a.replace("=/etc/celgate/tls/", &format!("={}/", celgate_tls.path()));
        if let Some((_, path)) = a.split_once(&format!("={}/", celgate_tls.path())) {
            assert!(
                celgate_tls.dir.join(path).is_file(),
                "{a}: not a key of the Secret"
            );
        }
    }
    args.extend(["--log".into(), "info".into()]);

    // The gateway's Secret: first a certificate for another service account.
    let client = certificate(
        &format!("{TLS_OVERLAY}/gateway/certificate.yaml"),
        "celgate-client",
    );
    let uris = strings(&client["spec"]["uris"]);
    assert_eq!(uris, [SPIFFE_ENVOY]);
    let issue_client = |uri: &str| {
        pki.issue(
            vec![SanType::URI(uri.try_into().unwrap())],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    };
    let (cert, key) = issue_client("spiffe://cluster.local/ns/gw/sa/default");
    let mut client_tls = SecretVolume::new(
        root.join("celgate-client-tls"),
        &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca)],
    );
    let envoy_dir = root.join("envoy");
    std::fs::create_dir(&envoy_dir).unwrap();

    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut admin = 0;
    let h = Gateway::start(&repo_root().join("policies"), &args, |p| {
        admin = p.admin;
        gateway_config(p, &envoy_dir, client_tls.path())
    })
    .await;
    let admin = common::loopback(admin);
    assert_no_decision(&h, admin).await;

    // Renewed, as the Certificate asks: Envoy reloads and celgate decides.
    let (cert, key) = issue_client(&uris[0]);
    client_tls.update(&[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca)]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let before = h.upstream.count();
        let resp = h.send("GET", "/healthz", &[], None).await;
        if resp.status == 200 {
            assert_eq!(h.upstream.count(), before + 1);
            break;
        }
        assert_eq!(resp.status, 403, "{:?}", resp.text());
        assert!(
            std::time::Instant::now() < deadline,
            "Envoy did not pick up the renewed client certificate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let resp = h.denied(401, "GET", "/api/orders", &[], None).await;
    assert_eq!(resp.text(), "missing api key\n");
    let (_, seen) = h
        .allowed(
            "GET",
            "/api/orders",
            &[("x-api-key", "demo-key-alice")],
            None,
        )
        .await;
    assert_eq!(upstream_header(&seen, "x-user"), vec!["alice"]);
}
