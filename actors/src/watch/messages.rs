//! Messages the Watcher actor handles.

use std::sync::Arc;

use actix::Message;
use cairn_events::v1::Envelope;

/// Stops the watcher (`watch.stop`, node shutdown). Nothing more is sent.
/// The watcher opens its `watch.stop` span as a child of `span`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopWatch {
    /// The span of the command that caused it (`watch.stop`'s, or the
    /// caller's at shutdown).
    pub span: tracing::Span,
}

/// What the watcher's input stream carries (its `StreamHandler` items):
/// the start phase (listing or replay, read off the async threads), then
/// the hub's queue, then why the queue ended.
#[derive(Debug)]
pub enum Input {
    /// A revision of the initial listing (already filtered).
    Listed {
        /// Its namespace.
        namespace: String,
        /// Its object name.
        name: String,
        /// Its JSON form.
        json: Vec<u8>,
    },
    /// The listing is complete at this sequence number.
    Bookmark(u64),
    /// An envelope replayed from the log (resume).
    Replayed(Arc<Envelope>),
    /// The start phase is over: the hub's queue follows.
    Live,
    /// An envelope taken from the hub's queue.
    Queued(Arc<Envelope>),
    /// The queue overflowed: the client must relist.
    Overflowed,
    /// The queue ended without overflow: the watch was stopped or the hub
    /// shut down.
    Closed,
    /// The start phase failed (storage error); the watcher stops.
    Failed(String),
}

/// The outcome of one heartbeat request.
#[derive(Debug)]
pub(crate) enum HeartbeatOutcome {
    /// The client answered.
    Answered,
    /// No answer within the interval.
    Missed,
    /// Nobody listens on the deliver subject.
    NoResponders,
}
