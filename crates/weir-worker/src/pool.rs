//! Running a pool: the lease loop, the dispatcher, the shutdown sequence and the
//! report.
//!
//! ```text
//!  lease loop ──(bounded: hold_max)──▶ dispatcher ──spawn──▶ supervisor ─spawn─▶ handler
//!   │ waits for a free hold slot          │ waits for a run permit  │ heartbeats, deadline
//!   ▼                                     ▼                         ▼
//!  POST …/lease                        release on shutdown      results (bounded) ──▶ flusher ──▶ POST /v1/acks
//! ```
//!
//! Two semaphores bound the work: `hold` counts every leased task the pool holds
//! (waiting or running; `max(concurrency, prefetch)` of them), `run` counts running
//! handlers (`concurrency`). A hold slot travels with its task and returns when the
//! task is settled or released.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use weir_client::{Client, Error, LeaseBatch, LeasedTask, UndecodableTask};

use crate::builder::{HandlerFn, Pool, Transport};
use crate::channel::{self, Link};
use crate::limits::{
    LEASE_RETRY_BACKOFF_MS_MAX, LEASE_RETRY_BACKOFF_MS_MIN, LEASE_WAIT_MS_IDLE,
    LEASE_WAIT_MS_IDLE_MIN, RELEASE_CONCURRENCY_MAX, RESULTS_CHANNEL_MAX,
};
use crate::retry::{self, Retries};
use crate::select::QueuePicker;
use crate::settle::{flush_loop, Settlement};
use crate::supervise::supervise;

/// What a pool did, returned by [`Pool::run`] once it has shut down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolReport {
    /// Acks the server accepted (a task canceled while it ran ends `canceled`
    /// though its ack is counted here).
    pub completed: u64,
    /// Fails the server accepted: handler errors, panics, unknown kinds, tasks the
    /// client could not decode, and abandoned handlers.
    pub failed: u64,
    /// Leased tasks handed back unstarted at shutdown (no attempt spent).
    pub released: u64,
    /// Handlers that ignored their token past the grace and were dropped; their
    /// tasks are also in `failed` (when the server accepted the fail).
    pub abandoned: u64,
    /// Acks and fails the server refused (mostly 409: the lease ran out first).
    pub refused: u64,
}

/// Why [`Pool::run`] stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The server refused a lease request in a way retrying cannot fix (a bad
    /// token, a queue name it rejects). Running tasks were finished and settled
    /// and prefetched ones released first, as in a shutdown.
    #[error("leasing from queue {queue:?} was refused")]
    Lease {
        queue: String,
        #[source]
        source: Error,
        /// What the pool did before it stopped.
        report: PoolReport,
    },
    /// One of the pool's own tasks panicked (a bug in this crate).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Counters behind [`PoolReport`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) refused: AtomicU64,
}

impl Counters {
    fn report(&self) -> PoolReport {
        PoolReport {
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// What every part of a running pool reads.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) handlers: HashMap<String, HandlerFn>,
    pub(crate) fallback: Option<HandlerFn>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) worker_name: String,
    /// The handled kinds, comma-separated, for the unknown-kind error.
    pub(crate) kinds: String,
    pub(crate) counters: Arc<Counters>,
}

/// A leased task the pool holds, with its hold slot.
pub(crate) struct Leased {
    pub(crate) task: LeasedTask,
    /// The queue it was leased from.
    pub(crate) queue: String,
    /// When the lease answer arrived; the lease clock runs from about then.
    pub(crate) leased_at: Instant,
    /// Returned to the lease loop when this is dropped.
    pub(crate) slot: HoldSlot,
    /// The channel that pushed it, if one did (then the server extends its lease
    /// and pushes its cancel while the channel lives).
    pub(crate) link: Option<Link>,
}

/// One permit of the `hold` semaphore, given back on drop.
pub(crate) struct HoldSlot(pub(crate) Arc<Semaphore>);

impl Drop for HoldSlot {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

impl Pool {
    /// Runs until `shutdown` resolves, then shuts down gracefully: stops leasing,
    /// releases every leased task that has not started, lets running handlers
    /// finish within the shutdown grace, then cancels their tokens (reason
    /// `Shutdown`), abandons those still running after a short grace, settles
    /// everything and returns the counts.
    ///
    /// Dropping the returned future instead cancels every handler's token and stops
    /// at once, without releasing or settling: those tasks come back when their
    /// leases run out.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<PoolReport, PoolError> {
        let counters = Arc::new(Counters::default());
        let mut kinds: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        kinds.sort_unstable();
        let kinds = if kinds.is_empty() {
            "nothing".to_owned()
        } else {
            kinds.join(", ")
        };
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            handlers: self.handlers,
            fallback: self.fallback,
            heartbeat_interval: self.heartbeat_interval,
            cancel_grace: self.cancel_grace,
            worker_name: self.worker_name.clone(),
            kinds,
            counters: counters.clone(),
        });
        // `stop` ends leasing and dispatching; `hard` is the parent of every
        // handler's token and fires once the shutdown grace is over.
        let stop = CancellationToken::new();
        let hard = CancellationToken::new();
        let _stop_on_drop = stop.clone().drop_guard();
        let _hard_on_drop = hard.clone().drop_guard();

