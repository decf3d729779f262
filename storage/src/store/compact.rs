//! Compaction of keyed stream classes (see [`crate::compaction`]): runs on
//! the writer thread, and the bookkeeping readers use to skip the gaps it
//! leaves.

use std::{
    collections::{hash_map::Entry, HashMap},
    sync::Arc,
    time::{Duration, SystemTime},
};

use cairn_events::{envelope, StreamId};
use rocksdb::{WriteBatch, WriteOptions};
use tracing::info;

use super::{
    command::Command,
    inner::{Compacted, Inner},
    writer::Writer,
    Store,
};
use crate::{
    columns::Column,
    compaction::{
        check_prefix, CompactingLog, CompactionPolicy, CompactionStats, COMPACTION_BATCH_EVENTS,
    },
    keys::{self, meta},
    read::ViewDump,
    views::requests::{RequestsView, REQUEST_ID_WINDOW_SECS},
    StorageError,
};
use cairn_events::v1::RequestRow;

impl Inner {
    /// Reads the compaction records from `meta` (at open).
    pub(super) fn load_compacted(&self) -> Result<(), StorageError> {
        let through = self.meta_u64(meta::COMPACTED_THROUGH)?.unwrap_or(0);
        let mut prefixes = Vec::new();
        let rows = super::scan::scan_prefix(
            &self.db,
            self.cf(Column::Meta),
            meta::COMPACTED_PREFIX,
            usize::MAX,
        )?;
        for (key, _) in rows {
            let prefix = std::str::from_utf8(&key[meta::COMPACTED_PREFIX.len()..])
                .map_err(|_| StorageError::Corrupt("compacted class is not UTF-8".into()))?;
            prefixes.push(prefix.to_owned());
        }
        *self.compacted.write() = Compacted { through, prefixes };
        Ok(())
    }

    /// Highest sequence number a compaction saw (0: never compacted).
    pub(super) fn compacted_through(&self) -> u64 {
        self.compacted.read().through
    }

    /// Whether `stream` belongs to a compacted class (may have version gaps).
    pub(super) fn is_compacted(&self, stream: &StreamId) -> bool {
        self.compacted
            .read()
            .prefixes
            .iter()
            .any(|p| stream.as_str().starts_with(p.as_str()))
    }
}

impl Store {
    /// Compacts the stream class of `policy` as of `now` (see
    /// [`crate::compaction`]): keeps the latest event per key, and
    /// tombstones younger than the policy's retention. Runs on the writer
    /// thread; appends wait meanwhile. Blocking.
    pub fn compact(
        &self,
        policy: Arc<dyn CompactionPolicy>,
        now: SystemTime,
    ) -> Result<CompactionStats, StorageError> {
        check_prefix(policy.stream_prefix())?;
        self.call(|reply| Command::Compact(policy, now, reply))
    }
}

impl CompactingLog for Store {
    fn compact(
        &self,
        policy: Arc<dyn CompactionPolicy>,
        now: SystemTime,
    ) -> Result<CompactionStats, StorageError> {
        Store::compact(self, policy, now)
    }

    fn rebuild_views(&self) -> Result<(), StorageError> {
        self.rebuild(&[], None).map(|_| ())
    }

    fn view_dumps(&self) -> Result<Vec<ViewDump>, StorageError> {
        self.view_names()
            .iter()
            .map(|v| self.view_dump(v))
            .collect()
    }
}

/// The latest event seen of one key.
struct Latest {
    seq: u64,
    index_key: Vec<u8>,
    tombstone: bool,
    recorded_at: Option<SystemTime>,
    head: bool,
    /// An older event of the key stays (a stream head): a tombstone of the
    /// key must stay too, or a rebuild would bring the key back.
    shadows_head: bool,
    /// The idempotency key the event carries, if any.
    request_id: Option<String>,
}

