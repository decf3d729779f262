//! Idempotent retries (`Cairn-Request-Id`) on a real node: a retried write
//! is answered from what its first attempt applied and appends nothing —
//! at once, concurrently, and after a restart; an id reused for another
//! request is refused; the CLI sends one id per command and retries it
//! until a node answers; kv writes with one id apply once, duplicates
//! batched together included.

use std::{path::Path, time::Duration};

use async_nats::HeaderMap;
use cairn_storage::EventLog;
use cairn_tests::{
    cairn_cli, git, ChildGuard, GitFixture, NatsServer, TestDir, TestNode, TestNodeBuilder,
};
use serde_json::{json, Value};

const HEADER: &str = "Cairn-Request-Id";

/// A bare upstream with one commit on `main`; its `file://` URL.
fn upstream(dir: &Path) -> (GitFixture, String) {
    let work = GitFixture::init(&dir.join("work"), "main");
    work.write("README.md", "up\n").commit("first");
    let bare = work.clone_bare(&dir.join("up.git"));
    let url = bare.url();
    (bare, url)
}

/// A node in `dir/node` with `url` registered as `team-a/up` (without a
/// key).
async fn registered_node(dir: &Path, url: &str) -> TestNode {
    let node = TestNodeBuilder::in_dir(&dir.join("node")).start().await;
    node.client()
        .ok(
            "repo.register",
            json!({"namespace": "team-a", "name": "up", "git": {"url": url}}),
        )
        .await;
    node
}

/// What a request answered: the code (200 on success), the JSON body and
/// the `Cairn-Replayed` header.
#[derive(Debug)]
struct Answer {
    code: u16,
    body: Value,
    replayed: Option<u64>,
}

