//! Node configuration.
//!
//! Sources, lowest precedence first: built-in defaults, a TOML file
//! (`--config`, or `CAIRN_CONFIG`), environment variables `CAIRN_<KEY>` with
//! `__` between sections (`CAIRN_NATS__URLS`, `CAIRN_DATA_DIR`,
//! `CAIRN_PUBLISHER__MAX_IN_FLIGHT`), then command-line flags. Keys are
//! kebab-case in TOML; unknown keys are errors, and every error names the
//! key. See `config/node.toml` for a commented sample.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Deserializer, Serialize};

/// Top-level keys, so unrelated `CAIRN_*` variables are not taken as config.
const SECTIONS: &[&str] = &[
    "data-dir",
    "nats",
    "store",
    "publisher",
    "cluster",
    "service",
    "git",
    "sync",
    "log",
    "watch",
    "kv",
    "http",
    "artifact",
    "telemetry",
];

/// The whole node configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the node keeps its store (`store/`) and, for a local
    /// nats-server, its JetStream data (`nats/`). Default: `./cairn-data`.
    pub data_dir: PathBuf,
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// The event log and views.
    pub store: StoreSection,
    /// Publishing events to JetStream.
    pub publisher: PublisherSection,
    /// The NATS service.
    pub service: ServiceSection,
    /// Git upstreams.
    pub git: GitSection,
    /// Background sync.
    pub sync: SyncSection,
    /// Logging.
    pub log: LogSection,
    /// Watches.
    pub watch: WatchSection,
    /// The key-value cache.
    pub kv: KvSection,
    /// The cluster.
    pub cluster: ClusterSection,
    /// The node's HTTP listener.
    pub http: HttpSection,
    /// The HTTP artifact cache.
    pub artifact: ArtifactSection,
    /// Metrics and traces export.
    pub telemetry: TelemetrySection,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("cairn-data"),
            nats: NatsConfig::default(),
            store: StoreSection::default(),
            publisher: PublisherSection::default(),
            service: ServiceSection::default(),
            git: GitSection::default(),
            sync: SyncSection::default(),
            log: LogSection::default(),
            watch: WatchSection::default(),
            kv: KvSection::default(),
            cluster: ClusterSection::default(),
            http: HttpSection::default(),
            artifact: ArtifactSection::default(),
            telemetry: TelemetrySection::default(),
        }
    }
}

/// `[telemetry]`: OpenTelemetry export. Metrics are always served as
/// Prometheus text on the HTTP listener's `/metrics`; OTLP export (traces
/// and metrics, HTTP/protobuf) is on when an endpoint is set. The standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`
/// and `OTEL_TRACES_SAMPLER_ARG` variables win over these keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct TelemetrySection {
    /// Base URL of an OTLP/HTTP receiver (`/v1/traces` and `/v1/metrics`
    /// are appended), e.g. `http://127.0.0.1:4318`. Default: empty (no
    /// OTLP export).
    pub otlp_endpoint: String,
    /// `service.name` of what is exported. Default: `cairn`.
    pub service_name: String,
    /// Share of root traces sampled, 0.0 to 1.0 (a request that carries a
    /// `traceparent` follows its caller's decision). Default: 1.0.
    pub traces_sampler_ratio: f64,
    /// Spans waiting for export at most; more are dropped and counted
    /// (`cairn_telemetry_spans_dropped_total`). Default: 2048.
    pub export_queue_max_spans: usize,
    /// Spans per export request at most. Default: 512.
    pub export_batch_max_spans: usize,
    /// Longest an export request may take. Default: 5s.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    /// How often metrics are pushed over OTLP. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "cairn".to_owned(),
            traces_sampler_ratio: 1.0,
            export_queue_max_spans: 2048,
            export_batch_max_spans: 512,
            export_timeout: Duration::from_secs(5),
            metrics_interval: Duration::from_secs(10),
        }
    }
}

/// `[cluster]`: nodes with `enabled` on and the same `nats.urls` cluster
/// form one cairn cluster (see the README's cluster section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClusterSection {
    /// Join the cluster of the nodes on the same NATS. Default: false (a
    /// node alone, its store written first, then published).
    pub enabled: bool,
    /// This node's id: letters, digits, `-` and `_`, at most 64 bytes.
    /// Default: the host name and a hash of the data directory.
    pub node_id: Option<String>,
    /// How long a stream's lease (and a node's heartbeat) lives without
    /// renewal: how long a dead owner's streams wait for a new one.
    /// Default: `3s`.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often leases and heartbeats are renewed, streams placed.
    /// Default: `1s` (a third of the lease).
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
    /// Replicas of `CAIRN_LOG`, `CAIRN_BLOBS`, `CAIRN_SNAPSHOTS` and the
    /// lease buckets (at most the JetStream servers of the NATS cluster).
    /// Default: 3.
    pub stream_replicas: usize,
    /// Longest wait of a read carrying `Cairn-Min-Seq` for this node to
    /// apply that seq, before a 503. Default: `5s`.
    #[serde(with = "humantime_serde")]
    pub read_wait: Duration,
    /// Longest wait for a command forwarded to its owner (a registration
    /// waits for its first sync). Default: `10m`.
    #[serde(with = "humantime_serde")]
    pub forward_timeout: Duration,
    /// Longest wait at start for this node to apply the replicated log
    /// before it serves. Default: `10m`.
    #[serde(with = "humantime_serde")]
    pub catch_up_timeout: Duration,
    /// How often the snapshotter (one node, by lease) looks whether to take
    /// a snapshot of its store and trim the log (see the README's cluster
    /// section); `0s` takes none. Default: `10m`.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// How many log positions the store must have moved past the last
    /// snapshot for a new one. Default: 10000.
    pub snapshot_min_messages: u64,
    /// How old a blob's copy in `CAIRN_BLOBS` must be before the
    /// snapshotter may collect it (when no view of the snapshot and no
    /// commit the log holds references it); a node re-ships a blob whose
    /// known copy is older than a third of this. Default: `30m`.
    #[serde(with = "humantime_serde")]
    pub blob_grace: Duration,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: None,
            lease: Duration::from_secs(3),
            renew_interval: Duration::from_secs(1),
            stream_replicas: 3,
            read_wait: Duration::from_secs(5),
            forward_timeout: Duration::from_secs(600),
            catch_up_timeout: Duration::from_secs(600),
            snapshot_interval: Duration::from_secs(600),
            snapshot_min_messages: 10_000,
            blob_grace: Duration::from_secs(30 * 60),
        }
    }
}

