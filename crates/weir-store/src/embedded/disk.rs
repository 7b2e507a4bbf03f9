//! The embedded store's on-disk encoding: the kinds of frames it appends to its
//! task log (`weir_log`) and their byte layouts (documented in
//! docs/design/embedded-store.md). Records are postcard with a leading
//! format-version byte, so a future layout can be told apart.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use weir_core::{QueueConfig, TaskId, TaskRecord, TaskState};

use crate::{Schedule, StoredKey};

/// Version byte in front of every encoded value.
const FORMAT_V1: u8 = 1;

/// A new task: its summary and record in the meta, the payload as the frame's
/// payload. Also written when a live task is copied forward by the log's GC.
pub const KIND_TASK: u8 = 1;
/// A task's changed record (summary and record, no payload): a state change, a
/// counted attempt, a cancel request.
pub const KIND_UPDATE: u8 = 2;
/// A group's record: group id (16, BE) then the postcard `GroupRecord`.
pub const KIND_GROUP: u8 = 3;
/// Tasks retention (or an operator's delete) removed: per task, its id (16, BE)
/// and the `expires_at_ms` it was removed at (8, LE; `u64::MAX` for a dead task).
pub const KIND_PURGE: u8 = 4;
/// Groups retention removed: their ids (16 each, BE).
pub const KIND_GROUP_PURGE: u8 = 5;
/// A queue's flow-control config: the postcard `QueueFrame` (its name and every
/// setting). The latest frame of a name wins; one with no setting (written when
/// the queue is deleted or its settings cleared) ends the config.
pub const KIND_QUEUE: u8 = 6;
/// A periodic-task schedule: the postcard `ScheduleFrame`. The latest frame of a
/// name wins; one without a definition ends the schedule.
pub const KIND_SCHEDULE: u8 = 7;
/// Finished tasks an operator retried, as a `KIND_PURGE` frame lists them: they
/// leave their finished state (and its retention) but stay; the update frame after
/// makes each pending.
pub const KIND_REOPEN: u8 = 8;
/// An API key: the postcard `KeyFrame` (its id, the server's record, its last
/// use). The latest frame of an id wins; one without a record revokes the key.
pub const KIND_KEY: u8 = 9;

/// Bytes of one entry of a `KIND_PURGE` frame.
pub const PURGE_ENTRY_BYTES: usize = 24;

/// Bytes of a task frame's fixed summary, before the queue name and key.
const SUMMARY_BYTES: usize = 42;

/// What recovery needs of a task frame, read without decoding the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary<'a> {
    pub id: u128,
    pub state: TaskState,
    pub cancel_requested: bool,
    pub priority: i32,
    pub run_at_ms: u64,
    /// When retention removes the task (`u64::MAX`: never, or not terminal).
    pub expires_at_ms: u64,
    pub queue: &'a str,
    pub idempotency_key: Option<&'a str>,
    /// Where the postcard record starts in the meta.
    record_at: usize,
}

/// The meta of a task frame:
///
/// | bytes | field |
/// |---|---|
/// | 0..16 | id, u128 big-endian |
/// | 16 | state index |
/// | 17 | cancel requested (0/1) |
/// | 18..22 | priority, i32 LE |
/// | 22..30 | run_at_ms, u64 LE |
/// | 30..38 | expires_at_ms, u64 LE (`u64::MAX`: none) |
/// | 38..40 | queue name length, u16 LE |
/// | 40..42 | idempotency key length + 1, u16 LE (0: no key) |
/// | 42.. | queue name, key, then `FORMAT_V1` + postcard `DiskRecord` |
pub fn task_meta(r: &TaskRecord) -> Vec<u8> {
    let mut m = Vec::new();
    task_meta_into(r, &mut m);
    m
}

