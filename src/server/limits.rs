//! Bounded work on the request path.
//!
//! Policy evaluation is synchronous CPU work. A decision is first tried on
//! the async worker that received the call, within a small slice of its
//! cost budget and without blocking ([`engine::evaluate_inline`]): most
//! decisions end there, with no hand-over between threads. One that needs
//! more is abandoned (nothing of it recorded) and made again from the start
//! on a fixed set of dedicated threads ([`DecisionPool`]), so the gRPC
//! health service, `/livez`, `/readyz` and `/metrics` (all async) keep
//! answering however slow the policies are: what runs on their threads is
//! bounded by the slice. Requests wait
//! for a thread in a bounded queue; when the queue is full, a request is
//! answered at once with the overload denial ([`overload_decision`]). Each
//! decision has a deadline; past it, the request gets the failure denial
//! ([`crate::engine::failure_decision`]) and the evaluation's result, when
//! it comes, is thrown away.
//!
//! Why dedicated threads rather than `spawn_blocking` behind a semaphore:
//! tokio's blocking pool is shared with everything else that blocks (file
//! reads, Kubernetes rebuilds) and grows to 512 threads; a fixed pool fed by
//! a bounded channel makes "at most N evaluations at once, at most M
//! waiting" a property of the data structure, with no permit bookkeeping,
//! and a queued request whose caller gave up is skipped before it runs.
//!
//! The deadline is also handed to the evaluation, whose cost meter reads
//! the clock as it charges: an evaluation that overruns stops there (with a
//! cost error, and its result is discarded), so it holds its thread no
//! longer than the deadline. A blocking call already under way (a
//! `jwks.Fetch`) finishes first.

use super::grpc::AuthzService;
use super::workers::{Job, Workers};
use crate::engine::{self, Decision, FailureReason, PolicyTrace};
use crate::telemetry::metrics::{self, DecidedBy};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Default `--decision-timeout-ms`: below Envoy's default ext_authz timeout
/// (200 ms), so celgate's denial reaches Envoy before Envoy gives up.
pub const DEFAULT_DECISION_TIMEOUT: Duration = Duration::from_millis(150);
/// Default [`Limits::read_timeout`]: Envoy sends a Check in one go; a call
/// whose message has not arrived after this long is not going to be useful.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--inline-budget`: some twenty times what a decision through
/// half a dozen ordinary policies spends, a few tens of microseconds at
/// most.
pub const DEFAULT_INLINE_BUDGET: u64 = 2_000;
/// Default `--max-pending-decisions`.
pub const DEFAULT_MAX_PENDING: usize = 64;
/// HTTP status of the overload denial.
pub use crate::engine::OVERLOAD_STATUS;
/// `Decision::error` of the overload denial (decision log, span).
pub const OVERLOAD_REASON: &str = "overloaded";
/// `Decision::error` of the deadline denial (decision log, span).
pub const TIMEOUT_REASON: &str = "decision deadline exceeded";

/// HTTP/2 streams one client connection may have open at once (gRPC
/// `Check` calls in flight). Envoy opens another connection when it needs
/// more.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Largest gRPC message accepted from a client, in bytes.
pub const MAX_DECODING_MESSAGE_BYTES: usize = 4 << 20;
/// Largest gRPC message sent, in bytes (a `CheckResponse`).
pub const MAX_ENCODING_MESSAGE_BYTES: usize = 4 << 20;
/// Largest header block (gRPC metadata) of one request, in bytes.
pub const MAX_HEADER_LIST_BYTES: u32 = 64 << 10;
/// HTTP/2 PING interval on idle connections, and how long to wait for the
/// answer before closing: dead peers do not hold streams forever.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive on accepted connections.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// How much decision work may be in flight.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Evaluation threads; 0: one per available CPU.
    pub threads: usize,
    /// Requests that may wait for a thread; beyond that, the overload denial.
    pub max_pending: usize,
    /// Time from the start of a decision (queueing included) to its answer.
    pub timeout: Duration,
    /// Time allowed for a Check's message to arrive once its call has
    /// started; a call still incomplete then gets the failure denial, so a
    /// client that sends headers and stalls cannot hold a stream for ever.
    pub read_timeout: Duration,
    /// Cost units a decision may spend on the gRPC thread that received it
    /// before it moves to the decision threads; 0: every decision is made
    /// on the decision threads.
    pub inline_budget: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            threads: 0,
            max_pending: DEFAULT_MAX_PENDING,
            timeout: DEFAULT_DECISION_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            inline_budget: DEFAULT_INLINE_BUDGET,
        }
    }
}

