//! A node in a cluster (`cluster.enabled`): its share of the replicated log
//! ([`cairn_actors::cluster`]), its leases, and what it does when it gains or
//! loses a stream.
//!
//! Start-up, in [`ClusterStart::begin`] then [`ClusterStart::finish`]:
//! `CAIRN_LOG` and `CAIRN_BLOBS` found or created → the applier starts
//! from the store's replication position → the node waits until it applied
//! everything the stream held when it started (it serves nothing before:
//! readiness) → the registry starts empty → the ownership loop joins and
//! acquires the streams this node should own → the service starts with
//! routing. The publisher of `CAIRN_EVENTS` is a role with a lease of its
//! own ([`PUBLISHER_ROLE`]): one node publishes, from its replica of the
//! log (all replicas are the same, seq for seq, so a new holder resumes
//! exactly where the last one stopped). The node's holder also lists the
//! key-value partitions (`kv/00` … `kv/15`: their writers start and stop
//! with their leases, [`KvNode::own`]), the artifact streams
//! (`artifact/00` … `artifact/15`, [`ArtifactCache::own`]), the artifact
//! evictor role ([`EVICTOR_ROLE`]: its holder applies the artifact cache's
//! LRU limits) and, with `kv.compact-interval`, the compactor role
//! ([`log::COMPACTOR_ROLE`]: its holder sends the compaction markers every
//! node compacts at).

use std::{sync::Arc, time::Duration};

use actix::Addr;
use anyhow::Context as _;
use async_nats::jetstream;
use cairn_actors::{
    artifact::{ArtifactCache, EVICTOR_ROLE, PARTITIONS as ARTIFACT_PARTITIONS},
    cluster::{
        log,
        snapshot::{self, Snapshots, SNAPSHOTTER_ROLE},
        start_applier, Applied, Blobs, ClusterAppend, Holder, Ownership, OwnershipConfig,
    },
    kv::{partition_stream, KvNode, KV_PARTITIONS},
    publisher::PublisherConfig,
    registry::{DisownStream, OwnStream, Registry},
    service::cluster::ClusterRouting,
};
use cairn_events::StreamId;
use cairn_storage::{views::RepositoriesView, Store};
use futures::future::BoxFuture;
use tracing::{info, warn};

use crate::{config::NodeConfig, node::PublisherSlot};

/// The pseudo-stream whose lease makes a node the publisher of
/// `CAIRN_EVENTS`.
pub const PUBLISHER_ROLE: &str = "role/publisher";
/// Longest wait of an owner for its own commit to be applied here.
const APPLY_WAIT: Duration = Duration::from_secs(30);
/// Pause between two attempts to reach JetStream at start.
const RETRY: Duration = Duration::from_millis(250);

/// The first half of a cluster node's start (before the registry exists).
#[derive(Debug)]
pub struct ClusterStart {
    /// What repositories append through.
    pub appender: ClusterAppend,
    js: jetstream::Context,
    blobs: Blobs,
    applier: tokio::task::JoinHandle<()>,
    node: String,
    applied: Applied,
    log_stream: jetstream::stream::Stream,
}

