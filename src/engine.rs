//! Evaluation of a [`PolicySet`] against one `CheckRequest`.
//!
//! Policies run in name order. For each: its exceptions (one whose
//! conditions all hold → the policy says nothing; an error in one is the
//! policy's error; they read the policy's variables), matchConditions (any
//! false → skipped; a false wins over an error), then validations in order; the first non-null
//! validation is the policy's answer and the first policy with an answer
//! decides. No answer at all is an allow. An evaluation error under
//! `failurePolicy: Fail` is an explicit denial (never a gRPC error that Envoy
//! could be configured to let through); under `Ignore` the policy says nothing.
//!
//! A policy whose `validationActions` lack `Deny` is not enforced: it is
//! evaluated as any other, but its answer never decides. A denial it returns,
//! or an error under `Fail`, is recorded in the decision's
//! [`Decision::audit`] (and, with `Warn`, in a `warning` response header);
//! an allow it returns is dropped, so that a policy in audit can never let
//! through a request that a later policy denies. Either way evaluation goes
//! on with the next policy.

use crate::cel::eval;
use crate::cel::eval::lib::httpauthz;
pub use crate::cel::ErrorKind;
use crate::policy::index::Mark;
use crate::policy::{Expression, FailurePolicy, Policy, PolicySet};
use crate::response::{CheckResponse, DeniedResponse, HeaderOption, OkResponse, Outcome};
use crate::telemetry::metrics::PolicyOutcome;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

/// How celgate answers a request it could not decide: the failure denial.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// HTTP status of the failure denial (every [`FailureReason`] but
    /// [`FailureReason::Overload`], which is always 503 with `retry-after`).
    pub failure_status: i32,
    /// Body of every denial celgate makes on its own; `None`: the reason's
    /// own short text ([`FailureReason::default_body`]). The error itself is
    /// logged, never sent to clients.
    pub failure_body: Option<String>,
    /// Response header naming the [`FailureReason`] on those denials, so a
    /// client can tell them from a policy's deliberate denial; `None`: no
    /// header. A valid name in lower case ([`failure_header_name`]).
    pub failure_header: Option<String>,
    /// Response header naming, on every answer, the policies that would have
    /// denied the request but are not enforced (`validationActions` without
    /// `Deny`); `None` (the default): no header, as it tells clients about
    /// the policies. A valid name in lower case ([`failure_header_name`]).
    pub audit_header: Option<String>,
    /// Run-time cost budget of one request, all policies together
    /// (`--cost-budget`): past it, evaluation stops with an error that the
    /// policy's `failurePolicy` decides.
    pub cost_budget: u64,
    /// Whether the set's selection index ([`crate::policy::index`]) picks
    /// the policies a request can concern (`--no-policy-index`: off). The
    /// decision is the same either way; off, every policy's exceptions and
    /// matchConditions are evaluated.
    pub policy_index: bool,
}

/// The response header that carries the warnings of `validationActions:
/// [Warn]` policies, as Kubernetes sends them: `299 - "text"`, several
/// joined with `, `.
pub const WARNING_HEADER: &str = "warning";

/// Default name of the header that marks celgate's own denials.
pub const DEFAULT_FAILURE_HEADER: &str = "x-celgate-failure";
/// Default status of the failure denial.
pub const DEFAULT_FAILURE_STATUS: i32 = 403;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            failure_status: DEFAULT_FAILURE_STATUS,
            failure_body: None,
            failure_header: Some(DEFAULT_FAILURE_HEADER.to_owned()),
            audit_header: None,
            cost_budget: eval::ctx::DEFAULT_BUDGET,
            policy_index: true,
        }
    }
}

impl EngineConfig {
    /// The body of a denial for `reason`.
    pub fn failure_body(&self, reason: FailureReason) -> String {
        match &self.failure_body {
            Some(b) => b.clone(),
            None => reason.default_body().to_owned(),
        }
    }

    /// The marker header of a denial for `reason`, if one is configured.
    pub fn failure_headers(&self, reason: FailureReason) -> Vec<HeaderOption> {
        self.failure_header
            .iter()
            .map(|name| HeaderOption::new(name.clone(), reason.as_str()))
            .collect()
    }
}

/// Why celgate denied a request on its own rather than by a policy's
/// answer: the value of the failure header. A closed set of fixed words:
/// nothing of the request, the error or the policy reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// A `failurePolicy: Fail` policy could not be evaluated.
    Evaluation,
    /// The `CheckRequest` could not be read (too large, malformed, too slow).
    Unreadable,
    /// No decision within the decision deadline.
    Timeout,
    /// An error of celgate's own (a panic caught on the request path).
    Internal,
    /// The decision queue was full (503, `retry-after: 1`).
    Overload,
}

impl FailureReason {
    pub const ALL: [FailureReason; 5] = [
        FailureReason::Evaluation,
        FailureReason::Unreadable,
        FailureReason::Timeout,
        FailureReason::Internal,
        FailureReason::Overload,
    ];

    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Evaluation => "evaluation",
            FailureReason::Unreadable => "unreadable",
            FailureReason::Timeout => "timeout",
            FailureReason::Internal => "internal",
            FailureReason::Overload => "overload",
        }
    }

    /// The body sent when `--failure-body` is not given.
    pub fn default_body(self) -> &'static str {
        match self {
            FailureReason::Evaluation => "request denied: a policy could not be evaluated\n",
            FailureReason::Unreadable => "request denied: the request could not be read\n",
            FailureReason::Timeout => "request denied: no decision in time\n",
            FailureReason::Internal => "request denied: internal error\n",
            FailureReason::Overload => "request denied: too many requests pending, retry later\n",
        }
    }
}

/// A `--failure-header` value as it is used: lower case, `None` for an
/// empty value (no header). Refused: anything that is not an HTTP field
/// name (RFC 9110 token), pseudo-headers, and the names that frame or route
/// a message, which a proxy must not take from ext_authz.
pub fn failure_header_name(name: &str) -> Result<Option<String>, String> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(None);
    }
    if crate::response::header_name_problem(name).is_some() {
        return Err(format!(
            "{name:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"
        ));
    }
    let name = name.to_ascii_lowercase();
    const RESERVED: [&str; 9] = [
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-connection",
        "retry-after",
        "te",
        "transfer-encoding",
        "upgrade",
    ];
    if RESERVED.contains(&name.as_str()) {
        return Err(format!("{name} is a header celgate may not set"));
    }
    Ok(Some(name))
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub response: CheckResponse,
    /// The policy whose result decided, if any.
    pub policy: Option<String>,
    /// Index of the deciding validation within that policy.
    pub validation: Option<usize>,
    /// The evaluation error that made a `Fail` policy deny the request. Its
    /// `Display` is the safe summary (field and kind); the message, which may
    /// quote request data, only through [`EvalError::detailed`].
    pub error: Option<EvalError>,
    /// Policies that were looked at: whose matchConditions (and then exceptions)
    /// were evaluated, up to the deciding one. Those the selection index
    /// ruled out without evaluating anything are not counted, so with the
    /// index this is usually far less than without it (the one field in
    /// which the two differ).
    pub evaluated: usize,
    /// Denials recorded under `validationActions` (`Audit`, `Warn`), in
    /// evaluation order: those of policies that are not enforced, and the
    /// enforced denial of a `[Deny, Audit]` policy.
    pub audit: Vec<AuditEntry>,
}

