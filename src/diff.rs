//! `celgate diff`: one corpus of requests decided by two policy sets, and
//! the requests whose answer changes between them.
//!
//! The corpus is read from three kinds of files:
//!
//! - CheckRequest JSON (as `celgate check` reads it), one request a file,
//!   named by its path;
//! - test suites (`kind: Test`): each case's request, named `file#case`;
//!   a case's `token` is minted once, so both sides see the same token, and
//!   the suite's `jwks` documents answer `jwks.Fetch`. The suite's own
//!   policies and expectations play no part;
//! - decision logs (`serve --decision-log`), one request a line, named
//!   `file:line`: rebuilt from what the line records ([`REPLAYED_FIELDS`]),
//!   and marked as replayed, since everything else about the request
//!   (credentials, other headers, the query string, the body) was never
//!   logged and the policies see it absent. The decision the line recorded
//!   is kept: a replay that `from` decides otherwise is counted, as a sign
//!   that the replay lacks what the request was decided on.
//!
//! Files given by name are read whatever their name; directories are
//! searched recursively for `.json` requests (a JSON file with no
//! `attributes` is not a request and is skipped with a note), `.jsonl` and
//! `.ndjson` decision logs and `.yaml`/`.yml` suites, skipping entries that
//! start with `.` and folders named `target` or `node_modules`. A request
//! file that a suite found in the same search uses as a case's request is
//! read through the suite only.

use crate::engine::{evaluate, Decision, EngineConfig};
use crate::policy::{load, PolicySet};
use crate::response::{HeaderOption, Outcome};
use crate::suite::{self, TestDoc};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};

/// What a request replayed from a decision log holds.
pub const REPLAYED_FIELDS: &str = "method, host, path (without its query string), source \
    address (without its port), time, request id and the headers the log allow-listed";

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{}: no such file or directory", .0.display())]
    Missing(PathBuf),
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not a CheckRequest: {message}", path.display())]
    Request { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Suite { path: PathBuf, message: String },
    #[error("{}:{line}: not a decision-log line: {message}", path.display())]
    LogLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{}: neither a CheckRequest (JSON), a test suite (YAML, kind: Test) nor a decision log \
         (JSON lines)",
        .0.display()
    )]
    Unrecognised(PathBuf),
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> CorpusError + Copy + '_ {
    move |error| CorpusError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// One request of the corpus.
#[derive(Debug)]
pub struct Named {
    pub name: String,
    pub request: CheckRequest,
    /// For a request rebuilt from a decision-log line (which holds only
    /// [`REPLAYED_FIELDS`]), the decision the log recorded.
    pub logged: Option<LoggedDecision>,
}

/// The decision a decision-log line recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoggedDecision {
    pub allowed: bool,
    pub status: i32,
    pub policy: Option<String>,
}

impl LoggedDecision {
    /// Whether `answer` is this decision (allowed, status and policy).
    pub fn matches(&self, answer: &Answer) -> bool {
        self.allowed == answer.allowed
            && self.status == answer.status
            && self.policy == answer.policy
    }
}

#[derive(Debug)]
enum Kind {
    Request(Box<CheckRequest>),
    Suites(Vec<TestDoc>),
    Log,
}

#[derive(Debug)]
struct Entry {
    path: PathBuf,
    kind: Kind,
}

/// The files that hold the requests, in the order they are read.
#[derive(Debug)]
pub struct Corpus {
    entries: Vec<Entry>,
    /// JSON files found in a directory that are not a CheckRequest (they
    /// have no `attributes`) and were left out.
    pub skipped: Vec<PathBuf>,
}

