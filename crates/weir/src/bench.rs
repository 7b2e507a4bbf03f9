//! `weir bench`: a load generator for a running server (or one it spawns). Each
//! scenario is bounded by a task count and a time limit, counts its errors instead
//! of stopping at the first, retries overload answers (429/503) after a short
//! pause, and prints one summary line (or one JSON object). `--server` may list
//! several servers sharing one store (`http://a:7701,http://b:7702`): each new
//! connection pool goes to the next, so producers and consumers spread over them.

use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use weir_client::{AckItem, Client, ClientBuilder, EnqueueOptions, Error, LeaseBatch, LeasedTask};

use crate::cli::{BenchArgs, Scenario};
use crate::serve::LISTENING_PREFIX;

/// Default task counts per scenario when `--tasks` is not given: enough for a run of
/// several seconds on 2 cores (500k batched tasks took 0.6 s on the embedded store, too
/// short to measure: one segment roll moved the figure by 20%).
const ENQUEUE_TASKS_DEFAULT: u64 = 200_000;
const BATCH_TASKS_DEFAULT: u64 = 2_000_000;
const E2E_TASKS_DEFAULT: u64 = 2_000_000;
/// Long-poll of the consumers' leases.
const LEASE_WAIT_MS: u64 = 1_000;
/// Tasks per lease of the latency scenario's consumers.
const LATENCY_LEASE_MAX: u32 = 100;
/// Enqueues in flight at once in the latency scenario (and its connection pool).
const LATENCY_IN_FLIGHT_MAX: usize = 64;
/// Settle requests a latency consumer leaves running in the background.
const LATENCY_SETTLES_IN_FLIGHT_MAX: usize = 4;
/// How long latency consumers keep polling for stragglers after the last send.
const LATENCY_DRAIN_MS: u64 = 5_000;
/// Times one request is retried after overload answers before it counts as an
/// error.
const OVERLOAD_RETRIES_MAX: u32 = 100;
/// Pause before retrying an overload answer without `Retry-After`.
const OVERLOAD_PAUSE_MS_DEFAULT: u64 = 10;
/// Longest pause before retrying an overload answer, whatever `Retry-After` says.
const OVERLOAD_PAUSE_MS_MAX: u64 = 1_000;
/// Pause after a failed lease so a dead server does not become a hot loop.
const LEASE_ERROR_PAUSE_MS: u64 = 50;
/// Longest wait for a spawned server to announce its address, and to exit.
const SPAWN_TIMEOUT_MS: u64 = 30_000;
/// Latencies are recorded in microseconds up to this bound.
const LATENCY_US_MAX: u64 = 60_000_000;
/// Bytes of `{"n":<20 digits>,"pad":""}` around the padding.
const PAYLOAD_OVERHEAD_BYTES: usize = 35;

/// One scenario's results.
#[derive(Debug, Default, Serialize)]
struct Report {
    scenario: &'static str,
    /// Tasks that made it: enqueued (enqueue, batch), acked (e2e) or received by a
    /// consumer (latency).
    tasks: u64,
    secs: f64,
    tasks_per_sec: f64,
    /// Requests or items that failed for good.
    errors: u64,
    /// Overload answers (429/503) that were retried.
    rate_limited: u64,
    /// Whether every task the scenario meant to move arrived.
    complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p90_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p999_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_ms: Option<f64>,
    /// e2e: how long enqueueing alone took; latency: how many were sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    enqueue_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent: Option<u64>,
    /// connections: parked connections, and the server's resident memory
    /// before and after parking them.
    #[serde(skip_serializing_if = "Option::is_none")]
    parked: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_before_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_after_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_per_connection: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

impl Report {
    fn line(&self) -> String {
        let mut s = format!(
            "scenario={} tasks={} secs={:.3} tasks_per_sec={:.0}",
            self.scenario, self.tasks, self.secs, self.tasks_per_sec
        );
        let extra = [
            ("p50_ms", self.p50_ms),
            ("p90_ms", self.p90_ms),
            ("p99_ms", self.p99_ms),
            ("p999_ms", self.p999_ms),
            ("max_ms", self.max_ms),
            ("enqueue_secs", self.enqueue_secs),
        ];
        for (name, value) in extra {
            if let Some(v) = value {
                s.push_str(&format!(" {name}={v:.3}"));
            }
        }
        let counts = [
            ("sent", self.sent),
            ("parked", self.parked),
            ("rss_before_bytes", self.rss_before_bytes),
            ("rss_after_bytes", self.rss_after_bytes),
            ("bytes_per_connection", self.bytes_per_connection),
        ];
        for (name, value) in counts {
            if let Some(v) = value {
                s.push_str(&format!(" {name}={v}"));
            }
        }
        s.push_str(&format!(
            " errors={} rate_limited={} complete={}",
            self.errors, self.rate_limited, self.complete
        ));
        s
    }
}

/// Counters shared by a scenario's tasks.
#[derive(Default)]
struct Stats {
    /// Tasks done (meaning depends on the scenario).
    done: AtomicU64,
    errors: AtomicU64,
    rate_limited: AtomicU64,
    /// Set once `errors` reaches the limit: every loop winds down.
    stop: AtomicBool,
    /// The first error, to show what went wrong.
    first_error: Mutex<Option<String>>,
}

/// What every task of one scenario shares.
struct Shared {
    queue: String,
    /// A client of each server under test (several share one store), with the
    /// API key and CA of the flags; each new client takes the next one, so
    /// producers and consumers spread over them.
    clients: Vec<ClientBuilder>,
    next_base: std::sync::atomic::AtomicUsize,
    payload: Payload,
    stats: Stats,
    /// The scenario's time limit.
    deadline: Instant,
    max_errors: u64,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stats.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) {
        self.errors(1, what, e);
    }

    /// The tasks of a lease. Any the client could not decode count as errors (the
    /// bench leases only its own payloads, so there should be none) and are left
    /// to their leases.
    fn decoded(&self, batch: LeaseBatch) -> Vec<LeasedTask> {
        if let Some(u) = batch.undecodable.first() {
            let detail = format!("task {} could not be decoded: {}", u.id, u.error);
            self.errors(batch.undecodable.len() as u64, "lease", detail);
        }
        batch.tasks
    }

