//! A cairn node: store, NATS connection (or a local nats-server), the
//! Publisher actor and the NATS service.
//!
//! Start-up: open the store (views catch up with the log) → reach NATS
//! (start `nats-server -js` when no URL is configured) → start the Publisher
//! → register the service. Shutdown (SIGINT/SIGTERM) runs in reverse: stop
//! taking requests → let queued appends finish → flush the publisher →
//! close NATS → stop the local nats-server.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use actix::{Actor, Addr};
use anyhow::Context as _;
use cairn_actors::{
    artifact::{ArtifactCache, ArtifactClusterParts},
    http::{HttpServer, Operations},
    kv::{KvCluster, KvNode},
    origin::GitCache,
    publisher::{self, Publisher, PublisherConfig},
    registry::Registry,
    repository::upstream::{Fetches, Secrets, SyncEnv},
    schedule::{Clock, Scheduling, SlotState, SyncSlots, SystemClock},
    service::{CairnService, ServiceConfig},
    timing::BudgetState,
};
use cairn_storage::{views::default_views, Store};
use tracing::{info, warn};

use crate::{config::NodeConfig, local_nats::LocalNatsServer};

/// How long shutdown waits for the publisher to drain.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// A running node.
#[derive(Debug)]
pub struct Node {
    /// The node's store.
    pub store: Store,
    /// The NATS client the node uses.
    pub client: async_nats::Client,
    /// The NATS URL(s) the node connected to.
    pub nats_url: String,
    publisher: PublisherSlot,
    registry: Addr<Registry>,
    cluster: Option<crate::cluster::ClusterNode>,
    slots: tokio::sync::watch::Receiver<SlotState>,
    budget: tokio::sync::watch::Receiver<BudgetState>,
    service: CairnService,
    artifacts: Arc<ArtifactCache>,
    http: Option<HttpServer>,
    local_nats: Option<LocalNatsServer>,
}

/// The node's Publisher, when it runs one: always on a single node, on the
/// holder of the publisher role in a cluster.
#[derive(Debug, Clone, Default)]
pub struct PublisherSlot(Arc<std::sync::Mutex<Option<Addr<Publisher>>>>);

impl PublisherSlot {
    /// The running publisher.
    pub fn get(&self) -> Option<Addr<Publisher>> {
        self.0.lock().expect("publisher lock").clone()
    }

    /// Starts a publisher (on the current arbiter) unless one runs.
    pub fn start(
        &self,
        store: &Store,
        client: &async_nats::Client,
        config: &PublisherConfig,
    ) -> anyhow::Result<()> {
        let mut slot = self.0.lock().expect("publisher lock");
        if slot.is_none() {
            *slot = Some(Publisher::new(store.clone(), client.clone(), config.clone())?.start());
        }
        Ok(())
    }

    /// Flushes what is left (at most [`SHUTDOWN_FLUSH`]) and stops the
    /// publisher, if one runs.
    pub async fn stop(&self) {
        let Some(publisher) = self.0.lock().expect("publisher lock").take() else {
            return;
        };
        match publisher
            .send(publisher::Flush {
                timeout: SHUTDOWN_FLUSH,
            })
            .await
        {
            Ok(Ok(cursor)) => info!(cursor, "all events published"),
            Ok(Err(e)) => {
                warn!(error = %e, "events left unpublished; they are published at the next start")
            }
            Err(e) => warn!(error = %e, "publisher unavailable"),
        }
        let _ = publisher.send(publisher::Stop).await;
    }
}

/// Opens the store at the configured path, off the async threads.
pub async fn open_store(config: &NodeConfig) -> anyhow::Result<Store> {
    let store_config = config.store_config();
    let path = store_config.path.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&store_config.path)?;
        Store::open(store_config, default_views()).map_err(anyhow::Error::from)
    })
    .await?
    .map_err(|e| explain_open_error(e, &path))
}

