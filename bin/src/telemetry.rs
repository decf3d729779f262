//! Tracing set-up (only binaries do this; libraries just emit spans), and
//! what the OTLP exporters share: the endpoint and resource in force, and
//! the HTTP client (see [`crate::traces`] and [`crate::metrics`]).
//!
//! Text logs are coloured only when stderr is a terminal: a node run by
//! systemd, in a container or with its output piped to a file writes
//! plain text, no ANSI escape codes.

use std::io::IsTerminal as _;

use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter, Registry};

/// The `tracing` layer that hands spans to OpenTelemetry: absent until a
/// trace pipeline is installed ([`set_trace_layer`]).
type TraceLayer =
    Option<tracing_opentelemetry::OpenTelemetryLayer<Registry, opentelemetry_sdk::trace::SdkTracer>>;

static TRACE_LAYER: std::sync::OnceLock<reload::Handle<TraceLayer, Registry>> =
    std::sync::OnceLock::new();

/// Makes the subscriber hand spans to `tracer`: through the layer [`init`]
/// installed, or, in a process that installed none (an in-process test
/// node), a subscriber of that layer alone.
pub fn set_trace_layer(tracer: opentelemetry_sdk::trace::SdkTracer) {
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_tracked_inactivity(false);
    match TRACE_LAYER.get() {
        Some(handle) => {
            if let Err(e) = handle.reload(Some(layer)) {
                tracing::warn!(error = %e, "trace export not enabled");
            }
        }
        None => {
            let filter = EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
            let _ = tracing_subscriber::registry()
                .with(Some(layer))
                .with(filter)
                .try_init();
        }
    }
}

/// Installs a stderr subscriber: `RUST_LOG` wins over `level`; `json`
/// selects JSON lines. Calling it twice is harmless. It holds an empty
/// slot for the OpenTelemetry layer, filled when a node installs a trace
/// pipeline.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (trace, handle) = reload::Layer::new(None::<
        tracing_opentelemetry::OpenTelemetryLayer<Registry, opentelemetry_sdk::trace::SdkTracer>,
    >);
    let _ = TRACE_LAYER.set(handle);
    let registry = tracing_subscriber::registry().with(trace).with(filter);
    let _ = if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
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
