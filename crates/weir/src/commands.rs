//! The client commands: `weir enqueue`, `weir task get|wait|cancel|list|retry|delete`,
//! `weir dead retry|purge`, `weir queues`, `weir queue …` and `weir schedule …`. Concise text by default, one JSON document with `--json`.

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backon::{ExponentialBuilder, Retryable};
use serde::Deserialize;
use serde_json::{json, Value};
use weir_client::{
    Client, ClientBuilder, EnqueueOptions, QueueConfig, QueueConfigPatch, QueueInfo, Schedule,
    ScheduleSpec, Task, TaskState,
};

use crate::cli::{
    ClientArgs, ConnArgs, DeadCommand, EnqueueArgs, MissedPolicy, QueueCommand, ScheduleCommand,
    Setting, TaskCommand,
};
use crate::duration::{as_ms, format_duration};

/// Longest single long-poll `task wait` asks the server for (its `wait_ms` limit).
const WAIT_CALL_MS_MAX: u64 = 60_000;

/// `task wait` exit codes.
/// Distinct from 1 (an error), so a script can tell "the task failed" from "the
/// command failed".
const EXIT_DEAD_OR_CANCELED: u8 = 4;
const EXIT_NOT_TERMINAL: u8 = 3;

/// Builds a client from the shared flags.
pub fn client(args: &ClientArgs) -> anyhow::Result<Client> {
    client_builder(&args.conn, &args.conn.server)
        .build()
        .context("building the HTTP client")
}

/// A client of the server at `base` with the API key and CA certificate of the
/// connection flags (`weir bench` has several servers in one `--server`).
pub fn client_builder(conn: &ConnArgs, base: &str) -> ClientBuilder {
    let mut builder = Client::builder(base);
    if let Some(key) = &conn.api_key {
        builder = builder.api_key(key);
    }
    if let Some(path) = &conn.ca_cert {
        builder = builder.ca_cert_file(path);
    }
    builder
}

pub async fn enqueue(args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let payload = match &args.payload {
        None => json!({}),
        Some(text) => parse_payload(text)?,
    };
    let mut task = EnqueueOptions::new(payload);
    task.kind = args.kind;
    task.priority = args.priority;
    task.delay_ms = args.delay.map(as_ms);
    task.max_attempts = args.max_attempts;
    task.timeout_ms = args.timeout.map(as_ms);
    task.idempotency_key = args.idempotency_key;
    let client = client(&args.client)?;
    let started = Instant::now();
    let mut retries = 0u32;
    let mut over_budget = false;
    let done = (|| client.enqueue(&args.queue, &task))
        .retry(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(ENQUEUE_RETRY_BACKOFF_MS_MIN))
                .with_max_delay(Duration::from_millis(ENQUEUE_RETRY_BACKOFF_MS_MAX))
                .with_jitter()
                .without_max_times(),
        )
        .when(enqueue_retryable)
        .adjust(|e, backoff| {
            let pause = e.retry_pause(backoff?);
            over_budget = started.elapsed() + pause > args.retry_for;
            (!over_budget).then_some(pause)
        })
        .notify(|e, pause| {
            retries += 1;
            eprintln!("weir: {e}; retrying in {}", format_duration(pause));
        })
        .await;
    let done = done.with_context(|| {
        let mut what = format!("enqueueing into {}", args.queue);
        if over_budget {
            what += &format!(
                " (gave up after {retries} retries in {}: the next would end past --retry-for {})",
                format_duration(started.elapsed()),
                format_duration(args.retry_for)
            );
        }
        what
    })?;
    if args.client.json {
        print_json(&done)?;
    } else if done.created {
        println!("{} {}", done.id, done.state);
    } else {
        println!("{} {} (existing task)", done.id, done.state);
    }
    Ok(ExitCode::SUCCESS)
}

