//! `weir worker --exec CMD`: a worker pool (weir-worker) whose one handler runs a
//! shell command per task, so any program can be a weir worker. The payload goes
//! to the command's stdin; exit 0 acks with its stdout as the result; any other
//! exit fails the attempt with the end of its stderr. The command runs in its own
//! process group, which is stopped (SIGTERM, then SIGKILL) when the task's deadline
//! passes, when the task is canceled, or when the worker shuts down.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio_util::sync::CancellationToken;
use weir_core::{validate, Limits};
use weir_worker::{CancelReason, Ctx, HandlerError, PoolBuilder, Task};

use crate::cli::{ConnArgs, WorkerArgs};
use crate::serve::ConfigError;

/// How much of the end of a command's stderr a failed task's error keeps.
pub const STDERR_TAIL_BYTES: usize = 4096;
/// Largest `--output-bytes-max` accepted (the server's own result limit is
/// smaller by default, 1 MiB; this only bounds the worker's memory).
pub const OUTPUT_BYTES_MAX_LIMIT: usize = 64 << 20;
/// Most commands one worker may run at once.
pub const CONCURRENCY_MAX: usize = 4096;
/// Largest `--queue name=weight`.
pub const QUEUE_WEIGHT_MAX: u32 = 1000;
/// Bytes read from a command's stdout or stderr per call.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Kept between the end of `--kill-grace` and the pool abandoning the handler.
const KILL_GRACE_MARGIN_MS: u64 = 200;
/// The command's shell.
const SHELL: &str = "sh";

/// `weir worker`'s validated configuration.
#[derive(Debug)]
pub struct WorkerConfig {
    /// The server, its CA certificate and the API key.
    pub conn: ConnArgs,
    /// Queues to lease from, with their weights.
    pub queues: Vec<(String, u32)>,
    /// Commands running at once.
    pub concurrency: usize,
    /// Tasks leased ahead of a free slot (`None`: the pool's default).
    pub prefetch: Option<usize>,
    /// How often running tasks heartbeat (`None`: the pool's default).
    pub heartbeat_interval: Option<Duration>,
    pub transport: weir_worker::Transport,
    /// How long running commands may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Name sent with every lease.
    pub name: String,
    /// What each task runs.
    pub exec: Arc<ExecConfig>,
}

/// How one task's command is run.
#[derive(Debug)]
pub struct ExecConfig {
    /// The `sh -c` command line.
    pub command: String,
    /// Between SIGTERM and SIGKILL of a command being stopped; also how long the
    /// output of a command that exited may take to close.
    pub kill_grace: Duration,
    /// Largest stdout (and result) a command may produce.
    pub output_bytes_max: usize,
}

/// Checks the flags and builds the configuration.
pub fn config(args: &WorkerArgs) -> Result<WorkerConfig, ConfigError> {
    if args.exec.trim().is_empty() {
        return Err(ConfigError("--exec must not be empty".into()));
    }
    if args.concurrency == 0 || args.concurrency > CONCURRENCY_MAX {
        return Err(ConfigError(format!(
            "--concurrency must be between 1 and {CONCURRENCY_MAX}"
        )));
    }
    if args.output_bytes_max == 0 || args.output_bytes_max > OUTPUT_BYTES_MAX_LIMIT {
        return Err(ConfigError(format!(
            "--output-bytes-max must be between 1 and {OUTPUT_BYTES_MAX_LIMIT}"
        )));
    }
    let limits = Limits::default();
    let mut queues: Vec<(String, u32)> = Vec::new();
    for spec in &args.queues {
        let (name, weight) = parse_queue(spec)?;
        validate::queue_name(&name, &limits)
            .map_err(|e| ConfigError(format!("--queue {spec:?}: {e}")))?;
        if queues.iter().any(|(q, _)| *q == name) {
            return Err(ConfigError(format!("--queue {name} is given twice")));
        }
        queues.push((name, weight));
    }
    if queues.is_empty() {
        return Err(ConfigError("at least one --queue is required".into()));
    }
    let name = match &args.name {
        Some(name) => name.clone(),
        None => default_name(),
    };
    validate::text("--name", &name, limits.worker_name_bytes_max)
        .map_err(|e| ConfigError(e.to_string()))?;
    Ok(WorkerConfig {
        conn: args.conn.clone(),
        queues,
        concurrency: args.concurrency,
        prefetch: args.prefetch,
        heartbeat_interval: args.heartbeat_interval,
        transport: match args.transport {
            crate::cli::Transport::Channel => weir_worker::Transport::Channel,
            crate::cli::Transport::Http => weir_worker::Transport::Http,
        },
        shutdown_grace: args.shutdown_grace,
        name,
        exec: Arc::new(ExecConfig {
            command: args.exec.clone(),
            kill_grace: args.kill_grace,
            output_bytes_max: args.output_bytes_max,
        }),
    })
}

