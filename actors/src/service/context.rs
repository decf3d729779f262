//! What every endpoint handler shares: the service's limits
//! ([`ServiceConfig`]), its context ([`ServiceContext`]), a request as a
//! handler sees it ([`Incoming`]), and the helpers [`blocking`],
//! [`metadata`] and [`record_stream`]. A leaf of the service's endpoint
//! modules (re-exported by the parent, which routes to them).

use std::sync::Arc;

use cairn_storage::Store;

use super::{codec, pages};
use crate::ServiceError;

/// Limits of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Largest request body accepted, in bytes. Default: 65536.
    pub request_max_bytes: usize,
    /// Requests handled at once; more wait in NATS. Default: 256.
    pub max_concurrent_requests: usize,
    /// Version reported in `$SRV.INFO`. Default: the crate version.
    pub version: String,
    /// Bytes of rendered `pkgrev.list` pages kept (see [`pages`]).
    /// Default: 16 MiB.
    pub page_cache_bytes: usize,
    /// Limits of watches (queue size, watchers at most).
    pub watch: crate::watch::WatchConfig,
    /// Largest file of a package written through `pkgrev.create|update`,
    /// in bytes. Default: 512 KiB.
    pub resource_max_bytes: usize,
    /// The clock a request's `sync.schedule` is checked against (it must
    /// have a time within the horizon from now): the node's, so that it
    /// agrees with the SyncManagers'. Default: the system's.
    pub clock: Arc<dyn crate::timing::Clock>,
    /// Limits of the key-value cache (`kv.*`).
    pub kv: super::kv::KvServiceConfig,
    /// Longest wait of a request carrying `Cairn-Min-Seq` for this node to
    /// apply that seq (`cluster.read-wait`). Default: 5 s.
    pub read_wait: std::time::Duration,
    /// In a cluster: where commands go (see [`super::cluster`]).
    pub cluster: Option<super::cluster::ClusterRouting>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            request_max_bytes: 64 * 1024,
            max_concurrent_requests: 256,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            page_cache_bytes: 16 << 20,
            watch: crate::watch::WatchConfig::default(),
            resource_max_bytes: 512 * 1024,
            clock: Arc::new(crate::timing::SystemClock),
            kv: super::kv::KvServiceConfig::default(),
            read_wait: std::time::Duration::from_secs(5),
            cluster: None,
        }
    }
}

/// What every endpoint handler gets: a handle on the service's
/// [`ContextParts`] (fields read through it). Each request clones it —
/// twice, into its task and into its handler — so a clone is one reference
/// count, not a copy of the config's strings and the connection's channels
/// (that copy and its drop were about a tenth of the node thread's time in
/// a `kv.get` load).
#[derive(Debug, Clone)]
pub struct ServiceContext(Arc<ContextParts>);