/// A denial recorded because of a policy's `validationActions`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub policy: String,
    /// HTTP status of the denial: the policy's own, or the failure status
    /// for an evaluation error.
    pub status: i32,
    /// The validation that returned the denial; none for an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<usize>,
    /// For an evaluation error under `failurePolicy: Fail`, its summary
    /// (field and kind: [`EvalError::summary`]), never its message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the denial was enforced (`[Deny, Audit]`); false: the request
    /// went on to the next policies.
    pub enforced: bool,
    /// Whether the client was warned (`Warn`).
    #[serde(skip)]
    pub warned: bool,
}

impl Decision {
    /// The allow of a request no policy answered, after `evaluated`
    /// policies were looked at.
    fn no_answer(evaluated: usize) -> Decision {
        Decision {
            response: CheckResponse {
                outcome: Outcome::Ok(OkResponse::default()),
                message: String::new(),
                metadata: None,
            },
            policy: None,
            validation: None,
            error: None,
            evaluated,
            audit: Vec::new(),
        }
    }

    pub fn allowed(&self) -> bool {
        self.response.allowed()
    }

    /// HTTP status the client sees: 200 when allowed.
    pub fn http_status(&self) -> i32 {
        match &self.response.outcome {
            Outcome::Ok(_) => 200,
            Outcome::Denied(d) => d.status,
        }
    }
}

/// What happened to one policy, for `--explain` and tests.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PolicyTrace {
    pub policy: String,
    /// `decided`, `no result`, `skipped`, `skipped by index` (ruled out by
    /// the selection index, its matchConditions not evaluated), `exempted`,
    /// `error (ignored)`, `error (denied)`; for a policy that is not enforced, `would deny (not
    /// enforced)`, `allow (not enforced)` and `error (not enforced)`.
    pub outcome: String,
    pub exception: Option<String>,
    pub match_conditions: Vec<ExprTrace>,
    pub variables: Vec<ExprTrace>,
    pub validations: Vec<ExprTrace>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExprTrace {
    pub name: String,
    /// The value as JSON, or an `error: ...` string.
    pub result: serde_json::Value,
    /// How many times it was evaluated (variables: at most once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluations: Option<u32>,
}

/// Evaluates `set` against `request`.
pub fn evaluate(set: &PolicySet, config: &EngineConfig, request: &CheckRequest) -> Decision {
    run(set, config, request, None, None)
}

/// As [`evaluate`] (and, with `trace`, [`evaluate_traced`]), stopping the
/// evaluation at `deadline`: past it, an expression fails as if it had spent
/// its cost budget, and `failurePolicy` decides.
pub fn evaluate_within(
    set: &PolicySet,
    config: &EngineConfig,
    request: &CheckRequest,
    deadline: Option<std::time::Instant>,
    trace: bool,
) -> (Decision, Vec<PolicyTrace>) {
    let mut traces = Vec::new();
    let d = run(set, config, request, deadline, trace.then_some(&mut traces));
    (d, traces)
}

/// As [`evaluate`], also recording what each policy did.
pub fn evaluate_traced(
    set: &PolicySet,
    config: &EngineConfig,
    request: &CheckRequest,
) -> (Decision, Vec<PolicyTrace>) {
    let mut trace = Vec::new();
    let d = run(set, config, request, None, Some(&mut trace));
    (d, trace)
}

fn run(
    set: &PolicySet,
    config: &EngineConfig,
    request: &CheckRequest,
    deadline: Option<std::time::Instant>,
    trace: Option<&mut Vec<PolicyTrace>>,
) -> Decision {
    let meter = eval::Meter::new(config.cost_budget).with_deadline(deadline);
    let mut ctx = eval::Ctx::new(Some(request), meter);
    run_policies(set, config, &mut ctx, trace).expect("only an evaluation within a slice gives up")
}

/// As [`evaluate_within`], on a thread that must not block or be held long
/// (an async worker): the evaluation runs within the first `units` of its
/// cost budget and makes no blocking call. `None` when it needed more (or
/// a call that blocks, such as a first `jwks.Fetch`): nothing of the
/// attempt is kept (no metrics, no logs), and the caller evaluates the
/// request again in full where it may take its time.
pub fn evaluate_inline(
    set: &PolicySet,
    config: &EngineConfig,
    request: &CheckRequest,
    units: u64,
    trace: bool,
) -> Option<(Decision, Vec<PolicyTrace>)> {
    let meter = eval::Meter::slice(units, config.cost_budget);
    let mut ctx = eval::Ctx::new(Some(request), meter).without_blocking();
    let mut traces = Vec::new();
    let d = run_policies(set, config, &mut ctx, trace.then_some(&mut traces))?;
    Some((d, traces))
}

/// Logs a policy's evaluation error at `$level` (a `tracing` macro name):
/// the policy, the failing field, the error's kind, function and reason,
/// never the CEL message, which may quote request data. Every way a policy
/// error is handled logs these same fields.
macro_rules! policy_error_event {
    ($level:ident, $policy:expr, $e:expr, $message:literal) => {
        tracing::$level!(
            policy = %$policy.name,
            field = %$e.field,
            error_kind = $e.kind.as_str(),
            function = $e.function.as_deref().unwrap_or(""),
            reason = $e.reason.unwrap_or(""),
            $message
        )
    };
}

