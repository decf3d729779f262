//! The HTTP artifact cache: a shared HTTP cache (RFC 9111) in front of
//! artifact origins — Helm chart tarballs, kpt function configs, release
//! archives — with a URL-first index and content-addressed bodies.
//!
//! # Design
//! **Streams.** The domain's events (`ArtifactStored`,
//! `ArtifactRevalidated`, `ArtifactInvalidated`, `ArtifactEvicted`; tags
//! 40–59 of `Event.payload`, messages in `events/proto/cairn/v1/artifact.proto`)
//! go to a fixed number of streams, `artifact/00` … `artifact/15`
//! ([`PARTITIONS`]): a URL's partition is the first four bytes of the
//! SHA-256 of its normalised text, modulo [`PARTITIONS`], so every variant
//! of a URL, and its invalidation, live in one stream. Each stream has one
//! writer, `StreamWriter<ArtifactDomain>` ([`domain`]), the shared
//! stream-writer shell: every write goes through it (append at the
//! expected version, then fold). On a cluster each stream has an owner (a
//! lease), the only node running its writer; the other nodes send it
//! their writes as small records and read from their own replicas
//! ([`cluster`]). Reads are never events: hits, misses and access times
//! are counters in memory ([`cache::ArtifactStats`], the LRU order), not
//! log entries.
//!
//! **Index.** The `artifacts` view
//! ([`cairn_storage::views::ArtifactsView`]) maps (method, URL, Vary key)
//! to the stored response's status, header fields, response time and body
//! digest. A lookup is two RocksDB point reads: the URL's variants row
//! (the `Vary` names of its latest response), then the entry under the
//! Vary key computed from the request ([`key::vary_key`]). Only `GET`
//! responses are stored; a `HEAD` is answered from the stored `GET`. A
//! hit's reads (the two rows, and a small body's row) are answered on the
//! caller's thread when the store holds them in memory (row cache,
//! memtables, block cache: `Store::view_get_in_memory`, never a disk
//! read), else on the blocking pool: a hit costs no thread hop.
//!
//! **Bodies.** In the content-addressed blob store (`BlobStore::put_reader`,
//! streaming, files beyond `store.blob-inline-max-bytes`): the same bytes
//! behind ten URLs are stored once, each entry holding one reference; a
//! body goes when the last entry referring to it is evicted (blob garbage
//! collection). A download is written to the blob store's in-progress
//! file and streamed from it to its clients while it is hashed, and
//! recorded (`ArtifactStored`) only when complete and of the length
//! `Content-Length` announced: a short or reset download stores nothing
//! and every client sees its connection cut.
//!
//! **Single flight.** Concurrent misses for one URL on one node share one
//! origin request: the first becomes the leader and downloads; the others
//! (on HTTP) get the same response, its body from byte 0 as it arrives,
//! read from the in-progress file; on NATS they wait for the download to
//! be stored (see [`cache`]). The in-flight table is per node and in
//! memory; it is bounded ([`ArtifactConfig::flights_max`]) — beyond it a
//! miss fetches on its own. On a cluster a node's leader first claims the
//! URL from its stream's owner, so one node of the cluster downloads it
//! and the others serve it from their replicas once stored
//! ([`cluster`]).
//!
//! **Eviction.** `artifact.max-bytes` (distinct body bytes) and
//! `artifact.max-entries` bound the index: after each store the least
//! recently used entries are evicted (`ArtifactEvicted`, reason `lru`).
//! Recency is kept in memory, seeded at start-up from the entries' store
//! times, then kept in step with every commit by a store observer
//! ([`observe`]: stores in log order, removals) and the hits the node
//! serves. An entry older than `artifact.max-age` is evicted when next
//! looked up, whatever its HTTP freshness (reason `max-age`). At start-up
//! entries whose body is missing are evicted (reason `missing-body`) and
//! orphan bodies collected. A removal is checked by the stream's writer
//! against its rows ([`domain`]), so on a cluster the owner makes every
//! removal final and one node applies the limits ([`EVICTOR_ROLE`]).
//!
//! **Faces.** The node's HTTP listener ([`crate::http`]): the reverse proxy
//! `/u/<upstream>/<path>` and the URL lookup `/v1/artifacts?url=`; NATS
//! endpoints `cairn.v1.artifact.*` ([`crate::service::artifact`]).
//!
//! # Layout
//! - [`key`] — URLs (validation, normalisation, the allow list, proxy
//!   paths), Vary keys, partitions.
//! - [`rules`] — RFC 9111 rules: the `http-cache-semantics` policy built
//!   from a stored row, and what that crate does not cover (written here).
//! - [`domain`] — the stream writer's domain: state, commands, the pure
//!   decision and the checks of removals against the rows, `impl
//!   StreamDomain`.
//! - [`cluster`] — the cache on a cluster node: stream owners, records
//!   sent to them, single flight claimed from them, the evictor role.
//! - [`observe`] — the LRU order kept in step with every commit.
//! - [`cache`] — [`cache::ArtifactCache`], the component both faces call:
//!   lookup, revalidation, single flight, downloads stored while streamed,
//!   invalidation, eviction, statistics.
//! - [`error`] — [`ArtifactError`].

