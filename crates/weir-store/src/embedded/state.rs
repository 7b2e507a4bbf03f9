//! In-memory dispatch state of the embedded store: per-queue priority order of
//! pending tasks, the timer of scheduled tasks, active leases and their expiries,
//! and the waiters of long-polls (including lease long-polls on queues that do not
//! exist yet, which wait by name without creating the queue).
//!
//! It sits behind one `std::sync::Mutex` (see `EmbeddedBroker`): every critical
//! section is a few map operations, never I/O and never an `.await`, so a plain
//! mutex is cheaper than an actor and cannot deadlock across awaits (the reasoning
//! of mini-redis's `Db`). Memory per queued task is one B-tree entry of 20–24 bytes
//! plus node overhead; payloads and records stay on disk.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use tokio::sync::{oneshot, Notify};
use weir_core::validate::InvalidInput;
use weir_core::{GroupTally, QueueConfig, TaskRecord, TaskState};

use super::disk::GroupRecord;

use crate::{Counts, QueueInfo, Schedule, StoredKey, Totals};

/// Index of a queue in `State::queues`. A deleted queue's slot is a tombstone
/// until `intern` reuses it for a new queue; `delete_queue` runs only when nothing
/// outside `State` holds the index (see there).
pub type QueueIdx = u32;

/// One queue's dispatch state.
pub struct QueueState {
    pub name: Arc<str>,
    /// Pending tasks, highest priority first, then oldest id first.
    pub pending: PendingSet,
    /// Per-state counts (terminal counts include retained tasks only).
    pub counts: [u64; 6],
    /// Its tasks in each state but pending (which `pending` orders), for
    /// browsing, keyed by `(score, id)` and walked highest first: the score is
    /// the run time of a scheduled task, the lease expiry of an active one (0
    /// while its lease is being filled), the retention end of a completed one,
    /// and 0 for dead and canceled ones (newest id first). A task's score only
    /// grows while it stays in a state, which keeps a walk from listing it twice.
    /// Kept by `State::count` (and `State::relist`), so each set holds exactly
    /// what its count counts. The Redis store walks its own indexes in this order.
    pub listed: [BTreeSet<(u64, u128)>; 6],
    /// Woken whenever tasks become pending, for long-polling leases.
    pub notify: Arc<Notify>,
    /// Flow-control settings.
    pub config: QueueConfig,
    /// Where the config's frame is in the log (`None` while it has no setting).
    pub config_loc: Option<u64>,
    /// The dispatch rate limiter's state (`weir_core::flow::Gcra`): memory only, a
    /// restart starts with a full bucket.
    pub tat_ms: f64,
    /// What its tasks did since this process opened the store (memory only: a
    /// restart starts from zero, as a Prometheus counter may; carried over a heal).
    /// Counted once a round's commit succeeded, and at lease for `leased`.
    pub totals: Totals,
}

impl QueueState {
    /// Whether task `id` is listed in `state` with `score` (see `listed`).
    pub fn lists(&self, state: TaskState, score: u64, id: u128) -> bool {
        state != TaskState::Pending
            && self.listed[state.index()].contains(&(scored(state, score), id))
    }

    fn new(name: Arc<str>, notify: Arc<Notify>) -> QueueState {
        QueueState {
            name,
            pending: PendingSet::default(),
            counts: [0; 6],
            listed: Default::default(),
            notify,
            config: QueueConfig::default(),
            config_loc: None,
            tat_ms: 0.0,
            totals: Totals::default(),
        }
    }

    /// How many tasks a lease for `want` may take now, and, when the rate is what
    /// holds it back, when the next one may go (ms).
    pub fn allowance(&self, want: u64, now_ms: u64) -> (u64, Option<u64>) {
        let room = self
            .config
            .room(want, self.counts[TaskState::Active.index()]);
        match self.config.gcra() {
            Some(g) if room > 0 => {
                let now = now_ms as f64;
                let n = g.available(self.tat_ms, now).min(room);
                let next = (n < room).then(|| g.next_ms(self.tat_ms, now));
                (n, next)
            }
            _ => (room, None),
        }
    }

    /// Spends `n` tokens of the rate limiter (the tasks a lease took).
    pub fn spend(&mut self, n: u64, now_ms: u64) {
        if let Some(g) = self.config.gcra() {
            if n > 0 {
                self.tat_ms = g.spend(self.tat_ms, now_ms as f64, n);
            }
        }
    }
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

