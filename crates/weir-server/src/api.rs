//! The routes of API v1 and their handlers. Handlers parse and validate (every
//! limit is a 4xx here, before the store is touched), call the `Broker`, and shape
//! the answer; they hold no state of their own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use weir_core::limits::{KIND_DEFAULT, MAX_ATTEMPTS_DEFAULT, TIMEOUT_MS_DEFAULT};
use weir_core::validate::{self, InvalidInput};
use weir_core::{NewTask, TaskId, TaskState, TraceContext};
use weir_store::{Broker, EnqueueTask, LeaseId, Scope, Settle, StoreError, BROWSE_TASKS_MAX};

use crate::auth::{check_queue, Principal};
use crate::error::ApiError;
use crate::extract::Path;
use crate::metrics::{LongPoll, Metrics};
use crate::openapi::{
    BodyProblems, Common, Conflict, IdPath, Invalid, Limited, Missing, NotReady, QueuePath,
    SchedulePath, SchedulesJson, TooMany, TraceHeaders,
};
use crate::otel::{self, Op, Otel};
use crate::schedule::{Compiled, ScheduleBody, ScheduleJson};
use crate::wire::*;
use crate::ServeConfig;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<dyn Broker>,
    pub config: Arc<ServeConfig>,
    /// Woken when this server changes a schedule, so its scheduler loop reads
    /// them again at once.
    pub schedules_changed: Arc<tokio::sync::Notify>,
    /// This process's Prometheus series (`GET /metrics`).
    pub metrics: Arc<Metrics>,
    /// Span export (`--otlp-endpoint`); `None`, the default, makes no span.
    pub otel: Option<Arc<Otel>>,
    /// API keys: whether they are checked, and the cache of them.
    pub auth: Arc<crate::auth::Auth>,
    /// The ingress limit (`--ingress-rate`); `None` limits nothing.
    pub ingress: Option<Arc<crate::ingress::IngressLimiter>>,
    /// The server's connections: what tells them to stop, and what shutdown
    /// waits for (a worker channel runs in a task of its own among them).
    pub connections: Arc<Connections>,
}

/// The server's connections, as the shutdown sees them.
pub struct Connections {
    /// Cancelled when the server stops: every connection finishes its request
    /// in flight (a worker channel closes) and ends.
    pub stopping: tokio_util::sync::CancellationToken,
    /// Every connection's task; shutdown waits for them (for the grace period).
    pub tracker: tokio_util::task::TaskTracker,
}

/// Room for the JSON around a payload or result in a single-task request body.
const ENVELOPE_BYTES_MAX: usize = 64 * 1024;

/// Every route of the API, each documented: `routes!` takes a handler's method
/// and path from its `#[utoipa::path]` attribute for both the router and the
/// OpenAPI document (`openapi::document`), so the two cannot disagree. A new
/// route is one `.routes(routes!(handler))` line here, its handler carrying the
/// attribute; `tests/openapi.rs` fails for a route the router serves that the
/// document lacks (one added with a bare `.route`).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(list_queues))
        .routes(routes!(get_queue, delete_queue))
        .routes(routes!(configure_queue))
        .routes(routes!(list_schedules))
        .routes(routes!(put_schedule, get_schedule, delete_schedule))
        .routes(routes!(enqueue, list_tasks))
        .routes(routes!(purge_dead))
        .routes(routes!(retry_dead))
        .routes(routes!(enqueue_batch))
        .routes(routes!(lease))
        .routes(routes!(get_task, delete_task))
        .routes(routes!(retry_task))
        .routes(routes!(cancel))
        .routes(routes!(ack))
        .routes(routes!(fail))
        .routes(routes!(release))
        .routes(routes!(heartbeat))
        .routes(routes!(settle))
        .routes(routes!(crate::channel::connect))
        .routes(routes!(create_group))
        .routes(routes!(get_group))
        .routes(routes!(cancel_group))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(crate::keys::create_key, crate::keys::list_keys))
        .routes(routes!(crate::keys::delete_key))
        .routes(routes!(
            crate::keys::sign_in,
            crate::keys::get_session,
            crate::keys::sign_out
        ))
}

/// The whole API as a router (no socket: tests drive it with `oneshot`).
pub fn router(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        // The web dashboard: `/` and `/ui/…` (its own module; `openapi::document`
        // adds its paths from the same table).
        .merge(crate::ui::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "this route does not take that method",
            )
        })
        // Layers run bottom up, each after routing (so each sees the matched
        // route, none for a fallback's): the metrics see every answer; auth
        // finds who is calling; the ingress limit then counts the request under
        // its key, or its address.
        .layer(axum::middleware::from_fn_with_state(
            state.ingress.clone(),
            crate::ingress::limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        // Outermost: a long-poll's parked wait is awaited here unless the
        // connection layer awaits it itself (`park`).
        .layer(axum::middleware::from_fn(crate::park::resolve))
        .with_state(state)
}

/// Liveness: 200 while the server answers.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain", example = "ok"))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// This document: the API in OpenAPI 3.1, with this server's limits.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object), Limited)
)]
async fn openapi_json(State(s): State<AppState>) -> Response {
    Json(crate::openapi::document(&s.config.limits)).into_response()
}

type ApiResult = Result<Response, ApiError>;

/// Reads a request body of at most `limit` bytes; more is a 413, and a body that
/// cannot be read a 400 or 408 (`ApiError::unreadable_body`).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::too_large(format!("the request body exceeds {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|&n| n > limit) {
        if n <= REFUSED_BODY_DRAIN_BYTES_MAX {
            drain(body).await;
        }
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| ApiError::unreadable_body(&e, limit))
}

