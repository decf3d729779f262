//! Reads: view rows, scans, snapshots and the log, straight from RocksDB on
//! the caller's thread.

use std::{fmt, ops::ControlFlow};

use bytes::Bytes;
use cairn_events::{
    envelope::{self, Metadata},
    v1::{Envelope, Event},
    StreamId,
};
use rocksdb::{Direction, IteratorMode};

use super::command::Command;
use super::scan::{after_key, scan, scan_each, scan_iter, scan_prefix};
use super::{inner::Inner, Store};
pub use crate::read::ViewDump;
use crate::{
    columns::Column,
    keys::{self, meta},
    log::{Appended, EventLog, ExpectedVersion, LogEvent, LogRow},
    view::{RowSource, BLOB_REFS_CF},
    StorageError,
};
use crate::{
    log::{ReplicatedLog, StateDump},
    read::{RowVisitor, Rows, ViewRead},
};

impl Store {
    /// The row at `key` of view `view`.
    ///
    /// Served from a bounded in-memory cache when nothing was written
    /// since the entry was read (entries are tagged with the last written
    /// sequence and the cache epoch, read *before* the row, so a cached row
    /// is never older than the views — not even while a commit's observers
    /// run, before the commit is announced, nor after a rebuild or a
    /// compaction changed rows).
    pub fn view_get(&self, view: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let row = self.view_get_cached(view, key, |db, cf, key| Ok(Some(db.get_cf(cf, key)?)))?;
        Ok(row.flatten())
    }

    /// The row at `key` of view `view` from the row cache, else as `read`
    /// finds it (`None`: it could not tell), kept in the cache when found.
    fn view_get_cached(
        &self,
        view: &str,
        key: &[u8],
        read: impl FnOnce(
            &rocksdb::DB,
            &rocksdb::ColumnFamily,
            &[u8],
        ) -> Result<Option<Option<Vec<u8>>>, StorageError>,
    ) -> Result<Option<Option<Vec<u8>>>, StorageError> {
        let inner = self.inner();
        let cf = inner.view_cf(view)?;
        let tag = inner.cache_tag();
        let cache_key = (view.to_owned(), key.to_vec());
        if let Some(cache) = &inner.cache {
            if let Some(row) = cache.lock().get(&cache_key, tag) {
                return Ok(Some(row));
            }
        }
        let Some(row) = read(&inner.db, cf, key)? else {
            return Ok(None);
        };
        if let Some(cache) = &inner.cache {
            cache.lock().put(cache_key, tag, row.clone());
        }
        Ok(Some(row))
    }

    /// [`Store::view_get`] answered from memory only — the row cache,
    /// RocksDB's memtables and block cache — never waiting for the disk:
    /// `Ok(None)` when the answer needs a read from a file (the caller then
    /// asks [`Store::view_get`] off its async thread). For a hot path on an
    /// async thread: a few microseconds, no I/O.
    pub fn view_get_in_memory(
        &self,
        view: &str,
        key: &[u8],
    ) -> Result<Option<Option<Vec<u8>>>, StorageError> {
        self.view_get_cached(view, key, get_in_memory)
    }

    /// Up to `limit` rows of view `view` whose key starts with `prefix`, in
    /// key order, starting after key `after` (exclusive): the next page after
    /// a page that ended at `after`. (Decoding, snapshot and fallible-callback
    /// forms of the view reads are [`crate::ViewReadExt`]'s, for every
    /// [`crate::ViewRead`].)
    pub fn view_scan_after(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StorageError> {
        let inner = self.inner();
        let cf = inner.view_cf(view)?;
        scan(&inner.db, cf, &after_key(prefix, after), prefix, limit)
    }

    /// Calls `f` with each row of view `view` whose key starts with
    /// `prefix`, in key order, starting after key `after` (exclusive), while
    /// `f` says continue. Rows are borrowed from RocksDB (no copies): the way
    /// to serve long listings without decoding or allocating per row.
    pub fn view_scan_each<E: From<StorageError>>(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, E>,
    ) -> Result<(), E> {
        let inner = self.inner();
        let cf = inner.view_cf(view)?;
        let start = after_key(prefix, after);
        scan_each(&inner.db, cf, &start, prefix, f)
    }

    /// A consistent, read-only view of the whole database as it is now:
    /// every read through it sees the same commits, whatever the writer
    /// commits meanwhile. See [`StoreSnapshot`].
    pub fn snapshot(&self) -> StoreSnapshot<'_> {
        let inner = self.inner();
        StoreSnapshot {
            inner,
            snapshot: inner.db.snapshot(),
        }
    }

