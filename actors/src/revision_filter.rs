//! Selecting package revisions: the filter of `pkgrev.list` and of
//! watches, and how a revision, a view row or a listing head is matched
//! against it (labels and annotations: the revision carries every pair of
//! the filter's).
//!
//! Domain logic, shared by the NATS service (`pkgrev.list`, `watch.start`)
//! and the watch hub and Watchers; it imports neither. Turning a request
//! into a [`Filter`] (field names, validation, error replies) is the
//! service's: `Filter::parse` lives in `service/pkgrev.rs`.

use std::collections::BTreeMap;

use cairn_events::{
    revision::Lifecycle,
    v1::{PackageRevision, PackageRevisionListing, PackageRevisionRow},
};
use cairn_storage::views::package_revision_list::Scope;

/// Which package revisions a `pkgrev.list` or a watch selects: every field
/// that is set must match. Parsed and validated from a request by
/// `Filter::parse` in `service/pkgrev.rs` (the NATS edge).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this repository (needs no namespace).
    pub repository: Option<String>,
    /// Only this package path.
    pub path: Option<String>,
    /// Only this package.
    pub package: Option<String>,
    /// Only this workspace.
    pub workspace: Option<String>,
    /// Only this revision number.
    pub revision: Option<i64>,
    /// Only these lifecycles.
    pub lifecycle: Option<Vec<Lifecycle>>,
    /// Only revisions carrying all these labels.
    pub labels: BTreeMap<String, String>,
    /// Only revisions carrying all these Kptfile annotations (beyond
    /// Porch, whose field selectors cover labels only).
    pub annotations: BTreeMap<String, String>,
    /// Only latest (true) or only not latest (false).
    pub latest: Option<bool>,
}

impl Filter {
    /// Whether `row` passes.
    pub fn matches(&self, row: &PackageRevisionRow) -> bool {
        let Some(r) = row.revision.as_ref() else {
            return false;
        };
        let is = |want: &Option<String>, have: &str| want.as_ref().is_none_or(|w| w == have);
        is(&self.namespace, &row.namespace)
            && is(&self.repository, &row.repository)
            && is(&self.path, &r.path)
            && is(&self.package, &r.package)
            && self.matches_rest(&Rest::of(r))
    }

    /// The fields a listing narrows by key (see [`Scope`]).
    pub fn scope(&self) -> Scope<'_> {
        Scope {
            namespace: self.namespace.as_deref(),
            repository: self.repository.as_deref(),
            package: self.package.as_deref(),
            path: self.path.as_deref(),
        }
    }

    /// Whether any field outside the [`Filter::scope`] is set, so listing
    /// rows must be decoded to be checked.
    pub fn needs_head(&self) -> bool {
        self.workspace.is_some()
            || self.revision.is_some()
            || self.lifecycle.is_some()
            || !self.labels.is_empty()
            || !self.annotations.is_empty()
            || self.latest.is_some()
    }

    /// Whether a listing row's head passes the fields outside the scope.
    pub fn matches_head(&self, l: &PackageRevisionListing) -> bool {
        self.matches_rest(&Rest {
            workspace: &l.workspace,
            revision: l.revision,
            lifecycle: &l.lifecycle,
            labels: &l.labels,
            annotations: &l.annotations,
            latest: l.latest,
        })
    }

    /// Whether the fields outside the scope pass.
    pub fn matches_rest(&self, r: &Rest<'_>) -> bool {
        let carries = |want: &BTreeMap<String, String>, have: &BTreeMap<String, String>| {
            want.iter().all(|(k, v)| have.get(k) == Some(v))
        };
        self.workspace.as_ref().is_none_or(|v| v == r.workspace)
            && self.revision.is_none_or(|v| v == r.revision)
            && self.lifecycle.as_ref().is_none_or(|ls| {
                // The row's lifecycle as the enum (an unknown name passes no
                // lifecycle filter); parsed only when a filter asks.
                Lifecycle::parse(r.lifecycle).is_some_and(|p| ls.contains(&p))
            })
            && carries(&self.labels, r.labels)
            && carries(&self.annotations, r.annotations)
            && self.latest.is_none_or(|v| v == r.latest)
    }
}

/// The fields of a revision a [`Filter`] checks beyond its scope, borrowed
/// from a revision, a view row or a listing head.
#[derive(Debug, Clone, Copy)]
pub struct Rest<'a> {
    /// Workspace.
    pub workspace: &'a str,
    /// Revision number.
    pub revision: i64,
    /// Lifecycle, as the events spell it.
    pub lifecycle: &'a str,
    /// Kptfile labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Kptfile annotations.
    pub annotations: &'a BTreeMap<String, String>,
    /// Latest published revision of its package.
    pub latest: bool,
}

impl<'a> Rest<'a> {
    /// The fields of `revision`.
    pub fn of(revision: &'a PackageRevision) -> Self {
        Self {
            workspace: &revision.workspace,
            revision: revision.revision,
            lifecycle: &revision.lifecycle,
            labels: &revision.labels,
            annotations: &revision.annotations,
            latest: revision.latest,
        }
    }
}

