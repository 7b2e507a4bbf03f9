//! Quick measurements of the worker pool against an in-process weir server on
//! 127.0.0.1:0 (server and pool share this process and its cores):
//!
//! - drain throughput: enqueue `--tasks` no-op tasks (batches of 1000), then run a
//!   pool with `--concurrency` and time until every task is `completed`;
//! - cancel latency: `--cancels` tasks wait on their token; each is canceled at a
//!   staggered moment over their first 600 ms (some before a task's first
//!   heartbeat, which is its watch for cancels, most while it is parked) and
//!   the delay from the cancel request to the handler seeing its token fire is
//!   recorded; prints p50/p99/max.
//!
//! `--transport channel` (the default) or `http` picks the pool's transport.
//!
//! ```sh
//! cargo run --release -p weir-worker --example throughput -- --tasks 200000 --concurrency 64
//! cargo run --release -p weir-worker --example throughput -- --cancels 50 --tasks 0 --transport http
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use weir_client::{Client, EnqueueOptions};
use weir_server::ServeConfig;
use weir_worker::{Ctx, HandlerError, PoolBuilder, Task, Transport};

struct Args {
    tasks: u64,
    concurrency: usize,
    prefetch: Option<usize>,
    cancels: usize,
    transport: Transport,
    data_dir: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        tasks: 100_000,
        concurrency: 64,
        prefetch: None,
        cancels: 0,
        transport: Transport::Channel,
        data_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--tasks" => args.tasks = value().parse().expect("--tasks N"),
            "--concurrency" => args.concurrency = value().parse().expect("--concurrency N"),
            "--prefetch" => args.prefetch = Some(value().parse().expect("--prefetch N")),
            "--cancels" => args.cancels = value().parse().expect("--cancels N"),
            "--data-dir" => args.data_dir = Some(PathBuf::from(value())),
            "--transport" => {
                args.transport = match value().as_str() {
                    "channel" => Transport::Channel,
                    "http" => Transport::Http,
                    other => panic!("--transport channel|http, not {other}"),
                }
            }
            other => panic!(
                "unknown flag {other}; flags: --tasks N --concurrency N --prefetch N --cancels N --data-dir DIR --transport channel|http"
            ),
        }
    }
    args
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let tmp = tempfile::tempdir().unwrap();
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_server, rx) = oneshot::channel::<()>();
    let broker = weir_store::EmbeddedBroker::open(weir_store::EmbeddedConfig::new(&dir)).unwrap();
    let server = tokio::spawn(weir_server::serve(
        listener,
        ServeConfig::new(),
        std::sync::Arc::new(broker),
        async move {
            let _ = rx.await;
        },
    ));
    let client = Client::new(format!("http://{addr}")).unwrap();
    println!("server on {addr}, data in {}", dir.display());

    if args.tasks > 0 {
        throughput(&client, &args).await;
    }
    if args.cancels > 0 {
        cancel_latency(&client, args.cancels, args.transport).await;
    }
    let _ = stop_server.send(());
    server.await.unwrap().unwrap();
}

async fn throughput(client: &Client, args: &Args) {
    let queue = "bench";
    let n = args.tasks;
    let t0 = Instant::now();
    let batch: Vec<EnqueueOptions> = (0..1000)
        .map(|_| EnqueueOptions::new(Value::Null).kind("noop"))
        .collect();
    let mut left = n;
    while left > 0 {
        let k = left.min(1000) as usize;
        client.enqueue_batch(queue, &batch[..k]).await.unwrap();
        left -= k as u64;
    }
    let ingest = t0.elapsed();
    println!(
        "enqueued {n} in {ingest:.2?} ({:.0} tasks/s, sequential batches of 1000)",
        n as f64 / ingest.as_secs_f64()
    );

    let done = Arc::new(AtomicU64::new(0));
    let all_ran = Arc::new(Notify::new());
    let (d, a) = (done.clone(), all_ran.clone());
    let mut builder = PoolBuilder::new(client.clone())
        .transport(args.transport)
        .queue(queue, 1)
        .concurrency(args.concurrency)
        .handler("noop", move |_t: Task, _ctx: Ctx| {
            let (d, a) = (d.clone(), a.clone());
            async move {
                if d.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    a.notify_one();
                }
                Ok(Value::Null)
            }
        });
    if let Some(p) = args.prefetch {
        builder = builder.prefetch(p);
    }
    let pool = builder.build().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let t1 = Instant::now();
    let running = tokio::spawn(pool.run(async move {
        let _ = rx.await;
    }));
    all_ran.notified().await;
    let ran = t1.elapsed();
    // Then until every ack is durable on the server.
    loop {
        let q = client.queue(queue).await.unwrap();
        if q.counts.completed >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let acked = t1.elapsed();
    let _ = stop.send(());
    let report = running.await.unwrap().unwrap();
    println!(
        "{:?} concurrency {} prefetch {}: {n} no-op tasks handled in {ran:.2?}, all acked in {acked:.2?} → {:.0} tasks/s (lease → handler → durable ack); {report:?}",
        args.transport,
        args.concurrency,
        args.prefetch.map_or("default".to_owned(), |p| p.to_string()),
        n as f64 / acked.as_secs_f64()
    );
}

async fn cancel_latency(client: &Client, n: usize, transport: Transport) {
    let queue = "cancels";
    let (started_tx, mut started_rx) = mpsc::channel::<String>(n);
    let (fired_tx, mut fired_rx) = mpsc::channel::<(String, Instant)>(n);
    let pool = PoolBuilder::new(client.clone())
        .transport(transport)
        .queue(queue, 1)
        .concurrency(n)
        .handler("wait", move |t: Task, ctx: Ctx| {
            let (started, fired) = (started_tx.clone(), fired_tx.clone());
            async move {
                started.send(t.id.clone()).await.unwrap();
                ctx.cancelled().await;
                fired.send((t.id, Instant::now())).await.unwrap();
                Err(HandlerError::fatal("canceled"))
            }
        })
        .build()
        .unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let running = tokio::spawn(pool.run(async move {
        let _ = rx.await;
    }));
    let opts: Vec<EnqueueOptions> = (0..n)
        .map(|_| EnqueueOptions::new(json!(null)).kind("wait"))
        .collect();
    let ids = client.enqueue_batch(queue, &opts).await.unwrap();
    for _ in 0..n {
        started_rx.recv().await.unwrap();
    }
    // Stagger the cancels over 600 ms from the tasks' start, so some land before a
    // task's first heartbeat (its watch for cancels) and most while it is parked.
    let step = Duration::from_millis(600 / n as u64).max(Duration::from_millis(1));
    let mut asked = HashMap::new();
    for id in &ids {
        tokio::time::sleep(step).await;
        asked.insert(id.clone(), Instant::now());
        client.cancel(id).await.unwrap();
    }
    let mut delays: Vec<Duration> = Vec::with_capacity(n);
    for _ in 0..n {
        let (id, at) = fired_rx.recv().await.unwrap();
        delays.push(at.duration_since(asked[&id]));
    }
    delays.sort();
    let pct =
        |p: f64| delays[((delays.len() as f64 * p).ceil() as usize).clamp(1, delays.len()) - 1];
    println!(
        "{transport:?}: cancel → handler token fired, {n} cancels spread over the tasks' first 600 ms, default heartbeat: p50 {:.1?}, p99 {:.1?}, max {:.1?}, min {:.1?}",
        pct(0.50),
        pct(0.99),
        delays[delays.len() - 1],
        delays[0]
    );
    let _ = stop.send(());
    let report = running.await.unwrap().unwrap();
    println!("{report:?}");
}
