//! Errors of the storage crate.

use cairn_events::EventsError;

use crate::{Digest, ExpectedVersion};

/// Every way a storage call can fail.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The stream is not at the expected version: somebody else appended
    /// first. Nothing was written. Reload the aggregate's state and retry the
    /// command, or report a 409 to the caller.
    #[error("stream {stream}: expected {expected}, found version {actual}")]
    Conflict {
        /// The stream.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's actual version.
        actual: u64,
    },
    /// The append request itself is invalid (empty, too many events, an
    /// event too large). Nothing was written. A caller bug or bad input:
    /// report it, do not retry.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// RocksDB failed (I/O error, disk full, corruption detected). The
    /// append was not acknowledged and may be retried; repeated failures
    /// need an operator.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored record does not decode, or an invariant (gap-free sequence,
    /// contiguous versions) does not hold. Stop and run `cairn views
    /// rebuild` or restore from a backup; never write on top of it.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// A stored event failed to decode.
    #[error("event at seq {seq}: {source}")]
    Event {
        /// Position of the event.
        seq: u64,
        /// Why it failed.
        source: EventsError,
    },
    /// The database was written by a newer cairn (layout version).
    #[error("data directory has layout version {found}, this build supports up to {supported}")]
    UnsupportedLayout {
        /// Version found on disk.
        found: u32,
        /// Highest version this build supports.
        supported: u32,
    },
    /// The store is shutting down or its writer thread stopped; the append
    /// was not performed.
    #[error("store is closed")]
    Closed,
    /// A view named in a call does not exist.
    #[error("unknown view {0:?}")]
    UnknownView(String),
    /// Streamed blob content does not have the digest the caller stated.
    /// Nothing was kept. The source is corrupt or the caller named the
    /// wrong digest: report it; retrying the same bytes fails the same way.
    #[error("blob digest mismatch: expected {expected}, found {found}")]
    DigestMismatch {
        /// The digest the caller stated.
        expected: Digest,
        /// The digest of the content actually read.
        found: Digest,
    },
    /// A byte range outside a blob was asked for. A caller bug or bad
    /// input: report it, do not retry.
    #[error("range {start}..{end} is outside blob {digest} of {size} bytes")]
    BlobRange {
        /// The blob.
        digest: Digest,
        /// First byte asked for.
        start: u64,
        /// End (exclusive) asked for.
        end: u64,
        /// The blob's size.
        size: u64,
    },
    /// A file operation of the blob store failed (disk full, permissions,
    /// the caller's reader failing). Nothing was kept; may be retried.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A replicated commit does not continue this log: its first sequence
    /// number, or a stream's first version, is not the next one. Nothing
    /// was written. Fetch the missing commits first (from `expected` on).
    #[error(
        "replicated commit does not continue the log: {what}: expected {expected}, found {found}"
    )]
    ReplicationGap {
        /// Which number: `seq`, or `stream <id> version`.
        what: String,
        /// The number this log expects next.
        expected: u64,
        /// The number the commit has.
        found: u64,
    },
    /// A replicated commit holds an event at a sequence number this log
    /// already has with different content: the replicas diverged. Nothing
    /// was written. Needs an operator.
    #[error("replicated event at seq {seq} differs from the one stored")]
    ReplicaDiverged {
        /// The sequence number.
        seq: u64,
    },
    /// The replicated log cannot take the append now: this node does not
    /// own the stream (any more), or the cluster's log is unreachable.
    /// Nothing was appended; the command may be retried (503).
    #[error("{0}")]
    Unavailable(String),
    /// A replicated commit is malformed (no events, an event without a
    /// payload or stream, sequence numbers out of order, ids or trace
    /// context unfit for NATS headers). Nothing was
    /// written. A caller bug or bad input: report it, do not retry.
    #[error("invalid replicated commit: {0}")]
    InvalidReplicated(String),
    /// A compaction policy is refused (it would cover repository streams,
    /// or names no stream class). Nothing was compacted.
    #[error("invalid compaction: {0}")]
    InvalidCompaction(String),
}

impl StorageError {
    /// An [`StorageError::Io`] error saying what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }
}
