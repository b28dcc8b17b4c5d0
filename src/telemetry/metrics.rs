//! Prometheus metrics: lock-free counters and histograms on the request
//! path, rendered in the text exposition format at `GET /metrics`.
//!
//! Per-policy series live in a [`PolicyMetrics`] that the compiled policy
//! holds (looked up by name once, when a set is compiled), so recording is a
//! few atomic adds with no map lookup or lock. The names of kyverno-authz are
//! kept where the meaning is the same, so dashboards carry over.
//!
//! The series written per request are kept per thread ([`PerThread`]): each
//! thread adds to counters on cache lines of its own, and `/metrics` sums
//! them. Shared counters would have every request on one core take the
//! lines the other cores just wrote.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, OnceLock, RwLock};
use std::time::Duration;

/// How many threads record into counters of their own; threads beyond
/// that share slots (still exact, only no longer apart).
const SLOTS: usize = 16;

/// This thread's slot: threads take them in turn, the first time they
/// record.
#[inline]
fn slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Relaxed) % SLOTS;
    }
    SLOT.with(|s| *s)
}

/// A value on cache lines of its own (128 bytes: adjacent-line prefetch
/// pairs lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Lines<T>(T);

/// Counters kept per thread: a thread records into its own copy (allocated
/// the first time it records), a reader sums the copies. A series nobody
/// records into costs its sixteen empty slots (16 bytes each).
#[derive(Debug)]
pub struct PerThread<T> {
    slots: [OnceLock<Box<Lines<T>>>; SLOTS],
}

impl<T> Default for PerThread<T> {
    fn default() -> Self {
        PerThread {
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl<T: Default> PerThread<T> {
    /// The calling thread's copy.
    #[inline]
    pub fn mine(&self) -> &T {
        &self.slots[slot()].get_or_init(Box::default).0
    }
}

impl<T> PerThread<T> {
    /// Every copy recorded into so far.
    pub fn each(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(OnceLock::get).map(|l| &l.0)
    }

    /// The sum over every copy of what `read` reads.
    pub fn sum(&self, read: impl Fn(&T) -> &AtomicU64) -> u64 {
        self.each().map(|c| read(c).load(Relaxed)).sum()
    }
}

/// Upper bounds (seconds) of the latency buckets: 5 µs to 1 s.
pub const BUCKETS: [f64; 17] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const BUCKET_NANOS: [u64; 17] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last slot is +Inf.
    counts: [AtomicU64; 18],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NANOS.iter().position(|&b| n <= b).unwrap_or(17);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(n, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// One histogram holding what all of `parts` observed.
    fn merged<'a>(parts: impl Iterator<Item = &'a Histogram>) -> Histogram {
        let total = Histogram::default();
        for h in parts {
            for (t, c) in total.counts.iter().zip(&h.counts) {
                t.fetch_add(c.load(Relaxed), Relaxed);
            }
            total
                .sum_nanos
                .fetch_add(h.sum_nanos.load(Relaxed), Relaxed);
        }
        total
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[17].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// What one policy did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyOutcome {
    /// Returned an allow.
    Allow,
    /// Returned a denial.
    Deny,
    /// Every validation returned null.
    NoResult,
    /// A matchCondition was false.
    Skipped,
    /// A PolicyException applied.
    Exempted,
    /// Evaluation failed (denied under Fail, ignored under Ignore).
    Error,
    /// A policy that is not enforced (`validationActions` without `Deny`)
    /// returned a denial: recorded, not enforced.
    AuditDeny,
    /// A policy that is not enforced failed to evaluate under
    /// `failurePolicy: Fail`: the failure denial it would have caused is
    /// recorded, not enforced.
    AuditError,
}

impl PolicyOutcome {
    pub const ALL: [PolicyOutcome; 8] = [
        PolicyOutcome::Allow,
        PolicyOutcome::Deny,
        PolicyOutcome::NoResult,
        PolicyOutcome::Skipped,
        PolicyOutcome::Exempted,
        PolicyOutcome::Error,
        PolicyOutcome::AuditDeny,
        PolicyOutcome::AuditError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyOutcome::Allow => "allow",
            PolicyOutcome::Deny => "deny",
            PolicyOutcome::NoResult => "none",
            PolicyOutcome::Skipped => "skipped",
            PolicyOutcome::Exempted => "exempted",
            PolicyOutcome::Error => "error",
            PolicyOutcome::AuditDeny => "audit_deny",
            PolicyOutcome::AuditError => "audit_error",
        }
    }
}

/// Which server decided: the `mode` label of `authz_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Envoy's ext_authz (gRPC).
    Envoy = 0,
    /// The HTTP authorization server (HTTP-mode policies).
    Http = 1,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Envoy, Mode::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Envoy => "envoy",
            Mode::Http => "http",
        }
    }
}

