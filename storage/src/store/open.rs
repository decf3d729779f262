//! Opening the database: configuration, column families, layout checks.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};

use super::Inner;
use crate::{
    columns::Column,
    keys::{self, meta},
    StorageError,
};
/// Memory for memtables across all column families, in bytes (32 MiB).
pub const MEMTABLES_MAX_BYTES: usize = 32 << 20;

/// The block cache all column families share, in bytes (16 MiB).
pub const BLOCK_CACHE_BYTES: usize = 16 << 20;

/// Version of the on-disk layout (column families and key formats).
pub const LAYOUT_VERSION: u32 = 1;

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

pub(super) fn open_db(path: &Path, view_cfs: &[String]) -> Result<DB, StorageError> {
    // Every column family gets the same options, sharing one block cache:
    // resident memory must not grow with the number of families or of
    // revisions (RocksDB's defaults give each family a 64 MiB memtable and
    // a 32 MiB block cache of its own).
    let mut family = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES));
    family.set_block_based_table_factory(&table);
    family.set_write_buffer_size(MEMTABLES_MAX_BYTES / 4);

    let mut options = family.clone();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    // Keep fds bounded and let RocksDB use both cores for background work.
    options.set_max_open_files(512);
    options.increase_parallelism(2);
    // Bound memtable memory across all column families.
    options.set_db_write_buffer_size(MEMTABLES_MAX_BYTES);
    let mut names: Vec<String> = Column::ALL.iter().map(|c| c.name().to_owned()).collect();
    names.extend(view_cfs.iter().cloned());
    // Open families this build does not know (a view from another version)
    // too: RocksDB refuses to open a database without all of them.
    if let Ok(existing) = DB::list_cf(&options, path) {
        for name in existing {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let families = names
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, family.clone()));
    Ok(DB::open_cf_descriptors(&options, path, families)?)
}

impl Inner {
    pub(super) fn check_layout(&self) -> Result<(), StorageError> {
        let meta_cf = self.cf(Column::Meta);
        match self.db.get_cf(meta_cf, meta::LAYOUT_VERSION)? {
            None => {
                let mut opts = WriteOptions::default();
                opts.set_sync(true);
                let mut batch = WriteBatch::default();
                batch.put_cf(meta_cf, meta::LAYOUT_VERSION, LAYOUT_VERSION.to_be_bytes());
                self.db.write_opt(batch, &opts)?;
                Ok(())
            }
            Some(v) => {
                let found = v
                    .as_slice()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| StorageError::Corrupt("layout version is not a u32".into()))?;
                if found > LAYOUT_VERSION {
                    return Err(StorageError::UnsupportedLayout {
                        found,
                        supported: LAYOUT_VERSION,
                    });
                }
                Ok(())
            }
        }
    }

    /// The recorded last sequence must be the log's last key.
    pub(super) fn verify_last_seq(&self) -> Result<u64, StorageError> {
        let recorded = self.meta_u64(meta::LAST_SEQ)?.unwrap_or(0);
        let last_key = match self
            .db
            .iterator_cf(self.cf(Column::Log), IteratorMode::End)
            .next()
        {
            None => 0,
            Some(item) => {
                let (key, _) = item?;
                keys::decode_u64(&key)
                    .ok_or_else(|| StorageError::Corrupt("log key is not a u64".into()))?
            }
        };
        if recorded != last_key {
            return Err(StorageError::Corrupt(format!(
                "meta says the last seq is {recorded}, the log ends at {last_key}"
            )));
        }
        Ok(recorded)
    }
}
