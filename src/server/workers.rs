//! A fixed set of threads fed by a bounded channel, with gauges of what it
//! is doing. The decision pool ([`super::limits`]) and the shadow
//! evaluations ([`super::shadow`]) each run one; they differ in how they
//! admit work, not in how the threads take and run it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

pub(super) type Job = Box<dyn FnOnce() + Send>;

/// Threads and the channel that feeds them.
#[derive(Debug)]
pub(super) struct Workers {
    tx: SyncSender<Job>,
    /// Threads that started.
    pub threads: usize,
    pub load: Arc<Load>,
}

/// What the threads are doing.
#[derive(Debug, Default)]
pub(super) struct Load {
    /// Jobs sent and not yet taken by a thread.
    pub queued: AtomicUsize,
    /// Threads running a job.
    pub busy: AtomicUsize,
}

/// Runs after each job on the thread that ran it (panicked or not).
pub(super) type AfterJob = Arc<dyn Fn() + Send + Sync>;

impl Workers {
    /// Starts `count` threads named `{name}-{i}` with the evaluation stack
    /// size, taking jobs from a channel that holds at most `queue` waiting
    /// ones. A thread that cannot start is reported to `spawn_failed` and
    /// left out of [`Workers::threads`].
    pub fn start(
        name: &str,
        count: usize,
        queue: usize,
        after_job: AfterJob,
        spawn_failed: fn(&std::io::Error),
    ) -> Workers {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let load = Arc::new(Load::default());
        let mut threads = 0;
        for i in 0..count {
            let (rx, load, after_job) = (rx.clone(), load.clone(), after_job.clone());
            match std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                // Evaluation recurses over the expression: the stack fits
                // any expression within the load-time depth limit.
                .stack_size(crate::cel::limits::EVAL_STACK_BYTES)
                .spawn(move || work(&rx, &load, &*after_job))
            {
                Ok(_) => threads += 1,
                Err(e) => spawn_failed(&e),
            }
        }
        Workers { tx, threads, load }
    }

    /// Queues `job` without blocking; it is counted in [`Load::queued`]
    /// until a thread takes it. The job comes back when the channel is full
    /// (or gone).
    pub fn try_send(&self, job: Job) -> Result<(), TrySendError<Job>> {
        // Counted before it is sent, so a thread taking it at once never
        // counts below zero.
        self.load.queued.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.try_send(job);
        if sent.is_err() {
            self.load.queued.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }
}

/// One thread: runs jobs until the sending side is dropped.
fn work(rx: &Mutex<Receiver<Job>>, load: &Load, after_job: &(dyn Fn() + Send + Sync)) {
    loop {
        // The lock is held while waiting, not while running a job.
        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = job else { return };
        load.queued.fetch_sub(1, Ordering::Relaxed);
        load.busy.fetch_add(1, Ordering::Relaxed);
        // Jobs catch their own panics; this keeps the thread whatever happens.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        load.busy.fetch_sub(1, Ordering::Relaxed);
        after_job();
    }
}
