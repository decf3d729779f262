//! The Publisher: every committed event, published to JetStream exactly
//! once (from a consumer's point of view), in log order.
//!
//! It tails the log from its persisted cursor (`meta/publish_cursor`) and
//! publishes each event on its subject
//! (`cairn.events.<namespace>.<repository>.<type>`) into the `CAIRN_EVENTS`
//! stream, created if missing (subjects `cairn.events.>`, file storage),
//! with `Nats-Msg-Id` = event id. The cursor advances only over events
//! JetStream has acknowledged ([`window::PublishWindow`]). The cursor is
//! saved without fsync: losing its last moves on a crash only means
//! re-publishing what the stream already holds, which the next session
//! skips (below).
//!
//! The message body is the protobuf-encoded envelope
//! (`Content-Type: application/protobuf`); headers `Cairn-Seq` and
//! `Cairn-Stream` let consumers route without decoding.
//!
//! # Reading the log
//! The body is the event's `log` row as stored, not the envelope encoded
//! again: every path that writes the log (appends, replicated and
//! sequenced commits; a snapshot restore copies the rows) writes the
//! envelope's encoding, so the bytes are the same and the encode is
//! saved. (If a later schema version upcasts old rows on read, such rows
//! are published as stored, in their own version: consumers decode with
//! `envelope::decode`, which upcasts.) The envelope is still decoded, for
//! the subject, the ids and the trace headers.
//!
//! Events just committed are not read back from RocksDB: the Publisher
//! turns on the store's recent-rows buffer
//! ([`Store::retain_recent_log_rows`]: the rows of the last commits, at
//! most [`cairn_storage::store::RECENT_LOG_MAX_EVENTS`] and
//! [`cairn_storage::store::RECENT_LOG_MAX_BYTES`], kept by the writer
//! before it announces their seq) and takes them from there
//! ([`Store::recent_log_rows`]) on its own thread, with no
//! `spawn_blocking` hop and no RocksDB read; each is decoded when its
//! turn to be published comes. When the buffer does not hold the next
//! seq — after a restart (the backlog), when the Publisher lags more than
//! the buffer holds, after it overflowed or a compaction emptied it — it
//! reads RocksDB off the async threads ([`Store::read_log_events`]: the
//! decoded envelopes with their rows, skipping compacted gaps like
//! `read_all`). Either way the events come in seq order without gaps but
//! compacted ones, so the window, the fence and the cursor see the same
//! sequence. Measured before keeping it (per event, a hot 4,096-event
//! log, batches of 512, workspace crates built at opt-level 2, on the
//! shared 2-core machine): the old read and encode 630–790 ns, the rows
//! read from RocksDB 530–590 ns, the rows from memory decoded 310–370 ns,
//! besides the `spawn_blocking` round trip saved per batch (6–40 µs).
//!
//! # Order, across outages and crashes
//! Publishes are pipelined (up to `max_in_flight`), and JetStream handles
//! each on its own: when NATS goes away, a publish can be lost with the
//! connection (async-nats drops its write buffer on a reconnect) while
//! later ones, still queued in the client, go out after the reconnect; or
//! a publish times out and is retried after later ones were stored. Left
//! alone, either stores an event after later ones (seen: `Cairn-Seq` 183
//! at position 189). So a session works like this:
//! 1. **Read the stream's end** (`PublishTask::ensure_stream`, then
//!    `PublishTask::resume`): its last position, and the `Cairn-Seq` and
//!    event id of the message there. If that is this log's event and ahead
//!    of the cursor, the cursor moves up to it ([`window::resume_cursor`]):
//!    the stream, being in order, holds everything up to it. On a cluster
//!    ([`PublisherConfig::replica`]) a last event this replica's log does
//!    not hold, at a seq past its log's end, means the replica is behind
//!    ([`window::replica_behind`]): sessions fail and are tried again until
//!    it applied it, rather than publish again what another node
//!    published (past `Nats-Msg-Id`'s two-minute window JetStream would
//!    store it twice) — for at most [`REPLICA_TAIL_WAIT`], after which
//!    (a stream kept while the log was made anew) they publish from the
//!    cursor as a single node does.
//! 2. **Publish fenced**: each event carries
//!    `Nats-Expected-Last-Sequence` = the stream position right before its
//!    own ([`window::PublishWindow::expected_last_sequence`]). An event can
//!    only be stored right after its predecessor; once one is missing, the
//!    later ones of the window are refused (`wrong last sequence`), and so
//!    is any stale copy that reaches the server later, from this session or
//!    an earlier one, from this process or one that was killed — unless
//!    JetStream drops it first as a duplicate of what it already holds.
//! 3. **On any failure** (a send, an ack error or timeout, an ack at an
//!    unexpected position), abandon the window: send nothing more, wait for
//!    the acks still due (each ends within `ack_timeout`; this also returns
//!    async-nats' in-flight permits, which abandoned acks would hold), pause
//!    `retry_delay`, and start again at step 1 — which fails, and is
//!    retried, until NATS answers again.
//!
//! So order no longer rests on `Nats-Msg-Id` de-duplication, which only
//! works within the stream's duplicate window (2 minutes): de-duplication
//! still spares re-publishing work, the fence is what keeps the order. The
//! fence assumes cairn is the only writer of `cairn.events.>` in the
//! stream; a foreign message makes the next publish fail and the session
//! restart on the new end (one retry, no disorder).
//!
//! # Layout
//! - this module — the [`Publisher`] actor and its configuration.
//! - [`window`] — [`window::PublishWindow`], the in-flight window, the
//!   cursor and the fence, and [`window::resume_cursor`]: plain components
//!   unit-tested without actix.
//! - [`messages`] — the messages the Publisher handles.
//! - [`error`] — [`PublishError`], in a leaf module so that `messages` does
//!   not import the parent that declares it.

