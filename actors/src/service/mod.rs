//! The `cairn` NATS micro service.
//!
//! Registered with the NATS "micro" services protocol, so `$SRV.PING`,
//! `$SRV.INFO` and `$SRV.STATS` answer. Endpoints are `cairn.v1.<area>.<verb>`
//! and share the queue group `cairn`, so several nodes split the requests.
//!
//! Payloads are JSON unless the request carries
//! `Content-Type: application/protobuf`. A failed request is answered with
//! the headers `Nats-Service-Error` (the message) and
//! `Nats-Service-Error-Code` (HTTP-like code) and a body
//! `{"code": …, "message": …}` (or `ErrorReply` in protobuf).
//!
//! # Layout
//! - [`artifact`] — `cairn.v1.artifact.get|read|evict|list|stats`: the
//!   artifact cache over NATS (its counters also in `$SRV.STATS`, endpoint
//!   `artifact-stats`); `artifact.record`, between cluster nodes.
//! - [`codec`] — formats, the size limit, replies and error replies.
//! - [`context`] — what every handler shares: [`ServiceConfig`],
//!   [`ServiceContext`] (a handle on [`ContextParts`]), [`Incoming`], and
//!   the helpers [`blocking`],
//!   [`metadata`], [`record_stream`]. A leaf (re-exported here), so the
//!   endpoint modules never import this module, which routes to them.
//! - [`fields`] — strict JSON field parsing with errors that name the field.
//! - [`idempotency`] — the `Cairn-Request-Id` header: a retried write is
//!   answered from what its first attempt applied, and appends nothing.
//! - [`kv`] — `cairn.v1.kv.*`: the key-value cache (set, get, exists,
//!   delete, delete_by_pattern|namespace|tags, clear, keys, stats,
//!   cleanup, configure, get_or_compute, key_for) and its background
//!   tasks (expiry sweeper, WAL flusher of `batched`, compactor).
//! - [`log`] — `cairn.v1.log.read`.
//! - [`repo`] — `cairn.v1.repo.register|unregister|get|list|sync|update`.
//! - [`pkgrev`] — `cairn.v1.pkgrev.list|get`.
//! - [`resources`] — `cairn.v1.pkgrev.resources`: a revision's files in
//!   pages that each fit the server's `max_payload`, large files cut into
//!   pieces; the rule that bounds writes and reads alike.
//! - [`lifecycle`] — `cairn.v1.pkgrev.create|update|propose|reject|approve|
//!   propose-delete|withdraw-delete|delete`. Their bodies may be as large
//!   as the server's `max_payload` (a package's files travel in them; see
//!   [`resources`] for the rule).
//! - [`pages`] — rendered `pkgrev.list` pages kept for clients that list
//!   the same thing again.
//! - [`validate`] — names, branches, directories.
//! - [`watch`] — `cairn.v1.watch.start|stop` (the watches themselves live
//!   in [`crate::watch`]). The number of live watchers is the `watchers`
//!   field of the `watch-start` endpoint's `data` in `$SRV.STATS`.

pub mod artifact;
pub mod cluster;
pub mod codec;
pub mod context;
pub mod fields;
pub mod idempotency;
pub mod kv;
pub mod lifecycle;
pub mod log;
pub mod pages;
pub mod pkgrev;
pub mod repo;
pub mod resources;
pub mod validate;
pub mod watch;

use std::sync::Arc;

use async_nats::service::{self, ServiceExt};
pub use cairn_events::revision::timestamp_json;
use cairn_storage::Store;
use futures::{FutureExt as _, StreamExt};
use tokio::{sync::Semaphore, task::JoinHandle};
use tracing::{debug, info, Instrument};

pub use context::{
    blocking, metadata, record_stream, ContextParts, Incoming, ServiceConfig, ServiceContext,
};

use crate::ServiceError;

/// The running service; [`CairnService::stop`] unregisters it.
#[derive(Debug)]
pub struct CairnService {
    service: service::Service,
    tasks: Vec<JoinHandle<()>>,
    watch: crate::watch::WatchHub,
    kv: Option<crate::kv::KvNode>,
    background: Vec<JoinHandle<()>>,
    limiter: Arc<Semaphore>,
    max_requests: usize,
}

