//! The pool on the worker channel (docs/design/worker-channel.md): one WebSocket
//! per pool takes the place of the lease loop, the settle flusher and the
//! heartbeats.
//!
//! ```text
//!  hold slots ──credit──▶ server ──tasks──▶ dispatcher (as from the lease loop)
//!  server ──cancel──▶ the task's Link::cancel ──▶ its supervisor fires the token
//!  results ──settle (batches)──▶ server ──settled──▶ counters
//! ```
//!
//! A granted credit is a hold slot taken; a pushed task carries it on as its
//! [`HoldSlot`]. While the channel lives the server extends the leases of the tasks
//! it pushed, so supervisors send no heartbeats. When it drops (the server
//! restarts, the network breaks): unused credit goes back to the hold slots, the
//! settles it did not answer are sent again over HTTP (a repeat is answered with
//! the task's state or a 409, never applied twice), every task it pushed gets its
//! [`Link::gone`] fired so its supervisor heartbeats over HTTP from then on, and
//! the pool opens a new channel after a backoff (100 ms doubling to 5 s), settling
//! over HTTP meanwhile.
//!
//! A server that does not serve the channel (404: an older server; 501: over TLS)
//! is used over HTTP long-polls for the rest of the run, as is a pool the channel
//! cannot express (strict order or unequal weights: the server's per-queue lease
//! loops know no weights; more queues than a channel takes).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use weir_client::{
    AckItem, ChannelReceiver, ChannelSender, Error, FailItem, Hello, LeaseBatch, Pushed,
};

use crate::limits::{
    CHANNEL_CREDIT_MAX, CHANNEL_CREDIT_STEPS, CHANNEL_QUEUES_MAX, CHANNEL_RECONNECT_MS_MAX,
    CHANNEL_RECONNECT_MS_MIN, SETTLE_REQUESTS_IN_FLIGHT_MAX,
};
use crate::pool::{
    fail_undecodable, lease_loop, release_all, HoldSlot, LeaseConfig, Leased, Shared,
};
use crate::retry;
use crate::settle::{batch, flush_loop, send_batch, tally, Settlement};

/// What ties a task to the channel that pushed it.
pub(crate) struct Link {
    /// Fired when the server pushes a cancel for the task.
    pub(crate) cancel: CancellationToken,
    /// Fired when the channel ends: the server no longer extends the lease, so
    /// the task's supervisor heartbeats over HTTP from then on.
    pub(crate) gone: CancellationToken,
}

/// Why the pool cannot use the channel for this configuration, if it cannot.
pub(crate) fn unfit(cfg: &LeaseConfig, hold_max: usize) -> Option<&'static str> {
    if cfg.queues.len() > CHANNEL_QUEUES_MAX {
        return Some("more queues than one channel takes");
    }
    if cfg.strict {
        return Some("strict queue order needs the pool's own lease requests");
    }
    if cfg.queues.windows(2).any(|w| w[0].1 != w[1].1) {
        return Some("queue weights need the pool's own lease requests");
    }
    if cfg.queues.len() > hold_max {
        // The server parks one credit on an empty queue: with fewer credits than
        // queues, a queue could wait a whole park for one.
        return Some("fewer task slots than queues");
    }
    None
}

/// Everything the channel loop takes over from the lease loop and the flusher.
pub(crate) struct Parts {
    pub(crate) shared: Arc<Shared>,
    pub(crate) cfg: LeaseConfig,
    pub(crate) hold: Arc<Semaphore>,
    /// The hold slots in all (`max(concurrency, prefetch)`).
    pub(crate) hold_max: usize,
    pub(crate) work: mpsc::Sender<Leased>,
    /// Kept only to hand to the HTTP lease loop if the server has no channel.
    pub(crate) results_tx: mpsc::Sender<Settlement>,
    pub(crate) results: mpsc::Receiver<Settlement>,
    pub(crate) stop: CancellationToken,
    /// Where a refusal retrying cannot fix goes (the pool then stops).
    pub(crate) fatal: oneshot::Sender<(String, Error)>,
}

