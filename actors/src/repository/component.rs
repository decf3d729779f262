//! The repository component: what a RepositoryActor knows and decides,
//! as plain code that unit tests call directly.
//!
//! It holds the repository's spec and its stream version — not its package
//! revisions: those live in the `package_revisions` view and are read when
//! a sync or a close needs them (a sync one row per discovered revision,
//! see `super::reconcile`), so memory does not grow with the number of
//! revisions. It turns the current revisions and a discovery of the
//! upstream into events ([`RepositoryComponent::reconcile_one`] per name):
//! `PackageRevisionAdded` for a new name, `PackageRevisionModified` when
//! anything about an existing name changed (commit, content, lifecycle,
//! latest, publish info, tasks, labels, annotations — for a placeholder, a new head of
//! its branch alone is no change), `PackageRevisionDeleted` for a name
//! that is gone — in name order, so the same upstream always yields the same
//! events.

use std::{collections::BTreeMap, sync::Arc};

pub use super::naming::object_name;
use cairn_events::{
    envelope::event,
    v1::{
        event::Payload, Event, PackageRevision, PackageRevisionAdded, PackageRevisionDeleted,
        PackageRevisionModified, RepositoryClosed, RepositorySpec, RepositoryStatus, SyncSucceeded,
    },
    StreamId,
};
use cairn_storage::{
    views::{PackageRevisionsView, RepositoriesView},
    EventLog, StorageError, ViewRead,
};

/// Package revisions listed per page when loading from the view.
const LOAD_PAGE: usize = 1024;

/// Counts of one reconciliation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// New package revisions.
    pub added: u32,
    /// Changed package revisions.
    pub modified: u32,
    /// Removed package revisions.
    pub deleted: u32,
}

/// A repository's state and decisions.
#[derive(Debug, Clone)]
pub struct RepositoryComponent {
    /// `repo/<namespace>/<name>`.
    pub stream: StreamId,
    /// The registered spec.
    pub spec: RepositorySpec,
    /// Version of the repository's stream.
    pub version: u64,
    /// The refs (raw targets) the last successful sync of this actor read,
    /// with their digest: what the next sync diffs the upstream's refs
    /// against to read only the packages that changed. Memory only.
    pub last_refs: Option<(String, Arc<BTreeMap<String, git2::Oid>>)>,
}

/// `PackageRevisionDeleted` for `name`, carrying the revision as it was
/// (`last`), trimmed of its resources and tasks: enough for a watcher to
/// filter the deletion (labels, annotations, lifecycle, latest…) and show what went,
/// without the weight of the content listing.
fn deleted_event(name: String, last: Option<&PackageRevision>) -> Event {
    let last = last.map(|r| PackageRevision {
        name: r.name.clone(),
        path: r.path.clone(),
        package: r.package.clone(),
        workspace: r.workspace.clone(),
        revision: r.revision,
        lifecycle: r.lifecycle.clone(),
        commit: r.commit.clone(),
        resources: Default::default(),
        published_by: r.published_by.clone(),
        published_at: r.published_at,
        tasks: Vec::new(),
        labels: r.labels.clone(),
        latest: r.latest,
        annotations: r.annotations.clone(),
    });
    event(Payload::PackageRevisionDeleted(PackageRevisionDeleted {
        name,
        last,
    }))
}

impl RepositoryComponent {
    /// A component for a repository about to be registered.
    pub fn new(spec: RepositorySpec) -> Result<Self, StorageError> {
        let stream = StreamId::repository(&spec.namespace, &spec.name)
            .map_err(|e| StorageError::InvalidAppend(e.to_string()))?;
        Ok(Self {
            stream,
            spec,
            version: 0,
            last_refs: None,
        })
    }

    /// Loads a registered repository from the views (its spec) and the log
    /// (its stream version); `None` when it is not registered. Blocking.
    pub fn load(
        store: &(impl ViewRead + EventLog + ?Sized),
        namespace: &str,
        name: &str,
    ) -> Result<Option<Self>, StorageError> {
        let Some(row) = RepositoriesView::get(store, namespace, name)? else {
            return Ok(None);
        };
        let spec = row.spec.unwrap_or_default();
        let mut component = Self::new(spec)?;
        component.version = store.stream_version(&component.stream)?;
        Ok(Some(component))
    }

