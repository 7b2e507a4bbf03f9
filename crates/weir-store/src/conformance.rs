//! The backend conformance suite: behaviour every `Broker` must show, written once
//! and run against every store with `conformance_tests!`. A backend under test must
//! be configured with a lease grace of 0 ms and a retry backoff of at most a few
//! milliseconds, so that expiries and retries happen within a test's wait.

use std::time::Duration;

use bytes::Bytes;
use weir_core::{ConfigPatch, GroupState, NewTask, QueueConfig, TaskId, TaskState};

use crate::{Broker, EnqueueTask, LeaseId, Scope, Settle, StoreError, StoredKey, TaskPage};

/// Long enough that a correct backend never hits it; a hang fails the test instead
/// of passing it.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn task(kind: &str) -> NewTask {
    NewTask {
        kind: kind.into(),
        priority: 0,
        run_at_ms: None,
        delay_ms: 0,
        max_attempts: 3,
        timeout_ms: 30_000,
        deadline_ms: None,
        idempotency_key: None,
        retention_ms: 3_600_000,
        trace: None,
    }
}

/// Acks `id` under `lease_id` without a result (the call must succeed; the ack
/// itself may be refused, which the caller checks if it matters).
pub async fn ack(b: &(impl Broker + ?Sized), id: TaskId, lease_id: LeaseId) {
    b.settle(vec![Settle::Ack {
        id,
        lease_id,
        result: None,
    }])
    .await
    .unwrap();
}

/// Enqueues `items` into `queue` and returns their ids, in order.
pub async fn enqueue_ids(
    b: &(impl Broker + ?Sized),
    queue: &str,
    items: Vec<EnqueueTask>,
) -> Vec<TaskId> {
    let out = b.enqueue(queue, items).await.unwrap();
    out.iter().map(|e| e.id).collect()
}

pub fn item(task: NewTask, payload: &str) -> EnqueueTask {
    EnqueueTask {
        task,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

async fn one(b: &dyn Broker, queue: &str, t: NewTask, payload: &str) -> TaskId {
    let out = b.enqueue(queue, vec![item(t, payload)]).await.unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].created);
    out[0].id
}

async fn state(b: &dyn Broker, id: TaskId) -> TaskState {
    b.get(id).await.unwrap().expect("task exists").record.state
}

fn now_ms() -> u64 {
    crate::clock::Clock::now_ms(&crate::SystemClock)
}

pub async fn enqueue_get_lease_ack(b: &dyn Broker) {
    let id = one(b, "c1", task("email"), r#"{"to":"a@b"}"#).await;
    let v = b.get(id).await.unwrap().unwrap();
    assert_eq!(v.record.state, TaskState::Pending);
    assert_eq!(&v.payload[..], br#"{"to":"a@b"}"#);
    assert_eq!(v.record.kind, "email");
    assert_eq!(v.record.attempt, 0);

    let leased = b.lease("c1", 10, Duration::ZERO).await.unwrap();
    assert_eq!(leased.len(), 1);
    let l = &leased[0];
    assert_eq!(l.record.id, id);
    assert_eq!(l.record.attempt, 1);
    assert_eq!(&l.payload[..], br#"{"to":"a@b"}"#);
    assert_eq!(state(b, id).await, TaskState::Active);
    assert!(b.lease("c1", 10, Duration::ZERO).await.unwrap().is_empty());

    let out = b
        .settle(vec![Settle::Ack {
            id,
            lease_id: l.lease_id,
            result: Some(Bytes::from_static(b"42")),
        }])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &TaskState::Completed);
    let v = b.get(id).await.unwrap().unwrap();
    assert_eq!(v.record.state, TaskState::Completed);
    assert_eq!(v.record.result.as_deref(), Some(&b"42"[..]));
    assert!(v.record.finished_ms.is_some());

    let q = b
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == "c1")
        .unwrap();
    assert_eq!(q.counts.get(TaskState::Completed), 1);
    assert_eq!(q.counts.get(TaskState::Pending), 0);
    assert_eq!(q.counts.get(TaskState::Active), 0);
}

pub async fn unknown_task_is_none(b: &dyn Broker) {
    let id = TaskId::new(1, 1);
    assert!(b.get(id).await.unwrap().is_none());
    assert!(matches!(b.cancel(id).await, Err(StoreError::NotFound)));
}

pub async fn priority_then_fifo(b: &dyn Broker) {
    let mut ids = Vec::new();
    for (i, p) in [0, 5, 0, 5, -1].into_iter().enumerate() {
        let mut t = task("k");
        t.priority = p;
        ids.push(one(b, "c2", t, &i.to_string()).await);
    }
    let got: Vec<TaskId> = b
        .lease("c2", 10, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.record.id)
        .collect();
    assert_eq!(got, vec![ids[1], ids[3], ids[0], ids[2], ids[4]]);
}

pub async fn lease_respects_max(b: &dyn Broker) {
    let items = (0..7).map(|i| item(task("k"), &i.to_string())).collect();
    assert_eq!(b.enqueue("c3", items).await.unwrap().len(), 7);
    assert_eq!(b.lease("c3", 3, Duration::ZERO).await.unwrap().len(), 3);
    assert_eq!(b.lease("c3", 10, Duration::ZERO).await.unwrap().len(), 4);
}

pub async fn long_poll_lease_wakes_on_enqueue<B: Broker + Clone>(b: B) {
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.lease("c4", 1, WAIT).await })
    };
    // Whether the lease is already waiting or not, it must get this task well
    // before its wait runs out.
    let started = tokio::time::Instant::now();
    let id = one(&b, "c4", task("k"), "1").await;
    let leased = waiter.await.unwrap().unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].record.id, id);
    assert!(started.elapsed() < WAIT);
}

pub async fn stale_lease_is_refused(b: &dyn Broker) {
    let id = one(b, "c5", task("k"), "1").await;
    let l = b.lease("c5", 1, Duration::ZERO).await.unwrap().remove(0);
    let wrong = crate::LeaseId(l.lease_id.0.wrapping_add(1));
    let out = b
        .settle(vec![Settle::Ack {
            id,
            lease_id: wrong,
            result: None,
        }])
        .await
        .unwrap();
    assert!(matches!(out[0], Err(StoreError::StaleLease)));
    assert!(matches!(
        b.heartbeat(id, wrong).await,
        Err(StoreError::StaleLease)
    ));
    assert!(matches!(
        b.release(id, wrong).await,
        Err(StoreError::StaleLease)
    ));
    assert_eq!(state(b, id).await, TaskState::Active);
    // The right lease still works, once; after that it is stale too.
    let hb = b.heartbeat(id, l.lease_id).await.unwrap();
    assert!(hb.lease_expires_ms >= l.lease_expires_ms);
    assert!(!hb.cancel_requested);
    let out = b
        .settle(vec![Settle::Ack {
            id,
            lease_id: l.lease_id,
            result: None,
        }])
        .await
        .unwrap();
    assert!(out[0].is_ok());
    let out = b
        .settle(vec![Settle::Ack {
            id,
            lease_id: l.lease_id,
            result: None,
        }])
        .await
        .unwrap();
    assert!(matches!(out[0], Err(StoreError::StaleLease)));
}

pub async fn fail_retries_then_dies(b: &dyn Broker) {
    let mut t = task("k");
    t.max_attempts = 2;
    // The payload outlives every change of the record: a store that kept it with the
    // latest record only (or pointed at an update's copy) would lose it here.
    let payload = r#"{"keep":"me"}"#;
    let id = one(b, "c6", t, payload).await;
    let l = b.lease("c6", 1, Duration::ZERO).await.unwrap().remove(0);
    let out = b
        .settle(vec![Settle::Fail {
            id,
            lease_id: l.lease_id,
            error: "boom".into(),
            retry: true,
        }])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &TaskState::Scheduled);
    // Backoff is a few ms in the harness: a waiting lease gets the retry.
    let l2 = b.lease("c6", 1, WAIT).await.unwrap().remove(0);
    assert_eq!(l2.record.id, id);
    assert_eq!(l2.record.attempt, 2);
    assert_eq!(&l2.payload[..], payload.as_bytes(), "after one update");
    let out = b
        .settle(vec![Settle::Fail {
            id,
            lease_id: l2.lease_id,
            error: "again".into(),
            retry: true,
        }])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &TaskState::Dead);
    let v = b.get(id).await.unwrap().unwrap();
    assert_eq!(v.record.state, TaskState::Dead);
    assert_eq!(v.record.last_error.as_deref(), Some("again"));
    assert_eq!(v.record.attempt, 2);
    assert_eq!(&v.payload[..], payload.as_bytes(), "after two updates");
}

pub async fn fail_without_retry_dies(b: &dyn Broker) {
    let id = one(b, "c7", task("k"), "1").await;
    let l = b.lease("c7", 1, Duration::ZERO).await.unwrap().remove(0);
    let out = b
        .settle(vec![Settle::Fail {
            id,
            lease_id: l.lease_id,
            error: "no".into(),
            retry: false,
        }])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &TaskState::Dead);
}

