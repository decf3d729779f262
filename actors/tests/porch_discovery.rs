//! Porch-compatible discovery over the Porch fixtures.
//!
//! Every fixture in `shared/porch-testdata` is unpacked with the real `tar`,
//! served as `file://…/.git`, fetched into a [`GitCache`] and listed with
//! [`discover`]; the listing must be exactly what `EXPECTED.md` says. Further
//! tests change the upstream with the `git` CLI (new commits, deleted tags,
//! proposal branches) or build small repositories from scratch.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::Command;

use cairn_actors::origin::write::{self, Author, Files, Identity, RefChange};
use cairn_actors::origin::{
    create_branch, discover, discover_packages, package_of_ref, package_path, validate_url, Blobs,
    DiscoveredRevision, Discovery, GitCache, Lifecycle, OriginError,
};
use tempfile::TempDir;

/// The Porch fixtures (the runtime `CARGO_MANIFEST_DIR` first, as the
/// harness's `shared_dir`).
fn fixtures() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../../shared/porch-testdata")
}

use Lifecycle::{DeletionProposed, Draft, Proposed, Published};

/// Fixed identity and dates for commits the tests make with the git CLI.
const GIT_ENV: [(&str, &str); 7] = [
    ("GIT_AUTHOR_NAME", "Cairn Test"),
    ("GIT_AUTHOR_EMAIL", "cairn-test@example.com"),
    ("GIT_AUTHOR_DATE", "2024-01-02T03:04:05Z"),
    ("GIT_COMMITTER_NAME", "Cairn Test"),
    ("GIT_COMMITTER_EMAIL", "cairn-test@example.com"),
    ("GIT_COMMITTER_DATE", "2024-01-02T03:04:05Z"),
    ("GIT_CONFIG_NOSYSTEM", "1"),
];

/// A repository directory the tests control with the `git` CLI, served over
/// `file://`.
struct Upstream {
    dir: TempDir,
}

impl Upstream {
    /// Unpacks `<fixture>.tar` (which holds only `.git`).
    fn unpack(fixture: &str) -> Upstream {
        let dir = TempDir::new().unwrap();
        let tar = fixtures().join(format!("{fixture}.tar"));
        // --no-same-owner: as root, tar would keep the archive's owner and
        // libgit2 refuses repositories owned by another user.
        let status = Command::new("tar")
            .arg("--no-same-owner")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(dir.path())
            .status()
            .expect("run tar");
        assert!(status.success(), "tar xf {}", tar.display());
        Upstream { dir }
    }

    /// An empty repository made with `git init`, with a work tree.
    fn init() -> Upstream {
        let dir = TempDir::new().unwrap();
        let up = Upstream { dir };
        up.run(&["init", "--quiet", "--initial-branch=main", "."]);
        up
    }

    fn git_dir(&self) -> PathBuf {
        self.dir.path().join(".git")
    }

    fn url(&self) -> String {
        format!("file://{}", self.git_dir().display())
    }

    /// `git --git-dir <.git> args…`; returns trimmed stdout.
    fn git(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("git");
        cmd.arg("--git-dir").arg(self.git_dir()).args(args);
        output(cmd, args)
    }

    /// `git -C <work tree> args…`; returns trimmed stdout.
    fn run(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("git");
        cmd.arg("-C").arg(self.dir.path()).args(args);
        output(cmd, args)
    }

    fn write(&self, path: &str, content: &str) {
        let path = self.dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// Full hex of the commit `rev` names.
    fn commit(&self, rev: &str) -> String {
        self.git(&["rev-parse", &format!("{rev}^{{commit}}")])
    }
}

fn output(mut cmd: Command, args: &[&str]) -> String {
    for (k, v) in GIT_ENV {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// An upstream fetched into a fresh cache.
struct Synced {
    upstream: Upstream,
    _cache_dir: TempDir,
    cache: GitCache,
}

impl Synced {
    fn new(upstream: Upstream) -> Synced {
        let cache_dir = TempDir::new().unwrap();
        let cache = GitCache::new(cache_dir.path().join("mirrors"));
        cache.fetch(&upstream.url(), None).expect("fetch");
        Synced {
            upstream,
            _cache_dir: cache_dir,
            cache,
        }
    }

    fn fixture(name: &str) -> Synced {
        Synced::new(Upstream::unpack(name))
    }

    fn list(&self, directory: &str) -> Discovery {
        let mirror = self.cache.mirror_path(&self.upstream.url());
        discover(&mirror, "main", directory).expect("discover")
    }

    /// The content of a resource of `revision`, read from the mirror.
    fn content(&self, revision: &DiscoveredRevision, path: &str) -> Vec<u8> {
        let mirror = self.cache.mirror_path(&self.upstream.url());
        Blobs::open(&mirror)
            .unwrap()
            .with(revision.resources[path], <[u8]>::to_vec)
            .unwrap()
    }
}

type Row = (String, String, i64, String, Lifecycle);

fn row(path: &str, package: &str, revision: i64, workspace: &str, lifecycle: Lifecycle) -> Row {
    (
        path.to_owned(),
        package.to_owned(),
        revision,
        workspace.to_owned(),
        lifecycle,
    )
}

/// The listing as rows, in the order `discover` promises.
fn rows(d: &Discovery) -> Vec<Row> {
    d.revisions
        .iter()
        .map(|r| {
            (
                r.path.clone(),
                r.package.clone(),
                r.revision,
                r.workspace.clone(),
                r.lifecycle,
            )
        })
        .collect()
}

/// Asserts the listing is exactly `want` (any order), `count` in all, and
/// that `discover` returned it sorted.
fn assert_rows(d: &Discovery, mut want: Vec<Row>, count: usize) {
    want.sort();
    let got = rows(d);
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted, "discover sorts its listing");
    assert_eq!(got, want);
    assert_eq!(got.len(), count);
}

/// (path, package, revision) of every revision flagged latest.
fn latest(d: &Discovery) -> Vec<(String, String, i64)> {
    d.revisions
        .iter()
        .filter(|r| r.latest)
        .map(|r| (r.path.clone(), r.package.clone(), r.revision))
        .collect()
}

fn lt(path: &str, package: &str, revision: i64) -> (String, String, i64) {
    (path.to_owned(), package.to_owned(), revision)
}

fn find<'a>(d: &'a Discovery, path: &str, package: &str, revision: i64) -> &'a DiscoveredRevision {
    let mut found = d
        .revisions
        .iter()
        .filter(|r| r.path == path && r.package == package && r.revision == revision);
    let one = found
        .next()
        .unwrap_or_else(|| panic!("no {path}/{package} {revision}"));
    assert!(found.next().is_none(), "{path}/{package} {revision} twice");
    one
}

