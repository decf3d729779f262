//! Background sync on a real node (real nats-server, RocksDB, Git changed
//! with the `git` CLI): the events each kind of upstream change produces,
//! scheduling with an injected clock (interval, cron, run_once_at, jitter,
//! retry delay by error class), the node-wide cap on running syncs,
//! failures that keep the last good state until the next success, and
//! cron schedules that never fire costing the node no time.

use std::{
    cell::Cell,
    future::Future,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use cairn_actors::{
    registry::{NextSyncOf, RefsRead},
    schedule::ManualClock,
};
use cairn_events::{
    envelope::{event, Metadata},
    v1::{event::Payload, RepositorySpecChanged, SyncSpec},
    StreamId,
};
use cairn_storage::{views::RepositoriesView, EventLog, ExpectedVersion};
use cairn_tests::{
    git, unpack, within, ClosedPort, GitFixture, TestDir, TestNode, TestNodeBuilder, WAIT,
};
use serde_json::{json, Value};

/// 2026-11-21T10:00:00Z: where the tests' clocks start.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_255_200)
}

fn config(data_dir: &Path) -> TestNodeBuilder {
    TestNodeBuilder::in_dir(data_dir).configure(|config| {
        config.sync.interval = Duration::from_secs(60);
        config.sync.jitter = Duration::ZERO;
        config.sync.retry.network = Duration::from_secs(11);
        config.sync.retry.timeout = Duration::from_secs(12);
        config.sync.retry.auth = Duration::from_secs(13);
        config.sync.retry.missing = Duration::from_secs(14);
        config.sync.retry.other = Duration::from_secs(15);
    })
}

async fn start(config: TestNodeBuilder) -> (TestNode, ManualClock) {
    let clock = ManualClock::new(t0());
    let node = config.clock(Arc::new(clock.clone())).start().await;
    (node, clock)
}

fn register(name: &str, url: &str) -> Value {
    json!({"namespace": "team-a", "name": name, "git": {"url": url}})
}

fn key(name: &str) -> Value {
    json!({"namespace": "team-a", "name": name})
}

fn rfc3339(at: SystemTime) -> Value {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
    json!(t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap())
}

async fn next_sync(node: &TestNode, name: &str) -> Option<(SystemTime, &'static str)> {
    node.registry()
        .send(NextSyncOf {
            namespace: "team-a".into(),
            name: name.into(),
        })
        .await
        .unwrap()
}

/// Waits until the repository's log has a finished sync (SyncSucceeded or
/// SyncFailed) after seq `after`; returns the events after `after`.
async fn finished_sync(node: &TestNode, name: &str, after: u64) -> Vec<Value> {
    let mut commits = node.store.subscribe();
    within("a finished sync", WAIT, async {
        loop {
            let (kinds, events) = node.client().events_after(name, after).await;
            if kinds
                .iter()
                .any(|k| k == "SyncSucceeded" || k == "SyncFailed")
            {
                return events;
            }
            commits.changed().await.unwrap();
        }
    })
    .await
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// `(type, name)` of each package revision event.
fn changes(events: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| {
            let kind = e["type"].as_str()?;
            let name = match kind {
                "PackageRevisionAdded" => &e["event"]["package_revision_added"]["revision"]["name"],
                "PackageRevisionModified" => {
                    &e["event"]["package_revision_modified"]["revision"]["name"]
                }
                "PackageRevisionDeleted" => &e["event"]["package_revision_deleted"]["name"],
                _ => return None,
            };
            Some((
                kind.trim_start_matches("PackageRevision").to_owned(),
                name.as_str()?.to_owned(),
            ))
        })
        .collect();
    out.sort();
    out
}

fn change(kind: &str, name: &str) -> (String, String) {
    (kind.to_owned(), name.to_owned())
}

/// One manual sync; the package revision changes it recorded. It read
/// `refs` tags, drafts and proposals (only those of the packages whose
/// refs changed, unless the registered branch moved).
async fn sync_reading(node: &TestNode, name: &str, refs: u64) -> Vec<(String, String)> {
    let refs_before = node.registry().send(RefsRead).await.unwrap();
    let before = node.store.last_seq().unwrap();
    node.client().ok("repo.sync", key(name)).await;
    let (_, events) = node.client().events_after(name, before).await;
    let kinds = kinds(&events);
    assert_eq!(kinds.first(), Some(&"SyncStarted"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"SyncSucceeded"), "{kinds:?}");
    let read = node.registry().send(RefsRead).await.unwrap() - refs_before;
    assert_eq!(read, refs, "refs read by the sync of {kinds:?}");
    changes(&events)
}

