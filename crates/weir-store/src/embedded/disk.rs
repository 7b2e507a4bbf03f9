//! The embedded store's on-disk encoding: keyspace names, key layouts and value
//! formats (documented byte by byte in docs/design/embedded-store.md). Values are
//! postcard with a leading format-version byte, so a future layout can be told apart.

use serde::{Deserialize, Serialize};
use weir_core::{TaskId, TaskRecord, TaskState};

/// Version byte in front of every encoded value.
const FORMAT_V1: u8 = 1;

/// `tasks`: id (16 bytes, big-endian ULID) → `DiskRecord`.
pub const KS_TASKS: &str = "tasks";
/// `payloads`: id → the payload's JSON text, as the producer sent it.
pub const KS_PAYLOADS: &str = "payloads";
/// `ready`: id → `ReadyEntry`, present exactly while the task is not terminal.
/// Startup rebuilds the dispatch indexes from this keyspace alone.
pub const KS_READY: &str = "ready";
/// `terminal`: queue_len(1) queue state(1) id(16) → expires_at_ms (8, BE; u64::MAX = kept).
pub const KS_TERMINAL: &str = "terminal";
/// `expiry`: expires_at_ms(8, BE) id(16) → `ExpiryEntry`; retention removes what is due.
pub const KS_EXPIRY: &str = "expiry";
/// `idem`: queue 0x00 idempotency_key → id.
pub const KS_IDEM: &str = "idem";
/// `groups`: group id (16) → `GroupRecord`.
pub const KS_GROUPS: &str = "groups";
/// `group_expiry`: expires_at_ms(8, BE) group id(16) → empty; retention removes the group.
pub const KS_GROUP_EXPIRY: &str = "group_expiry";

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

#[derive(Serialize, Deserialize)]
struct DiskRecord {
    queue: String,
    kind: String,
    priority: i32,
    state: u8,
    attempt: u32,
    max_attempts: u32,
    timeout_ms: u64,
    run_at_ms: u64,
    deadline_ms: Option<u64>,
    idempotency_key: Option<String>,
    retention_ms: u64,
    created_ms: u64,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
    result: Option<Vec<u8>>,
    last_error: Option<String>,
    cancel_requested: bool,
    group: Option<u128>,
}

/// What dispatch needs to know of a non-terminal task (tens of bytes).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReadyEntry {
    pub queue: String,
    pub priority: i32,
    pub run_at_ms: u64,
    /// Set when a cancel arrived while the task was active: recovery makes it canceled.
    pub cancel_requested: bool,
}

/// What retention needs to delete a task's other keys.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExpiryEntry {
    pub queue: String,
    pub state: u8,
    pub idempotency_key: Option<String>,
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

pub fn encode_record(r: &TaskRecord) -> Vec<u8> {
    encode(&DiskRecord {
        queue: r.queue.clone(),
        kind: r.kind.clone(),
        priority: r.priority,
        state: r.state.index() as u8,
        attempt: r.attempt,
        max_attempts: r.max_attempts,
        timeout_ms: r.timeout_ms,
        run_at_ms: r.run_at_ms,
        deadline_ms: r.deadline_ms,
        idempotency_key: r.idempotency_key.clone(),
        retention_ms: r.retention_ms,
        created_ms: r.created_ms,
        started_ms: r.started_ms,
        finished_ms: r.finished_ms,
        result: r.result.clone(),
        last_error: r.last_error.clone(),
        cancel_requested: r.cancel_requested,
        group: r.group.map(|g| g.0),
    })
}

pub fn decode_record(id: TaskId, bytes: &[u8]) -> Result<TaskRecord, Corrupt> {
    let d: DiskRecord = decode("task", bytes)?;
    let state = TaskState::from_index(d.state as usize).ok_or(Corrupt {
        what: "task",
        detail: format!("state {}", d.state),
    })?;
    Ok(TaskRecord {
        id,
        queue: d.queue,
        kind: d.kind,
        priority: d.priority,
        state,
        attempt: d.attempt,
        max_attempts: d.max_attempts,
        timeout_ms: d.timeout_ms,
        run_at_ms: d.run_at_ms,
        deadline_ms: d.deadline_ms,
        idempotency_key: d.idempotency_key,
        retention_ms: d.retention_ms,
        created_ms: d.created_ms,
        started_ms: d.started_ms,
        finished_ms: d.finished_ms,
        result: d.result,
        last_error: d.last_error,
        cancel_requested: d.cancel_requested,
        group: d.group.map(TaskId),
    })
}

