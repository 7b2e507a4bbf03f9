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
use weir_store::{Counts, GroupView, Leased, TaskView};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody<'a> {
    #[serde(borrow)]
    pub payload: &'a RawValue,
    pub kind: Option<String>,
    pub priority: Option<i32>,
    pub delay_ms: Option<u64>,
    pub run_at: Option<String>,
    pub max_attempts: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub deadline: Option<String>,
    pub idempotency_key: Option<String>,
    /// How long the finished task stays readable (default 24 h).
    pub retention_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody<'a> {
    #[serde(borrow, deserialize_with = "objects")]
    pub tasks: Vec<EnqueueBody<'a>>,
}

#[derive(Serialize)]
pub struct EnqueueResponse {
    pub id: String,
    pub state: &'static str,
}

#[derive(Serialize)]
pub struct BatchResponse {
    pub ids: Vec<String>,
    /// How many were new (the rest matched an idempotency key).
    pub created: usize,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    pub wait_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    pub max: Option<u64>,
    pub wait_ms: Option<u64>,
    pub worker: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody<'a> {
    pub lease_id: String,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    pub lease_id: String,
    pub error: Option<String>,
    pub retry: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseIdBody {
    pub lease_id: String,
}

/// A heartbeat; with `wait_ms` it also waits (up to that long) for a cancel request,
/// so a worker learns of a cancel as soon as it is made.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    pub lease_id: String,
    pub wait_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckItem<'a> {
    pub id: String,
    pub lease_id: String,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailItem {
    pub id: String,
    pub lease_id: String,
    pub error: Option<String>,
    pub retry: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleBody<'a> {
    #[serde(borrow, default, deserialize_with = "objects")]
    pub acks: Vec<AckItem<'a>>,
    #[serde(default, deserialize_with = "objects")]
    pub fails: Vec<FailItem>,
}

#[derive(Serialize)]
pub struct SettleOutcome {
    pub id: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct SettleResponse {
    pub acks: Vec<SettleOutcome>,
    pub fails: Vec<SettleOutcome>,
}

#[derive(Serialize)]
pub struct StateResponse {
    pub id: String,
    pub state: &'static str,
}

#[derive(Serialize)]
pub struct HeartbeatResponse {
    pub lease_expires_at: String,
    pub cancel_requested: bool,
}

pub fn rfc3339(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms.min(i64::MAX as u64) as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
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

#[derive(Serialize)]
pub struct TaskJson {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub state: &'static str,
    pub priority: i32,
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub payload: RawJson,
    pub result: Option<RawJson>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub run_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub deadline: Option<String>,
    pub idempotency_key: Option<String>,
    pub cancel_requested: bool,
    pub lease_expires_at: Option<String>,
    /// The worker holding the lease (active tasks whose worker named itself).
    pub worker: Option<String>,
}

impl From<TaskView> for TaskJson {
    fn from(v: TaskView) -> TaskJson {
        let r = v.record;
        TaskJson {
            id: r.id.to_string(),
            queue: r.queue,
            kind: r.kind,
            state: r.state.as_str(),
            priority: r.priority,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            timeout_ms: r.timeout_ms,
            payload: RawJson(v.payload),
            result: r.result.map(|r| RawJson(Bytes::from(r))),
            last_error: r.last_error,
            created_at: rfc3339(r.created_ms),
            run_at: rfc3339(r.run_at_ms),
            started_at: r.started_ms.map(rfc3339),
            finished_at: r.finished_ms.map(rfc3339),
            deadline: r.deadline_ms.map(rfc3339),
            idempotency_key: r.idempotency_key,
            cancel_requested: r.cancel_requested,
            lease_expires_at: v.lease_expires_ms.map(rfc3339),
            worker: v.worker,
        }
    }
}

#[derive(Serialize)]
pub struct LeasedJson {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub payload: RawJson,
    pub attempt: u32,
    pub max_attempts: u32,
    pub lease_id: String,
    pub lease_expires_at: String,
    pub timeout_ms: u64,
    pub deadline: Option<String>,
}

impl From<Leased> for LeasedJson {
    fn from(l: Leased) -> LeasedJson {
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
        }
    }
}

#[derive(Serialize)]
pub struct LeaseResponse {
    pub tasks: Vec<LeasedJson>,
}

#[derive(Serialize)]
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

#[derive(Serialize)]
pub struct QueueJson {
    pub name: String,
    pub counts: CountsJson,
}

#[derive(Serialize)]
pub struct QueuesResponse {
    pub queues: Vec<QueueJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupBody<'a> {
    pub queue: String,
    #[serde(borrow, deserialize_with = "objects")]
    pub tasks: Vec<EnqueueBody<'a>>,
    #[serde(default)]
    pub fail_fast: bool,
}

#[derive(Serialize)]
pub struct GroupCreatedResponse {
    pub id: String,
    pub task_ids: Vec<String>,
}

#[derive(Serialize)]
pub struct GroupTaskJson {
    pub id: String,
    pub state: &'static str,
    pub attempt: u32,
    pub result: Option<RawJson>,
    pub last_error: Option<String>,
    pub cancel_requested: bool,
}

#[derive(Serialize)]
pub struct GroupJson {
    pub id: String,
    pub queue: String,
    pub state: &'static str,
    pub fail_fast: bool,
    pub counts: CountsJson,
    pub total: usize,
    pub created_at: String,
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