#[actix_rt::test]
async fn each_kind_of_upstream_change_yields_exactly_its_events() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("drafts-repository", &upstream);
    let bare = upstream.join(".git");
    git(&bare, &["config", "core.bare", "true"]);
    let work = dir.path().join("work");
    git(dir.path(), &["clone", "-q", bare.to_str().unwrap(), "work"]);
    let (node, _clock) = start(config(&dir.path().join("data"))).await;
    let reply = node.client().ok("repo.register", register("r", &url)).await;
    assert_eq!(reply["sync"]["package_count"], json!(11));

    // A new tag: its revision, and "latest" moves off the old one. Only
    // the tagged package's refs are read (empty/v1 and empty/v2).
    git(&bare, &["tag", "empty/v2", "empty/v1"]);
    assert_eq!(
        sync_reading(&node, "r", 2).await,
        [
            change("Added", "r.empty.v2"),
            change("Modified", "r.empty.v1")
        ]
    );

    // A new draft branch.
    git(&bare, &["branch", "drafts/basens/fresh", "main"]);
    assert_eq!(
        sync_reading(&node, "r", 3).await,
        [change("Added", "r.basens.fresh")]
    );

    // A removed tag: gone, and "latest" moves back.
    git(&bare, &["tag", "-d", "basens/v2"]);
    assert_eq!(
        sync_reading(&node, "r", 2).await,
        [
            change("Deleted", "r.basens.v2"),
            change("Modified", "r.basens.v1")
        ]
    );

    // A force-pushed draft branch (rewritten, not a descendant).
    git(&work, &["checkout", "-q", "drafts/bucket/v1"]);
    std::fs::write(work.join("bucket/extra.yaml"), "kind: ConfigMap\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "--amend", "-m", "rewritten"]);
    git(
        &work,
        &["push", "-q", "--force", "origin", "drafts/bucket/v1"],
    );
    assert_eq!(
        sync_reading(&node, "r", 1).await,
        [change("Modified", "r.bucket.v1")]
    );

    // A content change on the registered branch: its placeholder only
    // (the branch moved, so every ref is read again).
    git(&work, &["checkout", "-q", "main"]);
    std::fs::write(work.join("basens/extra.yaml"), "kind: ConfigMap\n").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "basens: one more file"]);
    git(&work, &["push", "-q", "origin", "main"]);
    assert_eq!(
        sync_reading(&node, "r", 9).await,
        [change("Modified", "r.basens.main")]
    );

    // A removed package directory: its placeholder is gone; its published
    // revisions stay (their tags do).
    git(&work, &["rm", "-q", "-r", "istions"]);
    git(&work, &["commit", "-q", "-m", "istions: removed"]);
    git(&work, &["push", "-q", "origin", "main"]);
    assert_eq!(
        sync_reading(&node, "r", 9).await,
        [change("Deleted", "r.istions.main")]
    );

    // And nothing more when nothing changed.
    assert_eq!(sync_reading(&node, "r", 0).await, []);
    let reply = node.client().ok("repo.get", key("r")).await;
    assert_eq!(reply["status"]["package_count"], json!(11));
    node.shutdown().await;
}

#[actix_rt::test]
async fn syncs_follow_the_interval_the_cron_schedule_and_run_once_at() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let (node, clock) = start(config(&dir.path().join("data"))).await;

    // Registered at 10:00 with the node's 60 s interval: next at 10:01.
    let reply = node.client().ok("repo.register", register("r", &url)).await;
    assert_eq!(reply["status"]["reason"], json!("Ready"));
    assert_eq!(
        reply["status"]["next_sync_at"],
        rfc3339(t0() + Duration::from_secs(60))
    );
    assert_eq!(
        next_sync(&node, "r").await,
        Some((t0() + Duration::from_secs(60), "schedule"))
    );

    // 59 s on, nothing is due yet; at 60 s the scheduled sync runs.
    clock.advance(Duration::from_secs(59));
    assert_eq!(
        next_sync(&node, "r").await,
        Some((t0() + Duration::from_secs(60), "schedule"))
    );
    let before = node.store.last_seq().unwrap();
    clock.advance(Duration::from_secs(1));
    let events = finished_sync(&node, "r", before).await;
    assert_eq!(kinds(&events), ["SyncStarted", "SyncSucceeded"]);
    assert_eq!(
        events[0]["event"]["sync_started"]["trigger"],
        json!("schedule")
    );
    let at_1001 = t0() + Duration::from_secs(60);
    let reply = node.client().ok("repo.get", key("r")).await;
    assert_eq!(
        reply["status"]["next_sync_at"],
        rfc3339(at_1001 + Duration::from_secs(60))
    );

    // A cron schedule (every 15 minutes) replaces the interval: 10:15.
    let reply = node
        .client()
        .ok(
            "repo.update",
            json!({"namespace": "team-a", "name": "r", "sync": {"schedule": "*/15 * * * *"}}),
        )
        .await;
    assert_eq!(reply["sync"]["schedule"], json!("*/15 * * * *"));
    let at_1015 = t0() + Duration::from_secs(15 * 60);
    assert_eq!(next_sync(&node, "r").await, Some((at_1015, "schedule")));
    let (kinds_now, _) = node
        .client()
        .events_after("r", node.store.last_seq().unwrap() - 1)
        .await;
    assert_eq!(kinds_now, ["RepositorySpecChanged"]);

    // run_once_at in the future, before the schedule's next time, comes first.
    let at_1005 = t0() + Duration::from_secs(5 * 60);
    node.client()
        .ok(
            "repo.update",
            json!({"namespace": "team-a", "name": "r",
               "sync": {"schedule": "*/15 * * * *", "run_once_at": rfc3339(at_1005)}}),
        )
        .await;
    assert_eq!(next_sync(&node, "r").await, Some((at_1005, "run-once")));
    let before = node.store.last_seq().unwrap();
    clock.set(at_1005);
    let events = finished_sync(&node, "r", before).await;
    assert_eq!(
        events[0]["event"]["sync_started"]["trigger"],
        json!("run-once")
    );
    // Served once: the schedule again.
    assert_eq!(next_sync(&node, "r").await, Some((at_1015, "schedule")));
    let reply = node.client().ok("repo.get", key("r")).await;
    assert_eq!(reply["status"]["next_sync_at"], rfc3339(at_1015));

    // run_once_at in the past: due at once, with no clock moving.
    let before = node.store.last_seq().unwrap();
    node.client().ok("repo.update",
        json!({"namespace": "team-a", "name": "r",
               "sync": {"schedule": "*/15 * * * *", "run_once_at": rfc3339(t0() - Duration::from_secs(3600))}}),
    )
    .await;
    let events = finished_sync(&node, "r", before).await;
    assert_eq!(
        kinds(&events),
        ["RepositorySpecChanged", "SyncStarted", "SyncSucceeded"]
    );
    assert_eq!(
        events[1]["event"]["sync_started"]["trigger"],
        json!("run-once")
    );
    assert_eq!(next_sync(&node, "r").await, Some((at_1015, "schedule")));

    // Bad schedules are refused by field, and change nothing.
    let before = node.store.last_seq().unwrap();
    let error = node
        .client()
        .call(
            "repo.update",
            json!({"namespace": "team-a", "name": "r", "sync": {"schedule": "every minute"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code, 400);
    assert!(
        error.body["message"]
            .as_str()
            .unwrap()
            .starts_with("sync.schedule: \"every minute\" has 2 fields"),
        "{error}"
    );
    let error = node
        .client()
        .call(
            "repo.update",
            json!({"namespace": "team-a", "name": "nope", "sync": {}}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code, 404);
    assert_eq!(node.store.last_seq().unwrap(), before);
    node.shutdown().await;
}

#[actix_rt::test]
async fn jitter_delays_each_scheduled_sync_within_its_bound() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let config =
        config(&dir.path().join("data")).configure(|c| c.sync.jitter = Duration::from_secs(30));
    let (node, _clock) = start(config).await;
    let mut delays = Vec::new();
    for i in 0..6 {
        let name = format!("r{i}");
        node.client()
            .ok("repo.register", register(&name, &url))
            .await;
        let (at, trigger) = next_sync(&node, &name).await.unwrap();
        assert_eq!(trigger, "schedule");
        let delay = at.duration_since(t0()).unwrap();
        assert!(
            delay >= Duration::from_secs(60) && delay <= Duration::from_secs(90),
            "{delay:?}"
        );
        delays.push(delay);
    }
    delays.sort();
    delays.dedup();
    assert!(delays.len() > 1, "six draws, one value: {delays:?}");
    node.shutdown().await;
}

/// A TCP server that accepts connections and never answers.
struct Silent {
    listener: tokio::net::TcpListener,
    port: u16,
}

impl Silent {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Self { listener, port }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}.git", self.port)
    }

    async fn accept(&self) -> tokio::net::TcpStream {
        within("a connection", WAIT, self.listener.accept())
            .await
            .unwrap()
            .0
    }
}