pub async fn lease_expiry_requeues_then_dies(b: &dyn Broker) {
    let mut t = task("k");
    t.max_attempts = 2;
    t.timeout_ms = 20;
    let id = one(b, "c8", t, "1").await;
    let l1 = b.lease("c8", 1, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(l1.record.attempt, 1);
    // Never acked: after its lease runs out the task is leased again.
    let l2 = b.lease("c8", 1, WAIT).await.unwrap().remove(0);
    assert_eq!(l2.record.id, id);
    assert_eq!(l2.record.attempt, 2);
    // The first lease is stale now.
    let out = b
        .settle(vec![Settle::Ack {
            id,
            lease_id: l1.lease_id,
            result: None,
        }])
        .await
        .unwrap();
    assert!(matches!(out[0], Err(StoreError::StaleLease)));
    // Out of attempts after the second expiry: dead.
    let v = b.wait(id, WAIT).await.unwrap().unwrap();
    assert_eq!(v.record.state, TaskState::Dead);
    assert_eq!(v.record.attempt, 2);
}

pub async fn release_does_not_count(b: &dyn Broker) {
    let mut t = task("k");
    t.max_attempts = 1;
    let id = one(b, "c9", t, "1").await;
    let l = b.lease("c9", 1, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(b.release(id, l.lease_id).await.unwrap(), TaskState::Pending);
    let v = b.get(id).await.unwrap().unwrap();
    assert_eq!(v.record.state, TaskState::Pending);
    assert_eq!(v.record.attempt, 0);
    let l = b.lease("c9", 1, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(l.record.attempt, 1);
}

pub async fn cancel_queued_and_active(b: &dyn Broker) {
    let queued = one(b, "c10", task("k"), "1").await;
    let mut later = task("k");
    later.run_at_ms = Some(now_ms() + 3_600_000);
    let scheduled = one(b, "c10", later, "2").await;
    assert_eq!(state(b, scheduled).await, TaskState::Scheduled);
    assert_eq!(
        b.cancel(scheduled).await.unwrap().record.state,
        TaskState::Canceled
    );

    let l = b.lease("c10", 1, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(l.record.id, queued);
    let v = b.cancel(queued).await.unwrap();
    assert_eq!(v.record.state, TaskState::Active);
    assert!(v.record.cancel_requested);
    assert!(
        b.heartbeat(queued, l.lease_id)
            .await
            .unwrap()
            .cancel_requested
    );
    // Whatever the worker reports, the task ends canceled and is not retried.
    let out = b
        .settle(vec![Settle::Fail {
            id: queued,
            lease_id: l.lease_id,
            error: "stopped".into(),
            retry: true,
        }])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &TaskState::Canceled);
    assert_eq!(state(b, queued).await, TaskState::Canceled);
    assert!(matches!(
        b.cancel(queued).await,
        Err(StoreError::Conflict(
            weir_core::machine::TransitionError::Terminal(TaskState::Canceled)
        ))
    ));
    assert!(b.lease("c10", 1, Duration::ZERO).await.unwrap().is_empty());
}

pub async fn idempotency_key_dedupes(b: &dyn Broker) {
    let mut t = task("k");
    t.idempotency_key = Some("order-1".into());
    let first = b
        .enqueue("c11", vec![item(t.clone(), "1")])
        .await
        .unwrap()
        .remove(0);
    assert!(first.created);
    let again = b
        .enqueue("c11", vec![item(t.clone(), "2")])
        .await
        .unwrap()
        .remove(0);
    assert!(!again.created);
    assert_eq!(again.id, first.id);
    // The same key in one batch makes one task.
    let mut t2 = task("k");
    t2.idempotency_key = Some("order-2".into());
    let out = b
        .enqueue("c11", vec![item(t2.clone(), "1"), item(t2, "2")])
        .await
        .unwrap();
    assert_eq!(out[0].id, out[1].id);
    assert!(out[0].created && !out[1].created);
    // Keys are per queue.
    let other = b
        .enqueue("c11-other", vec![item(t, "1")])
        .await
        .unwrap()
        .remove(0);
    assert!(other.created);
    assert_ne!(other.id, first.id);
    let q = b
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == "c11")
        .unwrap();
    assert_eq!(q.counts.get(TaskState::Pending), 2);
}

pub async fn delayed_task_waits_for_run_at(b: &dyn Broker) {
    let mut t = task("k");
    t.run_at_ms = Some(now_ms() + 50);
    let id = one(b, "c12", t, "1").await;
    assert_eq!(state(b, id).await, TaskState::Scheduled);
    let l = b.lease("c12", 1, WAIT).await.unwrap();
    assert_eq!(l.len(), 1);
    assert!(now_ms() >= l[0].record.run_at_ms);
}

pub async fn deadline_passed_is_dead_not_started(b: &dyn Broker) {
    let mut t = task("k");
    t.deadline_ms = Some(now_ms().saturating_sub(1));
    let id = one(b, "c13", t, "1").await;
    assert!(b.lease("c13", 1, Duration::ZERO).await.unwrap().is_empty());
    let v = b.wait(id, WAIT).await.unwrap().unwrap();
    assert_eq!(v.record.state, TaskState::Dead);
    assert_eq!(
        v.record.last_error.as_deref(),
        Some(weir_core::machine::DEADLINE_ERROR)
    );
}

pub async fn wait_wakes_when_terminal<B: Broker + Clone>(b: B) {
    let id = one(&b, "c14", task("k"), "1").await;
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.wait(id, WAIT).await })
    };
    let l = b.lease("c14", 1, Duration::ZERO).await.unwrap().remove(0);
    b.settle(vec![Settle::Ack {
        id,
        lease_id: l.lease_id,
        result: Some(Bytes::from_static(b"\"ok\"")),
    }])
    .await
    .unwrap();
    let v = waiter.await.unwrap().unwrap().unwrap();
    assert_eq!(v.record.state, TaskState::Completed);
    // A wait on a task that does not end returns its current view after the wait.
    let id2 = one(&b, "c14", task("k"), "2").await;
    let v = b
        .wait(id2, Duration::from_millis(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.record.state, TaskState::Pending);
}

pub async fn batch_settle_reports_each(b: &dyn Broker) {
    let items = (0..3).map(|i| item(task("k"), &i.to_string())).collect();
    b.enqueue("c15", items).await.unwrap();
    let ls = b.lease("c15", 3, Duration::ZERO).await.unwrap();
    let out = b
        .settle(vec![
            Settle::Ack {
                id: ls[0].record.id,
                lease_id: ls[0].lease_id,
                result: None,
            },
            Settle::Fail {
                id: ls[1].record.id,
                lease_id: ls[1].lease_id,
                error: "x".into(),
                retry: false,
            },
            Settle::Ack {
                id: ls[2].record.id,
                lease_id: crate::LeaseId(0),
                result: None,
            },
        ])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &TaskState::Completed);
    assert_eq!(out[1].as_ref().unwrap(), &TaskState::Dead);
    assert!(matches!(out[2], Err(StoreError::StaleLease)));
}

