//! OpenTelemetry spans of the broker's side of a task (`weir serve
//! --otlp-endpoint`), exported over OTLP/HTTP (protobuf) by a batch processor on
//! its own thread. Off by default; off, nothing here runs (handlers hold an
//! `Option<Arc<Otel>>` and skip on `None`).
//!
//! Spans follow OpenTelemetry's messaging conventions (`messaging.system =
//! "weir"`, `messaging.operation.type`, `messaging.destination.name`,
//! `messaging.message.id`):
//! - `send <queue>` (producer) for an enqueue, a child of the request's
//!   `traceparent`. The task then carries *this* span's context, so workers'
//!   spans hang under it: producer → send → process.
//! - `receive <queue>` (consumer) for a lease that handed out tasks, with a
//!   link to each task's context (one lease serves many traces).
//! - `settle` (consumer) for an ack, fail or `/v1/acks`, a child of the
//!   request's `traceparent` (a worker's process span).
//!
//! May not: block a request (export runs on the processor's thread, and its
//! queue is bounded: spans beyond it are dropped and counted by the SDK).

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use weir_core::TraceContext;

/// The exporter and the tracer spans are made with.
pub struct Otel {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// What a span is about.
pub enum Op<'a> {
    /// An enqueue of `n` tasks (`id` when one).
    Send {
        queue: &'a str,
        id: Option<&'a str>,
        n: usize,
    },
    /// A lease that handed out these tasks' contexts.
    Receive { queue: &'a str, n: usize },
    /// An ack or fail of one task, or a batch of them (the queue is not known
    /// before the store answers: the span is named `settle`).
    Settle {
        queue: Option<&'a str>,
        id: Option<&'a str>,
        n: usize,
    },
}

impl Otel {
    /// Starts exporting to the OTLP/HTTP collector at `endpoint`: a base URL
    /// (`http://collector:4318`, to which `/v1/traces` is added) or the full URL
    /// of its traces path.
    pub fn start(endpoint: &str) -> anyhow::Result<Otel> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
        let url = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_headers(Default::default())
            .build()?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("weir")
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("weir");
        Ok(Otel { provider, tracer })
    }

    /// Starts a span for `op` under `parent` (the request's trace context, if
    /// any), at `start` or now; for a receive, `links` are the leased tasks'
    /// contexts.
    pub fn span(
        &self,
        op: Op<'_>,
        parent: Option<&TraceContext>,
        links: &[&TraceContext],
        start: Option<std::time::SystemTime>,
    ) -> opentelemetry_sdk::trace::Span {
        let (name, kind, operation, queue, id, n) = match op {
            Op::Send { queue, id, n } => (
                format!("send {queue}"),
                SpanKind::Producer,
                "send",
                Some(queue),
                id,
                n,
            ),
            Op::Receive { queue, n } => (
                format!("receive {queue}"),
                SpanKind::Consumer,
                "receive",
                Some(queue),
                None,
                n,
            ),
            Op::Settle { queue, id, n } => (
                match queue {
                    Some(q) => format!("settle {q}"),
                    None => "settle".to_owned(),
                },
                SpanKind::Consumer,
                "settle",
                queue,
                id,
                n,
            ),
        };
        let mut attributes = vec![
            KeyValue::new("messaging.system", "weir"),
            KeyValue::new("messaging.operation.type", operation),
        ];
        if let Some(q) = queue {
            attributes.push(KeyValue::new("messaging.destination.name", q.to_owned()));
        }
        match id {
            Some(id) => attributes.push(KeyValue::new("messaging.message.id", id.to_owned())),
            None => attributes.push(KeyValue::new("messaging.batch.message_count", n as i64)),
        }
        let parent = parent
            .and_then(remote)
            .map(|sc| Context::new().with_remote_span_context(sc))
            .unwrap_or_default();
        let links = links
            .iter()
            .filter_map(|t| remote(t))
            .map(Link::with_context)
            .collect();
        let mut builder = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .with_links(links);
        if let Some(t) = start {
            builder = builder.with_start_time(t);
        }
        builder.start_with_context(&self.tracer, &parent)
    }

    /// Exports what is buffered and stops the exporter (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing OpenTelemetry spans at shutdown");
        }
    }
}

/// The trace context a task carries after a `send` span: the span's own ids, and
/// the tracestate the producer sent.
pub fn carried(span: &opentelemetry_sdk::trace::Span, from: Option<&TraceContext>) -> TraceContext {
    let sc = span.span_context();
    TraceContext {
        traceparent: format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        ),
        tracestate: from.and_then(|t| t.tracestate.clone()),
    }
}

/// A validated trace context as a remote span context.
fn remote(t: &TraceContext) -> Option<SpanContext> {
    let trace = TraceId::from_hex(t.trace_id()).ok()?;
    let span = SpanId::from_hex(t.parent_id()).ok()?;
    let flags = u8::from_str_radix(&t.traceparent[53..55], 16).ok()?;
    let state = t
        .tracestate
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        state,
    ))
}

/// The collector's traces URL: `/v1/traces` added to a bare base URL.
fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| anyhow::anyhow!("--otlp-endpoint {endpoint:?} is not an http(s) URL"))?;
    Ok(match rest.find('/') {
        None => format!("{endpoint}/v1/traces"),
        Some(i) if rest[i..] == *"/" => format!("{}v1/traces", endpoint),
        Some(_) => endpoint.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://c:4318").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c/otlp/v1/traces").unwrap(),
            "https://c/otlp/v1/traces"
        );
        assert!(traces_url("c:4318").is_err());
    }
}