pub mod error;
pub mod messages;
pub mod window;

use std::{collections::VecDeque, time::Duration};

use actix::prelude::*;
use async_nats::jetstream::{
    self,
    context::PublishAckFuture,
    message::PublishMessage,
    stream::{LastRawMessageErrorKind, StorageType},
};
use cairn_events::{envelope, subject, v1::Envelope, StreamId};
use cairn_storage::{keys::meta, EventLog, LogEvent, LogRow, Store};
use futures::{future::BoxFuture, stream::FuturesUnordered, FutureExt as _, StreamExt};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn, Instrument as _};

pub use error::PublishError;
pub use messages::{Flush, GetStatus, PublisherStatus, Stop};
use window::{replica_behind, resume_cursor, PublishWindow};

/// Tuning of the publisher.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Published but unacknowledged events, at most. Default: 512.
    pub max_in_flight: usize,
    /// Events read from the log at once. Default: 512.
    pub read_batch_events: usize,
    /// How long to wait for one JetStream ack. Default: 5 s.
    pub ack_timeout: Duration,
    /// Pause before retrying after NATS failed. Default: 250 ms.
    pub retry_delay: Duration,
    /// Replicas of the `CAIRN_EVENTS` stream when created. Default: 1.
    pub stream_replicas: usize,
    /// Name of the JetStream stream. Default: `CAIRN_EVENTS`.
    pub stream_name: String,
    /// The log is a cluster replica (every node's log holds the same seqs):
    /// a stream whose last event is not in this log yet means this replica
    /// is behind, and sessions wait (fail and are retried, for at most
    /// [`REPLICA_TAIL_WAIT`]) rather than publish from the cursor what
    /// another node already published.
    /// Default: off (a single node's log: such a stream holds another log's
    /// events, and publishing goes on from the cursor).
    pub replica: bool,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 512,
            read_batch_events: 512,
            ack_timeout: Duration::from_secs(5),
            retry_delay: Duration::from_millis(250),
            stream_replicas: 1,
            stream_name: subject::EVENTS_STREAM.to_owned(),
            replica: false,
        }
    }
}

