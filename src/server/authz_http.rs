//! The HTTP authorization listener (`--authz-http-addr`): the same Envoy-mode
//! policies as the gRPC `Check`, asked over plain HTTP.
//!
//! - `/envoy/...`: Envoy's HTTP authorization service (`ext_authz` with
//!   `http_service` and `path_prefix: /envoy`). Envoy sends the original
//!   method, the prefix and the original path (with its query), the original
//!   host and the headers its configuration allows, the body when it buffers
//!   it. An allow is a 200 whose headers Envoy copies upstream (those its
//!   `allowed_upstream_headers` match); a denial is the denial's status,
//!   headers and body.
//! - `/forward-auth`: a forward-auth subrequest (nginx `auth_request`, Caddy
//!   `forward_auth`, Traefik ForwardAuth). The original request is rebuilt
//!   from `X-Forwarded-Method` / `X-Original-Method`, `X-Forwarded-Proto`,
//!   `X-Forwarded-Host`, `X-Forwarded-Uri` / `X-Original-URI`; the other
//!   headers are the original request's. Only a peer in `--trusted-proxies`
//!   may ask: from any other address the answer is the failure denial,
//!   whatever the request says.
//! - anything else: 404, or the fallback given to [`router`].
//!
//! Decisions take the gRPC path ([`AuthzService::decide_request`]): inline
//! attempt, decision threads, deadline, span, decision log, metrics, shadow.
//! A request that cannot be read (too large, too slow, malformed forwarded
//! attributes, headers that are not UTF-8) is refused before any policy
//! runs, with a 4xx: never an allow.

use super::grpc::AuthzService;
use super::limits;
use super::State;
use crate::engine::{self, Decision, FailureReason};
use crate::response::{HeaderOption, Outcome};
use crate::telemetry::metrics::{self, DecidedBy, Protocol};
use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer};
use envoy_types::pb::envoy::service::auth::v3::{
    attribute_context, AttributeContext, CheckRequest,
};
use futures_util::FutureExt as _;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The path prefix of Envoy's HTTP authorization service
/// (`http_service.path_prefix`).
pub const ENVOY_PREFIX: &str = "/envoy";
/// The path of forward-auth subrequests.
pub const FORWARD_AUTH_PATH: &str = "/forward-auth";
/// The response header that lists, comma-separated, the request headers an
/// allow removes before the request goes upstream. Envoy's HTTP
/// authorization client acts on it; forward-auth proxies do not.
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";
/// Most header fields one request may carry.
pub const MAX_HEADERS: usize = 100;
/// Longest method name accepted (the standard ones are at most 7 bytes).
const MAX_METHOD_BYTES: usize = 32;
/// How long shutdown waits for in-flight requests before closing their
/// connections.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a forward-auth or Envoy HTTP request is refused before any policy
/// runs. The messages never quote the request.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the body is over --max-request-bytes ({limit})")]
    TooLarge { limit: usize },
    #[error("the body did not arrive within the read timeout")]
    Slow,
    #[error("the body could not be read")]
    Body,
    #[error("a header value is not UTF-8")]
    HeaderEncoding,
    #[error("the forwarded method is not an HTTP method")]
    Method,
    #[error("the forwarded URI is missing (X-Forwarded-Uri or X-Original-URI)")]
    MissingUri,
    #[error("the forwarded URI is not an origin-form request target")]
    Uri,
    #[error("the forwarded host is not a valid host")]
    Host,
    #[error("the forwarded protocol is neither http nor https")]
    Proto,
    #[error("forwarded headers disagree (X-Forwarded-* and X-Original-*) or repeat")]
    Conflict,
    #[error("forward-auth request from a peer outside --trusted-proxies")]
    UntrustedPeer,
}

