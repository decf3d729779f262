//! A changed sync's reconciliation, a chunk at a time, so that a sync of
//! any size holds a bounded amount of memory (the chunks the node-wide
//! [`crate::timing::SyncBudget`] lets it reserve), never the whole
//! repository. Blocking: the sync runs each step off the arbiter.
//!
//! 1. **Changes**: each chunk is the next batch of the discovery
//!    ([`crate::origin::DiscoveryStream`]), sized to the chunk's bytes by
//!    an estimate per revision (the previous batch's average, see
//!    [`revision_bytes`]) and to `store.append-max-events`. Its resources
//!    are put in the blob store as it is read (pinned until its events
//!    commit); each revision is compared with its own row in the
//!    `package_revisions` view (a point read, not the whole repository's
//!    rows) and becomes `Added`, `Modified` or nothing. A name the
//!    discovery hands out again (two refs naming the same revision) is
//!    skipped: the discovery's order puts the one a full listing keeps
//!    first.
//! 2. **Deletions**, once the discovery is exhausted: the view's rows of
//!    the repository, scanned page by page, that this sync did not hand
//!    out — among the packages the sync covers ([`Scope`]) — are
//!    `Deleted`. Deletions are decided from names (the set of names handed
//!    out, which is all a sync keeps for the whole repository), and only
//!    after the whole discovery: a chunked sync never deletes what it has
//!    not reached yet.
//!
//! A first sync (the view holds no revision of the repository when it
//! begins) reads no rows at all: everything is `Added`, nothing deleted.
//!
//! A crash between chunks leaves the views with a prefix of the
//! reconciliation (never a wrong state: each chunk is one atomic append)
//! and no `SyncSucceeded`, so the repository's status keeps the digest of
//! the last successful sync and the next sync reads the upstream in full:
//! it compares each revision with the views again — `Added` for what the
//! crash left out, nothing for what is there already, no duplicates.

use std::collections::HashSet;

use cairn_events::v1::{Event, PackageRevision};
use cairn_storage::{views::PackageRevisionsView, BlobPin, Store, ViewRead};

use super::{
    component::{Changes, RepositoryComponent},
    error::RepositoryError,
    upstream::{Resources, Scope, Upstream},
};
use crate::origin::package_path;

/// What a revision is estimated to take at the peak of its chunk, besides
/// [`BYTES_PER_ENCODED_BYTE`] per encoded byte: the in-memory revision
/// (strings, maps), its event, envelope, log row, the views' rows, and the
/// write batch that carries them all.
pub const REVISION_BASE_BYTES: u64 = 2048;

/// Bytes a revision is estimated to take per byte of its protobuf
/// encoding (see [`REVISION_BASE_BYTES`]).
pub const BYTES_PER_ENCODED_BYTE: u64 = 8;

/// What the first batch of a sync assumes a revision takes, before one
/// was measured (about a Porch package of a dozen small files).
pub const FIRST_REVISION_ESTIMATE_BYTES: u64 = 16 << 10;

/// Rows of the view read per page while looking for deletions.
pub const DELETION_SCAN_PAGE_ROWS: usize = 256;

/// The estimated memory of `revision` in a chunk.
pub fn revision_bytes(revision: &PackageRevision) -> u64 {
    REVISION_BASE_BYTES + BYTES_PER_ENCODED_BYTE * prost::Message::encoded_len(revision) as u64
}

/// The estimated memory of an event in a chunk.
fn event_bytes(event: &Event) -> u64 {
    REVISION_BASE_BYTES + BYTES_PER_ENCODED_BYTE * prost::Message::encoded_len(event) as u64
}

/// One chunk of a sync: its events (at most `store.append-max-events`;
/// none when nothing in its batch changed), the pins of the blobs they
/// refer to, and its estimated size.
#[derive(Debug, Default)]
pub struct Chunk {
    /// `Added`/`Modified` in name order, or `Deleted` in name order.
    pub events: Vec<Event>,
    /// Keep the chunk's blobs until its events committed.
    pub pins: Vec<BlobPin>,
    /// Estimated memory of the chunk while it is in flight, in bytes.
    pub bytes: u64,
}

/// Where a reconciliation stands.
#[derive(Debug)]
enum Phase {
    /// Reading the discovery.
    Changes,
    /// Scanning the view after the row `after` (from its start when
    /// `None`).
    Deletions { after: Option<Vec<u8>> },
    /// Nothing more.
    Done,
}

/// A changed sync's reconciliation in progress. See the module docs.
#[derive(Debug)]
pub struct Reconciliation {
    upstream: Upstream,
    resources: Resources,
    namespace: String,
    repository: String,
    directory: String,
    /// Object names handed out so far.
    seen: HashSet<String>,
    changes: Changes,
    /// Rows of the view outside the sync's scope (left as they are).
    kept_outside: u64,
    /// Estimated bytes per revision, for sizing the next batch.
    estimate_bytes: u64,
    /// The view held no revision of the repository when the sync began:
    /// no row to compare with, nothing to delete.
    empty: bool,
    phase: Phase,
}

