//! [`ArtifactCache`]: the component both faces (HTTP, NATS) call.
//!
//! A `GET` goes: validate → look up (two point reads, on the caller's
//! thread when answered from memory, see [`lookup_in_memory`]) → fresh: serve from
//! the store (with `Age`, or a 304 for a matching client conditional) →
//! stale: one conditional request (304: headers updated, stored body
//! served; 200: replaced) or, where allowed, stale served → miss: one
//! download per URL on this node (single flight), streamed to the caller
//! and its followers while it is stored. Other methods are forwarded
//! untouched and, when unsafe and successful, invalidate (see
//! [`super::rules`]).
//!
//! # Downloads and single flight
//! A storable response is written, as it arrives, to the blob store's
//! in-progress file ([`BlobWriter`]) by a task of its own; a progress
//! `watch` says how many bytes are written and how the download ended.
//! Every client of the download — the leader's, and each follower's —
//! reads that file ([`BlobSpool`]) from byte 0 at its own pace, waking on
//! progress: memory is one chunk per reader whatever the body's size, and
//! a slow client slows nobody else. While the download runs, the last
//! byte of an announced length is held back, so a client that read the
//! whole body finds it stored; the entry is recorded (`ArtifactStored`)
//! only when the body is complete and of its `Content-Length`, and only
//! then do the readers' bodies end. A truncated or reset download stores
//! nothing (the file is removed) and every reader's body fails: the HTTP
//! face cuts each connection, never a short 200.
//!
//! Concurrent misses for one URL on one node share one origin request:
//! the first becomes the leader (the in-flight table, bounded by
//! [`ArtifactConfig::flights_max`]); the others follow its flight. On a
//! cluster the leader first claims the URL from its stream's owner (see
//! [`super::cluster`]): when another node downloads or revalidates it, the
//! leader — its followers with it — waits for that node's entry and serves
//! it from this node's replica. A
//! follower that streams (the HTTP faces) gets, as soon as the leader has
//! the response head, the same status and fields (`Cache-Status: cairn;
//! fwd=miss; collapsed`, or a 304 for a matching client conditional) and
//! the body from byte 0 as it arrives — also when it joins mid-download.
//! A follower that does not stream (NATS `artifact.get`, whose reply
//! names the stored digest) waits for the download's end and is answered
//! from the store; a failed download fails it with the leader's error
//! (502). A follower whose request selects another variant (`Vary`), or
//! whose flight ends without a shared body (not storable, a 304 to a
//! revalidation, an error before the body) looks again once the flight
//! ends. A follower going away reads no more, nothing else. The leader's
//! miss fetch and its download are tasks of their own: its client going
//! away, before the origin answered or mid-body, leaves both to the
//! followers and the store. (A revalidation's conditional request is
//! still made by the leader's request: its client going away before the
//! origin answers makes a follower ask again.)
//!
//! Every response says how it was served in `Cache-Status` (RFC 9211):
//! `cairn; hit`, `cairn; fwd=miss; stored`, `cairn; fwd=miss; collapsed`
//! (a follower fed the leader's download), `cairn; fwd=miss`,
//! `cairn; fwd=stale; fwd-status=304` (revalidated), `cairn; hit;
//! detail=stale` (stale served: stale-while-revalidate, stale-if-error, or
//! the origin unreachable with `artifact.serve-stale-if-unreachable`),
//! `cairn; fwd=method` (forwarded, not cacheable),
//! `cairn; fwd=uri-miss; detail=only-if-cached` (the 504).

use std::{
    collections::HashMap,
    io::{self, Read},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::SystemTime,
};

use actix::{Actor, Addr};
use bytes::Bytes;
use cairn_events::{
    v1::{
        ArtifactEvicted, ArtifactInvalidated, ArtifactKey, ArtifactRevalidated, ArtifactRow,
        ArtifactStored, HeaderField,
    },
    StreamId,
};
use cairn_storage::{
    views::{artifacts::INDEXED_METHOD, ArtifactsView},
    BlobSpool, BlobStore, BlobWriter, Digest, EventLog, Store,
};
use futures::{stream::BoxStream, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use http_cache_semantics::{AfterResponse, BeforeRequest};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::{
    cluster::{ArtifactCluster, ArtifactClusterParts, ClaimOutcome},
    domain::{ArtifactCommand, ArtifactEnv, ArtifactLog, ArtifactState, ArtifactWriter},
    key::{self, partition},
    observe::{ArtifactObserver, Recency},
    rules, ArtifactConfig, ArtifactError, PARTITIONS,
};
use crate::{timing::Clock, writer::Execute};

/// Chunks queued between a download and the blob writer.
const CHUNKS_QUEUED_MAX: usize = 16;
/// Bytes read from the store per chunk when serving a body being
/// downloaded.
const STORE_CHUNK_BYTES: usize = 256 * 1024;
/// Bodies up to this size are read with their entry (one trip to the
/// blocking pool per hit) and answered from memory.
const SMALL_BODY_BYTES: u64 = 256 * 1024;
/// Entries evicted in one pass at most (the next store continues).
const EVICTIONS_PER_PASS_MAX: usize = 1024;
/// Times a request starts over after waiting for another's download.
const FLIGHT_ROUNDS_MAX: usize = 2;

/// How a response was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// From the store, fresh.
    Hit,
    /// Downloaded (and stored when storable).
    Miss,
    /// From the store after a 304.
    Revalidated,
    /// From the store, stale.
    Stale,
    /// Forwarded: not a cacheable request.
    Pass,
}

impl How {
    /// The name in replies (`hit`, `miss`, `revalidated`, `stale`, `pass`).
    pub fn as_str(self) -> &'static str {
        match self {
            How::Hit => "hit",
            How::Miss => "miss",
            How::Revalidated => "revalidated",
            How::Stale => "stale",
            How::Pass => "pass",
        }
    }
}

/// A request to the cache.
#[derive(Debug)]
pub struct CacheRequest {
    /// The method.
    pub method: Method,
    /// The absolute origin URL (validated).
    pub url: url::Url,
    /// The client's header fields.
    pub headers: HeaderMap,
    /// The body of a forwarded request (unsafe methods).
    pub body: Option<reqwest::Body>,
    /// True for the reverse proxy: redirects are passed to the client, not
    /// followed.
    pub proxy: bool,
    /// True when the caller wants a download's body as it arrives; false to
    /// have it stored first and served from the store.
    pub stream: bool,
    /// The upstream's name (recorded in `ArtifactStored`).
    pub upstream: String,
}

