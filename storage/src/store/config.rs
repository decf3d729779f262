//! [`StoreConfig`]: tuning and limits of a store. A leaf module.

use std::path::PathBuf;

/// Tuning and limits of a [`Store`](super::Store).
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory of the RocksDB database (created when missing).
    pub path: PathBuf,
    /// fsync every commit, and every blob file written (and the blob
    /// directories it lands in). Default: true. Turning it off loses
    /// acknowledged appends and blobs on power loss; only benchmarks
    /// comparing against an equally unsynced baseline should do that.
    pub sync: bool,
    /// Most events written by one group commit. Default: 8192.
    pub group_commit_max_events: usize,
    /// Most events in one append. Default: 1000.
    pub append_max_events: usize,
    /// Largest encoded event payload, in bytes. Default: 262144 (256 KiB);
    /// resource contents go to the blob store, not into events.
    pub event_max_bytes: usize,
    /// Appends waiting for the writer before callers are made to wait.
    /// Default: 4096.
    pub queue_max_appends: usize,
    /// Events per batch while replaying the log into views. Default: 1024.
    pub replay_batch_events: usize,
    /// View rows kept in the in-memory read cache (0 turns it off).
    /// Default: 10000.
    pub view_cache_entries: usize,
    /// Largest blob kept as a row of the `blobs` column family, in bytes;
    /// larger blobs are files under `<path>/blobs/` (see
    /// [`crate::store`]'s blob docs). Small rows are cheap to read and
    /// need no file per blob; large contents would bloat RocksDB's
    /// compactions and memtables. Default: 1048576 (1 MiB).
    pub blob_inline_max_bytes: usize,
    /// Stream index rows a compaction reads per page: it never holds more
    /// of the class's index than this (plus one entry per key). At least 1.
    /// Default: 4096.
    pub compaction_page_rows: usize,
}

impl StoreConfig {
    /// Most envelopes one replicated commit may hold: the most one group
    /// commit of a writer with this configuration can write (it stops
    /// taking appends once it holds `group_commit_max_events`, and the last
    /// append taken holds at most `append_max_events`).
    pub fn replicated_commit_max_events(&self) -> usize {
        self.group_commit_max_events
            .saturating_add(self.append_max_events)
    }

    /// Defaults for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            sync: true,
            group_commit_max_events: 8192,
            append_max_events: 1000,
            event_max_bytes: 256 * 1024,
            queue_max_appends: 4096,
            replay_batch_events: 1024,
            view_cache_entries: 10_000,
            blob_inline_max_bytes: 1 << 20,
            compaction_page_rows: 4096,
        }
    }
}
