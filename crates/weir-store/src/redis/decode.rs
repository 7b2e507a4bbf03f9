//! Turns script replies into weir's types. A reply that does not have the shape
//! its script promises is a bug (`StoreError::Internal`), never a guess.

use std::collections::HashMap;

use bytes::Bytes;
use redis::Value;
use weir_core::{ConfigPatch, NewTask, QueueConfig, TaskId, TaskRecord, TaskState};

use crate::{Schedule, StoreError, StoredKey, TaskView};

pub fn bug(what: &str) -> StoreError {
    StoreError::bug(format!("redis script reply: {what}"))
}

pub fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => Err(bug(&format!("expected an array, got {other:?}"))),
    }
}

pub fn bytes(v: Value) -> Result<Vec<u8>, StoreError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        other => Err(bug(&format!("expected a string, got {other:?}"))),
    }
}

pub fn text(v: Value) -> Result<String, StoreError> {
    String::from_utf8(bytes(v)?).map_err(|_| bug("not utf-8"))
}

pub fn int(v: Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(i),
        other => {
            let t = text(other)?;
            t.parse()
                .map_err(|_| bug(&format!("not an integer: {t:?}")))
        }
    }
}

/// An optional number ('' for none).
pub fn opt_u64(v: Value) -> Result<Option<u64>, StoreError> {
    let t = text(v)?;
    if t.is_empty() {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| bug(&format!("not a number: {t:?}")))
}

/// A queue's config from its meta hash's fields cr, cb, cf, cp, cz (in that
/// order; `None` or empty for an unset one).
pub fn config(fields: &[Option<String>]) -> Result<QueueConfig, StoreError> {
    let field = |i: usize| fields.get(i).cloned().flatten().filter(|v| !v.is_empty());
    let num = |i: usize| -> Result<Option<u64>, StoreError> {
        field(i)
            .map(|v| {
                v.parse()
                    .map_err(|_| bug(&format!("queue config field {i}: {v:?}")))
            })
            .transpose()
    };
    let rate_per_sec = field(0)
        .map(|v| {
            v.parse::<f64>()
                .map_err(|_| bug(&format!("queue rate {v:?}")))
        })
        .transpose()?;
    Ok(QueueConfig {
        rate_per_sec,
        burst: num(1)?,
        max_in_flight: num(2)?,
        max_pending: num(3)?,
        paused: field(4).is_some(),
    })
}

/// A config patch as the five arguments of `configure.lua` ('-' keeps a field,
/// '' clears it).
pub fn patch_args(p: &ConfigPatch) -> [String; 5] {
    fn arg<T: ToString>(v: Option<Option<T>>) -> String {
        match v {
            None => "-".into(),
            Some(None) => String::new(),
            Some(Some(v)) => v.to_string(),
        }
    }
    [
        arg(p.rate_per_sec),
        arg(p.burst),
        arg(p.max_in_flight),
        arg(p.max_pending),
        arg(p.paused.map(|z| z.then_some(1u8))),
    ]
}

/// A schedule from its definition and its run state `tick|run|task`.
pub fn schedule(name: String, spec: String, run: &str) -> Result<Schedule, StoreError> {
    let bad = || bug(&format!("schedule {name} run state {run:?}"));
    let mut parts = run.splitn(3, '|');
    let (tick, at, task) = (parts.next(), parts.next(), parts.next());
    let (Some(tick), Some(at), Some(task)) = (tick, at, task) else {
        return Err(bad());
    };
    Ok(Schedule {
        last_tick_ms: tick.parse().map_err(|_| bad())?,
        last_run_ms: (!at.is_empty())
            .then(|| at.parse())
            .transpose()
            .map_err(|_| bad())?,
        last_task_id: (!task.is_empty())
            .then(|| task.parse())
            .transpose()
            .map_err(|_| bad())?,
        name,
        spec,
    })
}