async fn send(node: &TestNode, endpoint: &str, id: Option<&str>, body: &Value) -> Answer {
    let mut headers = HeaderMap::new();
    if let Some(id) = id {
        headers.insert(HEADER, id);
    }
    let reply = node
        .client()
        .request_with_headers(
            &format!("cairn.v1.{endpoint}"),
            headers,
            serde_json::to_vec(body).unwrap(),
        )
        .await;
    let header = |name: &str| {
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    Answer {
        code: header("Nats-Service-Error-Code").map_or(200, |c| c.parse().unwrap()),
        body: serde_json::from_slice(&reply.payload).unwrap(),
        replayed: header("Cairn-Replayed").map(|s| s.parse().unwrap()),
    }
}

fn refs(bare: &GitFixture) -> String {
    git(
        bare.path(),
        &["for-each-ref", "--format=%(refname) %(objectname)"],
    )
}

fn create_body(workspace: &str) -> Value {
    json!({
        "namespace": "team-a", "repository": "up", "package": "pkg", "workspace": workspace,
        "resources": {"Kptfile": "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: pkg\n"},
    })
}

/// The test from the issue: a retried `pkgrev.create` with the same key
/// before and after a restart.
#[actix_rt::test]
async fn a_retried_create_is_applied_once_before_and_after_a_restart() {
    let dir = TestDir::new();
    let (bare, url) = upstream(dir.path());
    let node = registered_node(dir.path(), &url).await;
    let body = create_body("w1");
    let before = node.store.last_seq().unwrap();

    let first = send(&node, "pkgrev.create", Some("create-1"), &body).await;
    assert_eq!((first.code, first.replayed), (200, None), "{}", first.body);
    assert_eq!(first.body["name"], "up.pkg.w1");
    assert_eq!(first.body["lifecycle"], "Draft");
    let applied = node.store.last_seq().unwrap();
    let (kinds, events) = node.client().events_after("up", before).await;
    assert_eq!(kinds, ["DraftCreated"]);
    assert_eq!(events[0]["request_id"], "create-1", "{}", events[0]);
    let upstream_refs = refs(&bare);
    assert!(
        upstream_refs.contains("refs/heads/drafts/pkg/w1"),
        "{upstream_refs}"
    );

    // The retry: the first outcome, nothing appended, nothing pushed.
    let retry = send(&node, "pkgrev.create", Some("create-1"), &body).await;
    assert_eq!(retry.code, 200, "{}", retry.body);
    assert_eq!(retry.replayed, Some(before + 1));
    assert_eq!(retry.body, first.body);
    assert_eq!(node.store.last_seq().unwrap(), applied);
    assert_eq!(refs(&bare), upstream_refs);

    // What a retry without the key gets (what the campaign saw).
    let unkeyed = send(&node, "pkgrev.create", None, &body).await;
    assert_eq!(unkeyed.code, 409, "{}", unkeyed.body);

    // One id names one request.
    let other = send(&node, "pkgrev.create", Some("create-1"), &create_body("w2")).await;
    assert_eq!(other.code, 409, "{}", other.body);
    assert_eq!(
        other.body["message"],
        format!(
            "Cairn-Request-Id \"create-1\" was already used for another request (applied at seq {}); send a new id with a new request",
            before + 1
        )
    );
    // A malformed id is bad input, whatever the body.
    let bad = send(&node, "pkgrev.create", Some("no spaces"), &body).await;
    assert_eq!(bad.code, 400);
    assert!(
        bad.body["message"]
            .as_str()
            .unwrap()
            .starts_with("Cairn-Request-Id: \"no spaces\" is not a request id"),
        "{}",
        bad.body
    );
    assert_eq!(node.store.last_seq().unwrap(), applied);

    // After a restart the key is still known (it is in the log and the
    // `requests` view, not in memory).
    let node = node.stop().await.start().await;
    let after_restart = send(&node, "pkgrev.create", Some("create-1"), &body).await;
    assert_eq!(after_restart.code, 200, "{}", after_restart.body);
    assert_eq!(after_restart.replayed, Some(before + 1));
    assert_eq!(after_restart.body, first.body);
    // (The restarted node syncs the repository on its own, which may
    // append sync events: none is a revision event nor carries the key.)
    let (kinds, events) = node.client().events_after("up", applied).await;
    assert!(kinds.iter().all(|k| k.starts_with("Sync")), "{kinds:?}");
    assert!(
        events.iter().all(|e| e.get("request_id").is_none()),
        "{events:?}"
    );
    assert_eq!(refs(&bare), upstream_refs);
    node.shutdown().await;
}

/// Duplicates that arrive together run one after the other: the first
/// applies, the others replay it — one event, every answer a success.
#[actix_rt::test]
async fn concurrent_duplicates_apply_once() {
    let dir = TestDir::new();
    let (_bare, url) = upstream(dir.path());
    let node = registered_node(dir.path(), &url).await;
    let before = node.store.last_seq().unwrap();
    let body = create_body("w1");
    let answers = futures::future::join_all(
        (0..4).map(|_| send(&node, "pkgrev.create", Some("together"), &body)),
    )
    .await;
    for answer in &answers {
        assert_eq!(answer.code, 200, "{}", answer.body);
        assert_eq!(answer.body["name"], "up.pkg.w1");
    }
    assert_eq!(answers.iter().filter(|a| a.replayed.is_none()).count(), 1);
    let (kinds, _) = node.client().events_after("up", before).await;
    assert_eq!(kinds, ["DraftCreated"]);
    node.shutdown().await;
}

/// Every write endpoint replays: approve (whose unkeyed retry is a 409,
/// the revision being published), delete (404 unkeyed), register and
/// unregister.
#[actix_rt::test]
async fn approve_delete_register_and_unregister_replay() {
    let dir = TestDir::new();
    let (_bare, url) = upstream(dir.path());
    let node = TestNodeBuilder::in_dir(&dir.join("node")).start().await;
    let register = json!({"namespace": "team-a", "name": "up", "git": {"url": url}});
    let registered = send(&node, "repo.register", Some("reg"), &register).await;
    assert_eq!(
        (registered.code, registered.replayed),
        (200, None),
        "{}",
        registered.body
    );
    let again = send(&node, "repo.register", Some("reg"), &register).await;
    assert_eq!(again.code, 200, "{}", again.body);
    assert!(again.replayed.is_some());
    assert_eq!(again.body["name"], "up");
    let (kinds, _) = node.client().events_after("up", 0).await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "RepositoryRegistered")
            .count(),
        1
    );

    node.client().ok("pkgrev.create", create_body("w1")).await;
    let key = json!({"namespace": "team-a", "name": "up.pkg.w1"});
    node.client().ok("pkgrev.propose", key.clone()).await;
    let seq = node.store.last_seq().unwrap();
    let approved = send(&node, "pkgrev.approve", Some("approve-1"), &key).await;
    assert_eq!(
        (approved.code, approved.body["lifecycle"].as_str()),
        (200, Some("Published"))
    );
    let approved_seq = node.store.last_seq().unwrap();
    assert!(approved_seq > seq);
    let retry = send(&node, "pkgrev.approve", Some("approve-1"), &key).await;
    assert_eq!(
        (retry.code, retry.replayed),
        (200, Some(seq + 1)),
        "{}",
        retry.body
    );
    assert_eq!(retry.body, approved.body);
    assert_eq!(send(&node, "pkgrev.approve", None, &key).await.code, 409);
    assert_eq!(node.store.last_seq().unwrap(), approved_seq);

    node.client().ok("pkgrev.propose-delete", key.clone()).await;
    let deleted = send(&node, "pkgrev.delete", Some("delete-1"), &key).await;
    assert_eq!(deleted.body, json!({"deleted": "up.pkg.w1"}));
    let seq = node.store.last_seq().unwrap();
    let retry = send(&node, "pkgrev.delete", Some("delete-1"), &key).await;
    assert_eq!(
        (retry.code, &retry.body),
        (200, &json!({"deleted": "up.pkg.w1"}))
    );
    assert!(retry.replayed.is_some());
    assert_eq!(send(&node, "pkgrev.delete", None, &key).await.code, 404);
    assert_eq!(node.store.last_seq().unwrap(), seq);

    let repo = json!({"namespace": "team-a", "name": "up"});
    let gone = send(&node, "repo.unregister", Some("unreg"), &repo).await;
    assert_eq!(gone.body, json!({"unregistered": "team-a/up"}));
    let seq = node.store.last_seq().unwrap();
    let retry = send(&node, "repo.unregister", Some("unreg"), &repo).await;
    assert_eq!(
        (retry.code, &retry.body),
        (200, &json!({"unregistered": "team-a/up"}))
    );
    assert!(retry.replayed.is_some());
    assert_eq!(node.store.last_seq().unwrap(), seq);
    node.shutdown().await;
}

