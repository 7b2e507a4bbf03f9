//! Runs `examples/python/worker.py`, `channel_worker.py`, `producer.py` and
//! `handle_one.py` (under `weir worker --exec`) against a real `weir serve`, so the
//! README's any-language workers stay true. Without python3 (or, for
//! `channel_worker.py`, its `websockets` library) the tests fail on CI (`CI=true`)
//! and are skipped with a note elsewhere.

mod common;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

/// Tasks the producer enqueues and the worker handles.
const COUNT: usize = 12;
/// Longest either script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

fn python3_available() -> bool {
    std::process::Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn finished(child: tokio::process::Child, what: &str) -> Output {
    tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {SCRIPT_TIMEOUT:?}"))
        .unwrap()
}

/// Whether the test can run: python3 is there, or (off CI) it is skipped.
fn have_python3() -> bool {
    if python3_available() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("python3 is required on CI for the Python examples test");
    }
    eprintln!("note: python3 not found; skipping the Python examples test");
    false
}

/// Whether the channel worker's test can run: python3 has `websockets` (>= 13,
/// `examples/python/requirements-channel.txt`), or (off CI) it is skipped.
fn have_websockets() -> bool {
    if !have_python3() {
        return false;
    }
    let found = std::process::Command::new("python3")
        .args(["-c", "import websockets.asyncio.client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "python3's websockets (>= 13) is required on CI for the channel worker test: \
             pip install -r examples/python/requirements-channel.txt"
        );
    }
    eprintln!(
        "note: python3 has no websockets (>= 13); skipping the channel worker test \
         (pip install -r examples/python/requirements-channel.txt)"
    );
    false
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/python")
}

/// The producer's report, checked: exit 0, one line per task, and known results.
fn check_producer(produced: &Output, others: &str) {
    let out = String::from_utf8_lossy(&produced.stdout);
    let report = format!(
        "producer stdout:\n{out}\nproducer stderr:\n{}\n{others}",
        String::from_utf8_lossy(&produced.stderr),
    );
    assert!(produced.status.success(), "producer.py failed\n{report}");
    assert_eq!(out.lines().count(), COUNT, "one line per result\n{report}");
    assert!(
        out.contains(r#"add {"a": 4, "b": 8} -> 12"#),
        "an add result\n{report}"
    );
    assert!(
        out.contains(r#"upper "task number 3" -> "TASK NUMBER 3""#),
        "an upper result\n{report}"
    );
}

/// Runs `producer.py` and the worker `script` (with `args`) on `queue` of a fresh
/// server until both exit; checks the producer's report and the worker's exit
/// and returns the worker's stderr.
async fn worker_and_producer(script: &str, args: &[&str], queue: &str) -> String {
    let examples = examples();
    let server = common::start_server(&[]).await;
    let base = server.base.clone();
    let count = COUNT.to_string();
    let worker = Command::new("python3")
        .arg(examples.join(script))
        .args(["--server", &base, "--queue", queue])
        .args(args)
        .args(["--max-tasks", &count])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {script}: {e}"));
    let producer = Command::new("python3")
        .arg(examples.join("producer.py"))
        .args(["--server", &base, "--queue", queue, "--count", &count])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn producer.py");

    let produced = finished(producer, "producer.py").await;
    let worked = finished(worker, script).await;
    let stderr = String::from_utf8_lossy(&worked.stderr).into_owned();
    let others = format!("{script} stderr:\n{stderr}");
    assert!(worked.status.success(), "{script} failed\n{others}");
    check_producer(&produced, &others);
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_and_producer() {
    if !have_python3() {
        return;
    }
    worker_and_producer("worker.py", &["--batch", "5"], "py").await;
}

/// The same producer's tasks through `channel_worker.py`: the worker channel
/// (`GET /v1/workers/connect`, a WebSocket) instead of HTTP long-polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_channel_worker_and_producer() {
    if !have_websockets() {
        return;
    }
    let stderr = worker_and_producer("channel_worker.py", &["--concurrency", "4"], "pych").await;
    assert!(
        stderr.contains(&format!("handled {COUNT} tasks")),
        "every task settled through the channel\n{stderr}"
    );
}

/// The README's `weir worker --exec 'python3 examples/python/handle_one.py'`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_handle_one_under_weir_worker_exec() {
    if !have_python3() {
        return;
    }
    let examples = examples();
    let server = common::start_server(&[]).await;
    let base = server.base.clone();
    let script = examples.join("handle_one.py");
    let exec = format!("python3 '{}'", script.display());
    let mut worker = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "worker",
            "--server",
            &base,
            "--queue",
            "pyexec",
            "--concurrency",
            "4",
        ])
        .args(["--exec", &exec])
        .env("WEIR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn weir worker");
    // Read while it runs, so a chatty worker never blocks on a full pipe.
    let mut stderr = worker.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    let count = COUNT.to_string();
    let producer = Command::new("python3")
        .arg(examples.join("producer.py"))
        .args(["--server", &base, "--queue", "pyexec", "--count", &count])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn producer.py");
    let produced = finished(producer, "producer.py").await;
    // The producer saw every result, so the worker can stop (SIGTERM: graceful).
    let pid = worker.id().expect("worker running") as libc::pid_t;
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(SCRIPT_TIMEOUT, worker.wait())
        .await
        .expect("weir worker exits on SIGTERM")
        .unwrap();
    let others = format!("weir worker stderr:\n{}", stderr.await.unwrap());
    check_producer(&produced, &others);
    assert!(status.success(), "weir worker failed\n{others}");
}

