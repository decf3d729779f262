//! Porch parity, robustness (Porch's own tests, replayed on a real node
//! with real repositories): branch names validated at registration,
//! concurrent deletes of one revision.

use std::os::unix::fs::PermissionsExt as _;

use cairn_storage::EventLog;
use cairn_tests::{git, unpack, GitFixture, TestDir, TestNodeBuilder};
use futures::StreamExt as _;
use serde_json::json;

/// Porch `GitSuite.TestOpenRepositoryBadBranchName`: a branch name Porch
/// cannot open is refused at registration (400 naming `git.branch`),
/// nothing recorded; the branches Porch's Git suite runs with are taken.
#[actix_rt::test]
async fn open_repository_bad_branch_name() {
    let dir = TestDir::new();
    let url = unpack("empty-repository", &dir.path().join("upstream"));
    let node = TestNodeBuilder::in_dir(&dir.join("node")).start().await;
    let register = |name: &str, branch: &str| json!({"namespace": "team-a", "name": name, "git": {"url": url, "branch": branch}, "wait": false});
    let before = node.store.last_seq().unwrap();
    let err = node
        .client()
        .call("repo.register", register("bad", "illegal$$$Characters"))
        .await
        .unwrap_err();
    assert_eq!(err.code, 400);
    assert_eq!(
        err.message,
        "git.branch: \"illegal$$$Characters\" is not a valid branch name (Porch's rule: without its '/', lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
    );
    assert_eq!(node.store.last_seq().unwrap(), before);
    let listed = node.client().ok("repo.list", json!({})).await;
    assert_eq!(listed["items"], json!([]));
    for (name, branch) in [("a", "main"), ("b", "feature"), ("c", "nested/release")] {
        let reply = node
            .client()
            .ok("repo.register", register(name, branch))
            .await;
        assert_eq!(reply["git"]["branch"], branch);
    }
    node.shutdown().await;
}

/// Porch e2e `TestConcurrentDeletes`: eight deletes of one draft at once —
/// one deletes it, the seven others are 409 "another request is already in
/// progress" (not 404 after the first finished). The upstream's
/// `pre-receive` hook holds the winner's push until the test has the
/// seven answers, so the race is decided, not timed.
#[actix_rt::test]
async fn concurrent_deletes() {
    let dir = TestDir::new();
    let work = GitFixture::init(&dir.join("work"), "main");
    work.write("README.md", "up\n").commit("first");
    let bare = work.clone_bare(&dir.join("up.git"));
    let node = TestNodeBuilder::in_dir(&dir.join("node")).start().await;
    let client = node.client().clone();
    client
        .ok(
            "repo.register",
            json!({"namespace": "team-a", "name": "up", "git": {"url": bare.url()}}),
        )
        .await;
    client
        .ok(
            "pkgrev.create",
            json!({"namespace": "team-a", "repository": "up", "package": "app", "workspace": "w1"}),
        )
        .await;
    // From now on a push waits (at most 60 s) for the release file.
    let release = dir.join("release");
    let hook = bare.path().join("hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nfor i in $(seq 600); do [ -e '{}' ] && exit 0; sleep 0.1; done\nexit 1\n",
            release.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();

    let key = json!({"namespace": "team-a", "name": "up.app.w1"});
    let mut deletes: futures::stream::FuturesUnordered<_> = (0..8)
        .map(|_| client.call("pkgrev.delete", key.clone()))
        .collect();
    for _ in 0..7 {
        let err = deletes.next().await.unwrap().unwrap_err();
        assert_eq!(err.code, 409, "{err}");
        assert_eq!(
            err.message,
            "another request is already in progress on package revision \"team-a/up.app.w1\""
        );
    }
    std::fs::write(&release, "").unwrap();
    let deleted = deletes.next().await.unwrap().unwrap();
    assert_eq!(deleted, json!({"deleted": "up.app.w1"}));
    assert_eq!(
        git(
            bare.path(),
            &["for-each-ref", "--format=%(refname)", "refs/heads/drafts"]
        ),
        ""
    );
    let gone = client.call("pkgrev.get", key).await.unwrap_err();
    assert_eq!(gone.code, 404);
    node.shutdown().await;
}

fn heads(upstream: &std::path::Path) -> String {
    git(
        upstream,
        &["for-each-ref", "--format=%(refname)", "refs/heads"],
    )
}

/// Porch `TestDeletePackages` / `TestApproveDraftWithHistory` on the
/// unmodified `drafts-repository`, whose `HEAD` is
/// `refs/heads/drafts/pkg-with-history/v1`: proposing that draft (which
/// deletes its branch, the upstream's current one) and deleting the
/// proposal work over `file://`; so does deleting the draft itself.
#[actix_rt::test]
async fn delete_packages_with_head_on_a_draft() {
    let dir = TestDir::new();
    let up = dir.join("upstream");
    let url = unpack("drafts-repository", &up);
    assert_eq!(
        git(&up, &["symbolic-ref", "HEAD"]).trim(),
        "refs/heads/drafts/pkg-with-history/v1"
    );
    let node = TestNodeBuilder::in_dir(&dir.join("node")).start().await;
    let client = node.client().clone();
    let registered = client
        .ok(
            "repo.register",
            json!({"namespace": "team-a", "name": "drafts", "git": {"url": url}}),
        )
        .await;
    assert_eq!(registered["status"]["package_count"], 11);
    let key = json!({"namespace": "team-a", "name": "drafts.pkg-with-history.v1"});
    let proposed = client.ok("pkgrev.propose", key.clone()).await;
    assert_eq!(proposed["lifecycle"], "Proposed");
    let refs = heads(&up);
    assert!(
        refs.contains("refs/heads/proposed/pkg-with-history/v1"),
        "{refs}"
    );
    assert!(
        !refs.contains("refs/heads/drafts/pkg-with-history/v1"),
        "{refs}"
    );
    assert_eq!(
        client.ok("pkgrev.delete", key.clone()).await,
        json!({"deleted": "drafts.pkg-with-history.v1"})
    );
    assert!(!heads(&up).contains("pkg-with-history"), "{}", heads(&up));
    let synced = client
        .ok(
            "repo.sync",
            json!({"namespace": "team-a", "name": "drafts"}),
        )
        .await;
    assert_eq!(synced["status"]["package_count"], 10, "{synced}");
    node.shutdown().await;

    // The draft itself, the upstream's current branch, deleted directly.
    let dir = TestDir::new();
    let up = dir.join("upstream");
    let url = unpack("drafts-repository", &up);
    let node = TestNodeBuilder::in_dir(&dir.join("node")).start().await;
    node.client()
        .ok(
            "repo.register",
            json!({"namespace": "team-a", "name": "drafts", "git": {"url": url}}),
        )
        .await;
    assert_eq!(
        node.client().ok("pkgrev.delete", key).await,
        json!({"deleted": "drafts.pkg-with-history.v1"})
    );
    assert!(!heads(&up).contains("pkg-with-history"), "{}", heads(&up));
    node.shutdown().await;
}