/// A body declared larger than its route takes is still read, and dropped, up to
/// this many bytes before the 413 goes out: a client that writes its whole body
/// before it reads the answer (most do) then sees the 413 rather than a reset in
/// the middle of its send — nginx's "lingering close". A larger body is refused
/// unread and its connection closed.
const REFUSED_BODY_DRAIN_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Reads and drops a refused body, frame by frame, stopping at its end, at an
/// error (the body timeout included), or past `REFUSED_BODY_DRAIN_BYTES_MAX`.
async fn drain(mut body: Body) {
    use http_body_util::BodyExt;
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, |d| d.len());
        if seen > REFUSED_BODY_DRAIN_BYTES_MAX {
            break;
        }
    }
}

/// Parses a request body, which must be a JSON object (see [`Object`]).
pub(crate) fn parse<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map(|Object(t)| t)
        .map_err(|e| ApiError::bad_body(&e))
}

pub(crate) fn task_id(s: &str) -> Result<TaskId, ApiError> {
    s.parse().map_err(|_| {
        ApiError::invalid(
            "id",
            format!("{s:?} is not a task id (a 26-character ULID)"),
        )
    })
}

fn group_id(s: &str) -> Result<TaskId, ApiError> {
    s.parse().map_err(|_| {
        ApiError::invalid(
            "id",
            format!("{s:?} is not a group id (a 26-character ULID)"),
        )
    })
}

pub(crate) fn lease_id(field: &str, s: &str) -> Result<LeaseId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::invalid(field, "lease_id is not a lease id (32 hex digits)"))
}

/// The query string of a long-poll GET. Its only parameter is `wait_ms`, so an error
/// names either the unknown parameter or `wait_ms`.
fn wait_query(
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<WaitQuery, ApiError> {
    query.map(|Query(q)| q).map_err(|e| {
        let text = e.body_text();
        let unknown = text
            .split("unknown field `")
            .nth(1)
            .and_then(|rest| rest.split('`').next());
        match unknown {
            Some(name) => ApiError::invalid(
                name,
                format!("unknown query parameter {name:?}; the only one is wait_ms"),
            ),
            None => ApiError::invalid("wait_ms", text),
        }
    })
}

/// An RFC 3339 time field as milliseconds since the Unix epoch.
fn time_ms(field: &str, text: &str) -> Result<u64, InvalidInput> {
    let ms = parse_rfc3339(text)
        .ok_or_else(|| InvalidInput::invalid(field, format!("{text:?} is not an RFC 3339 time")))?;
    u64::try_from(ms).map_err(|_| {
        InvalidInput::invalid(
            field,
            format!("{text:?} is before 1970-01-01T00:00:00Z, the earliest time weir takes"),
        )
    })
}

fn wait(field: &str, wait_ms: Option<u64>, config: &ServeConfig) -> Result<Duration, ApiError> {
    let ms = wait_ms.unwrap_or(0);
    validate::range(field, ms, 0, config.limits.wait_ms_max)?;
    Ok(Duration::from_millis(ms))
}

/// The wall clock in ms (every module of the server reads it here).
pub(crate) fn now_ms() -> u64 {
    weir_store::Clock::now_ms(&weir_store::SystemClock)
}

/// The W3C trace context of a request (`traceparent`, `tracestate`), if it sent a
/// valid one; an invalid one is ignored, as the specification asks.
fn trace_context(headers: &HeaderMap) -> Option<TraceContext> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    TraceContext::from_headers(get("traceparent"), get("tracestate"))
}

/// Gives the tasks of an enqueue the trace context they carry: the request's,
/// or, with span export on, that of the `send` span this starts (which the caller
/// ends with `end_span`).
fn producer_trace(
    s: &AppState,
    queue: &str,
    tasks: &mut [EnqueueTask],
    headers: &HeaderMap,
) -> Option<opentelemetry_sdk::trace::Span> {
    let from = trace_context(headers);
    let span = s.otel.as_ref().map(|o| {
        let n = tasks.len();
        o.span(Op::Send { queue, id: None, n }, from.as_ref(), &[], None)
    });
    let carried = match &span {
        Some(sp) => Some(otel::carried(sp, from.as_ref())),
        None => from,
    };
    if let Some(trace) = carried {
        for t in tasks {
            t.task.trace = Some(trace.clone());
        }
    }
    span
}