impl Reconciliation {
    /// The reconciliation of `upstream` for `spec`'s repository.
    pub fn new(
        upstream: Upstream,
        spec: &cairn_events::v1::RepositorySpec,
        store: &dyn ViewRead,
    ) -> Result<Self, RepositoryError> {
        let resources = Resources::open(&upstream.mirror, spec)?;
        // Only this repository's writer adds its rows, one sync at a
        // time: with none now (a first sync), every revision is new and
        // none can go.
        let empty =
            PackageRevisionsView::list(store, Some(&spec.namespace), Some(&spec.name), None, 1)
                .map_err(RepositoryError::Views)?
                .is_empty();
        Ok(Self {
            empty,
            upstream,
            resources,
            namespace: spec.namespace.clone(),
            repository: spec.name.clone(),
            directory: spec
                .git
                .as_ref()
                .map_or(String::new(), |g| g.directory.clone()),
            seen: HashSet::new(),
            changes: Changes::default(),
            kept_outside: 0,
            estimate_bytes: FIRST_REVISION_ESTIMATE_BYTES,
            phase: Phase::Changes,
        })
    }

    /// The upstream read.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The reconciliation's counts so far.
    pub fn changes(&self) -> Changes {
        self.changes
    }

    /// The package revisions the repository has once every chunk
    /// committed: those handed out, and the view's rows outside the
    /// sync's scope. Final once [`Reconciliation::next`] answered `None`.
    pub fn package_count(&self) -> u64 {
        self.seen.len() as u64 + self.kept_outside
    }

    /// The next chunk, of at most `max_events` events and about
    /// `max_bytes`; `None` once the reconciliation is complete. A chunk may
    /// hold no events (nothing in its batch changed). Blocking.
    pub fn next(
        &mut self,
        store: &Store,
        max_events: usize,
        max_bytes: u64,
    ) -> Result<Option<Chunk>, RepositoryError> {
        let max_events = max_events.max(1);
        loop {
            match &self.phase {
                Phase::Changes => {
                    if let Some(chunk) = self.next_changes(store, max_events, max_bytes)? {
                        return Ok(Some(chunk));
                    }
                    self.phase = if self.empty {
                        Phase::Done
                    } else {
                        Phase::Deletions { after: None }
                    };
                }
                Phase::Deletions { .. } => {
                    if let Some(chunk) = self.next_deletions(store, max_events, max_bytes)? {
                        return Ok(Some(chunk));
                    }
                    self.phase = Phase::Done;
                }
                Phase::Done => return Ok(None),
            }
        }
    }

    /// The next batch of the discovery as a chunk; `None` when it is
    /// exhausted.
    fn next_changes(
        &mut self,
        store: &Store,
        max_events: usize,
        max_bytes: u64,
    ) -> Result<Option<Chunk>, RepositoryError> {
        let count = (max_bytes / self.estimate_bytes.max(1)).clamp(1, max_events as u64);
        let batch = self
            .upstream
            .revisions
            .next_batch(count as usize)
            .map_err(RepositoryError::Upstream)?;
        if batch.is_empty() {
            return Ok(None);
        }
        let read = batch.len() as u64;
        let mut chunk = Chunk::default();
        let mut named = Vec::with_capacity(batch.len());
        for found in batch {
            let revision = self.resources.store(store, found)?;
            chunk.bytes += revision_bytes(&revision);
            if !self.seen.insert(revision.name.clone()) {
                continue; // handed out already: the first one stands
            }
            let current = if self.empty {
                None
            } else {
                PackageRevisionsView::get(store, &self.namespace, &revision.name)
                    .map_err(RepositoryError::Views)?
                    .and_then(|row| row.revision)
            };
            let name = revision.name.clone();
            if let Some(event) =
                RepositoryComponent::reconcile_one(current.as_ref(), revision, &mut self.changes)
            {
                named.push((name, event));
            }
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        chunk.events = named.into_iter().map(|(_, e)| e).collect();
        chunk.pins = self.resources.take_pins();
        self.estimate_bytes = chunk.bytes.div_ceil(read).max(1);
        Ok(Some(chunk))
    }

    /// The next deletions as a chunk; `None` when the view was scanned to
    /// its end without finding more.
    fn next_deletions(
        &mut self,
        store: &dyn ViewRead,
        max_events: usize,
        max_bytes: u64,
    ) -> Result<Option<Chunk>, RepositoryError> {
        let Phase::Deletions { after } = &mut self.phase else {
            return Ok(None);
        };
        let mut chunk = Chunk::default();
        loop {
            let page = PackageRevisionsView::list(
                store,
                Some(&self.namespace),
                Some(&self.repository),
                after.as_deref(),
                DELETION_SCAN_PAGE_ROWS,
            )
            .map_err(RepositoryError::Views)?;
            if page.is_empty() {
                return Ok((!chunk.events.is_empty()).then_some(chunk));
            }
            for (key, row) in page {
                *after = Some(key);
                let Some(revision) = row.revision else {
                    continue;
                };
                if self.seen.contains(&revision.name) {
                    continue;
                }
                let covered = match &self.upstream.scope {
                    Scope::Full => true,
                    Scope::Packages(packages) => packages.contains(&package_path(
                        &self.directory,
                        &revision.path,
                        &revision.package,
                    )),
                };
                if !covered {
                    self.kept_outside += 1;
                    continue;
                }
                self.changes.deleted += 1;
                let event = RepositoryComponent::deleted(revision.name.clone(), &revision);
                chunk.bytes += event_bytes(&event);
                chunk.events.push(event);
                if chunk.events.len() >= max_events || chunk.bytes >= max_bytes {
                    return Ok(Some(chunk));
                }
            }
        }
    }
}
