//! Futures over tasks and groups: handles whose `wait` resolves when the task (or
//! group) is terminal, through the server's long-poll — no client-side polling loop
//! beyond re-arming the server's wait every (at most) 60 s.

use std::time::Duration;

use serde_json::Value;

use crate::types::{Group, GroupState, Task, TaskState};
use crate::{Client, EnqueueOptions, Error};

/// Longest single long-poll the server accepts.
pub const WAIT_CHUNK_MS_MAX: u64 = 60_000;

/// Why waiting on a task or group did not give a result.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The deadline passed before the task (or group) ended; the last view is kept.
    #[error("not finished within the wait")]
    Timeout,
    /// The task ended `dead` or `canceled`.
    #[error("task {id} ended {state}: {}", error.as_deref().unwrap_or("no error text"))]
    TaskFailed {
        id: String,
        state: TaskState,
        error: Option<String>,
    },
    /// The group failed or was canceled; `task_id` is the first member that ended
    /// dead (or canceled), whose error is given. The group canceled the others.
    #[error("group {id} {state}: task {task_id}: {}", error.as_deref().unwrap_or("no error text"))]
    GroupFailed {
        id: String,
        state: GroupState,
        task_id: String,
        error: Option<String>,
    },
    #[error(transparent)]
    Client(#[from] Error),
}

/// A task's future.
#[derive(Clone, Debug)]
pub struct TaskHandle {
    client: Client,
    id: String,
}

impl TaskHandle {
    pub(crate) fn new(client: Client, id: String) -> TaskHandle {
        TaskHandle { client, id }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits up to `timeout` for the task to end and returns its final view
    /// (whatever its terminal state).
    pub async fn wait_task(&self, timeout: Duration) -> Result<Task, WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let chunk = (left.as_millis() as u64).min(WAIT_CHUNK_MS_MAX);
            let task = self.client.wait(&self.id, chunk).await?;
            if task.state.is_terminal() {
                return Ok(task);
            }
            if chunk == 0 || tokio::time::Instant::now() >= deadline {
                return Err(WaitError::Timeout);
            }
        }
    }

    /// Waits up to `timeout` and returns the task's result; a task that ended dead
    /// or canceled is an error carrying its last error text.
    pub async fn wait(&self, timeout: Duration) -> Result<Value, WaitError> {
        let task = self.wait_task(timeout).await?;
        match task.state {
            TaskState::Completed => Ok(task.result.unwrap_or(Value::Null)),
            state => Err(WaitError::TaskFailed {
                id: task.id,
                state,
                error: task.last_error,
            }),
        }
    }
}

/// A group's future (errgroup semantics).
#[derive(Clone, Debug)]
pub struct GroupHandle {
    client: Client,
    id: String,
    task_ids: Vec<String>,
}

impl GroupHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Member task ids, in the order given.
    pub fn task_ids(&self) -> &[String] {
        &self.task_ids
    }

    /// Waits up to `timeout` for the group to end and returns its final view.
    pub async fn wait_group(&self, timeout: Duration) -> Result<Group, WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let chunk = (left.as_millis() as u64).min(WAIT_CHUNK_MS_MAX);
            let group = self.client.wait_group(&self.id, chunk).await?;
            if group.state.is_terminal() {
                return Ok(group);
            }
            if chunk == 0 || tokio::time::Instant::now() >= deadline {
                return Err(WaitError::Timeout);
            }
        }
    }

    /// Every member's result in order, or the first failure (the others are then
    /// canceled by the server when the group is fail-fast).
    pub async fn wait(&self, timeout: Duration) -> Result<Vec<Value>, WaitError> {
        let group = self.wait_group(timeout).await?;
        if group.state == GroupState::Completed {
            return Ok(group
                .tasks
                .into_iter()
                .map(|t| t.result.unwrap_or(Value::Null))
                .collect());
        }
        let culprit = group
            .tasks
            .iter()
            .find(|t| t.state == TaskState::Dead)
            .or_else(|| group.tasks.iter().find(|t| t.state == TaskState::Canceled));
        Err(WaitError::GroupFailed {
            id: group.id.clone(),
            state: group.state,
            task_id: culprit.map(|t| t.id.clone()).unwrap_or_default(),
            error: culprit.and_then(|t| t.last_error.clone()),
        })
    }

    /// Cancels every member that has not ended.
    pub async fn cancel(&self) -> Result<Group, Error> {
        self.client.cancel_group(&self.id).await
    }
}

impl Client {
    /// A future over the task `id`.
    pub fn task(&self, id: impl Into<String>) -> TaskHandle {
        TaskHandle::new(self.clone(), id.into())
    }

    /// Enqueues `task` and returns its future.
    pub async fn submit(&self, queue: &str, task: &EnqueueOptions) -> Result<TaskHandle, Error> {
        let e = self.enqueue(queue, task).await?;
        Ok(self.task(e.id))
    }

    /// Creates a group of `tasks` in `queue` and returns its future.
    pub async fn group(
        &self,
        queue: &str,
        tasks: &[EnqueueOptions],
        fail_fast: bool,
    ) -> Result<GroupHandle, Error> {
        let g = self.create_group(queue, tasks, fail_fast).await?;
        Ok(GroupHandle {
            client: self.clone(),
            id: g.id,
            task_ids: g.task_ids,
        })
    }
}
