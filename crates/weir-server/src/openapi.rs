//! The OpenAPI 3.1 document of the API (`GET /openapi.json`), generated from the
//! code: every route's method and path come from its handler's `#[utoipa::path]`
//! through `api::routes`, the same list the router is built from; bodies are the
//! wire types (`wire`, `schedule`) with `ToSchema`; every problem type the server
//! answers is in [`PROBLEM_TYPES`]. This module holds what the handlers' attributes
//! share: the path and query parameters, the problem responses, the names of
//! states, and the document's top (`ApiDoc`).
//!
//! May not: describe a route by hand apart from its handler (a route is added to
//! the router and the document by one `.routes(routes!(handler))` line in
//! `api::routes`; `tests/openapi.rs` fails for any route the router serves that
//! the document lacks).

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::openapi::{self, RefOr};
use utoipa::{IntoParams, OpenApi, ToSchema};
use weir_core::Limits;

/// The top of the document: title, tags and the schemas no handler names.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "weir",
        description = "A task-dispatch server: producers enqueue tasks, workers lease and \
            settle them. Errors are `application/problem+json` (RFC 9457) with a stable \
            `type` (`urn:weir:problem:<slug>`, see the `Problem` schema). Request bodies \
            are JSON objects; unknown fields are rejected. Once the server checks API keys \
            (`--require-auth`, or a key in its store), every route but the probes, \
            `/metrics`, this document and the dashboard's pages needs \
            `Authorization: Bearer weir_<id>_<secret>` (401 without, 403 for a role or \
            queue the key lacks).",
        license(name = "MIT OR Apache-2.0")
    ),
    tags(
        (name = "producer", description = "Enqueue tasks and groups, read and cancel them."),
        (name = "worker", description = "Lease tasks and settle them."),
        (name = "queues", description = "Queues: counts, flow control, browsing, dead tasks."),
        (name = "schedules", description = "Periodic tasks."),
        (name = "operations", description = "Probes and this document."),
        (name = "keys", description = "API keys (an admin's)."),
        (name = "session", description = "The dashboard's sign-in: a key exchanged for a session cookie."),
    ),
    components(schemas(Problem, ProblemType))
)]
pub struct ApiDoc;

/// The document as the server serves it: `api::routes`'s, with the maxima this
/// server enforces (its `Limits`, some of which `weir serve` flags change) in
/// place of the defaults the attributes state.
pub fn document(limits: &Limits) -> Value {
    let (_, doc) = crate::api::routes().split_for_parts();
    let mut doc = serde_json::to_value(doc).expect("the OpenAPI document serialises");
    if let Some(Value::Object(paths)) = doc.get_mut("paths") {
        for (i, page) in crate::ui::PAGES.iter().enumerate() {
            paths.insert((*page).to_owned(), dashboard_page(page, i));
        }
        paths.insert(crate::ui::ASSETS_ROUTE.to_owned(), dashboard_asset());
    }
    // A wildcard segment (`/ui/{*path}` in axum) is a plain parameter in OpenAPI.
    if let Some(Value::Object(paths)) = doc.get_mut("paths") {
        *paths = std::mem::take(paths)
            .into_iter()
            .map(|(path, item)| (path.replace("{*", "{"), item))
            .collect();
    }
    // utoipa writes an optional body (`request_body = Option<T>`) as "T or JSON
    // null"; the API's optional bodies are absent (or empty), never `null`, and an
    // OpenAPI body is optional unless it says `required`.
    if let Some(Value::Object(paths)) = doc.get_mut("paths") {
        for op in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in op.values_mut() {
                if let Some(schema) =
                    op.pointer_mut("/requestBody/content/application~1json/schema")
                {
                    let one_of = schema.get("oneOf").and_then(Value::as_array);
                    let not_null = one_of
                        .filter(|alts| alts.len() == 2 && alts.iter().any(|a| a["type"] == "null"))
                        .and_then(|alts| alts.iter().find(|a| a["type"] != "null"))
                        .cloned();
                    if let Some(t) = not_null {
                        *schema = t;
                    }
                }
            }
        }
    }
    let maxima = [
        ("wait_ms", limits.wait_ms_max),
        ("max", limits.lease_tasks_max as u64),
    ];
    set_maxima(&mut doc, &maxima);
    doc
}

