//! The key-value cache on a cluster: three `cairn node` processes on a
//! three-server NATS cluster (routes, JetStream R3). Each kv partition has
//! one owner; a write through any node reaches it and is read on every
//! node with `Cairn-Min-Seq` (no node serves an overwritten or deleted
//! value once it applied the change); split commands sum their parts; one
//! compute for the misses of every node; a killed owner is replaced and
//! nothing acknowledged is lost; a paused owner that wakes is fenced; the
//! three logs are the same after a mixed workload; and a forwarded write
//! sent again with its idempotency key is applied once, before and after
//! a failover.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::HeaderMap;
use cairn_actors::kv::{partition_of, partition_stream};
use cairn_tests::{
    cairn_cli,
    cluster::{acknowledged_or_fenced, log_of, min_seq, seq_of, CairnCluster},
    wait_until, Client, ServiceError, WAIT,
};
use futures::StreamExt as _;
use serde_json::{json, Value};

async fn start() -> CairnCluster {
    CairnCluster::start(cairn_cli!(), 3, &[]).await
}

/// The node that owns `namespace`'s partition (other than `not`), once
/// one does.
async fn owner_of(cluster: &CairnCluster, namespace: &str, not: Option<&str>) -> String {
    let stream = partition_stream(partition_of(namespace)).to_string();
    wait_until(&format!("{stream} to have an owner"), WAIT, || async {
        match cluster.owners().await.get(&stream) {
            Some(owner) if Some(owner.as_str()) != not => Ok(owner.clone()),
            other => Err(format!("owner {other:?}")),
        }
    })
    .await
}

fn index(node: &str) -> usize {
    node.trim_start_matches('n').parse().unwrap()
}

/// `endpoint` on node `node`, with `headers`.
async fn on(
    cluster: &CairnCluster,
    node: usize,
    endpoint: &str,
    body: Value,
    headers: HeaderMap,
) -> (Result<Value, ServiceError>, HeaderMap) {
    cluster.clients[0]
        .call_node(&format!("n{node}"), endpoint, body, headers)
        .await
}

/// `endpoint` on node `node`, failing the test on an error; the reply
/// and its `Cairn-Seq`.
async fn ok_on(cluster: &CairnCluster, node: usize, endpoint: &str, body: Value) -> (Value, u64) {
    let (reply, headers) = on(cluster, node, endpoint, body.clone(), HeaderMap::new()).await;
    let reply = reply.unwrap_or_else(|e| panic!("{endpoint} {body} on n{node}: {e}"));
    (reply, seq_of(&headers))
}

/// `kv.get` of `ns:key` on node `node` once it applied `seq`: the value,
/// or the error code.
async fn get_on(
    cluster: &CairnCluster,
    node: usize,
    ns: &str,
    key: &str,
    seq: u64,
) -> Result<Value, u16> {
    let (reply, _) = on(
        cluster,
        node,
        "kv.get",
        json!({"namespace": ns, "key": key}),
        min_seq(&seq.to_string()),
    )
    .await;
    reply.map(|r| r["value"].clone()).map_err(|e| e.code)
}

/// `kv.keys` (full keys, sorted) of every namespace on node `node` once
/// it applied `seq`.
async fn keys_on(cluster: &CairnCluster, node: usize, seq: u64) -> Vec<String> {
    keys_of(cluster, node, json!({"limit": 1000}), seq).await
}

