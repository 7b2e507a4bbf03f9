//! Wire types of the v1 JSON API (SPEC §5), separate from the domain types so the
//! format stays stable while the core changes. Requests reject unknown fields;
//! payloads and results are carried as raw JSON text, never re-parsed into values.

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use weir_core::TaskRecord;
use weir_core::{ConfigPatch, QueueConfig};
use weir_store::{Counts, GroupView, Leased, QueueInfo, TaskView, Totals};

/// A request struct that must come as a JSON object. serde's derive also reads a
/// struct from an array of its fields in declaration order (`[{"a":1},"email.send",
/// 7]`): that order is no part of the API, and such a request would change meaning
/// whenever a field is added. Every request body is read through this
/// (`api::parse`), and so is every struct inside one ([`objects`]).
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Object<T>, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of named fields (not an array of them)")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        d.deserialize_map(ObjectVisitor(PhantomData)).map(Object)
    }
}

/// A list of request structs, each of which must be a JSON object.
fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let items = Vec::<Object<T>>::deserialize(d)?;
    // `Object<T>` has `T`'s layout, so this reuses the allocation.
    Ok(items.into_iter().map(|Object(t)| t).collect())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody<'a> {
    /// Any JSON value, at most 64 levels deep and 1 MiB (`--payload-bytes-max`).
    #[serde(borrow)]
    #[schema(value_type = Value)]
    pub payload: &'a RawValue,
    /// What the task is, for the worker's dispatch (the queue-name alphabet).
    #[schema(default = "default", pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub kind: Option<String>,
    /// Higher is leased first.
    #[schema(default = 0)]
    pub priority: Option<i32>,
    /// Leasable no sooner than this from now (not with `run_at`).
    #[schema(minimum = 0, maximum = 31_622_400_000_u64)]
    pub delay_ms: Option<u64>,
    /// Leasable no sooner than this (not with `delay_ms`).
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    #[schema(default = 5, minimum = 1, maximum = 1000)]
    pub max_attempts: Option<u32>,
    /// How long one attempt may run; its lease lasts this plus a grace.
    #[schema(default = 30_000, minimum = 1, maximum = 86_400_000)]
    pub timeout_ms: Option<u64>,
    /// Not started after this, the task is dead.
    #[schema(format = DateTime)]
    pub deadline: Option<String>,
    /// The same key again in the queue, while the first task is retained,
    /// answers the first task (at most 256 bytes, no control characters).
    #[schema(min_length = 1, max_length = 256)]
    pub idempotency_key: Option<String>,
    /// How long the finished task stays readable (default 24 h).
    #[schema(minimum = 0, maximum = 31_622_400_000_u64)]
    pub retention_ms: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody<'a> {
    #[serde(borrow, deserialize_with = "objects")]
    #[schema(min_items = 1, max_items = 1000)]
    pub tasks: Vec<EnqueueBody<'a>>,
}

#[derive(Serialize, ToSchema)]
pub struct EnqueueResponse {
    pub id: String,
    /// `pending` or `scheduled`.
    #[schema(value_type = crate::openapi::TaskState)]
    pub state: &'static str,
}

#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Long-poll: wait up to this long for the task or group to end.
    #[param(minimum = 0, maximum = 60_000)]
    pub wait_ms: Option<u64>,
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    /// Most tasks to take.
    #[schema(default = 1, minimum = 1, maximum = 1000)]
    pub max: Option<u64>,
    /// Long-poll: wait up to this long for the first task.
    #[schema(default = 0, minimum = 0, maximum = 60_000)]
    pub wait_ms: Option<u64>,
    /// The worker's name, shown on its active tasks (at most 128 bytes).
    #[schema(min_length = 1, max_length = 128)]
    pub worker: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody<'a> {
    /// The lease the task was handed out under (32 hex digits).
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub lease_id: String,
    /// Any JSON value, kept as the task's result.
    #[serde(borrow, default)]
    #[schema(value_type = Value)]
    pub result: Option<&'a RawValue>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    /// The lease the task was handed out under (32 hex digits).
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub lease_id: String,
    /// Why (at most 64 KiB).
    pub error: Option<String>,
    /// `false`: dead at once; `true` (default): retried with backoff while
    /// attempts remain.
    #[schema(default = true)]
    pub retry: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseIdBody {
    /// The lease the task was handed out under (32 hex digits).
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub lease_id: String,
}

