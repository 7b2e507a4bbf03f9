//! Every limit and default of the worker pool in one place; names end in their unit.

/// Handlers running at once when the builder is not told otherwise.
pub const CONCURRENCY_DEFAULT: usize = 16;
/// Largest concurrency a pool accepts (far beyond what one process should run, but
/// it keeps the semaphores' arithmetic small).
pub const CONCURRENCY_MAX: usize = 65_536;
/// Most tasks one lease request may ask for (the server's `lease_tasks_max`).
pub const PREFETCH_MAX: usize = 1_000;
/// How long one heartbeat of a running task waits for a cancel request before it
/// returns and is re-armed (each re-arm extends the lease). A cancel does not wait
/// for it: the server answers the parked heartbeat as soon as one is requested.
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 2_000;
/// Shortest heartbeat period; a shorter one floods the server for nothing.
pub const HEARTBEAT_INTERVAL_MS_MIN: u64 = 10;
/// How long running handlers may take to finish after shutdown was requested.
pub const SHUTDOWN_GRACE_MS_DEFAULT: u64 = 30_000;
/// How long a handler has to return after its token fired (deadline, cancel or
/// shutdown) before it is abandoned: its future is dropped and its task failed.
pub const CANCEL_GRACE_MS: u64 = 1_000;
/// How long a task runs before its first heartbeat, which is also a watch for
/// cancel requests: tasks shorter than this never pay for a request.
pub const WATCH_DELAY_MS: u64 = 25;
/// Longest cancel grace a pool accepts.
pub const CANCEL_GRACE_MS_MAX: u64 = 600_000;
/// Long-poll `wait_ms` of a lease when the pool has free slots and nothing came.
pub const LEASE_WAIT_MS_IDLE: u64 = 1_000;
/// Shortest long-poll when several queues take turns at the idle long-poll.
pub const LEASE_WAIT_MS_IDLE_MIN: u64 = 100;
/// First pause after a lease request failed for a transient reason; doubles up to
/// `LEASE_RETRY_BACKOFF_MS_MAX`, each pause plus up to as much again at random,
/// and after the server's `Retry-After` when it sent one (429, 503, 507).
pub const LEASE_RETRY_BACKOFF_MS_MIN: u64 = 50;
/// Longest pause of our own between lease retries (before jitter).
pub const LEASE_RETRY_BACKOFF_MS_MAX: u64 = 5_000;
/// Most acks and fails in one `POST /v1/acks` (the server's `batch_tasks_max`).
pub const SETTLE_BATCH_MAX: usize = 1_000;
/// Capacity of the channel from finished tasks to the settle flusher. When the
/// flusher is behind, finishing tasks wait (and hold their slot), so leasing slows.
pub const RESULTS_CHANNEL_MAX: usize = 4_096;
/// Settle requests the flusher keeps in flight at once (and settles sent on a
/// worker channel and not yet answered), so a batch can fill while another is
/// being committed. More in flight means smaller batches and more commits: on
/// the channel, 16 instead of 2 cut a 64-handler pool's drain of no-op tasks
/// from ~120k to ~77k tasks/s (one try each, `examples/throughput.rs`).
pub const SETTLE_REQUESTS_IN_FLIGHT_MAX: usize = 2;
/// Tries of one settle batch (and of one release) on a 5xx the server gave no
/// `Retry-After` for.
pub const SETTLE_TRIES_MAX: u32 = 5;
/// How long, in the pauses the server asks for with `Retry-After` (a 429 over its
/// rate limit, a 503 or 507 outage), or by the clock while it does not answer at
/// all (a restart), one settle batch or release keeps trying, however many tries
/// that takes. Longer than a default lease (30 s + 5 s grace):
/// past that the server has handed the task out again and would refuse the
/// result anyway.
pub const SETTLE_THROTTLED_MS_MAX: u64 = 60_000;
/// First pause between settle tries; doubles each time up to
/// `SETTLE_RETRY_BACKOFF_MS_MAX`, plus up to as much again at random, plus the
/// server's `Retry-After`.
pub const SETTLE_RETRY_BACKOFF_MS: u64 = 50;
/// Longest pause of our own between settle tries (before jitter).
pub const SETTLE_RETRY_BACKOFF_MS_MAX: u64 = 2_000;
/// Releases sent at once during shutdown.
pub const RELEASE_CONCURRENCY_MAX: usize = 32;
/// Longest error text sent with a fail; longer handler errors are cut (the server
/// refuses more than its `error_bytes_max`, 64 KiB by default).
pub const ERROR_BYTES_MAX: usize = 16 * 1024;
/// Longest queue name (SPEC §5: 1–128 characters of `[A-Za-z0-9_.:-]`).
pub const QUEUE_NAME_BYTES_MAX: usize = 128;
/// Most queues one pool consumes.
pub const QUEUES_MAX: usize = 64;
/// Largest queue weight.
pub const WEIGHT_MAX: u32 = 1_000;
/// Longest worker name (the server's `worker_name_bytes_max`).
pub const WORKER_NAME_BYTES_MAX: usize = 128;
/// Most queues one worker channel takes (the server's own limit); a pool with more
/// uses HTTP long-polls.
pub const CHANNEL_QUEUES_MAX: usize = 16;
/// Most credit a channel holds granted and unspent (the server's `credit_max`).
pub const CHANNEL_CREDIT_MAX: u32 = 1_000;
/// While the server still holds credit, free slots are granted in steps of
/// `min(hold slots, CHANNEL_CREDIT_MAX) / CHANNEL_CREDIT_STEPS` (at least one).
pub const CHANNEL_CREDIT_STEPS: u32 = 4;
/// First pause before a lost worker channel is opened again; doubles up to
/// `CHANNEL_RECONNECT_MS_MAX`, each pause plus up to as much again at random.
pub const CHANNEL_RECONNECT_MS_MIN: u64 = 100;
/// Longest pause of our own between tries to open the worker channel.
pub const CHANNEL_RECONNECT_MS_MAX: u64 = 5_000;