fn task_types(r: &DiscoveredRevision) -> Vec<&str> {
    r.tasks.iter().map(|t| t.r#type.as_str()).collect()
}

fn publish(r: &DiscoveredRevision) -> (Option<&str>, Option<&str>) {
    (r.published_by.as_deref(), r.published_at.as_deref())
}

fn simple_rows() -> Vec<Row> {
    vec![
        row("", "empty", 1, "v1", Published),
        row("", "empty", -1, "main", Published),
        row("", "basens", 1, "v1", Published),
        row("", "basens", 2, "v2", Published),
        row("", "basens", -1, "main", Published),
        row("", "istions", 1, "v1", Published),
        row("", "istions", 2, "v2", Published),
        row("", "istions", -1, "main", Published),
    ]
}

#[test]
fn trivial_repository_is_ready_with_no_revisions() {
    let synced = Synced::fixture("trivial-repository");
    let d = synced.list("/");
    assert_eq!(
        d.branch_commit.as_deref(),
        Some("0f890879a10df9aaa9b263035eea955335451804")
    );
    assert_eq!(d.revisions, vec![]);
}

#[test]
fn empty_repository_lacks_the_branch_until_it_is_created() {
    let upstream = Upstream::unpack("empty-repository");
    // A served repository is bare; libgit2 does not push into work trees.
    upstream.git(&["config", "core.bare", "true"]);
    let url = upstream.url();
    let cache_dir = TempDir::new().unwrap();
    let cache = GitCache::new(cache_dir.path());

    let first = cache.fetch(&url, None).unwrap();
    assert_eq!(first.refs().unwrap(), BTreeMap::new());
    assert!(!first.changed);
    let mirror = cache.mirror_path(&url);
    let d = discover(&mirror, "main", "/").unwrap();
    assert_eq!(d.branch_commit, None);
    assert_eq!(d.revisions, vec![]);

    create_branch(
        &cache,
        &url,
        "main",
        &Author::new("Cairn Bot", "cairn@example.com"),
        None,
    )
    .unwrap();
    let created = upstream.commit("refs/heads/main");
    let object = upstream.git(&["cat-file", "-p", &created]);
    let lines: Vec<&str> = object.lines().collect();
    assert_eq!(
        lines[0], "tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        "empty tree"
    );
    assert!(lines[1].starts_with("author Cairn Bot <cairn@example.com> "));
    assert!(lines[2].starts_with("committer Cairn Bot <cairn@example.com> "));
    assert_eq!(lines[4], "Initial commit: Creating main branch");

    // The mirror took the branch when it was pushed: nothing new to fetch.
    let second = cache.fetch(&url, None).unwrap();
    assert_eq!(
        second.refs().unwrap(),
        BTreeMap::from([("refs/heads/main".to_owned(), created.clone())])
    );
    assert!(!second.changed);
    let d = discover(&mirror, "main", "/").unwrap();
    assert_eq!(d.branch_commit.as_deref(), Some(created.as_str()));
    assert_eq!(d.revisions, vec![]);

    // Creating it again is a no-op.
    create_branch(
        &cache,
        &url,
        "main",
        &Author::new("Other", "other@example.com"),
        None,
    )
    .unwrap();
    assert_eq!(upstream.commit("refs/heads/main"), created);
}

#[test]
fn simple_repository_lists_tags_and_placeholders() {
    let synced = Synced::fixture("simple-repository");
    let up = &synced.upstream;
    let d = synced.list("/");
    assert_eq!(d.branch_commit, Some(up.commit("main")));
    assert_rows(&d, simple_rows(), 8);
    assert_eq!(
        latest(&d),
        vec![
            lt("", "basens", 2),
            lt("", "empty", 1),
            lt("", "istions", 2)
        ]
    );

    // Placeholders: branch tip, no approval annotations, so no publish info.
    let placeholder = find(&d, "", "basens", -1);
    assert_eq!(placeholder.commit, up.commit("main"));
    assert_eq!(publish(placeholder), (None, None));
    assert!(!placeholder.latest);
    // Tags: the tagged commit, published by its author.
    let v1 = find(&d, "", "basens", 1);
    assert_eq!(v1.commit, up.commit("basens/v1"));
    assert_eq!(
        publish(v1),
        (Some("porch@kpt.dev"), Some("2022-03-17T04:44:01Z"))
    );
    let empty = find(&d, "", "empty", 1);
    assert_eq!(
        publish(empty),
        (Some("porch@kpt.dev"), Some("2022-03-17T04:37:42Z"))
    );
    for r in &d.revisions {
        assert_eq!(r.tasks, vec![], "{}/{}", r.package, r.revision);
        assert_eq!(r.labels, BTreeMap::new());
    }

    // Resources: every file of the package, relative to it, as committed.
    let files: Vec<&str> = placeholder.resources.keys().map(String::as_str).collect();
    assert_eq!(
        files,
        vec![
            "Kptfile",
            "README.md",
            "namespace.yaml",
            "package-context.yaml"
        ]
    );
    let kptfile = up.git(&["show", "main:basens/Kptfile"]);
    assert_eq!(
        String::from_utf8(synced.content(placeholder, "Kptfile"))
            .unwrap()
            .trim(),
        kptfile
    );
    let v1_files: Vec<&str> = v1.resources.keys().map(String::as_str).collect();
    assert_eq!(
        v1_files,
        vec!["Kptfile", "README.md", "package-context.yaml"]
    );
}

#[test]
fn drafts_repository_adds_drafts_with_task_history() {
    let synced = Synced::fixture("drafts-repository");
    let d = synced.list("/");
    let mut want = simple_rows();
    want.extend([
        row("", "bucket", 0, "v1", Draft),
        row("", "none", 0, "v1", Draft),
        row("", "pkg-with-history", 0, "v1", Draft),
    ]);
    assert_rows(&d, want, 11);
    assert_eq!(
        latest(&d),
        vec![
            lt("", "basens", 2),
            lt("", "empty", 1),
            lt("", "istions", 2)
        ]
    );

    // Porch's loadTasks: of the init, eval, patch, eval annotated on the
    // draft's commits, only the task that created it.
    let history = find(&d, "", "pkg-with-history", 0);
    assert_eq!(task_types(history), vec!["init"]);
    assert_eq!(
        history.tasks[0].raw,
        r#"{"type":"init","init":{"description":"sample description"}}"#
    );
    assert_eq!(
        history.commit,
        synced.upstream.commit("drafts/pkg-with-history/v1")
    );
    assert_eq!(publish(history), (None, None));
    assert!(!history.latest);
    // Its Kptfile's metadata.annotations (kpt's local-config marker).
    assert_eq!(
        history.annotations,
        BTreeMap::from([(
            "config.kubernetes.io/local-config".to_owned(),
            "true".to_owned()
        )])
    );
    assert_eq!(find(&d, "", "basens", 1).annotations, BTreeMap::new());

    let bucket = find(&d, "", "bucket", 0);
    assert_eq!(task_types(bucket), Vec::<&str>::new());
    let files: Vec<&str> = bucket.resources.keys().map(String::as_str).collect();
    assert_eq!(
        files,
        vec![
            "Kptfile",
            "README.md",
            "bucket.yaml",
            "package-context.yaml"
        ]
    );
}

fn nested_gcp_rows() -> Vec<Row> {
    vec![
        row("", "cloud-sql", 0, "v1", Draft),
        row("", "spanner", 0, "v1", Draft),
        row("", "bucket", 0, "v2", Draft),
        row("", "bucket", 1, "v1", Published),
        row("", "bucket", -1, "main", Published),
    ]
}

#[test]
fn nested_repository_whole_repository() {
    let synced = Synced::fixture("nested-repository");
    let d = synced.list("/");
    let want = vec![
        row("", "sample", 1, "v1", Published),
        row("", "sample", 2, "v2", Published),
        row("", "sample", -1, "main", Published),
        row("catalog", "empty", 1, "v1", Published),
        row("catalog", "empty", -1, "main", Published),
        row("catalog/gcp", "bucket", 1, "v1", Published),
        row("catalog/gcp", "bucket", -1, "main", Published),
        row("catalog/gcp", "bucket", 0, "v2", Draft),
        row("catalog/gcp", "cloud-sql", 0, "v1", Draft),
        row("catalog/gcp", "spanner", 0, "v1", Draft),
        row("catalog/namespace", "basens", 1, "v1", Published),
        row("catalog/namespace", "basens", 2, "v2", Published),
        row("catalog/namespace", "basens", 3, "v3", Published),
        row("catalog/namespace", "basens", -1, "main", Published),
        row("catalog/namespace", "istions", 1, "v1", Published),
        row("catalog/namespace", "istions", 2, "v2", Published),
        row("catalog/namespace", "istions", 3, "v3", Published),
        row("catalog/namespace", "istions", -1, "main", Published),
    ];
    assert_rows(&d, want, 18);
    assert_eq!(
        latest(&d),
        vec![
            lt("", "sample", 2),
            lt("catalog", "empty", 1),
            lt("catalog/gcp", "bucket", 1),
            lt("catalog/namespace", "basens", 3),
            lt("catalog/namespace", "istions", 3),
        ]
    );
    // "" and "/" both mean the whole repository.
    assert_eq!(synced.list(""), d);
}

#[test]
fn nested_repository_scoped_to_a_directory() {
    let synced = Synced::fixture("nested-repository");
    let d = synced.list("catalog/gcp");
    assert_rows(&d, nested_gcp_rows(), 5);
    assert_eq!(latest(&d), vec![lt("", "bucket", 1)]);
    assert_eq!(synced.list("/catalog/gcp/"), d);
    // The content is the same as seen from the root.
    let whole = synced.list("/");
    assert_eq!(
        find(&d, "", "bucket", 0).resources,
        find(&whole, "catalog/gcp", "bucket", 0).resources
    );
}

#[test]
fn nested_repository_nonexistent_directory_lists_nothing() {
    let synced = Synced::fixture("nested-repository");
    let d = synced.list("nonexistent");
    assert_eq!(d.branch_commit, Some(synced.upstream.commit("main")));
    assert_eq!(d.revisions, vec![]);
}

#[test]
fn publishinfo_repository_publishing_metadata() {
    let synced = Synced::fixture("publishinfo-repository");
    let d = synced.list("/");
    let want = vec![
        row("", "pkg-with-anno", 1, "v1", Published),
        row("", "pkg-with-anno", -1, "main", Published),
        row("", "pkg-without-anno", 1, "v1", Published),
        row("", "pkg-without-anno", -1, "main", Published),
        row("", "some-pkg", -1, "main", Published),
        row("", "draft-pkg", 0, "v1", Draft),
    ];
    assert_rows(&d, want, 6);
    assert_eq!(
        latest(&d),
        vec![lt("", "pkg-with-anno", 1), lt("", "pkg-without-anno", 1)]
    );

    let with_anno = (
        Some("pkg-with-anno-author@example.com"),
        Some("2022-08-26T22:47:35Z"),
    );
    assert_eq!(publish(find(&d, "", "pkg-with-anno", 1)), with_anno);
    assert_eq!(publish(find(&d, "", "pkg-with-anno", -1)), with_anno);
    assert_eq!(publish(find(&d, "", "pkg-without-anno", -1)), (None, None));
    assert_eq!(publish(find(&d, "", "some-pkg", -1)), (None, None));
    // Not stated by EXPECTED.md; Porch takes a tag's publisher from the
    // tagged commit whether or not it is annotated.
    assert_eq!(
        publish(find(&d, "", "pkg-without-anno", 1)),
        (
            Some("pkg-without-anno-author@example.com"),
            Some("2022-08-26T22:49:59Z")
        )
    );

    let draft = find(&d, "", "draft-pkg", 0);
    assert_eq!(publish(draft), (None, None));
    assert_eq!(task_types(draft), vec!["init"]);
    assert_eq!(task_types(find(&d, "", "pkg-with-anno", 1)), vec!["init"]);
    // A placeholder has no task history (as Porch reads it from Git).
    assert_eq!(
        task_types(find(&d, "", "pkg-with-anno", -1)),
        Vec::<&str>::new()
    );
}

#[test]
fn manual_tagged_repository_counts_the_annotated_tag() {
    let synced = Synced::fixture("manual-tagged-repository");
    let up = &synced.upstream;
    let d = synced.list("/");
    let want = vec![
        row("", "pkg", -1, "main", Published),
        row("", "pkg", 1, "v1", Published),
        row("", "pkg", 2, "v2", Published),
    ];
    assert_rows(&d, want, 3);
    assert_eq!(latest(&d), vec![lt("", "pkg", 2)]);

    let v2 = find(&d, "", "pkg", 2);
    assert_eq!(v2.commit, "66113e107de7fcd69558e46d9dd988b115a27e9a");
    assert_eq!(v2.commit, up.commit("pkg/v2"));
    assert_eq!(
        publish(v2),
        (Some("porch@kpt.dev"), Some("2025-03-06T12:49:50Z"))
    );
    assert_eq!(task_types(v2), Vec::<&str>::new());

    let v1 = find(&d, "", "pkg", 1);
    assert_eq!(v1.commit, "b0ae9810fc384bd9e9fbe2baaaced41416c5bb21");
    assert_eq!(task_types(v1), vec!["init"]);
    assert_eq!(
        publish(v1),
        (Some("porch@kpt.dev"), Some("2025-03-06T12:49:11Z"))
    );

    // The placeholder's approval is the newest annotated commit (v1's).
    let placeholder = find(&d, "", "pkg", -1);
    assert_eq!(placeholder.commit, v2.commit);
    assert_eq!(
        publish(placeholder),
        (Some("porch@kpt.dev"), Some("2025-03-06T12:49:11Z"))
    );
    assert_eq!(task_types(placeholder), Vec::<&str>::new());
}

fn blueprint_rows(prefix: &str) -> Vec<Row> {
    vec![
        row(prefix, "bp1", -1, "main", Published),
        row(prefix, "bp1", 1, "v1", Published),
        row(prefix, "bp1", 2, "v2", Published),
        row(prefix, "bp1", 3, "v3", Published),
        row(prefix, "bp2", -1, "main", Published),
        row(prefix, "bp2", 1, "v1", Published),
        row(prefix, "bp2", 2, "v2", Published),
    ]
}

#[test]
fn invalid_kpt_annotation_is_tolerated_in_a_directory() {
    let synced = Synced::fixture("nested-repository-with-invalid-kpt-annotation");
    let d = synced.list("blueprint");
    assert_rows(&d, blueprint_rows(""), 7);
    assert_eq!(latest(&d), vec![lt("", "bp1", 3), lt("", "bp2", 2)]);

    // bp1 v3 is tagged on the commit after the malformed line; its own
    // annotation names workspace v3 and an eval task, which creates no
    // revision: no task.
    let bp1_v3 = find(&d, "", "bp1", 3);
    assert_eq!(task_types(bp1_v3), Vec::<&str>::new());
    // bp2 v2 was started by an edit: its history runs past the malformed
    // commit to the start of the branch without finding init or clone, and
    // keeps the edit.
    assert_eq!(task_types(find(&d, "", "bp2", 2)), vec!["edit"]);
    assert_eq!(task_types(find(&d, "", "bp1", 1)), vec!["init"]);
    assert_eq!(task_types(find(&d, "", "bp2", 1)), vec!["init"]);
    for placeholder in ["bp1", "bp2"] {
        assert_eq!(
            task_types(find(&d, "", placeholder, -1)),
            Vec::<&str>::new()
        );
    }
}

#[test]
fn invalid_kpt_annotation_is_tolerated_in_the_whole_repository() {
    let synced = Synced::fixture("nested-repository-with-invalid-kpt-annotation");
    let d = synced.list("/");
    let mut want = blueprint_rows("blueprint");
    want.extend([
        row("blueprint2", "bp10", 1, "v1", Published),
        row("blueprint2", "bp10", -1, "main", Published),
    ]);
    assert_rows(&d, want, 9);
    assert_eq!(
        latest(&d),
        vec![
            lt("blueprint", "bp1", 3),
            lt("blueprint", "bp2", 2),
            lt("blueprint2", "bp10", 1),
        ]
    );
}

#[test]
fn proposal_and_deletion_proposal_branches_set_the_lifecycle() {
    let upstream = Upstream::unpack("drafts-repository");
    upstream.git(&["branch", "proposed/bucket/ws-7", "drafts/bucket/v1"]);
    upstream.git(&["branch", "deletionProposed/basens/v2", "basens/v2"]);
    upstream.git(&["branch", "deletionProposed/istions/main", "main"]);
    // Neither drafts/ nor proposed/: ignored.
    upstream.git(&["branch", "blueprint/basens/v9", "main"]);
    let synced = Synced::new(upstream);
    let d = synced.list("/");
    let want = vec![
        row("", "empty", 1, "v1", Published),
        row("", "empty", -1, "main", Published),
        row("", "basens", 1, "v1", Published),
        row("", "basens", 2, "v2", DeletionProposed),
        row("", "basens", -1, "main", Published),
        row("", "istions", 1, "v1", Published),
        row("", "istions", 2, "v2", Published),
        row("", "istions", -1, "main", DeletionProposed),
        row("", "bucket", 0, "v1", Draft),
        row("", "bucket", 0, "ws-7", Proposed),
        row("", "none", 0, "v1", Draft),
        row("", "pkg-with-history", 0, "v1", Draft),
    ];
    assert_rows(&d, want, 12);
    // A deletion proposal is still published: it stays the latest.
    assert_eq!(
        latest(&d),
        vec![
            lt("", "basens", 2),
            lt("", "empty", 1),
            lt("", "istions", 2)
        ]
    );
    let proposed = d
        .revisions
        .iter()
        .find(|r| r.lifecycle == Proposed)
        .unwrap();
    assert_eq!(publish(proposed), (None, None));
    let deletion = find(&d, "", "basens", 2);
    assert_eq!(
        publish(deletion),
        (Some("porch@kpt.dev"), Some("2022-03-17T04:47:57Z"))
    );
}

#[test]
fn packages_do_not_nest_and_broken_kptfiles_are_tolerated() {
    let up = Upstream::init();
    up.write("Kptfile", "kind: Kptfile\n");
    up.write(
        "apps/a/Kptfile",
        "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: a\n  labels:\n    tier: gold\n    team: blue\n  annotations:\n    owner: team-blue\n",
    );
    up.write("apps/a/sub/Kptfile", "kind: Kptfile\n");
    up.write("apps/a/sub/x.yaml", "x: 1\n");
    up.write("apps/b/Kptfile", "metadata: [not: yaml\n");
    up.write("apps/c/README.md", "not a package\n");
    up.write("apps2/d/Kptfile", "kind: Kptfile\n");
    up.run(&["add", "-A"]);
    up.run(&["commit", "--quiet", "-m", "packages"]);
    // A tag and a draft inside package a name no package of their own.
    up.run(&["tag", "apps/a/sub/v1"]);
    up.run(&["branch", "drafts/apps/a/sub/ws"]);
    let synced = Synced::new(up);

    let d = synced.list("/");
    assert_rows(
        &d,
        vec![
            row("apps", "a", -1, "main", Published),
            row("apps", "b", -1, "main", Published),
            row("apps2", "d", -1, "main", Published),
        ],
        3,
    );
    let a = find(&d, "apps", "a", -1);
    let files: Vec<&str> = a.resources.keys().map(String::as_str).collect();
    assert_eq!(files, vec!["Kptfile", "sub/Kptfile", "sub/x.yaml"]);
    assert_eq!(synced.content(a, "sub/x.yaml"), b"x: 1\n".to_vec());
    assert_eq!(
        a.labels,
        BTreeMap::from([
            ("team".to_owned(), "blue".to_owned()),
            ("tier".to_owned(), "gold".to_owned()),
        ])
    );
    assert_eq!(
        a.annotations,
        BTreeMap::from([("owner".to_owned(), "team-blue".to_owned())])
    );
    let b = find(&d, "apps", "b", -1);
    assert_eq!(
        (&b.labels, &b.annotations),
        (&BTreeMap::new(), &BTreeMap::new())
    );

    // "apps2" shares a prefix with "apps" but is another directory.
    let scoped = synced.list("apps");
    assert_rows(
        &scoped,
        vec![
            row("", "a", -1, "main", Published),
            row("", "b", -1, "main", Published),
        ],
        2,
    );
    // The registered directory's own Kptfile names no package (it would have
    // no name); what lies below it is listed, as Porch does.
    assert_rows(
        &synced.list("apps/a"),
        vec![
            row("", "sub", -1, "main", Published),
            row("", "sub", 0, "ws", Draft),
            row("", "sub", 1, "v1", Published),
        ],
        3,
    );
}

#[test]
fn fetch_reports_changes_and_prunes_deleted_refs() {
    let up = Upstream::unpack("simple-repository");
    let url = up.url();
    let cache_dir = TempDir::new().unwrap();
    let cache = GitCache::new(cache_dir.path());

    let first = cache.fetch(&url, None).unwrap();
    assert!(first.changed);
    let want: BTreeMap<String, String> = [
        "refs/heads/main",
        "refs/tags/basens/v1",
        "refs/tags/basens/v2",
        "refs/tags/empty/v1",
        "refs/tags/istions/v1",
        "refs/tags/istions/v2",
    ]
    .into_iter()
    .map(|r| (r.to_owned(), up.commit(r)))
    .collect();
    assert_eq!(first.refs().unwrap(), want);

    let second = cache.fetch(&url, None).unwrap();
    assert_eq!(second.refs().unwrap(), want);
    assert!(!second.changed);

    let tree = up.git(&["rev-parse", "main^{tree}"]);
    let new_commit = up.git(&["commit-tree", &tree, "-p", "main", "-m", "upstream change"]);
    up.git(&["update-ref", "refs/heads/main", &new_commit]);
    let third = cache.fetch(&url, None).unwrap();
    assert!(third.changed);
    assert_eq!(third.refs().unwrap()["refs/heads/main"], new_commit);

    up.git(&["tag", "-d", "empty/v1"]);
    let fourth = cache.fetch(&url, None).unwrap();
    assert!(fourth.changed);
    assert!(!fourth.refs().unwrap().contains_key("refs/tags/empty/v1"));
    assert_eq!(fourth.refs().unwrap().len(), 5);
    let d = discover(&cache.mirror_path(&url), "main", "/").unwrap();
    assert_eq!(d.branch_commit.as_deref(), Some(new_commit.as_str()));
    assert_eq!(d.revisions.len(), 7);
    assert!(d
        .revisions
        .iter()
        .all(|r| !(r.package == "empty" && r.revision == 1)));

    // One URL, one mirror; remove deletes it and may be repeated.
    assert_eq!(cache.mirror_path(&url), cache.mirror_path(&url));
    cache.remove(&url).unwrap();
    assert!(!cache.mirror_path(&url).exists());
    cache.remove(&url).unwrap();
}

#[test]
fn fetch_of_a_missing_path_is_a_missing_repository() {
    let cache_dir = TempDir::new().unwrap();
    let cache = GitCache::new(cache_dir.path().join("mirrors"));
    let url = format!("file://{}/no-such-repo/.git", cache_dir.path().display());
    let err = cache.fetch(&url, None).unwrap_err();
    assert!(matches!(err, OriginError::RepositoryMissing(_)), "{err:?}");
    assert_eq!(err.class(), "missing");
    assert!(
        !cache.mirror_path(&url).exists(),
        "a failed first fetch leaves no mirror"
    );
}

#[test]
fn urls_other_than_file_http_https_are_rejected() {
    let err = validate_url("ftp://x").unwrap_err();
    assert!(matches!(err, OriginError::InvalidUrl(_)));
    assert_eq!(err.class(), "invalid");
    assert_eq!(
        err.to_string(),
        "invalid repository url: unsupported scheme \"ftp\" in \"ftp://x\" (expected file, http or https)"
    );
    let err = validate_url("not a url").unwrap_err();
    assert!(matches!(err, OriginError::InvalidUrl(_)));
    assert_eq!(
        err.to_string(),
        "invalid repository url: \"not a url\" has no scheme (expected file://, http:// or https://)"
    );
    // fetch validates before touching anything.
    let cache_dir = TempDir::new().unwrap();
    let cache = GitCache::new(cache_dir.path());
    assert!(matches!(
        cache.fetch("ftp://x", None),
        Err(OriginError::InvalidUrl(_))
    ));
}

/// A minimal HTTP server that answers every request with 401 and a Basic
/// challenge; stops when dropped.
struct DenyingServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl DenyingServer {
    fn start() -> DenyingServer {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut served = 0;
            // Bounded: libgit2 makes a handful of requests per fetch.
            for stream in listener.incoming().take(64) {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"cairn\"\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                );
                served += 1;
            }
            served
        });
        DenyingServer {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/repo.git", self.port)
    }
}

