//! Who is calling, and may they (SPEC §9): API keys with roles and queue
//! patterns, checked by one middleware ([`guard`]) in front of every route.
//!
//! - Auth is on when `weir serve --require-auth` is given or the store holds a
//!   key (read at most every [`KEY_CACHE_TTL_MS`]); off, every route is open, as
//!   before keys existed.
//! - Each route's rule is one line of [`RULES`], keyed by method and route
//!   template: the roles that may call it and what of its target a
//!   queue-limited key must be allowed (the queue in its path, the queue of the
//!   task or group it names, every queue, or a check its handler makes on its
//!   body). A route served without a line needs an unlimited admin key
//!   (`tests/auth.rs` fails for it).
//! - A key is looked up in a cache of at most [`KEY_CACHE_MAX`] ids, each entry
//!   (found or not) trusted for [`KEY_CACHE_TTL_MS`]: a key revoked on one server
//!   stops working on every server on the store within that time, and on the
//!   revoking server at once. Its last use is written at most every
//!   [`KEY_USE_WRITE_MS`].
//! - Credentials: `Authorization: Bearer weir_<id>_<secret>`, or the dashboard's
//!   session cookie (`session`), whose writes must carry its CSRF token.
//! - 401 (with `WWW-Authenticate: Bearer`) for no, malformed, unknown, wrong or
//!   expired credentials; 403 for a role or queue the key lacks. Failures are
//!   counted (`weir_auth_failures_total{reason}`) and logged with the key id at
//!   most, never the secret.
//!
//! May not: hold a secret longer than the request that carries it, or answer a
//! route without consulting [`RULES`].

pub mod key;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use weir_core::TaskId;
use weir_store::{Broker, StoreError};

use crate::api::{now_ms, AppState};
use crate::error::ApiError;
use key::{KeyRecord, Presented, Role, Roles};

/// How long a looked-up key (or the absence of one), and whether the store holds
/// any key, are trusted before the store is asked again.
pub const KEY_CACHE_TTL_MS: u64 = 500;
/// Most key ids cached; past it, stale entries go, then all of them.
pub const KEY_CACHE_MAX: usize = 4_096;
/// Least time between two writes of a key's last use by one server.
pub const KEY_USE_WRITE_MS: u64 = 60_000;

/// A key that passed: the principal a handler sees in its request's extensions.
#[derive(Clone, Debug)]
pub struct Principal(pub Arc<KeyEntry>);

/// A key as the cache holds it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: String,
    pub record: KeyRecord,
    roles: Roles,
    /// Its last use as this server last wrote or read it.
    used_ms: AtomicU64,
}

impl Principal {
    /// Whether the key is limited to some queues.
    pub fn limited(&self) -> bool {
        self.0.record.queues.is_some()
    }

    /// Whether the key may touch `queue`.
    pub fn allows_queue(&self, queue: &str) -> bool {
        self.0.record.allows_queue(queue)
    }

    /// A 403 unless the key may touch `queue`.
    pub fn check_queue(&self, queue: &str) -> Result<(), ApiError> {
        if self.allows_queue(queue) {
            Ok(())
        } else {
            Err(forbidden(format!(
                "key {} is not allowed on queue {queue}",
                self.0.id
            )))
        }
    }

    /// The ingress limiter's bucket for this key.
    pub fn id_bits(&self) -> u64 {
        Presented::id_bits(&self.0.id)
    }
}

/// A 403 unless the principal (if auth is on) may touch `queue`.
pub fn check_queue(who: Option<&Principal>, queue: &str) -> Result<(), ApiError> {
    who.map_or(Ok(()), |p| p.check_queue(queue))
}

/// What of a route's target a queue-limited key must be allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Nothing queue-specific (or the route is open).
    None,
    /// The `{queue}` of its path.
    Queue,
    /// The queue of the task `{id}` names.
    Task,
    /// The queue of the group `{id}` names.
    Group,
    /// Every queue: only a key without queue patterns.
    Unlimited,
    /// The handler checks the queues its body names, or filters what it lists.
    Handler,
}

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Any of these roles (an admin always); none: the route is open.
    pub roles: Roles,
    pub target: Target,
}

const fn rule(roles: &[Role], target: Target) -> Rule {
    Rule {
        roles: Roles::of(roles),
        target,
    }
}

const OPEN: Rule = rule(&[], Target::None);
const P: Role = Role::Producer;
const W: Role = Role::Worker;
const R: Role = Role::Reader;
const A: Role = Role::Admin;

/// What a route served without a line in [`RULES`] needs (none should be).
pub const UNLISTED: Rule = rule(&[A], Target::Unlimited);

