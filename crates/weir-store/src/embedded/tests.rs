//! Embedded-store tests: the conformance suite, plus restart behaviour that only a
//! store with a data directory has.

use super::*;
use crate::conformance::{ack, enqueue_ids, first_page, item, kill, task, WAIT};
use crate::{QueueInfo, Settle, StoredKey};
use weir_core::{ConfigPatch, QueueConfig};

struct TestStore {
    broker: EmbeddedBroker,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestStore {
    type Target = EmbeddedBroker;
    fn deref(&self) -> &EmbeddedBroker {
        &self.broker
    }
}

fn config(dir: &std::path::Path) -> EmbeddedConfig {
    let mut c = EmbeddedConfig::new(dir);
    c.lease_grace_ms = 0;
    c.backoff = Backoff {
        base_ms: 2,
        cap_ms: 4,
    };
    c.segment_bytes = super::SEGMENT_BYTES_MIN;
    // Outages in the simulation come in quick succession; don't hold writes back.
    c.outage_hold_ms_max = 0;
    c
}

/// Waits until the store takes writes again after an outage (the writer reopens
/// it in the background).
async fn until_healed(b: &EmbeddedBroker) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.readiness().is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store did not heal: {:?}",
            b.readiness()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn fresh() -> EmbeddedBroker {
    // The directory lives as long as the test process; each test gets its own.
    let dir = tempfile::tempdir().unwrap().keep();
    EmbeddedBroker::open(config(&dir)).unwrap()
}

mod conformance {
    crate::conformance_tests!(super::fresh());
}

/// A store in a fresh directory that lives as long as the `TestStore`.
fn opened() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    TestStore {
        broker: EmbeddedBroker::open(config(dir.path())).unwrap(),
        _dir: dir,
    }
}