/// The subject token of a key-value event (stream `kv/…`): its
/// namespace's token (the default namespace `""` is `~`), or `~~` (no
/// namespace's token) for a bulk event naming entries of several.
fn kv_namespace(envelope: &Envelope, stream: &StreamId) -> Option<String> {
    use cairn_events::v1::event::Payload;
    if !stream.as_str().starts_with("kv/") {
        return None;
    }
    let one = |names: Vec<&str>| {
        let first = names.first().copied().unwrap_or("");
        if names.iter().all(|n| *n == first) {
            subject::encode_token(first)
        } else {
            "~~".to_owned()
        }
    };
    Some(match envelope.event.as_ref()?.payload.as_ref()? {
        Payload::KvEntrySet(e) => subject::encode_token(&e.namespace),
        Payload::KvEntryDeleted(e) => subject::encode_token(&e.namespace),
        Payload::KvEntriesEvicted(e) => subject::encode_token(&e.namespace),
        Payload::KvNamespaceConfigured(e) => subject::encode_token(&e.namespace),
        Payload::KvEntriesDeleted(e) => {
            one(e.entries.iter().map(|r| r.namespace.as_str()).collect())
        }
        Payload::KvEntriesExpired(e) => {
            one(e.entries.iter().map(|r| r.namespace.as_str()).collect())
        }
        _ => return None,
    })
}

/// The subject `envelope` is published on. Repository streams map to
/// `cairn.events.<ns>.<repo>.<type>`; key-value streams to
/// `cairn.events.kv.<kv namespace>.kv.<type>` (see `kv_namespace`); any
/// other stream to `cairn.events._.<stream>.<type>` (`_` is never a
/// DNS-1123 namespace).
pub fn subject_for(envelope: &Envelope) -> Result<String, cairn_events::EventsError> {
    let kind = envelope::kind(envelope)?;
    let stream = StreamId::new(envelope.stream.clone())?;
    if let Some(namespace) = kv_namespace(envelope, &stream) {
        return Ok(format!(
            "{}.kv.{namespace}.{}",
            subject::EVENTS_PREFIX,
            kind.subject_suffix()
        ));
    }
    Ok(match stream.as_repository() {
        Some((namespace, name)) => subject::event_subject(namespace, name, kind.subject_suffix()),
        None => subject::event_subject("_", stream.as_str(), kind.subject_suffix()),
    })
}

/// The Publisher actor: a shell around the publishing task.
#[derive(Debug)]
pub struct Publisher {
    store: Store,
    client: async_nats::Client,
    config: PublisherConfig,
    cursor: watch::Receiver<u64>,
    cursor_tx: Option<watch::Sender<u64>>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Publisher {
    /// A publisher for `store`'s log over `client`. Nothing happens until
    /// the actor starts.
    pub fn new(
        store: Store,
        client: async_nats::Client,
        config: PublisherConfig,
    ) -> Result<Self, cairn_storage::StorageError> {
        let cursor = store.meta_u64(meta::PUBLISH_CURSOR)?.unwrap_or(0);
        // From now on the writer keeps what it commits in memory, where the
        // task takes it (see the module docs, "Reading the log").
        store.retain_recent_log_rows();
        let (cursor_tx, cursor_rx) = watch::channel(cursor);
        let (stop, _) = watch::channel(false);
        Ok(Self {
            store,
            client,
            config,
            cursor: cursor_rx,
            cursor_tx: Some(cursor_tx),
            stop,
            task: None,
        })
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        let Some(cursor_tx) = self.cursor_tx.take() else {
            return;
        };
        let js = jetstream::ContextBuilder::new()
            .ack_timeout(self.config.ack_timeout)
            .timeout(self.config.ack_timeout)
            .max_ack_inflight(self.config.max_in_flight.max(1))
            .build(self.client.clone());
        let task = PublishTask {
            store: self.store.clone(),
            js,
            config: self.config.clone(),
            cursor: cursor_tx,
            stop: self.stop.subscribe(),
            tail_wait_since: None,
        };
        self.task = Some(tokio::spawn(task.run()));
    }
}

impl Handler<Flush> for Publisher {
    type Result = ResponseFuture<Result<u64, PublishError>>;