/// Series of one policy.
#[derive(Debug, Default)]
pub struct PolicyMetrics {
    counts: PerThread<PolicyCounts>,
}

/// One thread's counts of one policy.
#[derive(Debug, Default)]
struct PolicyCounts {
    evaluations: [AtomicU64; PolicyOutcome::ALL.len()],
    duration: Histogram,
    /// Requests this policy decided, by [`Mode`]: allowed, denied, denied
    /// on error.
    decided: [[AtomicU64; 3]; 2],
}

impl PolicyMetrics {
    #[inline]
    pub fn evaluated(&self, outcome: PolicyOutcome, took: Duration) {
        let c = self.counts.mine();
        c.evaluations[outcome as usize].fetch_add(1, Relaxed);
        c.duration.observe(took);
    }

    pub fn evaluations(&self, outcome: PolicyOutcome) -> u64 {
        self.counts.sum(|c| &c.evaluations[outcome as usize])
    }

    /// Requests decided by this policy in `mode`: allowed (0), denied (1),
    /// denied on error (2).
    fn decided(&self, mode: usize, how: usize) -> u64 {
        self.counts.sum(|c| &c.decided[mode][how])
    }

    fn count_decided(&self, mode: usize, how: usize) {
        self.counts.mine().decided[mode][how].fetch_add(1, Relaxed);
    }

    fn duration(&self) -> Histogram {
        Histogram::merged(self.counts.each().map(|c| &c.duration))
    }
}

/// How a request was decided, for `authz_decisions_total`.
#[derive(Debug, Clone, Copy)]
pub enum DecidedBy<'a> {
    Policy {
        policy: &'a PolicyMetrics,
        allowed: bool,
    },
    /// A failurePolicy: Fail policy could not be evaluated.
    Error(&'a PolicyMetrics),
    /// No policy answered: allowed.
    Default,
    /// Evaluation panicked: denied.
    Internal,
    /// No decision within `--decision-timeout-ms`: the failure denial.
    Timeout,
    /// The decision queue was full (`--max-pending-decisions`): the overload denial.
    Overload,
    /// The request could not be read (malformed, too large, not UTF-8
    /// where it must be): denied before any policy ran.
    Unreadable,
    /// The HTTP server's input or output expression failed: the failure
    /// denial (`source="expression"`, HTTP mode only).
    Expression,
}

/// The protocol a request was asked over: Envoy's gRPC `Check`, Envoy's
/// HTTP authorization service (`/envoy/...` on `--authz-http-addr`), or a
/// forward-auth subrequest (`/forward-auth`: nginx, Caddy, Traefik).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    EnvoyHttp,
    ForwardAuth,
    /// Kyverno's HTTP authorization protocol (HTTP-mode policies).
    KyvernoHttp,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Grpc,
        Protocol::EnvoyHttp,
        Protocol::ForwardAuth,
        Protocol::KyvernoHttp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::EnvoyHttp => "envoy_http",
            Protocol::ForwardAuth => "forward_auth",
            Protocol::KyvernoHttp => "kyverno_http",
        }
    }
}

