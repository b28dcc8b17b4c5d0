//! Declarative policy test suites: policies + requests + expected decisions.
//!
//! ```yaml
//! apiVersion: celgate.dev/v1alpha1
//! kind: Test
//! metadata: { name: api-keys }
//! policies: [ ../policies ]          # files or dirs, relative to this file
//! cases:
//! - name: viewer cannot reach admin
//!   request: requests/viewer.json    # or an inline CheckRequest object
//!   expect:
//!     allowed: false
//!     status: 403
//! ```
//!
//! Expectations that are given must match exactly; the others are not
//! checked. docs/src/test-suites.md (the book's "Checking and testing
//! policies") describes every field.

use crate::engine::{evaluate, Decision, EngineConfig};
use crate::policy::{load, PolicySet};
use crate::response::{HeaderOption, Outcome};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const API_VERSION: &str = "celgate.dev/v1alpha1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestDoc {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: TestMeta,
    pub policies: Vec<PathBuf>,
    /// Status of the failure denial (the `--failure-status` of `serve`;
    /// default 403).
    #[serde(default, rename = "failureStatus")]
    pub failure_status: Option<i32>,
    /// Body of the failure denial (`--failure-body`; default: the reason's
    /// own sentence).
    #[serde(default, rename = "failureBody")]
    pub failure_body: Option<String>,
    /// Header marking the failure denial (`--failure-header`; default
    /// `x-celgate-failure`, `""` for none).
    #[serde(default, rename = "failureHeader")]
    pub failure_header: Option<String>,
    /// Header naming the policies that would have denied but are not
    /// enforced (`--audit-header`; default none).
    #[serde(default, rename = "auditHeader")]
    pub audit_header: Option<String>,
    /// JWKS documents standing in for issuers: URL → file relative to the
    /// suite. `jwks.Fetch(url)` then answers from the file and never fetches.
    #[serde(default)]
    pub jwks: BTreeMap<String, PathBuf>,
    /// Largest body `mcp.Parse` accepts while this suite runs (the
    /// `--mcp-max-body-bytes` of `serve`; default 1 MiB).
    #[serde(default, rename = "mcpMaxBodyBytes")]
    pub mcp_max_body_bytes: Option<usize>,
    /// Run even when the policies hold no Envoy-mode ValidatingPolicy (the
    /// `--allow-empty` of `serve`); without it such a suite does not run.
    #[serde(default, rename = "allowEmpty")]
    pub allow_empty: bool,
    /// Run-time cost budget of one request (the `--cost-budget` of
    /// `serve`).
    #[serde(default, rename = "costBudget")]
    pub cost_budget: Option<u64>,
    /// The HTTP authorization server's options for the suite's
    /// `httpRequest` cases (its `--http-*` flags).
    #[serde(default)]
    pub http: HttpSuiteOptions,
    pub cases: Vec<Case>,
}

/// The HTTP authorization server's options, as a suite gives them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSuiteOptions {
    #[serde(default)]
    pub nested_request: bool,
    #[serde(default)]
    pub input_expression: Option<String>,
    #[serde(default)]
    pub output_expression: Option<String>,
    /// The input expression read from this file (relative to the suite),
    /// as `--input-expression "$(cat FILE)"` gives it.
    #[serde(default)]
    pub input_expression_file: Option<PathBuf>,
    /// The output expression read from this file.
    #[serde(default)]
    pub output_expression_file: Option<PathBuf>,
}

impl HttpSuiteOptions {
    /// The expression given inline or in its file (never both).
    fn expression(
        dir: &Path,
        what: &str,
        inline: &Option<String>,
        file: &Option<PathBuf>,
    ) -> Result<Option<String>, String> {
        match (inline, file) {
            (Some(_), Some(_)) => Err(format!(
                "http: {what}Expression and {what}ExpressionFile are both given"
            )),
            (Some(e), None) => Ok(Some(e.clone())),
            (None, Some(f)) => std::fs::read_to_string(dir.join(f))
                .map(Some)
                .map_err(|e| format!("http: {what}ExpressionFile {}: {e}", f.display())),
            (None, None) => Ok(None),
        }
    }
}