impl NodeConfig {
    /// This node's cluster id: `cluster.node-id`, or the host name and a
    /// hash of the data directory.
    pub fn node_id(&self) -> String {
        if let Some(id) = &self.cluster.node_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(40)
            .collect::<String>();
        let dir = std::fs::canonicalize(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
        let digest = <sha2::Sha256 as sha2::Digest>::digest(dir.to_string_lossy().as_bytes());
        let host = if host.is_empty() {
            "node".to_owned()
        } else {
            host
        };
        format!("{host}-{}", hex::encode(&digest[..4]))
    }
}

/// `[nats]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct NatsConfig {
    /// NATS server URLs (several for a cluster). A list, or one string with
    /// commas. Default: empty — the node starts its own `nats-server -js`.
    #[serde(deserialize_with = "string_or_list")]
    pub urls: Vec<String>,
    /// Client address of the local nats-server when `urls` is empty.
    /// Default: `127.0.0.1:4222`.
    pub listen: String,
    /// The nats-server program for the local server. Default: `nats-server`.
    pub server_binary: String,
    /// How long to wait for NATS at start-up. Default: `10s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            listen: "127.0.0.1:4222".into(),
            server_binary: "nats-server".into(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// The largest `store.blob-inline-max-bytes`: 64 MiB (a RocksDB value that
/// size already costs more than a file).
pub const BLOB_INLINE_MAX_BYTES_LIMIT: usize = 64 << 20;

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoreSection {
    /// fsync every commit. Default: true.
    pub sync: bool,
    /// Most events in one append. Default: 1000.
    pub append_max_events: usize,
    /// Largest encoded event, in bytes. Default: 262144.
    pub event_max_bytes: usize,
    /// Most events per group commit. Default: 8192.
    pub group_commit_max_events: usize,
    /// Blobs up to this size are rows of the `blobs` column family; larger
    /// ones are files under `<data-dir>/store/blobs/`. Default: 1048576.
    pub blob_inline_max_bytes: usize,
}

impl Default for StoreSection {
    fn default() -> Self {
        let d = cairn_storage::StoreConfig::new("");
        Self {
            sync: d.sync,
            append_max_events: d.append_max_events,
            event_max_bytes: d.event_max_bytes,
            group_commit_max_events: d.group_commit_max_events,
            blob_inline_max_bytes: d.blob_inline_max_bytes,
        }
    }
}

/// `[publisher]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct PublisherSection {
    /// Unacknowledged publishes at most. Default: 512.
    pub max_in_flight: usize,
    /// Wait for one JetStream ack at most. Default: `5s`.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Replicas of the `CAIRN_EVENTS` stream when cairn creates it. Default: 1.
    pub stream_replicas: usize,
}

impl Default for PublisherSection {
    fn default() -> Self {
        let d = cairn_actors::publisher::PublisherConfig::default();
        Self {
            max_in_flight: d.max_in_flight,
            ack_timeout: d.ack_timeout,
            stream_replicas: d.stream_replicas,
        }
    }
}

/// `[service]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServiceSection {
    /// Largest request body, in bytes. Default: 65536.
    pub request_max_bytes: usize,
    /// Requests handled at once. Default: 256.
    pub max_concurrent_requests: usize,
    /// Largest file of a package written through `pkgrev.create|update`
    /// (and `cairn pkg push`), in bytes. Default: 524288.
    pub resource_max_bytes: usize,
}

impl Default for ServiceSection {
    fn default() -> Self {
        let d = cairn_actors::service::ServiceConfig::default();
        Self {
            request_max_bytes: d.request_max_bytes,
            max_concurrent_requests: d.max_concurrent_requests,
            resource_max_bytes: d.resource_max_bytes,
        }
    }
}

/// `[git]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct GitSection {
    /// Directory of secrets for `git.secret_ref`: the secret `<name>` is the
    /// directory `<secrets-dir>/<name>` with files `username` and
    /// `password`. Default: none (repositories with a secret_ref fail with
    /// an auth error).
    pub secrets_dir: Option<PathBuf>,
    /// How long a network upstream may take to connect, and to answer each
    /// read, before the sync fails with class `timeout`. Default: `60s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The committer name of every commit cairn writes (and the author of
    /// a branch it creates, or of a commit with no other author). Default:
    /// `Package Orchestration Service`, Porch's, so a commit reads the same
    /// whichever of the two wrote it.
    pub committer_name: String,
    /// The committer email. Default: `porch@kpt.dev`, Porch's.
    pub committer_email: String,
    /// How many times a push is tried when it fails transiently (Porch's
    /// retryable errors, e.g. `pre-receive hook declined`), 1 to 10.
    /// Default: `3` (Porch's `--repo-operation-retry-attempts`).
    pub push_attempts: u32,
    /// The wait before the n-th retry of a push is n times this (n times
    /// five times this after `pre-receive hook declined`), at most 10s.
    /// Default: `200ms` (Porch: 200ms, and 1s after a declining hook).
    #[serde(with = "humantime_serde")]
    pub push_retry_delay: Duration,
}

