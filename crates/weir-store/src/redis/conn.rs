//! One handle over a single Redis (`ConnectionManager`) or a Redis Cluster
//! (`ClusterConnection`); both reconnect by themselves. Every call is bounded by
//! `command_timeout_ms`, and every failure is sorted into an outage (503 with
//! Retry-After, the health flag goes down) or an internal error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::{Outage, StoreError};

/// How long a client is told to wait after a Redis outage.
pub const RETRY_AFTER_MS: u64 = 1000;

#[derive(Clone)]
pub enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether Redis answered lately: the background pinger and every call set it.
#[derive(Default)]
pub struct Health {
    down: AtomicBool,
}

impl Health {
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        let was_down = self.down.swap(!up, Ordering::Relaxed);
        if was_down == up {
            if up {
                tracing::info!("redis answers again");
            } else {
                tracing::warn!("redis does not answer; refusing calls until it does");
            }
        }
    }
}

/// Whether a Redis error means Redis cannot serve now (as opposed to a bug).
pub fn is_outage(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_cluster_error()
    {
        return true;
    }
    match e.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => true,
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => true,
        _ => matches!(
            e.code(),
            Some("BUSY" | "LOADING" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN" | "OOM")
        ),
    }
}

pub fn unavailable(detail: String) -> StoreError {
    StoreError::Unavailable {
        cause: Outage::Unreachable,
        detail,
        retry_after_ms: RETRY_AFTER_MS,
    }
}

/// Runs one Redis call under `timeout`, keeping `health` current.
pub async fn call<T>(
    health: &Health,
    timeout: Duration,
    context: &str,
    fut: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => {
            health.set_up(true);
            Ok(v)
        }
        Ok(Err(e)) if is_outage(&e) => {
            health.set_up(false);
            Err(unavailable(format!("{context}: {e}")))
        }
        Ok(Err(e)) => Err(StoreError::internal(context.to_owned(), e)),
        Err(_) => {
            health.set_up(false);
            Err(unavailable(format!(
                "{context}: redis did not answer within {} ms",
                timeout.as_millis()
            )))
        }
    }
}

/// A shared handle with its health flag and timeout.
#[derive(Clone)]
pub struct Redis {
    pub conn: Conn,
    pub health: Arc<Health>,
    pub timeout: Duration,
    /// `commit_seconds` is each script call's round trip.
    pub metrics: crate::StoreMetrics,
}

impl Redis {
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        context: &str,
        cmd: &Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        call(
            &self.health,
            self.timeout,
            context,
            cmd.query_async(&mut conn),
        )
        .await
    }

    pub async fn script(
        &self,
        context: &str,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<Value, StoreError> {
        let mut conn = self.conn.clone();
        let started = std::time::Instant::now();
        let res = call(
            &self.health,
            self.timeout,
            context,
            inv.invoke_async(&mut conn),
        )
        .await;
        (self.metrics.commit_seconds).observe(started.elapsed().as_secs_f64());
        res
    }
}
