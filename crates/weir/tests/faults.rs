//! Storage faults against the real binary: with `tests/faultfs/faultfs.c` preloaded,
//! the server's file system calls fail with real errno values while a control file
//! exists. A shortage of file descriptors or a full disk refuses writes with a
//! clear, retryable error and heals by itself once the cause clears, with every
//! acknowledged task intact; a failed fsync makes the server exit non-zero so that
//! a restart recovers it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

/// Longest a server may take to exit once its fsync failed.
const PROCESS_WAIT: Duration = Duration::from_secs(30);
/// Most batches sent while waiting for a fault to surface, so a test always ends.
const BATCHES_MAX: usize = 200;
/// Most retries (each after the server's `Retry-After`) while waiting for writes to
/// resume once a fault is cleared: 30 s at the longest `Retry-After` the store sends.
const RESUME_TRIES_MAX: usize = 15;

/// Builds the shim once per test binary, into a directory that outlives the tests.
fn shim() -> PathBuf {
    static SHIM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SHIM.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faultfs/faultfs.c");
        let out = std::env::temp_dir().join(format!("weir-faultfs-{}.so", std::process::id()));
        let status = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .status()
            .expect("a C compiler (cc) is needed to build the fault-injection shim");
        assert!(status.success(), "building {} failed", src.display());
        out
    })
    .clone()
}

/// A `weir serve` with the shim preloaded.
struct Faulty {
    server: common::Server,
    base: String,
    ctl: PathBuf,
    /// Everything the server logged, filled by a background task.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Faulty {
    async fn start(data: &Path, ctl: &Path, extra: &[&str]) -> Faulty {
        let shim = shim();
        let mut server = common::start_server_with(common::Options {
            extra,
            log: Some("info"),
            capture_stderr: true,
            data_dir: Some(data),
            env: &[
                ("LD_PRELOAD", shim.as_os_str()),
                ("WEIR_FAULTFS_DIR", ctl.as_os_str()),
                ("WEIR_FAULTFS_ROOT", data.as_os_str()),
            ],
            ..common::Options::default()
        })
        .await;
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut lines = server.stderr.take().expect("stderr is captured");
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Faulty {
            base: server.base.clone(),
            server,
            ctl: ctl.to_owned(),
            log,
        }
    }

