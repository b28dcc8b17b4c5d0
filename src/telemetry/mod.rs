//! Observability: Prometheus metrics, OpenTelemetry traces, decision logs.

pub mod metrics;
pub mod openreports;
pub mod report;

/// Series owned outside the metrics registry (decision log; identity caches
/// when present), appended to `/metrics`.
pub fn extra_metrics() -> String {
    let (written, dropped) = decision_log::counts();
    let mut out = identity_metrics();
    out += &http_metrics();
    out += &format!(
        "# HELP celgate_decision_log_written_total Decision log lines written.\n\
         # TYPE celgate_decision_log_written_total counter\n\
         celgate_decision_log_written_total {written}\n\
         # HELP celgate_decision_log_dropped_total Decision log lines dropped because the writer fell behind.\n\
         # TYPE celgate_decision_log_dropped_total counter\n\
         celgate_decision_log_dropped_total {dropped}\n"
    );
    out
}

/// Series of the `http` library's calls and cache.
fn http_metrics() -> String {
    use std::fmt::Write as _;
    let s = crate::outbound::http::stats();
    let mut out = String::new();
    for (name, kind, help, v) in [
        (
            "celgate_http_requests_total",
            "counter",
            "Requests made by the http library (a call with redirects counts once).",
            s.requests,
        ),
        (
            "celgate_http_request_errors_total",
            "counter",
            "Requests of the http library that gave no answer.",
            s.errors,
        ),
        (
            "celgate_http_cache_hits_total",
            "counter",
            "http.Get calls answered from the cache.",
            s.cache_hits,
        ),
        (
            "celgate_http_shared_total",
            "counter",
            "http.Get calls that shared the same request of another call.",
            s.shared,
        ),
        (
            "celgate_http_cache_evictions_total",
            "counter",
            "Cached http.Get answers dropped to make room (--http-cache-max-bytes).",
            s.evictions,
        ),
        (
            "celgate_http_cache_bytes",
            "gauge",
            "Bytes of http.Get answers cached.",
            s.cache_bytes,
        ),
    ] {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        );
    }
    out
}

/// JWKS and verified-token cache series.
fn identity_metrics() -> String {
    use std::fmt::Write as _;
    let s = crate::identity::stats();
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        );
    };
    counter(
        "celgate_jwks_cache_hits_total",
        "jwks.Fetch answered from a fresh cached key set.",
        s.jwks_cache_hits,
    );
    counter(
        "celgate_jwks_stale_hits_total",
        "jwks.Fetch answered from a stale key set while it is refreshed.",
        s.jwks_stale_hits,
    );
    counter(
        "celgate_jwks_kid_refreshes_refused_total",
        "Refreshes for an unknown kid refused by the rate limit.",
        s.jwks_kid_refreshes_refused,
    );
    counter(
        "celgate_jwt_token_cache_hits_total",
        "Tokens found already verified.",
        s.token_cache_hits,
    );
    counter(
        "celgate_jwt_token_cache_misses_total",
        "Tokens whose signature was checked.",
        s.token_cache_misses,
    );
    counter(
        "celgate_jwt_invalid_cache_hits_total",
        "Tokens answered invalid from the short-lived invalid-token cache.",
        s.invalid_cache_hits,
    );
    counter(
        "celgate_jwks_evictions_total",
        "JWKS URLs dropped from the cache to make room (--jwks-max-urls).",
        s.jwks_evictions,
    );
    counter(
        "celgate_jwks_ca_bundle_loads_total",
        "CA bundle loads that succeeded (--jwks-ca-bundle).",
        s.ca_bundle_loads,
    );
    counter(
        "celgate_jwks_ca_bundle_errors_total",
        "CA bundle reloads refused; the previous roots stayed in force.",
        s.ca_bundle_errors,
    );
    let _ = write!(
        out,
        "# HELP celgate_jwks_urls JWKS URLs cached (--jwks-max-urls).\n\
         # TYPE celgate_jwks_urls gauge\n\
         celgate_jwks_urls {}\n",
        s.jwks_urls
    );
    let _ = write!(
        out,
        "# HELP celgate_jwks_ca_bundle_certificates Certificates of the CA bundle in force.\n\
         # TYPE celgate_jwks_ca_bundle_certificates gauge\n\
         celgate_jwks_ca_bundle_certificates {}\n",
        s.ca_bundle_certificates
    );
    let urls = &s.jwks;
    per_url(
        &mut out,
        urls,
        "celgate_jwks_fetches_total",
        "counter",
        "HTTP fetches of a JWKS, by URL (without its query).",
        |u| u.fetches,
    );
    per_url(
        &mut out,
        urls,
        "celgate_jwks_fetch_errors_total",
        "counter",
        "JWKS fetches that failed (the cached keys keep serving), by URL.",
        |u| u.errors,
    );
    per_url(
        &mut out,
        urls,
        "celgate_jwks_keys",
        "gauge",
        "Keys in the cached set, by URL.",
        |u| u.keys as u64,
    );
    out
}
pub mod decision_log;
pub mod otel;

/// One series with a `url` label per JWKS URL.
fn per_url(
    out: &mut String,
    urls: &[crate::identity::JwksUrlStats],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&crate::identity::JwksUrlStats) -> u64,
) {
    use std::fmt::Write as _;
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    for u in urls {
        let _ = writeln!(
            out,
            "{name}{{url=\"{}\"}} {}",
            metrics::escape(&u.url),
            value(u)
        );
    }
}
