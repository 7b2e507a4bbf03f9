//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>) carried with a task:
//! a producer's `traceparent` and `tracestate` headers on enqueue are kept with the
//! task and handed to every worker that leases it, so the worker's span continues
//! the producer's trace.
//!
//! The stores keep the context inside the task's `kind` field, after a NUL (which
//! no kind may contain: `validate::kind`), so records written before trace context
//! existed read unchanged and no store layout moved (`pack_kind`, `unpack_kind`).

use std::borrow::Cow;

/// Longest `tracestate` kept (the W3C limit is 32 list members; 512 bytes is what
/// the specification asks a vendor to propagate at least).
pub const TRACESTATE_BYTES_MAX: usize = 512;

/// A task's trace context: a valid `traceparent` and, optionally, its `tracestate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase.
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context of a request's headers, or `None` when `traceparent` is absent
    /// or invalid (the specification says to ignore an invalid one, never to
    /// refuse the request). A `tracestate` without a valid `traceparent`, or one
    /// longer than `TRACESTATE_BYTES_MAX` or with a control character or NUL, is
    /// dropped.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let tp = traceparent?.trim();
        if !valid_traceparent(tp) {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= TRACESTATE_BYTES_MAX)
            .filter(|s| s.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .map(str::to_owned);
        Some(TraceContext {
            traceparent: tp.to_owned(),
            tracestate,
        })
    }

    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The 16 hex digits of the parent span's id.
    pub fn parent_id(&self) -> &str {
        &self.traceparent[36..52]
    }
}

/// Version 00's shape: `00-` 32 hex `-` 16 hex `-` 2 hex, lowercase, with neither
/// id all zeros. A higher version is read by its version-00 prefix, as the
/// specification allows (a longer header must continue with `-`).
fn valid_traceparent(tp: &str) -> bool {
    let b = tp.as_bytes();
    if b.len() < 55 || (b.len() > 55 && b[55] != b'-') {
        return false;
    }
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let version = &b[0..2];
    let (trace, parent, flags) = (&b[3..35], &b[36..52], &b[53..55]);
    let zero = |s: &[u8]| s.iter().all(|&c| c == b'0');
    hex(version)
        && version != b"ff"
        && (version != b"00" || b.len() == 55)
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(trace)
        && hex(parent)
        && hex(flags)
        && !zero(trace)
        && !zero(parent)
}

/// A task's kind as the stores keep it: the kind, then (if the task has a trace
/// context) NUL, `traceparent` and, if any, NUL and `tracestate`.
pub fn pack_kind<'a>(kind: &'a str, trace: Option<&TraceContext>) -> Cow<'a, str> {
    match trace {
        None => Cow::Borrowed(kind),
        Some(t) => {
            let mut s = String::with_capacity(kind.len() + 1 + t.traceparent.len());
            s.push_str(kind);
            s.push('\0');
            s.push_str(&t.traceparent);
            if let Some(state) = &t.tracestate {
                s.push('\0');
                s.push_str(state);
            }
            Cow::Owned(s)
        }
    }
}

/// The kind and trace context `pack_kind` packed (a kind without NUL is a record
/// written without trace context).
pub fn unpack_kind(stored: &str) -> (&str, Option<TraceContext>) {
    let Some((kind, rest)) = stored.split_once('\0') else {
        return (stored, None);
    };
    let (traceparent, tracestate) = match rest.split_once('\0') {
        Some((tp, ts)) => (tp, Some(ts.to_owned())),
        None => (rest, None),
    };
    let trace = TraceContext {
        traceparent: traceparent.to_owned(),
        tracestate,
    };
    (kind, Some(trace))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_headers_are_kept_and_invalid_ones_ignored() {
        let t = TraceContext::from_headers(Some(TP), Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id(), "00f067aa0ba902b7");
        assert_eq!(t.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::from_headers(Some(bad), None), None, "{bad:?}");
        }
        assert_eq!(TraceContext::from_headers(None, Some("a=b")), None);
        // A later version may carry more after a dash.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz";
        assert!(TraceContext::from_headers(Some(v1), None).is_some());
        // A tracestate that is too long or holds a control character is dropped.
        let long = "a=".to_owned() + &"b".repeat(TRACESTATE_BYTES_MAX);
        for bad in [long.as_str(), "a=b\0c", "a=\nb"] {
            let t = TraceContext::from_headers(Some(TP), Some(bad)).unwrap();
            assert_eq!(t.tracestate, None, "{bad:?}");
        }
    }

    #[test]
    fn kinds_pack_and_unpack() {
        assert_eq!(unpack_kind("email.send"), ("email.send", None));
        let t = TraceContext::from_headers(Some(TP), None).unwrap();
        let packed = pack_kind("email.send", Some(&t));
        assert_eq!(unpack_kind(&packed), ("email.send", Some(t)));
        let t = TraceContext::from_headers(Some(TP), Some("x=1,y=2")).unwrap();
        let packed = pack_kind("k", Some(&t));
        assert_eq!(unpack_kind(&packed), ("k", Some(t)));
        assert_eq!(pack_kind("k", None), "k");
    }
}