/// A request to the HTTP authorization server (a case of HTTP-mode
/// policies): what an HTTP client sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCaseRequest {
    /// Default `GET`.
    #[serde(default)]
    pub method: Option<String>,
    /// The request target: path and query (`/get?foo=bar`); default `/`.
    #[serde(default)]
    pub path: Option<String>,
    /// The `Host` header.
    #[serde(default)]
    pub host: Option<String>,
    /// Each a value or a list of values.
    #[serde(default)]
    pub headers: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    pub body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl HttpCaseRequest {
    /// The request as the server receives it.
    pub fn parts(&self) -> Result<(http::request::Parts, Vec<u8>), String> {
        let mut b = http::Request::builder()
            .method(self.method.as_deref().unwrap_or("GET"))
            .uri(self.path.as_deref().unwrap_or("/"));
        if let Some(h) = &self.host {
            b = b.header(http::header::HOST, h);
        }
        for (name, values) in &self.headers {
            match values {
                OneOrMany::One(v) => b = b.header(name, v),
                OneOrMany::Many(vs) => {
                    for v in vs {
                        b = b.header(name, v);
                    }
                }
            }
        }
        let r = b.body(()).map_err(|e| format!("httpRequest: {e}"))?;
        let body = self.body.clone().unwrap_or_default().into_bytes();
        Ok((r.into_parts().0, body))
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct TestMeta {
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// An Envoy `CheckRequest` (inline or a file), for Envoy-mode policies.
    #[serde(default)]
    pub request: serde_json::Value,
    /// A request to the HTTP authorization server, for HTTP-mode policies.
    #[serde(default, rename = "httpRequest")]
    pub http_request: Option<HttpCaseRequest>,
    /// A JWT minted when the case runs and put into the request.
    #[serde(default)]
    pub token: Option<crate::suite_token::TokenSpec>,
    pub expect: Expect,
}

/// What a case expects. A field left out is not checked. A field that is
/// given is compared exactly: `{}` (maps), `[]` (lists), `""` (body,
/// message) and `null` (any of these) mean "none", so `metadata: {}` fails
/// on a decision that sets metadata as `headers: {}` fails on one that adds
/// a header. `policy: null` (or `""`) means "no policy decided"; `status`,
/// `error` and `errorContains` cannot be `null`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expect {
    pub allowed: bool,
    #[serde(default, deserialize_with = "not_null")]
    pub status: Option<i32>,
    #[serde(default, deserialize_with = "null_is_empty")]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "null_is_empty")]
    pub removed_headers: Option<Vec<String>>,
    #[serde(default, deserialize_with = "null_is_empty")]
    pub response_headers: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "null_is_empty")]
    pub query_params: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "null_is_empty")]
    pub removed_query_params: Option<Vec<String>>,
    #[serde(default, deserialize_with = "null_is_empty")]
    pub body: Option<String>,
    #[serde(default, deserialize_with = "null_is_empty")]
    pub message: Option<String>,
    /// The dynamic metadata, as a map (`{}`: none).
    #[serde(default, deserialize_with = "null_is_empty")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The deciding policy; `""` or `null` for "no policy decided".
    #[serde(default, deserialize_with = "some_value")]
    pub policy: Option<serde_json::Value>,
    /// Whether the decision is the denial of a policy that failed to evaluate.
    #[serde(default, deserialize_with = "not_null")]
    pub error: Option<bool>,
    #[serde(default, deserialize_with = "not_null")]
    pub error_contains: Option<String>,
    /// The policies whose denial was recorded under `validationActions`
    /// (`Audit`, `Warn`), in evaluation order: those that are not enforced
    /// and would have denied, and enforced `[Deny, Audit]` ones that denied.
    /// `[]`: none.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub audit: Option<Vec<String>>,
    /// The policies that warned the client (`validationActions` with
    /// `Warn`), in evaluation order; `[]`: none.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub warnings: Option<Vec<String>>,
    /// The policies the policy index rules out for the request without
    /// evaluating their matchConditions, in name order; `[]`: none.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub skipped_by_index: Option<Vec<String>>,
}

/// What the policy index did with a case's request.
#[derive(Debug, Default)]
pub struct IndexOutcome {
    /// The policies it ruled out, in name order.
    pub ruled_out: Vec<String>,
    /// How the decision differs from the evaluation without the index (a
    /// fault of celgate's, never of the policies).
    pub differs: Option<String>,
}

/// The failures of `expect.skippedByIndex` and of the index's decision.
pub fn compare_index(e: &Expect, index: &IndexOutcome) -> Vec<String> {
    let mut f = Vec::new();
    if let Some(expected) = &e.skipped_by_index {
        if expected != &index.ruled_out {
            f.push(format!(
                "skippedByIndex: expected {expected:?}, got {:?}",
                index.ruled_out
            ));
        }
    }
    if let Some(d) = &index.differs {
        f.push(format!(
            "the policy index changed the decision (a celgate bug): {d}"
        ));
    }
    f
}

fn some_value<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// A field that is given, even as `null`, is checked; `null` is the empty
/// value (no headers, no metadata, an empty body).
fn null_is_empty<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(|v| Some(v.unwrap_or_default()))
}

