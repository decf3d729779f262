//! Tracing set-up (only binaries do this; libraries just emit spans).
//!
//! Text logs are coloured only when stderr is a terminal: a node run by
//! systemd, in a container or with its output piped to a file writes
//! plain text, no ANSI escape codes.

use std::io::IsTerminal as _;

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs a stderr subscriber: `RUST_LOG` wins over `level`; `json`
/// selects JSON lines. Calling it twice is harmless.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let registry = tracing_subscriber::registry().with(filter);
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

impl ExportClient {
    /// A client on the process's export runtime (started on first use).
    pub fn new() -> anyhow::Result<Self> {
        let runtime = match EXPORT_RUNTIME.get() {
            Some(r) => r,
            None => {
                let built = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("cairn-otlp")
                    .enable_all()
                    .build()?;
                EXPORT_RUNTIME.get_or_init(|| built)
            }
        };
        Ok(Self {
            client: reqwest::Client::builder().no_proxy().build()?,
            runtime: runtime.handle().clone(),
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