pub mod cache;
pub mod cluster;
pub mod domain;
pub mod error;
pub mod key;
pub mod observe;
pub mod rules;

use std::time::Duration;

pub use cache::{ArtifactCache, ArtifactStats};
pub use cluster::{ArtifactClusterParts, EVICTOR_ROLE};
pub use domain::{ArtifactCommand, ArtifactDomain, ArtifactEnv, ArtifactState};
pub use error::ArtifactError;

/// Number of artifact streams (`artifact/00` … `artifact/15`). Part of the
/// on-disk layout: a URL's events stay in the stream its hash picks.
pub const PARTITIONS: u32 = 16;

/// One `[[artifact.upstreams]]` entry: `/u/<name>/<path>` is served from
/// `<url>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The name in proxy paths.
    pub name: String,
    /// The origin's base URL (http or https), ending with `/`.
    pub url: url::Url,
}

/// The artifact cache's configuration (the node's `[artifact]` section).
#[derive(Debug, Clone)]
pub struct ArtifactConfig {
    /// Reverse-proxy upstreams. Default: none.
    pub upstreams: Vec<Upstream>,
    /// Hosts `/v1/artifacts?url=` and `artifact.get` may fetch from
    /// (exact, case-insensitive; `*` allows every host). The upstreams'
    /// hosts are always allowed through the proxy. Default: none.
    pub allow: Vec<String>,
    /// Longest wait for an origin to connect, to answer, and between two
    /// reads of a body. Default: 30 s.
    pub origin_timeout: Duration,
    /// Bytes of distinct bodies kept. Default: 10 GiB.
    pub max_bytes: u64,
    /// Entries kept. Default: 100 000.
    pub max_entries: u64,
    /// Longest time an entry is kept after it was stored, whatever its HTTP
    /// freshness. Default: 30 days.
    pub max_age: Duration,
    /// Serve a stored response, stale or not, when the origin cannot be
    /// reached (connection refused, timeout, 5xx), unless it says
    /// `must-revalidate`/`proxy-revalidate`. Default: false.
    pub serve_stale_if_unreachable: bool,
    /// Redirects followed by the URL lookup faces (the proxy follows none).
    /// Default: 10.
    pub redirects_max: usize,
    /// Downloads in flight at once per node for single flight; beyond it a
    /// miss fetches on its own. Default: 4096.
    pub flights_max: usize,
}

impl Default for ArtifactConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            allow: Vec::new(),
            origin_timeout: Duration::from_secs(30),
            max_bytes: 10 << 30,
            max_entries: 100_000,
            max_age: Duration::from_secs(30 * 24 * 3600),
            serve_stale_if_unreachable: false,
            redirects_max: 10,
            flights_max: 4096,
        }
    }
}