/// Ends a span this request started, marking it failed if the request failed; a
/// single task's id becomes its `messaging.message.id`.
fn end_span<T>(
    span: Option<opentelemetry_sdk::trace::Span>,
    res: &Result<T, StoreError>,
    id: Option<TaskId>,
) {
    use opentelemetry::trace::{Span as _, Status};
    let Some(mut span) = span else { return };
    if let Some(id) = id {
        span.set_attribute(opentelemetry::KeyValue::new(
            "messaging.message.id",
            id.to_string(),
        ));
    }
    if let Err(e) = res {
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
}

/// Validates one task of an enqueue request. Fields are named as in a single
/// enqueue; a batch prefixes them (`tasks[3].`) only when there is an error, so the
/// success path allocates no names.
pub(crate) fn new_task(
    body: &Bytes,
    b: EnqueueBody<'_>,
    config: &ServeConfig,
    now: u64,
) -> Result<EnqueueTask, InvalidInput> {
    let l = &config.limits;
    let payload = b.payload.get().as_bytes();
    validate::size("payload", payload.len(), l.payload_bytes_max)?;
    validate::json_value("payload", payload, l)?;
    let kind = b.kind.unwrap_or_else(|| KIND_DEFAULT.to_owned());
    validate::kind(&kind, l)?;
    // A delay is resolved by the store against its own clock; an absolute `run_at`
    // is checked against this server's clock, so servers whose clocks differ by
    // less than a second disagree only about a `run_at` within a second of the
    // limit (see ARCHITECTURE.md, "Time").
    let mut delay_ms = 0;
    let run_at_ms = match (b.delay_ms, b.run_at) {
        (Some(_), Some(_)) => {
            return Err(InvalidInput::invalid(
                "run_at",
                "give delay_ms or run_at, not both",
            ))
        }
        (Some(d), None) => {
            validate::range("delay_ms", d, 0, l.delay_ms_max)?;
            delay_ms = d;
            None
        }
        (None, Some(t)) => {
            let at = time_ms("run_at", &t)?;
            if at > now + l.delay_ms_max {
                return Err(InvalidInput::invalid(
                    "run_at",
                    "is further ahead than the delay limit",
                ));
            }
            Some(at)
        }
        (None, None) => None,
    };
    let max_attempts = b.max_attempts.unwrap_or(MAX_ATTEMPTS_DEFAULT);
    validate::range(
        "max_attempts",
        max_attempts as u64,
        1,
        l.max_attempts_max as u64,
    )?;
    let timeout_ms = b.timeout_ms.unwrap_or(TIMEOUT_MS_DEFAULT);
    validate::range("timeout_ms", timeout_ms, 1, l.timeout_ms_max)?;
    let deadline_ms = match b.deadline {
        None => None,
        Some(t) => Some(time_ms("deadline", &t)?),
    };
    if let Some(k) = &b.idempotency_key {
        validate::text("idempotency_key", k, l.idempotency_key_bytes_max)?;
    }
    let retention_ms = b.retention_ms.unwrap_or(config.retention_ms);
    validate::range("retention_ms", retention_ms, 0, l.delay_ms_max)?;
    Ok(EnqueueTask {
        task: NewTask {
            kind,
            priority: b.priority.unwrap_or(0),
            run_at_ms,
            delay_ms,
            max_attempts,
            timeout_ms,
            deadline_ms,
            idempotency_key: b.idempotency_key,
            retention_ms,
            trace: None,
        },
        // Zero-copy: the payload is a slice of the request body.
        payload: body.slice_ref(payload),
    })
}

/// Enqueues one task: 201 with its id and state (200 with the first task's if its idempotency key matched).
#[utoipa::path(
    post, path = "/v1/queues/{queue}/tasks", tag = "producer", params(QueuePath, TraceHeaders), request_body = EnqueueBody,
    responses(
        (status = 201, description = "Created", body = EnqueueResponse),
        (status = 200, description = "The idempotency key matched a retained task: that task", body = EnqueueResponse),
        BodyProblems, TooMany, Common,
    )
)]
async fn enqueue(
    State(s): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    validate::queue_name(&queue, &s.config.limits)?;
    let limit = s.config.limits.payload_bytes_max + ENVELOPE_BYTES_MAX;
    let bytes = read_body(&headers, body, limit).await?;
    let parsed: EnqueueBody = parse(&bytes)?;
    let mut tasks = vec![new_task(&bytes, parsed, &s.config, now_ms())?];
    let span = producer_trace(&s, &queue, &mut tasks, &headers);
    let out = s.broker.enqueue(&queue, tasks).await;
    end_span(span, &out, out.as_ref().ok().map(|o| o[0].id));
    let out = out?.remove(0);
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(EnqueueResponse {
            id: out.id.to_string(),
            state: out.state.as_str(),
        }),
    )
        .into_response())
}

/// Enqueues 1 to 1000 tasks, all durable or none: 201 with their ids.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/tasks:batch", tag = "producer", params(QueuePath, TraceHeaders), request_body = BatchBody,
    responses((status = 201, description = "Created (or matched by idempotency key)", body = BatchResponse), BodyProblems, TooMany, Common)
)]
async fn enqueue_batch(
    State(s): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    validate::queue_name(&queue, &s.config.limits)?;
    let bytes = read_body(&headers, body, s.config.limits.request_bytes_max).await?;
    let parsed: BatchBody = parse(&bytes)?;
    let max = s.config.limits.batch_tasks_max;
    if parsed.tasks.is_empty() || parsed.tasks.len() > max {
        return Err(ApiError::invalid(
            "tasks",
            format!(
                "a batch holds 1 to {max} tasks; this one has {}",
                parsed.tasks.len()
            ),
        ));
    }
    let now = now_ms();
    let tasks = parsed
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            new_task(&bytes, t, &s.config, now).map_err(|e| e.prefixed(&format!("tasks[{i}].")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut tasks = tasks;
    let span = producer_trace(&s, &queue, &mut tasks, &headers);
    let out = s.broker.enqueue(&queue, tasks).await;
    end_span(span, &out, None);
    let out = out?;
    let created = out.iter().filter(|e| e.created).count();
    let body = batch_body(out.iter().map(|e| e.id), created);
    Ok(json_bytes(StatusCode::CREATED, body))
}

/// A JSON answer whose body was written by hand (see `wire::lease_body`).
fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from(body),
    )
        .into_response()
}

/// A task; with `wait_ms`, long-polls until it is terminal (or the time is up).
#[utoipa::path(
    get, path = "/v1/tasks/{id}", tag = "producer", params(IdPath, WaitQuery),
    responses((status = 200, description = "The task", body = TaskJson), Invalid, Missing, Common)
)]
async fn get_task(
    State(s): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let id = task_id(&id)?;
    let q = wait_query(query)?;
    let wait = wait("wait_ms", q.wait_ms, &s.config)?;
    let finish = async move {
        let view = if wait.is_zero() {
            s.broker.get(id).await?
        } else {
            let _parked = s.metrics.parked(LongPoll::Task);
            s.broker.wait(id, wait).await?
        };
        let view = view.ok_or(StoreError::NotFound)?;
        Ok(Json(TaskJson::from(view)).into_response())
    };
    now_or_parked(wait, finish).await
}

/// Runs `finish` now, or, for a long-poll, parks it: the request is dropped and
/// only `finish` is held while it waits (`crate::park`).
async fn now_or_parked(
    wait: Duration,
    finish: impl Future<Output = ApiResult> + Send + 'static,
) -> ApiResult {
    if wait.is_zero() {
        finish.await
    } else {
        Ok(crate::park::park(
            async move { finish.await.into_response() },
        ))
    }
}