/// A field with no "none" to stand for: `null` is refused rather than
/// read as "not checked".
fn not_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    match Option::<T>::deserialize(d)? {
        Some(v) => Ok(Some(v)),
        None => Err(serde::de::Error::custom(
            "null is no expectation for status, error or errorContains: leave the field out \
             not to check it",
        )),
    }
}

#[derive(Debug)]
pub struct CaseResult {
    pub suite: String,
    pub file: PathBuf,
    pub case: String,
    /// Empty when the case passed.
    pub failures: Vec<String>,
    pub elapsed: std::time::Duration,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: policies failed to load:\n{errors}", path.display())]
    Policies {
        path: PathBuf,
        errors: crate::policy::LoadErrors,
    },
    /// A suite file that is not valid YAML/JSON (the error names the file).
    #[error(transparent)]
    Parse(crate::policy::LoadError),
}

impl SuiteError {
    /// The error on one line, naming the suite file once: of policies that
    /// do not load, the first problem (the report lists them all).
    pub fn summary(&self) -> String {
        match self {
            SuiteError::Policies { path, errors } => {
                let first = errors
                    .0
                    .first()
                    .map(|e| e.to_string().lines().next().unwrap_or_default().to_owned())
                    .unwrap_or_default();
                let more = match errors.0.len() {
                    0 | 1 => String::new(),
                    n => format!(" (and {} more, listed in the report)", n - 1),
                };
                format!(
                    "{}: its policies do not load: {first}{more}",
                    path.display()
                )
            }
            e => e.to_string().lines().next().unwrap_or_default().to_owned(),
        }
    }
}

/// Every test document under `paths`. Files given by name are read as they
/// are; directories are searched recursively for `.yaml`/`.yml`/`.json`
/// files that mention `celgate.dev/`, skipping entries whose name starts with
/// `.` and folders named `target` or `node_modules` (build output).
pub fn find(paths: &[PathBuf]) -> Result<Vec<(PathBuf, TestDoc)>, SuiteError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut files)?;
        } else if p.exists() {
            files.push((p.clone(), true));
        } else {
            return Err(SuiteError::Invalid {
                path: p.clone(),
                message: "no such file or directory".into(),
            });
        }
    }
    let mut out = Vec::new();
    for (f, explicit) in files {
        let text = std::fs::read_to_string(&f).map_err(|e| SuiteError::Invalid {
            path: f.clone(),
            message: e.to_string(),
        })?;
        if !explicit && !text.contains("celgate.dev/") {
            continue;
        }
        let docs = load::parse_documents(&f, &text).map_err(SuiteError::Parse)?;
        for d in docs {
            if is_test_doc(&d.value) {
                let doc: TestDoc =
                    serde_json::from_value(d.value).map_err(|e| SuiteError::Invalid {
                        path: f.clone(),
                        message: format!("document {}: {e}", d.index),
                    })?;
                out.push((f.clone(), doc));
            }
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, bool)>) -> Result<(), SuiteError> {
    let mut found = Vec::new();
    load::walk_source_tree(dir, &load::is_policy_file, &mut found).map_err(|(path, e)| {
        SuiteError::Invalid {
            path,
            message: e.to_string(),
        }
    })?;
    out.extend(found.into_iter().map(|p| (p, false)));
    Ok(())
}

/// Whether a document is a celgate test suite (and so not a policy).
pub fn is_test_doc(v: &serde_json::Value) -> bool {
    v.get("apiVersion").and_then(|a| a.as_str()) == Some(API_VERSION)
        && v.get("kind").and_then(|k| k.as_str()) == Some("Test")
}

/// Runs one suite.
pub fn run(path: &Path, doc: &TestDoc) -> Result<Vec<CaseResult>, SuiteError> {
    run_noting(path, doc, &mut Vec::new())
}

/// As [`run`], adding to `notes` what the user should know although the
/// suite runs (its policies hold no Envoy-mode policy, under `allowEmpty`).
pub fn run_noting(
    path: &Path,
    doc: &TestDoc,
    notes: &mut Vec<String>,
) -> Result<Vec<CaseResult>, SuiteError> {
    let mut results = Vec::new();
    for_each_case(path, doc, notes, |suite, case, failures, elapsed| {
        results.push(CaseResult {
            suite: suite.to_owned(),
            file: path.to_path_buf(),
            case: case.name.clone(),
            failures,
            elapsed,
        })
    })?;
    Ok(results)
}

