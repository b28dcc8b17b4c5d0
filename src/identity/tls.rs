//! The roots trusted for identity fetches (JWKS): the Mozilla web PKI roots,
//! plus the certificates of an optional CA bundle (`--jwks-ca-bundle`), for
//! issuers behind a private CA (in-cluster Keycloak, Dex, an internal IdP).
//!
//! A bundle is a PEM file of one or more certificates. It is read at start
//! ([`load_ca_bundle`]: a bundle that cannot be used is an error, and the
//! server refuses to start) and then polled ([`watch_ca_bundle`]): when its
//! content changes it is read again, and a bundle that cannot be used is
//! logged and counted while the previous roots keep serving. Polling the
//! content (not file events) follows Kubernetes ConfigMap and Secret
//! mounts, whose files are swapped through symlinks.

use super::{bump, IdentityError, JwtConfig, COUNTERS, RUNTIME};
use arc_swap::ArcSwapOption;
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use ureq::tls::{Certificate, RootCerts};

/// A CA bundle, checked.
#[derive(Debug)]
pub struct CaBundle {
    certs: Vec<Certificate<'static>>,
    digest: [u8; 32],
}

impl CaBundle {
    /// Parses PEM text: one or more certificates, each usable as a trust
    /// anchor. A private key, a PEM section that does not parse, or no
    /// certificate at all is an error (the reason names the section, never
    /// its content).
    pub fn from_pem(pem: &[u8]) -> Result<CaBundle, String> {
        let mut certs = Vec::new();
        let mut store = rustls::RootCertStore::empty();
        for (i, item) in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem).enumerate() {
            let (kind, der) = item.map_err(|e| format!("PEM section {}: {e}", i + 1))?;
            match kind {
                SectionKind::Certificate => {
                    store
                        .add(CertificateDer::from(der.as_slice()))
                        .map_err(|e| {
                            format!(
                                "certificate {} is not a usable X.509 certificate: {e}",
                                i + 1
                            )
                        })?;
                    certs.push(Certificate::from_der(&der).to_owned());
                }
                SectionKind::PrivateKey
                | SectionKind::RsaPrivateKey
                | SectionKind::EcPrivateKey => {
                    return Err(format!(
                        "PEM section {} is a private key: a CA bundle holds certificates only",
                        i + 1
                    ))
                }
                _ => return Err(format!("PEM section {} is not a certificate", i + 1)),
            }
        }
        if certs.is_empty() {
            return Err("no PEM certificate in the file".into());
        }
        Ok(CaBundle {
            certs,
            digest: Sha256::digest(pem).into(),
        })
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

static BUNDLE: LazyLock<ArcSwapOption<CaBundle>> = LazyLock::new(ArcSwapOption::empty);

/// Why the latest reload of the bundle was refused, and when; cleared when
/// the file holds a bundle in force again.
static LAST_ERROR: std::sync::Mutex<Option<CaBundleError>> = std::sync::Mutex::new(None);

/// A refused reload of the CA bundle, for `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaBundleError {
    #[serde(with = "crate::sources::rfc3339")]
    pub at: std::time::SystemTime,
    /// The path and why (never certificate or key material).
    pub error: String,
}

fn set_error(e: Option<CaBundleError>) {
    *LAST_ERROR.lock().unwrap_or_else(|p| p.into_inner()) = e;
}

