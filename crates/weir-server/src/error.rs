//! The one mapping from errors to HTTP responses: RFC 9457 problem documents with a
//! stable `type`. User errors are 4xx and not logged as errors; internal errors are
//! logged once with context and shown to the client as a generic 500; overload is
//! 429/503 with `Retry-After`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use weir_core::validate::InvalidInput;
use weir_store::{Outage, StoreError};

use crate::conn::BodyReadTimeout;

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable slug; the problem `type` is `urn:weir:problem:<slug>`.
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub field: Option<String>,
    pub retry_after_secs: Option<u64>,
    /// RFC 9457 extension members, added to the problem document as they are
    /// (boxed: most errors have none, and `ApiError` travels in every `Result`).
    pub extensions: Option<Box<serde_json::Map<String, serde_json::Value>>>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    type_: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extensions: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            slug,
            title,
            detail: detail.into(),
            field: None,
            retry_after_secs: None,
            extensions: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-field",
            "Invalid field",
            detail,
        )
        .field(field)
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn too_large(detail: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Too large",
            detail,
        )
    }

    /// Reading a request body of at most `limit` bytes failed: 413 if it was
    /// longer, 408 if it did not arrive within `body_read_timeout_ms`, and 400 if
    /// it could not be decoded (a malformed chunk, a connection closed mid-body).
    pub fn unreadable_body(e: &axum::Error, limit: usize) -> ApiError {
        // The cause sits somewhere down the chain of wrappers (axum's, hyper's).
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let mut innermost = cause;
        while let Some(c) = cause {
            if c.is::<http_body_util::LengthLimitError>() {
                return ApiError::too_large(format!("the request body exceeds {limit} bytes"));
            }
            if let Some(t) = c.downcast_ref::<BodyReadTimeout>() {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    "Request body timeout",
                    t.to_string(),
                );
            }
            innermost = Some(c);
            cause = c.source();
        }
        // hyper's outer errors only say "error reading a body from connection";
        // the innermost one says what was wrong with it.
        let why = innermost.map_or_else(|| e.to_string(), |c| c.to_string());
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "Invalid request body",
            format!("the request body could not be read: {why}"),
        )
    }

    /// The body was not JSON of the expected shape (serde's message names the spot).
    pub fn bad_body(e: &serde_json::Error) -> ApiError {
        let msg = e.to_string();
        let mut err = ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "Invalid request body",
            msg.clone(),
        );
        // serde names the field in "unknown field `x`" and "missing field `x`".
        for marker in ["unknown field `", "missing field `", "duplicate field `"] {
            if let Some(rest) = msg.split(marker).nth(1) {
                if let Some(name) = rest.split('`').next() {
                    err = err.field(name);
                }
            }
        }
        err
    }
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> ApiError {
        match e {
            InvalidInput::Invalid { field, detail } => {
                ApiError::invalid(field.clone(), format!("{field} {detail}"))
            }
            InvalidInput::TooLarge { field, detail } => {
                ApiError::too_large(format!("{field} {detail}")).field(field)
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::not_found("no task with this id"),
            StoreError::GroupNotFound => ApiError::not_found("no group with this id"),
            StoreError::GroupTerminal(state) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "Conflict",
                format!("the group is already {}", state.as_str()),
            ),
            StoreError::StaleLease => ApiError::new(
                StatusCode::CONFLICT,
                "stale-lease",
                "Stale lease",
                "the lease is stale or unknown: the task was re-leased, settled, or never leased with this id",
            )
            .field("lease_id"),
            StoreError::Conflict(t) => ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", t.to_string()),
            StoreError::Invalid(i) => i.into(),
            StoreError::QueueFull { queue, limit, retry_after_ms } => {
                let mut err = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "queue-full",
                    "Queue full",
                    format!("queue {queue} holds its limit of {limit} tasks; retry later"),
                );
                err.retry_after_secs = Some(retry_after_ms.div_ceil(1000).max(1));
                err
            }
            StoreError::QueueNotFound => ApiError::not_found("no queue with this name"),
            StoreError::QueueNotEmpty { queue, counts } => {
                let held: Vec<String> = weir_core::TaskState::ALL
                    .iter()
                    .filter(|s| counts.get(**s) > 0)
                    .map(|s| format!("{} {}", counts.get(*s), s.as_str()))
                    .collect();
                let mut err = ApiError::new(
                    StatusCode::CONFLICT,
                    "queue-not-empty",
                    "Queue not empty",
                    format!(
                        "queue {queue} still holds tasks ({}); only an empty queue can be deleted",
                        held.join(", ")
                    ),
                );
                let counts = serde_json::to_value(crate::wire::CountsJson::from(counts))
                    .unwrap_or_default();
                let mut ext = serde_json::Map::new();
                ext.insert("counts".into(), counts);
                err.extensions = Some(Box::new(ext));
                err
            }
            StoreError::TooManySchedules { limit } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too-many-schedules",
                "Too many schedules",
                format!("the store already holds its limit of {limit} schedules; delete one or raise the limit"),
            ),
            StoreError::KeyExists => ApiError::new(
                StatusCode::CONFLICT,
                "key-exists",
                "API key exists",
                "an API key with this id exists already",
            ),
            StoreError::TooManyKeys { limit } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too-many-keys",
                "Too many API keys",
                format!("the store already holds its limit of {limit} API keys; revoke one or raise the limit"),
            ),
            StoreError::TooManyQueues { limit } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too-many-queues",
                "Too many queues",
                format!("the server already holds its limit of {limit} queues; reuse one or raise the limit"),
            )
            .field("queue"),
            StoreError::Closed => {
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Unavailable",
                    "the server is shutting down",
                );
                err.retry_after_secs = Some(1);
                err
            }
            StoreError::Unavailable {
                cause,
                detail,
                retry_after_ms,
            } => {
                tracing::debug!(cause = cause.as_str(), error = %detail, "store unavailable");
                let (status, title, what) = match cause {
                    Outage::DiskFull => (
                        StatusCode::INSUFFICIENT_STORAGE,
                        "Disk full",
                        "the store's disk is full",
                    ),
                    Outage::TooManyOpenFiles => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Too many open files",
                        "the server has no file descriptors left",
                    ),
                    Outage::Io => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Storage unavailable",
                        "the store cannot write right now",
                    ),
                    Outage::Unreachable => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Store unreachable",
                        "the server cannot reach its store",
                    ),
                };
                let mut err = ApiError::new(
                    status,
                    cause.as_str(),
                    title,
                    format!("{what}; nothing of this request was stored, and writes resume by themselves when the cause clears: retry later"),
                );
                err.retry_after_secs = Some(retry_after_ms.div_ceil(1000).max(1));
                err
            }
            e @ StoreError::Internal { .. } => {
                tracing::error!(error = %e.chain(), "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "internal error; the server log has the details",
                )
            }
        }
    }
}

impl ApiError {
    /// The problem document (RFC 9457) this error answers with.
    pub fn problem_json(&self) -> Vec<u8> {
        serde_json::to_vec(&Problem {
            type_: format!("urn:weir:problem:{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            field: self.field.as_deref(),
            extensions: self.extensions.as_deref(),
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.problem_json();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