/// A body to send.
pub enum ServedBody {
    /// None (HEAD, 304, errors).
    Empty,
    /// A small stored body, read with its entry.
    Bytes(Bytes),
    /// A stored body, read from the blob store.
    Stored {
        /// Its digest.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// Bytes as they arrive from the origin; an `Err` cuts the response.
    Stream(BoxStream<'static, Result<Bytes, io::Error>>),
}

impl std::fmt::Debug for ServedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("Empty"),
            Self::Bytes(b) => write!(f, "Bytes({})", b.len()),
            Self::Stored { digest, size } => write!(f, "Stored({digest}, {size})"),
            Self::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// A response from the cache.
#[derive(Debug)]
pub struct Served {
    /// Status.
    pub status: StatusCode,
    /// Header fields.
    pub headers: HeaderMap,
    /// Body.
    pub body: ServedBody,
    /// How it was served.
    pub how: How,
    /// The stored entry it came from (or was stored as).
    pub row: Option<ArtifactRow>,
}

/// Counters of the cache (since the node started).
#[derive(Debug, Default)]
pub struct ArtifactStats {
    /// Fresh responses served from the store.
    pub hits: AtomicU64,
    /// Requests that found nothing usable stored.
    pub misses: AtomicU64,
    /// Revalidations answered 304.
    pub revalidated_304: AtomicU64,
    /// Revalidations answered with a full response.
    pub revalidated_200: AtomicU64,
    /// Stale responses served.
    pub stale_served: AtomicU64,
    /// Body bytes served from the store (stored bodies, and bodies being
    /// stored by another request's download, served to its followers).
    pub bytes_from_store: AtomicU64,
    /// Body bytes read from origins.
    pub bytes_from_origin: AtomicU64,
    /// Entries evicted.
    pub evictions: AtomicU64,
    /// Requests that joined another's origin request for the same URL
    /// (single flight): fed its download as it arrives, or waiting for it
    /// (one whose flight then serves it nothing looks again, and counts
    /// again as what it finds).
    pub flight_joins: AtomicU64,
    /// Origin requests sent.
    pub origin_requests: AtomicU64,
    /// Responses stored.
    pub stored: AtomicU64,
    /// Downloads not stored because they were cut or short.
    pub truncated: AtomicU64,
}

impl ArtifactStats {
    /// The counters as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "hits": get(&self.hits),
            "misses": get(&self.misses),
            "revalidations": {"not_modified": get(&self.revalidated_304), "modified": get(&self.revalidated_200)},
            "stale_served": get(&self.stale_served),
            "bytes_from_store": get(&self.bytes_from_store),
            "bytes_from_origin": get(&self.bytes_from_origin),
            "evictions": get(&self.evictions),
            "single_flight_joins": get(&self.flight_joins),
            "origin_requests": get(&self.origin_requests),
            "stored": get(&self.stored),
            "truncated": get(&self.truncated),
        })
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A storable response being downloaded: its head, and its body as far
/// as it was written to the blob store's file (read by the leader's client
/// and by every follower, each from byte 0 at its own pace).
#[derive(Debug)]
struct Download {
    /// The origin's status.
    status: StatusCode,
    /// The fields sent with it (the origin's, forwardable), without
    /// `Cache-Status`.
    headers: HeaderMap,
    /// The origin's `Content-Length`, when it sent one.
    content_length: Option<u64>,
    /// The response's `Vary` names.
    vary: Vec<String>,
    /// The Vary key of the request it answers.
    vary_key: String,
    /// What was written of the body so far.
    spool: BlobSpool,
    /// How far the download got.
    progress: watch::Receiver<Progress>,
}

impl Download {
    /// Whether a request with `headers` may be given this response: it
    /// selects the same variant.
    fn serves(&self, headers: &HeaderMap) -> bool {
        key::vary_key(&self.vary, headers) == self.vary_key
    }