/// A heartbeat; with `wait_ms` it also waits (up to that long) for a cancel request,
/// so a worker learns of a cancel as soon as it is made.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// The lease the task was handed out under (32 hex digits).
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub lease_id: String,
    /// Wait up to this long for a cancel request before answering.
    #[schema(minimum = 0, maximum = 60_000)]
    pub wait_ms: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckItem<'a> {
    #[schema(pattern = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub id: String,
    /// The lease the task was handed out under (32 hex digits).
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub lease_id: String,
    #[serde(borrow, default)]
    #[schema(value_type = Value)]
    pub result: Option<&'a RawValue>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailItem {
    #[schema(pattern = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub id: String,
    /// The lease the task was handed out under (32 hex digits).
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub lease_id: String,
    pub error: Option<String>,
    #[schema(default = true)]
    pub retry: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleBody<'a> {
    #[serde(borrow, default, deserialize_with = "objects")]
    pub acks: Vec<AckItem<'a>>,
    /// At most 1000 acks and fails together.
    #[serde(default, deserialize_with = "objects")]
    pub fails: Vec<FailItem>,
}

#[derive(Serialize, ToSchema)]
pub struct SettleOutcome {
    pub id: String,
    pub ok: bool,
    /// The task's state after the ack or fail (`ok` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::openapi::TaskState>)]
    pub state: Option<&'static str>,
    /// The HTTP status this item alone would have had (not `ok` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why not (not `ok` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SettleResponse {
    pub acks: Vec<SettleOutcome>,
    pub fails: Vec<SettleOutcome>,
}

