//! The decision log: one JSON line per decision, opt-in, to stdout or a file.
//!
//! Bounded and non-blocking: Check hands a small record to a channel of fixed
//! size and never waits; a writer thread formats and writes. When the writer
//! falls behind (a slow disk) records are dropped and counted
//! (`celgate_decision_log_dropped_total`), never queued without bound.
//!
//! Never secrets: the path is logged without its query string (tokens travel
//! there too), headers only when allow-listed, and credential headers
//! (`authorization`, cookies, API keys) cannot be allow-listed at all.

use crate::engine::Decision;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use serde::Serialize;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

/// Headers that are never written, whatever the allow-list says.
pub const NEVER_LOGGED: [&str; 7] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
    "x-amz-security-token",
];

/// Records the writer can fall behind by before records are dropped.
pub const CAPACITY: usize = 8192;

static WRITTEN: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static SEQ: AtomicU64 = AtomicU64::new(0);
/// One past the sequence number of the last record written and flushed.
static FLUSHED: AtomicU64 = AtomicU64::new(0);

/// (written, dropped) since start.
pub fn counts() -> (u64, u64) {
    (WRITTEN.load(Relaxed), DROPPED.load(Relaxed))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for Target {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "stdout" || s == "-" {
            Target::Stdout
        } else {
            Target::File(PathBuf::from(s))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecisionLogError {
    #[error("{0}: cannot open the decision log: {1}")]
    Open(PathBuf, std::io::Error),
    #[error("header {0:?} carries credentials and is never written to the decision log")]
    Secret(String),
    #[error("cannot start the decision log writer: {0}")]
    Thread(std::io::Error),
}

/// What Check hands over: the request path only copies; the writer formats.
#[derive(Debug)]
struct Pending {
    seq: u64,
    at: SystemTime,
    line: Line,
}

#[derive(Debug)]
enum Line {
    Decision(Record),
    Shadow(ShadowRecord),
}

/// What decided a request and how, never a value from the request: part of
/// a decision line, and each side of a shadow line.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    /// `allow` or `deny`.
    pub decision: &'static str,
    pub status: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<usize>,
    /// The field whose evaluation failed (for an error of the server's own,
    /// its fixed description). Never the CEL message, which may quote
    /// request data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The kind of that error (`no_such_key`, `mcp_parse`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<&'static str>,
}

impl Answer {
    pub fn of(d: &Decision) -> Answer {
        Answer {
            decision: if d.allowed() { "allow" } else { "deny" },
            status: d.http_status(),
            policy: d.policy.clone(),
            validation: d.validation,
            error: error_field(d),
            error_kind: d.error.as_ref().map(|e| e.kind.as_str()),
        }
    }
}

/// What the shadow set adds to a shadow line.
#[derive(Debug, Clone)]
pub struct ShadowLine {
    /// `disagree` or `error` (agreements are only counted).
    pub result: &'static str,
    /// `allow_deny`, `deny_allow` or `status` for a disagreement.
    pub kind: Option<&'static str>,
    pub live: Answer,
    pub shadow: Answer,
    /// From the hand-over to the shadow threads to the shadow decision.
    pub latency_us: u64,
}

/// A line comparing the live answer with the shadow set's
/// (`"type": "shadow"`; decision lines have no `type`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowRecord {
    pub id: String,
    pub time: String,
    #[serde(rename = "type")]
    pub line_type: &'static str,
    /// The `id` of the live decision's line (absent when that line was
    /// dropped).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub decision_id: String,
    #[serde(skip)]
    decision_seq: Option<u64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    pub method: String,
    pub host: String,
    /// Without the query string.
    pub path: String,
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub live: Answer,
    pub shadow: Answer,
    pub shadow_latency_us: u64,
}

/// The request fields every line carries: request id, method, host, path
/// without its query.
fn request_fields(request: &CheckRequest) -> (String, String, String, String) {
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let path = http.map_or("", |h| h.path.as_str());
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    (
        http.map_or_else(String::new, |h| h.id.clone()),
        http.map_or_else(String::new, |h| h.method.clone()),
        http.map_or_else(String::new, |h| h.host.clone()),
        path.to_owned(),
    )
}

fn error_field(d: &Decision) -> Option<String> {
    d.error.as_ref().map(|e| {
        if e.field.is_empty() {
            e.summary()
        } else {
            e.field.clone()
        }
    })
}

/// One line of the log.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub id: String,
    pub time: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    pub method: String,
    pub host: String,
    /// Without the query string.
    pub path: String,
    pub source: String,
    /// `decision`, `status`, `policy`, `validation`, `error`, `errorKind`:
    /// the same fields as a side of a shadow line.
    #[serde(flatten)]
    pub answer: Answer,
    pub policies_evaluated: usize,
    /// Denials recorded under `validationActions` (`Audit`, `Warn`):
    /// policy, status, validation (or the error's field and kind), and
    /// whether it was enforced.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<crate::engine::AuditEntry>,
    pub latency_us: u64,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub headers: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug)]
