//! `--otlp-endpoint`: a server exports its spans of an enqueue, a lease and a
//! settle to an OTLP/HTTP collector (a fake one here, decoding what it receives
//! with the OTLP protobuf types), in the producer's trace.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};

mod common;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER: &str = "00f067aa0ba902b7";
const WORKER: &str = "b7ad6b7169203331";

/// A collector that keeps every span it is sent.
async fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        kept.lock().unwrap().extend(ss.spans);
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_lease_and_settle_spans_reach_the_collector_in_the_producers_trace() {
    let (url, spans) = collector().await;
    let server = common::TestServer::start(|c| c.otlp_endpoint = Some(url)).await;
    let http = reqwest::Client::new();
    let v: Value = http
        .post(format!("{}/v1/queues/otq/tasks", server.base))
        .header("traceparent", format!("00-{TRACE}-{PRODUCER}-01"))
        .json(&json!({"payload": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    let lease_url = format!("{}/v1/queues/otq/lease", server.base);
    let leased = common::post_json(&http, lease_url, json!({"max": 1})).await;
    let task = &leased["tasks"][0];
    // The task carries the server's send span, in the producer's trace.
    let carried = task["traceparent"].as_str().unwrap().to_owned();
    assert!(carried.starts_with(&format!("00-{TRACE}-")), "{carried}");
    let send_id = carried[36..52].to_owned();
    assert_ne!(send_id, PRODUCER);
    let acked = http
        .post(format!("{}/v1/tasks/{id}/ack", server.base))
        .header("traceparent", format!("00-{TRACE}-{WORKER}-01"))
        .json(&json!({"lease_id": task["lease_id"]}))
        .send()
        .await
        .unwrap();
    assert!(acked.status().is_success());
    // Shutdown flushes the batch exporter.
    server.stop().await;

    let spans = spans.lock().unwrap().clone();
    let named = |n: &str| {
        spans
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("no span {n:?} in {spans:#?}"))
            .clone()
    };
    let send = named("send otq");
    assert_eq!(hex(&send.trace_id), TRACE);
    assert_eq!(hex(&send.parent_span_id), PRODUCER);
    assert_eq!(hex(&send.span_id), send_id);
    assert_eq!(send.kind, SpanKind::Producer as i32);
    assert_eq!(attr(&send, "messaging.system").as_deref(), Some("weir"));
    assert_eq!(
        attr(&send, "messaging.operation.type").as_deref(),
        Some("send")
    );
    assert_eq!(
        attr(&send, "messaging.destination.name").as_deref(),
        Some("otq")
    );
    assert_eq!(
        attr(&send, "messaging.message.id").as_deref(),
        Some(id.as_str())
    );

    let receive = named("receive otq");
    assert_eq!(receive.kind, SpanKind::Consumer as i32);
    assert_eq!(
        attr(&receive, "messaging.batch.message_count").as_deref(),
        Some("1")
    );
    assert_eq!(receive.links.len(), 1);
    assert_eq!(hex(&receive.links[0].trace_id), TRACE);
    assert_eq!(hex(&receive.links[0].span_id), send_id);

    let settle = named("settle");
    assert_eq!(hex(&settle.trace_id), TRACE);
    assert_eq!(hex(&settle.parent_span_id), WORKER);
    assert_eq!(
        attr(&settle, "messaging.message.id").as_deref(),
        Some(id.as_str())
    );
}
