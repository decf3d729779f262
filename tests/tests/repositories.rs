//! Repositories over NATS on a real node, real nats-server, real Git:
//! shared mirrors and fetches, unregistering, warm restart with the
//! upstream gone, bad input, and protobuf requests.

use std::path::Path;

use cairn_actors::registry::{DiscoveryCount, FetchCount};
use cairn_events::v1 as pb;
use cairn_storage::{views::RepositoriesView, EventLog};
use cairn_tests::{
    cairn_cli, unpack, within, Client, GitFixture, TestDir, TestNode, TestNodeBuilder, WAIT,
};
use prost::Message as _;
use serde_json::{json, Value};

async fn start(data_dir: &Path) -> TestNode {
    TestNodeBuilder::in_dir(data_dir).start().await
}

fn register(name: &str, url: &str) -> Value {
    json!({"namespace": "team-a", "name": name, "git": {"url": url}})
}

async fn names(client: &Client, repository: &str) -> Vec<String> {
    let reply = client
        .ok(
            "pkgrev.list",
            json!({"namespace": "team-a", "repository": repository}),
        )
        .await;
    reply["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

fn mirrors(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("git"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[actix_rt::test]
async fn two_registrations_share_one_mirror_and_one_fetch() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let data = dir.path().join("data");
    let node = start(&data).await;
    let client = node.client().clone();

    let a = client.ok("repo.register", register("a", &url)).await;
    let b = client.ok("repo.register", register("b", &url)).await;
    assert_eq!(
        (
            a["status"]["package_count"].as_u64(),
            b["status"]["package_count"].as_u64()
        ),
        (Some(8), Some(8))
    );
    assert_eq!(mirrors(&data), 1, "one local clone for one upstream");
    assert_eq!(names(&client, "a").await.len(), 8);
    assert_eq!(names(&client, "b").await[0], "b.basens.main");

    // Concurrent syncs of both registrations: one fetch.
    let before = node.registry().send(FetchCount).await.unwrap();
    let (sa, sb) = tokio::join!(
        client.call("repo.sync", json!({"namespace": "team-a", "name": "a"})),
        client.call("repo.sync", json!({"namespace": "team-a", "name": "b"})),
    );
    assert_eq!((sa.err(), sb.err()), (None, None));
    assert_eq!(node.registry().send(FetchCount).await.unwrap(), before + 1);

    // Unregister one: the other still syncs, on the same mirror.
    client
        .ok(
            "repo.unregister",
            json!({"namespace": "team-a", "name": "a"}),
        )
        .await;
    assert_eq!(mirrors(&data), 1);
    let synced = client
        .ok("repo.sync", json!({"namespace": "team-a", "name": "b"}))
        .await;
    assert_eq!(
        synced["sync"],
        json!({"added": 0, "modified": 0, "deleted": 0, "package_count": 8})
    );
    // The last one takes the mirror with it.
    client
        .ok(
            "repo.unregister",
            json!({"namespace": "team-a", "name": "b"}),
        )
        .await;
    assert_eq!(mirrors(&data), 0);
    node.shutdown().await;
}

#[actix_rt::test]
async fn unregister_deletes_every_revision_then_closes() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let node = start(&dir.path().join("data")).await;
    let client = node.client().clone();
    client.ok("repo.register", register("simple", &url)).await;
    let listed = names(&client, "simple").await;
    let before = node.store.last_seq().unwrap();
    client
        .ok(
            "repo.unregister",
            json!({"namespace": "team-a", "name": "simple"}),
        )
        .await;

    let page = client
        .ok(
            "log.read",
            json!({"from_seq": before + 1, "stream": "repo/team-a/simple"}),
        )
        .await;
    let events = page["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let mut want = vec!["PackageRevisionDeleted"; 8];
    want.push("RepositoryClosed");
    assert_eq!(kinds, want);
    let deleted: Vec<&str> = events[..8]
        .iter()
        .map(|e| {
            e["event"]["package_revision_deleted"]["name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        deleted,
        listed.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(names(&client, "simple").await.is_empty());
    let error = client
        .call("repo.get", json!({"namespace": "team-a", "name": "simple"}))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.body["message"].as_str()),
        (404, Some("repository team-a/simple not found"))
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn warm_restart_serves_the_last_state_while_the_upstream_is_gone() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("simple-repository", &upstream);
    let data = dir.path().join("data");
    let node = start(&data).await;
    node.client()
        .ok("repo.register", register("simple", &url))
        .await;
    let before = names(node.client(), "simple").await;
    assert_eq!(before.len(), 8);
    node.shutdown().await;

    std::fs::rename(&upstream, dir.path().join("gone")).unwrap();
    let node = start(&data).await;
    let mut commits = node.store.subscribe();
    // Answered from the views at once, whatever the upstream does.
    assert_eq!(names(node.client(), "simple").await, before);
    // The startup sync fails; wait for the status to say so.
    let status = within(
        "the startup sync to report the unreachable upstream",
        WAIT,
        async {
            loop {
                let row = RepositoriesView::get(&node.store, "team-a", "simple")
                    .unwrap()
                    .unwrap();
                let status = row.status.unwrap_or_default();
                if status.reason == "Error" {
                    return status;
                }
                commits.changed().await.unwrap();
            }
        },
    )
    .await;
    assert!(!status.ready);
    assert_eq!(status.error_class, "missing");
    assert!(
        status.message.contains("gone") || status.message.contains("upstream"),
        "{}",
        status.message
    );
    let got = node
        .client()
        .ok("repo.get", json!({"namespace": "team-a", "name": "simple"}))
        .await;
    assert_eq!(
        (
            got["status"]["ready"].as_bool(),
            got["status"]["reason"].as_str()
        ),
        (Some(false), Some("Error"))
    );
    assert_eq!(
        got["status"]["package_count"].as_u64(),
        Some(8),
        "the last good state is kept"
    );
    assert_eq!(names(node.client(), "simple").await, before);
    let error = node
        .client()
        .call(
            "repo.sync",
            json!({"namespace": "team-a", "name": "simple"}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code, 503);
    node.shutdown().await;
}

#[actix_rt::test]
async fn bad_input_is_refused_by_field_and_stores_nothing() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let node = start(&dir.path().join("data")).await;
    let client = node.client().clone();
    let seq = node.store.last_seq().unwrap();
    let cases = [
        (
            json!({"namespace": "Team_A", "name": "r", "git": {"url": url}}),
            "namespace: \"Team_A\" is not a valid name",
        ),
        (
            json!({"namespace": "team-a", "name": "r.x", "git": {"url": url}}),
            "name: \"r.x\" is not a valid name",
        ),
        (
            json!({"namespace": "team-a", "name": "r", "type": "oci", "git": {"url": url}}),
            "type: unsupported repository type \"oci\", expected \"git\"",
        ),
        (
            json!({"namespace": "team-a", "name": "r", "git": {"branch": "main"}}),
            "git.url: required",
        ),
        (
            json!({"namespace": "team-a", "name": "r", "git": {"url": "ftp://host/r.git"}}),
            "git.url: ",
        ),
        (
            json!({"namespace": "team-a", "name": "r", "git": {"url": url, "directory": "a/../../etc"}}),
            "git.directory: \"a/../../etc\" must not contain \"..\"",
        ),
        (
            json!({"namespace": "team-a", "name": "r", "git": {"url": url}, "colour": "blue"}),
            "colour: unknown field",
        ),
    ];
    for (body, message) in cases {
        let error = client
            .call("repo.register", body.clone())
            .await
            .unwrap_err();
        assert_eq!(error.code, 400, "{body}: {error}");
        assert!(
            error.body["message"].as_str().unwrap().starts_with(message),
            "{body}: {error}"
        );
    }
    let body = client
        .call_raw("repo.register", b"{\"namespace\":")
        .await
        .unwrap_err()
        .body;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("request body: invalid JSON"),
        "{body}"
    );
    let oversized = json!({"namespace": "team-a", "name": "r", "git": {"url": format!("file:///{}", "x".repeat(70_000))}});
    let error = client.call("repo.register", oversized).await.unwrap_err();
    assert_eq!(error.code, 400);
    assert!(
        error.body["message"]
            .as_str()
            .unwrap()
            .starts_with("payload: "),
        "{error}"
    );
    // Nothing stored.
    assert_eq!(node.store.last_seq().unwrap(), seq);
    assert_eq!(client.ok("repo.list", json!({})).await["items"], json!([]));
    // Conflicts and unknown names.
    client.ok("repo.register", register("r", &url)).await;
    let error = client
        .call("repo.register", register("r", &url))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code, error.body["message"].as_str()),
        (409, Some("repository team-a/r is already registered"))
    );
    let error = client
        .call(
            "pkgrev.get",
            json!({"namespace": "team-a", "name": "r.nope.v1"}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code, 404);
    let error = client
        .call("pkgrev.list", json!({"lifecycle": ["Done"]}))
        .await
        .unwrap_err();
    assert_eq!(error.code, 400, "{error}");
    node.shutdown().await;
}

#[actix_rt::test]
async fn a_key_given_twice_is_refused_naming_it_and_stores_nothing() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let node = start(&dir.path().join("data")).await;
    let client = node.client().clone();
    client.ok("repo.register", register("r", &url)).await;
    let seq = node.store.last_seq().unwrap();
    // serde_json keeps the last of two equal keys: each of these was
    // taken as its second value.
    let cases = [
        (
            "repo.register",
            format!(r#"{{"namespace":"team-a","name":"s","name":"t","git":{{"url":"{url}"}}}}"#),
            "name: duplicate key",
        ),
        (
            "repo.register",
            format!(r#"{{"namespace":"team-a","name":"s","git":{{"url":"file:///elsewhere","branch":"main","url":"{url}"}}}}"#),
            "git.url: duplicate key",
        ),
        (
            "repo.update",
            r#"{"namespace":"team-a","name":"r","sync":{"schedule":"*/5 * * * *","schedule":"*/10 * * * *"}}"#.to_owned(),
            "sync.schedule: duplicate key",
        ),
        (
            "repo.update",
            r#"{"namespace":"team-a","name":"r","sync":{"schedule":"*/5 * * * *"},"sync":{}}"#.to_owned(),
            "sync: duplicate key",
        ),
        (
            "pkgrev.create",
            r#"{"namespace":"team-a","repository":"r","package":"app","workspace":"ws","resources":{"Kptfile":"a","Kptfile":"b"}}"#.to_owned(),
            "resources[\"Kptfile\"]: duplicate key",
        ),
        (
            "log.read",
            r#"{"limit":1,"from_seq":1,"limit":1000}"#.to_owned(),
            "limit: duplicate key",
        ),
    ];
    for (endpoint, body, message) in cases {
        let error = client
            .call_raw(endpoint, body.as_bytes())
            .await
            .unwrap_err();
        assert_eq!(
            (error.code, error.message.as_str()),
            (400, message),
            "{endpoint} {body}"
        );
    }
    // Nothing stored: `r` as registered, and nothing else.
    assert_eq!(node.store.last_seq().unwrap(), seq);
    let list = client.ok("repo.list", json!({})).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["name"], json!("r"));
    assert_eq!(items[0]["sync"]["schedule"], json!(""));
    // The same key in two objects is fine; a body of whitespace is `{}`.
    let reply = client
        .call_raw(
            "repo.update",
            br#"{"namespace":"team-a","name":"r","sync":{"schedule":"*/5 * * * *"},"principal":"name"}"#,
        )
        .await
        .unwrap();
    assert_eq!(reply["sync"]["schedule"], json!("*/5 * * * *"));
    let list = client.call_raw("repo.list", b" \r\n\t ").await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    node.shutdown().await;
}

#[actix_rt::test]
async fn protobuf_requests_get_protobuf_replies() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let node = start(&dir.path().join("data")).await;
    let proto = |endpoint: &'static str, body: Vec<u8>| {
        let client = node.client().clone();
        async move { client.call_proto(endpoint, body).await }
    };
    let request = pb::RepoRegisterRequest {
        namespace: "team-a".into(),
        name: "simple".into(),
        git: Some(pb::GitSpec {
            url,
            ..Default::default()
        }),
        ..Default::default()
    };
    let reply = proto("repo.register", request.encode_to_vec()).await;
    let registered = pb::RepositoryReply::decode(reply.payload.as_ref()).unwrap();
    assert_eq!(registered.sync.map(|s| s.package_count), Some(8));
    assert_eq!(
        registered
            .repository
            .unwrap()
            .spec
            .unwrap()
            .git
            .unwrap()
            .branch,
        "main"
    );

    let list = pb::PkgRevListRequest {
        namespace: "team-a".into(),
        package: "basens".into(),
        latest: Some(true),
        ..Default::default()
    };
    let page = pb::PkgRevList::decode(
        proto("pkgrev.list", list.encode_to_vec())
            .await
            .payload
            .as_ref(),
    )
    .unwrap();
    let got: Vec<(String, i64)> = page
        .items
        .iter()
        .map(|r| {
            r.revision
                .as_ref()
                .map(|r| (r.name.clone(), r.revision))
                .unwrap()
        })
        .collect();
    assert_eq!(got, [("simple.basens.v2".to_string(), 2)]);
    assert!(page.r#continue.is_empty());

    let list = pb::PkgRevListRequest {
        revision: Some(-1),
        ..Default::default()
    };
    let page = pb::PkgRevList::decode(
        proto("pkgrev.list", list.encode_to_vec())
            .await
            .payload
            .as_ref(),
    )
    .unwrap();
    assert_eq!(page.items.len(), 3, "placeholders only");

    let key = pb::PkgRevKeyRequest {
        namespace: "team-a".into(),
        name: "simple.basens.v1".into(),
    };
    let files = pb::PkgRevResources::decode(
        proto("pkgrev.resources", key.encode_to_vec())
            .await
            .payload
            .as_ref(),
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&files.resources["Kptfile"]).contains("kind: Kptfile"));

    // A bad protobuf request: 400 naming the field, as in JSON.
    let bad = pb::RepoKeyRequest {
        namespace: "Team".into(),
        name: "x".into(),
        ..Default::default()
    };
    let reply = proto("repo.get", bad.encode_to_vec()).await;
    let error = pb::ErrorReply::decode(reply.payload.as_ref()).unwrap();
    assert_eq!(error.code, 400);
    assert!(
        error
            .message
            .starts_with("namespace: \"Team\" is not a valid name"),
        "{}",
        error.message
    );
    node.shutdown().await;
}

/// Runs the real CLI against the node without blocking its runtime.
async fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = cairn_cli!()
        .run(args.iter().copied().chain(["--nats-url", url]))
        .await;
    (out.success, out.stdout, out.stderr)
}

