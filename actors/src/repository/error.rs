//! The repository domain's errors, and their one mapping into
//! [`ServiceError`].
//!
//! - [`LifecycleError`]: a lifecycle command refused by its validation
//!   against the view (nothing written) — the pure decision's error.
//! - [`RepositoryError`]: anything else a repository command can meet:
//!   the upstream (a sync's read, a lifecycle command's write), the store
//!   (reading the views, storing blobs — a [`ReadError::Store`] becomes
//!   [`RepositoryError::Blobs`]), the writer shell. A storage failure is never an upstream failure: it
//!   answers 500 (503 while the node shuts down), and a sync that meets one
//!   records `SyncFailed` with class [`INTERNAL_CLASS`], not an upstream
//!   class.

use cairn_storage::StorageError;

use super::upstream::ReadError;
use crate::{origin::OriginError, writer::WriterError, ServiceError};

/// The error class a sync records when it failed inside the node (the
/// store), not upstream. Retried after the `other` delay.
pub const INTERNAL_CLASS: &str = "internal";

/// Why a lifecycle command was refused by its validation; nothing was
/// written anywhere. Each variant says how a client handles it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// The target is not a package revision of this repository (404): list
    /// again, the name is wrong or it was deleted.
    #[error("package revision {namespace}/{name} not found in repository {repository}")]
    NotFound {
        /// Namespace.
        namespace: String,
        /// The object name asked for.
        name: String,
        /// The repository the command went to.
        repository: String,
    },
    /// The target's lifecycle does not allow the command (409): read it
    /// again and pick a command its lifecycle allows.
    #[error("cannot {verb} {name}: it is {is}, not {allowed}")]
    WrongLifecycle {
        /// The command, as its message says it ("approve", "propose the
        /// deletion of", …).
        verb: &'static str,
        /// The target.
        name: String,
        /// Its lifecycle, as the view has it.
        is: String,
        /// The lifecycles that allow the command, joined with " or ".
        allowed: String,
    },
    /// A Published revision cannot be deleted at once (409): propose its
    /// deletion first.
    #[error(
        "cannot delete {name}: it is Published; propose its deletion first (pkgrev.propose-delete)"
    )]
    DeletePublished {
        /// The target.
        name: String,
    },
    /// The draft changed since the client read it (409): read it again,
    /// re-apply the edit, send the new `resource_version`.
    #[error(
        "{}",
        crate::error::expected_found(
            format_args!("resource_version of {}", .name),
            .expected,
            format_args!("got {} (it changed since it was read)", .found),
        )
    )]
    ResourceVersion {
        /// The draft.
        name: String,
        /// Its `resource_version` in the view.
        expected: u64,
        /// The one the client sent.
        found: u64,
    },
    /// A new draft's workspace is taken in its package (409): choose
    /// another workspace.
    #[error("package revision {namespace}/{name} already exists (workspace {workspace:?} of package {package:?} is taken)")]
    WorkspaceTaken {
        /// Namespace.
        namespace: String,
        /// The new draft's object name.
        name: String,
        /// Its workspace.
        workspace: String,
        /// Its package's full path.
        package: String,
    },
    /// A new package would lie inside another, or hold one (409): packages
    /// do not nest; choose another path.
    #[error("package {new:?} would nest with package {existing:?} (packages do not nest)")]
    Nesting {
        /// The new package's full path.
        new: String,
        /// The package it clashes with.
        existing: String,
    },
    /// A `create`'s `clone_from` names the `-1` placeholder of a package
    /// (the package as it sits on the registered branch), which is no
    /// revision to clone or copy (400 naming `clone_from`; Porch answers
    /// 500 with the same words): name a published revision (`…vN`).
    #[error(
        "{} revision may not be the placeholder package revision {repository}/{name}",
        if *.copy { "source" } else { "upstream" }
    )]
    PlaceholderSource {
        /// Whether the create is a copy (same package) rather than a clone.
        copy: bool,
        /// The source's repository.
        repository: String,
        /// The source's object name.
        name: String,
    },
    /// A `create`'s `clone_from` names no package revision any more (it
    /// was deleted since the request was read; 400 naming `clone_from`):
    /// list again and name one that exists.
    #[error("package revision {namespace}/{name} not found")]
    SourceMissing {
        /// Namespace.
        namespace: String,
        /// The source's object name.
        name: String,
    },
    /// A `create`'s `clone_from` names a revision that is not published
    /// (Draft or Proposed; 409): approve it first, or clone or copy a
    /// published one. A copy's text is Porch's edit task's, a clone's
    /// Porch's v1alpha2 controller's.
    #[error(
        "{}",
        if *.copy {
            format!("source revision must be published: {name} is {is}")
        } else {
            format!("upstream package {name:?} must be published: it is {is}")
        }
    )]
    SourceNotPublished {
        /// Whether the create is a copy (same package) rather than a clone.
        copy: bool,
        /// The source's object name.
        name: String,
        /// Its lifecycle.
        is: String,
    },
    /// `init` (no `clone_from`) or `clone` of a package the repository
    /// already holds (409; Porch's `ValidatePackagePathOverlap` and
    /// `validateCloneTask`): a new revision of an existing package is a
    /// copy — `clone_from` a published revision of that package.
    #[error(
        "{}",
        if *.clone {
            format!("`clone` cannot create a new revision for package {package:?} that already exists in repo {repository:?}; make subsequent revisions by copying (clone_from a published revision of the same package)")
        } else {
            format!("package {package:?} already exists in repository {repository:?}; make subsequent revisions by copying (clone_from a published revision of the same package)")
        }
    )]
    PackageExists {
        /// The package's full path (below the registered directory).
        package: String,
        /// The repository.
        repository: String,
        /// Whether the create is a clone (else an init).
        clone: bool,
    },
    /// The revision to delete is the upstream another package revision of
    /// the namespace was cloned (or upgraded) from (409; Porch answers 403
    /// with the same words, `FindUpstreamReference`): delete that
    /// downstream revision first.
    #[error("cannot delete package revision {name}, it is referenced as upstream by: {by}")]
    ReferencedAsUpstream {
        /// The revision to delete.
        name: String,
        /// The first downstream revision found (its object name).
        by: String,
    },
    /// A name of a new package revision cannot be written to Git the way
    /// Porch lays it out, or is longer than Porch allows (400, naming the
    /// field): a tree entry Git refuses, a ref `git check-ref-format`
    /// refuses or that is too long, an object name over 253 bytes. Choose
    /// another name (or, for `git.directory`/`git.branch`, register the
    /// repository differently).
    #[error("{field}: {why}")]
    Name {
        /// The field to blame: `path`, `package`, `workspace`, or the
        /// registration's `git.directory` or `git.branch`.
        field: &'static str,
        /// What is wrong, naming the ref or name.
        why: String,
    },
}

