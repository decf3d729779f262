//! The replicated log: one JetStream stream (`CAIRN_LOG`, replicas from
//! `cluster.stream-replicas`) that orders every commit of every cairn stream,
//! and the applier that feeds it into this node's RocksDB log and views.
//!
//! - **Subjects**: one per cairn stream, `cairn.log.<base64url(stream id)>`
//!   ([`subject_of`]), so `Nats-Expected-Last-Subject-Sequence` fences each
//!   stream on its own.
//! - **A commit** is one message: the envelopes of one append (`seq` 0 —
//!   the order assigns it), each length-delimited protobuf, with
//!   `Nats-Msg-Id` = the first event's id (a retried publish is dropped as
//!   a duplicate) and `Nats-Expected-Last-Subject-Sequence` = the subject's
//!   last sequence as the owner knows it: a deposed owner's publish is
//!   refused by JetStream itself. A commit larger than the server's
//!   `max_payload` is cut into several messages, each a commit of its own.
//!   Every node refuses a message whose events are not all of the stream
//!   its subject names ([`commit_of`]): fencing is per subject, so such an
//!   event would have passed another stream's fencing, not its own.
//! - **A fence** is an empty message with `Cairn-Fence: <node>`: a new owner
//!   publishes one when it takes a stream, which moves the subject's
//!   sequence past anything a previous owner could still expect.
//! - **A compaction marker** is an empty message with
//!   `Cairn-Compact: <class prefix> <now, Unix ms> <tombstone retention,
//!   ms>` ([`publish_compaction`]; the holder of a role lease sends one
//!   every `kv.compact-interval`). Compaction rewrites a node's log, so on
//!   a cluster it must give the same log on every node: every node's
//!   applier, on reaching the marker, first applies everything before it,
//!   then compacts the class as of the marker's `now` and retention — the
//!   same events, the same parameters, at the same point of the log, so
//!   the same events go — and only then records the marker's position (a
//!   crash in between compacts again at the same point on restart, which
//!   removes nothing more). A node that joins later replays the markers
//!   where they are. Without a marker no cluster node compacts.
//! - **The applier** reads the stream in order with a pull consumer of
//!   its own ([`applier_messages`]: ephemeral, no acks, pulls bounded by
//!   [`APPLY_PULL_MAX_MESSAGES`] and [`APPLY_PULL_MAX_BYTES`], a skipped
//!   consumer number ends the run as a lost message)
//!   from the store's replication position + 1 and applies batches of
//!   messages with [`Store::apply_sequenced_async`] (seqs assigned from the
//!   order, position written atomically with the events), so every node's
//!   log is the same, byte for byte. Before a batch is applied the blobs
//!   its events reference are fetched from `CAIRN_BLOBS` when missing
//!   ([`super::blobs`]). Reading, decoding and fetching run one stage ahead
//!   of applying (a bounded pipeline of [`APPLY_PIPELINE_BATCHES`] batches),
//!   so the network side and the store's writer work at the same time.
//!   While the pipeline is full (the writer is behind), what arrives joins
//!   the batch waiting for room, up to [`APPLY_BATCH_MAX_MESSAGES`] and
//!   [`APPLY_BATCH_MAX_BYTES`]: an ordered consumer pulled 32 commits at a
//!   time (a bound on bytes in flight, [`PULL_MAX_MESSAGES`]), and a catch-up of
//!   one-event commits applied as they were pulled paid the writer's
//!   per-batch work (position and checkpoint rows, reference counts and
//!   group lookups, a WAL record) every 32 events. Decision: batches grow
//!   only when the writer is behind, so a live commit waits for no more
//!   than it would have. Each applied position is announced on a watch
//!   channel; owners wait on it for read-your-writes.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::{
    self,
    consumer::{pull, pull::OrderedConfig, AckPolicy, DeliverPolicy},
    stream::StorageType,
};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use cairn_events::{v1::Envelope, StreamId};
use cairn_storage::{Sequenced, SequencedCommit, StorageError, Store};
use futures::StreamExt as _;
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::blobs::Blobs;

