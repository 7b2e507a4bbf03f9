//! The Redis store: a second backend behind `Broker`, on one Redis or a Redis
//! Cluster, shared by many weir servers. Every transition is one Lua script
//! (`scripts/`), fenced by the lease id stored on the task; time comes from
//! Redis `TIME`; each queue's keys share one hash tag (`keys`); wake-ups cross
//! servers by pub/sub (`wake`); one elected server per interval sweeps
//! (`sweep`). docs/design/redis-store.md has the key layout and the reasoning.

mod conn;
mod decode;
pub mod keys;
mod scripts;
mod sweep;
mod wake;
pub(crate) use wake::RECHECK_MS_MIN;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt};
use rand::Rng;
use redis::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use weir_core::machine::TransitionError;
use weir_core::validate::InvalidInput;
use weir_core::{
    Backoff, ConfigPatch, GroupState, Limits, QueueConfig, TaskId, TaskRecord, TaskState,
};

use crate::clock::{Clock, SystemClock};
use crate::{
    Broker, Counts, EnqueueTask, Enqueued, GroupCreated, GroupView, Heartbeat, LeaseId, Leased,
    QueueInfo, Schedule, Scope, Settle, StoreError, StoredKey, TaskPage, TaskView, Totals,
};
use conn::{Conn, Health, Redis};
use decode::{array, bug, bytes, int, opt_u64, text, Fields};
use keys::{queue_slot, slot_of, Keys};
use scripts::Scripts;
use wake::Waiters;

/// Most queues swept at once by the elected sweeper.
const SWEEP_CONCURRENCY_MAX: usize = 8;
/// A queue's config fields in its meta hash (`decode::config` reads them in this
/// order; `configure.lua` and `lease.lua` name them too).
const CONFIG_FIELDS: [&str; 5] = ["cr", "cb", "cf", "cp", "cz"];
/// The queue meta's totals (`Totals`, in its field order): enqueued, leased,
/// completed, dead, canceled, retried, lease expired.
const TOTALS_FIELDS: [&str; 7] = ["te", "tl", "tc", "td", "tx", "tr", "to"];
/// Most entries one sweep script call handles per index.
const SWEEP_BATCH_MAX: usize = 1000;
/// Most sweep calls per queue per round (a backlog beyond is left for the next).
const SWEEP_ROUNDS_MAX: usize = 16;
/// Longest the first subscription may take before `connect` gives up waiting.
const SUBSCRIBE_WAIT_MS_MAX: u64 = 3000;

/// Where the Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://` or `rediss://` URL of one Redis (its db included).
    Single(String),
    /// `redis://host:port` seeds of a Redis Cluster.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// `redis://HOST:PORT/DB`, `rediss://…`, or `redis-cluster://HOST:PORT[,HOST:PORT…]`.
    pub fn parse(s: &str) -> Result<RedisTarget, String> {
        if let Some(rest) = s.strip_prefix("redis-cluster://") {
            let seeds: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("redis://{}", h.trim_end_matches('/')))
                .collect();
            if seeds.is_empty() {
                return Err(format!("{s}: name at least one HOST:PORT of the cluster"));
            }
            for seed in &seeds {
                redis::parse_redis_url(seed)
                    .ok_or_else(|| format!("{s}: {seed} is not a HOST:PORT"))?;
            }
            return Ok(RedisTarget::Cluster(seeds));
        }
        if s.starts_with("redis://") || s.starts_with("rediss://") {
            redis::parse_redis_url(s).ok_or_else(|| format!("{s} is not a valid redis URL"))?;
            return Ok(RedisTarget::Single(s.to_owned()));
        }
        Err(format!(
            "{s}: expected redis://HOST:PORT/DB, rediss://… or redis-cluster://HOST:PORT,…"
        ))
    }

    fn urls(&self) -> Vec<String> {
        match self {
            RedisTarget::Single(u) => vec![u.clone()],
            RedisTarget::Cluster(s) => s.clone(),
        }
    }
}

/// Configuration of the Redis store.
#[derive(Clone)]
pub struct RedisConfig {
    pub target: RedisTarget,
    /// First part of every key and channel, so deployments can share a Redis.
    /// May not hold `{` or `}` (they would change the keys' hash slots).
    pub prefix: String,
    pub limits: Limits,
    pub backoff: Backoff,
    /// Added to a task's `timeout_ms` to form its lease.
    pub lease_grace_ms: u64,
    /// Bound on every Redis call (beyond a long-poll's own wait).
    pub command_timeout_ms: u64,
    /// How often one server (elected by a lock) sweeps every queue: promotions,
    /// expired leases, retention, lost index entries.
    pub sweep_interval_ms: u64,
    /// How often the health flag behind `readiness` is refreshed by a PING.
    pub ping_interval_ms: u64,
    /// Server clock, for the timestamp part of new ids only.
    pub clock: Arc<dyn Clock>,
}

impl RedisConfig {
    pub fn new(target: RedisTarget) -> RedisConfig {
        RedisConfig {
            target,
            prefix: "weir".into(),
            limits: Limits::default(),
            backoff: Backoff::default(),
            lease_grace_ms: weir_core::limits::LEASE_GRACE_MS_DEFAULT,
            command_timeout_ms: 3000,
            sweep_interval_ms: 500,
            ping_interval_ms: 500,
            clock: Arc::new(SystemClock),
        }
    }
}

/// What the background tasks share with the broker.
struct Core {
    redis: Redis,
    keys: Keys,
    scripts: Scripts,
    waiters: Arc<Waiters>,
    closing: CancellationToken,
    config: RedisConfig,
    ids: keys::IdGen,
}

impl Core {
    /// Every name in the queue registry (some may have no meta hash any more).
    pub(crate) async fn registered_queues(&self) -> Result<Vec<String>, StoreError> {
        self.redis
            .query(
                "list queues",
                redis::cmd("SMEMBERS").arg(self.keys.registry()),
            )
            .await
    }

    /// A script call on the slot of `key`, with the slot's base and the channel
    /// as its first two arguments.
    fn invocation<'a>(
        &self,
        script: &'a redis::Script,
        key: &str,
        slot: u16,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(key)
            .arg(self.keys.base(slot))
            .arg(self.keys.channel());
        inv
    }
}

