//! Process-level tests of the connection cap (issue 6): `weir serve` under a low
//! open-file limit (`prlimit`) keeps its store writable while a flood of
//! connections holds every slot, and its accept loop survives running out of
//! descriptors.

mod common;

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use common::{start_server_with, Options};

/// Bound on anything that should happen; a hang fails the test instead.
const PATIENCE: Duration = Duration::from_secs(30);

/// Reads one response with a Content-Length body; `None` if the server closed
/// the connection first. Returns the status.
async fn read_status(s: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => have += n,
        }
    }
    Some(status)
}

async fn request(s: &mut TcpStream, method: &str, path: &str, body: &str) -> u16 {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::timeout(PATIENCE, read_status(s))
        .await
        .expect("an answer in time")
        .expect("an answer, not a closed connection")
}

/// Opens `n` connections that each ask for `/healthz`, reports each answer on the
/// returned channel (`None`: closed unanswered), and holds each connection open,
/// with its slot on the server, until `release` is cancelled.
async fn flood(
    addr: &str,
    n: usize,
    release: &CancellationToken,
) -> mpsc::UnboundedReceiver<Option<u16>> {
    let (tx, rx) = mpsc::unbounded_channel();
    for _ in 0..n {
        // The kernel completes the handshake from the listen backlog whether or
        // not the server accepts, so every connect succeeds.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let tx = tx.clone();
        let release = release.clone();
        tokio::spawn(async move {
            let _ = c
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .await;
            let _ = tx.send(read_status(&mut c).await);
            release.cancelled().await;
        });
    }
    rx
}

/// Waits for a log line containing `needle`.
async fn wait_for(log: &mut mpsc::UnboundedReceiver<String>, needle: &str) {
    tokio::time::timeout(PATIENCE, async {
        while let Some(line) = log.recv().await {
            if line.contains(needle) {
                return;
            }
        }
        panic!("the log ended before {needle:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
}

/// Sockets the process `pid` holds open.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// The scenario of issue 6: under `prlimit --nofile=512`, twice as many
/// connections as the server may hold arrive and stay open, while a producer
/// enqueues enough (1 KiB payloads, 4 MiB segments) for the store to open new
/// segment files of its task log. The server holds at most its cap of connections, the
/// rest wait, and the store never runs out: every enqueue is 201 and `/readyz`
/// stays 200. Before the cap, accepted connections took every descriptor and the
/// store's next file open failed it until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_under_a_low_file_limit_leaves_the_store_writable() {
    const FILES: u64 = 512;
    let cap = weir_server::FileBudget::for_files_max(FILES).connections_max;
    let server = start_server_with(Options {
        wrapper: &["prlimit", &format!("--nofile={FILES}:{FILES}")],
        extra: &["--segment-bytes", "4194304"],
        ..Options::default()
    })
    .await;
    let pid = server.child.id().unwrap();

    // The producer's connection, open before the flood.
    let mut producer = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(request(&mut producer, "GET", "/readyz", "").await, 200);
    // The listener, the runtime's signal pipe and the producer.
    let sockets_before = sockets_of(pid);

    let release = CancellationToken::new();
    let flooding = 2 * cap;
    let mut answers = flood(server.addr(), flooding, &release).await;
    // Every slot but the producer's goes to the flood...
    for _ in 0..cap - 1 {
        let status = tokio::time::timeout(PATIENCE, answers.recv())
            .await
            .unwrap();
        assert_eq!(status, Some(Some(200)));
    }
    // ...and no more: the rest wait in the backlog. (Something not happening can
    // only be seen by waiting a while.)
    let more = tokio::time::timeout(Duration::from_millis(500), answers.recv()).await;
    assert!(more.is_err(), "served beyond the cap of {cap}: {more:?}");
    let flood_sockets = sockets_of(pid) - sockets_before;
    assert_eq!(
        flood_sockets,
        cap - 1,
        "the flood holds every free slot, no more"
    );

    // The store keeps every descriptor it needs: 10 MB of tasks, flushes and all.
    let payload = "x".repeat(1024);
    let tasks: Vec<_> = (0..250).map(|_| json!({ "payload": payload })).collect();
    let batch = json!({ "tasks": tasks }).to_string();
    for _ in 0..40 {
        let status = request(
            &mut producer,
            "POST",
            "/v1/queues/flood/tasks:batch",
            &batch,
        )
        .await;
        assert_eq!(status, 201);
    }
    assert_eq!(request(&mut producer, "GET", "/readyz", "").await, 200);

    // Once the flood lets go, the connections that waited are served.
    release.cancel();
    for _ in cap - 1..flooding {
        let status = tokio::time::timeout(PATIENCE, answers.recv())
            .await
            .unwrap();
        assert_eq!(status, Some(Some(200)));
    }
    assert_eq!(request(&mut producer, "GET", "/readyz", "").await, 200);
}

/// With the cap set above what the open-file limit allows, accept(2) fails with
/// EMFILE: the server logs it once, backs off, keeps serving the connections it
/// has, and accepts again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_loop_survives_running_out_of_descriptors() {
    let mut server = start_server_with(Options {
        wrapper: &["prlimit", "--nofile=256:256"],
        extra: &["--connections-max", "1000"],
        log: Some("warn,weir_server=info"),
        capture_stderr: true,
        ..Options::default()
    })
    .await;
    let (log_tx, mut log) = mpsc::unbounded_channel();
    let mut stderr = server.stderr.take().unwrap();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            eprintln!("{line}");
            let _ = log_tx.send(line);
        }
    });
    let mut early = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(request(&mut early, "GET", "/healthz", "").await, 200);

    // More connections than descriptors.
    let release = CancellationToken::new();
    let _answers = flood(server.addr(), 400, &release).await;
    wait_for(&mut log, "accept failed").await;
    // The server is alive and serves what it holds.
    assert_eq!(request(&mut early, "GET", "/healthz", "").await, 200);

    release.cancel();
    wait_for(&mut log, "accepting connections again").await;
    let mut late = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(request(&mut late, "GET", "/healthz", "").await, 200);
}