/// Name of the JetStream stream that orders every commit.
pub const LOG_STREAM: &str = "CAIRN_LOG";
/// Prefix of its subjects.
pub const LOG_SUBJECT_PREFIX: &str = "cairn.log.";
/// Header naming the node that published a commit.
pub const NODE_HEADER: &str = "Cairn-Node";
/// Header naming the node a fence message comes from.
pub const FENCE_HEADER: &str = "Cairn-Fence";
/// Header of a compaction marker (see the module docs).
pub const COMPACT_HEADER: &str = "Cairn-Compact";
/// The pseudo-stream whose subject carries the compaction markers, and
/// whose lease makes a node the one that sends them.
pub const COMPACTOR_ROLE: &str = "role/compactor";

/// A compaction a marker asks for, every node alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// The stream class (`kv/`).
    pub prefix: String,
    /// The compaction's `now`, Unix ms.
    pub now_ms: u64,
    /// How long tombstones stay, ms.
    pub retention_ms: u64,
}

impl Compaction {
    /// The header value.
    pub fn header(&self) -> String {
        format!("{} {} {}", self.prefix, self.now_ms, self.retention_ms)
    }

    /// Parses a header value.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(' ');
        let prefix = parts.next()?.to_owned();
        let now_ms = parts.next()?.parse().ok()?;
        let retention_ms = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(Self {
            prefix,
            now_ms,
            retention_ms,
        })
    }

    /// The policy of its class (only the key-value class compacts).
    fn policy(&self) -> Option<Arc<dyn cairn_storage::CompactionPolicy>> {
        (self.prefix == cairn_storage::views::kv::KV_STREAM_PREFIX).then(|| {
            Arc::new(cairn_storage::views::kv::KvCompactionPolicy {
                tombstone_retention: Duration::from_millis(self.retention_ms),
            }) as Arc<dyn cairn_storage::CompactionPolicy>
        })
    }
}

/// Publishes a compaction marker (see the module docs) as node `node`;
/// answers its position.
pub async fn publish_compaction(
    js: &jetstream::Context,
    node: &str,
    compaction: &Compaction,
) -> Result<u64, String> {
    let stream = StreamId::new(COMPACTOR_ROLE).expect("a valid stream id");
    let publish = jetstream::message::PublishMessage::build()
        .header(COMPACT_HEADER, compaction.header().as_str())
        .header(NODE_HEADER, node)
        .payload(Bytes::new());
    let ack = js
        .send_publish(subject_of(&stream), publish)
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(ack.sequence)
}
/// Most messages the applier writes in one batch. One-event commits
/// (lifecycle commands, key-value sets) come by the thousand in a
/// catch-up; a batch of 256 of them cost the writer as much in per-batch
/// work as in events.
const APPLY_BATCH_MAX_MESSAGES: usize = 4096;
/// Most bytes of commits the applier reads into one batch (one message
/// more at most): a batch applies in a fraction of a second whatever the
/// size of its commits, so the reading stage gets back to its consumer
/// often — an ordered consumer left unpolled for seconds while the
/// writer applied 256 large commits missed its heartbeats, and a replica
/// catching up lost seconds making it anew.
const APPLY_BATCH_MAX_BYTES: usize = 4 << 20;
/// Most outcomes kept for owners waiting on their commits.
const OUTCOMES_MAX: usize = 16_384;
/// How long the applier waits for a message before it checks whether its
/// consumer stalled.
const STALL_CHECK_EVERY: Duration = Duration::from_secs(3);
/// Most commits one pull of a `CAIRN_LOG` consumer asks for (at most this
/// many times the server's max payload in flight: 32 MiB at the default
/// 1 MiB, half of the server's default pending limit per client). An
/// ordered consumer's pulls carry no byte limit (async-nats sends none),
/// so the count is the only bound. The snapshotter's scan and the
/// catch-up benchmark's raw consumers read so; the applier reads with
/// byte-bounded pulls ([`APPLY_PULL_MAX_MESSAGES`]).
pub const PULL_MAX_MESSAGES: i64 = 32;

