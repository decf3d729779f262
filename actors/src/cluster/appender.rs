//! [`ClusterAppend`]: the [`AsyncAppend`] a stream's owner writes through in
//! a cluster. An append becomes commits published to the stream's subject
//! of `CAIRN_LOG`, fenced with `Nats-Expected-Last-Subject-Sequence`; it
//! answers once JetStream stored them on a quorum **and** this node's
//! applier wrote them to its log and views (read-your-writes), with the
//! sequence numbers the order gave them.
//!
//! A node writes a stream only after [`ClusterAppend::take`]: it publishes
//! a fence (moving the subject's sequence past anything a previous owner
//! could still expect), waits until it has applied everything up to it, and
//! from then on expects its own last publish. A publish refused for a wrong
//! last subject sequence means another node took the stream: the lease is
//! dropped here (the node steps down) and the command answers 503 naming
//! the cause; nothing of it entered the log.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage as Publish};
use cairn_events::{
    envelope::{self, Metadata},
    v1::{Envelope, Event},
    StreamId, SCHEMA_VERSION,
};
use cairn_storage::{append::AppendChunks, Appended, AsyncAppend, Sequenced, StorageError, Store};

use super::{
    blobs::Blobs,
    log::{encode_commit, encoded_size, subject_of, Applied, FENCE_HEADER},
};

/// Room left in each commit message for headers.
const HEADER_ROOM_BYTES: usize = 4 * 1024;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ClusterAppend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: String,
    js: jetstream::Context,
    store: Store,
    blobs: Blobs,
    applied: Applied,
    message_max_bytes: usize,
    apply_wait: Duration,
    /// Streams this node writes or is taking (see [`Owned`]).
    owned: Mutex<HashMap<StreamId, Owned>>,
    /// The number of the next take.
    next_take: std::sync::atomic::AtomicU64,
    /// Told when the appender gives a stream up by itself.
    abandon: std::sync::OnceLock<AbandonNotice>,
}

/// A stream this node takes or took: which take, and the last subject
/// sequence it knows. Appends carry their take's number, so that what an
/// append of an earlier take does late (its ack, its giving up) never
/// touches a later take of the same stream.
#[derive(Debug, Clone, Copy)]
struct Owned {
    /// The take's number ([`ClusterAppend::take`]).
    take: u64,
    /// `None` while the take runs, and once the appender gave the stream
    /// up by itself (until the ownership loop releases it).
    expected: Option<u64>,
}

/// What [`ClusterAppend::on_abandon`] calls: the stream and the number of
/// the take that gave it up.
pub struct AbandonNotice(Box<dyn Fn(StreamId, u64) + Send + Sync>);

impl std::fmt::Debug for AbandonNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AbandonNotice")
    }
}