/// Leases through channels (one at a time, reopened when one drops) and settles
/// through them until `stop` and every result is settled; falls back to the HTTP
/// lease loop and flusher if the server does not serve the channel.
pub(crate) async fn run(parts: Parts) {
    let Parts {
        shared,
        cfg,
        hold,
        hold_max,
        work,
        results_tx,
        mut results,
        stop,
        fatal,
    } = parts;
    let mut fatal = Some(fatal);
    let queues: Vec<String> = cfg.queues.iter().map(|(q, _)| q.clone()).collect();
    let new_backoff = || retry::backoff(CHANNEL_RECONNECT_MS_MIN, CHANNEL_RECONNECT_MS_MAX);
    let mut backoff = new_backoff();
    // Held weakly: a strong sender here would keep `results` open forever. Only
    // the HTTP fallback needs one (the lease loop fails undecodable tasks).
    let weak_results_tx = results_tx.downgrade();
    drop(results_tx);
    let mut opened_once = false;
    // Settle batches sent over HTTP: those a dropped channel did not answer, and
    // results that came while there was no channel.
    let mut http: JoinSet<()> = JoinSet::new();
    let mut results_open = true;
    // The pause a failed open asked for (zero: our own backoff).
    let mut asked = Duration::ZERO;
    while !stop.is_cancelled() {
        let hello = Hello {
            queues: &queues,
            worker: Some(&cfg.worker_name),
            credit: 0,
        };
        let opened = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = shared.client.open_channel(&hello) => r,
        };
        match opened {
            Ok((tx, rx, welcome)) => {
                if let Some((queue, e)) = welcome.refused.into_iter().next() {
                    tracing::error!(queue, error = %e, "the channel refused a queue; stopping the pool");
                    if let Some(f) = fatal.take() {
                        let _ = f.send((queue, e));
                    }
                    break;
                }
                opened_once = true;
                backoff = new_backoff();
                tracing::info!(queues = ?welcome.queues, "worker channel open");
                let credit_max = welcome.credit_max.min(CHANNEL_CREDIT_MAX);
                // Credit goes out in steps of a quarter of what the pool can
                // hold, so a busy pool sends one credit (and the server makes one
                // lease) per several finished tasks, not one per task.
                let step = (credit_max.min(hold_max as u32) / CHANNEL_CREDIT_STEPS).max(1);
                let mut session = Session {
                    http: &mut http,
                    shared: &shared,
                    hold: &hold,
                    work: &work,
                    stop: &stop,
                    tx,
                    gone: CancellationToken::new(),
                    links: HashMap::new(),
                    granted: 0,
                    credit_max,
                    step,
                    queues: welcome.queues.len() as u32,
                    seq: 0,
                    unanswered: BTreeMap::new(),
                };
                let end = session.run(rx, &mut results, &mut results_open).await;
                let unanswered = session.end();
                for (acks, fails) in unanswered {
                    spawn_http(&mut http, &shared, acks, fails).await;
                }
                if end == End::Drained {
                    break;
                }
                tracing::warn!("worker channel lost; settling over HTTP until it is back");
            }
            // 404: a server without the channel; 501: an older server over TLS; 426:
            // the upgrade did not get through (a proxy that drops `Upgrade`).
            Err(e)
                if !opened_once
                    && matches!(
                        &e,
                        Error::NotFound
                            | Error::Server { status: 501, .. }
                            | Error::Invalid { status: 426, .. }
                    ) =>
            {
                tracing::info!(error = %e, "the server does not serve the worker channel; using HTTP long-polls");
                let flush = flush_loop(shared.client.clone(), results, shared.counters.clone());
                // No sender left means the pool is already stopping: nothing to lease.
                let leased = match weak_results_tx.upgrade() {
                    Some(results_tx) => {
                        let lease =
                            lease_loop(shared.clone(), cfg, hold, work, results_tx, stop.clone());
                        tokio::join!(lease, flush).0
                    }
                    None => {
                        drop(work);
                        flush.await;
                        Ok(())
                    }
                };
                if let (Err(refusal), Some(f)) = (leased, fatal.take()) {
                    let _ = f.send(refusal);
                }
                while http.join_next().await.is_some() {}
                return;
            }
            Err(e) if !e.is_transient() => {
                tracing::error!(error = %e, "the worker channel was refused; stopping the pool");
                if let Some(f) = fatal.take() {
                    let _ = f.send((queues.join(","), e));
                }
                break;
            }
            Err(e) => {
                // A 429 or 503 says how long to wait: that, plus our own backoff.
                let own = backoff
                    .next()
                    .unwrap_or(Duration::from_millis(CHANNEL_RECONNECT_MS_MAX));
                asked = e.retry_pause(own);
                tracing::warn!(error = %e, pause_ms = asked.as_millis() as u64, "could not open the worker channel");
            }
        }
        // Wait before the next try, settling over HTTP meanwhile.
        let pause = std::mem::take(&mut asked);
        let pause = if pause.is_zero() {
            backoff
                .next()
                .unwrap_or(Duration::from_millis(CHANNEL_RECONNECT_MS_MAX))
        } else {
            pause
        };
        let until = tokio::time::sleep(pause);
        tokio::pin!(until);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = &mut until => break,
                r = results.recv(), if results_open => match r {
                    Some(first) => {
                        let (acks, fails) = batch(first, &mut results);
                        spawn_http(&mut http, &shared, acks, fails).await;
                    }
                    None => results_open = false,
                },
            }
        }
    }
    // Stopped (or refused for good): what is still to come is settled over HTTP.
    drop(work);
    if results_open {
        while let Some(first) = results.recv().await {
            let (acks, fails) = batch(first, &mut results);
            spawn_http(&mut http, &shared, acks, fails).await;
        }
    }
    while http.join_next().await.is_some() {}
}