/// An ordered consumer of `CAIRN_LOG` from `deliver_policy` pulling at
/// most [`PULL_MAX_MESSAGES`] commits at a time: the snapshotter's scan
/// and the benchmarks' raw peers (the applier has its own,
/// [`applier_messages`]).
pub fn log_consumer(deliver_policy: DeliverPolicy) -> OrderedConfig {
    OrderedConfig {
        deliver_policy,
        max_batch: PULL_MAX_MESSAGES,
        ..Default::default()
    }
}
/// Longest pull of the applier's consumer (stall detection is relative).
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// Most commits one pull of the applier asks for. With
/// [`APPLY_PULL_MAX_BYTES`] beside it, a pull brings a thousand one-event
/// commits (a lifecycle command's, a key-value set's: about 0.6 KiB) or a
/// few first-sync commits of up to 1 MiB. An ordered consumer's pulls
/// carry only a count ([`PULL_MAX_MESSAGES`], 32, so that 1 MiB commits
/// stay within what the server holds pending for a client), and a
/// replica catching up on one-event commits spent its time in a server
/// round trip every 16 commits. Decision: the applier's consumer is a
/// plain pull consumer with both bounds (async-nats sends the byte bound
/// with its pulls), ordered as described at [`applier_messages`].
pub const APPLY_PULL_MAX_MESSAGES: usize = 1024;
/// Most bytes one pull of the applier asks for (or twice the server's max
/// payload, when that is more: a pull stops before a commit larger than
/// its bound and would ask again for it forever). A pull is sent when
/// half of the last one is in, so at most 24 MiB are in flight: below
/// the server's default 64 MiB pending per client, and half of what the
/// ordered consumer's 32 commits of 1 MiB could put there. (At 8 MiB,
/// a catch-up of first-sync commits of ~460 KiB read at half the speed
/// of the ordered consumer: 0.689 s against 0.336 s for 1,336 commits.)
const APPLY_PULL_MAX_BYTES: usize = 16 << 20;
/// How long the server keeps an applier's consumer nobody pulls from (one
/// left behind by a run that failed).
const CONSUMER_INACTIVE_THRESHOLD: Duration = Duration::from_secs(30);
/// Batches read and made ready ahead of the one being applied.
pub const APPLY_PIPELINE_BATCHES: usize = 2;
/// How long the applier waits before reading again after a failure; the
/// pause doubles while runs fail without applying anything (a commit this
/// node cannot apply, servers without quorum), up to [`APPLY_RETRY_MAX`],
/// and starts again from here once a run made progress.
const APPLY_RETRY: Duration = Duration::from_millis(250);
/// The longest pause between two runs of the applier.
const APPLY_RETRY_MAX: Duration = Duration::from_secs(2);

/// The subject of `stream`'s commits.
pub fn subject_of(stream: &StreamId) -> String {
    format!(
        "{LOG_SUBJECT_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(stream.as_str())
    )
}

/// Encodes a commit's envelopes as one message body.
pub fn encode_commit(envelopes: &[Envelope]) -> Bytes {
    let mut out = BytesMut::with_capacity(envelopes.iter().map(|e| e.encoded_len() + 5).sum());
    for env in envelopes {
        env.encode_length_delimited(&mut out)
            .expect("the buffer grows as needed");
    }
    out.freeze()
}

/// Decodes a message body [`encode_commit`] made, with each envelope's
/// bytes (slices of `body`, no copy): a log row is made from them
/// ([`SequencedCommit::encoded`]).
pub fn decode_commit_rows(body: &Bytes) -> Result<(Vec<Envelope>, Vec<Bytes>), prost::DecodeError> {
    let mut envelopes = Vec::new();
    let mut encoded = Vec::new();
    let mut offset = 0;
    while offset < body.len() {
        let mut rest = &body[offset..];
        // Refuses a length past the end of the body.
        envelopes.push(Envelope::decode_length_delimited(&mut rest)?);
        let end = body.len() - rest.len();
        let mut header = &body[offset..end];
        let len = prost::decode_length_delimiter(&mut header)?;
        encoded.push(body.slice(end - len..end));
        offset = end;
    }
    Ok((envelopes, encoded))
}

/// The commit a log message at `position` on `subject` carries, or why
/// every node refuses it: a body that does not decode, or an envelope of
/// another stream than `subject`'s. `Nats-Expected-Last-Subject-Sequence`
/// fences a stream's subject, so an event of stream B published on A's
/// subject would pass B's fencing (a deposed owner of B writing after
/// B's new owner, say): refused whole, whoever published it.
pub fn commit_of(position: u64, subject: &str, body: &Bytes) -> SequencedCommit {
    let refused = |why: String| SequencedCommit {
        position,
        refused: Some(why),
        ..Default::default()
    };
    let (envelopes, encoded) = match decode_commit_rows(body) {
        Ok(decoded) => decoded,
        Err(e) => return refused(format!("the commit does not decode: {e}")),
    };
    if let Some(env) = envelopes.iter().find(|env| {
        StreamId::new(env.stream.clone()).map_or(true, |stream| subject_of(&stream) != subject)
    }) {
        return refused(format!(
            "an event of stream {:?} was published on {subject}, which is not that stream's subject",
            env.stream
        ));
    }
    SequencedCommit {
        position,
        envelopes,
        encoded,
        refused: None,
    }
}