impl ClusterStart {
    /// Finds or creates the streams, restores the store from the cluster's
    /// snapshot when it must start from one (see [`snapshot`]), starts the
    /// applier and waits until it caught up with the log as it is now.
    /// Answers the store to use from now on (a restored one is opened
    /// anew: `store` must be its only handle).
    pub async fn begin(
        config: &NodeConfig,
        client: &async_nats::Client,
        mut store: Store,
    ) -> anyhow::Result<(Self, Store)> {
        let node = config.node_id();
        // A log written by a single node has sequence numbers of its own:
        // applying the cluster's order on top of it would fork both.
        let (position, last_seq) = (
            store.replication_position()?,
            cairn_storage::EventLog::last_seq(&store)?,
        );
        if position == 0 && last_seq > 0 {
            anyhow::bail!(
                "cluster: the data directory {} holds the log of a single node ({last_seq} events); a cluster node starts from an empty data directory, or one of the same cluster",
                config.data_dir.display()
            );
        }
        let replicas = config.cluster.stream_replicas;
        let js = jetstream::new(client.clone());
        let max_payload = client.server_info().max_payload;
        let deadline =
            tokio::time::Instant::now() + config.nats.connect_timeout.max(Duration::from_secs(30));
        // JetStream may still be electing its leaders when the node starts.
        let (log_stream, blobs, snapshots) = loop {
            let attempt = async {
                let stream = log::ensure_stream(&js, replicas).await?;
                let blobs = Blobs::start(js.clone(), max_payload, replicas)
                    .await?
                    .with_grace(config.cluster.blob_grace);
                let snapshots = Snapshots::open(&js, replicas).await?;
                Ok::<_, String>((stream, blobs, snapshots))
            }
            .await;
            match attempt {
                Ok(found) => break found,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    warn!(error = %e, "JetStream not ready for the cluster yet; retrying");
                    tokio::time::sleep(RETRY).await;
                }
                Err(e) => anyhow::bail!("cluster: {e}"),
            }
        };
        // The log may be trimmed while the node starts: it then restores
        // (again), a bounded number of times.
        let mut attempt = 0;
        let (applied, applier) = loop {
            attempt += 1;
            let position = store.replication_position()?;
            let manifest = snapshots
                .latest()
                .await
                .map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
            if let Some(manifest) = manifest.filter(|m| m.needed_by(position)) {
                let (opened, restored) =
                    replace_store(config, store, &snapshots, &manifest).await?;
                store = opened;
                if let Err(e) = restored {
                    // The snapshot was replaced while it downloaded (its
                    // files deleted): the next attempt reads the new one.
                    if attempt >= START_RESTORES_MAX {
                        anyhow::bail!("cluster: restoring the snapshot: {e}");
                    }
                    warn!(error = %e, "restoring the snapshot failed; trying again");
                    continue;
                }
            }
            // Every write of this node goes through the replicated log from now.
            store.set_replica_only();
            fetch_missing_blobs(&store, &blobs).await?;
            let (applied, applier) = start_applier(js.clone(), store.clone(), blobs.clone())
                .await
                .map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
            let caught_up = catch_up(
                log_stream.clone(),
                &applied,
                config.cluster.catch_up_timeout,
            )
            .await;
            match (caught_up, applied.behind_trim()) {
                (_, Some(at)) if attempt < START_RESTORES_MAX => {
                    warn!(
                        position = applied.position(),
                        log_goes_on_at = at,
                        "the cluster's log was trimmed while this node started; restoring"
                    );
                    applier.abort();
                    let _ = applier.await;
                }
                (Ok(()), None) => break (applied, applier),
                (Err(e), _) => return Err(e),
                (Ok(()), Some(at)) => anyhow::bail!(
                    "cluster: the log was trimmed past this node (at {}, the log goes on at {at}) {attempt} times while it started",
                    applied.position()
                ),
            }
        };
        let appender = ClusterAppend::new(
            node.clone(),
            js.clone(),
            store.clone(),
            blobs.clone(),
            applied.clone(),
            max_payload,
            APPLY_WAIT,
        );
        Ok((
            Self {
                appender,
                js,
                blobs,
                applier,
                node,
                applied,
                log_stream,
            },
            store,
        ))
    }

    /// Joins: the ownership loop starts acquiring this node's streams
    /// (the writers of `parts` start and stop with their leases).
    pub async fn finish(
        self,
        config: &NodeConfig,
        parts: NodeParts<'_>,
    ) -> anyhow::Result<ClusterNode> {
        let NodeParts {
            store,
            client,
            registry,
            publisher,
            publisher_config,
            kv,
            artifacts,
        } = parts;
        let members = Arc::new(std::sync::OnceLock::new());
        let holder = Arc::new(NodeHolder {
            store: store.clone(),
            client: client.clone(),
            registry: registry.clone(),
            publisher: publisher.clone(),
            publisher_config,
            arbiter: actix::Arbiter::current(),
            kv: kv.clone(),
            artifacts: artifacts.clone(),
            compactor: Compactor {
                js: self.js.clone(),
                node: self.node.clone(),
                interval: config.kv.compact_interval,
                retention: config.kv.tombstone_retention,
                task: RoleTask::default(),
            },
            snapshotter: Snapshotter {
                role: snapshot::Snapshotter {
                    js: self.js.clone(),
                    replicas: config.cluster.stream_replicas,
                    blobs: self.blobs.clone(),
                    store: store.clone(),
                    work_dir: config.data_dir.clone(),
                    node: self.node.clone(),
                    min_messages: config.cluster.snapshot_min_messages,
                },
                interval: config.cluster.snapshot_interval,
                members: members.clone(),
                task: RoleTask::default(),
            },
        });
        let ownership = Ownership::start(
            self.js.clone(),
            OwnershipConfig {
                node: self.node.clone(),
                lease: config.cluster.lease,
                renew_every: config.cluster.renew_interval,
                replicas: config.cluster.stream_replicas,
            },
            self.appender.clone(),
            holder,
        )
        .await
        .map_err(|e| anyhow::anyhow!("cluster: {e}"))
        .context("joining the cluster")?;
        let _ = members.set(ownership.view().clone());
        info!(node = %self.node, "joined the cairn cluster");
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(self.applied.position()));
        let watcher = tokio::spawn(watch_log_end(
            self.log_stream,
            seen.clone(),
            config.cluster.renew_interval,
        ));
        Ok(ClusterNode {
            applied: self.applied,
            seen,
            watcher,
            routing: ClusterRouting {
                ownership,
                forward_timeout: config.cluster.forward_timeout,
            },
            applier: self.applier,
            leave_grace: config.cluster.renew_interval,
        })
    }
}

