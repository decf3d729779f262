//! Names that become Git refs and tree entries, on a real node against
//! `file://` upstreams checked with the `git` CLI: a package path too long
//! for a ref is a 400 naming `path` with nothing pushed; a ref at the
//! length limit is written and one byte more is refused; resource paths
//! Git refuses (`.git` in any case, and its NTFS/HFS aliases) are 400s
//! naming the path; a command that fails after its push says what it
//! pushed, records nothing, and the next sync records what was pushed.

use std::path::Path;

use cairn_storage::EventLog;
use cairn_tests::{GitFixture, TestDir, TestNode, TestNodeBuilder};
use serde_json::{json, Value};

async fn start(dir: &Path) -> TestNode {
    TestNodeBuilder::in_dir(&dir.join("node")).start().await
}

/// A bare repository with one commit on `main` (a README), cloned from the
/// work tree `dir/work`.
fn fresh_upstream(dir: &Path) -> GitFixture {
    let work = GitFixture::init(&dir.join("work"), "main");
    work.write("README.md", "fresh\n").commit("first");
    work.clone_bare(&dir.join("up.git"))
}

/// Registers `up` as `team-a/fresh` with `directory`.
async fn register(node: &TestNode, up: &GitFixture, directory: &str) {
    node.client()
        .ok(
            "repo.register",
            json!({"namespace": "team-a", "name": "fresh",
                   "git": {"url": up.url(), "directory": directory}}),
        )
        .await;
}

fn create(path: &str, package: &str, workspace: &str) -> Value {
    json!({"namespace": "team-a", "repository": "fresh", "path": path,
           "package": package, "workspace": workspace})
}