/// Every route's rule, by method and route template (SPEC §9 and issue 11's
/// roles). `/metrics` is open unless `--metrics-auth` (then a reader's).
pub const RULES: &[(&str, &str, Rule)] = &[
    ("GET", "/healthz", OPEN),
    ("GET", "/readyz", OPEN),
    ("GET", "/metrics", rule(&[R], Target::None)),
    ("GET", "/openapi.json", OPEN),
    // The dashboard's shell and assets are static bytes; its data is the API's.
    ("GET", "/", OPEN),
    ("GET", "/ui", OPEN),
    ("GET", "/ui/", OPEN),
    ("GET", "/ui/queues/{queue}", OPEN),
    ("GET", "/ui/tasks/{id}", OPEN),
    ("GET", "/ui/groups/{id}", OPEN),
    ("GET", crate::ui::ASSETS_ROUTE, OPEN),
    // Signing in takes a key in its body; the session routes check their cookie.
    ("POST", "/v1/session", OPEN),
    ("GET", "/v1/session", OPEN),
    ("DELETE", "/v1/session", OPEN),
    // Producer.
    (
        "POST",
        "/v1/queues/{queue}/tasks",
        rule(&[P], Target::Queue),
    ),
    (
        "POST",
        "/v1/queues/{queue}/tasks:batch",
        rule(&[P], Target::Queue),
    ),
    ("POST", "/v1/groups", rule(&[P], Target::Handler)),
    ("GET", "/v1/tasks/{id}", rule(&[P, W, R], Target::Task)),
    ("POST", "/v1/tasks/{id}/cancel", rule(&[P], Target::Task)),
    ("GET", "/v1/groups/{id}", rule(&[P, R], Target::Group)),
    ("POST", "/v1/groups/{id}/cancel", rule(&[P], Target::Group)),
    ("GET", "/v1/queues", rule(&[P, R], Target::Handler)),
    ("GET", "/v1/queues/{queue}", rule(&[P, R], Target::Queue)),
    // Worker.
    (
        "POST",
        "/v1/queues/{queue}/lease",
        rule(&[W], Target::Queue),
    ),
    ("POST", "/v1/tasks/{id}/ack", rule(&[W], Target::Task)),
    ("POST", "/v1/tasks/{id}/fail", rule(&[W], Target::Task)),
    ("POST", "/v1/tasks/{id}/release", rule(&[W], Target::Task)),
    ("POST", "/v1/tasks/{id}/heartbeat", rule(&[W], Target::Task)),
    ("POST", "/v1/acks", rule(&[W], Target::Handler)),
    // The worker channel checks each queue its hello names.
    ("GET", "/v1/workers/connect", rule(&[W], Target::Handler)),
    // Reader.
    ("GET", "/v1/queues/{queue}/tasks", rule(&[R], Target::Queue)),
    // Schedules span queues: a queue-limited key sees none of them.
    ("GET", "/v1/schedules", rule(&[R], Target::Unlimited)),
    ("GET", "/v1/schedules/{name}", rule(&[R], Target::Unlimited)),
    // Admin.
    (
        "PUT",
        "/v1/queues/{queue}/config",
        rule(&[A], Target::Queue),
    ),
    ("DELETE", "/v1/queues/{queue}", rule(&[A], Target::Queue)),
    ("POST", "/v1/tasks/{id}/retry", rule(&[A], Target::Task)),
    ("DELETE", "/v1/tasks/{id}", rule(&[A], Target::Task)),
    (
        "POST",
        "/v1/queues/{queue}/dead/retry",
        rule(&[A], Target::Queue),
    ),
    (
        "DELETE",
        "/v1/queues/{queue}/dead",
        rule(&[A], Target::Queue),
    ),
    ("PUT", "/v1/schedules/{name}", rule(&[A], Target::Unlimited)),
    (
        "DELETE",
        "/v1/schedules/{name}",
        rule(&[A], Target::Unlimited),
    ),
    // A queue-limited admin could otherwise make itself an unlimited key.
    ("POST", "/v1/keys", rule(&[A], Target::Unlimited)),
    ("GET", "/v1/keys", rule(&[A], Target::Unlimited)),
    ("DELETE", "/v1/keys/{id}", rule(&[A], Target::Unlimited)),
];

/// The rule of `method` on the route template `path`; `None` for one without a
/// line in [`RULES`].
pub fn rule_of(method: &Method, path: &str) -> Option<Rule> {
    static TABLE: OnceLock<HashMap<(&'static str, &'static str), Rule>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let t: HashMap<_, _> = RULES.iter().map(|&(m, p, r)| ((m, p), r)).collect();
        assert_eq!(t.len(), RULES.len(), "a route has two lines in auth::RULES");
        t
    });
    // HEAD is answered by a GET route.
    let m = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    table.get(&(m, path)).copied()
}

