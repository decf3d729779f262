//! cairn's memory: the durable event log, the content-addressed blob store
//! and the views, in one RocksDB database (large blobs as files beside it).
//!
//! # Layout
//! - [`columns`] — the column families, declared once, documented, never renamed.
//! - [`keys`] — key encodings (big-endian integers so keys sort in event order).
//! - [`error`] — [`StorageError`], one variant per failure.
//! - [`digest`] — [`Digest`], the sha256 digest naming a blob.
//! - [`version`] — [`ExpectedVersion`], what an appender believes a
//!   stream's version is.
//! - [`log`] — the [`EventLog`] trait and its types ([`Appended`],
//!   [`LogRow`] and [`LogEvent`], the stored rows;
//!   [`ExpectedVersion`] re-exported), and [`ReplicatedLog`]: applying
//!   commits another node's writer sequenced ([`Replicated`],
//!   [`log::StateDump`]).
//! - [`append`] — the [`AsyncAppend`] trait: what an async writer (the
//!   actors' stream-writer shell) needs of the log it appends to — the
//!   append size limit and chunked appends queued together; the seam a
//!   replicated (JetStream-backed) appender plugs into.
//! - [`blob`] — the [`BlobStore`] trait (whole and streaming puts and
//!   reads), pins and [`BlobReader`] ([`Digest`] re-exported).
//! - [`read`] — the [`ViewRead`] trait (view gets, scans, snapshots) and its
//!   generic conveniences [`ViewReadExt`]: what read-only components take
//!   instead of the concrete [`Store`].
//! - [`observe`] — [`CommitObserver`]: told of every commit on the writer
//!   thread before its seq is announced (in-memory state kept in step with
//!   the log, on single and cluster nodes alike).
//! - [`view`] — the [`View`] trait, the transaction views write through, and
//!   the fold shared by live appends, replicated commits, catch-up and
//!   rebuild.
//! - [`views`] — cairn's views (`repositories`, …) and [`views::default_views`].
//! - [`compaction`] — retention per stream class: the [`CompactionPolicy`]
//!   a domain supplies, what compaction does to the log and the views, and
//!   [`CompactingLog`], a log that can be compacted (what the compaction
//!   conformance suite runs against).
//! - [`store`] — [`Store`], the RocksDB implementation of all of the above
//!   (its own `# Layout` names its modules: configuration, shared state,
//!   the handle, writer commands, scans, opening, reads, the writer
//!   thread, blobs, compaction).
//! - [`metrics`] — the store's OpenTelemetry instruments (append latency,
//!   group-commit size); the row cache's counters are [`Store::row_cache_stats`].
//! - [`sample`] — sample events ([`sample::marker`]) for benchmarks and tests.
//! - `conformance` (feature `testsuite`, and this crate's tests) — the
//!   conformance suites every [`EventLog`] / [`ReplicatedLog`] and every
//!   [`BlobStore`] must pass, as test-generating macros, and the compaction
//!   suite every [`CompactingLog`] must pass.
//!
//! No module of this crate imports one that imports it back, parent and
//! child included: what several modules name lives in a leaf they all
//! build on ([`digest`], [`version`], [`read::Rows`], [`read::ViewDump`],
//! `views::change`, and `store`'s own leaves), and a parent's children
//! never import from it; the old paths (`blob::Digest`,
//! `log::ExpectedVersion`, `store::Rows`, `store::ViewDump`) are
//! re-exports.
//!
//! # How a write happens
//! Every append is sent to one writer thread. The writer drains whatever
//! appends are queued (up to a bound), checks each one's expected stream
//! version, assigns stream versions and global sequence numbers, folds the
//! new events into every view, and writes log rows, stream index rows, view
//! rows, view checkpoints and the last sequence number as **one** `WriteBatch`
//! with `sync = true` — one fsync for the whole group. Only then are the
//! appenders answered. A rejected append (conflict, bad input) contributes
//! nothing to the batch, so it writes nothing.
//!
//! The fold's reads are kept cheap, since replicated catch-up, rebuild and
//! first syncs fold hundreds of thousands of events through them: the
//! writer keeps the blob reference counts it last committed in memory
//! (bounded, `store::refs`), a batch does not point-read a repository's
//! keys past the last one stored ([`ViewTx::get_in_group`]), and the
//! `WriteBatch` is allocated once, at its final size (`store::writer`'s
//! `CommitRows`). None of it changes a row.
//!
//! A replicated commit ([`ReplicatedLog::apply_replicated`]) takes the same
//! path without the numbering: the writer checks that its `seq` and stream
//! versions continue the log (skipping a prefix it already holds,
//! identical), then writes the envelopes as they are — same rows, same
//! fold, same batch layout — so the replica's log and views are
//! byte-identical to the original's.
//!
//! A blob is written before the event that refers to it: small ones as a
//! `blobs` row, large ones streamed to a temporary file (hashed on the way,
//! fsynced, renamed into its content-addressed place, directory fsynced);
//! the writer's pin keeps it from collection until that event commits.
//! Compaction also runs on the writer thread, so no commit interleaves
//! with it. Garbage collection scans off it (a snapshot, on the caller's
//! thread) and hands its candidates to the writer in small batches, where
//! each is deleted only if nothing references or pins it then (see
//! `store::blobs`).

pub mod append;
pub mod blob;
pub mod columns;
pub mod compaction;
#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
pub mod digest;
pub mod error;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod observe;
pub mod read;
pub mod sample;
pub mod store;
pub mod version;
pub mod view;
pub mod views;

pub use append::{AsyncAppend, Durability};
pub use blob::{BlobPin, BlobReader, BlobStore};
pub use columns::Column;
pub use compaction::{CompactingLog, CompactionPolicy, CompactionStats};
pub use digest::Digest;
pub use error::StorageError;
pub use log::{
    Appended, EventLog, LogEvent, LogRow, Replicated, ReplicatedLog, Sequenced, SequencedCommit,
};
pub use observe::CommitObserver;
pub use read::{ViewRead, ViewReadExt};
pub use store::{
    BlobSpool, BlobWriter, CacheCounters, Checkpointed, MemoryUsage, QueuedAppends,
    RebuildProgress, RebuildStats, Store, StoreConfig, StoreSnapshot,
};
pub use version::ExpectedVersion;
pub use view::{View, ViewTx};