impl Limits {
    /// The number of evaluation threads these limits give.
    pub fn thread_count(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

/// The evaluation threads and their queue, started on first use.
#[derive(Debug, Default)]
pub struct DecisionPool {
    inner: OnceLock<Pool>,
}

#[derive(Debug)]
struct Pool {
    workers: Workers,
    /// Requests admitted at most at once: `threads` + `max_pending`.
    capacity: usize,
    /// Requests admitted and not yet done (waiting, or running, or skipped
    /// once their caller is gone): the admission count.
    admitted: Arc<AtomicUsize>,
}

impl DecisionPool {
    fn get(&self, limits: &Limits) -> &Pool {
        self.inner.get_or_init(|| Pool::start(limits))
    }

    /// Starts the threads now (rather than on the first request).
    pub fn start(&self, limits: &Limits) -> usize {
        self.get(limits).workers.threads
    }

    /// The pool's gauges in the Prometheus text format (nothing before it starts).
    pub fn render_metrics(&self) -> String {
        let Some(p) = self.inner.get() else {
            return String::new();
        };
        format!(
            "# HELP celgate_decision_threads Threads that evaluate policies.\n\
             # TYPE celgate_decision_threads gauge\n\
             celgate_decision_threads {}\n\
             # HELP celgate_decision_threads_busy Evaluation threads running an evaluation (overrunning ones included).\n\
             # TYPE celgate_decision_threads_busy gauge\n\
             celgate_decision_threads_busy {}\n\
             # HELP celgate_decisions_queued Requests waiting for an evaluation thread.\n\
             # TYPE celgate_decisions_queued gauge\n\
             celgate_decisions_queued {}\n",
            p.workers.threads,
            p.workers.load.busy.load(Ordering::Relaxed),
            p.workers.load.queued.load(Ordering::Relaxed),
        )
    }
}

impl Pool {
    fn start(limits: &Limits) -> Pool {
        let wanted = limits.thread_count();
        let admitted = Arc::new(AtomicUsize::new(0));
        // Admission is decided by `admitted`, so that a request is refused
        // only when every thread is busy and `max_pending` wait; the channel
        // has room for every admitted request.
        let workers = Workers::start(
            "celgate-eval",
            wanted,
            wanted + limits.max_pending,
            {
                let admitted = admitted.clone();
                Arc::new(move || {
                    admitted.fetch_sub(1, Ordering::AcqRel);
                })
            },
            |e| tracing::error!(error = %e, "cannot start an evaluation thread"),
        );
        let threads = workers.threads;
        tracing::info!(
            threads,
            max_pending = limits.max_pending,
            timeout_ms = limits.timeout.as_millis() as u64,
            "decision pool started"
        );
        Pool {
            workers,
            capacity: threads + limits.max_pending,
            admitted,
        }
    }

    /// Admits `job` within the queue's bound and hands it to the threads:
    /// [`FailureReason::Overload`] when the bound is reached,
    /// [`FailureReason::Internal`] when the threads are gone (which cannot
    /// happen while the pool lives).
    fn submit(&self, job: Job) -> Result<(), FailureReason> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(FailureReason::Overload);
        }
        match self.workers.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.admitted.fetch_sub(1, Ordering::AcqRel);
                Err(match e {
                    // Cannot happen: the channel has room for every
                    // admitted request.
                    TrySendError::Full(_) => FailureReason::Overload,
                    TrySendError::Disconnected(_) => FailureReason::Internal,
                })
            }
        }
    }
}