/// `repo update --schedule` answers, and `repo get` then shows, the next
/// sync the new schedule gives — the time the SyncManager armed — not the
/// one planned before; `repo update` without a flag changes nothing (an
/// error naming the flags); `--clear-schedule` is how to go back to the
/// interval.
#[actix_rt::test]
async fn the_cli_repo_update_shows_the_next_sync_of_the_new_schedule() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let (node, _clock) = start(config(&dir.path().join("data"))).await;
    node.client().ok("repo.register", register("r", &url)).await;
    let cli = cairn_tests::cairn_cli!();
    let nats = node.nats_url.clone();
    let json_of = |out: &cairn_tests::CliOutput| -> Value {
        assert!(out.success, "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    };
    let at_0300 = t0() + Duration::from_secs(17 * 3600);
    let updated = json_of(
        &cli.run([
            "repo",
            "update",
            "team-a/r",
            "--schedule",
            "0 3 * * *",
            "-o",
            "json",
            "--nats-url",
            &nats,
        ])
        .await,
    );
    assert_eq!(
        (
            &updated["sync"]["schedule"],
            &updated["status"]["next_sync_at"]
        ),
        (&json!("0 3 * * *"), &rfc3339(at_0300))
    );
    assert_eq!(next_sync(&node, "r").await, Some((at_0300, "schedule")));
    let got = json_of(
        &cli.run(["repo", "get", "team-a/r", "-o", "json", "--nats-url", &nats])
            .await,
    );
    assert_eq!(got["status"]["next_sync_at"], rfc3339(at_0300));

    // No flag: refused, nothing changed.
    let before = node.store.last_seq().unwrap();
    let out = cli
        .run(["repo", "update", "team-a/r", "--nats-url", &nats])
        .await;
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("the following required arguments were not provided:")
            && out
                .stderr
                .contains("<--schedule <SCHEDULE>|--clear-schedule|--run-once-at <RUN_ONCE_AT>>"),
        "{}",
        out.stderr
    );
    assert_eq!(node.store.last_seq().unwrap(), before);

    // A run_once_at alone keeps the schedule.
    let at_1005 = t0() + Duration::from_secs(5 * 60);
    let at = rfc3339(at_1005);
    let updated = json_of(
        &cli.run([
            "repo",
            "update",
            "team-a/r",
            "--run-once-at",
            at.as_str().unwrap(),
            "-o",
            "json",
            "--nats-url",
            &nats,
        ])
        .await,
    );
    assert_eq!(
        (
            &updated["sync"]["schedule"],
            &updated["status"]["next_sync_at"]
        ),
        (&json!("0 3 * * *"), &at)
    );

    // --clear-schedule: back to the node's interval, 10:01, before the
    // run_once_at (kept).
    let updated = json_of(
        &cli.run([
            "repo",
            "update",
            "team-a/r",
            "--clear-schedule",
            "-o",
            "json",
            "--nats-url",
            &nats,
        ])
        .await,
    );
    assert_eq!(
        (
            &updated["sync"]["schedule"],
            &updated["sync"]["run_once_at"],
            &updated["status"]["next_sync_at"]
        ),
        (&json!(""), &at, &rfc3339(t0() + Duration::from_secs(60)))
    );
    node.shutdown().await;
}

