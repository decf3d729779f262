//! The writer thread: group commit, view catch-up and rebuild.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::SystemTime,
};

use cairn_events::{
    envelope::{self, Metadata},
    v1::{Envelope, Event},
    StreamId, SCHEMA_VERSION,
};
use rocksdb::{ColumnFamily, WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::command::{AppendRequest, Command, RebuildProgress, RebuildStats, Reply};
use super::refs::{BlobRefCounts, WriterRows};
use super::scan::scan_prefix;
use super::{inner::Inner, Store};
use crate::log::{Replicated, Sequenced, SequencedCommit};
use crate::{
    columns::Column,
    keys::{self, meta},
    log::{Appended, ExpectedVersion},
    view::{fold, Overlay, BLOB_REFS_CF},
    StorageError,
};
/// Longest command metadata value (ids, principal, trace context), in bytes.
/// Metadata travels in NATS headers, which allow no control characters.
pub const METADATA_MAX_BYTES: usize = 512;

/// The one check for values that travel in NATS headers (command metadata
/// on append, the ids and trace context of a replicated envelope): each
/// `(name, value)` is at most [`METADATA_MAX_BYTES`] and has no control
/// characters. The error names the field; callers wrap it in their
/// [`StorageError`] variant.
fn check_header_fields(fields: &[(&str, &str)]) -> Result<(), String> {
    for (name, value) in fields {
        if value.len() > METADATA_MAX_BYTES {
            return Err(format!(
                "{name} is {} bytes, at most {METADATA_MAX_BYTES} allowed",
                value.len()
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(format!("{name} contains control characters"));
        }
    }
    Ok(())
}

impl Store {
    pub(super) fn check_request(
        &self,
        events: &[Event],
        metadata: &Metadata,
    ) -> Result<(), StorageError> {
        let config = &self.inner().config;
        let trace = metadata.trace.as_ref();
        check_header_fields(&[
            ("correlation id", metadata.correlation_id.as_str()),
            ("causation id", metadata.causation_id.as_str()),
            ("principal", metadata.principal.as_str()),
            ("traceparent", trace.map_or("", |t| t.traceparent.as_str())),
            ("tracestate", trace.map_or("", |t| t.tracestate.as_str())),
            ("request id", metadata.request_id.as_str()),
        ])
        .map_err(StorageError::InvalidAppend)?;
        if metadata.request_digest.len() > 64 {
            return Err(StorageError::InvalidAppend(format!(
                "request digest is {} bytes, at most 64 allowed",
                metadata.request_digest.len()
            )));
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
    pub(super) fn request(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
        metadata: Metadata,
    ) -> Result<AppendRequest, StorageError> {
        if self
            .inner()
            .replica_only
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(StorageError::Unavailable(format!(
                "stream {stream} cannot be written on this cluster node: its log is fed by the cluster's replicated log, and this domain does not write through it yet"
            )));
        }
        let metadata = metadata.normalized();
        self.check_request(&events, &metadata)?;
        Ok(AppendRequest {
            stream: stream.clone(),
            expected,
            events,
            metadata,
            sync: true,
        })
    }

    /// [`crate::EventLog::append`] for async callers: waits without blocking a thread.
    pub async fn append_async(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
        metadata: Metadata,
    ) -> Result<Appended, StorageError> {
        let request = self.request(stream, expected, events, metadata)?;
        let started = std::time::Instant::now();
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Command::Append(request, reply))
            .await
            .map_err(|_| StorageError::Closed)?;
        let appended = rx.await.map_err(|_| StorageError::Closed)?;
        crate::metrics::with(|m| {
            m.append_duration
                .record(started.elapsed().as_secs_f64(), &[])
        });
        appended
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
        version: u64,
        chunks: Vec<Vec<Event>>,
        metadata: Metadata,
    ) -> Vec<Result<Appended, StorageError>> {
        self.append_chunks_durable(stream, version, chunks, metadata, crate::Durability::Sync)
            .await
    }

    /// [`Store::append_chunks_async`], acknowledged as `durability` says.
    pub async fn append_chunks_durable(
        &self,
        stream: &StreamId,
        version: u64,
        chunks: Vec<Vec<Event>>,
        metadata: Metadata,
        durability: crate::Durability,
    ) -> Vec<Result<Appended, StorageError>> {
        let appends = chunks
            .into_iter()
            .map(|events| (events, metadata.clone()))
            .collect();
        self.append_pipelined(stream, version, appends, durability)
            .await
    }

    /// [`Store::append_chunks_durable`] with each append's own metadata:
    /// the appends of several commands (each with its principal and
    /// correlation) queued together, so they share group commits. The
    /// first expects stream version `version`, each next one the version
    /// the previous leaves; a failed append fails every later one (nothing
    /// after it is written). Returns the outcome of each append up to and
    /// including the first failure. The appends reach the writer in one
    /// message (or one per `group-commit-max-events`), so it commits them
    /// in one group rather than waking at the first and taking the others
    /// in a second group with a second fsync.
    pub async fn append_pipelined(
        &self,
        stream: &StreamId,
        version: u64,
        appends: Vec<(Vec<Event>, Metadata)>,
        durability: crate::Durability,
    ) -> Vec<Result<Appended, StorageError>> {
        self.queue_pipelined(stream, version, appends, durability)
            .await
            .outcomes()
            .await
    }

    /// [`Store::append_pipelined`] in two steps: this one validates the
    /// appends and hands them to the writer, and resolves once they are
    /// queued (in order, behind everything queued before); the answer's
    /// [`QueuedAppends::outcomes`] waits for their commits. A caller can so
    /// queue its next appends — expecting the versions these leave — while
    /// these are written and fsynced (the key-value partition writers
    /// pipeline their batches this way). [`QueuedAppends::queued`] says how
    /// many were queued: fewer than given when one was refused (or the
    /// store closed), and nothing after it was.
    pub async fn queue_pipelined(
        &self,
        stream: &StreamId,
        mut version: u64,
        appends: Vec<(Vec<Event>, Metadata)>,
        durability: crate::Durability,
    ) -> QueuedAppends {
        let started = std::time::Instant::now();
        let mut replies = Vec::with_capacity(appends.len());
        let mut requests = Vec::with_capacity(appends.len());
        let mut refused = None;
        for (events, metadata) in appends {
            let len = events.len() as u64;
            match self.request(stream, ExpectedVersion::Exact(version), events, metadata) {
                Ok(mut request) => {
                    request.sync = durability == crate::Durability::Sync;
                    let (reply, rx) = oneshot::channel();
                    requests.push((request, reply));
                    replies.push(rx);
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
            version += len;
        }
        // One message for as many as a group commit takes (see
        // `Command::AppendMany`).
        let group_max = self.inner().config.group_commit_max_events.max(1);
        let mut sent = 0;
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let mut message = Vec::new();
            let mut events = 0;
            while let Some((request, _)) = requests.peek() {
                if !message.is_empty() && events + request.events.len() > group_max {
                    break;
                }
                events += request.events.len();
                message.extend(requests.next());
            }
            let n = message.len();
            let delivered = match self.sender() {
                Ok(tx) => tx.send(Command::AppendMany(message)).await.is_ok(),
                Err(_) => false,
            };
            if !delivered {
                break;
            }
            sent += n;
        }
        let closed = sent < replies.len();
        let mut replies: Vec<Result<_, StorageError>> =
            replies.into_iter().take(sent).map(Ok).collect();
        if closed {
            replies.push(Err(StorageError::Closed));
        } else if let Some(e) = refused {
            replies.push(Err(e));
        }
        QueuedAppends {
            replies,
            queued: sent,
            started,
        }
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
    pub(super) fn call<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, StorageError> {
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

    /// Applies messages of a replicated order (a cluster's JetStream
    /// stream), in one write: each commit's events get the next sequence
    /// numbers, every view folds them, and the log's replication position
    /// becomes the last commit's — atomically, so a restart resumes right
    /// after what was written. A commit at or below the position is
    /// skipped; one that cannot be applied (a stream version that does not
    /// continue its stream, a malformed envelope) is refused alone and
    /// skipped, identically on every node. An error (I/O, a view's fold)
    /// writes nothing. The write is not fsynced (the replicated order is the
    /// durable copy; see the writer). Waits without blocking a thread.
    pub async fn apply_sequenced_async(
        &self,
        commits: Vec<SequencedCommit>,
    ) -> Result<Vec<Sequenced>, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Command::Sequence(commits, reply))
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Every blob folding `envelope` makes some view reference (see
    /// [`crate::View::blobs`]), each once.
    pub fn blobs_referenced(&self, envelope: &Envelope) -> Vec<crate::Digest> {
        let mut all: Vec<crate::Digest> = self
            .inner()
            .views
            .iter()
            .flat_map(|view| view.blobs(envelope))
            .collect();
        all.sort_by_key(|d| d.0);
        all.dedup_by(|a, b| a.0 == b.0);
        all
    }

    /// Whether `envelope` (as another node built it) would be accepted by
    /// a replicated apply, its `seq` aside: a cluster's owner checks its
    /// envelopes before publishing them.
    pub fn check_envelope(&self, envelope: &Envelope) -> Result<(), StorageError> {
        let event_bytes = envelope
            .event
            .as_ref()
            .map_or(0, prost::Message::encoded_len);
        check_replicated_fields(self.inner(), envelope, envelope.seq.max(1), event_bytes)
            .map(|_| ())
    }

    /// Adds `observer`: told of every commit from now on, on the writer
    /// thread, before the commit's seq is announced (see
    /// [`crate::observe`]).
    pub fn observe(&self, observer: Arc<dyn crate::CommitObserver>) {
        self.inner().observers.write().push(observer);
    }

    /// Makes this store a replica only (a cluster node): direct appends are
    /// refused from now on; replicated applies go on.
    pub fn set_replica_only(&self) {
        self.inner()
            .replica_only
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The position of the last replicated message applied (see
    /// [`Store::apply_sequenced_async`]); 0 when none was.
    pub fn replication_position(&self) -> Result<u64, StorageError> {
        Ok(self.meta_u64(meta::REPLICATION_POSITION)?.unwrap_or(0))
    }

    /// [`crate::ReplicatedLog::apply_replicated`] for async callers: waits
    /// without blocking a thread.
    pub async fn apply_replicated_async(
        &self,
        commit: Vec<Envelope>,
    ) -> Result<Replicated, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Command::Replicate(commit, reply))
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
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
}

/// Appends [`Store::queue_pipelined`] handed to the writer: their
/// outcomes are still to come.
#[derive(Debug)]
#[must_use = "the outcomes tell which appends committed"]
pub struct QueuedAppends {
    replies: Vec<Result<oneshot::Receiver<Result<Appended, StorageError>>, StorageError>>,
    queued: usize,
    started: std::time::Instant,
}

impl QueuedAppends {
    /// How many of the appends were queued (the rest, from the first one
    /// refused, were not).
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Waits for the queued appends' commits: the outcome of each append
    /// up to and including the first failure (a refused one's error, when
    /// one was refused; nothing after it was written).
    pub async fn outcomes(self) -> Vec<Result<Appended, StorageError>> {
        let mut out = Vec::with_capacity(self.replies.len());
        for reply in self.replies {
            let result = match reply {
                Ok(rx) => rx.await.map_err(|_| StorageError::Closed).and_then(|r| r),
                Err(e) => Err(e),
            };
            let failed = result.is_err();
            if !failed {
                crate::metrics::with(|m| {
                    m.append_duration
                        .record(self.started.elapsed().as_secs_f64(), &[])
                });
            }
            out.push(result);
            if failed {
                break;
            }
        }
        out
    }
}

impl crate::AsyncAppend for Store {
    fn append_max_events(&self) -> usize {
        self.config().append_max_events
    }

    fn append_chunks<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
        chunks: Vec<Vec<Event>>,
        metadata: Metadata,
    ) -> crate::append::AppendChunks<'a> {
        Box::pin(self.append_chunks_async(stream, version, chunks, metadata))
    }

    fn append_chunks_with<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
        chunks: Vec<Vec<Event>>,
        metadata: Metadata,
        durability: crate::Durability,
    ) -> crate::append::AppendChunks<'a> {
        Box::pin(self.append_chunks_durable(stream, version, chunks, metadata, durability))
    }

    fn append_pipelined<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
        appends: Vec<(Vec<Event>, Metadata)>,
        durability: crate::Durability,
    ) -> crate::append::AppendChunks<'a> {
        Box::pin(Store::append_pipelined(
            self, stream, version, appends, durability,
        ))
    }
}

/// Most bytes a `WriteBatch` entry takes besides its key and value: a
/// type tag, a column family id and two lengths (varints of at most 5
/// bytes each).
pub(super) const BATCH_ENTRY_OVERHEAD_BYTES: usize = 16;

/// Bytes of a `WriteBatch`'s header (sequence number and entry count).
pub(super) const BATCH_HEADER_BYTES: usize = 12;

/// The rows of one write besides its view rows: log, stream index and
/// `meta` rows, held until the write so that its `WriteBatch` is allocated
/// once, at its final size ([`Inner::batch`]).
///
/// Decision: a batch grown row by row (RocksDB appends each to a
/// `std::string`) was copied into a new buffer at every doubling, and its
/// fresh pages faulted in each time: a tenth of the writer's time while a
/// replica caught up. The rows are kept in order per family; the order
/// across families within one atomic batch changes nothing.
#[derive(Debug, Default)]
pub(super) struct CommitRows {
    rows: Vec<(Column, Vec<u8>, Vec<u8>)>,
    /// The `log` rows, `(seq, encoded envelope)` in seq order: apart, so
    /// that the commit can keep their bytes once written (see
    /// `super::recent`).
    log: Vec<(u64, Vec<u8>)>,
    /// What the rows take in a `WriteBatch`, at most.
    bytes: usize,
}

impl CommitRows {
    pub(super) fn put(
        &mut self,
        column: Column,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) {
        let (key, value) = (key.into(), value.into());
        self.bytes += key.len() + value.len() + BATCH_ENTRY_OVERHEAD_BYTES;
        self.rows.push((column, key, value));
    }

    /// The `log` row of `seq`: `bytes`, the envelope's encoding.
    pub(super) fn put_log(&mut self, seq: u64, bytes: Vec<u8>) {
        self.bytes += 8 + bytes.len() + BATCH_ENTRY_OVERHEAD_BYTES;
        self.log.push((seq, bytes));
    }
}

impl Overlay {
    /// What the overlay's rows take in a `WriteBatch`, at most.
    fn batch_bytes(&self) -> usize {
        let views: usize = self
            .rows
            .iter()
            .flatten()
            .map(|(key, value)| {
                key.len() + value.as_ref().map_or(0, Vec::len) + BATCH_ENTRY_OVERHEAD_BYTES
            })
            .sum();
        let refs: usize = self
            .blob_refs
            .keys()
            .map(|(view, _)| view.len() + 1 + 32 + 8 + BATCH_ENTRY_OVERHEAD_BYTES)
            .sum();
        views + refs
    }
}

impl Inner {
    /// One `WriteBatch` of `rows` and the overlay's rows, allocated at its
    /// final size; sets the blob reference counts the overlay changed in
    /// `counts` (the writer's: whoever writes the batch empties them if
    /// the write fails). Hands back the `log` rows (their bytes are
    /// copied into the batch, not consumed).
    pub(super) fn batch(
        &self,
        rows: CommitRows,
        overlay: Overlay,
        counts: &mut BlobRefCounts,
    ) -> (WriteBatch, Vec<(u64, Vec<u8>)>) {
        let capacity = BATCH_HEADER_BYTES + rows.bytes + overlay.batch_bytes();
        let mut batch = WriteBatch::with_capacity_bytes(capacity);
        let (log, streams, meta) = (
            self.cf(Column::Log),
            self.cf(Column::Streams),
            self.cf(Column::Meta),
        );
        for (seq, value) in &rows.log {
            batch.put_cf(log, keys::seq_key(*seq), value);
        }
        for (column, key, value) in rows.rows {
            let family = match column {
                Column::Log => log,
                Column::Streams => streams,
                Column::Meta => meta,
                other => self.cf(other),
            };
            batch.put_cf(family, key, value);
        }
        self.write_overlay(overlay, &mut batch, counts);
        debug_assert!(
            batch.size_in_bytes() <= capacity,
            "a batch of {} bytes outgrew the {capacity} allocated",
            batch.size_in_bytes()
        );
        (batch, rows.log)
    }

    /// Adds the overlay's rows to `batch`, and sets the blob reference
    /// counts it changed in `counts`.
    fn write_overlay(&self, overlay: Overlay, batch: &mut WriteBatch, counts: &mut BlobRefCounts) {
        if !overlay.blob_refs.is_empty() {
            let family = self.cf(Column::BlobRefs);
            // In key order: `BlobRefId`s sort as their keys do.
            for ((view, digest), count) in overlay.blob_refs {
                let key = keys::blob_ref_key(view, &digest);
                if count > 0 {
                    batch.put_cf(family, key, count.to_be_bytes());
                } else {
                    batch.delete_cf(family, key);
                }
                counts.set((view, digest), count);
            }
        }
        for (cf, rows) in overlay.rows.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let family = if cf == BLOB_REFS_CF {
                self.cf(Column::BlobRefs)
            } else {
                self.view_cf_at(cf - 1)
            };
            // In key order (see [`Overlay`]).
            for (key, value) in rows {
                match value {
                    Some(v) => batch.put_cf(family, key, v),
                    None => batch.delete_cf(family, key),
                }
            }
        }
    }
}