impl Corpus {
    /// Finds the request files under `paths`. Request files are read here
    /// (so a broken one stops the command before anything is decided);
    /// suites' cases and decision logs are read by [`Corpus::for_each`].
    pub fn find(paths: &[PathBuf]) -> Result<Corpus, CorpusError> {
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                walk(p, &mut files)?;
            } else if p.exists() {
                files.push((p.clone(), true));
            } else {
                return Err(CorpusError::Missing(p.clone()));
            }
        }
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        for (path, explicit) in files {
            match classify(&path, explicit)? {
                Some(kind) => entries.push(Entry { path, kind }),
                None if explicit => return Err(CorpusError::Unrecognised(path)),
                None => {
                    if extension(&path) == Some("json") {
                        skipped.push(path);
                    }
                }
            }
        }
        // The files the suites read (case requests, JWKS documents) are
        // theirs: not requests of their own, and not worth a note.
        let mut fixtures = BTreeSet::new();
        for e in &entries {
            if let Kind::Suites(docs) = &e.kind {
                let dir = e.path.parent().unwrap_or(Path::new("."));
                for doc in docs {
                    let files = doc
                        .cases
                        .iter()
                        .filter_map(|c| c.request.as_str().map(PathBuf::from))
                        .chain(doc.jwks.values().cloned());
                    for f in files {
                        if let Ok(p) = std::fs::canonicalize(dir.join(f)) {
                            fixtures.insert(p);
                        }
                    }
                }
            }
        }
        let is_fixture = |p: &Path| std::fs::canonicalize(p).is_ok_and(|c| fixtures.contains(&c));
        let explicit: BTreeSet<&PathBuf> = paths.iter().collect();
        entries.retain(|e| {
            !matches!(e.kind, Kind::Request(_))
                || explicit.contains(&e.path)
                || !is_fixture(&e.path)
        });
        skipped.retain(|p| !is_fixture(p));
        Ok(Corpus { entries, skipped })
    }

    /// Whether no file holds a request (a suite holds at least one case, a
    /// decision log may hold none).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Calls `f` with each request in order; stops at the first one that
    /// cannot be read.
    pub fn for_each(self, mut f: impl FnMut(Named)) -> Result<(), CorpusError> {
        for Entry { path, kind } in self.entries {
            match kind {
                Kind::Request(request) => f(Named {
                    name: path.display().to_string(),
                    request: *request,
                    logged: None,
                }),
                Kind::Suites(docs) => {
                    let dir = path.parent().unwrap_or(Path::new("."));
                    let bad = |message: String| CorpusError::Suite {
                        path: path.clone(),
                        message,
                    };
                    for doc in &docs {
                        suite::preload_jwks(dir, doc).map_err(bad)?;
                        // HTTP-mode cases are decided by another server.
                        for case in doc.cases.iter().filter(|c| c.http_request.is_none()) {
                            f(Named {
                                name: format!("{}#{}", path.display(), case.name),
                                request: suite::case_request(dir, case).map_err(bad)?,
                                logged: None,
                            });
                        }
                    }
                }
                Kind::Log => {
                    let io = io_error(&path);
                    let file = std::fs::File::open(&path).map_err(io)?;
                    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                        let line = line.map_err(io)?;
                        if line.trim().is_empty() {
                            continue;
                        }
                        let (request, logged) =
                            replay(&line).map_err(|message| CorpusError::LogLine {
                                path: path.clone(),
                                line: i + 1,
                                message,
                            })?;
                        f(Named {
                            name: format!("{}:{}", path.display(), i + 1),
                            request,
                            logged: Some(logged),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

fn extension(path: &Path) -> Option<&str> {
    path.extension().and_then(|e| e.to_str())
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, bool)>) -> Result<(), CorpusError> {
    let keep = |path: &Path| {
        matches!(
            extension(path),
            Some("json" | "jsonl" | "ndjson" | "yaml" | "yml")
        )
    };
    let mut found = Vec::new();
    load::walk_source_tree(dir, &keep, &mut found)
        .map_err(|(path, error)| CorpusError::Io { path, error })?;
    out.extend(found.into_iter().map(|p| (p, false)));
    Ok(())
}

/// What `path` holds; `None` when it holds no request (a YAML file with no
/// suite, a JSON document that is not a request).
fn classify(path: &Path, explicit: bool) -> Result<Option<Kind>, CorpusError> {
    let ext = extension(path);
    if matches!(ext, Some("jsonl" | "ndjson")) {
        return Ok(Some(Kind::Log));
    }
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    if matches!(ext, Some("yaml" | "yml")) {
        if !explicit && !text.contains("celgate.dev/") {
            return Ok(None);
        }
        let docs: Vec<TestDoc> = suite::find(&[path.to_path_buf()])
            .map_err(|e| CorpusError::Suite {
                path: path.to_path_buf(),
                message: suite_error(&e, path),
            })?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        return Ok((!docs.is_empty()).then_some(Kind::Suites(docs)));
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.get("decision").is_some() && v.get("attributes").is_none() => {
            Ok(Some(Kind::Log))
        }
        Ok(v) if explicit || v.get("attributes").is_some() => crate::request_json::from_value(&v)
            .map(|r| Some(Kind::Request(Box::new(r))))
            .map_err(|e| CorpusError::Request {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        Ok(_) => Ok(None),
        // More than one JSON value: a decision log when its first line is
        // a record.
        Err(e) => {
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            match serde_json::from_str::<Value>(first) {
                Ok(v) if v.get("decision").is_some() => Ok(Some(Kind::Log)),
                _ => Err(CorpusError::Request {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                }),
            }
        }
    }
}

/// A suite's error without its file's name, which [`CorpusError::Suite`]
/// adds.
fn suite_error(e: &suite::SuiteError, path: &Path) -> String {
    let s = e.to_string();
    let prefix = format!("{}: ", path.display());
    s.strip_prefix(&prefix).map(str::to_owned).unwrap_or(s)
}

/// The fields of a decision-log line that describe the request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Logged {
    /// Required: it is what marks a line as a decision record.
    decision: String,
    #[serde(default)]
    status: i32,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    time: String,
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    headers: Map<String, Value>,
}

/// The request a decision-log line describes, as far as it can be rebuilt
/// ([`REPLAYED_FIELDS`], nothing else), and the decision it recorded.
pub fn replay(line: &str) -> Result<(CheckRequest, LoggedDecision), String> {
    let logged: Logged = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let decision = LoggedDecision {
        allowed: match logged.decision.as_str() {
            "allow" => true,
            "deny" => false,
            other => return Err(format!("decision {other:?} is neither allow nor deny")),
        },
        status: logged.status,
        policy: logged.policy,
    };
    let mut http = json!({
        "id": logged.request_id,
        "method": logged.method,
        "host": logged.host,
        "path": logged.path,
    });
    if !logged.headers.is_empty() {
        http["headers"] = Value::Object(logged.headers);
    }
    let mut request = json!({ "http": http });
    if !logged.time.is_empty() {
        request["time"] = Value::String(logged.time);
    }
    let mut attributes = json!({ "request": request });
    if !logged.source.is_empty() {
        attributes["source"] =
            json!({ "address": { "socketAddress": { "address": logged.source } } });
    }
    let request = crate::request_json::from_value(&json!({ "attributes": attributes }))
        .map_err(|e| e.to_string())?;
    Ok((request, decision))
}

/// What a client and the upstream see of a decision: what `diff` compares.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub allowed: bool,
    pub status: i32,
    /// The deciding policy (the validation within it is not compared).
    pub policy: Option<String>,
    /// When a `failurePolicy: Fail` policy could not be evaluated: the
    /// failing field and the kind of error.
    pub error: Option<String>,
    /// Headers added to the request that goes upstream.
    pub headers: BTreeMap<String, String>,
    /// Headers removed from the request that goes upstream.
    pub removed_headers: BTreeSet<String>,
    /// Headers of the response the client gets (the denial's headers, or
    /// those an allowed request's response is given).
    pub response_headers: BTreeMap<String, String>,
    pub query_params: BTreeMap<String, String>,
    pub removed_query_params: BTreeSet<String>,
    /// The denial's body.
    pub body: String,
    pub message: String,
    pub metadata: Map<String, Value>,
    /// The denials recorded under `validationActions` (`Audit`, `Warn`),
    /// in evaluation order.
    pub audit: Vec<Audited>,
}

/// A denial recorded under `validationActions`, as [`Answer`] compares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Audited {
    pub policy: String,
    pub status: i32,
    /// The evaluation error's summary, when the policy could not be evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the denial was enforced (`[Deny, Audit]`).
    pub enforced: bool,
}

impl Audited {
    /// `P would deny 403`, `P denied 403 (enforced, audited)`.
    fn label(&self) -> String {
        let mut s = if self.enforced {
            format!("{} denied {} (enforced, audited)", self.policy, self.status)
        } else {
            format!("{} would deny {}", self.policy, self.status)
        };
        if let Some(e) = &self.error {
            s.push_str(", could not be evaluated: ");
            s.push_str(e);
        }
        s
    }
}

/// Headers by name; a name given more than once has its values joined with
/// `, ` in order.
fn headers(hs: &[HeaderOption]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for h in hs {
        out.entry(h.key.to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&h.value);
            })
            .or_insert_with(|| h.value.clone());
    }
    out
}

impl Answer {
    pub fn of(d: &Decision) -> Answer {
        let mut a = Answer {
            allowed: d.allowed(),
            status: d.http_status(),
            policy: d.policy.clone(),
            error: d.error.as_ref().map(|e| e.summary()),
            headers: BTreeMap::new(),
            removed_headers: BTreeSet::new(),
            response_headers: BTreeMap::new(),
            query_params: BTreeMap::new(),
            removed_query_params: BTreeSet::new(),
            body: String::new(),
            message: d.response.message.clone(),
            metadata: d.response.metadata.clone().unwrap_or_default(),
            audit: d
                .audit
                .iter()
                .map(|a| Audited {
                    policy: a.policy.clone(),
                    status: a.status,
                    error: a.error.clone(),
                    enforced: a.enforced,
                })
                .collect(),
        };
        match &d.response.outcome {
            Outcome::Ok(ok) => {
                a.headers = headers(&ok.headers);
                a.removed_headers = ok.headers_to_remove.iter().cloned().collect();
                a.response_headers = headers(&ok.response_headers_to_add);
                a.query_params = ok
                    .query_parameters_to_set
                    .iter()
                    .map(|q| (q.key.clone(), q.value.clone()))
                    .collect();
                a.removed_query_params = ok.query_parameters_to_remove.iter().cloned().collect();
            }
            Outcome::Denied(den) => {
                a.response_headers = headers(&den.headers);
                a.body = den.body.clone();
            }
        }
        a
    }

    /// The names (as in [`Answer`]'s JSON) of the fields that differ.
    pub fn changed(&self, other: &Answer) -> Vec<&'static str> {
        let pairs = [
            ("allowed", self.allowed != other.allowed),
            ("status", self.status != other.status),
            ("policy", self.policy != other.policy),
            ("error", self.error != other.error),
            ("headers", self.headers != other.headers),
            (
                "removedHeaders",
                self.removed_headers != other.removed_headers,
            ),
            (
                "responseHeaders",
                self.response_headers != other.response_headers,
            ),
            ("queryParams", self.query_params != other.query_params),
            (
                "removedQueryParams",
                self.removed_query_params != other.removed_query_params,
            ),
            ("body", self.body != other.body),
            ("message", self.message != other.message),
            ("metadata", self.metadata != other.metadata),
            ("audit", self.audit != other.audit),
        ];
        pairs
            .into_iter()
            .filter(|(_, d)| *d)
            .map(|(n, _)| n)
            .collect()
    }

    /// `allowed by P`, `denied 403 by P`, with the evaluation error if any.
    pub fn label(&self) -> String {
        let mut s = label(self.allowed, self.status, self.policy.as_deref());
        if let Some(e) = &self.error {
            s.push_str(", could not be evaluated: ");
            s.push_str(e);
        }
        s
    }
}

fn label(allowed: bool, status: i32, policy: Option<&str>) -> String {
    let mut s = if allowed {
        "allowed".to_owned()
    } else {
        format!("denied {status}")
    };
    match policy {
        Some(p) => {
            s.push_str(" by ");
            s.push_str(p);
        }
        None => s.push_str(" (no policy decided)"),
    }
    s
}

/// A request whose answer changed.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub name: String,
    pub replayed: bool,
    /// For a replayed request, the decision its log line recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logged: Option<LoggedDecision>,
    /// The fields of [`Answer`] that differ.
    pub fields: Vec<&'static str>,
    pub from: Answer,
    pub to: Answer,
}