async fn reopen(s: TestStore) -> TestStore {
    let dir = s._dir;
    s.broker.close().await.unwrap();
    drop(s.broker);
    let broker = EmbeddedBroker::open(config(dir.path())).unwrap();
    TestStore { broker, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_every_kind_of_task() {
    let s = opened();
    let b: &dyn Broker = &*s;
    // pending, scheduled, completed (with result), dead, idempotency key, active
    let pending = b.enqueue("r", vec![item(task("k"), "1")]).await.unwrap()[0].id;
    let mut later = task("k");
    later.run_at_ms = Some(SystemClock.now_ms() + 3_600_000);
    let scheduled = b.enqueue("r", vec![item(later, "2")]).await.unwrap()[0].id;
    let mut keyed = task("k");
    keyed.idempotency_key = Some("key-1".into());
    let keyed_id = b
        .enqueue("r", vec![item(keyed.clone(), "3")])
        .await
        .unwrap()[0]
        .id;
    let done = b.enqueue("r2", vec![item(task("k"), "4")]).await.unwrap()[0].id;
    let l = b.lease("r2", 1, WAIT).await.unwrap().remove(0);
    b.settle(vec![Settle::Ack {
        id: done,
        lease_id: l.lease_id,
        result: Some(Bytes::from_static(b"{\"r\":1}")),
    }])
    .await
    .unwrap();
    let dead = b.enqueue("r2", vec![item(task("k"), "5")]).await.unwrap()[0].id;
    let l = b.lease("r2", 1, WAIT).await.unwrap().remove(0);
    b.settle(vec![Settle::Fail {
        id: dead,
        lease_id: l.lease_id,
        error: "bad".into(),
        retry: false,
    }])
    .await
    .unwrap();
    let active = b.enqueue("r3", vec![item(task("k"), "6")]).await.unwrap()[0].id;
    let l = b.lease("r3", 1, WAIT).await.unwrap().remove(0);
    assert_eq!(l.record.attempt, 1);

    let s = reopen(s).await;
    let b: &dyn Broker = &*s;
    let st = |id| async move { b.get(id).await.unwrap().unwrap().record };
    assert_eq!(st(pending).await.state, TaskState::Pending);
    assert_eq!(st(scheduled).await.state, TaskState::Scheduled);
    assert_eq!(st(keyed_id).await.state, TaskState::Pending);
    let d = st(done).await;
    assert_eq!(d.state, TaskState::Completed);
    assert_eq!(d.result.as_deref(), Some(&b"{\"r\":1}"[..]));
    assert_eq!(st(dead).await.state, TaskState::Dead);
    // Active at shutdown: pending again, the attempt not burned.
    let a = st(active).await;
    assert_eq!(a.state, TaskState::Pending);
    assert_eq!(a.attempt, 0);
    let again = b
        .enqueue("r", vec![item(keyed, "7")])
        .await
        .unwrap()
        .remove(0);
    assert!(!again.created);
    assert_eq!(again.id, keyed_id);
    let counts = |name: &str| {
        let name = name.to_owned();
        async move {
            b.queues()
                .await
                .unwrap()
                .into_iter()
                .find(|q| q.name == name)
                .unwrap()
                .counts
        }
    };
    let r = counts("r").await;
    assert_eq!(
        (r.get(TaskState::Pending), r.get(TaskState::Scheduled)),
        (2, 1)
    );
    let r2 = counts("r2").await;
    assert_eq!(
        (r2.get(TaskState::Completed), r2.get(TaskState::Dead)),
        (1, 1)
    );
    assert_eq!(counts("r3").await.get(TaskState::Pending), 1);
    // Leasing order survives too.
    let got = b.lease("r", 10, Duration::ZERO).await.unwrap();
    let ids: Vec<_> = got.iter().map(|l| l.record.id).collect();
    assert_eq!(ids, vec![pending, keyed_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requested_while_active_survives_restart_as_canceled() {
    let s = opened();
    let id = s.enqueue("x", vec![item(task("k"), "1")]).await.unwrap()[0].id;
    s.lease("x", 1, WAIT).await.unwrap();
    assert!(s.cancel(id).await.unwrap().record.cancel_requested);
    let s = reopen(s).await;
    assert_eq!(
        s.get(id).await.unwrap().unwrap().record.state,
        TaskState::Canceled
    );
    assert!(s.lease("x", 1, Duration::ZERO).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_finished_tasks_and_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::clock::OffsetClock::default());
    let mut c = config(dir.path());
    c.clock = clock.clone();
    let b = EmbeddedBroker::open(c).unwrap();
    let mut t = task("k");
    t.retention_ms = 1000;
    t.idempotency_key = Some("once".into());
    let id = b.enqueue("ret", vec![item(t.clone(), "1")]).await.unwrap()[0].id;
    let l = b.lease("ret", 1, WAIT).await.unwrap().remove(0);
    ack(&b, id, l.lease_id).await;
    assert!(b.get(id).await.unwrap().is_some());
    clock.advance(10_000);
    // Retention runs in the writer's rounds; an enqueue forces rounds until it ran.
    let mut gone = false;
    for _ in 0..200 {
        b.enqueue("tick", vec![item(task("k"), "0")]).await.unwrap();
        if b.get(id).await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::task::yield_now().await;
        std::thread::yield_now();
        // Retention runs at most once a second of the store's clock.
        clock.advance(1_000);
    }
    assert!(gone, "expired task still readable");
    let q = b
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == "ret")
        .unwrap();
    assert_eq!(q.counts.get(TaskState::Completed), 0);
    // Its idempotency key is free again.
    assert!(b.enqueue("ret", vec![item(t, "2")]).await.unwrap()[0].created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_survive_restart() {
    let s = opened();
    let items = |n: usize| {
        (0..n)
            .map(|i| item(task("g"), &i.to_string()))
            .collect::<Vec<_>>()
    };
    // A running group with one member done, and a finished one.
    let open = s.create_group("gr", items(2), true).await.unwrap();
    let l = s.lease("gr", 1, WAIT).await.unwrap().remove(0);
    ack(&s.broker, l.record.id, l.lease_id).await;
    let done = s.create_group("gr2", items(1), true).await.unwrap();
    let l = s.lease("gr2", 1, WAIT).await.unwrap().remove(0);
    ack(&s.broker, l.record.id, l.lease_id).await;

    let s = reopen(s).await;
    let v = s.group(done.id, Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(v.state, weir_core::GroupState::Completed);
    let v = s.group(open.id, Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(v.state, weir_core::GroupState::Running);
    // The group still tracks its last member after the restart.
    let l = s.lease("gr", 1, WAIT).await.unwrap().remove(0);
    s.settle(vec![Settle::Fail {
        id: l.record.id,
        lease_id: l.lease_id,
        error: "x".into(),
        retry: false,
    }])
    .await
    .unwrap();
    let v = s.group(open.id, WAIT).await.unwrap().unwrap();
    assert_eq!(v.state, weir_core::GroupState::Failed);
    assert!(v.finished_ms.is_some());
}

/// Waits until `n` lease long-polls are registered under `queue` in `parked`.
async fn parked_on(b: &EmbeddedBroker, queue: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.shared.lock().parked.get(queue).map_or(0, |p| p.waiters) != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} waiters never parked on {queue}"
        );
        tokio::task::yield_now().await;
    }
}

async fn names(b: &EmbeddedBroker) -> Vec<String> {
    b.queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect()
}

/// Runs one task through `queue` and lets retention remove it, so the queue exists
/// with every count at zero.
async fn emptied(b: &EmbeddedBroker, clock: &crate::clock::OffsetClock, queue: &str) {
    let mut t = task("k");
    t.retention_ms = 1000;
    let id = b.enqueue(queue, vec![item(t, "1")]).await.unwrap()[0].id;
    let l = b.lease(queue, 1, Duration::ZERO).await.unwrap().remove(0);
    ack(b, id, l.lease_id).await;
    clock.advance(10_000);
    // The writer's timer rounds (every <= 100 ms) run retention; nothing signals it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.get(id).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "never purged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(names(b).await.contains(&queue.to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_on_unknown_queues_do_not_count_toward_queues_max() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.queues_max = 2;
    let b = EmbeddedBroker::open(c).unwrap();
    b.enqueue("a", vec![item(task("k"), "1")]).await.unwrap();
    for name in ["x1", "x2", "x3"] {
        assert!(b.lease(name, 1, Duration::ZERO).await.unwrap().is_empty());
        assert!(b
            .lease(name, 1, Duration::from_millis(2))
            .await
            .unwrap()
            .is_empty());
    }
    b.enqueue("b", vec![item(task("k"), "1")]).await.unwrap();
    assert!(matches!(
        b.enqueue("c", vec![item(task("k"), "1")]).await,
        Err(StoreError::TooManyQueues { limit: 2 })
    ));
    assert_eq!(names(&b).await, ["a", "b"]);
    assert!(b.shared.lock().parked.is_empty(), "long-polls left entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_lease_wakes_on_the_first_enqueue_and_leaves_nothing() {
    let b = fresh().await;
    let lease = |q: &'static str| {
        let b = b.clone();
        tokio::spawn(async move { b.lease(q, 1, WAIT).await })
    };
    let (w1, w2) = (lease("new"), lease("new"));
    parked_on(&b, "new", 2).await;
    assert!(!names(&b).await.contains(&"new".to_owned()));
    let items = (0..2).map(|i| item(task("k"), &i.to_string())).collect();
    b.enqueue("new", items).await.unwrap();
    assert_eq!(w1.await.unwrap().unwrap().len(), 1);
    assert_eq!(w2.await.unwrap().unwrap().len(), 1);
    // A long-poll whose request goes away leaves too.
    let w3 = lease("gone");
    parked_on(&b, "gone", 1).await;
    w3.abort();
    assert!(w3.await.is_err());
    assert!(b.shared.lock().parked.is_empty());
    assert_eq!(names(&b).await, ["new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_names_are_bounded_and_the_overflow_still_wakes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.queues_max = 2;
    let b = EmbeddedBroker::open(c).unwrap();
    let lease = |q: &'static str| {
        let b = b.clone();
        tokio::spawn(async move { b.lease(q, 1, WAIT).await })
    };
    let (w1, w2) = (lease("p1"), lease("p2"));
    parked_on(&b, "p1", 1).await;
    parked_on(&b, "p2", 1).await;
    let w3 = lease("p3");
    // The third name finds the registry full and waits on the overflow notify.
    let deadline = tokio::time::Instant::now() + WAIT;
    while Arc::strong_count(&b.shared.lock().parked_overflow) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "p3 never waited");
        tokio::task::yield_now().await;
    }
    assert_eq!(b.shared.lock().parked.len(), 2);
    let id = b.enqueue("p3", vec![item(task("k"), "3")]).await.unwrap()[0].id;
    assert_eq!(w3.await.unwrap().unwrap()[0].record.id, id);
    // A registered name is woken too (two queues is the limit: p2 is not made).
    b.enqueue("p1", vec![item(task("k"), "1")]).await.unwrap();
    assert_eq!(w1.await.unwrap().unwrap().len(), 1);
    w2.abort();
    assert!(w2.await.is_err());
    assert!(b.shared.lock().parked.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_queue_frees_its_slot_and_stays_deleted_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::clock::OffsetClock::default());
    let mut c = config(dir.path());
    c.clock = clock.clone();
    c.limits.queues_max = 2;
    let s = TestStore {
        broker: EmbeddedBroker::open(c.clone()).unwrap(),
        _dir: dir,
    };
    emptied(&s, &clock, "old").await;
    s.enqueue("b", vec![item(task("k"), "b")]).await.unwrap();
    assert!(matches!(
        s.enqueue("c", vec![item(task("k"), "c")]).await,
        Err(StoreError::TooManyQueues { .. })
    ));
    s.delete_queue("old").await.unwrap();
    s.enqueue("c", vec![item(task("k"), "c")]).await.unwrap();
    // The tombstoned slot was reused: the slot vector did not grow.
    assert_eq!(s.shared.lock().queues.len(), 2);
    let infos = s.queues().await.unwrap();
    let got: Vec<(&str, [u64; 6])> = infos.iter().map(|q| (&q.name[..], q.counts.0)).collect();
    assert_eq!(got, [("b", [0, 1, 0, 0, 0, 0]), ("c", [0, 1, 0, 0, 0, 0])]);
    let s = reopen(s).await;
    assert_eq!(names(&s).await, ["b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_parked_on_a_deleted_queue_keeps_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::clock::OffsetClock::default());
    let mut c = config(dir.path());
    c.clock = clock.clone();
    let b = EmbeddedBroker::open(c).unwrap();
    emptied(&b, &clock, "old").await;
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.lease("old", 1, WAIT).await })
    };
    // It waits on the queue's own notify (the queue exists)...
    let deadline = tokio::time::Instant::now() + WAIT;
    let waiting = || {
        let st = b.shared.lock();
        let q = st.queue_index["old"];
        Arc::strong_count(&st.queues[q as usize].notify) >= 2
    };
    while !waiting() {
        assert!(tokio::time::Instant::now() < deadline, "never waited");
        tokio::task::yield_now().await;
    }
    // ...and after the delete, under the name.
    b.delete_queue("old").await.unwrap();
    parked_on(&b, "old", 1).await;
    assert!(!waiter.is_finished());
    let id = b.enqueue("old", vec![item(task("k"), "2")]).await.unwrap()[0].id;
    assert_eq!(waiter.await.unwrap().unwrap()[0].record.id, id);
    assert!(b.shared.lock().parked.is_empty());
}

/// Model-based simulation: seeded random sequences of enqueue (with priorities),
/// lease, ack, fail, release, cancel, API key create, revoke and use, and restart, checked after every step against
/// a model of what each task's state must be, what the next lease must return,
/// and what the queue counts must say. Time-driven transitions (lease expiry,
/// backoff) are kept out of it with long timeouts and fails without retry, so the
/// run is deterministic for a seed: a failure prints the seed that replays it.
mod simulation {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::simulation::{self as sim, Keys, Tasks, QUEUE, STEPS, STEP_ROLLS};

    /// The shared simulation plus what only this store has: restarts and
    /// injected outages (rolls `STEP_ROLLS..100`).
    async fn run(seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut s = TestStore {
            broker: EmbeddedBroker::open(config(dir.path())).unwrap(),
            _dir: dir,
        };
        let mut model = Tasks::new();
        let mut keys = Keys::new();
        for step in 0..STEPS {
            let active = sim::active(&model);
            let roll = rng.gen_range(0..100);
            match roll {
                r if r < STEP_ROLLS => {
                    sim::step(&*s, &mut rng, &mut model, &mut keys, r, seed, step).await
                }
                90..=94 => {
                    // Restart: active tasks come back pending with their attempt
                    // unspent; those whose cancel was requested end canceled.
                    s = reopen(s).await;
                    for m in model.values_mut() {
                        if m.state == TaskState::Active {
                            m.attempt -= 1;
                            m.lease = None;
                            m.state = if m.cancel_requested {
                                TaskState::Canceled
                            } else {
                                TaskState::Pending
                            };
                        }
                    }
                }
                _ => {
                    // Outage: the next commit fails. The op that hit it changes
                    // nothing, the store heals by itself, and leases survive — but
                    // the lease of a settle that failed is gone: its task is
                    // pending again with its attempt unspent (or canceled, if a
                    // cancel was requested), exactly as after a restart.
                    s.shared
                        .inject_outage
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    if !active.is_empty() && rng.gen_bool(0.5) {
                        let id = active[rng.gen_range(0..active.len())];
                        let m = model.get_mut(&id).unwrap();
                        let res = s
                            .settle(vec![Settle::Ack {
                                id,
                                lease_id: m.lease.unwrap(),
                                result: None,
                            }])
                            .await;
                        assert!(
                            matches!(res, Err(StoreError::Unavailable { .. })),
                            "seed {seed} step {step}: settle in an outage: {res:?}"
                        );
                        m.attempt -= 1;
                        m.lease = None;
                        m.state = if m.cancel_requested {
                            TaskState::Canceled
                        } else {
                            TaskState::Pending
                        };
                    } else {
                        let res = s.enqueue(QUEUE, vec![item(task("k"), "{}")]).await;
                        assert!(
                            matches!(res, Err(StoreError::Unavailable { .. })),
                            "seed {seed} step {step}: enqueue in an outage: {res:?}"
                        );
                    }
                    until_healed(&s).await;
                }
            }
            sim::check(&*s, &model, &keys, seed, step).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_operations_match_the_model() {
        for seed in sim::seeds(12) {
            run(seed).await;
        }
    }
}

/// Tasks the lease path took out to end dead or canceled, when that cannot be
/// written during an outage, go back to pending (else they would sit in no index
/// until a restart); a task the rebuilt state already has pending is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_finalize_puts_its_tasks_back() {
    let b = fresh().await;
    let id = b.enqueue("fin", vec![item(task("k"), "1")]).await.unwrap()[0].id;
    let mut rec = b.shared.record(id).unwrap().unwrap();
    {
        // What the lease path does before it hands a task to the writer to end.
        let mut st = b.shared.lock();
        let q = st.queue_index["fin"];
        assert_eq!(st.queue(q).pending.pop_first(), Some((0, id.0)));
        st.count(q, id.0, Some((TaskState::Pending, 0)), None);
    }
    rec.state = TaskState::Dead;
    writer::requeue(&b.shared, vec![rec.clone()]);
    let pending = |b: &EmbeddedBroker| {
        b.shared.lock().queue_infos()[0]
            .counts
            .get(TaskState::Pending)
    };
    assert_eq!(pending(&b), 1);
    // Already pending again (as after a rebuild): not counted twice.
    writer::requeue(&b.shared, vec![rec]);
    assert_eq!(pending(&b), 1);
    let l = b.lease("fin", 10, Duration::ZERO).await.unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].record.id, id);
}

/// An ack, without a result, of every task in `leased`.
fn acks(leased: &[Leased]) -> Vec<Settle> {
    leased
        .iter()
        .map(|l| Settle::Ack {
            id: l.record.id,
            lease_id: l.lease_id,
            result: None,
        })
        .collect()
}

/// Segment files of the task log in a data directory (the spare being prepared
/// ahead is not one yet).
fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir.join(LOG_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    out.sort();
    out
}

/// Steady enqueue and ack with a short retention writes ten segments' worth, and
/// the log's GC keeps it to a few: segments whose tasks all ended and passed their
/// retention are deleted, and the oldest one, pinned by one long-lived task, has
/// that task copied forward. A restart after the GC has every live task and none
/// of the removed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_enqueue_and_ack_keeps_the_log_bounded_and_gc_loses_nothing_live() {
    const ROUNDS: usize = 40;
    const TASKS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::clock::OffsetClock::default());
    let mut c = config(dir.path());
    c.clock = clock.clone();
    let b = EmbeddedBroker::open(c.clone()).unwrap();
    let pad = format!("\"{}\"", "x".repeat(16 * 1024));
    // A config in the first segment: it pins it too until copied forward.
    let limits = weir_core::ConfigPatch {
        max_in_flight: Some(Some(7)),
        ..weir_core::ConfigPatch::default()
    };
    b.configure("keep", limits).await.unwrap();
    b.put_schedule("kept", "{}".into(), 1).await.unwrap();
    // Pending for the whole run: it pins the first segment until copied forward.
    let keep = b
        .enqueue("keep", vec![item(task("k"), &pad)])
        .await
        .unwrap()[0]
        .id;
    let mut short = task("k");
    short.retention_ms = 1000;
    let mut done = Vec::new();
    for _ in 0..ROUNDS {
        let items = (0..TASKS).map(|_| item(short.clone(), &pad)).collect();
        b.enqueue("steady", items).await.unwrap();
        let leased = b.lease("steady", TASKS, WAIT).await.unwrap();
        assert_eq!(leased.len(), TASKS);
        b.settle(acks(&leased)).await.unwrap();
        done.extend(leased.iter().map(|l| l.record.id));
        // Past their retention; the next rounds purge them and collect.
        clock.advance(2_000);
    }
    // A few more rounds so the last purges and copies run.
    for _ in 0..4 {
        b.enqueue("tick", vec![item(short.clone(), "0")])
            .await
            .unwrap();
        let l = b.lease("tick", 1, WAIT).await.unwrap().remove(0);
        ack(&b, l.record.id, l.lease_id).await;
        clock.advance(2_000);
    }
    let written = (ROUNDS * TASKS * 16 * 1024) as u64;
    assert!(
        written >= 10 * c.segment_bytes,
        "the run writes 10 segments' worth"
    );
    let left = segment_files(dir.path()).len();
    assert!(left <= 3, "{left} segments left after GC");
    b.close().await.unwrap();
    drop(b);

    let b = EmbeddedBroker::open(c).unwrap();
    let kept = b
        .get(keep)
        .await
        .unwrap()
        .expect("the pinned task survives GC");
    assert_eq!(kept.record.state, TaskState::Pending);
    assert_eq!(&kept.payload[..], pad.as_bytes());
    for id in &done {
        assert!(b.get(*id).await.unwrap().is_none(), "{id} came back");
    }
    let l = b.lease("keep", 10, Duration::ZERO).await.unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(&l[0].payload[..], pad.as_bytes());
    let q = b.queues().await.unwrap();
    let config = q.iter().find(|q| q.name == "keep").unwrap().config;
    assert_eq!(config.max_in_flight, Some(7), "the config survives GC");
    assert_eq!(
        b.schedules().await.unwrap().len(),
        1,
        "the schedule survives GC"
    );
    assert!(b
        .lease("steady", 10, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
}

/// A flipped bit in a frame with later rounds after it is corruption, not a torn
/// tail: the store refuses to open, naming the file and the offset, and changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_frame_in_the_middle_of_the_log_is_refused_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let b = EmbeddedBroker::open(c.clone()).unwrap();
    for i in 0..5 {
        b.enqueue("c", vec![item(task("k"), &format!("{{\"i\":{i}}}"))])
            .await
            .unwrap();
    }
    b.close().await.unwrap();
    drop(b);
    let file = segment_files(dir.path()).remove(0);
    let mut bytes = std::fs::read(&file).unwrap();
    // Inside the first frame's body (64-byte segment header, 16-byte frame header).
    bytes[64 + 16 + 20] ^= 0x04;
    std::fs::write(&file, &bytes).unwrap();
    let before = std::fs::read(&file).unwrap();
    let e = EmbeddedBroker::open(c)
        .err()
        .expect("a corrupt log is refused");
    let msg = e.to_string();
    assert!(msg.contains(&*file.to_string_lossy()), "{msg}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "refusing changed the file"
    );
}

/// A data directory of the store's earlier layout (fjall) is refused with what to
/// do, and nothing in it is touched.
#[test]
fn a_data_directory_of_the_earlier_layout_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keyspaces")).unwrap();
    std::fs::write(dir.path().join("version"), b"3").unwrap();
    let e = EmbeddedBroker::open(config(dir.path()))
        .err()
        .expect("refused");
    let msg = e.to_string();
    assert!(msg.contains("earlier embedded store"), "{msg}");
    assert!(
        msg.contains("Drain it with the release that wrote it"),
        "{msg}"
    );
    assert!(!dir.path().join(LOG_DIR).exists(), "nothing was created");
}

