//! [`Store`]: the RocksDB implementation of the event log, the blob store and
//! the views, in one database.
//!
//! All writes that touch the log or the views go through one writer thread
//! (see the crate docs, "How a write happens"): it is the only place where
//! sequence numbers and stream versions are assigned, so no locks are needed
//! around them, and concurrent appends share one fsync (group commit).
//! Reads go straight to RocksDB from the caller's thread.

use std::{
    collections::HashMap,
    fmt,
    ops::ControlFlow,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::SystemTime,
};

use cairn_events::{
    envelope::{self, Metadata},
    v1::{Envelope, Event},
    StreamId, SCHEMA_VERSION,
};
use parking_lot::Mutex;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode,
    Options, WriteBatch, WriteOptions, DB,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::{
    blob::{BlobPin, BlobStore, Digest, GcStats},
    columns::{view_column, Column},
    keys::{self, meta},
    log::{Appended, EventLog, ExpectedVersion},
    view::{decode_row, fold, Overlay, RowSource, BLOB_REFS_CF},
    StorageError, View,
};

/// Longest command metadata value (ids, principal, trace context), in bytes.
/// Metadata travels in NATS headers, which allow no control characters.
pub const METADATA_MAX_BYTES: usize = 512;

/// Memory for memtables across all column families, in bytes (32 MiB).
pub const MEMTABLES_MAX_BYTES: usize = 32 << 20;

/// The block cache all column families share, in bytes (16 MiB).
pub const BLOCK_CACHE_BYTES: usize = 16 << 20;

/// Version of the on-disk layout (column families and key formats).
pub const LAYOUT_VERSION: u32 = 1;

/// Tuning and limits of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory of the RocksDB database (created when missing).
    pub path: PathBuf,
    /// fsync every commit. Default: true. Turning it off loses acknowledged
    /// appends on power loss; only benchmarks comparing against an equally
    /// unsynced baseline should do that.
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
}

impl StoreConfig {
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
        }
    }
}

/// Key-value rows, in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Called with `(events replayed, events to replay)` while views rebuild.
pub type RebuildProgress = Box<dyn Fn(u64, u64) + Send>;

/// What a rebuild did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuildStats {
    /// Names of the views rebuilt.
    pub views: Vec<String>,
    /// Events replayed.
    pub events: u64,
}

/// The full contents of one view: for comparing a rebuilt view with the
/// live one, byte for byte.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewDump {
    /// Rows of the view's column family, in key order.
    pub rows: Rows,
    /// The view's blob reference rows, in key order.
    pub blob_refs: Rows,
    /// The view's checkpoint.
    pub checkpoint: u64,
}

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

struct AppendRequest {
    stream: StreamId,
    expected: ExpectedVersion,
    events: Vec<Event>,
    metadata: Metadata,
}

type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