/// `name` or `name=weight` (`=` cannot occur in a queue name).
fn parse_queue(spec: &str) -> Result<(String, u32), ConfigError> {
    let Some((name, weight)) = spec.split_once('=') else {
        return Ok((spec.trim().to_owned(), 1));
    };
    match weight.trim().parse::<u32>() {
        Ok(w) if (1..=QUEUE_WEIGHT_MAX).contains(&w) => Ok((name.trim().to_owned(), w)),
        _ => Err(ConfigError(format!(
            "--queue {spec:?}: the weight must be a whole number from 1 to {QUEUE_WEIGHT_MAX}"
        ))),
    }
}

/// `weir-exec@HOST:PID`, so an operator can tell workers apart in the server's view.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    format!("weir-exec@{host}:{}", std::process::id())
}

/// Runs the pool until SIGINT/SIGTERM and a graceful drain.
pub async fn run(config: WorkerConfig) -> anyhow::Result<ExitCode> {
    let client = crate::commands::client_builder(&config.conn, &config.conn.server)
        .build()
        .context("building the HTTP client")?;
    // The pool abandons a handler this long after its token fired; the command gets
    // its kill grace plus a margin, so its task's error can say `killed: …` and carry
    // its stderr rather than the pool's generic one.
    let cancel_grace = config.exec.kill_grace + Duration::from_millis(KILL_GRACE_MARGIN_MS);
    let mut builder = PoolBuilder::new(client)
        .concurrency(config.concurrency)
        .cancel_grace(cancel_grace)
        .shutdown_grace(config.shutdown_grace)
        .transport(config.transport)
        .worker_name(&config.name);
    for (queue, weight) in &config.queues {
        builder = builder.queue(queue, *weight);
    }
    if let Some(prefetch) = config.prefetch {
        builder = builder.prefetch(prefetch);
    }
    if let Some(interval) = config.heartbeat_interval {
        builder = builder.heartbeat_interval(interval);
    }
    let exec = config.exec.clone();
    let pool = match builder
        .fallback(move |task, ctx| {
            let exec = exec.clone();
            async move { run_task(&exec, task, ctx).await }
        })
        .build()
    {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("error: configuring the worker pool: {e}");
            return Ok(ExitCode::from(crate::EXIT_CONFIG));
        }
    };
    let queues: Vec<String> = config
        .queues
        .iter()
        .map(|(q, w)| {
            if *w == 1 {
                q.clone()
            } else {
                format!("{q}={w}")
            }
        })
        .collect();
    eprintln!(
        "weir worker: queues={} concurrency={} transport={} kill_grace={:?} server={} exec={:?}",
        queues.join(","),
        config.concurrency,
        match config.transport {
            weir_worker::Transport::Channel => "channel",
            weir_worker::Transport::Http => "http",
        },
        config.exec.kill_grace,
        config.conn.server,
        config.exec.command
    );
    // Announced when the signal is seen, before the pool stops leasing: an
    // operator (and the tests) can tell a drain from a hang.
    let grace = config.shutdown_grace;
    let shutdown = async move {
        weir_worker::shutdown_signal().await;
        eprintln!(
            "weir worker: shutting down: no new tasks; running commands get {grace:?} to finish"
        );
    };
    let report = pool
        .run(shutdown)
        .await
        .context("running the worker pool")?;
    eprintln!(
        "weir worker: stopped: completed={} failed={} released={} abandoned={} refused={}",
        report.completed, report.failed, report.released, report.abandoned, report.refused
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs one task's command and turns how it ended into the task's outcome.
async fn run_task(exec: &ExecConfig, task: Task, ctx: Ctx) -> Result<Value, HandlerError> {
    // A task stopped before it started (canceled while prefetched, shutdown) never
    // runs its command.
    if ctx.is_cancelled() {
        return Err(killed(&ctx, " (before the command started)".to_owned()));
    }
    let payload = serde_json::to_vec(&task.payload)
        .map_err(|e| HandlerError::Fatal(format!("encoding the payload: {e}")))?;
    let mut cmd = Command::new(SHELL);
    // W3C trace context as environment variables (the OpenTelemetry convention
    // for carrying it into a process): the command continues the producer's
    // trace. A task without one must not inherit the worker's own.
    for (var, value) in [
        ("TRACEPARENT", task.traceparent.as_deref()),
        ("TRACESTATE", task.tracestate.as_deref()),
    ] {
        match value {
            Some(v) => cmd.env(var, v),
            None => cmd.env_remove(var),
        };
    }
    let mut child = cmd
        .arg("-c")
        .arg(&exec.command)
        .env("WEIR_TASK_ID", &task.id)
        .env("WEIR_QUEUE", &task.queue)
        .env("WEIR_KIND", &task.kind)
        .env("WEIR_ATTEMPT", task.attempt.to_string())
        .env("WEIR_MAX_ATTEMPTS", task.max_attempts.to_string())
        .env("WEIR_TIMEOUT_MS", task.timeout_ms.to_string())
        // The worker's credentials are not the command's business (WEIR_TOKEN
        // was the API key's variable before WEIR_API_KEY).
        .env_remove("WEIR_API_KEY")
        .env_remove("WEIR_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that stopping the task stops everything it
        // started, and a Ctrl-C meant for the worker does not reach it directly.
        .process_group(0)
        .spawn()
        .map_err(|e| HandlerError::Retry(format!("starting `{SHELL} -c`: {e}")))?;
    let group = Group::new(&child);
    let run = Running::start(&mut child, payload, exec.output_bytes_max);

    let exited = tokio::select! {
        status = child.wait() => Some(status_or_retry(status)?),
        () = ctx.cancelled() => None,
    };
    let stopped = exited.is_none();
    // One grace for the whole stop: the leader's exit, then the pipes' close.
    let grace_end = tokio::time::Instant::now() + exec.kill_grace;
    let status = match exited {
        Some(status) => status,
        None => {
            // The leader is not reaped yet, so its pid still names this group.
            group.signal(libc::SIGTERM);
            match tokio::time::timeout_at(grace_end, child.wait()).await {
                Ok(status) => status_or_retry(status)?,
                Err(_) => {
                    group.signal(libc::SIGKILL);
                    status_or_retry(child.wait().await)?
                }
            }
        }
    };
    let output = run.finish(grace_end, &group).await;
    group.disarm();

    if stopped {
        return Err(killed(&ctx, with_stderr(&output.stderr_tail())));
    }
    if !status.success() {
        return Err(HandlerError::Retry(format!(
            "{}{}",
            describe(status),
            with_stderr(&output.stderr_tail())
        )));
    }
    result_of(output.stdout, output.stdout_bytes, exec.output_bytes_max)
}

fn status_or_retry(status: io::Result<ExitStatus>) -> Result<ExitStatus, HandlerError> {
    status.map_err(|e| HandlerError::Retry(format!("waiting for the command: {e}")))
}

/// The error of a task whose command was stopped: `killed: deadline|canceled|shutdown`.
/// `detail` follows the reason (the command's stderr, say).
fn killed(ctx: &Ctx, detail: String) -> HandlerError {
    let reason = ctx.cancel_reason().unwrap_or(CancelReason::Canceled);
    // A canceled task ends `canceled` whatever the worker says; never retry it.
    let retry = reason != CancelReason::Canceled;
    let text = format!("killed: {reason}{detail}");
    if retry {
        HandlerError::Retry(text)
    } else {
        HandlerError::Fatal(text)
    }
}

/// `; stderr: …` or nothing.
fn with_stderr(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; stderr: {tail}")
    }
}

/// `exit status 3` or `terminated by signal 9`.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("terminated by signal {signal}"),
        (None, None) => format!("exited: {status}"),
    }
}