struct Inner {
    core: Arc<Core>,
    /// Set by `close`: later calls fail with `Closed`.
    closed: AtomicBool,
    /// Queue names known to be in the registry (skips the queue-cap check).
    registered: Mutex<HashSet<String>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stops the pinger, the subscriber and the sweeper.
        self.core.closing.cancel();
    }
}

/// The Redis store. Cheap to clone; clones share connections and waiters.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl RedisBroker {
    /// Connects (checking that Redis answers), subscribes to wake-ups and starts
    /// the pinger and the sweeper.
    pub async fn connect(config: RedisConfig) -> Result<RedisBroker, StoreError> {
        if config.prefix.is_empty() || config.prefix.contains(['{', '}']) {
            return Err(StoreError::Invalid(
                weir_core::validate::InvalidInput::invalid(
                    "prefix",
                    "a redis prefix is not empty and holds no '{' or '}'",
                ),
            ));
        }
        let timeout = Duration::from_millis(config.command_timeout_ms.max(1));
        let health = Arc::new(Health::default());
        let context = "connect to redis";
        let conn = match &config.target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| StoreError::internal(context, e))?;
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(1000));
                let fut = redis::aio::ConnectionManager::new_with_config(client, cfg);
                Conn::Single(conn::call(&health, timeout, context, fut).await?)
            }
            RedisTarget::Cluster(seeds) => {
                let client = redis::cluster::ClusterClient::builder(seeds.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .build()
                    .map_err(|e| StoreError::internal(context, e))?;
                let fut = async move { client.get_async_connection().await };
                Conn::Cluster(conn::call(&health, timeout, context, fut).await?)
            }
        };
        let redis = Redis {
            conn,
            health,
            timeout,
            metrics: crate::StoreMetrics::default(),
        };
        redis
            .query::<String>("ping redis", &redis::cmd("PING"))
            .await?;
        let core = Arc::new(Core {
            redis,
            keys: Keys::new(&config.prefix),
            scripts: Scripts::new(),
            waiters: Arc::new(Waiters::default()),
            closing: CancellationToken::new(),
            config,
            ids: keys::IdGen::default(),
        });
        let subscribed = Arc::new(Notify::new());
        tokio::spawn(wake::subscribe(
            core.config.target.urls(),
            core.keys.channel(),
            core.waiters.clone(),
            core.closing.clone(),
            subscribed.clone(),
        ));
        tokio::spawn(ping(core.clone()));
        tokio::spawn(sweep::run(core.clone()));
        // Waiters re-check on their own anyway; waiting here makes the first
        // long-polls prompt.
        let _ = tokio::time::timeout(
            Duration::from_millis(SUBSCRIBE_WAIT_MS_MAX),
            subscribed.notified(),
        )
        .await;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                core,
                closed: AtomicBool::new(false),
                registered: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// Warnings an operator should see at start: settings under which an
    /// acknowledged write can be lost or evicted.
    pub async fn startup_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let core = &self.inner.core;
        let get = |name: &'static str| async move {
            let v: Result<Vec<String>, _> = core
                .redis
                .query("config get", redis::cmd("CONFIG").arg("GET").arg(name))
                .await;
            v.map(|v| v.get(1).cloned().unwrap_or_default())
        };
        match get("maxmemory-policy").await {
            Ok(p) if p != "noeviction" => out.push(format!(
                "Redis maxmemory-policy is {p}, not noeviction: Redis may evict tasks when its memory is full."
            )),
            Ok(_) => {}
            Err(e) => out.push(format!(
                "Could not read the Redis configuration (CONFIG GET): {e}; check that maxmemory-policy is noeviction and AOF is on."
            )),
        }
        match get("appendonly").await {
            Ok(a) if a != "yes" => out.push(
                "Redis AOF is off (appendonly no): a Redis crash loses every write since the last RDB snapshot, acknowledged tasks included.".into(),
            ),
            Ok(_) => match get("appendfsync").await {
                Ok(f) if f != "always" => out.push(format!(
                    "Redis appendfsync is {f}, not always: a Redis crash can lose about the last second of acknowledged writes."
                )),
                _ => {}
            },
            Err(_) => {}
        }
        out
    }

    fn core(&self) -> &Core {
        &self.inner.core
    }

    fn gate(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.core().config.clock.now_ms()
    }

    async fn run_enqueue(
        &self,
        queue: &str,
        tasks: Vec<EnqueueTask>,
        group: Option<(TaskId, bool, u64)>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        self.gate()?;
        let core = self.core();
        let limits = &core.config.limits;
        self.check_queue_room(queue).await?;
        let slot = queue_slot(queue);
        let meta = core.keys.meta(queue);
        let mut inv = core.invocation(&core.scripts.enqueue, &meta, slot);
        let (gid, ff, grt) = match group {
            Some((id, ff, rt)) => (id.to_string(), ff, rt),
            None => (String::new(), false, 0),
        };
        inv.arg(queue)
            .arg(limits.queue_tasks_max)
            .arg(&gid)
            .arg(u8::from(ff))
            .arg(grt)
            .arg(tasks.len());
        let ids = core.ids.next(self.now_ms(), slot, tasks.len());
        let group_id = (!gid.is_empty()).then_some(gid.as_str());
        for (t, id) in tasks.iter().zip(ids) {
            let nt = &t.task;
            let when = match (nt.run_at_ms, nt.delay_ms) {
                (Some(at), _) => at.to_string(),
                (None, 0) => String::new(),
                (None, d) => format!("+{d}"),
            };
            // Byte order of the ready set: higher priority first.
            let rank = (i64::from(i32::MAX) - i64::from(nt.priority)) as u32;
            inv.arg(id.to_string())
                .arg(&rank.to_be_bytes()[..])
                .arg(when)
                .arg(nt.idempotency_key.as_deref().unwrap_or(""))
                .arg(decode::pack_task(queue, nt, group_id, &t.payload));
        }
        let reply = array(core.redis.script("enqueue", &inv).await?)?;
        let mut it = reply.into_iter();
        let first = it.next().ok_or_else(|| bug("empty enqueue reply"))?;
        if matches!(&first, Value::BulkString(b) if b == b"full") {
            let limit = it.next().map(opt_u64).transpose()?.flatten();
            return Err(StoreError::QueueFull {
                queue: queue.to_owned(),
                limit: limit.unwrap_or(limits.queue_tasks_max),
                retry_after_ms: 1000,
            });
        }
        let new_queue = int(first)? == 1;
        let _now = it.next();
        let mut out = Vec::with_capacity(tasks.len());
        while let (Some(id), Some(st), Some(created)) = (it.next(), it.next(), it.next()) {
            out.push(Enqueued {
                id: text(id)?.parse().map_err(|_| bug("enqueued id"))?,
                state: decode::state(int(st)?)?,
                created: int(created)? == 1,
            });
        }
        if out.len() != tasks.len() {
            return Err(bug("enqueue answered for the wrong number of tasks"));
        }
        if new_queue {
            self.register(queue).await?;
        }
        Ok(out)
    }

    /// Refuses a queue this store does not know yet once it holds `queues_max`.
    async fn check_queue_room(&self, queue: &str) -> Result<(), StoreError> {
        let core = self.core();
        let limits = &core.config.limits;
        let known = self
            .inner
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(queue);
        if !known {
            let member: bool = core
                .redis
                .query(
                    "check queue registry",
                    redis::cmd("SISMEMBER").arg(core.keys.registry()).arg(queue),
                )
                .await?;
            if member {
                self.remember(queue);
            } else {
                let n: usize = core
                    .redis
                    .query(
                        "count queues",
                        redis::cmd("SCARD").arg(core.keys.registry()),
                    )
                    .await?;
                if n >= limits.queues_max {
                    return Err(StoreError::TooManyQueues {
                        limit: limits.queues_max,
                    });
                }
            }
        }
        Ok(())
    }

    fn remember(&self, queue: &str) {
        let mut r = self
            .inner
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Bounded: it only skips a check, so forgetting is harmless.
        if r.len() >= self.core().config.limits.queues_max {
            r.clear();
        }
        r.insert(queue.to_owned());
    }

    /// Adds a queue to the registry, then marks it registered. If this server
    /// dies in between, the queue is unmarked and the next enqueue registers it.
    async fn register(&self, queue: &str) -> Result<(), StoreError> {
        let core = self.core();
        core.redis
            .query::<i64>(
                "register queue",
                redis::cmd("SADD").arg(core.keys.registry()).arg(queue),
            )
            .await?;
        let meta = core.keys.meta(queue);
        let inv = core.invocation(&core.scripts.mark_registered, &meta, queue_slot(queue));
        core.redis.script("mark queue registered", &inv).await?;
        self.remember(queue);
        Ok(())
    }

    /// Reads a task; `watch` marks it watched, so that its end is published.
    async fn view(&self, id: TaskId, watch: bool) -> Result<Option<TaskView>, StoreError> {
        self.gate()?;
        let core = self.core();
        let key = core.keys.task(id);
        let mut inv = core.invocation(&core.scripts.view, &key, slot_of(id));
        inv.arg(id.to_string()).arg(if watch { "1" } else { "0" });
        decode::view(id, array(core.redis.script("read task", &inv).await?)?)
    }

    async fn group_view(&self, id: TaskId) -> Result<Option<GroupView>, StoreError> {
        self.gate()?;
        let core = self.core();
        let key = core.keys.group(id);
        let mut inv = core.invocation(&core.scripts.group_view, &key, slot_of(id));
        inv.arg(id.to_string());
        let reply = array(core.redis.script("read group", &inv).await?)?;
        if reply.is_empty() {
            return Ok(None);
        }
        let mut it = reply.into_iter();
        let now = opt_u64(it.next().ok_or_else(|| bug("group view"))?)?.unwrap_or(0);
        let g = Fields::parse(it.next().ok_or_else(|| bug("group view"))?)?;
        let mut tasks = Vec::new();
        while let (Some(mid), Some(rec)) = (it.next(), it.next()) {
            let mid = text(mid)?.parse().map_err(|_| bug("member id"))?;
            tasks.push(decode::record(mid, bytes(rec)?, now)?.0);
        }
        let state = GroupState::from_index(g.num("st")?).ok_or_else(|| bug("group state"))?;
        Ok(Some(GroupView {
            id,
            queue: g.str("q")?,
            fail_fast: g.num::<u8>("ff")? == 1,
            state,
            created_ms: g.num("c")?,
            finished_ms: g.opt_num("f")?,
            tasks,
        }))
    }

    /// Reads with `read` until `done`, for at most `wait`, woken by `token`.
    async fn long_poll<T, F, Fut>(
        &self,
        token: String,
        wait: Duration,
        read: F,
        done: impl Fn(&T) -> bool,
    ) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let core = self.core();
        let deadline = tokio::time::Instant::now() + wait;
        // Registered before the first read: a wake-up between the two is not lost.
        let waiter = core.waiters.register(token);
        let mut rechecked = false;
        loop {
            let notified = waiter.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Boxed: a parked call holds only what it waits with, not room
            // for a script call's future (`lease_for` and `watch` alike).
            let v = Box::pin(read()).await?;
            let found = done(&v);
            if found || core.closing.is_cancelled() || tokio::time::Instant::now() >= deadline {
                if found && rechecked {
                    // Found by a re-check, not a message: the others look too.
                    waiter.notify.notify_waiters();
                }
                return Ok(v);
            }
            // Closing: the loop reads once more and answers with that.
            rechecked = waiter
                .next_look(notified.as_mut(), deadline, None, &core.closing)
                .await
                .unwrap_or(false);
        }
    }

    /// One lease script call. Returns the tasks and, if none, how long until
    /// the queue's next scheduled task is due or its next lease runs out.
    async fn try_lease(
        &self,
        queue: &str,
        max: usize,
        worker: Option<&str>,
    ) -> Result<(Vec<Leased>, Option<u64>), StoreError> {
        let core = self.core();
        let meta = core.keys.meta(queue);
        let mut inv = core.invocation(&core.scripts.lease, &meta, queue_slot(queue));
        inv.arg(queue)
            .arg(max)
            .arg(core.config.lease_grace_ms)
            .arg(worker.unwrap_or(""));
        let lease_ids: Vec<LeaseId> = (0..max).map(|_| LeaseId::random()).collect();
        for l in &lease_ids {
            inv.arg(&l.to_bytes()[..]);
        }
        let mut it = array(core.redis.script("lease", &inv).await?)?.into_iter();
        let now = opt_u64(it.next().ok_or_else(|| bug("lease reply"))?)?.unwrap_or(0);
        let next_due = opt_u64(it.next().ok_or_else(|| bug("lease reply"))?)?;
        let next_lease = opt_u64(it.next().ok_or_else(|| bug("lease reply"))?)?;
        let next_token = opt_u64(it.next().ok_or_else(|| bug("lease reply"))?)?;
        let mut out = Vec::new();
        let mut lease_ids = lease_ids.into_iter();
        while let (Some(id), Some(rec)) = (it.next(), it.next()) {
            let id = text(id)?.parse().map_err(|_| bug("leased id"))?;
            let (record, payload, le) = decode::record(id, bytes(rec)?, now)?;
            out.push(Leased {
                lease_expires_ms: le.ok_or_else(|| bug("leased task without expiry"))?,
                record,
                payload,
                lease_id: lease_ids
                    .next()
                    .ok_or_else(|| bug("more leased than asked"))?,
            });
        }
        let next = [next_due, next_lease, next_token]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_sub(now) + 1);
        Ok((out, next))
    }

    /// One beat; `watch` marks the task watched, so that a cancel request is
    /// published.
    async fn heartbeat_at(
        &self,
        id: TaskId,
        lease_id: LeaseId,
        watch: bool,
    ) -> Result<(Heartbeat, u64), StoreError> {
        self.gate()?;
        let core = self.core();
        let key = core.keys.task(id);
        let mut inv = core.invocation(&core.scripts.heartbeat, &key, slot_of(id));
        inv.arg(id.to_string())
            .arg(&lease_id.to_bytes()[..])
            .arg(core.config.lease_grace_ms)
            .arg(if watch { "1" } else { "0" });
        let reply = core.redis.script("heartbeat", &inv).await?;
        if matches!(&reply, Value::BulkString(b) if b == b"stale") {
            return Err(StoreError::StaleLease);
        }
        let mut it = array(reply)?.into_iter();
        let le = opt_u64(it.next().ok_or_else(|| bug("heartbeat"))?)?.unwrap_or(0);
        let cr = int(it.next().ok_or_else(|| bug("heartbeat"))?)? == 1;
        let now = opt_u64(it.next().ok_or_else(|| bug("heartbeat"))?)?.unwrap_or(0);
        Ok((
            Heartbeat {
                lease_expires_ms: le,
                cancel_requested: cr,
            },
            now,
        ))
    }

    /// A reply of `{'nf'}` / `{'term', state}` / `{'ok', ...}`: the tag and the rest.
    /// Runs `admin.lua` (`op` "r" retry, "d" delete) over `ids`, one call per hash
    /// slot, all in flight together; answers in the order of `ids`.
    async fn admin(
        &self,
        op: &str,
        ids: Vec<TaskId>,
        scope: Scope<'_>,
    ) -> Result<Vec<Admin>, StoreError> {
        self.gate()?;
        let core = self.core();
        let mut by_slot: BTreeMap<u16, Vec<(usize, TaskId)>> = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            by_slot.entry(slot_of(*id)).or_default().push((i, *id));
        }
        let state = scope
            .state
            .map(|s| s.index().to_string())
            .unwrap_or_default();
        let calls = by_slot.into_values().map(|group| {
            let state = &state;
            async move {
                let key = core.keys.task(group[0].1);
                let mut inv = core.invocation(&core.scripts.admin, &key, slot_of(group[0].1));
                inv.arg(op)
                    .arg(scope.queue.unwrap_or(""))
                    .arg(state.as_str());
                for (_, id) in &group {
                    inv.arg(id.to_string());
                }
                let mut it = array(core.redis.script("retry or delete", &inv).await?)?.into_iter();
                let now = opt_u64(it.next().ok_or_else(|| bug("admin"))?)?.unwrap_or(0);
                let mut out = Vec::with_capacity(group.len());
                for (i, id) in group {
                    let (Some(tag), Some(v)) = (it.next(), it.next()) else {
                        return Err(bug("admin answered for too few tasks"));
                    };
                    let refused = |e: TransitionError| Admin::Refused(e.into());
                    let answer = match text(tag)?.as_str() {
                        "ok" => Admin::Done(id, bytes(v)?, now),
                        "nf" => Admin::Refused(StoreError::NotFound),
                        "grp" => refused(TransitionError::GroupMember),
                        "nr" => refused(TransitionError::NotRetryable(decode::state(int(v)?)?)),
                        "nfin" => refused(TransitionError::NotFinished(decode::state(int(v)?)?)),
                        other => return Err(bug(&format!("admin tag {other}"))),
                    };
                    out.push((i, answer));
                }
                Ok::<_, StoreError>(out)
            }
        });
        let mut answers: Vec<Option<Admin>> = (0..ids.len()).map(|_| None).collect();
        for done in join_all(calls).await {
            for (i, a) in done? {
                answers[i] = Some(a);
            }
        }
        answers
            .into_iter()
            .map(|a| a.ok_or_else(|| bug("admin item without answer")))
            .collect()
    }

    fn tagged(reply: Value) -> Result<(String, Vec<Value>), StoreError> {
        let mut it = array(reply)?.into_iter();
        let tag = text(it.next().ok_or_else(|| bug("empty reply"))?)?;
        Ok((tag, it.collect()))
    }
}