/// Sends one batch over HTTP (with its retries) in the background, at most
/// `SETTLE_REQUESTS_IN_FLIGHT_MAX` at once.
async fn spawn_http(
    http: &mut JoinSet<()>,
    shared: &Arc<Shared>,
    acks: Vec<AckItem>,
    fails: Vec<FailItem>,
) {
    while http.len() >= SETTLE_REQUESTS_IN_FLIGHT_MAX {
        http.join_next().await;
    }
    http.spawn(send_batch(
        shared.client.clone(),
        acks,
        fails,
        shared.counters.clone(),
    ));
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Stopped, every result settled and answered: the pool is done with it.
    Drained,
    /// Closed by the server, broken, or answered with an error.
    Dropped,
}

/// One open channel.
struct Session<'a> {
    shared: &'a Arc<Shared>,
    hold: &'a Arc<Semaphore>,
    work: &'a mpsc::Sender<Leased>,
    stop: &'a CancellationToken,
    tx: ChannelSender,
    /// Settle batches sent over HTTP (the run's, shared with it).
    http: &'a mut JoinSet<()>,
    /// Fired when this channel ends (every task it pushed holds a clone).
    gone: CancellationToken,
    /// The cancel token of each task pushed and not yet settled.
    links: HashMap<String, CancellationToken>,
    /// Credit granted and not yet spent by a push: that many hold slots taken.
    granted: u32,
    credit_max: u32,
    /// Free slots granted at once while the server still holds credit.
    step: u32,
    /// The channel's queues (the server may park one credit on each).
    queues: u32,
    seq: u64,
    /// Settles sent and not yet answered, by `seq`.
    unanswered: BTreeMap<u64, (Vec<AckItem>, Vec<FailItem>)>,
}