/// Decodes a message body [`encode_commit`] made (the envelopes only).
pub fn decode_commit(body: &Bytes) -> Result<Vec<Envelope>, prost::DecodeError> {
    decode_commit_rows(body).map(|(envelopes, _)| envelopes)
}

/// The size of `env` inside a commit body.
pub fn encoded_size(env: &Envelope) -> usize {
    let len = env.encoded_len();
    len + prost::length_delimiter_len(len)
}

/// Creates (or finds) the log stream.
pub async fn ensure_stream(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<jetstream::stream::Stream, String> {
    let config = jetstream::stream::Config {
        name: LOG_STREAM.to_owned(),
        subjects: vec![format!("{LOG_SUBJECT_PREFIX}*")],
        storage: StorageType::File,
        num_replicas: replicas.max(1),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| format!("cannot create or find stream {LOG_STREAM}: {e}"))
}

/// What the applier reached: the position of the last message applied.
#[derive(Debug, Clone)]
pub struct Applied {
    position: watch::Receiver<u64>,
    outcomes: Arc<Mutex<BTreeMap<u64, Sequenced>>>,
    /// The position the log went on at when the applier met a gap left by
    /// trimming (0: none met): the node must restore (see
    /// [`super::snapshot`]).
    behind_trim: Arc<std::sync::atomic::AtomicU64>,
}

impl Applied {
    /// The position applied now.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// Waits until `position` is applied, at most `timeout`; answers what
    /// became of it (`None` when its outcome is no longer kept: long
    /// applied, or applied by an earlier run of the node).
    pub async fn wait_for(
        &self,
        position: u64,
        timeout: Duration,
    ) -> Result<Option<Sequenced>, StorageError> {
        let mut rx = self.position.clone();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await;
        match reached {
            Ok(Ok(_)) => Ok(self
                .outcomes
                .lock()
                .expect("outcomes lock")
                .get(&position)
                .cloned()),
            Ok(Err(_)) => Err(StorageError::Unavailable(
                "the replicated log's applier stopped".into(),
            )),
            Err(_) => Err(StorageError::Unavailable(format!(
                "commit at position {position} not applied within {timeout:?} (applied: {})",
                self.position()
            ))),
        }
    }

    /// Where the log went on when the applier met a gap trimming left
    /// (this node fell behind a trimmed log and must restore); `None` while
    /// it met none.
    pub fn behind_trim(&self) -> Option<u64> {
        match self.behind_trim.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            at => Some(at),
        }
    }

    /// A receiver of the applied position.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.position.clone()
    }
}