/// Turns RocksDB's lock error into advice.
pub fn explain_open_error(e: anyhow::Error, path: &std::path::Path) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("LOCK")
        && (text.contains("Resource temporarily unavailable") || text.contains("lock hold"))
    {
        anyhow::anyhow!(
            "data directory {} is in use by another cairn process (a running node?); stop it, or talk to it over NATS",
            path.parent().unwrap_or(path).display()
        )
    } else {
        e.context(format!("opening the store at {}", path.display()))
    }
}

impl Node {
    /// Resolves when this cluster node fell behind the cluster's trimmed
    /// log (see [`crate::cluster::ClusterNode::fell_behind`]); never for a
    /// node alone.
    pub async fn fell_behind(&self) -> u64 {
        match &self.cluster {
            Some(cluster) => cluster.fell_behind().await,
            None => std::future::pending().await,
        }
    }

    /// Starts a node. Must run inside an actix system.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Starts a node whose sync managers follow `clock` (tests pass a
    /// [`cairn_actors::schedule::ManualClock`]).
    pub async fn start_with_clock(
        config: NodeConfig,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Node> {
        cairn_actors::origin::set_network_timeout(config.git.timeout)?;
        let otlp = crate::telemetry::otlp_endpoint(&config.telemetry);
        let metrics = crate::metrics::install(&config.telemetry, otlp.as_deref());
        // W3C trace context in and out, whether or not spans are exported.
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        if let Some(endpoint) = &otlp {
            crate::traces::install(&config.telemetry, endpoint)
                .context("telemetry: starting the OTLP trace export")?;
            info!(endpoint = %endpoint, "exporting traces and metrics over OTLP");
        }
        let mut store = open_store(&config).await?;
        if let cairn_actors::service::kv::ValueLimit::Event {
            bytes,
            event_max_bytes,
            configured,
        } = cairn_actors::service::kv::ValueLimit::of(
            config.kv.value_max_bytes,
            config.store.event_max_bytes,
        ) {
            info!(
                "key-value entries hold values of up to {bytes} bytes: an entry is one event of at most store.event-max-bytes ({event_max_bytes}) less {} for its names and tags, below kv.value-max-bytes ({configured}); raise store.event-max-bytes (at most 921600) for larger values",
                cairn_actors::service::kv::ENTRY_ROOM_BYTES
            );
        }
        let mut local_nats = None;
        let urls = if config.nats.urls.is_empty() {
            let listen: SocketAddr = config.nats.listen.parse().context("nats.listen")?;
            let dir = config.data_dir.join("nats");
            let binary = config.nats.server_binary.clone();
            let server =
                tokio::task::spawn_blocking(move || LocalNatsServer::start(&binary, listen, &dir))
                    .await??;
            let url = server.url();
            local_nats = Some(server);
            vec![url]
        } else {
            config.nats.urls.clone()
        };
        let nats_url = split_credentials(&urls).0.join(",");
        let client = connect(&urls, config.nats.connect_timeout).await?;

        let publisher_config = PublisherConfig {
            max_in_flight: config.publisher.max_in_flight,
            ack_timeout: config.publisher.ack_timeout,
            stream_replicas: config.publisher.stream_replicas,
            replica: config.cluster.enabled,
            ..PublisherConfig::default()
        };
        let publisher = PublisherSlot::default();
        let cluster_start = if config.cluster.enabled {
            // A node behind the cluster's trimmed log starts from its
            // snapshot: `begin` answers the store to use.
            let (start, restored) =
                crate::cluster::ClusterStart::begin(&config, &client, store).await?;
            store = restored;
            Some(start)
        } else {
            publisher.start(&store, &client, &publisher_config)?;
            None
        };
        let service_config = ServiceConfig {
            request_max_bytes: config.service.request_max_bytes,
            max_concurrent_requests: config.service.max_concurrent_requests,
            resource_max_bytes: config.service.resource_max_bytes,
            watch: config.watch.watch_config(),
            clock: clock.clone(),
            kv: config.kv.kv_config(),
            ..ServiceConfig::default()
        };
        let env = Arc::new(SyncEnv {
            store: store.clone(),
            fetches: Fetches::new(GitCache::new(config.git_cache_dir())),
            secrets: Secrets::new(config.git.secrets_dir.clone()),
            release_memory: crate::memory::release,
            discoveries: Default::default(),
            slots: SyncSlots::new(config.sync.max_concurrent),
            budget: config.sync.budget(),
            refs_read: Default::default(),
            write: config.git.write_config(),
            cluster: cluster_start.as_ref().map(|c| c.appender.clone()),
        });
        let scheduling = Scheduling {
            policy: Arc::new(config.sync.policy()),
            clock: clock.clone(),
        };
        let slots = env.slots.subscribe();
        let budget = env.budget.subscribe();
        let registry = if cluster_start.is_some() {
            Registry::for_cluster(env, scheduling).start()
        } else {
            tokio::task::spawn_blocking(move || Registry::load(env, scheduling))
                .await??
                .start()
        };
        let mut service_config = service_config;
        service_config.read_wait = config.cluster.read_wait;
        // The key-value cache before the cluster joins: the ownership loop
        // hands it the partitions this node writes.
        let kv_node = KvNode::start(
            store.clone(),
            service_config.clock.clone(),
            service_config.kv.memory_max_bytes,
            service_config.kv.durability,
            service_config.kv.set_batch_max,
            cluster_start.as_ref().map(|c| KvCluster {
                node: config.node_id(),
                appender: c.appender.clone(),
                arbiter: actix::Arbiter::current(),
            }),
        )
        .await
        .map_err(|e| anyhow::anyhow!("starting the key-value cache: {e}"))?;
        // The artifact cache before the cluster joins too: the ownership
        // loop hands it the artifact streams this node writes (and the
        // evictor role). Reads of what the node holds work at once.
        let artifact_config = config
            .artifact
            .artifact_config()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let artifacts = match &cluster_start {
            Some(start) => {
                ArtifactCache::start_clustered(
                    store.clone(),
                    artifact_config,
                    clock,
                    ArtifactClusterParts {
                        appender: start.appender.clone(),
                        client: client.clone(),
                        arbiter: actix::Arbiter::current(),
                        read_wait: config.cluster.read_wait,
                    },
                )
                .await
            }
            None => ArtifactCache::start(store.clone(), artifact_config, clock).await,
        }
        .map_err(|e| anyhow::anyhow!("starting the artifact cache: {e}"))?;
        let cluster = match cluster_start {
            Some(start) => {
                let node = start
                    .finish(
                        &config,
                        crate::cluster::NodeParts {
                            store: &store,
                            client: &client,
                            registry: &registry,
                            publisher: &publisher,
                            publisher_config,
                            kv: &kv_node,
                            artifacts: &artifacts,
                        },
                    )
                    .await?;
                service_config.cluster = Some(node.routing.clone());
                artifacts.join(node.routing.clone());
                Some(node)
            }
            None => None,
        };
        let http = if config.http.listen.is_empty() {
            None
        } else {
            let listen: SocketAddr = config.http.listen.parse().context("http.listen")?;
            let operations = Operations {
                metrics: Arc::new(move || metrics.render()),
                readiness: Arc::new(crate::health::checks(
                    store.clone(),
                    client.clone(),
                    cluster.as_ref().map(|c| c.positions_fn()),
                )),
            };
            Some(
                HttpServer::start(listen, artifacts.clone(), operations)
                    .await
                    .with_context(|| format!("http.listen: binding {listen}"))?,
            )
        };
        let service = CairnService::start(
            client.clone(),
            store.clone(),
            registry.clone(),
            artifacts.clone(),
            kv_node,
            service_config,
        )
        .await
        .map_err(|e| anyhow::anyhow!("registering the cairn service: {e}"))?;
        crate::metrics::attach(crate::metrics::NodeSources {
            store: store.clone(),
            artifacts: artifacts.clone(),
            kv: service.kv().cloned(),
            watch: service.watch_hub().clone(),
            owned_streams: cluster.as_ref().map(|c| {
                let view = c.routing.ownership.view().clone();
                Arc::new(move || view.held().values().filter(|h| !h.lost).count() as u64)
                    as Arc<dyn Fn() -> u64 + Send + Sync>
            }),
            cluster_positions: cluster.as_ref().map(|c| c.positions_fn()),
            sync_slots: slots.clone(),
        });
        let origin = if local_nats.is_some() {
            "local nats-server"
        } else {
            "configured"
        };
        info!(nats = %nats_url, origin, data_dir = %config.data_dir.display(), "cairn node started");
        Ok(Node {
            store,
            client,
            nats_url,
            publisher,
            registry,
            cluster,
            slots,
            budget,
            service,
            artifacts,
            http,
            local_nats,
        })
    }

    /// The node's artifact cache.
    pub fn artifacts(&self) -> &Arc<ArtifactCache> {
        &self.artifacts
    }

    /// The address of the node's HTTP listener, when it has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::addr)
    }

