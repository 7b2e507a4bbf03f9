//! The worker channel (`GET /v1/workers/connect`) from a raw WebSocket client:
//! credit is never exceeded, a cancel is pushed at once, leases are extended
//! while the channel lives and expire once it is gone, settles answer as
//! `/v1/acks` does, protocol errors close the channel, and a channel works across
//! the servers sharing a store. On the store `WEIR_TEST_STORE` names.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

mod common;

use common::{get_json, post_json, TestServer};

/// Bound on anything that should happen; a hang fails the test instead.
const PATIENCE: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<TcpStream>;

async fn open(s: &TestServer) -> Ws {
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let (ws, response) =
        tokio_tungstenite::client_async(format!("ws://{}/v1/workers/connect", s.addr), tcp)
            .await
            .expect("the upgrade is accepted");
    assert_eq!(response.status(), 101);
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next message of the protocol (pings skipped); `None` once closed.
async fn next(ws: &mut Ws) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a message in time");
        match frame {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next message of `kind`; other kinds before it are returned too.
async fn next_of(ws: &mut Ws, kind: &str) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let m = next(ws)
            .await
            .unwrap_or_else(|| panic!("closed before {kind}, after {before:?}"));
        if m["type"] == kind {
            return (m, before);
        }
        before.push(m);
    }
}

async fn hello(ws: &mut Ws, queue: &str, credit: u32) -> Value {
    send(
        ws,
        json!({"type": "hello", "queues": [queue], "worker": "w1", "credit": credit}),
    )
    .await;
    let (welcome, _) = next_of(ws, "welcome").await;
    assert_eq!(welcome["queues"], json!([queue]), "{welcome}");
    welcome
}

async fn enqueue(s: &TestServer, queue: &str, body: Value) -> String {
    let c = reqwest::Client::new();
    let v = post_json(&c, format!("{}/v1/queues/{queue}/tasks", s.base), body).await;
    v["id"].as_str().unwrap().to_owned()
}

async fn active(s: &TestServer, queue: &str) -> u64 {
    let v = get_json(
        &reqwest::Client::new(),
        &format!("{}/v1/queues/{queue}", s.base),
    )
    .await;
    v["counts"]["active"].as_u64().unwrap_or(0)
}

