//! W3C trace context across hops (`traceparent`, `tracestate`): read from
//! NATS request headers and HTTP requests, continued by the command's span
//! (and so by every actor message it causes: they carry that span), kept
//! in the event envelope, and written into the headers of what the node
//! sends on — events published to JetStream, watch deliveries, requests
//! forwarded to another node, kv compute and origin requests, HTTP origin
//! requests.
//!
//! Decision: the libraries go through the OpenTelemetry API only — the
//! global text-map propagator (W3C trace context, installed with the SDK
//! by the binary) and `tracing-opentelemetry`'s span extension. Without an
//! installed pipeline (a library test, `telemetry` off) spans carry no
//! OpenTelemetry context: what arrived is still kept in the envelope and
//! passed on as it came ([`TraceContext`] from the request).

use cairn_events::v1::TraceContext;
use opentelemetry::{
    propagation::{Extractor, Injector},
    trace::TraceContextExt as _,
    Context,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header names of W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// See [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";
/// Longest header value taken (a `traceparent` is 55 bytes; `tracestate`
/// at most 512 by the W3C rules).
pub const HEADER_MAX_BYTES: usize = 512;

struct NatsHeaders<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(|v| v.as_str())
            .filter(|v| v.len() <= HEADER_MAX_BYTES)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

struct Fields<'a>(Vec<(&'static str, &'a str)>);

impl Extractor for Fields<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

#[derive(Default)]
struct Collect(Vec<(String, String)>);

impl Injector for Collect {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

fn extract(from: &dyn Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(from))
}

/// Makes `span` continue the trace of NATS `headers` (when they carry
/// one); without it `span` stays the root of a new trace.
pub fn continue_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    if let Some(headers) = headers {
        continue_from(span, extract(&NatsHeaders(headers)));
    }
}

/// Makes `span` continue the trace of HTTP `headers`.
pub fn continue_http(span: &tracing::Span, headers: &http::HeaderMap) {
    let fields = [TRACEPARENT, TRACESTATE]
        .into_iter()
        .filter_map(|k| {
            let v = headers.get(k)?.to_str().ok()?;
            (v.len() <= HEADER_MAX_BYTES).then_some((k, v))
        })
        .collect();
    continue_from(span, extract(&Fields(fields)));
}

/// Makes `span` a child of the span recorded in `trace` (an event's
/// envelope), when there is one.
pub fn continue_recorded(span: &tracing::Span, trace: Option<&TraceContext>) {
    if let Some(trace) = trace {
        continue_from(span, extract(&Fields(recorded_fields(trace))));
    }
}

fn recorded_fields(trace: &TraceContext) -> Vec<(&'static str, &str)> {
    let mut fields = vec![(TRACEPARENT, trace.traceparent.as_str())];
    if !trace.tracestate.is_empty() {
        fields.push((TRACESTATE, trace.tracestate.as_str()));
    }
    fields
}

fn continue_from(span: &tracing::Span, cx: Context) {
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace context of the current span, when it has one.
pub fn current() -> Option<TraceContext> {
    of(&tracing::Span::current())
}

/// The trace context of `span`, when it has one.
pub fn of(span: &tracing::Span) -> Option<TraceContext> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut collect = Collect::default();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut collect));
    let mut trace = TraceContext::default();
    for (k, v) in collect.0 {
        match k.as_str() {
            TRACEPARENT => trace.traceparent = v,
            TRACESTATE => trace.tracestate = v,
            _ => {}
        }
    }
    (!trace.traceparent.is_empty()).then_some(trace)
}

/// The header fields of `trace` (none when `None`).
pub fn fields(trace: Option<&TraceContext>) -> Vec<(&'static str, String)> {
    let Some(trace) = trace else {
        return Vec::new();
    };
    let mut out = vec![(TRACEPARENT, trace.traceparent.clone())];
    if !trace.tracestate.is_empty() {
        out.push((TRACESTATE, trace.tracestate.clone()));
    }
    out
}

/// Adds the current span's trace context to NATS `headers`.
pub fn inject_nats(headers: &mut async_nats::HeaderMap) {
    for (k, v) in fields(current().as_ref()) {
        headers.insert(k, v.as_str());
    }
}

/// Adds the current span's trace context to HTTP `headers`.
pub fn inject_http(headers: &mut http::HeaderMap) {
    for (k, v) in fields(current().as_ref()) {
        if let Ok(v) = http::HeaderValue::from_str(&v) {
            headers.insert(k, v);
        }
    }
}
