//! Porch parity, robustness (Porch's own tests, replayed on a real node
//! with real repositories): branch names validated at registration,
//! concurrent deletes of one revision.

use cairn_storage::EventLog;
use cairn_tests::{unpack, TestDir, TestNodeBuilder};
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