#[actix_rt::test]
async fn the_cli_registers_lists_gets_pulls_syncs_and_unregisters() {
    let dir = TestDir::new();
    let url = unpack("nested-repository", &dir.path().join("upstream"));
    let node = start(&dir.path().join("data")).await;
    let nats = node.nats_url.clone();

    let (ok_, out, err) = cli(
        &nats,
        &[
            "repo",
            "register",
            "team-a/gcp",
            "--url",
            &url,
            "--directory",
            "catalog/gcp",
        ],
    )
    .await;
    assert!(ok_, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE  NAME  TYPE  URL"), "{out}");
    assert!(
        lines[1].starts_with("team-a     gcp   git   file://")
            && lines[1].contains(" true   Ready   5"),
        "{out}"
    );

    let (ok_, out, err) = cli(
        &nats,
        &["pkg", "list", "-o", "json", "--repository", "team-a/gcp"],
    )
    .await;
    assert!(ok_, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let mut names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "gcp.bucket.main",
            "gcp.bucket.v1",
            "gcp.bucket.v2",
            "gcp.cloud-sql.v1",
            "gcp.spanner.v1"
        ]
    );

    let (ok_, out, _) = cli(
        &nats,
        &[
            "pkg",
            "list",
            "-n",
            "team-a",
            "--lifecycle",
            "Draft",
            "-o",
            "yaml",
        ],
    )
    .await;
    assert!(ok_);
    assert_eq!(out.matches("lifecycle: Draft").count(), 3, "{out}");

    let (ok_, out, err) = cli(&nats, &["pkg", "get", "team-a/gcp.bucket.v1", "-o", "json"]).await;
    assert!(ok_, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            got["package"].as_str(),
            got["revision"].as_i64(),
            got["latest"].as_bool()
        ),
        (Some("bucket"), Some(1), Some(true))
    );

    let pulled = dir.path().join("pulled");
    let (ok_, out, err) = cli(
        &nats,
        &[
            "pkg",
            "pull",
            "team-a/gcp.bucket.v1",
            pulled.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok_, "{err}");
    assert!(
        out.starts_with("pulled ") && out.contains(" files of team-a/gcp.bucket.v1 into "),
        "{out}"
    );
    let kptfile = std::fs::read_to_string(pulled.join("Kptfile")).unwrap();
    assert!(kptfile.contains("kind: Kptfile"), "{kptfile}");

    let (ok_, out, err) = cli(&nats, &["repo", "sync", "team-a/gcp", "--wait"]).await;
    assert!(ok_, "{err}");
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .starts_with("gcp   0      0         0        5"),
        "{out}"
    );
    assert!(
        err.lines().any(|l| l
            == "team-a/gcp: synced: 0 added, 0 modified, 0 deleted; 5 package revisions"),
        "{err}"
    );
    let (ok_, _, err) = cli(&nats, &["repo", "sync", "team-a/gcp"]).await;
    assert!(ok_, "{err}");
    assert!(err.starts_with("sync of team-a/gcp requested;"), "{err}");
    let (ok_, out, err) = cli(
        &nats,
        &[
            "repo",
            "update",
            "team-a/gcp",
            "--schedule",
            "*/10 * * * *",
            "-o",
            "json",
        ],
    )
    .await;
    assert!(ok_, "{err}");
    let updated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(updated["sync"]["schedule"], json!("*/10 * * * *"));
    let (ok_, _, err) = cli(
        &nats,
        &["repo", "update", "team-a/gcp", "--schedule", "often"],
    )
    .await;
    assert!(!ok_);
    assert!(
        err.contains("400: sync.schedule: \"often\" has 1 field;"),
        "{err}"
    );

    let (ok_, _, err) = cli(&nats, &["pkg", "get", "team-a/gcp.nope.v1"]).await;
    assert!(!ok_);
    assert_eq!(
        err.trim(),
        "error: 404: package revision team-a/gcp.nope.v1 not found"
    );
    // A bare name is in -n's namespace (default: `default`).
    let (ok_, _, err) = cli(&nats, &["repo", "get", "gcp"]).await;
    assert!(!ok_);
    assert_eq!(err.trim(), "error: 404: repository default/gcp not found");
    let (ok_, _, err) = cli(&nats, &["repo", "get", "a/b/c"]).await;
    assert!(!ok_);
    assert_eq!(
        err.trim(),
        "error: REPOSITORY \"a/b/c\": more than one '/'; expected NAME or NAMESPACE/NAME"
    );

    let (ok_, out, _) = cli(&nats, &["repo", "unregister", "team-a/gcp"]).await;
    assert!(ok_);
    assert_eq!(out, "UNREGISTERED\nteam-a/gcp\n");
    let (_, out, _) = cli(&nats, &["repo", "list", "-o", "json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"items": []})
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn a_sync_larger_than_one_append_is_split_and_ends_with_its_outcome() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let node = TestNodeBuilder::in_dir(&dir.path().join("data"))
        .configure(|c| c.store.append_max_events = 3)
        .start()
        .await;
    let reply = node
        .client()
        .ok("repo.register", register("simple", &url))
        .await;
    assert_eq!(reply["sync"]["package_count"], json!(8));
    assert_eq!(names(node.client(), "simple").await.len(), 8);
    let log = node
        .client()
        .ok("log.read", json!({"stream": "repo/team-a/simple"}))
        .await;
    let events = log["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let mut want = vec!["RepositoryRegistered", "SyncStarted"];
    want.extend(["PackageRevisionAdded"; 8]);
    want.push("SyncSucceeded");
    assert_eq!(kinds, want);
    // One command, several appends: one correlation id, contiguous versions.
    let correlation = events[2]["correlation_id"].as_str().unwrap();
    assert!(events[2..]
        .iter()
        .all(|e| e["correlation_id"] == correlation));
    let versions: Vec<u64> = events
        .iter()
        .map(|e| e["stream_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (1..=11).collect::<Vec<_>>());
    node.shutdown().await;
}

#[actix_rt::test]
async fn an_unchanged_upstream_syncs_with_no_per_package_work() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("simple-repository", &upstream);
    let node = start(&dir.path().join("data")).await;
    let client = node.client().clone();
    client.ok("repo.register", register("simple", &url)).await;
    let (_, first) = client.events_after("simple", 0).await;
    let digest = first.last().unwrap()["event"]["sync_succeeded"]["refs_digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(digest.len(), 64, "{digest:?}");
    let sync = json!({"namespace": "team-a", "name": "simple"});

    // Nothing changed upstream: only SyncStarted and SyncSucceeded, with
    // the last sync's commit, count and digest.
    let before = node.store.last_seq().unwrap();
    let discoveries = node.registry().send(DiscoveryCount).await.unwrap();
    let fetches = node.registry().send(FetchCount).await.unwrap();
    let reply = client.ok("repo.sync", sync.clone()).await;
    assert_eq!(
        reply["sync"],
        json!({"added": 0, "modified": 0, "deleted": 0, "package_count": 8})
    );
    let (kinds, events) = client.events_after("simple", before).await;
    assert_eq!(kinds, ["SyncStarted", "SyncSucceeded"]);
    // It fetched, and read nothing more of the mirror.
    assert_eq!(node.registry().send(FetchCount).await.unwrap(), fetches + 1);
    assert_eq!(
        node.registry().send(DiscoveryCount).await.unwrap(),
        discoveries
    );
    let done = &events[1]["event"]["sync_succeeded"];
    assert_eq!(done["refs_digest"].as_str(), Some(digest.as_str()));
    assert_eq!(done["package_count"], json!(8));
    assert_eq!(
        done["commit"].as_str(),
        first.last().unwrap()["event"]["sync_succeeded"]["commit"].as_str()
    );

    // A new draft branch: one Added, a new digest.
    GitFixture::open(&upstream).branch("drafts/basens/fresh", "main");
    let before = node.store.last_seq().unwrap();
    let reply = client.ok("repo.sync", sync.clone()).await;
    assert_eq!(
        reply["sync"],
        json!({"added": 1, "modified": 0, "deleted": 0, "package_count": 9})
    );
    let (kinds, events) = client.events_after("simple", before).await;
    assert_eq!(
        kinds,
        ["SyncStarted", "PackageRevisionAdded", "SyncSucceeded"]
    );
    assert_eq!(
        events[1]["event"]["package_revision_added"]["revision"]["name"].as_str(),
        Some("simple.basens.fresh")
    );
    let new_digest = events[2]["event"]["sync_succeeded"]["refs_digest"]
        .as_str()
        .unwrap();
    assert_ne!(new_digest, digest);
    assert_eq!(
        node.registry().send(DiscoveryCount).await.unwrap(),
        discoveries + 1
    );

    // And unchanged again.
    let before = node.store.last_seq().unwrap();
    client.ok("repo.sync", sync).await;
    let (kinds, _) = client.events_after("simple", before).await;
    assert_eq!(kinds, ["SyncStarted", "SyncSucceeded"]);
    node.shutdown().await;
}

/// A name is used again after it was unregistered — at once, with other
/// settings, and after a restart — and the old registrations stay in the
/// log (issue: `expected version 0, found version 20`). The real CLI does
/// the same.
#[actix_rt::test]
async fn a_name_is_registered_again_after_unregister_and_keeps_its_history() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let data = dir.path().join("data");
    let node = start(&data).await;
    let client = node.client().clone();
    let key = json!({"namespace": "team-a", "name": "again"});

    client.ok("repo.register", register("again", &url)).await;
    assert_eq!(names(&client, "again").await.len(), 8);
    client.ok("repo.unregister", key.clone()).await;
    let closed_at = node
        .store
        .stream_version(&cairn_events::StreamId::repository("team-a", "again").unwrap())
        .unwrap();

    // Again, with other settings: a branch that does not exist, created.
    let mut other = register("again", &url);
    other["git"]["branch"] = json!("fresh");
    other["git"]["create_branch"] = json!(true);
    let reply = client.ok("repo.register", other).await;
    assert_eq!(reply["git"]["branch"], "fresh");
    assert_eq!(reply["status"]["ready"], true, "{reply}");
    let (kinds, _) = client.events_after("again", 0).await;
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("RepositoryRegistered")
    );
    assert_eq!(
        kinds[closed_at as usize - 1],
        "RepositoryClosed",
        "{kinds:?}"
    );
    assert_eq!(
        kinds[closed_at as usize], "RepositoryRegistered",
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "RepositoryRegistered")
            .count(),
        2
    );
    // A registered name is still taken.
    let taken = client
        .call("repo.register", register("again", &url))
        .await
        .unwrap_err();
    assert_eq!(taken.code, 409, "{taken}");

    // After a restart: unregister and register once more, by the CLI.
    let node = node.stop().await.start().await;
    let nats = node.nats_url.clone();
    let (ok_, _, err) = cli(&nats, &["repo", "unregister", "team-a/again"]).await;
    assert!(ok_, "{err}");
    let (ok_, out, err) = cli(&nats, &["repo", "register", "team-a/again", "--url", &url]).await;
    assert!(ok_, "{err}");
    assert!(
        out.lines().nth(1).unwrap().contains(" true   Ready   8"),
        "{out}"
    );
    let (kinds, _) = node.client().events_after("again", 0).await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "RepositoryRegistered")
            .count(),
        3
    );
    assert_eq!(kinds.iter().filter(|k| *k == "RepositoryClosed").count(), 2);
    assert_eq!(names(node.client(), "again").await.len(), 8);
    node.shutdown().await;
}

