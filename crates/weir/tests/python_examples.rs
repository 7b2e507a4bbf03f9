//! Runs `examples/python/worker.py`, `producer.py` and `handle_one.py` (under
//! `weir worker --exec`) against a real `weir serve`, so the README's any-language
//! workers stay true. Without python3 the tests fail on CI (`CI=true`) and are
//! skipped with a note elsewhere.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_worker_and_producer() {
    if !have_python3() {
        return;
    }
    let examples = examples();
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
    let others = format!(
        "worker stderr:\n{}",
        String::from_utf8_lossy(&worked.stderr)
    );
    assert!(worked.status.success(), "worker.py failed\n{others}");
    check_producer(&produced, &others);
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