impl Session<'_> {
    async fn run(
        &mut self,
        mut rx: ChannelReceiver,
        results: &mut mpsc::Receiver<Settlement>,
        results_open: &mut bool,
    ) -> End {
        let mut saying_bye = false;
        loop {
            if self.stop.is_cancelled() && !saying_bye {
                saying_bye = true;
                tracing::debug!(unanswered = self.unanswered.len(), "stopping: bye");
                if self.tx.bye().await.is_err() {
                    return End::Dropped;
                }
            }
            if saying_bye && !*results_open && self.unanswered.is_empty() {
                self.tx.close().await;
                return End::Drained;
            }
            let room = self.credit_max.saturating_sub(self.granted);
            // Until the server holds a credit per queue (an empty queue parks
            // one), any free slot is granted at once; past that, slots gather.
            let want = if self.granted < self.queues {
                1
            } else {
                self.step.min(room)
            };
            tokio::select! {
                biased;
                msg = rx.next() => match msg {
                    Some(Ok(pushed)) => {
                        if !self.take(pushed).await {
                            return End::Dropped;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "worker channel broke");
                        return End::Dropped;
                    }
                    None => return End::Dropped,
                },
                r = results.recv(), if *results_open && self.unanswered.len() < SETTLE_REQUESTS_IN_FLIGHT_MAX => match r {
                    Some(first) => {
                        let (acks, fails) = batch(first, results);
                        if !self.settle(acks, fails).await {
                            return End::Dropped;
                        }
                    }
                    None => {
                        tracing::debug!("every result is in");
                        *results_open = false;
                    }
                },
                _ = self.stop.cancelled(), if !saying_bye => {}
                p = self.hold.acquire_many(want), if !saying_bye && room > 0 => {
                    p.expect("the hold semaphore is never closed").forget();
                    // Slots freed together are granted together.
                    tokio::task::yield_now().await;
                    let extra = (self.hold.available_permits() as u32).min(room - want);
                    if extra > 0 {
                        self.hold
                            .try_acquire_many(extra)
                            .expect("only this loop takes hold slots")
                            .forget();
                    }
                    let n = want + extra;
                    self.granted += n;
                    if self.tx.credit(n).await.is_err() {
                        return End::Dropped;
                    }
                }
            }
        }
    }

    /// Handles one server message; false when the channel is to be dropped.
    async fn take(&mut self, pushed: Pushed) -> bool {
        match pushed {
            Pushed::Tasks(LeaseBatch { tasks, undecodable }) => {
                let n = (tasks.len() + undecodable.len()) as u32;
                if n > self.granted {
                    // The server broke rule 1; the extra tasks hold no slot.
                    tracing::error!(
                        pushed = n,
                        granted = self.granted,
                        "the server pushed more tasks than the credit granted"
                    );
                }
                self.granted = self.granted.saturating_sub(n);
                if !undecodable.is_empty() {
                    self.hold.add_permits(undecodable.len());
                    let mut fails = Vec::new();
                    for task in undecodable {
                        if let Settlement::Fail(f) = fail_undecodable("(channel)", task) {
                            fails.push(f);
                        }
                    }
                    if !self.settle(Vec::new(), fails).await {
                        return false;
                    }
                }
                let leased_at = Instant::now();
                let mut unsent = Vec::new();
                for task in tasks {
                    let cancel = CancellationToken::new();
                    self.links.insert(task.id.clone(), cancel.clone());
                    let item = Leased {
                        queue: task.queue.clone(),
                        task,
                        leased_at,
                        slot: HoldSlot(self.hold.clone()),
                        link: Some(Link {
                            cancel,
                            gone: self.gone.clone(),
                        }),
                    };
                    if self.stop.is_cancelled() {
                        unsent.push(item);
                    } else if let Err(mpsc::error::SendError(item)) = self.work.send(item).await {
                        unsent.push(item);
                    }
                }
                if !unsent.is_empty() {
                    // Pushed as the pool stopped: handed back unstarted.
                    for item in &unsent {
                        self.links.remove(&item.task.id);
                    }
                    release_all(self.shared, unsent).await;
                }
                true
            }
            Pushed::Cancel { id, .. } => {
                if let Some(cancel) = self.links.get(&id) {
                    cancel.cancel();
                }
                true
            }
            Pushed::Settled(s) => {
                match (self.unanswered.remove(&s.seq), s.error) {
                    // The server could not take it as a whole (its store was
                    // away or busy): sent again over HTTP, with the retries
                    // and Retry-After pauses of any settle; the channel goes on.
                    (Some((acks, fails)), Some(e)) => {
                        tracing::warn!(seq = s.seq, error = %e, "a settle was refused as a whole; sending it over HTTP");
                        spawn_http(self.http, self.shared, acks, fails).await;
                    }
                    (Some(_), None) => {
                        tally(&s.acks, &self.shared.counters, true);
                        tally(&s.fails, &self.shared.counters, false);
                    }
                    (None, _) => {
                        tracing::warn!(seq = s.seq, "settled for a settle this pool did not send")
                    }
                }
                true
            }
            Pushed::Error(e) => {
                tracing::warn!(error = %e, "the server ended the worker channel");
                false
            }
        }
    }

    /// Sends one settle; false when the channel is to be dropped (the batch then
    /// counts as unanswered and goes over HTTP).
    async fn settle(&mut self, acks: Vec<AckItem>, fails: Vec<FailItem>) -> bool {
        for id in acks
            .iter()
            .map(|a| &a.id)
            .chain(fails.iter().map(|f| &f.id))
        {
            self.links.remove(id);
        }
        self.seq += 1;
        let sent = self.tx.settle(self.seq, &acks, &fails, &[]).await;
        self.unanswered.insert(self.seq, (acks, fails));
        sent.is_ok()
    }

    /// The channel is over: unused credit goes back to the hold slots, the tasks it
    /// pushed are told, and the settles it did not answer are handed back.
    fn end(self) -> Vec<(Vec<AckItem>, Vec<FailItem>)> {
        self.hold.add_permits(self.granted as usize);
        self.gone.cancel();
        self.unanswered.into_values().collect()
    }
}
