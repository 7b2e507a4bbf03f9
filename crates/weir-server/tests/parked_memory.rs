//! What a parked connection costs the server, counted by a global allocator: the
//! heap bytes still held per connection once hundreds of connections are parked
//! idle, in a long-poll lease, and in a task wait. Allocation sizes do not depend
//! on timing, so the figure is steady from run to run (RSS, which `weir bench
//! --scenario connections` reports, adds the allocator's own overhead).
//!
//! The bound is issue 12's bar, 4 KiB per parked connection, for idle
//! connections, parked leases and task waits, and idle and waiting worker
//! channels. Before the lean connection layer and parked long-polls (`http1`,
//! `park`) the same count was about 10.5 KiB for a lease: hyper's buffers, the
//! request, and every layer's future stayed alive for the whole wait; an idle
//! channel was 7.3 KiB before its loop owned the socket and made its busy
//! parts on first use.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

/// Counts the bytes this process holds on its heap.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: passes every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Connections parked per kind.
const N: isize = 200;
/// The bar: heap bytes the server may hold per parked connection.
const PARKED_BYTES_MAX: isize = 4096;
const PATIENCE: Duration = Duration::from_secs(20);

fn request(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One answer's head and body (`Content-Length`), read whole.
async fn read_answer(c: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.parse().unwrap());
            if body.len() >= len {
                return text;
            }
        }
    }
}

/// A worker channel's upgrade and its hello (with `credit`), as raw bytes; the
/// frame is masked with a zero key, as a client's must be.
fn channel_open(queue: &str, credit: u32) -> Vec<u8> {
    let mut bytes = b"GET /v1/workers/connect HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    let hello = format!(r#"{{"type":"hello","queues":["{queue}"],"credit":{credit}}}"#);
    assert!(hello.len() < 126);
    bytes.extend_from_slice(&[0x81, 0x80 | hello.len() as u8, 0, 0, 0, 0]);
    bytes.extend_from_slice(hello.as_bytes());
    bytes
}

