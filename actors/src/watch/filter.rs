//! What a watch is interested in: event kinds and the `pkgrev.list` filter
//! ([`Filter`], the same selection as `pkgrev.list`), and which
//! envelopes the hub admits into a watcher's queue (see the module docs of
//! [`crate::watch`], "Filters and transitions").

use cairn_events::{
    revision::Change,
    v1::{event::Payload, Envelope, PackageRevision},
};

use super::error::WatchError;
use crate::revision_filter::{Filter, Rest};

/// The kinds of events a watch delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kinds {
    /// `PackageRevisionAdded/Modified/Deleted` (kind `packagerevision`).
    pub package_revisions: bool,
    /// Repository and sync events (kind `repository`).
    pub repositories: bool,
}

impl Default for Kinds {
    /// Package revisions only.
    fn default() -> Self {
        Self {
            package_revisions: true,
            repositories: false,
        }
    }
}

/// Names of the kinds, as requests spell them.
pub const KIND_NAMES: [&str; 2] = ["packagerevision", "repository"];

impl Kinds {
    /// Parses the `kinds` field (`None`: the default); `field` names it in
    /// errors.
    pub fn parse(field: &str, kinds: Option<&[String]>) -> Result<Self, WatchError> {
        let Some(kinds) = kinds else {
            return Ok(Self::default());
        };
        if kinds.is_empty() {
            return Err(WatchError::BadField {
                field: field.to_owned(),
                why: format!("must name at least one of: {}", KIND_NAMES.join(", ")),
            });
        }
        let mut out = Self {
            package_revisions: false,
            repositories: false,
        };
        for kind in kinds {
            match kind.as_str() {
                "packagerevision" => out.package_revisions = true,
                "repository" => out.repositories = true,
                other => {
                    return Err(WatchError::BadField {
                        field: field.to_owned(),
                        why: format!(
                            "unknown kind {other:?}, expected one of: {}",
                            KIND_NAMES.join(", ")
                        ),
                    })
                }
            }
        }
        Ok(out)
    }
}

/// A watch's kinds and filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// The `pkgrev.list` filter (namespace and repository also apply to
    /// repository events; the other fields only to package revisions).
    pub filter: Filter,
    /// The kinds delivered.
    pub kinds: Kinds,
}

/// A package revision event of a repository stream, as a watch sees it.
#[derive(Debug, Clone, Copy)]
pub enum RevisionEvent<'a> {
    /// `PackageRevisionAdded`.
    Added(&'a PackageRevision),
    /// `PackageRevisionModified`.
    Modified(&'a PackageRevision),
    /// `PackageRevisionDeleted`: the name, and the revision as it was when
    /// the event carries it.
    Deleted(&'a str, Option<&'a PackageRevision>),
}

/// An envelope of a repository stream, classified.
#[derive(Debug, Clone, Copy)]
pub enum Classified<'a> {
    /// A package revision event of `namespace/repository`.
    Revision {
        /// Namespace.
        namespace: &'a str,
        /// Repository.
        repository: &'a str,
        /// The change.
        event: RevisionEvent<'a>,
    },
    /// Any other event of the repository `namespace/name`.
    Repository {
        /// Namespace.
        namespace: &'a str,
        /// Repository name.
        name: &'a str,
        /// The payload.
        payload: &'a Payload,
    },
}

/// Whether `payload` is about a package revision (its kind's subject is
/// `packagerevision.…`), even when it lacks the revision it should carry.
fn is_revision_event(payload: &Payload) -> bool {
    cairn_events::EventKind::of(payload)
        .subject_suffix()
        .starts_with("packagerevision.")
}

