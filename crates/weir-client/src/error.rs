//! The client's typed errors, and the one mapping from a server's
//! `application/problem+json` answer (RFC 9457) to them.

use std::time::Duration;

use serde::Deserialize;

/// Everything a call to the weir server can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 404: the task, queue or route does not exist (or is no longer retained).
    #[error("not found")]
    NotFound,
    /// 409: the request conflicts with the current state (a stale lease, a cancel of
    /// a terminal task).
    #[error("conflict: {detail}")]
    Conflict { detail: String },
    /// 429: a rate limit or a full queue; try again after `retry_after` if given.
    #[error("rate limited{}", retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// Any other 4xx: the request was refused as invalid.
    #[error("invalid request (HTTP {status}, {type_}): {detail}{}", field.as_deref().map(|f| format!(" [field: {f}]")).unwrap_or_default())]
    Invalid {
        /// HTTP status code.
        status: u16,
        /// The problem's stable `type`.
        type_: String,
        /// The human-readable explanation.
        detail: String,
        /// The offending request field, when the server names one.
        field: Option<String>,
    },
    /// 5xx (or an unexpected non-success status). A 503 or 507 (an outage that
    /// clears by itself: nothing of the request was done) usually says when to
    /// retry in `retry_after`.
    #[error("server error (HTTP {status}): {detail}")]
    Server {
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// The request never got an answer: connection refused or reset, timeout, ...
    #[error("transport error")]
    Transport(#[source] reqwest::Error),
    /// The worker channel failed: it could not be opened (no connection, an
    /// `https://` server), it broke, or the server sent what this client does not
    /// understand. Transient: open it again.
    #[error("worker channel: {detail}")]
    Channel { detail: String },
    /// The server answered success with a body this client does not understand.
    /// `body` is that answer as is, so a caller can still show it (a task whose
    /// payload no typed decode takes, say).
    #[error("could not decode the server's answer (HTTP {status})")]
    Decode {
        status: u16,
        #[source]
        source: serde_json::Error,
        body: bytes::Bytes,
    },
}

impl Error {
    /// How long the server asked the client to wait before it sends the request
    /// again: the `Retry-After` of a 429, 503 or 507, if it had one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after } | Error::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The pause before sending the request again after this error, given the
    /// caller's own `backoff` (jittered, growing with each try): the server's
    /// `Retry-After` (at most [`RETRY_AFTER_HONOURED_MAX`]) plus `backoff`. Adding
    /// the two means clients told the same `Retry-After` do not come back in step,
    /// and one refused again waits longer each time.
    pub fn retry_pause(&self, backoff: Duration) -> Duration {
        self.retry_after()
            .map_or(Duration::ZERO, |d| d.min(RETRY_AFTER_HONOURED_MAX))
            .saturating_add(backoff)
    }

    /// True when the server gave no answer at all: the connection was refused
    /// or broke, or the worker channel failed (the server may be restarting).
    pub fn is_unanswered(&self) -> bool {
        matches!(self, Error::Transport(_) | Error::Channel { .. })
    }

    /// True for errors worth retrying the same request after a pause: overload
    /// (429, 503), a server whose disk is full (507: it takes writes again once
    /// space is freed) and transport failures.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::RateLimited { .. }
                | Error::Server {
                    status: 503 | 507,
                    ..
                }
                | Error::Transport(_)
                | Error::Channel { .. }
        )
    }
}

/// Longest `Retry-After` [`Error::retry_pause`] honours: a server asking for more
/// (a client over a limit of a few requests an hour) is asked again after this,
/// which costs it one cheap refusal.
pub const RETRY_AFTER_HONOURED_MAX: Duration = Duration::from_secs(60);

/// The fields of a problem document this client reads; others are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Problem {
    #[serde(rename = "type")]
    type_: Option<String>,
    title: Option<String>,
    detail: Option<String>,
    field: Option<String>,
}

/// Longest non-JSON error body quoted in an error's detail.
const RAW_DETAIL_BYTES_MAX: usize = 512;

/// Maps a non-success answer to an [`Error`]. `retry_after` is the raw
/// `Retry-After` header; `body` is the raw body, ideally problem+json but any text
/// is tolerated (a proxy's HTML page, an empty body).
pub fn error_from_response(status: u16, retry_after: Option<&str>, body: &[u8]) -> Error {
    let problem: Option<Problem> = serde_json::from_slice(body).ok();
    let detail = match &problem {
        Some(p) => p
            .detail
            .clone()
            .or_else(|| p.title.clone())
            .unwrap_or_default(),
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let mut end = text.len().min(RAW_DETAIL_BYTES_MAX);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        }
    };
    match status {
        404 => Error::NotFound,
        409 => Error::Conflict { detail },
        429 => Error::RateLimited {
            retry_after: retry_after.and_then(parse_retry_after),
        },
        400..=499 => {
            let (type_, field) = match problem {
                Some(p) => (p.type_.unwrap_or_default(), p.field),
                None => (String::new(), None),
            };
            Error::Invalid {
                status,
                type_,
                detail,
                field,
            }
        }
        _ => Error::Server {
            status,
            detail,
            retry_after: retry_after.and_then(parse_retry_after),
        },
    }
}