    /// Entries in dispatch order, after `(priority, id)` if given.
    pub fn after(&self, after: Option<(i32, u128)>) -> impl Iterator<Item = (i32, u128)> + '_ {
        use std::ops::Bound::{Excluded, Unbounded};
        let levels = match after {
            Some((p, _)) => self.by_priority.range(Reverse(p)..),
            None => self.by_priority.range(..),
        };
        levels.flat_map(move |(&Reverse(p), ids)| {
            let from = match after {
                Some((ap, aid)) if ap == p => Excluded(aid),
                _ => Unbounded,
            };
            ids.range((from, Unbounded)).map(move |&id| (p, id))
        })
    }

    pub fn contains(&self, priority: i32, id: u128) -> bool {
        self.by_priority
            .get(&Reverse(priority))
            .is_some_and(|ids| ids.contains(&id))
    }

    /// The id that `pop_first` would take, left in place.
    pub fn first(&self) -> Option<u128> {
        self.by_priority
            .values()
            .next()
            .and_then(|ids| ids.first().copied())
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

/// A task leased to a worker.
pub struct Lease {
    pub lease_id: u128,
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

impl Lease {
    /// Its score in the queue's active browsing set (`QueueState::listed`): its
    /// expiry, 0 while it is being filled (so filling only raises it).
    pub fn listed_ms(&self) -> u64 {
        if self.expires_ms == u64::MAX {
            0
        } else {
            self.expires_ms
        }
    }
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

/// Lease long-polls waiting on a queue that does not exist, under its name.
pub struct Parked {
    /// Woken by the queue's enqueues once the queue exists: `intern` adopts it as
    /// the new queue's `notify`.
    pub notify: Arc<Notify>,
    /// How many long-polls are registered; the entry goes when the last one leaves.
    pub waiters: usize,
}

/// All of the embedded store's mutable dispatch state.
#[derive(Default)]
pub struct State {
    /// Queue slots by `QueueIdx`; a deleted queue leaves a tombstone (an empty name,
    /// never a valid queue name) whose index is in `free_queues`.
    pub queues: Vec<QueueState>,
    /// Live queues by name: the only way to a queue's index.
    pub queue_index: HashMap<Arc<str>, QueueIdx>,
    /// Tombstoned slots of `queues`, reused before the vector grows.
    pub free_queues: Vec<QueueIdx>,
    /// Lease long-polls on queues that do not exist, by name; at most `queues_max`
    /// names (the lease path passes the limit). Never listed, never a queue.
    pub parked: HashMap<Arc<str>, Parked>,
    /// Woken whenever a queue is created: the lease long-polls that found `parked`
    /// full wait on it, then look again.
    pub parked_overflow: Arc<Notify>,
    /// Scheduled tasks by (run_at, id) → (queue, priority).
    pub scheduled: BTreeMap<(u64, u128), (QueueIdx, i32)>,
    /// Active tasks by id.
    pub leases: IdMap<Lease>,
    /// Lease expiries by (expires_at, id).
    pub lease_deadlines: BTreeSet<(u64, u128)>,
    /// Long-polls waiting for a task to become terminal.
    pub waiters: IdMap<Vec<oneshot::Sender<()>>>,
    /// Groups with open members.
    pub groups: IdMap<GroupMem>,
    /// Where every task the store holds (retained ones included) is in the log:
    /// written by the writer after a commit, read by every reader.
    pub locs: Locs,
    /// Where every group's latest record is in the log.
    pub group_locs: IdMap<u64>,
    /// How many entries of `locs` and `group_locs` point into each segment (a
    /// segment no entry points into holds nothing anyone reads, see
    /// `writer::collect`), and how many ever did.
    pub segs: SegRefs,
    /// Idempotency keys of the tasks that hold them: `queue \0 key` → task id.
    pub idem: HashMap<Box<str>, u128>,
    /// Retained completed and canceled tasks by (expires_at, id) → their queue
    /// (which cannot be deleted while it counts them), state, and whether they hold
    /// an idempotency key.
    pub expiry: BTreeMap<(u64, u128), (QueueIdx, TaskState, bool)>,
    /// Finished groups by (expires_at, id).
    pub group_expiry: BTreeSet<(u64, u128)>,
    /// Periodic-task schedules by name, with where each one's frame is.
    pub schedules: BTreeMap<String, (Schedule, u64)>,
    /// API keys by id, with where each one's latest frame is (a revoked key is
    /// not here).
    pub keys: BTreeMap<String, (StoredKey, u64)>,
}

/// Where a task's frames are in the log (`weir_log::Loc` as `u64`): the frame with
/// its payload (the one that created it, or its copy), and its latest record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskLoc {
    pub first: u64,
    pub last: u64,
}

/// A task id as the key of `Locs`: its two halves, so the key is 8-aligned and a
/// bucket with a `u64` value is 24 bytes (a `u128` key is 16-aligned: 32). Hashed as
/// the `u128` it is, with `IdHasher`'s mixing.
#[derive(Clone, Copy, PartialEq, Eq)]
struct IdKey([u64; 2]);

impl IdKey {
    fn new(id: u128) -> IdKey {
        IdKey([(id >> 64) as u64, id as u64])
    }

    fn id(self) -> u128 {
        (u128::from(self.0[0]) << 64) | u128::from(self.0[1])
    }
}

impl Hash for IdKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(self.id());
    }
}

