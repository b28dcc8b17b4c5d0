//! TLS for the gRPC listener (`--tls-cert`, `--tls-key`), optionally
//! mutual (`--tls-client-ca`) with an allow-list of client identities
//! (`--tls-client-san`).
//!
//! Connections are accepted here: each TLS handshake runs on its own task
//! under [`HANDSHAKE_TIMEOUT`], at most [`MAX_HANDSHAKES`] at a time, and
//! only finished handshakes reach the gRPC server. A client certificate is
//! checked during the handshake (chain to the client CA bundle, then the
//! allowed subject alternative names), so a refused client never reaches a
//! service. rustls with the `ring` provider; ALPN offers `h2` only.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
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

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the {what} {} holds no certificate", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
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

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the files and builds the server configuration.
pub fn server_config(opts: &TlsOptions) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match opts.min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let certs = read_certs("certificate", &opts.cert)?;
    let key = PrivateKeyDer::from_pem_file(&opts.key).map_err(|source| TlsError::Pem {
        what: "private key",
        path: opts.key.clone(),
        source,
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?;
    let builder = match &opts.client_ca {
        None if !opts.client_sans.is_empty() => return Err(TlsError::SanWithoutCa),
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs("client CA bundle", path)? {
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
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
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

/// The connections of `tcp` whose handshake succeeded. Accepting stops when
/// the stream is dropped (the gRPC server has shut down).
pub fn incoming(
    mut tcp: tonic::transport::server::TcpIncoming,
    config: Arc<rustls::ServerConfig>,
) -> impl futures_util::Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static {
    use futures_util::StreamExt as _;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsConn>(64);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
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
                    tracing::warn!(error = %e, "gRPC listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                None => break,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(conn)) => {
                        let _ = tx.send(TlsConn(conn)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|c| (Ok(c), rx)) },
    )
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
}
