//! Opening the database: the RocksDB options and column families, the
//! layout-version and last-seq checks.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};

use super::inner::Inner;
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