/// The names of the package revisions of `fresh`, sorted.
async fn listed(node: &TestNode) -> Vec<String> {
    let list = node
        .client()
        .ok("pkgrev.list", json!({"repository": "fresh"}))
        .await;
    let mut names: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[actix_rt::test]
async fn a_path_too_long_for_a_ref_is_refused_naming_path_and_nothing_is_pushed() {
    let dir = TestDir::new();
    let up = fresh_upstream(dir.path());
    let node = start(dir.path()).await;
    register(&node, &up, "/").await;
    let before = node.store.last_seq().unwrap();
    let refs = up.refs();

    // 2,000 segments: the draft's ref would be 4,024 bytes.
    let path = vec!["t"; 2000].join("/");
    let error = node
        .client()
        .call("pkgrev.create", create(&path, "lp2", "w1"))
        .await
        .unwrap_err();
    assert_eq!(error.code, 400, "{error}");
    let name = format!("fresh.{}.lp2.w1", vec!["t"; 2000].join("."));
    assert_eq!(name.len(), 4012);
    assert_eq!(
        error.message,
        format!("path: the object name {name} would be 4012 bytes, more than Porch allows (253: a Kubernetes object name)")
    );
    // Nothing pushed (checked with the git CLI), nothing recorded, and a
    // sync finds nothing new.
    assert_eq!(up.refs(), refs);
    assert_eq!(up.refs(), ["refs/heads/main"]);
    assert_eq!(node.store.last_seq().unwrap(), before);
    let synced = node
        .client()
        .ok("repo.sync", json!({"namespace": "team-a", "name": "fresh"}))
        .await;
    assert_eq!(synced["sync"]["added"], 0, "{synced}");
    assert_eq!(listed(&node).await, Vec::<String>::new());
    node.shutdown().await;
}

/// The longest ref a package revision's lifecycle writes for a workspace
/// longer than 28 bytes: its proposal, `refs/heads/proposed/<full path>/<workspace>`.
fn proposal_ref(directory: &str, package: &str, workspace: &str) -> String {
    format!("refs/heads/proposed/{directory}/{package}/{workspace}")
}

#[actix_rt::test]
async fn a_ref_at_the_length_limit_is_written_and_one_byte_more_is_refused() {
    let dir = TestDir::new();
    let up = fresh_upstream(dir.path());
    let node = start(dir.path()).await;
    // The package's object name stays short (Porch's 253); the registered
    // directory makes its refs long.
    let package = "p".repeat(90);
    let workspace = "w".repeat(120);
    let fixed = proposal_ref("", &package, &workspace).len();
    let directory_len = 1023 - fixed;
    let mut segments = Vec::new();
    let mut left = directory_len;
    while left > 0 {
        // Segments of at most 200 bytes, separated by '/'.
        let take = left.min(200);
        segments.push("d".repeat(take));
        left -= take;
        left = left.saturating_sub(1);
    }
    let directory = segments.join("/");
    let directory = if directory.len() < directory_len {
        // (the last separator had no segment after it: pad the last one)
        format!("{directory}d")
    } else {
        directory
    };
    assert_eq!(directory.len(), directory_len);
    register(&node, &up, &directory).await;
    let at_limit = proposal_ref(&directory, &package, &workspace);
    assert_eq!(at_limit.len(), 1023);

    // At the limit: created, and proposed (its longest ref is written).
    let name = format!("fresh.{package}.{workspace}");
    let draft = node
        .client()
        .ok("pkgrev.create", create("", &package, &workspace))
        .await;
    assert_eq!(draft["name"], name);
    let proposed = node
        .client()
        .ok(
            "pkgrev.propose",
            json!({"namespace": "team-a", "name": name}),
        )
        .await;
    assert_eq!(proposed["lifecycle"], "Proposed");
    assert_eq!(up.refs(), ["refs/heads/main", at_limit.as_str()]);

    // One byte more: refused, naming the longest field, nothing pushed.
    let before = node.store.last_seq().unwrap();
    let longer = format!("{workspace}x");
    let error = node
        .client()
        .call("pkgrev.create", create("", &package, &longer))
        .await
        .unwrap_err();
    assert_eq!(error.code, 400, "{error}");
    assert_eq!(
        error.message,
        format!(
            "workspace: the ref {} would be 1024 bytes, more than 1023 (refs longer than that cannot be stored by libgit2, GIT_REFNAME_MAX)",
            proposal_ref(&directory, &package, &longer)
        )
    );
    assert_eq!(up.refs(), ["refs/heads/main", at_limit.as_str()]);
    assert_eq!(node.store.last_seq().unwrap(), before);
    node.shutdown().await;
}

#[actix_rt::test]
async fn resource_paths_git_refuses_are_400s_naming_the_path_and_nothing_is_pushed() {
    let dir = TestDir::new();
    let up = fresh_upstream(dir.path());
    let node = start(dir.path()).await;
    register(&node, &up, "/").await;
    let before = node.store.last_seq().unwrap();
    let with = |path: &str| {
        let mut body = create("", "app", "ws");
        body["resources"] = json!({ path: "x: 1\n" });
        body
    };
    let dotgit = "Git's own directory";
    for (path, segment, why) in [
        (".GIT/config", ".GIT", format!("{dotgit}, in any case")),
        (".Git/x", ".Git", format!("{dotgit}, in any case")),
        (".git", ".git", format!("{dotgit}, in any case")),
        (".GiT", ".GiT", format!("{dotgit}, in any case")),
        ("x/.git/y", ".git", format!("{dotgit}, in any case")),
        (
            ".git./x",
            ".git.",
            format!("{dotgit} on NTFS, which drops trailing dots and spaces"),
        ),
        (
            ".git /x",
            ".git ",
            format!("{dotgit} on NTFS, which drops trailing dots and spaces"),
        ),
        (
            ".git::$INDEX_ALLOCATION/x",
            ".git::$INDEX_ALLOCATION",
            format!("{dotgit} on NTFS: a stream of it"),
        ),
        (
            "git~1/config",
            "git~1",
            format!("{dotgit} on NTFS: its 8.3 short name"),
        ),
        (
            "GIT~1",
            "GIT~1",
            format!("{dotgit} on NTFS: its 8.3 short name"),
        ),
        (
            "x\\.git",
            "x\\.git",
            format!("{dotgit} on NTFS, where \\ separates directories"),
        ),
        (
            ".g\u{200c}it/x",
            ".g\u{200c}it",
            format!("{dotgit} on HFS+, which ignores some Unicode code points"),
        ),
    ] {
        let error = node
            .client()
            .call("pkgrev.create", with(path))
            .await
            .unwrap_err();
        assert_eq!(error.code, 400, "{path:?}: {error}");
        assert_eq!(
            error.message,
            format!("resources[{path:?}]: {path:?} must not contain {segment:?} ({why})"),
            "{path:?}"
        );
    }
    // A file and a directory of one name.
    let mut body = create("", "app", "ws");
    body["resources"] = json!({"a": "x", "a/b": "y"});
    let error = node.client().call("pkgrev.create", body).await.unwrap_err();
    assert_eq!(error.code, 400, "{error}");
    assert_eq!(
        error.message,
        "resources[\"a/b\"]: \"a/b\" is below the file \"a\""
    );
    assert_eq!(node.store.last_seq().unwrap(), before);
    assert_eq!(up.refs(), ["refs/heads/main"]);

    // Names that only look alike are files like any other.
    let mut body = create("", "app", "ws");
    body["resources"] =
        json!({".github/ci.yaml": "a", ".gitignore": "b", "git~1x": "c", ".gitx/y": "d"});
    node.client().ok("pkgrev.create", body).await;
    assert_eq!(
        up.git(&["ls-tree", "-r", "--name-only", "drafts/app/ws"]),
        "README.md\napp/.github/ci.yaml\napp/.gitignore\napp/.gitx/y\napp/Kptfile\napp/git~1x"
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn a_failure_after_the_push_says_what_was_pushed_and_the_next_sync_records_it() {
    let dir = TestDir::new();
    let up = fresh_upstream(dir.path());
    // A branch `drafts/app` the node's mirror will hold...
    up.git(&["branch", "drafts/app", "main"]);
    let node = start(dir.path()).await;
    register(&node, &up, "/").await;
    // ...deleted upstream since: the upstream takes `drafts/app/ws`, the
    // mirror (which still has `drafts/app`) cannot set it after the push.
    up.git(&["branch", "-D", "drafts/app"]);
    let before = node.store.last_seq().unwrap();
    let error = node
        .client()
        .call("pkgrev.create", create("", "app", "ws"))
        .await
        .unwrap_err();
    let commit = up.rev_parse("refs/heads/drafts/app/ws");
    assert_eq!(error.code, 500, "{error}");
    assert_eq!(
        error.message,
        format!(
            "pushed refs/heads/drafts/app/ws at {commit} to the upstream, but recording it failed: \
             setting the mirror's refs: git: path to reference 'refs/heads/drafts/app/ws' collides with existing one; \
             the next sync of the repository will record it"
        )
    );
    assert_eq!(up.refs(), ["refs/heads/drafts/app/ws", "refs/heads/main"]);
    assert_eq!(node.store.last_seq().unwrap(), before, "nothing recorded");

    // The next sync records the draft that was pushed.
    let synced = node
        .client()
        .ok("repo.sync", json!({"namespace": "team-a", "name": "fresh"}))
        .await;
    assert_eq!(synced["sync"]["added"], 1, "{synced}");
    let draft = node
        .client()
        .ok(
            "pkgrev.get",
            json!({"namespace": "team-a", "name": "fresh.app.ws"}),
        )
        .await;
    assert_eq!(
        (&draft["lifecycle"], &draft["commit"]),
        (&json!("Draft"), &json!(commit))
    );
    assert_eq!(listed(&node).await, ["fresh.app.ws"]);
    node.shutdown().await;
}

#[actix_rt::test]
async fn a_command_whose_ref_would_be_too_long_is_refused_before_its_push() {
    let dir = TestDir::new();
    // A draft written by someone else (Porch, the git CLI) whose ref is
    // 1022 bytes: its proposal's ref would be 1024.
    let work = GitFixture::init(&dir.path().join("work"), "main");
    work.write("README.md", "fresh\n").commit("first");
    let draft_len = 1022;
    let fixed = "refs/heads/drafts//pkg/ws".len();
    let segments: Vec<String> = (0..4).map(|i| format!("{i}").repeat(200)).collect();
    let mut directory = segments.join("/");
    directory.push('/');
    directory.push_str(&"e".repeat(draft_len - fixed - directory.len()));
    let draft_ref = format!("refs/heads/drafts/{directory}/pkg/ws");
    assert_eq!(draft_ref.len(), draft_len);
    work.git(&[
        "checkout",
        "-q",
        "-b",
        &format!("drafts/{directory}/pkg/ws"),
    ]);
    work.write(
        &format!("{directory}/pkg/Kptfile"),
        "kind: Kptfile\nmetadata:\n  name: pkg\n",
    );
    work.commit("draft");
    work.git(&["checkout", "-q", "main"]);
    let up = work.clone_bare(&dir.path().join("up.git"));
    let refs = up.refs();
    assert_eq!(refs, [draft_ref.as_str(), "refs/heads/main"]);
    let node = start(dir.path()).await;
    register(&node, &up, &directory).await;
    assert_eq!(listed(&node).await, ["fresh.pkg.ws"]);

    let before = node.store.last_seq().unwrap();
    let error = node
        .client()
        .call(
            "pkgrev.propose",
            json!({"namespace": "team-a", "name": "fresh.pkg.ws"}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code, 409, "{error}");
    assert_eq!(
        error.message,
        format!(
            "the command needs a ref Git cannot take: the ref refs/heads/proposed/{directory}/pkg/ws would be 1024 bytes, more than 1023 (refs longer than that cannot be stored by libgit2, GIT_REFNAME_MAX)"
        )
    );
    assert_eq!(up.refs(), refs, "nothing pushed");
    assert_eq!(node.store.last_seq().unwrap(), before, "nothing recorded");
    node.shutdown().await;
}

#[actix_rt::test]
async fn names_that_become_refs_or_commit_authors_are_400s_naming_the_field() {
    let dir = TestDir::new();
    let up = fresh_upstream(dir.path());
    let node = start(dir.path()).await;
    register(&node, &up, "/").await;
    let before = node.store.last_seq().unwrap();
    let mut principal = create("", "app", "ws");
    principal["principal"] = json!("Ada <ada@example.com>");
    for (body, message) in [
        (
            create("", "app", "a..b"),
            "workspace: refs/heads/drafts/app/a..b is not a valid Git ref name (see git check-ref-format)",
        ),
        (
            create("x..y", "app", "ws"),
            "path: refs/heads/drafts/x..y/app/ws is not a valid Git ref name (see git check-ref-format)",
        ),
        (
            principal,
            "principal: \"Ada <ada@example.com>\" must not contain '<' or '>' (they delimit the email in a Git commit)",
        ),
    ] {
        let error = node
            .client()
            .call("pkgrev.create", body.clone())
            .await
            .unwrap_err();
        assert_eq!(error.code, 400, "{body}: {error}");
        assert_eq!(error.message, message, "{body}");
    }
    // A registration whose commits Git could not sign, or whose branch
    // is no ref.
    for (git, message) in [
        (
            json!({"url": up.url(), "author": "x\ny"}),
            "git.author: \"x\\ny\" must not contain control characters",
        ),
        (
            json!({"url": up.url(), "email": "<>"}),
            "git.email: \"<>\" must not contain '<' or '>' (they delimit the email in a Git commit)",
        ),
        (
            json!({"url": up.url(), "branch": "release.lock/x", "create_branch": true}),
            "git.branch: \"release.lock/x\" is not a valid branch name: refs/heads/release.lock/x is not a valid Git ref name (see git check-ref-format)",
        ),
    ] {
        let error = node
            .client()
            .call(
                "repo.register",
                json!({"namespace": "team-a", "name": "other", "git": git}),
            )
            .await
            .unwrap_err();
        assert_eq!(error.code, 400, "{git}: {error}");
        assert_eq!(error.message, message, "{git}");
    }
    assert_eq!(node.store.last_seq().unwrap(), before);
    assert_eq!(up.refs(), ["refs/heads/main"]);
    node.shutdown().await;
}