/// What an evaluation logs and counts, kept until the request is decided:
/// an attempt that gives up ([`evaluate_inline`]) leaves no trace.
struct Records<'p> {
    /// Each policy's outcome and time, for its metrics.
    timings: smallvec::SmallVec<[(&'p Policy, PolicyOutcome, std::time::Duration); 8]>,
    events: Vec<Event<'p>>,
    /// With metrics on, where the next policy's time starts: one clock
    /// read per policy, each one's end the next one's start.
    clock: Option<std::time::Instant>,
}

/// A log line of an evaluation.
enum Event<'p> {
    Ignored(&'p Policy, EvalError),
    NotEnforced(&'p Policy, EvalError),
    Denied(&'p Policy, EvalError),
}

impl<'p> Records<'p> {
    fn new() -> Self {
        let record = crate::telemetry::metrics::global().enabled();
        Records {
            timings: smallvec::SmallVec::new(),
            events: Vec::new(),
            clock: record.then(std::time::Instant::now),
        }
    }

    /// The time since the last policy's (or the start), as `policy`'s.
    fn time(&mut self, policy: &'p Policy, outcome: PolicyOutcome) {
        if let Some(started) = self.clock {
            let now = std::time::Instant::now();
            self.timings.push((policy, outcome, now - started));
            self.clock = Some(now);
        }
    }

    /// Logs the events and records the timings (taken, not moved: the
    /// records hold a few hundred bytes inline).
    fn flush(&mut self) {
        if !self.events.is_empty() {
            self.log_events();
        }
        for (policy, outcome, took) in self.timings.drain(..) {
            policy.metrics.evaluated(outcome, took);
        }
    }

    /// Out of line: most requests have no error to log.
    #[cold]
    #[inline(never)]
    fn log_events(&mut self) {
        for event in self.events.drain(..) {
            match event {
                Event::Ignored(policy, e) => policy_error_event!(
                    debug,
                    policy,
                    e,
                    "policy error ignored (failurePolicy: Ignore)"
                ),
                Event::NotEnforced(policy, e) => policy_error_event!(
                    warn,
                    policy,
                    e,
                    "policy error: recorded, not enforced (validationActions without Deny)"
                ),
                Event::Denied(policy, e) => policy_error_event!(
                    warn,
                    policy,
                    e,
                    "policy error: request denied (failurePolicy: Fail)"
                ),
            }
        }
    }
}

/// The policies in turn; `None` when the evaluation gave up
/// ([`eval::Meter::yielded`]), before anything of it was recorded.
fn run_policies<'r>(
    set: &'r PolicySet,
    config: &EngineConfig,
    ctx: &mut eval::Ctx<'r>,
    mut trace: Option<&mut Vec<PolicyTrace>>,
) -> Option<Decision> {
    let mut records = Records::new();
    let mut evaluated = 0;
    let mut audit = Vec::new();
    // The policies the selection index does not rule out, in name order
    // (with `trace`, every policy, the ruled-out ones marked); once the cost
    // budget is spent, every policy is visited, as every expression then
    // fails.
    let request = ctx.request().filter(|_| config.policy_index);
    let mut walk = set.index.walk(set.policies.len(), request, trace.is_some());
    let mut decision = None;
    while let Some((i, mark)) = walk.next(ctx.meter.used() > ctx.meter.budget()) {
        let policy = &set.policies[i];
        let ruled_out = mark == Mark::RuledOut;
        evaluated += usize::from(!ruled_out);
        let verdict = visit::<CheckResponse>(
            policy,
            mark,
            config,
            ctx,
            &mut trace,
            &mut audit,
            &mut records,
        )?;
        decision = verdict.map(|v| match v {
            Verdict::Decided(response, index) => Decision {
                response: *response,
                policy: Some(policy.name.clone()),
                validation: Some(index),
                error: None,
                evaluated,
                audit: Vec::new(),
            },
            Verdict::Failed(e) => {
                let mut d =
                    failure_decision_for(config, FailureReason::Evaluation, Some(&policy.name), e);
                d.evaluated = evaluated;
                d
            }
        });
        if decision.is_some() {
            break;
        }
    }
    let mut d = decision.unwrap_or_else(|| Decision::no_answer(evaluated));
    records.flush();
    with_audit(config, &mut d, audit);
    Some(d)
}

/// Gives `d` the audit entries and the headers they call for: the warnings
/// of `Warn` policies ([`WARNING_HEADER`]) and, with
/// [`EngineConfig::audit_header`], the names of the policies that would have
/// denied, on the response the client gets (allowed or denied).
fn with_audit(config: &EngineConfig, d: &mut Decision, audit: Vec<AuditEntry>) {
    if !audit.is_empty() {
        add_audit(config, d, audit);
    }
}

/// [`with_audit`] with entries, out of line: most requests have none.
#[cold]
#[inline(never)]
fn add_audit(config: &EngineConfig, d: &mut Decision, audit: Vec<AuditEntry>) {
    let mut added = Vec::new();
    let warnings: Vec<String> = audit
        .iter()
        .filter(|a| a.warned)
        .map(|a| {
            let why = if a.error.is_some() {
                "an evaluation error".to_owned()
            } else {
                format!("status {}", a.status)
            };
            format!(
                "299 - \"celgate: policy {} would deny this request ({why})\"",
                header_safe(&a.policy)
            )
        })
        .collect();
    if !warnings.is_empty() {
        added.push(HeaderOption::new(WARNING_HEADER, warnings.join(", ")));
    }
    if let Some(name) = &config.audit_header {
        let names: Vec<String> = audit
            .iter()
            .filter(|a| !a.enforced)
            .map(|a| header_safe(&a.policy))
            .collect();
        if !names.is_empty() {
            added.push(HeaderOption::new(name.clone(), names.join(", ")));
        }
    }
    match &mut d.response.outcome {
        Outcome::Ok(ok) => ok.response_headers_to_add.extend(added),
        Outcome::Denied(den) => den.headers.extend(added),
    }
    d.audit = audit;
}

/// A policy name as it may appear in a header value: visible ASCII, with
/// no quote, backslash or comma (which frame the values); anything else
/// becomes `?`. Names are the policies' own, never request data.
fn header_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '"' | '\\' | ',') {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The explicit denial sent when a request cannot be decided for a reason of
/// the server's own (a panic, an undecodable request, a deadline). `error`
/// is celgate's own fixed description, never text taken from the request:
/// it is logged, traced and written to the decision log as it is (cut to
/// [`SERVER_ERROR_MAX`] bytes); the client sees only `reason`.
#[cold]
pub fn failure_decision(config: &EngineConfig, reason: FailureReason, error: String) -> Decision {
    failure_decision_for(config, reason, None, EvalError::server(error))
}

/// The failure denial: `config`'s status (503 for [`FailureReason::Overload`]),
/// body and marker header. `policy` names the policy that failed to
/// evaluate; `error` says why, for the logs only.
#[cold]
pub fn failure_decision_for(
    config: &EngineConfig,
    reason: FailureReason,
    policy: Option<&str>,
    error: EvalError,
) -> Decision {
    let status = match reason {
        FailureReason::Overload => OVERLOAD_STATUS,
        _ => config.failure_status,
    };
    let mut headers = config.failure_headers(reason);
    if reason == FailureReason::Overload {
        headers.push(HeaderOption::new("retry-after", "1"));
    }
    Decision {
        response: CheckResponse {
            outcome: Outcome::Denied(DeniedResponse {
                status,
                headers,
                body: config.failure_body(reason),
            }),
            message: match (reason, policy) {
                (FailureReason::Evaluation, Some(p)) => format!("policy {p} failed to evaluate"),
                (FailureReason::Evaluation, None) => "policy evaluation failed".to_owned(),
                (FailureReason::Unreadable, _) => "the request cannot be read".to_owned(),
                (FailureReason::Timeout, _) => "decision deadline exceeded".to_owned(),
                (FailureReason::Internal, _) => "internal error".to_owned(),
                (FailureReason::Overload, _) => {
                    "celgate overloaded: too many pending decisions".to_owned()
                }
            },
            metadata: None,
        },
        policy: policy.map(str::to_owned),
        validation: None,
        error: Some(error),
        evaluated: 0,
        audit: Vec::new(),
    }
}

/// HTTP status of the overload denial: the server, not the client, is out of
/// capacity, and 503 is what Envoy's retry policies (`5xx`,
/// `retriable-status-codes`) and clients treat as "try again, maybe elsewhere".
pub const OVERLOAD_STATUS: i32 = 503;

/// The answer for one request of the HTTP authorization server
/// ([`evaluate_http`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpDecision {
    /// The deciding policy's `http.CheckResponse`, or an allow when no
    /// policy answered (what the output expression reads).
    pub response: httpauthz::CheckResponse,
    /// Set when celgate denies on its own (a `failurePolicy: Fail` policy
    /// could not be evaluated, or the server could not read or rewrite the
    /// request): the failure denial of [`EngineConfig`], which no output
    /// expression shapes.
    pub failure: Option<FailureReason>,
    pub policy: Option<String>,
    pub validation: Option<usize>,
    pub error: Option<EvalError>,
    pub evaluated: usize,
    /// As [`Decision::audit`]; a denial's status is the default one, 403.
    pub audit: Vec<AuditEntry>,
}

impl HttpDecision {
    /// Whether the request is allowed.
    pub fn allowed(&self) -> bool {
        self.failure.is_none() && self.response.is_allowed()
    }

    /// This decision in the terms of an Envoy-mode one, for what reads
    /// those (spans, the decision log, `--explain`): allowed, or denied
    /// with the `status` the client got.
    pub fn as_decision(&self, status: i32) -> Decision {
        let outcome = if self.allowed() {
            Outcome::Ok(crate::response::OkResponse::default())
        } else {
            Outcome::Denied(crate::response::DeniedResponse {
                status,
                ..Default::default()
            })
        };
        Decision {
            response: CheckResponse {
                outcome,
                message: String::new(),
                metadata: None,
            },
            policy: self.policy.clone(),
            validation: self.validation,
            error: self.error.clone(),
            evaluated: self.evaluated,
            audit: self.audit.clone(),
        }
    }

    /// The failure denial for `reason`, for a request the server could not
    /// decide; `error` is celgate's own description, for the logs only.
    pub fn failed(reason: FailureReason, policy: Option<&str>, error: EvalError) -> Self {
        HttpDecision {
            response: httpauthz::CheckResponse::default(),
            failure: Some(reason),
            policy: policy.map(str::to_owned),
            validation: None,
            error: Some(error),
            evaluated: 0,
            audit: Vec::new(),
        }
    }
}

/// The status of an HTTP-mode denial the output expression has not shaped.
pub const HTTP_DENIED_STATUS: i32 = 403;

/// Evaluates the HTTP-mode policies of `set` ([`PolicySet::http_policies`])
/// against `request`, with the semantics of Envoy mode: name order,
/// matchConditions, exceptions, lazy variables, the first non-null
/// validation answering, the first policy with an answer deciding, no
/// answer an allow; an error under `failurePolicy: Fail` is the failure
/// denial, under `Ignore` nothing; `validationActions` without `Deny`
/// record instead of enforcing. Stops at `deadline` as
/// [`evaluate_within`] does.
pub fn evaluate_http(
    set: &PolicySet,
    config: &EngineConfig,
    request: &httpauthz::CheckRequest,
    deadline: Option<std::time::Instant>,
    trace: bool,
) -> (HttpDecision, Vec<PolicyTrace>) {
    let meter = eval::Meter::new(config.cost_budget).with_deadline(deadline);
    let mut ctx = eval::Ctx::for_http(eval::Value::object(request.clone()), meter);
    let mut traces = Vec::new();
    let d = run_http_policies(set, config, &mut ctx, trace.then_some(&mut traces));
    (d, traces)
}

/// The HTTP-mode policies in turn (the loop of [`run_policies`] for
/// HTTP mode's answers).
fn run_http_policies<'r>(
    set: &'r PolicySet,
    config: &EngineConfig,
    ctx: &mut eval::Ctx<'r>,
    mut trace: Option<&mut Vec<PolicyTrace>>,
) -> HttpDecision {
    let mut records = Records::new();
    let mut evaluated = 0;
    let mut audit = Vec::new();
    let mut decided = None;
    for policy in &set.http_policies {
        evaluated += 1;
        let visited = visit::<httpauthz::CheckResponse>(
            policy,
            Mark::Candidate,
            config,
            ctx,
            &mut trace,
            &mut audit,
            &mut records,
        );
        // HTTP mode's meter is never a slice, so its evaluation never gives
        // up; were it to, the request is denied, never passed.
        let verdict = visited.unwrap_or_else(|| {
            Some(Verdict::Failed(EvalError::server(
                "an HTTP-mode evaluation gave up".to_owned(),
            )))
        });
        decided = verdict.map(|v| match v {
            Verdict::Decided(response, index) => HttpDecision {
                response: *response,
                failure: None,
                policy: Some(policy.name.clone()),
                validation: Some(index),
                error: None,
                evaluated,
                audit: Vec::new(),
            },
            Verdict::Failed(e) => {
                let mut d = HttpDecision::failed(FailureReason::Evaluation, Some(&policy.name), e);
                d.evaluated = evaluated;
                d
            }
        });
        if decided.is_some() {
            break;
        }
    }
    records.flush();
    let mut d = decided.unwrap_or_else(|| HttpDecision {
        response: httpauthz::CheckResponse::allowed(),
        failure: None,
        policy: None,
        validation: None,
        error: None,
        evaluated,
        audit: Vec::new(),
    });
    d.audit = audit;
    d
}