impl Drop for DenyingServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn http_auth_failures_and_refused_connections_are_classified() {
    use cairn_actors::origin::Credentials;
    let server = DenyingServer::start();
    let cache_dir = TempDir::new().unwrap();
    let cache = GitCache::new(cache_dir.path());

    let err = cache.fetch(&server.url(), None).unwrap_err();
    assert!(matches!(err, OriginError::Auth(_)), "{err:?}");
    assert_eq!(err.class(), "auth");
    assert_eq!(
        err.to_string(),
        "authentication failed: the upstream asks for credentials and none are configured"
    );
    let creds = Credentials {
        username: "alice".into(),
        password: "wrong".into(),
    };
    let err = cache.fetch(&server.url(), Some(&creds)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "authentication failed: the upstream rejected the configured credentials"
    );
    assert!(!err.to_string().contains("wrong"));
    assert!(!cache.mirror_path(&server.url()).exists());

    // A port nobody listens on: connection refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = cache
        .fetch(&format!("http://127.0.0.1:{port}/repo.git"), None)
        .unwrap_err();
    assert!(matches!(err, OriginError::Unreachable(_)), "{err:?}");
    assert_eq!(err.class(), "network");
    // A name that never resolves (RFC 6761).
    let err = cache
        .fetch("https://no-such-host.invalid/repo.git", None)
        .unwrap_err();
    assert!(matches!(err, OriginError::Unreachable(_)), "{err:?}");
}