/// A cached lookup: what the store said and when.
struct Cached<T> {
    value: T,
    at: Instant,
}

impl<T> Cached<T> {
    fn fresh(&self) -> bool {
        self.at.elapsed() < Duration::from_millis(KEY_CACHE_TTL_MS)
    }
}

/// The server's auth: its settings and its cache of keys.
pub struct Auth {
    broker: Arc<dyn Broker>,
    /// `--require-auth` (or a public bind made without `--insecure-public-bind`).
    required: bool,
    /// `--metrics-auth`: `/metrics` needs a reader's key.
    metrics_auth: bool,
    keys: Mutex<HashMap<String, Cached<Option<Arc<KeyEntry>>>>>,
    any: Mutex<Option<Cached<bool>>>,
}

/// Why a request was refused, as the failure metric's label.
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    Missing,
    Malformed,
    Unknown,
    Invalid,
    Expired,
    Forbidden,
    Csrf,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::Unknown => "unknown",
            Failure::Invalid => "invalid",
            Failure::Expired => "expired",
            Failure::Forbidden => "forbidden",
            Failure::Csrf => "csrf",
        }
    }
}

/// A refusal: why (for the metric and the log), the key id if one was given,
/// and the answer.
pub(crate) struct Refusal {
    why: Failure,
    key_id: Option<String>,
    error: Box<ApiError>,
}

fn unauthorized(why: Failure, key_id: Option<&str>, detail: impl Into<String>) -> Refusal {
    Refusal {
        why,
        key_id: key_id.map(str::to_owned),
        error: Box::new(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )),
    }
}

fn forbidden(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
}

/// The 401 with its `WWW-Authenticate`.
fn challenge(error: ApiError, why: Failure) -> Response {
    let mut resp = error.into_response();
    let value = match why {
        Failure::Missing => "Bearer realm=\"weir\"",
        _ => "Bearer realm=\"weir\", error=\"invalid_token\"",
    };
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
    resp
}

impl Auth {
    pub fn new(broker: Arc<dyn Broker>, required: bool, metrics_auth: bool) -> Auth {
        Auth {
            broker,
            required,
            metrics_auth,
            keys: Mutex::new(HashMap::new()),
            any: Mutex::new(None),
        }
    }