impl Default for GitSection {
    fn default() -> Self {
        let write = cairn_actors::origin::write::WriteConfig::default();
        Self {
            secrets_dir: None,
            timeout: Duration::from_secs(60),
            committer_name: write.committer.name,
            committer_email: write.committer.email,
            push_attempts: write.push_attempts,
            push_retry_delay: write.push_retry_delay,
        }
    }
}

impl GitSection {
    /// What the node's repositories write with.
    pub fn write_config(&self) -> cairn_actors::origin::write::WriteConfig {
        cairn_actors::origin::write::WriteConfig {
            committer: cairn_actors::origin::write::Author::new(
                &self.committer_name,
                &self.committer_email,
            ),
            push_attempts: self.push_attempts,
            push_retry_delay: self.push_retry_delay,
        }
    }
}

/// `[sync]`: when repositories sync by themselves (see
/// `cairn_actors::schedule`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct SyncSection {
    /// Time between syncs of a repository without a `sync.schedule`.
    /// Default: `5m`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Largest random delay added to each scheduled sync. Default: `10s`.
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Syncs running at once on the node. Default: 4.
    pub max_concurrent: usize,
    /// Memory all running syncs may hold at once for the package
    /// revisions they read, store and append, in bytes: each sync works in
    /// chunks reserved from it (see `cairn_actors::timing::budget`).
    /// Between 65536 (64 KiB) and 2^40 (1 TiB). Default: 268435456
    /// (256 MiB).
    pub memory_budget_bytes: u64,
    /// Delay before retrying a failed sync, by error class.
    pub retry: RetrySection,
}

/// `[sync.retry]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct RetrySection {
    /// The upstream could not be reached. Default: `30s`.
    #[serde(with = "humantime_serde")]
    pub network: Duration,
    /// The upstream did not answer in time. Default: `1m`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Credentials refused or missing. Default: `10m`.
    #[serde(with = "humantime_serde")]
    pub auth: Duration,
    /// The branch or repository does not exist. Default: `2m`.
    #[serde(with = "humantime_serde")]
    pub missing: Duration,
    /// Anything else. Default: `1m`.
    #[serde(with = "humantime_serde")]
    pub other: Duration,
}

impl Default for SyncSection {
    fn default() -> Self {
        let d = cairn_actors::schedule::SyncPolicy::default();
        Self {
            interval: d.interval,
            jitter: d.jitter,
            max_concurrent: d.max_concurrent,
            memory_budget_bytes: cairn_actors::timing::budget::DEFAULT_BUDGET_BYTES,
            retry: RetrySection {
                network: d.retry.network,
                timeout: d.retry.timeout,
                auth: d.retry.auth,
                missing: d.retry.missing,
                other: d.retry.other,
            },
        }
    }
}

impl Default for RetrySection {
    fn default() -> Self {
        SyncSection::default().retry
    }
}

impl SyncSection {
    /// The memory budget the node's syncs share.
    pub fn budget(&self) -> cairn_actors::timing::SyncBudget {
        cairn_actors::timing::SyncBudget::new(self.memory_budget_bytes, self.max_concurrent)
    }

    /// The policy the sync managers follow.
    pub fn policy(&self) -> cairn_actors::schedule::SyncPolicy {
        cairn_actors::schedule::SyncPolicy {
            interval: self.interval,
            jitter: self.jitter,
            max_concurrent: self.max_concurrent,
            retry: cairn_actors::schedule::RetryDelays {
                network: self.retry.network,
                timeout: self.retry.timeout,
                auth: self.retry.auth,
                missing: self.retry.missing,
                other: self.retry.other,
            },
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct LogSection {
    /// Level filter (`RUST_LOG` syntax; `RUST_LOG` itself wins).
    /// Default: `info,async_nats=warn`.
    pub level: String,
    /// `text` or `json`. Default: `text`.
    pub format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info,async_nats=warn".into(),
            format: "text".into(),
        }
    }
}

/// `[watch]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct WatchSection {
    /// Events queued per watcher before it is told to relist. Default: 10000.
    pub queue_size: usize,
    /// Live watchers at most; more are refused with 503. Default: 1024.
    pub max_watchers: usize,
}

impl Default for WatchSection {
    fn default() -> Self {
        let d = cairn_actors::watch::WatchConfig::default();
        Self {
            queue_size: d.queue_size,
            max_watchers: d.max_watchers,
        }
    }
}

impl WatchSection {
    /// The hub's configuration.
    pub fn watch_config(&self) -> cairn_actors::watch::WatchConfig {
        cairn_actors::watch::WatchConfig {
            queue_size: self.queue_size,
            max_watchers: self.max_watchers,
            ..Default::default()
        }
    }
}

/// Largest `kv.set-batch-max`.
pub const KV_SET_BATCH_MAX_LIMIT: usize = 8192;

/// `[kv]`: the key-value cache (README "Key-value cache").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct KvSection {
    /// Largest value of an entry, in bytes. Default: 1048576 (1 MiB).
    pub value_max_bytes: usize,
    /// Bytes the memory tier (in front of the disk tier) holds at most.
    /// Default: 67108864 (64 MiB).
    pub memory_max_bytes: u64,
    /// How often the sweeper removes expired entries; `0s`: never (they
    /// are still misses at once, and `kv.cleanup` removes them). Default:
    /// 60s.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: std::time::Duration,
    /// How long a compute (`kv.get_or_compute`) or a namespace's origin may
    /// take to answer; past it the request fails with 504. Default: 5s.
    #[serde(with = "humantime_serde")]
    pub origin_timeout: std::time::Duration,
    /// `sync`: a write is answered once fsynced (group commit); `batched`:
    /// once in RocksDB's write-ahead log, fsynced every `flush-interval`
    /// (like Redis's `appendfsync everysec`). Default: sync.
    pub durability: KvDurability,
    /// With `batched`, how often the write-ahead log is fsynced. Default: 1s.
    #[serde(with = "humantime_serde")]
    pub flush_interval: std::time::Duration,
    /// How often the `kv/` streams are compacted to the latest event per
    /// entry; `0s`: never. Default: 10m.
    #[serde(with = "humantime_serde")]
    pub compact_interval: std::time::Duration,
    /// How long a deleted entry's `KvEntryDeleted` stays in the log (for
    /// followers of the log) before compaction removes it. Default: 24h.
    #[serde(with = "humantime_serde")]
    pub tombstone_retention: std::time::Duration,
    /// Most sets a partition's writer appends in one batch (the sets that
    /// queued while it appended the previous one, sharing group commits).
    /// Default: 512.
    pub set_batch_max: usize,
}

