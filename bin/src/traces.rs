//! Trace export: the OpenTelemetry SDK's tracer provider behind the
//! `tracing` subscriber (`tracing-opentelemetry`), exporting over
//! OTLP/HTTP (protobuf) to `{endpoint}/v1/traces` when an endpoint is
//! configured (`OTEL_EXPORTER_OTLP_ENDPOINT`, else
//! `telemetry.otlp-endpoint`), sampled as `OTEL_TRACES_SAMPLER` /
//! `OTEL_TRACES_SAMPLER_ARG` say, else `telemetry.traces-sampler-ratio`
//! (parent-based: a request that carries a `traceparent` follows its
//! caller's decision).
//!
//! Decision: the span processor is [`BoundedExport`], not the SDK's
//! `BatchSpanProcessor`, because that one keeps its count of dropped spans
//! to itself: a command only hands its ended span to a bounded queue
//! (`telemetry.export-queue-max-spans`; full → the span is dropped and
//! counted in `cairn_telemetry_spans_dropped_total{reason="queue_full"}`),
//! and one export thread sends batches of up to
//! `telemetry.export-batch-max-spans` every [`EXPORT_INTERVAL`] — a span
//! never wakes it (that would be a futex call and a context switch on the
//! command's path), a full batch or a flush does (a batch whose export
//! fails or times out after `telemetry.export-timeout` is dropped and
//! counted with `reason="export_failed"`). A collector that is down or
//! blackholed never blocks or slows a command.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use opentelemetry::{trace::TracerProvider as _, KeyValue};
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor},
    Resource,
};
use tracing::warn;

use crate::config::TelemetrySection;

/// How often the export thread sends what it has, at the latest.
pub const EXPORT_INTERVAL: Duration = Duration::from_millis(200);

/// Counters of the export (also in the metrics registry).
#[derive(Debug, Default)]
pub struct ExportCounters {
    /// Spans handed to the exporter's queue.
    pub queued: AtomicU64,
    /// Spans the receiver accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Spans dropped because their export failed or timed out.
    pub dropped_export_failed: AtomicU64,
}

enum Item {
    Span(Box<SpanData>),
    Flush(Sender<()>),
}

/// The bounded span processor (see the module docs).
#[derive(Debug)]
pub struct BoundedExport {
    tx: Sender<Item>,
    /// Wakes the export thread before its interval: a full batch queued,
    /// or a flush asked for. A span alone never wakes it (a wake is a
    /// futex call and a context switch on the command's path).
    wake: Sender<()>,
    counters: Arc<ExportCounters>,
    exporter: Option<opentelemetry_otlp::SpanExporter>,
    config: (usize, Duration),
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    rx: Receiver<Item>,
    woken: Receiver<()>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Item")
    }
}

impl BoundedExport {
    fn new(
        exporter: opentelemetry_otlp::SpanExporter,
        queue_max_spans: usize,
        batch_max_spans: usize,
        timeout: Duration,
        counters: Arc<ExportCounters>,
    ) -> Self {
        let (tx, rx) = bounded(queue_max_spans);
        let (wake, woken) = bounded(1);
        Self {
            tx,
            wake,
            woken,
            counters,
            exporter: Some(exporter),
            config: (batch_max_spans, timeout),
            thread: std::sync::Mutex::new(None),
            rx,
        }
    }

    /// Starts the export thread (after the provider handed the resource).
    fn start(&mut self) {
        let Some(exporter) = self.exporter.take() else {
            return;
        };
        let (rx, woken, counters, (batch_max, timeout)) = (
            self.rx.clone(),
            self.woken.clone(),
            self.counters.clone(),
            self.config,
        );
        let thread = std::thread::Builder::new()
            .name("cairn-trace-export".to_owned())
            .spawn(move || export_loop(exporter, rx, woken, counters, batch_max, timeout));
        match thread {
            Ok(t) => *self.thread.lock().expect("thread lock") = Some(t),
            Err(e) => warn!(error = %e, "trace export thread not started"),
        }
    }
}

