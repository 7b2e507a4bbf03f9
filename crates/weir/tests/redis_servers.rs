//! Many `weir serve` processes on one Redis (SPEC §8): tasks enqueued on one
//! server are leased and acked through the others exactly once; long-polls
//! (lease, result wait, heartbeat watch) parked on one server wake for changes
//! made through another; a server killed with its leases held loses nothing; and
//! a Redis that crashes and comes back (AOF, `appendfsync always`) costs 503s
//! while it is down, never an acknowledged task, with no weir restarted.
//!
//! Each test runs its own `redis-server` (`common::redis`) on a free port.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis::{RedisOptions, RedisProcess};
use common::{fresh_prefix, start_server_with, Options, Server};
use serde_json::{json, Value};
use weir_client::{AckItem, Client, EnqueueOptions};

/// Bound on anything that should happen; a hang fails the test instead.
const PATIENCE: Duration = Duration::from_secs(60);

/// How soon a long-poll parked on one server must answer a change made through
/// another. The Redis store wakes parked long-polls by a pub/sub message from the
/// script that made the change (`weir_store::redis::wake`); as a fallback for a
/// lost message every parked waiter re-checks Redis on its own every 1–2 s
/// (`wake::RECHECK_MS_MIN`..`RECHECK_MS_MAX`, docs/design/redis-store.md). This
/// bound is below the shortest re-check, so passing it means the wake-up crossed
/// servers and did not wait for the re-check. The waits given (20 s) are far
/// longer.
const WAKE_BOUND: Duration = Duration::from_millis(900);

/// A `weir serve` on the Redis at `url`, with keys under `prefix`.
async fn server_on(url: &str, prefix: &str, extra: &[&str]) -> Server {
    start_server_with(Options {
        store: Some(url),
        store_prefix: Some(prefix),
        extra,
        ..Options::default()
    })
    .await
}

fn client(server: &Server) -> Client {
    Client::new(&server.base).unwrap()
}

/// Every id acked, with how often: each must be acked exactly once.
type Acked = Arc<Mutex<HashMap<String, u32>>>;

/// Leases and acks (in batches through `POST /v1/acks`) from `queue` until
/// `done()` says so. Every ack must succeed: a 409 or any other refusal fails
/// the test, as does a task leased twice.
async fn work(
    c: Client,
    queue: &'static str,
    name: String,
    acked: Acked,
    done: impl Fn() -> bool + Send + 'static,
) {
    let deadline = Instant::now() + PATIENCE * 2;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{name}: not done within {:?}",
            PATIENCE * 2
        );
        let batch = c
            .lease(queue, 100, 250, Some(&name))
            .await
            .unwrap_or_else(|e| panic!("{name}: lease: {e}"));
        assert!(batch.undecodable.is_empty());
        if batch.tasks.is_empty() {
            continue;
        }
        let acks: Vec<AckItem> = batch
            .tasks
            .iter()
            .map(|t| AckItem {
                id: t.id.clone(),
                lease_id: t.lease_id.clone(),
                result: json!({"by": name}),
            })
            .collect();
        let outcome = c
            .settle(&acks, &[])
            .await
            .unwrap_or_else(|e| panic!("{name}: settle: {e}"));
        assert_eq!(outcome.acks.len(), acks.len());
        let mut acked = acked.lock().unwrap();
        for o in outcome.acks {
            assert!(o.ok, "{name}: ack of {} refused: {o:?}", o.id);
            *acked.entry(o.id).or_default() += 1;
        }
    }
}

