//! Watches on a real node, real nats-server, real Git (Porch fixtures
//! changed with the `git` CLI): listing then changes, filters and their
//! transitions, order, resume across a restart, cleanup of vanished
//! clients, start/stop cycles, Relist for a slow consumer, bad input, and
//! the `cairn watch` CLI.
//!
//! Exactness without sleeping: every watch here asks for short heartbeats,
//! and a heartbeat's `seq` vouches that every matching event up to it was
//! delivered, so "these events and nothing else up to seq S" is: collect
//! lines until a heartbeat with `seq >= S`.

use std::{collections::BTreeSet, path::Path, process::Stdio};

use cairn::config::WatchSection;
use cairn_events::v1::{event::Payload, Envelope};
use cairn_storage::EventLog;
use cairn_tests::{
    async_lines, cairn_cli, git, next_line, unpack, wait_until, within, ChildGuard, Client,
    TestDir, TestNode, TestNodeBuilder, WAIT,
};
use futures::StreamExt;
use serde_json::{json, Value};

/// Runs `git --git-dir=<upstream>/.git args`.
fn upstream_git(upstream: &Path, args: &[&str]) -> String {
    let git_dir = format!("--git-dir={}/.git", upstream.display());
    let mut all = vec![git_dir.as_str()];
    all.extend_from_slice(args);
    git(upstream, &all)
}

/// Pushes a draft `drafts/<package>/v1` holding one package whose Kptfile
/// carries `tier: <tier>`, based on main.
fn push_labelled_draft(upstream: &Path, work: &Path, package: &str, tier: &str) {
    if !work.exists() {
        git(
            upstream.parent().unwrap(),
            &[
                "clone",
                "-q",
                &format!("{}/.git", upstream.display()),
                work.to_str().unwrap(),
            ],
        );
    }
    git(work, &["checkout", "-q", "--detach", "origin/main"]);
    std::fs::create_dir_all(work.join(package)).unwrap();
    std::fs::write(
        work.join(package).join("Kptfile"),
        format!(
            "apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: {package}\n  labels:\n    tier: {tier}\n"
        ),
    )
    .unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", &format!("{package} {tier}")]);
    git(
        work,
        &[
            "push",
            "-q",
            "-f",
            "origin",
            &format!("HEAD:refs/heads/drafts/{package}/v1"),
        ],
    );
}

async fn start_node(data_dir: &Path, watch: WatchSection) -> TestNode {
    TestNodeBuilder::in_dir(data_dir)
        .configure(|c| c.watch = watch)
        .start()
        .await
}

async fn register(client: &Client, name: &str, url: &str) {
    client
        .ok(
            "repo.register",
            json!({"namespace": "team-a", "name": name, "git": {"url": url}}),
        )
        .await;
}

async fn sync(client: &Client, name: &str) -> Value {
    client
        .ok("repo.sync", json!({"namespace": "team-a", "name": name}))
        .await
}

/// Names `pkgrev.list` gives for `filter`, in its order.
async fn listed(client: &Client, filter: Value) -> Vec<String> {
    let reply = client.ok("pkgrev.list", filter).await;
    names_of(reply["items"].as_array().unwrap())
}

fn names_of(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Live watchers, from `$SRV.STATS` (`data.watchers` of `watch-start`).
async fn watchers(client: &Client) -> u64 {
    let stats = client.srv("STATS").await;
    stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "watch-start")
        .and_then(|e| e["data"]["watchers"].as_u64())
        .unwrap_or_else(|| panic!("no watcher count in {stats}"))
}

/// Waits (polling, bounded: nothing announces a watcher's end but the
/// count in `$SRV.STATS`) until the node counts `want` watchers.
async fn wait_for_watchers(client: &Client, want: u64) {
    wait_until(&format!("{want} watchers"), WAIT, || async move {
        let now = watchers(client).await;
        if now == want {
            Ok(())
        } else {
            Err(format!("{now} watchers"))
        }
    })
    .await
}

/// A watch seen from its client. A task reads its subject, answers each
/// heartbeat at once (as a real client does, whatever the test is busy
/// with) and hands every line, heartbeats included, to the test.
struct Watch {
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    reader: tokio::task::JoinHandle<()>,
    id: String,
    /// `seq` of the start reply.
    seq: u64,
}

