//! The ingress limit on a real socket: a client over its rate gets 429 with
//! `Retry-After` and `RateLimit-*` headers, another address is unaffected, and the
//! probes are never limited. Clients bind to 127.0.0.1 and 127.0.0.2 (both
//! loopback on Linux) so the server sees two addresses. The rate is one request an
//! hour in bursts of 3, so no bucket refills while a test runs: the outcome of
//! every request is known without controlling time.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use weir_server::IngressLimit;

const BURST: u32 = 3;
const HOUR_SECS: u64 = 3600;

mod common;

use common::TestServer as Server;

async fn start(ingress: Option<IngressLimit>) -> Server {
    Server::start(|c| c.ingress = ingress).await
}

fn one_an_hour() -> Option<IngressLimit> {
    Some(IngressLimit::new(1, Duration::from_secs(HOUR_SECS), Some(BURST)).unwrap())
}

/// A client whose requests come from `127.0.0.<last>`.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .build()
        .unwrap()
}

async fn send(
    client: &reqwest::Client,
    method: &str,
    url: String,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

fn header_u64(h: &HeaderMap, name: &str) -> u64 {
    header(h, name)
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_and_others_are_unaffected() {
    let s = start(one_an_hour()).await;
    let a = client_from(1);
    let b = client_from(2);
    let queues = || format!("{}/v1/queues", s.base);

    // The burst passes, counting down.
    for remaining in (0..BURST).rev() {
        let (status, h, _) = send(&a, "GET", queues(), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header_u64(&h, "ratelimit-limit"), u64::from(BURST));
        assert_eq!(header_u64(&h, "ratelimit-remaining"), u64::from(remaining));
    }
    // Then every route is refused, before its handler runs: the enqueue stores
    // nothing.
    let enqueue = format!("{}/v1/queues/limited/tasks", s.base);
    for (method, url, body) in [
        ("GET", queues(), None),
        ("POST", enqueue, Some(json!({"payload": {"n": 1}}))),
        ("GET", format!("{}/no/such/route", s.base), None),
    ] {
        let (status, h, v) = send(&a, method, url.clone(), body).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{method} {url}: {v}");
        assert_eq!(header(&h, "content-type"), Some("application/problem+json"));
        assert_eq!(v["type"], "urn:weir:problem:rate-limited", "{v}");
        assert_eq!(v["status"], 429);
        // A token comes back an hour after the first request: Retry-After is
        // that, rounded up to whole seconds.
        let retry_after = header_u64(&h, "retry-after");
        assert!(
            (HOUR_SECS - 60..=HOUR_SECS).contains(&retry_after),
            "Retry-After {retry_after}"
        );
        assert_eq!(header_u64(&h, "ratelimit-reset"), retry_after);
        assert_eq!(header_u64(&h, "ratelimit-limit"), u64::from(BURST));
        assert_eq!(header_u64(&h, "ratelimit-remaining"), 0);
    }

    // Another address has a bucket of its own, and sees that the refused enqueue
    // created nothing.
    let (status, h, v) = send(&b, "GET", queues(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header_u64(&h, "ratelimit-remaining"), u64::from(BURST - 1));
    assert_eq!(v, json!({"queues": []}));
    s.stop().await;
}

#[tokio::test]
async fn probes_are_never_limited() {
    let s = start(one_an_hour()).await;
    let a = client_from(1);
    for _ in 0..BURST {
        send(&a, "GET", format!("{}/v1/queues", s.base), None).await;
    }
    let (status, _, _) = send(&a, "GET", format!("{}/v1/queues", s.base), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..3 * BURST {
        for probe in ["/healthz", "/readyz"] {
            let (status, h, v) = send(&a, "GET", format!("{}{probe}", s.base), None).await;
            assert_eq!(status, StatusCode::OK, "{probe}: {v}");
            assert_eq!(header(&h, "ratelimit-limit"), None, "{probe}");
        }
        // No /metrics route yet; whatever answers it, the limit does not.
        let (status, _, _) = send(&a, "GET", format!("{}/metrics", s.base), None).await;
        assert_ne!(status, StatusCode::TOO_MANY_REQUESTS);
    }
    s.stop().await;
}

#[tokio::test]
async fn without_a_limit_nothing_is_limited_or_labelled() {
    let s = start(None).await;
    let a = client_from(1);
    for _ in 0..3 * BURST {
        let (status, h, _) = send(&a, "GET", format!("{}/v1/queues", s.base), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "ratelimit-limit"), None);
    }
    s.stop().await;
}
