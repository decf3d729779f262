//! Retention per stream class: compaction of keyed streams.
//!
//! Repository streams (`repo/…`) keep their whole history, always: a policy
//! whose class would cover them is refused with
//! [`StorageError::InvalidCompaction`].
//! Other stream classes may hold keyed state whose history is of no use
//! (e.g. a key-value class under `kv/`). For those, [`crate::Store::compact`]
//! keeps only the latest event per key, plus tombstones (deletes) for a
//! retention window, as a [`CompactionPolicy`] supplied by the domain says.
//!
//! # What compaction removes
//! A class is the set of streams whose id starts with
//! [`CompactionPolicy::stream_prefix`]. Among the class's events, grouped by
//! [`CompactionPolicy::key`] (keys are class-wide: put the stream id in the
//! key if keys are per stream), an event is removed when
//! - a later event of the class has the same key (it is superseded), or
//! - it is the latest of its key, a tombstone
//!   ([`CompactionPolicy::is_tombstone`]), and it was recorded more than
//!   [`CompactionPolicy::tombstone_retention`] before the compaction's
//!   `now` (readers had that long to see the delete).
//!
//! Never removed: events whose key is `None`, the last event of every
//! stream (its head), so a stream's version — and every expected-version
//! check of a later append — is the same as before, and a tombstone whose
//! key still has an older event kept as a head (removing the tombstone
//! would let a rebuild bring the key back). Removing an event
//! deletes its log row and its stream index row, in the writer thread
//! (appends wait), in batches of at most [`COMPACTION_BATCH_EVENTS`].
//! Memory: the class's stream index rows (stream id, version, seq) and one
//! entry per distinct key are held while it runs.
//!
//! # The log after compaction
//! - The sequence numbers (and stream versions) of removed events are gone
//!   and never reused. [`crate::EventLog::read_all`] and
//!   [`crate::EventLog::read_stream`] skip them: they return the remaining
//!   events in order, so "no gaps" holds for sequence numbers above the
//!   highest sequence any compaction saw (`meta` `compacted_through`) and,
//!   for streams, outside compacted classes. Below it a missing row is a
//!   compaction's doing, above it still corruption.
//! - [`crate::EventLog::last_seq`] and [`crate::EventLog::stream_version`]
//!   do not change: the global last event is its stream's head, and heads
//!   are never removed.
//! - Before deleting anything, the compaction records the class and
//!   `compacted_through` in `meta` (synced), so a crash half way leaves a
//!   log whose gaps readers already accept; running it again finishes it.
//! - A replica can follow a compacted log only from a position after its
//!   `compacted_through` (a [`crate::ReplicatedLog`] refuses gaps).
//!
//! # Views stay equal to a rebuild
//! "Rebuild views from the compacted log == live views" holds when every
//! view is, for the events of a compactable class, **last-writer-wins per
//! key**: the rows an event of key `k` leaves depend only on the latest
//! event of `k` (a tombstone leaves no row for `k`), never on earlier ones
//! or on counts. Then folding only the latest event per key gives the same
//! rows as folding the whole history, and a tombstone removed after its
//! window leaves the same rows (none) as one kept. A view's checkpoint is
//! the last sequence number, which compaction keeps. cairn's own views
//! read only repository streams, so they are unaffected — except the
//! `requests` view, which folds the idempotency key any event carries
//! (key-value writes carry one): compaction keeps a superseded event that
//! carries a key for the class's tombstone retention, and removes the
//! key's row with the event (see [`crate::views::requests`]), so the
//! rebuilt view equals the live one there too. A domain adding a
//! compactable class must keep its views to that rule; the conformance
//! suite checks it for a last-writer-wins test view.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use cairn_events::v1::Envelope;

use crate::{read::ViewDump, EventLog, StorageError};

/// An [`EventLog`] whose stream classes can be compacted, and whose views
/// can be rebuilt and compared: what the compaction conformance suite
/// (`conformance::compaction`) needs, so it runs against any backend.
/// [`crate::Store`] implements it with its inherent methods.
pub trait CompactingLog: EventLog {
    /// Compacts the stream class of `policy` as of `now` (see the module
    /// docs); a class that is or covers repository streams is refused with
    /// [`StorageError::InvalidCompaction`] and nothing is compacted.
    fn compact(
        &self,
        policy: Arc<dyn CompactionPolicy>,
        now: SystemTime,
    ) -> Result<CompactionStats, StorageError>;

    /// Rebuilds every view from the (compacted) log.
    fn rebuild_views(&self) -> Result<(), StorageError>;

    /// Every view's full contents, in fold order.
    fn view_dumps(&self) -> Result<Vec<ViewDump>, StorageError>;
}

/// Most events removed by one write batch of a compaction.
pub const COMPACTION_BATCH_EVENTS: usize = 10_000;

/// How a domain's stream class is compacted.
pub trait CompactionPolicy: Send + Sync + fmt::Debug {
    /// The class: every stream whose id starts with this (e.g. `kv/`). Must
    /// not be empty, and must neither cover nor be covered by `repo/`.
    fn stream_prefix(&self) -> &str;

    /// The key `envelope` sets or deletes; `None` keeps the event forever.
    fn key(&self, envelope: &Envelope) -> Option<Vec<u8>>;

    /// Whether `envelope` deletes its key.
    fn is_tombstone(&self, envelope: &Envelope) -> bool;

    /// How long a tombstone is kept after it was recorded (so readers
    /// following the log see the delete), before it is removed too.
    fn tombstone_retention(&self) -> Duration;
}

/// What a compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Events of the class examined.
    pub scanned: u64,
    /// Events removed because a later one has the same key.
    pub superseded: u64,
    /// Tombstones removed because their retention had passed.
    pub expired_tombstones: u64,
    /// The highest sequence number the compaction saw (its log position).
    pub compacted_through: u64,
}

/// Checks that `prefix` names a class other than the repository streams.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), crate::StorageError> {
    const REPO: &str = "repo/";
    if prefix.is_empty() {
        return Err(crate::StorageError::InvalidCompaction(
            "the stream prefix is empty: it would cover every stream".into(),
        ));
    }
    if prefix.starts_with(REPO) || REPO.starts_with(prefix) {
        return Err(crate::StorageError::InvalidCompaction(format!(
            "stream prefix {prefix:?} covers repository streams, which keep their whole history"
        )));
    }
    if prefix.contains('\0') {
        return Err(crate::StorageError::InvalidCompaction(format!(
            "stream prefix {prefix:?} contains a NUL byte"
        )));
    }
    Ok(())
}