/// The queue's counts as `GET /v1/queues` shows them through `c`.
async fn counts(c: &Client, queue: &str) -> weir_client::Counts {
    let queues = c.queues().await.unwrap();
    queues
        .iter()
        .find(|q| q.name == queue)
        .unwrap_or_else(|| panic!("no queue {queue} in {queues:?}"))
        .counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_complete_every_task_exactly_once() {
    const N: usize = 2_000;
    const PRODUCERS: usize = 4;
    const BATCH: usize = 50;
    let redis = RedisProcess::start(RedisOptions::default()).await;
    let prefix = fresh_prefix();
    let a = server_on(&redis.url(), &prefix, &[]).await;
    let b = server_on(&redis.url(), &prefix, &[]).await;
    let c = server_on(&redis.url(), &prefix, &[]).await;

    let acked: Acked = Arc::default();
    let total = N;
    let done = {
        let acked = acked.clone();
        move || acked.lock().unwrap().len() >= total
    };
    let mut workers = Vec::new();
    for (server, name) in [(&b, "b"), (&c, "c")] {
        for i in 0..2 {
            workers.push(tokio::spawn(work(
                client(server),
                "multi",
                format!("worker-{name}{i}"),
                acked.clone(),
                done.clone(),
            )));
        }
    }
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let c = client(&a);
        producers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for batch in 0..N / PRODUCERS / BATCH {
                let tasks: Vec<EnqueueOptions> = (0..BATCH)
                    .map(|i| EnqueueOptions::new(json!({"p": p, "b": batch, "i": i})))
                    .collect();
                ids.extend(c.enqueue_batch("multi", &tasks).await.unwrap());
            }
            ids
        }));
    }
    let mut enqueued = HashSet::new();
    for p in producers {
        for id in p.await.unwrap() {
            assert!(enqueued.insert(id), "an id was handed out twice");
        }
    }
    assert_eq!(enqueued.len(), N);
    for w in workers {
        w.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let twice: Vec<_> = acked.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "acked more than once: {twice:?}");
    let acked: HashSet<String> = acked.into_keys().collect();
    assert_eq!(acked, enqueued, "the acked ids are not the enqueued ones");
    // Every server sees the same store.
    for s in [&a, &b, &c] {
        let n = counts(&client(s), "multi").await;
        assert_eq!(
            (n.completed, n.pending, n.active, n.scheduled, n.dead),
            (N as u64, 0, 0, 0, 0),
            "{}",
            s.base
        );
    }
    // Each worker's result is the one stored.
    let one = enqueued.iter().next().unwrap();
    let task = client(&a).get(one).await.unwrap();
    assert_eq!(task.state, weir_client::TaskState::Completed);
    assert!(task.result.unwrap()["by"]
        .as_str()
        .unwrap()
        .starts_with("worker-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_parked_on_one_server_takes_a_task_enqueued_on_another() {
    let redis = RedisProcess::start(RedisOptions::default()).await;
    let prefix = fresh_prefix();
    let a = server_on(&redis.url(), &prefix, &[]).await;
    let b = server_on(&redis.url(), &prefix, &[]).await;
    let (ca, cb) = (client(&a), client(&b));

    let parked = {
        let cb = cb.clone();
        tokio::spawn(async move {
            let batch = cb.lease("wake", 1, 20_000, Some("parked")).await.unwrap();
            (Instant::now(), batch)
        })
    };
    // A lease sent after the parked one, with a short wait, answering empty: by
    // then B has been holding lease long-polls on this queue for its whole wait,
    // so the parked one is waiting too (not yet arrived, it would find the task at
    // once and prove nothing).
    let probe = cb.lease("wake", 1, 300, Some("probe")).await.unwrap();
    assert!(probe.is_empty());
    assert!(
        !parked.is_finished(),
        "the parked lease answered before any enqueue"
    );

    // From the moment the enqueue is sent: the wake-up may come before its 2xx.
    let enqueued_at = Instant::now();
    let id = ca
        .enqueue("wake", &EnqueueOptions::new(json!({"x": 1})))
        .await
        .unwrap()
        .id;
    let (leased_at, batch) = tokio::time::timeout(PATIENCE, parked)
        .await
        .expect("the parked lease answers")
        .unwrap();
    assert_eq!(batch.tasks.len(), 1);
    assert_eq!(batch.tasks[0].id, id);
    let took = leased_at.saturating_duration_since(enqueued_at);
    eprintln!("lease parked on B: took {took:?} from the enqueue on A");
    assert!(
        took < WAKE_BOUND,
        "the parked lease on B took {took:?} to see the enqueue on A"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_wait_and_a_cancel_cross_servers() {
    let redis = RedisProcess::start(RedisOptions::default()).await;
    let prefix = fresh_prefix();
    let a = server_on(&redis.url(), &prefix, &[]).await;
    let b = server_on(&redis.url(), &prefix, &[]).await;
    let c = server_on(&redis.url(), &prefix, &[]).await;
    let (ca, cb, cc) = (client(&a), client(&b), client(&c));

    // A result long-poll on A answers when B acks.
    let id = ca
        .enqueue("cross", &EnqueueOptions::new(json!({"n": 1})))
        .await
        .unwrap()
        .id;
    let waiting = {
        let ca = ca.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let task = ca.wait(&id, 20_000).await.unwrap();
            (Instant::now(), task)
        })
    };
    let leased = cb.lease("cross", 1, 5_000, Some("b")).await.unwrap().tasks;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].id, id);
    // The wait is still parked: the task is active, not terminal.
    let still = ca.wait(&id, 300).await.unwrap();
    assert_eq!(still.state, weir_client::TaskState::Active);
    assert!(!waiting.is_finished());
    let acked_at = Instant::now();
    cb.ack(&id, &leased[0].lease_id, &json!({"done": true}))
        .await
        .unwrap();
    let (answered_at, task) = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the result wait answers")
        .unwrap();
    assert_eq!(task.state, weir_client::TaskState::Completed);
    assert_eq!(task.result, Some(json!({"done": true})));
    let took = answered_at.saturating_duration_since(acked_at);
    eprintln!("result wait on A: took {took:?} from the ack on B");
    assert!(
        took < WAKE_BOUND,
        "the wait on A took {took:?} to see B's ack"
    );

    // A cancel through A reaches a heartbeat parked on C.
    let id = ca
        .enqueue(
            "cross",
            &EnqueueOptions::new(json!({"n": 2})).timeout_ms(60_000),
        )
        .await
        .unwrap()
        .id;
    let leased = cc.lease("cross", 1, 5_000, Some("c")).await.unwrap().tasks;
    assert_eq!(leased.len(), 1);
    let lease_id = leased[0].lease_id.clone();
    let watching = {
        let cc = cc.clone();
        let (id, lease_id) = (id.clone(), lease_id.clone());
        tokio::spawn(async move {
            let beat = cc.heartbeat_wait(&id, &lease_id, 20_000).await.unwrap();
            (Instant::now(), beat)
        })
    };
    // A plain heartbeat on C after the parked one: C is serving heartbeats of
    // this lease, and no cancel is requested yet.
    let beat = cc.heartbeat(&id, &lease_id).await.unwrap();
    assert!(!beat.cancel_requested);
    assert!(
        !watching.is_finished(),
        "the watch answered before the cancel"
    );
    let canceled_at = Instant::now();
    let canceled = ca.cancel(&id).await.unwrap();
    assert!(canceled.cancel_requested);
    let (answered_at, beat) = tokio::time::timeout(PATIENCE, watching)
        .await
        .expect("the watch answers")
        .unwrap();
    assert!(beat.cancel_requested);
    let took = answered_at.saturating_duration_since(canceled_at);
    eprintln!("heartbeat parked on C: took {took:?} from the cancel on A");
    assert!(
        took < WAKE_BOUND,
        "the heartbeat parked on C took {took:?} to see the cancel through A"
    );
    // The worker stops: its fail ends the task canceled, seen through B.
    let state = cc.fail(&id, &lease_id, "canceled", true).await.unwrap();
    assert_eq!(state, weir_client::TaskState::Canceled);
    assert_eq!(
        cb.get(&id).await.unwrap().state,
        weir_client::TaskState::Canceled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_of_a_killed_server_are_leased_again_through_another() {
    const N: usize = 10;
    const TIMEOUT_MS: u64 = 1_000;
    /// Past the lease's expiry, how soon another server must hand the task out
    /// again.
    const REDELIVERY_SLACK: Duration = Duration::from_secs(4);
    let redis = RedisProcess::start(RedisOptions::default()).await;
    let prefix = fresh_prefix();
    let grace = ["--lease-grace-ms", "0"];
    let a = server_on(&redis.url(), &prefix, &grace).await;
    let mut b = server_on(&redis.url(), &prefix, &grace).await;
    let (ca, cb) = (client(&a), client(&b));

    let tasks: Vec<EnqueueOptions> = (0..N)
        .map(|i| EnqueueOptions::new(json!({"i": i})).timeout_ms(TIMEOUT_MS))
        .collect();
    let ids: HashSet<String> = ca
        .enqueue_batch("orphans", &tasks)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let leased_at = Instant::now();
    let leased = cb
        .lease("orphans", N as u32, 5_000, Some("b"))
        .await
        .unwrap();
    assert_eq!(leased.tasks.len(), N);
    assert!(leased.tasks.iter().all(|t| t.attempt == 1));
    b.child.start_kill().unwrap();
    b.child.wait().await.unwrap();

    let mut again = HashSet::new();
    let deadline = leased_at + Duration::from_millis(TIMEOUT_MS) + REDELIVERY_SLACK;
    while again.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} tasks leased again by {REDELIVERY_SLACK:?} past their expiry",
            again.len()
        );
        let batch = ca.lease("orphans", N as u32, 500, Some("a")).await.unwrap();
        for t in batch.tasks {
            // Not before the lease ran out: B's lease held until then.
            assert!(leased_at.elapsed() >= Duration::from_millis(TIMEOUT_MS - 100));
            assert_eq!(t.attempt, 2, "{t:?}");
            ca.ack(&t.id, &t.lease_id, &json!(null)).await.unwrap();
            assert!(again.insert(t.id), "leased twice through A");
        }
    }
    assert_eq!(again, ids);
    eprintln!(
        "leased again through A {:?} after the lease on B (timeout {TIMEOUT_MS} ms)",
        leased_at.elapsed()
    );
    let n = counts(&ca, "orphans").await;
    assert_eq!((n.completed, n.active, n.pending), (N as u64, 0, 0));
}

