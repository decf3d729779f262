//! Where a package revision is in Git (its *lock*), and the `Kptfile` of a
//! clone as kpt and Porch write it. Pure: no Git, no I/O.
//!
//! - [`lock_of`]: a revision's lock — Porch's `GetLock` (its *self lock*,
//!   shown by `pkgrev.get` as `lock`): the repository's URL, the package's
//!   directory, the short ref the revision lives on and the commit it
//!   resolves to. The ref is the tag `<directory>/vN` of a published
//!   revision (also while its deletion is proposed), the registered branch
//!   for the `-1` placeholder, `drafts/<directory>/<workspace>` or
//!   `proposed/<directory>/<workspace>` otherwise.
//!
//!   **Decision: `directory` is the package's full path in the Git
//!   repository** (registered directory, path, package), where Porch
//!   gives the path relative to the registered directory. The two agree
//!   for a repository registered at `/` (every Porch fixture); for one
//!   registered below, only the full path lets kpt (`kpt pkg get`,
//!   `kpt pkg update`) find the package in the upstream, and it matches the
//!   tag, whose name holds the full path too.
//! - [`with_upstream`]: the `Kptfile` of a clone — kpt's `UpdateUpstream`
//!   (kpt `v1.0.0-beta.62.1`, `pkg/lib/kptops/clone.go`, as Porch's clone
//!   task calls it): `metadata.name` set to the new package's name (its
//!   last path segment; Porch passes its whole path below the registered
//!   directory, the same for a package at the top),
//!   `upstream` (`type: git`, `git: {repo, directory, ref}`) and
//!   `upstreamLock` (the same plus `commit`) set right after `metadata`,
//!   with kpt's normalisation (`repo` ends in `.git`, `directory` has no
//!   leading `/`). Every other key is kept, in its order; comments are
//!   dropped, as kpt's re-marshalling drops them.

use cairn_events::{
    revision::Lifecycle,
    v1::{GitLock, GitSpec, Locator, PackageRevision},
};
use serde_yaml::{Mapping, Value};

use super::lifecycle::PackageRefs;

/// Why a `Kptfile` could not be given an upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KptfileError {
    /// It is not YAML: the package cannot be cloned until its `Kptfile` is
    /// fixed upstream.
    #[error("its Kptfile is not valid YAML: {0}")]
    Yaml(String),
    /// It is YAML but not a mapping (or its `metadata` is not one): the
    /// package cannot be cloned until its `Kptfile` is fixed upstream.
    #[error("its Kptfile is not a Kptfile ({0} is not a mapping)")]
    NotAMapping(&'static str),
}

/// The lock of revision `r` of the repository registered with `git` (see
/// the module doc): `repo` is `git.url` as registered.
pub fn lock_of(git: &GitSpec, r: &PackageRevision) -> Locator {
    let branch = if git.branch.is_empty() {
        "main"
    } else {
        git.branch.as_str()
    };
    let refs = PackageRefs::new(&git.directory, &r.path, &r.package, branch);
    let full = |name: String| -> String {
        name.strip_prefix("refs/heads/")
            .or_else(|| name.strip_prefix("refs/tags/"))
            .unwrap_or(&name)
            .to_owned()
    };
    let short_ref = match (r.revision, r.parsed_lifecycle()) {
        (-1, _) => branch.to_owned(),
        (_, Some(Lifecycle::Proposed)) => full(refs.proposed(&r.workspace)),
        (n, Some(l)) if n > 0 && l.is_published() => full(refs.tag(n)),
        _ => full(refs.draft(&r.workspace)),
    };
    Locator {
        r#type: "git".to_owned(),
        git: Some(GitLock {
            repo: git.url.clone(),
            directory: refs.full,
            r#ref: short_ref,
            commit: r.commit.clone(),
        }),
    }
}