/// A successful command's result: its stdout as JSON if it parses, else as a
/// string without one trailing newline.
fn result_of(stdout: Vec<u8>, total: u64, max: usize) -> Result<Value, HandlerError> {
    if total > max as u64 {
        return Err(HandlerError::Fatal(format!(
            "stdout was {total} bytes; the limit (--output-bytes-max) is {max}"
        )));
    }
    if let Ok(value) = serde_json::from_slice::<Value>(&stdout) {
        return Ok(value);
    }
    let mut text = String::from_utf8_lossy(&stdout).into_owned();
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    let value = Value::String(text);
    // Escaping can make the JSON string longer than the text it holds.
    let len = serde_json::to_string(&value).map_or(usize::MAX, |s| s.len());
    if len > max {
        return Err(HandlerError::Fatal(format!(
            "stdout as a JSON string is {len} bytes; the limit (--output-bytes-max) is {max}"
        )));
    }
    Ok(value)
}

/// A command's process group. Dropping it unfinished (the handler's future was
/// dropped) kills the whole group, so no command outlives its task.
struct Group {
    /// The group's id: the `sh` child's pid (it leads the group).
    pgid: Option<libc::pid_t>,
}

impl Group {
    fn new(child: &Child) -> Group {
        Group {
            pgid: child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()),
        }
    }

    /// Sends `signal` to every process of the group. A group that is gone already
    /// (ESRCH) is not an error. The group id cannot name an unrelated group while
    /// the leader is unreaped or any member lives; once the group is empty a
    /// reuse of its number within the grace is vanishingly unlikely (pids are
    /// handed out cyclically).
    fn signal(&self, signal: libc::c_int) {
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg has no memory-safety preconditions.
            unsafe {
                libc::killpg(pgid, signal);
            }
        }
    }

    fn disarm(mut self) {
        self.pgid = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// The I/O of a running command: the payload written to its stdin and its
/// stdout and stderr read into bounded buffers, each on its own task so that a
/// command that writes much before it reads cannot deadlock against us.
struct Running {
    stdin: Option<tokio::task::JoinHandle<()>>,
    stdout: tokio::task::JoinHandle<Captured>,
    stderr: tokio::task::JoinHandle<Captured>,
    /// Tells the readers to stop and return what they have (a process outside
    /// the group may hold the pipes open).
    stop: CancellationToken,
}

/// What a reader kept of one stream.
#[derive(Default)]
struct Captured {
    /// The kept bytes: the start of stdout, the end of stderr.
    bytes: Vec<u8>,
    /// Every byte the stream carried.
    total: u64,
}

/// A finished command's output.
struct Output {
    /// Stdout, at most `output_bytes_max` bytes of it.
    stdout: Vec<u8>,
    /// How many bytes the command wrote to stdout.
    stdout_bytes: u64,
    /// The last `STDERR_TAIL_BYTES` of stderr.
    stderr: Vec<u8>,
    /// How many bytes the command wrote to stderr.
    stderr_bytes: u64,
}

impl Output {
    fn stderr_tail(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let text = text.trim_end();
        if self.stderr_bytes > self.stderr.len() as u64 {
            format!("…{text}")
        } else {
            text.to_owned()
        }
    }
}

impl Running {
    fn start(child: &mut Child, payload: Vec<u8>, output_bytes_max: usize) -> Running {
        let stop = CancellationToken::new();
        let stdin = child
            .stdin
            .take()
            .map(|stdin| tokio::spawn(write_stdin(stdin, payload)));
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        Running {
            stdin,
            stdout: tokio::spawn(read_head(stdout, output_bytes_max, stop.clone())),
            stderr: tokio::spawn(read_tail(stderr, STDERR_TAIL_BYTES, stop.clone())),
            stop,
        }
    }

    /// Collects the output once the command's leader exited: waits until
    /// `grace_end` for the pipes to close, then kills what is left of the group (a
    /// background process it left behind) and takes what was read.
    async fn finish(self, grace_end: tokio::time::Instant, group: &Group) -> Output {
        let Running {
            stdin,
            mut stdout,
            mut stderr,
            stop,
        } = self;
        if let Some(stdin) = stdin {
            stdin.abort();
        }
        let both = async {
            (
                join_captured(&mut stdout).await,
                join_captured(&mut stderr).await,
            )
        };
        let (out, err) = match tokio::time::timeout_at(grace_end, both).await {
            Ok(both) => {
                group.signal(libc::SIGKILL);
                both
            }
            Err(_) => {
                group.signal(libc::SIGKILL);
                stop.cancel();
                (
                    join_captured(&mut stdout).await,
                    join_captured(&mut stderr).await,
                )
            }
        };
        Output {
            stdout: out.bytes,
            stdout_bytes: out.total,
            stderr: err.bytes,
            stderr_bytes: err.total,
        }
    }
}

/// A reader task's result; a reader that panicked (it does not) counts as empty.
async fn join_captured(handle: &mut tokio::task::JoinHandle<Captured>) -> Captured {
    handle.await.unwrap_or_default()
}

/// Writes the payload and closes stdin. A command that does not read its stdin
/// makes this fail with EPIPE, which is its right.
async fn write_stdin(mut stdin: ChildStdin, payload: Vec<u8>) {
    if stdin.write_all(&payload).await.is_ok() {
        let _ = stdin.shutdown().await;
    }
}

/// Keeps the first `max` bytes of a stream and counts (and discards) the rest.
/// Reading past the limit, rather than closing the pipe, lets the command finish
/// instead of dying of SIGPIPE, so the error says how much it wrote.
async fn read_head<R: AsyncRead + Unpin>(
    stream: Option<R>,
    max: usize,
    stop: CancellationToken,
) -> Captured {
    read_stream(stream, stop, |kept, chunk| {
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    })
    .await
}

/// Keeps the last `max` bytes of a stream.
async fn read_tail<R: AsyncRead + Unpin>(
    stream: Option<R>,
    max: usize,
    stop: CancellationToken,
) -> Captured {
    let mut captured = read_stream(stream, stop, |kept, chunk| {
        kept.extend_from_slice(chunk);
        // Trim in amortised steps: keep at most twice the tail between trims.
        if kept.len() > 2 * max {
            kept.drain(..kept.len() - max);
        }
    })
    .await;
    let len = captured.bytes.len();
    if len > max {
        captured.bytes.drain(..len - max);
    }
    captured
}

async fn read_stream<R: AsyncRead + Unpin>(
    stream: Option<R>,
    stop: CancellationToken,
    mut keep: impl FnMut(&mut Vec<u8>, &[u8]),
) -> Captured {
    let mut captured = Captured::default();
    let Some(mut stream) = stream else {
        return captured;
    };
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let n = tokio::select! {
            n = stream.read(&mut chunk) => n,
            () = stop.cancelled() => break,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                captured.total += n as u64;
                keep(&mut captured.bytes, &chunk[..n]);
            }
        }
    }
    captured
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results() {
        let max = 1 << 20;
        let r = |s: &str| result_of(s.as_bytes().to_vec(), s.len() as u64, max).unwrap();
        assert_eq!(r("{\"a\":1}\n"), json!({"a": 1}));
        assert_eq!(r("42"), json!(42));
        assert_eq!(r("hello\n"), json!("hello"));
        assert_eq!(r("hello\n\n"), json!("hello\n"));
        assert_eq!(r("two\nlines"), json!("two\nlines"));
        assert_eq!(r(""), json!(""));
        assert!(matches!(
            result_of(b"abc".to_vec(), 10, 5),
            Err(HandlerError::Fatal(e)) if e.contains("10 bytes")
        ));
        // Control characters escape to six bytes each in JSON.
        assert!(result_of(b"\x01\x01".to_vec(), 2, 8).is_err());
    }

    #[test]
    fn queue_specs() {
        assert_eq!(parse_queue("a").unwrap(), ("a".to_owned(), 1));
        assert_eq!(parse_queue("a:b=7").unwrap(), ("a:b".to_owned(), 7));
        assert!(parse_queue("a=0").is_err());
        assert!(parse_queue("a=x").is_err());
    }

    #[tokio::test]
    async fn capture_is_bounded() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let head = read_head(Some(&data[..]), 1000, CancellationToken::new()).await;
        assert_eq!(head.bytes, &data[..1000]);
        assert_eq!(head.total, 100_000);
        let tail = read_tail(Some(&data[..]), 1000, CancellationToken::new()).await;
        assert_eq!(tail.bytes, &data[99_000..]);
        assert_eq!(tail.total, 100_000);
    }
}