/// `kv.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDurability {
    /// Fsynced before the reply.
    #[default]
    Sync,
    /// In the WAL before the reply, fsynced every `kv.flush-interval`.
    Batched,
}

impl Default for KvSection {
    fn default() -> Self {
        let d = cairn_actors::service::kv::KvServiceConfig::default();
        Self {
            value_max_bytes: d.value_max_bytes,
            memory_max_bytes: d.memory_max_bytes,
            sweep_interval: d.sweep_interval,
            origin_timeout: d.origin_timeout,
            durability: KvDurability::Sync,
            flush_interval: d.flush_interval,
            compact_interval: d.compact_interval,
            tombstone_retention: d.tombstone_retention,
            set_batch_max: d.set_batch_max,
        }
    }
}

impl KvSection {
    /// The service's configuration.
    pub fn kv_config(&self) -> cairn_actors::service::kv::KvServiceConfig {
        cairn_actors::service::kv::KvServiceConfig {
            value_max_bytes: self.value_max_bytes,
            memory_max_bytes: self.memory_max_bytes,
            sweep_interval: self.sweep_interval,
            origin_timeout: self.origin_timeout,
            durability: match self.durability {
                KvDurability::Sync => cairn_storage::Durability::Sync,
                KvDurability::Batched => cairn_storage::Durability::Buffered,
            },
            flush_interval: self.flush_interval,
            compact_interval: self.compact_interval,
            tombstone_retention: self.tombstone_retention,
            set_batch_max: self.set_batch_max,
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpSection {
    /// Address of the node's HTTP listener (artifact cache, `/metrics`,
    /// `/healthz`, `/readyz`); port 0 picks a free one; empty turns the
    /// listener off. Default: `127.0.0.1:8080`.
    pub listen: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
        }
    }
}

/// One `[[artifact.upstreams]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct UpstreamEntry {
    /// The name in `/u/<name>/<path>`: letters, digits, `-`, `_`.
    pub name: String,
    /// The origin's base URL (http or https).
    pub url: String,
}

/// `[artifact]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ArtifactSection {
    /// Reverse-proxy upstreams. Default: none.
    pub upstreams: Vec<UpstreamEntry>,
    /// Hosts the URL lookup (`/v1/artifacts?url=`, `artifact.get`) may
    /// fetch from; `*` for any. Default: none.
    #[serde(deserialize_with = "string_or_list")]
    pub allow: Vec<String>,
    /// Longest wait for an origin to connect, answer, or send the next
    /// bytes of a body. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub origin_timeout: Duration,
    /// Bytes of distinct bodies kept (least recently used evicted first).
    /// Default: 10737418240 (10 GiB).
    pub max_bytes: u64,
    /// Entries kept. Default: 100000.
    pub max_entries: u64,
    /// Longest an entry is kept after it was stored, whatever its HTTP
    /// freshness. Default: 30days.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Serve what is stored, stale or not, when the origin is unreachable
    /// or fails with 5xx (never for must-revalidate / proxy-revalidate /
    /// s-maxage / no-cache responses); marked `Cache-Status: cairn; hit;
    /// detail=stale`. Default: false.
    pub serve_stale_if_unreachable: bool,
    /// Redirects the URL lookup follows (each to an allowed host).
    /// Default: 10.
    pub redirects_max: usize,
}

impl Default for ArtifactSection {
    fn default() -> Self {
        let d = cairn_actors::artifact::ArtifactConfig::default();
        Self {
            upstreams: Vec::new(),
            allow: Vec::new(),
            origin_timeout: d.origin_timeout,
            max_bytes: d.max_bytes,
            max_entries: d.max_entries,
            max_age: d.max_age,
            serve_stale_if_unreachable: d.serve_stale_if_unreachable,
            redirects_max: d.redirects_max,
        }
    }
}

impl ArtifactSection {
    /// The cache's configuration (upstream URLs checked by `validate`).
    pub fn artifact_config(&self) -> Result<cairn_actors::artifact::ArtifactConfig, ConfigError> {
        let mut upstreams = Vec::with_capacity(self.upstreams.len());
        for (i, u) in self.upstreams.iter().enumerate() {
            let key = format!("artifact.upstreams[{i}]");
            if u.name.is_empty()
                || !u
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError(format!(
                    "{key}.name: {:?} must be letters, digits, '-' or '_'",
                    u.name
                )));
            }
            if self.upstreams[..i].iter().any(|o| o.name == u.name) {
                return Err(ConfigError(format!(
                    "{key}.name: {:?} is configured twice",
                    u.name
                )));
            }
            let mut url = url::Url::parse(&u.url)
                .map_err(|e| ConfigError(format!("{key}.url: {:?}: {e}", u.url)))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(ConfigError(format!(
                    "{key}.url: {:?} is not an http(s) URL with a host",
                    u.url
                )));
            }
            if !url.path().ends_with('/') {
                let path = format!("{}/", url.path());
                url.set_path(&path);
            }
            upstreams.push(cairn_actors::artifact::Upstream {
                name: u.name.clone(),
                url,
            });
        }
        Ok(cairn_actors::artifact::ArtifactConfig {
            upstreams,
            allow: self.allow.clone(),
            origin_timeout: self.origin_timeout,
            max_bytes: self.max_bytes,
            max_entries: self.max_entries,
            max_age: self.max_age,
            serve_stale_if_unreachable: self.serve_stale_if_unreachable,
            redirects_max: self.redirects_max,
            ..Default::default()
        })
    }
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

