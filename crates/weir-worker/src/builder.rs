//! Configuring a pool: [`PoolBuilder`] collects queues, limits and handlers and
//! validates them into a [`Pool`] before anything runs.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::limits::{
    CONCURRENCY_DEFAULT, CONCURRENCY_MAX, HEARTBEAT_INTERVAL_MS_DEFAULT, HEARTBEAT_INTERVAL_MS_MIN,
    PREFETCH_MAX, QUEUES_MAX, QUEUE_NAME_BYTES_MAX, SHUTDOWN_GRACE_MS_DEFAULT, WEIGHT_MAX,
    WORKER_NAME_BYTES_MAX,
};
use crate::task::{Ctx, HandlerError, Task};

/// What a handler's future resolves to.
pub type HandlerResult = Result<Value, HandlerError>;

/// A registered handler, type-erased.
pub(crate) type HandlerFn =
    Arc<dyn Fn(Task, Ctx) -> Pin<Box<dyn Future<Output = HandlerResult> + Send>> + Send + Sync>;

/// A pool configuration that is wrong; found by [`PoolBuilder::build`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no queue to consume: add one with .queue(name, weight)")]
    NoQueues,
    #[error("at most {max} queues per pool, got {got}")]
    TooManyQueues { got: usize, max: usize },
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidQueueName { name: String, reason: &'static str },
    #[error("queue {0:?} added twice")]
    DuplicateQueue(String),
    #[error("queue {name:?} has weight {weight}; weights are 1..={max}")]
    InvalidWeight { name: String, weight: u32, max: u32 },
    #[error("concurrency must be 1..={max}, got {got}")]
    InvalidConcurrency { got: usize, max: usize },
    #[error("prefetch must be 1..={max}, got {got}")]
    InvalidPrefetch { got: usize, max: usize },
    #[error("heartbeat interval must be at least {min_ms} ms, got {got:?}")]
    HeartbeatTooShort { got: Duration, min_ms: u64 },
    #[error("cancel grace must be at most {max_ms} ms, got {got:?}")]
    CancelGraceTooLong { got: Duration, max_ms: u64 },
    #[error("worker name must be 1..={max} bytes, got {got}")]
    InvalidWorkerName { got: usize, max: usize },
    #[error("a handler for kind {0:?} was registered twice")]
    DuplicateHandler(String),
    #[error("no handler: register one with .handler(kind, f) or .fallback(f)")]
    NoHandlers,
}

/// How a pool gets its tasks and settles them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// One WebSocket per pool (`GET /v1/workers/connect`): the server pushes
    /// tasks as the pool grants credit and cancels the moment they are asked
    /// for, and extends the leases of the tasks it pushed; the pool settles in
    /// batches over it (`wss://` for an `https://` server). Falls back to
    /// [`Transport::Http`] for a server without the channel, more than 16 queues, strict order,
    /// unequal weights or fewer task slots than queues; reopens a lost channel
    /// with backoff.
    #[default]
    Channel,
    /// HTTP long-polls: a lease request per batch, `POST /v1/acks` per settle
    /// batch, a heartbeat per running task.
    Http,
}

/// Builds a [`Pool`]. Every setter takes and returns the builder; mistakes are
/// reported together by [`PoolBuilder::build`] (the first one found).
pub struct PoolBuilder {
    pub(crate) client: weir_client::Client,
    pub(crate) queues: Vec<(String, u32)>,
    pub(crate) strict_order: bool,
    pub(crate) concurrency: usize,
    pub(crate) prefetch: Option<usize>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) worker_name: Option<String>,
    pub(crate) handlers: HashMap<String, HandlerFn>,
    pub(crate) fallback: Option<HandlerFn>,
    pub(crate) transport: Transport,
    /// The first mistake a setter saw that `build` cannot see any more (a handler
    /// registered twice).
    pub(crate) deferred: Option<ConfigError>,
}

/// A validated pool configuration; [`Pool::run`](crate::Pool::run) runs it.
pub struct Pool {
    pub(crate) client: weir_client::Client,
    /// Queues with their weights, in the order they were added.
    pub(crate) queues: Vec<(String, u32)>,
    /// Drain earlier queues first instead of spreading by weight.
    pub(crate) strict_order: bool,
    /// Handlers running at once, at most.
    pub(crate) concurrency: usize,
    /// Tasks asked for per lease request, at most.
    pub(crate) prefetch: usize,
    /// Leased tasks held at once, running or waiting for a slot:
    /// `max(concurrency, prefetch)`.
    pub(crate) hold_max: usize,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) shutdown_grace: Duration,
    /// How long a handler may run on after its token fired before it is abandoned.
    pub(crate) cancel_grace: Duration,
    pub(crate) worker_name: String,
    pub(crate) handlers: HashMap<String, HandlerFn>,
    pub(crate) fallback: Option<HandlerFn>,
    pub(crate) transport: Transport,
}

impl Pool {
    /// Same as [`PoolBuilder::new`].
    pub fn builder(client: weir_client::Client) -> PoolBuilder {
        PoolBuilder::new(client)
    }
}