/// `repo register` against an upstream slower than `--timeout`: past a
/// second the CLI shows the sync started; at the timeout it says what
/// state the registration reached and what to run next, and exits 1.
#[actix_rt::test]
async fn the_cli_register_that_times_out_says_how_far_it_got_and_what_next() {
    let dir = TestDir::new();
    let silent = Silent::start().await;
    let (node, _clock) = start(config(&dir.path().join("data"))).await;
    let url = silent.url("slow");
    let cli = cairn_tests::cairn_cli!();
    let register = cli.run([
        "repo",
        "register",
        "team-a/slow",
        "--url",
        &url,
        "--timeout",
        "3s",
        "--nats-url",
        &node.nats_url,
    ]);
    // The upstream's connection is held open while the CLI waits.
    let (out, upstream) = tokio::join!(register, silent.accept());
    drop(upstream);
    assert!(!out.success, "{}", out.stdout);
    assert_eq!(
        out.stderr,
        "team-a/slow: sync started (register)\n\
         error: repo register: no reply within 3s; team-a/slow is registered, still syncing (+0 ~0 -0 so far): cairn repo get team-a/slow\n"
    );
    assert_eq!(out.stdout, "");
    node.shutdown().await;
}

#[actix_rt::test]
async fn failures_retry_after_the_delay_of_their_class() {
    let dir = TestDir::new();
    let config = config(&dir.path().join("data")).configure(|c| {
        c.sync.interval = Duration::from_secs(3600);
        c.git.timeout = Duration::from_millis(300);
    });
    let (node, _clock) = start(config).await;
    let silent = Silent::start().await;
    // Bound but not listening: connections are refused.
    let closed = ClosedPort::bind();
    let closed_port = closed.port();
    let missing_path = format!("file://{}/nowhere/.git", dir.path().display());
    let simple = unpack("simple-repository", &dir.path().join("simple"));
    let cases = [
        (
            "network",
            register("net", &format!("http://127.0.0.1:{closed_port}/x.git")),
            11,
        ),
        ("timeout", register("slow", &silent.url("slow")), 12),
        (
            "auth",
            json!({"namespace": "team-a", "name": "locked",
                   "git": {"url": simple, "secret_ref": "creds"}}),
            13,
        ),
        ("missing", register("gone", &missing_path), 14),
        (
            "missing",
            json!({"namespace": "team-a", "name": "nobranch",
                   "git": {"url": simple, "branch": "no-such-branch"}}),
            14,
        ),
    ];
    // The silent server's connection is held open until the timeout.
    let held = tokio::spawn(async move {
        let _stream = silent.accept().await;
        std::future::pending::<()>().await;
    });
    for (class, request, delay) in cases {
        let name = request["name"].as_str().unwrap().to_owned();
        let reply = node.client().ok("repo.register", request).await;
        assert!(reply["sync"]["error"].is_object(), "{name}: {reply}");
        let status = &reply["status"];
        assert_eq!(status["reason"], json!("Error"), "{name}");
        assert_eq!(status["error_class"], json!(class), "{name}: {status}");
        assert!(!status["message"].as_str().unwrap().is_empty());
        let retry_at = t0() + Duration::from_secs(delay);
        assert_eq!(status["next_sync_at"], rfc3339(retry_at), "{name}");
        assert_eq!(
            next_sync(&node, &name).await,
            Some((retry_at, "retry")),
            "{name}"
        );
        let (kinds, events) = node.client().events_after(&name, 0).await;
        assert_eq!(kinds, ["RepositoryRegistered", "SyncStarted", "SyncFailed"]);
        assert_eq!(
            events[2]["event"]["sync_failed"]["error_class"],
            json!(class),
            "{name}"
        );
    }
    held.abort();
    node.shutdown().await;
}

#[actix_rt::test]
async fn a_failing_upstream_keeps_the_last_state_until_the_retry_succeeds() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("simple-repository", &upstream);
    let bare = upstream.join(".git");
    let (node, clock) = start(config(&dir.path().join("data"))).await;
    node.client().ok("repo.register", register("r", &url)).await;
    let list = json!({"namespace": "team-a", "repository": "r"});
    let before = node.client().ok("pkgrev.list", list.clone()).await["items"].clone();
    assert_eq!(before.as_array().unwrap().len(), 8);

    // The registered branch disappears upstream.
    git(&bare, &["branch", "-m", "main", "renamed"]);
    let error = node.client().call("repo.sync", key("r")).await.unwrap_err();
    assert_eq!(error.code, 404);
    let reply = node.client().ok("repo.get", key("r")).await;
    let status = &reply["status"];
    assert_eq!(status["reason"], json!("Error"));
    assert_eq!(status["ready"], json!(false));
    assert_eq!(status["error_class"], json!("missing"));
    assert_eq!(
        status["message"],
        json!("branch \"main\" does not exist upstream")
    );
    assert_eq!(status["package_count"], json!(8));
    assert_eq!(
        status["next_sync_at"],
        rfc3339(t0() + Duration::from_secs(14))
    );
    // Lists are still answered from the views, unchanged.
    assert_eq!(
        node.client().ok("pkgrev.list", list.clone()).await["items"],
        before
    );

    // The upstream is unreachable too (moved away) — still the last state.
    std::fs::rename(&upstream, dir.path().join("moved")).unwrap();
    clock.advance(Duration::from_secs(14));
    let seq = node.store.last_seq().unwrap();
    let events = finished_sync(&node, "r", seq).await;
    assert_eq!(kinds(&events), ["SyncStarted", "SyncFailed"]);
    assert_eq!(
        events[0]["event"]["sync_started"]["trigger"],
        json!("retry")
    );
    assert_eq!(
        events[1]["event"]["sync_failed"]["error_class"],
        json!("missing")
    );
    assert_eq!(
        node.client().ok("pkgrev.list", list.clone()).await["items"],
        before
    );

    // Back, with its branch: the next retry recovers.
    std::fs::rename(dir.path().join("moved"), &upstream).unwrap();
    git(&bare, &["branch", "-m", "renamed", "main"]);
    let seq = node.store.last_seq().unwrap();
    clock.advance(Duration::from_secs(14));
    let events = finished_sync(&node, "r", seq).await;
    assert_eq!(kinds(&events), ["SyncStarted", "SyncSucceeded"]);
    let reply = node.client().ok("repo.get", key("r")).await;
    let status = &reply["status"];
    assert_eq!(
        (
            status["reason"].clone(),
            status["ready"].clone(),
            status["message"].clone(),
            status["error_class"].clone()
        ),
        (json!("Ready"), json!(true), json!(""), json!(""))
    );
    assert_eq!(node.client().ok("pkgrev.list", list).await["items"], before);
    node.shutdown().await;
}

