//! cairn's views. Each is declared here once; its name is its on-disk
//! identity (`view_<name>` column family).
//!
//! | view | key | row |
//! |---|---|---|
//! | `repositories` | `<namespace>/<name>` | [`cairn_events::v1::RepositoryRow`] |
//! | `package_revisions` | `<namespace>/<object name>` | [`cairn_events::v1::PackageRevisionRow`] |
//! | `package_revision_list` | `L<namespace>\0<repository>\0<package>\0<path>\0<name>` (and a name index) | [`cairn_events::v1::PackageRevisionListing`] + JSON form |
//! | `requests` | `k<request id>` (and a time index) | [`cairn_events::v1::RequestRow`] |
//! | `kv_entries` | `e<namespace>\0<key>` (and tag, expiry, settings rows) | [`cairn_events::v1::KvEntryRow`] |
//! | `artifacts` | `e<method>\0<url>\0<vary key>` (and variant, digest, body-use and totals rows) | [`cairn_events::v1::ArtifactRow`] |
//!
//! # Layout
//! - [`repositories`] — [`RepositoriesView`]: spec and status per repository.
//! - [`package_revisions`] — [`PackageRevisionsView`]: one row per package
//!   revision, with its resource blobs referenced.
//! - [`package_revision_list`] — [`PackageRevisionListView`]: list rows in
//!   listing order, filters as key prefixes.
//! - [`requests`] — [`RequestsView`]: the command each idempotency key
//!   (`Cairn-Request-Id`) carried, for a window.
//! - [`kv`] — [`KvView`]: the key-value cache's entries (its disk tier),
//!   and [`kv::KvCompactionPolicy`], the retention of the `kv/` class.
//! - [`artifacts`] — [`ArtifactsView`]: the HTTP artifact cache's
//!   URL-first index (method, URL, Vary key → response metadata and body
//!   digest), bodies referenced in the blob store.
//! - `change` — `RevisionChange` and `on_revision_change`: the package
//!   revision events both package revision views fold. A leaf the views
//!   import; it imports none of them, and no view imports this module
//!   (so no child imports its parent).
//! - this module — [`default_views`], the views every node folds.
//!
//! A new domain's views go here, one module each, and into
//! [`default_views`].

use std::sync::Arc;

use crate::View;

pub mod artifacts;
mod change;
pub mod kv;
pub mod package_revision_list;
pub mod package_revisions;
pub mod repositories;
pub mod requests;

pub use artifacts::ArtifactsView;
pub use kv::KvView;
pub use package_revision_list::PackageRevisionListView;
pub use package_revisions::PackageRevisionsView;
pub use repositories::RepositoriesView;
pub use requests::RequestsView;

/// The views a node runs, in fold order.
pub fn default_views() -> Vec<Arc<dyn View>> {
    vec![
        Arc::new(RepositoriesView),
        Arc::new(PackageRevisionsView),
        Arc::new(PackageRevisionListView),
        Arc::new(RequestsView),
        Arc::new(KvView),
        Arc::new(ArtifactsView),
    ]
}
