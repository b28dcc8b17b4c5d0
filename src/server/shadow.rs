//! The shadow policy set: a second set of policies (`--shadow-policies`)
//! evaluated beside the served one, so a change can be rehearsed on real
//! traffic before it is enforced. Its answers never reach a client.
//!
//! Off the critical path: once the live decision is made, [`sample`] picks
//! the requests to compare (`--shadow-sample`, a fixed fraction, spread
//! evenly) and keeps the parsed request with a short copy of the live
//! answer. The hand-over ([`ShadowJob::submit`]) happens when the gRPC reply
//! has been passed on to the connection (its body is dropped), and is one
//! `try_send` to a small bounded queue served by dedicated threads
//! (`--shadow-threads`, `--shadow-max-pending`): when the queue is full, the
//! shadow evaluation is dropped and counted, never waited for. Nothing the
//! shadow set does can delay, change or fail the live answer: it runs on
//! other threads, after the answer, and its errors and panics stay here.
//!
//! Each comparison ends in exactly one [`ShadowResult`]: `agree`,
//! `disagree` (counted by the deciding policy of each side and
//! [`ShadowKind`], and written to the decision log), `error` (the shadow set
//! could not decide; also written to the decision log), `dropped` or
//! `timeout` (`--shadow-timeout-ms` from the hand-over to the end of the
//! shadow evaluation; a late result is thrown away). The evaluation itself
//! stops at that timeout (its cost meter reads the clock), and CPU spent by
//! slow shadow policies is bounded by the shadow threads, however many
//! requests arrive.
//!
//! The shadow set is loaded, checked and hot-reloaded like the live set
//! ([`crate::sources`]); a change that does not load keeps its last good
//! version and never touches the live set. Its policies' own series are not
//! shown among the live ones ([`PolicySet::detach_metrics`]).

use super::limits::RateLimitedLog;
use super::workers::Workers;
use super::State;
use crate::engine::{self, Decision};
use crate::policy::PolicySet;
use crate::telemetry::decision_log::Answer;
use crate::telemetry::metrics::{self, ShadowKind, ShadowResult};
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Default `--shadow-timeout-ms`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
/// Default `--shadow-max-pending`.
pub const DEFAULT_MAX_PENDING: usize = 64;
/// Default `--shadow-threads`.
pub const DEFAULT_THREADS: usize = 1;

/// How much the shadow set may take.
#[derive(Debug, Clone)]
pub struct ShadowOptions {
    /// Fraction of the requests compared, 0.0 to 1.0.
    pub sample: f64,
    /// Threads that evaluate the shadow set (at least one).
    pub threads: usize,
    /// Requests that may wait for a shadow thread; beyond that, dropped.
    pub max_pending: usize,
    /// From the hand-over to the end of the shadow evaluation.
    pub timeout: Duration,
}

