//! Process-level tests of `weir serve`: kill -9 under concurrent load loses no
//! acknowledged enqueue; SIGTERM shuts down gracefully with exit code 0.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// A `weir serve` child process on a free port.
struct Proc {
    child: Child,
    base: String,
}

fn start(data_dir: &std::path::Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn weir serve");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("weir listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Proc { child, base: addr }
}

const CLIENTS: usize = 8;
/// The kill comes once this many enqueues were acknowledged in a round.
const ACKED_BEFORE_KILL: usize = 1500;
/// Upper bound on the requests one client sends in a round, so a round always ends.
const REQUESTS_PER_CLIENT_MAX: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_task() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut all_acked: Vec<String> = Vec::new();
    for round in 0..5 {
        let mut p = start(dir.path());
        // Tasks leased (active) when the server dies must come back pending.
        let mut leased_ids = Vec::new();
        if round > 0 {
            let v: Value = http
                .post(format!("{}/v1/queues/crash/lease", p.base))
                .json(&json!({"max": 5}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for t in v["tasks"].as_array().unwrap() {
                assert_eq!(t["attempt"], 1);
                leased_ids.push(t["id"].as_str().unwrap().to_owned());
            }
            assert_eq!(leased_ids.len(), 5);
        }
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let reached = Arc::new(tokio::sync::Notify::new());
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let (http, base, acked, count, killed, reached) = (
                http.clone(),
                p.base.clone(),
                acked.clone(),
                count.clone(),
                killed.clone(),
                reached.clone(),
            );
            clients.push(tokio::spawn(async move {
                for i in 0..REQUESTS_PER_CLIENT_MAX {
                    if killed.load(Ordering::SeqCst) {
                        break;
                    }
                    // Half the clients enqueue one task per request, half batches of 10.
                    let resp = if c % 2 == 0 {
                        http.post(format!("{base}/v1/queues/crash/tasks"))
                            .json(&json!({"payload": {"round": round, "c": c, "i": i}}))
                            .send()
                            .await
                    } else {
                        let tasks: Vec<Value> = (0..10)
                            .map(|j| json!({"payload": {"c": c, "i": i, "j": j}}))
                            .collect();
                        http.post(format!("{base}/v1/queues/crash/tasks:batch"))
                            .json(&json!({"tasks": tasks}))
                            .send()
                            .await
                    };
                    let Ok(resp) = resp else { break };
                    if !resp.status().is_success() {
                        break;
                    }
                    let Ok(v) = resp.json::<Value>().await else {
                        break;
                    };
                    let ids: Vec<String> = match v.get("ids") {
                        Some(ids) => ids
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_str().unwrap().to_owned())
                            .collect(),
                        None => vec![v["id"].as_str().unwrap().to_owned()],
                    };
                    let n = ids.len();
                    acked.lock().unwrap().extend(ids);
                    if count.fetch_add(n, Ordering::SeqCst) + n >= ACKED_BEFORE_KILL {
                        reached.notify_one();
                    }
                }
            }));
        }
        reached.notified().await;
        // SIGKILL while the clients are still sending.
        p.child.kill().unwrap();
        killed.store(true, Ordering::SeqCst);
        p.child.wait().unwrap();
        for c in clients {
            c.await.unwrap();
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert!(acked.len() >= ACKED_BEFORE_KILL);
        all_acked.extend(acked);

        let mut p = start(dir.path());
        for (n, id) in all_acked.iter().enumerate() {
            let resp = http
                .get(format!("{}/v1/tasks/{id}", p.base))
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                200,
                "round {round}: acknowledged task #{n} {id} is lost"
            );
        }
        for id in &leased_ids {
            let v: Value = http
                .get(format!("{}/v1/tasks/{id}", p.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(
                v["state"], "pending",
                "active task {id} after the crash: {v}"
            );
            assert_eq!(v["attempt"], 0, "a crash must not burn an attempt: {v}");
        }
        let v: Value = http
            .get(format!("{}/v1/queues/crash", p.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let pending = v["counts"]["pending"].as_u64().unwrap() as usize;
        assert!(
            pending >= all_acked.len(),
            "pending {pending} < acknowledged {}",
            all_acked.len()
        );
        assert_eq!(v["counts"]["active"], 0);
        p.child.kill().unwrap();
        p.child.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut p = start(dir.path());
    let v: Value = http
        .post(format!("{}/v1/queues/t/tasks", p.base))
        .json(&json!({"payload": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    // A long-poll open at shutdown is answered, not cut off.
    let base = p.base.clone();
    let h = http.clone();
    let poll = tokio::spawn(async move {
        h.post(format!("{base}/v1/queues/empty/lease"))
            .json(&json!({"wait_ms": 60000}))
            .send()
            .await
    });
    let v: Value = http
        .get(format!("{}/v1/queues", p.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["queues"].is_array());
    let status = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = p.child.wait().unwrap();
    assert_eq!(
        exit.code(),
        Some(0),
        "weir serve should exit 0 after SIGTERM"
    );
    let resp = poll.await.unwrap().expect("the long-poll got an answer");
    assert_eq!(resp.status(), 200);
    let mut p = start(dir.path());
    let v: Value = http
        .get(format!("{}/v1/tasks/{id}", p.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "pending");
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}
