//! A worker pool for weir (SPEC §7): handlers by task `kind`, a fixed concurrency,
//! a cancellation token and deadline per task, heartbeats for long tasks, batched
//! acks, and graceful shutdown.
//!
//! ```no_run
//! use std::time::Duration;
//! use weir_worker::{HandlerError, PoolBuilder, Task, Ctx};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // The pool talks to the server through this client: its API key and TLS
//! // settings (a CA for `https://`) are the pool's.
//! let client = weir_client::Client::builder("https://weir.internal:7700")
//!     .api_key(std::env::var("WEIR_API_KEY")?)
//!     .ca_cert_file("/etc/weir/ca.pem")
//!     .build()?;
//! let pool = PoolBuilder::new(client)
//!     .queue("emails", 3)
//!     .queue("reports", 1)
//!     .concurrency(32)
//!     .handler("email.send", |task: Task, ctx: Ctx| async move {
//!         tokio::select! {
//!             _ = ctx.cancelled() => Err(HandlerError::retry("stopped")),
//!             _ = tokio::time::sleep(Duration::from_millis(10)) => Ok(serde_json::json!({"sent": task.payload})),
//!         }
//!     })
//!     .build()?;
//! let report = pool.run(weir_worker::shutdown_signal()).await?;
//! println!("{report:?}");
//! # Ok(()) }
//! ```
//!
//! Delivery is at-least-once: a task whose lease runs out (this process died or
//! hung) is handed out again, so handlers must be idempotent.
//!
//! How a task ends:
//! - the handler returns `Ok(result)` → ack (the task is `completed`, or
//!   `canceled` if it was canceled while it ran);
//! - `Err(HandlerError::Retry)` → fail with `retry: true`; `Err(Fatal)` → fail with
//!   `retry: false`;
//! - a panic → fail with the panic message, `retry: true`;
//! - the handler ignores its token for the cancel grace (`CANCEL_GRACE_MS` unless
//!   set with `cancel_grace`) after it fired → its
//!   future is dropped and the task failed ("timeout: handler did not finish within
//!   timeout_ms" after the deadline, retried; not retried after a cancel; "worker
//!   shut down", retried, at shutdown). A handler blocking a thread cannot be
//!   dropped; it is only no longer waited for.
//! - a kind with no handler and no fallback → fail with `retry: false`;
//! - a task the client cannot decode (a payload nested past serde_json's limit or
//!   holding a lone surrogate, stored before the server refused those) → fail with
//!   `retry: false` before any handler runs; the rest of its lease batch runs.

mod builder;
mod channel;
pub mod limits;
mod pool;
mod retry;
mod select;
mod settle;
mod supervise;
mod task;

use std::future::Future;

pub use builder::{ConfigError, HandlerResult, Pool, PoolBuilder, Transport};
pub use pool::{PoolError, PoolReport};
pub use task::{CancelReason, Ctx, HandlerError, Task};
pub use tokio_util::sync::CancellationToken;

/// Resolves on SIGINT or SIGTERM (on non-Unix systems, on Ctrl-C). The handlers are
/// installed when this is called, not when it is first polled, so a signal that
/// comes in between is not lost.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM received"),
                        _ = int.recv() => tracing::info!("SIGINT received"),
                    }
                }
                (term, int) => {
                    let error = term.err().or(int.err()).map(|e| e.to_string());
                    tracing::warn!(
                        error,
                        "could not install signal handlers; falling back to Ctrl-C"
                    );
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