impl ClusterAppend {
    /// An appender for node `node`; commits are at most `max_payload` bytes
    /// (the server's), and an append waits at most `apply_wait` for this
    /// node to apply what JetStream stored.
    pub fn new(
        node: impl Into<String>,
        js: jetstream::Context,
        store: Store,
        blobs: Blobs,
        applied: Applied,
        max_payload: usize,
        apply_wait: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                node: node.into(),
                js,
                store,
                blobs,
                applied,
                message_max_bytes: max_payload.saturating_sub(HEADER_ROOM_BYTES).max(1024),
                apply_wait,
                owned: Mutex::default(),
                next_take: std::sync::atomic::AtomicU64::new(1),
                abandon: std::sync::OnceLock::new(),
            }),
        }
    }

    /// What this node's applier reached.
    pub fn applied(&self) -> &Applied {
        &self.inner.applied
    }

    /// Ships blob `digest` (held by this node's store) to `CAIRN_BLOBS`
    /// for another node's append: the node that downloaded an artifact
    /// body ships it, then sends the stream's owner the record.
    pub async fn ship_blob(&self, digest: cairn_storage::Digest) -> Result<(), StorageError> {
        self.inner
            .blobs
            .ship_digests(&self.inner.store, &[digest])
            .await
    }

    /// Blob `digest` pinned in this node's store, fetched from
    /// `CAIRN_BLOBS` when the store lacks it (another node shipped it).
    pub async fn ensure_blob(
        &self,
        digest: cairn_storage::Digest,
    ) -> Result<cairn_storage::BlobPin, StorageError> {
        self.inner
            .blobs
            .ensure_one(&self.inner.store, digest)
            .await
            .map_err(|e| StorageError::Unavailable(format!("blob {digest}: {e}")))
    }

    /// The node this appender writes for.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The last seq this node's log holds.
    pub fn applied_seq(&self) -> u64 {
        cairn_storage::EventLog::last_seq(&self.inner.store).unwrap_or(0)
    }

    /// Starts writing `stream` (the node holds its lease): publishes a fence
    /// and waits until everything before it is applied here. Answers the
    /// fence's position.
    pub async fn take(&self, stream: &StreamId) -> Result<u64, StorageError> {
        let take = self
            .inner
            .next_take
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.owned.lock().expect("owned lock").insert(
            stream.clone(),
            Owned {
                take,
                expected: None,
            },
        );
        let taken = self.fence(stream).await;
        let mut owned = self.inner.owned.lock().expect("owned lock");
        match (owned.get_mut(stream), &taken) {
            (Some(o), Ok(position)) if o.take == take => o.expected = Some(*position),
            (Some(o), Err(_)) if o.take == take => {
                owned.remove(stream);
            }
            _ => {}
        }
        taken
    }

    /// Publishes a fence on `stream` and waits until it is applied here.
    async fn fence(&self, stream: &StreamId) -> Result<u64, StorageError> {
        let publish = Publish::build()
            .header(FENCE_HEADER, self.inner.node.as_str())
            .payload(bytes::Bytes::new());
        let ack = self
            .inner
            .js
            .send_publish(subject_of(stream), publish)
            .await
            .map_err(|e| unavailable(stream, e))?
            .await
            .map_err(|e| unavailable(stream, e))?;
        self.inner
            .applied
            .wait_for(ack.sequence, self.inner.apply_wait)
            .await?;
        Ok(ack.sequence)
    }

    /// Stops writing `stream` (its lease is released or lost).
    pub fn release(&self, stream: &StreamId) {
        self.inner.owned.lock().expect("owned lock").remove(stream);
    }

    /// Who to tell when the appender gives a stream up by itself (the
    /// ownership loop, which then steps down so the writer's state is
    /// loaded again from the log), with the number of the take given up.
    /// Set once.
    pub fn on_abandon(&self, notify: Box<dyn Fn(StreamId, u64) + Send + Sync>) {
        let _ = self.inner.abandon.set(AbandonNotice(notify));
    }

    /// Whether take number `take` is the last take of `stream` and not yet
    /// released: a notice of an earlier take is stale (the stream was
    /// released and taken again since, or is being taken again).
    pub fn is_current_take(&self, stream: &StreamId, take: u64) -> bool {
        self.inner
            .owned
            .lock()
            .expect("owned lock")
            .get(stream)
            .is_some_and(|o| o.take == take)
    }

    /// Gives take `take` of `stream` up after a failure that leaves the
    /// writer's state in doubt, and says so; nothing when a later take
    /// holds the stream (or none does).
    fn abandon(&self, stream: &StreamId, take: u64) {
        {
            let mut owned = self.inner.owned.lock().expect("owned lock");
            match owned.get_mut(stream) {
                Some(o) if o.take == take && o.expected.is_some() => o.expected = None,
                _ => {
                    tracing::debug!(stream = %stream, take, "nothing to give up: the take was given up already, or the stream was released since");
                    return;
                }
            }
        }
        if let Some(notify) = self.inner.abandon.get() {
            (notify.0)(stream.clone(), take);
        }
    }

    /// Whether this node writes `stream` now.
    pub fn owns(&self, stream: &StreamId) -> bool {
        self.inner
            .owned
            .lock()
            .expect("owned lock")
            .get(stream)
            .is_some_and(|o| o.expected.is_some())
    }

    /// Appends of one metadata, each chunk an append of its own.
    async fn append_all(
        &self,
        stream: &StreamId,
        version: u64,
        chunks: Vec<Vec<Event>>,
        metadata: Metadata,
    ) -> Vec<Result<Appended, StorageError>> {
        let metadata = metadata.normalized();
        let groups = chunks
            .into_iter()
            .map(|events| (events, metadata.clone()))
            .collect();
        self.append_groups(stream, version, groups).await
    }

    /// Appends `groups` (each an append with its own metadata, at
    /// consecutive versions from `version`) packed into as few commits as
    /// fit a message ([`pack`]: whole appends together; one larger than a
    /// message is cut), each published fenced and answered once applied
    /// here. Answers each append's outcome up to and including the first
    /// failure (nothing after it was published). Appends packed in one
    /// commit are applied or refused together.
    async fn append_groups(
        &self,
        stream: &StreamId,
        version: u64,
        groups: Vec<(Vec<Event>, Metadata)>,
    ) -> Vec<Result<Appended, StorageError>> {
        let inner = &self.inner;
        let max = inner.store.config().append_max_events;
        let Some((take, mut expected)) = inner
            .owned
            .lock()
            .expect("owned lock")
            .get(stream)
            .and_then(|o| Some((o.take, o.expected?)))
        else {
            return vec![Err(StorageError::Unavailable(format!(
                "node {} does not own stream {stream}",
                inner.node
            )))];
        };
        // Envelopes of every append, checked; an invalid append fails with
        // nothing after it published.
        let recorded_at = crate::repository::timestamp(SystemTime::now());
        let mut built: Vec<Vec<Envelope>> = Vec::with_capacity(groups.len());
        let mut next_version = version;
        let mut invalid = None;
        for (events, metadata) in groups {
            if events.len() > max {
                invalid = Some(StorageError::InvalidAppend(format!(
                    "{} events in one append, at most {max} allowed",
                    events.len()
                )));
                break;
            }
            let metadata = metadata.normalized();
            let mut envelopes = Vec::with_capacity(events.len());
            for event in events {
                next_version += 1;
                envelopes.push(Envelope {
                    schema_version: SCHEMA_VERSION,
                    event_id: envelope::new_id(),
                    stream: stream.to_string(),
                    stream_version: next_version,
                    seq: 0,
                    recorded_at: Some(recorded_at),
                    correlation_id: metadata.correlation_id.clone(),
                    causation_id: metadata.causation_id.clone(),
                    principal: metadata.principal.clone(),
                    trace: metadata.trace.clone(),
                    event: Some(event),
                    request_id: metadata.request_id.clone(),
                    request_digest: metadata.request_digest.clone(),
                });
            }
            let checked = envelopes.iter().try_for_each(|env| {
                inner.store.check_envelope(env).map_err(|e| match e {
                    StorageError::InvalidReplicated(why) => StorageError::InvalidAppend(why),
                    other => other,
                })
            });
            if let Err(e) = checked {
                invalid = Some(e);
                break;
            }
            built.push(envelopes);
        }
        for envelopes in &built {
            if let Err(e) = inner.blobs.ship(&inner.store, envelopes).await {
                return vec![Err(e)];
            }
        }
        let lens: Vec<usize> = built.iter().map(Vec::len).collect();
        let messages = pack(
            built,
            inner.message_max_bytes,
            inner.store.config().replicated_commit_max_events(),
        );
        let subject = subject_of(stream);
        let mut committed: Vec<Vec<Envelope>> = vec![Vec::new(); lens.len()];
        for message in messages {
            let (owners, message): (Vec<usize>, Vec<Envelope>) = message.into_iter().unzip();
            let publish = Publish::build()
                .message_id(message[0].event_id.as_str())
                .expected_last_subject_sequence(expected)
                .header(super::log::NODE_HEADER, inner.node.as_str())
                .payload(encode_commit(&message));
            let sent = match inner.js.send_publish(subject.clone(), publish).await {
                Ok(sent) => sent,
                Err(e) => return finish(committed, &lens, Some(unavailable(stream, e))),
            };
            let ack = match sent.await {
                Ok(ack) => ack,
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    self.abandon(stream, take);
                    tracing::warn!(stream = %stream, node = %inner.node, "fenced: another node owns the stream now; stepping down");
                    return finish(committed, &lens, Some(StorageError::Unavailable(format!(
                        "stream {stream} was taken over by another node: this node's write was refused by the log (fenced) and it stepped down; retry"
                    ))));
                }
                Err(e) => {
                    // Sent but not confirmed: JetStream may still store it
                    // (a leader change commits what the old leader had).
                    return finish(committed, &lens, Some(StorageError::Unavailable(format!(
                        "the replicated log did not confirm the write to {stream} ({e}): it may still be recorded; retry with the same Cairn-Request-Id to learn its outcome"
                    ))));
                }
            };
            expected = ack.sequence;
            if let Some(o) = inner
                .owned
                .lock()
                .expect("owned lock")
                .get_mut(stream)
                .filter(|o| o.take == take)
            {
                o.expected = Some(ack.sequence);
            }
            let outcome = match inner.applied.wait_for(ack.sequence, inner.apply_wait).await {
                Ok(outcome) => outcome,
                Err(e) => return finish(committed, &lens, Some(e)),
            };
            match outcome {
                Some(Sequenced::Applied { first_seq, .. }) => {
                    for (i, (owner, mut env)) in owners.into_iter().zip(message).enumerate() {
                        env.seq = first_seq + i as u64;
                        committed[owner].push(env);
                    }
                }
                Some(Sequenced::Refused(why)) => {
                    // Another write of this stream reached the log first (a
                    // JetStream leader change can let two through): every
                    // node skipped this one.
                    self.abandon(stream, take);
                    return finish(committed, &lens, Some(StorageError::Unavailable(format!(
                        "the replicated log skipped this node's commit on {stream} ({why}): another write reached the log first; retry with the same Cairn-Request-Id"
                    ))));
                }
                other => {
                    // Read by an earlier run of the applier that failed
                    // after the store's writer took it, so its outcome was
                    // not recorded: the writer's state is reloaded, and
                    // the client learns the outcome by retrying with its
                    // key.
                    self.abandon(stream, take);
                    return finish(
                        committed,
                        &lens,
                        Some(StorageError::Unavailable(format!(
                            "the commit at position {} on {stream} is in the log, but this node's applier restarted before recording whether it applied it ({other:?}); retry with the same Cairn-Request-Id to learn its outcome",
                            ack.sequence
                        ))),
                    );
                }
            }
        }
        finish(committed, &lens, invalid)
    }
}

