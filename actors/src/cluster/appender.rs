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
    /// Streams this node writes, with the last subject sequence it knows.
    owned: Mutex<HashMap<StreamId, u64>>,
    /// Told when the appender gives a stream up by itself.
    abandon: std::sync::OnceLock<AbandonNotice>,
}

/// What [`ClusterAppend::on_abandon`] calls.
pub struct AbandonNotice(Box<dyn Fn(StreamId) + Send + Sync>);

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
                abandon: std::sync::OnceLock::new(),
            }),
        }
    }

    /// What this node's applier reached.
    pub fn applied(&self) -> &Applied {
        &self.inner.applied
    }

    /// The last seq this node's log holds.
    pub fn applied_seq(&self) -> u64 {
        cairn_storage::EventLog::last_seq(&self.inner.store).unwrap_or(0)
    }

    /// Starts writing `stream` (the node holds its lease): publishes a fence
    /// and waits until everything before it is applied here. Answers the
    /// fence's position.
    pub async fn take(&self, stream: &StreamId) -> Result<u64, StorageError> {
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
        self.inner
            .owned
            .lock()
            .expect("owned lock")
            .insert(stream.clone(), ack.sequence);
        Ok(ack.sequence)
    }

    /// Stops writing `stream` (its lease is released or lost).
    pub fn release(&self, stream: &StreamId) {
        self.inner.owned.lock().expect("owned lock").remove(stream);
    }

    /// Who to tell when the appender gives a stream up by itself (the
    /// ownership loop, which then steps down so the writer's state is
    /// loaded again from the log). Set once.
    pub fn on_abandon(&self, notify: Box<dyn Fn(StreamId) + Send + Sync>) {
        let _ = self.inner.abandon.set(AbandonNotice(notify));
    }

    /// Gives `stream` up after a failure that leaves the writer's state in
    /// doubt, and says so.
    fn abandon(&self, stream: &StreamId) {
        self.release(stream);
        if let Some(notify) = self.inner.abandon.get() {
            (notify.0)(stream.clone());
        }
    }

    /// Whether this node writes `stream` now.
    pub fn owns(&self, stream: &StreamId) -> bool {
        self.inner
            .owned
            .lock()
            .expect("owned lock")
            .contains_key(stream)
    }

    async fn append_all(
        &self,
        stream: &StreamId,
        version: u64,
        chunks: Vec<Vec<Event>>,
        metadata: Metadata,
    ) -> Vec<Result<Appended, StorageError>> {
        let mut results = Vec::with_capacity(chunks.len());
        let metadata = metadata.normalized();
        let mut version = version;
        for chunk in chunks {
            let result = self.append_one(stream, version, chunk, &metadata).await;
            let failed = result.is_err();
            if let Ok(appended) = &result {
                version = appended.stream_version();
            }
            results.push(result);
            if failed {
                break;
            }
        }
        results
    }

    async fn append_one(
        &self,
        stream: &StreamId,
        version: u64,
        events: Vec<Event>,
        metadata: &Metadata,
    ) -> Result<Appended, StorageError> {
        let inner = &self.inner;
        let max = inner.store.config().append_max_events;
        if events.len() > max {
            return Err(StorageError::InvalidAppend(format!(
                "{} events in one append, at most {max} allowed",
                events.len()
            )));
        }
        let Some(mut expected) = inner.owned.lock().expect("owned lock").get(stream).copied()
        else {
            return Err(StorageError::Unavailable(format!(
                "node {} does not own stream {stream}",
                inner.node
            )));
        };
        let recorded_at = crate::repository::timestamp(SystemTime::now());
        let mut envelopes = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            let env = Envelope {
                schema_version: SCHEMA_VERSION,
                event_id: envelope::new_id(),
                stream: stream.to_string(),
                stream_version: version + 1 + i as u64,
                seq: 0,
                recorded_at: Some(recorded_at),
                correlation_id: metadata.correlation_id.clone(),
                causation_id: metadata.causation_id.clone(),
                principal: metadata.principal.clone(),
                trace: metadata.trace.clone(),
                event: Some(event),
                request_id: metadata.request_id.clone(),
                request_digest: metadata.request_digest.clone(),
            };
            inner.store.check_envelope(&env).map_err(|e| match e {
                StorageError::InvalidReplicated(why) => StorageError::InvalidAppend(why),
                other => other,
            })?;
            envelopes.push(env);
        }
        inner.blobs.ship(&inner.store, &envelopes).await?;
        // Cut into messages that fit the server's max payload.
        let mut messages: Vec<Vec<Envelope>> = Vec::new();
        let mut size = 0;
        for env in envelopes {
            let n = encoded_size(&env);
            if messages.is_empty() || size + n > inner.message_max_bytes {
                messages.push(Vec::new());
                size = 0;
            }
            size += n;
            messages.last_mut().expect("a message").push(env);
        }
        let subject = subject_of(stream);
        let mut committed = Vec::new();
        for message in messages {
            let publish = Publish::build()
                .message_id(message[0].event_id.as_str())
                .expected_last_subject_sequence(expected)
                .header(super::log::NODE_HEADER, inner.node.as_str())
                .payload(encode_commit(&message));
            let sent = inner
                .js
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|e| unavailable(stream, e))?;
            let ack = match sent.await {
                Ok(ack) => ack,
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    self.abandon(stream);
                    tracing::warn!(stream = %stream, node = %inner.node, "fenced: another node owns the stream now; stepping down");
                    return Err(StorageError::Unavailable(format!(
                        "stream {stream} was taken over by another node: this node's write was refused by the log (fenced) and it stepped down; retry"
                    )));
                }
                Err(e) => {
                    // Sent but not confirmed: JetStream may still store it
                    // (a leader change commits what the old leader had).
                    return Err(StorageError::Unavailable(format!(
                        "the replicated log did not confirm the write to {stream} ({e}): it may still be recorded; retry with the same Cairn-Request-Id to learn its outcome"
                    )));
                }
            };
            expected = ack.sequence;
            if let Some(known) = inner.owned.lock().expect("owned lock").get_mut(stream) {
                *known = ack.sequence;
            }
            match inner
                .applied
                .wait_for(ack.sequence, inner.apply_wait)
                .await?
            {
                Some(Sequenced::Applied { first_seq, .. }) => {
                    for (i, mut env) in message.into_iter().enumerate() {
                        env.seq = first_seq + i as u64;
                        committed.push(env);
                    }
                }
                Some(Sequenced::Refused(why)) => {
                    // Another write of this stream reached the log first (a
                    // JetStream leader change can let two through): every
                    // node skipped this one.
                    self.abandon(stream);
                    return Err(StorageError::Unavailable(format!(
                        "the replicated log skipped this node's commit on {stream} ({why}): another write reached the log first; retry with the same Cairn-Request-Id"
                    )));
                }
                other => {
                    self.abandon(stream);
                    return Err(StorageError::Corrupt(format!(
                        "commit at position {} on {stream}: unexpected outcome {other:?}",
                        ack.sequence
                    )));
                }
            }
        }
        Ok(Appended {
            envelopes: committed,
        })
    }
}

impl AsyncAppend for ClusterAppend {
    fn append_max_events(&self) -> usize {
        self.inner.store.config().append_max_events
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