pub(super) fn now() -> pbjson_types::Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos() as i32,
    }
}

/// Most stream heads the writer keeps in memory.
pub(super) const HEAD_CACHE_MAX_STREAMS: usize = 65_536;

/// The checks every replicated envelope gets, whoever assigned its `seq`
/// (see [`check_replicated_fields`]), and its log row: `row`, made from
/// the bytes the envelope arrived in ([`envelope::encode_with_seq`]), or
/// else the envelope encoded. Answers the stream and the row's bytes.
fn check_replicated(
    inner: &Inner,
    env: &Envelope,
    row: Option<envelope::Resequenced>,
) -> Result<(StreamId, Vec<u8>), StorageError> {
    let (bytes, event_bytes) = match row {
        Some(row) => (row.bytes, row.event_bytes),
        None => (
            envelope::encode(env),
            env.event.as_ref().map_or(0, prost::Message::encoded_len),
        ),
    };
    let stream = check_replicated_fields(inner, env, env.seq, event_bytes)?;
    Ok((stream, bytes))
}

/// What reads will do with the stored row (a schema version this build
/// does not understand, no payload), the event's size (`event_bytes`,
/// encoded), the stream id, and ids and trace context fit for the NATS
/// headers the Publisher copies them into. Errors name the event by `seq`.
/// Answers the stream.
fn check_replicated_fields(
    inner: &Inner,
    env: &Envelope,
    seq: u64,
    event_bytes: usize,
) -> Result<StreamId, StorageError> {
    // `env` was decoded from the replicated message, so its encoding decodes
    // again: checking the schema version and the payload on it is what a
    // read of the row would check (without a second decode per event).
    if env.schema_version != envelope::SCHEMA_VERSION {
        let e = cairn_events::EventsError::UnsupportedSchema {
            found: env.schema_version,
            supported: envelope::SCHEMA_VERSION,
        };
        return Err(StorageError::InvalidReplicated(format!(
            "event at seq {seq}: {e}"
        )));
    }
    envelope::kind(env)
        .map_err(|e| StorageError::InvalidReplicated(format!("event at seq {seq}: {e}")))?;
    if event_bytes > inner.config.event_max_bytes {
        return Err(StorageError::InvalidReplicated(format!(
            "event at seq {seq} is {event_bytes} bytes, at most {} allowed",
            inner.config.event_max_bytes
        )));
    }
    let stream = StreamId::new(env.stream.clone())
        .map_err(|e| StorageError::InvalidReplicated(format!("event at seq {seq}: {e}")))?;
    // The Publisher copies these into NATS headers (the event id is
    // the Nats-Msg-Id): the same checks appends get, plus an id.
    if env.event_id.is_empty() {
        return Err(StorageError::InvalidReplicated(format!(
            "event at seq {seq}: event id is empty"
        )));
    }
    let trace = env.trace.as_ref();
    check_header_fields(&[
        ("event id", env.event_id.as_str()),
        ("correlation id", env.correlation_id.as_str()),
        ("causation id", env.causation_id.as_str()),
        ("principal", env.principal.as_str()),
        ("traceparent", trace.map_or("", |t| t.traceparent.as_str())),
        ("tracestate", trace.map_or("", |t| t.tracestate.as_str())),
        ("request id", env.request_id.as_str()),
    ])
    .map_err(|why| StorageError::InvalidReplicated(format!("event at seq {seq}: {why}")))?;
    Ok(stream)
}