    /// Waits for the download's end: `Ok` once its entry is recorded, the
    /// failure's text otherwise.
    async fn ended(&self) -> Result<(), String> {
        let mut progress = self.progress.clone();
        loop {
            if let Some(end) = progress.borrow_and_update().end.clone() {
                return end;
            }
            if progress.changed().await.is_err() {
                return Err(DOWNLOAD_STOPPED.to_owned());
            }
        }
    }
}

/// How far a download got: bytes written to the blob store's file, and
/// its end (`Ok` once recorded, the failure's text when it failed).
#[derive(Debug, Clone, Default)]
struct Progress {
    written: u64,
    end: Option<Result<(), String>>,
}

/// What a reader of a download sees when the download went away without
/// saying how it ended (a failed task).
const DOWNLOAD_STOPPED: &str = "the download stopped before its end";

/// A request for a URL another request is fetching, as its followers see
/// it.
#[derive(Debug, Clone)]
enum FlightState {
    /// Waiting for the origin's answer.
    Asking,
    /// A storable response is being downloaded: followers read it.
    Downloading(Arc<Download>),
    /// Over (stored, not storable, revalidated, failed before a body):
    /// followers look again.
    Ended,
}

/// A flight as its followers hold it.
type Flight = watch::Receiver<FlightState>;

/// Says what a flight came to; says it ended when dropped (also by a
/// failed leader) and takes it out of the in-flight table.
struct FlightGuard {
    cache: Arc<ArtifactCache>,
    url: String,
    state: watch::Sender<FlightState>,
    /// On a cluster: the claim the owner of the URL's stream granted this
    /// flight (URL, token), released when the flight ends.
    claim: Mutex<Option<(String, u64)>>,
}

impl FlightGuard {
    /// Tells the followers that `download` is on its way.
    fn downloading(&self, download: Arc<Download>) {
        self.state.send_replace(FlightState::Downloading(download));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.cache.flights.lock().remove(&self.url);
        self.state.send_replace(FlightState::Ended);
        if let Some((url, token)) = self.claim.lock().take() {
            self.cache.release_claim(url, token);
        }
    }
}

/// The artifact cache of one node.
#[derive(Debug)]
pub struct ArtifactCache {
    store: Store,
    config: ArtifactConfig,
    clock: Arc<dyn Clock>,
    /// Per partition, its writer while this node runs it (always on a
    /// single node; on a cluster node while it holds the stream's lease).
    pub(crate) writers: Vec<parking_lot::RwLock<Option<Addr<ArtifactWriter>>>>,
    pub(crate) env: Arc<ArtifactEnv>,
    /// On a cluster node: routing, claims, the evictor.
    pub(crate) cluster: Option<ArtifactCluster>,
    proxy_client: reqwest::Client,
    fetch_client: reqwest::Client,
    flights: Mutex<HashMap<String, Flight>>,
    recency: Recency,
    pub(crate) observer: Arc<ArtifactObserver>,
    evicting: tokio::sync::Mutex<()>,
    stats: ArtifactStats,
}

impl ArtifactCache {
    /// Starts the cache: a writer per partition (on the current arbiter),
    /// then the start-up cleanup (entries without body evicted, orphan
    /// bodies collected, limits applied).
    pub async fn start(
        store: Store,
        config: ArtifactConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, ArtifactError> {
        Self::start_with(store, config, clock, None).await
    }

    /// Starts the cache of a cluster node: no writer runs until the node
    /// takes a partition's lease ([`ArtifactCache::own`]); writes made
    /// before [`ArtifactCache::join`] answer 503. See [`super::cluster`].
    pub async fn start_clustered(
        store: Store,
        config: ArtifactConfig,
        clock: Arc<dyn Clock>,
        cluster: ArtifactClusterParts,
    ) -> Result<Arc<Self>, ArtifactError> {
        Self::start_with(store, config, clock, Some(cluster)).await
    }

    async fn start_with(
        store: Store,
        config: ArtifactConfig,
        clock: Arc<dyn Clock>,
        cluster: Option<ArtifactClusterParts>,
    ) -> Result<Arc<Self>, ArtifactError> {
        let env = Arc::new(ArtifactEnv {
            store: store.clone(),
            log: match &cluster {
                Some(parts) => ArtifactLog::Cluster(parts.appender.clone()),
                None => ArtifactLog::Store(store.clone()),
            },
        });
        let writers: Vec<_> = (0..PARTITIONS)
            .map(|_| parking_lot::RwLock::new(None))
            .collect();
        if cluster.is_none() {
            for (p, slot) in writers.iter().enumerate() {
                let p = p as u32;
                let stream = StreamId::artifact(p);
                let s = store.clone();
                let st = stream.clone();
                let version = tokio::task::spawn_blocking(move || s.stream_version(&st))
                    .await
                    .map_err(|e| ArtifactError::NotFound(format!("start-up task failed: {e}")))??;
                let state = ArtifactState {
                    stream,
                    partition: p,
                    version,
                };
                *slot.write() = Some(ArtifactWriter::new(state, env.clone()).start());
            }
        }
        let allow = config.allow.clone();
        let redirects_max = config.redirects_max;
        let fetch_client = reqwest::Client::builder()
            .connect_timeout(config.origin_timeout)
            .read_timeout(config.origin_timeout)
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= redirects_max {
                    attempt.error(format!(
                        "more than {redirects_max} redirects (artifact.redirects-max)"
                    ))
                } else if !attempt
                    .url()
                    .host_str()
                    .is_some_and(|h| key::host_allowed(h, &allow))
                    || !matches!(attempt.url().scheme(), "http" | "https")
                {
                    let to = attempt.url().to_string();
                    attempt.error(format!(
                        "redirect to {to} whose host is not allowed (artifact.allow)"
                    ))
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(|e| ArtifactError::NotFound(format!("building the origin client: {e}")))?;
        let proxy_client = reqwest::Client::builder()
            .connect_timeout(config.origin_timeout)
            .read_timeout(config.origin_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ArtifactError::NotFound(format!("building the origin client: {e}")))?;
        let recency: Recency = Arc::new(Mutex::new(lru::LruCache::unbounded()));
        let observer = Arc::new(ArtifactObserver::new(recency.clone()));
        let cache = Arc::new(Self {
            store,
            config,
            clock,
            writers,
            env,
            cluster: cluster.map(ArtifactCluster::new),
            proxy_client,
            fetch_client,
            flights: Mutex::default(),
            recency,
            observer,
            evicting: tokio::sync::Mutex::new(()),
            stats: ArtifactStats::default(),
        });
        cache.clean_up().await?;
        Ok(cache)
    }

    /// Stops the partition writers (node shutdown); commands queued
    /// before finish first.
    pub async fn stop(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.stop_evictor();
        }
        for slot in &self.writers {
            let writer = slot.write().take();
            if let Some(writer) = writer {
                let _ = writer.send(crate::writer::StopWriter).await;
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ArtifactConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &ArtifactStats {
        &self.stats
    }

    /// The node's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Start-up cleanup: entries whose body is missing are evicted, the
    /// others ordered by store time for LRU, orphan bodies collected, the
    /// limits applied. From here on the order follows every commit
    /// ([`ArtifactObserver`]): it is registered before the entries are
    /// read, and a commit written while they are is applied after them.
    /// On a cluster node a missing body is first fetched from
    /// `CAIRN_BLOBS`, and what is left to evict (through the stream's
    /// owner) and the limits (the evictor's) wait for the node to join.
    async fn clean_up(self: &Arc<Self>) -> Result<(), ArtifactError> {
        let store = self.store.clone();
        let observer = self.observer.clone();
        let missing = tokio::task::spawn_blocking(move || {
            let seeding = observer.loading.lock();
            store.observe(observer.clone());
            let mut present = Vec::new();
            let mut missing = Vec::new();
            let prefix = ArtifactsView::entry_prefix(INDEXED_METHOD, "");
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = store.view_scan_messages_page(&prefix, after.as_deref())?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                for (key, row) in page {
                    let digest = Digest::parse(&row.digest);
                    let has_body = match digest {
                        Some(d) => store.blob_size(&d)?.is_some(),
                        None => false,
                    };
                    if has_body {
                        let at = rules::system_time(row.stored_at.as_ref());
                        present.push((at, key, row.key.unwrap_or_default()));
                    } else {
                        missing.push(row);
                    }
                }
            }
            present.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            for (_, key, row_key) in &present {
                observer.seed(row_key, key.clone());
            }
            drop(seeding);
            Ok::<_, ArtifactError>(missing)
        })
        .await
        .map_err(|e| ArtifactError::NotFound(format!("start-up task failed: {e}")))??;
        if self.cluster.is_some() {
            // Fetched, or evicted through the owners once joined.
            self.clean_up_clustered(missing);
        } else {
            for row in missing {
                warn!(url = %row.key.as_ref().map_or("", |k| k.url.as_str()), digest = %row.digest, "stored body missing; entry evicted");
                self.evict_row(&row, "missing-body").await?;
            }
        }
        let store = self.store.clone();
        let gc = tokio::task::spawn_blocking(move || store.collect_garbage())
            .await
            .map_err(|e| ArtifactError::NotFound(format!("start-up task failed: {e}")))??;
        info!(
            entries = self.recency.lock().len(),
            orphan_bodies_removed = gc.removed,
            "artifact cache ready"
        );
        if self.cluster.is_none() {
            self.enforce_limits().await?;
        }
        Ok(())
    }

    /// Runs `command` on the writer of `url`'s stream — on a cluster, at
    /// the stream's owner ([`super::cluster`]); answers how many events it
    /// appended.
    async fn execute(&self, url: &str, command: ArtifactCommand) -> Result<u64, ArtifactError> {
        let p = partition(url);
        if self.cluster.is_some() {
            return self.execute_clustered(p, command).await;
        }
        self.run_local(p, command, None).await
    }

    /// Runs `command` on this node's writer of partition `p`; a node that
    /// does not run it answers [`ArtifactError::NotOwner`] (nothing ran).
    /// With `key` (a cluster record's idempotency key), its events carry
    /// the key and a command whose key was already applied appends nothing
    /// ([`super::domain`]).
    pub(crate) async fn run_local(
        &self,
        p: u32,
        command: ArtifactCommand,
        key: Option<&crate::service::idempotency::RequestKey>,
    ) -> Result<u64, ArtifactError> {
        let writer = self.writers[p as usize].read().clone();
        let Some(writer) = writer else {
            return Err(self.not_owner(p));
        };
        let mut metadata = cairn_events::envelope::Metadata::command("cairn-artifact-cache");
        if let Some(key) = key {
            metadata.request_id = key.id.clone();
            metadata.request_digest = key.digest.clone();
        }
        writer
            .send(Execute {
                command,
                metadata,
                span: tracing::Span::current(),
            })
            .await
            .map_err(|_| self.not_owner(p))?
    }

    /// The stored entry for a `GET` of `url` with `headers`, if any: two
    /// point reads.
    pub async fn lookup(
        &self,
        url: &str,
        headers: &HeaderMap,
    ) -> Result<Option<ArtifactRow>, ArtifactError> {
        Ok(self
            .lookup_with_body(url, headers)
            .await?
            .map(|(row, _)| row))
    }

    /// [`Self::lookup`], with the body when it is small
    /// ([`SMALL_BODY_BYTES`]) and stored as a row. Answered on the
    /// caller's thread when the store has every row in memory (a hit's
    /// usual case: no thread hop), else on the blocking pool.
    async fn lookup_with_body(
        &self,
        url: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Found>, ArtifactError> {
        if let Some(found) = lookup_in_memory(&self.store, url, headers)? {
            return Ok(found);
        }
        let store = self.store.clone();
        let url = url.to_owned();
        let headers = headers.clone();
        tokio::task::spawn_blocking(move || {
            let Some(row) = lookup_blocking(&store, &url, &headers)? else {
                return Ok(None);
            };
            let body = match Digest::parse(&row.digest) {
                Some(d) if row.size <= SMALL_BODY_BYTES => store.get(&d)?.map(Bytes::from),
                _ => None,
            };
            Ok(Some((row, body)))
        })
        .await
        .map_err(|e| ArtifactError::NotFound(format!("lookup task failed: {e}")))?
    }

    fn touch(&self, row: &ArtifactRow) {
        if let Some(k) = row.key.as_ref() {
            self.recency
                .lock()
                .get_or_insert(ArtifactsView::entry_key(k), || ());
        }
    }

    /// Serves `request` (see the module docs).
    pub async fn serve(
        self: &Arc<Self>,
        mut request: CacheRequest,
    ) -> Result<Served, ArtifactError> {
        for name in request.headers.keys() {
            if request.headers.get_all(name).iter().any(|v| {
                v.as_bytes()
                    .iter()
                    .any(|b| *b == b'\r' || *b == b'\n' || *b == 0)
            }) {
                return Err(ArtifactError::BadHeader {
                    name: name.to_string(),
                    reason: "must not contain CR, LF or NUL",
                });
            }
        }
        if request.method != Method::GET && request.method != Method::HEAD {
            return self.forward(request).await;
        }
        for _round in 0..=FLIGHT_ROUNDS_MAX {
            match self.serve_once(&mut request).await? {
                Attempt::Done(served) => return Ok(*served),
                Attempt::Joined(flight) => {
                    bump(&self.stats.flight_joins, 1);
                    if let Some(served) = self.follow(&request, flight).await? {
                        return Ok(served);
                    }
                }
                Attempt::Again => {}
            }
        }
        // Still another's download after the rounds: fetch alone.
        self.fetch(&mut request, None, None).await
    }

    async fn serve_once(
        self: &Arc<Self>,
        request: &mut CacheRequest,
    ) -> Result<Attempt, ArtifactError> {
        let now = self.clock.now();
        let url = request.url.to_string();
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| ArtifactError::bad_url("url", e.to_string()))?;
        let own = rules::own_request(Method::GET, uri, &request.headers);
        let mut found = self.lookup_with_body(&url, &request.headers).await?;
        if let Some((row, _)) = &found {
            let stored_at = rules::system_time(row.stored_at.as_ref());
            if stored_at + self.config.max_age < now {
                self.evict_row(row, "max-age").await?;
                found = None;
            }
        }
        let Some((row, small)) = found else {
            if rules::only_if_cached(&request.headers) {
                return Err(ArtifactError::NotCached);
            }
            if request.method == Method::HEAD {
                return Ok(Attempt::Done(Box::new(self.pass_head(request).await?)));
            }
            let Some(guard) = self.lead(&url) else {
                return Ok(Attempt::Joined(self.flight_of(&url)));
            };
            if !self.claimed(&url, &request.headers, None, &guard).await {
                return Ok(Attempt::Again);
            }
            bump(&self.stats.misses, 1);
            // The fetch is a task of its own, so the leader's caller going
            // away (its client disconnecting) cancels neither the origin
            // request nor the download its followers wait for.
            let cache = self.clone();
            let mut own = CacheRequest {
                method: request.method.clone(),
                url: request.url.clone(),
                headers: request.headers.clone(),
                body: None,
                proxy: request.proxy,
                stream: request.stream,
                upstream: request.upstream.clone(),
            };
            let fetched = tokio::spawn(tracing::Instrument::in_current_span(async move {
                cache.fetch(&mut own, Some(guard), None).await
            }))
            .await
            .map_err(|e| ArtifactError::NotFound(format!("fetch task failed: {e}")))??;
            return Ok(Attempt::Done(Box::new(fetched)));
        };
        self.touch(&row);
        let policy = rules::policy_of(&row, &own);
        let mut presented = own.clone();
        presented.method = Method::GET;
        match policy.before_request(&presented, now) {
            BeforeRequest::Fresh(parts) => {
                bump(&self.stats.hits, 1);
                let mut served = self.stored_response(request, row, parts.headers, How::Hit);
                if let (ServedBody::Stored { size, .. }, Some(bytes)) = (&served.body, small) {
                    if *size == bytes.len() as u64 {
                        served.body = ServedBody::Bytes(bytes);
                    }
                }
                Ok(Attempt::Done(Box::new(served)))
            }
            BeforeRequest::Stale {
                request: revalidation,
                ..
            } => {
                let stored_headers = rules::header_map(&row.headers);
                let staleness = rules::staleness(&policy, &row, now);
                let may_serve_stale = !rules::never_stale(&stored_headers);
                if rules::only_if_cached(&request.headers) {
                    return Err(ArtifactError::NotCached);
                }
                let client_no_cache = rules::directive(&request.headers, "no-cache").is_some();
                if may_serve_stale
                    && !client_no_cache
                    && rules::stale_while_revalidate(&stored_headers)
                        .is_some_and(|w| staleness <= w)
                {
                    // Served stale now; one background revalidation — on
                    // a cluster, one for the whole cluster: claimed from
                    // the stream's owner as a miss is (another node's
                    // revalidation in flight, or applied there already,
                    // makes this one unnecessary).
                    if let Some(guard) = self.lead(&url) {
                        let cache = self.clone();
                        let mut background = CacheRequest {
                            method: Method::GET,
                            url: request.url.clone(),
                            headers: request.headers.clone(),
                            body: None,
                            proxy: request.proxy,
                            stream: false,
                            upstream: request.upstream.clone(),
                        };
                        let row = row.clone();
                        tokio::spawn(async move {
                            if !cache
                                .claimed(
                                    background.url.as_str(),
                                    &background.headers,
                                    Some(row.stream_version),
                                    &guard,
                                )
                                .await
                            {
                                debug!(url = %background.url, "revalidated by another node; no background revalidation here");
                                return;
                            }
                            let policy = rules::policy_of(
                                &row,
                                &rules::own_request(
                                    Method::GET,
                                    revalidation.uri.clone(),
                                    &background.headers,
                                ),
                            );
                            if let Err(e) = cache
                                .revalidate(&mut background, guard, row, policy, revalidation)
                                .await
                            {
                                debug!(error = %e, "background revalidation failed");
                            }
                        });
                    }
                    bump(&self.stats.stale_served, 1);
                    let headers = self.stale_headers(&policy, &row, now);
                    return Ok(Attempt::Done(Box::new(self.stored_response(
                        request,
                        row,
                        headers,
                        How::Stale,
                    ))));
                }
                let Some(guard) = self.lead(&url) else {
                    return Ok(Attempt::Joined(self.flight_of(&url)));
                };
                if !self
                    .claimed(&url, &request.headers, Some(row.stream_version), &guard)
                    .await
                {
                    return Ok(Attempt::Again);
                }
                let outcome = self
                    .revalidate(request, guard, row.clone(), policy.clone(), revalidation)
                    .await;
                let stale_ok = |e_status: Option<u16>| {
                    may_serve_stale
                        && (rules::stale_if_error(&stored_headers, &request.headers)
                            .is_some_and(|w| staleness <= w)
                            || (self.config.serve_stale_if_unreachable
                                && e_status.is_none_or(|s| s >= 500)))
                };
                match outcome {
                    Ok(served)
                        if served.status.is_server_error()
                            && stale_ok(Some(served.status.as_u16())) =>
                    {
                        bump(&self.stats.stale_served, 1);
                        let headers = self.stale_headers(&policy, &row, now);
                        Ok(Attempt::Done(Box::new(self.stored_response(
                            request,
                            row,
                            headers,
                            How::Stale,
                        ))))
                    }
                    Ok(served) => Ok(Attempt::Done(Box::new(served))),
                    Err(
                        e @ (ArtifactError::Origin { .. } | ArtifactError::OriginTimeout { .. }),
                    ) => {
                        if stale_ok(None) {
                            bump(&self.stats.stale_served, 1);
                            let headers = self.stale_headers(&policy, &row, now);
                            Ok(Attempt::Done(Box::new(self.stored_response(
                                request,
                                row,
                                headers,
                                How::Stale,
                            ))))
                        } else {
                            Err(e)
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn stale_headers(
        &self,
        policy: &http_cache_semantics::CachePolicy,
        row: &ArtifactRow,
        now: SystemTime,
    ) -> HeaderMap {
        let mut headers = rules::header_map(&row.headers);
        for name in rules::HOP_BY_HOP {
            headers.remove(*name);
        }
        headers.insert(header::AGE, HeaderValue::from(policy.age(now).as_secs()));
        headers
    }

    /// Becomes the leader of `url`'s download, unless another is.
    fn lead(self: &Arc<Self>, url: &str) -> Option<FlightGuard> {
        let mut flights = self.flights.lock();
        if flights.contains_key(url) {
            return None;
        }
        if flights.len() >= self.config.flights_max {
            // Beyond the bound: not shared, but still fetched.
            let (state, _) = watch::channel(FlightState::Asking);
            return Some(FlightGuard {
                cache: self.clone(),
                url: String::new(),
                state,
                claim: Mutex::new(None),
            });
        }
        let (state, flight) = watch::channel(FlightState::Asking);
        flights.insert(url.to_owned(), flight);
        Some(FlightGuard {
            cache: self.clone(),
            url: url.to_owned(),
            state,
            claim: Mutex::new(None),
        })
    }

    /// On a cluster, claims `url`'s download for `guard`'s flight from
    /// the stream's owner ([`super::cluster`]): false when another node
    /// stored or revalidated it meanwhile (look again). `seen`: the stream
    /// version of the stale entry the lookup found (`None`: it found
    /// none). Always true on a single node.
    async fn claimed(
        &self,
        url: &str,
        headers: &HeaderMap,
        seen: Option<u64>,
        guard: &FlightGuard,
    ) -> bool {
        if self.cluster.is_none() {
            return true;
        }
        match self.claim_flight(url, headers, seen).await {
            ClaimOutcome::Again => false,
            ClaimOutcome::Lead(token) => {
                if let Some(token) = token {
                    *guard.claim.lock() = Some((url.to_owned(), token));
                }
                true
            }
        }
    }

    /// Counts a request that waits for another's download.
    pub(crate) fn count_flight_join(&self) {
        bump(&self.stats.flight_joins, 1);
    }

    fn flight_of(&self, url: &str) -> Flight {
        match self.flights.lock().get(url) {
            Some(f) => f.clone(),
            None => watch::channel(FlightState::Ended).1,
        }
    }

    /// Follows another request's flight for the same URL. A storable
    /// response being downloaded is given to a streaming caller at once,
    /// its body from byte 0 as it arrives ([`Self::spooled`]); a caller
    /// that does not stream waits for the download's end (its failure is
    /// this caller's too). Anything else — another variant, a response not
    /// storable, a failure before the body, a 304 — is waited out, then
    /// `None`: look again. Each wait is bounded by the leader's
    /// `artifact.origin-timeout` per origin read.
    async fn follow(
        self: &Arc<Self>,
        request: &CacheRequest,
        mut flight: Flight,
    ) -> Result<Option<Served>, ArtifactError> {
        let state = loop {
            let state = flight.borrow_and_update().clone();
            if !matches!(state, FlightState::Asking) {
                break state;
            }
            if flight.changed().await.is_err() {
                break FlightState::Ended;
            }
        };
        let FlightState::Downloading(download) = state else {
            return Ok(None);
        };
        if !download.serves(&request.headers) {
            let _ = download.ended().await;
            return Ok(None);
        }
        if !request.stream {
            return match download.ended().await {
                Ok(()) => Ok(None),
                Err(message) => Err(ArtifactError::Origin {
                    url: request.url.to_string(),
                    message,
                }),
            };
        }
        let mut headers = download.headers.clone();
        headers.insert(
            "cache-status",
            HeaderValue::from_static("cairn; fwd=miss; collapsed"),
        );
        if rules::client_not_modified(&request.headers, download.status.as_u16(), &headers) {
            return Ok(Some(Served {
                status: StatusCode::NOT_MODIFIED,
                headers: rules::not_modified_fields(&headers),
                body: ServedBody::Empty,
                how: How::Miss,
                row: None,
            }));
        }
        Ok(Some(Served {
            status: download.status,
            headers,
            body: ServedBody::Stream(self.spooled(download, true)),
            how: How::Miss,
            row: None,
        }))
    }

    /// The body of `download` from byte 0, read from the blob store's file
    /// as it is written (each read waits for progress, so memory stays at
    /// one chunk per reader). It ends once the entry is recorded: while the
    /// download runs, the last byte of an announced length is held back,
    /// so a client that read the whole body finds it stored. It fails
    /// (cutting the response) when the download fails. `followed`: bytes
    /// counted as served from the store (a follower's; the leader's came
    /// from the origin).
    fn spooled(
        self: &Arc<Self>,
        download: Arc<Download>,
        followed: bool,
    ) -> BoxStream<'static, Result<Bytes, io::Error>> {
        let cache = self.clone();
        let progress = download.progress.clone();
        futures::stream::unfold(Some((0u64, progress)), move |state| {
            let (cache, download) = (cache.clone(), download.clone());
            async move {
                let (at, mut progress) = state?;
                if at == 0 {
                    // The body's first poll always gives the HTTP server a
                    // turn first: hyper writes a response's head with its
                    // first body bytes, and drops it (cutting the
                    // connection before any status) when the body fails
                    // before that; a pending first poll makes it flush the
                    // head. So every client of a failed download sees the
                    // same, whichever way and however early it failed: its
                    // status, then the cut.
                    tokio::task::yield_now().await;
                }
                loop {
                    let now = progress.borrow_and_update().clone();
                    let readable = match &now.end {
                        Some(Err(why)) => {
                            return Some((Err(io::Error::other(why.clone())), None));
                        }
                        Some(Ok(())) => now.written,
                        None => match download.content_length {
                            Some(length) => now.written.min(length.saturating_sub(1)),
                            None => now.written,
                        },
                    };
                    if at < readable {
                        let len = (readable - at).min(STORE_CHUNK_BYTES as u64) as usize;
                        let spool = download.spool.clone();
                        let read = tokio::task::spawn_blocking(move || {
                            let mut buf = vec![0u8; len];
                            let n = spool.read_at(at, &mut buf)?;
                            buf.truncate(n);
                            Ok::<_, io::Error>(buf)
                        })
                        .await
                        .unwrap_or_else(|e| {
                            Err(io::Error::other(format!("read task failed: {e}")))
                        });
                        return match read {
                            Ok(buf) if !buf.is_empty() => {
                                let n = buf.len() as u64;
                                if followed {
                                    bump(&cache.stats.bytes_from_store, n);
                                }
                                Some((Ok(Bytes::from(buf)), Some((at + n, progress))))
                            }
                            Ok(_) => Some((
                                Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    format!(
                                        "the download's file ended at {at} of {readable} bytes"
                                    ),
                                )),
                                None,
                            )),
                            Err(e) => Some((Err(e), None)),
                        };
                    }
                    if now.end.is_some() {
                        return None;
                    }
                    if progress.changed().await.is_err() {
                        return Some((Err(io::Error::other(DOWNLOAD_STOPPED)), None));
                    }
                }
            }
        })
        .boxed()
    }

    /// A stored entry as a response: `headers` (the policy's, with `Age`),
    /// a 304 for a matching client conditional, no body for `HEAD`.
    fn stored_response(
        &self,
        request: &CacheRequest,
        row: ArtifactRow,
        mut headers: HeaderMap,
        how: How,
    ) -> Served {
        let status_text = match how {
            How::Hit => "cairn; hit",
            How::Revalidated => "cairn; fwd=stale; fwd-status=304",
            How::Stale => "cairn; hit; detail=stale",
            How::Miss => "cairn; fwd=miss; stored",
            How::Pass => "cairn; fwd=method",
        };
        headers.insert("cache-status", HeaderValue::from_static(status_text));
        if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(self.clock.now())) {
            headers.insert(header::DATE, date);
        }
        let status = StatusCode::from_u16(row.status as u16).unwrap_or(StatusCode::OK);
        if rules::client_not_modified(&request.headers, status.as_u16(), &headers) {
            return Served {
                status: StatusCode::NOT_MODIFIED,
                headers: rules::not_modified_fields(&headers),
                body: ServedBody::Empty,
                how,
                row: Some(row),
            };
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(row.size));
        let body = if request.method == Method::HEAD {
            ServedBody::Empty
        } else {
            bump(&self.stats.bytes_from_store, row.size);
            match Digest::parse(&row.digest) {
                Some(digest) => ServedBody::Stored {
                    digest,
                    size: row.size,
                },
                None => ServedBody::Empty,
            }
        };
        Served {
            status,
            headers,
            body,
            how,
            row: Some(row),
        }
    }

    /// Sends `parts` to the origin (bounded by `artifact.origin-timeout`
    /// until the response's head).
    async fn send(
        &self,
        proxy: bool,
        parts: &http::request::Parts,
        url: &url::Url,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, ArtifactError> {
        let client = if proxy {
            &self.proxy_client
        } else {
            &self.fetch_client
        };
        // One `artifact.origin` span per origin request (revalidations
        // included); the origin gets its trace context.
        let span = tracing::info_span!("artifact.origin", method = %parts.method, proxy);
        let mut headers = rules::forwardable(&parts.headers);
        span.in_scope(|| crate::trace::inject_http(&mut headers));
        let mut builder = client
            .request(parts.method.clone(), url.clone())
            .headers(headers);
        if let Some(body) = body {
            builder = builder.body(body);
        }
        bump(&self.stats.origin_requests, 1);
        let timeout = self.config.origin_timeout;
        let sent =
            tracing::Instrument::instrument(tokio::time::timeout(timeout, builder.send()), span);
        match sent.await {
            Err(_) => Err(ArtifactError::OriginTimeout {
                url: url.to_string(),
                after: timeout,
            }),
            Ok(Err(e)) if e.is_timeout() => Err(ArtifactError::OriginTimeout {
                url: url.to_string(),
                after: timeout,
            }),
            Ok(Err(e)) => Err(ArtifactError::Origin {
                url: url.to_string(),
                message: error_chain(&e),
            }),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// A `HEAD` with nothing stored: forwarded, not stored.
    async fn pass_head(&self, request: &CacheRequest) -> Result<Served, ArtifactError> {
        let uri: http::Uri = request
            .url
            .as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| ArtifactError::bad_url("url", e.to_string()))?;
        let parts = rules::own_request(Method::HEAD, uri, &request.headers);
        let response = self.send(request.proxy, &parts, &request.url, None).await?;
        let mut headers = rules::forwardable(response.headers());
        headers.insert("cache-status", HeaderValue::from_static("cairn; fwd=miss"));
        Ok(Served {
            status: response.status(),
            headers,
            body: ServedBody::Empty,
            how: How::Miss,
            row: None,
        })
    }

    /// Forwards a request that is not `GET`/`HEAD` with its body; a
    /// successful unsafe one invalidates (RFC 9111 §4.4).
    async fn forward(&self, mut request: CacheRequest) -> Result<Served, ArtifactError> {
        let uri: http::Uri = request
            .url
            .as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| ArtifactError::bad_url("url", e.to_string()))?;
        let (mut parts, ()) = http::Request::builder()
            .method(request.method.clone())
            .uri(uri)
            .body(())
            .expect("valid")
            .into_parts();
        parts.headers = rules::forwardable(&request.headers);
        let body = request.body.take();
        let response = self.send(true, &parts, &request.url, body).await?;
        let status = response.status();
        if rules::is_unsafe(&request.method) && (status.is_success() || status.is_redirection()) {
            for (url, field) in rules::invalidated_urls(&request.url, response.headers()) {
                let reason = if field.is_empty() {
                    request.method.to_string()
                } else {
                    format!("{} {field}", request.method)
                };
                self.invalidate(url.as_str(), &reason).await?;
            }
        }
        let mut headers = rules::forwardable(response.headers());
        headers.insert(
            "cache-status",
            HeaderValue::from_static("cairn; fwd=method"),
        );
        let idle = self.config.origin_timeout;
        Ok(Served {
            status,
            headers,
            body: ServedBody::Stream(idle_bounded(response.bytes_stream(), idle).boxed()),
            how: How::Pass,
            row: None,
        })
    }

    /// Drops every stored response of `url` (when there is one): answers
    /// whether there was.
    pub async fn invalidate(&self, url: &str, reason: &str) -> Result<bool, ArtifactError> {
        // The stream's writer (on a cluster its owner, whose rows are
        // current) appends only when the URL has a stored response; the
        // LRU order follows the commit (`observe`).
        let invalidated = self
            .execute(
                url,
                ArtifactCommand::Invalidate(ArtifactInvalidated {
                    url: url.to_owned(),
                    reason: reason.to_owned(),
                }),
            )
            .await?;
        debug!(url, reason, invalidated, "artifact invalidated");
        Ok(invalidated > 0)
    }

    /// One conditional request for stale `row`: a 304 updates its fields
    /// and serves the stored body; a full response replaces it.
    async fn revalidate(
        self: &Arc<Self>,
        request: &mut CacheRequest,
        guard: FlightGuard,
        row: ArtifactRow,
        policy: http_cache_semantics::CachePolicy,
        revalidation: http::request::Parts,
    ) -> Result<Served, ArtifactError> {
        let response = self
            .send(request.proxy, &revalidation, &request.url, None)
            .await?;
        let now = self.clock.now();
        if response.status() != StatusCode::NOT_MODIFIED {
            bump(&self.stats.revalidated_200, 1);
            return self.fetch(request, Some(guard), Some(response)).await;
        }
        let (mut res, ()) = http::Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .body(())
            .expect("valid")
            .into_parts();
        res.headers = response.headers().clone();
        let own = rules::own_request(Method::GET, revalidation.uri.clone(), &request.headers);
        match policy.after_response(&own, &res, now) {
            AfterResponse::NotModified(new_policy, _) => {
                bump(&self.stats.revalidated_304, 1);
                let fields = merge_304(&row.headers, &res.headers);
                let key = row.key.clone().unwrap_or_default();
                self.execute(
                    &key.url,
                    ArtifactCommand::Revalidate(ArtifactRevalidated {
                        key: Some(key.clone()),
                        headers: fields.clone(),
                        response_time: Some(crate::repository::timestamp(now)),
                    }),
                )
                .await?;
                drop(guard);
                let mut updated = row;
                updated.headers = fields;
                updated.response_time = Some(crate::repository::timestamp(now));
                let policy = rules::policy_of(&updated, &own);
                let _ = new_policy;
                let headers = match policy.before_request(&own, now) {
                    BeforeRequest::Fresh(parts) => parts.headers,
                    BeforeRequest::Stale { .. } => self.stale_headers(&policy, &updated, now),
                };
                Ok(self.stored_response(request, updated, headers, How::Revalidated))
            }
            AfterResponse::Modified(..) => {
                // A 304 whose validators match nothing stored: fetch it whole.
                drop(guard);
                let guard = self.lead(request.url.as_str());
                self.fetch(request, guard, None).await
            }
        }
    }

    /// Downloads `request` (or takes `response`, already received): stored
    /// when storable, streamed to the caller when it asked.
    async fn fetch(
        self: &Arc<Self>,
        request: &mut CacheRequest,
        guard: Option<FlightGuard>,
        response: Option<reqwest::Response>,
    ) -> Result<Served, ArtifactError> {
        let uri: http::Uri = request
            .url
            .as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| ArtifactError::bad_url("url", e.to_string()))?;
        let own = rules::own_request(Method::GET, uri, &request.headers);
        let response = match response {
            Some(r) => r,
            None => self.send(request.proxy, &own, &request.url, None).await?,
        };
        let now = self.clock.now();
        let status = response.status();
        let (mut res, ()) = http::Response::builder()
            .status(status)
            .body(())
            .expect("valid")
            .into_parts();
        res.headers = response.headers().clone();
        let content_length = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let idle = self.config.origin_timeout;
        let body = idle_bounded(response.bytes_stream(), idle);
        let mut headers = rules::forwardable(&res.headers);
        if !rules::storable(&own, &res, now) {
            headers.insert("cache-status", HeaderValue::from_static("cairn; fwd=miss"));
            drop(guard);
            let stats = self.clone();
            let body = body.inspect(move |chunk| {
                if let Ok(c) = chunk {
                    bump(&stats.stats.bytes_from_origin, c.len() as u64);
                }
            });
            return Ok(Served {
                status,
                headers,
                body: ServedBody::Stream(body.boxed()),
                how: How::Miss,
                row: None,
            });
        }
        headers.insert(
            "cache-status",
            HeaderValue::from_static("cairn; fwd=miss; stored"),
        );
        let vary = key::vary_names(&res.headers).unwrap_or_default();
        let entry_key = ArtifactKey {
            method: INDEXED_METHOD.to_owned(),
            url: request.url.to_string(),
            vary_key: key::vary_key(&vary, &request.headers),
        };
        let stored = ArtifactStored {
            key: Some(entry_key),
            status: u32::from(status.as_u16()),
            headers: rules::fields_to_store(&res.headers),
            vary,
            digest: String::new(),
            size: 0,
            response_time: Some(crate::repository::timestamp(now)),
            upstream: request.upstream.clone(),
        };
        let store = self.store.clone();
        let writer = tokio::task::spawn_blocking(move || store.blob_writer())
            .await
            .map_err(|e| ArtifactError::NotFound(format!("blob task failed: {e}")))??;
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let vary_key = stored
            .key
            .as_ref()
            .map(|k| k.vary_key.clone())
            .unwrap_or_default();
        let mut shared_headers = headers.clone();
        shared_headers.remove("cache-status");
        let shared = Arc::new(Download {
            status,
            headers: shared_headers,
            content_length,
            vary: stored.vary.clone(),
            vary_key,
            spool: writer.spool(),
            progress: progress_rx,
        });
        if let Some(guard) = &guard {
            guard.downloading(shared.clone());
        }
        // The download is a task of its own: the caller going away (the
        // leader's client disconnecting) leaves it to the followers and the
        // store.
        let download = tokio::spawn(self.clone().download(
            body,
            content_length,
            stored,
            writer,
            progress_tx,
            guard,
        ));
        if request.stream {
            return Ok(Served {
                status,
                headers,
                body: ServedBody::Stream(self.spooled(shared, false)),
                how: How::Miss,
                row: None,
            });
        }
        let row = download
            .await
            .map_err(|e| ArtifactError::NotFound(format!("download task failed: {e}")))??;
        let headers = HeaderMap::new();
        let mut served = self.stored_response(request, row, headers, How::Miss);
        served.headers = {
            let mut h = rules::header_map(
                &served
                    .row
                    .as_ref()
                    .map(|r| r.headers.clone())
                    .unwrap_or_default(),
            );
            for name in rules::HOP_BY_HOP {
                h.remove(*name);
            }
            h.insert(header::AGE, HeaderValue::from(0u64));
            h.insert(
                "cache-status",
                HeaderValue::from_static("cairn; fwd=miss; stored"),
            );
            if let Some(r) = &served.row {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.size));
            }
            h
        };
        Ok(served)
    }

    /// Reads `body` to the end into `writer` (the blob store's file, which
    /// the readers of the download follow through `progress`); records
    /// `ArtifactStored` only when complete and of `content_length` bytes,
    /// then says so in `progress` (after the limits are applied: a request
    /// after it finds the store as it will stay). A failure stores nothing
    /// and is said in `progress`, which cuts every reader. Answers the
    /// stored row.
    async fn download(
        self: Arc<Self>,
        mut body: impl futures::Stream<Item = Result<Bytes, io::Error>> + Unpin + Send,
        content_length: Option<u64>,
        mut stored: ArtifactStored,
        writer: BlobWriter,
        progress: watch::Sender<Progress>,
        guard: Option<FlightGuard>,
    ) -> Result<ArtifactRow, ArtifactError> {
        let url = stored
            .key
            .as_ref()
            .map(|k| k.url.clone())
            .unwrap_or_default();
        let progress = Arc::new(progress);
        let (blob_tx, mut blob_rx) = mpsc::channel::<Result<Bytes, io::Error>>(CHUNKS_QUEUED_MAX);
        let written = progress.clone();
        let put = tokio::task::spawn_blocking(move || {
            let mut writer = writer;
            while let Some(chunk) = blob_rx.blocking_recv() {
                // An `Err` chunk: the download failed; the writer drops
                // unfinished (its file removed, nothing stored).
                let chunk = chunk.map_err(|e| cairn_storage::StorageError::io("downloading", e))?;
                writer.write(&chunk)?;
                let at = writer.written();
                written.send_modify(|p| p.written = at);
            }
            writer.finish()
        });
        let mut total: u64 = 0;
        let mut failure: Option<String> = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    total += chunk.len() as u64;
                    bump(&self.stats.bytes_from_origin, chunk.len() as u64);
                    if blob_tx.send(Ok(chunk)).await.is_err() {
                        failure = Some("the blob store stopped reading".to_owned());
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        if failure.is_none() {
            if let Some(expected) = content_length {
                if expected != total {
                    failure = Some(format!(
                        "body ended after {total} of {expected} bytes (Content-Length)"
                    ));
                }
            }
        }
        if let Some(why) = failure {
            bump(&self.stats.truncated, 1);
            warn!(url = %url, error = %why, "download failed; nothing stored");
            let _ = blob_tx.send(Err(io::Error::other(why.clone()))).await;
            drop(blob_tx);
            let _ = put.await;
            progress.send_modify(|p| p.end = Some(Err(why.clone())));
            drop(guard);
            return Err(ArtifactError::Origin { url, message: why });
        }
        drop(blob_tx);
        let recorded = async {
            let pin = put
                .await
                .map_err(|e| ArtifactError::NotFound(format!("blob task failed: {e}")))??;
            stored.digest = pin.digest().to_string();
            stored.size = total;
            let key = stored.key.clone().unwrap_or_default();
            self.execute(&url, ArtifactCommand::Store { event: stored, pin })
                .await?;
            Ok::<_, ArtifactError>(key)
        }
        .await;
        let key = match recorded {
            Ok(key) => key,
            Err(e) => {
                warn!(url = %url, error = %e, "download not recorded; nothing stored");
                progress.send_modify(|p| p.end = Some(Err(e.to_string())));
                return Err(e);
            }
        };
        bump(&self.stats.stored, 1);
        self.recency.lock().put(ArtifactsView::entry_key(&key), ());
        drop(guard);
        // On a cluster the evicting node applies the limits (woken by the
        // store's commit, see `cluster`).
        if self.cluster.is_none() {
            if let Err(e) = self.enforce_limits().await {
                warn!(error = %e, "artifact eviction failed");
            }
        }
        // The readers' bodies end once the entry is recorded and the limits
        // applied.
        progress.send_modify(|p| p.end = Some(Ok(())));
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || ArtifactsView::get(&store, &key))
            .await
            .map_err(|e| ArtifactError::NotFound(format!("lookup task failed: {e}")))??
            .ok_or_else(|| ArtifactError::NotFound(format!("{url} was evicted as soon as stored")))
    }

    /// Evicts least recently used entries while over `max-entries` or
    /// `max-bytes` (at most [`EVICTIONS_PER_PASS_MAX`] per pass).
    pub async fn enforce_limits(&self) -> Result<(), ArtifactError> {
        let _one = self.evicting.lock().await;
        for _ in 0..EVICTIONS_PER_PASS_MAX {
            let store = self.store.clone();
            let totals = tokio::task::spawn_blocking(move || ArtifactsView::totals(&store))
                .await
                .map_err(|e| ArtifactError::NotFound(format!("lookup task failed: {e}")))??;
            if totals.entries <= self.config.max_entries && totals.bytes <= self.config.max_bytes {
                return Ok(());
            }
            let Some((victim, ())) = self.recency.lock().pop_lru() else {
                return Ok(());
            };
            let store = self.store.clone();
            let row = tokio::task::spawn_blocking(move || store.view_get_message_row(&victim))
                .await
                .map_err(|e| ArtifactError::NotFound(format!("lookup task failed: {e}")))??;
            if let Some(row) = row {
                self.evict_row(&row, "lru").await?;
            }
        }
        Ok(())
    }

    /// Evicts one stored entry, unless its stream's writer finds it
    /// changed since `row` was read (stored again, revalidated, gone):
    /// answers whether it was evicted.
    pub async fn evict_row(&self, row: &ArtifactRow, reason: &str) -> Result<bool, ArtifactError> {
        let key = row.key.clone().unwrap_or_default();
        self.recency.lock().pop(&ArtifactsView::entry_key(&key));
        let evicted = self
            .execute(
                &key.url,
                ArtifactCommand::EvictIfCurrent(vec![(
                    ArtifactEvicted {
                        key: Some(key.clone()),
                        digest: row.digest.clone(),
                        reason: reason.to_owned(),
                    },
                    row.stream_version,
                )]),
            )
            .await?;
        if evicted == 0 {
            debug!(url = %key.url, reason, "artifact entry changed meanwhile; not evicted");
            return Ok(false);
        }
        bump(&self.stats.evictions, evicted);
        info!(url = %key.url, digest = %row.digest, reason, "artifact evicted");
        Ok(true)
    }

    /// Evicts every stored variant of `url` (decided by its stream's
    /// writer, on a cluster its owner); answers how many went.
    pub async fn evict_url(&self, url: &str, reason: &str) -> Result<u64, ArtifactError> {
        let evicted = self
            .execute(
                url,
                ArtifactCommand::EvictUrl {
                    url: url.to_owned(),
                    reason: reason.to_owned(),
                },
            )
            .await?;
        bump(&self.stats.evictions, evicted);
        info!(url, evicted, reason, "artifact evicted");
        Ok(evicted)
    }

    /// Evicts every stored entry whose body is `digest`: each partition's
    /// writer (on a cluster its owner) evicts its entries, all at once;
    /// answers how many went. A partition's part is all or nothing, the
    /// whole not: a failure names what the others evicted.
    pub async fn evict_digest(&self, digest: &str, reason: &str) -> Result<u64, ArtifactError> {
        let partitions: Vec<u32> = if self.cluster.is_some() {
            // The owners decide: this node's replica may lag.
            (0..PARTITIONS).collect()
        } else {
            let store = self.store.clone();
            let d = digest.to_owned();
            let keys = tokio::task::spawn_blocking(move || {
                ArtifactsView::keys_of_digest(&store, &d, super::domain::EVICT_DIGEST_MAX_ENTRIES)
            })
            .await
            .map_err(|e| ArtifactError::NotFound(format!("lookup task failed: {e}")))??;
            let mut found: Vec<u32> = keys.iter().map(|k| partition(&k.url)).collect();
            found.sort_unstable();
            found.dedup();
            found
        };
        let parts = partitions.iter().map(|p| {
            let command = ArtifactCommand::EvictDigest {
                digest: digest.to_owned(),
                reason: reason.to_owned(),
            };
            async move {
                match &self.cluster {
                    Some(_) => self.execute_clustered(*p, command).await,
                    None => self.run_local(*p, command, None).await,
                }
            }
        });
        let outcomes = futures::future::join_all(parts).await;
        let mut evicted = 0;
        let mut failed = Vec::new();
        for (p, outcome) in partitions.iter().zip(outcomes) {
            match outcome {
                Ok(n) => evicted += n,
                Err(e) => failed.push((StreamId::artifact(*p), e)),
            }
        }
        bump(&self.stats.evictions, evicted);
        info!(digest, evicted, reason, "artifact body evicted");
        let Some((_, first)) = failed.first() else {
            return Ok(evicted);
        };
        let names: Vec<String> = failed.iter().map(|(s, _)| s.to_string()).collect();
        Err(ArtifactError::Cluster {
            code: first.status(),
            message: format!(
                "evicting from {} failed ({first}); the other partitions evicted {evicted} entries; retry to finish",
                names.join(", ")
            ),
        })
    }
}

/// What one round of [`ArtifactCache::serve`] came to.
enum Attempt {
    Done(Box<Served>),
    /// Another request downloads this URL: wait for it, then start over.
    Joined(Flight),
    /// Another cluster node stored or revalidated this URL (applied here
    /// now): start over.
    Again,
}

/// The stored entry for `url` and request `headers`, if any.
pub fn lookup_blocking(
    store: &Store,
    url: &str,
    headers: &HeaderMap,
) -> Result<Option<ArtifactRow>, ArtifactError> {
    let Some(variants) = ArtifactsView::variants(store, INDEXED_METHOD, url)? else {
        return Ok(None);
    };
    let key = ArtifactKey {
        method: INDEXED_METHOD.to_owned(),
        url: url.to_owned(),
        vary_key: key::vary_key(&variants.vary, headers),
    };
    Ok(ArtifactsView::get(store, &key)?)
}

/// A stored entry, with its body when small and read with it.
type Found = (ArtifactRow, Option<Bytes>);

/// [`lookup_blocking`] with the small body, answered only from what the
/// store holds in memory (row cache, memtables, block cache: microseconds,
/// never a disk read — so it may run on an async thread, the node's
/// arbiter's included): `None` when the answer needs a read from a file.
/// The body is `None` when it is larger than [`SMALL_BODY_BYTES`], a
/// file, or not in memory (the caller streams it from the store).
fn lookup_in_memory(
    store: &Store,
    url: &str,
    headers: &HeaderMap,
) -> Result<Option<Option<Found>>, ArtifactError> {
    let variants = match ArtifactsView::variants_in_memory(store, INDEXED_METHOD, url)? {
        None => return Ok(None),
        Some(None) => return Ok(Some(None)),
        Some(Some(v)) => v,
    };
    let key = ArtifactKey {
        method: INDEXED_METHOD.to_owned(),
        url: url.to_owned(),
        vary_key: key::vary_key(&variants.vary, headers),
    };
    let row = match ArtifactsView::get_in_memory(store, &key)? {
        None => return Ok(None),
        Some(None) => return Ok(Some(None)),
        Some(Some(row)) => row,
    };
    let body = match Digest::parse(&row.digest) {
        Some(d) if row.size <= SMALL_BODY_BYTES => {
            store.blob_row_in_memory(&d)?.flatten().map(Bytes::from)
        }
        _ => None,
    };
    Ok(Some(Some((row, body))))
}

/// Stored fields updated with a 304's (RFC 9111 §4.3.4): each field the
/// 304 carries replaces the stored ones of its name (but for the body's
/// framing: `Content-Length`, `Content-Encoding`, `Content-Range`), new
/// ones are added, and a stored `Age` goes when the 304 has none (the age
/// restarts at the 304).
pub fn merge_304(stored: &[HeaderField], update: &HeaderMap) -> Vec<HeaderField> {
    const KEEP: &[&str] = &[
        "content-length",
        "content-encoding",
        "content-range",
        "transfer-encoding",
    ];
    let replaced = |name: &str| !KEEP.contains(&name) && update.contains_key(name);
    let mut out: Vec<HeaderField> = stored
        .iter()
        .filter(|f| !replaced(&f.name) && f.name != "age")
        .cloned()
        .collect();
    for f in rules::fields_to_store(update) {
        if !KEEP.contains(&f.name.as_str()) {
            out.push(f);
        }
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// `body` with each read bounded by `idle` and errors as `io::Error`.
fn idle_bounded(
    body: impl futures::Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    idle: std::time::Duration,
) -> impl futures::Stream<Item = Result<Bytes, io::Error>> + Unpin + Send + 'static {
    Box::pin(futures::stream::unfold(
        Some(Box::pin(body)),
        move |state| async move {
            let mut body = state?;
            match tokio::time::timeout(idle, body.next()).await {
                Err(_) => Some((
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no data within {idle:?} (artifact.origin-timeout)"),
                    )),
                    None,
                )),
                Ok(None) => None,
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
                Ok(Some(Err(e))) => Some((Err(io::Error::other(error_chain(&e))), None)),
            }
        },
    ))
}

/// Bytes read from the store per chunk when serving a stored body.
const STORED_CHUNK_BYTES: usize = 1 << 20;
/// Chunks of a stored body read ahead of its client.
const STORED_CHUNKS_QUEUED_MAX: usize = 4;
/// Buffers a stored body's reader keeps for reuse: those queued, those
/// the HTTP server holds while writing, the one being read into.
const STORED_BUFFERS_MAX: usize = STORED_CHUNKS_QUEUED_MAX + 4;

/// A chunk of a stored body, read into a buffer of its reader's pool: once
/// the HTTP server has written it and drops it, the buffer goes back to
/// the pool (or is freed when the pool is full or gone).
struct PooledChunk {
    buf: Vec<u8>,
    len: usize,
    pool: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl AsRef<[u8]> for PooledChunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PooledChunk {
    fn drop(&mut self) {
        let _ = self.pool.try_send(std::mem::take(&mut self.buf));
    }
}

/// Fills `buf` from `reader` as far as it goes (fewer bytes only at the
/// end of the blob).
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Streams stored blob `digest`, read ahead on the blocking pool by one
/// task in chunks of [`STORED_CHUNK_BYTES`], at most
/// [`STORED_CHUNKS_QUEUED_MAX`] ahead of the client. The chunks' buffers
/// are reused once written (at most [`STORED_BUFFERS_MAX`] per body):
/// a fresh buffer per chunk cost a page fault per 4 KiB as the allocator
/// handed out new pages, which made a large hit several times slower.
pub fn stored_body(
    store: Store,
    digest: Digest,
) -> impl futures::Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(STORED_CHUNKS_QUEUED_MAX);
    tokio::task::spawn_blocking(move || {
        let mut reader = match store.open_blob(&digest) {
            Ok(Some(r)) => r,
            Ok(None) => {
                let _ = tx.blocking_send(Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("body {digest} is missing"),
                )));
                return;
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
                return;
            }
        };
        let chunk_bytes = (reader.size() as usize).clamp(1, STORED_CHUNK_BYTES);
        let (pool, reused) = std::sync::mpsc::sync_channel::<Vec<u8>>(STORED_BUFFERS_MAX);
        loop {
            let mut buf = reused.try_recv().unwrap_or_else(|_| vec![0u8; chunk_bytes]);
            match read_full(&mut reader, &mut buf) {
                Ok(0) => return,
                Ok(len) => {
                    let chunk = Bytes::from_owner(PooledChunk {
                        buf,
                        len,
                        pool: pool.clone(),
                    });
                    if tx.blocking_send(Ok(chunk)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// Scan helpers on the concrete store used by the start-up cleanup.
trait ArtifactScan {
    fn view_scan_messages_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, ArtifactRow)>, ArtifactError>;
    fn view_get_message_row(&self, key: &[u8]) -> Result<Option<ArtifactRow>, ArtifactError>;
}

impl ArtifactScan for Store {
    fn view_scan_messages_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, ArtifactRow)>, ArtifactError> {
        use cairn_storage::ViewReadExt;
        Ok(self.view_scan_messages(ArtifactsView::NAME, prefix, after, 1024)?)
    }

    fn view_get_message_row(&self, key: &[u8]) -> Result<Option<ArtifactRow>, ArtifactError> {
        use cairn_storage::ViewReadExt;
        Ok(self.view_get_message(ArtifactsView::NAME, key)?)
    }
}
