//! Integration tests of the worker pool against a real weir server, started
//! in-process on 127.0.0.1:0 over a temporary directory. States are awaited with
//! the server's long-poll (`GET /v1/tasks/{id}?wait_ms=`), never with sleeps.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weir_client::{Client, EnqueueOptions, Task as TaskView, TaskState};
use weir_server::{IngressLimit, ServeConfig};
use weir_worker::{
    CancelReason, Ctx, HandlerError, Pool, PoolBuilder, PoolError, PoolReport, Task, Transport,
};

/// Longest a test waits for a task to end.
const WAIT_MS: u64 = 15_000;

struct Server {
    client: Client,
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<JoinHandle<Result<(), String>>>,
    /// `None` only inside `resume`.
    store: Option<weir_store::testing::TestStore>,
}

/// Routes of the worker API, as `/metrics` labels them.
const CONNECT: &str = "/v1/workers/connect";
const LEASE: &str = "/v1/queues/{queue}/lease";
const ACKS: &str = "/v1/acks";

/// `weir_http_requests_total` of one server, by route.
#[derive(Debug)]
struct Requests(Vec<(String, u64)>);

impl Requests {
    fn count(&self, route: &str) -> u64 {
        self.0
            .iter()
            .filter(|(r, _)| r == route)
            .map(|(_, n)| n)
            .sum()
    }
}

impl Server {
    async fn start() -> Server {
        Server::start_with(ServeConfig::new()).await
    }

    async fn start_with(config: ServeConfig) -> Server {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let store = weir_store::testing::TestStore::open(weir_store::testing::TestStoreConfig {
            lease_grace_ms: 200,
            ..Default::default()
        })
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = Server {
            client: Client::new(format!("http://{addr}")).unwrap(),
            addr,
            stop: None,
            done: None,
            store: Some(store),
        };
        server.serve(listener, config);
        server
    }

    fn serve(&mut self, listener: tokio::net::TcpListener, config: ServeConfig) {
        let broker = self.store.as_ref().expect("a store").broker.clone();
        let (tx, rx) = oneshot::channel::<()>();
        self.done = Some(tokio::spawn(async move {
            weir_server::serve(listener, config, broker, async move {
                let _ = rx.await;
            })
            .await
            .map_err(|e| format!("{e:#}"))
        }));
        self.stop = Some(tx);
    }

    /// Stops serving (a graceful shutdown: channels are closed, parked requests
    /// answered, the store flushed and closed).
    async fn halt(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.take().unwrap().await.unwrap().unwrap();
    }

    /// Restarts the store (closed and opened again from what it keeps) and serves
    /// it again on the same address, with fresh counters.
    async fn resume(&mut self) {
        let store = self.store.take().expect("a store");
        self.store = Some(store.reopen().await);
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener, ServeConfig::new());
    }

    async fn stop(mut self) {
        self.halt().await;
    }

    /// This server's `weir_http_requests_total`, summed by route.
    async fn requests(&self) -> Requests {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let mut by_route = Vec::new();
        for line in text
            .lines()
            .filter(|l| l.starts_with("weir_http_requests_total{"))
        {
            let route = line
                .split("route=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default();
            let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            by_route.push((route.to_owned(), n as u64));
        }
        assert!(!by_route.is_empty(), "no request series in:\n{text}");
        Requests(by_route)
    }

    async fn enqueue(&self, queue: &str, opts: EnqueueOptions) -> String {
        self.client.enqueue(queue, &opts).await.unwrap().id
    }

    async fn enqueue_many(&self, queue: &str, opts: Vec<EnqueueOptions>) -> Vec<String> {
        let mut ids = Vec::new();
        for chunk in opts.chunks(1000) {
            ids.extend(self.client.enqueue_batch(queue, chunk).await.unwrap());
        }
        ids
    }

    /// Long-polls until the task is terminal; fails the test if it is not in time.
    async fn finished(&self, id: &str) -> TaskView {
        let t = self.client.wait(id, WAIT_MS).await.unwrap();
        assert!(t.state.is_terminal(), "task {id} not finished: {t:?}");
        t
    }
}

/// A running pool and the means to stop it.
struct Running {
    stop: oneshot::Sender<()>,
    done: JoinHandle<Result<PoolReport, PoolError>>,
}