impl Refused {
    /// A short name for the log line and the decision log's error.
    pub fn kind(&self) -> &'static str {
        match self {
            Refused::TooLarge { .. } => "too large",
            Refused::Slow => "too slow",
            Refused::Body => "unreadable body",
            Refused::HeaderEncoding => "bad header",
            Refused::Method => "bad method",
            Refused::MissingUri | Refused::Uri => "bad uri",
            Refused::Host => "bad host",
            Refused::Proto => "bad proto",
            Refused::Conflict => "conflicting forwarded headers",
            Refused::UntrustedPeer => "untrusted peer",
        }
    }

    /// The status of the refusal: the failure status for an untrusted peer
    /// (an ordinary denial), a 4xx naming the problem otherwise.
    pub(super) fn status(&self, config: &engine::EngineConfig) -> i32 {
        match self {
            Refused::TooLarge { .. } => 413,
            Refused::Slow => 408,
            Refused::UntrustedPeer => config.failure_status,
            _ => 400,
        }
    }
}

/// A bad `--trusted-proxies` entry.
#[derive(Debug, thiserror::Error)]
pub enum TrustedProxiesError {
    #[error("{0:?} is not an IP address or a CIDR range (such as 10.0.0.0/8 or fd00::/8)")]
    Syntax(String),
    #[error("{0:?}: the prefix length is longer than the address")]
    Prefix(String),
}

/// An address range: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, TrustedProxiesError> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| TrustedProxiesError::Syntax(s.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| TrustedProxiesError::Syntax(s.to_owned()))?,
        };
        if prefix > max {
            return Err(TrustedProxiesError::Prefix(s.to_owned()));
        }
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The peers whose forwarded headers are believed (`--trusted-proxies`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl Default for TrustedProxies {
    /// Loopback only: a proxy on the same host (or in the same pod).
    fn default() -> Self {
        TrustedProxies(vec![
            Cidr {
                addr: IpAddr::from([127, 0, 0, 0]),
                prefix: 8,
            },
            Cidr {
                addr: IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                prefix: 128,
            },
        ])
    }
}

impl TrustedProxies {
    /// Parses a list of ranges; empty entries are skipped, so an empty list
    /// (`--trusted-proxies ''`) trusts no peer.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, TrustedProxiesError> {
        list.iter()
            .map(AsRef::as_ref)
            .filter(|s| !s.trim().is_empty())
            .map(Cidr::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub fn none() -> Self {
        TrustedProxies(Vec::new())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    pub fn ranges(&self) -> &[Cidr] {
        &self.0
    }

    /// The client's address from `X-Forwarded-For`, when `peer` is trusted:
    /// the right-most entry that is not itself a trusted proxy (or the
    /// left-most when all are). `None` when the peer is not trusted, when
    /// there is no such header, or when an entry on the way is not an
    /// address.
    pub fn client_address(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        if !peer.is_some_and(|p| self.contains(p)) {
            return None;
        }
        let mut last = None;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let value = value.to_str().ok()?;
            for entry in value.rsplit(',') {
                let ip = forwarded_ip(entry.trim())?;
                if !self.contains(ip) {
                    return Some(ip);
                }
                last = Some(ip);
            }
        }
        last
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The address of the peer of a connection, set on each request by
/// [`serve`]. A request without it (a router driven directly) is from an
/// untrusted peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The routes of the listener. `fallback` answers every other path (404
/// without one).
pub fn router(state: Arc<State>, fallback: Option<Router>) -> Router {
    let routes = Router::new()
        .route(FORWARD_AUTH_PATH, any(forward_auth))
        .route(ENVOY_PREFIX, any(envoy))
        .route("/envoy/", any(envoy))
        .route("/envoy/{*rest}", any(envoy))
        .with_state(state);
    match fallback {
        Some(f) => routes.fallback_service(f),
        None => routes.fallback(not_found),
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "no such endpoint on the authorization listener\n",
    )
}

async fn envoy(AxState(state): AxState<Arc<State>>, req: Request) -> Response {
    answer(state, req, Protocol::EnvoyHttp).await
}

async fn forward_auth(AxState(state): AxState<Arc<State>>, req: Request) -> Response {
    answer(state, req, Protocol::ForwardAuth).await
}

/// Reads the request, decides, answers. A panic anywhere is answered with
/// the failure denial.
async fn answer(state: Arc<State>, req: Request, protocol: Protocol) -> Response {
    let service = AuthzService::new(state.clone());
    let work = async {
        let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
        let read = match protocol {
            Protocol::ForwardAuth => forward_request(&state, peer, req).await,
            _ => envoy_request(&state, peer, req).await,
        };
        match read {
            Ok(check) => {
                let (d, shadow) = service
                    .decide_request(Arc::new(check), None, protocol, std::time::Instant::now())
                    .await;
                let reply = reply(&state, &d, protocol);
                if let Some(job) = shadow {
                    job.submit();
                }
                reply
            }
            Err(why) => {
                let mut d = engine::failure_decision(
                    &state.config,
                    FailureReason::Unreadable,
                    format!("request refused: {why}"),
                );
                if let Outcome::Denied(den) = &mut d.response.outcome {
                    den.status = why.status(&state.config);
                }
                service.record_refusal(None, &d, protocol, why.kind(), &why);
                reply(&state, &d, protocol)
            }
        }
    };
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("the HTTP authorization request failed; request denied");
            metrics::global().decided(DecidedBy::Internal, std::time::Duration::ZERO);
            let d = engine::failure_decision(
                &state.config,
                FailureReason::Internal,
                "internal error while answering".into(),
            );
            reply(&state, &d, protocol)
        }
    }
}

/// The body, at most `--max-request-bytes`, within the read timeout.
pub(super) async fn read_body(
    state: &State,
    body: Body,
    headers: &HeaderMap,
) -> Result<Vec<u8>, Refused> {
    let limit = state.options.max_request_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Refused::TooLarge { limit });
    }
    match tokio::time::timeout(
        state.options.limits.read_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await
    {
        Err(_) => Err(Refused::Slow),
        Ok(Ok(b)) => Ok(b.to_vec()),
        Ok(Err(e)) => {
            // `to_bytes` reports its limit as a length-limit error.
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("length limit"));
            if over || e.to_string().contains("length limit") {
                Err(Refused::TooLarge { limit })
            } else {
                Err(Refused::Body)
            }
        }
    }
}

