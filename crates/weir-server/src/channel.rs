//! The worker channel (`GET /v1/workers/connect`, a WebSocket): one connection
//! per worker, over which it names its queues and grants credit, the server
//! pushes leased tasks and cancels, and the worker settles in batches. The
//! protocol is `docs/design/worker-channel.md`; every task operation is the same
//! `Broker` call the HTTP routes make (`lease_for`, `settle` through
//! `api::settle_items`, `release`, `watch`, `heartbeat`), so leases, lease ids and
//! answers are the HTTP API's.
//!
//! One channel is one task (the connection's own, after the upgrade) running
//! three kinds of work together: reading the worker's messages, one lease loop
//! per queue, and one watch per held task (its implicit heartbeat and its cancel
//! push). Everything it sends goes through one bounded outbox to one writer.
//!
//! May not: push more tasks than the credit granted, answer a settle before it is
//! durable, or keep extending a lease after the channel is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use weir_core::validate;
use weir_core::TaskId;
use weir_store::LeaseId;

use crate::api::{self, AppState};
use crate::auth::Principal;
use crate::error::ApiError;
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
/// A channel silent this long (no frame, no pong) is dead.
pub const SILENCE_MS: u64 = 60_000;
/// Settle messages a channel works on at once (their durable commits overlap;
/// their answers go out in order).
const SETTLES_IN_FLIGHT_MAX: usize = 8;
/// A settle's outcome: the tasks it named, and its answer.
type Settled = (Vec<TaskId>, Result<serde_json::Value, ApiError>);
/// One push's tasks, as the channel's loop learns them: (id, lease, timeout).
type Pushed = Vec<(TaskId, LeaseId, u64)>;
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

/// The upgrade of a request served by `http1`: after the 101 answer, the socket
/// (and any bytes read past the request) belong to this.
pub type Takeover = Box<
    dyn FnOnce(
            TcpStream,
            Vec<u8>,
            CancellationToken,
        ) -> futures_util::future::BoxFuture<'static, ()>
        + Send,
>;

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
    headers: HeaderMap,
) -> Result<Response, ApiError> {
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
    if lean.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "channel-unavailable",
            "Worker channel unavailable",
            "the worker channel is served on plain HTTP connections only for now; \
             use the HTTP API (lease, /v1/acks, heartbeat) over TLS",
        ));
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let who = who.map(|Extension(p)| p);
    let takeover: Takeover =
        Box::new(move |stream, read, stopping| Box::pin(run(stream, read, s, who, stopping)));
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a header value"),
    );
    Upgrade::put(&mut response, takeover);
    Ok(response)
}

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
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.left = c.left.saturating_add(n).min(CREDIT_MAX);
        self.more.notify_waiters();
    }

    /// Takes up to `max` without waiting (as held, until `settled` or given
    /// back).
    fn take_up_to(&self, max: u32) -> u32 {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.left.min(max).min(HELD_MAX - c.held);
        c.left -= n;
        c.held += n;
        n
    }

    /// `n` held tasks were settled (or stopped being this channel's).
    fn settled(&self, n: u32) {
        if n > 0 {
            let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
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
            let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            c.held -= n;
            c.left = c.left.saturating_add(n).min(CREDIT_MAX);
            self.more.notify_waiters();
        }
    }
}

/// What one channel shares between its parts.
struct Shared {
    state: AppState,
    who: Option<Principal>,
    out: mpsc::Sender<Box<Message>>,
    credit: Credit,
    worker: Option<String>,
}

impl Shared {
    async fn send_json(&self, value: serde_json::Value) {
        let _ = self
            .out
            .send(Box::new(Message::text(value.to_string())))
            .await;
    }
}