/// The CLI sends a request id with each write and retries while no node
/// answers: started before any node, `repo register` waits, says so on
/// stderr, and registers once when a node comes up.
#[actix_rt::test]
async fn the_cli_retries_a_write_until_a_node_answers_and_it_applies_once() {
    let dir = TestDir::new();
    let (_bare, url) = upstream(dir.path());
    let nats = NatsServer::start();
    let mut cli = cairn_cli!().command();
    cli.args([
        "repo",
        "register",
        "team-a/up",
        "--url",
        &url,
        "--nats-url",
        &nats.url(),
        "--timeout",
        "60s",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = ChildGuard::spawn(&mut cli);
    let stderr = child.0.stderr.take().unwrap();
    let (line, rest) = cairn_tests::read_line_matching(stderr, Duration::from_secs(60), |l| {
        l.contains("retrying")
    })
    .expect("the CLI says it retries");
    assert_eq!(
        line,
        "repo register: no cairn node answers on this NATS server; retrying until 60s have passed"
    );
    let node = TestNodeBuilder::in_dir(&dir.join("node"))
        .configure(|c| c.nats.urls = vec![nats.url()])
        .start()
        .await;
    // Waited for off this thread: the node runs on it.
    let status = tokio::task::spawn_blocking(move || child.wait_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(
        status.success(),
        "the CLI registered once a node answered; it said:\n{}",
        rest.try_iter().collect::<Vec<_>>().join("\n")
    );
    let (kinds, events) = node.client().events_after("up", 0).await;
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("RepositoryRegistered")
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "RepositoryRegistered")
            .count(),
        1
    );
    let id = events[0]["request_id"].as_str().unwrap();
    // A UUID v7 (`xxxxxxxx-xxxx-7xxx-…`).
    assert_eq!((id.len(), &id[14..15]), (36, "7"), "{id}");
    node.shutdown().await;
}

/// A retry answers what the first attempt answered, failures included:
/// a `repo.sync` whose sync failed is the same error again (not a 200 of
/// the repository), with nothing appended; a `repo.register` whose first
/// sync failed carries that failure again.
#[actix_rt::test]
async fn a_retry_of_a_command_whose_sync_failed_answers_the_failure_again() {
    let dir = TestDir::new();
    let (bare, url) = upstream(dir.path());
    let node = TestNodeBuilder::in_dir(&dir.join("node")).start().await;
    let register = json!({"namespace": "team-a", "name": "up", "git": {"url": url}});
    assert_eq!(
        send(&node, "repo.register", Some("reg"), &register)
            .await
            .code,
        200
    );
    // The upstream goes away: the sync fails.
    std::fs::rename(bare.path(), dir.join("gone.git")).unwrap();
    let key = json!({"namespace": "team-a", "name": "up"});
    let failed = send(&node, "repo.sync", Some("sync-1"), &key).await;
    assert_eq!(failed.code, 503, "{}", failed.body);
    let seq = node.store.last_seq().unwrap();
    let retry = send(&node, "repo.sync", Some("sync-1"), &key).await;
    assert_eq!((retry.code, &retry.body), (failed.code, &failed.body));
    assert_eq!(node.store.last_seq().unwrap(), seq, "the retry ran no sync");

    // A registration whose first sync failed: the failure comes back too.
    let missing =
        json!({"namespace": "team-a", "name": "nobranch", "git": {"url": url, "branch": "nope"}});
    std::fs::rename(dir.join("gone.git"), bare.path()).unwrap();
    let first = send(&node, "repo.register", Some("reg-2"), &missing).await;
    assert_eq!(first.code, 200);
    assert_eq!(first.body["sync"]["error"]["code"], 404, "{}", first.body);
    let retry = send(&node, "repo.register", Some("reg-2"), &missing).await;
    assert!(retry.replayed.is_some());
    assert_eq!(retry.body["sync"], first.body["sync"]);
    node.shutdown().await;
}

/// One request is one request however it is written: the same create
/// sent as JSON with other key order and spacing, and as protobuf, is
/// replayed, not refused as another request.
#[actix_rt::test]
async fn a_retry_in_another_form_is_the_same_request() {
    use prost::Message as _;
    let dir = TestDir::new();
    let (_bare, url) = upstream(dir.path());
    let node = registered_node(dir.path(), &url).await;
    let first = send(&node, "pkgrev.create", Some("forms"), &create_body("w1")).await;
    assert_eq!((first.code, first.replayed), (200, None), "{}", first.body);
    let seq = node.store.last_seq().unwrap();

    let mut headers = HeaderMap::new();
    headers.insert(HEADER, "forms");
    let respaced = br#"{ "workspace": "w1", "resources": {"Kptfile": "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: pkg\n"}, "package": "pkg", "repository": "up", "namespace": "team-a" }"#;
    let reply = node
        .client()
        .request_with_headers("cairn.v1.pkgrev.create", headers.clone(), respaced.to_vec())
        .await;
    assert!(
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Cairn-Replayed"))
            .is_some(),
        "{reply:?}"
    );

    headers.insert("Content-Type", "application/protobuf");
    let request = cairn_events::v1::PkgRevCreateRequest {
        namespace: "team-a".into(),
        repository: "up".into(),
        package: "pkg".into(),
        workspace: "w1".into(),
        resources: [(
            "Kptfile".to_owned(),
            "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: pkg\n".to_owned(),
        )]
        .into(),
        ..Default::default()
    };
    let reply = node
        .client()
        .request_with_headers("cairn.v1.pkgrev.create", headers, request.encode_to_vec())
        .await;
    let h = reply.headers.as_ref().unwrap();
    assert!(h.get("Nats-Service-Error-Code").is_none(), "{reply:?}");
    assert!(h.get("Cairn-Replayed").is_some(), "{reply:?}");
    assert_eq!(node.store.last_seq().unwrap(), seq);
    node.shutdown().await;
}

/// `kv.set`, `kv.delete` and `kv.configure` take the key too, checked by
/// the partition's writer: duplicates sent together (queued into one
/// batch of sets) apply once and every one answers the first's version;
/// after a restart the retry still appends nothing.
#[actix_rt::test]
async fn kv_writes_with_one_key_apply_once_even_in_one_batch_and_after_a_restart() {
    let dir = TestDir::new();
    let node = TestNodeBuilder::in_dir(&dir.join("node")).start().await;
    let before = node.store.last_seq().unwrap();
    let set = |k: usize| json!({"namespace": "ns", "key": format!("k{k}"), "value": k});
    // Eight keys, each sent four times at once with its own id.
    let answers = futures::future::join_all((0..32).map(|i| {
        let (node, body, id) = (&node, set(i % 8), format!("kv-{}", i % 8));
        async move { send(node, "kv.set", Some(&id), &body).await }
    }))
    .await;
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer.code, 200, "{}", answer.body);
        assert_eq!(answer.body, answers[i % 8].body, "k{}", i % 8);
    }
    let delete = json!({"namespace": "ns", "key": "k0"});
    for _ in 0..2 {
        let answer = send(&node, "kv.delete", Some("kv-del"), &delete).await;
        assert_eq!((answer.code, answer.body), (200, json!({"deleted": true})));
    }
    // The id of another request.
    let reused = send(&node, "kv.set", Some("kv-1"), &set(9)).await;
    assert_eq!(reused.code, 409, "{}", reused.body);
    let events = node.store.read_all(before + 1, 1000).unwrap();
    let kinds: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                cairn_events::envelope::kind(e).unwrap().name().to_owned(),
                e.request_id.clone(),
            )
        })
        .collect();
    let mut expected: Vec<(String, String)> = Vec::new();
    let mut sets: Vec<(String, String)> = kinds[..8].to_vec();
    sets.sort();
    for k in 0..8 {
        expected.push(("KvEntrySet".to_owned(), format!("kv-{k}")));
    }
    assert_eq!(sets, expected, "{kinds:?}");
    assert_eq!(
        kinds[8..],
        [("KvEntryDeleted".to_owned(), "kv-del".to_owned())],
        "{kinds:?}"
    );
    for (k, answer) in answers.iter().take(8).enumerate() {
        let seq = answer.body["version"].as_u64().unwrap();
        let event = events.iter().find(|e| e.seq == seq).unwrap();
        assert_eq!(event.request_id, format!("kv-{k}"));
    }
    let last = node.store.last_seq().unwrap();
    let node = node.stop().await.start().await;
    let again = send(&node, "kv.set", Some("kv-3"), &set(3)).await;
    assert_eq!(again.body, answers[3].body);
    assert_eq!(node.store.last_seq().unwrap(), last);
    node.shutdown().await;
}