/// Every series celgate exports.
#[derive(Debug, Default)]
pub struct Metrics {
    enabled: AtomicBool,
    /// The series every request writes.
    requests: PerThread<RequestCounts>,
    policies: RwLock<BTreeMap<String, Arc<PolicyMetrics>>>,
    /// The `mode="http"` series are shown once the HTTP authorization
    /// server is on ([`Metrics::set_http_enabled`]) or has decided.
    http_on: AtomicBool,
    /// Kubernetes objects by state (ok, broken, ignored), once `--kube` has
    /// listed them.
    kube_objects: [AtomicU64; 3],
    kube_on: AtomicBool,
    /// The shadow policy set's comparisons (rendered once a shadow set is
    /// configured).
    shadow: ShadowMetrics,
}

/// One thread's counts of the series every request writes.
#[derive(Debug, Default)]
struct RequestCounts {
    /// Answers by protocol, allowed then denied.
    answers: [[AtomicU64; 2]; 4],
    /// Each by [`Mode`].
    default_allow: [AtomicU64; 2],
    internal_errors: [AtomicU64; 2],
    timeouts: [AtomicU64; 2],
    overloads: [AtomicU64; 2],
    unreadable: [AtomicU64; 2],
    expression_errors: [AtomicU64; 2],
    decision_duration: Histogram,
}

/// What happened to one request handed to the shadow policy set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ShadowResult {
    /// The shadow set decided as the live set did (allowed, or denied with
    /// the same status).
    Agree,
    /// The shadow set decided otherwise ([`ShadowKind`]).
    Disagree,
    /// The shadow set could not decide: a shadow policy with failurePolicy
    /// Fail failed to evaluate, or evaluation panicked. Not compared.
    Error,
    /// The shadow queue was full: not evaluated.
    Dropped,
    /// Not decided within `--shadow-timeout-ms` (queueing included): not
    /// compared.
    Timeout,
}

impl ShadowResult {
    pub const ALL: [ShadowResult; 5] = [
        ShadowResult::Agree,
        ShadowResult::Disagree,
        ShadowResult::Error,
        ShadowResult::Dropped,
        ShadowResult::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ShadowResult::Agree => "agree",
            ShadowResult::Disagree => "disagree",
            ShadowResult::Error => "error",
            ShadowResult::Dropped => "dropped",
            ShadowResult::Timeout => "timeout",
        }
    }
}

/// How a shadow decision differs from the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum ShadowKind {
    /// The live set allowed; the shadow set would deny.
    #[serde(rename = "allow_deny")]
    AllowDeny,
    /// The live set denied; the shadow set would allow.
    #[serde(rename = "deny_allow")]
    DenyAllow,
    /// Both deny, with different HTTP statuses.
    #[serde(rename = "status")]
    Status,
}

impl ShadowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowKind::AllowDeny => "allow_deny",
            ShadowKind::DenyAllow => "deny_allow",
            ShadowKind::Status => "status",
        }
    }
}

/// One `celgate_shadow_disagreements_total` series.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowDisagreement {
    /// The live set's deciding policy; empty when no policy answered (the
    /// default allow).
    pub live_policy: String,
    /// The shadow set's deciding policy; empty likewise.
    pub shadow_policy: String,
    pub kind: ShadowKind,
    pub count: u64,
}

#[derive(Debug, Default)]
struct ShadowMetrics {
    on: AtomicBool,
    results: [AtomicU64; 5],
    /// (live policy, shadow policy, kind) → count. Written by the shadow
    /// threads only, never on the request path.
    disagreements: std::sync::Mutex<BTreeMap<(String, String, ShadowKind), u64>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    enabled: AtomicBool::new(true),
    ..Default::default()
});

pub fn global() -> &'static Metrics {
    &METRICS
}