/// `task_meta` into `m` (cleared first), so the writer reuses one buffer.
pub fn task_meta_into(r: &TaskRecord, m: &mut Vec<u8>) {
    m.clear();
    let key = r.idempotency_key.as_deref();
    let key_len = key.map_or(0, str::len);
    // The record repeats the names; 64 bytes cover its numbers.
    let names = r.queue.len() + r.kind.len() + key_len;
    let tail = r.result.as_ref().map_or(0, Vec::len) + r.last_error.as_ref().map_or(0, String::len);
    m.reserve(SUMMARY_BYTES + 2 * names + tail + 64);
    m.extend_from_slice(&r.id.0.to_be_bytes());
    m.push(r.state.index() as u8);
    m.push(u8::from(r.cancel_requested));
    m.extend_from_slice(&r.priority.to_le_bytes());
    m.extend_from_slice(&r.run_at_ms.to_le_bytes());
    let expires = if r.state.is_terminal() {
        r.expires_at_ms().unwrap_or(u64::MAX)
    } else {
        u64::MAX
    };
    m.extend_from_slice(&expires.to_le_bytes());
    // Queue names and keys are limited far below 64 KiB (`Limits`).
    m.extend_from_slice(&(r.queue.len() as u16).to_le_bytes());
    m.extend_from_slice(&(key.map_or(0, |k| k.len() as u16 + 1)).to_le_bytes());
    m.extend_from_slice(r.queue.as_bytes());
    if let Some(k) = key {
        m.extend_from_slice(k.as_bytes());
    }
    encode_record_into(r, m);
}

/// How much of a frame's meta recovery reads (the log's `LogConfig::summary_meta`,
/// so segment summaries keep only this): a task or update frame's summary up to the
/// end of its queue name and key (`Replay::frame` reads nothing past them), every
/// other kind whole. A task summary that does not parse is kept whole, so that
/// recovery reports it as it would have.
pub fn recovery_meta_len(kind: u8, meta: &[u8]) -> usize {
    match kind {
        KIND_TASK | KIND_UPDATE => summary(meta).map_or(meta.len(), |s| s.record_at),
        _ => meta.len(),
    }
}

/// Reads a task frame's summary.
pub fn summary(meta: &[u8]) -> Result<Summary<'_>, Corrupt> {
    let bad = |detail: &str| Corrupt {
        what: "task frame",
        detail: detail.into(),
    };
    if meta.len() < SUMMARY_BYTES {
        return Err(bad("short summary"));
    }
    let u64_at = |i: usize| u64::from_le_bytes(meta[i..i + 8].try_into().expect("8 bytes"));
    let u16_at = |i: usize| u16::from_le_bytes(meta[i..i + 2].try_into().expect("2 bytes"));
    let id = u128::from_be_bytes(meta[0..16].try_into().expect("16 bytes"));
    let state = TaskState::from_index(meta[16] as usize).ok_or_else(|| bad("state"))?;
    let priority = i32::from_le_bytes(meta[18..22].try_into().expect("4 bytes"));
    let queue_len = u16_at(38) as usize;
    let key_len = u16_at(40) as usize;
    let queue_end = SUMMARY_BYTES + queue_len;
    let key_end = queue_end + key_len.saturating_sub(1);
    if meta.len() < key_end {
        return Err(bad("short names"));
    }
    let queue = std::str::from_utf8(&meta[SUMMARY_BYTES..queue_end])
        .map_err(|_| bad("queue name is not UTF-8"))?;
    let idempotency_key = if key_len == 0 {
        None
    } else {
        Some(
            std::str::from_utf8(&meta[queue_end..key_end])
                .map_err(|_| bad("idempotency key is not UTF-8"))?,
        )
    };
    Ok(Summary {
        id,
        state,
        cancel_requested: meta[17] != 0,
        priority,
        run_at_ms: u64_at(22),
        expires_at_ms: u64_at(30),
        queue,
        idempotency_key,
        record_at: key_end,
    })
}

/// The whole record of a task frame.
pub fn task_record(meta: &[u8]) -> Result<TaskRecord, Corrupt> {
    let s = summary(meta)?;
    decode_record(TaskId(s.id), &meta[s.record_at..])
}

/// The meta of a group frame.
pub fn group_meta(id: u128, g: &GroupRecord) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&encode_group(g));
    m
}

/// The meta of a purge frame.
pub fn purge_meta(tasks: &[(u128, u64)]) -> Vec<u8> {
    let mut m = Vec::with_capacity(tasks.len() * PURGE_ENTRY_BYTES);
    for (id, at) in tasks {
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&at.to_le_bytes());
    }
    m
}

/// The entries of a purge frame.
pub fn purge_entries(meta: &[u8]) -> Result<impl Iterator<Item = (u128, u64)> + '_, Corrupt> {
    if !meta.len().is_multiple_of(PURGE_ENTRY_BYTES) {
        return Err(Corrupt {
            what: "purge frame",
            detail: format!("{} bytes", meta.len()),
        });
    }
    Ok(meta.chunks_exact(PURGE_ENTRY_BYTES).map(|e| {
        (
            u128::from_be_bytes(e[0..16].try_into().expect("16 bytes")),
            u64::from_le_bytes(e[16..24].try_into().expect("8 bytes")),
        )
    }))
}

