//! What recording one request's metrics costs when two threads serve
//! requests at once: the six-policy request's series (an evaluation count and
//! a duration per policy, the deciding policy's decision, the answer and the
//! decision's duration), recorded by two threads in turn.
//! `cargo bench --bench metrics`.
//!
//! `per-thread` is celgate's recording. `shared` records the same series
//! into one set of atomics that both threads write, the layout celgate had
//! before: it is kept here as the measure of what per-thread counters save.

use celgate::telemetry::metrics::{self, DecidedBy, PolicyMetrics, PolicyOutcome, Protocol};
use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

const THREADS: usize = 2;

/// One policy's series, written by every thread (the former layout).
#[derive(Default)]
struct SharedPolicy {
    evaluations: [AtomicU64; 8],
    buckets: [AtomicU64; 18],
    sum_nanos: AtomicU64,
    decided: [[AtomicU64; 3]; 2],
}

#[derive(Default)]
struct SharedRequest {
    answers: [[AtomicU64; 2]; 4],
    buckets: [AtomicU64; 18],
    sum_nanos: AtomicU64,
}

fn bucket(d: Duration) -> usize {
    (d.as_micros() as usize / 5).min(17)
}

fn shared_request(policies: &[SharedPolicy], request: &SharedRequest, took: Duration) {
    for p in policies {
        p.evaluations[PolicyOutcome::NoResult as usize].fetch_add(1, Relaxed);
        p.buckets[bucket(took)].fetch_add(1, Relaxed);
        p.sum_nanos.fetch_add(took.as_nanos() as u64, Relaxed);
    }
    policies[5].decided[0][0].fetch_add(1, Relaxed);
    request.answers[0][0].fetch_add(1, Relaxed);
    request.buckets[bucket(took * 6)].fetch_add(1, Relaxed);
    request
        .sum_nanos
        .fetch_add(took.as_nanos() as u64 * 6, Relaxed);
}

fn per_thread_request(policies: &[PolicyMetrics], took: Duration) {
    for p in policies {
        p.evaluated(PolicyOutcome::NoResult, took);
    }
    let m = metrics::global();
    m.decided(
        DecidedBy::Policy {
            policy: &policies[5],
            allowed: true,
        },
        took * 6,
    );
    m.answered(Protocol::Grpc, true);
}

/// The time `THREADS` threads take to record `iters` requests each, with a
/// little work of their own between requests, as a server's would have.
fn on_threads(iters: u64, request: impl Fn() + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                let mut x = 0u64;
                for i in 0..iters {
                    request();
                    for _ in 0..32 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(i),
                        );
                    }
                }
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let took = Duration::from_nanos(700);
    let mut g = c.benchmark_group("record one request on two threads");
    let shared: Vec<SharedPolicy> = (0..6).map(|_| SharedPolicy::default()).collect();
    let request = SharedRequest::default();
    g.bench_function("shared", |b| {
        b.iter_custom(|iters| on_threads(iters, || shared_request(&shared, &request, took)))
    });
    let policies: Vec<PolicyMetrics> = (0..6).map(|_| PolicyMetrics::default()).collect();
    g.bench_function("per-thread", |b| {
        b.iter_custom(|iters| on_threads(iters, || per_thread_request(&policies, took)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