/// First pause of our own between enqueue tries (on top of the server's
/// Retry-After); doubles up to `ENQUEUE_RETRY_BACKOFF_MS_MAX`, each plus up to as
/// much again at random.
const ENQUEUE_RETRY_BACKOFF_MS_MIN: u64 = 100;
/// Longest pause of our own between enqueue tries (before jitter).
const ENQUEUE_RETRY_BACKOFF_MS_MAX: u64 = 5_000;

/// Whether an enqueue that failed this way can be sent again without making a
/// second task: the server said nothing was stored (429 over a rate limit or a
/// full queue; 503 or 507 in an outage), or no connection was made. A request
/// cut off in flight may have been stored, so it is not retried.
fn enqueue_retryable(e: &weir_client::Error) -> bool {
    use weir_client::Error;
    match e {
        Error::RateLimited { .. }
        | Error::Server {
            status: 503 | 507, ..
        } => true,
        Error::Transport(t) => t.is_connect(),
        _ => false,
    }
}

/// `--payload` text: inline JSON, `@path`, or `@-` for stdin.
fn parse_payload(text: &str) -> anyhow::Result<Value> {
    let (source, body) = match text.strip_prefix('@') {
        Some("-") => {
            let mut body = String::new();
            std::io::stdin()
                .read_to_string(&mut body)
                .context("reading the payload from stdin")?;
            ("stdin".to_owned(), body)
        }
        Some(path) => (
            path.to_owned(),
            std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        ),
        None => ("--payload".to_owned(), text.to_owned()),
    };
    serde_json::from_str(&body).with_context(|| format!("{source} is not valid JSON"))
}

