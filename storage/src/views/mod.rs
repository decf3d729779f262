//! cairn's views. Each is declared here once; its name is its on-disk
//! identity (`view_<name>` column family).
//!
//! | view | key | row |
//! |---|---|---|
//! | `repositories` | `<namespace>/<name>` | [`cairn_events::v1::RepositoryRow`] |
//! | `package_revisions` | `<namespace>/<object name>` | [`cairn_events::v1::PackageRevisionRow`] |
//! | `package_revision_list` | `L<namespace>\0<repository>\0<package>\0<path>\0<name>` (and a name index) | [`cairn_events::v1::PackageRevisionListing`] + JSON form |
//!
//! # Layout
//! - [`repositories`] — [`RepositoriesView`]: spec and status per repository.
//! - [`package_revisions`] — [`PackageRevisionsView`]: one row per package
//!   revision, with its resource blobs referenced.
//! - [`package_revision_list`] — [`PackageRevisionListView`]: list rows in
//!   listing order, filters as key prefixes.
//! - this module — [`default_views`], the views every node folds.
//!
//! A new domain's views go here, one module each, and into
//! [`default_views`].

use std::sync::Arc;

use cairn_events::{
    revision::Change,
    v1::{Envelope, PackageRevision},
    StreamId,
};

use crate::{StorageError, View};

pub mod package_revision_list;
pub mod package_revisions;
pub mod repositories;

pub use package_revision_list::PackageRevisionListView;
pub use package_revisions::PackageRevisionsView;
pub use repositories::RepositoriesView;

/// The views a node runs, in fold order.
pub fn default_views() -> Vec<Arc<dyn View>> {
    vec![
        Arc::new(RepositoriesView),
        Arc::new(PackageRevisionsView),
        Arc::new(PackageRevisionListView),
    ]
}

/// A package revision event of a repository stream, as the package
/// revision views fold it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RevisionChange<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) repository: &'a str,
    /// The revision's object name.
    pub(crate) name: &'a str,
    /// The revision after the event; `None` when it was deleted.
    pub(crate) revision: Option<&'a PackageRevision>,
}

/// Calls `fold` when `envelope` adds, modifies or deletes a package
/// revision of a repository stream; other events are no change.
pub(crate) fn on_revision_change(
    envelope: &Envelope,
    fold: impl FnOnce(RevisionChange<'_>) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let Some(payload) = envelope.event.as_ref().and_then(|e| e.payload.as_ref()) else {
        return Ok(());
    };
    let Ok(stream) = StreamId::new(envelope.stream.clone()) else {
        return Ok(());
    };
    let Some((namespace, repository)) = stream.as_repository() else {
        return Ok(());
    };
    let Some(change) = Change::of(payload) else {
        return Ok(());
    };
    let revision = match change {
        Change::Added(r) | Change::Modified(r) => Some(r),
        Change::Deleted { .. } => None,
    };
    fold(RevisionChange {
        namespace,
        repository,
        name: change.name(),
        revision,
    })
}