pub async fn bad_queue_name_changes_nothing(b: &dyn Broker) {
    assert!(matches!(
        b.enqueue("bad name", vec![item(task("k"), "1")]).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(b
        .queues()
        .await
        .unwrap()
        .iter()
        .all(|q| q.name != "bad name"));
}

fn group_items(n: usize) -> Vec<EnqueueTask> {
    (0..n).map(|i| item(task("g"), &i.to_string())).collect()
}

pub async fn group_completes_with_results_in_order(b: &dyn Broker) {
    let g = b.create_group("g1", group_items(3), true).await.unwrap();
    assert_eq!(g.task_ids.len(), 3);
    let v = b.group(g.id, Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(v.state, GroupState::Running);
    assert!(v.tasks.iter().all(|t| t.group == Some(g.id)));
    let ls = b.lease("g1", 10, Duration::ZERO).await.unwrap();
    assert_eq!(ls.len(), 3);
    // Ack in reverse order: the group still lists members in the order given.
    let acks = ls
        .iter()
        .rev()
        .map(|l| Settle::Ack {
            id: l.record.id,
            lease_id: l.lease_id,
            result: Some(l.payload.clone()),
        })
        .collect();
    b.settle(acks).await.unwrap();
    let v = b.group(g.id, WAIT).await.unwrap().unwrap();
    assert_eq!(v.state, GroupState::Completed);
    assert!(v.finished_ms.is_some());
    let ids: Vec<TaskId> = v.tasks.iter().map(|t| t.id).collect();
    assert_eq!(ids, g.task_ids);
    let results: Vec<&[u8]> = v
        .tasks
        .iter()
        .map(|t| t.result.as_deref().unwrap())
        .collect();
    assert_eq!(results, vec![&b"0"[..], b"1", b"2"]);
}

pub async fn group_fail_fast_cancels_the_rest(b: &dyn Broker) {
    let g = b.create_group("g2", group_items(4), true).await.unwrap();
    // Two members run; two stay queued.
    let ls = b.lease("g2", 2, Duration::ZERO).await.unwrap();
    assert_eq!(ls.len(), 2);
    let (doomed, running) = (&ls[0], &ls[1]);
    let out = b
        .settle(vec![Settle::Fail {
            id: doomed.record.id,
            lease_id: doomed.lease_id,
            error: "fatal".into(),
            retry: false,
        }])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &TaskState::Dead);
    let v = b.group(g.id, WAIT).await.unwrap().unwrap();
    assert_eq!(v.state, GroupState::Failed);
    for t in &v.tasks {
        let expect = if t.id == doomed.record.id {
            TaskState::Dead
        } else if t.id == running.record.id {
            TaskState::Active
        } else {
            TaskState::Canceled
        };
        assert_eq!(t.state, expect, "{}", t.id);
    }
    // The running member learns of it on its heartbeat, and ends canceled whatever
    // its worker reports.
    assert!(
        b.heartbeat(running.record.id, running.lease_id)
            .await
            .unwrap()
            .cancel_requested
    );
    let out = b
        .settle(vec![Settle::Ack {
            id: running.record.id,
            lease_id: running.lease_id,
            result: None,
        }])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &TaskState::Canceled);
    assert!(b.lease("g2", 10, Duration::ZERO).await.unwrap().is_empty());
    let v = b.group(g.id, Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(v.state, GroupState::Failed);
    assert!(v.finished_ms.is_some());
}

pub async fn group_without_fail_fast_runs_everything(b: &dyn Broker) {
    let g = b.create_group("g3", group_items(3), false).await.unwrap();
    let ls = b.lease("g3", 3, Duration::ZERO).await.unwrap();
    b.settle(vec![Settle::Fail {
        id: ls[0].record.id,
        lease_id: ls[0].lease_id,
        error: "bad".into(),
        retry: false,
    }])
    .await
    .unwrap();
    let v = b.group(g.id, Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(v.state, GroupState::Running);
    b.settle(
        ls[1..]
            .iter()
            .map(|l| Settle::Ack {
                id: l.record.id,
                lease_id: l.lease_id,
                result: None,
            })
            .collect(),
    )
    .await
    .unwrap();
    let v = b.group(g.id, WAIT).await.unwrap().unwrap();
    assert_eq!(v.state, GroupState::Failed);
    let states: Vec<TaskState> = v.tasks.iter().map(|t| t.state).collect();
    assert_eq!(
        states
            .iter()
            .filter(|s| **s == TaskState::Completed)
            .count(),
        2
    );
    assert_eq!(states.iter().filter(|s| **s == TaskState::Dead).count(), 1);
}

pub async fn group_cancel_cancels_members(b: &dyn Broker) {
    let g = b.create_group("g4", group_items(3), false).await.unwrap();
    let l = b.lease("g4", 1, Duration::ZERO).await.unwrap().remove(0);
    let v = b.cancel_group(g.id).await.unwrap();
    assert_eq!(v.state, GroupState::Canceled);
    let active: Vec<_> = v
        .tasks
        .iter()
        .filter(|t| t.state == TaskState::Active)
        .collect();
    assert_eq!(active.len(), 1);
    assert!(active[0].cancel_requested);
    assert_eq!(
        v.tasks
            .iter()
            .filter(|t| t.state == TaskState::Canceled)
            .count(),
        2
    );
    assert!(matches!(
        b.cancel_group(g.id).await,
        Err(StoreError::GroupTerminal(GroupState::Canceled))
    ));
    b.settle(vec![Settle::Fail {
        id: l.record.id,
        lease_id: l.lease_id,
        error: "stopped".into(),
        retry: true,
    }])
    .await
    .unwrap();
    let v = b.group(g.id, Duration::ZERO).await.unwrap().unwrap();
    assert!(v.tasks.iter().all(|t| t.state == TaskState::Canceled));
    assert!(v.finished_ms.is_some());
    assert!(b
        .group(TaskId::new(1, 1), Duration::ZERO)
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        b.cancel_group(TaskId::new(1, 1)).await,
        Err(StoreError::GroupNotFound)
    ));
}

pub async fn group_member_retried_after_fail_fast_is_canceled(b: &dyn Broker) {
    // A member whose failure is retried, in a group that fails meanwhile, must not run again.
    let g = b.create_group("g5", group_items(2), true).await.unwrap();
    let ls = b.lease("g5", 2, Duration::ZERO).await.unwrap();
    b.settle(vec![
        Settle::Fail {
            id: ls[0].record.id,
            lease_id: ls[0].lease_id,
            error: "fatal".into(),
            retry: false,
        },
        Settle::Fail {
            id: ls[1].record.id,
            lease_id: ls[1].lease_id,
            error: "flaky".into(),
            retry: true,
        },
    ])
    .await
    .unwrap();
    let v = b.group(g.id, WAIT).await.unwrap().unwrap();
    assert_eq!(v.state, GroupState::Failed);
    assert!(b
        .lease("g5", 10, Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty());
    let v = b.wait(ls[1].record.id, WAIT).await.unwrap().unwrap();
    assert_eq!(v.record.state, TaskState::Canceled);
}

pub async fn watch_returns_when_a_cancel_is_requested<B: Broker + Clone>(b: B) {
    let id = one(&b, "c16", task("k"), "1").await;
    let l = b.lease("c16", 1, Duration::ZERO).await.unwrap().remove(0);
    // Nothing happens: the watch beats, waits its time, beats again.
    let hb = b
        .watch(id, l.lease_id, Duration::from_millis(5))
        .await
        .unwrap();
    assert!(!hb.cancel_requested);
    // A GET long-poll and a watch are parked when the cancel comes.
    let watcher = {
        let b = b.clone();
        tokio::spawn(async move { b.watch(id, l.lease_id, WAIT).await })
    };
    let getter = {
        let b = b.clone();
        tokio::spawn(async move { b.wait(id, WAIT).await })
    };
    let started = tokio::time::Instant::now();
    b.cancel(id).await.unwrap();
    let hb = watcher.await.unwrap().unwrap();
    assert!(hb.cancel_requested);
    assert!(started.elapsed() < WAIT, "the watch waited out its time");
    // The GET waits for the end, not for the cancel request.
    ack(&b, id, l.lease_id).await;
    let v = getter.await.unwrap().unwrap().unwrap();
    assert_eq!(v.record.state, TaskState::Canceled);
    // A watch on a stale lease is refused like a heartbeat.
    assert!(matches!(
        b.watch(id, l.lease_id, WAIT).await,
        Err(StoreError::StaleLease)
    ));
}

async fn queue_names(b: &dyn Broker) -> Vec<String> {
    b.queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect()
}

pub async fn lease_on_unknown_queue_creates_nothing(b: &dyn Broker) {
    assert!(b.lease("u1", 10, Duration::ZERO).await.unwrap().is_empty());
    assert!(b
        .lease_for("u1", 10, Duration::from_millis(5), Some("w"))
        .await
        .unwrap()
        .is_empty());
    assert!(!queue_names(b).await.contains(&"u1".to_owned()));
    assert!(matches!(
        b.delete_queue("u1").await,
        Err(StoreError::QueueNotFound)
    ));
}

pub async fn long_poll_lease_on_a_new_queue_wakes_on_its_first_enqueue<B: Broker + Clone>(b: B) {
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.lease("u2", 1, WAIT).await })
    };
    // Waiting (or about to) creates nothing.
    assert!(!queue_names(&b).await.contains(&"u2".to_owned()));
    let started = tokio::time::Instant::now();
    let id = one(&b, "u2", task("k"), "1").await;
    let leased = waiter.await.unwrap().unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].record.id, id);
    assert!(started.elapsed() < WAIT);
    assert!(queue_names(&b).await.contains(&"u2".to_owned()));
}

pub async fn delete_queue_only_when_empty(b: &dyn Broker) {
    assert!(matches!(
        b.delete_queue("d0").await,
        Err(StoreError::QueueNotFound)
    ));
    assert!(matches!(
        b.delete_queue("bad name").await,
        Err(StoreError::Invalid(_))
    ));
    // Every state keeps a queue, retained finished tasks included.
    let id = one(b, "d1", task("k"), "1").await;
    let not_empty = |r: Result<(), StoreError>, state: TaskState| match r {
        Err(StoreError::QueueNotEmpty { queue, counts }) => {
            assert_eq!(queue, "d1");
            assert_eq!(counts.get(state), 1, "{counts:?}");
            assert_eq!(counts.0.iter().sum::<u64>(), 1, "{counts:?}");
        }
        other => panic!("delete of a queue with a {state:?} task: {other:?}"),
    };
    not_empty(b.delete_queue("d1").await, TaskState::Pending);
    let l = b.lease("d1", 1, Duration::ZERO).await.unwrap().remove(0);
    not_empty(b.delete_queue("d1").await, TaskState::Active);
    ack(b, id, l.lease_id).await;
    not_empty(b.delete_queue("d1").await, TaskState::Completed);
    let mut later = task("k");
    later.run_at_ms = Some(now_ms() + 3_600_000);
    let scheduled = one(b, "d1b", later, "1").await;
    match b.delete_queue("d1b").await {
        Err(StoreError::QueueNotEmpty { counts, .. }) => {
            assert_eq!(counts.get(TaskState::Scheduled), 1)
        }
        other => panic!("delete of a queue with a scheduled task: {other:?}"),
    }
    b.cancel(scheduled).await.unwrap();
    assert!(queue_names(b).await.contains(&"d1".to_owned()));

    // A queue whose only task was removed by retention is empty: it can go.
    let mut brief = task("k");
    brief.retention_ms = 0;
    let id = one(b, "d2", brief, "1").await;
    let l = b.lease("d2", 1, Duration::ZERO).await.unwrap().remove(0);
    ack(b, id, l.lease_id).await;
    let purged_by = tokio::time::Instant::now() + WAIT;
    // Retention has no event to wait on: ask until the task is gone, within a bound.
    while b.get(id).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < purged_by, "never purged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.delete_queue("d2").await.unwrap();
    assert!(!queue_names(b).await.contains(&"d2".to_owned()));
    assert!(matches!(
        b.delete_queue("d2").await,
        Err(StoreError::QueueNotFound)
    ));
    // The next enqueue makes it again, fresh.
    let id = one(b, "d2", task("k"), "2").await;
    let q = b
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == "d2")
        .unwrap();
    assert_eq!(q.counts.0, [0, 1, 0, 0, 0, 0]);
    let l = b.lease("d2", 1, Duration::ZERO).await.unwrap();
    assert_eq!(l[0].record.id, id);
}

/// A store that wakes parked leases answers well before the Redis store's own
/// re-check (1–2 s) would have: a wake-up test bounded by this fails on a store
/// that only re-checks.
fn woken_within() -> Duration {
    Duration::from_millis(crate::redis::RECHECK_MS_MIN)
}

/// A lease long-poll for up to 10 tasks of `queue`, spawned; it answers what it
/// got and when. Gives it a few round trips to park (if it has not parked by the
/// time the test wakes it, it finds the work at once: the test proves less, and
/// still passes only on a correct store).
async fn park_lease<B: Broker + Clone>(
    b: &B,
    queue: &'static str,
) -> tokio::task::JoinHandle<(Vec<crate::Leased>, tokio::time::Instant)> {
    let parked = {
        let b = b.clone();
        tokio::spawn(async move {
            let got = b.lease(queue, 10, WAIT).await.unwrap();
            (got, tokio::time::Instant::now())
        })
    };
    for _ in 0..3 {
        b.queues().await.unwrap();
        tokio::task::yield_now().await;
    }
    parked
}

