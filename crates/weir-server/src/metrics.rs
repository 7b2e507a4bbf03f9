//! Prometheus metrics: the series this process observes (HTTP requests, lease
//! waits, parked long-polls, the store's commit times) and, read from the store
//! at each scrape, the per-queue task counts, totals and oldest pending age
//! (`GET /metrics`, OpenMetrics text).
//!
//! Everything here is per `app()`, not a process-global recorder, so that
//! several servers in one test process keep their series apart. The hot path
//! pays a few atomic adds per request and per leased task: one label lookup per
//! request (its route and status) or per lease call (its queue), then one
//! histogram observation per task.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use weir_core::TaskState;
use weir_store::{Leased, QueueInfo, StoreMetrics};

/// The route label of a request no route matched (never the raw path: that
/// would let any client mint series).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Upper bounds (seconds) of an HTTP request's duration (long-polls land in the
/// top buckets).
const HTTP_SECONDS_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0, 60.0,
];

/// Upper bounds (seconds) of a task's wait for a lease: 1 ms to an hour.
const WAIT_SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueState {
    queue: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueOutcome {
    queue: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    call: &'static str,
}

/// Which long-poll a parked request is.
#[derive(Clone, Copy, Debug)]
pub enum LongPoll {
    Lease,
    Task,
    Group,
    /// A worker channel's lease loop, parked on an empty queue.
    Channel,
}

impl LongPoll {
    fn as_str(self) -> &'static str {
        match self {
            LongPoll::Lease => "lease",
            LongPoll::Task => "task",
            LongPoll::Group => "group",
            LongPoll::Channel => "channel",
        }
    }
}

