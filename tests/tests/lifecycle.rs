//! Lifecycle commands on a real node (real nats-server, RocksDB, Git
//! upstreams served as `file://` and checked with the `git` CLI): create,
//! update, propose, reject, approve, deletion; what lands in Git, in the
//! log and in the views; a second registration reading the same; numbering
//! on the Porch fixtures; an upstream that moves or refuses; racing
//! updates; bad input.

use std::path::Path;

use cairn_storage::EventLog;
use cairn_tests::{
    cairn_cli, Account, Client, GitFixture, NatsServer, NatsServerConfig, ServiceError, TestDir,
    TestNode, TestNodeBuilder,
};
use serde_json::{json, Value};

/// A node with data in `dir/node` and resources of at most 1 KiB.
fn builder(dir: &Path) -> TestNodeBuilder {
    TestNodeBuilder::in_dir(&dir.join("node")).configure(|c| c.service.resource_max_bytes = 1024)
}

async fn start(dir: &Path) -> TestNode {
    builder(dir).start().await
}

/// A bare repository with one commit on `main` (a README), cloned from the
/// work tree `dir/work`; the bare one and its `file://` URL.
fn fresh_upstream(dir: &Path) -> (GitFixture, String) {
    let work = GitFixture::init(&dir.join("work"), "main");
    work.write("README.md", "fresh\n").commit("first");
    let bare = work.clone_bare(&dir.join("up.git"));
    let url = bare.url();
    (bare, url)
}

async fn register(node: &TestNode, name: &str, url: &str) {
    node.client()
        .ok(
            "repo.register",
            json!({"namespace": "team-a", "name": name, "git": {"url": url}}),
        )
        .await;
}

fn key(name: &str) -> Value {
    json!({"namespace": "team-a", "name": name})
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

/// `(type, revision name)` of each event.
fn named(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            let body = e["event"].as_object().unwrap().values().next().unwrap();
            let name = body["revision"]["name"]
                .as_str()
                .or(body["name"].as_str())
                .unwrap_or_default();
            (e["type"].as_str().unwrap().to_owned(), name.to_owned())
        })
        .collect()
}

/// Runs `endpoint` on `body`; the reply and the events of repository
/// `repo` it recorded.
async fn command(node: &TestNode, repo: &str, endpoint: &str, body: Value) -> (Value, Vec<Value>) {
    let before = node.store.last_seq().unwrap();
    let reply = node.client().ok(endpoint, body).await;
    let (_, events) = node.client().events_after(repo, before).await;
    (reply, events)
}

