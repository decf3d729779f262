//! Parity with Porch's rules (issue 14), one test per rule, each named
//! after the Porch test it mirrors, on a real node (real nats-server,
//! RocksDB, Git upstreams served as `file://`) against the Porch fixtures
//! and generated repositories, checked with the `git` CLI: refs, trees,
//! Kptfile content, commits.
//!
//! - `clone_from_upstream` (e2e `TestCloneFromUpstream`): a placeholder
//!   is no source; a clone's Kptfile is renamed and locked upstream.
//! - `edit_package_revision` (e2e `TestEditPackageRevision`): a new
//!   revision of an existing package is a copy of a published revision
//!   (task `edit`); a Draft is neither copied nor cloned.
//! - `validate_package_path_overlap` (`TestValidatePackagePathOverlap`,
//!   `TestCreateCloneTaskValidation`): `init`/`clone` of an existing
//!   package is refused.
//! - `lock` (`GitSuite.TestLock`): `pkgrev.get` shows where each revision
//!   is in Git.
//! - `find_upstream_reference` (`TestFindUpstreamReference`): a revision
//!   another one was cloned from is not deleted.
//! - `commit_with_user` (`TestCommitWithUser`), `commit_author`
//!   (`TestCommitAuthor`), `multiple_commit_authors`
//!   (`TestMultipleCommitAuthors`): the committer is the node (Porch's
//!   signature unless configured), the author the repository's
//!   `git.author`/`git.email`, else the principal, else the committer; the
//!   principal is in a `Cairn-Principal` trailer.
//! - `format_commit_message` (`TestFormatCommitMessage`): each command's
//!   commit message, byte for byte, as current Porch writes it.
//! - `delete_on_manually_moved_main_branch`
//!   (`TestDeleteOnManuallyMovedMainBranch`): deleting the placeholder
//!   after someone else moved the branch is re-applied on the new head.
//! - `push_retry_with_transient_error` (`TestPushRetryWithTransientError`):
//!   a push that fails transiently is tried again, `git.push-attempts`
//!   times in all.
//! - `approve_draft_with_history` (`GitSuite.TestApproveDraftWithHistory`):
//!   a draft whose commits are annotated init, eval, patch, eval reports
//!   one task, its init, before and after it is published (Porch's
//!   `loadTasks`); `an_upgrade_rediscovers_revisions_synced_under_older_rules`:
//!   a store synced under the older task rule is put right by the first
//!   sync after the upgrade, once.
//! - `package_metadata_from_kptfile` (e2e `TestPackageMetadataFromKptfile`):
//!   a revision shows its Kptfile's labels and annotations; `pkgrev.list`
//!   and watches filter on annotations (beyond Porch, whose selectors
//!   cover labels only).

use std::{path::Path, time::Duration};

use cairn_events::v1 as pb;
use cairn_storage::EventLog;
use cairn_tests::{GitFixture, TestDir, TestNode, TestNodeBuilder};
use prost::Message as _;
use serde_json::{json, Value};

async fn start(dir: &Path) -> TestNode {
    TestNodeBuilder::in_dir(&dir.join("node")).start().await
}

/// A bare repository with one commit on `main` (a README), cloned from the
/// work tree `dir/<name>-work`.
fn generated(dir: &Path, name: &str) -> GitFixture {
    let work = GitFixture::init(&dir.join(format!("{name}-work")), "main");
    work.write("README.md", format!("{name}\n")).commit("first");
    work.clone_bare(&dir.join(format!("{name}.git")))
}

/// The Porch fixture `fixture`, unpacked into `dir/<name>` as a bare
/// repository.
fn fixture(dir: &Path, fixture: &str, name: &str) -> GitFixture {
    GitFixture::porch(fixture, &dir.join(name)).into_bare()
}

async fn register_in(node: &TestNode, namespace: &str, name: &str, url: &str) {
    node.client()
        .ok(
            "repo.register",
            json!({"namespace": namespace, "name": name, "git": {"url": url}}),
        )
        .await;
}

async fn register(node: &TestNode, name: &str, url: &str) {
    register_in(node, "team-a", name, url).await;
}

fn key(name: &str) -> Value {
    json!({"namespace": "team-a", "name": name})
}

/// A `pkgrev.create` body in `team-a`.
fn create(repository: &str, package: &str, workspace: &str, extra: Value) -> Value {
    let mut body = json!({"namespace": "team-a", "repository": repository,
                          "package": package, "workspace": workspace});
    for (k, v) in extra.as_object().expect("an object") {
        body[k] = v.clone();
    }
    body
}

/// `pkgrev.create` of `body` refused with `code` and exactly `message`,
/// having written nothing: no event, no ref of `upstream` changed.
async fn refused(node: &TestNode, upstream: &GitFixture, body: Value, code: u16, message: &str) {
    let before = node.store().last_seq().unwrap();
    let refs = upstream.refs();
    let error = node
        .client()
        .call("pkgrev.create", body.clone())
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.body["message"].as_str().unwrap()),
        (code, message),
        "{body}"
    );
    assert_eq!(node.store().last_seq().unwrap(), before, "{body}");
    assert_eq!(upstream.refs(), refs, "{body}");
}

/// Proposes and approves `name`; the published revision.
async fn publish(node: &TestNode, name: &str) -> Value {
    node.client().ok("pkgrev.propose", key(name)).await;
    node.client().ok("pkgrev.approve", key(name)).await
}

/// The `Kptfile` of `package` at `rev` in `repo`, parsed.
fn kptfile(repo: &GitFixture, rev: &str, package: &str) -> serde_yaml::Mapping {
    let text = repo.git(&["show", &format!("{rev}:{package}/Kptfile")]);
    serde_yaml::from_str(&text).unwrap()
}

fn yaml(value: Value) -> serde_yaml::Value {
    serde_yaml::to_value(value).unwrap()
}

