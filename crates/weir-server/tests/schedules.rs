//! Periodic tasks on the store `WEIR_TEST_STORE` names: the firing rules over a
//! simulated hour on three servers (the scheduler takes "now" as an argument),
//! the missed-tick policies, and the schedule API over HTTP.

use std::sync::Arc;

use serde_json::{json, Value};
use weir_core::TaskState;
use weir_server::schedule::{fire_due, Compiled, ScheduleBody};
use weir_server::ServeConfig;
use weir_store::testing::{TestStore, TestStoreConfig};
use weir_store::{Broker, Checked};

fn ms(rfc: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(rfc)
        .unwrap()
        .timestamp_millis() as u64
}

/// Stores a schedule as `PUT /v1/schedules/{name}` would at `now`.
async fn put(b: &dyn Broker, name: &str, body: Value, now: u64) {
    let text = body.to_string();
    let parsed: ScheduleBody = serde_json::from_str(&text).unwrap();
    let (_, spec) = Compiled::from_body(parsed, &ServeConfig::default(), now).unwrap();
    b.put_schedule(name, spec, now).await.unwrap();
}

async fn pending(b: &dyn Broker, queue: &str) -> u64 {
    b.queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == queue)
        .map_or(0, |q| q.counts.get(TaskState::Pending))
}

mod common;

use common::get_json as get;

/// Three servers run the scheduler at the same simulated instants, every 20 s
/// of an hour: a schedule every 5 minutes fires exactly 12 tasks, one per tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_fire_each_tick_exactly_once_over_a_simulated_hour() {
    let store = TestStore::open(TestStoreConfig::default()).await;
    let servers: Vec<Arc<dyn Broker>> = store
        .peers(3)
        .await
        .into_iter()
        .map(|b| Arc::new(Checked::shared(b, Default::default())) as Arc<dyn Broker>)
        .collect();
    let config = ServeConfig::default();
    let t0 = ms("2026-12-01T10:00:30Z");
    put(
        &*servers[0],
        "reports",
        json!({"cron": "*/5 * * * *", "queue": "reports", "task": {"payload": {"r": 1}, "kind": "report"}}),
        t0,
    )
    .await;
    let mut now = t0;
    while now <= t0 + 3_600_000 {
        let rounds: Vec<_> = servers
            .iter()
            .map(|b| {
                let (b, config) = (b.clone(), config.clone());
                tokio::spawn(async move { fire_due(&*b, &config, now).await })
            })
            .collect();
        for r in rounds {
            r.await.unwrap().unwrap();
        }
        now += 20_000;
    }
    assert_eq!(pending(&*servers[1], "reports").await, 12);
    let s = servers[2].schedules().await.unwrap().remove(0);
    assert_eq!(s.last_tick_ms, ms("2026-12-01T11:00:00Z"));
    let last = servers[0]
        .get(s.last_task_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.record.kind, "report");
    assert_eq!(&last.payload[..], br#"{"r":1}"#);
}

/// After two hours with no server running, `run_once` fires one task for the
/// missed ticks and `skip` none; the next tick fires both as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_run_once_or_are_skipped() {
    let store = TestStore::open(TestStoreConfig::default()).await;
    let b = Checked::shared(store.broker.clone(), Default::default());
    let config = ServeConfig::default();
    let t0 = ms("2026-12-01T10:00:30Z");
    for (name, missed) in [("once", "run_once"), ("skip", "skip")] {
        put(
            &b,
            name,
            json!({"cron": "*/5 * * * *", "queue": name, "task": {"payload": 1}, "missed": missed}),
            t0,
        )
        .await;
    }
    let back = ms("2026-12-01T12:02:00Z");
    fire_due(&b, &config, back).await.unwrap();
    fire_due(&b, &config, back + 1000).await.unwrap();
    assert_eq!(pending(&b, "once").await, 1);
    assert_eq!(pending(&b, "skip").await, 0);
    let next = ms("2026-12-01T12:05:01Z");
    fire_due(&b, &config, next).await.unwrap();
    assert_eq!(pending(&b, "once").await, 2);
    assert_eq!(pending(&b, "skip").await, 1);
}

/// The API: create, read, list, replace, delete; bad definitions are 400s that
/// name the field; an unknown schedule is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_over_http() {
    let server = common::TestServer::start(|_| {}).await;
    let (base, http) = (server.base.clone(), reqwest::Client::new());
    let body = json!({"cron": "0 9 * * *", "tz": "Europe/Paris", "queue": "reports",
        "task": {"payload": {"kind": "daily"}, "max_attempts": 3}, "missed": "run_once"});
    let r = http
        .put(format!("{base}/v1/schedules/daily"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["name"], "daily");
    assert_eq!(v["tz"], "Europe/Paris");
    assert_eq!(v["missed"], "run_once");
    assert_eq!(v["task"], body["task"]);
    assert_eq!(v["last_run_at"], Value::Null);
    let next = v["next_run_at"].as_str().unwrap();
    // 09:00 in Paris is 08:00 UTC in winter (and 07:00 in summer).
    assert!(
        next.contains("T08:00:00") || next.contains("T07:00:00"),
        "{next}"
    );
    let v = get(&http, &format!("{base}/v1/schedules/daily")).await;
    assert_eq!(v["cron"], "0 9 * * *");
    let v = get(&http, &format!("{base}/v1/schedules")).await;
    assert_eq!(v["schedules"].as_array().unwrap().len(), 1);
    for (bad, field) in [
        (
            json!({"cron": "nope", "queue": "q", "task": {"payload": 1}}),
            "cron",
        ),
        (
            json!({"cron": "* * * * *", "queue": "q", "task": {"payload": 1}, "extra": 1}),
            "",
        ),
        (
            json!({"cron": "* * * * *", "queue": "q", "task": {"payload": 1}, "missed": "sometimes"}),
            "",
        ),
        (
            json!({"cron": "* * * * *", "tz": "Nowhere", "queue": "q", "task": {"payload": 1}}),
            "tz",
        ),
    ] {
        let r = http
            .put(format!("{base}/v1/schedules/daily"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let v: Value = r.json().await.unwrap();
        if !field.is_empty() {
            assert_eq!(v["field"], field, "{v}");
        }
    }
    // A refused change left the schedule as it was.
    let v = get(&http, &format!("{base}/v1/schedules/daily")).await;
    assert_eq!(v["cron"], "0 9 * * *");
    let r = http
        .delete(format!("{base}/v1/schedules/daily"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let r = http
            .request(method, format!("{base}/v1/schedules/daily"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    server.stop().await;
}

/// The loop `weir serve` runs fires a schedule with a seconds field on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_fires_a_schedule_every_second() {
    let server = common::TestServer::start(|_| {}).await;
    let (base, http) = (server.base.clone(), reqwest::Client::new());
    let r = http
        .put(format!("{base}/v1/schedules/tick"))
        .json(&json!({"cron": "* * * * * *", "queue": "ticks", "task": {"payload": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Two tasks from two ticks, leased as they come (a long-poll, not a sleep).
    let mut got = 0;
    let by = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while got < 2 {
        assert!(tokio::time::Instant::now() < by, "only {got} ticks fired");
        let url = format!("{base}/v1/queues/ticks/lease");
        let v = common::post_json(&http, url, json!({"max": 10, "wait_ms": 3000})).await;
        got += v["tasks"].as_array().unwrap().len();
    }
    server.stop().await;
}
