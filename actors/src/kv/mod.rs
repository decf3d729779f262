//! The key-value cache domain (issue 16): namespaced entries with tags and
//! TTLs, invalidation by key, pattern, namespace and tags, hit/miss stats,
//! a memory tier over a disk tier — for the renderers, policy checkers and
//! function runners beside a package cache.
//!
//! # Design
//! - **Keys.** An entry is `(namespace, key)`; the default namespace is
//!   `""`; the full key (what patterns match) is `namespace:key`, or `key`
//!   in the default namespace. Values are JSON (kept as its UTF-8 text) or
//!   bytes.
//! - **Partitions.** The keyspace is cut into [`KV_PARTITIONS`] streams
//!   `kv/00` … `kv/15`; a namespace lives in partition
//!   `u64::from_be_bytes(sha256(namespace)[..8]) % KV_PARTITIONS`
//!   ([`partition_of`]). A fixed number of streams (not one per
//!   namespace) gives the cluster a bounded set of owners to place, and a
//!   namespace-wide operation touches one stream. The number is part of
//!   the on-disk format: changing it needs a migration.
//! - **Writes.** Every change goes through the writer of its partition's
//!   stream — the platform's stream-writer shell ([`crate::writer`]),
//!   `StreamWriter<Kv>` — so it is appended at the stream's expected
//!   version, folded into the `kv_entries` view in the same batch
//!   (read-your-writes) and published like every event
//!   (`cairn.events._.kv/<partition>.kv.<event>`, so `cairn log` shows who
//!   changed or invalidated what).
//! - **On a cluster** ([`KvCluster`]) each partition stream has an owner
//!   (a lease, placed like a repository's): only the owner runs the
//!   partition's writer ([`KvNode::own`] / [`KvNode::disown`], called by
//!   the node's lease holder), and it appends through the replicated log
//!   ([`KvLog::Cluster`]: fenced, answered once applied on this node). A
//!   command for a partition this node does not write answers
//!   [`KvError::NotOwner`] ("does not own"), which the service routes
//!   again to the owner (`service::kv`). Every node reads from its own
//!   replica.
//! - **The memory tier follows the log** ([`KvObserver`]): the store
//!   tells it of every commit (the node's own appends and replicated
//!   commits alike) on its writer thread, before the commit's seq is
//!   announced, and each `kv/` event updates the memory tier and the
//!   trackers. So a read that waited for a seq never finds a row that
//!   seq overwrote or deleted, on any node, and the trackers (entries of
//!   namespaces with limits, settings) are current on every node — a new
//!   owner decides evictions on them at once. The writers do not touch
//!   them: they decide on them, append, and find them updated.
//! - **Set batching.** Sets are the hot write, and a writer that ran one
//!   set at a time would wait one group commit per set: sets of one
//!   partition would never share an fsync. So a set is not a writer
//!   command of its own: [`KvNode::execute`] queues it on its partition's
//!   [`SetQueue`] (bounded: [`SET_QUEUE_MAX_ENTRIES`], then 503) and sends
//!   the writer a [`KvCommand::SetBatch`]; the writer drains every set
//!   queued by then (at most `kv.set-batch-max`) and runs them as one
//!   batch: it decides each set in queue order on the trackers, then
//!   **pipelines** their appends — one append per set, each with its own
//!   metadata (principal, correlation: `cairn log` still names who set
//!   what), at consecutive expected versions, queued to the store together
//!   ([`crate::writer::Session::append_pipelined`]) so the store's group
//!   commit takes them in one write batch and one fsync. Each set is
//!   answered with its own version (its `KvEntrySet`'s sequence number).
//!   Pipelined appends were chosen over one append of many events because
//!   an append carries one metadata.
//! - **Batch pipelining** (a single node, [`KvLog::Store`]). A batch does
//!   not hold the writer until it is committed: once its appends are
//!   queued to the store ([`cairn_storage::Store::queue_pipelined`], one
//!   message, so the store's writer takes them into one group commit), a
//!   task answers its sets when they commit, and the writer goes on with
//!   the next batch — decided on the trackers as they are, queued at the
//!   version the batches in flight leave — while the store still writes and
//!   fsyncs the last (at most [`PIPELINE_MAX_BATCHES`] in flight). So the
//!   store's writer finds the next batch waiting when it finishes a group,
//!   rather than idling while the partition's writer answers and decides.
//!   Durability is unchanged: a set is answered after its own commit (its
//!   fsync, with `sync`). Every other command (delete, bulk removals,
//!   `configure`, expiry), and a batch holding a set of a namespace with
//!   limits, first waits for the batches in flight (`settle`), so it
//!   decides on the state and trackers they leave. When an append of a
//!   batch fails, the later batches' appends (which expected the versions
//!   it would have left) fail too: the writer waits for every batch in
//!   flight, reads the stream's version from the store, and runs the sets
//!   that were not written again, in order (the rounds below). On a
//!   cluster the replicated log answers an append once applied; its
//!   writers run one batch at a time. Preserved: per-key order (queue
//!   order = append order); eviction exactness (a batch takes at most one
//!   set of a namespace with `max_entries`/`max_bytes`, whose evictions
//!   are decided on the trackers as the last commit left them; the next
//!   waits for the next batch); a set refused by its decision
//!   (`max_bytes`) or whose append fails is answered alone, and the sets
//!   after a failed append (not written) are decided again in another
//!   round of the batch; write-through origins are called by the service
//!   before a set is queued, so an origin failure fails only its set.
//! - **Idempotency keys.** `kv.set`, `kv.delete` and `kv.configure`
//!   carry the request's `Cairn-Request-Id` in their metadata (on a
//!   cluster, a write forwarded to the owner always has one: the client's
//!   or the forwarder's, see `service::kv`), recorded in the envelopes of
//!   what they append (each set of a batch its own). The partition's
//!   writer looks the key up in the `requests` view before appending — in
//!   [`run_sets`] once per round for every keyed set of the batch, a second
//!   set with a key already in the round waiting for the next round — and
//!   a key applied already appends nothing and answers the first run's
//!   outcome (a set's version and times, read from its `KvEntrySet`). The
//!   writer runs one command at a time and its appends are applied to the
//!   view before it answers, so a retry queued behind its first attempt,
//!   or sent to the partition's next owner after a failover (which applied
//!   the log up to its fence first), finds it.
//! - **Events.** `KvEntrySet`, `KvEntryDeleted`, and bulk events naming
//!   exactly the entries they remove: `KvEntriesDeleted {by: pattern |
//!   namespace | tags | clear, selector, count, entries}`,
//!   `KvEntriesExpired`, `KvEntriesEvicted`; `KvNamespaceConfigured` for
//!   `kv.configure`. A command touching several namespaces (a pattern,
//!   tags, `clear` of everything) is cut per partition: one event per
//!   partition that had a match, each atomic, the whole not (a reader may
//!   see one partition invalidated before another).
//! - **Reads are not events.** Hits, misses, `last_accessed`, recency and
//!   evictions are counters in memory ([`memory::KvMemory`]), reset when
//!   the node restarts.
//! - **Tiers.** The disk tier is the `kv_entries` view
//!   ([`cairn_storage::views::KvView`]); the memory tier a `quick_cache`
//!   cache bounded by `kv.memory-max-bytes` (size-aware, CLOCK-Pro
//!   eviction; see [`memory`]) in front of it.
//!   Per namespace, `max_entries` / `max_bytes` are enforced by the writer:
//!   a set that would pass them appends, with the `KvEntrySet`, a
//!   `KvEntriesExpired` naming the namespace's expired entries not swept
//!   yet (they go first: a live entry is never evicted while an expired
//!   one stays; the tracker keeps an expiry index of a namespace with
//!   limits), then a `KvEntriesEvicted` naming the least recently used
//!   live entries still over the limits (recency: the last set or hit;
//!   after a restart, creation order).
//! - **Time.** Every time (created, expires, last accessed) is the
//!   injectable [`crate::timing::Clock`]'s, in Unix milliseconds. An entry
//!   is expired from the instant `now >= expires_at`: reads then answer a
//!   miss at once; `kv.cleanup` and the sweeper remove it with a
//!   `KvEntriesExpired`; a `kv.delete` that finds it answers `deleted:
//!   false` and records a `KvEntryDeleted` with `expired` set (its retry
//!   with its key answers the same); after a restart it is still a miss.
//! - **Compaction.** The `kv/` class is compacted with
//!   [`cairn_storage::views::kv::KvCompactionPolicy`]: the latest event per
//!   entry stays (deletes for a window), so rewriting a key does not grow
//!   the log; the view is last-writer-wins per key, so a rebuild from the
//!   compacted log equals the live view.
//! - **Single flight** (`kv.get_or_compute`, read-through origins) is kept
//!   in the node ([`flight`]): concurrent misses of one entry share one
//!   call. On a cluster a miss is sent to the owner of the namespace's
//!   partition, whose flight the misses of every node share.
//! - **Background work on a cluster** (see the README's cluster section):
//!   the sweeper of each node removes expired entries of the partitions it
//!   writes; evictions are decided by the owner with the set; compaction
//!   runs on every node at markers in the replicated log
//!   (`cluster::log`), so every node's log stays the same; no WAL flusher
//!   runs (the replicated log's quorum makes a write durable).
//! - **Origins** (seed 001's decorators): a namespace configured with an
//!   origin subject is read-through (a miss asks the origin and caches
//!   its answer; its 404 is a miss) and, with `write_through`,
//!   write-through (a set goes to the origin first; its failure stores
//!   nothing). Deletes invalidate only the entries named.
//!
//! # Layout
//! - this module — [`Kv`] (the [`StreamDomain`]), its commands and
//!   replies, [`KvNode`] (the partition writers and the reads).
//! - [`memory`] — the memory tier and the per-partition trackers.
//! - [`flight`] — single flight, and the NATS calls of computes and
//!   origins.
//! - [`glob`] — Redis `SCAN MATCH` patterns.
//! - [`key_for`] — canonical function-result keys.
//! - [`error`] — [`KvError`].

