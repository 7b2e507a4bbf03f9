//! The connection layer under the router: the accept loop, the cap on open
//! connections that keeps the store's file descriptors out of reach of clients, and
//! the per-connection timeouts (header read, keep-alive idle, body read).
//!
//! Plain HTTP connections are served by our own HTTP/1.1 layer (`http1`), built
//! so that an idle or parked connection holds about a kilobyte (hyper's buffers
//! alone were 8 KiB and more). TLS connections run the rustls handshake and then
//! hyper's HTTP/1, under the same cap and timeouts: hyper starts its own
//! `header_read_timeout` as soon as a connection waits for its next request, so it
//! would also close every keep-alive connection idle for longer than the header
//! timeout, and an idle timeout of 120 s could not coexist with a header timeout
//! of 10 s; [`Deadlines`] tells the phases apart instead. (A parked request over
//! TLS still drops its request and middleware futures (`park`); its session's
//! buffers and hyper's stay.)

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::tls::ServerTls;

/// Default of [`ConnLimits::header_read_timeout_ms`].
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default of [`ConnLimits::idle_timeout_ms`] (nginx uses 75 s, envoy an hour, Go
/// none; workers and producers reuse their connections, so a slot held by an idle
/// client is cheap compared to a new connection every few minutes).
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 120_000;
/// Default of [`ConnLimits::body_read_timeout_ms`]: the largest request
/// (`request_bytes_max`, 64 MiB) arrives in time at ~9 Mbit/s.
pub const BODY_READ_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Default of [`ConnLimits::request_head_bytes_max`]: a request line, a bearer
/// token and the headers proxies add fit in a few KiB; 16 KiB is twice nginx's
/// per-line buffer.
pub const REQUEST_HEAD_BYTES_MAX_DEFAULT: usize = 16 * 1024;

/// Most descriptors kept for the store's own files: the embedded store holds one
/// per segment of its task log (64 MiB each by default, so 900 cover 56 GiB of log).
pub const STORE_FILES_CACHED_MAX: usize = 900;
/// Fewest table files the store keeps open, however low the process's limit.
pub const STORE_FILES_CACHED_MIN: usize = 64;
/// Descriptors reserved besides the store's segment files: the segment being
/// prepared, its lock file, the directories opened to fsync them, plus stdio, the
/// listener, epoll and the runtime's wakers.
pub const FILES_OTHER_RESERVED: usize = 128;
/// Smallest open-file limit `weir serve` starts with: below it the reserve above
/// leaves almost nothing for connections.
pub const FILES_MAX_MIN: u64 = 256;

/// The limits of the connection layer. Every one is a bound a slow or hostile
/// client would otherwise be able to stretch without end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once. At the cap the server stops accepting; new
    /// connections wait in the kernel's listen backlog until one closes (see
    /// `accept_loop`). Derived from the open-file limit so that the store's
    /// descriptors are never taken by clients ([`FileBudget`]).
    pub connections_max: usize,
    /// Time a client has to send a request's head (request line and headers),
    /// counted from the connection's accept for its first request and from the
    /// first byte of the request after that.
    pub header_read_timeout_ms: u64,
    /// Time a keep-alive connection may sit with no request in flight and no byte
    /// of the next one. A request in flight (a long-poll of 60 s, say) is never idle.
    pub idle_timeout_ms: u64,
    /// Time a request's body has to arrive, counted from the end of its head. Past
    /// it the request is answered 408 and the connection closed.
    pub body_read_timeout_ms: u64,
    /// Largest request head (request line and headers) in bytes; hyper answers a
    /// larger one with a bare 431 and closes the connection.
    pub request_head_bytes_max: usize,
}

impl ConnLimits {
    /// The defaults, with `connections_max` taken from `budget`.
    pub fn new(budget: FileBudget) -> ConnLimits {
        ConnLimits {
            connections_max: budget.connections_max,
            header_read_timeout_ms: HEADER_READ_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
            body_read_timeout_ms: BODY_READ_TIMEOUT_MS_DEFAULT,
            request_head_bytes_max: REQUEST_HEAD_BYTES_MAX_DEFAULT,
        }
    }
}

