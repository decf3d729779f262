//! The repository's command decisions as pure functions: given the view
//! rows (or the state) a command concerns, when the command, then its
//! events or the error — no store, no Git, unit-tested given / when /
//! then: given events (folded into the view rows through
//! `cairn_events::revision::Change`, as the views fold them), when a
//! command, then its events or its exact error.
//!
//! - [`validate`]: a lifecycle command against the view rows of its target
//!   ([`ViewRows`]): exists in this repository, its lifecycle allows the
//!   command, `resource_version` matches, a new workspace is free and a
//!   new package does not nest. What it accepts is a [`Validated`] target
//!   for the Git write ([`super::command`]). Porch's rules for where a new
//!   draft comes from (`pkg/engine`, `pkg/task` and the v1alpha2
//!   controller's `source.go`), in this order:
//!   - a `clone_from` that names a `-1` placeholder is refused, 400 naming
//!     `clone_from` (Porch: `upstream revision may not be the placeholder
//!     package revision …`, `source revision …` for a copy; Porch answers
//!     500, but the name alone is at fault);
//!   - the workspace is free in its package (409);
//!   - an `init` (with or without `resources`) or a `clone` of a package
//!     the repository already holds — any revision, drafts included — is
//!     409 `package "…" already exists in repository "…"` (Porch's
//!     `ValidatePackagePathOverlap`; for a clone, `validateCloneTask`'s
//!     text): a new revision of an existing package is a **copy**, a
//!     `clone_from` a revision of that same package (Porch's
//!     `porchctl rpkg copy`, task `edit`). cairn compares full package
//!     paths; Porch compares the new full path with each revision's last
//!     segment, so its check never fires for a package below a directory
//!     (`catalog/app` again), where cairn's does;
//!   - packages do not nest (409);
//!   - the source of a copy or a clone is published (Published or
//!     DeletionProposed), else 409 (`source revision must be published`,
//!     Porch's edit; `upstream package "…" must be published`, Porch's
//!     v1alpha2 clone — its v1alpha1 clones Drafts too).
//!
//!   A `delete` of a revision that another revision of the namespace (not
//!   a placeholder) names as its upstream — a `clone` or `upgrade` task,
//!   Porch's `FindAllUpstreamReferencesInRepositories` — is 409 `cannot
//!   delete package revision …, it is referenced as upstream by: …`
//!   (Porch: 403; cairn's other delete refusal is 409 too). See
//!   [`names_upstream`].
//! - [`new_names`] (part of [`validate`] for `create`): every name a new
//!   package revision brings to Git and Porch, before anything is written —
//!   its directories as tree entries (no `.git` alias,
//!   [`origin::names::tree_entry`]), its object name within Porch's 253
//!   bytes ([`OBJECT_NAME_MAX_BYTES`]), and every ref its life can write
//!   (draft, proposal, tag and deletion markers, revision numbers up to
//!   `i64::MAX`) valid and within [`origin::names::check_ref`]'s lengths —
//!   so a draft that can be created can also be proposed, published and
//!   deleted. A refusal is a 400 naming the field to blame: the field
//!   holding the bad segment or component (the registration's
//!   `git.directory` or `git.branch` when it is theirs), and for a name
//!   too long as a whole, the longest of `path`, `package` and `workspace`.
//! - [`typed`]: the read-back events of a lifecycle command, the target's
//!   typed after the command (`DraftCreated`, `PackageRevisionPublished`…).
//! - [`registered`], [`spec_changed`]: the events of `Register` and
//!   `UpdateSpec`. (A sync's and a close's decisions are the component's
//!   `scoped_sync_events`, `unchanged_events` and `close_events`, tested in
//!   [`super::component`].)

use cairn_events::{
    envelope::event,
    revision::Lifecycle,
    v1::{
        event::Payload, DeletionProposalWithdrawn, DeletionProposed, DraftCreated,
        DraftResourcesUpdated, Event, PackageRevision, PackageRevisionProposed,
        PackageRevisionPublished, PackageRevisionRow, ProposalRejected, RepositoryRegistered,
        RepositorySpec, RepositorySpecChanged,
    },
};

use super::{
    error::LifecycleError,
    naming::{object_name, OBJECT_NAME_MAX_BYTES},
    op::{LifecycleOp, Source},
};
use crate::origin::{
    self,
    lifecycle::PackageRefs,
    names::{check_ref, RefError},
    package_path,
};

/// The view rows a lifecycle command is validated against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewRows {
    /// The row named by the command (for `create`, the new draft's object
    /// name), as the `package_revisions` view has it.
    pub target: Option<PackageRevisionRow>,
    /// For a `create` whose name is free: the full paths of the
    /// repository's packages, in list order (for the "already exists" and
    /// nesting checks).
    pub packages: Vec<String>,
    /// For a `create` that clones or copies: the row of its source (in any
    /// repository of the namespace), if it still exists.
    pub source: Option<PackageRevisionRow>,
    /// For a `delete`: the first package revision of the namespace (not a
    /// placeholder) whose tasks name the target as their upstream (see
    /// [`names_upstream`]).
    pub referenced_by: Option<String>,
}

/// Whether `task` (a task's JSON, as recorded in a `kpt:` annotation)
/// names revision `upstream` as the one it was made from: a `clone` whose
/// `clone.upstreamRef.upstreamRef.name` is it, or an `upgrade` whose
/// `upgrade.newUpstreamRef.name` is it — what Porch's
/// `FindAllUpstreamReferencesInRepositories` matches.
pub fn names_upstream(task: &serde_json::Value, upstream: &str) -> bool {
    let named = match task["type"].as_str() {
        Some("clone") => &task["clone"]["upstreamRef"]["upstreamRef"]["name"],
        Some("upgrade") => &task["upgrade"]["newUpstreamRef"]["name"],
        _ => return false,
    };
    named.as_str() == Some(upstream)
}

/// A lifecycle command's target, accepted by [`validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// Its object name.
    pub name: String,
    /// Package path below the registered directory.
    pub path: String,
    /// Package name.
    pub package: String,
    /// Workspace.
    pub workspace: String,
    /// The revision as the view has it (none for a `create`).
    pub current: Option<PackageRevision>,
}

impl Validated {
    fn of(name: &str, r: PackageRevision) -> Self {
        Self {
            name: name.to_owned(),
            path: r.path.clone(),
            package: r.package.clone(),
            workspace: r.workspace.clone(),
            current: Some(r),
        }
    }
}

