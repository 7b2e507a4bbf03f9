//! The `Broker` trait — the narrow boundary between weir's HTTP layer and its
//! storage — and its backends. Every backend moves tasks only through
//! `weir_core::machine`, and passes the one conformance suite in `conformance`.

pub mod checked;
pub mod clock;
pub mod conformance;
pub mod embedded;
pub mod metrics;
pub mod redis;
#[cfg(test)]
mod simulation;
#[cfg(feature = "testing")]
pub mod testing;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use weir_core::machine::TransitionError;
use weir_core::validate::InvalidInput;
use weir_core::{ConfigPatch, GroupState, NewTask, QueueConfig, TaskId, TaskRecord, TaskState};

pub use checked::Checked;
pub use clock::{Clock, SystemClock};
pub use embedded::{EmbeddedBroker, EmbeddedConfig};
pub use metrics::StoreMetrics;
pub use redis::{RedisBroker, RedisConfig, RedisTarget};

/// One task to enqueue: validated fields plus its payload (JSON text, not re-parsed).
#[derive(Clone, Debug)]
pub struct EnqueueTask {
    pub task: NewTask,
    pub payload: Bytes,
}

/// The answer to one enqueued task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enqueued {
    pub id: TaskId,
    pub state: TaskState,
    /// False when the idempotency key matched a retained task: nothing new was made.
    pub created: bool,
}

/// A task as a reader sees it: the record, its payload, and its lease if active.
#[derive(Clone, Debug)]
pub struct TaskView {
    pub record: TaskRecord,
    pub payload: Bytes,
    /// When the current lease runs out (active tasks only).
    pub lease_expires_ms: Option<u64>,
    /// The worker holding the lease, if it named itself (active tasks only).
    pub worker: Option<String>,
}

/// Identifies one lease of one task; a stale one is refused with 409. Holding a
/// lease id is what lets a caller settle a task, so backends make them unguessable:
/// 128 random bits from a CSPRNG, written as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(pub u128);

impl LeaseId {
    /// The id as 32 lowercase ASCII hex digits, on the stack (what `Display` writes).
    pub fn to_hex(self) -> [u8; 32] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = HEX[((self.0 >> (124 - 4 * i)) & 0xf) as usize];
        }
        out
    }

    /// A fresh random lease id (`rand::thread_rng` is a CSPRNG).
    pub fn random() -> LeaseId {
        LeaseId(rand::Rng::gen(&mut rand::thread_rng()))
    }

    /// The 16 bytes, big-endian (how the Redis store keeps it in a record).
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for LeaseId {
    /// 32 lowercase hex digits, without `fmt`'s machinery (every leased task and
    /// every ack carries one).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        // Only ASCII hex digits were written.
        f.write_str(std::str::from_utf8(&hex).expect("hex digits"))
    }
}

impl FromStr for LeaseId {
    type Err = ();
    /// Exactly 32 hex digits, either case (no sign, no prefix).
    fn from_str(s: &str) -> Result<LeaseId, ()> {
        if s.len() != 32 {
            return Err(());
        }
        let mut v: u128 = 0;
        for b in s.bytes() {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(()),
            };
            v = (v << 4) | u128::from(d);
        }
        Ok(LeaseId(v))
    }
}

/// A task handed to a worker.
#[derive(Clone, Debug)]
pub struct Leased {
    pub record: TaskRecord,
    pub payload: Bytes,
    pub lease_id: LeaseId,
    pub lease_expires_ms: u64,
}

/// What a heartbeat tells the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub lease_expires_ms: u64,
    pub cancel_requested: bool,
}

/// A worker's verdict on one leased task.
#[derive(Clone, Debug)]
pub enum Settle {
    Ack {
        id: TaskId,
        lease_id: LeaseId,
        /// The result as JSON text.
        result: Option<Bytes>,
    },
    Fail {
        id: TaskId,
        lease_id: LeaseId,
        error: String,
        retry: bool,
    },
}

impl Settle {
    /// The task this verdict is for.
    pub fn id(&self) -> TaskId {
        match self {
            Settle::Ack { id, .. } | Settle::Fail { id, .. } => *id,
        }
    }
}

/// Per-state task counts of one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; 6]);

impl Counts {
    pub fn get(&self, state: TaskState) -> u64 {
        self.0[state.index()]
    }
}