/// Classifies `envelope`; `None` for events outside repository streams and
/// for envelopes without a payload (or a package revision event without
/// its revision).
pub fn classify(envelope: &Envelope) -> Option<Classified<'_>> {
    let payload = envelope.event.as_ref()?.payload.as_ref()?;
    let (namespace, repository) = repository_of(&envelope.stream)?;
    let event = match Change::of(payload) {
        Some(Change::Added(r)) => RevisionEvent::Added(r),
        Some(Change::Modified(r)) => RevisionEvent::Modified(r),
        Some(Change::Deleted { name, last }) => RevisionEvent::Deleted(name, last),
        None if is_revision_event(payload) => return None,
        None => {
            return Some(Classified::Repository {
                namespace,
                name: repository,
                payload,
            })
        }
    };
    Some(Classified::Revision {
        namespace,
        repository,
        event,
    })
}

/// `(namespace, name)` of a repository stream id (`repo/<ns>/<name>`), as
/// [`cairn_events::StreamId::as_repository`] reads it but without allocating a
/// `StreamId` per envelope and watcher.
fn repository_of(stream: &str) -> Option<(&str, &str)> {
    let rest = stream.strip_prefix("repo/")?;
    let (namespace, name) = rest.split_once('/')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/')).then_some((namespace, name))
}

impl WatchFilter {
    /// Whether revisions can enter or leave the filter by a `Modified`
    /// (it uses a field that can change under a name: revision,
    /// lifecycle, labels, annotations or latest), so the watcher must
    /// remember which names it reported.
    pub fn tracks_transitions(&self) -> bool {
        let f = &self.filter;
        f.revision.is_some()
            || f.lifecycle.is_some()
            || !f.labels.is_empty()
            || !f.annotations.is_empty()
            || f.latest.is_some()
    }

    /// Whether the filter's namespace and repository pass.
    pub fn matches_repository(&self, namespace: &str, repository: &str) -> bool {
        let f = &self.filter;
        f.namespace.as_deref().is_none_or(|n| n == namespace)
            && f.repository.as_deref().is_none_or(|r| r == repository)
    }

    /// Whether `revision` of `namespace/repository` is in the filter's
    /// immutable scope (namespace, repository, path, package, workspace).
    pub fn in_scope(&self, namespace: &str, repository: &str, revision: &PackageRevision) -> bool {
        let f = &self.filter;
        self.matches_repository(namespace, repository)
            && f.path.as_deref().is_none_or(|p| p == revision.path)
            && f.package.as_deref().is_none_or(|p| p == revision.package)
            && f.workspace
                .as_deref()
                .is_none_or(|w| w == revision.workspace)
    }

    /// Whether `revision` of `namespace/repository` passes the whole filter.
    pub fn matches(&self, namespace: &str, repository: &str, revision: &PackageRevision) -> bool {
        self.in_scope(namespace, repository, revision)
            && self.filter.matches_rest(&Rest::of(revision))
    }

