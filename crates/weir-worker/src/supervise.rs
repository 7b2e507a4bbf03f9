//! One running task: starts its handler in its own tokio task, fires its token at
//! the deadline, heartbeats its lease (which is how a cancel reaches it), abandons a
//! handler that ignores its token, and turns whatever happened into an ack or a fail.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use weir_client::{AckItem, Client, Error};

use crate::channel::Link;
use crate::limits::{HEARTBEAT_INTERVAL_MS_MIN, WATCH_DELAY_MS};
use crate::pool::{Leased, Shared};
use crate::settle::Settlement;
use crate::task::{CancelReason, Ctx, Task};
use crate::HandlerResult;

/// How a handler's run ended.
enum Outcome {
    /// It returned, or panicked.
    Finished(Result<HandlerResult, JoinError>),
    /// It did not return within the cancel grace of its token firing; its future
    /// was dropped.
    Abandoned(CancelReason),
}

/// Far enough ahead to mean "never" without overflowing `Instant` arithmetic.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Runs `item` to its end and queues its settlement. `_permit` is its handler
/// slot, held until then.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    item: Leased,
    _permit: OwnedSemaphorePermit,
    token: CancellationToken,
    results: mpsc::Sender<Settlement>,
) {
    let span = consumer_span(&item);
    let settlement = run_one(&shared, item, token).instrument(span).await;
    // The flusher outlives every supervisor, so this send fails only if the
    // flusher panicked; the lease then runs out and the task is retried.
    let _ = results.send(settlement).await;
}

/// The task's span: a consumer span in OpenTelemetry's messaging terms
/// (`process <queue>`), whose parent is the producer's span when the task carries
/// a trace context. With a `tracing-opentelemetry` layer installed it is exported
/// in the producer's trace; without one it is a plain `tracing` span.
fn consumer_span(item: &Leased) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let t = &item.task;
    let span = tracing::info_span!(
        "task",
        otel.name = %format_args!("process {}", item.queue),
        otel.kind = "consumer",
        messaging.system = "weir",
        messaging.operation.r#type = "process",
        messaging.destination.name = %item.queue,
        messaging.message.id = %t.id,
        id = %t.id,
        kind = %t.kind,
        queue = %item.queue,
        attempt = t.attempt
    );
    if let Some(cx) = t
        .traceparent
        .as_deref()
        .and_then(|tp| remote_parent(tp, t.tracestate.as_deref()))
    {
        let _ = span.set_parent(cx);
    }
    span
}

/// The OpenTelemetry context of a W3C `traceparent` (version 00's fields; the
/// server checked its shape) as a remote parent; `None` if it does not parse.
fn remote_parent(traceparent: &str, tracestate: Option<&str>) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    let mut parts = traceparent.split('-');
    let (_version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let trace = TraceId::from_hex(trace).ok()?;
    let parent = SpanId::from_hex(parent).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let sc = SpanContext::new(trace, parent, TraceFlags::new(flags), true, state);
    sc.is_valid()
        .then(|| opentelemetry::Context::new().with_remote_span_context(sc))
}

