//! What `weir_core::json::check` costs per KiB of JSON, on payloads shaped like
//! real ones. Not a test (timing varies by machine): run it with
//! `cargo run --release -p weir-core --example json_check_cost`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use weir_core::json::check;

/// How long each shape is timed.
const RUN: Duration = Duration::from_millis(500);

fn main() {
    let shapes = [
        (
            "small object (~40 B)",
            r#"{"to":"a@example.com","n":12345}"#.to_owned(),
        ),
        ("1 KiB object", object(1024)),
        ("64 KiB object", object(64 * 1024)),
        ("1 KiB of escapes (\\u pairs)", escapes(1024)),
        ("64 KiB nested 60 deep", nested(64 * 1024, 60)),
    ];
    for (name, text) in &shapes {
        assert_eq!(check(text.as_bytes(), 64), Ok(()), "{name}");
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < RUN {
            for _ in 0..64 {
                black_box(check(black_box(text.as_bytes()), 64)).unwrap();
            }
            n += 64;
        }
        let per = start.elapsed().as_nanos() as f64 / n as f64;
        // For scale: the parse into a `RawValue` the server does anyway.
        let start = Instant::now();
        let mut m = 0u64;
        while start.elapsed() < RUN {
            for _ in 0..64 {
                let raw: &RawValue = serde_json::from_str(black_box(text)).unwrap();
                black_box(raw);
            }
            m += 64;
        }
        let parse = start.elapsed().as_nanos() as f64 / m as f64;
        let kib = text.len() as f64 / 1024.0;
        println!(
            "{name:30} {:>6} B  check {:>7.1} ns/KiB ({:.2} GB/s)  RawValue parse {:>7.1} ns/KiB",
            text.len(),
            per / kib,
            text.len() as f64 / per,
            parse / kib,
        );
    }
}

/// An object of string, number and array fields, about `bytes` long.
fn object(bytes: usize) -> String {
    let mut s = String::from("{");
    let mut i = 0;
    while s.len() < bytes {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#""field_{i}":{{"name":"customer number {i}","tags":["a","b\"c"],"n":{}}}"#,
            i * 7919
        ));
        i += 1;
    }
    s.push('}');
    s
}

fn escapes(bytes: usize) -> String {
    let mut s = String::from("\"");
    while s.len() < bytes {
        s.push_str(r"\ud83d\ude00 \u00e9\n");
    }
    s.push('"');
    s
}

fn nested(bytes: usize, depth: usize) -> String {
    let inner = object(bytes);
    format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
}
