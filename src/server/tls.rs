//! TLS for the listeners: gRPC (`--tls-cert`, `--tls-key`), optionally
//! mutual (`--tls-client-ca`) with an allow-list of client identities
//! (`--tls-client-san`), and HTTP (`--http-tls-cert`, `--http-tls-key`).
//!
//! Connections are accepted here: each TLS handshake runs on its own task
//! under [`HANDSHAKE_TIMEOUT`], at most [`MAX_HANDSHAKES`] at a time per
//! listener, and only finished handshakes reach the gRPC or HTTP server. A
//! client certificate is checked during the handshake (chain to the client
//! CA bundle, then the allowed subject alternative names), so a refused
//! client never reaches a service. rustls with the `ring` provider; ALPN
//! offers `h2` on the gRPC listener and `http/1.1` on the HTTP listener.
//!
//! Rotation: a listener's [`ServerTls`] holds the configuration new
//! handshakes get, behind an `ArcSwap`. [`watch`] follows the certificate,
//! key and client CA files (as the policy files are followed, so in-place
//! rewrites, renames and Kubernetes Secret `..data` swaps are all seen) and
//! [`ServerTls::reload`] builds a whole new configuration from them and
//! swaps it in. Connections already open keep the configuration they were
//! accepted with. Files that do not make a configuration (unparsable PEM, a
//! key that does not match the certificate, a file missing) are refused:
//! logged, counted, shown in `/readyz`, and the last good configuration
//! keeps serving.

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a client has to finish the TLS handshake after connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; past it, new connections wait in the
/// listen backlog.
pub const MAX_HANDSHAKES: usize = 1024;

/// The oldest TLS version accepted (`--tls-min-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

/// One entry of `--tls-client-san`: a DNS name or URI compared exactly (DNS
/// names without regard to ASCII case), or, ending in `*`, a prefix that
/// DNS and URI names are compared with byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanPattern {
    Exact(String),
    Prefix(String),
}

impl SanPattern {
    pub fn parse(s: &str) -> Result<Self, TlsError> {
        let bad = |why: &'static str| TlsError::SanPattern {
            pattern: s.to_owned(),
            why,
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        match s.strip_suffix('*') {
            Some("") => Err(bad(
                "`*` alone allows every client; leave --tls-client-san out instead",
            )),
            Some(p) if p.contains('*') => Err(bad("`*` is allowed only at the end")),
            Some(p) => Ok(SanPattern::Prefix(p.to_owned())),
            None if s.contains('*') => Err(bad("`*` is allowed only at the end")),
            None => Ok(SanPattern::Exact(s.to_owned())),
        }
    }

    fn matches_dns(&self, name: &str) -> bool {
        match self {
            SanPattern::Exact(e) => e.eq_ignore_ascii_case(name),
            SanPattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }

    fn matches_uri(&self, uri: &str) -> bool {
        match self {
            SanPattern::Exact(e) => e == uri,
            SanPattern::Prefix(p) => uri.starts_with(p.as_str()),
        }
    }
}

/// What `serve` is given for TLS.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub min_version: MinVersion,
    /// Client certificates are required and must chain to these CAs.
    pub client_ca: Option<PathBuf>,
    /// When not empty, a client certificate must carry one of these names.
    pub client_sans: Vec<SanPattern>,
}

/// Which listener a TLS configuration serves: the `listener` label of the
/// TLS metrics and the key under `tls` in `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Grpc,
    Http,
}