fn task_types(revision: &Value) -> Vec<&str> {
    revision["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect()
}

#[actix_rt::test]
async fn a_round_trip_writes_what_porch_writes_and_reads_back_the_same() {
    let dir = TestDir::new();
    let (bare, url) = fresh_upstream(dir.path());
    let first = bare.git(&["rev-parse", "main"]);
    let node = start(dir.path()).await;
    register(&node, "fresh", &url).await;
    let name = "fresh.catalog.app.ws1";

    // Create: an empty draft (a Kptfile), one commit on main, on its branch.
    let (draft, events) = command(
        &node,
        "fresh",
        "pkgrev.create",
        json!({"namespace": "team-a", "repository": "fresh", "path": "catalog",
               "package": "app", "workspace": "ws1", "principal": "ada@example.com"}),
    )
    .await;
    assert_eq!(
        (
            &draft["name"],
            &draft["lifecycle"],
            &draft["revision"],
            &draft["path"]
        ),
        (&json!(name), &json!("Draft"), &json!(0), &json!("catalog"))
    );
    assert_eq!(named(&events), [("DraftCreated".into(), name.into())]);
    assert_eq!(events[0]["principal"], "ada@example.com");
    let correlation = events[0]["correlation_id"].as_str().unwrap();
    assert_eq!(correlation.len(), 36, "a UUID: {correlation}");
    assert_eq!(
        events[0]["event"]["draft_created"]["revision"]["commit"],
        draft["commit"]
    );
    assert_eq!(
        bare.refs(),
        ["refs/heads/drafts/catalog/app/ws1", "refs/heads/main"]
    );
    assert_eq!(
        bare.git(&["log", "-1", "--format=%B", "drafts/catalog/app/ws1"]),
        "Creating new empty revision\n\n\n\
         kpt:{\"package\":\"catalog/app\",\"workspaceName\":\"ws1\",\"revision\":\"0\",\"task\":{\"type\":\"init\",\"init\":{\"description\":\"catalog/app description\"}}}\n\
         Cairn-Principal: ada@example.com"
    );
    assert_eq!(bare.git(&["rev-parse", "drafts/catalog/app/ws1^"]), first);
    assert_eq!(
        bare.git(&["ls-tree", "-r", "--name-only", "drafts/catalog/app/ws1"]),
        "README.md\ncatalog/app/Kptfile"
    );

    // Update, guarded by resource_version: a stale one is refused.
    let kptfile =
        "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: app\n  labels:\n    tier: web\n";
    let resources = json!({"Kptfile": kptfile, "deploy/cm.yaml": "kind: ConfigMap\n"});
    let (updated, events) = command(
        &node,
        "fresh",
        "pkgrev.update",
        json!({"namespace": "team-a", "name": name, "resources": resources,
               "resource_version": draft["resource_version"], "principal": "ada@example.com"}),
    )
    .await;
    assert_eq!(
        named(&events),
        [("DraftResourcesUpdated".into(), name.into())]
    );
    assert_eq!(updated["labels"], json!({"tier": "web"}));
    // An update records no task (Porch's loadTasks): the history is the
    // task that created the draft.
    assert_eq!(task_types(&updated), ["init"]);
    let error = node
        .client()
        .call(
            "pkgrev.update",
            json!({"namespace": "team-a", "name": name, "resources": resources,
               "resource_version": draft["resource_version"]}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code, 409);
    assert_eq!(
        error.body["message"],
        format!(
            "resource_version of {name}: expected {}, got {} (it changed since it was read)",
            updated["resource_version"].as_str().unwrap(),
            draft["resource_version"].as_str().unwrap()
        )
    );
    let files = node.client().ok("pkgrev.resources", key(name)).await;
    assert_eq!(files["resources"], resources);

    // Propose, reject, propose again: branches swap.
    let (proposed, events) = command(&node, "fresh", "pkgrev.propose", key(name)).await;
    assert_eq!(proposed["lifecycle"], "Proposed");
    assert_eq!(
        named(&events),
        [("PackageRevisionProposed".into(), name.into())]
    );
    assert_eq!(
        bare.refs(),
        ["refs/heads/main", "refs/heads/proposed/catalog/app/ws1"]
    );
    let (rejected, events) = command(&node, "fresh", "pkgrev.reject", key(name)).await;
    assert_eq!(rejected["lifecycle"], "Draft");
    assert_eq!(kinds(&events), ["ProposalRejected"]);
    command(&node, "fresh", "pkgrev.propose", key(name)).await;
    let proposal = bare.git(&["rev-parse", "proposed/catalog/app/ws1"]);

    // Approve: a commit on main replacing the package, tag v1, proposal gone.
    let (published, events) = command(
        &node,
        "fresh",
        "pkgrev.approve",
        json!({"namespace": "team-a", "name": name, "principal": "bob@example.com"}),
    )
    .await;
    assert_eq!(
        named(&events),
        [
            (
                "PackageRevisionAdded".into(),
                "fresh.catalog.app.main".into()
            ),
            ("PackageRevisionPublished".into(), name.into()),
        ]
    );
    assert!(events.iter().all(|e| e["principal"] == "bob@example.com"));
    assert_eq!(events[0]["correlation_id"], events[1]["correlation_id"]);
    assert_eq!(
        (
            &published["lifecycle"],
            &published["revision"],
            &published["latest"],
            &published["published_by"]
        ),
        (
            &json!("Published"),
            &json!(1),
            &json!(true),
            &json!("bob@example.com")
        )
    );
    assert_eq!(task_types(&published), ["init"]);
    assert_eq!(bare.refs(), ["refs/heads/main", "refs/tags/catalog/app/v1"]);
    let main = bare.git(&["rev-parse", "main"]);
    assert_eq!(published["commit"], main);
    assert_eq!(bare.git(&["rev-parse", "catalog/app/v1"]), main);
    assert_eq!(
        bare.git(&["log", "-1", "--format=%B", "main"]),
        "Approving package revision catalog/app/1\n\n\
         kpt:{\"package\":\"catalog/app\",\"workspaceName\":\"ws1\",\"revision\":\"1\"}\n\
         Cairn-Principal: bob@example.com"
    );
    assert_eq!(
        bare.git(&["log", "-1", "--format=%P|%an <%ae>|%cn <%ce>", "main"]),
        format!("{first} {proposal}|bob@example.com <bob@example.com>|Package Orchestration Service <porch@kpt.dev>")
    );
    assert_eq!(
        bare.git(&["diff", "--name-only", &first, "main"]),
        "catalog/app/Kptfile\ncatalog/app/deploy/cm.yaml"
    );
    assert_eq!(
        bare.git(&["show", "main:catalog/app/deploy/cm.yaml"]),
        "kind: ConfigMap"
    );

    // A new registration of the same upstream lists the same revisions,
    // publish info and tasks.
    register(&node, "again", &url).await;
    let list = |repo: &'static str| {
        let client = node.client().clone();
        async move {
            let page = client
                .ok(
                    "pkgrev.list",
                    json!({"namespace": "team-a", "repository": repo}),
                )
                .await;
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    let o = r.as_object_mut().unwrap();
                    for volatile in ["name", "repository", "resource_version"] {
                        o.remove(volatile);
                    }
                    r
                })
                .collect::<Vec<_>>()
        }
    };
    let ours = list("fresh").await;
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert_eq!(ours, list("again").await);
    node.shutdown().await;
}

