//! weir's HTTP API (SPEC §5) on axum: wire types, one error mapping to
//! problem+json, the routes, and a server loop on hyper with a connection cap,
//! connection timeouts and graceful shutdown.

pub mod api;
pub mod conn;
pub mod error;
pub mod extract;
pub mod wire;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_store::{Broker, EmbeddedBroker, EmbeddedConfig};

pub use conn::{ConnLimits, FileBudget};

use weir_core::{Backoff, Limits};

/// Validated runtime configuration of `weir serve` (built by the binary from its
/// flags and `WEIR_*` environment variables before anything starts).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Input limits.
    pub limits: Limits,
    /// Retry backoff.
    pub backoff: Backoff,
    /// Added to a task's `timeout_ms` to form its lease.
    pub lease_grace_ms: u64,
    /// Default retention of completed and canceled tasks.
    pub retention_ms: u64,
    /// How long shutdown waits for in-flight requests before it gives up on them.
    pub shutdown_grace_ms: u64,
    /// Memtable size per keyspace of the embedded store, in bytes.
    pub memtable_bytes_max: u64,
    /// Most table files the embedded store keeps open; with
    /// `conn.connections_max`, its share of the process's open-file limit.
    pub store_files_cached_max: usize,
    /// The connection layer's limits: the connection cap and the timeouts.
    pub conn: ConnLimits,
}

impl ServeConfig {
    /// The defaults, with the open-file budget taken from this process's current
    /// limit (`FileBudget::from_process`).
    pub fn new(data_dir: PathBuf) -> ServeConfig {
        let files = FileBudget::from_process();
        ServeConfig {
            data_dir,
            limits: Limits::default(),
            backoff: Backoff::default(),
            lease_grace_ms: weir_core::limits::LEASE_GRACE_MS_DEFAULT,
            retention_ms: weir_core::limits::RETENTION_MS_DEFAULT,
            shutdown_grace_ms: 10_000,
            memtable_bytes_max: weir_store::embedded::MEMTABLE_BYTES_DEFAULT,
            store_files_cached_max: files.store_files_cached_max,
            conn: ConnLimits::new(files),
        }
    }
}

/// Opens the embedded store that `config` names.
pub fn open_store(config: &ServeConfig) -> anyhow::Result<EmbeddedBroker> {
    let mut ec = EmbeddedConfig::new(&config.data_dir);
    ec.limits = config.limits.clone();
    ec.backoff = config.backoff;
    ec.lease_grace_ms = config.lease_grace_ms;
    ec.memtable_bytes_max = config.memtable_bytes_max;
    ec.files_cached_max = config.store_files_cached_max;
    EmbeddedBroker::open(ec)
        .map_err(|e| anyhow::anyhow!("opening the store in {}: {e}", config.data_dir.display()))
}

/// The API over a broker, without a socket.
pub fn app(broker: Arc<dyn Broker>, config: ServeConfig) -> axum::Router {
    api::router(api::AppState {
        broker,
        config: Arc::new(config),
    })
}

/// Opens the store in `config.data_dir`, serves the API on `listener` until
/// `shutdown` resolves, then drains in-flight requests (long-polls answer at once)
/// for at most `shutdown_grace_ms`, and flushes and closes the store.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store_config = config.clone();
    let broker = tokio::task::spawn_blocking(move || open_store(&store_config)).await??;
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let limits = config.conn;
    let app = app(Arc::new(broker.clone()), config);
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    let accepting = conn::accept_loop(listener, app, limits, stopping.clone(), connections.clone());
    // Serve until one of these ends; a new reason to stop is one more arm.
    tokio::select! {
        () = shutdown => {}
        never = accepting => match never {},
        // A failed fsync may have lost written data: exit non-zero at once so a
        // supervisor restarts the server and recovery reads what is really on disk.
        detail = broker.fatal() => {
            tracing::error!(error = %detail, "the store failed; exiting so that a restart recovers it");
            return Err(anyhow::anyhow!("the store failed: {detail}"));
        }
    }
    // The accept loop is dropped here, which closes the listener.
    tracing::info!("shutting down: draining requests");
    broker.begin_shutdown();
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "requests still open after the grace period; closing anyway"
        );
    }
    broker
        .close()
        .await
        .map_err(|e| anyhow::anyhow!("closing the store: {e}"))?;
    tracing::info!("store flushed; bye");
    Ok(())
}
