//! The task state machine of SPEC §3. Each function takes a record, the time and
//! (where needed) a random number, checks that the transition is allowed, and
//! applies it. The stores call only these, so every backend moves tasks the same way.
//!
//! ```text
//! scheduled ──run_at──▶ pending ──lease──▶ active ──ack──▶ completed
//!     ▲                    ▲  ▲               │  ├─fail, attempts left──▶ scheduled
//!     │                    │  └──release──────┤  ├─fail, none left / deadline──▶ dead
//!     └────────────────────┼─────────────────-┘  ├─lease expired, attempts left──▶ pending
//!   cancel (queued) ──▶ canceled ◀── ack/fail after cancel_requested
//! ```

use crate::{Backoff, NewTask, TaskId, TaskRecord, TaskState};

/// A transition that the task's state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("task is already {}", .0.as_str())]
    Terminal(TaskState),
    #[error("task is {}, not active", .0.as_str())]
    NotActive(TaskState),
    #[error("task is {}, not pending", .0.as_str())]
    NotPending(TaskState),
    #[error("task is {}; only dead or canceled tasks can be retried", .0.as_str())]
    NotRetryable(TaskState),
    #[error("task is {}; only finished tasks can be deleted", .0.as_str())]
    NotFinished(TaskState),
    #[error("task belongs to a group, which has counted its end; it cannot be retried")]
    GroupMember,
}

/// Error text recorded when a task's deadline passes before it could (re)start.
pub const DEADLINE_ERROR: &str = "deadline exceeded";
/// Error text recorded when a lease expires without an ack.
pub const LEASE_EXPIRED_ERROR: &str = "lease expired without ack";

/// A new record for `task` created at `now_ms`.
pub fn create(id: TaskId, queue: &str, task: NewTask, now_ms: u64) -> TaskRecord {
    let run_at_ms = task
        .run_at_ms
        .unwrap_or_else(|| now_ms.saturating_add(task.delay_ms));
    let state = if run_at_ms > now_ms {
        TaskState::Scheduled
    } else {
        TaskState::Pending
    };
    TaskRecord {
        id,
        queue: queue.to_owned(),
        kind: task.kind,
        priority: task.priority,
        state,
        attempt: 0,
        max_attempts: task.max_attempts.max(1),
        timeout_ms: task.timeout_ms,
        run_at_ms,
        deadline_ms: task.deadline_ms,
        idempotency_key: task.idempotency_key,
        retention_ms: task.retention_ms,
        created_ms: now_ms,
        started_ms: None,
        finished_ms: None,
        result: None,
        last_error: None,
        cancel_requested: false,
        group: None,
        trace: task.trace,
    }
}

/// What happened when a worker tried to start a pending task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The task is now active with its attempt counted.
    Started,
    /// Its deadline had passed: it is now dead and must not run.
    DeadlineExpired,
}

/// pending → active (or → dead when past its deadline).
pub fn start(rec: &mut TaskRecord, now_ms: u64) -> Result<Start, TransitionError> {
    match rec.state {
        TaskState::Pending | TaskState::Scheduled => {}
        s if s.is_terminal() => return Err(TransitionError::Terminal(s)),
        s => return Err(TransitionError::NotPending(s)),
    }
    if rec.deadline_ms.is_some_and(|d| now_ms >= d) {
        finish(rec, TaskState::Dead, now_ms);
        rec.last_error = Some(DEADLINE_ERROR.to_owned());
        return Ok(Start::DeadlineExpired);
    }
    rec.state = TaskState::Active;
    rec.attempt += 1;
    rec.started_ms = Some(now_ms);
    debug_assert!(rec.attempt <= rec.max_attempts);
    Ok(Start::Started)
}

/// active → completed (→ canceled when a cancel was requested while it ran).
pub fn complete(
    rec: &mut TaskRecord,
    result: Option<Vec<u8>>,
    now_ms: u64,
) -> Result<TaskState, TransitionError> {
    expect_active(rec)?;
    rec.result = result;
    let next = if rec.cancel_requested {
        TaskState::Canceled
    } else {
        TaskState::Completed
    };
    finish(rec, next, now_ms);
    Ok(next)
}