impl Default for ShadowOptions {
    fn default() -> Self {
        ShadowOptions {
            sample: 1.0,
            threads: DEFAULT_THREADS,
            max_pending: DEFAULT_MAX_PENDING,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The shadow set, its reload state and its threads.
#[derive(Debug)]
pub struct Shadow {
    /// Swapped as a whole, like the live set.
    pub policies: ArcSwap<PolicySet>,
    /// Outcomes of the shadow set's reloads.
    pub reload: crate::sources::ReloadStatus,
    pub options: ShadowOptions,
    /// Whether the shadow set comes from files: then it is evaluated even
    /// when empty (a rehearsal of removing every policy, with
    /// `--allow-empty`). A shadow set fed only by labelled Kubernetes objects
    /// is evaluated only while it holds a policy.
    pub files: bool,
    sampler: Sampler,
    pool: OnceLock<Pool>,
}

impl Shadow {
    /// A shadow set serving `set` (whose policy series are detached from
    /// the live ones here).
    pub fn new(mut set: PolicySet, options: ShadowOptions, files: bool) -> Shadow {
        set.detach_metrics();
        metrics::global().set_shadow_enabled(true);
        Shadow {
            policies: ArcSwap::from_pointee(set),
            reload: Default::default(),
            sampler: Sampler::new(options.sample),
            options,
            files,
            pool: OnceLock::new(),
        }
    }

    /// Starts the shadow threads now (rather than on the first request);
    /// how many there are.
    pub fn start(&self) -> usize {
        self.pool().threads
    }

    fn pool(&self) -> &Pool {
        self.pool.get_or_init(|| start_pool(&self.options))
    }

    /// Whether requests are compared at all now.
    fn active(&self) -> bool {
        self.files || !self.policies.load().policies.is_empty()
    }

    /// The shadow set's gauges and reload counters, Prometheus text.
    pub fn render_metrics(&self) -> String {
        let set = self.policies.load();
        let r = &self.reload;
        let (queued, busy) = self.pool.get().map_or((0, 0), |p| {
            (
                p.load.queued.load(Ordering::Relaxed),
                p.load.busy.load(Ordering::Relaxed),
            )
        });
        format!(
            "# HELP celgate_shadow_policies Policies and exceptions in the shadow set.\n\
             # TYPE celgate_shadow_policies gauge\n\
             celgate_shadow_policies{{kind=\"ValidatingPolicy\"}} {}\n\
             celgate_shadow_policies{{kind=\"PolicyException\"}} {}\n\
             # HELP celgate_shadow_reloads_total Reloads of the shadow set, by result: applied, unchanged, error (refused; its last good version stays).\n\
             # TYPE celgate_shadow_reloads_total counter\n\
             celgate_shadow_reloads_total{{result=\"applied\"}} {}\n\
             celgate_shadow_reloads_total{{result=\"unchanged\"}} {}\n\
             celgate_shadow_reloads_total{{result=\"error\"}} {}\n\
             # HELP celgate_shadow_reload_failing 1 while the latest reload of the shadow set was refused.\n\
             # TYPE celgate_shadow_reload_failing gauge\n\
             celgate_shadow_reload_failing {}\n\
             # HELP celgate_shadow_queued Requests waiting for a shadow thread.\n\
             # TYPE celgate_shadow_queued gauge\n\
             celgate_shadow_queued {queued}\n\
             # HELP celgate_shadow_threads_busy Shadow threads evaluating.\n\
             # TYPE celgate_shadow_threads_busy gauge\n\
             celgate_shadow_threads_busy {busy}\n",
            set.policies.len(),
            set.exceptions.len(),
            r.applied_total.load(Ordering::Relaxed),
            r.unchanged_total.load(Ordering::Relaxed),
            r.errors_total.load(Ordering::Relaxed),
            u8::from(r.last_error().is_some()),
        )
    }
}

/// Picks a fixed fraction of the requests, spread evenly (no randomness: of
/// any `n` consecutive requests, `n × sample` rounded down or up are taken).
#[derive(Debug)]
struct Sampler {
    /// The fraction in 32-bit fixed point; `1 << 32` takes every request.
    step: u64,
    acc: AtomicU64,
}

impl Sampler {
    fn new(sample: f64) -> Sampler {
        let sample = if sample.is_nan() {
            0.0
        } else {
            sample.clamp(0.0, 1.0)
        };
        Sampler {
            step: (sample * (1u64 << 32) as f64).round() as u64,
            acc: AtomicU64::new(0),
        }
    }

    fn take(&self) -> bool {
        match self.step {
            0 => false,
            s if s >= 1 << 32 => true,
            s => {
                let a = self.acc.fetch_add(s, Ordering::Relaxed);
                // Taken when the running sum crosses a whole number.
                (a.wrapping_add(s) >> 32) != (a >> 32)
            }
        }
    }
}

/// One request to compare: what the shadow threads need.
#[derive(Debug)]
pub struct ShadowJob {
    state: Arc<State>,
    request: Arc<CheckRequest>,
    live: Answer,
    /// The sequence number of the live decision's log line, if one was queued.
    decision_seq: Option<u64>,
}

/// Whether `request`, decided `live`, is compared with the shadow set: a
/// shadow set is configured and active, the live answer was made by the
/// policies (not an overload, deadline, unreadable or internal denial) and
/// the sampler takes it. Cheap: a few loads and one atomic add, plus a copy
/// of the live answer's policy name when taken.
pub fn sample(
    state: &Arc<State>,
    request: &Arc<CheckRequest>,
    live: &Decision,
    decision_seq: Option<u64>,
) -> Option<ShadowJob> {
    let shadow = state.options.shadow.as_ref()?;
    // Celgate's own denials (no policy named) decide nothing about policies.
    if live.error.is_some() && live.policy.is_none() {
        return None;
    }
    if !shadow.active() || !shadow.sampler.take() {
        return None;
    }
    Some(ShadowJob {
        state: state.clone(),
        request: request.clone(),
        live: Answer::of(live),
        decision_seq,
    })
}

impl ShadowJob {
    /// Hands the request to the shadow threads; never blocks. When the
    /// queue is full it is dropped and counted.
    pub fn submit(self) {
        let state = self.state.clone();
        let Some(shadow) = state.options.shadow.as_ref() else {
            return;
        };
        let pool = shadow.pool();
        let handed = Instant::now();
        match pool.try_send(Box::new(move || self.run(handed))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics::global().shadow_result(ShadowResult::Dropped);
                DROP_LOG
                    .write(|_| tracing::debug!("shadow queue full: shadow evaluations dropped"));
            }
        }
    }

    /// On a shadow thread: evaluates, compares, counts, logs.
    fn run(self, handed: Instant) {
        let Some(shadow) = self.state.options.shadow.as_ref() else {
            return;
        };
        let m = metrics::global();
        let timeout = shadow.options.timeout;
        if handed.elapsed() >= timeout {
            m.shadow_result(ShadowResult::Timeout);
            return;
        }
        let set = shadow.policies.load_full();
        let span = tracing::info_span!("shadow");
        let evaluated = span.in_scope(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // Stopped at its timeout, so that a slow shadow set cannot keep
                // its thread past the point where the result is thrown away.
                engine::evaluate_within(
                    &set,
                    &self.state.config,
                    &self.request,
                    Some(handed + timeout),
                    false,
                )
                .0
            }))
        });
        let took = handed.elapsed();
        if took >= timeout {
            m.shadow_result(ShadowResult::Timeout);
            return;
        }
        let d = match evaluated {
            Ok(d) => d,
            Err(_) => {
                tracing::error!(
                    "shadow policy evaluation panicked; the live answer is not affected"
                );
                m.shadow_result(ShadowResult::Error);
                let d = engine::failure_decision(
                    &self.state.config,
                    engine::FailureReason::Internal,
                    "internal error during shadow evaluation".into(),
                );
                self.log(ShadowResult::Error, None, &d, took);
                return;
            }
        };
        if d.error.is_some() {
            m.shadow_result(ShadowResult::Error);
            self.log(ShadowResult::Error, None, &d, took);
            return;
        }
        match compare(&self.live, &d) {
            None => m.shadow_result(ShadowResult::Agree),
            Some(kind) => {
                m.shadow_disagreement(
                    self.live.policy.as_deref().unwrap_or(""),
                    d.policy.as_deref().unwrap_or(""),
                    kind,
                );
                self.log(ShadowResult::Disagree, Some(kind), &d, took);
            }
        }
    }

    fn log(&self, result: ShadowResult, kind: Option<ShadowKind>, d: &Decision, took: Duration) {
        if let Some(log) = &self.state.options.decision_log {
            log.record_shadow(
                &self.request,
                self.decision_seq,
                crate::telemetry::decision_log::ShadowLine {
                    result: result.as_str(),
                    kind: kind.map(ShadowKind::as_str),
                    live: self.live.clone(),
                    shadow: Answer::of(d),
                    latency_us: took.as_micros() as u64,
                },
            );
        }
    }
}