/// How the process's open-file limit is shared between the store and client
/// connections. The store gets its segment files plus [`FILES_OTHER_RESERVED`];
/// connections get the rest. Because the accept loop never holds more than
/// `connections_max` connections, clients can never take the descriptors the
/// store needs (issue 6: at the limit, the store failed to open a file and
/// marked itself failed until a restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileBudget {
    /// Most connections open at once.
    pub connections_max: usize,
    /// Descriptors kept for the store's segment files.
    pub store_files_cached_max: usize,
}

impl FileBudget {
    /// Shares out `files_max` descriptors. The store's segment files get a quarter
    /// of them, between [`STORE_FILES_CACHED_MIN`] and [`STORE_FILES_CACHED_MAX`]:
    /// with the usual limits (4,096 and up) that is the full reserve, and under
    /// a low one (`prlimit --nofile=1024`) connections still get most of the rest.
    /// Below [`FILES_MAX_MIN`] there is not enough to share; the result still has
    /// one connection so that a library caller gets a working (if useless) server.
    pub fn for_files_max(files_max: u64) -> FileBudget {
        let files = usize::try_from(files_max).unwrap_or(usize::MAX);
        let store_files_cached_max =
            (files / 4).clamp(STORE_FILES_CACHED_MIN, STORE_FILES_CACHED_MAX);
        let connections_max = files
            .saturating_sub(store_files_cached_max + FILES_OTHER_RESERVED)
            .clamp(1, Semaphore::MAX_PERMITS);
        FileBudget {
            connections_max,
            store_files_cached_max,
        }
    }

    /// The budget for this process's current (soft) open-file limit.
    pub fn from_process() -> FileBudget {
        FileBudget::for_files_max(open_files_max())
    }
}

/// The process's soft limit on open files (`RLIMIT_NOFILE`), or 1,024 (the usual
/// default) if it cannot be read.
pub fn open_files_max() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to our local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}

/// The error a request body's stream ends with when it did not arrive within
/// `body_read_timeout_ms`; the handler that reads the body answers it with 408.
#[derive(Debug)]
pub struct BodyReadTimeout {
    /// The timeout that passed.
    pub timeout_ms: u64,
}

impl std::fmt::Display for BodyReadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} ms",
            self.timeout_ms
        )
    }
}

impl std::error::Error for BodyReadTimeout {}

/// Connections the kernel queues for us while the accept loop is at the cap (the
/// kernel caps it at `net.core.somaxconn`, 4,096 by default since Linux 5.4).
/// tokio's and std's `bind` ask for 128, which a burst at the cap overflows at
/// once; past the backlog, clients' SYNs are dropped and they retry after 1 s, 3 s,
/// 7 s... nginx asks for 511, Go for `somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener on `addr` with [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind`: a restarted server can bind while connections of
    // the previous one are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Longest back-off between two failed accepts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// First back-off after a failed accept.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// Accepts connections on `listener` and serves the router on each (plain ones
