//! Tracing set-up (only binaries do this; libraries just emit spans), and
//! what the OTLP exporters share: the endpoint and resource in force, and
//! the HTTP client (see [`crate::traces`] and [`crate::metrics`]).
//!
//! Text logs are coloured only when stderr is a terminal: a node run by
//! systemd, in a container or with its output piped to a file writes
//! plain text, no ANSI escape codes.

use std::io::IsTerminal as _;

use tracing_subscriber::{
    filter::{LevelFilter, Targets},
    fmt,
    prelude::*,
    reload, EnvFilter, Registry,
};

/// The `tracing` layer that hands spans to OpenTelemetry: absent until a
/// trace pipeline is installed ([`set_trace_layer`]).
type TraceLayer = Option<
    tracing_opentelemetry::OpenTelemetryLayer<Registry, opentelemetry_sdk::trace::SdkTracer>,
>;

/// The two handles [`init`] keeps: the OpenTelemetry layer, and its own
/// filter (nothing until traces are exported, then [`trace_targets`]).
struct TraceHandles {
    layer: reload::Handle<TraceLayer, Registry>,
    filter: reload::Handle<Targets, Registry>,
}

static TRACE_LAYER: std::sync::OnceLock<TraceHandles> = std::sync::OnceLock::new();

/// What spans are exported: INFO and above (every command, actor, append,
/// publish span), nothing of the NATS client's internals. Decision: a
/// filter of its own, not `log.level`, so the log's verbosity never
/// decides which spans a trace has.
pub fn trace_targets() -> Targets {
    Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("async_nats", LevelFilter::OFF)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("reqwest", LevelFilter::OFF)
}

/// What the OpenTelemetry layer is shown: spans, and events at WARN and
/// above (they become span events). Decision: INFO and DEBUG log lines stay
/// in the log only — turning each into a span event costs more than the
/// span itself on the hot paths.
fn spans_and_warnings(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() || *metadata.level() <= tracing::Level::WARN
}

/// Makes the subscriber hand spans to `tracer`: through the layer [`init`]
/// installed, or, in a process that installed none (an in-process test
/// node), a subscriber of that layer alone.
pub fn set_trace_layer(tracer: opentelemetry_sdk::trace::SdkTracer) {
    let _ = TRACER.set(tracer.clone());
    let layer = otel_layer(tracer);
    match TRACE_LAYER.get() {
        Some(handles) => {
            let reloaded = handles
                .layer
                .reload(Some(layer))
                .and_then(|()| handles.filter.reload(trace_targets()));
            if let Err(e) = reloaded {
                tracing::warn!(error = %e, "trace export not enabled");
            }
        }
        None => {
            let _ = tracing_subscriber::registry()
                .with(
                    Some(layer)
                        .with_filter(tracing_subscriber::filter::filter_fn(spans_and_warnings))
                        .with_filter(trace_targets()),
                )
                .try_init();
        }
    }
}

/// The tracer [`set_trace_layer`] installed.
static TRACER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracer> =
    std::sync::OnceLock::new();

/// The layer handing `tracing` spans to OpenTelemetry, set for what a
/// span costs on the hot path: no source location, thread or busy/idle
/// attributes, and no OpenTelemetry context activation on every enter
/// (an `attach` and detach on each poll of an instrumented future):
/// cairn reads a span's trace context through the span itself
/// ([`cairn_actors::trace`]), and a span's parent is found through the
/// `tracing` context, so nothing needs `opentelemetry::Context::current`.
fn otel_layer(
    tracer: opentelemetry_sdk::trace::SdkTracer,
) -> tracing_opentelemetry::OpenTelemetryLayer<Registry, opentelemetry_sdk::trace::SdkTracer> {
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
}

/// Turns the export of spans off or on again, once [`set_trace_layer`]
/// installed it through [`init`]'s slot (for `cairn bench telemetry`,
/// which compares both in one run); false when there is no such slot.
/// Off, the spans are still created (as on a node logging at `info`),
/// only not handed to OpenTelemetry.
pub fn set_trace_export(on: bool) -> bool {
    let (Some(handles), Some(tracer)) = (TRACE_LAYER.get(), TRACER.get()) else {
        return false;
    };
    let layer = on.then(|| otel_layer(tracer.clone()));
    handles.layer.reload(layer).is_ok()
}

/// Installs a stderr subscriber: `RUST_LOG` wins over `level`; `json`
/// selects JSON lines. Calling it twice is harmless. Beside the log it
/// holds an empty slot for the OpenTelemetry layer (filtered on its own,
/// see [`trace_targets`]), filled when a node installs a trace pipeline.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (trace, layer) = reload::Layer::new(
        None::<
            tracing_opentelemetry::OpenTelemetryLayer<
                Registry,
                opentelemetry_sdk::trace::SdkTracer,
            >,
        >,
    );
    let (trace_filter, filter_handle) = reload::Layer::new(Targets::new());
    let _ = TRACE_LAYER.set(TraceHandles {
        layer,
        filter: filter_handle,
    });
    let registry = tracing_subscriber::registry().with(
        trace
            .with_filter(tracing_subscriber::filter::filter_fn(spans_and_warnings))
            .with_filter(trace_filter),
    );
    let _ = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()
    };
}

/// The OTLP endpoint in force: `OTEL_EXPORTER_OTLP_ENDPOINT` when set
/// (and not empty), else `telemetry.otlp-endpoint`; `None`: no export.
pub fn otlp_endpoint(config: &crate::config::TelemetrySection) -> Option<String> {
    let from_env = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    let endpoint = if from_env.trim().is_empty() {
        config.otlp_endpoint.trim().to_owned()
    } else {
        from_env.trim().to_owned()
    };
    (!endpoint.is_empty()).then(|| endpoint.trim_end_matches('/').to_owned())
}

/// The resource of everything exported: `service.name` from
/// `OTEL_SERVICE_NAME`, else `telemetry.service-name`.
pub fn resource(config: &crate::config::TelemetrySection) -> opentelemetry_sdk::Resource {
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| config.service_name.clone());
    opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(name)
        .build()
}

/// The OTLP/HTTP (protobuf) metrics exporter to `{endpoint}/v1/metrics`.
pub fn otlp_metrics(
    config: &crate::config::TelemetrySection,
    endpoint: &str,
) -> anyhow::Result<opentelemetry_otlp::MetricExporter> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    Ok(opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(format!("{endpoint}/v1/metrics"))
        .with_timeout(config.export_timeout)
        .with_http_client(ExportClient::new()?)
        .build()?)
}

/// The HTTP client of the OTLP exporters: the workspace's reqwest, its
/// requests run on a one-thread runtime of its own, so an export works
/// from the SDK's export threads (which run no runtime) and never from
/// the node's.
#[derive(Debug, Clone)]
pub struct ExportClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

static EXPORT_RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();

/// The process's export runtime (one worker thread, started on first
/// use): OTLP requests run there, never on the node's threads.
pub fn export_runtime() -> tokio::runtime::Handle {
    EXPORT_RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("cairn-otlp")
                .enable_all()
                .build()
                .expect("the OTLP export runtime starts")
        })
        .handle()
        .clone()
}

impl ExportClient {
    /// A client on the process's export runtime.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder().no_proxy().build()?,
            runtime: export_runtime(),
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<bytes::Bytes>,
    ) -> Result<opentelemetry_http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = client.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            let mut out = opentelemetry_http::Response::new(body);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok::<_, reqwest::Error>(out)
        });
        Ok(sent.await??)
    }
}
