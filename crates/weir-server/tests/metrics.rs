//! `GET /metrics` after a scripted workload, on the store `WEIR_TEST_STORE`
//! names: every series the workload moved holds what the workload did, and the
//! per-state gauges agree with the queue's counts.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use common::{get_json, post_json as post, TestServer};

/// Every sample of an exposition, by its name and labels as written.
async fn scrape(c: &reqwest::Client, base: &str) -> HashMap<String, f64> {
    let res = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = res.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse::<f64>().unwrap())
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {:#?}", sorted(m)))
}

fn sorted(m: &HashMap<String, f64>) -> Vec<(&String, &f64)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_scripted_workload() {
    let s = TestServer::start(|_| {}).await;
    let c = reqwest::Client::new();
    let base = &s.base;

    // mq: 10 tasks; one canceled queued, 8 leased: 4 acked, 2 failed for good,
    // 1 failed into a retry, 1 left active; 1 never leased.
    let tasks: Vec<Value> = (0..10).map(|i| json!({"payload": i})).collect();
    let out = post(
        &c,
        format!("{base}/v1/queues/mq/tasks:batch"),
        json!({ "tasks": tasks }),
    )
    .await;
    let ids: Vec<String> = out["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    post(&c, format!("{base}/v1/tasks/{}/cancel", ids[9]), json!({})).await;
    let leased = post(&c, format!("{base}/v1/queues/mq/lease"), json!({"max": 8})).await;
    let leased = leased["tasks"].as_array().unwrap().clone();
    assert_eq!(leased.len(), 8);
    let pair = |t: &Value| json!({"id": t["id"], "lease_id": t["lease_id"]});
    let acks: Vec<Value> = leased[..4].iter().map(pair).collect();
    let mut fails: Vec<Value> = leased[4..6]
        .iter()
        .map(|t| json!({"id": t["id"], "lease_id": t["lease_id"], "error": "no", "retry": false}))
        .collect();
    fails.push(json!({"id": leased[6]["id"], "lease_id": leased[6]["lease_id"], "error": "again"}));
    post(
        &c,
        format!("{base}/v1/acks"),
        json!({"acks": acks, "fails": fails}),
    )
    .await;

    // mx: one task whose lease runs out on its only attempt: dead by expiry.
    let t = post(
        &c,
        format!("{base}/v1/queues/mx/tasks"),
        json!({"payload": 1, "timeout_ms": 50, "max_attempts": 1}),
    )
    .await;
    let id = t["id"].as_str().unwrap().to_owned();
    let got = post(&c, format!("{base}/v1/queues/mx/lease"), json!({"max": 1})).await;
    assert_eq!(got["tasks"].as_array().unwrap().len(), 1);
    let dead = get_json(&c, &format!("{base}/v1/tasks/{id}?wait_ms=10000")).await;
    assert_eq!(dead["state"], "dead");

    assert_eq!(
        c.get(format!("{base}/no/such/route"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let m = scrape(&c, base).await;
    let queues = get_json(&c, &format!("{base}/v1/queues")).await;

    // The store's totals.
    assert_eq!(get(&m, r#"weir_tasks_enqueued_total{queue="mq"}"#), 10.0);
    assert_eq!(get(&m, r#"weir_tasks_leased_total{queue="mq"}"#), 8.0);
    let finished = |q: &str, o: &str| {
        get(
            &m,
            &format!(r#"weir_tasks_finished_total{{queue="{q}",outcome="{o}"}}"#),
        )
    };
    assert_eq!(finished("mq", "completed"), 4.0);
    assert_eq!(finished("mq", "dead"), 2.0);
    assert_eq!(finished("mq", "canceled"), 1.0);
    assert_eq!(get(&m, r#"weir_tasks_retried_total{queue="mq"}"#), 1.0);
    assert_eq!(get(&m, r#"weir_lease_expirations_total{queue="mq"}"#), 0.0);
    assert_eq!(get(&m, r#"weir_tasks_enqueued_total{queue="mx"}"#), 1.0);
    assert_eq!(get(&m, r#"weir_lease_expirations_total{queue="mx"}"#), 1.0);
    assert_eq!(get(&m, r#"weir_tasks_retried_total{queue="mx"}"#), 0.0);
    assert_eq!(finished("mx", "dead"), 1.0);

    // The per-state gauges are the queue's counts. The retried task may be
    // promoted between the two reads, so those two states are checked summed.
    let counts = |q: &str| -> Value {
        queues["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == q)
            .unwrap()["counts"]
            .clone()
    };
    let tasks = |q: &str, st: &str| {
        get(
            &m,
            &format!(r#"weir_queue_tasks{{queue="{q}",state="{st}"}}"#),
        )
    };
    for q in ["mq", "mx"] {
        let c = counts(q);
        for st in ["active", "completed", "dead", "canceled"] {
            assert_eq!(tasks(q, st), c[st].as_f64().unwrap(), "{q} {st}");
        }
        assert_eq!(
            tasks(q, "pending") + tasks(q, "scheduled"),
            c["pending"].as_f64().unwrap() + c["scheduled"].as_f64().unwrap(),
            "{q}"
        );
    }
    assert_eq!(tasks("mq", "active"), 1.0);
    assert_eq!(tasks("mq", "pending") + tasks("mq", "scheduled"), 2.0);
    let age = get(&m, r#"weir_queue_oldest_pending_age_seconds{queue="mq"}"#);
    assert!((0.0..60.0).contains(&age), "age {age}");
    assert!(
        !m.contains_key(r#"weir_queue_oldest_pending_age_seconds{queue="mx"}"#),
        "nothing is pending in mx"
    );

    // This process's series.
    assert_eq!(get(&m, r#"weir_task_wait_seconds_count{queue="mq"}"#), 8.0);
    assert_eq!(get(&m, r#"weir_task_wait_seconds_count{queue="mx"}"#), 1.0);
    // Runs: the 4 acks and 3 fails settled here; mx's lease expired unsettled.
    assert_eq!(get(&m, r#"weir_task_run_seconds_count{queue="mq"}"#), 7.0);
    assert!(!m.contains_key(r#"weir_task_run_seconds_count{queue="mx"}"#));
    let requests = |route: &str, status: u16| {
        get(
            &m,
            &format!(r#"weir_http_requests_total{{route="{route}",status="{status}"}}"#),
        )
    };
    assert_eq!(requests("/v1/queues/{queue}/tasks:batch", 201), 1.0);
    assert_eq!(requests("/v1/queues/{queue}/tasks", 201), 1.0);
    assert_eq!(requests("/v1/queues/{queue}/lease", 200), 2.0);
    assert_eq!(requests("/v1/tasks/{id}", 200), 1.0);
    assert_eq!(requests("unmatched", 404), 1.0);
    assert!(
        !m.keys()
            .any(|k| k.contains(&ids[9]) || k.contains("/no/such")),
        "a raw path or a task id became a label"
    );
    assert_eq!(
        get(
            &m,
            r#"weir_http_request_duration_seconds_count{route="/v1/acks"}"#
        ),
        1.0
    );
    assert!(get(&m, "weir_store_commit_seconds_count") >= 1.0);
    assert_eq!(get(&m, r#"weir_longpoll_waiters{call="task"}"#), 0.0);

    s.stop().await;
}

/// A parked lease long-poll shows in `weir_longpoll_waiters` while it waits, and
/// leaves it when it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_long_polls_are_counted() {
    let s = TestServer::start(|_| {}).await;
    let c = reqwest::Client::new();
    let base = s.base.clone();
    let parked = {
        let c = c.clone();
        let base = base.clone();
        tokio::spawn(async move {
            post(
                &c,
                format!("{base}/v1/queues/mw/lease"),
                json!({"max": 1, "wait_ms": 20000}),
            )
            .await
        })
    };
    let key = r#"weir_longpoll_waiters{call="lease"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // The lease is parked once the gauge says so (a request, not a timer, decides).
    while scrape(&c, &base).await.get(key).copied() != Some(1.0) {
        assert!(tokio::time::Instant::now() < deadline, "never parked");
        tokio::task::yield_now().await;
    }
    post(
        &c,
        format!("{base}/v1/queues/mw/tasks"),
        json!({"payload": 1}),
    )
    .await;
    let got = parked.await.unwrap();
    assert_eq!(got["tasks"].as_array().unwrap().len(), 1);
    let m = scrape(&c, &base).await;
    assert_eq!(get(&m, key), 0.0);
    // Counted once, with its real answer, when that answer came (the lean
    // connection layer awaits the parked wait outside the router).
    let route = r#"route="/v1/queues/{queue}/lease""#;
    assert_eq!(
        get(
            &m,
            &format!(r#"weir_http_requests_total{{{route},status="200"}}"#)
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            &format!(r#"weir_http_request_duration_seconds_count{{{route}}}"#)
        ),
        1.0
    );
    s.stop().await;
}
