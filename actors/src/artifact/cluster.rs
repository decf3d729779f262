//! The artifact cache on a cluster node (`cluster.enabled`).
//!
//! The same pieces as the key-value cache's (README, "The key-value cache
//! on a cluster"), with one difference that shapes the rest: an artifact
//! write carries a body, possibly large, that a client is waiting for.
//!
//! - **Owners.** Each of the 16 streams `artifact/00` … `artifact/15` has a
//!   lease like a repository (listed by the node's holder, placed by
//!   rendezvous hashing, moved on failover, handed over on SIGTERM). The
//!   owner runs the stream's writer ([`ArtifactCache::own`] /
//!   [`ArtifactCache::disown`]), which appends through the replicated log
//!   (`ClusterAppend`: fenced, answered once applied here). No other node
//!   runs a writer for it.
//! - **Hits never cross nodes.** Every node answers `GET /u/…`,
//!   `/v1/artifacts?url=` and `artifact.get` from its own replica (the
//!   `artifacts` view and its blob store) when the entry is stored and
//!   fresh.
//! - **Misses and revalidations: the node that received the request talks
//!   to the origin** and streams the body to its client while it writes it
//!   to its own blob store (exactly as a single node does). Once the body
//!   is complete it ships it to `CAIRN_BLOBS` and sends the stream's owner
//!   the small record (`ArtifactStored`, or `ArtifactRevalidated` for a
//!   304) on the internal endpoint `cairn.v1.artifact.record`
//!   ([`ArtifactCache::apply_record`]); the owner takes the body from
//!   `CAIRN_BLOBS` (a digest check) and appends. Every other node's
//!   applier fetches the body before it applies the event, as it does for
//!   repository resources — so every node holds every stored body, and a
//!   hit anywhere reads a local file. The requesting node waits until it
//!   applied the owner's commit before its client gets the last byte, so a
//!   request after it finds the entry there. Bodies never travel through
//!   the owner's request path: only a record does.
//! - **Records are idempotent.** Every record that appends (a store, a
//!   revalidation, an invalidation, an eviction) gets an idempotency key
//!   when it is made (`art-<uuid v7>`, with the digest of the endpoint and
//!   the record, [`crate::service::idempotency::key_of`]) and carries it
//!   on every attempt — in `Cairn-Request-Id` to an owner, or to this
//!   node's own writer when the stream is (or came) here. The owner's
//!   writer records the key in the envelope of the events it appends
//!   (`Envelope.request_id`, folded into the replicated `requests` view)
//!   and, before it appends, looks the key up there
//!   ([`super::domain`]): a record sent again after its answer was lost
//!   (a timeout, a connection gone, an owner that died after appending)
//!   appends nothing and answers the count its first run appended —
//!   whether it reaches the same owner or, after a failover, the next one
//!   (which applied the log up to its fence before writing). Claims and
//!   releases append nothing and carry no key.
//! - **Single flight across the cluster.** Before it asks the origin, the
//!   node that leads a URL's flight on this node claims the URL from the
//!   stream's owner (`ArtifactCache::claim_flight`): the owner answers
//!   `lead` (no other node downloads it: go), `wait` (another live node
//!   does: ask again every [`CLAIM_POLL`], until it ends — its record, or
//!   its release — then look again: a hit, once applied here), or `behind`
//!   (the owner holds a newer entry of the URL than this replica: apply up
//!   to the owner's seq, then look again). A claim ends with the leader's
//!   record, its release (a download that failed or was not storable), the
//!   leader leaving the cluster, or after [`CLAIM_MAX_AGE`]. A node waits
//!   for another's download at most `artifact.origin-timeout`, then
//!   downloads itself. Claims live in the owner's memory: a new owner
//!   starts without them (a download in flight across a failover may be
//!   made twice). If the owner cannot be reached, the node downloads
//!   without a claim. The background revalidation of
//!   `stale-while-revalidate` is claimed the same way, so it is made once
//!   per cluster: a node serving a stale entry claims the URL (with the
//!   stale entry's stream version) before its conditional request; on
//!   `wait` it polls until the other node's revalidation is recorded, then
//!   finds itself `behind` and does nothing; on `behind` (another node
//!   revalidated or stored it already) it does nothing either.
//! - **Removals are decided by the owner.** Every write goes through the
//!   stream's owner, whose writer checks what removes entries against its
//!   rows as they are (see [`super::domain`]): an invalidation (an unsafe
//!   method through any node's proxy) appends only when the URL has a
//!   stored response on the owner — not the node that saw the request,
//!   whose replica may lag; an eviction (`lru`, `max-age` at lookup,
//!   `missing-body` at start-up) evicts an entry only while its row is the
//!   one the evicting node saw, so two nodes evicting one entry append one
//!   event and a fresh store is never evicted by a stale decision;
//!   `artifact.evict {url}` is decided by the URL's owner,
//!   `artifact.evict {digest}` by each partition's owner (16 parts, all at
//!   once; each all or nothing, the whole not).
//! - **LRU limits** (`artifact.max-bytes`, `max-entries`) are totals over
//!   the 16 streams, which have different owners: one node applies them,
//!   the holder of the lease [`EVICTOR_ROLE`] ([`ArtifactCache::start_evictor`]),
//!   woken by every store it applies (and every [`EVICTOR_TICK`]; a pass
//!   that failed is tried again after [`EVICTOR_RETRY`]); it
//!   picks least recently used entries and sends each eviction to its
//!   stream's owner. Its order is the log's order of stores (the same on
//!   every node, kept by the [`super::observe`] observer) and the hits it
//!   served itself: hits served by other nodes do not count. On a single
//!   node the limits apply right after each store, as before; on a
//!   cluster a little after.
//! - **Start-up.** A node seeds its order from its replica; an entry whose
//!   body file is missing gets it from `CAIRN_BLOBS` once the node joined,
//!   and only if that fails is it evicted (through its owner).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::Actor as _;
use cairn_events::{
    v1::{
        artifact_record_request::Command, ArtifactClaim, ArtifactEvicted, ArtifactEvictions,
        ArtifactKey, ArtifactRecordReply, ArtifactRecordRequest, ArtifactRow,
    },
    StreamId,
};
use cairn_storage::{
    views::{artifacts::INDEXED_METHOD, ArtifactsView},
    BlobPin, Digest, EventLog as _, Store,
};
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    cache::ArtifactCache,
    domain::{ArtifactCommand, ArtifactState, ArtifactWriter},
    key::{self, partition},
    ArtifactError, PARTITIONS,
};
use crate::{
    cluster::ClusterAppend,
    service::cluster::{
        forward_on, route, ClusterRouting, Forwarded, Route, REROUTE_PAUSE, REROUTE_WINDOW,
    },
    service::idempotency::{self, RequestKey, REQUEST_ID_HEADER},
};