/// with `http1`, TLS ones with hyper), until the future is dropped (which closes
/// the listener). Each connection runs as a task
/// of `connections`; when `stopping` is cancelled, each finishes the request in
/// flight and closes.
///
/// At `connections_max` open connections the loop stops accepting until one
/// closes, and the rest wait in the kernel's listen backlog (then, when that is
/// full, in the clients' SYN retries): the behaviour of HAProxy's `maxconn` and
/// Go's `LimitListener`. Accepting and answering 503 instead would need a
/// descriptor per refused client, the very thing the cap is there to bound, and
/// closing an accepted socket before reading its request makes the kernel send a
/// reset that can destroy the 503 before the client reads it. A queued client is
/// served as soon as a slot frees, and a slot held by an idle client frees after
/// `idle_timeout_ms`.
///
/// With `tls`, each connection first completes a TLS handshake, in its own task
/// (so a slow client never holds up the loop) and within the header timeout,
/// counted from the accept: a client that connects and never finishes the
/// handshake holds its slot until then, as one that never sends a request head.
/// The handshake uses the configuration in force at the accept (see
/// [`ServerTls::reload`]).
///
/// With `plain.tag_peer`, every request carries its connection's peer address
/// as a `ConnectInfo<SocketAddr>` extension (for the ingress limit); without,
/// nothing is added. `open` counts the connections open
/// (`weir_http_connections`).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    plain: Arc<crate::http1::Shared>,
    tls: Option<ServerTls>,
    stopping: CancellationToken,
    connections: TaskTracker,
    open: prometheus_client::metrics::gauge::Gauge,
) -> Infallible {
    let limits = plain.limits;
    let tag_peer = plain.tag_peer;
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let mut http = hyper::server::conn::http1::Builder::new();
    // The header timeout is ours (see the module comment); `None` also keeps hyper
    // from needing a timer.
    http.header_read_timeout(None)
        .max_header_size(limits.request_head_bytes_max);
    let http = Arc::new(http);
    let timeouts = Timeouts {
        header: Duration::from_millis(limits.header_read_timeout_ms),
        idle: Duration::from_millis(limits.idle_timeout_ms),
    };
    let body_read_timeout_ms = limits.body_read_timeout_ms;
    let mut full = Full::default();
    let mut failures = AcceptFailures::default();
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                full.relieved(slots.available_permits(), limits.connections_max);
                slot
            }
            Err(_) => {
                full.reached(limits.connections_max);
                slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the connection semaphore is never closed")
            }
        };
        let (stream, peer) = loop {
            match listener.accept().await {
                Ok(accepted) => break accepted,
                Err(e) => failures.failed(e).await,
            }
        };
        failures.succeeded();
        // The first request head (and, with TLS, the handshake before it) is due
        // this long after the accept.
        let head_due = Instant::now() + timeouts.header;
        // Responses are written whole; Nagle would only hold back their last segment.
        let _ = stream.set_nodelay(true);
        open.inc();
        let open = Opened(open.clone());
        let Some(tls) = tls.as_ref().map(ServerTls::current) else {
            connections.spawn(
                crate::http1::serve(
                    crate::http1::Conn::new(stream),
                    peer,
                    plain.clone(),
                    head_due,
                    stopping.clone(),
                    (slot, open),
                )
                .instrument(tracing::debug_span!("conn", %peer)),
            );
            continue;
        };
        let service = ConnService {
            held: None,
            router: plain.router.clone(),
            activity: Arc::new(Activity::default()),
            body_read_timeout_ms,
            peer: tag_peer.then_some(peer),
        };
        let http = http.clone();
        let stopping = stopping.clone();
        connections.spawn(
            async move {
                // Held for the connection's lifetime (its slot under the cap,
                // its count), and by a worker channel it is upgraded to.
                let held: Arc<dyn Send + Sync> = Arc::new((slot, open));
                let socket = match handshake(stream, tls, head_due, &stopping).await {
                    Ok(stream) => Box::new(stream),
                    Err(error) => {
                        // A client's failure (plain HTTP on this port, a
                        // certificate it does not trust, a scanner), not the
                        // server's: never above debug.
                        tracing::debug!(%error, "TLS handshake failed");
                        return;
                    }
                };
                let activity = service.activity.clone();
                let io = TokioIo::new(WatchedIo {
                    stream: socket,
                    activity: activity.clone(),
                });
                // Upgrades: the worker channel (`channel::connect`).
                let service = ConnService {
                    held: Some(crate::channel::ConnHeld(held)),
                    ..service
                };
                let conn = http.serve_connection(io, service).with_upgrades();
                let deadlines = Deadlines::new(activity, timeouts, head_due);
                if let Err(error) = run_connection(conn, deadlines, stopping).await {
                    tracing::debug!(%error, "connection closed");
                }
            }
            .instrument(tracing::debug_span!("conn", %peer)),
        );
    }
}