/// `cairn log | head -1`: a reader that closes the pipe ends the command
/// quietly (exit 0, nothing on stderr), not with `error: Broken pipe`.
#[actix_rt::test]
async fn a_closed_pipe_ends_the_cli_quietly() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let node = start(&dir.path().join("data")).await;
    node.client()
        .ok("repo.register", register("pipe", &url))
        .await;
    let nats = node.nats_url.clone();
    for args in [
        vec!["log"],
        vec!["pkg", "list", "-n", "team-a"],
        vec!["pkg", "list", "-n", "team-a", "-o", "json"],
        vec!["repo", "list", "-A"],
    ] {
        let mut command = cairn_cli!().command();
        command
            .args(&args)
            .args(["--nats-url", &nats])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cairn_tests::ChildGuard::spawn(&mut command);
        // The reader goes away before the command writes its first line.
        drop(child.0.stdout.take());
        let stderr = child.0.stderr.take().unwrap();
        let (status, stderr) = tokio::task::spawn_blocking(move || {
            let status = child.wait_timeout(WAIT);
            (status, std::io::read_to_string(stderr).unwrap())
        })
        .await
        .unwrap();
        assert_eq!((status.code(), stderr.as_str()), (Some(0), ""), "{args:?}");
    }
    node.shutdown().await;
}