impl From<LifecycleError> for ServiceError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::NotFound { .. } => ServiceError::not_found(e.to_string()),
            LifecycleError::Name { field, why } => ServiceError::bad_field(field, why),
            LifecycleError::PlaceholderSource { .. } | LifecycleError::SourceMissing { .. } => {
                ServiceError::bad_field("clone_from", e.to_string())
            }
            // (`ResourceVersion` included: its text is the one
            // `ServiceError::conflict_expected` words, naming both.)
            _ => ServiceError::conflict(e.to_string()),
        }
    }
}

/// Why a repository command failed. Each variant says how it is answered.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// Validation refused a lifecycle command: 404/409 (see
    /// [`LifecycleError`]).
    #[error(transparent)]
    Refused(#[from] LifecycleError),
    /// A sync could not read the upstream (recorded as `SyncFailed` with
    /// the error's class): 404 for a missing branch, 400 for an invalid
    /// URL, else 503 "upstream unavailable". Retried by the schedule.
    #[error(transparent)]
    Upstream(OriginError),
    /// A lifecycle command's write to the upstream failed: 409 when the
    /// upstream refused it or moved (sync and retry), else as
    /// [`RepositoryError::Upstream`].
    #[error(transparent)]
    Write(OriginError),
    /// Reading the views failed: a node problem, never an upstream one.
    /// 500 (503 while the node shuts down); the operator looks at the
    /// store.
    #[error("reading the views: {0}")]
    Views(#[source] StorageError),
    /// Storing what was read from the upstream in the blob store failed
    /// (a sync's read, a lifecycle command's read-back): a node problem,
    /// never an upstream one. 500 (503 while the node shuts down); a sync
    /// records class [`INTERNAL_CLASS`].
    #[error("storing {path}: {source}")]
    Blobs {
        /// The resource being stored.
        path: String,
        /// What the store said.
        #[source]
        source: StorageError,
    },
    /// A lifecycle command's push was accepted by the upstream, then the
    /// command failed before its events were recorded (setting the
    /// mirror's refs, reading back, storing, appending): 500 — never 503,
    /// the write happened — saying what was pushed. Nothing was recorded;
    /// the next sync of the repository reads the pushed refs like any
    /// upstream change and records them. Do not retry the command: sync.
    #[error("pushed {pushed} to the upstream, but recording it failed: {source}; the next sync of the repository will record it")]
    Unrecorded {
        /// The ref updates pushed (`<ref> at <commit>`, `<ref> (deleted)`).
        pushed: String,
        /// What failed after the push.
        #[source]
        source: Box<RepositoryError>,
    },
    /// A lifecycle command was pushed and recorded, then reading its
    /// target from the view for the reply failed: 500 saying so; read it
    /// again (`pkgrev.get`).
    #[error(
        "pushed {pushed} to the upstream and recorded it, but reading the result failed: {source}"
    )]
    Recorded {
        /// The ref updates pushed.
        pushed: String,
        /// What failed after the append.
        #[source]
        source: Box<RepositoryError>,
    },
    /// Setting the local mirror's refs to what a push just wrote failed
    /// (only inside [`RepositoryError::Unrecorded`]); the next fetch makes
    /// the mirror the upstream's again.
    #[error("setting the mirror's refs: {0}")]
    Mirror(#[source] OriginError),
    /// A lifecycle command's target could not be read back from the
    /// upstream after the write: 500 (the next sync reads it).
    #[error("reading back {name}: {message}")]
    ReadBack {
        /// The target.
        name: String,
        /// What failed.
        message: String,
    },
    /// The upstream accepted the command but its target does not read back
    /// as a package revision: 500, a bug.
    #[error(
        "the upstream accepted {verb} of {name}, but it does not read back as a package revision"
    )]
    Lost {
        /// The command.
        verb: &'static str,
        /// The target.
        name: String,
    },
    /// Appending or running a phase off the arbiter failed (see
    /// [`WriterError`]).
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// The writer answered a command with the reply of another kind: 500,
    /// a bug.
    #[error("unexpected reply from the repository")]
    UnexpectedReply,
    /// A failure already turned into its answer (a failed sync records the
    /// answer in its `SyncFailed`, and answers it): answered as is.
    #[error(transparent)]
    Answered(crate::ServiceError),
}