    /// Whether requests must carry a key: `--require-auth`, or the store holds one.
    pub async fn enabled(&self) -> Result<bool, StoreError> {
        if self.required {
            return Ok(true);
        }
        if let Some(c) = self
            .any
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            if c.fresh() {
                return Ok(c.value);
            }
        }
        let value = self.broker.has_keys().await?;
        *self.any.lock().unwrap_or_else(PoisonError::into_inner) = Some(Cached {
            value,
            at: Instant::now(),
        });
        Ok(value)
    }

    /// The key `id`, from the cache while its entry is fresh, else from the store.
    async fn lookup(&self, id: &str) -> Result<Option<Arc<KeyEntry>>, StoreError> {
        if let Some(c) = self
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            if c.fresh() {
                return Ok(c.value.clone());
            }
        }
        let entry = match self.broker.key(id).await? {
            None => None,
            Some(stored) => {
                let record = KeyRecord::from_text(&stored.record)
                    .map_err(|e| StoreError::bug(format!("API key {id}: {e}")))?;
                Some(Arc::new(KeyEntry {
                    id: stored.id,
                    roles: record.roles(),
                    record,
                    used_ms: AtomicU64::new(stored.last_used_ms.unwrap_or(0)),
                }))
            }
        };
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= KEY_CACHE_MAX && !keys.contains_key(id) {
            keys.retain(|_, c| c.fresh());
            if keys.len() >= KEY_CACHE_MAX {
                keys.clear();
            }
        }
        keys.insert(
            id.to_owned(),
            Cached {
                value: entry.clone(),
                at: Instant::now(),
            },
        );
        Ok(entry)
    }

    /// Forgets what the cache knows of `id` and whether any key exists (after
    /// this server creates or revokes a key).
    pub fn forget(&self, id: &str) {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        *self.any.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The key `presented` names, if it is the key's secret and the key is live.
    async fn verify(&self, presented: &Presented<'_>, now: u64) -> Result<Arc<KeyEntry>, Refusal> {
        let id = presented.id;
        let Some(entry) = self.lookup(id).await.map_err(store_refusal)? else {
            return Err(unauthorized(
                Failure::Unknown,
                Some(id),
                format!("no API key with id {id} (revoked, or never made)"),
            ));
        };
        if !entry.record.matches(presented) {
            return Err(unauthorized(
                Failure::Invalid,
                Some(id),
                format!("the secret is not API key {id}'s"),
            ));
        }
        live(&entry, now)?;
        Ok(entry)
    }

    /// Who a request is, from its bearer key or its session cookie (whose writes
    /// must carry the session's CSRF token).
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        method: &Method,
    ) -> Result<Principal, Refusal> {
        let now = now_ms();
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            let Some(presented) = token.and_then(Presented::parse) else {
                return Err(unauthorized(
                    Failure::Malformed,
                    None,
                    "the Authorization header is not `Bearer weir_<id>_<secret>`",
                ));
            };
            let entry = self.verify(&presented, now).await?;
            self.used(&entry, now);
            return Ok(Principal(entry));
        }
        let Some(value) = session::from_cookies(headers) else {
            return Err(unauthorized(
                Failure::Missing,
                None,
                "this route needs an API key: send `Authorization: Bearer weir_<id>_<secret>`",
            ));
        };
        let entry = self.session(value, now).await?;
        let safe = matches!(*method, Method::GET | Method::HEAD);
        if !safe {
            let given = headers
                .get(session::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !session::csrf_matches(&entry.record, value, given) {
                return Err(Refusal {
                    why: Failure::Csrf,
                    key_id: Some(entry.id.clone()),
                    error: Box::new(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "csrf",
                        "Missing CSRF token",
                        format!(
                            "a write made with a session cookie needs the session's token in {}",
                            session::CSRF_HEADER
                        ),
                    )),
                });
            }
        }
        self.used(&entry, now);
        Ok(Principal(entry))
    }

    /// The key behind a session cookie, if the cookie is genuine and both it and
    /// its key are live.
    async fn session(&self, value: &str, now: u64) -> Result<Arc<KeyEntry>, Refusal> {
        let Some(claimed) = session::claimed(value) else {
            return Err(unauthorized(
                Failure::Malformed,
                None,
                "the session cookie is not one of ours",
            ));
        };
        let id = claimed.id;
        let entry = match self.lookup(id).await.map_err(store_refusal)? {
            Some(e) if claimed.genuine(&e.record) => e,
            Some(_) => {
                return Err(unauthorized(
                    Failure::Invalid,
                    Some(id),
                    "the session cookie is not genuine",
                ))
            }
            None => {
                return Err(unauthorized(
                    Failure::Unknown,
                    Some(id),
                    format!("the session's key {id} was revoked"),
                ))
            }
        };
        if claimed.until_ms <= now {
            return Err(unauthorized(
                Failure::Expired,
                Some(id),
                "the session expired; sign in again",
            ));
        }
        live(&entry, now)?;
        Ok(entry)
    }

    /// Writes the key's last use if this server has not for a while (in the
    /// background: the request does not wait for it).
    fn used(&self, entry: &Arc<KeyEntry>, now: u64) {
        let last = entry.used_ms.load(Ordering::Relaxed);
        if now < last.saturating_add(KEY_USE_WRITE_MS)
            || entry
                .used_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let broker = self.broker.clone();
        let id = entry.id.clone();
        tokio::spawn(async move {
            if let Err(e) = broker.key_used(&id, now).await {
                tracing::debug!(key_id = %id, error = %e, "could not record an API key's last use");
            }
        });
    }

    /// Checks a key for signing in (`POST /v1/session`).
    pub(crate) async fn sign_in(&self, key: &str) -> Result<Arc<KeyEntry>, Refusal> {
        let Some(presented) = Presented::parse(key) else {
            return Err(unauthorized(
                Failure::Malformed,
                None,
                "that is not an API key",
            ));
        };
        let now = now_ms();
        let entry = self.verify(&presented, now).await?;
        self.used(&entry, now);
        Ok(entry)
    }

    /// The live session behind the request's cookie and its CSRF token.
    pub(crate) async fn current_session(
        &self,
        headers: &HeaderMap,
    ) -> Result<(Arc<KeyEntry>, String), Refusal> {
        let Some(value) = session::from_cookies(headers) else {
            return Err(unauthorized(Failure::Missing, None, "not signed in"));
        };
        let entry = self.session(value, now_ms()).await?;
        let csrf = session::csrf(&entry.record, value);
        Ok((entry, csrf))
    }
}

fn log_refusal(r: &Refusal) {
    tracing::info!(
        reason = r.why.as_str(),
        key_id = r.key_id.as_deref().unwrap_or("-"),
        "request refused: {}",
        r.error.detail
    );
}