    /// The repository's current package revisions, from the view. Blocking.
    pub fn current(
        &self,
        store: &dyn ViewRead,
    ) -> Result<BTreeMap<String, PackageRevision>, StorageError> {
        let mut revisions = BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = PackageRevisionsView::list(
                store,
                Some(&self.spec.namespace),
                Some(&self.spec.name),
                after.as_deref(),
                LOAD_PAGE,
            )?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (_, row) in page {
                if let Some(revision) = row.revision {
                    revisions.insert(revision.name.clone(), revision);
                }
            }
        }
        Ok(revisions)
    }

    /// Events that bring the views from the current revisions to
    /// `discovered` (Added, Modified, Deleted, in name order). Consumes
    /// `discovered`: each revision moves into its event, so a large sync
    /// holds one copy.
    pub fn reconcile(
        current: &BTreeMap<String, PackageRevision>,
        discovered: BTreeMap<String, PackageRevision>,
    ) -> (Vec<Event>, Changes) {
        let mut events = Vec::new();
        let mut changes = Changes::default();
        let deleted: Vec<String> = current
            .keys()
            .filter(|n| !discovered.contains_key(*n))
            .cloned()
            .collect();
        for (name, revision) in discovered {
            events.extend(Self::reconcile_one(
                current.get(&name),
                revision,
                &mut changes,
            ));
        }
        for name in deleted {
            changes.deleted += 1;
            let last = current.get(&name);
            events.push(deleted_event(name, last));
        }
        (events, changes)
    }

    /// The event that brings one name from `current` (its row in the
    /// view, if any) to the discovered `revision`: `Added`, `Modified`, or
    /// none when nothing about it changed; counted in `changes`.
    pub fn reconcile_one(
        current: Option<&PackageRevision>,
        mut revision: PackageRevision,
        changes: &mut Changes,
    ) -> Option<Event> {
        if let Some(current) = current {
            // A placeholder's commit is its branch's head; a commit that
            // did not change the package is no change to it (it keeps
            // the commit it was last seen changed at), so one commit on
            // the branch modifies only the packages it touched.
            if revision.revision == -1 && revision.commit != current.commit {
                let head = std::mem::replace(&mut revision.commit, current.commit.clone());
                if *current != revision {
                    revision.commit = head;
                }
            }
        }
        match current {
            None => {
                changes.added += 1;
                Some(event(Payload::PackageRevisionAdded(PackageRevisionAdded {
                    revision: Some(revision),
                })))
            }
            Some(current) if *current != revision => {
                changes.modified += 1;
                Some(event(Payload::PackageRevisionModified(
                    PackageRevisionModified {
                        revision: Some(revision),
                    },
                )))
            }
            Some(_) => None,
        }
    }

    /// `PackageRevisionDeleted` for `name`, whose row in the view was
    /// `last` (trimmed of its resources and tasks).
    pub fn deleted(name: String, last: &PackageRevision) -> Event {
        deleted_event(name, Some(last))
    }

    /// The events of a successful sync: the reconciliation, then
    /// `SyncSucceeded` with its counts.
    pub fn sync_events(
        current: &BTreeMap<String, PackageRevision>,
        discovered: BTreeMap<String, PackageRevision>,
        commit: &str,
        refs_digest: &str,
        duration_ms: u64,
    ) -> (Vec<Event>, Changes) {
        let package_count = discovered.len() as u32;
        let (mut events, changes) = Self::reconcile(current, discovered);
        events.push(Self::succeeded(
            changes,
            package_count,
            commit,
            refs_digest,
            duration_ms,
        ));
        (events, changes)
    }

    /// `SyncSucceeded` with a sync's counts, the package revisions after
    /// it, the branch's commit and the refs' digest.
    pub fn succeeded(
        changes: Changes,
        package_count: u32,
        commit: &str,
        refs_digest: &str,
        duration_ms: u64,
    ) -> Event {
        event(Payload::SyncSucceeded(SyncSucceeded {
            commit: commit.to_owned(),
            added: changes.added,
            modified: changes.modified,
            deleted: changes.deleted,
            package_count,
            duration_ms,
            next_sync_at: None,
            refs_digest: refs_digest.to_owned(),
        }))
    }

    /// The events of a sync whose upstream is exactly as the last
    /// successful sync (`last`) left them: only `SyncSucceeded`, repeating
    /// its commit, package count and digest.
    pub fn unchanged_events(last: &RepositoryStatus, duration_ms: u64) -> Vec<Event> {
        vec![event(Payload::SyncSucceeded(SyncSucceeded {
            commit: last.commit.clone(),
            package_count: last.package_count,
            duration_ms,
            refs_digest: last.refs_digest.clone(),
            ..SyncSucceeded::default()
        }))]
    }

    /// The events of unregistering: `PackageRevisionDeleted` for each
    /// revision, then `RepositoryClosed`.
    pub fn close_events(current: &BTreeMap<String, PackageRevision>, reason: &str) -> Vec<Event> {
        let mut events: Vec<Event> = current
            .iter()
            .map(|(name, revision)| deleted_event(name.clone(), Some(revision)))
            .collect();
        events.push(event(Payload::RepositoryClosed(RepositoryClosed {
            reason: reason.to_owned(),
        })));
        events
    }

    /// Folds one committed event of its stream, which left the stream at
    /// `stream_version`: a new spec replaces the spec (and forgets the
    /// refs read under the old one); every event moves the version.
    pub fn fold(&mut self, event: &Event, stream_version: u64) {
        self.version = stream_version;
        if let Some(Payload::RepositorySpecChanged(changed)) = &event.payload {
            if let Some(spec) = &changed.spec {
                self.spec = spec.clone();
                self.last_refs = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(name: &str, commit: &str) -> PackageRevision {
        PackageRevision {
            name: name.into(),
            commit: commit.into(),
            ..Default::default()
        }
    }

    fn current(revisions: &[PackageRevision]) -> BTreeMap<String, PackageRevision> {
        revisions
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect()
    }

    fn kinds(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e.payload.as_ref().unwrap() {
                Payload::PackageRevisionAdded(a) => {
                    format!("Added {}", a.revision.as_ref().unwrap().name)
                }
                Payload::PackageRevisionModified(m) => {
                    format!("Modified {}", m.revision.as_ref().unwrap().name)
                }
                Payload::PackageRevisionDeleted(d) => format!("Deleted {}", d.name),
                Payload::SyncSucceeded(s) => format!(
                    "SyncSucceeded {}/{}/{}/{}",
                    s.added, s.modified, s.deleted, s.package_count
                ),
                Payload::RepositoryClosed(_) => "Closed".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn given_revisions_when_upstream_changes_then_added_modified_deleted() {
        let given = current(&[
            rev("r.a.v1", "c1"),
            rev("r.b.v1", "c1"),
            rev("r.c.v1", "c1"),
        ]);
        let discovered = current(&[
            rev("r.a.v1", "c1"),
            rev("r.b.v1", "c2"),
            rev("r.d.v1", "c2"),
        ]);
        let (events, changes) = RepositoryComponent::sync_events(&given, discovered, "c2", "d2", 5);
        assert_eq!(
            kinds(&events),
            [
                "Modified r.b.v1",
                "Added r.d.v1",
                "Deleted r.c.v1",
                "SyncSucceeded 1/1/1/3"
            ]
        );
        assert_eq!(
            changes,
            Changes {
                added: 1,
                modified: 1,
                deleted: 1
            }
        );
    }

    #[test]
    fn given_unchanged_upstream_then_only_sync_succeeded() {
        let given = current(&[rev("r.a.v1", "c1")]);
        let (events, _) = RepositoryComponent::sync_events(&given, given.clone(), "c1", "d1", 1);
        assert_eq!(kinds(&events), ["SyncSucceeded 0/0/0/1"]);
    }

    #[test]
    fn a_placeholder_changes_with_its_package_not_with_its_branch_head() {
        let placeholder = |commit: &str, file: &str| PackageRevision {
            revision: -1,
            resources: [("Kptfile".to_owned(), file.to_owned())].into(),
            ..rev("r.a.main", commit)
        };
        let published = |commit: &str| PackageRevision {
            revision: 1,
            ..rev("r.a.v1", commit)
        };
        let given = current(&[placeholder("c1", "k1"), published("c1")]);
        // A new head that did not touch the package: nothing.
        let (events, _) = RepositoryComponent::reconcile(
            &given,
            current(&[placeholder("c2", "k1"), published("c1")]),
        );
        assert_eq!(kinds(&events), Vec::<String>::new());
        // One that did: Modified, with the new commit.
        let (events, _) = RepositoryComponent::reconcile(
            &given,
            current(&[placeholder("c3", "k2"), published("c1")]),
        );
        assert_eq!(kinds(&events), ["Modified r.a.main"]);
        let Payload::PackageRevisionModified(m) = events[0].payload.as_ref().unwrap() else {
            unreachable!()
        };
        assert_eq!(m.revision.as_ref().unwrap().commit, "c3");
        // A published revision whose commit moved (a re-pointed tag) is modified.
        let (events, _) = RepositoryComponent::reconcile(
            &given,
            current(&[placeholder("c1", "k1"), published("c9")]),
        );
        assert_eq!(kinds(&events), ["Modified r.a.v1"]);
    }

    #[test]
    fn deletions_carry_the_revision_trimmed_of_resources_and_tasks() {
        let mut gone = rev("r.c.v1", "c1");
        gone.lifecycle = cairn_events::revision::Lifecycle::Published.as_str().into();
        gone.labels = [("tier".to_owned(), "base".to_owned())].into();
        gone.annotations = [("owner".to_owned(), "team-a".to_owned())].into();
        gone.resources = [("Kptfile".to_owned(), "ab".repeat(32))].into();
        gone.tasks = vec![cairn_events::v1::Task {
            r#type: "init".into(),
            raw: "{}".into(),
        }];
        let mut trimmed = gone.clone();
        trimmed.resources.clear();
        trimmed.tasks.clear();
        let given = current(&[gone]);
        let deleted = |events: &[Event]| match events[0].payload.as_ref().unwrap() {
            Payload::PackageRevisionDeleted(d) => d.clone(),
            other => panic!("{other:?}"),
        };
        let (events, _) = RepositoryComponent::sync_events(&given, BTreeMap::new(), "c2", "d", 1);
        assert_eq!(
            deleted(&events),
            PackageRevisionDeleted {
                name: "r.c.v1".into(),
                last: Some(trimmed.clone()),
            }
        );
        let events = RepositoryComponent::close_events(&given, "unregistered");
        assert_eq!(deleted(&events).last, Some(trimmed));
    }

    #[test]
    fn close_deletes_every_revision_then_closes() {
        let given = current(&[rev("r.b.v1", "c"), rev("r.a.v1", "c")]);
        let events = RepositoryComponent::close_events(&given, "unregistered");
        assert_eq!(
            kinds(&events),
            ["Deleted r.a.v1", "Deleted r.b.v1", "Closed"]
        );
    }

    #[test]
    fn fold_moves_the_version_and_takes_a_new_spec() {
        let spec = RepositorySpec {
            namespace: "ns".into(),
            name: "r".into(),
            ..Default::default()
        };
        let mut state = RepositoryComponent::new(spec.clone()).unwrap();
        state.last_refs = Some(("d".into(), Default::default()));
        state.fold(&crate::repository::decide::registered(&spec)[0], 1);
        assert_eq!((state.version, state.spec.clone()), (1, spec.clone()));
        assert!(
            state.last_refs.is_some(),
            "a registration keeps what it read"
        );
        let mut changed = spec.clone();
        changed.deployment = true;
        state.fold(
            &crate::repository::decide::spec_changed(&changed, None)[0],
            2,
        );
        assert_eq!((state.version, state.spec.clone()), (2, changed));
        assert!(
            state.last_refs.is_none(),
            "refs read under the old spec are forgotten"
        );
    }
}