    fn fault(&self, name: &str, on: bool) {
        let p = self.ctl.join(name);
        if on {
            std::fs::write(p, b"").unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// One batch of `n` tasks with `bytes`-sized payloads; the answer's status, its
/// `Retry-After`, and its body.
async fn batch(
    http: &reqwest::Client,
    base: &str,
    n: usize,
    bytes: usize,
) -> (u16, Option<String>, Value) {
    let tasks: Vec<Value> = (0..n)
        .map(|i| json!({"payload": {"i": i, "pad": "x".repeat(bytes)}}))
        .collect();
    let resp = http
        .post(format!("{base}/v1/queues/faults/tasks:batch"))
        .json(&json!({ "tasks": tasks }))
        .send()
        .await
        .expect("the server answers");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, retry, body)
}

fn ids(body: &Value) -> Vec<String> {
    body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Sends batches until one is refused; returns the refusal and records the ids of
/// every batch acknowledged before it.
async fn until_refused(
    http: &reqwest::Client,
    s: &Faulty,
    bytes: usize,
    acked: &mut Vec<String>,
) -> (u16, Option<String>, Value) {
    for _ in 0..BATCHES_MAX {
        let (status, retry, body) = batch(http, &s.base, 50, bytes).await;
        if status == 201 {
            acked.extend(ids(&body));
            continue;
        }
        return (status, retry, body);
    }
    panic!(
        "no batch was refused in {BATCHES_MAX} tries; server log:\n{}",
        s.log()
    );
}

/// Retries a batch, pausing as `Retry-After` says, until it is acknowledged.
async fn until_accepted(http: &reqwest::Client, s: &Faulty, acked: &mut Vec<String>) {
    for _ in 0..RESUME_TRIES_MAX {
        let (status, retry, body) = batch(http, &s.base, 10, 100).await;
        if status == 201 {
            acked.extend(ids(&body));
            return;
        }
        assert!(
            matches!(status, 503 | 507),
            "a refusal while healing is 503/507, got {status}: {body}"
        );
        let secs: u64 = retry
            .expect("a refusal carries Retry-After")
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    panic!(
        "writes did not resume after the fault cleared; server log:\n{}",
        s.log()
    );
}

/// Every acknowledged task is readable with its payload.
async fn assert_all_there(http: &reqwest::Client, base: &str, acked: &[String]) {
    for id in acked {
        let resp = http
            .get(format!("{base}/v1/tasks/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "acknowledged task {id} is missing");
        let v: Value = resp.json().await.unwrap();
        assert!(v["payload"]["i"].is_number(), "task {id} lost its payload");
    }
}

async fn readyz(http: &reqwest::Client, base: &str) -> (u16, Value) {
    let resp = http.get(format!("{base}/readyz")).send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_heals_without_a_restart() {
    let (data, ctl) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Small segments, so that the task log must open new files soon.
    let s = Faulty::start(data.path(), ctl.path(), &["--segment-bytes", "4194304"]).await;
    let http = reqwest::Client::new();
    let mut acked = Vec::new();
    let (status, _, body) = batch(&http, &s.base, 50, 100).await;
    assert_eq!(status, 201, "{body}");
    acked.extend(ids(&body));

    s.fault("emfile", true);
    let (status, retry, body) = until_refused(&http, &s, 16 * 1024, &mut acked).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["type"], "urn:weir:problem:too-many-open-files",
        "{body}"
    );
    assert!(retry.is_some(), "a 503 carries Retry-After");
    let (status, body) = readyz(&http, &s.base).await;
    assert_eq!(
        status,
        503,
        "/readyz while out of descriptors: {body}\n{}",
        s.log()
    );
    assert_eq!(
        body["type"], "urn:weir:problem:too-many-open-files",
        "{body}"
    );

    s.fault("emfile", false);
    until_accepted(&http, &s, &mut acked).await;
    assert_eq!(readyz(&http, &s.base).await.0, 200);
    assert_all_there(&http, &s.base, &acked).await;
    assert!(
        s.log().contains("the store takes writes again"),
        "{}",
        s.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_heals_when_space_comes_back() {
    let (data, ctl) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = Faulty::start(data.path(), ctl.path(), &[]).await;
    let http = reqwest::Client::new();
    let mut acked = Vec::new();
    let (status, _, body) = batch(&http, &s.base, 50, 100).await;
    assert_eq!(status, 201, "{body}");
    acked.extend(ids(&body));
    // A task leased before the outage stays leased across it: its worker can still
    // ack it afterwards.
    let leased: Value = http
        .post(format!("{}/v1/queues/faults/lease", s.base))
        .json(&json!({"max": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task = &leased["tasks"][0];

    s.fault("enospc", true);
    let (status, retry, body) = until_refused(&http, &s, 100, &mut acked).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["type"], "urn:weir:problem:disk-full", "{body}");
    assert!(retry.is_some(), "a 507 carries Retry-After");

    s.fault("enospc", false);
    until_accepted(&http, &s, &mut acked).await;
    assert_eq!(readyz(&http, &s.base).await.0, 200);
    let resp = http
        .post(format!(
            "{}/v1/tasks/{}/ack",
            s.base,
            task["id"].as_str().unwrap()
        ))
        .json(&json!({"lease_id": task["lease_id"], "result": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the lease survived the outage");
    assert_all_there(&http, &s.base, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_exits_non_zero_and_a_restart_recovers() {
    let (data, ctl) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut s = Faulty::start(data.path(), ctl.path(), &[]).await;
    let http = reqwest::Client::new();
    let mut acked = Vec::new();
    for _ in 0..3 {
        let (status, _, body) = batch(&http, &s.base, 20, 100).await;
        assert_eq!(status, 201, "{body}");
        acked.extend(ids(&body));
    }

    s.fault("eio_fsync", true);
    // The write whose fsync fails is not acknowledged (the server may also close
    // the connection as it exits).
    if let Ok(resp) = http
        .post(format!("{}/v1/queues/faults/tasks", s.base))
        .json(&json!({"payload": 1}))
        .send()
        .await
    {
        assert!(
            resp.status().is_server_error(),
            "a write whose fsync failed got {}",
            resp.status()
        );
    }
    let status = tokio::time::timeout(PROCESS_WAIT, s.server.child.wait())
        .await
        .expect("the server exits after a failed fsync")
        .unwrap();
    assert!(
        !status.success(),
        "exit status {status:?}; log:\n{}",
        s.log()
    );
    assert!(s.log().contains("fsync"), "{}", s.log());

    s.fault("eio_fsync", false);
    let s = Faulty::start(data.path(), ctl.path(), &[]).await;
    assert_all_there(&http, &s.base, &acked).await;
}