    fn handle(&mut self, msg: Flush, _ctx: &mut Self::Context) -> Self::Result {
        let target = self.store.last_seq().unwrap_or(0);
        let mut cursor = self.cursor.clone();
        Box::pin(async move {
            let waited = tokio::time::timeout(msg.timeout, cursor.wait_for(|c| *c >= target))
                .await
                .map(|r| r.map(|c| *c));
            match waited {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(_)) => Err(PublishError::Stopped),
                Err(_) => Err(PublishError::Timeout {
                    waited_ms: msg.timeout.as_millis() as u64,
                    cursor: *cursor.borrow(),
                    target,
                }),
            }
        })
    }
}

impl Handler<GetStatus> for Publisher {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _msg: GetStatus, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(PublisherStatus {
            cursor: *self.cursor.borrow(),
            last_seq: self.store.last_seq().unwrap_or(0),
        })
    }
}

impl Handler<Stop> for Publisher {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Stop, _ctx: &mut Self::Context) -> Self::Result {
        let _ = self.stop.send(true);
        let task = self.task.take();
        Box::pin(
            async move {
                if let Some(task) = task {
                    let _ = task.await;
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        )
    }
}

/// Why a publishing session ended.
enum SessionEnd {
    Stopped,
    Failed(String),
}

/// The publishing loop; owns the window for its session.
struct PublishTask {
    store: Store,
    js: jetstream::Context,
    config: PublisherConfig,
    cursor: watch::Sender<u64>,
    stop: watch::Receiver<bool>,
    /// Since when sessions wait for this replica to apply the stream's
    /// last event (see [`PublishTask::resume`]).
    tail_wait_since: Option<std::time::Instant>,
}

/// How long sessions wait for a replica to apply the stream's last event
/// before publishing from the cursor anyway (a stream kept while the
/// cluster's log was made anew holds another log's events).
const REPLICA_TAIL_WAIT: Duration = Duration::from_secs(60);

impl PublishTask {
    async fn run(mut self) {
        let (done, done_rx) = oneshot::channel::<()>();
        let saver = tokio::spawn(save_cursor(
            self.store.clone(),
            self.cursor.subscribe(),
            done_rx,
        ));
        loop {
            match self.session().await {
                SessionEnd::Stopped => break,
                SessionEnd::Failed(why) => {
                    crate::metrics::with(|m| m.publisher_retries.add(1, &[]));
                    warn!(error = %why, cursor = *self.cursor.borrow(), "publishing interrupted; resuming from the cursor");
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.retry_delay) => {}
                        _ = self.stop.wait_for(|s| *s) => break,
                    }
                }
            }
        }
        // Final save, then the saver ends.
        let cursor = *self.cursor.borrow();
        drop(done);
        let _ = saver.await;
        info!(cursor, "publisher stopped");
    }

    async fn ensure_stream(&self) -> Result<jetstream::stream::Stream, String> {
        let config = jetstream::stream::Config {
            name: self.config.stream_name.clone(),
            subjects: vec![subject::EVENTS_WILDCARD.to_owned()],
            storage: StorageType::File,
            num_replicas: self.config.stream_replicas.max(1),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        self.js.get_or_create_stream(config).await.map_err(|e| {
            format!(
                "cannot create or find stream {}: {e}",
                self.config.stream_name
            )
        })
    }

    /// Up to `limit` events from `from` on: the rows the store keeps in
    /// memory when it holds `from` (no I/O, no thread hop; decoded one by
    /// one as they are published), else read from RocksDB off the async
    /// threads (see the module docs, "Reading the log").
    async fn read(&self, from: u64, limit: usize) -> Result<Vec<Pending>, String> {
        if let Some(rows) = self.store.recent_log_rows(from, limit) {
            return Ok(rows.into_iter().map(Pending::Recent).collect());
        }
        let store = self.store.clone();
        let events = tokio::task::spawn_blocking(move || store.read_log_events(from, limit))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(events
            .into_iter()
            .map(|event| Pending::Read(Box::new(event)))
            .collect())
    }

    /// Where the stream ends (step 1 of the module docs): moves the cursor
    /// past what the stream already holds of this log and returns the
    /// stream's last position, the window's fence.
    async fn resume(&mut self, stream: &jetstream::stream::Stream) -> Result<u64, String> {
        let state = &stream.cached_info().state;
        let last = state.last_sequence;
        if state.messages == 0 {
            return Ok(last);
        }
        let tail = match stream.get_raw_message(last).await {
            Ok(message) => {
                let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
                header("Cairn-Seq")
                    .and_then(|s| s.parse::<u64>().ok())
                    .zip(header("Nats-Msg-Id"))
            }
            // Deleted since: nothing to learn from it.
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => None,
            Err(e) => return Err(format!("reading the last message of the stream: {e}")),
        };
        let cursor = *self.cursor.borrow();
        if let Some((seq, id)) = tail.as_ref().filter(|(seq, _)| *seq > cursor) {
            let in_log = self
                .read(*seq, 1)
                .await
                .map_err(|e| format!("reading the log: {e}"))?;
            let first = in_log
                .into_iter()
                .next()
                .map(Pending::into_event)
                .transpose()
                .map_err(|e| format!("reading the log: {e}"))?;
            let log_id = first
                .filter(|e| e.envelope.seq == *seq)
                .map(|e| e.envelope.event_id);
            let tail = Some((*seq, id.as_str()));
            let mut resumed = resume_cursor(cursor, tail, log_id.as_deref());
            if self.config.replica {
                let last = self
                    .store
                    .last_seq()
                    .map_err(|e| format!("reading the log: {e}"))?;
                match replica_behind(cursor, tail, log_id.as_deref(), last) {
                    None => self.tail_wait_since = None,
                    Some(seq) => {
                        let since = *self
                            .tail_wait_since
                            .get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() < REPLICA_TAIL_WAIT {
                            return Err(format!(
                                "the stream's last event (seq {seq}) is past this replica's log (at {last}): publishing once it is applied"
                            ));
                        }
                        warn!(stream_seq = seq, last, waited = ?since.elapsed(),
                            "this replica's log has not reached the stream's last event; publishing from the cursor");
                        self.tail_wait_since = None;
                        resumed = cursor;
                    }
                }
            }
            if resumed > cursor {
                info!(
                    cursor,
                    resumed, "the stream holds events past the cursor; resuming after them"
                );
                self.cursor.send_replace(resumed);
                crate::metrics::published(resumed);
            } else {
                warn!(cursor, stream_seq = seq, event_id = %id,
                    "the stream ends with an event this log does not hold at that seq; publishing from the cursor");
            }
        }
        Ok(last)
    }

    async fn session(&mut self) -> SessionEnd {
        if *self.stop.borrow() {
            return SessionEnd::Stopped;
        }
        let stream = match self.ensure_stream().await {
            Ok(stream) => stream,
            Err(e) => return SessionEnd::Failed(e),
        };
        let stream_last = match self.resume(&stream).await {
            Ok(last) => last,
            Err(e) => return SessionEnd::Failed(e),
        };
        let mut committed = self.store.subscribe();
        let mut window = PublishWindow::new(
            *self.cursor.borrow(),
            stream_last,
            self.config.max_in_flight,
        );
        let mut buffer: VecDeque<Pending> = VecDeque::new();
        let mut acks: FuturesUnordered<BoxFuture<'static, (u64, AckResult)>> =
            FuturesUnordered::new();
        let mut stopping = false;
        debug!(
            cursor = window.cursor(),
            stream_last, "publishing session started"
        );
        loop {
            let last = *committed.borrow_and_update();
            while !stopping && window.room() > 0 && window.next_seq() <= last {
                if buffer.is_empty() {
                    // Read ahead a whole batch, whatever the window's room:
                    // one blocking read per batch, not per freed slot.
                    let limit = self.config.read_batch_events.max(1);
                    match self.read(window.next_seq(), limit).await {
                        Ok(events) => buffer.extend(events),
                        Err(e) => {
                            let why = format!("reading the log: {e}");
                            return self.abandon(&mut window, acks, why).await;
                        }
                    }
                    if buffer.is_empty() {
                        break;
                    }
                }
                let Some(next) = buffer.pop_front() else {
                    break;
                };
                let LogEvent {
                    envelope: env,
                    bytes: row,
                } = match next.into_event() {
                    Ok(event) => event,
                    Err(e) => {
                        let why = format!("reading the log: {e}");
                        return self.abandon(&mut window, acks, why).await;
                    }
                };
                let seq = env.seq;
                let subject = match subject_for(&env) {
                    Ok(s) => s,
                    Err(e) => {
                        return self
                            .abandon(&mut window, acks, format!("event {seq}: {e}"))
                            .await
                    }
                };
                let mut publish = PublishMessage::build()
                    .message_id(env.event_id.as_str())
                    .expected_last_sequence(window.expected_last_sequence(seq))
                    .header("Content-Type", "application/protobuf")
                    .header("Cairn-Seq", seq.to_string().as_str())
                    .header("Cairn-Stream", env.stream.as_str());
                // One `publish` span per event, a child of the span that
                // recorded it (the command's); its context goes on in the
                // message (the recorded one when no pipeline is installed).
                let span = tracing::info_span!(
                    parent: None,
                    "publish",
                    seq,
                    stream = %env.stream,
                );
                crate::trace::continue_recorded(&span, env.trace.as_ref());
                let sent_trace = crate::trace::of(&span)
                    .or_else(|| env.trace.clone().filter(|t| !t.traceparent.is_empty()));
                for (name, value) in crate::trace::fields(sent_trace.as_ref()) {
                    publish = publish.header(name, value.as_str());
                }
                // The stored row is the envelope's encoding: published as
                // it is, not encoded again.
                let publish = publish.payload(row);
                match self
                    .js
                    .send_publish(subject, publish)
                    .instrument(span)
                    .await
                {
                    Ok(ack) => {
                        window.sent(seq);
                        acks.push(await_ack(seq, ack));
                    }
                    Err(e) => {
                        let why = format!("publishing event {seq}: {e}");
                        return self.abandon(&mut window, acks, why).await;
                    }
                }
            }
            if stopping && acks.is_empty() {
                return SessionEnd::Stopped;
            }
            let step = tokio::select! {
                Some((seq, result)) = acks.next(), if !acks.is_empty() => Step::Ack(seq, result),
                changed = committed.changed(), if !stopping => Step::Committed { closed: changed.is_err() },
                _ = self.stop.wait_for(|s| *s), if !stopping => Step::Stop,
            };
            match step {
                Step::Ack(seq, Ok(ack)) => {
                    let at = window.expected_last_sequence(seq) + 1;
                    if !ack.duplicate && ack.sequence != at {
                        let why = format!(
                            "event {seq} stored at stream position {} instead of {at}",
                            ack.sequence
                        );
                        return self.abandon(&mut window, acks, why).await;
                    }
                    if let Some(cursor) = window.acked(seq) {
                        self.cursor.send_replace(cursor);
                        crate::metrics::published(cursor);
                    }
                }
                Step::Ack(seq, Err(e)) => {
                    let why = format!("ack of event {seq}: {e}");
                    return self.abandon(&mut window, acks, why).await;
                }
                Step::Committed { closed } => stopping |= closed,
                Step::Stop => stopping = true,
            }
        }
    }

    /// Ends a failed session (step 3 of the module docs): publishes
    /// nothing more and waits for the acks still due, at most
    /// `ack_timeout` + [`ABANDON_MARGIN`] (each ack times out after
    /// `ack_timeout` by itself); acks that succeed meanwhile still move the
    /// cursor.
    async fn abandon(
        &mut self,
        window: &mut PublishWindow,
        mut acks: FuturesUnordered<BoxFuture<'static, (u64, AckResult)>>,
        why: String,
    ) -> SessionEnd {
        let due = acks.len();
        let drain = async {
            while let Some((seq, result)) = acks.next().await {
                if result.is_ok() {
                    if let Some(cursor) = window.acked(seq) {
                        self.cursor.send_replace(cursor);
                        crate::metrics::published(cursor);
                    }
                }
            }
        };
        let drained = tokio::time::timeout(self.config.ack_timeout + ABANDON_MARGIN, drain)
            .await
            .is_ok();
        debug!(
            due,
            drained,
            cursor = *self.cursor.borrow(),
            "publishing window abandoned"
        );
        SessionEnd::Failed(why)
    }
}

