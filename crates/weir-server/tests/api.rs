//! HTTP integration tests: a real server on a free port (port 0) over a temporary
//! data directory, driven by a plain HTTP client, covering every endpoint and each
//! error path.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use weir_server::ServeConfig;

mod common;

struct Server {
    base: String,
    http: reqwest::Client,
    server: common::TestServer,
}

impl Server {
    async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut ServeConfig)) -> Server {
        let server = common::TestServer::start(tweak).await;
        Server {
            base: server.base.clone(),
            http: reqwest::Client::new(),
            server,
        }
    }

    async fn stop(self) {
        self.server.stop().await;
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn raw(
        &self,
        path: &str,
        body: &'static str,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let v = resp.json().await.unwrap_or(Value::Null);
        (status, headers, v)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call("GET", path, None).await
    }

    async fn delete_queue(&self, queue: &str) -> (StatusCode, Value) {
        self.call("DELETE", &format!("/v1/queues/{queue}"), None)
            .await
    }

    async fn enqueue(&self, queue: &str, body: Value) -> String {
        let (s, v) = self.post(&format!("/v1/queues/{queue}/tasks"), body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    async fn lease(&self, queue: &str, body: Value) -> Vec<Value> {
        let (s, v) = self.post(&format!("/v1/queues/{queue}/lease"), body).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["tasks"].as_array().unwrap().clone()
    }
}

fn problem(v: &Value, slug: &str) {
    assert_eq!(v["type"], format!("urn:weir:problem:{slug}"), "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
}

#[tokio::test]
async fn enqueue_lease_ack_get_result() {
    let s = Server::start().await;
    let (st, v) = s
        .post("/v1/queues/emails/tasks", json!({"payload": {"to": "a@b.c"}, "kind": "email.send", "priority": 3, "max_attempts": 2, "timeout_ms": 5000}))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(v["state"], "pending");
    let id = v["id"].as_str().unwrap().to_owned();

    let tasks = s
        .lease("emails", json!({"max": 10, "wait_ms": 0, "worker": "w1"}))
        .await;
    assert_eq!(tasks.len(), 1);
    let t = &tasks[0];
    assert_eq!(t["id"], id.as_str());
    assert_eq!(t["kind"], "email.send");
    assert_eq!(t["payload"], json!({"to": "a@b.c"}));
    assert_eq!(t["attempt"], 1);
    assert_eq!(t["timeout_ms"], 5000);
    assert!(t["lease_expires_at"].as_str().is_some());
    let lease_id = t["lease_id"].as_str().unwrap();

    let (st, v) = s.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["state"], "active");
    assert_eq!(v["worker"], "w1");

    let (st, v) = s
        .post(
            &format!("/v1/tasks/{id}/heartbeat"),
            json!({"lease_id": lease_id}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["cancel_requested"], false);

    let (st, v) = s
        .post(
            &format!("/v1/tasks/{id}/ack"),
            json!({"lease_id": lease_id, "result": {"sent": true}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "completed");

    let (st, v) = s.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(st, StatusCode::OK);
    for field in [
        "id",
        "queue",
        "kind",
        "state",
        "attempt",
        "max_attempts",
        "payload",
        "result",
        "last_error",
        "created_at",
    ] {
        assert!(v.get(field).is_some(), "missing {field} in {v}");
    }
    assert_eq!(v["state"], "completed");
    assert_eq!(v["result"], json!({"sent": true}));
    assert_eq!(v["queue"], "emails");
    assert_eq!(v["max_attempts"], 2);
    assert_eq!(v["priority"], 3);

    let (st, v) = s.get("/v1/queues").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["queues"][0]["name"], "emails");
    assert_eq!(v["queues"][0]["counts"]["completed"], 1);
    // The totals a client takes rates from, and the age of the oldest pending task.
    let totals = &v["queues"][0]["totals"];
    assert_eq!(totals["enqueued"], 1, "{v}");
    assert_eq!(totals["leased"], 1, "{v}");
    assert_eq!(totals["completed"], 1, "{v}");
    for zero in ["dead", "canceled", "retried", "lease_expired"] {
        assert_eq!(totals[zero], 0, "{zero} in {v}");
    }
    assert_eq!(v["queues"][0]["oldest_pending_age_ms"], Value::Null, "{v}");
    let (st, v) = s.get("/v1/queues/emails").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["counts"]["pending"], 0);
    assert_eq!(v["totals"]["completed"], 1, "{v}");
    s.post("/v1/queues/emails/tasks", json!({"payload": 1}))
        .await;
    let (_, v) = s.get("/v1/queues/emails").await;
    assert!(v["oldest_pending_age_ms"].as_u64().is_some(), "{v}");
    let (st, _) = s.get("/v1/queues/nope").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn batch_enqueue_and_batch_settle() {
    let s = Server::start().await;
    let tasks: Vec<Value> = (0..5).map(|i| json!({"payload": i})).collect();
    let (st, v) = s
        .post("/v1/queues/b/tasks:batch", json!({"tasks": tasks}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["ids"].as_array().unwrap().len(), 5);

    let leased = s.lease("b", json!({"max": 5})).await;
    assert_eq!(leased.len(), 5);
    let acks: Vec<Value> = leased[..3]
        .iter()
        .map(|t| json!({"id": t["id"], "lease_id": t["lease_id"], "result": t["payload"]}))
        .collect();
    let mut fails: Vec<Value> = leased[3..]
        .iter()
        .map(|t| json!({"id": t["id"], "lease_id": t["lease_id"], "error": "nope", "retry": false}))
        .collect();
    fails[1]["lease_id"] = json!("00000000000000000000000000000000");
    let (st, v) = s
        .post("/v1/acks", json!({"acks": acks, "fails": fails}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(
        v["acks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["ok"] == true && a["state"] == "completed"),
        "{v}"
    );
    assert_eq!(v["fails"][0]["state"], "dead");
    assert_eq!(v["fails"][1]["ok"], false);
    assert_eq!(v["fails"][1]["status"], 409);
    s.stop().await;
}

#[tokio::test]
async fn batch_is_all_or_nothing() {
    let s = Server::start().await;
    let (st, v) = s
        .post(
            "/v1/queues/aon/tasks:batch",
            json!({"tasks": [{"payload": 1}, {"payload": 2, "max_attempts": 0}]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["field"], "tasks[1].max_attempts");
    let (_, v) = s.get("/v1/queues").await;
    assert!(
        v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["name"] != "aon"),
        "{v}"
    );
    let (st, v) = s
        .post("/v1/queues/aon/tasks:batch", json!({"tasks": []}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["field"], "tasks");
    let big: Vec<Value> = (0..1001).map(|i| json!({"payload": i})).collect();
    let (st, _) = s
        .post("/v1/queues/aon/tasks:batch", json!({"tasks": big}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test]
async fn error_paths() {
    let s = Server::start_with(|c| c.limits.payload_bytes_max = 1024).await;
    // Bad JSON.
    let (st, h, v) = s.raw("/v1/queues/q/tasks", "{not json").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(h["content-type"], "application/problem+json");
    problem(&v, "invalid-body");
    // Unknown field.
    let (st, v) = s
        .post("/v1/queues/q/tasks", json!({"payload": 1, "priorty": 2}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    problem(&v, "invalid-body");
    assert_eq!(v["field"], "priorty");
    // Missing payload.
    let (st, v) = s.post("/v1/queues/q/tasks", json!({"kind": "x"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["field"], "payload");
    // Payload too large.
    let (st, v) = s
        .post("/v1/queues/q/tasks", json!({"payload": "x".repeat(2000)}))
        .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    problem(&v, "too-large");
    assert_eq!(v["field"], "payload");
    // Body far beyond any limit.
    let (st, v) = s
        .post(
            "/v1/queues/q/tasks",
            json!({"payload": "x".repeat(200_000)}),
        )
        .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    problem(&v, "too-large");
    // Bad queue name (too long, bad characters).
    let long = "q".repeat(129);
    let (st, v) = s
        .post(&format!("/v1/queues/{long}/tasks"), json!({"payload": 1}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["field"], "queue");
    let (st, v) = s
        .post("/v1/queues/a%20b/tasks", json!({"payload": 1}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["field"], "queue");
    // Bad kind, delay and run_at together, bad times.
    let (st, v) = s
        .post("/v1/queues/q/tasks", json!({"payload": 1, "kind": "a b"}))
        .await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("kind"))
    );
    let (st, v) = s
        .post(
            "/v1/queues/q/tasks",
            json!({"payload": 1, "delay_ms": 5, "run_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("run_at"))
    );
    let (st, v) = s
        .post(
            "/v1/queues/q/tasks",
            json!({"payload": 1, "deadline": "tomorrow"}),
        )
        .await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("deadline"))
    );
    let (st, v) = s
        .post("/v1/queues/q/tasks", json!({"payload": 1, "timeout_ms": 0}))
        .await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("timeout_ms"))
    );
    // Nothing of the above was created.
    let (_, v) = s.get("/v1/queues").await;
    assert_eq!(v["queues"], json!([]));

    // Unknown and malformed task ids.
    let (st, v) = s.get("/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    problem(&v, "not-found");
    let (st, v) = s.get("/v1/tasks/nope").await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("id"))
    );
    let (st, _) = s
        .post("/v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV/cancel", json!({}))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Wait too long.
    let id = s.enqueue("q", json!({"payload": 1})).await;
    let (st, v) = s.get(&format!("/v1/tasks/{id}?wait_ms=60001")).await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("wait_ms"))
    );
    let (st, v) = s
        .post("/v1/queues/q/lease", json!({"wait_ms": 60001}))
        .await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("wait_ms"))
    );
    let (st, v) = s.post("/v1/queues/q/lease", json!({"max": 1001})).await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("max"))
    );
    let (st, v) = s.post("/v1/queues/q/lease", json!({"max": 0})).await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("max"))
    );
    let (st, _) = s
        .post("/v1/queues/q/lease", json!({"max": 1, "wiat_ms": 5}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Stale leases: on ack, fail, release and heartbeat; nothing changes.
    let t = s.lease("q", json!({})).await.remove(0);
    let stale = json!({"lease_id": "0123456789abcdef0123456789abcdef"});
    for action in ["ack", "fail", "release", "heartbeat"] {
        let (st, v) = s
            .post(&format!("/v1/tasks/{id}/{action}"), stale.clone())
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{action}: {v}");
        problem(&v, "stale-lease");
    }
    let (st, v) = s
        .post(&format!("/v1/tasks/{id}/ack"), json!({"lease_id": "zz"}))
        .await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("lease_id"))
    );
    let (_, v) = s.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(v["state"], "active");
    // Ack, then cancel of a terminal task: 409.
    let (st, _) = s
        .post(
            &format!("/v1/tasks/{id}/ack"),
            json!({"lease_id": t["lease_id"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = s.post(&format!("/v1/tasks/{id}/cancel"), json!({})).await;
    assert_eq!(st, StatusCode::CONFLICT);
    problem(&v, "conflict");
    // Unknown route.
    let (st, v) = s.get("/v1/nothing").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    problem(&v, "not-found");
    s.stop().await;
}

#[tokio::test]
async fn full_queue_answers_429_with_retry_after() {
    let s = Server::start_with(|c| c.limits.queue_tasks_max = 2).await;
    s.enqueue("full", json!({"payload": 1})).await;
    let (st, _) = s
        .post(
            "/v1/queues/full/tasks:batch",
            json!({"tasks": [{"payload": 2}, {"payload": 3}]}),
        )
        .await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    let resp = s
        .http
        .post(format!("{}/v1/queues/full/tasks", s.base))
        .json(&json!({"payload": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = s
        .http
        .post(format!("{}/v1/queues/full/tasks", s.base))
        .json(&json!({"payload": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().get("retry-after").is_some());
    let v: Value = resp.json().await.unwrap();
    problem(&v, "queue-full");
    let (_, v) = s.get("/v1/queues/full").await;
    assert_eq!(v["counts"]["pending"], 2);
    s.stop().await;
}

#[tokio::test]
async fn idempotency_key_returns_first_task_with_200() {
    let s = Server::start().await;
    let body = json!({"payload": 1, "idempotency_key": "order-7"});
    let (st, first) = s.post("/v1/queues/i/tasks", body.clone()).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, again) = s.post("/v1/queues/i/tasks", body).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(first["id"], again["id"]);
    assert_eq!(again["state"], "pending");
    s.stop().await;
}

#[tokio::test]
async fn lease_long_poll_returns_a_task_enqueued_after_it() {
    let s = Server::start().await;
    let base = s.base.clone();
    let http = s.http.clone();
    let waiter = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let v: Value = http
            .post(format!("{base}/v1/queues/lp/lease"))
            .json(&json!({"max": 1, "wait_ms": 30000}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (v, started.elapsed())
    });
    let id = s.enqueue("lp", json!({"payload": "wake"})).await;
    let (v, took) = waiter.await.unwrap();
    assert_eq!(v["tasks"][0]["id"], id.as_str());
    assert!(
        took < Duration::from_secs(30),
        "the lease waited out its wait_ms"
    );
    s.stop().await;
}

#[tokio::test]
async fn get_wait_returns_when_the_task_ends() {
    let s = Server::start().await;
    let id = s.enqueue("gw", json!({"payload": 1})).await;
    let base = s.base.clone();
    let http = s.http.clone();
    let path = format!("{base}/v1/tasks/{id}?wait_ms=30000");
    let waiter = tokio::spawn(async move {
        http.get(path)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    let t = s.lease("gw", json!({})).await.remove(0);
    let (st, _) = s
        .post(
            &format!("/v1/tasks/{id}/ack"),
            json!({"lease_id": t["lease_id"], "result": 7}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let v = waiter.await.unwrap();
    assert_eq!(v["state"], "completed");
    assert_eq!(v["result"], 7);
    // A short wait on a task that does not end answers its current view.
    let id2 = s.enqueue("gw", json!({"payload": 2})).await;
    let (st, v) = s.get(&format!("/v1/tasks/{id2}?wait_ms=20")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["state"], "pending");
    s.stop().await;
}

#[tokio::test]
async fn lease_expiry_releases_then_kills() {
    let s = Server::start().await;
    let id = s
        .enqueue(
            "exp",
            json!({"payload": 1, "timeout_ms": 30, "max_attempts": 2}),
        )
        .await;
    let first = s.lease("exp", json!({})).await.remove(0);
    assert_eq!(first["attempt"], 1);
    // Never acked: it comes back once its lease expires, with the attempt counted.
    let second = s.lease("exp", json!({"wait_ms": 10000})).await.remove(0);
    assert_eq!(second["id"], id.as_str());
    assert_eq!(second["attempt"], 2);
    let (_, v) = s.get(&format!("/v1/tasks/{id}?wait_ms=10000")).await;
    assert_eq!(v["state"], "dead");
    assert_eq!(v["attempt"], 2);
    assert!(v["last_error"].as_str().unwrap().contains("lease"));
    s.stop().await;
}

#[tokio::test]
async fn fail_with_retry_then_dead_and_release() {
    let s = Server::start().await;
    let id = s
        .enqueue("f", json!({"payload": 1, "max_attempts": 2}))
        .await;
    let t = s.lease("f", json!({})).await.remove(0);
    let (st, v) = s
        .post(
            &format!("/v1/tasks/{id}/fail"),
            json!({"lease_id": t["lease_id"], "error": "flaky", "retry": true}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["state"], "scheduled");
    let t = s.lease("f", json!({"wait_ms": 10000})).await.remove(0);
    assert_eq!(t["attempt"], 2);
    // Release: back to pending, attempt not counted.
    let (st, v) = s
        .post(
            &format!("/v1/tasks/{id}/release"),
            json!({"lease_id": t["lease_id"]}),
        )
        .await;
    assert_eq!((st, v["state"].clone()), (StatusCode::OK, json!("pending")));
    let t = s.lease("f", json!({})).await.remove(0);
    assert_eq!(t["attempt"], 2);
    let (_, v) = s
        .post(
            &format!("/v1/tasks/{id}/fail"),
            json!({"lease_id": t["lease_id"], "error": "still"}),
        )
        .await;
    assert_eq!(v["state"], "dead");
    let (_, v) = s.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(v["last_error"], "still");
    s.stop().await;
}

#[tokio::test]
async fn cancel_queued_and_running() {
    let s = Server::start().await;
    let queued = s
        .enqueue("c", json!({"payload": 1, "delay_ms": 3600000}))
        .await;
    let (_, v) = s.get(&format!("/v1/tasks/{queued}")).await;
    assert_eq!(v["state"], "scheduled");
    let (st, v) = s
        .post(&format!("/v1/tasks/{queued}/cancel"), json!({}))
        .await;
    assert_eq!(
        (st, v["state"].clone()),
        (StatusCode::OK, json!("canceled"))
    );

    let running = s.enqueue("c", json!({"payload": 2})).await;
    let t = s.lease("c", json!({})).await.remove(0);
    let (st, v) = s
        .post(&format!("/v1/tasks/{running}/cancel"), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["state"], "active");
    assert_eq!(v["cancel_requested"], true);
    let (_, v) = s
        .post(
            &format!("/v1/tasks/{running}/heartbeat"),
            json!({"lease_id": t["lease_id"]}),
        )
        .await;
    assert_eq!(v["cancel_requested"], true);
    let (_, v) = s
        .post(
            &format!("/v1/tasks/{running}/ack"),
            json!({"lease_id": t["lease_id"], "result": 1}),
        )
        .await;
    assert_eq!(v["state"], "canceled");
    let (_, v) = s.get("/v1/queues/c").await;
    assert_eq!(v["counts"]["canceled"], 2);
    s.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let s = Server::start().await;
    let resp = s
        .http
        .get(format!("{}/healthz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = s
        .http
        .get(format!("{}/readyz", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn shutdown_answers_open_long_polls_at_once() {
    let s = Server::start().await;
    let base = s.base.clone();
    let http = s.http.clone();
    let waiter = tokio::spawn(async move {
        http.post(format!("{base}/v1/queues/sd/lease"))
            .json(&json!({"wait_ms": 60000}))
            .send()
            .await
    });
    // Make sure the long-poll is in: a request after it on the same server answers.
    let (st, _) = s.get("/v1/queues").await;
    assert_eq!(st, StatusCode::OK);
    let started = tokio::time::Instant::now();
    s.stop().await;
    let _ = waiter.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test]
async fn groups_fail_fast_and_cancel() {
    let s = Server::start().await;
    let (st, v) = s
        .post("/v1/groups", json!({"queue": "grp", "fail_fast": true, "tasks": [{"payload": 1}, {"payload": 2}, {"payload": 3}]}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let gid = v["id"].as_str().unwrap().to_owned();
    let ids: Vec<String> = v["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    let (_, v) = s.get(&format!("/v1/groups/{gid}")).await;
    assert_eq!(v["state"], "running");
    assert_eq!(v["counts"]["pending"], 3);
    // One member runs, one fails for good: the group fails and the rest are canceled.
    let leased = s.lease("grp", json!({"max": 2})).await;
    let (st, _) = s
        .post(
            &format!("/v1/tasks/{}/fail", leased[0]["id"].as_str().unwrap()),
            json!({"lease_id": leased[0]["lease_id"], "error": "no", "retry": false}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, v) = s.get(&format!("/v1/groups/{gid}?wait_ms=10000")).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["counts"]["dead"], 1);
    assert_eq!(v["counts"]["canceled"], 1);
    assert_eq!(v["counts"]["active"], 1);
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(
        tasks
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>(),
        ids
    );
    let (st, v) = s.post(&format!("/v1/groups/{gid}/cancel"), json!({})).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");

    // Cancel a running group.
    let (_, v) = s
        .post(
            "/v1/groups",
            json!({"queue": "grp2", "tasks": [{"payload": 1}, {"payload": 2}]}),
        )
        .await;
    let gid2 = v["id"].as_str().unwrap().to_owned();
    let (st, v) = s
        .post(&format!("/v1/groups/{gid2}/cancel"), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["state"], "canceled");
    assert_eq!(v["counts"]["canceled"], 2);
    // Errors: unknown group, bad bodies.
    let (st, v) = s.get("/v1/groups/01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    problem(&v, "not-found");
    let (st, v) = s
        .post("/v1/groups", json!({"queue": "grp", "tasks": []}))
        .await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("tasks"))
    );
    let (st, v) = s
        .post(
            "/v1/groups",
            json!({"queue": "bad name", "tasks": [{"payload": 1}]}),
        )
        .await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("queue"))
    );
    let (st, v) = s
        .post(
            "/v1/groups",
            json!({"queue": "grp", "tasks": [{"payload": 1, "idempotency_key": "k"}]}),
        )
        .await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("tasks[0].idempotency_key"))
    );
    let (st, _) = s
        .post(
            "/v1/groups",
            json!({"queue": "grp", "tasks": [{"payload": 1}], "failfast": true}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test]
async fn queue_count_is_bounded() {
    let s = Server::start_with(|c| c.limits.queues_max = 2).await;
    s.enqueue("q1", json!({"payload": 1})).await;
    s.enqueue("q2", json!({"payload": 1})).await;
    let (st, v) = s.post("/v1/queues/q3/tasks", json!({"payload": 1})).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    problem(&v, "too-many-queues");
    // A lease makes no queue, so it is not refused either.
    let (st, v) = s.post("/v1/queues/q4/lease", json!({})).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"tasks": []})));
    // Existing queues still work.
    s.enqueue("q1", json!({"payload": 2})).await;
    let (_, v) = s.get("/v1/queues").await;
    assert_eq!(v["queues"].as_array().unwrap().len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn heartbeat_with_wait_returns_as_soon_as_a_cancel_is_requested() {
    let s = Server::start().await;
    let id = s.enqueue("hb", json!({"payload": 1})).await;
    let t = s.lease("hb", json!({})).await.remove(0);
    let lease = t["lease_id"].clone();
    let (st, v) = s
        .post(
            &format!("/v1/tasks/{id}/heartbeat"),
            json!({"lease_id": lease, "wait_ms": 60001}),
        )
        .await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("wait_ms"))
    );
    let (base, http, path) = (
        s.base.clone(),
        s.http.clone(),
        format!("/v1/tasks/{id}/heartbeat"),
    );
    let body = json!({"lease_id": lease, "wait_ms": 30000});
    let parked = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let v: Value = http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (v, started.elapsed())
    });
    let (st, _) = s.post(&format!("/v1/tasks/{id}/cancel"), json!({})).await;
    assert_eq!(st, StatusCode::OK);
    let (v, took) = parked.await.unwrap();
    assert_eq!(v["cancel_requested"], true, "{v}");
    assert!(
        took < Duration::from_secs(30),
        "the heartbeat waited out its wait_ms"
    );
    s.stop().await;
}

/// A problem's `field` and `detail`.
fn field_detail(v: &Value) -> (String, String) {
    (
        v["field"].as_str().unwrap_or_default().to_owned(),
        v["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn lease_on_an_unknown_queue_creates_nothing() {
    let s = Server::start_with(|c| c.limits.queues_max = 1).await;
    for i in 0..5 {
        let path = format!("/v1/queues/ghost{i}/lease");
        for body in [json!({}), json!({"wait_ms": 5, "worker": "w"})] {
            let (st, v) = s.post(&path, body).await;
            assert_eq!((st, v), (StatusCode::OK, json!({"tasks": []})));
        }
    }
    let (_, v) = s.get("/v1/queues").await;
    assert_eq!(v["queues"], json!([]));
    let (st, _) = s.get("/v1/queues/ghost0").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // The one queue allowed is still free; a long-poll on it, made before the queue
    // exists, gets its first task.
    let (base, http) = (s.base.clone(), s.http.clone());
    let waiter = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let v: Value = http
            .post(format!("{base}/v1/queues/later/lease"))
            .json(&json!({"wait_ms": 30000}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (v, started.elapsed())
    });
    let id = s.enqueue("later", json!({"payload": 1})).await;
    let (v, took) = waiter.await.unwrap();
    assert_eq!(v["tasks"][0]["id"], id.as_str(), "{v}");
    assert!(
        took < Duration::from_secs(30),
        "the lease waited out its wait_ms"
    );
    let (_, v) = s.get("/v1/queues").await;
    assert_eq!(v["queues"].as_array().unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn delete_queue_only_when_empty() {
    let s = Server::start().await;
    let (st, v) = s.delete_queue("nope").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    problem(&v, "not-found");
    let (st, v) = s.delete_queue("a%20b").await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("queue"))
    );
    // Not empty: 409 with the counts.
    s.enqueue("full", json!({"payload": 1})).await;
    let (st, v) = s.delete_queue("full").await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    problem(&v, "queue-not-empty");
    assert_eq!(v["counts"]["pending"], 1, "{v}");
    assert_eq!(v["counts"]["completed"], 0, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("1 pending"), "{v}");
    let (st, _) = s.get("/v1/queues/full").await;
    assert_eq!(st, StatusCode::OK);
    // Empty once retention removed its only task: deleted, and gone.
    let id = s
        .enqueue("brief", json!({"payload": 1, "retention_ms": 0}))
        .await;
    let t = s.lease("brief", json!({})).await.remove(0);
    let (st, _) = s
        .post(
            &format!("/v1/tasks/{id}/ack"),
            json!({"lease_id": t["lease_id"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    // Retention runs about once a second and signals nothing: ask, within a bound.
    let purged_by = tokio::time::Instant::now() + Duration::from_secs(30);
    while s.get(&format!("/v1/tasks/{id}")).await.0 != StatusCode::NOT_FOUND {
        assert!(tokio::time::Instant::now() < purged_by, "never purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (st, v) = s.delete_queue("brief").await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let (st, _) = s.get("/v1/queues/brief").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s.delete_queue("brief").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, v) = s.get("/v1/queues").await;
    assert_eq!(v["queues"].as_array().unwrap().len(), 1, "{v}");
    s.enqueue("brief", json!({"payload": 2})).await;
    s.stop().await;
}

#[tokio::test]
async fn lease_ids_are_random_128_bit_and_a_wrong_one_is_refused() {
    let s = Server::start().await;
    let tasks: Vec<Value> = (0..4).map(|i| json!({"payload": i})).collect();
    let (st, _) = s
        .post("/v1/queues/r/tasks:batch", json!({"tasks": tasks}))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let mut leased = s.lease("r", json!({"max": 2})).await;
    leased.extend(s.lease("r", json!({"max": 2})).await);
    let ids: Vec<u128> = leased
        .iter()
        .map(|t| {
            let text = t["lease_id"].as_str().unwrap();
            assert_eq!(text.len(), 32, "{text}");
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{text}"
            );
            u128::from_str_radix(text, 16).unwrap()
        })
        .collect();
    for w in ids.windows(2) {
        // Not a counter: even the high halves differ (odds 2^-64 by chance).
        assert_ne!(w[0] >> 64, w[1] >> 64, "{:032x} {:032x}", w[0], w[1]);
    }
    // A well-formed id that is not the task's lease: 409, and nothing changes.
    let t = &leased[0];
    let id = t["id"].as_str().unwrap();
    let wrong = format!("{:032x}", ids[0] ^ 1);
    let (st, v) = s
        .post(&format!("/v1/tasks/{id}/ack"), json!({"lease_id": wrong}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    problem(&v, "stale-lease");
    // The old 64-bit form is not a lease id at all.
    let (st, v) = s
        .post(
            &format!("/v1/tasks/{id}/ack"),
            json!({"lease_id": "0123456789abcdef"}),
        )
        .await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("lease_id"))
    );
    let (st, _) = s
        .post(
            &format!("/v1/tasks/{id}/ack"),
            json!({"lease_id": t["lease_id"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn errors_name_the_right_thing() {
    let s = Server::start().await;
    let id = s.enqueue("e", json!({"payload": 1})).await;
    // An unknown query parameter is named, not blamed on wait_ms.
    let (st, v) = s.get(&format!("/v1/tasks/{id}?bogus=1")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (field, detail) = field_detail(&v);
    assert_eq!(field, "bogus", "{v}");
    assert!(detail.contains("bogus"), "{v}");
    let (st, v) = s.get(&format!("/v1/tasks/{id}?wait_ms=soon")).await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("wait_ms"))
    );
    // Group ids are group ids.
    let (st, v) = s.get("/v1/groups/nope?wait_ms=5").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(field_detail(&v).1.contains("not a group id"), "{v}");
    let (st, v) = s.post("/v1/groups/nope/cancel", json!({})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(field_detail(&v).1.contains("not a group id"), "{v}");
    let (st, v) = s.get("/v1/groups/01ARZ3NDEKTSV4RRFFQ69G5FAV?bogus=1").await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("bogus"))
    );
    // A time before 1970 is a valid RFC 3339 time, out of range.
    for field in ["run_at", "deadline"] {
        let (st, v) = s
            .post(
                "/v1/queues/e/tasks",
                json!({"payload": 1, field: "1969-07-20T20:17:40Z"}),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        let (f, detail) = field_detail(&v);
        assert_eq!(f, field);
        assert!(detail.contains("before 1970-01-01T00:00:00Z"), "{v}");
        assert!(!detail.contains("not an RFC 3339"), "{v}");
    }
    s.stop().await;
}

/// Posts `body` as is (a JSON text too deep for `serde_json::Value` to build or
/// write).
async fn post_text(s: &Server, path: &str, body: String) -> (StatusCode, Value) {
    let resp = s
        .http
        .post(format!("{}{path}", s.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `[[…[1]…]]`, `depth` levels deep.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Issue 6: values that pass serde_json's RawValue parse but that clients cannot
/// decode (serde_json stops at 128 levels, Python near 1000, no Rust `String`
/// holds a lone surrogate) are refused where they come in, naming the field.
#[tokio::test]
async fn poison_json_is_refused_at_the_door() {
    let s = Server::start().await;
    let poison = [nested(200), nested(100_000), r#""\ud800""#.to_owned()];
    let refused = |st: StatusCode, v: &Value, field: &str| {
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        problem(v, "invalid-field");
        assert_eq!(v["field"], field, "{v}");
    };

    // One task.
    for p in &poison {
        let (st, v) = post_text(
            &s,
            "/v1/queues/poison/tasks",
            format!(r#"{{"payload":{p}}}"#),
        )
        .await;
        refused(st, &v, "payload");
    }
    let (st, v) = post_text(
        &s,
        "/v1/queues/poison/tasks",
        format!(r#"{{"payload":{}}}"#, nested(64)),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "64 levels is the limit: {v}");
    let (st, v) = post_text(
        &s,
        "/v1/queues/poison/tasks",
        format!(r#"{{"payload":{}}}"#, nested(65)),
    )
    .await;
    refused(st, &v, "payload");
    assert!(v["detail"].as_str().unwrap().contains("64"), "{v}");
    let (st, v) = post_text(
        &s,
        "/v1/queues/poison/tasks",
        r#"{"payload":"\ud800"}"#.into(),
    )
    .await;
    refused(st, &v, "payload");
    assert!(
        v["detail"].as_str().unwrap().contains("lone surrogate"),
        "{v}"
    );
    // A surrogate pair, and an escaped backslash before `u`, are fine.
    let (st, v) = post_text(
        &s,
        "/v1/queues/poison/tasks",
        r#"{"payload":["\ud83d\ude00","\\ud800"]}"#.into(),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let id = s.enqueue("poison", json!({"payload": {"ok": 1}})).await;

    // A batch and a group name the item.
    for p in &poison {
        let body = format!(r#"{{"tasks":[{{"payload":{{"ok":1}}}},{{"payload":{p}}}]}}"#);
        let (st, v) = post_text(&s, "/v1/queues/poison/tasks:batch", body).await;
        refused(st, &v, "tasks[1].payload");
        let body =
            format!(r#"{{"queue":"poison","tasks":[{{"payload":{p}}},{{"payload":{{"ok":1}}}}]}}"#);
        let (st, v) = post_text(&s, "/v1/groups", body).await;
        refused(st, &v, "tasks[0].payload");
    }

    // Results, alone and in a settle batch; the lease survives every refusal.
    let mut leased = s.lease("poison", json!({"max": 10})).await;
    leased.retain(|t| t["id"] == id.as_str());
    let t = leased.pop().expect("the valid task is leased");
    assert_eq!(t["payload"], json!({"ok": 1}));
    let (tid, lease) = (t["id"].as_str().unwrap(), t["lease_id"].as_str().unwrap());
    for p in &poison {
        let body = format!(r#"{{"lease_id":"{lease}","result":{p}}}"#);
        let (st, v) = post_text(&s, &format!("/v1/tasks/{tid}/ack"), body).await;
        refused(st, &v, "result");
        let body = format!(r#"{{"acks":[{{"id":"{tid}","lease_id":"{lease}","result":{p}}}]}}"#);
        let (st, v) = post_text(&s, "/v1/acks", body).await;
        refused(st, &v, "acks[0].result");
    }
    // Error text is a JSON string read into a Rust `String`, which refuses a lone
    // surrogate already.
    let body = format!(r#"{{"lease_id":"{lease}","error":"\udc00","retry":false}}"#);
    let (st, v) = post_text(&s, &format!("/v1/tasks/{tid}/fail"), body).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    problem(&v, "invalid-body");
    let body = format!(r#"{{"fails":[{{"id":"{tid}","lease_id":"{lease}","error":"\ud800"}}]}}"#);
    let (st, v) = post_text(&s, "/v1/acks", body).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = s
        .post(
            "/v1/acks",
            json!({"acks": [{"id": tid, "lease_id": lease, "result": {"ok": 1}}]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["acks"][0]["state"], "completed", "{v}");
    s.stop().await;
}

/// serde's derive reads a struct from an array of its fields in order; no request
/// body, and no struct inside one, may be positional.
#[tokio::test]
async fn request_bodies_are_objects_not_arrays() {
    let s = Server::start().await;
    let id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let lease = "0123456789abcdef";
    let cases = [
        (
            "/v1/queues/q/tasks".to_owned(),
            // All ten fields in declaration order: accepted as a task until now.
            r#"[{"a":1},"email.send",7,null,null,null,null,null,null,null]"#.to_owned(),
        ),
        (
            "/v1/queues/q/tasks:batch".into(),
            r#"[[{"payload":1}]]"#.into(),
        ),
        (
            "/v1/queues/q/tasks:batch".into(),
            r#"{"tasks":[[{"a":1},"email.send"]]}"#.into(),
        ),
        ("/v1/groups".into(), r#"["q",[{"payload":1}],false]"#.into()),
        ("/v1/groups".into(), r#"{"queue":"q","tasks":[[1]]}"#.into()),
        ("/v1/queues/q/lease".into(), "[1,0]".into()),
        (format!("/v1/tasks/{id}/ack"), format!(r#"["{lease}",1]"#)),
        (
            format!("/v1/tasks/{id}/fail"),
            format!(r#"["{lease}","e",false]"#),
        ),
        (format!("/v1/tasks/{id}/release"), format!(r#"["{lease}"]"#)),
        (
            format!("/v1/tasks/{id}/heartbeat"),
            format!(r#"["{lease}",0]"#),
        ),
        ("/v1/acks".into(), "[[],[]]".into()),
        (
            "/v1/acks".into(),
            format!(r#"{{"acks":[["{id}","{lease}",1]]}}"#),
        ),
        (
            "/v1/acks".into(),
            format!(r#"{{"fails":[["{id}","{lease}","e",true]]}}"#),
        ),
    ];
    for (path, body) in cases {
        let (st, v) = post_text(&s, &path, body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path} {body}: {v}");
        problem(&v, "invalid-body");
        assert!(
            v["detail"].as_str().unwrap().contains("JSON object"),
            "{path} {body}: {v}"
        );
    }
    let (_, v) = s.get("/v1/queues").await;
    assert_eq!(v["queues"], json!([]), "nothing was enqueued: {v}");
    s.stop().await;
}

/// A body declared over its route's limit is read and dropped before the 413, so a
/// client that sends it whole (as most do before reading) sees the 413 instead of a
/// reset mid-send. (Before, the 413 went out at once and the connection closed with
/// the body unread; the Python worker saw a broken pipe.)
#[tokio::test]
async fn an_oversized_body_sent_whole_gets_its_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start().await;
    let addr = s.base.strip_prefix("http://").unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // An ack takes 1 MiB of result plus its envelope; this is 6 MB.
    let len = 6_000_000;
    let head = format!(
        "POST /v1/tasks/01ARZ3NDEKTSV4RRFFQ69G5FAV/ack HTTP/1.1\r\nhost: weir\r\n\
          connection: close\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        tcp.write_all(&chunk[..n])
            .await
            .unwrap_or_else(|e| panic!("the body could not be sent whole: {e} after {sent} bytes"));
        sent += n;
    }
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("urn:weir:problem:too-large"), "{answer}");
    s.stop().await;
}

/// `PUT /v1/queues/{queue}/config`: absent fields stay, `null` clears, unknown
/// fields and bad values are 400 and change nothing; `GET /v1/queues/{queue}`
/// shows the config; a paused queue takes tasks and leases none.
#[tokio::test]
async fn queue_config_over_http() {
    let s = Server::start().await;
    let (st, v) = s
        .call(
            "PUT",
            "/v1/queues/cfg/config",
            Some(
                json!({"rate_per_sec": 50.0, "burst": 10, "max_in_flight": 8, "max_pending": 1000}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"rate_per_sec": 50.0, "burst": 10, "max_in_flight": 8, "max_pending": 1000, "paused": false})
    );
    let (st, v) = s
        .call(
            "PUT",
            "/v1/queues/cfg/config",
            Some(json!({"burst": null, "paused": true})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["burst"], Value::Null);
    assert_eq!(v["rate_per_sec"], 50.0);
    assert_eq!(v["paused"], true);
    for (body, field) in [
        (json!({"rate": 5}), None),
        (json!({"max_in_flight": 0}), Some("max_in_flight")),
        (json!({"rate_per_sec": -1}), Some("rate_per_sec")),
        (json!({"burst": "ten"}), None),
    ] {
        let (st, v) = s
            .call("PUT", "/v1/queues/cfg/config", Some(body.clone()))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body} -> {v}");
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{v}");
        }
    }
    let (st, v) = s.get("/v1/queues/cfg").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        v["config"],
        json!({"rate_per_sec": 50.0, "burst": null, "max_in_flight": 8, "max_pending": 1000, "paused": true})
    );
    assert_eq!(v["counts"]["pending"], 0);
    // Paused: the enqueue is taken, the lease gets nothing; resumed, it does.
    let id = s.enqueue("cfg", json!({"payload": 1})).await;
    assert!(s.lease("cfg", json!({"max": 5})).await.is_empty());
    s.call(
        "PUT",
        "/v1/queues/cfg/config",
        Some(json!({"paused": false})),
    )
    .await;
    let got = s.lease("cfg", json!({"max": 5})).await;
    assert_eq!(got[0]["id"], id.as_str());
    let (_, v) = s.get("/v1/queues").await;
    assert_eq!(v["queues"][0]["config"]["max_in_flight"], 8);
    s.stop().await;
}

/// A queue at its `max_pending` answers 429 with `Retry-After` and a problem
/// ending in `queue-full`; a batch that would overflow is refused whole.
#[tokio::test]
async fn max_pending_answers_429_and_refuses_a_batch_whole() {
    let s = Server::start().await;
    s.call(
        "PUT",
        "/v1/queues/mp/config",
        Some(json!({"max_pending": 2})),
    )
    .await;
    s.enqueue("mp", json!({"payload": 1})).await;
    let (st, headers, v) = s
        .raw(
            "/v1/queues/mp/tasks:batch",
            r#"{"tasks": [{"payload": 2}, {"payload": 3}]}"#,
        )
        .await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    problem(&v, "queue-full");
    assert!(v["type"].as_str().unwrap().ends_with("queue-full"));
    let (_, v) = s.get("/v1/queues/mp").await;
    assert_eq!(v["counts"]["pending"], 1, "nothing half-enqueued");
    s.enqueue("mp", json!({"payload": 2})).await;
    let (st, _, _) = s.raw("/v1/queues/mp/tasks", r#"{"payload": 3}"#).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    s.stop().await;
}

/// Makes `n` dead tasks in `queue` over HTTP (one attempt each, failed).
async fn dead_tasks(s: &Server, queue: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            s.enqueue(queue, json!({"payload": i, "max_attempts": 1}))
                .await,
        );
    }
    for t in s.lease(queue, json!({"max": n})).await {
        let (st, v) = s
            .post(
                &format!("/v1/tasks/{}/fail", t["id"].as_str().unwrap()),
                json!({"lease_id": t["lease_id"], "error": "boom"}),
            )
            .await;
        assert_eq!((st, v["state"].as_str()), (StatusCode::OK, Some("dead")));
    }
    ids
}

fn listed_ids(v: &Value) -> Vec<String> {
    v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn browse_retry_and_purge_dead_tasks_over_http() {
    let s = Server::start().await;
    let dead = dead_tasks(&s, "adm", 5).await;
    // Pages of two, newest first, with a cursor; items leave out the payload.
    let (st, v) = s.get("/v1/queues/adm/tasks?state=dead&limit=2").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(listed_ids(&v), vec![dead[4].clone(), dead[3].clone()]);
    let t = &v["tasks"][0];
    assert_eq!(
        (t["state"].as_str(), t["last_error"].as_str()),
        (Some("dead"), Some("boom"))
    );
    assert!(
        t.get("payload").is_none() && t.get("result").is_none(),
        "{t}"
    );
    let cursor = v["next_cursor"].as_str().unwrap().to_owned();
    let (_, v) = s
        .get(&format!(
            "/v1/queues/adm/tasks?state=dead&limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(listed_ids(&v), vec![dead[2].clone(), dead[1].clone()]);
    let cursor = v["next_cursor"].as_str().unwrap().to_owned();
    let (_, v) = s
        .get(&format!(
            "/v1/queues/adm/tasks?state=dead&limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(listed_ids(&v), vec![dead[0].clone()]);
    assert!(v["next_cursor"].is_null());

    // Bad queries are 400s naming the field.
    for (q, field) in [
        ("state=zombie", "state"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("cursor=nope&state=dead", "cursor"),
        ("colour=red", "query"),
        ("idempotency_key=k&state=dead", "idempotency_key"),
    ] {
        let (st, v) = s.get(&format!("/v1/queues/adm/tasks?{q}")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert_eq!(field_detail(&v).0, field, "{q}: {v}");
    }

    // One task: retry it, then it is pending with its attempts reset.
    let (st, v) = s
        .post(&format!("/v1/tasks/{}/retry", dead[0]), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["attempt"].as_u64()),
        (Some("pending"), Some(0))
    );
    assert_eq!(v["payload"], 0);
    let (st, v) = s
        .post(&format!("/v1/tasks/{}/retry", dead[0]), json!({}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    problem(&v, "conflict");
    // Delete refuses a task that is not finished.
    let (st, _) = s
        .call("DELETE", &format!("/v1/tasks/{}", dead[0]), None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT);

    // By ids: the dead ones are retried, the others counted as skipped.
    let (st, v) = s
        .post(
            "/v1/queues/adm/dead/retry",
            json!({"ids": [dead[1], dead[0], "01ARZ3NDEKTSV4RRFFQ69G5FAV"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"retried": 1, "skipped": 2}));
    let (st, v) = s
        .post("/v1/queues/adm/dead/retry", json!({"ids": ["nope"]}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(field_detail(&v).0, "ids[0]");
    // Purge by ids, then all.
    let (st, v) = s
        .call(
            "DELETE",
            "/v1/queues/adm/dead",
            Some(json!({"ids": [dead[2]]})),
        )
        .await;
    assert_eq!(
        (st, v),
        (StatusCode::OK, json!({"deleted": 1, "skipped": 0}))
    );
    let (st, v) = s.get(&format!("/v1/tasks/{}", dead[2])).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    let (st, v) = s.call("DELETE", "/v1/queues/adm/dead", None).await;
    assert_eq!(
        (st, v),
        (StatusCode::OK, json!({"deleted": 2, "skipped": 0}))
    );
    let (_, v) = s.get("/v1/queues/adm").await;
    assert_eq!(v["counts"]["dead"], 0);
    assert_eq!(v["counts"]["pending"], 2);

    // Retry all: every dead task of the queue, and only of that queue.
    let more = dead_tasks(&s, "adm", 3).await;
    dead_tasks(&s, "adm-other", 1).await;
    let (st, v) = s.post("/v1/queues/adm/dead/retry", json!({})).await;
    assert_eq!(
        (st, v),
        (StatusCode::OK, json!({"retried": 3, "skipped": 0}))
    );
    let (_, v) = s.get("/v1/queues/adm").await;
    assert_eq!(v["counts"]["pending"], 5);
    let (_, v) = s.get("/v1/queues/adm-other").await;
    assert_eq!(v["counts"]["dead"], 1);
    let (_, v) = s.get("/v1/queues/adm/tasks?limit=1000").await;
    let pending = listed_ids(&v);
    for id in more.iter().chain([&dead[0], &dead[1]]) {
        assert!(pending.contains(id), "{id} is pending");
    }

    // A finished task is deleted with DELETE /v1/tasks/{id}; its key is free again.
    let keyed = s
        .enqueue(
            "adm",
            json!({"payload": 1, "idempotency_key": "k1", "priority": 9}),
        )
        .await;
    let (_, v) = s.get("/v1/queues/adm/tasks?idempotency_key=k1").await;
    assert_eq!(listed_ids(&v), vec![keyed.clone()]);
    let t = s.lease("adm", json!({})).await.remove(0);
    assert_eq!(t["id"], keyed.as_str());
    let (st, _) = s
        .post(
            &format!("/v1/tasks/{keyed}/ack"),
            json!({"lease_id": t["lease_id"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.call("DELETE", &format!("/v1/tasks/{keyed}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, v) = s.get("/v1/queues/adm/tasks?idempotency_key=k1").await;
    assert_eq!(v, json!({"tasks": [], "next_cursor": null}));
    let (st, _) = s.call("DELETE", &format!("/v1/tasks/{keyed}"), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test]
async fn trace_context_from_enqueue_comes_back_on_the_lease() {
    let s = Server::start().await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let enqueue = |body: Value, headers: Vec<(&'static str, &'static str)>, path: &'static str| {
        let mut req = s.http.post(format!("{}{path}", s.base)).json(&body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let resp = req.send().await.unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
            resp.json::<Value>().await.unwrap()
        }
    };
    let one = enqueue(
        json!({"payload": 1}),
        vec![("traceparent", tp), ("tracestate", "congo=t61rcWkgMzE")],
        "/v1/queues/tr/tasks",
    )
    .await;
    let batch = enqueue(
        json!({"tasks": [{"payload": 2}, {"payload": 3}]}),
        vec![("traceparent", tp)],
        "/v1/queues/tr/tasks:batch",
    )
    .await;
    // An invalid traceparent is ignored, not refused.
    let bad = enqueue(
        json!({"payload": 4}),
        vec![("traceparent", "00-xyz-01"), ("tracestate", "a=b")],
        "/v1/queues/tr/tasks",
    )
    .await;
    let leased = s.lease("tr", json!({"max": 10})).await;
    assert_eq!(leased.len(), 4);
    assert_eq!(leased[0]["id"], one["id"]);
    assert_eq!(leased[0]["traceparent"], tp);
    assert_eq!(leased[0]["tracestate"], "congo=t61rcWkgMzE");
    for t in &leased[1..3] {
        assert_eq!(t["traceparent"], tp, "every task of a batch: {t}");
        assert!(t.get("tracestate").is_none(), "{t}");
    }
    assert_eq!(leased[3]["id"], bad["id"]);
    assert!(leased[3].get("traceparent").is_none(), "{}", leased[3]);
    let (_, v) = s
        .get(&format!("/v1/tasks/{}", one["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (v["traceparent"].as_str(), v["tracestate"].as_str()),
        (Some(tp), Some("congo=t61rcWkgMzE"))
    );
    let id = batch["ids"][0].as_str().unwrap();
    let (_, v) = s.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(v["traceparent"], tp);
    s.stop().await;
}
