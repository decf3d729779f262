//! The node's HTTP face (axum on hyper, one listener per node,
//! `http.listen`):
//!
//! - `/u/<upstream>/<path>?<query>` — the artifact cache's reverse proxy in
//!   front of the `[[artifact.upstreams]]` entry `<upstream>`: `GET` and
//!   `HEAD` through the cache, every other method forwarded with its body,
//!   status and header fields (and invalidating when unsafe and
//!   successful); unknown fields pass through, hop-by-hop fields do not.
//! - `GET|HEAD /v1/artifacts?url=<absolute http(s) URL>` — the URL-first
//!   lookup for any host on `artifact.allow` (redirects followed up to
//!   `artifact.redirects-max`, each to an allowed host).
//! - `/healthz` (the process answers), `/readyz` (each readiness check of
//!   the node by name, JSON; 200 when all pass, 503 naming the failing
//!   ones), `/metrics` (the node's one metrics registry, Prometheus text
//!   format) — both read through the [`Operations`] the binary hands in,
//!   since the registry and the checks are wired there.
//!
//! Errors are JSON `{"code": …, "message": …}` with the status of the code
//! (400 bad input naming the field, 404 unknown upstream, 502 origin
//! failed, 504 origin timeout or `only-if-cached`). A download that breaks
//! after its head was sent cuts the connection (the client sees a short
//! body, never a complete-looking one).

use std::{future::IntoFuture, net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{FromRef, Request, State},
    http::{HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get},
    Router,
};
use tracing::{info, warn, Instrument as _};

use crate::artifact::{
    cache::{stored_body, CacheRequest, Served, ServedBody},
    key::{self, Target},
    ArtifactCache, ArtifactError,
};

/// How long open connections may finish when the listener stops.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// One readiness check: its name, whether it passes, and why not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// `store`, `nats`, `views`, `cluster`.
    pub name: &'static str,
    /// It passes.
    pub ok: bool,
    /// What was found (why it fails, or the position reached).
    pub detail: String,
}

/// What `/metrics` and `/readyz` read: wired by the binary (the metrics
/// registry and the node's parts live there).
#[derive(Clone)]
pub struct Operations {
    /// The Prometheus text of every metric.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// The readiness checks, evaluated now.
    pub readiness: Arc<dyn Fn() -> Vec<Check> + Send + Sync>,
}

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operations").finish_non_exhaustive()
    }
}

impl Default for Operations {
    /// No metrics, always ready.
    fn default() -> Self {
        Self {
            metrics: Arc::new(String::new),
            readiness: Arc::new(Vec::new),
        }
    }
}

/// The router's state: the artifact cache and the operations endpoints.
#[derive(Debug, Clone)]
struct Face {
    cache: Arc<ArtifactCache>,
    operations: Operations,
}

impl FromRef<Face> for Arc<ArtifactCache> {
    fn from_ref(face: &Face) -> Self {
        face.cache.clone()
    }
}

/// The router of the HTTP face.
pub fn router(cache: Arc<ArtifactCache>, operations: Operations) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/artifacts", get(lookup).head(lookup))
        .route("/u/{*rest}", any(proxy))
        .with_state(Face { cache, operations })
}

/// `/readyz`: `{"ready": bool, "checks": [{"name", "ok", "detail"}…],
/// "failing": [names]}`, 200 when every check passes, else 503.
async fn readyz(State(face): State<Face>) -> Response {
    let readiness = face.operations.readiness.clone();
    let checks = tokio::task::spawn_blocking(move || readiness())
        .await
        .unwrap_or_else(|e| {
            vec![Check {
                name: "node",
                ok: false,
                detail: format!("readiness checks failed: {e}"),
            }]
        });
    let failing: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    let ready = failing.is_empty();
    let body = serde_json::json!({"ready": ready, "checks": checks, "failing": failing});
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, format!("{body}\n")).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

/// A running listener, served by a runtime of its own (so HTTP traffic
/// does not queue behind the node's actors on their arbiter); dropping it
/// does not stop it ([`HttpServer::stop`] does).
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Worker threads of the HTTP listener's runtime.
pub const HTTP_WORKER_THREADS: usize = 2;