        let hold = Arc::new(Semaphore::new(self.hold_max));
        let run_permits = Arc::new(Semaphore::new(self.concurrency));
        let (work_tx, work_rx) = mpsc::channel::<Leased>(self.hold_max);
        let (results_tx, results_rx) = mpsc::channel::<Settlement>(RESULTS_CHANNEL_MAX);
        let tracker = TaskTracker::new();

        tracing::info!(
            worker = %self.worker_name,
            queues = ?self.queues,
            concurrency = self.concurrency,
            prefetch = self.prefetch,
            "worker pool starting"
        );
        let dispatcher = tokio::spawn(
            dispatch_loop(
                shared.clone(),
                work_rx,
                run_permits,
                stop.clone(),
                hard.clone(),
                tracker.clone(),
                results_tx.clone(),
            )
            .instrument(tracing::info_span!("dispatcher")),
        );
        let lease_cfg = LeaseConfig {
            queues: self.queues,
            strict: self.strict_order,
            prefetch: self.prefetch,
            worker_name: self.worker_name,
        };
        let use_channel = match self.transport {
            Transport::Http => false,
            Transport::Channel => match channel::unfit(&lease_cfg, self.hold_max) {
                Some(why) => {
                    tracing::info!(why, "using HTTP long-polls rather than the worker channel");
                    false
                }
                None => true,
            },
        };
        // `flusher` ends once every result is settled; `leaser` ends at `stop`, or
        // early with a refusal that stops the pool.
        let (flusher, mut leaser) = if use_channel {
            let (fatal, refused) = oneshot::channel();
            let flusher = tokio::spawn(
                channel::run(channel::Parts {
                    shared: shared.clone(),
                    cfg: lease_cfg,
                    hold,
                    hold_max: self.hold_max,
                    work: work_tx,
                    results_tx,
                    results: results_rx,
                    stop: stop.clone(),
                    fatal,
                })
                .instrument(tracing::info_span!("worker_channel")),
            );
            let stopped = stop.clone();
            let leaser = tokio::spawn(async move {
                tokio::select! {
                    _ = stopped.cancelled() => Ok(()),
                    r = refused => match r {
                        Ok(refusal) => Err(refusal),
                        Err(_) => {
                            stopped.cancelled().await;
                            Ok(())
                        }
                    },
                }
            });
            (flusher, leaser)
        } else {
            let flusher = tokio::spawn(
                flush_loop(self.client.clone(), results_rx, counters.clone())
                    .instrument(tracing::info_span!("settle_flusher")),
            );
            let leaser = tokio::spawn(
                lease_loop(
                    shared.clone(),
                    lease_cfg,
                    hold,
                    work_tx,
                    results_tx,
                    stop.clone(),
                )
                .instrument(tracing::info_span!("lease_loop")),
            );
            (flusher, leaser)
        };

        let lease_result = tokio::select! {
            _ = shutdown => {
                tracing::info!("shutdown requested: stopping leasing, releasing unstarted tasks");
                None
            }
            r = &mut leaser => Some(r),
        };
        stop.cancel();
        let lease_result = match lease_result {
            Some(r) => r,
            None => leaser.await,
        };
        tracing::debug!("leasing stopped");
        let dispatch_result = dispatcher.await;
        tracing::debug!("dispatching stopped");