/// The refused reload of the CA bundle, while the file still does not hold
/// a usable bundle (the previous roots stay in force meanwhile).
pub fn ca_bundle_error() -> Option<CaBundleError> {
    LAST_ERROR.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn read(path: &Path) -> Result<(Vec<u8>, [u8; 32]), IdentityError> {
    let bytes = std::fs::read(path).map_err(|e| IdentityError::CaBundle {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let digest = Sha256::digest(&bytes).into();
    Ok((bytes, digest))
}

fn install(bundle: CaBundle) -> usize {
    let n = bundle.len();
    BUNDLE.store(Some(Arc::new(bundle)));
    let rt = RUNTIME.load();
    rt.agent.store(Arc::new(agent(&rt.cfg)));
    bump(&COUNTERS.ca_bundle_loads);
    COUNTERS
        .ca_bundle_certificates
        .store(n as u64, Ordering::Relaxed);
    n
}

/// Reads the CA bundle at `path` and adds its certificates to the roots
/// trusted from now on. Returns the number of certificates. On error the
/// roots in force are kept.
pub fn load_ca_bundle(path: &Path) -> Result<usize, IdentityError> {
    let (bytes, _) = read(path)?;
    let bundle = CaBundle::from_pem(&bytes).map_err(|reason| IdentityError::CaBundle {
        path: path.display().to_string(),
        reason,
    })?;
    Ok(install(bundle))
}

/// Drops the CA bundle: only the web PKI roots are trusted from now on.
pub fn clear_ca_bundle() {
    BUNDLE.store(None);
    set_error(None);
    let rt = RUNTIME.load();
    rt.agent.store(Arc::new(agent(&rt.cfg)));
    COUNTERS.ca_bundle_certificates.store(0, Ordering::Relaxed);
}

/// Polls the bundle at `path` every `interval` until dropped.
pub struct CaBundleWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CaBundleWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// One poll: reloads the bundle when its content changed since the last
/// load or the last refused attempt. `Ok(None)` when unchanged.
fn poll(path: &Path, last: &mut [u8; 32]) -> Result<Option<usize>, IdentityError> {
    let (bytes, digest) = read(path)?;
    if digest == *last {
        return Ok(None);
    }
    // Remembered for good or bad: a refused bundle is reported once, not on
    // every poll, until its content changes again.
    *last = digest;
    let bundle = CaBundle::from_pem(&bytes).map_err(|reason| IdentityError::CaBundle {
        path: path.display().to_string(),
        reason,
    })?;
    Ok(Some(install(bundle)))
}

/// Starts polling the bundle loaded by [`load_ca_bundle`] from `path`.
pub fn watch_ca_bundle(path: PathBuf, interval: Duration) -> std::io::Result<CaBundleWatch> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut last = BUNDLE.load().as_ref().map(|b| b.digest).unwrap_or_default();
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ca-bundle-watch".into())
        .spawn(move || {
            // An unreadable file (mid-swap, deleted) is reported once per
            // spell, and the roots in force keep serving.
            let mut unreadable = false;
            while !s.load(Ordering::Relaxed) {
                std::thread::park_timeout(interval);
                if s.load(Ordering::Relaxed) {
                    break;
                }
                match poll(&path, &mut last) {
                    Ok(None) => {
                        unreadable = false;
                        // Back to the content in force (after a refused
                        // change or an unreadable spell): nothing to report.
                        if BUNDLE.load().as_ref().is_some_and(|b| b.digest == last) {
                            set_error(None);
                        }
                    }
                    Ok(Some(n)) => {
                        unreadable = false;
                        set_error(None);
                        tracing::info!(path = %path.display(), certificates = n, "CA bundle reloaded");
                    }
                    Err(e) => {
                        let read_error = std::fs::metadata(&path).is_err();
                        if !(read_error && unreadable) {
                            bump(&COUNTERS.ca_bundle_errors);
                            tracing::error!(error = %e, "CA bundle not reloaded; the previous roots stay in force");
                            set_error(Some(CaBundleError {
                                at: std::time::SystemTime::now(),
                                error: e.to_string(),
                            }));
                        }
                        unreadable = read_error;
                    }
                }
            }
        })?;
    Ok(CaBundleWatch {
        stop,
        thread: Some(thread),
    })
}

/// The HTTP client for fetches: bounded by the settings' timeouts, no
/// redirects, trusting the web PKI roots and the CA bundle.
pub(crate) fn agent(cfg: &JwtConfig) -> ureq::Agent {
    let roots = match BUNDLE.load_full() {
        None => RootCerts::WebPki,
        Some(b) => RootCerts::from(
            webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .chain(b.certs.iter().cloned()),
        ),
    };
    crate::outbound::agent(cfg.connect_timeout, cfg.timeout, roots)
}

/// The certificates of a checked bundle, as roots to trust on their own.
pub(crate) fn bundle_roots(b: &CaBundle) -> RootCerts {
    RootCerts::from(b.certs.iter().cloned())
}

/// The SHA-256 of a bundle's PEM text.
pub(crate) fn bundle_digest(b: &CaBundle) -> [u8; 32] {
    b.digest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bundles_are_refused() {
        assert!(CaBundle::from_pem(b"")
            .unwrap_err()
            .contains("no PEM certificate"));
        assert!(CaBundle::from_pem(b"just text").is_err());
        let junk = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(CaBundle::from_pem(junk)
            .unwrap_err()
            .contains("not a usable X.509"));
        let key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let e = CaBundle::from_pem(key).unwrap_err();
        assert!(e.contains("private key") && !e.contains("AAAA"), "{e}");
    }
}
