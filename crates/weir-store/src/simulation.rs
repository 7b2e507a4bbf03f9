//! A seeded, model-based simulation shared by every store's tests: random
//! enqueues, leases, acks, fails, releases, cancels and stale settles, and API
//! key creates, revokes and uses, each checked against a model of what the store
//! must hold (states, attempts, cancel flags, lease order, per-queue counts;
//! each key's record and last use). A store's own tests add the
//! faults only it has (the embedded store's restarts and injected outages) by
//! handling the rolls `STEP_ROLLS..` themselves.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::Rng;
use weir_core::{TaskId, TaskState};

use crate::conformance::{item, task};
use crate::{Broker, LeaseId, Settle, StoreError, StoredKey};

/// What the store must say about one task.
#[derive(Clone, Debug)]
pub struct Model {
    pub state: TaskState,
    pub priority: i32,
    pub attempt: u32,
    pub cancel_requested: bool,
    pub lease: Option<LeaseId>,
}

pub type Tasks = BTreeMap<TaskId, Model>;

/// What the store must say about API keys: id → (record, last use).
pub type Keys = BTreeMap<String, (String, Option<u64>)>;

/// The ids the simulation's key operations pick from: few, so that creates
/// collide, revokes find keys and uses race revokes.
const KEY_IDS: [&str; 3] = ["ka", "kb", "kc"];

pub const QUEUE: &str = "sim";
pub const STEPS: usize = 250;
/// Rolls `0..STEP_ROLLS` are the operations of `step`; a store's own faults
/// take rolls from there up to 100.
pub const STEP_ROLLS: u32 = 90;

/// The seeds a run covers: a fixed set keeps CI deterministic; WEIR_SIM_SEED
/// replays one.
pub fn seeds(n: u64) -> Vec<u64> {
    match std::env::var("WEIR_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("WEIR_SIM_SEED is a number")],
        Err(_) => (1..=n).collect(),
    }
}

/// Every task reads as the model says, and the queue's counts agree; so do the
/// API keys, listed and one by one, and `has_keys`.
pub async fn check(b: &dyn Broker, model: &Tasks, keys: &Keys, seed: u64, step: usize) {
    let want: Vec<StoredKey> = keys
        .iter()
        .map(|(id, (record, last_used_ms))| StoredKey {
            id: id.clone(),
            record: record.clone(),
            last_used_ms: *last_used_ms,
        })
        .collect();
    assert_eq!(
        b.keys().await.unwrap(),
        want,
        "seed {seed} step {step}: keys"
    );
    for id in KEY_IDS {
        let one = want.iter().find(|k| k.id == id).cloned();
        assert_eq!(
            b.key(id).await.unwrap(),
            one,
            "seed {seed} step {step}: key {id}"
        );
    }
    assert_eq!(
        b.has_keys().await.unwrap(),
        !keys.is_empty(),
        "seed {seed} step {step}: has_keys"
    );
    let mut counts = [0u64; 6];
    for (id, m) in model {
        let v = b
            .get(*id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("seed {seed} step {step}: {id} lost"));
        assert_eq!(
            v.record.state, m.state,
            "seed {seed} step {step}: state of {id}"
        );
        assert_eq!(
            v.record.attempt, m.attempt,
            "seed {seed} step {step}: attempt of {id}"
        );
        assert_eq!(
            v.record.cancel_requested, m.cancel_requested,
            "seed {seed} step {step}: cancel flag of {id}"
        );
        counts[m.state.index()] += 1;
    }
    let q = b
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == QUEUE);
    let got = q.map(|q| q.counts.0).unwrap_or_default();
    assert_eq!(got, counts, "seed {seed} step {step}: queue counts");
}

/// The ids a lease of `max` must return: pending, highest priority first, then oldest.
pub fn expected_lease(model: &Tasks, max: usize) -> Vec<TaskId> {
    let mut pending: Vec<(i32, TaskId)> = model
        .iter()
        .filter(|(_, m)| m.state == TaskState::Pending)
        .map(|(id, m)| (m.priority, *id))
        .collect();
    pending.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    pending.into_iter().take(max).map(|(_, id)| id).collect()
}

/// The tasks the model has active.
pub fn active(model: &Tasks) -> Vec<TaskId> {
    model
        .iter()
        .filter(|(_, m)| m.state == TaskState::Active)
        .map(|(id, _)| *id)
        .collect()
}

