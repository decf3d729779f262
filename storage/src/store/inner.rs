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

/// Read cache of view rows: (view, key) → (committed seq when read, row).
pub(super) type RowCache = lru::LruCache<(String, Vec<u8>), (u64, Option<Vec<u8>>)>;

/// The database, the views and what readers share with the writer.
pub(super) struct Inner {
    pub(super) db: DB,
    pub(super) config: StoreConfig,
    pub(super) views: Vec<Arc<dyn View>>,
    /// `view_cfs[i]` is the column family of `views[i]`.
    pub(super) view_cfs: Vec<String>,
    pub(super) committed: watch::Sender<u64>,
    /// Read cache of view rows: (view, key) → (committed seq when read, row).
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
}

impl Inner {
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
