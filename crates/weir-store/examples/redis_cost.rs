//! Measures what the Redis store costs per task: Redis commands (from `INFO
//! commandstats` after `CONFIG RESETSTAT`) and round trips for N tasks
//! enqueued, leased and acked in batches of 100, and memory per task (`MEMORY
//! USAGE` of one task's keys, and `used_memory` growth over N pending tasks).
//! Run against a Redis that nothing else uses:
//! `cargo run --release -p weir-store --example redis_cost -- redis://127.0.0.1:6379 10000`

use std::time::Duration;

use bytes::Bytes;
use weir_core::NewTask;
use weir_store::{Broker, EnqueueTask, RedisBroker, RedisConfig, RedisTarget, Settle};

const BATCH: usize = 100;

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
        },
        // 100 bytes of JSON.
        payload: Bytes::from(format!(
            "{{\"to\":\"someone@example.com\",\"body\":\"{}\"}}",
            "x".repeat(58)
        )),
    }
}

async fn stats(c: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    let mut out = Vec::new();
    for line in info.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            let (name, fields) = rest.split_once(':').unwrap();
            let calls: u64 = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .unwrap()
                .parse()
                .unwrap();
            out.push((name.to_owned(), calls));
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.1));
    out
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

    // Memory of one task's keys.
    let id = b.enqueue("mem", vec![task()]).await.unwrap()[0].id;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("weircost{}:*{id}", std::process::id()))
        .query_async(&mut c)
        .await
        .unwrap();
    for k in &keys {
        let bytes: i64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(k)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut c)
            .await
            .unwrap();
        let enc: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(k)
            .query_async(&mut c)
            .await
            .unwrap();
        println!("MEMORY USAGE {k}: {bytes} bytes ({enc})");
    }

    // used_memory growth over n pending tasks.
    let before = used_memory(&mut c).await;
    for _ in 0..n / BATCH {
        b.enqueue("memq", (0..BATCH).map(|_| task()).collect())
            .await
            .unwrap();
    }
    let after = used_memory(&mut c).await;
    println!(
        "used_memory grew {} bytes for {n} pending tasks: {} bytes per task",
        after - before,
        (after - before) / n as i64
    );

    // Commands per task: n tasks enqueued, leased and acked in batches of 100.
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut round_trips = 0usize;
    for _ in 0..n / BATCH {
        b.enqueue("cost", (0..BATCH).map(|_| task()).collect())
            .await
            .unwrap();
        round_trips += 1;
    }
    let mut done = 0;
    while done < n {
        let leased = b.lease("cost", BATCH, Duration::ZERO).await.unwrap();
        round_trips += 1;
        done += leased.len();
        let acks = leased
            .into_iter()
            .map(|l| Settle::Ack {
                id: l.record.id,
                lease_id: l.lease_id,
                result: None,
            })
            .collect();
        b.settle(acks).await.unwrap();
        round_trips += 1;
    }
    let took = started.elapsed();
    let s = stats(&mut c).await;
    let total: u64 = s.iter().map(|(_, c)| c).sum();
    println!("{n} tasks enqueued+leased+acked in batches of {BATCH} in {took:?}; {round_trips} store calls");
    println!(
        "redis commands: {total} in all, {:.3} per task (background PING/sweep included)",
        total as f64 / n as f64
    );
    for (name, calls) in s {
        println!(
            "  {name}: {calls} ({:.3} per task)",
            calls as f64 / n as f64
        );
    }
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
