//! Measures what the Redis store costs per task: Redis commands and Redis' own
//! time in them (from `INFO commandstats` after `CONFIG RESETSTAT`), phase by
//! phase, for N tasks enqueued, then leased, then acked in batches (100, or
//! `WEIR_COST_BATCH`), and memory per task (the size of one record, and
//! `used_memory` growth over N pending tasks).
//! Run against a Redis that nothing else uses:
//! `cargo run --release -p weir-store --example redis_cost -- redis://127.0.0.1:6379 10000`

use std::time::Duration;

use bytes::Bytes;
use weir_core::NewTask;
use weir_store::{Broker, EnqueueTask, RedisBroker, RedisConfig, RedisTarget, Settle};

/// Tasks per call (env `WEIR_COST_BATCH`, default 100).
fn batch() -> usize {
    std::env::var("WEIR_COST_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(100)
}

fn task() -> EnqueueTask {
    EnqueueTask {
        task: NewTask {
            kind: "email".into(),
            priority: 0,
            run_at_ms: None,
            delay_ms: 0,
            max_attempts: 5,
            timeout_ms: 30_000,
            deadline_ms: None,
            idempotency_key: None,
            retention_ms: 3_600_000,
            trace: None,
        },
        // 100 bytes of JSON.
        payload: Bytes::from(format!(
            "{{\"to\":\"someone@example.com\",\"body\":\"{}\"}}",
            "x".repeat(58)
        )),
    }
}

async fn reset_stats(c: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(c)
        .await
        .unwrap();
}

/// Per command since the last `CONFIG RESETSTAT`: (name, calls, usec).
async fn stats(c: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    let mut out = Vec::new();
    for line in info.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            let (name, fields) = rest.split_once(':').unwrap();
            let field = |key: &str| -> u64 {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key))
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            if name != "config" && name != "info" {
                out.push((name.to_owned(), field("calls="), field("usec=")));
            }
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.2));
    out
}

/// Prints one phase's commands and Redis time per task. Commands run inside a
/// script are counted both on their own and in the EVALSHA's time, so the
/// phase's time is the script calls' time plus that of commands sent directly.
fn report(phase: &str, n: usize, s: &[(String, u64, u64)], totals: &mut (u64, u64)) {
    let per = |x: u64| x as f64 / n as f64;
    let scripts: u64 = s
        .iter()
        .filter(|x| x.0.starts_with("eval"))
        .map(|x| x.2)
        .sum();
    let direct: u64 = s
        .iter()
        .filter(|x| !x.0.starts_with("eval") && x.0 != "publish")
        .map(|x| x.2)
        .sum::<u64>();
    let calls: u64 = s.iter().map(|x| x.1).sum();
    let inside: u64 = s
        .iter()
        .filter(|x| !x.0.starts_with("eval"))
        .map(|x| x.2)
        .sum();
    println!(
        "{phase}: {:.2} commands/task; Redis time {:.2} us/task in scripts ({:.2} of it in the commands they run), {:.2} in direct commands",
        per(calls),
        per(scripts),
        per(inside),
        per(direct.saturating_sub(inside)),
    );
    for (name, calls, usec) in s {
        println!(
            "  {name}: {:.3} calls/task, {:.2} us/task",
            per(*calls),
            per(*usec)
        );
    }
    totals.0 += calls;
    totals.1 += scripts;
}

async fn used_memory(c: &mut redis::aio::MultiplexedConnection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let n: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(10_000);
    let mut cfg = RedisConfig::new(RedisTarget::parse(&url).unwrap());
    cfg.prefix = format!("weircost{}", std::process::id());
    let b = RedisBroker::connect(cfg).await.unwrap();
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // The size of one task's record (a field of its slot's task hash).
    let id = b.enqueue("mem", vec![task()]).await.unwrap()[0].id;
    let hashes: Vec<String> = redis::cmd("KEYS")
        .arg(format!("weircost{}:*:t", std::process::id()))
        .query_async(&mut c)
        .await
        .unwrap();
    for h in &hashes {
        let len: i64 = redis::cmd("HSTRLEN")
            .arg(h)
            .arg(id.to_string())
            .query_async(&mut c)
            .await
            .unwrap();
        if len > 0 {
            println!("record of one task in {h}: {len} bytes (100-byte payload)");
        }
    }

    // used_memory growth over n pending tasks (after Redis has freed what an
    // earlier run UNLINKed in the background).
    for _ in 0..1000 {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut c)
            .await
            .unwrap();
        if info.contains("lazyfree_pending_objects:0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = used_memory(&mut c).await;
    for _ in 0..n / batch() {
        b.enqueue("memq", (0..batch()).map(|_| task()).collect())
            .await
            .unwrap();
    }
    let after = used_memory(&mut c).await;
    println!(
        "used_memory grew {} bytes for {n} pending tasks: {} bytes per task",
        after - before,
        (after - before) / n as i64
    );

    // Commands and Redis CPU per task, phase by phase: n tasks enqueued, then
    // leased, then acked, in batches of 100 (`CONFIG RESETSTAT` before each
    // phase; the usec are Redis' own time in each command, scripts included).
    let mut round_trips = 0usize;
    let mut totals = (0u64, 0u64);
    let started = std::time::Instant::now();
    reset_stats(&mut c).await;
    for _ in 0..n / batch() {
        b.enqueue("cost", (0..batch()).map(|_| task()).collect())
            .await
            .unwrap();
        round_trips += 1;
    }
    report("enqueue", n, &stats(&mut c).await, &mut totals);
    reset_stats(&mut c).await;
    let mut leases = Vec::with_capacity(n);
    while leases.len() < n {
        let leased = b.lease("cost", batch(), Duration::ZERO).await.unwrap();
        assert!(!leased.is_empty(), "the queue ran dry before {n} leases");
        round_trips += 1;
        leases.extend(leased);
    }
    report("lease", n, &stats(&mut c).await, &mut totals);
    reset_stats(&mut c).await;
    let mut leases = leases.into_iter();
    loop {
        let acks: Vec<Settle> = leases
            .by_ref()
            .take(batch())
            .map(|l| Settle::Ack {
                id: l.record.id,
                lease_id: l.lease_id,
                result: Some(Bytes::from_static(b"{\"ok\":true}")),
            })
            .collect();
        if acks.is_empty() {
            break;
        }
        b.settle(acks).await.unwrap();
        round_trips += 1;
    }
    report("ack", n, &stats(&mut c).await, &mut totals);
    println!(
        "{n} tasks enqueued+leased+acked in batches of {} in {:?}; {round_trips} store calls",
        batch(),
        started.elapsed()
    );
    println!(
        "all phases: {:.2} commands and {:.2} us of Redis time per task",
        totals.0 as f64 / n as f64,
        totals.1 as f64 / n as f64
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("weircost{}:*", std::process::id()))
        .query_async(&mut c)
        .await
        .unwrap();
    for chunk in keys.chunks(1000) {
        let _: i64 = redis::cmd("UNLINK")
            .arg(chunk)
            .query_async(&mut c)
            .await
            .unwrap();
    }
}