#[cfg(test)]
mod tests {
    use cairn_events::v1::PackageRevision;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn row(revision_labels: &[(&str, &str)]) -> PackageRevisionRow {
        PackageRevisionRow {
            namespace: "ns".into(),
            repository: "r".into(),
            revision: Some(PackageRevision {
                name: "r.a.v1".into(),
                path: "catalog".into(),
                package: "a".into(),
                workspace: "v1".into(),
                revision: 1,
                lifecycle: "Published".into(),
                labels: labels(revision_labels),
                latest: true,
                ..Default::default()
            }),
            updated_seq: 3,
            lock: None,
        }
    }

    #[test]
    fn labels_select_revisions_carrying_every_pair() {
        let tier_base = row(&[("tier", "base"), ("team", "platform")]);
        let selector = |pairs: &[(&str, &str)]| Filter {
            labels: labels(pairs),
            ..Filter::default()
        };
        assert!(selector(&[]).matches(&tier_base));
        assert!(selector(&[("tier", "base")]).matches(&tier_base));
        assert!(selector(&[("tier", "base"), ("team", "platform")]).matches(&tier_base));
        assert!(!selector(&[("tier", "app")]).matches(&tier_base));
        assert!(!selector(&[("tier", "base"), ("env", "prod")]).matches(&tier_base));
        assert!(!selector(&[("tier", "base")]).matches(&row(&[])));
        assert!(selector(&[("tier", "base")]).needs_head());
        assert!(!selector(&[]).needs_head());
    }

    #[test]
    fn annotations_select_revisions_carrying_every_pair() {
        let mut annotated = row(&[("tier", "base")]);
        annotated.revision.as_mut().unwrap().annotations =
            labels(&[("test-annotation", "true"), ("owner", "team-a")]);
        let selector = |pairs: &[(&str, &str)]| Filter {
            annotations: labels(pairs),
            ..Filter::default()
        };
        assert!(selector(&[("test-annotation", "true")]).matches(&annotated));
        assert!(selector(&[("test-annotation", "true"), ("owner", "team-a")]).matches(&annotated));
        assert!(!selector(&[("test-annotation", "false")]).matches(&annotated));
        assert!(!selector(&[("test-annotation", "true"), ("env", "prod")]).matches(&annotated));
        // Labels are not annotations, nor the other way round.
        assert!(!selector(&[("tier", "base")]).matches(&annotated));
        let by_label = Filter {
            labels: labels(&[("test-annotation", "true")]),
            ..Filter::default()
        };
        assert!(!by_label.matches(&annotated));
        assert!(!selector(&[("test-annotation", "true")]).matches(&row(&[])));
        assert!(selector(&[("owner", "team-a")]).needs_head());
        // The listing head carries them too.
        let r = annotated.revision.as_ref().unwrap();
        let head = PackageRevisionListing {
            name: r.name.clone(),
            workspace: r.workspace.clone(),
            revision: r.revision,
            lifecycle: r.lifecycle.clone(),
            latest: r.latest,
            labels: r.labels.clone(),
            annotations: r.annotations.clone(),
        };
        assert!(selector(&[("owner", "team-a")]).matches_head(&head));
        assert!(!selector(&[("owner", "team-b")]).matches_head(&head));
    }

    #[test]
    fn a_lifecycle_filter_selects_by_the_parsed_lifecycle() {
        let with = |lifecycle: &str| {
            let mut r = row(&[]);
            r.revision.as_mut().unwrap().lifecycle = lifecycle.into();
            r
        };
        let proposed_or_published = Filter {
            lifecycle: Some(vec![Lifecycle::Proposed, Lifecycle::Published]),
            ..Filter::default()
        };
        assert!(proposed_or_published.matches(&with("Published")));
        assert!(proposed_or_published.matches(&with("Proposed")));
        assert!(!proposed_or_published.matches(&with("Draft")));
        assert!(!proposed_or_published.matches(&with("DeletionProposed")));
        // A name that is no lifecycle passes no lifecycle filter, and
        // every row passes without one.
        assert!(!proposed_or_published.matches(&with("published")));
        assert!(!proposed_or_published.matches(&with("")));
        assert!(Filter::default().matches(&with("published")));
    }

    #[test]
    fn every_set_field_must_match() {
        let r = row(&[]);
        assert!(Filter::default().matches(&r));
        let all = Filter {
            namespace: Some("ns".into()),
            repository: Some("r".into()),
            path: Some("catalog".into()),
            package: Some("a".into()),
            workspace: Some("v1".into()),
            revision: Some(1),
            lifecycle: Some(vec![Lifecycle::Draft, Lifecycle::Published]),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            latest: Some(true),
        };
        assert!(all.matches(&r));
        let off = [
            Filter {
                namespace: Some("other".into()),
                ..all.clone()
            },
            Filter {
                repository: Some("other".into()),
                ..all.clone()
            },
            Filter {
                path: Some("other".into()),
                ..all.clone()
            },
            Filter {
                package: Some("b".into()),
                ..all.clone()
            },
            Filter {
                workspace: Some("v2".into()),
                ..all.clone()
            },
            Filter {
                revision: Some(-1),
                ..all.clone()
            },
            Filter {
                lifecycle: Some(vec![Lifecycle::Draft]),
                ..all.clone()
            },
            Filter {
                latest: Some(false),
                ..all.clone()
            },
        ];
        for f in off {
            assert!(!f.matches(&r), "{f:?}");
        }
        // A row without its revision matches nothing.
        assert!(!Filter::default().matches(&PackageRevisionRow::default()));
    }
}
