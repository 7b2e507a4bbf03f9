//! In-memory dispatch state of the embedded store: per-queue priority order of
//! pending tasks, the timer of scheduled tasks, active leases and their expiries,
//! and the waiters of long-polls.
//!
//! It sits behind one `std::sync::Mutex` (see `EmbeddedBroker`): every critical
//! section is a few map operations, never I/O and never an `.await`, so a plain
//! mutex is cheaper than an actor and cannot deadlock across awaits (the reasoning
//! of mini-redis's `Db`). Memory per queued task is one B-tree entry of 20–24 bytes
//! plus node overhead; payloads and records stay on disk.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::{oneshot, Notify};
use weir_core::{GroupTally, TaskRecord, TaskState};

use super::disk::GroupRecord;

use crate::{Counts, QueueInfo};

/// Index of a queue in `State::queues`.
pub type QueueIdx = u32;

/// One queue's dispatch state.
pub struct QueueState {
    pub name: Arc<str>,
    /// Pending tasks, highest priority first, then oldest id first.
    pub pending: BTreeSet<(Reverse<i32>, u128)>,
    /// Per-state counts (terminal counts include retained tasks only).
    pub counts: [u64; 6],
    /// Woken whenever tasks become pending, for long-polling leases.
    pub notify: Arc<Notify>,
}

/// A task leased to a worker.
pub struct Lease {
    pub lease_id: u64,
    pub queue: QueueIdx,
    pub priority: i32,
    /// When the lease runs out; `u64::MAX` while the lease is being filled.
    pub expires_ms: u64,
    /// The active record; `None` for the instant between taking the task from the
    /// pending index and reading its record from disk (no one holds its lease id yet).
    pub record: Option<TaskRecord>,
    /// A cancel arrived while active (kept here too for the filling instant).
    pub cancel_requested: bool,
    /// The worker that asked for the lease, if it named itself.
    pub worker: Option<Arc<str>>,
}

/// A group that still has open members (finished groups live on disk only).
pub struct GroupMem {
    /// The stored record, rewritten whenever the group's state changes.
    pub record: GroupRecord,
    /// Which members (by position in `record.members`) are terminal.
    pub done: Vec<bool>,
    pub tally: GroupTally,
    /// The other members were already told to cancel.
    pub cascaded: bool,
    /// Waiters were already woken for the group's terminal state.
    pub notified: bool,
}

/// All of the embedded store's mutable dispatch state.
#[derive(Default)]
pub struct State {
    pub queues: Vec<QueueState>,
    pub queue_index: HashMap<Arc<str>, QueueIdx>,
    /// Scheduled tasks by (run_at, id) → (queue, priority).
    pub scheduled: BTreeMap<(u64, u128), (QueueIdx, i32)>,
    /// Active tasks by id.
    pub leases: HashMap<u128, Lease>,
    /// Lease expiries by (expires_at, id).
    pub lease_deadlines: BTreeSet<(u64, u128)>,
    /// Long-polls waiting for a task to become terminal.
    pub waiters: HashMap<u128, Vec<oneshot::Sender<()>>>,
    /// Next lease id to hand out (seeded at random so ids differ across restarts).
    pub next_lease_id: u64,
    /// Groups with open members.
    pub groups: HashMap<u128, GroupMem>,
}

impl State {
    /// The queue's index, creating its state on first use.
    pub fn intern(&mut self, name: &str) -> QueueIdx {
        if let Some(&i) = self.queue_index.get(name) {
            return i;
        }
        let i = self.queues.len() as QueueIdx;
        let name: Arc<str> = Arc::from(name);
        self.queues.push(QueueState {
            name: name.clone(),
            pending: BTreeSet::new(),
            counts: [0; 6],
            notify: Arc::new(Notify::new()),
        });
        self.queue_index.insert(name, i);
        i
    }