/// The ids of a group purge frame.
pub fn ids(meta: &[u8]) -> Result<impl Iterator<Item = u128> + '_, Corrupt> {
    if !meta.len().is_multiple_of(16) {
        return Err(Corrupt {
            what: "group purge frame",
            detail: format!("{} bytes", meta.len()),
        });
    }
    Ok(meta
        .chunks_exact(16)
        .map(|e| u128::from_be_bytes(e.try_into().expect("16 bytes"))))
}

/// Reads a group frame's id and record.
pub fn group_frame(meta: &[u8]) -> Result<(u128, GroupRecord), Corrupt> {
    if meta.len() < 16 {
        return Err(Corrupt {
            what: "group frame",
            detail: "short".into(),
        });
    }
    let id = u128::from_be_bytes(meta[0..16].try_into().expect("16 bytes"));
    Ok((id, decode_group(&meta[16..])?))
}

/// A task group as stored.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub queue: String,
    pub fail_fast: bool,
    /// Member task ids, in the order they were given.
    pub members: Vec<u128>,
    /// `GroupState` index.
    pub state: u8,
    pub canceled_by_request: bool,
    pub created_ms: u64,
    /// Set when every member is terminal.
    pub finished_ms: Option<u64>,
    pub retention_ms: u64,
}

pub fn encode_group(g: &GroupRecord) -> Vec<u8> {
    encode(g)
}

pub fn decode_group(bytes: &[u8]) -> Result<GroupRecord, Corrupt> {
    decode("group", bytes)
}

/// A queue's config as stored (`KIND_QUEUE`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct QueueFrame<'a> {
    queue: Cow<'a, str>,
    rate_per_sec: Option<f64>,
    burst: Option<u64>,
    max_in_flight: Option<u64>,
    max_pending: Option<u64>,
    paused: bool,
}

/// The meta of a `KIND_QUEUE` frame.
pub fn queue_meta(queue: &str, c: &QueueConfig) -> Vec<u8> {
    encode(&QueueFrame {
        queue: Cow::Borrowed(queue),
        rate_per_sec: c.rate_per_sec,
        burst: c.burst,
        max_in_flight: c.max_in_flight,
        max_pending: c.max_pending,
        paused: c.paused,
    })
}

/// Reads a `KIND_QUEUE` frame: the queue's name and config.
pub fn queue_frame(meta: &[u8]) -> Result<(String, QueueConfig), Corrupt> {
    let f: QueueFrame = decode("queue config", meta)?;
    let c = QueueConfig {
        rate_per_sec: f.rate_per_sec,
        burst: f.burst,
        max_in_flight: f.max_in_flight,
        max_pending: f.max_pending,
        paused: f.paused,
    };
    Ok((f.queue.into_owned(), c))
}

/// A schedule as stored (`KIND_SCHEDULE`); `spec: None` ends it.
#[derive(Serialize, Deserialize)]
struct ScheduleFrame<'a> {
    name: Cow<'a, str>,
    spec: Option<Cow<'a, str>>,
    last_tick_ms: u64,
    last_run_ms: Option<u64>,
    last_task_id: Option<u128>,
}

/// The meta of a `KIND_SCHEDULE` frame holding `s`.
pub fn schedule_meta(s: &Schedule) -> Vec<u8> {
    encode(&ScheduleFrame {
        name: Cow::Borrowed(&s.name),
        spec: Some(Cow::Borrowed(&s.spec)),
        last_tick_ms: s.last_tick_ms,
        last_run_ms: s.last_run_ms,
        last_task_id: s.last_task_id.map(|t| t.0),
    })
}

/// The meta of a `KIND_SCHEDULE` frame that ends the schedule `name`.
pub fn schedule_end_meta(name: &str) -> Vec<u8> {
    encode(&ScheduleFrame {
        name: Cow::Borrowed(name),
        spec: None,
        last_tick_ms: 0,
        last_run_ms: None,
        last_task_id: None,
    })
}

/// Reads a `KIND_SCHEDULE` frame: the schedule, or its name alone if it ended.
pub fn schedule_frame(meta: &[u8]) -> Result<Result<Schedule, String>, Corrupt> {
    let f: ScheduleFrame = decode("schedule", meta)?;
    Ok(match f.spec {
        None => Err(f.name.into_owned()),
        Some(spec) => Ok(Schedule {
            name: f.name.into_owned(),
            spec: spec.into_owned(),
            last_tick_ms: f.last_tick_ms,
            last_run_ms: f.last_run_ms,
            last_task_id: f.last_task_id.map(TaskId),
        }),
    })
}