/// A configuration error; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Command-line overrides (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--nats-url` (repeatable).
    pub nats_urls: Vec<String>,
    /// `--nats-listen`.
    pub nats_listen: Option<String>,
    /// `--log-level`.
    pub log_level: Option<String>,
}

impl NodeConfig {
    /// Loads defaults ← `file` (or `CAIRN_CONFIG`) ← `CAIRN_*` ← `overrides`,
    /// then validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(NodeConfig::default()));
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("CAIRN_CONFIG").map(PathBuf::from));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        let env = Env::prefixed("CAIRN_")
            .split("__")
            .map(|key| key.as_str().replace('_', "-").into())
            .filter(|key| {
                // Keys are still upper case here; figment lowercases later.
                let section = key
                    .as_str()
                    .split('.')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                SECTIONS.contains(&section.as_str())
            });
        figment = figment.merge(env);
        if let Some(d) = &overrides.data_dir {
            figment = figment.merge(Serialized::default("data-dir", d));
        }
        if !overrides.nats_urls.is_empty() {
            figment = figment.merge(Serialized::default("nats.urls", &overrides.nats_urls));
        }
        if let Some(l) = &overrides.nats_listen {
            figment = figment.merge(Serialized::default("nats.listen", l));
        }
        if let Some(l) = &overrides.log_level {
            figment = figment.merge(Serialized::default("log.level", l));
        }
        let config: NodeConfig = figment
            .extract()
            .map_err(|e| ConfigError(figment_message(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("{key}: {why}")));
        if self.data_dir.as_os_str().is_empty() {
            return bad("data-dir", "must not be empty".into());
        }
        if self.kv.durability == KvDurability::Batched && self.kv.flush_interval.is_zero() {
            return bad(
                "kv.flush-interval",
                "must be more than 0s with kv.durability = \"batched\"".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.telemetry.traces_sampler_ratio) {
            return bad(
                "telemetry.traces-sampler-ratio",
                format!(
                    "must be between 0.0 and 1.0, got {}",
                    self.telemetry.traces_sampler_ratio
                ),
            );
        }
        if !(1..=1_000_000).contains(&self.telemetry.export_queue_max_spans) {
            return bad(
                "telemetry.export-queue-max-spans",
                "must be between 1 and 1000000".into(),
            );
        }
        if self.telemetry.export_batch_max_spans == 0
            || self.telemetry.export_batch_max_spans > self.telemetry.export_queue_max_spans
        {
            return bad(
                "telemetry.export-batch-max-spans",
                "must be between 1 and telemetry.export-queue-max-spans".into(),
            );
        }
        if self.telemetry.export_timeout.is_zero() {
            return bad("telemetry.export-timeout", "must be more than 0s".into());
        }
        if self.telemetry.metrics_interval.is_zero() {
            return bad("telemetry.metrics-interval", "must be more than 0s".into());
        }
        let endpoint = &self.telemetry.otlp_endpoint;
        if !endpoint.is_empty() && url::Url::parse(endpoint).is_err() {
            return bad(
                "telemetry.otlp-endpoint",
                format!("{endpoint:?} is not a URL like http://127.0.0.1:4318"),
            );
        }
        if self.kv.origin_timeout.is_zero() {
            return bad("kv.origin-timeout", "must be more than 0s".into());
        }
        if self.kv.value_max_bytes == 0 {
            return bad("kv.value-max-bytes", "must be at least 1".into());
        }
        if !(1..=crate::config::KV_SET_BATCH_MAX_LIMIT).contains(&self.kv.set_batch_max) {
            return bad(
                "kv.set-batch-max",
                format!(
                    "must be from 1 to {}, got {}",
                    crate::config::KV_SET_BATCH_MAX_LIMIT,
                    self.kv.set_batch_max
                ),
            );
        }
        for (i, url) in self.nats.urls.iter().enumerate() {
            let ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|p| url.starts_with(p))
                || url.parse::<SocketAddr>().is_ok()
                || (!url.contains("://") && url.contains(':'));
            if !ok {
                return bad(
                    &format!("nats.urls[{i}]"),
                    format!("{url:?} is not a NATS URL (nats://host:port)"),
                );
            }
        }
        if self.nats.listen.parse::<SocketAddr>().is_err() {
            return bad(
                "nats.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:4222",
                    self.nats.listen
                ),
            );
        }
        if self.nats.server_binary.is_empty() {
            return bad("nats.server-binary", "must not be empty".into());
        }
        if self.nats.connect_timeout.is_zero() {
            return bad("nats.connect-timeout", "must be more than 0s".into());
        }
        if self.git.timeout < Duration::from_millis(100)
            || self.git.timeout > Duration::from_secs(3600)
        {
            return bad(
                "git.timeout",
                format!("must be between 100ms and 1h, got {:?}", self.git.timeout),
            );
        }
        for (key, value) in [
            ("git.committer-name", &self.git.committer_name),
            ("git.committer-email", &self.git.committer_email),
        ] {
            if value.trim().is_empty() {
                return bad(key, "must not be empty (Git needs a committer)".into());
            }
            if let Some(why) = cairn_actors::origin::names::signature_part(value) {
                return bad(key, format!("{value:?} {why}"));
            }
        }
        if !(1..=10).contains(&self.git.push_attempts) {
            return bad(
                "git.push-attempts",
                format!("must be between 1 and 10, got {}", self.git.push_attempts),
            );
        }
        if self.git.push_retry_delay > Duration::from_secs(10) {
            return bad(
                "git.push-retry-delay",
                format!("must be at most 10s, got {:?}", self.git.push_retry_delay),
            );
        }
        if self.sync.interval < Duration::from_secs(1) {
            return bad(
                "sync.interval",
                format!("must be at least 1s, got {:?}", self.sync.interval),
            );
        }
        if self.sync.jitter > self.sync.interval {
            return bad(
                "sync.jitter",
                format!(
                    "must not exceed sync.interval ({:?}), got {:?}",
                    self.sync.interval, self.sync.jitter
                ),
            );
        }
        if !(1..=1024).contains(&self.sync.max_concurrent) {
            return bad(
                "sync.max-concurrent",
                format!(
                    "must be between 1 and 1024, got {}",
                    self.sync.max_concurrent
                ),
            );
        }
        let (min, max) = (
            cairn_actors::timing::budget::MIN_BUDGET_BYTES,
            cairn_actors::timing::budget::MAX_BUDGET_BYTES,
        );
        if !(min..=max).contains(&self.sync.memory_budget_bytes) {
            return bad(
                "sync.memory-budget-bytes",
                format!(
                    "must be between {min} and {max}, got {}",
                    self.sync.memory_budget_bytes
                ),
            );
        }
        let r = &self.sync.retry;
        for (key, delay) in [
            ("network", r.network),
            ("timeout", r.timeout),
            ("auth", r.auth),
            ("missing", r.missing),
            ("other", r.other),
        ] {
            if delay < Duration::from_secs(1) {
                return bad(
                    &format!("sync.retry.{key}"),
                    format!("must be at least 1s, got {delay:?}"),
                );
            }
        }
        if !(1..=100_000).contains(&self.store.append_max_events) {
            return bad(
                "store.append-max-events",
                format!(
                    "must be between 1 and 100000, got {}",
                    self.store.append_max_events
                ),
            );
        }
        // At least a key-value entry's room (its longest key and
        // namespace, its most and longest tags) and 14 KiB of value.
        let event_min = cairn_actors::service::kv::ENTRY_ROOM_BYTES + 14 * 1024;
        if !(event_min..=900 * 1024).contains(&self.store.event_max_bytes) {
            return bad(
                "store.event-max-bytes",
                format!(
                    "must be between {event_min} (a key-value entry's names and tags, {} bytes, and 14 KiB of value) and 921600, got {}",
                    cairn_actors::service::kv::ENTRY_ROOM_BYTES,
                    self.store.event_max_bytes
                ),
            );
        }
        if self.store.group_commit_max_events < self.store.append_max_events {
            return bad(
                "store.group-commit-max-events",
                format!(
                    "must be at least store.append-max-events ({})",
                    self.store.append_max_events
                ),
            );
        }
        if self.store.blob_inline_max_bytes > BLOB_INLINE_MAX_BYTES_LIMIT {
            return bad(
                "store.blob-inline-max-bytes",
                format!(
                    "must be at most {BLOB_INLINE_MAX_BYTES_LIMIT} (larger blobs belong in files), got {}",
                    self.store.blob_inline_max_bytes
                ),
            );
        }
        if !(1..=65_536).contains(&self.publisher.max_in_flight) {
            return bad(
                "publisher.max-in-flight",
                format!(
                    "must be between 1 and 65536, got {}",
                    self.publisher.max_in_flight
                ),
            );
        }
        if self.publisher.ack_timeout.is_zero() {
            return bad("publisher.ack-timeout", "must be more than 0s".into());
        }
        if !(1..=5).contains(&self.publisher.stream_replicas) {
            return bad(
                "publisher.stream-replicas",
                format!(
                    "must be between 1 and 5, got {}",
                    self.publisher.stream_replicas
                ),
            );
        }
        if !(1024..=1024 * 1024).contains(&self.service.request_max_bytes) {
            return bad(
                "service.request-max-bytes",
                format!(
                    "must be between 1024 and 1048576, got {}",
                    self.service.request_max_bytes
                ),
            );
        }
        if !(1..=64 << 20).contains(&self.service.resource_max_bytes) {
            return bad(
                "service.resource-max-bytes",
                format!(
                    "must be between 1 and 67108864, got {}",
                    self.service.resource_max_bytes
                ),
            );
        }
        if self.service.max_concurrent_requests == 0 {
            return bad(
                "service.max-concurrent-requests",
                "must be at least 1".into(),
            );
        }
        if !(1..=1_000_000).contains(&self.watch.queue_size) {
            return bad(
                "watch.queue-size",
                format!(
                    "must be between 1 and 1000000, got {}",
                    self.watch.queue_size
                ),
            );
        }
        if !(1..=65_536).contains(&self.watch.max_watchers) {
            return bad(
                "watch.max-watchers",
                format!(
                    "must be between 1 and 65536, got {}",
                    self.watch.max_watchers
                ),
            );
        }
        if let Some(id) = &self.cluster.node_id {
            if id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return bad(
                    "cluster.node-id",
                    format!("must be 1 to 64 letters, digits, '-' or '_', got {id:?}"),
                );
            }
        }
        if self.cluster.lease < Duration::from_millis(500) {
            return bad("cluster.lease", "must be at least 500ms".into());
        }
        if self.cluster.renew_interval.is_zero()
            || self.cluster.renew_interval * 2 > self.cluster.lease
        {
            return bad(
                "cluster.renew-interval",
                "must be more than 0 and at most half of cluster.lease".into(),
            );
        }
        if self.cluster.stream_replicas == 0 || self.cluster.stream_replicas > 5 {
            return bad("cluster.stream-replicas", "must be 1 to 5".into());
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<SocketAddr>().is_err() {
            return bad(
                "http.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:8080 (or empty for none)",
                    self.http.listen
                ),
            );
        }
        self.artifact.artifact_config()?;
        if self.artifact.origin_timeout < Duration::from_millis(10)
            || self.artifact.origin_timeout > Duration::from_secs(3600)
        {
            return bad(
                "artifact.origin-timeout",
                format!(
                    "must be between 10ms and 1h, got {:?}",
                    self.artifact.origin_timeout
                ),
            );
        }
        if self.artifact.max_entries == 0 || self.artifact.max_bytes == 0 {
            return bad(
                "artifact.max-entries",
                "artifact.max-entries and artifact.max-bytes must be more than 0".into(),
            );
        }
        if self.artifact.redirects_max > 20 {
            return bad(
                "artifact.redirects-max",
                format!("must be at most 20, got {}", self.artifact.redirects_max),
            );
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return bad(
                "log.format",
                format!("must be \"text\" or \"json\", got {:?}", self.log.format),
            );
        }
        Ok(())
    }

    /// Where local mirrors of upstream repositories live.
    pub fn git_cache_dir(&self) -> PathBuf {
        self.data_dir.join("git")
    }

    /// The store's directory.
    pub fn store_dir(&self) -> PathBuf {
        store_dir(&self.data_dir)
    }

    /// The store configuration.
    pub fn store_config(&self) -> cairn_storage::StoreConfig {
        let mut c = cairn_storage::StoreConfig::new(self.store_dir());
        c.sync = self.store.sync;
        c.append_max_events = self.store.append_max_events;
        c.event_max_bytes = self.store.event_max_bytes;
        c.group_commit_max_events = self.store.group_commit_max_events;
        c.blob_inline_max_bytes = self.store.blob_inline_max_bytes;
        c
    }
}