impl CairnService {
    /// Registers the service and its endpoints on `client`.
    pub async fn start(
        client: async_nats::Client,
        store: Store,
        registry: actix::Addr<crate::registry::Registry>,
        artifacts: Arc<crate::artifact::ArtifactCache>,
        kv_node: crate::kv::KvNode,
        config: ServiceConfig,
    ) -> Result<Self, async_nats::Error> {
        // Watches: one hub per node, following the store from now on.
        let watch = crate::watch::WatchHub::start(store.clone(), config.watch.clone());
        let stats_hub = watch.clone();
        let stats_artifacts = artifacts.clone();
        // In a cluster, `$SRV.INFO` names the node (metadata) and
        // `$SRV.STATS` what it owns now (data of `cluster-status`).
        let ownership = config
            .cluster
            .as_ref()
            .map(|routing| routing.ownership.view().clone());
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("cluster".to_owned(), ownership.is_some().to_string());
        if let Some(view) = &ownership {
            metadata.insert("node".to_owned(), view.node().to_owned());
        }
        let service = client
            .clone()
            .service_builder()
            .description("cairn: package-repository cache")
            .queue_group("cairn")
            .metadata(metadata)
            .stats_handler(move |endpoint, _| {
                if endpoint == WATCH_STATS_ENDPOINT {
                    serde_json::json!({ "watchers": stats_hub.len() })
                } else if endpoint == ARTIFACT_STATS_ENDPOINT {
                    stats_artifacts.stats().to_json()
                } else if let (CLUSTER_STATS_ENDPOINT, Some(view)) = (endpoint.as_str(), &ownership)
                {
                    let owns: Vec<String> =
                        view.held().keys().map(|s| s.as_str().to_owned()).collect();
                    serde_json::json!({ "node": view.node(), "owns": owns })
                } else {
                    serde_json::Value::Null
                }
            })
            .start(cairn_events::subject::SERVICE_NAME, config.version.clone())
            .await?;
        // The key-value cache: on a single node every task runs here; on a
        // cluster node the sweeper removes expired entries of the
        // partitions this node writes (through the replicated log), the
        // compaction follows the log's markers ([`crate::cluster::log`]),
        // and no flusher runs (the replicated log's quorum is what makes a
        // write durable; see `kv` and the README's cluster section).
        let clustered = kv_node.clustered();
        let sweeper = kv::start_sweeper(kv_node.clone(), config.kv.sweep_interval);
        let (compactor, flusher) = if clustered {
            (None, None)
        } else {
            (
                kv::start_compactor(
                    store.clone(),
                    config.clock.clone(),
                    config.kv.compact_interval,
                    config.kv.tombstone_retention,
                ),
                kv::start_flusher(
                    store.clone(),
                    config.kv.durability,
                    config.kv.flush_interval,
                ),
            )
        };
        let kv_node = Some(kv_node);
        let context = ServiceContext::new(ContextParts {
            store,
            client: client.clone(),
            registry,
            pages: Arc::new(pages::PageCache::new(config.page_cache_bytes)),
            watch: watch.clone(),
            arbiter: actix::Arbiter::try_current(),
            in_flight: Arc::default(),
            revisions_busy: Arc::default(),
            kv: kv_node.clone(),
            artifacts,
            config,
        });
        let limiter = Arc::new(Semaphore::new(
            context.config.max_concurrent_requests.max(1),
        ));
        let mut tasks = Vec::new();
        let node_group = context.config.cluster.as_ref().map(|routing| {
            service.group(format!(
                "{}{}",
                cluster::NODE_SUBJECT_PREFIX,
                routing.ownership.view().node()
            ))
        });
        macro_rules! endpoint {
            ($name:literal, $message:ty, $handler:path) => {
                endpoint!($name, $message, $handler, RequestLimit::Config, None)
            };
            ($name:literal, $message:ty, $handler:path, $limit:expr, $replay:expr) => {{
                let endpoint = service
                    .endpoint_builder()
                    .name($name.replace('.', "-"))
                    .add(concat!("cairn.v1.", $name))
                    .await?;
                let replay: Option<idempotency::Replay> = $replay;
                tasks.push(serve::<$message, _, _>(
                    concat!("cairn.v1.", $name),
                    endpoint,
                    context.clone(),
                    limiter.clone(),
                    $limit,
                    $handler,
                    replay,
                ));
                // In a cluster every endpoint is also served on this node's
                // own subject: other nodes forward commands there, and a
                // client can ask this node in particular (see `cluster`).
                if let Some(group) = node_group.as_ref() {
                    let endpoint = group
                        .endpoint_builder()
                        .name(format!("node-{}", $name.replace('.', "-")))
                        .add(concat!("cairn.v1.", $name))
                        .await?;
                    tasks.push(serve::<$message, _, _>(
                        concat!("cairn.v1.", $name),
                        endpoint,
                        context.clone(),
                        limiter.clone(),
                        $limit,
                        $handler,
                        replay,
                    ));
                }
            }};
        }
        endpoint!(
            "log.read",
            cairn_events::v1::LogReadRequest,
            log::handle_read
        );
        endpoint!(
            "repo.register",
            cairn_events::v1::RepoRegisterRequest,
            repo::handle_register,
            RequestLimit::Config,
            Some(repo::replay_register)
        );
        endpoint!(
            "repo.unregister",
            cairn_events::v1::RepoKeyRequest,
            repo::handle_unregister,
            RequestLimit::Config,
            Some(repo::replay_unregister)
        );
        endpoint!(
            "repo.get",
            cairn_events::v1::RepoKeyRequest,
            repo::handle_get
        );
        endpoint!(
            "repo.list",
            cairn_events::v1::RepoListRequest,
            repo::handle_list
        );
        endpoint!(
            "repo.sync",
            cairn_events::v1::RepoKeyRequest,
            repo::handle_sync,
            RequestLimit::Config,
            Some(repo::replay_sync)
        );
        endpoint!(
            "repo.update",
            cairn_events::v1::RepoUpdateRequest,
            repo::handle_update,
            RequestLimit::Config,
            Some(repo::replay_update)
        );
        endpoint!(
            "pkgrev.list",
            cairn_events::v1::PkgRevListRequest,
            pkgrev::handle_list
        );
        endpoint!(
            "pkgrev.get",
            cairn_events::v1::PkgRevKeyRequest,
            pkgrev::handle_get
        );
        endpoint!(
            "pkgrev.resources",
            cairn_events::v1::PkgRevResourcesRequest,
            resources::handle_resources
        );
        endpoint!(
            "pkgrev.create",
            cairn_events::v1::PkgRevCreateRequest,
            lifecycle::handle_create,
            RequestLimit::MaxPayload,
            Some(lifecycle::replay_create)
        );
        endpoint!(
            "pkgrev.update",
            cairn_events::v1::PkgRevUpdateRequest,
            lifecycle::handle_update,
            RequestLimit::MaxPayload,
            Some(lifecycle::replay_revision)
        );
        endpoint!(
            "pkgrev.propose",
            cairn_events::v1::PkgRevCommandRequest,
            lifecycle::handle_propose,
            RequestLimit::Config,
            Some(lifecycle::replay_revision)
        );
        endpoint!(
            "pkgrev.reject",
            cairn_events::v1::PkgRevCommandRequest,
            lifecycle::handle_reject,
            RequestLimit::Config,
            Some(lifecycle::replay_revision)
        );
        endpoint!(
            "pkgrev.approve",
            cairn_events::v1::PkgRevCommandRequest,
            lifecycle::handle_approve,
            RequestLimit::Config,
            Some(lifecycle::replay_revision)
        );
        endpoint!(
            "pkgrev.propose-delete",
            cairn_events::v1::PkgRevCommandRequest,
            lifecycle::handle_propose_delete,
            RequestLimit::Config,
            Some(lifecycle::replay_revision)
        );
        endpoint!(
            "pkgrev.withdraw-delete",
            cairn_events::v1::PkgRevCommandRequest,
            lifecycle::handle_withdraw_delete,
            RequestLimit::Config,
            Some(lifecycle::replay_revision)
        );
        endpoint!(
            "pkgrev.delete",
            cairn_events::v1::PkgRevCommandRequest,
            lifecycle::handle_delete,
            RequestLimit::Config,
            Some(lifecycle::replay_delete)
        );
        endpoint!(
            "kv.set",
            cairn_events::v1::KvSetRequest,
            kv::handle_set,
            RequestLimit::MaxPayload,
            None
        );
        endpoint!("kv.get", cairn_events::v1::KvKeyRequest, kv::handle_get);
        endpoint!(
            "kv.exists",
            cairn_events::v1::KvKeyRequest,
            kv::handle_exists
        );
        endpoint!(
            "kv.delete",
            cairn_events::v1::KvKeyRequest,
            kv::handle_delete
        );
        endpoint!(
            "kv.delete_by_pattern",
            cairn_events::v1::KvPatternRequest,
            kv::handle_delete_by_pattern
        );
        endpoint!(
            "kv.delete_by_namespace",
            cairn_events::v1::KvNamespaceRequest,
            kv::handle_delete_by_namespace
        );
        endpoint!(
            "kv.delete_by_tags",
            cairn_events::v1::KvTagsRequest,
            kv::handle_delete_by_tags
        );
        endpoint!(
            "kv.clear",
            cairn_events::v1::KvClearRequest,
            kv::handle_clear
        );
        endpoint!("kv.keys", cairn_events::v1::KvKeysRequest, kv::handle_keys);
        endpoint!(
            "kv.stats",
            cairn_events::v1::KvStatsRequest,
            kv::handle_stats
        );
        endpoint!(
            "kv.cleanup",
            cairn_events::v1::KvStatsRequest,
            kv::handle_cleanup
        );
        endpoint!(
            "kv.configure",
            cairn_events::v1::KvConfigureRequest,
            kv::handle_configure
        );
        endpoint!(
            "kv.get_or_compute",
            cairn_events::v1::KvGetOrComputeRequest,
            kv::handle_get_or_compute
        );
        endpoint!(
            "kv.key_for",
            cairn_events::v1::KvKeyForRequest,
            kv::handle_key_for
        );
        // Background work, stopped at once on shutdown (the serve loops
        // instead end with their endpoints).
        let background: Vec<JoinHandle<()>> = sweeper
            .into_iter()
            .chain(flusher)
            .chain(compactor)
            .collect();
        endpoint!(
            "artifact.get",
            cairn_events::v1::ArtifactGetRequest,
            artifact::handle_get
        );
        endpoint!(
            "artifact.read",
            cairn_events::v1::ArtifactReadRequest,
            artifact::handle_read
        );
        endpoint!(
            "artifact.evict",
            cairn_events::v1::ArtifactEvictRequest,
            artifact::handle_evict
        );
        endpoint!(
            "artifact.list",
            cairn_events::v1::ArtifactListRequest,
            artifact::handle_list
        );
        endpoint!(
            "artifact.stats",
            cairn_events::v1::ArtifactStatsRequest,
            artifact::handle_stats
        );
        // Between cluster nodes only (records and claims for a stream's
        // owner): a single node has none.
        if context.config.cluster.is_some() {
            endpoint!(
                "artifact.record",
                cairn_events::v1::ArtifactRecordRequest,
                artifact::handle_record
            );
        }
        endpoint!(
            "watch.start",
            cairn_events::v1::WatchStartRequest,
            watch::handle_start
        );
        endpoint!(
            "cluster.status",
            cairn_events::v1::ClusterStatusRequest,
            cluster::handle_status
        );
        endpoint!(
            "watch.stop",
            cairn_events::v1::WatchStopRequest,
            watch::handle_stop
        );
        // Make sure the server has the subscriptions before anyone is told
        // the service is up (else early requests find "no responders").
        server_round_trip(&client).await?;
        info!(endpoints = tasks.len(), "cairn service registered");
        let max_requests = context.config.max_concurrent_requests.max(1);
        Ok(Self {
            service,
            tasks,
            watch,
            kv: kv_node,
            background,
            limiter,
            max_requests,
        })
    }

