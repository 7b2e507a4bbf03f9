//! Background upkeep shared by every server on one prefix. Each server tries,
//! every `sweep_interval_ms` (with jitter), to take the prefix's sweep lock
//! (`SET <prefix>:sweep NX PX interval`); the one that holds it sweeps every
//! registered queue: due scheduled tasks become pending, expired leases end
//! (pending again or dead), finished tasks past retention leave the counts.
//! So the work per interval is one sweep of each queue, however many servers
//! run, plus one SET attempt per server. Lease calls do the same upkeep for
//! their own queue, so a busy queue does not wait for the sweep.
//!
//! The holder also audits a slice of the task records (an `HSCAN` step of one
//! slot's task hash per round, slot after slot of the registered queues) and
//! puts back any index entry that was lost outside the scripts (eviction, a
//! failover, a hand edit), so no task stays stuck.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use rand::Rng;
use redis::Value;

use super::decode::{array, int, text};
use super::keys::queue_slot;
use super::{Core, SWEEP_BATCH_MAX, SWEEP_CONCURRENCY_MAX, SWEEP_ROUNDS_MAX};
use crate::StoreError;

/// Records one audit step asks HSCAN for (records hold payloads: the step
/// reads them inside Redis, so this bounds the script's memory and time).
const AUDIT_SCAN_COUNT: usize = 256;

pub async fn run(core: Arc<Core>) {
    let interval = core.config.sweep_interval_ms.max(10);
    let mut audit = Audit::default();
    loop {
        let jitter = rand::thread_rng().gen_range(0..=interval / 5);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(interval + jitter)) => {}
            _ = core.closing.cancelled() => return,
        }
        match round(&core, interval, &mut audit).await {
            Ok(()) => {}
            Err(StoreError::Unavailable { .. }) => {}
            Err(e) => tracing::error!(error = %e.chain(), "redis sweep failed"),
        }
    }
}

/// One round: take the lock, or leave the work to its holder.
async fn round(core: &Core, interval_ms: u64, audit: &mut Audit) -> Result<(), StoreError> {
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
    audit_step(core, audit).await?;
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

/// Where the audit is: the slots of the registered queues, the one it is
/// in, and the HSCAN cursor there.
#[derive(Default)]
pub struct Audit {
    slots: Vec<u16>,
    at: usize,
    cursor: String,
}

/// One bounded audit step: an HSCAN step over one slot's task hash (the
/// audit script reads and checks the records inside Redis; only the cursor
/// comes back), moving to the next slot of a registered queue when that slot
/// is done. Returns how many entries it restored.
pub async fn audit_step(core: &Core, audit: &mut Audit) -> Result<usize, StoreError> {
    if audit.at >= audit.slots.len() {
        let mut slots: Vec<u16> = core
            .registered_queues()
            .await?
            .iter()
            .map(|q| queue_slot(q))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        *audit = Audit {
            slots,
            at: 0,
            cursor: "0".into(),
        };
    }
    let Some(&slot) = audit.slots.get(audit.at) else {
        return Ok(0);
    };
    let key = core.keys.tasks(slot);
    let mut inv = core.invocation(&core.scripts.audit, &key, slot);
    inv.arg(&audit.cursor).arg(AUDIT_SCAN_COUNT);
    let mut it = array(core.redis.script("audit tasks", &inv).await?)?.into_iter();
    let next = text(it.next().unwrap_or(Value::Nil))?;
    let fixed = int(it.next().unwrap_or(Value::Nil))?;
    if next == "0" {
        audit.at += 1;
    }
    audit.cursor = next;
    if fixed > 0 {
        tracing::warn!(
            restored = fixed,
            "restored lost redis index entries (eviction, failover or a hand edit?)"
        );
    }
    Ok(fixed as usize)
}