/// Counts one open connection in `weir_http_connections` until dropped.
struct Opened(prometheus_client::metrics::gauge::Gauge);

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs a TLS handshake on an accepted connection, giving up at `due` (the
/// header timeout) or when the server begins to stop (a connection that has not
/// sent a request has nothing to drain).
async fn handshake(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    due: Instant,
    stopping: &CancellationToken,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, Ended> {
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    tokio::select! {
        done = tokio::time::timeout_at(due, accept) => match done {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(Ended::Handshake(e)),
            Err(_) => Err(Ended::Timeout("no TLS handshake within header_read_timeout_ms")),
        },
        () = stopping.cancelled() => Err(Ended::Stopping),
    }
}

/// Why a connection ended other than by a clean close.
#[derive(Debug)]
enum Ended {
    Http(hyper::Error),
    Handshake(io::Error),
    Timeout(&'static str),
    /// The server began to stop before the connection sent a request.
    Stopping,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Http(e) => write!(f, "{e}"),
            Ended::Handshake(e) => write!(f, "{e}"),
            Ended::Timeout(why) => f.write_str(why),
            Ended::Stopping => f.write_str("the server is stopping"),
        }
    }
}

/// Drives one connection until it closes, times out, or (once `stopping` is
/// cancelled) has finished its request in flight. A timed-out connection is
/// dropped, which closes the socket without an answer: nobody is waiting for
/// one (nginx's `client_header_timeout` and `keepalive_timeout` do the same).
async fn run_connection(
    conn: hyper::server::conn::http1::UpgradeableConnection<TokioIo<WatchedIo>, ConnService>,
    mut deadlines: Deadlines,
    stopping: CancellationToken,
) -> Result<(), Ended> {
    let mut conn = std::pin::pin!(conn);
    let mut stop = std::pin::pin!(stopping.cancelled_owned());
    let mut draining = false;
    std::future::poll_fn(|cx| {
        if !draining && stop.as_mut().poll(cx).is_ready() {
            // Finishes the request in flight (long-polls were woken by the
            // broker), then closes; an idle connection closes now.
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
            return Poll::Ready(ended.map_err(Ended::Http));
        }
        // Everything the deadlines depend on changed, if at all, in that poll.
        deadlines
            .poll_expired(cx)
            .map(|why| Err(Ended::Timeout(why)))
    })
    .await
}

/// Logs the connection cap once per burst: when the loop first waits for a slot,
/// and when a tenth of the slots are free again.
#[derive(Default)]
struct Full {
    /// Whether the loop has waited for a slot since the last "relieved" line.
    reached: bool,
}

impl Full {
    fn reached(&mut self, connections_max: usize) {
        if !self.reached {
            self.reached = true;
            tracing::warn!(
                connections_max,
                "connection cap reached: new connections wait in the listen backlog until one closes"
            );
        }
    }

    fn relieved(&mut self, free: usize, connections_max: usize) {
        if self.reached && free >= (connections_max / 10).max(1) {
            self.reached = false;
            tracing::info!(free, connections_max, "connections below the cap again");
        }
    }
}

/// Back-off and logging for failed accepts. Running out of descriptors or memory
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM) must not end the server, nor spin it: the
/// pending connection stays in the backlog, so the loop sleeps (10 ms doubling to
/// 1 s) and tries again, logging once when a burst of failures starts and once,
/// with the count, when an accept succeeds again.
#[derive(Default)]
struct AcceptFailures {
    /// Failed accepts in the current burst.
    count: u64,
    /// The next back-off.
    delay: Duration,
}

impl AcceptFailures {
    async fn failed(&mut self, error: io::Error) {
        if is_connection_error(&error) {
            // That one connection died between the handshake and the accept; the
            // next accept is unaffected.
            tracing::debug!(%error, "accept: connection lost before it was accepted");
            return;
        }
        if self.count == 0 {
            let why = if is_resource_error(&error) {
                "out of file descriptors or memory"
            } else {
                "unexpected error"
            };
            tracing::warn!(%error, "accept failed ({why}); backing off until it succeeds");
            self.delay = ACCEPT_BACKOFF_MIN;
        }
        self.count += 1;
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(ACCEPT_BACKOFF_MAX);
    }

