//! The command line as clap parses it (raw arguments). Every flag can also come
//! from a `WEIR_*` environment variable; commands turn these into validated
//! configuration before they start anything. A boolean flag keeps
//! `ArgAction::SetTrue` (the bare flag means true) with `BoolishValueParser`, so
//! its variable may say 1/0, true/false, yes/no or on/off (clap's default parser
//! took only true/false: `WEIR_JSON=1` was refused).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::duration::{parse_duration, parse_per_second, parse_rate, Rate};

/// weir: a durable task queue server, and its client.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines (stderr) are written: `text` for people, `json` (one object
    /// per line: timestamp, level, message, fields, spans) for log pipelines.
    #[arg(
        long,
        global = true,
        env = "WEIR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// The shape of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Enqueue one task.
    Enqueue(EnqueueArgs),
    /// Inspect, list, wait for, cancel, retry or delete tasks.
    #[command(subcommand, visible_alias = "tasks")]
    Task(TaskCommand),
    /// Retry or purge a queue's dead tasks.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// List queues with their task counts.
    Queues(ClientArgs),
    /// Manage one queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Manage periodic tasks.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Load-generate against a server and report throughput and latency.
    Bench(BenchArgs),
    /// Run a worker pool that runs a shell command per task.
    Worker(WorkerArgs),
    /// Make, list and revoke API keys: on the store itself with `--data-dir` or
    /// `--store` (how the first admin key is made, no server needed), or through
    /// a server with an admin key.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key and print it: the only time its text is shown.
    Create(KeysCreateArgs),
    /// List the keys (never a secret).
    List(KeysAccess),
    /// Revoke a key: every server refuses it within a second.
    Revoke {
        /// The key's id (the 16 hex digits after `weir_`).
        id: String,
        #[command(flatten)]
        access: KeysAccess,
    },
}

#[derive(Debug, Args)]
pub struct KeysCreateArgs {
    /// What the key is for, shown in lists and logs.
    #[arg(long)]
    pub name: String,
    /// A role: producer, worker, reader or admin (repeat, or separate with commas).
    #[arg(long = "role", required = true, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Limit the key to queues matching this pattern (`*` is any run of
    /// characters; repeat, or separate with commas) [default: every queue].
    #[arg(long = "queue", value_delimiter = ',')]
    pub queues: Vec<String>,
    /// When the key stops working: an RFC 3339 time, or a duration from now
    /// (`30d`, `12h`) [default: never].
    #[arg(long)]
    pub expires: Option<String>,
    #[command(flatten)]
    pub access: KeysAccess,
}

