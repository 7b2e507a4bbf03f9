//! The writer thread: the one place where the embedded store's durable state
//! changes. Each round takes every operation queued since the last round (up to
//! `WRITER_OPS_PER_COMMIT_MAX`), plans them against the in-memory state, appends
//! their frames to the task log, writes and fsyncs them once (group commit), and
//! only then makes new tasks leasable and answers the callers. Timers (due
//! scheduled tasks, expired leases), retention and the log's garbage collection run
//! in the same rounds, so no two threads ever write.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::sync::{mpsc, oneshot, Notify};
use weir_core::machine::{self, TransitionError};
use weir_core::{ConfigPatch, GroupTally, QueueConfig, TaskId, TaskRecord, TaskState};
use weir_log::Log;

use super::groups::{self, GroupEvent};
use super::state::{self, QueueIdx, State};
use super::{diagnose, disk, group_in, internal, load, record_in, Disk, Health, Shared};
use super::{
    COPY_FORWARD_TASKS_MAX, RETENTION_PURGE_BATCH_MAX, WRITER_BYTES_PER_COMMIT_MAX,
    WRITER_OPS_PER_COMMIT_MAX, WRITER_TASKS_PER_COMMIT_MAX, WRITER_TICK_MS_MAX,
};
use crate::{Enqueued, GroupCreated, LeaseId, Outage, Schedule, Settle, StoreError, StoredKey};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A mutation for the writer.
pub(crate) enum Op {
    Enqueue {
        queue: String,
        items: Vec<Prepared>,
        reply: Reply<Vec<Enqueued>>,
    },
    Settle {
        items: Vec<Settle>,
        reply: Reply<Vec<Result<TaskState, StoreError>>>,
    },
    Cancel {
        id: TaskId,
        reply: Reply<TaskRecord>,
    },
    Release {
        id: TaskId,
        lease_id: LeaseId,
        reply: Reply<TaskState>,
    },
    /// Tasks the lease path found past their deadline (dead) or in a closed group
    /// (canceled): make that durable.
    Finalize {
        records: Vec<TaskRecord>,
    },
    /// Enqueue `items` as the group `id`.
    CreateGroup {
        id: TaskId,
        queue: String,
        fail_fast: bool,
        retention_ms: u64,
        items: Vec<Prepared>,
        reply: Reply<GroupCreated>,
    },
    CancelGroup {
        id: TaskId,
        reply: Reply<()>,
    },
    /// Change a queue's flow-control settings.
    Configure {
        queue: String,
        patch: ConfigPatch,
        reply: Reply<QueueConfig>,
    },
    /// Create or replace a schedule.
    PutSchedule {
        name: String,
        spec: String,
        now_ms: u64,
        reply: Reply<Schedule>,
    },
    DeleteSchedule {
        name: String,
        reply: Reply<bool>,
    },
    /// A schedule handled a tick.
    ScheduleRan {
        name: String,
        tick_ms: u64,
        run: Option<(u64, TaskId)>,
        reply: Reply<()>,
    },
    /// Add an API key.
    CreateKey {
        id: String,
        record: String,
        reply: Reply<()>,
    },
    /// Revoke an API key.
    DeleteKey {
        id: String,
        reply: Reply<bool>,
    },
    /// An API key was used.
    KeyUsed {
        id: String,
        at_ms: u64,
        reply: Reply<()>,
    },
    /// An operator's retry of dead or canceled tasks (`Broker::retry`).
    Retry {
        ids: Vec<TaskId>,
        scope: OwnedScope,
        reply: Reply<Vec<Result<TaskRecord, StoreError>>>,
    },
    /// An operator's delete of finished tasks (`Broker::delete_tasks`).
    Delete {
        ids: Vec<TaskId>,
        scope: OwnedScope,
        reply: Reply<Vec<Result<(), StoreError>>>,
    },
    /// Delete an empty queue, at the end of the round (`State::delete_queue`).
    DeleteQueue {
        queue: String,
        reply: Reply<()>,
    },
    /// Drain, persist and exit.
    Stop {
        reply: oneshot::Sender<()>,
    },
}

impl Op {
    /// How many tasks the op touches, to bound a round.
    fn tasks(&self) -> usize {
        match self {
            Op::Enqueue { items, .. } | Op::CreateGroup { items, .. } => items.len(),
            Op::Settle { items, .. } => items.len(),
            Op::Finalize { records } => records.len(),
            Op::Retry { ids, .. } | Op::Delete { ids, .. } => ids.len(),
            Op::Cancel { .. }
            | Op::Release { .. }
            | Op::CancelGroup { .. }
            | Op::Configure { .. }
            | Op::PutSchedule { .. }
            | Op::DeleteSchedule { .. }
            | Op::ScheduleRan { .. }
            | Op::CreateKey { .. }
            | Op::DeleteKey { .. }
            | Op::KeyUsed { .. }
            | Op::DeleteQueue { .. }
            | Op::Stop { .. } => 1,
        }
    }

    /// About how many bytes the op adds to a round's frames, to bound a round.
    fn bytes(&self) -> usize {
        match self {
            Op::Enqueue { items, .. } | Op::CreateGroup { items, .. } => {
                items.iter().map(|p| p.meta.len() + p.payload.len()).sum()
            }
            Op::Settle { items, .. } => items
                .iter()
                .map(|i| match i {
                    Settle::Ack { result, .. } => result.as_ref().map_or(0, |r| r.len()),
                    Settle::Fail { error, .. } => error.len(),
                })
                .sum(),
            Op::CreateKey { record, .. } => record.len(),
            _ => 0,
        }
    }
}

/// `crate::Scope`, owned by an op on its way to the writer.
pub(crate) struct OwnedScope {
    pub queue: Option<String>,
    pub state: Option<TaskState>,
}

impl OwnedScope {
    pub fn new(scope: crate::Scope<'_>) -> OwnedScope {
        OwnedScope {
            queue: scope.queue.map(str::to_owned),
            state: scope.state,
        }
    }

    fn get(&self) -> crate::Scope<'_> {
        crate::Scope {
            queue: self.queue.as_deref(),
            state: self.state,
        }
    }
}

/// A round's frames, staged in the log, and where they will be once committed.
pub(crate) struct Batch<'a> {
    log: &'a mut Log,
    placed: Vec<Placed>,
    /// Where a record's meta is encoded before the log copies it: one buffer for
    /// the round, not one allocation per frame.
    scratch: Vec<u8>,
    /// A frame that places nothing in the state (a purge, the end of a config) is staged.
    unplaced: bool,
}

/// Where a frame of the round went, applied to `State` after the commit.
pub(crate) enum Placed {
    Task {
        id: u128,
        loc: u64,
        first: bool,
    },
    Group {
        id: u128,
        loc: u64,
    },
    Queue {
        q: QueueIdx,
        config: QueueConfig,
        loc: u64,
    },
    Schedule {
        schedule: Schedule,
        loc: u64,
    },
    ScheduleEnd {
        name: String,
    },
    Key {
        key: StoredKey,
        loc: u64,
    },
    KeyEnd {
        id: String,
    },
}

