//! The worker channel (`GET /v1/workers/connect`, a WebSocket): one connection
//! per worker, over which it names its queues and grants credit, the server
//! pushes leased tasks and cancels, and the worker settles in batches. The
//! protocol is `docs/design/worker-channel.md`; every task operation is the same
//! `Broker` call the HTTP routes make (`lease_for`, `settle` through
//! `api::settle_items`, `release`, `watch`, `heartbeat`), so leases, lease ids and
//! answers are the HTTP API's.
//!
//! One channel is one task (spawned at the upgrade among the server's
//! connections) that reads and writes the socket itself and runs one lease loop
//! per queue; each task it holds past `WATCH_AFTER` gets a watch of its own
//! (its implicit heartbeat and its cancel push). Everything it sends goes
//! through one bounded outbox, which the channel's loop writes.
//!
//! May not: push more tasks than the credit granted, answer a settle before it is
//! durable, or keep extending a lease after the channel is gone.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::task::AtomicWaker;
use futures_util::{FutureExt, Sink, Stream, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use weir_core::validate;
use weir_core::TaskId;
use weir_store::LeaseId;

use crate::api::{self, AppState};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::metrics::LongPoll;
use crate::park::ParkHere;
use crate::wire::{lease_body, AckItem, FailItem};

/// Most credit a worker may have outstanding (a lease's `max`).
pub const CREDIT_MAX: u32 = 1000;
/// Most queues one channel takes.
pub const QUEUES_MAX: usize = 16;
/// Most tasks one channel holds pushed and not yet settled: credit is granted
/// again as slots free, so a worker that grants without settling would
/// otherwise collect tasks (and their watches) without end.
pub const HELD_MAX: u32 = 10_000;
/// How often the server pings a channel.
pub const PING_MS: u64 = 20_000;
const PING: Duration = Duration::from_millis(PING_MS);
/// A channel silent this long (no frame, no pong) is dead.
pub const SILENCE_MS: u64 = 60_000;
const SILENCE: Duration = Duration::from_millis(SILENCE_MS);
/// Settle messages a channel works on at once (their durable commits overlap;
/// their answers go out in order).
const SETTLES_IN_FLIGHT_MAX: usize = 8;
/// A settle's outcome: the tasks it named, its `seq` (if it was read that far),
/// and its answer.
type Settled = (
    Vec<TaskId>,
    Option<u64>,
    Result<serde_json::Value, ApiError>,
);
/// How long a pushed task runs before its watch (implicit heartbeat and
/// cancel push) starts: most tasks of a busy worker are settled sooner and never
/// cost one (the Rust pool's own rule for its watches). A cancel of a task in
/// its first `WATCH_AFTER` is pushed when its watch starts.
const WATCH_AFTER: Duration = Duration::from_millis(25);
/// Pause of a lease loop after the store failed a lease.
const STORE_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Frames waiting for the writer; a worker that reads nothing fills it and
/// then holds up only its own channel.
const OUTBOX_MAX: usize = 64;
/// What a channel reads into at a time (tungstenite's default is 128 KiB, paid
/// by every idle channel).
const READ_BUFFER_BYTES: usize = 512;

/// What a connection holds while it is open (its slot under the connection
/// cap, its count), handed to the channel that takes it over.
pub type Held = Box<dyn Send + Sync>;

/// The upgrade of a request served by `http1`: after the 101 answer, the socket
/// (and any bytes read past the request) belong to this, which starts the
/// channel's task.
pub type Takeover = Box<dyn FnOnce(TcpStream, Vec<u8>, Held) + Send>;

/// The extension of a `101` answer: what takes the connection over.
pub type Upgrade = crate::park::Once<Takeover>;

/// Opens a worker channel: a WebSocket upgrade (RFC 6455).
#[utoipa::path(
    get, path = "/v1/workers/connect", tag = "worker",
    responses(
        (status = 101, description = "Switching to the worker channel (docs/design/worker-channel.md)"),
        crate::openapi::UpgradeProblems,
        crate::openapi::Common,
    )
)]
pub async fn connect(
    State(s): State<AppState>,
    who: Option<Extension<Principal>>,
    lean: Option<Extension<ParkHere>>,
    mut req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let headers = req.headers();
    let upgrade = headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !upgrade {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade-required",
            "Upgrade required",
            "the worker channel is a WebSocket: send Upgrade: websocket",
        ));
    }
    let connection_upgrade = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    let version_13 = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(bad_upgrade("Sec-WebSocket-Key is missing"));
    };
    if !connection_upgrade || !version_13 {
        return Err(bad_upgrade(
            "a WebSocket upgrade needs Connection: Upgrade and Sec-WebSocket-Version: 13",
        ));
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let who = who.map(|Extension(p)| p);
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    if lean.is_some() {
        // A plain connection (`http1`): it hands its socket over once the
        // 101 is written.
        let takeover: Takeover =
            Box::new(move |stream, read, held| start(stream, read, s, who, held));
        Upgrade::put(&mut response, takeover);
    } else if let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() {
        // A TLS connection (hyper): the upgraded session comes once hyper
        // has written the 101; the channel keeps the connection's slot.
        let held = req.extensions().get::<ConnHeld>().cloned();
        let tracker = s.connections.tracker.clone();
        tracker.spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => start(
                    hyper_util::rt::TokioIo::new(upgraded),
                    Vec::new(),
                    s,
                    who,
                    Box::new(held),
                ),
                Err(error) => tracing::debug!(%error, "worker channel upgrade failed"),
            }
        });
    } else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "channel-unavailable",
            "Worker channel unavailable",
            "this connection cannot be upgraded; use the HTTP API (lease, /v1/acks, heartbeat)",
        ));
    }
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a header value"),
    );
    Ok(response)
}

