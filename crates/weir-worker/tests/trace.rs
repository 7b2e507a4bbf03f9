//! The pool continues a producer's trace: its span for a task is a consumer span
//! whose parent is the span the producer named in `traceparent`. A test binary of
//! its own, because it installs the process's global `tracing` subscriber (an
//! OpenTelemetry layer over an in-memory exporter).

use std::time::Duration;

use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::json;
use tokio::sync::oneshot;
use tracing_subscriber::layer::SubscriberExt;
use weir_client::{Client, EnqueueOptions};
use weir_server::ServeConfig;
use weir_worker::{Ctx, PoolBuilder, Task};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_span_for_a_task_is_a_child_of_the_producers() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("pool-test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let store = weir_store::testing::TestStore::open(Default::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Client::new(format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let (stop_server, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(weir_server::serve(
        listener,
        ServeConfig::new(),
        store.broker.clone(),
        async move {
            let _ = stopped.await;
        },
    ));

    let mut traced = EnqueueOptions::new(json!(1)).kind("k");
    traced.traceparent = Some(format!("00-{TRACE_ID}-{PARENT_ID}-01"));
    traced.tracestate = Some("congo=t61rcWkgMzE".into());
    let traced = client.enqueue("tq", &traced).await.unwrap().id;
    let plain = client
        .enqueue("tq", &EnqueueOptions::new(json!(2)).kind("k"))
        .await
        .unwrap()
        .id;
    let pool = PoolBuilder::new(client.clone())
        .queue("tq", 1)
        .handler("k", |t: Task, _ctx: Ctx| async move {
            Ok(json!({ "traceparent": t.traceparent }))
        })
        .build()
        .unwrap();
    let (stop_pool, pool_stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(pool.run(async move {
        let _ = pool_stopped.await;
    }));
    for id in [&traced, &plain] {
        let t = client.wait(id, 15_000).await.unwrap();
        assert!(t.state.is_terminal(), "{t:?}");
    }
    let t = client.get(&traced).await.unwrap();
    assert_eq!(
        t.result,
        Some(json!({ "traceparent": format!("00-{TRACE_ID}-{PARENT_ID}-01") })),
        "the handler sees the trace context"
    );
    let _ = stop_pool.send(());
    running.await.unwrap().unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let process: Vec<_> = spans.iter().filter(|s| s.name == "process tq").collect();
    assert_eq!(process.len(), 2, "one span per task: {spans:#?}");
    let child = process
        .iter()
        .find(|s| s.span_context.trace_id().to_string() == TRACE_ID)
        .expect("the traced task's span is in the producer's trace");
    assert_eq!(child.parent_span_id.to_string(), PARENT_ID);
    assert_eq!(child.span_kind, SpanKind::Consumer);
    assert_eq!(
        child.span_context.trace_state().get("congo"),
        Some("t61rcWkgMzE")
    );
    let attr = |name: &str| {
        child
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == name)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(attr("messaging.system").as_deref(), Some("weir"));
    assert_eq!(attr("messaging.destination.name").as_deref(), Some("tq"));
    assert_eq!(
        attr("messaging.message.id").as_deref(),
        Some(traced.as_str())
    );
    let other = process
        .iter()
        .find(|s| s.span_context.trace_id().to_string() != TRACE_ID)
        .unwrap();
    assert!(
        !other.parent_span_id.to_string().ends_with(PARENT_ID),
        "a task without trace context starts a trace of its own"
    );

    let _ = stop_server.send(());
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
