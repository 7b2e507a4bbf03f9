//! Keep-alive GET load against a running `weir serve`: `hzload ADDR CONNECTIONS
//! SECONDS [PATH]`. Each connection sends one request, reads its whole response,
//! and sends the next, until SECONDS pass; prints requests per second. With
//! `/healthz` it measures the connection layer and router without the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

// One runtime thread: the server gets the other core.
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: hzload ADDR CONNECTIONS SECONDS [PATH]");
        std::process::exit(2);
    }
    let addr = args[1].clone();
    let connections: usize = args[2].parse().expect("CONNECTIONS is a number");
    let secs: u64 = args[3].parse().expect("SECONDS is a number");
    let path = args.get(4).cloned().unwrap_or_else(|| "/healthz".into());
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes();
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut clients = Vec::new();
    for _ in 0..connections {
        let (addr, request, done) = (addr.clone(), request.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = vec![0u8; 65536];
            while Instant::now() < end {
                s.write_all(&request).await.unwrap();
                let mut have = 0;
                loop {
                    let n = s.read(&mut buf[have..]).await.unwrap();
                    assert!(n > 0, "the server closed the connection");
                    have += n;
                    let b = &buf[..have];
                    if let Some(i) = b.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&b[..i]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if have >= i + 4 + len {
                            break;
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    println!("requests_per_sec={}", done.load(Ordering::Relaxed) / secs);
}