/// Loads the suite's policies and decides each case.
fn for_each_case(
    path: &Path,
    doc: &TestDoc,
    notes: &mut Vec<String>,
    mut each: impl FnMut(&str, &Case, Vec<String>, std::time::Duration),
) -> Result<(), SuiteError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let invalid = |message: String| SuiteError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    if doc.kind != "Test" || doc.api_version != API_VERSION {
        return Err(invalid(format!(
            "expected apiVersion {API_VERSION}, kind Test"
        )));
    }
    if doc.cases.is_empty() {
        return Err(invalid("a suite needs at least one case".into()));
    }
    preload_jwks(dir, doc).map_err(invalid)?;
    let policy_paths: Vec<PathBuf> = doc.policies.iter().map(|p| dir.join(p)).collect();
    let set = PolicySet::load(&policy_paths).map_err(|errors| SuiteError::Policies {
        path: path.to_path_buf(),
        errors,
    })?;
    let http_cases = doc.cases.iter().any(|c| c.http_request.is_some());
    let envoy_cases = doc.cases.iter().any(|c| c.http_request.is_none());
    if http_cases && set.http_policies.is_empty() && !doc.allow_empty {
        return Err(invalid(
            "the suite has httpRequest cases but its policies hold no HTTP-mode ValidatingPolicy, so every request would be allowed (`allowEmpty: true` accepts that)".into(),
        ));
    }
    if envoy_cases && set.policies.is_empty() {
        let what = crate::policy::no_envoy_policy(&policy_paths);
        if !doc.allow_empty {
            return Err(invalid(format!(
                "{what}; refused, as `serve` refuses to start with none (`allowEmpty: true` in \
                 the suite accepts an empty set)"
            )));
        }
        notes.push(format!("{what} (accepted: `allowEmpty: true`)"));
    }
    let defaults = EngineConfig::default();
    let config = EngineConfig {
        failure_status: doc.failure_status.unwrap_or(defaults.failure_status),
        failure_body: doc.failure_body.clone(),
        failure_header: match &doc.failure_header {
            Some(name) => crate::engine::failure_header_name(name)
                .map_err(|e| invalid(format!("failureHeader: {e}")))?,
            None => defaults.failure_header,
        },
        audit_header: match &doc.audit_header {
            Some(name) => crate::engine::failure_header_name(name)
                .map_err(|e| invalid(format!("auditHeader: {e}")))?,
            None => defaults.audit_header,
        },
        cost_budget: doc.cost_budget.unwrap_or(defaults.cost_budget),
        policy_index: defaults.policy_index,
    };
    let suite = doc
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| path.display().to_string());
    let http_mode = if http_cases {
        Some(
            crate::httpmode::HttpMode::compile(&crate::httpmode::HttpModeOptions {
                nested_request: doc.http.nested_request,
                input_expression: HttpSuiteOptions::expression(
                    dir,
                    "input",
                    &doc.http.input_expression,
                    &doc.http.input_expression_file,
                )
                .map_err(&invalid)?,
                output_expression: HttpSuiteOptions::expression(
                    dir,
                    "output",
                    &doc.http.output_expression,
                    &doc.http.output_expression_file,
                )
                .map_err(&invalid)?,
            })
            .map_err(|e| invalid(format!("http: {e}")))?,
        )
    } else {
        None
    };
    for case in &doc.cases {
        if let (Some(r), Some(mode)) = (&case.http_request, &http_mode) {
            if !case.request.is_null() || case.token.is_some() {
                return Err(invalid(format!(
                    "case {:?}: an httpRequest case has no request or token",
                    case.name
                )));
            }
            let (parts, body) = r
                .parts()
                .map_err(|e| invalid(format!("case {:?}: {e}", case.name)))?;
            let started = std::time::Instant::now();
            let answer =
                crate::httpmode::answer_detailed(&set, &config, mode, &parts, &body, false);
            each(
                &suite,
                case,
                compare_http(&case.expect, &answer),
                started.elapsed(),
            );
            continue;
        }
        let request = case_request(dir, case).map_err(invalid)?;
        let decide = |config: &EngineConfig| match doc.mcp_max_body_bytes {
            Some(limit) => {
                crate::mcp::with_max_body_bytes(limit, || evaluate(&set, config, &request))
            }
            None => evaluate(&set, config, &request),
        };
        let started = std::time::Instant::now();
        let decision = decide(&config);
        let elapsed = started.elapsed();
        // Every case where the index rules a policy out is also decided
        // without it: the two must agree in all but the count of policies
        // evaluated.
        let mut index = IndexOutcome {
            ruled_out: set
                .index
                .ruled_out(&set, &request)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            differs: None,
        };
        if !index.ruled_out.is_empty() {
            let linear = decide(&EngineConfig {
                policy_index: false,
                ..config.clone()
            });
            let same = |d: &Decision| {
                let mut d = d.clone();
                d.evaluated = 0;
                (d.error.as_ref().map(|e| e.detailed()), d)
            };
            if same(&decision) != same(&linear) {
                index.differs = Some(format!("with it {decision:?}, without it {linear:?}"));
            }
        }
        let mut failures = compare(&case.expect, &decision);
        failures.extend(compare_index(&case.expect, &index));
        each(&suite, case, failures, elapsed);
    }
    Ok(())
}