/// A registration whose first sync failed exits non-zero, says what
/// failed and, for a branch that does not exist, how to have cairn
/// create it; the repository stays registered (as the message says).
#[actix_rt::test]
async fn the_cli_register_fails_when_the_first_sync_fails_and_hints_the_fix() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let node = start(&dir.path().join("data")).await;
    let nats = node.nats_url.clone();
    let (ok_, out, err) = cli(
        &nats,
        &[
            "repo",
            "register",
            "team-a/nobranch",
            "--url",
            &url,
            "--branch",
            "nope",
        ],
    )
    .await;
    assert!(!ok_, "{out}");
    assert!(out.lines().nth(1).unwrap().contains(" false  "), "{out}");
    assert_eq!(
        err,
        format!(
            "error: team-a/nobranch is registered, but its first sync failed: 404: branch \"nope\" does not exist upstream\n\
             hint: the branch does not exist upstream; to have cairn create it: cairn repo unregister team-a/nobranch && cairn repo register team-a/nobranch --url {url} --branch nope --create-branch\n"
        )
    );
    // The hint works as written.
    let (ok_, _, err) = cli(&nats, &["repo", "unregister", "team-a/nobranch"]).await;
    assert!(ok_, "{err}");
    let (ok_, out, err) = cli(
        &nats,
        &[
            "repo",
            "register",
            "team-a/nobranch",
            "--url",
            &url,
            "--branch",
            "nope",
            "--create-branch",
        ],
    )
    .await;
    assert!(ok_, "{err}");
    assert!(
        out.lines().nth(1).unwrap().contains(" true   Ready "),
        "{out}"
    );
    node.shutdown().await;
}