    /// Like `intern`, but refuses to create a queue beyond `queues_max`.
    pub fn try_intern(
        &mut self,
        name: &str,
        queues_max: usize,
    ) -> Result<QueueIdx, crate::StoreError> {
        if !self.queue_index.contains_key(name) && self.queues.len() >= queues_max {
            return Err(crate::StoreError::TooManyQueues { limit: queues_max });
        }
        Ok(self.intern(name))
    }

    pub fn queue(&mut self, i: QueueIdx) -> &mut QueueState {
        &mut self.queues[i as usize]
    }

    /// Moves a count from one state to another (either may be `None`).
    pub fn count(&mut self, q: QueueIdx, from: Option<TaskState>, to: Option<TaskState>) {
        let c = &mut self.queues[q as usize].counts;
        if let Some(f) = from {
            debug_assert!(c[f.index()] > 0, "count of {} underflows", f.as_str());
            c[f.index()] = c[f.index()].saturating_sub(1);
        }
        if let Some(t) = to {
            c[t.index()] += 1;
        }
    }

    /// Makes a queued task dispatchable: pending now, or scheduled for later.
    pub fn insert_queued(
        &mut self,
        q: QueueIdx,
        id: u128,
        priority: i32,
        run_at_ms: u64,
        now_ms: u64,
    ) -> TaskState {
        if run_at_ms > now_ms {
            self.scheduled.insert((run_at_ms, id), (q, priority));
            self.count(q, None, Some(TaskState::Scheduled));
            TaskState::Scheduled
        } else {
            let inserted = self.queue(q).pending.insert((Reverse(priority), id));
            debug_assert!(inserted, "task is pending twice");
            self.count(q, None, Some(TaskState::Pending));
            TaskState::Pending
        }
    }

    /// Removes a queued task from whichever index holds it; false if neither does.
    pub fn remove_queued(&mut self, q: QueueIdx, id: u128, priority: i32, run_at_ms: u64) -> bool {
        if self.queue(q).pending.remove(&(Reverse(priority), id)) {
            self.count(q, Some(TaskState::Pending), None);
            return true;
        }
        if self.scheduled.remove(&(run_at_ms, id)).is_some() {
            self.count(q, Some(TaskState::Scheduled), None);
            return true;
        }
        false
    }

    /// Moves every scheduled task that is due into its queue's pending set, and
    /// returns the queues that gained tasks (to be notified after the lock is released).
    pub fn promote_due(&mut self, now_ms: u64, woken: &mut Vec<Arc<Notify>>) {
        while let Some((&(run_at, id), &(q, priority))) = self.scheduled.first_key_value() {
            if run_at > now_ms {
                break;
            }
            self.scheduled.pop_first();
            self.count(q, Some(TaskState::Scheduled), Some(TaskState::Pending));
            let queue = self.queue(q);
            queue.pending.insert((Reverse(priority), id));
            woken.push(queue.notify.clone());
        }
    }

    /// Takes a lease's id and expiry off the books; the lease itself is returned.
    pub fn take_lease(&mut self, id: u128) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.lease_deadlines.remove(&(lease.expires_ms, id));
        self.count(lease.queue, Some(TaskState::Active), None);
        Some(lease)
    }

    /// Wakes every long-poll waiting for this task to end.
    pub fn fire_waiters(&mut self, id: u128) {
        if let Some(waiters) = self.waiters.remove(&id) {
            for w in waiters {
                let _ = w.send(());
            }
        }
    }

    /// The earliest time a timer (scheduled task or lease expiry) is due.
    pub fn next_due_ms(&self) -> Option<u64> {
        let s = self.scheduled.first_key_value().map(|(k, _)| k.0);
        let l = self.lease_deadlines.first().map(|k| k.0);
        match (s, l) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn queue_infos(&self) -> Vec<QueueInfo> {
        let mut v: Vec<QueueInfo> = self
            .queues
            .iter()
            .map(|q| QueueInfo {
                name: q.name.to_string(),
                counts: Counts(q.counts),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}