/// A service started with a low soft limit and a higher hard one (systemd's
/// default is 1,024 and 524,288) gets the hard one: `weir serve` raises its own
/// soft limit at start, derives its connection cap from it, and logs both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_to_the_hard_limit_and_logged() {
    const SOFT: u64 = 300;
    const HARD: u64 = 2_000;
    let mut server = start_server_with(Options {
        wrapper: &["prlimit", &format!("--nofile={SOFT}:{HARD}")],
        log: Some("info"),
        capture_stderr: true,
        ..Options::default()
    })
    .await;
    let pid = server.child.id().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(open_files, [HARD.to_string(), HARD.to_string()], "{limits}");
    let cap = weir_server::FileBudget::for_files_max(HARD).connections_max;
    let mut stderr = server.stderr.take().unwrap();
    let (log_tx, mut log) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = log_tx.send(line);
        }
    });
    wait_for(
        &mut log,
        &format!("open_files_max={HARD} connections_max={cap}"),
    )
    .await;
}

/// SIGTERM with thousands of parked long-polls (half leases on an empty queue,
/// half waits on a task nobody leases): every one is answered, `200` with
/// `Connection: close` (an empty lease, the task as it is), and the process
/// exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_thousands_of_parked_requests_and_exits_zero() {
    const PARKED: usize = 2_000;
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write one `rlimit` of ours.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    assert!(
        l.rlim_cur as usize > PARKED + 500,
        "this test needs {} open files",
        PARKED + 500
    );
    let mut server = start_server_with(Options::default()).await;
    let http = reqwest::Client::new();
    let base = server.base.clone();
    let task = common::post_json(
        &http,
        format!("{base}/v1/queues/held/tasks"),
        &json!({"payload": 1}),
    )
    .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let lease_body = r#"{"max":1,"wait_ms":60000}"#;
    let lease = format!(
        "POST /v1/queues/empty/lease HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{lease_body}",
        lease_body.len()
    );
    let wait = format!("GET /v1/tasks/{id}?wait_ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut parked = Vec::with_capacity(PARKED);
    for i in 0..PARKED {
        let mut c = TcpStream::connect(server.addr()).await.unwrap();
        let req = if i % 2 == 0 { &lease } else { &wait };
        c.write_all(req.as_bytes()).await.unwrap();
        parked.push(c);
    }
    // Signalled only once the server has every one parked.
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = common::metrics_text(&http, &base).await;
        let waiting = |call: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("weir_longpoll_waiters{{call=\"{call}\"}} ")))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if waiting("lease") + waiting("task") >= PARKED as f64 {
            break;
        }
        assert!(tokio::time::Instant::now() < give_up, "not all parked");
        tokio::task::yield_now().await;
    }
    server.signal(libc::SIGTERM);
    for (i, mut c) in parked.into_iter().enumerate() {
        let mut got = Vec::new();
        tokio::time::timeout(PATIENCE, c.read_to_end(&mut got))
            .await
            .expect("answered and closed in time")
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{i}: {text:?}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{i}: {text:?}");
        let body: serde_json::Value =
            serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
        if i % 2 == 0 {
            assert_eq!(body, json!({"tasks": []}), "{i}");
        } else {
            assert_eq!(body["state"], "pending", "{i}");
        }
    }
    let exit = tokio::time::timeout(PATIENCE, server.child.wait())
        .await
        .expect("the server exits in time")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}