/// A patch that sets (or, with `None`, clears) the in-flight cap alone.
fn in_flight_cap(cap: Option<u64>) -> ConfigPatch {
    ConfigPatch {
        max_in_flight: Some(cap),
        ..ConfigPatch::default()
    }
}

async fn config_of(b: &dyn Broker, queue: &str) -> Option<QueueConfig> {
    b.queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == queue)
        .map(|q| q.config)
}

async fn counts_of(b: &dyn Broker, queue: &str) -> crate::Counts {
    let qs = b.queues().await.unwrap();
    qs.into_iter()
        .find(|q| q.name == queue)
        .expect("the queue")
        .counts
}

async fn enqueue_n(b: &dyn Broker, queue: &str, n: usize) -> Vec<TaskId> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let items = chunk
            .iter()
            .map(|i| item(task("k"), &i.to_string()))
            .collect();
        ids.extend(enqueue_ids(b, queue, items).await);
    }
    ids
}

pub async fn queue_config_is_kept_patched_and_deleted_with_the_queue(b: &dyn Broker) {
    // Configuring creates the queue: a limit can be set before the first task.
    let c = b
        .configure(
            "f0",
            ConfigPatch {
                rate_per_sec: Some(Some(12.5)),
                max_pending: Some(Some(100)),
                ..ConfigPatch::default()
            },
        )
        .await
        .unwrap();
    let want = QueueConfig {
        rate_per_sec: Some(12.5),
        max_pending: Some(100),
        ..QueueConfig::default()
    };
    assert_eq!(c, want);
    assert_eq!(config_of(b, "f0").await, Some(want));
    // Absent fields stay, null clears, paused flips.
    let c = b
        .configure(
            "f0",
            ConfigPatch {
                rate_per_sec: Some(None),
                burst: Some(Some(4)),
                max_in_flight: Some(Some(2)),
                paused: Some(true),
                ..ConfigPatch::default()
            },
        )
        .await
        .unwrap();
    let want = QueueConfig {
        rate_per_sec: None,
        burst: Some(4),
        max_in_flight: Some(2),
        max_pending: Some(100),
        paused: true,
    };
    assert_eq!(c, want);
    assert_eq!(config_of(b, "f0").await, Some(want));
    // A bad value changes nothing.
    let bad = ConfigPatch {
        max_in_flight: Some(Some(0)),
        paused: Some(false),
        ..ConfigPatch::default()
    };
    assert!(matches!(
        b.configure("f0", bad).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(config_of(b, "f0").await, Some(want));
    // Deleting the (empty) queue takes its config with it.
    b.delete_queue("f0").await.unwrap();
    assert_eq!(config_of(b, "f0").await, None);
    one(b, "f0", task("k"), "1").await;
    assert_eq!(config_of(b, "f0").await, Some(QueueConfig::default()));
}

pub async fn a_paused_queue_takes_enqueues_and_leases_nothing_until_resumed<B: Broker + Clone>(
    b: B,
) {
    let pause = |p| ConfigPatch {
        paused: Some(p),
        ..ConfigPatch::default()
    };
    b.configure("f1", pause(true)).await.unwrap();
    let id = one(&b, "f1", task("k"), "1").await;
    assert_eq!(state(&b, id).await, TaskState::Pending);
    assert!(b.lease("f1", 10, Duration::ZERO).await.unwrap().is_empty());
    let parked = park_lease(&b, "f1").await;
    let resumed = tokio::time::Instant::now();
    b.configure("f1", pause(false)).await.unwrap();
    let (got, at) = parked.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].record.id, id);
    let took = at.saturating_duration_since(resumed);
    assert!(
        took < woken_within(),
        "resume woke the parked lease after {took:?}"
    );
}

pub async fn max_in_flight_caps_active_tasks_and_a_settle_frees_a_slot<B: Broker + Clone>(b: B) {
    b.configure("f2", in_flight_cap(Some(3))).await.unwrap();
    enqueue_n(&b, "f2", 10).await;
    let first = b.lease("f2", 10, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 3);
    assert!(b.lease("f2", 10, Duration::ZERO).await.unwrap().is_empty());

    assert_eq!(counts_of(&b, "f2").await.get(TaskState::Active), 3);
    // Each way out of active frees a slot: ack, fail, release.
    ack(&b, first[0].record.id, first[0].lease_id).await;
    let l = b.lease("f2", 10, Duration::ZERO).await.unwrap();
    assert_eq!(l.len(), 1);
    b.settle(vec![Settle::Fail {
        id: first[1].record.id,
        lease_id: first[1].lease_id,
        error: "e".into(),
        retry: false,
    }])
    .await
    .unwrap();
    b.release(first[2].record.id, first[2].lease_id)
        .await
        .unwrap();
    let l2 = b.lease("f2", 10, Duration::ZERO).await.unwrap();
    assert_eq!(l2.len(), 2);
    assert_eq!(counts_of(&b, "f2").await.get(TaskState::Active), 3);
    // A parked lease is woken by the slot an ack frees.
    let parked = park_lease(&b, "f2").await;
    let acked = tokio::time::Instant::now();
    ack(&b, l[0].record.id, l[0].lease_id).await;
    let (got, at) = parked.await.unwrap();
    assert_eq!(got.len(), 1, "one slot, one task");
    let took = at.saturating_duration_since(acked);
    assert!(
        took < woken_within(),
        "the ack woke the parked lease after {took:?}"
    );
    assert_eq!(counts_of(&b, "f2").await.get(TaskState::Active), 3);
    // Raising the cap lets more go at once.
    b.configure("f2", in_flight_cap(None)).await.unwrap();
    let rest = b.lease("f2", 10, Duration::ZERO).await.unwrap();
    // 10 = 2 completed + 1 dead + 3 active + 4 still pending.
    assert_eq!(rest.len(), 4);
}

pub async fn max_pending_refuses_what_would_overflow_whole(b: &dyn Broker) {
    b.configure(
        "f3",
        ConfigPatch {
            max_pending: Some(Some(5)),
            ..ConfigPatch::default()
        },
    )
    .await
    .unwrap();
    enqueue_n(b, "f3", 3).await;
    let full = |r: Result<Vec<_>, StoreError>| match r {
        Err(StoreError::QueueFull {
            limit,
            retry_after_ms,
            ..
        }) => {
            assert_eq!(limit, 5);
            assert!(retry_after_ms > 0);
        }
        other => panic!("not refused as full: {other:?}"),
    };
    let three = || {
        (0..3)
            .map(|i| item(task("k"), &i.to_string()))
            .collect::<Vec<_>>()
    };
    full(b.enqueue("f3", three()).await);
    match b.create_group("f3", three(), false).await {
        Err(StoreError::QueueFull { limit: 5, .. }) => {}
        other => panic!("group not refused as full: {other:?}"),
    }

    assert_eq!(
        counts_of(b, "f3").await.get(TaskState::Pending),
        3,
        "nothing half-enqueued"
    );
    // Delayed tasks count too (scheduled + pending).
    let mut later = task("k");
    later.delay_ms = 3_600_000;
    b.enqueue("f3", vec![item(later, "x"), item(task("k"), "y")])
        .await
        .unwrap();
    full(b.enqueue("f3", vec![item(task("k"), "z")]).await);
    // Active tasks do not: leasing one makes room for one.
    let l = b.lease("f3", 1, Duration::ZERO).await.unwrap();
    assert_eq!(l.len(), 1);
    b.enqueue("f3", vec![item(task("k"), "z")]).await.unwrap();
    full(b.enqueue("f3", vec![item(task("k"), "w")]).await);
    let c = counts_of(b, "f3").await;
    assert_eq!(
        (
            c.get(TaskState::Scheduled),
            c.get(TaskState::Pending),
            c.get(TaskState::Active)
        ),
        (1, 4, 1)
    );
}

/// The rate in real time, measured by the store's own clock (each task's start):
/// 100/s with a burst of 50, an eager long-polling taker. The first 50 go at
/// once, the next 200 one per 10 ms: 2 s, within 5%. A store that re-checks
/// instead of waking on the next token falls far behind.
pub async fn rate_caps_leases_per_second<B: Broker + Clone>(b: B) {
    b.configure(
        "f4",
        ConfigPatch {
            rate_per_sec: Some(Some(100.0)),
            burst: Some(Some(50)),
            ..ConfigPatch::default()
        },
    )
    .await
    .unwrap();
    enqueue_n(&b, "f4", 260).await;
    let mut starts = Vec::new();
    let by = tokio::time::Instant::now() + 4 * WAIT;
    while starts.len() < 250 {
        assert!(
            tokio::time::Instant::now() < by,
            "only {} leased",
            starts.len()
        );
        let got = b.lease("f4", 100, WAIT).await.unwrap();
        starts.extend(got.iter().map(|l| l.record.started_ms.expect("started")));
    }
    starts.sort_unstable();
    let first = starts[0];
    assert!(
        starts[49] - first <= 5,
        "the burst came at once: {:?}",
        &starts[..50]
    );
    let span = starts[249] - first;
    assert!(
        (1900..=2100).contains(&span),
        "200 tasks at 100/s took {span} ms"
    );
}