impl RepositoryError {
    /// The error class a sync records for it: the origin error's class for
    /// an upstream failure, [`INTERNAL_CLASS`] for anything inside the node.
    pub fn sync_class(&self) -> &'static str {
        match self {
            RepositoryError::Upstream(e) | RepositoryError::Write(e) => e.class(),
            _ => INTERNAL_CLASS,
        }
    }
}

impl From<ReadError> for RepositoryError {
    /// A sync's read: the upstream's failure is [`RepositoryError::Upstream`],
    /// the store's [`RepositoryError::Blobs`].
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Origin(e) => RepositoryError::Upstream(e),
            ReadError::Store { path, source } => RepositoryError::Blobs { path, source },
        }
    }
}

/// The error a sync answered, from its `SyncFailed`, for a replay of the
/// command that ran it: the recorded answer; for events older than it, the
/// code its class most likely had.
pub fn recorded_sync_error(failed: &cairn_events::v1::SyncFailed) -> ServiceError {
    if let Ok(code) = u16::try_from(failed.reply_code) {
        if code != 0 {
            return ServiceError {
                code,
                message: failed.reply_message.clone(),
            };
        }
    }
    let (class, message) = (failed.error_class.as_str(), failed.message.as_str());
    match class {
        "missing" => ServiceError::not_found(message),
        "invalid" => ServiceError::bad_field("git.url", message),
        INTERNAL_CLASS => ServiceError::internal(message),
        class => ServiceError::unavailable(format!("upstream unavailable ({class}): {message}")),
    }
}

