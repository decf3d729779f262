//! [`Store`]: the RocksDB implementation of the event log, the blob store and
//! the views, in one database.
//!
//! All writes that touch the log or the views go through one writer thread
//! (see the crate docs, "How a write happens"): it is the only place where
//! sequence numbers and stream versions are assigned, so no locks are needed
//! around them, and concurrent appends share one fsync (group commit).
//! Reads go straight to RocksDB from the caller's thread.
//!
//! # Layout
//! No module here imports one that imports it back, the parent included:
//! the shared pieces are leaves the others build on (`config`, `inner`,
//! `command`, `scan`, `handle`), and this module only puts them together.
//! - this module — [`Store::open`]: the opening order (database, temporary
//!   blob sweep, layout and last-seq checks, compaction records, view
//!   catch-up, writer start), and the re-exports.
//! - `config` — [`StoreConfig`], tuning and limits.
//! - `inner` — `Inner`, the database, views and state readers share with
//!   the writer (the row cache, pins, counters), and `Compacted`, what
//!   readers know of past compactions.
//! - `handle` — [`Store`], the cheap-to-clone handle (`Shared`: the state,
//!   the writer's queue and thread, stopped when the last handle drops),
//!   its accessors, [`WriterStats`] and [`MemoryUsage`].
//! - `command` — what the writer thread is asked to do (`Command`,
//!   `AppendRequest`), [`RebuildProgress`] and [`RebuildStats`].
//! - `scan` — prefix scans over a column family or a snapshot's iterator,
//!   shared by reads, the writer and compaction.
//! - `open` — the RocksDB options and column families, the layout-version
//!   and last-seq checks done at open.
//! - `read` — view reads and scans (the row cache), [`StoreSnapshot`],
//!   log reads (`read_all`, [`Store::read_log_events`] with the stored
//!   rows, `read_stream`, skipping compacted gaps), the
//!   [`crate::ViewRead`] and [`crate::ReplicatedLog`] impls, `state_dump`.
//! - `writer` — the writer thread: group commit, the
//!   [`crate::AsyncAppend`] impl, replicated commits (and the checks that
//!   refuse what could not be read back), view catch-up at open and
//!   rebuild.
//! - `refs` — `BlobRefCounts`, the blob reference counts the writer last
//!   committed, held in memory (at most [`BLOB_REF_COUNTS_MAX_ENTRIES`])
//!   so a retain or release reads no row, and `WriterRows`, what the
//!   writer's folds read through.
//! - `blobs` — [`crate::BlobStore`]: blob rows and files, streaming puts
//!   and reads, pins, garbage collection, the temporary-file sweep;
//!   [`BlobWriter`], a put readable ([`BlobSpool`]) while it is written.
//! - `recent` — [`RecentLogStats`] and `RecentRows`, the log rows the
//!   writer committed last, kept in memory (at most
//!   [`RECENT_LOG_MAX_EVENTS`] and [`RECENT_LOG_MAX_BYTES`]) for a reader
//!   tailing the log (the Publisher): [`Store::recent_log_rows`].
//! - `checkpoint` — [`Store::checkpoint_async`], a consistent copy of the
//!   database for a cluster's snapshots, and the blobs such a copy needs.
//! - `compact` — [`Store::compact`] on the writer thread (reading the
//!   class's stream index in pages), and the records readers use to
//!   accept the gaps it leaves.

mod blobs;
mod checkpoint;
mod command;
mod compact;
mod config;
mod handle;
mod inner;
mod open;
mod read;
mod recent;
mod refs;
mod scan;
mod writer;

pub use crate::read::Rows;
pub use blobs::{BlobSpool, BlobWriter, GC_DELETE_BATCH_BLOBS, STREAM_CHUNK_BYTES};
pub use checkpoint::Checkpointed;
pub use command::{RebuildProgress, RebuildStats};
pub use config::StoreConfig;
pub use handle::{MemoryUsage, Store, WriterStats};
pub use inner::CacheCounters;
pub use open::{BLOCK_CACHE_BYTES, LAYOUT_VERSION, MEMTABLES_MAX_BYTES};
pub use read::{StoreSnapshot, ViewDump};
pub use recent::{RecentLogStats, RECENT_LOG_MAX_BYTES, RECENT_LOG_MAX_EVENTS};
pub use refs::BLOB_REF_COUNTS_MAX_ENTRIES;
pub use writer::{QueuedAppends, METADATA_MAX_BYTES};

use std::{
    collections::HashMap,
    sync::{atomic::AtomicU64, Arc},
};

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::{columns::view_column, StorageError, View};

use self::{
    handle::Shared,
    inner::{Compacted, Inner, RowCache},
    open::open_db,
    writer::Writer,
};

impl Store {
    /// Opens (or creates) the database with these views, brings every view
    /// up to the end of the log, and starts the writer.
    pub fn open(config: StoreConfig, views: Vec<Arc<dyn View>>) -> Result<Store, StorageError> {
        let view_cfs: Vec<String> = views.iter().map(|v| view_column(v.name())).collect();
        for (i, name) in view_cfs.iter().enumerate() {
            if view_cfs[..i].contains(name) {
                return Err(StorageError::UnknownView(format!(
                    "view {name} declared twice"
                )));
            }
        }
        let db = open_db(&config.path, &view_cfs)?;
        // RocksDB's lock is ours now: no other process writes blob files.
        blobs::sweep_temp_files(&config)?;
        let (committed, _) = watch::channel(0);
        let cache = std::num::NonZeroUsize::new(config.view_cache_entries)
            .map(|n| Mutex::new(RowCache::new(n)));
        let inner = Arc::new(Inner {
            db,
            config,
            views,
            view_cfs,
            committed,
            written: AtomicU64::new(0),
            cache_epoch: AtomicU64::new(0),
            cache,
            pins: Mutex::new(HashMap::new()),
            replica_only: Default::default(),
            compacted: parking_lot::RwLock::new(Compacted::default()),
            appends: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            synced_batches: AtomicU64::new(0),
            blob_bytes: AtomicU64::new(0),
            observers: Default::default(),
            retain_recent: Default::default(),
            recent: Default::default(),
        });
        let stored = blobs::stored_bytes(&inner)?;
        inner
            .blob_bytes
            .store(stored, std::sync::atomic::Ordering::Relaxed);
        inner.check_layout()?;
        inner.load_compacted()?;
        let last_seq = inner.verify_last_seq()?;
        inner
            .written
            .store(last_seq, std::sync::atomic::Ordering::Release);
        inner.committed.send_replace(last_seq);
        let mut writer = Writer {
            inner: inner.clone(),
            last_seq,
            heads: HashMap::new(),
            ref_counts: refs::BlobRefCounts::new(),
        };
        writer.recover_views()?;

        let (tx, rx) = mpsc::channel(inner.config.queue_max_appends.max(1));
        let handle = std::thread::Builder::new()
            .name("cairn-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StorageError::Corrupt(format!("cannot start writer thread: {e}")))?;
        info!(path = %inner.config.path.display(), last_seq, "store opened");
        Ok(Store {
            shared: Arc::new(Shared {
                inner,
                tx: Some(tx),
                writer: Mutex::new(Some(handle)),
            }),
        })
    }
}