pub mod error;
pub mod flight;
pub mod glob;
pub mod key_for;
pub mod memory;

use std::{
    ops::ControlFlow,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use actix::prelude::*;
use cairn_events::{
    envelope::Metadata,
    v1::{
        event::Payload, Event, KvEntriesDeleted, KvEntriesEvicted, KvEntriesExpired,
        KvEntryDeleted, KvEntryRef, KvEntryRow, KvEntrySet, KvNamespaceConfigured,
        KvNamespaceSettings, RequestRow,
    },
    StreamId,
};
use cairn_storage::{
    views::{
        kv::{decode_entry, decode_settings},
        KvView,
    },
    EventLog, Store, ViewReadExt,
};
use futures::future::BoxFuture;
use sha2::{Digest as _, Sha256};

pub use error::KvError;
use glob::Glob;
use memory::{EntryInfo, KvMemory};

use crate::{
    service::idempotency::{self, Recorded},
    timing::Clock,
    writer::{off_arbiter, Chunking, Execute, Session, StreamDomain, StreamWriter, WriterError},
    ServiceError,
};

/// Streams the keyspace is partitioned into (part of the on-disk format).
pub const KV_PARTITIONS: usize = 16;

/// The partition of `namespace`.
pub fn partition_of(namespace: &str) -> usize {
    let digest = Sha256::digest(namespace.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % KV_PARTITIONS as u64) as usize
}

/// The stream of partition `partition`: `kv/<two digits>`.
pub fn partition_stream(partition: usize) -> StreamId {
    StreamId::new(format!("kv/{partition:02}")).expect("kv stream ids are valid")
}

/// `namespace:key`, or `key` in the default namespace.
pub fn full_key(namespace: &str, key: &str) -> String {
    if namespace.is_empty() {
        key.to_owned()
    } else {
        format!("{namespace}:{key}")
    }
}

/// Unix milliseconds of `t`.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether an entry expiring at `expires_at_ms` (0: never) is expired at
/// `now_ms`: from the instant itself.
pub fn expired(expires_at_ms: u64, now_ms: u64) -> bool {
    expires_at_ms != 0 && now_ms >= expires_at_ms
}

/// The key-value domain.
#[derive(Debug)]
pub struct Kv;

/// What the writer of one partition knows: its stream and version.
#[derive(Debug, Clone)]
pub struct KvState {
    /// The partition.
    pub partition: usize,
    /// `kv/<partition>`.
    pub stream: StreamId,
    /// The stream's version: with set batches in flight ([`Pipeline`]),
    /// the version they leave once committed.
    pub version: u64,
    /// The set batches queued to the store and not answered yet (shared by
    /// the state's clones: the writer runs one command at a time).
    pub pipeline: Arc<parking_lot::Mutex<Pipeline>>,
}

/// Most set batches of one partition queued to the store and not answered
/// yet ([`Pipeline`]); the writer waits for the oldest before queuing
/// another.
pub const PIPELINE_MAX_BATCHES: usize = 4;

/// The set batches a single node's partition writer queued to the store
/// and has not seen answered (see "Batch pipelining" in the module docs),
/// oldest first, at most [`PIPELINE_MAX_BATCHES`].
#[derive(Debug, Default)]
pub struct Pipeline {
    /// Each batch's task, which answers its sets once its appends are
    /// committed and hands back what it could not write.
    in_flight: std::collections::VecDeque<tokio::task::JoinHandle<Settled>>,
    /// Resolves once the last batch queued is answered: whether it and
    /// every batch before it wrote all their appends.
    last: Option<tokio::sync::oneshot::Receiver<bool>>,
}

/// What a pipelined batch's task leaves once its appends are answered.
#[derive(Debug)]
struct Settled {
    /// Its sets that were not written (an append before them failed), in
    /// order: the writer runs them again.
    unwritten: Vec<QueuedSet>,
    /// Whether it and every batch before it wrote all their appends.
    ok: bool,
}

/// What every partition writer shares.
#[derive(Debug)]
pub struct KvEnv {
    /// The node's store (reads).
    pub store: Store,
    /// Where the writers append.
    pub log: KvLog,
    /// The memory tier and trackers.
    pub memory: Arc<KvMemory>,
    /// The clock of TTLs and access times.
    pub clock: Arc<dyn Clock>,
    /// `kv.durability`: `Sync` (fsynced before the reply) or `Buffered`
    /// (`batched`: in the WAL before the reply, fsynced every
    /// `kv.flush-interval`).
    pub durability: cairn_storage::Durability,
    /// Per partition, the sets waiting for its writer (see [`SetQueue`]).
    pub sets: Vec<SetQueue>,
    /// Most sets one batch of a partition's writer takes
    /// (`kv.set-batch-max`).
    pub set_batch_max: usize,
    /// The partition writers this node runs (the [`KvNode`]'s; weak: a
    /// writer holds this env, and must stop when the node drops its
    /// writers): a pipelined batch that failed wakes its writer to run the
    /// sets it left unwritten ([`pipeline_sets`]).
    writers: std::sync::Weak<Vec<WriterSlot>>,
}

/// Where the partition writers append.
#[derive(Debug, Clone)]
pub enum KvLog {
    /// A single node's store.
    Store(Store),
    /// The cluster's replicated log (fenced, answered once applied here).
    Cluster(crate::cluster::ClusterAppend),
}

impl KvLog {
    fn append(&self) -> &dyn cairn_storage::AsyncAppend {
        match self {
            KvLog::Store(store) => store,
            KvLog::Cluster(appender) => appender,
        }
    }
}

/// Longest a set waits for its answer once its partition's writer
/// stopped (the drain or the last batch answers it at once).
const WRITER_GONE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Most sets waiting for one partition's writer; past it a set is
/// answered 503 ([`KvError::Busy`]).
pub const SET_QUEUE_MAX_ENTRIES: usize = 65_536;

/// A set waiting for its partition's writer, with who asked and where to
/// answer.
#[derive(Debug)]
pub struct QueuedSet {
    /// The set.
    pub set: SetEntry,
    /// Its command's metadata (its append carries it).
    pub metadata: Metadata,
    /// Where its answer goes.
    pub reply: tokio::sync::oneshot::Sender<Result<KvReply, KvError>>,
}

/// The sets waiting for one partition's writer, oldest first (at most
/// [`SET_QUEUE_MAX_ENTRIES`]). A set is queued here, then a
/// [`KvCommand::SetBatch`] is sent to the writer; the writer drains the
/// queue when it runs one, so sets that arrive while it appends wait
/// together and the next batch takes them all. The queue is open while
/// this node writes the partition (always on a single node); closing it
/// (the partition's lease goes) answers what still waits with
/// [`KvError::NotOwner`] — nothing of those ran, so they are routed again.
#[derive(Debug, Default)]
pub struct SetQueue {
    queue: parking_lot::Mutex<Queued>,
}

/// A [`SetQueue`]'s contents.
#[derive(Debug, Default)]
struct Queued {
    sets: std::collections::VecDeque<QueuedSet>,
    open: bool,
}

/// A new value for one entry.
#[derive(Debug, Clone)]
pub struct SetEntry {
    /// Namespace ("" default).
    pub namespace: String,
    /// Key.
    pub key: String,
    /// JSON text or bytes.
    pub value: Vec<u8>,
    /// Whether `value` is JSON text.
    pub json: bool,
    /// Sorted, deduplicated.
    pub tags: Vec<String>,
    /// Time to live in ms; `None`: the namespace's default.
    pub ttl_ms: Option<u64>,
}

/// What a bulk invalidation selects.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Full keys matching a glob.
    Pattern(Glob),
    /// Every entry of one namespace.
    Namespace(String),
    /// Entries with any (or all) of the tags.
    Tags {
        /// The tags.
        tags: Vec<String>,
        /// All of them, not any.
        all: bool,
    },
    /// Everything.
    All,
}

impl Matcher {
    /// Whether `row` is selected.
    pub fn matches(&self, row: &KvEntryRow) -> bool {
        match self {
            Matcher::Pattern(g) => g.matches(&full_key(&row.namespace, &row.key)),
            Matcher::Namespace(n) => &row.namespace == n,
            Matcher::Tags { tags, all: true } => tags.iter().all(|t| row.tags.contains(t)),
            Matcher::Tags { tags, all: false } => tags.iter().any(|t| row.tags.contains(t)),
            Matcher::All => true,
        }
    }
}

/// A command of one partition's writer.
#[derive(Debug)]
pub enum KvCommand {
    /// `kv.set`: [`KvNode::execute`] queues it and sends a
    /// [`KvCommand::SetBatch`].
    Set(SetEntry),
    /// Runs the sets queued for the partition (at most
    /// `kv.set-batch-max`) as one batch; answers [`KvReply::Batched`] (each
    /// set is answered on its own channel).
    SetBatch,
    /// `kv.delete`.
    Delete {
        /// Namespace.
        namespace: String,
        /// Key.
        key: String,
    },
    /// A bulk invalidation of the partition's `candidates` that still
    /// match.
    DeleteMatching {
        /// `pattern`, `namespace`, `tags` or `clear`.
        by: &'static str,
        /// What the command selected by.
        selector: String,
        /// The selection, checked again on the current rows.
        matcher: Matcher,
        /// Entries a scan found.
        candidates: Vec<(String, String)>,
    },
    /// Removes the `candidates` that are expired now.
    Expire {
        /// Entries the expiry index listed.
        candidates: Vec<(String, String)>,
    },
    /// `kv.configure`.
    Configure {
        /// Namespace.
        namespace: String,
        /// New settings.
        settings: KvNamespaceSettings,
    },
}