    /// Syncs running and waiting for a slot (`sync.max-concurrent`), now
    /// and as they change.
    pub fn sync_slots(&self) -> tokio::sync::watch::Receiver<SlotState> {
        self.slots.clone()
    }

    /// What the syncs' chunks hold of `sync.memory-budget-bytes`, and how
    /// many they appended, now and as it changes.
    pub fn sync_budget(&self) -> tokio::sync::watch::Receiver<BudgetState> {
        self.budget.clone()
    }

    /// The local nats-server, when the node started one.
    pub fn local_nats(&self) -> Option<&LocalNatsServer> {
        self.local_nats.as_ref()
    }

    /// The Publisher actor, when this node publishes (a single node does;
    /// in a cluster, the node that holds the publisher role).
    pub fn publisher(&self) -> Option<Addr<Publisher>> {
        self.publisher.get()
    }

    /// The cluster this node belongs to, if any.
    pub fn cluster(&self) -> Option<&crate::cluster::ClusterNode> {
        self.cluster.as_ref()
    }

    /// The Registry actor.
    pub fn registry(&self) -> &Addr<Registry> {
        &self.registry
    }

    /// The node's watch hub.
    pub fn watch_hub(&self) -> &cairn_actors::watch::WatchHub {
        self.service.watch_hub()
    }