/// `kptfile` as the `Kptfile` of a clone named `name` whose upstream is
/// `lock` (see the module doc).
pub fn with_upstream(kptfile: &[u8], name: &str, lock: &GitLock) -> Result<Vec<u8>, KptfileError> {
    let doc: Value =
        serde_yaml::from_slice(kptfile).map_err(|e| KptfileError::Yaml(e.to_string()))?;
    let Value::Mapping(doc) = doc else {
        return Err(KptfileError::NotAMapping("the document"));
    };
    // kpt's normalizeGitFields / normalizeGitLockFields.
    let repo = if lock.repo.ends_with(".git") {
        lock.repo.clone()
    } else {
        format!("{}.git", lock.repo)
    };
    let directory = lock.directory.trim_start_matches('/');
    let git = |commit: Option<&str>| {
        let mut git = Mapping::new();
        git.insert("repo".into(), repo.as_str().into());
        git.insert("directory".into(), directory.into());
        git.insert("ref".into(), lock.r#ref.as_str().into());
        if let Some(commit) = commit {
            git.insert("commit".into(), commit.into());
        }
        let mut locator = Mapping::new();
        locator.insert("type".into(), "git".into());
        locator.insert("git".into(), Value::Mapping(git));
        Value::Mapping(locator)
    };
    let mut metadata = match doc.get("metadata") {
        None | Some(Value::Null) => Mapping::new(),
        Some(Value::Mapping(m)) => m.clone(),
        Some(_) => return Err(KptfileError::NotAMapping("metadata")),
    };
    metadata.insert("name".into(), name.into());
    let mut out = Mapping::new();
    let mut placed = false;
    let place = |out: &mut Mapping| {
        out.insert("metadata".into(), Value::Mapping(metadata.clone()));
        out.insert("upstream".into(), git(None));
        out.insert("upstreamLock".into(), git(Some(&lock.commit)));
    };
    for (key, value) in &doc {
        match key.as_str() {
            Some("upstream" | "upstreamLock") => {}
            Some("metadata") => {
                place(&mut out);
                placed = true;
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
        // A Kptfile without metadata gets it after `kind`, as kpt
        // orders its fields.
        if !placed && key.as_str() == Some("kind") && !doc.contains_key("metadata") {
            place(&mut out);
            placed = true;
        }
    }
    if !placed {
        place(&mut out);
    }
    serde_yaml::to_string(&Value::Mapping(out))
        .map(String::into_bytes)
        .map_err(|e| KptfileError::Yaml(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(directory: &str) -> GitSpec {
        GitSpec {
            url: "file:///up/.git".into(),
            branch: "main".into(),
            directory: directory.into(),
            ..Default::default()
        }
    }

    fn revision(path: &str, workspace: &str, number: i64, lifecycle: Lifecycle) -> PackageRevision {
        PackageRevision {
            path: path.into(),
            package: "basens".into(),
            workspace: workspace.into(),
            revision: number,
            lifecycle: lifecycle.as_str().into(),
            commit: "c0ffee".into(),
            ..Default::default()
        }
    }

    fn lock(repo: &str, directory: &str, r#ref: &str) -> Locator {
        Locator {
            r#type: "git".into(),
            git: Some(GitLock {
                repo: repo.into(),
                directory: directory.into(),
                r#ref: r#ref.into(),
                commit: "c0ffee".into(),
            }),
        }
    }

    #[test]
    fn a_lock_names_the_ref_each_lifecycle_lives_on() {
        use Lifecycle::*;
        let url = "file:///up/.git";
        for (r, want) in [
            (
                revision("", "v2", 2, Published),
                lock(url, "basens", "basens/v2"),
            ),
            (
                revision("", "v2", 2, DeletionProposed),
                lock(url, "basens", "basens/v2"),
            ),
            (
                revision("", "main", -1, Published),
                lock(url, "basens", "main"),
            ),
            (
                revision("", "ws", 0, Draft),
                lock(url, "basens", "drafts/basens/ws"),
            ),
            (
                revision("", "ws", 0, Proposed),
                lock(url, "basens", "proposed/basens/ws"),
            ),
            (
                revision("cat", "v1", 1, Published),
                lock(url, "cat/basens", "cat/basens/v1"),
            ),
        ] {
            assert_eq!(lock_of(&git("/"), &r), want, "{r:?}");
        }
        // Below a registered directory: the full path in the repository.
        assert_eq!(
            lock_of(&git("/blueprints/"), &revision("cat", "v1", 1, Published)),
            lock(url, "blueprints/cat/basens", "blueprints/cat/basens/v1")
        );
    }

    fn upstream(repo: &str) -> GitLock {
        GitLock {
            repo: repo.into(),
            directory: "/basens".into(),
            r#ref: "basens/v1".into(),
            commit: "740397b".into(),
        }
    }

    #[test]
    fn a_clone_kptfile_is_renamed_and_locked_after_metadata_keeping_the_rest() {
        let kptfile = b"# a comment\napiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: basens\n  labels:\n    tier: base\nupstream:\n  type: git\ninfo:\n  description: d\nextra: kept\n";
        let out = with_upstream(kptfile, "istions", &upstream("https://example.com/r")).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: istions\n  labels:\n    tier: base\n\
             upstream:\n  type: git\n  git:\n    repo: https://example.com/r.git\n    directory: basens\n    ref: basens/v1\n\
             upstreamLock:\n  type: git\n  git:\n    repo: https://example.com/r.git\n    directory: basens\n    ref: basens/v1\n    commit: 740397b\n\
             info:\n  description: d\nextra: kept\n"
        );
        // A URL that ends in `.git` keeps it; no metadata gets one after kind.
        let out = with_upstream(
            b"apiVersion: v\nkind: Kptfile\n",
            "x",
            &upstream("file:///u/.git"),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "apiVersion: v\nkind: Kptfile\nmetadata:\n  name: x\n\
             upstream:\n  type: git\n  git:\n    repo: file:///u/.git\n    directory: basens\n    ref: basens/v1\n\
             upstreamLock:\n  type: git\n  git:\n    repo: file:///u/.git\n    directory: basens\n    ref: basens/v1\n    commit: 740397b\n"
        );
    }

    #[test]
    fn a_kptfile_that_is_no_mapping_is_refused() {
        let lock = upstream("r");
        assert!(matches!(
            with_upstream(b"a: [", "x", &lock),
            Err(KptfileError::Yaml(_))
        ));
        assert_eq!(
            with_upstream(b"- a\n", "x", &lock),
            Err(KptfileError::NotAMapping("the document"))
        );
        assert_eq!(
            with_upstream(b"metadata: 3\n", "x", &lock),
            Err(KptfileError::NotAMapping("metadata"))
        );
    }
}