/// The request's headers as Envoy's `headers` map: lower-case names (as
/// received), repeated fields joined with `,` (`; ` for `cookie`), the
/// names in `skip` left out. A value that is not UTF-8 refuses the request.
fn header_map(headers: &HeaderMap, skip: &[&str]) -> Result<HashMap<String, String>, Refused> {
    let mut out: HashMap<String, String> = HashMap::with_capacity(headers.keys_len() + 4);
    for (name, value) in headers {
        let name = name.as_str();
        if skip.contains(&name) {
            continue;
        }
        let value = std::str::from_utf8(value.as_bytes()).map_err(|_| Refused::HeaderEncoding)?;
        match out.get_mut(name) {
            Some(old) => {
                old.push_str(if name == "cookie" { "; " } else { "," });
                old.push_str(value);
            }
            None => {
                out.insert(name.to_owned(), value.to_owned());
            }
        }
    }
    Ok(out)
}

/// The host: `Host`, else the URI's authority (HTTP/2). More than one
/// `Host` refuses the request.
fn request_host(req_headers: &HeaderMap, uri: &axum::http::Uri) -> Result<String, Refused> {
    let mut hosts = req_headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refused::Host);
    }
    match host {
        Some(v) => v.to_str().map(str::to_owned).map_err(|_| Refused::Host),
        None => Ok(uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default()),
    }
}

/// A forwarded scheme, when the peer is trusted: `http` or `https` only.
fn forwarded_scheme(
    trusted: bool,
    headers: &HeaderMap,
    strict: bool,
) -> Result<Option<String>, Refused> {
    if !trusted {
        return Ok(None);
    }
    let Some(v) = headers.get("x-forwarded-proto") else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| Refused::Proto)?;
    // Proxies in a chain may append: the first is the client's.
    let first = v
        .split(',')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match first.as_str() {
        "http" | "https" => Ok(Some(first)),
        _ if strict => Err(Refused::Proto),
        _ => Ok(None),
    }
}

