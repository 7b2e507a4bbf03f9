//! The embedded store (the default backend): an append-only task log on local disk
//! (`weir_log`) for durability, in-memory indexes (`state`) for dispatch and for
//! where each task's frames are, and one writer thread (`writer`) that turns
//! concurrent mutations into group commits — one write and one fdatasync for every
//! batch of requests that arrived while the previous fsync ran.
//!
//! Reads (get, the payloads of a lease) read the log directly from the calling task.
//! Leasing, heartbeats and timers touch only memory: leases are not durable, so after
//! a crash active tasks come back pending without losing an attempt.

mod disk;
mod groups;
mod state;
mod writer;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use weir_core::machine::{self, Start};
use weir_core::{Backoff, ConfigPatch, Limits, QueueConfig, TaskId, TaskRecord, TaskState};
use weir_log::{Log, LogConfig};

use crate::clock::{Clock, SystemClock};
use crate::{
    Broker, EnqueueTask, Enqueued, GroupCreated, GroupView, Heartbeat, LeaseId, Leased, Outage,
    QueueInfo, Schedule, Scope, Settle, StoreError, StoredKey, TaskPage, TaskView,
};
use disk::GroupRecord;
use state::{Lease, State, TaskLoc};
use writer::{Batch, Op, Prepared};

/// Most operations one writer round takes into a single commit.
const WRITER_OPS_PER_COMMIT_MAX: usize = 4096;
/// Most tasks the operations of one writer round may carry (a round can exceed it by
/// one batch: the op that crosses it is still taken).
const WRITER_TASKS_PER_COMMIT_MAX: usize = 16_384;
/// Most payload and result bytes the operations of one writer round may carry (a
/// round can exceed it by one op), bounding the round's buffer.
const WRITER_BYTES_PER_COMMIT_MAX: usize = 32 * 1024 * 1024;
/// Capacity of the channel into the writer; senders wait when it is full.
const WRITER_QUEUE_OPS_MAX: usize = 4096;
/// Longest the writer sleeps between timer checks, so leases taken by request
/// tasks (which do not wake the writer) expire at most this late.
const WRITER_TICK_MS_MAX: u64 = 100;
/// Most expired tasks removed in one writer round.
const RETENTION_PURGE_BATCH_MAX: usize = 4096;
/// Most live tasks the log's GC copies forward between two rounds.
const COPY_FORWARD_TASKS_MAX: usize = 4096;
/// Most times a reader looks a task up again when the segment it was told to read
/// was collected meanwhile (the task moved on to a newer frame).
const READ_RETRIES_MAX: usize = 4;

/// Default size of one segment file of the task log.
pub const SEGMENT_BYTES_DEFAULT: u64 = weir_log::SEGMENT_BYTES_DEFAULT;
/// Smallest segment accepted: it must hold the largest frame (a 1 MiB payload or
/// result with its record) with room to spare.
pub const SEGMENT_BYTES_MIN: u64 = 4 * 1024 * 1024;
/// Largest segment accepted (the log addresses offsets with 32 bits).
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Name of the task log's directory inside the data directory.
const LOG_DIR: &str = "log";
/// The data directory's lock file: one process opens a store at a time.
const LOCK_FILE: &str = "weir.lock";

/// Configuration of the embedded store.
#[derive(Clone)]
pub struct EmbeddedConfig {
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub backoff: Backoff,
    /// Added to a task's `timeout_ms` to form its lease.
    pub lease_grace_ms: u64,
    /// Size of each segment file of the task log, in bytes.
    pub segment_bytes: u64,
    pub clock: Arc<dyn Clock>,
    /// Longest that writes are held back after an outage that repeats soon after
    /// the last heal (see `writer::heal`).
    pub outage_hold_ms_max: u64,
    /// Tests: the file layer under the log (faults, simulated crashes).
    pub storage: Option<Arc<dyn weir_log::Storage>>,
}

impl EmbeddedConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> EmbeddedConfig {
        EmbeddedConfig {
            data_dir: data_dir.into(),
            limits: Limits::default(),
            backoff: Backoff::default(),
            lease_grace_ms: weir_core::limits::LEASE_GRACE_MS_DEFAULT,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            clock: Arc::new(SystemClock),
            outage_hold_ms_max: writer::HEAL_RETRY_MS_MAX,
            storage: None,
        }
    }
}

/// The read side of the task log.
pub(crate) struct Disk {
    pub log: weir_log::Reader,
}

impl Disk {
    fn frame(&self, loc: u64) -> Result<weir_log::Frame, ReadFail> {
        self.log
            .read(weir_log::Loc::from_u64(loc))
            .map_err(|e| match e {
                weir_log::ReadError::Gone { .. } => ReadFail::Gone,
                e @ weir_log::ReadError::Io { .. } => {
                    let cause = match &e {
                        weir_log::ReadError::Io { source, .. } => Outage::of_io(source),
                        _ => None,
                    };
                    ReadFail::Err(outage_or_internal("read the task log", cause, e))
                }
                e => ReadFail::Err(StoreError::bug(format!("the task log is corrupt: {e}"))),
            })
    }

    /// The task's latest record.
    fn record_at(&self, loc: TaskLoc) -> Result<TaskRecord, ReadFail> {
        let f = self.frame(loc.last)?;
        disk::task_record(&f.meta).map_err(|e| ReadFail::Err(internal("decode task", e)))
    }

    /// The task's latest record and its payload.
    fn task_at(&self, loc: TaskLoc) -> Result<(TaskRecord, Bytes), ReadFail> {
        let first = self.frame(loc.first)?;
        let record = if loc.last == loc.first {
            disk::task_record(&first.meta)
        } else {
            disk::task_record(&self.frame(loc.last)?.meta)
        };
        let record = record.map_err(|e| ReadFail::Err(internal("decode task", e)))?;
        Ok((record, first.payload))
    }

    fn group_at(&self, loc: u64) -> Result<GroupRecord, ReadFail> {
        let f = self.frame(loc)?;
        disk::group_frame(&f.meta)
            .map(|(_, g)| g)
            .map_err(|e| ReadFail::Err(internal("decode group", e)))
    }
}

/// Why a read of the log failed: `Gone` when the segment was collected after the
/// caller looked the task up (it has a newer frame: look again).
enum ReadFail {
    Gone,
    Err(StoreError),
}

