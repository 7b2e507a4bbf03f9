//! Rust client for weir's HTTP API v1 (SPEC §5), used by the `weir` CLI, by its
//! load generator and by Rust workers. One [`Client`] holds a connection pool and is
//! cheap to clone. `http://` and `https://` (rustls, Mozilla's roots plus any CA
//! given to [`ClientBuilder`]); an API key goes out as a bearer token.

mod builder;
mod channel;
mod error;
mod futures;
mod types;

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use builder::{BuildError, ClientBuilder, CA_CERT_BYTES_MAX};
pub use channel::{
    ChannelReceiver, ChannelSender, Hello, Pushed, ReleaseItem, Settled, Welcome,
    CHANNEL_MESSAGE_BYTES_MAX, CHANNEL_OPEN_TIMEOUT_MS,
};
pub use error::{error_from_response, Error, RETRY_AFTER_HONOURED_MAX};
pub use futures::{GroupHandle, TaskHandle, WaitError};
pub use types::{
    AckItem, ApiKey, Counts, CreatedKey, DeadOutcome, EnqueueOptions, Enqueued, FailItem, Group,
    GroupCreated, GroupState, GroupTask, Heartbeat, KeySpec, LeaseBatch, LeasedTask, QueueConfig,
    QueueConfigPatch, QueueInfo, Schedule, ScheduleSpec, SettleOutcome, SettleResponse, Task,
    TaskPage, TaskState, UndecodableTask,
};

use types::{
    decode_lease, AckRequest, BatchRequest, BatchResponse, FailRequest, GroupRequest,
    HeartbeatWait, KeysResponse, LeaseOnly, LeaseRequest, QueuesResponse, SchedulesResponse,
    SettleRequest, StateResponse,
};