pub fn encode_ready(e: &ReadyEntry) -> Vec<u8> {
    encode(e)
}

pub fn decode_ready(bytes: &[u8]) -> Result<ReadyEntry, Corrupt> {
    decode("ready", bytes)
}

pub fn encode_expiry(e: &ExpiryEntry) -> Vec<u8> {
    encode(e)
}

pub fn decode_expiry(bytes: &[u8]) -> Result<ExpiryEntry, Corrupt> {
    decode("expiry", bytes)
}

pub fn id_from_key(what: &'static str, key: &[u8]) -> Result<TaskId, Corrupt> {
    let bytes: [u8; 16] = key.try_into().map_err(|_| Corrupt {
        what,
        detail: format!("key of {} bytes", key.len()),
    })?;
    Ok(TaskId::from_bytes(bytes))
}

/// `terminal` key: queue_len(1) queue state(1) id(16). Queue names are ≤ 255 bytes.
pub fn terminal_key(queue: &str, state: TaskState, id: TaskId) -> Vec<u8> {
    debug_assert!(queue.len() <= 255);
    let mut k = Vec::with_capacity(1 + queue.len() + 1 + 16);
    k.push(queue.len() as u8);
    k.extend_from_slice(queue.as_bytes());
    k.push(state.index() as u8);
    k.extend_from_slice(&id.to_bytes());
    k
}

pub fn parse_terminal_key(key: &[u8]) -> Result<(&str, TaskState, TaskId), Corrupt> {
    let bad = || Corrupt {
        what: "terminal key",
        detail: format!("{key:?}"),
    };
    let (&qlen, rest) = key.split_first().ok_or_else(bad)?;
    let qlen = qlen as usize;
    if rest.len() != qlen + 1 + 16 {
        return Err(bad());
    }
    let queue = std::str::from_utf8(&rest[..qlen]).map_err(|_| bad())?;
    let state = TaskState::from_index(rest[qlen] as usize).ok_or_else(bad)?;
    let id = id_from_key("terminal key", &rest[qlen + 1..])?;
    Ok((queue, state, id))
}

/// `expiry` key: expires_at_ms(8, BE) id(16), so a range scan from the start finds
/// what is due.
pub fn expiry_key(expires_at_ms: u64, id: TaskId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&expires_at_ms.to_be_bytes());
    k[8..].copy_from_slice(&id.to_bytes());
    k
}

pub fn idem_key(queue: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(queue.len() + 1 + key.len());
    k.extend_from_slice(queue.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::{machine, NewTask};

    #[test]
    fn record_round_trips() {
        let mut r = machine::create(
            TaskId::new(5, 6),
            "q",
            NewTask {
                kind: "k".into(),
                priority: -3,
                run_at_ms: Some(99),
                delay_ms: 0,
                max_attempts: 4,
                timeout_ms: 10,
                deadline_ms: Some(1000),
                idempotency_key: Some("ik".into()),
                retention_ms: 7,
            },
            5,
        );
        r.result = Some(b"{\"a\":1}".to_vec());
        r.last_error = Some("boom".into());
        assert_eq!(decode_record(r.id, &encode_record(&r)).unwrap(), r);
        assert!(decode_record(r.id, &[9, 1, 2]).is_err());
    }

    #[test]
    fn terminal_keys_round_trip_and_group_by_queue() {
        let id = TaskId::new(1, 2);
        let k = terminal_key("emails", TaskState::Dead, id);
        assert_eq!(
            parse_terminal_key(&k).unwrap(),
            ("emails", TaskState::Dead, id)
        );
        assert!(expiry_key(1, id) < expiry_key(2, TaskId(0)));
    }
}