/// One queue's public view.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueInfo {
    pub name: String,
    pub counts: Counts,
    /// Its flow-control settings (all unset for a queue never configured).
    pub config: QueueConfig,
    /// What its tasks did, counted by the store (see `Totals` for how long).
    pub totals: Totals,
    /// How long the next task to lease (the head of the dispatch order: highest
    /// priority, then oldest) has been ready, by the store's clock: since its
    /// `run_at` (its creation for an immediate task). `None` with nothing pending.
    pub oldest_pending_age_ms: Option<u64>,
}

/// Transitions of one queue's tasks, counted by the store: on Redis store-wide and
/// durable (fields of the queue's meta hash, the same for every server); on the
/// embedded store since this process opened it (memory only). Either way they
/// start again from zero when the queue is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Tasks created (an idempotent enqueue that matched an existing task is not).
    pub enqueued: u64,
    /// Attempts started by a lease.
    pub leased: u64,
    /// Tasks that ended in each terminal state.
    pub completed: u64,
    pub dead: u64,
    pub canceled: u64,
    /// Attempts that went back to wait for another: a fail that scheduled a
    /// retry, or an expired lease that made the task pending again.
    pub retried: u64,
    /// Leases that ran out without an ack (whatever the task did next).
    pub lease_expired: u64,
}

impl Totals {
    /// Tasks that ended in `state` (0 for a state that is not terminal).
    pub fn finished(&self, state: TaskState) -> u64 {
        match state {
            TaskState::Completed => self.completed,
            TaskState::Dead => self.dead,
            TaskState::Canceled => self.canceled,
            _ => 0,
        }
    }

    /// Counts one task ending in `state` (nothing for a state that is not terminal).
    pub fn finish(&mut self, state: TaskState) {
        match state {
            TaskState::Completed => self.completed += 1,
            TaskState::Dead => self.dead += 1,
            TaskState::Canceled => self.canceled += 1,
            _ => {}
        }
    }
}

/// A periodic-task schedule as the store keeps it. The definition is the server's
/// (JSON text the store does not read); the store keeps which tick was handled
/// last, so that every server on it agrees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub name: String,
    /// The definition, as the server wrote it.
    pub spec: String,
    /// The latest tick handled (fired, or skipped as missed); ticks up to it are
    /// never fired again. Set to the time of a `put_schedule`.
    pub last_tick_ms: u64,
    /// When the schedule last enqueued a task, and the task.
    pub last_run_ms: Option<u64>,
    pub last_task_id: Option<TaskId>,
}

/// An API key as the store keeps it: the server's record (opaque text; it holds no
/// secret, only a hash) and when the key was last used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// The key's id (the `<id>` of `weir_<id>_<secret>`).
    pub id: String,
    /// The record, as the server wrote it.
    pub record: String,
    /// When the key was last used (`key_used`), if ever; it only moves forward.
    pub last_used_ms: Option<u64>,
}

/// The most tasks one `browse` page, `retry` or `delete_tasks` call takes.
pub const BROWSE_TASKS_MAX: usize = 1000;

/// One page of a queue's tasks in one state: their records, without payloads or
/// results (those are read one task at a time with `get`).
#[derive(Clone, Debug, Default)]
pub struct TaskPage {
    pub tasks: Vec<TaskRecord>,
    /// Where the next page starts (the store's own opaque text, for `browse`);
    /// `None` once the walk has reached the end.
    pub next: Option<String>,
}

/// Which tasks an operator's `retry` or `delete_tasks` may touch: a task outside
/// it is `NotFound` (and changes nothing).
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// Only tasks of this queue.
    pub queue: Option<&'a str>,
    /// Only tasks in this state.
    pub state: Option<TaskState>,
}

impl Scope<'_> {
    /// Any task.
    pub const ANY: Scope<'static> = Scope {
        queue: None,
        state: None,
    };

    /// Whether a record is inside the scope.
    pub fn admits(&self, rec: &TaskRecord) -> bool {
        self.queue.is_none_or(|q| q == rec.queue) && self.state.is_none_or(|s| s == rec.state)
    }
}

/// A task group as a reader sees it: its state and every member (without payloads).
#[derive(Clone, Debug)]
pub struct GroupView {
    pub id: TaskId,
    pub queue: String,
    pub fail_fast: bool,
    pub state: GroupState,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    /// Members in the order they were given, as a `get` would show them.
    pub tasks: Vec<TaskRecord>,
}

/// The answer to a group creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupCreated {
    pub id: TaskId,
    pub task_ids: Vec<TaskId>,
}