/// Cancels a task: queued → canceled; active → `cancel_requested`; terminal → 409.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/cancel", tag = "producer", params(IdPath),
    responses((status = 200, description = "The task", body = TaskJson), Invalid, Missing, Conflict, Common)
)]
async fn cancel(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = task_id(&id)?;
    let view = s.broker.cancel(id).await?;
    Ok(Json(TaskJson::from(view)).into_response())
}

/// Leases up to `max` tasks, waiting up to `wait_ms` for the first (an empty body takes the defaults).
#[utoipa::path(
    post, path = "/v1/queues/{queue}/lease", tag = "worker", params(QueuePath, TraceHeaders), request_body = Option<LeaseBody>,
    responses((status = 200, description = "The leased tasks (none if nothing came in time)", body = LeaseResponse), BodyProblems, Common)
)]
async fn lease(
    State(s): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    validate::queue_name(&queue, &s.config.limits)?;
    let bytes = read_body(&headers, body, ENVELOPE_BYTES_MAX).await?;
    let b: LeaseBody = if bytes.iter().all(|c| c.is_ascii_whitespace()) {
        LeaseBody::default()
    } else {
        parse(&bytes)?
    };
    let wait = wait("wait_ms", b.wait_ms, &s.config)?;
    // `max` and `worker` are checked by `Checked` in front of the store; a `max`
    // beyond usize saturates there into the same out-of-range error.
    let max = usize::try_from(b.max.unwrap_or(1)).unwrap_or(usize::MAX);
    let worker = b.worker;
    let parent = s.otel.as_ref().and_then(|_| trace_context(&headers));
    let finish = async move {
        let parked = (!wait.is_zero()).then(|| s.metrics.parked(LongPoll::Lease));
        let started = s.otel.as_ref().map(|_| std::time::SystemTime::now());
        let leased = s
            .broker
            .lease_for(&queue, max, wait, worker.as_deref())
            .await;
        drop(parked);
        let leased = leased?;
        if let (Some(o), false) = (&s.otel, leased.is_empty()) {
            // Only a lease that handed out tasks: an empty long-poll is not an event.
            let links: Vec<&TraceContext> = leased
                .iter()
                .filter_map(|l| l.record.trace.as_ref())
                .collect();
            let op = Op::Receive {
                queue: &queue,
                n: leased.len(),
            };
            end_span(
                Some(o.span(op, parent.as_ref(), &links, started)),
                &Ok::<(), StoreError>(()),
                None,
            );
        }
        s.metrics.leased(&queue, &leased);
        Ok(json_bytes(StatusCode::OK, lease_body(&leased)))
    };
    now_or_parked(wait, finish).await
}

fn result_bytes(
    body: &Bytes,
    result: Option<&serde_json::value::RawValue>,
    field: &str,
    config: &ServeConfig,
) -> Result<Option<Bytes>, ApiError> {
    let Some(r) = result else { return Ok(None) };
    let text = r.get().as_bytes();
    validate::size(field, text.len(), config.limits.result_bytes_max)?;
    validate::json_value(field, text, &config.limits)?;
    Ok(Some(body.slice_ref(text)))
}

fn error_text(
    field: &str,
    error: Option<String>,
    config: &ServeConfig,
) -> Result<String, ApiError> {
    let e = error.unwrap_or_default();
    validate::size(field, e.len(), config.limits.error_bytes_max)?;
    Ok(e)
}

/// Runs one settle and turns its per-item answer into a response.
async fn settle_one(s: &AppState, headers: &HeaderMap, item: Settle) -> ApiResult {
    let id = item.id();
    let span = s.otel.as_ref().map(|o| {
        let id = id.to_string();
        let op = Op::Settle {
            queue: None,
            id: Some(&id),
            n: 1,
        };
        o.span(op, trace_context(headers).as_ref(), &[], None)
    });
    let res = s.broker.settle(vec![item]).await;
    end_span(span, &res, None);
    let state = res?.remove(0)?;
    Ok(Json(StateResponse {
        id: id.to_string(),
        state: state.as_str(),
    })
    .into_response())
}

/// Acks a leased task with its result.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/ack", tag = "worker", params(IdPath, TraceHeaders), request_body = AckBody,
    responses((status = 200, description = "The task's new state", body = StateResponse), BodyProblems, Missing, Conflict, Common)
)]
async fn ack(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let id = task_id(&id)?;
    let bytes = read_body(
        &headers,
        body,
        s.config.limits.result_bytes_max + ENVELOPE_BYTES_MAX,
    )
    .await?;
    let b: AckBody = parse(&bytes)?;
    let lease_id = lease_id("lease_id", &b.lease_id)?;
    let result = result_bytes(&bytes, b.result, "result", &s.config)?;
    settle_one(
        &s,
        &headers,
        Settle::Ack {
            id,
            lease_id,
            result,
        },
    )
    .await
}

/// Fails a leased task: retried with backoff while attempts remain (`retry`), else dead.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/fail", tag = "worker", params(IdPath, TraceHeaders), request_body = FailBody,
    responses((status = 200, description = "The task's new state", body = StateResponse), BodyProblems, Missing, Conflict, Common)
)]
async fn fail(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let id = task_id(&id)?;
    let bytes = read_body(
        &headers,
        body,
        s.config.limits.error_bytes_max + ENVELOPE_BYTES_MAX,
    )
    .await?;
    let b: FailBody = parse(&bytes)?;
    let lease_id = lease_id("lease_id", &b.lease_id)?;
    let error = error_text("error", b.error, &s.config)?;
    settle_one(
        &s,
        &headers,
        Settle::Fail {
            id,
            lease_id,
            error,
            retry: b.retry.unwrap_or(true),
        },
    )
    .await
}

