//! [`Inner`]: the database, the views and what readers share with the
//! writer; the records of past compactions ([`Compacted`]). A leaf module
//! every part of the store builds on.

use std::{
    collections::HashMap,
    sync::{atomic::AtomicU64, Arc},
};

use parking_lot::Mutex;
use rocksdb::{ColumnFamily, DB};
use tokio::sync::watch;

use super::config::StoreConfig;
use crate::{columns::Column, keys, Digest, StorageError, View};

/// What readers need to know about past compactions.
#[derive(Debug, Default)]
pub(super) struct Compacted {
    /// `meta` `compacted_through` (0: never compacted).
    pub(super) through: u64,
    /// Stream prefixes of compacted classes.
    pub(super) prefixes: Vec<String>,
}

/// When a cached row was read: the last seq written and the cache epoch,
/// both taken before the row was read (see [`Inner::written`] and
/// [`Inner::cache_epoch`]). A row is an answer only while both are
/// unchanged.
pub(super) type CacheTag = (u64, u64);

/// A cached row: (view, key) → (its tag, row).
type CachedRows = lru::LruCache<(String, Vec<u8>), (CacheTag, Option<Vec<u8>>)>;

pub(super) struct RowCache {
    pub(super) rows: CachedRows,
    /// Counters by view name (a fixed set: the store's views).
    pub(super) counters: std::collections::BTreeMap<String, CacheCounters>,
}

/// Counters of the view row cache for one view (see
/// [`super::Store::row_cache_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that went to RocksDB (absent, or older than the last commit).
    pub misses: u64,
    /// Rows pushed out by newer ones (the cache holds
    /// `store.view-cache-entries`).
    pub evictions: u64,
    /// Rows held now.
    pub entries: u64,
    /// Bytes of their keys and values held now.
    pub bytes: u64,
}

impl RowCache {
    pub(super) fn new(capacity: std::num::NonZeroUsize) -> Self {
        Self {
            rows: lru::LruCache::new(capacity),
            counters: Default::default(),
        }
    }

    fn counters(&mut self, view: &str) -> &mut CacheCounters {
        if !self.counters.contains_key(view) {
            self.counters
                .insert(view.to_owned(), CacheCounters::default());
        }
        self.counters.get_mut(view).expect("inserted above")
    }

    fn size(key: &(String, Vec<u8>), row: &Option<Vec<u8>>) -> u64 {
        (key.1.len() + row.as_ref().map_or(0, Vec::len)) as u64
    }

    /// The row of `key` if it was read at `tag` (counted as a hit, or a
    /// miss).
    pub(super) fn get(
        &mut self,
        key: &(String, Vec<u8>),
        tag: CacheTag,
    ) -> Option<Option<Vec<u8>>> {
        let found = match self.rows.get(key) {
            Some((at, row)) if *at == tag => Some(row.clone()),
            _ => None,
        };
        let counters = self.counters(&key.0);
        match found {
            Some(_) => counters.hits += 1,
            None => counters.misses += 1,
        }
        found
    }

    /// Keeps `row`, read at `tag`.
    pub(super) fn put(&mut self, key: (String, Vec<u8>), tag: CacheTag, row: Option<Vec<u8>>) {
        let size = Self::size(&key, &row);
        let view = key.0.clone();
        let pushed_out = self.rows.push(key.clone(), (tag, row));
        if let Some((old_key, (_, old_row))) = pushed_out {
            let old_size = Self::size(&old_key, &old_row);
            let replaced = old_key == key;
            let old = self.counters(&old_key.0);
            old.entries = old.entries.saturating_sub(1);
            old.bytes = old.bytes.saturating_sub(old_size);
            if !replaced {
                old.evictions += 1;
            }
        }
        let new = self.counters(&view);
        new.entries += 1;
        new.bytes += size;
    }
}

/// The database, the views and what readers share with the writer.
pub(super) struct Inner {
    pub(super) db: DB,
    pub(super) config: StoreConfig,
    pub(super) views: Vec<Arc<dyn View>>,
    /// `view_cfs[i]` is the column family of `views[i]`.
    pub(super) view_cfs: Vec<String>,
    pub(super) committed: watch::Sender<u64>,
    /// The last seq whose rows are in RocksDB: set as soon as its batch is
    /// written, before the observers run and before `committed` announces
    /// it. The row cache checks its rows against it, so that an observer's
    /// readers (a read after the key-value memory tier changed, say) never
    /// get a row cached before the write.
    pub(super) written: AtomicU64,
    /// Moved on by writes that change view rows without a new seq (a
    /// rebuild's, a compaction's): rows the cache holds from before one
    /// stop counting.
    pub(super) cache_epoch: AtomicU64,
    /// Read cache of view rows: (view, key) → (tag when read, row).
    pub(super) cache: Option<Mutex<RowCache>>,
    pub(super) pins: Mutex<HashMap<Digest, usize>>,
    /// Set on a cluster node: its log is fed by the cluster's replicated
    /// order only, and a direct append (which would assign seqs of its
    /// own and fork the log) is refused.
    pub(super) replica_only: std::sync::atomic::AtomicBool,
    /// Past compactions, for readers skipping the gaps they left.
    pub(super) compacted: parking_lot::RwLock<Compacted>,
    pub(super) appends: AtomicU64,
    pub(super) batches: AtomicU64,
    /// Write batches written with an fsync.
    pub(super) synced_batches: AtomicU64,
    /// Bytes of every stored blob (rows and files): counted at open, kept
    /// up to date by puts and collections.
    pub(super) blob_bytes: AtomicU64,
    /// Told of every commit (see [`crate::observe`]).
    pub(super) observers: parking_lot::RwLock<Vec<Arc<dyn crate::CommitObserver>>>,
    /// Whether the writer keeps its commits' log rows in `recent`.
    pub(super) retain_recent: std::sync::atomic::AtomicBool,
    /// The log rows committed last (see `super::recent`).
    pub(super) recent: Mutex<super::recent::RecentRows>,
}

impl Inner {
    /// The row cache's tag now (taken before a row is read).
    pub(super) fn cache_tag(&self) -> CacheTag {
        use std::sync::atomic::Ordering::Acquire;
        (self.written.load(Acquire), self.cache_epoch.load(Acquire))
    }

    /// Makes every row the cache holds stale (after view rows changed
    /// without a new seq).
    pub(super) fn bump_cache_epoch(&self) {
        self.cache_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub(super) fn cf(&self, column: Column) -> &ColumnFamily {
        self.db
            .cf_handle(column.name())
            .expect("fixed column families are created at open")
    }

    pub(super) fn view_cf(&self, view: &str) -> Result<&ColumnFamily, StorageError> {
        let index = self
            .views
            .iter()
            .position(|v| v.name() == view)
            .ok_or_else(|| StorageError::UnknownView(view.to_owned()))?;
        Ok(self.view_cf_at(index))
    }

    pub(super) fn view_cf_at(&self, index: usize) -> &ColumnFamily {
        self.db
            .cf_handle(&self.view_cfs[index])
            .expect("view column families are created at open")
    }

    pub(super) fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>, StorageError> {
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