#[derive(Serialize, ToSchema)]
pub struct StateResponse {
    pub id: String,
    #[schema(value_type = crate::openapi::TaskState)]
    pub state: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct HeartbeatResponse {
    #[schema(format = DateTime)]
    pub lease_expires_at: String,
    pub cancel_requested: bool,
}

pub fn rfc3339(ms: u64) -> String {
    let mut out = Vec::with_capacity(RFC3339_BYTES);
    push_rfc3339(&mut out, ms);
    String::from_utf8(out).expect("RFC 3339 text is ASCII")
}

/// Length of `rfc3339`'s text up to year 9999: `2026-12-01T06:30:00.123Z`.
const RFC3339_BYTES: usize = 24;

/// The last millisecond of year 9999: later times have more year digits, which
/// `push_rfc3339` leaves to chrono.
const RFC3339_FAST_MS_MAX: u64 = 253_402_300_799_999;

/// Appends `ms` (Unix milliseconds) as RFC 3339 UTC with milliseconds, the text
/// chrono's `to_rfc3339_opts(SecondsFormat::Millis, true)` writes, without its
/// formatting machinery (every leased task carries a timestamp).
pub fn push_rfc3339(out: &mut Vec<u8>, ms: u64) {
    if ms > RFC3339_FAST_MS_MAX {
        let text = DateTime::<Utc>::from_timestamp_millis(ms.min(i64::MAX as u64) as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (days, sod) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`,
    // for days ≥ 0).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let digits = |out: &mut Vec<u8>, v: u64, n: u32| {
        for i in (0..n).rev() {
            out.push(b'0' + (v / 10u64.pow(i) % 10) as u8);
        }
    };
    digits(out, year, 4);
    out.push(b'-');
    digits(out, month, 2);
    out.push(b'-');
    digits(out, day, 2);
    out.push(b'T');
    digits(out, sod / 3600, 2);
    out.push(b':');
    digits(out, sod / 60 % 60, 2);
    out.push(b':');
    digits(out, sod % 60, 2);
    out.push(b'.');
    digits(out, milli, 3);
    out.push(b'Z');
}

/// Appends `s` as a JSON string (escaped by serde_json).
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing JSON into a Vec cannot fail");
}

/// Appends ASCII text that needs no escaping (ids, hex, timestamps) as a JSON string.
fn push_plain_str(out: &mut Vec<u8>, ascii: &[u8]) {
    debug_assert!(ascii
        .iter()
        .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
    out.push(b'"');
    out.extend_from_slice(ascii);
    out.push(b'"');
}

/// The body of a lease answer, `{"tasks": [LeasedJson…]}`, written by hand: the
/// same fields and text serde writes for `LeaseResponse`, but payloads go out as
/// the bytes the store holds (validated JSON when they came in, CRC-checked when
/// read back) instead of being parsed again, and ids and times skip `fmt` (a
/// profile of end-to-end load put serde's string and `fmt` work at ~6% of the
/// server).
pub fn lease_body(leased: &[Leased]) -> Vec<u8> {
    let size: usize = leased
        .iter()
        .map(|l| {
            let r = &l.record;
            let trace = r.trace.as_ref().map_or(0, |t| {
                t.traceparent.len() + t.tracestate.as_ref().map_or(0, |s| 16 + s.len())
            });
            LEASED_FIXED_BYTES + l.payload.len() + r.queue.len() + r.kind.len() + trace
        })
        .sum();
    let mut out = Vec::with_capacity(size + 16);
    out.extend_from_slice(b"{\"tasks\":[");
    for (i, l) in leased.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let r = &l.record;
        out.extend_from_slice(b"{\"id\":");
        push_plain_str(&mut out, &r.id.to_text());
        out.extend_from_slice(b",\"queue\":");
        push_json_str(&mut out, &r.queue);
        out.extend_from_slice(b",\"kind\":");
        push_json_str(&mut out, &r.kind);
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(&l.payload);
        out.extend_from_slice(b",\"attempt\":");
        out.extend_from_slice(itoa::Buffer::new().format(r.attempt).as_bytes());
        out.extend_from_slice(b",\"max_attempts\":");
        out.extend_from_slice(itoa::Buffer::new().format(r.max_attempts).as_bytes());
        out.extend_from_slice(b",\"lease_id\":");
        push_plain_str(&mut out, &l.lease_id.to_hex());
        out.extend_from_slice(b",\"lease_expires_at\":\"");
        push_rfc3339(&mut out, l.lease_expires_ms);
        out.extend_from_slice(b"\",\"timeout_ms\":");
        out.extend_from_slice(itoa::Buffer::new().format(r.timeout_ms).as_bytes());
        out.extend_from_slice(b",\"deadline\":");
        match r.deadline_ms {
            Some(ms) => {
                out.push(b'"');
                push_rfc3339(&mut out, ms);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        // Only with a trace context: a task without one costs no bytes.
        if let Some(t) = &r.trace {
            out.extend_from_slice(b",\"traceparent\":");
            push_json_str(&mut out, &t.traceparent);
            if let Some(state) = &t.tracestate {
                out.extend_from_slice(b",\"tracestate\":");
                push_json_str(&mut out, state);
            }
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// A leased task, as `lease_body` writes it (this is the schema of its items, and
/// what serde would write: the unit tests hold the two byte-equal).
#[derive(Serialize, ToSchema)]
pub struct LeasedJson {
    pub id: String,
    pub queue: String,
    pub kind: String,
    /// The payload as enqueued.
    #[schema(value_type = Value)]
    pub payload: RawJson,
    pub attempt: u32,
    pub max_attempts: u32,
    /// Give it back with the ack, fail, release or heartbeat.
    pub lease_id: String,
    #[schema(format = DateTime)]
    pub lease_expires_at: String,
    pub timeout_ms: u64,
    #[schema(format = DateTime)]
    pub deadline: Option<String>,
    /// The producer's W3C trace context (present only when it sent one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl From<Leased> for LeasedJson {
    fn from(l: Leased) -> LeasedJson {
        let (traceparent, tracestate) = trace_fields(l.record.trace);
        LeasedJson {
            id: l.record.id.to_string(),
            queue: l.record.queue,
            kind: l.record.kind,
            payload: RawJson(l.payload),
            attempt: l.record.attempt,
            max_attempts: l.record.max_attempts,
            lease_id: l.lease_id.to_string(),
            lease_expires_at: rfc3339(l.lease_expires_ms),
            timeout_ms: l.record.timeout_ms,
            deadline: l.record.deadline_ms.map(rfc3339),
            traceparent,
            tracestate,
        }
    }
}

/// A lease answer, as `lease_body` writes it: empty when nothing came within
/// `wait_ms`.
#[derive(Serialize, ToSchema)]
pub struct LeaseResponse {
    pub tasks: Vec<LeasedJson>,
}

/// A batch enqueue's answer, as `batch_body` writes it.
#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    /// The tasks' ids, in the order of the request.
    pub ids: Vec<String>,
    /// How many were new (the rest matched an idempotency key).
    pub created: usize,
}

/// A leased task's bytes besides its payload, queue and kind (keys, ids, numbers,
/// times), for sizing `lease_body`'s buffer once.
const LEASED_FIXED_BYTES: usize = 300;

/// The body of a batch enqueue's answer, `{"ids": […], "created": n}`, written by
/// hand like `lease_body` (a batch answers up to a thousand ids).
pub fn batch_body(
    ids: impl ExactSizeIterator<Item = weir_core::TaskId>,
    created: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 29 + 32);
    out.extend_from_slice(b"{\"ids\":[");
    for (i, id) in ids.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_plain_str(&mut out, &id.to_text());
    }
    out.extend_from_slice(b"],\"created\":");
    out.extend_from_slice(itoa::Buffer::new().format(created).as_bytes());
    out.push(b'}');
    out
}

/// Milliseconds since the Unix epoch; negative before 1970.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = DateTime::parse_from_rfc3339(s).ok()?;
    Some(t.timestamp_millis())
}

/// JSON text that the store holds, written into a response as is (no parse into a
/// `Value`, no copy). The store only holds text that was validated JSON when it came
/// in; serde_json still checks it on the way out, so corruption fails the response
/// instead of emitting broken JSON.
pub struct RawJson(pub Bytes);

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_slice(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

/// A task as the API shows it. A listing (`GET /v1/queues/{q}/tasks`) leaves out
/// the payload and the result (read one task for those), and what only a lease
/// knows (its expiry, its worker).
#[derive(Serialize, ToSchema)]
pub struct TaskJson {
    pub id: String,
    pub queue: String,
    pub kind: String,
    #[schema(value_type = crate::openapi::TaskState)]
    pub state: &'static str,
    pub priority: i32,
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    /// The payload as enqueued (not in a listing).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub payload: Option<RawJson>,
    /// The result a worker acked with, or `null` (not in a listing).
    #[serde(skip_serializing_if = "Listed::is_listed")]
    #[schema(value_type = Value)]
    pub result: Listed<RawJson>,
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub run_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    #[schema(format = DateTime)]
    pub deadline: Option<String>,
    pub idempotency_key: Option<String>,
    pub cancel_requested: bool,
    /// The group the task belongs to, if any.
    pub group: Option<String>,
    /// The producer's W3C trace context, if it sent one.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// When the lease of an active task runs out (not in a listing).
    #[serde(skip_serializing_if = "Listed::is_listed")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub lease_expires_at: Listed<String>,
    /// The worker holding the lease (active tasks whose worker named itself; not
    /// in a listing).
    #[serde(skip_serializing_if = "Listed::is_listed")]
    #[schema(value_type = Option<String>)]
    pub worker: Listed<String>,
}

/// A field a task view has (`null` when empty) and a listing leaves out.
pub enum Listed<T> {
    Shown(Option<T>),
    Listed,
}

impl<T> Listed<T> {
    fn is_listed(&self) -> bool {
        matches!(self, Listed::Listed)
    }
}

impl<T: Serialize> Serialize for Listed<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Listed::Shown(v) => v.serialize(s),
            Listed::Listed => s.serialize_none(),
        }
    }
}

impl TaskJson {
    /// A task as a listing shows it: without payload, result and lease.
    pub fn listed(r: TaskRecord) -> TaskJson {
        let (traceparent, tracestate) = trace_fields(r.trace);
        TaskJson {
            id: r.id.to_string(),
            queue: r.queue,
            kind: r.kind,
            state: r.state.as_str(),
            priority: r.priority,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            timeout_ms: r.timeout_ms,
            payload: None,
            result: Listed::Listed,
            last_error: r.last_error,
            created_at: rfc3339(r.created_ms),
            run_at: rfc3339(r.run_at_ms),
            started_at: r.started_ms.map(rfc3339),
            finished_at: r.finished_ms.map(rfc3339),
            deadline: r.deadline_ms.map(rfc3339),
            idempotency_key: r.idempotency_key,
            cancel_requested: r.cancel_requested,
            group: r.group.map(|g| g.to_string()),
            traceparent,
            tracestate,
            lease_expires_at: Listed::Listed,
            worker: Listed::Listed,
        }
    }
}

impl From<TaskView> for TaskJson {
    fn from(v: TaskView) -> TaskJson {
        let mut record = v.record;
        let result = record.result.take().map(|r| RawJson(Bytes::from(r)));
        let mut j = TaskJson::listed(record);
        j.payload = Some(RawJson(v.payload));
        j.result = Listed::Shown(result);
        j.lease_expires_at = Listed::Shown(v.lease_expires_ms.map(rfc3339));
        j.worker = Listed::Shown(v.worker);
        j
    }
}

/// A task's trace context as its two JSON fields.
fn trace_fields(t: Option<weir_core::TraceContext>) -> (Option<String>, Option<String>) {
    match t {
        Some(t) => (Some(t.traceparent), t.tracestate),
        None => (None, None),
    }
}

/// One page of `GET /v1/queues/{queue}/tasks`.
#[derive(Serialize, ToSchema)]
pub struct TaskPageJson {
    pub tasks: Vec<TaskJson>,
    /// Give it as `cursor` for the next page; `null` at the end.
    pub next_cursor: Option<String>,
}

/// The query of `GET /v1/queues/{queue}/tasks`.
#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaskListQuery {
    /// The state to list (default `pending`).
    #[param(value_type = Option<crate::openapi::TaskState>)]
    pub state: Option<String>,
    /// Most tasks on the page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
    /// The `next_cursor` of the page before.
    pub cursor: Option<String>,
    /// Find the task holding this key instead (with no other parameter).
    pub idempotency_key: Option<String>,
}

/// The body of a queue's dead-task retry or purge: some ids, or (absent, or an
/// empty body) every dead task.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadBody {
    /// 1 to 1000 task ids; absent: every dead task of the queue.
    #[schema(min_items = 1, max_items = 1000, inline, value_type = Option<Vec<TaskIdText>>)]
    pub ids: Option<Vec<String>>,
}

/// A task id: a ULID (26 characters of Crockford base 32).
#[derive(ToSchema)]
#[schema(pattern = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
pub struct TaskIdText(#[allow(dead_code)] String);

/// What a queue's dead-task retry or purge did: how many tasks it changed, and
/// how many of the ids given were not dead tasks of the queue.
#[derive(Serialize, ToSchema)]
pub struct DeadResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
    pub skipped: u64,
}

#[derive(Serialize, ToSchema)]
pub struct CountsJson {
    pub scheduled: u64,
    pub pending: u64,
    pub active: u64,
    pub completed: u64,
    pub dead: u64,
    pub canceled: u64,
}

impl From<Counts> for CountsJson {
    fn from(c: Counts) -> CountsJson {
        let [scheduled, pending, active, completed, dead, canceled] = c.0;
        CountsJson {
            scheduled,
            pending,
            active,
            completed,
            dead,
            canceled,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct QueueJson {
    pub name: String,
    pub counts: CountsJson,
    pub config: QueueConfigJson,
    /// What its tasks did, counted by the store; a client derives rates from the
    /// difference between two reads (the dashboard does).
    pub totals: TotalsJson,
    /// How long the next task to lease has been ready; `null` with nothing pending.
    pub oldest_pending_age_ms: Option<u64>,
}

impl From<QueueInfo> for QueueJson {
    fn from(q: QueueInfo) -> QueueJson {
        QueueJson {
            name: q.name,
            counts: q.counts.into(),
            config: q.config.into(),
            totals: q.totals.into(),
            oldest_pending_age_ms: q.oldest_pending_age_ms,
        }
    }
}

/// A queue's monotonic transition counters (`weir_store::Totals`): on Redis
/// store-wide and durable, on the embedded store since the server started; they
/// start again from zero when the queue is deleted, so a client taking rates
/// must treat a decrease as a reset.
#[derive(Serialize, ToSchema)]
pub struct TotalsJson {
    pub enqueued: u64,
    pub leased: u64,
    pub completed: u64,
    pub dead: u64,
    pub canceled: u64,
    pub retried: u64,
    pub lease_expired: u64,
}

impl From<Totals> for TotalsJson {
    fn from(t: Totals) -> TotalsJson {
        TotalsJson {
            enqueued: t.enqueued,
            leased: t.leased,
            completed: t.completed,
            dead: t.dead,
            canceled: t.canceled,
            retried: t.retried,
            lease_expired: t.lease_expired,
        }
    }
}

/// A queue's flow-control settings as the API shows them (`null`: no limit).
#[derive(Serialize, ToSchema)]
pub struct QueueConfigJson {
    pub rate_per_sec: Option<f64>,
    /// As set (`null`: one second of the rate).
    pub burst: Option<u64>,
    pub max_in_flight: Option<u64>,
    pub max_pending: Option<u64>,
    pub paused: bool,
}

impl From<QueueConfig> for QueueConfigJson {
    fn from(c: QueueConfig) -> QueueConfigJson {
        QueueConfigJson {
            rate_per_sec: c.rate_per_sec,
            burst: c.burst,
            max_in_flight: c.max_in_flight,
            max_pending: c.max_pending,
            paused: c.paused,
        }
    }
}

/// `PUT /v1/queues/{queue}/config`: each field absent keeps the setting, `null`
/// clears it (`paused: null` is `false`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueConfigBody {
    /// Tasks leased per second at most, over every worker and server.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<f64>, minimum = 0.00001, maximum = 1_000_000)]
    pub rate_per_sec: Option<Option<f64>>,
    /// Tasks that may be leased at once after a quiet spell (needs a rate).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 1_000_000)]
    pub burst: Option<Option<u64>>,
    /// Most tasks of the queue active at once.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 100_000_000)]
    pub max_in_flight: Option<Option<u64>>,
    /// Most tasks scheduled and pending; beyond it an enqueue answers 429.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 100_000_000)]
    pub max_pending: Option<Option<u64>>,
    /// A paused queue leases nothing (`null` is `false`).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<bool>)]
    pub paused: Option<Option<bool>>,
}

impl From<QueueConfigBody> for ConfigPatch {
    fn from(b: QueueConfigBody) -> ConfigPatch {
        ConfigPatch {
            rate_per_sec: b.rate_per_sec,
            burst: b.burst,
            max_in_flight: b.max_in_flight,
            max_pending: b.max_pending,
            paused: b.paused.map(|p| p.unwrap_or(false)),
        }
    }
}

/// A field that is present (`Some`), its value possibly `null` (`Some(None)`);
/// with `#[serde(default)]` an absent one is `None`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Serialize, ToSchema)]
pub struct QueuesResponse {
    pub queues: Vec<QueueJson>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupBody<'a> {
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub queue: String,
    /// The members (without idempotency keys).
    #[serde(borrow, deserialize_with = "objects")]
    #[schema(min_items = 1, max_items = 1000)]
    pub tasks: Vec<EnqueueBody<'a>>,
    /// The first member to end dead fails the group and cancels the rest.
    #[serde(default)]
    pub fail_fast: bool,
}

#[derive(Serialize, ToSchema)]
pub struct GroupCreatedResponse {
    pub id: String,
    pub task_ids: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct GroupTaskJson {
    pub id: String,
    #[schema(value_type = crate::openapi::TaskState)]
    pub state: &'static str,
    pub attempt: u32,
    #[schema(value_type = Value)]
    pub result: Option<RawJson>,
    pub last_error: Option<String>,
    pub cancel_requested: bool,
}

#[derive(Serialize, ToSchema)]
pub struct GroupJson {
    pub id: String,
    pub queue: String,
    #[schema(value_type = crate::openapi::GroupState)]
    pub state: &'static str,
    pub fail_fast: bool,
    pub counts: CountsJson,
    pub total: usize,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    pub tasks: Vec<GroupTaskJson>,
}

impl From<GroupView> for GroupJson {
    fn from(g: GroupView) -> GroupJson {
        let mut counts = Counts::default();
        for t in &g.tasks {
            counts.0[t.state.index()] += 1;
        }
        GroupJson {
            id: g.id.to_string(),
            queue: g.queue,
            state: g.state.as_str(),
            fail_fast: g.fail_fast,
            counts: counts.into(),
            total: g.tasks.len(),
            created_at: rfc3339(g.created_ms),
            finished_at: g.finished_ms.map(rfc3339),
            tasks: g
                .tasks
                .into_iter()
                .map(|t| GroupTaskJson {
                    id: t.id.to_string(),
                    state: t.state.as_str(),
                    attempt: t.attempt,
                    result: t.result.map(|r| RawJson(Bytes::from(r))),
                    last_error: t.last_error,
                    cancel_requested: t.cancel_requested,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use weir_core::{machine, NewTask, TaskId};
    use weir_store::{LeaseId, Leased};

    use super::*;

    fn leased(n: u64, deadline: Option<u64>, payload: &str) -> Leased {
        let task = NewTask {
            kind: format!("mail.send-{n}"),
            priority: 0,
            run_at_ms: None,
            delay_ms: 0,
            max_attempts: 3 + n as u32,
            timeout_ms: 30_000 * n,
            deadline_ms: deadline,
            idempotency_key: None,
            retention_ms: 0,
            trace: weir_core::TraceContext::from_headers(
                n.is_multiple_of(2)
                    .then_some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                (n == 4).then_some("congo=t61rcWkgMzE,x=\"q\""),
            ),
        };
        let id = TaskId::new(1_764_570_000_000 + n, u128::from(n) * 0x9E37_79B9_7F4A_7C15);
        let mut record = machine::create(id, &format!("q:{n}"), task, 1_764_570_000_000);
        record.attempt = n as u32;
        Leased {
            record,
            payload: Bytes::from(payload.to_owned()),
            lease_id: LeaseId(u128::MAX / (n as u128 + 1)),
            lease_expires_ms: 1_764_570_030_123 + n * 86_400_017,
        }
    }

    #[test]
    fn lease_body_is_what_serde_writes() {
        for tasks in [
            vec![],
            vec![leased(1, None, r#"{"a":[1,2,{"b":"\u00e9\"x"}]}"#)],
            vec![
                leased(2, Some(4_102_444_800_000), "7"),
                leased(3, None, r#""text""#),
                leased(4, Some(RFC3339_FAST_MS_MAX + 1), "null"),
            ],
        ] {
            let by_hand = lease_body(&tasks);
            let tasks = tasks.into_iter().map(LeasedJson::from).collect();
            let by_serde = serde_json::to_vec(&LeaseResponse { tasks }).unwrap();
            assert_eq!(
                String::from_utf8(by_hand).unwrap(),
                String::from_utf8(by_serde).unwrap()
            );
        }
    }

    #[test]
    fn batch_body_is_what_serde_writes() {
        for n in [0u64, 1, 3] {
            let ids: Vec<TaskId> = (0..n)
                .map(|i| TaskId::new(1_764_570_000_000 + i, u128::from(i + 1) << 70))
                .collect();
            let by_hand = batch_body(ids.iter().copied(), n as usize / 2);
            let ids = ids.iter().map(|id| id.to_string()).collect();
            let by_serde = serde_json::to_vec(&BatchResponse {
                ids,
                created: n as usize / 2,
            })
            .unwrap();
            assert_eq!(by_hand, by_serde);
        }
    }

    #[test]
    fn rfc3339_writes_what_chrono_writes() {
        let chrono = |ms: u64| {
            DateTime::<Utc>::from_timestamp_millis(ms.min(i64::MAX as u64) as i64)
                .unwrap_or_default()
                .to_rfc3339_opts(SecondsFormat::Millis, true)
        };
        // Edges (epoch, leap days, century rules, the fast path's end and beyond),
        // then a spread of times across the whole fast range.
        let mut cases = vec![
            0,
            999,
            86_399_999,
            951_782_400_000,   // 2000-02-29
            4_107_456_000_000, // 2100-02-28
            4_107_542_399_999, // 2100-02-28T23:59:59.999
            4_107_542_400_000, // 2100-03-01
            RFC3339_FAST_MS_MAX,
            RFC3339_FAST_MS_MAX + 1,
            i64::MAX as u64,
            u64::MAX,
        ];
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(x % (RFC3339_FAST_MS_MAX + 1));
        }
        for ms in cases {
            assert_eq!(rfc3339(ms), chrono(ms), "at {ms} ms");
        }
    }
}