#[actix_rt::test]
async fn on_the_porch_fixtures_numbering_continues_and_each_lifecycle_deletes() {
    let dir = TestDir::new();
    let bare = GitFixture::porch("drafts-repository", &dir.path().join("upstream")).into_bare();
    let url = bare.url();
    let node = start(dir.path()).await;
    register(&node, "drafts", &url).await;

    // basens has v1 and v2: a new draft of it (a copy of v2) is published
    // as v3, and "latest" moves from v2 to v3.
    command(
        &node,
        "drafts",
        "pkgrev.create",
        json!({"namespace": "team-a", "repository": "drafts", "package": "basens",
               "workspace": "third", "clone_from": "drafts.basens.v2"}),
    )
    .await;
    command(
        &node,
        "drafts",
        "pkgrev.propose",
        key("drafts.basens.third"),
    )
    .await;
    let (published, events) = command(
        &node,
        "drafts",
        "pkgrev.approve",
        key("drafts.basens.third"),
    )
    .await;
    assert_eq!(
        (&published["revision"], &published["latest"]),
        (&json!(3), &json!(true))
    );
    assert_eq!(
        named(&events),
        [
            (
                "PackageRevisionModified".into(),
                "drafts.basens.main".into()
            ),
            (
                "PackageRevisionPublished".into(),
                "drafts.basens.third".into()
            ),
            ("PackageRevisionModified".into(), "drafts.basens.v2".into()),
        ]
    );
    let v2 = &events[2]["event"]["package_revision_modified"]["revision"];
    // (proto3 JSON leaves out a false `latest`)
    assert_eq!(
        (&v2["revision"], &v2["latest"]),
        (&json!("2"), &Value::Null)
    );
    let v2 = node
        .client()
        .ok("pkgrev.get", key("drafts.basens.v2"))
        .await;
    assert_eq!(v2["latest"], false);
    assert_eq!(
        bare.git(&["tag", "--list", "basens/*"]),
        "basens/v1\nbasens/v2\nbasens/v3"
    );
    // The copy's task (a new revision of basens: Porch's edit) and
    // content.
    assert_eq!(task_types(&published), ["edit"]);
    assert_eq!(
        node.client()
            .ok("pkgrev.resources", key("drafts.basens.third"))
            .await,
        node.client()
            .ok("pkgrev.resources", key("drafts.basens.v2"))
            .await
    );

    // A draft: its branch goes.
    let (reply, events) = command(&node, "drafts", "pkgrev.delete", key("drafts.bucket.v1")).await;
    assert_eq!(reply, json!({"deleted": "drafts.bucket.v1"}));
    assert_eq!(
        named(&events),
        [("PackageRevisionDeleted".into(), "drafts.bucket.v1".into())]
    );
    assert_eq!(bare.git(&["branch", "--list", "drafts/bucket/*"]), "");

    // A proposal: its branch goes.
    command(&node, "drafts", "pkgrev.propose", key("drafts.none.v1")).await;
    assert_eq!(
        bare.git(&["branch", "--list", "proposed/*"]),
        "proposed/none/v1"
    );
    command(&node, "drafts", "pkgrev.delete", key("drafts.none.v1")).await;
    assert_eq!(bare.git(&["branch", "--list", "proposed/*"]), "");

    // A published revision: not without a deletion proposal; one can be
    // withdrawn; then tag and marker go.
    let error = node
        .client()
        .call("pkgrev.delete", key("drafts.basens.v1"))
        .await
        .unwrap_err();
    assert_eq!(error.code, 409);
    assert_eq!(
        error.body["message"],
        "cannot delete drafts.basens.v1: it is Published; propose its deletion first (pkgrev.propose-delete)"
    );
    let (marked, events) = command(
        &node,
        "drafts",
        "pkgrev.propose-delete",
        key("drafts.basens.v1"),
    )
    .await;
    assert_eq!(marked["lifecycle"], "DeletionProposed");
    assert_eq!(kinds(&events), ["DeletionProposed"]);
    assert_eq!(
        bare.git(&["branch", "--list", "deletionProposed/*"]),
        "deletionProposed/basens/v1"
    );
    let (kept, events) = command(
        &node,
        "drafts",
        "pkgrev.withdraw-delete",
        key("drafts.basens.v1"),
    )
    .await;
    assert_eq!(kept["lifecycle"], "Published");
    assert_eq!(kinds(&events), ["DeletionProposalWithdrawn"]);
    command(
        &node,
        "drafts",
        "pkgrev.propose-delete",
        key("drafts.basens.v1"),
    )
    .await;
    let (_, events) = command(&node, "drafts", "pkgrev.delete", key("drafts.basens.v1")).await;
    assert_eq!(
        named(&events),
        [("PackageRevisionDeleted".into(), "drafts.basens.v1".into())]
    );
    assert_eq!(
        bare.git(&["tag", "--list", "basens/*"]),
        "basens/v2\nbasens/v3"
    );
    assert_eq!(bare.git(&["branch", "--list", "deletionProposed/*"]), "");

    // Deleting the latest revision moves "latest" down to v2.
    command(
        &node,
        "drafts",
        "pkgrev.propose-delete",
        key("drafts.basens.third"),
    )
    .await;
    let (_, events) = command(&node, "drafts", "pkgrev.delete", key("drafts.basens.third")).await;
    assert_eq!(
        named(&events),
        [
            ("PackageRevisionModified".into(), "drafts.basens.v2".into()),
            (
                "PackageRevisionDeleted".into(),
                "drafts.basens.third".into()
            ),
        ]
    );
    let v2 = node
        .client()
        .ok("pkgrev.get", key("drafts.basens.v2"))
        .await;
    assert_eq!(v2["latest"], true);

    // The placeholder: a commit removing the package from main.
    command(
        &node,
        "drafts",
        "pkgrev.propose-delete",
        key("drafts.basens.main"),
    )
    .await;
    let (_, events) = command(&node, "drafts", "pkgrev.delete", key("drafts.basens.main")).await;
    assert_eq!(
        named(&events),
        [("PackageRevisionDeleted".into(), "drafts.basens.main".into())]
    );
    assert_eq!(bare.git(&["ls-tree", "--name-only", "main", "basens"]), "");
    assert_eq!(
        bare.git(&["log", "-1", "--format=%s", "main"]),
        "Delete basens"
    );

    // A fresh sync finds the views exactly as the commands left them.
    let before = node.store.last_seq().unwrap();
    node.client().ok("repo.sync", key("drafts")).await;
    let (kinds, _) = node.client().events_after("drafts", before).await;
    assert_eq!(kinds, ["SyncStarted", "SyncSucceeded"]);
    node.shutdown().await;
}