/// The lifecycles that allow `op`, and how its refusal names it.
fn allowed(op: &LifecycleOp) -> (&'static str, &'static [Lifecycle]) {
    use Lifecycle::*;
    match op {
        LifecycleOp::Create { .. } => ("create", &[]),
        LifecycleOp::Update { .. } => ("update", &[Draft]),
        LifecycleOp::Propose(_) => ("propose", &[Draft]),
        LifecycleOp::Reject(_) => ("reject", &[Proposed]),
        LifecycleOp::Approve(_) => ("approve", &[Proposed]),
        LifecycleOp::ProposeDelete(_) => ("propose the deletion of", &[Published]),
        LifecycleOp::WithdrawDelete(_) => ("withdraw the deletion of", &[DeletionProposed]),
        LifecycleOp::Delete(_) => ("delete", &[Draft, Proposed, DeletionProposed, Published]),
    }
}

/// The revision `name` targeted by a command of `verb`, checked against
/// its row: it exists in this repository and its lifecycle is one of
/// `allowed`. Answers it and its `resource_version`.
fn target(
    spec: &RepositorySpec,
    row: Option<PackageRevisionRow>,
    name: &str,
    verb: &'static str,
    allowed: &[Lifecycle],
) -> Result<(PackageRevision, u64), LifecycleError> {
    let row = row
        .filter(|row| row.repository == spec.name)
        .ok_or_else(|| LifecycleError::NotFound {
            namespace: spec.namespace.clone(),
            name: name.to_owned(),
            repository: spec.name.clone(),
        })?;
    let revision = row.revision.unwrap_or_default();
    if !revision
        .parsed_lifecycle()
        .is_some_and(|l| allowed.contains(&l))
    {
        return Err(LifecycleError::WrongLifecycle {
            verb,
            name: name.to_owned(),
            is: revision.lifecycle.clone(),
            allowed: allowed
                .iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join(" or "),
        });
    }
    Ok((revision, row.updated_seq))
}

/// Whether package `inner` lies below package `outer` (full paths).
fn nested(inner: &str, outer: &str) -> bool {
    inner.len() > outer.len() && inner.starts_with(outer) && inner.as_bytes()[outer.len()] == b'/'
}

/// Checks the names a new package revision (`path`, `package`,
/// `workspace` in the repository of `spec`) brings to Git and Porch; see
/// the module doc.
pub fn new_names(
    spec: &RepositorySpec,
    path: &str,
    package: &str,
    workspace: &str,
) -> Result<(), LifecycleError> {
    let git = spec.git.clone().unwrap_or_default();
    let directory = git.directory.trim_matches('/');
    let refused = |field, why| Err(LifecycleError::Name { field, why });
    // The directories and the package: tree entries.
    for (field, part) in [
        ("git.directory", directory),
        ("path", path),
        ("package", package),
    ] {
        for segment in part.split('/').filter(|s| !s.is_empty()) {
            if let Some(why) = origin::names::tree_entry(segment) {
                return refused(
                    field,
                    format!("{part:?} must not contain {segment:?} ({why})"),
                );
            }
        }
    }
    // A name too long as a whole: the longest of the request's parts.
    let longest = [
        ("path", path),
        ("package", package),
        ("workspace", workspace),
    ]
    .into_iter()
    .fold(("path", 0), |(field, len), (f, part)| {
        if part.len() > len {
            (f, part.len())
        } else {
            (field, len)
        }
    })
    .0;
    let name = object_name(&spec.name, path, package, workspace);
    if name.len() > OBJECT_NAME_MAX_BYTES {
        return refused(
            longest,
            format!(
                "the object name {name} would be {} bytes, more than Porch allows ({OBJECT_NAME_MAX_BYTES}: a Kubernetes object name)",
                name.len()
            ),
        );
    }
    // Every ref its life can write.
    let refs = PackageRefs::new(&git.directory, path, package, &git.branch);
    for name in [
        refs.draft(workspace),
        refs.proposed(workspace),
        refs.tag(i64::MAX),
        refs.deletion_proposed(i64::MAX),
        refs.deletion_proposed(-1),
    ] {
        let why = match check_ref(&name) {
            Ok(()) => continue,
            Err(why) => why,
        };
        let parts = [
            ("git.directory", directory),
            ("path", path),
            ("package", package),
            ("workspace", workspace),
            ("git.branch", git.branch.as_str()),
        ];
        let field = match &why {
            RefError::TooLong { .. } => longest,
            RefError::ComponentTooLong { component, .. } => parts
                .iter()
                .find(|(_, part)| part.split('/').any(|s| s == component))
                .map_or(longest, |(field, _)| *field),
            RefError::Invalid { .. } => parts
                .iter()
                .find(|(_, part)| {
                    !part.is_empty()
                        && !git2::Reference::is_valid_name(&format!("refs/heads/{part}"))
                })
                .map_or(longest, |(field, _)| *field),
        };
        return refused(field, why.to_string());
    }
    Ok(())
}

/// Validates lifecycle command `op` on the repository of `spec` against
/// the view `rows`: the target it works on, or why it is refused.
pub fn validate(
    spec: &RepositorySpec,
    op: &LifecycleOp,
    rows: ViewRows,
) -> Result<Validated, LifecycleError> {
    let (verb, allowed) = allowed(op);
    match op {
        LifecycleOp::Create {
            path,
            package,
            workspace,
            source,
        } => {
            new_names(spec, path, package, workspace)?;
            let name = object_name(&spec.name, path, package, workspace);
            // The source of a clone or copy: it exists, and it is no
            // placeholder (whatever the state, a bad name: 400).
            let copy = matches!(source, Source::Copy { .. });
            let source_revision = match source.from() {
                None => None,
                Some(from) => {
                    let row = rows.source.ok_or_else(|| LifecycleError::SourceMissing {
                        namespace: spec.namespace.clone(),
                        name: from.to_owned(),
                    })?;
                    let revision = row.revision.unwrap_or_default();
                    if revision.revision == -1 {
                        return Err(LifecycleError::PlaceholderSource {
                            copy,
                            repository: row.repository,
                            name: from.to_owned(),
                        });
                    }
                    Some((from, revision))
                }
            };
            if rows.target.is_some() {
                return Err(LifecycleError::WorkspaceTaken {
                    namespace: spec.namespace.clone(),
                    name,
                    workspace: workspace.clone(),
                    package: package_path("", path, package),
                });
            }
            let new = package_path("", path, package);
            // Only a copy makes a new revision of an existing package.
            if !copy && rows.packages.contains(&new) {
                return Err(LifecycleError::PackageExists {
                    package: new,
                    repository: spec.name.clone(),
                    clone: matches!(source, Source::Clone { .. }),
                });
            }
            if let Some(existing) = rows
                .packages
                .into_iter()
                .find(|existing| nested(&new, existing) || nested(existing, &new))
            {
                return Err(LifecycleError::Nesting { new, existing });
            }
            if let Some((from, revision)) = source_revision {
                if !revision
                    .parsed_lifecycle()
                    .is_some_and(Lifecycle::is_published)
                {
                    return Err(LifecycleError::SourceNotPublished {
                        copy,
                        name: from.to_owned(),
                        is: revision.lifecycle,
                    });
                }
            }
            Ok(Validated {
                name,
                path: path.clone(),
                package: package.clone(),
                workspace: workspace.clone(),
                current: None,
            })
        }
        LifecycleOp::Update {
            name,
            resource_version,
            ..
        } => {
            let (revision, version) = target(spec, rows.target, name, verb, allowed)?;
            if version != *resource_version {
                return Err(LifecycleError::ResourceVersion {
                    name: name.clone(),
                    expected: version,
                    found: *resource_version,
                });
            }
            Ok(Validated::of(name, revision))
        }
        LifecycleOp::Delete(name) => {
            let (revision, _) = target(spec, rows.target, name, verb, allowed)?;
            if revision.parsed_lifecycle() == Some(Lifecycle::Published) {
                return Err(LifecycleError::DeletePublished { name: name.clone() });
            }
            if let Some(by) = rows.referenced_by {
                return Err(LifecycleError::ReferencedAsUpstream {
                    name: name.clone(),
                    by,
                });
            }
            Ok(Validated::of(name, revision))
        }
        LifecycleOp::Propose(name)
        | LifecycleOp::Reject(name)
        | LifecycleOp::Approve(name)
        | LifecycleOp::ProposeDelete(name)
        | LifecycleOp::WithdrawDelete(name) => {
            let (revision, _) = target(spec, rows.target, name, verb, allowed)?;
            Ok(Validated::of(name, revision))
        }
    }
}