/// What a command answers.
#[derive(Debug, Clone, PartialEq)]
pub enum KvReply {
    /// A set: the entry's version (its log sequence number) and times.
    Set {
        /// Sequence number of the `KvEntrySet`.
        version: u64,
        /// Unix ms.
        created_at_ms: u64,
        /// Unix ms, 0: never.
        expires_at_ms: u64,
    },
    /// A delete: whether a live entry was deleted.
    Deleted(bool),
    /// Entries removed.
    Count(u64),
    /// The namespace's settings now.
    Configured(KvNamespaceSettings),
    /// A [`KvCommand::SetBatch`] ran this many sets.
    Batched(usize),
}

/// Most entries one bulk event names.
pub const BULK_EVENT_MAX_ENTRIES: usize = 1000;
/// Most bytes of names (namespaces and keys) one bulk event carries: well
/// below the store's `event-max-bytes` (256 KiB by default).
pub const BULK_EVENT_MAX_BYTES: usize = 64 * 1024;

/// Cuts `entries` into the entry lists of bulk events, each within
/// [`BULK_EVENT_MAX_ENTRIES`] and [`BULK_EVENT_MAX_BYTES`].
pub fn bulk_chunks(entries: Vec<(String, String)>) -> Vec<Vec<(String, String)>> {
    let mut chunks = Vec::new();
    let (mut chunk, mut bytes) = (Vec::new(), 0usize);
    for (namespace, key) in entries {
        let size = namespace.len() + key.len() + 8;
        if !chunk.is_empty()
            && (chunk.len() >= BULK_EVENT_MAX_ENTRIES || bytes + size > BULK_EVENT_MAX_BYTES)
        {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += size;
        chunk.push((namespace, key));
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

fn refs(entries: &[(String, String)]) -> Vec<KvEntryRef> {
    entries
        .iter()
        .map(|(namespace, key)| KvEntryRef {
            namespace: namespace.clone(),
            key: key.clone(),
        })
        .collect()
}

fn event(payload: Payload) -> Event {
    Event {
        payload: Some(payload),
    }
}

impl StreamDomain for Kv {
    type State = KvState;
    type Command = KvCommand;
    type Event = Event;
    type Reply = KvReply;
    type Error = KvError;
    type Env = KvEnv;

    const NAME: &'static str = "kv";

    fn store(env: &KvEnv) -> &dyn cairn_storage::AsyncAppend {
        env.log.append()
    }

    fn durability(env: &KvEnv) -> cairn_storage::Durability {
        env.durability
    }

    fn stream(state: &KvState) -> &StreamId {
        &state.stream
    }

    fn version(state: &KvState) -> u64 {
        state.version
    }

    fn fold(state: &mut KvState, _event: &Event, version: u64) {
        state.version = version;
    }

    fn run(
        session: &mut Session<Self>,
        command: KvCommand,
    ) -> BoxFuture<'_, Result<KvReply, KvError>> {
        Box::pin(async move {
            let partition = session.state().partition;
            let env = session.env().clone();
            let now_ms = unix_ms(env.clock.now());
            if !matches!(command, KvCommand::SetBatch) {
                // Every other command decides on the state and trackers as
                // the sets queued before it left them.
                settle(session, &env, partition, now_ms, 0).await?;
            }
            match command {
                KvCommand::Set(set) => {
                    // A set sent straight to the writer: a batch of one.
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let metadata = session.metadata().clone();
                    run_sets(
                        session,
                        &env,
                        partition,
                        vec![QueuedSet {
                            set,
                            metadata,
                            reply,
                        }],
                        now_ms,
                    )
                    .await;
                    answer
                        .await
                        .map_err(|_| KvError::WriterGone { partition })?
                }
                KvCommand::SetBatch => {
                    let ran = set_batch(session, &env, partition, now_ms).await;
                    ran.map_err(|e| {
                        // No set still queued waits for a later batch that
                        // would store it after its client heard of this
                        // failure: each is answered with it, not stored.
                        let queued: Vec<QueuedSet> =
                            env.sets[partition].queue.lock().sets.drain(..).collect();
                        fail_sets(queued, e)
                    })
                }
                KvCommand::Delete { namespace, key } => {
                    // Sent again with its key (its answer was lost): it
                    // removed the entry already, and its event says
                    // whether the entry was live then.
                    if let Some(first) = replayed(session).await? {
                        let store = env.store.clone();
                        let seq = first.first_seq;
                        let expired = off_arbiter("kv-delete-replay", move || {
                            store.read_all(seq, 1)
                        })
                        .await??
                        .first()
                        .filter(|e| e.seq == seq)
                        .and_then(|e| e.event.as_ref())
                        .is_some_and(
                            |e| matches!(&e.payload, Some(Payload::KvEntryDeleted(d)) if d.expired),
                        );
                        return Ok(KvReply::Deleted(!expired));
                    }
                    // The entry as it is (the writer is the only one to
                    // change it): from the memory tier, else the view.
                    let row = match env.memory.cached(&namespace, &key) {
                        Some(row) => Some(row),
                        None => {
                            let store = env.store.clone();
                            let row_key = KvView::entry_key(&namespace, &key);
                            off_arbiter("kv-delete", move || {
                                store.view_get_message::<KvEntryRow>(KvView::NAME, &row_key)
                            })
                            .await??
                            .map(Arc::new)
                        }
                    };
                    let Some(row) = row else {
                        return Ok(KvReply::Deleted(false));
                    };
                    // An entry found expired (not swept yet) is deleted
                    // all the same (a per-key tombstone, compacted as any
                    // delete) and the event says it had expired: a retry
                    // of this command answers from it.
                    let live = !expired(row.expires_at_ms, now_ms);
                    let e = event(Payload::KvEntryDeleted(KvEntryDeleted {
                        namespace: namespace.clone(),
                        key: key.clone(),
                        expired: !live,
                    }));
                    // The memory tier follows the commit ([`KvObserver`]).
                    session.append(vec![e], Chunking::Whole).await?;
                    Ok(KvReply::Deleted(live))
                }
                KvCommand::DeleteMatching {
                    by,
                    selector,
                    matcher,
                    candidates,
                } => {
                    let store = env.store.clone();
                    let selected = off_arbiter("kv-delete", move || {
                        current_rows(&store, candidates, |row| matcher.matches(row))
                    })
                    .await??;
                    remove_in_bulk(session, selected, |count, entries| {
                        Payload::KvEntriesDeleted(KvEntriesDeleted {
                            by: by.to_owned(),
                            selector: selector.clone(),
                            count,
                            entries,
                        })
                    })
                    .await
                }
                KvCommand::Expire { candidates } => {
                    let store = env.store.clone();
                    let selected = off_arbiter("kv-expire", move || {
                        current_rows(&store, candidates, |row| expired(row.expires_at_ms, now_ms))
                    })
                    .await??;
                    remove_in_bulk(session, selected, expired_payload).await
                }
                KvCommand::Configure {
                    namespace,
                    settings,
                } => {
                    // Sent again with its key: the same settings (the key's
                    // digest covers them) were configured already.
                    if replayed(session).await?.is_some() {
                        return Ok(KvReply::Configured(settings));
                    }
                    let e = event(Payload::KvNamespaceConfigured(KvNamespaceConfigured {
                        namespace: namespace.clone(),
                        settings: Some(settings.clone()),
                    }));
                    // The trackers take the settings (and index every
                    // entry of a namespace that gets limits) as the commit
                    // is written ([`KvObserver`]).
                    session.append(vec![e], Chunking::Whole).await?;
                    // Lower limits apply at once: expired entries go
                    // first, then the least recently used.
                    let (expired, victims) = {
                        let tracker = env.memory.partition(partition).lock();
                        match tracker.namespaces.get(&namespace) {
                            Some(ns) => over_limits(ns, &settings, "", 0, 0, now_ms),
                            None => (Vec::new(), Vec::new()),
                        }
                    };
                    remove_in_bulk(session, in_namespace(&namespace, expired), expired_payload)
                        .await?;
                    evict(session, &namespace, victims).await?;
                    Ok(KvReply::Configured(settings))
                }
            }
        })
    }
}

/// The first run of the session's command, when it carries an
/// idempotency key the `requests` view holds (a command sent again after
/// its answer was lost: it appends nothing); the key used for another
/// request is [`KvError::RequestReused`]. Checked by the partition's
/// writer, which runs one command at a time and whose appends are applied
/// to the view before it answers (on a cluster, once applied on this
/// node; a new owner applied the log up to its fence before writing).
async fn replayed(session: &Session<Kv>) -> Result<Option<RequestRow>, KvError> {
    let metadata = session.metadata();
    if metadata.request_id.is_empty() {
        return Ok(None);
    }
    let store = session.env().store.clone();
    let (id, digest) = (metadata.request_id.clone(), metadata.request_digest.clone());
    off_arbiter("kv-request-id", move || {
        match idempotency::recorded_blocking(&store, &id, &digest)? {
            Recorded::New => Ok(None),
            Recorded::Reused(row) => Err(KvError::RequestReused {
                message: idempotency::reused_message(&id, &row),
            }),
            Recorded::Applied(row) => {
                tracing::debug!(request_id = %id, first_seq = row.first_seq, "kv command already applied; appending nothing");
                Ok(Some(row))
            }
        }
    })
    .await?
}

/// What the keys of a round of sets found (see [`run_sets`]).
enum SetPrior {
    /// Not applied: decide and append it.
    New,
    /// Applied: its answer, as its first run gave it.
    Applied(KvReply),
    /// The key names another request.
    Reused(String),
}

/// Looks up the idempotency key of each set of `round` that has one (one
/// blocking call for the round): what each found, by index in `round`.
/// A set applied already is answered as its first run was — its
/// `KvEntrySet`'s sequence number as its version, and its times; if
/// compaction removed that event (a later set of the key superseded it),
/// the version is the key's first seq, `created_at` its recorded time and
/// `expires_at` what the set's TTL gives from then.
async fn set_priors(env: &KvEnv, round: &[QueuedSet]) -> Result<Vec<(usize, SetPrior)>, KvError> {
    let keyed: Vec<(usize, String, Vec<u8>, Option<u64>)> = round
        .iter()
        .enumerate()
        .filter(|(_, q)| !q.metadata.request_id.is_empty())
        .map(|(i, q)| {
            (
                i,
                q.metadata.request_id.clone(),
                q.metadata.request_digest.clone(),
                q.set.ttl_ms,
            )
        })
        .collect();
    if keyed.is_empty() {
        return Ok(Vec::new());
    }
    let store = env.store.clone();
    off_arbiter("kv-request-ids", move || {
        let mut found = Vec::with_capacity(keyed.len());
        for (i, id, digest, ttl_ms) in keyed {
            let prior = match idempotency::recorded_blocking(&store, &id, &digest)? {
                Recorded::New => SetPrior::New,
                Recorded::Reused(row) => SetPrior::Reused(idempotency::reused_message(&id, &row)),
                Recorded::Applied(row) => {
                    let set = idempotency::events_blocking(&store, &id, &row)?
                        .into_iter()
                        .find_map(|e| match e.event.and_then(|e| e.payload) {
                            Some(Payload::KvEntrySet(s)) => Some((e.seq, s)),
                            _ => None,
                        });
                    let reply = match set {
                        Some((seq, s)) => KvReply::Set {
                            version: seq,
                            created_at_ms: s.created_at_ms,
                            expires_at_ms: s.expires_at_ms,
                        },
                        None => {
                            let created_at_ms = row.recorded_at.as_ref().map_or(0, |t| {
                                u64::try_from(t.seconds).unwrap_or(0).saturating_mul(1000)
                                    + u64::try_from(t.nanos).unwrap_or(0) / 1_000_000
                            });
                            KvReply::Set {
                                version: row.first_seq,
                                created_at_ms,
                                expires_at_ms: ttl_ms
                                    .filter(|t| *t > 0)
                                    .map_or(0, |t| created_at_ms.saturating_add(t)),
                            }
                        }
                    };
                    SetPrior::Applied(reply)
                }
            };
            found.push((i, prior));
        }
        Ok::<_, KvError>(found)
    })
    .await?
}

/// An entry's key and its size as counted against `max_bytes`.
type KeySize = (String, u64);

/// What `ns` must lose so that, with `added` more entries of
/// `added_bytes`, it fits `settings`: `(expired, evicted)`. Nothing when
/// it fits already. Otherwise its expired entries (not swept yet) go
/// first, soonest expired first, as expired — never a live entry while an
/// expired one stays — then the least recently used live ones, as
/// evicted; each only as many as it takes to fit (the sweeper removes
/// the other expired ones).
fn over_limits(
    ns: &memory::Namespace,
    settings: &KvNamespaceSettings,
    except: &str,
    added: u64,
    added_bytes: u64,
    now_ms: u64,
) -> (Vec<KeySize>, Vec<KeySize>) {
    let count = ns.entries.len() as u64 + added;
    let bytes = ns.bytes + added_bytes;
    let fits = |removed: u64, removed_bytes: u64| {
        (settings.max_entries == 0 || count.saturating_sub(removed) <= settings.max_entries)
            && (settings.max_bytes == 0
                || bytes.saturating_sub(removed_bytes) <= settings.max_bytes)
    };
    if fits(0, 0) {
        return (Vec::new(), Vec::new());
    }
    let mut expired = Vec::new();
    let (mut gone, mut gone_bytes) = (0u64, 0u64);
    for (key, bytes) in ns.expired(now_ms, except) {
        if fits(gone, gone_bytes) {
            return (expired, Vec::new());
        }
        gone += 1;
        gone_bytes += bytes;
        expired.push((key.to_owned(), bytes));
    }
    if fits(gone, gone_bytes) {
        return (expired, Vec::new());
    }
    // Every expired entry goes: only live ones are left to evict.
    let skip: std::collections::HashSet<&str> = expired.iter().map(|(k, _)| k.as_str()).collect();
    let evicted = ns.victims(except, &skip, |removed, removed_bytes| {
        fits(gone + removed, gone_bytes + removed_bytes)
    });
    (expired, evicted)
}

/// Removes `selected` entries of the session's partition in bulk: one
/// event per chunk of [`bulk_chunks`], made by `payload(count, entries)`
/// (the memory tier follows the commit, [`KvObserver`]); answers how many
/// were removed.
async fn remove_in_bulk(
    session: &mut Session<Kv>,
    selected: Vec<(String, String)>,
    payload: impl Fn(u64, Vec<KvEntryRef>) -> Payload,
) -> Result<KvReply, KvError> {
    if selected.is_empty() {
        return Ok(KvReply::Count(0));
    }
    let count = selected.len() as u64;
    let events = bulk_events(selected, payload);
    // The memory tier and trackers follow the commit ([`KvObserver`]).
    session.append(events, Chunking::MaxEvents).await?;
    Ok(KvReply::Count(count))
}

/// One bulk event per chunk of `selected` ([`bulk_chunks`]), made by
/// `payload(count, entries)`.
fn bulk_events(
    selected: Vec<(String, String)>,
    payload: impl Fn(u64, Vec<KvEntryRef>) -> Payload,
) -> Vec<Event> {
    bulk_chunks(selected)
        .into_iter()
        .map(|chunk| event(payload(chunk.len() as u64, refs(&chunk))))
        .collect()
}

/// `keys` (with their sizes, as [`over_limits`] answers them) as entries
/// of `namespace`.
fn in_namespace(namespace: &str, keys: Vec<KeySize>) -> Vec<(String, String)> {
    keys.into_iter()
        .map(|(k, _)| (namespace.to_owned(), k))
        .collect()
}

/// A [`KvEntriesExpired`] payload.
fn expired_payload(count: u64, entries: Vec<KvEntryRef>) -> Payload {
    Payload::KvEntriesExpired(KvEntriesExpired { count, entries })
}

/// A [`KvEntriesEvicted`] payload maker for `namespace`.
fn evicted_payload(namespace: &str) -> impl Fn(u64, Vec<KvEntryRef>) -> Payload + '_ {
    move |count, entries| {
        Payload::KvEntriesEvicted(KvEntriesEvicted {
            namespace: namespace.to_owned(),
            count,
            entries,
        })
    }
}

async fn evict(
    session: &mut Session<Kv>,
    namespace: &str,
    victims: Vec<KeySize>,
) -> Result<(), KvError> {
    if victims.is_empty() {
        return Ok(());
    }
    let evicted = victims.len();
    remove_in_bulk(
        session,
        in_namespace(namespace, victims),
        evicted_payload(namespace),
    )
    .await?;
    tracing::debug!(namespace, evicted, "kv entries evicted");
    Ok(())
}

/// Takes the partition's queued sets for one batch: oldest first, at most
/// `kv.set-batch-max`, and at most one set of a namespace with limits
/// (`max_entries` / `max_bytes`): its evictions are decided on the tracker
/// as the last commit left it, so a second set of that namespace waits for
/// the next batch (which its own [`KvCommand::SetBatch`] runs).
fn drain_sets(env: &KvEnv, partition: usize) -> Vec<QueuedSet> {
    let mut queue = env.sets[partition].queue.lock();
    let queue = &mut queue.sets;
    let mut batch = Vec::with_capacity(queue.len().min(env.set_batch_max));
    let mut limited: Vec<String> = Vec::new();
    while batch.len() < env.set_batch_max {
        let Some(next) = queue.front() else { break };
        let namespace = &next.set.namespace;
        if has_limits(env, partition, namespace) {
            if limited.contains(namespace) {
                break;
            }
            limited.push(namespace.clone());
        }
        batch.extend(queue.pop_front());
    }
    batch
}

/// Whether `namespace` has `max_entries` or `max_bytes`.
fn has_limits(env: &KvEnv, partition: usize, namespace: &str) -> bool {
    let tracker = env.memory.partition(partition).lock();
    tracker
        .namespaces
        .get(namespace)
        .is_some_and(|ns| ns.settings.max_entries > 0 || ns.settings.max_bytes > 0)
}

/// One set decided: its row (seq still 0) and its events (the set, then
/// the evictions it makes).
struct DecidedSet {
    row: KvEntryRow,
    ttl_ms: Option<u64>,
    events: Vec<Event>,
}

/// Decides one set on the tracker as it is: its expiry, the namespace's
/// `max_bytes`, and the least recently used entries it evicts.
fn decide_set(
    env: &KvEnv,
    partition: usize,
    set: SetEntry,
    now_ms: u64,
) -> Result<DecidedSet, KvError> {
    let ttl_ms = set.ttl_ms;
    let mut row = KvEntryRow {
        namespace: set.namespace,
        key: set.key,
        value: set.value,
        json: set.json,
        tags: set.tags,
        created_at_ms: now_ms,
        expires_at_ms: 0,
        seq: 0,
    };
    let bytes = memory::entry_bytes(&row);
    let victims = {
        let tracker = env.memory.partition(partition).lock();
        let empty = memory::Namespace::default();
        let ns = tracker.namespaces.get(&row.namespace).unwrap_or(&empty);
        let ttl = set.ttl_ms.unwrap_or(ns.settings.default_ttl_ms);
        if ttl > 0 {
            row.expires_at_ms = now_ms.saturating_add(ttl);
        }
        if ns.settings.max_bytes > 0 && bytes > ns.settings.max_bytes {
            return Err(KvError::Invalid {
                field: "value",
                reason: format!(
                    "the entry takes {bytes} bytes, more than the namespace's max_bytes {}",
                    ns.settings.max_bytes
                ),
            });
        }
        let (added, added_bytes) = match ns.entries.get(row.key.as_str()) {
            // Replacing: its old size goes, its count stays.
            Some(old) => (0, bytes.saturating_sub(old.bytes)),
            None => (1, bytes),
        };
        over_limits(ns, &ns.settings, &row.key, added, added_bytes, now_ms)
    };
    let (expired, victims) = victims;
    let mut events = vec![event(Payload::KvEntrySet(KvEntrySet {
        namespace: row.namespace.clone(),
        key: row.key.clone(),
        value: row.value.clone(),
        json: row.json,
        tags: row.tags.clone(),
        created_at_ms: row.created_at_ms,
        expires_at_ms: row.expires_at_ms,
    }))];
    events.extend(bulk_events(
        in_namespace(&row.namespace, expired),
        expired_payload,
    ));
    events.extend(bulk_events(
        in_namespace(&row.namespace, victims),
        evicted_payload(&row.namespace),
    ));
    Ok(DecidedSet {
        row,
        ttl_ms,
        events,
    })
}

/// A set of a batch, decided: its decision, how many appends it takes,
/// and whom to answer.
struct DecidedEntry {
    decided: DecidedSet,
    appends: usize,
    metadata: Metadata,
    reply: tokio::sync::oneshot::Sender<Result<KvReply, KvError>>,
}

/// Decides each set of `batch` in order on the trackers as they are,
/// answering those the decision refuses: the others with their appends
/// (one per set, more when its evictions need them), in order.
fn decide_batch(
    env: &KvEnv,
    partition: usize,
    batch: Vec<QueuedSet>,
    now_ms: u64,
) -> (Vec<DecidedEntry>, Vec<(Vec<Event>, Metadata)>) {
    let max_events = env.log.append().append_max_events().max(1);
    let mut decided = Vec::with_capacity(batch.len());
    let mut appends = Vec::with_capacity(batch.len());
    for queued in batch {
        let QueuedSet {
            set,
            metadata,
            reply,
        } = queued;
        match decide_set(env, partition, set, now_ms) {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(mut d) => {
                let events = std::mem::take(&mut d.events);
                let chunks = events.len().div_ceil(max_events);
                let mut events = events.into_iter().peekable();
                while events.peek().is_some() {
                    let chunk: Vec<Event> = events.by_ref().take(max_events).collect();
                    appends.push((chunk, metadata.clone()));
                }
                decided.push(DecidedEntry {
                    decided: d,
                    appends: chunks,
                    metadata,
                    reply,
                });
            }
        }
    }
    (decided, appends)
}

/// Answers each set of a batch from `outcomes` (its appends' outcomes in
/// order, up to and including the first failure) with its own version
/// (its `KvEntrySet`'s sequence number) or its append's error. Returns
/// the sets not written — after a failure — to run again, and whether
/// every append was written. When `earlier_ok` is false (an earlier
/// pipelined batch failed, so this one's appends expected versions that
/// never came), a failed append is not its set's fault: the set is run
/// again rather than answered.
fn answer_batch(
    decided: Vec<DecidedEntry>,
    outcomes: Vec<Result<cairn_storage::Appended, WriterError>>,
    earlier_ok: bool,
) -> (Vec<QueuedSet>, bool) {
    let mut outcomes = outcomes.into_iter();
    let mut unwritten = Vec::new();
    let mut all_written = true;
    for entry in decided {
        let DecidedEntry {
            decided: d,
            appends,
            metadata,
            reply,
        } = entry;
        let mut seq = None;
        let mut failed = None;
        let mut written = 0;
        for _ in 0..appends {
            match outcomes.next() {
                Some(Ok(appended)) => {
                    written += 1;
                    seq = seq.or_else(|| appended.envelopes.first().map(|e| e.seq));
                }
                Some(Err(e)) => {
                    failed = Some(e);
                    break;
                }
                None => break,
            }
        }
        if written < appends {
            all_written = false;
        }
        if written == 0 && (failed.is_none() || !earlier_ok) {
            // Not written: an earlier append failed. Decided again on the
            // trackers as the commits left them.
            unwritten.push(QueuedSet {
                set: SetEntry {
                    namespace: d.row.namespace,
                    key: d.row.key,
                    value: d.row.value,
                    json: d.row.json,
                    tags: d.row.tags,
                    ttl_ms: d.ttl_ms,
                },
                metadata,
                reply,
            });
            continue;
        }
        let DecidedSet { row, .. } = d;
        if written > 0 {
            // The memory tier and trackers took the entry (and its
            // evictions) as the commit was written ([`KvObserver`]).
            let answer = KvReply::Set {
                version: seq.unwrap_or(0),
                created_at_ms: row.created_at_ms,
                expires_at_ms: row.expires_at_ms,
            };
            let _ = reply.send(match failed {
                None => Ok(answer),
                Some(e) => Err(e.into()),
            });
        } else if let Some(e) = failed {
            let _ = reply.send(Err(e.into()));
        }
    }
    (unwritten, all_written)
}

/// Runs a batch of sets: decides each, appends them all pipelined (one
/// append per set, with that set's metadata, queued together so they share
/// group commits), and answers each set on its channel with its own
/// version once its append committed. A set the decision refuses is
/// answered alone; when an append fails, that set gets the error and the
/// sets after it (not written) are decided and appended again, so every
/// round answers at least one set and the rounds are bounded by the
/// batch's size.
async fn run_sets(
    session: &mut Session<Kv>,
    env: &KvEnv,
    partition: usize,
    batch: Vec<QueuedSet>,
    now_ms: u64,
) {
    let mut pending = batch;
    while !pending.is_empty() {
        let Some((round, next_round)) = screen_keys(env, std::mem::take(&mut pending)).await else {
            return;
        };
        let (decided, appends) = decide_batch(env, partition, round, now_ms);
        let outcomes = session.append_pipelined(appends).await;
        pending = answer_batch(decided, outcomes, true).0;
        pending.extend(next_round);
    }
}

/// Screens a round of sets by their idempotency keys (one lookup for the
/// round): a set sent again with its key (a forward whose answer was lost)
/// is answered as its first run was, appending nothing; a key naming
/// another request gets its 409; a second set with a key this round
/// already carries waits for the next round, where it finds the first
/// one's events. Answers (this round, the next round); `None` when the
/// lookup failed (every set answered with the error).
async fn screen_keys(
    env: &KvEnv,
    mut pending: Vec<QueuedSet>,
) -> Option<(Vec<QueuedSet>, Vec<QueuedSet>)> {
    let priors = match set_priors(env, &pending).await {
        Ok(priors) => priors,
        Err(e) => {
            let message = e.to_string();
            for queued in pending.drain(..) {
                let _ = queued.reply.send(Err(KvError::Storage(
                    cairn_storage::StorageError::Unavailable(format!(
                        "looking up the set's {}: {message}",
                        idempotency::REQUEST_ID_HEADER
                    )),
                )));
            }
            return None;
        }
    };
    let mut priors = priors.into_iter().peekable();
    let mut keys_this_round: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut round = Vec::with_capacity(pending.len());
    let mut next_round = Vec::new();
    for (i, queued) in pending.into_iter().enumerate() {
        let prior = match priors.peek() {
            Some((at, _)) if *at == i => priors.next().map(|(_, p)| p),
            _ => None,
        };
        match prior {
            Some(SetPrior::Applied(answer)) => {
                let _ = queued.reply.send(Ok(answer));
                continue;
            }
            Some(SetPrior::Reused(message)) => {
                let _ = queued.reply.send(Err(KvError::RequestReused { message }));
                continue;
            }
            Some(SetPrior::New) | None => {}
        }
        let id = &queued.metadata.request_id;
        if !id.is_empty() && !keys_this_round.insert(id.clone()) {
            next_round.push(queued);
            continue;
        }
        round.push(queued);
    }
    Some((round, next_round))
}

/// Queues a batch of sets to the store without waiting for its commit (a
/// single node's partition writer; see "Batch pipelining" in the module
/// docs): decides each set on the trackers as they are, queues their
/// appends behind the batches in flight at the version those leave, and
/// hands the batch to a task that answers each set once its append
/// committed. The state's version becomes the one the batch leaves. A
/// batch whose appends could not all be queued (one refused) is settled
/// at once, so the sets after the refused one run again.
async fn pipeline_sets(
    session: &mut Session<Kv>,
    env: &KvEnv,
    store: &Store,
    partition: usize,
    batch: Vec<QueuedSet>,
    now_ms: u64,
) -> Result<(), KvError> {
    // A keyed set (a client's `Cairn-Request-Id`) is checked against the
    // `requests` view, which holds the keys of committed sets only: the
    // batches in flight commit first.
    let batch = if batch.iter().any(|q| !q.metadata.request_id.is_empty()) {
        if let Err(e) = settle(session, env, partition, now_ms, 0).await {
            return Err(fail_sets(batch, e));
        }
        let Some((round, later)) = screen_keys(env, batch).await else {
            return Ok(());
        };
        if !later.is_empty() {
            // The same key twice in one batch: the first runs alone first.
            run_sets(session, env, partition, round, now_ms).await;
            run_sets(session, env, partition, later, now_ms).await;
            return Ok(());
        }
        round
    } else {
        batch
    };
    let (decided, appends) = decide_batch(env, partition, batch, now_ms);
    if appends.is_empty() {
        return Ok(());
    }
    let sizes: Vec<u64> = appends.iter().map(|(e, _)| e.len() as u64).collect();
    let stream = session.state().stream.clone();
    let queued = store
        .queue_pipelined(&stream, session.state().version, appends, env.durability)
        .await;
    let all_queued = queued.queued() == sizes.len();
    session.state_mut().version += sizes[..queued.queued()].iter().sum::<u64>();
    let (done, done_rx) = tokio::sync::oneshot::channel();
    let earlier = session.state().pipeline.lock().last.replace(done_rx);
    let writers = env.writers.clone();
    let task = tokio::spawn(async move {
        let earlier_ok = match earlier {
            Some(earlier) => earlier.await.unwrap_or(false),
            None => true,
        };
        let outcomes = queued
            .outcomes()
            .await
            .into_iter()
            .map(|o| o.map_err(WriterError::from))
            .collect();
        let (unwritten, written) = answer_batch(decided, outcomes, earlier_ok);
        let ok = earlier_ok && written;
        let _ = done.send(ok);
        if !ok {
            // The sets it left unwritten wait in its result: the writer
            // runs them again at its next command (`settle` collects a
            // finished batch), which may be none — so it is sent one.
            let writer = writers
                .upgrade()
                .and_then(|writers| writers[partition].read().clone());
            if let Some(writer) = writer {
                writer.do_send(Execute::<Kv> {
                    command: KvCommand::SetBatch,
                    metadata: Metadata::default(),
                    span: tracing::Span::none(),
                });
            }
        }
        Settled { unwritten, ok }
    });
    session.state().pipeline.lock().in_flight.push_back(task);
    if !all_queued {
        settle(session, env, partition, now_ms, 0).await?;
    }
    Ok(())
}

/// Waits until at most `keep` of the partition's pipelined set batches
/// are in flight, oldest first. When one did not write all its sets, it
/// waits for every batch, reads the stream's version from the store (the
/// state's counted appends that never came) and runs the sets not written
/// again, in order, on the trackers as the commits left them.
async fn settle(
    session: &mut Session<Kv>,
    env: &KvEnv,
    partition: usize,
    now_ms: u64,
    keep: usize,
) -> Result<(), KvError> {
    let mut unwritten = Vec::new();
    let mut failed = false;
    loop {
        let oldest = {
            let mut pipeline = session.state().pipeline.lock();
            // A batch that finished is collected whatever `keep` says: if
            // it failed, its unwritten sets run now, not after `keep` more
            // batches.
            let finished = pipeline
                .in_flight
                .front()
                .is_some_and(tokio::task::JoinHandle::is_finished);
            if pipeline.in_flight.len() <= keep && !failed && !finished {
                None
            } else {
                pipeline.in_flight.pop_front()
            }
        };
        let Some(oldest) = oldest else { break };
        match oldest.await {
            Ok(settled) => {
                failed |= !settled.ok;
                unwritten.extend(settled.unwritten);
            }
            // Its sets lost their answers (answered as the writer gone).
            Err(e) => {
                tracing::warn!(partition, error = %e, "kv set batch task failed");
                failed = true;
            }
        }
    }
    if failed {
        session.state().pipeline.lock().last = None;
        let (store, stream) = (env.store.clone(), session.state().stream.clone());
        let read = async {
            Ok::<_, KvError>(
                off_arbiter("kv-settle", move || store.stream_version(&stream)).await??,
            )
        };
        let version = match read.await {
            Ok(version) => version,
            Err(e) => {
                // The sets not written cannot run on a version not known:
                // answered with the error, never stored.
                return Err(fail_sets(unwritten, e));
            }
        };
        tracing::debug!(
            partition,
            version,
            unwritten = unwritten.len(),
            "kv set pipeline failed; running its unwritten sets again"
        );
        session.state_mut().version = version;
    }
    if !unwritten.is_empty() {
        run_sets(session, env, partition, unwritten, now_ms).await;
    }
    Ok(())
}

/// Runs the sets queued for `partition` ([`KvCommand::SetBatch`]): one
/// batch, pipelined on a single node. A failure answers the batch it took
/// with the error; the caller answers the sets still queued.
async fn set_batch(
    session: &mut Session<Kv>,
    env: &KvEnv,
    partition: usize,
    now_ms: u64,
) -> Result<KvReply, KvError> {
    let KvLog::Store(store) = &env.log else {
        // A cluster's replicated log: one batch at a time.
        let batch = drain_sets(env, partition);
        let n = batch.len();
        if n > 0 {
            run_sets(session, env, partition, batch, now_ms).await;
        }
        return Ok(KvReply::Batched(n));
    };
    // Room for one more batch in flight.
    settle(session, env, partition, now_ms, PIPELINE_MAX_BATCHES - 1).await?;
    let batch = drain_sets(env, partition);
    let n = batch.len();
    if n == 0 {
        return Ok(KvReply::Batched(0));
    }
    if batch
        .iter()
        .any(|q| has_limits(env, partition, &q.set.namespace))
    {
        // Evictions are decided on the trackers as every set before left
        // them: nothing in flight.
        if let Err(e) = settle(session, env, partition, now_ms, 0).await {
            return Err(fail_sets(batch, e));
        }
        run_sets(session, env, partition, batch, now_ms).await;
        return Ok(KvReply::Batched(n));
    }
    pipeline_sets(session, env, store, partition, batch, now_ms).await?;
    Ok(KvReply::Batched(n))
}

/// Answers each of `sets` with `error` as the service answers it (its
/// code and message, [`KvError::Shared`]); none of them is stored.
/// Answers the error to return to the command that failed.
fn fail_sets(sets: Vec<QueuedSet>, error: KvError) -> KvError {
    let shared = match error {
        KvError::Shared(e) => e,
        other => ServiceError::from(other),
    };
    if !sets.is_empty() {
        tracing::warn!(sets = sets.len(), error = %shared, "kv sets not run");
    }
    for queued in sets {
        let _ = queued.reply.send(Err(KvError::Shared(shared.clone())));
    }
    KvError::Shared(shared)
}

/// The `candidates` whose current row `keep` selects.
fn current_rows(
    store: &Store,
    candidates: Vec<(String, String)>,
    keep: impl Fn(&KvEntryRow) -> bool,
) -> Result<Vec<(String, String)>, KvError> {
    let mut out = Vec::new();
    for (namespace, key) in candidates {
        let row: Option<KvEntryRow> =
            store.view_get_message(KvView::NAME, &KvView::entry_key(&namespace, &key))?;
        if row.as_ref().is_some_and(&keep) {
            out.push((namespace, key));
        }
    }
    Ok(out)
}

/// The key-value cache of one node: its partition writers and its reads.
///
/// On a single node every partition's writer runs from the start. On a
/// cluster node ([`KvCluster`]) a partition's writer runs only while the
/// node holds the partition's lease ([`KvNode::own`], [`KvNode::disown`],
/// called by the ownership loop's holder); a command for a partition the
/// node does not write answers [`KvError::NotOwner`], which the service
/// routes again. Reads and the memory tier work on every node: the
/// [`KvObserver`] keeps them in step with every commit the store writes,
/// its own and the replicated ones alike.
#[derive(Debug, Clone)]
pub struct KvNode {
    writers: Arc<Vec<WriterSlot>>,
    env: Arc<KvEnv>,
    flights: Arc<flight::Flights<Found>>,
    cluster: Option<Arc<KvCluster>>,
}

/// A partition's writer while this node runs it.
type WriterSlot = parking_lot::RwLock<Option<Addr<StreamWriter<Kv>>>>;

/// What a cluster node's key-value cache needs besides a single node's.
#[derive(Debug)]
pub struct KvCluster {
    /// The node's id (named in [`KvError::NotOwner`]).
    pub node: String,
    /// The replicated log the owned partitions append through.
    pub appender: crate::cluster::ClusterAppend,
    /// Where partition writers start (the node's arbiter: the ownership
    /// loop calls [`KvNode::own`] from a plain task).
    pub arbiter: actix::ArbiterHandle,
}

/// An entry as a read answers it.
#[derive(Debug, Clone)]
pub struct Found {
    /// The row.
    pub row: Arc<KvEntryRow>,
    /// Hits and last access.
    pub info: EntryInfo,
}

/// Keeps the node's memory tier and trackers in step with the log: told
/// of every commit by the store ([`cairn_storage::CommitObserver`]), on
/// the store's writer thread before the commit's seq is announced, it
/// applies each `kv/` event — a set fills the memory tier with the new
/// row and tracks it, a removal invalidates and untracks (an eviction
/// counts), a configuration changes the namespace's settings (indexing
/// every entry of a namespace that gets limits, read from the views as
/// the commit left them). The same for a node's own writes and for
/// replicated ones, so no node serves a row that a commit it applied
/// changed. `loading` is held while [`KvNode::start`] loads the trackers
/// from the view, so a commit during the load is applied after it.
#[derive(Debug)]
pub struct KvObserver {
    memory: Arc<KvMemory>,
    loading: parking_lot::Mutex<()>,
}

impl KvObserver {
    fn apply(&self, env: &cairn_events::v1::Envelope, views: &dyn cairn_storage::ViewRead) {
        let Some(payload) = env.event.as_ref().and_then(|e| e.payload.as_ref()) else {
            return;
        };
        let memory = &self.memory;
        let removal = |namespace: Option<&str>, entries: &[KvEntryRef], evicted: bool| {
            if let Some(first) = entries.first() {
                let partition = partition_of(namespace.unwrap_or(&first.namespace));
                memory.committed_removal(
                    partition,
                    entries
                        .iter()
                        .map(|e| (e.namespace.as_str(), e.key.as_str())),
                    evicted,
                );
            }
        };
        match payload {
            Payload::KvEntrySet(s) => {
                let row = KvEntryRow {
                    namespace: s.namespace.clone(),
                    key: s.key.clone(),
                    value: s.value.clone(),
                    json: s.json,
                    tags: s.tags.clone(),
                    created_at_ms: s.created_at_ms,
                    expires_at_ms: s.expires_at_ms,
                    seq: env.seq,
                };
                memory.committed_set(partition_of(&s.namespace), Arc::new(row), s.created_at_ms);
            }
            Payload::KvEntryDeleted(d) => {
                memory.committed_removal(
                    partition_of(&d.namespace),
                    [(d.namespace.as_str(), d.key.as_str())],
                    false,
                );
            }
            Payload::KvEntriesDeleted(d) => removal(None, &d.entries, false),
            Payload::KvEntriesExpired(d) => removal(None, &d.entries, false),
            Payload::KvEntriesEvicted(d) => removal(Some(&d.namespace), &d.entries, true),
            Payload::KvNamespaceConfigured(c) => {
                let settings = c.settings.clone().unwrap_or_default();
                let partition = partition_of(&c.namespace);
                let limited = settings.max_entries > 0 || settings.max_bytes > 0;
                // A namespace that gets limits has all its entries indexed
                // (see `memory`): read them from the views as they are.
                let rows = (limited && !memory.tracks_all(partition, &c.namespace)).then(|| {
                    let mut rows = Vec::new();
                    let read = views.view_scan_each::<KvError>(
                        KvView::NAME,
                        &KvView::namespace_entries(&c.namespace),
                        None,
                        |_, v| {
                            let row = decode_entry(v)?;
                            let info = memory::EntryInfo::of(&row, 0);
                            rows.push((row.key.into_boxed_str(), info));
                            Ok(ControlFlow::Continue(()))
                        },
                    );
                    if let Err(e) = read {
                        tracing::warn!(namespace = %c.namespace, error = %e, "kv: indexing a namespace that got limits");
                    }
                    rows
                });
                memory.committed_settings(partition, &c.namespace, settings, rows);
            }
            _ => {}
        }
    }
}

impl cairn_storage::CommitObserver for KvObserver {
    fn committed(
        &self,
        envelopes: &[&cairn_events::v1::Envelope],
        views: &dyn cairn_storage::ViewRead,
    ) {
        let mut kv = envelopes
            .iter()
            .filter(|e| e.stream.starts_with(KV_STREAM_PREFIX))
            .peekable();
        if kv.peek().is_none() {
            return;
        }
        let _loaded = self.loading.lock();
        for env in kv {
            self.apply(env, views);
        }
    }
}

/// The streams of the key-value partitions start with this.
pub const KV_STREAM_PREFIX: &str = "kv/";

impl KvNode {
    /// Loads the trackers from the view and, on a single node (`cluster`
    /// `None`), starts one writer per partition (in the current actix
    /// system); a cluster node starts a partition's writer when it takes
    /// the partition ([`KvNode::own`]). From here on the memory tier
    /// follows every commit ([`KvObserver`]).
    pub async fn start(
        store: Store,
        clock: Arc<dyn Clock>,
        memory_max_bytes: u64,
        durability: cairn_storage::Durability,
        set_batch_max: usize,
        cluster: Option<KvCluster>,
    ) -> Result<Self, KvError> {
        let memory = Arc::new(KvMemory::new(KV_PARTITIONS, memory_max_bytes));
        let observer = Arc::new(KvObserver {
            memory: memory.clone(),
            loading: parking_lot::Mutex::new(()),
        });
        let (loaded, load_store, load_observer) = (memory.clone(), store.clone(), observer.clone());
        let versions = off_arbiter("kv-load", move || -> Result<Vec<u64>, KvError> {
            // Observing before loading, the load under the observer's lock:
            // a commit written meanwhile is in what the load reads and is
            // applied again after it (applying a commit twice leaves the
            // same rows), never missed.
            let _loading = load_observer.loading.lock();
            load_store.observe(load_observer.clone());
            let mut settings = Vec::new();
            load_store.view_scan_each::<KvError>(
                KvView::NAME,
                KvView::NAMESPACE_PREFIX,
                None,
                |k, v| {
                    let name = String::from_utf8_lossy(&k[1..]).into_owned();
                    settings.push((name, decode_settings(v)?));
                    Ok(ControlFlow::Continue(()))
                },
            )?;
            loaded.load_settings(partition_of, settings);
            // Only namespaces with limits keep their entries in memory.
            let mut entries = Vec::new();
            load_store.view_scan_each::<KvError>(
                KvView::NAME,
                KvView::ENTRY_PREFIX,
                None,
                |_, v| {
                    let row = decode_entry(v)?;
                    if loaded.tracks_all(partition_of(&row.namespace), &row.namespace) {
                        entries.push(row);
                    }
                    Ok(ControlFlow::Continue(()))
                },
            )?;
            loaded.load(partition_of, entries);
            (0..KV_PARTITIONS)
                .map(|p| Ok(load_store.stream_version(&partition_stream(p))?))
                .collect()
        })
        .await??;
        let log = match &cluster {
            Some(c) => KvLog::Cluster(c.appender.clone()),
            None => KvLog::Store(store.clone()),
        };
        let writers: Arc<Vec<WriterSlot>> = Arc::new(
            (0..KV_PARTITIONS)
                .map(|_| parking_lot::RwLock::new(None))
                .collect(),
        );
        let env = Arc::new(KvEnv {
            store,
            log,
            memory,
            clock,
            durability,
            sets: (0..KV_PARTITIONS).map(|_| SetQueue::default()).collect(),
            set_batch_max: set_batch_max.max(1),
            writers: Arc::downgrade(&writers),
        });
        let node = Self {
            writers,
            env,
            flights: Arc::default(),
            cluster: cluster.map(Arc::new),
        };
        if node.cluster.is_none() {
            for (partition, version) in versions.into_iter().enumerate() {
                node.start_writer(partition, version, None);
            }
        }
        Ok(node)
    }

    /// Starts the writer of `partition` at stream version `version` (on
    /// `arbiter`, else in the current actix system) and opens its set
    /// queue.
    fn start_writer(&self, partition: usize, version: u64, arbiter: Option<&actix::ArbiterHandle>) {
        let state = KvState {
            partition,
            stream: partition_stream(partition),
            version,
            pipeline: Arc::default(),
        };
        let env = self.env.clone();
        let writer = match arbiter {
            Some(arbiter) => StreamWriter::<Kv>::start_in_arbiter(arbiter, move |_| {
                StreamWriter::<Kv>::new(state, env)
            }),
            None => StreamWriter::<Kv>::new(state, env).start(),
        };
        *self.writers[partition].write() = Some(writer);
        self.env.sets[partition].queue.lock().open = true;
    }

    /// Whether this node runs the writer of `partition` now.
    pub fn writes(&self, partition: usize) -> bool {
        self.writers[partition].read().is_some()
    }

    /// A cluster node took `partition`'s lease (its log is caught up to
    /// the fence): its writer starts at the stream's version as this
    /// node's log holds it. The trackers are current already (every node
    /// keeps them, [`KvObserver`]); recency is this node's — every set
    /// and this node's hits.
    pub async fn own(&self, partition: usize) -> Result<(), KvError> {
        let Some(cluster) = self.cluster.clone() else {
            return Ok(());
        };
        if self.writes(partition) {
            return Ok(());
        }
        let store = self.env.store.clone();
        let version = off_arbiter("kv-own", move || {
            store.stream_version(&partition_stream(partition))
        })
        .await??;
        self.start_writer(partition, version, Some(&cluster.arbiter));
        tracing::info!(partition, version, "kv partition writer started");
        Ok(())
    }

    /// A cluster node gives `partition` up: the sets still queued are
    /// answered [`KvError::NotOwner`] (nothing of them ran: they are routed
    /// again), new commands too, and the writer finishes what it runs,
    /// then stops. Resolves once it stopped.
    pub async fn disown(&self, partition: usize) {
        let waiting: Vec<QueuedSet> = {
            let mut queue = self.env.sets[partition].queue.lock();
            queue.open = false;
            queue.sets.drain(..).collect()
        };
        for queued in waiting {
            let _ = queued.reply.send(Err(self.not_owner(partition)));
        }
        let writer = self.writers[partition].write().take();
        if let Some(writer) = writer {
            let _ = writer.send(crate::writer::StopWriter).await;
            tracing::info!(partition, "kv partition writer stopped");
        }
    }

    /// The error of a command for a partition this node does not write.
    fn not_owner(&self, partition: usize) -> KvError {
        match &self.cluster {
            Some(cluster) => KvError::NotOwner {
                node: cluster.node.clone(),
                stream: partition_stream(partition).to_string(),
            },
            None => KvError::WriterGone { partition },
        }
    }

    /// Whether this node is a cluster node.
    pub fn clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// The node's single flights.
    pub fn flights(&self) -> &flight::Flights<Found> {
        &self.flights
    }

    /// The settings of `namespace` (defaults when never configured).
    pub fn settings(&self, namespace: &str) -> KvNamespaceSettings {
        let tracker = self.env.memory.partition(partition_of(namespace)).lock();
        tracker
            .namespaces
            .get(namespace)
            .map(|ns| ns.settings.clone())
            .unwrap_or_default()
    }

    /// The shared state.
    pub fn env(&self) -> &Arc<KvEnv> {
        &self.env
    }

    /// Now, in Unix ms, by the node's clock.
    pub fn now_ms(&self) -> u64 {
        unix_ms(self.env.clock.now())
    }

    /// Runs `command` on the writer of `partition`.
    pub async fn execute(
        &self,
        partition: usize,
        command: KvCommand,
        metadata: Metadata,
    ) -> Result<KvReply, KvError> {
        let (command, answer) = match command {
            KvCommand::Set(set) => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                {
                    let mut queue = self.env.sets[partition].queue.lock();
                    if !queue.open {
                        return Err(self.not_owner(partition));
                    }
                    if queue.sets.len() >= SET_QUEUE_MAX_ENTRIES {
                        return Err(KvError::Busy {
                            partition,
                            queued: queue.sets.len(),
                        });
                    }
                    queue.sets.push_back(QueuedSet {
                        set,
                        metadata: metadata.clone(),
                        reply,
                    });
                }
                (KvCommand::SetBatch, Some(answer))
            }
            command => (command, None),
        };
        let gone = || self.not_owner(partition);
        let writer = self.writers[partition].read().clone();
        let Some(writer) = writer else {
            return match answer {
                // Queued, then the partition was given up: the queue was
                // drained, this set answered with it.
                Some(answer) => answer.await.map_err(|_| gone())?,
                None => Err(gone()),
            };
        };
        let ran = writer.send(Execute::<Kv> {
            command,
            metadata,
            span: tracing::Span::current(),
        });
        let Some(answer) = answer else {
            return ran.await.map_err(|_| gone())?;
        };
        // The batch that takes this set may be an earlier one than its own
        // trigger's: answered as soon as that batch is, not after the batch
        // its trigger runs (a later one, with an fsync of its own). A
        // trigger dropped unsent is not missed: every set still waiting
        // has its own.
        match futures::future::select(answer, std::pin::pin!(ran)).await {
            futures::future::Either::Left((answered, _)) => answered.map_err(|_| gone())?,
            // Its trigger ran, or failed: the set's own answer says what
            // became of it either way — a batch took it and answers it, or
            // the failed trigger answered every set it left queued.
            futures::future::Either::Right((Ok(ran), answer)) => {
                if let Err(e) = ran {
                    tracing::debug!(partition, error = %e, "kv set trigger failed");
                }
                answer.await.map_err(|_| gone())?
            }
            // The writer stopped (its partition given up): a set still
            // queued was answered by the drain; one a batch took, by it.
            futures::future::Either::Right((Err(_), answer)) => {
                tokio::time::timeout(WRITER_GONE_WAIT, answer)
                    .await
                    .map_err(|_| gone())?
                    .map_err(|_| gone())?
            }
        }
    }

    /// The live entry `(namespace, key)`, counting a hit or a miss when
    /// `count` (an `exists` does not).
    pub async fn get(
        &self,
        namespace: &str,
        key: &str,
        count: bool,
    ) -> Result<Option<Found>, KvError> {
        let partition = partition_of(namespace);
        let memory = &self.env.memory;
        // Before the entry is looked up: a hit and a fill check that no
        // write of the partition came between (see `memory`).
        let generation = memory.generation(partition);
        let row = match memory.cached(namespace, key) {
            Some(row) => Some(row),
            None => {
                let store = self.env.store.clone();
                let row_key = KvView::entry_key(namespace, key);
                let row: Option<KvEntryRow> = off_arbiter("kv-get", move || {
                    store.view_get_message::<KvEntryRow>(KvView::NAME, &row_key)
                })
                .await??;
                row.map(|row| {
                    let row = Arc::new(row);
                    memory.fill(partition, generation, row.clone());
                    row
                })
            }
        };
        let now_ms = self.now_ms();
        match row.filter(|r| !expired(r.expires_at_ms, now_ms)) {
            Some(row) => {
                let info = if count {
                    memory.hit(partition, &row, now_ms, generation)
                } else {
                    memory.info(partition, &row)
                };
                Ok(Some(Found { row, info }))
            }
            None => {
                if count {
                    memory.miss(partition, namespace);
                }
                Ok(None)
            }
        }
    }

    /// Entry rows whose key starts with `prefix` (a `KvView` row prefix),
    /// after `after`, that `keep` selects, at most `limit`.
    pub async fn scan(
        &self,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
        keep: impl Fn(&KvEntryRow) -> bool + Send + 'static,
    ) -> Result<Vec<(Vec<u8>, KvEntryRow)>, KvError> {
        let store = self.env.store.clone();
        off_arbiter("kv-scan", move || {
            let mut out = Vec::new();
            store.view_scan_each::<KvError>(KvView::NAME, &prefix, after.as_deref(), |k, v| {
                let row = decode_entry(v)?;
                if keep(&row) {
                    out.push((k.to_vec(), row));
                }
                Ok(if out.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            })?;
            Ok(out)
        })
        .await?
    }

    /// Entries of the tag index of `tag`, at most `limit`.
    pub async fn tagged(&self, tag: &str, limit: usize) -> Result<Vec<(String, String)>, KvError> {
        let store = self.env.store.clone();
        let prefix = KvView::tag_prefix(tag);
        off_arbiter("kv-tags", move || {
            let mut out = Vec::new();
            store.view_scan_each::<KvError>(KvView::NAME, &prefix, None, |k, _| {
                if let Some(entry) = KvView::split_entry(&k[prefix.len()..]) {
                    out.push(entry);
                }
                Ok(if out.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            })?;
            Ok(out)
        })
        .await?
    }

    /// Entries the expiry index lists as expired at `now_ms`, at most
    /// `limit`.
    pub async fn expired_entries(
        &self,
        now_ms: u64,
        limit: usize,
        keep: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Vec<(String, String)>, KvError> {
        let store = self.env.store.clone();
        off_arbiter("kv-expired", move || {
            let mut out = Vec::new();
            store.view_scan_each::<KvError>(
                KvView::NAME,
                KvView::EXPIRY_PREFIX,
                None,
                |k, _| {
                    match KvView::split_expiry(k) {
                        Some((at, _, _)) if !expired(at, now_ms) => {
                            return Ok(ControlFlow::Break(()))
                        }
                        Some((_, namespace, key)) if keep(&namespace) => {
                            out.push((namespace, key));
                        }
                        _ => {}
                    }
                    Ok(if out.len() >= limit {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    })
                },
            )?;
            Ok(out)
        })
        .await?
    }

    /// Removes expired entries (of `namespace`, or all; of partition
    /// `only`, or all), up to `limit_entries` per round until none is left
    /// or `rounds_max` rounds ran; answers how many went. The expiry index
    /// orders every namespace's entries by time, so a round selects while
    /// it scans: expired entries of other namespaces or partitions, however
    /// many sort first, neither fill a round nor end the cleanup.
    pub async fn cleanup(
        &self,
        namespace: Option<&str>,
        metadata: &Metadata,
        limit_entries: usize,
        rounds_max: usize,
        only: Option<usize>,
    ) -> Result<u64, KvError> {
        let mut removed = 0;
        for _ in 0..rounds_max {
            let now_ms = self.now_ms();
            let wanted = namespace.map(str::to_owned);
            let found = self
                .expired_entries(now_ms, limit_entries, move |ns| {
                    wanted.as_deref().is_none_or(|n| n == ns)
                        && only.is_none_or(|p| partition_of(ns) == p)
                })
                .await?;
            let full_round = found.len() >= limit_entries;
            let mut by_partition: Vec<Vec<(String, String)>> = vec![Vec::new(); KV_PARTITIONS];
            for (ns, key) in found {
                by_partition[partition_of(&ns)].push((ns, key));
            }
            let mut round = 0;
            for (partition, candidates) in by_partition.into_iter().enumerate() {
                if candidates.is_empty() {
                    continue;
                }
                if let KvReply::Count(n) = self
                    .execute(
                        partition,
                        KvCommand::Expire { candidates },
                        metadata.clone(),
                    )
                    .await?
                {
                    round += n;
                }
            }
            removed += round;
            if !full_round || round == 0 {
                break;
            }
        }
        Ok(removed)
    }

    /// Deletes the `candidates` `matcher` still selects, each partition's
    /// in one event; answers how many went.
    pub async fn delete_matching(
        &self,
        by: &'static str,
        selector: String,
        matcher: Matcher,
        candidates: Vec<(String, String)>,
        metadata: Metadata,
    ) -> Result<u64, KvError> {
        let mut by_partition: Vec<Vec<(String, String)>> = vec![Vec::new(); KV_PARTITIONS];
        for (ns, key) in candidates {
            by_partition[partition_of(&ns)].push((ns, key));
        }
        let mut deleted = 0;
        for (partition, candidates) in by_partition.into_iter().enumerate() {
            if candidates.is_empty() {
                continue;
            }
            let command = KvCommand::DeleteMatching {
                by,
                selector: selector.clone(),
                matcher: matcher.clone(),
                candidates,
            };
            if let KvReply::Count(n) = self.execute(partition, command, metadata.clone()).await? {
                deleted += n;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets answered for a failure that was not theirs get it as the
    /// service answers it: the same code and message, not a 503 that
    /// invites a retry of what is broken.
    #[test]
    fn failed_sets_keep_the_error_kind() {
        let queued = |key: &str| {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let set = QueuedSet {
                set: SetEntry {
                    namespace: "ns".into(),
                    key: key.into(),
                    value: b"1".to_vec(),
                    json: true,
                    tags: Vec::new(),
                    ttl_ms: None,
                },
                metadata: Metadata::default(),
                reply,
            };
            (set, answer)
        };
        let service = |e: KvError| ServiceError::from(e);
        for (error, code, message) in [
            (
                KvError::Storage(cairn_storage::StorageError::Corrupt("a row".into())),
                500,
                "corrupt store: a row",
            ),
            (
                KvError::Storage(cairn_storage::StorageError::Closed),
                503,
                "node is shutting down",
            ),
            (
                KvError::WriterGone { partition: 3 },
                503,
                "kv partition 3 writer is not running",
            ),
        ] {
            let ((a, mut a_answer), (b, mut b_answer)) = (queued("a"), queued("b"));
            let returned = service(fail_sets(vec![a, b], error));
            let expected = ServiceError {
                code,
                message: message.into(),
            };
            assert_eq!(returned, expected);
            for answer in [a_answer.try_recv(), b_answer.try_recv()] {
                assert_eq!(service(answer.unwrap().unwrap_err()), expected);
            }
            // Shared again (a batch's failure handed on): unchanged.
            assert_eq!(
                service(fail_sets(Vec::new(), KvError::Shared(expected.clone()))),
                expected
            );
        }
    }
}
