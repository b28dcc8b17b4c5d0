//! `celgate serve --tls-cert/--tls-key` (and `--tls-client-ca`,
//! `--tls-client-san`) as a process, called with a tonic TLS client and
//! with raw rustls handshakes; certificates are made here with rcgen.

mod common;

use common::{celgate_bin, free_ports, get_blocking, loopback, ChildGuard};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const SPIFFE_ENVOY: &str = "spiffe://cluster.local/ns/gw/sa/envoy";

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, key PEM) of a leaf with these names.
    fn leaf(&self, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, "leaf");
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server(&self) -> (String, String) {
        self.leaf(
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client_uri(&self, uri: &str) -> (String, String) {
        self.leaf(
            vec![SanType::URI(uri.try_into().unwrap())],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// Writes `text` to `dir/name` and returns the path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

struct Server {
    child: ChildGuard,
    grpc_port: u16,
}

/// `celgate serve` on the bundled policies, unwatched, on `ports` (gRPC,
/// HTTP), exporting no spans.
fn serve_command(ports: &[u16]) -> Command {
    let mut cmd = Command::new(celgate_bin());
    cmd.arg("serve")
        .arg("--policies")
        .arg(common::repo_root().join("policies"))
        .arg("--no-watch")
        .arg("--grpc-addr")
        .arg(loopback(ports[0]).to_string())
        .arg("--http-addr")
        .arg(loopback(ports[1]).to_string())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    cmd
}

/// `celgate serve` on the bundled policies with `extra` flags, once ready.
fn start(dir: &Path, extra: &[&str]) -> Server {
    let ports = free_ports(2);
    let mut cmd = serve_command(&ports);
    cmd.args(extra).env("RUST_LOG", "info");
    let mut child = ChildGuard::spawn("celgate", cmd, dir);
    let http = loopback(ports[1]);
    child.wait_until("celgate /readyz", || {
        matches!(get_blocking(http, "/readyz"), Ok((200, _)))
    });
    Server {
        child,
        grpc_port: ports[0],
    }
}

/// `start` with mutual TLS: a server certificate of `server_ca`, clients of
/// `client_ca`, and `sans` as the allow-list (none: any client of the CA).
fn start_mtls(dir: &Path, server_ca: &Ca, client_ca: &Ca, sans: &[&str]) -> Server {
    let (cert, key) = server_ca.server();
    let cert = write(dir, "server.pem", &cert);
    let key = write(dir, "server.key", &key);
    let bundle = write(dir, "clients.pem", &client_ca.pem());
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-client-ca",
        bundle.to_str().unwrap(),
    ];
    for san in sans {
        args.extend(["--tls-client-san", san]);
    }
    start(dir, &args)
}

fn allowed_request() -> CheckRequest {
    let v = serde_json::json!({"attributes": {"request": {"http": {
        "method": "GET", "path": "/api/orders", "headers": {"x-api-key": "demo-key-alice"}}}}});
    celgate::request_json::from_value(&v).unwrap()
}

/// One Check over TLS trusting `ca_pem`, with `identity` as the client
/// certificate if given; `Ok(grpc status code)` or the error.
async fn tls_check(
    port: u16,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<i32, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let call = async {
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| format!("tls_config: {e:?}"))?
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let reply = AuthorizationClient::new(channel)
            .check(allowed_request())
            .await
            .map_err(|e| format!("check: {e:?}"))?;
        Ok(reply.into_inner().status.map_or(-1, |s| s.code))
    };
    tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// A raw TLS handshake then one read, limited to `versions`; the version
/// and ALPN protocol agreed, or the error.
async fn raw_handshake(
    port: u16,
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(rustls::ProtocolVersion, Option<Vec<u8>>), String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(loopback(port))
        .await
        .map_err(|e| e.to_string())?;
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    Ok((
        conn.protocol_version().unwrap(),
        conn.alpn_protocol().map(<[u8]>::to_vec),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_over_tls_and_plaintext_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server();
    let cert = write(dir.path(), "server.pem", &cert);
    let key = write(dir.path(), "server.key", &key);
    let mut server = start(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port = server.grpc_port;

    assert_eq!(tls_check(port, &ca.pem(), None).await, Ok(0), "allowed");

    // The same CA name, another key: the server is not trusted.
    let other = Ca::new("test CA");
    let err = tls_check(port, &other.pem(), None).await.unwrap_err();
    assert!(err.contains("connect"), "{err}");

    // Plaintext HTTP/2 to the TLS port gets no answer.
    let plain = async {
        let mut client = AuthorizationClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .map_err(|e| e.to_string())?;
        client
            .check(allowed_request())
            .await
            .map_err(|e| e.to_string())
    };
    let plain = tokio::time::timeout(Duration::from_secs(15), plain)
        .await
        .expect("refused promptly");
    assert!(plain.is_err(), "a plaintext client was answered");

    // TLS 1.2 and 1.3 by default; ALPN agrees on h2.
    let v12 = raw_handshake(port, &ca.pem(), &[&rustls::version::TLS12]).await;
    assert_eq!(
        v12,
        Ok((rustls::ProtocolVersion::TLSv1_2, Some(b"h2".to_vec())))
    );
    let v13 = raw_handshake(port, &ca.pem(), &[&rustls::version::TLS13]).await;
    assert_eq!(
        v13,
        Ok((rustls::ProtocolVersion::TLSv1_3, Some(b"h2".to_vec())))
    );

    // The TLS port still serves after the refusals.
    assert_eq!(tls_check(port, &ca.pem(), None).await, Ok(0));
    server.child.check_alive().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_1_3_refuses_tls_1_2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server();
    let cert = write(dir.path(), "server.pem", &cert);
    let key = write(dir.path(), "server.key", &key);
    let server = start(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-min-version",
            "1.3",
        ],
    );
    let port = server.grpc_port;
    let v12 = raw_handshake(port, &ca.pem(), &[&rustls::version::TLS12]).await;
    assert!(v12.is_err(), "{v12:?}");
    let v13 = raw_handshake(port, &ca.pem(), &[&rustls::version::TLS13]).await;
    assert_eq!(
        v13,
        Ok((rustls::ProtocolVersion::TLSv1_3, Some(b"h2".to_vec())))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_san_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let mut server = start_mtls(
        dir.path(),
        &server_ca,
        &client_ca,
        &[SPIFFE_ENVOY, "spiffe://cluster.local/ns/mesh/*"],
    );
    let port = server.grpc_port;
    let ca = server_ca.pem();

    let envoy = client_ca.client_uri(SPIFFE_ENVOY);
    assert_eq!(tls_check(port, &ca, Some(&envoy)).await, Ok(0), "exact URI");
    let mesh = client_ca.client_uri("spiffe://cluster.local/ns/mesh/sa/any");
    assert_eq!(tls_check(port, &ca, Some(&mesh)).await, Ok(0), "prefix");

    let none = tls_check(port, &ca, None).await;
    assert!(none.is_err(), "no client certificate: {none:?}");

    let stranger = Ca::new("client CA").client_uri(SPIFFE_ENVOY);
    let untrusted = tls_check(port, &ca, Some(&stranger)).await;
    assert!(untrusted.is_err(), "untrusted CA: {untrusted:?}");

    let outside = client_ca.client_uri("spiffe://cluster.local/ns/gw/sa/other");
    let refused = tls_check(port, &ca, Some(&outside)).await;
    assert!(refused.is_err(), "SAN outside the list: {refused:?}");
    assert!(
        server
            .child
            .log_tail()
            .contains("none of its names is in --tls-client-san"),
        "{}",
        server.child.log_tail()
    );

    // Refusals leave the listener serving.
    assert_eq!(tls_check(port, &ca, Some(&envoy)).await, Ok(0));
    server.child.check_alive().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_without_a_san_list_admits_any_client_of_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let server = start_mtls(dir.path(), &server_ca, &client_ca, &[]);
    let port = server.grpc_port;
    let ca = server_ca.pem();
    let any = client_ca.client_uri("spiffe://elsewhere/anything");
    assert_eq!(tls_check(port, &ca, Some(&any)).await, Ok(0));
    let none = tls_check(port, &ca, None).await;
    assert!(none.is_err(), "no client certificate: {none:?}");
}

/// Flags that do not make sense alone, and files that do not load, stop
/// the start with a message.
#[test]
fn incomplete_or_broken_tls_flags_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server();
    let cert = write(dir.path(), "server.pem", &cert);
    let key = write(dir.path(), "server.key", &key);
    let garbage = write(dir.path(), "garbage.pem", "not a certificate\n");
    let (cert, key, garbage) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        garbage.to_str().unwrap(),
    );
    let policies = common::repo_root().join("policies");
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--tls-cert", cert], 2, "--tls-key"),
        (&["--tls-key", key], 2, "--tls-cert"),
        (&["--tls-client-ca", cert], 2, "--tls-cert"),
        (
            &[
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--tls-client-san",
                "a.example",
            ],
            2,
            "--tls-client-ca",
        ),
        (
            &[
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--tls-client-ca",
                cert,
                "--tls-client-san",
                "a*b",
            ],
            2,
            "only at the end",
        ),
        (
            &["--tls-cert", garbage, "--tls-key", key],
            1,
            "holds no certificate",
        ),
        (
            &["--tls-cert", cert, "--tls-key", garbage],
            1,
            "private key",
        ),
    ];
    for (flags, code, message) in cases {
        let ports = free_ports(2);
        let out = Command::new(celgate_bin())
            .arg("serve")
            .arg("--policies")
            .arg(&policies)
            .arg("--no-watch")
            .arg("--grpc-addr")
            .arg(loopback(ports[0]).to_string())
            .arg("--http-addr")
            .arg(loopback(ports[1]).to_string())
            .args(*flags)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "{flags:?}: {stderr}");
        assert!(stderr.contains(message), "{flags:?}: {stderr}");
    }
}

/// A client that connects and sends nothing is dropped when the handshake
/// time runs out; SIGTERM with a TLS connection open still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_and_sigterm_exits_zero() {
    use tokio::io::AsyncReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server();
    let cert = write(dir.path(), "server.pem", &cert);
    let key = write(dir.path(), "server.key", &key);
    let ports = free_ports(2);
    let mut child = Running(
        serve_command(&ports)
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = std::time::Instant::now();
    while !matches!(get_blocking(loopback(ports[1]), "/readyz"), Ok((200, _))) {
        assert!(start.elapsed() < Duration::from_secs(20), "not ready");
        assert!(child.0.try_wait().unwrap().is_none(), "celgate exited");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut silent = tokio::net::TcpStream::connect(loopback(ports[0]))
        .await
        .unwrap();
    let connected = std::time::Instant::now();
    // Meanwhile a TLS client is served.
    assert_eq!(tls_check(ports[0], &ca.pem(), None).await, Ok(0));
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf))
        .await
        .expect("the silent connection was not closed");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the server sent data to a silent client: {read:?}"
    );
    let waited = connected.elapsed();
    assert!(
        waited >= Duration::from_secs(9),
        "closed after {waited:?}, before the handshake time ran out"
    );

    // A TLS connection stays open while SIGTERM arrives.
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", ports[0]))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca.pem()))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AuthorizationClient::new(channel);
    client.check(allowed_request()).await.unwrap();
    let ok = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "celgate did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the process on drop if a failed assertion leaves it running (a
/// process already waited for is not signalled).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
