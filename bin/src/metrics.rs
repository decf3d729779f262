//! The node's one metrics registry: the OpenTelemetry SDK meter provider,
//! read by a Prometheus exporter (text on the HTTP listener's `/metrics`)
//! and, when an OTLP endpoint is configured, pushed over OTLP/HTTP every
//! `telemetry.metrics-interval`.
//!
//! - The libraries record through the OpenTelemetry metrics API
//!   (`cairn_actors::metrics`, `cairn_storage::metrics`); [`install`]
//!   installs the provider they record to, once per process.
//! - What the node already counts (cache counters of every domain, the
//!   log's sequence, view and publisher positions, live watchers, owned
//!   streams) is read at collection time by observable instruments
//!   registered here, from the [`NodeSources`] of the running node
//!   ([`attach`] at start, [`detach`] at shutdown — so no handle keeps the
//!   store open after it).
//!
//! Decision: one registry per process. A production node is one process;
//! in-process test nodes side by side share the registry, and the observed
//! values are those of the node attached last.
//!
//! Every metric is listed in the README (Observability → Metrics); labels
//! take bounded values only (`domain`, `endpoint`, `code`, `result`,
//! `error_class`, `change`, `kind`, `source`, `reason`, `state`).

use std::sync::{Arc, Mutex, OnceLock};

use cairn_actors::{artifact::ArtifactCache, kv::KvNode, watch::WatchHub};
use cairn_storage::{views::ArtifactsView, EventLog as _, Store};
use opentelemetry::{metrics::Meter, KeyValue};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use tracing::warn;

use crate::config::TelemetrySection;

/// What the observable instruments read: the running node's parts.
#[derive(Clone)]
pub struct NodeSources {
    /// The store (log sequence, view checkpoints, row cache, memory).
    pub store: Store,
    /// The artifact cache.
    pub artifacts: Arc<ArtifactCache>,
    /// The key-value cache, when the node runs one.
    pub kv: Option<KvNode>,
    /// The watch hub.
    pub watch: WatchHub,
    /// Streams this node owns now, in a cluster.
    pub owned_streams: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
    /// Syncs running and waiting for a slot.
    pub sync_slots: tokio::sync::watch::Receiver<cairn_actors::schedule::SlotState>,
    /// (applied, last seen) positions of the cluster's log, in a cluster.
    pub cluster_positions: Option<crate::health::ClusterPositions>,
}

impl std::fmt::Debug for NodeSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSources").finish_non_exhaustive()
    }
}

/// The process's registry.
#[derive(Debug)]
pub struct Registry {
    prometheus: prometheus::Registry,
    provider: SdkMeterProvider,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();
static SOURCES: Mutex<Option<NodeSources>> = Mutex::new(None);

/// The view names whose row-cache counters are domain `pkgrev`.
const PKGREV_VIEWS: [&str; 2] = [
    cairn_storage::views::PackageRevisionsView::NAME,
    cairn_storage::views::PackageRevisionListView::NAME,
];
/// … and domain `repo`.
const REPO_VIEWS: [&str; 1] = [cairn_storage::views::RepositoriesView::NAME];

/// Installs the process's meter provider (once; later calls return the
/// first one): Prometheus always, OTLP/HTTP when `endpoint` is set.
pub fn install(config: &TelemetrySection, endpoint: Option<&str>) -> &'static Registry {
    REGISTRY.get_or_init(|| {
        let prometheus = prometheus::Registry::new();
        let mut builder =
            SdkMeterProvider::builder().with_resource(crate::telemetry::resource(config));
        match opentelemetry_prometheus::exporter()
            .with_registry(prometheus.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
        {
            Ok(exporter) => builder = builder.with_reader(exporter),
            Err(e) => warn!(error = %e, "prometheus exporter not started"),
        }
        if let Some(endpoint) = endpoint {
            match crate::telemetry::otlp_metrics(config, endpoint) {
                Ok(exporter) => {
                    let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
                        .with_interval(config.metrics_interval)
                        .build();
                    builder = builder.with_reader(reader);
                }
                Err(e) => warn!(error = %e, "OTLP metrics exporter not started"),
            }
        }
        let provider = builder.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        cairn_actors::metrics::install();
        register_observables(&opentelemetry::global::meter("cairn"));
        Registry {
            prometheus,
            provider,
        }
    })
}

impl Registry {
    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.prometheus.gather(), &mut out) {
            warn!(error = %e, "metrics not encoded");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Pushes what is pending over OTLP (bounded by the exporter's timeout).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::debug!(error = %e, "metrics flush");
        }
    }
}