enum Command {
    Append(AppendRequest, Reply<Appended>),
    Rebuild(Vec<String>, Option<RebuildProgress>, Reply<RebuildStats>),
    CollectGarbage(Reply<GcStats>),
    Shutdown(oneshot::Sender<()>),
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
            appends: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        });
        inner.check_layout()?;
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

    fn check_request(&self, events: &[Event], metadata: &Metadata) -> Result<(), StorageError> {
        let config = &self.inner().config;
        let trace = metadata.trace.as_ref();
        let fields = [
            ("correlation id", metadata.correlation_id.as_str()),
            ("causation id", metadata.causation_id.as_str()),
            ("principal", metadata.principal.as_str()),
            ("traceparent", trace.map_or("", |t| t.traceparent.as_str())),
            ("tracestate", trace.map_or("", |t| t.tracestate.as_str())),
        ];
        for (name, value) in fields {
            if value.len() > METADATA_MAX_BYTES {
                return Err(StorageError::InvalidAppend(format!(
                    "{name} is {} bytes, at most {METADATA_MAX_BYTES} allowed",
                    value.len()
                )));
            }
            if value.chars().any(char::is_control) {
                return Err(StorageError::InvalidAppend(format!(
                    "{name} contains control characters"
                )));
            }
        }
        if events.is_empty() {
            return Err(StorageError::InvalidAppend("no events to append".into()));
        }
        if events.len() > config.append_max_events {
            return Err(StorageError::InvalidAppend(format!(
                "{} events in one append, at most {} allowed",
                events.len(),
                config.append_max_events
            )));
        }
        for (i, event) in events.iter().enumerate() {
            let Some(payload) = event.payload.as_ref() else {
                return Err(StorageError::InvalidAppend(format!(
                    "event {i} has no payload"
                )));
            };
            let size = prost::Message::encoded_len(event);
            if size > config.event_max_bytes {
                return Err(StorageError::InvalidAppend(format!(
                    "event {i} ({}) is {size} bytes, at most {} allowed",
                    envelope::EventKind::of(payload).name(),
                    config.event_max_bytes
                )));
            }
        }
        Ok(())
    }

    /// Validates an append and normalises its metadata.
    fn request(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
        metadata: Metadata,
    ) -> Result<AppendRequest, StorageError> {
        let metadata = metadata.normalized();
        self.check_request(&events, &metadata)?;
        Ok(AppendRequest {
            stream: stream.clone(),
            expected,
            events,
            metadata,
        })
    }

    /// [`EventLog::append`] for async callers: waits without blocking a thread.
    pub async fn append_async(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
        metadata: Metadata,
    ) -> Result<Appended, StorageError> {
        let request = self.request(stream, expected, events, metadata)?;
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Command::Append(request, reply))
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Appends `chunks` to `stream` in order, as if each went through
    /// [`Store::append_async`] once the previous one committed — the first
    /// expecting stream version `version`, each next one the version the
    /// previous leaves — but queued together, so the writer commits them in
    /// as few batches as it can instead of one fsync round trip each.
    /// A failed chunk fails every later one (their expected versions no
    /// longer match), so nothing after a failure is written. Returns the
    /// outcome of each chunk up to and including the first failure.
    pub async fn append_chunks_async(
        &self,
        stream: &StreamId,
        mut version: u64,
        chunks: Vec<Vec<Event>>,
        metadata: Metadata,
    ) -> Vec<Result<Appended, StorageError>> {
        let mut replies = Vec::with_capacity(chunks.len());
        for events in chunks {
            let len = events.len() as u64;
            let request = match self.request(
                stream,
                ExpectedVersion::Exact(version),
                events,
                metadata.clone(),
            ) {
                Ok(request) => request,
                Err(e) => {
                    replies.push(Err(e));
                    break;
                }
            };
            let (reply, rx) = oneshot::channel();
            let sent = match self.sender() {
                Ok(tx) => tx.send(Command::Append(request, reply)).await.is_ok(),
                Err(_) => false,
            };
            if !sent {
                replies.push(Err(StorageError::Closed));
                break;
            }
            replies.push(Ok(rx));
            version += len;
        }
        let mut out = Vec::with_capacity(replies.len());
        for reply in replies {
            let result = match reply {
                Ok(rx) => rx.await.map_err(|_| StorageError::Closed).and_then(|r| r),
                Err(e) => Err(e),
            };
            let failed = result.is_err();
            out.push(result);
            if failed {
                break;
            }
        }
        out
    }

    /// Rebuilds the named views (all when `views` is empty) from the log:
    /// clears their rows and replays every event through the same fold as
    /// live appends. Appends wait meanwhile, but readers see the views
    /// emptied and refilled: rebuild a stopped node's store (`cairn views
    /// rebuild`) unless that is acceptable. If it fails, the store accepts
    /// no more writes; the next open finishes the rebuild first. Blocking.
    pub fn rebuild(
        &self,
        views: &[&str],
        progress: Option<RebuildProgress>,
    ) -> Result<RebuildStats, StorageError> {
        let names = views.iter().map(|v| (*v).to_owned()).collect();
        self.call(|reply| Command::Rebuild(names, progress, reply))
    }

    /// Sends a command and blocks the calling thread for the answer. Works
    /// from any thread (tokio's `blocking_*` would panic inside a runtime);
    /// async code should still prefer [`Store::append_async`].
    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StorageError> {
        let (reply, rx) = oneshot::channel();
        let sender = self.sender()?;
        futures::executor::block_on(async move {
            sender
                .send(make(reply))
                .await
                .map_err(|_| StorageError::Closed)?;
            rx.await.map_err(|_| StorageError::Closed)?
        })
    }

    /// Finishes every append queued so far, then stops the writer: later
    /// appends fail with [`StorageError::Closed`]. Reads keep working.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if let Ok(tx) = self.sender() {
            if tx.send(Command::Shutdown(reply)).await.is_ok() {
                let _ = rx.await;
            }
        }
    }

    /// The row at `key` of view `view`.
    ///
    /// Served from a bounded in-memory cache when nothing was committed
    /// since the entry was read (entries are tagged with the last committed
    /// sequence read *before* the row, so a cached row is never older than
    /// the views).
    pub fn view_get(&self, view: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let inner = self.inner();
        let cf = inner.view_cf(view)?;
        let seq = *inner.committed.borrow();
        let cache_key = (view.to_owned(), key.to_vec());
        if let Some(cache) = &inner.cache {
            if let Some((at, row)) = cache.lock().get(&cache_key) {
                if *at == seq {
                    return Ok(row.clone());
                }
            }
        }
        let row = inner.db.get_cf(cf, key)?;
        if let Some(cache) = &inner.cache {
            cache.lock().put(cache_key, (seq, row.clone()));
        }
        Ok(row)
    }

    /// The protobuf row at `key` of view `view`.
    pub fn view_get_message<M: prost::Message + Default>(
        &self,
        view: &str,
        key: &[u8],
    ) -> Result<Option<M>, StorageError> {
        self.view_get(view, key)?
            .map(|bytes| decode_row(view, key, &bytes))
            .transpose()
    }

    /// [`Store::view_scan_after`], each row decoded as protobuf `M`.
    pub fn view_scan_messages<M: prost::Message + Default>(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, M)>, StorageError> {
        self.view_scan_after(view, prefix, after, limit)?
            .into_iter()
            .map(|(key, value)| {
                let row = decode_row(view, &key, &value)?;
                Ok((key, row))
            })
            .collect()
    }

    /// Up to `limit` rows of view `view` whose key starts with `prefix`, in key order.
    pub fn view_scan(&self, view: &str, prefix: &[u8], limit: usize) -> Result<Rows, StorageError> {
        self.view_scan_after(view, prefix, None, limit)
    }

    /// Like [`Store::view_scan`], starting after key `after` (exclusive):
    /// the next page after a page that ended at `after`.
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

    /// Calls `f` with each row of view `view` whose key starts with
    /// `prefix`, in key order, while `f` says continue — all read from one
    /// snapshot — and returns the last committed sequence number *of that
    /// snapshot*: the rows reflect exactly the log up to it (views are
    /// written in the same batch as the events and `last_seq`). What a
    /// list-then-watch needs: the listing and the position to watch after
    /// agree exactly.
    pub fn view_snapshot_scan_each<E: From<StorageError>>(
        &self,
        view: &str,
        prefix: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, E>,
    ) -> Result<u64, E> {
        let snapshot = self.snapshot();
        let seq = snapshot.last_seq()?;
        snapshot.view_scan_each(view, prefix, None, f)?;
        Ok(seq)
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
        for (expected_version, item) in (from_version.max(1)..).zip(iter) {
            if seqs.len() >= limit {
                break;
            }
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let version = keys::decode_u64(&key[prefix.len()..]);
            if version != Some(expected_version) {
                return Err(StorageError::Corrupt(format!(
                    "stream {stream}: expected version {expected_version}, index has {version:?}"
                )));
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

    fn stream_version(&self, stream: &StreamId) -> Result<u64, StorageError> {
        self.inner().stream_version(stream)
    }
}

impl BlobStore for Store {
    fn put(&self, content: &[u8]) -> Result<BlobPin, StorageError> {
        let inner = self.inner();
        let digest = Digest::of(content);
        let blobs = inner.cf(Column::Blobs);
        {
            // Pin and write under the lock a collection also takes per blob,
            // so a blob is never removed between "exists" and "pinned".
            let mut pins = inner.pins.lock();
            if inner.db.get_pinned_cf(blobs, digest.0)?.is_none() {
                // Not synced on its own: the synced append that refers to it
                // comes later in the same WAL, so it is durable first.
                inner.db.put_cf(blobs, digest.0, content)?;
            }
            *pins.entry(digest).or_insert(0) += 1;
        }
        let weak = Arc::downgrade(&self.shared.inner);
        Ok(BlobPin {
            digest,
            release: Some(Box::new(move |d| {
                if let Some(inner) = weak.upgrade() {
                    let mut pins = inner.pins.lock();
                    if let Some(n) = pins.get_mut(&d) {
                        *n -= 1;
                        if *n == 0 {
                            pins.remove(&d);
                        }
                    }
                }
            })),
        })
    }

    fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StorageError> {
        let inner = self.inner();
        Ok(inner.db.get_cf(inner.cf(Column::Blobs), digest.0)?)
    }

    fn ref_count(&self, digest: &Digest) -> Result<u64, StorageError> {
        self.inner().ref_count(digest)
    }

    fn collect_garbage(&self) -> Result<GcStats, StorageError> {
        self.call(Command::CollectGarbage)
    }
}

fn open_db(path: &Path, view_cfs: &[String]) -> Result<DB, StorageError> {
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

/// Where a scan of `prefix` that continues after key `after` starts.
fn after_key(prefix: &[u8], after: Option<&[u8]>) -> Vec<u8> {
    match after {
        Some(key) if key > prefix => {
            let mut next = key.to_vec();
            next.push(0); // the smallest key after `key`
            next
        }
        _ => prefix.to_vec(),
    }
}

fn scan_prefix(
    db: &DB,
    cf: &ColumnFamily,
    prefix: &[u8],
    limit: usize,
) -> Result<Rows, StorageError> {
    scan(db, cf, prefix, prefix, limit)
}

/// Up to `limit` rows from key `start` on, while keys start with `prefix`.
fn scan(
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
fn scan_each<E: From<StorageError>>(
    db: &DB,
    cf: &ColumnFamily,
    start: &[u8],
    prefix: &[u8],
    f: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, E>,
) -> Result<(), E> {
    scan_iter(db.raw_iterator_cf(cf), start, prefix, f)
}

/// [`scan_each`] over any raw iterator (of the database or of a snapshot).
fn scan_iter<E: From<StorageError>>(
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

    fn check_layout(&self) -> Result<(), StorageError> {
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
    fn verify_last_seq(&self) -> Result<u64, StorageError> {
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

    fn stream_version(&self, stream: &StreamId) -> Result<u64, StorageError> {
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

    fn read_all(&self, from_seq: u64, limit: usize) -> Result<Vec<Envelope>, StorageError> {
        let from = from_seq.max(1);
        let mut out = Vec::with_capacity(limit.min(1024));
        let iter = self.db.iterator_cf(
            self.cf(Column::Log),
            IteratorMode::From(&keys::seq_key(from), Direction::Forward),
        );
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item?;
            let expected = from + out.len() as u64;
            let seq = keys::decode_u64(&key);
            if seq != Some(expected) {
                return Err(StorageError::Corrupt(format!(
                    "log gap: expected seq {expected}, found {seq:?}"
                )));
            }
            out.push(
                envelope::decode(&value).map_err(|source| StorageError::Event {
                    seq: expected,
                    source,
                })?,
            );
        }
        Ok(out)
    }

    fn ref_count(&self, digest: &Digest) -> Result<u64, StorageError> {
        let cf = self.cf(Column::BlobRefs);
        let mut total = 0;
        for view in &self.views {
            if let Some(v) = self
                .db
                .get_cf(cf, keys::blob_ref_key(view.name(), &digest.0))?
            {
                total += keys::decode_u64(&v)
                    .ok_or_else(|| StorageError::Corrupt(format!("ref count of {digest}")))?;
            }
        }
        Ok(total)
    }

    /// Adds the overlay's rows to `batch`.
    fn write_overlay(&self, overlay: Overlay, batch: &mut WriteBatch) {
        for ((cf, key), value) in overlay.rows {
            let family = if cf == BLOB_REFS_CF {
                self.cf(Column::BlobRefs)
            } else {
                self.view_cf_at(cf - 1)
            };
            match value {
                Some(v) => batch.put_cf(family, key, v),
                None => batch.delete_cf(family, key),
            }
        }
    }
}

impl RowSource for Inner {
    fn read(&self, cf: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let family = if cf == BLOB_REFS_CF {
            self.cf(Column::BlobRefs)
        } else {
            self.view_cf_at(cf - 1)
        };
        Ok(self.db.get_cf(family, key)?)
    }
}

fn now() -> pbjson_types::Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos() as i32,
    }
}

/// Most stream heads the writer keeps in memory.
const HEAD_CACHE_MAX_STREAMS: usize = 65_536;

/// The writer thread's state: the only code that assigns sequence numbers.
struct Writer {
    inner: Arc<Inner>,
    last_seq: u64,
    /// Current version of recently appended streams. Exact, because the
    /// writer is the only code that appends; cleared when full or when a
    /// group fails to commit.
    heads: HashMap<StreamId, u64>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut next = rx.blocking_recv();
        while let Some(command) = next.take() {
            match command {
                Command::Append(request, reply) => {
                    let mut group = vec![(request, reply)];
                    let mut events = group[0].0.events.len();
                    while events < self.inner.config.group_commit_max_events {
                        match rx.try_recv() {
                            Ok(Command::Append(request, reply)) => {
                                events += request.events.len();
                                group.push((request, reply));
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_group(group);
                }
                Command::Rebuild(names, progress, reply) => {
                    let result = self.rebuild(&names, progress);
                    let failed = result.is_err();
                    let _ = reply.send(result);
                    if failed {
                        // The views are half rebuilt (their rows cleared,
                        // the `rebuilding` marks set): accept no append or
                        // collection on top of that. The next open finishes
                        // the rebuild before anything else.
                        warn!("view rebuild failed; store closed until reopened");
                        return;
                    }
                }
                Command::CollectGarbage(reply) => {
                    let _ = reply.send(self.collect_garbage());
                }
                Command::Shutdown(reply) => {
                    let _ = reply.send(());
                    debug!("store writer stopped on request");
                    return;
                }
            }
            if next.is_none() {
                next = rx.blocking_recv();
            }
        }
        debug!("store writer stopped: all handles dropped");
    }

    fn commit_group(&mut self, group: Vec<(AppendRequest, Reply<Appended>)>) {
        let inner = self.inner.clone();
        let log_cf = inner.cf(Column::Log);
        let streams_cf = inner.cf(Column::Streams);
        let mut batch = WriteBatch::default();
        let mut overlay = Overlay::default();
        let mut heads: HashMap<StreamId, u64> = HashMap::new();
        let mut seq = self.last_seq;
        let recorded_at = now();
        let mut outcomes: Vec<(Reply<Appended>, Result<Appended, StorageError>)> =
            Vec::with_capacity(group.len());
        let all = |_: usize| true;

        let mut group = group.into_iter();
        while let Some((request, reply)) = group.next() {
            let actual = match heads
                .get(&request.stream)
                .or_else(|| self.heads.get(&request.stream))
            {
                Some(v) => *v,
                None => match inner.stream_version(&request.stream) {
                    Ok(v) => v,
                    Err(e) => {
                        outcomes.push((reply, Err(e)));
                        continue;
                    }
                },
            };
            if !request.expected.matches(actual) {
                let conflict = StorageError::Conflict {
                    stream: request.stream.to_string(),
                    expected: request.expected,
                    actual,
                };
                outcomes.push((reply, Err(conflict)));
                continue;
            }
            let mut envelopes = Vec::with_capacity(request.events.len());
            let mut version = actual;
            for event in request.events {
                seq += 1;
                version += 1;
                let env = Envelope {
                    schema_version: SCHEMA_VERSION,
                    event_id: envelope::new_id(),
                    stream: request.stream.to_string(),
                    stream_version: version,
                    seq,
                    recorded_at: Some(recorded_at),
                    correlation_id: request.metadata.correlation_id.clone(),
                    causation_id: request.metadata.causation_id.clone(),
                    principal: request.metadata.principal.clone(),
                    trace: request.metadata.trace.clone(),
                    event: Some(event),
                };
                batch.put_cf(log_cf, keys::seq_key(seq), envelope::encode(&env));
                batch.put_cf(
                    streams_cf,
                    keys::stream_key(&request.stream, version),
                    keys::seq_key(seq),
                );
                if let Err(e) = fold(&inner.views, &all, &mut overlay, &*inner, &env) {
                    // A view refusing an event means the store is broken:
                    // fail the whole group, write nothing.
                    let message = e.to_string();
                    warn!(error = %message, seq, "view fold failed; group rejected");
                    let others = outcomes
                        .into_iter()
                        .map(|(reply, _)| reply)
                        .chain(group.map(|(_, reply)| reply));
                    for reply in others {
                        let _ = reply.send(Err(StorageError::Corrupt(message.clone())));
                    }
                    let _ = reply.send(Err(e));
                    return;
                }
                envelopes.push(env);
            }
            heads.insert(request.stream, version);
            outcomes.push((reply, Ok(Appended { envelopes })));
        }

        if seq > self.last_seq {
            inner.write_overlay(overlay, &mut batch);
            let meta_cf = inner.cf(Column::Meta);
            batch.put_cf(meta_cf, meta::LAST_SEQ, seq.to_be_bytes());
            for view in &inner.views {
                batch.put_cf(meta_cf, meta::checkpoint(view.name()), seq.to_be_bytes());
            }
            let mut options = WriteOptions::default();
            options.set_sync(inner.config.sync);
            if let Err(e) = inner.db.write_opt(batch, &options) {
                warn!(error = %e, "group commit failed");
                for (reply, outcome) in outcomes {
                    let _ = reply.send(outcome.and(Err(StorageError::Rocks(e.clone()))));
                }
                return;
            }
            let committed = outcomes.iter().filter(|(_, o)| o.is_ok()).count() as u64;
            inner.appends.fetch_add(committed, Ordering::Relaxed);
            inner.batches.fetch_add(1, Ordering::Relaxed);
            self.last_seq = seq;
            if self.heads.len() + heads.len() > HEAD_CACHE_MAX_STREAMS {
                self.heads.clear();
            }
            self.heads.extend(heads);
            inner.committed.send_replace(seq);
        }
        for (reply, outcome) in outcomes {
            let _ = reply.send(outcome);
        }
    }

    /// At open: finish interrupted rebuilds and bring every view up to the
    /// end of the log (a view added by a newer build starts from 0).
    fn recover_views(&mut self) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        let mut interrupted = Vec::new();
        for view in &inner.views {
            if inner
                .db
                .get_cf(inner.cf(Column::Meta), meta::rebuilding(view.name()))?
                .is_some()
            {
                interrupted.push(view.name().to_owned());
            }
        }
        if !interrupted.is_empty() {
            warn!(views = ?interrupted, "finishing interrupted view rebuild");
            self.rebuild(&interrupted, None)?;
        }
        let mut from = Vec::with_capacity(inner.views.len());
        for view in &inner.views {
            from.push(Some(
                inner.meta_u64(&meta::checkpoint(view.name()))?.unwrap_or(0),
            ));
        }
        if from
            .iter()
            .any(|cp| cp.is_some_and(|cp| cp < self.last_seq))
        {
            let events = self.replay(&from, None)?;
            info!(events, "views caught up with the log");
        }
        Ok(())
    }

    fn rebuild(
        &mut self,
        names: &[String],
        progress: Option<RebuildProgress>,
    ) -> Result<RebuildStats, StorageError> {
        let inner = self.inner.clone();
        let mut selected = vec![false; inner.views.len()];
        for name in names {
            let i = inner
                .views
                .iter()
                .position(|v| v.name() == name)
                .ok_or_else(|| StorageError::UnknownView(name.clone()))?;
            selected[i] = true;
        }
        if names.is_empty() {
            selected.iter_mut().for_each(|s| *s = true);
        }
        let meta_cf = inner.cf(Column::Meta);
        // 1. Mark the rebuild and drop the checkpoints, atomically.
        let mut batch = WriteBatch::default();
        for (i, view) in inner.views.iter().enumerate().filter(|(i, _)| selected[*i]) {
            let _ = i;
            batch.put_cf(meta_cf, meta::rebuilding(view.name()), []);
            batch.delete_cf(meta_cf, meta::checkpoint(view.name()));
        }
        inner.db.write(batch)?;
        // 2. Clear rows and blob references.
        for (i, view) in inner.views.iter().enumerate().filter(|(i, _)| selected[*i]) {
            self.clear(inner.view_cf_at(i), b"")?;
            self.clear(
                inner.cf(Column::BlobRefs),
                &keys::blob_ref_prefix(view.name()),
            )?;
        }
        // 3. Replay the whole log into them.
        let from: Vec<Option<u64>> = selected.iter().map(|s| s.then_some(0)).collect();
        let events = self.replay(&from, progress)?;
        if events != self.last_seq {
            return Err(StorageError::Corrupt(format!(
                "rebuild replayed {events} events, the log holds {}",
                self.last_seq
            )));
        }
        // 4. Done: clear the marks and make it all durable.
        let mut batch = WriteBatch::default();
        for view in inner
            .views
            .iter()
            .enumerate()
            .filter(|(i, _)| selected[*i])
            .map(|(_, v)| v)
        {
            batch.delete_cf(meta_cf, meta::rebuilding(view.name()));
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        inner.db.write_opt(batch, &options)?;
        let views: Vec<String> = inner
            .views
            .iter()
            .enumerate()
            .filter(|(i, _)| selected[*i])
            .map(|(_, v)| v.name().to_owned())
            .collect();
        info!(?views, events, "views rebuilt");
        Ok(RebuildStats { views, events })
    }

    fn clear(&self, cf: &ColumnFamily, prefix: &[u8]) -> Result<(), StorageError> {
        const CHUNK: usize = 10_000;
        loop {
            let rows = scan_prefix(&self.inner.db, cf, prefix, CHUNK)?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut batch = WriteBatch::default();
            for (key, _) in &rows {
                batch.delete_cf(cf, key);
            }
            self.inner.db.write(batch)?;
        }
    }

    /// Folds the log into views: view `i` receives the events after
    /// `from[i]` (none when `None`). Each batch carries rows and checkpoints
    /// together. Returns the number of events read.
    fn replay(
        &mut self,
        from: &[Option<u64>],
        progress: Option<RebuildProgress>,
    ) -> Result<u64, StorageError> {
        let inner = self.inner.clone();
        let Some(start) = from.iter().flatten().min().map(|cp| cp + 1) else {
            return Ok(0);
        };
        let total = self.last_seq.saturating_sub(start - 1);
        let mut next = start;
        let mut done = 0;
        let meta_cf = inner.cf(Column::Meta);
        while next <= self.last_seq {
            let chunk = inner.read_all(next, inner.config.replay_batch_events.max(1))?;
            let Some(last) = chunk.last().map(|e| e.seq) else {
                break;
            };
            let mut overlay = Overlay::default();
            for env in &chunk {
                let wanted = |i: usize| from[i].is_some_and(|cp| env.seq > cp);
                fold(&inner.views, &wanted, &mut overlay, &*inner, env)?;
            }
            let mut batch = WriteBatch::default();
            inner.write_overlay(overlay, &mut batch);
            for (i, view) in inner.views.iter().enumerate() {
                if from[i].is_some_and(|cp| last > cp) {
                    batch.put_cf(meta_cf, meta::checkpoint(view.name()), last.to_be_bytes());
                }
            }
            inner.db.write(batch)?;
            done += chunk.len() as u64;
            next = last + 1;
            if let Some(progress) = &progress {
                progress(done, total);
            }
        }
        Ok(done)
    }

    /// Removes blobs that no view references and nobody pins. References
    /// are read from every `blob_refs` row, including rows of views this
    /// build does not know (left by another version), so a roll-back never
    /// loses a newer view's blobs. Runs on the writer thread, so no commit
    /// can add a reference meanwhile; appends wait for it.
    fn collect_garbage(&mut self) -> Result<GcStats, StorageError> {
        let inner = self.inner.clone();
        let mut referenced = std::collections::HashSet::new();
        for item in inner
            .db
            .iterator_cf(inner.cf(Column::BlobRefs), IteratorMode::Start)
        {
            let (key, _) = item?;
            let digest = key
                .len()
                .checked_sub(32)
                .and_then(|at| <[u8; 32]>::try_from(&key[at..]).ok())
                .ok_or_else(|| StorageError::Corrupt("blob ref key without a sha256".into()))?;
            referenced.insert(digest);
        }
        let blobs = inner.cf(Column::Blobs);
        let mut candidates = Vec::new();
        let mut stats = GcStats::default();
        let mut iter = inner.db.raw_iterator_cf(blobs);
        iter.seek_to_first();
        while iter.valid() {
            stats.scanned += 1;
            if let (Some(key), Some(value)) = (iter.key(), iter.value()) {
                let digest: [u8; 32] = key
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("blob key is not a sha256".into()))?;
                if !referenced.contains(&digest) {
                    candidates.push((Digest(digest), value.len() as u64));
                }
            }
            iter.next();
        }
        iter.status()?;
        for (digest, size) in candidates {
            let pins = inner.pins.lock();
            if pins.contains_key(&digest) {
                continue;
            }
            inner.db.delete_cf(blobs, digest.0)?;
            drop(pins);
            stats.removed += 1;
            stats.removed_bytes += size;
        }
        if stats.removed > 0 {
            info!(
                removed = stats.removed,
                bytes = stats.removed_bytes,
                "blobs collected"
            );
        }
        Ok(stats)
    }
}