impl Listener {
    pub fn label(self) -> &'static str {
        match self {
            Listener::Grpc => "grpc",
            Listener::Http => "http",
        }
    }

    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Listener::Grpc => vec![b"h2".to_vec()],
            Listener::Http => vec![b"http/1.1".to_vec()],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the {what} {}: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the {what} {} holds no certificate", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the certificate {} cannot be parsed: {reason}", path.display())]
    Leaf { path: PathBuf, reason: String },
    #[error("the private key {} does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the client CA bundle {}: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the client CA bundle: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("--tls-client-san needs --tls-client-ca")]
    SanWithoutCa,
    #[error("--tls-client-san {pattern:?}: {why}")]
    SanPattern { pattern: String, why: &'static str },
    #[error("the certificate and key: {0}")]
    Config(#[from] rustls::Error),
}

/// The bytes of the files a configuration is built from, read once, so the
/// digest and the configuration describe the same content.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    digest: [u8; 32],
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_files(opts: &TlsOptions) -> Result<Files, TlsError> {
    let cert = read_file("certificate", &opts.cert)?;
    let key = read_file("private key", &opts.key)?;
    let client_ca = match &opts.client_ca {
        Some(p) => Some(read_file("client CA bundle", p)?),
        None => None,
    };
    let mut h = Sha256::new();
    for part in [Some(&cert), Some(&key), client_ca.as_ref()] {
        match part {
            Some(bytes) => {
                h.update((bytes.len() as u64 + 1).to_le_bytes());
                h.update(bytes);
            }
            None => h.update(0u64.to_le_bytes()),
        }
    }
    Ok(Files {
        cert,
        key,
        client_ca,
        digest: h.finalize().into(),
    })
}

fn parse_certs(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A configuration built from the files, with what is reported about it.
struct InForce {
    config: Arc<rustls::ServerConfig>,
    digest: [u8; 32],
    /// The leaf certificate's notAfter, in Unix seconds.
    not_after: i64,
    loaded_at: SystemTime,
}

fn build(listener: Listener, opts: &TlsOptions, files: &Files) -> Result<InForce, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match opts.min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let certs = parse_certs("certificate", &opts.cert, &files.cert)?;
    let not_after = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| TlsError::Leaf {
            path: opts.cert.clone(),
            reason: e.to_string(),
        })?
        .1
        .validity()
        .not_after
        .timestamp();
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|source| TlsError::Pem {
        what: "private key",
        path: opts.key.clone(),
        source,
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?;
    let builder = match (&opts.client_ca, &files.client_ca) {
        (None, _) if !opts.client_sans.is_empty() => return Err(TlsError::SanWithoutCa),
        (Some(path), Some(pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in parse_certs("client CA bundle", path, pem)? {
                roots.add(cert).map_err(|source| TlsError::ClientCa {
                    path: path.clone(),
                    source,
                })?;
            }
            let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            let verifier: Arc<dyn ClientCertVerifier> = if opts.client_sans.is_empty() {
                inner
            } else {
                Arc::new(SanVerifier {
                    inner,
                    allowed: opts.client_sans.clone(),
                })
            };
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: opts.cert.clone(),
                key: opts.key.clone(),
            }
        }
        e => TlsError::Config(e),
    })?;
    config.alpn_protocols = listener.alpn();
    Ok(InForce {
        config: Arc::new(config),
        digest: files.digest,
        not_after,
        loaded_at: SystemTime::now(),
    })
}

/// A reload of the TLS files that was refused, for `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TlsReloadError {
    #[serde(with = "crate::sources::rfc3339")]
    pub at: SystemTime,
    /// Which file and why (never certificate or key material).
    pub error: String,
}

/// What one reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsReload {
    /// A new configuration serves new connections.
    Applied,
    /// The files hold what is already in force.
    Unchanged,
    /// The files do not make a configuration; the last good one serves.
    Failed,
}

/// A reload waits at most this long for the files to stop changing, then
/// takes them as they are.
const MAX_SETTLE: Duration = Duration::from_secs(10);

/// One listener's TLS: the configuration new handshakes get, and how its
/// reloads went.
pub struct ServerTls {
    listener: Listener,
    opts: TlsOptions,
    current: ArcSwap<InForce>,
    /// The content of the latest refused files, so the same refusal is
    /// counted once however often it is looked at.
    refused: Mutex<Option<[u8; 32]>>,
    reloads: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<TlsReloadError>>,
    /// One reload at a time.
    reloading: Mutex<()>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("listener", &self.listener)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// How a listener's TLS stands, for `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// notAfter of the certificate being served.
    pub certificate_not_after: String,
    /// When the files in force were loaded.
    pub loaded_at: String,
    /// Reloads that put new files in force.
    pub reloads: u64,
    /// Reloads refused.
    pub reload_errors: u64,
    /// Why the files on disk are not in force, while they are not; cleared
    /// when they load again (or hold what is in force again).
    pub last_reload_error: Option<TlsReloadError>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_time(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

impl ServerTls {
    /// Reads the files and builds the first configuration (an error stops
    /// the start).
    pub fn load(listener: Listener, opts: TlsOptions) -> Result<Arc<ServerTls>, TlsError> {
        let files = read_files(&opts)?;
        let in_force = build(listener, &opts, &files)?;
        Ok(Arc::new(ServerTls {
            listener,
            opts,
            current: ArcSwap::from_pointee(in_force),
            refused: Mutex::new(None),
            reloads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            reloading: Mutex::new(()),
        }))
    }

    pub fn listener(&self) -> Listener {
        self.listener
    }

    pub fn options(&self) -> &TlsOptions {
        &self.opts
    }

    /// The configuration a handshake starting now gets.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current.load().config.clone()
    }

    /// The files a reload reads.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.opts.cert.clone(), self.opts.key.clone()];
        p.extend(self.opts.client_ca.clone());
        p
    }