        tracker.close();
        if !tracker.is_empty() {
            tracing::info!(
                running = tracker.len(),
                grace_ms = self.shutdown_grace.as_millis() as u64,
                "waiting for running handlers"
            );
        }
        if tokio::time::timeout(self.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = tracker.len(),
                "shutdown grace over; cancelling running handlers"
            );
            hard.cancel();
            tracker.wait().await;
        }
        // Every results sender (the lease loop's, the dispatcher's and the
        // supervisors') is gone now, so the flusher drains what is left and ends.
        let flush_result = flusher.await;
        let report = counters.report();
        tracing::info!(?report, "worker pool stopped");

        if let Err(e) = dispatch_result.and(flush_result) {
            return Err(PoolError::Internal(e.to_string()));
        }
        match lease_result {
            Ok(Ok(())) => Ok(report),
            Ok(Err((queue, source))) => Err(PoolError::Lease {
                queue,
                source,
                report,
            }),
            Err(e) => Err(PoolError::Internal(e.to_string())),
        }
    }
}

pub(crate) struct LeaseConfig {
    pub(crate) queues: Vec<(String, u32)>,
    pub(crate) strict: bool,
    pub(crate) prefetch: usize,
    pub(crate) worker_name: String,
}

/// Whether a failed lease request may succeed if sent again.
fn lease_retryable(e: &Error) -> bool {
    e.is_transient() || matches!(e, Error::Server { .. } | Error::Decode { .. })
}