/// The flag of a `Locs` map value that is not a location but `slot << 1 | SPLIT`.
const SPLIT: u64 = 1;

/// Where every task's frames are (`TaskLoc`), packed for memory: this is the one
/// index with an entry per task the store holds, ~10M for a large backlog.
///
/// A location (`weir_log::Loc` as `u64`) always has its low three bits clear:
/// frames start at multiples of 8. A task whose payload frame is also its latest
/// (every task never updated: new, pending, scheduled, leased) maps to that
/// location; a task with a later record maps to `slot << 1 | SPLIT`, an index into
/// `split` holding both. So a never-updated task costs one 24-byte bucket (with
/// `TaskLoc` values keyed by `u128`, 32), an updated one a bucket and 16 bytes.
#[derive(Default)]
pub struct Locs {
    /// Task id → its one location, or a `split` slot.
    map: HashMap<IdKey, u64, BuildHasherDefault<IdHasher>>,
    /// Locations of tasks whose latest frame is not their payload frame.
    split: Vec<TaskLoc>,
    /// Unused slots of `split`, reused before it grows.
    free: Vec<u32>,
}

impl Locs {
    fn decode(split: &[TaskLoc], v: u64) -> TaskLoc {
        if v & SPLIT == 0 {
            TaskLoc { first: v, last: v }
        } else {
            split[(v >> 1) as usize]
        }
    }

    /// The task's locations.
    pub fn get(&self, id: u128) -> Option<TaskLoc> {
        self.map
            .get(&IdKey::new(id))
            .map(|&v| Locs::decode(&self.split, v))
    }

    pub fn contains_key(&self, id: &u128) -> bool {
        self.map.contains_key(&IdKey::new(*id))
    }

    /// How many tasks.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Sets the locations of a task's new frame at `loc` (`first`: it carries the
    /// payload) and returns the ones it had; an update of an unknown task (purged in
    /// the same round) changes nothing and returns `Err(())`.
    fn place(&mut self, id: u128, loc: u64, first: bool) -> Result<Option<TaskLoc>, ()> {
        use std::collections::hash_map::Entry;
        debug_assert_eq!(loc & 7, 0, "frames are 8-aligned");
        // One lookup: this runs for every frame of a round and of a replay.
        match self.map.entry(IdKey::new(id)) {
            Entry::Occupied(mut e) => {
                let v = *e.get();
                let old = Locs::decode(&self.split, v);
                let payload = if first { loc } else { old.first };
                if payload == loc {
                    if v & SPLIT != 0 {
                        self.free.push((v >> 1) as u32);
                    }
                    *e.get_mut() = loc;
                } else {
                    let new = TaskLoc {
                        first: payload,
                        last: loc,
                    };
                    if v & SPLIT != 0 {
                        self.split[(v >> 1) as usize] = new;
                    } else {
                        let slot = match self.free.pop() {
                            Some(slot) => {
                                self.split[slot as usize] = new;
                                slot
                            }
                            None => {
                                self.split.push(new);
                                u32::try_from(self.split.len() - 1).expect("fewer than 2^32 tasks")
                            }
                        };
                        *e.get_mut() = (u64::from(slot) << 1) | SPLIT;
                    }
                }
                Ok(Some(old))
            }
            Entry::Vacant(_) if !first => Err(()),
            Entry::Vacant(e) => {
                e.insert(loc);
                Ok(None)
            }
        }
    }

    /// Removes a task, returning its locations.
    fn remove(&mut self, id: u128) -> Option<TaskLoc> {
        let v = self.map.remove(&IdKey::new(id))?;
        let old = Locs::decode(&self.split, v);
        if v & SPLIT != 0 {
            self.free.push((v >> 1) as u32);
        }
        Some(old)
    }
}

