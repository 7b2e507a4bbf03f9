//! Wire types of weir's HTTP API v1 (SPEC §5) as this client sends and reads them.
//! Requests omit absent fields (the server rejects unknown ones and a `null` is not
//! "absent"); responses are read leniently: unknown fields are ignored and
//! optional ones may be missing.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// A task's state. `Unknown` stands for a state name this client does not know (a
/// newer server), so reading a task never fails on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Scheduled,
    Pending,
    Active,
    Completed,
    Dead,
    Canceled,
    #[default]
    #[serde(other)]
    Unknown,
}

impl TaskState {
    /// Every state this client knows (all but `Unknown`).
    pub const KNOWN: [TaskState; 6] = [
        TaskState::Scheduled,
        TaskState::Pending,
        TaskState::Active,
        TaskState::Completed,
        TaskState::Dead,
        TaskState::Canceled,
    ];

    /// `completed`, `dead` and `canceled` never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Dead | TaskState::Canceled
        )
    }

    /// The state's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduled => "scheduled",
            TaskState::Pending => "pending",
            TaskState::Active => "active",
            TaskState::Completed => "completed",
            TaskState::Dead => "dead",
            TaskState::Canceled => "canceled",
            TaskState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One task to enqueue. Only `payload` is required; build the rest with the