/// One operation chosen by `roll` (in `0..STEP_ROLLS`), applied to the store and
/// the model, with the store's answer checked against the model.
pub async fn step(
    b: &dyn Broker,
    rng: &mut StdRng,
    model: &mut Tasks,
    keys: &mut Keys,
    roll: u32,
    seed: u64,
    step: usize,
) {
    let active = active(model);
    let any: Vec<TaskId> = model.keys().copied().collect();
    match roll {
        0..=26 => {
            let n = rng.gen_range(1..=4);
            let items = (0..n)
                .map(|_| {
                    let mut t = task("k");
                    t.priority = rng.gen_range(-2..=2);
                    t.max_attempts = 3;
                    item(t, "{}")
                })
                .collect::<Vec<_>>();
            let prios: Vec<i32> = items.iter().map(|i| i.task.priority).collect();
            let out = b.enqueue(QUEUE, items).await.unwrap();
            for (e, p) in out.into_iter().zip(prios) {
                model.insert(
                    e.id,
                    Model {
                        state: TaskState::Pending,
                        priority: p,
                        attempt: 0,
                        cancel_requested: false,
                        lease: None,
                    },
                );
            }
        }
        27..=29 => {
            let id = KEY_IDS[rng.gen_range(0..KEY_IDS.len())];
            match rng.gen_range(0..3) {
                0 => {
                    // The record names the step that made it, so a stale one shows.
                    let record = format!("{{\"made\":{step}}}");
                    let res = b.create_key(id, &record).await;
                    if keys.contains_key(id) {
                        assert!(
                            matches!(res, Err(StoreError::KeyExists)),
                            "seed {seed} step {step}: create of existing key {id}: {res:?}"
                        );
                    } else {
                        res.unwrap();
                        keys.insert(id.to_owned(), (record, None));
                    }
                }
                1 => {
                    let found = b.delete_key(id).await.unwrap();
                    let want = keys.remove(id).is_some();
                    assert_eq!(found, want, "seed {seed} step {step}: revoke of {id}");
                }
                _ => {
                    let at = rng.gen_range(0..1000);
                    b.key_used(id, at).await.unwrap();
                    if let Some((_, last)) = keys.get_mut(id) {
                        if last.is_none_or(|l| at > l) {
                            *last = Some(at);
                        }
                    }
                }
            }
        }
        30..=49 => {
            let max = rng.gen_range(1..=3);
            let want = expected_lease(model, max);
            let got = b.lease(QUEUE, max, Duration::ZERO).await.unwrap();
            let ids: Vec<TaskId> = got.iter().map(|l| l.record.id).collect();
            assert_eq!(ids, want, "seed {seed} step {step}: lease order");
            for l in got {
                let m = model.get_mut(&l.record.id).unwrap();
                m.state = TaskState::Active;
                m.attempt += 1;
                m.lease = Some(l.lease_id);
            }
        }
        50..=64 if !active.is_empty() => {
            let id = active[rng.gen_range(0..active.len())];
            let m = model.get_mut(&id).unwrap();
            let ack = rng.gen_bool(0.6);
            let item = if ack {
                Settle::Ack {
                    id,
                    lease_id: m.lease.unwrap(),
                    result: Some(Bytes::from_static(b"1")),
                }
            } else {
                Settle::Fail {
                    id,
                    lease_id: m.lease.unwrap(),
                    error: "e".into(),
                    retry: false,
                }
            };
            let next = b.settle(vec![item]).await.unwrap().remove(0).unwrap();
            let want = if m.cancel_requested {
                TaskState::Canceled
            } else if ack {
                TaskState::Completed
            } else {
                TaskState::Dead
            };
            assert_eq!(next, want, "seed {seed} step {step}: settle of {id}");
            m.state = want;
            m.lease = None;
        }
        65..=72 if !active.is_empty() => {
            let id = active[rng.gen_range(0..active.len())];
            let m = model.get_mut(&id).unwrap();
            let next = b.release(id, m.lease.unwrap()).await.unwrap();
            m.attempt -= 1;
            m.lease = None;
            m.state = if m.cancel_requested {
                TaskState::Canceled
            } else {
                TaskState::Pending
            };
            assert_eq!(next, m.state, "seed {seed} step {step}: release of {id}");
        }
        73..=84 if !any.is_empty() => {
            let id = any[rng.gen_range(0..any.len())];
            let m = model.get_mut(&id).unwrap();
            let res = b.cancel(id).await;
            match m.state {
                TaskState::Pending => {
                    assert_eq!(res.unwrap().record.state, TaskState::Canceled);
                    m.state = TaskState::Canceled;
                }
                TaskState::Active => {
                    assert!(res.unwrap().record.cancel_requested);
                    m.cancel_requested = true;
                }
                _ => assert!(
                    matches!(res, Err(StoreError::Conflict(_))),
                    "seed {seed} step {step}: cancel of terminal {id}"
                ),
            }
        }
        85..=89 if !active.is_empty() => {
            // A stale lease changes nothing.
            let id = active[rng.gen_range(0..active.len())];
            let out = b
                .settle(vec![Settle::Ack {
                    id,
                    lease_id: LeaseId(rng.gen()),
                    result: None,
                }])
                .await
                .unwrap();
            assert!(matches!(out[0], Err(StoreError::StaleLease)));
        }
        _ => {}
    }
}