/// The outcome of a diff.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Requests decided.
    pub requests: usize,
    /// Of those, requests replayed from decision logs.
    pub replayed: usize,
    /// Of those, requests that `from` decides otherwise than the log
    /// recorded (allowed, status or policy): their replay lacks what they
    /// were decided on, or `from` is not what decided them then.
    pub unlike_logged: usize,
    pub changes: Vec<Change>,
}

/// Decides every request of `corpus` with `from` and with `to`.
pub fn run(
    from: &PolicySet,
    to: &PolicySet,
    config: &EngineConfig,
    corpus: Corpus,
) -> Result<Report, CorpusError> {
    let mut report = Report::default();
    corpus.for_each(|named| {
        let before = Answer::of(&evaluate(from, config, &named.request));
        let after = Answer::of(&evaluate(to, config, &named.request));
        report.requests += 1;
        if let Some(logged) = &named.logged {
            report.replayed += 1;
            report.unlike_logged += usize::from(!logged.matches(&before));
        }
        let changed = before.changed(&after);
        if !changed.is_empty() {
            report.changes.push(Change {
                name: named.name,
                replayed: named.logged.is_some(),
                logged: named.logged,
                fields: changed,
                from: before,
                to: after,
            });
        }
    })?;
    Ok(report)
}

/// Text longer than this is cut in the text report (the JSON has it whole).
const SHOWN_CHARS: usize = 200;