#[actix_rt::test]
async fn at_most_max_concurrent_syncs_run_at_once() {
    let dir = TestDir::new();
    let config = config(&dir.path().join("data")).configure(|c| c.sync.max_concurrent = 2);
    let (node, _clock) = start(config).await;
    let silent = Silent::start().await;
    let mut slots = node.sync_slots();

    // Three repositories ask to sync at once (registered without waiting);
    // their upstream accepts connections and never answers.
    for name in ["a", "b", "c"] {
        let mut request = register(name, &silent.url(name));
        request["wait"] = json!(false);
        node.client().ok("repo.register", request).await;
    }
    let first = silent.accept().await;
    let second = silent.accept().await;
    let state = *within(
        "two running syncs and one waiting",
        WAIT,
        slots.wait_for(|s| s.running == 2 && s.waiting == 1),
    )
    .await
    .unwrap();
    assert_eq!(state.peak, 2);
    // The third has not started: no SyncStarted in its log, one running
    // sync each in the others'.
    let mut started = Vec::new();
    for name in ["a", "b", "c"] {
        let (kinds, _) = node.client().events_after(name, 0).await;
        started.push(kinds.iter().filter(|k| *k == "SyncStarted").count());
    }
    started.sort();
    assert_eq!(started, [0, 1, 1]);

    // One upstream hangs up: its sync fails, and the third takes the slot.
    drop(first);
    let third = silent.accept().await;
    drop((second, third));
    let state = *within(
        "no running or waiting sync",
        WAIT,
        slots.wait_for(|s| s.running == 0 && s.waiting == 0),
    )
    .await
    .unwrap();
    assert_eq!(state.peak, 2);
    for name in ["a", "b", "c"] {
        let (kinds, _) = node.client().events_after(name, 0).await;
        assert_eq!(
            kinds,
            ["RepositoryRegistered", "SyncStarted", "SyncFailed"],
            "{name}"
        );
    }
    node.shutdown().await;
}

/// What `work` answered, how long it took, and the slowest of the
/// `repo.get`s of repository `other` sent back to back while it ran (the
/// last one finishing after it): a node whose thread `work` stalls shows
/// in both.
async fn timed_beside_gets<T>(
    node: &TestNode,
    other: &str,
    work: impl Future<Output = T>,
) -> (T, Duration, Duration) {
    let done = Cell::new(false);
    let slowest = Cell::new(Duration::ZERO);
    let started = Instant::now();
    let work = async {
        let answer = work.await;
        done.set(true);
        (answer, started.elapsed())
    };
    let gets = async {
        while !done.get() {
            let asked = Instant::now();
            let reply = node.client().ok("repo.get", key(other)).await;
            assert_eq!(reply["name"], json!(other));
            slowest.set(slowest.get().max(asked.elapsed()));
        }
    };
    let ((answer, took), ()) = futures::join!(work, gets);
    (answer, took, slowest.get())
}

/// A `repo.get` answers in about a millisecond; a schedule's next time
/// took croner 3.7 s (release) to 8 s (these debug tests) for
/// `L * * * *` on the node's only arbiter thread. Generous, so a loaded
/// 2-core CI machine does not trip it; still well below the bug.
const QUICK: Duration = Duration::from_millis(2500);

/// A sync of an unchanged `file://` upstream: an `ls-remote` and two
/// appends (it took 6–8 s in these debug tests with `L * * * *`).
const SYNC_QUICK: Duration = Duration::from_secs(3);