#[test]
fn discovering_some_packages_finds_exactly_their_revisions_of_a_full_discovery() {
    for (fixture, directory, packages) in [
        ("drafts-repository", "/", vec!["basens", "pkg-with-history"]),
        (
            "nested-repository",
            "/",
            vec!["catalog/gcp/bucket", "sample"],
        ),
        (
            "nested-repository",
            "catalog/gcp",
            vec!["catalog/gcp/bucket"],
        ),
        (
            "publishinfo-repository",
            "/",
            vec!["pkg-with-anno", "draft-pkg"],
        ),
    ] {
        let synced = Synced::fixture(fixture);
        let mirror = synced.cache.mirror_path(&synced.upstream.url());
        let full = synced.list(directory);
        let only: HashSet<String> = packages.iter().map(|p| p.to_string()).collect();
        let part = discover_packages(&mirror, "main", directory, &only).unwrap();
        let full_path = |r: &DiscoveredRevision| package_path(directory, &r.path, &r.package);
        let want: Vec<&DiscoveredRevision> = full
            .revisions
            .iter()
            .filter(|r| only.contains(&full_path(r)))
            .collect();
        assert!(!want.is_empty(), "{fixture}");
        assert_eq!(
            part.revisions.iter().collect::<Vec<_>>(),
            want,
            "{fixture} {directory}"
        );
        assert_eq!(part.branch_commit, full.branch_commit);
        assert!(
            part.refs_read < full.refs_read,
            "{fixture}: {} of {}",
            part.refs_read,
            full.refs_read
        );
    }
    assert_eq!(
        package_of_ref("refs/tags/catalog/gcp/bucket/v1"),
        Some("catalog/gcp/bucket")
    );
    assert_eq!(
        package_of_ref("refs/heads/drafts/bucket/v1"),
        Some("bucket")
    );
    assert_eq!(package_of_ref("refs/heads/proposed/a/b/ws"), Some("a/b"));
    assert_eq!(
        package_of_ref("refs/heads/deletionProposed/a/b/v2"),
        Some("a/b")
    );
    assert_eq!(package_of_ref("refs/heads/main"), None);
    assert_eq!(package_of_ref("refs/tags/v1"), None);
}