/// Two stores on one data directory: the second is refused while the first is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_is_opened_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let b = EmbeddedBroker::open(config(dir.path())).unwrap();
    let e = EmbeddedBroker::open(config(dir.path()))
        .err()
        .expect("refused");
    assert!(
        e.to_string().contains("in use by another weir process"),
        "{e}"
    );
    b.close().await.unwrap();
    drop(b);
    EmbeddedBroker::open(config(dir.path())).unwrap();
}

/// The store on simulated storage (`weir_log::sim`): a random storage call fails
/// (a write with `EIO` or `ENOSPC`, possibly half landed; an fdatasync with `EIO`;
/// the creation of a segment with `EMFILE`), the store goes on as it does (an
/// outage heals, a failed fsync is fatal), then the power goes: unsynced sectors
/// keep their old or new bytes or tear. After a restart every enqueue that was
/// answered is there, and every ack that was answered is completed. A failed
/// commit answered as done, or a torn round taken for a good one, fails this.
/// `WEIR_STORE_CRASH_SEEDS=N` runs more seeds, `WEIR_STORE_CRASH_SEED=S` one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_after_any_storage_fault_keeps_every_acknowledged_change() {
    let seeds: Vec<u64> = match std::env::var("WEIR_STORE_CRASH_SEED") {
        Ok(s) => vec![s.parse().expect("a seed")],
        Err(_) => {
            let n = std::env::var("WEIR_STORE_CRASH_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(24);
            (0..n).collect()
        }
    };
    for seed in seeds {
        crash_run(seed).await;
    }
}