impl ServiceContext {
    /// A context of `parts`.
    pub fn new(parts: ContextParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for ServiceContext {
    type Target = ContextParts;

    fn deref(&self) -> &ContextParts {
        &self.0
    }
}

/// What a [`ServiceContext`] holds.
#[derive(Debug)]
pub struct ContextParts {
    /// The node's store.
    pub store: Store,
    /// Limits.
    pub config: ServiceConfig,
    /// The connection the service answers on.
    pub client: async_nats::Client,
    /// Opens, closes and syncs repositories.
    pub registry: actix::Addr<crate::registry::Registry>,
    /// Rendered list pages.
    pub pages: Arc<pages::PageCache>,
    /// The node's watches.
    pub watch: crate::watch::WatchHub,
    /// The arbiter the service was started on: actors a request creates
    /// (watchers) run there (request tasks run outside actix's local set).
    pub arbiter: Option<actix::ArbiterHandle>,
    /// Writes with an idempotency key running now (one per key).
    pub in_flight: Arc<super::idempotency::InFlight>,
    /// Lifecycle commands running now, by `<namespace>/<revision>` (one
    /// per revision; another is a 409).
    pub revisions_busy: Arc<super::idempotency::InFlight>,
    /// The key-value cache (`None` only while it fails to start).
    pub kv: Option<crate::kv::KvNode>,
    /// The node's artifact cache.
    pub artifacts: Arc<crate::artifact::ArtifactCache>,
}

impl ContextParts {
    /// Largest reply body to send: the server's `max_payload` (read per
    /// request, as it is known only once connected and may change on
    /// reconnect) minus headroom for headers.
    pub fn reply_max_bytes(&self) -> usize {
        let max_payload = match self.client.server_info().max_payload {
            0 => 1024 * 1024, // NATS's default, until the server said otherwise
            n => n,
        };
        max_payload.saturating_sub(4 * 1024).max(1024)
    }
}

/// A request as an endpoint handler sees it: the format to answer in, the
/// body as JSON (a protobuf body is already mapped to its JSON form, so one
/// validation path serves both, see [`codec::request_json`]), and the
/// headers (for trace context).
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The format to answer in.
    pub format: codec::Format,
    /// The body as JSON.
    pub body: Vec<u8>,
    /// The body as it came (JSON or protobuf): what a command forwarded
    /// to another node sends on.
    pub payload: bytes::Bytes,
    /// The request's headers.
    pub headers: Option<async_nats::HeaderMap>,
    /// The idempotency key of a write that carries one (see
    /// [`super::idempotency`]); recorded in its events by [`metadata`].
    pub request: Option<super::idempotency::RequestKey>,
}

/// Runs blocking store work off the async threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ServiceError::internal(format!("request task failed: {e}")))?
}

/// The metadata of a command: a fresh correlation id, the principal and
/// the W3C trace context from the request's `traceparent`/`tracestate`
/// headers.
///
/// The principal is the NATS user that sent the request when the server
/// says so — it does for a request that reaches cairn's account through a
/// service import with `share: true`, in the `Nats-Request-Info` header
/// (`{"acc":…,"user":…}`), which clients cannot forge across accounts —
/// else the request's `"principal"` field, else `anonymous`.
pub fn metadata(request: &Incoming, principal: Option<String>) -> cairn_events::envelope::Metadata {
    let user = request
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Request-Info"))
        .filter(|v| v.as_str().len() <= 8192)
        .and_then(|v| serde_json::from_str::<serde_json::Value>(v.as_str()).ok())
        .and_then(|info| Some(info.get("user")?.as_str()?.to_owned()))
        .filter(|user| !user.is_empty());
    let principal = user.or(principal);
    let header = |name: &str| {
        request
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
            .filter(|v| !v.is_empty() && v.len() <= 512 && !v.chars().any(char::is_control))
    };
    // The command's own span when a pipeline gives it a context (a child
    // of the request's), else the request's context as it came.
    let trace = crate::trace::current().or_else(|| {
        header("traceparent").map(|traceparent| cairn_events::v1::TraceContext {
            traceparent,
            tracestate: header("tracestate").unwrap_or_default(),
        })
    });
    let principal = principal
        .filter(|p| !p.is_empty() && p.len() <= 256 && !p.chars().any(char::is_control))
        .unwrap_or_default();
    let (request_id, request_digest) = request
        .request
        .as_ref()
        .map(|key| (key.id.clone(), key.digest.clone()))
        .unwrap_or_default();
    let metadata = cairn_events::envelope::Metadata {
        principal,
        trace,
        request_id,
        request_digest,
        ..Default::default()
    }
    .normalized();
    let span = tracing::Span::current();
    span.record("principal", metadata.principal.as_str());
    span.record("correlation_id", metadata.correlation_id.as_str());
    metadata
}

/// Records the stream a command concerns (`repo/<namespace>/<name>`) on
/// its `command` span.
pub fn record_stream(namespace: &str, name: &str) {
    tracing::Span::current().record(
        "stream",
        tracing::field::display(format_args!("repo/{namespace}/{name}")),
    );
}
