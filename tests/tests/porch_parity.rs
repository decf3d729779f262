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

use std::path::Path;

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
        "Intermediate commit: clone\n\n\
         kpt:{\"package\":\"istions\",\"workspaceName\":\"test-workspace\",\"revision\":\"test-workspace\",\"task\":{\"type\":\"clone\",\"clone\":{\"upstreamRef\":{\"upstreamRef\":{\"name\":\"blueprints.basens.v1\"}}}}}"
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
        "Intermediate commit: edit\n\n\
         kpt:{\"package\":\"pkg\",\"workspaceName\":\"ws2\",\"revision\":\"ws2\",\"task\":{\"type\":\"edit\",\"edit\":{\"sourceRef\":{\"name\":\"fresh.pkg.ws1\"}}}}"
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
    assert_eq!(new["tasks"], json!([{"type": "init", "init": {}}]));
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