/// The outcome of each append: those whose envelopes all committed, in
/// order, then `error` (for the first that did not, or the invalid one
/// after them).
fn finish(
    committed: Vec<Vec<Envelope>>,
    lens: &[usize],
    error: Option<StorageError>,
) -> Vec<Result<Appended, StorageError>> {
    let mut out: Vec<Result<Appended, StorageError>> = committed
        .into_iter()
        .zip(lens)
        .take_while(|(envelopes, len)| envelopes.len() == **len)
        .map(|(envelopes, _)| Ok(Appended { envelopes }))
        .collect();
    if let Some(e) = error {
        out.push(Err(e));
    }
    out
}

/// Cuts appends (each its envelopes) into commit messages of at most
/// `max_bytes` and `max_events`: whole appends together while they fit,
/// an append that does not fit an empty message cut into several. Each
/// envelope with the index of its append.
fn pack(
    appends: Vec<Vec<Envelope>>,
    max_bytes: usize,
    max_events: usize,
) -> Vec<Vec<(usize, Envelope)>> {
    let max_events = max_events.max(1);
    let mut messages: Vec<Vec<(usize, Envelope)>> = Vec::new();
    let mut size = 0;
    for (index, envelopes) in appends.into_iter().enumerate() {
        let whole: usize = envelopes.iter().map(encoded_size).sum();
        let open = messages.last().map_or(0, Vec::len);
        if open > 0 && (size + whole > max_bytes || open + envelopes.len() > max_events) {
            messages.push(Vec::new());
            size = 0;
        }
        for env in envelopes {
            let n = encoded_size(&env);
            let open = messages.last().map_or(0, Vec::len);
            if messages.is_empty() || (open > 0 && (size + n > max_bytes || open >= max_events)) {
                messages.push(Vec::new());
                size = 0;
            }
            size += n;
            messages.last_mut().expect("a message").push((index, env));
        }
    }
    messages
}