/// The headers the audit entries of a decision call for on the answer the
/// client gets: the warnings of `Warn` policies ([`WARNING_HEADER`]) and,
/// with [`EngineConfig::audit_header`], the policies that would have denied.
pub fn audit_headers(config: &EngineConfig, audit: &[AuditEntry]) -> Vec<HeaderOption> {
    let mut d = Decision::no_answer(0);
    with_audit(config, &mut d, audit.to_vec());
    match d.response.outcome {
        Outcome::Ok(ok) => ok.response_headers_to_add,
        Outcome::Denied(den) => den.headers,
    }
}

/// One policy's turn in a loop over the set: its evaluation (traced when
/// `trace` is there), [`settle`]d, and timed unless the index ruled it out.
/// `None` when the evaluation gave up ([`eval::Meter::yielded`]), before
/// anything of it was recorded.
fn visit<'r, A: Answer>(
    policy: &'r Policy,
    mark: Mark,
    config: &EngineConfig,
    ctx: &mut eval::Ctx<'r>,
    trace: &mut Option<&mut Vec<PolicyTrace>>,
    audit: &mut Vec<AuditEntry>,
    records: &mut Records<'r>,
) -> Option<Option<Verdict<A>>> {
    // Boxed: it is moved along with each policy, traced or not.
    let mut t = trace.as_ref().map(|_| {
        Box::new(PolicyTrace {
            policy: policy.name.clone(),
            ..Default::default()
        })
    });
    let ruled_out = mark == Mark::RuledOut;
    let result = eval_planned::<A>(policy, mark, ctx, t.as_deref_mut());
    if ctx.meter.yielded() {
        return None;
    }
    let (outcome, verdict) = settle(policy, result, config, audit, records, &mut t);
    if !ruled_out {
        records.time(policy, outcome);
    }
    if let (Some(trace), Some(t)) = (trace.as_mut(), t) {
        trace.push(*t);
    }
    Some(verdict)
}