fn erase<F, Fut>(f: F) -> HandlerFn
where
    F: Fn(Task, Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |task, ctx| Box::pin(f(task, ctx)))
}

impl PoolBuilder {
    /// A builder over `client`, with no queue and no handler yet. Every request
    /// of the pool goes through `client`, so the server's URL (`https://` too),
    /// the API key and a CA to trust are set where it is built
    /// (`weir_client::Client::builder`).
    pub fn new(client: weir_client::Client) -> PoolBuilder {
        PoolBuilder {
            client,
            queues: Vec::new(),
            strict_order: false,
            concurrency: CONCURRENCY_DEFAULT,
            prefetch: None,
            heartbeat_interval: Duration::from_millis(HEARTBEAT_INTERVAL_MS_DEFAULT),
            shutdown_grace: Duration::from_millis(SHUTDOWN_GRACE_MS_DEFAULT),
            cancel_grace: Duration::from_millis(crate::limits::CANCEL_GRACE_MS),
            worker_name: None,
            handlers: HashMap::new(),
            fallback: None,
            transport: Transport::default(),
            deferred: None,
        }
    }

    /// Consumes `name`. With several queues, lease requests go to them in
    /// proportion to their weights (smooth weighted round-robin), falling through to
    /// the others when the chosen one is empty.
    pub fn queue(mut self, name: &str, weight: u32) -> Self {
        self.queues.push((name.to_owned(), weight));
        self
    }

    /// Always drain earlier-added queues first: a later queue is leased from only
    /// when every earlier one answered empty. Weights are then ignored.
    pub fn strict_order(mut self, on: bool) -> Self {
        self.strict_order = on;
        self
    }

    /// At most `n` handlers run at once (default 16).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// At most `n` tasks per lease request (default: the concurrency, capped at
    /// 1000). A prefetch above the concurrency also lets the pool hold up to `n`
    /// leased tasks in all, the ones beyond the running ones waiting for a slot;
    /// that hides the lease round trip for short tasks, but a waiting task's lease
    /// clock runs, so keep it near the concurrency for long tasks.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// How long a handler may go on after its token fired (deadline, cancel or
    /// shutdown) before the pool drops it and fails the task (default 1 s). A
    /// handler that stops a child process wants room for its kill grace here.
    pub fn cancel_grace(mut self, d: Duration) -> Self {
        self.cancel_grace = d;
        self
    }

    /// How often a running task's lease is extended (default 2 s; never less often
    /// than a third of the task's `timeout_ms`). Each heartbeat waits on the server
    /// for a cancel request in between, so a cancel reaches the handler at once
    /// whatever this is (after the task's first 25 ms).
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = d;
        self
    }

    /// How long running handlers may take to finish once shutdown was asked for
    /// (default 30 s); after it their tokens are cancelled with reason `Shutdown`.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }

    /// The name sent with lease requests (default `weir-worker-<pid>`).
    pub fn worker_name(mut self, name: &str) -> Self {
        self.worker_name = Some(name.to_owned());
        self
    }

    /// How the pool talks to the server (default [`Transport::Channel`]).
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }

    /// Runs `f` for tasks of `kind`.
    pub fn handler<F, Fut>(mut self, kind: &str, f: F) -> Self
    where
        F: Fn(Task, Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        if self.handlers.insert(kind.to_owned(), erase(f)).is_some() && self.deferred.is_none() {
            self.deferred = Some(ConfigError::DuplicateHandler(kind.to_owned()));
        }
        self
    }

    /// Runs `f` for tasks of any kind without a handler of its own. Without a
    /// fallback such a task fails with `retry: false` ("no handler for kind …").
    pub fn fallback<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Task, Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.fallback = Some(erase(f));
        self
    }

    /// Validates the configuration.
    pub fn build(self) -> Result<Pool, ConfigError> {
        if let Some(e) = self.deferred {
            return Err(e);
        }
        if self.queues.is_empty() {
            return Err(ConfigError::NoQueues);
        }
        if self.queues.len() > QUEUES_MAX {
            return Err(ConfigError::TooManyQueues {
                got: self.queues.len(),
                max: QUEUES_MAX,
            });
        }
        for (i, (name, weight)) in self.queues.iter().enumerate() {
            check_queue_name(name)?;
            if self.queues[..i].iter().any(|(n, _)| n == name) {
                return Err(ConfigError::DuplicateQueue(name.clone()));
            }
            // In strict order weights are unused, so any value is fine there.
            if !self.strict_order && !(1..=WEIGHT_MAX).contains(weight) {
                return Err(ConfigError::InvalidWeight {
                    name: name.clone(),
                    weight: *weight,
                    max: WEIGHT_MAX,
                });
            }
        }
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            return Err(ConfigError::InvalidConcurrency {
                got: self.concurrency,
                max: CONCURRENCY_MAX,
            });
        }
        let prefetch = match self.prefetch {
            Some(n) if !(1..=PREFETCH_MAX).contains(&n) => {
                return Err(ConfigError::InvalidPrefetch {
                    got: n,
                    max: PREFETCH_MAX,
                })
            }
            Some(n) => n,
            None => self.concurrency.min(PREFETCH_MAX),
        };
        if self.heartbeat_interval < Duration::from_millis(HEARTBEAT_INTERVAL_MS_MIN) {
            return Err(ConfigError::HeartbeatTooShort {
                got: self.heartbeat_interval,
                min_ms: HEARTBEAT_INTERVAL_MS_MIN,
            });
        }
        if self.cancel_grace > Duration::from_millis(crate::limits::CANCEL_GRACE_MS_MAX) {
            return Err(ConfigError::CancelGraceTooLong {
                got: self.cancel_grace,
                max_ms: crate::limits::CANCEL_GRACE_MS_MAX,
            });
        }
        let worker_name = self
            .worker_name
            .unwrap_or_else(|| format!("weir-worker-{}", std::process::id()));
        if !(1..=WORKER_NAME_BYTES_MAX).contains(&worker_name.len()) {
            return Err(ConfigError::InvalidWorkerName {
                got: worker_name.len(),
                max: WORKER_NAME_BYTES_MAX,
            });
        }
        if self.handlers.is_empty() && self.fallback.is_none() {
            return Err(ConfigError::NoHandlers);
        }
        Ok(Pool {
            client: self.client,
            queues: self.queues,
            strict_order: self.strict_order,
            concurrency: self.concurrency,
            prefetch,
            hold_max: self.concurrency.max(prefetch),
            heartbeat_interval: self.heartbeat_interval,
            shutdown_grace: self.shutdown_grace,
            cancel_grace: self.cancel_grace,
            worker_name,
            handlers: self.handlers,
            fallback: self.fallback,
            transport: self.transport,
        })
    }
}