/// An API key from its hash fields (`api_keys.lua`): the record and the last use
/// (`''` for never).
pub fn stored_key(id: String, record: String, last_used: &str) -> Result<StoredKey, StoreError> {
    let last_used_ms = if last_used.is_empty() {
        None
    } else {
        Some(
            last_used
                .parse()
                .map_err(|_| bug(&format!("API key {id} last use {last_used:?}")))?,
        )
    };
    Ok(StoredKey {
        id,
        record,
        last_used_ms,
    })
}

pub fn state(i: i64) -> Result<TaskState, StoreError> {
    TaskState::from_index(i as usize).ok_or_else(|| bug(&format!("state {i}")))
}

/// A flat `field, value, ...` array.
pub struct Fields(HashMap<String, Vec<u8>>);

impl Fields {
    pub fn parse(v: Value) -> Result<Fields, StoreError> {
        let a = array(v)?;
        Self::from_values(a)
    }

    pub fn from_values(a: Vec<Value>) -> Result<Fields, StoreError> {
        if !a.len().is_multiple_of(2) {
            return Err(bug("odd field list"));
        }
        let mut map = HashMap::with_capacity(a.len() / 2);
        let mut it = a.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            map.insert(text(k)?, bytes(v)?);
        }
        Ok(Fields(map))
    }

    pub fn str(&self, k: &str) -> Result<String, StoreError> {
        let b = self.0.get(k).ok_or_else(|| bug(&format!("no field {k}")))?;
        String::from_utf8(b.clone()).map_err(|_| bug(&format!("field {k} not utf-8")))
    }

    pub fn num<T: std::str::FromStr>(&self, k: &str) -> Result<T, StoreError> {
        let s = self.str(k)?;
        s.parse()
            .map_err(|_| bug(&format!("field {k} not a number: {s:?}")))
    }

    pub fn opt_num<T: std::str::FromStr>(&self, k: &str) -> Result<Option<T>, StoreError> {
        match self.0.contains_key(k) {
            true => self.num(k).map(Some),
            false => Ok(None),
        }
    }
}

/// Length of a task record's fixed header (common.lua's `HFMT`): state (u8),
/// lease expiry (i64), lease id (16 bytes), finished (i64), attempt (u32),
/// started (i64), cancel requested, watched (u8 each), run_at, created, seq
/// (i64 each), length of the last error (i32, -1 for none). All big-endian;
/// 0 stands for "none" in times.
pub const HEADER_LEN: usize = 75;
/// Bytes of a 'ready' member before the task id: the rank (u32) and seq (i64).
pub const READY_PREFIX_LEN: usize = 12;
/// Largest time or duration a script holds exactly (Lua numbers are doubles).
const TIME_MAX: u64 = (1 << 53) - 1;

fn exact(v: u64) -> i64 {
    v.min(TIME_MAX) as i64
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// D: the immutable part of a task's record with its payload (common.lua's
/// `DFMT`), packed here once at enqueue and never rewritten by the scripts.
pub fn pack_task(queue: &str, t: &NewTask, group: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let ik = t.idempotency_key.as_deref().unwrap_or("");
    let g = group.unwrap_or("");
    let mut out =
        Vec::with_capacity(48 + queue.len() + t.kind.len() + ik.len() + g.len() + payload.len());
    out.extend_from_slice(&exact(t.timeout_ms).to_be_bytes());
    out.extend_from_slice(&t.deadline_ms.map_or(-1, exact).to_be_bytes());
    out.extend_from_slice(&exact(t.retention_ms).to_be_bytes());
    out.extend_from_slice(&t.max_attempts.max(1).to_be_bytes());
    out.extend_from_slice(&t.priority.to_be_bytes());
    put_str(&mut out, g.as_bytes());
    put_str(&mut out, ik.as_bytes());
    put_str(&mut out, queue.as_bytes());
    put_str(
        &mut out,
        weir_core::trace::pack_kind(&t.kind, t.trace.as_ref()).as_bytes(),
    );
    put_str(&mut out, payload);
    out
}

/// Reads the big-endian fields of a record in order.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| bug("task record cut short"))?;
        let out = &self.b[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.arr()?))
    }
    fn i32(&mut self) -> Result<i32, StoreError> {
        Ok(i32::from_be_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(i64::from_be_bytes(self.arr()?))
    }
    /// A time or duration (never negative in a record).
    fn time(&mut self) -> Result<u64, StoreError> {
        u64::try_from(self.i64()?).map_err(|_| bug("negative time in a task record"))
    }
    /// A time where 0 means none.
    fn opt_time(&mut self) -> Result<Option<u64>, StoreError> {
        Ok(Some(self.time()?).filter(|&t| t != 0))
    }
    fn str(&mut self) -> Result<&'a [u8], StoreError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Result<String, StoreError> {
        String::from_utf8(self.str()?.to_vec()).map_err(|_| bug("task record text not utf-8"))
    }
}