/// A commit of `files` as package `package` on top of `parent` in `repo`.
fn package_commit(
    repo: &git2::Repository,
    parent: git2::Oid,
    package: &str,
    files: &Files,
    message: &str,
) -> git2::Oid {
    let base = repo.find_commit(parent).unwrap().tree_id();
    let tree = write::files_tree(repo, files).unwrap();
    let root = write::with_subtree(repo, Some(base), package, Some(tree)).unwrap();
    write::commit(
        repo,
        root,
        &[parent],
        message,
        &Identity::of(&Author::new("", "writer@example.com"), "", &Author::porch()),
    )
    .unwrap()
}

#[test]
fn written_revisions_are_pushed_together_and_discovered_as_written() {
    let upstream = Upstream::unpack("simple-repository");
    upstream.git(&["config", "core.bare", "true"]);
    let synced = Synced::new(upstream);
    let url = synced.upstream.url();
    let mirror = synced.cache.mirror_path(&url);
    let repo = git2::Repository::open_bare(&mirror).unwrap();
    let main = repo.refname_to_id("refs/heads/main").unwrap();
    let files: Files = [
        (
            "Kptfile".to_owned(),
            b"apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: fresh\n".to_vec(),
        ),
        ("config/cm.yaml".to_owned(), b"kind: ConfigMap\n".to_vec()),
    ]
    .into();
    let draft = package_commit(
        &repo,
        main,
        "catalog/fresh",
        &files,
        "Creating new empty revision\n\n\nkpt:{\"package\":\"catalog/fresh\",\"workspaceName\":\"ws\",\"revision\":\"0\",\"task\":{\"type\":\"init\",\"init\":{}}}\n",
    );
    // A new draft branch and a deleted tag, in one push.
    write::push_changes(
        &repo,
        &url,
        None,
        &[
            RefChange::Set {
                name: "refs/heads/drafts/catalog/fresh/ws".into(),
                to: draft,
            },
            RefChange::Delete {
                name: "refs/tags/empty/v1".into(),
            },
        ],
    )
    .unwrap();
    assert_eq!(
        synced.upstream.commit("drafts/catalog/fresh/ws"),
        draft.to_string()
    );
    assert_eq!(synced.upstream.git(&["tag", "--list", "empty/*"]), "");
    // The scratch refs are gone; the mirror's refs follow at the next fetch.
    assert!(repo
        .references_glob("refs/cairn/*")
        .unwrap()
        .next()
        .is_none());
    synced.cache.fetch(&url, None).unwrap();
    let listed = synced.list("/");
    let fresh = listed
        .revisions
        .iter()
        .find(|r| r.package == "fresh")
        .expect("the draft is discovered");
    assert_eq!(
        (
            fresh.path.as_str(),
            fresh.workspace.as_str(),
            fresh.revision,
            fresh.lifecycle
        ),
        ("catalog", "ws", 0, Draft)
    );
    assert_eq!(
        fresh.resources.keys().collect::<Vec<_>>(),
        ["Kptfile", "config/cm.yaml"]
    );
    assert_eq!(
        synced.content(fresh, "config/cm.yaml"),
        b"kind: ConfigMap\n"
    );
    assert_eq!(
        fresh
            .tasks
            .iter()
            .map(|t| t.r#type.as_str())
            .collect::<Vec<_>>(),
        ["init"]
    );
    assert!(!listed
        .revisions
        .iter()
        .any(|r| r.package == "empty" && r.revision == 1));

    // Removing the package's only directory removes the emptied parent.
    let tree = repo.find_commit(draft).unwrap().tree_id();
    let without = write::with_subtree(&repo, Some(tree), "catalog/fresh", None).unwrap();
    assert!(repo
        .find_tree(without)
        .unwrap()
        .get_name("catalog")
        .is_none());
    assert_eq!(
        repo.find_tree(without).unwrap().len(),
        repo.find_commit(main).unwrap().tree().unwrap().len()
    );
}

#[test]
fn a_push_over_a_moved_branch_is_refused_and_a_declined_one_names_the_ref() {
    let upstream = Upstream::unpack("simple-repository");
    upstream.git(&["config", "core.bare", "true"]);
    let synced = Synced::new(upstream);
    let url = synced.upstream.url();
    let repo = git2::Repository::open_bare(synced.cache.mirror_path(&url)).unwrap();
    let main = repo.refname_to_id("refs/heads/main").unwrap();
    let files: Files = [("Kptfile".to_owned(), b"kind: Kptfile\n".to_vec())].into();
    let ours = package_commit(&repo, main, "late", &files, "ours\n");

    // Someone else moves main first: our commit is no fast-forward.
    let up = &synced.upstream;
    let tree = up.git(&["rev-parse", "main^{tree}"]);
    let theirs = up.git(&["commit-tree", &tree, "-p", "main", "-m", "theirs"]);
    up.git(&["update-ref", "refs/heads/main", &theirs]);
    let err = write::push_changes(
        &repo,
        &url,
        None,
        &[RefChange::Set {
            name: "refs/heads/main".into(),
            to: ours,
        }],
    )
    .unwrap_err();
    assert!(matches!(err, OriginError::Moved(_)), "{err:?}");
    assert_eq!(err.class(), "conflict");
    assert_eq!(up.commit("main"), theirs, "nothing of theirs is lost");

    // An upstream hook declines every push: rejected, nothing written.
    let hooks = up.git_dir().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let hook = hooks.join("pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho read-only >&2\nexit 1\n").unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .unwrap();
    let err = write::push_changes(
        &repo,
        &url,
        None,
        &[RefChange::Set {
            name: "refs/heads/drafts/late/ws".into(),
            to: ours,
        }],
    )
    .unwrap_err();
    assert!(matches!(err, OriginError::Rejected(_)), "{err:?}");
    assert!(
        err.to_string().contains("refs/heads/drafts/late/ws"),
        "{err}"
    );
    assert_eq!(up.git(&["branch", "--list", "drafts/*"]), "");
}

/// Pushes `changes`, fetches, and lists the mirror.
fn push_and_list(synced: &Synced, repo: &git2::Repository, changes: &[RefChange]) -> Discovery {
    let url = synced.upstream.url();
    write::push_changes(repo, &url, None, changes).unwrap();
    synced.cache.fetch(&url, None).unwrap();
    synced.list("/")
}

fn of<'a>(listed: &'a Discovery, package: &str) -> Vec<(i64, &'a str, Lifecycle, bool)> {
    listed
        .revisions
        .iter()
        .filter(|r| r.package == package)
        .map(|r| (r.revision, r.workspace.as_str(), r.lifecycle, r.latest))
        .collect()
}