impl<'a> Batch<'a> {
    pub fn new(log: &'a mut Log) -> Batch<'a> {
        debug_assert_eq!(log.staged_bytes(), 0, "a round begins with nothing staged");
        Batch {
            log,
            placed: Vec::new(),
            scratch: Vec::new(),
            unplaced: false,
        }
    }

    /// A new task: its record and its payload, the payload copied once, from the
    /// request body into the round's buffer.
    pub fn new_task(&mut self, id: u128, meta: &[u8], payload: &[u8]) {
        let loc = self.log.append(disk::KIND_TASK, meta, payload);
        self.placed.push(Placed::Task {
            id,
            loc: loc.to_u64(),
            first: true,
        });
    }

    /// A task's changed record.
    pub fn update(&mut self, rec: &TaskRecord) {
        disk::task_meta_into(rec, &mut self.scratch);
        let loc = self.log.append(disk::KIND_UPDATE, &self.scratch, &[]);
        self.placed.push(Placed::Task {
            id: rec.id.0,
            loc: loc.to_u64(),
            first: false,
        });
    }

    /// A live task copied forward by the GC: its record and its payload again.
    pub fn copy_task(&mut self, rec: &TaskRecord, payload: &[u8]) {
        disk::task_meta_into(rec, &mut self.scratch);
        let loc = self.log.append(disk::KIND_TASK, &self.scratch, payload);
        self.placed.push(Placed::Task {
            id: rec.id.0,
            loc: loc.to_u64(),
            first: true,
        });
    }

    /// A group's changed record.
    pub fn group(&mut self, id: u128, g: &disk::GroupRecord) {
        let loc = self
            .log
            .append(disk::KIND_GROUP, &disk::group_meta(id, g), &[]);
        self.placed.push(Placed::Group {
            id,
            loc: loc.to_u64(),
        });
    }

    /// A queue's config (a frame with no setting ends it).
    pub fn queue_config(&mut self, q: QueueIdx, name: &str, config: QueueConfig) {
        let loc = self
            .log
            .append(disk::KIND_QUEUE, &disk::queue_meta(name, &config), &[]);
        self.placed.push(Placed::Queue {
            q,
            config,
            loc: loc.to_u64(),
        });
    }

    /// A schedule's new state.
    pub fn schedule(&mut self, schedule: Schedule) {
        let loc = self
            .log
            .append(disk::KIND_SCHEDULE, &disk::schedule_meta(&schedule), &[]);
        self.placed.push(Placed::Schedule {
            schedule,
            loc: loc.to_u64(),
        });
    }

    /// The end of a deleted schedule.
    pub fn schedule_end(&mut self, name: String) {
        self.log
            .append(disk::KIND_SCHEDULE, &disk::schedule_end_meta(&name), &[]);
        self.placed.push(Placed::ScheduleEnd { name });
    }

    /// An API key's new state.
    pub fn key(&mut self, key: StoredKey) {
        let loc = self.log.append(disk::KIND_KEY, &disk::key_meta(&key), &[]);
        self.placed.push(Placed::Key {
            key,
            loc: loc.to_u64(),
        });
    }

    /// A revoked API key.
    pub fn key_end(&mut self, id: String) {
        self.log
            .append(disk::KIND_KEY, &disk::key_end_meta(&id), &[]);
        self.placed.push(Placed::KeyEnd { id });
    }

    /// The end of a deleted queue's config (it is in no index: nothing to place).
    pub fn queue_end(&mut self, name: &str) {
        let meta = disk::queue_meta(name, &QueueConfig::default());
        self.log.append(disk::KIND_QUEUE, &meta, &[]);
        self.unplaced = true;
    }

    /// Tasks retention removed (id, the expiry they were removed at), so that a
    /// restart does not find them again whatever its clock says.
    pub fn purge(&mut self, tasks: &[(u128, u64)]) {
        if !tasks.is_empty() {
            self.log
                .append(disk::KIND_PURGE, &disk::purge_meta(tasks), &[]);
            self.unplaced = true;
        }
    }

    /// Finished tasks an operator retried (id, the expiry they had): recovery
    /// takes them out of their finished state; their update frame, after this one,
    /// makes them pending.
    pub fn reopen(&mut self, tasks: &[(u128, u64)]) {
        if !tasks.is_empty() {
            self.log
                .append(disk::KIND_REOPEN, &disk::purge_meta(tasks), &[]);
            self.unplaced = true;
        }
    }

    /// Groups retention removed.
    pub fn purge_groups(&mut self, ids: &[u128]) {
        if !ids.is_empty() {
            let meta: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
            self.log.append(disk::KIND_GROUP_PURGE, &meta, &[]);
            self.unplaced = true;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.placed.is_empty() && !self.unplaced
    }

    /// Drops what was staged (a test's injected outage).
    #[cfg(test)]
    fn discard(self) {
        self.log.discard();
    }

    /// Makes the round durable: one write of everything staged, then one fdatasync.
    /// A failed write (a full disk, no descriptor for a new segment, EIO) leaves
    /// nothing of the round readable and the log usable (`Outage`); after a failed
    /// fsync the kernel may have dropped pages it had accepted, so only a restart
    /// with recovery is safe (`Fatal`). On success, where each frame went, for
    /// `apply`.
    /// `dir` is for diagnosing errors that carry no errno.
    pub fn commit(self, dir: &std::path::Path) -> Result<Vec<Placed>, CommitError> {
        match self.log.commit() {
            Ok(()) => Ok(self.placed),
            Err(weir_log::CommitError::Write { source, .. }) => Err(CommitError::Outage {
                cause: Outage::of_io(&source).unwrap_or_else(|| diagnose(dir)),
                detail: format!("write: {source}"),
            }),
            Err(e) => Err(CommitError::Fatal(format!(
                "fsync failed: {e}; restart required"
            ))),
        }
    }
}

/// Points the indexes at a committed round's frames.
pub(crate) fn apply(st: &mut State, placed: Vec<Placed>) {
    for p in placed {
        match p {
            Placed::Task { id, loc, first } => st.place_task(id, loc, first),
            Placed::Group { id, loc } => st.place_group(id, loc),
            Placed::Queue { q, config, loc } => st.place_config(q, config, Some(loc)),
            Placed::Schedule { schedule, loc } => st.place_schedule(schedule, loc),
            Placed::ScheduleEnd { name } => st.end_schedule(&name),
            Placed::Key { key, loc } => st.place_key(key, loc),
            Placed::KeyEnd { id } => st.end_key(&id),
        }
    }
}

/// A new task, encoded by the caller so that the writer only copies bytes.
pub(crate) struct Prepared {
    record: TaskRecord,
    meta: Vec<u8>,
    payload: Bytes,
}

impl Prepared {
    pub fn new(record: TaskRecord, payload: Bytes) -> Prepared {
        Prepared {
            meta: disk::task_meta(&record),
            record,
            payload,
        }
    }
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Op>,
    log: Log,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name("weir-writer".into())
        .spawn(move || run(shared, rx, log))
        .map_err(|e| internal("spawn writer", e))
}

/// Sends one op's answer once the round's commit is known (`Some` if it failed).
type Answer = Box<dyn FnOnce(Option<&CommitError>) + Send>;

/// Why a commit failed.
#[derive(Clone, Debug)]
pub(crate) enum CommitError {
    /// Nothing was fsynced, and the cause can clear: the store rebuilds its memory
    /// from the log (the failed round had already changed it) and takes writes
    /// again once the cause is gone.
    Outage { cause: Outage, detail: String },
    /// An fsync failed. The kernel may have dropped pages it had accepted, so what
    /// the engine believes is on disk may not be: only a restart with recovery is
    /// safe.
    Fatal(String),
}

impl From<CommitError> for StoreError {
    fn from(e: CommitError) -> StoreError {
        match e {
            CommitError::Outage { cause, detail } => StoreError::Unavailable {
                cause,
                detail,
                retry_after_ms: 1000,
            },
            CommitError::Fatal(detail) => StoreError::bug(detail),
        }
    }
}

/// Effects that wait for the commit: answers, and memory changes that must not be
/// seen before the data is durable.
#[derive(Default)]
pub(crate) struct After {
    /// Group members that became terminal, for `groups::process`.
    pub group_events: Vec<GroupEvent>,
    /// Groups whose waiters to wake.
    pub fire: Vec<u128>,
    /// Tasks to make dispatchable: (queue, id, priority, run_at).
    queued: Vec<(QueueIdx, u128, i32, u64)>,
    /// Tasks that became terminal: (queue, state, id, expires_at, holds a key).
    terminal: Vec<(QueueIdx, TaskState, u128, Option<u64>, bool)>,
    /// Idempotency keys of new tasks.
    idem: Vec<(Box<str>, u128)>,
    /// Groups that finished: (expires_at, id).
    pub group_expiry: Vec<(u64, u128)>,
    /// Transitions to count in the queues' `totals` once the round is durable
    /// (tasks that ended are counted from `terminal`, new ones from the round's
    /// `added`).
    tallies: Vec<(QueueIdx, Tally)>,
    /// Attempts settled in the round: their queue and run time (ms), observed in
    /// `StoreMetrics::run_seconds` once the round is durable.
    ran: Vec<(QueueIdx, u64)>,
    replies: Vec<Answer>,
    stop: Option<oneshot::Sender<()>>,
}

impl After {
    fn reply<T: Send + 'static>(&mut self, tx: Reply<T>, value: Result<T, StoreError>) {
        self.replies
            .push(Box::new(move |failed: Option<&CommitError>| {
                let value = match failed {
                    Some(e) => Err(e.clone().into()),
                    None => value,
                };
                let _ = tx.send(value);
            }));
    }
}

/// A transition counted in `QueueState::totals`.
#[derive(Clone, Copy)]
enum Tally {
    Retried,
    LeaseExpired,
}

/// Marks the store failed if the writer thread ends by a panic: every later write
/// is refused with a clear error, `/readyz` answers 503 and the server exits
/// non-zero, instead of callers finding a closed channel.
struct FailOnPanic(Arc<Shared>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the writer thread panicked; the store refuses writes until restarted");
            self.0.set_health(Health::Failed {
                detail: "the store's writer thread panicked; restart required".into(),
            });
        }
    }
}

fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Op>, mut log: Log) {
    let _guard = FailOnPanic(shared.clone());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the writer's runtime");
            shared.set_health(Health::Failed {
                detail: format!("cannot start the store's writer: {e}"),
            });
            return;
        }
    };
    rt.block_on(async move {
        let mut deferred: Vec<Op> = Vec::new();
        let mut next_purge_ms = 0u64;
        let mut memo = HealMemo::default();
        loop {
            let now = shared.now_ms();
            let next_due = shared.lock().next_due_ms().unwrap_or(u64::MAX);
            let sleep_ms = if deferred.is_empty() {
                next_due.saturating_sub(now).min(WRITER_TICK_MS_MAX)
            } else {
                0
            };
            let mut ops = std::mem::take(&mut deferred);
            if ops.is_empty() {
                match tokio::time::timeout(Duration::from_millis(sleep_ms), rx.recv()).await {
                    Ok(Some(op)) => ops.push(op),
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
            // A round is bounded in operations, in the tasks they carry and in their
            // bytes, so one commit never holds more than a few batches' worth.
            let mut tasks: usize = ops.iter().map(Op::tasks).sum();
            let mut bytes: usize = ops.iter().map(Op::bytes).sum();
            while ops.len() < WRITER_OPS_PER_COMMIT_MAX
                && tasks < WRITER_TASKS_PER_COMMIT_MAX
                && bytes < WRITER_BYTES_PER_COMMIT_MAX
            {
                match rx.try_recv() {
                    Ok(op) => {
                        tasks += op.tasks();
                        bytes += op.bytes();
                        ops.push(op);
                    }
                    Err(_) => break,
                }
            }
            let purge = now >= next_purge_ms;
            if purge {
                next_purge_ms = now + 1000;
            }
            match round(&shared, &mut log, ops, &mut deferred, purge) {
                Outcome::Next => {}
                Outcome::Stop => break,
                Outcome::Failed(CommitError::Outage { cause, detail }) => {
                    if heal(
                        &shared,
                        &mut log,
                        &mut rx,
                        &mut deferred,
                        &mut memo,
                        cause,
                        detail,
                    )
                    .await
                    {
                        break;
                    }
                }
                Outcome::Failed(CommitError::Fatal(detail)) => {
                    fail(&shared, &mut rx, &mut deferred, detail).await;
                    break;
                }
            }
            if purge {
                match collect(&shared, &mut log) {
                    Ok(()) => {}
                    // Nothing of the copy is applied; memory is as before it.
                    Err(CommitError::Outage { cause, detail }) => {
                        tracing::warn!(cause = cause.as_str(), error = %detail, "copying live tasks forward failed; retrying later");
                    }
                    Err(CommitError::Fatal(detail)) => {
                        fail(&shared, &mut rx, &mut deferred, detail).await;
                        break;
                    }
                }
            }
        }
    });
}

/// The log's garbage collection, between rounds. Deletes the oldest segments while
/// nothing points into them (every task whose frames they hold was removed by
/// retention or has newer frames). Only the oldest: deleting a newer segment first
/// could drop the frame that ended a task whose first frame an older segment still
/// holds, and recovery would find the task alive again. When the oldest segment is
/// mostly dead but pinned by a few live tasks (a long delay, a dead task kept, a
/// long retention), their frames are copied forward (`copy_forward`) so it can
/// go: a few long-lived tasks never pin the whole log behind them.
fn collect(shared: &Shared, log: &mut Log) -> Result<(), CommitError> {
    loop {
        let segments = log.segments();
        let Some((active, sealed)) = segments.split_last() else {
            return Ok(());
        };
        let Some(oldest) = sealed.first() else {
            return Ok(());
        };
        debug_assert!(oldest.seq < active.seq);
        let (refs, placed) = shared.lock().segs.get(oldest.seq);
        if refs == 0 {
            if let Err(e) = log.delete_segment(oldest.seq) {
                tracing::warn!(error = %e, segment = oldest.seq, "cannot delete a collected segment of the task log; retrying later");
                return Ok(());
            }
            shared.lock().segs.forget_through(oldest.seq);
            continue;
        }
        // Mostly dead: at most a quarter of the references it ever had are left.
        if refs.saturating_mul(4) > placed || sealed.len() < 2 {
            return Ok(());
        }
        return copy_forward(shared, log, oldest.seq);
    }
}

/// Copies the live tasks and groups of segment `seq` to the end of the log (a task
/// frame with its current record and payload; a group frame; the latest frame of
/// a queue config, a schedule or an API key), at most
/// `COPY_FORWARD_TASKS_MAX` per call, in a commit of their own. Runs between
/// rounds on the writer thread, so nothing else writes meanwhile; a lease taken
/// meanwhile changes nothing on disk.
fn copy_forward(shared: &Shared, log: &mut Log, seq: u32) -> Result<(), CommitError> {
    let Ok(disk) = shared.disk() else {
        return Ok(());
    };
    let mut tasks: Vec<(u128, super::state::TaskLoc)> = Vec::new();
    let mut groups: Vec<(u128, u64)> = Vec::new();
    let mut queues: Vec<(QueueIdx, String, QueueConfig)> = Vec::new();
    let mut schedules: Vec<Schedule> = Vec::new();
    let mut keys: Vec<StoredKey> = Vec::new();
    let scan = log.replay(
        Some(weir_log::Loc { seg: seq, off: 0 }),
        |loc, kind, meta, _| {
            if loc.seg != seq || tasks.len() >= COPY_FORWARD_TASKS_MAX {
                return Err(());
            }
            if kind == disk::KIND_SCHEDULE {
                if let Ok(Ok(sched)) = disk::schedule_frame(meta) {
                    let st = shared.lock();
                    if st.schedules.get(&sched.name).map(|(_, l)| *l) == Some(loc.to_u64()) {
                        schedules.push(sched);
                    }
                }
                return Ok(());
            }
            if kind == disk::KIND_KEY {
                // Only a key's latest frame; a revoked key's frames stay behind.
                if let Ok(Ok(key)) = disk::key_frame(meta) {
                    let st = shared.lock();
                    if st.keys.get(&key.id).map(|(_, l)| *l) == Some(loc.to_u64()) {
                        keys.push(key);
                    }
                }
                return Ok(());
            }
            if kind == disk::KIND_QUEUE {
                // Only the frame a live config points at; an unreadable one stays
                // where it is (and keeps its segment) rather than stop the scan.
                if let Ok((name, config)) = disk::queue_frame(meta) {
                    let st = shared.lock();
                    if let Some(&q) = st.queue_index.get(name.as_str()) {
                        if st.queues[q as usize].config_loc == Some(loc.to_u64()) {
                            queues.push((q, name, config));
                        }
                    }
                }
                return Ok(());
            }
            if meta.len() < 16 {
                return Ok(());
            }
            let id = u128::from_be_bytes(meta[0..16].try_into().expect("16 bytes"));
            let st = shared.lock();
            match kind {
                disk::KIND_TASK | disk::KIND_UPDATE => {
                    if let Some(l) = st.locs.get(id) {
                        if state::seg_of(l.first) == seq || state::seg_of(l.last) == seq {
                            tasks.push((id, l));
                        }
                    }
                }
                disk::KIND_GROUP => {
                    if let Some(&l) = st.group_locs.get(&id) {
                        if state::seg_of(l) == seq {
                            groups.push((id, l));
                        }
                    }
                }
                _ => {}
            }
            Ok(())
        },
    );
    match scan {
        // The callback stops the scan at the segment's end (or the batch's).
        Ok(()) | Err(weir_log::ReplayError::Callback(())) => {}
        Err(e) => {
            tracing::error!(error = %e, segment = seq, "cannot scan a segment of the task log to copy its live tasks forward");
            return Ok(());
        }
    }
    tasks.sort_unstable_by_key(|t| t.0);
    tasks.dedup_by_key(|t| t.0);
    groups.sort_unstable_by_key(|g| g.0);
    groups.dedup_by_key(|g| g.0);
    let mut batch = Batch::new(log);
    for (id, loc) in &tasks {
        match disk.task_at(*loc) {
            Ok((rec, payload)) => batch.copy_task(&rec, &payload),
            Err(super::ReadFail::Gone) => {}
            Err(super::ReadFail::Err(e)) => {
                tracing::error!(error = %e, task = %TaskId(*id), "cannot read a live task to copy it forward");
                return Ok(());
            }
        }
    }
    for (id, loc) in &groups {
        match disk.group_at(*loc) {
            Ok(g) => batch.group(*id, &g),
            Err(super::ReadFail::Gone) => {}
            Err(super::ReadFail::Err(e)) => {
                tracing::error!(error = %e, group = %TaskId(*id), "cannot read a group to copy it forward");
                return Ok(());
            }
        }
    }
    for (q, name, config) in &queues {
        batch.queue_config(*q, name, *config);
    }
    for sched in schedules {
        batch.schedule(sched);
    }
    for key in keys {
        batch.key(key);
    }
    if batch.is_empty() {
        return Ok(());
    }
    let placed = batch.commit(&shared.config.data_dir)?;
    tracing::debug!(
        segment = seq,
        tasks = tasks.len(),
        groups = groups.len(),
        "copied live frames forward"
    );
    apply(&mut shared.lock(), placed);
    Ok(())
}

/// How a round ended.
enum Outcome {
    Next,
    /// A `Stop` was processed.
    Stop,
    /// The commit failed; every op of the round was answered with the error.
    Failed(CommitError),
}

/// Most time between two attempts to reopen the store after an outage.
pub(crate) const HEAL_RETRY_MS_MAX: u64 = 2_000;
/// First pause between two attempts to reopen the store.
const HEAL_RETRY_MS_MIN: u64 = 50;
/// An outage that starts within this long of the last heal counts as a repeat:
/// the probe that said the cause had cleared was wrong (a quota, say), so writes
/// are held back longer each time instead of failing and reopening in a loop.
const HEAL_REPEAT_WINDOW_MS: u64 = 10_000;
/// Free space the store's disk must have again before writes resume after the
/// disk was full.
pub(crate) const DISK_FREE_BYTES_MIN: u64 = 4 * 1024 * 1024;

/// What the writer remembers of past outages, to back off when they repeat.
#[derive(Default)]
struct HealMemo {
    last_healed: Option<std::time::Instant>,
    hold_ms: u64,
}

/// Recovers from an outage without a restart. The failed round had already changed
/// the dispatch state in memory, so the state is rebuilt from the log (which holds
/// nothing of the failed round: the next commit writes over it), and what only
/// memory knew (leases, long-poll waiters) is carried over. Reads keep working
/// throughout; writes resume once the cause has cleared (free space is back, a file
/// can be opened). Until then every write answers `Unavailable` with the cause, and
/// attempts back off to `HEAL_RETRY_MS_MAX`. Returns true if a `Stop` arrived
/// meanwhile (it has been answered).
async fn heal(
    shared: &Arc<Shared>,
    log: &mut Log,
    rx: &mut mpsc::Receiver<Op>,
    deferred: &mut Vec<Op>,
    memo: &mut HealMemo,
    mut cause: Outage,
    mut detail: String,
) -> bool {
    let started = std::time::Instant::now();
    let repeat = memo
        .last_healed
        .is_some_and(|t| t.elapsed() < Duration::from_millis(HEAL_REPEAT_WINDOW_MS));
    memo.hold_ms = if repeat {
        (memo.hold_ms * 2)
            .max(HEAL_RETRY_MS_MIN)
            .min(shared.config.outage_hold_ms_max)
    } else {
        0
    };
    let hold = Duration::from_millis(memo.hold_ms);
    let mut pause = HEAL_RETRY_MS_MIN;
    let mut attempts = 0u32;
    let mut rebuilt = false;
    if !repeat {
        tracing::warn!(cause = cause.as_str(), error = %detail, "the store refuses writes; rebuilding its memory from the log, and writes resume when the cause clears");
    }
    loop {
        shared.set_health(Health::Outage {
            cause,
            detail: detail.clone(),
            retry_at_ms: shared.now_ms() + pause.max(hold.as_millis() as u64),
        });
        if !rebuilt {
            attempts += 1;
            match rebuild(shared, log) {
                Ok(()) => rebuilt = true,
                Err(CommitError::Fatal(d)) => {
                    fail(shared, rx, deferred, d).await;
                    return true;
                }
                Err(CommitError::Outage {
                    cause: c,
                    detail: d,
                }) => {
                    if attempts == 1 || c != cause {
                        tracing::warn!(cause = c.as_str(), error = %d, "rebuilding the store's memory failed; retrying");
                    }
                    (cause, detail) = (c, d);
                }
            }
        }
        if rebuilt && started.elapsed() >= hold && cleared(shared, cause) {
            shared.set_health(Health::Ok);
            memo.last_healed = Some(std::time::Instant::now());
            tracing::info!(
                cause = cause.as_str(),
                attempts,
                outage_ms = started.elapsed().as_millis() as u64,
                "the store takes writes again"
            );
            return false;
        }
        if refuse_for(shared, rx, deferred, Duration::from_millis(pause)).await {
            return true;
        }
        pause = (pause * 2).min(HEAL_RETRY_MS_MAX);
    }
}

/// Whether the cause of an outage looks gone: the probe that diagnoses an outage
/// no longer finds it.
fn cleared(shared: &Shared, cause: Outage) -> bool {
    cause == Outage::Io || diagnose(&shared.config.data_dir) != cause
}

/// After a fatal failure: answer every op with the failure until `Stop` (the
/// server exits on `Shared::fatal`; this keeps callers from hanging meanwhile).
async fn fail(
    shared: &Arc<Shared>,
    rx: &mut mpsc::Receiver<Op>,
    deferred: &mut Vec<Op>,
    detail: String,
) {
    tracing::error!(error = %detail, "the store failed; it refuses writes, and the server must restart so that recovery runs");
    shared.set_health(Health::Failed { detail });
    drop(shared.take_disk());
    while !refuse_for(
        shared,
        rx,
        deferred,
        Duration::from_millis(HEAL_RETRY_MS_MAX),
    )
    .await
    {}
}

/// Answers every op that arrives within `wait` with the store's refusal. Returns
/// true if a `Stop` arrived (it is answered).
async fn refuse_for(
    shared: &Shared,
    rx: &mut mpsc::Receiver<Op>,
    deferred: &mut Vec<Op>,
    wait: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + wait;
    let mut pending: Vec<Op> = std::mem::take(deferred);
    loop {
        for op in pending.drain(..) {
            if refuse(shared, op) {
                return true;
            }
        }
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(op)) => pending.push(op),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// Answers one op with the store's refusal; true if it was a `Stop`.
fn refuse(shared: &Shared, op: Op) -> bool {
    let e = || shared.refusal();
    match op {
        Op::Enqueue { reply, .. } => drop(reply.send(Err(e()))),
        Op::Settle { reply, .. } => drop(reply.send(Err(e()))),
        Op::Cancel { reply, .. } => drop(reply.send(Err(e()))),
        Op::Release { reply, .. } => drop(reply.send(Err(e()))),
        Op::CreateGroup { reply, .. } => drop(reply.send(Err(e()))),
        Op::CancelGroup { reply, .. } => drop(reply.send(Err(e()))),
        Op::DeleteQueue { reply, .. } => drop(reply.send(Err(e()))),
        Op::Configure { reply, .. } => drop(reply.send(Err(e()))),
        Op::PutSchedule { reply, .. } => drop(reply.send(Err(e()))),
        Op::DeleteSchedule { reply, .. } => drop(reply.send(Err(e()))),
        Op::ScheduleRan { reply, .. } => drop(reply.send(Err(e()))),
        Op::CreateKey { reply, .. } => drop(reply.send(Err(e()))),
        Op::DeleteKey { reply, .. } => drop(reply.send(Err(e()))),
        Op::KeyUsed { reply, .. } => drop(reply.send(Err(e()))),
        Op::Retry { reply, .. } => drop(reply.send(Err(e()))),
        Op::Delete { reply, .. } => drop(reply.send(Err(e()))),
        Op::Finalize { records } => requeue(shared, records),
        Op::Stop { reply } => {
            let _ = reply.send(());
            return true;
        }
    }
    false
}

/// Puts back tasks the lease path took out to end (dead past their deadline, or
/// canceled with their group) when that cannot be written now: they are pending on
/// disk, so they go back to pending, and the lease path judges them again once
/// writes resume. A task already in an index is left alone: the state was rebuilt
/// from disk since it was taken out, and has it pending again.
pub(super) fn requeue(shared: &Shared, records: Vec<TaskRecord>) {
    let now = shared.now_ms();
    let mut st = shared.lock();
    for rec in records {
        let id = rec.id.0;
        let q = st.intern(&rec.queue);
        let indexed = st.leases.contains_key(&id)
            || st.scheduled.contains_key(&(rec.run_at_ms, id))
            || st.queue(q).pending.contains(rec.priority, id);
        if !indexed {
            st.insert_queued(q, id, rec.priority, rec.run_at_ms.min(now), now);
        }
    }
}

/// Rebuilds the state from the log and swaps it in.
fn rebuild(shared: &Shared, log: &mut Log) -> Result<(), CommitError> {
    let outage = |e: StoreError| match e {
        StoreError::Unavailable { cause, detail, .. } => CommitError::Outage { cause, detail },
        other => CommitError::Outage {
            cause: Outage::Io,
            detail: other.to_string(),
        },
    };
    let now = shared.now_ms();
    let leased: std::collections::HashSet<u128> = shared.lock().leases.keys().copied().collect();
    let (mut fresh, kept) = load(log, &shared.config.data_dir, now, &leased).map_err(outage)?;
    let mut st = shared.lock();
    carry_over(&mut st, &mut fresh, &kept);
    *st = fresh;
    Ok(())
}

/// Moves what only memory knows from the old state into one rebuilt from disk:
/// the queues (even those without tasks) and their long-poll `Notify`s, the lease
/// long-polls parked on names that are no queue, task and group waiters, and
/// every lease whose task the rebuilt state has pending (a lease is
/// not durable, so on disk a leased task is pending) or, in `kept`, active with a
/// cancel requested. Leases settled in the failed commit are gone: their tasks are
/// pending again and will be delivered again (at least once).
fn carry_over(old: &mut State, fresh: &mut State, kept: &[TaskId]) {
    let mut map = Vec::with_capacity(old.queues.len());
    for q in &old.queues {
        if q.name.is_empty() {
            // A deleted queue's slot: no lease refers to it.
            map.push(QueueIdx::MAX);
            continue;
        }
        let i = fresh.intern(&q.name);
        fresh.queues[i as usize].notify = q.notify.clone();
        fresh.queues[i as usize].totals = q.totals;
        map.push(i);
    }
    fresh.parked = std::mem::take(&mut old.parked);
    fresh.parked_overflow = old.parked_overflow.clone();
    fresh.waiters = std::mem::take(&mut old.waiters);
    let kept: std::collections::HashSet<u128> = kept.iter().map(|t| t.0).collect();
    for (id, mut lease) in old.leases.drain() {
        let q = map
            .get(lease.queue as usize)
            .copied()
            .unwrap_or(QueueIdx::MAX);
        if q == QueueIdx::MAX {
            debug_assert!(false, "a lease on a deleted queue");
            continue;
        }
        lease.queue = q;
        if kept.contains(&id) {
            lease.cancel_requested = true;
            if let Some(r) = lease.record.as_mut() {
                r.cancel_requested = true;
            }
        } else if fresh.queues[q as usize].pending.remove(lease.priority, id) {
            fresh.count(q, id, Some((TaskState::Pending, 0)), None);
        } else {
            continue;
        }
        fresh.count(q, id, None, Some((TaskState::Active, lease.listed_ms())));
        if lease.expires_ms != u64::MAX {
            fresh.lease_deadlines.insert((lease.expires_ms, id));
        }
        fresh.leases.insert(id, lease);
    }
}

/// Changes to named records (schedules, API keys) planned in a round, over the
/// state's map of them: a second op on one name in a round builds on the first.
struct Planned<T> {
    changed: HashMap<String, Option<T>>,
}

impl<T> Default for Planned<T> {
    fn default() -> Planned<T> {
        Planned {
            changed: HashMap::new(),
        }
    }
}

impl<T: Clone> Planned<T> {
    fn current(&self, held: &BTreeMap<String, (T, u64)>, name: &str) -> Option<T> {
        match self.changed.get(name) {
            Some(planned) => planned.clone(),
            None => held.get(name).map(|(s, _)| s.clone()),
        }
    }

    /// How many there are with the round's changes.
    fn count(&self, held: &BTreeMap<String, (T, u64)>) -> usize {
        let mut n = held.len();
        for (name, s) in &self.changed {
            match (held.contains_key(name), s.is_some()) {
                (false, true) => n += 1,
                (true, false) => n -= 1,
                _ => {}
            }
        }
        n
    }

    fn set(&mut self, name: String, s: Option<T>) {
        self.changed.insert(name, s);
    }
}

/// Marks the store unhealthy after a failed commit, before any caller hears of the
/// failure, so that none sees a ready store after.
fn commit_failed(shared: &Shared, e: &CommitError, now: u64) {
    tracing::error!(error = ?e, "group commit failed");
    shared.set_health(match e {
        CommitError::Outage { cause, detail } => Health::Outage {
            cause: *cause,
            detail: detail.clone(),
            retry_at_ms: now + HEAL_RETRY_MS_MIN,
        },
        CommitError::Fatal(detail) => Health::Failed {
            detail: detail.clone(),
        },
    });
}

/// One group commit.
fn round(
    shared: &Shared,
    log: &mut Log,
    ops: Vec<Op>,
    deferred: &mut Vec<Op>,
    purge: bool,
) -> Outcome {
    let Ok(disk) = shared.disk() else {
        // Only `fail` takes the log away, and it runs in this thread; answer
        // rather than panic if that ever breaks.
        debug_assert!(false, "a round without a log");
        for op in ops {
            if refuse(shared, op) {
                return Outcome::Stop;
            }
        }
        return Outcome::Next;
    };
    let disk = &*disk;
    let now = shared.now_ms();
    let mut batch = Batch::new(log);
    let mut after = After::default();
    let mut woken: Vec<Arc<Notify>> = Vec::new();
    let mut deletes: Vec<(String, Reply<()>)> = Vec::new();
    // New tasks planned per queue: checked against the queues' limits while
    // planning, and the queues' `enqueued` totals once the round is durable.
    let mut added: HashMap<QueueIdx, u64> = HashMap::new();
    // Deleted queues whose config must end on disk too.
    let mut ended: Vec<(String, Reply<()>)> = Vec::new();

    // Reads of the log happen first, so the lock is held only for memory work.
    let pre: Vec<Pre> = ops.iter().map(|op| pre_read(shared, op)).collect();

    {
        let mut st = shared.lock();
        st.promote_due(now, &mut woken);
        expire_leases(&mut st, &mut batch, &mut after, now);
        let mut round_idem: HashMap<(QueueIdx, String), (TaskId, TaskState)> = HashMap::new();
        let mut configs: HashMap<QueueIdx, QueueConfig> = HashMap::new();
        let mut planned = Planned::<Schedule>::default();
        let mut planned_keys = Planned::<StoredKey>::default();
        for (op, pre) in ops.into_iter().zip(pre) {
            match op {
                Op::Enqueue {
                    queue,
                    items,
                    reply,
                } => {
                    let existing = match pre {
                        Pre::Existing(e) => e,
                        _ => unreachable!("enqueue pre-read"),
                    };
                    let res = plan_enqueue(
                        shared,
                        &mut st,
                        &mut batch,
                        &mut after,
                        &mut round_idem,
                        &mut added,
                        &queue,
                        items,
                        existing,
                        now,
                    );
                    after.reply(reply, res);
                }
                Op::Settle { items, reply } => {
                    let res = items
                        .into_iter()
                        .map(|item| plan_settle(shared, &mut st, &mut batch, &mut after, item, now))
                        .collect();
                    after.reply(reply, Ok(res));
                }
                Op::Release {
                    id,
                    lease_id,
                    reply,
                } => {
                    let res = plan_release(&mut st, &mut batch, &mut after, id, lease_id, now);
                    after.reply(reply, res);
                }
                Op::Cancel { id, reply } => {
                    let rec = match pre {
                        Pre::Record(r) => *r,
                        _ => unreachable!("cancel pre-read"),
                    };
                    match plan_cancel(&mut st, &mut batch, &mut after, id, rec, now) {
                        Some(res) => after.reply(reply, res),
                        None => deferred.push(Op::Cancel { id, reply }),
                    }
                }
                Op::Finalize { records } => {
                    for rec in records {
                        debug_assert!(rec.state.is_terminal());
                        let q = st.intern(&rec.queue);
                        finish(&mut batch, &mut after, q, &rec);
                    }
                }
                Op::CreateGroup {
                    id,
                    queue,
                    fail_fast,
                    retention_ms,
                    items,
                    reply,
                } => {
                    let members: Vec<u128> = items.iter().map(|p| p.record.id.0).collect();
                    let existing = vec![None; items.len()];
                    let res = plan_enqueue(
                        shared,
                        &mut st,
                        &mut batch,
                        &mut after,
                        &mut round_idem,
                        &mut added,
                        &queue,
                        items,
                        existing,
                        now,
                    );
                    let res = res.map(|_| {
                        let record = disk::GroupRecord {
                            queue,
                            fail_fast,
                            state: weir_core::GroupState::Running.index(),
                            canceled_by_request: false,
                            created_ms: now,
                            finished_ms: None,
                            retention_ms,
                            members: members.clone(),
                        };
                        batch.group(id.0, &record);
                        let tally = GroupTally {
                            total: members.len() as u32,
                            fail_fast,
                            ..GroupTally::default()
                        };
                        let done = vec![false; members.len()];
                        st.groups.insert(id.0, groups::open(record, done, tally));
                        GroupCreated {
                            id,
                            task_ids: members.into_iter().map(TaskId).collect(),
                        }
                    });
                    after.reply(reply, res);
                }
                Op::CancelGroup { id, reply } => {
                    let res = match groups::cancel(disk, &mut st, &mut batch, &mut after, id.0, now)
                    {
                        Ok(()) => Ok(()),
                        Err(Some(state)) => Err(StoreError::GroupTerminal(state)),
                        Err(None) => match group_in(disk, &st, id.0) {
                            Ok(Some(g)) => Err(StoreError::GroupTerminal(
                                weir_core::GroupState::from_index(g.state)
                                    .unwrap_or(weir_core::GroupState::Canceled),
                            )),
                            Ok(None) => Err(StoreError::GroupNotFound),
                            Err(e) => Err(e),
                        },
                    };
                    after.reply(reply, res);
                }
                Op::Configure {
                    queue,
                    patch,
                    reply,
                } => {
                    let limits = &shared.config.limits;
                    let res = st.try_intern(&queue, limits.queues_max).and_then(|q| {
                        // A second change in the round builds on the first.
                        let old = configs.get(&q).copied().unwrap_or(st.queue(q).config);
                        let new = old.patched(&patch, limits.queue_tasks_max)?;
                        configs.insert(q, new);
                        batch.queue_config(q, &queue, new);
                        Ok(new)
                    });
                    after.reply(reply, res);
                }
                Op::PutSchedule {
                    name,
                    spec,
                    now_ms,
                    reply,
                } => {
                    let old = planned.current(&st.schedules, &name);
                    let limit = shared.config.limits.schedules_max;
                    let res = if old.is_none() && planned.count(&st.schedules) >= limit {
                        Err(StoreError::TooManySchedules { limit })
                    } else {
                        let s = Schedule {
                            name,
                            spec,
                            last_tick_ms: now_ms,
                            last_run_ms: old.as_ref().and_then(|o| o.last_run_ms),
                            last_task_id: old.as_ref().and_then(|o| o.last_task_id),
                        };
                        planned.set(s.name.clone(), Some(s.clone()));
                        batch.schedule(s.clone());
                        Ok(s)
                    };
                    after.reply(reply, res);
                }
                Op::DeleteSchedule { name, reply } => {
                    let found = planned.current(&st.schedules, &name).is_some();
                    if found {
                        planned.set(name.clone(), None);
                        batch.schedule_end(name);
                    }
                    after.reply(reply, Ok(found));
                }
                Op::ScheduleRan {
                    name,
                    tick_ms,
                    run,
                    reply,
                } => {
                    match planned.current(&st.schedules, &name) {
                        Some(mut s) if tick_ms > s.last_tick_ms => {
                            s.last_tick_ms = tick_ms;
                            if let Some((at, id)) = run {
                                s.last_run_ms = Some(at);
                                s.last_task_id = Some(id);
                            }
                            planned.set(name, Some(s.clone()));
                            batch.schedule(s);
                        }
                        _ => {}
                    }
                    after.reply(reply, Ok(()));
                }
                Op::CreateKey { id, record, reply } => {
                    let limit = shared.config.limits.keys_max;
                    let res = if planned_keys.current(&st.keys, &id).is_some() {
                        Err(StoreError::KeyExists)
                    } else if planned_keys.count(&st.keys) >= limit {
                        Err(StoreError::TooManyKeys { limit })
                    } else {
                        let k = StoredKey {
                            id,
                            record,
                            last_used_ms: None,
                        };
                        planned_keys.set(k.id.clone(), Some(k.clone()));
                        batch.key(k);
                        Ok(())
                    };
                    after.reply(reply, res);
                }
                Op::DeleteKey { id, reply } => {
                    let found = planned_keys.current(&st.keys, &id).is_some();
                    if found {
                        planned_keys.set(id.clone(), None);
                        batch.key_end(id);
                    }
                    after.reply(reply, Ok(found));
                }
                Op::KeyUsed { id, at_ms, reply } => {
                    // A frame only when last use moves forward; a revoked or
                    // unknown key stays so.
                    match planned_keys.current(&st.keys, &id) {
                        Some(mut k) if k.last_used_ms.is_none_or(|l| at_ms > l) => {
                            k.last_used_ms = Some(at_ms);
                            planned_keys.set(id, Some(k.clone()));
                            batch.key(k);
                        }
                        _ => {}
                    }
                    after.reply(reply, Ok(()));
                }
                Op::Retry { ids, scope, reply } => {
                    let mut reopened = Vec::new();
                    let mut retried = Vec::new();
                    let finished = Finished::new(disk, ids, pre, scope.get(), now);
                    let res =
                        finished.each(&mut st, TransitionError::NotRetryable, |st, q, rec| {
                            plan_retry(st, &mut reopened, &mut retried, q, rec, now)
                        });
                    batch.reopen(&reopened);
                    for (q, rec) in &retried {
                        batch.update(rec);
                        after
                            .queued
                            .push((*q, rec.id.0, rec.priority, rec.run_at_ms));
                    }
                    after.reply(reply, Ok(res));
                }
                Op::Delete { ids, scope, reply } => {
                    let mut purged = Vec::new();
                    let finished = Finished::new(disk, ids, pre, scope.get(), now);
                    let res = finished.each(&mut st, TransitionError::NotFinished, |st, q, rec| {
                        purged.push(remove_finished(st, q, &rec));
                        Ok(())
                    });
                    batch.purge(&purged);
                    after.reply(reply, Ok(res));
                }
                Op::DeleteQueue { queue, reply } => deletes.push((queue, reply)),
                Op::Stop { reply } => after.stop = Some(reply),
            }
        }
        groups::process(disk, &mut st, &mut batch, &mut after, Vec::new(), now);
        if purge {
            purge_expired(disk, &mut st, &mut batch, now);
        }
    }
    for n in woken.drain(..) {
        n.notify_waiters();
    }

    // Tests inject an outage at a commit: nothing is written, as when the write
    // fails before anything reached the log.
    #[cfg(test)]
    let injected = !batch.is_empty()
        && shared
            .inject_outage
            .swap(false, std::sync::atomic::Ordering::SeqCst);
    #[cfg(not(test))]
    let injected = false;
    let (failure, placed) = if batch.is_empty() {
        (None, Vec::new())
    } else if injected {
        #[cfg(test)]
        batch.discard();
        (
            Some(CommitError::Outage {
                cause: Outage::Io,
                detail: "injected".into(),
            }),
            Vec::new(),
        )
    } else {
        let started = std::time::Instant::now();
        let res = batch.commit(&shared.config.data_dir);
        (shared.metrics.commit_seconds).observe(started.elapsed().as_secs_f64());
        match res {
            Ok(placed) => (None, placed),
            Err(e) => (Some(e), Vec::new()),
        }
    };
    if let Some(e) = &failure {
        // Nothing of this round is applied to memory or answered as done; `heal`
        // (or `fail`) rebuilds memory from what is durable. The health changes
        // before any caller hears of the failure, so none sees a ready store after.
        commit_failed(shared, e, now);
    } else {
        let mut st = shared.lock();
        // First where the new frames are, so that whoever finds a task below can
        // read it.
        apply(&mut st, placed);
        for (key, id) in after.idem.drain(..) {
            st.idem.insert(key, id);
        }
        for (q, id, priority, run_at) in after.queued.drain(..) {
            if st.insert_queued(q, id, priority, run_at, now) == TaskState::Pending {
                woken.push(st.queue(q).notify.clone());
            }
        }
        for (&q, &n) in &added {
            st.queue(q).totals.enqueued += n;
        }
        for &(q, tally) in &after.tallies {
            let totals = &mut st.queue(q).totals;
            match tally {
                Tally::Retried => totals.retried += 1,
                Tally::LeaseExpired => totals.lease_expired += 1,
            }
        }
        shared.metrics.ran(
            after
                .ran
                .iter()
                .map(|&(q, ms)| (&*st.queues[q as usize].name, ms)),
        );

        for (q, state, id, expires, keyed) in after.terminal.drain(..) {
            st.queue(q).totals.finish(state);
            st.count(q, id, None, Some((state, expires.unwrap_or(u64::MAX))));
            // Dead tasks too, never due (`u64::MAX`): an operator's delete finds them.
            st.expiry
                .insert((expires.unwrap_or(u64::MAX), id), (q, state, keyed));
            st.fire_waiters(id);
        }
        for gid in after.fire.drain(..) {
            st.fire_waiters(gid);
        }
        for (at, gid) in after.group_expiry.drain(..) {
            st.group_expiry.insert((at, gid));
        }
        // Last, once every task of the round is counted again.
        for (queue, reply) in deletes.drain(..) {
            match st.delete_queue(&queue) {
                Ok(true) => ended.push((queue, reply)),
                res => after.reply(reply, res.map(drop)),
            }
        }
    }
    // After a failed commit nothing is deleted; `reply` answers the failure.
    for (_, reply) in deletes {
        after.reply(reply, Ok(()));
    }
    woken.sort_by_key(|n| Arc::as_ptr(n) as usize);
    woken.dedup_by_key(|n| Arc::as_ptr(n) as usize);
    for n in woken {
        n.notify_waiters();
    }
    // The end of a deleted queue's config, in a commit of its own: whether the
    // queue could go was known only after this round's. If it fails, memory
    // (which deleted the queue) is rebuilt from the log, where it still is.
    let mut ending_failed = None;
    if !ended.is_empty() {
        let mut b = Batch::new(log);
        for (queue, _) in &ended {
            b.queue_end(queue);
        }
        let res = b.commit(&shared.config.data_dir).map(drop);
        if let Err(e) = &res {
            commit_failed(shared, e, now);
        }
        for (_, reply) in ended {
            let _ = reply.send(res.clone().map_err(StoreError::from));
        }
        ending_failed = res.err();
    }
    for r in after.replies {
        r(failure.as_ref());
    }
    if let Some(stop) = after.stop {
        let _ = stop.send(());
        return Outcome::Stop;
    }
    match failure.or(ending_failed) {
        Some(e) => Outcome::Failed(e),
        None => Outcome::Next,
    }
}

/// What an operation needed read from the log before the round took the lock.
enum Pre {
    None,
    /// For each enqueued item: the task its idempotency key points at.
    Existing(Vec<Option<TaskRecord>>),
    Record(Box<Result<Option<TaskRecord>, StoreError>>),
    Records(Vec<Result<Option<TaskRecord>, StoreError>>),
}

fn pre_read(shared: &Shared, op: &Op) -> Pre {
    match op {
        Op::Enqueue { queue, items, .. } => Pre::Existing(
            items
                .iter()
                .map(|p| {
                    let key = p.record.idempotency_key.as_deref()?;
                    let id = *shared.lock().idem.get(&state::idem_key(queue, key))?;
                    shared.record(TaskId(id)).ok()?
                })
                .collect(),
        ),
        Op::Cancel { id, .. } => Pre::Record(Box::new(shared.record(*id))),
        Op::Retry { ids, .. } | Op::Delete { ids, .. } => {
            Pre::Records(ids.iter().map(|&id| shared.record(id)).collect())
        }
        _ => Pre::None,
    }
}

/// Removes retained tasks and finished groups whose retention ran out (at most
/// `RETENTION_PURGE_BATCH_MAX` of each per round), and writes one purge frame for
/// each kind, so that recovery removes them too, whatever its clock says.
fn purge_expired(disk: &Disk, st: &mut State, batch: &mut Batch, now: u64) {
    let mut tasks = Vec::new();
    for _ in 0..RETENTION_PURGE_BATCH_MAX {
        let Some((&(at, id), &(q, state, keyed))) = st.expiry.first_key_value() else {
            break;
        };
        if at > now {
            break;
        }
        st.expiry.pop_first();
        if keyed {
            match record_in(disk, st, id) {
                Ok(Some(rec)) => {
                    if let Some(k) = &rec.idempotency_key {
                        st.idem.remove(&state::idem_key(&rec.queue, k));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, task = %TaskId(id), "cannot read a task retention removes; its idempotency key stays taken until restart")
                }
            }
        }
        st.forget_task(id);
        st.count(q, id, Some((state, at)), None);
        tasks.push((id, at));
    }
    batch.purge(&tasks);
    let mut groups = Vec::new();
    for _ in 0..RETENTION_PURGE_BATCH_MAX {
        let Some(&(at, gid)) = st.group_expiry.first() else {
            break;
        };
        if at > now {
            break;
        }
        st.group_expiry.pop_first();
        st.forget_group(gid);
        groups.push(gid);
    }
    batch.purge_groups(&groups);
}

/// The tasks of an operator's retry or delete, with what was read of them before
/// the round.
struct Finished<'a> {
    disk: &'a Disk,
    ids: Vec<TaskId>,
    reads: Vec<Result<Option<TaskRecord>, StoreError>>,
    scope: crate::Scope<'a>,
    now: u64,
}

impl<'a> Finished<'a> {
    fn new(disk: &'a Disk, ids: Vec<TaskId>, pre: Pre, scope: crate::Scope<'a>, now: u64) -> Self {
        let reads = match pre {
            Pre::Records(r) => r,
            _ => unreachable!("retry and delete pre-read their records"),
        };
        Finished {
            disk,
            ids,
            reads,
            scope,
            now,
        }
    }

    /// Applies `op` to each task that is finished and in scope; the others get
    /// their error (`not_finished` names a task that is not finished).
    fn each<T>(
        self,
        st: &mut State,
        not_finished: fn(TaskState) -> TransitionError,
        mut op: impl FnMut(&mut State, QueueIdx, TaskRecord) -> Result<T, StoreError>,
    ) -> Vec<Result<T, StoreError>> {
        let Finished {
            disk,
            ids,
            reads,
            scope,
            now,
        } = self;
        ids.into_iter()
            .zip(reads)
            .map(|(id, read)| {
                let (q, rec) = finished_record(disk, st, id, read, scope, now, not_finished)?;
                op(st, q, rec)
            })
            .collect()
    }
}

/// The finished task `id` is, for an operator's retry or delete: its queue and
/// its current record (`read` before the round, read again if it has changed since),
/// `NotFound` if unknown or outside `scope`, `Conflict` if not finished.
fn finished_record(
    disk: &Disk,
    st: &State,
    id: TaskId,
    read: Result<Option<TaskRecord>, StoreError>,
    scope: crate::Scope<'_>,
    now: u64,
    not_finished: fn(TaskState) -> TransitionError,
) -> Result<(QueueIdx, TaskRecord), StoreError> {
    let listed = |st: &State, rec: &TaskRecord| {
        st.queue_index
            .get(rec.queue.as_str())
            .filter(|&&q| {
                let at = rec.expires_at_ms().unwrap_or(u64::MAX);
                st.queues[q as usize].lists(rec.state, at, id.0)
            })
            .copied()
    };
    let mut rec = read?.ok_or(StoreError::NotFound)?;
    let mut q = rec.state.is_terminal().then(|| listed(st, &rec)).flatten();
    if q.is_none() {
        // Changed since it was read (or not finished): what memory and the log say now.
        rec = record_in(disk, st, id.0)?.ok_or(StoreError::NotFound)?;
        rec.state = current_state(st, &rec, now);
        q = rec.state.is_terminal().then(|| listed(st, &rec)).flatten();
    }
    if !scope.admits(&rec) {
        return Err(StoreError::NotFound);
    }
    if !rec.state.is_terminal() {
        return Err(not_finished(rec.state).into());
    }
    // A task that ended in this round: its count waits for the round's commit.
    let q = q.ok_or(StoreError::Conflict(not_finished(TaskState::Active)))?;
    Ok((q, rec))
}

/// Takes a finished task out of memory as retention would, and answers its purge
/// entry.
fn remove_finished(st: &mut State, q: QueueIdx, rec: &TaskRecord) -> (u128, u64) {
    let id = rec.id.0;
    let at = rec.expires_at_ms().unwrap_or(u64::MAX);
    st.expiry.remove(&(at, id));
    if let Some(k) = &rec.idempotency_key {
        let key = state::idem_key(&rec.queue, k);
        if st.idem.get(&key) == Some(&id) {
            st.idem.remove(&key);
        }
    }
    st.forget_task(id);
    st.count(q, id, Some((rec.state, at)), None);
    (id, at)
}

/// A finished task back to pending (`machine::retry`): out of its finished state
/// now, pending once the round is committed.
fn plan_retry(
    st: &mut State,
    reopened: &mut Vec<(u128, u64)>,
    retried: &mut Vec<(QueueIdx, TaskRecord)>,
    q: QueueIdx,
    mut rec: TaskRecord,
    now: u64,
) -> Result<TaskRecord, StoreError> {
    let (old, at) = (rec.state, rec.expires_at_ms().unwrap_or(u64::MAX));
    machine::retry(&mut rec, now)?;
    st.expiry.remove(&(at, rec.id.0));
    st.count(q, rec.id.0, Some((old, at)), None);
    reopened.push((rec.id.0, at));
    retried.push((q, rec.clone()));
    Ok(rec)
}

/// The state a reader would see for a record, given memory.
fn current_state(st: &State, rec: &TaskRecord, now: u64) -> TaskState {
    if rec.state.is_terminal() {
        rec.state
    } else if st.leases.contains_key(&rec.id.0) {
        TaskState::Active
    } else if rec.state == TaskState::Scheduled && rec.run_at_ms <= now {
        TaskState::Pending
    } else {
        rec.state
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_enqueue(
    shared: &Shared,
    st: &mut State,
    batch: &mut Batch,
    after: &mut After,
    round_idem: &mut HashMap<(QueueIdx, String), (TaskId, TaskState)>,
    added: &mut HashMap<QueueIdx, u64>,
    queue: &str,
    items: Vec<Prepared>,
    existing: Vec<Option<TaskRecord>>,
    now: u64,
) -> Result<Vec<Enqueued>, StoreError> {
    let q = st.try_intern(queue, shared.config.limits.queues_max)?;
    let limit = shared.config.limits.queue_tasks_max;
    let c = st.queue(q).counts;
    let held = c[TaskState::Scheduled.index()]
        + c[TaskState::Pending.index()]
        + c[TaskState::Active.index()];
    let new = existing.iter().filter(|e| e.is_none()).count() as u64;
    let added_q = added.get(&q).copied().unwrap_or(0);
    if held + added_q + new > limit {
        return Err(StoreError::QueueFull {
            queue: queue.to_owned(),
            limit,
            retry_after_ms: 1000,
        });
    }
    if let Some(max_pending) = st.queue(q).config.max_pending {
        let waiting = c[TaskState::Scheduled.index()] + c[TaskState::Pending.index()];
        if waiting + added_q + new > max_pending {
            return Err(StoreError::QueueFull {
                queue: queue.to_owned(),
                limit: max_pending,
                retry_after_ms: 1000,
            });
        }
    }
    let mut out = Vec::with_capacity(items.len());
    for (p, old) in items.into_iter().zip(existing) {
        let rec = &p.record;
        if let Some(key) = &rec.idempotency_key {
            if let Some(&(id, state)) = round_idem.get(&(q, key.clone())) {
                out.push(Enqueued {
                    id,
                    state,
                    created: false,
                });
                continue;
            }
            if let Some(old) = old {
                out.push(Enqueued {
                    id: old.id,
                    state: current_state(st, &old, now),
                    created: false,
                });
                continue;
            }
            round_idem.insert((q, key.clone()), (rec.id, rec.state));
            after.idem.push((state::idem_key(queue, key), rec.id.0));
        }
        batch.new_task(rec.id.0, &p.meta, &p.payload);
        *added.entry(q).or_default() += 1;
        after
            .queued
            .push((q, rec.id.0, rec.priority, rec.run_at_ms));
        out.push(Enqueued {
            id: rec.id,
            state: rec.state,
            created: true,
        });
    }
    Ok(out)
}

fn plan_settle(
    shared: &Shared,
    st: &mut State,
    batch: &mut Batch,
    after: &mut After,
    item: Settle,
    now: u64,
) -> Result<TaskState, StoreError> {
    let (id, lease_id) = match &item {
        Settle::Ack { id, lease_id, .. } | Settle::Fail { id, lease_id, .. } => (*id, *lease_id),
    };
    let (q, mut rec) = st
        .take_held_lease(id.0, lease_id.0)
        .ok_or(StoreError::StaleLease)?;
    if let Some(started) = rec.started_ms {
        after.ran.push((q, now.saturating_sub(started)));
    }
    let next = match item {
        Settle::Ack { result, .. } => machine::complete(&mut rec, result.map(|b| b.to_vec()), now)?,
        Settle::Fail { error, retry, .. } => {
            let unit: f64 = rand::thread_rng().gen();
            machine::fail(&mut rec, error, retry, &shared.config.backoff, unit, now)?
        }
    };
    let next = groups::cancel_if_closed(st, &mut rec, next, now)?;
    if next.is_terminal() {
        finish(batch, after, q, &rec);
    } else {
        debug_assert_eq!(next, TaskState::Scheduled);
        after.tallies.push((q, Tally::Retried));
        batch.update(&rec);
        after.queued.push((q, id.0, rec.priority, rec.run_at_ms));
    }
    Ok(next)
}

fn plan_release(
    st: &mut State,
    batch: &mut Batch,
    after: &mut After,
    id: TaskId,
    lease_id: LeaseId,
    now: u64,
) -> Result<TaskState, StoreError> {
    let (q, mut rec) = st
        .take_held_lease(id.0, lease_id.0)
        .ok_or(StoreError::StaleLease)?;
    let next = machine::release(&mut rec, now)?;
    let next = groups::cancel_if_closed(st, &mut rec, next, now)?;
    if next.is_terminal() {
        finish(batch, after, q, &rec);
    } else {
        // The disk record was never told of this attempt, so it needs no write.
        after
            .queued
            .push((q, id.0, rec.priority, now.min(rec.run_at_ms)));
    }
    Ok(next)
}

/// `None` when the task is changing state in this very round (acked, failed or
/// finalized but not yet committed): the cancel is retried next round.
fn plan_cancel(
    st: &mut State,
    batch: &mut Batch,
    after: &mut After,
    id: TaskId,
    rec: Result<Option<TaskRecord>, StoreError>,
    now: u64,
) -> Option<Result<TaskRecord, StoreError>> {
    let mut rec = match rec {
        Err(e) => return Some(Err(e)),
        Ok(None) => return Some(Err(StoreError::NotFound)),
        Ok(Some(r)) => r,
    };
    if rec.state.is_terminal() {
        return Some(Err(machine::TransitionError::Terminal(rec.state).into()));
    }
    if let Some(lease) = st.leases.get_mut(&id.0) {
        lease.cancel_requested = true;
        let active = match &mut lease.record {
            Some(r) => {
                r.cancel_requested = true;
                r.clone()
            }
            None => {
                let mut r = rec.clone();
                r.state = TaskState::Active;
                r.cancel_requested = true;
                r
            }
        };
        // Durable, so that a restart ends the task canceled rather than re-running
        // it. The record written is the one on disk (the attempt not counted), as
        // for any leased task.
        let mut on_disk = rec;
        on_disk.cancel_requested = true;
        batch.update(&on_disk);
        // A worker watching this lease learns of the cancel at once.
        after.fire.push(id.0);
        return Some(Ok(active));
    }
    let q = st.intern(&rec.queue);
    if !st.remove_queued(q, id.0, rec.priority, rec.run_at_ms) {
        return None;
    }
    match machine::cancel(&mut rec, now) {
        Ok(machine::Cancel::Canceled) => {
            finish(batch, after, q, &rec);
            Some(Ok(rec))
        }
        Ok(machine::Cancel::Requested) => unreachable!("a queued task is not active"),
        Err(e) => Some(Err(e.into())),
    }
}

fn expire_leases(st: &mut State, batch: &mut Batch, after: &mut After, now: u64) {
    while let Some(&(at, id)) = st.lease_deadlines.first() {
        if at > now {
            break;
        }
        // Every deadline belongs to a filled lease (see `State::take_lease` and the
        // lease path); if that ever breaks, drop the stray entry rather than loop.
        let Some(lease) = st.take_lease(id) else {
            debug_assert!(false, "lease deadline without its lease");
            st.lease_deadlines.remove(&(at, id));
            tracing::error!(task = %TaskId(id), "lease deadline without its lease; dropped");
            continue;
        };
        let Some(mut rec) = lease.record else {
            debug_assert!(false, "deadline on a lease that was never filled");
            tracing::error!(task = %TaskId(id), "deadline on an unfilled lease; dropped");
            continue;
        };
        after.tallies.push((lease.queue, Tally::LeaseExpired));
        let res = machine::lease_expired(&mut rec, now)
            .and_then(|next| groups::cancel_if_closed(st, &mut rec, next, now));
        match res {
            Ok(next) if next.is_terminal() => {
                finish(batch, after, lease.queue, &rec);
            }
            Ok(_) => {
                after.tallies.push((lease.queue, Tally::Retried));
                batch.update(&rec);
                after
                    .queued
                    .push((lease.queue, id, rec.priority, rec.run_at_ms));
            }
            Err(e) => {
                tracing::error!(error = %e, task = %rec.id, "lease expiry of a task that is not active")
            }
        }
    }
}

/// Ends a task: writes it terminal, counts it after the commit, and tells its group.
/// Its payload stays until retention removes the task.
pub(crate) fn finish(batch: &mut Batch, after: &mut After, q: QueueIdx, rec: &TaskRecord) {
    debug_assert!(rec.state.is_terminal());
    batch.update(rec);
    after.terminal.push((
        q,
        rec.state,
        rec.id.0,
        rec.expires_at_ms(),
        rec.idempotency_key.is_some(),
    ));
    if let Some(g) = rec.group {
        after.group_events.push(GroupEvent {
            group: g.0,
            member: rec.id.0,
            state: rec.state,
        });
    }
}