#[actix_rt::test]
async fn schedules_that_never_fire_are_refused_at_once_while_other_requests_go_on() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let (node, _clock) = start(config(&dir.path().join("data"))).await;
    let mut request = register("a", &url);
    request["sync"] = json!({"schedule": "*/15 * * * *"});
    node.client().ok("repo.register", request).await;
    node.client().ok("repo.register", register("b", &url)).await;
    let at_1015 = t0() + Duration::from_secs(15 * 60);
    assert_eq!(next_sync(&node, "a").await, Some((at_1015, "schedule")));
    let seq = node.store.last_seq().unwrap();

    let cases = [
        // croner took `L` for a minute (hour, …) that never comes, and
        // searched to the year 5000: 3.7 s, 102 ms, 218 ms.
        ("L * * * *", "\"L * * * *\" is not a valid cron expression: minute \"L\": L is allowed only in day-of-month (L) and day-of-week (DL)"),
        ("* L * * *", "\"* L * * *\" is not a valid cron expression: hour \"L\": L is allowed only in day-of-month (L) and day-of-week (DL)"),
        ("L L * * *", "\"L L * * *\" is not a valid cron expression: minute \"L\": L is allowed only in day-of-month (L) and day-of-week (DL)"),
        ("0 0 * * L", "\"0 0 * * L\" is not a valid cron expression: day-of-week \"L\": L alone is allowed only in day-of-month; in day-of-week say which day: DL (5L, FRIL)"),
        // Days that do not exist: no time within the horizon.
        ("0 0 30 2 *", "\"0 0 30 2 *\" has no time in the next 8 years (a day that does not exist, like 30 2, or day rules that never meet)"),
        ("0 0 31 4,6,9,11 *", "\"0 0 31 4,6,9,11 *\" has no time in the next 8 years (a day that does not exist, like 30 2, or day rules that never meet)"),
    ];
    for (schedule, message) in cases {
        let update = node.client().call(
            "repo.update",
            json!({"namespace": "team-a", "name": "a", "sync": {"schedule": schedule}}),
        );
        let (answer, took, slowest_get) = timed_beside_gets(&node, "b", update).await;
        let answer = answer.map(|_| "200").map_err(|e| e.message);
        assert!(
            took < QUICK,
            "{schedule}: answered {answer:?} after {took:?}"
        );
        assert!(
            slowest_get < QUICK,
            "{schedule}: a repo.get of another repository took {slowest_get:?}"
        );
        assert_eq!(
            answer,
            Err(format!("sync.schedule: {message}")),
            "{schedule}"
        );
        // Registering with it is refused the same way.
        let mut request = register("c", &url);
        request["sync"] = json!({"schedule": schedule});
        let error = node
            .client()
            .call("repo.register", request)
            .await
            .unwrap_err();
        assert_eq!(error.message, format!("sync.schedule: {message}"));
    }
    // Nothing changed: no event, the same schedule and next time.
    assert_eq!(node.store.last_seq().unwrap(), seq);
    let reply = node.client().ok("repo.get", key("a")).await;
    assert_eq!(reply["sync"]["schedule"], json!("*/15 * * * *"));
    assert_eq!(next_sync(&node, "a").await, Some((at_1015, "schedule")));
    let error = node.client().call("repo.get", key("c")).await.unwrap_err();
    assert_eq!(error.code, 404);

    // A rare schedule that does fire is kept: Feb 29, from 2026-11-21.
    let update = node.client().call(
        "repo.update",
        json!({"namespace": "team-a", "name": "a", "sync": {"schedule": "0 0 29 2 *"}}),
    );
    let (answer, took, slowest_get) = timed_beside_gets(&node, "b", update).await;
    assert_eq!(answer.unwrap()["sync"]["schedule"], json!("0 0 29 2 *"));
    assert!(
        took < QUICK && slowest_get < QUICK,
        "{took:?}, {slowest_get:?}"
    );
    let leap_day = SystemTime::UNIX_EPOCH + Duration::from_secs(1_835_395_200);
    assert_eq!(rfc3339(leap_day), json!("2028-02-29T00:00:00Z"));
    assert_eq!(next_sync(&node, "a").await, Some((leap_day, "schedule")));
    node.shutdown().await;
}

#[actix_rt::test]
async fn a_stored_schedule_that_never_fires_costs_no_time_and_gets_the_interval() {
    let dir = TestDir::new();
    let url = unpack("simple-repository", &dir.path().join("upstream"));
    let (node, _clock) = start(config(&dir.path().join("data"))).await;
    node.client().ok("repo.register", register("a", &url)).await;
    node.client().ok("repo.register", register("b", &url)).await;
    // A log written before schedules were checked: `a` has `L * * * *`.
    let mut spec = RepositoriesView::get(&node.store, "team-a", "a")
        .unwrap()
        .unwrap()
        .spec
        .unwrap();
    spec.sync = Some(SyncSpec {
        schedule: "L * * * *".into(),
        run_once_at: None,
    });
    let stream = StreamId::repository("team-a", "a").unwrap();
    let version = node.store.stream_version(&stream).unwrap();
    node.store
        .append_async(
            &stream,
            ExpectedVersion::Exact(version),
            vec![event(Payload::RepositorySpecChanged(
                RepositorySpecChanged {
                    spec: Some(spec),
                    next_sync_at: None,
                },
            ))],
            Metadata::command("alice"),
        )
        .await
        .unwrap();
    let seq = node.store.last_seq().unwrap();
    let builder = node.stop().await;

    // After a restart: its start-up sync, next at the node's interval
    // (jitter 0; the clock still at t0), and the other repository answers
    // meanwhile.
    let node = builder.start().await;
    let (events, _, slowest_get) =
        timed_beside_gets(&node, "b", finished_sync(&node, "a", seq)).await;
    assert_eq!(kinds(&events), ["SyncStarted", "SyncSucceeded"]);
    assert_eq!(
        events[0]["event"]["sync_started"]["trigger"],
        json!("startup")
    );
    assert!(slowest_get < QUICK, "a repo.get took {slowest_get:?}");
    let at_1001 = t0() + Duration::from_secs(60);
    let reply = node.client().ok("repo.get", key("a")).await;
    assert_eq!(reply["sync"]["schedule"], json!("L * * * *"));
    assert_eq!(reply["status"]["next_sync_at"], rfc3339(at_1001));
    assert_eq!(next_sync(&node, "a").await, Some((at_1001, "schedule")));

    // Every later sync: as quick as any, and the interval again.
    let sync = node.client().call("repo.sync", key("a"));
    let (answer, took, slowest_get) = timed_beside_gets(&node, "b", sync).await;
    assert_eq!(answer.unwrap()["status"]["next_sync_at"], rfc3339(at_1001));
    assert!(took < SYNC_QUICK, "repo.sync took {took:?}");
    assert!(slowest_get < QUICK, "a repo.get took {slowest_get:?}");
    assert_eq!(next_sync(&node, "a").await, Some((at_1001, "schedule")));
    node.shutdown().await;
}