/// A `file://` upstream owned by another Unix user (Git's "dubious
/// ownership") is read like any other: cairn only reads it, and trusts it
/// for that invocation only — no global Git configuration is written.
#[actix_rt::test]
async fn a_file_upstream_owned_by_another_user_is_read() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("simple-repository", &upstream);
    // uid/gid 65534: nobody, never the test's user.
    let chown = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&upstream)
        .status()
        .unwrap();
    assert!(chown.success(), "the tests run as root (as CI does)");
    let global = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".gitconfig"));
    let before = global.as_ref().and_then(|g| std::fs::read(g).ok());
    let node = start(&dir.path().join("data")).await;
    let reply = node
        .client()
        .ok("repo.register", register("theirs", &url))
        .await;
    assert_eq!(
        (
            &reply["status"]["reason"],
            &reply["status"]["error_class"],
            &reply["status"]["package_count"],
            &reply["sync"]["added"]
        ),
        (&json!("Ready"), &json!(""), &json!(8), &json!(8)),
        "{reply}"
    );
    assert_eq!(
        global.as_ref().and_then(|g| std::fs::read(g).ok()),
        before,
        "the global Git configuration is untouched"
    );
    // Writing there would run the owner's hooks: Git's refusal stands,
    // as class auth (not network), and nothing is recorded.
    let last = node.store.last_seq().unwrap();
    let refused = node
        .client()
        .call(
            "pkgrev.create",
            json!({"namespace": "team-a", "repository": "theirs", "package": "app", "workspace": "ws"}),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code, 503);
    let message = refused.body["message"].as_str().unwrap();
    assert!(
        message.starts_with("upstream unavailable (auth): access denied: git push to file://")
            && message.contains("detected dubious ownership"),
        "{message}"
    );
    assert_eq!(node.store.last_seq().unwrap(), last);
    node.shutdown().await;
}