/// active → scheduled (retry after backoff) | dead | canceled.
/// `unit` is a uniform random number in [0, 1) for the backoff's jitter.
pub fn fail(
    rec: &mut TaskRecord,
    error: String,
    retry: bool,
    backoff: &Backoff,
    unit: f64,
    now_ms: u64,
) -> Result<TaskState, TransitionError> {
    expect_active(rec)?;
    rec.last_error = Some(error);
    if rec.cancel_requested {
        finish(rec, TaskState::Canceled, now_ms);
        return Ok(TaskState::Canceled);
    }
    let run_at_ms = now_ms.saturating_add(backoff.delay_ms(rec.attempt, unit));
    let can_retry =
        retry && rec.attempt < rec.max_attempts && rec.deadline_ms.is_none_or(|d| run_at_ms < d);
    if can_retry {
        rec.state = TaskState::Scheduled;
        rec.run_at_ms = run_at_ms;
        Ok(TaskState::Scheduled)
    } else {
        finish(rec, TaskState::Dead, now_ms);
        Ok(TaskState::Dead)
    }
}

/// active → pending (attempts left) | dead, when its lease ran out without an ack.
/// The attempt stays counted: the worker may have run it.
pub fn lease_expired(rec: &mut TaskRecord, now_ms: u64) -> Result<TaskState, TransitionError> {
    expect_active(rec)?;
    rec.last_error = Some(LEASE_EXPIRED_ERROR.to_owned());
    let next = if rec.cancel_requested {
        TaskState::Canceled
    } else if rec.attempt >= rec.max_attempts {
        TaskState::Dead
    } else if rec.deadline_ms.is_some_and(|d| now_ms >= d) {
        rec.last_error = Some(DEADLINE_ERROR.to_owned());
        TaskState::Dead
    } else {
        rec.state = TaskState::Pending;
        rec.run_at_ms = now_ms;
        return Ok(TaskState::Pending);
    };
    finish(rec, next, now_ms);
    Ok(next)
}

/// active → pending without counting the attempt (the worker never started it),
/// or → canceled if a cancel was requested meanwhile.
pub fn release(rec: &mut TaskRecord, now_ms: u64) -> Result<TaskState, TransitionError> {
    expect_active(rec)?;
    rec.attempt = rec.attempt.saturating_sub(1);
    if rec.cancel_requested {
        finish(rec, TaskState::Canceled, now_ms);
        return Ok(TaskState::Canceled);
    }
    rec.state = TaskState::Pending;
    Ok(TaskState::Pending)
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// The task was queued and is now canceled.
    Canceled,
    /// The task is active; its worker learns of the cancel from its heartbeat.
    Requested,
}

/// scheduled | pending → canceled; active → cancel requested; terminal → error.
pub fn cancel(rec: &mut TaskRecord, now_ms: u64) -> Result<Cancel, TransitionError> {
    match rec.state {
        TaskState::Scheduled | TaskState::Pending => {
            finish(rec, TaskState::Canceled, now_ms);
            Ok(Cancel::Canceled)
        }
        TaskState::Active => {
            rec.cancel_requested = true;
            Ok(Cancel::Requested)
        }
        s => Err(TransitionError::Terminal(s)),
    }
}

/// dead | canceled → pending, by an operator: attempts start over, the cancel
/// request, the result and the finish time are cleared, and it runs now, at its
/// first place in FIFO order (as a release puts a task back). The last error stays: it says
/// why the task had ended. Its deadline stays too, so a task past it dies at its
/// next lease. A group member cannot be retried: its group has counted its end.
pub fn retry(rec: &mut TaskRecord, now_ms: u64) -> Result<(), TransitionError> {
    if !matches!(rec.state, TaskState::Dead | TaskState::Canceled) {
        return Err(TransitionError::NotRetryable(rec.state));
    }
    if rec.group.is_some() {
        return Err(TransitionError::GroupMember);
    }
    rec.state = TaskState::Pending;
    rec.attempt = 0;
    rec.cancel_requested = false;
    rec.result = None;
    rec.finished_ms = None;
    rec.started_ms = None;
    rec.run_at_ms = now_ms;
    Ok(())
}