/// What a TLS connection holds while open (its slot under the cap, its
/// count), set on each of its requests: an upgraded worker channel keeps it.
#[derive(Clone)]
pub struct ConnHeld(pub Arc<dyn Send + Sync>);

fn bad_upgrade(detail: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad-upgrade",
        "Bad upgrade",
        detail.to_owned(),
    )
}

/// A message from the worker: its `type`, then the message of that type read
/// from the same text (two passes: an internally tagged enum would buffer the
/// acks' results, which are borrowed raw JSON).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
}

enum Incoming {
    Hello {
        queues: Vec<String>,
        worker: Option<String>,
        credit: u32,
    },
    Credit {
        n: u32,
    },
    /// A settle: read whole where it is worked on (`SettleMsg`), once.
    Settle,
    Bye,
}

#[derive(Deserialize)]
struct HelloMsg {
    queues: Vec<String>,
    #[serde(default)]
    worker: Option<String>,
    #[serde(default)]
    credit: u32,
}

#[derive(Deserialize)]
struct CreditMsg {
    n: u32,
}

#[derive(Deserialize)]
struct SettleMsg<'a> {
    seq: u64,
    #[serde(borrow, default)]
    acks: Vec<AckItem<'a>>,
    #[serde(default)]
    fails: Vec<FailItem>,
    #[serde(default)]
    releases: Vec<ReleaseItem>,
}

/// A message's `type`.
fn kind(text: &[u8]) -> Result<&str, String> {
    serde_json::from_slice::<Envelope>(text)
        .map(|e| e.kind)
        .map_err(|e| e.to_string())
}

impl Incoming {
    /// The message of `kind`.
    fn parse(kind: &str, text: &[u8]) -> Result<Incoming, String> {
        let e = |e: serde_json::Error| e.to_string();
        Ok(match kind {
            "hello" => {
                let m: HelloMsg = serde_json::from_slice(text).map_err(e)?;
                Incoming::Hello {
                    queues: m.queues,
                    worker: m.worker,
                    credit: m.credit,
                }
            }
            "credit" => Incoming::Credit {
                n: serde_json::from_slice::<CreditMsg>(text).map_err(e)?.n,
            },
            "settle" => Incoming::Settle,
            "bye" => Incoming::Bye,
            other => return Err(format!("unknown message type {other:?}")),
        })
    }
}

#[derive(Deserialize)]
struct ReleaseItem {
    id: String,
    lease_id: String,
}

/// The credit a worker has granted and the server not yet spent, and how many
/// pushed tasks it holds unsettled: a push takes both, a settle frees a held
/// slot, so the channel never holds more than `HELD_MAX`.
#[derive(Default)]
struct Credit {
    counts: Mutex<Counts>,
    more: Notify,
}

#[derive(Default)]
struct Counts {
    left: u32,
    held: u32,
}

impl Credit {
    fn grant(&self, n: u32) {
        let mut c = lock(&self.counts);
        c.left = c.left.saturating_add(n).min(CREDIT_MAX);
        self.more.notify_waiters();
    }

    /// Takes up to `max` without waiting (as held, until `settled` or given
    /// back).
    fn take_up_to(&self, max: u32) -> u32 {
        let mut c = lock(&self.counts);
        let n = c.left.min(max).min(HELD_MAX - c.held);
        c.left -= n;
        c.held += n;
        n
    }

    /// `n` held tasks were settled (or stopped being this channel's).
    fn settled(&self, n: u32) {
        if n > 0 {
            let mut c = lock(&self.counts);
            c.held = c.held.saturating_sub(n);
            self.more.notify_waiters();
        }
    }

    /// Takes one, waiting for it.
    async fn take_one(&self) {
        loop {
            let more = self.more.notified();
            tokio::pin!(more);
            more.as_mut().enable();
            if self.take_up_to(1) == 1 {
                return;
            }
            more.await;
        }
    }

    /// Gives back what a lease did not use.
    fn give_back(&self, n: u32) {
        if n > 0 {
            let mut c = lock(&self.counts);
            c.held -= n;
            c.left = c.left.saturating_add(n).min(CREDIT_MAX);
            self.more.notify_waiters();
        }
    }
}