/// Issue 6: results the worker cannot encode (an infinity) or the server refuses
/// (larger than its result limit) fail just their task, without retry; the
/// batch-mates complete and the worker keeps going. (Before, the first made the
/// whole settle a 400 and the second a 413, and the worker exited.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_fails_poison_results_alone() {
    if !have_python3() {
        return;
    }
    // Payloads may be larger than results, so a result can be refused.
    let server = common::start_server(&["--payload-bytes-max", "4000000"]).await;
    let client = weir_client::Client::new(&server.base).unwrap();
    let task = |kind: &str, payload: serde_json::Value| {
        weir_client::EnqueueOptions::new(payload).kind(kind)
    };
    let big = "x".repeat(1_500_000);
    let ids = client
        .enqueue_batch(
            "pyp",
            &[
                task("add", serde_json::json!({"a": 1e308, "b": 1e308})),
                task("upper", serde_json::json!(big)),
                task("add", serde_json::json!({"a": 2, "b": 3})),
                task("upper", serde_json::json!("ok")),
            ],
        )
        .await
        .unwrap();

    let worker = Command::new("python3")
        .arg(examples().join("worker.py"))
        .args(["--server", &server.base, "--queue", "pyp", "--batch", "10"])
        .args(["--max-tasks", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn worker.py");
    let worked = finished(worker, "worker.py").await;
    let stderr = String::from_utf8_lossy(&worked.stderr);
    assert!(worked.status.success(), "worker.py failed\n{stderr}");

    let mut tasks = Vec::new();
    for id in &ids {
        tasks.push(client.wait(id, 10_000).await.unwrap());
    }
    let error = |i: usize| tasks[i].last_error.clone().unwrap_or_default();
    assert_eq!(tasks[0].state, weir_client::TaskState::Dead, "{stderr}");
    assert_eq!(tasks[0].attempt, 1, "not retried");
    assert!(error(0).contains("could not encode"), "{}", error(0));
    assert_eq!(tasks[1].state, weir_client::TaskState::Dead, "{stderr}");
    assert_eq!(tasks[1].attempt, 1, "not retried");
    assert!(
        error(1).contains("the server refused the result"),
        "{}",
        error(1)
    );
    assert_eq!(tasks[2].state, weir_client::TaskState::Completed);
    assert_eq!(tasks[2].result, Some(serde_json::json!(5)));
    assert_eq!(tasks[3].state, weir_client::TaskState::Completed);
    assert_eq!(tasks[3].result, Some(serde_json::json!("OK")));
}

/// The part of worker.py a real server can no longer exercise: a lease answer
/// holding a task too deep for Python's json (100,000 levels; an older server, or
/// a task stored before the check) decodes task by task, and the deep one is set
/// apart with its id and lease id; a lone surrogate decodes in Python but its
/// result cannot be encoded, and fails alone.
const DECODE_CHECK: &str = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import worker
ok = {"id": "ok", "queue": "q", "kind": "add", "payload": {"a": 1, "b": 2, "s": "x]}\"["}, "lease_id": "l-ok", "attempt": 1}
deep = "[" * 100000 + "1" + "]" * 100000
bad = '{"id":"deep","kind":"add","payload":%s,"lease_id":"l-deep","x":{"id":"inner"}}' % deep
lone = '{"id":"lone","lease_id":"l-lone","kind":"upper","payload":"\\ud800"}'
tasks, undecodable = worker.decode_lease('{"tasks":[%s,%s,%s]}' % (json.dumps(ok), bad, lone))
assert [t["id"] for t in tasks] == ["ok", "lone"], tasks
assert tasks[0] == ok, tasks[0]
assert [u[:2] for u in undecodable] == [("deep", "l-deep")], undecodable
assert "could not decode" in undecodable[0][2] and "RecursionError" in undecodable[0][2], undecodable
assert worker.run(tasks[0]) == {"id": "ok", "lease_id": "l-ok", "result": 3}
out = worker.run(tasks[1])
assert out["retry"] is False and "could not encode" in out["error"], out
json.dumps(out).encode("utf-8")  # the error text itself is valid Unicode
print("ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_decodes_a_lease_task_by_task() {
    if !have_python3() {
        return;
    }
    let child = Command::new("python3")
        .args(["-c", DECODE_CHECK])
        .arg(examples())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python3");
    let out = finished(child, "the decode check").await;
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 9: both examples' `call` (`weir_http.call`) waits out a 429's
/// Retry-After and sends the request again, once, instead of failing. The server
/// lets one request through every 2 s per client address; each `call` after the
/// first finds the bucket empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_calls_wait_out_a_429() {
    if !have_python3() {
        return;
    }
    let server = common::start_server(&["--ingress-rate", "30/m", "--ingress-burst", "1"]).await;
    let script = r#"
import sys
sys.path.insert(0, sys.argv[1])
import producer, worker
server = sys.argv[2]
producer.call(server, "GET", "/v1/queues")
print(worker.call(server, "GET", "/v1/queues"))
print(producer.call(server, "GET", "/v1/queues"))
"#;
    let child = Command::new("python3")
        .args(["-c", script])
        .arg(examples())
        .arg(&server.base)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python3");
    let out = finished(child, "the calls").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout.matches("{'queues': []}").count(), 2, "{stdout}");
    // One wait each, as long as the server asked (a token every 2 s).
    for who in ["worker", "producer"] {
        let waits: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with(&format!("{who}: HTTP 429, retrying in ")))
            .collect();
        assert_eq!(waits.len(), 1, "{who}: {stderr}");
        assert!(
            waits[0].contains(" in 2.") || waits[0].contains(" in 1."),
            "{stderr}"
        );
    }
}