async fn crash_run(seed: u64) {
    use rand::{Rng, SeedableRng};
    use weir_log::sim::{errno, Fault, OpKind, SimStorage};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new().with_torn_sectors(true);
    let mut c = config(dir.path());
    c.storage = Some(Arc::new(sim.clone()));
    let b = EmbeddedBroker::open(c.clone()).unwrap();
    // 2 KiB payloads: a run of 60 batches of 40 fills more than one 4 MiB segment.
    let pad = format!("\"{}\"", "p".repeat(2048));
    let fault = match rng.gen_range(0..4) {
        0 => Fault::once(OpKind::Write, rng.gen_range(1..60), errno::EIO)
            .partial(rng.gen_range(0..8192)),
        1 => Fault::once(OpKind::Write, rng.gen_range(1..60), errno::ENOSPC),
        2 => Fault::once(OpKind::SyncData, rng.gen_range(1..60), errno::EIO),
        _ => Fault::sticky(OpKind::Create, 1, errno::EMFILE),
    };
    sim.inject(fault.clone());
    let mut enqueued: Vec<TaskId> = Vec::new();
    let mut completed: Vec<TaskId> = Vec::new();
    for _ in 0..60 {
        let items = (0..40).map(|_| item(task("k"), &pad)).collect();
        if let Ok(got) = b.enqueue("crash", items).await {
            enqueued.extend(got.iter().map(|e| e.id));
        }
        if let Ok(leased) = b.lease("crash", 20, Duration::ZERO).await {
            if let Ok(res) = b.settle(acks(&leased)).await {
                for (l, r) in leased.iter().zip(res) {
                    if matches!(r, Ok(TaskState::Completed)) {
                        completed.push(l.record.id);
                    }
                }
            }
        }
    }
    // The power goes while the store is up: nothing unsynced may count.
    sim.crash(seed);
    drop(b.close().await);
    drop(b);
    sim.clear_faults();
    let b = EmbeddedBroker::open(c).unwrap_or_else(|e| panic!("seed {seed} ({fault:?}): {e}"));
    for id in &enqueued {
        assert!(
            b.get(*id).await.unwrap().is_some(),
            "seed {seed} ({fault:?}): acknowledged task {id} lost"
        );
    }
    for id in &completed {
        let state = b.get(*id).await.unwrap().map(|v| v.record.state);
        assert_eq!(
            state,
            Some(TaskState::Completed),
            "seed {seed} ({fault:?}): acknowledged ack of {id} lost"
        );
    }
    assert!(
        !enqueued.is_empty(),
        "seed {seed}: nothing was acknowledged"
    );
    b.close().await.unwrap();
}

