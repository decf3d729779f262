//! The JSON form of a package revision, as every reply and the list view
//! render it:
//!
//! `{"name","namespace","repository","path","package","workspace",
//! "revision","lifecycle","latest","commit","resource_version",
//! "published_by","published_at","tasks":[…],"labels":{…},
//! "annotations":{…}}`
//!
//! `annotations` (the Kptfile's `metadata.annotations`) is left out when
//! there are none, as Porch's `PackageMetadata` does (`omitempty`): so
//! rows the list view rendered before the field existed — all without
//! annotations, since a revision that has some is `Modified` by the first
//! sync after the upgrade (see `origin::RULES_VERSION` in cairn-actors) —
//! read the same as rows rendered now, without a view rebuild.
//!
//! `resource_version` is the global sequence of the last event applied to
//! the row; timestamps are RFC 3339 in UTC with a `Z` (as Kubernetes and
//! Porch write them). It is serialised straight from the row, without an
//! intermediate `serde_json::Value`: list pages render thousands of these.
//!
//! [`Lifecycle`] is the lifecycle as an enum, for code that decides on it.

use std::collections::BTreeMap;

use serde_json::{value::RawValue, Value};

use crate::v1::{event::Payload, PackageRevision, PackageRevisionRow};

/// A package revision's lifecycle. The events and views carry it as a
/// string (`PackageRevision.lifecycle`, kept as Porch spells it); code that
/// compares lifecycles parses it with [`Lifecycle::parse`] instead of
/// comparing string literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lifecycle {
    /// Being edited (revision 0).
    Draft,
    /// Waiting for approval (revision 0).
    Proposed,
    /// Approved and tagged (revision N > 0), or the placeholder (-1).
    Published,
    /// Published, and its deletion was proposed.
    DeletionProposed,
}

impl Lifecycle {
    /// Every lifecycle, in the order of the lifecycle.
    pub const ALL: [Lifecycle; 4] = [
        Lifecycle::Draft,
        Lifecycle::Proposed,
        Lifecycle::Published,
        Lifecycle::DeletionProposed,
    ];

    /// The lifecycle named `name` (exactly as [`Lifecycle::as_str`] spells
    /// it); `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == name)
    }

    /// `Draft`, `Proposed`, `Published` or `DeletionProposed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Draft => "Draft",
            Lifecycle::Proposed => "Proposed",
            Lifecycle::Published => "Published",
            Lifecycle::DeletionProposed => "DeletionProposed",
        }
    }

    /// Published or DeletionProposed: it has a revision number and can be
    /// the latest.
    pub fn is_published(self) -> bool {
        matches!(self, Lifecycle::Published | Lifecycle::DeletionProposed)
    }
}

impl std::fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Lifecycle {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| {
            format!("{s:?} is not a lifecycle (Draft, Proposed, Published, DeletionProposed)")
        })
    }
}

impl PackageRevision {
    /// Its lifecycle, parsed (`None` when the string names none).
    pub fn parsed_lifecycle(&self) -> Option<Lifecycle> {
        Lifecycle::parse(&self.lifecycle)
    }
}

/// A timestamp as RFC 3339 in UTC with a `Z` (e.g. `2022-08-26T22:47:35Z`),
/// or null.
pub fn timestamp_json(ts: Option<&pbjson_types::Timestamp>) -> Value {
    let text = ts.and_then(|t| {
        let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()?
            .format(&time::format_description::well_known::Rfc3339)
            .ok()
    });
    text.map_or(Value::Null, Value::String)
}

#[derive(serde::Serialize)]
struct RevisionJson<'a> {
    name: &'a str,
    namespace: &'a str,
    repository: &'a str,
    path: &'a str,
    package: &'a str,
    workspace: &'a str,
    revision: i64,
    lifecycle: &'a str,
    latest: bool,
    commit: &'a str,
    resource_version: String,
    published_by: Option<&'a str>,
    published_at: Value,
    tasks: Vec<TaskJson<'a>>,
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

/// A task: its annotation JSON as recorded, or `{"type": …}` when that is
/// not valid JSON.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum TaskJson<'a> {
    Raw(&'a RawValue),
    Type { r#type: &'a str },
}

fn revision_view<'a>(
    namespace: &'a str,
    repository: &'a str,
    r: &'a PackageRevision,
    updated_seq: u64,
) -> RevisionJson<'a> {
    RevisionJson {
        name: &r.name,
        namespace,
        repository,
        path: &r.path,
        package: &r.package,
        workspace: &r.workspace,
        revision: r.revision,
        lifecycle: &r.lifecycle,
        latest: r.latest,
        commit: &r.commit,
        resource_version: updated_seq.to_string(),
        published_by: (!r.published_by.is_empty()).then_some(r.published_by.as_str()),
        published_at: timestamp_json(r.published_at.as_ref()),
        tasks: r
            .tasks
            .iter()
            .map(|t| match serde_json::from_str::<&RawValue>(&t.raw) {
                Ok(raw) => TaskJson::Raw(raw),
                Err(_) => TaskJson::Type { r#type: &t.r#type },
            })
            .collect(),
        labels: &r.labels,
        annotations: &r.annotations,
    }
}