fn expect_active(rec: &TaskRecord) -> Result<(), TransitionError> {
    match rec.state {
        TaskState::Active => Ok(()),
        s if s.is_terminal() => Err(TransitionError::Terminal(s)),
        s => Err(TransitionError::NotActive(s)),
    }
}

fn finish(rec: &mut TaskRecord, state: TaskState, now_ms: u64) {
    debug_assert!(state.is_terminal());
    debug_assert!(!rec.state.is_terminal());
    rec.state = state;
    rec.finished_ms = Some(now_ms);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn new_task(max_attempts: u32) -> NewTask {
        NewTask {
            kind: "k".into(),
            priority: 0,
            run_at_ms: None,
            delay_ms: 0,
            max_attempts,
            timeout_ms: 1000,
            deadline_ms: None,
            idempotency_key: None,
            retention_ms: 10_000,
            trace: None,
        }
    }

    fn rec(max_attempts: u32) -> TaskRecord {
        create(TaskId::new(100, 1), "q", new_task(max_attempts), 100)
    }

    #[test]
    fn retry_brings_dead_and_canceled_tasks_back_with_attempts_reset() {
        let mut r = rec(1);
        start(&mut r, 110).unwrap();
        fail(&mut r, "boom".into(), true, &Backoff::default(), 0.5, 120).unwrap();
        assert_eq!(r.state, TaskState::Dead);
        retry(&mut r, 130).unwrap();
        assert_eq!(r.state, TaskState::Pending);
        assert_eq!((r.attempt, r.run_at_ms, r.finished_ms), (0, 130, None));
        assert_eq!(
            r.last_error.as_deref(),
            Some("boom"),
            "why it had ended stays"
        );
        assert_eq!(start(&mut r, 140), Ok(Start::Started));
        assert_eq!(
            retry(&mut r, 150),
            Err(TransitionError::NotRetryable(TaskState::Active))
        );
        complete(&mut r, Some(b"1".to_vec()), 160).unwrap();
        assert_eq!(
            retry(&mut r, 170),
            Err(TransitionError::NotRetryable(TaskState::Completed))
        );

        let mut c = rec(3);
        cancel(&mut c, 110).unwrap();
        c.group = Some(TaskId::new(1, 1));
        assert_eq!(retry(&mut c, 120), Err(TransitionError::GroupMember));
        c.group = None;
        retry(&mut c, 120).unwrap();
        assert_eq!((c.state, c.cancel_requested), (TaskState::Pending, false));
    }

    #[test]
    fn delayed_task_is_scheduled() {
        let mut t = new_task(1);
        t.run_at_ms = Some(500);
        let r = create(TaskId::new(100, 1), "q", t, 100);
        assert_eq!(r.state, TaskState::Scheduled);
        assert_eq!(r.run_at_ms, 500);
    }

    #[test]
    fn happy_path() {
        let mut r = rec(3);
        assert_eq!(r.state, TaskState::Pending);
        assert_eq!(start(&mut r, 110), Ok(Start::Started));
        assert_eq!(r.attempt, 1);
        assert_eq!(
            complete(&mut r, Some(b"1".to_vec()), 120),
            Ok(TaskState::Completed)
        );
        assert_eq!(r.expires_at_ms(), Some(10_120));
        assert_eq!(
            complete(&mut r, None, 130),
            Err(TransitionError::Terminal(TaskState::Completed))
        );
    }

    #[test]
    fn retries_until_dead() {
        let b = Backoff {
            base_ms: 10,
            cap_ms: 100,
        };
        let mut r = rec(2);
        start(&mut r, 0).unwrap();
        assert_eq!(
            fail(&mut r, "x".into(), true, &b, 0.5, 0),
            Ok(TaskState::Scheduled)
        );
        assert!(r.run_at_ms >= 5 && r.run_at_ms <= 10);
        start(&mut r, 20).unwrap();
        assert_eq!(
            fail(&mut r, "y".into(), true, &b, 0.5, 20),
            Ok(TaskState::Dead)
        );
        assert_eq!(r.last_error.as_deref(), Some("y"));
    }

    #[test]
    fn fail_without_retry_is_dead() {
        let mut r = rec(5);
        start(&mut r, 0).unwrap();
        assert_eq!(
            fail(&mut r, "no".into(), false, &Backoff::default(), 0.0, 0),
            Ok(TaskState::Dead)
        );
    }

    #[test]
    fn deadline_stops_start() {
        let mut r = rec(5);
        r.deadline_ms = Some(50);
        assert_eq!(start(&mut r, 50), Ok(Start::DeadlineExpired));
        assert_eq!(r.state, TaskState::Dead);
    }

    #[test]
    fn cancel_while_active_ends_canceled_whatever_the_worker_says() {
        let mut r = rec(5);
        start(&mut r, 0).unwrap();
        assert_eq!(cancel(&mut r, 1), Ok(Cancel::Requested));
        assert_eq!(r.state, TaskState::Active);
        assert_eq!(complete(&mut r.clone(), None, 2), Ok(TaskState::Canceled));
        assert_eq!(
            fail(
                &mut r.clone(),
                "e".into(),
                true,
                &Backoff::default(),
                0.0,
                2
            ),
            Ok(TaskState::Canceled)
        );
        assert_eq!(lease_expired(&mut r.clone(), 2), Ok(TaskState::Canceled));
        assert_eq!(release(&mut r, 2), Ok(TaskState::Canceled));
        assert_eq!(
            cancel(&mut r, 3),
            Err(TransitionError::Terminal(TaskState::Canceled))
        );
    }

    #[test]
    fn release_does_not_count_the_attempt() {
        let mut r = rec(1);
        start(&mut r, 0).unwrap();
        assert_eq!(release(&mut r, 1), Ok(TaskState::Pending));
        assert_eq!(r.attempt, 0);
        start(&mut r, 2).unwrap();
        assert_eq!(r.attempt, 1);
    }

    #[test]
    fn lease_expiry_counts_the_attempt() {
        let mut r = rec(2);
        start(&mut r, 0).unwrap();
        assert_eq!(lease_expired(&mut r, 5), Ok(TaskState::Pending));
        start(&mut r, 6).unwrap();
        assert_eq!(lease_expired(&mut r, 9), Ok(TaskState::Dead));
        assert_eq!(r.attempt, 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Start,
        Complete,
        Fail(bool),
        Expire,
        Release,
        Cancel,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Start),
            Just(Op::Complete),
            any::<bool>().prop_map(Op::Fail),
            Just(Op::Expire),
            Just(Op::Release),
            Just(Op::Cancel),
        ]
    }

    proptest! {
        /// Whatever sequence of events arrives: no transition leaves a terminal
        /// state, and attempts never exceed max_attempts.
        #[test]
        fn terminal_is_final_and_attempts_bounded(max in 1u32..6, ops in proptest::collection::vec(op(), 0..60)) {
            let mut r = rec(max);
            let b = Backoff { base_ms: 1, cap_ms: 8 };
            for (i, o) in ops.into_iter().enumerate() {
                let now = 1000 + i as u64 * 100;
                let before = r.clone();
                let res = match o {
                    Op::Start => start(&mut r, now).map(|_| ()),
                    Op::Complete => complete(&mut r, None, now).map(|_| ()),
                    Op::Fail(retry) => fail(&mut r, "e".into(), retry, &b, 0.3, now).map(|_| ()),
                    Op::Expire => lease_expired(&mut r, now).map(|_| ()),
                    Op::Release => release(&mut r, now).map(|_| ()),
                    Op::Cancel => cancel(&mut r, now).map(|_| ()),
                };
                if before.state.is_terminal() {
                    prop_assert!(res.is_err());
                    prop_assert_eq!(&r, &before);
                }
                if res.is_err() {
                    prop_assert_eq!(&r, &before);
                }
                prop_assert!(r.attempt <= r.max_attempts);
                prop_assert_eq!(r.finished_ms.is_some(), r.state.is_terminal());
            }
        }
    }
}