/// What one channel shares between its parts: its loop (which reads and
/// writes the socket), its lease loops and its watches.
struct Shared {
    state: AppState,
    who: Option<Principal>,
    outbox: Outbox,
    credit: Credit,
    /// The worker's name, from its `hello`.
    worker: OnceLock<String>,
    /// Held tasks not yet watched, with when they were pushed: a lease loop
    /// puts a push's tasks here before it queues the push, so a settle of
    /// them is never read before they are known as held.
    unwatched: Mutex<HashMap<TaskId, (LeaseId, u64, Instant)>>,
    /// Set when `unwatched` gains tasks (the loop is woken through the
    /// outbox).
    pushed: AtomicBool,
}

impl Shared {
    async fn send_json(&self, value: serde_json::Value) -> bool {
        self.outbox.send(Message::text(value.to_string())).await
    }
}

/// Frees an emptied map's room: a burst's thousands of held tasks are not kept
/// by an idle channel.
fn shrink_if_empty<K, V>(map: &mut HashMap<K, V>) {
    if map.is_empty() && map.capacity() > 64 {
        *map = HashMap::new();
    }
}

/// Locks, going on past a poisoned lock (its holders leave it consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Frames waiting for the socket. The channel's loop writes them; its lease
/// loops and watches queue pushes and cancels, waiting while `OUTBOX_MAX` are
/// queued. A list under a lock rather than a tokio channel: an idle channel
/// should not pay for a channel's first block of slots (800 bytes).
#[derive(Default)]
struct Outbox {
    frames: Mutex<Frames>,
    /// The channel's loop, woken when a frame is queued.
    ready: AtomicWaker,
    /// Lease loops and watches waiting for room.
    room: Notify,
}

#[derive(Default)]
struct Frames {
    queue: VecDeque<Message>,
    closed: bool,
}

impl Outbox {
    /// Queues a frame, waiting while the outbox is full; false once the
    /// channel has ended.
    async fn send(&self, m: Message) -> bool {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut f = lock(&self.frames);
                if f.closed {
                    return false;
                }
                if f.queue.len() < OUTBOX_MAX {
                    f.queue.push_back(m);
                    drop(f);
                    self.ready.wake();
                    return true;
                }
            }
            room.await;
        }
    }

    /// Queues a frame of the loop's own (an answer, an error, a ping) past the
    /// bound: the loop reads nothing while the outbox is full, so these are
    /// at most what the frames already read cause.
    fn push(&self, m: Message) {
        lock(&self.frames).queue.push_back(m);
    }

    fn len(&self) -> usize {
        lock(&self.frames).queue.len()
    }

    fn pop(&self) -> Option<Message> {
        let mut f = lock(&self.frames);
        let m = f.queue.pop_front()?;
        // Senders wait only while OUTBOX_MAX are queued: woken as it drops
        // below, not on every pop.
        if f.queue.len() == OUTBOX_MAX - 1 {
            self.room.notify_waiters();
        }
        if f.queue.is_empty() && f.queue.capacity() > OUTBOX_MAX {
            // A burst's room is not kept by an idle channel.
            f.queue = VecDeque::new();
        }
        Some(m)
    }

    /// The channel has ended: nothing more is queued.
    fn close(&self) {
        lock(&self.frames).closed = true;
        self.room.notify_waiters();
    }
}

/// What [`drive`] returns for the loop to act on.
enum Driven {
    /// A frame from the worker.
    Frame(Message),
    /// A lease loop has put tasks in `unwatched`.
    Pushed,
}

