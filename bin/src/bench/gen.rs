//! Generated Porch-layout Git repositories of any size, for the benchmarks
//! (and for tests that need many package revisions).
//!
//! The repository is written in one `git fast-import` run into a fresh bare
//! repository (`git init --bare`, branch `main`), then its refs are packed.
//! Layout, the way Porch publishes:
//!
//! - Package `pkg-NNNNNN` lives in `group-GGGG/pkg-NNNNNN/` (at most
//!   [`Shape::group_size`] packages per group, so no tree grows huge and each
//!   commit rewrites only two small trees). Each package holds a `Kptfile`
//!   (`apiVersion: kpt.dev/v1`, `kind: Kptfile`, `metadata.name`) and one
//!   small `configmap.yaml`.
//! - [`History::Porch`] (the default): each published revision N is one
//!   approval commit on `main` that writes
//!   the package's files (the Kptfile at v1, `configmap.yaml` with
//!   `revision: vN` each time), with the message `Approving package revision
//!   <pkg path>/vN` and the annotation
//!   `kpt:{"package":…,"workspaceName":"vN","revision":"vN"}`, tagged
//!   `<pkg path>/vN` (lightweight, written straight into `packed-refs`).
//!   Approvals go round-robin: every
//!   package's v1, then every package's v2, …
//!   [`History::Compact`]: one unannotated commit per N publishes revision
//!   N of every package (commits = T), tags as above.
//! - So each package has its published revisions 1..=T plus the `-1`
//!   placeholder on `main` (at its last version): T + 1 revisions.
//!
//! Commit times increase by one second per commit, from a fixed start, so
//! two runs with the same [`Shape`] write the same commits (same ids).

use std::{
    collections::HashMap,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Packages; each has a `-1` placeholder on `main`.
    pub packages: usize,
    /// Published revisions (tags `v1..=tags`) of each package.
    pub tags: usize,
    /// The first `fewer` packages get one tag fewer (to hit an exact total).
    pub fewer: usize,
    /// Packages per `group-GGGG/` directory.
    pub group_size: usize,
    /// Also annotate each approval commit with an `init` task for its
    /// workspace. Off: only Porch's approval annotation.
    pub init_tasks: bool,
    /// How approvals are laid out in commits.
    pub history: History,
}

/// How approvals are laid out in commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// One approval commit per published revision, annotated the Porch way
    /// (`kpt:{…}`), the way Porch writes a repository: commits = tags.
    Porch,
    /// One commit per revision number N that publishes revision N of every
    /// package at once, without annotations (so placeholders have no
    /// publishing info): commits = tags per package. The listing is
    /// otherwise the same; for sizes where Porch-shaped histories are too
    /// long to sync in reasonable time.
    Compact,
}

impl Shape {
    /// `packages` packages with `tags` published revisions each.
    pub fn new(packages: usize, tags: usize) -> Self {
        Self {
            packages,
            tags,
            fewer: 0,
            group_size: DEFAULT_GROUP_SIZE,
            init_tasks: false,
            history: History::Porch,
        }
    }

    /// Exactly `revisions` package revisions (at least 1), `per_package`
    /// (at least 2) per package: `per_package - 1` tags plus the
    /// placeholder; when `revisions` is not a multiple, the first packages
    /// get one tag fewer.
    pub fn for_revisions(revisions: u64, per_package: usize) -> Self {
        let revisions = revisions.max(1) as usize;
        let per_package = per_package.max(2);
        let packages = revisions.div_ceil(per_package);
        let mut shape = Self::new(packages, per_package - 1);
        shape.fewer = packages * per_package - revisions;
        shape
    }

    /// Tags of package `i`.
    pub fn tags_of(&self, i: usize) -> usize {
        if i < self.fewer {
            self.tags.saturating_sub(1)
        } else {
            self.tags
        }
    }

    /// Package revisions a conforming cache lists: tags plus placeholders.
    pub fn revisions(&self) -> u64 {
        (0..self.packages).map(|i| self.tags_of(i) as u64 + 1).sum()
    }

    /// Commits on `main`.
    pub fn commits(&self) -> u64 {
        match self.history {
            History::Porch => (0..self.packages).map(|i| self.tags_of(i) as u64).sum(),
            History::Compact => (0..self.packages)
                .map(|i| self.tags_of(i) as u64)
                .max()
                .unwrap_or(0),
        }
    }

    /// Path of package `i` inside the repository: `group-GGGG/pkg-NNNNNN`.
    pub fn package_path(&self, i: usize) -> String {
        format!(
            "group-{:04}/{}",
            i / self.group_size.max(1),
            package_name(i)
        )
    }
}