pub async fn schedules_are_kept_and_their_ticks_only_move_forward(b: &dyn Broker) {
    let s = b
        .put_schedule("nightly", "{\"v\":1}".into(), 1000)
        .await
        .unwrap();
    assert_eq!(
        (s.last_tick_ms, s.last_run_ms, s.last_task_id),
        (1000, None, None)
    );
    let id = one(b, "sq", task("k"), "1").await;
    b.schedule_ran("nightly", 2000, Some((2005, id)))
        .await
        .unwrap();
    // Older or equal ticks change nothing (another server was first).
    b.schedule_ran("nightly", 2000, None).await.unwrap();
    b.schedule_ran("nightly", 1500, Some((9, TaskId(7))))
        .await
        .unwrap();
    let all = b.schedules().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].last_tick_ms, all[0].last_run_ms, all[0].last_task_id),
        (2000, Some(2005), Some(id))
    );
    // A skipped tick moves the tick and keeps the last run.
    b.schedule_ran("nightly", 3000, None).await.unwrap();
    // Replacing the definition keeps the last run; its tick becomes the new now.
    let s = b
        .put_schedule("nightly", "{\"v\":2}".into(), 4000)
        .await
        .unwrap();
    assert_eq!(s.spec, "{\"v\":2}");
    assert_eq!(
        (s.last_tick_ms, s.last_run_ms, s.last_task_id),
        (4000, Some(2005), Some(id))
    );
    b.put_schedule("hourly", "{}".into(), 1).await.unwrap();
    let names: Vec<String> = b
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["hourly", "nightly"]);
    assert!(matches!(
        b.put_schedule("bad name", "{}".into(), 1).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(b.delete_schedule("nightly").await.unwrap());
    assert!(!b.delete_schedule("nightly").await.unwrap());
    // A run recorded for a deleted schedule does not bring it back.
    b.schedule_ran("nightly", 9000, None).await.unwrap();
    let names: Vec<String> = b
        .schedules()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["hourly"]);
}

