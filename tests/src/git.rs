//! Git repositories for tests, built with the real `git` CLI: the Porch
//! fixtures of `../shared/porch-testdata` unpacked with the real `tar`
//! ([`GitFixture::porch`]), and generated ones ([`GitFixture::init`], then
//! files, commits, tags and branches). One runner, [`git`], with a fixed
//! author and date and no user or system configuration, so results are the
//! same on every machine.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::paths::shared_dir;

/// Runs `git args` in `dir` (a fixed author and date, no user config);
/// returns its standard output, trimmed. Fails the test when git fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_AUTHOR_DATE", "2026-11-21T10:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-11-21T10:00:00Z")
        .output()
        .expect("git runs (apt-get install git)");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Unpacks the Porch fixture `fixture` (`../shared/porch-testdata/<fixture>.tar`,
/// a `.git` directory) into `into`; returns its `file://…/.git` URL.
pub fn unpack(fixture: &str, into: &Path) -> String {
    GitFixture::porch(fixture, into).url()
}

/// A Git repository on disk: a work tree with `.git`, or a bare one.
#[derive(Debug, Clone)]
pub struct GitFixture {
    /// Where commands run: the work tree, or the bare repository.
    dir: PathBuf,
    /// The repository itself (`<dir>/.git`, or `dir` when bare).
    git_dir: PathBuf,
}

impl GitFixture {
    /// The Porch fixture `fixture` unpacked into `into`.
    pub fn porch(fixture: &str, into: &Path) -> Self {
        std::fs::create_dir_all(into).expect("fixture directory");
        let tar = shared_dir()
            .join("porch-testdata")
            .join(format!("{fixture}.tar"));
        let status = Command::new("tar")
            .arg("--no-same-owner")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(into)
            .status()
            .expect("tar runs");
        assert!(status.success(), "unpacking {}", tar.display());
        Self {
            dir: into.to_path_buf(),
            git_dir: into.join(".git"),
        }
    }

    /// A new repository in `dir` (created) with `branch` as its first
    /// branch and no commit yet.
    pub fn init(dir: &Path, branch: &str) -> Self {
        std::fs::create_dir_all(dir).expect("repository directory");
        git(dir, &["init", "-q", "-b", branch]);
        Self {
            dir: dir.to_path_buf(),
            git_dir: dir.join(".git"),
        }
    }

    /// A new repository in `dir` with `packages` packages on `main`
    /// (`pkg-000`, `pkg-001`, …, each a `Kptfile` and `files` config maps
    /// `cm-NNN.yaml`, in one commit), each tagged `pkg-NNN/v1` …
    /// `pkg-NNN/v<tags>` on that commit: `packages × (tags + 1)` package
    /// revisions. Returns it with the object names of its revisions in
    /// repository `repository`, sorted.
    pub fn with_packages(
        dir: &Path,
        repository: &str,
        packages: usize,
        tags: usize,
        files: usize,
    ) -> (Self, Vec<String>) {
        let fixture = Self::init(dir, "main");
        let mut names = Vec::new();
        for p in 0..packages {
            let package = format!("pkg-{p:03}");
            fixture.write(
                &format!("{package}/Kptfile"),
                format!("apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: {package}\n"),
            );
            for f in 0..files {
                fixture.write(
                    &format!("{package}/cm-{f:03}.yaml"),
                    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {package}-{f}\ndata:\n  index: \"{p}\"\n"),
                );
            }
            names.push(format!("{repository}.{package}.main"));
            for v in 1..=tags {
                names.push(format!("{repository}.{package}.v{v}"));
            }
        }
        let commit = fixture.commit("packages");
        for p in 0..packages {
            for v in 1..=tags {
                fixture.tag(&format!("pkg-{p:03}/v{v}"), &commit);
            }
        }
        names.sort();
        (fixture, names)
    }

    /// The existing work tree at `dir` (its repository in `dir/.git`).
    pub fn open(dir: &Path) -> Self {
        assert!(dir.join(".git").exists(), "{} holds no .git", dir.display());
        Self {
            dir: dir.to_path_buf(),
            git_dir: dir.join(".git"),
        }
    }

    /// Treats the repository as bare from now on (`core.bare = true`, as
    /// the Porch fixtures are used as upstreams); commands run in its
    /// `.git`.
    pub fn into_bare(self) -> Self {
        git(&self.git_dir, &["config", "core.bare", "true"]);
        Self {
            dir: self.git_dir.clone(),
            git_dir: self.git_dir,
        }
    }

    /// A bare clone at `to`.
    pub fn clone_bare(&self, to: &Path) -> Self {
        self.clone_into(to, true)
    }

    /// A clone with a work tree at `to` (its `origin` is this repository).
    pub fn clone_to(&self, to: &Path) -> Self {
        self.clone_into(to, false)
    }

    fn clone_into(&self, to: &Path, bare: bool) -> Self {
        let parent = to.parent().expect("a parent directory");
        std::fs::create_dir_all(parent).expect("parent directory");
        let mut args = vec!["clone", "-q"];
        if bare {
            args.push("--bare");
        }
        args.push(self.git_dir.to_str().expect("UTF-8 path"));
        args.push(to.to_str().expect("UTF-8 path"));
        git(parent, &args);
        Self {
            dir: to.to_path_buf(),
            git_dir: if bare {
                to.to_path_buf()
            } else {
                to.join(".git")
            },
        }
    }

    /// Where commands run (the work tree, or the bare repository).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The repository (`.git`, or the bare directory).
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// `file://<git dir>`: what a repository is registered with.
    pub fn url(&self) -> String {
        format!("file://{}", self.git_dir.display())
    }

    /// Runs `git args` in the repository; its output, trimmed.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.dir, args)
    }

    /// Writes `content` to `path` in the work tree (directories created).
    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) -> &Self {
        let file = self.dir.join(path);
        std::fs::create_dir_all(file.parent().expect("a parent")).expect("directories");
        std::fs::write(&file, content).expect("write a file");
        self
    }

    /// Stages everything and commits it; the new commit's id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.rev_parse("HEAD")
    }

    /// Tags `target` as `name`.
    pub fn tag(&self, name: &str, target: &str) -> &Self {
        self.git(&["tag", name, target]);
        self
    }

    /// Creates branch `name` at `target`.
    pub fn branch(&self, name: &str, target: &str) -> &Self {
        self.git(&["branch", name, target]);
        self
    }

    /// The commit `rev` names.
    pub fn rev_parse(&self, rev: &str) -> String {
        self.git(&["rev-parse", rev])
    }

    /// Every ref, sorted by name.
    pub fn refs(&self) -> Vec<String> {
        self.git(&["for-each-ref", "--format=%(refname)"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_repository_has_its_commits_tags_and_branches() {
        let dir = tempfile::tempdir().unwrap();
        let work = GitFixture::init(&dir.path().join("work"), "main");
        let first = work.write("a/Kptfile", "kind: Kptfile\n").commit("first");
        work.tag("a/v1", "main").branch("drafts/a/ws", "main");
        let bare = work.clone_bare(&dir.path().join("up.git"));
        assert_eq!(bare.rev_parse("main"), first);
        assert_eq!(
            bare.refs(),
            [
                "refs/heads/drafts/a/ws",
                "refs/heads/main",
                "refs/tags/a/v1"
            ]
        );
        assert_eq!(
            bare.url(),
            format!("file://{}", dir.path().join("up.git").display())
        );
        assert_eq!(bare.git(&["show", "main:a/Kptfile"]), "kind: Kptfile");
    }

    #[test]
    fn a_porch_fixture_unpacks_as_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        let up = GitFixture::porch("simple-repository", &dir.path().join("up")).into_bare();
        assert_eq!(
            up.url(),
            format!("file://{}/.git", dir.path().join("up").display())
        );
        assert!(up.refs().contains(&"refs/heads/main".to_owned()));
    }
}