    /// Everything view `view` holds (rows, blob references, checkpoint).
    pub fn view_dump(&self, view: &str) -> Result<ViewDump, StorageError> {
        let inner = self.inner();
        let cf = inner.view_cf(view)?;
        Ok(ViewDump {
            rows: scan_prefix(&inner.db, cf, b"", usize::MAX)?,
            blob_refs: scan_prefix(
                &inner.db,
                inner.cf(Column::BlobRefs),
                &keys::blob_ref_prefix(view),
                usize::MAX,
            )?,
            checkpoint: inner.meta_u64(&meta::checkpoint(view))?.unwrap_or(0),
        })
    }

    /// A `u64` from the `meta` family.
    pub fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>, StorageError> {
        self.inner().meta_u64(key)
    }

    /// Sets a `u64` in the `meta` family (not synced: made durable by the
    /// next synced write, or by RocksDB's own WAL flush). For cursors whose
    /// loss on a crash only causes harmless repetition, like the publish
    /// cursor.
    pub fn set_meta_u64(&self, key: &[u8], value: u64) -> Result<(), StorageError> {
        let inner = self.inner();
        Ok(inner
            .db
            .put_cf(inner.cf(Column::Meta), key, value.to_be_bytes())?)
    }

    /// Up to `limit` events of `stream` with `seq` ≥ `from_seq`, in order.
    /// Finds the first version by binary search over the stream index
    /// (sequence numbers grow with versions), so it costs O(log n) lookups
    /// plus the events read.
    pub fn read_stream_from_seq(
        &self,
        stream: &StreamId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StorageError> {
        let inner = self.inner();
        let streams = inner.cf(Column::Streams);
        if inner.is_compacted(stream) {
            // Versions have gaps: walk the index (seqs grow with versions).
            let mut first = None;
            let prefix = keys::stream_prefix(stream);
            scan_each(&inner.db, streams, &prefix, &prefix, |key, value| {
                let seq = keys::decode_u64(value)
                    .ok_or_else(|| StorageError::Corrupt(format!("stream {stream}: bad seq")))?;
                if seq >= from_seq {
                    // The scan yields only keys starting with `prefix`; what
                    // follows must be exactly the 8-byte version.
                    let version = key
                        .strip_prefix(prefix.as_slice())
                        .and_then(keys::decode_u64)
                        .ok_or_else(|| {
                            StorageError::Corrupt(format!(
                                "stream {stream}: index key of {} bytes has no version",
                                key.len()
                            ))
                        })?;
                    first = Some(version);
                    return Ok::<_, StorageError>(ControlFlow::Break(()));
                }
                Ok(ControlFlow::Continue(()))
            })?;
            return match first {
                Some(version) => self.read_stream(stream, version, limit),
                None => Ok(Vec::new()),
            };
        }
        let seq_at = |version: u64| -> Result<u64, StorageError> {
            let row = inner
                .db
                .get_cf(streams, keys::stream_key(stream, version))?
                .ok_or_else(|| {
                    StorageError::Corrupt(format!("stream {stream}: version {version} missing"))
                })?;
            keys::decode_u64(&row)
                .ok_or_else(|| StorageError::Corrupt(format!("stream {stream}: bad seq")))
        };
        // First version whose seq is >= from_seq, in 1..=head+1.
        let (mut lo, mut hi) = (1u64, inner.stream_version(stream)? + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if seq_at(mid)? < from_seq {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        self.read_stream(stream, lo, limit)
    }

    /// [`EventLog::read_all`] with each event's stored row: up to `limit`
    /// events from `from_seq` on, each as its decoded envelope and the
    /// row's bytes — the envelope's encoding as written, copied once out
    /// of RocksDB. Skips compacted gaps and reports any other gap as
    /// [`EventLog::read_all`] does (one walk of the log serves both).
    /// Blocking.
    pub fn read_log_events(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEvent>, StorageError> {
        self.inner().read_log_events(from_seq, limit)
    }

    /// Keeps the log rows of every commit from now on in a bounded
    /// in-memory buffer (see `store::recent`), for
    /// [`Store::recent_log_rows`]. Off until called; stays on.
    pub fn retain_recent_log_rows(&self) {
        self.inner()
            .retain_recent
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Up to `limit` log rows from `from_seq` on, from memory (the rows the
    /// writer committed last, once [`Store::retain_recent_log_rows`] was
    /// called), without touching RocksDB: `None` when the buffer does not
    /// hold `from_seq` (it was never kept, pushed out, or emptied by a
    /// compaction or a restart); then read [`Store::read_log_events`].
    /// Consecutive seqs, each row exactly what RocksDB holds for it; what
    /// was committed after the buffer's last row is not included. Cheap
    /// (no I/O, no decoding): fine on an async thread.
    pub fn recent_log_rows(&self, from_seq: u64, limit: usize) -> Option<Vec<LogRow>> {
        self.inner().recent.lock().read(from_seq, limit)
    }

    /// Counters of the recent-rows buffer.
    pub fn recent_log_stats(&self) -> super::RecentLogStats {
        self.inner().recent.lock().stats()
    }

    /// Every column family's rows, by name (see
    /// [`ReplicatedLog::state_dump`]).
    pub fn state_dump(&self) -> Result<StateDump, StorageError> {
        let inner = self.inner();
        let mut names: Vec<String> = Column::ALL.iter().map(|c| c.name().to_owned()).collect();
        names.extend(inner.view_cfs.iter().cloned());
        names
            .into_iter()
            .map(|name| {
                let cf = inner
                    .db
                    .cf_handle(&name)
                    .ok_or_else(|| StorageError::UnknownView(name.clone()))?;
                let rows = scan_prefix(&inner.db, cf, b"", usize::MAX)?;
                Ok((name, rows))
            })
            .collect()
    }

    /// Blocks until the WAL is on disk.
    pub fn sync_wal(&self) -> Result<(), StorageError> {
        Ok(self.inner().db.flush_wal(true)?)
    }
}

/// A point-in-time read view of a [`Store`] (a RocksDB snapshot): the log
/// position and the view rows read through it all reflect the same
/// commits. Cheap to take; holds back compaction of what it can see while
/// it lives, so keep it for one scan, not longer.
pub struct StoreSnapshot<'a> {
    inner: &'a Inner,
    snapshot: rocksdb::Snapshot<'a>,
}

impl fmt::Debug for StoreSnapshot<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSnapshot").finish_non_exhaustive()
    }
}

impl StoreSnapshot<'_> {
    /// The last committed sequence number as of the snapshot (0 when the
    /// log was empty). Every view row read through this snapshot reflects
    /// exactly the events up to it.
    pub fn last_seq(&self) -> Result<u64, StorageError> {
        match self
            .snapshot
            .get_cf(self.inner.cf(Column::Meta), meta::LAST_SEQ)?
        {
            None => Ok(0),
            Some(v) => keys::decode_u64(&v)
                .ok_or_else(|| StorageError::Corrupt("meta last_seq is not a u64".into())),
        }
    }

    /// [`Store::view_scan_each`], reading the snapshot.
    pub fn view_scan_each<E: From<StorageError>>(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, E>,
    ) -> Result<(), E> {
        let cf = self.inner.view_cf(view)?;
        let start = after_key(prefix, after);
        scan_iter(self.snapshot.raw_iterator_cf(cf), &start, prefix, f)
    }
}

impl EventLog for Store {
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
        metadata: Metadata,
    ) -> Result<Appended, StorageError> {
        let request = self.request(stream, expected, events, metadata)?;
        self.call(|reply| Command::Append(request, reply))
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StorageError> {
        let inner = self.inner();
        let prefix = keys::stream_prefix(stream);
        let start = keys::stream_key(stream, from_version.max(1));
        let mut seqs = Vec::new();
        let iter = inner.db.iterator_cf(
            inner.cf(Column::Streams),
            IteratorMode::From(&start, Direction::Forward),
        );
        // A compacted stream has version gaps: versions only increase.
        let gaps_ok = inner.is_compacted(stream);
        let mut expected_version = from_version.max(1);
        for item in iter {
            if seqs.len() >= limit {
                break;
            }
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let version = keys::decode_u64(&key[prefix.len()..]);
            match version {
                Some(v) if v == expected_version || (gaps_ok && v > expected_version) => {
                    expected_version = v + 1;
                }
                _ => {
                    return Err(StorageError::Corrupt(format!(
                    "stream {stream}: expected version {expected_version}, index has {version:?}"
                )))
                }
            }
            seqs.push(
                keys::decode_u64(&value)
                    .ok_or_else(|| StorageError::Corrupt(format!("stream {stream}: bad seq")))?,
            );
        }
        let log = inner.cf(Column::Log);
        let keys: Vec<[u8; 8]> = seqs.iter().map(|s| keys::seq_key(*s)).collect();
        let rows = inner.db.batched_multi_get_cf(log, keys.iter(), true);
        seqs.iter()
            .zip(rows)
            .map(|(seq, row)| {
                let row = row?.ok_or_else(|| {
                    StorageError::Corrupt(format!("stream {stream}: seq {seq} missing from log"))
                })?;
                envelope::decode(&row).map_err(|source| StorageError::Event { seq: *seq, source })
            })
            .collect()
    }

    fn read_all(&self, from_seq: u64, limit: usize) -> Result<Vec<Envelope>, StorageError> {
        self.inner().read_all(from_seq, limit)
    }

    fn last_seq(&self) -> Result<u64, StorageError> {
        Ok(*self.inner().committed.borrow())
    }

    fn read_stream_from_seq(
        &self,
        stream: &StreamId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StorageError> {
        Store::read_stream_from_seq(self, stream, from_seq, limit)
    }

    fn stream_version(&self, stream: &StreamId) -> Result<u64, StorageError> {
        self.inner().stream_version(stream)
    }
}

impl Inner {
    pub(super) fn stream_version(&self, stream: &StreamId) -> Result<u64, StorageError> {
        let prefix = keys::stream_prefix(stream);
        let last = keys::stream_key(stream, u64::MAX);
        let mut iter = self.db.iterator_cf(
            self.cf(Column::Streams),
            IteratorMode::From(&last, Direction::Reverse),
        );
        match iter.next() {
            None => Ok(0),
            Some(item) => {
                let (key, _) = item?;
                if !key.starts_with(&prefix) {
                    return Ok(0);
                }
                keys::decode_u64(&key[prefix.len()..])
                    .ok_or_else(|| StorageError::Corrupt(format!("stream {stream}: bad index key")))
            }
        }
    }

    pub(super) fn read_all(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StorageError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        self.scan_log(from_seq, limit, |seq, row| {
            out.push(envelope::decode(row).map_err(|source| StorageError::Event { seq, source })?);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`Inner::read_all`] with each event's row: the envelope and the
    /// bytes it was decoded from (copied once, out of RocksDB).
    pub(super) fn read_log_events(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEvent>, StorageError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        self.scan_log(from_seq, limit, |seq, row| {
            let row = LogRow {
                seq,
                bytes: Bytes::copy_from_slice(row),
            };
            out.push(LogEvent {
                envelope: row.decode()?,
                bytes: row.bytes,
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `each` with up to `limit` log rows from seq `from_seq` on, in
    /// order, borrowed from RocksDB's iterator: the one walk of the log
    /// every log read shares, with its gap check (seqs a compaction
    /// removed, all at most `compacted_through`, are skipped; any other gap
    /// is corruption).
    fn scan_log(
        &self,
        from_seq: u64,
        limit: usize,
        mut each: impl FnMut(u64, &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let from = from_seq.max(1);
        let compacted_through = self.compacted_through();
        let mut expected = from;
        let mut read = 0;
        let mut iter = self.db.raw_iterator_cf(self.cf(Column::Log));
        iter.seek(keys::seq_key(from));
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if read >= limit {
                return Ok(());
            }
            let seq = keys::decode_u64(key);
            let gap_ok = |found: u64| found > expected && found - 1 <= compacted_through;
            match seq {
                Some(found) if found == expected || gap_ok(found) => expected = found + 1,
                _ => {
                    return Err(StorageError::Corrupt(format!(
                        "log gap: expected seq {expected}, found {seq:?}"
                    )))
                }
            }
            each(expected - 1, value)?;
            read += 1;
            iter.next();
        }
        Ok(iter.status()?)
    }
}

impl Inner {
    /// The column family a [`RowSource`] index names: [`BLOB_REFS_CF`], or
    /// view `cf - 1`'s.
    fn row_family(&self, cf: usize) -> &rocksdb::ColumnFamily {
        if cf == BLOB_REFS_CF {
            self.cf(Column::BlobRefs)
        } else {
            self.view_cf_at(cf - 1)
        }
    }
}

impl RowSource for Inner {
    fn read(&self, cf: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let family = self.row_family(cf);
        Ok(self.db.get_cf(family, key)?)
    }

    fn last_key(&self, cf: usize, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let family = self.row_family(cf);
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_lower_bound(from.to_vec());
        options.set_iterate_upper_bound(to.to_vec());
        let mut iter = self.db.raw_iterator_cf_opt(family, options);
        iter.seek_to_last();
        let last = iter
            .valid()
            .then(|| iter.key().map(<[u8]>::to_vec))
            .flatten();
        iter.status()?;
        Ok(last)
    }

    fn for_each_key(
        &self,
        cf: usize,
        from: &[u8],
        to: &[u8],
        f: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        let family = self.row_family(cf);
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_upper_bound(to.to_vec());
        let mut iter = self.db.raw_iterator_cf_opt(family, options);
        iter.seek(from);
        while iter.valid() {
            let Some(key) = iter.key() else { break };
            if f(key).is_break() {
                return Ok(());
            }
            iter.next();
        }
        Ok(iter.status()?)
    }
}

impl ViewRead for Store {
    fn view_get(&self, view: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Store::view_get(self, view, key)
    }

    fn view_scan_after(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StorageError> {
        Store::view_scan_after(self, view, prefix, after, limit)
    }

    fn view_for_each(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut RowVisitor<'_>,
    ) -> Result<(), StorageError> {
        Store::view_scan_each(self, view, prefix, after, |key, value| {
            Ok::<_, StorageError>(f(key, value))
        })
    }

    fn read_seq(&self) -> Result<u64, StorageError> {
        Ok(*self.inner().committed.borrow())
    }

    fn read_snapshot(&self) -> Box<dyn ViewRead + '_> {
        Box::new(self.snapshot())
    }
}

/// The views as the writer thread just left them, for commit observers
/// ([`crate::observe`]): each read takes a snapshot of its own (only the
/// writer writes, and it waits for the observers), so a commit that reads
/// nothing costs nothing.
pub(super) struct CommittedViews<'a> {
    pub(super) inner: &'a Inner,
}

impl CommittedViews<'_> {
    fn snapshot(&self) -> StoreSnapshot<'_> {
        StoreSnapshot {
            inner: self.inner,
            snapshot: self.inner.db.snapshot(),
        }
    }
}

impl ViewRead for CommittedViews<'_> {
    fn view_get(&self, view: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.snapshot().view_get(view, key)
    }

    fn view_scan_after(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StorageError> {
        ViewRead::view_scan_after(&self.snapshot(), view, prefix, after, limit)
    }

    fn view_for_each(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut RowVisitor<'_>,
    ) -> Result<(), StorageError> {
        self.snapshot().view_for_each(view, prefix, after, f)
    }

    fn read_seq(&self) -> Result<u64, StorageError> {
        self.snapshot().read_seq()
    }

    fn read_snapshot(&self) -> Box<dyn ViewRead + '_> {
        Box::new(self.snapshot())
    }
}

impl StoreSnapshot<'_> {
    /// [`Store::view_get`], reading the snapshot (no cache).
    pub fn view_get(&self, view: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let cf = self.inner.view_cf(view)?;
        Ok(self.snapshot.get_cf(cf, key)?)
    }
}

impl ViewRead for StoreSnapshot<'_> {
    fn view_get(&self, view: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        StoreSnapshot::view_get(self, view, key)
    }

    fn view_scan_after(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StorageError> {
        let mut out = Vec::new();
        StoreSnapshot::view_scan_each(self, view, prefix, after, |key, value| {
            if out.len() >= limit {
                return Ok::<_, StorageError>(ControlFlow::Break(()));
            }
            out.push((key.to_vec(), value.to_vec()));
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    fn view_for_each(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut RowVisitor<'_>,
    ) -> Result<(), StorageError> {
        StoreSnapshot::view_scan_each(self, view, prefix, after, |key, value| {
            Ok::<_, StorageError>(f(key, value))
        })
    }

    fn read_seq(&self) -> Result<u64, StorageError> {
        self.last_seq()
    }

    fn read_snapshot(&self) -> Box<dyn ViewRead + '_> {
        Box::new(self)
    }
}

impl ReplicatedLog for Store {
    fn apply_replicated(
        &self,
        commit: Vec<Envelope>,
    ) -> Result<crate::log::Replicated, StorageError> {
        self.call(|reply| Command::Replicate(commit, reply))
    }

    fn commit_max_events(&self) -> usize {
        self.inner().config.replicated_commit_max_events()
    }

    fn event_max_bytes(&self) -> usize {
        self.inner().config.event_max_bytes
    }

    fn state_dump(&self) -> Result<StateDump, StorageError> {
        Store::state_dump(self)
    }
}

/// The value at `key` of `cf` when RocksDB has it in memory (memtables,
/// block cache): `Ok(None)` when finding it needs a read from a file.
pub(super) fn get_in_memory(
    db: &rocksdb::DB,
    cf: &rocksdb::ColumnFamily,
    key: &[u8],
) -> Result<Option<Option<Vec<u8>>>, StorageError> {
    let mut options = rocksdb::ReadOptions::default();
    options.set_read_tier(rocksdb::ReadTier::BlockCache);
    match db.get_cf_opt(cf, key, &options) {
        Ok(row) => Ok(Some(row)),
        Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Ok(None),
        Err(e) => Err(e.into()),
    }
}