/// The error a client sees for a failed read of the upstream.
pub fn origin_error(e: &OriginError) -> ServiceError {
    match e {
        OriginError::BranchMissing { .. } => ServiceError::not_found(e.to_string()),
        OriginError::InvalidUrl(_) => ServiceError::bad_field("git.url", e.to_string()),
        _ => ServiceError::unavailable(format!("upstream unavailable ({}): {e}", e.class())),
    }
}

impl From<RepositoryError> for ServiceError {
    fn from(e: RepositoryError) -> Self {
        match e {
            RepositoryError::Refused(e) => e.into(),
            RepositoryError::Upstream(e) => origin_error(&e),
            RepositoryError::Write(OriginError::Rejected(why)) => {
                ServiceError::conflict(format!("the upstream refused the change: {why}"))
            }
            RepositoryError::Write(OriginError::Moved(why)) => ServiceError::conflict(format!(
                "the upstream changed since it was last read ({why}); sync the repository and retry"
            )),
            RepositoryError::Write(OriginError::InvalidRef(e)) => {
                ServiceError::conflict(format!("the command needs a ref Git cannot take: {e}"))
            }
            RepositoryError::Write(e) => origin_error(&e),
            RepositoryError::Views(e) => match e {
                StorageError::Closed => ServiceError::from(e),
                e => ServiceError::internal(format!("reading the views: {e}")),
            },
            RepositoryError::Blobs {
                source: StorageError::Closed,
                ..
            } => ServiceError::from(StorageError::Closed),
            RepositoryError::Blobs { .. }
            | RepositoryError::Unrecorded { .. }
            | RepositoryError::Recorded { .. }
            | RepositoryError::Mirror(_)
            | RepositoryError::ReadBack { .. }
            | RepositoryError::Lost { .. }
            | RepositoryError::UnexpectedReply => ServiceError::internal(e.to_string()),
            RepositoryError::Writer(e) => e.into(),
            RepositoryError::Answered(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unexpected_reply_is_internal() {
        let e = RepositoryError::UnexpectedReply;
        assert_eq!(e.sync_class(), "internal");
        assert_eq!(
            ServiceError::from(e),
            ServiceError {
                code: 500,
                message: "unexpected reply from the repository".into()
            }
        );
    }

    #[test]
    fn a_storage_failure_is_internal_never_upstream() {
        let e = RepositoryError::Views(StorageError::Corrupt("row x".into()));
        assert_eq!(e.sync_class(), "internal");
        assert_eq!(
            ServiceError::from(e),
            ServiceError {
                code: 500,
                message: "reading the views: corrupt store: row x".into()
            }
        );
        // Shutting down: try again later, still not "upstream unavailable".
        assert_eq!(
            ServiceError::from(RepositoryError::Views(StorageError::Closed)),
            ServiceError {
                code: 503,
                message: "node is shutting down".into()
            }
        );
        // Storing what the upstream gave: the same.
        let e = RepositoryError::from(ReadError::Store {
            path: "Kptfile".into(),
            source: StorageError::Corrupt("z".into()),
        });
        assert_eq!(e.sync_class(), "internal");
        assert_eq!(
            ServiceError::from(e),
            ServiceError::internal("storing Kptfile: corrupt store: z")
        );
        assert_eq!(
            ServiceError::from(RepositoryError::from(ReadError::Store {
                path: "Kptfile".into(),
                source: StorageError::Closed,
            })),
            ServiceError {
                code: 503,
                message: "node is shutting down".into()
            }
        );
        // The upstream's own failure stays an upstream one.
        let e = RepositoryError::from(ReadError::Origin(OriginError::Auth("no".into())));
        assert_eq!(e.sync_class(), "auth");
        assert_eq!(ServiceError::from(e).code, 503);
        let e = RepositoryError::Writer(WriterError::Append(StorageError::Corrupt("y".into())));
        assert_eq!(e.sync_class(), "internal");
        assert_eq!(ServiceError::from(e).code, 500);
    }

    #[test]
    fn an_upstream_failure_keeps_its_class_and_answer() {
        let e = RepositoryError::Upstream(OriginError::Unreachable("refused".into()));
        assert_eq!(e.sync_class(), "network");
        assert_eq!(
            ServiceError::from(e),
            ServiceError {
                code: 503,
                message: "upstream unavailable (network): upstream unreachable: refused".into()
            }
        );
        assert_eq!(
            ServiceError::from(RepositoryError::Upstream(OriginError::BranchMissing {
                branch: "main".into()
            })),
            ServiceError::not_found("branch \"main\" does not exist upstream")
        );
    }

    #[test]
    fn a_failure_after_a_push_is_internal_and_says_what_was_pushed() {
        // Even the store closing under it: the write happened, so never
        // 503 "unavailable".
        let e = RepositoryError::Unrecorded {
            pushed: "refs/heads/drafts/a/ws at 0123abcd".into(),
            source: Box::new(RepositoryError::Writer(WriterError::Append(
                StorageError::Closed,
            ))),
        };
        assert_eq!(e.sync_class(), "internal");
        assert_eq!(
            ServiceError::from(e),
            ServiceError::internal(
                "pushed refs/heads/drafts/a/ws at 0123abcd to the upstream, but recording it failed: store is closed; the next sync of the repository will record it"
            )
        );
        let e = RepositoryError::Unrecorded {
            pushed: "refs/heads/main at 1, refs/heads/proposed/a/ws (deleted)".into(),
            source: Box::new(RepositoryError::Mirror(OriginError::Git("locked".into()))),
        };
        assert_eq!(
            ServiceError::from(e),
            ServiceError::internal(
                "pushed refs/heads/main at 1, refs/heads/proposed/a/ws (deleted) to the upstream, but recording it failed: setting the mirror's refs: git: locked; the next sync of the repository will record it"
            )
        );
        let e = RepositoryError::Recorded {
            pushed: "refs/heads/drafts/a/ws at 0123abcd".into(),
            source: Box::new(RepositoryError::Views(StorageError::Closed)),
        };
        assert_eq!(
            ServiceError::from(e),
            ServiceError::internal(
                "pushed refs/heads/drafts/a/ws at 0123abcd to the upstream and recorded it, but reading the result failed: reading the views: store is closed"
            )
        );
    }

    #[test]
    fn a_ref_git_cannot_take_is_a_conflict_before_the_push() {
        let e = RepositoryError::Write(OriginError::InvalidRef(
            crate::origin::names::RefError::TooLong {
                name: "refs/heads/x".into(),
                bytes: 1024,
            },
        ));
        assert_eq!(e.sync_class(), "invalid");
        assert_eq!(
            ServiceError::from(e),
            ServiceError::conflict(
                "the command needs a ref Git cannot take: the ref refs/heads/x would be 1024 bytes, more than 1023 (refs longer than that cannot be stored by libgit2, GIT_REFNAME_MAX)"
            )
        );
    }

    #[test]
    fn a_refused_or_moved_write_is_a_conflict() {
        assert_eq!(
            ServiceError::from(RepositoryError::Write(OriginError::Rejected("hook".into()))),
            ServiceError::conflict("the upstream refused the change: hook")
        );
        assert_eq!(
            ServiceError::from(RepositoryError::Write(OriginError::Moved("x".into()))),
            ServiceError::conflict(
                "the upstream changed since it was last read (x); sync the repository and retry"
            )
        );
    }

    #[test]
    fn a_resource_version_conflict_names_expected_and_found() {
        let e = LifecycleError::ResourceVersion {
            name: "r.p.ws".into(),
            expected: 9,
            found: 4,
        };
        // One wording: the error's text is the 409's, in the shape of
        // `conflict_expected`.
        assert_eq!(
            ServiceError::conflict(e.to_string()),
            ServiceError::conflict_expected(
                "resource_version of r.p.ws",
                9,
                "got 4 (it changed since it was read)"
            )
        );
        assert_eq!(
            ServiceError::from(e),
            ServiceError {
                code: 409,
                message:
                    "resource_version of r.p.ws: expected 9, got 4 (it changed since it was read)"
                        .into()
            }
        );
    }
}