/// A dashboard page's path item: HTML, the same shell for every page.
fn dashboard_page(path: &str, i: usize) -> Value {
    serde_json::json!({ "get": {
        "tags": ["dashboard"],
        "operationId": format!("dashboard_page_{i}"),
        "summary": "A page of the web dashboard (HTML; its script reads this API)",
        "parameters": path_parameters(path),
        "responses": { "200": {
            "description": "The dashboard's page",
            "content": { "text/html; charset=utf-8": { "schema": { "type": "string" } } }
        } }
    } })
}

/// The dashboard's assets: their bytes, or a 404 problem for an unknown file or
/// another server version's path.
fn dashboard_asset() -> Value {
    let content: serde_json::Map<String, Value> = crate::ui::asset_content_types()
        .into_iter()
        .map(|t| {
            (
                t.to_owned(),
                serde_json::json!({ "schema": { "type": "string" } }),
            )
        })
        .collect();
    serde_json::json!({ "get": {
        "tags": ["dashboard"],
        "operationId": "dashboard_asset",
        "summary": "A file of the web dashboard, cached for good under its version",
        "parameters": path_parameters(crate::ui::ASSETS_ROUTE),
        "responses": {
            "200": { "description": "The file", "content": content },
            "404": {
                "description": "No such file in this server's version",
                "content": { "application/problem+json": {
                    "schema": { "$ref": "#/components/schemas/Problem" }
                } }
            }
        }
    } })
}