/// Who answers a request: the evaluation (if it ends in time) or the
/// deadline. Exactly one wins, and only the winner is counted in metrics.
const PENDING: u8 = 0;
const EVALUATED: u8 = 1;
const TIMED_OUT: u8 = 2;

/// Decides `request` on the pool within the deadline: the policies' decision,
/// the failure denial past the deadline, or the overload denial when the
/// queue is full. Never an error.
pub async fn decide(
    service: &AuthzService,
    request: Arc<CheckRequest>,
    trace: bool,
    started: Instant,
) -> (Decision, Vec<PolicyTrace>) {
    let state = service.state();
    let limits = &state.options.limits;
    // Most decisions take a few microseconds: made here, they cost no
    // hand-over to a decision thread and back. One that needs more than
    // the inline budget, or a blocking call, is abandoned and made on the
    // pool from the start.
    if limits.inline_budget > 0 {
        if let Some(result) = service.decide_inline(&request, trace, limits.inline_budget, started)
        {
            return result;
        }
    }
    let pool = state.pool.get(limits);
    let slot = Arc::new(AtomicU8::new(PENDING));
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let deadline_std = started + limits.timeout;
    let job: Job = {
        let service = service.clone();
        let slot = slot.clone();
        Box::new(move || {
            if tx.is_closed() || slot.load(Ordering::Acquire) != PENDING {
                // The caller timed out or went away while this waited.
                return;
            }
            let begun = Instant::now();
            // Past the deadline the caller has its answer: the evaluation
            // stops there too (a cost error), freeing this thread. An
            // evaluation that ends past the deadline, stopped there or
            // merely late, never answers: the answer is the timeout's,
            // whichever side gives it first.
            let result = service.decide_traced_if(&request, trace, Some(deadline_std), || {
                Instant::now() < deadline_std
                    && slot
                        .compare_exchange(PENDING, EVALUATED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            });
            if slot.load(Ordering::Acquire) == EVALUATED {
                let _ = tx.send(result);
            } else if slot
                .compare_exchange(PENDING, TIMED_OUT, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let _ = tx.send(timed_out(service.state(), started));
            } else {
                tracing::debug!(
                    took_ms = begun.elapsed().as_millis() as u64,
                    "an evaluation that overran its deadline ended; its result is discarded"
                );
            }
        })
    };
    let overloaded = || {
        count(DecidedBy::Overload, started);
        OVERLOAD_LOG.write(|suppressed| {
            tracing::warn!(
                max_pending = limits.max_pending,
                threads = pool.workers.threads,
                suppressed,
                "decision queue full: request denied with {OVERLOAD_STATUS} (overload)"
            )
        });
        (overload_decision(&state.config), Vec::new())
    };
    match pool.submit(job) {
        Ok(()) => {}
        Err(FailureReason::Overload) => return overloaded(),
        Err(_) => {
            // Cannot happen while the pool lives; fail closed all the same.
            count(DecidedBy::Internal, started);
            tracing::error!("the decision pool is gone; request denied");
            return (internal_decision(state), Vec::new());
        }
    }
    let deadline = tokio::time::Instant::from_std(deadline_std);
    match tokio::time::timeout_at(deadline, &mut rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => {
            // The job ended without an answer (it cannot, short of a bug).
            count(DecidedBy::Internal, started);
            tracing::error!("an evaluation ended without a decision; request denied");
            (internal_decision(state), Vec::new())
        }
        Err(_) => {
            if slot
                .compare_exchange(PENDING, TIMED_OUT, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                timed_out(state, started)
            } else {
                // The decision thread settled it by a hair (its decision,
                // or the timeout past the deadline): its answer is on the way.
                match rx.await {
                    Ok(result) => result,
                    Err(_) => (internal_decision(state), Vec::new()),
                }
            }
        }
    }
}

/// Runs `job` on the decision threads as [`decide`] runs an evaluation:
/// admitted within the queue's bound (else [`FailureReason::Overload`]) and
/// answered by the decision deadline (else [`FailureReason::Timeout`]; the
/// job itself is bounded by its evaluation's cost budget). For the HTTP-mode
/// answers, whose evaluation is not a `CheckRequest`'s.
pub async fn on_pool<T: Send + 'static>(
    state: &super::State,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FailureReason> {
    let limits = &state.options.limits;
    let pool = state.pool.get(limits);
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        if !tx.is_closed() {
            let _ = tx.send(job());
        }
    });
    pool.submit(job)?;
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(FailureReason::Internal),
        Err(_) => Err(FailureReason::Timeout),
    }
}