#[actix_rt::test]
async fn approve_succeeds_after_the_upstream_moved_and_keeps_what_landed_on_main() {
    let dir = TestDir::new();
    let (bare, url) = fresh_upstream(dir.path());
    let node = start(dir.path()).await;
    register(&node, "fresh", &url).await;
    let create =
        json!({"namespace": "team-a", "repository": "fresh", "package": "app", "workspace": "ws"});
    node.client().ok("pkgrev.create", create).await;
    node.client()
        .ok("pkgrev.propose", key("fresh.app.ws"))
        .await;

    // Someone else pushes to main meanwhile.
    let work = GitFixture::open(&dir.path().join("work"));
    work.write("other.txt", "theirs\n");
    work.git(&["add", "other.txt"]);
    work.git(&["commit", "-q", "-m", "theirs"]);
    work.git(&["push", "-q", bare.git_dir().to_str().unwrap(), "main"]);
    let theirs = work.rev_parse("HEAD");

    let (published, _) = command(&node, "fresh", "pkgrev.approve", key("fresh.app.ws")).await;
    assert_eq!(published["revision"], 1);
    assert_eq!(bare.git(&["rev-parse", "main^1"]), theirs);
    assert_eq!(bare.git(&["show", "main:other.txt"]), "theirs");
    assert_eq!(
        bare.git(&["ls-tree", "-r", "--name-only", "main"]),
        "README.md\napp/Kptfile\nother.txt"
    );
    node.shutdown().await;
}