/// The path parameters (`{name}`, `{*name}`) of a route, as plain strings.
fn path_parameters(path: &str) -> Value {
    let names = path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|n| n.trim_start_matches('*'));
    Value::Array(
        names
            .map(|n| serde_json::json!({ "name": n, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect(),
    )
}

/// Sets `maximum` of every property and parameter named in `maxima` that has one.
fn set_maxima(v: &mut Value, maxima: &[(&str, u64)]) {
    match v {
        Value::Object(map) => {
            // A parameter: {"name": "wait_ms", "schema": {...}}.
            let named = map.get("name").and_then(Value::as_str).map(str::to_owned);
            if let (Some(name), Some(Value::Object(schema))) = (named, map.get_mut("schema")) {
                set_maximum(schema, &name, maxima);
            }
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                for (name, schema) in props.iter_mut() {
                    if let Value::Object(schema) = schema {
                        set_maximum(schema, name, maxima);
                    }
                }
            }
            map.values_mut().for_each(|v| set_maxima(v, maxima));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| set_maxima(v, maxima)),
        _ => {}
    }
}

fn set_maximum(schema: &mut serde_json::Map<String, Value>, name: &str, maxima: &[(&str, u64)]) {
    if let Some((_, max)) = maxima.iter().find(|(n, _)| *n == name) {
        if schema.contains_key("maximum") {
            schema.insert("maximum".into(), (*max).into());
        }
    }
}

/// Every problem type the server answers: its slug (the `type` is
/// `urn:weir:problem:<slug>`), its status, and when it comes.
pub const PROBLEM_TYPES: &[(&str, u16, &str)] = &[
    ("unauthorized", 401, "auth is on and the request has no API key, or one that is malformed, unknown, revoked, wrong or expired; `WWW-Authenticate: Bearer`"),
    ("forbidden", 403, "the API key lacks the role or the queue this needs"),
    ("csrf", 403, "a write made with a session cookie lacks the session's `X-CSRF-Token`"),
    ("bad-request", 400, "the request's head cannot be parsed, or it frames its body ambiguously (`Content-Length` with `Transfer-Encoding`, two lengths that disagree); the connection is closed"),
    ("invalid-field", 400, "a field, path parameter or query parameter is malformed or out of range; `field` names it"),
    ("invalid-body", 400, "the body is not JSON of the expected shape (not an object, an unknown or missing field) or could not be read"),
    ("invalid-path", 400, "a path parameter cannot be decoded (bad percent-encoding)"),
    ("not-found", 404, "no such task, group, queue, schedule or route"),
    ("method-not-allowed", 405, "the route does not take this method"),
    ("body-timeout", 408, "the body did not arrive within the server's body timeout"),
    ("conflict", 409, "the task or group is not in a state that allows this"),
    ("stale-lease", 409, "the lease is stale or unknown; nothing changed"),
    ("queue-not-empty", 409, "the queue still holds tasks; `counts` says which"),
    ("key-exists", 409, "an API key with this id exists already"),
    ("too-large", 413, "the body or one of its fields is larger than its limit"),
    ("expectation-failed", 417, "an `Expect` other than `100-continue`; the connection is closed"),
    ("head-too-large", 431, "the request line and headers exceed the server's limit (16 KiB, 100 fields); the connection is closed"),
    ("too-many-schedules", 422, "the store holds its limit of schedules"),
    ("too-many-queues", 422, "the server holds its limit of queues"),
    ("too-many-keys", 422, "the store holds its limit of API keys"),
    ("queue-full", 429, "the queue holds its limit of tasks; retry after `Retry-After`"),
    ("rate-limited", 429, "this client is over the server's ingress limit; retry after `Retry-After`"),
    ("upgrade-required", 426, "`GET /v1/workers/connect` without `Upgrade: websocket`"),
    ("bad-upgrade", 400, "a WebSocket upgrade without `Connection: Upgrade`, `Sec-WebSocket-Version: 13` or a `Sec-WebSocket-Key`"),
    ("channel-protocol", 400, "a worker channel message that breaks the protocol (sent in the channel's `error`, which then closes)"),
    ("internal", 500, "a bug or corruption; the server log has the details"),
    ("channel-unavailable", 501, "the worker channel is not served on this connection (TLS, for now)"),
    ("unsupported-transfer-coding", 501, "a transfer coding other than `chunked`; the connection is closed"),
    ("unavailable", 503, "the server is shutting down"),
    ("storage-unavailable", 503, "the store cannot write right now"),
    ("store-unreachable", 503, "the server cannot reach its store"),
    ("too-many-open-files", 503, "the server has no file descriptors left"),
    ("disk-full", 507, "the store's disk is full"),
];

/// An error (RFC 9457 problem document), served as `application/problem+json`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: `error::ApiError` writes these.
pub struct Problem {
    #[schema(rename = "type", value_type = ProblemType)]
    pub type_: String,
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What was wrong, for a human.
    pub detail: String,
    /// The offending field, path parameter or query parameter (`tasks[3].kind`).
    pub field: Option<String>,
    /// `queue-not-empty` only: the tasks the queue still holds, by state.
    pub counts: Option<crate::wire::CountsJson>,
}

/// A problem `type`: `urn:weir:problem:<slug>`, one of [`PROBLEM_TYPES`].
pub struct ProblemType;

impl utoipa::PartialSchema for ProblemType {
    fn schema() -> RefOr<openapi::schema::Schema> {
        let urns = PROBLEM_TYPES
            .iter()
            .map(|(slug, _, _)| format!("urn:weir:problem:{slug}"));
        let description = PROBLEM_TYPES
            .iter()
            .map(|(slug, status, when)| format!("- `{slug}` ({status}): {when}"))
            .collect::<Vec<_>>()
            .join("\n");
        openapi::ObjectBuilder::new()
            .schema_type(openapi::schema::Type::String)
            .enum_values(Some(urns))
            .description(Some(format!("The problem's stable type:\n{description}")))
            .into()
    }
}

impl ToSchema for ProblemType {}

/// The problem response of one status: its problem types in the description.
fn problem_response(status: u16) -> openapi::Response {
    let slugs: Vec<String> = PROBLEM_TYPES
        .iter()
        .filter(|(_, s, _)| *s == status)
        .map(|(slug, _, when)| format!("`{slug}`: {when}"))
        .collect();
    let mut builder = openapi::ResponseBuilder::new()
        .description(slugs.join("; "))
        .content(
            "application/problem+json",
            openapi::ContentBuilder::new()
                .schema(Some(openapi::Ref::from_schema_name("Problem")))
                .build(),
        );
    if matches!(status, 429 | 503 | 507) {
        builder = builder.header(
            "Retry-After",
            openapi::HeaderBuilder::new()
                .schema(
                    openapi::ObjectBuilder::new()
                        .schema_type(openapi::schema::Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some("Seconds to wait before retrying."))
                .build(),
        );
    }
    builder.build()
}

/// Declares a set of problem responses, by status, that handlers' attributes
/// name in `responses(...)`. No two sets a route names share a status.
macro_rules! problems {
    ($($(#[$doc:meta])* $name:ident => [$($status:literal),*];)*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
                [$($status),*]
                    .into_iter()
                    .map(|s: u16| (s.to_string(), RefOr::T(problem_response(s))))
                    .collect()
            }
        }
    )*};
}

problems! {
    /// What any route that reaches the store may answer: auth's refusals, the
    /// ingress limit, and the store's outages.
    Common => [401, 403, 429, 500, 503, 507];
    /// A route with a request body: it may be malformed, too slow or too large.
    BodyProblems => [400, 408, 413];
    /// A route whose path or query may be malformed.
    Invalid => [400];
    /// The worker channel's upgrade: malformed, missing, or not served here.
    UpgradeProblems => [400, 426, 501];
    /// A route naming a task, group, queue or schedule that may not exist.
    Missing => [404];
    /// A route that may find its target in the wrong state.
    Conflict => [409];
    /// A route that may create a queue or schedule past its limit.
    TooMany => [422];
    /// A route behind the ingress limit that does not reach the store.
    Limited => [429];
    /// `/readyz` when the store cannot take writes (any outage's type, always 503).
    NotReady => [503];
}

/// A task's state.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // a schema only: the wire types write `TaskState::as_str`.
pub enum TaskState {
    Scheduled,
    Pending,
    Active,
    Completed,
    Dead,
    Canceled,
}

/// A group's state.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // a schema only: the wire types write `GroupState::as_str`.
pub enum GroupState {
    Running,
    Completed,
    Failed,
    Canceled,
}

/// W3C Trace Context request headers: on an enqueue they are kept with the task
/// and handed to every worker that leases it; an invalid `traceparent` is
/// ignored, never refused.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // parameters only: handlers read the headers.
pub struct TraceHeaders {
    /// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
    pub traceparent: Option<String>,
    /// Vendor trace state, kept up to 512 bytes.
    pub tracestate: Option<String>,
}

/// A queue named in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // parameters only: handlers read them with `extract::Path`.
pub struct QueuePath {
    /// 1–128 characters of `[A-Za-z0-9_.:-]`.
    #[param(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub queue: String,
}

/// A task or group id named in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // parameters only: handlers read them with `extract::Path`.
pub struct IdPath {
    /// A ULID (26 characters of Crockford base 32).
    #[param(pattern = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$")]
    pub id: String,
}

/// A schedule named in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // parameters only: handlers read them with `extract::Path`.
pub struct SchedulePath {
    /// The schedule's name (the rules of a queue name).
    #[param(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub name: String,
}

/// `GET /v1/schedules`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: `api::list_schedules` writes it with `json!`.
pub struct SchedulesJson {
    pub schedules: Vec<crate::schedule::ScheduleJson>,
}