    fn succeeded(&mut self) {
        if self.count > 0 {
            tracing::info!(failed = self.count, "accepting connections again");
            self.count = 0;
        }
    }
}

/// Errors of one incoming connection, not of the listener (accept(2): "treat them
/// like EAGAIN").
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    ) || matches!(
        e.raw_os_error(),
        Some(
            libc::EPROTO
                | libc::ENOPROTOOPT
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENONET
                | libc::EOPNOTSUPP
                | libc::EPERM
        )
    )
}

fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// How long each phase of a connection may last (see [`ConnLimits`]).
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    header: Duration,
    idle: Duration,
}

/// What a connection's socket and service report to its [`Deadlines`]. Both are
/// driven by the connection's own task, so every change lands while that task
/// polls the connection, and `Deadlines` looks right after each poll.
#[derive(Default)]
struct Activity {
    /// Request/response exchanges: the service adds one when a request's head is
    /// complete and one when its response is ready, so the count is odd exactly
    /// while a request is in flight (HTTP/1 has at most one).
    exchanges: AtomicU32,
    /// Set by the socket when bytes arrive; cleared when the connection goes idle.
    bytes_read: AtomicBool,
}

/// Where a connection is between requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the rest of a request head: since the accept, or since the
    /// first byte of a request on a kept-alive connection.
    Head,
    /// A request is in flight (from its complete head to its response): no
    /// connection timeout; the body has its own.
    Busy,
    /// Between requests, with no byte of the next one yet.
    Idle,
}

/// The header and idle timeouts of one connection. hyper's own header timer only
/// runs while hyper polls for a request head, which it does not do again after a
/// response unless that timer is set; so the connection's task asks this after
/// every poll of the connection whether the current phase has run out.
struct Deadlines {
    activity: Arc<Activity>,
    timeouts: Timeouts,
    phase: Phase,
    /// The exchange count last seen.
    seen: u32,
    /// When the current phase times out (unused while `Busy`).
    deadline: Instant,
    /// Fires at `deadline`; reset only when the deadline moved.
    sleep: Pin<Box<Sleep>>,
}

impl Deadlines {
    /// The deadlines of a connection whose first request head is due at
    /// `head_due` (the accept plus the header timeout).
    fn new(activity: Arc<Activity>, timeouts: Timeouts, head_due: Instant) -> Deadlines {
        let deadline = head_due;
        Deadlines {
            activity,
            timeouts,
            phase: Phase::Head,
            seen: 0,
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Catches up with the connection, then resolves, with the reason, once the
    /// current phase has outlived its timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<&'static str> {
        let n = self.activity.exchanges.load(Ordering::Relaxed);
        if n != self.seen {
            self.seen = n;
            if n % 2 == 1 {
                self.phase = Phase::Busy;
            } else {
                self.phase = Phase::Idle;
                self.deadline = Instant::now() + self.timeouts.idle;
                // Bytes read up to now belonged to the request just answered. (The
                // first bytes of a pipelined request read in the same poll are
                // missed too: that request's head gets the idle timeout, not the
                // header timeout, until its next bytes arrive.)
                self.activity.bytes_read.store(false, Ordering::Relaxed);
            }
        }
        if self.phase == Phase::Idle && self.activity.bytes_read.load(Ordering::Relaxed) {
            self.phase = Phase::Head;
            self.deadline = Instant::now() + self.timeouts.header;
        }
        let why = match self.phase {
            Phase::Busy => return Poll::Pending,
            Phase::Head => "no complete request head within header_read_timeout_ms",
            Phase::Idle => "no request within idle_timeout_ms",
        };
        if self.sleep.deadline() != self.deadline {
            self.sleep.as_mut().reset(self.deadline);
        }
        ready!(self.sleep.as_mut().poll(cx));
        Poll::Ready(why)
    }
}

/// A TLS session over a connection's socket (boxed: a rustls session is some
/// KiB).
type Socket = Box<tokio_rustls::server::TlsStream<TcpStream>>;

/// A connection's stream (after the TLS handshake, if any: what it reads is the
/// request's bytes), telling [`Deadlines`] when bytes arrive.
struct WatchedIo {
    stream: Socket,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(this.stream.as_mut()).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_read.store(true, Ordering::Relaxed);
        }
        read
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream.as_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream.as_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // With TLS: a close_notify alert, then the socket's write side.
        Pin::new(self.get_mut().stream.as_mut()).poll_shutdown(cx)
    }
}