/// The store directory inside a data directory.
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

fn figment_message(e: figment::Error) -> String {
    let mut out = Vec::new();
    for e in e {
        let key = e.path.join(".");
        let source = e.metadata.as_ref().map(|m| m.name.to_string());
        let mut text = if key.is_empty() {
            e.kind.to_string()
        } else {
            format!("{key}: {}", e.kind)
        };
        if let Some(source) = source {
            text.push_str(&format!(" (from {source})"));
        }
        out.push(text);
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the process environment, so env-dependent checks
    // live together here and never race with each other.
    #[test]
    fn precedence_file_env_flags_and_errors_name_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "data-dir = \"/from/file\"\n[nats]\nlisten = \"127.0.0.1:5000\"\n[publisher]\nmax-in-flight = 7\n").unwrap();
        std::env::set_var("CAIRN_NATS__LISTEN", "127.0.0.1:6000");
        std::env::set_var("CAIRN_BLESS", "1"); // unrelated variables are ignored
        let c = NodeConfig::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.nats.listen, "127.0.0.1:6000", "env beats file");
        assert_eq!(c.publisher.max_in_flight, 7);
        let flags = Overrides {
            nats_listen: Some("127.0.0.1:7000".into()),
            data_dir: Some("/flag".into()),
            ..Default::default()
        };
        let c = NodeConfig::load(Some(&file), &flags).unwrap();
        assert_eq!(
            (c.nats.listen.as_str(), c.data_dir.to_str().unwrap()),
            ("127.0.0.1:7000", "/flag")
        );

        std::env::set_var("CAIRN_NATS__URLS", "nats://a:4222, nats://b:4222");
        let c = NodeConfig::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.nats.urls, ["nats://a:4222", "nats://b:4222"]);
        std::env::remove_var("CAIRN_NATS__URLS");

        std::env::set_var("CAIRN_SYNC__MEMORY_BUDGET_BYTES", "1048576");
        let c = NodeConfig::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.sync.memory_budget_bytes, 1 << 20);
        std::env::set_var("CAIRN_SYNC__MEMORY_BUDGET_BYTES", "-1");
        let err = NodeConfig::load(None, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("configuration: sync.memory-budget-bytes: invalid"),
            "{err}"
        );
        std::env::remove_var("CAIRN_SYNC__MEMORY_BUDGET_BYTES");

        std::env::set_var("CAIRN_PUBLISHER__MAX_IN_FLIGHT", "lots");
        let err = NodeConfig::load(None, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("configuration: publisher.max-in-flight: invalid type"),
            "{err}"
        );
        std::env::remove_var("CAIRN_PUBLISHER__MAX_IN_FLIGHT");
        std::env::remove_var("CAIRN_NATS__LISTEN");

        std::fs::write(&file, "[nats]\nlisen = \"x\"\n").unwrap();
        let err = NodeConfig::load(Some(&file), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("configuration: nats.lisen: unknown field: found `lisen`"),
            "{err}"
        );

        std::fs::write(&file, "[nats]\nlisten = \"localhost\"\n").unwrap();
        let err = NodeConfig::load(Some(&file), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "configuration: nats.listen: \"localhost\" is not an address like 127.0.0.1:4222"
        );

        let err = NodeConfig::load(
            Some(&dir.path().join("missing.toml")),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.ends_with("missing.toml does not exist"), "{err}");
    }

    /// A change to the telemetry section and the error it must cause.
    type TelemetryCase = (fn(&mut TelemetrySection), &'static str);

    #[test]
    fn telemetry_keys_are_validated_naming_the_key() {
        let cases: [TelemetryCase; 5] = [
            (
                |t| t.traces_sampler_ratio = 1.5,
                "configuration: telemetry.traces-sampler-ratio: must be between 0.0 and 1.0, got 1.5",
            ),
            (
                |t| t.export_queue_max_spans = 0,
                "configuration: telemetry.export-queue-max-spans: must be between 1 and 1000000",
            ),
            (
                |t| t.export_batch_max_spans = 4096,
                "configuration: telemetry.export-batch-max-spans: must be between 1 and telemetry.export-queue-max-spans",
            ),
            (
                |t| t.export_timeout = Duration::ZERO,
                "configuration: telemetry.export-timeout: must be more than 0s",
            ),
            (
                |t| t.otlp_endpoint = "not a url".into(),
                "configuration: telemetry.otlp-endpoint: \"not a url\" is not a URL like http://127.0.0.1:4318",
            ),
        ];
        for (change, expected) in cases {
            let mut c = NodeConfig::default();
            change(&mut c.telemetry);
            assert_eq!(c.validate().unwrap_err().to_string(), expected);
        }
        let mut c = NodeConfig::default();
        c.telemetry.otlp_endpoint = "http://127.0.0.1:4318".into();
        c.validate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "[telemetry]\notlp-endpoint = \"http://c:4318\"\nexport-timeout = \"2s\"\n",
        )
        .unwrap();
        let parsed = NodeConfig::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!(parsed.telemetry.otlp_endpoint, "http://c:4318");
        assert_eq!(parsed.telemetry.export_timeout, Duration::from_secs(2));
        std::fs::write(&file, "[telemetry]\nendpoint = \"x\"\n").unwrap();
        let err = NodeConfig::load(Some(&file), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("configuration: telemetry.endpoint: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = NodeConfig::default();
        c.publisher.max_in_flight = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "configuration: publisher.max-in-flight: must be between 1 and 65536, got 0"
        );
        let mut c = NodeConfig::default();
        c.nats.urls = vec!["nats://ok:4222".into(), "http://x".into()];
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "configuration: nats.urls[1]: \"http://x\" is not a NATS URL (nats://host:port)"
        );
        let mut c = NodeConfig::default();
        c.watch.queue_size = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "configuration: watch.queue-size: must be between 1 and 1000000, got 0"
        );
        let mut c = NodeConfig::default();
        c.watch.max_watchers = 100_000;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "configuration: watch.max-watchers: must be between 1 and 65536, got 100000"
        );
        let mut c = NodeConfig::default();
        c.log.format = "xml".into();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "configuration: log.format: must be \"text\" or \"json\", got \"xml\""
        );
        let mut c = NodeConfig::default();
        c.sync.max_concurrent = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "configuration: sync.max-concurrent: must be between 1 and 1024, got 0"
        );
        let mut c = NodeConfig::default();
        c.sync.memory_budget_bytes = 1000;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "configuration: sync.memory-budget-bytes: must be between 65536 and 1099511627776, got 1000"
        );
        c.sync.memory_budget_bytes = 1 << 20;
        c.sync.max_concurrent = 2;
        c.validate().unwrap();
        // Shared so that each sync allowed at once holds two chunks.
        assert_eq!(c.sync.budget().chunk_bytes(), 256 << 10);
        let mut c = NodeConfig::default();
        c.sync.retry.auth = Duration::from_millis(10);
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "configuration: sync.retry.auth: must be at least 1s, got 10ms"
        );
        let mut c = NodeConfig::default();
        c.sync.jitter = Duration::from_secs(600);
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "configuration: sync.jitter: must not exceed sync.interval (300s), got 600s"
        );
        let mut c = NodeConfig::default();
        c.store.blob_inline_max_bytes = 65 << 20;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "configuration: store.blob-inline-max-bytes: must be at most 67108864 (larger blobs belong in files), got 68157440"
        );
        let mut c = NodeConfig::default();
        c.store.blob_inline_max_bytes = 4096;
        assert_eq!(c.store_config().blob_inline_max_bytes, 4096);
        assert_eq!(
            NodeConfig::default().store_config().blob_inline_max_bytes,
            1 << 20
        );
        NodeConfig::default().validate().unwrap();
    }

    #[test]
    fn the_committer_and_push_retries_are_configured_and_checked() {
        let d = NodeConfig::default().git.write_config();
        assert_eq!(
            (d.committer.name.as_str(), d.committer.email.as_str()),
            ("Package Orchestration Service", "porch@kpt.dev")
        );
        assert_eq!(
            (d.push_attempts, d.push_retry_delay),
            (3, Duration::from_millis(200))
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "[git]\ncommitter-name = \"cairn\"\ncommitter-email = \"cairn@example.com\"\npush-attempts = 5\npush-retry-delay = \"10ms\"\n",
        )
        .unwrap();
        let w = NodeConfig::load(Some(&file), &Overrides::default())
            .unwrap()
            .git
            .write_config();
        assert_eq!(
            (
                w.committer.name.as_str(),
                w.committer.email.as_str(),
                w.push_attempts,
                w.push_retry_delay
            ),
            ("cairn", "cairn@example.com", 5, Duration::from_millis(10))
        );
        for (change, error) in [
            (
                (|c: &mut NodeConfig| c.git.committer_name = " ".into())
                    as fn(&mut NodeConfig),
                "git.committer-name: must not be empty (Git needs a committer)",
            ),
            (
                |c| c.git.committer_email = "<x@y>".into(),
                "git.committer-email: \"<x@y>\" must not contain '<' or '>' (they delimit the email in a Git commit)",
            ),
            (
                |c| c.git.push_attempts = 0,
                "git.push-attempts: must be between 1 and 10, got 0",
            ),
            (
                |c| c.git.push_retry_delay = Duration::from_secs(11),
                "git.push-retry-delay: must be at most 10s, got 11s",
            ),
        ] {
            let mut c = NodeConfig::default();
            change(&mut c);
            assert_eq!(
                c.validate().unwrap_err().to_string(),
                format!("configuration: {error}")
            );
        }
    }
}