/// `max_in_flight = 3` with 10 eager workers, each leasing one task at a time
/// with a long-poll and acking it: no more than 3 tasks are ever held (checked
/// by the workers at every lease, and by the store's own count), and all 40 are
/// done: every ack lets a parked worker in.
pub async fn ten_eager_workers_never_hold_more_than_the_cap<B: Broker + Clone>(b: B) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    b.configure("f5", in_flight_cap(Some(3))).await.unwrap();
    enqueue_n(&b, "f5", 40).await;
    let held = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..10)
        .map(|_| {
            let (b, held, done, most) = (b.clone(), held.clone(), done.clone(), most.clone());
            tokio::spawn(async move {
                while done.load(Ordering::SeqCst) < 40 {
                    // A short wait: the last workers leave once all are done.
                    let got = b.lease("f5", 1, Duration::from_millis(200)).await.unwrap();
                    let Some(t) = got.into_iter().next() else {
                        continue;
                    };
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let active = counts_of(&b, "f5").await.get(TaskState::Active);
                    assert!(active <= 3, "{active} active");
                    tokio::task::yield_now().await;
                    held.fetch_sub(1, Ordering::SeqCst);
                    ack(&b, t.record.id, t.lease_id).await;
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 40);
    let most = most.load(Ordering::SeqCst);
    assert!((1..=3).contains(&most), "{most} held at once");
    assert_eq!(counts_of(&b, "f5").await.get(TaskState::Completed), 40);
}

/// For a store opened with `schedules_max = 2`: replacing one, or adding one
/// after a delete, fits; a third is refused and changes nothing.
pub async fn schedules_are_capped_at_two(b: &dyn Broker) {
    b.put_schedule("a", "{}".into(), 1).await.unwrap();
    b.put_schedule("b", "{}".into(), 1).await.unwrap();
    b.put_schedule("a", "{\"v\":2}".into(), 2).await.unwrap();
    assert!(matches!(
        b.put_schedule("c", "{}".into(), 3).await,
        Err(StoreError::TooManySchedules { limit: 2 })
    ));
    let names = |v: Vec<crate::Schedule>| v.into_iter().map(|s| s.name).collect::<Vec<_>>();
    assert_eq!(names(b.schedules().await.unwrap()), ["a", "b"]);
    assert!(b.delete_schedule("a").await.unwrap());
    b.put_schedule("c", "{}".into(), 4).await.unwrap();
    assert_eq!(names(b.schedules().await.unwrap()), ["b", "c"]);
}

/// On a queue capped at one in flight, a lease that runs out frees its slot: a
/// parked lease gets the other task as soon as the first lease expires (20 ms),
/// well before any re-check would have found it.
pub async fn an_expired_lease_frees_its_slot(b: &dyn Broker) {
    b.configure("f6", in_flight_cap(Some(1))).await.unwrap();
    let mut t = task("k");
    t.timeout_ms = 20;
    one(b, "f6", t.clone(), "1").await;
    one(b, "f6", t, "2").await;
    let first = b.lease("f6", 10, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    let started = tokio::time::Instant::now();
    let next = b.lease("f6", 10, WAIT).await.unwrap();
    let took = started.elapsed();
    assert_eq!(next.len(), 1, "one slot, one task");
    assert!(took < woken_within(), "the slot came back after {took:?}");
}

/// Walks every page of `queue`'s tasks in `state`, `limit` at a time, calling
/// `between` after each page (the test's changes while the walk goes on).
async fn walk(
    b: &dyn Broker,
    queue: &str,
    state: TaskState,
    limit: usize,
    mut between: impl FnMut(usize) -> Vec<EnqueueTask>,
) -> Vec<weir_core::TaskRecord> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for page_no in 0.. {
        assert!(page_no < 10_000, "the walk does not end");
        let TaskPage { tasks, next } = b
            .browse(queue, state, cursor.as_deref(), limit)
            .await
            .unwrap();
        assert!(tasks.len() <= limit);
        assert!(tasks.iter().all(|t| t.state == state && t.queue == queue));
        all.extend(tasks);
        let more = between(page_no);
        if !more.is_empty() {
            b.enqueue(queue, more).await.unwrap();
        }
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    all
}

/// Active tasks walked 3 at a time while every task already listed has its lease
/// extended (it moves up, past the cursor), then completed tasks that all ended
/// at once (one retention end) walked 3 at a time among canceled ones while the
/// task at the cursor is deleted after every page: every task is listed exactly
/// once, in the documented order (latest lease expiry first; equal retention
/// ends newest id first, canceled ones left out).
pub async fn browsing_by_time_lists_each_task_once_as_times_grow(b: &dyn Broker) {
    let q = "br-time";
    let n = 40u64;
    // Distinct timeouts: distinct lease expiries, in an order unlike the ids'.
    let items: Vec<_> = (0..n)
        .map(|i| {
            let mut t = task("k");
            t.timeout_ms = 60_000 + (i * 17 % n) * 1_000;
            item(t, "1")
        })
        .collect();
    b.enqueue(q, items).await.unwrap();
    let leases = b.lease(q, n as usize, Duration::ZERO).await.unwrap();
    assert_eq!(leases.len() as u64, n);
    let mut by_expiry: Vec<_> = leases
        .iter()
        .map(|l| (l.lease_expires_ms, l.record.id))
        .collect();
    by_expiry.sort_by(|a, b| b.cmp(a));
    let expected: Vec<TaskId> = by_expiry.iter().map(|&(_, id)| id).collect();
    let lease_of = |id: TaskId| leases.iter().find(|l| l.record.id == id).unwrap().lease_id;

    let mut listed: Vec<TaskId> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        assert!(listed.len() <= n as usize, "the active walk does not end");
        let page = b
            .browse(q, TaskState::Active, cursor.as_deref(), 3)
            .await
            .unwrap();
        listed.extend(page.tasks.iter().map(|t| t.id));
        // Every task listed so far moves up: the clock ticks, then its lease
        // is extended past every expiry the walk has yet to reach.
        let before = now_ms();
        while now_ms() == before {
            tokio::task::yield_now().await;
        }
        for &id in &listed {
            let beat = b.heartbeat(id, lease_of(id)).await.unwrap();
            let was = leases.iter().find(|l| l.record.id == id).unwrap();
            assert!(beat.lease_expires_ms > was.lease_expires_ms);
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        listed, expected,
        "each active task once, latest lease expiry first, although listed ones were extended"
    );

    // Ten canceled tasks among the completed ones (on Redis they share an index).
    let extra = b
        .enqueue(q, (0..10).map(|_| item(task("k"), "1")).collect())
        .await
        .unwrap();
    for e in &extra {
        b.cancel(e.id).await.unwrap();
    }
    let acks: Vec<Settle> = leases
        .iter()
        .map(|l| Settle::Ack {
            id: l.record.id,
            lease_id: l.lease_id,
            result: None,
        })
        .collect();
    for r in b.settle(acks).await.unwrap() {
        assert_eq!(r.unwrap(), TaskState::Completed);
    }
    let mut done: Vec<TaskId> = leases.iter().map(|l| l.record.id).collect();
    done.sort_by(|a, b| b.cmp(a));
    let mut listed: Vec<TaskId> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        assert!(
            listed.len() <= n as usize,
            "the completed walk does not end"
        );
        let page = b
            .browse(q, TaskState::Completed, cursor.as_deref(), 3)
            .await
            .unwrap();
        listed.extend(page.tasks.iter().map(|t| t.id));
        // The cursor's own task goes: the next page must still start after it.
        if let Some(last) = page.tasks.last() {
            let scope = Scope {
                queue: Some(q),
                state: Some(TaskState::Completed),
            };
            let out = b.delete_tasks(vec![last.id], scope).await.unwrap();
            assert!(out[0].is_ok());
        }
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        listed, done,
        "each completed task once, newest first within one retention end, canceled ones not"
    );
}

/// The ids of the first page (up to 10) of `queue`'s tasks in `state`.
pub async fn first_page(b: &(impl Broker + ?Sized), queue: &str, state: TaskState) -> Vec<TaskId> {
    let page = b.browse(queue, state, None, 10).await.unwrap();
    page.tasks.iter().map(|t| t.id).collect()
}

/// Fails `id`'s only attempt without retry: it ends dead.
pub async fn kill(b: &(impl Broker + ?Sized), queue: &str, id: TaskId) {
    let l = b.lease(queue, 1, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(l.record.id, id, "the test leases in order");
    let out = b
        .settle(vec![Settle::Fail {
            id,
            lease_id: l.lease_id,
            error: format!("{id} failed"),
            retry: false,
        }])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &TaskState::Dead);
}

/// 2,500 pending tasks (three priorities) and 2,500 scheduled ones, walked 100
/// at a time while every page is followed by new tasks of every priority, some
/// before the cursor and some after: each task there at the start is listed
/// exactly once, in dispatch order (pending) or newest first (other states),
/// and no task is listed twice.
pub async fn browsing_lists_each_task_once_while_tasks_are_added(b: &dyn Broker) {
    let q = "br1";
    let mut pending = Vec::new();
    for chunk in 0..5 {
        let items: Vec<_> = (0..500)
            .map(|i| {
                let mut t = task("k");
                t.priority = (chunk * 500 + i) % 3;
                item(t, "1")
            })
            .collect();
        pending.extend(enqueue_ids(b, q, items).await);
    }
    let mut scheduled = Vec::new();
    for _ in 0..5 {
        let items: Vec<_> = (0..500)
            .map(|_| {
                let mut t = task("k");
                t.delay_ms = 3_600_000;
                item(t, "1")
            })
            .collect();
        scheduled.extend(enqueue_ids(b, q, items).await);
    }
    let new_tasks = |delay_ms: u64| {
        move |page: usize| -> Vec<EnqueueTask> {
            (0..3)
                .map(|p| {
                    let mut t = task("k");
                    t.priority = p + page as i32 % 2;
                    t.delay_ms = delay_ms;
                    item(t, "1")
                })
                .collect()
        }
    };
    let listed = walk(b, q, TaskState::Pending, 100, new_tasks(0)).await;
    let ids: Vec<TaskId> = listed.iter().map(|t| t.id).collect();
    let unique: std::collections::HashSet<TaskId> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a pending task was listed twice");
    for id in &pending {
        assert!(unique.contains(id), "pending task {id} was not listed");
    }
    assert!(
        listed.windows(2).all(|w| w[0].priority >= w[1].priority),
        "pending tasks are listed in dispatch order: priority first"
    );
    // Within a priority, the tasks there from the start in FIFO order.
    let first: Vec<TaskId> = listed
        .iter()
        .filter(|t| t.priority == 0)
        .map(|t| t.id)
        .filter(|id| pending.contains(id))
        .collect();
    let mut fifo = first.clone();
    fifo.sort();
    assert_eq!(first, fifo, "FIFO within a priority");
    // The walk's order is the order leases take.
    let leased: Vec<TaskId> = b
        .lease(q, 5, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.record.id)
        .collect();
    let mut head = first_page(b, q, TaskState::Active).await;
    head.reverse();
    let mut sorted = leased.clone();
    sorted.sort();
    assert_eq!(
        head, sorted,
        "active tasks leased together (one expiry) are listed newest first"
    );

    let listed = walk(b, q, TaskState::Scheduled, 100, new_tasks(3_600_000)).await;
    let ids: Vec<TaskId> = listed.iter().map(|t| t.id).collect();
    let unique: std::collections::HashSet<TaskId> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a scheduled task was listed twice");
    for id in &scheduled {
        assert!(unique.contains(id), "scheduled task {id} was not listed");
    }
    assert!(
        listed
            .windows(2)
            .all(|w| (w[0].run_at_ms, w[0].id) > (w[1].run_at_ms, w[1].id)),
        "scheduled tasks are listed latest run time first, then newest first"
    );

    // Limits and cursors.
    let page = b.browse(q, TaskState::Pending, None, 1000).await.unwrap();
    assert_eq!(page.tasks.len(), 1000);
    assert!(page.next.is_some());
    for bad in [0, 1001] {
        assert!(matches!(
            b.browse(q, TaskState::Pending, None, bad).await,
            Err(StoreError::Invalid(_))
        ));
    }
    for cursor in ["zz", "not a cursor", ""] {
        assert!(
            matches!(
                b.browse(q, TaskState::Dead, Some(cursor), 10).await,
                Err(StoreError::Invalid(_))
            ),
            "{cursor:?}"
        );
    }
    // A pending cursor is not a dead one.
    assert!(matches!(
        b.browse(q, TaskState::Dead, page.next.as_deref(), 10).await,
        Err(StoreError::Invalid(_))
    ));
    let none = b
        .browse("br-unknown", TaskState::Pending, None, 10)
        .await
        .unwrap();
    assert!(none.tasks.is_empty() && none.next.is_none());
    assert!(b
        .queues()
        .await
        .unwrap()
        .iter()
        .all(|q| q.name != "br-unknown"));
    // An exact page has no next page.
    let dead = b.browse(q, TaskState::Dead, None, 10).await.unwrap();
    assert!(dead.tasks.is_empty() && dead.next.is_none());
}

/// Dead tasks retried and purged, all or by ids, within a scope: exactly the
/// right tasks change, and counts, listings and keys follow.
pub async fn dead_tasks_are_retried_and_deleted_exactly(b: &dyn Broker) {
    let q = "dd1";
    let mut dead = Vec::new();
    for i in 0..8 {
        let mut t = task("k");
        t.max_attempts = 1;
        if i == 0 {
            t.idempotency_key = Some("dead-key".into());
        }
        let id = one(b, q, t, "1").await;
        kill(b, q, id).await;
        dead.push(id);
    }
    let done = one(b, q, task("k"), "2").await;
    let l = b.lease(q, 1, Duration::ZERO).await.unwrap().remove(0);
    ack(b, done, l.lease_id).await;
    let canceled = one(b, q, task("k"), "3").await;
    b.cancel(canceled).await.unwrap();
    let waiting = one(b, q, task("k"), "4").await;
    let mut t = task("k");
    t.max_attempts = 1;
    let elsewhere = one(b, "dd2", t, "5").await;
    kill(b, "dd2", elsewhere).await;

    let c = counts_of(b, q).await;
    assert_eq!((c.get(TaskState::Dead), c.get(TaskState::Pending)), (8, 1));
    let listed: Vec<TaskId> = walk(b, q, TaskState::Dead, 3, |_| Vec::new())
        .await
        .into_iter()
        .map(|t| t.id)
        .collect();
    let mut newest_first = dead.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    let d = b.browse(q, TaskState::Dead, None, 1).await.unwrap();
    assert_eq!(
        d.tasks[0].last_error.as_deref(),
        Some(format!("{} failed", dead[7]).as_str())
    );

    // Retry by ids, within the queue's dead tasks.
    let scope = Scope {
        queue: Some(q),
        state: Some(TaskState::Dead),
    };
    let unknown = TaskId::new(1, 1);
    let out = b
        .retry(
            vec![
                dead[0], dead[1], done, waiting, unknown, elsewhere, canceled,
            ],
            scope,
        )
        .await
        .unwrap();
    for (i, r) in out[..2].iter().enumerate() {
        let r = r.as_ref().unwrap();
        assert_eq!((r.id, r.state, r.attempt), (dead[i], TaskState::Pending, 0));
        assert_eq!(r.finished_ms, None);
    }
    for r in &out[2..] {
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    }
    let c = counts_of(b, q).await;
    assert_eq!(
        (
            c.get(TaskState::Dead),
            c.get(TaskState::Pending),
            c.get(TaskState::Completed)
        ),
        (6, 3, 1)
    );
    assert_eq!(
        counts_of(b, "dd2").await.get(TaskState::Dead),
        1,
        "another queue's dead task stays"
    );
    assert_eq!(state(b, done).await, TaskState::Completed);
    // A retried task runs again from its first attempt, at its first FIFO place.
    let leased: Vec<_> = b.lease(q, 3, Duration::ZERO).await.unwrap();
    let order: Vec<TaskId> = leased.iter().map(|l| l.record.id).collect();
    assert_eq!(order, vec![dead[0], dead[1], waiting]);
    assert_eq!(leased[0].record.attempt, 1);
    for l in &leased {
        ack(b, l.record.id, l.lease_id).await;
    }
    // The idempotency key still names the retried task.
    let found = b.find_key(q, "dead-key").await.unwrap().unwrap();
    assert_eq!(found.record.id, dead[0]);
    assert!(b.find_key(q, "no-such-key").await.unwrap().is_none());
    assert!(b.find_key("dd2", "dead-key").await.unwrap().is_none());

    // One task, any scope: a canceled one comes back; others are refused.
    let r = b
        .retry(vec![canceled], Scope::ANY)
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!((r.state, r.cancel_requested), (TaskState::Pending, false));
    let refused = b.retry(vec![canceled, done], Scope::ANY).await.unwrap();
    assert!(matches!(
        refused[0],
        Err(StoreError::Conflict(
            weir_core::machine::TransitionError::NotRetryable(TaskState::Pending)
        ))
    ));
    assert!(matches!(
        refused[1],
        Err(StoreError::Conflict(
            weir_core::machine::TransitionError::NotRetryable(TaskState::Completed)
        ))
    ));

    // Delete by ids: only finished tasks, only within the scope.
    let out = b
        .delete_tasks(vec![dead[2], canceled, elsewhere], scope)
        .await
        .unwrap();
    assert!(out[0].is_ok());
    assert!(matches!(out[1], Err(StoreError::NotFound)));
    assert!(matches!(out[2], Err(StoreError::NotFound)));
    assert!(b.get(dead[2]).await.unwrap().is_none());
    let out = b.delete_tasks(vec![canceled], Scope::ANY).await.unwrap();
    assert!(matches!(
        out[0],
        Err(StoreError::Conflict(
            weir_core::machine::TransitionError::NotFinished(TaskState::Pending)
        ))
    ));
    // Delete all dead: walk and delete page by page.
    loop {
        let page = b.browse(q, TaskState::Dead, None, 2).await.unwrap();
        if page.tasks.is_empty() {
            break;
        }
        let ids = page.tasks.iter().map(|t| t.id).collect();
        assert!(b
            .delete_tasks(ids, scope)
            .await
            .unwrap()
            .iter()
            .all(Result::is_ok));
    }
    let c = counts_of(b, q).await;
    assert_eq!(c.get(TaskState::Dead), 0);
    assert_eq!(c.get(TaskState::Completed), 4);
    for id in &dead[3..] {
        assert!(b.get(*id).await.unwrap().is_none());
    }
    // A finished task of any state can be deleted, and frees its key.
    let out = b
        .delete_tasks(vec![done, dead[0]], Scope::ANY)
        .await
        .unwrap();
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    assert!(b.find_key(q, "dead-key").await.unwrap().is_none());
    let mut t = task("k");
    t.idempotency_key = Some("dead-key".into());
    let again = b.enqueue(q, vec![item(t, "9")]).await.unwrap().remove(0);
    assert!(again.created, "a deleted task's key is free again");
    assert_eq!(counts_of(b, q).await.get(TaskState::Completed), 2);
    assert_eq!(
        b.browse(q, TaskState::Completed, None, 10)
            .await
            .unwrap()
            .tasks
            .len(),
        2
    );

    // A group member cannot be retried: its group counted its end.
    let mut t = task("k");
    t.max_attempts = 1;
    let g = b
        .create_group("dd3", vec![item(t, "1")], false)
        .await
        .unwrap();
    kill(b, "dd3", g.task_ids[0]).await;
    let out = b.retry(g.task_ids.clone(), Scope::ANY).await.unwrap();
    assert!(matches!(
        out[0],
        Err(StoreError::Conflict(
            weir_core::machine::TransitionError::GroupMember
        ))
    ));
    // Bad input changes nothing.
    assert!(matches!(
        b.retry(Vec::new(), Scope::ANY).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        b.delete_tasks(vec![done; 1001], Scope::ANY).await,
        Err(StoreError::Invalid(_))
    ));
}

/// A producer's trace context is kept with the task and comes back on every read
/// and lease; a task without one has none.
pub async fn trace_context_rides_with_the_task(b: &dyn Broker) {
    let trace = weir_core::TraceContext::from_headers(
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        Some("congo=t61rcWkgMzE"),
    );
    let mut t = task("k");
    t.trace = trace.clone();
    let traced = one(b, "tr1", t, "1").await;
    let plain = one(b, "tr1", task("k"), "2").await;
    assert_eq!(b.get(traced).await.unwrap().unwrap().record.trace, trace);
    let leased = b.lease("tr1", 2, Duration::ZERO).await.unwrap();
    assert_eq!(leased[0].record.id, traced);
    assert_eq!(leased[0].record.trace, trace);
    assert_eq!(leased[0].record.kind, "k", "the kind reads as given");
    assert_eq!(leased[1].record.trace, None);
    ack(b, plain, leased[1].lease_id).await;
    ack(b, traced, leased[0].lease_id).await;
    let done = b.get(traced).await.unwrap().unwrap().record;
    assert_eq!((done.state, done.trace), (TaskState::Completed, trace));
}

pub async fn lease_ids_are_random(b: &dyn Broker) {
    let items = (0..16).map(|i| item(task("k"), &i.to_string())).collect();
    b.enqueue("c17", items).await.unwrap();
    let mut ids: Vec<crate::LeaseId> = Vec::new();
    for max in [8, 1, 1, 6] {
        let got = b.lease("c17", max, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), max);
        ids.extend(got.iter().map(|l| l.lease_id));
    }
    let mut seen = std::collections::HashSet::new();
    for w in ids.windows(2) {
        // Not a counter: consecutive ids differ in both halves (by chance the same
        // half has odds of 2^-64).
        assert_ne!(w[0].0 >> 64, w[1].0 >> 64, "{:?}", w);
        assert_ne!(w[0].0 as u64, w[1].0 as u64, "{:?}", w);
    }
    for id in &ids {
        assert!(seen.insert(*id), "lease id {id} handed out twice");
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<crate::LeaseId>(), Ok(*id));
    }
}

async fn totals_of(b: &dyn Broker, queue: &str) -> crate::Totals {
    let q = b.queues().await.unwrap();
    q.into_iter()
        .find(|q| q.name == queue)
        .expect("queue")
        .totals
}

/// Every transition the totals count, once each: a new task (an idempotent
/// repeat is none), a lease, each terminal state, a fail that schedules a
/// retry, an expired lease that makes the task pending again.
pub async fn queue_totals_count_each_transition(b: &dyn Broker) {
    let q = "c18";
    let mut keyed = task("k");
    keyed.idempotency_key = Some("k1".into());
    let items = vec![
        item(keyed.clone(), "1"),
        item(task("k"), "2"),
        item(task("k"), "3"),
    ];
    let ids = enqueue_ids(b, q, items).await;
    let again = b.enqueue(q, vec![item(keyed, "1")]).await.unwrap();
    assert!(!again[0].created);
    assert_eq!(
        totals_of(b, q).await,
        crate::Totals {
            enqueued: 3,
            ..Default::default()
        }
    );

    b.cancel(ids[2]).await.unwrap();
    let leased = b.lease(q, 10, Duration::ZERO).await.unwrap();
    assert_eq!(leased.len(), 2);
    ack(b, ids[0], leased[0].lease_id).await;
    let fail = |id, lease_id, retry| Settle::Fail {
        id,
        lease_id,
        error: "no".into(),
        retry,
    };
    let out = b
        .settle(vec![fail(ids[1], leased[1].lease_id, true)])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &TaskState::Scheduled);
    // Its retry, once the backoff has passed; then it fails for good.
    let retry = b.lease(q, 1, WAIT).await.unwrap().remove(0);
    assert_eq!(retry.record.id, ids[1]);
    let out = b
        .settle(vec![fail(ids[1], retry.lease_id, false)])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap(), &TaskState::Dead);

    // A lease that runs out: the task is pending again and leased again.
    let mut short = task("k");
    short.timeout_ms = 20;
    let id = one(b, q, short, "4").await;
    b.lease(q, 1, Duration::ZERO).await.unwrap().remove(0);
    let second = b.lease(q, 1, WAIT).await.unwrap().remove(0);
    assert_eq!((second.record.id, second.record.attempt), (id, 2));
    ack(b, id, second.lease_id).await;

    assert_eq!(
        totals_of(b, q).await,
        crate::Totals {
            enqueued: 4,
            leased: 5,
            completed: 2,
            dead: 1,
            canceled: 1,
            retried: 2,
            lease_expired: 1,
        }
    );
}