/// What of the node the cluster hands streams to ([`ClusterStart::finish`]).
#[derive(Debug)]
pub struct NodeParts<'a> {
    /// The node's store.
    pub store: &'a Store,
    /// Its NATS connection.
    pub client: &'a async_nats::Client,
    /// Repository writers.
    pub registry: &'a Addr<Registry>,
    /// The publisher role's slot.
    pub publisher: &'a PublisherSlot,
    /// The publisher's configuration.
    pub publisher_config: PublisherConfig,
    /// The key-value partitions' writers.
    pub kv: &'a KvNode,
    /// The artifact streams' writers and the evictor.
    pub artifacts: &'a Arc<ArtifactCache>,
}

/// Most restores a starting node makes (the log trimmed again while it
/// caught up).
const START_RESTORES_MAX: u32 = 3;

/// Closes `store` (its only handle), replaces its directory by the
/// snapshot `manifest` names, and opens the store again: the restored one,
/// or the old one when the restore failed before it replaced it (with the
/// reason).
async fn replace_store(
    config: &NodeConfig,
    store: Store,
    snapshots: &Snapshots,
    manifest: &snapshot::Manifest,
) -> anyhow::Result<(Store, Result<(), String>)> {
    if store.handles() != 1 {
        anyhow::bail!(
            "cluster: cannot restore the store from the snapshot: {} handles of it are open",
            store.handles()
        );
    }
    info!(
        position = store.replication_position()?,
        snapshot_position = manifest.position,
        trimmed_below = manifest.trimmed_below,
        "this node starts from the cluster's snapshot"
    );
    // Dropping the last handle joins the writer and closes the database.
    tokio::task::spawn_blocking(move || drop(store)).await?;
    let restored = snapshot::restore(snapshots, manifest, &config.store_dir()).await;
    Ok((crate::node::open_store(config).await?, restored))
}

/// Fetches from `CAIRN_BLOBS` the blobs `store`'s views reference that it
/// lacks (a store restored from a snapshot has no blob files).
async fn fetch_missing_blobs(store: &Store, blobs: &Blobs) -> anyhow::Result<()> {
    let s = store.clone();
    let missing = tokio::task::spawn_blocking(move || s.missing_blobs()).await??;
    if missing.is_empty() {
        return Ok(());
    }
    let count = missing.len();
    info!(count, "fetching the blobs the restored store references");
    // Referenced by the views: the pins can go once they are stored.
    let pins = blobs
        .ensure_digests(store, missing)
        .await
        .map_err(|e| anyhow::anyhow!("cluster: fetching the restored store's blobs: {e}"))?;
    drop(pins);
    info!(count, "blobs of the restored store fetched");
    Ok(())
}