/// A map keyed by task or group id. Ids are made here (48-bit time, 80 random
/// bits) and never chosen by a client for an insert, so a multiply-mix of their
/// two halves hashes them well; SipHash cost the writer ~4% of its time.
pub type IdMap<V> = HashMap<u128, V, BuildHasherDefault<IdHasher>>;

/// The hasher of `IdMap`.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u128` keys are hashed here; anything else still hashes (FNV-1a).
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u128(&mut self, v: u128) {
        let mixed = (v as u64) ^ ((v >> 64) as u64).rotate_left(32);
        self.0 = mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// References into the log's segments, by segment number: a window from the oldest
/// segment still counted, so the hot path indexes instead of searching.
#[derive(Default)]
pub struct SegRefs {
    base: u32,
    /// (references now, references ever) of segments `base..`.
    counts: VecDeque<(u64, u64)>,
}

impl SegRefs {
    fn slot(&mut self, seg: u32) -> &mut (u64, u64) {
        if self.counts.is_empty() {
            self.base = seg;
        }
        if seg < self.base {
            // Older than the window (a rebuilt state meets old frames): widen it.
            for _ in seg..self.base {
                self.counts.push_front((0, 0));
            }
            self.base = seg;
        }
        let i = (seg - self.base) as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, (0, 0));
        }
        &mut self.counts[i]
    }

    fn add(&mut self, seg: u32) {
        let c = self.slot(seg);
        c.0 += 1;
        c.1 += 1;
    }

    fn sub(&mut self, seg: u32) {
        let c = self.slot(seg);
        debug_assert!(c.0 > 0, "segment {seg} has no references to drop");
        c.0 = c.0.saturating_sub(1);
    }

    /// (references now, references ever) of `seg`.
    pub fn get(&self, seg: u32) -> (u64, u64) {
        seg.checked_sub(self.base)
            .and_then(|i| self.counts.get(i as usize))
            .copied()
            .unwrap_or((0, 0))
    }

    /// Forgets every segment up to `seg` (deleted).
    pub fn forget_through(&mut self, seg: u32) {
        while !self.counts.is_empty() && self.base <= seg {
            debug_assert_eq!(self.counts[0].0, 0, "a deleted segment had references");
            self.counts.pop_front();
            self.base += 1;
        }
    }
}

/// The segment a `Loc` (as `u64`) is in.
pub fn seg_of(loc: u64) -> u32 {
    weir_log::Loc::from_u64(loc).seg
}

/// The key of `idem`.
pub fn idem_key(queue: &str, key: &str) -> Box<str> {
    let mut k = String::with_capacity(queue.len() + 1 + key.len());
    k.push_str(queue);
    k.push('\0');
    k.push_str(key);
    k.into_boxed_str()
}

/// A task's state and its score there (`QueueState::listed`).
pub type Listed = (TaskState, u64);

/// The score a state keeps: dead and canceled tasks are ordered by id alone.
fn scored(state: TaskState, score: u64) -> u64 {
    match state {
        TaskState::Scheduled | TaskState::Active | TaskState::Completed => score,
        TaskState::Pending | TaskState::Dead | TaskState::Canceled => 0,
    }
}

/// A pending page's cursor: `<priority>.<32 hex digits of the id>`.
fn parse_pending_cursor(c: &str) -> Option<(i32, u128)> {
    let (p, id) = c.split_once('.')?;
    Some((p.parse().ok()?, parse_id_cursor(id)?))
}

/// Another state's cursor: `<score>_<32 hex digits of the id>` of the last task
/// listed (not a pending cursor's '.', so neither passes for the other).
fn parse_scored_cursor(c: &str) -> Option<(u64, u128)> {
    let (score, id) = c.split_once('_')?;
    if !score.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((score.parse().ok()?, parse_id_cursor(id)?))
}

/// The id part of a cursor: 32 hex digits.
fn parse_id_cursor(c: &str) -> Option<u128> {
    if c.len() != 32 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(c, 16).ok()
}

impl State {
    fn add_ref(&mut self, loc: u64) {
        self.segs.add(seg_of(loc));
    }

    fn drop_ref(&mut self, loc: u64) {
        self.segs.sub(seg_of(loc));
    }

    /// Records a task's new frame: `first` if it carries the payload (a new task, or
    /// a copy of a live one), else an update of its record.
    pub fn place_task(&mut self, id: u128, loc: u64, first: bool) {
        let Ok(old) = self.locs.place(id, loc, first) else {
            // An update of a task that is gone (purged in this very round).
            return;
        };
        match old {
            Some(old) if !first => {
                self.add_ref(loc);
                self.drop_ref(old.last);
            }
            Some(old) => {
                self.add_ref(loc);
                self.add_ref(loc);
                self.drop_ref(old.first);
                self.drop_ref(old.last);
            }
            None => {
                self.add_ref(loc);
                self.add_ref(loc);
            }
        }
    }