    /// Counts `n` failures of `what`; remembers the first, and stops the scenario
    /// once there are too many.
    fn errors(&self, n: u64, what: &str, detail: impl std::fmt::Display) {
        if n == 0 {
            return;
        }
        let before = self.stats.errors.fetch_add(n, Ordering::Relaxed);
        if before == 0 {
            let mut first = self
                .stats
                .first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| format!("{what}: {detail}"));
        }
        if before + n >= self.max_errors {
            self.stats.stop.store(true, Ordering::Relaxed);
        }
    }

    /// A client with its own connection pool of `connections`.
    fn client(&self, connections: usize) -> anyhow::Result<Client> {
        let i = self.next_base.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i]
            .clone()
            .pool_max_idle_per_host(connections)
            .build()
            .context("building the HTTP client")
    }

    fn report(&self, scenario: &'static str, tasks: u64, secs: f64, complete: bool) -> Report {
        let first_error = self
            .stats
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Report {
            scenario,
            tasks,
            secs,
            tasks_per_sec: if secs > 0.0 { tasks as f64 / secs } else { 0.0 },
            errors: self.stats.errors.load(Ordering::Relaxed),
            rate_limited: self.stats.rate_limited.load(Ordering::Relaxed),
            complete,
            first_error,
            ..Report::default()
        }
    }
}

/// Builds payloads `{"n": i}`, padded to about `--payload-bytes`.
struct Payload {
    pad: Option<String>,
}

impl Payload {
    fn new(bytes: usize) -> Payload {
        let pad = bytes.saturating_sub(PAYLOAD_OVERHEAD_BYTES);
        Payload {
            pad: (bytes > 0).then(|| "x".repeat(pad)),
        }
    }

    fn make(&self, key: &str, value: u64) -> Value {
        match &self.pad {
            None => json!({ key: value }),
            Some(pad) => json!({ key: value, "pad": pad }),
        }
    }
}

/// Runs `call` until it succeeds, retrying overload answers after a pause (and
/// counting them). Other errors are counted and give `None`.
async fn retrying<T, F, Fut>(shared: &Shared, what: &str, mut call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut retries = 0;
    loop {
        let pause = match call().await {
            Ok(v) => return Some(v),
            Err(Error::RateLimited { retry_after }) => retry_after,
            Err(Error::Server { status: 503, .. }) => None,
            Err(e) => {
                shared.error(what, anyhow::Error::from(e).to_string());
                return None;
            }
        };
        shared.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        retries += 1;
        if retries > OVERLOAD_RETRIES_MAX || shared.stopped() {
            shared.error(what, "still overloaded after retries");
            return None;
        }
        let pause = pause
            .unwrap_or(Duration::from_millis(OVERLOAD_PAUSE_MS_DEFAULT))
            .clamp(
                Duration::from_millis(1),
                Duration::from_millis(OVERLOAD_PAUSE_MS_MAX),
            );
        tokio::time::sleep(pause).await;
    }
}

/// Entry point of `weir bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let scenarios = expand(&args.scenario);
    let spawned = if args.spawn {
        Some(Spawned::start(args.data_dir.clone()).await?)
    } else {
        None
    };
    let base = match &spawned {
        Some(s) => s.base.clone(),
        None => args.client.conn.server.clone(),
    };
    let bases: Vec<String> = base
        .split(',')
        .map(|b| b.trim().trim_end_matches('/').to_owned())
        .filter(|b| !b.is_empty())
        .collect();
    if bases.is_empty() {
        bail!("--server names no server");
    }
    let result = run_scenarios(&args, &scenarios, &bases).await;
    if let Some(s) = spawned {
        s.stop().await?;
    }
    let reports = result?;
    let ok = reports.iter().all(|r| r.complete && r.errors == 0);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The scenarios to run, in order, without repeats; `all` stands for every one.
fn expand(asked: &[Scenario]) -> Vec<Scenario> {
    const EVERY: [Scenario; 5] = [
        Scenario::Enqueue,
        Scenario::Batch,
        Scenario::E2e,
        Scenario::Latency,
        Scenario::Redelivery,
    ];
    let mut out = Vec::new();
    for s in asked {
        let list: &[Scenario] = if *s == Scenario::All {
            &EVERY
        } else {
            std::slice::from_ref(s)
        };
        for s in list {
            if !out.contains(s) {
                out.push(*s);
            }
        }
    }
    out
}

async fn run_scenarios(
    args: &BenchArgs,
    scenarios: &[Scenario],
    bases: &[String],
) -> anyhow::Result<Vec<Report>> {
    if args.connections == 0 || args.batch_connections == 0 || args.producers == 0 {
        bail!("--connections, --batch-connections and --producers must be at least 1");
    }
    if args.consumers == 0 || args.latency_consumers == 0 {
        bail!("--consumers and --latency-consumers must be at least 1");
    }
    if args.batch == 0 || args.lease_max == 0 || args.rate == 0 {
        bail!("--batch, --lease-max and --rate must be at least 1");
    }
    for base in bases {
        let probe = crate::commands::client_builder(&args.client.conn, base)
            .build()
            .context("building the HTTP client")?;
        probe
            .queues()
            .await
            .with_context(|| format!("the server at {base} does not answer"))?;
    }

    let run_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut reports = Vec::new();
    for &scenario in scenarios {
        let name = scenario_name(scenario);
        let shared = Arc::new(Shared {
            queue: format!("{}.{name}.{run_ms}", args.queue_prefix),
            clients: bases
                .iter()
                .map(|b| crate::commands::client_builder(&args.client.conn, b))
                .collect(),
            next_base: std::sync::atomic::AtomicUsize::new(0),
            payload: Payload::new(args.payload_bytes),
            stats: Stats::default(),
            deadline: Instant::now() + args.scenario_timeout,
            max_errors: args.max_errors.max(1),
        });
        if args.queue_rate.is_some() || args.queue_max_in_flight.is_some() {
            let queue = match (scenario, &args.drain_queue) {
                (Scenario::Drain, Some(q)) => q.clone(),
                _ => shared.queue.clone(),
            };
            let patch = weir_client::QueueConfigPatch {
                rate_per_sec: args.queue_rate.map(Some),
                burst: args.queue_burst.map(Some),
                max_in_flight: args.queue_max_in_flight.map(Some),
                ..Default::default()
            };
            shared
                .client(1)?
                .configure_queue(&queue, &patch)
                .await
                .with_context(|| format!("configuring queue {queue}"))?;
        }
        let report = match scenario {
            Scenario::Enqueue => enqueue(args, shared).await?,
            Scenario::Batch => batch(args, shared).await?,
            Scenario::E2e => e2e(args, shared).await?,
            Scenario::Latency => latency(args, shared).await?,
            Scenario::Redelivery => redelivery(shared).await?,
            Scenario::Drain => drain(args, shared).await?,
            Scenario::Connections => connections::run(args, shared, &bases[0]).await?,
            Scenario::All => unreachable!("expanded above"),
        };
        if args.client.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", report.line());
            if let Some(e) = &report.first_error {
                eprintln!("  first error: {e}");
            }
        }
        reports.push(report);
    }
    Ok(reports)
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Enqueue => "enqueue",
        Scenario::Batch => "batch",
        Scenario::E2e => "e2e",
        Scenario::Latency => "latency",
        Scenario::Redelivery => "redelivery",
        Scenario::Drain => "drain",
        Scenario::Connections => "connections",
        Scenario::All => "all",
    }
}