/// What decides a request, from one policy: its answer (and the validation
/// that gave it), or the error that denies under `failurePolicy: Fail`.
enum Verdict<A> {
    Decided(Box<A>, usize),
    Failed(EvalError),
}

/// One policy's result as both modes read it: its outcome for the metrics
/// and the trace, the denial `validationActions` records in `audit`, the
/// log event of an error, and the verdict when the policy decides (an
/// enforced answer, or an enforced error under `Fail`).
fn settle<'r, A: Answer>(
    policy: &'r Policy,
    result: Result<PolicyResult<A>, EvalError>,
    config: &EngineConfig,
    audit: &mut Vec<AuditEntry>,
    records: &mut Records<'r>,
    t: &mut Option<Box<PolicyTrace>>,
) -> (PolicyOutcome, Option<Verdict<A>>) {
    let actions = policy.actions;
    let entry = |status, index, enforced| audit_entry(policy, status, Some(index), None, enforced);
    match result {
        Ok(PolicyResult::Decided(response, index)) if !actions.enforced() => {
            match response.denial_status() {
                None => {
                    set_outcome(t, "allow (not enforced)");
                    (PolicyOutcome::Allow, None)
                }
                Some(status) => {
                    set_outcome(t, "would deny (not enforced)");
                    audit.push(entry(status, index, false));
                    (PolicyOutcome::AuditDeny, None)
                }
            }
        }
        Ok(PolicyResult::Decided(response, index)) => {
            set_outcome(t, "decided");
            let outcome = match response.denial_status() {
                None => PolicyOutcome::Allow,
                Some(status) => {
                    if actions.audit {
                        audit.push(entry(status, index, true));
                    }
                    PolicyOutcome::Deny
                }
            };
            (outcome, Some(Verdict::Decided(response, index)))
        }
        Ok(PolicyResult::NoResult) => (PolicyOutcome::NoResult, None),
        Ok(PolicyResult::Skipped) => (PolicyOutcome::Skipped, None),
        Ok(PolicyResult::Exempted) => (PolicyOutcome::Exempted, None),
        Err(e) => settle_error(policy, e, config, audit, records, t),
    }
}

/// [`settle`] for a policy whose evaluation failed, out of line: the rare
/// case.
#[cold]
#[inline(never)]
fn settle_error<'r, A: Answer>(
    policy: &'r Policy,
    e: EvalError,
    config: &EngineConfig,
    audit: &mut Vec<AuditEntry>,
    records: &mut Records<'r>,
    t: &mut Option<Box<PolicyTrace>>,
) -> (PolicyOutcome, Option<Verdict<A>>) {
    let status = config.failure_status;
    match e {
        e if policy.failure_policy == FailurePolicy::Ignore => {
            records.events.push(Event::Ignored(policy, e));
            set_outcome(t, "error (ignored)");
            (PolicyOutcome::Error, None)
        }
        e if !policy.actions.enforced() => {
            set_outcome(t, "error (not enforced)");
            audit.push(audit_entry(policy, status, None, Some(&e), false));
            records.events.push(Event::NotEnforced(policy, e));
            (PolicyOutcome::AuditError, None)
        }
        e => {
            records.events.push(Event::Denied(policy, e.clone()));
            set_outcome(t, "error (denied)");
            if policy.actions.audit {
                audit.push(audit_entry(policy, status, None, Some(&e), true));
            }
            (PolicyOutcome::Error, Some(Verdict::Failed(e)))
        }
    }
}

/// What `validationActions: [Audit]` (or a policy not enforced) records of
/// `policy`'s denial: a validation's, or its error's.
fn audit_entry(
    policy: &Policy,
    status: i32,
    validation: Option<usize>,
    error: Option<&EvalError>,
    enforced: bool,
) -> AuditEntry {
    AuditEntry {
        policy: policy.name.clone(),
        status,
        validation,
        error: error.map(EvalError::summary),
        enforced,
        warned: policy.actions.warn,
    }
}

fn set_outcome(t: &mut Option<Box<PolicyTrace>>, outcome: &str) {
    if let Some(t) = t {
        t.outcome = outcome.to_owned();
    }
}

