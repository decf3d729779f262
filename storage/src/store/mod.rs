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
//! - this module — [`Store`] itself: the shared state (`Inner`), opening
//!   order (database, temporary blob sweep, layout and last-seq checks,
//!   compaction records, view catch-up, writer start), handles and stats.
//! - `open` — [`StoreConfig`], the RocksDB options and column families,
//!   the layout-version and last-seq checks done at open.
//! - `read` — view reads and scans (the row cache), [`StoreSnapshot`],
//!   log reads (`read_all`, `read_stream`, skipping compacted gaps), the
//!   [`crate::ViewRead`] and [`crate::ReplicatedLog`] impls, `state_dump`.
//! - `writer` — the writer thread: the command queue, group commit, the
//!   [`crate::AsyncAppend`] impl, replicated commits, view catch-up at open and rebuild.
//! - `blobs` — [`crate::BlobStore`]: blob rows and files, streaming puts
//!   and reads, pins, garbage collection, the temporary-file sweep.
//! - `compact` — [`Store::compact`] on the writer thread, and the records
//!   readers use to accept the gaps it leaves.

mod blobs;
mod command;
mod compact;
mod open;
mod read;
mod scan;
mod writer;

pub use crate::read::Rows;
pub use blobs::STREAM_CHUNK_BYTES;
pub use command::{RebuildProgress, RebuildStats};
pub use open::{StoreConfig, BLOCK_CACHE_BYTES, LAYOUT_VERSION, MEMTABLES_MAX_BYTES};
pub use read::{StoreSnapshot, ViewDump};
pub use writer::METADATA_MAX_BYTES;

use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use parking_lot::Mutex;
use rocksdb::{ColumnFamily, DB};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    columns::{view_column, Column},
    keys, Digest, StorageError, View,
};

use self::{command::Command, open::open_db, writer::Writer};

/// Counters of the writer, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Appends committed.
    pub appends: u64,
    /// Write batches (each one fsync) that committed them.
    pub batches: u64,
}

/// Memory RocksDB holds, in bytes (see [`Store::memory_usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Active and immutable memtables of every column family.
    pub memtables: u64,
    /// Index and filter blocks of open SST files outside the block cache.
    pub table_readers: u64,
    /// The shared block cache.
    pub block_cache: u64,
}
/// Read cache of view rows: (view, key) → (committed seq when read, row).
type RowCache = lru::LruCache<(String, Vec<u8>), (u64, Option<Vec<u8>>)>;

/// The database, the views and what readers share with the writer.
struct Inner {
    db: DB,
    config: StoreConfig,
    views: Vec<Arc<dyn View>>,
    /// `view_cfs[i]` is the column family of `views[i]`.
    view_cfs: Vec<String>,
    committed: watch::Sender<u64>,
    /// Read cache of view rows: (view, key) → (committed seq when read, row).
    cache: Option<Mutex<RowCache>>,
    pins: Mutex<HashMap<Digest, usize>>,
    /// Past compactions, for readers skipping the gaps they left.
    compacted: parking_lot::RwLock<compact::Compacted>,
    appends: AtomicU64,
    batches: AtomicU64,
}

/// Owned by the `Store` handles; stops the writer when the last one drops.
struct Shared {
    inner: Arc<Inner>,
    tx: Option<mpsc::Sender<Command>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued, then exit.
        self.tx.take();
        if let Some(handle) = self.writer.lock().take() {
            if handle.join().is_err() {
                warn!("store writer thread panicked");
            }
        }
    }
}

/// The RocksDB-backed event log, blob store and views. Cheap to clone; the
/// database closes when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner().config.path)
            .field("views", &self.inner().view_cfs)
            .finish()
    }
}

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
            .map(|n| Mutex::new(lru::LruCache::new(n)));
        let inner = Arc::new(Inner {
            db,
            config,
            views,
            view_cfs,
            committed,
            cache,
            pins: Mutex::new(HashMap::new()),
            compacted: parking_lot::RwLock::new(compact::Compacted::default()),
            appends: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        });
        inner.check_layout()?;
        inner.load_compacted()?;
        let last_seq = inner.verify_last_seq()?;
        inner.committed.send_replace(last_seq);
        let mut writer = Writer {
            inner: inner.clone(),
            last_seq,
            heads: HashMap::new(),
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

    fn inner(&self) -> &Inner {
        &self.shared.inner
    }

    fn sender(&self) -> Result<&mpsc::Sender<Command>, StorageError> {
        self.shared.tx.as_ref().ok_or(StorageError::Closed)
    }

    /// How many `Store` handles are alive (the database closes when the
    /// last one is dropped).
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.shared)
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner().config
    }

    /// Names of the views, in fold order.
    pub fn view_names(&self) -> Vec<&'static str> {
        self.inner().views.iter().map(|v| v.name()).collect()
    }

    /// Follows the last committed sequence number: changes after every
    /// group commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner().committed.subscribe()
    }

    /// Counters of the writer.
    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            appends: self.inner().appends.load(Ordering::Relaxed),
            batches: self.inner().batches.load(Ordering::Relaxed),
        }
    }

    /// RocksDB's own estimate of the memory it holds, summed over all
    /// column families.
    pub fn memory_usage(&self) -> MemoryUsage {
        let inner = self.inner();
        let names = Column::ALL
            .iter()
            .map(|c| c.name().to_owned())
            .chain(inner.view_cfs.iter().cloned());
        let mut usage = MemoryUsage::default();
        for name in names {
            let Some(cf) = inner.db.cf_handle(&name) else {
                continue;
            };
            let property = |p: &str| {
                inner
                    .db
                    .property_int_value_cf(cf, p)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            usage.memtables += property("rocksdb.cur-size-all-mem-tables");
            usage.table_readers += property("rocksdb.estimate-table-readers-mem");
            usage.block_cache = usage.block_cache.max(property("rocksdb.block-cache-usage"));
        }
        usage
    }
}

impl Inner {
    fn cf(&self, column: Column) -> &ColumnFamily {
        self.db
            .cf_handle(column.name())
            .expect("fixed column families are created at open")
    }

    fn view_cf(&self, view: &str) -> Result<&ColumnFamily, StorageError> {
        let index = self
            .views
            .iter()
            .position(|v| v.name() == view)
            .ok_or_else(|| StorageError::UnknownView(view.to_owned()))?;
        Ok(self.view_cf_at(index))
    }

    fn view_cf_at(&self, index: usize) -> &ColumnFamily {
        self.db
            .cf_handle(&self.view_cfs[index])
            .expect("view column families are created at open")
    }

    fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>, StorageError> {
        match self.db.get_cf(self.cf(Column::Meta), key)? {
            None => Ok(None),
            Some(v) => keys::decode_u64(&v).map(Some).ok_or_else(|| {
                StorageError::Corrupt(format!(
                    "meta {} is not a u64",
                    String::from_utf8_lossy(key)
                ))
            }),
        }
    }
}
