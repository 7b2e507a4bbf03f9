//! The connection layer on a real socket: the header, idle and body timeouts, the
//! connection cap, and the answers to requests that fail below the router. Raw
//! `TcpStream`s, because an HTTP client would never send what these tests send.
//! Timeouts are a few hundred ms so the tests are quick; each asserts that a close
//! came no sooner than its timeout and that other clients were served meanwhile.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_server::ServeConfig;

/// Bound on anything a test waits for that should happen; a hang fails the test
/// instead of blocking it.
const PATIENCE: Duration = Duration::from_secs(10);

mod common;

struct Server(common::TestServer);

impl Server {
    async fn start(tweak: impl FnOnce(&mut ServeConfig)) -> Server {
        Server(common::TestServer::start(tweak).await)
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.0.addr).await.unwrap()
    }

    async fn stop(self) {
        self.0.stop().await;
    }
}

/// One parsed response.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A problem+json document with this `type` slug.
    fn assert_problem(&self, status: u16, slug: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let v = self.json();
        assert_eq!(v["type"], format!("urn:weir:problem:{slug}"), "{v}");
        assert_eq!(v["status"], status, "{v}");
    }
}

/// Reads one response (with a Content-Length body), or `None` if the server
/// closed the connection first.
async fn read_response(s: &mut TcpStream) -> Option<Resp> {
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
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut resp = Resp {
        status,
        head,
        body: buf[head_end..].to_vec(),
    };
    let len: usize = resp
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    while resp.body.len() < len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => resp.body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(resp)
}

async fn exchange(s: &mut TcpStream, request: &[u8]) -> Resp {
    s.write_all(request).await.unwrap();
    tokio::time::timeout(PATIENCE, read_response(s))
        .await
        .expect("an answer in time")
        .expect("an answer, not a closed connection")
}

/// Waits until the server closes `s` (EOF or reset) and returns what it sent
/// before that.
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection in time");
    got
}

/// Sends `request` on a fresh connection: it is answered `status` and closed.
async fn answered_and_closed(s: &Server, request: &[u8], status: u16) {
    let mut c = s.connect().await;
    c.write_all(request).await.unwrap();
    let got = until_closed(&mut c).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with(&format!("HTTP/1.1 {status} ")),
        "{status} expected, got {text:?}"
    );
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