fn quoted(s: &str) -> String {
    match s.char_indices().nth(SHOWN_CHARS) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

fn map_lines(
    out: &mut Vec<String>,
    what: &str,
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (None, Some(v)) => out.push(format!("+ {what} {k}: {}", quoted(v))),
            (Some(v), None) => out.push(format!("- {what} {k}: {}", quoted(v))),
            (Some(x), Some(y)) if x != y => {
                out.push(format!("~ {what} {k}: {} -> {}", quoted(x), quoted(y)));
            }
            _ => {}
        }
    }
}

fn set_lines(out: &mut Vec<String>, what: &str, a: &BTreeSet<String>, b: &BTreeSet<String>) {
    for k in b.difference(a) {
        out.push(format!("+ {what} {k}"));
    }
    for k in a.difference(b) {
        out.push(format!("- {what} {k}"));
    }
}

impl Change {
    /// What changed besides the answers' labels, one line each: `+` added,
    /// `-` gone, `~` changed.
    pub fn detail(&self) -> Vec<String> {
        let (a, b) = (&self.from, &self.to);
        let mut out = Vec::new();
        map_lines(&mut out, "upstream header", &a.headers, &b.headers);
        set_lines(
            &mut out,
            "removes upstream header",
            &a.removed_headers,
            &b.removed_headers,
        );
        map_lines(
            &mut out,
            "response header",
            &a.response_headers,
            &b.response_headers,
        );
        map_lines(
            &mut out,
            "query parameter",
            &a.query_params,
            &b.query_params,
        );
        set_lines(
            &mut out,
            "removes query parameter",
            &a.removed_query_params,
            &b.removed_query_params,
        );
        if a.body != b.body {
            out.push(format!(
                "~ body: {} -> {}",
                quoted(&a.body),
                quoted(&b.body)
            ));
        }
        if a.message != b.message {
            out.push(format!(
                "~ message: {} -> {}",
                quoted(&a.message),
                quoted(&b.message)
            ));
        }
        if a.metadata != b.metadata {
            let json = |m: &Map<String, Value>| Value::Object(m.clone()).to_string();
            out.push(format!(
                "~ metadata: {} -> {}",
                quoted(&json(&a.metadata)),
                quoted(&json(&b.metadata))
            ));
        }
        if a.audit != b.audit {
            let labels = |l: &[Audited]| l.iter().map(Audited::label).collect::<BTreeSet<_>>();
            set_lines(&mut out, "audit:", &labels(&a.audit), &labels(&b.audit));
        }
        out
    }
}