impl Watch {
    /// Subscribes to a fresh inbox and starts a watch delivering there
    /// (`body` without `deliver_subject`; heartbeats every 250 ms unless
    /// given).
    async fn start(client: &Client, mut body: Value) -> Watch {
        let subject = client.new_inbox();
        let mut subscription = client.subscribe(&subject).await.into_inner();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let answering = client.nats().clone();
        let reader = tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                if let Some(reply) = &message.reply {
                    let _ = answering.publish(reply.clone(), "ok".into()).await;
                }
                let line = serde_json::from_slice(&message.payload).unwrap();
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        body["deliver_subject"] = json!(subject);
        if body.get("heartbeat_ms").is_none() {
            body["heartbeat_ms"] = json!(250);
        }
        let reply = client.ok("watch.start", body).await;
        Watch {
            lines,
            reader,
            id: reply["watch_id"].as_str().unwrap().to_owned(),
            seq: reply["seq"].as_u64().unwrap(),
        }
    }

    /// The client goes away: its subscription ends (no more answers).
    fn disconnect(&mut self) {
        self.reader.abort();
    }

    /// The next line, heartbeats included.
    async fn next_any(&mut self) -> Value {
        within("a watch line", WAIT, self.lines.recv())
            .await
            .expect("subscription open")
    }

    /// The next line that is not a heartbeat; the whole wait is bounded by
    /// one deadline (heartbeats alone would otherwise keep it going).
    async fn next(&mut self) -> Value {
        within("a watch line that is not a heartbeat", WAIT, async {
            loop {
                let line = self.next_any().await;
                if line["type"] != "Heartbeat" {
                    return line;
                }
            }
        })
        .await
    }

    /// The initial listing: names of the Added lines, and the bookmark.
    async fn listing(&mut self) -> (Vec<String>, u64) {
        within("the initial listing", WAIT, async {
            let mut names = Vec::new();
            loop {
                let line = self.next().await;
                match line["type"].as_str().unwrap() {
                    "Added" => {
                        assert_eq!(line.get("seq"), None, "listing lines carry no seq");
                        names.push(line["object"]["name"].as_str().unwrap().to_owned());
                    }
                    "Bookmark" => return (names, line["seq"].as_u64().unwrap()),
                    other => panic!("unexpected {other} in the listing: {line}"),
                }
            }
        })
        .await
    }