/// The pseudo-stream whose lease makes a node the one that applies the
/// artifact cache's LRU limits.
pub const EVICTOR_ROLE: &str = "role/artifact-evictor";
/// The endpoint records and claims are sent to.
pub const RECORD_ENDPOINT: &str = "cairn.v1.artifact.record";
/// How often a node waiting for another node's download asks the owner
/// again.
pub const CLAIM_POLL: Duration = Duration::from_millis(200);
/// Longest a claim holds without its record or release.
pub const CLAIM_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// How often the evictor checks the limits when no store woke it.
pub const EVICTOR_TICK: Duration = Duration::from_secs(30);
/// How soon the evictor tries again after a pass that failed.
pub const EVICTOR_RETRY: Duration = Duration::from_secs(1);

/// What a cluster node's artifact cache needs besides a single node's.
#[derive(Debug, Clone)]
pub struct ArtifactClusterParts {
    /// The replicated log the owned streams append through (and blobs
    /// travel with).
    pub appender: ClusterAppend,
    /// The node's NATS connection (records and claims go to owners).
    pub client: async_nats::Client,
    /// Where stream writers start (the ownership loop calls
    /// [`ArtifactCache::own`] from a plain task).
    pub arbiter: actix::ArbiterHandle,
    /// `cluster.read-wait`: how long a node waits to apply what an owner
    /// appended for it.
    pub read_wait: Duration,
}