/// As [`compare`], for an answer of the HTTP authorization server:
/// `status`, `body` and `headers` are the response's (headers by lower-case
/// name, several values joined with `, `); the fields of Envoy's response
/// alone are refused.
pub fn compare_http(e: &Expect, a: &crate::httpmode::HttpAnswer) -> Vec<String> {
    let mut f = Vec::new();
    let mut check = |what: &str, expected: String, got: String| {
        if expected != got {
            f.push(format!("{what}: expected {expected}, got {got}"));
        }
    };
    let d = &a.decision;
    check("allowed", e.allowed.to_string(), d.allowed().to_string());
    if let Some(s) = e.status {
        check(
            "status",
            s.to_string(),
            a.response.status().as_u16().to_string(),
        );
    }
    if let Some(b) = &e.body {
        let body = String::from_utf8_lossy(a.response.body()).into_owned();
        check("body", format!("{b:?}"), format!("{body:?}"));
    }
    if let Some(h) = &e.headers {
        let mut got: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in a.response.headers() {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            got.entry(k.as_str().to_owned())
                .and_modify(|x| {
                    x.push_str(", ");
                    x.push_str(&v);
                })
                .or_insert(v);
        }
        check("headers", format!("{h:?}"), format!("{got:?}"));
    }
    compare_outcome(e, &d.policy, d.error.as_ref(), &d.audit, &mut f);
    let envoy_only = [
        ("removedHeaders", e.removed_headers.is_some()),
        ("responseHeaders", e.response_headers.is_some()),
        ("queryParams", e.query_params.is_some()),
        ("removedQueryParams", e.removed_query_params.is_some()),
        ("message", e.message.is_some()),
        ("metadata", e.metadata.is_some()),
    ];
    for (field, given) in envoy_only {
        if given {
            f.push(format!(
                "{field}: not part of an HTTP-mode answer (expect status, body and headers)"
            ));
        }
    }
    f
}

/// The checks of `expect` both modes share: the deciding policy, the
/// error, and the denials `validationActions` recorded.
fn compare_outcome(
    e: &Expect,
    policy: &Option<String>,
    error: Option<&crate::engine::EvalError>,
    audit: &[crate::engine::AuditEntry],
    f: &mut Vec<String>,
) {
    let mut check = |what: &str, expected: String, got: String| {
        if expected != got {
            f.push(format!("{what}: expected {expected}, got {got}"));
        }
    };
    if let Some(p) = &e.policy {
        let want = match p {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        check(
            "policy",
            format!("{want:?}"),
            format!("{:?}", policy.clone().unwrap_or_default()),
        );
    }
    if let Some(err) = e.error {
        check("error", err.to_string(), error.is_some().to_string());
    }
    if let Some(want) = &e.audit {
        let got: Vec<&str> = audit.iter().map(|a| a.policy.as_str()).collect();
        check("audit", format!("{want:?}"), format!("{got:?}"));
    }
    if let Some(want) = &e.warnings {
        let got: Vec<&str> = audit
            .iter()
            .filter(|a| a.warned)
            .map(|a| a.policy.as_str())
            .collect();
        check("warnings", format!("{want:?}"), format!("{got:?}"));
    }
    if let Some(sub) = &e.error_contains {
        let got = error.map(|e| e.detailed()).unwrap_or_default();
        if !got.contains(sub.as_str()) {
            f.push(format!("error: expected to contain {sub:?}, got {got:?}"));
        }
    }
}

/// The request of `case` (of a suite in `dir`), its token minted and set.
/// The error names the case.
pub fn case_request(dir: &Path, case: &Case) -> Result<CheckRequest, String> {
    let request = match &case.request {
        serde_json::Value::String(file) => {
            let p = dir.join(file);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format!("case {:?}: {}: {e}", case.name, p.display()))?;
            crate::request_json::parse(&text)
        }
        v => crate::request_json::from_value(v),
    }
    .map_err(|e| format!("case {:?}: {e}", case.name))?;
    let mut request = request;
    if let Some(spec) = &case.token {
        crate::suite_token::apply(spec, dir, &mut request)
            .map_err(|e| format!("case {:?}: token: {e}", case.name))?;
    }
    Ok(request)
}