/// Longest a request that does not long-poll may take before it fails as a
/// transport error.
pub const REQUEST_TIMEOUT_MS: u64 = 60_000;
/// Added to a long-poll's `wait_ms` to form its request timeout, so a slow server
/// answers before the client gives up.
pub const LONG_POLL_SLACK_MS: u64 = 30_000;
/// How many times an idempotent GET is tried when the transport fails.
pub const GET_TRIES_MAX: u32 = 3;
/// Pause before the first retry of a GET; doubles for each further one.
pub const GET_RETRY_BACKOFF_MS: u64 = 100;
/// Longest a connection attempt may take.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// A handle on one weir server.
#[derive(Clone, Debug)]
pub struct Client {
    /// Connection pool.
    http: reqwest::Client,
    /// `http://host:port` (or `https://`), without a trailing slash.
    base: String,
    /// `Authorization: Bearer <API key>` sent with every request, if there is a
    /// key; marked sensitive, so `Debug` shows `Sensitive`, never the key.
    auth: Option<HeaderValue>,
    /// CA certificates trusted besides the built-in roots (for the worker
    /// channel's `wss://`, which does not go through reqwest).
    ca_certs: std::sync::Arc<[rustls_pki_types::CertificateDer<'static>]>,
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:7700`) with a
    /// default connection pool, no API key and the built-in TLS roots; see
    /// [`Client::builder`] for more.
    pub fn new(base_url: impl Into<String>) -> Result<Client, Error> {
        let http = Client::http_builder().build().map_err(Error::Transport)?;
        Ok(Client::with_http(base_url, http))
    }

    /// A client with an API key, a CA certificate to trust, or a pool size:
    /// `Client::builder(url).api_key(key).ca_cert_file(path).build()`.
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(base_url.into())
    }

    /// The reqwest builder `new` and [`ClientBuilder`] start from (timeouts,
    /// `TCP_NODELAY`), for callers that tune more than `ClientBuilder` offers and
    /// pass the result to `with_http`.
    pub fn http_builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
    }

    /// A client over a caller-built `reqwest::Client`.
    pub fn with_http(base_url: impl Into<String>, http: reqwest::Client) -> Client {
        let mut base = base_url.into();
        while base.ends_with('/') {
            base.pop();
        }
        Client {
            http,
            base,
            auth: None,
            ca_certs: std::sync::Arc::new([]),
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    // ---- producer ----

    /// `POST /v1/queues/{queue}/tasks`. Succeeds on 201 (created) and on 200 (the
    /// idempotency key matched an existing task; `created` is then false).
    pub async fn enqueue(&self, queue: &str, task: &EnqueueOptions) -> Result<Enqueued, Error> {
        let mut rb = self
            .request(Method::POST, &format!("/v1/queues/{}/tasks", seg(queue)))
            .json(task);
        if let Some(tp) = &task.traceparent {
            rb = rb.header("traceparent", tp);
            if let Some(ts) = &task.tracestate {
                rb = rb.header("tracestate", ts);
            }
        }
        let (status, body) = execute(rb).await?;
        let mut enqueued: Enqueued = decode(status, &body)?;
        enqueued.created = status != StatusCode::OK;
        Ok(enqueued)
    }

    /// `POST /v1/queues/{queue}/tasks:batch`: all durable or none. Returns the ids
    /// in request order.
    pub async fn enqueue_batch(
        &self,
        queue: &str,
        tasks: &[EnqueueOptions],
    ) -> Result<Vec<String>, Error> {
        let rb = self
            .request(
                Method::POST,
                &format!("/v1/queues/{}/tasks:batch", seg(queue)),
            )
            .json(&BatchRequest { tasks });
        let (status, body) = execute(rb).await?;
        let resp: BatchResponse = decode(status, &body)?;
        Ok(resp.ids)
    }

    /// `GET /v1/tasks/{id}`. A task this client cannot decode into a [`Task`] (a
    /// payload deeper than serde_json's 128 levels, say) is an [`Error::Decode`]
    /// whose `body` is the server's JSON as is.
    pub async fn get(&self, id: &str) -> Result<Task, Error> {
        self.get_json(&format!("/v1/tasks/{}", seg(id)), None).await
    }

    /// `GET /v1/tasks/{id}?wait_ms=N`: answers once the task is terminal or after
    /// `wait_ms` (at most 60 000 on the server), whichever comes first.
    pub async fn wait(&self, id: &str, wait_ms: u64) -> Result<Task, Error> {
        self.get_json(
            &format!("/v1/tasks/{}?wait_ms={wait_ms}", seg(id)),
            Some(wait_ms),
        )
        .await
    }

    /// `POST /v1/tasks/{id}/cancel`. A terminal task answers `Error::Conflict`.
    pub async fn cancel(&self, id: &str) -> Result<Task, Error> {
        let rb = self.request(Method::POST, &format!("/v1/tasks/{}/cancel", seg(id)));
        let (status, body) = execute(rb).await?;
        decode(status, &body)
    }

    // ---- groups ----

    /// `POST /v1/groups`: the tasks as one group, all durable or none.
    pub async fn create_group(
        &self,
        queue: &str,
        tasks: &[EnqueueOptions],
        fail_fast: bool,
    ) -> Result<GroupCreated, Error> {
        let rb = self
            .request(Method::POST, "/v1/groups")
            .json(&GroupRequest {
                queue,
                tasks,
                fail_fast,
            });
        let (status, body) = execute(rb).await?;
        decode(status, &body)
    }

    /// `GET /v1/groups/{id}`.
    pub async fn get_group(&self, id: &str) -> Result<Group, Error> {
        self.get_json(&format!("/v1/groups/{}", seg(id)), None)
            .await
    }

    /// `GET /v1/groups/{id}?wait_ms=N`: answers once the group is terminal or after
    /// `wait_ms` (at most 60 000).
    pub async fn wait_group(&self, id: &str, wait_ms: u64) -> Result<Group, Error> {
        self.get_json(
            &format!("/v1/groups/{}?wait_ms={wait_ms}", seg(id)),
            Some(wait_ms),
        )
        .await
    }

    /// `POST /v1/groups/{id}/cancel`. A terminal group answers `Error::Conflict`.
    pub async fn cancel_group(&self, id: &str) -> Result<Group, Error> {
        let rb = self.request(Method::POST, &format!("/v1/groups/{}/cancel", seg(id)));
        let (status, body) = execute(rb).await?;
        decode(status, &body)
    }

    // ---- worker ----

    /// `POST /v1/queues/{queue}/lease`: up to `max` tasks, waiting up to `wait_ms`
    /// for the first. An empty batch means nothing came in time.
    ///
    /// Tasks are decoded one by one: one this client cannot decode is set apart in
    /// [`LeaseBatch::undecodable`] with its id and lease id, and the others come
    /// through. The caller holds its lease and should fail it (without retry).
    pub async fn lease(
        &self,
        queue: &str,
        max: u32,
        wait_ms: u64,
        worker: Option<&str>,
    ) -> Result<LeaseBatch, Error> {
        let rb = self
            .request(Method::POST, &format!("/v1/queues/{}/lease", seg(queue)))
            .timeout(Duration::from_millis(wait_ms + LONG_POLL_SLACK_MS))
            .json(&LeaseRequest {
                max,
                wait_ms,
                worker,
            });
        let (status, body) = execute(rb).await?;
        decode_lease(&body).map_err(|source| Error::Decode {
            status: status.as_u16(),
            source,
            body,
        })
    }

    /// `POST /v1/tasks/{id}/ack`.
    pub async fn ack(&self, id: &str, lease_id: &str, result: &Value) -> Result<(), Error> {
        let rb = self
            .request(Method::POST, &format!("/v1/tasks/{}/ack", seg(id)))
            .json(&AckRequest { lease_id, result });
        execute(rb).await.map(drop)
    }

    /// `POST /v1/tasks/{id}/fail`. Returns the task's next state (`scheduled` for
    /// a retry, or `dead`; `canceled` if it was canceled while running).
    pub async fn fail(
        &self,
        id: &str,
        lease_id: &str,
        error: &str,
        retry: bool,
    ) -> Result<TaskState, Error> {
        let rb = self
            .request(Method::POST, &format!("/v1/tasks/{}/fail", seg(id)))
            .json(&FailRequest {
                lease_id,
                error,
                retry,
            });
        let (status, body) = execute(rb).await?;
        let resp: StateResponse = decode(status, &body)?;
        Ok(resp.state)
    }

    /// `POST /v1/tasks/{id}/release`: back to `pending` without using an attempt.
    pub async fn release(&self, id: &str, lease_id: &str) -> Result<(), Error> {
        let rb = self
            .request(Method::POST, &format!("/v1/tasks/{}/release", seg(id)))
            .json(&LeaseOnly { lease_id });
        execute(rb).await.map(drop)
    }

    /// `POST /v1/tasks/{id}/heartbeat`: extends the lease.
    pub async fn heartbeat(&self, id: &str, lease_id: &str) -> Result<Heartbeat, Error> {
        let rb = self
            .request(Method::POST, &format!("/v1/tasks/{}/heartbeat", seg(id)))
            .json(&LeaseOnly { lease_id });
        let (status, body) = execute(rb).await?;
        decode(status, &body)
    }

    /// `POST /v1/tasks/{id}/heartbeat` with `wait_ms`: extends the lease, then waits
    /// up to `wait_ms` for a cancel request (answering at once when one is made),
    /// and extends the lease again.
    pub async fn heartbeat_wait(
        &self,
        id: &str,
        lease_id: &str,
        wait_ms: u64,
    ) -> Result<Heartbeat, Error> {
        let rb = self
            .request(Method::POST, &format!("/v1/tasks/{}/heartbeat", seg(id)))
            .timeout(Duration::from_millis(wait_ms + LONG_POLL_SLACK_MS))
            .json(&HeartbeatWait { lease_id, wait_ms });
        let (status, body) = execute(rb).await?;
        decode(status, &body)
    }

    /// `POST /v1/acks`: many acks and fails in one request, with an outcome per
    /// item.
    pub async fn settle(
        &self,
        acks: &[AckItem],
        fails: &[FailItem],
    ) -> Result<SettleResponse, Error> {
        let rb = self
            .request(Method::POST, "/v1/acks")
            .json(&SettleRequest { acks, fails });
        let (status, body) = execute(rb).await?;
        decode(status, &body)
    }

    // ---- queues ----

    /// `GET /v1/queues`.
    pub async fn queues(&self) -> Result<Vec<QueueInfo>, Error> {
        let resp: QueuesResponse = self.get_json("/v1/queues", None).await?;
        Ok(resp.queues)
    }

    /// `DELETE /v1/queues/{queue}`: removes an empty queue. A queue that still holds
    /// tasks (finished ones included) is `Error::Conflict` with its counts in the
    /// detail; an unknown one `Error::NotFound`.
    pub async fn delete_queue(&self, name: &str) -> Result<(), Error> {
        let rb = self.request(Method::DELETE, &format!("/v1/queues/{}", seg(name)));
        execute(rb).await.map(drop)
    }

    /// `GET /v1/queues/{queue}`: one queue with its config.
    pub async fn queue(&self, name: &str) -> Result<QueueInfo, Error> {
        self.get_json(&format!("/v1/queues/{}", seg(name)), None)
            .await
    }

    /// `PUT /v1/queues/{queue}/config`: changes the queue's flow-control settings
    /// (creating the queue if needed) and answers the whole config.
    pub async fn configure_queue(
        &self,
        name: &str,
        patch: &QueueConfigPatch,
    ) -> Result<QueueConfig, Error> {
        let rb = self
            .request(Method::PUT, &format!("/v1/queues/{}/config", seg(name)))
            .json(patch);
        let (status, body) = execute(rb).await?;
        decode(status, &body)
    }

    // ---- browsing and dead tasks ----

    /// `GET /v1/queues/{queue}/tasks?state=…&limit=…&cursor=…`: one page of the
    /// queue's tasks in `state` (pending in dispatch order, the others newest
    /// first); `cursor` is the previous page's `next_cursor`.
    pub async fn list_tasks(
        &self,
        queue: &str,
        state: TaskState,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<TaskPage, Error> {
        let mut path = format!(
            "/v1/queues/{}/tasks?state={}&limit={limit}",
            seg(queue),
            state.as_str()
        );
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={}", seg(c)));
        }
        self.get_json(&path, None).await
    }

    /// `GET /v1/queues/{queue}/tasks?idempotency_key=…`: the task of the queue that
    /// holds the key, if any (without payload or result).
    pub async fn find_by_key(&self, queue: &str, key: &str) -> Result<Option<Task>, Error> {
        let page: TaskPage = self
            .get_json(
                &format!(
                    "/v1/queues/{}/tasks?idempotency_key={}",
                    seg(queue),
                    seg(key)
                ),
                None,
            )
            .await?;
        Ok(page.tasks.into_iter().next())
    }

    /// `POST /v1/tasks/{id}/retry`: a dead or canceled task back to pending.
    pub async fn retry(&self, id: &str) -> Result<Task, Error> {
        let rb = self.request(Method::POST, &format!("/v1/tasks/{}/retry", seg(id)));
        let (status, body) = execute(rb).await?;
        decode(status, &body)
    }

    /// `DELETE /v1/tasks/{id}`: removes a finished task now.
    pub async fn delete_task(&self, id: &str) -> Result<(), Error> {
        let rb = self.request(Method::DELETE, &format!("/v1/tasks/{}", seg(id)));
        execute(rb).await.map(drop)
    }

    /// `POST /v1/queues/{queue}/dead/retry`: the dead tasks `ids`, or every dead
    /// task of the queue, back to pending.
    pub async fn retry_dead(
        &self,
        queue: &str,
        ids: Option<&[String]>,
    ) -> Result<DeadOutcome, Error> {
        let rb = self
            .request(
                Method::POST,
                &format!("/v1/queues/{}/dead/retry", seg(queue)),
            )
            .json(&serde_json::json!({ "ids": ids }));
        let (status, body) = execute(rb).await?;
        decode(status, &body)
    }

    /// `DELETE /v1/queues/{queue}/dead`: removes the dead tasks `ids`, or every
    /// dead task of the queue.
    pub async fn purge_dead(
        &self,
        queue: &str,
        ids: Option<&[String]>,
    ) -> Result<DeadOutcome, Error> {
        let rb = self
            .request(Method::DELETE, &format!("/v1/queues/{}/dead", seg(queue)))
            .json(&serde_json::json!({ "ids": ids }));
        let (status, body) = execute(rb).await?;
        decode(status, &body)
    }

    // ---- schedules ----

    /// `PUT /v1/schedules/{name}`: creates or replaces a periodic task.
    pub async fn put_schedule(&self, name: &str, spec: &ScheduleSpec) -> Result<Schedule, Error> {
        let rb = self
            .request(Method::PUT, &format!("/v1/schedules/{}", seg(name)))
            .json(spec);
        let (status, body) = execute(rb).await?;
        decode(status, &body)
    }

    /// `GET /v1/schedules/{name}` (`Error::NotFound` if there is none).
    pub async fn schedule(&self, name: &str) -> Result<Schedule, Error> {
        self.get_json(&format!("/v1/schedules/{}", seg(name)), None)
            .await
    }

    /// `GET /v1/schedules`.
    pub async fn schedules(&self) -> Result<Vec<Schedule>, Error> {
        let resp: SchedulesResponse = self.get_json("/v1/schedules", None).await?;
        Ok(resp.schedules)
    }

    /// `DELETE /v1/schedules/{name}` (`Error::NotFound` if there is none).
    pub async fn delete_schedule(&self, name: &str) -> Result<(), Error> {
        let rb = self.request(Method::DELETE, &format!("/v1/schedules/{}", seg(name)));
        execute(rb).await.map(drop)
    }

    // ---- API keys (an admin key's) ----

    /// `POST /v1/keys`: makes a key. The answer's `key` is the only time its
    /// text is shown.
    pub async fn create_key(&self, spec: &KeySpec) -> Result<CreatedKey, Error> {
        let rb = self.request(Method::POST, "/v1/keys").json(spec);
        let (status, body) = execute(rb).await?;
        decode(status, &body)
    }

    /// `GET /v1/keys`: every key, never a secret.
    pub async fn keys(&self) -> Result<Vec<ApiKey>, Error> {
        let resp: KeysResponse = self.get_json("/v1/keys", None).await?;
        Ok(resp.keys)
    }

    /// `DELETE /v1/keys/{id}`: revokes a key (`Error::NotFound` if there is none).
    pub async fn revoke_key(&self, id: &str) -> Result<(), Error> {
        let rb = self.request(Method::DELETE, &format!("/v1/keys/{}", seg(id)));
        execute(rb).await.map(drop)
    }

    // ---- plumbing ----

    fn request(&self, method: Method, path_and_query: &str) -> RequestBuilder {
        let rb = self
            .http
            .request(method, format!("{}{}", self.base, path_and_query))
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
        match &self.auth {
            Some(auth) => rb.header(AUTHORIZATION, auth.clone()),
            None => rb,
        }
    }

    /// A GET, retried with a short doubling backoff when the transport fails (it
    /// is idempotent, so a retry cannot do harm). `long_poll_ms` widens the request
    /// timeout for `wait_ms` requests.
    async fn get_json<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
        long_poll_ms: Option<u64>,
    ) -> Result<T, Error> {
        let mut backoff = Duration::from_millis(GET_RETRY_BACKOFF_MS);
        let mut tries = 0;
        loop {
            tries += 1;
            let mut rb = self.request(Method::GET, path_and_query);
            if let Some(wait_ms) = long_poll_ms {
                rb = rb.timeout(Duration::from_millis(wait_ms + LONG_POLL_SLACK_MS));
            }
            match execute(rb).await {
                Ok((status, body)) => return decode(status, &body),
                Err(Error::Transport(_)) if tries < GET_TRIES_MAX => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Sends a request; a success answers its status and body, anything else the
/// mapped [`Error`].
async fn execute(rb: RequestBuilder) -> Result<(StatusCode, Bytes), Error> {
    let resp = rb.send().await.map_err(Error::Transport)?;
    let status = resp.status();
    if status.is_success() {
        let body = resp.bytes().await.map_err(Error::Transport)?;
        return Ok((status, body));
    }
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The body only adds detail to an error we already have; losing it to a broken
    // connection is not worth a different error.
    let body = resp.bytes().await.unwrap_or_default();
    Err(error_from_response(
        status.as_u16(),
        retry_after.as_deref(),
        &body,
    ))
}

/// Reads a success body; one this client cannot decode is kept in the error.
fn decode<T: DeserializeOwned>(status: StatusCode, body: &Bytes) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|source| Error::Decode {
        status: status.as_u16(),
        source,
        body: body.clone(),
    })
}

/// Percent-encodes a path segment. Queue names and ids are plain ASCII on a
/// well-behaved caller, so this rarely allocates; it keeps a stray `/` or `?` in
/// user input from changing the route.
fn seg(s: &str) -> Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'~');
    if s.bytes().all(plain) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("emails.high:1"), "emails.high:1");
        assert_eq!(seg("a/b?c"), "a%2Fb%3Fc");
        assert_eq!(seg("é"), "%C3%A9");
    }

    #[test]
    fn base_url_loses_trailing_slash() {
        let c = Client::new("http://127.0.0.1:7700//").unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:7700");
    }
}
