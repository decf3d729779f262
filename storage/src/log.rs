//! The event log: an append-only, totally ordered sequence of envelopes,
//! partitioned into streams.
//!
//! Invariants every implementation keeps (checked by the `conformance` suites, feature `testsuite`):
//! - global sequence numbers start at 1 and strictly increase with no gaps;
//! - each stream's versions start at 1 and are contiguous;
//! - an append is all-or-nothing, and acknowledged only once durable;
//! - an append with a stale expected version writes nothing and fails with
//!   [`StorageError::Conflict`] naming the expected and actual versions.
//!
//! Compaction ([`crate::compaction`]) relaxes "no gaps" for the stream
//! classes it covers: the sequence numbers (and stream versions) of the
//! events it removed are gone, and readers skip them.
//!
//! # Replication
//! [`ReplicatedLog::apply_replicated`] writes a commit another node's writer
//! already sequenced — envelopes with their `seq`, stream, stream version,
//! `recorded_at`, event ids and metadata — through the same writer and the
//! same view fold as an append, so the log rows and every view end up
//! byte-identical to the original's. Re-applying a commit is a no-op; a
//! commit that does not continue the log is [`StorageError::ReplicationGap`].

use cairn_events::{
    envelope::Metadata,
    v1::{Envelope, Event},
    StreamId,
};

pub use crate::version::ExpectedVersion;
use crate::StorageError;

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

/// One row of the `log` column family as stored: the event's `seq` and
/// its bytes, the protobuf encoding of its envelope (what every path that
/// writes the log — appends, replicated and sequenced commits — writes,
/// and what a checkpoint copies), shared without copying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRow {
    /// The event's global sequence number.
    pub seq: u64,
    /// The stored row: the envelope's encoding.
    pub bytes: bytes::Bytes,
}

impl LogRow {
    /// The envelope the row holds (decoded, schema checked and upcast, as
    /// every log read does).
    pub fn decode(&self) -> Result<Envelope, StorageError> {
        cairn_events::envelope::decode(&self.bytes).map_err(|source| StorageError::Event {
            seq: self.seq,
            source,
        })
    }
}

/// An event read from the log with the row it was decoded from (see
/// [`crate::Store::read_log_events`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LogEvent {
    /// The decoded envelope.
    pub envelope: Envelope,
    /// The stored row, byte for byte.
    pub bytes: bytes::Bytes,
}

/// What [`ReplicatedLog::apply_replicated`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicated {
    /// The commit's events (from `first_seq`; a prefix already present is
    /// skipped) were written; the log now ends at `last_seq`.
    Applied {
        /// First sequence number written.
        first_seq: u64,
        /// Last sequence number written.
        last_seq: u64,
    },
    /// Every event of the commit was in the log already: nothing written.
    AlreadyApplied {
        /// The log's last sequence number.
        last_seq: u64,
    },
}

/// One message of a replicated log whose order — not this node's writer —
/// sequences the events (a cluster's JetStream stream): the envelopes as the
/// stream's owner built them, `seq` left 0, and the message's `position`
/// in that order. Every node applies the same messages in the same order,
/// so every node assigns the same sequence numbers: `seq` is the count of
/// events applied before, plus one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SequencedCommit {
    /// The message's position in the replicated order (a JetStream stream
    /// sequence): strictly increasing, gaps allowed.
    pub position: u64,
    /// The events, `seq` 0; none for a message that only moves the
    /// position (an ownership fence).
    pub envelopes: Vec<Envelope>,
    /// Each envelope's bytes as the message carried them (what
    /// `envelopes` was decoded from), or empty. When given, one per
    /// envelope, each event's log row is these bytes with its `seq`
    /// spliced in ([`cairn_events::envelope::encode_with_seq`]) rather
    /// than an encoding made again; bytes not in prost's field order are
    /// encoded again all the same.
    pub encoded: Vec<bytes::Bytes>,
    /// Why every node refuses the message, decided from the message alone
    /// before it reaches the store (it does not decode, or an envelope
    /// names another stream than the subject it was published on, which
    /// is what fences that stream): then `envelopes` is empty, nothing of
    /// it is written and the position moves past it
    /// ([`Sequenced::Refused`]).
    pub refused: Option<String>,
}