#[test]
fn a_package_goes_through_its_lifecycle_as_porch_lays_it_out_in_git() {
    use cairn_actors::origin::lifecycle::{self, PackageRefs};
    let upstream = Upstream::unpack("simple-repository");
    upstream.git(&["config", "core.bare", "true"]);
    let synced = Synced::new(upstream);
    let up = &synced.upstream;
    let repo = git2::Repository::open_bare(synced.cache.mirror_path(&up.url())).unwrap();
    let head = |repo: &git2::Repository| repo.refname_to_id("refs/heads/main").unwrap();
    let refs = PackageRefs::new("/", "catalog", "fresh", "main");
    let author = Identity::of(&Author::new("Ada", "ada@example.com"), "", &Author::porch());
    let kptfile = b"apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: fresh\n".to_vec();
    let files: Files = [("Kptfile".to_owned(), kptfile.clone())].into();

    // Create, then update: a draft whose history is its init task (an
    // update records no task).
    let (draft, changes) = lifecycle::create_draft(
        &repo,
        &refs,
        head(&repo),
        "ws1",
        &files,
        r#"{"type":"init","init":{"description":"fresh"}}"#,
        &author,
    )
    .unwrap();
    let listed = push_and_list(&synced, &repo, &changes);
    assert_eq!(of(&listed, "fresh"), [(0, "ws1", Draft, false)]);
    let mut more = files.clone();
    more.insert("cm.yaml".into(), b"kind: ConfigMap\n".to_vec());
    let (draft, changes) =
        lifecycle::update_draft(&repo, &refs, draft, "ws1", &more, &author).unwrap();
    let listed = push_and_list(&synced, &repo, &changes);
    let fresh = listed
        .revisions
        .iter()
        .find(|r| r.package == "fresh")
        .unwrap();
    assert_eq!(
        fresh.resources.keys().collect::<Vec<_>>(),
        ["Kptfile", "cm.yaml"]
    );
    assert_eq!(
        fresh
            .tasks
            .iter()
            .map(|t| t.r#type.as_str())
            .collect::<Vec<_>>(),
        ["init"]
    );

    // Propose: the draft branch becomes the proposed branch.
    let listed = push_and_list(&synced, &repo, &lifecycle::propose(&refs, "ws1", draft));
    assert_eq!(of(&listed, "fresh"), [(0, "ws1", Proposed, false)]);
    assert_eq!(up.git(&["branch", "--list", "drafts/catalog/*"]), "");
    assert_eq!(up.commit("proposed/catalog/fresh/ws1"), draft.to_string());

    // Approve: one commit on main, tag v1 on it, the proposal gone.
    let before = head(&repo);
    let (approved, changes) =
        lifecycle::approve(&repo, &refs, before, draft, "ws1", 1, &author).unwrap();
    let listed = push_and_list(&synced, &repo, &changes);
    assert_eq!(
        of(&listed, "fresh"),
        [(-1, "main", Published, false), (1, "ws1", Published, true)]
    );
    assert_eq!(up.commit("main"), approved.to_string());
    assert_eq!(up.commit("catalog/fresh/v1"), approved.to_string());
    assert_eq!(up.git(&["rev-parse", "main^"]), before.to_string());
    assert_eq!(
        up.git(&["log", "-1", "--format=%B", "main"]),
        "Approving package revision catalog/fresh/1\n\n\
         kpt:{\"package\":\"catalog/fresh\",\"workspaceName\":\"ws1\",\"revision\":\"1\"}"
    );
    assert_eq!(
        up.git(&["log", "-1", "--format=%an <%ae>|%cn <%ce>", "main"]),
        "Ada <ada@example.com>|Package Orchestration Service <porch@kpt.dev>"
    );
    assert_eq!(up.git(&["branch", "--list", "proposed/*"]), "");
    // The rest of main is untouched.
    assert_eq!(
        up.git(&["diff", "--name-only", &before.to_string(), "main"]),
        "catalog/fresh/Kptfile\ncatalog/fresh/cm.yaml"
    );

    // Propose the deletion, withdraw it, propose again, delete.
    let listed = push_and_list(
        &synced,
        &repo,
        &lifecycle::propose_deletion(&refs, 1, approved),
    );
    assert_eq!(of(&listed, "fresh")[1], (1, "ws1", DeletionProposed, true));
    let listed = push_and_list(&synced, &repo, &lifecycle::withdraw_deletion(&refs, 1));
    assert_eq!(of(&listed, "fresh")[1], (1, "ws1", Published, true));
    push_and_list(
        &synced,
        &repo,
        &lifecycle::propose_deletion(&refs, 1, approved),
    );
    let listed = push_and_list(&synced, &repo, &lifecycle::delete_published(&refs, 1));
    assert_eq!(of(&listed, "fresh"), [(-1, "main", Published, false)]);
    assert_eq!(up.git(&["tag", "--list", "catalog/*"]), "");
    assert_eq!(up.git(&["branch", "--list", "deletionProposed/*"]), "");

    // And the placeholder: a commit removing the package from main.
    let (_, changes) =
        lifecycle::delete_placeholder(&repo, &refs, head(&repo), false, &author).unwrap();
    let listed = push_and_list(&synced, &repo, &changes);
    assert_eq!(of(&listed, "fresh"), []);
    assert_eq!(up.git(&["ls-tree", "main", "catalog"]), "");
    // Nothing else changed: simple-repository's eight revisions are there.
    assert_eq!(listed.revisions.len(), 8);
}