    /// Whether the hub queues `envelope` for this watch: the dispatch-time
    /// filter (exact, except that `Modified` events in scope pass when the
    /// filter tracks transitions, since only the watcher knows whether it
    /// reported that name).
    pub fn admits(&self, envelope: &Envelope) -> bool {
        match classify(envelope) {
            None => false,
            Some(Classified::Repository {
                namespace, name, ..
            }) => self.kinds.repositories && self.matches_repository(namespace, name),
            Some(Classified::Revision {
                namespace,
                repository,
                event,
            }) => {
                self.kinds.package_revisions
                    && match event {
                        RevisionEvent::Added(r) => self.matches(namespace, repository, r),
                        RevisionEvent::Modified(r) => {
                            if self.tracks_transitions() {
                                self.in_scope(namespace, repository, r)
                            } else {
                                self.matches(namespace, repository, r)
                            }
                        }
                        RevisionEvent::Deleted(_, Some(last)) => {
                            self.matches(namespace, repository, last)
                        }
                        RevisionEvent::Deleted(_, None) => {
                            self.matches_repository(namespace, repository)
                        }
                    }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cairn_events::{
        envelope::event,
        v1::{PackageRevisionAdded, PackageRevisionDeleted, PackageRevisionModified, SyncStarted},
    };

    use super::*;

    fn filter(filter: Filter, kinds: Kinds) -> WatchFilter {
        WatchFilter { filter, kinds }
    }

    fn rev(package: &str, lifecycle: &str) -> PackageRevision {
        PackageRevision {
            name: format!("r.{package}.v1"),
            package: package.into(),
            workspace: "v1".into(),
            lifecycle: lifecycle.into(),
            ..Default::default()
        }
    }

    fn env(stream: &str, payload: Payload) -> Envelope {
        Envelope {
            stream: stream.into(),
            seq: 1,
            event: Some(event(payload)),
            ..Default::default()
        }
    }

    fn added(r: PackageRevision) -> Payload {
        Payload::PackageRevisionAdded(PackageRevisionAdded { revision: Some(r) })
    }

    fn modified(r: PackageRevision) -> Payload {
        Payload::PackageRevisionModified(PackageRevisionModified { revision: Some(r) })
    }

    fn deleted(name: &str, last: Option<PackageRevision>) -> Payload {
        Payload::PackageRevisionDeleted(PackageRevisionDeleted {
            name: name.into(),
            last,
        })
    }

    #[test]
    fn kinds_parse_and_name_the_field() {
        let parse = |k: &[&str]| {
            Kinds::parse(
                "kinds",
                Some(&k.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()),
            )
        };
        assert_eq!(Kinds::parse("kinds", None).unwrap(), Kinds::default());
        assert_eq!(
            parse(&["repository"]).unwrap(),
            Kinds {
                package_revisions: false,
                repositories: true
            }
        );
        assert_eq!(
            parse(&["pods"]).unwrap_err().to_string(),
            "kinds: unknown kind \"pods\", expected one of: packagerevision, repository"
        );
        assert_eq!(
            parse(&[]).unwrap_err().to_string(),
            "kinds: must name at least one of: packagerevision, repository"
        );
    }

    #[test]
    fn the_hub_admits_by_scope_kind_and_transition() {
        let s = "repo/ns/r";
        let f = filter(
            Filter {
                repository: Some("r".into()),
                package: Some("a".into()),
                ..Filter::default()
            },
            Kinds::default(),
        );
        assert!(!f.tracks_transitions());
        assert!(f.admits(&env(s, added(rev("a", "Draft")))));
        assert!(!f.admits(&env(s, added(rev("b", "Draft")))));
        assert!(!f.admits(&env("repo/ns/other", added(rev("a", "Draft")))));
        assert!(!f.admits(&env(
            s,
            Payload::SyncStarted(SyncStarted {
                trigger: "manual".into()
            })
        )));
        assert!(f.admits(&env(s, deleted("r.a.v1", Some(rev("a", "Draft"))))));
        assert!(!f.admits(&env(s, deleted("r.b.v1", Some(rev("b", "Draft"))))));
        // Old deletions without the revision: namespace and repository only.
        assert!(f.admits(&env(s, deleted("r.b.v1", None))));
        assert!(!f.admits(&env("repo/ns/other", deleted("r.b.v1", None))));

        let published = filter(
            Filter {
                lifecycle: Some(vec![cairn_events::revision::Lifecycle::Published]),
                ..Filter::default()
            },
            Kinds::default(),
        );
        assert!(published.tracks_transitions());
        assert!(!published.admits(&env(s, added(rev("a", "Draft")))));
        assert!(published.admits(&env(s, added(rev("a", "Published")))));
        // A Modified out of the filter may be a transition: admitted.
        assert!(published.admits(&env(s, modified(rev("a", "Draft")))));
        assert!(!published.admits(&env(s, deleted("r.a.v1", Some(rev("a", "Draft"))))));

        let repos = filter(
            Filter {
                namespace: Some("ns".into()),
                ..Filter::default()
            },
            Kinds {
                package_revisions: false,
                repositories: true,
            },
        );
        let sync = Payload::SyncStarted(SyncStarted {
            trigger: "manual".into(),
        });
        assert!(repos.admits(&env(s, sync.clone())));
        assert!(!repos.admits(&env("repo/other/r", sync.clone())));
        assert!(!repos.admits(&env("bench/w1", sync)));
        assert!(!repos.admits(&env(s, added(rev("a", "Draft")))));
    }
}