/// An upstream whose `pre-receive` hook always declines: the push is
/// tried `git.push-attempts` times (Porch retries a declining hook), then
/// the command is 409 with nothing recorded.
#[actix_rt::test]
async fn a_refusing_upstream_records_nothing() {
    let dir = TestDir::new();
    let (bare, url) = fresh_upstream(dir.path());
    let node = builder(dir.path())
        .configure(|c| c.git.push_retry_delay = std::time::Duration::from_millis(10))
        .start()
        .await;
    register(&node, "fresh", &url).await;
    let hook = bare.git_dir().join("hooks/pre-receive");
    let calls = dir.path().join("hook-calls");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho x >> '{}'\necho read-only >&2\nexit 1\n",
            calls.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .unwrap();
    let before = node.store.last_seq().unwrap();
    let listed = node
        .client()
        .ok("pkgrev.list", json!({"repository": "fresh"}))
        .await;
    let error = node.client().call("pkgrev.create",
        json!({"namespace": "team-a", "repository": "fresh", "package": "app", "workspace": "ws"}),
    )
    .await.unwrap_err();
    assert_eq!(error.code, 409);
    assert_eq!(
        error.body["message"],
        "the upstream refused the change: refs/heads/drafts/app/ws: pre-receive hook declined"
    );
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "x\nx\nx\n");
    assert_eq!(node.store.last_seq().unwrap(), before);
    assert_eq!(
        node.client()
            .ok("pkgrev.list", json!({"repository": "fresh"}))
            .await,
        listed
    );
    assert_eq!(bare.refs(), ["refs/heads/main"]);
    node.shutdown().await;
}

#[actix_rt::test]
async fn of_two_updates_with_one_resource_version_exactly_one_wins() {
    let dir = TestDir::new();
    let (_bare, url) = fresh_upstream(dir.path());
    let node = start(dir.path()).await;
    register(&node, "fresh", &url).await;
    let draft = node.client().ok("pkgrev.create",
        json!({"namespace": "team-a", "repository": "fresh", "package": "app", "workspace": "ws"}),
    )
    .await;
    let update = |content: &str| {
        json!({"namespace": "team-a", "name": "fresh.app.ws",
               "resources": {"Kptfile": "kind: Kptfile\n", "x.yaml": content},
               "resource_version": draft["resource_version"]})
    };
    let (a, b) = tokio::join!(
        node.client().call("pkgrev.update", update("a: 1\n")),
        node.client().call("pkgrev.update", update("b: 2\n")),
    );
    let code = |r: &Result<Value, ServiceError>| r.as_ref().err().map(|e| e.code);
    let mut codes = [code(&a), code(&b)];
    codes.sort();
    assert_eq!(codes, [None, Some(409)], "{a:?} {b:?}");
    let winner = if a.is_ok() { "a: 1\n" } else { "b: 2\n" };
    let files = node
        .client()
        .ok("pkgrev.resources", key("fresh.app.ws"))
        .await;
    assert_eq!(files["resources"]["x.yaml"], winner);
    node.shutdown().await;
}

