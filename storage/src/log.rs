//! The event log: an append-only, totally ordered sequence of envelopes,
//! partitioned into streams.
//!
//! Invariants every implementation keeps (checked by [`crate::conformance`]):
//! - global sequence numbers start at 1 and strictly increase with no gaps;
//! - each stream's versions start at 1 and are contiguous;
//! - an append is all-or-nothing, and acknowledged only once durable;
//! - an append with a stale expected version writes nothing and fails with
//!   [`StorageError::Conflict`] naming the expected and actual versions.

use std::fmt;

use cairn_events::{
    envelope::Metadata,
    v1::{Envelope, Event},
    StreamId,
};

use crate::StorageError;

/// What the caller believes the stream's current version is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the version is.
    Any,
    /// The stream must have no events yet.
    NoStream,
    /// The stream's last event must have this version (`0` = no events).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies the expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => v == actual,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// The result of a successful append.
#[derive(Clone, Debug, PartialEq)]
pub struct Appended {
    /// The committed envelopes, with `seq` and `stream_version` assigned.
    pub envelopes: Vec<Envelope>,
}

impl Appended {
    /// Sequence number of the first appended event.
    pub fn first_seq(&self) -> u64 {
        self.envelopes.first().map_or(0, |e| e.seq)
    }

    /// Sequence number of the last appended event.
    pub fn last_seq(&self) -> u64 {
        self.envelopes.last().map_or(0, |e| e.seq)
    }

    /// The stream's version after the append.
    pub fn stream_version(&self) -> u64 {
        self.envelopes.last().map_or(0, |e| e.stream_version)
    }
}

/// An append-only event log. All calls block: from async code call them via
/// `spawn_blocking` or use the async methods of [`crate::Store`].
pub trait EventLog: Send + Sync {
    /// Appends `events` to `stream` if it is at `expected`, atomically and
    /// durably. Returns once the events survive a crash.
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
        metadata: Metadata,
    ) -> Result<Appended, StorageError>;

    /// Up to `limit` events of `stream` with version ≥ `from_version`, in order.
    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StorageError>;

    /// Up to `limit` events with `seq` ≥ `from_seq`, in log order.
    fn read_all(&self, from_seq: u64, limit: usize) -> Result<Vec<Envelope>, StorageError>;

    /// The highest committed sequence number (0 when the log is empty).
    fn last_seq(&self) -> Result<u64, StorageError>;

    /// The version of `stream`'s last event (0 when it has none).
    fn stream_version(&self, stream: &StreamId) -> Result<u64, StorageError>;
}