impl Latest {
    /// Whether the event carries an idempotency key it must still keep at
    /// `now`: like a tombstone, for the class's `retention` (at most the
    /// key's window, [`REQUEST_ID_WINDOW_SECS`]), so that a retry of the
    /// command is still recognised — also by a view rebuilt from the
    /// compacted log (see [`crate::views::requests`]).
    fn keeps_its_key(&self, now: SystemTime, retention: Duration) -> bool {
        let kept = retention.min(Duration::from_secs(REQUEST_ID_WINDOW_SECS));
        self.request_id.is_some()
            && self
                .recorded_at
                .and_then(|at| at.checked_add(kept))
                .is_none_or(|until| until > now)
    }
}

fn recorded_at(env: &cairn_events::v1::Envelope) -> Option<SystemTime> {
    let t = env.recorded_at.as_ref()?;
    let since = Duration::new(u64::try_from(t.seconds).ok()?, u32::try_from(t.nanos).ok()?);
    SystemTime::UNIX_EPOCH.checked_add(since)
}

impl Writer {
    pub(super) fn compact(
        &mut self,
        policy: &dyn CompactionPolicy,
        now: SystemTime,
    ) -> Result<CompactionStats, StorageError> {
        let inner = self.inner.clone();
        let prefix = policy.stream_prefix().to_owned();
        check_prefix(&prefix)?;
        let through = self.last_seq;
        let meta_cf = inner.cf(Column::Meta);
        let log_cf = inner.cf(Column::Log);
        let streams_cf = inner.cf(Column::Streams);

        // 1. Record the compaction first (synced): from now on readers
        //    accept the gaps it is about to make, even after a crash.
        let before = inner.compacted_through();
        let mut batch = WriteBatch::default();
        batch.put_cf(meta_cf, meta::compacted(&prefix), through.to_be_bytes());
        batch.put_cf(
            meta_cf,
            meta::COMPACTED_THROUGH,
            through.max(before).to_be_bytes(),
        );
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        inner.db.write_opt(batch, &synced)?;
        inner.load_compacted()?;
        // The rows kept in memory may be among those about to be removed:
        // readers read RocksDB (which skips them) until new commits come.
        inner.recent.lock().clear();

        // 2. Find the latest event per key, removing superseded ones.
        let mut stats = CompactionStats {
            compacted_through: through,
            ..CompactionStats::default()
        };
        let mut latest: HashMap<Vec<u8>, Latest> = HashMap::new();
        let mut doomed: Vec<(u64, Vec<u8>, Option<String>)> = Vec::new();
        let mut removed = 0u64;
        // A removed event's idempotency key goes with it (its window
        // closed: see `Latest::keeps_its_key`), so that the live `requests`
        // view holds what a rebuild from the compacted log would.
        let requests_cf = inner.view_cf(RequestsView::NAME).ok();
        let flush = |doomed: &mut Vec<(u64, Vec<u8>, Option<String>)>| -> Result<(), StorageError> {
            if doomed.is_empty() {
                return Ok(());
            }
            let mut batch = WriteBatch::default();
            let mut forgotten = false;
            for (seq, index_key, request_id) in doomed.drain(..) {
                batch.delete_cf(log_cf, keys::seq_key(seq));
                batch.delete_cf(streams_cf, index_key);
                if let (Some(cf), Some(id)) = (requests_cf, request_id) {
                    let key = RequestsView::row_key(&id);
                    let row = inner
                        .db
                        .get_pinned_cf(cf, &key)?
                        .map(|v| <RequestRow as prost::Message>::decode(&*v))
                        .transpose()
                        .map_err(|e| StorageError::Corrupt(format!("request row {id}: {e}")))?;
                    if row.is_some_and(|row| row.last_seq == seq) {
                        batch.delete_cf(cf, &key);
                        forgotten = true;
                    }
                }
            }
            inner.db.write_opt(batch, &synced)?;
            if forgotten {
                // Request rows went without a new seq: every row the cache
                // holds stops counting (also one read before the write and
                // cached after it).
                inner.bump_cache_epoch();
            }
            Ok(())
        };
        // The class's index is read in pages of `compaction_page_rows`; each
        // page holds one row more than it processes (the next page's first
        // row), so its last row knows whether it is its stream's head. Only
        // processed rows are ever removed, so the next page starts at that
        // extra row.
        let page_rows = inner.config.compaction_page_rows.max(1);
        let class = prefix.as_bytes();
        let fetch = page_rows.saturating_add(1);
        let mut rows = super::scan::scan(&inner.db, streams_cf, class, class, fetch)?;
        loop {
            let end = rows.len().min(page_rows);
            for (i, (index_key, value)) in rows[..end].iter().enumerate() {
                let corrupt = || {
                    StorageError::Corrupt(format!(
                        "stream index row {} is malformed",
                        String::from_utf8_lossy(index_key)
                    ))
                };
                let stream_len = index_key.len().checked_sub(9).ok_or_else(corrupt)?;
                let stream = &index_key[..stream_len];
                // Rows of one stream are contiguous: the last one is its head.
                let head = rows
                    .get(i + 1)
                    .is_none_or(|(next, _)| next.len() < 9 || &next[..next.len() - 9] != stream);
                let seq = keys::decode_u64(value).ok_or_else(corrupt)?;
                if seq > through {
                    continue;
                }
                let Some(row) = inner.db.get_pinned_cf(log_cf, keys::seq_key(seq))? else {
                    continue; // removed by an earlier, interrupted compaction
                };
                let env =
                    envelope::decode(&row).map_err(|source| StorageError::Event { seq, source })?;
                stats.scanned += 1;
                let Some(key) = policy.key(&env) else {
                    continue;
                };
                let candidate = Latest {
                    seq,
                    index_key: index_key.clone(),
                    tombstone: policy.is_tombstone(&env),
                    recorded_at: recorded_at(&env),
                    head,
                    shadows_head: false,
                    request_id: (!env.request_id.is_empty()).then(|| env.request_id.clone()),
                };
                let superseded = match latest.entry(key) {
                    Entry::Vacant(slot) => {
                        slot.insert(candidate);
                        None
                    }
                    Entry::Occupied(mut slot) => {
                        if slot.get().seq < candidate.seq {
                            let old = slot.insert(candidate);
                            slot.get_mut().shadows_head = old.shadows_head || old.head;
                            Some(old)
                        } else {
                            slot.get_mut().shadows_head |= candidate.head;
                            Some(candidate)
                        }
                    }
                };
                if let Some(old) = superseded.filter(|old| {
                    !old.head && !old.keeps_its_key(now, policy.tombstone_retention())
                }) {
                    stats.superseded += 1;
                    doomed.push((old.seq, old.index_key, old.request_id));
                    removed += 1;
                    if doomed.len() >= COMPACTION_BATCH_EVENTS {
                        flush(&mut doomed)?;
                    }
                }
            }
            if rows.len() <= page_rows {
                break;
            }
            let next = rows.swap_remove(page_rows).0;
            rows = super::scan::scan(&inner.db, streams_cf, &next, class, fetch)?;
        }
        // 3. Tombstones whose retention has passed go too.
        let retention = policy.tombstone_retention();
        for last in latest.into_values() {
            let expired = last
                .recorded_at
                .and_then(|at| at.checked_add(retention))
                .is_some_and(|until| until < now);
            if last.tombstone
                && !last.head
                && !last.shadows_head
                && expired
                && !last.keeps_its_key(now, retention)
            {
                stats.expired_tombstones += 1;
                doomed.push((last.seq, last.index_key, last.request_id));
                removed += 1;
                if doomed.len() >= COMPACTION_BATCH_EVENTS {
                    flush(&mut doomed)?;
                }
            }
        }
        flush(&mut doomed)?;
        info!(
            class = %prefix,
            through,
            removed,
            scanned = stats.scanned,
            "stream class compacted"
        );
        Ok(stats)
    }
}