/// `pkg pull NAME DIR` refuses a directory that holds files (they would
/// mix with the package's and be pushed next), replaces its contents with
/// `--force` (keeping `.git`), and `pkg pull NAME` (or `-`) prints the
/// package as a kpt ResourceList, as `porchctl rpkg pull` does.
#[actix_rt::test]
async fn the_cli_pull_refuses_a_non_empty_directory_and_prints_a_resource_list() {
    let dir = TestDir::new();
    let url = unpack("nested-repository", &dir.path().join("upstream"));
    let node = start(&dir.path().join("data")).await;
    let mut body = register("gcp", &url);
    body["git"]["directory"] = json!("catalog/gcp");
    node.client().ok("repo.register", body).await;
    let nats = node.nats_url.clone();
    let files = node.client().resources("team-a", "gcp.bucket.v1").await;
    let target = dir.path().join("bucket");
    let path = target.to_str().unwrap();
    let (ok_, _, err) = cli(&nats, &["pkg", "pull", "team-a/gcp.bucket.v1", path]).await;
    assert!(ok_, "{err}");
    std::fs::write(target.join("stale.yaml"), "kind: Stale\n").unwrap();
    std::fs::create_dir_all(target.join(".git")).unwrap();
    std::fs::write(target.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();

    let (ok_, out, err) = cli(&nats, &["pkg", "pull", "team-a/gcp.bucket.v1", path]).await;
    assert!(!ok_, "{out}");
    assert_eq!(
        err,
        format!("error: {path} is not empty: pull into a new or empty directory, or pass --force to replace its contents\n")
    );
    assert!(target.join("stale.yaml").exists(), "nothing was touched");

    let (ok_, _, err) = cli(
        &nats,
        &["pkg", "pull", "team-a/gcp.bucket.v1", path, "--force"],
    )
    .await;
    assert!(ok_, "{err}");
    let mut on_disk: Vec<String> = walk(&target);
    on_disk.sort();
    let mut want: Vec<String> = files.keys().cloned().collect();
    want.push(".git/HEAD".into());
    want.sort();
    assert_eq!(on_disk, want, "the package's files, and .git kept");
    for (file, content) in &files {
        assert_eq!(
            &std::fs::read(target.join(file)).unwrap(),
            content,
            "{file}"
        );
    }

    for args in [
        vec!["pkg", "pull", "team-a/gcp.bucket.v1"],
        vec!["pkg", "pull", "team-a/gcp.bucket.v1", "-"],
    ] {
        let (ok_, out, err) = cli(&nats, &args).await;
        assert!(ok_, "{err}");
        let list: serde_json::Value = yaml_value(&out);
        assert_eq!(
            (&list["apiVersion"], &list["kind"]),
            (&json!("config.kubernetes.io/v1"), &json!("ResourceList"))
        );
        let mut paths: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let a = &i["metadata"]["annotations"];
                assert_eq!(
                    a["config.kubernetes.io/path"],
                    a["internal.config.kubernetes.io/path"]
                );
                a["config.kubernetes.io/path"].as_str().unwrap().to_owned()
            })
            .collect();
        paths.dedup();
        let krm: Vec<String> = files
            .keys()
            .filter(|p| p.ends_with("Kptfile") || p.ends_with(".yaml") || p.ends_with(".yml"))
            .cloned()
            .collect();
        assert_eq!(paths, krm, "{out}");
    }
    node.shutdown().await;
}

/// Every file below `root`, relative, `/`-separated.
fn walk(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_owned(),
                );
            }
        }
    }
    found
}

/// YAML as JSON values (the CLI prints the ResourceList in YAML).
fn yaml_value(text: &str) -> Value {
    let yaml: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    serde_json::to_value(yaml).unwrap()
}