/// An API key as stored (`KIND_KEY`); `record: None` revokes it.
#[derive(Serialize, Deserialize)]
struct KeyFrame<'a> {
    id: Cow<'a, str>,
    record: Option<Cow<'a, str>>,
    last_used_ms: Option<u64>,
}

/// The meta of a `KIND_KEY` frame holding `k`.
pub fn key_meta(k: &StoredKey) -> Vec<u8> {
    encode(&KeyFrame {
        id: Cow::Borrowed(&k.id),
        record: Some(Cow::Borrowed(&k.record)),
        last_used_ms: k.last_used_ms,
    })
}

/// The meta of a `KIND_KEY` frame that revokes the key `id`.
pub fn key_end_meta(id: &str) -> Vec<u8> {
    encode(&KeyFrame {
        id: Cow::Borrowed(id),
        record: None,
        last_used_ms: None,
    })
}

/// Reads a `KIND_KEY` frame: the key, or its id alone if it was revoked.
pub fn key_frame(meta: &[u8]) -> Result<Result<StoredKey, String>, Corrupt> {
    let f: KeyFrame = decode("API key", meta)?;
    Ok(match f.record {
        None => Err(f.id.into_owned()),
        Some(record) => Ok(StoredKey {
            id: f.id.into_owned(),
            record: record.into_owned(),
            last_used_ms: f.last_used_ms,
        }),
    })
}

/// A task's record as stored. Borrowed when written (`encode_record_into`, from a
/// `TaskRecord`'s own strings), owned when read; postcard encodes both the same.
#[derive(Serialize, Deserialize)]
struct DiskRecord<'a> {
    queue: Cow<'a, str>,
    kind: Cow<'a, str>,
    priority: i32,
    state: u8,
    attempt: u32,
    max_attempts: u32,
    timeout_ms: u64,
    run_at_ms: u64,
    deadline_ms: Option<u64>,
    idempotency_key: Option<Cow<'a, str>>,
    retention_ms: u64,
    created_ms: u64,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
    result: Option<Cow<'a, [u8]>>,
    last_error: Option<Cow<'a, str>>,
    cancel_requested: bool,
    group: Option<u128>,
}

/// A value that did not decode: the store is corrupt or from another version.
#[derive(Debug, thiserror::Error)]
#[error("corrupt {what} value: {detail}")]
pub struct Corrupt {
    pub what: &'static str,
    pub detail: String,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    // Serialising plain structs into a Vec cannot fail.
    out.extend(postcard::to_stdvec(value).expect("postcard encode"));
    out
}

fn decode<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T, Corrupt> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => postcard::from_bytes(rest).map_err(|e| Corrupt {
            what,
            detail: e.to_string(),
        }),
        _ => Err(Corrupt {
            what,
            detail: "unknown format version".into(),
        }),
    }
}

#[cfg(test)]
pub fn encode_record(r: &TaskRecord) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record_into(r, &mut out);
    out
}

/// Appends a record's encoding to `out`, borrowing its strings.
pub fn encode_record_into(r: &TaskRecord, out: &mut Vec<u8>) {
    out.push(FORMAT_V1);
    let rec = DiskRecord {
        queue: Cow::Borrowed(&r.queue),
        kind: weir_core::trace::pack_kind(&r.kind, r.trace.as_ref()),
        priority: r.priority,
        state: r.state.index() as u8,
        attempt: r.attempt,
        max_attempts: r.max_attempts,
        timeout_ms: r.timeout_ms,
        run_at_ms: r.run_at_ms,
        deadline_ms: r.deadline_ms,
        idempotency_key: r.idempotency_key.as_deref().map(Cow::Borrowed),
        retention_ms: r.retention_ms,
        created_ms: r.created_ms,
        started_ms: r.started_ms,
        finished_ms: r.finished_ms,
        result: r.result.as_deref().map(Cow::Borrowed),
        last_error: r.last_error.as_deref().map(Cow::Borrowed),
        cancel_requested: r.cancel_requested,
        group: r.group.map(|g| g.0),
    };
    // Serialising plain structs into a Vec cannot fail.
    *out = postcard::to_extend(&rec, std::mem::take(out)).expect("postcard encode");
}