/// A task as its record reads, with its payload and (if active) its lease's
/// expiry. A scheduled task whose run_at has passed reads as pending, as
/// everywhere.
pub fn record(
    id: TaskId,
    rec: Vec<u8>,
    now_ms: u64,
) -> Result<(TaskRecord, Bytes, Option<u64>), StoreError> {
    if rec.len() < HEADER_LEN {
        return Err(bug("task record shorter than its header"));
    }
    let mut h = Reader {
        b: &rec[..HEADER_LEN],
        pos: 0,
    };
    let state = state(i64::from(h.u8()?))?;
    let lease_expires = h.opt_time()?;
    let _lease = h.take(16)?;
    let finished_ms = h.opt_time()?;
    let attempt = h.u32()?;
    let started_ms = h.opt_time()?;
    let cancel_requested = h.u8()? == 1;
    let _watched = h.u8()?;
    let run_at_ms = h.time()?;
    let created_ms = h.time()?;
    let _seq = h.i64()?;
    let error_len = h.i32()?;
    let mut d = Reader {
        b: &rec,
        pos: HEADER_LEN,
    };
    let timeout_ms = d.time()?;
    let deadline_ms = match d.i64()? {
        -1 => None,
        v => Some(u64::try_from(v).map_err(|_| bug("deadline"))?),
    };
    let retention_ms = d.time()?;
    let max_attempts = d.u32()?;
    let priority = d.i32()?;
    let group = match d.str()? {
        b"" => None,
        g => Some(
            std::str::from_utf8(g)
                .ok()
                .and_then(|g| g.parse().ok())
                .ok_or_else(|| bug("group id"))?,
        ),
    };
    let idempotency_key = Some(d.text()?).filter(|k| !k.is_empty());
    let queue = d.text()?;
    let stored_kind = d.text()?;
    let (kind, trace) = weir_core::trace::unpack_kind(&stored_kind);
    let kind = kind.to_owned();
    let payload_len = d.u32()? as usize;
    let payload_at = d.pos;
    d.take(payload_len)?;
    let last_error = match error_len {
        -1 => None,
        n => Some(
            String::from_utf8(d.take(n as usize)?.to_vec()).map_err(|_| bug("error not utf-8"))?,
        ),
    };
    let result = Some(d.b[d.pos..].to_vec()).filter(|r| !r.is_empty());
    let shown = if state == TaskState::Scheduled && run_at_ms <= now_ms {
        TaskState::Pending
    } else {
        state
    };
    let record = TaskRecord {
        id,
        queue,
        kind,
        priority,
        state: shown,
        attempt,
        max_attempts,
        timeout_ms,
        run_at_ms,
        deadline_ms,
        idempotency_key,
        retention_ms,
        created_ms,
        started_ms,
        finished_ms,
        result,
        last_error,
        cancel_requested,
        group,
        trace,
    };
    let le = if state == TaskState::Active {
        lease_expires
    } else {
        None
    };
    let payload = Bytes::from(rec).slice(payload_at..payload_at + payload_len);
    Ok((record, payload, le))
}