impl Running {
    fn start(pool: Pool) -> Running {
        let (stop, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(pool.run(async move {
            let _ = rx.await;
        }));
        Running { stop, done }
    }

    async fn stop(self) -> PoolReport {
        let _ = self.stop.send(());
        self.done.await.unwrap().unwrap()
    }
}

fn task(kind: &str, payload: Value) -> EnqueueOptions {
    EnqueueOptions::new(payload).kind(kind)
}

/// Counts handlers running at once and remembers the most.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn exit(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn happy_path_two_kinds_and_the_concurrency_limit() {
    happy_path(Transport::Channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn happy_path_over_http_long_polls() {
    happy_path(Transport::Http).await;
}

async fn happy_path(transport: Transport) {
    let server = Server::start().await;
    let gauge = Arc::new(Gauge::default());
    let g1 = gauge.clone();
    let g2 = gauge.clone();
    let pool = PoolBuilder::new(server.client.clone())
        .transport(transport)
        .queue("work", 1)
        .concurrency(4)
        .handler("add", move |t: Task, _ctx: Ctx| {
            let g = g1.clone();
            async move {
                g.enter();
                // Simulated work, so several handlers overlap.
                tokio::time::sleep(Duration::from_millis(3)).await;
                g.exit();
                let sum = t.payload["a"].as_i64().unwrap() + t.payload["b"].as_i64().unwrap();
                Ok(json!({ "sum": sum }))
            }
        })
        .handler("upper", move |t: Task, _ctx: Ctx| {
            let g = g2.clone();
            async move {
                g.enter();
                tokio::time::sleep(Duration::from_millis(3)).await;
                g.exit();
                assert_eq!(t.queue, "work");
                assert_eq!(t.attempt, 1);
                Ok(json!(t.payload.as_str().unwrap().to_uppercase()))
            }
        })
        .build()
        .unwrap();
    let running = Running::start(pool);

    let adds: Vec<_> = (0..100)
        .map(|i| task("add", json!({"a": i, "b": 1000})))
        .collect();
    let uppers: Vec<_> = (0..100)
        .map(|i| task("upper", json!(format!("word{i}"))))
        .collect();
    let add_ids = server.enqueue_many("work", adds).await;
    let upper_ids = server.enqueue_many("work", uppers).await;

    for (i, id) in add_ids.iter().enumerate() {
        let t = server.finished(id).await;
        assert_eq!(t.state, TaskState::Completed, "{t:?}");
        assert_eq!(t.result, Some(json!({"sum": i as i64 + 1000})));
        assert_eq!(t.attempt, 1);
    }
    for (i, id) in upper_ids.iter().enumerate() {
        let t = server.finished(id).await;
        assert_eq!(t.state, TaskState::Completed, "{t:?}");
        assert_eq!(t.result, Some(json!(format!("WORD{i}"))));
    }
    let report = running.stop().await;
    assert_eq!(report.completed, 200, "{report:?}");
    assert_eq!(
        report.failed + report.released + report.refused,
        0,
        "{report:?}"
    );
    let max = gauge.max.load(Ordering::SeqCst);
    assert!(max <= 4, "{max} handlers ran at once; the limit is 4");
    assert!(max >= 2, "handlers never overlapped (max {max})");
    // Each transport is the one that served: the channel makes no lease or
    // settle request, HTTP opens no channel.
    let requests = server.requests().await;
    match transport {
        Transport::Channel => {
            assert!(requests.count(CONNECT) >= 1, "{requests:?}");
            assert_eq!(
                requests.count(LEASE) + requests.count(ACKS),
                0,
                "{requests:?}"
            );
        }
        Transport::Http => {
            assert_eq!(requests.count(CONNECT), 0, "{requests:?}");
            assert!(requests.count(LEASE) >= 1, "{requests:?}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadline_cancels_the_token_and_retries_until_dead() {
    let server = Server::start().await;
    let seen: Arc<Mutex<Vec<(CancelReason, Duration)>>> = Arc::default();
    let s = seen.clone();
    let pool = PoolBuilder::new(server.client.clone())
        .queue("slow", 1)
        .handler("sleepy", move |t: Task, ctx: Ctx| {
            let seen = s.clone();
            async move {
                let start = Instant::now();
                assert!(ctx.deadline() <= start + Duration::from_millis(t.timeout_ms));
                tokio::select! {
                    _ = ctx.cancelled() => {
                        seen.lock().unwrap().push((ctx.cancel_reason().unwrap(), start.elapsed()));
                        Err(HandlerError::retry("stopped at the deadline"))
                    }
                    _ = tokio::time::sleep(Duration::from_secs(30)) => Ok(json!("overslept")),
                }
            }
        })
        .build()
        .unwrap();
    let running = Running::start(pool);
    let id = server
        .enqueue(
            "slow",
            task("sleepy", json!(null)).timeout_ms(200).max_attempts(2),
        )
        .await;
    let t = server.finished(&id).await;
    assert_eq!(t.state, TaskState::Dead, "{t:?}");
    assert_eq!(t.attempt, 2);
    assert_eq!(t.last_error.as_deref(), Some("stopped at the deadline"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (reason, elapsed) in seen {
        assert_eq!(reason, CancelReason::Deadline);
        assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
    }
    let report = running.stop().await;
    assert_eq!(report.failed, 2, "{report:?}");
    assert_eq!(report.abandoned, 0, "{report:?}");
    server.stop().await;
}

/// Sets its flag when dropped: proof that a handler's future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_ignoring_its_deadline_is_abandoned() {
    let server = Server::start().await;
    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let pool = PoolBuilder::new(server.client.clone())
        .queue("stubborn", 1)
        .handler("deaf", move |_t: Task, _ctx: Ctx| {
            let flag = DropFlag(d.clone());
            async move {
                let _flag = flag;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(json!("too late"))
            }
        })
        .build()
        .unwrap();
    let running = Running::start(pool);
    let started = Instant::now();
    let id = server
        .enqueue(
            "stubborn",
            task("deaf", json!(null)).timeout_ms(200).max_attempts(1),
        )
        .await;
    let t = server.finished(&id).await;
    let took = started.elapsed();
    assert_eq!(t.state, TaskState::Dead, "{t:?}");
    let error = t.last_error.unwrap_or_default();
    assert!(
        error.starts_with("timeout: handler did not finish within timeout_ms"),
        "{error}"
    );
    // Deadline (200 ms) plus the cancel grace (1 s), not the handler's 60 s.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the handler future was not dropped"
    );
    let report = running.stop().await;
    assert_eq!(report.abandoned, 1, "{report:?}");
    assert_eq!(report.failed, 1, "{report:?}");
    server.stop().await;
}

// The bound (1 s) is half the default heartbeat interval (2 s): on HTTP a cancel
// that waited for the next heartbeat would miss it; on the channel there is no
// heartbeat at all, so only the server's pushed cancel can meet it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_reaches_a_running_handler_within_a_second() {
    cancel_reaches(Transport::Channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_reaches_a_running_handler_within_a_second_over_http() {
    cancel_reaches(Transport::Http).await;
}

async fn cancel_reaches(transport: Transport) {
    let server = Server::start().await;
    let (started_tx, mut started_rx) = mpsc::channel::<String>(4);
    let (fired_tx, mut fired_rx) = mpsc::channel::<(Instant, Option<CancelReason>)>(4);
    let pool = PoolBuilder::new(server.client.clone())
        .transport(transport)
        .queue("long", 1)
        // The default heartbeat: this measures what users get.
        .handler("wait", move |t: Task, ctx: Ctx| {
            let started = started_tx.clone();
            let fired = fired_tx.clone();
            async move {
                started.send(t.id).await.unwrap();
                ctx.cancelled().await;
                fired
                    .send((Instant::now(), ctx.cancel_reason()))
                    .await
                    .unwrap();
                Err(HandlerError::fatal("stopped on cancel"))
            }
        })
        .build()
        .unwrap();
    let running = Running::start(pool);
    let id = server
        .enqueue("long", task("wait", json!(null)).timeout_ms(30_000))
        .await;
    assert_eq!(started_rx.recv().await.unwrap(), id);
    let asked = Instant::now();
    let t = server.client.cancel(&id).await.unwrap();
    assert_eq!(t.state, TaskState::Active);
    assert!(t.cancel_requested);
    let (fired, reason) = fired_rx.recv().await.unwrap();
    let delay = fired.duration_since(asked);
    eprintln!("cancel → token fired: {delay:?}");
    assert_eq!(reason, Some(CancelReason::Canceled));
    assert!(delay < Duration::from_secs(1), "{delay:?}");

    let t = server.finished(&id).await;
    assert_eq!(t.state, TaskState::Canceled, "{t:?}");
    assert_eq!(t.attempt, 1, "a canceled task is not retried");
    let report = running.stop().await;
    assert_eq!(report.failed, 1, "{report:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_handler_fails_its_task_and_the_pool_goes_on() {
    let server = Server::start().await;
    let pool = PoolBuilder::new(server.client.clone())
        .queue("mixed", 1)
        .concurrency(2)
        .handler("boom", |t: Task, _ctx: Ctx| async move {
            if t.kind == "boom" {
                panic!("kaboom #{}", t.payload);
            }
            Ok(Value::Null)
        })
        .handler("fine", |t: Task, _ctx: Ctx| async move { Ok(t.payload) })
        .build()
        .unwrap();
    let running = Running::start(pool);
    let boom = server
        .enqueue("mixed", task("boom", json!(7)).max_attempts(1))
        .await;
    let fine = server
        .enqueue_many("mixed", (0..20).map(|i| task("fine", json!(i))).collect())
        .await;
    let boom2 = server
        .enqueue("mixed", task("boom", json!(8)).max_attempts(2))
        .await;

    let t = server.finished(&boom).await;
    assert_eq!(t.state, TaskState::Dead, "{t:?}");
    assert_eq!(t.last_error.as_deref(), Some("handler panicked: kaboom #7"));
    let t = server.finished(&boom2).await;
    assert_eq!(t.state, TaskState::Dead, "{t:?}");
    assert_eq!(t.attempt, 2, "a panic is retried");
    for (i, id) in fine.iter().enumerate() {
        let t = server.finished(id).await;
        assert_eq!(t.state, TaskState::Completed, "{t:?}");
        assert_eq!(t.result, Some(json!(i)));
    }
    let report = running.stop().await;
    assert_eq!(report.completed, 20, "{report:?}");
    assert_eq!(report.failed, 3, "{report:?}");
    server.stop().await;
}

// A current-thread runtime makes the moment of shutdown exact: the shutdown future
// opens the handlers' gate and, in the same poll, the pool stops dispatching, so
// no waiting task can start in between.
#[tokio::test(flavor = "current_thread")]
async fn graceful_shutdown_finishes_running_tasks_and_releases_the_rest() {
    let server = Server::start().await;
    let ids = server
        .enqueue_many("drain", (0..10).map(|i| task("job", json!(i))).collect())
        .await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (started_tx, mut started_rx) = mpsc::channel::<String>(16);
    let g = gate.clone();
    let pool = PoolBuilder::new(server.client.clone())
        .queue("drain", 1)
        .concurrency(2)
        .prefetch(10)
        .handler("job", move |t: Task, _ctx: Ctx| {
            let gate = g.clone();
            let started = started_tx.clone();
            async move {
                started.send(t.id).await.unwrap();
                let _pass = gate.acquire().await.unwrap();
                Ok(json!({"done": t.payload}))
            }
        })
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let open = gate.clone();
    let done = tokio::spawn(pool.run(async move {
        let _ = stop_rx.await;
        open.add_permits(100);
    }));
    let mut started = [
        started_rx.recv().await.unwrap(),
        started_rx.recv().await.unwrap(),
    ];
    started.sort();
    stop_tx.send(()).unwrap();
    let report = done.await.unwrap().unwrap();
    assert_eq!(
        report,
        PoolReport {
            completed: 2,
            failed: 0,
            released: 8,
            abandoned: 0,
            refused: 0
        }
    );
    assert!(
        started_rx.try_recv().is_err(),
        "a task started after shutdown"
    );
    for id in &ids {
        let t = server.client.get(id).await.unwrap();
        if started.binary_search(id).is_ok() {
            assert_eq!(t.state, TaskState::Completed, "{t:?}");
            assert_eq!(t.attempt, 1);
        } else {
            assert_eq!(t.state, TaskState::Pending, "{t:?}");
            assert_eq!(t.attempt, 0, "a released task spent an attempt: {t:?}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_the_shutdown_grace_handlers_are_cancelled_then_abandoned() {
    let server = Server::start().await;
    let (started_tx, mut started_rx) = mpsc::channel::<String>(4);
    let reasons: Arc<Mutex<Vec<Option<CancelReason>>>> = Arc::default();
    let s1 = started_tx.clone();
    let r = reasons.clone();
    let pool = PoolBuilder::new(server.client.clone())
        .queue("stuck", 1)
        .concurrency(2)
        .shutdown_grace(Duration::from_millis(100))
        .handler("polite", move |t: Task, ctx: Ctx| {
            let started = s1.clone();
            let reasons = r.clone();
            async move {
                started.send(t.id).await.unwrap();
                ctx.cancelled().await;
                reasons.lock().unwrap().push(ctx.cancel_reason());
                // Fatal, but stopped by our shutdown: the pool retries it anyway.
                Err(HandlerError::fatal("interrupted"))
            }
        })
        .handler("deaf", move |t: Task, _ctx: Ctx| {
            let started = started_tx.clone();
            async move {
                started.send(t.id).await.unwrap();
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Value::Null)
            }
        })
        .build()
        .unwrap();
    let running = Running::start(pool);
    let polite = server
        .enqueue("stuck", task("polite", json!(null)).max_attempts(3))
        .await;
    let deaf = server
        .enqueue("stuck", task("deaf", json!(null)).max_attempts(3))
        .await;
    started_rx.recv().await.unwrap();
    started_rx.recv().await.unwrap();
    let report = running.stop().await;
    assert_eq!(report.failed, 2, "{report:?}");
    assert_eq!(report.abandoned, 1, "{report:?}");
    assert_eq!(
        reasons.lock().unwrap().as_slice(),
        &[Some(CancelReason::Shutdown)]
    );
    for (id, error) in [(&polite, "interrupted"), (&deaf, "worker shut down")] {
        let t = server.client.get(id).await.unwrap();
        assert!(
            matches!(t.state, TaskState::Scheduled | TaskState::Pending),
            "{t:?}"
        );
        assert_eq!(t.attempt, 1);
        assert_eq!(t.last_error.as_deref(), Some(error));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_kind_without_fallback_is_dead_with_a_clear_error() {
    let server = Server::start().await;
    let pool = PoolBuilder::new(server.client.clone())
        .queue("q", 1)
        .worker_name("w1")
        .handler(
            "known",
            |_t: Task, _ctx: Ctx| async move { Ok(Value::Null) },
        )
        .build()
        .unwrap();
    let running = Running::start(pool);
    let id = server
        .enqueue("q", task("mystery", json!(null)).max_attempts(5))
        .await;
    let t = server.finished(&id).await;
    assert_eq!(t.state, TaskState::Dead, "{t:?}");
    assert_eq!(t.attempt, 1, "an unknown kind is not retried");
    assert_eq!(
        t.last_error.as_deref(),
        Some(r#"no handler for kind "mystery" in worker "w1" (it handles: known)"#)
    );
    running.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fallback_takes_every_kind_without_a_handler() {
    let server = Server::start().await;
    let pool = PoolBuilder::new(server.client.clone())
        .queue("q", 1)
        .handler("own", |_t: Task, _ctx: Ctx| async move { Ok(json!("own")) })
        .fallback(|t: Task, _ctx: Ctx| async move { Ok(json!({"fallback": t.kind})) })
        .build()
        .unwrap();
    let running = Running::start(pool);
    let own = server.enqueue("q", task("own", json!(null))).await;
    let other = server.enqueue("q", task("other", json!(null))).await;
    assert_eq!(server.finished(&own).await.result, Some(json!("own")));
    assert_eq!(
        server.finished(&other).await.result,
        Some(json!({"fallback": "other"}))
    );
    running.stop().await;
    server.stop().await;
}

/// Runs a one-at-a-time pool over `queues` until `n` tasks ran; answers the queue
/// of each, in order.
async fn run_order(server: &Server, queues: &[(&str, u32)], strict: bool, n: usize) -> Vec<String> {
    let (tx, mut rx) = mpsc::channel::<String>(n);
    let mut b = PoolBuilder::new(server.client.clone())
        .concurrency(1)
        .prefetch(1)
        .strict_order(strict);
    for (q, w) in queues {
        b = b.queue(q, *w);
    }
    let pool = b
        .fallback(move |t: Task, _ctx: Ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.try_send(t.queue);
                Ok(Value::Null)
            }
        })
        .build()
        .unwrap();
    let running = Running::start(pool);
    let mut order = Vec::new();
    while order.len() < n {
        order.push(rx.recv().await.unwrap());
    }
    running.stop().await;
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_order_drains_earlier_queues_first() {
    let server = Server::start().await;
    server
        .enqueue_many("low", (0..10).map(|i| task("t", json!(i))).collect())
        .await;
    server
        .enqueue_many("high", (0..10).map(|i| task("t", json!(i))).collect())
        .await;
    let order = run_order(&server, &[("high", 1), ("low", 1)], true, 20).await;
    assert!(order[..10].iter().all(|q| q == "high"), "{order:?}");
    assert!(order[10..].iter().all(|q| q == "low"), "{order:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_spread_leases() {
    let server = Server::start().await;
    server
        .enqueue_many("a", (0..200).map(|i| task("t", json!(i))).collect())
        .await;
    server
        .enqueue_many("b", (0..200).map(|i| task("t", json!(i))).collect())
        .await;
    let order = run_order(&server, &[("a", 3), ("b", 1)], false, 120).await;
    let a = order.iter().filter(|q| *q == "a").count();
    // Smooth weighted round-robin is exact while both queues have work: 3 of 4.
    assert!((85..=95).contains(&a), "{a} of 120 from a");
    server.stop().await;
}

/// errgroup end to end: in a fail-fast group, one member fails for good while
/// others run; the running handlers' tokens fire (reason `Canceled`), the queued
/// members never start, and the group and its members end failed / canceled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fail_fast_group_cancels_running_and_queued_members() {
    let server = Server::start().await;
    let (started_tx, mut started_rx) = mpsc::channel::<String>(16);
    let (fired_tx, mut fired_rx) = mpsc::channel::<Option<CancelReason>>(16);
    let started_count = Arc::new(AtomicUsize::new(0));
    let count = started_count.clone();
    let pool = PoolBuilder::new(server.client.clone())
        .queue("grp", 1)
        // Three handlers at once, one task leased per free slot: three members
        // run and the other three stay queued on the server.
        .concurrency(3)
        .prefetch(1)
        .handler("wait", move |t: Task, ctx: Ctx| {
            let (started, fired, count) = (started_tx.clone(), fired_tx.clone(), count.clone());
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                started.send(t.id).await.unwrap();
                ctx.cancelled().await;
                fired.send(ctx.cancel_reason()).await.unwrap();
                Err(HandlerError::retry("stopped"))
            }
        })
        .handler("boom", |_t: Task, _ctx: Ctx| async move {
            Err(HandlerError::fatal("boom"))
        })
        .build()
        .unwrap();
    // FIFO: two "wait" members, the failing one, then three more "wait" members
    // that are still queued when it fails.
    let mut tasks: Vec<EnqueueOptions> = (0..5).map(|i| task("wait", json!(i))).collect();
    tasks.insert(2, task("boom", json!("x")));
    let group = server.client.group("grp", &tasks, true).await.unwrap();
    let running = Running::start(pool);
    for _ in 0..2 {
        started_rx.recv().await.unwrap();
    }
    let err = group
        .wait(Duration::from_millis(WAIT_MS))
        .await
        .unwrap_err();
    match err {
        weir_client::WaitError::GroupFailed { error, .. } => {
            assert_eq!(error.as_deref(), Some("boom"))
        }
        other => panic!("{other:?}"),
    }
    for id in group.task_ids() {
        let t = server.finished(id).await;
        if t.kind == "boom" {
            assert_eq!(t.state, TaskState::Dead);
        } else {
            assert_eq!(t.state, TaskState::Canceled, "{t:?}");
            assert!(t.attempt <= 1, "a canceled member is not retried: {t:?}");
        }
    }
    let report = running.stop().await;
    // Every member that started saw its token fire because of the cancel; a slot
    // freed by the failing member may have started one more before the cancel was
    // committed, never all of them.
    let started = started_count.load(Ordering::SeqCst);
    assert!((2..=3).contains(&started), "{started} started; {report:?}");
    for _ in 0..started {
        assert_eq!(fired_rx.recv().await.unwrap(), Some(CancelReason::Canceled));
    }
    let view = server.client.get_group(group.id()).await.unwrap();
    assert_eq!((view.counts.dead, view.counts.canceled), (1, 5));
    server.stop().await;
}

/// What the fake server below was sent.
#[derive(Default)]
struct Recorded {
    acks: Vec<Value>,
    fails: Vec<Value>,
    releases: usize,
    /// When each settle request arrived, refused or not.
    settle_tries: Vec<Instant>,
    /// Settle messages read on channels (never answered, or refused).
    channel_settles: Vec<Value>,
    /// Channels opened.
    channels: usize,
}

/// A stand-in for a weir server, for what a real one no longer hands out: a
/// lease batch holding tasks no typed decode takes (a real server refuses them at
/// the door now, but a task stored before that, or an older server, still leases
/// them). Its first lease answers `batch` as is; later ones park until `closing`
/// (or their `wait_ms`) and answer nothing. It records every settle and release.
struct FakeServer {
    base: String,
    recorded: Arc<Mutex<Recorded>>,
    /// The number of settled items so far.
    settled: tokio::sync::watch::Receiver<usize>,
    closing: weir_worker::CancellationToken,
}

impl FakeServer {
    /// Runs an echo pool until `n` items are settled, then stops it and returns
    /// its report.
    async fn echo_until_settled(&self, n: usize) -> PoolReport {
        let pool = PoolBuilder::new(Client::new(&self.base).unwrap())
            .queue("poison", 1)
            .handler("echo", |t: Task, _ctx: Ctx| async move { Ok(t.payload) })
            .build()
            .unwrap();
        let running = Running::start(pool);
        self.until_settled(n).await;
        self.closing.cancel();
        running.stop().await
    }

    /// `echo_until_settled` of the one task it hands out: the pool must count
    /// one completed task and nothing else.
    async fn echo_one_task(&self) {
        let report = self.echo_until_settled(1).await;
        assert_eq!(
            report,
            PoolReport {
                completed: 1,
                ..PoolReport::default()
            }
        );
    }

    /// Waits (at most `WAIT_MS`) until `n` items were settled.
    async fn until_settled(&self, n: usize) {
        let mut settled = self.settled.clone();
        tokio::time::timeout(
            Duration::from_millis(WAIT_MS),
            settled.wait_for(|s| *s >= n),
        )
        .await
        .unwrap_or_else(|_| panic!("{n} settled in time"))
        .unwrap();
    }

    /// Hands out `batch` once; answers the first `settles_refused` settle
    /// requests 429 with `Retry-After: 0.1`. Serves no worker channel (404).
    async fn start(batch: String, settles_refused: usize) -> FakeServer {
        FakeServer::start_with(batch, settles_refused, Connect::Missing).await
    }

    /// With `Connect::Scripted`, `GET /v1/workers/connect` is a scripted channel: the first
    /// one pushes `batch`'s tasks once credit comes, reads one settle, records it
    /// and drops the connection without answering; later ones welcome and push
    /// nothing. Everything else is served as by `start`.
    async fn start_with(batch: String, settles_refused: usize, connect: Connect) -> FakeServer {
        use axum::extract::State;
        use axum::response::IntoResponse;
        use axum::routing::post;

        #[derive(Clone)]
        struct St {
            settles_refused: usize,
            batch: Arc<Mutex<Option<String>>>,
            recorded: Arc<Mutex<Recorded>>,
            settled: Arc<tokio::sync::watch::Sender<usize>>,
            closing: weir_worker::CancellationToken,
        }
        fn answer(body: String) -> ([(&'static str, &'static str); 1], String) {
            ([("content-type", "application/json")], body)
        }
        let lease = move |State(st): State<St>, body: axum::Json<Value>| async move {
            let first = st.batch.lock().unwrap().take();
            if let Some(batch) = first {
                return answer(batch);
            }
            let wait = Duration::from_millis(body["wait_ms"].as_u64().unwrap_or(0));
            let _ = tokio::time::timeout(wait, st.closing.cancelled()).await;
            answer(r#"{"tasks":[]}"#.to_owned())
        };
        let settle = |State(st): State<St>, body: axum::Json<Value>| async move {
            {
                let mut r = st.recorded.lock().unwrap();
                r.settle_tries.push(Instant::now());
                if r.settle_tries.len() <= st.settles_refused {
                    return (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "0.1")],
                        "",
                    )
                        .into_response();
                }
            }
            let outcome = |items: &Value, state: &str| -> Vec<Value> {
                let items = items.as_array().cloned().unwrap_or_default();
                items
                    .iter()
                    .map(|i| json!({"id": i["id"], "ok": true, "state": state}))
                    .collect()
            };
            let outcomes = json!({
                "acks": outcome(&body["acks"], "completed"),
                "fails": outcome(&body["fails"], "dead"),
            });
            let mut r = st.recorded.lock().unwrap();
            r.acks
                .extend(body["acks"].as_array().cloned().unwrap_or_default());
            r.fails
                .extend(body["fails"].as_array().cloned().unwrap_or_default());
            st.settled.send_replace(r.acks.len() + r.fails.len());
            answer(outcomes.to_string()).into_response()
        };
        let release = |State(st): State<St>| async move {
            st.recorded.lock().unwrap().releases += 1;
            answer(r#"{"state":"pending"}"#.to_owned())
        };
        let heartbeat = || async {
            answer(
                r#"{"lease_expires_at":"2100-01-01T00:00:00.000Z","cancel_requested":false}"#
                    .to_owned(),
            )
        };

        let (settled_tx, settled) = tokio::sync::watch::channel(0);
        let st = St {
            settles_refused,
            batch: Arc::new(Mutex::new(Some(batch))),
            recorded: Arc::default(),
            settled: Arc::new(settled_tx),
            closing: weir_worker::CancellationToken::new(),
        };
        let (recorded, closing) = (st.recorded.clone(), st.closing.clone());
        let first_batch = st.batch.clone();
        let mut app = axum::Router::new();
        if connect == Connect::UpgradeRequired {
            // What a proxy that drops `Upgrade` makes of the channel's request.
            app = app.route(
                "/v1/workers/connect",
                axum::routing::get(|| async {
                    (
                        axum::http::StatusCode::UPGRADE_REQUIRED,
                        [("content-type", "application/problem+json")],
                        r#"{"type":"urn:weir:problem:upgrade-required","title":"Upgrade required","status":426}"#,
                    )
                }),
            );
        }
        let app = app
            .route("/v1/queues/{queue}/lease", post(lease))
            .route("/v1/acks", post(settle))
            .route("/v1/tasks/{id}/release", post(release))
            .route("/v1/tasks/{id}/heartbeat", post(heartbeat))
            .with_state(st);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        if !matches!(connect, Connect::Scripted | Connect::ScriptedRefusing) {
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        } else {
            let (recorded, batch) = (recorded.clone(), first_batch);
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let mut head = [0u8; 32];
                    let n = stream.peek(&mut head).await.unwrap();
                    if head[..n].starts_with(b"GET /v1/workers/connect") {
                        let tasks = batch.lock().unwrap().take();
                        let refuse = connect == Connect::ScriptedRefusing;
                        tokio::spawn(scripted_channel(stream, tasks, recorded.clone(), refuse));
                    } else {
                        let app = app.clone();
                        tokio::spawn(async move {
                            use tower::ServiceExt;
                            let service =
                                hyper::service::service_fn(move |req| app.clone().oneshot(req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                }
            });
        }
        FakeServer {
            base: format!("http://{addr}"),
            recorded,
            settled,
            closing,
        }
    }
}

/// What a [`FakeServer`] makes of `GET /v1/workers/connect`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Connect {
    /// 404: a server without the channel.
    Missing,
    /// 426: the upgrade lost on the way (a proxy).
    UpgradeRequired,
    /// A scripted channel (see `start_with`).
    Scripted,
    /// As `Scripted`, but the settle is answered as refused as a whole (503,
    /// as when the store is away) and the channel stays open.
    ScriptedRefusing,
}

/// One channel of [`FakeServer::start_with`]: welcome; with `tasks`, push them at
/// the first credit, read one settle, record it and drop the connection unanswered
/// (with `refuse`: answer it refused as a whole, 503, and go on).
async fn scripted_channel(
    stream: tokio::net::TcpStream,
    tasks: Option<String>,
    recorded: Arc<Mutex<Recorded>>,
    refuse: bool,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
    recorded.lock().unwrap().channels += 1;
    let hello: Value = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => break serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => continue,
            other => panic!("no hello: {other:?}"),
        }
    };
    assert_eq!(hello["type"], "hello", "{hello}");
    let welcome = json!({"type": "welcome", "queues": hello["queues"], "refused": [], "credit_max": 1000, "ping_ms": 20000});
    ws.send(Message::text(welcome.to_string())).await.unwrap();
    let Some(tasks) = tasks else {
        while ws.next().await.is_some() {}
        return;
    };
    let mut pushed = false;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(t) = msg else { continue };
        let msg: Value = serde_json::from_str(&t).unwrap();
        match msg["type"].as_str() {
            Some("credit") if !pushed => {
                pushed = true;
                let mut push: Value = serde_json::from_str(&tasks).unwrap();
                push["type"] = json!("tasks");
                ws.send(Message::text(push.to_string())).await.unwrap();
            }
            Some("settle") => {
                let seq = msg["seq"].clone();
                recorded.lock().unwrap().channel_settles.push(msg);
                if refuse {
                    let refused = json!({"type": "settled", "seq": seq, "error": {
                        "type": "urn:weir:problem:store-unavailable",
                        "title": "Store unavailable", "status": 503,
                        "detail": "the store did not answer"}});
                    ws.send(Message::text(refused.to_string())).await.unwrap();
                    continue;
                }
                // Gone before the answer: the worker cannot know it was applied.
                return;
            }
            _ => {}
        }
    }
}

/// A lease answer's task, its payload given as raw JSON text.
fn leased_json(id: &str, payload: &str) -> String {
    format!(
        r#"{{"id":"{id}","queue":"poison","kind":"echo","payload":{payload},"attempt":1,"max_attempts":5,"lease_id":"lease-{id}","lease_expires_at":"2100-01-01T00:00:00.000Z","timeout_ms":30000,"deadline":null}}"#
    )
}

/// Issue 6: a leased task the client cannot decode is failed alone, at once and
/// without retry; its batch-mates run and are acked. (Before, the whole batch was
/// undecodable: nothing ran and every lease ran out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undecodable_task_fails_alone_and_its_batch_mates_complete() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let batch = format!(
        r#"{{"tasks":[{},{},{},{}]}}"#,
        leased_json("ok-1", r#"{"n":1}"#),
        leased_json("deep", &deep),
        leased_json("lone", r#""\ud800""#),
        leased_json("ok-2", r#"{"n":2}"#),
    );
    let fake = FakeServer::start(batch, 0).await;
    let report = fake.echo_until_settled(4).await;
    assert_eq!(
        report,
        PoolReport {
            completed: 2,
            failed: 2,
            ..PoolReport::default()
        }
    );
    let r = fake.recorded.lock().unwrap();
    let mut acks: Vec<(String, Value)> = r
        .acks
        .iter()
        .map(|a| (a["id"].as_str().unwrap().to_owned(), a["result"].clone()))
        .collect();
    acks.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        acks,
        [
            ("ok-1".to_owned(), json!({"n": 1})),
            ("ok-2".to_owned(), json!({"n": 2}))
        ]
    );
    let mut fails: Vec<&str> = r.fails.iter().map(|f| f["id"].as_str().unwrap()).collect();
    fails.sort_unstable();
    assert_eq!(fails, ["deep", "lone"], "each failed exactly once");
    for f in &r.fails {
        assert_eq!(f["retry"], false, "{f}");
        assert_eq!(
            f["lease_id"],
            format!("lease-{}", f["id"].as_str().unwrap())
        );
        let error = f["error"].as_str().unwrap();
        assert!(
            error.starts_with("the worker could not decode this task: "),
            "{error}"
        );
    }
    assert_eq!(r.releases, 0);
}

/// Issue 9: a pool whose server limits its address gets 429 on its lease,
/// waits out the Retry-After (instead of exiting or retrying at once) and goes
/// on to complete every task on its first lease. The tasks come from another
/// loopback address, so only the pool's requests count against its bucket, and
/// are watched through the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limited_pool_waits_out_the_retry_after_and_goes_on() {
    // Five requests a second, in bursts of five: once the bucket is empty a
    // request is refused with Retry-After 1 (the wait, rounded up to a second),
    // and a second later it is full again, room for everything else the pool
    // sends.
    let burst = 5;
    let mut config = ServeConfig::new();
    config.ingress = Some(IngressLimit::new(5, Duration::from_secs(1), Some(burst)).unwrap());
    let server = Server::start_with(config).await;
    let http = Client::http_builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let producer = Client::with_http(server.client.base_url(), http);
    let n = 3;
    let ids = producer
        .enqueue_batch("limited", &vec![task("echo", json!({"n": 1})); n])
        .await
        .unwrap();

    // Empty the pool's bucket, so that its first lease is refused.
    let mut sent = 0;
    let retry_after = loop {
        match server.client.queues().await {
            Ok(_) => sent += 1,
            Err(weir_client::Error::RateLimited { retry_after }) => break retry_after.unwrap(),
            Err(e) => panic!("{e}"),
        }
        assert!(sent <= 10 * burst, "never refused");
    };
    let first_run: Arc<Mutex<Option<Instant>>> = Arc::default();
    let ran = first_run.clone();
    let started = Instant::now();
    let pool = PoolBuilder::new(server.client.clone())
        .queue("limited", 1)
        .handler("echo", move |t: Task, _ctx: Ctx| {
            ran.lock().unwrap().get_or_insert_with(Instant::now);
            async move { Ok(t.payload) }
        })
        .build()
        .unwrap();
    let running = Running::start(pool);
    for id in &ids {
        let view = server
            .store
            .as_ref()
            .unwrap()
            .broker
            .wait(id.parse().unwrap(), Duration::from_millis(WAIT_MS))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.record.state, weir_core::TaskState::Completed, "{id}");
        assert_eq!(view.record.attempt, 1, "{id}");
    }
    // Nothing was leased before the server's Retry-After had passed.
    let waited = first_run.lock().unwrap().unwrap() - started;
    assert!(
        waited >= retry_after,
        "the first task ran {waited:?} after the start; Retry-After was {retry_after:?}"
    );
    let report = running.stop().await;
    assert_eq!(report.completed, n as u64, "{report:?}");
    assert_eq!(report.refused, 0, "{report:?}");
    server.stop().await;
}

/// Issue 9: a settle refused with 429 is sent again after its Retry-After, as
/// often as it takes (within `SETTLE_THROTTLED_MS_MAX`), not given up after
/// `SETTLE_TRIES_MAX` quick tries, which would have every task run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttled_settle_waits_each_retry_after_and_is_not_given_up() {
    let refused = weir_worker::limits::SETTLE_TRIES_MAX as usize;
    // One task, so one settle batch: every try is that batch's.
    let batch = format!(r#"{{"tasks":[{}]}}"#, leased_json("a", r#"{"n":1}"#));
    let fake = FakeServer::start(batch, refused).await;
    fake.echo_one_task().await;
    let r = fake.recorded.lock().unwrap();
    assert_eq!(r.settle_tries.len(), refused + 1);
    // Each try after a refusal came no sooner than the Retry-After asked.
    for pair in r.settle_tries.windows(2).take(refused) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(100), "a retry after {gap:?}");
    }
}

/// The worker channel across a server restart (the store closed and opened
/// again): what the pool had acknowledged before stays done; tasks running when
/// the server went away finish while it is down, and their acks, with no channel
/// to take them, go over HTTP, retried until the server is back (on Redis their
/// leases outlive the restart, so those acks land; the embedded store hands
/// leased tasks out again after a restart, so they are refused and the tasks run
/// again: at least once, never lost); the pool then leases through a new channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_channel_across_a_server_restart_reconnects_and_loses_nothing_acknowledged() {
    const HELD: usize = 8;
    let mut server = Server::start().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (started_tx, mut started_rx) = mpsc::channel::<String>(2 * HELD);
    let (finished_tx, mut finished_rx) = mpsc::channel::<String>(2 * HELD);
    let g = gate.clone();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let pool = PoolBuilder::new(server.client.clone())
        .queue("restart", 1)
        .concurrency(HELD)
        .handler("gated", move |t: Task, _ctx: Ctx| {
            let gate = g.clone();
            let started = started_tx.clone();
            let finished = finished_tx.clone();
            r.fetch_add(1, Ordering::SeqCst);
            async move {
                started.send(t.id.clone()).await.unwrap();
                let _pass = gate.acquire().await.unwrap();
                finished.send(t.id).await.unwrap();
                Ok(json!({"done": t.payload}))
            }
        })
        .handler("quick", |t: Task, _ctx: Ctx| async move { Ok(t.payload) })
        .build()
        .unwrap();
    let running = Running::start(pool);
    let quick = |from: usize| (from..from + 20).map(|i| task("quick", json!(i))).collect();
    let acked = server.enqueue_many("restart", quick(0)).await;
    for id in &acked {
        server.finished(id).await;
    }
    let gated = server
        .enqueue_many(
            "restart",
            (0..HELD).map(|i| task("gated", json!(i))).collect(),
        )
        .await;
    for _ in 0..HELD {
        started_rx.recv().await.unwrap();
    }
    let before = server.requests().await;
    assert!(before.count(CONNECT) >= 1, "{before:?}");
    assert_eq!(before.count(LEASE) + before.count(ACKS), 0, "{before:?}");

    // The server goes away with every gated task running; they finish while it
    // is down, so their acks find no channel and no server.
    server.halt().await;
    gate.add_permits(2 * HELD);
    for _ in 0..HELD {
        finished_rx.recv().await.unwrap();
    }
    server.resume().await;

    for (i, id) in acked.iter().enumerate() {
        let t = server.finished(id).await;
        assert_eq!(t.state, TaskState::Completed, "an acknowledged task: {t:?}");
        assert_eq!(t.result, Some(json!(i)), "{t:?}");
        assert_eq!(t.attempt, 1, "an acknowledged task ran again: {t:?}");
    }
    for (i, id) in gated.iter().enumerate() {
        let t = server.finished(id).await;
        assert_eq!(t.state, TaskState::Completed, "{t:?}");
        assert_eq!(t.result, Some(json!({"done": i})), "{t:?}");
    }
    // The pool is back on a channel: new tasks come without a lease request.
    let later = server.enqueue_many("restart", quick(20)).await;
    for (i, id) in later.iter().enumerate() {
        let t = server.finished(id).await;
        assert_eq!(t.result, Some(json!(20 + i)), "{t:?}");
    }
    let after = server.requests().await;
    assert!(after.count(CONNECT) >= 1, "no new channel: {after:?}");
    assert_eq!(after.count(LEASE), 0, "leased over HTTP: {after:?}");

    let report = running.stop().await;
    // Each task is counted done once, whichever way its ack landed.
    assert_eq!(report.completed, (20 + HELD + 20) as u64, "{report:?}");
    let ran = runs.load(Ordering::SeqCst);
    assert!(
        (HELD..=2 * HELD).contains(&ran),
        "gated handlers ran {ran} times"
    );
    let store = &server.store.as_ref().unwrap().name;
    eprintln!("store {store}: gated handlers ran {ran} times, {report:?}");
    if store.starts_with("redis") {
        // Leases outlive the restart here: every ack sent again over HTTP lands.
        assert_eq!(ran, HELD, "a gated task ran again");
        assert_eq!(report.refused, 0, "{report:?}");
    }
    server.stop().await;
}

/// A settle the channel never answered (it dropped first) is sent again over
/// HTTP: the ack is not lost, and it is counted once. Without the re-send the
/// ack would never reach `/v1/acks` and the task would wait for its lease to
/// run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settle_the_lost_channel_did_not_answer_is_sent_again_over_http() {
    ack_sent_again_over_http("t-1", Connect::Scripted).await;
}

/// Runs an echo pool for the one task `id` a scripted channel pushes: the
/// channel reads the task's settle and does not take it, so its ack must reach
/// `/v1/acks`, once. Returns the fake server, for more checks.
async fn ack_sent_again_over_http(id: &str, connect: Connect) -> FakeServer {
    let batch = format!(r#"{{"tasks":[{}]}}"#, leased_json(id, r#"{"n":1}"#));
    let fake = FakeServer::start_with(batch, 0, connect).await;
    fake.echo_one_task().await;
    {
        let r = fake.recorded.lock().unwrap();
        assert_eq!(r.channel_settles.len(), 1, "{:?}", r.channel_settles);
        assert_eq!(r.channel_settles[0]["acks"][0]["id"], id);
        assert_eq!(r.acks.len(), 1, "{:?}", r.acks);
        assert_eq!(r.acks[0]["id"], id);
        assert_eq!(r.acks[0]["lease_id"], format!("lease-{id}"));
        assert_eq!(r.acks[0]["result"], json!({"n": 1}));
    }
    fake
}

/// A pool with fewer task slots than queues keeps HTTP long-polls: on the
/// channel an empty queue would hold its only credit parked while another
/// queue's task waited a whole park.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fewer_slots_than_queues_keep_http_long_polls() {
    let server = Server::start().await;
    let pool = PoolBuilder::new(server.client.clone())
        .queue("first", 1)
        .queue("second", 1)
        .concurrency(1)
        .handler("echo", |t: Task, _ctx: Ctx| async move { Ok(t.payload) })
        .build()
        .unwrap();
    let running = Running::start(pool);
    let id = server.enqueue("second", task("echo", json!(7))).await;
    assert_eq!(server.finished(&id).await.result, Some(json!(7)));
    let requests = server.requests().await;
    assert_eq!(requests.count(CONNECT), 0, "{requests:?}");
    assert!(requests.count(LEASE) >= 1, "{requests:?}");
    running.stop().await;
    server.stop().await;
}

/// A 426 on the upgrade (a proxy that drops `Upgrade`) is not a refusal: the
/// pool runs on HTTP long-polls, as against a server without the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_426_on_the_upgrade_falls_back_to_http_long_polls() {
    let batch = format!(r#"{{"tasks":[{}]}}"#, leased_json("one", r#"{"n":1}"#));
    let fake = FakeServer::start_with(batch, 0, Connect::UpgradeRequired).await;
    fake.echo_one_task().await;
    assert_eq!(fake.recorded.lock().unwrap().acks.len(), 1);
}

/// A settle the server refuses as a whole (its store away: `settled` with an
/// `error`) is sent again over HTTP, and the channel stays open: no reconnect.
/// Without the pool's rule the ack would be dropped as answered, and the task
/// would wait for its lease to run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settle_refused_as_a_whole_goes_over_http_and_the_channel_stays() {
    let fake = ack_sent_again_over_http("t-2", Connect::ScriptedRefusing).await;
    assert_eq!(
        fake.recorded.lock().unwrap().channels,
        1,
        "the channel was reopened"
    );
}
