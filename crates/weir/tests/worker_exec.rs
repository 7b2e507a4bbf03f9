//! Process-level tests of `weir worker --exec`: a real `weir serve` and real
//! worker processes. Commands report that they started (and their pid) through a
//! FIFO the test reads, so every wait is on an event (a FIFO open, a line on the
//! worker's stderr, a task long-poll), never on a sleep.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use weir_client::{Client, EnqueueOptions, Task, TaskState};

mod common;
use common::Server;

/// Longest any single step may take before the test fails instead of hanging.
const STEP: Duration = Duration::from_secs(30);
/// A queue name for every test (each test has its own server).
const QUEUE: &str = "work";

async fn start_server() -> Server {
    common::start_server(&[
        "--lease-grace-ms",
        "200",
        "--backoff-base-ms",
        "5",
        "--backoff-cap-ms",
        "10",
    ])
    .await
}

/// A `weir worker --exec` child whose stderr lines the test can wait for (they are
/// echoed to the test's stderr too).
struct Worker {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

fn start_worker(base: &str, exec: &str, extra: &[&str]) -> Worker {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["worker", "--server", base, "--queue", QUEUE, "--exec", exec])
        .args(extra)
        .env("WEIR_LOG", "warn")
        // A task without trace context must not pass on the worker's own.
        .env("TRACEPARENT", "the-worker's-own")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn weir worker");
    let (tx, lines) = mpsc::unbounded_channel();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            eprintln!("[worker] {line}");
            let _ = tx.send(line);
        }
    });
    Worker { child, lines }
}

impl Worker {
    /// Waits for a stderr line containing `needle`.
    async fn line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the worker's stderr closed before {needle:?}"),
                Err(_) => panic!("no worker line with {needle:?} within {STEP:?}"),
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id().expect("worker still running") as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    async fn exit(&mut self) -> ExitStatus {
        tokio::time::timeout(STEP, self.child.wait())
            .await
            .expect("the worker exits")
            .unwrap()
    }
}

fn client(server: &Server) -> Client {
    Client::new(&server.base).unwrap()
}

async fn enqueue(c: &Client, task: EnqueueOptions) -> String {
    c.enqueue(QUEUE, &task).await.unwrap().id
}

/// Long-polls until the task is terminal.
async fn terminal(c: &Client, id: &str) -> Task {
    let deadline = Instant::now() + STEP;
    loop {
        let task = c.wait(id, 10_000).await.unwrap();
        if task.state.is_terminal() {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} not terminal: {task:?}"
        );
    }
}

/// Polls a task until it is in `state`. There is no long-poll for a non-terminal
/// state, so this asks again every few milliseconds, within a bound.
async fn reaches(c: &Client, id: &str, state: TaskState) {
    let deadline = Instant::now() + STEP;
    loop {
        let task = c.get(id).await.unwrap();
        if task.state == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} never became {state:?}: {task:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// A FIFO in `dir`, quoted for a shell command line.
fn fifo(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    mkfifo(&path);
    let quoted = format!("'{}'", path.display());
    (path, quoted)
}

/// Reads a FIFO to its end on a thread of its own (opening it blocks until a
/// writer comes): resolves with what a command wrote once it closed it. A thread,
/// not the runtime's blocking pool, so that a failing test is not held up by it.
async fn read_fifo(path: &Path) -> String {
    let (tx, rx) = oneshot::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(&path).unwrap());
    });
    tokio::time::timeout(STEP, rx)
        .await
        .expect("the command writes to its FIFO")
        .unwrap()
}

/// Writes to a FIFO (opening it blocks until a reader comes).
async fn write_fifo(path: &Path, text: &str) {
    let (tx, rx) = oneshot::channel();
    let (path, text) = (path.to_owned(), text.to_owned());
    std::thread::spawn(move || {
        std::fs::write(&path, text).unwrap();
        let _ = tx.send(());
    });
    tokio::time::timeout(STEP, rx)
        .await
        .expect("the command reads its FIFO")
        .unwrap();
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !(state.starts_with('Z') || state.starts_with('X'))
        }
    }
}

/// Waits (on a pidfd, not a sleep) until a process that is not our child exits;
/// false if it is still running after `timeout`.
fn exits_within(pid: i32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    if fd < 0 {
        return !alive(pid);
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the fd is ours to close.
    let ready = unsafe {
        let n = libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int);
        libc::close(fd);
        n
    };
    ready == 1 || !alive(pid)
}