/// A family of histograms made with their buckets (by a plain fn constructor).
type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// The series this process observes, and its registry.
pub struct Metrics {
    registry: Registry,
    /// `weir_http_requests_total{route,status}`.
    http_requests: Family<RouteStatus, Counter>,
    /// `weir_http_request_duration_seconds{route}`.
    http_seconds: HistogramFamily<Route>,
    /// `weir_task_wait_seconds{queue}`: ready (run_at, or creation if later) →
    /// lease start, observed when a lease answers.
    wait_seconds: HistogramFamily<QueueLabel>,
    /// `weir_longpoll_waiters{call}`: lease, task-wait and group-wait requests
    /// with a wait in flight in this process, and worker channels' lease loops
    /// parked on an empty queue (`channel`).
    longpoll: Family<Call, Gauge>,
    /// `weir_auth_failures_total{reason}`: requests refused a 401 or 403.
    auth_failures: Family<Reason, Counter>,
    /// `weir_http_connections`: client connections open (the connection layer
    /// counts them; a clone of this handle).
    pub connections: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

impl Metrics {
    /// The registry, with the store's own histograms (if it has any) in it.
    pub fn new(store: Option<StoreMetrics>) -> Metrics {
        let mut registry = Registry::default();
        let http_requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "weir_http_requests",
            "HTTP requests answered, by matched route template and status",
            http_requests.clone(),
        );
        let http_seconds = HistogramFamily::<Route>::new_with_constructor(
            (|| Histogram::new(HTTP_SECONDS_BUCKETS)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "weir_http_request_duration",
            "Time to answer an HTTP request (a long-poll's wait included), by route",
            Unit::Seconds,
            http_seconds.clone(),
        );
        let wait_seconds = HistogramFamily::<QueueLabel>::new_with_constructor(
            (|| Histogram::new(WAIT_SECONDS_BUCKETS)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "weir_task_wait",
            "Time from a task being ready (its run_at, or its creation) to its lease, \
             per attempt, as leased through this server",
            Unit::Seconds,
            wait_seconds.clone(),
        );
        let longpoll = Family::<Call, Gauge>::default();
        registry.register(
            "weir_longpoll_waiters",
            "Lease, task-wait and group-wait requests waiting in this process",
            longpoll.clone(),
        );
        let auth_failures = Family::<Reason, Counter>::default();
        registry.register(
            "weir_auth_failures",
            "Requests refused by auth (401 or 403), by reason: missing, malformed, \
             unknown, invalid, expired (401); forbidden, csrf (403)",
            auth_failures.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "weir_http_connections",
            "Client connections open, parked ones included",
            connections.clone(),
        );
        if let Some(store) = store {
            registry.register_with_unit(
                "weir_store_commit",
                "One store commit: an embedded writer round's write and fdatasync, \
                 or one Redis script call's round trip",
                Unit::Seconds,
                store.commit_seconds,
            );
            registry.register_with_unit(
                "weir_task_run",
                "A task's attempt from lease to ack or fail, settled through this process",
                Unit::Seconds,
                store.run_seconds,
            );
        }
        Metrics {
            registry,
            http_requests,
            http_seconds,
            wait_seconds,
            longpoll,
            auth_failures,
            connections,
        }
    }

    /// Counts a request refused by auth.
    pub fn auth_failed(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a parked long-poll until the guard drops.
    pub fn parked(&self, call: LongPoll) -> Parked {
        let gauge = self
            .longpoll
            .get_or_create(&Call {
                call: call.as_str(),
            })
            .clone();
        gauge.inc();
        Parked(gauge)
    }

    /// Observes each leased task's wait (lease start − ready time).
    pub fn leased(&self, queue: &str, leased: &[Leased]) {
        if leased.is_empty() {
            return;
        }
        let h = self.wait_seconds.get_or_create(&QueueLabel {
            queue: queue.to_owned(),
        });
        for l in leased {
            let r = &l.record;
            let ready = r.run_at_ms.max(r.created_ms);
            let started = r.started_ms.unwrap_or(ready);
            h.observe(started.saturating_sub(ready) as f64 / 1000.0);
        }
    }

    /// The exposition: this process's series, then the store's per-queue ones.
    pub fn render(&self, queues: &[QueueInfo]) -> String {
        let mut out = String::with_capacity(4096 + queues.len() * 2048);
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &queue_registry(queues));
        let _ = encode_registry(&mut out, &process_registry());
        let _ = encode_eof(&mut out);
        out
    }
}

/// The process's own series, Prometheus' standard names, read at a scrape
/// (Linux: `/proc/self`; elsewhere absent): resident memory, what `weir bench
/// --scenario connections` divides by the connections it parks, and open
/// descriptors, against the limit the connection cap is derived from.
fn process_registry() -> Registry {
    let mut r = Registry::default();
    if let Some(bytes) = resident_memory_bytes() {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        r.register_with_unit(
            "process_resident_memory",
            "Resident memory size",
            Unit::Bytes,
            g,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
        r.register("process_open_fds", "Open file descriptors", g);
    }
    r
}

/// This process's resident set in bytes (`/proc/self/statm`'s second field, in
/// pages), or `None` off Linux.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0)?)
}

/// Holds one count of `weir_longpoll_waiters`.
pub struct Parked(Gauge);

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The series read from the store at a scrape: counts by state, totals, the head's
/// age. On Redis the totals are store-wide (every server reports the same: scrape
/// one, or aggregate with `max`); on the embedded store they count since the
/// process opened it.
fn queue_registry(queues: &[QueueInfo]) -> Registry {
    let mut r = Registry::default();
    let enqueued = Family::<QueueLabel, Counter>::default();
    let leased = Family::<QueueLabel, Counter>::default();
    let finished = Family::<QueueOutcome, Counter>::default();
    let retried = Family::<QueueLabel, Counter>::default();
    let expired = Family::<QueueLabel, Counter>::default();
    let tasks = Family::<QueueState, Gauge>::default();
    let age = Family::<QueueLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for q in queues {
        let ql = QueueLabel {
            queue: q.name.clone(),
        };
        let t = &q.totals;
        enqueued.get_or_create(&ql).inc_by(t.enqueued);
        leased.get_or_create(&ql).inc_by(t.leased);
        retried.get_or_create(&ql).inc_by(t.retried);
        expired.get_or_create(&ql).inc_by(t.lease_expired);
        for state in [TaskState::Completed, TaskState::Dead, TaskState::Canceled] {
            finished
                .get_or_create(&QueueOutcome {
                    queue: q.name.clone(),
                    outcome: state.as_str(),
                })
                .inc_by(t.finished(state));
        }
        for state in TaskState::ALL {
            tasks
                .get_or_create(&QueueState {
                    queue: q.name.clone(),
                    state: state.as_str(),
                })
                .set(i64::try_from(q.counts.get(state)).unwrap_or(i64::MAX));
        }
        if let Some(ms) = q.oldest_pending_age_ms {
            age.get_or_create(&ql).set(ms as f64 / 1000.0);
        }
    }
    r.register(
        "weir_tasks_enqueued",
        "Tasks created in the queue (store-wide on Redis; since start on the embedded store)",
        enqueued,
    );
    r.register("weir_tasks_leased", "Attempts started by a lease", leased);
    r.register(
        "weir_tasks_finished",
        "Tasks that ended, by outcome (completed, dead, canceled)",
        finished,
    );
    r.register(
        "weir_tasks_retried",
        "Attempts that went back to wait: a fail that scheduled a retry, or an \
         expired lease that made the task pending again",
        retried,
    );
    r.register(
        "weir_lease_expirations",
        "Leases that ran out without an ack",
        expired,
    );
    r.register(
        "weir_queue_tasks",
        "Tasks in the queue by state, at scrape (finished ones while retained)",
        tasks,
    );
    r.register_with_unit(
        "weir_queue_oldest_pending_age",
        "How long the queue's next task to lease (highest priority, then oldest) has \
         been ready, at scrape; absent with nothing pending",
        Unit::Seconds,
        age,
    );
    r
}

/// Records every request's route, status and duration. Runs inside the router
/// (`Router::layer`), where the matched route template is known.
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<MatchedPath>() {
        Some(p) => p.as_str().to_owned(),
        None => UNMATCHED_ROUTE.to_owned(),
    };
    let started = Instant::now();
    let res = next.run(req).await;
    // A parked long-poll is observed when its real answer comes.
    crate::park::then(res, move |res| {
        let secs = started.elapsed().as_secs_f64();
        m.http_requests
            .get_or_create(&RouteStatus {
                route: route.clone(),
                status: res.status().as_u16(),
            })
            .inc();
        m.http_seconds.get_or_create(&Route { route }).observe(secs);
        res
    })
}

/// The exposition's content type (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`.
pub fn answer(body: String) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}
