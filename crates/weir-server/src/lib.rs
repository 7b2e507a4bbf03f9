//! weir's HTTP API (SPEC §5) on axum: wire types, one error mapping to
//! problem+json, the routes, and a server loop on hyper with a connection cap,
//! connection timeouts, optional TLS (reloadable), an optional ingress limit per
//! client address and graceful shutdown.

pub mod api;
pub mod auth;
pub mod channel;
pub mod conn;
pub mod error;
pub mod extract;
mod http1;
pub mod ingress;
pub mod keys;
pub mod metrics;
pub mod openapi;
pub mod otel;
pub mod park;
pub mod schedule;
pub mod tls;
pub mod ui;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_store::{Broker, Checked};

pub use conn::{ConnLimits, FileBudget};
pub use ingress::IngressLimit;
pub use tls::{ServerTls, TlsError, TlsFiles};

use weir_core::Limits;

/// Validated runtime configuration of the HTTP side of `weir serve` (built by the
/// binary from its flags and `WEIR_*` environment variables before anything
/// starts). The store is configured and opened by the binary: this crate knows no
/// backend, only the `Broker` trait.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Input limits.
    pub limits: Limits,
    /// Default retention of completed and canceled tasks.
    pub retention_ms: u64,
    /// How long shutdown waits for in-flight requests before it gives up on them.
    pub shutdown_grace_ms: u64,
    /// The connection layer's limits: the connection cap and the timeouts.
    pub conn: ConnLimits,
    /// The request rate each client address may send (every route but the
    /// probes); `None`, the default, limits nothing and costs nothing.
    pub ingress: Option<IngressLimit>,
    /// Where to export spans (OTLP/HTTP); `None`, the default, makes none.
    pub otlp_endpoint: Option<String>,
    /// Every route but the open ones needs an API key even while the store holds
    /// none (`--require-auth`); without it, auth is on once the store holds a key.
    pub require_auth: bool,
    /// `/metrics` needs a reader's key when auth is on (`--metrics-auth`).
    pub metrics_auth: bool,
    /// Serve HTTPS with this certificate and key; `None`, the default, serves
    /// plain HTTP. A handle: `ServerTls::reload` on a clone of it changes the pair
    /// new connections get while `serve` runs.
    pub tls: Option<ServerTls>,
}

impl ServeConfig {
    /// The defaults, with the connection cap taken from this process's current
    /// open-file limit (`FileBudget::from_process`).
    pub fn new() -> ServeConfig {
        ServeConfig {
            limits: Limits::default(),
            retention_ms: weir_core::limits::RETENTION_MS_DEFAULT,
            shutdown_grace_ms: 10_000,
            conn: ConnLimits::new(FileBudget::from_process()),
            ingress: None,
            otlp_endpoint: None,
            require_auth: false,
            metrics_auth: false,
            tls: None,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig::new()
    }
}

/// The API over a broker, without a socket. The broker is reached through
/// `Checked`, so every store gets the same input checks. With an ingress limit,
/// every route is behind it; a client without an API key is known by the
/// request's `ConnectInfo<SocketAddr>`, which `serve` sets (without one, all
/// such requests share one bucket).
pub fn app(broker: Arc<dyn Broker>, config: ServeConfig) -> axum::Router {
    api::router(state(broker, config, None))
}

/// What every handler shares: the broker behind the input checks, the config.
fn state(
    broker: Arc<dyn Broker>,
    config: ServeConfig,
    otel: Option<Arc<otel::Otel>>,
) -> api::AppState {
    let store_metrics = broker.metrics();
    let broker: Arc<dyn Broker> = Arc::new(Checked::shared(broker, config.limits.clone()));
    api::AppState {
        otel,
        metrics: Arc::new(metrics::Metrics::new(store_metrics)),
        auth: Arc::new(auth::Auth::new(
            broker.clone(),
            config.require_auth,
            config.metrics_auth,
        )),
        ingress: config
            .ingress
            .map(|l| Arc::new(ingress::IngressLimiter::new(l))),
        broker,
        config: Arc::new(config),
        schedules_changed: Arc::new(tokio::sync::Notify::new()),
        connections: Arc::new(api::Connections {
            stopping: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }),
    }
}

/// Serves the API over `broker` on `listener` until `shutdown` resolves (or the
/// store fails fatally), then drains in-flight requests (long-polls answer at
/// once) for at most `shutdown_grace_ms`, and flushes and closes the store.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    broker: Arc<dyn Broker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let limits = config.conn;
    // Only the limiter reads the peer address; without it, requests carry none.
    let tag_peer = config.ingress.is_some();
    let tls = config.tls.clone();
    // The OTLP exporter's HTTP client blocks: made (and later shut down) off the
    // runtime's threads.
    let otel = match config.otlp_endpoint.clone() {
        Some(endpoint) => Some(Arc::new(
            tokio::task::spawn_blocking(move || otel::Otel::start(&endpoint)).await??,
        )),
        None => None,
    };
    let state = state(broker.clone(), config, otel.clone());
    let stopping = state.connections.stopping.clone();
    let connections = state.connections.tracker.clone();
    // Periodic tasks: every server fires them (exactly once per tick, see
    // `schedule`); the loop stops with the accept loop.
    let scheduler = tokio::spawn(schedule::run(
        state.broker.clone(),
        state.config.clone(),
        state.schedules_changed.clone(),
        stopping.clone(),
    ));
    let open = state.metrics.connections.clone();
    let plain = Arc::new(http1::Shared {
        limits,
        body_bytes_max: state.config.limits.request_bytes_max,
        tag_peer,
        router: api::router(state),
    });
    let accepting = conn::accept_loop(
        listener,
        plain,
        tls,
        stopping.clone(),
        connections.clone(),
        open,
    );
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
    // Connections learn first, so that every long-poll the broker wakes next
    // answers with `Connection: close`.
    stopping.cancel();
    broker.begin_shutdown();
    // Safe to stop anywhere: a tick enqueued but not recorded fires again into
    // the same task (its idempotency key).
    scheduler.abort();
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
    if let Some(o) = otel {
        // Spans still buffered go out before the process ends.
        let _ = tokio::task::spawn_blocking(move || o.shutdown()).await;
    }
    broker
        .close()
        .await
        .map_err(|e| anyhow::anyhow!("closing the store: {e}"))?;
    tracing::info!("store flushed; bye");
    Ok(())
}