/// Gives a leased task back, pending again without counting an attempt.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/release", tag = "worker", params(IdPath), request_body = LeaseIdBody,
    responses((status = 200, description = "The task's new state", body = StateResponse), BodyProblems, Missing, Conflict, Common)
)]
async fn release(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let id = task_id(&id)?;
    let bytes = read_body(&headers, body, ENVELOPE_BYTES_MAX).await?;
    let b: LeaseIdBody = parse(&bytes)?;
    let state = s
        .broker
        .release(id, lease_id("lease_id", &b.lease_id)?)
        .await?;
    Ok(Json(StateResponse {
        id: id.to_string(),
        state: state.as_str(),
    })
    .into_response())
}

/// Extends a lease; with `wait_ms`, also waits for a cancel request.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/heartbeat", tag = "worker", params(IdPath), request_body = HeartbeatBody,
    responses((status = 200, description = "The new expiry, and whether a cancel was requested", body = HeartbeatResponse), BodyProblems, Missing, Conflict, Common)
)]
async fn heartbeat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let id = task_id(&id)?;
    let bytes = read_body(&headers, body, ENVELOPE_BYTES_MAX).await?;
    let b: HeartbeatBody = parse(&bytes)?;
    let lease_id = lease_id("lease_id", &b.lease_id)?;
    let wait = wait("wait_ms", b.wait_ms, &s.config)?;
    let finish = async move {
        let hb = if wait.is_zero() {
            s.broker.heartbeat(id, lease_id).await?
        } else {
            s.broker.watch(id, lease_id, wait).await?
        };
        Ok(Json(HeartbeatResponse {
            lease_expires_at: rfc3339(hb.lease_expires_ms),
            cancel_requested: hb.cancel_requested,
        })
        .into_response())
    };
    now_or_parked(wait, finish).await
}

/// Acks and fails many leased tasks: an outcome per item.
#[utoipa::path(
    post, path = "/v1/acks", tag = "worker", params(TraceHeaders), request_body = SettleBody,
    responses((status = 200, description = "Each item's outcome, in order", body = SettleResponse), BodyProblems, Common)
)]
async fn settle(
    State(s): State<AppState>,
    who: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = read_body(&headers, body, s.config.limits.request_bytes_max).await?;
    let b: SettleBody = parse(&bytes)?;
    let parent = s.otel.as_ref().and_then(|_| trace_context(&headers));
    let answer = settle_items(&s, who.as_deref(), &bytes, b.acks, b.fails, parent.as_ref()).await?;
    Ok(Json(answer).into_response())
}

/// Settles acks and fails (`POST /v1/acks`, and the worker channel's `settle`):
/// every item is checked before anything changes (a malformed item fails the
/// whole call; a stale lease fails only its item), then one `Broker::settle`.
/// `bytes` is the body the acks' results borrow from.
pub(crate) async fn settle_items(
    s: &AppState,
    who: Option<&Principal>,
    bytes: &Bytes,
    acks: Vec<AckItem<'_>>,
    fails: Vec<FailItem>,
    parent: Option<&TraceContext>,
) -> Result<SettleResponse, ApiError> {
    let max = s.config.limits.batch_tasks_max;
    let total = acks.len() + fails.len();
    if total > max {
        return Err(ApiError::invalid(
            "acks",
            format!("at most {max} acks and fails per request; this one has {total}"),
        ));
    }
    let mut items = Vec::with_capacity(total);
    let mut ids = Vec::with_capacity(total);
    for (i, a) in acks.into_iter().enumerate() {
        let id = task_id(&a.id).map_err(|e| e.field(format!("acks[{i}].id")))?;
        let lease_id = lease_id(&format!("acks[{i}].lease_id"), &a.lease_id)?;
        let result = result_bytes(bytes, a.result, &format!("acks[{i}].result"), &s.config)?;
        ids.push(a.id);
        items.push(Settle::Ack {
            id,
            lease_id,
            result,
        });
    }
    let n_acks = items.len();
    for (i, f) in fails.into_iter().enumerate() {
        let id = task_id(&f.id).map_err(|e| e.field(format!("fails[{i}].id")))?;
        let lease_id = lease_id(&format!("fails[{i}].lease_id"), &f.lease_id)?;
        let error = error_text(&format!("fails[{i}].error"), f.error, &s.config)?;
        ids.push(f.id);
        items.push(Settle::Fail {
            id,
            lease_id,
            error,
            retry: f.retry.unwrap_or(true),
        });
    }
    // A queue-limited key settles only tasks of its queues.
    if let Some(who) = who.filter(|w| w.limited()) {
        for item in &items {
            if let Some(t) = s.broker.get(item.id()).await? {
                who.check_queue(&t.record.queue)?;
            }
        }
    }
    let span = s.otel.as_ref().map(|o| {
        let op = Op::Settle {
            queue: None,
            id: None,
            n: items.len(),
        };
        o.span(op, parent, &[], None)
    });
    let results = s.broker.settle(items).await;
    end_span(span, &results, None);
    let results = results?;
    let mut outcomes: Vec<SettleOutcome> = ids
        .into_iter()
        .zip(results)
        .map(|(id, r)| match r {
            Ok(state) => SettleOutcome {
                id,
                ok: true,
                state: Some(state.as_str()),
                status: None,
                error: None,
            },
            Err(e) => {
                let api = ApiError::from(e);
                SettleOutcome {
                    id,
                    ok: false,
                    state: None,
                    status: Some(api.status.as_u16()),
                    error: Some(api.detail),
                }
            }
        })
        .collect();
    let fails = outcomes.split_off(n_acks);
    Ok(SettleResponse {
        acks: outcomes,
        fails,
    })
}