    /// Forgets a task's frames (retention removed it).
    pub fn forget_task(&mut self, id: u128) -> Option<TaskLoc> {
        let old = self.locs.remove(id)?;
        self.drop_ref(old.first);
        self.drop_ref(old.last);
        Some(old)
    }

    pub fn place_group(&mut self, id: u128, loc: u64) {
        self.add_ref(loc);
        if let Some(old) = self.group_locs.insert(id, loc) {
            self.drop_ref(old);
        }
    }

    pub fn forget_group(&mut self, id: u128) {
        if let Some(old) = self.group_locs.remove(&id) {
            self.drop_ref(old);
        }
    }

    /// The queue's index, creating its state on first use (only for tasks: an
    /// enqueue, or recovery of tasks found on disk).
    pub fn intern(&mut self, name: &str) -> QueueIdx {
        if let Some(&i) = self.queue_index.get(name) {
            return i;
        }
        debug_assert!(!name.is_empty(), "an empty name marks a tombstone");
        let name: Arc<str> = Arc::from(name);
        // Lease long-polls parked on the name are woken by this queue's enqueues.
        let notify = match self.parked.get(&name) {
            Some(p) => p.notify.clone(),
            None => Arc::new(Notify::new()),
        };
        let queue = QueueState::new(name.clone(), notify);
        let i = match self.free_queues.pop() {
            Some(i) => {
                self.queues[i as usize] = queue;
                i
            }
            None => {
                self.queues.push(queue);
                (self.queues.len() - 1) as QueueIdx
            }
        };
        self.queue_index.insert(name, i);
        self.parked_overflow.notify_waiters();
        i
    }

    /// Like `intern`, but refuses to create a queue beyond `queues_max`.
    pub fn try_intern(
        &mut self,
        name: &str,
        queues_max: usize,
    ) -> Result<QueueIdx, crate::StoreError> {
        if !self.queue_index.contains_key(name) && self.queue_index.len() >= queues_max {
            return Err(crate::StoreError::TooManyQueues { limit: queues_max });
        }
        Ok(self.intern(name))
    }

    pub fn queue(&mut self, i: QueueIdx) -> &mut QueueState {
        let q = &mut self.queues[i as usize];
        debug_assert!(!q.name.is_empty(), "queue index {i} is a tombstone");
        q
    }

    /// Removes an empty queue (no task in any state, retained ones included) and its
    /// config, tombstoning its slot for reuse. Its lease long-polls are woken so
    /// that they park under the name instead (see `lease_notify`). Answers whether
    /// the queue had a config on disk (the caller writes its end).
    ///
    /// Only the writer calls this, after a round has published everything it
    /// planned: then no `QueueIdx` of this queue lives outside `State` (every task
    /// the round touched is counted again, and a count of zero means no pending
    /// entry, scheduled timer entry or lease refers to it).
    pub fn delete_queue(&mut self, name: &str) -> Result<bool, crate::StoreError> {
        let Some(&i) = self.queue_index.get(name) else {
            return Err(crate::StoreError::QueueNotFound);
        };
        let counts = self.queues[i as usize].counts;
        if counts.iter().any(|&c| c > 0) {
            return Err(crate::StoreError::QueueNotEmpty {
                queue: name.to_owned(),
                counts: Counts(counts),
            });
        }
        debug_assert_eq!(self.queues[i as usize].pending.len(), 0);
        self.queue_index.remove(name);
        let dead = std::mem::replace(
            &mut self.queues[i as usize],
            QueueState::new(Arc::from(""), Arc::new(Notify::new())),
        );
        self.free_queues.push(i);
        dead.notify.notify_waiters();
        if let Some(loc) = dead.config_loc {
            self.drop_ref(loc);
        }
        Ok(dead.config_loc.is_some())
    }

    /// Records a schedule's frame (the latest of its name wins).
    pub fn place_schedule(&mut self, s: Schedule, loc: u64) {
        self.add_ref(loc);
        if let Some((_, old)) = self.schedules.insert(s.name.clone(), (s, loc)) {
            self.drop_ref(old);
        }
    }

    /// Forgets an ended schedule.
    pub fn end_schedule(&mut self, name: &str) {
        if let Some((_, old)) = self.schedules.remove(name) {
            self.drop_ref(old);
        }
    }