/// The value of a series in the server's `/metrics`.
async fn series(addr: std::net::SocketAddr, name: &str) -> f64 {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    read_answer(&mut c)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Heap bytes per connection that `open` leaves held (both ends counted), once
/// `settled` says the server is done with them. The median of three batches:
/// what every connection holds shows in each, while a one-off change (a slab
/// page of the runtime's, a buffer the store grows or frees in the background)
/// lands in one.
async fn held_per_connection<F, Fut, S, SFut>(
    kept: &mut Vec<TcpStream>,
    open: F,
    settled: S,
) -> isize
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = TcpStream>,
    S: Fn(usize) -> SFut,
    SFut: std::future::Future<Output = ()>,
{
    let mut rounds = Vec::new();
    for round in 1..=3 {
        let before = LIVE.load(Ordering::Relaxed);
        for _ in 0..N {
            // Every connection stays open to the end: nothing is freed between
            // counts.
            kept.push(open().await);
        }
        settled(round * N as usize).await;
        rounds.push((LIVE.load(Ordering::Relaxed) - before) / N);
    }
    rounds.sort_unstable();
    rounds[1]
}

async fn nothing(_: usize) {}

/// Waits (at most `PATIENCE`) until the server's `series_name` reaches `n`.
async fn all_parked(addr: std::net::SocketAddr, series_name: &str, n: f64, kind: &str) {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while series(addr, series_name).await < n {
        assert!(
            tokio::time::Instant::now() < give_up,
            "{kind}: not all parked"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_holds_less_than_4_kib() {
    // Both ends of 3,000 connections live in this process.
    let files = common::raise_open_files_limit();
    assert!(
        files >= 8_000,
        "this test needs 8,000 open files; the limit is {files}"
    );
    let s = common::TestServer::start(|_| {}).await;
    let addr = s.addr;

    // The client's end of a connection, to subtract: a socket to a listener
    // that never answers.
    let quiet = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let quiet_addr = quiet.local_addr().unwrap();
    let mut kept = Vec::new();
    let client = held_per_connection(
        &mut kept,
        || async {
            let c = TcpStream::connect(quiet_addr).await.unwrap();
            quiet.accept().unwrap();
            c
        },
        nothing,
    )
    .await;

    // Warm every path once (lazily made statics, the queue, the metrics' series).
    let mut warm = TcpStream::connect(addr).await.unwrap();
    warm.write_all(&request("POST", "/v1/queues/pm/lease", r#"{"wait_ms":1}"#))
        .await
        .unwrap();
    read_answer(&mut warm).await;
    warm.write_all(&request(
        "POST",
        "/v1/queues/held/tasks",
        r#"{"payload":1}"#,
    ))
    .await
    .unwrap();
    let created = read_answer(&mut warm).await;
    let id = created
        .split("\"id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let task_wait = request("GET", &format!("/v1/tasks/{id}?wait_ms=60000"), "");
    warm.write_all(&task_wait).await.unwrap();
    let lease = request(
        "POST",
        "/v1/queues/pm/lease",
        r#"{"max":1,"wait_ms":60000}"#,
    );
    series(addr, "weir_http_connections").await;

    let mut report = Vec::new();
    let idle = held_per_connection(
        &mut kept,
        || async {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            read_answer(&mut c).await;
            c
        },
        nothing,
    )
    .await;
    report.push(("idle", idle - client));

    for (kind, req, series_name) in [
        ("lease", &lease, r#"weir_longpoll_waiters{call="lease"}"#),
        (
            "task wait",
            &task_wait,
            r#"weir_longpoll_waiters{call="task"}"#,
        ),
    ] {
        let parked_before = series(addr, series_name).await;
        let per = held_per_connection(
            &mut kept,
            || async {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(req).await.unwrap();
                c
            },
            // Counted once the server has every one parked.
            |n| all_parked(addr, series_name, parked_before + n as f64, kind),
        )
        .await;
        report.push((kind, per - client));
    }
    // A request whose head declares a body as large as allowed and sends none
    // (it would wait for the body timeout): the server holds its head and room
    // for the first bytes, not the declared 64 MiB. `Expect: 100-continue` tells
    // when the server is waiting for the body: the interim answer goes out after
    // the room is made.
    let stalled = format!(
        "POST /v1/queues/pm/tasks HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\n\r\n",
        64 * 1024 * 1024
    );
    let per = held_per_connection(
        &mut kept,
        || async {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(stalled.as_bytes()).await.unwrap();
            let mut interim = [0u8; 25];
            c.read_exact(&mut interim).await.unwrap();
            assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
            c
        },
        nothing,
    )
    .await
        - client;
    println!("stalled body: {per} heap bytes held per connection");
    assert!(
        // The room (64 KiB), and a request in flight: its head, its exchange's
        // future (about 5.5 KiB with the connection's own).
        per <= 72 * 1024,
        "a stalled 64 MiB body holds {per} bytes per connection"
    );
    // Worker channels: upgraded and welcomed, idle (`hello` with no credit)
    // and waiting (a credit, its lease parked on an empty queue).
    for (kind, credit) in [("idle channel", 0), ("waiting channel", 1)] {
        let series_name = r#"weir_longpoll_waiters{call="channel"}"#;
        let parked_before = series(addr, series_name).await;
        let open = &channel_open("pmc", credit);
        let per = held_per_connection(
            &mut kept,
            || async {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(open).await.unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 512];
                while !String::from_utf8_lossy(&got).contains("welcome") {
                    let n = c.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
                    got.extend_from_slice(&buf[..n]);
                }
                c
            },
            // A waiting channel: once every lease loop is parked.
            |n| async move {
                if credit > 0 {
                    all_parked(addr, series_name, parked_before + n as f64, kind).await;
                }
            },
        )
        .await;
        report.push((kind, per - client));
    }
    for (kind, per) in &report {
        println!("{kind}: {per} heap bytes held per parked connection");
    }
    for (kind, per) in report {
        assert!(
            per <= PARKED_BYTES_MAX,
            "{kind}: {per} bytes per parked connection (the bar is {PARKED_BYTES_MAX})"
        );
    }
}