/// Enqueues a group of tasks to wait for together.
#[utoipa::path(
    post, path = "/v1/groups", tag = "producer", params(TraceHeaders), request_body = GroupBody,
    responses((status = 201, description = "Created", body = GroupCreatedResponse), BodyProblems, TooMany, Common)
)]
async fn create_group(
    State(s): State<AppState>,
    who: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = read_body(&headers, body, s.config.limits.request_bytes_max).await?;
    let parsed: GroupBody = parse(&bytes)?;
    validate::queue_name(&parsed.queue, &s.config.limits)?;
    check_queue(who.as_deref(), &parsed.queue)?;
    let max = s.config.limits.batch_tasks_max;
    if parsed.tasks.is_empty() || parsed.tasks.len() > max {
        return Err(ApiError::invalid(
            "tasks",
            format!(
                "a group holds 1 to {max} tasks; this one has {}",
                parsed.tasks.len()
            ),
        ));
    }
    let now = now_ms();
    let mut tasks = Vec::with_capacity(parsed.tasks.len());
    for (i, t) in parsed.tasks.into_iter().enumerate() {
        if t.idempotency_key.is_some() {
            return Err(ApiError::invalid(
                format!("tasks[{i}].idempotency_key"),
                "tasks of a group cannot carry idempotency keys",
            ));
        }
        tasks.push(
            new_task(&bytes, t, &s.config, now).map_err(|e| e.prefixed(&format!("tasks[{i}].")))?,
        );
    }
    let span = producer_trace(&s, &parsed.queue, &mut tasks, &headers);
    let created = s
        .broker
        .create_group(&parsed.queue, tasks, parsed.fail_fast)
        .await;
    end_span(span, &created, None);
    let created = created?;
    let body = GroupCreatedResponse {
        id: created.id.to_string(),
        task_ids: created.task_ids.iter().map(|t| t.to_string()).collect(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A group with its members; with `wait_ms`, long-polls until it ends.
#[utoipa::path(
    get, path = "/v1/groups/{id}", tag = "producer", params(IdPath, WaitQuery),
    responses((status = 200, description = "The group", body = GroupJson), Invalid, Missing, Common)
)]
async fn get_group(
    State(s): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let id = group_id(&id)?;
    let q = wait_query(query)?;
    let wait = wait("wait_ms", q.wait_ms, &s.config)?;
    let finish = async move {
        let parked = (!wait.is_zero()).then(|| s.metrics.parked(LongPoll::Group));
        let view = s.broker.group(id, wait).await;
        drop(parked);
        let view = view?.ok_or(StoreError::GroupNotFound)?;
        Ok(Json(GroupJson::from(view)).into_response())
    };
    now_or_parked(wait, finish).await
}

/// Cancels every member of a group that has not ended.
#[utoipa::path(
    post, path = "/v1/groups/{id}/cancel", tag = "producer", params(IdPath),
    responses((status = 200, description = "The group", body = GroupJson), Invalid, Missing, Conflict, Common)
)]
async fn cancel_group(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = group_id(&id)?;
    let view = s.broker.cancel_group(id).await?;
    Ok(Json(GroupJson::from(view)).into_response())
}

/// Every queue with its counts and config.
#[utoipa::path(
    get, path = "/v1/queues", tag = "queues",
    responses((status = 200, description = "The queues", body = QueuesResponse), Common)
)]
async fn list_queues(State(s): State<AppState>, who: Option<Extension<Principal>>) -> ApiResult {
    // A queue-limited key sees its queues only.
    let queues = s
        .broker
        .queues()
        .await?
        .into_iter()
        .filter(|q| who.as_ref().is_none_or(|w| w.allows_queue(&q.name)))
        .map(QueueJson::from)
        .collect();
    Ok(Json(QueuesResponse { queues }).into_response())
}

/// One queue with its counts and config.
#[utoipa::path(
    get, path = "/v1/queues/{queue}", tag = "queues", params(QueuePath),
    responses((status = 200, description = "The queue", body = QueueJson), Invalid, Missing, Common)
)]
async fn get_queue(State(s): State<AppState>, Path(queue): Path<String>) -> ApiResult {
    validate::queue_name(&queue, &s.config.limits)?;
    let q = s
        .broker
        .queues()
        .await?
        .into_iter()
        .find(|q| q.name == queue)
        .ok_or_else(|| ApiError::not_found(format!("no queue named {queue}")))?;
    Ok(Json(QueueJson::from(q)).into_response())
}

/// Changes a queue's flow-control settings: 200 with the whole config.
#[utoipa::path(
    put, path = "/v1/queues/{queue}/config", tag = "queues", params(QueuePath), request_body = QueueConfigBody,
    responses((status = 200, description = "The whole config", body = QueueConfigJson), BodyProblems, TooMany, Common)
)]
async fn configure_queue(
    State(s): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    validate::queue_name(&queue, &s.config.limits)?;
    let bytes = read_body(&headers, body, ENVELOPE_BYTES_MAX).await?;
    let b: QueueConfigBody = parse(&bytes)?;
    let config = s.broker.configure(&queue, b.into()).await?;
    Ok(Json(QueueConfigJson::from(config)).into_response())
}

/// The API's view of a stored schedule (`None` if its definition does not parse).
fn schedule_view(s: &weir_store::Schedule, now: u64) -> Result<ScheduleJson, ApiError> {
    let compiled = Compiled::from_store(&s.spec)
        .map_err(|e| ApiError::from(StoreError::bug(format!("schedule {}: {e}", s.name))))?;
    Ok(compiled.view(s, now))
}

