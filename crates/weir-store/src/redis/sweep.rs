//! Background upkeep shared by every server on one prefix. Each server tries,
//! every `sweep_interval_ms` (with jitter), to take the prefix's sweep lock
//! (`SET <prefix>:sweep NX PX interval`); the one that holds it sweeps every
//! registered queue: due scheduled tasks become pending, expired leases end
//! (pending again or dead), finished tasks past retention leave the counts.
//! So the work per interval is one sweep of each queue, however many servers
//! run, plus one SET attempt per server. Lease calls do the same upkeep for
//! their own queue, so a busy queue does not wait for the sweep.
//!
//! The holder also audits a slice of the task hashes (`SCAN`, a bounded step per
//! round, on every master of a cluster) and puts back any index entry that was
//! lost outside the scripts (eviction, a failover, a hand edit), so no task stays
//! stuck.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use rand::Rng;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::Value;
use weir_core::TaskId;

use super::conn::{call, Conn};
use super::decode::{array, int, text};
use super::keys::{queue_slot, slot_of};
use super::{Core, SWEEP_BATCH_MAX, SWEEP_CONCURRENCY_MAX, SWEEP_ROUNDS_MAX};
use crate::StoreError;

/// Keys one audit `SCAN` step asks for per node.
const AUDIT_SCAN_COUNT: usize = 1000;

pub async fn run(core: Arc<Core>) {
    let interval = core.config.sweep_interval_ms.max(10);
    // Where the audit's SCAN left off, per node ("" for a single Redis).
    let mut cursors: HashMap<String, u64> = HashMap::new();
    loop {
        let jitter = rand::thread_rng().gen_range(0..=interval / 5);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(interval + jitter)) => {}
            _ = core.closing.cancelled() => return,
        }
        match round(&core, interval, &mut cursors).await {
            Ok(()) => {}
            Err(StoreError::Unavailable { .. }) => {}
            Err(e) => tracing::error!(error = %e.chain(), "redis sweep failed"),
        }
    }
}

/// One round: take the lock, or leave the work to its holder.
async fn round(
    core: &Core,
    interval_ms: u64,
    cursors: &mut HashMap<String, u64>,
) -> Result<(), StoreError> {
    let got: Option<String> = core
        .redis
        .query(
            "take sweep lock",
            redis::cmd("SET")
                .arg(core.keys.sweep_lock())
                .arg("1")
                .arg("NX")
                .arg("PX")
                .arg(interval_ms),
        )
        .await?;
    if got.is_none() {
        return Ok(());
    }
    sweep_all(core).await?;
    audit_step(core, cursors).await?;
    Ok(())
}

/// Sweeps every registered queue.
pub async fn sweep_all(core: &Core) -> Result<(), StoreError> {
    let names = core.registered_queues().await?;
    let results: Vec<Result<(), StoreError>> = stream::iter(names)
        .map(|q| async move { sweep_queue(core, &q).await })
        .buffer_unordered(SWEEP_CONCURRENCY_MAX)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn sweep_queue(core: &Core, queue: &str) -> Result<(), StoreError> {
    let meta = core.keys.meta(queue);
    for _ in 0..SWEEP_ROUNDS_MAX {
        let mut inv = core.invocation(&core.scripts.sweep, &meta, queue_slot(queue));
        inv.arg(queue).arg(SWEEP_BATCH_MAX);
        let done = int(core.redis.script("sweep queue", &inv).await?)?;
        if (done as usize) < SWEEP_BATCH_MAX {
            break;
        }
    }
    Ok(())
}

/// One bounded `SCAN` step over the task hashes of every node, then the audit
/// script over what it found, one call per slot.
pub async fn audit_step(
    core: &Core,
    cursors: &mut HashMap<String, u64>,
) -> Result<usize, StoreError> {
    let pattern = core.keys.task_pattern();
    let nodes = nodes(core).await?;
    let mut ids: Vec<TaskId> = Vec::new();
    for node in nodes {
        let cursor = cursors.get(&node).copied().unwrap_or(0);
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(AUDIT_SCAN_COUNT);
        let reply = match (&core.redis.conn, node.rsplit_once(':')) {
            (Conn::Cluster(c), Some((host, port))) => {
                let mut c = c.clone();
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_owned(),
                    port: port.parse().unwrap_or(0),
                });
                call(
                    &core.redis.health,
                    core.redis.timeout,
                    "audit scan",
                    c.route_command(cmd, routing),
                )
                .await?
            }
            _ => core.redis.query::<Value>("audit scan", &cmd).await?,
        };
        let mut it = array(reply)?.into_iter();
        let next: u64 = text(it.next().unwrap_or(Value::Nil))
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        cursors.insert(node, next);
        for key in it.next().map(array).transpose()?.unwrap_or_default() {
            let key = text(key)?;
            if let Some(id) = key.rsplit(':').next().and_then(|s| s.parse().ok()) {
                ids.push(id);
            }
        }
    }
    let mut by_slot: BTreeMap<u16, Vec<TaskId>> = BTreeMap::new();
    for id in ids {
        by_slot.entry(slot_of(id)).or_default().push(id);
    }
    let mut fixed = 0usize;
    for (slot, ids) in by_slot {
        let key = core.keys.task(ids[0]);
        let mut inv = core.invocation(&core.scripts.audit, &key, slot);
        for id in &ids {
            inv.arg(id.to_string());
        }
        let n = int(core.redis.script("audit tasks", &inv).await?)?;
        if n > 0 {
            tracing::warn!(
                restored = n,
                "restored lost redis index entries (eviction, failover or a hand edit?)"
            );
        }
        fixed += n as usize;
    }
    Ok(fixed)
}

/// The nodes to SCAN: `""` for a single Redis, every master's `host:port` for a
/// cluster (from `CLUSTER SLOTS`).
async fn nodes(core: &Core) -> Result<Vec<String>, StoreError> {
    if matches!(core.redis.conn, Conn::Single(_)) {
        return Ok(vec![String::new()]);
    }
    let slots: Value = core
        .redis
        .query("cluster slots", redis::cmd("CLUSTER").arg("SLOTS"))
        .await?;
    let mut out = Vec::new();
    for range in array(slots)? {
        let mut it = array(range)?.into_iter().skip(2);
        if let Some(master) = it.next() {
            let mut m = array(master)?.into_iter();
            let host = text(m.next().unwrap_or(Value::Nil))?;
            let port = int(m.next().unwrap_or(Value::Nil))?;
            let node = format!("{host}:{port}");
            if !out.contains(&node) {
                out.push(node);
            }
        }
    }
    Ok(out)
}