/// Waits until `applied` reaches the stream's last sequence as it is now.
async fn catch_up(
    mut stream: jetstream::stream::Stream,
    applied: &Applied,
    timeout: Duration,
) -> anyhow::Result<()> {
    let last = cairn_actors::cluster::last_sequence_of(&mut stream, log::LOG_STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
    if applied.position() >= last {
        return Ok(());
    }
    info!(
        from = applied.position(),
        to = last,
        "catching up with the cluster's log"
    );
    let mut rx = applied.subscribe();
    let progress = async {
        let mut logged = tokio::time::Instant::now();
        loop {
            let at = *rx.borrow_and_update();
            if at >= last || applied.behind_trim().is_some() {
                return;
            }
            if logged.elapsed() >= Duration::from_secs(5) {
                info!(at, to = last, "catching up");
                logged = tokio::time::Instant::now();
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(timeout, progress).await.map_err(|_| {
        anyhow::anyhow!(
            "cluster: applied position {} of {last} after {timeout:?} (cluster.catch-up-timeout)",
            applied.position()
        )
    })?;
    info!(
        position = applied.position(),
        "caught up with the cluster's log"
    );
    Ok(())
}

/// This node's part in the cluster while it runs.
#[derive(Debug)]
pub struct ClusterNode {
    /// What the service routes with.
    pub routing: ClusterRouting,
    applier: tokio::task::JoinHandle<()>,
    leave_grace: Duration,
    applied: Applied,
    /// The last sequence of the cluster's log the node saw.
    seen: Arc<std::sync::atomic::AtomicU64>,
    watcher: tokio::task::JoinHandle<()>,
}

/// Longest wait for the log stream's state, each time it is read.
const LOG_END_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the last sequence of the cluster's log every `every` (each read
/// bounded by [`LOG_END_TIMEOUT`]) into `seen`, for readiness and the
/// applied-lag metric; runs until aborted.
async fn watch_log_end(
    mut stream: jetstream::stream::Stream,
    seen: Arc<std::sync::atomic::AtomicU64>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tokio::time::timeout(LOG_END_TIMEOUT, stream.info()).await {
            Ok(Ok(info)) => {
                seen.fetch_max(
                    info.state.last_sequence,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "reading the log stream's end"),
            Err(_) => tracing::debug!("reading the log stream's end timed out"),
        }
    }
}

impl ClusterNode {
    /// How long a leaving node keeps serving after it handed its streams
    /// over (`cluster.renew-interval`): the other nodes see it gone meanwhile.
    pub fn leave_grace(&self) -> Duration {
        self.leave_grace
    }

    /// Hands every stream over and leaves the membership.
    pub async fn leave(&self) {
        self.routing.ownership.leave().await;
    }

    /// Resolves when the applier stopped because the log was trimmed past
    /// this node (it was not live when that happened): answers where the
    /// log goes on. Pending forever otherwise. The node must stop and
    /// start again: it then restores the cluster's snapshot.
    pub async fn fell_behind(&self) -> u64 {
        let mut rx = self.applied.subscribe();
        loop {
            if let Some(at) = self.applied.behind_trim() {
                return at;
            }
            if rx.changed().await.is_err() {
                // The applier stopped: because of a trim (it says so
                // before it stops), or for the node's shutdown.
                return match self.applied.behind_trim() {
                    Some(at) => at,
                    None => std::future::pending().await,
                };
            }
        }
    }

    /// (applied position, last position seen in the cluster's log).
    pub fn positions(&self) -> (u64, u64) {
        (
            self.applied.position(),
            self.seen.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// A function answering [`ClusterNode::positions`].
    pub fn positions_fn(&self) -> crate::health::ClusterPositions {
        let applied = self.applied.clone();
        let seen = self.seen.clone();
        Arc::new(move || {
            (
                applied.position(),
                seen.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    /// Stops applying the log.
    pub fn stop(self) {
        self.applier.abort();
        self.watcher.abort();
    }
}

/// What a node does with the streams it gains and loses.
#[derive(Debug)]
struct NodeHolder {
    store: Store,
    client: async_nats::Client,
    registry: Addr<Registry>,
    publisher: PublisherSlot,
    publisher_config: PublisherConfig,
    arbiter: actix::ArbiterHandle,
    kv: KvNode,
    artifacts: Arc<ArtifactCache>,
    compactor: Compactor,
    snapshotter: Snapshotter,
}

/// A role's periodic task: started when the node gains the role's lease,
/// aborted when it loses it.
#[derive(Debug, Default)]
struct RoleTask(std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>);

impl RoleTask {
    /// Runs `round` every `interval` (the first after one interval) until
    /// stopped; replaces a task already running.
    fn start<F, Fut>(&self, interval: Duration, mut round: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                round().await;
            }
        });
        if let Some(old) = self.0.lock().expect("role task lock").replace(task) {
            old.abort();
        }
    }

    fn stop(&self) {
        if let Some(task) = self.0.lock().expect("role task lock").take() {
            task.abort();
        }
    }
}

/// The compactor role: while this node holds it, it sends a compaction
/// marker of the key-value class every `kv.compact-interval`; every node
/// compacts at the marker ([`log`]'s module docs).
#[derive(Debug)]
struct Compactor {
    js: jetstream::Context,
    node: String,
    interval: Duration,
    retention: Duration,
    task: RoleTask,
}

impl Compactor {
    fn start(&self, clock: std::sync::Arc<dyn cairn_actors::timing::Clock>) {
        let (js, node, retention) = (self.js.clone(), self.node.clone(), self.retention);
        self.task.start(self.interval, move || {
            let (js, node, clock) = (js.clone(), node.clone(), clock.clone());
            async move {
                let marker = log::Compaction {
                    prefix: cairn_storage::views::kv::KV_STREAM_PREFIX.to_owned(),
                    now_ms: cairn_actors::kv::unix_ms(clock.now()),
                    retention_ms: u64::try_from(retention.as_millis()).unwrap_or(u64::MAX),
                };
                match log::publish_compaction(&js, &node, &marker).await {
                    Ok(position) => info!(position, "kv compaction marker sent"),
                    Err(e) => warn!(error = %e, "cannot send the kv compaction marker"),
                }
            }
        });
    }

    fn stop(&self) {
        self.task.stop();
    }
}

/// The snapshotter role: while this node holds it, it looks every
/// `cluster.snapshot-interval` whether to snapshot its store, trim the log
/// and collect unneeded blobs ([`snapshot::Snapshotter::round`]; the trim
/// stays below every live node's applied position, read from the
/// membership's heartbeats).
#[derive(Debug)]
struct Snapshotter {
    /// What each round works with.
    role: snapshot::Snapshotter,
    interval: Duration,
    /// The membership, once the node joined.
    members: Arc<std::sync::OnceLock<Arc<cairn_actors::cluster::OwnershipView>>>,
    task: RoleTask,
}

impl Snapshotter {
    fn start(&self) {
        let (role, members) = (Arc::new(self.role.clone()), self.members.clone());
        self.task.start(self.interval, move || {
            let (role, members) = (role.clone(), members.clone());
            async move {
                // The trim needs every live node's position: not before
                // the node joined.
                let Some(view) = members.get().cloned() else {
                    return;
                };
                // Nor while this node's view of the members is stale (its
                // own heartbeat not seen for a lease time: the members'
                // watch is down): a trim on the positions it sees could
                // cut the log below a member it cannot see.
                if !view.members().contains_key(view.node()) {
                    warn!("snapshotter: this node's own heartbeat is not seen (the members' watch is down); no round until it is");
                    return;
                }
                let positions = || {
                    let live = view.live();
                    view.members()
                        .into_values()
                        .filter(|m| live.contains(&m.node))
                        .map(|m| m.applied_position)
                        .collect()
                };
                if let Err(e) = role.round(positions).await {
                    warn!(error = %e, "snapshotter: round failed");
                }
            }
        });
    }

    fn stop(&self) {
        self.task.stop();
    }
}

impl Holder for NodeHolder {
    fn streams(&self) -> BoxFuture<'static, Result<Vec<StreamId>, String>> {
        let store = self.store.clone();
        let compacts = !self.compactor.interval.is_zero();
        let snapshots = !self.snapshotter.interval.is_zero();
        Box::pin(async move {
            let rows = tokio::task::spawn_blocking(move || RepositoriesView::list(&store, None))
                .await
                .map_err(|e| format!("listing the repositories: {e}"))?
                .map_err(|e| format!("listing the repositories: {e}"))?;
            let mut streams: Vec<StreamId> = rows
                .into_iter()
                .filter_map(|row| {
                    let spec = row.spec?;
                    StreamId::repository(&spec.namespace, &spec.name).ok()
                })
                .collect();
            // The key-value partitions and the artifact streams always
            // exist: each has an owner.
            streams.extend((0..KV_PARTITIONS).map(partition_stream));
            streams.extend((0..ARTIFACT_PARTITIONS).map(StreamId::artifact));
            streams.push(StreamId::new(EVICTOR_ROLE).expect("a valid stream id"));
            if compacts {
                streams.push(StreamId::new(log::COMPACTOR_ROLE).expect("a valid stream id"));
            }
            if snapshots {
                streams.push(StreamId::new(SNAPSHOTTER_ROLE).expect("a valid stream id"));
            }
            streams.push(StreamId::new(PUBLISHER_ROLE).expect("a valid stream id"));
            Ok(streams)
        })
    }

    fn own(&self, stream: StreamId) -> BoxFuture<'static, Result<(), String>> {
        if stream.as_str() == PUBLISHER_ROLE {
            let (slot, store, client, config) = (
                self.publisher.clone(),
                self.store.clone(),
                self.client.clone(),
                self.publisher_config.clone(),
            );
            let (tx, rx) = tokio::sync::oneshot::channel();
            // Actors start on the node's arbiter.
            self.arbiter.spawn(async move {
                let _ = tx.send(
                    slot.start(&store, &client, &config)
                        .map_err(|e| e.to_string()),
                );
            });
            return Box::pin(async move {
                rx.await
                    .map_err(|_| "the node's arbiter stopped".to_owned())??;
                info!("this node publishes CAIRN_EVENTS now");
                Ok(())
            });
        }
        if let Some(partition) = kv_partition(&stream) {
            let kv = self.kv.clone();
            return Box::pin(async move { kv.own(partition).await.map_err(|e| e.to_string()) });
        }
        if stream.as_str() == SNAPSHOTTER_ROLE {
            self.snapshotter.start();
            info!("this node takes the cluster's snapshots now");
            return Box::pin(async { Ok(()) });
        }
        if stream.as_str() == log::COMPACTOR_ROLE {
            self.compactor.start(self.kv.env().clock.clone());
            info!("this node sends the kv compaction markers now");
            return Box::pin(async { Ok(()) });
        }
        if let Some(partition) = stream.as_artifact() {
            let artifacts = self.artifacts.clone();
            return Box::pin(
                async move { artifacts.own(partition).await.map_err(|e| e.to_string()) },
            );
        }
        if stream.as_str() == EVICTOR_ROLE {
            self.artifacts.start_evictor();
            return Box::pin(async { Ok(()) });
        }
        let registry = self.registry.clone();
        Box::pin(async move {
            registry
                .send(OwnStream { stream })
                .await
                .map_err(|e| e.to_string())?
        })
    }

    fn disown(&self, stream: StreamId) -> BoxFuture<'static, ()> {
        if stream.as_str() == PUBLISHER_ROLE {
            let slot = self.publisher.clone();
            return Box::pin(async move { slot.stop().await });
        }
        if let Some(partition) = kv_partition(&stream) {
            let kv = self.kv.clone();
            return Box::pin(async move { kv.disown(partition).await });
        }
        if stream.as_str() == SNAPSHOTTER_ROLE {
            self.snapshotter.stop();
            return Box::pin(async {});
        }
        if stream.as_str() == log::COMPACTOR_ROLE {
            self.compactor.stop();
            return Box::pin(async {});
        }
        if let Some(partition) = stream.as_artifact() {
            let artifacts = self.artifacts.clone();
            return Box::pin(async move { artifacts.disown(partition).await });
        }
        if stream.as_str() == EVICTOR_ROLE {
            self.artifacts.stop_evictor();
            return Box::pin(async {});
        }
        let registry = self.registry.clone();
        Box::pin(async move {
            let _ = registry.send(DisownStream { stream }).await;
        })
    }
}

/// The key-value partition `stream` is, if it is one.
fn kv_partition(stream: &StreamId) -> Option<usize> {
    (0..KV_PARTITIONS).find(|p| partition_stream(*p) == *stream)
}