fn source_peer(ip: Option<IpAddr>) -> Option<Peer> {
    let ip = ip?;
    Some(Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    })
}

/// The `CheckRequest` of an original request's attributes: its headers
/// with the pseudo-headers Envoy adds (`:authority`, `:method`, `:path`,
/// `:scheme` when known) and the body's length, as Envoy would send them.
fn assemble(
    method: String,
    path: String,
    host: String,
    scheme: Option<String>,
    mut headers: HashMap<String, String>,
    raw_body: Vec<u8>,
    source: Option<Peer>,
) -> CheckRequest {
    headers.insert(":authority".into(), host.clone());
    headers.insert(":method".into(), method.clone());
    headers.insert(":path".into(), path.clone());
    if let Some(s) = &scheme {
        headers.insert(":scheme".into(), s.clone());
    }
    if !raw_body.is_empty() {
        headers.insert("content-length".into(), raw_body.len().to_string());
    }
    let http = HttpRequest {
        id: headers.get("x-request-id").cloned().unwrap_or_default(),
        method,
        path,
        host,
        scheme: scheme.unwrap_or_default(),
        size: if raw_body.is_empty() {
            -1
        } else {
            raw_body.len() as i64
        },
        headers,
        raw_body,
        ..Default::default()
    };
    check_request(http, source)
}

/// The `CheckRequest` of one request's attributes.
fn check_request(http: HttpRequest, source: Option<Peer>) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source,
            request: Some(attribute_context::Request {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// A method as given: an HTTP token of at most [`MAX_METHOD_BYTES`].
fn valid_method(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= MAX_METHOD_BYTES
        && axum::http::Method::from_bytes(m.as_bytes()).is_ok()
}

/// An origin-form request target: `/`, then visible ASCII only.
fn valid_target(t: &str) -> bool {
    t.starts_with('/')
        && !t.starts_with("//")
        && t.bytes().all(|b| b.is_ascii_graphic())
        && t.parse::<axum::http::uri::PathAndQuery>().is_ok()
}

/// A host as it may appear in `Host`: an authority with no user info.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && !h.contains('@')
        && h.bytes().all(|b| b.is_ascii_graphic())
        && h.parse::<axum::http::uri::Authority>().is_ok()
}

/// Envoy's HTTP authorization request: the original method, the prefix and
/// the original path, the original host, the allowed headers, the body if
/// buffered.
async fn envoy_request(
    state: &State,
    peer: Option<IpAddr>,
    req: Request,
) -> Result<CheckRequest, Refused> {
    let (parts, body) = req.into_parts();
    let trusted = peer.is_some_and(|p| state.options.trusted_proxies.contains(p));
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let path = match target.strip_prefix(ENVOY_PREFIX) {
        Some(rest) if rest.starts_with('/') => rest.to_owned(),
        Some(rest) => format!("/{rest}"),
        None => return Err(Refused::Uri),
    };
    let method = parts.method.as_str().to_owned();
    if !valid_method(&method) {
        return Err(Refused::Method);
    }
    let host = request_host(&parts.headers, &parts.uri)?;
    let scheme = forwarded_scheme(trusted, &parts.headers, false)?;
    let headers = header_map(&parts.headers, &["content-length"])?;
    let raw_body = read_body(state, body, &parts.headers).await?;
    let source = source_peer(
        state
            .options
            .trusted_proxies
            .client_address(peer, &parts.headers),
    );
    Ok(assemble(
        method, path, host, scheme, headers, raw_body, source,
    ))
}

/// The value of a forwarded attribute, given by header `a` or its alias
/// `b`. A proxy sets (replaces) the one it knows and passes the client's
/// other headers on, so a value in the other name may come from the client:
/// both present with different values, or either repeated, refuses the
/// request rather than guess which one the proxy set.
fn forwarded(h: &HeaderMap, a: &str, b: &str) -> Result<Option<String>, Refused> {
    let mut found: Option<&[u8]> = None;
    for name in [a, b] {
        let mut values = h.get_all(name).iter();
        let Some(v) = values.next() else { continue };
        if values.next().is_some() {
            return Err(Refused::Conflict);
        }
        let v = v.as_bytes();
        match found {
            Some(old) if old != v => return Err(Refused::Conflict),
            _ => found = Some(v),
        }
    }
    found
        .map(|v| {
            std::str::from_utf8(v)
                .map(|s| s.trim().to_owned())
                .map_err(|_| Refused::HeaderEncoding)
        })
        .transpose()
}

/// A forward-auth subrequest: only from a trusted peer; the original request
/// is the forwarded method, URI, host and scheme with the subrequest's other
/// headers.
async fn forward_request(
    state: &State,
    peer: Option<IpAddr>,
    req: Request,
) -> Result<CheckRequest, Refused> {
    let trusted = peer.is_some_and(|p| state.options.trusted_proxies.contains(p));
    if !trusted {
        return Err(Refused::UntrustedPeer);
    }
    let (parts, body) = req.into_parts();
    let h = &parts.headers;
    let method = match forwarded(h, "x-forwarded-method", "x-original-method")? {
        Some(m) => m,
        None => parts.method.as_str().to_owned(),
    };
    if !valid_method(&method) {
        return Err(Refused::Method);
    }
    let path = forwarded(h, "x-forwarded-uri", "x-original-uri")?.ok_or(Refused::MissingUri)?;
    if !valid_target(&path) {
        return Err(Refused::Uri);
    }
    let host = match forwarded(h, "x-forwarded-host", "x-forwarded-host")? {
        // Proxies in a chain may append: the first is the client's.
        Some(v) => v.split(',').next().unwrap_or("").trim().to_owned(),
        None => request_host(h, &parts.uri)?,
    };
    if !valid_host(&host) {
        return Err(Refused::Host);
    }
    let scheme = forwarded_scheme(true, h, true)?;
    let mut headers = header_map(h, &["host", "content-length"])?;
    let raw_body = read_body(state, body, h).await?;
    let source = source_peer(state.options.trusted_proxies.client_address(peer, h));
    headers.insert("host".into(), host.clone());
    Ok(assemble(
        method, path, host, scheme, headers, raw_body, source,
    ))
}

/// Headers that frame the HTTP answer itself: the server writes them, a
/// policy's value for them is left out (it could only garble the answer).
const FRAMING_HEADERS: [&str; 5] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
];