/// Writes what the outbox holds, as long as the socket takes it; then reports
/// new pushes (with `pushes`), and, with `reading` and room in the outbox, reads
/// the next frame. `Ready(None)`: the socket is closed or broken.
fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    sh: &Shared,
    unflushed: &mut bool,
    reading: bool,
    pushes: bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Driven>> {
    let outbox = &sh.outbox;
    outbox.ready.register(cx.waker());
    loop {
        match Pin::new(&mut *ws).poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(None),
            Poll::Pending => break,
        }
        let Some(m) = outbox.pop() else { break };
        if Pin::new(&mut *ws).start_send(m).is_err() {
            return Poll::Ready(None);
        }
        *unflushed = true;
    }
    if *unflushed {
        match Pin::new(&mut *ws).poll_flush(cx) {
            Poll::Ready(Ok(())) => *unflushed = false,
            Poll::Ready(Err(_)) => return Poll::Ready(None),
            Poll::Pending => {}
        }
    }
    if pushes && sh.pushed.swap(false, Ordering::AcqRel) {
        return Poll::Ready(Some(Driven::Pushed));
    }
    if reading && outbox.len() < OUTBOX_MAX {
        match Pin::new(&mut *ws).poll_next(cx) {
            Poll::Ready(Some(Ok(m))) => return Poll::Ready(Some(Driven::Frame(m))),
            Poll::Ready(_) => return Poll::Ready(None),
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

/// Polls every lease loop; `Ready` when one has ended (its channel is
/// closing), which is then dropped.
fn poll_leasing(leasing: &mut Vec<BoxFuture<'static, ()>>, cx: &mut Context<'_>) -> Poll<()> {
    let before = leasing.len();
    leasing.retain_mut(|l| l.as_mut().poll(cx).is_pending());
    if leasing.len() < before {
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

/// Settles in flight, answered in the order they came (made on first use, and
/// dropped when none are left: an empty `FuturesOrdered` allocates).
type Settling = Option<Box<FuturesOrdered<BoxFuture<'static, Settled>>>>;

async fn next_settled(settling: &mut Settling) -> Option<Settled> {
    settling.as_mut()?.next().await
}

/// A channel's held tasks' watches, and the timer that starts them: made when
/// the first tasks are pushed, dropped when none are left.
struct Watching {
    /// One watch per held task past WATCH_AFTER; a watch ends with its task's id.
    set: JoinSet<TaskId>,
    watches: HashMap<TaskId, AbortHandle>,
    /// When the oldest unwatched task is due its watch (while `ripening`).
    ripen: Pin<Box<tokio::time::Sleep>>,
    ripening: bool,
}

impl Default for Watching {
    fn default() -> Self {
        Watching {
            set: JoinSet::new(),
            watches: HashMap::new(),
            ripen: Box::pin(tokio::time::sleep(Duration::ZERO)),
            ripening: false,
        }
    }
}

impl Watching {
    /// Runs the timer to `at`, unless it runs to an earlier time already.
    fn arm(&mut self, at: Instant) {
        if !self.ripening || at < self.ripen.deadline() {
            self.ripen.as_mut().reset(at);
        }
        self.ripening = true;
    }

    /// Starts the watches of the tasks held past WATCH_AFTER, and runs the
    /// timer to the next one due.
    fn start_due(&mut self, sh: &Arc<Shared>) {
        let due = Instant::now() - WATCH_AFTER;
        let mut unwatched = lock(&sh.unwatched);
        for (id, (lease_id, timeout_ms, _)) in unwatched.extract_if(|_, (_, _, at)| *at <= due) {
            let w = self.set.spawn(watch(sh.clone(), id, lease_id, timeout_ms));
            self.watches.insert(id, w);
        }
        let next = unwatched.values().map(|(_, _, at)| *at).min();
        shrink_if_empty(&mut unwatched);
        drop(unwatched);
        self.ripening = false;
        if let Some(at) = next {
            self.arm(at + WATCH_AFTER);
        }
    }

    fn is_idle(&self) -> bool {
        !self.ripening && self.set.is_empty()
    }
}

/// What happened to a channel's watches.
enum WatchEvent {
    /// The timer ran out: tasks are due their watches.
    Ripe,
    /// A watch ended by itself.
    Ended(TaskId),
    /// No watch is left and no timer runs: the watches can go.
    Idle,
}

/// The next [`WatchEvent`]; never, without watches or a timer running.
fn poll_watching(watching: &mut Option<Box<Watching>>, cx: &mut Context<'_>) -> Poll<WatchEvent> {
    let Some(w) = watching.as_mut() else {
        return Poll::Pending;
    };
    if w.ripening && w.ripen.as_mut().poll(cx).is_ready() {
        return Poll::Ready(WatchEvent::Ripe);
    }
    // Watches aborted by a settle end here too, as errors.
    while let Poll::Ready(Some(done)) = w.set.poll_join_next(cx) {
        if let Ok(id) = done {
            return Poll::Ready(WatchEvent::Ended(id));
        }
    }
    if w.is_idle() {
        return Poll::Ready(WatchEvent::Idle);
    }
    Poll::Pending
}

/// Starts a channel's task over an upgraded connection (its socket, and any
/// bytes read past the upgrade request); `held` is kept until the channel ends.
fn start<S>(stream: S, read: Vec<u8>, state: AppState, who: Option<Principal>, held: Held)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(state.config.limits.request_bytes_max))
        .max_frame_size(Some(state.config.limits.request_bytes_max));
    let tracker = state.connections.tracker.clone();
    let sh = Arc::new(Shared {
        state,
        who,
        outbox: Outbox::default(),
        credit: Credit::default(),
        worker: OnceLock::new(),
        unwatched: Mutex::new(HashMap::new()),
        pushed: AtomicBool::new(false),
    });
    // Combinators rather than one `async` block: what only the start needs
    // (the socket before it is a WebSocket, the bytes read) is not kept for
    // the channel's whole life.
    let channel = WebSocketStream::from_partially_read(stream, read, Role::Server, Some(config))
        .then(move |ws| run(Box::new(ws), sh))
        .map(move |()| drop(held));
    tracker.spawn(channel);
}

/// Runs one channel until the worker closes it, goes silent, breaks the
/// protocol, or the server stops.
///
/// What an idle channel holds is this future, its socket and `Shared`; every
/// other part (settles in flight, watches, the watch timer) is made when it is
/// first needed. The socket comes boxed: an `async fn` keeps an argument and
/// the local it is moved into, and a `WebSocketStream` is 320 bytes.
async fn run<S>(ws: Box<WebSocketStream<S>>, sh: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ws = ws;
    let mut hello_done = false;
    let mut unflushed = false;
    // One lease loop per queue, run by this task (a task each would cost a
    // task's cell per queue on every idle channel).
    let mut leasing: Vec<BoxFuture<'static, ()>> = Vec::new();
    let mut settling: Settling = None;
    let mut watching: Option<Box<Watching>> = None;
    // One timer for the ping every PING_MS and the silence limit.
    let mut heard = Instant::now();
    let timer = tokio::time::sleep(PING);
    tokio::pin!(timer);
    // Once the server stops: no more reading or leasing; the settles in
    // flight are answered, then the channel closes.
    let mut draining = false;
    loop {
        let in_flight = settling.as_ref().map_or(0, |s| s.len());
        if draining && in_flight == 0 {
            break;
        }
        let ripening = watching.as_ref().is_some_and(|w| w.ripening);
        let watched = watching.is_some();
        let frame = tokio::select! {
            biased;
            Some((ids, seq, answer)) = next_settled(&mut settling), if in_flight > 0 => {
                if settling.as_ref().is_some_and(|s| s.is_empty()) {
                    settling = None;
                }
                // A settle the store could not take as a whole (unavailable,
                // busy) is answered with its error and the channel goes on:
                // the worker sends it again (over HTTP), and meanwhile its
                // tasks' watches keep their leases.
                if let (Err(e), Some(seq)) = (&answer, seq) {
                    if settle_may_be_sent_again(e) {
                        sh.outbox.push(Message::text(
                            serde_json::json!({
                                "type": "settled",
                                "seq": seq,
                                "error": problem_value(e),
                            })
                            .to_string(),
                        ));
                        continue;
                    }
                }
                // Settled or not, a task the worker has given an outcome for
                // is no longer this channel's to extend.
                let mut freed = 0;
                {
                    let mut unwatched = lock(&sh.unwatched);
                    for id in ids {
                        if unwatched.remove(&id).is_some() {
                            freed += 1;
                        }
                        if let Some(w) = watching.as_mut().and_then(|w| w.watches.remove(&id)) {
                            w.abort();
                            freed += 1;
                        }
                    }
                    shrink_if_empty(&mut unwatched);
                }
                sh.credit.settled(freed);
                match answer {
                    Ok(answer) => {
                        sh.outbox.push(Message::text(answer.to_string()));
                        continue;
                    }
                    Err(e) => {
                        protocol_error_api(&sh.outbox, e);
                        break;
                    }
                }
            }
            f = std::future::poll_fn(|cx| {
                let reading = !draining && in_flight < SETTLES_IN_FLIGHT_MAX;
                drive(&mut ws, &sh, &mut unflushed, reading, !ripening, cx)
            }) => match f {
                Some(Driven::Frame(f)) => {
                    heard = Instant::now();
                    f
                }
                Some(Driven::Pushed) => {
                    // A push's tasks: their watches are due WATCH_AFTER from now.
                    watching
                        .get_or_insert_with(Default::default)
                        .arm(Instant::now() + WATCH_AFTER);
                    continue;
                }
                // Closed or broken.
                None => break,
            },
            () = &mut timer => {
                let now = Instant::now();
                if now >= heard + SILENCE {
                    break;
                }
                sh.outbox.push(Message::Ping(Bytes::new()));
                timer.as_mut().reset((now + PING).min(heard + SILENCE));
                continue;
            }
            event = std::future::poll_fn(|cx| poll_watching(&mut watching, cx)), if watched => {
                let w = watching.as_mut().expect("watched");
                match event {
                    // Tasks held past WATCH_AFTER get their watch: a task
                    // settled sooner costs no store call and no task of its own.
                    WatchEvent::Ripe => w.start_due(&sh),
                    // A watch that ended by itself: its lease is gone (settled
                    // elsewhere, expired), and so is the task from this channel.
                    WatchEvent::Ended(id) => {
                        if w.watches.remove(&id).is_some() {
                            sh.credit.settled(1);
                        }
                    }
                    WatchEvent::Idle => {}
                }
                if w.is_idle() {
                    watching = None;
                }
                continue;
            }
            () = std::future::poll_fn(|cx| poll_leasing(&mut leasing, cx)), if !leasing.is_empty() => continue,
            () = sh.state.connections.stopping.cancelled(), if !draining => {
                draining = true;
                leasing.clear();
                continue;
            }
        };
        let text = match frame {
            Message::Text(t) => t,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => break,
            Message::Binary(_) => {
                protocol_error(&sh.outbox, "binary frames are not part of the protocol");
                break;
            }
        };
        // The frame's own bytes (no copy): a settle's acks borrow from them.
        let bytes = Bytes::from(text);
        let msg = match kind(&bytes).and_then(|k| Incoming::parse(k, &bytes)) {
            Ok(m) => m,
            Err(e) => {
                protocol_error(&sh.outbox, &format!("a malformed message: {e}"));
                break;
            }
        };
        match (msg, hello_done) {
            (
                Incoming::Hello {
                    queues,
                    worker,
                    credit,
                },
                false,
            ) => match hello(&sh.state, sh.who.as_ref(), &queues, worker.as_deref()) {
                Ok((accepted, refused)) => {
                    if let Some(w) = worker {
                        let _ = sh.worker.set(w);
                    }
                    sh.credit.grant(credit);
                    sh.outbox.push(Message::text(
                        serde_json::json!({
                            "type": "welcome",
                            "queues": accepted,
                            "refused": refused,
                            "credit_max": CREDIT_MAX,
                            "ping_ms": PING_MS,
                        })
                        .to_string(),
                    ));
                    for q in accepted {
                        leasing.push(Box::pin(lease_loop(sh.clone(), q)));
                    }
                    hello_done = true;
                }
                Err(e) => {
                    protocol_error_api(&sh.outbox, e);
                    break;
                }
            },
            (Incoming::Hello { .. }, true) => {
                protocol_error(&sh.outbox, "hello was already sent");
                break;
            }
            (_, false) => {
                protocol_error(&sh.outbox, "the first message must be hello");
                break;
            }
            (Incoming::Credit { n }, true) => sh.credit.grant(n),
            (Incoming::Bye, true) => {
                // Stop leasing; held tasks keep their watches until settled.
                leasing.clear();
            }
            (Incoming::Settle, true) => {
                let sh = sh.clone();
                settling
                    .get_or_insert_with(Default::default)
                    .push_back(Box::pin(async move {
                        let m: SettleMsg = match serde_json::from_slice(&bytes) {
                            Ok(m) => m,
                            Err(e) => {
                                return (
                                    Vec::new(),
                                    None,
                                    Err(protocol(format!("a malformed settle: {e}"))),
                                )
                            }
                        };
                        let ids: Vec<TaskId> = m
                            .acks
                            .iter()
                            .map(|a| a.id.as_str())
                            .chain(m.fails.iter().map(|f| f.id.as_str()))
                            .chain(m.releases.iter().map(|r| r.id.as_str()))
                            .filter_map(|id| id.parse().ok())
                            .collect();
                        let seq = m.seq;
                        let answer = settle(&sh, &bytes, m).await;
                        (ids, Some(seq), answer)
                    }));
            }
        }
    }
    // Everything the channel runs stops with it: no lease is extended any more.
    drop(leasing);
    if let Some(w) = watching.as_mut() {
        w.set.abort_all();
    }
    // What is queued (an error, say) goes out, then a close; a worker that
    // reads nothing gets a moment, not more.
    sh.outbox.push(Message::Close(None));
    sh.outbox.close();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        std::future::poll_fn(
            |cx| match drive(&mut ws, &sh, &mut unflushed, false, false, cx) {
                Poll::Ready(_) => Poll::Ready(()),
                Poll::Pending if sh.outbox.len() == 0 && !unflushed => Poll::Ready(()),
                Poll::Pending => Poll::Pending,
            },
        ),
    )
    .await;
}

/// Whether a settle refused as a whole may be sent again as it is: the store was
/// unavailable or busy (5xx, 429), not the settle wrong (4xx: a protocol error,
/// which ends the channel).
fn settle_may_be_sent_again(e: &ApiError) -> bool {
    e.status.is_server_error() || e.status == StatusCode::TOO_MANY_REQUESTS
}

/// A breach of the protocol, as the `error` message's problem.
fn protocol(detail: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "channel-protocol",
        "Worker channel protocol error",
        detail,
    )
}

