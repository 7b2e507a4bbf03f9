//! The input checks every store shares. `Checked` wraps a backend and refuses,
//! before the backend sees it, whatever `Limits` or the group rules forbid: a bad
//! queue name, a batch too large or empty, a lease `max` out of range, an overlong
//! worker name, a group member with an idempotency key, an API key id outside
//! `[a-z0-9]{1,32}` or a key record over 16 KiB. A backend behind it may assume
//! its input passed these checks; it keeps only the checks that need its state
//! (a full queue, the queue cap, the key cap).
//!
//! May not: touch storage, read a clock, or change what a valid call does.

use std::sync::Arc;
use std::time::Duration;

use weir_core::limits::KEY_RECORD_BYTES_MAX;
use weir_core::validate::{self, InvalidInput};
use weir_core::{ConfigPatch, Limits, QueueConfig, TaskId, TaskRecord, TaskState};

use crate::{
    Broker, EnqueueTask, Enqueued, GroupCreated, GroupView, Heartbeat, LeaseId, Leased, QueueInfo,
    Schedule, Scope, Settle, StoreError, StoredKey, TaskPage, TaskView, BROWSE_TASKS_MAX,
};

/// A backend behind the shared input checks.
pub struct Checked<B: ?Sized> {
    inner: Arc<B>,
    limits: Arc<Limits>,
}

impl<B: ?Sized> Clone for Checked<B> {
    fn clone(&self) -> Checked<B> {
        Checked {
            inner: self.inner.clone(),
            limits: self.limits.clone(),
        }
    }
}

impl<B: Broker> Checked<B> {
    pub fn new(inner: B, limits: Limits) -> Checked<B> {
        Checked::shared(Arc::new(inner), limits)
    }
}

impl<B: Broker + ?Sized> Checked<B> {
    /// Checks in front of a backend already shared (`Arc<dyn Broker>`).
    pub fn shared(inner: Arc<B>, limits: Limits) -> Checked<B> {
        Checked {
            inner,
            limits: Arc::new(limits),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }
}

/// A queue name and a batch of 1 to `batch_tasks_max` tasks (`what` names it in
/// the error: "batch", "group").
pub fn tasks(queue: &str, n: usize, what: &str, limits: &Limits) -> Result<(), InvalidInput> {
    validate::queue_name(queue, limits)?;
    if n == 0 || n > limits.batch_tasks_max {
        return Err(InvalidInput::invalid(
            "tasks",
            format!("a {what} holds 1 to {} tasks", limits.batch_tasks_max),
        ));
    }
    Ok(())
}

/// The longest browse cursor a store makes is well under this.
pub const CURSOR_BYTES_MAX: usize = 256;

/// The ids of an operator's `retry` or `delete_tasks`: 1 to `BROWSE_TASKS_MAX`.
fn admin_ids(n: usize, scope: Scope<'_>, limits: &Limits) -> Result<(), InvalidInput> {
    if let Some(q) = scope.queue {
        validate::queue_name(q, limits)?;
    }
    if n == 0 || n > BROWSE_TASKS_MAX {
        return Err(InvalidInput::invalid(
            "ids",
            format!("1 to {BROWSE_TASKS_MAX} task ids at a time"),
        ));
    }
    Ok(())
}

/// A lease request: the queue, `max` and the worker's name.
pub fn lease(
    queue: &str,
    max: usize,
    worker: Option<&str>,
    limits: &Limits,
) -> Result<(), InvalidInput> {
    if let Some(w) = worker {
        validate::text("worker", w, limits.worker_name_bytes_max)?;
    }
    validate::queue_name(queue, limits)?;
    validate::range("max", max as u64, 1, limits.lease_tasks_max as u64)
}

/// A settle batch of at most `batch_tasks_max` items.
pub fn settle(n: usize, limits: &Limits) -> Result<(), InvalidInput> {
    if n > limits.batch_tasks_max {
        return Err(InvalidInput::invalid(
            "acks",
            format!(
                "at most {} acks and fails per request",
                limits.batch_tasks_max
            ),
        ));
    }
    Ok(())
}

/// Group members carry no idempotency keys (a group is made whole or not at all).
pub fn group(queue: &str, tasks_: &[EnqueueTask], limits: &Limits) -> Result<(), InvalidInput> {
    if tasks_.iter().any(|t| t.task.idempotency_key.is_some()) {
        return Err(InvalidInput::invalid(
            "idempotency_key",
            "tasks of a group cannot carry idempotency keys",
        ));
    }
    tasks(queue, tasks_.len(), "group", limits)
}

/// An API key's id and record: the id's alphabet and length
/// (`validate::key_id`), the record within `KEY_RECORD_BYTES_MAX`.
pub fn key(id: &str, record: &str) -> Result<(), InvalidInput> {
    validate::key_id(id)?;
    validate::size("record", record.len(), KEY_RECORD_BYTES_MAX)
}

#[async_trait::async_trait]
impl<B: Broker + ?Sized> Broker for Checked<B> {
    async fn enqueue(
        &self,
        queue: &str,
        tasks_: Vec<EnqueueTask>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        tasks(queue, tasks_.len(), "batch", &self.limits)?;
        self.inner.enqueue(queue, tasks_).await
    }