/// Where `weir keys` works: the store itself (`--data-dir`, or `--store` with
/// `--store-prefix`: a stopped embedded server's directory, or a Redis any
/// server may be running on), else the server at `--server`.
#[derive(Debug, Args)]
pub struct KeysAccess {
    /// Work on the embedded store in this directory (its server must be stopped).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Work on this store directly: `redis://…`, `rediss://…`, `redis-cluster://…`.
    #[arg(long)]
    pub store: Option<String>,
    /// With a Redis store: its key prefix [default: weir].
    #[arg(long)]
    pub store_prefix: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. A non-loopback address needs auth (--require-auth,
    /// or an API key in the store) or --insecure-public-bind.
    #[arg(long, env = "WEIR_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// The store: `embedded` (one directory, `--data-dir`, one server) or a Redis
    /// that many servers share: `redis://[USER:PASSWORD@]HOST:PORT/DB`,
    /// `rediss://…` (TLS) or `redis-cluster://HOST:PORT[,HOST:PORT…]`
    /// [default: embedded].
    #[arg(long, env = "WEIR_STORE")]
    pub store: Option<String>,
    /// With a Redis store: the prefix of every key weir writes, so several weir
    /// deployments can share one Redis (at most 64 bytes, no `{` or `}`)
    /// [default: weir].
    #[arg(long, env = "WEIR_STORE_PREFIX")]
    pub store_prefix: Option<String>,
    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "./weir-data")]
    pub data_dir: PathBuf,
    /// Added to a task's timeout to form its lease [default: 5000].
    #[arg(long, env = "WEIR_LEASE_GRACE_MS")]
    pub lease_grace_ms: Option<u64>,
    /// How long completed and canceled tasks stay readable [default: 86400000].
    #[arg(long, env = "WEIR_RETENTION_MS")]
    pub retention_ms: Option<u64>,
    /// Delay before the first retry of a failed task [default: 1000].
    #[arg(long, env = "WEIR_BACKOFF_BASE_MS")]
    pub backoff_base_ms: Option<u64>,
    /// Longest delay before any retry [default: 3600000].
    #[arg(long, env = "WEIR_BACKOFF_CAP_MS")]
    pub backoff_cap_ms: Option<u64>,
    /// Largest task payload in bytes [default: 1048576].
    #[arg(long, env = "WEIR_PAYLOAD_BYTES_MAX")]
    pub payload_bytes_max: Option<usize>,
    /// Longest long-poll a request may ask for (`wait_ms` of a lease, task,
    /// group or heartbeat), 0 to 60000; longer asks are refused with 400, and
    /// `/openapi.json` states it. Lower it behind a proxy that cuts idle
    /// requests sooner [default: 60000].
    #[arg(long, env = "WEIR_WAIT_MS_MAX")]
    pub wait_ms_max: Option<u64>,
    /// Size of each segment file of the embedded store's task log, in bytes
    /// (4 MiB to 1 GiB) [default: 67108864].
    #[arg(long, env = "WEIR_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Allow listening on a non-loopback address without authentication (no
    /// --require-auth and no API key in the store): anyone who can reach the
    /// port controls the queue.
    #[arg(long, env = "WEIR_INSECURE_PUBLIC_BIND", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub insecure_public_bind: bool,
    /// Every route but /healthz, /readyz, /metrics, /openapi.json and the
    /// dashboard's pages needs an API key, even while the store holds none.
    /// Without it, auth is on as soon as the store holds a key (`weir keys
    /// create`). A non-loopback --listen implies it once the store holds a key.
    #[arg(long, env = "WEIR_REQUIRE_AUTH", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub require_auth: bool,
    /// With auth on, /metrics needs a key with the reader role (it is open by
    /// default, for scrapers).
    #[arg(long, env = "WEIR_METRICS_AUTH", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub metrics_auth: bool,
    /// Most client connections open at once; more wait in the listen backlog
    /// [default: the open-file limit minus the store's reserve].
    #[arg(long, env = "WEIR_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Time a client has to send a request's line and headers [default: 10s].
    #[arg(long, env = "WEIR_HEADER_TIMEOUT", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// Time a keep-alive connection may wait for its next request [default: 120s].
    #[arg(long, env = "WEIR_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Time a client has to send a request's body [default: 60s].
    #[arg(long, env = "WEIR_BODY_TIMEOUT", value_parser = parse_duration)]
    pub body_timeout: Option<Duration>,
    /// Requests each client address (IPv4 address, IPv6 /64) may send, on
    /// average: `10000/s`, `600/m`, `5/h`, or a bare number per second. Over it,
    /// 429 with Retry-After; /healthz, /readyz and /metrics are never limited
    /// [default: no limit].
    #[arg(long, env = "WEIR_INGRESS_RATE", value_parser = parse_rate)]
    pub ingress_rate: Option<Rate>,
    /// Most requests a client address may send at once after a quiet spell
    /// [default: one second's worth of --ingress-rate, at least 1].
    #[arg(long, env = "WEIR_INGRESS_BURST")]
    pub ingress_burst: Option<u32>,
    /// Export spans of enqueues, leases and settles (OpenTelemetry messaging
    /// conventions) to this OTLP/HTTP collector: `http://HOST:4318` (to which
    /// `/v1/traces` is added) or the full URL of its traces path [default: none,
    /// no spans are made].
    #[arg(long, env = "WEIR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Serve HTTPS (TLS 1.2 and 1.3, HTTP/1.1) with this certificate chain: PEM,
    /// the server's certificate first, then any intermediates. Needs --tls-key.
    /// SIGHUP reads both files again; a pair that does not load is logged and
    /// the previous one kept [default: plain HTTP].
    #[arg(long, env = "WEIR_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert's certificate: PEM, PKCS#8, PKCS#1 (RSA) or
    /// SEC1 (EC), not encrypted.
    #[arg(long, env = "WEIR_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