/// What one producer saw.
#[derive(Default)]
struct Produced {
    /// Ids of every enqueue answered 2xx.
    ids: Vec<String>,
    /// Answers 503 (the store unreachable).
    unavailable: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_crashing_and_restarting_under_load_loses_no_acknowledged_task() {
    const BATCH: usize = 10;
    /// Acknowledged enqueues before the crash, and again after the restart.
    const ACKED_BETWEEN_EVENTS: usize = 300;
    let mut redis = RedisProcess::start(RedisOptions { aof: true }).await;
    let prefix = fresh_prefix();
    let a = server_on(&redis.url(), &prefix, &[]).await;
    let b = server_on(&redis.url(), &prefix, &[]).await;
    let http = reqwest::Client::new();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut producers = Vec::new();
    for (i, server) in [&a, &b, &a, &b].into_iter().enumerate() {
        let c = client(server);
        let (stop, acked) = (stop.clone(), acked.clone());
        producers.push(tokio::spawn(async move {
            let mut seen = Produced::default();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let tasks: Vec<EnqueueOptions> = (0..BATCH)
                    .map(|j| EnqueueOptions::new(json!({"p": i, "n": n, "j": j})))
                    .collect();
                n += 1;
                match c.enqueue_batch("survive", &tasks).await {
                    Ok(ids) => {
                        acked.fetch_add(ids.len(), Ordering::Relaxed);
                        seen.ids.extend(ids);
                    }
                    Err(weir_client::Error::Server { status: 503, .. }) => {
                        seen.unavailable += 1;
                        // Not synchronisation: keeps a producer from spinning
                        // while the store is down.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("producer {i}: {e}"),
                }
            }
            seen
        }));
    }
    wait_until("enqueues acknowledged before the crash", || {
        acked.load(Ordering::Relaxed) >= ACKED_BETWEEN_EVENTS
    })
    .await;

    // The crash: with `appendfsync always`, every write Redis answered is in its
    // AOF on disk, so every 2xx weir gave survives it.
    redis.kill().await;
    for s in [&a, &b] {
        wait_for_status(&http, &format!("{}/readyz", s.base), 503).await;
    }
    let problem = wait_for_enqueue_refusal(&http, &a.base).await;
    assert_eq!(
        problem["type"], "urn:weir:problem:store-unreachable",
        "{problem}"
    );

    redis.restart().await;
    for s in [&a, &b] {
        wait_for_status(&http, &format!("{}/readyz", s.base), 200).await;
    }
    let after_restart = acked.load(Ordering::Relaxed);
    wait_until("enqueues acknowledged after the restart", || {
        acked.load(Ordering::Relaxed) >= after_restart + ACKED_BETWEEN_EVENTS
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut recorded = HashSet::new();
    let mut unavailable = 0;
    for p in producers {
        let seen = p.await.unwrap();
        unavailable += seen.unavailable;
        for id in seen.ids {
            assert!(recorded.insert(id), "an id was handed out twice");
        }
    }
    assert!(
        unavailable > 0,
        "no producer saw a 503 while Redis was down"
    );
    eprintln!(
        "{} enqueues acknowledged, {unavailable} batches refused with 503",
        recorded.len()
    );

    // Drain through both servers: every id that got a 2xx is there to complete.
    let done_acked: Acked = Arc::default();
    let want = Arc::new(recorded.clone());
    let done = {
        let (acked, want) = (done_acked.clone(), want.clone());
        move || {
            let acked = acked.lock().unwrap();
            want.iter().all(|id| acked.contains_key(id))
        }
    };
    let workers: Vec<_> = [(&a, "a"), (&b, "b")]
        .into_iter()
        .map(|(s, name)| {
            tokio::spawn(work(
                client(s),
                "survive",
                format!("drain-{name}"),
                done_acked.clone(),
                done.clone(),
            ))
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let done_acked = done_acked.lock().unwrap().clone();
    let twice: Vec<_> = done_acked.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "acked more than once: {twice:?}");
    let n = counts(&client(&a), "survive").await;
    assert!(
        n.completed >= recorded.len() as u64,
        "{} acknowledged enqueues, {n:?}",
        recorded.len()
    );
}

/// Polls `cond` until it holds; fails the test after `PATIENCE`.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `url` until it answers `status`; fails the test after `PATIENCE`.
async fn wait_for_status(http: &reqwest::Client, url: &str, status: u16) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = http
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if got.as_ref().ok() == Some(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer {status} within {PATIENCE:?}: last {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Enqueues through `base` until one is refused with 503; checks its
/// `Retry-After` and returns its problem document.
async fn wait_for_enqueue_refusal(http: &reqwest::Client, base: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let resp = http
            .post(format!("{base}/v1/queues/survive/tasks"))
            .json(&json!({"payload": {"probe": true}}))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("weir answers while Redis is down");
        let status = resp.status().as_u16();
        if status == 503 {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .expect("a 503 has Retry-After")
                .to_str()
                .unwrap()
                .to_owned();
            assert!(retry_after.parse::<u64>().is_ok(), "{retry_after}");
            let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
            assert_eq!(content_type, "application/problem+json");
            return resp.json().await.unwrap();
        }
        assert!(
            status < 300,
            "an enqueue while Redis is down answered {status}, not 503"
        );
        assert!(
            Instant::now() < deadline,
            "enqueues were still taken {PATIENCE:?} after Redis died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_redis_without_aof_is_a_warning_at_start() {
    let redis = RedisProcess::start(RedisOptions::default()).await;
    let mut server = start_server_with(Options {
        store: Some(&redis.url()),
        capture_stderr: true,
        ..Options::default()
    })
    .await;
    // The warnings are logged before the server listens, so they are in the
    // pipe by the time the listening line was read.
    let stderr = server.stderr.as_mut().unwrap();
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(PATIENCE, stderr.next_line())
            .await
            .expect("the warning comes")
            .unwrap()
            .unwrap_or_else(|| panic!("no AOF warning in {seen:#?}"));
        let lower = line.to_lowercase();
        if lower.contains("warn") && (lower.contains("aof") || lower.contains("appendonly")) {
            break;
        }
        seen.push(line);
    }
    // The server runs all the same.
    assert!(client(&server).queues().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_redis_helper_keeps_its_aof_across_a_crash() {
    use common::redis::command;
    let mut redis = RedisProcess::start(RedisOptions { aof: true }).await;
    assert_eq!(command(redis.port, &["SET", "k", "v1"]).await, "+OK");
    redis.kill().await;
    assert!(!common::redis::ping(redis.port).await);
    redis.restart().await;
    assert_eq!(command(redis.port, &["GET", "k"]).await, "$2");
    assert_eq!(command(redis.port, &["SET", "k", "v2"]).await, "+OK");
    redis.stop().await;
    redis.restart().await;
    assert_eq!(command(redis.port, &["STRLEN", "k"]).await, ":2");
}

#[tokio::test]
async fn a_bad_store_is_one_line_and_exit_2() {
    for (flags, expect) in [
        (&["--store", "postgres://h/db"][..], "--store"),
        (
            &[
                "--store",
                "redis://127.0.0.1:6379",
                "--segment-bytes",
                "8388608",
            ][..],
            "applies to the embedded store only",
        ),
        (
            &[
                "--store",
                "redis://127.0.0.1:6379",
                "--store-prefix",
                "a{b}",
            ][..],
            "--store-prefix",
        ),
        (
            &[
                "--store",
                "redis://:hunter2@127.0.0.1:6379",
                "--store-prefix",
                "",
            ][..],
            "--store-prefix",
        ),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .env("WEIR_LOG", "warn")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{flags:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(expect), "{flags:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}