/// The failure denial of a request not decided by its deadline, counted
/// and logged (at most a line a second).
fn timed_out(state: &super::State, started: Instant) -> (Decision, Vec<PolicyTrace>) {
    count(DecidedBy::Timeout, started);
    TIMEOUT_LOG.write(|suppressed| {
        tracing::warn!(
            timeout_ms = state.options.limits.timeout.as_millis() as u64,
            suppressed,
            "decision deadline exceeded: request denied with the failure status"
        )
    });
    let d = engine::failure_decision(
        &state.config,
        FailureReason::Timeout,
        TIMEOUT_REASON.to_owned(),
    );
    (d, Vec::new())
}

fn count(how: DecidedBy<'_>, started: Instant) {
    let m = metrics::global();
    if m.enabled() {
        m.decided(how, started.elapsed());
    }
}

fn internal_decision(state: &super::State) -> Decision {
    engine::failure_decision(
        &state.config,
        FailureReason::Internal,
        "internal error during evaluation".into(),
    )
}

/// The answer when the queue is full: 503 and `retry-after: 1` (whatever
/// `--failure-status`: the client may retry), the failure body and header.
pub fn overload_decision(config: &engine::EngineConfig) -> Decision {
    engine::failure_decision(config, FailureReason::Overload, OVERLOAD_REASON.into())
}

/// A log line per occurrence, at most one a second: the lines in between
/// are counted and the count is carried by the next line (`suppressed`).
/// The decision pool's overload and deadline warnings and the shadow
/// threads' dropped-evaluation line use it.
pub(super) struct RateLimitedLog {
    /// Milliseconds since [`EPOCH`] when a line may next be written.
    next_at_ms: AtomicU64,
    suppressed: AtomicU64,
}

static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
static OVERLOAD_LOG: RateLimitedLog = RateLimitedLog::new();
static TIMEOUT_LOG: RateLimitedLog = RateLimitedLog::new();

impl RateLimitedLog {
    pub(super) const fn new() -> Self {
        RateLimitedLog {
            next_at_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Calls `write` with the number of lines suppressed since the last one,
    /// unless a line was written less than a second ago.
    pub(super) fn write(&self, write: impl FnOnce(u64)) {
        let now = EPOCH.elapsed().as_millis() as u64;
        let next = self.next_at_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_at_ms
                .compare_exchange(next, now + 1000, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            write(self.suppressed.swap(0, Ordering::Relaxed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_log_writes_one_line_a_second_and_counts_the_rest() {
        let log = RateLimitedLog::new();
        let mut lines = Vec::new();
        for _ in 0..5 {
            log.write(|s| lines.push(s));
        }
        assert_eq!(lines, vec![0], "one line, then suppressed");
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 4);
        // As if a second had passed.
        log.next_at_ms.store(0, Ordering::Relaxed);
        log.write(|s| lines.push(s));
        assert_eq!(lines, vec![0, 4], "the next line carries the count");
    }

    #[test]
    fn overload_denial_is_503_with_its_own_reason() {
        let d = overload_decision(&engine::EngineConfig {
            failure_status: 500,
            ..Default::default()
        });
        assert!(!d.allowed());
        assert_eq!(d.http_status(), OVERLOAD_STATUS, "never --failure-status");
        assert_eq!(
            d.error.as_ref().map(ToString::to_string).as_deref(),
            Some("server: overloaded")
        );
    }

    #[test]
    fn thread_count_is_never_zero() {
        assert!(Limits::default().thread_count() >= 1);
        let l = Limits {
            threads: 3,
            ..Default::default()
        };
        assert_eq!(l.thread_count(), 3);
    }
}