/// The writer thread's state: the only code that assigns sequence numbers.
pub(super) struct Writer {
    pub(super) inner: Arc<Inner>,
    pub(super) last_seq: u64,
    /// Current version of recently appended streams. Exact, because the
    /// writer is the only code that appends; cleared when full or when a
    /// group fails to commit.
    pub(super) heads: HashMap<StreamId, u64>,
    /// The blob reference counts it last committed (see `super::refs`).
    pub(super) ref_counts: BlobRefCounts,
}

impl Writer {
    /// What this writer's folds read: the store's rows, with the blob
    /// reference counts it holds.
    fn rows<'a>(&'a self, inner: &'a Inner) -> WriterRows<'a> {
        WriterRows {
            inner,
            counts: &self.ref_counts,
        }
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut next = rx.blocking_recv();
        while let Some(command) = next.take() {
            match command {
                Command::Append(request, reply) => {
                    next = self.group_commit(vec![(request, reply)], &mut rx);
                }
                Command::AppendMany(appends) => next = self.group_commit(appends, &mut rx),
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
                Command::DeleteUnreferencedBlobs(candidates, prefixes, reply) => {
                    let _ = reply.send(self.delete_unreferenced_blobs(candidates, &prefixes));
                }
                Command::Replicate(commit, reply) => {
                    let _ = reply.send(self.apply_replicated(commit));
                }
                Command::Sequence(commits, reply) => {
                    let _ = reply.send(self.apply_sequenced(commits));
                }
                Command::Compact(policy, now, reply) => {
                    let _ = reply.send(self.compact(&*policy, now));
                }
                Command::Checkpoint(dir, reply) => {
                    let _ = reply.send(self.checkpoint(dir));
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

    /// Commits `group` with every append queued behind it, up to
    /// `group-commit-max-events` (a pipelined call's appends, sent in
    /// messages of at most that many events, are taken whole or left for
    /// the next group). Answers the command that ended the group, if one
    /// did.
    fn group_commit(
        &mut self,
        mut group: Vec<(AppendRequest, Reply<Appended>)>,
        rx: &mut mpsc::Receiver<Command>,
    ) -> Option<Command> {
        let mut next = None;
        let mut events: usize = group.iter().map(|(r, _)| r.events.len()).sum();
        while events < self.inner.config.group_commit_max_events {
            match rx.try_recv() {
                Ok(Command::Append(request, reply)) => {
                    events += request.events.len();
                    group.push((request, reply));
                }
                Ok(Command::AppendMany(appends)) => {
                    let more: usize = appends.iter().map(|(r, _)| r.events.len()).sum();
                    if events + more > self.inner.config.group_commit_max_events {
                        // The next group's (this one stays within
                        // `replicated_commit_max_events`).
                        next = Some(Command::AppendMany(appends));
                        break;
                    }
                    events += more;
                    group.extend(appends);
                }
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        self.commit_group(group);
        next
    }

    pub(super) fn commit_group(&mut self, group: Vec<(AppendRequest, Reply<Appended>)>) {
        let inner = self.inner.clone();
        let mut rows = CommitRows::default();
        let mut overlay = Overlay::default();
        let mut heads: HashMap<StreamId, u64> = HashMap::new();
        let mut seq = self.last_seq;
        let recorded_at = now();
        let mut outcomes: Vec<(Reply<Appended>, Result<Appended, StorageError>)> =
            Vec::with_capacity(group.len());
        let all = |_: usize| true;
        let sync = group.iter().any(|(request, _)| request.sync);

        let mut group = group.into_iter();
        while let Some((request, reply)) = group.next() {
            let actual = match self.head(&heads, &request.stream) {
                Ok(v) => v,
                Err(e) => {
                    outcomes.push((reply, Err(e)));
                    continue;
                }
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
                    request_id: request.metadata.request_id.clone(),
                    request_digest: request.metadata.request_digest.clone(),
                };
                rows.put_log(seq, envelope::encode(&env));
                rows.put(
                    Column::Streams,
                    keys::stream_key(&request.stream, version),
                    keys::seq_key(seq),
                );
                if let Err(e) = fold(&inner.views, &all, &mut overlay, &self.rows(&inner), &env) {
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
            // Always collected (pointers): an observer added while this
            // group is written must not miss it.
            let observed: Vec<&Envelope> = outcomes
                .iter()
                .filter_map(|(_, o)| o.as_ref().ok())
                .flat_map(|a| &a.envelopes)
                .collect();
            let written = self.write_commit(rows, overlay, seq, heads, sync, &observed);
            drop(observed);
            if let Err(e) = written {
                warn!(error = %e, "group commit failed");
                for (reply, outcome) in outcomes {
                    let _ = reply.send(outcome.and(Err(StorageError::Rocks(e.clone()))));
                }
                return;
            }
            let committed = outcomes.iter().filter(|(_, o)| o.is_ok()).count() as u64;
            inner.appends.fetch_add(committed, Ordering::Relaxed);
            crate::metrics::with(|m| m.group_commit_appends.record(committed, &[]));
        }
        for (reply, outcome) in outcomes {
            let _ = reply.send(outcome);
        }
    }

    /// Completes `rows` (log and index rows) with the view rows of
    /// `overlay`, the last sequence number `seq` and every view's
    /// checkpoint, writes them as one synced `WriteBatch`, and advances the
    /// writer's state. Shared by appends and replicated commits, so both
    /// write exactly the same rows.
    fn write_commit(
        &mut self,
        mut rows: CommitRows,
        overlay: Overlay,
        seq: u64,
        heads: HashMap<StreamId, u64>,
        sync: bool,
        observed: &[&Envelope],
    ) -> Result<(), rocksdb::Error> {
        let inner = self.inner.clone();
        rows.put(Column::Meta, meta::LAST_SEQ, seq.to_be_bytes());
        for view in &inner.views {
            rows.put(
                Column::Meta,
                meta::checkpoint(view.name()),
                seq.to_be_bytes(),
            );
        }
        let (batch, log_rows) = inner.batch(rows, overlay, &mut self.ref_counts);
        let mut options = WriteOptions::default();
        let sync = inner.config.sync && sync;
        options.set_sync(sync);
        if let Err(e) = inner.db.write_opt(batch, &options) {
            // The counts set for this batch are not the rows'.
            self.ref_counts.clear();
            return Err(e);
        }
        // Before anything is told of the write: cached rows read before it
        // stop counting now (see `Inner::written`).
        inner.written.store(seq, Ordering::Release);
        inner.batches.fetch_add(1, Ordering::Relaxed);
        if sync {
            inner.synced_batches.fetch_add(1, Ordering::Relaxed);
        }
        self.last_seq = seq;
        if self.heads.len() + heads.len() > HEAD_CACHE_MAX_STREAMS {
            self.heads.clear();
        }
        self.heads.extend(heads);
        // Before the seq is announced too: a reader that saw it finds its
        // rows in memory.
        if inner.retain_recent.load(Ordering::Relaxed) {
            inner.recent.lock().push(log_rows);
        }
        // Observers first: once the seq is announced, what they keep in
        // memory already reflects it (see `crate::observe`).
        if !observed.is_empty() {
            let views = super::read::CommittedViews { inner: &inner };
            for observer in inner.observers.read().iter() {
                observer.committed(observed, &views);
            }
        }
        inner.committed.send_replace(seq);
        Ok(())
    }

    /// The current version of `stream`: from this batch's `heads`, the
    /// writer's cache, or the index.
    fn head(&self, heads: &HashMap<StreamId, u64>, stream: &StreamId) -> Result<u64, StorageError> {
        match heads.get(stream).or_else(|| self.heads.get(stream)) {
            Some(v) => Ok(*v),
            None => self.inner.stream_version(stream),
        }
    }

    /// See [`Store::apply_sequenced_async`].
    fn apply_sequenced(
        &mut self,
        commits: Vec<SequencedCommit>,
    ) -> Result<Vec<Sequenced>, StorageError> {
        let inner = self.inner.clone();
        let mut position = inner.meta_u64(meta::REPLICATION_POSITION)?.unwrap_or(0);
        let mut rows = CommitRows::default();
        let mut overlay = Overlay::default();
        let mut heads: HashMap<StreamId, u64> = HashMap::new();
        let all = |_: usize| true;
        let mut seq = self.last_seq;
        let mut outcomes = Vec::with_capacity(commits.len());
        let max_events = inner.config.replicated_commit_max_events();
        let mut applied: Vec<Envelope> = Vec::new();
        for commit in commits {
            if commit.position <= position {
                outcomes.push(Sequenced::AlreadyApplied);
                continue;
            }
            position = commit.position;
            if let Some(why) = commit.refused {
                outcomes.push(Sequenced::Refused(why));
                continue;
            }
            if commit.envelopes.is_empty() {
                outcomes.push(Sequenced::Empty);
                continue;
            }
            if commit.envelopes.len() > max_events {
                outcomes.push(Sequenced::Refused(format!(
                    "{} events in one commit, at most {max_events} allowed",
                    commit.envelopes.len()
                )));
                continue;
            }
            // Checked whole before anything of it is folded: a refusal
            // leaves no trace in the batch.
            let mut checked = Vec::with_capacity(commit.envelopes.len());
            let mut versions: HashMap<StreamId, u64> = HashMap::new();
            let mut refused = None;
            let spliceable = commit.encoded.len() == commit.envelopes.len();
            for (i, mut env) in commit.envelopes.into_iter().enumerate() {
                env.seq = seq + 1 + i as u64;
                let row = spliceable
                    .then(|| envelope::encode_with_seq(&commit.encoded[i], env.seq))
                    .flatten();
                let (stream, bytes) = match check_replicated(&inner, &env, row) {
                    Ok(checked) => checked,
                    Err(StorageError::InvalidReplicated(why)) => {
                        refused = Some(why);
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let version = match versions.get(&stream) {
                    Some(v) => *v,
                    None => self.head(&heads, &stream)?,
                };
                if env.stream_version != version + 1 {
                    refused = Some(format!(
                        "stream {stream} is at version {version}; an event of version {} does not continue it",
                        env.stream_version
                    ));
                    break;
                }
                versions.insert(stream.clone(), env.stream_version);
                checked.push((env, stream, bytes));
            }
            if let Some(why) = refused {
                outcomes.push(Sequenced::Refused(why));
                continue;
            }
            let first_seq = seq + 1;
            for (env, stream, bytes) in checked {
                rows.put_log(env.seq, bytes);
                rows.put(
                    Column::Streams,
                    keys::stream_key(&stream, env.stream_version),
                    keys::seq_key(env.seq),
                );
                fold(&inner.views, &all, &mut overlay, &self.rows(&inner), &env)?;
                heads.insert(stream, env.stream_version);
                seq = env.seq;
                applied.push(env);
            }
            outcomes.push(Sequenced::Applied {
                first_seq,
                last_seq: seq,
            });
        }
        rows.put(
            Column::Meta,
            meta::REPLICATION_POSITION,
            position.to_be_bytes(),
        );
        // Not fsynced: the replicated order (JetStream, on a quorum) is
        // what makes these events durable. A crash loses at most a tail of
        // whole batches — events and position together, as the WAL
        // recovers a prefix — and the applier applies that tail again
        // from the position, to the same seqs.
        let observed: Vec<&Envelope> = applied.iter().collect();
        self.write_commit(rows, overlay, seq, heads, false, &observed)?;
        Ok(outcomes)
    }

    /// See [`crate::ReplicatedLog::apply_replicated`].
    fn apply_replicated(&mut self, commit: Vec<Envelope>) -> Result<Replicated, StorageError> {
        let inner = self.inner.clone();
        if commit.is_empty() {
            return Err(StorageError::InvalidReplicated("no events".into()));
        }
        let max_events = inner.config.replicated_commit_max_events();
        if commit.len() > max_events {
            return Err(StorageError::InvalidReplicated(format!(
                "{} events in one commit, at most {max_events} allowed",
                commit.len()
            )));
        }
        let mut checked = Vec::with_capacity(commit.len());
        for (i, env) in commit.into_iter().enumerate() {
            if let Some((previous, _, _)) = checked.last() {
                let previous: &Envelope = previous;
                if previous.seq.checked_add(1) != Some(env.seq) {
                    return Err(StorageError::InvalidReplicated(format!(
                        "seq {} follows seq {}: a commit's events are consecutive",
                        env.seq, previous.seq
                    )));
                }
            }
            if env.seq == 0 || env.stream_version == 0 {
                return Err(StorageError::InvalidReplicated(format!(
                    "event {i} has seq {} and stream version {}; both start at 1",
                    env.seq, env.stream_version
                )));
            }
            let (stream, bytes) = check_replicated(&inner, &env, None)?;
            checked.push((env, stream, bytes));
        }
        // The prefix this log holds already must be identical, and is skipped.
        let log_cf = inner.cf(Column::Log);
        let mut fresh = Vec::with_capacity(checked.len());
        for (env, stream, bytes) in checked {
            if env.seq > self.last_seq {
                fresh.push((env, stream, bytes));
                continue;
            }
            match inner.db.get_pinned_cf(log_cf, keys::seq_key(env.seq))? {
                Some(stored) if *stored == *bytes => {}
                // Compacted away here: it was applied, and is superseded.
                None if env.seq <= inner.compacted_through() => {}
                _ => return Err(StorageError::ReplicaDiverged { seq: env.seq }),
            }
        }
        let Some(first) = fresh.first().map(|(env, _, _)| env.seq) else {
            return Ok(Replicated::AlreadyApplied {
                last_seq: self.last_seq,
            });
        };
        let next = self.last_seq.checked_add(1).ok_or_else(|| {
            StorageError::Corrupt(format!(
                "the log's last seq {} has no successor",
                self.last_seq
            ))
        })?;
        if first != next {
            return Err(StorageError::ReplicationGap {
                what: "seq".into(),
                expected: next,
                found: first,
            });
        }
        let mut rows = CommitRows::default();
        let mut overlay = Overlay::default();
        let mut heads: HashMap<StreamId, u64> = HashMap::new();
        let all = |_: usize| true;
        let mut seq = self.last_seq;
        let mut applied = Vec::with_capacity(fresh.len());
        for (env, stream, bytes) in fresh {
            let version = self.head(&heads, &stream)?;
            let expected = version.checked_add(1).ok_or_else(|| {
                StorageError::Corrupt(format!(
                    "stream {stream} version {version} has no successor"
                ))
            })?;
            if env.stream_version != expected {
                return Err(StorageError::ReplicationGap {
                    what: format!("stream {stream} version"),
                    expected,
                    found: env.stream_version,
                });
            }
            rows.put_log(env.seq, bytes);
            rows.put(
                Column::Streams,
                keys::stream_key(&stream, env.stream_version),
                keys::seq_key(env.seq),
            );
            fold(&inner.views, &all, &mut overlay, &self.rows(&inner), &env)?;
            heads.insert(stream, env.stream_version);
            seq = env.seq;
            applied.push(env);
        }
        let observed: Vec<&Envelope> = applied.iter().collect();
        self.write_commit(rows, overlay, seq, heads, true, &observed)?;
        Ok(Replicated::Applied {
            first_seq: first,
            last_seq: seq,
        })
    }

    /// At open: finish interrupted rebuilds and bring every view up to the
    /// end of the log (a view added by a newer build starts from 0).
    pub(super) fn recover_views(&mut self) -> Result<(), StorageError> {
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

    pub(super) fn rebuild(
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
        // 2. Clear rows and blob references (and the counts held of them).
        self.ref_counts.clear();
        for (i, view) in inner.views.iter().enumerate().filter(|(i, _)| selected[*i]) {
            self.clear(inner.view_cf_at(i), b"")?;
            self.clear(
                inner.cf(Column::BlobRefs),
                &keys::blob_ref_prefix(view.name()),
            )?;
        }
        inner.bump_cache_epoch();
        // 3. Replay the whole log into them.
        let from: Vec<Option<u64>> = selected.iter().map(|s| s.then_some(0)).collect();
        let events = self.replay(&from, progress)?;
        // A compacted log has fewer events than sequence numbers.
        if events != self.last_seq && inner.compacted_through() == 0 {
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

    pub(super) fn clear(&self, cf: &ColumnFamily, prefix: &[u8]) -> Result<(), StorageError> {
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
    pub(super) fn replay(
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
        while next <= self.last_seq {
            let chunk = inner.read_all(next, inner.config.replay_batch_events.max(1))?;
            let Some(last) = chunk.last().map(|e| e.seq) else {
                break;
            };
            let mut overlay = Overlay::default();
            for env in &chunk {
                let wanted = |i: usize| from[i].is_some_and(|cp| env.seq > cp);
                fold(&inner.views, &wanted, &mut overlay, &self.rows(&inner), env)?;
            }
            let mut rows = CommitRows::default();
            for (i, view) in inner.views.iter().enumerate() {
                if from[i].is_some_and(|cp| last > cp) {
                    rows.put(
                        Column::Meta,
                        meta::checkpoint(view.name()),
                        last.to_be_bytes(),
                    );
                }
            }
            let (batch, _) = inner.batch(rows, overlay, &mut self.ref_counts);
            if let Err(e) = inner.db.write(batch) {
                // The counts set for this batch are not the rows'.
                self.ref_counts.clear();
                return Err(e.into());
            }
            // Rows changed with no new seq: cached ones stop counting.
            inner.bump_cache_epoch();
            done += chunk.len() as u64;
            next = last + 1;
            if let Some(progress) = &progress {
                progress(done, total);
            }
        }
        Ok(done)
    }
}