pub async fn task(cmd: TaskCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TaskCommand::Get { id, client: args } => {
            let task = shown(client(&args)?.get(&id).await)
                .with_context(|| format!("getting task {id}"))?;
            task.print(args.json)?;
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Wait {
            id,
            timeout,
            client: args,
        } => {
            let c = client(&args)?;
            let deadline = Instant::now() + timeout;
            let task = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let wait_ms = as_ms(left).min(WAIT_CALL_MS_MAX);
                let called = Instant::now();
                let task = shown(c.wait(&id, wait_ms).await)
                    .with_context(|| format!("waiting for task {id}"))?;
                if task.state().is_terminal() || left.is_zero() {
                    break task;
                }
                // A server that answers a long-poll early (a shorter wait limit
                // than ours) must not turn this loop into a busy poll.
                if called.elapsed() < Duration::from_millis(wait_ms / 2) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(left.min(Duration::from_millis(100))).await;
                }
            };
            task.print(args.json)?;
            Ok(match task.state() {
                TaskState::Completed => ExitCode::SUCCESS,
                TaskState::Dead | TaskState::Canceled => ExitCode::from(EXIT_DEAD_OR_CANCELED),
                state => {
                    eprintln!(
                        "timed out after {}; task {id} is still {state}",
                        format_duration(timeout)
                    );
                    ExitCode::from(EXIT_NOT_TERMINAL)
                }
            })
        }
        TaskCommand::List {
            queue,
            state,
            limit,
            cursor,
            all,
            key,
            client: args,
        } => {
            let c = client(&args)?;
            if let Some(key) = key {
                let found = c
                    .find_by_key(&queue, &key)
                    .await
                    .with_context(|| format!("looking up key {key:?} in queue {queue}"))?;
                if args.json {
                    print_json(
                        &json!({ "tasks": found.iter().collect::<Vec<_>>(), "next_cursor": null }),
                    )?;
                } else {
                    match &found {
                        Some(t) => print!("{}", task_table(std::slice::from_ref(t))),
                        None => bail!("no task of queue {queue} holds the key {key:?}"),
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut cursor = cursor;
            let mut tasks = Vec::new();
            loop {
                let page = c
                    .list_tasks(&queue, state, limit, cursor.as_deref())
                    .await
                    .with_context(|| format!("listing {state} tasks of queue {queue}"))?;
                tasks.extend(page.tasks);
                cursor = page.next_cursor;
                if !all || cursor.is_none() {
                    break;
                }
            }
            if args.json {
                print_json(&json!({ "tasks": tasks, "next_cursor": cursor }))?;
            } else {
                print!("{}", task_table(&tasks));
                if let Some(next) = &cursor {
                    eprintln!("more: weir task list {queue} --state {state} --cursor {next}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Retry { id, client: args } => {
            let task = match client(&args)?.retry(&id).await {
                Err(weir_client::Error::Conflict { detail }) => {
                    bail!("task {id} cannot be retried: {detail}")
                }
                other => other.with_context(|| format!("retrying task {id}"))?,
            };
            if args.json {
                print_json(&task)?;
            } else {
                println!("{} {}", task.id, task.state);
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Delete { id, client: args } => {
            match client(&args)?.delete_task(&id).await {
                Err(weir_client::Error::Conflict { detail }) => {
                    bail!("task {id} cannot be deleted: {detail}")
                }
                other => other.with_context(|| format!("deleting task {id}"))?,
            }
            if args.json {
                print_json(&json!({ "id": id, "deleted": true }))?;
            } else {
                println!("{id} deleted");
            }
            Ok(ExitCode::SUCCESS)
        }
        TaskCommand::Cancel { id, client: args } => {
            let task = match shown(client(&args)?.cancel(&id).await) {
                Ok(Shown::Typed(task)) => *task,
                Ok(raw) => {
                    raw.print(args.json)?;
                    return Ok(ExitCode::SUCCESS);
                }
                Err(weir_client::Error::Conflict { detail }) => {
                    bail!("task {id} cannot be canceled: {detail}")
                }
                Err(e) => return Err(e).with_context(|| format!("canceling task {id}")),
            };
            if args.json {
                print_json(&task)?;
            } else if task.cancel_requested && !task.state.is_terminal() {
                println!("{} {} (cancel requested)", task.id, task.state);
            } else {
                println!("{} {}", task.id, task.state);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `weir dead retry|purge QUEUE [--id ID]…`.
pub async fn dead(cmd: DeadCommand) -> anyhow::Result<ExitCode> {
    let (retry, queue, ids, args) = match cmd {
        DeadCommand::Retry { queue, ids, client } => (true, queue, ids, client),
        DeadCommand::Purge { queue, ids, client } => (false, queue, ids, client),
    };
    let c = client(&args)?;
    let ids = (!ids.is_empty()).then_some(&ids[..]);
    let out = if retry {
        c.retry_dead(&queue, ids).await
    } else {
        c.purge_dead(&queue, ids).await
    }
    .with_context(|| {
        format!(
            "{} the dead tasks of queue {queue}",
            if retry { "retrying" } else { "purging" }
        )
    })?;
    if args.json {
        print_json(&out)?;
    } else {
        let (verb, n) = match (out.retried, out.deleted) {
            (Some(n), _) => ("retried", n),
            (_, n) => ("purged", n.unwrap_or(0)),
        };
        print!(
            "{verb} {n} dead task{} of {queue}",
            if n == 1 { "" } else { "s" }
        );
        if out.skipped > 0 {
            print!(
                " ({} of the ids given were not dead tasks of the queue)",
                out.skipped
            );
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn queues(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let queues = client(&args)?.queues().await.context("listing queues")?;
    if args.json {
        print_json(&json!({ "queues": queues }))?;
    } else {
        print!("{}", queue_table(&queues));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn queue(cmd: QueueCommand) -> anyhow::Result<ExitCode> {
    let configure = |queue: String, patch: QueueConfigPatch, args: ClientArgs| async move {
        let config = client(&args)?
            .configure_queue(&queue, &patch)
            .await
            .with_context(|| format!("configuring queue {queue}"))?;
        if args.json {
            print_json(&json!({ "queue": queue, "config": config }))?;
        } else {
            print!("{}", config_lines(&config));
        }
        Ok(ExitCode::SUCCESS)
    };
    match cmd {
        QueueCommand::Get {
            queue,
            client: args,
        } => {
            let q = match client(&args)?.queue(&queue).await {
                Err(weir_client::Error::NotFound) => bail!("no queue named {queue}"),
                other => other.with_context(|| format!("reading queue {queue}"))?,
            };
            if args.json {
                print_json(&q)?;
            } else {
                print!("{}", queue_table(std::slice::from_ref(&q)));
                print!("{}", config_lines(&q.config.unwrap_or_default()));
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Config {
            queue,
            rate,
            burst,
            max_in_flight,
            max_pending,
            client: args,
        } => {
            if [
                rate.is_some(),
                burst.is_some(),
                max_in_flight.is_some(),
                max_pending.is_some(),
            ]
            .iter()
            .all(|set| !set)
            {
                bail!("give at least one of --rate, --burst, --max-in-flight, --max-pending (`none` clears one)");
            }
            let patch = QueueConfigPatch {
                rate_per_sec: rate.map(Setting::patch),
                burst: burst.map(Setting::patch),
                max_in_flight: max_in_flight.map(Setting::patch),
                max_pending: max_pending.map(Setting::patch),
                paused: None,
            };
            configure(queue, patch, args).await
        }
        QueueCommand::Pause {
            queue,
            client: args,
        } => {
            let patch = QueueConfigPatch {
                paused: Some(true),
                ..QueueConfigPatch::default()
            };
            configure(queue, patch, args).await
        }
        QueueCommand::Resume {
            queue,
            client: args,
        } => {
            let patch = QueueConfigPatch {
                paused: Some(false),
                ..QueueConfigPatch::default()
            };
            configure(queue, patch, args).await
        }
        QueueCommand::Delete {
            queue,
            client: args,
        } => {
            match client(&args)?.delete_queue(&queue).await {
                Ok(()) => {}
                Err(weir_client::Error::NotFound) => bail!("no queue named {queue}"),
                Err(weir_client::Error::Conflict { detail }) => {
                    bail!("queue {queue} was not deleted: {detail}")
                }
                Err(e) => return Err(e).with_context(|| format!("deleting queue {queue}")),
            }
            if args.json {
                print_json(&json!({ "queue": queue, "deleted": true }))?;
            } else {
                println!("deleted queue {queue}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn schedule(cmd: ScheduleCommand) -> anyhow::Result<ExitCode> {
    let not_found = |name: &str, e: weir_client::Error| match e {
        weir_client::Error::NotFound => anyhow::anyhow!("no schedule named {name}"),
        e => anyhow::Error::new(e).context(format!("schedule {name}")),
    };
    match cmd {
        ScheduleCommand::Set(a) => {
            let payload = match &a.payload {
                None => json!({}),
                Some(text) => parse_payload(text)?,
            };
            let mut task = EnqueueOptions::new(payload);
            task.kind = a.kind;
            task.priority = a.priority;
            task.max_attempts = a.max_attempts;
            task.timeout_ms = a.timeout.map(as_ms);
            let spec = ScheduleSpec {
                cron: a.cron,
                tz: a.tz,
                queue: a.queue,
                task,
                missed: Some(
                    match a.missed {
                        MissedPolicy::Skip => "skip",
                        MissedPolicy::RunOnce => "run_once",
                    }
                    .to_owned(),
                ),
            };
            let s = client(&a.client)?
                .put_schedule(&a.name, &spec)
                .await
                .with_context(|| format!("setting schedule {}", a.name))?;
            print_schedules(std::slice::from_ref(&s), a.client.json, false)?;
        }
        ScheduleCommand::Get { name, client: args } => {
            let s = client(&args)?
                .schedule(&name)
                .await
                .map_err(|e| not_found(&name, e))?;
            print_schedules(std::slice::from_ref(&s), args.json, false)?;
        }
        ScheduleCommand::List(args) => {
            let all = client(&args)?
                .schedules()
                .await
                .context("listing schedules")?;
            print_schedules(&all, args.json, true)?;
        }
        ScheduleCommand::Delete { name, client: args } => {
            client(&args)?
                .delete_schedule(&name)
                .await
                .map_err(|e| not_found(&name, e))?;
            if args.json {
                print_json(&json!({ "schedule": name, "deleted": true }))?;
            } else {
                println!("deleted schedule {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Schedules as JSON (one object, or `{"schedules": [...]}` for a list) or text.
fn print_schedules(all: &[Schedule], json_out: bool, list: bool) -> anyhow::Result<()> {
    if json_out {
        return match (list, all) {
            (false, [one]) => print_json(one),
            _ => print_json(&json!({ "schedules": all })),
        };
    }
    for s in all {
        println!(
            "{}  {} ({})  -> {}  missed: {}  next: {}  last: {}",
            s.name,
            s.cron,
            s.tz,
            s.queue,
            s.missed,
            s.next_run_at.as_deref().unwrap_or("never"),
            s.last_run_at.as_deref().unwrap_or("never"),
        );
    }
    Ok(())
}

/// A queue's flow-control settings, one per line.
fn config_lines(c: &QueueConfig) -> String {
    let limit = |v: Option<u64>| v.map_or("none".to_owned(), |n| n.to_string());
    let rate = match c.rate_per_sec {
        None => "none".to_owned(),
        Some(r) => match c.burst {
            Some(b) => format!("{r}/s (burst {b})"),
            None => format!("{r}/s (burst: one second's worth)"),
        },
    };
    format!(
        "rate:          {rate}\nmax in flight: {}\nmax pending:   {}\npaused:        {}\n",
        limit(c.max_in_flight),
        limit(c.max_pending),
        if c.paused { "yes" } else { "no" }
    )
}

/// Queues as an aligned text table, names left, counts right.
fn queue_table(queues: &[QueueInfo]) -> String {
    let header = [
        "QUEUE",
        "SCHEDULED",
        "PENDING",
        "ACTIVE",
        "COMPLETED",
        "DEAD",
        "CANCELED",
    ];
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            let c = q.counts;
            vec![
                q.name.clone(),
                c.scheduled.to_string(),
                c.pending.to_string(),
                c.active.to_string(),
                c.completed.to_string(),
                c.dead.to_string(),
                c.canceled.to_string(),
            ]
        })
        .collect();
    table(&header, &rows, |i| i > 0)
}

/// Tasks as `weir task list` prints them.
fn task_table(tasks: &[Task]) -> String {
    let header = [
        "ID",
        "STATE",
        "KIND",
        "PRIO",
        "ATTEMPT",
        "CREATED",
        "LAST ERROR",
    ];
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let error = t.last_error.as_deref().unwrap_or("");
            let mut error: String = error
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect();
            if t.last_error
                .as_deref()
                .is_some_and(|e| e.len() > error.len())
            {
                error.push('…');
            }
            vec![
                t.id.clone(),
                t.state.to_string(),
                t.kind.clone(),
                t.priority.to_string(),
                format!("{}/{}", t.attempt, t.max_attempts),
                t.created_at.clone().unwrap_or_default(),
                error,
            ]
        })
        .collect();
    table(&header, &rows, |i| i == 3 || i == 4)
}

/// A plain-text table: columns padded to their widest cell, two spaces apart;
/// `right(i)` aligns column `i` to the right (numbers).
fn table(header: &[&str], rows: &[Vec<String>], right: impl Fn(usize) -> bool) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = w - cell.chars().count();
            if right(i) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A task as the server answered it: decoded, or its JSON as is when this client
/// cannot decode it (a payload nested past serde_json's 128 levels or holding a
/// lone surrogate, stored before the server refused those).
enum Shown {
    Typed(Box<Task>),
    Raw {
        /// Read from the raw JSON alone; `Unknown` if even that fails.
        state: TaskState,
        /// Why the typed decode failed.
        error: String,
        /// The server's answer.
        body: String,
    },
}

/// A client's answer as a [`Shown`] task: an undecodable one is shown raw rather
/// than be an error.
fn shown(answer: Result<Task, weir_client::Error>) -> Result<Shown, weir_client::Error> {
    match answer {
        Ok(task) => Ok(Shown::Typed(Box::new(task))),
        Err(weir_client::Error::Decode { source, body, .. }) => {
            /// Skipping the other fields decodes none of them, so the poison in
            /// the payload cannot stop this.
            #[derive(Deserialize)]
            struct StateOnly {
                #[serde(default)]
                state: TaskState,
            }
            let state = serde_json::from_slice::<StateOnly>(&body)
                .map(|s| s.state)
                .unwrap_or_default();
            Ok(Shown::Raw {
                state,
                error: source.to_string(),
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        }
        Err(e) => Err(e),
    }
}

impl Shown {
    fn state(&self) -> TaskState {
        match self {
            Shown::Typed(task) => task.state,
            Shown::Raw { state, .. } => *state,
        }
    }

    /// Prints the task; a raw one as the server's JSON, in both modes, with a note
    /// on stderr.
    fn print(&self, as_json: bool) -> anyhow::Result<()> {
        match self {
            Shown::Typed(task) => print_task(task, as_json),
            Shown::Raw { error, body, .. } => {
                eprintln!(
                    "note: this task cannot be decoded ({error}); showing the server's JSON as is"
                );
                println!("{}", body.trim_end());
                Ok(())
            }
        }
    }
}

fn print_task(task: &Task, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return print_json(task);
    }
    println!("id:          {}", task.id);
    println!("queue:       {}", task.queue);
    println!("kind:        {}", task.kind);
    let cancel = if task.cancel_requested {
        " (cancel requested)"
    } else {
        ""
    };
    println!("state:       {}{cancel}", task.state);
    println!("attempt:     {}/{}", task.attempt, task.max_attempts);
    let times = [
        ("created_at", &task.created_at),
        ("run_at", &task.run_at),
        ("started_at", &task.started_at),
        ("finished_at", &task.finished_at),
        ("deadline", &task.deadline),
        ("lease_until", &task.lease_expires_at),
    ];
    for (name, value) in times {
        if let Some(v) = value {
            println!("{:<13}{v}", format!("{name}:"));
        }
    }
    println!("payload:     {}", task.payload);
    if let Some(result) = &task.result {
        println!("result:      {result}");
    }
    if let Some(error) = &task.last_error {
        println!("last_error:  {error}");
    }
    Ok(())
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value).context("encoding JSON")?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_client::Counts;

    #[test]
    fn payload_inline_and_file() {
        assert_eq!(parse_payload(r#"{"a":1}"#).unwrap(), json!({"a": 1}));
        assert!(parse_payload("{nope").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, "[1,2]").unwrap();
        assert_eq!(
            parse_payload(&format!("@{}", path.display())).unwrap(),
            json!([1, 2])
        );
        assert!(parse_payload("@/nonexistent/weir/payload").is_err());
    }

    #[test]
    fn table_aligns() {
        let queues = vec![
            QueueInfo {
                name: "emails".into(),
                counts: Counts {
                    pending: 12345,
                    ..Counts::default()
                },
                config: None,
            },
            QueueInfo {
                name: "q".into(),
                counts: Counts {
                    dead: 3,
                    ..Counts::default()
                },
                config: None,
            },
        ];
        let expected = "\
QUEUE   SCHEDULED  PENDING  ACTIVE  COMPLETED  DEAD  CANCELED
emails          0    12345       0          0     0         0
q               0        0       0          0     3         0
";
        assert_eq!(queue_table(&queues), expected);
    }
}