/// Starts the applier: reads `CAIRN_LOG` from the store's position and
/// applies it until the returned task is aborted.
pub async fn start_applier(
    js: jetstream::Context,
    store: Store,
    blobs: Blobs,
) -> Result<(Applied, tokio::task::JoinHandle<()>), String> {
    let from = store.replication_position().map_err(|e| e.to_string())?;
    let (tx, rx) = watch::channel(from);
    let outcomes = Arc::new(Mutex::new(BTreeMap::new()));
    let behind_trim = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let applied = Applied {
        position: rx,
        outcomes: outcomes.clone(),
        behind_trim: behind_trim.clone(),
    };
    let task = tokio::spawn(async move {
        let mut pause = APPLY_RETRY;
        loop {
            // Runs until the task is aborted (node shutdown): a consumer
            // that ends (its connection or server went away) is made anew
            // from the position applied, as one that fails is.
            let before = *tx.borrow();
            match apply_from(&js, &store, &blobs, &tx, &outcomes, &behind_trim).await {
                Ok(()) => info!("replicated log consumer ended; resuming"),
                Err(e) => warn!(error = %e, "replicated log applier failed; resuming"),
            }
            if behind_trim.load(std::sync::atomic::Ordering::Relaxed) != 0 {
                tracing::error!(
                    position = *tx.borrow(),
                    "the cluster's log was trimmed past this node; it applies nothing more and the node stops (started again, it restores the cluster's snapshot)"
                );
                return;
            }
            if *tx.borrow() > before {
                pause = APPLY_RETRY;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(APPLY_RETRY_MAX);
        }
    });
    Ok((applied, task))
}

/// The applier's reading of `CAIRN_LOG` from `start_sequence`: an
/// ephemeral pull consumer whose pulls are bounded in bytes as well as in
/// commits ([`APPLY_PULL_MAX_MESSAGES`], [`APPLY_PULL_MAX_BYTES`]). It is
/// ordered by construction (one consumer, no filter, no redelivery); what
/// an ordered consumer would add — making itself anew after a lost message
/// or a lost server — the applier does: a skipped consumer number
/// ([`check_numbering`]), an error, a missed heartbeat or a stall ends its
/// run, and the next starts again from the position applied. The catch-up
/// benchmark reads with it too.
pub async fn applier_messages(
    js: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    start_sequence: u64,
) -> Result<pull::Stream, String> {
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
            ack_policy: AckPolicy::None,
            memory_storage: true,
            num_replicas: 1,
            inactive_threshold: CONSUMER_INACTIVE_THRESHOLD,
            // Short pulls: a consumer lost with its server (its heartbeats
            // stop) is made anew within seconds, not after 30 s.
            max_expires: PULL_EXPIRES,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("consumer on {LOG_STREAM}: {e}"))?;
    // Above the largest commit there can be (a pull never stops at one
    // larger than its byte bound).
    let max_payload = js.client().server_info().max_payload;
    consumer
        .stream()
        .max_messages_per_batch(APPLY_PULL_MAX_MESSAGES)
        .max_bytes_per_batch(APPLY_PULL_MAX_BYTES.max(2 * max_payload))
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_EXPIRES / 2)
        .messages()
        .await
        .map_err(|e| format!("reading {LOG_STREAM}: {e}"))
}

/// Checks the consumer's numbers of the messages read after the one
/// numbered `delivered`: a consumer numbers what it delivers 1, 2, 3…,
/// whatever their positions (a trimmed stretch of the log is no gap
/// here), so a number skipped is a message lost on the way (one the
/// client dropped). Answers the last number.
pub fn check_numbering(
    mut delivered: u64,
    numbers: impl IntoIterator<Item = u64>,
) -> Result<u64, String> {
    for number in numbers {
        if number != delivered + 1 {
            return Err(format!(
                "message {} of the consumer was not received (message {number} was); reading again from the position applied",
                delivered + 1
            ));
        }
        delivered = number;
    }
    Ok(delivered)
}

