//! The log's floor on this machine: appends per second on the real file system for rounds of
//! 1, 64 and 1000 frames of 1 KiB and of 100-byte payloads, one commit (one write + one
//! fdatasync) per round.
//!
//! cargo run --release -p weir-log --example log_floor -- [--seconds 3] [--dir /path/on/the/disk]
//!
//! The default directory is a temporary one under the system temp dir; make sure that is a
//! real disk, not tmpfs, or fdatasync costs nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use weir_log::{Log, LogConfig};

/// Bytes of per-frame metadata, about what a task header takes.
const META_BYTES: usize = 32;

struct Args {
    seconds: f64,
    dir: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 3.0,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => {
                args.seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seconds <number>")
            }
            "--dir" => args.dir = Some(it.next().expect("--dir <path>").into()),
            other => panic!("unknown argument {other}; use --seconds N and --dir PATH"),
        }
    }
    args
}

struct Row {
    payload_bytes: usize,
    frames_per_round: usize,
    rounds: u64,
    elapsed: Duration,
    /// Commit latencies in microseconds, sorted.
    commit_us: Vec<u64>,
}

fn run(dir: PathBuf, payload_bytes: usize, frames_per_round: usize, seconds: f64) -> Row {
    let mut log = Log::open(LogConfig::new(dir)).expect("open log");
    let meta = [7u8; META_BYTES];
    let payload = vec![42u8; payload_bytes];
    let mut commit_us = Vec::new();
    let start = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    while start.elapsed() < budget {
        for _ in 0..frames_per_round {
            log.append(1, &meta, &payload);
        }
        let t = Instant::now();
        log.commit().expect("commit");
        commit_us.push(t.elapsed().as_micros() as u64);
    }
    let elapsed = start.elapsed();
    commit_us.sort_unstable();
    Row {
        payload_bytes,
        frames_per_round,
        rounds: commit_us.len() as u64,
        elapsed,
        commit_us,
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args = parse_args();
    let base = args.dir.unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("weir-log-floor")
        .tempdir_in(&base)
        .expect("temp dir");
    println!(
        "log_floor: {} s per case in {}",
        args.seconds,
        tmp.path().display()
    );
    println!(
        "{:>8} {:>7} {:>10} {:>12} {:>9} {:>9} {:>9}",
        "payload", "frames", "rounds/s", "appends/s", "MB/s", "p50 us", "p99 us"
    );
    for payload_bytes in [1024, 100] {
        for frames_per_round in [1, 64, 1000] {
            let dir = tmp
                .path()
                .join(format!("p{payload_bytes}-f{frames_per_round}"));
            let row = run(dir, payload_bytes, frames_per_round, args.seconds);
            let secs = row.elapsed.as_secs_f64();
            let appends = (row.rounds * row.frames_per_round as u64) as f64 / secs;
            let mb = appends * (row.payload_bytes + META_BYTES) as f64 / 1e6;
            println!(
                "{:>8} {:>7} {:>10.0} {:>12.0} {:>9.1} {:>9} {:>9}",
                row.payload_bytes,
                row.frames_per_round,
                row.rounds as f64 / secs,
                appends,
                mb,
                percentile(&row.commit_us, 0.5),
                percentile(&row.commit_us, 0.99),
            );
        }
    }
}