/// How the shadow decision differs from the live answer, if it does:
/// allowed against denied, or two denials with different statuses. (The
/// headers an allow adds or a denial's body are not compared.)
pub fn compare(live: &Answer, shadow: &Decision) -> Option<ShadowKind> {
    let live_allowed = live.decision == "allow";
    match (live_allowed, shadow.allowed()) {
        (true, true) => None,
        (true, false) => Some(ShadowKind::AllowDeny),
        (false, true) => Some(ShadowKind::DenyAllow),
        (false, false) => (live.status != shadow.http_status()).then_some(ShadowKind::Status),
    }
}

/// The shadow threads: at most `max_pending` jobs wait, the threads hold
/// one each.
type Pool = Workers;

fn start_pool(options: &ShadowOptions) -> Pool {
    let pool = Workers::start(
        "celgate-shadow",
        options.threads.max(1),
        options.max_pending,
        Arc::new(|| {}),
        |e| tracing::error!(error = %e, "cannot start a shadow evaluation thread"),
    );
    tracing::info!(
        threads = pool.threads,
        max_pending = options.max_pending,
        timeout_ms = options.timeout.as_millis() as u64,
        sample = options.sample,
        "shadow policy set: evaluation threads started"
    );
    pool
}

/// The DEBUG line when shadow evaluations are dropped, at most one a second
/// (the count is in `celgate_shadow_evaluations_total{result="dropped"}`).
static DROP_LOG: RateLimitedLog = RateLimitedLog::new();

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(sample: f64, n: usize) -> usize {
        let s = Sampler::new(sample);
        (0..n).filter(|_| s.take()).count()
    }

    #[test]
    fn the_sampler_takes_the_fraction_asked() {
        assert_eq!(taken(1.0, 1000), 1000);
        assert_eq!(taken(0.0, 1000), 0);
        assert_eq!(taken(f64::NAN, 10), 0);
        assert_eq!(taken(0.5, 1000), 500);
        assert_eq!(taken(0.25, 1000), 250);
        let tenth = taken(0.1, 1000);
        assert!((99..=101).contains(&tenth), "{tenth}");
        // Spread evenly: every other request at 0.5.
        let s = Sampler::new(0.5);
        let picks: Vec<bool> = (0..6).map(|_| s.take()).collect();
        assert_eq!(picks.iter().filter(|&&b| b).count(), 3);
        assert!(picks.windows(2).all(|w| w[0] != w[1]), "{picks:?}");
    }

    fn answer(decision: &'static str, status: i32) -> Answer {
        Answer {
            decision,
            status,
            ..Default::default()
        }
    }

    #[test]
    fn decisions_are_compared_on_allow_and_status_only() {
        let cfg = engine::EngineConfig::default();
        let deny_403 =
            engine::failure_decision(&cfg, engine::FailureReason::Evaluation, "x".into());
        assert_eq!(deny_403.http_status(), 403);
        let deny_503 = engine::failure_decision(&cfg, engine::FailureReason::Overload, "x".into());
        let allow = engine::evaluate(&PolicySet::empty(), &cfg, &CheckRequest::default());
        assert!(allow.allowed());
        assert_eq!(compare(&answer("allow", 200), &allow), None);
        assert_eq!(
            compare(&answer("allow", 200), &deny_403),
            Some(ShadowKind::AllowDeny)
        );
        assert_eq!(
            compare(&answer("deny", 403), &allow),
            Some(ShadowKind::DenyAllow)
        );
        assert_eq!(compare(&answer("deny", 403), &deny_403), None);
        assert_eq!(
            compare(&answer("deny", 403), &deny_503),
            Some(ShadowKind::Status)
        );
    }
}