    /// Records an API key's frame (the latest of its id wins).
    pub fn place_key(&mut self, k: StoredKey, loc: u64) {
        self.add_ref(loc);
        if let Some((_, old)) = self.keys.insert(k.id.clone(), (k, loc)) {
            self.drop_ref(old);
        }
    }

    /// Forgets a revoked API key: its frames become garbage for the GC.
    pub fn end_key(&mut self, id: &str) {
        if let Some((_, old)) = self.keys.remove(id) {
            self.drop_ref(old);
        }
    }

    /// Sets a queue's config; `loc` is its frame (`None`: a frame ending the
    /// config, or none). Wakes its parked leases so they judge the new settings.
    pub fn place_config(&mut self, q: QueueIdx, config: QueueConfig, loc: Option<u64>) {
        let loc = loc.filter(|_| !config.is_default());
        if let Some(l) = loc {
            self.add_ref(l);
        }
        let queue = self.queue(q);
        let old = std::mem::replace(&mut queue.config_loc, loc);
        queue.config = config;
        queue.notify.notify_waiters();
        if let Some(l) = old {
            self.drop_ref(l);
        }
    }

    /// The `Notify` a lease long-poll on `name` waits on: the queue's own if it
    /// exists; else the name's entry in `parked`, registering the caller there once
    /// (`*parked` records that, for `unpark`); else, with `parked` full at
    /// `parked_max` names, `parked_overflow`.
    pub fn lease_notify(
        &mut self,
        name: &str,
        parked: &mut bool,
        parked_max: usize,
    ) -> Arc<Notify> {
        if let Some(&i) = self.queue_index.get(name) {
            return self.queues[i as usize].notify.clone();
        }
        if let Some(p) = self.parked.get_mut(name) {
            if !*parked {
                p.waiters += 1;
                *parked = true;
            }
            return p.notify.clone();
        }
        debug_assert!(!*parked, "a registered waiter's entry is gone");
        if self.parked.len() >= parked_max {
            return self.parked_overflow.clone();
        }
        let notify = Arc::new(Notify::new());
        self.parked.insert(
            Arc::from(name),
            Parked {
                notify: notify.clone(),
                waiters: 1,
            },
        );
        *parked = true;
        notify
    }

    /// Whether `notify` is still the one a lease long-poll on `name` must wait on
    /// (a queue created or deleted since `lease_notify` changes it).
    pub fn is_lease_notify(&self, name: &str, notify: &Arc<Notify>) -> bool {
        let current = match self.queue_index.get(name) {
            Some(&i) => &self.queues[i as usize].notify,
            None => match self.parked.get(name) {
                Some(p) => &p.notify,
                None => &self.parked_overflow,
            },
        };
        Arc::ptr_eq(current, notify)
    }

    /// A long-poll registered by `lease_notify` leaves.
    pub fn unpark(&mut self, name: &str) {
        if let Some(p) = self.parked.get_mut(name) {
            p.waiters -= 1;
            if p.waiters == 0 {
                self.parked.remove(name);
            }
        } else {
            debug_assert!(false, "unpark of {name} without its entry");
        }
    }

    /// Moves task `id` from one state's count (and browsing set) to another's
    /// (either may be `None`). Each state comes with the task's score in it (see
    /// `QueueState::listed`; ignored where the state's score is always 0).
    pub fn count(&mut self, q: QueueIdx, id: u128, from: Option<Listed>, to: Option<Listed>) {
        let queue = &mut self.queues[q as usize];
        let c = &mut queue.counts;
        if let Some((f, score)) = from {
            debug_assert!(c[f.index()] > 0, "count of {} underflows", f.as_str());
            c[f.index()] = c[f.index()].saturating_sub(1);
            if f != TaskState::Pending {
                let was = queue.listed[f.index()].remove(&(scored(f, score), id));
                debug_assert!(was, "task {id:x} was not listed {}", f.as_str());
            }
        }
        if let Some((t, score)) = to {
            c[t.index()] += 1;
            if t != TaskState::Pending {
                let new = queue.listed[t.index()].insert((scored(t, score), id));
                debug_assert!(new, "task {id:x} was listed {} already", t.as_str());
            }
        }
    }

    /// Moves an active task to its new lease expiry in the browsing order (a
    /// lease filled or extended: `to >= from`).
    pub fn relist_active(&mut self, q: QueueIdx, id: u128, from: u64, to: u64) {
        debug_assert!(to >= from, "an active task's score only grows");
        if to == from {
            return;
        }
        let set = &mut self.queues[q as usize].listed[TaskState::Active.index()];
        let was = set.remove(&(from, id));
        debug_assert!(was, "task {id:x} was not listed active at {from}");
        set.insert((to, id));
    }