    async fn get(&self, id: TaskId) -> Result<Option<TaskView>, StoreError> {
        self.inner.get(id).await
    }

    async fn wait(&self, id: TaskId, wait: Duration) -> Result<Option<TaskView>, StoreError> {
        self.inner.wait(id, wait).await
    }

    async fn cancel(&self, id: TaskId) -> Result<TaskView, StoreError> {
        self.inner.cancel(id).await
    }

    async fn lease_for(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
        worker: Option<&str>,
    ) -> Result<Vec<Leased>, StoreError> {
        lease(queue, max, worker, &self.limits)?;
        self.inner.lease_for(queue, max, wait, worker).await
    }

    async fn settle(
        &self,
        items: Vec<Settle>,
    ) -> Result<Vec<Result<TaskState, StoreError>>, StoreError> {
        settle(items.len(), &self.limits)?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.settle(items).await
    }

    async fn release(&self, id: TaskId, lease_id: LeaseId) -> Result<TaskState, StoreError> {
        self.inner.release(id, lease_id).await
    }

    async fn heartbeat(&self, id: TaskId, lease_id: LeaseId) -> Result<Heartbeat, StoreError> {
        self.inner.heartbeat(id, lease_id).await
    }

    async fn watch(
        &self,
        id: TaskId,
        lease_id: LeaseId,
        wait: Duration,
    ) -> Result<Heartbeat, StoreError> {
        self.inner.watch(id, lease_id, wait).await
    }

    async fn create_group(
        &self,
        queue: &str,
        tasks_: Vec<EnqueueTask>,
        fail_fast: bool,
    ) -> Result<GroupCreated, StoreError> {
        group(queue, &tasks_, &self.limits)?;
        self.inner.create_group(queue, tasks_, fail_fast).await
    }

    async fn group(&self, id: TaskId, wait: Duration) -> Result<Option<GroupView>, StoreError> {
        self.inner.group(id, wait).await
    }

    async fn cancel_group(&self, id: TaskId) -> Result<GroupView, StoreError> {
        self.inner.cancel_group(id).await
    }

    async fn browse(
        &self,
        queue: &str,
        state: TaskState,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<TaskPage, StoreError> {
        validate::queue_name(queue, &self.limits)?;
        if limit == 0 || limit > BROWSE_TASKS_MAX {
            return Err(InvalidInput::invalid(
                "limit",
                format!("a page holds 1 to {BROWSE_TASKS_MAX} tasks"),
            )
            .into());
        }
        if let Some(c) = cursor {
            validate::text("cursor", c, CURSOR_BYTES_MAX)?;
        }
        self.inner.browse(queue, state, cursor, limit).await
    }

    async fn find_key(&self, queue: &str, key: &str) -> Result<Option<TaskView>, StoreError> {
        validate::queue_name(queue, &self.limits)?;
        validate::text(
            "idempotency_key",
            key,
            self.limits.idempotency_key_bytes_max,
        )?;
        self.inner.find_key(queue, key).await
    }

    async fn retry(
        &self,
        ids: Vec<TaskId>,
        scope: Scope<'_>,
    ) -> Result<Vec<Result<TaskRecord, StoreError>>, StoreError> {
        admin_ids(ids.len(), scope, &self.limits)?;
        self.inner.retry(ids, scope).await
    }

    async fn delete_tasks(
        &self,
        ids: Vec<TaskId>,
        scope: Scope<'_>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        admin_ids(ids.len(), scope, &self.limits)?;
        self.inner.delete_tasks(ids, scope).await
    }

    async fn queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        self.inner.queues().await
    }