pub struct DecisionLog {
    tx: SyncSender<Pending>,
    headers: Vec<String>,
}

impl DecisionLog {
    /// Opens `target` and starts the writer. `headers` is the allow-list.
    pub fn start(target: Target, headers: &[String]) -> Result<DecisionLog, DecisionLogError> {
        let headers: Vec<String> = headers
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if let Some(h) = headers.iter().find(|h| NEVER_LOGGED.contains(&h.as_str())) {
            return Err(DecisionLogError::Secret(h.clone()));
        }
        let out: Box<dyn std::io::Write + Send> = match &target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| DecisionLogError::Open(p.clone(), e))?,
            ),
        };
        let (tx, rx) = sync_channel(CAPACITY);
        let start = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // Ids are unique across restarts: the start time, then a counter.
        let prefix = format!("{:012x}", start & 0xffff_ffff_ffff);
        std::thread::Builder::new()
            .name("celgate-decision-log".into())
            .spawn(move || write_loop(rx, out, prefix))
            .map_err(DecisionLogError::Thread)?;
        Ok(DecisionLog { tx, headers })
    }

    /// Queues the record of one decision; never blocks. Its sequence number
    /// (which names the line), or `None` when it was dropped.
    pub fn record(&self, request: &CheckRequest, d: &Decision, took: Duration) -> Option<u64> {
        let attrs = request.attributes.as_ref();
        let http = attrs
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let path = http.map_or("", |h| h.path.as_str());
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let mut headers = serde_json::Map::new();
        if let Some(h) = http {
            for name in &self.headers {
                if let Some(v) = crate::cel::eval::request::request_header(h, name) {
                    headers.insert(name.clone(), String::from_utf8_lossy(&v).into());
                }
            }
        }
        let source = attrs
            .and_then(|a| a.source.as_ref())
            .and_then(|s| s.address.as_ref())
            .and_then(|a| match &a.address {
                Some(
                    envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s),
                ) => Some(s.address.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let record = Record {
            id: String::new(),
            time: String::new(),
            request_id: http.map_or_else(String::new, |h| h.id.clone()),
            method: http.map_or_else(String::new, |h| h.method.clone()),
            host: http.map_or_else(String::new, |h| h.host.clone()),
            path: path.to_owned(),
            source,
            answer: Answer::of(d),
            policies_evaluated: d.evaluated,
            audit: d.audit.clone(),
            latency_us: took.as_micros() as u64,
            headers,
        };
        self.queue(Line::Decision(record))
    }

    /// Queues a shadow line for `request`, whose live decision's line had
    /// the sequence number `decision_seq`; never blocks.
    pub fn record_shadow(&self, request: &CheckRequest, decision_seq: Option<u64>, s: ShadowLine) {
        let (request_id, method, host, path) = request_fields(request);
        self.queue(Line::Shadow(ShadowRecord {
            id: String::new(),
            time: String::new(),
            line_type: "shadow",
            decision_id: String::new(),
            decision_seq,
            request_id,
            method,
            host,
            path,
            result: s.result,
            kind: s.kind,
            live: s.live,
            shadow: s.shadow,
            shadow_latency_us: s.latency_us,
        }));
    }

    fn queue(&self, line: Line) -> Option<u64> {
        let seq = SEQ.fetch_add(1, Relaxed);
        let pending = Pending {
            seq,
            at: SystemTime::now(),
            line,
        };
        match self.tx.try_send(pending) {
            Ok(()) => Some(seq),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Relaxed);
                None
            }
        }
    }
}

fn write_loop(rx: Receiver<Pending>, out: Box<dyn std::io::Write + Send>, prefix: String) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    // The sequence number of the last record handled, plus one.
    let mut handled = 0;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(p) = next {
            handled = p.seq + 1;
            let id = format!("{prefix}-{:x}", p.seq);
            let time = crate::sources::rfc3339::format(p.at);
            let written = match p.line {
                Line::Decision(mut r) => {
                    (r.id, r.time) = (id, time);
                    serde_json::to_writer(&mut out, &r)
                }
                Line::Shadow(mut r) => {
                    (r.id, r.time) = (id, time);
                    if let Some(seq) = r.decision_seq {
                        r.decision_id = format!("{prefix}-{seq:x}");
                    }
                    serde_json::to_writer(&mut out, &r)
                }
            };
            if written.is_ok() && out.write_all(b"\n").is_ok() {
                WRITTEN.fetch_add(1, Relaxed);
            } else {
                DROPPED.fetch_add(1, Relaxed);
            }
            next = rx.try_recv().ok();
        }
        // Nothing else waiting: make the lines visible.
        let _ = out.flush();
        FLUSHED.store(handled, Relaxed);
    }
    let _ = out.flush();
}

/// Waits (at most `limit`) until the writer has flushed the last decision
/// queued so far, so a shutdown loses no line. (Sequence numbers are taken in
/// order of queueing; a record dropped because the queue was full may make
/// this wait the whole `limit`.)
pub fn drain(limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while FLUSHED.load(Relaxed) < SEQ.load(Relaxed) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}