/// An evaluation error with the expression it came from.
///
/// Two renderings: `Display` is the summary the server logs, traces and
/// writes to the decision log — the field, the [`ErrorKind`] and, for a
/// function error, the function's name (`spec.validations[1].expression:
/// no_such_key`) — with nothing taken from the request. [`EvalError::detailed`]
/// adds the CEL message, which may quote request values (`No such key:
/// <the key>`), for `celgate check --explain` and `celgate test` on the
/// user's own machine.
///
/// A pointer to its [`EvalErrorData`] (read through `Deref`: `e.kind`), so
/// that the results a policy's evaluation passes along are small.
#[derive(Clone, PartialEq, thiserror::Error)]
#[error("{}", self.summary())]
pub struct EvalError(Box<EvalErrorData>);

/// What an [`EvalError`] says.
#[derive(Clone, PartialEq)]
pub struct EvalErrorData {
    /// The expression, e.g. `spec.validations[1].expression`; empty for an
    /// error of the server's own ([`ErrorKind::Server`]).
    pub field: String,
    pub kind: ErrorKind,
    /// The function that failed, for [`ErrorKind::FunctionError`] and
    /// [`ErrorKind::McpParse`] (a name in the policy, never request text).
    pub function: Option<String>,
    /// For [`ErrorKind::McpParse`], why the body was refused
    /// (`partial_body`, `invalid_json`, ...: [`crate::mcp::refusal_reason`]).
    pub reason: Option<&'static str>,
    /// The full message; may quote request data.
    message: String,
}

crate::cel::boxed_error!(EvalError, EvalErrorData);

/// Without the message (its length only), so that `{:?}` of a decision is
/// as safe to log as its `Display`.
impl std::fmt::Debug for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("EvalError");
        d.field("field", &self.field).field("kind", &self.kind);
        if let Some(function) = &self.function {
            d.field("function", function);
        }
        if let Some(reason) = self.reason {
            d.field("reason", &reason);
        }
        if self.kind == ErrorKind::Server {
            d.field("message", &self.message);
        } else {
            d.field("message_bytes", &self.message.len());
        }
        d.finish()
    }
}

/// The most bytes of a server error's own description that are kept.
pub const SERVER_ERROR_MAX: usize = 200;

impl EvalError {
    /// An error of celgate's evaluator evaluating `expr`.
    #[cold]
    pub fn eval(expr: &Expression, e: &eval::Error) -> EvalError {
        let function = e.function.as_deref();
        let kind = match (e.kind, function) {
            (ErrorKind::FunctionError, Some("mcp.Parse")) => ErrorKind::McpParse,
            (k, _) => k,
        };
        EvalErrorData {
            field: expr.field.clone(),
            kind,
            function: function.map(|f| truncate(f, 64).to_owned()),
            reason: (kind == ErrorKind::McpParse).then(|| crate::mcp::refusal_reason(&e.message)),
            message: match function {
                Some(f) if !e.message.starts_with(f) => format!("{f}: {}", e.message),
                _ => e.message.clone(),
            },
        }
        .into()
    }

    /// The error of a condition of PolicyException `name`: its field is
    /// the exception's (`PolicyException name: spec.matchConditions[0].expression`),
    /// as it is logged, traced and written to the decision log.
    pub fn in_exception(mut self, name: &str) -> EvalError {
        self.field = format!("PolicyException {name}: {}", self.field);
        self
    }

    /// An expression that returned a value of the wrong type.
    #[cold]
    pub fn result_type(expr: &Expression, message: String) -> EvalError {
        EvalErrorData {
            field: expr.field.clone(),
            kind: ErrorKind::ResultType,
            function: None,
            reason: None,
            message,
        }
        .into()
    }

    /// A request the server could not decide for a reason of its own.
    /// `description` is celgate's own text, never request data.
    #[cold]
    pub fn server(description: String) -> EvalError {
        EvalErrorData {
            field: String::new(),
            kind: ErrorKind::Server,
            function: None,
            reason: None,
            message: truncate(&description, SERVER_ERROR_MAX).to_owned(),
        }
        .into()
    }

    /// The full message, which may quote request data: for the user's own
    /// tools only (`check --explain`, `test`), never for the server's logs.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// `field: message`, as `celgate check --explain` shows it.
    pub fn detailed(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }

    /// `field: kind` (and the function), safe to log.
    pub fn summary(&self) -> String {
        let mut out = if self.field.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.field)
        };
        out.push_str(self.kind.as_str());
        match (&self.function, self.kind) {
            (Some(f), ErrorKind::FunctionError) => {
                out.push_str(" in ");
                out.push_str(f);
            }
            (_, ErrorKind::McpParse) => {
                if let Some(r) = self.reason {
                    out.push_str(" (");
                    out.push_str(r);
                    out.push(')');
                }
            }
            (_, ErrorKind::Server) => {
                out.push_str(": ");
                out.push_str(&self.message);
            }
            _ => {}
        }
        out
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What one policy said, short of an error. The answer is boxed: most
/// policies of a request say nothing, and what they return is moved
/// through several calls.
enum PolicyResult<A> {
    Decided(Box<A>, usize),
    NoResult,
    Skipped,
    Exempted,
}

