//! The HTTP authorization server's answer to one request, without the
//! listener: the request the server received (or the one nested in its
//! body) becomes an `http.CheckRequest`, the input expression may rewrite
//! it, the HTTP-mode policies decide ([`crate::engine::evaluate_http`]),
//! and the output expression (or the default below) turns their
//! `http.CheckResponse` into the HTTP response sent back.
//!
//! The default answer, as the Kyverno Authz Server's: an allow is `200`
//! with an empty body; a denial is `403` with the reason as a `text/plain`
//! body. A request celgate cannot decide (a `failurePolicy: Fail` policy
//! that fails, a nested request that cannot be read, an input or output
//! expression that fails) gets the failure denial of the engine's
//! configuration (`--failure-status`, `--failure-body`,
//! `--failure-header`), never a `5xx` with the error's text.
//!
//! [`answer`] is pure: the same set, configuration, options and request
//! give the same response, and it records the decision's metrics with
//! `mode="http"`.

use crate::cel::check;
use crate::cel::eval::lib::httpauthz::{self, Attributes, CheckRequest, MultiMap, ServerResponse};
use crate::cel::eval::{self, Ctx, Meter, Value};
use crate::engine::{self, EngineConfig, EvalError, FailureReason, HttpDecision, PolicyTrace};
use crate::policy::PolicySet;
use crate::telemetry::metrics::{self, DecidedBy};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use std::sync::Arc;

/// The options of the HTTP authorization server, as its flags give them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpModeOptions {
    /// `--nested-request`: the request to authorize is the HTTP/1.x
    /// request written in the body of the one received.
    pub nested_request: bool,
    /// `--input-expression`: CEL turning the `http.CheckRequest` built
    /// from the request (`object`) into the one the policies decide.
    pub input_expression: Option<String>,
    /// `--output-expression`: CEL turning the policies' answer (an
    /// `http.CheckResponse`, `object`) into the `httpserver.HttpResponse`
    /// sent back.
    pub output_expression: Option<String>,
}

/// An expression of the options that does not compile, naming its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpModeError {
    #[error("--input-expression: {0}")]
    Input(String),
    #[error("--output-expression: {0}")]
    Output(String),
}

/// [`HttpModeOptions`] compiled once, at startup (the default: Kyverno's
/// defaults, no expressions).
#[derive(Debug, Default)]
pub struct HttpMode {
    nested_request: bool,
    input: Option<eval::Program>,
    output: Option<eval::Program>,
}

/// The default output expression's statuses.
pub const ALLOW_STATUS: u16 = 200;
pub const DENY_STATUS: u16 = engine::HTTP_DENIED_STATUS as u16;
const TEXT: &str = "text/plain; charset=utf-8";

impl HttpMode {
    /// Compiles the options' expressions: each is parsed, type-checked (the
    /// input must return an `http.CheckRequest`, the output an
    /// `httpserver.HttpResponse`) and planned.
    pub fn compile(options: &HttpModeOptions) -> Result<HttpMode, HttpModeError> {
        let input = match &options.input_expression {
            Some(src) => Some(
                compile_expression(src, check::Mode::Http, httpauthz::CHECK_REQUEST)
                    .map_err(HttpModeError::Input)?,
            ),
            None => None,
        };
        let output = match &options.output_expression {
            Some(src) => Some(
                compile_expression(src, check::Mode::HttpOutput, httpauthz::SERVER_RESPONSE)
                    .map_err(HttpModeError::Output)?,
            ),
            None => None,
        };
        Ok(HttpMode {
            nested_request: options.nested_request,
            input,
            output,
        })
    }
}

