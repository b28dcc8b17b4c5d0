//! `celgate serve --tls-cert/--tls-key` (and `--tls-client-ca`,
//! `--tls-client-san`, `--http-tls-cert/--http-tls-key`) as a process,
//! called with a tonic TLS client and with raw rustls handshakes;
//! certificates are made here with rcgen. Rotation: the files are rewritten
//! in place or swapped like a Kubernetes Secret mount while the server runs.

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
        self.leaf_until(sans, usage, 2035)
    }

    /// `leaf`, valid until 1 January of `year`.
    fn leaf_until(
        &self,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        year: i32,
    ) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, "leaf");
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server(&self) -> (String, String) {
        self.server_until(2035)
    }

    /// A server certificate for localhost and 127.0.0.1, valid until 1
    /// January of `year`.
    fn server_until(&self, year: i32) -> (String, String) {
        self.leaf_until(
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
            year,
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
    http_port: u16,
}

/// `celgate serve` on the bundled policies, unwatched, on `ports` (gRPC,
/// HTTP), exporting no spans.
fn serve_command(ports: &[u16]) -> Command {
    let mut cmd = watched_serve_command(ports);
    cmd.arg("--no-watch");
    cmd
}

/// `serve_command` watching its files (policies and TLS).
fn watched_serve_command(ports: &[u16]) -> Command {
    let mut cmd = Command::new(celgate_bin());
    cmd.arg("serve")
        .arg("--policies")
        .arg(common::repo_root().join("policies"))
        .arg("--grpc-addr")
        .arg(loopback(ports[0]).to_string())
        .arg("--http-addr")
        .arg(loopback(ports[1]).to_string())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    cmd
}

/// `celgate serve` on the bundled policies with `extra` flags, once ready.
fn start(dir: &Path, extra: &[&str]) -> Server {
    start_with(serve_command, dir, extra)
}

/// `start`, watching the files: TLS files are reloaded on change.
fn start_watched(dir: &Path, extra: &[&str]) -> Server {
    start_with(watched_serve_command, dir, extra)
}

/// `start_watched` over TLS with `cert_pem`/`key_pem` written to
/// `server.pem`/`server.key` in `dir`: the two paths, for rewriting, and the server.
fn start_watched_pair(dir: &Path, cert_pem: &str, key_pem: &str) -> (PathBuf, PathBuf, Server) {
    let cert = write(dir, "server.pem", cert_pem);
    let key = write(dir, "server.key", key_pem);
    let server = start_watched(
        dir,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    (cert, key, server)
}

fn start_with(command: fn(&[u16]) -> Command, dir: &Path, extra: &[&str]) -> Server {
    let ports = free_ports(2);
    let mut cmd = command(&ports);
    cmd.args(extra).env("RUST_LOG", "info");
    let mut child = ChildGuard::spawn("celgate", cmd, dir);
    let http = loopback(ports[1]);
    child.wait_until("celgate /readyz", || {
        matches!(get_blocking(http, "/readyz"), Ok((200, _)))
    });
    Server {
        child,
        grpc_port: ports[0],
        http_port: ports[1],
    }
}

/// `start` with mutual TLS: a server certificate of `server_ca`, clients of
/// `client_ca`, and `sans` as the allow-list (none: any client of the CA).
fn start_mtls(dir: &Path, server_ca: &Ca, client_ca: &Ca, sans: &[&str]) -> Server {
    start_mtls_with(start, dir, server_ca, client_ca, sans)
}

fn start_mtls_with(
    start: fn(&Path, &[&str]) -> Server,
    dir: &Path,
    server_ca: &Ca,
    client_ca: &Ca,
    sans: &[&str],
) -> Server {
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

/// A rustls client configuration trusting the certificates of `roots`
/// (PEM), offering `alpn`.
fn client_config(roots: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        store
            .add(rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A blocking TLS connection to `port` with `config`, handshake done.
fn tls_connect(
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>, String> {
    let tcp = std::net::TcpStream::connect_timeout(&loopback(port), Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap())
        .map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

/// The DER of the leaf certificate the server on `port` presents to a
/// client trusting `roots`.
fn presented_leaf(port: u16, roots: &[&str]) -> Result<Vec<u8>, String> {
    let stream = tls_connect(port, client_config(roots, &[b"h2", b"http/1.1"]))?;
    let certs = stream.conn.peer_certificates().ok_or("no certificate")?;
    Ok(certs[0].as_ref().to_vec())
}

/// The DER of the (first) certificate in `pem`.
fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// GET `path` over HTTPS/1.1 trusting `ca`: (status, body).
fn https_get(port: u16, ca: &str, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read as _, Write as _};
    let mut stream = tls_connect(port, client_config(&[ca], &[b"http/1.1"]))?;
    if stream.conn.alpn_protocol() != Some(b"http/1.1") {
        return Err(format!("ALPN {:?}", stream.conn.alpn_protocol()));
    }
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) => {}
        // Closed without close_notify after the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let out = String::from_utf8_lossy(&out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

/// The value of `series` (name and labels, exactly) in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A series of the plaintext `/metrics` of `server`.
fn server_metric(server: &Server, series: &str) -> Option<f64> {
    let (_, text) = get_blocking(loopback(server.http_port), "/metrics").ok()?;
    metric(&text, series)
}

/// The plaintext `/readyz` of `server`: (status, JSON).
fn readyz(server: &Server) -> (u16, serde_json::Value) {
    let (code, body) = get_blocking(loopback(server.http_port), "/readyz").unwrap();
    (code, serde_json::from_str(&body).unwrap())
}

const GRPC_RELOADS: &str = "celgate_tls_reloads_total{listener=\"grpc\"}";
const GRPC_ERRORS: &str = "celgate_tls_reload_errors_total{listener=\"grpc\"}";
const GRPC_EXPIRY: &str = "celgate_tls_cert_expiry_timestamp_seconds{listener=\"grpc\"}";
const GRPC_FAILING: &str = "celgate_tls_reload_failing{listener=\"grpc\"}";

/// 1 January 2031, 2032 and 2033, 00:00 UTC, in Unix seconds.
const JAN_2031: f64 = 1_924_992_000.0;
const JAN_2032: f64 = 1_956_528_000.0;
const JAN_2033: f64 = 1_988_150_400.0;

/// Waits (polling) until `series` of `server` reaches `value`.
fn wait_metric(server: &mut Server, series: &str, value: f64) {
    let port = server.http_port;
    server.child.wait_until(&format!("{series} = {value}"), || {
        get_blocking(loopback(port), "/metrics")
            .ok()
            .and_then(|(_, t)| metric(&t, series))
            == Some(value)
    });
}

/// A Check on a connection opened before anything changed on the server.
async fn check_on(channel: &tonic::transport::Channel) -> Result<i32, String> {
    let reply = tokio::time::timeout(
        Duration::from_secs(15),
        AuthorizationClient::new(channel.clone()).check(allowed_request()),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| format!("check: {e:?}"))?;
    Ok(reply.into_inner().status.map_or(-1, |s| s.code))
}

/// A connected channel trusting only `ca_pem`.
async fn channel(port: u16, ca_pem: &str) -> tonic::transport::Channel {
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Rewriting the certificate and key in place: new connections get the new
/// certificate; a connection opened before keeps working. The new
/// certificate is from another CA, so the old connection's client (which
/// trusts only the old CA) could not have reconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_in_place_serves_new_connections_and_keeps_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (cert_a, key_a) = old_ca.server_until(2031);
    let (cert, key, mut server) = start_watched_pair(dir.path(), &cert_a, &key_a);
    let port = server.grpc_port;
    let both = [old_ca.pem(), new_ca.pem()];
    let both = [both[0].as_str(), both[1].as_str()];
    assert_eq!(presented_leaf(port, &both), Ok(der(&cert_a)));
    assert_eq!(server_metric(&server, GRPC_EXPIRY), Some(JAN_2031));
    assert_eq!(server_metric(&server, GRPC_RELOADS), Some(0.0));
    let old = channel(port, &old_ca.pem()).await;
    assert_eq!(check_on(&old).await, Ok(0));

    let (cert_b, key_b) = new_ca.server_until(2032);
    std::fs::write(&cert, &cert_b).unwrap();
    std::fs::write(&key, &key_b).unwrap();
    tokio::task::block_in_place(|| wait_metric(&mut server, GRPC_RELOADS, 1.0));

    assert_eq!(presented_leaf(port, &both), Ok(der(&cert_b)));
    assert_eq!(server_metric(&server, GRPC_EXPIRY), Some(JAN_2032));
    assert_eq!(tls_check(port, &new_ca.pem(), None).await, Ok(0));
    let stale = tls_check(port, &old_ca.pem(), None).await;
    assert!(stale.is_err(), "a new connection got the old certificate");
    assert_eq!(check_on(&old).await, Ok(0), "the old connection broke");
    let (code, ready) = readyz(&server);
    assert_eq!(code, 200);
    assert_eq!(ready["tls"]["grpc"]["reloads"], 1, "{ready}");
    assert_eq!(
        ready["tls"]["grpc"]["certificateNotAfter"], "2032-01-01T00:00:00.000Z",
        "{ready}"
    );
    server.child.check_alive().unwrap();
}

/// A Kubernetes Secret volume: `tls.crt` and `tls.key` link into `..data`,
/// a link to a timestamped directory; an update writes a new directory and
/// renames a new `..data` link over the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_through_a_secret_mount_data_link_swap() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("tls");
    let version = |name: &str, (cert, key): &(String, String)| {
        let d = mount.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("tls.crt"), cert).unwrap();
        std::fs::write(d.join("tls.key"), key).unwrap();
    };
    let ca = Ca::new("test CA");
    let first = ca.server_until(2031);
    version("..2026_11_30_01", &first);
    symlink("..2026_11_30_01", mount.join("..data")).unwrap();
    symlink("..data/tls.crt", mount.join("tls.crt")).unwrap();
    symlink("..data/tls.key", mount.join("tls.key")).unwrap();
    let mut server = start_watched(
        dir.path(),
        &[
            "--tls-cert",
            mount.join("tls.crt").to_str().unwrap(),
            "--tls-key",
            mount.join("tls.key").to_str().unwrap(),
        ],
    );
    let port = server.grpc_port;
    assert_eq!(presented_leaf(port, &[&ca.pem()]), Ok(der(&first.0)));
    let old = channel(port, &ca.pem()).await;

    let second = ca.server_until(2033);
    version("..2026_11_30_02", &second);
    symlink("..2026_11_30_02", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..2026_11_30_01")).unwrap();
    tokio::task::block_in_place(|| wait_metric(&mut server, GRPC_RELOADS, 1.0));

    assert_eq!(presented_leaf(port, &[&ca.pem()]), Ok(der(&second.0)));
    assert_eq!(server_metric(&server, GRPC_EXPIRY), Some(JAN_2033));
    // Every state the swap went through was a whole pair: nothing refused.
    assert_eq!(server_metric(&server, GRPC_ERRORS), Some(0.0));
    assert_eq!(check_on(&old).await, Ok(0));
    assert_eq!(tls_check(port, &ca.pem(), None).await, Ok(0));
}

/// A key that does not match the certificate, then a certificate cut off
/// mid-file, are refused: the old certificate keeps serving, the refusals
/// are counted and shown in `/readyz` (still ready). Fixing the files
/// recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_keep_the_last_good_certificate_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert_a, key_a) = ca.server_until(2031);
    let (cert, key, mut server) = start_watched_pair(dir.path(), &cert_a, &key_a);
    let port = server.grpc_port;
    let old = channel(port, &ca.pem()).await;
    let (_, ready) = readyz(&server);
    assert!(ready["tls"]["grpc"]["lastReloadError"].is_null(), "{ready}");
    assert_eq!(server_metric(&server, GRPC_FAILING), Some(0.0));

    // Another pair's key.
    let (_, other_key) = ca.server();
    std::fs::write(&key, &other_key).unwrap();
    tokio::task::block_in_place(|| wait_metric(&mut server, GRPC_ERRORS, 1.0));
    assert_eq!(presented_leaf(port, &[&ca.pem()]), Ok(der(&cert_a)));
    assert_eq!(tls_check(port, &ca.pem(), None).await, Ok(0));
    let (code, ready) = readyz(&server);
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    let error = ready["tls"]["grpc"]["lastReloadError"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{ready}"))
        .to_owned();
    assert!(error.contains("does not match the certificate"), "{error}");
    assert_eq!(ready["tls"]["grpc"]["reloadErrors"], 1);
    assert_eq!(server_metric(&server, GRPC_FAILING), Some(1.0));
    assert_eq!(server_metric(&server, GRPC_RELOADS), Some(0.0));

    // A certificate written half-way.
    let cut = &cert_a[..cert_a.len() / 2];
    std::fs::write(&cert, cut).unwrap();
    tokio::task::block_in_place(|| wait_metric(&mut server, GRPC_ERRORS, 2.0));
    assert_eq!(presented_leaf(port, &[&ca.pem()]), Ok(der(&cert_a)));
    let (code, ready) = readyz(&server);
    assert_eq!(code, 200, "{ready}");
    let error = ready["tls"]["grpc"]["lastReloadError"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{ready}"))
        .to_owned();
    assert!(
        error.contains("certificate") && error.contains("server.pem"),
        "{error}"
    );

    // The log names the refusals and never the key.
    let log = server.child.log_tail();
    assert!(log.contains("TLS reload refused"), "{log}");
    for pem in [&key_a, &other_key] {
        let body = pem.lines().nth(1).unwrap();
        assert!(!log.contains(body), "key material in the log:\n{log}");
    }
    assert!(!log.contains("PRIVATE KEY"), "{log}");

    // A good pair again.
    let (cert_b, key_b) = ca.server_until(2032);
    std::fs::write(&cert, &cert_b).unwrap();
    std::fs::write(&key, &key_b).unwrap();
    tokio::task::block_in_place(|| wait_metric(&mut server, GRPC_RELOADS, 1.0));
    assert_eq!(presented_leaf(port, &[&ca.pem()]), Ok(der(&cert_b)));
    assert_eq!(server_metric(&server, GRPC_FAILING), Some(0.0));
    assert_eq!(server_metric(&server, GRPC_EXPIRY), Some(JAN_2032));
    let (_, ready) = readyz(&server);
    assert!(ready["tls"]["grpc"]["lastReloadError"].is_null(), "{ready}");
    assert_eq!(check_on(&old).await, Ok(0));
    server.child.check_alive().unwrap();
}

/// Replacing the client CA bundle: a client of the new CA is refused
/// before and admitted after; a client of the old CA the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_rotation_admits_the_new_ca_and_refuses_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let (old_ca, new_ca) = (Ca::new("client CA 1"), Ca::new("client CA 2"));
    let mut server = start_mtls_with(start_watched, dir.path(), &server_ca, &old_ca, &[]);
    let port = server.grpc_port;
    let ca = server_ca.pem();
    let old_client = old_ca.client_uri(SPIFFE_ENVOY);
    let new_client = new_ca.client_uri(SPIFFE_ENVOY);
    assert_eq!(tls_check(port, &ca, Some(&old_client)).await, Ok(0));
    let before = tls_check(port, &ca, Some(&new_client)).await;
    assert!(before.is_err(), "new CA admitted before: {before:?}");

    std::fs::write(dir.path().join("clients.pem"), new_ca.pem()).unwrap();
    tokio::task::block_in_place(|| wait_metric(&mut server, GRPC_RELOADS, 1.0));

    assert_eq!(tls_check(port, &ca, Some(&new_client)).await, Ok(0));
    let after = tls_check(port, &ca, Some(&old_client)).await;
    assert!(after.is_err(), "old CA still admitted: {after:?}");
    assert_eq!(server_metric(&server, GRPC_ERRORS), Some(0.0));
}

/// `--http-tls-cert`: the HTTP routes answer over TLS only, the files
/// rotate like the gRPC ones, a silent client does not hold others up, and
/// `celgate healthcheck` speaks TLS with the CA to trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_over_tls_with_rotation_and_healthcheck() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("http CA");
    let (cert_a, key_a) = ca.server_until(2031);
    let cert = write(dir.path(), "http.pem", &cert_a);
    let key = write(dir.path(), "http.key", &key_a);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let ports = free_ports(2);
    let mut cmd = watched_serve_command(&ports);
    cmd.arg("--http-tls-cert")
        .arg(&cert)
        .arg("--http-tls-key")
        .arg(&key)
        .env("RUST_LOG", "info");
    let mut child = ChildGuard::spawn("celgate", cmd, dir.path());
    let http = ports[1];
    let ca_pem = ca.pem();
    tokio::task::block_in_place(|| {
        child.wait_until("/readyz over TLS", || {
            matches!(https_get(http, &ca_pem, "/readyz"), Ok((200, _)))
        })
    });
    let (code, body) = https_get(http, &ca_pem, "/livez").unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let plain = get_blocking(loopback(http), "/readyz");
    assert!(
        !matches!(plain, Ok((200, _))),
        "plaintext answered: {plain:?}"
    );
    // gRPC stays plaintext without --tls-cert.
    let mut grpc = AuthorizationClient::connect(format!("http://127.0.0.1:{}", ports[0]))
        .await
        .unwrap();
    grpc.check(allowed_request()).await.unwrap();

    // A client that connects and says nothing holds up no one.
    let _silent = std::net::TcpStream::connect(loopback(http)).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(https_get(http, &ca_pem, "/livez").map(|r| r.0), Ok(200));
    assert!(started.elapsed() < Duration::from_secs(5));

    let (_, metrics) = https_get(http, &ca_pem, "/metrics").unwrap();
    let http_expiry = "celgate_tls_cert_expiry_timestamp_seconds{listener=\"http\"}";
    assert_eq!(metric(&metrics, http_expiry), Some(JAN_2031), "{metrics}");
    assert!(!metrics.contains("listener=\"grpc\""), "{metrics}");

    let healthcheck = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(celgate_bin());
        cmd.arg("healthcheck")
            .args(args)
            .env("CELGATE_HTTP_ADDR", loopback(http).to_string())
            .env_remove("CELGATE_HTTP_TLS_CERT")
            .env_remove("CELGATE_HEALTHCHECK_CA_CERT")
            .env_remove("CELGATE_HEALTHCHECK_SERVER_NAME");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let ca_arg = ca_file.to_str().unwrap();
    let ok = healthcheck(&["--ca-cert", ca_arg], &[]);
    assert!(ok.status.success(), "{ok:?}");
    let named = healthcheck(&["--ca-cert", ca_arg, "--server-name", "localhost"], &[]);
    assert!(named.status.success(), "{named:?}");
    let wrong_name = healthcheck(
        &["--ca-cert", ca_arg, "--server-name", "other.example"],
        &[],
    );
    assert_eq!(wrong_name.status.code(), Some(1), "{wrong_name:?}");
    // The variables of a container that serves HTTPS: TLS without --tls.
    let auto = healthcheck(
        &[],
        &[
            ("CELGATE_HTTP_TLS_CERT", cert.to_str().unwrap()),
            ("CELGATE_HEALTHCHECK_CA_CERT", ca_arg),
        ],
    );
    assert!(auto.status.success(), "{auto:?}");
    // Without the CA the certificate is not trusted.
    let untrusted = healthcheck(&["--tls"], &[]);
    assert_eq!(untrusted.status.code(), Some(1), "{untrusted:?}");
    let err = String::from_utf8_lossy(&untrusted.stderr);
    assert!(err.contains("HTTPS") && err.contains("--ca-cert"), "{err}");
    let other_ca = write(dir.path(), "other.pem", &Ca::new("http CA").pem());
    let wrong_ca = healthcheck(&["--ca-cert", other_ca.to_str().unwrap()], &[]);
    assert_eq!(wrong_ca.status.code(), Some(1), "{wrong_ca:?}");
    // Plaintext to a TLS listener fails.
    let plain = healthcheck(&[], &[]);
    assert_eq!(plain.status.code(), Some(1), "{plain:?}");

    // Rotation on the HTTP listener.
    let (cert_b, key_b) = ca.server_until(2032);
    std::fs::write(&cert, &cert_b).unwrap();
    std::fs::write(&key, &key_b).unwrap();
    let http_reloads = "celgate_tls_reloads_total{listener=\"http\"}";
    tokio::task::block_in_place(|| {
        child.wait_until("HTTP certificate reloaded", || {
            https_get(http, &ca_pem, "/metrics")
                .ok()
                .and_then(|(_, t)| metric(&t, http_reloads))
                == Some(1.0)
        })
    });
    assert_eq!(presented_leaf(http, &[&ca_pem]), Ok(der(&cert_b)));
    let (_, ready) = https_get(http, &ca_pem, "/readyz").unwrap();
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(
        ready["tls"]["http"]["certificateNotAfter"], "2032-01-01T00:00:00.000Z",
        "{ready}"
    );
    assert!(ready["tls"].get("grpc").is_none(), "{ready}");
    child.check_alive().unwrap();
}