/// Loads the suite's `jwks` documents (URL → file relative to `dir`), so
/// that `jwks.Fetch` answers from them.
pub fn preload_jwks(dir: &Path, doc: &TestDoc) -> Result<(), String> {
    for (url, file) in &doc.jwks {
        let p = dir.join(file);
        let body = std::fs::read(&p).map_err(|e| format!("jwks {url}: {}: {e}", p.display()))?;
        crate::identity::jwks::preload(url, &body)
            .map_err(|e| format!("jwks {url}: {}: {e}", p.display()))?;
    }
    Ok(())
}

fn header_map(hs: &[HeaderOption]) -> BTreeMap<String, String> {
    hs.iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

/// The differences between what was expected and what was decided.
pub fn compare(e: &Expect, d: &Decision) -> Vec<String> {
    let mut f = Vec::new();
    let mut check = |what: &str, expected: String, got: String| {
        if expected != got {
            f.push(format!("{what}: expected {expected}, got {got}"));
        }
    };
    check("allowed", e.allowed.to_string(), d.allowed().to_string());
    if let Some(s) = e.status {
        check("status", s.to_string(), d.http_status().to_string());
    }
    let (added, removed, resp, qset, qrm, body) = match &d.response.outcome {
        Outcome::Ok(ok) => (
            header_map(&ok.headers),
            ok.headers_to_remove.clone(),
            header_map(&ok.response_headers_to_add),
            ok.query_parameters_to_set
                .iter()
                .map(|q| (q.key.clone(), q.value.clone()))
                .collect::<BTreeMap<_, _>>(),
            ok.query_parameters_to_remove.clone(),
            String::new(),
        ),
        Outcome::Denied(den) => (
            header_map(&den.headers),
            Vec::new(),
            BTreeMap::new(),
            BTreeMap::new(),
            Vec::new(),
            den.body.clone(),
        ),
    };
    if let Some(h) = &e.headers {
        check("headers", format!("{h:?}"), format!("{added:?}"));
    }
    if let Some(r) = &e.removed_headers {
        check("removedHeaders", format!("{r:?}"), format!("{removed:?}"));
    }
    if let Some(h) = &e.response_headers {
        check("responseHeaders", format!("{h:?}"), format!("{resp:?}"));
    }
    if let Some(q) = &e.query_params {
        check("queryParams", format!("{q:?}"), format!("{qset:?}"));
    }
    if let Some(q) = &e.removed_query_params {
        check("removedQueryParams", format!("{q:?}"), format!("{qrm:?}"));
    }
    if let Some(b) = &e.body {
        check("body", format!("{b:?}"), format!("{body:?}"));
    }
    if let Some(m) = &e.message {
        check(
            "message",
            format!("{m:?}"),
            format!("{:?}", d.response.message),
        );
    }
    if let Some(m) = &e.metadata {
        let got = d.response.metadata.clone().unwrap_or_default();
        check(
            "metadata",
            serde_json::Value::Object(m.clone()).to_string(),
            serde_json::Value::Object(got).to_string(),
        );
    }
    compare_outcome(e, &d.policy, d.error.as_ref(), &d.audit, &mut f);
    f
}

/// One suite file's run: its cases, or why it could not run.
#[derive(Debug)]
pub struct SuiteRun {
    pub file: PathBuf,
    /// `metadata.name`, else the file's path.
    pub name: String,
    pub result: Result<Vec<CaseResult>, SuiteError>,
}

impl SuiteRun {
    /// The suite's name and, when it has one of its own, its file
    /// (`name (file)`); the file alone otherwise, not twice.
    pub fn label(&self) -> String {
        let file = self.file.display().to_string();
        if self.name == file {
            file
        } else {
            format!("{}  ({file})", self.name)
        }
    }
}

/// Totals over a set of runs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    /// Suites that could not run (invalid file, policies that do not load).
    pub broken: usize,
}

impl Totals {
    pub fn of(runs: &[SuiteRun]) -> Totals {
        let mut t = Totals::default();
        for r in runs {
            match &r.result {
                Ok(cases) => {
                    let failed = cases.iter().filter(|c| !c.passed()).count();
                    t.failed += failed;
                    t.passed += cases.len() - failed;
                }
                Err(_) => t.broken += 1,
            }
        }
        t
    }

    pub fn ok(&self) -> bool {
        self.failed == 0 && self.broken == 0
    }
}

