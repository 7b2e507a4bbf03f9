//! The task model of SPEC §3: a task's durable record and the validated input that
//! creates one. These are domain types; the wire (JSON) and disk encodings live in
//! the crates that own those boundaries.

use crate::TaskId;

/// Where a task is in its life. `Completed`, `Dead` and `Canceled` are terminal:
/// no transition leaves them (see `machine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskState {
    /// Waiting for `run_at` (a delayed task, or a retry's backoff).
    Scheduled,
    /// Ready to be leased.
    Pending,
    /// Leased to a worker.
    Active,
    /// Acked by a worker; holds its result.
    Completed,
    /// Out of attempts, past its deadline, or failed without retry.
    Dead,
    /// Canceled by a producer or an operator.
    Canceled,
}

impl TaskState {
    pub const ALL: [TaskState; 6] = [
        TaskState::Scheduled,
        TaskState::Pending,
        TaskState::Active,
        TaskState::Completed,
        TaskState::Dead,
        TaskState::Canceled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Dead | TaskState::Canceled
        )
    }

    /// The state's name on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduled => "scheduled",
            TaskState::Pending => "pending",
            TaskState::Active => "active",
            TaskState::Completed => "completed",
            TaskState::Dead => "dead",
            TaskState::Canceled => "canceled",
        }
    }

    /// Position in `ALL`, for per-state counters.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Option<TaskState> {
        TaskState::ALL.get(i).copied()
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A validated request to create a task (payload excluded: the store carries the
/// payload bytes beside it without copying them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTask {
    pub kind: String,
    pub priority: i32,
    /// When the task may first run; `None` means `delay_ms` after the store's
    /// clock reads at creation. The store resolves a delay, not the HTTP handler,
    /// so that with many servers on one store the store's clock (Redis `TIME`)
    /// decides, not the clock of whichever server answered.
    pub run_at_ms: Option<u64>,
    /// Used when `run_at_ms` is `None`; 0 runs at once.
    pub delay_ms: u64,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub deadline_ms: Option<u64>,
    pub idempotency_key: Option<String>,
    /// How long the task stays readable after it completes or is canceled.
    pub retention_ms: u64,
    /// The producer's trace context, handed to every worker that leases it.
    pub trace: Option<crate::TraceContext>,
}

/// A task's durable record: everything but its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    pub id: TaskId,
    pub queue: String,
    pub kind: String,
    /// Higher runs first; FIFO (by id) within a priority.
    pub priority: i32,
    pub state: TaskState,
    /// Attempts started so far (1 while the first attempt runs).
    pub attempt: u32,
    pub max_attempts: u32,
    /// One attempt's deadline, from its start.
    pub timeout_ms: u64,
    /// When the task may next be leased (creation time for an immediate task).
    pub run_at_ms: u64,
    /// After this the task is no longer started; it ends `dead`.
    pub deadline_ms: Option<u64>,
    pub idempotency_key: Option<String>,
    pub retention_ms: u64,
    pub created_ms: u64,
    /// Start of the latest attempt.
    pub started_ms: Option<u64>,
    /// When the task reached a terminal state.
    pub finished_ms: Option<u64>,
    /// The worker's result, as JSON text.
    pub result: Option<Vec<u8>>,
    pub last_error: Option<String>,
    /// A cancel arrived while the task was active; the worker learns it on heartbeat,
    /// and the task ends `canceled` whatever the worker reports.
    pub cancel_requested: bool,
    /// The task group it belongs to, if any.
    pub group: Option<TaskId>,
    /// The producer's trace context (W3C), if it sent one.
    pub trace: Option<crate::TraceContext>,
}

impl TaskRecord {
    /// When a terminal task stops being retained; `None` for dead tasks, which stay
    /// until retried or purged, and for tasks that are not terminal.
    pub fn expires_at_ms(&self) -> Option<u64> {
        match self.state {
            TaskState::Completed | TaskState::Canceled => Some(
                self.finished_ms
                    .unwrap_or(self.created_ms)
                    .saturating_add(self.retention_ms),
            ),
            _ => None,
        }
    }
}
