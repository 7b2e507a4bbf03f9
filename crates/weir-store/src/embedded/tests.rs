//! Embedded-store tests: the conformance suite, plus restart behaviour that only a
//! store with a data directory has.

use super::*;
use crate::conformance::{item, task, WAIT};
use crate::Settle;

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
    c.cache_bytes = 4 * 1024 * 1024;
    c
}

async fn fresh() -> EmbeddedBroker {
    // The directory lives as long as the test process; each test gets its own.
    let dir = tempfile::tempdir().unwrap().keep();
    EmbeddedBroker::open(config(&dir)).unwrap()
}

mod conformance {
    crate::conformance_tests!(super::fresh());
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
    let dir = tempfile::tempdir().unwrap();
    let s = TestStore {
        broker: EmbeddedBroker::open(config(dir.path())).unwrap(),
        _dir: dir,
    };
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
    let dir = tempfile::tempdir().unwrap();
    let s = TestStore {
        broker: EmbeddedBroker::open(config(dir.path())).unwrap(),
        _dir: dir,
    };
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
    b.settle(vec![Settle::Ack {
        id,
        lease_id: l.lease_id,
        result: None,
    }])
    .await
    .unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let s = TestStore {
        broker: EmbeddedBroker::open(config(dir.path())).unwrap(),
        _dir: dir,
    };
    let items = |n: usize| {
        (0..n)
            .map(|i| item(task("g"), &i.to_string()))
            .collect::<Vec<_>>()
    };
    // A running group with one member done, and a finished one.
    let open = s.create_group("gr", items(2), true).await.unwrap();
    let l = s.lease("gr", 1, WAIT).await.unwrap().remove(0);
    s.settle(vec![Settle::Ack {
        id: l.record.id,
        lease_id: l.lease_id,
        result: None,
    }])
    .await
    .unwrap();
    let done = s.create_group("gr2", items(1), true).await.unwrap();
    let l = s.lease("gr2", 1, WAIT).await.unwrap().remove(0);
    s.settle(vec![Settle::Ack {
        id: l.record.id,
        lease_id: l.lease_id,
        result: None,
    }])
    .await
    .unwrap();

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