/// The cluster part of an [`ArtifactCache`].
#[derive(Debug)]
pub(crate) struct ArtifactCluster {
    parts: ArtifactClusterParts,
    routing: watch::Sender<Option<ClusterRouting>>,
    /// Single-flight claims of the URLs of the streams this node owns.
    claims: Mutex<HashMap<String, Claim>>,
    tokens: AtomicU64,
    evictor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A node's claim of a URL's download.
#[derive(Debug, Clone)]
struct Claim {
    node: String,
    token: u64,
    at: Instant,
}

/// What a flight's leader may do (see [`ArtifactCache::claim_flight`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimOutcome {
    /// Download it; the claim's token when the owner recorded one.
    Lead(Option<u64>),
    /// Another node stored or revalidated it: look again.
    Again,
}

impl ArtifactCluster {
    pub(crate) fn new(parts: ArtifactClusterParts) -> Self {
        Self {
            parts,
            routing: watch::channel(None).0,
            claims: Mutex::default(),
            tokens: AtomicU64::new(0),
            evictor: Mutex::new(None),
        }
    }

    fn node(&self) -> &str {
        self.parts.appender.node()
    }

    fn routing(&self) -> Result<ClusterRouting, ArtifactError> {
        self.routing
            .borrow()
            .clone()
            .ok_or_else(|| ArtifactError::Cluster {
                code: 503,
                message: format!(
                    "node {} has not joined the cluster yet: artifact writes wait for it; retry",
                    self.node()
                ),
            })
    }

    pub(crate) fn stop_evictor(&self) {
        if let Some(task) = self.evictor.lock().take() {
            task.abort();
        }
    }
}

/// Whether `e` says the stream is changing hands and nothing ran.
fn is_moving(e: &ArtifactError) -> bool {
    e.status() == 503 && e.to_string().contains("does not own")
}

/// The highest stream version of `url`'s entries in `store` (0: none).
fn url_version(store: &Store, url: &str) -> Result<u64, ArtifactError> {
    let Some(variants) = ArtifactsView::variants(store, INDEXED_METHOD, url)? else {
        return Ok(0);
    };
    let mut version = 0;
    for vary_key in variants.vary_keys {
        let key = ArtifactKey {
            method: INDEXED_METHOD.to_owned(),
            url: url.to_owned(),
            vary_key,
        };
        if let Some(row) = ArtifactsView::get(store, &key)? {
            version = version.max(row.stream_version);
        }
    }
    Ok(version)
}

/// The URL a record is about (empty for digest evictions).
fn record_url(record: &ArtifactRecordRequest) -> Option<&str> {
    Some(match record.command.as_ref()? {
        Command::Stored(e) => e.key.as_ref().map_or("", |k| k.url.as_str()),
        Command::Revalidated(e) => e.key.as_ref().map_or("", |k| k.url.as_str()),
        Command::Invalidate(e) => &e.url,
        Command::Evict(e) => e
            .entries
            .first()
            .and_then(|e| e.key.as_ref())
            .map_or("", |k| k.url.as_str()),
        Command::EvictUrl(url) => url,
        Command::EvictDigest(_) => return None,
        Command::Claim(c) | Command::Release(c) => &c.url,
    })
}

/// A fresh idempotency key for `record` (id `art-<uuid v7>`, digest of
/// the endpoint and the record's JSON, as the owner computes it from the
/// request): every attempt to send it carries this one key.
fn record_key(record: &ArtifactRecordRequest) -> Result<RequestKey, ArtifactError> {
    record_key_with(record, format!("art-{}", cairn_events::envelope::new_id()))
}

/// The idempotency key `id` of `record`: its digest is taken over the
/// record as this build serialises it (what a node sends), so the sender,
/// an owner and a node that forwards it compute the same.
pub fn record_key_with(
    record: &ArtifactRecordRequest,
    id: String,
) -> Result<RequestKey, ArtifactError> {
    let body = serde_json::to_vec(record)
        .map_err(|e| ArtifactError::NotFound(format!("encoding a record: {e}")))?;
    Ok(idempotency::key_of(RECORD_ENDPOINT_NAME, id, &body))
}