/// Shows `name: done/target` on stderr once a second while a scenario runs, if
/// stderr is a terminal. Dropping the guard stops it.
struct Progress(Option<tokio::task::JoinHandle<()>>);

impl Progress {
    fn start(name: &'static str, shared: &Arc<Shared>, target: u64) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let shared = Arc::clone(shared);
        Progress(Some(tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let done = shared.stats.done.load(Ordering::Relaxed);
                let rate = done as f64 / started.elapsed().as_secs_f64();
                eprint!("\r{name}: {done}/{target} ({rate:.0}/s)    ");
            }
        })))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
            eprint!("\r\x1b[K");
        }
    }
}

/// Waits for every task of a set; a panicked task is a bug worth surfacing.
async fn join_all<T: 'static>(set: &mut JoinSet<T>) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::with_capacity(set.len());
    while let Some(r) = set.join_next().await {
        out.push(r.context("a bench task panicked")?);
    }
    Ok(out)
}

/// Single enqueues, one keep-alive connection per concurrent task.
async fn enqueue(args: &BenchArgs, shared: Arc<Shared>) -> anyhow::Result<Report> {
    let n = args.tasks.unwrap_or(ENQUEUE_TASKS_DEFAULT);
    let _progress = Progress::start("enqueue", &shared, n);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..args.connections {
        let client = shared.client(1)?;
        let (shared, next) = (Arc::clone(&shared), Arc::clone(&next));
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || shared.stopped() {
                    break;
                }
                let task = EnqueueOptions::new(shared.payload.make("n", i));
                let done =
                    retrying(&shared, "enqueue", || client.enqueue(&shared.queue, &task)).await;
                if done.is_some() {
                    shared.stats.done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    join_all(&mut set).await?;
    let secs = started.elapsed().as_secs_f64();
    let done = shared.stats.done.load(Ordering::Relaxed);
    Ok(shared.report("enqueue", done, secs, done == n))
}

/// Claims the next batch of `[i, j)` out of `n`, or `None` when all are claimed.
fn claim(next: &AtomicU64, batch: u64, n: u64) -> Option<(u64, u64)> {
    let i = next.fetch_add(batch, Ordering::Relaxed);
    (i < n).then(|| (i, (i + batch).min(n)))
}

/// Producer loop shared by `batch` and `e2e`: enqueues batches until `n` are
/// claimed; counts enqueued tasks into `enqueued`.
async fn produce_batches(
    shared: Arc<Shared>,
    client: Client,
    next: Arc<AtomicU64>,
    n: u64,
    batch: u64,
    enqueued: Arc<AtomicU64>,
) {
    while let Some((i, j)) = claim(&next, batch, n) {
        if shared.stopped() {
            break;
        }
        let tasks: Vec<EnqueueOptions> = (i..j)
            .map(|k| EnqueueOptions::new(shared.payload.make("n", k)))
            .collect();
        let ids = retrying(&shared, "enqueue batch", || {
            client.enqueue_batch(&shared.queue, &tasks)
        })
        .await;
        match ids {
            Some(ids) if ids.len() == tasks.len() => {
                enqueued.fetch_add(tasks.len() as u64, Ordering::Relaxed);
            }
            Some(ids) => shared.error(
                "enqueue batch",
                format!("sent {} tasks, got {} ids", tasks.len(), ids.len()),
            ),
            None => {}
        }
    }
}

/// Batch enqueues from a few connections.
async fn batch(args: &BenchArgs, shared: Arc<Shared>) -> anyhow::Result<Report> {
    let n = args.tasks.unwrap_or(BATCH_TASKS_DEFAULT);
    let _progress = Progress::start("batch", &shared, n);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..args.batch_connections {
        set.spawn(produce_batches(
            Arc::clone(&shared),
            shared.client(1)?,
            Arc::clone(&next),
            n,
            args.batch as u64,
            Arc::clone(&done),
        ));
    }
    // Progress reads `stats.done`; mirror the producers' count into it.
    let mirror = mirror(Arc::clone(&done), Arc::clone(&shared));
    join_all(&mut set).await?;
    mirror.abort();
    let secs = started.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    Ok(shared.report("batch", done, secs, done == n))
}

/// Copies `from` into `shared.stats.done` a few times a second, for progress.
fn mirror(from: Arc<AtomicU64>, shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            shared
                .stats
                .done
                .store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    })
}