/// Creates or replaces a schedule: 200 with its view (`next_run_at` included).
#[utoipa::path(
    put, path = "/v1/schedules/{name}", tag = "schedules", params(SchedulePath), request_body = ScheduleBody,
    responses((status = 200, description = "The schedule", body = ScheduleJson), BodyProblems, TooMany, Common)
)]
async fn put_schedule(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    validate::schedule_name(&name, &s.config.limits)?;
    let limit = s.config.limits.schedule_bytes_max;
    let bytes = read_body(&headers, body, limit).await?;
    let b: ScheduleBody = parse(&bytes)?;
    let now = now_ms();
    let (_, spec) = Compiled::from_body(b, &s.config, now)?;
    let stored = s.broker.put_schedule(&name, spec, now).await?;
    s.schedules_changed.notify_one();
    Ok(Json(schedule_view(&stored, now)?).into_response())
}

/// One schedule.
#[utoipa::path(
    get, path = "/v1/schedules/{name}", tag = "schedules", params(SchedulePath),
    responses((status = 200, description = "The schedule", body = ScheduleJson), Invalid, Missing, Common)
)]
async fn get_schedule(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    validate::schedule_name(&name, &s.config.limits)?;
    let found = s
        .broker
        .schedules()
        .await?
        .into_iter()
        .find(|x| x.name == name);
    let found = found.ok_or_else(|| ApiError::not_found(format!("no schedule named {name}")))?;
    Ok(Json(schedule_view(&found, now_ms())?).into_response())
}

/// Every schedule.
#[utoipa::path(
    get, path = "/v1/schedules", tag = "schedules",
    responses((status = 200, description = "The schedules", body = SchedulesJson), Common)
)]
async fn list_schedules(State(s): State<AppState>) -> ApiResult {
    let now = now_ms();
    let schedules = s
        .broker
        .schedules()
        .await?
        .iter()
        .map(|x| schedule_view(x, now))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(serde_json::json!({ "schedules": schedules })).into_response())
}