    /// Reads the files once they held still for `settle` (the same content
    /// twice, `settle` apart; at most 10 s of waiting), so files
    /// being written, or a certificate written before its key, are not
    /// taken half-done; then builds a configuration and swaps it in, or
    /// refuses the files.
    pub fn reload(&self, settle: Duration) -> TlsReload {
        let _one = lock(&self.reloading);
        let started = Instant::now();
        let mut read = read_files(&self.opts);
        while !settle.is_zero() && started.elapsed() < MAX_SETTLE {
            std::thread::sleep(settle);
            let again = read_files(&self.opts);
            let held = match (&read, &again) {
                (Ok(a), Ok(b)) => a.digest == b.digest,
                (Err(a), Err(b)) => a.to_string() == b.to_string(),
                _ => false,
            };
            read = again;
            if held {
                break;
            }
        }
        self.apply(read)
    }

    fn apply(&self, read: Result<Files, TlsError>) -> TlsReload {
        let files = match read {
            Ok(f) => f,
            Err(e) => return self.refuse(None, e),
        };
        if files.digest == self.current.load().digest {
            // Still, or again, what is in force: nothing refused now.
            *lock(&self.refused) = None;
            *lock(&self.last_error) = None;
            return TlsReload::Unchanged;
        }
        if *lock(&self.refused) == Some(files.digest) {
            return TlsReload::Failed;
        }
        match build(self.listener, &self.opts, &files) {
            Ok(in_force) => {
                let not_after = crate::sources::rfc3339::format(unix_time(in_force.not_after));
                self.current.store(Arc::new(in_force));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                *lock(&self.refused) = None;
                *lock(&self.last_error) = None;
                tracing::info!(
                    listener = self.listener.label(),
                    not_after = %not_after,
                    "TLS files reloaded; new connections get the new certificate"
                );
                TlsReload::Applied
            }
            Err(e) => self.refuse(Some(files.digest), e),
        }
    }

    fn refuse(&self, digest: Option<[u8; 32]>, e: TlsError) -> TlsReload {
        *lock(&self.refused) = digest;
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            listener = self.listener.label(),
            error = %e,
            "TLS reload refused; the last good certificate keeps serving"
        );
        *lock(&self.last_error) = Some(TlsReloadError {
            at: SystemTime::now(),
            error: e.to_string(),
        });
        TlsReload::Failed
    }

    pub fn status(&self) -> TlsStatus {
        let now = self.current.load();
        TlsStatus {
            certificate_not_after: crate::sources::rfc3339::format(unix_time(now.not_after)),
            loaded_at: crate::sources::rfc3339::format(now.loaded_at),
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_errors: self.errors.load(Ordering::Relaxed),
            last_reload_error: lock(&self.last_error).clone(),
        }
    }
}