fn pids(text: &str) -> Vec<i32> {
    text.split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_with_stdout_and_fails_with_stderr() {
    let server = start_server().await;
    let c = client(&server);
    let exec = r#"case "$WEIR_KIND" in
  json) read -r p; printf '{"got": %s}\n' "$p" ;;
  text) printf 'hello world\n' ;;
  env) printf '%s %s %s %s' "$WEIR_TASK_ID" "$WEIR_QUEUE" "$WEIR_KIND" "$WEIR_ATTEMPT" ;;
  trace) printf '%s|%s|%s' "${TRACEPARENT-unset}" "${TRACESTATE-unset}" "$WEIR_TASK_ID" ;;
  fail) echo "something broke" >&2; exit 3 ;;
  flaky) if [ "$WEIR_ATTEMPT" = 1 ]; then echo "first try fails" >&2; exit 1; fi; echo '"second"' ;;
  big) head -c 10000 /dev/zero | tr '\0' a ;;
esac"#;
    let mut worker = start_worker(&server.base, exec, &["--output-bytes-max", "4096"]);
    let line = worker.line("weir worker:").await;
    assert!(line.contains("queues=work") && line.contains("concurrency=4"));

    let json_id = enqueue(&c, EnqueueOptions::new(json!({"a": [1, 2]})).kind("json")).await;
    let text_id = enqueue(&c, EnqueueOptions::new(json!(null)).kind("text")).await;
    let env_id = enqueue(&c, EnqueueOptions::new(json!(null)).kind("env")).await;
    let fail_id = enqueue(
        &c,
        EnqueueOptions::new(json!(null))
            .kind("fail")
            .max_attempts(1),
    )
    .await;
    let flaky_id = enqueue(
        &c,
        EnqueueOptions::new(json!(null))
            .kind("flaky")
            .max_attempts(2),
    )
    .await;
    let big_id = enqueue(&c, EnqueueOptions::new(json!(null)).kind("big")).await;
    // Trace context given on one request reaches the command as TRACEPARENT and
    // TRACESTATE; a task without one leaves them unset.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut traced = EnqueueOptions::new(json!(null)).kind("trace");
    traced.traceparent = Some(tp.into());
    traced.tracestate = Some("congo=t61rcWkgMzE".into());
    let traced_id = enqueue(&c, traced).await;
    let untraced_id = enqueue(&c, EnqueueOptions::new(json!(null)).kind("trace")).await;

    let t = terminal(&c, &json_id).await;
    assert_eq!(t.state, TaskState::Completed, "{t:?}");
    assert_eq!(t.result, Some(json!({"got": {"a": [1, 2]}})));

    let t = terminal(&c, &text_id).await;
    assert_eq!(t.state, TaskState::Completed, "{t:?}");
    assert_eq!(t.result, Some(json!("hello world")));

    let t = terminal(&c, &env_id).await;
    assert_eq!(t.state, TaskState::Completed, "{t:?}");
    assert_eq!(t.result, Some(json!(format!("{env_id} {QUEUE} env 1"))));

    let t = terminal(&c, &fail_id).await;
    assert_eq!(t.state, TaskState::Dead, "{t:?}");
    let err = t.last_error.unwrap_or_default();
    assert!(err.contains("something broke"), "{err}");
    assert!(err.contains("exit status 3"), "{err}");

    let t = terminal(&c, &flaky_id).await;
    assert_eq!(t.state, TaskState::Completed, "{t:?}");
    assert_eq!(t.attempt, 2);
    assert_eq!(t.result, Some(json!("second")));

    let t = terminal(&c, &traced_id).await;
    assert_eq!(
        t.result,
        Some(json!(format!("{tp}|congo=t61rcWkgMzE|{traced_id}")))
    );
    let t = terminal(&c, &untraced_id).await;
    assert_eq!(t.result, Some(json!(format!("unset|unset|{untraced_id}"))));

    let t = terminal(&c, &big_id).await;
    assert_eq!(t.state, TaskState::Dead, "{t:?}");
    let err = t.last_error.unwrap_or_default();
    assert!(err.contains("10000 bytes") && err.contains("4096"), "{err}");

    worker.signal(libc::SIGTERM);
    assert_eq!(worker.exit().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_the_process_group_at_the_deadline() {
    let server = start_server().await;
    let c = client(&server);
    let dir = tempfile::tempdir().unwrap();
    let (pids_path, pids_q) = fifo(dir.path(), "pids");
    // A grandchild in the background, and the shell waiting for it: both must go.
    let exec = format!(r#"sleep 30 & echo "$$ $!" > {pids_q}; wait"#);
    let _worker = start_worker(&server.base, &exec, &["--kill-grace", "2s"]);
    let id = enqueue(
        &c,
        EnqueueOptions::new(json!(null))
            .timeout_ms(300)
            .max_attempts(1),
    )
    .await;
    let running = pids(&read_fifo(&pids_path).await);
    let (shell, grandchild) = (running[0], running[1]);
    let t = terminal(&c, &id).await;
    assert_eq!(t.state, TaskState::Dead, "{t:?}");
    let err = t.last_error.unwrap_or_default();
    assert!(err.contains("killed: deadline"), "{err}");
    assert!(
        !alive(shell),
        "the command's shell {shell} outlived its task"
    );
    assert!(
        exits_within(grandchild, Duration::from_secs(5)),
        "the command's background process {grandchild} outlived its task"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_running_command() {
    let server = start_server().await;
    let c = client(&server);
    let dir = tempfile::tempdir().unwrap();
    let (pid_path, pid_q) = fifo(dir.path(), "pid");
    let exec = format!("echo $$ > {pid_q}; exec sleep 30");
    let _worker = start_worker(
        &server.base,
        &exec,
        &["--heartbeat-interval", "100ms", "--kill-grace", "2s"],
    );
    let id = enqueue(&c, EnqueueOptions::new(json!(null))).await;
    let pid = pids(&read_fifo(&pid_path).await)[0];
    assert!(alive(pid));
    let t = c.cancel(&id).await.unwrap();
    assert!(t.cancel_requested, "{t:?}");
    let t = terminal(&c, &id).await;
    assert_eq!(t.state, TaskState::Canceled, "{t:?}");
    assert!(!alive(pid), "the canceled command {pid} still runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_running_and_releases_prefetched() {
    let server = start_server().await;
    let c = client(&server);
    let dir = tempfile::tempdir().unwrap();
    let (started, started_q) = fifo(dir.path(), "started");
    let (go, go_q) = fifo(dir.path(), "go");
    let exec = format!(
        r#"case "$WEIR_KIND" in
  slow) echo started > {started_q}; cat {go_q} > /dev/null; echo finished ;;
  *) echo quick ;;
esac"#
    );
    let ids = c
        .enqueue_batch(
            QUEUE,
            &[
                EnqueueOptions::new(json!(1)).kind("slow"),
                EnqueueOptions::new(json!(2)).kind("quick"),
                EnqueueOptions::new(json!(3)).kind("quick"),
            ],
        )
        .await
        .unwrap();
    let mut worker = start_worker(
        &server.base,
        &exec,
        &["--concurrency", "1", "--prefetch", "3"],
    );
    read_fifo(&started).await;
    // The two others are leased (prefetched) but wait for the one slot.
    reaches(&c, &ids[1], TaskState::Active).await;
    reaches(&c, &ids[2], TaskState::Active).await;
    worker.signal(libc::SIGTERM);
    worker.line("shutting down").await;
    // Only now may the running command finish.
    write_fifo(&go, "go").await;
    let status = worker.exit().await;
    assert_eq!(status.code(), Some(0), "the worker exits 0 after SIGTERM");

    let t = c.get(&ids[0]).await.unwrap();
    assert_eq!(t.state, TaskState::Completed, "{t:?}");
    assert_eq!(t.result, Some(json!("finished")));
    for id in &ids[1..] {
        let t = c.get(id).await.unwrap();
        assert_eq!(t.state, TaskState::Pending, "a prefetched task: {t:?}");
        assert_eq!(t.attempt, 0, "a released task spends no attempt: {t:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_task_runs_again_after_its_lease() {
    let server = start_server().await;
    let c = client(&server);
    let dir = tempfile::tempdir().unwrap();
    let (pid_path, pid_q) = fifo(dir.path(), "pid");
    let exec = format!(
        r#"if [ "$WEIR_ATTEMPT" = 1 ]; then echo $$ > {pid_q}; exec sleep 30; fi; echo "attempt $WEIR_ATTEMPT""#
    );
    let mut first = start_worker(&server.base, &exec, &[]);
    // Long enough that the first worker is dead before its own deadline kill.
    let id = enqueue(
        &c,
        EnqueueOptions::new(json!(null))
            .timeout_ms(600)
            .max_attempts(3),
    )
    .await;
    let orphan = pids(&read_fifo(&pid_path).await)[0];
    first.signal(libc::SIGKILL);
    first.exit().await;
    let _second = start_worker(&server.base, &exec, &[]);
    let t = terminal(&c, &id).await;
    // The first worker's command runs on, orphaned: nothing was left to stop it.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(orphan, libc::SIGKILL) };
    assert_eq!(t.state, TaskState::Completed, "{t:?}");
    assert_eq!(t.attempt, 2, "{t:?}");
    assert_eq!(t.result, Some(json!("attempt 2")));
}
