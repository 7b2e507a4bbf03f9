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
    pub pending: PendingSet,
    /// Per-state counts (terminal counts include retained tasks only).
    pub counts: [u64; 6],
    /// Woken whenever tasks become pending, for long-polling leases.
    pub notify: Arc<Notify>,
}

/// Pending task ids in dispatch order: by priority (highest first), then by id
/// (oldest first). One B-tree of bare 16-byte ids per priority level rather than one
/// tree of (priority, id) pairs: the pair pads to 32 bytes, and with B-tree node
/// overhead a queued task cost ~75 bytes of RSS; bare ids halve the key size.
#[derive(Default)]
pub struct PendingSet {
    by_priority: BTreeMap<Reverse<i32>, BTreeSet<u128>>,
    len: usize,
}

impl PendingSet {
    pub fn insert(&mut self, priority: i32, id: u128) -> bool {
        let inserted = self
            .by_priority
            .entry(Reverse(priority))
            .or_default()
            .insert(id);
        self.len += usize::from(inserted);
        inserted
    }

    pub fn remove(&mut self, priority: i32, id: u128) -> bool {
        let Some(ids) = self.by_priority.get_mut(&Reverse(priority)) else {
            return false;
        };
        let removed = ids.remove(&id);
        if ids.is_empty() {
            self.by_priority.remove(&Reverse(priority));
        }
        self.len -= usize::from(removed);
        removed
    }

    /// The next task to dispatch, removed.
    pub fn pop_first(&mut self) -> Option<(i32, u128)> {
        let mut level = self.by_priority.first_entry()?;
        let Reverse(priority) = *level.key();
        let id = level
            .get_mut()
            .pop_first()
            .expect("empty levels are removed");
        if level.get().is_empty() {
            level.remove();
        }
        self.len -= 1;
        Some((priority, id))
    }

    pub fn len(&self) -> usize {
        self.len
    }
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
            pending: PendingSet::default(),
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
            let inserted = self.queue(q).pending.insert(priority, id);
            debug_assert!(inserted, "task is pending twice");
            self.count(q, None, Some(TaskState::Pending));
            debug_assert_eq!(
                self.queues[q as usize].pending.len() as u64,
                self.queues[q as usize].counts[TaskState::Pending.index()],
                "pending index and pending count disagree"
            );
            TaskState::Pending
        }
    }

    /// Removes a queued task from whichever index holds it; false if neither does.
    pub fn remove_queued(&mut self, q: QueueIdx, id: u128, priority: i32, run_at_ms: u64) -> bool {
        if self.queue(q).pending.remove(priority, id) {
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
            queue.pending.insert(priority, id);
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

    /// Takes the lease of `id` if `lease_id` is its current, filled lease; `None`
    /// for a stale or unknown lease (nothing changes then).
    pub fn take_held_lease(&mut self, id: u128, lease_id: u64) -> Option<(QueueIdx, TaskRecord)> {
        let held = self
            .leases
            .get(&id)
            .is_some_and(|l| l.lease_id == lease_id && l.record.is_some());
        if !held {
            return None;
        }
        let lease = self.take_lease(id)?;
        Some((lease.queue, lease.record?))
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

#[cfg(test)]
mod tests {
    use super::PendingSet;

    #[test]
    fn pending_pops_by_priority_then_id_and_removes_anywhere() {
        let mut p = PendingSet::default();
        for (prio, id) in [(0, 5), (2, 9), (0, 1), (2, 3), (-1, 0)] {
            assert!(p.insert(prio, id));
        }
        assert!(!p.insert(0, 5), "no duplicates");
        assert!(p.remove(0, 5));
        assert!(!p.remove(0, 5));
        assert!(!p.remove(7, 1), "unknown level");
        assert_eq!(p.len(), 4);
        let order: Vec<(i32, u128)> = std::iter::from_fn(|| p.pop_first()).collect();
        assert_eq!(order, vec![(2, 3), (2, 9), (0, 1), (-1, 0)]);
        assert_eq!(p.len(), 0);
        assert!(p.by_priority.is_empty(), "empty levels are dropped");
    }
}