/// Batched producers and leasing consumers that settle every lease with one
/// `POST /v1/acks`; tasks per second from the first enqueue to the last ack.
async fn e2e(args: &BenchArgs, shared: Arc<Shared>) -> anyhow::Result<Report> {
    let n = args.tasks.unwrap_or(E2E_TASKS_DEFAULT);
    let _progress = Progress::start("e2e", &shared, n);
    let next = Arc::new(AtomicU64::new(0));
    let enqueued = Arc::new(AtomicU64::new(0));
    let producers_done = Arc::new(AtomicBool::new(false));
    // Tasks acked, plus tasks whose ack was refused: either way nothing more will
    // come for them, so consumers stop once this reaches what was enqueued.
    let settled = Arc::new(AtomicU64::new(0));
    let started = Instant::now();

    let mut consumers = JoinSet::new();
    for c in 0..args.consumers {
        if args.transport == crate::cli::Transport::Channel {
            consumers.spawn(channel::consume(
                Arc::clone(&shared),
                args.client.conn.server.clone(),
                args.client.conn.api_key.clone(),
                args.lease_max,
                format!("bench-{c}"),
                Arc::clone(&enqueued),
                Arc::clone(&producers_done),
                Arc::clone(&settled),
                n,
            ));
            continue;
        }
        let client = shared.client(1)?;
        let (shared, enqueued, producers_done, settled) = (
            Arc::clone(&shared),
            Arc::clone(&enqueued),
            Arc::clone(&producers_done),
            Arc::clone(&settled),
        );
        let lease_max = args.lease_max;
        let worker = format!("bench-{c}");
        consumers.spawn(async move {
            let mut last_ack = None;
            loop {
                let all_in = producers_done.load(Ordering::Acquire)
                    && settled.load(Ordering::Relaxed) >= enqueued.load(Ordering::Relaxed);
                if all_in || settled.load(Ordering::Relaxed) >= n || shared.stopped() {
                    break;
                }
                let leased = retrying(&shared, "lease", || {
                    client.lease(&shared.queue, lease_max, LEASE_WAIT_MS, Some(&worker))
                })
                .await;
                let Some(leased) = leased else {
                    tokio::time::sleep(Duration::from_millis(LEASE_ERROR_PAUSE_MS)).await;
                    continue;
                };
                let leased = shared.decoded(leased);
                if leased.is_empty() {
                    continue;
                }
                let count = leased.len() as u64;
                ack_all(&shared, &client, leased).await;
                last_ack = Some(Instant::now());
                settled.fetch_add(count, Ordering::Relaxed);
            }
            last_ack
        });
    }

    let mut producers = JoinSet::new();
    for _ in 0..args.producers {
        producers.spawn(produce_batches(
            Arc::clone(&shared),
            shared.client(1)?,
            Arc::clone(&next),
            n,
            args.batch as u64,
            Arc::clone(&enqueued),
        ));
    }
    join_all(&mut producers).await?;
    let enqueue_secs = started.elapsed().as_secs_f64();
    producers_done.store(true, Ordering::Release);

    let last_ack = join_all(&mut consumers)
        .await?
        .into_iter()
        .flatten()
        .max()
        .unwrap_or_else(Instant::now);
    let secs = last_ack.duration_since(started).as_secs_f64();
    let acked = shared.stats.done.load(Ordering::Relaxed);
    let mut report = shared.report("e2e", acked, secs, acked == n);
    report.enqueue_secs = Some(enqueue_secs);
    Ok(report)
}

/// Nanoseconds since the Unix epoch: the send stamp in latency payloads. Both
/// ends run in this process, so the wall clock is shared.
fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).context("creating a histogram")
}