    /// Up to `limit` ids of queue `q`'s tasks in `state` after `cursor` (see
    /// `Broker::browse`), and the cursor after the last one if more follow.
    pub fn browse(
        &self,
        q: QueueIdx,
        state: TaskState,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<u128>, Option<String>), InvalidInput> {
        let queue = &self.queues[q as usize];
        let bad = || InvalidInput::invalid("cursor", "not a cursor of this listing");
        if state == TaskState::Pending {
            let after = cursor
                .map(|c| parse_pending_cursor(c).ok_or_else(bad))
                .transpose()?;
            let mut it = queue.pending.after(after);
            let page: Vec<(i32, u128)> = it.by_ref().take(limit).collect();
            let more = it.next().is_some();
            let next = page
                .last()
                .filter(|_| more)
                .map(|&(p, id)| format!("{p}.{id:032x}"));
            return Ok((page.into_iter().map(|(_, id)| id).collect(), next));
        }
        let set = &queue.listed[state.index()];
        let before = cursor
            .map(|c| parse_scored_cursor(c).ok_or_else(bad))
            .transpose()?;
        use std::ops::Bound::{Excluded, Unbounded};
        let upper = before.map_or(Unbounded, Excluded);
        let mut it = set.range((Unbounded, upper)).rev();
        let page: Vec<(u64, u128)> = it.by_ref().take(limit).copied().collect();
        let more = it.next().is_some();
        let next = page
            .last()
            .filter(|_| more)
            .map(|&(score, id)| format!("{score}_{id:032x}"));
        Ok((page.into_iter().map(|(_, id)| id).collect(), next))
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
            self.count(q, id, None, Some((TaskState::Scheduled, run_at_ms)));
            TaskState::Scheduled
        } else {
            let inserted = self.queue(q).pending.insert(priority, id);
            debug_assert!(inserted, "task is pending twice");
            self.count(q, id, None, Some((TaskState::Pending, 0)));
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
            self.count(q, id, Some((TaskState::Pending, 0)), None);
            return true;
        }
        if self.scheduled.remove(&(run_at_ms, id)).is_some() {
            self.count(q, id, Some((TaskState::Scheduled, run_at_ms)), None);
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
            self.count(
                q,
                id,
                Some((TaskState::Scheduled, run_at)),
                Some((TaskState::Pending, 0)),
            );
            let queue = self.queue(q);
            queue.pending.insert(priority, id);
            woken.push(queue.notify.clone());
        }
    }

    /// Takes a lease's id and expiry off the books; the lease itself is returned.
    pub fn take_lease(&mut self, id: u128) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.lease_deadlines.remove(&(lease.expires_ms, id));
        self.count(
            lease.queue,
            id,
            Some((TaskState::Active, lease.listed_ms())),
            None,
        );
        let queue = &self.queues[lease.queue as usize];
        if queue.config.max_in_flight.is_some() {
            // A slot is free: one parked lease may take it (a waiter that leaves
            // without taking a notification passes it on, as tokio's `Notify` does).
            queue.notify.notify_one();
        }
        Some(lease)
    }

    /// Takes the lease of `id` if `lease_id` is its current, filled lease; `None`
    /// for a stale or unknown lease (nothing changes then).
    pub fn take_held_lease(&mut self, id: u128, lease_id: u128) -> Option<(QueueIdx, TaskRecord)> {
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
            .filter(|q| !q.name.is_empty())
            .map(|q| QueueInfo {
                name: q.name.to_string(),
                counts: Counts(q.counts),
                config: q.config,
                totals: q.totals,
                oldest_pending_age_ms: None,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use weir_core::TaskState;

    use std::collections::HashMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::{PendingSet, State, TaskLoc};
    use crate::StoreError;

    /// `place_task` and `forget_task` against a plain map of `TaskLoc`s: the packed
    /// `locs` (one location, or a split slot reused after it is freed) answers the
    /// same, and every segment's reference count is what the model's entries give.
    #[test]
    fn packed_locs_match_a_plain_map_and_count_segment_references_exactly() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut st = State::default();
            let mut model: HashMap<u128, TaskLoc> = HashMap::new();
            let mut next = 1u64;
            for step in 0..5000 {
                let id = (u128::from(rng.gen_range(0..200u32)) << 70) | 7;
                // Log order: every new frame is after the ones before.
                next += rng.gen_range(1..50);
                let loc = ((next / 64) << 32) | ((next % 64) * 8);
                match rng.gen_range(0..10) {
                    0..4 => {
                        st.place_task(id, loc, true);
                        model.insert(
                            id,
                            TaskLoc {
                                first: loc,
                                last: loc,
                            },
                        );
                    }
                    4..8 => {
                        st.place_task(id, loc, false);
                        if let Some(l) = model.get_mut(&id) {
                            l.last = loc;
                        }
                    }
                    _ => {
                        assert_eq!(
                            st.forget_task(id),
                            model.remove(&id),
                            "seed {seed} step {step}"
                        );
                    }
                }
                assert_eq!(
                    st.locs.get(id),
                    model.get(&id).copied(),
                    "seed {seed} step {step}"
                );
            }
            assert_eq!(st.locs.len(), model.len());
            for (&id, &l) in &model {
                assert_eq!(st.locs.get(id), Some(l), "seed {seed}");
                assert!(st.locs.contains_key(&id));
            }
            let mut refs: HashMap<u32, u64> = HashMap::new();
            for l in model.values() {
                *refs.entry(super::seg_of(l.first)).or_default() += 1;
                *refs.entry(super::seg_of(l.last)).or_default() += 1;
            }
            for seg in 0..=(next / 64) as u32 + 1 {
                assert_eq!(
                    st.segs.get(seg).0,
                    refs.get(&seg).copied().unwrap_or(0),
                    "seed {seed}: references into segment {seg}"
                );
            }
            // A side slot exactly for each task whose two frames differ.
            let split = model.values().filter(|l| l.first != l.last).count();
            assert_eq!(
                st.locs.split.len() - st.locs.free.len(),
                split,
                "seed {seed}: side slots in use"
            );
            assert!(st.locs.split.len() <= model.len(), "freed slots are reused");
        }
    }

    #[test]
    fn deleted_queue_slots_are_tombstones_reused_by_the_next_queue() {
        let mut st = State::default();
        let a = st.intern("a");
        let b = st.intern("b");
        st.insert_queued(b, 7, 0, 0, 0);
        assert!(matches!(
            st.delete_queue("b"),
            Err(StoreError::QueueNotEmpty { .. })
        ));
        assert!(matches!(
            st.delete_queue("zz"),
            Err(StoreError::QueueNotFound)
        ));
        st.delete_queue("a").unwrap();
        assert!(matches!(
            st.delete_queue("a"),
            Err(StoreError::QueueNotFound)
        ));
        let names =
            |st: &State| -> Vec<String> { st.queue_infos().into_iter().map(|q| q.name).collect() };
        assert_eq!(names(&st), ["b"]);
        let c = st.intern("c");
        assert_eq!(c, a, "the free slot is reused");
        assert_eq!(st.queues.len(), 2);
        assert_eq!(st.queue(c).counts, [0; 6]);
        assert_eq!(names(&st), ["b", "c"]);
        assert_eq!(st.queues[b as usize].counts[TaskState::Pending.index()], 1);
    }

    #[test]
    fn parked_waiters_are_bounded_and_adopted_by_the_queue() {
        let mut st = State::default();
        let (mut p1, mut p2, mut p3) = (false, false, false);
        let n1 = st.lease_notify("q1", &mut p1, 1);
        assert!(p1);
        let again = st.lease_notify("q1", &mut p1, 1);
        assert!(Arc::ptr_eq(&n1, &again));
        assert_eq!(st.parked["q1"].waiters, 1, "one registration per long-poll");
        let n1b = st.lease_notify("q1", &mut p2, 1);
        assert!(Arc::ptr_eq(&n1, &n1b));
        assert_eq!(st.parked["q1"].waiters, 2);
        // Full: another name waits on the overflow notify, unregistered.
        let n3 = st.lease_notify("q3", &mut p3, 1);
        assert!(!p3);
        assert!(Arc::ptr_eq(&n3, &st.parked_overflow));
        assert!(st.is_lease_notify("q3", &n3));
        // The first enqueue adopts the parked notify; nothing is a queue before it.
        assert!(st.queue_infos().is_empty());
        let q = st.intern("q1");
        assert!(Arc::ptr_eq(&st.queue(q).notify, &n1));
        assert!(st.is_lease_notify("q1", &n1));
        st.unpark("q1");
        st.unpark("q1");
        assert!(st.parked.is_empty());
        // A deleted queue's waiters must choose again.
        let own = st.lease_notify("q1", &mut false, 1);
        st.delete_queue("q1").unwrap();
        assert!(!st.is_lease_notify("q1", &own));
    }

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