    /// The node's watch hub.
    pub fn watch_hub(&self) -> &crate::watch::WatchHub {
        &self.watch
    }

    /// The node's key-value cache.
    pub fn kv(&self) -> Option<&crate::kv::KvNode> {
        self.kv.as_ref()
    }

    /// Stops taking requests: the endpoints unsubscribe, the requests
    /// already delivered are still answered and the ones running finish
    /// (together at most [`STOP_DRAIN_MAX`]; what is left then is cut).
    pub async fn stop(self) {
        for task in &self.background {
            task.abort();
        }
        if let Err(e) = self.service.stop().await {
            debug!(error = %e, "stopping the service");
        }
        let deadline = tokio::time::Instant::now() + STOP_DRAIN_MAX;
        for task in &self.tasks {
            // Each serve loop ends with its endpoint's stream.
            let _ = tokio::time::timeout_at(deadline, async {
                while !task.is_finished() {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
            .await;
            task.abort();
        }
        let all = u32::try_from(self.max_requests).unwrap_or(u32::MAX);
        if tokio::time::timeout_at(deadline, self.limiter.acquire_many(all))
            .await
            .is_err()
        {
            debug!("requests still running when the service stopped");
        }
        self.watch.shutdown();
    }
}

/// Longest a stopping service waits for the requests it received.
pub const STOP_DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// The endpoint whose `$SRV.STATS` `data` carries the artifact counters.
pub const ARTIFACT_STATS_ENDPOINT: &str = "artifact-stats";

/// The endpoint whose `$SRV.STATS` `data` carries `{"watchers": N}`.
pub const WATCH_STATS_ENDPOINT: &str = "watch-start";
/// The endpoint whose `$SRV.STATS` data names the node and the streams it
/// owns (cluster nodes only).
pub const CLUSTER_STATS_ENDPOINT: &str = "cluster-status";

/// How large a request an endpoint takes.
#[derive(Debug, Clone, Copy)]
enum RequestLimit {
    /// `request_max_bytes` of the config.
    Config,
    /// Whatever the server lets through (its `max_payload`).
    MaxPayload,
}

/// Runs `handler` for each request of `endpoint` (subject `name`), at most
/// `limiter`'s permits at once across the service: inline as far as it
/// goes without waiting, then in a task of its own. Each request runs in
/// its own `command` span (`endpoint`; `principal` and `correlation_id`
/// recorded by [`metadata`], `stream` by [`record_stream`]); the actor
/// messages it causes carry that span, so a command's log reads as one
/// tree.
fn serve<M, F, Fut>(
    name: &'static str,
    mut endpoint: service::endpoint::Endpoint,
    context: ServiceContext,
    limiter: Arc<Semaphore>,
    limit: RequestLimit,
    handler: F,
    replay: Option<idempotency::Replay>,
) -> JoinHandle<()>
where
    M: prost::Message + Default + serde::Serialize,
    F: Fn(ServiceContext, Incoming) -> Fut + Send + Sync + Copy + 'static,
    Fut: std::future::Future<Output = Result<codec::Body, ServiceError>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(request) = endpoint.next().await {
            let Ok(permit) = limiter.clone().acquire_owned().await else {
                return;
            };
            let context = context.clone();
            let mut run = Box::pin(async move {
                let format = codec::Format::of(&request);
                let max = match limit {
                    RequestLimit::Config => context.config.request_max_bytes,
                    RequestLimit::MaxPayload => usize::MAX,
                };
                let started = std::time::Instant::now();
                let span = command_span(name);
                crate::trace::continue_nats(&span, request.message.headers.as_ref());
                let mut extra = Vec::new();
                // Sent on by another node: run here or refuse, never again
                // forwarded.
                let forwarded = request
                    .message
                    .headers
                    .as_ref()
                    .is_some_and(|h| h.get(cluster::FORWARDED_HEADER).is_some());
                let result = match codec::request_json::<M>(&request, max) {
                    Ok((format, body)) => {
                        let waited = cluster::wait_min_seq(
                            &context,
                            request.message.headers.as_ref(),
                            context.config.read_wait,
                        )
                        .await;
                        let deadline = tokio::time::Instant::now() + cluster::REROUTE_WINDOW;
                        // On a cluster a write that came without a key gets
                        // one, once, before it is routed: every forward of
                        // it and a run here (after the stream came to this
                        // node, or after "does not own") carry the same key,
                        // so an attempt applied by an owner that died before
                        // answering is not applied again (see `idempotency`).
                        let headers = match (replay, &context.config.cluster) {
                            (Some(_), Some(_))
                                if request
                                    .message
                                    .headers
                                    .as_ref()
                                    .and_then(|h| h.get(idempotency::REQUEST_ID_HEADER))
                                    .is_none() =>
                            {
                                Some(idempotency::with_id(
                                    request.message.headers.as_ref(),
                                    &idempotency::made_id(),
                                ))
                            }
                            _ => request.message.headers.clone(),
                        };
                        loop {
                            let routed = match (&waited, replay, context.config.cluster.clone()) {
                                (Ok(()), Some(_), Some(routing)) => {
                                    routed(
                                        &context,
                                        &routing,
                                        &request,
                                        headers.as_ref(),
                                        name,
                                        &body,
                                        forwarded,
                                    )
                                    .instrument(span.clone())
                                    .await
                                }
                                _ => None,
                            };
                            let result = match (&waited, routed) {
                                (Err(e), _) => Err(e.clone()),
                                (Ok(()), Some(Ok((headers, body)))) => {
                                    let code = headers
                                        .get("Nats-Service-Error-Code")
                                        .and_then(|c| c.as_str().parse::<u16>().ok())
                                        .unwrap_or(200);
                                    crate::metrics::request(
                                        name,
                                        code,
                                        started.elapsed().as_secs_f64(),
                                    );
                                    cluster::relay(&request, headers, body).await;
                                    drop(permit);
                                    return;
                                }
                                (Ok(()), Some(Err(e))) => Err(e),
                                (Ok(()), None) => {
                                    let incoming = Incoming {
                                        format,
                                        body: body.clone(),
                                        payload: request.message.payload.clone(),
                                        headers: headers.clone(),
                                        request: None,
                                    };
                                    let context = context.clone();
                                    match replay {
                                        None => {
                                            handler(context, incoming)
                                                .instrument(span.clone())
                                                .await
                                        }
                                        Some(replay) => {
                                            idempotent(
                                                name, context, incoming, handler, replay,
                                                &mut extra,
                                            )
                                            .instrument(span.clone())
                                            .await
                                        }
                                    }
                                }
                            };
                            // The stream left this node while the command
                            // came in (nothing of it ran): route it again.
                            let moving = matches!(&result, Err(e) if cluster::is_moving(e));
                            if moving
                                && !forwarded
                                && context.config.cluster.is_some()
                                && tokio::time::Instant::now() < deadline
                            {
                                extra.clear();
                                tokio::time::sleep(cluster::REROUTE_PAUSE).await;
                                continue;
                            }
                            break result;
                        }
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = &result {
                    span.in_scope(|| debug!(code = e.code, error = %e.message, "command failed"));
                }
                extra.push(cluster::seq_header(&context));
                if let Some(node) = cluster::node_header(&context) {
                    extra.push(node);
                }
                let code = result.as_ref().map_or_else(|e| e.code, |_| 200);
                codec::respond(&request, format, result, &extra).await;
                crate::metrics::request(name, code, started.elapsed().as_secs_f64());
                drop(permit);
            });
            // Run here as far as it goes without waiting: a request
            // answered from memory (a `kv.get` hit) is done, with no task
            // of its own (spawning one per request cost the node thread a
            // task's allocation, scheduling and wake-up, and a copy of this
            // large future in and out of it). One that waits (a write, a
            // read of the disk) goes on in a task, boxed (the task holds a
            // pointer); its next poll there registers the task's wakers.
            // A handler that panics loses its request, not the endpoint.
            let mut first = std::panic::AssertUnwindSafe(run.as_mut()).catch_unwind();
            match futures::poll!(&mut first) {
                std::task::Poll::Pending => {
                    drop(first);
                    tokio::spawn(run);
                }
                std::task::Poll::Ready(Ok(())) => {}
                std::task::Poll::Ready(Err(_)) => {
                    tracing::error!(endpoint = name, "a request handler panicked");
                }
            }
        }
    })
}

/// In a cluster, where a command runs: `None` here, or the owner's reply
/// (or why it could not be reached) when it ran elsewhere. `headers`: the
/// request's, with the command's idempotency key (forwarded as they are).
async fn routed(
    context: &ServiceContext,
    routing: &cluster::ClusterRouting,
    request: &service::Request,
    headers: Option<&async_nats::HeaderMap>,
    name: &str,
    body: &[u8],
    forwarded: bool,
) -> Option<Result<(async_nats::HeaderMap, bytes::Bytes), ServiceError>> {
    let stream = cluster::target_stream(context, name, body).await?;
    match cluster::route(routing, &stream, forwarded).await {
        Ok(cluster::Route::Local) => None,
        Ok(cluster::Route::Forward(node)) => {
            match cluster::forward(
                context,
                routing,
                request.message.payload.clone(),
                headers,
                name,
                &stream,
                node,
            )
            .await
            {
                Ok(cluster::Forwarded::Reply(headers, body)) => Some(Ok((headers, body))),
                Ok(cluster::Forwarded::RunHere) => None,
                Err(e) => Some(Err(e)),
            }
        }
        Err(e) => Some(Err(e)),
    }
}

/// Runs the write `handler` once per idempotency key (see
/// [`idempotency`]): a request whose key was applied is answered by
/// `replay` (and `extra` gets the `Cairn-Replayed` header).
async fn idempotent<F, Fut>(
    name: &'static str,
    context: ServiceContext,
    mut incoming: Incoming,
    handler: F,
    replay: idempotency::Replay,
    extra: &mut Vec<(&'static str, String)>,
) -> Result<codec::Body, ServiceError>
where
    F: Fn(ServiceContext, Incoming) -> Fut,
    Fut: std::future::Future<Output = Result<codec::Body, ServiceError>>,
{
    let endpoint = name.strip_prefix("cairn.v1.").unwrap_or(name);
    let Some(key) = idempotency::request_key(endpoint, incoming.headers.as_ref(), &incoming.body)?
    else {
        return handler(context, incoming).await;
    };
    let wait = std::time::Duration::from_secs(idempotency::IN_FLIGHT_WAIT_SECS);
    let Ok(_running) = tokio::time::timeout(wait, context.in_flight.lock(&key.id)).await else {
        return Err(ServiceError::unavailable(format!(
            "an earlier request with {} {:?} still runs after {wait:?}; retry with the same id later",
            idempotency::REQUEST_ID_HEADER,
            key.id
        )));
    };
    if let idempotency::Prior::Applied(row) = idempotency::prior(&context, &key).await? {
        let first_seq = row.first_seq;
        match replay(context.clone(), incoming.clone(), row).await? {
            idempotency::Replayed::Answer(body) => {
                debug!(request_id = %key.id, first_seq, "replaying an applied request");
                extra.push((idempotency::REPLAYED_HEADER, first_seq.to_string()));
                return Ok(body);
            }
            idempotency::Replayed::RunAgain => {
                debug!(request_id = %key.id, first_seq, "running an unfinished request again");
            }
        }
    }
    incoming.request = Some(key);
    handler(context, incoming).await
}

/// The span of one command of `endpoint`: INFO, a root, with `stream`,
/// `principal` and `correlation_id` recorded once known ([`metadata`],
/// [`record_stream`], run inside it). Every actor message the command
/// causes carries it, and each actor's span is its descendant.
pub fn command_span(endpoint: &'static str) -> tracing::Span {
    tracing::info_span!(
        parent: None,
        "command",
        endpoint,
        stream = tracing::field::Empty,
        principal = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
    )
}

/// Waits until the server has processed everything this connection sent
/// so far. `flush` only empties the socket buffer; a message to a fresh
/// inbox of our own comes back only after the server has read (and
/// applied, in order) every earlier subscription of this connection, so
/// requests from other connections find them.
pub async fn server_round_trip(client: &async_nats::Client) -> Result<(), async_nats::Error> {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await?;
    client.publish(inbox, bytes::Bytes::new()).await?;
    client.flush().await?;
    let deadline = std::time::Duration::from_secs(10);
    match tokio::time::timeout(deadline, echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("the NATS connection closed while registering the service".into()),
        Err(_) => Err(format!(
            "the NATS server did not confirm the service's subscriptions within {deadline:?}"
        )
        .into()),
    }
}