/// Why a broker call failed. User errors map to 4xx; `Internal` to a generic 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("task not found")]
    NotFound,
    #[error("group not found")]
    GroupNotFound,
    #[error("group is already {}", .0.as_str())]
    GroupTerminal(GroupState),
    #[error("the lease is stale or unknown")]
    StaleLease,
    #[error(transparent)]
    Conflict(#[from] TransitionError),
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("queue {queue} is full ({limit} tasks)")]
    QueueFull {
        queue: String,
        limit: u64,
        retry_after_ms: u64,
    },
    #[error("the server already holds its limit of {limit} queues")]
    TooManyQueues { limit: usize },
    #[error("the store already holds its limit of {limit} schedules")]
    TooManySchedules { limit: usize },
    /// `create_key` of an id the store already holds.
    #[error("an API key with this id exists already")]
    KeyExists,
    #[error("the store already holds its limit of {limit} API keys")]
    TooManyKeys { limit: usize },
    #[error("queue not found")]
    QueueNotFound,
    /// `delete_queue` of a queue that still holds tasks (retained finished ones too).
    #[error("queue {queue} is not empty")]
    QueueNotEmpty { queue: String, counts: Counts },
    #[error("the store is shutting down")]
    Closed,
    /// The store cannot take writes for now, for a cause that can clear (a full
    /// disk, no file descriptors left, an I/O error before fsync). Nothing of the
    /// failed call was made durable; the store heals by itself.
    #[error("the store is unavailable ({}): {detail}", cause.as_str())]
    Unavailable {
        cause: Outage,
        detail: String,
        retry_after_ms: u64,
    },
    /// A failure the caller cannot fix and that does not clear by itself: a bug, a
    /// corrupt record, a store that failed fatally. `source` keeps the cause.
    #[error("storage failure: {context}")]
    Internal {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
}

/// The cause carried by `StoreError::Internal`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StoreError {
    /// An internal error caused by `source`, described by `context`.
    pub fn internal(context: impl Into<String>, source: impl Into<BoxError>) -> StoreError {
        StoreError::Internal {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// An internal error with no underlying cause (a broken invariant).
    pub fn bug(context: impl Into<String>) -> StoreError {
        StoreError::Internal {
            context: context.into(),
            source: None,
        }
    }

    /// This error and every cause under it, joined by ": " (for logs).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            out.push_str(": ");
            out.push_str(&e.to_string());
            source = e.source();
        }
        out
    }
}

/// Why a store refuses writes for now. Each names its cause in the problem `type`
/// a client sees, so an operator knows what to fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outage {
    /// The disk (or the filesystem quota) holding the store is full.
    DiskFull,
    /// The process has no file descriptors left.
    TooManyOpenFiles,
    /// Another I/O error while writing (before any fsync), or the store is reopening.
    Io,
    /// A store in another process (Redis) does not answer, refuses, or is loading.
    Unreachable,
}

impl Outage {
    /// The stable slug of the cause (`urn:weir:problem:<slug>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outage::DiskFull => "disk-full",
            Outage::TooManyOpenFiles => "too-many-open-files",
            Outage::Io => "storage-unavailable",
            Outage::Unreachable => "store-unreachable",
        }
    }

    /// The cause of an I/O error, by its errno (`None` for an error with none).
    pub fn of_io(e: &std::io::Error) -> Option<Outage> {
        use rustix::io::Errno;
        let errno = Errno::from_io_error(e)?;
        Some(if errno == Errno::NOSPC || errno == Errno::DQUOT {
            Outage::DiskFull
        } else if errno == Errno::MFILE || errno == Errno::NFILE {
            Outage::TooManyOpenFiles
        } else {
            Outage::Io
        })
    }
}