/// A task view from the `{now, record or '', worker or ''}` a script answers
/// (`view_into` in common.lua).
pub fn view(id: TaskId, reply: Vec<Value>) -> Result<Option<TaskView>, StoreError> {
    let mut it = reply.into_iter();
    let (Some(now), Some(rec), Some(worker)) = (it.next(), it.next(), it.next()) else {
        return Err(bug("view reply"));
    };
    let now_ms = opt_u64(now)?.unwrap_or(0);
    let rec = bytes(rec)?;
    if rec.is_empty() {
        return Ok(None);
    }
    let (record, payload, lease_expires_ms) = self::record(id, rec, now_ms)?;
    let worker = Some(text(worker)?).filter(|w| !w.is_empty() && lease_expires_ms.is_some());
    Ok(Some(TaskView {
        record,
        payload,
        lease_expires_ms,
        worker,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(state: u8, attempt: u32, le: i64, error_len: i32) -> Vec<u8> {
        let mut h = vec![state];
        h.extend_from_slice(&le.to_be_bytes());
        h.extend_from_slice(&[9; 16]);
        h.extend_from_slice(&0i64.to_be_bytes());
        h.extend_from_slice(&attempt.to_be_bytes());
        h.extend_from_slice(&11i64.to_be_bytes());
        h.extend_from_slice(&[1, 0]);
        for v in [7i64, 5, 3] {
            h.extend_from_slice(&v.to_be_bytes());
        }
        h.extend_from_slice(&error_len.to_be_bytes());
        assert_eq!(h.len(), HEADER_LEN);
        h
    }

    #[test]
    fn a_record_reads_back_what_enqueue_packed_and_the_scripts_appended() {
        let id: TaskId = "01M8QCA4ZD2Y7EEJ1EHYAG4M7E".parse().unwrap();
        let t = NewTask {
            kind: "email".into(),
            priority: -3,
            run_at_ms: None,
            delay_ms: 0,
            max_attempts: 4,
            timeout_ms: 30_000,
            deadline_ms: Some(99),
            idempotency_key: Some("k1".into()),
            retention_ms: 60_000,
            trace: weir_core::TraceContext::from_headers(
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                None,
            ),
        };
        let g = id.to_string();
        let mut rec = header(2, 1, 40_000, 4);
        rec.extend(pack_task("q", &t, Some(&g), b"{\"a\":1}"));
        rec.extend_from_slice(b"boom{\"ok\":true}");
        let (r, payload, le) = record(id, rec.clone(), 0).unwrap();
        assert_eq!(r.state, TaskState::Active);
        assert_eq!((r.attempt, le, r.started_ms), (1, Some(40_000), Some(11)));
        assert_eq!((r.run_at_ms, r.created_ms), (7, 5));
        assert_eq!(
            (r.queue.as_str(), r.kind.as_str(), r.priority),
            ("q", "email", -3)
        );
        assert_eq!(
            (r.max_attempts, r.timeout_ms, r.retention_ms),
            (4, 30_000, 60_000)
        );
        assert_eq!(
            (r.deadline_ms, r.idempotency_key.as_deref()),
            (Some(99), Some("k1"))
        );
        assert_eq!(r.group, Some(id));
        assert_eq!(
            r.trace, t.trace,
            "the trace context rides in the kind field"
        );
        assert!(r.cancel_requested);
        assert_eq!(&payload[..], b"{\"a\":1}");
        assert_eq!(r.last_error.as_deref(), Some("boom"));
        assert_eq!(r.result.as_deref(), Some(&b"{\"ok\":true}"[..]));
        // Cut anywhere, a record is refused, never misread.
        for cut in [0, 10, HEADER_LEN, HEADER_LEN + 40, rec.len() - 16] {
            assert!(record(id, rec[..cut].to_vec(), 0).is_err(), "cut at {cut}");
        }
    }
}