async fn run_one(shared: &Shared, item: Leased, token: CancellationToken) -> Settlement {
    let Leased {
        task: leased,
        queue,
        leased_at,
        slot: _slot,
        link,
    } = item;
    let id = leased.id;
    let lease_id = leased.lease_id;
    let start = Instant::now();
    let timeout = match leased.timeout_ms {
        0 => FAR_FUTURE,
        ms => Duration::from_millis(ms),
    };
    let deadline = start + timeout;
    let ctx = Ctx::new(token, deadline);

    let handler = shared
        .handlers
        .get(&leased.kind)
        .or(shared.fallback.as_ref())
        .cloned();
    let Some(handler) = handler else {
        let error = format!(
            "no handler for kind {:?} in worker {:?} (it handles: {})",
            leased.kind, shared.worker_name, shared.kinds
        );
        tracing::warn!(error = %error, "unknown kind; failing the task without retry");
        return Settlement::fail(id, lease_id, &error, false);
    };
    let task = Task {
        id: id.clone(),
        queue: if leased.queue.is_empty() {
            queue
        } else {
            leased.queue
        },
        kind: leased.kind,
        payload: leased.payload,
        attempt: leased.attempt,
        max_attempts: leased.max_attempts,
        timeout_ms: leased.timeout_ms,
        traceparent: leased.traceparent,
        tracestate: leased.tracestate,
    };
    let mut join = tokio::spawn(handler(task, ctx.clone()).in_current_span());

    // Heartbeat at least three times per timeout, so the lease (timeout + the
    // server's grace) never runs out between two beats.
    let hb_interval = shared
        .heartbeat_interval
        .min(timeout / 3)
        .max(Duration::from_millis(HEARTBEAT_INTERVAL_MS_MIN));
    // The first (watching) heartbeat starts shortly after the task does, so a cancel
    // reaches all but the shortest tasks at once, and tasks that end sooner cost no
    // request. A task that waited for a slot beats at once: its lease clock ran.
    // A task pushed by a worker channel needs none while the channel lives: the
    // server extends its lease and pushes its cancel. Once the channel is gone its
    // heartbeats start at once (below).
    let hb_first = if link.is_some() {
        start + FAR_FUTURE
    } else {
        (start + hb_interval.min(Duration::from_millis(WATCH_DELAY_MS)))
            .min((leased_at + hb_interval).max(start))
    };
    let mut heartbeat: Option<AbortOnDrop> = None;
    let cancel_grace = shared.cancel_grace;
    let mut abandon_at = deadline + cancel_grace;
    let mut cancel_seen = false;

    // One timer for every time-driven step (deadline, first heartbeat, abandon),
    // reset to the earliest one still due: cheap for the common short task.
    let next_wake = |abandon_at: Instant, cancelled: bool, beating: bool| {
        let mut t = abandon_at;
        if !cancelled {
            t = t.min(deadline);
        }
        if !beating {
            t = t.min(hb_first);
        }
        t
    };
    let timer = tokio::time::sleep_until(next_wake(abandon_at, false, false));
    tokio::pin!(timer);

    let start_heartbeats = || {
        AbortOnDrop(tokio::spawn(
            heartbeat_loop(
                shared.client.clone(),
                id.clone(),
                lease_id.clone(),
                ctx.clone(),
                hb_interval,
            )
            .in_current_span(),
        ))
    };
    let mut pushed_cancel_seen = false;
    let outcome = loop {
        tokio::select! {
            biased;
            res = &mut join => break Outcome::Finished(res),
            _ = pushed_cancel(&link), if !pushed_cancel_seen => {
                pushed_cancel_seen = true;
                if ctx.cancel_with(CancelReason::Canceled) {
                    tracing::info!("task canceled; token cancelled");
                }
            }
            _ = channel_gone(&link), if heartbeat.is_none() => {
                heartbeat = Some(start_heartbeats());
            }
            _ = ctx.cancelled(), if !cancel_seen => {
                cancel_seen = true;
                let reason = ctx.cancel_reason().unwrap_or(CancelReason::Shutdown);
                tracing::debug!(%reason, "token cancelled");
                abandon_at = abandon_at.min(Instant::now() + cancel_grace);
            }
            _ = &mut timer => {
                let now = Instant::now();
                if now >= abandon_at {
                    join.abort();
                    break Outcome::Abandoned(ctx.cancel_reason().unwrap_or(CancelReason::Deadline));
                }
                if now >= deadline && ctx.cancel_with(CancelReason::Deadline) {
                    tracing::debug!(timeout_ms = leased.timeout_ms, "deadline reached; token cancelled");
                }
                if heartbeat.is_none() && now >= hb_first {
                    heartbeat = Some(start_heartbeats());
                }
            }
        }
        timer.as_mut().reset(next_wake(
            abandon_at,
            ctx.is_cancelled(),
            heartbeat.is_some(),
        ));
    };
    drop(heartbeat);

    match outcome {
        Outcome::Finished(Ok(Ok(result))) => {
            tracing::debug!("handler succeeded");
            Settlement::Ack(AckItem {
                id,
                lease_id,
                result,
            })
        }
        Outcome::Finished(Ok(Err(e))) => {
            // A handler stopped by our own shutdown did nothing wrong: whatever it
            // says, the task is worth another attempt.
            let retry = e.is_retry() || ctx.cancel_reason() == Some(CancelReason::Shutdown);
            tracing::info!(error = %e.message(), retry, "handler failed");
            Settlement::fail(id, lease_id, e.message(), retry)
        }
        Outcome::Finished(Err(join_error)) => {
            let error = match join_error.try_into_panic() {
                Ok(panic) => format!("handler panicked: {}", panic_message(&*panic)),
                Err(e) => format!("handler task ended abnormally: {e}"),
            };
            tracing::error!(error = %error, "handler panicked; failing the task");
            Settlement::fail(id, lease_id, &error, true)
        }
        Outcome::Abandoned(reason) => {
            shared.counters.abandoned.fetch_add(1, Ordering::Relaxed);
            let (error, retry) = match reason {
                CancelReason::Deadline => (
                    format!(
                        "timeout: handler did not finish within timeout_ms ({} ms)",
                        leased.timeout_ms
                    ),
                    true,
                ),
                CancelReason::Canceled => (
                    format!(
                        "canceled: handler did not stop within {} ms of the cancel",
                        shared.cancel_grace.as_millis()
                    ),
                    false,
                ),
                CancelReason::Shutdown => ("worker shut down".to_owned(), true),
                CancelReason::LeaseLost => ("lease lost".to_owned(), true),
            };
            tracing::warn!(%reason, error = %error, "handler ignored its token; abandoned");
            Settlement::fail(id, lease_id, &error, retry)
        }
    }
}

