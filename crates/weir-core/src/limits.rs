//! Every limit of weir in one place (TIGER_STYLE): names end in their unit. A request
//! that exceeds one gets a typed error and a 4xx, never unbounded memory.

/// Limits on inputs and on the work one request may ask for. Configurable at startup;
/// `Limits::default()` is the documented default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest task payload, in bytes of JSON text.
    pub payload_bytes_max: usize,
    /// Largest result a worker may ack with, in bytes of JSON text.
    pub result_bytes_max: usize,
    /// Deepest nesting of arrays and objects in a stored JSON value (payload,
    /// result). Well under what clients decode (serde_json stops at 128 levels,
    /// Python's `json` near 1000), so every client can read every value back.
    pub json_depth_max: usize,
    /// Largest error text a worker may fail a task with (longer text is rejected).
    pub error_bytes_max: usize,
    /// Most tasks in one batch enqueue, and most items in one batch of acks/fails.
    pub batch_tasks_max: usize,
    /// Most tasks one lease request may take.
    pub lease_tasks_max: usize,
    /// Longest long-poll (`wait_ms`) of a lease or a task get.
    pub wait_ms_max: u64,
    /// Longest queue name, in bytes.
    pub queue_name_bytes_max: usize,
    /// Longest task kind, in bytes.
    pub kind_bytes_max: usize,
    /// Longest idempotency key, in bytes.
    pub idempotency_key_bytes_max: usize,
    /// Longest worker name, in bytes.
    pub worker_name_bytes_max: usize,
    /// Most attempts a task may ask for.
    pub max_attempts_max: u32,
    /// Longest per-attempt timeout.
    pub timeout_ms_max: u64,
    /// Furthest in the future a task may be scheduled (delay or run_at).
    pub delay_ms_max: u64,
    /// Largest request body of any endpoint, in bytes (a batch of big payloads).
    pub request_bytes_max: usize,
    /// Most tasks (scheduled + pending + active) one queue may hold; beyond it an
    /// enqueue answers 429 (the queue is full), never drops.
    pub queue_tasks_max: u64,
    /// Most queues one server holds (a queue is created by its first enqueue, never
    /// by a lease or a read, and removed by `DELETE /v1/queues/{queue}` once empty).
    /// Also the most queue names lease long-polls may wait on before those queues
    /// exist (the embedded store's `State::parked`).
    pub queues_max: usize,
    /// Most periodic-task schedules one store holds.
    pub schedules_max: usize,
    /// Largest schedule definition (its cron, zone, queue and task template with
    /// its payload), in bytes of JSON text: every schedule is kept in memory.
    pub schedule_bytes_max: usize,
    /// Most API keys one store holds (revoked keys do not count).
    pub keys_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            payload_bytes_max: 1024 * 1024,
            result_bytes_max: 1024 * 1024,
            json_depth_max: 64,
            error_bytes_max: 64 * 1024,
            batch_tasks_max: 1000,
            lease_tasks_max: 1000,
            wait_ms_max: 60_000,
            queue_name_bytes_max: 128,
            kind_bytes_max: 128,
            idempotency_key_bytes_max: 256,
            worker_name_bytes_max: 128,
            max_attempts_max: 1000,
            timeout_ms_max: 24 * 3600 * 1000,
            delay_ms_max: 366 * 24 * 3600 * 1000,
            request_bytes_max: 64 * 1024 * 1024,
            queue_tasks_max: 100_000_000,
            queues_max: 10_000,
            schedules_max: 1_000,
            schedule_bytes_max: 64 * 1024,
            keys_max: 1_000,
        }
    }
}

/// Longest API key id, in characters of `[a-z0-9]` (the `<id>` of `weir_<id>_<secret>`).
pub const KEY_ID_CHARS_MAX: usize = 32;
/// Largest API key record the store keeps (the server's JSON: name, roles, queue
/// globs, times, the secret's hash), in bytes: every key is kept in memory.
pub const KEY_RECORD_BYTES_MAX: usize = 16 * 1024;

/// Defaults applied to a task when the producer leaves a field out.
pub const MAX_ATTEMPTS_DEFAULT: u32 = 5;
/// Default per-attempt timeout.
pub const TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default time a finished task (and its result) stays readable.
pub const RETENTION_MS_DEFAULT: u64 = 24 * 3600 * 1000;
/// Added to an attempt's timeout to make its lease, so a worker that stops right at
/// its deadline can still ack before the task is handed to someone else.
pub const LEASE_GRACE_MS_DEFAULT: u64 = 5_000;
/// The kind given to a task enqueued without one.
pub const KIND_DEFAULT: &str = "default";