/// Runs one channel until the worker closes it, goes silent, breaks the
/// protocol, or the server stops.
async fn run(
    stream: TcpStream,
    read: Vec<u8>,
    state: AppState,
    who: Option<Principal>,
    stopping: CancellationToken,
) {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(state.config.limits.request_bytes_max))
        .max_frame_size(Some(state.config.limits.request_bytes_max));
    let ws = WebSocketStream::from_partially_read(stream, read, Role::Server, Some(config)).await;
    let (mut sink, mut frames) = ws.split();
    // Boxed elements: a channel allocates its first block of 32 slots at once,
    // and an idle channel should not pay 32 whole messages for it.
    let (out, mut outbox) = mpsc::channel::<Box<Message>>(OUTBOX_MAX);
    // The writer: the outbox, and a ping every PING_MS.
    let writer = async move {
        let mut ping = tokio::time::interval(Duration::from_millis(PING_MS));
        ping.tick().await;
        loop {
            let msg = tokio::select! {
                m = outbox.recv() => match m {
                    Some(m) => *m,
                    None => break,
                },
                _ = ping.tick() => Message::Ping(Bytes::new()),
            };
            let closing = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    };
    let mut writer = std::pin::pin!(writer);
    let ended = CancellationToken::new();
    let mut shared: Option<Arc<Shared>> = None;
    // Settles in flight, answered in the order they came.
    let mut settling: FuturesOrdered<BoxFuture<'static, Settled>> = FuturesOrdered::new();
    let mut leasing: JoinSet<()> = JoinSet::new();
    // One watch per held task; a watch ends with its task's id.
    let mut held: JoinSet<TaskId> = JoinSet::new();
    let mut watches: HashMap<TaskId, AbortHandle> = HashMap::new();
    // Held tasks not yet watched, with when they were pushed.
    let mut unwatched: HashMap<TaskId, (LeaseId, u64, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(WATCH_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Each push's tasks, from its lease loop: (id, lease, timeout), one message
    // per push.
    // Boxed, as the outbox's: the first block of 32 slots is 256 bytes, not 768.
    let (held_tx, mut held_rx) = mpsc::channel::<Box<Pushed>>(OUTBOX_MAX);
    let silence = Duration::from_millis(SILENCE_MS);
    loop {
        let frame = tokio::select! {
            // A push's tasks are known as held before any settle of them is
            // read (the push is sent after it is registered here).
            biased;
            Some(pushed) = held_rx.recv() => {
                let now = Instant::now();
                for (id, lease_id, timeout_ms) in *pushed {
                    unwatched.insert(id, (lease_id, timeout_ms, now));
                }
                continue;
            }
            Some((ids, answer)) = settling.next(), if !settling.is_empty() => {
                // Settled or not, a task the worker has given an outcome for
                // is no longer this channel's to extend.
                let mut freed = 0;
                for id in ids {
                    if unwatched.remove(&id).is_some() {
                        freed += 1;
                    }
                    if let Some(w) = watches.remove(&id) {
                        w.abort();
                        freed += 1;
                    }
                }
                if let Some(sh) = &shared {
                    sh.credit.settled(freed);
                }
                match answer {
                    Ok(answer) => {
                        let _ = out.send(Box::new(Message::text(answer.to_string()))).await;
                        continue;
                    }
                    Err(e) => {
                        protocol_error_api(&out, e).await;
                        break;
                    }
                }
            }
            f = tokio::time::timeout(silence, frames.next()), if settling.len() < SETTLES_IN_FLIGHT_MAX => match f {
                Ok(Some(Ok(f))) => f,
                // Closed, broken, or silent past SILENCE_MS.
                _ => break,
            },
            _ = tick.tick(), if !unwatched.is_empty() => {
                // Tasks held past WATCH_AFTER get their watch: a task settled
                // sooner costs no store call and no task of its own.
                if let Some(sh) = &shared {
                    let due = Instant::now() - WATCH_AFTER;
                    let ripe: Vec<TaskId> = unwatched
                        .iter()
                        .filter(|(_, (_, _, at))| *at <= due)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in ripe {
                        if let Some((lease_id, timeout_ms, _)) = unwatched.remove(&id) {
                            let w = held.spawn(watch(sh.clone(), id, lease_id, timeout_ms, ended.clone()));
                            watches.insert(id, w);
                        }
                    }
                }
                continue;
            }
            Some(done) = held.join_next(), if !held.is_empty() => {
                // A watch that ended by itself: its lease is gone (settled
                // elsewhere, expired), and so is the task from this channel.
                if let Ok(id) = done {
                    if let (Some(_), Some(sh)) = (watches.remove(&id), &shared) {
                        sh.credit.settled(1);
                    }
                }
                continue;
            }
            Some(_) = leasing.join_next(), if !leasing.is_empty() => continue,
            () = &mut writer => break,
            // The close goes out below.
            () = stopping.cancelled() => break,
        };
        let text = match frame {
            Message::Text(t) => t,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => break,
            Message::Binary(_) => {
                protocol_error(&out, "binary frames are not part of the protocol").await;
                break;
            }
        };
        // The frame's own bytes (no copy): a settle's acks borrow from them.
        let bytes = Bytes::from(text);
        let msg = match kind(&bytes).and_then(|k| Incoming::parse(k, &bytes)) {
            Ok(m) => m,
            Err(e) => {
                protocol_error(&out, &format!("a malformed message: {e}")).await;
                break;
            }
        };
        match (msg, &shared) {
            (
                Incoming::Hello {
                    queues,
                    worker,
                    credit,
                },
                None,
            ) => match hello(&state, who.as_ref(), &queues, worker.as_deref()) {
                Ok((accepted, refused)) => {
                    let sh = Arc::new(Shared {
                        state: state.clone(),
                        who: who.clone(),
                        out: out.clone(),
                        credit: Credit::default(),
                        worker,
                    });
                    sh.credit.grant(credit);
                    sh.send_json(serde_json::json!({
                        "type": "welcome",
                        "queues": accepted,
                        "refused": refused,
                        "credit_max": CREDIT_MAX,
                        "ping_ms": PING_MS,
                    }))
                    .await;
                    for q in accepted {
                        leasing.spawn(lease_loop(sh.clone(), q, held_tx.clone(), ended.clone()));
                    }
                    shared = Some(sh);
                }
                Err(e) => {
                    protocol_error_api(&out, e).await;
                    break;
                }
            },
            (Incoming::Hello { .. }, Some(_)) => {
                protocol_error(&out, "hello was already sent").await;
                break;
            }
            (_, None) => {
                protocol_error(&out, "the first message must be hello").await;
                break;
            }
            (Incoming::Credit { n }, Some(sh)) => sh.credit.grant(n),
            (Incoming::Bye, Some(_)) => {
                // Stop leasing; held tasks keep their watches until settled.
                leasing.abort_all();
            }
            (Incoming::Settle, Some(sh)) => {
                let sh = sh.clone();
                settling.push_back(Box::pin(async move {
                    let m: SettleMsg = match serde_json::from_slice(&bytes) {
                        Ok(m) => m,
                        Err(e) => {
                            return (
                                Vec::new(),
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
                    let answer = settle(&sh, &bytes, m).await;
                    (ids, answer)
                }));
            }
        }
    }
    // Everything the channel runs stops with it: no lease is extended any more.
    ended.cancel();
    leasing.abort_all();
    held.abort_all();
    // The writer sends what is queued (an error, say), then this close, and
    // ends; a worker that reads nothing gets a moment, not more.
    let _ = out.try_send(Box::new(Message::Close(None)));
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
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

async fn protocol_error(out: &mpsc::Sender<Box<Message>>, detail: &str) {
    protocol_error_api(out, protocol(detail.to_owned())).await;
}

/// Sends `error` with the problem, then a close.
async fn protocol_error_api(out: &mpsc::Sender<Box<Message>>, error: ApiError) {
    let error = serde_json::json!({"type": "error", "problem": problem_value(&error)});
    let _ = out.send(Box::new(Message::text(error.to_string()))).await;
    let _ = out.send(Box::new(Message::Close(None))).await;
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
async fn lease_loop(
    sh: Arc<Shared>,
    queue: String,
    held: mpsc::Sender<Box<Pushed>>,
    ended: CancellationToken,
) {
    let wait = Duration::from_millis(sh.state.config.limits.wait_ms_max);
    let worker = sh.worker.as_deref();
    let broker = &sh.state.broker;
    while !ended.is_cancelled() {
        sh.credit.take_one().await;
        // A busy queue: one lease of all the credit there is, without waiting.
        let n = 1 + sh.credit.take_up_to(CREDIT_MAX - 1);
        let mut leased = match broker
            .lease_for(&queue, n as usize, Duration::ZERO, worker)
            .await
        {
            Ok(l) => l,
            Err(_) => {
                sh.credit.give_back(n);
                // The store is unavailable (HTTP would answer 503): a pause.
                tokio::time::sleep(STORE_ERROR_PAUSE).await;
                continue;
            }
        };
        if leased.is_empty() {
            // An idle one: parked with one credit, the rest free for the
            // channel's other queues; more are taken once a task comes.
            sh.credit.give_back(n - 1);
            leased = match broker.lease_for(&queue, 1, wait, worker).await {
                Ok(l) if !l.is_empty() => l,
                Ok(_) => {
                    sh.credit.give_back(1);
                    continue;
                }
                Err(_) => {
                    sh.credit.give_back(1);
                    tokio::time::sleep(STORE_ERROR_PAUSE).await;
                    continue;
                }
            };
            let more = sh.credit.take_up_to(CREDIT_MAX - 1);
            if more > 0 {
                match broker
                    .lease_for(&queue, more as usize, Duration::ZERO, worker)
                    .await
                {
                    Ok(extra) => {
                        sh.credit.give_back(more - extra.len() as u32);
                        leased.extend(extra);
                    }
                    Err(_) => sh.credit.give_back(more),
                }
            }
        } else {
            sh.credit.give_back(n - leased.len() as u32);
        }
        sh.state.metrics.leased(&queue, &leased);
        let pushed = leased
            .iter()
            .map(|l| (l.record.id, l.lease_id, l.record.timeout_ms))
            .collect();
        if held.send(Box::new(pushed)).await.is_err() {
            return;
        }
        let mut body = lease_body(&leased);
        // `{"tasks":[…]}` → `{"type":"tasks","tasks":[…]}`.
        body.splice(1..1, br#""type":"tasks","#.iter().copied());
        let text = String::from_utf8(body).expect("lease_body writes UTF-8");
        if sh.out.send(Box::new(Message::text(text))).await.is_err() {
            return;
        }
    }
}

/// A held task's implicit heartbeat and cancel push: a watch (a heartbeat that
/// waits for a cancel) over and over while the channel lives; after a cancel is
/// pushed, plain heartbeats every third of the task's timeout.
async fn watch(
    sh: Arc<Shared>,
    id: TaskId,
    lease_id: LeaseId,
    timeout_ms: u64,
    ended: CancellationToken,
) -> TaskId {
    let wait = Duration::from_millis(sh.state.config.limits.wait_ms_max);
    let beat = Duration::from_millis((timeout_ms / 3).max(100));
    let mut pushed = false;
    while !ended.is_cancelled() {
        let hb = if pushed {
            tokio::select! {
                _ = tokio::time::sleep(beat) => {}
                _ = ended.cancelled() => return id,
            }
            sh.state.broker.heartbeat(id, lease_id).await
        } else {
            sh.state.broker.watch(id, lease_id, wait).await
        };
        match hb {
            Ok(hb) if hb.cancel_requested && !pushed => {
                pushed = true;
                sh.send_json(serde_json::json!({
                    "type": "cancel",
                    "id": id.to_string(),
                    "lease_id": lease_id.to_string(),
                }))
                .await;
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
