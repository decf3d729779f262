//! Prefix scans over a column family or a snapshot's iterator: the helpers
//! reads, the writer and compaction share. A leaf module.

use std::ops::ControlFlow;

use rocksdb::{ColumnFamily, DB};

use crate::{read::Rows, StorageError};

/// Where a scan of `prefix` that continues after key `after` starts.
pub(super) fn after_key(prefix: &[u8], after: Option<&[u8]>) -> Vec<u8> {
    match after {
        Some(key) if key > prefix => {
            let mut next = key.to_vec();
            next.push(0); // the smallest key after `key`
            next
        }
        _ => prefix.to_vec(),
    }
}

pub(super) fn scan_prefix(
    db: &DB,
    cf: &ColumnFamily,
    prefix: &[u8],
    limit: usize,
) -> Result<Rows, StorageError> {
    scan(db, cf, prefix, prefix, limit)
}

/// Up to `limit` rows from key `start` on, while keys start with `prefix`.
pub(super) fn scan(
    db: &DB,
    cf: &ColumnFamily,
    start: &[u8],
    prefix: &[u8],
    limit: usize,
) -> Result<Rows, StorageError> {
    let mut out = Vec::new();
    scan_each(db, cf, start, prefix, |key, value| {
        if out.len() >= limit {
            return Ok::<_, StorageError>(ControlFlow::Break(()));
        }
        out.push((key.to_vec(), value.to_vec()));
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// Calls `f` with each row from key `start` on, in key order, while keys
/// start with `prefix` and `f` says continue. The rows are borrowed from
/// RocksDB's iterator (no copy, no allocation per row).
pub(super) fn scan_each<E: From<StorageError>>(
    db: &DB,
    cf: &ColumnFamily,
    start: &[u8],
    prefix: &[u8],
    f: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, E>,
) -> Result<(), E> {
    scan_iter(db.raw_iterator_cf(cf), start, prefix, f)
}

/// [`scan_each`] over any raw iterator (of the database or of a snapshot).
pub(super) fn scan_iter<E: From<StorageError>>(
    mut iter: rocksdb::DBRawIterator<'_>,
    start: &[u8],
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, E>,
) -> Result<(), E> {
    iter.seek(start);
    while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
        if !key.starts_with(prefix) || f(key, value)?.is_break() {
            return Ok(());
        }
        iter.next();
    }
    iter.status().map_err(StorageError::from)?;
    Ok(())
}