/// Parses, checks and plans one expression of `mode` that must return a
/// value of type `want`.
fn compile_expression(
    source: &str,
    mode: check::Mode,
    want: &str,
) -> Result<eval::Program, String> {
    crate::cel::limits::on_load_stack(|| {
        crate::cel::limits::check_source(source).map_err(|e| e.to_string())?;
        let program = crate::cel::env()
            .compile(source)
            .map_err(|e| e.to_string().trim().to_owned())?;
        if crate::cel::limits::depth(program.expression()) > crate::cel::limits::MAX_DEPTH {
            return Err(crate::cel::limits::LimitError::TooDeep.to_string());
        }
        crate::cel::check_literal_patterns(program.expression())?;
        if !crate::policy::variable_refs(&program).is_empty()
            || crate::policy::variables_misused(&program)
        {
            return Err("there are no variables here: `object` is all it reads".into());
        }
        let scope = check::Scope {
            mode,
            variables: None,
        };
        let info = check::check(&program, &scope).map_err(|errors| {
            errors
                .iter()
                .map(|e| format!("at offset {}: {}", e.offset, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        match &info.ty {
            check::Ty::Dyn => {}
            check::Ty::Object(n) if &**n == want => {}
            other => return Err(format!("must return {want}, not {other}")),
        }
        let budget = check::cost::budget();
        if info.cost > budget as f64 {
            return Err(format!(
                "estimated worst-case cost is {} units, over the budget of {budget}",
                info.cost.ceil() as u64
            ));
        }
        eval::compile(program.expression(), &|_| None).map_err(|e| e.0)
    })
}

/// The `http.CheckRequest` of a request the server received: its method,
/// headers (by canonical name, `Host` apart as `host`), protocol, decoded
/// path and query parameters, and body, as Go's `net/http` reads them.
pub fn check_request(parts: &http::request::Parts, body: &[u8]) -> CheckRequest {
    let mut pairs: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != HOST)
        .map(|(name, value)| {
            (
                httpauthz::canonical_header_key(name.as_str()),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    // Stable: the values of one name keep their order.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let host = match parts.uri.authority() {
        Some(a) => a.as_str().to_owned(),
        None => parts
            .headers
            .get(HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .unwrap_or_default(),
    };
    let protocol = match parts.version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    };
    // Go leaves the scheme empty but for a request line in absolute form;
    // an HTTP/2 request always carries one, which Go does not show.
    let scheme = match parts.version {
        http::Version::HTTP_2 | http::Version::HTTP_3 => "",
        _ => parts.uri.scheme_str().unwrap_or(""),
    };
    let raw_path = parts.uri.path();
    let path = percent_decode(raw_path, false).unwrap_or_else(|| raw_path.to_owned());
    CheckRequest {
        attributes: Arc::new(Attributes {
            method: Arc::from(parts.method.as_str()),
            header: MultiMap::from_pairs(pairs),
            host: Arc::from(host),
            protocol: Arc::from(protocol),
            content_length: body.len() as i64,
            body: Arc::from(body),
            scheme: Arc::from(scheme),
            path: Arc::from(path),
            query: MultiMap::from_pairs(parse_query(parts.uri.query().unwrap_or(""))),
            fragment: Arc::from(""),
        }),
    }
}

/// `%XX` decoded (and, in a query, `+` as a space) as Go decodes them;
/// `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str, query: bool) -> Option<String> {
    String::from_utf8(crate::cel::eval::lib::url::unescape_component(s, query)?).ok()
}

/// The query's parameters as Go's `url.ParseQuery` reads them: pairs split
/// on `&`, each on its first `=`, names and values decoded; a pair with a
/// `;` or a bad escape is dropped.
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty() && !p.contains(';'))
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

/// The HTTP/1.x request written in `body` (`--nested-request`): its
/// head and, when it has a `content-length`, that many bytes of body.
pub fn nested_request(body: &[u8]) -> Result<(http::request::Parts, &[u8]), String> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(body) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err("the nested request's head is incomplete".into())
        }
        Err(e) => return Err(format!("the nested request is malformed: {e}")),
    };
    let mut builder = http::Request::builder()
        .method(req.method.unwrap_or("GET"))
        .uri(req.path.unwrap_or("/"))
        .version(match req.version {
            Some(0) => http::Version::HTTP_10,
            _ => http::Version::HTTP_11,
        });
    let mut length = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("a nested request with a transfer-encoding is not read: send its body with a content-length".into());
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("the nested request's content-length is not a number")?;
        }
        builder = builder.header(h.name, h.value);
    }
    let rest = &body[head..];
    if rest.len() < length {
        return Err("the nested request's body is shorter than its content-length".into());
    }
    let parts = builder
        .body(())
        .map_err(|e| format!("the nested request is malformed: {e}"))?
        .into_parts()
        .0;
    Ok((parts, &rest[..length]))
}