/// What [`crate::Store::apply_sequenced_async`] did with one
/// [`SequencedCommit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sequenced {
    /// The events were written at `first_seq..=last_seq`.
    Applied {
        /// First sequence number written.
        first_seq: u64,
        /// Last sequence number written.
        last_seq: u64,
    },
    /// No events (a fence): only the position moved.
    Empty,
    /// Its position is at or below the log's replication position: applied
    /// before, nothing written.
    AlreadyApplied,
    /// Refused, identically on every node (a stream version that does not
    /// continue its stream, a malformed envelope): nothing of it written,
    /// the position moves past it so the log never stalls on it.
    Refused(String),
}

/// Every column family of a log, by name, each with its rows in key
/// order: for comparing replicas byte for byte.
pub type StateDump = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

/// A log that can follow another node's: it accepts commits sequenced
/// elsewhere. All calls block.
pub trait ReplicatedLog: EventLog {
    /// Writes `commit` — consecutive envelopes exactly as another node's
    /// writer committed them (`seq`, stream, stream version, `recorded_at`,
    /// event id, metadata) — durably and atomically, folding them into
    /// every view like an append. Envelopes whose `seq` the log already
    /// holds must be identical to the stored ones and are skipped (so
    /// re-applying a commit writes nothing and returns
    /// [`Replicated::AlreadyApplied`]); a stored one that differs is
    /// [`StorageError::ReplicaDiverged`]. The rest must continue the log:
    /// the first `seq` must be the last one plus 1, and each stream's
    /// version its current version plus 1, or the call fails with
    /// [`StorageError::ReplicationGap`] naming the expected and found
    /// numbers, and writes nothing.
    ///
    /// A commit this log could not read back is refused with
    /// [`StorageError::InvalidReplicated`], naming what is wrong, before
    /// anything is written: more than [`ReplicatedLog::commit_max_events`]
    /// envelopes, sequence numbers that are not consecutive (or would
    /// overflow), a `seq` or stream version of 0, an envelope
    /// `cairn_events::envelope::decode` refuses (a schema version this
    /// build does not understand, no payload), an event larger than
    /// [`ReplicatedLog::event_max_bytes`], an invalid stream name, an empty
    /// event id, or an event id, correlation id, causation id, principal,
    /// traceparent or tracestate that appends would refuse (longer than
    /// [`crate::store::METADATA_MAX_BYTES`] or holding control characters:
    /// they travel in NATS headers).
    fn apply_replicated(&self, commit: Vec<Envelope>) -> Result<Replicated, StorageError>;

    /// Most envelopes one commit may hold (at least what one commit of
    /// this log's own writer can hold).
    fn commit_max_events(&self) -> usize;

    /// Largest encoded event (the envelope's `event`), in bytes.
    fn event_max_bytes(&self) -> usize;

    /// Every column family's rows (the log, the stream index, `meta`, the
    /// blob rows and references, every view), for comparing replicas. Node
    /// local bookkeeping (the publish cursor in `meta`) may differ between
    /// nodes that hold the same log.
    fn state_dump(&self) -> Result<StateDump, StorageError>;
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

    /// Up to `limit` events of `stream` with `seq` ≥ `from_seq`, in order
    /// (a stream read that resumes at a global position, as `log.read`
    /// does). The default binary-searches the stream's versions through
    /// [`EventLog::read_stream`] (sequence numbers grow with versions, and
    /// a read skips versions compaction removed): O(log n) reads plus the
    /// events returned. An implementation with a cheaper index overrides it.
    fn read_stream_from_seq(
        &self,
        stream: &StreamId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, StorageError> {
        // The first version whose event (or the next one present) has
        // `seq` ≥ `from_seq`; `last + 1` when there is none.
        let (mut low, mut high) = (1, self.stream_version(stream)? + 1);
        while low < high {
            let mid = low + (high - low) / 2;
            match self.read_stream(stream, mid, 1)?.first() {
                Some(e) if e.seq < from_seq => low = e.stream_version.max(mid) + 1,
                _ => high = mid,
            }
        }
        self.read_stream(stream, low, limit)
    }

    /// Up to `limit` events with `seq` ≥ `from_seq`, in log order.
    fn read_all(&self, from_seq: u64, limit: usize) -> Result<Vec<Envelope>, StorageError>;

    /// The highest committed sequence number (0 when the log is empty).
    fn last_seq(&self) -> Result<u64, StorageError>;

    /// The version of `stream`'s last event (0 when it has none).
    fn stream_version(&self, stream: &StreamId) -> Result<u64, StorageError>;
}