/// The running node's parts are what the observable instruments read.
pub fn attach(sources: NodeSources) {
    *SOURCES.lock().expect("sources lock") = Some(sources);
}

/// The node stops: observable instruments read nothing more.
pub fn detach() {
    SOURCES.lock().expect("sources lock").take();
}

fn sources() -> Option<NodeSources> {
    SOURCES.lock().expect("sources lock").clone()
}

/// Cache counters of one domain.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DomainCache {
    /// Reads served from the cache.
    pub hits: u64,
    /// Reads that were not.
    pub misses: u64,
    /// Entries pushed out by the cache's bounds.
    pub evictions: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes held now.
    pub bytes: u64,
}

impl DomainCache {
    /// hits / (hits + misses); 0 before any read.
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

/// The cache counters of every domain (`pkgrev`, `repo`, `kv`,
/// `artifact`) of `sources`.
pub fn domain_caches(sources: &NodeSources) -> Vec<(&'static str, DomainCache)> {
    let mut pkgrev = DomainCache::default();
    let mut repo = DomainCache::default();
    for (view, c) in sources.store.row_cache_stats() {
        let into = if PKGREV_VIEWS.contains(&view.as_str()) {
            &mut pkgrev
        } else if REPO_VIEWS.contains(&view.as_str()) {
            &mut repo
        } else {
            continue;
        };
        into.hits += c.hits;
        into.misses += c.misses;
        into.evictions += c.evictions;
        into.entries += c.entries;
        into.bytes += c.bytes;
    }
    let mut kv = DomainCache::default();
    if let Some(node) = &sources.kv {
        let memory = &node.env().memory;
        let c = memory.counters(None);
        kv.hits = c.hits;
        kv.misses = c.misses;
        kv.evictions = c.evictions;
        for partition in memory.partitions() {
            let tracker = partition.lock();
            for ns in tracker.namespaces.values() {
                kv.entries += ns.entries.len() as u64;
                kv.bytes += ns.bytes;
            }
        }
    }
    let stats = sources.artifacts.stats();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let totals = ArtifactsView::totals(&sources.store.snapshot()).unwrap_or_default();
    let artifact = DomainCache {
        hits: get(&stats.hits),
        misses: get(&stats.misses),
        evictions: get(&stats.evictions),
        entries: totals.entries,
        bytes: totals.bytes,
    };
    vec![
        ("pkgrev", pkgrev),
        ("repo", repo),
        ("kv", kv),
        ("artifact", artifact),
    ]
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

/// Positions of the log: (last seq, lowest view checkpoint).
fn positions(store: &Store) -> (u64, u64) {
    let last = store.last_seq().unwrap_or(0);
    let lowest = store
        .view_names()
        .iter()
        .filter_map(|v| {
            store
                .meta_u64(&cairn_storage::keys::meta::checkpoint(v))
                .ok()
                .flatten()
        })
        .min()
        .unwrap_or(last);
    (last, lowest)
}

/// The observable instruments (see the module docs). Kept for the
/// process's life: their callbacks read [`SOURCES`].
fn register_observables(meter: &Meter) {
    type Observe<T> = fn(&NodeSources, &mut Vec<(T, Vec<KeyValue>)>);
    fn gauge_u64(
        meter: &Meter,
        name: &'static str,
        unit: Option<&'static str>,
        description: &'static str,
        counter: bool,
        read: Observe<u64>,
    ) {
        let callback = move |o: &dyn opentelemetry::metrics::AsyncInstrument<u64>| {
            if let Some(s) = sources() {
                let mut points = Vec::new();
                read(&s, &mut points);
                for (v, labels) in points {
                    o.observe(v, &labels);
                }
            }
        };
        if counter {
            let mut b = meter
                .u64_observable_counter(name)
                .with_description(description);
            if let Some(unit) = unit {
                b = b.with_unit(unit);
            }
            b.with_callback(callback).build();
        } else {
            let mut b = meter
                .u64_observable_gauge(name)
                .with_description(description);
            if let Some(unit) = unit {
                b = b.with_unit(unit);
            }
            b.with_callback(callback).build();
        }
    }
    gauge_u64(
        meter,
        "cairn_cache_hits",
        None,
        "reads served from a cache, by domain",
        true,
        |s, p| {
            for (d, c) in domain_caches(s) {
                p.push((c.hits, vec![KeyValue::new("domain", d)]));
            }
        },
    );
    gauge_u64(
        meter,
        "cairn_cache_misses",
        None,
        "reads a cache could not serve, by domain",
        true,
        |s, p| {
            for (d, c) in domain_caches(s) {
                p.push((c.misses, vec![KeyValue::new("domain", d)]));
            }
        },
    );
    gauge_u64(
        meter,
        "cairn_cache_evictions",
        None,
        "entries pushed out by a cache's bounds, by domain",
        true,
        |s, p| {
            for (d, c) in domain_caches(s) {
                p.push((c.evictions, vec![KeyValue::new("domain", d)]));
            }
        },
    );
    gauge_u64(
        meter,
        "cairn_cache_entries",
        None,
        "entries a cache holds, by domain",
        false,
        |s, p| {
            for (d, c) in domain_caches(s) {
                p.push((c.entries, vec![KeyValue::new("domain", d)]));
            }
        },
    );
    gauge_u64(
        meter,
        "cairn_cache",
        Some("By"),
        "bytes a cache holds, by domain",
        false,
        |s, p| {
            for (d, c) in domain_caches(s) {
                p.push((c.bytes, vec![KeyValue::new("domain", d)]));
            }
        },
    );
    meter
        .f64_observable_gauge("cairn_cache_hit_ratio")
        .with_description("hits / (hits + misses) since the node started, by domain")
        .with_callback(|o| {
            if let Some(s) = sources() {
                for (d, c) in domain_caches(&s) {
                    o.observe(c.hit_ratio(), &[KeyValue::new("domain", d)]);
                }
            }
        })
        .build();
    gauge_u64(
        meter,
        "cairn_artifact_revalidations",
        None,
        "artifact revalidations, by result (not_modified, modified)",
        true,
        |s, p| {
            let st = s.artifacts.stats();
            p.push((
                load(&st.revalidated_304),
                vec![KeyValue::new("result", "not_modified")],
            ));
            p.push((
                load(&st.revalidated_200),
                vec![KeyValue::new("result", "modified")],
            ));
        },
    );
    gauge_u64(
        meter,
        "cairn_artifact_stale_served",
        None,
        "stale artifact responses served",
        true,
        |s, p| {
            p.push((load(&s.artifacts.stats().stale_served), Vec::new()));
        },
    );
    gauge_u64(
        meter,
        "cairn_artifact_body",
        Some("By"),
        "artifact body bytes served, by source (store, origin)",
        true,
        |s, p| {
            let st = s.artifacts.stats();
            p.push((
                load(&st.bytes_from_store),
                vec![KeyValue::new("source", "store")],
            ));
            p.push((
                load(&st.bytes_from_origin),
                vec![KeyValue::new("source", "origin")],
            ));
        },
    );
    gauge_u64(
        meter,
        "cairn_artifact_single_flight_joins",
        None,
        "artifact requests that waited for another's download",
        true,
        |s, p| {
            p.push((load(&s.artifacts.stats().flight_joins), Vec::new()));
        },
    );
    gauge_u64(
        meter,
        "cairn_artifact_origin_requests",
        None,
        "requests sent to artifact origins",
        true,
        |s, p| {
            p.push((load(&s.artifacts.stats().origin_requests), Vec::new()));
        },
    );
    gauge_u64(
        meter,
        "cairn_artifact_stored",
        None,
        "artifact responses stored",
        true,
        |s, p| {
            p.push((load(&s.artifacts.stats().stored), Vec::new()));
        },
    );
    gauge_u64(
        meter,
        "cairn_artifact_truncated",
        None,
        "artifact downloads not stored because they were cut or short",
        true,
        |s, p| {
            p.push((load(&s.artifacts.stats().truncated), Vec::new()));
        },
    );
    gauge_u64(
        meter,
        "cairn_store_log_seq",
        None,
        "last sequence number of the log",
        false,
        |s, p| {
            p.push((positions(&s.store).0, Vec::new()));
        },
    );
    gauge_u64(
        meter,
        "cairn_store_view_lag_events",
        None,
        "events between the log's end and the view furthest behind",
        false,
        |s, p| {
            let (last, lowest) = positions(&s.store);
            p.push((last.saturating_sub(lowest), Vec::new()));
        },
    );
    gauge_u64(
        meter,
        "cairn_store_appends",
        None,
        "appends committed since the node started",
        true,
        |s, p| {
            p.push((s.store.writer_stats().appends, Vec::new()));
        },
    );
    gauge_u64(
        meter,
        "cairn_store_blobs",
        Some("By"),
        "bytes of the blobs the store holds (rows and files)",
        false,
        |s, p| {
            p.push((s.store.blob_bytes(), Vec::new()));
        },
    );
    gauge_u64(
        meter,
        "cairn_store_rocksdb_memory",
        Some("By"),
        "memory RocksDB holds, by kind",
        false,
        |s, p| {
            let m = s.store.memory_usage();
            for (kind, v) in [
                ("memtables", m.memtables),
                ("table_readers", m.table_readers),
                ("block_cache", m.block_cache),
            ] {
                p.push((v, vec![KeyValue::new("kind", kind)]));
            }
        },
    );
    gauge_u64(
        meter,
        "cairn_publisher_lag_events",
        None,
        "events committed but not yet acknowledged by JetStream",
        false,
        |s, p| {
            let last = positions(&s.store).0;
            p.push((
                last.saturating_sub(cairn_actors::metrics::published_seq()),
                Vec::new(),
            ));
        },
    );
    gauge_u64(
        meter,
        "cairn_sync_slots",
        None,
        "syncs holding a slot (state=running) or waiting for one (state=waiting)",
        false,
        |s, p| {
            let slots = *s.sync_slots.borrow();
            p.push((
                slots.running as u64,
                vec![KeyValue::new("state", "running")],
            ));
            p.push((
                slots.waiting as u64,
                vec![KeyValue::new("state", "waiting")],
            ));
        },
    );
    gauge_u64(
        meter,
        "cairn_watchers",
        None,
        "live watches",
        false,
        |s, p| {
            p.push((s.watch.len() as u64, Vec::new()));
        },
    );
    gauge_u64(
        meter,
        "cairn_cluster_applied_seq_lag_events",
        None,
        "positions of the cluster's log seen but not yet applied here",
        false,
        |s, p| {
            if let Some(positions) = &s.cluster_positions {
                let (applied, seen) = positions();
                p.push((seen.saturating_sub(applied), Vec::new()));
            }
        },
    );
    gauge_u64(
        meter,
        "cairn_cluster_owned_streams",
        None,
        "streams this node owns",
        false,
        |s, p| {
            if let Some(owned) = &s.owned_streams {
                p.push((owned(), Vec::new()));
            }
        },
    );
}