impl HttpServer {
    /// Binds `listen` and serves `cache` on a runtime of
    /// [`HTTP_WORKER_THREADS`] threads of its own.
    pub async fn start(
        listen: SocketAddr,
        cache: Arc<ArtifactCache>,
        operations: Operations,
    ) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(HTTP_WORKER_THREADS)
            .thread_name("cairn-http")
            .enable_all()
            .build()?;
        let app = router(cache, operations);
        let thread = std::thread::Builder::new()
            .name("cairn-http".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            warn!(error = %e, "http listener failed");
                            return;
                        }
                    };
                    // Responses are written as head, then body: without
                    // TCP_NODELAY a small body waits for the head's ACK.
                    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                        if let Err(e) = tcp.set_nodelay(true) {
                            tracing::debug!(error = %e, "TCP_NODELAY not set");
                        }
                    });
                    let mut asked = stopped.clone();
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = asked.wait_for(|s| *s).await;
                    });
                    // Open connections get STOP_GRACE once asked to stop.
                    let mut asked = stopped;
                    let grace = async move {
                        let _ = asked.wait_for(|s| *s).await;
                        tokio::time::sleep(STOP_GRACE).await;
                    };
                    tokio::select! {
                        served = serve.into_future() => {
                            if let Err(e) = served {
                                warn!(error = %e, "http listener failed");
                            }
                        }
                        () = grace => warn!("http connections cut after the grace period"),
                    }
                });
                runtime.shutdown_timeout(STOP_GRACE);
            })?;
        info!(%addr, "http listener started");
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections; open ones get [`STOP_GRACE`] to finish,
    /// then are cut.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout(STOP_GRACE * 2, joined).await.is_err() {
                warn!("http listener still stopping");
            }
        }
    }
}

fn error_response(e: &ArtifactError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({"code": e.status(), "message": e.to_string()}).to_string();
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if matches!(e, ArtifactError::NotCached) {
        response.headers_mut().insert(
            "cache-status",
            HeaderValue::from_static("cairn; fwd=uri-miss; detail=only-if-cached"),
        );
    }
    response
}

fn into_response(cache: &ArtifactCache, served: Served) -> Response {
    let body = match served.body {
        ServedBody::Empty => Body::empty(),
        ServedBody::Bytes(bytes) => Body::from(bytes),
        ServedBody::Stored { digest, .. } => {
            Body::from_stream(stored_body(cache.store().clone(), digest))
        }
        ServedBody::Stream(stream) => Body::from_stream(stream),
    };
    let mut response = Response::new(body);
    *response.status_mut() = served.status;
    *response.headers_mut() = served.headers;
    response
}

/// `/metrics`: the node's registry in the Prometheus text format
/// (collected off the listener's threads: observable instruments read the
/// store).
async fn metrics(State(face): State<Face>) -> Response {
    let render = face.operations.metrics.clone();
    let text = tokio::task::spawn_blocking(move || render())
        .await
        .unwrap_or_default();
    let mut response = text.into_response();
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn lookup(State(cache): State<Arc<ArtifactCache>>, request: Request) -> Response {
    let query = request.uri().query().unwrap_or_default().to_owned();
    let url = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "url")
        .map(|(_, v)| v.into_owned());
    let Some(url) = url else {
        return error_response(&ArtifactError::bad_url(
            "url",
            "the query parameter is required",
        ));
    };
    let target = match key::parse_target("url", &url, &cache.config().allow) {
        Ok(Target::Remote(url)) => url,
        Ok(Target::Local(_)) => {
            return error_response(&ArtifactError::bad_url(
                "url",
                "file URLs and paths are resolved by cairn.v1.artifact.get, not over HTTP",
            ))
        }
        Err(e) => return error_response(&e),
    };
    let (parts, _) = request.into_parts();
    let span = tracing::info_span!(parent: None, "http.request", route = "/v1/artifacts", method = %parts.method);
    crate::trace::continue_http(&span, &parts.headers);
    let served = cache
        .serve(CacheRequest {
            method: parts.method,
            url: target,
            headers: parts.headers,
            body: None,
            proxy: false,
            stream: true,
            upstream: String::new(),
        })
        .instrument(span)
        .await;
    match served {
        Ok(s) => into_response(&cache, s),
        Err(e) => error_response(&e),
    }
}

async fn proxy(State(cache): State<Arc<ArtifactCache>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let rest = path.strip_prefix("/u/").unwrap_or_default();
    let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(upstream) = cache.config().upstreams.iter().find(|u| u.name == name) else {
        return error_response(&ArtifactError::UnknownUpstream {
            name: name.to_owned(),
        });
    };
    let target = match key::proxy_target(upstream, rest, request.uri().query()) {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    let upstream = upstream.name.clone();
    let (parts, body) = request.into_parts();
    let body = (parts.method != Method::GET && parts.method != Method::HEAD)
        .then(|| reqwest::Body::wrap_stream(body.into_data_stream()));
    let span =
        tracing::info_span!(parent: None, "http.request", route = "/u", method = %parts.method);
    crate::trace::continue_http(&span, &parts.headers);
    let served = cache
        .serve(CacheRequest {
            method: parts.method,
            url: target,
            headers: parts.headers,
            body,
            proxy: true,
            stream: true,
            upstream,
        })
        .instrument(span)
        .await;
    match served {
        Ok(s) => into_response(&cache, s),
        Err(e) => error_response(&e),
    }
}