fn queue_config(infos: &[QueueInfo], name: &str) -> Option<QueueConfig> {
    infos.iter().find(|q| q.name == name).map(|q| q.config)
}

/// Configs and schedules are durable: kept over a restart (a queue with a config
/// and no task too), gone after their deletion or once every setting is cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_configs_survive_a_restart_and_deletion_ends_them() {
    let s = opened();
    let set = ConfigPatch {
        rate_per_sec: Some(Some(2.5)),
        burst: Some(Some(3)),
        max_in_flight: Some(Some(4)),
        max_pending: Some(Some(5)),
        paused: Some(true),
    };
    let full = s.configure("empty", set).await.unwrap();
    s.configure("busy", set).await.unwrap();
    one_task(&s, "busy").await;
    s.configure("doomed", set).await.unwrap();
    s.configure("cleared", set).await.unwrap();
    let clear = ConfigPatch {
        rate_per_sec: Some(None),
        burst: Some(None),
        max_in_flight: Some(None),
        max_pending: Some(None),
        paused: Some(false),
    };
    s.configure("cleared", clear).await.unwrap();
    s.delete_queue("doomed").await.unwrap();
    s.put_schedule("kept", "{}".into(), 10).await.unwrap();
    s.schedule_ran("kept", 20, Some((21, TaskId(5))))
        .await
        .unwrap();
    s.put_schedule("dropped", "{}".into(), 10).await.unwrap();
    s.delete_schedule("dropped").await.unwrap();
    let s = reopen(s).await;
    let sched = s.schedules().await.unwrap();
    assert_eq!(sched.len(), 1, "{sched:?}");
    assert_eq!(
        (
            sched[0].name.as_str(),
            sched[0].last_tick_ms,
            sched[0].last_task_id
        ),
        ("kept", 20, Some(TaskId(5)))
    );
    let q = s.queues().await.unwrap();
    assert_eq!(queue_config(&q, "empty"), Some(full));
    assert_eq!(queue_config(&q, "busy"), Some(full));
    assert_eq!(queue_config(&q, "doomed"), None, "deleted");
    assert_eq!(
        queue_config(&q, "cleared"),
        None,
        "no task and no setting: no queue"
    );
    // And it still applies: paused leases nothing.
    assert!(s.lease("busy", 1, Duration::ZERO).await.unwrap().is_empty());
    // A queue deleted after a restart stays deleted after the next.
    s.delete_queue("empty").await.unwrap();
    let s = reopen(s).await;
    assert_eq!(queue_config(&s.queues().await.unwrap(), "empty"), None);
}

