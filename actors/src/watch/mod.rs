//! Watches: list-then-watch of package revisions (and repository events),
//! delivered over NATS, in log order, without gaps.
//!
//! # Design
//! One [`WatchHub`] per node follows the store's commits
//! ([`cairn_storage::Store::subscribe`]), reads each newly committed
//! envelope **once** (`read_all`, off the async threads) and offers it to
//! every registered watcher: the watcher's [`WatchFilter`] is applied at
//! dispatch, and an envelope it admits goes into the watcher's **bounded**
//! queue (`watch.queue-size`). A queue that is full when an envelope must go
//! in marks its watcher *overflowed* and drops the sender: the watcher
//! delivers what was queued, then `{"type":"Relist"}`, and stops — it never
//! silently skips an event. One read batch is dispatched without yielding,
//! so on the node's single-threaded arbiter what fits in a queue is
//! deterministic.
//!
//! Each watch is a [`Watcher`] actor (a thin shell around
//! [`WatcherComponent`]), started by `cairn.v1.watch.start`
//! (`service/watch.rs`). It registers with the hub *first*, so the
//! queue holds every admitted event after the hub's dispatch position `D`,
//! and then:
//! - **listing start** (no `since_seq`): scans the `package_revision_list`
//!   view at a RocksDB snapshot whose last sequence `N` is read from the same
//!   snapshot (`N ≥ D`), sends each matching revision as
//!   `{"type":"Added","object":{…}}` and then `{"type":"Bookmark","seq":N}`,
//!   then the queued events with seq > N;
//! - **resume** (`since_seq: S`): replays the log from `S + 1` up to `D`
//!   (through the same filter), then the queued events after `D`.
//!
//! In both cases the component keeps a cursor (the last sequence it
//! delivered or passed over) and drops any event at or below it, so the
//! hand-over from listing or replay to the queue neither repeats nor skips
//! an event. Live events are `{"type":"Added|Modified|Deleted","seq":N,
//! "object":{…}}`.
//!
//! # Filters and transitions
//! The filter has the fields of `pkgrev.list`. Namespace, repository,
//! path, package and workspace never change under a revision's name; the
//! others (revision, lifecycle, labels, annotations, latest) can. When the filter uses
//! one of those, a revision can enter or leave the filter by a `Modified`,
//! so the component remembers the names it has reported as matching:
//! a `Modified` that no longer matches a remembered name is sent as
//! `Deleted`; one that matches a name it never reported is sent as `Added`
//! after a listing start (the watcher knows everything that matched) and as
//! `Modified` after a resume (the client may know it). The hub therefore
//! admits, for such filters, every `Modified` in the immutable scope; `Added`
//! must match entirely, and `Deleted` must match on the revision it carries
//! (`PackageRevisionDeleted.last`; events written before that field existed
//! are admitted on namespace and repository alone).
//!
//! # Liveness
//! After `heartbeat_ms` without an event (and at least every four intervals
//! while events flow) the watcher sends `{"type":"Heartbeat","seq":<cursor>}`
//! as a NATS *request* to the deliver subject; the client answers with any
//! body. The heartbeat's `seq` vouches that every matching event up to it
//! has been delivered: once the start phase is over and the watcher has
//! taken everything the hub queued for it ([`WatchHub::quiet_position`]),
//! its cursor moves to the hub's position, so a client that resumes from a
//! heartbeat skips the log's unrelated tail. "No responders", or two
//! unanswered heartbeats in a row, stop the watcher; a stopped watcher
//! leaves the hub, so the node's count of live watchers (`$SRV.STATS`,
//! `data.watchers` of the `watch-start` endpoint) goes back down.
//!
//! # Layout
//! - [`config`] — [`WatchConfig`] (queue size, watcher cap, read batch) and
//!   the heartbeat bounds.
//! - [`filter`] — [`WatchFilter`]: kinds and the `pkgrev.list` filter
//!   ([`crate::revision_filter::Filter`]); what the hub admits.
//! - [`component`] — [`WatcherComponent`]: cursor, transitions, the JSON
//!   lines; unit-tested without actix or NATS.
//! - [`messages`] — the [`Watcher`] actor's messages.
//! - [`error`] — [`WatchError`], why a watch did not start, mapped once
//!   into the service's error.
//! - [`hub`] — [`WatchHub`]: registration, the bounded queues, dispatch.
//! - [`actor`] — the [`Watcher`] actor: start phase, delivery, heartbeats.
//! - this module — declarations and re-exports only.
//!
//! Imports (`a → b`: a uses b) form no cycle: `config`, `error` and
//! `messages` use no watch module; `filter` → `error`; `component` →
//! `filter`; `hub` → `config`, `error`, `filter`, `messages`; `actor` → all
//! of those and `hub`. No
//! submodule imports from this module, and none from `crate::service` (the
//! NATS edge that starts watches).

pub mod actor;
pub mod component;
pub mod config;
pub mod error;
pub mod filter;
pub mod hub;
pub mod messages;

pub use actor::{StartMode, Watcher, WatcherOptions};
pub use component::WatcherComponent;
pub use config::{
    WatchConfig, BUSY_HEARTBEAT_INTERVALS, DEFAULT_HEARTBEAT_MS, MAX_HEARTBEAT_MS,
    MAX_MISSED_HEARTBEATS, MIN_HEARTBEAT_MS,
};
pub use error::WatchError;
pub use filter::{Kinds, WatchFilter};
pub use hub::{Registration, WatchHub};
pub use messages::StopWatch;