/// Leases while there are free hold slots, until `stop`. Ends with an error only
/// when the server refuses leasing for good. A leased task the client could not
/// decode is failed from here at once (see [`fail_undecodable`]).
pub(crate) async fn lease_loop(
    shared: Arc<Shared>,
    cfg: LeaseConfig,
    hold: Arc<Semaphore>,
    work: mpsc::Sender<Leased>,
    results: mpsc::Sender<Settlement>,
    stop: CancellationToken,
) -> Result<(), (String, Error)> {
    let weights: Vec<u32> = cfg.queues.iter().map(|(_, w)| *w).collect();
    let mut picker = QueuePicker::new(&weights, cfg.strict);
    let new_backoff = || retry::backoff(LEASE_RETRY_BACKOFF_MS_MIN, LEASE_RETRY_BACKOFF_MS_MAX);
    let mut backoff = new_backoff();
    // Whether the last lease failed, so the backoff starts over after a success.
    let mut failing = false;
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            p = hold.acquire() => p.expect("the hold semaphore is never closed"),
        };
        first.forget();
        // Handlers that finish together give their slots back together; one yield
        // lets them, so one lease asks for all of them instead of one each.
        tokio::task::yield_now().await;
        let extra = hold.available_permits().min(cfg.prefetch - 1);
        if extra > 0 {
            // Only this loop takes hold permits, so these are there.
            hold.try_acquire_many(extra as u32)
                .expect("the hold semaphore is never closed")
                .forget();
        }
        let want = 1 + extra;

        let got = lease_round(&shared.client, &cfg, &mut picker, want).await;
        let (queue, batch) = match got {
            Ok(got) => {
                if std::mem::take(&mut failing) {
                    backoff = new_backoff();
                }
                got
            }
            Err((queue, e)) => {
                hold.add_permits(want);
                if !lease_retryable(&e) {
                    tracing::error!(queue, error = %e, "lease refused; stopping the pool");
                    return Err((queue, e));
                }
                failing = true;
                // A 429 or 503 says how long to wait: wait that (and a jittered
                // backoff on top), never hammer a server that is throttling us.
                let own = backoff
                    .next()
                    .unwrap_or(Duration::from_millis(LEASE_RETRY_BACKOFF_MS_MAX));
                let pause = e.retry_pause(own);
                tracing::warn!(queue, error = %e, pause_ms = pause.as_millis() as u64, "lease failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        debug_assert!(batch.len() <= want, "the server gave more than asked");
        // An undecodable task's slot comes back at once with the unused ones: it
        // is settled without running.
        let LeaseBatch { tasks, undecodable } = batch;
        hold.add_permits(want.saturating_sub(tasks.len()));
        for task in undecodable {
            // The flusher outlives this loop, so this fails only if it panicked;
            // the lease then runs out instead.
            let _ = results.send(fail_undecodable(&queue, task)).await;
        }
        let leased_at = Instant::now();
        let mut unsent = Vec::new();
        for task in tasks {
            let item = Leased {
                task,
                queue: queue.clone(),
                leased_at,
                slot: HoldSlot(hold.clone()),
                link: None,
            };
            if stop.is_cancelled() {
                unsent.push(item);
                continue;
            }
            // Never waits: the channel holds `hold_max` and so do the slots.
            if let Err(mpsc::error::SendError(item)) = work.send(item).await {
                unsent.push(item);
            }
        }
        if !unsent.is_empty() {
            release_all(&shared, unsent).await;
        }
    }
}

/// A leased task the client could not decode (a payload nested deeper than
/// serde_json's limit or holding a lone surrogate, from a server that did not
/// check, or stored before it did): no handler can take it, and it will not decode
/// next time either, so it is failed at once without retry. Its batch-mates run.
pub(crate) fn fail_undecodable(queue: &str, task: UndecodableTask) -> Settlement {
    let error = format!("the worker could not decode this task: {}", task.error);
    tracing::warn!(id = %task.id, queue, error = %error, "failing a task without retry");
    Settlement::fail(task.id, task.lease_id, &error, false)
}

/// One lease request (or a few, over several queues): the queue that answered and
/// what it gave, possibly nothing.
async fn lease_round(
    client: &Client,
    cfg: &LeaseConfig,
    picker: &mut QueuePicker,
    want: usize,
) -> Result<(String, LeaseBatch), (String, Error)> {
    let lease = |i: usize, wait_ms: u64| {
        let queue = cfg.queues[i].0.clone();
        async move {
            match client
                .lease(&queue, want as u32, wait_ms, Some(&cfg.worker_name))
                .await
            {
                Ok(batch) => Ok((queue, batch)),
                Err(e) => Err((queue, e)),
            }
        }
    };
    let n = cfg.queues.len();
    if n == 1 {
        return lease(0, LEASE_WAIT_MS_IDLE).await;
    }
    // With several queues, ask each without waiting, in turn order; only when all
    // are empty long-poll one of them, rotating, for a share of the idle wait.
    // (Concurrent long-polls on all of them would need cancelling the losers, and
    // a lease request dropped mid-flight may still lease tasks on the server.)
    for i in picker.order() {
        let (queue, tasks) = lease(i, 0).await?;
        if !tasks.is_empty() {
            return Ok((queue, tasks));
        }
    }
    let wait_ms = (LEASE_WAIT_MS_IDLE / n as u64).max(LEASE_WAIT_MS_IDLE_MIN);
    lease(picker.idle_queue(), wait_ms).await
}

/// Starts leased tasks as run permits free up, until `stop`; then releases every
/// task still waiting.
async fn dispatch_loop(
    shared: Arc<Shared>,
    mut work: mpsc::Receiver<Leased>,
    run_permits: Arc<Semaphore>,
    stop: CancellationToken,
    hard: CancellationToken,
    tracker: TaskTracker,
    results: mpsc::Sender<Settlement>,
) {
    let mut unstarted = Vec::new();
    loop {
        let item = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            item = work.recv() => match item {
                Some(item) => item,
                None => break,
            },
        };
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                unstarted.push(item);
                break;
            }
            p = run_permits.clone().acquire_owned() => p.expect("the run semaphore is never closed"),
        };
        tracker.spawn(supervise(
            shared.clone(),
            item,
            permit,
            hard.child_token(),
            results.clone(),
        ));
    }
    // Anything the lease loop sends after this is refused and released there.
    work.close();
    while let Some(item) = work.recv().await {
        unstarted.push(item);
    }
    if !unstarted.is_empty() {
        tracing::info!(tasks = unstarted.len(), "releasing unstarted tasks");
        release_all(&shared, unstarted).await;
    }
}

/// Hands leased tasks back unstarted (no attempt spent), a few at a time.
pub(crate) async fn release_all(shared: &Arc<Shared>, items: Vec<Leased>) {
    let mut in_flight = JoinSet::new();
    for item in items {
        while in_flight.len() >= RELEASE_CONCURRENCY_MAX {
            in_flight.join_next().await;
        }
        in_flight.spawn(release_one(shared.clone(), item).in_current_span());
    }
    while in_flight.join_next().await.is_some() {}
}

async fn release_one(shared: Arc<Shared>, item: Leased) {
    let id = &item.task.id;
    let mut retries = Retries::new();
    loop {
        match shared.client.release(id, &item.task.lease_id).await {
            Ok(()) => {
                shared.counters.released.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                let pause = if lease_retryable(&e) {
                    retries.after(&e)
                } else {
                    None
                };
                let Some(pause) = pause else {
                    // The lease runs out on its own and the task comes back (with an
                    // attempt counted): nothing is lost.
                    tracing::warn!(id, error = %e, "release refused; the lease will expire instead");
                    return;
                };
                tracing::warn!(id, error = %e, pause_ms = pause.as_millis() as u64, "release failed; retrying");
                tokio::time::sleep(pause).await;
            }
        }
    }
}