    async fn configure(&self, queue: &str, patch: ConfigPatch) -> Result<QueueConfig, StoreError> {
        validate::queue_name(queue, &self.limits)?;
        // The values alone (a store checks the result of applying them again).
        QueueConfig::default().patched(&patch, self.limits.queue_tasks_max)?;
        self.inner.configure(queue, patch).await
    }

    async fn put_schedule(
        &self,
        name: &str,
        spec: String,
        now_ms: u64,
    ) -> Result<Schedule, StoreError> {
        validate::schedule_name(name, &self.limits)?;
        validate::size("schedule", spec.len(), self.limits.schedule_bytes_max)?;
        self.inner.put_schedule(name, spec, now_ms).await
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        self.inner.schedules().await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        validate::schedule_name(name, &self.limits)?;
        self.inner.delete_schedule(name).await
    }

    async fn schedule_ran(
        &self,
        name: &str,
        tick_ms: u64,
        run: Option<(u64, TaskId)>,
    ) -> Result<(), StoreError> {
        validate::schedule_name(name, &self.limits)?;
        self.inner.schedule_ran(name, tick_ms, run).await
    }

    async fn create_key(&self, id: &str, record: &str) -> Result<(), StoreError> {
        key(id, record)?;
        self.inner.create_key(id, record).await
    }

    async fn key(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        validate::key_id(id)?;
        self.inner.key(id).await
    }

    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.inner.keys().await
    }

    async fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        validate::key_id(id)?;
        self.inner.delete_key(id).await
    }

    async fn key_used(&self, id: &str, at_ms: u64) -> Result<(), StoreError> {
        validate::key_id(id)?;
        self.inner.key_used(id, at_ms).await
    }

    async fn has_keys(&self) -> Result<bool, StoreError> {
        self.inner.has_keys().await
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), StoreError> {
        validate::queue_name(queue, &self.limits)?;
        self.inner.delete_queue(queue).await
    }

    fn readiness(&self) -> Result<(), StoreError> {
        self.inner.readiness()
    }

    fn metrics(&self) -> Option<crate::StoreMetrics> {
        self.inner.metrics()
    }

    async fn fatal(&self) -> String {
        self.inner.fatal().await
    }

    fn begin_shutdown(&self) {
        self.inner.begin_shutdown()
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_limits_forbid() {
        let l = Limits::default();
        assert!(tasks("ok", 1, "batch", &l).is_ok());
        assert!(tasks("bad name", 1, "batch", &l).is_err());
        assert!(tasks("ok", 0, "batch", &l).is_err());
        assert!(tasks("ok", l.batch_tasks_max + 1, "batch", &l).is_err());
        assert!(lease("ok", 0, None, &l).is_err());
        assert!(lease("ok", l.lease_tasks_max + 1, None, &l).is_err());
        assert!(lease("ok", 1, Some(&"w".repeat(l.worker_name_bytes_max + 1)), &l).is_err());
        assert!(settle(l.batch_tasks_max, &l).is_ok());
        assert!(settle(l.batch_tasks_max + 1, &l).is_err());
        assert!(key("k1", &"r".repeat(KEY_RECORD_BYTES_MAX)).is_ok());
        assert!(key("k1", "").is_ok());
        assert!(matches!(
            key("k1", &"r".repeat(KEY_RECORD_BYTES_MAX + 1)),
            Err(InvalidInput::TooLarge { .. })
        ));
        assert!(key("K1", "{}").is_err());
        assert!(key("", "{}").is_err());
        assert!(key(&"k".repeat(33), "{}").is_err());
    }
}
