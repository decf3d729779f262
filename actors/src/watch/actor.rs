//! The Watcher actor: one per watch, a thin shell around
//! [`WatcherComponent`].
//!
//! Its input is one ordered stream: the start phase (the snapshot listing,
//! or the replay of the log up to the hub's registration position, both
//! read in `spawn_blocking` and handed over through a small bounded
//! channel), then the hub's queue, then a marker saying why the queue ended
//! (overflow → `Relist`; stop or shutdown → nothing). Each item goes
//! through the component; each line it yields is published to the deliver
//! subject, awaited before the next item is taken (`ctx.wait`), so lines
//! leave in order. A timer sends heartbeats (see the module docs of
//! [`crate::watch`], "Liveness"). When the actor stops it leaves the hub.

use std::{
    ops::ControlFlow,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use actix::prelude::*;
use async_nats::{RequestErrorKind, Subject};
use cairn_storage::{
    views::{package_revision_list::ListedRevision, PackageRevisionListView},
    EventLog, StorageError, Store, ViewRead,
};
use futures::{stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::error::WatchError;
use super::{
    component::WatcherComponent,
    config::{BUSY_HEARTBEAT_INTERVALS, MAX_MISSED_HEARTBEATS},
    filter::WatchFilter,
    hub::{Registration, WatchHub},
    messages::{HeartbeatOutcome, Input, StopWatch},
};

/// Items of the start phase in flight between the reading thread and the
/// actor: bounds the memory a large listing takes while the client reads.
const START_PHASE_CAPACITY: usize = 256;

/// How a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// List every matching revision, then a bookmark, then changes.
    Listing,
    /// Every matching event after `since_seq`, then changes.
    Resume {
        /// The last sequence number the client saw.
        since_seq: u64,
    },
}

/// What a watcher needs besides its registration.
#[derive(Debug)]
pub struct WatcherOptions {
    /// The watch's kinds and filter (the one registered with the hub).
    pub filter: Arc<WatchFilter>,
    /// Where lines are published.
    pub deliver_subject: String,
    /// Idle time before a heartbeat (and the heartbeat's answer timeout).
    pub heartbeat: Duration,
    /// Listing or resume.
    pub mode: StartMode,
    /// Answered with the watch's start position once known (the listing's
    /// snapshot sequence, or `since_seq`), or why the start failed.
    pub started: oneshot::Sender<Result<u64, WatchError>>,
    /// The span of the `watch.start` command: the watcher's start runs in
    /// a `watch.start` span, its child.
    pub span: tracing::Span,
}

/// One watch.
#[derive(Debug)]
pub struct Watcher {
    id: String,
    component: WatcherComponent,
    store: Store,
    client: async_nats::Client,
    hub: WatchHub,
    subject: Subject,
    heartbeat: Duration,
    mode: StartMode,
    registration: Option<Registration>,
    started: Option<oneshot::Sender<Result<u64, WatchError>>>,
    /// The `watch.start` command's span, until the actor has started (then
    /// dropped, so the command's span does not live as long as the watch).
    command_span: Option<tracing::Span>,
    /// The start phase is over (the queue's turn).
    live: bool,
    /// Envelopes queued for this watch and not yet taken (shared with the
    /// hub).
    pending: Arc<AtomicUsize>,
    batch_events: usize,
    /// A line was published since the last heartbeat tick.
    sent_since_tick: bool,
    ticks_since_heartbeat: u32,
    heartbeat_in_flight: bool,
    missed_heartbeats: u32,
}

impl Watcher {
    /// A watcher for `registration` (from `hub`). Nothing happens until the
    /// actor starts.
    pub fn new(
        registration: Registration,
        options: WatcherOptions,
        hub: WatchHub,
        store: Store,
        client: async_nats::Client,
    ) -> Self {
        let component = match options.mode {
            StartMode::Listing => WatcherComponent::listing(options.filter),
            StartMode::Resume { since_seq } => WatcherComponent::resume(options.filter, since_seq),
        };
        Self {
            id: registration.id.clone(),
            pending: registration.pending.clone(),
            live: false,
            component,
            batch_events: hub.config().read_batch_events.max(1),
            store,
            client,
            hub,
            subject: Subject::from(options.deliver_subject),
            heartbeat: options.heartbeat,
            mode: options.mode,
            registration: Some(registration),
            started: Some(options.started),
            command_span: Some(options.span),
            sent_since_tick: false,
            ticks_since_heartbeat: 0,
            heartbeat_in_flight: false,
            missed_heartbeats: 0,
        }
    }

    /// Publishes `line`; the next input waits until it is handed to the
    /// connection (so lines go out in order). With `last`, the actor stops
    /// once it is out.
    fn send(&mut self, line: Vec<u8>, last: bool, ctx: &mut Context<Self>) {
        self.sent_since_tick = true;
        let client = self.client.clone();
        let subject = self.subject.clone();
        // One future per line: actix polls queued `wait` futures newest
        // first, and not at all once stopping.
        ctx.wait(
            async move { client.publish(subject, line.into()).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    if let Err(e) = result {
                        warn!(watch = %act.id, error = %e, "cannot deliver a watch event; stopping");
                        ctx.stop();
                    } else if last {
                        ctx.stop();
                    }
                }),
        );
    }

    /// [`Self::send`] for an event: the delivery carries the trace context
    /// the event was recorded with (`traceparent`, `tracestate`).
    fn send_event(
        &mut self,
        line: Vec<u8>,
        trace: Option<&cairn_events::v1::TraceContext>,
        ctx: &mut Context<Self>,
    ) {
        let fields = crate::trace::fields(trace);
        if fields.is_empty() {
            return self.send(line, false, ctx);
        }
        self.sent_since_tick = true;
        let client = self.client.clone();
        let subject = self.subject.clone();
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in fields {
            headers.insert(name, value.as_str());
        }
        ctx.wait(
            async move {
                client
                    .publish_with_headers(subject, headers, line.into())
                    .await
            }
            .into_actor(self)
            .map(move |result, act, ctx| {
                if let Err(e) = result {
                    warn!(watch = %act.id, error = %e, "cannot deliver a watch event; stopping");
                    ctx.stop();
                }
            }),
        );
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.heartbeat_in_flight {
            return;
        }
        self.ticks_since_heartbeat += 1;
        let busy = std::mem::take(&mut self.sent_since_tick);
        if busy && self.ticks_since_heartbeat < BUSY_HEARTBEAT_INTERVALS {
            return;
        }
        self.ticks_since_heartbeat = 0;
        self.heartbeat_in_flight = true;
        if self.live {
            // Everything the hub dispatched is through the queue: the
            // heartbeat can vouch for all of it.
            if let Some(position) = self.hub.quiet_position(&self.id) {
                self.component.advance(position);
            }
        }
        let request = async_nats::Request::new()
            .payload(self.component.heartbeat().into())
            .timeout(Some(self.heartbeat));
        let client = self.client.clone();
        let subject = self.subject.clone();
        ctx.spawn(
            async move {
                match client.send_request(subject, request).await {
                    Ok(_) => HeartbeatOutcome::Answered,
                    Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                        HeartbeatOutcome::NoResponders
                    }
                    Err(_) => HeartbeatOutcome::Missed,
                }
            }
            .into_actor(self)
            .map(|outcome, act, ctx| act.on_heartbeat(outcome, ctx)),
        );
    }

    fn on_heartbeat(&mut self, outcome: HeartbeatOutcome, ctx: &mut Context<Self>) {
        self.heartbeat_in_flight = false;
        match outcome {
            HeartbeatOutcome::Answered => self.missed_heartbeats = 0,
            HeartbeatOutcome::Missed => {
                self.missed_heartbeats += 1;
                if self.missed_heartbeats >= MAX_MISSED_HEARTBEATS {
                    info!(watch = %self.id, missed = self.missed_heartbeats, "watch client gone (heartbeats unanswered); stopping");
                    ctx.stop();
                }
            }
            HeartbeatOutcome::NoResponders => {
                info!(watch = %self.id, "watch client gone (no responders); stopping");
                ctx.stop();
            }
        }
    }

    /// Reads the start phase off the async threads into `tx`.
    fn start_phase(&mut self, from_seq: u64, tx: mpsc::Sender<Input>) {
        let store = self.store.clone();
        let filter = Arc::new(self.component.filter().clone());
        let started = self.started.take();
        let batch = self.batch_events;
        match self.mode {
            StartMode::Listing => {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = list(&store, &filter, started, &tx) {
                        let _ = tx.blocking_send(Input::Failed(e.to_string()));
                    }
                });
            }
            StartMode::Resume { since_seq } => {
                if let Some(started) = started {
                    let _ = started.send(Ok(since_seq));
                }
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = replay(&store, &filter, since_seq, from_seq, batch, &tx) {
                        let _ = tx.blocking_send(Input::Failed(e.to_string()));
                    }
                });
            }
        }
    }
}