/// Observes the run times `settle.lua` answers after its items: pairs of a queue
/// and its runs (ms) joined by commas.
fn observe_runs(metrics: &crate::StoreMetrics, runs: Vec<Value>) -> Result<(), StoreError> {
    let mut it = runs.into_iter();
    while let (Some(q), Some(ms)) = (it.next(), it.next()) {
        let (q, ms) = (text(q)?, text(ms)?);
        let parsed = ms
            .split(',')
            .map(|m| m.parse::<u64>().map_err(|_| bug("run time")))
            .collect::<Result<Vec<u64>, _>>()?;
        metrics.ran(parsed.into_iter().map(|m| (q.as_str(), m)));
    }
    Ok(())
}

/// One task's answer from `admin.lua`.
enum Admin {
    /// Done: the task's id, its new record (a retry) and the script's now.
    Done(TaskId, Vec<u8>, u64),
    Refused(StoreError),
}

/// The bytes after which a browse resumes, from a cursor it made: the hex of a
/// 'ready' member (pending) or of a task id.
fn browse_cursor(c: &str, state: TaskState) -> Result<Vec<u8>, StoreError> {
    let bad = || InvalidInput::invalid("cursor", "not a cursor of this listing");
    let raw = keys::unhex(c).ok_or_else(bad)?;
    // Pending: a 'ready' member; scheduled, active, completed: '<score>.<id>';
    // dead, canceled: an id (see browse.lua).
    let id = match state {
        TaskState::Pending => raw.get(decode::READY_PREFIX_LEN..),
        TaskState::Scheduled | TaskState::Active | TaskState::Completed => {
            let dot = raw.iter().position(|&b| b == b'.').ok_or_else(bad)?;
            let score = std::str::from_utf8(&raw[..dot]).ok();
            let score_ok = score.is_some_and(|s| {
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u64>().is_ok()
            });
            score_ok.then(|| &raw[dot + 1..])
        }
        TaskState::Dead | TaskState::Canceled => Some(&raw[..]),
    };
    let ok = id
        .and_then(|b| std::str::from_utf8(b).ok())
        .is_some_and(|s| s.parse::<TaskId>().is_ok());
    if !ok {
        return Err(bad().into());
    }
    Ok(raw)
}