async fn one_task(b: &EmbeddedBroker, queue: &str) -> TaskId {
    b.enqueue(queue, vec![item(task("k"), "1")]).await.unwrap()[0].id
}

/// The rate over a simulated minute on an injected clock: 50/s with a burst of
/// 10, a taker asking for 100 every 5 ms gets 10 + 50 * 60 tasks (within 5%).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_of_50_per_second_holds_over_a_simulated_minute() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::clock::OffsetClock::default());
    let mut c = config(dir.path());
    c.clock = clock.clone();
    let b = EmbeddedBroker::open(c).unwrap();
    let limit = ConfigPatch {
        rate_per_sec: Some(Some(50.0)),
        burst: Some(Some(10)),
        ..ConfigPatch::default()
    };
    b.configure("r", limit).await.unwrap();
    for _ in 0..4 {
        let items = (0..1000).map(|i| item(task("k"), &i.to_string())).collect();
        b.enqueue("r", items).await.unwrap();
    }
    // The real clock moves too while this runs (a few hundred ms at most), so the
    // simulated time is read from the store's clock, not counted.
    let start = clock.now_ms();
    let mut got = 0usize;
    let mut per_second = vec![0usize; 61];
    while clock.now_ms() - start < 60_000 {
        let n = b.lease("r", 100, Duration::ZERO).await.unwrap().len();
        got += n;
        per_second[((clock.now_ms() - start) / 1000) as usize] += n;
        clock.advance(5);
    }
    let span = (clock.now_ms() - start) as f64 / 1000.0;
    let want = 10.0 + 50.0 * span;
    assert!(
        (got as f64 - want).abs() <= want * 0.05,
        "{got} tasks in {span} s, want {want}"
    );
    // Never more than a second's worth plus the burst in any one second.
    assert!(per_second.iter().all(|&n| n <= 60), "{per_second:?}");
}