    /// The node's key-value cache.
    pub fn kv(&self) -> Option<&cairn_actors::kv::KvNode> {
        self.service.kv()
    }

    /// Stops gracefully (see the module docs).
    pub async fn shutdown(mut self) {
        info!("shutting down");
        crate::metrics::detach();
        if let Some(cluster) = &self.cluster {
            // Streams handed over first (each writer finishes what it runs,
            // its lease is deleted): the others take them at once, and this
            // node forwards what it still receives to them. It keeps serving
            // a renew interval longer, so that no node forwards to it any
            // more, nor finds it in the queue group, when it unsubscribes.
            cluster.leave().await;
            tokio::time::sleep(cluster.leave_grace()).await;
        }
        if let Some(http) = self.http.take() {
            http.stop().await;
        }
        self.service.stop().await;
        // Repository actors finish their commands and stop.
        let _ = self.registry.send(cairn_actors::registry::Shutdown).await;
        self.artifacts.stop().await;
        drop(self.artifacts);
        self.store.shutdown().await;
        self.publisher.stop().await;
        if let Some(cluster) = self.cluster.take() {
            cluster.stop();
        }
        if let Err(e) = self.client.drain().await {
            warn!(error = %e, "closing the NATS connection");
        }
        if let Some(mut server) = self.local_nats.take() {
            let _ = tokio::task::spawn_blocking(move || server.stop()).await;
        }
        // What is left of the traces and metrics goes out (each bounded by
        // telemetry.export-timeout).
        if let Some(traces) = crate::traces::installed() {
            let _ = tokio::task::spawn_blocking(|| traces.flush()).await;
        }
        if let Err(e) = self.store.sync_wal() {
            warn!(error = %e, "syncing the store");
        }
        // Stopped actors drop their store handles as their arbiter gets to
        // it; wait (bounded) so the database is closed, and its lock freed,
        // when this returns.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.store.handles() > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if self.store.handles() > 1 {
            warn!(
                handles = self.store.handles(),
                "store still in use after shutdown"
            );
        }
        info!("stopped");
    }
}