/// The results as an aligned table, failures with expected vs got under
/// their case, then a summary line.
pub fn render_table(runs: &[SuiteRun]) -> String {
    use std::fmt::Write as _;
    let width = runs
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0)
        .max("SUITE".len());
    let mut out = String::new();
    let _ = writeln!(out, "{:<6}  {:<width$}  CASE", "RESULT", "SUITE");
    for r in runs {
        match &r.result {
            Ok(cases) => {
                for c in cases {
                    let mark = if c.passed() { "pass" } else { "FAIL" };
                    let _ = writeln!(out, "{mark:<6}  {:<width$}  {}", r.name, c.case);
                    for f in &c.failures {
                        let _ = writeln!(out, "{:<6}  {:<width$}    {f}", "", "");
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "{:<6}  {:<width$}  (suite did not run)",
                    "ERROR", r.name
                );
                for line in e.to_string().lines() {
                    let _ = writeln!(out, "{:<6}  {:<width$}    {line}", "", "");
                }
            }
        }
    }
    let t = Totals::of(runs);
    let _ = write!(out, "\n{} passed, {} failed", t.passed, t.failed);
    if t.broken > 0 {
        let _ = write!(out, ", {} suite(s) could not run", t.broken);
    }
    let _ = writeln!(
        out,
        " ({} suite{}){}",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        if t.ok() { "" } else { ": FAILED" }
    );
    if !t.ok() {
        let _ = writeln!(out, "\nfailed:");
        for r in runs {
            match &r.result {
                Ok(cases) => {
                    for c in cases.iter().filter(|c| !c.passed()) {
                        if r.name == r.file.display().to_string() {
                            let _ = writeln!(out, "  {} › {}", r.name, c.case);
                        } else {
                            let _ =
                                writeln!(out, "  {} › {}  ({})", r.name, c.case, r.file.display());
                        }
                    }
                }
                Err(_) => {
                    let _ = writeln!(out, "  {}: suite did not run", r.label());
                }
            }
        }
    }
    out
}