/// One run of the applier: a consumer from the position + 1.
async fn apply_from(
    js: &jetstream::Context,
    store: &Store,
    blobs: &Blobs,
    tx: &watch::Sender<u64>,
    outcomes: &Mutex<BTreeMap<u64, Sequenced>>,
    behind_trim: &std::sync::atomic::AtomicU64,
) -> Result<(), String> {
    let position = store.replication_position().map_err(|e| e.to_string())?;
    // A run that failed may have left its last batch committed by the
    // store's writer without saying so: what the store holds is applied.
    tx.send_if_modified(|applied| {
        let behind = *applied < position;
        if behind {
            *applied = position;
        }
        behind
    });
    let stream = js
        .get_stream(LOG_STREAM)
        .await
        .map_err(|e| format!("stream {LOG_STREAM}: {e}"))?;
    let mut messages = Box::pin(applier_messages(js, &stream, position + 1).await?);
    debug!(from = position + 1, "applying the replicated log");
    // Two stages, so that reading, decoding and fetching blobs of the next
    // batch overlap with the store's writer applying this one.
    let (prepared_tx, mut prepared_rx) = mpsc::channel::<Prepared>(APPLY_PIPELINE_BATCHES);
    let read = async move {
        let mut stream = stream;
        let mut read_position = position;
        // The consumer's number of the last message read.
        let mut delivered: u64 = 0;
        // Read and prepared, waiting for room in the pipeline. While the
        // writer is busy (the pipeline full), what arrives joins it: a
        // writer batch grows with the backlog instead of staying the size
        // of one pull (32 one-event commits during a catch-up).
        let mut waiting: Option<(Prepared, usize)> = None;
        loop {
            // A consumer can stall without ending (its server went away and
            // came back): when nothing arrives for a while although the
            // stream holds more than was read, it is made anew. A batch
            // waiting goes as soon as there is room (checked first), and
            // a full one waits for room only; reading a message is
            // cancel-safe (a dropped `next` loses none).
            let next = tokio::time::timeout(STALL_CHECK_EVERY, next_batch(&mut messages));
            let read = match &waiting {
                None => next.await,
                Some((prepared, bytes)) => {
                    let full = prepared.commits.len() >= APPLY_BATCH_MAX_MESSAGES
                        || *bytes >= APPLY_BATCH_MAX_BYTES;
                    tokio::select! {
                        biased;
                        permit = prepared_tx.reserve() => {
                            let Ok(permit) = permit else { return Ok(()) };
                            if let Some((prepared, _)) = waiting.take() {
                                permit.send(prepared);
                            }
                            continue;
                        }
                        read = next, if !full => read,
                    }
                }
            };
            let batch = match read {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    if let Some((prepared, _)) = waiting.take() {
                        let _ = prepared_tx.send(prepared).await;
                    }
                    return Ok(());
                }
                Err(_) => {
                    let last = super::last_sequence_of(&mut stream, LOG_STREAM).await?;
                    if last > read_position {
                        return Err(format!(
                            "consumer stalled at position {read_position} of {last}"
                        ));
                    }
                    continue;
                }
            };
            let bytes: usize = batch
                .iter()
                .map(|m| m.as_ref().map_or(0, |m| m.payload.len()))
                .sum();
            let prepared = prepare(batch, &mut delivered, store, blobs).await?;
            // The log has no gaps but those trimming leaves (see
            // `super::snapshot`): a node that meets one was not live when
            // the log was trimmed, and what it lacks is gone.
            let mut before = read_position;
            for commit in &prepared.commits {
                if commit.position > before + 1 {
                    behind_trim.store(commit.position, std::sync::atomic::Ordering::Relaxed);
                    return Err(format!(
                        "the cluster's log was trimmed past this node: it read position {before}, the log goes on at {}; restart the node to restore the cluster's snapshot",
                        commit.position
                    ));
                }
                before = commit.position;
            }
            read_position = prepared
                .commits
                .last()
                .map_or(read_position, |c| c.position);
            waiting = Some(match waiting.take() {
                None => (prepared, bytes),
                Some((mut joined, joined_bytes)) => {
                    joined.append(prepared);
                    (joined, joined_bytes + bytes)
                }
            });
        }
    };
    let apply = async {
        while let Some(Prepared {
            commits,
            publishers,
            pins,
            compactions,
        }) = prepared_rx.recv().await
        {
            let positions: Vec<u64> = commits.iter().map(|c| c.position).collect();
            debug!(positions = ?positions, "applying replicated commits");
            let results = apply_compacting(store, commits, compactions).await?;
            // Fetched blobs stay pinned until the events referencing them are in.
            drop(pins);
            let last = *positions.last().unwrap_or(&0);
            {
                let mut kept = outcomes.lock().expect("outcomes lock");
                for ((position, outcome), node) in
                    positions.into_iter().zip(results).zip(&publishers)
                {
                    if let Sequenced::Refused(why) = &outcome {
                        warn!(position, why, node, "replicated commit refused");
                    }
                    kept.insert(position, outcome);
                }
                while kept.len() > OUTCOMES_MAX {
                    kept.pop_first();
                }
            }
            tx.send_replace(last);
        }
        Ok::<_, String>(())
    };
    tokio::try_join!(read, apply)?;
    Ok(())
}

