//! Bad input gets a clear error and changes nothing: random and mangled bodies sent
//! to every endpoint that takes one (through the router, without a socket) must be
//! answered 2xx or 4xx with a problem document, never 5xx or a panic.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;

const ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

/// Every endpoint that takes a body, with a valid body for it.
fn endpoints() -> Vec<(String, Value)> {
    let lease = json!({"lease_id": "0123456789abcdef0123456789abcdef", "result": {"ok": true}});
    let mut e = vec![
        (
            "/v1/queues/q/tasks".to_owned(),
            json!({"payload": {"a": 1}, "kind": "k", "priority": 1, "delay_ms": 5, "max_attempts": 2, "timeout_ms": 100, "idempotency_key": "x"}),
        ),
        (
            "/v1/queues/q/tasks:batch".to_owned(),
            json!({"tasks": [{"payload": 1}, {"payload": 2, "run_at": "2030-01-01T00:00:00Z"}]}),
        ),
        (
            "/v1/queues/q/lease".to_owned(),
            json!({"max": 10, "wait_ms": 0, "worker": "w"}),
        ),
        (
            "/v1/acks".to_owned(),
            json!({"acks": [{"id": ID, "lease_id": "0123456789abcdef0123456789abcdef", "result": 1}], "fails": []}),
        ),
        (
            "/v1/groups".to_owned(),
            json!({"queue": "q", "tasks": [{"payload": 1}], "fail_fast": true}),
        ),
        (
            format!("/v1/tasks/{ID}/fail"),
            json!({"lease_id": "0123456789abcdef0123456789abcdef", "error": "e", "retry": true}),
        ),
    ];
    for action in ["ack", "release", "heartbeat", "cancel"] {
        e.push((format!("/v1/tasks/{ID}/{action}"), lease.clone()));
    }
    e
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from("2030-01-01T00:00:00Z")),
        Just(Value::from("-9999-01-01T00:00:00Z")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::hash_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// How a request's body is made from its endpoint's valid body.
#[derive(Debug, Clone)]
enum Mangle {
    /// Sent as is.
    Valid,
    /// One existing field's value replaced.
    Replace(usize, Value),
    /// A field added (usually one the endpoint does not know).
    Add(String, Value),
    /// Any JSON value instead of the body.
    Json(Value),
    /// Any bytes.
    Bytes(Vec<u8>),
}

fn mangle() -> impl Strategy<Value = Mangle> {
    prop_oneof![
        1 => Just(Mangle::Valid),
        3 => (any::<usize>(), json_value()).prop_map(|(i, v)| Mangle::Replace(i, v)),
        1 => ("[a-z_]{1,14}", json_value()).prop_map(|(k, v)| Mangle::Add(k, v)),
        1 => json_value().prop_map(Mangle::Json),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Mangle::Bytes),
    ]
}

fn make_body(valid: &Value, m: &Mangle) -> Vec<u8> {
    let mut b = valid.clone();
    let obj = b.as_object_mut().unwrap();
    match m {
        Mangle::Valid => {}
        Mangle::Replace(i, v) => {
            let key = obj.keys().nth(i % obj.len()).cloned().unwrap();
            obj.insert(key, v.clone());
        }
        Mangle::Add(k, v) => {
            obj.insert(k.clone(), v.clone());
        }
        Mangle::Json(v) => return serde_json::to_vec(v).unwrap(),
        Mangle::Bytes(bytes) => return bytes.clone(),
    }
    serde_json::to_vec(&b).unwrap()
}

#[test]
fn random_bodies_get_a_4xx_never_a_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = weir_server::ServeConfig::new();
    let store = rt.block_on(weir_store::testing::TestStore::open(Default::default()));
    let app = weir_server::app(store.broker.clone(), config);
    let endpoints = endpoints();
    let config = ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let ok = std::sync::atomic::AtomicUsize::new(0);
    let total = std::sync::atomic::AtomicUsize::new(0);
    proptest!(config, |(p in 0..endpoints.len(), m in mangle())| {
        let (path, valid) = &endpoints[p];
        let body = make_body(valid, &m);
        total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let req = Request::post(path).body(Body::from(body.clone())).unwrap();
        let resp = rt.block_on(app.clone().oneshot(req)).unwrap();
        let status = resp.status();
        if status.is_success() {
            ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        prop_assert!(
            !status.is_server_error(),
            "POST {path} answered {status} to {}",
            String::from_utf8_lossy(&body)
        );
        if status.is_client_error() && status != StatusCode::NOT_FOUND && status != StatusCode::CONFLICT {
            let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            prop_assert_eq!(ct.as_deref(), Some("application/problem+json"));
        }
    });
    // The mangled bodies are close enough to valid that some must get through,
    // or the test would only be exercising the parser.
    let (ok, total) = (ok.into_inner(), total.into_inner());
    eprintln!("{ok} of {total} random requests succeeded");
    assert!(ok > 0, "no request succeeded");
}