/// The listing: every matching revision at one snapshot, then the
/// snapshot's sequence as the bookmark. Blocking.
fn list(
    store: &dyn ViewRead,
    filter: &WatchFilter,
    started: Option<oneshot::Sender<Result<u64, WatchError>>>,
    tx: &mpsc::Sender<Input>,
) -> Result<(), StorageError> {
    let snapshot = store.read_snapshot();
    let seq = match snapshot.read_seq() {
        Ok(seq) => seq,
        Err(e) => {
            if let Some(started) = started {
                let _ = started.send(Err(WatchError::Listing(e.to_string())));
            }
            return Err(e);
        }
    };
    if let Some(started) = started {
        let _ = started.send(Ok(seq));
    }
    if filter.kinds.package_revisions {
        let f = &filter.filter;
        PackageRevisionListView::scan::<StorageError>(
            &*snapshot,
            &f.scope(),
            None,
            |row: ListedRevision<'_>| {
                if f.needs_head() && !f.matches_head(&row.listing()?) {
                    return Ok(ControlFlow::Continue(()));
                }
                let item = Input::Listed {
                    namespace: row.namespace.to_owned(),
                    name: row.name.to_owned(),
                    json: row.json.to_vec(),
                };
                Ok(match tx.blocking_send(item) {
                    Ok(()) => ControlFlow::Continue(()),
                    // The watcher stopped: stop reading.
                    Err(_) => ControlFlow::Break(()),
                })
            },
        )?;
    }
    let _ = tx.blocking_send(Input::Bookmark(seq));
    Ok(())
}

