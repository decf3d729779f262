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

use git2::{Oid, Repository};

use super::{
    discovery::package_path,
    error::OriginError,
    write::{self, Author, Files, RefChange},
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

    /// A `kpt:` annotation line for this package.
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
    author: &Author,
) -> Result<(Oid, Vec<RefChange>), OriginError> {
    let kind = serde_json::from_str::<serde_json::Value>(task)
        .ok()
        .and_then(|t| t["type"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "init".to_owned());
    let message = format!(
        "Intermediate commit: {kind}\n\n{}\n",
        refs.annotation(workspace, workspace, Some(task))
    );
    let commit = package_commit(repo, refs, head, Some(files), &message, author)?;
    Ok((
        commit,
        vec![RefChange::Set {
            name: refs.draft(workspace),
            to: commit,
        }],
    ))
}

/// New resources for a draft at commit `draft`: a commit on top of it.
pub fn update_draft(
    repo: &Repository,
    refs: &PackageRefs,
    draft: Oid,
    workspace: &str,
    files: &Files,
    author: &Author,
) -> Result<(Oid, Vec<RefChange>), OriginError> {
    let task = r#"{"type":"patch","patch":{}}"#;
    let message = format!(
        "Intermediate commit: patch\n\n{}\n",
        refs.annotation(workspace, workspace, Some(task))
    );
    let commit = package_commit(repo, refs, draft, Some(files), &message, author)?;
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
/// `proposal`, its second parent), with Porch's message and annotation; the branch moved to
/// it, tag `<package>/v<revision>` on it, the proposed branch removed.
pub fn approve(
    repo: &Repository,
    refs: &PackageRefs,
    head: Oid,
    proposal: Oid,
    workspace: &str,
    revision: i64,
    author: &Author,
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
        refs.annotation(workspace, &format!("v{revision}"), None)
    );
    // The proposal is the second parent: the published revision keeps the
    // draft's history (its tasks), as Porch's approval commit does.
    let commit = write::commit(repo, root, &[head, proposal], &message, author)?;
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
/// removing the package's subtree (and its marker branch, when it has one).
pub fn delete_placeholder(
    repo: &Repository,
    refs: &PackageRefs,
    head: Oid,
    marker: bool,
    author: &Author,
) -> Result<(Oid, Vec<RefChange>), OriginError> {
    let message = format!("Deleting package {}\n", refs.full);
    let commit = package_commit(repo, refs, head, None, &message, author)?;
    let mut changes = vec![RefChange::Set {
        name: refs.main(),
        to: commit,
    }];
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
    author: &Author,
) -> Result<Oid, OriginError> {
    let base = repo
        .find_commit(parent)
        .map_err(|e| OriginError::Git(format!("reading {parent}: {e}")))?
        .tree_id();
    let subtree = files.map(|f| write::files_tree(repo, f)).transpose()?;
    let root = write::with_subtree(repo, Some(base), &refs.full, subtree)?;
    write::commit(repo, root, &[parent], message, author)
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
}