/// Every policy's series, by name: each policy ever compiled in this process,
/// including those a reload removed (their counters are kept, as Prometheus
/// expects of counters).
pub fn policies() -> Vec<(String, Arc<PolicyMetrics>)> {
    global()
        .policies
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The series of the policy `name`, created on first use. Called when a set
/// is compiled, never per request.
pub fn policy(name: &str) -> Arc<PolicyMetrics> {
    let m = global();
    if let Some(p) = m
        .policies
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
    {
        return p.clone();
    }
    m.policies
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.to_owned())
        .or_default()
        .clone()
}

/// Forgets the series of the policy `name` if nothing holds them any more
/// and they never counted anything: a shadow policy's name, registered when
/// its set compiled, must not show up among the live policies' series.
pub fn release_unused(name: &str) {
    let m = global();
    let mut map = m.policies.write().unwrap_or_else(|e| e.into_inner());
    // Under the write lock nobody can take another handle meanwhile.
    if map
        .get(name)
        .is_some_and(|p| Arc::strong_count(p) == 1 && p.counts.each().next().is_none())
    {
        map.remove(name);
    }
}

impl Metrics {
    /// Whether the request path records (on unless `--metrics=false`).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Relaxed);
    }

    /// How many Kubernetes objects load (`ok`), do not (`broken`: their last
    /// good version, if any, serves) or are ignored (PolicyExceptions
    /// outside `--exception-namespaces`).
    pub fn set_kube_objects(&self, ok: usize, broken: usize, ignored: usize) {
        for (slot, v) in self.kube_objects.iter().zip([ok, broken, ignored]) {
            slot.store(v as u64, Relaxed);
        }
        self.kube_on.store(true, Relaxed);
    }

    fn render_kube(&self, out: &mut String) {
        if !self.kube_on.load(Relaxed) {
            return;
        }
        out.push_str("# HELP celgate_kube_objects Kubernetes objects by state: ok (serving), broken (does not load; its last good version serves, if any), ignored (a PolicyException outside --exception-namespaces).\n");
        out.push_str("# TYPE celgate_kube_objects gauge\n");
        for (state, v) in ["ok", "broken", "ignored"].iter().zip(&self.kube_objects) {
            let _ = writeln!(
                out,
                "celgate_kube_objects{{state=\"{state}\"}} {}",
                v.load(Relaxed)
            );
        }
    }

    /// Shows the shadow series on `/metrics` (a shadow set is configured).
    pub fn set_shadow_enabled(&self, on: bool) {
        self.shadow.on.store(on, Relaxed);
    }

    /// Counts one request handed to the shadow set.
    pub fn shadow_result(&self, result: ShadowResult) {
        self.shadow.results[result as usize].fetch_add(1, Relaxed);
    }

    /// Counts one disagreement between the live and the shadow decision, by
    /// deciding policies (`""`: no policy answered) and kind. Also counts
    /// [`ShadowResult::Disagree`].
    pub fn shadow_disagreement(&self, live_policy: &str, shadow_policy: &str, kind: ShadowKind) {
        self.shadow_result(ShadowResult::Disagree);
        *self
            .shadow
            .disagreements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((live_policy.to_owned(), shadow_policy.to_owned(), kind))
            .or_default() += 1;
    }

    /// Requests handed to the shadow set so far, by result.
    pub fn shadow_results(&self, result: ShadowResult) -> u64 {
        self.shadow.results[result as usize].load(Relaxed)
    }

    /// Every disagreement series counted since start, ordered by live
    /// policy, shadow policy and kind (what `/metrics` shows as
    /// `celgate_shadow_disagreements_total`).
    pub fn shadow_disagreements_by_policy(&self) -> Vec<ShadowDisagreement> {
        self.shadow
            .disagreements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((live, shadow, kind), n)| ShadowDisagreement {
                live_policy: live.clone(),
                shadow_policy: shadow.clone(),
                kind: *kind,
                count: *n,
            })
            .collect()
    }

    fn render_shadow(&self, out: &mut String) {
        if !self.shadow.on.load(Relaxed) {
            return;
        }
        out.push_str("# HELP celgate_shadow_evaluations_total Requests handed to the shadow policy set, by result: agree, disagree, error (the shadow set could not decide), dropped (shadow queue full), timeout (past --shadow-timeout-ms).\n");
        out.push_str("# TYPE celgate_shadow_evaluations_total counter\n");
        for r in ShadowResult::ALL {
            let _ = writeln!(
                out,
                "celgate_shadow_evaluations_total{{result=\"{}\"}} {}",
                r.as_str(),
                self.shadow_results(r)
            );
        }
        out.push_str("# HELP celgate_shadow_disagreements_total Requests the shadow policy set decided otherwise than the live set, by deciding policy of each (empty: no policy answered) and kind: allow_deny (live allowed, shadow denies), deny_allow (live denied, shadow allows), status (both deny, with different statuses).\n");
        out.push_str("# TYPE celgate_shadow_disagreements_total counter\n");
        for d in self.shadow_disagreements_by_policy() {
            let _ = writeln!(
                out,
                "celgate_shadow_disagreements_total{{live_policy=\"{}\",shadow_policy=\"{}\",kind=\"{}\"}} {}",
                escape(&d.live_policy),
                escape(&d.shadow_policy),
                d.kind.as_str(),
                d.count
            );
        }
    }

    /// Counts one answer given over `protocol` (every request answered,
    /// refusals before evaluation included).
    #[inline]
    pub fn answered(&self, protocol: Protocol, allowed: bool) {
        self.requests.mine().answers[protocol as usize][usize::from(!allowed)]
            .fetch_add(1, Relaxed);
    }

    /// Answers given over `protocol` so far: (allowed, denied).
    pub fn answers(&self, protocol: Protocol) -> (u64, u64) {
        let p = protocol as usize;
        (
            self.requests.sum(|c| &c.answers[p][0]),
            self.requests.sum(|c| &c.answers[p][1]),
        )
    }

    /// Counts one decision of Envoy mode's ext_authz server.
    pub fn decided(&self, how: DecidedBy<'_>, took: Duration) {
        self.decided_in(Mode::Envoy, how, took)
    }

    /// Shows the `mode="http"` series (the HTTP authorization server is on).
    pub fn set_http_enabled(&self, on: bool) {
        self.http_on.store(on, Relaxed);
    }

    /// Counts one decision of the server of `mode`. The duration histogram
    /// is shared by both modes.
    pub fn decided_in(&self, mode: Mode, how: DecidedBy<'_>, took: Duration) {
        let m = mode as usize;
        if mode == Mode::Http && !self.http_on.load(Relaxed) {
            self.http_on.store(true, Relaxed);
        }
        let c = self.requests.mine();
        match how {
            DecidedBy::Policy { policy, allowed } => {
                policy.count_decided(m, usize::from(!allowed));
            }
            DecidedBy::Error(p) => p.count_decided(m, 2),
            DecidedBy::Default => {
                c.default_allow[m].fetch_add(1, Relaxed);
            }
            DecidedBy::Internal => {
                c.internal_errors[m].fetch_add(1, Relaxed);
            }
            DecidedBy::Timeout => {
                c.timeouts[m].fetch_add(1, Relaxed);
            }
            DecidedBy::Overload => {
                c.overloads[m].fetch_add(1, Relaxed);
            }
            DecidedBy::Unreadable => {
                c.unreadable[m].fetch_add(1, Relaxed);
            }
            DecidedBy::Expression => {
                c.expression_errors[m].fetch_add(1, Relaxed);
            }
        }
        c.decision_duration.observe(took);
    }

    /// `authz_decisions_total{mode=..., decision, source, policy=""}` of a
    /// counter that no policy decided.
    pub fn decisions(&self, mode: Mode, how: DecidedBy<'_>) -> u64 {
        let m = mode as usize;
        match how {
            DecidedBy::Policy { policy, allowed } => policy.decided(m, usize::from(!allowed)),
            DecidedBy::Error(p) => p.decided(m, 2),
            DecidedBy::Default => self.requests.sum(|c| &c.default_allow[m]),
            DecidedBy::Internal => self.requests.sum(|c| &c.internal_errors[m]),
            DecidedBy::Timeout => self.requests.sum(|c| &c.timeouts[m]),
            DecidedBy::Overload => self.requests.sum(|c| &c.overloads[m]),
            DecidedBy::Unreadable => self.requests.sum(|c| &c.unreadable[m]),
            DecidedBy::Expression => self.requests.sum(|c| &c.expression_errors[m]),
        }
    }

    /// The text exposition of every series; `extra` is appended (gauges and
    /// counters owned elsewhere: reloads, caches).
    pub fn render(&self, extra: &str) -> String {
        let mut out = String::with_capacity(8192);
        let policies = self
            .policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        out.push_str("# HELP authz_decisions_total Decisions, by result and by what decided: a policy (source=\"policy\"), no policy (source=\"default\", allowed), an evaluation error under failurePolicy Fail (source=\"error\", denied), an internal error (source=\"internal\", denied), the decision deadline (source=\"timeout\", denied), a full decision queue (source=\"overload\", denied) or a request that could not be read (source=\"unreadable\", denied).\n");
        out.push_str("# TYPE authz_decisions_total counter\n");
        let modes: &[Mode] = if self.http_on.load(Relaxed) {
            &Mode::ALL
        } else {
            &[Mode::Envoy]
        };
        for &mode in modes {
            let (m, label) = (mode as usize, mode.as_str());
            for (name, p) in &policies {
                let name = escape(name);
                for (i, (decision, source)) in
                    [("allow", "policy"), ("deny", "policy"), ("deny", "error")]
                        .iter()
                        .enumerate()
                {
                    let v = p.decided(m, i);
                    if v > 0 {
                        let _ = writeln!(
                            out,
                            "authz_decisions_total{{mode=\"{label}\",decision=\"{decision}\",source=\"{source}\",policy=\"{name}\"}} {v}"
                        );
                    }
                }
            }
            let _ = writeln!(
                out,
                "authz_decisions_total{{mode=\"{label}\",decision=\"allow\",source=\"default\",policy=\"\"}} {}",
                self.decisions(mode, DecidedBy::Default)
            );
            let _ = writeln!(
                out,
                "authz_decisions_total{{mode=\"{label}\",decision=\"deny\",source=\"internal\",policy=\"\"}} {}",
                self.decisions(mode, DecidedBy::Internal)
            );
            for (source, how) in [
                ("timeout", DecidedBy::Timeout),
                ("overload", DecidedBy::Overload),
                ("unreadable", DecidedBy::Unreadable),
            ] {
                let _ = writeln!(
                    out,
                    "authz_decisions_total{{mode=\"{label}\",decision=\"deny\",source=\"{source}\",policy=\"\"}} {}",
                    self.decisions(mode, how)
                );
            }
            if mode == Mode::Http {
                let _ = writeln!(
                    out,
                    "authz_decisions_total{{mode=\"{label}\",decision=\"deny\",source=\"expression\",policy=\"\"}} {}",
                    self.decisions(mode, DecidedBy::Expression)
                );
            }
        }
        out.push_str("# HELP celgate_authz_requests_total Requests answered, by the protocol they came over (grpc: Envoy's gRPC ext_authz; envoy_http: Envoy's HTTP authorization service; forward_auth: nginx auth_request, Caddy forward_auth, Traefik ForwardAuth; kyverno_http: Kyverno's HTTP authorization protocol, HTTP-mode policies) and answer (refusals before evaluation count as deny).\n");
        out.push_str("# TYPE celgate_authz_requests_total counter\n");
        for p in Protocol::ALL {
            let (allowed, denied) = self.answers(p);
            for (decision, n) in [("allow", allowed), ("deny", denied)] {
                let _ = writeln!(
                    out,
                    "celgate_authz_requests_total{{protocol=\"{}\",decision=\"{decision}\"}} {n}",
                    p.as_str()
                );
            }
        }
        out.push_str(
            "# HELP authz_decision_duration_seconds Time to decide one request (all policies).\n",
        );
        out.push_str("# TYPE authz_decision_duration_seconds histogram\n");
        Histogram::merged(self.requests.each().map(|c| &c.decision_duration)).render(
            &mut out,
            "authz_decision_duration_seconds",
            "",
        );
        out.push_str("# HELP authz_policy_evaluations_total Policy evaluations, by policy and outcome (allow, deny, none, skipped, exempted, error; audit_deny and audit_error: a denial or a failure under failurePolicy Fail of a policy whose validationActions do not hold Deny, recorded and not enforced).\n");
        out.push_str("# TYPE authz_policy_evaluations_total counter\n");
        for (name, p) in &policies {
            let name = escape(name);
            for o in PolicyOutcome::ALL {
                let _ = writeln!(
                    out,
                    "authz_policy_evaluations_total{{policy=\"{name}\",decision=\"{}\"}} {}",
                    o.as_str(),
                    p.evaluations(o)
                );
            }
        }
        out.push_str("# HELP authz_policy_evaluation_duration_seconds Time to evaluate one policy for one request.\n");
        out.push_str("# TYPE authz_policy_evaluation_duration_seconds histogram\n");
        for (name, p) in &policies {
            let labels = format!("policy=\"{}\"", escape(name));
            p.duration().render(
                &mut out,
                "authz_policy_evaluation_duration_seconds",
                &labels,
            );
        }
        self.render_kube(&mut out);
        self.render_shadow(&mut out);
        out.push_str(extra);
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(3));
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_secs(2));
        let mut out = String::new();
        h.render(&mut out, "x", "p=\"a\"");
        assert!(
            out.contains("x_bucket{p=\"a\",le=\"0.000005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{p=\"a\",le=\"0.00005\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{p=\"a\",le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{p=\"a\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{p=\"a\"} 3\n"), "{out}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn counts_from_many_threads_sum_exactly() {
        // More threads than slots, so some share one: nothing may be lost
        // either way.
        let p = PolicyMetrics::default();
        let threads = SLOTS + 4;
        std::thread::scope(|s| {
            for t in 0..threads {
                let p = &p;
                s.spawn(move || {
                    for i in 0..1000 {
                        let outcome = if i % 4 == 0 {
                            PolicyOutcome::Deny
                        } else {
                            PolicyOutcome::Allow
                        };
                        p.evaluated(outcome, Duration::from_micros(3 + t as u64));
                        p.count_decided(0, usize::from(outcome == PolicyOutcome::Deny));
                    }
                });
            }
        });
        let n = threads as u64 * 1000;
        assert_eq!(p.evaluations(PolicyOutcome::Allow), n * 3 / 4);
        assert_eq!(p.evaluations(PolicyOutcome::Deny), n / 4);
        assert_eq!(p.decided(0, 0) + p.decided(0, 1), n);
        let d = p.duration();
        assert_eq!(d.count(), n);
        let micros: u64 = (0..threads as u64).map(|t| (3 + t) * 1000).sum();
        assert_eq!(d.sum_nanos.load(Relaxed), micros * 1000);
        assert!(p.counts.each().count() <= SLOTS);
    }

    #[test]
    fn a_series_nobody_recorded_holds_no_counts() {
        let p = PolicyMetrics::default();
        assert_eq!(p.counts.each().count(), 0);
        assert_eq!(p.duration().count(), 0);
        p.evaluated(PolicyOutcome::Skipped, Duration::ZERO);
        assert_eq!(p.counts.each().count(), 1, "one slot, this thread's");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
