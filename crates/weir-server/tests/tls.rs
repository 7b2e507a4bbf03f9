//! TLS on a real socket: a client that trusts the server's CA is served, one
//! that does not is refused by its own TLS check, plain HTTP on the TLS port is
//! closed without hurting anyone else, a stalled handshake gives its slot back at
//! the header timeout, a reload reaches new connections only, and a drain answers
//! a TLS long-poll. Certificates are made by the test (`common::certs`).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_server::{ServeConfig, ServerTls, TlsFiles};

mod common;
use common::certs::{chain, client_trusting, TestCa};
use common::TestServer;

/// Bound on anything a test waits for that should happen.
const PATIENCE: Duration = Duration::from_secs(10);

/// A server with TLS from a fresh CA's pair, written into `dir`.
async fn start(
    ca: &TestCa,
    dir: &tempfile::TempDir,
    tweak: impl FnOnce(&mut ServeConfig),
) -> (TestServer, ServerTls) {
    let (cert, key) = ca.server_pair().write(dir.path());
    let tls = ServerTls::load(TlsFiles { cert, key }).unwrap();
    let handle = tls.clone();
    let server = TestServer::start(move |c| {
        c.tls = Some(tls);
        tweak(c);
    })
    .await;
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    (server, handle)
}

async fn healthz(client: &reqwest::Client, base: &str) -> Result<u16, reqwest::Error> {
    let res = client.get(format!("{base}/healthz")).send().await?;
    Ok(res.status().as_u16())
}

#[tokio::test]
async fn a_client_that_trusts_the_ca_is_served_and_one_that_does_not_is_refused() {
    let ca = TestCa::new("weir test CA");
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = start(&ca, &dir, |_| {}).await;

    let trusting = client_trusting(&ca);
    let res = trusting
        .post(format!("{}/v1/queues/q/tasks", s.base))
        .json(&json!({"payload": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.version(), reqwest::Version::HTTP_11);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task = common::get_json(&trusting, &format!("{}/v1/tasks/{id}", s.base)).await;
    assert_eq!(task["payload"], json!({"n": 1}));

    // Mozilla's roots do not include the test's CA.
    let untrusting = reqwest::Client::new();
    let e = healthz(&untrusting, &s.base).await.unwrap_err();
    let shown = chain(&e);
    assert!(shown.contains("certificate"), "{shown}");
    // Nor does a client that trusts another CA.
    let other = client_trusting(&TestCa::new("another CA"));
    let shown = chain(&healthz(&other, &s.base).await.unwrap_err());
    assert!(shown.contains("certificate"), "{shown}");

    // The server took none of that amiss.
    assert_eq!(healthz(&trusting, &s.base).await.unwrap(), 200);
    s.stop().await;
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_closed_and_the_server_goes_on() {
    let ca = TestCa::new("weir test CA");
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = start(&ca, &dir, |_| {}).await;

    let mut plain = TcpStream::connect(s.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 1024];
        loop {
            match plain.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the server closes a plain HTTP connection at once");
    // Closed with at most a TLS alert record (content type 21), never an HTTP
    // answer.
    assert!(got.is_empty() || got[0] == 21, "{got:?}");

    // An HTTP client gets an error, not an answer.
    let http = reqwest::Client::new();
    let base = s.base.replacen("https://", "http://", 1);
    assert!(healthz(&http, &base).await.is_err());

    assert_eq!(healthz(&client_trusting(&ca), &s.base).await.unwrap(), 200);
    s.stop().await;
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_at_the_header_timeout_and_gives_back_its_slot() {
    const HEADER_MS: u64 = 300;
    let ca = TestCa::new("weir test CA");
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = start(&ca, &dir, |c| {
        c.conn.connections_max = 1;
        c.conn.header_read_timeout_ms = HEADER_MS;
    })
    .await;

    // Connects and sends the first bytes of a ClientHello record, never the rest.
    // (The clock starts before the connect: the server's accept, from which its
    // timeout counts, comes after it.)
    let started = Instant::now();
    let mut stalled = TcpStream::connect(s.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02]).await.unwrap();

    // The one slot is taken: this TLS client waits in the backlog until the
    // stalled one is closed, then is served.
    let client = client_trusting(&ca);
    let status = tokio::time::timeout(PATIENCE, healthz(&client, &s.base))
        .await
        .expect("served once the stalled handshake is closed")
        .unwrap();
    assert_eq!(status, 200);
    let served = started.elapsed();
    assert!(
        served >= Duration::from_millis(HEADER_MS),
        "served after {served:?}, before the stalled client's slot was free"
    );

    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, stalled.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the stalled connection is closed");
    drop(client);
    s.stop().await;
}

#[tokio::test]
async fn a_reload_reaches_new_connections_and_a_bad_pair_keeps_the_old_one() {
    let (ca_a, ca_b) = (TestCa::new("CA A"), TestCa::new("CA B"));
    let dir = tempfile::tempdir().unwrap();
    let (s, tls) = start(&ca_a, &dir, |_| {}).await;

    // A connection opened under pair A, kept alive in the client's pool.
    let old = client_trusting(&ca_a);
    assert_eq!(healthz(&old, &s.base).await.unwrap(), 200);

    ca_b.server_pair().write(dir.path());
    tls.reload().unwrap();
    let b = client_trusting(&ca_b);
    assert_eq!(healthz(&b, &s.base).await.unwrap(), 200);
    // A new connection trusting only A is now refused...
    let shown = chain(&healthz(&client_trusting(&ca_a), &s.base).await.unwrap_err());
    assert!(shown.contains("certificate"), "{shown}");
    // ...while the one opened before the reload goes on.
    assert_eq!(healthz(&old, &s.base).await.unwrap(), 200);

    // A pair that does not load changes nothing.
    std::fs::write(dir.path().join("key.pem"), "not a key\n").unwrap();
    let e = tls.reload().unwrap_err();
    assert!(e.to_string().contains("key.pem"), "{e}");
    let fresh = client_trusting(&ca_b);
    assert_eq!(healthz(&fresh, &s.base).await.unwrap(), 200);
    // A key of another certificate neither.
    let other = ca_b.server_pair();
    let mismatched = common::certs::ServerPair {
        cert_pem: ca_a.server_pair().cert_pem,
        key_pem: other.key_pem,
    };
    mismatched.write(dir.path());
    let e = tls.reload().unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
    assert_eq!(
        healthz(&client_trusting(&ca_b), &s.base).await.unwrap(),
        200
    );
    s.stop().await;
}

#[tokio::test]
async fn shutdown_answers_a_tls_long_poll_and_drains() {
    let ca = TestCa::new("weir test CA");
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = start(&ca, &dir, |_| {}).await;
    let client = client_trusting(&ca);
    // A long-poll on a queue with nothing in it, then, once it is parked
    // (`weir_longpoll_waiters` says so), a shutdown.
    let poll = tokio::spawn({
        let (client, base) = (client.clone(), s.base.clone());
        async move {
            client
                .post(format!("{base}/v1/queues/lp/lease"))
                .json(&json!({"max": 1, "wait_ms": 30_000}))
                .send()
                .await
        }
    });
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = client
            .get(format!("{}/metrics", s.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text
            .lines()
            .any(|l| l.starts_with(r#"weir_longpoll_waiters{call="lease"} 1"#))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the lease never parked:\n{text}");
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    s.stop().await;
    let res = poll.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert!(started.elapsed() < PATIENCE);
}