/// The export thread: sleeps until the next interval or a wake, then
/// sends everything queued, in batches of at most `batch_max` spans.
fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    rx: Receiver<Item>,
    woken: Receiver<()>,
    counters: Arc<ExportCounters>,
    batch_max: usize,
    timeout: Duration,
) {
    let runtime = crate::telemetry::export_runtime();
    let export = |spans: Vec<SpanData>| {
        let n = spans.len() as u64;
        let exported =
            runtime.block_on(async { tokio::time::timeout(timeout, exporter.export(spans)).await });
        match exported {
            Ok(Ok(())) => {
                counters.exported.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                counters
                    .dropped_export_failed
                    .fetch_add(n, Ordering::Relaxed);
                tracing::debug!(error = %e, spans = n, "trace export failed");
            }
            Err(_) => {
                counters
                    .dropped_export_failed
                    .fetch_add(n, Ordering::Relaxed);
                tracing::debug!(spans = n, "trace export timed out");
            }
        }
    };
    let mut deadline = std::time::Instant::now() + EXPORT_INTERVAL;
    loop {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        let closed = matches!(
            woken.recv_timeout(wait),
            Err(RecvTimeoutError::Disconnected)
        );
        if std::time::Instant::now() >= deadline {
            deadline = std::time::Instant::now() + EXPORT_INTERVAL;
        }
        // Everything queued now (bounded: the queue holds at most
        // `telemetry.export-queue-max-spans`, and what arrives while this
        // drains waits for the next turn).
        let mut batch: Vec<SpanData> = Vec::with_capacity(batch_max.min(rx.len()));
        let mut flushes: Vec<Sender<()>> = Vec::new();
        for _ in 0..rx.len() {
            match rx.try_recv() {
                Ok(Item::Span(span)) => {
                    batch.push(*span);
                    if batch.len() >= batch_max {
                        export(std::mem::replace(&mut batch, Vec::with_capacity(batch_max)));
                    }
                }
                Ok(Item::Flush(done)) => flushes.push(done),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            export(batch);
        }
        for done in flushes {
            let _ = done.send(());
        }
        if closed {
            let _ = exporter.shutdown();
            return;
        }
    }
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.tx.try_send(Item::Span(Box::new(span))) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                if self.tx.len() >= self.config.0 {
                    let _ = self.wake.try_send(());
                }
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (done, wait) = bounded(1);
        self.tx
            .send_timeout(Item::Flush(done), self.config.1)
            .map_err(|_| OTelSdkError::Timeout(self.config.1))?;
        let _ = self.wake.try_send(());
        wait.recv_timeout(self.config.1 * 2)
            .map_err(|_| OTelSdkError::Timeout(self.config.1 * 2))
    }

    /// Sends what is queued (bounded by the export timeout, not by
    /// `timeout`: the export thread owns the exporter); the thread ends
    /// with the process.
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(exporter) = self.exporter.as_mut() {
            exporter.set_resource(resource);
        }
        self.start();
    }
}

/// The installed trace pipeline.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
    /// Its counters.
    pub counters: Arc<ExportCounters>,
}

static TRACES: OnceLock<Traces> = OnceLock::new();

/// The installed pipeline, if any.
pub fn installed() -> Option<&'static Traces> {
    TRACES.get()
}

impl Traces {
    /// Sends every queued span now (bounded by the export timeout).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::debug!(error = %e, "trace flush");
        }
    }
}

/// The sampler `OTEL_TRACES_SAMPLER` (and `_ARG`) name, else
/// parent-based with `ratio` of root traces.
pub fn sampler(ratio: f64) -> Sampler {
    let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG")
        .ok()
        .and_then(|a| a.trim().parse::<f64>().ok())
        .filter(|r| (0.0..=1.0).contains(r));
    let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
    let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
    match name.trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(arg.unwrap_or(1.0)),
        "parentbased_always_on" => parent_based(Sampler::AlwaysOn),
        "parentbased_always_off" => parent_based(Sampler::AlwaysOff),
        "parentbased_traceidratio" => parent_based(Sampler::TraceIdRatioBased(arg.unwrap_or(1.0))),
        "" => parent_based(Sampler::TraceIdRatioBased(ratio)),
        other => {
            warn!(
                sampler = other,
                "OTEL_TRACES_SAMPLER not understood; using telemetry.traces-sampler-ratio"
            );
            parent_based(Sampler::TraceIdRatioBased(ratio))
        }
    }
}

/// Installs the trace pipeline exporting to `endpoint` (once per process;
/// later calls keep the first): the W3C propagator, the provider, and the
/// `tracing` layer (see [`crate::telemetry::set_trace_layer`]).
pub fn install(config: &TelemetrySection, endpoint: &str) -> anyhow::Result<&'static Traces> {
    if let Some(t) = TRACES.get() {
        return Ok(t);
    }
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .with_timeout(config.export_timeout)
        .with_http_client(crate::telemetry::ExportClient::new()?)
        .build()?;
    let counters = Arc::new(ExportCounters::default());
    let processor = BoundedExport::new(
        exporter,
        config.export_queue_max_spans,
        config.export_batch_max_spans,
        config.export_timeout,
        counters.clone(),
    );
    let provider = SdkTracerProvider::builder()
        .with_resource(crate::telemetry::resource(config))
        .with_sampler(sampler(config.traces_sampler_ratio))
        .with_span_processor(processor)
        .build();
    let tracer = provider.tracer("cairn");
    opentelemetry::global::set_tracer_provider(provider.clone());
    crate::telemetry::set_trace_layer(tracer);
    let traces = TRACES.get_or_init(|| Traces { provider, counters });
    register_counters(traces.counters.clone());
    Ok(traces)
}

fn register_counters(counters: Arc<ExportCounters>) {
    let meter = opentelemetry::global::meter("cairn");
    let c = counters.clone();
    meter
        .u64_observable_counter("cairn_telemetry_spans_dropped")
        .with_description("spans not exported, by reason (queue_full, export_failed)")
        .with_callback(move |o| {
            o.observe(
                c.dropped_queue_full.load(Ordering::Relaxed),
                &[KeyValue::new("reason", "queue_full")],
            );
            o.observe(
                c.dropped_export_failed.load(Ordering::Relaxed),
                &[KeyValue::new("reason", "export_failed")],
            );
        })
        .build();
    meter
        .u64_observable_counter("cairn_telemetry_spans_exported")
        .with_description("spans the OTLP receiver accepted")
        .with_callback(move |o| o.observe(counters.exported.load(Ordering::Relaxed), &[]))
        .build();
}