/// An event of the session's read-ahead: read from RocksDB (decoded off
/// the async threads), or taken from the rows the store keeps in memory
/// (decoded when its turn comes).
enum Pending {
    /// Read from RocksDB, decoded (boxed: an envelope is large, a row
    /// small).
    Read(Box<LogEvent>),
    /// From the store's recent rows, not decoded yet.
    Recent(LogRow),
}

impl Pending {
    /// The event, decoded, with its stored row.
    fn into_event(self) -> Result<LogEvent, cairn_storage::StorageError> {
        match self {
            Pending::Read(event) => Ok(*event),
            Pending::Recent(row) => Ok(LogEvent {
                envelope: row.decode()?,
                bytes: row.bytes,
            }),
        }
    }
}

/// What woke a session up.
enum Step {
    /// The ack (or its failure) of an event.
    Ack(u64, AckResult),
    /// The log moved on, or (`closed`) the store is gone.
    Committed { closed: bool },
    /// Stop was asked for.
    Stop,
}

/// The result of one JetStream ack.
type AckResult = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>;

/// Waits for the ack of `seq`.
fn await_ack(seq: u64, ack: PublishAckFuture) -> BoxFuture<'static, (u64, AckResult)> {
    async move { (seq, ack.await) }.boxed()
}

/// Slack beyond `ack_timeout` when waiting for an abandoned window's acks.
const ABANDON_MARGIN: Duration = Duration::from_secs(1);

/// Time between two cursor saves.
const CURSOR_SAVE_INTERVAL: Duration = Duration::from_millis(100);

/// Persists the cursor every [`CURSOR_SAVE_INTERVAL`] when it moved, off
/// the async threads, and once more when the publisher ends (`done`
/// resolves). Acks never wake it.
async fn save_cursor(store: Store, cursor: watch::Receiver<u64>, mut done: oneshot::Receiver<()>) {
    let mut saved = *cursor.borrow();
    let mut tick = tokio::time::interval(CURSOR_SAVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ended = tokio::select! {
            _ = tick.tick() => false,
            _ = &mut done => true,
        };
        let now = *cursor.borrow();
        if now != saved {
            let store = store.clone();
            let result =
                tokio::task::spawn_blocking(move || store.set_meta_u64(meta::PUBLISH_CURSOR, now))
                    .await;
            match result {
                Ok(Ok(())) => saved = now,
                Ok(Err(e)) => warn!(error = %e, "cannot save publish cursor"),
                Err(e) => warn!(error = %e, "cursor save task failed"),
            }
        }
        if ended {
            return;
        }
    }
}