/// Collects pushed tasks until `n` have come.
async fn tasks(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let (m, _) = next_of(ws, "tasks").await;
        got.extend(m["tasks"].as_array().unwrap().iter().cloned());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_is_never_exceeded_and_settles_answer_like_acks() {
    let s = TestServer::start(|_| {}).await;
    for i in 0..20 {
        enqueue(&s, "cr", json!({"payload": i})).await;
    }
    let mut ws = open(&s).await;
    hello(&mut ws, "cr", 3).await;
    let first = tasks(&mut ws, 3).await;
    assert_eq!(first.len(), 3, "exactly the credit: {first:?}");
    // The server leased no more than it pushed: without credit it leases nothing.
    assert_eq!(active(&s, "cr").await, 3);
    // A settle round trip later, still 3 (nothing was pushed meanwhile).
    send(&mut ws, json!({"type": "settle", "seq": 1})).await;
    let (settled, before) = next_of(&mut ws, "settled").await;
    assert!(before.is_empty(), "pushed without credit: {before:?}");
    assert_eq!(settled["seq"], 1);
    assert_eq!(active(&s, "cr").await, 3);

    send(&mut ws, json!({"type": "credit", "n": 5})).await;
    let more = tasks(&mut ws, 5).await;
    assert_eq!(more.len(), 5);
    assert_eq!(active(&s, "cr").await, 8);

    // Acks, a fail, a release and a stale lease in one settle.
    let all: Vec<Value> = first.into_iter().chain(more).collect();
    let acks: Vec<Value> = all[..6]
        .iter()
        .map(|t| json!({"id": t["id"], "lease_id": t["lease_id"], "result": {"ok": t["id"]}}))
        .collect();
    let stale = json!({"id": all[0]["id"], "lease_id": "0".repeat(32)});
    send(
        &mut ws,
        json!({"type": "settle", "seq": 2, "acks": acks,
               "fails": [{"id": all[6]["id"], "lease_id": all[6]["lease_id"], "error": "no", "retry": false}],
               "releases": [{"id": all[7]["id"], "lease_id": all[7]["lease_id"]}, stale]}),
    )
    .await;
    let (settled, _) = next_of(&mut ws, "settled").await;
    assert_eq!(settled["seq"], 2);
    let acks = settled["acks"].as_array().unwrap();
    assert_eq!(acks.len(), 6);
    assert!(
        acks.iter()
            .all(|a| a["ok"] == true && a["state"] == "completed"),
        "{settled}"
    );
    assert_eq!(settled["fails"][0]["state"], "dead", "{settled}");
    assert_eq!(settled["releases"][0]["state"], "pending", "{settled}");
    assert_eq!(settled["releases"][1]["ok"], false, "{settled}");
    assert_eq!(settled["releases"][1]["status"], 409, "{settled}");
    // The acked task's result is what the worker sent.
    let done = get_json(
        &reqwest::Client::new(),
        &format!("{}/v1/tasks/{}", s.base, all[0]["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(done["result"], json!({"ok": all[0]["id"]}));
    assert_eq!(active(&s, "cr").await, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_is_pushed_at_once() {
    let s = TestServer::start(|_| {}).await;
    let mut ws = open(&s).await;
    hello(&mut ws, "cx", 1).await;
    // A long task: the watch's own fallback (a beat at half its lease, 60 s)
    // is far beyond PATIENCE.
    let id = enqueue(&s, "cx", json!({"payload": 1, "timeout_ms": 120_000})).await;
    let t = tasks(&mut ws, 1).await;
    assert_eq!(t[0]["id"], id);
    let c = reqwest::Client::new();
    post_json(&c, format!("{}/v1/tasks/{id}/cancel", s.base), json!({})).await;
    let (cancel, _) = next_of(&mut ws, "cancel").await;
    assert_eq!(cancel["id"], id);
    assert_eq!(cancel["lease_id"], t[0]["lease_id"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_live_with_the_channel_and_expire_after_it() {
    let s = TestServer::start(|_| {}).await;
    let mut ws = open(&s).await;
    hello(&mut ws, "lx", 1).await;
    // A 600 ms lease (no grace in tests).
    let id = enqueue(&s, "lx", json!({"payload": 1, "timeout_ms": 600})).await;
    let t = tasks(&mut ws, 1).await;
    let first_expiry = t[0]["lease_expires_at"].as_str().unwrap().to_owned();
    // While the channel lives the lease is extended: its expiry moves on.
    let c = reqwest::Client::new();
    let url = format!("{}/v1/tasks/{id}", s.base);
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let v = get_json(&c, &url).await;
        assert_eq!(
            v["state"], "active",
            "the lease ran out while the channel lived: {v}"
        );
        if v["lease_expires_at"].as_str().unwrap() > first_expiry.as_str() {
            break;
        }
        assert!(tokio::time::Instant::now() < give_up, "never extended");
        tokio::task::yield_now().await;
    }
    // The worker dies: nothing extends the lease, and the task comes back.
    drop(ws);
    let leased = post_json(
        &c,
        format!("{}/v1/queues/lx/lease", s.base),
        json!({"max": 1, "wait_ms": 5_000}),
    )
    .await;
    assert_eq!(leased["tasks"][0]["id"], id, "{leased}");
    assert_eq!(leased["tasks"][0]["attempt"], 2, "{leased}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_close_the_channel() {
    let s = TestServer::start(|_| {}).await;
    for (first, slug) in [
        (json!({"type": "credit", "n": 1}), "channel-protocol"),
        (json!({"type": "nonsense"}), "channel-protocol"),
        (json!({"type": "hello", "queues": []}), "invalid-field"),
        (
            json!({"type": "hello", "queues": ["bad name!"]}),
            "invalid-field",
        ),
    ] {
        let mut ws = open(&s).await;
        send(&mut ws, first.clone()).await;
        let m = next(&mut ws).await.expect("an error before the close");
        assert_eq!(m["type"], "error", "{first}: {m}");
        assert_eq!(
            m["problem"]["type"],
            format!("urn:weir:problem:{slug}"),
            "{first}: {m}"
        );
        assert!(next(&mut ws).await.is_none(), "{first}: still open");
    }
    // A plain GET is told to upgrade.
    let r = reqwest::get(format!("{}/v1/workers/connect", s.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 426);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_limited_key_is_refused_the_queues_it_may_not_take() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = TestServer::start(|_| {}).await;
    let c = reqwest::Client::new();
    // The first key (admin) turns auth on; it makes a worker key for mine*.
    let admin = post_json(
        &c,
        format!("{}/v1/keys", s.base),
        json!({"name": "ops", "roles": ["admin"]}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let worker: Value = c
        .post(format!("{}/v1/keys", s.base))
        .bearer_auth(&admin)
        .json(&json!({"name": "w", "roles": ["worker"], "queues": ["mine*"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let worker = worker["key"].as_str().unwrap();
    let url = format!("ws://{}/v1/workers/connect", s.addr);

    // Without a key: no upgrade.
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let refused = tokio_tungstenite::client_async(url.clone(), tcp).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401),
        "{refused:?}"
    );

    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {worker}").parse().unwrap());
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    send(
        &mut ws,
        json!({"type": "hello", "queues": ["mine-1", "other"], "credit": 1}),
    )
    .await;
    let (welcome, _) = next_of(&mut ws, "welcome").await;
    assert_eq!(welcome["queues"], json!(["mine-1"]), "{welcome}");
    assert_eq!(welcome["refused"][0]["queue"], "other", "{welcome}");
    assert_eq!(
        welcome["refused"][0]["problem"]["type"], "urn:weir:problem:forbidden",
        "{welcome}"
    );
    s.stop().await;
}

/// Two servers on one store (on Redis, two brokers under one prefix): a task
/// enqueued on one is pushed through a channel on the other, a cancel asked of
/// one is pushed through the other's channel, and a lease taken through one
/// server's channel is settled through the other's (a worker that moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_works_across_the_servers_sharing_a_store() {
    let servers = TestServer::peers(2).await;
    let (a, b) = (&servers[0], &servers[1]);
    let c = reqwest::Client::new();

    let mut on_a = open(a).await;
    hello(&mut on_a, "xs", 2).await;
    // Enqueued on b, pushed by a (its lease loop is parked on the empty queue).
    let first = enqueue(b, "xs", json!({"payload": 1, "timeout_ms": 120_000})).await;
    let t = tasks(&mut on_a, 1).await;
    assert_eq!(t[0]["id"], first);
    // Canceled on b, pushed by a.
    post_json(&c, format!("{}/v1/tasks/{first}/cancel", b.base), json!({})).await;
    let (cancel, _) = next_of(&mut on_a, "cancel").await;
    assert_eq!(cancel["id"], first);
    assert_eq!(cancel["lease_id"], t[0]["lease_id"]);

    // A second task, leased through a; the worker moves to b and settles it
    // there, with the lease a gave.
    let second = enqueue(a, "xs", json!({"payload": 2})).await;
    let t2 = tasks(&mut on_a, 1).await;
    assert_eq!(t2[0]["id"], second);
    on_a.close(None).await.unwrap();
    let mut on_b = open(b).await;
    hello(&mut on_b, "xs", 1).await;
    send(
        &mut on_b,
        json!({"type": "settle", "seq": 1, "acks": [
            {"id": second, "lease_id": t2[0]["lease_id"], "result": "moved"}
        ]}),
    )
    .await;
    let (settled, _) = next_of(&mut on_b, "settled").await;
    assert_eq!(settled["acks"][0]["ok"], true, "{settled}");
    assert_eq!(settled["acks"][0]["state"], "completed", "{settled}");
    let done = get_json(&c, &format!("{}/v1/tasks/{second}", a.base)).await;
    assert_eq!(done["result"], json!("moved"), "{done}");
}