/// SPEC §5: 1–128 characters of `[A-Za-z0-9_.:-]`. Checked here so a typo is a
/// startup error rather than a lease loop answered 400 forever.
fn check_queue_name(name: &str) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > QUEUE_NAME_BYTES_MAX {
        "longer than 128 bytes"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        "only [A-Za-z0-9_.:-] allowed"
    } else {
        return Ok(());
    };
    Err(ConfigError::InvalidQueueName {
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> weir_client::Client {
        weir_client::Client::new("http://127.0.0.1:1").unwrap()
    }

    async fn noop(_: Task, _: Ctx) -> HandlerResult {
        Ok(Value::Null)
    }

    fn err(b: PoolBuilder) -> ConfigError {
        match b.build() {
            Err(e) => e,
            Ok(_) => panic!("expected a config error"),
        }
    }

    #[test]
    fn defaults() {
        let p = PoolBuilder::new(client())
            .queue("q", 1)
            .handler("k", noop)
            .build()
            .unwrap();
        assert_eq!(p.concurrency, CONCURRENCY_DEFAULT);
        assert_eq!(p.prefetch, CONCURRENCY_DEFAULT);
        assert_eq!(p.hold_max, CONCURRENCY_DEFAULT);
        let p = PoolBuilder::new(client())
            .queue("q", 1)
            .concurrency(2)
            .prefetch(10)
            .fallback(noop)
            .build()
            .unwrap();
        assert_eq!(p.hold_max, 10);
        let p = PoolBuilder::new(client())
            .queue("q", 1)
            .concurrency(5000)
            .fallback(noop)
            .build()
            .unwrap();
        assert_eq!(p.prefetch, PREFETCH_MAX);
    }

    #[test]
    fn mistakes() {
        let b = || PoolBuilder::new(client()).handler("k", noop);
        assert_eq!(err(b()), ConfigError::NoQueues);
        assert!(matches!(
            err(b().queue("q", 1).concurrency(0)),
            ConfigError::InvalidConcurrency { got: 0, .. }
        ));
        assert!(matches!(
            err(b().queue("q", 1).prefetch(1001)),
            ConfigError::InvalidPrefetch { got: 1001, .. }
        ));
        assert!(matches!(
            err(b().queue("a/b", 1)),
            ConfigError::InvalidQueueName { .. }
        ));
        assert_eq!(
            err(b().queue("q", 1).queue("q", 2)),
            ConfigError::DuplicateQueue("q".into())
        );
        assert!(matches!(
            err(b().queue("q", 0)),
            ConfigError::InvalidWeight { weight: 0, .. }
        ));
        assert!(b().queue("q", 0).strict_order(true).build().is_ok());
        assert_eq!(
            err(b().queue("q", 1).handler("k", noop)),
            ConfigError::DuplicateHandler("k".into())
        );
        assert_eq!(
            err(PoolBuilder::new(client()).queue("q", 1)),
            ConfigError::NoHandlers
        );
        assert!(matches!(
            err(b().queue("q", 1).heartbeat_interval(Duration::ZERO)),
            ConfigError::HeartbeatTooShort { .. }
        ));
    }
}
