//! The lifecycle of a package revision as Git changes, the way Porch lays
//! them out (`../shared/porch-testdata/EXPECTED.md`):
//!
//! | revision | ref |
//! |---|---|
//! | Draft | branch `drafts/<package path>/<workspace>` |
//! | Proposed | branch `proposed/<package path>/<workspace>` |
//! | Published N | tag `<package path>/vN`, on a commit of the registered branch |
//! | DeletionProposed | branch `deletionProposed/<package path>/vN` (or `/<branch>` for a placeholder) |
//!
//! Each function here turns one command on one revision into the commit it
//! needs (built in the local mirror) and the ref changes to push together
//! ([`write::push_changes`]). Validation against the views
//! (does the revision exist, is its lifecycle right) is the caller's; these
//! functions only refuse what Git itself cannot express.
//!
//! Commit messages are current Porch's, byte for byte, plus one trailer:
//! - a draft's commit: [`commit_message`] of its task (`Creating new empty
//!   revision`, `Creating new revision by cloning`, `… by copying previous
//!   revision`, `Intermediate commit: <type>`; Porch's
//!   `formatCommitMessage`), a newline, then `\n\nkpt:{"package",
//!   "workspaceName","revision":"0","task"}\n` (`annotateCommitMessage`;
//!   `revision` is `Revision2Str` of a draft's 0). An update of a draft's
//!   resources has no task: `Intermediate commit` and the annotation
//!   without `task`;
//! - an approval: `Approving package revision <package>/<N>`, then
//!   `\n\nkpt:{"package","workspaceName","revision":"<N>"}\n`. Older Porch,
//!   and the fixtures, wrote `"vN"`; discovery reads both (it matches on
//!   `workspaceName`, and on `revision` only without one);
//! - deleting the placeholder: `Delete <package>`, no annotation, and no
//!   commit at all when the package is not on the branch (any more);
//! - then `Cairn-Principal: <principal>` as the message's last line, in the
//!   `kpt:` line's paragraph so `git interpret-trailers` parses both
//!   ([`Identity::trailer`]); Porch reads only `kpt:` lines.

use git2::{Oid, Repository};

use super::{
    discovery::package_path,
    error::OriginError,
    write::{self, Files, Identity, RefChange},
};

/// Where a package lives: its full path in the repository and the
/// registered branch.
#[derive(Debug, Clone)]
pub struct PackageRefs {
    /// Full package path in the repository (registered directory, path,
    /// package), as refs and annotations name it.
    pub full: String,
    /// The registered branch, without `refs/heads/`.
    pub branch: String,
}

impl PackageRefs {
    /// Package `package` at `path` below `directory` on `branch`.
    pub fn new(directory: &str, path: &str, package: &str, branch: &str) -> Self {
        Self {
            full: package_path(directory, path, package),
            branch: branch.to_owned(),
        }
    }

    /// `refs/heads/drafts/<package>/<workspace>`.
    pub fn draft(&self, workspace: &str) -> String {
        format!("refs/heads/drafts/{}/{workspace}", self.full)
    }

    /// `refs/heads/proposed/<package>/<workspace>`.
    pub fn proposed(&self, workspace: &str) -> String {
        format!("refs/heads/proposed/{}/{workspace}", self.full)
    }

    /// `refs/tags/<package>/v<revision>`.
    pub fn tag(&self, revision: i64) -> String {
        format!("refs/tags/{}/v{revision}", self.full)
    }

    /// The deletion-proposal marker of published `revision` (`-1`: the
    /// placeholder on the registered branch).
    pub fn deletion_proposed(&self, revision: i64) -> String {
        if revision == -1 {
            format!("refs/heads/deletionProposed/{}/{}", self.full, self.branch)
        } else {
            format!("refs/heads/deletionProposed/{}/v{revision}", self.full)
        }
    }