fn post(path: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const SHORT_MS: u64 = 300;

#[tokio::test]
async fn a_half_sent_head_is_closed_at_the_header_timeout_while_others_are_served() {
    let s = Server::start(|c| {
        c.conn.header_read_timeout_ms = SHORT_MS;
        c.conn.idle_timeout_ms = 60_000;
    })
    .await;
    let mut slow = s.connect().await;
    let started = Instant::now();
    slow.write_all(b"POST /v1/queues/q/tasks HTTP/1.1\r\nHost: t\r\nContent-Le")
        .await
        .unwrap();

    // Another client is served while the slow one holds its connection.
    let mut other = s.connect().await;
    let r = exchange(
        &mut other,
        &post("/v1/queues/q/tasks", &json!({"payload": 1})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let served = started.elapsed();

    let got = until_closed(&mut slow).await;
    let closed = started.elapsed();
    assert!(got.is_empty(), "no answer to a request never sent: {got:?}");
    assert!(
        closed >= Duration::from_millis(SHORT_MS),
        "closed after {closed:?}"
    );
    assert!(served < closed, "served {served:?}, closed {closed:?}");

    // A kept-alive connection gets the header timeout again for its next request,
    // counted from its first byte: not the (long) idle timeout.
    let r = exchange(&mut other, &get("/healthz")).await;
    assert_eq!(r.status, 200);
    other.write_all(b"GET /heal").await.unwrap();
    let started = Instant::now();
    assert!(until_closed(&mut other).await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(SHORT_MS));
    s.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_a_long_poll_is_not() {
    let s = Server::start(|c| {
        c.conn.idle_timeout_ms = SHORT_MS;
        c.conn.header_read_timeout_ms = 60_000;
    })
    .await;
    // A long-poll three times the idle timeout: a request in flight is not idle.
    let mut polling = s.connect().await;
    let wait_ms = 3 * SHORT_MS;
    polling
        .write_all(&post(
            "/v1/queues/lp/lease",
            &json!({"wait_ms": wait_ms, "max": 1}),
        ))
        .await
        .unwrap();
    let poll_started = Instant::now();

    let mut idle = s.connect().await;
    let r = exchange(&mut idle, &get("/healthz")).await;
    assert_eq!(r.status, 200);
    let idle_since = Instant::now();
    assert!(until_closed(&mut idle).await.is_empty());
    let idled = idle_since.elapsed();
    assert!(
        idled >= Duration::from_millis(SHORT_MS),
        "closed after {idled:?}"
    );

    let r = tokio::time::timeout(PATIENCE, read_response(&mut polling))
        .await
        .unwrap()
        .expect("the long-poll is answered, not cut");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"tasks": []}));
    assert!(poll_started.elapsed() >= Duration::from_millis(wait_ms));
    // And the connection is kept alive after it, until it idles out in turn.
    let r = exchange(&mut polling, &get("/healthz")).await;
    assert_eq!(r.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_at_the_body_timeout() {
    let s = Server::start(|c| {
        c.conn.body_read_timeout_ms = SHORT_MS;
        c.conn.header_read_timeout_ms = 60_000;
        c.conn.idle_timeout_ms = 60_000;
    })
    .await;
    let mut slow = s.connect().await;
    slow.write_all(
        b"POST /v1/queues/q/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"payload\": ",
    )
    .await
    .unwrap();
    let started = Instant::now();

    let mut other = s.connect().await;
    let r = exchange(
        &mut other,
        &post("/v1/queues/q/tasks", &json!({"payload": 2})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let served = started.elapsed();

    let r = tokio::time::timeout(PATIENCE, read_response(&mut slow))
        .await
        .unwrap()
        .expect("an answer to the stalled request");
    let answered = started.elapsed();
    r.assert_problem(408, "body-timeout");
    assert!(
        answered >= Duration::from_millis(SHORT_MS),
        "answered after {answered:?}"
    );
    assert!(served < answered);
    // The rest of that body can never be told from a next request: closed.
    assert!(until_closed(&mut slow).await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn bad_bodies_and_paths_answer_problem_json() {
    let s = Server::start(|_| {}).await;

    // A malformed chunk size is a bad body (400), not a large one (413).
    let mut c = s.connect().await;
    let r = exchange(
        &mut c,
        b"POST /v1/queues/q/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\nzz\r\n{\"payload\": 1}\r\n0\r\n\r\n",
    )
    .await;
    r.assert_problem(400, "invalid-body");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("could not be read"),
        "{r:?}"
    );

    // A body over the limit is still 413.
    let mut c = s.connect().await;
    let r = exchange(
        &mut c,
        b"POST /v1/queues/q/lease HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n",
    )
    .await;
    r.assert_problem(413, "too-large");

    // A chunked body over the limit, without a declared length: 413 too.
    let mut c = s.connect().await;
    let chunk = "x".repeat(70 * 1024);
    let mut req =
        b"POST /v1/queues/q/lease HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    req.extend_from_slice(format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()).as_bytes());
    let r = exchange(&mut c, &req).await;
    r.assert_problem(413, "too-large");

    // Percent-encoding that is not UTF-8.
    let mut c = s.connect().await;
    let r = exchange(&mut c, &get("/v1/tasks/%ff")).await;
    r.assert_problem(400, "invalid-path");
    assert_eq!(r.json()["field"], "id");
    let r = exchange(&mut c, &get("/v1/queues/%c3%28")).await;
    r.assert_problem(400, "invalid-path");

    // No such route, and a route without that method.
    let r = exchange(&mut c, &get("/v2/nothing")).await;
    r.assert_problem(404, "not-found");
    let r = exchange(&mut c, &get("/v1/acks")).await;
    r.assert_problem(405, "method-not-allowed");
    s.stop().await;
}

/// A request the connection layer cannot parse is answered before any route
/// runs, and the connection closed (what follows cannot be framed). These pin
/// the statuses and the limits we set.
#[tokio::test]
async fn unparseable_requests_get_a_status_and_a_close() {
    let s = Server::start(|_| {}).await;
    let head_max = weir_server::conn::REQUEST_HEAD_BYTES_MAX_DEFAULT;

    let long_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(head_max)
    );
    let long_uri = format!(
        "GET /healthz?{} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(head_max)
    );
    let cases: [(&[u8], u16); 4] = [
        (b"GARBAGE\r\n\r\n", 400),
        (
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n",
            400,
        ),
        (long_header.as_bytes(), 431),
        (long_uri.as_bytes(), 431),
    ];
    for (request, status) in cases {
        answered_and_closed(&s, request, status).await;
    }

    // A head just under the limit is served.
    let mut c = s.connect().await;
    let fits = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(head_max - 100)
    );
    assert_eq!(exchange(&mut c, fits.as_bytes()).await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn at_the_connection_cap_a_new_connection_waits_for_a_free_slot() {
    const CAP: usize = 4;
    let s = Server::start(|c| c.conn.connections_max = CAP).await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut c = s.connect().await;
        assert_eq!(exchange(&mut c, &get("/healthz")).await.status, 200);
        held.push(c);
    }
    // The kernel completes the handshake, but the server does not accept it: the
    // request sits unread for as long as every slot is taken. (A fixed wait is the
    // only way to see that something does not happen.)
    let mut extra = s.connect().await;
    extra.write_all(&get("/healthz")).await.unwrap();
    let early =
        tokio::time::timeout(Duration::from_millis(SHORT_MS), read_response(&mut extra)).await;
    assert!(early.is_err(), "served beyond the cap: {early:?}");
    // Every held connection is still served meanwhile.
    for c in &mut held {
        assert_eq!(exchange(c, &get("/healthz")).await.status, 200);
    }

    drop(held.pop());
    let r = tokio::time::timeout(PATIENCE, read_response(&mut extra))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert_eq!(r.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_finishes_long_polls() {
    let s = Server::start(|_| {}).await;
    let mut idle = s.connect().await;
    assert_eq!(exchange(&mut idle, &get("/healthz")).await.status, 200);
    let mut polling = s.connect().await;
    polling
        .write_all(&post("/v1/queues/sd/lease", &json!({"wait_ms": 60000})))
        .await
        .unwrap();
    let started = Instant::now();
    s.stop().await;
    // Well inside the 10 s grace: nothing waited for the idle connection.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(until_closed(&mut idle).await.is_empty());
    // Answered at once if the server had read it (the broker wakes long-polls),
    // closed unanswered if it had not.
    let got = until_closed(&mut polling).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 503"),
        "{text:?}"
    );
}

/// The series `name` (with its labels, as printed) from the server's `/metrics`.
async fn series(s: &Server, name: &str) -> f64 {
    let mut c = s.connect().await;
    let r = exchange(&mut c, &get("/metrics")).await;
    assert_eq!(r.status, 200, "{r:?}");
    String::from_utf8(r.body)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `series` until it equals `want` (bounded by PATIENCE).
async fn until_series(s: &Server, name: &str, want: f64) {
    let give_up = Instant::now() + PATIENCE;
    loop {
        let got = series(s, name).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < give_up, "{name} stayed {got}, not {want}");
        tokio::task::yield_now().await;
    }
}

/// The first `n` responses (status, body) in `buf`, if it holds that many whole.
fn split_responses(buf: &[u8], n: usize) -> Option<Vec<(u16, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while out.len() < n {
        let end = at + buf[at..].windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = std::str::from_utf8(&buf[at..end]).unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.parse().unwrap());
        if buf.len() < end + len {
            return None;
        }
        out.push((status, buf[end..end + len].to_vec()));
        at = end + len;
    }
    Some(out)
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let s = Server::start(|_| {}).await;
    let mut c = s.connect().await;
    // Three requests in one write: a GET, a POST with a body, a GET whose head
    // ends the write.
    let mut burst = get("/v1/queues/pipe");
    burst.extend(post("/v1/queues/pipe/tasks", &json!({"payload": "p"})));
    burst.extend(get("/healthz"));
    c.write_all(&burst).await.unwrap();
    // The answers may arrive in one segment: read them as one stream.
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let answers = loop {
        if let Some(answers) = split_responses(&got, 3) {
            break answers;
        }
        let n = tokio::time::timeout(PATIENCE, c.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    };
    // No such queue yet, then the task that makes it, then the probe.
    assert_eq!(answers[0].0, 404, "{answers:?}");
    assert_eq!(answers[1].0, 201, "{answers:?}");
    assert_eq!(answers[2], (200, b"ok".to_vec()));
    // The connection is still usable after the burst.
    assert_eq!(exchange(&mut c, &get("/healthz")).await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn a_request_in_many_tiny_writes_is_served() {
    let s = Server::start(|_| {}).await;
    let mut c = s.connect().await;
    c.set_nodelay(true).unwrap();
    let req = post(
        "/v1/queues/tiny/tasks",
        &json!({"payload": {"split": true}}),
    );
    for b in &req {
        c.write_all(std::slice::from_ref(b)).await.unwrap();
        c.flush().await.unwrap();
        // Gives the server a chance to read each byte on its own.
        tokio::task::yield_now().await;
    }
    let r = tokio::time::timeout(PATIENCE, read_response(&mut c))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    // A chunked body in tiny chunks, with a trailer.
    let mut req = b"POST /v1/queues/tiny/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in [&b"{\"pay"[..], b"load\"", b": 7}"] {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    for part in req.chunks(3) {
        c.write_all(part).await.unwrap();
        tokio::task::yield_now().await;
    }
    let r = tokio::time::timeout(PATIENCE, read_response(&mut c))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["state"], "pending");
    s.stop().await;
}

#[tokio::test]
async fn expect_100_continue_gets_its_interim_answer_before_the_body() {
    let s = Server::start(|_| {}).await;
    let mut c = s.connect().await;
    let body = json!({"payload": 5}).to_string();
    c.write_all(
        format!(
            "POST /v1/queues/ex/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
             Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The interim answer comes before any byte of the body is sent.
    let mut interim = [0u8; 25];
    tokio::time::timeout(PATIENCE, c.read_exact(&mut interim))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(body.as_bytes()).await.unwrap();
    let r = tokio::time::timeout(PATIENCE, read_response(&mut c))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    s.stop().await;
}

#[tokio::test]
async fn http_1_0_closes_unless_kept_alive_and_head_has_no_body() {
    let s = Server::start(|_| {}).await;
    let mut c = s.connect().await;
    c.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.unwrap();
    let got = until_closed(&mut c).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text:?}"
    );
    assert!(text.ends_with("\r\n\r\nok"), "{text:?}");

    let mut c = s.connect().await;
    let r = exchange(
        &mut c,
        b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(exchange(&mut c, &get("/healthz")).await.status, 200);

    // HEAD: the GET's headers, its length, and no body (the next answer follows
    // at once on the same connection).
    c.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    c.write_all(&get("/healthz")).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while got.windows(4).filter(|w| w == b"\r\n\r\n").count() < 2 || !got.ends_with(b"ok") {
        let n = tokio::time::timeout(PATIENCE, c.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("content-length: 2"), "{text:?}");
    assert!(rest.starts_with("HTTP/1.1 200 OK"), "{text:?}");
    s.stop().await;
}

#[tokio::test]
async fn smuggling_shapes_are_refused_and_closed() {
    let s = Server::start(|_| {}).await;
    let cases: [(&[u8], u16); 4] = [
        (
            b"POST /v1/queues/q/tasks HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /v1/queues/q/tasks HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            400,
        ),
        (
            b"POST /v1/queues/q/tasks HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        (
            b"POST /v1/queues/q/tasks HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}",
            417,
        ),
    ];
    for (request, status) in cases {
        answered_and_closed(&s, request, status).await;
    }
    // Nothing was enqueued by any of them: the queue does not even exist.
    let mut c = s.connect().await;
    let r = exchange(&mut c, &get("/v1/queues/q")).await;
    assert_eq!(r.status, 404, "{r:?}");
    s.stop().await;
}

#[tokio::test]
async fn slowloris_is_closed_at_the_header_timeout_while_others_are_served() {
    let s = Server::start(|c| {
        c.conn.header_read_timeout_ms = SHORT_MS;
        c.conn.idle_timeout_ms = 60_000;
    })
    .await;
    // One byte every SHORT_MS / 6: each byte arrives well inside the header
    // timeout, but the whole head (46 bytes) would take 7.6 times the timeout.
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(3)
    );
    let mut slow = s.connect().await;
    slow.set_nodelay(true).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    let mut other = s.connect().await;
    let mut served = 0;
    for b in head.as_bytes() {
        if slow.write_all(std::slice::from_ref(b)).await.is_err() {
            break;
        }
        sent += 1;
        // Meanwhile another client is served.
        assert_eq!(exchange(&mut other, &get("/healthz")).await.status, 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(SHORT_MS / 6)).await;
        // Closed yet? A zero-length peek would block; a read with no data
        // pending must not: poll once.
        let mut probe = [0u8; 1];
        match tokio::time::timeout(Duration::ZERO, slow.peek(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => panic!("the server answered a request it never got"),
            Err(_) => {}
        }
    }
    let closed = started.elapsed();
    assert!(until_closed(&mut slow).await.is_empty());
    assert!(
        sent < head.len(),
        "the slow client sent its whole head ({sent} bytes in {closed:?}) before being closed"
    );
    assert!(
        closed >= Duration::from_millis(SHORT_MS),
        "closed after {closed:?}"
    );
    assert!(served > 0);
    s.stop().await;
}

#[tokio::test]
async fn a_client_gone_from_its_long_poll_leases_nothing() {
    let s = Server::start(|_| {}).await;
    let mut gone = s.connect().await;
    gone.write_all(&post(
        "/v1/queues/lp/lease",
        &json!({"wait_ms": 60000, "max": 1}),
    ))
    .await
    .unwrap();
    until_series(&s, "weir_longpoll_waiters{call=\"lease\"}", 1.0).await;
    drop(gone);
    // The server sees the close and drops the parked request...
    until_series(&s, "weir_longpoll_waiters{call=\"lease\"}", 0.0).await;
    // ...so a task enqueued now goes to the next worker, not to the gone one.
    let mut c = s.connect().await;
    let r = exchange(&mut c, &post("/v1/queues/lp/tasks", &json!({"payload": 1}))).await;
    assert_eq!(r.status, 201);
    let r = exchange(&mut c, &post("/v1/queues/lp/lease", &json!({"max": 1}))).await;
    assert_eq!(r.json()["tasks"].as_array().map(Vec::len), Some(1), "{r:?}");
    s.stop().await;
}

#[tokio::test]
async fn thousands_of_parked_long_polls_leave_others_served_and_all_answer_at_shutdown() {
    const PARKED: usize = 2_000;
    // Both ends of every connection live in this process.
    let files = common::raise_open_files_limit();
    assert!(
        files >= 2 * PARKED as u64 + 1_000,
        "this test needs {} open files; the hard limit is {files}",
        2 * PARKED + 1_000
    );
    let s = Server::start(|_| {}).await;
    let mut parked = Vec::with_capacity(PARKED);
    for i in 0..PARKED {
        let mut c = s.connect().await;
        let req = if i % 2 == 0 {
            post(
                "/v1/queues/many/lease",
                &json!({"wait_ms": 60000, "max": 1}),
            )
        } else {
            get("/healthz")
        };
        c.write_all(&req).await.unwrap();
        if i % 2 == 1 {
            // An idle keep-alive connection once answered.
            let r = tokio::time::timeout(PATIENCE, read_response(&mut c))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.status, 200);
        }
        parked.push(c);
    }
    let leases = "weir_longpoll_waiters{call=\"lease\"}";
    until_series(&s, leases, (PARKED / 2) as f64).await;
    // Others are served while every long-poll stays parked.
    let mut c = s.connect().await;
    for i in 0..50 {
        let r = exchange(
            &mut c,
            &post("/v1/queues/other/tasks", &json!({"payload": i})),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    assert_eq!(series(&s, leases).await, (PARKED / 2) as f64);
    assert!(series(&s, "weir_http_connections").await >= PARKED as f64);

    // Shutdown: every parked long-poll gets its answer, every idle connection is
    // closed, and the server ends cleanly (stop() asserts Ok).
    let stopped = tokio::spawn(s.0.stop());
    for (i, mut c) in parked.into_iter().enumerate() {
        let got = until_closed(&mut c).await;
        let text = String::from_utf8_lossy(&got);
        if i % 2 == 0 {
            assert!(
                text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 503"),
                "long-poll {i}: {text:?}"
            );
            assert!(text.contains("connection: close"), "{text:?}");
        } else {
            assert!(text.is_empty(), "idle {i}: {text:?}");
        }
    }
    stopped.await.unwrap();
}
