//! The Publisher: every committed event, published to JetStream exactly
//! once (from a consumer's point of view), in log order.
//!
//! It tails the log from its persisted cursor (`meta/publish_cursor`) and
//! publishes each event on its subject
//! (`cairn.events.<namespace>.<repository>.<type>`) into the `CAIRN_EVENTS`
//! stream, created if missing (subjects `cairn.events.>`, file storage),
//! with `Nats-Msg-Id` = event id. The cursor advances only over events
//! JetStream has acknowledged ([`window::PublishWindow`]). When NATS goes
//! away, publishes fail or time out; the publisher waits, then resumes from
//! the cursor. Events published twice that way (sent before the failure,
//! acknowledged never) are dropped by JetStream's duplicate window, so a
//! consumer sees each event once. The cursor is saved without fsync: losing
//! its last moves on a crash only means re-publishing into the same window.
//!
//! The message body is the protobuf-encoded envelope
//! (`Content-Type: application/protobuf`); headers `Cairn-Seq` and
//! `Cairn-Stream` let consumers route without decoding.
//!
//! # Layout
//! - this module — the [`Publisher`] actor and its configuration.
//! - [`window`] — [`window::PublishWindow`], the in-flight window and the
//!   cursor, a plain component unit-tested without actix.
//! - [`messages`] — the messages the Publisher handles.
//! - [`error`] — [`PublishError`], in a leaf module so that `messages` does
//!   not import the parent that declares it.

pub mod error;
pub mod messages;
pub mod window;

use std::{collections::VecDeque, time::Duration};

use actix::prelude::*;
use async_nats::jetstream::{self, message::PublishMessage, stream::StorageType};
use cairn_events::{envelope, subject, v1::Envelope, StreamId};
use cairn_storage::{keys::meta, EventLog, Store};
use futures::{stream::FuturesUnordered, StreamExt};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

pub use error::PublishError;
pub use messages::{Flush, GetStatus, PublisherStatus, Stop};
use window::PublishWindow;

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
        }
    }
}

/// The subject `envelope` is published on. Repository streams map to
/// `cairn.events.<ns>.<repo>.<type>`; any other stream to
/// `cairn.events._.<stream>.<type>` (`_` is never a DNS-1123 namespace).
pub fn subject_for(envelope: &Envelope) -> Result<String, cairn_events::EventsError> {
    let kind = envelope::kind(envelope)?;
    let stream = StreamId::new(envelope.stream.clone())?;
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
}

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

    async fn ensure_stream(&self) -> Result<(), String> {
        let config = jetstream::stream::Config {
            name: self.config.stream_name.clone(),
            subjects: vec![subject::EVENTS_WILDCARD.to_owned()],
            storage: StorageType::File,
            num_replicas: self.config.stream_replicas.max(1),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "cannot create or find stream {}: {e}",
                    self.config.stream_name
                )
            })
    }

    async fn read(&self, from: u64, limit: usize) -> Result<Vec<Envelope>, String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.read_all(from, limit))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn session(&mut self) -> SessionEnd {
        if *self.stop.borrow() {
            return SessionEnd::Stopped;
        }
        if let Err(e) = self.ensure_stream().await {
            return SessionEnd::Failed(e);
        }
        let mut committed = self.store.subscribe();
        let mut window = PublishWindow::new(*self.cursor.borrow(), self.config.max_in_flight);
        let mut buffer: VecDeque<Envelope> = VecDeque::new();
        let mut acks = FuturesUnordered::new();
        let mut stopping = false;
        debug!(cursor = window.cursor(), "publishing session started");
        loop {
            let last = *committed.borrow_and_update();
            while !stopping && window.room() > 0 && window.next_seq() <= last {
                if buffer.is_empty() {
                    // Read ahead a whole batch, whatever the window's room:
                    // one blocking read per batch, not per freed slot.
                    let limit = self.config.read_batch_events.max(1);
                    match self.read(window.next_seq(), limit).await {
                        Ok(events) => buffer.extend(events),
                        Err(e) => return SessionEnd::Failed(format!("reading the log: {e}")),
                    }
                    if buffer.is_empty() {
                        break;
                    }
                }
                let Some(env) = buffer.pop_front() else { break };
                let seq = env.seq;
                let subject = match subject_for(&env) {
                    Ok(s) => s,
                    Err(e) => return SessionEnd::Failed(format!("event {seq}: {e}")),
                };
                let mut publish = PublishMessage::build()
                    .message_id(env.event_id.as_str())
                    .header("Content-Type", "application/protobuf")
                    .header("Cairn-Seq", seq.to_string().as_str())
                    .header("Cairn-Stream", env.stream.as_str());
                if let Some(trace) = env.trace.as_ref().filter(|t| !t.traceparent.is_empty()) {
                    publish = publish.header("traceparent", trace.traceparent.as_str());
                }
                let publish = publish.payload(envelope::encode(&env).into());
                match self.js.send_publish(subject, publish).await {
                    Ok(ack) => {
                        window.sent(seq);
                        acks.push(async move { (seq, ack.await) });
                    }
                    Err(e) => return SessionEnd::Failed(format!("publishing event {seq}: {e}")),
                }
            }
            if stopping && acks.is_empty() {
                return SessionEnd::Stopped;
            }
            tokio::select! {
                Some((seq, result)) = acks.next(), if !acks.is_empty() => match result {
                    Ok(_) => {
                        if let Some(cursor) = window.acked(seq) {
                            self.cursor.send_replace(cursor);
                        }
                    }
                    Err(e) => return SessionEnd::Failed(format!("ack of event {seq}: {e}")),
                },
                changed = committed.changed(), if !stopping => {
                    if changed.is_err() {
                        stopping = true;
                    }
                }
                _ = self.stop.wait_for(|s| *s), if !stopping => {
                    stopping = true;
                }
            }
        }
    }
}

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
