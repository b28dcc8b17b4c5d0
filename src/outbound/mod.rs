//! Requests celgate makes on a policy's behalf: the JWKS fetches of
//! `jwks.Fetch` ([`crate::identity::jwks`]) and the calls of the `http`
//! library ([`http`]). What they share lives here:
//!
//! * [`blocking`]: a blocking call made without stalling a tokio worker;
//! * [`freshness`]: what a response's `Cache-Control` says about caching it;
//! * [`agent`]: the HTTP client, bounded by timeouts, following no
//!   redirects (a redirect could leave the allow-list: whoever follows one
//!   checks it first), trusting the given roots.
//!
//! URLs are normalised and matched against allow-lists by
//! [`crate::identity::url`], which both use.

pub mod http;

use std::time::Duration;
use ureq::tls::{RootCerts, TlsConfig};

/// Runs `f`, which blocks, without stalling a tokio worker thread: on a
/// multi-threaded runtime's worker it runs inside
/// [`tokio::task::block_in_place`], so the worker's other tasks move to
/// another thread meanwhile. Without a runtime (CLI, tests), or on a
/// current-thread runtime, it simply blocks.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Locks `m`; a lock whose holder panicked is taken over, its data used as
/// they are (a panic must not take the caches of every later call with it).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a `Cache-Control` header says about keeping a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// No header, or no directive about freshness.
    Unspecified,
    /// `max-age=N` (the last one given).
    MaxAge(Duration),
    /// `no-cache` or `no-store`: not to be reused without asking again.
    NoStore,
}

/// Reads a `Cache-Control` header. `no-cache` and `no-store` win over any
/// `max-age`; a `max-age` that is not a number is ignored.
pub(crate) fn freshness(cache_control: Option<&str>) -> Freshness {
    let mut f = Freshness::Unspecified;
    for d in cache_control.unwrap_or("").split(',') {
        let d = d.trim().to_ascii_lowercase();
        if let Some(v) = d.strip_prefix("max-age=") {
            if let Ok(s) = v.trim_matches('"').parse::<u64>() {
                f = Freshness::MaxAge(Duration::from_secs(s));
            }
        } else if d == "no-cache" || d == "no-store" {
            return Freshness::NoStore;
        }
    }
    f
}

/// An HTTP client with these limits on DNS + connect + TLS handshake
/// (`connect`) and on a whole exchange, body included (`total`), that
/// follows no redirects, does not turn an HTTP status into an error, and
/// trusts `roots`.
pub(crate) fn agent(connect: Duration, total: Duration, roots: RootCerts) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(connect))
        .timeout_global(Some(total))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent("celgate")
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_is_read() {
        assert_eq!(freshness(None), Freshness::Unspecified);
        assert_eq!(freshness(Some("public")), Freshness::Unspecified);
        assert_eq!(
            freshness(Some("public, max-age=600")),
            Freshness::MaxAge(Duration::from_secs(600))
        );
        assert_eq!(
            freshness(Some("Max-Age=\"5\"")),
            Freshness::MaxAge(Duration::from_secs(5))
        );
        assert_eq!(freshness(Some("max-age=junk")), Freshness::Unspecified);
        assert_eq!(freshness(Some("max-age=60, no-store")), Freshness::NoStore);
        assert_eq!(freshness(Some("no-cache")), Freshness::NoStore);
    }
}