/// The replay: every admitted envelope after `since_seq` up to `to_seq`
/// (where the hub's queue takes over). Blocking.
fn replay(
    store: &dyn EventLog,
    filter: &WatchFilter,
    since_seq: u64,
    to_seq: u64,
    batch: usize,
    tx: &mpsc::Sender<Input>,
) -> Result<(), StorageError> {
    let mut next = since_seq + 1;
    while next <= to_seq {
        let limit = ((to_seq - next + 1) as usize).min(batch);
        let envelopes = store.read_all(next, limit)?;
        let Some(last) = envelopes.last().map(|e| e.seq) else {
            return Err(StorageError::Corrupt(format!(
                "log ends before seq {next}, the watch hub passed {to_seq}"
            )));
        };
        for envelope in envelopes {
            if filter.admits(&envelope)
                && tx
                    .blocking_send(Input::Replayed(Arc::new(envelope)))
                    .is_err()
            {
                return Ok(());
            }
        }
        next = last + 1;
    }
    Ok(())
}

impl Actor for Watcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(Registration {
            queue,
            overflowed,
            from_seq,
            ..
        }) = self.registration.take()
        else {
            ctx.stop();
            return;
        };
        let command = self.command_span.take().unwrap_or_else(tracing::Span::none);
        let _span =
            tracing::info_span!(parent: &command, "watch.start", watch = %self.id).entered();
        debug!(watch = %self.id, mode = ?self.mode, from_seq, "watch started");
        let (tx, start_rx) = mpsc::channel(START_PHASE_CAPACITY);
        self.start_phase(from_seq, tx);
        let start = receiver_stream(start_rx).chain(stream::once(async { Input::Live }));
        let live = receiver_stream(queue).map(Input::Queued);
        let end = stream::once(async move {
            if overflowed.load(Ordering::SeqCst) {
                Input::Overflowed
            } else {
                Input::Closed
            }
        });
        ctx.add_stream(start.chain(live).chain(end));
        ctx.run_interval(self.heartbeat, |act, ctx| act.tick(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.hub.unregister(&self.id);
        if let Some(started) = self.started.take() {
            let _ = started.send(Err(WatchError::StoppedWhileStarting));
        }
        debug!(watch = %self.id, cursor = self.component.cursor(), "watch stopped");
    }
}