/// A 401 for a key past its expiry.
fn live(entry: &KeyEntry, now: u64) -> Result<(), Refusal> {
    match entry.record.expires_at_ms {
        Some(at) if at <= now => Err(unauthorized(
            Failure::Expired,
            Some(&entry.id),
            format!("API key {} expired", entry.id),
        )),
        _ => Ok(()),
    }
}

/// A store that cannot say whether a key exists: its own answer (503 and the
/// like), never a guess.
fn store_refusal(e: StoreError) -> Refusal {
    Refusal {
        why: Failure::Unknown,
        key_id: None,
        error: Box::new(e.into()),
    }
}

/// The middleware: finds the route's rule, and unless it is open (or auth is
/// off) authenticates the request, checks its roles and queue, and hands the
/// handler its [`Principal`].
pub async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    // No route matched: the fallback's 404 gives nothing away.
    let Some(path) = req.extensions().get::<MatchedPath>() else {
        return next.run(req).await;
    };
    let rule = match rule_of(req.method(), path.as_str()) {
        // Open, or `/metrics` without `--metrics-auth`.
        Some(r) if r.roles == Roles::default() => return next.run(req).await,
        Some(_) if path.as_str() == "/metrics" && !s.auth.metrics_auth => {
            return next.run(req).await
        }
        Some(r) => r,
        None => UNLISTED,
    };
    match s.auth.enabled().await {
        Ok(true) => {}
        Ok(false) => return next.run(req).await,
        Err(e) => return ApiError::from(e).into_response(),
    }
    let (mut parts, body) = req.into_parts();
    let who = match s.auth.authenticate(&parts.headers, &parts.method).await {
        Ok(p) => p,
        Err(r) => return refusal_response(&s, r),
    };
    if !who.0.roles.grant(rule.roles) {
        let needed: Vec<&str> = Role::ALL
            .into_iter()
            .filter(|r| rule.roles.has(*r) || *r == Role::Admin)
            .map(Role::as_str)
            .collect();
        return refusal_response(
            &s,
            Refusal {
                why: Failure::Forbidden,
                key_id: Some(who.0.id.clone()),
                error: Box::new(forbidden(format!(
                    "key {} lacks the role this route needs (one of: {})",
                    who.0.id,
                    needed.join(", ")
                ))),
            },
        );
    }
    if who.limited() {
        let params = RawPathParams::from_request_parts(&mut parts, &s).await.ok();
        let param = |name: &str| {
            params.as_ref().and_then(|p| {
                p.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_owned())
            })
        };
        match target_allowed(&s, &who, rule.target, param).await {
            Ok(()) => {}
            // The store could not say which queue the target is in (a 503…).
            Err(e) if e.status != StatusCode::FORBIDDEN => return e.into_response(),
            Err(e) => {
                let refusal = Refusal {
                    why: Failure::Forbidden,
                    key_id: Some(who.0.id.clone()),
                    error: Box::new(e),
                };
                return refusal_response(&s, refusal);
            }
        }
    }
    let mut req = Request::from_parts(parts, body);
    req.extensions_mut().insert(who);
    next.run(req).await
}

/// Whether a queue-limited key may touch the route's target. A task or group
/// id that names nothing is let through to its handler's 404 (it gives away
/// nothing a 403 would not).
async fn target_allowed(
    s: &AppState,
    who: &Principal,
    target: Target,
    param: impl Fn(&str) -> Option<String>,
) -> Result<(), ApiError> {
    let queue = match target {
        Target::None | Target::Handler => return Ok(()),
        Target::Unlimited => {
            return Err(forbidden(format!(
                "key {} is limited to some queues; this route spans every queue",
                who.0.id
            )))
        }
        Target::Queue => param("queue"),
        Target::Task => match param("id").and_then(|id| id.parse::<TaskId>().ok()) {
            Some(id) => s.broker.get(id).await?.map(|t| t.record.queue),
            None => None,
        },
        Target::Group => match param("id").and_then(|id| id.parse::<TaskId>().ok()) {
            Some(id) => s.broker.group(id, Duration::ZERO).await?.map(|g| g.queue),
            None => None,
        },
    };
    match queue {
        Some(q) => who.check_queue(&q),
        None => Ok(()),
    }
}

/// Counts and logs a refusal, and answers it.
pub(crate) fn refusal_response(s: &AppState, r: Refusal) -> Response {
    s.metrics.auth_failed(r.why.as_str());
    log_refusal(&r);
    let why = r.why;
    if r.error.status == StatusCode::UNAUTHORIZED {
        challenge(*r.error, why)
    } else {
        r.error.into_response()
    }
}