/// `(type, name)` of every package revision event of `events`, in log
/// order.
fn revision_events(events: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in events {
        let kind = e["type"].as_str().unwrap();
        let name = match kind {
            "PackageRevisionAdded" => &e["event"]["package_revision_added"]["revision"]["name"],
            "PackageRevisionModified" => {
                &e["event"]["package_revision_modified"]["revision"]["name"]
            }
            "PackageRevisionDeleted" => &e["event"]["package_revision_deleted"]["name"],
            _ => continue,
        };
        out.push((kind.to_owned(), name.as_str().unwrap().to_owned()));
    }
    out
}

/// The names `pkgrev.list` lists for repository `name`, sorted.
async fn listed(client: &cairn_tests::Client, name: &str) -> Vec<String> {
    let reply = client
        .ok(
            "pkgrev.list",
            json!({"namespace": "team-a", "repository": name}),
        )
        .await;
    let mut names: Vec<String> = reply["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[actix_rt::test]
async fn first_syncs_larger_than_the_memory_budget_are_appended_in_chunks_within_it() {
    let dir = TestDir::new();
    // Two repositories of 60 revisions (20 packages, a placeholder and two
    // tags each): about 3 KiB each in flight, so each sync alone needs
    // several times the 64 KiB the two share.
    let (a, a_names) = GitFixture::with_packages(&dir.path().join("a"), "a", 20, 2, 1);
    let (b, b_names) = GitFixture::with_packages(&dir.path().join("b"), "b", 20, 2, 1);
    let config = config(&dir.path().join("data")).configure(|c| {
        c.sync.memory_budget_bytes = 64 << 10;
        c.sync.max_concurrent = 2;
    });
    let (node, _clock) = start(config).await;
    let budget = node.sync_budget();

    // Both first syncs at once.
    for (name, fixture) in [("a", &a), ("b", &b)] {
        let mut request = register(name, &fixture.url());
        request["wait"] = json!(false);
        node.client().ok("repo.register", request).await;
    }
    for (name, names) in [("a", &a_names), ("b", &b_names)] {
        let events = finished_sync(&node, name, 0).await;
        let kinds = kinds(&events);
        assert_eq!(kinds.last(), Some(&"SyncSucceeded"), "{name}: {kinds:?}");
        assert_eq!(
            events.last().unwrap()["event"]["sync_succeeded"]["added"],
            json!(60),
            "{name}"
        );
        assert_eq!(
            events.last().unwrap()["event"]["sync_succeeded"]["package_count"],
            json!(60),
            "{name}"
        );
        // Every revision added once, nothing else.
        let mut added: Vec<String> = revision_events(&events)
            .into_iter()
            .map(|(kind, name)| {
                assert_eq!(kind, "PackageRevisionAdded");
                name
            })
            .collect();
        added.sort();
        assert_eq!(&added, names, "{name}");
        assert_eq!(&listed(node.client(), name).await, names, "{name}");
    }
    let state = *budget.borrow();
    // In several appends each, never holding more than the budget.
    assert!(
        state.chunks_appended > 2,
        "two syncs of 60 revisions in {} chunks",
        state.chunks_appended
    );
    assert!(
        state.peak_bytes <= 64 << 10,
        "peak reservation {} bytes",
        state.peak_bytes
    );
    assert_eq!(state.reserved_bytes, 0);

    // A package goes upstream (and the branch moves): a chunked resync
    // reads every revision again, and deletes only the three that are
    // gone — never one it has not reached yet.
    a.git(&["rm", "-r", "-q", "pkg-005"]);
    a.commit("remove pkg-005");
    a.git(&["tag", "-d", "pkg-005/v1", "pkg-005/v2"]);
    let chunks_before = state.chunks_appended;
    let changes = sync_reading(&node, "a", 38).await;
    assert_eq!(
        changes,
        [
            change("Deleted", "a.pkg-005.main"),
            change("Deleted", "a.pkg-005.v1"),
            change("Deleted", "a.pkg-005.v2"),
        ]
    );
    let mut left = a_names.clone();
    left.retain(|n| !n.starts_with("a.pkg-005."));
    assert_eq!(listed(node.client(), "a").await, left);
    let state = *budget.borrow();
    assert!(state.chunks_appended > chunks_before);
    assert!(state.peak_bytes <= 64 << 10);
    node.shutdown().await;
}

#[actix_rt::test]
async fn syncs_whose_revisions_each_exceed_the_budget_take_turns_and_finish() {
    let dir = TestDir::new();
    // Revisions of 200 files: each alone is estimated above the whole
    // 64 KiB budget, so each chunk takes all of it, and two syncs must
    // take turns (neither may wait for the budget while holding part).
    let (a, a_names) = GitFixture::with_packages(&dir.path().join("a"), "a", 3, 1, 200);
    let (b, b_names) = GitFixture::with_packages(&dir.path().join("b"), "b", 3, 1, 200);
    let config = config(&dir.path().join("data")).configure(|c| {
        c.sync.memory_budget_bytes = 64 << 10;
        c.sync.max_concurrent = 2;
    });
    let (node, _clock) = start(config).await;
    let budget = node.sync_budget();
    for (name, fixture) in [("a", &a), ("b", &b)] {
        let mut request = register(name, &fixture.url());
        request["wait"] = json!(false);
        node.client().ok("repo.register", request).await;
    }
    for (name, names) in [("a", &a_names), ("b", &b_names)] {
        let events = finished_sync(&node, name, 0).await;
        assert_eq!(
            events.last().unwrap()["event"]["sync_succeeded"]["added"],
            json!(6),
            "{name}: {:?}",
            kinds(&events)
        );
        assert_eq!(&listed(node.client(), name).await, names, "{name}");
    }
    let state = *budget.borrow();
    assert_eq!(state.chunks_appended, 12, "one revision a chunk");
    assert_eq!(state.peak_bytes, 64 << 10, "never more than the budget");
    assert_eq!(state.reserved_bytes, 0);
    node.shutdown().await;
}

#[tokio::test]
async fn a_sync_killed_between_chunks_is_completed_by_the_next_one_without_duplicates() {
    use cairn_storage::{views::PackageRevisionsView, Store, StoreConfig};
    use cairn_tests::{cairn_cli, ChildNode, Client, KILL_AFTER_SYNC_CHUNKS};

    let dir = TestDir::new();
    let (upstream, names) =
        GitFixture::with_packages(&dir.path().join("upstream"), "big", 20, 2, 1);
    let data = dir.path().join("data");
    let cli = cairn_cli!();

    // A node that dies (SIGKILL) right after the second chunk of a sync
    // committed; the budget makes chunks of a few revisions.
    let mut node = tokio::task::spawn_blocking({
        let (cli, data) = (cli.clone(), data.clone());
        move || {
            ChildNode::start_with_env(
                &cli,
                &data,
                &["--nats-listen", "127.0.0.1:0"],
                &[
                    ("CAIRN_SYNC__MEMORY_BUDGET_BYTES", "65536"),
                    (KILL_AFTER_SYNC_CHUNKS, "2"),
                ],
            )
        }
    })
    .await
    .unwrap();
    let client = Client::connect(node.url()).await;
    let mut request = register("big", &upstream.url());
    request["wait"] = json!(false);
    // The node may die before its reply reaches us (a timeout, or "no
    // responders" once the server saw its connection go): the log says
    // what happened.
    // "No responders" before anything was delivered (seen under load right
    // after the ready line) is asked again: nothing ran.
    let body: bytes::Bytes = serde_json::to_vec(&request).unwrap().into();
    let _ = within("the registration to reach the node", WAIT, async {
        loop {
            match client
                .nats()
                .request("cairn.v1.repo.register", body.clone())
                .await
            {
                Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                _ => return,
            }
        }
    })
    .await;
    let status = tokio::task::spawn_blocking(move || {
        let status = node.wait_exit(WAIT);
        (node, status)
    })
    .await
    .unwrap()
    .1;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");

    // What the crash left: the sync opened, two chunks of it, nothing more.
    let store_config = StoreConfig::new(cairn::config::store_dir(&data));
    let store = Store::open(store_config, cairn_storage::views::default_views()).unwrap();
    let stream = cairn_events::StreamId::repository("team-a", "big").unwrap();
    let left = store.read_stream(&stream, 1, usize::MAX).unwrap();
    let left_kinds: Vec<String> = left
        .iter()
        .map(|e| {
            cairn_events::envelope::EventKind::of(
                e.event.as_ref().unwrap().payload.as_ref().unwrap(),
            )
            .name()
            .to_owned()
        })
        .collect();
    let partial = left_kinds
        .iter()
        .filter(|k| *k == "PackageRevisionAdded")
        .count();
    assert!(
        partial > 0 && partial < names.len(),
        "the crash left {partial} of {} revisions: {left_kinds:?}",
        names.len()
    );
    let mut want = vec!["RepositoryRegistered".to_owned(), "SyncStarted".to_owned()];
    want.extend(std::iter::repeat_n(
        "PackageRevisionAdded".to_owned(),
        partial,
    ));
    assert_eq!(left_kinds, want);
    let rows = PackageRevisionsView::list(&store, Some("team-a"), Some("big"), None, 1000).unwrap();
    assert_eq!(rows.len(), partial, "the views hold the committed chunks");
    drop(store);

    // Restarted, the node syncs the repository again (at start, and once
    // more when asked): the reconciliation completes.
    let node = tokio::task::spawn_blocking({
        let (cli, data) = (cli.clone(), data.clone());
        move || ChildNode::start(&cli, &data)
    })
    .await
    .unwrap();
    let client = Client::connect(node.url()).await;
    let reply = client.ok("repo.sync", key("big")).await;
    assert_eq!(reply["sync"]["package_count"], json!(names.len()));
    assert_eq!(listed(&client, "big").await, names);
    let log = client
        .ok(
            "log.read",
            json!({"stream": "repo/team-a/big", "limit": 1000}),
        )
        .await;
    let events = log["events"].as_array().unwrap();
    // Each revision added exactly once over both runs; nothing modified
    // or deleted.
    let changes = revision_events(events);
    let mut added: Vec<String> = changes
        .iter()
        .filter(|(kind, _)| kind == "PackageRevisionAdded")
        .map(|(_, name)| name.clone())
        .collect();
    assert_eq!(added.len(), changes.len(), "{changes:?}");
    added.sort();
    assert_eq!(added, names);
    // The first sync after the crash added what it had left out.
    let done = events
        .iter()
        .find(|e| e["type"] == "SyncSucceeded")
        .expect("a successful sync after the restart");
    assert_eq!(
        done["event"]["sync_succeeded"]["added"],
        json!(names.len() - partial)
    );
    assert_eq!(
        done["event"]["sync_succeeded"]["package_count"],
        json!(names.len())
    );
    drop(node);
}