/// The results as JUnit XML, for CI systems.
pub fn render_junit(runs: &[SuiteRun]) -> String {
    use std::fmt::Write as _;
    let t = Totals::of(runs);
    let total_time: f64 = runs
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .flatten()
        .map(|c| c.elapsed.as_secs_f64())
        .sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"celgate\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{total_time:.6}\">",
        t.passed + t.failed + t.broken,
        t.failed,
        t.broken
    );
    for r in runs {
        let name = xml(&r.name);
        let file = xml(&r.file.display().to_string());
        match &r.result {
            Ok(cases) => {
                let failed = cases.iter().filter(|c| !c.passed()).count();
                let time: f64 = cases.iter().map(|c| c.elapsed.as_secs_f64()).sum();
                let _ = writeln!(
                    out,
                    "  <testsuite name=\"{name}\" file=\"{file}\" tests=\"{}\" failures=\"{failed}\" errors=\"0\" time=\"{time:.6}\">",
                    cases.len()
                );
                for c in cases {
                    let case = xml(&c.case);
                    let time = c.elapsed.as_secs_f64();
                    if c.passed() {
                        let _ = writeln!(
                            out,
                            "    <testcase name=\"{case}\" classname=\"{name}\" file=\"{file}\" time=\"{time:.6}\"/>"
                        );
                    } else {
                        let _ = writeln!(
                            out,
                            "    <testcase name=\"{case}\" classname=\"{name}\" file=\"{file}\" time=\"{time:.6}\">"
                        );
                        let _ = writeln!(
                            out,
                            "      <failure message=\"{}\">{}</failure>",
                            xml(c.failures.first().map_or("", String::as_str)),
                            xml(&c.failures.join("\n"))
                        );
                        let _ = writeln!(out, "    </testcase>");
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "  <testsuite name=\"{name}\" file=\"{file}\" tests=\"1\" failures=\"0\" errors=\"1\" time=\"0\">"
                );
                let _ = writeln!(
                    out,
                    "    <testcase name=\"(suite)\" classname=\"{name}\" file=\"{file}\" time=\"0\">"
                );
                let msg = e.to_string();
                let _ = writeln!(
                    out,
                    "      <error message=\"{}\">{}</error>",
                    xml(msg.lines().next().unwrap_or("")),
                    xml(&msg)
                );
                let _ = writeln!(out, "    </testcase>");
            }
        }
        let _ = writeln!(out, "  </testsuite>");
    }
    out.push_str("</testsuites>\n");
    out
}

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            c if (c as u32) < 0x20 && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::{CheckResponse, DeniedResponse, OkResponse, QueryParam};
    use serde_json::json;

    #[test]
    fn an_expression_is_given_inline_or_in_a_file_never_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.cel"), "object").unwrap();
        let file = Some(PathBuf::from("in.cel"));
        let inline = Some("object".to_owned());
        let read = |i: &Option<String>, f: &Option<PathBuf>| {
            HttpSuiteOptions::expression(dir.path(), "input", i, f)
        };
        assert_eq!(read(&None, &file), Ok(Some("object".to_owned())));
        assert_eq!(read(&inline, &None), Ok(Some("object".to_owned())));
        assert_eq!(read(&None, &None), Ok(None));
        assert!(read(&inline, &file)
            .unwrap_err()
            .contains("inputExpression and inputExpressionFile are both given"));
        let missing = Some(PathBuf::from("nope.cel"));
        assert!(read(&None, &missing)
            .unwrap_err()
            .starts_with("http: inputExpressionFile nope.cel:"));
    }

    fn expect(fields: serde_json::Value) -> Result<Expect, String> {
        let mut v = json!({ "allowed": true });
        v.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    fn decision(outcome: Outcome, metadata: Option<serde_json::Value>) -> Decision {
        Decision {
            response: CheckResponse {
                outcome,
                message: String::new(),
                metadata: metadata.map(|m| m.as_object().unwrap().clone()),
            },
            policy: None,
            validation: None,
            error: None,
            evaluated: 0,
            audit: Vec::new(),
        }
    }

    /// An allowed decision with nothing in it, and one with one of each.
    fn bare() -> Decision {
        decision(Outcome::Ok(OkResponse::default()), None)
    }

    fn full() -> Decision {
        decision(
            Outcome::Ok(OkResponse {
                headers: vec![HeaderOption::new("x-a", "1")],
                headers_to_remove: vec!["cookie".into()],
                response_headers_to_add: vec![HeaderOption::new("x-r", "2")],
                query_parameters_to_set: vec![QueryParam {
                    key: "q".into(),
                    value: "3".into(),
                }],
                query_parameters_to_remove: vec!["debug".into()],
            }),
            Some(json!({ "user": "alice" })),
        )
    }

    /// For each map and list field: left out, not checked; `{}`/`[]` (and
    /// `null`), none; a value, exactly that.
    #[test]
    fn every_map_and_list_field_reads_empty_as_none_and_a_value_exactly() {
        let fields = [
            (
                "headers",
                json!({}),
                json!({ "x-a": "1" }),
                json!({ "x-a": "9" }),
            ),
            (
                "removedHeaders",
                json!([]),
                json!(["cookie"]),
                json!(["cookie", "x"]),
            ),
            (
                "responseHeaders",
                json!({}),
                json!({ "x-r": "2" }),
                json!({ "x-r": "2", "x": "y" }),
            ),
            (
                "queryParams",
                json!({}),
                json!({ "q": "3" }),
                json!({ "q": "4" }),
            ),
            ("removedQueryParams", json!([]), json!(["debug"]), json!([])),
            (
                "metadata",
                json!({}),
                json!({ "user": "alice" }),
                json!({ "user": "bob" }),
            ),
        ];
        for (field, empty, exact, wrong) in fields {
            let case = |value: serde_json::Value| expect(json!({ field: value })).unwrap();
            let absent = expect(json!({})).unwrap();
            assert_eq!(compare(&absent, &bare()), Vec::<String>::new(), "{field}");
            assert_eq!(compare(&absent, &full()), Vec::<String>::new(), "{field}");
            for none in [empty.clone(), serde_json::Value::Null] {
                assert_eq!(
                    compare(&case(none.clone()), &bare()),
                    Vec::<String>::new(),
                    "{field}: {none}"
                );
                let f = compare(&case(none.clone()), &full());
                assert_eq!(f.len(), 1, "{field}: {none} must mean none: {f:?}");
                assert!(f[0].starts_with(&format!("{field}: expected ")), "{f:?}");
            }
            assert_eq!(
                compare(&case(exact.clone()), &full()),
                Vec::<String>::new(),
                "{field}"
            );
            assert_eq!(compare(&case(exact), &bare()).len(), 1, "{field}");
            assert_eq!(compare(&case(wrong), &full()).len(), 1, "{field}");
        }
    }

    #[test]
    fn body_and_message_read_empty_and_null_as_none() {
        let denied = |body: &str| {
            decision(
                Outcome::Denied(DeniedResponse {
                    status: 403,
                    headers: Vec::new(),
                    body: body.into(),
                }),
                None,
            )
        };
        for none in [json!(""), serde_json::Value::Null] {
            let e = expect(json!({ "allowed": false, "body": none, "message": none })).unwrap();
            assert!(compare(&e, &denied("")).is_empty());
            assert_eq!(compare(&e, &denied("no")).len(), 1);
        }
        let e = expect(json!({ "allowed": false })).unwrap();
        assert!(compare(&e, &denied("anything")).is_empty(), "not checked");
    }

    #[test]
    fn null_is_refused_where_it_would_mean_nothing() {
        for field in ["status", "error", "errorContains"] {
            let e = expect(json!({ field: null })).unwrap_err();
            assert!(e.contains("leave the field out"), "{field}: {e}");
        }
        let e = expect(json!({ "metadata": "alice" })).unwrap_err();
        assert!(e.contains("map"), "{e}");
    }
}