#[actix_rt::test]
async fn bad_input_is_refused_naming_the_field_and_nothing_is_written() {
    let dir = TestDir::new();
    let (bare, url) = fresh_upstream(dir.path());
    let node = start(dir.path()).await;
    register(&node, "fresh", &url).await;
    let before = node.store.last_seq().unwrap();
    let create = |extra: Value| {
        let mut body = json!({"namespace": "team-a", "repository": "fresh", "package": "app", "workspace": "ws"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let big = "x".repeat(1025);
    for (body, message) in [
        (
            create(json!({"resources": {"../escape.yaml": "a"}})),
            "resources[\"../escape.yaml\"]: \"../escape.yaml\" must not contain \"..\"",
        ),
        (
            create(json!({"resources": {"/etc/passwd": "a"}})),
            "resources[\"/etc/passwd\"]: \"/etc/passwd\" is absolute",
        ),
        (
            create(json!({"resources": {"a\u{0}b": "a"}})),
            "resources[\"a\\0b\"]: \"a\\0b\" holds a NUL or control character",
        ),
        (
            create(json!({"resources": {"big.yaml": big}})),
            "resources[\"big.yaml\"]: 1025 bytes, more than the limit of 1024 (service.resource-max-bytes)",
        ),
        (
            create(json!({"clone_from": "fresh.nope.v1"})),
            "clone_from: package revision team-a/fresh.nope.v1 not found",
        ),
        (
            create(json!({"workspace": "../ws"})),
            "workspace: \"../ws\" is not a valid name (letters, digits, '.', '_' and '-', 1-253 characters, not starting with '.' or '-', not ending with '.' or \".lock\")",
        ),
        (
            create(json!({"path": "a/../b"})),
            "path: \"a/../b\" is not a valid package path (segment \"..\")",
        ),
        (
            create(json!({"resources": {"Kptfile": "k"}, "clone_from": "fresh.x.y"})),
            "clone_from: cannot be combined with resources",
        ),
        (
            json!({"namespace": "team-a", "name": "fresh.app.ws", "resources": {"a": "b"}, "resource_version": 1}),
            "resources: must hold a Kptfile (a package is a directory with one)",
        ),
    ] {
        let endpoint = if body.get("repository").is_some() {
            "pkgrev.create"
        } else {
            "pkgrev.update"
        };
        let error = node.client().call(endpoint, body.clone()).await.unwrap_err();
        assert_eq!(error.code, 400, "{body}: {error}");
        assert_eq!(error.body["message"], message, "{body}");
    }
    // A command on a revision that does not exist.
    let error = node
        .client()
        .call("pkgrev.approve", key("fresh.app.ws"))
        .await
        .unwrap_err();
    assert_eq!(error.code, 404);
    assert_eq!(
        error.body["message"],
        "package revision team-a/fresh.app.ws not found"
    );
    assert_eq!(node.store.last_seq().unwrap(), before);
    assert_eq!(bare.refs(), ["refs/heads/main"]);
    node.shutdown().await;
}

/// Runs the `cairn` CLI against the node at `nats_url` (off the test's
/// thread, where the node's actors run); (success, stdout, stderr).
async fn cli(nats_url: &str, args: &[&str]) -> (bool, String, String) {
    let out = cairn_cli!()
        .run(args.iter().copied().chain(["--nats-url", nats_url]))
        .await;
    (
        out.success,
        out.stdout.trim().to_owned(),
        out.stderr.trim().to_owned(),
    )
}

#[actix_rt::test]
async fn the_cli_authors_and_publishes_a_package_from_a_directory() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = TestDir::new();
    let (bare, url) = fresh_upstream(dir.path());
    let node = start(dir.path()).await;
    let nats = node.nats_url.clone();
    register(&node, "fresh", &url).await;

    let (ok_, out, err) = cli(
        &nats,
        &[
            "pkg",
            "init",
            "team-a/fresh",
            "catalog/app",
            "-w",
            "ws",
            "-o",
            "json",
            "--principal",
            "cli@example.com",
        ],
    )
    .await;
    assert!(ok_, "{err}");
    let draft: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(draft["name"], "fresh.catalog.app.ws");

    // A directory with a nested file and a binary one.
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("deploy")).unwrap();
    std::fs::write(
        src.join("Kptfile"),
        "kind: Kptfile\nmetadata:\n  name: app\n",
    )
    .unwrap();
    std::fs::write(src.join("deploy/cm.yaml"), "kind: ConfigMap\n").unwrap();
    std::fs::write(src.join("logo.bin"), [0xff, 0x00, 0x7f]).unwrap();
    let (ok_, out, err) = cli(
        &nats,
        &[
            "pkg",
            "push",
            "team-a/fresh.catalog.app.ws",
            src.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok_, "{err}");
    let version = node
        .client()
        .ok("pkgrev.get", key("fresh.catalog.app.ws"))
        .await["resource_version"]
        .clone();
    assert_eq!(
        out,
        format!(
            "pushed 3 files from {} to team-a/fresh.catalog.app.ws (resource_version {})",
            src.display(),
            version.as_str().unwrap()
        )
    );

    // A file name that is not UTF-8: refused before anything is sent.
    let bad = src.join(std::ffi::OsStr::from_bytes(b"bad-\xff.yaml"));
    std::fs::write(&bad, "x: 1\n").unwrap();
    let before = node.store.last_seq().unwrap();
    let (ok_, _, err) = cli(
        &nats,
        &[
            "pkg",
            "push",
            "team-a/fresh.catalog.app.ws",
            src.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!ok_);
    assert!(
        err.contains(&format!(
            "{}: the file name is not valid UTF-8",
            bad.display()
        )),
        "{err}"
    );
    assert_eq!(node.store.last_seq().unwrap(), before);
    std::fs::remove_file(&bad).unwrap();

    for verb in ["propose", "approve"] {
        let (ok_, _, err) = cli(&nats, &["pkg", verb, "team-a/fresh.catalog.app.ws"]).await;
        assert!(ok_, "{verb}: {err}");
    }
    assert_eq!(bare.git(&["tag", "--list"]), "catalog/app/v1");
    assert_eq!(
        bare.git(&["log", "-1", "--format=%ae", "main"]),
        "porch@kpt.dev"
    );
    let back = dir.path().join("back");
    let (ok_, _, err) = cli(
        &nats,
        &[
            "pkg",
            "pull",
            "team-a/fresh.catalog.app.ws",
            back.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok_, "{err}");
    for file in ["Kptfile", "deploy/cm.yaml", "logo.bin"] {
        assert_eq!(
            std::fs::read(back.join(file)).unwrap(),
            std::fs::read(src.join(file)).unwrap(),
            "{file}"
        );
    }
    let (ok_, _, err) = cli(&nats, &["pkg", "delete", "team-a/fresh.catalog.app.ws"]).await;
    assert!(!ok_);
    assert!(
        err.contains("409: cannot delete fresh.catalog.app.ws: it is Published"),
        "{err}"
    );
    node.shutdown().await;
}

/// With NATS auth on, the principal is the user the server names for the
/// request (a service import with `share: true` from the client's account
/// into cairn's), whatever the request's `"principal"` field says.
#[actix_rt::test]
async fn with_auth_on_the_principal_is_the_nats_user() {
    let dir = TestDir::new();
    let (_bare, url) = fresh_upstream(dir.path());
    let server = NatsServer::with_config(
        NatsServerConfig::new()
            .account(
                Account::new("CAIRN")
                    .jetstream()
                    .user("cairn", "cairn-secret")
                    .export_service("cairn.v1.>"),
            )
            .account(
                Account::new("TEAM")
                    .user("alice", "alice-secret")
                    .import_service("CAIRN", "cairn.v1.>", true),
            ),
    );
    let node = builder(dir.path())
        .configure(|c| c.nats.urls = vec![server.url_as("cairn", "cairn-secret")])
        .start()
        .await;
    let alice = Client::connect_as(&server.url(), "alice", "alice-secret").await;
    register(&node, "fresh", &url).await;
    let before = node.store.last_seq().unwrap();
    alice
        .ok(
            "pkgrev.create",
            json!({"namespace": "team-a", "repository": "fresh", "package": "app",
               "workspace": "ws", "principal": "mallory@example.com"}),
        )
        .await;
    let (_, events) = node.client().events_after("fresh", before).await;
    assert_eq!(kinds(&events), ["DraftCreated"]);
    assert_eq!(events[0]["principal"], "alice");
    node.shutdown().await;
    drop(server);
}