/// chained setters: `EnqueueOptions::new(json!({"to": "a@b"})).kind("email.send")`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EnqueueOptions {
    /// Any JSON; handed to the worker as is.
    pub payload: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Run no sooner than this many ms from now (exclusive with `run_at`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Run no sooner than this RFC 3339 time (exclusive with `delay_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// RFC 3339 time after which the task is not started any more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// W3C trace context sent as the `traceparent` header (and `tracestate`):
    /// every worker that leases the task gets it, to continue the trace.
    #[serde(skip)]
    pub traceparent: Option<String>,
    #[serde(skip)]
    pub tracestate: Option<String>,
}

impl EnqueueOptions {
    pub fn new(payload: Value) -> EnqueueOptions {
        EnqueueOptions {
            payload,
            ..EnqueueOptions::default()
        }
    }

    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    pub fn delay_ms(mut self, delay_ms: u64) -> Self {
        self.delay_ms = Some(delay_ms);
        self
    }

    pub fn run_at(mut self, run_at: impl Into<String>) -> Self {
        self.run_at = Some(run_at.into());
        self
    }

    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    pub fn timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }

    pub fn deadline(mut self, deadline: impl Into<String>) -> Self {
        self.deadline = Some(deadline.into());
        self
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// The answer to an enqueue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    pub id: String,
    pub state: TaskState,
    /// False when the idempotency key matched a task that already existed (HTTP 200
    /// instead of 201): `id` and `state` are that task's.
    #[serde(default = "yes")]
    pub created: bool,
}

fn yes() -> bool {
    true
}

/// A task as `GET /v1/tasks/{id}` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Task {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub state: TaskState,
    pub priority: i32,
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub payload: Value,
    pub result: Option<Value>,
    pub last_error: Option<String>,
    /// RFC 3339 times.
    pub created_at: Option<String>,
    pub run_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub deadline: Option<String>,
    pub idempotency_key: Option<String>,
    pub cancel_requested: bool,
    /// The group the task belongs to, if any.
    pub group: Option<String>,
    /// The producer's W3C trace context, if it sent one.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub lease_expires_at: Option<String>,
    /// The worker holding the lease, while the task is active.
    pub worker: Option<String>,
    /// Response fields this client does not know, kept so `--json` output shows
    /// everything the server said.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// One page of `GET /v1/queues/{queue}/tasks`: tasks without payload or result
/// (read one with `Client::get` for those).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    /// Pass to the next `list_tasks` call; `None` at the end.
    pub next_cursor: Option<String>,
}

/// What a queue's dead-task retry or purge did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeadOutcome {
    /// Tasks put back to pending (a retry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried: Option<u64>,
    /// Tasks removed (a purge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
    /// Ids given that were not dead tasks of the queue.
    pub skipped: u64,
}

/// A task handed to a worker by a lease.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeasedTask {
    pub id: String,
    /// The queue it was leased from (an extra field: absent from older servers).
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    /// 1-based number of this attempt.
    pub attempt: u32,
    pub max_attempts: u32,
    /// Proof of the lease, required by ack, fail, release and heartbeat.
    pub lease_id: String,
    pub lease_expires_at: String,
    pub timeout_ms: u64,
    /// RFC 3339 time after which the task is not started any more.
    pub deadline: Option<String>,
    /// The producer's W3C trace context, if it sent one: continue its trace.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct LeaseRequest<'a> {
    pub max: u32,
    pub wait_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<&'a str>,
}

/// A leased task this client could not read into a [`LeasedTask`]: say its payload
/// nests deeper than serde_json's 128 levels or holds a lone surrogate escape (from
/// a server without those checks, or stored before it had them), or a field has a
/// type this client does not expect. Its lease is real: fail it without retry (it
/// will not decode next time either), or it comes back when the lease runs out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UndecodableTask {
    pub id: String,
    /// Proof of the lease, for the fail.
    pub lease_id: String,
    /// Why the task could not be decoded (serde_json's message).
    pub error: String,
    /// The task's JSON text as the server sent it.
    pub raw: String,
}

/// What one lease request handed out: the tasks this client could decode, and
/// apart from them those it could not, so one bad task never costs its batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeaseBatch {
    pub tasks: Vec<LeasedTask>,
    pub undecodable: Vec<UndecodableTask>,
}

impl LeaseBatch {
    /// How many tasks were leased, decodable or not.
    pub fn len(&self) -> usize {
        self.tasks.len() + self.undecodable.len()
    }

    /// Nothing was leased.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Deserialize)]
struct LeaseResponse {
    tasks: Vec<LeasedTask>,
}

/// The lease answer, each task kept as its text.
#[derive(Deserialize)]
struct RawLeaseResponse<'a> {
    #[serde(borrow)]
    tasks: Vec<&'a RawValue>,
}

/// All a worker needs to fail a task. Reading it skips every other field without
/// decoding it (serde_json skips values without a depth limit and without pairing
/// surrogates), so a poison payload cannot stop it.
#[derive(Deserialize)]
struct LeaseIds {
    id: String,
    lease_id: String,
}

/// Reads a lease answer task by task. The whole answer is decoded at once first,
/// the fast path; only when that fails is each task decoded on its own, so the
/// undecodable ones are set apart. A task whose `id` and `lease_id` cannot be read
/// either could not be failed or released anyway: that is an error for the whole
/// answer (a server that does not speak this API).
pub(crate) fn decode_lease(body: &[u8]) -> Result<LeaseBatch, serde_json::Error> {
    if let Ok(resp) = serde_json::from_slice::<LeaseResponse>(body) {
        return Ok(LeaseBatch {
            tasks: resp.tasks,
            undecodable: Vec::new(),
        });
    }
    let raw: RawLeaseResponse = serde_json::from_slice(body)?;
    let mut batch = LeaseBatch::default();
    for task in raw.tasks {
        match serde_json::from_str::<LeasedTask>(task.get()) {
            Ok(t) => batch.tasks.push(t),
            Err(e) => {
                let ids: LeaseIds = serde_json::from_str(task.get())?;
                batch.undecodable.push(UndecodableTask {
                    id: ids.id,
                    lease_id: ids.lease_id,
                    error: e.to_string(),
                    raw: task.get().to_owned(),
                });
            }
        }
    }
    Ok(batch)
}

#[derive(Serialize)]
pub(crate) struct BatchRequest<'a> {
    pub tasks: &'a [EnqueueOptions],
}

#[derive(Deserialize)]
pub(crate) struct BatchResponse {
    pub ids: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct AckRequest<'a> {
    pub lease_id: &'a str,
    pub result: &'a Value,
}

#[derive(Serialize)]
pub(crate) struct FailRequest<'a> {
    pub lease_id: &'a str,
    pub error: &'a str,
    pub retry: bool,
}

#[derive(Serialize)]
pub(crate) struct LeaseOnly<'a> {
    pub lease_id: &'a str,
}

#[derive(Serialize)]
pub(crate) struct HeartbeatWait<'a> {
    pub lease_id: &'a str,
    pub wait_ms: u64,
}

#[derive(Deserialize)]
pub(crate) struct StateResponse {
    pub state: TaskState,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Heartbeat {
    /// RFC 3339 time the extended lease ends.
    pub lease_expires_at: String,
    /// The task was canceled while running: the worker should stop and fail it.
    pub cancel_requested: bool,
}

/// One ack in a `POST /v1/acks` batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AckItem {
    pub id: String,
    pub lease_id: String,
    pub result: Value,
}

/// One fail in a `POST /v1/acks` batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailItem {
    pub id: String,
    pub lease_id: String,
    pub error: String,
    pub retry: bool,
}

#[derive(Serialize)]
pub(crate) struct SettleRequest<'a> {
    pub acks: &'a [AckItem],
    pub fails: &'a [FailItem],
}

/// The per-item outcome of a `POST /v1/acks` batch, in request order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SettleResponse {
    pub acks: Vec<SettleOutcome>,
    pub fails: Vec<SettleOutcome>,
}

/// What happened to one item of a settle batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SettleOutcome {
    pub id: String,
    pub ok: bool,
    /// The task's state after the item, when `ok`.
    pub state: Option<TaskState>,
    /// The HTTP status the item would have had alone, when not `ok` (409 for a
    /// stale lease, 404 for an unknown task).
    pub status: Option<u16>,
    /// Why the item was refused, when not `ok`.
    pub error: Option<String>,
}

/// Task counts of one queue, by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    pub scheduled: u64,
    pub pending: u64,
    pub active: u64,
    pub completed: u64,
    pub dead: u64,
    pub canceled: u64,
}

/// A queue as `GET /v1/queues` lists it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueInfo {
    pub name: String,
    pub counts: Counts,
    /// The queue's flow-control settings (absent from servers that predate them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<QueueConfig>,
}

/// A queue's flow-control settings (`None`: no limit).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    /// Most tasks leased per second, over every worker and server.
    pub rate_per_sec: Option<f64>,
    /// Most leased at once after an idle spell (`None`: one second of the rate).
    pub burst: Option<u64>,
    /// Most tasks active at once.
    pub max_in_flight: Option<u64>,
    /// Most tasks scheduled + pending; enqueues beyond it get 429.
    pub max_pending: Option<u64>,
    /// A paused queue takes enqueues and leases nothing.
    pub paused: bool,
}

/// A periodic-task schedule to create or replace (`Client::put_schedule`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScheduleSpec {
    /// Five fields (minute hour day month weekday), or six with seconds first.
    pub cron: String,
    /// IANA time zone the expression is read in [UTC].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    pub queue: String,
    /// The task each tick enqueues (without an idempotency key, `run_at` or
    /// `deadline`).
    pub task: EnqueueOptions,
    /// `skip` (the default) or `run_once`: what ticks missed while no server ran
    /// turn into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed: Option<String>,
}

/// A schedule as the server shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    pub cron: String,
    pub tz: String,
    pub queue: String,
    pub task: Value,
    pub missed: String,
    pub next_run_at: Option<String>,
    pub last_run_at: Option<String>,
    pub last_task_id: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct SchedulesResponse {
    pub schedules: Vec<Schedule>,
}

/// What a new API key is for (`Client::create_key`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KeySpec {
    pub name: String,
    /// `producer`, `worker`, `reader`, `admin`: one or more.
    pub roles: Vec<String>,
    /// Queue patterns (`*` is any run of characters); `None`: every queue.
    pub queues: Option<Vec<String>>,
    /// RFC 3339; `None`: never expires.
    pub expires_at: Option<String>,
}

/// An API key as the server lists it (never its secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    pub queues: Option<Vec<String>>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

/// A key just made: its text (`weir_<id>_<secret>`, shown this once) and its view.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedKey {
    pub key: String,
    #[serde(flatten)]
    pub view: ApiKey,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("key", &"<redacted>")
            .field("view", &self.view)
            .finish()
    }
}

#[derive(Deserialize)]
pub(crate) struct KeysResponse {
    pub keys: Vec<ApiKey>,
}

/// A change to a queue's settings for `Client::configure_queue`: `None` leaves a
/// setting as it is, `Some(None)` clears it, `Some(Some(v))` sets it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QueueConfigPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

#[derive(Deserialize)]
pub(crate) struct QueuesResponse {
    pub queues: Vec<QueueInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn enqueue_omits_absent_fields() {
        let o = EnqueueOptions::new(json!({"n": 1}));
        assert_eq!(
            serde_json::to_value(&o).unwrap(),
            json!({"payload": {"n": 1}})
        );
        let o = EnqueueOptions::new(json!(null))
            .kind("k")
            .priority(-1)
            .delay_ms(5)
            .max_attempts(3)
            .timeout_ms(100)
            .deadline("2030-01-01T00:00:00Z")
            .idempotency_key("i");
        assert_eq!(
            serde_json::to_value(&o).unwrap(),
            json!({"payload": null, "kind": "k", "priority": -1, "delay_ms": 5,
                   "max_attempts": 3, "timeout_ms": 100,
                   "deadline": "2030-01-01T00:00:00Z", "idempotency_key": "i"})
        );
    }

    #[test]
    fn task_reads_leniently() {
        let t: Task = serde_json::from_value(json!({
            "id": "01H", "queue": "q", "state": "completed", "payload": {"a": 1},
            "result": null, "attempt": 1, "new_field": true, "state_future": "x"
        }))
        .unwrap();
        assert_eq!(t.id, "01H");
        assert_eq!(t.state, TaskState::Completed);
        assert_eq!(t.result, None);
        assert_eq!(t.max_attempts, 0);
        assert_eq!(t.extra.get("new_field"), Some(&json!(true)));
        let t: Task = serde_json::from_value(json!({"id": "x", "state": "paused"})).unwrap();
        assert_eq!(t.state, TaskState::Unknown);
    }

    /// A lease answer's task, its payload as raw JSON text.
    fn leased(id: &str, payload: &str) -> String {
        format!(
            r#"{{"id":"{id}","queue":"q","kind":"k","payload":{payload},"attempt":1,"max_attempts":5,"lease_id":"l-{id}","lease_expires_at":"2030-01-01T00:00:00.000Z","timeout_ms":1000,"deadline":null}}"#
        )
    }

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn a_lease_decodes_whole_when_it_can() {
        let body = format!(
            r#"{{"tasks":[{},{}]}}"#,
            leased("a", "1"),
            leased("b", r#"{"ok":1}"#)
        );
        let batch = decode_lease(body.as_bytes()).unwrap();
        assert_eq!(batch.len(), 2);
        assert!(batch.undecodable.is_empty());
        assert_eq!(batch.tasks[1].payload, json!({"ok": 1}));
        assert_eq!(batch.tasks[1].lease_id, "l-b");
        assert!(decode_lease(br#"{"tasks":[]}"#).unwrap().is_empty());
    }

    /// Issue 6: one task no typed decode takes must not cost its batch-mates.
    #[test]
    fn a_lease_sets_undecodable_tasks_apart() {
        let bad = [
            ("deep", nested(200)),
            ("deeper", nested(100_000)),
            ("lone", r#""\ud800""#.to_owned()),
            ("lone-low", r#"{"k":"\udc00"}"#.to_owned()),
        ];
        let mut tasks = vec![leased("ok1", r#"{"ok":1}"#)];
        tasks.extend(bad.iter().map(|(id, p)| leased(id, p)));
        tasks.push(leased("ok2", "[1,2]"));
        // A field of the wrong type is undecodable too.
        tasks.push(leased("typed", "1").replace(r#""attempt":1"#, r#""attempt":"one""#));
        let body = format!(r#"{{"tasks":[{}]}}"#, tasks.join(","));
        let batch = decode_lease(body.as_bytes()).unwrap();

        let ok: Vec<&str> = batch.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ok, ["ok1", "ok2"]);
        assert_eq!(batch.tasks[1].payload, json!([1, 2]));
        let ids: Vec<&str> = batch.undecodable.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["deep", "deeper", "lone", "lone-low", "typed"]);
        for u in &batch.undecodable {
            assert_eq!(u.lease_id, format!("l-{}", u.id));
            assert!(!u.error.is_empty());
            assert!(
                u.raw.starts_with(&format!(r#"{{"id":"{}""#, u.id)),
                "{}",
                u.id
            );
        }
        assert!(
            batch.undecodable[0].error.contains("recursion limit"),
            "{:?}",
            batch.undecodable[0]
        );
        assert!(
            batch.undecodable[2].error.contains("hex escape"),
            "{:?}",
            batch.undecodable[2]
        );
        assert_eq!(batch.undecodable[2].raw, tasks[3]);
        assert_eq!(batch.len(), 7);
    }

    #[test]
    fn a_lease_without_ids_is_an_error() {
        // An undecodable task without a lease id can be neither failed nor released.
        let task = leased("x", &nested(200)).replace(r#""lease_id":"l-x","#, "");
        assert!(decode_lease(format!(r#"{{"tasks":[{task}]}}"#).as_bytes()).is_err());
        assert!(decode_lease(b"not json").is_err());
        assert!(decode_lease(br#"{"tasks":{}}"#).is_err());
    }

    #[test]
    fn settle_response_reads() {
        let r: SettleResponse = serde_json::from_value(json!({
            "acks": [{"id": "a", "ok": true, "state": "completed"},
                     {"id": "b", "ok": false, "error": "stale lease"}]
        }))
        .unwrap();
        assert_eq!(r.acks.len(), 2);
        assert_eq!(r.acks[0].state, Some(TaskState::Completed));
        assert_eq!(r.acks[1].error.as_deref(), Some("stale lease"));
        assert!(r.fails.is_empty());
    }
}

/// A group's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupState {
    Running,
    Completed,
    Failed,
    Canceled,
    #[default]
    #[serde(other)]
    Unknown,
}

impl GroupState {
    /// Everything but `running` is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            GroupState::Completed | GroupState::Failed | GroupState::Canceled
        )
    }
}

impl std::fmt::Display for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            GroupState::Running => "running",
            GroupState::Completed => "completed",
            GroupState::Failed => "failed",
            GroupState::Canceled => "canceled",
            GroupState::Unknown => "unknown",
        };
        f.write_str(s)
    }
}

/// One member as `GET /v1/groups/{id}` lists it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupTask {
    pub id: String,
    pub state: TaskState,
    pub attempt: u32,
    pub result: Option<Value>,
    pub last_error: Option<String>,
    pub cancel_requested: bool,
}

/// `GET /v1/groups/{id}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Group {
    pub id: String,
    pub queue: String,
    pub state: GroupState,
    pub fail_fast: bool,
    pub counts: Counts,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub tasks: Vec<GroupTask>,
}

/// `POST /v1/groups` answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupCreated {
    pub id: String,
    pub task_ids: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct GroupRequest<'a> {
    pub queue: &'a str,
    pub tasks: &'a [EnqueueOptions],
    pub fail_fast: bool,
}