/// `events` with the one about `name` typed after the command `op` that
/// caused it (a deletion stays `PackageRevisionDeleted`; other revisions
/// the command moved stay `Added`/`Modified`). A `create`'s
/// `DraftCreated` names the revision it cloned (`clone_from`) or copied
/// (`copied_from`).
pub fn typed(events: Vec<Event>, name: &str, op: &LifecycleOp) -> Vec<Event> {
    let (clone_from, copied_from) = match op.source() {
        Some(Source::Clone { from, .. }) => (from.as_str(), ""),
        Some(Source::Copy { from, .. }) => ("", from.as_str()),
        _ => ("", ""),
    };
    events
        .into_iter()
        .map(|e| {
            let revision = match &e.payload {
                Some(Payload::PackageRevisionAdded(a)) => a.revision.as_ref(),
                Some(Payload::PackageRevisionModified(m)) => m.revision.as_ref(),
                _ => None,
            };
            let Some(revision) = revision.filter(|r| r.name == name).cloned() else {
                return e;
            };
            let revision = Some(revision);
            event(match op {
                LifecycleOp::Create { .. } => Payload::DraftCreated(DraftCreated {
                    revision,
                    clone_from: clone_from.to_owned(),
                    copied_from: copied_from.to_owned(),
                }),
                LifecycleOp::Update { .. } => {
                    Payload::DraftResourcesUpdated(DraftResourcesUpdated { revision })
                }
                LifecycleOp::Propose(_) => {
                    Payload::PackageRevisionProposed(PackageRevisionProposed { revision })
                }
                LifecycleOp::Reject(_) => Payload::ProposalRejected(ProposalRejected { revision }),
                LifecycleOp::Approve(_) => {
                    Payload::PackageRevisionPublished(PackageRevisionPublished { revision })
                }
                LifecycleOp::ProposeDelete(_) => {
                    Payload::DeletionProposed(DeletionProposed { revision })
                }
                LifecycleOp::WithdrawDelete(_) => {
                    Payload::DeletionProposalWithdrawn(DeletionProposalWithdrawn { revision })
                }
                LifecycleOp::Delete(_) => return e,
            })
        })
        .collect()
}

/// `Register`: `RepositoryRegistered` with the spec.
pub fn registered(spec: &RepositorySpec) -> Vec<Event> {
    vec![event(Payload::RepositoryRegistered(RepositoryRegistered {
        spec: Some(spec.clone()),
    }))]
}

