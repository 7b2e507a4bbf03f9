//! What a handler sees: the [`Task`], its [`Ctx`] (cancellation token, deadline and
//! why it was cancelled), and the [`HandlerError`] it may return.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One leased task, as handed to a handler.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    /// The task's id (time-ordered).
    pub id: String,
    /// The queue it was leased from.
    pub queue: String,
    /// The handler name it was enqueued with.
    pub kind: String,
    /// The producer's payload, as is.
    pub payload: Value,
    /// 1-based number of this attempt.
    pub attempt: u32,
    /// Attempts the task may use in all.
    pub max_attempts: u32,
    /// This attempt's timeout; the handler's [`Ctx::deadline`] is its start plus this.
    pub timeout_ms: u64,
    /// The producer's W3C trace context (`traceparent`, `tracestate`), if it sent
    /// one. The pool's span for the task (`process <queue>`) is already its child.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Why a handler's token was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CancelReason {
    /// The attempt's `timeout_ms` ran out.
    Deadline,
    /// A producer or operator canceled the task (`POST /v1/tasks/{id}/cancel`); the
    /// task ends `canceled` whatever the handler returns.
    Canceled,
    /// The pool is shutting down and its grace period is over.
    Shutdown,
    /// The server no longer knows this worker's lease (it expired, for instance
    /// after a long network outage): another worker may run the task now, and this
    /// attempt's result will be refused.
    LeaseLost,
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CancelReason::Deadline => "deadline",
            CancelReason::Canceled => "canceled",
            CancelReason::Shutdown => "shutdown",
            CancelReason::LeaseLost => "lease lost",
        })
    }
}

/// A running task's context: a cancellation token that fires at the deadline, on a
/// cancel of the task, or when the pool shuts down; and the deadline itself. Cheap
/// to clone; hand it to whatever sub-tasks the handler starts.
#[derive(Clone, Debug)]
pub struct Ctx {
    inner: Arc<CtxInner>,
}

#[derive(Debug)]
struct CtxInner {
    /// Fires when the handler should stop.
    token: CancellationToken,
    /// The attempt's start plus its `timeout_ms`.
    deadline: Instant,
    /// Set once, just before `token` is cancelled by the pool; unset when only the
    /// pool's parent token fired (that is a shutdown).
    reason: OnceLock<CancelReason>,
}

impl Ctx {
    pub(crate) fn new(token: CancellationToken, deadline: Instant) -> Ctx {
        Ctx {
            inner: Arc::new(CtxInner {
                token,
                deadline,
                reason: OnceLock::new(),
            }),
        }
    }

    /// A context tied to no pool, for testing a handler on its own. Its token fires
    /// only when the caller cancels it through [`Ctx::token`]; the reason then
    /// reads as `Shutdown`.
    pub fn detached(deadline: Instant) -> Ctx {
        Ctx::new(CancellationToken::new(), deadline)
    }

    /// The token; cancelled when the handler should stop.
    pub fn token(&self) -> &CancellationToken {
        &self.inner.token
    }

    /// When this attempt's `timeout_ms` runs out.
    pub fn deadline(&self) -> Instant {
        self.inner.deadline
    }

    /// Time left until the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.inner
            .deadline
            .saturating_duration_since(Instant::now())
    }

    /// Resolves once the token is cancelled.
    pub async fn cancelled(&self) {
        self.inner.token.cancelled().await
    }

    /// Whether the token is cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Why the token was cancelled; `None` while it is not.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        if !self.inner.token.is_cancelled() {
            return None;
        }
        Some(
            self.inner
                .reason
                .get()
                .copied()
                .unwrap_or(CancelReason::Shutdown),
        )
    }

    /// Records `reason` and cancels the token, unless it is already cancelled (the
    /// first reason wins). Returns whether this call cancelled it.
    pub(crate) fn cancel_with(&self, reason: CancelReason) -> bool {
        if self.inner.token.is_cancelled() {
            return false;
        }
        // The reason is set before the token fires, so a handler woken by the token
        // always reads it.
        let _ = self.inner.reason.set(reason);
        self.inner.token.cancel();
        true
    }
}

/// A handler's failure. `Retry` fails the attempt with `retry: true` (the task is
/// retried with backoff while it has attempts left); `Fatal` fails it with
/// `retry: false` (the task goes `dead` at once).
///
/// Any `std::error::Error` converts into `Retry` (with its source chain in the
/// message), so `?` works in handlers. `HandlerError` itself deliberately does not
/// implement `std::error::Error`, which is what makes that blanket conversion legal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandlerError {
    /// A transient failure: try again later.
    Retry(String),
    /// A permanent failure: do not try again.
    Fatal(String),
}

impl HandlerError {
    /// A transient failure.
    pub fn retry(message: impl Into<String>) -> HandlerError {
        HandlerError::Retry(message.into())
    }

    /// A permanent failure.
    pub fn fatal(message: impl Into<String>) -> HandlerError {
        HandlerError::Fatal(message.into())
    }

    /// The error text sent to the server.
    pub fn message(&self) -> &str {
        match self {
            HandlerError::Retry(m) | HandlerError::Fatal(m) => m,
        }
    }

    /// Whether the task should be retried.
    pub fn is_retry(&self) -> bool {
        matches!(self, HandlerError::Retry(_))
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Retry(m) => write!(f, "{m} (will retry)"),
            HandlerError::Fatal(m) => write!(f, "{m} (fatal)"),
        }
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(e: E) -> HandlerError {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        HandlerError::Retry(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_parent_means_shutdown() {
        let parent = CancellationToken::new();
        let ctx = Ctx::new(parent.child_token(), Instant::now());
        assert_eq!(ctx.cancel_reason(), None);
        assert!(ctx.cancel_with(CancelReason::Deadline));
        assert!(!ctx.cancel_with(CancelReason::Canceled));
        assert_eq!(ctx.cancel_reason(), Some(CancelReason::Deadline));

        let ctx = Ctx::new(parent.child_token(), Instant::now());
        parent.cancel();
        assert!(ctx.is_cancelled());
        assert!(!ctx.cancel_with(CancelReason::Deadline));
        assert_eq!(ctx.cancel_reason(), Some(CancelReason::Shutdown));
    }

    #[test]
    fn std_errors_convert_to_retry_with_their_chain() {
        let io = std::io::Error::other("disk on fire");
        let e: HandlerError = io.into();
        assert_eq!(e, HandlerError::Retry("disk on fire".into()));
        assert!(e.is_retry());
        assert_eq!(HandlerError::fatal("no").message(), "no");
    }
}