/// Applies `commits`; at each compaction marker, first what comes before
/// it, then the compaction, then the rest (the marker included: its
/// position is recorded only once the compaction ran). See the module
/// docs.
async fn apply_compacting(
    store: &Store,
    mut commits: Vec<SequencedCommit>,
    compactions: Vec<(u64, Compaction)>,
) -> Result<Vec<Sequenced>, String> {
    let apply = |commits: Vec<SequencedCommit>| async move {
        if commits.is_empty() {
            return Ok(Vec::new());
        }
        store
            .apply_sequenced_async(commits)
            .await
            .map_err(|e| format!("applying: {e}"))
    };
    let mut results = Vec::with_capacity(commits.len());
    for (position, compaction) in compactions {
        let before = commits.iter().take_while(|c| c.position < position).count();
        let rest = commits.split_off(before);
        results.extend(apply(commits).await?);
        commits = rest;
        let applied = store.replication_position().map_err(|e| e.to_string())?;
        if applied >= position {
            // Applied (and compacted) by an earlier run of the node.
            continue;
        }
        let Some(policy) = compaction.policy() else {
            warn!(position, prefix = %compaction.prefix, "compaction marker of an unknown class; skipped");
            continue;
        };
        let (store, now) = (
            store.clone(),
            std::time::UNIX_EPOCH + Duration::from_millis(compaction.now_ms),
        );
        let stats = tokio::task::spawn_blocking(move || store.compact(policy, now))
            .await
            .map_err(|e| format!("compaction task: {e}"))?
            .map_err(|e| format!("compacting at position {position}: {e}"))?;
        info!(
            position,
            prefix = %compaction.prefix,
            scanned = stats.scanned,
            superseded = stats.superseded,
            expired_tombstones = stats.expired_tombstones,
            "compacted at the log's marker"
        );
    }
    results.extend(apply(commits).await?);
    Ok(results)
}

/// A batch of messages made ready to apply: decoded, its blobs here.
struct Prepared {
    commits: Vec<SequencedCommit>,
    /// The node that published each commit (for warnings).
    publishers: Vec<String>,
    pins: Vec<cairn_storage::BlobPin>,
    /// Compaction markers among the commits, by position.
    compactions: Vec<(u64, Compaction)>,
}

impl Prepared {
    /// Adds `later`'s commits (read after this batch's) to this batch.
    fn append(&mut self, later: Prepared) {
        self.commits.extend(later.commits);
        self.publishers.extend(later.publishers);
        self.pins.extend(later.pins);
        self.compactions.extend(later.compactions);
    }
}

/// Decodes `batch` and fetches the blobs its events reference.
/// The next batch of the consumer's messages: the first to arrive, then
/// those ready now, up to [`APPLY_BATCH_MAX_MESSAGES`] and
/// [`APPLY_BATCH_MAX_BYTES`]; `None` once the consumer ended.
async fn next_batch<S, E>(messages: &mut S) -> Option<Vec<S::Item>>
where
    S: futures::Stream<Item = Result<jetstream::Message, E>> + Unpin,
{
    use futures::FutureExt as _;
    let size = |item: &S::Item| item.as_ref().map_or(0, |m| m.payload.len());
    let first = messages.next().await?;
    let mut bytes = size(&first);
    let mut batch = vec![first];
    while batch.len() < APPLY_BATCH_MAX_MESSAGES && bytes < APPLY_BATCH_MAX_BYTES {
        // Nothing ready now, or the end (the next call sees it): the batch
        // is what arrived.
        let Some(Some(item)) = messages.next().now_or_never() else {
            break;
        };
        bytes += size(&item);
        batch.push(item);
    }
    Some(batch)
}