/// How to reach a server: one definition, flattened into every command that
/// talks to one (through `ClientArgs`, and into `weir worker` and `weir bench`).
#[derive(Clone, Args)]
pub struct ConnArgs {
    /// Base URL of the server: `http://HOST:PORT`, or `https://HOST:PORT` for a
    /// server started with --tls-cert.
    #[arg(long, env = "WEIR_SERVER", default_value = "http://127.0.0.1:7700")]
    pub server: String,
    /// A CA certificate (PEM) to trust for an https:// server, besides the
    /// built-in roots (Mozilla's): the CA that signed the server's certificate,
    /// or a self-signed certificate itself (one without the CA flag).
    #[arg(long, env = "WEIR_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// API key, sent as `Authorization: Bearer KEY` with every request. Prefer
    /// the environment variable: a flag is visible to other users in `ps`.
    #[arg(
        long,
        env = "WEIR_API_KEY",
        hide_env_values = true,
        value_name = "KEY",
        alias = "token"
    )]
    pub api_key: Option<String>,
}

/// Shows whether there is an API key, never the key.
impl std::fmt::Debug for ConnArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnArgs")
            .field("server", &self.server)
            .field("ca_cert", &self.ca_cert)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Flags shared by every client command: the connection, and the output.
#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Machine-readable JSON output.
    #[arg(long, env = "WEIR_JSON", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Queue to enqueue into.
    pub queue: String,
    /// Task payload: JSON text, `@file` to read it from a file, or `@-` for stdin
    /// [default: {}].
    #[arg(long, env = "WEIR_ENQUEUE_PAYLOAD")]
    pub payload: Option<String>,
    /// Task kind.
    #[arg(long, env = "WEIR_ENQUEUE_KIND")]
    pub kind: Option<String>,
    /// Run no sooner than this from now (500ms, 10s, 5m; a bare number is ms).
    #[arg(long, env = "WEIR_ENQUEUE_DELAY", value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Priority; higher runs first.
    #[arg(long, env = "WEIR_ENQUEUE_PRIORITY", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Attempts before the task is dead.
    #[arg(long, env = "WEIR_ENQUEUE_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout (30s, 5m; a bare number is ms).
    #[arg(long, env = "WEIR_ENQUEUE_TIMEOUT", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Idempotency key: the same key again returns the first task.
    #[arg(long, env = "WEIR_ENQUEUE_IDEMPOTENCY_KEY")]
    pub idempotency_key: Option<String>,
    /// How long to keep trying while the server refuses the enqueue for now
    /// (429 over a rate limit or a full queue, 503/507 in an outage: nothing was
    /// stored) or cannot be connected to. Each retry waits the server's
    /// Retry-After plus a growing, jittered backoff; one that would end past this
    /// is not made. 0 tries once.
    #[arg(long, env = "WEIR_ENQUEUE_RETRY_FOR", default_value = "30s", value_parser = parse_duration)]
    pub retry_for: Duration,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Show a task.
    Get {
        /// Task id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Wait until a task is terminal. Exit code 0: completed; 4: dead or canceled;
    /// 3: not terminal when the timeout passed.
    Wait {
        /// Task id.
        id: String,
        /// How long to wait in all.
        #[arg(long, env = "WEIR_WAIT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a task (a running one is asked to stop).
    Cancel {
        /// Task id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a queue's tasks in one state: pending in dispatch order, scheduled by
    /// run time, active by lease expiry, completed by retention end (latest first),
    /// dead and canceled newest first (without payloads: `weir task get` shows one).
    List {
        /// Queue name.
        queue: String,
        /// Which tasks.
        #[arg(long, default_value = "pending", value_parser = task_state())]
        state: weir_client::TaskState,
        /// Most tasks per page (1-1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Start after an earlier page (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
        /// Follow the cursor to the end instead of printing one page.
        #[arg(long, action = ArgAction::SetTrue)]
        all: bool,
        /// Instead, the task holding this idempotency key.
        #[arg(long, conflicts_with_all = ["cursor", "all"])]
        key: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Put a dead or canceled task back to pending, its attempts reset.
    Retry {
        /// Task id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a finished task now (as its retention would).
    Delete {
        /// Task id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// A task state by its wire name (`TaskState::as_str`), the names listed in help.
fn task_state() -> impl clap::builder::TypedValueParser<Value = weir_client::TaskState> {
    use clap::builder::TypedValueParser;
    use weir_client::TaskState;
    clap::builder::PossibleValuesParser::new(TaskState::KNOWN.map(TaskState::as_str)).map(
        |s: String| {
            let mut known = TaskState::KNOWN.into_iter();
            known
                .find(|st| st.as_str() == s)
                .expect("a possible value names a state")
        },
    )
}

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// Put a queue's dead tasks back to pending (all, or those given with --id).
    Retry {
        /// Queue name.
        queue: String,
        /// Only these tasks (repeat the flag); without it, every dead task.
        #[arg(long = "id")]
        ids: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a queue's dead tasks (all, or those given with --id).
    Purge {
        /// Queue name.
        queue: String,
        /// Only these tasks (repeat the flag); without it, every dead task.
        #[arg(long = "id")]
        ids: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Show one queue: its counts and flow-control settings.
    Get {
        /// Queue name.
        queue: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a queue's flow-control settings (creating the queue if needed);
    /// `none` clears a limit, a flag left out keeps it. Prints the whole config.
    Config {
        /// Queue name.
        queue: String,
        /// Most tasks leased per second over every worker and server: `50/s`,
        /// `600/m`, `10/h`, a bare number (per second), or `none`.
        #[arg(long, value_parser = setting(parse_per_second))]
        rate: Option<Setting<f64>>,
        /// Most tasks leased at once after an idle spell, or `none` (one second's
        /// worth of the rate).
        #[arg(long, value_parser = setting(parse_count))]
        burst: Option<Setting<u64>>,
        /// Most tasks active at once, or `none`.
        #[arg(long, value_parser = setting(parse_count))]
        max_in_flight: Option<Setting<u64>>,
        /// Most tasks scheduled + pending (enqueues beyond it get 429), or `none`.
        #[arg(long, value_parser = setting(parse_count))]
        max_pending: Option<Setting<u64>>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop leasing from a queue (enqueues are still taken).
    Pause {
        /// Queue name.
        queue: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resume leasing from a paused queue; parked workers get tasks at once.
    Resume {
        /// Queue name.
        queue: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete an empty queue (one holding no task in any state, finished ones
    /// included); a queue that is not empty is refused with its counts.
    Delete {
        /// Queue name.
        queue: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// What `weir bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Single-task enqueues from many connections.
    Enqueue,
    /// Batch enqueues.
    Batch,
    /// Batched enqueue, lease and ack, end to end.
    E2e,
    /// Enqueue-to-lease latency at a fixed rate.
    Latency,
    /// How late after its lease expiry a task a worker abandoned is leased again.
    Redelivery,
    /// Lease and ack everything already queued in `--drain-queue` (a backlog), as
    /// fast as `--consumers` can. Not part of `all`.
    Drain,
    /// Parks `--parked` connections (`--park idle|lease|task|channel|channel-waiting`) and reports the
    /// server's resident memory per connection (from its `/metrics`), and how
    /// fast other requests are served meanwhile. Not part of `all`.
    Connections,
    /// Every scenario above, in that order.
    All,
}

/// How a worker (and the `e2e` scenario's consumers) reach the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// Long-poll leases and `POST /v1/acks` batches.
    Http,
    /// One worker channel (`GET /v1/workers/connect`) per consumer.
    Channel,
}

/// What each connection of `weir bench --scenario connections` parks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Park {
    /// A keep-alive connection after one answered request.
    Idle,
    /// A long-poll lease on an empty queue.
    Lease,
    /// A long-poll wait for a task that stays pending.
    Task,
    /// A worker channel with no credit, once welcomed.
    Channel,
    /// A worker channel with one credit, its lease parked on an empty queue
    /// (an idle worker).
    ChannelWaiting,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scenario to run; repeat for several.
    #[arg(
        long,
        env = "WEIR_BENCH_SCENARIO",
        value_enum,
        value_delimiter = ',',
        default_value = "all"
    )]
    pub scenario: Vec<Scenario>,
    /// Start `weir serve` on a free loopback port with a fresh data dir, and stop
    /// it at the end, instead of using --server.
    #[arg(long, env = "WEIR_BENCH_SPAWN", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub spawn: bool,
    /// With --spawn: the directory the temporary data dir is made in
    /// [default: ./target].
    #[arg(long, env = "WEIR_BENCH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Tasks per scenario [default: enqueue 200000, batch 500000, e2e 500000].
    #[arg(long, env = "WEIR_BENCH_TASKS")]
    pub tasks: Option<u64>,
    /// Concurrent connections of the `enqueue` scenario.
    #[arg(long, env = "WEIR_BENCH_CONNECTIONS", default_value_t = 64)]
    pub connections: usize,
    /// Tasks per batch (batch and e2e).
    #[arg(long, env = "WEIR_BENCH_BATCH", default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent connections of the `batch` scenario.
    #[arg(long, env = "WEIR_BENCH_BATCH_CONNECTIONS", default_value_t = 8)]
    pub batch_connections: usize,
    /// Concurrent batch producers of the `e2e` scenario.
    #[arg(long, env = "WEIR_BENCH_PRODUCERS", default_value_t = 4)]
    pub producers: usize,
    /// How the `e2e` consumers lease and ack: HTTP requests, or a worker channel
    /// each (credit `--lease-max`).
    #[arg(long, env = "WEIR_BENCH_TRANSPORT", value_enum, default_value = "http")]
    pub transport: Transport,
    /// Concurrent consumers of the `e2e` scenario.
    #[arg(long, env = "WEIR_BENCH_CONSUMERS", default_value_t = 4)]
    pub consumers: usize,
    /// Tasks per lease of the `e2e` scenario.
    #[arg(long, env = "WEIR_BENCH_LEASE_MAX", default_value_t = 1000)]
    pub lease_max: u32,
    /// Enqueue rate of the `latency` scenario, tasks per second.
    #[arg(long, env = "WEIR_BENCH_RATE", default_value_t = 2000)]
    pub rate: u64,
    /// How long the `latency` scenario sends.
    #[arg(long, env = "WEIR_BENCH_DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Consumers of the `latency` scenario.
    #[arg(long, env = "WEIR_BENCH_LATENCY_CONSUMERS", default_value_t = 2)]
    pub latency_consumers: usize,
    /// Pad each payload to about this many bytes of JSON.
    #[arg(long, env = "WEIR_BENCH_PAYLOAD_BYTES", default_value_t = 0)]
    pub payload_bytes: usize,
    /// The queue the `drain` scenario empties.
    #[arg(long, env = "WEIR_BENCH_DRAIN_QUEUE")]
    pub drain_queue: Option<String>,
    /// Configure each scenario's queue (the drain queue too) with this dispatch
    /// rate before it runs (`5000/s`), to measure flow control's cost or accuracy.
    #[arg(long, env = "WEIR_BENCH_QUEUE_RATE", value_parser = parse_per_second)]
    pub queue_rate: Option<f64>,
    /// With --queue-rate: the burst.
    #[arg(long, env = "WEIR_BENCH_QUEUE_BURST")]
    pub queue_burst: Option<u64>,
    /// Configure each scenario's queue with this in-flight cap before it runs.
    #[arg(long, env = "WEIR_BENCH_QUEUE_MAX_IN_FLIGHT")]
    pub queue_max_in_flight: Option<u64>,
    /// Prefix of the queues the scenarios use (each run makes fresh ones).
    #[arg(long, env = "WEIR_BENCH_QUEUE_PREFIX", default_value = "bench")]
    pub queue_prefix: String,
    /// Connections the `connections` scenario parks (the server must be allowed
    /// that many: its connection cap, and this process's open-file limit, which
    /// the bench raises to its hard limit).
    #[arg(long, env = "WEIR_BENCH_PARKED", default_value_t = 1000)]
    pub parked: usize,
    /// What each parked connection waits in.
    #[arg(long, env = "WEIR_BENCH_PARK", value_enum, default_value = "lease")]
    pub park: Park,
    /// Give up on a scenario after this many errors.
    #[arg(long, env = "WEIR_BENCH_MAX_ERRORS", default_value_t = 1000)]
    pub max_errors: u64,
    /// Give up on a scenario that runs longer than this.
    #[arg(long, env = "WEIR_BENCH_SCENARIO_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub scenario_timeout: Duration,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `weir worker --exec CMD`: every flag also reads `WEIR_WORKER_*` (the
/// connection flags read the `WEIR_SERVER`, `WEIR_CA_CERT` and `WEIR_API_KEY`
/// every client command shares).
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Shell command run per task through `sh -c`: the payload (JSON) on stdin,
    /// WEIR_TASK_ID, WEIR_QUEUE, WEIR_KIND and WEIR_ATTEMPT in its environment.
    /// Exit 0 acks with stdout as the result (JSON if it parses, else a string);
    /// any other exit fails the attempt with the end of stderr.
    #[arg(long, env = "WEIR_WORKER_EXEC")]
    pub exec: String,
    /// Queue to lease from; repeat for several (`name` or `name=weight`, weights
    /// sharing out the leases among queues; a comma-separated list in the env).
    #[arg(
        long = "queue",
        env = "WEIR_WORKER_QUEUE",
        required = true,
        value_delimiter = ','
    )]
    pub queues: Vec<String>,
    /// Commands running at once.
    #[arg(long, env = "WEIR_WORKER_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Tasks leased ahead of a free slot, so the next command starts without a
    /// round trip [default: the pool's].
    #[arg(long, env = "WEIR_WORKER_PREFETCH")]
    pub prefetch: Option<usize>,
    /// How often a running task's lease is renewed (a cancel does not wait for it:
    /// each heartbeat is parked on the server until a cancel or this interval)
    /// [default: 2s].
    #[arg(long, env = "WEIR_WORKER_HEARTBEAT_INTERVAL", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// On SIGTERM/SIGINT: how long running commands may take to finish before
    /// they are killed.
    #[arg(long, env = "WEIR_WORKER_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Between SIGTERM and SIGKILL when a command is stopped (deadline, cancel,
    /// shutdown). At most 10 minutes.
    #[arg(long, env = "WEIR_WORKER_KILL_GRACE", default_value = "2s", value_parser = parse_duration)]
    pub kill_grace: Duration,
    /// Largest stdout a command may print (the task's result); more fails the
    /// task.
    #[arg(long, env = "WEIR_WORKER_OUTPUT_BYTES_MAX", default_value_t = 1 << 20)]
    pub output_bytes_max: usize,
    /// Name the worker gives the server when it leases [default: weir-exec@HOST:PID].
    #[arg(long, env = "WEIR_WORKER_NAME")]
    pub name: Option<String>,
    /// How the worker gets tasks: one worker channel (a WebSocket; the server
    /// pushes tasks and cancels; falls back to HTTP where the channel cannot
    /// serve: an older server, weighted queues), or HTTP long-polls.
    #[arg(
        long,
        env = "WEIR_WORKER_TRANSPORT",
        value_enum,
        default_value = "channel"
    )]
    pub transport: Transport,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_a_bench_line() {
        let cli = Cli::try_parse_from([
            "weir",
            "bench",
            "--spawn",
            "--scenario",
            "enqueue",
            "--scenario",
            "e2e,latency",
            "--duration",
            "2s",
            "--tasks",
            "20000",
        ])
        .unwrap();
        let Command::Bench(b) = cli.command else {
            panic!("not bench")
        };
        assert_eq!(
            b.scenario,
            vec![Scenario::Enqueue, Scenario::E2e, Scenario::Latency]
        );
        assert_eq!(b.duration, Duration::from_secs(2));
        assert_eq!(b.tasks, Some(20_000));
        assert!(b.spawn);
    }

    #[test]
    fn parses_a_worker_line() {
        let cli = Cli::try_parse_from([
            "weir",
            "worker",
            "--exec",
            "cat",
            "--queue",
            "a",
            "--queue",
            "b=3,c",
            "--kill-grace",
            "500ms",
        ])
        .unwrap();
        let Command::Worker(w) = cli.command else {
            panic!("not worker")
        };
        assert_eq!(w.exec, "cat");
        assert_eq!(w.queues, ["a", "b=3", "c"]);
        assert_eq!(w.concurrency, 4);
        assert_eq!(w.kill_grace, Duration::from_millis(500));
        assert_eq!(w.shutdown_grace, Duration::from_secs(30));
        assert_eq!(w.output_bytes_max, 1 << 20);
        assert!(Cli::try_parse_from(["weir", "worker", "--exec", "cat"]).is_err());
    }

    #[test]
    fn parses_enqueue_with_negative_priority() {
        let cli = Cli::try_parse_from([
            "weir",
            "enqueue",
            "emails",
            "--priority",
            "-3",
            "--delay",
            "10s",
            "--json",
        ])
        .unwrap();
        let Command::Enqueue(e) = cli.command else {
            panic!("not enqueue")
        };
        assert_eq!(e.priority, Some(-3));
        assert_eq!(e.delay, Some(Duration::from_secs(10)));
        assert!(e.client.json);
    }
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create or replace a schedule: every tick of CRON enqueues one task.
    Set(ScheduleSetArgs),
    /// Show one schedule with its next and last run.
    Get {
        /// Schedule name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List every schedule.
    List(ClientArgs),
    /// Delete a schedule.
    Delete {
        /// Schedule name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub struct ScheduleSetArgs {
    /// Schedule name.
    pub name: String,
    /// Cron expression: `*/5 * * * *` (minute hour day month weekday), or six
    /// fields with seconds first (`*/10 * * * * *`).
    #[arg(long)]
    pub cron: String,
    /// IANA time zone the expression is read in [default: UTC].
    #[arg(long)]
    pub tz: Option<String>,
    /// Queue each tick enqueues into.
    #[arg(long)]
    pub queue: String,
    /// Task payload: JSON text, `@file`, or `@-` for stdin [default: {}].
    #[arg(long)]
    pub payload: Option<String>,
    /// Task kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Priority; higher runs first.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Attempts before a task is dead.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout (30s, 5m; a bare number is ms).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// What ticks missed while no server ran turn into.
    #[arg(long, value_enum, default_value = "skip")]
    pub missed: MissedPolicy,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `--missed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MissedPolicy {
    /// Drop them; go on with the next tick.
    Skip,
    /// Run one task for all of them at once.
    RunOnce,
}

/// A flow-control flag's value: a limit, or `none` to clear it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Setting<T> {
    Set(T),
    Clear,
}

impl<T> Setting<T> {
    /// As a patch field: `Some(None)` clears, `Some(Some(v))` sets.
    pub fn patch(self) -> Option<T> {
        match self {
            Setting::Set(v) => Some(v),
            Setting::Clear => None,
        }
    }
}

/// A value parser for `Setting<T>`: `none` (or `off`) clears, else `parse`.
fn setting<T>(
    parse: fn(&str) -> Result<T, String>,
) -> impl Fn(&str) -> Result<Setting<T>, String> + Clone + Send + Sync + 'static
where
    T: 'static,
{
    move |text: &str| match text.trim() {
        "none" | "off" => Ok(Setting::Clear),
        t => parse(t).map(Setting::Set),
    }
}

/// A whole number of at least 1.
fn parse_count(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{text}` is not a whole number of at least 1")),
    }
}
