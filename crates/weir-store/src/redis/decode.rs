//! Turns script replies into weir's types. A reply that does not have the shape
//! its script promises is a bug (`StoreError::Internal`), never a guess.

use std::collections::HashMap;

use bytes::Bytes;
use redis::Value;
use weir_core::{TaskId, TaskRecord, TaskState};

use crate::{StoreError, TaskView};

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

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn take(&mut self, k: &str) -> Option<Vec<u8>> {
        self.0.remove(k)
    }

    pub fn str(&self, k: &str) -> Result<String, StoreError> {
        let b = self.0.get(k).ok_or_else(|| bug(&format!("no field {k}")))?;
        String::from_utf8(b.clone()).map_err(|_| bug(&format!("field {k} not utf-8")))
    }

    pub fn opt_str(&self, k: &str) -> Result<Option<String>, StoreError> {
        match self.0.contains_key(k) {
            true => self.str(k).map(Some),
            false => Ok(None),
        }
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

    pub fn id(&self, k: &str) -> Result<TaskId, StoreError> {
        self.str(k)?
            .parse()
            .map_err(|_| bug(&format!("field {k} not an id")))
    }

    /// A task's record, its lease expiry and worker (active only), from its hash.
    /// A scheduled task whose run_at has passed reads as pending, as everywhere.
    pub fn record(
        &mut self,
        now_ms: u64,
    ) -> Result<(TaskRecord, Option<u64>, Option<String>), StoreError> {
        let state = state(self.num("s")?)?;
        let run_at_ms: u64 = self.num("ra")?;
        let shown = if state == TaskState::Scheduled && run_at_ms <= now_ms {
            TaskState::Pending
        } else {
            state
        };
        let group = match self.opt_str("g")? {
            Some(g) => Some(g.parse().map_err(|_| bug("group id"))?),
            None => None,
        };
        let record = TaskRecord {
            id: self.id("id")?,
            queue: self.str("q")?,
            kind: self.str("k")?,
            priority: self.num("p")?,
            state: shown,
            attempt: self.num("a")?,
            max_attempts: self.num("ma")?,
            timeout_ms: self.num("to")?,
            run_at_ms,
            deadline_ms: self.opt_num("dl")?,
            idempotency_key: self.opt_str("ik")?,
            retention_ms: self.num("rt")?,
            created_ms: self.num("c")?,
            started_ms: self.opt_num("st")?,
            finished_ms: self.opt_num("f")?,
            result: self.take("r"),
            last_error: self.opt_str("e")?,
            cancel_requested: self.num::<u8>("cr")? == 1,
            group,
        };
        let (le, w) = if state == TaskState::Active {
            (self.opt_num("le")?, self.opt_str("w")?)
        } else {
            (None, None)
        };
        Ok((record, le, w))
    }

    pub fn view(mut self, now_ms: u64) -> Result<TaskView, StoreError> {
        let payload = Bytes::from(self.take("pl").unwrap_or_default());
        let (record, lease_expires_ms, worker) = self.record(now_ms)?;
        Ok(TaskView {
            record,
            payload,
            lease_expires_ms,
            worker,
        })
    }
}