/// A tokio receiver as a stream.
fn receiver_stream<T>(mut rx: mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl StreamHandler<Input> for Watcher {
    fn handle(&mut self, input: Input, ctx: &mut Self::Context) {
        match input {
            Input::Listed {
                namespace,
                name,
                json,
            } => {
                let line = self.component.listed(&namespace, &name, &json);
                self.send(line, false, ctx);
            }
            Input::Bookmark(seq) => {
                let line = self.component.bookmark(seq);
                self.send(line, false, ctx);
            }
            Input::Replayed(envelope) => {
                if let Some(line) = self.component.event(&envelope) {
                    crate::metrics::with(|m| m.watch_delivered.add(1, &[]));
                    self.send_event(line, envelope.trace.as_ref(), ctx);
                }
            }
            Input::Live => self.live = true,
            Input::Queued(envelope) => {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                if let Some(line) = self.component.event(&envelope) {
                    crate::metrics::with(|m| m.watch_delivered.add(1, &[]));
                    self.send_event(line, envelope.trace.as_ref(), ctx);
                }
            }
            Input::Overflowed => {
                info!(watch = %self.id, cursor = self.component.cursor(), "watch fell behind its queue; told to relist");
                crate::metrics::with(|m| m.watch_relists.add(1, &[]));
                self.send(WatcherComponent::relist(), true, ctx);
            }
            Input::Closed => ctx.stop(),
            Input::Failed(message) => {
                warn!(watch = %self.id, error = %message, "watch start failed");
                let line = serde_json::json!({"type": "Error", "message": message})
                    .to_string()
                    .into_bytes();
                self.send(line, true, ctx);
            }
        }
    }

    /// The stream always ends with a marker ([`Input::Overflowed`] or
    /// [`Input::Closed`]) that stops the actor once its line is out.
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl Handler<StopWatch> for Watcher {
    type Result = ();

    fn handle(&mut self, msg: StopWatch, ctx: &mut Self::Context) {
        let _span =
            tracing::info_span!(parent: &msg.span, "watch.stop", watch = %self.id).entered();
        debug!(watch = %self.id, "watch stopping");
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use cairn_storage::{views::default_views, StoreConfig};
    use tracing_subscriber::{filter::LevelFilter, layer::SubscriberExt as _};

    use super::*;
    use crate::{test_spans::Capture, watch::WatchConfig};

    /// Bound of every wait.
    const WAIT: Duration = Duration::from_secs(10);

    /// At INFO, a watcher's start runs in a `watch.start` span, child of
    /// the span its options carry (the `watch.start` command's), and its
    /// stop through the hub in a `watch.stop` span, child of the span the
    /// hub was called in (the `watch.stop` command's).
    #[test]
    fn a_watchers_start_and_stop_spans_are_children_of_their_commands() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry()
            .with(LevelFilter::INFO)
            .with(capture.clone());
        let _default = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().unwrap();
        actix_rt::System::new().block_on(async {
            let store =
                Store::open(StoreConfig::new(dir.path().join("db")), default_views()).unwrap();
            let hub = WatchHub::start(store.clone(), WatchConfig::default());
            // No server: lines are queued in the client, never delivered.
            let client = async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connect("127.0.0.1:1")
                .await
                .unwrap();
            let filter = Arc::new(WatchFilter::default());
            let registration = hub.register(filter.clone()).unwrap();
            let id = registration.id.clone();
            let (started, seq) = oneshot::channel();
            let start_command = tracing::info_span!("start_command");
            let options = WatcherOptions {
                filter,
                deliver_subject: "_INBOX.watch".into(),
                heartbeat: Duration::from_secs(60),
                mode: StartMode::Listing,
                started,
                span: start_command.clone(),
            };
            let watcher = Watcher::new(registration, options, hub.clone(), store, client).start();
            assert!(hub.attach(&id, watcher.recipient()));
            let seq = tokio::time::timeout(WAIT, seq).await.unwrap().unwrap();
            assert_eq!(seq, Ok(0), "an empty store lists nothing up to 0");
            let stop_command = tracing::info_span!("stop_command");
            assert!(stop_command.in_scope(|| hub.stop(&id)));
            capture
                .wait_for_chain("watch.stop < stop_command", WAIT)
                .await;
        });
        let mut chains = capture.chains();
        chains.sort();
        assert_eq!(
            chains,
            [
                "start_command",
                "stop_command",
                "watch.start < start_command",
                "watch.stop < stop_command",
            ]
        );
    }
}