/// Single enqueues at a fixed rate while consumers long-poll; records the time
/// from send to lease arrival.
async fn latency(args: &BenchArgs, shared: Arc<Shared>) -> anyhow::Result<Report> {
    let total = ((args.rate as f64) * args.duration.as_secs_f64()).round() as u64;
    let _progress = Progress::start("latency", &shared, total);
    let sent = Arc::new(AtomicU64::new(0));
    let sender_done = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));

    let mut consumers = JoinSet::new();
    for c in 0..args.latency_consumers {
        let client = shared.client(1 + LATENCY_SETTLES_IN_FLIGHT_MAX)?;
        let mut hist = latency_histogram()?;
        let (shared, sent, sender_done, received) = (
            Arc::clone(&shared),
            Arc::clone(&sent),
            Arc::clone(&sender_done),
            Arc::clone(&received),
        );
        let worker = format!("bench-latency-{c}");
        consumers.spawn(async move {
            let settles = Arc::new(Semaphore::new(LATENCY_SETTLES_IN_FLIGHT_MAX));
            let mut drain_until: Option<Instant> = None;
            loop {
                if sender_done.load(Ordering::Acquire) {
                    if received.load(Ordering::Relaxed) >= sent.load(Ordering::Relaxed) {
                        break;
                    }
                    let until = *drain_until.get_or_insert_with(|| {
                        Instant::now() + Duration::from_millis(LATENCY_DRAIN_MS)
                    });
                    if Instant::now() >= until {
                        break;
                    }
                }
                if shared.stopped() {
                    break;
                }
                let leased = retrying(&shared, "lease", || {
                    client.lease(
                        &shared.queue,
                        LATENCY_LEASE_MAX,
                        LEASE_WAIT_MS,
                        Some(&worker),
                    )
                })
                .await;
                let arrived = unix_nanos();
                let Some(leased) = leased else {
                    tokio::time::sleep(Duration::from_millis(LEASE_ERROR_PAUSE_MS)).await;
                    continue;
                };
                let leased = shared.decoded(leased);
                if leased.is_empty() {
                    continue;
                }
                for t in &leased {
                    match t.payload.get("t").and_then(Value::as_u64) {
                        Some(sent_at) => {
                            hist.saturating_record(arrived.saturating_sub(sent_at) / 1_000)
                        }
                        None => shared.error("lease", "a task without its send stamp"),
                    }
                }
                received.fetch_add(leased.len() as u64, Ordering::Relaxed);
                shared
                    .stats
                    .done
                    .fetch_add(leased.len() as u64, Ordering::Relaxed);
                // Ack in the background so the next long-poll starts at once; the
                // semaphore bounds how many settles are in flight.
                let acks: Vec<AckItem> = leased
                    .into_iter()
                    .map(|t| AckItem {
                        id: t.id,
                        lease_id: t.lease_id,
                        result: Value::Null,
                    })
                    .collect();
                let Ok(permit) = Arc::clone(&settles).acquire_owned().await else {
                    break;
                };
                let (client, shared) = (client.clone(), Arc::clone(&shared));
                tokio::spawn(async move {
                    if let Some(r) = retrying(&shared, "settle", || client.settle(&acks, &[])).await
                    {
                        let bad = r.acks.iter().filter(|o| !o.ok).count() as u64;
                        shared.errors(bad, "ack", "refused");
                    }
                    drop(permit);
                });
            }
            // Wait for this consumer's background settles.
            let _ = settles
                .acquire_many(LATENCY_SETTLES_IN_FLIGHT_MAX as u32)
                .await;
            hist
        });
    }

    let client = shared.client(LATENCY_IN_FLIGHT_MAX)?;
    let in_flight = Arc::new(Semaphore::new(LATENCY_IN_FLIGHT_MAX));
    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    for _ in 0..total {
        tick.tick().await;
        if shared.stopped() {
            break;
        }
        let permit = Arc::clone(&in_flight).acquire_owned().await?;
        let (client, shared, sent) = (client.clone(), Arc::clone(&shared), Arc::clone(&sent));
        tokio::spawn(async move {
            let task = EnqueueOptions::new(shared.payload.make("t", unix_nanos()));
            if retrying(&shared, "enqueue", || client.enqueue(&shared.queue, &task))
                .await
                .is_some()
            {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    let _ = in_flight.acquire_many(LATENCY_IN_FLIGHT_MAX as u32).await?;
    let send_secs = started.elapsed().as_secs_f64();
    sender_done.store(true, Ordering::Release);

    let mut hist = latency_histogram()?;
    for h in join_all(&mut consumers).await? {
        hist.add(&h).context("merging histograms")?;
    }
    let sent = sent.load(Ordering::Relaxed);
    let received = received.load(Ordering::Relaxed);
    let mut report = shared.report(
        "latency",
        received,
        send_secs,
        received == sent && sent == total,
    );
    report.tasks_per_sec = if send_secs > 0.0 {
        sent as f64 / send_secs
    } else {
        0.0
    };
    report.sent = Some(sent);
    let ms = |us: u64| us as f64 / 1_000.0;
    if !hist.is_empty() {
        report.p50_ms = Some(ms(hist.value_at_quantile(0.50)));
        report.p90_ms = Some(ms(hist.value_at_quantile(0.90)));
        report.p99_ms = Some(ms(hist.value_at_quantile(0.99)));
        report.p999_ms = Some(ms(hist.value_at_quantile(0.999)));
        report.max_ms = Some(ms(hist.max()));
    }
    Ok(report)
}

/// Tasks the redelivery scenario abandons.
const REDELIVERY_TASKS: u64 = 50;
/// Their `timeout_ms`: short, so the scenario takes seconds (the lease adds the
/// server's grace, which the lease's `lease_expires_at` includes).
const REDELIVERY_TIMEOUT_MS: u64 = 500;
/// Longest a redelivery scenario waits for the tasks to come back.
const REDELIVERY_WAIT_MS_MAX: u64 = 120_000;

/// A "worker" leases tasks and dies (never acks); another long-polls the queue.
/// Records, per task, how long after its lease's `lease_expires_at` it was leased
/// again (SPEC §11: at most lease expiry + 1 s).
async fn redelivery(shared: Arc<Shared>) -> anyhow::Result<Report> {
    let client = shared.client(2)?;
    let tasks: Vec<EnqueueOptions> = (0..REDELIVERY_TASKS)
        .map(|i| {
            EnqueueOptions::new(serde_json::json!({ "i": i })).timeout_ms(REDELIVERY_TIMEOUT_MS)
        })
        .collect();
    client
        .enqueue_batch(&shared.queue, &tasks)
        .await
        .context("enqueueing")?;
    let first = client
        .lease(
            &shared.queue,
            REDELIVERY_TASKS as u32,
            5_000,
            Some("doomed"),
        )
        .await
        .context("leasing")?;
    let first = shared.decoded(first);
    let expires: std::collections::HashMap<String, i64> = first
        .iter()
        .filter_map(|t| {
            let at = chrono::DateTime::parse_from_rfc3339(&t.lease_expires_at).ok()?;
            Some((t.id.clone(), at.timestamp_micros()))
        })
        .collect();
    let started = Instant::now();
    let mut hist = latency_histogram()?;
    let mut back = 0u64;
    while back < first.len() as u64
        && started.elapsed() < Duration::from_millis(REDELIVERY_WAIT_MS_MAX)
    {
        let again = client
            .lease(
                &shared.queue,
                REDELIVERY_TASKS as u32,
                10_000,
                Some("survivor"),
            )
            .await?;
        let again = shared.decoded(again);
        let now_us = (unix_nanos() / 1_000) as i64;
        let acks: Vec<AckItem> = again
            .into_iter()
            .filter_map(|t| {
                let late_us = now_us - expires.get(&t.id)?;
                hist.saturating_record(late_us.max(1) as u64);
                back += 1;
                Some(AckItem {
                    id: t.id,
                    lease_id: t.lease_id,
                    result: Value::Null,
                })
            })
            .collect();
        client.settle(&acks, &[]).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let mut report = shared.report(
        "redelivery",
        back,
        secs,
        back == first.len() as u64 && back > 0,
    );
    let ms = |us: u64| us as f64 / 1_000.0;
    if !hist.is_empty() {
        report.p50_ms = Some(ms(hist.value_at_quantile(0.50)));
        report.p90_ms = Some(ms(hist.value_at_quantile(0.90)));
        report.p99_ms = Some(ms(hist.value_at_quantile(0.99)));
        report.p999_ms = Some(ms(hist.value_at_quantile(0.999)));
        report.max_ms = Some(ms(hist.max()));
    }
    Ok(report)
}

/// Acks every leased task in one `POST /v1/acks`; counts the acked ones as done
/// and the refused ones as errors.
async fn ack_all(shared: &Shared, client: &Client, leased: Vec<LeasedTask>) {
    let acks: Vec<AckItem> = leased
        .into_iter()
        .map(|t| AckItem {
            id: t.id,
            lease_id: t.lease_id,
            result: Value::Null,
        })
        .collect();
    let Some(r) = retrying(shared, "settle", || client.settle(&acks, &[])).await else {
        return;
    };
    let ok = r.acks.iter().filter(|o| o.ok).count() as u64;
    if let Some(bad) = r.acks.iter().find(|o| !o.ok) {
        shared.errors(
            acks.len() as u64 - ok,
            "ack",
            bad.error.as_deref().unwrap_or("refused"),
        );
    }
    shared.stats.done.fetch_add(ok, Ordering::Relaxed);
}

/// `--consumers` loops of lease (up to `--lease-max`) → one `POST /v1/acks`, until
/// `--drain-queue` has nothing pending: how fast weir dispatches a backlog it
/// absorbed earlier (peak shaving's second half).
/// How long a drain consumer waits for a task before it takes the queue as empty.
const DRAIN_WAIT_MS: u64 = 1000;

async fn drain(args: &BenchArgs, shared: Arc<Shared>) -> anyhow::Result<Report> {
    let queue = args
        .drain_queue
        .clone()
        .context("the drain scenario needs --drain-queue NAME")?;
    let probe = shared.client(1)?;
    let before = probe
        .queue(&queue)
        .await
        .context("reading the queue to drain")?;
    let n = before.counts.pending + before.counts.scheduled;
    let _progress = Progress::start("drain", &shared, n);
    let started = Instant::now();
    let mut consumers = JoinSet::new();
    let finished = Arc::new(std::sync::OnceLock::new());
    for c in 0..args.consumers {
        let client = shared.client(1)?;
        let (shared, queue) = (Arc::clone(&shared), queue.clone());
        let finished = Arc::clone(&finished);
        let lease_max = args.lease_max;
        consumers.spawn(async move {
            let worker = format!("bench-drain-{c}");
            while !shared.stopped() {
                // A long-poll: a queue under a rate limit hands tasks out as its
                // tokens come; an empty answer after a whole wait means drained.
                let Some(leased) = retrying(&shared, "lease", || {
                    client.lease(&queue, lease_max, DRAIN_WAIT_MS, Some(&worker))
                })
                .await
                else {
                    break;
                };
                let leased = shared.decoded(leased);
                if leased.is_empty() {
                    break;
                }
                ack_all(&shared, &client, leased).await;
                // Everything counted at the start is done: the run ends now,
                // not when the other consumers' long-polls give up.
                if shared.stats.done.load(Ordering::Relaxed) >= n {
                    let _ = finished.set(Instant::now());
                    break;
                }
            }
        });
    }
    join_all(&mut consumers).await?;
    let ended = finished.get().copied().unwrap_or_else(Instant::now);
    let secs = ended.duration_since(started).as_secs_f64();
    let done = shared.stats.done.load(Ordering::Relaxed);
    Ok(shared.report("drain", done, secs, done >= n))
}

/// The `e2e` scenario's consumer on a worker channel.
mod channel {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    /// What the consumer reads of the server's messages.
    #[derive(serde::Deserialize)]
    struct Pushed {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        tasks: Vec<TaskRef>,
        #[serde(default)]
        acks: Vec<Outcome>,
    }

    #[derive(serde::Deserialize)]
    struct TaskRef {
        id: String,
        lease_id: String,
    }

    #[derive(serde::Deserialize)]
    struct Outcome {
        ok: bool,
    }

    /// Consumes until every enqueued task is settled: tasks pushed → one settle
    /// of their acks and as much credit again, without waiting for the answer.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn consume(
        shared: Arc<Shared>,
        bases: String,
        api_key: Option<String>,
        credit: u32,
        worker: String,
        enqueued: Arc<AtomicU64>,
        producers_done: Arc<AtomicBool>,
        settled: Arc<AtomicU64>,
        n: u64,
    ) -> Option<Instant> {
        let base = bases
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let Some(hostport) = base.strip_prefix("http://") else {
            shared.error("channel", "the channel transport needs an http:// server");
            return None;
        };
        let hostport = hostport.trim_end_matches('/').to_owned();
        let mut req = match format!("ws://{hostport}/v1/workers/connect").into_client_request() {
            Ok(r) => r,
            Err(e) => {
                shared.error("channel", e);
                return None;
            }
        };
        if let Some(k) = &api_key {
            if let Ok(v) = format!("Bearer {k}").parse() {
                req.headers_mut().insert("authorization", v);
            }
        }
        let ws = match tokio::net::TcpStream::connect(&hostport).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                tokio_tungstenite::client_async(req, tcp).await
            }
            Err(e) => {
                shared.error("channel connect", e);
                return None;
            }
        };
        let mut ws = match ws {
            Ok((ws, _)) => ws,
            Err(e) => {
                shared.error("channel upgrade", e);
                return None;
            }
        };
        let hello =
            json!({"type": "hello", "queues": [shared.queue], "worker": worker, "credit": credit});
        if ws.send(Message::text(hello.to_string())).await.is_err() {
            shared.error("channel", "closed at hello");
            return None;
        }
        let mut last_ack = None;
        let mut seq = 0u64;
        loop {
            let all_in = producers_done.load(Ordering::Acquire)
                && settled.load(Ordering::Relaxed) >= enqueued.load(Ordering::Relaxed);
            if all_in || settled.load(Ordering::Relaxed) >= n || shared.stopped() {
                break;
            }
            let frame =
                match tokio::time::timeout(Duration::from_millis(LEASE_WAIT_MS), ws.next()).await {
                    Err(_) => continue,
                    Ok(Some(Ok(Message::Text(t)))) => t,
                    Ok(Some(Ok(_))) => continue,
                    Ok(_) => {
                        shared.error("channel", "closed by the server");
                        return last_ack;
                    }
                };
            // Typed, skipping payloads: the client's parse is part of the cost.
            let msg: Pushed = match serde_json::from_str(&frame) {
                Ok(v) => v,
                Err(e) => {
                    shared.error("channel message", e);
                    continue;
                }
            };
            match msg.kind.as_str() {
                "tasks" => {
                    let count = msg.tasks.len() as u32;
                    seq += 1;
                    let mut settle = format!(r#"{{"type":"settle","seq":{seq},"acks":["#);
                    for (i, t) in msg.tasks.iter().enumerate() {
                        if i > 0 {
                            settle.push(',');
                        }
                        settle.push_str(&format!(
                            r#"{{"id":"{}","lease_id":"{}"}}"#,
                            t.id, t.lease_id
                        ));
                    }
                    settle.push_str("]}");
                    let more = format!(r#"{{"type":"credit","n":{count}}}"#);
                    if ws.send(Message::text(settle)).await.is_err()
                        || ws.send(Message::text(more)).await.is_err()
                    {
                        shared.error("channel", "closed while settling");
                        return last_ack;
                    }
                }
                "settled" => {
                    let ok = msg.acks.iter().filter(|a| a.ok).count() as u64;
                    if ok < msg.acks.len() as u64 {
                        shared.errors(msg.acks.len() as u64 - ok, "ack", "refused");
                    }
                    shared.stats.done.fetch_add(ok, Ordering::Relaxed);
                    settled.fetch_add(msg.acks.len() as u64, Ordering::Relaxed);
                    last_ack = Some(Instant::now());
                }
                "error" => {
                    shared.error("channel", &frame);
                    return last_ack;
                }
                _ => {}
            }
        }
        let _ = ws.send(Message::text(r#"{"type":"bye"}"#)).await;
        let _ = ws.close(None).await;
        last_ack
    }
}

/// `--scenario connections`: memory per parked connection.
mod connections {
    use super::*;
    use crate::cli::Park;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Connections opened at once while parking.
    const OPENING_IN_FLIGHT_MAX: usize = 256;
    /// How long a parked long-poll asks to wait (the server's default cap).
    const PARK_WAIT_MS: u64 = 60_000;
    /// Longest wait for the server to report every connection parked.
    const PARKED_PATIENCE_MS: u64 = 60_000;
    /// Requests timed one after another while the connections are parked.
    const PROBES: usize = 200;

    /// The server's series this scenario reads.
    #[derive(Debug, Default)]
    struct Seen {
        rss: u64,
        connections: u64,
        lease_waiters: u64,
        task_waiters: u64,
        channel_waiters: u64,
    }

    impl Seen {
        fn parse(text: &str) -> Seen {
            let mut seen = Seen::default();
            for line in text.lines() {
                let Some((name, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let Ok(v) = value.parse::<f64>() else {
                    continue;
                };
                let v = v as u64;
                match name {
                    "process_resident_memory_bytes" => seen.rss = v,
                    "weir_http_connections" => seen.connections = v,
                    "weir_longpoll_waiters{call=\"lease\"}" => seen.lease_waiters = v,
                    "weir_longpoll_waiters{call=\"task\"}" => seen.task_waiters = v,
                    "weir_longpoll_waiters{call=\"channel\"}" => seen.channel_waiters = v,
                    _ => {}
                }
            }
            seen
        }
    }

    /// One request on a fresh connection, answered and closed: the whole answer.
    async fn once(addr: std::net::SocketAddr, request: &[u8]) -> anyhow::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(request).await?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        Ok(String::from_utf8_lossy(&got).into_owned())
    }

    fn request(method: &str, path: &str, key: Option<&str>, body: &str, close: bool) -> Vec<u8> {
        let mut r = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n");
        if let Some(k) = key {
            r.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        if !body.is_empty() {
            r.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        if close {
            r.push_str("Connection: close\r\n");
        }
        r.push_str("\r\n");
        r.push_str(body);
        r.into_bytes()
    }

    async fn seen(addr: std::net::SocketAddr, key: Option<&str>) -> anyhow::Result<Seen> {
        let text = once(addr, &request("GET", "/metrics", key, "", true)).await?;
        if !text.starts_with("HTTP/1.1 200") {
            bail!(
                "GET /metrics: {}",
                text.lines().next().unwrap_or("no answer")
            );
        }
        let seen = Seen::parse(&text);
        if seen.rss == 0 {
            bail!("the server reports no process_resident_memory_bytes (not Linux?)");
        }
        Ok(seen)
    }

    /// Opens one connection and parks it.
    async fn park(
        addr: std::net::SocketAddr,
        request: Arc<Vec<u8>>,
        read_until: Option<&'static [u8]>,
    ) -> anyhow::Result<TcpStream> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&request).await?;
        if let Some(marker) = read_until {
            // Parked once the server has said this (`ok` after the head of
            // GET /healthz; a channel's welcome).
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while !got.windows(marker.len()).any(|w| w == marker) {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    bail!("the server closed a connection before parking it");
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        Ok(s)
    }

    /// A worker channel's upgrade and its hello (no credit: an idle channel;
    /// one: a waiting one), as raw bytes; the frame is masked with a zero key,
    /// as a client's must be.
    fn channel_open(queue: &str, key: Option<&str>, credit: u32) -> Vec<u8> {
        let mut r = String::from(
            "GET /v1/workers/connect HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
        if let Some(k) = key {
            r.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        r.push_str("\r\n");
        let mut bytes = r.into_bytes();
        let hello = json!({"type": "hello", "queues": [queue], "credit": credit}).to_string();
        bytes.push(0x81);
        if hello.len() < 126 {
            bytes.push(0x80 | hello.len() as u8);
        } else {
            bytes.push(0x80 | 126);
            bytes.extend_from_slice(&(hello.len() as u16).to_be_bytes());
        }
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        bytes.extend_from_slice(hello.as_bytes());
        bytes
    }

    pub(super) async fn run(
        args: &BenchArgs,
        shared: Arc<Shared>,
        base: &str,
    ) -> anyhow::Result<Report> {
        let Some(hostport) = base.strip_prefix("http://") else {
            bail!("--scenario connections parks plain-HTTP connections: {base} is not http://");
        };
        let addr = tokio::net::lookup_host(hostport)
            .await
            .with_context(|| format!("resolving {hostport}"))?
            .next()
            .with_context(|| format!("{hostport} resolves to nothing"))?;
        let files = crate::serve::raise_open_files_limit();
        let n = args.parked;
        if n as u64 + 64 > files {
            bail!("--parked {n} needs more open files than this process may have ({files})");
        }
        let key = args.client.conn.api_key.as_deref();
        let q = &shared.queue;
        let (req, read_answer) = match args.park {
            Park::Idle => (
                request("GET", "/healthz", key, "", false),
                Some(&b"\r\n\r\nok"[..]),
            ),
            Park::Channel => (channel_open(q, key, 0), Some(&b"welcome"[..])),
            Park::ChannelWaiting => (channel_open(q, key, 1), Some(&b"welcome"[..])),
            Park::Lease => {
                let body = format!("{{\"max\":1,\"wait_ms\":{PARK_WAIT_MS}}}");
                (
                    request("POST", &format!("/v1/queues/{q}/lease"), key, &body, false),
                    None,
                )
            }
            Park::Task => {
                // A task nobody leases: waits on it park until they time out.
                let client = shared.client(1)?;
                let task = client
                    .enqueue(q, &EnqueueOptions::new(json!({"parked": true})))
                    .await
                    .context("enqueueing the task to wait on")?;
                let path = format!("/v1/tasks/{}?wait_ms={PARK_WAIT_MS}", task.id);
                (request("GET", &path, key, "", false), None)
            }
        };
        let req = Arc::new(req);
        // Warm the server's paths once, so the first parked request does not
        // count the allocations every later one reuses.
        drop(park(addr, req.clone(), read_answer).await?);
        let before = seen(addr, key).await?;
        let started = Instant::now();
        let gate = Arc::new(Semaphore::new(OPENING_IN_FLIGHT_MAX));
        let mut opening = JoinSet::new();
        for _ in 0..n {
            let permit = gate.clone().acquire_owned().await?;
            let req = req.clone();
            opening.spawn(async move {
                let s = park(addr, req, read_answer).await;
                drop(permit);
                s
            });
        }
        let mut held = Vec::with_capacity(n);
        for s in join_all(&mut opening).await? {
            held.push(s.context("parking a connection")?);
        }
        let opened = started.elapsed().as_secs_f64();
        // Until the server has every one parked: a long-poll's request read and
        // waiting (an idle connection's answer was read above).
        let patience = Instant::now() + Duration::from_millis(PARKED_PATIENCE_MS);
        let after = loop {
            let s = seen(addr, key).await?;
            let parked = match args.park {
                Park::Idle | Park::Channel => n as u64,
                Park::Lease => s.lease_waiters,
                Park::Task => s.task_waiters,
                Park::ChannelWaiting => s.channel_waiters,
            };
            if parked >= n as u64 {
                break s;
            }
            if Instant::now() > patience {
                bail!("the server reports {parked} of {n} connections parked");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Other clients are served while they are parked.
        let client = shared.client(1)?;
        let mut h = latency_histogram()?;
        for _ in 0..PROBES {
            let t = Instant::now();
            client.queues().await.context("a request while parked")?;
            h.record(t.elapsed().as_micros() as u64)?;
        }
        drop(held);
        let per = after.rss.saturating_sub(before.rss) / n.max(1) as u64;
        let ms = |q: f64| Some(h.value_at_quantile(q) as f64 / 1000.0);
        let mut report = shared.report("connections", n as u64, opened, true);
        report.parked = Some(n as u64);
        report.rss_before_bytes = Some(before.rss);
        report.rss_after_bytes = Some(after.rss);
        report.bytes_per_connection = Some(per);
        report.p50_ms = ms(0.5);
        report.p99_ms = ms(0.99);
        report.max_ms = Some(h.max() as f64 / 1000.0);
        Ok(report)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_series_it_needs_are_read_from_the_exposition() {
            let s = super::Seen::parse(
                "# HELP x\nprocess_resident_memory_bytes 123456\nweir_http_connections 7\n\
                 weir_longpoll_waiters{call=\"lease\"} 3\nweir_longpoll_waiters{call=\"task\"} 2\n\
                 weir_longpoll_waiters{call=\"channel\"} 4\n",
            );
            assert_eq!(
                (
                    s.rss,
                    s.connections,
                    s.lease_waiters,
                    s.task_waiters,
                    s.channel_waiters
                ),
                (123456, 7, 3, 2, 4)
            );
        }
    }
}

/// A `weir serve` child on a free loopback port with a fresh data directory.
struct Spawned {
    child: tokio::process::Child,
    /// Removed when dropped, after the child has exited.
    dir: tempfile::TempDir,
    base: String,
}

impl Spawned {
    async fn start(parent: Option<PathBuf>) -> anyhow::Result<Spawned> {
        let parent = parent.unwrap_or_else(|| PathBuf::from("target"));
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("weir-bench-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a data dir in {}", parent.display()))?;
        let exe = std::env::current_exe().context("finding the weir executable")?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if std::env::var_os("WEIR_LOG").is_none() && std::env::var_os("RUST_LOG").is_none() {
            cmd.env("WEIR_LOG", "warn");
        }
        let mut child = cmd.spawn().context("starting weir serve")?;
        let stdout = child.stdout.take().context("no stdout from weir serve")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(Duration::from_millis(SPAWN_TIMEOUT_MS), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(base) = line.strip_prefix(LISTENING_PREFIX) {
                    return Ok(base.trim().to_owned());
                }
            }
            bail!("weir serve exited before it listened")
        })
        .await
        .context("weir serve did not announce its address in time")??;
        // Keep reading so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        eprintln!(
            "bench: spawned weir serve on {base} (data in {})",
            dir.path().display()
        );
        Ok(Spawned { child, dir, base })
    }

    /// SIGTERM, then wait for a graceful exit; SIGKILL if it takes too long.
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) with a pid we own and a valid signal number has no
            // memory-safety preconditions.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        let waited =
            tokio::time::timeout(Duration::from_millis(SPAWN_TIMEOUT_MS), self.child.wait()).await;
        match waited {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("bench: weir serve exited with {status}"),
            Ok(Err(e)) => eprintln!("bench: waiting for weir serve: {e}"),
            Err(_) => {
                eprintln!("bench: weir serve did not stop in time; killing it");
                self.child.kill().await.context("killing weir serve")?;
            }
        }
        drop(self.dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_expands_in_order_without_repeats() {
        assert_eq!(
            expand(&[Scenario::Latency, Scenario::All]),
            vec![
                Scenario::Latency,
                Scenario::Enqueue,
                Scenario::Batch,
                Scenario::E2e,
                Scenario::Redelivery
            ]
        );
        assert_eq!(expand(&[Scenario::E2e, Scenario::E2e]), vec![Scenario::E2e]);
    }

    #[test]
    fn claims_cover_exactly_n() {
        let next = AtomicU64::new(0);
        let mut got = Vec::new();
        while let Some(r) = claim(&next, 1000, 2500) {
            got.push(r);
        }
        assert_eq!(got, vec![(0, 1000), (1000, 2000), (2000, 2500)]);
    }

    #[test]
    fn payload_padding_is_close_to_asked() {
        assert_eq!(Payload::new(0).make("n", 7).to_string(), r#"{"n":7}"#);
        let p = Payload::new(1024).make("n", u64::MAX).to_string();
        assert!((1000..=1024).contains(&p.len()), "{}", p.len());
    }

    #[test]
    fn summary_line_format() {
        let r = Report {
            scenario: "latency",
            tasks: 10,
            secs: 2.0,
            tasks_per_sec: 5.0,
            complete: true,
            p50_ms: Some(0.25),
            p90_ms: Some(0.5),
            p99_ms: Some(1.0),
            max_ms: Some(2.0),
            sent: Some(10),
            ..Report::default()
        };
        assert_eq!(
            r.line(),
            "scenario=latency tasks=10 secs=2.000 tasks_per_sec=5 p50_ms=0.250 p90_ms=0.500 \
             p99_ms=1.000 max_ms=2.000 sent=10 errors=0 rate_limited=0 complete=true"
        );
    }
}