/// An error's problem document as JSON (inside `error` and `welcome.refused`).
fn problem_value(e: &ApiError) -> serde_json::Value {
    serde_json::from_slice(&e.problem_json()).unwrap_or_default()
}

fn protocol_error(outbox: &Outbox, detail: &str) {
    protocol_error_api(outbox, protocol(detail.to_owned()));
}

/// Queues `error` with the problem (the close follows when the loop ends).
fn protocol_error_api(outbox: &Outbox, error: ApiError) {
    let error = serde_json::json!({"type": "error", "problem": problem_value(&error)});
    outbox.push(Message::text(error.to_string()));
}

/// Checks a hello: the queues it may take and those it may not.
#[allow(clippy::type_complexity)]
fn hello(
    state: &AppState,
    who: Option<&Principal>,
    queues: &[String],
    worker: Option<&str>,
) -> Result<(Vec<String>, Vec<serde_json::Value>), ApiError> {
    if queues.is_empty() || queues.len() > QUEUES_MAX {
        return Err(ApiError::invalid(
            "queues",
            format!("a channel takes 1 to {QUEUES_MAX} queues"),
        ));
    }
    if let Some(w) = worker {
        validate::size("worker", w.len(), state.config.limits.worker_name_bytes_max)?;
    }
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for q in queues {
        validate::queue_name(q, &state.config.limits)?;
        if accepted.contains(q) {
            continue;
        }
        match crate::auth::check_queue(who, q) {
            Ok(()) => accepted.push(q.clone()),
            Err(e) => refused.push(serde_json::json!({
                "queue": q,
                "problem": problem_value(&e),
            })),
        }
    }
    Ok((accepted, refused))
}