/// Opens the task log in the data directory, after taking the directory's lock (one
/// process at a time), and refusing a data directory of the store's earlier layout
/// (fjall) with what to do about it.
fn open_log(
    config: &EmbeddedConfig,
    visit: Option<&mut weir_log::Visit<'_>>,
) -> Result<(Log, std::fs::File), StoreError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| outage_or_internal("create data dir", Outage::of_io(&e), e))?;
    if dir.join("keyspaces").exists() && dir.join("version").exists() {
        return Err(StoreError::bug(format!(
            "{} holds data of weir's earlier embedded store (fjall, before the task \
                 log), which this release cannot read. Drain it with the release that \
                 wrote it (let workers finish every task), or move the directory aside and \
                 start with an empty one; nothing in it is changed",
            dir.display()
        )));
    }
    let lock_path = dir.join(LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| outage_or_internal("open the data directory's lock", Outage::of_io(&e), e))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |_| {
            StoreError::bug(format!(
                "{} is in use by another weir process (it holds {})",
                dir.display(),
                lock_path.display()
            ))
        },
    )?;
    let mut cfg = LogConfig::new(dir.join(LOG_DIR));
    cfg.segment_bytes = config.segment_bytes;
    // Recovery reads task frames only up to their names: segment summaries keep
    // that much, not the records.
    cfg.summary_meta = Some(disk::recovery_meta_len);
    if let Some(storage) = &config.storage {
        cfg.storage = storage.clone();
        // Injected storage is for tests: storage calls in one fixed order.
        cfg.spare_in_background = false;
    }
    let log = Log::open_visiting(cfg, visit).map_err(|e| match &e {
        weir_log::OpenError::Io { source, .. } => {
            outage_or_internal("open the task log", Outage::of_io(source), e)
        }
        _ => StoreError::bug(format!("cannot open the task log: {e}")),
    })?;
    Ok((log, lock))
}

pub(crate) fn internal(context: &str, e: impl Into<crate::BoxError>) -> StoreError {
    StoreError::internal(context, e)
}

/// `Unavailable` for an error whose cause clears by itself, else `Internal`.
fn outage_or_internal(
    context: &str,
    cause: Option<Outage>,
    e: impl Into<crate::BoxError> + std::fmt::Display,
) -> StoreError {
    match cause {
        Some(cause @ (Outage::DiskFull | Outage::TooManyOpenFiles)) => StoreError::Unavailable {
            cause,
            detail: format!("{context}: {e}"),
            retry_after_ms: 1000,
        },
        _ => internal(context, e),
    }
}

/// Why a write failed when its error carries no errno we know: probe the two
/// shortages that clear by themselves.
pub(crate) fn diagnose(dir: &std::path::Path) -> Outage {
    if let Err(e) = std::fs::File::open(dir) {
        if let Some(cause @ (Outage::DiskFull | Outage::TooManyOpenFiles)) = Outage::of_io(&e) {
            return cause;
        }
    }
    match rustix::fs::statvfs(dir) {
        Ok(vfs) if vfs.f_bavail.saturating_mul(vfs.f_frsize) < writer::DISK_FREE_BYTES_MIN => {
            Outage::DiskFull
        }
        _ => Outage::Io,
    }
}

/// Whether the store takes writes, and if not, why.
#[derive(Clone, Debug)]
pub(crate) enum Health {
    Ok,
    /// A write failed for a cause that can clear (see `Outage`); the writer is
    /// reopening the store from disk and retries at `retry_at_ms`.
    Outage {
        cause: Outage,
        detail: String,
        retry_at_ms: u64,
    },
    /// An fsync failed (the kernel may have dropped written pages) or the writer
    /// died: only a restart, with recovery from disk, is safe.
    Failed {
        detail: String,
    },
}

/// `Shared::health_code` values, so the request path checks health without a lock.
const HEALTH_OK: u8 = 0;
const HEALTH_OUTAGE: u8 = 1;
const HEALTH_FAILED: u8 = 2;

/// State shared by request tasks and the writer thread.
pub(crate) struct Shared {
    /// The log's read side. `None` once the store failed fatally; readers then
    /// answer with the failure.
    disk: RwLock<Option<Arc<Disk>>>,
    pub state: Mutex<State>,
    pub config: EmbeddedConfig,
    /// Set when shutdown begins: long-polls stop waiting.
    pub closing: CancellationToken,
    /// Why writes are refused, if they are (`health_code` mirrors its kind).
    health: Mutex<Health>,
    health_code: AtomicU8,
    /// Fired once the store has failed fatally (`Health::Failed`).
    pub fatal: CancellationToken,
    /// Last issued id, to keep ids strictly increasing within this process.
    pub last_id: Mutex<u128>,
    /// The data directory's lock, held until the store is closed.
    lock: Mutex<Option<std::fs::File>>,
    /// What the writer measures (`StoreMetrics::commit_seconds`: one round's
    /// write and fdatasync).
    pub metrics: crate::StoreMetrics,
    /// Tests: the next non-empty commit fails as an outage, writing nothing.
    #[cfg(test)]
    pub inject_outage: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// The log's read side, or why there is none.
    pub fn disk(&self) -> Result<Arc<Disk>, StoreError> {
        let disk = self.disk.read().unwrap_or_else(|p| p.into_inner()).clone();
        disk.ok_or_else(|| self.refusal())
    }