/// Keeps the lease alive and fires the token when the task is canceled (or the lease
/// is gone). Each heartbeat is a long-poll that waits up to `interval` for a cancel
/// request, so a cancel reaches the handler within a round trip; once a cancel was
/// seen, or when a beat fails, it falls back to one plain beat per `interval`.
async fn heartbeat_loop(
    client: Client,
    id: String,
    lease_id: String,
    ctx: Ctx,
    interval: Duration,
) {
    let wait_ms = interval.as_millis() as u64;
    loop {
        let asked = Instant::now();
        let beat = if ctx.cancel_reason() == Some(CancelReason::Canceled) {
            client.heartbeat(&id, &lease_id).await
        } else {
            client.heartbeat_wait(&id, &lease_id, wait_ms).await
        };
        let mut pause = true;
        // A 429 or 503 names the least time before the next beat.
        let mut asked_for = Duration::ZERO;
        match beat {
            Ok(hb) => {
                if hb.cancel_requested && ctx.cancel_with(CancelReason::Canceled) {
                    tracing::info!("task canceled; token cancelled");
                }
                // A watch that waited its time can be re-armed at once.
                pause = hb.cancel_requested;
            }
            Err(Error::Conflict { .. } | Error::NotFound) => {
                if ctx.cancel_with(CancelReason::LeaseLost) {
                    tracing::warn!("lease lost; token cancelled");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                asked_for = e.retry_pause(Duration::ZERO);
            }
        }
        // Never beat in a tight loop: a beat that came back early (a server that
        // does not wait, an error) is followed by the rest of the interval.
        let spent = asked.elapsed();
        if pause || spent < interval / 2 {
            let rest = interval.saturating_sub(spent).max(interval / 2);
            tokio::time::sleep(rest.max(asked_for)).await;
        }
    }
}

/// Resolves when the channel that pushed the task pushes its cancel; never for a
/// task leased over HTTP.
async fn pushed_cancel(link: &Option<Link>) {
    match link {
        Some(l) => l.cancel.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the channel that pushed the task has ended; never for a task
/// leased over HTTP.
async fn channel_gone(link: &Option<Link>) {
    match link {
        Some(l) => l.gone.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(a non-string panic payload)"
    }
}