/// Default packages per group directory.
pub const DEFAULT_GROUP_SIZE: usize = 100;

/// First commit time (seconds since the epoch; 2023-11-14T22:13:20Z).
const EPOCH: u64 = 1_700_000_000;

/// Name of package `i`.
pub fn package_name(i: usize) -> String {
    format!("pkg-{i:06}")
}

/// A generated repository.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The bare repository.
    pub path: PathBuf,
    /// `file://` URL of it.
    pub url: String,
    /// Package revisions it holds.
    pub revisions: u64,
    /// Commits on `main` (= tags).
    pub commits: u64,
    /// Wall time of `git init`, `git fast-import`, writing the tags and
    /// `git pack-refs`.
    pub elapsed: Duration,
}

/// The `Kptfile` of `name`.
pub fn kptfile(name: &str) -> String {
    format!(
        "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: {name}\n  annotations:\n    config.kubernetes.io/local-config: \"true\"\ninfo:\n  description: generated package {name}\n"
    )
}

/// The `configmap.yaml` of `name` at revision `v`.
pub fn configmap(name: &str, v: usize) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\ndata:\n  package: {name}\n  revision: \"v{v}\"\n"
    )
}

fn git(args: &[&str], cwd: Option<&Path>) -> anyhow::Result<()> {
    let mut command = Command::new("git");
    command.args(args).stdin(Stdio::null());
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    let output = command
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    anyhow::ensure!(
        output.status.success(),
        "git {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

fn data(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    writeln!(out, "data {}", bytes.len())?;
    out.write_all(bytes)?;
    out.write_all(b"\n")
}

/// Writes the fast-import stream of `shape` (the commits of `main`) to
/// `out`; returns the tags to make: `(ref name, commit mark)`.
pub fn write_stream(shape: &Shape, out: &mut impl Write) -> std::io::Result<Vec<(String, u64)>> {
    writeln!(out, "feature done")?;
    let mut mark = 0u64;
    let mut tags = Vec::with_capacity(shape.commits() as usize);
    for v in 1..=shape.tags {
        let packages = (0..shape.packages).filter(|&i| shape.tags_of(i) >= v);
        match shape.history {
            History::Porch => {
                for i in packages {
                    mark += 1;
                    let path = shape.package_path(i);
                    let mut message = format!(
                        "Approving package revision {path}/v{v}\n\nkpt:{{\"package\":\"{path}\",\"workspaceName\":\"v{v}\",\"revision\":\"v{v}\"}}\n"
                    );
                    if shape.init_tasks {
                        message.push_str(&format!(
                            "kpt:{{\"package\":\"{path}\",\"workspaceName\":\"v{v}\",\"revision\":\"v{v}\",\"task\":{{\"type\":\"init\",\"init\":{{\"description\":\"generated\"}}}}}}\n"
                        ));
                    }
                    commit_header(out, mark, &message)?;
                    package_files(out, shape, i, v)?;
                    writeln!(out)?;
                    tags.push((format!("refs/tags/{path}/v{v}"), mark));
                }
            }
            History::Compact => {
                let packages: Vec<usize> = packages.collect();
                if packages.is_empty() {
                    continue;
                }
                mark += 1;
                let message = format!("Approving revision v{v} of {} packages\n", packages.len());
                commit_header(out, mark, &message)?;
                for &i in &packages {
                    package_files(out, shape, i, v)?;
                }
                writeln!(out)?;
                for &i in &packages {
                    tags.push((format!("refs/tags/{}/v{v}", shape.package_path(i)), mark));
                }
            }
        }
    }
    writeln!(out, "done")?;
    Ok(tags)
}

/// `commit refs/heads/main` number `mark` (on top of `mark - 1`).
fn commit_header(out: &mut impl Write, mark: u64, message: &str) -> std::io::Result<()> {
    let when = EPOCH + mark;
    writeln!(out, "commit refs/heads/main")?;
    writeln!(out, "mark :{mark}")?;
    writeln!(
        out,
        "author Bench Publisher <publisher@example.com> {when} +0000"
    )?;
    writeln!(
        out,
        "committer Bench Publisher <publisher@example.com> {when} +0000"
    )?;
    data(out, message.as_bytes())?;
    if mark > 1 {
        writeln!(out, "from :{}", mark - 1)?;
    }
    Ok(())
}

/// The file changes publishing revision `v` of package `i`.
fn package_files(out: &mut impl Write, shape: &Shape, i: usize, v: usize) -> std::io::Result<()> {
    let name = package_name(i);
    let path = shape.package_path(i);
    if v == 1 {
        writeln!(out, "M 100644 inline {path}/Kptfile")?;
        data(out, kptfile(&name).as_bytes())?;
    }
    writeln!(out, "M 100644 inline {path}/configmap.yaml")?;
    data(out, configmap(&name, v).as_bytes())
}

/// Writes lightweight `tags` (ref name, commit mark) straight into
/// `packed-refs` (commit ids from fast-import's `marks` file): one file,
/// where fast-import would create a loose ref file per tag.
fn write_tags(dir: &Path, marks: &Path, mut tags: Vec<(String, u64)>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(marks).context("reading fast-import marks")?;
    let ids: HashMap<u64, &str> = text
        .lines()
        .filter_map(|line| {
            let (mark, id) = line.strip_prefix(':')?.split_once(' ')?;
            Some((mark.parse().ok()?, id))
        })
        .collect();
    tags.sort_unstable();
    let mut out = BufWriter::new(std::fs::File::create(dir.join("packed-refs"))?);
    writeln!(out, "# pack-refs with: peeled fully-peeled sorted ")?;
    for (name, mark) in &tags {
        let id = ids
            .get(mark)
            .with_context(|| format!("fast-import exported no commit for mark :{mark}"))?;
        writeln!(out, "{id} {name}")?;
    }
    out.flush()?;
    Ok(())
}

/// Generates `shape` as a bare repository at `dir` (which must not exist
/// or be empty).
pub fn generate(dir: &Path, shape: &Shape) -> anyhow::Result<Generated> {
    anyhow::ensure!(
        shape.packages > 0,
        "a repository needs at least one package"
    );
    anyhow::ensure!(shape.tags > 0, "packages need at least one tag");
    let started = Instant::now();
    std::fs::create_dir_all(dir)?;
    let dir_str = dir.to_str().context("repository path is not UTF-8")?;
    git(
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            dir_str,
        ],
        None,
    )?;
    let marks = dir.join("generator.marks");
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet", "--done"])
        .arg(format!("--export-marks={}", marks.display()))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running git fast-import")?;
    let stdin = child.stdin.take().context("fast-import stdin")?;
    let written = {
        let mut out = BufWriter::with_capacity(1 << 20, stdin);
        write_stream(shape, &mut out).and_then(|tags| out.flush().map(|()| tags))
    };
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "git fast-import failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let tags = written.context("writing the fast-import stream")?;
    write_tags(dir, &marks, tags)?;
    std::fs::remove_file(&marks)?;
    git(&["pack-refs", "--all", "--prune"], Some(dir))?;
    Ok(Generated {
        url: format!("file://{dir_str}"),
        path: dir.to_path_buf(),
        revisions: shape.revisions(),
        commits: shape.commits(),
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_hit_exact_totals() {
        let s = Shape::for_revisions(10_000, 5);
        assert_eq!((s.packages, s.tags, s.fewer), (2000, 4, 0));
        assert_eq!((s.revisions(), s.commits()), (10_000, 8000));
        let s = Shape::for_revisions(12, 5);
        assert_eq!((s.packages, s.tags, s.fewer), (3, 4, 3));
        assert_eq!(s.revisions(), 12);
        assert_eq!(s.package_path(123), "group-0001/pkg-000123");
    }

    #[test]
    fn generates_tags_and_main() {
        let dir = tempfile::tempdir().unwrap();
        let shape = Shape::for_revisions(12, 5);
        let g = generate(&dir.path().join("r.git"), &shape).unwrap();
        assert_eq!((g.revisions, g.commits), (12, 9));
        let out = Command::new("git")
            .args(["for-each-ref", "--format=%(refname)"])
            .current_dir(&g.path)
            .output()
            .unwrap();
        let refs = String::from_utf8(out.stdout).unwrap();
        assert_eq!(refs.lines().count(), 10, "{refs}");
        assert!(refs.contains("refs/tags/group-0000/pkg-000002/v3\n"));
        let out = Command::new("git")
            .args(["show", "main:group-0000/pkg-000001/Kptfile"])
            .current_dir(&g.path)
            .output()
            .unwrap();
        assert!(String::from_utf8(out.stdout)
            .unwrap()
            .contains("kind: Kptfile\nmetadata:\n  name: pkg-000001\n"));

        let mut compact = shape.clone();
        compact.history = History::Compact;
        let g = generate(&dir.path().join("c.git"), &compact).unwrap();
        assert_eq!((g.revisions, g.commits), (12, 3));
        let out = Command::new("git")
            .args(["rev-list", "--count", "main"])
            .current_dir(&g.path)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "3");
    }
}