fn push_header(out: &mut HeaderMap, h: &HeaderOption) -> Result<(), ()> {
    let name = HeaderName::from_bytes(h.key.as_bytes()).map_err(|_| ())?;
    if FRAMING_HEADERS.contains(&name.as_str()) {
        return Ok(());
    }
    let value = HeaderValue::from_str(&h.value).map_err(|_| ())?;
    out.append(name, value);
    Ok(())
}

/// The decision as an HTTP answer: an allow is 200 and an empty body, with
/// the headers to add upstream as response headers (for Envoy, also the
/// client response headers and the names to remove in
/// [`HEADERS_TO_REMOVE`]); a denial is its status, headers and body. An
/// answer that cannot be written (it cannot happen with what the
/// policy builders accept) is the failure denial.
fn reply(state: &State, d: &Decision, protocol: Protocol) -> Response {
    match build_reply(d, protocol) {
        Some(r) => r,
        None => {
            tracing::error!("a decision could not be written as an HTTP answer; request denied");
            let d = engine::failure_decision(
                &state.config,
                FailureReason::Internal,
                "the answer cannot be written".into(),
            );
            build_reply(&d, protocol).unwrap_or_else(|| {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::FORBIDDEN;
                r
            })
        }
    }
}

fn build_reply(d: &Decision, protocol: Protocol) -> Option<Response> {
    let mut headers = HeaderMap::new();
    let (status, body) = match &d.response.outcome {
        Outcome::Ok(ok) => {
            for h in &ok.headers {
                push_header(&mut headers, h).ok()?;
            }
            if protocol == Protocol::EnvoyHttp {
                for h in &ok.response_headers_to_add {
                    push_header(&mut headers, h).ok()?;
                }
            }
            if !ok.headers_to_remove.is_empty() {
                let names = ok.headers_to_remove.join(",");
                headers.insert(HEADERS_TO_REMOVE, HeaderValue::from_str(&names).ok()?);
            }
            (StatusCode::OK, Body::empty())
        }
        Outcome::Denied(den) => {
            for h in &den.headers {
                push_header(&mut headers, h).ok()?;
            }
            let status = u16::try_from(den.status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| !s.is_success() && !s.is_informational())?;
            (status, Body::from(den.body.clone()))
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    Some(r)
}

/// Serves [`router`] on `listener` (HTTP/1.1 and h2c) until `shutdown`
/// resolves, then stops accepting and lets in-flight requests finish (for
/// at most [`DRAIN_TIMEOUT`]). Header limits: [`MAX_HEADERS`] fields and
/// [`limits::MAX_HEADER_LIST_BYTES`] in all, read within the read timeout.
pub async fn serve(
    state: Arc<State>,
    listener: tokio::net::TcpListener,
    fallback: Option<Router>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    let app = router(state.clone(), fallback);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.options.limits.read_timeout)
        .max_headers(MAX_HEADERS)
        .max_buf_size(limits::MAX_HEADER_LIST_BYTES as usize);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits::MAX_HEADER_LIST_BYTES)
        .max_concurrent_streams(limits::MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(limits::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(limits::KEEPALIVE_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let shutdown = shutdown.fuse();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "authz HTTP listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                hyper::service::Service::call(&service, req)
            });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "authz HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("authz HTTP listener: connections still open after the drain timeout");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_ranges() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()), "v4-mapped");
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!(!all.contains("::2".parse().unwrap()));
        let one = Cidr::parse("fd00::1").unwrap();
        assert!(one.contains("fd00::1".parse().unwrap()));
        assert!(!one.contains("fd00::2".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
        assert!(Cidr::parse("10.0.0.0/x").is_err());
    }

    #[test]
    fn default_trusts_loopback_only_and_empty_trusts_none() {
        let t = TrustedProxies::default();
        assert!(t.contains("127.0.0.1".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(!t.contains("192.168.1.1".parse().unwrap()));
        let none = TrustedProxies::parse(&[""]).unwrap();
        assert!(!none.contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn client_address_walks_forwarded_for_from_the_right() {
        let t = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.9".parse().unwrap());
        let proxy = Some("10.0.0.1".parse().unwrap());
        assert_eq!(
            t.client_address(proxy, &h),
            Some("1.2.3.4".parse().unwrap()),
            "the first untrusted hop from the right, never the spoofable left"
        );
        assert_eq!(t.client_address(Some("8.8.8.8".parse().unwrap()), &h), None);
        assert_eq!(t.client_address(None, &h), None);
        let mut bad = HeaderMap::new();
        bad.append("x-forwarded-for", "1.2.3.4, nonsense".parse().unwrap());
        assert_eq!(t.client_address(proxy, &bad), None);
        let mut port = HeaderMap::new();
        port.append("x-forwarded-for", "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(
            t.client_address(proxy, &port),
            Some("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn targets_methods_and_hosts() {
        assert!(valid_target("/a/b?c=d"));
        assert!(!valid_target("a/b"));
        assert!(!valid_target("//evil.example/x"));
        assert!(!valid_target("http://h/x"));
        assert!(!valid_target("/a b"));
        assert!(!valid_target("/a\u{7f}"));
        assert!(valid_method("GET"));
        assert!(valid_method("PROPFIND"));
        assert!(!valid_method("GE T"));
        assert!(!valid_method(""));
        assert!(valid_host("example.com:8443"));
        assert!(valid_host("[::1]:80"));
        assert!(!valid_host("user@example.com"));
        assert!(!valid_host("a b"));
        assert!(!valid_host(""));
    }
}