/// Decodes `batch` and fetches the blobs it references. `delivered` is the
/// consumer's number of the last message read: a message lost on the way
/// ends the applier's run ([`check_numbering`]), and the next reads again
/// from the position applied, as an ordered consumer does.
async fn prepare<E: std::fmt::Display>(
    batch: Vec<Result<jetstream::Message, E>>,
    delivered: &mut u64,
    store: &Store,
    blobs: &Blobs,
) -> Result<Prepared, String> {
    let mut commits = Vec::with_capacity(batch.len());
    let mut publishers = Vec::with_capacity(batch.len());
    let mut compactions = Vec::new();
    for message in batch {
        let message = message.map_err(|e| format!("reading {LOG_STREAM}: {e}"))?;
        let info = message.info().map_err(|e| e.to_string())?;
        *delivered = check_numbering(*delivered, [info.consumer_sequence])?;
        let position = info.stream_sequence;
        debug!(position, subject = %message.subject, "replicated message received");
        publishers.push(
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(NODE_HEADER).or_else(|| h.get(FENCE_HEADER)))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default(),
        );
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let compaction = header(COMPACT_HEADER);
        if let Some(value) = &compaction {
            match Compaction::parse(value) {
                Some(c) => compactions.push((position, c)),
                // Every node skips it alike.
                None => warn!(position, value, "malformed compaction marker"),
            }
        }
        let commit = if header(FENCE_HEADER).is_some() || compaction.is_some() {
            SequencedCommit {
                position,
                ..Default::default()
            }
        } else {
            // Every node refuses it alike, from the message alone (the
            // apply stage warns of it).
            commit_of(position, &message.subject, &message.payload)
        };
        commits.push(commit);
    }
    // The blobs of the whole batch, fetched at once.
    let referencing: Vec<&Envelope> = commits.iter().flat_map(|c| &c.envelopes).collect();
    let pins = blobs.ensure(store, &referencing).await.map_err(|e| {
        format!(
            "commits at positions {}..={}: {e}",
            commits.first().map_or(0, |c| c.position),
            commits.last().map_or(0, |c| c.position)
        )
    })?;
    Ok(Prepared {
        commits,
        publishers,
        pins,
        compactions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_round_trip_and_subjects_are_single_tokens() {
        let envelopes = vec![
            Envelope {
                stream: "repo/ns/a".into(),
                stream_version: 1,
                event_id: "x".into(),
                ..Default::default()
            },
            Envelope {
                stream: "repo/ns/a".into(),
                stream_version: 2,
                ..Default::default()
            },
        ];
        let body = encode_commit(&envelopes);
        assert_eq!(
            body.len(),
            envelopes.iter().map(encoded_size).sum::<usize>()
        );
        assert_eq!(decode_commit(&body).unwrap(), envelopes);
        assert_eq!(
            decode_commit(&Bytes::new()).unwrap(),
            Vec::<Envelope>::new()
        );
        let (decoded, encoded) = decode_commit_rows(&body).unwrap();
        assert_eq!(decoded, envelopes);
        let rows: Vec<Vec<u8>> = envelopes.iter().map(|e| e.encode_to_vec()).collect();
        assert_eq!(encoded, rows);
        assert_eq!(
            decode_commit_rows(&Bytes::new()).unwrap(),
            (Vec::new(), Vec::new())
        );
        // A length past the end of the body.
        assert!(decode_commit_rows(&body.slice(..body.len() - 1)).is_err());
        let subject = subject_of(
            &StreamId::new("repo/my.ns/r*1")
                .unwrap_or_else(|_| StreamId::new("repo/ns/r.1").unwrap()),
        );
        let token = subject.strip_prefix(LOG_SUBJECT_PREFIX).unwrap();
        assert!(!token.is_empty());
        assert!(token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn a_commit_is_refused_whole_when_it_does_not_decode_or_names_another_stream() {
        let env = |stream: &str, version: u64| Envelope {
            stream: stream.into(),
            stream_version: version,
            event_id: format!("{stream}-{version}"),
            ..Default::default()
        };
        let a = subject_of(&StreamId::new("repo/ns/a").unwrap());
        let body = encode_commit(&[env("repo/ns/a", 1), env("repo/ns/a", 2)]);
        let commit = commit_of(7, &a, &body);
        assert_eq!(commit.refused, None);
        assert_eq!(commit.position, 7);
        assert_eq!(commit.envelopes, decode_commit(&body).unwrap());
        assert_eq!(commit.encoded.len(), 2);

        let mixed = commit_of(
            8,
            &a,
            &encode_commit(&[env("repo/ns/a", 3), env("repo/ns/b", 1)]),
        );
        assert_eq!(
            mixed.refused.as_deref(),
            Some(
                "an event of stream \"repo/ns/b\" was published on cairn.log.cmVwby9ucy9h, which is not that stream's subject"
            )
        );
        assert!(mixed.envelopes.is_empty() && mixed.encoded.is_empty());
        assert_eq!(mixed.position, 8);
        // Not a stream id at all.
        assert!(commit_of(9, &a, &encode_commit(&[env("", 1)]))
            .refused
            .is_some());
        let undecodable = commit_of(10, &a, &body.slice(..body.len() - 1));
        assert!(
            undecodable
                .refused
                .as_deref()
                .is_some_and(|why| why.starts_with("the commit does not decode: ")),
            "{:?}",
            undecodable.refused
        );
        assert!(undecodable.envelopes.is_empty());
    }

    #[test]
    fn a_skipped_consumer_number_is_a_lost_message() {
        assert_eq!(check_numbering(0, [1, 2, 3]), Ok(3));
        assert_eq!(check_numbering(7, []), Ok(7));
        assert_eq!(
            check_numbering(3, [4, 6]).unwrap_err(),
            "message 5 of the consumer was not received (message 6 was); reading again from the position applied"
        );
        // A number seen again (not a redelivery: there are none) is as wrong.
        assert!(check_numbering(3, [3]).is_err());
    }
}