/// The JSON form of `revision` of `repository` in `namespace`, last changed
/// by the event at `updated_seq`, serialised.
pub fn render(
    namespace: &str,
    repository: &str,
    revision: &PackageRevision,
    updated_seq: u64,
) -> Vec<u8> {
    // Serialising borrowed strings, numbers and maps of strings cannot fail.
    serde_json::to_vec(&revision_view(namespace, repository, revision, updated_seq))
        .unwrap_or_default()
}

/// The JSON form of `row`, serialised.
pub fn revision_json_bytes(row: &PackageRevisionRow) -> Vec<u8> {
    let empty = PackageRevision::default();
    let revision = row.revision.as_ref().unwrap_or(&empty);
    render(&row.namespace, &row.repository, revision, row.updated_seq)
}

/// The JSON form of `row`.
pub fn revision_json(row: &PackageRevisionRow) -> Value {
    let empty = PackageRevision::default();
    let revision = row.revision.as_ref().unwrap_or(&empty);
    serde_json::to_value(revision_view(
        &row.namespace,
        &row.repository,
        revision,
        row.updated_seq,
    ))
    .unwrap_or(Value::Null)
}

/// How an event changes a package revision, whatever its type: sync
/// events (`PackageRevisionAdded/Modified/Deleted`) and lifecycle events
/// (`DraftCreated` adds; the others modify) read the same way for views,
/// watches and progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change<'a> {
    /// A new revision.
    Added(&'a PackageRevision),
    /// A changed revision (its state after the event).
    Modified(&'a PackageRevision),
    /// A removed revision: its name, and its last state when the event
    /// carries it.
    Deleted {
        /// The object name.
        name: &'a str,
        /// The revision as it was (trimmed), if recorded.
        last: Option<&'a PackageRevision>,
    },
}

impl<'a> Change<'a> {
    /// The change `payload` makes; `None` for events that change no
    /// package revision (or lack the revision they should carry).
    pub fn of(payload: &'a Payload) -> Option<Self> {
        Some(match payload {
            Payload::PackageRevisionAdded(e) => Change::Added(e.revision.as_ref()?),
            Payload::DraftCreated(e) => Change::Added(e.revision.as_ref()?),
            Payload::PackageRevisionModified(e) => Change::Modified(e.revision.as_ref()?),
            Payload::DraftResourcesUpdated(e) => Change::Modified(e.revision.as_ref()?),
            Payload::PackageRevisionProposed(e) => Change::Modified(e.revision.as_ref()?),
            Payload::ProposalRejected(e) => Change::Modified(e.revision.as_ref()?),
            Payload::PackageRevisionPublished(e) => Change::Modified(e.revision.as_ref()?),
            Payload::DeletionProposed(e) => Change::Modified(e.revision.as_ref()?),
            Payload::DeletionProposalWithdrawn(e) => Change::Modified(e.revision.as_ref()?),
            Payload::PackageRevisionDeleted(e) => Change::Deleted {
                name: &e.name,
                last: e.last.as_ref(),
            },
            Payload::RepositoryRegistered(_)
            | Payload::RepositorySpecChanged(_)
            | Payload::RepositoryClosed(_)
            | Payload::SyncStarted(_)
            | Payload::SyncSucceeded(_)
            | Payload::SyncFailed(_)
            | Payload::KvEntrySet(_)
            | Payload::KvEntryDeleted(_)
            | Payload::KvEntriesDeleted(_)
            | Payload::KvEntriesExpired(_)
            | Payload::KvEntriesEvicted(_)
            | Payload::KvNamespaceConfigured(_) => return None,
            Payload::ArtifactStored(_)
            | Payload::ArtifactRevalidated(_)
            | Payload::ArtifactInvalidated(_)
            | Payload::ArtifactEvicted(_) => return None,
        })
    }

    /// The object name of the revision.
    pub fn name(&self) -> &'a str {
        match self {
            Change::Added(r) | Change::Modified(r) => &r.name,
            Change::Deleted { name, .. } => name,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lifecycles_parse_what_they_print() {
        for l in super::Lifecycle::ALL {
            assert_eq!(super::Lifecycle::parse(l.as_str()), Some(l));
            assert_eq!(l.to_string(), l.as_str());
        }
        assert_eq!(super::Lifecycle::parse("draft"), None);
        assert_eq!(
            "x".parse::<super::Lifecycle>().unwrap_err(),
            "\"x\" is not a lifecycle (Draft, Proposed, Published, DeletionProposed)"
        );
        assert!(super::Lifecycle::DeletionProposed.is_published());
        assert!(!super::Lifecycle::Proposed.is_published());
    }

    use serde_json::json;

    use super::*;

    #[test]
    fn lifecycle_events_read_as_added_modified_or_deleted() {
        use crate::v1::{
            DeletionProposed, DraftCreated, PackageRevisionDeleted, PackageRevisionPublished,
            SyncStarted,
        };
        let r = PackageRevision {
            name: "r.p.ws".into(),
            ..Default::default()
        };
        let created = Payload::DraftCreated(DraftCreated {
            revision: Some(r.clone()),
            clone_from: String::new(),
            copied_from: String::new(),
        });
        assert_eq!(Change::of(&created), Some(Change::Added(&r)));
        let published = Payload::PackageRevisionPublished(PackageRevisionPublished {
            revision: Some(r.clone()),
        });
        assert_eq!(Change::of(&published), Some(Change::Modified(&r)));
        let marked = Payload::DeletionProposed(DeletionProposed {
            revision: Some(r.clone()),
        });
        assert_eq!(Change::of(&marked).map(|c| c.name()), Some("r.p.ws"));
        let deleted = Payload::PackageRevisionDeleted(PackageRevisionDeleted {
            name: "r.p.ws".into(),
            last: None,
        });
        assert_eq!(
            Change::of(&deleted),
            Some(Change::Deleted {
                name: "r.p.ws",
                last: None
            })
        );
        // Without the revision it must carry, or not about revisions: none.
        let empty = Payload::DraftCreated(DraftCreated::default());
        assert_eq!(Change::of(&empty), None);
        let sync = Payload::SyncStarted(SyncStarted::default());
        assert_eq!(Change::of(&sync), None);
    }
    use crate::v1::Task;

    #[test]
    fn timestamps_render_like_kubernetes() {
        let ts = |seconds, nanos| timestamp_json(Some(&pbjson_types::Timestamp { seconds, nanos }));
        assert_eq!(ts(1_661_554_055, 0), json!("2022-08-26T22:47:35Z"));
        assert_eq!(
            ts(1_661_554_055, 250_000_000),
            json!("2022-08-26T22:47:35.25Z")
        );
        assert_eq!(timestamp_json(None), Value::Null);
    }

    #[test]
    fn a_row_renders_every_field_and_keeps_task_json() {
        let row = PackageRevisionRow {
            namespace: "ns".into(),
            repository: "repo".into(),
            revision: Some(PackageRevision {
                name: "repo.basens.v1".into(),
                package: "basens".into(),
                workspace: "v1".into(),
                revision: 1,
                lifecycle: "Published".into(),
                commit: "abc".into(),
                published_by: "someone@example.com".into(),
                published_at: Some(pbjson_types::Timestamp {
                    seconds: 1_661_554_055,
                    nanos: 0,
                }),
                tasks: vec![
                    Task {
                        r#type: "init".into(),
                        raw: r#"{"type":"init","init":{"description":"d"}}"#.into(),
                    },
                    Task {
                        r#type: "eval".into(),
                        raw: "not json".into(),
                    },
                ],
                labels: [("tier".to_owned(), "base".to_owned())].into(),
                latest: true,
                ..Default::default()
            }),
            updated_seq: 42,
            lock: None,
        };
        let expected = json!({
            "name": "repo.basens.v1", "namespace": "ns", "repository": "repo",
            "path": "", "package": "basens", "workspace": "v1", "revision": 1,
            "lifecycle": "Published", "latest": true, "commit": "abc",
            "resource_version": "42", "published_by": "someone@example.com",
            "published_at": "2022-08-26T22:47:35Z",
            "tasks": [{"type": "init", "init": {"description": "d"}}, {"type": "eval"}],
            "labels": {"tier": "base"},
        });
        assert_eq!(revision_json(&row), expected);
        assert_eq!(
            serde_json::from_slice::<Value>(&revision_json_bytes(&row)).unwrap(),
            expected
        );

        // Annotations, when there are some.
        let mut annotated = row.clone();
        annotated.revision.as_mut().unwrap().annotations =
            [("test-annotation".to_owned(), "true".to_owned())].into();
        let mut expected = expected;
        expected["annotations"] = json!({"test-annotation": "true"});
        assert_eq!(revision_json(&annotated), expected);
        assert_eq!(
            serde_json::from_slice::<Value>(&revision_json_bytes(&annotated)).unwrap(),
            expected
        );
    }
}
