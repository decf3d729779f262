//! Origin adapters: how cairn reads and writes upstream repositories.
//!
//! Git is the only origin so far. Everything here is blocking (libgit2 and
//! file I/O): call it from `spawn_blocking` or a `SyncArbiter`, never on an
//! arbiter thread. All Git-only code of cairn lives here: the rest of the
//! crate sees package revisions, commits (as [`git2::Oid`]) and ref changes,
//! never Git's layout.
//!
//! # Layout
//! - `error` — [`OriginError`] and its classes, and the sorting of libgit2
//!   errors into them. Uses only `names`.
//! - `remote` — reaching an upstream: [`validate_url`], [`Credentials`]
//!   and the libgit2 credential callbacks of fetches and pushes,
//!   [`set_network_timeout`].
//! - `file_transport` — `file://` upstreams served by `git upload-pack` /
//!   `git receive-pack` child processes, as the git CLI does (registered
//!   with libgit2 by [`GitCache::new`]).
//! - `git` — [`GitCache`]: one bare mirror per upstream URL (fetch with
//!   force and prune, remove); [`Blobs`] reads a mirror's objects.
//! - `annotation` — parsing of the `kpt:{…}` lines Porch writes into commit
//!   messages, and [`Task`]; malformed lines are skipped, never fatal.
//! - `discovery` — [`discover`]: Porch-compatible listing of the package
//!   revisions in a local repository (placeholders on the registered branch,
//!   published tags, drafts, proposals, deletion proposals), with resources,
//!   task history, publishing info and Kptfile labels and annotations;
//!   [`DiscoveryStream`] hands the same revisions out in bounded batches
//!   (what a sync reads); [`RULES_VERSION`] versions these rules.
//! - [`names`] — Git's rules for the names cairn writes, as pure checks:
//!   tree entries (`.git` in any case and its NTFS/HFS+ aliases) and refs
//!   (`check-ref-format`, component and total lengths). Uses no other
//!   origin module.
//! - [`write`](mod@write) — writing as Porch does: package trees, commits
//!   (author and committer by Porch's rule, [`write::Identity`]), and ref
//!   updates pushed together, never forced ([`OriginError::Moved`] when the
//!   upstream moved, [`OriginError::Rejected`] when it refused;
//!   [`OriginError::is_transient`] for Porch's retryable errors);
//!   [`write::WriteConfig`]; [`create_branch`].
//! - [`lifecycle`] — each lifecycle command (create, update, propose,
//!   reject, approve, propose or withdraw a deletion, delete) as the commit
//!   and the ref changes Porch would make, for [`write::push_changes`].
//! - [`kptfile`] — a revision's lock ([`kptfile::lock_of`]: where it is in
//!   Git, Porch's self lock) and the `Kptfile` of a clone as kpt writes it
//!   ([`kptfile::with_upstream`]: renamed, `upstream` and `upstreamLock`
//!   set). Pure.
//! - this module — declarations and re-exports only.
//!
//! Imports (`a → b`: a uses b) form no cycle: `annotation`, `names` and
//! `file_transport` use no origin module; `error` → `names`; `remote` →
//! `error`; `git` → `error`, `remote`, `file_transport`; `write` →
//! `error`, `names`, `remote`, `git`; `discovery` → `annotation`, `error`;
//! `lifecycle` → `discovery`, `error`, `write`; `kptfile` → `lifecycle`.
//! No submodule imports from
//! this module.

mod annotation;
mod discovery;
mod error;
mod file_transport;
mod git;
pub mod kptfile;
pub mod lifecycle;
pub mod names;
mod remote;
pub mod write;

pub use annotation::Task;
pub use discovery::{
    discover, discover_packages, discover_refs, package_of_ref, package_path, DiscoveredRevision,
    Discovery, DiscoveryStream, Lifecycle, RULES_VERSION,
};
pub use error::OriginError;
pub use git::{Blobs, FetchOutcome, GitCache};
pub use remote::{set_network_timeout, validate_url, Credentials};
pub use write::create_branch;
