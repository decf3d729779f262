//! What the writer thread is asked to do: [`Command`] and its payloads,
//! and the rebuild types callers see. A leaf module: the callers (reads,
//! the writer's async API) and the writer thread both name them.

use std::{sync::Arc, time::SystemTime};

use cairn_events::{
    envelope::Metadata,
    v1::{Envelope, Event},
    StreamId,
};
use tokio::sync::oneshot;

use super::blobs::GcCandidate;
use crate::{
    blob::GcStats,
    compaction::{CompactionPolicy, CompactionStats},
    log::{Appended, Replicated, Sequenced, SequencedCommit},
    ExpectedVersion, StorageError,
};

/// Called with `(events replayed, events to replay)` while views rebuild.
pub type RebuildProgress = Box<dyn Fn(u64, u64) + Send>;

/// What a rebuild did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuildStats {
    /// Names of the views rebuilt.
    pub views: Vec<String>,
    /// Events replayed.
    pub events: u64,
}

pub(super) struct AppendRequest {
    pub(super) stream: StreamId,
    pub(super) expected: ExpectedVersion,
    pub(super) events: Vec<Event>,
    pub(super) metadata: Metadata,
    /// Whether its group commit must be fsynced before it is answered.
    pub(super) sync: bool,
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

pub(super) enum Command {
    Append(AppendRequest, Reply<Appended>),
    /// The appends of one pipelined call ([`super::Store::append_pipelined`]),
    /// in order: one message, so the writer takes them into one group
    /// commit together rather than waking up at the first and committing
    /// the others in the next group (a second fsync).
    AppendMany(Vec<(AppendRequest, Reply<Appended>)>),
    Rebuild(Vec<String>, Option<RebuildProgress>, Reply<RebuildStats>),
    /// A batch of a collection's candidates, re-checked and deleted on the
    /// writer (see `blobs`), with every prefix a reference may live under.
    DeleteUnreferencedBlobs(Vec<GcCandidate>, Arc<[Vec<u8>]>, Reply<GcStats>),
    Replicate(Vec<Envelope>, Reply<Replicated>),
    Sequence(Vec<SequencedCommit>, Reply<Vec<Sequenced>>),
    Compact(
        Arc<dyn CompactionPolicy>,
        SystemTime,
        Reply<CompactionStats>,
    ),
    /// A checkpoint of the database into this directory.
    Checkpoint(std::path::PathBuf, Reply<super::checkpoint::Checkpointed>),
    Shutdown(oneshot::Sender<()>),
}