/// Everything [`answer_detailed`] knows of one answer.
#[derive(Debug)]
pub struct HttpAnswer {
    pub response: http::Response<Bytes>,
    pub decision: HttpDecision,
    /// What each policy did, when asked for.
    pub trace: Vec<PolicyTrace>,
}

/// The response to one request of the HTTP authorization server: `parts`
/// and `body` are the request as received.
pub fn answer(
    set: &PolicySet,
    config: &EngineConfig,
    mode: &HttpMode,
    parts: &http::request::Parts,
    body: &[u8],
) -> http::Response<Bytes> {
    answer_detailed(set, config, mode, parts, body, false).response
}

/// As [`answer`], with the decision and, with `trace`, what each policy did.
pub fn answer_detailed(
    set: &PolicySet,
    config: &EngineConfig,
    mode: &HttpMode,
    parts: &http::request::Parts,
    body: &[u8],
    trace: bool,
) -> HttpAnswer {
    let started = std::time::Instant::now();
    let (answer, how) = decide(set, config, mode, parts, body, trace);
    let m = metrics::global();
    if m.enabled() {
        let policy = answer
            .decision
            .policy
            .as_deref()
            .and_then(|p| set.get_http(p))
            .map(|p| &*p.metrics);
        let how = match (how, policy) {
            (How::Decided, Some(p)) if answer.decision.failure.is_some() => DecidedBy::Error(p),
            (How::Decided, Some(p)) => DecidedBy::Policy {
                policy: p,
                allowed: answer.decision.allowed(),
            },
            (How::Decided, None) => DecidedBy::Default,
            (How::Unreadable, _) => DecidedBy::Unreadable,
            (How::Expression, _) => DecidedBy::Expression,
        };
        m.decided_in(metrics::Mode::Http, how, started.elapsed());
    }
    answer
}

/// What decided, for the metrics.
#[derive(Clone, Copy)]
enum How {
    Decided,
    Unreadable,
    Expression,
}

fn decide(
    set: &PolicySet,
    config: &EngineConfig,
    mode: &HttpMode,
    parts: &http::request::Parts,
    body: &[u8],
    trace: bool,
) -> (HttpAnswer, How) {
    let failed = |reason, how, error: String| {
        let decision = HttpDecision::failed(reason, None, EvalError::server(error));
        let response = failure_response(config, reason, &decision.audit);
        (
            HttpAnswer {
                response,
                decision,
                trace: Vec::new(),
            },
            how,
        )
    };
    let request = if mode.nested_request {
        match nested_request(body) {
            Ok((nested, nested_body)) => check_request(&nested, nested_body),
            Err(e) => return failed(FailureReason::Unreadable, How::Unreadable, e),
        }
    } else {
        check_request(parts, body)
    };
    let request = match &mode.input {
        None => request,
        Some(input) => match run_input(config, input, request) {
            Ok(r) => r,
            Err(e) => return failed(FailureReason::Evaluation, How::Expression, e),
        },
    };
    let (decision, traces) = engine::evaluate_http(set, config, &request, None, trace);
    if let Some(reason) = decision.failure {
        let response = failure_response(config, reason, &decision.audit);
        return (
            HttpAnswer {
                response,
                decision,
                trace: traces,
            },
            How::Decided,
        );
    }
    let shaped = match &mode.output {
        None => Ok(default_response(&decision.response)),
        Some(output) => run_output(config, output, &decision.response),
    };
    let response = shaped.and_then(|r| wire(r, &engine::audit_headers(config, &decision.audit)));
    match response {
        Ok(response) => (
            HttpAnswer {
                response,
                decision,
                trace: traces,
            },
            How::Decided,
        ),
        Err(e) => {
            let (mut a, how) = failed(FailureReason::Evaluation, How::Expression, e);
            a.decision.policy = decision.policy;
            a.decision.validation = decision.validation;
            a.decision.evaluated = decision.evaluated;
            a.trace = traces;
            (a, how)
        }
    }
}