/// The TLS series of the listeners that have TLS (none: no text).
pub fn render_metrics(listeners: &[&ServerTls]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if listeners.is_empty() {
        return out;
    }
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&ServerTls) -> String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in listeners {
            let _ = writeln!(
                out,
                "{name}{{listener=\"{}\"}} {}",
                l.listener.label(),
                value(l)
            );
        }
    };
    family(
        "celgate_tls_cert_expiry_timestamp_seconds",
        "gauge",
        "notAfter of the certificate the listener serves (Unix seconds).",
        &|l| l.current.load().not_after.to_string(),
    );
    family(
        "celgate_tls_loaded_timestamp_seconds",
        "gauge",
        "When the TLS files in force were loaded (Unix seconds).",
        &|l| {
            let t = l.current.load().loaded_at;
            let secs = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            format!("{secs:.3}")
        },
    );
    family(
        "celgate_tls_reloads_total",
        "counter",
        "TLS reloads that put new certificate, key or client CA files in force.",
        &|l| l.reloads.load(Ordering::Relaxed).to_string(),
    );
    family(
        "celgate_tls_reload_errors_total",
        "counter",
        "TLS reloads refused; the last good certificate kept serving.",
        &|l| l.errors.load(Ordering::Relaxed).to_string(),
    );
    family(
        "celgate_tls_reload_failing",
        "gauge",
        "1 while the TLS files on disk are refused (cleared when they load).",
        &|l| u8::from(lock(&l.last_error).is_some()).to_string(),
    );
    out
}

/// Follows the listener's files and reloads on change until dropped (see
/// [`crate::sources::files::watch_paths`]); `options.settle` is the wait
/// of [`ServerTls::reload`].
pub fn watch(
    tls: Arc<ServerTls>,
    options: crate::sources::files::WatchOptions,
) -> Result<crate::sources::files::FileWatcher, crate::sources::files::WatchError> {
    let thread = match tls.listener {
        Listener::Grpc => "celgate-tls-grpc",
        Listener::Http => "celgate-tls-http",
    };
    crate::sources::files::watch_paths(
        tls.paths(),
        options,
        crate::sources::files::WatchNames {
            what: "TLS files",
            thread,
        },
        move || {
            tls.reload(options.settle);
        },
    )
}

/// The CA check, then the allow-list of subject alternative names.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<SanPattern>,
}

/// Whether the certificate names an allowed DNS name or URI.
fn san_allowed(der: &[u8], allowed: &[SanPattern]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|name| match name {
        GeneralName::DNSName(d) => allowed.iter().any(|p| p.matches_dns(d)),
        GeneralName::URI(u) => allowed.iter().any(|p| p.matches_uri(u)),
        _ => false,
    })
}