/// Removes a schedule: 204, or 404 if there was none.
#[utoipa::path(
    delete, path = "/v1/schedules/{name}", tag = "schedules", params(SchedulePath),
    responses((status = 204, description = "Deleted"), Invalid, Missing, Common)
)]
async fn delete_schedule(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    validate::schedule_name(&name, &s.config.limits)?;
    if !s.broker.delete_schedule(&name).await? {
        return Err(ApiError::not_found(format!("no schedule named {name}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Removes an empty queue: 204; 409 with its counts if it holds any task.
#[utoipa::path(
    delete, path = "/v1/queues/{queue}", tag = "queues", params(QueuePath),
    responses((status = 204, description = "Deleted"), Invalid, Missing, Conflict, Common)
)]
async fn delete_queue(State(s): State<AppState>, Path(queue): Path<String>) -> ApiResult {
    validate::queue_name(&queue, &s.config.limits)?;
    match s.broker.delete_queue(&queue).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(StoreError::QueueNotFound) => {
            Err(ApiError::not_found(format!("no queue named {queue}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// How many tasks a page of `GET /v1/queues/{queue}/tasks` holds unless `limit` says.
const LIST_LIMIT_DEFAULT: u64 = 100;

/// A page of a queue's tasks in one state (`?state=`, default pending), or the task
/// holding an idempotency key (`?idempotency_key=`).
#[utoipa::path(
    get, path = "/v1/queues/{queue}/tasks", tag = "queues", params(QueuePath, TaskListQuery),
    responses((status = 200, description = "A page of tasks (without payload and result)", body = TaskPageJson), Invalid, Common)
)]
async fn list_tasks(
    State(s): State<AppState>,
    Path(queue): Path<String>,
    query: Result<Query<TaskListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    validate::queue_name(&queue, &s.config.limits)?;
    let q = query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::invalid("query", e.body_text()))?;
    if let Some(key) = q.idempotency_key {
        if q.state.is_some() || q.cursor.is_some() || q.limit.is_some() {
            return Err(ApiError::invalid(
                "idempotency_key",
                "a lookup by idempotency key takes no state, limit or cursor",
            ));
        }
        let found = s.broker.find_key(&queue, &key).await?;
        let tasks = found
            .map(|v| TaskJson::listed(v.record))
            .into_iter()
            .collect();
        return Ok(Json(TaskPageJson {
            tasks,
            next_cursor: None,
        })
        .into_response());
    }
    let state = match q.state.as_deref() {
        None => TaskState::Pending,
        Some(name) => TaskState::parse(name).ok_or_else(|| {
            ApiError::invalid(
                "state",
                format!(
                    "{name:?} is not a task state (scheduled, pending, active, completed, dead, canceled)"
                ),
            )
        })?,
    };
    let limit = q.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    validate::range("limit", limit, 1, BROWSE_TASKS_MAX as u64)?;
    let page = s
        .broker
        .browse(&queue, state, q.cursor.as_deref(), limit as usize)
        .await?;
    Ok(Json(TaskPageJson {
        tasks: page.tasks.into_iter().map(TaskJson::listed).collect(),
        next_cursor: page.next,
    })
    .into_response())
}

/// A dead or canceled task back to pending, attempts reset: 200 with the task.
#[utoipa::path(
    post, path = "/v1/tasks/{id}/retry", tag = "queues", params(IdPath),
    responses((status = 200, description = "The task", body = TaskJson), Invalid, Missing, Conflict, Common)
)]
async fn retry_task(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = task_id(&id)?;
    s.broker.retry(vec![id], Scope::ANY).await?.remove(0)?;
    let view = s.broker.get(id).await?.ok_or(StoreError::NotFound)?;
    Ok(Json(TaskJson::from(view)).into_response())
}

/// Removes a finished task now (as its retention would): 204; 409 if not finished.
#[utoipa::path(
    delete, path = "/v1/tasks/{id}", tag = "queues", params(IdPath),
    responses((status = 204, description = "Deleted"), Invalid, Missing, Conflict, Common)
)]
async fn delete_task(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = task_id(&id)?;
    s.broker
        .delete_tasks(vec![id], Scope::ANY)
        .await?
        .remove(0)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The ids of a dead-task retry or purge body (`None`: every dead task).
async fn dead_ids(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Option<Vec<TaskId>>, ApiError> {
    let bytes = read_body(headers, body, s.config.limits.request_bytes_max).await?;
    let b: DeadBody = if bytes.iter().all(|c| c.is_ascii_whitespace()) {
        DeadBody::default()
    } else {
        parse(&bytes)?
    };
    let Some(ids) = b.ids else {
        return Ok(None);
    };
    if ids.is_empty() || ids.len() > BROWSE_TASKS_MAX {
        return Err(ApiError::invalid(
            "ids",
            format!("give 1 to {BROWSE_TASKS_MAX} task ids, or none for every dead task"),
        ));
    }
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            id.parse().map_err(|_| {
                ApiError::invalid(
                    format!("ids[{i}]"),
                    format!("{id:?} is not a task id (a 26-character ULID)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Retries a queue's dead tasks (all, or `{"ids": [...]}`): 200 with counts.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/dead/retry", tag = "queues", params(QueuePath), request_body = Option<DeadBody>,
    responses((status = 200, description = "How many were retried and skipped", body = DeadResponse), BodyProblems, Common)
)]
async fn retry_dead(
    State(s): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    dead_op(&s, &queue, &headers, body, DeadOp::Retry).await
}

/// Deletes a queue's dead tasks (all, or `{"ids": [...]}`): 200 with counts.
#[utoipa::path(
    delete, path = "/v1/queues/{queue}/dead", tag = "queues", params(QueuePath), request_body = Option<DeadBody>,
    responses((status = 200, description = "How many were deleted and skipped", body = DeadResponse), BodyProblems, Common)
)]
async fn purge_dead(
    State(s): State<AppState>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    dead_op(&s, &queue, &headers, body, DeadOp::Delete).await
}

#[derive(Clone, Copy)]
enum DeadOp {
    Retry,
    Delete,
}

/// A queue's dead-task retry or purge: the body's ids, or every dead task.
async fn dead_op(
    s: &AppState,
    queue: &str,
    headers: &HeaderMap,
    body: Body,
    op: DeadOp,
) -> ApiResult {
    validate::queue_name(queue, &s.config.limits)?;
    let ids = dead_ids(s, headers, body).await?;
    let (done, skipped) = for_dead(s, queue, ids, op).await?;
    let (retried, deleted) = match op {
        DeadOp::Retry => (Some(done), None),
        DeadOp::Delete => (None, Some(done)),
    };
    Ok(Json(DeadResponse {
        retried,
        deleted,
        skipped,
    })
    .into_response())
}

/// Applies `op` to the queue's dead tasks: the ids given, or every dead task, a
/// page at a time (each walk step resumes after the last, so tasks that die
/// meanwhile are taken too, and none twice). Answers (changed, skipped): skipped
/// counts what was not a dead task of the queue (given ids only; a task that left
/// dead between the page and the op too).
async fn for_dead(
    s: &AppState,
    queue: &str,
    ids: Option<Vec<TaskId>>,
    op: DeadOp,
) -> Result<(u64, u64), ApiError> {
    let scope = Scope {
        queue: Some(queue),
        state: Some(TaskState::Dead),
    };
    let apply = |ids: Vec<TaskId>| async move {
        let outcomes: Vec<bool> = match op {
            DeadOp::Retry => s
                .broker
                .retry(ids, scope)
                .await?
                .into_iter()
                .map(|r| skipped_or(r.map(drop)))
                .collect::<Result<_, _>>()?,
            DeadOp::Delete => s
                .broker
                .delete_tasks(ids, scope)
                .await?
                .into_iter()
                .map(skipped_or)
                .collect::<Result<_, _>>()?,
        };
        let done = outcomes.iter().filter(|&&d| d).count() as u64;
        Ok::<_, StoreError>((done, outcomes.len() as u64 - done))
    };
    if let Some(ids) = ids {
        return Ok(apply(ids).await?);
    }
    let (mut done, mut skipped) = (0, 0);
    let mut cursor: Option<String> = None;
    loop {
        let page = s
            .broker
            .browse(queue, TaskState::Dead, cursor.as_deref(), BROWSE_TASKS_MAX)
            .await?;
        if !page.tasks.is_empty() {
            let (d, k) = apply(page.tasks.iter().map(|t| t.id).collect()).await?;
            done += d;
            skipped += k;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok((done, skipped)),
        }
    }
}

/// One task's outcome in a dead-task op: done (true), or not a dead task of the
/// queue (false); any other error fails the request.
fn skipped_or(r: Result<(), StoreError>) -> Result<bool, StoreError> {
    match r {
        Ok(()) => Ok(true),
        Err(StoreError::NotFound) | Err(StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `GET /metrics`: this process's series and the store's per-queue ones, read now.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus metrics (OpenMetrics text)", body = String,
         content_type = "application/openmetrics-text"),
        Common,
    )
)]
async fn metrics(State(s): State<AppState>) -> ApiResult {
    let queues = s.broker.queues().await?;
    Ok(crate::metrics::answer(s.metrics.render(&queues)))
}

/// Readiness: 200 while the store takes writes.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain", example = "ready"),
        NotReady,
    )
)]
async fn readyz(State(s): State<AppState>) -> Response {
    match s.broker.readiness() {
        Ok(()) => "ready".into_response(),
        // The same problem document a write would get, but always 503: a load
        // balancer reads only "not ready", the type and detail say why.
        Err(e) => {
            let mut err = ApiError::from(e);
            if err.status == StatusCode::INTERNAL_SERVER_ERROR {
                err.detail = "the store failed and the server is restarting".into();
            }
            err.status = StatusCode::SERVICE_UNAVAILABLE;
            err.into_response()
        }
    }
}