fn run_input(
    config: &EngineConfig,
    input: &eval::Program,
    request: CheckRequest,
) -> Result<CheckRequest, String> {
    let mut ctx = Ctx::for_http(Value::object(request), Meter::new(config.cost_budget));
    let v = input
        .eval(&mut ctx)
        .map_err(|e| format!("the input expression failed: {}", e.kind.as_str()))?;
    httpauthz::into_check_request(v).map_err(|other| {
        format!(
            "the input expression returned {}, not an http.CheckRequest",
            other.type_name()
        )
    })
}

fn run_output(
    config: &EngineConfig,
    output: &eval::Program,
    response: &httpauthz::CheckResponse,
) -> Result<ServerResponse, String> {
    let mut ctx = Ctx::for_http(
        Value::object(response.clone()),
        Meter::new(config.cost_budget),
    );
    let v = output
        .eval(&mut ctx)
        .map_err(|e| format!("the output expression failed: {}", e.kind.as_str()))?;
    httpauthz::into_server_response(v).map_err(|other| {
        format!(
            "the output expression returned {}, not an httpserver.HttpResponse",
            other.type_name()
        )
    })
}

/// The default output: `200` and no body for an allow, `403` and the
/// reason for a denial.
pub fn default_response(r: &httpauthz::CheckResponse) -> ServerResponse {
    match &r.denied {
        Some(d) if !r.is_allowed() => ServerResponse {
            status: i64::from(DENY_STATUS),
            header: MultiMap::default(),
            body: Arc::from(d.reason.as_bytes()),
        },
        _ => ServerResponse {
            status: i64::from(ALLOW_STATUS),
            ..Default::default()
        },
    }
}

/// `r` as the response sent, with `extra` headers (the audit's). A body
/// with no `content-type` is `text/plain; charset=utf-8` when it is UTF-8
/// text and `application/octet-stream` otherwise. An output that cannot be
/// sent (a status outside 200–599, a header that is not one) is an error.
fn wire(
    r: ServerResponse,
    extra: &[crate::response::HeaderOption],
) -> Result<http::Response<Bytes>, String> {
    let status = u16::try_from(r.status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .ok_or_else(|| format!("status {} cannot be sent (200 to 599)", r.status))?;
    let mut response = http::Response::new(Bytes::copy_from_slice(&r.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in r.header.pairs() {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| "a header name of the output is not an HTTP header name".to_owned())?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| "a header value of the output holds a control character".to_owned())?;
        headers.append(n, v);
    }
    if !r.body.is_empty() && !headers.contains_key(CONTENT_TYPE) {
        let t = if std::str::from_utf8(&r.body).is_ok() {
            TEXT
        } else {
            "application/octet-stream"
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(t));
    }
    add_headers(headers, extra);
    Ok(response)
}

fn add_headers(headers: &mut http::HeaderMap, extra: &[crate::response::HeaderOption]) {
    for h in extra {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.key.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) {
            headers.append(n, v);
        }
    }
}

/// The failure denial of `config` for `reason`, as Envoy mode sends it:
/// its status, body and marker header.
/// The failure denial for `reason`, as the server sends it when it cannot
/// decide at all (a full decision queue, the decision deadline).
pub fn refusal(config: &EngineConfig, reason: FailureReason) -> http::Response<Bytes> {
    failure_response(config, reason, &[])
}