impl ClientCertVerifier for SanVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if san_allowed(end_entity, &self.allowed) {
            Ok(verified)
        } else {
            tracing::info!(
                "refused a client certificate: none of its names is in --tls-client-san"
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A connection whose TLS handshake has finished.
pub struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Runs the handshakes of the connections `tcp` yields, each on its own
/// task under [`HANDSHAKE_TIMEOUT`], at most [`MAX_HANDSHAKES`] at a time,
/// with the configuration in force when it starts; finished ones come out
/// of the receiver. Accepting stops when the receiver is dropped (its
/// server has shut down).
fn handshakes<S>(
    mut tcp: S,
    tls: Arc<ServerTls>,
) -> tokio::sync::mpsc::Receiver<tokio_rustls::server::TlsStream<TcpStream>>
where
    S: futures_util::Stream<Item = Result<TcpStream, std::io::Error>> + Send + Unpin + 'static,
{
    use futures_util::StreamExt as _;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let label = tls.listener.label();
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = tx.closed() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                _ = tx.closed() => break,
                s = tcp.next() => s,
            };
            let stream = match stream {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(listener = label, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                None => break,
            };
            // The configuration in force now; a rotation after this point
            // applies to the next connection.
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(conn).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(listener = label, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(listener = label, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The connections of `tcp` whose handshake succeeded, for the gRPC server.
pub fn incoming(
    tcp: tonic::transport::server::TcpIncoming,
    tls: Arc<ServerTls>,
) -> impl futures_util::Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(handshakes(tcp, tls), |mut rx| async move {
        rx.recv().await.map(|c| (Ok(TlsConn(c)), rx))
    })
}

/// The HTTP listener's connections whose handshake succeeded, for axum.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<tokio_rustls::server::TlsStream<TcpStream>>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    pub fn new(listener: tokio::net::TcpListener, tls: Arc<ServerTls>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let tcp = futures_util::stream::unfold(listener, |l| async move {
            let accepted = l.accept().await.map(|(s, _)| s);
            Some((accepted, l))
        });
        Ok(TlsListener {
            rx: handshakes(Box::pin(tcp), tls),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.rx.recv().await {
                Some(conn) => {
                    // Gone already: wait for the next one.
                    if let Ok(peer) = conn.get_ref().0.peer_addr() {
                        return (conn, peer);
                    }
                }
                // The accept task ended: nothing more will come.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn san_patterns_parse() {
        assert_eq!(
            SanPattern::parse("envoy.gw.svc").unwrap(),
            SanPattern::Exact("envoy.gw.svc".into())
        );
        assert_eq!(
            SanPattern::parse("spiffe://cluster.local/ns/gw/*").unwrap(),
            SanPattern::Prefix("spiffe://cluster.local/ns/gw/".into())
        );
        for bad in ["", "*", "a*b", "*.example.com"] {
            assert!(SanPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn san_patterns_match() {
        let exact = SanPattern::parse("Envoy.GW.svc").unwrap();
        assert!(exact.matches_dns("envoy.gw.svc"));
        assert!(!exact.matches_dns("envoy.gw.svc.evil"));
        assert!(
            !exact.matches_uri("envoy.gw.svc"),
            "URIs are compared exactly"
        );
        let prefix = SanPattern::parse("spiffe://cluster.local/ns/gw/*").unwrap();
        assert!(prefix.matches_uri("spiffe://cluster.local/ns/gw/sa/envoy"));
        assert!(!prefix.matches_uri("spiffe://cluster.local/ns/other/sa/envoy"));
    }

    /// (certificate PEM, key PEM) of a self-signed certificate for localhost.
    fn pair() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn reloads_apply_refuse_once_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert_a, key_a) = pair();
        std::fs::write(&cert, &cert_a).unwrap();
        std::fs::write(&key, &key_a).unwrap();
        let opts = TlsOptions {
            cert: cert.clone(),
            key: key.clone(),
            min_version: MinVersion::Tls12,
            client_ca: None,
            client_sans: Vec::new(),
        };
        let tls = ServerTls::load(Listener::Http, opts).unwrap();
        assert_eq!(tls.config().alpn_protocols, vec![b"http/1.1".to_vec()]);
        let first = tls.config();
        assert_eq!(tls.reload(Duration::ZERO), TlsReload::Unchanged);
        assert!(Arc::ptr_eq(&first, &tls.config()));

        // Another key: refused, counted once however often it is seen.
        std::fs::write(&key, pair().1).unwrap();
        assert_eq!(tls.reload(Duration::ZERO), TlsReload::Failed);
        assert_eq!(tls.reload(Duration::ZERO), TlsReload::Failed);
        let s = tls.status();
        assert_eq!((s.reloads, s.reload_errors), (0, 1));
        let error = s.last_reload_error.unwrap().error;
        assert!(error.contains("does not match"), "{error}");
        assert!(!error.contains("PRIVATE"), "{error}");
        assert!(Arc::ptr_eq(&first, &tls.config()));

        // The key in force again: nothing to report.
        std::fs::write(&key, &key_a).unwrap();
        assert_eq!(tls.reload(Duration::ZERO), TlsReload::Unchanged);
        assert!(tls.status().last_reload_error.is_none());

        // A new pair.
        let (cert_b, key_b) = pair();
        std::fs::write(&cert, &cert_b).unwrap();
        std::fs::write(&key, &key_b).unwrap();
        assert_eq!(tls.reload(Duration::from_millis(10)), TlsReload::Applied);
        assert!(!Arc::ptr_eq(&first, &tls.config()));
        assert_eq!(tls.status().reloads, 1);

        // A file gone is refused too.
        std::fs::remove_file(&key).unwrap();
        assert_eq!(tls.reload(Duration::ZERO), TlsReload::Failed);
        let s = tls.status();
        assert_eq!(s.reload_errors, 2);
        assert!(s.last_reload_error.unwrap().error.contains("tls.key"));

        let metrics = render_metrics(&[&tls]);
        assert!(metrics.contains("celgate_tls_reload_errors_total{listener=\"http\"} 2\n"));
        assert!(metrics.contains("celgate_tls_reload_failing{listener=\"http\"} 1\n"));
        assert!(render_metrics(&[]).is_empty());
    }
}
