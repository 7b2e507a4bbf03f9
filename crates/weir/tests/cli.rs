//! The client commands of the `weir` binary against a real server: enqueue, task
//! get / wait / cancel, queues, queue delete, with their exit codes and `--json`
//! output; and what `--help` and boolean environment variables say and take.

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

mod common;

async fn weir(server: &str, args: &[&str]) -> Output {
    weir_env(server, args, &[]).await
}

async fn weir_env(server: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_SERVER", server)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run weir")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_get_wait_cancel_and_queues() {
    let mut server = common::start_server(&[]).await;
    let s = server.base.clone();

    let out = weir(
        &s,
        &[
            "enqueue",
            "mail",
            "--payload",
            r#"{"to":"a@b"}"#,
            "--kind",
            "email.send",
            "--priority",
            "3",
            "--json",
        ],
    )
    .await;
    let v = json(&out);
    assert_eq!(v["state"], "pending");
    let id = v["id"].as_str().unwrap().to_owned();

    let v = json(&weir(&s, &["task", "get", &id, "--json"]).await);
    assert_eq!(v["kind"], "email.send");
    assert_eq!(v["payload"]["to"], "a@b");
    assert_eq!(v["priority"], 3);

    // Not terminal within the timeout: exit 3, and it says so.
    let out = weir(&s, &["task", "wait", &id, "--timeout", "20ms"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("timed out after 20ms; task {id} is still pending")),
        "{}",
        stderr(&out)
    );

    // Canceled: `task wait` reports it with exit 4, distinct from an error (1).
    let v = json(&weir(&s, &["task", "cancel", &id, "--json"]).await);
    assert_eq!(v["state"], "canceled");
    let out = weir(&s, &["task", "wait", &id, "--timeout", "5s"]).await;
    assert_eq!(out.status.code(), Some(4));
    let out = weir(&s, &["task", "cancel", &id]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "canceling a terminal task is an error"
    );

    // An unknown task is an error with a clear message.
    let out = weir(&s, &["task", "get", "01ARZ3NDEKTSV4RRFFQ69G5FAV"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.is_empty());

    let v = json(&weir(&s, &["queues", "--json"]).await);
    let q = &v["queues"][0];
    assert_eq!(q["name"], "mail");
    assert_eq!(q["counts"]["canceled"], 1);

    // Bad input is refused before anything is sent.
    let out = weir(&s, &["enqueue", "mail", "--payload", "{not json"]).await;
    assert_ne!(out.status.code(), Some(0));
    let v = json(&weir(&s, &["queues", "--json"]).await);
    assert_eq!(v["queues"][0]["counts"]["pending"], 0);

    server.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_names_every_command_and_not_the_old_token_flag() {
    let out = weir("http://127.0.0.1:1", &["--help"]).await;
    let help = String::from_utf8_lossy(&out.stdout);
    let about = help.lines().next().unwrap_or_default();
    for command in [
        "serve", "enqueue", "task", "queues", "queue", "worker", "bench",
    ] {
        assert!(about.contains(command), "{command} missing from {about:?}");
    }
    // `--token` is only a hidden alias of `--api-key` (tests/tls.rs).
    for command in [
        &["queues", "--help"][..],
        &["worker", "--help"],
        &["task", "get", "--help"],
    ] {
        let out = weir("http://127.0.0.1:1", command).await;
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(!help.contains("--token"), "{command:?}:\n{help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boolean_variables_take_1_0_yes_no() {
    let mut server = common::start_server(&[]).await;
    let s = server.base.clone();
    for yes in ["1", "true", "yes", "on", "YES"] {
        let out = weir_env(&s, &["queues"], &[("WEIR_JSON", yes)]).await;
        assert_eq!(json(&out), json!({"queues": []}), "WEIR_JSON={yes}");
    }
    for no in ["0", "false", "no", "off"] {
        let out = weir_env(&s, &["queues"], &[("WEIR_JSON", no)]).await;
        assert!(out.status.success(), "WEIR_JSON={no}: {}", stderr(&out));
        assert!(out.stdout.starts_with(b"QUEUE"), "WEIR_JSON={no}");
    }
    // The bare flag still means true; a value that is neither is a usage error.
    assert_eq!(
        json(&weir(&s, &["queues", "--json"]).await),
        json!({"queues": []})
    );
    let out = weir_env(&s, &["queues"], &[("WEIR_JSON", "maybe")]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    server.child.kill().await.unwrap();

    // The variable the refusal recommends is taken as written there.
    let public = |value: &'static str| {
        let dir = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
            .arg(dir.path())
            .env("WEIR_INSECURE_PUBLIC_BIND", value)
            .env("WEIR_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn weir serve");
        (child, dir)
    };
    let (mut refused, _dir) = public("no");
    let status = tokio::time::timeout(Duration::from_secs(30), refused.wait())
        .await
        .expect("a refused serve exits")
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let (mut child, _dir) = public("1");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("weir serve announces its address")
        .unwrap()
        .unwrap_or_default();
    assert!(
        line.starts_with("weir listening on http://0.0.0.0:"),
        "{line:?}"
    );
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_delete_takes_only_an_empty_queue() {
    let mut server = common::start_server(&["--lease-grace-ms", "0"]).await;
    let s = server.base.clone();
    let out = weir(&s, &["queue", "delete", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no queue named nope"),
        "{}",
        stderr(&out)
    );

    json(&weir(&s, &["enqueue", "full", "--json"]).await);
    let out = weir(&s, &["queue", "delete", "full"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("1 pending"), "{}", stderr(&out));

    // A queue whose only task retention removed is empty.
    let http = reqwest::Client::new();
    let v: Value = http
        .post(format!("{s}/v1/queues/brief/tasks"))
        .json(&json!({"payload": 1, "retention_ms": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["id"].as_str().unwrap();
    let client = weir_client::Client::new(&s).unwrap();
    let t = client
        .lease("brief", 1, 0, None)
        .await
        .unwrap()
        .tasks
        .remove(0);
    client.ack(id, &t.lease_id, &json!(null)).await.unwrap();
    // Retention runs about once a second and signals nothing: ask, within a bound.
    let purged_by = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.get(id).await.is_ok() {
        assert!(tokio::time::Instant::now() < purged_by, "never purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v = json(&weir(&s, &["queue", "delete", "brief", "--json"]).await);
    assert_eq!(v, json!({"queue": "brief", "deleted": true}));
    let v = json(&weir(&s, &["queues", "--json"]).await);
    assert_eq!(v["queues"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["queues"][0]["name"], "full");
    server.child.kill().await.unwrap();
}

/// A stand-in server that answers every request `200` with `body`: a task view no
/// typed decode takes, which a real server no longer stores but one that ran
/// before its checks may still hold.
async fn fake_server(body: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                // GET and POST /cancel carry no body: the head is the request.
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

/// Issue 6: `weir task get` shows a task it cannot decode as the server's JSON,
/// in both modes, rather than failing; `task wait` still reads its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_task_is_shown_raw() {
    let id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let body = format!(
        r#"{{"id":"{id}","queue":"poison","kind":"k","state":"dead","attempt":5,"max_attempts":5,"payload":{deep},"result":null,"last_error":"\ud800 lease expired without ack"}}"#
    );
    let s = fake_server(body.clone()).await;

    let out = weir(&s, &["task", "get", id]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), body);
    assert!(stderr.contains("cannot be decoded"), "{stderr}");

    let out = weir(&s, &["task", "get", id, "--json"]).await;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), body);

    // Dead: exit 4, as for a task that decodes.
    let out = weir(&s, &["task", "wait", id, "--timeout", "5s"]).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), body);
}

/// `weir queue config|pause|resume|get`: settings set, kept, cleared with
/// `none`, shown in text and `--json`; a bad value is refused before any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_config_pause_resume_and_get() {
    let mut server = common::start_server(&[]).await;
    let s = server.base.clone();
    let v = json(
        &weir(
            &s,
            &[
                "queue",
                "config",
                "mail",
                "--rate",
                "600/m",
                "--burst",
                "10",
                "--max-in-flight",
                "8",
                "--max-pending",
                "1000000",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(
        v["config"],
        json!({"rate_per_sec": 10.0, "burst": 10, "max_in_flight": 8, "max_pending": 1000000, "paused": false})
    );
    let v = json(&weir(&s, &["queue", "pause", "mail", "--json"]).await);
    assert_eq!(v["config"]["paused"], true);
    assert_eq!(v["config"]["max_in_flight"], 8, "pause keeps the rest");
    let out = weir(&s, &["queue", "get", "mail"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("rate:          10/s (burst 10)"), "{text}");
    assert!(text.contains("paused:        yes"), "{text}");
    json(&weir(&s, &["queue", "resume", "mail", "--json"]).await);
    let v = json(&weir(&s, &["queue", "config", "mail", "--rate", "none", "--json"]).await);
    assert_eq!(v["config"]["rate_per_sec"], Value::Null);
    let v = json(&weir(&s, &["queue", "get", "mail", "--json"]).await);
    assert_eq!(v["config"]["paused"], false);
    assert_eq!(v["config"]["max_pending"], 1000000);
    for bad in [
        &["--rate", "0/s"][..],
        &["--burst", "0"],
        &["--rate", "5/d"],
        &[],
    ] {
        let mut args = vec!["queue", "config", "mail"];
        args.extend_from_slice(bad);
        let out = weir(&s, &args).await;
        assert!(!out.status.success(), "{bad:?} was taken");
    }
    let v = json(&weir(&s, &["queue", "get", "mail", "--json"]).await);
    assert_eq!(
        v["config"]["max_in_flight"], 8,
        "refused flags changed nothing"
    );
    let out = weir(&s, &["queue", "get", "nope"]).await;
    assert!(
        stderr(&out).contains("no queue named nope"),
        "{}",
        stderr(&out)
    );
    server.child.kill().await.unwrap();
}

/// `weir schedule set|get|list|delete`, with `--json`; a bad expression is
/// refused with the server's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_set_get_list_delete() {
    let mut server = common::start_server(&[]).await;
    let s = server.base.clone();
    let v = json(
        &weir(
            &s,
            &[
                "schedule",
                "set",
                "daily",
                "--cron",
                "0 9 * * *",
                "--tz",
                "Europe/Paris",
                "--queue",
                "reports",
                "--payload",
                r#"{"r":1}"#,
                "--kind",
                "report",
                "--missed",
                "run-once",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(v["name"], "daily");
    assert_eq!(v["missed"], "run_once");
    assert_eq!(v["task"], json!({"payload": {"r": 1}, "kind": "report"}));
    assert!(v["next_run_at"].is_string(), "{v}");
    let v = json(&weir(&s, &["schedule", "get", "daily", "--json"]).await);
    assert_eq!(v["cron"], "0 9 * * *");
    let out = weir(&s, &["schedule", "list"]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("daily  0 9 * * * (Europe/Paris)  -> reports"),
        "{text}"
    );
    let out = weir(
        &s,
        &["schedule", "set", "bad", "--cron", "nope", "--queue", "q"],
    )
    .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cron"), "{}", stderr(&out));
    json(&weir(&s, &["schedule", "delete", "daily", "--json"]).await);
    let out = weir(&s, &["schedule", "get", "daily"]).await;
    assert!(
        stderr(&out).contains("no schedule named daily"),
        "{}",
        stderr(&out)
    );
    let v = json(&weir(&s, &["schedule", "list", "--json"]).await);
    assert_eq!(v, json!({"schedules": []}));
    server.child.kill().await.unwrap();
}

/// Issue 9: `weir enqueue` refused with 429 waits the Retry-After and tries
/// again, storing one task, not two; one whose wait would end past
/// `--retry-for` gives up at once and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_waits_out_a_429_within_retry_for() {
    // One request every 2 s per client address, no burst.
    let mut server =
        common::start_server(&["--ingress-rate", "30/m", "--ingress-burst", "1"]).await;
    let s = server.base.clone();
    json(&weir(&s, &["enqueue", "limited", "--json"]).await);
    // The bucket is empty: refused, then let through after the Retry-After.
    let out = weir(&s, &["enqueue", "limited", "--json"]).await;
    assert_eq!(json(&out)["state"], "pending");
    let err = stderr(&out);
    assert!(err.contains("rate limited (retry after"), "{err}");
    // Once, after the Retry-After: not a hammering of quick retries.
    assert_eq!(err.matches("retrying in").count(), 1, "{err}");

    // Refused again, and the Retry-After (a second or two) outlasts --retry-for.
    let out = weir(&s, &["enqueue", "limited", "--retry-for", "500ms"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("gave up after 0 retries"), "{err}");
    assert!(err.contains("--retry-for 500ms"), "{err}");
    assert!(err.contains("rate limited"), "{err}");

    // Two tasks: the refused tries stored nothing. (Asked from another address,
    // whose bucket is full.)
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let queues: Value = other
        .get(format!("{s}/v1/queues"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(queues["queues"][0]["counts"]["pending"], 2, "{queues}");
    server.child.kill().await.unwrap();
}

/// `weir task list`, `weir task retry|delete` and `weir dead retry|purge` against a
/// queue with dead tasks (made over HTTP: one attempt each, failed).
#[tokio::test]
async fn task_list_and_dead_retry_purge() {
    let mut server = common::start_server(&[]).await;
    let s = server.base.clone();
    let c = weir_client::Client::new(&s).unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        let mut t = weir_client::EnqueueOptions::new(json!(i));
        t.max_attempts = Some(1);
        ids.push(c.enqueue("jobs", &t).await.unwrap().id);
    }
    for t in c.lease("jobs", 4, 0, None).await.unwrap().tasks {
        c.fail(&t.id, &t.lease_id, "it broke\nsecond line", false)
            .await
            .unwrap();
    }
    let out = weir(&s, &["tasks", "list", "jobs", "--state", "dead"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("LAST ERROR"),
        "{text}"
    );
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[1].starts_with(&ids[3]) && lines[1].ends_with("it broke…"),
        "{text}"
    );
    // One page at a time, and its cursor on stderr.
    let out = weir(
        &s,
        &[
            "task", "list", "jobs", "--state", "dead", "--limit", "3", "--json",
        ],
    )
    .await;
    let v = json(&out);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 3);
    let cursor = v["next_cursor"].as_str().unwrap().to_owned();
    let v = json(
        &weir(
            &s,
            &[
                "task", "list", "jobs", "--state", "dead", "--cursor", &cursor, "--json",
            ],
        )
        .await,
    );
    assert_eq!(v["tasks"][0]["id"], ids[0].as_str());
    let v = json(
        &weir(
            &s,
            &[
                "task", "list", "jobs", "--state", "dead", "--limit", "1", "--all", "--json",
            ],
        )
        .await,
    );
    assert_eq!(v["tasks"].as_array().unwrap().len(), 4);

    let v = json(&weir(&s, &["task", "retry", &ids[0], "--json"]).await);
    assert_eq!(
        (v["state"].as_str(), v["attempt"].as_u64()),
        (Some("pending"), Some(0))
    );
    let out = weir(&s, &["task", "retry", &ids[0]]).await;
    assert!(
        stderr(&out).contains("cannot be retried"),
        "{}",
        stderr(&out)
    );
    let out = weir(
        &s,
        &["dead", "retry", "jobs", "--id", &ids[1], "--id", &ids[0]],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "retried 1 dead task of jobs (1 of the ids given were not dead tasks of the queue)"
    );
    let v = json(&weir(&s, &["dead", "purge", "jobs", "--id", &ids[2], "--json"]).await);
    assert_eq!(v, json!({"deleted": 1, "skipped": 0}));
    let out = weir(&s, &["dead", "purge", "jobs"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "purged 1 dead task of jobs"
    );
    let q = c.queue("jobs").await.unwrap();
    assert_eq!((q.counts.dead, q.counts.pending), (0, 2));
    let out = weir(&s, &["task", "delete", &ids[0]]).await;
    assert!(
        stderr(&out).contains("cannot be deleted"),
        "{}",
        stderr(&out)
    );
    let out = weir(&s, &["task", "list", "jobs", "--state", "zombie"]).await;
    assert!(!out.status.success());
    server.child.kill().await.unwrap();
}

/// `--log-format json`: every log line the server writes is one JSON object with
/// a timestamp, a level and the message's fields.
#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    let mut server = common::start_server_with(common::Options {
        extra: &["--log-format", "json"],
        log: Some("info"),
        capture_stderr: true,
        ..common::Options::default()
    })
    .await;
    // Stopping the server logs its shutdown lines; read up to the last.
    server.child.start_kill().unwrap();
    let _ = server.child.wait().await;
    let mut lines = server.stderr.take().unwrap();
    let mut seen = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert!(v["fields"].is_object(), "{line}");
        seen += 1;
    }
    assert!(seen > 0, "the server logged nothing");
}