pub fn decode_record(id: TaskId, bytes: &[u8]) -> Result<TaskRecord, Corrupt> {
    let d: DiskRecord = decode("task", bytes)?;
    let (kind, trace) = weir_core::trace::unpack_kind(&d.kind);
    let state = TaskState::from_index(d.state as usize).ok_or(Corrupt {
        what: "task",
        detail: format!("state {}", d.state),
    })?;
    Ok(TaskRecord {
        id,
        queue: d.queue.into_owned(),
        kind: kind.to_owned(),
        trace,
        priority: d.priority,
        state,
        attempt: d.attempt,
        max_attempts: d.max_attempts,
        timeout_ms: d.timeout_ms,
        run_at_ms: d.run_at_ms,
        deadline_ms: d.deadline_ms,
        idempotency_key: d.idempotency_key.map(Cow::into_owned),
        retention_ms: d.retention_ms,
        created_ms: d.created_ms,
        started_ms: d.started_ms,
        finished_ms: d.finished_ms,
        result: d.result.map(Cow::into_owned),
        last_error: d.last_error.map(Cow::into_owned),
        cancel_requested: d.cancel_requested,
        group: d.group.map(TaskId),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::{machine, NewTask};

    /// A record with every optional field the caller chooses.
    fn sample(queue: &str, key: &str, deadline_ms: Option<u64>) -> TaskRecord {
        machine::create(
            TaskId::new(5, 6),
            queue,
            NewTask {
                kind: "k".into(),
                priority: -3,
                run_at_ms: Some(99),
                delay_ms: 0,
                max_attempts: 4,
                timeout_ms: 10,
                deadline_ms,
                idempotency_key: Some(key.into()),
                retention_ms: 7,
                trace: weir_core::TraceContext::from_headers(
                    Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                    Some("a=1"),
                ),
            },
            5,
        )
    }

    #[test]
    fn schedules_round_trip() {
        let s = Schedule {
            name: "nightly".into(),
            spec: "{}".into(),
            last_tick_ms: 5,
            last_run_ms: Some(4),
            last_task_id: Some(TaskId(9)),
        };
        assert_eq!(schedule_frame(&schedule_meta(&s)).unwrap(), Ok(s));
        assert_eq!(
            schedule_frame(&schedule_end_meta("gone")).unwrap(),
            Err("gone".to_owned())
        );
    }

    #[test]
    fn keys_round_trip() {
        for last_used_ms in [None, Some(7)] {
            let k = StoredKey {
                id: "k1".into(),
                record: "{\"name\":\"ci\"}".into(),
                last_used_ms,
            };
            assert_eq!(key_frame(&key_meta(&k)).unwrap(), Ok(k));
        }
        assert_eq!(
            key_frame(&key_end_meta("gone")).unwrap(),
            Err("gone".to_owned())
        );
        assert!(key_frame(&[1, 200]).is_err());
    }

    #[test]
    fn queue_configs_round_trip() {
        let c = QueueConfig {
            rate_per_sec: Some(12.5),
            burst: Some(3),
            max_in_flight: None,
            max_pending: Some(1000),
            paused: true,
        };
        let (q, back) = queue_frame(&queue_meta("emails", &c)).unwrap();
        assert_eq!((q.as_str(), back), ("emails", c));
        assert!(queue_frame(&[1, 200]).is_err());
    }

    #[test]
    fn record_round_trips() {
        let mut r = sample("q", "ik", Some(1000));
        r.result = Some(b"{\"a\":1}".to_vec());
        r.last_error = Some("boom".into());
        assert_eq!(decode_record(r.id, &encode_record(&r)).unwrap(), r);
        assert!(decode_record(r.id, &[9, 1, 2]).is_err());
    }

    #[test]
    fn task_frames_carry_a_summary_that_matches_the_record() {
        let mut r = sample("emails", "ik-1", None);
        let m = task_meta(&r);
        let s = summary(&m).unwrap();
        assert_eq!(
            (s.id, s.state, s.priority, s.run_at_ms, s.expires_at_ms),
            (r.id.0, r.state, -3, 99, u64::MAX)
        );
        assert_eq!((s.queue, s.idempotency_key), ("emails", Some("ik-1")));
        assert_eq!(task_record(&m).unwrap(), r);
        r.idempotency_key = None;
        r.state = TaskState::Completed;
        r.finished_ms = Some(50);
        let m = task_meta(&r);
        let s = summary(&m).unwrap();
        assert_eq!((s.idempotency_key, s.expires_at_ms), (None, 57));
        assert_eq!(task_record(&m).unwrap(), r);
        assert!(summary(&m[..30]).is_err());
    }
}
