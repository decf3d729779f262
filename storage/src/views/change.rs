//! The package revision events of repository streams, as the package
//! revision views ([`super::package_revisions`],
//! [`super::package_revision_list`]) fold them. A leaf: it imports no view.

use cairn_events::{
    revision::Change,
    v1::{Envelope, PackageRevision},
    StreamId,
};

use crate::StorageError;

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