impl Report {
    /// Every changed request with both answers and what changed, then the
    /// totals.
    pub fn render_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for c in &self.changes {
            let mark = if c.replayed { " (replayed)" } else { "" };
            let _ = writeln!(out, "{}{mark}", c.name);
            if let Some(l) = &c.logged {
                let unlike = if l.matches(&c.from) {
                    ""
                } else {
                    " (not what --from decides)"
                };
                let _ = writeln!(
                    out,
                    "  log:  {}{unlike}",
                    label(l.allowed, l.status, l.policy.as_deref())
                );
            }
            let _ = writeln!(out, "  from: {}", c.from.label());
            let _ = writeln!(out, "  to:   {}", c.to.label());
            for line in c.detail() {
                let _ = writeln!(out, "  {line}");
            }
            out.push('\n');
        }
        let plural = if self.requests == 1 { "" } else { "s" };
        let _ = write!(out, "{} request{plural}", self.requests);
        if self.replayed > 0 {
            let _ = write!(out, " ({} replayed from decision logs", self.replayed);
            if self.unlike_logged > 0 {
                let _ = write!(
                    out,
                    ", {} of them decided by --from otherwise than logged",
                    self.unlike_logged
                );
            }
            out.push(')');
        }
        let _ = writeln!(out, ", {} changed", self.changes.len());
        if self.replayed > 0 {
            let _ = writeln!(
                out,
                "replayed requests hold only the {REPLAYED_FIELDS}; the policies see anything \
                 else (credentials, other headers, the query string, the body) absent"
            );
        }
        out
    }

    /// The report for tools: `requests`, `replayed`, `unlikeLogged`,
    /// `changed` (a count) and `changes`, each with `name`, `replayed`,
    /// `fields` (the names of the fields that differ), the `from` and `to`
    /// answers and, replayed, the `logged` decision.
    pub fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "replayed": self.replayed,
            "unlikeLogged": self.unlike_logged,
            "changed": self.changes.len(),
            "changes": self.changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::{CheckResponse, DeniedResponse, OkResponse};

    fn decision(outcome: Outcome, policy: Option<&str>) -> Decision {
        Decision {
            response: CheckResponse {
                outcome,
                message: String::new(),
                metadata: None,
            },
            policy: policy.map(str::to_owned),
            validation: None,
            error: None,
            evaluated: 0,
            audit: Vec::new(),
        }
    }

    #[test]
    fn a_decision_log_line_replays_what_it_recorded_and_nothing_else() {
        let line = r#"{"id":"0190-2","time":"2026-11-30T12:00:00.5Z","requestId":"r-1","method":"DELETE","host":"api.example.com","path":"/repos/x","source":"10.0.0.7","decision":"deny","status":403,"policy":"p","policiesEvaluated":2,"latencyUs":31,"headers":{"X-Tenant":"acme"}}"#;
        let (r, logged) = replay(line).unwrap();
        assert_eq!(
            logged,
            LoggedDecision {
                allowed: false,
                status: 403,
                policy: Some("p".into())
            }
        );
        let a = r.attributes.unwrap();
        let req = a.request.unwrap();
        let http = req.http.unwrap();
        assert_eq!(http.id, "r-1");
        assert_eq!(http.method, "DELETE");
        assert_eq!(http.host, "api.example.com");
        assert_eq!(http.path, "/repos/x");
        assert_eq!(http.query, "");
        assert_eq!(http.body, "");
        assert!(http.raw_body.is_empty() && http.header_map.is_none());
        assert_eq!(
            http.headers,
            [("x-tenant".to_owned(), "acme".to_owned())].into()
        );
        let t = req.time.unwrap();
        assert_eq!((t.seconds, t.nanos), (1_796_040_000, 500_000_000));
        let source = format!("{:?}", a.source.unwrap());
        assert!(source.contains("10.0.0.7"), "{source}");
        assert!(a.destination.is_none() && a.tls_session.is_none());
    }

    #[test]
    fn a_line_that_is_not_a_decision_record_is_refused() {
        let e = replay(r#"{"level":"INFO","message":"started"}"#).unwrap_err();
        assert!(e.contains("decision"), "{e}");
        assert!(replay("not json").is_err());
        let e = replay(r#"{"decision":"deny","time":"yesterday"}"#).unwrap_err();
        assert!(e.contains("time"), "{e}");
        let e = replay(r#"{"decision":"maybe"}"#).unwrap_err();
        assert!(e.contains("neither allow nor deny"), "{e}");
    }

    #[test]
    fn answers_compare_what_clients_and_upstreams_see() {
        let allow = |hs: Vec<HeaderOption>, policy| {
            Answer::of(&decision(
                Outcome::Ok(OkResponse {
                    headers: hs,
                    ..Default::default()
                }),
                policy,
            ))
        };
        let a = allow(vec![HeaderOption::new("x-user", "bob")], Some("p"));
        assert!(a.changed(&a.clone()).is_empty());
        let b = allow(vec![HeaderOption::new("X-User", "bob")], Some("p"));
        assert!(
            a.changed(&b).is_empty(),
            "header names are case-insensitive"
        );
        let c = allow(vec![HeaderOption::new("x-user", "alice")], Some("q"));
        assert_eq!(a.changed(&c), ["policy", "headers"]);
        let deny = Answer::of(&decision(
            Outcome::Denied(DeniedResponse {
                status: 401,
                headers: vec![HeaderOption::new("www-authenticate", "Bearer")],
                body: "no\n".into(),
            }),
            Some("p"),
        ));
        assert_eq!(
            a.changed(&deny),
            ["allowed", "status", "headers", "responseHeaders", "body"]
        );
        assert_eq!(deny.label(), "denied 401 by p");
        assert_eq!(allow(vec![], None).label(), "allowed (no policy decided)");
        let change = Change {
            name: "r".into(),
            replayed: false,
            logged: None,
            fields: a.changed(&deny),
            from: a,
            to: deny,
        };
        assert_eq!(
            change.detail(),
            [
                "- upstream header x-user: \"bob\"",
                "+ response header www-authenticate: \"Bearer\"",
                "~ body: \"\" -> \"no\\n\"",
            ]
        );
    }

    /// Named files are read by what they hold; directories by name, with
    /// JSON that is not a request left out and suite fixtures read once.
    #[test]
    fn files_are_read_by_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            p
        };
        let record = r#"{"method":"GET","path":"/x","decision":"allow","status":200}"#;
        let one_line_log = write("log.json", record);
        let request = write(
            "r/a.json",
            r#"{"attributes":{"request":{"http":{"path":"/a"}}}}"#,
        );
        write("r/jwks.json", r#"{"keys":[]}"#);
        write(
            "r/fixture.json",
            r#"{"attributes":{"request":{"http":{"path":"/f"}}}}"#,
        );
        write(
            "r/s.test.yaml",
            "apiVersion: celgate.dev/v1alpha1\nkind: Test\npolicies: [.]\ncases:\n\
             - { name: c, request: fixture.json, expect: { allowed: true } }\n",
        );
        write("r/.hidden/b.json", r#"{"attributes":{}}"#);
        let names = |paths: &[PathBuf]| {
            let c = Corpus::find(paths).unwrap();
            let skipped = c.skipped.clone();
            let mut out = Vec::new();
            c.for_each(|n| {
                let name = n.name.replace(&dir.path().display().to_string(), "");
                out.push((name, n.logged.is_some()));
            })
            .unwrap();
            (out, skipped.len())
        };
        let (got, skipped) = names(&[one_line_log, dir.path().join("r")]);
        assert_eq!(
            got,
            [
                ("/log.json:1".to_owned(), true),
                ("/r/a.json".to_owned(), false),
                ("/r/s.test.yaml#c".to_owned(), false),
            ]
        );
        assert_eq!(skipped, 1, "jwks.json is left out with a note");
        // Named, a fixture is a request of its own.
        let (got, _) = names(&[request, dir.path().join("r/fixture.json")]);
        assert_eq!(got.len(), 2);
        let e = Corpus::find(&[write("r/x.yaml", "kind: ConfigMap\n")]).unwrap_err();
        assert!(matches!(e, CorpusError::Unrecognised(_)), "{e}");
    }

    #[test]
    fn duplicate_headers_are_kept_in_order() {
        let h = headers(&[
            HeaderOption::new("set-x", "1"),
            HeaderOption::new("Set-X", "2"),
        ]);
        assert_eq!(h["set-x"], "1, 2");
    }

    #[test]
    fn long_text_is_cut_in_the_text_report() {
        let long = "x".repeat(SHOWN_CHARS + 5);
        let q = quoted(&long);
        assert_eq!(q, format!("{:?}…", "x".repeat(SHOWN_CHARS)));
        assert_eq!(quoted("é"), "\"é\"");
    }
}
