//! Runs `examples/python/worker.py` and `producer.py` against a real `weir serve`,
//! so the README's any-language worker stays true. Without python3 the test fails
//! on CI (`CI=true`) and is skipped with a note elsewhere.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_and_producer() {
    if !python3_available() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("python3 is required on CI for the Python examples test");
        }
        eprintln!("note: python3 not found; skipping the Python examples test");
        return;
    }
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/python");
    let server = common::start_server(&[]).await;
    let base = server.base.clone();

    let count = COUNT.to_string();
    let worker = Command::new("python3")
        .arg(examples.join("worker.py"))
        .args(["--server", &base, "--queue", "py", "--batch", "5"])
        .args(["--max-tasks", &count])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn worker.py");
    let producer = Command::new("python3")
        .arg(examples.join("producer.py"))
        .args(["--server", &base, "--queue", "py", "--count", &count])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn producer.py");

    let produced = finished(producer, "producer.py").await;
    let worked = finished(worker, "worker.py").await;
    let out = String::from_utf8_lossy(&produced.stdout);
    let report = format!(
        "producer stdout:\n{out}\nproducer stderr:\n{}\nworker stderr:\n{}",
        String::from_utf8_lossy(&produced.stderr),
        String::from_utf8_lossy(&worked.stderr)
    );
    assert!(produced.status.success(), "producer.py failed\n{report}");
    assert!(worked.status.success(), "worker.py failed\n{report}");
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