    /// Takes the log away for good (the store failed).
    pub fn take_disk(&self) -> Option<Arc<Disk>> {
        self.disk.write().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The task's latest record (`None`: no such task), looked up again if the
    /// segment it was in was collected between the lookup and the read.
    pub fn record(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.read("task", id, |st| st.locs.get(id.0), Disk::record_at)
    }

    /// The task's latest record and its payload.
    pub fn task(&self, id: TaskId) -> Result<Option<(TaskRecord, Bytes)>, StoreError> {
        self.read("task", id, |st| st.locs.get(id.0), Disk::task_at)
    }

    /// A group's latest stored record.
    pub fn group_record(&self, id: TaskId) -> Result<Option<GroupRecord>, StoreError> {
        self.read(
            "group",
            id,
            |st| st.group_locs.get(&id.0).copied(),
            Disk::group_at,
        )
    }

    /// Looks `id` up under the lock (`None`: no such task or group), then reads it
    /// without the lock; looks it up again if its segment was collected in between.
    fn read<L, T>(
        &self,
        what: &str,
        id: TaskId,
        lookup: impl Fn(&State) -> Option<L>,
        read: impl Fn(&Disk, L) -> Result<T, ReadFail>,
    ) -> Result<Option<T>, StoreError> {
        let disk = self.disk()?;
        for _ in 0..READ_RETRIES_MAX {
            let Some(loc) = lookup(&self.lock()) else {
                return Ok(None);
            };
            match read(&disk, loc) {
                Ok(v) => return Ok(Some(v)),
                Err(ReadFail::Gone) => continue,
                Err(ReadFail::Err(e)) => return Err(e),
            }
        }
        Err(StoreError::bug(format!(
            "{what} {id} moved {READ_RETRIES_MAX} times while being read"
        )))
    }

    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_health(&self, health: Health) {
        let code = match &health {
            Health::Ok => HEALTH_OK,
            Health::Outage { .. } => HEALTH_OUTAGE,
            Health::Failed { .. } => HEALTH_FAILED,
        };
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        // Fatal is final: nothing heals a failed fsync but a restart.
        if matches!(*h, Health::Failed { .. }) {
            return;
        }
        *h = health;
        self.health_code.store(code, Ordering::SeqCst);
        drop(h);
        if code == HEALTH_FAILED {
            self.fatal.cancel();
        }
    }

    /// Ok if writes are taken now; else the error that says why not.
    pub fn write_gate(&self) -> Result<(), StoreError> {
        if self.health_code.load(Ordering::Relaxed) == HEALTH_OK {
            Ok(())
        } else {
            Err(self.refusal())
        }
    }

    /// The error for a call the store cannot serve now, from its health.
    pub fn refusal(&self) -> StoreError {
        match self.health() {
            Health::Outage {
                cause,
                detail,
                retry_at_ms,
            } => StoreError::Unavailable {
                cause,
                detail,
                retry_after_ms: retry_at_ms.saturating_sub(self.now_ms()).max(1000),
            },
            Health::Failed { detail } => StoreError::bug(detail),
            Health::Ok => StoreError::Unavailable {
                cause: Outage::Io,
                detail: "the store is recovering".into(),
                retry_after_ms: 1000,
            },
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug that already failed its request;
        // the state itself is still consistent between whole operations.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    /// A new time-ordered id, strictly greater than every id issued before it here.
    fn next_id(&self, now_ms: u64) -> TaskId {
        self.next_ids(now_ms, 1)
    }

    /// The first of `n` consecutive new ids (`first .. first + n`), all greater than
    /// every id issued before: one lock for a whole batch.
    fn next_ids(&self, now_ms: u64, n: usize) -> TaskId {
        let fresh = TaskId::new(now_ms, rand::thread_rng().gen::<u128>()).0;
        let mut last = self.last_id.lock().unwrap_or_else(|p| p.into_inner());
        let first = if fresh > *last { fresh } else { *last + 1 };
        *last = first + n.saturating_sub(1) as u128;
        TaskId(first)
    }
}

/// The embedded store. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct EmbeddedBroker {
    shared: Arc<Shared>,
    ops: mpsc::Sender<Op>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl EmbeddedBroker {
    /// Opens (or creates) the store and rebuilds the dispatch indexes from the log.
    pub fn open(config: EmbeddedConfig) -> Result<EmbeddedBroker, StoreError> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&config.segment_bytes) {
            return Err(StoreError::bug(format!(
                "segment size {} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX} bytes",
                config.segment_bytes
            )));
        }
        let started = std::time::Instant::now();
        let now = config.clock.now_ms();
        // One pass over the log: recovery checks each round and hands its frames to
        // the replay as it goes.
        let mut st = State::default();
        let mut replay = Replay::new(&mut st, now);
        let mut failed: Option<StoreError> = None;
        let mut visit = |loc: weir_log::Loc, kind: u8, meta: &[u8], _payload_len: u32| {
            replay.frame(loc, kind, meta).map_err(|e| failed = Some(e))
        };
        let opened = open_log(&config, Some(&mut visit));
        let (mut log, lock) = match (opened, failed) {
            (_, Some(e)) => return Err(e),
            (r, None) => r?,
        };
        let found = replay.finish();
        let (state, kept) =
            finish_load(&mut log, &config.data_dir, now, &HashSet::new(), st, found)?;
        debug_assert!(kept.is_empty(), "nothing is leased at open");
        tracing::info!(
            segments = log.segments().len(),
            tasks = state.locs.len(),
            recovered_ms = started.elapsed().as_millis() as u64,
            "recovered the task log"
        );
        let shared = Arc::new(Shared {
            disk: RwLock::new(Some(Arc::new(Disk { log: log.reader() }))),
            state: Mutex::new(state),
            config,
            closing: CancellationToken::new(),
            health: Mutex::new(Health::Ok),
            health_code: AtomicU8::new(HEALTH_OK),
            fatal: CancellationToken::new(),
            last_id: Mutex::new(0),
            lock: Mutex::new(Some(lock)),
            metrics: crate::StoreMetrics::default(),
            #[cfg(test)]
            inject_outage: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_OPS_MAX);
        let handle = writer::spawn(shared.clone(), rx, log)?;
        Ok(EmbeddedBroker {
            shared,
            ops: tx,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> Result<T, StoreError> {
        let gone = || match self.shared.health() {
            Health::Failed { detail } => StoreError::bug(detail),
            _ => StoreError::Closed,
        };
        self.shared.write_gate()?;
        let (tx, rx) = oneshot::channel();
        self.ops.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// The view of a task read from the log.
    fn view(&self, record: TaskRecord, payload: Bytes) -> TaskView {
        let now = self.shared.now_ms();
        let st = self.shared.lock();
        overlay(&st, record, payload, now)
    }
}

/// Applies what only memory knows (an active lease, a due promotion) to a record read
/// from disk.
fn overlay(st: &State, record: TaskRecord, payload: Bytes, now_ms: u64) -> TaskView {
    let (record, lease_expires_ms) = overlay_record(st, record, now_ms);
    let worker = st
        .leases
        .get(&record.id.0)
        .filter(|_| record.state == TaskState::Active)
        .and_then(|l| l.worker.as_deref().map(str::to_owned));
    TaskView {
        record,
        payload,
        lease_expires_ms,
        worker,
    }
}

/// The record as a reader sees it, and its lease expiry if active.
fn overlay_record(st: &State, mut record: TaskRecord, now_ms: u64) -> (TaskRecord, Option<u64>) {
    let mut lease_expires_ms = None;
    if !record.state.is_terminal() {
        if let Some(lease) = st.leases.get(&record.id.0) {
            match &lease.record {
                Some(active) => record = active.clone(),
                None => record.state = TaskState::Active,
            }
            record.cancel_requested |= lease.cancel_requested;
            lease_expires_ms = (lease.expires_ms != u64::MAX).then_some(lease.expires_ms);
        } else if record.state == TaskState::Scheduled && record.run_at_ms <= now_ms {
            record.state = TaskState::Pending;
        }
    }
    (record, lease_expires_ms)
}

/// Rebuilds the in-memory state from the log: where every task's frames are,
/// dispatch indexes, counts, idempotency keys, retention, open groups. Tasks whose
/// cancel was requested while they were active end canceled, except those in
/// `leased`: they still run under a lease the caller carries over, and are returned.
/// The frames this needs (canceled tasks, finished groups) are committed before the
/// state is returned.
pub(crate) fn load(
    log: &mut Log,
    dir: &std::path::Path,
    now_ms: u64,
    leased: &HashSet<u128>,
) -> Result<(State, Vec<TaskId>), StoreError> {
    let mut st = State::default();
    let found = replay(log, &mut st, now_ms)?;
    finish_load(log, dir, now_ms, leased, st, found)
}

/// The rest of `load`, once the frames are in `st`: `found` are the tasks the
/// replay found with a cancel request and no end.
fn finish_load(
    log: &mut Log,
    dir: &std::path::Path,
    now_ms: u64,
    leased: &HashSet<u128>,
    mut st: State,
    found: Vec<TaskId>,
) -> Result<(State, Vec<TaskId>), StoreError> {
    let disk = Disk { log: log.reader() };
    let (kept, to_cancel): (Vec<TaskId>, Vec<TaskId>) =
        found.into_iter().partition(|id| leased.contains(&id.0));
    let mut batch = Batch::new(log);
    finish_canceled(&disk, &mut st, &mut batch, to_cancel, now_ms)?;
    // Groups after the canceled tasks are final, so their tallies see them.
    let finished = groups::recover(&disk, &mut st)?;
    if !finished.is_empty() {
        groups::finish_recovered(&mut st, &mut batch, finished, now_ms);
    }
    if !batch.is_empty() {
        let placed = batch.commit(dir).map_err(StoreError::from)?;
        writer::apply(&mut st, placed);
    }
    // A queue whose every task was left out (past its retention) is no queue: only
    // queues with tasks or a config survive a restart. (Tasks `kept` for the caller's leases
    // are counted by `carry_over`, and their queue is one the caller has.)
    let kept_queues: HashSet<String> = kept
        .iter()
        .filter_map(|id| record_in(&disk, &st, id.0).ok().flatten())
        .map(|r| r.queue)
        .collect();
    let empty: Vec<String> = st
        .queues
        .iter()
        .filter(|q| !q.name.is_empty() && q.counts.iter().all(|&c| c == 0) && q.config.is_default())
        .map(|q| q.name.to_string())
        .filter(|name| !kept_queues.contains(name))
        .collect();
    for name in empty {
        st.delete_queue(&name)?;
    }
    Ok((st, kept))
}

/// Reads every frame of the log in order into `st`. A task's later frame replaces
/// what its earlier one put in the indexes; an update whose task frame was collected
/// (the task was removed by retention) is skipped; a task past its retention is
/// left out. Returns the tasks found with a cancel request and no end: they were
/// active when the server stopped, and end canceled.
/// Rebuilds `State` from the log's frames, in log order. A task's later frame
/// replaces what its earlier one put in the indexes; an update whose task frame was
/// collected (the task was removed by retention) is skipped, as are the entries of a
/// purge frame whose tasks were already collected. Tasks found with a cancel request
/// and no end were active when the server stopped: `finish` returns them, to end
/// canceled.
struct Replay<'a> {
    st: &'a mut State,
    now_ms: u64,
    // Only while replaying: where scheduled tasks are in the timer, which tasks wait
    // to be canceled, and when finished groups expire, so a later frame can take
    // them out again.
    scheduled_at: state::IdMap<u64>,
    to_cancel: HashSet<u128>,
    group_expires: state::IdMap<u64>,
}

impl<'a> Replay<'a> {
    fn new(st: &'a mut State, now_ms: u64) -> Replay<'a> {
        Replay {
            st,
            now_ms,
            scheduled_at: state::IdMap::default(),
            to_cancel: HashSet::new(),
            group_expires: state::IdMap::default(),
        }
    }

    fn frame(&mut self, loc: weir_log::Loc, kind: u8, meta: &[u8]) -> Result<(), StoreError> {
        let corrupt =
            |e: disk::Corrupt| StoreError::bug(format!("the task log is corrupt at {loc:?}: {e}"));
        match kind {
            disk::KIND_TASK | disk::KIND_UPDATE => {
                let s = disk::summary(meta).map_err(corrupt)?;
                let first = kind == disk::KIND_TASK;
                let known = self.st.locs.contains_key(&s.id);
                if !first && !known {
                    return Ok(());
                }
                let q = self.st.intern(s.queue);
                if known {
                    // Out of wherever its previous frame put it.
                    if self.st.queue(q).pending.remove(s.priority, s.id) {
                        self.st.count(q, s.id, Some((TaskState::Pending, 0)), None);
                    } else if let Some(at) = self.scheduled_at.remove(&s.id) {
                        self.st.scheduled.remove(&(at, s.id));
                        self.st
                            .count(q, s.id, Some((TaskState::Scheduled, at)), None);
                    } else if self.to_cancel.remove(&s.id) {
                    } else if s.state.is_terminal() {
                        // A copy of a terminal task: the same record again.
                        self.st.expiry.remove(&(s.expires_at_ms, s.id));
                        self.st
                            .count(q, s.id, Some((s.state, s.expires_at_ms)), None);
                    }
                }
                self.st.place_task(s.id, loc.to_u64(), first);
                if first {
                    if let Some(k) = s.idempotency_key {
                        self.st.idem.insert(state::idem_key(s.queue, k), s.id);
                    }
                }
                if s.state.is_terminal() {
                    self.st
                        .count(q, s.id, None, Some((s.state, s.expires_at_ms)));
                    // Dead tasks too, never due (`u64::MAX`): a purge entry finds them.
                    self.st.expiry.insert(
                        (s.expires_at_ms, s.id),
                        (q, s.state, s.idempotency_key.is_some()),
                    );
                } else if s.cancel_requested {
                    self.to_cancel.insert(s.id);
                } else if self
                    .st
                    .insert_queued(q, s.id, s.priority, s.run_at_ms, self.now_ms)
                    == TaskState::Scheduled
                {
                    self.scheduled_at.insert(s.id, s.run_at_ms);
                }
            }
            disk::KIND_GROUP => {
                let (id, g) = disk::group_frame(meta).map_err(corrupt)?;
                self.st.place_group(id, loc.to_u64());
                if let Some(f) = g.finished_ms {
                    let at = f.saturating_add(g.retention_ms);
                    self.st.group_expiry.insert((at, id));
                    self.group_expires.insert(id, at);
                }
            }
            disk::KIND_PURGE => {
                for (id, at) in disk::purge_entries(meta).map_err(corrupt)? {
                    // Unknown: its task frame was collected already.
                    if let Some((q, state, _)) = self.st.expiry.remove(&(at, id)) {
                        self.st.count(q, id, Some((state, at)), None);
                        self.st.forget_task(id);
                    }
                }
            }
            disk::KIND_REOPEN => {
                for (id, at) in disk::purge_entries(meta).map_err(corrupt)? {
                    if let Some((q, state, _)) = self.st.expiry.remove(&(at, id)) {
                        self.st.count(q, id, Some((state, at)), None);
                    }
                }
            }
            disk::KIND_QUEUE => {
                let (name, config) = disk::queue_frame(meta).map_err(corrupt)?;
                let q = self.st.intern(&name);
                self.st.place_config(q, config, Some(loc.to_u64()));
            }
            disk::KIND_SCHEDULE => match disk::schedule_frame(meta).map_err(corrupt)? {
                Ok(sched) => self.st.place_schedule(sched, loc.to_u64()),
                Err(name) => self.st.end_schedule(&name),
            },
            disk::KIND_KEY => match disk::key_frame(meta).map_err(corrupt)? {
                Ok(key) => self.st.place_key(key, loc.to_u64()),
                Err(id) => self.st.end_key(&id),
            },
            disk::KIND_GROUP_PURGE => {
                for id in disk::ids(meta).map_err(corrupt)? {
                    if let Some(at) = self.group_expires.remove(&id) {
                        self.st.group_expiry.remove(&(at, id));
                    }
                    self.st.forget_group(id);
                }
            }
            other => {
                return Err(StoreError::bug(format!(
                    "the task log has a frame of unknown kind {other} at {loc:?}"
                )))
            }
        }
        Ok(())
    }

    fn finish(self) -> Vec<TaskId> {
        // Keys of tasks purged along the way.
        let locs = &self.st.locs;
        self.st.idem.retain(|_, id| locs.contains_key(id));
        self.to_cancel.into_iter().map(TaskId).collect()
    }
}

/// Reads every frame of the log into `st` (see `Replay`).
fn replay(log: &Log, st: &mut State, now_ms: u64) -> Result<Vec<TaskId>, StoreError> {
    let mut r = Replay::new(st, now_ms);
    log.replay(None, |loc, kind, meta, _payload_len| {
        r.frame(loc, kind, meta)
    })
    .map_err(|e| match e {
        weir_log::ReplayError::Callback(e) => e,
        e => StoreError::bug(format!("cannot read the task log: {e}")),
    })?;
    Ok(r.finish())
}

/// Ends canceled the tasks found with a pending cancel request and no lease.
fn finish_canceled(
    disk: &Disk,
    st: &mut State,
    batch: &mut Batch,
    ids: Vec<TaskId>,
    now_ms: u64,
) -> Result<(), StoreError> {
    for id in ids {
        let Some(mut rec) = record_in(disk, st, id.0)? else {
            return Err(StoreError::bug(format!(
                "task {id} to cancel has no record"
            )));
        };
        rec.state = TaskState::Active; // it was active when the cancel arrived
        rec.cancel_requested = true;
        rec.attempt += 1;
        let next = machine::release(&mut rec, now_ms)?;
        debug_assert_eq!(next, TaskState::Canceled);
        batch.update(&rec);
        let q = st.intern(&rec.queue);
        st.count(q, id.0, None, Some((TaskState::Canceled, 0)));
        if let Some(at) = rec.expires_at_ms() {
            st.expiry.insert(
                (at, id.0),
                (q, TaskState::Canceled, rec.idempotency_key.is_some()),
            );
        }
    }
    Ok(())
}

/// A task's latest record, read by the writer (or recovery) under the state lock:
/// nothing collects a segment meanwhile.
pub(crate) fn record_in(
    disk: &Disk,
    st: &State,
    id: u128,
) -> Result<Option<TaskRecord>, StoreError> {
    read_in(st.locs.get(id), "task", id, |loc| disk.record_at(loc))
}

/// A group's latest record, read by the writer (or recovery) under the state lock.
pub(crate) fn group_in(
    disk: &Disk,
    st: &State,
    id: u128,
) -> Result<Option<GroupRecord>, StoreError> {
    read_in(st.group_locs.get(&id).copied(), "group", id, |loc| {
        disk.group_at(loc)
    })
}

/// Reads what `loc` points at (`None`: nothing does); under the state lock a
/// collected segment is a bug, never a reason to look again.
fn read_in<L, T>(
    loc: Option<L>,
    what: &str,
    id: u128,
    read: impl FnOnce(L) -> Result<T, ReadFail>,
) -> Result<Option<T>, StoreError> {
    let Some(loc) = loc else {
        return Ok(None);
    };
    match read(loc) {
        Ok(v) => Ok(Some(v)),
        Err(ReadFail::Gone) => Err(StoreError::bug(format!(
            "{what} {} points into a collected segment",
            TaskId(id)
        ))),
        Err(ReadFail::Err(e)) => Err(e),
    }
}

#[async_trait::async_trait]
impl Broker for EmbeddedBroker {
    async fn enqueue(
        &self,
        queue: &str,
        tasks: Vec<EnqueueTask>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let items = self.prepare(queue, tasks, None, "batch")?;
        self.submit(|reply| Op::Enqueue {
            queue: queue.to_owned(),
            items,
            reply,
        })
        .await
    }

    async fn get(&self, id: TaskId) -> Result<Option<TaskView>, StoreError> {
        self.view_of(id)
    }

    async fn wait(&self, id: TaskId, wait: Duration) -> Result<Option<TaskView>, StoreError> {
        self.long_poll(
            id,
            wait,
            || self.view_of(id),
            |v| v.record.state.is_terminal(),
        )
        .await
    }

    async fn browse(
        &self,
        queue: &str,
        state: TaskState,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<TaskPage, StoreError> {
        let (ids, next) = {
            let st = self.shared.lock();
            match st.queue_index.get(queue) {
                Some(&q) => st.browse(q, state, cursor, limit)?,
                None => return Ok(TaskPage::default()),
            }
        };
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            // Gone since it was listed (retention, a delete): left out.
            if let Some(r) = self.shared.record(TaskId(id))? {
                records.push(r);
            }
        }
        let now = self.shared.now_ms();
        let st = self.shared.lock();
        let tasks = records
            .into_iter()
            .map(|r| overlay_record(&st, r, now).0)
            // Moved on since it was listed: it belongs to another state's listing.
            .filter(|r| r.state == state)
            .collect();
        Ok(TaskPage { tasks, next })
    }

    async fn find_key(&self, queue: &str, key: &str) -> Result<Option<TaskView>, StoreError> {
        let id = self
            .shared
            .lock()
            .idem
            .get(&state::idem_key(queue, key))
            .copied();
        match id {
            Some(id) => self.view_of(TaskId(id)),
            None => Ok(None),
        }
    }

    async fn retry(
        &self,
        ids: Vec<TaskId>,
        scope: Scope<'_>,
    ) -> Result<Vec<Result<TaskRecord, StoreError>>, StoreError> {
        let scope = writer::OwnedScope::new(scope);
        self.submit(|reply| Op::Retry { ids, scope, reply }).await
    }

    async fn delete_tasks(
        &self,
        ids: Vec<TaskId>,
        scope: Scope<'_>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let scope = writer::OwnedScope::new(scope);
        self.submit(|reply| Op::Delete { ids, scope, reply }).await
    }

    async fn cancel(&self, id: TaskId) -> Result<TaskView, StoreError> {
        let record = self.submit(|reply| Op::Cancel { id, reply }).await?;
        let (_, payload) = self.shared.task(id)?.ok_or(StoreError::NotFound)?;
        Ok(self.view(record, payload))
    }

    async fn lease_for(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
        worker: Option<&str>,
    ) -> Result<Vec<Leased>, StoreError> {
        let limits = &self.shared.config.limits;
        let worker: Option<Arc<str>> = worker.map(Arc::from);
        // A lease never creates its queue: on a queue nobody enqueued to it finds
        // nothing, and a long-poll waits under the name (`State::lease_notify`).
        if wait.is_zero() {
            return Ok(self.try_lease(queue, max, worker.as_ref())?.0);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut parked = ParkedWaiter {
            shared: &self.shared,
            queue,
            registered: false,
        };
        loop {
            let notify =
                self.shared
                    .lock()
                    .lease_notify(queue, &mut parked.registered, limits.queues_max);
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (got, next_token_ms) = self.try_lease(queue, max, worker.as_ref())?;
            if !got.is_empty() {
                return Ok(got);
            }
            if self.shared.closing.is_cancelled() {
                return Ok(Vec::new());
            }
            // The queue was created or deleted since we chose what to wait on: the
            // wakeup we would need goes to another `Notify`, so choose again.
            if !self.shared.lock().is_lease_notify(queue, &notify) {
                continue;
            }
            // Held back by the queue's rate: look again when the next token is due
            // (a timer, not a poll: it is set only while tasks wait for tokens).
            let token = next_token_ms.map(|at| {
                let now = self.shared.now_ms();
                tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now))
            });
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                _ = sleep_until_some(token) => {}
                _ = self.shared.closing.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    async fn settle(
        &self,
        items: Vec<Settle>,
    ) -> Result<Vec<Result<TaskState, StoreError>>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.submit(|reply| Op::Settle { items, reply }).await
    }

    async fn release(&self, id: TaskId, lease_id: LeaseId) -> Result<TaskState, StoreError> {
        self.submit(|reply| Op::Release {
            id,
            lease_id,
            reply,
        })
        .await
    }

    async fn heartbeat(&self, id: TaskId, lease_id: LeaseId) -> Result<Heartbeat, StoreError> {
        let now = self.shared.now_ms();
        let grace = self.shared.config.lease_grace_ms;
        let mut st = self.shared.lock();
        let lease = match st.leases.get_mut(&id.0) {
            Some(l) if l.lease_id == lease_id.0 && l.record.is_some() => l,
            _ => return Err(StoreError::StaleLease),
        };
        let timeout = lease.record.as_ref().map_or(0, |r| r.timeout_ms);
        let old = lease.expires_ms;
        let new = now.saturating_add(timeout).saturating_add(grace).max(old);
        lease.expires_ms = new;
        let cancel_requested = lease.cancel_requested;
        let q = lease.queue;
        st.lease_deadlines.remove(&(old, id.0));
        st.lease_deadlines.insert((new, id.0));
        st.relist_active(q, id.0, old, new);
        Ok(Heartbeat {
            lease_expires_ms: new,
            cancel_requested,
        })
    }

    async fn create_group(
        &self,
        queue: &str,
        tasks: Vec<EnqueueTask>,
        fail_fast: bool,
    ) -> Result<GroupCreated, StoreError> {
        let id = self.shared.next_id(self.shared.now_ms());
        let retention_ms = tasks.iter().map(|t| t.task.retention_ms).max().unwrap_or(0);
        let items = self.prepare(queue, tasks, Some(id), "group")?;
        self.submit(|reply| Op::CreateGroup {
            id,
            queue: queue.to_owned(),
            fail_fast,
            retention_ms,
            items,
            reply,
        })
        .await
    }

    async fn group(&self, id: TaskId, wait: Duration) -> Result<Option<GroupView>, StoreError> {
        if wait.is_zero() {
            return self.group_view(id);
        }
        self.long_poll(id, wait, || self.group_view(id), |g| g.state.is_terminal())
            .await
    }

    async fn cancel_group(&self, id: TaskId) -> Result<GroupView, StoreError> {
        self.submit(|reply| Op::CancelGroup { id, reply }).await?;
        self.group_view(id)?.ok_or(StoreError::GroupNotFound)
    }

    async fn watch(
        &self,
        id: TaskId,
        lease_id: LeaseId,
        wait: Duration,
    ) -> Result<Heartbeat, StoreError> {
        // Registered before the first beat reads the cancel flag, so a cancel
        // between the two still wakes us.
        let (tx, rx) = oneshot::channel();
        self.shared.lock().waiters.entry(id.0).or_default().push(tx);
        let first = self.heartbeat(id, lease_id).await;
        let now = self.shared.now_ms();
        let hb = match first {
            Ok(hb) if !hb.cancel_requested && !wait.is_zero() => hb,
            other => {
                drop(rx);
                self.drop_waiter(id);
                return other;
            }
        };
        // Never wait past half of what is left of the lease, so it cannot run out
        // while the worker is parked here.
        let left = Duration::from_millis(hb.lease_expires_ms.saturating_sub(now) / 2);
        tokio::select! {
            _ = rx => {}
            _ = tokio::time::sleep(wait.min(left)) => {}
            _ = self.shared.closing.cancelled() => {}
        }
        self.drop_waiter(id);
        self.heartbeat(id, lease_id).await
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        let (mut infos, heads) = {
            let st = self.shared.lock();
            let infos = st.queue_infos();
            let heads: Vec<Option<u128>> = infos
                .iter()
                .map(|i| {
                    let q = *st.queue_index.get(&*i.name)?;
                    st.queues[q as usize].pending.first()
                })
                .collect();
            (infos, heads)
        };
        // The heads' records are read without the lock. One leased meanwhile
        // still tells how long it waited, which is as good a reading.
        let now = self.shared.now_ms();
        for (info, head) in infos.iter_mut().zip(heads) {
            let Some(id) = head else { continue };
            if let Some(rec) = self.shared.record(TaskId(id))? {
                let ready_ms = rec.run_at_ms.max(rec.created_ms);
                info.oldest_pending_age_ms = Some(now.saturating_sub(ready_ms));
            }
        }
        Ok(infos)
    }

    async fn configure(&self, queue: &str, patch: ConfigPatch) -> Result<QueueConfig, StoreError> {
        self.submit(|reply| Op::Configure {
            queue: queue.to_owned(),
            patch,
            reply,
        })
        .await
    }

    async fn put_schedule(
        &self,
        name: &str,
        spec: String,
        now_ms: u64,
    ) -> Result<Schedule, StoreError> {
        self.submit(|reply| Op::PutSchedule {
            name: name.to_owned(),
            spec,
            now_ms,
            reply,
        })
        .await
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let st = self.shared.lock();
        Ok(st.schedules.values().map(|(s, _)| s.clone()).collect())
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        self.submit(|reply| Op::DeleteSchedule {
            name: name.to_owned(),
            reply,
        })
        .await
    }

    async fn schedule_ran(
        &self,
        name: &str,
        tick_ms: u64,
        run: Option<(u64, TaskId)>,
    ) -> Result<(), StoreError> {
        self.submit(|reply| Op::ScheduleRan {
            name: name.to_owned(),
            tick_ms,
            run,
            reply,
        })
        .await
    }

    async fn create_key(&self, id: &str, record: &str) -> Result<(), StoreError> {
        self.submit(|reply| Op::CreateKey {
            id: id.to_owned(),
            record: record.to_owned(),
            reply,
        })
        .await
    }

    async fn key(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        let st = self.shared.lock();
        Ok(st.keys.get(id).map(|(k, _)| k.clone()))
    }

    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let st = self.shared.lock();
        Ok(st.keys.values().map(|(k, _)| k.clone()).collect())
    }

    async fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        self.submit(|reply| Op::DeleteKey {
            id: id.to_owned(),
            reply,
        })
        .await
    }

    async fn key_used(&self, id: &str, at_ms: u64) -> Result<(), StoreError> {
        self.submit(|reply| Op::KeyUsed {
            id: id.to_owned(),
            at_ms,
            reply,
        })
        .await
    }

    async fn has_keys(&self) -> Result<bool, StoreError> {
        Ok(!self.shared.lock().keys.is_empty())
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), StoreError> {
        // The writer deletes it between rounds, when no index of it is in flight.
        self.submit(|reply| Op::DeleteQueue {
            queue: queue.to_owned(),
            reply,
        })
        .await
    }

    fn metrics(&self) -> Option<crate::StoreMetrics> {
        Some(self.shared.metrics.clone())
    }

    fn readiness(&self) -> Result<(), StoreError> {
        self.shared.write_gate()?;
        if self.shared.closing.is_cancelled() {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    async fn fatal(&self) -> String {
        self.shared.fatal.cancelled().await;
        match self.shared.health() {
            Health::Failed { detail } => detail,
            _ => "the store failed".into(),
        }
    }

    fn begin_shutdown(&self) {
        self.shared.closing.cancel();
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.begin_shutdown();
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let (tx, rx) = oneshot::channel();
            // The writer drains everything queued before this, persists, and exits.
            if self.ops.send(Op::Stop { reply: tx }).await.is_ok() {
                let _ = rx.await;
            }
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| internal("join writer", e))?
                .map_err(|_| StoreError::bug("writer thread panicked"))?;
        }
        // The writer is gone: another process (or a reopen) may have the directory.
        drop(
            self.shared
                .lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        // A store that failed (its final fsync included) must not look cleanly shut.
        match self.shared.health() {
            Health::Failed { detail } => Err(StoreError::bug(detail)),
            _ => Ok(()),
        }
    }
}

impl EmbeddedBroker {
    /// Validates a batch of new tasks and builds their records, encoded here on the
    /// caller's task so the single writer thread only copies bytes into the commit.
    /// `what` names the batch in errors ("batch", "group").
    fn prepare(
        &self,
        queue: &str,
        tasks: Vec<EnqueueTask>,
        group: Option<TaskId>,
        what: &str,
    ) -> Result<Vec<Prepared>, StoreError> {
        debug_assert!(!tasks.is_empty(), "an empty {what} passed the checks");
        let now = self.shared.now_ms();
        let first = self.shared.next_ids(now, tasks.len()).0;
        Ok(tasks
            .into_iter()
            .zip(first..)
            .map(|(t, id)| {
                let mut record = machine::create(TaskId(id), queue, t.task, now);
                record.group = group;
                Prepared::new(record, t.payload)
            })
            .collect())
    }

    /// The task's current view, `None` if unknown.
    fn view_of(&self, id: TaskId) -> Result<Option<TaskView>, StoreError> {
        Ok(self
            .shared
            .task(id)?
            .map(|(record, payload)| self.view(record, payload)))
    }

    /// Reads a task's or group's view; if it is not yet `done`, waits up to `wait`
    /// for the writer to fire its waiter (or for shutdown), then reads it again.
    async fn long_poll<T>(
        &self,
        id: TaskId,
        wait: Duration,
        read: impl Fn() -> Result<Option<T>, StoreError>,
        done: impl Fn(&T) -> bool,
    ) -> Result<Option<T>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the read, so an end between the read and the wait
            // still wakes us. A wake is a hint, not a verdict (a cancel request
            // also fires a task's waiters): the loop reads again.
            let (tx, rx) = oneshot::channel();
            self.shared.lock().waiters.entry(id.0).or_default().push(tx);
            let view = read();
            let finished = match &view {
                Ok(Some(v)) => done(v),
                _ => true,
            };
            if finished
                || self.shared.closing.is_cancelled()
                || tokio::time::Instant::now() >= deadline
            {
                drop(rx);
                self.drop_waiter(id);
                return view;
            }
            let woken = tokio::select! {
                _ = rx => true,
                _ = tokio::time::sleep_until(deadline) => false,
                _ = self.shared.closing.cancelled() => false,
            };
            self.drop_waiter(id);
            if !woken {
                return read();
            }
        }
    }

    /// Drops closed waiters of `id` (ours, after it fired or timed out), so a task
    /// or group that never ends does not collect dead senders.
    fn drop_waiter(&self, id: TaskId) {
        let mut st = self.shared.lock();
        if let Some(w) = st.waiters.get_mut(&id.0) {
            w.retain(|s| !s.is_closed());
            if w.is_empty() {
                st.waiters.remove(&id.0);
            }
        }
    }

    /// A group's view: its stored record and state, and its members as `get` would
    /// show them.
    fn group_view(&self, id: TaskId) -> Result<Option<GroupView>, StoreError> {
        let Some(record) = self.shared.group_record(id)? else {
            return Ok(None);
        };
        let mut members = Vec::with_capacity(record.members.len());
        for &m in &record.members {
            if let Some(r) = self.shared.record(TaskId(m))? {
                members.push(r);
            }
        }
        // The state comes from the stored record, read before the members: the
        // writer stores a group's new state in the same batch as the member records
        // that caused it, so members read afterwards are at least that new. (The
        // tally in memory runs ahead of the disk while a batch is being built; a
        // view taking its state from there could say "failed" beside members that
        // still look active.)
        let state = weir_core::GroupState::from_index(record.state)
            .ok_or_else(|| StoreError::bug(format!("group {id} has state {}", record.state)))?;
        let now = self.shared.now_ms();
        let st = self.shared.lock();
        let tasks = members
            .into_iter()
            .map(|r| overlay_record(&st, r, now).0)
            .collect();
        Ok(Some(GroupView {
            id,
            queue: record.queue,
            fail_fast: record.fail_fast,
            state,
            created_ms: record.created_ms,
            finished_ms: record.finished_ms,
            tasks,
        }))
    }

    /// Takes up to `max` pending tasks of `queue`, as many as its flow control
    /// allows now, and leases them. Tasks past their deadline are handed to the
    /// writer to end dead instead. Also answers, when the queue's rate held tasks
    /// back, when its next token is due (ms).
    fn try_lease(
        &self,
        queue: &str,
        max: usize,
        worker: Option<&Arc<str>>,
    ) -> Result<(Vec<Leased>, Option<u64>), StoreError> {
        let now = self.shared.now_ms();
        let mut woken = Vec::new();
        // Step 1, under the lock: pop ids and hold them with placeholder leases.
        let (taken, next_token_ms) = {
            let mut st = self.shared.lock();
            st.promote_due(now, &mut woken);
            let Some(&q) = st.queue_index.get(queue) else {
                return Ok((Vec::new(), None));
            };
            let (allowed, next_token_ms) = st.queue(q).allowance(max as u64, now);
            let allowed = allowed as usize;
            let mut taken: Vec<(u128, u128, Option<TaskLoc>)> = Vec::new();
            while taken.len() < allowed {
                let Some((priority, id)) = st.queue(q).pending.pop_first() else {
                    break;
                };
                // Listed at 0 until its lease is filled, when its expiry is known.
                st.count(
                    q,
                    id,
                    Some((TaskState::Pending, 0)),
                    Some((TaskState::Active, 0)),
                );
                let lease_id = LeaseId::random().0;
                st.leases.insert(
                    id,
                    Lease {
                        lease_id,
                        queue: q,
                        priority,
                        expires_ms: u64::MAX,
                        record: None,
                        cancel_requested: false,
                        worker: worker.cloned(),
                    },
                );
                taken.push((id, lease_id, st.locs.get(id)));
            }
            let queue = st.queue(q);
            queue.spend(taken.len() as u64, now);
            // The next token matters only to tasks still waiting for one.
            let next_token_ms = next_token_ms.filter(|_| queue.pending.len() > 0);
            (taken, next_token_ms)
        };
        for n in woken {
            n.notify_waiters();
        }
        if taken.is_empty() {
            return Ok((Vec::new(), next_token_ms));
        }
        // Step 2, without the lock: read records and payloads.
        let disk = self.shared.disk();
        let mut loaded = Vec::with_capacity(taken.len());
        for &(id, lease_id, loc) in &taken {
            let tid = TaskId(id);
            let read = match (&disk, loc) {
                (Err(_), _) => Err(self.shared.refusal()),
                (Ok(disk), Some(loc)) => match disk.task_at(loc) {
                    Ok(t) => Ok(Some(t)),
                    // Moved since step 1 (a copy by the log's GC): look it up again.
                    Err(ReadFail::Gone) => self.shared.task(tid),
                    Err(ReadFail::Err(e)) => Err(e),
                },
                (Ok(_), None) => Ok(None),
            };
            let read = read.and_then(|t| {
                t.ok_or_else(|| StoreError::bug(format!("pending task {tid} has no record")))
            });
            loaded.push((id, lease_id, read));
        }
        drop(disk);
        // Step 3, under the lock: start each attempt and arm its lease timer.
        let grace = self.shared.config.lease_grace_ms;
        let mut out = Vec::with_capacity(loaded.len());
        let mut expired = Vec::new();
        let mut failure = None;
        {
            let mut st = self.shared.lock();
            for (id, lease_id, read) in loaded {
                let (mut rec, payload) = match read {
                    Ok(t) => t,
                    Err(e) => {
                        // Put it back so that nothing is lost; report loudly.
                        if let Some(l) = st.take_lease(id) {
                            st.queue(l.queue).pending.insert(l.priority, id);
                            st.count(l.queue, id, None, Some((TaskState::Pending, 0)));
                        }
                        failure = Some(e);
                        continue;
                    }
                };
                // The placeholder is gone only if the store was reopened meanwhile and
                // the task is pending again there: it is not ours to start.
                let Some(lease) = st.leases.get(&id).filter(|l| l.lease_id == lease_id) else {
                    continue;
                };
                let cancel_requested = lease.cancel_requested;
                rec.cancel_requested |= cancel_requested;
                if groups::closed(&st, &rec) {
                    // Its group failed or was canceled: it must not start.
                    st.take_lease(id);
                    if machine::cancel(&mut rec, now).is_ok() {
                        expired.push(rec);
                    }
                    continue;
                }
                match machine::start(&mut rec, now) {
                    Ok(Start::Started) => {
                        let expires = now.saturating_add(rec.timeout_ms).saturating_add(grace);
                        let Some(lease) = st.leases.get_mut(&id) else {
                            unreachable!("the placeholder was found under this lock");
                        };
                        lease.expires_ms = expires;
                        lease.record = Some(rec.clone());
                        let q = lease.queue;
                        st.lease_deadlines.insert((expires, id));
                        st.relist_active(q, id, 0, expires);
                        out.push(Leased {
                            record: rec,
                            payload,
                            lease_id: LeaseId(lease_id),
                            lease_expires_ms: expires,
                        });
                    }
                    Ok(Start::DeadlineExpired) => {
                        st.take_lease(id);
                        expired.push(rec);
                    }
                    Err(e) => {
                        // Only a pending record may be in the pending index.
                        st.take_lease(id);
                        failure = Some(StoreError::bug(format!("lease of {}: {e}", TaskId(id))));
                    }
                }
            }
            if let Some(&q) = st.queue_index.get(queue).filter(|_| !out.is_empty()) {
                st.queue(q).totals.leased += out.len() as u64;
            }
        }
        if !expired.is_empty() {
            // Ending a task dead must be durable; the writer does it. If the channel is
            // full, the task simply stays dead in memory until the next try succeeds
            // (it is in no index, so it cannot be leased meanwhile).
            let op = Op::Finalize { records: expired };
            if let Err(e) = self.ops.try_send(op) {
                let op = match e {
                    mpsc::error::TrySendError::Full(op) | mpsc::error::TrySendError::Closed(op) => {
                        op
                    }
                };
                let tx = self.ops.clone();
                tokio::spawn(async move {
                    let _ = tx.send(op).await;
                });
            }
        }
        if let Some(e) = failure {
            if !matches!(e, StoreError::Unavailable { .. }) {
                tracing::error!(error = %e, "lease failed to read a task");
            }
            if out.is_empty() {
                return Err(e);
            }
        }
        Ok((out, next_token_ms))
    }
}

/// Sleeps until `at`, or for ever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A lease long-poll's registration in `State::parked`, if it made one; dropping
/// it (the call returned or its request went away) leaves.
struct ParkedWaiter<'a> {
    shared: &'a Shared,
    queue: &'a str,
    registered: bool,
}

impl Drop for ParkedWaiter<'_> {
    fn drop(&mut self) {
        if self.registered {
            self.shared.lock().unpark(self.queue);
        }
    }
}

#[cfg(test)]
mod tests;