/// `Retry-After` in delta-seconds (possibly fractional). The HTTP-date form is not
/// used by weir and is ignored.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found() {
        let body =
            br#"{"type":"not_found","title":"Not Found","status":404,"detail":"no task 01H"}"#;
        assert!(matches!(
            error_from_response(404, None, body),
            Error::NotFound
        ));
    }

    #[test]
    fn conflict_carries_detail() {
        let body =
            br#"{"type":"stale_lease","title":"Conflict","status":409,"detail":"lease expired"}"#;
        match error_from_response(409, None, body) {
            Error::Conflict { detail } => assert_eq!(detail, "lease expired"),
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn rate_limited_reads_retry_after() {
        let body = br#"{"type":"rate_limited","title":"Too Many Requests","status":429}"#;
        match error_from_response(429, Some("2"), body) {
            Error::RateLimited { retry_after } => {
                assert_eq!(retry_after, Some(Duration::from_secs(2)))
            }
            e => panic!("unexpected {e:?}"),
        }
        match error_from_response(429, Some("0.25"), b"") {
            Error::RateLimited { retry_after } => {
                assert_eq!(retry_after, Some(Duration::from_millis(250)))
            }
            e => panic!("unexpected {e:?}"),
        }
        match error_from_response(429, Some("Wed, 21 Oct 2015 07:28:00 GMT"), b"") {
            Error::RateLimited { retry_after } => assert_eq!(retry_after, None),
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn invalid_carries_type_and_field() {
        let body = br#"{"type":"payload_too_large","title":"Bad Request","status":413,"detail":"payload is 2 MiB, limit 1 MiB","field":"payload","extra":1}"#;
        match error_from_response(413, None, body) {
            Error::Invalid {
                status,
                type_,
                detail,
                field,
            } => {
                assert_eq!(status, 413);
                assert_eq!(type_, "payload_too_large");
                assert_eq!(detail, "payload is 2 MiB, limit 1 MiB");
                assert_eq!(field.as_deref(), Some("payload"));
            }
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn invalid_without_detail_falls_back_to_title() {
        let body = br#"{"type":"bad_request","title":"unknown field `prio`","status":400}"#;
        match error_from_response(400, None, body) {
            Error::Invalid { detail, field, .. } => {
                assert_eq!(detail, "unknown field `prio`");
                assert_eq!(field, None);
            }
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn server_error_with_non_json_body() {
        match error_from_response(502, None, b"  <html>bad gateway</html>\n") {
            Error::Server { status, detail, .. } => {
                assert_eq!(status, 502);
                assert_eq!(detail, "<html>bad gateway</html>");
            }
            e => panic!("unexpected {e:?}"),
        }
        let long = "é".repeat(1000);
        match error_from_response(500, None, long.as_bytes()) {
            Error::Server { detail, .. } => assert!(detail.len() <= RAW_DETAIL_BYTES_MAX),
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn retry_after_of_429_503_and_507() {
        let secs = Duration::from_secs;
        for status in [429, 503, 507] {
            let e = error_from_response(status, Some("3"), b"");
            assert_eq!(e.retry_after(), Some(secs(3)), "{status}");
            assert_eq!(
                e.retry_pause(Duration::from_millis(100)),
                Duration::from_millis(3100)
            );
        }
        let e = error_from_response(503, None, b"");
        assert_eq!(e.retry_after(), None);
        assert_eq!(e.retry_pause(secs(1)), secs(1));
        // A long Retry-After is honoured only up to the cap.
        let e = error_from_response(429, Some("7200"), b"");
        assert_eq!(e.retry_after(), Some(secs(7200)));
        assert_eq!(e.retry_pause(secs(1)), RETRY_AFTER_HONOURED_MAX + secs(1));
        assert_eq!(error_from_response(400, Some("3"), b"").retry_after(), None);
    }

    #[test]
    fn transient_classification() {
        assert!(error_from_response(429, None, b"").is_transient());
        assert!(error_from_response(503, None, b"").is_transient());
        assert!(error_from_response(507, None, b"").is_transient());
        assert!(!error_from_response(500, None, b"").is_transient());
        assert!(!error_from_response(400, None, b"").is_transient());
        assert!(!error_from_response(404, None, b"").is_transient());
    }

    #[test]
    fn display_is_one_readable_line() {
        let e = error_from_response(
            400,
            None,
            br#"{"type":"invalid_queue_name","status":400,"detail":"bad name","field":"queue"}"#,
        );
        assert_eq!(
            e.to_string(),
            "invalid request (HTTP 400, invalid_queue_name): bad name [field: queue]"
        );
        assert_eq!(
            Error::RateLimited { retry_after: None }.to_string(),
            "rate limited"
        );
    }
}