/// `schedules_max` counts schedules, not puts: a replacement or a put after a
/// delete fits; a new one past the limit is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.schedules_max = 2;
    let b = EmbeddedBroker::open(c).unwrap();
    crate::conformance::schedules_are_capped_at_two(&b).await;
}

/// `keys_max` counts keys, not creates (`conformance::api_keys_are_capped_at_two`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.keys_max = 2;
    let b = EmbeddedBroker::open(c).unwrap();
    crate::conformance::api_keys_are_capped_at_two(&b).await;
}

/// API keys are in the log: a restart rebuilds them from their frames, the latest
/// of each id winning (a key's last use, a revoke), and a second restart agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_survive_a_restart() {
    let s = opened();
    crate::conformance::api_keys_written_before_a_restart(&*s).await;
    let s = reopen(s).await;
    crate::conformance::api_keys_as_written_before_the_restart(&*s).await;
    let s = reopen(s).await;
    crate::conformance::api_keys_as_written_before_the_restart(&*s).await;
}

/// The log's GC and API keys: a live key's latest frame is copied forward out of
/// the oldest segment, and a revoked key's frames (and the frames a live key's
/// later use replaced) hold nothing, so the segment is deleted once its tasks
/// are gone. Were a key frame left counted, the oldest segment, and every one
/// after it, would stay. The live key survives with its last use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_copies_a_live_key_forward_and_drops_a_revoked_ones_frames() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::clock::OffsetClock::default());
    let mut c = config(dir.path());
    c.clock = clock.clone();
    let b = EmbeddedBroker::open(c.clone()).unwrap();
    b.create_key("live", r#"{"v":1}"#).await.unwrap();
    b.key_used("live", 5).await.unwrap();
    b.create_key("gone", "{}").await.unwrap();
    b.key_used("gone", 6).await.unwrap();
    assert!(b.delete_key("gone").await.unwrap());
    let first = segment_files(dir.path()).remove(0);
    // Rounds of tasks that end and pass their retention, until the GC has
    // collected the oldest segment (a copy forward of the live key, then the
    // delete): a bounded number of rounds, not a wait.
    let pad = format!("\"{}\"", "x".repeat(16 * 1024));
    let mut short = task("k");
    short.retention_ms = 1000;
    let mut rounds = 0;
    while first.exists() {
        rounds += 1;
        assert!(rounds <= 64, "the oldest segment was never collected");
        let items = (0..64).map(|_| item(short.clone(), &pad)).collect();
        b.enqueue("gc", items).await.unwrap();
        let leased = b.lease("gc", 64, WAIT).await.unwrap();
        b.settle(acks(&leased)).await.unwrap();
        clock.advance(2_000);
    }
    b.close().await.unwrap();
    drop(b);

    let b = EmbeddedBroker::open(c).unwrap();
    let live = StoredKey {
        id: "live".into(),
        record: r#"{"v":1}"#.into(),
        last_used_ms: Some(5),
    };
    assert_eq!(b.keys().await.unwrap(), [live]);
    assert!(b.key("gone").await.unwrap().is_none());
}