impl AsyncAppend for ClusterAppend {
    fn append_max_events(&self) -> usize {
        self.inner.store.config().append_max_events
    }

    /// The appends of several commands (the key-value sets of a batch),
    /// packed into as few commits as fit a message: one JetStream round
    /// trip (and one apply) for many sets, not one each.
    fn append_pipelined<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
        appends: Vec<(Vec<Event>, Metadata)>,
        _durability: cairn_storage::Durability,
    ) -> AppendChunks<'a> {
        Box::pin(self.append_groups(stream, version, appends))
    }

    fn append_chunks<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
        chunks: Vec<Vec<Event>>,
        metadata: Metadata,
    ) -> AppendChunks<'a> {
        Box::pin(self.append_all(stream, version, chunks, metadata))
    }
}

fn unavailable(stream: &StreamId, e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(format!("replicated log unavailable for {stream}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelopes(n: usize, bytes: usize) -> Vec<Envelope> {
        (0..n)
            .map(|i| Envelope {
                stream: "kv/00".into(),
                stream_version: i as u64 + 1,
                event_id: "x".repeat(bytes),
                ..Default::default()
            })
            .collect()
    }

    /// (append index, count) runs of each message.
    fn shape(messages: &[Vec<(usize, Envelope)>]) -> Vec<Vec<usize>> {
        messages
            .iter()
            .map(|m| m.iter().map(|(i, _)| *i).collect())
            .collect()
    }

    #[test]
    fn appends_are_packed_whole_while_they_fit_and_a_large_one_is_cut() {
        let size = encoded_size(&envelopes(1, 100)[0]);
        // Three appends of 2 events fit two per message by bytes.
        let packed = pack(
            vec![envelopes(2, 100), envelopes(2, 100), envelopes(2, 100)],
            4 * size + 1,
            100,
        );
        assert_eq!(shape(&packed), [vec![0, 0, 1, 1], vec![2, 2]]);
        // By events: at most 3 per message, appends kept whole.
        let packed = pack(
            vec![envelopes(2, 100), envelopes(2, 100), envelopes(1, 100)],
            1 << 20,
            3,
        );
        assert_eq!(shape(&packed), [vec![0, 0], vec![1, 1, 2]]);
        // An append larger than a message is cut; the next one joins its
        // last message when it fits.
        let packed = pack(vec![envelopes(5, 100), envelopes(1, 100)], 2 * size, 100);
        assert_eq!(shape(&packed), [vec![0, 0], vec![0, 0], vec![0, 1]]);
    }
}