/// One queue's lease loop: with credit, lease and push.
///
/// What a waiting channel holds while its queue is empty is this future, so
/// its parts are small: the lease itself is `lease_some`'s, and a store error
/// is dropped where it is met (a 64-byte `StoreError` would take room in
/// every state).
async fn lease_loop(sh: Arc<Shared>, queue: String) {
    // A stopping server answers parked leases at once: the loop ends rather
    // than lease again (its channel closes too).
    while !sh.state.connections.stopping.is_cancelled() {
        sh.credit.take_one().await;
        let leased = lease_some(&sh, &queue).await;
        if leased.is_empty() {
            continue;
        }
        sh.state.metrics.leased(&queue, &leased);
        {
            let now = Instant::now();
            let mut unwatched = lock(&sh.unwatched);
            for l in &leased {
                unwatched.insert(l.record.id, (l.lease_id, l.record.timeout_ms, now));
            }
        }
        sh.pushed.store(true, Ordering::Release);
        sh.outbox.ready.wake();
        let mut body = lease_body(&leased);
        drop(leased);
        // `{"tasks":[…]}` → `{"type":"tasks","tasks":[…]}`.
        body.splice(1..1, br#""type":"tasks","#.iter().copied());
        let text = String::from_utf8(body).expect("lease_body writes UTF-8");
        // Boxed: a parked lease loop should not hold room for a send.
        if !Box::pin(sh.outbox.send(Message::text(text))).await {
            return;
        }
    }
}

/// One lease with the credit there is (one credit taken already): at once on a
/// busy queue, parked with one credit on an empty one (the rest free for the
/// channel's other queues; more are taken once a task comes). Gives back what
/// it does not use; empty after a store error (and a pause) or a wait that
/// ended with nothing.
async fn lease_some(sh: &Shared, queue: &str) -> Vec<weir_store::Leased> {
    let broker = &sh.state.broker;
    let worker = sh.worker.get().map(String::as_str);
    let n = 1 + sh.credit.take_up_to(CREDIT_MAX - 1);
    match broker
        .lease_for(queue, n as usize, Duration::ZERO, worker)
        .await
        .ok()
    {
        Some(leased) if !leased.is_empty() => {
            sh.credit.give_back(n - leased.len() as u32);
            return leased;
        }
        Some(_) => sh.credit.give_back(n - 1),
        None => {
            sh.credit.give_back(n);
            // The store is unavailable (HTTP would answer 503): a pause.
            Box::pin(tokio::time::sleep(STORE_ERROR_PAUSE)).await;
            return Vec::new();
        }
    }
    let wait = Duration::from_millis(sh.state.config.limits.wait_ms_max);
    let parked = sh.state.metrics.parked(LongPoll::Channel);
    let first = broker.lease_for(queue, 1, wait, worker).await.ok();
    drop(parked);
    let mut leased = match first {
        Some(leased) if !leased.is_empty() => leased,
        Some(_) => {
            sh.credit.give_back(1);
            return Vec::new();
        }
        None => {
            sh.credit.give_back(1);
            Box::pin(tokio::time::sleep(STORE_ERROR_PAUSE)).await;
            return Vec::new();
        }
    };
    let more = sh.credit.take_up_to(CREDIT_MAX - 1);
    if more > 0 {
        match broker
            .lease_for(queue, more as usize, Duration::ZERO, worker)
            .await
            .ok()
        {
            Some(extra) => {
                sh.credit.give_back(more - extra.len() as u32);
                leased.extend(extra);
            }
            None => sh.credit.give_back(more),
        }
    }
    leased
}

/// A held task's implicit heartbeat and cancel push: a watch (a heartbeat that
/// waits for a cancel) over and over while the channel lives; after a cancel is
/// pushed, plain heartbeats every third of the task's timeout.
async fn watch(sh: Arc<Shared>, id: TaskId, lease_id: LeaseId, timeout_ms: u64) -> TaskId {
    let wait = Duration::from_millis(sh.state.config.limits.wait_ms_max);
    let beat = Duration::from_millis((timeout_ms / 3).max(100));
    let mut pushed = false;
    // A stopping server answers watches at once: the loop ends rather than
    // watch again (its channel closes too).
    let stopping = &sh.state.connections.stopping;
    while !stopping.is_cancelled() {
        let hb = if pushed {
            tokio::time::sleep(beat).await;
            sh.state.broker.heartbeat(id, lease_id).await
        } else {
            sh.state.broker.watch(id, lease_id, wait).await
        };
        match hb {
            Ok(hb) if hb.cancel_requested && !pushed => {
                pushed = true;
                let cancel = serde_json::json!({
                    "type": "cancel",
                    "id": id.to_string(),
                    "lease_id": lease_id.to_string(),
                });
                if !sh.send_json(cancel).await {
                    return id;
                }
            }
            Ok(_) => {}
            // Settled elsewhere, expired, or the store is away: stop extending.
            Err(_) => return id,
        }
    }
    id
}

/// Settles one `settle` message: acks and fails as `/v1/acks`, then releases.
async fn settle(
    sh: &Shared,
    bytes: &Bytes,
    m: SettleMsg<'_>,
) -> Result<serde_json::Value, ApiError> {
    let SettleMsg {
        seq,
        acks,
        fails,
        releases,
    } = m;
    let max = sh.state.config.limits.batch_tasks_max;
    if acks.len() + fails.len() + releases.len() > max {
        return Err(ApiError::invalid(
            "acks",
            format!("at most {max} acks, fails and releases per settle"),
        ));
    }
    let mut parsed = Vec::with_capacity(releases.len());
    for (i, r) in releases.iter().enumerate() {
        let id = api::task_id(&r.id).map_err(|e| e.field(format!("releases[{i}].id")))?;
        let lease_id = api::lease_id(&format!("releases[{i}].lease_id"), &r.lease_id)?;
        parsed.push((r.id.clone(), id, lease_id));
    }
    let answer = api::settle_items(&sh.state, sh.who.as_ref(), bytes, acks, fails, None).await?;
    let mut released = Vec::with_capacity(parsed.len());
    for (text, id, lease_id) in parsed {
        if let Some(who) = sh.who.as_ref().filter(|w| w.limited()) {
            if let Some(t) = sh.state.broker.get(id).await? {
                who.check_queue(&t.record.queue)?;
            }
        }
        released.push(match sh.state.broker.release(id, lease_id).await {
            Ok(state) => serde_json::json!({"id": text, "ok": true, "state": state.as_str()}),
            Err(e) => {
                let e = ApiError::from(e);
                serde_json::json!({"id": text, "ok": false, "status": e.status.as_u16(), "error": e.detail})
            }
        });
    }
    Ok(serde_json::json!({
        "type": "settled",
        "seq": seq,
        "acks": answer.acks,
        "fails": answer.fails,
        "releases": released,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settle_refused_by_the_store_may_be_sent_again_and_a_wrong_one_not() {
        let e = |status: StatusCode| ApiError::new(status, "unavailable", "Unavailable", "d");
        assert!(settle_may_be_sent_again(&e(
            StatusCode::SERVICE_UNAVAILABLE
        )));
        assert!(settle_may_be_sent_again(&e(
            StatusCode::INTERNAL_SERVER_ERROR
        )));
        assert!(settle_may_be_sent_again(&e(StatusCode::TOO_MANY_REQUESTS)));
        assert!(!settle_may_be_sent_again(&e(StatusCode::BAD_REQUEST)));
        assert!(!settle_may_be_sent_again(&e(StatusCode::FORBIDDEN)));
        assert!(!settle_may_be_sent_again(&e(StatusCode::PAYLOAD_TOO_LARGE)));
    }

    #[tokio::test]
    async fn the_outbox_holds_outbox_max_then_senders_wait_for_room() {
        let outbox = Arc::new(Outbox::default());
        for _ in 0..OUTBOX_MAX {
            assert!(outbox.send(Message::Ping(Bytes::new())).await);
        }
        // Full: the next send waits for a pop.
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(Message::text("late")).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "a send past OUTBOX_MAX did not wait"
        );
        assert_eq!(outbox.len(), OUTBOX_MAX);
        assert!(outbox.pop().is_some());
        assert!(waiting.await.unwrap(), "room made, the send goes in");
        assert_eq!(outbox.len(), OUTBOX_MAX);
        // The loop's own frames go past the bound (it stops reading instead).
        outbox.push(Message::text("answer"));
        assert_eq!(outbox.len(), OUTBOX_MAX + 1);
        // Closed: a waiting send gives up, and so does any later one.
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.send(Message::text("never")).await }
        });
        tokio::task::yield_now().await;
        outbox.close();
        assert!(!waiting.await.unwrap());
        assert!(!outbox.send(Message::text("after")).await);
        // Drained, its room is given back.
        while outbox.pop().is_some() {}
        assert_eq!(lock(&outbox.frames).queue.capacity(), 0);
    }

    #[test]
    fn credit_is_spent_by_pushes_and_held_tasks_are_bounded() {
        let c = Credit::default();
        assert_eq!(c.take_up_to(5), 0, "no credit, nothing");
        c.grant(3);
        assert_eq!(c.take_up_to(5), 3, "never more than granted");
        assert_eq!(c.take_up_to(5), 0);
        c.give_back(1);
        assert_eq!(
            c.take_up_to(5),
            1,
            "what a lease did not use is credit again"
        );
        c.grant(5_000);
        assert_eq!(
            c.take_up_to(5_000),
            CREDIT_MAX,
            "credit stops at CREDIT_MAX"
        );
        // Granting again and again without settling: held stops at HELD_MAX.
        let mut taken = 3 + CREDIT_MAX;
        for _ in 0..20 {
            c.grant(CREDIT_MAX);
            taken += c.take_up_to(CREDIT_MAX);
        }
        assert_eq!(taken, HELD_MAX);
        assert_eq!(c.take_up_to(1), 0, "full: credit waits for a settle");
        c.settled(2);
        assert_eq!(c.take_up_to(5), 2, "each settled task frees one slot");
    }
}