/// `UpdateSpec`: `RepositorySpecChanged` with the whole new spec and the
/// next sync its SyncManager planned for it.
pub fn spec_changed(
    spec: &RepositorySpec,
    next_sync_at: Option<pbjson_types::Timestamp>,
) -> Vec<Event> {
    vec![event(Payload::RepositorySpecChanged(
        RepositorySpecChanged {
            spec: Some(spec.clone()),
            next_sync_at,
        },
    ))]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cairn_events::{
        revision::Change,
        v1::{PackageRevisionAdded, PackageRevisionDeleted, PackageRevisionModified},
    };

    use super::*;
    use crate::{repository::op::Source, ServiceError};
    use cairn_events::v1::GitSpec;

    fn spec() -> RepositorySpec {
        spec_in("/")
    }

    /// The repository registered with `directory` (branch `main`).
    fn spec_in(directory: &str) -> RepositorySpec {
        RepositorySpec {
            namespace: "ns".into(),
            name: "repo".into(),
            git: Some(GitSpec {
                url: "file:///up.git".into(),
                branch: "main".into(),
                directory: directory.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A revision of package `pkg` (at the top) in `workspace`.
    fn revision(workspace: &str, lifecycle: Lifecycle, number: i64) -> PackageRevision {
        PackageRevision {
            name: object_name("repo", "", "pkg", workspace),
            path: String::new(),
            package: "pkg".into(),
            workspace: workspace.into(),
            revision: number,
            lifecycle: lifecycle.as_str().into(),
            commit: "c0ffee".into(),
            ..Default::default()
        }
    }

    /// The object name `op` targets (for `create`, the new draft's).
    fn target_name(op: &LifecycleOp) -> String {
        op.target("repo")
    }

    /// Given these events of `repository`'s stream (recorded at global
    /// sequence 1, 2, …): the view rows `op` is validated against, folded
    /// as the `package_revisions` view folds them — through
    /// [`Change`], the one reading of what an event does to a revision.
    fn given_in(repository: &str, events: &[Event], op: &LifecycleOp) -> ViewRows {
        let mut rows: BTreeMap<String, PackageRevisionRow> = BTreeMap::new();
        for (seq, event) in (1u64..).zip(events) {
            match event.payload.as_ref().and_then(Change::of) {
                Some(Change::Added(r) | Change::Modified(r)) => {
                    rows.insert(
                        r.name.clone(),
                        PackageRevisionRow {
                            namespace: "ns".into(),
                            repository: repository.into(),
                            updated_seq: seq,
                            revision: Some(r.clone()),
                            lock: None,
                        },
                    );
                }
                Some(Change::Deleted { name, .. }) => {
                    rows.remove(name);
                }
                None => {}
            }
        }
        let target = rows.get(&target_name(op)).cloned();
        let mut packages = Vec::new();
        if matches!(op, LifecycleOp::Create { .. }) && target.is_none() {
            packages = rows
                .values()
                .filter_map(|row| row.revision.as_ref())
                .map(|r| package_path("", &r.path, &r.package))
                .collect();
            packages.sort();
            packages.dedup();
        }
        let source = op
            .source()
            .and_then(Source::from)
            .and_then(|from| rows.get(from).cloned());
        // As `command::referenced_by` scans the namespace.
        let referenced_by = match op {
            LifecycleOp::Delete(name) => rows
                .values()
                .filter_map(|row| row.revision.as_ref())
                .find(|r| {
                    r.revision != -1
                        && r.tasks.iter().any(|t| {
                            serde_json::from_str(&t.raw)
                                .is_ok_and(|task| names_upstream(&task, name))
                        })
                })
                .map(|r| r.name.clone()),
            _ => None,
        };
        ViewRows {
            target,
            packages,
            source,
            referenced_by,
        }
    }

    /// [`given_in`] this repository (`repo`).
    fn given(events: &[Event], op: &LifecycleOp) -> ViewRows {
        given_in("repo", events, op)
    }

    fn added(r: PackageRevision) -> Event {
        event(Payload::PackageRevisionAdded(PackageRevisionAdded {
            revision: Some(r),
        }))
    }

    fn modified(r: PackageRevision) -> Event {
        event(Payload::PackageRevisionModified(PackageRevisionModified {
            revision: Some(r),
        }))
    }

    fn created(r: PackageRevision) -> Event {
        event(Payload::DraftCreated(DraftCreated {
            revision: Some(r),
            clone_from: String::new(),
            copied_from: String::new(),
        }))
    }

    const DRAFT: &str = "repo.pkg.ws";

    /// The events that bring `repo.pkg.ws` to `lifecycle` the usual way:
    /// created, proposed, published (revision 1), deletion proposed.
    fn history(lifecycle: Lifecycle) -> Vec<Event> {
        let mut events = vec![created(revision("ws", Lifecycle::Draft, 0))];
        type Typed = fn(Option<PackageRevision>) -> Payload;
        let steps: [(Lifecycle, Typed); 3] = [
            (Lifecycle::Proposed, |revision| {
                Payload::PackageRevisionProposed(PackageRevisionProposed { revision })
            }),
            (Lifecycle::Published, |revision| {
                Payload::PackageRevisionPublished(PackageRevisionPublished { revision })
            }),
            (Lifecycle::DeletionProposed, |revision| {
                Payload::DeletionProposed(DeletionProposed { revision })
            }),
        ];
        for (step, payload) in steps {
            if Lifecycle::ALL.iter().position(|l| *l == lifecycle)
                < Lifecycle::ALL.iter().position(|l| *l == step)
            {
                break;
            }
            let number = i64::from(step.is_published());
            events.push(event(payload(Some(revision("ws", step, number)))));
        }
        events
    }

    fn every_op(name: &str, resource_version: u64) -> Vec<LifecycleOp> {
        let n = || name.to_owned();
        vec![
            LifecycleOp::Update {
                name: n(),
                files: Default::default(),
                resource_version,
            },
            LifecycleOp::Propose(n()),
            LifecycleOp::Reject(n()),
            LifecycleOp::Approve(n()),
            LifecycleOp::ProposeDelete(n()),
            LifecycleOp::WithdrawDelete(n()),
            LifecycleOp::Delete(n()),
        ]
    }

    fn wrong(verb: &'static str, is: Lifecycle, allowed: &str) -> LifecycleError {
        LifecycleError::WrongLifecycle {
            verb,
            name: DRAFT.into(),
            is: is.as_str().into(),
            allowed: allowed.into(),
        }
    }

    /// Every refused (lifecycle, command): the exact error and its 409
    /// message. Whatever is not here is allowed.
    fn refused() -> Vec<(Lifecycle, &'static str, LifecycleError, &'static str)> {
        use Lifecycle::*;
        let published = || LifecycleError::DeletePublished { name: DRAFT.into() };
        vec![
            (Draft, "reject", wrong("reject", Draft, "Proposed"),
                "cannot reject repo.pkg.ws: it is Draft, not Proposed"),
            (Draft, "approve", wrong("approve", Draft, "Proposed"),
                "cannot approve repo.pkg.ws: it is Draft, not Proposed"),
            (Draft, "propose-delete", wrong("propose the deletion of", Draft, "Published"),
                "cannot propose the deletion of repo.pkg.ws: it is Draft, not Published"),
            (Draft, "withdraw-delete", wrong("withdraw the deletion of", Draft, "DeletionProposed"),
                "cannot withdraw the deletion of repo.pkg.ws: it is Draft, not DeletionProposed"),
            (Proposed, "update", wrong("update", Proposed, "Draft"),
                "cannot update repo.pkg.ws: it is Proposed, not Draft"),
            (Proposed, "propose", wrong("propose", Proposed, "Draft"),
                "cannot propose repo.pkg.ws: it is Proposed, not Draft"),
            (Proposed, "propose-delete", wrong("propose the deletion of", Proposed, "Published"),
                "cannot propose the deletion of repo.pkg.ws: it is Proposed, not Published"),
            (Proposed, "withdraw-delete", wrong("withdraw the deletion of", Proposed, "DeletionProposed"),
                "cannot withdraw the deletion of repo.pkg.ws: it is Proposed, not DeletionProposed"),
            (Published, "update", wrong("update", Published, "Draft"),
                "cannot update repo.pkg.ws: it is Published, not Draft"),
            (Published, "propose", wrong("propose", Published, "Draft"),
                "cannot propose repo.pkg.ws: it is Published, not Draft"),
            (Published, "reject", wrong("reject", Published, "Proposed"),
                "cannot reject repo.pkg.ws: it is Published, not Proposed"),
            (Published, "approve", wrong("approve", Published, "Proposed"),
                "cannot approve repo.pkg.ws: it is Published, not Proposed"),
            (Published, "withdraw-delete", wrong("withdraw the deletion of", Published, "DeletionProposed"),
                "cannot withdraw the deletion of repo.pkg.ws: it is Published, not DeletionProposed"),
            (Published, "delete", published(),
                "cannot delete repo.pkg.ws: it is Published; propose its deletion first (pkgrev.propose-delete)"),
            (DeletionProposed, "update", wrong("update", DeletionProposed, "Draft"),
                "cannot update repo.pkg.ws: it is DeletionProposed, not Draft"),
            (DeletionProposed, "propose", wrong("propose", DeletionProposed, "Draft"),
                "cannot propose repo.pkg.ws: it is DeletionProposed, not Draft"),
            (DeletionProposed, "reject", wrong("reject", DeletionProposed, "Proposed"),
                "cannot reject repo.pkg.ws: it is DeletionProposed, not Proposed"),
            (DeletionProposed, "approve", wrong("approve", DeletionProposed, "Proposed"),
                "cannot approve repo.pkg.ws: it is DeletionProposed, not Proposed"),
            (DeletionProposed, "propose-delete", wrong("propose the deletion of", DeletionProposed, "Published"),
                "cannot propose the deletion of repo.pkg.ws: it is DeletionProposed, not Published"),
        ]
    }

    #[test]
    fn every_transition_is_allowed_or_refused_exactly() {
        let refused = refused();
        assert_eq!(refused.len(), 19, "4 lifecycles x 7 commands, 9 allowed");
        let mut allowed = 0;
        for lifecycle in Lifecycle::ALL {
            let events = history(lifecycle);
            // The draft's resource_version: the sequence of its last event.
            let version = events.len() as u64;
            let number = i64::from(lifecycle.is_published());
            for op in every_op(DRAFT, version) {
                let verb = op.verb();
                let when = validate(&spec(), &op, given(&events, &op));
                match refused
                    .iter()
                    .find(|(l, v, ..)| (*l, *v) == (lifecycle, verb))
                {
                    Some((_, _, error, message)) => {
                        assert_eq!(when, Err(error.clone()), "{verb} of a {lifecycle}");
                        assert_eq!(
                            ServiceError::from(error.clone()),
                            ServiceError::conflict(*message),
                            "{verb} of a {lifecycle}"
                        );
                    }
                    None => {
                        allowed += 1;
                        assert_eq!(
                            when,
                            Ok(Validated::of(DRAFT, revision("ws", lifecycle, number))),
                            "{verb} of a {lifecycle}"
                        );
                    }
                }
            }
        }
        assert_eq!(allowed, 9);
    }

    #[test]
    fn a_lifecycle_the_view_does_not_know_allows_nothing() {
        let mut odd = revision("ws", Lifecycle::Draft, 0);
        odd.lifecycle = "Weird".into();
        let op = LifecycleOp::Propose(DRAFT.into());
        assert_eq!(
            validate(&spec(), &op, given(&[added(odd)], &op)),
            Err(LifecycleError::WrongLifecycle {
                verb: "propose",
                name: DRAFT.into(),
                is: "Weird".into(),
                allowed: "Draft".into()
            })
        );
    }

    #[test]
    fn a_target_missing_deleted_or_in_another_repository_is_not_found() {
        let not_found = LifecycleError::NotFound {
            namespace: "ns".into(),
            name: DRAFT.into(),
            repository: "repo".into(),
        };
        let op = LifecycleOp::Approve(DRAFT.into());
        // Never added.
        assert_eq!(
            validate(&spec(), &op, given(&[], &op)),
            Err(not_found.clone())
        );
        // Added, then deleted.
        let gone = [
            created(revision("ws", Lifecycle::Draft, 0)),
            event(Payload::PackageRevisionDeleted(PackageRevisionDeleted {
                name: DRAFT.into(),
                last: None,
            })),
        ];
        assert_eq!(
            validate(&spec(), &op, given(&gone, &op)),
            Err(not_found.clone())
        );
        // A revision of that name in another repository.
        let elsewhere = [added(revision("ws", Lifecycle::Proposed, 0))];
        assert_eq!(
            validate(&spec(), &op, given_in("other", &elsewhere, &op)),
            Err(not_found.clone())
        );
        assert_eq!(
            ServiceError::from(not_found),
            ServiceError::not_found("package revision ns/repo.pkg.ws not found in repository repo")
        );
    }

    #[test]
    fn an_update_needs_the_resource_version_the_view_has() {
        // Created at 1, then its resources updated at 2.
        let events = [
            created(revision("ws", Lifecycle::Draft, 0)),
            event(Payload::DraftResourcesUpdated(DraftResourcesUpdated {
                revision: Some(revision("ws", Lifecycle::Draft, 0)),
            })),
        ];
        let update = |version| LifecycleOp::Update {
            name: DRAFT.into(),
            files: Default::default(),
            resource_version: version,
        };
        assert_eq!(
            validate(&spec(), &update(2), given(&events, &update(2))),
            Ok(Validated::of(DRAFT, revision("ws", Lifecycle::Draft, 0)))
        );
        let stale = LifecycleError::ResourceVersion {
            name: DRAFT.into(),
            expected: 2,
            found: 1,
        };
        assert_eq!(
            validate(&spec(), &update(1), given(&events, &update(1))),
            Err(stale.clone())
        );
        assert_eq!(
            ServiceError::from(stale),
            ServiceError::conflict(
                "resource_version of repo.pkg.ws: expected 2, got 1 (it changed since it was read)"
            )
        );
    }

    fn create(path: &str, package: &str, workspace: &str) -> LifecycleOp {
        LifecycleOp::Create {
            path: path.into(),
            package: package.into(),
            workspace: workspace.into(),
            source: Source::Init,
        }
    }

    /// A published revision 1 of package `package` at `path`.
    fn published(path: &str, package: &str) -> Event {
        added(PackageRevision {
            name: object_name("repo", path, package, "v1"),
            path: path.into(),
            package: package.into(),
            workspace: "v1".into(),
            revision: 1,
            lifecycle: "Published".into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_create_needs_a_free_workspace() {
        let events = [
            published("", "pkg"),
            added(revision("ws", Lifecycle::Published, 2)),
        ];
        let op = create("", "pkg", "ws");
        let taken = LifecycleError::WorkspaceTaken {
            namespace: "ns".into(),
            name: DRAFT.into(),
            workspace: "ws".into(),
            package: "pkg".into(),
        };
        assert_eq!(
            validate(&spec(), &op, given(&events, &op)),
            Err(taken.clone())
        );
        assert_eq!(
            ServiceError::from(taken),
            ServiceError::conflict(
                "package revision ns/repo.pkg.ws already exists (workspace \"ws\" of package \"pkg\" is taken)"
            )
        );
        let op = create("a/b", "pkg", "ws");
        assert_eq!(
            validate(&spec(), &op, given(&events, &op)),
            Ok(Validated {
                name: "repo.a.b.pkg.ws".into(),
                path: "a/b".into(),
                package: "pkg".into(),
                workspace: "ws".into(),
                current: None
            })
        );
    }

    #[test]
    fn packages_do_not_nest() {
        let events = [published("", "base"), published("apps", "web")];
        // Inside an existing package.
        let op = create("apps/web", "db", "ws");
        let inside = LifecycleError::Nesting {
            new: "apps/web/db".into(),
            existing: "apps/web".into(),
        };
        assert_eq!(
            validate(&spec(), &op, given(&events, &op)),
            Err(inside.clone())
        );
        assert_eq!(
            ServiceError::from(inside),
            ServiceError::conflict(
                "package \"apps/web/db\" would nest with package \"apps/web\" (packages do not nest)"
            )
        );
        // Holding one.
        let op = create("", "apps", "ws");
        assert_eq!(
            validate(&spec(), &op, given(&events, &op)),
            Err(LifecycleError::Nesting {
                new: "apps".into(),
                existing: "apps/web".into()
            })
        );
        // A sibling sharing a prefix is no nesting.
        let events = [published("", "apps"), published("", "app-x")];
        let op = create("", "app", "ws");
        assert_eq!(
            validate(&spec(), &op, given(&events, &op)).map(|v| v.name),
            Ok("repo.app.ws".to_owned())
        );
    }

    /// Given no revision, when `create(path, package, workspace)` in the
    /// repository of `spec`: the refusal, as the service answers it.
    fn refused_create(
        spec: &RepositorySpec,
        path: &str,
        package: &str,
        workspace: &str,
    ) -> ServiceError {
        let op = create(path, package, workspace);
        let error = validate(spec, &op, given(&[], &op)).unwrap_err();
        assert!(matches!(error, LifecycleError::Name { .. }), "{error:?}");
        ServiceError::from(error)
    }

    #[test]
    fn a_create_is_refused_names_git_or_porch_cannot_take() {
        // A path of 2,000 segments: an object name (and refs) of 4,000
        // bytes and more.
        let path = vec!["t"; 2000].join("/");
        let name = format!("repo.{}.lp2.w1", vec!["t"; 2000].join("."));
        assert_eq!(
            refused_create(&spec(), &path, "lp2", "w1"),
            ServiceError::bad_field(
                "path",
                format!("the object name {name} would be 4011 bytes, more than Porch allows (253: a Kubernetes object name)")
            )
        );
        // The object name at Porch's 253 bytes is fine, one more is not.
        let workspace = "w".repeat(253 - "repo.pkg.".len());
        let op = create("", "pkg", &workspace);
        assert!(validate(&spec(), &op, given(&[], &op)).is_ok());
        assert_eq!(
            refused_create(&spec(), "", "pkg", &format!("{workspace}w")).code,
            400
        );
        // A ref Git refuses: the field that holds the bad component.
        assert_eq!(
            refused_create(&spec(), "", "pkg", "a..b"),
            ServiceError::bad_field(
                "workspace",
                "refs/heads/drafts/pkg/a..b is not a valid Git ref name (see git check-ref-format)"
            )
        );
        assert_eq!(
            refused_create(&spec_in("a b"), "x", "pkg", "ws"),
            ServiceError::bad_field(
                "git.directory",
                "refs/heads/drafts/a b/x/pkg/ws is not a valid Git ref name (see git check-ref-format)"
            )
        );
        // A tree entry Git refuses, from the registered directory.
        assert_eq!(
            refused_create(&spec_in("/catalog/.GIT/"), "", "pkg", "ws"),
            ServiceError::bad_field(
                "git.directory",
                "\"catalog/.GIT\" must not contain \".GIT\" (Git's own directory, in any case)"
            )
        );
        // A directory component longer than a file name.
        let long = "d".repeat(256);
        assert_eq!(
            refused_create(&spec_in(&long), "", "pkg", "ws"),
            ServiceError::bad_field(
                "git.directory",
                format!("the ref refs/heads/drafts/{long}/pkg/ws has a component of 256 bytes, more than 255 ({long:?})")
            )
        );
    }

    #[test]
    fn the_longest_ref_of_a_new_revision_may_be_1023_bytes() {
        // The registered directory makes the refs long; the proposal's ref
        // (`refs/heads/proposed/<directory>/pkg/<workspace>`) is the
        // longest one a workspace of more than 28 bytes makes.
        let workspace = "w".repeat(100);
        let fixed = format!("refs/heads/proposed//pkg/{workspace}").len();
        let directory = |len: usize| {
            let mut segments = vec!["d".repeat(200); (len + 1) / 201];
            let rest = len - (segments.len() * 201).saturating_sub(1);
            if rest > 0 {
                segments.push("e".repeat(rest - usize::from(!segments.is_empty())));
            }
            let directory = segments.join("/");
            assert_eq!(directory.len(), len);
            directory
        };
        let at_limit = spec_in(&directory(1023 - fixed));
        let op = create("", "pkg", &workspace);
        assert!(validate(&at_limit, &op, given(&[], &op)).is_ok());
        let over = spec_in(&directory(1024 - fixed));
        let proposal = format!(
            "refs/heads/proposed/{}/pkg/{workspace}",
            directory(1024 - fixed)
        );
        assert_eq!(
            refused_create(&over, "", "pkg", &workspace),
            ServiceError::bad_field(
                "workspace",
                format!("the ref {proposal} would be 1024 bytes, more than 1023 (refs longer than that cannot be stored by libgit2, GIT_REFNAME_MAX)")
            )
        );
    }

    /// One step of a revision's life: given `history`, when `op` and the
    /// upstream read back `read_back` (the target as the command left it,
    /// and another revision it moved), then exactly `then` — appended to
    /// `history`.
    fn step(history: &mut Vec<Event>, op: LifecycleOp, read_back: Vec<Event>, then: Vec<Event>) {
        let validated = validate(&spec(), &op, given(history, &op));
        assert!(validated.is_ok(), "{}: {validated:?}", op.verb());
        let events = typed(read_back, DRAFT, &op);
        assert_eq!(events, then, "{}", op.verb());
        history.extend(events);
    }

    #[test]
    fn a_revisions_life_as_given_when_then_events() {
        let at = |lifecycle, number| Some(revision("ws", lifecycle, number));
        // Another revision a command moved (the placeholder) stays a
        // plain `PackageRevisionModified`.
        let main = revision("main", Lifecycle::Published, -1);
        let mut history = vec![published("", "pkg")];
        // A new revision of the package: a copy of its v1.
        step(
            &mut history,
            create_from("pkg", "ws", copy_of, "repo.pkg.v1"),
            vec![added(revision("ws", Lifecycle::Draft, 0))],
            vec![event(Payload::DraftCreated(DraftCreated {
                revision: at(Lifecycle::Draft, 0),
                clone_from: String::new(),
                copied_from: "repo.pkg.v1".into(),
            }))],
        );
        step(
            &mut history,
            LifecycleOp::Update {
                name: DRAFT.into(),
                files: Default::default(),
                resource_version: 2,
            },
            vec![modified(revision("ws", Lifecycle::Draft, 0))],
            vec![event(Payload::DraftResourcesUpdated(
                DraftResourcesUpdated {
                    revision: at(Lifecycle::Draft, 0),
                },
            ))],
        );
        step(
            &mut history,
            LifecycleOp::Propose(DRAFT.into()),
            vec![modified(revision("ws", Lifecycle::Proposed, 0))],
            vec![event(Payload::PackageRevisionProposed(
                PackageRevisionProposed {
                    revision: at(Lifecycle::Proposed, 0),
                },
            ))],
        );
        step(
            &mut history,
            LifecycleOp::Reject(DRAFT.into()),
            vec![modified(revision("ws", Lifecycle::Draft, 0))],
            vec![event(Payload::ProposalRejected(ProposalRejected {
                revision: at(Lifecycle::Draft, 0),
            }))],
        );
        step(
            &mut history,
            LifecycleOp::Propose(DRAFT.into()),
            vec![modified(revision("ws", Lifecycle::Proposed, 0))],
            vec![event(Payload::PackageRevisionProposed(
                PackageRevisionProposed {
                    revision: at(Lifecycle::Proposed, 0),
                },
            ))],
        );
        step(
            &mut history,
            LifecycleOp::Approve(DRAFT.into()),
            vec![
                modified(main.clone()),
                modified(revision("ws", Lifecycle::Published, 2)),
            ],
            vec![
                modified(main.clone()),
                event(Payload::PackageRevisionPublished(
                    PackageRevisionPublished {
                        revision: at(Lifecycle::Published, 2),
                    },
                )),
            ],
        );
        step(
            &mut history,
            LifecycleOp::ProposeDelete(DRAFT.into()),
            vec![modified(revision("ws", Lifecycle::DeletionProposed, 2))],
            vec![event(Payload::DeletionProposed(DeletionProposed {
                revision: at(Lifecycle::DeletionProposed, 2),
            }))],
        );
        step(
            &mut history,
            LifecycleOp::WithdrawDelete(DRAFT.into()),
            vec![modified(revision("ws", Lifecycle::Published, 2))],
            vec![event(Payload::DeletionProposalWithdrawn(
                DeletionProposalWithdrawn {
                    revision: at(Lifecycle::Published, 2),
                },
            ))],
        );
        step(
            &mut history,
            LifecycleOp::ProposeDelete(DRAFT.into()),
            vec![modified(revision("ws", Lifecycle::DeletionProposed, 2))],
            vec![event(Payload::DeletionProposed(DeletionProposed {
                revision: at(Lifecycle::DeletionProposed, 2),
            }))],
        );
        // A deletion stays a deletion.
        let deleted = event(Payload::PackageRevisionDeleted(PackageRevisionDeleted {
            name: DRAFT.into(),
            last: None,
        }));
        step(
            &mut history,
            LifecycleOp::Delete(DRAFT.into()),
            vec![deleted.clone()],
            vec![deleted],
        );
        // Then: gone.
        let op = LifecycleOp::Propose(DRAFT.into());
        assert!(matches!(
            validate(&spec(), &op, given(&history, &op)),
            Err(LifecycleError::NotFound { .. })
        ));
    }

    /// A `create` of `package` in `workspace` from revision `from`.
    fn create_from(
        package: &str,
        workspace: &str,
        source: fn(String) -> Source,
        from: &str,
    ) -> LifecycleOp {
        LifecycleOp::Create {
            path: String::new(),
            package: package.into(),
            workspace: workspace.into(),
            source: source(from.into()),
        }
    }

    fn clone_of(from: String) -> Source {
        Source::Clone {
            from,
            files: Default::default(),
        }
    }

    fn copy_of(from: String) -> Source {
        Source::Copy {
            from,
            files: Default::default(),
        }
    }

    /// Revision `workspace` of package `package` (at the top) in
    /// `lifecycle`, with tasks `tasks` (their JSON).
    fn of_package(
        package: &str,
        workspace: &str,
        lifecycle: Lifecycle,
        number: i64,
        tasks: &[&str],
    ) -> PackageRevision {
        PackageRevision {
            name: object_name("repo", "", package, workspace),
            package: package.into(),
            workspace: workspace.into(),
            revision: number,
            lifecycle: lifecycle.as_str().into(),
            tasks: tasks
                .iter()
                .map(|raw| cairn_events::v1::Task {
                    r#type: serde_json::from_str::<serde_json::Value>(raw).unwrap()["type"]
                        .as_str()
                        .unwrap()
                        .into(),
                    raw: (*raw).into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_clone_or_copy_of_a_placeholder_is_refused_naming_clone_from() {
        // Given pkg published as v1, and its placeholder.
        let events = [
            added(revision("v1", Lifecycle::Published, 1)),
            added(revision("main", Lifecycle::Published, -1)),
        ];
        for (op, words) in [
            (create_from("pkg", "ws", copy_of, "repo.pkg.main"), "source"),
            (
                create_from("other", "ws", clone_of, "repo.pkg.main"),
                "upstream",
            ),
        ] {
            let when = validate(&spec(), &op, given(&events, &op));
            assert_eq!(
                when,
                Err(LifecycleError::PlaceholderSource {
                    copy: words == "source",
                    repository: "repo".into(),
                    name: "repo.pkg.main".into(),
                })
            );
            assert_eq!(
                ServiceError::from(when.unwrap_err()),
                ServiceError::bad_field(
                    "clone_from",
                    format!("{words} revision may not be the placeholder package revision repo/repo.pkg.main")
                )
            );
        }
        // A source deleted since the request was read.
        let op = create_from("other", "ws", clone_of, "repo.pkg.v9");
        let when = validate(&spec(), &op, given(&events, &op)).unwrap_err();
        assert_eq!(
            ServiceError::from(when),
            ServiceError::bad_field("clone_from", "package revision ns/repo.pkg.v9 not found")
        );
    }

    #[test]
    fn a_clone_or_copy_needs_a_published_source() {
        use Lifecycle::*;
        for lifecycle in [Draft, Proposed, Published, DeletionProposed] {
            // Given pkg v1 published, and revision `src` of pkg in `lifecycle`.
            let number = if lifecycle.is_published() { 2 } else { 0 };
            let events = [
                added(revision("v1", Published, 1)),
                added(revision("src", lifecycle, number)),
            ];
            let copy = create_from("pkg", "ws", copy_of, "repo.pkg.src");
            let clone = create_from("new", "ws", clone_of, "repo.pkg.src");
            let copied = validate(&spec(), &copy, given(&events, &copy));
            let cloned = validate(&spec(), &clone, given(&events, &clone));
            if lifecycle.is_published() {
                assert_eq!(copied.map(|v| v.name), Ok("repo.pkg.ws".to_owned()));
                assert_eq!(cloned.map(|v| v.name), Ok("repo.new.ws".to_owned()));
                continue;
            }
            let is = lifecycle.as_str();
            assert_eq!(
                copied,
                Err(LifecycleError::SourceNotPublished {
                    copy: true,
                    name: "repo.pkg.src".into(),
                    is: is.into()
                })
            );
            assert_eq!(
                ServiceError::from(copied.unwrap_err()),
                ServiceError::conflict(format!(
                    "source revision must be published: repo.pkg.src is {is}"
                ))
            );
            assert_eq!(
                ServiceError::from(cloned.unwrap_err()),
                ServiceError::conflict(format!(
                    "upstream package \"repo.pkg.src\" must be published: it is {is}"
                ))
            );
        }
    }

    #[test]
    fn only_a_copy_makes_a_new_revision_of_an_existing_package() {
        // Given pkg published as v1.
        let events = [added(revision("v1", Lifecycle::Published, 1))];
        let init = create("", "pkg", "again");
        let exists = |clone| LifecycleError::PackageExists {
            package: "pkg".into(),
            repository: "repo".into(),
            clone,
        };
        assert_eq!(
            validate(&spec(), &init, given(&events, &init)),
            Err(exists(false))
        );
        assert_eq!(
            ServiceError::from(exists(false)),
            ServiceError::conflict("package \"pkg\" already exists in repository \"repo\"; make subsequent revisions by copying (clone_from a published revision of the same package)")
        );
        // A clone into it: another package's revision as the source.
        let events = [
            added(revision("v1", Lifecycle::Published, 1)),
            added(of_package("up", "v1", Lifecycle::Published, 1, &[])),
        ];
        let clone = create_from("pkg", "again", clone_of, "repo.up.v1");
        assert_eq!(
            validate(&spec(), &clone, given(&events, &clone)),
            Err(exists(true))
        );
        assert_eq!(
            ServiceError::from(exists(true)),
            ServiceError::conflict("`clone` cannot create a new revision for package \"pkg\" that already exists in repo \"repo\"; make subsequent revisions by copying (clone_from a published revision of the same package)")
        );
        // Files are an init too; a draft counts as well as a published one.
        let events = [added(revision("ws", Lifecycle::Draft, 0))];
        let files = LifecycleOp::Create {
            path: String::new(),
            package: "pkg".into(),
            workspace: "again".into(),
            source: Source::Files(Default::default()),
        };
        assert_eq!(
            validate(&spec(), &files, given(&events, &files)),
            Err(exists(false))
        );
        // A copy of a published revision is the way.
        let events = [added(revision("v1", Lifecycle::Published, 1))];
        let copy = create_from("pkg", "again", copy_of, "repo.pkg.v1");
        assert_eq!(
            validate(&spec(), &copy, given(&events, &copy)).map(|v| v.name),
            Ok("repo.pkg.again".to_owned())
        );
    }

    #[test]
    fn a_revision_referenced_as_upstream_is_not_deleted() {
        use Lifecycle::*;
        const CLONE: &str =
            r#"{"type":"clone","clone":{"upstreamRef":{"upstreamRef":{"name":"repo.pkg.ws"}}}}"#;
        const UPGRADE: &str = r#"{"type":"upgrade","upgrade":{"oldUpstreamRef":{"name":"repo.pkg.v0"},"newUpstreamRef":{"name":"repo.pkg.ws"}}}"#;
        const OTHER: &str =
            r#"{"type":"clone","clone":{"upstreamRef":{"upstreamRef":{"name":"repo.pkg.v1"}}}}"#;
        // Given repo.pkg.ws with its deletion proposed…
        let target = history(DeletionProposed);
        let op = LifecycleOp::Delete(DRAFT.into());
        let with = |downstream: PackageRevision| {
            let mut events = target.clone();
            events.push(added(downstream));
            events
        };
        // …a downstream draft cloned from it, or a published one upgraded
        // to it: refused, naming the downstream.
        for (downstream, tasks) in [
            (of_package("down", "ws", Draft, 0, &[CLONE]), "clone"),
            (
                of_package("down", "ws", Published, 1, &[UPGRADE]),
                "upgrade",
            ),
            (
                of_package(
                    "down",
                    "ws",
                    Draft,
                    0,
                    &[CLONE, r#"{"type":"patch","patch":{}}"#],
                ),
                "clone then patch",
            ),
        ] {
            let events = with(downstream);
            let when = validate(&spec(), &op, given(&events, &op));
            assert_eq!(
                when,
                Err(LifecycleError::ReferencedAsUpstream {
                    name: DRAFT.into(),
                    by: "repo.down.ws".into()
                }),
                "{tasks}"
            );
            assert_eq!(
                ServiceError::from(when.unwrap_err()),
                ServiceError::conflict("cannot delete package revision repo.pkg.ws, it is referenced as upstream by: repo.down.ws")
            );
        }
        // A placeholder carrying such a task, a task naming another
        // revision, no task: deleted.
        for downstream in [
            of_package("down", "main", Published, -1, &[CLONE]),
            of_package("down", "ws", Draft, 0, &[OTHER]),
            of_package("down", "ws", Draft, 0, &[r#"{"type":"init","init":{}}"#]),
        ] {
            let events = with(downstream.clone());
            assert_eq!(
                validate(&spec(), &op, given(&events, &op)),
                Ok(Validated::of(DRAFT, revision("ws", DeletionProposed, 1))),
                "{downstream:?}"
            );
        }
    }

    #[test]
    fn a_copy_names_its_source() {
        let op = create_from("pkg", "ws", copy_of, "repo.pkg.v1");
        let target = revision("ws", Lifecycle::Draft, 0);
        assert_eq!(
            typed(vec![added(target.clone())], DRAFT, &op),
            vec![event(Payload::DraftCreated(DraftCreated {
                revision: Some(target),
                clone_from: String::new(),
                copied_from: "repo.pkg.v1".into(),
            }))]
        );
    }

    #[test]
    fn a_clone_names_its_source() {
        let op = LifecycleOp::Create {
            path: String::new(),
            package: "pkg".into(),
            workspace: "ws".into(),
            source: Source::Clone {
                from: "repo.up.v1".into(),
                files: Default::default(),
            },
        };
        let target = revision("ws", Lifecycle::Draft, 0);
        assert_eq!(
            typed(vec![added(target.clone())], DRAFT, &op),
            vec![event(Payload::DraftCreated(DraftCreated {
                revision: Some(target),
                clone_from: "repo.up.v1".into(),
                copied_from: String::new(),
            }))]
        );
    }

    #[test]
    fn register_and_update_spec_record_the_spec() {
        assert_eq!(
            registered(&spec()),
            vec![event(Payload::RepositoryRegistered(RepositoryRegistered {
                spec: Some(spec())
            }))]
        );
        assert_eq!(
            spec_changed(&spec(), None),
            vec![event(Payload::RepositorySpecChanged(
                RepositorySpecChanged {
                    spec: Some(spec()),
                    next_sync_at: None
                }
            ))]
        );
    }
}