/// Keeps the health flag behind `readiness` current.
async fn ping(core: Arc<Core>) {
    let every = Duration::from_millis(core.config.ping_interval_ms.max(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = core.closing.cancelled() => return,
        }
        let _ = core
            .redis
            .query::<String>("ping redis", &redis::cmd("PING"))
            .await;
    }
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    async fn enqueue(
        &self,
        queue: &str,
        tasks: Vec<EnqueueTask>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        self.run_enqueue(queue, tasks, None).await
    }

    async fn get(&self, id: TaskId) -> Result<Option<TaskView>, StoreError> {
        self.view(id, false).await
    }

    async fn wait(&self, id: TaskId, wait: Duration) -> Result<Option<TaskView>, StoreError> {
        self.long_poll(
            format!("t{id}"),
            wait,
            || self.view(id, true),
            |v| v.as_ref().is_none_or(|v| v.record.state.is_terminal()),
        )
        .await
    }

    async fn browse(
        &self,
        queue: &str,
        state: TaskState,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<TaskPage, StoreError> {
        self.gate()?;
        let core = self.core();
        let after = match cursor {
            Some(c) => browse_cursor(c, state)?,
            None => Vec::new(),
        };
        let key = core.keys.meta(queue);
        let mut inv = core.invocation(&core.scripts.browse, &key, queue_slot(queue));
        inv.arg(queue).arg(state.index()).arg(after).arg(limit);
        let mut it = array(core.redis.script("browse", &inv).await?)?.into_iter();
        let next = bytes(it.next().ok_or_else(|| bug("browse"))?)?;
        let now = opt_u64(it.next().ok_or_else(|| bug("browse"))?)?.unwrap_or(0);
        let mut tasks = Vec::new();
        while let (Some(id), Some(rec)) = (it.next(), it.next()) {
            let id: TaskId = text(id)?.parse().map_err(|_| bug("browsed id"))?;
            let (rec, _, _) = decode::record(id, bytes(rec)?, now)?;
            if rec.state == state {
                tasks.push(rec);
            }
        }
        Ok(TaskPage {
            tasks,
            next: (!next.is_empty()).then(|| keys::hex(&next)),
        })
    }

    async fn find_key(&self, queue: &str, key: &str) -> Result<Option<TaskView>, StoreError> {
        self.gate()?;
        let core = self.core();
        let mut cmd = redis::cmd("GET");
        cmd.arg(core.keys.idem(queue, key));
        let id: Option<String> = core.redis.query("read idempotency key", &cmd).await?;
        let Some(id) = id else {
            return Ok(None);
        };
        let id: TaskId = id.parse().map_err(|_| bug("idempotency key's task id"))?;
        self.view(id, false).await
    }

    async fn retry(
        &self,
        ids: Vec<TaskId>,
        scope: Scope<'_>,
    ) -> Result<Vec<Result<TaskRecord, StoreError>>, StoreError> {
        let answers = self.admin("r", ids, scope).await?;
        answers
            .into_iter()
            .map(|a| {
                Ok(match a {
                    Admin::Done(id, rec, now) => Ok(decode::record(id, rec, now)?.0),
                    Admin::Refused(e) => Err(e),
                })
            })
            .collect()
    }

    async fn delete_tasks(
        &self,
        ids: Vec<TaskId>,
        scope: Scope<'_>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let answers = self.admin("d", ids, scope).await?;
        Ok(answers
            .into_iter()
            .map(|a| match a {
                Admin::Done(..) => Ok(()),
                Admin::Refused(e) => Err(e),
            })
            .collect())
    }

    async fn cancel(&self, id: TaskId) -> Result<TaskView, StoreError> {
        self.gate()?;
        let core = self.core();
        let key = core.keys.task(id);
        let mut inv = core.invocation(&core.scripts.cancel, &key, slot_of(id));
        inv.arg(id.to_string());
        let (tag, rest) = Self::tagged(core.redis.script("cancel", &inv).await?)?;
        match tag.as_str() {
            "nf" => Err(StoreError::NotFound),
            "term" => {
                let st =
                    decode::state(int(rest.into_iter().next().ok_or_else(|| bug("term"))?)?)?;
                Err(TransitionError::Terminal(st).into())
            }
            "ok" => decode::view(id, rest)?.ok_or_else(|| bug("canceled task without record")),
            other => Err(bug(&format!("cancel tag {other}"))),
        }
    }

    async fn lease_for(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
        worker: Option<&str>,
    ) -> Result<Vec<Leased>, StoreError> {
        self.gate()?;
        let core = self.core();
        let deadline = tokio::time::Instant::now() + wait;
        let token = format!("q{}", keys::hex(queue.as_bytes()));
        // Registered before the first lease: a wake-up between the two is not lost.
        let waiter = core.waiters.register(token);
        let mut rechecked = false;
        loop {
            let notified = waiter.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (got, next_ms) = Box::pin(self.try_lease(queue, max, worker)).await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || core.closing.is_cancelled() || now >= deadline {
                if !got.is_empty() && rechecked {
                    // Found by a re-check, not a message: the others look too.
                    waiter.notify.notify_waiters();
                }
                return Ok(got);
            }
            // When the queue's next scheduled task is due or its next lease
            // runs out, this waiter looks whatever the others did.
            let due = next_ms.map(|ms| now + Duration::from_millis(ms));
            match waiter
                .next_look(notified.as_mut(), deadline, due, &core.closing)
                .await
            {
                Some(r) => rechecked = r,
                None => return Ok(Vec::new()),
            }
        }
    }

    async fn settle(
        &self,
        items: Vec<Settle>,
    ) -> Result<Vec<Result<TaskState, StoreError>>, StoreError> {
        self.gate()?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let core = self.core();
        // One script call per hash slot, all in flight together.
        let mut by_slot: BTreeMap<u16, Vec<(usize, Settle)>> = BTreeMap::new();
        for (i, item) in items.into_iter().enumerate() {
            by_slot
                .entry(slot_of(item.id()))
                .or_default()
                .push((i, item));
        }
        let n: usize = by_slot.values().map(Vec::len).sum();
        let backoff = core.config.backoff;
        let calls = by_slot.into_iter().map(|(slot, group)| async move {
            let key = core.keys.task(group[0].1.id());
            let mut inv = core.invocation(&core.scripts.settle, &key, slot);
            inv.arg(backoff.base_ms)
                .arg(backoff.cap_ms)
                .arg(group.len());
            for (_, item) in &group {
                match item {
                    Settle::Ack {
                        id,
                        lease_id,
                        result,
                    } => {
                        inv.arg(id.to_string()).arg(&lease_id.to_bytes()[..]);
                        match result {
                            Some(r) => inv.arg("r").arg(&r[..]),
                            None => inv.arg("a").arg(""),
                        };
                    }
                    Settle::Fail {
                        id,
                        lease_id,
                        error,
                        retry,
                    } => {
                        let unit: f64 = rand::thread_rng().gen();
                        inv.arg(id.to_string())
                            .arg(&lease_id.to_bytes()[..])
                            .arg(format!("f{}{unit:.17}", u8::from(*retry)))
                            .arg(error.as_str());
                    }
                }
            }
            let idx: Vec<usize> = group.iter().map(|(i, _)| *i).collect();
            let res = match core.redis.script("settle", &inv).await {
                Ok(v) => array(v).and_then(|mut a| {
                    if a.len() < idx.len() || !(a.len() - idx.len()).is_multiple_of(2) {
                        return Err(bug("settle answered for the wrong number of items"));
                    }
                    let runs = a.split_off(idx.len());
                    observe_runs(&core.redis.metrics, runs)?;
                    a.into_iter()
                        .map(|v| match v {
                            Value::BulkString(b) if b == b"stale" => {
                                Ok(Err(StoreError::StaleLease))
                            }
                            v => Ok(Ok(decode::state(int(v)?)?)),
                        })
                        .collect::<Result<Vec<_>, StoreError>>()
                }),
                Err(e) => Err(e),
            };
            (idx, res)
        });
        let done = join_all(calls).await;
        let mut out: Vec<Option<Result<TaskState, StoreError>>> = (0..n).map(|_| None).collect();
        let mut failures = 0;
        let mut first_err = None;
        for (idx, res) in done {
            match res {
                Ok(states) => {
                    for (i, s) in idx.into_iter().zip(states) {
                        out[i] = Some(s);
                    }
                }
                Err(e) => {
                    failures += 1;
                    for i in idx {
                        out[i] = Some(Err(match &e {
                            StoreError::Unavailable {
                                cause,
                                detail,
                                retry_after_ms,
                            } => StoreError::Unavailable {
                                cause: *cause,
                                detail: detail.clone(),
                                retry_after_ms: *retry_after_ms,
                            },
                            other => StoreError::bug(other.to_string()),
                        }));
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        // If nothing was settled, the whole call failed; otherwise each item
        // says whether it was.
        if failures > 0 && out.iter().all(|r| matches!(r, Some(Err(_)) | None)) {
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        out.into_iter()
            .map(|r| r.ok_or_else(|| bug("settle item without answer")))
            .collect()
    }

    async fn release(&self, id: TaskId, lease_id: LeaseId) -> Result<TaskState, StoreError> {
        self.gate()?;
        let core = self.core();
        let key = core.keys.task(id);
        let mut inv = core.invocation(&core.scripts.release, &key, slot_of(id));
        inv.arg(id.to_string()).arg(&lease_id.to_bytes()[..]);
        match core.redis.script("release", &inv).await? {
            Value::BulkString(b) if b == b"stale" => Err(StoreError::StaleLease),
            v => decode::state(int(v)?),
        }
    }

    async fn heartbeat(&self, id: TaskId, lease_id: LeaseId) -> Result<Heartbeat, StoreError> {
        self.heartbeat_at(id, lease_id, false)
            .await
            .map(|(hb, _)| hb)
    }

    async fn watch(
        &self,
        id: TaskId,
        lease_id: LeaseId,
        wait: Duration,
    ) -> Result<Heartbeat, StoreError> {
        let core = self.core();
        // Registered, and the wake-up armed, before each beat reads the cancel
        // flag: `notify_waiters` wakes only armed futures, so a cancel published
        // while a beat is in flight would otherwise wait for the next re-check.
        let waiter = core.waiters.register(format!("t{id}"));
        let notified = waiter.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (hb, now) = self.heartbeat_at(id, lease_id, true).await?;
        if hb.cancel_requested || wait.is_zero() {
            return Ok(hb);
        }
        // Never wait past half of what is left of the lease.
        let left = Duration::from_millis(hb.lease_expires_ms.saturating_sub(now) / 2);
        let deadline = tokio::time::Instant::now() + wait.min(left);
        loop {
            let until = deadline.min(tokio::time::Instant::now() + wake::recheck());
            tokio::select! {
                _ = &mut notified => break,
                _ = tokio::time::sleep_until(until) => {}
                _ = core.closing.cancelled() => break,
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            // Re-armed before the re-check reads again.
            notified.set(waiter.notify.notified());
            notified.as_mut().enable();
            let (hb, _) = Box::pin(self.heartbeat_at(id, lease_id, true)).await?;
            if hb.cancel_requested {
                return Ok(hb);
            }
        }
        Box::pin(self.heartbeat(id, lease_id)).await
    }

    async fn create_group(
        &self,
        queue: &str,
        tasks: Vec<EnqueueTask>,
        fail_fast: bool,
    ) -> Result<GroupCreated, StoreError> {
        let id = self.core().ids.next(self.now_ms(), queue_slot(queue), 1)[0];
        let retention_ms = tasks.iter().map(|t| t.task.retention_ms).max().unwrap_or(0);
        let out = self
            .run_enqueue(queue, tasks, Some((id, fail_fast, retention_ms)))
            .await?;
        Ok(GroupCreated {
            id,
            task_ids: out.into_iter().map(|e| e.id).collect(),
        })
    }

    async fn group(&self, id: TaskId, wait: Duration) -> Result<Option<GroupView>, StoreError> {
        if wait.is_zero() {
            return self.group_view(id).await;
        }
        self.long_poll(
            format!("g{id}"),
            wait,
            || self.group_view(id),
            |g| g.as_ref().is_none_or(|g| g.state.is_terminal()),
        )
        .await
    }

    async fn cancel_group(&self, id: TaskId) -> Result<GroupView, StoreError> {
        self.gate()?;
        let core = self.core();
        let key = core.keys.group(id);
        let mut inv = core.invocation(&core.scripts.group_cancel, &key, slot_of(id));
        inv.arg(id.to_string());
        let (tag, rest) = Self::tagged(core.redis.script("cancel group", &inv).await?)?;
        match tag.as_str() {
            "nf" => Err(StoreError::GroupNotFound),
            "term" => {
                let i = int(rest.into_iter().next().ok_or_else(|| bug("term"))?)?;
                let st = GroupState::from_index(i as u8).ok_or_else(|| bug("group state"))?;
                Err(StoreError::GroupTerminal(st))
            }
            "ok" => self.group_view(id).await?.ok_or(StoreError::GroupNotFound),
            other => Err(bug(&format!("cancel group tag {other}"))),
        }
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        self.gate()?;
        let core = self.core();
        let names = core.registered_queues().await?;
        let reads = names.into_iter().map(|name| async move {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(core.keys.meta(&name)).arg("seq");
            for i in 0..6 {
                cmd.arg(format!("n{i}"));
            }
            cmd.arg(&CONFIG_FIELDS[..]);
            cmd.arg(&TOTALS_FIELDS[..]);
            let v: Vec<Option<String>> = core.redis.query("read queue counts", &cmd).await?;
            if v.first().cloned().flatten().is_none() {
                // Deleted (or never made): not a queue.
                return Ok::<_, StoreError>(None);
            }
            let num = |c: &Option<String>, what: &str| -> Result<u64, StoreError> {
                let n = c.as_deref().unwrap_or("0");
                Ok(n.parse::<i64>().map_err(|_| bug(what))?.max(0) as u64)
            };
            let mut counts = Counts::default();
            for (i, c) in v.iter().skip(1).take(6).enumerate() {
                counts.0[i] = num(c, "queue count")?;
            }
            let config_end = 7 + CONFIG_FIELDS.len();
            let config = decode::config(&v[7..config_end])?;
            let t: Vec<u64> = v[config_end..]
                .iter()
                .map(|c| num(c, "queue total"))
                .collect::<Result<_, _>>()?;
            let [enqueued, leased, completed, dead, canceled, retried, lease_expired] = t[..]
            else {
                return Err(bug("queue totals"));
            };
            let totals = Totals {
                enqueued,
                leased,
                completed,
                dead,
                canceled,
                retried,
                lease_expired,
            };
            let mut inv = core.invocation(
                &core.scripts.queue_head,
                &core.keys.meta(&name),
                queue_slot(&name),
            );
            inv.arg(&name);
            let age = int(core.redis.script("read queue head", &inv).await?)?;
            Ok(Some(QueueInfo {
                name,
                counts,
                config,
                totals,
                oldest_pending_age_ms: u64::try_from(age).ok(),
            }))
        });
        let mut out: Vec<QueueInfo> = stream::iter(reads)
            .buffer_unordered(SWEEP_CONCURRENCY_MAX * 4)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn configure(&self, queue: &str, patch: ConfigPatch) -> Result<QueueConfig, StoreError> {
        self.gate()?;
        self.check_queue_room(queue).await?;
        let core = self.core();
        let meta = core.keys.meta(queue);
        let mut inv = core.invocation(&core.scripts.configure, &meta, queue_slot(queue));
        inv.arg(queue).arg(&decode::patch_args(&patch)[..]);
        let reply = array(core.redis.script("configure queue", &inv).await?)?;
        let mut it = reply.into_iter();
        let new_queue = int(it.next().ok_or_else(|| bug("configure reply"))?)? == 1;
        let fields = it
            .map(|v| text(v).map(Some))
            .collect::<Result<Vec<_>, _>>()?;
        let config = decode::config(&fields)?;
        if new_queue {
            self.register(queue).await?;
        }
        Ok(config)
    }

    async fn put_schedule(
        &self,
        name: &str,
        spec: String,
        now_ms: u64,
    ) -> Result<Schedule, StoreError> {
        self.gate()?;
        let core = self.core();
        let key = core.keys.schedules();
        let mut inv = core.invocation(&core.scripts.schedule, &key, 0);
        inv.arg("put")
            .arg(name)
            .arg(&spec)
            .arg(now_ms)
            .arg(core.config.limits.schedules_max);
        let v = array(core.redis.script("put schedule", &inv).await?)?;
        if matches!(v.first(), Some(Value::BulkString(b)) if b == b"full") {
            return Err(StoreError::TooManySchedules {
                limit: core.config.limits.schedules_max,
            });
        }
        let mut it = v.into_iter().map(text);
        let mut next = || it.next().unwrap_or_else(|| Err(bug("schedule reply")));
        let (tick, run, task) = (next()?, next()?, next()?);
        decode::schedule(name.to_owned(), spec, &format!("{tick}|{run}|{task}"))
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        self.gate()?;
        let core = self.core();
        let all: HashMap<String, String> = core
            .redis
            .query(
                "read schedules",
                redis::cmd("HGETALL").arg(core.keys.schedules()),
            )
            .await?;
        let mut out = Vec::new();
        for (field, spec) in &all {
            let Some(name) = field.strip_prefix("d:") else {
                continue;
            };
            let run = all.get(&format!("r:{name}")).map_or("0||", String::as_str);
            out.push(decode::schedule(name.to_owned(), spec.clone(), run)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        self.gate()?;
        let core = self.core();
        let key = core.keys.schedules();
        let mut inv = core.invocation(&core.scripts.schedule, &key, 0);
        inv.arg("del").arg(name);
        Ok(int(core.redis.script("delete schedule", &inv).await?)? == 1)
    }

    async fn schedule_ran(
        &self,
        name: &str,
        tick_ms: u64,
        run: Option<(u64, TaskId)>,
    ) -> Result<(), StoreError> {
        self.gate()?;
        let core = self.core();
        let key = core.keys.schedules();
        let mut inv = core.invocation(&core.scripts.schedule, &key, 0);
        inv.arg("ran").arg(name).arg(tick_ms);
        match run {
            Some((at, id)) => inv.arg(at).arg(id.to_string()),
            None => inv.arg("").arg(""),
        };
        core.redis.script("record a schedule's run", &inv).await?;
        Ok(())
    }

    async fn create_key(&self, id: &str, record: &str) -> Result<(), StoreError> {
        self.gate()?;
        let core = self.core();
        let key = core.keys.api_keys();
        let limit = core.config.limits.keys_max;
        let mut inv = core.invocation(&core.scripts.api_keys, &key, 0);
        inv.arg("create").arg(id).arg(record).arg(limit);
        match text(core.redis.script("create API key", &inv).await?)?.as_str() {
            "ok" => Ok(()),
            "exists" => Err(StoreError::KeyExists),
            "full" => Err(StoreError::TooManyKeys { limit }),
            other => Err(bug(&format!("create API key: {other}"))),
        }
    }

    async fn key(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        self.gate()?;
        let core = self.core();
        // One HMGET: the record and its last use as of one instant.
        let (record, used): (Option<String>, Option<String>) = core
            .redis
            .query(
                "read API key",
                redis::cmd("HMGET")
                    .arg(core.keys.api_keys())
                    .arg(format!("k:{id}"))
                    .arg(format!("u:{id}")),
            )
            .await?;
        record
            .map(|r| decode::stored_key(id.to_owned(), r, used.as_deref().unwrap_or("")))
            .transpose()
    }

    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.gate()?;
        let core = self.core();
        let all: HashMap<String, String> = core
            .redis
            .query(
                "read API keys",
                redis::cmd("HGETALL").arg(core.keys.api_keys()),
            )
            .await?;
        let mut out = Vec::new();
        for (field, record) in &all {
            let Some(id) = field.strip_prefix("k:") else {
                continue;
            };
            let used = all.get(&format!("u:{id}")).map_or("", String::as_str);
            out.push(decode::stored_key(id.to_owned(), record.clone(), used)?);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        self.gate()?;
        let core = self.core();
        let key = core.keys.api_keys();
        let mut inv = core.invocation(&core.scripts.api_keys, &key, 0);
        inv.arg("del").arg(id);
        Ok(int(core.redis.script("delete API key", &inv).await?)? == 1)
    }

    async fn key_used(&self, id: &str, at_ms: u64) -> Result<(), StoreError> {
        self.gate()?;
        let core = self.core();
        let key = core.keys.api_keys();
        // A script, not an HSET: the key's existence and the write are one step,
        // so a use racing a revoke cannot bring the key's fields back.
        let mut inv = core.invocation(&core.scripts.api_keys, &key, 0);
        inv.arg("used").arg(id).arg(at_ms);
        core.redis.script("record an API key's use", &inv).await?;
        Ok(())
    }

    async fn has_keys(&self) -> Result<bool, StoreError> {
        self.gate()?;
        let core = self.core();
        // The hash exists exactly while it holds a key (a revoke removes both of
        // its fields): one O(1) EXISTS.
        core.redis
            .query(
                "check for API keys",
                redis::cmd("EXISTS").arg(core.keys.api_keys()),
            )
            .await
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), StoreError> {
        self.gate()?;
        let core = self.core();
        let meta = core.keys.meta(queue);
        let mut inv = core.invocation(&core.scripts.delete_queue, &meta, queue_slot(queue));
        inv.arg(queue);
        let (tag, rest) = Self::tagged(core.redis.script("delete queue", &inv).await?)?;
        match tag.as_str() {
            "nf" => Err(StoreError::QueueNotFound),
            "ne" => {
                let mut counts = Counts::default();
                for (i, v) in rest.into_iter().enumerate().take(6) {
                    counts.0[i] = int(v)?.max(0) as u64;
                }
                Err(StoreError::QueueNotEmpty {
                    queue: queue.to_owned(),
                    counts,
                })
            }
            "ok" => {
                self.inner
                    .registered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(queue);
                core.redis
                    .query::<i64>(
                        "unregister queue",
                        redis::cmd("SREM").arg(core.keys.registry()).arg(queue),
                    )
                    .await?;
                // An enqueue elsewhere may have made the queue again meanwhile
                // (and registered it before our SREM): keep it listed.
                let back: bool = core
                    .redis
                    .query("check queue", redis::cmd("EXISTS").arg(&meta))
                    .await?;
                if back {
                    core.redis
                        .query::<i64>(
                            "register queue",
                            redis::cmd("SADD").arg(core.keys.registry()).arg(queue),
                        )
                        .await?;
                }
                Ok(())
            }
            other => Err(bug(&format!("delete queue tag {other}"))),
        }
    }

    fn metrics(&self) -> Option<crate::StoreMetrics> {
        Some(self.core().redis.metrics.clone())
    }

    fn readiness(&self) -> Result<(), StoreError> {
        self.gate()?;
        let core = self.core();
        if core.closing.is_cancelled() {
            return Err(StoreError::Closed);
        }
        if !core.redis.health.is_up() {
            return Err(conn::unavailable("redis does not answer".into()));
        }
        Ok(())
    }

    fn begin_shutdown(&self) {
        let core = self.core();
        core.closing.cancel();
        core.waiters.wake_all();
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.begin_shutdown();
        self.inner.closed.store(true, Ordering::Relaxed);
        Ok(())
    }
}