/// The storage boundary. Callers reach a backend through `Checked`, which refuses
/// input that breaks `Limits` or the group rules; a backend keeps only the checks
/// that need its state. Implementations own durability (an `Ok` from a mutating
/// call means the change is durable), dispatch order, leases and long-poll wakeups.
#[async_trait::async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Enqueues all tasks or none; answers once they are durable.
    async fn enqueue(
        &self,
        queue: &str,
        tasks: Vec<EnqueueTask>,
    ) -> Result<Vec<Enqueued>, StoreError>;
    /// The task's current view, `None` if unknown (or expired).
    async fn get(&self, id: TaskId) -> Result<Option<TaskView>, StoreError>;
    /// Like `get`, but waits up to `wait` for the task to become terminal.
    async fn wait(&self, id: TaskId, wait: Duration) -> Result<Option<TaskView>, StoreError>;
    /// Cancels a queued task, or requests cancel of an active one.
    async fn cancel(&self, id: TaskId) -> Result<TaskView, StoreError>;
    /// Leases up to `max` tasks, waiting up to `wait` for the first one. `worker`
    /// names the holder, shown on the active task's view.
    async fn lease_for(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
        worker: Option<&str>,
    ) -> Result<Vec<Leased>, StoreError>;
    /// `lease_for` without a worker name.
    async fn lease(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Leased>, StoreError> {
        self.lease_for(queue, max, wait, None).await
    }
    /// Acks and fails, each judged on its own; answers once all are durable.
    async fn settle(
        &self,
        items: Vec<Settle>,
    ) -> Result<Vec<Result<TaskState, StoreError>>, StoreError>;
    /// Returns a leased task to pending without counting the attempt.
    async fn release(&self, id: TaskId, lease_id: LeaseId) -> Result<TaskState, StoreError>;
    /// Extends a lease by the task's timeout plus grace.
    async fn heartbeat(&self, id: TaskId, lease_id: LeaseId) -> Result<Heartbeat, StoreError>;
    /// A heartbeat that, unless a cancel is already requested, waits up to `wait`
    /// for one (or for the task to end), then beats again: a worker learns of a
    /// cancel as soon as it is requested. Backends without push just beat once.
    async fn watch(
        &self,
        id: TaskId,
        lease_id: LeaseId,
        wait: Duration,
    ) -> Result<Heartbeat, StoreError> {
        let _ = wait;
        self.heartbeat(id, lease_id).await
    }
    /// Enqueues `tasks` as one group, all durable or none. With `fail_fast`, the first
    /// member to end dead fails the group and cancels the others.
    async fn create_group(
        &self,
        queue: &str,
        tasks: Vec<EnqueueTask>,
        fail_fast: bool,
    ) -> Result<GroupCreated, StoreError>;
    /// The group's view, waiting up to `wait` for it to become terminal; `None` if unknown.
    async fn group(&self, id: TaskId, wait: Duration) -> Result<Option<GroupView>, StoreError>;
    /// Cancels every non-terminal member and marks the group canceled.
    async fn cancel_group(&self, id: TaskId) -> Result<GroupView, StoreError>;
    /// One page of `queue`'s tasks in `state`, at most `limit` (1..=`BROWSE_TASKS_MAX`):
    /// pending tasks in dispatch order (what runs next first); scheduled ones
    /// latest run time first, active ones latest lease expiry first, completed
    /// ones latest retention end first (the most recently finished, when the
    /// retention is the same), each with equal times newest id first; dead and
    /// canceled ones newest id first. `cursor` is an earlier page's `next`,
    /// resuming after its last task. A walk never lists a task twice (a task's
    /// place in these orders only moves up while it stays in its state: a
    /// heartbeat, a retry's backoff) and lists every task that stays in the state,
    /// at its place, throughout it. A page may hold fewer than `limit` tasks and
    /// still have a `next`. An unknown queue is an empty page; a cursor this store
    /// did not make is `Invalid`.
    async fn browse(
        &self,
        queue: &str,
        state: TaskState,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<TaskPage, StoreError>;
    /// The retained task of `queue` that holds the idempotency key `key`.
    async fn find_key(&self, queue: &str, key: &str) -> Result<Option<TaskView>, StoreError>;
    /// Puts dead or canceled tasks back to pending (`machine::retry`), each judged
    /// on its own (at most `BROWSE_TASKS_MAX`): its new record, `NotFound` (unknown,
    /// or outside `scope`), or `Conflict`. Answers once the changes are durable.
    async fn retry(
        &self,
        ids: Vec<TaskId>,
        scope: Scope<'_>,
    ) -> Result<Vec<Result<TaskRecord, StoreError>>, StoreError>;
    /// Removes finished tasks now, as retention would (their idempotency keys are
    /// free again), each judged on its own (at most `BROWSE_TASKS_MAX`): `NotFound`
    /// (unknown, or outside `scope`) or `Conflict` for a task not finished.
    async fn delete_tasks(
        &self,
        ids: Vec<TaskId>,
        scope: Scope<'_>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError>;
    /// Every known queue with its counts. A queue exists from its first enqueue
    /// until `delete_queue`; a lease or a read never creates one.
    async fn queues(&self) -> Result<Vec<QueueInfo>, StoreError>;
    /// Changes a queue's flow-control settings (creating the queue if it does not
    /// exist, within `queues_max`) and answers the whole config once durable. Every
    /// server on the store applies it from its next lease on; a change wakes the
    /// queue's parked leases so they judge it at once.
    async fn configure(&self, queue: &str, patch: ConfigPatch) -> Result<QueueConfig, StoreError>;
    /// Creates or replaces the schedule `name` (within `schedules_max`); its last
    /// handled tick becomes `now_ms`, its last run is kept.
    async fn put_schedule(
        &self,
        name: &str,
        spec: String,
        now_ms: u64,
    ) -> Result<Schedule, StoreError>;
    /// Every schedule, by name.
    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError>;
    /// Removes a schedule; false if there was none.
    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError>;
    /// Records that the schedule handled `tick_ms` (and, if it enqueued a task,
    /// when and which). Only moves forward: a tick at or before the last one
    /// handled, or an unknown schedule, changes nothing.
    async fn schedule_ran(
        &self,
        name: &str,
        tick_ms: u64,
        run: Option<(u64, TaskId)>,
    ) -> Result<(), StoreError>;
    /// Adds an API key: `id` must be new (`StoreError::KeyExists` otherwise); at
    /// most `limits.keys_max` keys (`StoreError::TooManyKeys { limit }`). Durable
    /// before it answers.
    async fn create_key(&self, id: &str, record: &str) -> Result<(), StoreError>;
    /// One key, `None` if unknown (or revoked).
    async fn key(&self, id: &str) -> Result<Option<StoredKey>, StoreError>;
    /// Every key, by id.
    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Revokes (removes) a key; false if there was none. Durable before it answers.
    async fn delete_key(&self, id: &str) -> Result<bool, StoreError>;
    /// Records that the key was used at `at_ms`: only moves last use forward, and
    /// never brings back a deleted or unknown key (a no-op for those). Atomic with
    /// respect to `delete_key`. The server calls it at most about once a minute
    /// per key.
    async fn key_used(&self, id: &str, at_ms: u64) -> Result<(), StoreError>;
    /// Whether the store holds any key (auth turns on as soon as one exists).
    /// Cheap: the server calls it about twice a second.
    async fn has_keys(&self) -> Result<bool, StoreError>;
    /// Removes an empty queue: one holding no task in any state, retained finished
    /// tasks included. Its config goes with it. `QueueNotFound` if unknown, `QueueNotEmpty` (with its counts)
    /// otherwise. Lease long-polls parked on it keep waiting, as on an unknown queue,
    /// and the next enqueue creates it afresh.
    async fn delete_queue(&self, queue: &str) -> Result<(), StoreError>;
    /// Whether the store can take writes now; the error says why not (an outage it
    /// is healing from, shutdown, or a fatal failure).
    fn readiness(&self) -> Result<(), StoreError>;
    /// The metrics this backend observes in this process (commit times), for the
    /// server to expose; `None` for a backend that observes none.
    fn metrics(&self) -> Option<StoreMetrics> {
        None
    }
    /// Resolves when the store has failed in a way only a restart can repair (a
    /// failed fsync may have lost written data: recovery from disk must run). The
    /// server then exits non-zero so a supervisor restarts it. Never resolves for a
    /// store that has no such failure.
    async fn fatal(&self) -> String {
        std::future::pending().await
    }
    /// Wakes every long-poll so it answers now; later long-polls do not wait.
    fn begin_shutdown(&self);
    /// Flushes and stops background work. Later calls fail with `Closed`.
    async fn close(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::LeaseId;

    #[test]
    fn lease_ids_are_32_hex_digits_both_ways() {
        let id = LeaseId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(id.to_string(), "0123456789abcdef0011223344556677");
        assert_eq!(id.to_string().parse::<LeaseId>(), Ok(id));
        assert_eq!(LeaseId(1).to_string().len(), 32);
        assert_eq!(LeaseId(1).to_string(), format!("{:032x}", 1));
        assert_eq!(LeaseId(u128::MAX).to_string(), "f".repeat(32));
        assert_eq!("f".repeat(32).parse::<LeaseId>(), Ok(LeaseId(u128::MAX)));
        assert_eq!(
            "0123456789ABCDEF0011223344556677".parse::<LeaseId>(),
            Ok(id)
        );
        for bad in [
            "",
            "0123456789abcdef",                  // the old 64-bit form
            "0123456789abcdef00112233445566778", // 33 digits
            "+123456789abcdef0011223344556677",  // a sign from_str_radix would take
            "0123456789abcdef001122334455667g",
        ] {
            assert!(bad.parse::<LeaseId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn random_lease_ids_differ_in_both_halves() {
        let a = LeaseId::random().0;
        let b = LeaseId::random().0;
        // Each half colliding by chance has odds of 2^-64.
        assert_ne!(a >> 64, b >> 64);
        assert_ne!(a as u64, b as u64);
    }
}
