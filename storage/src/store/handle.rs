//! [`Store`], the handle: what its clones share (`Shared`: the state, the
//! writer's queue and thread), and its plain accessors and statistics.
//! [`Store::open`](super::Store::open) is in the parent module, the
//! reading and writing methods in `read`, `writer`, `blobs`, `compact`.

use std::{
    fmt,
    sync::{atomic::Ordering, Arc},
    thread::JoinHandle,
};

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::{command::Command, config::StoreConfig, inner::Inner};
use crate::{columns::Column, StorageError};

/// Counters of the writer, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Appends committed.
    pub appends: u64,
    /// Write batches that committed them.
    pub batches: u64,
    /// Of those, the batches written with an fsync (all of them, but for
    /// groups of [`crate::Durability::Buffered`] appends only, or with
    /// `store.sync` off).
    pub synced_batches: u64,
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

/// Owned by the `Store` handles; stops the writer when the last one drops.
pub(super) struct Shared {
    pub(super) inner: Arc<Inner>,
    pub(super) tx: Option<mpsc::Sender<Command>>,
    pub(super) writer: Mutex<Option<JoinHandle<()>>>,
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
    pub(super) shared: Arc<Shared>,
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
    pub(super) fn inner(&self) -> &Inner {
        &self.shared.inner
    }

    pub(super) fn sender(&self) -> Result<&mpsc::Sender<Command>, StorageError> {
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

    /// Commands waiting for the writer thread now (appends, pipelined
    /// calls, rebuilds…; at most `store.queue-max-appends`): 0 once it
    /// took everything queued.
    pub fn writer_queue_len(&self) -> usize {
        self.sender()
            .map_or(0, |tx| tx.max_capacity().saturating_sub(tx.capacity()))
    }

    /// Counters of the writer.
    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            appends: self.inner().appends.load(Ordering::Relaxed),
            batches: self.inner().batches.load(Ordering::Relaxed),
            synced_batches: self.inner().synced_batches.load(Ordering::Relaxed),
        }
    }

    /// Counters of the view row cache, by view name (views never read
    /// are absent; empty when `store.view-cache-entries` is 0).
    pub fn row_cache_stats(&self) -> Vec<(String, super::inner::CacheCounters)> {
        match &self.inner().cache {
            Some(cache) => cache
                .lock()
                .counters
                .iter()
                .map(|(view, c)| (view.clone(), *c))
                .collect(),
            None => Vec::new(),
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