/// Connects to the first reachable of `urls`, retrying for up to `timeout`
/// (a cluster may still be starting). Once connected the client reconnects
/// by itself.
pub async fn connect(urls: &[String], timeout: Duration) -> anyhow::Result<async_nats::Client> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (urls, credentials) = split_credentials(urls);
    let joined = urls.join(",");
    loop {
        let attempt = connect_options(credentials.clone())
            .name("cairn-node")
            .connection_timeout(timeout.min(Duration::from_secs(5)))
            .connect(urls.as_slice())
            .await;
        match attempt {
            Ok(client) => return Ok(client),
            Err(e) if tokio::time::Instant::now() + RETRY_CONNECT < deadline => {
                warn!(nats = %joined, error = %e, "NATS not reachable yet; retrying");
                tokio::time::sleep(RETRY_CONNECT).await;
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "no NATS server reachable at {joined} within {timeout:?} (nats.connect-timeout): {e}"
                ))
            }
        }
    }
}

/// `urls` without their user info (what may be logged), and the user and
/// password of the first URL that carries them (`nats://user:pass@host`).
pub fn split_credentials(urls: &[String]) -> (Vec<String>, Option<(String, String)>) {
    let mut credentials = None;
    let urls = urls
        .iter()
        .map(|raw| {
            let with_scheme = if raw.contains("://") {
                raw.clone()
            } else {
                format!("nats://{raw}")
            };
            let Ok(mut url) = url::Url::parse(&with_scheme) else {
                return raw.clone();
            };
            if url.username().is_empty() {
                return raw.clone();
            }
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            let user = decode(url.username());
            let password = decode(url.password().unwrap_or_default());
            credentials.get_or_insert((user, password));
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string().trim_end_matches('/').to_owned()
        })
        .collect();
    (urls, credentials)
}

/// Connect options with `credentials` (user, password) when given.
pub fn connect_options(credentials: Option<(String, String)>) -> async_nats::ConnectOptions {
    match credentials {
        Some((user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        None => async_nats::ConnectOptions::new(),
    }
}

const RETRY_CONNECT: Duration = Duration::from_millis(250);

/// `cairn node`: runs until SIGINT or SIGTERM.
pub fn run(config: NodeConfig) -> anyhow::Result<()> {
    let system = actix::System::new();
    system.block_on(async move {
        // Installed before the node starts: a SIGTERM during start-up
        // stops it gracefully once it started, rather than killing it.
        let signals = Signals::install()?;
        let node = Node::start(config).await?;
        // The one line a person (or a script) needs: where NATS is.
        // (The HTTP listener's address is in the log: "http listener started".)
        println!(
            "cairn node ready: NATS {} (service \"cairn\", events on cairn.events.>)",
            node.nats_url
        );
        // A cluster node whose log was trimmed past it can serve nothing
        // current any more: it stops (handing its streams over), and
        // started again it restores the cluster's snapshot.
        let fell_behind = tokio::select! {
            () = signals.wait() => None,
            at = node.fell_behind() => Some(at),
        };
        node.shutdown().await;
        match fell_behind {
            None => Ok(()),
            Some(at) => anyhow::bail!(
                "the cluster's log was trimmed past this node (it goes on at position {at}): start the node again, it restores the cluster's snapshot"
            ),
        }
    })
}

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM received"),
            _ = self.int.recv() => info!("SIGINT received"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_urls_that_are_logged() {
        let (urls, credentials) = split_credentials(&[
            "nats://cairn:s%40cret@10.0.0.1:4222".to_owned(),
            "10.0.0.2:4222".to_owned(),
        ]);
        assert_eq!(urls, ["nats://10.0.0.1:4222", "10.0.0.2:4222"]);
        assert_eq!(credentials, Some(("cairn".to_owned(), "s@cret".to_owned())));
        let (urls, credentials) = split_credentials(&["nats://127.0.0.1:4222".to_owned()]);
        assert_eq!(urls, ["nats://127.0.0.1:4222"]);
        assert_eq!(credentials, None);
    }
}