#[actix_rt::test]
async fn clone_from_upstream() {
    let dir = TestDir::new();
    let blueprints = fixture(dir.path(), "drafts-repository", "blueprints");
    let downstream = generated(dir.path(), "downstream");
    let node = start(dir.path()).await;
    register(&node, "blueprints", &blueprints.url()).await;
    register(&node, "downstream", &downstream.url()).await;

    // The placeholder (the package as it sits on main) is no source.
    refused(
        &node,
        &downstream,
        create(
            "downstream",
            "istions",
            "test-workspace",
            json!({"clone_from": "blueprints.basens.main"}),
        ),
        400,
        "clone_from: upstream revision may not be the placeholder package revision blueprints/blueprints.basens.main",
    )
    .await;

    // A published revision is.
    let draft = node
        .client()
        .ok(
            "pkgrev.create",
            create(
                "downstream",
                "istions",
                "test-workspace",
                json!({"clone_from": "blueprints.basens.v1"}),
            ),
        )
        .await;
    assert_eq!(
        (&draft["name"], &draft["lifecycle"], &draft["tasks"]),
        (
            &json!("downstream.istions.test-workspace"),
            &json!("Draft"),
            &json!([{"type": "clone", "clone": {"upstreamRef": {"upstreamRef": {"name": "blueprints.basens.v1"}}}}])
        )
    );
    let branch = "drafts/istions/test-workspace";
    assert_eq!(
        downstream.refs(),
        [format!("refs/heads/{branch}"), "refs/heads/main".into()]
    );
    assert_eq!(
        downstream.git(&["log", "-1", "--format=%B", branch]),
        "Creating new revision by cloning\n\n\n\
         kpt:{\"package\":\"istions\",\"workspaceName\":\"test-workspace\",\"revision\":\"0\",\"task\":{\"type\":\"clone\",\"clone\":{\"upstreamRef\":{\"upstreamRef\":{\"name\":\"blueprints.basens.v1\"}}}}}\n\
         Cairn-Principal: anonymous"
    );
    // Its Kptfile: renamed, and locked to basens/v1 of the blueprints, the
    // keys in kpt's order, the rest kept.
    let commit = blueprints.rev_parse("basens/v1^{commit}");
    assert_eq!(commit, "740397bf8f594b785f6802755945bd58a5e94192");
    let kpt = kptfile(&downstream, branch, "istions");
    let repo = blueprints.url();
    assert!(repo.ends_with("/.git"), "{repo}");
    assert_eq!(kpt["metadata"], yaml(json!({"name": "istions"})));
    assert_eq!(
        kpt["upstream"],
        yaml(
            json!({"type": "git", "git": {"repo": repo, "directory": "basens", "ref": "basens/v1"}})
        )
    );
    assert_eq!(
        kpt["upstreamLock"],
        yaml(
            json!({"type": "git", "git": {"repo": repo, "directory": "basens", "ref": "basens/v1", "commit": commit}})
        )
    );
    let source = kptfile(&blueprints, "basens/v1", "basens");
    assert_eq!(kpt["info"], source["info"]);
    assert_eq!(
        kpt.keys().map(|k| k.as_str().unwrap()).collect::<Vec<_>>(),
        [
            "apiVersion",
            "kind",
            "metadata",
            "upstream",
            "upstreamLock",
            "info"
        ]
    );
    // Every other file as it is upstream (same blobs).
    let blobs = |repo: &GitFixture, rev: &str, package: &str| {
        repo.git(&["ls-tree", "-r", &format!("{rev}:{package}")])
            .lines()
            .filter(|l| !l.ends_with("\tKptfile"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let files = blobs(&downstream, branch, "istions");
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files, blobs(&blueprints, "basens/v1", "basens"));
    // What the cache serves is what Git holds.
    let served = node
        .client()
        .resources("team-a", "downstream.istions.test-workspace")
        .await;
    assert_eq!(
        served["Kptfile"],
        downstream
            .git(&["show", &format!("{branch}:istions/Kptfile")])
            .into_bytes()
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<_>>()
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn edit_package_revision() {
    let dir = TestDir::new();
    let fresh = generated(dir.path(), "fresh");
    let drafts = fixture(dir.path(), "drafts-repository", "drafts");
    let node = start(dir.path()).await;
    register(&node, "fresh", &fresh.url()).await;
    register(&node, "drafts", &drafts.url()).await;
    node.client()
        .ok("pkgrev.create", create("fresh", "pkg", "ws1", json!({})))
        .await;
    node.client()
        .ok("pkgrev.create", create("fresh", "other", "ws1", json!({})))
        .await;
    publish(&node, "fresh.other.ws1").await;

    // Another package as the source: a clone into an existing package.
    refused(
        &node,
        &fresh,
        create("fresh", "pkg", "ws2", json!({"clone_from": "fresh.other.ws1"})),
        409,
        "`clone` cannot create a new revision for package \"pkg\" that already exists in repo \"fresh\"; make subsequent revisions by copying (clone_from a published revision of the same package)",
    )
    .await;
    // An unpublished source.
    refused(
        &node,
        &fresh,
        create(
            "fresh",
            "pkg",
            "ws2",
            json!({"clone_from": "fresh.pkg.ws1"}),
        ),
        409,
        "source revision must be published: fresh.pkg.ws1 is Draft",
    )
    .await;
    node.client()
        .ok("pkgrev.propose", key("fresh.pkg.ws1"))
        .await;
    refused(
        &node,
        &fresh,
        create(
            "fresh",
            "pkg",
            "ws2",
            json!({"clone_from": "fresh.pkg.ws1"}),
        ),
        409,
        "source revision must be published: fresh.pkg.ws1 is Proposed",
    )
    .await;
    node.client()
        .ok("pkgrev.approve", key("fresh.pkg.ws1"))
        .await;

    // Published: the copy is a draft with exactly one task, `edit`.
    let before = node.store().last_seq().unwrap();
    let copy = node
        .client()
        .ok(
            "pkgrev.create",
            create(
                "fresh",
                "pkg",
                "ws2",
                json!({"clone_from": "fresh.pkg.ws1"}),
            ),
        )
        .await;
    assert_eq!(
        (&copy["name"], &copy["lifecycle"], &copy["tasks"]),
        (
            &json!("fresh.pkg.ws2"),
            &json!("Draft"),
            &json!([{"type": "edit", "edit": {"sourceRef": {"name": "fresh.pkg.ws1"}}}])
        )
    );
    let (kinds, events) = node.client().events_after("fresh", before).await;
    assert_eq!(kinds, ["DraftCreated"]);
    assert_eq!(
        events[0]["event"]["draft_created"]["copied_from"],
        "fresh.pkg.ws1"
    );
    assert_eq!(events[0]["event"]["draft_created"].get("clone_from"), None);
    assert_eq!(
        fresh.git(&["log", "-1", "--format=%B", "drafts/pkg/ws2"]),
        "Creating new revision by copying previous revision\n\n\n\
         kpt:{\"package\":\"pkg\",\"workspaceName\":\"ws2\",\"revision\":\"0\",\"task\":{\"type\":\"edit\",\"edit\":{\"sourceRef\":{\"name\":\"fresh.pkg.ws1\"}}}}\n\
         Cairn-Principal: anonymous"
    );
    // Its files verbatim (the Kptfile untouched): the package's tree is the
    // published one's.
    assert_eq!(
        fresh.rev_parse("drafts/pkg/ws2:pkg"),
        fresh.rev_parse("pkg/v1:pkg")
    );
    // Published in turn, it is revision 2 of the package.
    let published = publish(&node, "fresh.pkg.ws2").await;
    assert_eq!(
        (&published["revision"], &published["latest"]),
        (&json!(2), &json!(true))
    );
    assert_eq!(fresh.git(&["tag", "--list", "pkg/*"]), "pkg/v1\npkg/v2");

    // The placeholder is no source.
    refused(
        &node,
        &fresh,
        create("fresh", "pkg", "ws3", json!({"clone_from": "fresh.pkg.main"})),
        400,
        "clone_from: source revision may not be the placeholder package revision fresh/fresh.pkg.main",
    )
    .await;
    // Nor is a Draft clonable (the fixture's bucket draft).
    refused(
        &node,
        &fresh,
        create(
            "fresh",
            "bucket",
            "ws1",
            json!({"clone_from": "drafts.bucket.v1"}),
        ),
        409,
        "upstream package \"drafts.bucket.v1\" must be published: it is Draft",
    )
    .await;
    node.shutdown().await;
}

#[actix_rt::test]
async fn validate_package_path_overlap() {
    let dir = TestDir::new();
    let simple = fixture(dir.path(), "simple-repository", "simple");
    let drafts = fixture(dir.path(), "drafts-repository", "drafts");
    let node = start(dir.path()).await;
    register(&node, "simple", &simple.url()).await;
    register(&node, "drafts", &drafts.url()).await;

    let exists = "package \"basens\" already exists in repository \"simple\"; make subsequent revisions by copying (clone_from a published revision of the same package)";
    // init, empty or with resources.
    for extra in [
        json!({}),
        json!({"resources": {"Kptfile": "kind: Kptfile\n"}}),
    ] {
        refused(
            &node,
            &simple,
            create("simple", "basens", "again", extra),
            409,
            exists,
        )
        .await;
    }
    // clone of another repository's revision.
    refused(
        &node,
        &simple,
        create("simple", "basens", "again", json!({"clone_from": "drafts.istions.v1"})),
        409,
        "`clone` cannot create a new revision for package \"basens\" that already exists in repo \"simple\"; make subsequent revisions by copying (clone_from a published revision of the same package)",
    )
    .await;
    // A package the repository holds only as a draft exists too.
    refused(
        &node,
        &drafts,
        create("drafts", "bucket", "again", json!({})),
        409,
        "package \"bucket\" already exists in repository \"drafts\"; make subsequent revisions by copying (clone_from a published revision of the same package)",
    )
    .await;

    // A new package is fine, and so is a copy of the existing one.
    let new = node
        .client()
        .ok("pkgrev.create", create("simple", "newpkg", "ws", json!({})))
        .await;
    assert_eq!(
        new["tasks"],
        json!([{"type": "init", "init": {"description": "newpkg description"}}])
    );
    let copy = node
        .client()
        .ok(
            "pkgrev.create",
            create(
                "simple",
                "basens",
                "again",
                json!({"clone_from": "simple.basens.v2"}),
            ),
        )
        .await;
    assert_eq!(copy["name"], "simple.basens.again");
    assert_eq!(
        simple.git(&["for-each-ref", "--format=%(refname)", "refs/heads/drafts"]),
        "refs/heads/drafts/basens/again\nrefs/heads/drafts/newpkg/ws"
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn lock() {
    let dir = TestDir::new();
    let drafts = fixture(dir.path(), "drafts-repository", "drafts");
    let url = drafts.url();
    let node = start(dir.path()).await;
    register(&node, "drafts", &url).await;
    let published = node
        .client()
        .ok(
            "pkgrev.list",
            json!({"namespace": "team-a", "repository": "drafts", "lifecycle": ["Published"]}),
        )
        .await;
    let mut refs = Vec::new();
    for item in published["items"].as_array().unwrap() {
        let name = item["name"].as_str().unwrap();
        let package = item["package"].as_str().unwrap();
        let got = node.client().ok("pkgrev.get", key(name)).await;
        let r#ref = match item["revision"].as_i64().unwrap() {
            -1 => "main".to_owned(),
            n => format!("{package}/v{n}"),
        };
        let commit = drafts.rev_parse(&format!("{ref}^{{commit}}"));
        assert_eq!(
            got["lock"],
            json!({"type": "git", "git": {"repo": url, "directory": package,
                                          "ref": r#ref, "commit": commit}}),
            "{name}"
        );
        assert_eq!(got["commit"], commit, "{name}");
        refs.push(r#ref);
    }
    refs.sort();
    assert_eq!(
        refs,
        [
            "basens/v1",
            "basens/v2",
            "empty/v1",
            "istions/v1",
            "istions/v2",
            "main",
            "main",
            "main"
        ]
    );
    // In protobuf, the same lock in `PackageRevisionRow.lock`.
    let reply = node
        .client()
        .call_proto(
            "pkgrev.get",
            pb::PkgRevKeyRequest {
                namespace: "team-a".into(),
                name: "drafts.basens.v2".into(),
            }
            .encode_to_vec(),
        )
        .await;
    let row = pb::PackageRevisionRow::decode(reply.payload).unwrap();
    assert_eq!(
        row.lock,
        Some(pb::Locator {
            r#type: "git".into(),
            git: Some(pb::GitLock {
                repo: url.clone(),
                directory: "basens".into(),
                r#ref: "basens/v2".into(),
                commit: drafts.rev_parse("basens/v2^{commit}"),
            }),
        })
    );
    // A draft lives on its branch.
    let draft = node
        .client()
        .ok("pkgrev.get", key("drafts.bucket.v1"))
        .await;
    assert_eq!(
        draft["lock"],
        json!({"type": "git", "git": {"repo": url, "directory": "bucket",
                                      "ref": "drafts/bucket/v1",
                                      "commit": drafts.rev_parse("drafts/bucket/v1")}})
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn find_upstream_reference() {
    let dir = TestDir::new();
    let up = fixture(dir.path(), "simple-repository", "up");
    let down = generated(dir.path(), "down");
    let node = start(dir.path()).await;
    register(&node, "up", &up.url()).await;
    register(&node, "down", &down.url()).await;
    // In another namespace, the same names: its references do not count.
    let other = generated(dir.path(), "other");
    register_in(&node, "team-b", "up", &up.url()).await;
    register_in(&node, "team-b", "down", &other.url()).await;
    node.client()
        .ok(
            "pkgrev.create",
            json!({"namespace": "team-b", "repository": "down", "package": "mine",
                   "workspace": "ws", "clone_from": "up.basens.v2"}),
        )
        .await;

    // A draft cloned from up.basens.v1 keeps it.
    node.client()
        .ok(
            "pkgrev.create",
            create(
                "down",
                "mybase",
                "ws",
                json!({"clone_from": "up.basens.v1"}),
            ),
        )
        .await;
    for name in ["up.basens.v1", "up.basens.v2"] {
        node.client().ok("pkgrev.propose-delete", key(name)).await;
    }
    let before = node.store().last_seq().unwrap();
    let error = node
        .client()
        .call("pkgrev.delete", key("up.basens.v1"))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.body["message"].as_str().unwrap()),
        (
            409,
            "cannot delete package revision up.basens.v1, it is referenced as upstream by: down.mybase.ws"
        )
    );
    assert_eq!(node.store().last_seq().unwrap(), before);
    assert_eq!(
        up.git(&["tag", "--list", "basens/*"]),
        "basens/v1\nbasens/v2"
    );
    assert_eq!(
        node.client().ok("pkgrev.get", key("up.basens.v1")).await["lifecycle"],
        "DeletionProposed"
    );

    // v2 is referenced only from team-b: deleted.
    let deleted = node.client().ok("pkgrev.delete", key("up.basens.v2")).await;
    assert_eq!(deleted, json!({"deleted": "up.basens.v2"}));
    assert_eq!(up.git(&["tag", "--list", "basens/*"]), "basens/v1");

    // Once the downstream is gone, v1 goes too.
    node.client()
        .ok("pkgrev.delete", key("down.mybase.ws"))
        .await;
    assert_eq!(down.refs(), ["refs/heads/main"]);
    let deleted = node.client().ok("pkgrev.delete", key("up.basens.v1")).await;
    assert_eq!(deleted, json!({"deleted": "up.basens.v1"}));
    assert_eq!(up.git(&["tag", "--list", "basens/*"]), "");
    node.shutdown().await;
}

/// Porch's committer signature, cairn's default committer.
const PORCH: &str = "Package Orchestration Service <porch@kpt.dev>";

/// `%an <%ae>|%cn <%ce>|<Cairn-Principal trailer>` of the commit `rev`
/// names.
fn signed(repo: &GitFixture, rev: &str) -> String {
    repo.git(&[
        "log",
        "-1",
        "--format=%an <%ae>|%cn <%ce>|%(trailers:key=Cairn-Principal,valueonly,separator=%x2C)",
        rev,
    ])
}

/// A `pkgrev.create` of an empty package `package` in `repository`, by
/// `principal` when there is one.
fn init(repository: &str, package: &str, workspace: &str, principal: Option<&str>) -> Value {
    let extra = match principal {
        Some(p) => json!({"principal": p}),
        None => json!({}),
    };
    create(repository, package, workspace, extra)
}

/// Proposes and approves `name` as `principal`; the published revision.
async fn publish_as(node: &TestNode, name: &str, principal: &str) -> Value {
    let body = json!({"namespace": "team-a", "name": name, "principal": principal});
    node.client().ok("pkgrev.propose", body.clone()).await;
    node.client().ok("pkgrev.approve", body).await
}

#[actix_rt::test]
async fn commit_with_user() {
    let dir = TestDir::new();
    let up = generated(dir.path(), "up");
    let node = start(dir.path()).await;
    register(&node, "up", &up.url()).await;

    // A principal, and no author on the repository: the principal authors,
    // Porch commits.
    let before = node.store().last_seq().unwrap();
    node.client()
        .ok(
            "pkgrev.create",
            init("up", "app", "ws", Some("ada@example.com")),
        )
        .await;
    assert_eq!(
        signed(&up, "drafts/app/ws"),
        format!("ada@example.com <ada@example.com>|{PORCH}|ada@example.com")
    );
    let (_, events) = node.client().events_after("up", before).await;
    assert_eq!(events[0]["principal"], "ada@example.com");
    let published = publish_as(&node, "up.app.ws", "bob").await;
    // (a principal without `@` is its own email, as Porch's user name)
    assert_eq!(signed(&up, "main"), format!("bob <bob>|{PORCH}|bob"));
    assert_eq!(published["published_by"], "bob");

    // No principal: Porch both authors and commits; the trailer says who
    // asked (no one).
    node.client()
        .ok("pkgrev.create", init("up", "anon", "ws", None))
        .await;
    assert_eq!(
        signed(&up, "drafts/anon/ws"),
        format!("{PORCH}|{PORCH}|anonymous")
    );

    // The committer is the node's to choose.
    let node = node
        .stop()
        .await
        .configure(|c| {
            c.git.committer_name = "cairn".into();
            c.git.committer_email = "cairn@example.com".into();
        })
        .start()
        .await;
    node.client()
        .ok(
            "pkgrev.create",
            init("up", "later", "ws", Some("ada@example.com")),
        )
        .await;
    assert_eq!(
        signed(&up, "drafts/later/ws"),
        "ada@example.com <ada@example.com>|cairn <cairn@example.com>|ada@example.com"
    );
    node.client()
        .ok("pkgrev.create", init("up", "later2", "ws", None))
        .await;
    assert_eq!(
        signed(&up, "drafts/later2/ws"),
        "cairn <cairn@example.com>|cairn <cairn@example.com>|anonymous"
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn commit_author() {
    let dir = TestDir::new();
    let up = generated(dir.path(), "up");
    let node = start(dir.path()).await;
    // Porch's table: (git.author, git.email) → the author of the commits
    // of a user `kubernetes-admin`, and the revision's published_by (the
    // author's email).
    for (i, (author, email, expected, by)) in [
        (
            "",
            "",
            "kubernetes-admin <kubernetes-admin>",
            json!("kubernetes-admin"),
        ),
        ("porch", "", "porch <>", Value::Null),
        (
            "",
            "porch@example.com",
            "porch@example.com <porch@example.com>",
            json!("porch@example.com"),
        ),
        (
            "porch",
            "porch@example.com",
            "porch <porch@example.com>",
            json!("porch@example.com"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let repository = format!("r{i}");
        node.client()
            .ok(
                "repo.register",
                json!({"namespace": "team-a", "name": repository,
                       "git": {"url": up.url(), "author": author, "email": email}}),
            )
            .await;
        let package = format!("package{i}");
        node.client()
            .ok(
                "pkgrev.create",
                init(&repository, &package, "v1", Some("kubernetes-admin")),
            )
            .await;
        let draft = format!("drafts/{package}/v1");
        let want = format!("{expected}|{PORCH}|kubernetes-admin");
        assert_eq!(signed(&up, &draft), want, "{author:?}/{email:?}");
        let published = publish_as(
            &node,
            &format!("{repository}.{package}.v1"),
            "kubernetes-admin",
        )
        .await;
        assert_eq!(signed(&up, "main"), want, "{author:?}/{email:?}");
        assert_eq!(
            up.git(&["log", "-1", "--format=%s", "main"]),
            format!("Approving package revision {package}/1")
        );
        assert_eq!(published["published_by"], by, "{author:?}/{email:?}");
    }
    node.shutdown().await;
}

#[actix_rt::test]
async fn multiple_commit_authors() {
    let dir = TestDir::new();
    let up = generated(dir.path(), "up");
    let node = start(dir.path()).await;
    for (name, author, email) in [
        ("repo1", "porch", "porch@example.com"),
        ("repo2", "hcrop", "hcrop@example.com"),
    ] {
        node.client()
            .ok(
                "repo.register",
                json!({"namespace": "team-a", "name": name,
                       "git": {"url": up.url(), "author": author, "email": email}}),
            )
            .await;
    }
    node.client()
        .ok("pkgrev.create", init("repo1", "package", "v1", None))
        .await;
    publish(&node, "repo1.package.v1").await;
    // The second registration reads it, and copies it (an `edit` task).
    node.client().ok("repo.sync", key("repo2")).await;
    let copy = node
        .client()
        .ok(
            "pkgrev.create",
            create(
                "repo2",
                "package",
                "v2",
                json!({"clone_from": "repo2.package.v1"}),
            ),
        )
        .await;
    assert_eq!(copy["tasks"][0]["type"], "edit");
    publish(&node, "repo2.package.v2").await;

    assert_eq!(
        up.git(&[
            "log",
            "--first-parent",
            "--format=%an <%ae>|%cn <%ce>|%s",
            "main"
        ]),
        format!(
            "hcrop <hcrop@example.com>|{PORCH}|Approving package revision package/2\n\
             porch <porch@example.com>|{PORCH}|Approving package revision package/1\n\
             Test <test@example.com>|Test <test@example.com>|first"
        )
    );
    // The drafts behind them (each approval's second parent).
    assert_eq!(
        up.git(&["log", "-1", "--format=%an <%ae>|%s", "package/v2^2"]),
        "hcrop <hcrop@example.com>|Creating new revision by copying previous revision"
    );
    assert_eq!(
        up.git(&["log", "-1", "--format=%an <%ae>|%s", "package/v1^2"]),
        "porch <porch@example.com>|Creating new empty revision"
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn format_commit_message() {
    let dir = TestDir::new();
    let up = generated(dir.path(), "up");
    let node = start(dir.path()).await;
    register(&node, "up", &up.url()).await;
    let ada = |mut body: Value| {
        body["principal"] = json!("ada@example.com");
        body
    };
    let message = |rev: &str| up.git(&["log", "-1", "--format=%B", rev]);

    // init
    let draft = node
        .client()
        .ok(
            "pkgrev.create",
            ada(create("up", "app", "ws1", json!({"path": "catalog"}))),
        )
        .await;
    assert_eq!(
        message("drafts/catalog/app/ws1"),
        "Creating new empty revision\n\n\n\
         kpt:{\"package\":\"catalog/app\",\"workspaceName\":\"ws1\",\"revision\":\"0\",\
         \"task\":{\"type\":\"init\",\"init\":{\"description\":\"catalog/app description\"}}}\n\
         Cairn-Principal: ada@example.com"
    );
    // update: no task, as Porch writes an update without one
    let kptfile = "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: app\n";
    node.client()
        .ok(
            "pkgrev.update",
            ada(json!({"namespace": "team-a", "name": "up.catalog.app.ws1",
                       "resources": {"Kptfile": kptfile},
                       "resource_version": draft["resource_version"]})),
        )
        .await;
    assert_eq!(
        message("drafts/catalog/app/ws1"),
        "Intermediate commit\n\n\n\
         kpt:{\"package\":\"catalog/app\",\"workspaceName\":\"ws1\",\"revision\":\"0\"}\n\
         Cairn-Principal: ada@example.com"
    );
    // approve: `"revision":"1"`, as current Porch writes it
    publish_as(&node, "up.catalog.app.ws1", "ada@example.com").await;
    assert_eq!(
        message("main"),
        "Approving package revision catalog/app/1\n\n\
         kpt:{\"package\":\"catalog/app\",\"workspaceName\":\"ws1\",\"revision\":\"1\"}\n\
         Cairn-Principal: ada@example.com"
    );
    // copy and clone
    node.client()
        .ok(
            "pkgrev.create",
            ada(create(
                "up",
                "app",
                "ws2",
                json!({"path": "catalog", "clone_from": "up.catalog.app.ws1"}),
            )),
        )
        .await;
    assert_eq!(
        message("drafts/catalog/app/ws2"),
        "Creating new revision by copying previous revision\n\n\n\
         kpt:{\"package\":\"catalog/app\",\"workspaceName\":\"ws2\",\"revision\":\"0\",\
         \"task\":{\"type\":\"edit\",\"edit\":{\"sourceRef\":{\"name\":\"up.catalog.app.ws1\"}}}}\n\
         Cairn-Principal: ada@example.com"
    );
    node.client()
        .ok(
            "pkgrev.create",
            ada(create(
                "up",
                "other",
                "ws",
                json!({"clone_from": "up.catalog.app.ws1"}),
            )),
        )
        .await;
    assert_eq!(
        message("drafts/other/ws"),
        "Creating new revision by cloning\n\n\n\
         kpt:{\"package\":\"other\",\"workspaceName\":\"ws\",\"revision\":\"0\",\
         \"task\":{\"type\":\"clone\",\"clone\":{\"upstreamRef\":{\"upstreamRef\":{\"name\":\"up.catalog.app.ws1\"}}}}}\n\
         Cairn-Principal: ada@example.com"
    );
    // delete the placeholder: no annotation
    let placeholder = ada(key("up.catalog.app.main"));
    node.client()
        .ok("pkgrev.propose-delete", placeholder.clone())
        .await;
    node.client().ok("pkgrev.delete", placeholder).await;
    assert_eq!(
        message("main"),
        "Delete catalog/app\n\nCairn-Principal: ada@example.com"
    );

    // A new registration reads what was written as it was recorded.
    register(&node, "again", &up.url()).await;
    let again = node
        .client()
        .ok("pkgrev.get", key("again.catalog.app.ws1"))
        .await;
    let recorded = node
        .client()
        .ok("pkgrev.get", key("up.catalog.app.ws1"))
        .await;
    assert_eq!(
        (
            &again["revision"],
            &again["workspace"],
            &again["tasks"],
            &again["published_by"]
        ),
        (
            &json!(1),
            &json!("ws1"),
            &recorded["tasks"],
            &json!("ada@example.com")
        )
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn delete_on_manually_moved_main_branch() {
    let dir = TestDir::new();
    let up = generated(dir.path(), "up");
    let node = start(dir.path()).await;
    register(&node, "up", &up.url()).await;
    node.client()
        .ok("pkgrev.create", init("up", "app", "ws", None))
        .await;
    publish(&node, "up.app.ws").await;
    let approved = up.rev_parse("main");

    // Someone else moves main with an unrelated commit.
    let other = up.clone_to(&dir.join("other"));
    other.write("other.txt", "theirs\n");
    let theirs = other.commit("Add new file");
    other.git(&["push", "-q", "origin", "main"]);
    assert_eq!(up.rev_parse("main^"), approved);

    node.client()
        .ok("pkgrev.propose-delete", key("up.app.main"))
        .await;
    let deleted = node.client().ok("pkgrev.delete", key("up.app.main")).await;
    assert_eq!(deleted, json!({"deleted": "up.app.main"}));
    // On top of theirs, which is kept; only app is gone.
    assert_eq!(up.rev_parse("main^"), theirs);
    assert_eq!(up.git(&["log", "-1", "--format=%s", "main"]), "Delete app");
    assert_eq!(
        up.git(&["ls-tree", "-r", "--name-only", "main"]),
        "README.md\nother.txt"
    );
    assert_eq!(up.refs(), ["refs/heads/main", "refs/tags/app/v1"]);
    let gone = node
        .client()
        .call("pkgrev.get", key("up.app.main"))
        .await
        .unwrap_err();
    assert_eq!(gone.code, 404);
    assert_eq!(
        node.client().ok("pkgrev.get", key("up.app.ws")).await["lifecycle"],
        "Published"
    );

    // Someone else already removed the package from main: nothing left to
    // commit (as Porch, no empty commit), only the deletion proposal goes.
    node.client()
        .ok("pkgrev.create", init("up", "app2", "ws", None))
        .await;
    publish(&node, "up.app2.ws").await;
    node.client()
        .ok("pkgrev.propose-delete", key("up.app2.main"))
        .await;
    other.git(&["pull", "-q", "origin", "main"]);
    other.git(&["rm", "-q", "-r", "app2"]);
    let removed = other.commit("Remove app2");
    other.git(&["push", "-q", "origin", "main"]);
    let deleted = node.client().ok("pkgrev.delete", key("up.app2.main")).await;
    assert_eq!(deleted, json!({"deleted": "up.app2.main"}));
    assert_eq!(up.rev_parse("main"), removed);
    assert_eq!(
        up.refs(),
        ["refs/heads/main", "refs/tags/app/v1", "refs/tags/app2/v1"]
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn push_retry_with_transient_error() {
    let dir = TestDir::new();
    let up = generated(dir.path(), "up");
    // The upstream declines the first push it sees (as a read-only moment
    // would), and counts every push.
    let calls = dir.join("hook-calls");
    let failed_once = dir.join("failed-once");
    let hook = up.git_dir().join("hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho x >> '{calls}'\n\
             [ -e '{failed}' ] || {{ touch '{failed}'; echo transient >&2; exit 1; }}\n",
            calls = calls.display(),
            failed = failed_once.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .unwrap();
    let builder = TestNodeBuilder::in_dir(&dir.join("node"))
        .configure(|c| c.git.push_retry_delay = Duration::from_millis(10));

    // One attempt only: the declined push is the answer.
    let node = builder.configure(|c| c.git.push_attempts = 1).start().await;
    register(&node, "up", &up.url()).await;
    refused(
        &node,
        &up,
        init("up", "app", "ws", None),
        409,
        "the upstream refused the change: refs/heads/drafts/app/ws: pre-receive hook declined",
    )
    .await;
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "x\n");

    // Three (the default): the second push goes through.
    std::fs::remove_file(&failed_once).unwrap();
    std::fs::remove_file(&calls).unwrap();
    let node = node
        .stop()
        .await
        .configure(|c| c.git.push_attempts = 3)
        .start()
        .await;
    let before = node.store().last_seq().unwrap();
    let draft = node
        .client()
        .ok("pkgrev.create", init("up", "app", "ws", None))
        .await;
    assert_eq!(
        (&draft["name"], &draft["lifecycle"]),
        (&json!("up.app.ws"), &json!("Draft"))
    );
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "x\nx\n");
    assert_eq!(up.refs(), ["refs/heads/drafts/app/ws", "refs/heads/main"]);
    assert_eq!(draft["commit"], up.rev_parse("drafts/app/ws"));
    // (the restarted node's own sync may run meanwhile)
    let (kinds, _) = node.client().events_after("up", before).await;
    let recorded: Vec<&String> = kinds.iter().filter(|k| !k.starts_with("Sync")).collect();
    assert_eq!(recorded, ["DraftCreated"]);
    node.shutdown().await;
}

/// The task types annotated (`kpt:` lines) on the commits of `rev`,
/// newest first.
fn annotated_tasks(repo: &GitFixture, rev: &str) -> Vec<String> {
    repo.git(&["log", "--format=%B", rev])
        .lines()
        .filter_map(|line| line.strip_prefix("kpt:"))
        .filter_map(|json| serde_json::from_str::<Value>(json).ok())
        .filter_map(|a| a["task"]["type"].as_str().map(str::to_owned))
        .collect()
}

#[actix_rt::test]
async fn approve_draft_with_history() {
    let dir = TestDir::new();
    // The unmodified fixture: its HEAD is the draft's branch.
    let up = GitFixture::porch("drafts-repository", &dir.join("upstream"));
    assert_eq!(
        up.git(&["symbolic-ref", "HEAD"]),
        "refs/heads/drafts/pkg-with-history/v1"
    );
    assert_eq!(
        annotated_tasks(&up, "drafts/pkg-with-history/v1"),
        ["eval", "patch", "eval", "init"]
    );
    let node = start(dir.path()).await;
    register(&node, "drafts", &up.url()).await;
    let init = json!([{"type": "init", "init": {"description": "sample description"}}]);

    // Porch's loadTasks: of init, eval, patch, eval only the task that
    // created the revision.
    let draft = node
        .client()
        .ok("pkgrev.get", key("drafts.pkg-with-history.v1"))
        .await;
    assert_eq!(
        (&draft["lifecycle"], &draft["tasks"]),
        (&json!("Draft"), &init)
    );
    assert!(up
        .refs()
        .contains(&"refs/heads/drafts/pkg-with-history/v1".to_owned()));
    assert!(!up
        .refs()
        .contains(&"refs/tags/pkg-with-history/v1".to_owned()));

    let published = publish(&node, "drafts.pkg-with-history.v1").await;
    assert_eq!(
        (
            &published["lifecycle"],
            &published["revision"],
            &published["tasks"]
        ),
        (&json!("Published"), &json!(1), &init)
    );
    let refs = up.refs();
    assert!(
        !refs
            .iter()
            .any(|r| r.starts_with("refs/heads/drafts/pkg-with-history/")
                || r.starts_with("refs/heads/proposed/pkg-with-history/")),
        "{refs:?}"
    );
    assert!(
        refs.contains(&"refs/tags/pkg-with-history/v1".to_owned()),
        "{refs:?}"
    );
    assert_eq!(
        up.rev_parse("refs/tags/pkg-with-history/v1"),
        up.rev_parse("refs/heads/main")
    );
    // The placeholder the approval made has no task history, as Porch
    // reads it from Git.
    let placeholder = node
        .client()
        .ok("pkgrev.get", key("drafts.pkg-with-history.main"))
        .await;
    assert_eq!(placeholder["tasks"], json!([]));

    // Read back from Git by a new registration: the same.
    register(&node, "again", &up.url()).await;
    let again = node
        .client()
        .ok("pkgrev.get", key("again.pkg-with-history.v1"))
        .await;
    assert_eq!((&again["revision"], &again["tasks"]), (&json!(1), &init));
    node.shutdown().await;
}

/// A repository synced by a node with older discovery rules (its rows as
/// those rules read them, its `SyncSucceeded.refs_digest` the fetched
/// refs' digest alone) is discovered again by the first sync after the
/// upgrade, though its refs did not change: the revisions the new rules
/// read differently (task history, Kptfile annotations) are `Modified`,
/// once; the next sync is a no-op again.
#[actix_rt::test]
async fn an_upgrade_rediscovers_revisions_synced_under_older_rules() {
    use cairn_events::envelope::{event, Metadata};
    use cairn_storage::{
        views::{default_views, PackageRevisionsView, RepositoriesView},
        ExpectedVersion, Store, StoreConfig,
    };

    let dir = TestDir::new();
    let up = GitFixture::porch("drafts-repository", &dir.join("upstream"));
    let node = start(dir.path()).await;
    register(&node, "drafts", &up.url()).await;
    let name = "drafts.pkg-with-history.v1";
    let now = node.client().ok("pkgrev.get", key(name)).await;
    let builder = node.stop().await;

    // What an older node recorded: the draft with its whole annotated
    // history and no Kptfile annotations, and the fetched digest (the old
    // rules' refs digest, as a fetch computes it).
    let fetched = cairn_actors::origin::GitCache::new(dir.join("mirrors"))
        .fetch(&up.url(), None)
        .unwrap()
        .digest;
    let store = Store::open(
        StoreConfig::new(cairn::config::store_dir(&dir.join("node"))),
        default_views(),
    )
    .unwrap();
    let mut old = PackageRevisionsView::get(&store, "team-a", name)
        .unwrap()
        .unwrap()
        .revision
        .unwrap();
    let new = old.clone();
    old.tasks = up
        .git(&[
            "log",
            "--reverse",
            "--format=%B",
            "drafts/pkg-with-history/v1",
        ])
        .lines()
        .filter_map(|line| line.strip_prefix("kpt:"))
        .filter_map(|json| serde_json::from_str::<Value>(json).ok())
        .map(|a| pb::Task {
            r#type: a["task"]["type"].as_str().unwrap().to_owned(),
            raw: a["task"].to_string(),
        })
        .collect();
    assert_eq!(old.tasks.len(), 4);
    assert_eq!(
        old.annotations,
        [(
            "config.kubernetes.io/local-config".to_owned(),
            "true".to_owned()
        )]
        .into()
    );
    old.annotations.clear();
    let status = RepositoriesView::get(&store, "team-a", "drafts")
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    let digest = status.refs_digest.clone();
    assert_ne!(digest, fetched, "the digest carries the rules version");
    let stream = cairn_events::StreamId::repository("team-a", "drafts").unwrap();
    let version = store.stream_version(&stream).unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::Exact(version),
            vec![
                event(pb::event::Payload::PackageRevisionModified(
                    pb::PackageRevisionModified {
                        revision: Some(old.clone()),
                    },
                )),
                event(pb::event::Payload::SyncSucceeded(pb::SyncSucceeded {
                    commit: status.commit.clone(),
                    package_count: status.package_count,
                    refs_digest: fetched.clone(),
                    ..Default::default()
                })),
            ],
            Metadata::command("older-node"),
        )
        .unwrap();
    let before = store.last_seq().unwrap();
    // The row as the older node left it (read here: once the node starts,
    // its start-up sync may put it right before any request).
    let stored = cairn_storage::views::PackageRevisionsView::get(&store, "team-a", name)
        .unwrap()
        .unwrap();
    assert_eq!(stored.revision.unwrap().tasks.len(), 4);
    drop(store);

    // Upgraded: the node's syncs (at start, and this one) rediscover the
    // unchanged upstream and put the row right, once.
    let node = builder.start().await;
    let client = node.client();
    client
        .ok(
            "repo.sync",
            json!({"namespace": "team-a", "name": "drafts"}),
        )
        .await;
    let (kinds, events) = client.events_after("drafts", before).await;
    let changes: Vec<(&str, &Value)> = kinds
        .iter()
        .zip(&events)
        .filter(|(k, _)| !k.starts_with("Sync"))
        .map(|(k, e)| (k.as_str(), e))
        .collect();
    assert_eq!(changes.len(), 1, "{kinds:?}");
    assert_eq!(changes[0].0, "PackageRevisionModified");
    let modified = &changes[0].1["event"]["package_revision_modified"]["revision"];
    assert_eq!(modified["name"], name);
    assert_eq!(
        modified["tasks"],
        json!([{"type": "init", "raw": new.tasks[0].raw}])
    );
    assert_eq!(
        modified["annotations"],
        json!({"config.kubernetes.io/local-config": "true"})
    );
    let last = events.last().unwrap();
    assert_eq!(
        last["event"]["sync_succeeded"]["refs_digest"].as_str(),
        Some(digest.as_str())
    );
    let after = client.ok("pkgrev.get", key(name)).await;
    assert_eq!(
        (&after["tasks"], &after["annotations"]),
        (&now["tasks"], &now["annotations"])
    );
    assert_eq!(
        now["annotations"],
        json!({"config.kubernetes.io/local-config": "true"})
    );

    // And the next sync has nothing to do.
    let before = node.store().last_seq().unwrap();
    client
        .ok(
            "repo.sync",
            json!({"namespace": "team-a", "name": "drafts"}),
        )
        .await;
    let (kinds, _) = client.events_after("drafts", before).await;
    assert_eq!(kinds, ["SyncStarted", "SyncSucceeded"]);
    node.shutdown().await;
}

/// A Kptfile with labels and annotations, as Porch's
/// `TestPackageMetadataFromKptfile` has them.
const ANNOTATED_KPTFILE: &str = "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  \
     name: meta\n  labels:\n    test-label: test-value\n  annotations:\n    \
     test-annotation: \"true\"\ninfo:\n  description: meta\n";

/// The next watch line that is not a heartbeat.
async fn watch_line(watch: &mut cairn_tests::Subscription) -> Value {
    loop {
        let line = watch.next_json().await;
        if line["type"] != "Heartbeat" {
            return line;
        }
    }
}

#[actix_rt::test]
async fn package_metadata_from_kptfile() {
    let dir = TestDir::new();
    let work = GitFixture::init(&dir.join("up-work"), "main");
    work.write("meta/Kptfile", ANNOTATED_KPTFILE);
    work.write(
        "plain/Kptfile",
        "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: plain\n  annotations:\n    \
         config.kubernetes.io/local-config: \"true\"\n",
    );
    work.commit("two packages");
    let up = work.clone_bare(&dir.join("up.git"));
    let node = start(dir.path()).await;
    register(&node, "up", &up.url()).await;
    let client = node.client();

    // get: the Kptfile's labels and annotations.
    let meta = client.ok("pkgrev.get", key("up.meta.main")).await;
    assert_eq!(
        (&meta["labels"], &meta["annotations"]),
        (
            &json!({"test-label": "test-value"}),
            &json!({"test-annotation": "true"})
        )
    );
    let plain = client.ok("pkgrev.get", key("up.plain.main")).await;
    assert_eq!(
        (&plain["labels"], &plain["annotations"]),
        (
            &json!({}),
            &json!({"config.kubernetes.io/local-config": "true"})
        )
    );

    // list: every pair must match (JSON and protobuf requests).
    let listed = |filter: Value| async move {
        let mut body = json!({"namespace": "team-a"});
        for (k, v) in filter.as_object().unwrap() {
            body[k] = v.clone();
        }
        let page = client.ok("pkgrev.list", body).await;
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(json!({"annotations": {"test-annotation": "true"}})).await,
        ["up.meta.main"]
    );
    let page = client
        .ok(
            "pkgrev.list",
            json!({"namespace": "team-a", "annotations": {"test-annotation": "true"}}),
        )
        .await;
    let mut listed_meta = meta.clone();
    listed_meta.as_object_mut().unwrap().remove("lock");
    assert_eq!(page["items"][0], listed_meta);
    assert_eq!(
        listed(json!({"annotations": {"test-annotation": "false"}})).await,
        Vec::<String>::new()
    );
    assert_eq!(
        listed(json!({"annotations": {"test-annotation": "true"},
                      "labels": {"test-label": "test-value"}}))
        .await,
        ["up.meta.main"]
    );
    assert_eq!(
        listed(json!({"annotations": {"test-annotation": "true",
                                      "config.kubernetes.io/local-config": "true"}}))
        .await,
        Vec::<String>::new()
    );
    assert_eq!(
        listed(json!({"annotations": {"test-label": "test-value"}})).await,
        Vec::<String>::new()
    );
    let request = pb::PkgRevListRequest {
        namespace: "team-a".into(),
        annotations: [("test-annotation".to_owned(), "true".to_owned())].into(),
        ..Default::default()
    };
    let reply = client
        .call_proto("pkgrev.list", request.encode_to_vec())
        .await;
    let page = pb::PkgRevList::decode(reply.payload).unwrap();
    let names: Vec<&str> = page
        .items
        .iter()
        .map(|i| i.revision.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["up.meta.main"]);
    assert_eq!(
        page.items[0].revision.as_ref().unwrap().annotations,
        [("test-annotation".to_owned(), "true".to_owned())].into()
    );

    // watch: the same filter, the listing then only what matches, and a
    // revision that loses the annotation leaves the filter (Deleted).
    let subject = client.new_inbox();
    let mut watch = client.subscribe(&subject).await;
    client
        .ok(
            "watch.start",
            json!({"filter": {"namespace": "team-a",
                              "annotations": {"test-annotation": "true"}},
                   "deliver_subject": subject, "heartbeat_ms": 60000}),
        )
        .await;
    let line = watch_line(&mut watch).await;
    assert_eq!(
        (&line["type"], &line["object"]["name"]),
        (&json!("Added"), &json!("up.meta.main"))
    );
    assert_eq!(watch_line(&mut watch).await["type"], "Bookmark");
    // Not annotated: not delivered (the next line is the next draft's).
    client
        .ok("pkgrev.create", create("up", "unmarked", "ws", json!({})))
        .await;
    let tagged = client
        .ok(
            "pkgrev.create",
            create(
                "up",
                "tagged",
                "ws",
                json!({"resources": {"Kptfile": ANNOTATED_KPTFILE.replace("name: meta", "name: tagged")}}),
            ),
        )
        .await;
    assert_eq!(tagged["annotations"], json!({"test-annotation": "true"}));
    let line = watch_line(&mut watch).await;
    assert_eq!(
        (&line["type"], &line["object"]["name"]),
        (&json!("Added"), &json!("up.tagged.ws"))
    );
    let untagged = ANNOTATED_KPTFILE
        .replace("name: meta", "name: tagged")
        .replace(
            "    test-annotation: \"true\"\n",
            "    test-annotation: \"no\"\n",
        );
    client
        .ok(
            "pkgrev.update",
            json!({"namespace": "team-a", "name": "up.tagged.ws",
                   "resources": {"Kptfile": untagged},
                   "resource_version": tagged["resource_version"]}),
        )
        .await;
    let line = watch_line(&mut watch).await;
    assert_eq!(
        (
            &line["type"],
            &line["object"]["name"],
            &line["object"]["annotations"]
        ),
        (
            &json!("Deleted"),
            &json!("up.tagged.ws"),
            &json!({"test-annotation": "no"})
        )
    );
    node.shutdown().await;
}
