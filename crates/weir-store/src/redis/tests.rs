//! Redis store tests: the conformance suite on a real Redis, and what only a
//! shared store has: several servers (brokers) on one prefix waking each other,
//! taking over a dead server's leases, and the sweep repairing lost entries.
//!
//! They need a Redis: `WEIR_TEST_REDIS` (default `redis://127.0.0.1:6379`). If
//! none answers, the tests fail; they never skip.

use std::time::Duration;

use rand::Rng;
use weir_core::{Backoff, Limits, TaskState};

use super::*;
use crate::conformance::{ack, enqueue_ids, first_page, item, kill, task, WAIT};
use crate::Checked;

pub fn url() -> String {
    std::env::var("WEIR_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn test_config(target: RedisTarget, prefix: &str) -> RedisConfig {
    let mut c = RedisConfig::new(target);
    c.prefix = prefix.to_owned();
    c.lease_grace_ms = 0;
    c.backoff = Backoff {
        base_ms: 2,
        cap_ms: 4,
    };
    c.sweep_interval_ms = 100;
    c
}

pub fn random_prefix() -> String {
    format!("weirtest-{:016x}", rand::thread_rng().gen::<u64>())
}

async fn connect(prefix: &str) -> RedisBroker {
    let target = RedisTarget::parse(&url()).unwrap();
    RedisBroker::connect(test_config(target, prefix))
        .await
        .unwrap_or_else(|e| panic!("no redis at {} (set WEIR_TEST_REDIS): {e}", url()))
}

pub async fn fresh_redis() -> RedisBroker {
    connect(&random_prefix()).await
}

/// A plain connection for the tests' own inspection and damage.
async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Deletes every key of a prefix (the tests' cleanup).
async fn drop_prefix(prefix: &str) {
    let mut c = raw().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    for chunk in keys.chunks(500) {
        let _: i64 = redis::cmd("UNLINK")
            .arg(chunk)
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

mod conformance {
    crate::conformance_tests!(super::fresh_redis());
}

#[test]
fn targets_parse() {
    assert_eq!(
        RedisTarget::parse("redis://127.0.0.1:6379/2"),
        Ok(RedisTarget::Single("redis://127.0.0.1:6379/2".into()))
    );
    assert!(matches!(
        RedisTarget::parse("rediss://example.com:6380"),
        Ok(RedisTarget::Single(_))
    ));
    assert_eq!(
        RedisTarget::parse("redis-cluster://a:7000,b:7001"),
        Ok(RedisTarget::Cluster(vec![
            "redis://a:7000".into(),
            "redis://b:7001".into()
        ]))
    );
    assert!(RedisTarget::parse("redis-cluster://").is_err());
    assert!(RedisTarget::parse("http://x").is_err());
}

#[tokio::test]
async fn a_prefix_with_braces_is_refused() {
    let target = RedisTarget::parse(&url()).unwrap();
    for bad in ["a{b", "a}b", ""] {
        let c = test_config(target.clone(), bad);
        assert!(matches!(
            RedisBroker::connect(c).await,
            Err(StoreError::Invalid(_))
        ));
    }
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable_not_a_hang() {
    // A port nothing listens on: bind one, then release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = test_config(
        RedisTarget::Single(format!("redis://127.0.0.1:{port}")),
        "weir",
    );
    c.command_timeout_ms = 500;
    let started = tokio::time::Instant::now();
    let r = RedisBroker::connect(c).await;
    assert!(
        matches!(
            r,
            Err(StoreError::Unavailable {
                cause: crate::Outage::Unreachable,
                retry_after_ms: 1000,
                ..
            })
        ),
        "{:?}",
        r.err()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_warnings_name_the_unsafe_settings() {
    let b = fresh_redis().await;
    let w = b.startup_warnings().await;
    // The test Redis runs without persistence.
    assert!(w.iter().any(|s| s.contains("appendonly no")), "{w:?}");
}

/// Waits until `b` has a parked waiter (synchronises on the store's state, not
/// on time).
async fn until_parked(b: &Checked<RedisBroker>) {
    let by = tokio::time::Instant::now() + WAIT;
    while b.inner().core().waiters.len() == 0 {
        assert!(tokio::time::Instant::now() < by, "never parked");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Several brokers on one prefix, each as a separate server would hold it.
async fn servers(n: usize) -> (String, Vec<Checked<RedisBroker>>) {
    let prefix = random_prefix();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Checked::new(connect(&prefix).await, Limits::default()));
    }
    (prefix, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_parked_on_one_server_wakes_on_an_enqueue_through_another() {
    let (prefix, s) = servers(2).await;
    let (a, b) = (s[0].clone(), s[1].clone());
    // The queue exists (and B's long-poll has nothing) before the enqueue.
    let first = a.enqueue("mq", vec![item(task("k"), "0")]).await.unwrap()[0].id;
    let l = b.lease("mq", 1, Duration::ZERO).await.unwrap();
    assert_eq!(l[0].record.id, first);
    let parked = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let got = b.lease("mq", 1, WAIT).await.unwrap();
        (got, started.elapsed())
    });
    until_parked(&s[1]).await;
    let id = a.enqueue("mq", vec![item(task("k"), "1")]).await.unwrap()[0].id;
    let (got, took) = parked.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].record.id, id);
    // Well under both its wait and the waiters' own re-check period: the
    // wake-up crossed servers.
    assert!(
        took < Duration::from_millis(wake::RECHECK_MS_MIN),
        "{took:?}"
    );
    drop_prefix(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_on_one_server_returns_when_another_acks() {
    let (prefix, s) = servers(2).await;
    let (a, b) = (s[0].clone(), s[1].clone());
    let id = a.enqueue("mw", vec![item(task("k"), "1")]).await.unwrap()[0].id;
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            (a.wait(id, WAIT).await.unwrap().unwrap(), started.elapsed())
        })
    };
    until_parked(&s[0]).await;
    let l = b.lease("mw", 1, Duration::ZERO).await.unwrap().remove(0);
    ack(&b, id, l.lease_id).await;
    let (v, took) = waiter.await.unwrap();
    assert_eq!(v.record.state, TaskState::Completed);
    assert!(
        took < Duration::from_millis(wake::RECHECK_MS_MIN),
        "{took:?}"
    );
    drop_prefix(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_on_one_server_returns_when_another_cancels() {
    let (prefix, s) = servers(3).await;
    let (a, b, c) = (s[0].clone(), s[1].clone(), s[2].clone());
    let mut t = task("k");
    t.timeout_ms = 60_000;
    let id = a.enqueue("mc", vec![item(t, "1")]).await.unwrap()[0].id;
    let l = b.lease("mc", 1, Duration::ZERO).await.unwrap().remove(0);
    let watcher = {
        let c = c.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            (
                c.watch(id, l.lease_id, WAIT).await.unwrap(),
                started.elapsed(),
            )
        })
    };
    until_parked(&s[2]).await;
    a.cancel(id).await.unwrap();
    let (hb, took) = watcher.await.unwrap();
    assert!(hb.cancel_requested);
    assert!(
        took < Duration::from_millis(wake::RECHECK_MS_MIN),
        "{took:?}"
    );
    drop_prefix(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_servers_leases_are_taken_over_after_expiry() {
    let (prefix, mut s) = servers(2).await;
    let mut t = task("k");
    t.timeout_ms = 300;
    let items = (0..3).map(|i| item(t.clone(), &i.to_string())).collect();
    let ids = enqueue_ids(&s[0], "md", items).await;
    let dying = s.pop().unwrap();
    let held = dying.lease("md", 3, Duration::ZERO).await.unwrap();
    assert_eq!(held.len(), 3);
    drop(dying);
    // Nobody leases meanwhile: the other server's sweep must return them.
    let survivor = &s[0];
    let by = tokio::time::Instant::now() + WAIT;
    loop {
        let pending = survivor
            .queues()
            .await
            .unwrap()
            .into_iter()
            .find(|q| q.name == "md")
            .unwrap()
            .counts
            .get(TaskState::Pending);
        if pending == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < by, "never requeued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = survivor.lease("md", 3, Duration::ZERO).await.unwrap();
    let mut got: Vec<TaskId> = again.iter().map(|l| l.record.id).collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
    assert!(again.iter().all(|l| l.record.attempt == 2));
    drop_prefix(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_repairs_lost_index_entries() {
    let (prefix, s) = servers(1).await;
    let b = &s[0];
    let mut t = task("k");
    t.timeout_ms = 200;
    let lost_active = b.enqueue("mr", vec![item(t, "1")]).await.unwrap()[0].id;
    let l = b.lease("mr", 1, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(l.record.id, lost_active);
    let lost_pending = b.enqueue("mr", vec![item(task("k"), "2")]).await.unwrap()[0].id;
    let core = b.inner().core();
    let mut c = raw().await;
    let base = core.keys.base(queue_slot("mr"));
    let q = format!("{base}q:{}", keys::hex(b"mr"));
    // The whole ready zset and the active entry are lost.
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{q}:ready"))
        .query_async(&mut c)
        .await
        .unwrap();
    let _: i64 = redis::cmd("ZREM")
        .arg(format!("{q}:active"))
        .arg(lost_active.to_string())
        .query_async(&mut c)
        .await
        .unwrap();
    // The pending task comes back through the audit; the active one too, and
    // its lease then expires into pending.
    // Each task is acked as it comes back, so one with a 200 ms lease cannot
    // expire and come back a second time while the test waits for the other.
    let by = tokio::time::Instant::now() + WAIT;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        assert!(tokio::time::Instant::now() < by, "not repaired: {seen:?}");
        for l in b.lease("mr", 2, Duration::from_millis(200)).await.unwrap() {
            assert!(
                seen.insert(l.record.id),
                "{} leased again after its ack",
                l.record.id
            );
            ack(b, l.record.id, l.lease_id).await;
        }
    }
    assert_eq!(seen, [lost_active, lost_pending].into_iter().collect());
    drop_prefix(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_leave_no_entries_behind() {
    let b = fresh_redis().await;
    let id = b.enqueue("ml", vec![item(task("k"), "1")]).await.unwrap()[0].id;
    let _ = b.wait(id, Duration::from_millis(20)).await.unwrap();
    let _ = b
        .lease("nothing", 1, Duration::from_millis(20))
        .await
        .unwrap();
    assert_eq!(b.core().waiters.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_parked_long_polls_at_once() {
    let b = fresh_redis().await;
    let parked = {
        let b = b.clone();
        tokio::spawn(async move { b.lease("ms", 1, WAIT).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    b.begin_shutdown();
    assert!(parked.await.unwrap().unwrap().is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));
    // Later long-polls do not wait.
    let started = tokio::time::Instant::now();
    assert!(b.lease("ms", 1, WAIT).await.unwrap().is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));
    b.close().await.unwrap();
    assert!(matches!(b.queues().await, Err(StoreError::Closed)));
}

/// The shared model-based simulation (`crate::simulation`) on Redis, one fresh
/// prefix per seed. Redis has no restart or outage to inject here; every roll
/// is an ordinary operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_the_model() {
    use crate::simulation::{self as sim, Keys, Tasks, STEPS, STEP_ROLLS};
    use rand::SeedableRng;
    for seed in sim::seeds(8) {
        let prefix = random_prefix();
        let b = Checked::new(connect(&prefix).await, Limits::default());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut model = Tasks::new();
        let mut keys = Keys::new();
        for step in 0..STEPS {
            let roll = rng.gen_range(0..STEP_ROLLS);
            sim::step(&b, &mut rng, &mut model, &mut keys, roll, seed, step).await;
            sim::check(&b, &model, &keys, seed, step).await;
        }
        b.close().await.unwrap();
        drop_prefix(&prefix).await;
    }
}

/// A busy queue's retention keeps pace without the sweep: each lease call also
/// purges up to its `max` tasks past retention (the sweep purges a bounded
/// number per round, which a queue acking faster could outrun).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_purges_tasks_past_retention_without_the_sweep() {
    let prefix = random_prefix();
    let mut cfg = test_config(RedisTarget::parse(&url()).unwrap(), &prefix);
    // No sweep round within the test.
    cfg.sweep_interval_ms = 3_600_000;
    let b = RedisBroker::connect(cfg).await.unwrap();
    let mut brief = task("k");
    brief.retention_ms = 0;
    let id = b.enqueue("mp", vec![item(brief, "1")]).await.unwrap()[0].id;
    let l = b.lease("mp", 1, Duration::ZERO).await.unwrap().remove(0);
    ack(&b, id, l.lease_id).await;
    let completed = |qs: Vec<QueueInfo>| {
        qs.into_iter()
            .find(|q| q.name == "mp")
            .map(|q| q.counts.get(TaskState::Completed))
    };
    // Readers lose the record as soon as its retention (1 ms) ran out;
    // retention has no event to wait on: ask until then, within a bound.
    let by = tokio::time::Instant::now() + WAIT;
    while b.get(id).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < by, "never past retention");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nothing has purged it yet; the next lease call does.
    assert_eq!(completed(b.queues().await.unwrap()), Some(1));
    assert!(b.lease("mp", 10, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(completed(b.queues().await.unwrap()), Some(0));
    let mut c = raw().await;
    let left: bool = redis::cmd("HEXISTS")
        .arg(b.core().keys.task(id))
        .arg(id.to_string())
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!left, "the record outlived its retention and a lease");
    b.close().await.unwrap();
    drop_prefix(&prefix).await;
}

/// Flow control is the store's, not a server's: three servers leasing from one
/// rate-limited queue together get the configured rate (measured by Redis' own
/// clock: each task's start), and an in-flight cap holds across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_share_one_rate_and_one_in_flight_cap() {
    use weir_core::ConfigPatch;
    let (prefix, s) = servers(3).await;
    s[0].configure(
        "shared",
        ConfigPatch {
            rate_per_sec: Some(Some(100.0)),
            burst: Some(Some(30)),
            ..ConfigPatch::default()
        },
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let items = (0..100).map(|i| item(task("k"), &i.to_string())).collect();
        s[1].enqueue("shared", items).await.unwrap();
    }
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let takers: Vec<_> = s
        .iter()
        .map(|b| {
            let (b, starts) = (b.clone(), starts.clone());
            tokio::spawn(async move {
                let mine = |starts: &std::sync::Mutex<Vec<u64>>| starts.lock().unwrap().len();
                while mine(&starts) < 230 {
                    let got = b.lease("shared", 100, WAIT).await.unwrap();
                    starts
                        .lock()
                        .unwrap()
                        .extend(got.iter().map(|l| l.record.started_ms.unwrap()));
                }
            })
        })
        .collect();
    for t in takers {
        t.await.unwrap();
    }
    let mut starts = starts.lock().unwrap().clone();
    starts.sort_unstable();
    // 30 at once, then 200 one per 10 ms: 2 s within 5%.
    let span = starts[229] - starts[0];
    assert!(
        (1900..=2100).contains(&span),
        "200 tasks at 100/s over three servers took {span} ms"
    );

    s[0].configure(
        "capped",
        ConfigPatch {
            max_in_flight: Some(Some(3)),
            ..ConfigPatch::default()
        },
    )
    .await
    .unwrap();
    let items = (0..20).map(|i| item(task("k"), &i.to_string())).collect();
    s[0].enqueue("capped", items).await.unwrap();
    let mut held = Vec::new();
    for b in &s {
        held.extend(b.lease("capped", 10, Duration::ZERO).await.unwrap());
    }
    assert_eq!(held.len(), 3, "the cap holds across servers");
    // A lease parked on the third server wakes on an ack through the first.
    let parked = {
        let b = s[2].clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let got = b.lease("capped", 10, WAIT).await.unwrap();
            (got, started.elapsed())
        })
    };
    until_parked(&s[2]).await;
    let acked = tokio::time::Instant::now();
    ack(&s[0], held[0].record.id, held[0].lease_id).await;
    let (got, _) = parked.await.unwrap();
    let took = acked.elapsed();
    assert_eq!(got.len(), 1);
    assert!(
        took < Duration::from_millis(wake::RECHECK_MS_MIN),
        "{took:?}"
    );
    drop_prefix(&prefix).await;
}

/// `schedules_max` on Redis (`schedule.lua` counts the hash's definitions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_capped() {
    let prefix = random_prefix();
    let mut c = test_config(RedisTarget::parse(&url()).unwrap(), &prefix);
    c.limits.schedules_max = 2;
    let b = RedisBroker::connect(c).await.unwrap();
    crate::conformance::schedules_are_capped_at_two(&b).await;
    drop_prefix(&prefix).await;
}

/// `keys_max` on Redis (`api_keys.lua` counts the hash's records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_capped() {
    let prefix = random_prefix();
    let mut c = test_config(RedisTarget::parse(&url()).unwrap(), &prefix);
    c.limits.keys_max = 2;
    let b = RedisBroker::connect(c).await.unwrap();
    crate::conformance::api_keys_are_capped_at_two(&b).await;
    drop_prefix(&prefix).await;
}

/// API keys live in Redis, not in a server: written through one server that
/// then closes, they are read back through a new one on the same prefix (the
/// Redis store's restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_outlive_the_server_that_wrote_them() {
    let prefix = random_prefix();
    let a = Checked::new(connect(&prefix).await, Limits::default());
    crate::conformance::api_keys_written_before_a_restart(&a).await;
    a.close().await.unwrap();
    drop(a);
    let b = Checked::new(connect(&prefix).await, Limits::default());
    crate::conformance::api_keys_as_written_before_the_restart(&b).await;
    drop_prefix(&prefix).await;
}

/// What one server does to tasks, another sees and can act on: tasks killed
/// through A are listed, retried and deleted through B, and A's totals agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_tasks_made_on_one_server_are_browsed_retried_and_deleted_on_another() {
    let (prefix, s) = servers(2).await;
    let (a, b) = (s[0].clone(), s[1].clone());
    let mut dead = Vec::new();
    for _ in 0..3 {
        let id = a.enqueue("xs", vec![item(task("k"), "1")]).await.unwrap()[0].id;
        kill(&a, "xs", id).await;
        dead.push(id);
    }
    let listed = first_page(&b, "xs", TaskState::Dead).await;
    assert_eq!(listed, vec![dead[2], dead[1], dead[0]]);
    let scope = crate::Scope {
        queue: Some("xs"),
        state: Some(TaskState::Dead),
    };
    assert!(b.retry(vec![dead[0]], scope).await.unwrap()[0].is_ok());
    assert!(b.delete_tasks(vec![dead[1]], scope).await.unwrap()[0].is_ok());
    let leased = a.lease("xs", 10, Duration::ZERO).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(
        leased[0].record.id, dead[0],
        "B's retry is leasable through A"
    );
    assert!(
        a.get(dead[1]).await.unwrap().is_none(),
        "B's delete is seen by A"
    );
    let q = a
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == "xs")
        .unwrap();
    assert_eq!(q.counts.get(TaskState::Dead), 1);
    assert_eq!((q.totals.enqueued, q.totals.dead), (3, 3));
    drop_prefix(&prefix).await;
}

/// Completed tasks share the 'fin' index with canceled ones, which a completed
/// listing skips at most 5,000 at a time (browse.lua's SCAN_MAX): behind 5,100
/// canceled tasks, the first page is empty but has a cursor, and the walk goes on
/// to list the completed tasks once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_listing_skips_many_canceled_tasks_a_bounded_scan_at_a_time() {
    let prefix = random_prefix();
    let b = connect(&prefix).await;
    let q = "scan";
    let two = vec![item(task("k"), "1"), item(task("k"), "2")];
    let mut done = enqueue_ids(&b, q, two).await;
    for l in b.lease(q, 2, Duration::ZERO).await.unwrap() {
        crate::conformance::ack(&b, l.record.id, l.lease_id).await;
    }
    // Canceled afterwards: their retention ends later, so they come first.
    for _ in 0..51 {
        let items = (0..100).map(|_| item(task("k"), "1")).collect();
        let ids = enqueue_ids(&b, q, items).await;
        let cancels = ids.iter().map(|&id| b.cancel(id));
        for r in futures_util::future::join_all(cancels).await {
            assert_eq!(r.unwrap().record.state, TaskState::Canceled);
        }
    }
    let first = b.browse(q, TaskState::Completed, None, 10).await.unwrap();
    assert!(
        first.tasks.is_empty(),
        "5,000 canceled tasks read, none listed"
    );
    let cursor = first.next.expect("the walk goes on below what it read");
    let second = b
        .browse(q, TaskState::Completed, Some(&cursor), 10)
        .await
        .unwrap();
    let listed: Vec<TaskId> = second.tasks.iter().map(|t| t.id).collect();
    done.sort_by(|a, b| b.cmp(a));
    assert_eq!(listed, done);
    assert_eq!(second.next, None);
    drop_prefix(&prefix).await;
}

/// Script calls this broker has made (its `commit_seconds` count).
fn script_calls(b: &RedisBroker) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register(
        "calls",
        "script calls",
        b.metrics()
            .expect("the Redis store has metrics")
            .commit_seconds,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("calls_count "))
        .and_then(|v| v.parse().ok())
        .expect("a count")
}

/// Many parked calls on one token re-check once per interval between them, not
/// each on its own: 100 waits on one task that never ends, over 3.5 s (past
/// every waiter's own re-check timer, 1–2 s), cost their first and last reads
/// and a few re-checks; each re-checking on its own would be 100 more per
/// interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_on_one_token_share_their_rechecks() {
    const WAITERS: usize = 100;
    // No sweep in the window: only the waiters' calls are counted.
    let mut config = test_config(RedisTarget::parse(&url()).unwrap(), &random_prefix());
    config.sweep_interval_ms = 600_000;
    let b = RedisBroker::connect(config).await.unwrap();
    let id = b.enqueue("rc", vec![item(task("k"), "1")]).await.unwrap()[0].id;
    let token = format!("t{id}");
    let before = script_calls(&b);
    let mut waits = Vec::new();
    for _ in 0..WAITERS {
        let b = b.clone();
        waits.push(tokio::spawn(async move {
            b.wait(id, Duration::from_millis(3_500)).await
        }));
    }
    // Parked: each has registered and made its first read.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.core().waiters.waiting(&token) < WAITERS || script_calls(&b) < before + WAITERS as u64 {
        assert!(tokio::time::Instant::now() < give_up, "never all parked");
        tokio::task::yield_now().await;
    }
    let parked = script_calls(&b);
    for w in waits {
        let v = w.await.unwrap().unwrap().unwrap();
        assert_eq!(v.record.state, TaskState::Pending);
    }
    let later = script_calls(&b) - parked;
    // A last read each at the deadline, and at most one re-check per interval
    // (3.5 s / 1 s) between them, with room for reads still finishing.
    assert!(
        later <= WAITERS as u64 + 10,
        "{later} script calls while {WAITERS} waiters were parked"
    );
}