/// An operator's retries and deletes are in the log: after a restart, a retried
/// dead or canceled task is pending (its old state and retention gone), and a
/// deleted dead or completed task is gone with its idempotency key. Without the
/// reopen frame the retried tasks come back dead and canceled; without dead tasks
/// in the purge index the deleted dead task comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_deletes_survive_a_restart() {
    let s = opened();
    let b: &dyn Broker = &*s;
    let mut die = task("k");
    die.max_attempts = 1;
    let mut keyed = die.clone();
    keyed.idempotency_key = Some("gone".into());
    let items = vec![item(die.clone(), "1"), item(keyed, "2"), item(die, "3")];
    let ids = enqueue_ids(b, "ad", items).await;
    for &id in &ids {
        kill(b, "ad", id).await;
    }
    let canceled = b.enqueue("ad", vec![item(task("k"), "4")]).await.unwrap()[0].id;
    b.cancel(canceled).await.unwrap();
    let (retried, deleted, kept) = (ids[0], ids[1], ids[2]);
    let out = b.retry(vec![retried, canceled], Scope::ANY).await.unwrap();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let out = b.delete_tasks(vec![deleted], Scope::ANY).await.unwrap();
    assert!(out[0].is_ok());

    let s = reopen(s).await;
    let b: &dyn Broker = &*s;
    let counts = b.queues().await.unwrap()[0].counts;
    assert_eq!(counts.get(TaskState::Pending), 2);
    assert_eq!(counts.get(TaskState::Dead), 1);
    assert_eq!(counts.get(TaskState::Canceled), 0);
    assert_eq!(b.get(retried).await.unwrap().unwrap().record.attempt, 0);
    assert!(b.get(deleted).await.unwrap().is_none());
    assert!(b.find_key("ad", "gone").await.unwrap().is_none());
    let dead = first_page(b, "ad", TaskState::Dead).await;
    assert_eq!(dead, vec![kept]);
    let pending = first_page(b, "ad", TaskState::Pending).await;
    assert_eq!(pending, vec![retried, canceled]);
    // And a second restart (the frames read again, in order) agrees.
    let s = reopen(s).await;
    let b: &dyn Broker = &*s;
    assert_eq!(b.queues().await.unwrap()[0].counts, counts);
}
