//! Errors of the storage crate.

use cairn_events::EventsError;

use crate::ExpectedVersion;

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
}
