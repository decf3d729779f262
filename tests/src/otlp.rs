//! [`OtlpReceiver`]: a real OTLP/HTTP receiver on loopback (axum), decoding
//! what a node exports with the `opentelemetry-proto` types — `POST
//! /v1/traces` (`ExportTraceServiceRequest`, protobuf) and `POST
//! /v1/metrics` — keeping every span; and [`Blackhole`], a port that takes
//! connections and never answers (a collector that hangs).

use std::{net::SocketAddr, sync::Arc};

use axum::{body::Bytes, extract::State, http::StatusCode, response::IntoResponse, routing::post};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    trace::v1::Span,
};
use parking_lot::Mutex;
use prost::Message as _;

/// A span as received: its ids in hex, its name, its attributes as text.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// Attributes, `key=value` as text.
    pub attributes: Vec<(String, String)>,
    /// `service.name` of the resource that sent it.
    pub service: String,
}

impl ReceivedSpan {
    /// The attribute `key`, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    requests: Mutex<u64>,
    changed: tokio::sync::Notify,
}

/// The receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn text(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

async fn traces(State(received): State<Arc<Received>>, body: Bytes) -> impl IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut spans = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| a.value.as_ref())
            .map(text)
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(to_received(span, &service));
            }
        }
    }
    received.spans.lock().extend(spans);
    *received.requests.lock() += 1;
    received.changed.notify_waiters();
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn to_received(span: Span, service: &str) -> ReceivedSpan {
    ReceivedSpan {
        trace_id: hex::encode(&span.trace_id),
        span_id: hex::encode(&span.span_id),
        parent_span_id: hex::encode(&span.parent_span_id),
        name: span.name,
        attributes: span
            .attributes
            .iter()
            .map(|a| {
                (
                    a.key.clone(),
                    a.value.as_ref().map(text).unwrap_or_default(),
                )
            })
            .collect(),
        service: service.to_owned(),
    }
}

impl OtlpReceiver {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the OTLP receiver");
        let addr = listener.local_addr().expect("its address");
        let received = Arc::new(Received::default());
        let app = axum::Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/metrics", post(|| async { StatusCode::OK }))
            .with_state(received.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            received,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`: the base a node's
    /// `telemetry.otlp-endpoint` takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.spans.lock().clone()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        *self.received.requests.lock()
    }

    /// Waits (at most `timeout`) until `done` holds of the spans received;
    /// panics naming `what` and what was received otherwise.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: std::time::Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.received.changed.notified();
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let names: Vec<_> = spans.iter().map(|s| s.name.as_str()).collect();
                panic!("timed out after {timeout:?} waiting for {what}; received {names:?}");
            }
        }
    }
}

/// A loopback port that accepts connections and never answers them (a
/// blackholed collector); dropped, it closes them.
#[derive(Debug)]
pub struct Blackhole {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Blackhole {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            // Bounded: a test opens few connections.
            while held.len() < 1024 {
                match listener.accept().await {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => return,
                }
            }
        });
        Self { addr, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