    /// `refs/heads/<branch>`.
    pub fn main(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    /// A `kpt:` annotation line for this package, keys in Porch's order.
    fn annotation(&self, workspace: &str, revision: &str, task: Option<&str>) -> String {
        let mut line = format!(
            "kpt:{{\"package\":{},\"workspaceName\":{},\"revision\":{}",
            serde_json::Value::from(self.full.as_str()),
            serde_json::Value::from(workspace),
            serde_json::Value::from(revision),
        );
        if let Some(task) = task {
            line.push_str(&format!(",\"task\":{task}"));
        }
        line.push('}');
        line
    }
}

/// Porch's `formatCommitMessage`: the first line of the commit a task of
/// type `kind` makes (`None`: a commit without a task).
pub fn commit_message(kind: Option<&str>) -> String {
    match kind {
        None | Some("") => "Intermediate commit".to_owned(),
        Some("init") => "Creating new empty revision".to_owned(),
        Some("clone") => "Creating new revision by cloning".to_owned(),
        Some("edit") => "Creating new revision by copying previous revision".to_owned(),
        Some("upgrade") => "Upgrading revision".to_owned(),
        Some("render") => "Rendering package".to_owned(),
        Some(other) => format!("Intermediate commit: {other}"),
    }
}

/// `message` with `identity`'s principal trailer as its last line: in the
/// last paragraph when `message` ends with a newline (a `kpt:` line),
/// else in a paragraph of its own.
fn with_trailer(mut message: String, identity: &Identity) -> String {
    if let Some(trailer) = identity.trailer() {
        if !message.ends_with('\n') {
            message.push_str("\n\n");
        }
        message.push_str(&trailer);
        message.push('\n');
    }
    message
}

/// The message of a draft's commit made by `task` (JSON, whose `type`
/// picks the first line; `None`: no task), as Porch's
/// `UpdateDraftResources` writes it.
fn draft_message(
    refs: &PackageRefs,
    workspace: &str,
    task: Option<&str>,
    identity: &Identity,
) -> String {
    let kind = task.and_then(|task| {
        serde_json::from_str::<serde_json::Value>(task)
            .ok()
            .and_then(|t| t["type"].as_str().map(str::to_owned))
    });
    let message = format!(
        "{}\n\n\n{}\n",
        commit_message(kind.as_deref()),
        refs.annotation(workspace, "0", task)
    );
    with_trailer(message, identity)
}

/// A draft: one commit on top of the registered branch's `head` with the
/// package's subtree replaced by `files`, annotated with the `task` (JSON)
/// that made it; pushed as a new `drafts/…` branch.
pub fn create_draft(
    repo: &Repository,
    refs: &PackageRefs,
    head: Oid,
    workspace: &str,
    files: &Files,
    task: &str,
    identity: &Identity,
) -> Result<(Oid, Vec<RefChange>), OriginError> {
    let message = draft_message(refs, workspace, Some(task), identity);
    let commit = package_commit(repo, refs, head, Some(files), &message, identity)?;
    Ok((
        commit,
        vec![RefChange::Set {
            name: refs.draft(workspace),
            to: commit,
        }],
    ))
}

/// New resources for a draft at commit `draft`: a commit on top of it,
/// annotated without a task (`Intermediate commit`), exactly what Porch's
/// `UpdateDraftResources` writes for an update without a task. Not `patch`
/// (current Porch records none) nor `render` (cairn does not render): a
/// revision's task history stays the task that created it.
pub fn update_draft(
    repo: &Repository,
    refs: &PackageRefs,
    draft: Oid,
    workspace: &str,
    files: &Files,
    identity: &Identity,
) -> Result<(Oid, Vec<RefChange>), OriginError> {
    let message = draft_message(refs, workspace, None, identity);
    let commit = package_commit(repo, refs, draft, Some(files), &message, identity)?;
    Ok((
        commit,
        vec![RefChange::Set {
            name: refs.draft(workspace),
            to: commit,
        }],
    ))
}

/// Draft → Proposed: the `proposed/…` branch at the draft's commit, the
/// `drafts/…` branch gone.
pub fn propose(refs: &PackageRefs, workspace: &str, commit: Oid) -> Vec<RefChange> {
    vec![
        RefChange::Set {
            name: refs.proposed(workspace),
            to: commit,
        },
        RefChange::Delete {
            name: refs.draft(workspace),
        },
    ]
}

/// Proposed → Draft: the reverse of [`propose`].
pub fn reject(refs: &PackageRefs, workspace: &str, commit: Oid) -> Vec<RefChange> {
    vec![
        RefChange::Set {
            name: refs.draft(workspace),
            to: commit,
        },
        RefChange::Delete {
            name: refs.proposed(workspace),
        },
    ]
}

/// Proposed → Published `revision`: a commit on the registered branch's
/// `head` replacing the package subtree with the proposal's (at commit
/// `proposal`, its second parent), with Porch's message and annotation
/// (`"revision":"<N>"`); the branch moved to
/// it, tag `<package>/v<revision>` on it, the proposed branch removed.
pub fn approve(
    repo: &Repository,
    refs: &PackageRefs,
    head: Oid,
    proposal: Oid,
    workspace: &str,
    revision: i64,
    identity: &Identity,
) -> Result<(Oid, Vec<RefChange>), OriginError> {
    let proposal_tree = repo
        .find_commit(proposal)
        .and_then(|c| c.tree())
        .map_err(|e| OriginError::Git(format!("reading the proposal {proposal}: {e}")))?;
    let package_tree = proposal_tree
        .get_path(std::path::Path::new(&refs.full))
        .map_err(|e| OriginError::Git(format!("package {} in {proposal}: {e}", refs.full)))?
        .id();
    let base = repo
        .find_commit(head)
        .map_err(|e| OriginError::Git(format!("reading {head}: {e}")))?
        .tree_id();
    let root = write::with_subtree(repo, Some(base), &refs.full, Some(package_tree))?;
    let message = format!(
        "Approving package revision {}/{revision}\n\n{}\n",
        refs.full,
        refs.annotation(workspace, &revision.to_string(), None)
    );
    let message = with_trailer(message, identity);
    // The proposal is the second parent: the published revision keeps the
    // draft's history (its tasks), as Porch's approval commit does.
    let commit = write::commit(repo, root, &[head, proposal], &message, identity)?;
    Ok((
        commit,
        vec![
            RefChange::Set {
                name: refs.main(),
                to: commit,
            },
            RefChange::Set {
                name: refs.tag(revision),
                to: commit,
            },
            RefChange::Delete {
                name: refs.proposed(workspace),
            },
        ],
    ))
}

/// Published → DeletionProposed: the marker branch at the revision's commit.
pub fn propose_deletion(refs: &PackageRefs, revision: i64, commit: Oid) -> Vec<RefChange> {
    vec![RefChange::Set {
        name: refs.deletion_proposed(revision),
        to: commit,
    }]
}

/// DeletionProposed → Published: the marker branch removed.
pub fn withdraw_deletion(refs: &PackageRefs, revision: i64) -> Vec<RefChange> {
    vec![RefChange::Delete {
        name: refs.deletion_proposed(revision),
    }]
}

/// Deletes a draft or a proposal: its branch.
pub fn delete_unpublished(refs: &PackageRefs, workspace: &str, proposed: bool) -> Vec<RefChange> {
    let name = if proposed {
        refs.proposed(workspace)
    } else {
        refs.draft(workspace)
    };
    vec![RefChange::Delete { name }]
}

/// Deletes a published revision whose deletion was proposed: its tag and
/// its marker branch.
pub fn delete_published(refs: &PackageRefs, revision: i64) -> Vec<RefChange> {
    vec![
        RefChange::Delete {
            name: refs.tag(revision),
        },
        RefChange::Delete {
            name: refs.deletion_proposed(revision),
        },
    ]
}

/// Deletes the placeholder: a commit on the registered branch's `head`
/// removing the package's subtree, message `Delete <package>` (Porch's
/// `createPackageDeleteCommitInRepo`), and its marker branch when it has
/// one. When `head` does not hold the package (someone removed it
/// already), there is no commit (`None`), only the marker's deletion.
pub fn delete_placeholder(
    repo: &Repository,
    refs: &PackageRefs,
    head: Oid,
    marker: bool,
    identity: &Identity,
) -> Result<(Option<Oid>, Vec<RefChange>), OriginError> {
    let tree = repo
        .find_commit(head)
        .and_then(|c| c.tree())
        .map_err(|e| OriginError::Git(format!("reading {head}: {e}")))?;
    let present = tree
        .get_path(std::path::Path::new(&refs.full))
        .is_ok_and(|entry| entry.kind() == Some(git2::ObjectType::Tree));
    let mut changes = Vec::new();
    let commit = if present {
        let message = with_trailer(format!("Delete {}", refs.full), identity);
        let commit = package_commit(repo, refs, head, None, &message, identity)?;
        changes.push(RefChange::Set {
            name: refs.main(),
            to: commit,
        });
        Some(commit)
    } else {
        None
    };
    if marker {
        changes.push(RefChange::Delete {
            name: refs.deletion_proposed(-1),
        });
    }
    Ok((commit, changes))
}

/// A commit on `parent` with the package's subtree replaced by `files`
/// (removed when `None`).
fn package_commit(
    repo: &Repository,
    refs: &PackageRefs,
    parent: Oid,
    files: Option<&Files>,
    message: &str,
    identity: &Identity,
) -> Result<Oid, OriginError> {
    let base = repo
        .find_commit(parent)
        .map_err(|e| OriginError::Git(format!("reading {parent}: {e}")))?
        .tree_id();
    let subtree = files.map(|f| write::files_tree(repo, f)).transpose()?;
    let root = write::with_subtree(repo, Some(base), &refs.full, subtree)?;
    write::commit(repo, root, &[parent], message, identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_follow_porch() {
        let refs = PackageRefs::new("/catalog/", "gcp", "bucket", "main");
        assert_eq!(refs.full, "catalog/gcp/bucket");
        assert_eq!(refs.draft("ws"), "refs/heads/drafts/catalog/gcp/bucket/ws");
        assert_eq!(
            refs.proposed("ws"),
            "refs/heads/proposed/catalog/gcp/bucket/ws"
        );
        assert_eq!(refs.tag(3), "refs/tags/catalog/gcp/bucket/v3");
        assert_eq!(
            refs.deletion_proposed(3),
            "refs/heads/deletionProposed/catalog/gcp/bucket/v3"
        );
        assert_eq!(
            refs.deletion_proposed(-1),
            "refs/heads/deletionProposed/catalog/gcp/bucket/main"
        );
        assert_eq!(
            refs.annotation("ws", "v3", None),
            r#"kpt:{"package":"catalog/gcp/bucket","workspaceName":"ws","revision":"v3"}"#
        );
        let top = PackageRefs::new("/", "", "basens", "main");
        assert_eq!(top.tag(1), "refs/tags/basens/v1");
    }

    /// Porch's `TestFormatCommitMessage`, plus `upgrade`.
    #[test]
    fn commit_messages_follow_porchs_format_commit_message() {
        for (kind, want) in [
            (Some("render"), "Rendering package"),
            (
                Some("edit"),
                "Creating new revision by copying previous revision",
            ),
            (Some("init"), "Creating new empty revision"),
            (Some("clone"), "Creating new revision by cloning"),
            (Some("upgrade"), "Upgrading revision"),
            (Some("unknown"), "Intermediate commit: unknown"),
            (Some(""), "Intermediate commit"),
            (None, "Intermediate commit"),
        ] {
            assert_eq!(commit_message(kind), want, "{kind:?}");
        }
    }

    #[test]
    fn the_principal_trailer_ends_the_message() {
        let refs = PackageRefs::new("/", "", "app", "main");
        let by = |principal: &str| Identity {
            author: write::Author::porch(),
            committer: write::Author::porch(),
            principal: principal.to_owned(),
        };
        assert_eq!(
            draft_message(&refs, "ws", Some(r#"{"type":"init","init":{}}"#), &by("ada")),
            "Creating new empty revision\n\n\n\
             kpt:{\"package\":\"app\",\"workspaceName\":\"ws\",\"revision\":\"0\",\"task\":{\"type\":\"init\",\"init\":{}}}\n\
             Cairn-Principal: ada\n"
        );
        assert_eq!(
            draft_message(&refs, "ws", None, &by("")),
            "Intermediate commit\n\n\nkpt:{\"package\":\"app\",\"workspaceName\":\"ws\",\"revision\":\"0\"}\n"
        );
        assert_eq!(
            with_trailer("Delete app".into(), &by("anonymous")),
            "Delete app\n\nCairn-Principal: anonymous\n"
        );
        assert_eq!(with_trailer("Delete app".into(), &by("")), "Delete app");
        assert_eq!(with_trailer("Delete app".into(), &by("a\nb")), "Delete app");
    }
}
