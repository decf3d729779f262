//! Three `cairn node` processes on a three-server NATS cluster (routes,
//! JetStream R3): streams spread over the nodes, every node answers reads
//! with the same content, a write through one node is read through another
//! with `Cairn-Min-Seq`, and a node killed with SIGKILL loses its streams
//! to the others within seconds, nothing acknowledged lost or repeated. A
//! write a node forwarded and then ran itself (the stream came to it) is
//! applied once, with the key its forward carried.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use async_nats::HeaderMap;
use cairn_tests::{
    cairn_cli,
    cluster::{log_of, min_seq, seq_of, CairnCluster},
    wait_until, within, ChildNode, Client, GitFixture, TestDir, WAIT,
};
use futures::StreamExt as _;
use serde_json::{json, Value};

const NS: &str = "team-a";

type Cluster = CairnCluster;

/// Three nodes (`n0`…) on a three-server NATS cluster.
async fn start(nodes: usize) -> Cluster {
    CairnCluster::start(cairn_cli!(), nodes, &[]).await
}

/// The replies of every node to a `$SRV` request (`$SRV.INFO.cairn`…).
async fn srv_replies(nats: &async_nats::Client, subject: &str) -> Vec<Value> {
    let inbox = nats.new_inbox();
    let mut replies = nats.subscribe(inbox.clone()).await.unwrap();
    nats.publish_with_reply(subject.to_owned(), inbox, "".into())
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < 3 {
        let message = tokio::time::timeout(WAIT, replies.next())
            .await
            .unwrap_or_else(|_| panic!("{subject}: {} replies of 3", out.len()))
            .unwrap();
        out.push(serde_json::from_slice(&message.payload).unwrap());
    }
    out
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_repositories_spread_over_three_nodes_and_every_node_answers_alike() {
    let cluster = start(3).await;
    let upstreams = TestDir::new();
    let mut highest = 0;
    for r in 0..30 {
        let dir = upstreams.join(format!("r{r:02}"));
        let (fixture, _) = GitFixture::with_packages(&dir, &format!("r{r:02}"), 1, 1, 1);
        let (reply, headers) = cluster.clients[0]
            .call_node(
                &format!("n{}", r % 3),
                "repo.register",
                json!({"namespace": NS, "name": format!("r{r:02}"), "git": {"url": fixture.url()}}),
                HeaderMap::new(),
            )
            .await;
        let reply = reply.unwrap_or_else(|e| panic!("registering r{r:02}: {e}"));
        assert_eq!(reply["status"]["package_count"], 2, "{reply}");
        highest = highest.max(seq_of(&headers));
    }

    // Every repository (and the publisher role) has an owner; none owns
    // more than 12.
    let owners = wait_until("every stream to have an owner", WAIT, || async {
        let owners = cluster.owners().await;
        let repos = owners.keys().filter(|s| s.starts_with("repo/")).count();
        if repos == 30 && owners.contains_key("role/publisher") {
            Ok(owners)
        } else {
            Err(format!("{repos} repositories owned: {owners:?}"))
        }
    })
    .await;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for (stream, node) in &owners {
        if stream.starts_with("repo/") {
            *per_node.entry(node.as_str()).or_default() += 1;
        }
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|&n| n <= 12), "{per_node:?}");

    // `$SRV.INFO` names each node; `$SRV.STATS` says what each owns, as the
    // leases do.
    let nats = cluster.clients[0].nats().clone();
    let infos = srv_replies(&nats, "$SRV.INFO.cairn").await;
    let mut named: Vec<&str> = infos
        .iter()
        .map(|i| i["metadata"]["node"].as_str().unwrap())
        .collect();
    named.sort();
    assert_eq!(named, ["n0", "n1", "n2"], "{infos:?}");
    assert!(infos.iter().all(|i| i["metadata"]["cluster"] == "true"));
    wait_until("$SRV.STATS to agree with the leases", WAIT, || async {
        let owners = cluster.owners().await;
        let mut stats_owns: BTreeMap<String, String> = BTreeMap::new();
        for stats in srv_replies(&nats, "$SRV.STATS.cairn").await {
            let data = stats["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "cluster-status")
                .map(|e| e["data"].clone())
                .unwrap_or_default();
            let node = data["node"].as_str().unwrap_or_default().to_owned();
            for stream in data["owns"].as_array().into_iter().flatten() {
                stats_owns.insert(stream.as_str().unwrap().to_owned(), node.clone());
            }
        }
        if stats_owns == owners {
            Ok(())
        } else {
            Err(format!("$SRV.STATS {stats_owns:?}, leases {owners:?}"))
        }
    })
    .await;

    // Every node lists all thirty, identically, once it applied the last
    // registration's seq.
    let mut lists = Vec::new();
    for node in ["n0", "n1", "n2"] {
        let (list, headers) = cluster.clients[0]
            .call_node(
                node,
                "repo.list",
                json!({"namespace": NS}),
                min_seq(&highest.to_string()),
            )
            .await;
        assert_eq!(headers.get("Cairn-Node").unwrap().as_str(), node);
        lists.push(list.unwrap());
    }
    assert_eq!(names(&lists[0]).len(), 30);
    assert_eq!(lists[0], lists[1]);
    assert_eq!(lists[0], lists[2]);

    // A write through a node that does not own the repository (it is
    // forwarded to the owner), read through a third with its seq.
    let owner = owners["repo/team-a/r07"].clone();
    let others: Vec<String> = ["n0", "n1", "n2"]
        .iter()
        .filter(|n| **n != owner)
        .map(|n| n.to_string())
        .collect();
    let (created, headers) = cluster.clients[0]
        .call_node(
            &others[0],
            "pkgrev.create",
            json!({"namespace": NS, "repository": "r07", "package": "new", "workspace": "ws"}),
            HeaderMap::new(),
        )
        .await;
    let created = created.unwrap();
    assert_eq!(
        headers.get("Cairn-Node").unwrap().as_str(),
        owner,
        "the owner ran it"
    );
    let seq = seq_of(&headers);
    let (read, read_headers) = cluster.clients[0]
        .call_node(
            &others[1],
            "pkgrev.get",
            json!({"namespace": NS, "name": created["name"]}),
            min_seq(&seq.to_string()),
        )
        .await;
    assert_eq!(read_headers.get("Cairn-Node").unwrap().as_str(), others[1]);
    // The same revision (a get also shows its upstream lock).
    let mut read = read.unwrap();
    read.as_object_mut().unwrap().remove("lock");
    assert_eq!(read, created);
    assert!(seq_of(&read_headers) >= seq);

    // A node asked for a seq far ahead answers 503 naming how far behind.
    let (behind, _) = cluster.clients[0]
        .call_node(
            "n1",
            "repo.list",
            json!({"namespace": NS}),
            min_seq(&(seq + 1_000_000).to_string()),
        )
        .await;
    let behind = behind.unwrap_err();
    assert_eq!(behind.code, 503);
    assert!(
        behind.message.contains("behind the Cairn-Min-Seq"),
        "{}",
        behind.message
    );
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_is_replaced_within_seconds_and_nothing_acknowledged_is_lost() {
    let mut cluster = start(3).await;
    let upstreams = TestDir::new();
    let owner = register_r(&cluster, &upstreams).await;
    let owner_index: usize = owner.trim_start_matches('n').parse().unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != owner_index).collect();

    // Commands through the other nodes are forwarded to the owner.
    let mut acknowledged = Vec::new();
    for w in 0..3 {
        let (created, headers) = cluster.clients[0]
            .call_node(
                &format!("n{}", others[w % 2]),
                "pkgrev.create",
                json!({"namespace": NS, "repository": "r", "package": format!("p{w}"), "workspace": "ws"}),
                HeaderMap::new(),
            )
            .await;
        assert_eq!(headers.get("Cairn-Node").unwrap().as_str(), owner);
        acknowledged.push(created.unwrap()["name"].as_str().unwrap().to_owned());
    }

    // kill -9 of the owner; the next command through another node succeeds
    // within the bound.
    let mut killed = cluster.nodes[owner_index].take().unwrap();
    tokio::task::spawn_blocking(move || killed.kill())
        .await
        .unwrap();
    let killed_at = Instant::now();
    let client = cluster.clients[others[0]].clone();
    let through = format!("n{}", others[0]);
    let created = wait_until("a command to succeed after the owner died", WAIT, || {
        let (client, through) = (client.clone(), through.clone());
        async move {
            client
                .call_node(
                    &through,
                    "pkgrev.create",
                    json!({"namespace": NS, "repository": "r", "package": "after", "workspace": "ws"}),
                    HeaderMap::new(),
                )
                .await
                .0
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    acknowledged.push(created["name"].as_str().unwrap().to_owned());
    let new_owner = cluster.owners().await["repo/team-a/r"].clone();
    assert_ne!(new_owner, owner);

    // Both survivors hold every acknowledged revision, and the same log.
    let mut seq = 0;
    for &i in &others {
        let (reply, headers) = cluster.clients[i]
            .call_with_headers(
                "log.read",
                json!({"from_seq": 1, "limit": 1000}),
                HeaderMap::new(),
            )
            .await;
        reply.unwrap();
        seq = seq.max(seq_of(&headers));
    }
    let mut logs = Vec::new();
    for &i in &others {
        let node = format!("n{i}");
        let (reply, _) = cluster.clients[0]
            .call_node(
                &node,
                "log.read",
                json!({"from_seq": 1, "limit": 1000}),
                min_seq(&seq.to_string()),
            )
            .await;
        logs.push(reply.unwrap());
        let (list, _) = cluster.clients[0]
            .call_node(
                &node,
                "pkgrev.list",
                json!({"namespace": NS, "repository": "r"}),
                min_seq(&seq.to_string()),
            )
            .await;
        let listed = names(&list.unwrap());
        for name in &acknowledged {
            assert!(
                listed.contains(name),
                "{name} missing from node {i}: {listed:?}"
            );
        }
    }
    assert_eq!(logs[0], logs[1]);
    let ids: Vec<&str> = logs[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "an event appears twice");
    let seqs: Vec<u64> = logs[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

/// Lifecycle commands, one after the other, through nodes in turn, until
/// told to stop: the names acknowledged, and every failure.
fn steady_writes(
    clients: Vec<Client>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(Vec<String>, Vec<String>)> {
    tokio::spawn(async move {
        let (mut acknowledged, mut failed) = (Vec::new(), Vec::new());
        let mut i = 0;
        while !*stop.borrow() {
            let client = &clients[i % clients.len()];
            match client
                .call(
                    "pkgrev.create",
                    json!({"namespace": NS, "repository": "r", "package": format!("w{i:04}"), "workspace": "ws"}),
                )
                .await
            {
                Ok(reply) => acknowledged.push(reply["name"].as_str().unwrap().to_owned()),
                Err(e) => failed.push(format!("w{i:04}: {e}")),
            }
            i += 1;
        }
        (acknowledged, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_streams_over_and_a_rolling_restart_loses_and_repeats_nothing() {
    let mut cluster = start(3).await;
    let upstreams = TestDir::new();
    let owner = register_r(&cluster, &upstreams).await;
    let owner_index: usize = owner.trim_start_matches('n').parse().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writes = steady_writes(cluster.clients.clone(), stopped);

    // The owner first, then every node in turn, under steady writes.
    let mut order = vec![owner_index];
    order.extend(0..3);
    for i in order {
        let status = cluster.restart(i).await;
        assert!(status.success(), "node n{i} stopped with {status}");
    }
    stop.send(true).unwrap();
    let (acknowledged, failed) = writes.await.unwrap();
    assert_eq!(
        failed,
        Vec::<String>::new(),
        "commands failed during the restarts"
    );
    assert!(acknowledged.len() >= 3, "{acknowledged:?}");

    // Every node holds every acknowledged revision; the logs agree.
    let (_, headers) = cluster.clients[0]
        .call_with_headers("log.read", json!({"limit": 1}), HeaderMap::new())
        .await;
    let last = seq_of(&headers);
    let mut logs = Vec::new();
    for node in ["n0", "n1", "n2"] {
        let client = &cluster.clients[0];
        let events = log_of(client, node, last).await;
        let (list, _) = client
            .call_node(
                node,
                "pkgrev.list",
                json!({"namespace": NS, "repository": "r"}),
                min_seq(&last.to_string()),
            )
            .await;
        let listed = names(&list.unwrap());
        for name in &acknowledged {
            assert!(
                listed.contains(name),
                "{name} missing on {node}: {listed:?}"
            );
        }
        logs.push(events);
    }
    let last = logs[0].len() as u64;
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[0], logs[2]);

    // CAIRN_EVENTS: every event once, in log order, whoever published it.
    let nats = async_nats::connect(cluster.nats.url(0)).await.unwrap();
    let stored = wait_until("every event to be published", WAIT, || {
        let nats = nats.clone();
        async move {
            let stored = cairn_tests::jetstream::cairn_seqs(&nats, "CAIRN_EVENTS").await;
            if stored.len() as u64 >= last {
                Ok(stored)
            } else {
                Err(format!("{} of {last} published", stored.len()))
            }
        }
    })
    .await;
    let got: Vec<(u64, Option<u64>)> = stored.iter().map(|s| (s.position, s.cairn_seq)).collect();
    let want: Vec<(u64, Option<u64>)> = (1..=last).map(|n| (n, Some(n))).collect();
    assert_eq!(got, want);
    let ids: Vec<Option<&str>> = stored.iter().map(|s| s.msg_id.as_deref()).collect();
    let logged: Vec<Option<&str>> = logs[0].iter().map(|e| e["event_id"].as_str()).collect();
    assert_eq!(ids, logged, "each message is its event, by Nats-Msg-Id");
}

/// A watch's lines as its client sees them (heartbeats answered).
struct WatchLines {
    lines: tokio::sync::mpsc::UnboundedReceiver<Value>,
    reader: tokio::task::JoinHandle<()>,
    /// The listing's bookmark was seen.
    listed: bool,
}

impl Drop for WatchLines {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl WatchLines {
    async fn start(client: &Client, node: &str, filter: Value) -> Self {
        let subject = client.new_inbox();
        let mut subscription = client.subscribe(&subject).await.into_inner();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let answering = client.nats().clone();
        let reader = tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                if let Some(reply) = &message.reply {
                    let _ = answering.publish(reply.clone(), "ok".into()).await;
                }
                let line: Value = serde_json::from_slice(&message.payload).unwrap();
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let (started, _) = client
            .call_node(
                node,
                "watch.start",
                json!({"deliver_subject": subject, "heartbeat_ms": 250, "filter": filter}),
                HeaderMap::new(),
            )
            .await;
        started.unwrap();
        Self {
            lines,
            reader,
            listed: false,
        }
    }

    /// The names of the next `n` Added lines after the listing's bookmark
    /// (other kinds are kept too, as `Kind:name`).
    async fn changes(&mut self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut out = Vec::new();
        while out.len() < n {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("{n} changes within {WAIT:?}: got {out:?}"))
                .expect("the watch is open");
            match line["type"].as_str().unwrap() {
                "Heartbeat" => {}
                "Bookmark" => self.listed = true,
                kind if self.listed => out.push(format!(
                    "{kind}:{}",
                    line["object"]["name"].as_str().unwrap_or_default()
                )),
                _ => {}
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_another_node_sees_every_change_and_survives_the_owners_death() {
    let mut cluster = start(3).await;
    let upstreams = TestDir::new();
    let owner = register_r(&cluster, &upstreams).await;
    let a: usize = owner.trim_start_matches('n').parse().unwrap();
    let (b, c) = ((a + 1) % 3, (a + 2) % 3);
    let mut watch = WatchLines::start(
        &cluster.clients[b],
        &format!("n{b}"),
        json!({"namespace": NS, "repository": "r"}),
    )
    .await;
    let mut expected = Vec::new();
    for p in 0..3 {
        let (created, _) = cluster.clients[a]
            .call_node(
                &format!("n{a}"),
                "pkgrev.create",
                json!({"namespace": NS, "repository": "r", "package": format!("p{p}"), "workspace": "ws"}),
                HeaderMap::new(),
            )
            .await;
        expected.push(format!(
            "Added:{}",
            created.unwrap()["name"].as_str().unwrap()
        ));
    }
    assert_eq!(watch.changes(3).await, expected);

    // The owner dies; changes through the third node reach the same watch.
    let mut killed = cluster.nodes[a].take().unwrap();
    tokio::task::spawn_blocking(move || killed.kill())
        .await
        .unwrap();
    let client = cluster.clients[c].clone();
    let through = format!("n{c}");
    let created = wait_until("a command through the third node", WAIT, || {
        let (client, through) = (client.clone(), through.clone());
        async move {
            client
                .call_node(
                    &through,
                    "pkgrev.create",
                    json!({"namespace": NS, "repository": "r", "package": "after", "workspace": "ws"}),
                    HeaderMap::new(),
                )
                .await
                .0
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(
        watch.changes(1).await,
        [format!("Added:{}", created["name"].as_str().unwrap())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_with_an_empty_data_dir_catches_up_before_it_serves_then_takes_a_share() {
    let mut cluster = start(3).await;
    let upstreams = TestDir::new();
    for r in 0..8 {
        let (fixture, _) =
            GitFixture::with_packages(&upstreams.join(format!("r{r}")), &format!("r{r}"), 1, 1, 1);
        cluster.clients[r % 3]
            .ok(
                "repo.register",
                json!({"namespace": NS, "name": format!("r{r}"), "git": {"url": fixture.url()}}),
            )
            .await;
    }
    // n0 leaves: three nodes again once the newcomer joins.
    let mut n0 = cluster.nodes[0].take().unwrap();
    let status = tokio::task::spawn_blocking(move || n0.terminate(WAIT))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let (before, headers) = cluster.clients[1]
        .call_with_headers("repo.list", json!({"namespace": NS}), HeaderMap::new())
        .await;
    let before = before.unwrap();
    assert_eq!(names(&before).len(), 8);
    let seq = seq_of(&headers);

    // n3 starts on an empty data directory: its ready line comes once it
    // applied the log, and its first answer, without Cairn-Min-Seq, is
    // already the others'.
    let dir = TestDir::new();
    let data = dir.path().to_path_buf();
    let url = cluster.nats.url(0);
    let joined = tokio::task::spawn_blocking(move || {
        ChildNode::start_in_cluster(
            &cairn_cli!(),
            &data,
            &url,
            "n3",
            &[("RUST_LOG", "warn,cairn_actors::cluster=info")],
        )
    })
    .await
    .unwrap();
    cluster.nodes.push(Some(joined));
    cluster.dirs.push(dir);
    let (list, headers) = cluster.clients[0]
        .call_node(
            "n3",
            "repo.list",
            json!({"namespace": NS}),
            HeaderMap::new(),
        )
        .await;
    assert_eq!(
        headers.get("Cairn-Node").map(|v| v.as_str().to_owned()),
        Some("n3".to_owned())
    );
    assert!(seq_of(&headers) >= seq);
    assert_eq!(list.unwrap(), before);

    // It takes a share of the streams, and the status shows it.
    wait_until("n3 to own a share", WAIT, || async {
        let owners = cluster.owners().await;
        let n3 = owners.values().filter(|o| *o == "n3").count();
        if n3 >= 1 {
            Ok(())
        } else {
            Err(format!("{owners:?}"))
        }
    })
    .await;
    // (Streams change hands while n3 joins: a stream handed over has no
    // lease for a moment, so the count is read once every stream has its
    // owner again.)
    let status = wait_until(
        "the status to show n3 with streams, every stream owned",
        WAIT,
        || async {
            let status = cluster.clients[1].ok("cluster.status", json!({})).await;
            let n3 = status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["node"] == "n3")
                .cloned();
            let leases = status["leases"].as_array().unwrap().len();
            match n3 {
                Some(n3) if !n3["streams"].as_array().unwrap().is_empty() && leases == 44 => {
                    Ok(status)
                }
                other => Err(format!("{leases} leases; n3: {other:?}")),
            }
        },
    )
    .await;
    let nodes: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["n1", "n2", "n3"]);
    assert_eq!(
        status["leases"].as_array().unwrap().len(),
        44,
        "8 repositories, the 16 kv partitions, the 16 artifact streams, the publisher, compactor, artifact evictor and snapshotter roles: {status}"
    );
}

/// Registers repository `r` (one package, in `upstreams`) through node n0
/// and answers its owner once it has one.
async fn register_r(cluster: &Cluster, upstreams: &TestDir) -> String {
    let (fixture, _) = GitFixture::with_packages(&upstreams.join("r"), "r", 1, 1, 1);
    cluster.clients[0]
        .ok(
            "repo.register",
            json!({"namespace": NS, "name": "r", "git": {"url": fixture.url()}}),
        )
        .await;
    owner_of_r(cluster, None).await
}

async fn owner_of_r(cluster: &Cluster, not: Option<&str>) -> String {
    wait_until("repo/team-a/r to have an owner", WAIT, || async {
        match cluster.owners().await.get("repo/team-a/r") {
            Some(owner) if Some(owner.as_str()) != not => Ok(owner.clone()),
            other => Err(format!("owner {other:?}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_fenced_when_it_wakes_and_leaves_no_event_after_the_takeover() {
    use nix::sys::signal::Signal;
    let cluster = start(3).await;
    let upstreams = TestDir::new();
    let old = register_r(&cluster, &upstreams).await;
    let a: usize = old.trim_start_matches('n').parse().unwrap();
    let b = (a + 1) % 3;

    // The owner pauses past its lease; another node takes over and writes.
    cluster.nodes[a].as_ref().unwrap().signal(Signal::SIGSTOP);
    let new = owner_of_r(&cluster, Some(&old)).await;
    let (created, headers) = cluster.clients[0]
        .call_node(
            &format!("n{b}"),
            "pkgrev.create",
            json!({"namespace": NS, "repository": "r", "package": "by-new-owner", "workspace": "ws"}),
            HeaderMap::new(),
        )
        .await;
    created.unwrap();
    assert_eq!(headers.get("Cairn-Node").unwrap().as_str(), new);
    let takeover_seq = seq_of(&headers);

    // A command reaches the paused node; it wakes. Either it still thinks
    // it owns the stream and writes — JetStream refuses it and the client
    // is told why — or it noticed first and the command ran at the new
    // owner. Never does its write enter the log.
    let client = cluster.clients[0].clone();
    let asked = tokio::spawn(async move {
        client
            .call_node(
                &format!("n{a}"),
                "pkgrev.create",
                json!({"namespace": NS, "repository": "r", "package": "by-old-owner", "workspace": "ws"}),
                HeaderMap::new(),
            )
            .await
    });
    cluster.clients[0].flush().await;
    cluster.nodes[a].as_ref().unwrap().signal(Signal::SIGCONT);
    let (answer, headers) = asked.await.unwrap();
    let acknowledged = usize::from(answer.is_ok());
    match answer {
        Err(e) => {
            // 503 when it failed before anything else; 500 naming what it
            // pushed to Git when the refusal came after its push (the new
            // owner's next sync records that branch).
            assert!([500, 503].contains(&e.code), "{e}");
            assert!(
                e.message
                    .contains("was taken over by another node: this node's write was refused by the log (fenced)"),
                "{e}"
            );
        }
        Ok(_) => assert_eq!(headers.get("Cairn-Node").unwrap().as_str(), new),
    }
    // The old owner steps down: it holds nothing.
    cluster.wait_released(&old, "repo/team-a/r").await;
    // Every node holds the same log; after the takeover's write only the
    // new owner's (an acknowledged by-old-owner ran there, or nothing).
    let (_, headers) = cluster.clients[0]
        .call_node(&new, "log.read", json!({"limit": 1}), HeaderMap::new())
        .await;
    let last = seq_of(&headers);
    let logs = [
        log_of(&cluster.clients[0], "n0", last).await,
        log_of(&cluster.clients[0], "n1", last).await,
        log_of(&cluster.clients[0], "n2", last).await,
    ];
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[0], logs[2]);
    let old_owner_drafts = logs[0]
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() > takeover_seq)
        .filter(|e| e.to_string().contains("by-old-owner"))
        .count();
    assert_eq!(
        old_owner_drafts, acknowledged,
        "the old owner's command entered the log only if it was acknowledged (run by the new owner)"
    );
}

/// The `RepositorySpecChanged` events of repository `r` in `log` that set
/// sync schedule `schedule`: their seq and `request_id`.
fn schedule_changes(log: &[Value], schedule: &str) -> Vec<(u64, String)> {
    log.iter()
        .filter(|e| e["stream"] == "repo/team-a/r")
        .filter(|e| e["event"].get("repository_spec_changed").is_some())
        .filter(|e| e.to_string().contains(schedule))
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["request_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A write that came without a key, forwarded to an owner that pauses and
/// then run by the forwarding node itself once the stream came to it
/// (`Forwarded::RunHere`), carries the key its forward carried — had the
/// paused owner applied the forward before dying, the run here would have
/// found it and appended nothing. The old owner, woken with the forward
/// still queued, appends nothing of it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_run_here_after_its_forward_carries_the_forwarded_key_and_is_applied_once() {
    use nix::sys::signal::Signal;
    // Two nodes: the forwarder is the only other one, so the stream's next
    // owner. A lease of 6 s: the forward surely leaves before the paused
    // owner's lease runs out.
    let cluster = CairnCluster::start(cairn_cli!(), 2, &[("CAIRN_CLUSTER__LEASE", "6s")]).await;
    let upstreams = TestDir::new();
    let old = register_r(&cluster, &upstreams).await;
    let a: usize = old.trim_start_matches('n').parse().unwrap();
    let b = 1 - a;
    let through = format!("n{b}");

    // What reaches the owner's own subject, seen on the forwarder's server.
    let watcher = cluster.clients[b].clone();
    let mut to_owner = watcher
        .nats()
        .subscribe(format!("cairn.node.{old}.cairn.v1.repo.update"))
        .await
        .unwrap();
    watcher.flush().await;

    // The owner pauses; a write without a key reaches the other node, which
    // forwards it to the owner (its lease still runs).
    cluster.nodes[a].as_ref().unwrap().signal(Signal::SIGSTOP);
    let schedule = "17 * * * *";
    let asked = tokio::spawn({
        let (client, through) = (cluster.clients[b].clone(), through.clone());
        async move {
            client
                .call_node(
                    &through,
                    "repo.update",
                    json!({"namespace": NS, "name": "r", "sync": {"schedule": schedule}}),
                    HeaderMap::new(),
                )
                .await
        }
    });
    let forward = within(
        "the write to be forwarded to the paused owner",
        WAIT,
        to_owner.next(),
    )
    .await
    .expect("the subscription is open");
    let forward_headers = forward.headers.clone().expect("a forward has headers");
    assert_eq!(
        forward_headers.get("Cairn-Forwarded").map(|v| v.as_str()),
        Some(through.as_str())
    );
    let key = forward_headers
        .get("Cairn-Request-Id")
        .expect("a forward carries an idempotency key")
        .as_str()
        .to_owned();
    assert!(key.starts_with("fwd-"), "{key}");
    let reply_to = forward
        .reply
        .clone()
        .expect("a forward has a reply subject");

    // The paused owner's lease runs out: the forwarder takes the stream and
    // runs the write itself, with the forward's key.
    let (answer, headers) = asked.await.unwrap();
    answer.unwrap_or_else(|e| panic!("the write through {through}: {e}"));
    assert_eq!(headers.get("Cairn-Node").unwrap().as_str(), through);
    assert!(headers.get("Cairn-Replayed").is_none(), "it ran");
    let seq = seq_of(&headers);
    let changes = schedule_changes(&log_of(&cluster.clients[b], &through, seq).await, schedule);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        changes[0].1, key,
        "the run here carries the key its forward carried"
    );

    // The old owner wakes with the forward queued: it is refused (fenced,
    // or no longer the owner) or answered as the run here went (a replay);
    // never run again.
    let waker = cluster.clients[a].clone();
    let mut replies = waker.nats().subscribe(reply_to).await.unwrap();
    waker.flush().await;
    cluster.nodes[a].as_ref().unwrap().signal(Signal::SIGCONT);
    let reply = within(
        "the old owner's answer to the forward",
        WAIT,
        replies.next(),
    )
    .await
    .expect("the subscription is open");
    let reply_headers = reply.headers.clone().unwrap_or_default();
    let header = |name: &str| reply_headers.get(name).map(|v| v.as_str().to_owned());
    match header("Nats-Service-Error-Code") {
        None => assert_eq!(
            header("Cairn-Replayed"),
            Some(changes[0].0.to_string()),
            "an answer of the old owner replays the run here: {:?}",
            reply.payload
        ),
        Some(code) => {
            let message = header("Nats-Service-Error").unwrap_or_default();
            assert_eq!(code, "503", "{message}");
            // No longer the owner, in any of the words a node says it:
            // the service's check (`node <id> does not own stream …`), or
            // the registry's once the stream's actor is gone (`this node
            // does not own stream … (it moved)`) or leaving (`… any
            // more`); or fenced by the log.
            assert!(
                message.contains(&format!("node {old} does not own stream repo/team-a/r"))
                    || message.contains("this node does not own stream repo/team-a/r")
                    || message.contains(
                        "was taken over by another node: this node's write was refused by the log (fenced)"
                    ),
                "{message}"
            );
        }
    }
    cluster.wait_released(&old, "repo/team-a/r").await;

    // Both nodes hold the same log, with the write once.
    let mut last = 0;
    for node in [&old, &through] {
        let (_, headers) = cluster.clients[0]
            .call_node(node, "log.read", json!({"limit": 1}), HeaderMap::new())
            .await;
        last = last.max(seq_of(&headers));
    }
    let logs = [
        log_of(&cluster.clients[0], "n0", last).await,
        log_of(&cluster.clients[0], "n1", last).await,
    ];
    assert_eq!(logs[0], logs[1]);
    assert_eq!(schedule_changes(&logs[0], schedule), changes);
}

/// A write that pushes nothing to Git: a new sync schedule, with
/// idempotency key `id` (a retry with the same key runs it at most once).
async fn update_schedule(
    client: &Client,
    node: &str,
    id: &str,
    minute: u32,
) -> Result<Value, String> {
    let mut headers = HeaderMap::new();
    headers.insert("Cairn-Request-Id", id);
    client
        .call_node(
            node,
            "repo.update",
            json!({"namespace": NS, "name": "r", "sync": {"schedule": format!("{minute} * * * *")}}),
            headers,
        )
        .await
        .0
        .map_err(|e| e.to_string())
}

/// Retries write `id` until it is acknowledged (a refusal during an outage
/// may still have been recorded: the same key makes the retry safe).
async fn write_until_acknowledged(client: &Client, node: &str, id: &str, minute: u32) {
    // Recovery includes JetStream electing its leaders again: bounded
    // generously, as each attempt is by the client's timeout.
    wait_until(&format!("write {id} to be acknowledged"), 2 * WAIT, || {
        update_schedule(client, node, id, minute)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_nats_servers_stops_writes_quickly_keeps_reads_and_recovers_by_itself() {
    let mut cluster = start(3).await;
    let upstreams = TestDir::new();
    register_r(&cluster, &upstreams).await;
    let client = cluster.clients[0]
        .clone()
        // An attempt may wait for a JetStream leader election and this
        // node's applier to recover (each bounded well under a minute).
        .with_timeout(WAIT);

    // One server of three gone: writes go on (after a failover if the
    // owner's server was the one).
    tokio::task::block_in_place(|| cluster.nats.kill(2));
    write_until_acknowledged(&client, "n0", "w-1", 1).await;

    // Two gone: no JetStream quorum. A write is refused quickly (503), reads
    // answer from the node's views.
    tokio::task::block_in_place(|| cluster.nats.kill(1));
    let asked = std::time::Instant::now();
    let refused = update_schedule(&client, "n0", "w-2", 2).await.unwrap_err();
    let took = asked.elapsed();
    assert!(refused.contains("503"), "{refused}");
    assert!(
        took < Duration::from_secs(20),
        "a write took {took:?} to be refused"
    );
    let (list, _) = client
        .call_node(
            "n0",
            "repo.list",
            json!({"namespace": NS}),
            HeaderMap::new(),
        )
        .await;
    assert_eq!(names(&list.unwrap()), ["r"]);

    // The servers come back: writes resume by themselves. The refused
    // write, retried with its key, is recorded once whatever became of the
    // first attempt.
    tokio::task::block_in_place(|| {
        cluster.nats.restart(1);
        cluster.nats.restart(2);
    });
    write_until_acknowledged(&client, "n0", "w-2", 2).await;
    write_until_acknowledged(&client, "n0", "w-3", 3).await;
    // The most any node has applied (a node's own takeover sync may have
    // appended after the last write).
    let mut last = 0;
    for node in ["n0", "n1", "n2"] {
        let (_, headers) = client
            .call_node(node, "log.read", json!({"limit": 1}), HeaderMap::new())
            .await;
        last = last.max(seq_of(&headers));
    }
    // A replica whose server restarted recovers its consumer by itself, once
    // JetStream has its leaders again (which may take longer than one
    // read's `cluster.read-wait` on a loaded machine): each node must reach
    // `last`, within the harness's bound.
    for node in ["n0", "n1", "n2"] {
        wait_until(&format!("{node} to apply seq {last}"), WAIT, || async {
            let (page, _) = client
                .call_node(
                    node,
                    "log.read",
                    json!({"limit": 1}),
                    min_seq(&last.to_string()),
                )
                .await;
            page.map(|_| ()).map_err(|e| format!("{e:?}"))
        })
        .await;
    }
    let logs = [
        log_of(&client, "n0", last).await,
        log_of(&client, "n1", last).await,
        log_of(&client, "n2", last).await,
    ];
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[0], logs[2]);
    let mut writes: Vec<&str> = logs[0]
        .iter()
        .filter(|e| e["event"].get("repository_spec_changed").is_some())
        .map(|e| e["request_id"].as_str().unwrap_or_default())
        .collect();
    writes.sort();
    assert_eq!(writes, ["w-1", "w-2", "w-3"], "each write once");
    let mut ids: Vec<&str> = logs[0]
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), logs[0].len());
    // Every node follows the members again after the outage (async-nats
    // remakes a watch's consumer after a reconnect, and cairn makes a watch
    // that ended anew, retrying until there is a quorum): each one sees all
    // three heartbeats.
    for node in ["n0", "n1", "n2"] {
        wait_until(
            &format!("{node} to see every member's heartbeat"),
            WAIT,
            || async {
                let (status, _) = client
                    .call_node(node, "cluster.status", json!({}), HeaderMap::new())
                    .await;
                let status = status.map_err(|e| format!("{e:?}"))?;
                let mut seen: Vec<String> = status["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n["node"].as_str().map(str::to_owned))
                    .collect();
                seen.sort();
                if seen == ["n0", "n1", "n2"] {
                    Ok(())
                } else {
                    Err(format!("{node} sees {seen:?}"))
                }
            },
        )
        .await;
    }
}