/// What a validation answers in one evaluation mode: Envoy mode's
/// `CheckResponse`, HTTP mode's `http.CheckResponse`.
trait Answer: Sized {
    /// The value as this mode's response; otherwise what a validation must
    /// return instead.
    fn take(v: eval::Value<'_>) -> Result<Self, String>;
    /// For traces.
    fn json(&self) -> serde_json::Value;
    /// The HTTP status of a denial; `None` for an allow.
    fn denial_status(&self) -> Option<i32>;
}

impl Answer for CheckResponse {
    fn take(v: eval::Value<'_>) -> Result<Self, String> {
        eval::lib::envoy::into_check_response(v).map_err(|other| {
            format!(
                "a validation must return envoy CheckResponse (….Response()) or null, not {}",
                other.type_name()
            )
        })
    }
    fn json(&self) -> serde_json::Value {
        crate::decision::response_json(self)
    }
    fn denial_status(&self) -> Option<i32> {
        match &self.outcome {
            Outcome::Ok(_) => None,
            Outcome::Denied(den) => Some(den.status),
        }
    }
}

impl Answer for httpauthz::CheckResponse {
    fn take(v: eval::Value<'_>) -> Result<Self, String> {
        httpauthz::into_check_response(v).map_err(|other| {
            format!(
                "a validation must return http.CheckResponse (….Response()) or null, not {}",
                other.type_name()
            )
        })
    }
    fn json(&self) -> serde_json::Value {
        eval::Object::to_json(self).unwrap_or_default()
    }
    fn denial_status(&self) -> Option<i32> {
        (!self.is_allowed()).then_some(HTTP_DENIED_STATUS)
    }
}

/// A policy's evaluation on celgate's evaluator, in Kyverno's order:
/// matchConditions, then exceptions, then validations, reading variables
/// lazily from `ctx`. `ruled_out`: the selection index found a
/// matchCondition false, so the policy is skipped unevaluated.
fn eval_planned<'r, A: Answer>(
    policy: &'r Policy,
    mark: Mark,
    ctx: &mut eval::Ctx<'r>,
    mut trace: Option<&mut PolicyTrace>,
) -> Result<PolicyResult<A>, EvalError> {
    if mark == Mark::RuledOut {
        if let Some(t) = trace {
            t.outcome = "skipped by index".into();
        }
        return Ok(PolicyResult::Skipped);
    }
    // The policy's variables, computed at most once for its own expressions
    // and its exceptions together (each exception is planned with the
    // policy's slots).
    ctx.enter_policy(&policy.plans.variables);
    let mut first_error = None;
    // A condition the index found true for this request is not evaluated
    // again (never when traced: the walk then proves nothing).
    let proven = match mark {
        Mark::Proven(j) => Some(j as usize),
        _ => None,
    };
    for (j, (m, plan)) in policy
        .match_conditions
        .iter()
        .zip(&policy.plans.match_conditions)
        .enumerate()
    {
        if proven == Some(j) {
            continue;
        }
        let r = planned_bool(ctx, &m.expr, plan);
        if let Some(t) = trace.as_deref_mut() {
            t.match_conditions.push(ExprTrace {
                name: m.name.clone(),
                result: match &r {
                    Ok(b) => serde_json::Value::Bool(*b),
                    Err(e) => format!("error: {}", e.message()).into(),
                },
                evaluations: None,
            });
        }
        match r {
            Ok(true) => {}
            Ok(false) => {
                if let Some(t) = trace.as_deref_mut() {
                    t.outcome = "skipped".into();
                }
                return Ok(PolicyResult::Skipped);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if let Some(r) = eval_exceptions(policy, ctx, trace.as_deref_mut()) {
        return r;
    }

    let mut result = Ok(None);
    for (i, (v, plan)) in policy
        .validations
        .iter()
        .zip(&policy.plans.validations)
        .enumerate()
    {
        let r = plan
            .eval(ctx)
            .map_err(|e| EvalError::eval(v, &e))
            .and_then(|val| match val {
                eval::Value::Null => Ok(None),
                other => A::take(other)
                    .map(Some)
                    .map_err(|m| EvalError::result_type(v, m)),
            });
        if let Some(t) = trace.as_deref_mut() {
            t.validations.push(ExprTrace {
                name: format!("validations[{i}]"),
                result: match &r {
                    Ok(None) => serde_json::Value::Null,
                    Ok(Some(resp)) => resp.json(),
                    Err(e) => format!("error: {}", e.message()).into(),
                },
                evaluations: None,
            });
        }
        match r {
            Ok(Some(resp)) => {
                result = Ok(Some((resp, i)));
                break;
            }
            Ok(None) => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if let Some(t) = trace {
        for (slot, runs, r) in ctx.computed_variables() {
            t.variables.push(ExprTrace {
                name: policy.variables[slot].name.clone(),
                result: match r {
                    Ok(v) => eval::value::to_json(&v)
                        .unwrap_or_else(|| format!("<{}>", v.type_name()).into()),
                    Err(e) => format!("error: {e}").into(),
                },
                evaluations: Some(runs),
            });
        }
        if t.outcome.is_empty() {
            t.outcome = "no result".into();
        }
    }
    Ok(match result? {
        Some((response, index)) => PolicyResult::Decided(Box::new(response), index),
        None => PolicyResult::NoResult,
    })
}

/// A policy's exceptions, in name order, as Kyverno applies them:
/// `Some(Ok(Exempted))` when one holds, `Some(Err(..))` when one fails,
/// `None` when none applies and the policy is evaluated.
///
/// One exception's conditions combine as a policy's `matchConditions` (as
/// in Kubernetes and cel-go): any condition false → it does not apply,
/// whatever error another condition had; else an error → the error; else
/// it applies. An error is the policy's, decided by its `failurePolicy`,
/// whichever exception it came from: every exception is evaluated, and a
/// failing one wins over one that holds, so that a broken exception is
/// never hidden by another (nor the answer by their order).
fn eval_exceptions<'r, A>(
    policy: &'r Policy,
    ctx: &mut eval::Ctx<'r>,
    mut trace: Option<&mut PolicyTrace>,
) -> Option<Result<PolicyResult<A>, EvalError>> {
    let mut exempted = None;
    for ex in &policy.exceptions {
        let exception = &ex.exception;
        let mut error = None;
        let mut holds = true;
        for (m, plan) in exception.match_conditions.iter().zip(&ex.plans) {
            match planned_bool(ctx, &m.expr, plan) {
                Ok(true) => {}
                Ok(false) => {
                    holds = false;
                    break;
                }
                Err(_) if ctx.meter.yielded() => {
                    // The attempt is abandoned (see `evaluate_inline`).
                    return Some(Ok(PolicyResult::NoResult));
                }
                Err(e) => {
                    // A later false still wins: go on.
                    error.get_or_insert(e);
                }
            }
        }
        if !holds {
            continue;
        }
        if let Some(e) = error {
            if let Some(t) = trace.as_deref_mut() {
                t.exception = Some(exception.name.clone());
            }
            return Some(Err(e.in_exception(&exception.name)));
        }
        exempted.get_or_insert(&exception.name);
    }
    let name = exempted?;
    if let Some(t) = trace {
        t.outcome = "exempted".into();
        t.exception = Some(name.clone());
    }
    Some(Ok(PolicyResult::Exempted))
}

fn planned_bool<'r>(
    ctx: &mut eval::Ctx<'r>,
    expr: &Expression,
    plan: &'r eval::Program,
) -> Result<bool, EvalError> {
    match plan.eval(ctx).map_err(|e| EvalError::eval(expr, &e))? {
        eval::Value::Bool(b) => Ok(b),
        other => Err(EvalError::result_type(
            expr,
            format!("must return bool, not {}", other.type_name()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "SUPERSECRET-APIKEY-123";

    fn decide(validation: &str) -> Decision {
        let yaml = format!(
            "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: {{ name: p }}\nspec:\n  evaluation: {{ mode: Envoy }}\n  validations:\n  - expression: 'true ? null : null'\n  - expression: '{validation}'\n"
        );
        let docs = crate::policy::load::parse_documents("p.yaml".as_ref(), &yaml).unwrap();
        let set = PolicySet::compile(docs).unwrap();
        let request = crate::request_json::from_value(&serde_json::json!({"attributes": {
            "request": {"http": {"path": "/", "headers": {"x-api-key": SECRET},
                "body": format!(r#"{{"jsonrpc":"2.0","id":{{"{SECRET}":1}},"method":"ping"}}"#)}}}}))
        .unwrap();
        evaluate(&set, &EngineConfig::default(), &request)
    }

    #[test]
    fn errors_summarise_as_field_and_kind_and_keep_the_detail_apart() {
        let key = r#"object.attributes.request.http.headers["x-api-key"]"#;
        let v1 = "spec.validations[1].expression";
        for (expr, summary, detail_has_secret) in [
            (
                format!(r#"{{"a": 1}}[{key}] == 1 ? null : null"#),
                format!("{v1}: no_such_key"),
                true,
            ),
            (
                // dyn(): the checker refuses what it can see.
                format!("dyn({key}) + 1 == 1 ? null : null"),
                format!("{v1}: no_such_overload"),
                false,
            ),
            (
                format!("dyn({key}) < 1 ? null : null"),
                format!("{v1}: no_such_overload"),
                false,
            ),
            (
                format!("int({key}) == 1 ? null : null"),
                format!("{v1}: function_error in int"),
                true,
            ),
            (
                "1 / (size(object.attributes.request.http.path) - 1) == 1 ? null : null".into(),
                format!("{v1}: division_by_zero"),
                false,
            ),
            (
                "[1][2] == 1 ? null : null".into(),
                format!("{v1}: index_out_of_bounds"),
                false,
            ),
            (format!("dyn({key})"), format!("{v1}: result_type"), false),
            (
                "mcp.Parse(object.attributes.request.http.body).Method == \"x\" ? null : null"
                    .into(),
                format!("{v1}: mcp_parse (invalid_id)"),
                false,
            ),
        ] {
            let d = decide(&expr);
            assert!(!d.allowed(), "{expr}");
            let e = d.error.clone().expect(&expr);
            assert!(!format!("{d:?}").contains(SECRET), "{d:?}");
            assert_eq!(e.to_string(), summary, "{expr}");
            assert_eq!(e.summary(), summary, "{expr}");
            assert!(!format!("{e}").contains(SECRET));
            assert!(e.detailed().starts_with(v1), "{}", e.detailed());
            assert_eq!(
                e.detailed().contains(SECRET),
                detail_has_secret,
                "{}",
                e.detailed()
            );
        }
    }

    fn set_of(policies: &[(&str, &str, &str)]) -> PolicySet {
        let yaml: Vec<String> = policies
            .iter()
            .map(|(name, failure, validation)| {
                format!(
                    "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\nmetadata: {{ name: {name} }}\nspec:\n  evaluation: {{ mode: Envoy }}\n  failurePolicy: {failure}\n  validations:\n  - expression: '{validation}'\n"
                )
            })
            .collect();
        let docs =
            crate::policy::load::parse_documents("p.yaml".as_ref(), &yaml.join("---\n")).unwrap();
        PolicySet::compile(docs).unwrap()
    }

    #[test]
    fn an_inline_attempt_decides_what_the_full_evaluation_decides_or_gives_up() {
        let request = crate::request_json::from_value(&serde_json::json!({"attributes": {
            "request": {"http": {"path": "/", "headers": {"x-user": "alice"}}}}}))
        .unwrap();
        let config = EngineConfig::default();
        // A walk of 5,000 steps, under `Ignore`: past a 2,000-unit slice the
        // attempt must give up, not pass for an ignored error (which would
        // let the allow of the next policy through).
        let set = set_of(&[
            (
                "a-walk",
                "Ignore",
                "lists.range(5000).all(i, i >= 0) ? envoy.Denied(403).Response() : null",
            ),
            ("b-allow", "Fail", "envoy.Allowed().Response()"),
        ]);
        assert!(evaluate_inline(&set, &config, &request, 2_000, true).is_none());
        let full = evaluate(&set, &config, &request);
        assert_eq!(full.http_status(), 403);
        assert_eq!(full.policy.as_deref(), Some("a-walk"));
        // With a slice at least the budget, the attempt is the full evaluation.
        let (d, _) = evaluate_inline(&set, &config, &request, config.cost_budget, false).unwrap();
        assert_eq!(d.http_status(), 403);
        // Within the slice: the same decision, error and trace as in full.
        let set = set_of(&[
            (
                "a-header",
                "Fail",
                r#"object.attributes.request.http.headers["x-user"] == "bob" ? envoy.Denied(401).Response() : null"#,
            ),
            (
                "b-broken",
                "Fail",
                r#"int(object.attributes.request.http.headers["x-user"]) == 1 ? null : null"#,
            ),
        ]);
        let (inline, trace) = evaluate_inline(&set, &config, &request, 2_000, true).unwrap();
        let (full, full_trace) = evaluate_traced(&set, &config, &request);
        assert_eq!(format!("{inline:?}"), format!("{full:?}"));
        assert_eq!(
            serde_json::to_value(&trace).unwrap(),
            serde_json::to_value(&full_trace).unwrap()
        );
        assert_eq!(
            inline.error.map(|e| e.summary()),
            Some("spec.validations[0].expression: function_error in int".into())
        );
    }

    #[test]
    fn an_inline_attempt_never_fetches_a_key_set() {
        let request = crate::request_json::from_value(&serde_json::json!({"attributes": {
            "request": {"http": {"path": "/"}}}}))
        .unwrap();
        let set = set_of(&[(
            "jwks",
            "Fail",
            r#"jwks.Fetch("https://engine-inline-unfetched.test/jwks.json") == null ? null : null"#,
        )]);
        assert!(evaluate_inline(&set, &EngineConfig::default(), &request, 2_000, false).is_none());
    }

    #[test]
    fn policy_names_in_headers_cannot_break_the_header() {
        assert_eq!(header_safe("require-api-key.v2"), "require-api-key.v2");
        assert_eq!(header_safe("a\"b,c\\d\r\ne f"), "a?b?c?d??e?f");
    }

    #[test]
    fn server_errors_keep_their_own_description_cut_short() {
        let d = failure_decision(
            &EngineConfig::default(),
            FailureReason::Internal,
            "x".repeat(1000),
        );
        let e = d.error.unwrap();
        assert_eq!(e.kind, ErrorKind::Server);
        assert!(e.summary().starts_with("server: xxx"));
        assert!(e.summary().len() <= SERVER_ERROR_MAX + 10);
    }
}