fn failure_response(
    config: &EngineConfig,
    reason: FailureReason,
    audit: &[engine::AuditEntry],
) -> http::Response<Bytes> {
    let status = match reason {
        FailureReason::Overload => engine::OVERLOAD_STATUS,
        _ => config.failure_status,
    };
    let body = config.failure_body(reason);
    let mut response = http::Response::new(Bytes::from(body.clone()));
    *response.status_mut() = u16::try_from(status)
        .ok()
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .unwrap_or(http::StatusCode::FORBIDDEN);
    let headers = response.headers_mut();
    if !body.is_empty() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    }
    add_headers(headers, &config.failure_headers(reason));
    add_headers(headers, &engine::audit_headers(config, audit));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(yaml: &str) -> PolicySet {
        let docs = crate::policy::load::parse_documents("p.yaml".as_ref(), yaml).unwrap();
        PolicySet::compile(docs).unwrap()
    }

    fn policy(name: &str, validation: &str) -> String {
        format!(
            "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: {{ name: {name} }}\nspec:\n  evaluation: {{ mode: HTTP }}\n  validations:\n  - expression: '{validation}'\n"
        )
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn plain() -> HttpMode {
        HttpMode::compile(&HttpModeOptions::default()).unwrap()
    }

    /// The response as bytes: status line, headers in order, blank line, body.
    fn wire_text(r: &http::Response<Bytes>) -> String {
        let mut out = format!("{}\n", r.status().as_u16());
        for (k, v) in r.headers() {
            out.push_str(&format!("{k}: {}\n", v.to_str().unwrap()));
        }
        out.push('\n');
        out.push_str(&String::from_utf8_lossy(r.body()));
        out
    }

    const HEADER_POLICY: &str = r#""bar" in object.attributes.Header("foo") ? http.Allowed().Response() : http.Denied("not allowed").Response()"#;

    #[test]
    fn the_default_wire_format_is_kyvernos() {
        let s = set(&policy("headers", HEADER_POLICY));
        let config = EngineConfig::default();
        let allowed = answer(
            &s,
            &config,
            &plain(),
            &request("GET", "/get", &[("foo", "bar")]),
            b"",
        );
        assert_eq!(wire_text(&allowed), "200\n\n");
        let denied = answer(&s, &config, &plain(), &request("GET", "/get", &[]), b"");
        assert_eq!(
            wire_text(&denied),
            "403\ncontent-type: text/plain; charset=utf-8\n\nnot allowed"
        );
        // No policy answers: allowed.
        let none = set(&policy("none", "null"));
        let r = answer(&none, &config, &plain(), &request("GET", "/", &[]), b"");
        assert_eq!(wire_text(&r), "200\n\n");
    }

    #[test]
    fn a_failing_policy_is_the_engines_failure_denial() {
        let s = set(&policy(
            "broken",
            r#"int(object.attributes.Header("x")[0]) == 1 ? null : null"#,
        ));
        let config = EngineConfig::default();
        let r = answer(&s, &config, &plain(), &request("GET", "/", &[]), b"");
        assert_eq!(
            wire_text(&r),
            "403\ncontent-type: text/plain; charset=utf-8\nx-celgate-failure: evaluation\n\nrequest denied: a policy could not be evaluated\n"
        );
        let config = EngineConfig {
            failure_status: 500,
            failure_body: Some("no".into()),
            failure_header: None,
            ..Default::default()
        };
        let r = answer(&s, &config, &plain(), &request("GET", "/", &[]), b"");
        assert_eq!(
            wire_text(&r),
            "500\ncontent-type: text/plain; charset=utf-8\n\nno"
        );
    }

    #[test]
    fn the_request_reads_as_gos_net_http_reads_it() {
        let parts = request(
            "POST",
            "/a%20b/c?x=1&x=2&y=a+b&bad=%zz&semi=1;2&empty=",
            &[
                ("host", "example.com:8080"),
                ("x-api-key", "k"),
                ("accept", "a"),
                ("accept", "b"),
            ],
        );
        let r = check_request(&parts, b"hello");
        let a = &r.attributes;
        assert_eq!(&*a.method, "POST");
        assert_eq!(&*a.path, "/a b/c");
        assert_eq!(&*a.host, "example.com:8080");
        assert_eq!(&*a.protocol, "HTTP/1.1");
        assert_eq!(&*a.scheme, "");
        assert_eq!(a.content_length, 5);
        assert_eq!(&*a.body, b"hello");
        assert_eq!(
            a.header.pairs(),
            [("Accept", "a"), ("Accept", "b"), ("X-Api-Key", "k")]
        );
        assert_eq!(
            a.query.pairs(),
            [("x", "1"), ("x", "2"), ("y", "a b"), ("empty", "")]
        );
    }

    #[test]
    fn a_nested_request_is_read_from_the_body() {
        let s = set(&policy("headers", HEADER_POLICY));
        let mode = HttpMode::compile(&HttpModeOptions {
            nested_request: true,
            ..Default::default()
        })
        .unwrap();
        let outer = request("POST", "/", &[]);
        let config = EngineConfig::default();
        let body = b"GET /get?q=1 HTTP/1.1\r\nHost: app.example\r\nFoo: bar\r\nContent-Length: 2\r\n\r\nhi";
        let a = answer_detailed(&s, &config, &mode, &outer, body, false);
        assert_eq!(a.response.status(), 200);
        let (parts, nested_body) = nested_request(body).unwrap();
        let r = check_request(&parts, nested_body);
        assert_eq!(
            (
                &*r.attributes.method,
                &*r.attributes.host,
                &*r.attributes.path,
                &*r.attributes.body
            ),
            ("GET", "app.example", "/get", &b"hi"[..])
        );
        for bad in [
            &b"not http"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort",
        ] {
            let a = answer_detailed(&s, &config, &mode, &outer, bad, false);
            assert_eq!(
                a.response.status(),
                403,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(a.decision.failure, Some(FailureReason::Unreadable));
            assert_eq!(a.response.headers()["x-celgate-failure"], "unreadable");
        }
    }

    /// The ingress-nginx setup of Kyverno's tutorial: the original request
    /// is in `x-original-url` and `x-original-method`.
    const NGINX_INPUT: &str = r#"http.CheckRequest{
  attributes: http.CheckRequestAttributes{
    method: object.attributes.Header("x-original-method")[0],
    header: object.attributes.header,
    host: url(object.attributes.Header("x-original-url")[0]).getHostname(),
    scheme: url(object.attributes.Header("x-original-url")[0]).getScheme(),
    path: url(object.attributes.Header("x-original-url")[0]).getEscapedPath(),
    query: url(object.attributes.Header("x-original-url")[0]).getQuery(),
    body: object.attributes.body,
    fragment: "todo",
  }
}"#;

    const NGINX_OUTPUT: &str = r#"has(object.ok)
  ? httpserver.HttpResponse{ status: 200 }
  : object.denied.reason == "Unauthorized"
      ? httpserver.HttpResponse{ status: 401, body: bytes(object.denied.reason) }
      : httpserver.HttpResponse{ status: 403, body: bytes(object.denied.reason) }"#;

    #[test]
    fn input_and_output_expressions_rewrite_the_request_and_shape_the_answer() {
        let s = set(&policy(
            "nginx",
            r#"object.attributes.method != "DELETE" ? null : object.attributes.host == "myapp.com" && object.attributes.path == "/anything/api" && object.attributes.QueryParam("v") == ["1"] && object.attributes.scheme == "https" ? http.Denied("Unauthorized").Response() : http.Denied("Forbidden").Response()"#,
        ));
        let mode = HttpMode::compile(&HttpModeOptions {
            nested_request: false,
            input_expression: Some(NGINX_INPUT.into()),
            output_expression: Some(NGINX_OUTPUT.into()),
        })
        .unwrap();
        let config = EngineConfig::default();
        let auth = |method: &str, url: &str| {
            let parts = request(
                "POST",
                "/",
                &[("x-original-method", method), ("x-original-url", url)],
            );
            answer(&s, &config, &mode, &parts, b"")
        };
        let r = auth("DELETE", "https://myapp.com/anything/api?v=1");
        assert_eq!(
            wire_text(&r),
            "401\ncontent-type: text/plain; charset=utf-8\n\nUnauthorized"
        );
        assert_eq!(auth("DELETE", "https://other.com/x").status(), 403);
        assert_eq!(
            wire_text(&auth("GET", "https://myapp.com/anything/api")),
            "200\n\n"
        );
        // Without the headers the input expression fails: the failure denial.
        let bare = request("POST", "/", &[]);
        let a = answer_detailed(&s, &config, &mode, &bare, b"", false);
        assert_eq!(a.decision.failure, Some(FailureReason::Evaluation));
        assert_eq!(a.response.headers()["x-celgate-failure"], "evaluation");
    }

    #[test]
    fn output_headers_and_bad_outputs() {
        let s = set(&policy("allow", "http.Allowed().Response()"));
        let config = EngineConfig::default();
        let mode = HttpMode::compile(&HttpModeOptions {
            output_expression: Some(
                r#"httpserver.HttpResponse{status: 204, header: {"X-User": ["a", "b"]}}"#.into(),
            ),
            ..Default::default()
        })
        .unwrap();
        let r = answer(&s, &config, &mode, &request("GET", "/", &[]), b"");
        assert_eq!(wire_text(&r), "204\nx-user: a\nx-user: b\n\n");
        let mode = HttpMode::compile(&HttpModeOptions {
            output_expression: Some("httpserver.HttpResponse{status: 42}".into()),
            ..Default::default()
        })
        .unwrap();
        let r = answer(&s, &config, &mode, &request("GET", "/", &[]), b"");
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()["x-celgate-failure"], "evaluation");
    }

    #[test]
    fn bad_expressions_are_startup_errors_naming_the_flag() {
        for (options, flag, says) in [
            (
                HttpModeOptions {
                    input_expression: Some("object.attributes".into()),
                    ..Default::default()
                },
                "--input-expression",
                "must return http.CheckRequest",
            ),
            (
                HttpModeOptions {
                    output_expression: Some("http.Allowed().Response()".into()),
                    ..Default::default()
                },
                "--output-expression",
                "must return httpserver.HttpResponse",
            ),
            (
                HttpModeOptions {
                    input_expression: Some("envoy.Allowed()".into()),
                    ..Default::default()
                },
                "--input-expression",
                "Envoy-mode",
            ),
            (
                HttpModeOptions {
                    input_expression: Some("object.attributs".into()),
                    ..Default::default()
                },
                "--input-expression",
                "no field",
            ),
            (
                HttpModeOptions {
                    output_expression: Some("(".into()),
                    ..Default::default()
                },
                "--output-expression",
                "",
            ),
        ] {
            let e = HttpMode::compile(&options).unwrap_err().to_string();
            assert!(e.starts_with(flag), "{e}");
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn decisions_count_with_mode_http() {
        let s = set(&policy("count-me-http", r#"http.Denied("x").Response()"#));
        let config = EngineConfig::default();
        let m = metrics::global();
        let p = s.get_http("count-me-http").unwrap().metrics.clone();
        let how = DecidedBy::Policy {
            policy: &p,
            allowed: false,
        };
        let before = m.decisions(metrics::Mode::Http, how);
        answer(&s, &config, &plain(), &request("GET", "/", &[]), b"");
        assert_eq!(m.decisions(metrics::Mode::Http, how), before + 1);
        assert_eq!(m.decisions(metrics::Mode::Envoy, how), 0);
        assert!(m
            .render("")
            .contains(r#"authz_decisions_total{mode="http",decision="deny",source="policy",policy="count-me-http"} "#));
    }
}