/// [`RECORD_ENDPOINT`] without `cairn.v1.`: the endpoint a record's key
/// digests.
pub const RECORD_ENDPOINT_NAME: &str = "artifact.record";

fn task_failed(e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::NotFound(format!("artifact task failed: {e}"))
}

impl ArtifactCache {
    fn cluster_part(&self) -> Result<&ArtifactCluster, ArtifactError> {
        self.cluster
            .as_ref()
            .ok_or_else(|| ArtifactError::NotFound("this node is not in a cluster".to_owned()))
    }

    /// The node joined: writes are routed from now on (and the start-up
    /// cleanup's evictions, and the evictor, go ahead).
    pub fn join(&self, routing: ClusterRouting) {
        if let Some(cluster) = &self.cluster {
            cluster.routing.send_replace(Some(routing));
        }
    }

    /// This node took `partition`'s lease (its log is caught up to the
    /// fence): the stream's writer starts at its version as this node's
    /// log holds it.
    pub async fn own(&self, partition: u32) -> Result<(), ArtifactError> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        if partition >= PARTITIONS || self.writers[partition as usize].read().is_some() {
            return Ok(());
        }
        let store = self.store().clone();
        let stream = StreamId::artifact(partition);
        let s = stream.clone();
        let version = tokio::task::spawn_blocking(move || store.stream_version(&s))
            .await
            .map_err(task_failed)??;
        let state = ArtifactState {
            stream,
            partition,
            version,
        };
        let env = self.env.clone();
        let writer = ArtifactWriter::start_in_arbiter(&cluster.parts.arbiter, move |_| {
            ArtifactWriter::new(state, env)
        });
        *self.writers[partition as usize].write() = Some(writer);
        info!(partition, version, "artifact partition writer started");
        Ok(())
    }

    /// This node gives `partition` up: new writes are routed elsewhere at
    /// once, the writer finishes what it runs and stops; its claims go.
    pub async fn disown(&self, partition: u32) {
        if partition >= PARTITIONS {
            return;
        }
        if let Some(cluster) = &self.cluster {
            cluster
                .claims
                .lock()
                .retain(|url, _| key::partition(url) != partition);
        }
        let writer = self.writers[partition as usize].write().take();
        if let Some(writer) = writer {
            let _ = writer.send(crate::writer::StopWriter).await;
            info!(partition, "artifact partition writer stopped");
        }
    }

    /// This node holds [`EVICTOR_ROLE`]: it applies the limits now and
    /// after every store it applies (and every [`EVICTOR_TICK`]), once
    /// joined.
    pub fn start_evictor(self: &Arc<Self>) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let cache = self.clone();
        let mut joined = cluster.routing.subscribe();
        let task = tokio::spawn(async move {
            if joined.wait_for(Option::is_some).await.is_err() {
                return;
            }
            loop {
                // A pass that failed (an owner moving, the log unavailable)
                // is tried again soon, not at the next tick.
                let pause = match cache.enforce_limits().await {
                    Ok(()) => EVICTOR_TICK,
                    Err(e) => {
                        warn!(error = %e, "artifact eviction failed; trying again");
                        EVICTOR_RETRY
                    }
                };
                tokio::select! {
                    () = cache.observer.stored.notified() => {}
                    () = tokio::time::sleep(pause) => {}
                }
            }
        });
        if let Some(old) = cluster.evictor.lock().replace(task) {
            old.abort();
        }
        info!("this node applies the artifact cache's limits now");
    }

    /// This node gave [`EVICTOR_ROLE`] up.
    pub fn stop_evictor(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.stop_evictor();
        }
    }

    /// The error of a write for a partition this node does not write.
    pub(crate) fn not_owner(&self, p: u32) -> ArtifactError {
        match &self.cluster {
            Some(cluster) => ArtifactError::NotOwner {
                node: cluster.node().to_owned(),
                stream: StreamId::artifact(p).to_string(),
            },
            None => ArtifactError::NotFound("artifact writer unavailable".to_owned()),
        }
    }

    /// The start-up cleanup's entries without a body, on a cluster node:
    /// once joined, each body is fetched from `CAIRN_BLOBS`; what cannot be
    /// is evicted through its stream's owner.
    pub(crate) fn clean_up_clustered(self: &Arc<Self>, missing: Vec<ArtifactRow>) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        if missing.is_empty() {
            return;
        }
        let cache = self.clone();
        let mut joined = cluster.routing.subscribe();
        let appender = cluster.parts.appender.clone();
        tokio::spawn(async move {
            if joined.wait_for(Option::is_some).await.is_err() {
                return;
            }
            for row in missing {
                let url = row.key.as_ref().map_or("", |k| k.url.as_str()).to_owned();
                let fetched = match Digest::parse(&row.digest) {
                    Some(digest) => appender.ensure_blob(digest).await.map(drop),
                    None => Err(cairn_storage::StorageError::Corrupt(format!(
                        "digest {:?}",
                        row.digest
                    ))),
                };
                match fetched {
                    Ok(()) => {
                        info!(url = %url, digest = %row.digest, "stored body was missing; fetched from the cluster")
                    }
                    Err(e) => {
                        warn!(url = %url, digest = %row.digest, error = %e, "stored body missing; entry evicted");
                        if let Err(e) = cache.evict_row(&row, "missing-body").await {
                            warn!(url = %url, error = %e, "evicting an entry without body");
                        }
                    }
                }
            }
        });
    }

    /// Runs `command` of partition `p` at the stream's owner: here when
    /// this node writes it, else sent there as a record.
    pub(crate) async fn execute_clustered(
        &self,
        p: u32,
        command: ArtifactCommand,
    ) -> Result<u64, ArtifactError> {
        let cluster = self.cluster_part()?;
        let node = cluster.node().to_owned();
        let mut record = ArtifactRecordRequest {
            partition: p,
            node,
            ..Default::default()
        };
        // The body stays pinned here until the owner's commit is applied.
        let mut _pin: Option<BlobPin> = None;
        record.command = Some(match command {
            ArtifactCommand::Store { event, pin } => {
                _pin = Some(pin);
                Command::Stored(event)
            }
            ArtifactCommand::Revalidate(e) => Command::Revalidated(e),
            ArtifactCommand::Invalidate(e) => Command::Invalidate(e),
            ArtifactCommand::EvictIfCurrent(list) => {
                let (entries, stream_versions) = list.into_iter().unzip();
                Command::Evict(ArtifactEvictions {
                    entries,
                    stream_versions,
                })
            }
            ArtifactCommand::EvictUrl { url, reason } => {
                record.reason = reason;
                Command::EvictUrl(url)
            }
            ArtifactCommand::EvictDigest { digest, reason } => {
                record.reason = reason;
                Command::EvictDigest(digest)
            }
            ArtifactCommand::Evict(_) => {
                return Err(ArtifactError::NotFound(
                    "an unchecked eviction is not sent to an owner".to_owned(),
                ))
            }
        });
        let key = record_key(&record)?;
        Ok(self.execute_record(&record, Some(&key)).await?.count)
    }

    /// `cairn.v1.artifact.record`: runs a record or a claim where its
    /// stream is written. One another node `forwarded` runs here or is
    /// refused (503 "does not own": the sender routes it again). `key`:
    /// the request's idempotency key (`Cairn-Request-Id`, which every
    /// record a node sends carries): a record whose key was applied
    /// appends nothing and answers as its first run did.
    pub async fn apply_record(
        &self,
        record: ArtifactRecordRequest,
        forwarded: bool,
        key: Option<&RequestKey>,
    ) -> Result<ArtifactRecordReply, ArtifactError> {
        let cluster = self.cluster_part()?;
        if record.partition >= PARTITIONS {
            return Err(ArtifactError::bad_url(
                "partition",
                format!(
                    "{} is not a partition (0 to {})",
                    record.partition,
                    PARTITIONS - 1
                ),
            ));
        }
        if record.command.is_none() {
            return Err(ArtifactError::bad_url("command", "required"));
        }
        if let Some(url) = record_url(&record) {
            if partition(url) != record.partition {
                return Err(ArtifactError::bad_url(
                    "partition",
                    format!(
                        "{} is not the partition of {url:?} ({})",
                        record.partition,
                        partition(url)
                    ),
                ));
            }
        }
        if !forwarded {
            return self.execute_record(&record, key).await;
        }
        let routing = cluster.routing()?;
        match route(&routing, &StreamId::artifact(record.partition), true).await {
            Ok(Route::Local) => self.run_record(&record, key).await,
            Ok(Route::Forward(_)) => Err(self.not_owner(record.partition)),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs `record` at its stream's owner (see the module docs), routed
    /// again while the stream changes hands (at most
    /// [`REROUTE_WINDOW`]).
    /// `key`: the record's idempotency key, sent with every attempt (to
    /// this node's writer, or to each owner in turn).
    async fn execute_record(
        &self,
        record: &ArtifactRecordRequest,
        key: Option<&RequestKey>,
    ) -> Result<ArtifactRecordReply, ArtifactError> {
        let cluster = self.cluster_part()?;
        let routing = cluster.routing()?;
        let stream = StreamId::artifact(record.partition);
        let deadline = tokio::time::Instant::now() + REROUTE_WINDOW;
        let mut shipped = false;
        loop {
            let result = match route(&routing, &stream, false).await {
                Ok(Route::Local) => self.run_record(record, key).await,
                Ok(Route::Forward(node)) => {
                    if let (Some(Command::Stored(stored)), false) = (&record.command, shipped) {
                        let digest = Digest::parse(&stored.digest).ok_or_else(|| {
                            ArtifactError::NotFound(format!("stored digest {:?}", stored.digest))
                        })?;
                        cluster.parts.appender.ship_blob(digest).await?;
                        shipped = true;
                    }
                    match self
                        .send_record(cluster, &routing, &stream, node, record, key)
                        .await
                    {
                        Ok(Some(reply)) => Ok(reply),
                        // The stream came here meanwhile.
                        Ok(None) => continue,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e.into()),
            };
            match result {
                Err(e) if is_moving(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(REROUTE_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    /// Sends `record` to `node`, the owner of `stream`, and answers its
    /// reply once this node applied what it appended (bounded by
    /// `cluster.read-wait`); `None` when the stream came to this node.
    async fn send_record(
        &self,
        cluster: &ArtifactCluster,
        routing: &ClusterRouting,
        stream: &StreamId,
        node: String,
        record: &ArtifactRecordRequest,
        key: Option<&RequestKey>,
    ) -> Result<Option<ArtifactRecordReply>, ArtifactError> {
        let payload = serde_json::to_vec(record)
            .map_err(|e| ArtifactError::NotFound(format!("encoding a record: {e}")))?;
        let headers = key.map(|key| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(REQUEST_ID_HEADER, key.id.as_str());
            headers
        });
        let forwarded = forward_on(
            &cluster.parts.client,
            routing,
            payload.into(),
            headers.as_ref(),
            RECORD_ENDPOINT,
            stream,
            node,
        )
        .await?;
        let (headers, body) = match forwarded {
            Forwarded::Reply(headers, body) => (headers, body),
            Forwarded::RunHere => return Ok(None),
        };
        if let Some(code) = headers.get("Nats-Service-Error-Code") {
            let code = code.as_str().parse::<u16>().unwrap_or(500);
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
                .or_else(|| {
                    headers
                        .get("Nats-Service-Error")
                        .map(|m| m.as_str().to_owned())
                })
                .unwrap_or_default();
            return Err(ArtifactError::Cluster { code, message });
        }
        let reply: ArtifactRecordReply = serde_json::from_slice(&body)
            .map_err(|e| ArtifactError::NotFound(format!("the owner's reply to a record: {e}")))?;
        let claim = matches!(
            record.command,
            Some(Command::Claim(_) | Command::Release(_))
        );
        if !claim {
            let seq = crate::service::cluster::reply_seq(&headers);
            self.wait_applied(seq, cluster.parts.read_wait).await;
        }
        Ok(Some(reply))
    }

    /// Waits (at most `wait`) until this node applied `seq`; answers
    /// whether it did.
    async fn wait_applied(&self, seq: u64, wait: Duration) -> bool {
        let mut committed = self.store().subscribe();
        tokio::time::timeout(wait, committed.wait_for(|at| *at >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Runs `record` here, where its stream is written.
    async fn run_record(
        &self,
        record: &ArtifactRecordRequest,
        key: Option<&RequestKey>,
    ) -> Result<ArtifactRecordReply, ArtifactError> {
        let cluster = self.cluster_part()?;
        let p = record.partition;
        if self.writers[p as usize].read().is_none() {
            return Err(self.not_owner(p));
        }
        let command = match record.command.clone() {
            None => return Err(ArtifactError::bad_url("command", "required")),
            Some(Command::Claim(claim)) => {
                return self.decide_claim(cluster, claim, &record.node).await
            }
            Some(Command::Release(claim)) => {
                let mut claims = cluster.claims.lock();
                if claims
                    .get(&claim.url)
                    .is_some_and(|c| c.node == record.node && c.token == claim.token)
                {
                    claims.remove(&claim.url);
                }
                return Ok(ArtifactRecordReply::default());
            }
            Some(Command::Stored(event)) => {
                let digest = Digest::parse(&event.digest).ok_or_else(|| {
                    ArtifactError::bad_url("stored.digest", "not sha256:<64 hex>")
                })?;
                // Shipped by the sender; pinned here until committed.
                let pin = cluster.parts.appender.ensure_blob(digest).await?;
                ArtifactCommand::Store { event, pin }
            }
            Some(Command::Revalidated(e)) => ArtifactCommand::Revalidate(e),
            Some(Command::Invalidate(e)) => ArtifactCommand::Invalidate(e),
            Some(Command::Evict(evictions)) => {
                if evictions.entries.len() != evictions.stream_versions.len() {
                    return Err(ArtifactError::bad_url(
                        "evict.stream_versions",
                        "one version per entry",
                    ));
                }
                ArtifactCommand::EvictIfCurrent(
                    evictions
                        .entries
                        .into_iter()
                        .zip(evictions.stream_versions)
                        .collect::<Vec<(ArtifactEvicted, u64)>>(),
                )
            }
            Some(Command::EvictUrl(url)) => ArtifactCommand::EvictUrl {
                url,
                reason: record.reason.clone(),
            },
            Some(Command::EvictDigest(digest)) => ArtifactCommand::EvictDigest {
                digest,
                reason: record.reason.clone(),
            },
        };
        let count = self.run_local(p, command, key).await?;
        // A stored or revalidated URL's claim by its sender is over.
        if let Some(Command::Stored(_) | Command::Revalidated(_)) = &record.command {
            if let Some(url) = record_url(record) {
                let mut claims = cluster.claims.lock();
                if claims.get(url).is_some_and(|c| c.node == record.node) {
                    claims.remove(url);
                }
            }
        }
        Ok(ArtifactRecordReply {
            count,
            ..Default::default()
        })
    }

    /// The owner's answer to `node`'s claim (see the module docs).
    async fn decide_claim(
        &self,
        cluster: &ArtifactCluster,
        claim: ArtifactClaim,
        node: &str,
    ) -> Result<ArtifactRecordReply, ArtifactError> {
        let store = self.store().clone();
        let url = claim.url.clone();
        let (version, seq) = tokio::task::spawn_blocking(move || {
            Ok::<_, ArtifactError>((url_version(&store, &url)?, store.last_seq()?))
        })
        .await
        .map_err(task_failed)??;
        if version > claim.url_version {
            return Ok(ArtifactRecordReply {
                flight: "behind".to_owned(),
                seq,
                ..Default::default()
            });
        }
        let live = cluster.routing()?.ownership.view().live();
        let mut claims = cluster.claims.lock();
        if let Some(held) = claims.get(&claim.url) {
            if held.node != node && held.at.elapsed() < CLAIM_MAX_AGE && live.contains(&held.node) {
                return Ok(ArtifactRecordReply {
                    flight: "wait".to_owned(),
                    leader: held.node.clone(),
                    ..Default::default()
                });
            }
        }
        if claims.len() >= self.config().flights_max {
            claims.retain(|_, c| c.at.elapsed() < CLAIM_MAX_AGE);
        }
        if claims.len() < self.config().flights_max || claims.contains_key(&claim.url) {
            claims.insert(
                claim.url,
                Claim {
                    node: node.to_owned(),
                    token: claim.token,
                    at: Instant::now(),
                },
            );
        }
        Ok(ArtifactRecordReply {
            flight: "lead".to_owned(),
            ..Default::default()
        })
    }

    /// On a cluster, whether this node's flight for `url` may ask the
    /// origin (see the module docs): claims it from the stream's owner,
    /// waits while another node downloads it (at most
    /// `artifact.origin-timeout`), or says to look again once another
    /// node's entry is applied here. `seen`: the stream version of the
    /// stale entry the request's lookup found (`None`: none).
    ///
    /// The version sent is read before a second lookup: a commit applied
    /// here after the request's lookup is either found by the second
    /// lookup (look again) or newer than the version sent (the owner
    /// answers `behind`) — never missed.
    pub(crate) async fn claim_flight(
        &self,
        url: &str,
        headers: &http::HeaderMap,
        seen: Option<u64>,
    ) -> ClaimOutcome {
        let Some(cluster) = &self.cluster else {
            return ClaimOutcome::Lead(None);
        };
        let store = self.store().clone();
        let (u, h) = (url.to_owned(), headers.clone());
        let read = tokio::task::spawn_blocking(move || {
            let version = url_version(&store, &u)?;
            let now = super::cache::lookup_blocking(&store, &u, &h)?;
            Ok::<_, ArtifactError>((version, now.map(|row| row.stream_version)))
        })
        .await;
        let version = match read {
            Ok(Ok((version, now))) => {
                if now != seen {
                    return ClaimOutcome::Again;
                }
                version
            }
            _ => return ClaimOutcome::Lead(None),
        };
        let token = cluster.tokens.fetch_add(1, Ordering::Relaxed) + 1;
        let deadline = tokio::time::Instant::now() + self.config().origin_timeout;
        let mut joined = false;
        loop {
            let record = ArtifactRecordRequest {
                partition: partition(url),
                node: cluster.node().to_owned(),
                command: Some(Command::Claim(ArtifactClaim {
                    url: url.to_owned(),
                    url_version: version,
                    token,
                })),
                ..Default::default()
            };
            let reply = match self.execute_record(&record, None).await {
                Ok(reply) => reply,
                Err(e) => {
                    debug!(url, error = %e, "no claim from the owner; downloading without one");
                    return ClaimOutcome::Lead(None);
                }
            };
            match reply.flight.as_str() {
                "lead" => return ClaimOutcome::Lead(Some(token)),
                "behind" => {
                    self.wait_applied(reply.seq, cluster.parts.read_wait).await;
                    return ClaimOutcome::Again;
                }
                "wait" => {
                    if !joined {
                        joined = true;
                        self.count_flight_join();
                        debug!(url, leader = %reply.leader, "another node downloads it; waiting");
                    }
                    if tokio::time::Instant::now() >= deadline {
                        debug!(url, leader = %reply.leader, "still downloading elsewhere after artifact.origin-timeout; downloading too");
                        return ClaimOutcome::Lead(None);
                    }
                    tokio::time::sleep(CLAIM_POLL).await;
                }
                other => {
                    debug!(url, answer = other, "unknown claim answer; downloading");
                    return ClaimOutcome::Lead(None);
                }
            }
        }
    }

    /// Ends this node's claim `token` of `url` (a flight ended), in the
    /// background.
    pub(crate) fn release_claim(self: &Arc<Self>, url: String, token: u64) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let record = ArtifactRecordRequest {
            partition: partition(&url),
            node: cluster.node().to_owned(),
            command: Some(Command::Release(ArtifactClaim {
                url,
                url_version: 0,
                token,
            })),
            ..Default::default()
        };
        let cache = self.clone();
        runtime.spawn(async move {
            if let Err(e) = cache.execute_record(&record, None).await {
                debug!(error = %e, "releasing an artifact claim");
            }
        });
    }
}