/// The age of the next task to lease: none without a pending task (a delayed one
/// is not pending), the head of the dispatch order otherwise (its priority
/// first), measured from when it became ready.
pub async fn oldest_pending_age_is_the_heads(b: &dyn Broker) {
    let q = "c19";
    let head_age = || async {
        let qs = b.queues().await.unwrap();
        qs.into_iter()
            .find(|i| i.name == q)
            .expect("queue")
            .oldest_pending_age_ms
    };
    let mut later = task("k");
    later.run_at_ms = Some(now_ms() + 3_600_000);
    one(b, q, later, "later").await;
    assert_eq!(head_age().await, None, "a scheduled task is not pending");

    // Ready since a minute ago by its run_at, but created now: ready since now.
    let mut past = task("k");
    past.run_at_ms = Some(now_ms() - 60_000);
    one(b, q, past, "past").await;
    let a = head_age().await.expect("a pending task");
    assert!(
        a < WAIT.as_millis() as u64,
        "age {a} ms of a task made just now"
    );

    let mut urgent = task("k");
    urgent.priority = 9;
    let id = one(b, q, urgent, "urgent").await;
    assert!(head_age().await.is_some());
    let l = b.lease(q, 1, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(l.record.id, id);
    assert!(head_age().await.is_some(), "one pending task is left");
    b.lease(q, 1, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(head_age().await, None, "nothing pending");
}

/// An API key as `create_key` makes it: never used.
fn fresh_key(id: &str, record: &str) -> StoredKey {
    StoredKey {
        id: id.into(),
        record: record.into(),
        last_used_ms: None,
    }
}

/// The ids of every key the store holds, in the order `keys` lists them.
async fn key_ids(b: &dyn Broker) -> Vec<String> {
    b.keys().await.unwrap().into_iter().map(|k| k.id).collect()
}

/// Each key is kept as written and read back alone or in the list (by id, not
/// by creation); a revoke removes it (a second revoke finds none), and its id may
/// then be created afresh, with no last use of the old key's.
pub async fn api_keys_round_trip_through_create_get_list_and_delete(b: &dyn Broker) {
    assert!(b.keys().await.unwrap().is_empty());
    assert_eq!(b.key("kb").await.unwrap(), None);
    let rb = r#"{"name":"ci","roles":["producer"],"queues":["emails.*"],"hash":"9f86d0"}"#;
    b.create_key("kb", rb).await.unwrap();
    b.create_key("ka", "{}").await.unwrap();
    assert_eq!(b.key("kb").await.unwrap(), Some(fresh_key("kb", rb)));
    assert_eq!(
        b.keys().await.unwrap(),
        [fresh_key("ka", "{}"), fresh_key("kb", rb)]
    );
    b.key_used("ka", 1_000).await.unwrap();
    assert!(b.delete_key("ka").await.unwrap());
    assert!(!b.delete_key("ka").await.unwrap());
    assert_eq!(b.key("ka").await.unwrap(), None);
    assert_eq!(b.keys().await.unwrap(), [fresh_key("kb", rb)]);
    b.create_key("ka", r#"{"v":2}"#).await.unwrap();
    assert_eq!(
        b.key("ka").await.unwrap(),
        Some(fresh_key("ka", r#"{"v":2}"#))
    );
    assert_eq!(key_ids(b).await, ["ka", "kb"]);
}

/// A second create of an id answers `KeyExists` and leaves the first key as it
/// was (record and last use).
pub async fn creating_an_existing_key_id_is_refused_and_changes_nothing(b: &dyn Broker) {
    b.create_key("dup", r#"{"v":1}"#).await.unwrap();
    b.key_used("dup", 42).await.unwrap();
    assert!(matches!(
        b.create_key("dup", r#"{"v":2}"#).await,
        Err(StoreError::KeyExists)
    ));
    let k = b.key("dup").await.unwrap().expect("the first key stays");
    assert_eq!(
        (k.record.as_str(), k.last_used_ms),
        (r#"{"v":1}"#, Some(42))
    );
    assert_eq!(key_ids(b).await, ["dup"]);
}

/// For a store opened with `keys_max = 2`: a third key is refused with the limit
/// and changes nothing; an existing id at the limit is still `KeyExists`; a
/// revoke makes room.
pub async fn api_keys_are_capped_at_two(b: &dyn Broker) {
    b.create_key("a", "{}").await.unwrap();
    b.create_key("b", "{}").await.unwrap();
    assert!(matches!(
        b.create_key("c", "{}").await,
        Err(StoreError::TooManyKeys { limit: 2 })
    ));
    assert!(matches!(
        b.create_key("a", "{}").await,
        Err(StoreError::KeyExists)
    ));
    assert_eq!(key_ids(b).await, ["a", "b"]);
    assert_eq!(b.key("c").await.unwrap(), None);
    assert!(b.delete_key("a").await.unwrap());
    b.create_key("c", "{}").await.unwrap();
    assert_eq!(key_ids(b).await, ["b", "c"]);
}

/// `key_used` only moves last use forward (an earlier or equal use, as a slower
/// server would report it, changes nothing), keeps the record, and neither
/// creates an unknown key nor brings back a revoked one.
pub async fn key_use_only_moves_forward_and_never_revives_a_key(b: &dyn Broker) {
    b.create_key("ku", r#"{"r":1}"#).await.unwrap();
    let last = |k: Option<StoredKey>| k.expect("the key exists").last_used_ms;
    b.key_used("ku", 2_000).await.unwrap();
    assert_eq!(last(b.key("ku").await.unwrap()), Some(2_000));
    b.key_used("ku", 1_500).await.unwrap();
    b.key_used("ku", 2_000).await.unwrap();
    assert_eq!(last(b.key("ku").await.unwrap()), Some(2_000));
    b.key_used("ku", 3_000).await.unwrap();
    let k = b.key("ku").await.unwrap().unwrap();
    assert_eq!(
        (k.record.as_str(), k.last_used_ms),
        (r#"{"r":1}"#, Some(3_000))
    );
    assert_eq!(b.keys().await.unwrap(), [k]);

    // An unknown key: nothing is made.
    b.key_used("nokey", 5).await.unwrap();
    assert_eq!(b.key("nokey").await.unwrap(), None);
    assert_eq!(key_ids(b).await, ["ku"]);
    // A revoked key stays revoked, however late its use is reported.
    assert!(b.delete_key("ku").await.unwrap());
    b.key_used("ku", 9_000).await.unwrap();
    assert_eq!(b.key("ku").await.unwrap(), None);
    assert!(b.keys().await.unwrap().is_empty());
    assert!(!b.has_keys().await.unwrap());
}

/// `has_keys` is false on a store without keys, true from the first key on,
/// and false again once the last one is revoked.
pub async fn has_keys_turns_on_with_the_first_key_and_off_with_the_last(b: &dyn Broker) {
    assert!(!b.has_keys().await.unwrap());
    b.create_key("h1", "{}").await.unwrap();
    assert!(b.has_keys().await.unwrap());
    b.create_key("h2", "{}").await.unwrap();
    b.key_used("h1", 1).await.unwrap();
    assert!(b.delete_key("h1").await.unwrap());
    assert!(b.has_keys().await.unwrap(), "one key is left");
    assert!(b.delete_key("h2").await.unwrap());
    assert!(!b.has_keys().await.unwrap());
}

/// Through `Checked`: an id outside `[a-z0-9]{1,32}` or a record over 16 KiB is
/// `Invalid` on every call that takes it, and nothing is made.
pub async fn bad_key_ids_and_oversized_records_change_nothing(b: &dyn Broker) {
    let max = weir_core::limits::KEY_RECORD_BYTES_MAX;
    let invalid = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Invalid(_)));
    for bad in ["", "Key", "a_b", "a-b", "k\u{e9}", &"k".repeat(33)] {
        assert!(invalid(b.create_key(bad, "{}").await), "{bad:?}");
        assert!(matches!(b.key(bad).await, Err(StoreError::Invalid(_))));
        assert!(matches!(
            b.delete_key(bad).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(invalid(b.key_used(bad, 1).await), "{bad:?}");
    }
    assert!(invalid(b.create_key("big", &"x".repeat(max + 1)).await));
    assert!(!b.has_keys().await.unwrap());
    assert!(b.keys().await.unwrap().is_empty());
    // The limits themselves are fine.
    let longest = "k".repeat(32);
    b.create_key(&longest, &"x".repeat(max)).await.unwrap();
    assert_eq!(b.key(&longest).await.unwrap().unwrap().record.len(), max);
}

/// Writes what `api_keys_as_written_before_the_restart` expects a store to hold
/// after a restart (the embedded store reopened, a second server on Redis): a
/// key used twice, a key never used, a revoked key used before and after its
/// revoke.
pub async fn api_keys_written_before_a_restart(b: &dyn Broker) {
    b.create_key("used", r#"{"name":"used"}"#).await.unwrap();
    b.key_used("used", 100).await.unwrap();
    b.key_used("used", 200).await.unwrap();
    b.create_key("fresh", r#"{"name":"fresh"}"#).await.unwrap();
    b.create_key("revoked", "{}").await.unwrap();
    b.key_used("revoked", 300).await.unwrap();
    assert!(b.delete_key("revoked").await.unwrap());
    b.key_used("revoked", 400).await.unwrap();
}

/// What `api_keys_written_before_a_restart` left, read back after a restart:
/// the live keys with their records and last use, the revoked one gone; and the
/// last use still only moves forward.
pub async fn api_keys_as_written_before_the_restart(b: &dyn Broker) {
    assert!(b.has_keys().await.unwrap());
    let mut used = fresh_key("used", r#"{"name":"used"}"#);
    used.last_used_ms = Some(200);
    assert_eq!(
        b.keys().await.unwrap(),
        [fresh_key("fresh", r#"{"name":"fresh"}"#), used.clone()]
    );
    assert_eq!(b.key("revoked").await.unwrap(), None);
    b.key_used("used", 150).await.unwrap();
    assert_eq!(b.key("used").await.unwrap(), Some(used));
}

/// Expands to one `#[tokio::test]` per conformance case. `$make` is an async
/// expression that yields a fresh broker (`B: Broker + Clone`) for each test; the
/// suite reaches it through `Checked` with the default limits, as the server does.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            enqueue_get_lease_ack, unknown_task_is_none, priority_then_fifo, lease_respects_max,
            stale_lease_is_refused, fail_retries_then_dies, fail_without_retry_dies,
            lease_expiry_requeues_then_dies, release_does_not_count, cancel_queued_and_active,
            idempotency_key_dedupes, delayed_task_waits_for_run_at,
            deadline_passed_is_dead_not_started, batch_settle_reports_each,
            bad_queue_name_changes_nothing, group_completes_with_results_in_order,
            group_fail_fast_cancels_the_rest, group_without_fail_fast_runs_everything,
            group_cancel_cancels_members, group_member_retried_after_fail_fast_is_canceled,
            lease_on_unknown_queue_creates_nothing, delete_queue_only_when_empty,
            lease_ids_are_random, queue_config_is_kept_patched_and_deleted_with_the_queue,
            max_pending_refuses_what_would_overflow_whole,
            schedules_are_kept_and_their_ticks_only_move_forward,
            an_expired_lease_frees_its_slot, browsing_lists_each_task_once_while_tasks_are_added,
            browsing_by_time_lists_each_task_once_as_times_grow,
            dead_tasks_are_retried_and_deleted_exactly, trace_context_rides_with_the_task,
            queue_totals_count_each_transition, oldest_pending_age_is_the_heads,
            api_keys_round_trip_through_create_get_list_and_delete,
            creating_an_existing_key_id_is_refused_and_changes_nothing,
            key_use_only_moves_forward_and_never_revives_a_key,
            has_keys_turns_on_with_the_first_key_and_off_with_the_last,
            bad_key_ids_and_oversized_records_change_nothing);
        $crate::conformance_tests!(@owned $make;
            a_paused_queue_takes_enqueues_and_leases_nothing_until_resumed,
            max_in_flight_caps_active_tasks_and_a_settle_frees_a_slot,
            ten_eager_workers_never_hold_more_than_the_cap,
            rate_caps_leases_per_second);
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn long_poll_lease_wakes_on_enqueue() {
            let b = $crate::Checked::new($make.await, weir_core::Limits::default());
            $crate::conformance::long_poll_lease_wakes_on_enqueue(b).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn long_poll_lease_on_a_new_queue_wakes_on_its_first_enqueue() {
            let b = $crate::Checked::new($make.await, weir_core::Limits::default());
            $crate::conformance::long_poll_lease_on_a_new_queue_wakes_on_its_first_enqueue(b)
                .await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn watch_returns_when_a_cancel_is_requested() {
            let b = $crate::Checked::new($make.await, weir_core::Limits::default());
            $crate::conformance::watch_returns_when_a_cancel_is_requested(b).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn wait_wakes_when_terminal() {
            let b = $crate::Checked::new($make.await, weir_core::Limits::default());
            $crate::conformance::wait_wakes_when_terminal(b).await;
        }
    };
    (@owned $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let b = $crate::Checked::new($make.await, weir_core::Limits::default());
                $crate::conformance::$case(b).await;
            }
        )*
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let b = $crate::Checked::new($make.await, weir_core::Limits::default());
                $crate::conformance::$case(&b).await;
            }
        )*
    };
}