    /// Every line up to the first heartbeat vouching for `seq`.
    async fn through(&mut self, seq: u64) -> Vec<Value> {
        within(
            &format!("a heartbeat vouching for seq {seq}"),
            WAIT,
            async {
                let mut lines = Vec::new();
                loop {
                    let line = self.next_any().await;
                    if line["type"] == "Heartbeat" {
                        if line["seq"].as_u64().unwrap() >= seq {
                            return lines;
                        }
                        continue;
                    }
                    lines.push(line);
                }
            },
        )
        .await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// `"<type> <name>"` of change lines.
fn changes(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l["type"].as_str().unwrap(),
                l["object"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// `(seq, "<type> <name>")` of the package revision events of the log in
/// `(after, to]` (as a watch without filter reports them).
fn log_changes(store: &cairn_storage::Store, after: u64, to: u64) -> Vec<(u64, String)> {
    store
        .read_all(after + 1, (to - after) as usize)
        .unwrap()
        .iter()
        .filter_map(|e| revision_change(e).map(|c| (e.seq, c)))
        .collect()
}

fn revision_change(e: &Envelope) -> Option<String> {
    match e.event.as_ref()?.payload.as_ref()? {
        Payload::PackageRevisionAdded(a) => Some(format!("Added {}", a.revision.as_ref()?.name)),
        Payload::PackageRevisionModified(m) => {
            Some(format!("Modified {}", m.revision.as_ref()?.name))
        }
        Payload::PackageRevisionDeleted(d) => Some(format!("Deleted {}", d.name)),
        _ => None,
    }
}

fn seqs_and_changes(lines: &[Value]) -> Vec<(u64, String)> {
    lines
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .zip(changes(lines))
        .collect()
}

#[actix_rt::test]
async fn a_listing_then_exactly_the_changes_of_a_sync() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("drafts-repository", &upstream);
    let node = start_node(&dir.path().join("data"), WatchSection::default()).await;
    let client = node.client().clone();
    register(&client, "r", &url).await;
    assert_eq!(watchers(&client).await, 0);

    let mut watch = Watch::start(&client, json!({"filter": {"namespace": "team-a"}})).await;
    assert_eq!(watchers(&client).await, 1);
    let (names, bookmark) = watch.listing().await;
    assert_eq!(
        names,
        listed(&client, json!({"namespace": "team-a"})).await,
        "the listing is pkgrev.list's, in its order"
    );
    assert_eq!(names.len(), 11);
    assert_eq!(bookmark, node.store.last_seq().unwrap());
    assert_eq!(watch.seq, bookmark, "the reply's seq is the bookmark");

    // A new tag publishes basens v3; v2 stops being the latest.
    upstream_git(&upstream, &["tag", "basens/v3", "main"]);
    let reply = sync(&client, "r").await;
    assert_eq!(
        reply["sync"],
        json!({"added": 1, "modified": 1, "deleted": 0, "package_count": 12})
    );
    let last = node.store.last_seq().unwrap();
    let lines = watch.through(last).await;
    assert_eq!(
        changes(&lines),
        ["Modified r.basens.v2", "Added r.basens.v3"]
    );
    assert_eq!(
        seqs_and_changes(&lines),
        log_changes(&node.store, bookmark, last)
    );
    assert_eq!(lines[1]["object"]["latest"], json!(true));
    assert_eq!(lines[0]["object"]["latest"], json!(false));
    // (`pkgrev.get` adds the revision's `lock`, computed from the
    // repository's spec)
    let mut got = client
        .ok(
            "pkgrev.get",
            json!({"namespace": "team-a", "name": "r.basens.v3"}),
        )
        .await;
    assert_eq!(got["lock"]["git"]["ref"], "basens/v3");
    got.as_object_mut().unwrap().remove("lock");
    assert_eq!(
        lines[1]["object"], got,
        "a change carries the revision as pkgrev.get renders it"
    );

    let stopped = client.ok("watch.stop", json!({"watch_id": watch.id})).await;
    assert_eq!(stopped, json!({"stopped": watch.id}));
    assert_eq!(watchers(&client).await, 0);
    let error = client
        .call("watch.stop", json!({"watch_id": watch.id}))
        .await
        .unwrap_err();
    assert_eq!(error.code, 404);
    assert_eq!(
        error.body["message"],
        json!(format!("watch {} not found", watch.id))
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn filters_deliver_exact_sets_and_follow_transitions() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("drafts-repository", &upstream);
    let work = dir.path().join("work");
    push_labelled_draft(&upstream, &work, "labelled", "base");
    push_labelled_draft(&upstream, &work, "plain", "app");
    let other = unpack("simple-repository", &dir.path().join("other"));
    let node = start_node(&dir.path().join("data"), WatchSection::default()).await;
    let client = node.client().clone();
    register(&client, "r", &url).await;
    register(&client, "s", &other).await;

    let mut by_repository = Watch::start(&client, json!({"filter": {"repository": "s"}})).await;
    let mut by_package = Watch::start(
        &client,
        json!({"filter": {"repository": "r", "package": "basens"}}),
    )
    .await;
    let mut drafts = Watch::start(&client, json!({"filter": {"lifecycle": ["Draft"]}})).await;
    let mut labelled = Watch::start(&client, json!({"filter": {"labels": {"tier": "base"}}})).await;
    assert_eq!(watchers(&client).await, 4);

    let sorted = |v: Vec<String>| v.into_iter().collect::<BTreeSet<_>>();
    let (names, _) = by_repository.listing().await;
    assert_eq!(names.len(), 8);
    assert_eq!(
        sorted(names),
        sorted(listed(&client, json!({"repository": "s"})).await)
    );
    let (names, _) = by_package.listing().await;
    assert_eq!(names, ["r.basens.main", "r.basens.v1", "r.basens.v2"]);
    let (names, _) = drafts.listing().await;
    assert_eq!(
        sorted(names),
        sorted(
            [
                "r.bucket.v1",
                "r.labelled.v1",
                "r.none.v1",
                "r.pkg-with-history.v1",
                "r.plain.v1"
            ]
            .map(String::from)
            .to_vec()
        )
    );
    let (names, _) = labelled.listing().await;
    assert_eq!(names, ["r.labelled.v1"]);

    // In the upstream: a new tag, a draft proposed, a draft removed, and a
    // draft relabelled into the label filter.
    upstream_git(&upstream, &["tag", "basens/v3", "main"]);
    upstream_git(
        &upstream,
        &["branch", "-m", "drafts/none/v1", "proposed/none/v1"],
    );
    upstream_git(&upstream, &["branch", "-D", "drafts/bucket/v1"]);
    push_labelled_draft(&upstream, &work, "plain", "base");
    sync(&client, "r").await;
    let last = node.store.last_seq().unwrap();

    assert_eq!(
        changes(&by_repository.through(last).await),
        Vec::<String>::new()
    );
    assert_eq!(
        changes(&by_package.through(last).await),
        ["Modified r.basens.v2", "Added r.basens.v3"]
    );
    // Proposed: no longer a Draft — a transition out, sent as Deleted.
    let out = drafts.through(last).await;
    assert_eq!(
        changes(&out),
        [
            "Deleted r.none.v1",
            "Modified r.plain.v1",
            "Deleted r.bucket.v1"
        ]
    );
    assert_eq!(
        out[0]["object"]["lifecycle"], "Proposed",
        "the revision as it is now"
    );
    assert_eq!(
        out[2]["object"]["lifecycle"], "Draft",
        "the revision as it was"
    );
    // Relabelled: enters the filter after a listing start — Added.
    let into = labelled.through(last).await;
    assert_eq!(changes(&into), ["Added r.plain.v1"]);
    assert_eq!(into[0]["object"]["labels"], json!({"tier": "base"}));

    // Unregistering deletes every revision, each event carrying the
    // revision: the label filter matches exactly the two labelled ones.
    let before = node.store.last_seq().unwrap();
    client
        .ok(
            "repo.unregister",
            json!({"namespace": "team-a", "name": "r"}),
        )
        .await;
    let last = node.store.last_seq().unwrap();
    let gone = labelled.through(last).await;
    assert_eq!(
        changes(&gone),
        ["Deleted r.labelled.v1", "Deleted r.plain.v1"]
    );
    assert!(gone.iter().all(|l| l["seq"].as_u64().unwrap() > before));
    assert_eq!(
        gone[0]["object"]["tasks"],
        json!([]),
        "trimmed of its tasks"
    );
    assert_eq!(
        changes(&by_repository.through(last).await),
        Vec::<String>::new()
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn events_come_in_log_order_each_once() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("drafts-repository", &upstream);
    let work = dir.path().join("work");
    let node = start_node(&dir.path().join("data"), WatchSection::default()).await;
    let client = node.client().clone();
    register(&client, "r", &url).await;
    let mut watch = Watch::start(&client, json!({"filter": {"repository": "r"}})).await;
    let (_, bookmark) = watch.listing().await;

    // The same draft changed over and over, plus other changes, one sync each.
    for round in 0..4 {
        push_labelled_draft(&upstream, &work, "busy", &format!("t{round}"));
        upstream_git(
            &upstream,
            &["tag", &format!("basens/v{}", round + 3), "main"],
        );
        sync(&client, "r").await;
    }
    let last = node.store.last_seq().unwrap();
    let lines = watch.through(last).await;
    let got = seqs_and_changes(&lines);
    assert_eq!(got, log_changes(&node.store, bookmark, last));
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "seq strictly increasing"
    );
    let busy: Vec<&str> = got
        .iter()
        .filter(|(_, c)| c.ends_with("r.busy.v1"))
        .map(|(_, c)| c.as_str())
        .collect();
    assert_eq!(
        busy,
        [
            "Added r.busy.v1",
            "Modified r.busy.v1",
            "Modified r.busy.v1",
            "Modified r.busy.v1"
        ]
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn a_resumed_watch_gets_every_event_after_its_seq_across_a_restart() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("drafts-repository", &upstream);
    let work = dir.path().join("work");
    let data = dir.path().join("data");
    let node = start_node(&data, WatchSection::default()).await;
    let client = node.client().clone();
    register(&client, "r", &url).await;
    let kinds = json!(["packagerevision", "repository"]);
    let mut watch = Watch::start(
        &client,
        json!({"filter": {"repository": "r"}, "kinds": kinds}),
    )
    .await;
    let (_, bookmark) = watch.listing().await;
    upstream_git(&upstream, &["tag", "basens/v3", "main"]);
    sync(&client, "r").await;
    let last = node.store.last_seq().unwrap();
    let before_restart = watch.through(last).await;
    let seen = before_restart
        .last()
        .map(|l| l["seq"].as_u64().unwrap())
        .unwrap();
    assert_eq!(seen, last, "the SyncSucceeded closes the sync");
    drop(watch);
    node.shutdown().await;

    // Changes while the node is down: its start-up sync picks them up.
    upstream_git(&upstream, &["tag", "istions/v3", "main"]);
    push_labelled_draft(&upstream, &work, "fresh", "base");
    upstream_git(&upstream, &["branch", "-D", "drafts/none/v1"]);

    let node = start_node(&data, WatchSection::default()).await;
    let client = node.client().clone();
    let mut resumed = Watch::start(
        &client,
        json!({"filter": {"repository": "r"}, "kinds": kinds, "since_seq": seen}),
    )
    .await;
    assert_eq!(resumed.seq, seen);
    // Another sync after the start-up one; the watch continues live.
    sync(&client, "r").await;
    upstream_git(&upstream, &["tag", "empty/v2", "main"]);
    sync(&client, "r").await;
    let last = node.store.last_seq().unwrap();
    let lines = resumed.through(last).await;
    let got: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    let want: Vec<u64> = node
        .store
        .read_all(seen + 1, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(got, want, "every event after since_seq, once, in order");
    let revision_changes: Vec<String> = lines
        .iter()
        .filter(|l| l["object"].get("event").is_none())
        .map(|l| {
            format!(
                "{} {}",
                l["type"].as_str().unwrap(),
                l["object"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        revision_changes,
        log_changes(&node.store, seen, last)
            .into_iter()
            .map(|(_, c)| c)
            .collect::<Vec<_>>()
    );
    assert!(revision_changes.contains(&"Added r.istions.v3".to_owned()));
    assert!(revision_changes.contains(&"Deleted r.none.v1".to_owned()));
    assert!(revision_changes.contains(&"Added r.empty.v2".to_owned()));
    let repository_events: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["object"]["event"].as_str())
        .collect();
    assert!(
        repository_events
            .iter()
            .filter(|e| **e == "SyncSucceeded")
            .count()
            >= 2,
        "{repository_events:?}"
    );
    assert_eq!(repository_events.last(), Some(&"SyncSucceeded"));
    assert!(bookmark < seen);
    node.shutdown().await;
}

#[actix_rt::test]
async fn a_client_that_goes_away_is_cleaned_up() {
    let dir = TestDir::new();
    let node = start_node(&dir.path().join("data"), WatchSection::default()).await;
    let client = node.client().clone();
    let other = Client::connect(&node.nats_url).await;

    // Unsubscribed: the next heartbeat finds no responders.
    let mut watch = Watch::start(&other, json!({})).await;
    let (names, _) = watch.listing().await;
    assert!(names.is_empty());
    assert_eq!(watchers(&client).await, 1);
    watch.disconnect();
    other.flush().await;
    wait_for_watchers(&client, 0).await;

    // Subscribed but never answering: two missed heartbeats.
    let subject = client.new_inbox();
    let mut silent = client.subscribe(&subject).await;
    client
        .ok(
            "watch.start",
            json!({"deliver_subject": subject, "heartbeat_ms": 100}),
        )
        .await;
    // (No count here: with 100 ms heartbeats a slow machine may already
    // have ended the watch; the heartbeats below prove it lived.)
    let mut heartbeats = 0;
    while heartbeats < 2 {
        let message = silent.next().await;
        if message.reply.is_some() {
            heartbeats += 1;
        }
    }
    wait_for_watchers(&client, 0).await;
    node.shutdown().await;
}

#[actix_rt::test]
async fn a_thousand_start_stop_cycles_leave_no_watcher() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("simple-repository", &upstream);
    let node = start_node(&dir.path().join("data"), WatchSection::default()).await;
    let client = node.client().clone();
    register(&client, "r", &url).await;
    let handles = node.store.handles();
    let subject = client.new_inbox();
    let _lines = client.subscribe(&subject).await;
    for i in 0..1000u32 {
        let body = if i % 2 == 0 {
            json!({"deliver_subject": subject, "filter": {"package": "basens"}})
        } else {
            json!({"deliver_subject": subject, "since_seq": 1})
        };
        let started = client.ok("watch.start", body).await;
        let id = started["watch_id"].as_str().unwrap();
        assert_eq!(
            client.ok("watch.stop", json!({"watch_id": id})).await,
            json!({ "stopped": id })
        );
    }
    assert_eq!(watchers(&client).await, 0);
    assert!(node.watch_hub().is_empty());
    // Every watcher actor is gone too (each held a store handle).
    // (Polling, bounded: nothing announces an actor's end.)
    wait_until("the watcher actors to end", WAIT, || {
        let now = node.store.handles();
        async move {
            if now > handles {
                Err(format!("{now} store handles, {handles} before"))
            } else {
                Ok(())
            }
        }
    })
    .await;
    node.shutdown().await;
}

#[actix_rt::test]
async fn a_slow_consumer_is_told_to_relist() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("drafts-repository", &upstream);
    let node = start_node(
        &dir.path().join("data"),
        WatchSection {
            queue_size: 4,
            ..Default::default()
        },
    )
    .await;
    let client = node.client().clone();
    let mut watch = Watch::start(&client, json!({"filter": {"namespace": "team-a"}})).await;
    let (names, _) = watch.listing().await;
    assert!(names.is_empty());
    // A watch of another repository: the same traffic never reaches its
    // queue (the filter runs before queueing), so it keeps going.
    let mut unrelated = Watch::start(&client, json!({"filter": {"repository": "other"}})).await;
    unrelated.listing().await;
    // One sync appends 11 Added at once: more than the queue holds.
    register(&client, "r", &url).await;
    let mut got = Vec::new();
    within("the Relist after a full queue", WAIT, async {
        loop {
            let line = watch.next().await;
            if line["type"] == "Relist" {
                break;
            }
            assert_eq!(line["type"], "Added", "{line}");
            got.push(line["seq"].as_u64().unwrap());
        }
    })
    .await;
    assert_eq!(got.len(), 4, "what the queue held, then Relist");
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
    wait_for_watchers(&client, 1).await;
    let last = node.store.last_seq().unwrap();
    assert_eq!(
        changes(&unrelated.through(last).await),
        Vec::<String>::new()
    );
    assert_eq!(watchers(&client).await, 1, "the unrelated watch lives on");
    node.shutdown().await;
}

#[actix_rt::test]
async fn bad_requests_name_the_field() {
    let dir = TestDir::new();
    let node = start_node(
        &dir.path().join("data"),
        WatchSection {
            max_watchers: 2,
            ..Default::default()
        },
    )
    .await;
    let client = node.client().clone();
    let last = node.store.last_seq().unwrap();
    let beyond = format!(
        "since_seq: {} is beyond the end of the log (last seq {last})",
        last + 5
    );
    let cases: [(Value, &str); 9] = [
        (json!({}), "deliver_subject: required"),
        (
            json!({"deliver_subject": "w.>"}),
            "deliver_subject: \"w.>\" must not contain wildcards ('*', '>')",
        ),
        (
            json!({"deliver_subject": "a b"}),
            "deliver_subject: \"a b\" must not contain whitespace or control characters",
        ),
        (
            json!({"deliver_subject": "w", "kinds": ["pods"]}),
            "kinds: unknown kind \"pods\", expected one of: packagerevision, repository",
        ),
        (
            json!({"deliver_subject": "w", "heartbeat_ms": 60001}),
            "heartbeat_ms: must be an integer between 100 and 60000, got 60001",
        ),
        (
            json!({"deliver_subject": "w", "since_seq": last + 5}),
            &beyond,
        ),
        (
            json!({"deliver_subject": "w", "filter": {"namespace": "Team A"}}),
            "filter.namespace: \"Team A\" is not a valid name (a DNS-1123 label: lowercase letters, digits and '-', 1-63 characters, starting and ending with a letter or digit)",
        ),
        (
            json!({"deliver_subject": "w", "filter": {"continue": "x"}}),
            "filter.continue: unknown field, expected one of: namespace, repository, path, package, workspace, revision, lifecycle, labels, annotations, latest",
        ),
        (
            json!({"deliver_subject": "w", "follow": true}),
            "follow: unknown field, expected one of: filter, kinds, since_seq, deliver_subject, heartbeat_ms",
        ),
    ];
    for (body, message) in cases {
        let error = client.call("watch.start", body.clone()).await.unwrap_err();
        assert_eq!(error.code, 400, "{body}");
        assert_eq!(error.body["message"], json!(message), "{body}");
    }
    let error = client.call("watch.stop", json!({})).await.unwrap_err();
    assert_eq!(
        (error.code, error.body["message"].as_str()),
        (400, Some("watch_id: required"))
    );
    assert_eq!(watchers(&client).await, 0, "nothing half-started");

    // watch.max-watchers = 2: a third is refused with 503.
    let _a = Watch::start(&client, json!({})).await;
    let _b = Watch::start(&client, json!({})).await;
    let error = client
        .call("watch.start", json!({"deliver_subject": "w"}))
        .await
        .unwrap_err();
    assert_eq!(error.code, 503);
    assert_eq!(
        error.body["message"],
        "watch: 2 watchers already, the most this node takes (watch.max-watchers)"
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn the_cli_streams_until_interrupted_and_stops_its_watch() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("simple-repository", &upstream);
    let node = start_node(&dir.path().join("data"), WatchSection::default()).await;
    let client = node.client().clone();
    register(&client, "r", &url).await;
    let mut cli = ChildGuard::spawn(
        cairn_cli!()
            .command()
            .args([
                "watch",
                "-o",
                "json",
                "--repository",
                "team-a/r",
                "--package",
                "basens",
                "--heartbeat",
                "200ms",
                "--nats-url",
                &node.nats_url,
            ])
            .stdout(Stdio::piped()),
    );
    let mut lines = async_lines(cli.0.stdout.take().unwrap());
    let mut listed = Vec::new();
    loop {
        let line: Value = serde_json::from_str(&next_line(&mut lines, WAIT).await).unwrap();
        match line["type"].as_str().unwrap() {
            "Added" => listed.push(line["object"]["name"].as_str().unwrap().to_owned()),
            "Bookmark" => break,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(listed, ["r.basens.main", "r.basens.v1", "r.basens.v2"]);
    upstream_git(&upstream, &["tag", "basens/v3", "main"]);
    sync(&client, "r").await;
    let mut live = Vec::new();
    while live.len() < 2 {
        let line: Value = serde_json::from_str(&next_line(&mut lines, WAIT).await).unwrap();
        live.push(line);
    }
    assert_eq!(
        changes(&live),
        ["Modified r.basens.v2", "Added r.basens.v3"]
    );
    assert_eq!(watchers(&client).await, 1, "heartbeats answered by the CLI");

    cli.signal(nix::sys::signal::Signal::SIGINT);
    let status = tokio::task::spawn_blocking(move || cli.wait_timeout(WAIT))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(watchers(&client).await, 0, "the CLI stopped its watch");
    node.shutdown().await;
}

#[actix_rt::test]
async fn protobuf_requests_start_and_stop_a_watch() {
    use cairn_events::v1 as pb;
    use prost::Message as _;
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("simple-repository", &upstream);
    let node = start_node(&dir.path().join("data"), WatchSection::default()).await;
    let client = node.client().clone();
    register(&client, "r", &url).await;
    let proto = |endpoint: &'static str, body: Vec<u8>| {
        let client = client.clone();
        async move { client.call_proto(endpoint, body).await }
    };
    let subject = client.new_inbox();
    let mut lines = client.subscribe(&subject).await;
    let request = pb::WatchStartRequest {
        filter: Some(pb::WatchFilter {
            package: "basens".into(),
            revision: Some(2),
            ..Default::default()
        }),
        deliver_subject: subject,
        heartbeat_ms: Some(60_000),
        ..Default::default()
    };
    let reply = proto("watch.start", request.encode_to_vec()).await;
    let started = pb::WatchStarted::decode(reply.payload.as_ref()).unwrap();
    assert_eq!(started.seq, node.store.last_seq().unwrap());
    let first = lines.next_json().await;
    assert_eq!(first["object"]["name"], "r.basens.v2", "the filter applied");

    let bad = pb::WatchStartRequest {
        since_seq: Some(started.seq + 1),
        deliver_subject: "w".into(),
        ..Default::default()
    };
    let reply = proto("watch.start", bad.encode_to_vec()).await;
    let error = pb::ErrorReply::decode(reply.payload.as_ref()).unwrap();
    assert_eq!(error.code, 400);
    assert!(
        error.message.starts_with("since_seq: "),
        "{}",
        error.message
    );

    let stop = pb::WatchStopRequest {
        watch_id: started.watch_id.clone(),
    };
    let reply = proto("watch.stop", stop.encode_to_vec()).await;
    assert_eq!(
        pb::WatchStopped::decode(reply.payload.as_ref())
            .unwrap()
            .stopped,
        started.watch_id
    );
    assert_eq!(watchers(&client).await, 0);
    node.shutdown().await;
}

#[actix_rt::test]
async fn the_cli_says_relist_and_exits_non_zero() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("drafts-repository", &upstream);
    let node = start_node(
        &dir.path().join("data"),
        WatchSection {
            queue_size: 4,
            ..Default::default()
        },
    )
    .await;
    let client = node.client().clone();
    let mut cli = ChildGuard::spawn(
        cairn_cli!()
            .command()
            .args(["watch", "-A", "--nats-url", &node.nats_url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut lines = async_lines(cli.0.stdout.take().unwrap());
    let mut stderr = async_lines(cli.0.stderr.take().unwrap());
    let header = next_line(&mut lines, WAIT).await;
    assert!(header.starts_with("TYPE"), "{header}");
    let bookmark = next_line(&mut lines, WAIT).await;
    assert!(bookmark.starts_with("BOOKMARK"), "{bookmark}");
    register(&client, "r", &url).await;
    let mut rows = Vec::new();
    loop {
        let line = next_line(&mut lines, WAIT).await;
        let relist = line.starts_with("RELIST");
        rows.push(line);
        if relist {
            break;
        }
    }
    assert_eq!(rows.len(), 5, "four queued, then Relist: {rows:?}");
    assert!(rows[..4].iter().all(|r| r.starts_with("ADDED")), "{rows:?}");
    let status = tokio::task::spawn_blocking(move || cli.wait_timeout(WAIT))
        .await
        .unwrap();
    assert!(!status.success());
    let mut printed = Vec::new();
    while let Some(line) = within("the CLI's stderr to end", WAIT, stderr.recv()).await {
        printed.push(line);
    }
    assert_eq!(
        printed.join("\n").trim(),
        "error: the watch fell behind (Relist): list again and start a new watch"
    );
    node.shutdown().await;
}

/// `cairn watch` against a node on a NATS server that outlives it.
fn cli_watch(nats_url: &str, extra: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        cairn_cli!()
            .command()
            .args([
                "watch",
                "-o",
                "json",
                "--repository",
                "team-a/r",
                "--heartbeat",
                "200ms",
            ])
            .args(extra)
            .args(["--nats-url", nats_url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// Reads `lines` up to the bookmark; its seq.
async fn through_bookmark(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> u64 {
    loop {
        let line: Value = serde_json::from_str(&next_line(lines, WAIT).await).unwrap();
        if line["type"] == "Bookmark" {
            return line["seq"].as_u64().unwrap();
        }
    }
}

/// The node stops under a running `cairn watch` and comes back: the CLI
/// notices (no heartbeat), says so, starts the watch again from the last
/// seq it saw and prints exactly what happened meanwhile — nothing
/// skipped, nothing repeated.
#[actix_rt::test]
async fn the_cli_watch_resumes_by_itself_when_its_node_comes_back() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("simple-repository", &upstream);
    let nats = cairn_tests::NatsServer::start();
    let node = TestNodeBuilder::in_dir(&dir.path().join("data"))
        .configure(|c| c.nats.urls = vec![nats.url()])
        .start()
        .await;
    register(node.client(), "r", &url).await;
    let mut cli = cli_watch(&nats.url(), &["--package", "basens"]);
    let mut lines = async_lines(cli.0.stdout.take().unwrap());
    let mut stderr = async_lines(cli.0.stderr.take().unwrap());
    let bookmark = through_bookmark(&mut lines).await;

    let stopped = node.stop().await;
    assert_eq!(
        next_line(&mut stderr, WAIT).await,
        format!("watch: nothing from the node for 1s; starting the watch again, resuming after seq {bookmark} (for up to 5m)")
    );
    upstream_git(&upstream, &["tag", "basens/v3", "main"]);
    let node = stopped.start().await;
    sync(node.client(), "r").await;
    assert_eq!(
        next_line(&mut stderr, WAIT).await,
        format!("watch: resumed after seq {bookmark}")
    );
    let mut live = Vec::new();
    while live.len() < 2 {
        live.push(serde_json::from_str::<Value>(&next_line(&mut lines, WAIT).await).unwrap());
    }
    assert_eq!(
        changes(&live),
        ["Modified r.basens.v2", "Added r.basens.v3"]
    );
    assert_eq!(
        live.iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        log_changes(&node.store, bookmark, node.store.last_seq().unwrap())
            .into_iter()
            .map(|(seq, _)| seq)
            .collect::<Vec<_>>(),
        "the events the log holds after the bookmark, once each"
    );
    cli.signal(nix::sys::signal::Signal::SIGINT);
    let status = tokio::task::spawn_blocking(move || cli.wait_timeout(WAIT))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        watchers(node.client()).await,
        0,
        "the CLI stopped its watch"
    );
    node.shutdown().await;
}

/// A node that stays away: the CLI gives up after `--reconnect-timeout`,
/// exits non-zero and says from where to resume.
#[actix_rt::test]
async fn the_cli_watch_fails_after_its_reconnect_timeout() {
    let dir = TestDir::new();
    let upstream = dir.path().join("upstream");
    let url = unpack("simple-repository", &upstream);
    let nats = cairn_tests::NatsServer::start();
    let node = TestNodeBuilder::in_dir(&dir.path().join("data"))
        .configure(|c| c.nats.urls = vec![nats.url()])
        .start()
        .await;
    register(node.client(), "r", &url).await;
    let mut cli = cli_watch(&nats.url(), &["--reconnect-timeout", "2s"]);
    let mut lines = async_lines(cli.0.stdout.take().unwrap());
    let stderr = cli.0.stderr.take().unwrap();
    let bookmark = through_bookmark(&mut lines).await;
    node.shutdown().await;
    let (status, stderr) = tokio::task::spawn_blocking(move || {
        let status = cli.wait_timeout(WAIT);
        (status, std::io::read_to_string(stderr).unwrap())
    })
    .await
    .unwrap();
    assert!(!status.success());
    assert_eq!(
        stderr,
        format!(
            "watch: nothing from the node for 1s; starting the watch again, resuming after seq {bookmark} (for up to 2s)\n\
             error: the watch was lost and no node took it back within 2s (--reconnect-timeout): no cairn node answers on this NATS server; resume with --since {bookmark}\n"
        )
    );
}
