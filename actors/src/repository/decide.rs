//! The repository's command decisions as pure functions: given the view
//! rows (or the state) a command concerns, when the command, then its
//! events or the error — no store, no Git, unit-tested given / when /
//! then.
//!
//! - [`validate`]: a lifecycle command against the view rows of its target
//!   ([`ViewRows`]): exists in this repository, its lifecycle allows the
//!   command, `resource_version` matches, a new workspace is free and a
//!   new package does not nest. What it accepts is a [`Validated`] target
//!   for the Git write ([`super::command`]).
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

use super::{error::LifecycleError, naming::object_name, op::LifecycleOp};
use crate::origin::package_path;

/// The view rows a lifecycle command is validated against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewRows {
    /// The row named by the command (for `create`, the new draft's object
    /// name), as the `package_revisions` view has it.
    pub target: Option<PackageRevisionRow>,
    /// For a `create` whose name is free: the full paths of the
    /// repository's packages, in list order (for the nesting check).
    pub packages: Vec<String>,
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
            ..
        } => {
            let name = object_name(&spec.name, path, package, workspace);
            if rows.target.is_some() {
                return Err(LifecycleError::WorkspaceTaken {
                    namespace: spec.namespace.clone(),
                    name,
                    workspace: workspace.clone(),
                    package: package_path("", path, package),
                });
            }
            let new = package_path("", path, package);
            if let Some(existing) = rows
                .packages
                .into_iter()
                .find(|existing| nested(&new, existing) || nested(existing, &new))
            {
                return Err(LifecycleError::Nesting { new, existing });
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
/// the command moved stay `Added`/`Modified`). `clone_from` names the
/// revision a `create` copied (empty otherwise).
pub fn typed(events: Vec<Event>, name: &str, op: &LifecycleOp, clone_from: &str) -> Vec<Event> {
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

/// `UpdateSpec`: `RepositorySpecChanged` with the whole new spec.
pub fn spec_changed(spec: &RepositorySpec) -> Vec<Event> {
    vec![event(Payload::RepositorySpecChanged(
        RepositorySpecChanged {
            spec: Some(spec.clone()),
        },
    ))]
}

#[cfg(test)]
mod tests {
    use cairn_events::v1::{PackageRevisionAdded, PackageRevisionDeleted, PackageRevisionModified};

    use super::*;
    use crate::repository::op::Source;

    fn spec() -> RepositorySpec {
        RepositorySpec {
            namespace: "ns".into(),
            name: "repo".into(),
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

    /// Given: the view has `revision` in repository `repo`, last changed at
    /// global sequence `seq`.
    fn given(revision: PackageRevision, seq: u64) -> ViewRows {
        ViewRows {
            target: Some(PackageRevisionRow {
                namespace: "ns".into(),
                repository: "repo".into(),
                updated_seq: seq,
                revision: Some(revision),
            }),
            packages: Vec::new(),
        }
    }

    const DRAFT: &str = "repo.pkg.ws";

    fn every_op(name: &str) -> Vec<LifecycleOp> {
        let n = || name.to_owned();
        vec![
            LifecycleOp::Update {
                name: n(),
                files: Default::default(),
                resource_version: 7,
            },
            LifecycleOp::Propose(n()),
            LifecycleOp::Reject(n()),
            LifecycleOp::Approve(n()),
            LifecycleOp::ProposeDelete(n()),
            LifecycleOp::WithdrawDelete(n()),
            LifecycleOp::Delete(n()),
        ]
    }

    /// The verbs each lifecycle allows (Draft → Proposed → Published →
    /// DeletionProposed, reject back to Draft, withdraw back to Published,
    /// delete of all but Published).
    fn allows(lifecycle: Lifecycle) -> &'static [&'static str] {
        match lifecycle {
            Lifecycle::Draft => &["update", "propose", "delete"],
            Lifecycle::Proposed => &["reject", "approve", "delete"],
            Lifecycle::Published => &["propose-delete"],
            Lifecycle::DeletionProposed => &["withdraw-delete", "delete"],
        }
    }

    #[test]
    fn every_transition_is_allowed_or_refused_exactly() {
        for lifecycle in Lifecycle::ALL {
            let number = if lifecycle.is_published() { 1 } else { 0 };
            for op in every_op(DRAFT) {
                let when = validate(&spec(), &op, given(revision("ws", lifecycle, number), 7));
                let verb = op.verb();
                if allows(lifecycle).contains(&verb) {
                    assert_eq!(
                        when,
                        Ok(Validated::of(DRAFT, revision("ws", lifecycle, number))),
                        "{verb} of a {lifecycle}"
                    );
                } else {
                    assert!(when.is_err(), "{verb} of a {lifecycle} must be refused");
                }
            }
        }
    }

    #[test]
    fn refusals_name_the_lifecycle_and_what_is_allowed() {
        let cases: [(LifecycleOp, Lifecycle, &str); 7] = [
            (
                LifecycleOp::Approve(DRAFT.into()),
                Lifecycle::Draft,
                "cannot approve repo.pkg.ws: it is Draft, not Proposed",
            ),
            (
                LifecycleOp::Propose(DRAFT.into()),
                Lifecycle::Published,
                "cannot propose repo.pkg.ws: it is Published, not Draft",
            ),
            (
                LifecycleOp::Reject(DRAFT.into()),
                Lifecycle::Draft,
                "cannot reject repo.pkg.ws: it is Draft, not Proposed",
            ),
            (
                LifecycleOp::ProposeDelete(DRAFT.into()),
                Lifecycle::Proposed,
                "cannot propose the deletion of repo.pkg.ws: it is Proposed, not Published",
            ),
            (
                LifecycleOp::WithdrawDelete(DRAFT.into()),
                Lifecycle::Published,
                "cannot withdraw the deletion of repo.pkg.ws: it is Published, not DeletionProposed",
            ),
            (
                LifecycleOp::Update {
                    name: DRAFT.into(),
                    files: Default::default(),
                    resource_version: 7,
                },
                Lifecycle::Proposed,
                "cannot update repo.pkg.ws: it is Proposed, not Draft",
            ),
            (
                LifecycleOp::Delete(DRAFT.into()),
                Lifecycle::Published,
                "cannot delete repo.pkg.ws: it is Published; propose its deletion first (pkgrev.propose-delete)",
            ),
        ];
        for (op, lifecycle, message) in cases {
            let err = validate(&spec(), &op, given(revision("ws", lifecycle, 1), 7)).unwrap_err();
            let service = crate::ServiceError::from(err);
            assert_eq!((service.code, service.message.as_str()), (409, message));
        }
        // A lifecycle the view does not know allows nothing.
        let mut odd = revision("ws", Lifecycle::Draft, 0);
        odd.lifecycle = "Weird".into();
        assert_eq!(
            validate(&spec(), &LifecycleOp::Propose(DRAFT.into()), given(odd, 1)),
            Err(LifecycleError::WrongLifecycle {
                verb: "propose",
                name: DRAFT.into(),
                is: "Weird".into(),
                allowed: "Draft".into()
            })
        );
    }

    #[test]
    fn delete_takes_drafts_proposals_and_proposed_deletions() {
        for (lifecycle, number) in [
            (Lifecycle::Draft, 0),
            (Lifecycle::Proposed, 0),
            (Lifecycle::DeletionProposed, 3),
        ] {
            let r = revision("ws", lifecycle, number);
            assert_eq!(
                validate(
                    &spec(),
                    &LifecycleOp::Delete(DRAFT.into()),
                    given(r.clone(), 1)
                ),
                Ok(Validated {
                    name: DRAFT.into(),
                    path: String::new(),
                    package: "pkg".into(),
                    workspace: "ws".into(),
                    current: Some(r)
                })
            );
        }
    }

    #[test]
    fn a_target_missing_or_in_another_repository_is_not_found() {
        let message = "package revision ns/repo.pkg.ws not found in repository repo";
        let when = validate(
            &spec(),
            &LifecycleOp::Approve(DRAFT.into()),
            ViewRows::default(),
        );
        let e = crate::ServiceError::from(when.unwrap_err());
        assert_eq!((e.code, e.message.as_str()), (404, message));
        let mut elsewhere = given(revision("ws", Lifecycle::Proposed, 0), 1);
        elsewhere.target.as_mut().unwrap().repository = "other".into();
        let e = crate::ServiceError::from(
            validate(&spec(), &LifecycleOp::Approve(DRAFT.into()), elsewhere).unwrap_err(),
        );
        assert_eq!((e.code, e.message.as_str()), (404, message));
    }

    #[test]
    fn an_update_needs_the_resource_version_the_view_has() {
        let when = |version| {
            validate(
                &spec(),
                &LifecycleOp::Update {
                    name: DRAFT.into(),
                    files: Default::default(),
                    resource_version: version,
                },
                given(revision("ws", Lifecycle::Draft, 0), 12),
            )
        };
        assert!(when(12).is_ok());
        let e = crate::ServiceError::from(when(11).unwrap_err());
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                409,
                "resource_version of repo.pkg.ws: expected 12, got 11 (it changed since it was read)"
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

    #[test]
    fn a_create_needs_a_free_workspace() {
        let e = crate::ServiceError::from(
            validate(
                &spec(),
                &create("", "pkg", "ws"),
                given(revision("ws", Lifecycle::Published, 1), 1),
            )
            .unwrap_err(),
        );
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                409,
                "package revision ns/repo.pkg.ws already exists (workspace \"ws\" of package \"pkg\" is taken)"
            )
        );
        assert_eq!(
            validate(&spec(), &create("a/b", "pkg", "ws"), ViewRows::default()),
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
        let rows = |packages: &[&str]| ViewRows {
            target: None,
            packages: packages.iter().map(|p| p.to_string()).collect(),
        };
        // Inside an existing package.
        let e = crate::ServiceError::from(
            validate(
                &spec(),
                &create("apps/web", "db", "ws"),
                rows(&["base", "apps/web"]),
            )
            .unwrap_err(),
        );
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                409,
                "package \"apps/web/db\" would nest with package \"apps/web\" (packages do not nest)"
            )
        );
        // Holding one.
        assert_eq!(
            validate(&spec(), &create("", "apps", "ws"), rows(&["apps/web"])),
            Err(LifecycleError::Nesting {
                new: "apps".into(),
                existing: "apps/web".into()
            })
        );
        // A sibling sharing a prefix is no nesting.
        assert!(validate(&spec(), &create("", "app", "ws"), rows(&["apps", "app-x"])).is_ok());
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

    fn kind(e: &Event) -> &'static str {
        match e.payload.as_ref().unwrap() {
            Payload::PackageRevisionAdded(_) => "Added",
            Payload::PackageRevisionModified(_) => "Modified",
            Payload::PackageRevisionDeleted(_) => "Deleted",
            Payload::DraftCreated(_) => "DraftCreated",
            Payload::DraftResourcesUpdated(_) => "DraftResourcesUpdated",
            Payload::PackageRevisionProposed(_) => "PackageRevisionProposed",
            Payload::ProposalRejected(_) => "ProposalRejected",
            Payload::PackageRevisionPublished(_) => "PackageRevisionPublished",
            Payload::DeletionProposed(_) => "DeletionProposed",
            Payload::DeletionProposalWithdrawn(_) => "DeletionProposalWithdrawn",
            _ => "other",
        }
    }

    #[test]
    fn the_targets_event_is_typed_after_its_command() {
        let target = revision("ws", Lifecycle::Draft, 0);
        let other = revision("main", Lifecycle::Published, -1);
        for (op, expected) in [
            (create("", "pkg", "ws"), "DraftCreated"),
            (every_op(DRAFT).remove(0), "DraftResourcesUpdated"),
            (
                LifecycleOp::Propose(DRAFT.into()),
                "PackageRevisionProposed",
            ),
            (LifecycleOp::Reject(DRAFT.into()), "ProposalRejected"),
            (
                LifecycleOp::Approve(DRAFT.into()),
                "PackageRevisionPublished",
            ),
            (LifecycleOp::ProposeDelete(DRAFT.into()), "DeletionProposed"),
            (
                LifecycleOp::WithdrawDelete(DRAFT.into()),
                "DeletionProposalWithdrawn",
            ),
        ] {
            let events = typed(
                vec![modified(other.clone()), added(target.clone())],
                DRAFT,
                &op,
                "",
            );
            let kinds: Vec<_> = events.iter().map(kind).collect();
            assert_eq!(kinds, ["Modified", expected], "{}", op.verb());
        }
        // A clone names its source.
        let events = typed(
            vec![added(target.clone())],
            DRAFT,
            &create("", "pkg", "ws"),
            "repo.up.v1",
        );
        let Some(Payload::DraftCreated(created)) = &events[0].payload else {
            panic!("{events:?}")
        };
        assert_eq!(created.clone_from, "repo.up.v1");
        assert_eq!(created.revision.as_ref(), Some(&target));
        // A deletion stays a deletion.
        let deleted = event(Payload::PackageRevisionDeleted(PackageRevisionDeleted {
            name: DRAFT.into(),
            last: None,
        }));
        let events = typed(
            vec![deleted.clone()],
            DRAFT,
            &LifecycleOp::Delete(DRAFT.into()),
            "",
        );
        assert_eq!(events, vec![deleted]);
    }

    #[test]
    fn register_and_update_spec_record_the_spec() {
        let Some(Payload::RepositoryRegistered(r)) = &registered(&spec())[0].payload else {
            panic!()
        };
        assert_eq!(r.spec.as_ref(), Some(&spec()));
        let Some(Payload::RepositorySpecChanged(c)) = &spec_changed(&spec())[0].payload else {
            panic!()
        };
        assert_eq!(c.spec.as_ref(), Some(&spec()));
    }
}