/// `kv.keys` with `body` (full keys, sorted) on node `node` once it
/// applied `seq`.
async fn keys_of(cluster: &CairnCluster, node: usize, body: Value, seq: u64) -> Vec<String> {
    let (reply, _) = on(cluster, node, "kv.keys", body, min_seq(&seq.to_string())).await;
    let mut keys: Vec<String> = reply.unwrap()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["full_key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_are_read_on_every_node_and_none_serves_a_stale_value() {
    let cluster = start().await;
    // Every partition has an owner; the nodes that joined last take their
    // share from the first (placement hands partitions over).
    wait_until(
        "the kv partitions to spread over the nodes",
        WAIT,
        || async {
            let owners: BTreeMap<String, String> = cluster
                .owners()
                .await
                .into_iter()
                .filter(|(s, _)| s.starts_with("kv/"))
                .collect();
            let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
            for node in owners.values() {
                *per_node.entry(node.clone()).or_default() += 1;
            }
            if owners.len() == 16 && per_node.len() == 3 {
                Ok(())
            } else {
                Err(format!("{per_node:?}"))
            }
        },
    )
    .await;

    // Set on A, read on every node (each fills its memory tier).
    let (set, _) = ok_on(
        &cluster,
        0,
        "kv.set",
        json!({"namespace": "app", "key": "k", "value": {"v": 1}}),
    )
    .await;
    let v1 = set["version"].as_u64().unwrap();
    for node in 0..3 {
        assert_eq!(
            get_on(&cluster, node, "app", "k", v1).await,
            Ok(json!({"v": 1}))
        );
    }
    // Overwrite through B; C, and A (whose memory held v1), read the new
    // value once they applied it.
    let (set, _) = ok_on(
        &cluster,
        1,
        "kv.set",
        json!({"namespace": "app", "key": "k", "value": {"v": 2}}),
    )
    .await;
    let v2 = set["version"].as_u64().unwrap();
    assert!(v2 > v1);
    for node in [2, 0, 1] {
        assert_eq!(
            get_on(&cluster, node, "app", "k", v2).await,
            Ok(json!({"v": 2}))
        );
    }
    // Delete through C: 404 everywhere once applied (the reply's Cairn-Seq
    // covers the delete, wherever it ran).
    let (deleted, seq) = ok_on(
        &cluster,
        2,
        "kv.delete",
        json!({"namespace": "app", "key": "k"}),
    )
    .await;
    assert_eq!(deleted, json!({"deleted": true}));
    assert!(seq > v2);
    for node in 0..3 {
        assert_eq!(get_on(&cluster, node, "app", "k", seq).await, Err(404));
        let (exists, _) = on(
            &cluster,
            node,
            "kv.exists",
            json!({"namespace": "app", "key": "k"}),
            min_seq(&seq.to_string()),
        )
        .await;
        assert_eq!(exists.unwrap(), json!({"exists": false}));
    }

    // Keys in namespaces over many partitions, each set through a node in
    // turn: every node lists them all.
    let namespaces: Vec<String> = (0..12).map(|i| format!("user:{i}")).collect();
    let parts: std::collections::BTreeSet<usize> =
        namespaces.iter().map(|n| partition_of(n)).collect();
    assert!(parts.len() >= 5, "{parts:?}");
    let mut seq = 0;
    for (i, ns) in namespaces.iter().enumerate() {
        for key in ["a", "b"] {
            let tags = if key == "a" {
                json!(["red"])
            } else {
                json!(["blue"])
            };
            let (set, _) = ok_on(
                &cluster,
                i % 3,
                "kv.set",
                json!({"namespace": ns, "key": key, "value": i, "tags": tags}),
            )
            .await;
            seq = seq.max(set["version"].as_u64().unwrap());
        }
    }
    let mut all: Vec<String> = namespaces
        .iter()
        .flat_map(|ns| [format!("{ns}:a"), format!("{ns}:b")])
        .collect();
    all.sort();
    for node in 0..3 {
        assert_eq!(keys_on(&cluster, node, seq).await, all, "n{node}");
    }
    // A pattern over every partition: its parts' counts summed; gone on
    // every node.
    let (deleted, seq) = ok_on(
        &cluster,
        1,
        "kv.delete_by_pattern",
        json!({"pattern": "user:1*:a"}),
    )
    .await;
    // user:1, user:10, user:11.
    assert_eq!(deleted, json!({"deleted": 3}));
    // Tags over every partition.
    let (deleted, seq2) = ok_on(&cluster, 2, "kv.delete_by_tags", json!({"tags": ["blue"]})).await;
    assert_eq!(deleted, json!({"deleted": 12}));
    let seq = seq.max(seq2);
    let left: Vec<String> = all
        .iter()
        .filter(|k| {
            k.ends_with(":a") && !["user:1:a", "user:10:a", "user:11:a"].contains(&k.as_str())
        })
        .cloned()
        .collect();
    for node in 0..3 {
        assert_eq!(keys_on(&cluster, node, seq).await, left, "n{node}");
    }
    // Everything cleared through A: 9 left, none anywhere after.
    let (deleted, seq) = ok_on(&cluster, 0, "kv.clear", json!({"all": true})).await;
    assert_eq!(deleted, json!({"deleted": 9}));
    for node in 0..3 {
        assert_eq!(keys_on(&cluster, node, seq).await, Vec::<String>::new());
        let (stats, _) = on(
            &cluster,
            node,
            "kv.stats",
            json!({}),
            min_seq(&seq.to_string()),
        )
        .await;
        assert_eq!(stats.unwrap()["total_entries"], 0);
    }
}

/// A compute responder on `subject` counting its requests; it answers a
/// request once `ready` says so (bounded), with `{"rendered": n}`.
async fn compute_responder<F, Fut>(
    client: &Client,
    subject: &str,
    ready: F,
) -> (Arc<Mutex<Vec<Value>>>, tokio::task::JoinHandle<()>)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut requests = client.nats().subscribe(subject.to_owned()).await.unwrap();
    client.flush().await;
    let nats = client.nats().clone();
    let counted = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let body: Value = serde_json::from_slice(&message.payload).unwrap();
            counted.lock().unwrap().push(body.clone());
            wait_until("every caller to be waiting for the compute", WAIT, &ready).await;
            if let Some(reply) = message.reply {
                let answer = json!({"rendered": body["n"]});
                nats.publish(reply, serde_json::to_vec(&answer).unwrap().into())
                    .await
                    .unwrap();
            }
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_from_every_node_make_one_compute_request() {
    let cluster = start().await;
    let owner = index(&owner_of(&cluster, "fn", None).await);
    // Each get_or_compute counts a miss where it arrives and, sent on, at
    // the owner, before it joins the owner's flight: the compute answers
    // once the owner counted all 30.
    let stats_client = cluster.clients[0].clone();
    let (seen, task) = compute_responder(&cluster.clients[1], "compute.render", move || {
        let client = stats_client.clone();
        async move {
            let (stats, _) = client
                .call_node(
                    &format!("n{owner}"),
                    "kv.stats",
                    json!({"namespace": "fn"}),
                    HeaderMap::new(),
                )
                .await;
            match stats.map_err(|e| e.to_string())?["total_misses"].as_u64() {
                Some(30) => Ok(()),
                other => Err(format!("{other:?} misses at the owner")),
            }
        }
    })
    .await;
    let calls = (0..30).map(|i| {
        let client = cluster.clients[i % 3].clone();
        async move {
            client
                .call_node(
                    &format!("n{}", i % 3),
                    "kv.get_or_compute",
                    json!({"namespace": "fn", "key": "k", "tags": ["computed"],
                           "compute": {"subject": "compute.render", "body": {"n": 7}}}),
                    HeaderMap::new(),
                )
                .await
        }
    });
    let replies = futures::future::join_all(calls).await;
    for (reply, headers) in &replies {
        let reply = reply.as_ref().unwrap();
        assert_eq!(reply["value"], json!({"rendered": 7}));
        assert_eq!(reply["tags"], json!(["computed"]));
        // Every node answers once it applied the entry.
        assert!(seq_of(headers) >= reply["version"].as_u64().unwrap());
    }
    assert_eq!(
        *seen.lock().unwrap(),
        vec![json!({"n": 7})],
        "exactly one compute request across the cluster"
    );
    // Cached: hits on every node, no compute.
    for node in 0..3 {
        let (reply, _) = on(
            &cluster,
            node,
            "kv.get_or_compute",
            json!({"namespace": "fn", "key": "k",
                   "compute": {"subject": "compute.render", "body": {"n": 8}}}),
            HeaderMap::new(),
        )
        .await;
        assert_eq!(reply.unwrap()["value"], json!({"rendered": 7}));
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_partition_owner_is_replaced_and_nothing_acknowledged_is_lost() {
    let mut cluster = start().await;
    let owner = owner_of(&cluster, "orders", None).await;
    let a = index(&owner);
    let others: Vec<usize> = (0..3).filter(|i| *i != a).collect();
    // Sets through every node, the owner's included.
    let mut acknowledged = Vec::new();
    for i in 0..9 {
        let (set, headers) = on(
            &cluster,
            i % 3,
            "kv.set",
            json!({"namespace": "orders", "key": format!("o{i}"), "value": i}),
            HeaderMap::new(),
        )
        .await;
        set.unwrap();
        assert_eq!(
            headers.get("Cairn-Node").unwrap().as_str(),
            format!("n{}", i % 3)
        );
        acknowledged.push((format!("o{i}"), i));
    }

    cluster.kill(a).await;
    let killed_at = Instant::now();
    let through = others[0];
    let client = cluster.clients[0].clone();
    let set = wait_until("a kv write to succeed after the owner died", WAIT, || {
        let client = client.clone();
        async move {
            let (reply, _) = client
                .call_node(
                    &format!("n{through}"),
                    "kv.set",
                    json!({"namespace": "orders", "key": "after", "value": "new owner"}),
                    HeaderMap::new(),
                )
                .await;
            reply.map_err(|e| e.to_string())
        }
    })
    .await;
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    acknowledged.push(("after".to_owned(), 0));
    let new_owner = owner_of(&cluster, "orders", Some(&owner)).await;
    assert_ne!(new_owner, owner);
    let seq = set["version"].as_u64().unwrap();

    // Both survivors hold every acknowledged entry, and the same log.
    for &i in &others {
        for (key, value) in &acknowledged {
            let got = get_on(&cluster, i, "orders", key, seq).await;
            let expected = if key == "after" {
                json!("new owner")
            } else {
                json!(value)
            };
            assert_eq!(got, Ok(expected), "{key} on n{i}");
        }
    }
    let logs = [
        log_of(&cluster.clients[0], &format!("n{}", others[0]), seq).await,
        log_of(&cluster.clients[0], &format!("n{}", others[1]), seq).await,
    ];
    assert_eq!(logs[0], logs[1]);
    let sets = logs[0].iter().filter(|e| e["type"] == "KvEntrySet").count();
    assert_eq!(sets, acknowledged.len(), "every acknowledged set once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_partition_owner_is_fenced_when_it_wakes() {
    use nix::sys::signal::Signal;
    let cluster = start().await;
    let old = owner_of(&cluster, "fenced", None).await;
    let a = index(&old);
    let b = (a + 1) % 3;
    ok_on(
        &cluster,
        a,
        "kv.set",
        json!({"namespace": "fenced", "key": "k", "value": "before"}),
    )
    .await;

    // The owner pauses past its lease; another node takes over and writes.
    cluster.nodes[a].as_ref().unwrap().signal(Signal::SIGSTOP);
    let new = owner_of(&cluster, "fenced", Some(&old)).await;
    let (set, headers) = on(
        &cluster,
        b,
        "kv.set",
        json!({"namespace": "fenced", "key": "k", "value": "by-new-owner"}),
        HeaderMap::new(),
    )
    .await;
    let takeover_seq = set.unwrap()["version"].as_u64().unwrap();
    assert_eq!(headers.get("Cairn-Node").unwrap().as_str(), format!("n{b}"));

    // A set reaches the paused node; it wakes. Either it still thinks it
    // owns the partition and appends — JetStream refuses it and the client
    // is told why — or it noticed first and the set ran at the new owner.
    let client = cluster.clients[0].clone();
    let asked = tokio::spawn(async move {
        client
            .call_node(
                &format!("n{a}"),
                "kv.set",
                json!({"namespace": "fenced", "key": "k", "value": "by-old-owner"}),
                HeaderMap::new(),
            )
            .await
    });
    cluster.clients[0].flush().await;
    cluster.nodes[a].as_ref().unwrap().signal(Signal::SIGCONT);
    let (answer, _) = asked.await.unwrap();
    let acknowledged = acknowledged_or_fenced(&answer);
    // The old owner holds nothing of the partition any more.
    let stream = partition_stream(partition_of("fenced")).to_string();
    cluster.wait_released(&old, &stream).await;
    // Every node holds the same log; after the takeover only the new
    // owner's writes (an acknowledged by-old-owner ran there).
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
    // A set's value is bytes in the event (base64 in its JSON): the new
    // owner's set is found once by it.
    let sets_of = |value: &[u8]| {
        logs[0]
            .iter()
            .filter(|e| set_value(e).as_deref() == Some(value))
            .count()
    };
    assert_eq!(sets_of(b"\"by-new-owner\""), 1);
    let old_owner_sets = logs[0]
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() > takeover_seq)
        .filter(|e| set_value(e).as_deref() == Some(&b"\"by-old-owner\""[..]))
        .count();
    assert_eq!(old_owner_sets, acknowledged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_are_identical_after_a_mixed_kv_workload_through_every_node() {
    let cluster = start().await;
    let mut seq = 0;
    let mut track = |s: u64| seq = seq.max(s);
    // Limits in one namespace: evictions decided by its owner.
    let (_, s) = ok_on(
        &cluster,
        1,
        "kv.configure",
        json!({"namespace": "lru", "max_entries": 3}),
    )
    .await;
    track(s);
    for i in 0..30 {
        let node = i % 3;
        let ns = ["lru", "tmp", "a:b", ""][i % 4];
        let (_, s) = ok_on(
            &cluster,
            node,
            "kv.set",
            json!({"namespace": ns, "key": format!("k{}", i % 7), "value": i,
                   "tags": [format!("t{}", (i / 4) % 2)], "ttl": if ns == "tmp" { json!(1) } else { json!(null) }}),
        )
        .await;
        track(s);
    }
    let (_, s) = ok_on(
        &cluster,
        2,
        "kv.delete",
        json!({"namespace": "a:b", "key": "k2"}),
    )
    .await;
    track(s);
    let (_, s) = ok_on(
        &cluster,
        0,
        "kv.delete_by_tags",
        json!({"tags": ["t1"], "match": "all"}),
    )
    .await;
    track(s);
    let (_, s) = ok_on(
        &cluster,
        1,
        "kv.delete_by_pattern",
        json!({"pattern": "a:b:*"}),
    )
    .await;
    track(s);
    let (_, s) = ok_on(&cluster, 2, "kv.clear", json!({"namespace": ""})).await;
    track(s);
    // The 1 s TTLs pass; cleanup through a node removes them.
    let tmp_gone = wait_until("the tmp entries to expire", WAIT, || async {
        let (exists, _) = on(
            &cluster,
            0,
            "kv.keys",
            json!({"namespace": "tmp"}),
            HeaderMap::new(),
        )
        .await;
        match exists.map_err(|e| e.to_string())?["items"]
            .as_array()
            .map(Vec::len)
        {
            Some(0) => Ok(()),
            other => Err(format!("{other:?} live tmp entries")),
        }
    });
    tmp_gone.await;
    let (cleaned, s) = ok_on(&cluster, 1, "kv.cleanup", json!({})).await;
    track(s);
    assert!(cleaned["removed"].as_u64().unwrap() >= 1, "{cleaned}");

    let logs = [
        log_of(&cluster.clients[0], "n0", seq).await,
        log_of(&cluster.clients[0], "n1", seq).await,
        log_of(&cluster.clients[0], "n2", seq).await,
    ];
    let kinds = |log: &[Value]| -> Vec<String> {
        log.iter()
            .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert!(
        logs[0].len() as u64 >= seq,
        "{} events, seq {seq}",
        logs[0].len()
    );
    let seen = kinds(&logs[0]).join(",");
    for kind in [
        "KvEntriesEvicted",
        "KvEntriesExpired",
        "KvEntryDeleted",
        "KvEntriesDeleted",
        "KvNamespaceConfigured",
    ] {
        assert!(seen.contains(kind), "no {kind} event in {seen}");
    }
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[0], logs[2]);
    // And the same entries everywhere.
    let listed = [
        keys_on(&cluster, 0, seq).await,
        keys_on(&cluster, 1, seq).await,
        keys_on(&cluster, 2, seq).await,
    ];
    assert_eq!(listed[0], listed[1]);
    assert_eq!(listed[0], listed[2]);
    let lru = listed[0].iter().filter(|k| k.starts_with("lru:")).count();
    assert!(lru <= 3, "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_compacts_the_kv_class_at_the_same_point_of_the_log() {
    // Forwarded sets carry an idempotency key: compaction keeps a
    // superseded one for the tombstone retention (a retry is still
    // recognised), here 2 s.
    let cluster = CairnCluster::start(
        cairn_cli!(),
        3,
        &[
            ("CAIRN_KV__COMPACT_INTERVAL", "1s"),
            ("CAIRN_KV__TOMBSTONE_RETENTION", "2s"),
        ],
    )
    .await;
    // Rewrites of four keys through every node.
    let mut seq = 0;
    for round in 0..6 {
        for k in 0..4 {
            let (set, _) = ok_on(
                &cluster,
                (round + k) % 3,
                "kv.set",
                json!({"namespace": "cmp", "key": format!("k{k}"), "value": round}),
            )
            .await;
            seq = seq.max(set["version"].as_u64().unwrap());
        }
    }
    let (_, s) = ok_on(
        &cluster,
        1,
        "kv.delete",
        json!({"namespace": "cmp", "key": "k0"}),
    )
    .await;
    seq = seq.max(s);
    // Each node compacts at the markers the compactor role sends: the
    // rewrites go (the delete stays: the partition's last event), and the
    // three logs are the same once each applied the same markers.
    let kv_events = |log: &[Value]| {
        log.iter()
            .filter(|e| e["stream"].as_str().is_some_and(|s| s.starts_with("kv/")))
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap(),
                    e["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let client = &cluster.clients[0];
    let log = wait_until("the three logs compacted alike", WAIT, || async {
        let logs = [
            log_of(client, "n0", seq).await,
            log_of(client, "n1", seq).await,
            log_of(client, "n2", seq).await,
        ];
        let kv = kv_events(&logs[0]);
        if kv.len() == 4 && logs[0] == logs[1] && logs[0] == logs[2] {
            Ok(logs[0].clone())
        } else {
            Err(format!(
                "kv events per node: {} {} {}",
                kv.len(),
                kv_events(&logs[1]).len(),
                kv_events(&logs[2]).len()
            ))
        }
    })
    .await;
    let kinds: Vec<String> = kv_events(&log).into_iter().map(|(_, k)| k).collect();
    assert_eq!(
        kinds,
        ["KvEntrySet", "KvEntrySet", "KvEntrySet", "KvEntryDeleted"],
        "the last set of k1, k2, k3 and the delete of k0"
    );
    // The entries as they were, on every node.
    for node in 0..3 {
        assert_eq!(get_on(&cluster, node, "cmp", "k0", seq).await, Err(404));
        assert_eq!(get_on(&cluster, node, "cmp", "k3", seq).await, Ok(json!(5)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_a_partition_over_without_a_failed_write() {
    let mut cluster = start().await;
    let owner = index(&owner_of(&cluster, "steady", None).await);
    let others: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    // Sets one after the other through the other nodes, until told to stop.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let clients = cluster.clients.clone();
    let writes = tokio::spawn(async move {
        let (mut acknowledged, mut failed, mut seq) = (Vec::new(), Vec::new(), 0);
        let mut i = 0;
        while !*stopped.borrow() {
            let node = others[i % 2];
            let (reply, _) = clients[0]
                .call_node(
                    &format!("n{node}"),
                    "kv.set",
                    json!({"namespace": "steady", "key": format!("w{i:04}"), "value": i}),
                    HeaderMap::new(),
                )
                .await;
            match reply {
                Ok(set) => {
                    seq = seq.max(set["version"].as_u64().unwrap());
                    acknowledged.push(format!("steady:w{i:04}"));
                }
                Err(e) => failed.push(format!("w{i:04}: {e}")),
            }
            i += 1;
        }
        (acknowledged, failed, seq)
    });
    // The owner leaves with SIGTERM (and comes back) while the sets go on.
    let status = cluster.restart(owner).await;
    assert!(status.success(), "{status}");
    let _ = owner_of(&cluster, "steady", None).await;
    // A few more sets after it is back, then stop.
    let client = cluster.clients[0].clone();
    wait_until("sets to go on after the restart", WAIT, || {
        let client = client.clone();
        async move {
            let (reply, _) = client
                .call_node(
                    &format!("n{owner}"),
                    "kv.keys",
                    json!({"namespace": "steady", "limit": 1000}),
                    HeaderMap::new(),
                )
                .await;
            match reply.map_err(|e| e.to_string())?["items"]
                .as_array()
                .map(Vec::len)
            {
                Some(n) if n >= 5 => Ok(()),
                other => Err(format!("{other:?} entries")),
            }
        }
    })
    .await;
    stop.send_replace(true);
    let (acknowledged, failed, seq) = writes.await.unwrap();
    assert_eq!(
        failed,
        Vec::<String>::new(),
        "no set failed while the owner left"
    );
    assert!(acknowledged.len() >= 5, "{acknowledged:?}");
    // Every acknowledged set on every node, and no other.
    for node in 0..3 {
        let keys = keys_of(
            &cluster,
            node,
            json!({"namespace": "steady", "limit": 1000}),
            seq,
        )
        .await;
        assert_eq!(keys, acknowledged, "n{node}");
    }
}

/// The headers of a request a node forwarded to a partition's owner with
/// idempotency key `id` (what the owner gets again when the forwarder
/// sends it a second time after losing the answer).
fn forwarded_with(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Cairn-Request-Id", id);
    headers.insert("Cairn-Forwarded", "n-test");
    headers
}

/// The value a `KvEntrySet` event (as `log.read` renders it) sets.
fn set_value(event: &Value) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let value = event["event"]["kv_entry_set"]["value"].as_str()?;
    base64::engine::general_purpose::STANDARD.decode(value).ok()
}

/// The `kv/` events of `log` of type `kind` naming `key`, with their
/// `request_id`.
fn kv_events(log: &[Value], kind: &str, key: &str) -> Vec<(u64, String)> {
    log.iter()
        .filter(|e| e["type"] == kind && e.to_string().contains(&format!("\"key\":\"{key}\"")))
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["request_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A forwarded kv write whose answer was lost is sent again with its key:
/// the owner's partition writer finds the key in the `requests` view and
/// appends nothing, answering the first run's outcome (the same version) —
/// at the same owner, for sets batched into one commit (each envelope
/// carries its own key), and at the next owner after a failover. The key
/// with another request is a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_kv_write_sent_again_with_its_key_is_applied_once() {
    let mut cluster = start().await;
    let ns = "idem";
    let owner = owner_of(&cluster, ns, None).await;
    let a = index(&owner);
    let client = cluster.clients[0].clone();
    let send = |node: usize, endpoint: &'static str, body: Value, headers: HeaderMap| {
        let client = client.clone();
        async move {
            let (reply, headers) = client
                .call_node(&format!("n{node}"), endpoint, body, headers)
                .await;
            // Error replies carry no Cairn-Seq.
            let seq = headers
                .get("Cairn-Seq")
                .map_or(0, |s| s.as_str().parse::<u64>().unwrap());
            (reply, seq)
        }
    };

    // One set, twice to the owner with its key, then through another node
    // (which forwards the client's key): one KvEntrySet, one version.
    let set = json!({"namespace": ns, "key": "once", "value": 1, "ttl": "1h"});
    let (first, _) = send(a, "kv.set", set.clone(), forwarded_with("set-once")).await;
    let first = first.unwrap();
    let (again, _) = send(a, "kv.set", set.clone(), forwarded_with("set-once")).await;
    assert_eq!(again.unwrap(), first);
    let mut client_key = HeaderMap::new();
    client_key.insert("Cairn-Request-Id", "set-once");
    let (through, _) = send((a + 1) % 3, "kv.set", set.clone(), client_key.clone()).await;
    assert_eq!(through.unwrap(), first);

    // Sets of 16 keys, each sent twice at once: batched by the writer
    // (packed into shared commits), yet each applied once and each
    // envelope carrying its own key.
    let batch = futures::future::join_all((0..32).map(|i| {
        let k = i % 16;
        send(
            a,
            "kv.set",
            json!({"namespace": ns, "key": format!("b{k}"), "value": k}),
            forwarded_with(&format!("batch-{k}")),
        )
    }))
    .await;
    for k in 0..16 {
        let (x, y) = (&batch[k].0, &batch[k + 16].0);
        assert_eq!(x.as_ref().unwrap(), y.as_ref().unwrap(), "b{k}");
    }

    // A delete and a configure, each twice.
    let delete = json!({"namespace": ns, "key": "b0"});
    let (deleted, _) = send(a, "kv.delete", delete.clone(), forwarded_with("del-once")).await;
    assert_eq!(deleted.unwrap(), json!({"deleted": true}));
    let (deleted, _) = send(a, "kv.delete", delete.clone(), forwarded_with("del-once")).await;
    assert_eq!(deleted.unwrap(), json!({"deleted": true}));
    let configure = json!({"namespace": ns, "max_entries": 100});
    let (configured, _) = send(
        a,
        "kv.configure",
        configure.clone(),
        forwarded_with("cfg-once"),
    )
    .await;
    let configured = configured.unwrap();
    let (again, seq) = send(
        a,
        "kv.configure",
        configure.clone(),
        forwarded_with("cfg-once"),
    )
    .await;
    assert_eq!(again.unwrap(), configured);

    // The key of another request: 409, nothing appended.
    let (refused, _) = send(
        a,
        "kv.set",
        json!({"namespace": ns, "key": "once", "value": 2}),
        forwarded_with("set-once"),
    )
    .await;
    let e = refused.unwrap_err();
    assert_eq!(e.code, 409, "{e}");
    assert!(
        e.message
            .starts_with("Cairn-Request-Id \"set-once\" was already used for another request"),
        "{e}"
    );
    let (_, after) = send(a, "log.read", json!({"limit": 1}), HeaderMap::new()).await;
    assert_eq!(after, seq, "nothing appended");

    let expect_once = |log: &[Value]| {
        let version = first["version"].as_u64().unwrap();
        assert_eq!(
            kv_events(log, "KvEntrySet", "once"),
            [(version, "set-once".to_owned())]
        );
        for (k, (reply, _)) in batch.iter().take(16).enumerate() {
            let sets = kv_events(log, "KvEntrySet", &format!("b{k}"));
            assert_eq!(sets.len(), 1, "b{k}: {sets:?}");
            assert_eq!(sets[0].1, format!("batch-{k}"));
            let version = reply.as_ref().unwrap()["version"].as_u64().unwrap();
            assert_eq!(sets[0].0, version, "b{k}");
        }
        assert_eq!(kv_events(log, "KvEntryDeleted", "b0").len(), 1);
        let configured = log
            .iter()
            .filter(|e| e["type"] == "KvNamespaceConfigured" && e["request_id"] == "cfg-once")
            .count();
        assert_eq!(configured, 1);
    };
    for node in ["n0", "n1", "n2"] {
        expect_once(&log_of(&cluster.clients[0], node, seq).await);
    }

    // The owner dies; the set is sent again with its key through a
    // survivor, to the partition's next owner: still one event.
    cluster.kill(a).await;
    let new_owner = owner_of(&cluster, ns, Some(&owner)).await;
    let b = index(&new_owner);
    let survivor = (0..3).find(|i| *i != a && *i != b).unwrap();
    let (after, _) = send(b, "kv.set", set.clone(), forwarded_with("set-once")).await;
    assert_eq!(after.unwrap(), first);
    let (after, seq) = send(survivor, "kv.set", set.clone(), client_key).await;
    assert_eq!(after.unwrap(), first);
    for node in [b, survivor] {
        expect_once(&log_of(&cluster.clients[0], &format!("n{node}"), seq).await);
    }
    assert_eq!(
        get_on(&cluster, survivor, ns, "once", seq).await,
        Ok(json!(1))
    );
}