/// The router as one connection's hyper service: marks each exchange for the
/// socket's timeouts, gives each request body its deadline and, when asked, the
/// request its client's address.
#[derive(Clone)]
struct ConnService {
    router: Router,
    activity: Arc<Activity>,
    body_read_timeout_ms: u64,
    /// Set on each request as `ConnectInfo`, when the ingress limit is on.
    peer: Option<SocketAddr>,
    /// The connection's slot and count, set on each request for a worker
    /// channel to keep.
    held: Option<crate::channel::ConnHeld>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = InFlight;

    fn call(&self, req: Request<Incoming>) -> InFlight {
        self.activity.exchanges.fetch_add(1, Ordering::Relaxed);
        let exchange = ExchangeEnd(self.activity.clone());
        let timeout_ms = self.body_read_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut req = req.map(|inner| {
            Body::new(TimedBody {
                inner,
                deadline,
                timeout_ms,
                sleep: None,
            })
        });
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        if let Some(held) = &self.held {
            req.extensions_mut().insert(held.clone());
        }
        InFlight {
            response: tower::Service::call(&mut self.router.clone(), req),
            _exchange: exchange,
        }
    }
}

/// Ends an exchange when its response is ready, or when hyper drops the request
/// (the client went away).
struct ExchangeEnd(Arc<Activity>);

impl Drop for ExchangeEnd {
    fn drop(&mut self) {
        self.0.exchanges.fetch_add(1, Ordering::Relaxed);
    }
}

/// The router's answer to one request, ending the exchange when it is ready.
struct InFlight {
    response: RouteFuture<Infallible>,
    _exchange: ExchangeEnd,
}

impl Future for InFlight {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // RouteFuture is Unpin, so InFlight is too.
        Pin::new(&mut self.get_mut().response).poll(cx)
    }
}

/// A request body that fails with [`BodyReadTimeout`] if it has not arrived by
/// its deadline. The timer is only armed if a read has to wait, so a body that is
/// already in the buffer costs no timer.
struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    timeout_ms: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyReadTimeout {
            timeout_ms: this.timeout_ms,
        }))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_budget_reserves_the_store_files() {
        // (open-file limit, connections, store table cache)
        let cases = [
            (256, 64, 64),
            (512, 256, 128),
            (1024, 640, 256),
            (4096, 3068, 900),
            (20_000, 18_972, 900),
            (1 << 20, (1 << 20) - 1028, 900),
        ];
        for (files, connections_max, store_files_cached_max) in cases {
            let b = FileBudget::for_files_max(files);
            assert_eq!(
                b,
                FileBudget {
                    connections_max,
                    store_files_cached_max
                },
                "for {files} files"
            );
            assert!(
                b.connections_max + b.store_files_cached_max + FILES_OTHER_RESERVED
                    <= files as usize
            );
        }
        // Too low to share: still one connection.
        assert_eq!(FileBudget::for_files_max(100).connections_max, 1);
        assert_eq!(
            FileBudget::for_files_max(u64::MAX).store_files_cached_max,
            900
        );
    }

    #[test]
    fn accept_errors_are_classified() {
        let os = io::Error::from_raw_os_error;
        for e in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_resource_error(&os(e)) && !is_connection_error(&os(e)));
        }
        for e in [libc::ECONNABORTED, libc::EPROTO, libc::ENETUNREACH] {
            assert!(is_connection_error(&os(e)) && !is_resource_error(&os(e)));
        }
    }
}
