//! The HTTP artifact cache on a cluster: three `cairn node` processes on a
//! three-server NATS cluster (routes, JetStream R3), each with its HTTP
//! listener, in front of one scripted origin. A miss through one node is a
//! hit on the others (one origin request; the body reaches every replica
//! as a blob, not from the origin); concurrent misses through every node
//! make one origin request; an invalidation or an eviction through any
//! node removes the entry on every node; a killed owner of the URL's
//! stream is replaced and the next miss stores through the new owner; a
//! paused owner that wakes is fenced; the three logs are the same
//! after a mixed artifact workload (stores, revalidation, invalidation,
//! evictions by request and by LRU); a record sent again with its
//! idempotency key, before or after a failover, appends nothing; and
//! three nodes serving one stale entry revalidate it once.

use std::time::Duration;

use async_nats::HeaderMap;
use cairn_actors::artifact::key::partition;
use cairn_events::StreamId;
use cairn_tests::{
    cairn_cli,
    cluster::{acknowledged_or_fenced, log_of, min_seq, seq_of, CairnCluster},
    wait_until, within, Gate, Reply, ScriptedOrigin, ServiceError, TestDir, WAIT,
};
use serde_json::{json, Value};

/// Bound on one HTTP exchange.
const EXCHANGE: Duration = Duration::from_secs(60);

/// A cluster in front of a scripted origin (upstream `origin`).
struct Fixture {
    cluster: CairnCluster,
    origin: ScriptedOrigin,
    http: reqwest::Client,
    _config: TestDir,
}

async fn fixture(env: &[(&str, &str)]) -> Fixture {
    let origin = ScriptedOrigin::start().await;
    let config = TestDir::new();
    let file = config.join("cairn.toml");
    std::fs::write(
        &file,
        format!(
            "[artifact]\nallow = [\"127.0.0.1\"]\norigin-timeout = \"10s\"\n\n[[artifact.upstreams]]\nname = \"origin\"\nurl = \"{}\"\n",
            origin.url()
        ),
    )
    .unwrap();
    let mut all = vec![("CAIRN_CONFIG", file.to_str().unwrap())];
    all.extend_from_slice(env);
    let cluster = CairnCluster::start_with_http(cairn_cli!(), 3, &all).await;
    Fixture {
        cluster,
        origin,
        http: reqwest::Client::new(),
        _config: config,
    }
}

/// What a test reads of a response.
#[derive(Debug)]
struct Got {
    status: u16,
    cache_status: String,
    body: Vec<u8>,
}

impl Fixture {
    /// The absolute URL the cache stores for proxy path `path`.
    fn url(&self, path: &str) -> String {
        url::Url::parse(&format!("{}{path}", self.origin.url()))
            .unwrap()
            .to_string()
    }

    /// A request through node `node`'s proxy (a complete body expected).
    async fn send(&self, node: usize, method: reqwest::Method, path: &str) -> Got {
        self.try_send(node, method, path)
            .await
            .unwrap_or_else(|e| panic!("{path} through n{node}: {e}"))
    }

    /// A request through node `node`'s proxy: the response, or why it
    /// was cut.
    async fn try_send(
        &self,
        node: usize,
        method: reqwest::Method,
        path: &str,
    ) -> Result<Got, String> {
        let url = format!("{}/u/origin{path}", self.cluster.http_base(node));
        exchange(self.http.request(method, &url)).await
    }

    /// A `GET` of `path` through node `node`, to run in a task of its own.
    fn get_task(&self, node: usize, path: &str) -> tokio::task::JoinHandle<Got> {
        let url = format!("{}/u/origin{path}", self.cluster.http_base(node));
        let request = self.http.get(url);
        tokio::spawn(async move { exchange(request).await.unwrap() })
    }

    async fn get(&self, node: usize, path: &str) -> Got {
        self.send(node, reqwest::Method::GET, path).await
    }

    /// `endpoint` on node `node`: the reply (or error) and its `Cairn-Seq`.
    async fn on(
        &self,
        node: usize,
        endpoint: &str,
        body: Value,
    ) -> (Result<Value, ServiceError>, u64) {
        let (reply, headers) = self.cluster.clients[0]
            .call_node(&format!("n{node}"), endpoint, body, HeaderMap::new())
            .await;
        (reply, seq_of(&headers))
    }

    /// The URLs stored on node `node` once it applied `seq`.
    async fn listed(&self, node: usize, seq: u64) -> Vec<String> {
        let (reply, _) = self.cluster.clients[0]
            .call_node(
                &format!("n{node}"),
                "artifact.list",
                json!({"limit": 1000}),
                min_seq(&seq.to_string()),
            )
            .await;
        reply.unwrap()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["url"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The last seq node `node` applied.
    async fn seq_on(&self, node: usize) -> u64 {
        let (_, seq) = self.on(node, "log.read", json!({"limit": 1})).await;
        seq
    }

    /// The owner of `url`'s stream (other than `not`), once it has one.
    async fn owner_of(&self, url: &str, not: Option<&str>) -> String {
        let stream = StreamId::artifact(partition(url)).to_string();
        wait_until(&format!("{stream} to have an owner"), WAIT, || async {
            match self.cluster.owners().await.get(&stream) {
                Some(owner) if Some(owner.as_str()) != not => Ok(owner.clone()),
                other => Err(format!("owner {other:?}")),
            }
        })
        .await
    }

    /// A proxy path `/<prefix>-<n>.tgz` whose URL falls in `url`'s stream.
    fn path_in_stream_of(&self, url: &str, prefix: &str) -> String {
        let wanted = partition(url);
        (0..10_000)
            .map(|n| format!("/{prefix}-{n}.tgz"))
            .find(|p| partition(&self.url(p)) == wanted)
            .expect("a path in every partition")
    }
}

/// Sends `request`: the response, or why it was cut.
async fn exchange(request: reqwest::RequestBuilder) -> Result<Got, String> {
    within("an HTTP exchange", EXCHANGE, async {
        let response = request.send().await.map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let cache_status = response
            .headers()
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_vec();
        Ok(Got {
            status,
            cache_status,
            body,
        })
    })
    .await
}

fn index(node: &str) -> usize {
    node.trim_start_matches('n').parse().unwrap()
}

/// `len` bytes that differ from one position to the next.
fn body_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    cairn_storage::Digest::of(bytes).to_string()
}

/// The event types of a log.
fn kinds(log: &[Value]) -> Vec<String> {
    log.iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The events of `log` about `url` of type `kind`.
fn about(log: &[Value], kind: &str, url: &str) -> usize {
    log.iter()
        .filter(|e| e["type"] == kind && e.to_string().contains(url))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_through_one_node_is_a_hit_on_the_others_and_their_replicas_hold_the_body() {
    let f = fixture(&[]).await;
    // Larger than a NATS message: the body travels in several parts.
    let body = body_of(3 << 20, 7);
    f.origin.reply(
        "/chart.tgz",
        Reply::new(200, body.clone())
            .header("cache-control", "max-age=300")
            .header("etag", "\"c1\""),
    );
    let first = f.get(0, "/chart.tgz").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache_status, "cairn; fwd=miss; stored");
    assert_eq!(first.body, body);
    // At once, no waiting for replication: the other nodes serve it from
    // their replicas.
    for node in [1, 2, 0] {
        let hit = f.get(node, "/chart.tgz").await;
        assert_eq!(hit.status, 200, "n{node}");
        assert_eq!(hit.cache_status, "cairn; hit", "n{node}");
        assert_eq!(hit.body, body, "n{node}");
    }
    assert_eq!(f.origin.count("/chart.tgz"), 1);
    // Each replica holds the body as a file of its own (the blob came
    // through the cluster, not from the origin).
    let url = f.url("/chart.tgz");
    for node in 0..3 {
        let (reply, _) = f
            .on(node, "artifact.get", json!({"url": url, "path": true}))
            .await;
        let meta = reply.unwrap()["meta"].clone();
        assert_eq!(meta["status"], "hit", "n{node}: {meta}");
        assert_eq!(meta["digest"], sha(&body), "n{node}");
        let path = meta["path"].as_str().expect("a body file");
        assert!(
            path.starts_with(f.cluster.dirs[node].path().to_str().unwrap()),
            "n{node}'s body is under its own data directory: {path}"
        );
        assert_eq!(std::fs::read(path).unwrap(), body, "n{node}");
    }
    assert_eq!(f.origin.count("/chart.tgz"), 1);
    // The stream's owner appended it, once.
    let seq = f.seq_on(0).await;
    let log = log_of(&f.cluster.clients[0], "n1", seq).await;
    assert_eq!(about(&log, "ArtifactStored", &url), 1, "{:?}", kinds(&log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_through_every_node_make_one_origin_request() {
    let f = fixture(&[]).await;
    let gate = Gate::new();
    let body = body_of(200_000, 3);
    f.origin.reply(
        "/once.tgz",
        Reply::new(200, body.clone())
            .header("cache-control", "max-age=300")
            .after(&gate),
    );
    let fx = f;
    let leader = fx.get_task(0, "/once.tgz");
    wait_until("the origin to be asked", WAIT, || async {
        match fx.origin.count("/once.tgz") {
            1 => Ok(()),
            n => Err(format!("{n} requests")),
        }
    })
    .await;
    let followers: Vec<_> = [1, 2]
        .into_iter()
        .map(|node| fx.get_task(node, "/once.tgz"))
        .collect();
    // Both wait for n0's download (their single-flight joins count it).
    for node in [1, 2] {
        wait_until(
            &format!("n{node} to wait for n0's download"),
            WAIT,
            || async {
                let (stats, _) = fx.on(node, "artifact.stats", json!({})).await;
                let stats = stats.map_err(|e| e.to_string())?;
                match stats["single_flight_joins"].as_u64() {
                    Some(1) => Ok(()),
                    other => Err(format!("{other:?} joins: {stats}")),
                }
            },
        )
        .await;
    }
    gate.open();
    let led = leader.await.unwrap();
    assert_eq!(led.status, 200);
    assert_eq!(led.cache_status, "cairn; fwd=miss; stored");
    assert_eq!(led.body, body);
    for follower in followers {
        let got = follower.await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.cache_status, "cairn; hit");
        assert_eq!(got.body, body);
    }
    assert_eq!(fx.origin.count("/once.tgz"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_through_one_node_and_an_eviction_through_another_remove_the_entry_everywhere(
) {
    let f = fixture(&[]).await;
    for path in ["/inv.tgz", "/evict.tgz"] {
        let v1 = Reply::new(200, format!("v1 of {path}")).header("cache-control", "max-age=300");
        let v2 = Reply::new(200, format!("v2 of {path}")).header("cache-control", "max-age=300");
        // The PUT of /inv.tgz comes second.
        let replies = if path == "/inv.tgz" {
            vec![v1, Reply::new(204, ""), v2]
        } else {
            vec![v1, v2]
        };
        f.origin.replies(path, replies);
        assert_eq!(f.get(0, path).await.cache_status, "cairn; fwd=miss; stored");
        for node in [1, 2] {
            assert_eq!(f.get(node, path).await.cache_status, "cairn; hit");
        }
    }
    let (inv, evict) = (f.url("/inv.tgz"), f.url("/evict.tgz"));

    // A PUT through n1's proxy invalidates the URL on every node.
    let put = f.send(1, reqwest::Method::PUT, "/inv.tgz").await;
    assert_eq!(put.status, 204);
    let seq = f.seq_on(1).await;
    for node in 0..3 {
        let listed = f.listed(node, seq).await;
        assert!(!listed.contains(&inv), "n{node}: {listed:?}");
        assert!(listed.contains(&evict), "n{node}: {listed:?}");
    }
    let again = f.get(2, "/inv.tgz").await;
    assert_eq!(again.cache_status, "cairn; fwd=miss; stored");
    assert_eq!(again.body, b"v2 of /inv.tgz");

    // `artifact.evict` through n2 removes the other everywhere.
    let (evicted, seq) = f.on(2, "artifact.evict", json!({"url": evict})).await;
    assert_eq!(evicted.unwrap(), json!({"evicted": 1}));
    for node in 0..3 {
        let listed = f.listed(node, seq).await;
        assert_eq!(listed, vec![inv.clone()], "n{node}");
    }
    let again = f.get(0, "/evict.tgz").await;
    assert_eq!(again.cache_status, "cairn; fwd=miss; stored");

    // Evicting what is gone evicts nothing.
    let (evicted, _) = f
        .on(1, "artifact.evict", json!({"url": f.url("/none.tgz")}))
        .await;
    assert_eq!(evicted.unwrap(), json!({"evicted": 0}));
    let seq = f.seq_on(0).await;
    let log = log_of(&f.cluster.clients[0], "n0", seq).await;
    assert_eq!(about(&log, "ArtifactInvalidated", &inv), 1);
    assert_eq!(about(&log, "ArtifactEvicted", &evict), 1);
    assert_eq!(f.origin.count("/inv.tgz"), 3);
    assert_eq!(f.origin.count("/evict.tgz"), 2);

    // The nodes' internal endpoint refuses a bad record with a 400 naming
    // the field, and appends nothing.
    let other = (partition(&inv) + 1) % 16;
    for (body, field) in [
        (
            json!({"partition": 99, "evict_url": inv}),
            "partition: 99 is not a partition",
        ),
        (json!({"partition": other, "evict_url": inv}), "partition: "),
        (json!({"partition": 0}), "command: required"),
        (json!({"partition": "x"}), "request body"),
    ] {
        let (reply, _) = f.cluster.clients[0]
            .call_node("n1", "artifact.record", body.clone(), HeaderMap::new())
            .await;
        let e = reply.unwrap_err();
        assert_eq!(e.code, 400, "{body}: {e}");
        assert!(e.message.starts_with(field), "{body}: {e}");
    }
    assert_eq!(f.seq_on(0).await, seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_stream_owner_is_replaced_and_the_next_miss_stores_through_the_new_owner() {
    let mut f = fixture(&[]).await;
    f.origin.reply(
        "/before.tgz",
        Reply::new(200, "before").header("cache-control", "max-age=300"),
    );
    let before = f.url("/before.tgz");
    let owner = f.owner_of(&before, None).await;
    let a = index(&owner);
    let others: Vec<usize> = (0..3).filter(|i| *i != a).collect();
    assert_eq!(
        f.get(others[0], "/before.tgz").await.cache_status,
        "cairn; fwd=miss; stored"
    );

    f.cluster.kill(a).await;
    // A URL of the same stream, new: stored through the new owner.
    let path = f.path_in_stream_of(&before, "after");
    f.origin.reply(
        &path,
        Reply::new(200, "after").header("cache-control", "max-age=300"),
    );
    let through = others[1];
    let got = wait_until("a miss to be stored after the owner died", WAIT, || async {
        let got = f.try_send(through, reqwest::Method::GET, &path).await?;
        if got.status == 200 {
            Ok(got)
        } else {
            Err(format!(
                "{} {}",
                got.status,
                String::from_utf8_lossy(&got.body)
            ))
        }
    })
    .await;
    assert_eq!(got.cache_status, "cairn; fwd=miss; stored");
    assert_eq!(got.body, b"after");
    let new_owner = f.owner_of(&before, Some(&owner)).await;
    assert_ne!(new_owner, owner);
    // Both survivors serve both from their replicas.
    for &node in &others {
        for (p, text) in [("/before.tgz", "before"), (path.as_str(), "after")] {
            let hit = f.get(node, p).await;
            assert_eq!(hit.cache_status, "cairn; hit", "{p} on n{node}");
            assert_eq!(hit.body, text.as_bytes());
        }
    }
    assert_eq!(f.origin.count("/before.tgz"), 1);
    let seq = f.seq_on(through).await;
    let logs = [
        log_of(&f.cluster.clients[0], &format!("n{}", others[0]), seq).await,
        log_of(&f.cluster.clients[0], &format!("n{}", others[1]), seq).await,
    ];
    assert_eq!(logs[0], logs[1]);
    assert_eq!(about(&logs[0], "ArtifactStored", &f.url(&path)), 1);
    assert_eq!(about(&logs[0], "ArtifactStored", &before), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_stream_owner_is_fenced_when_it_wakes() {
    use nix::sys::signal::Signal;
    let f = fixture(&[]).await;
    f.origin.reply(
        "/first.tgz",
        Reply::new(200, "first").header("cache-control", "max-age=300"),
    );
    let first = f.url("/first.tgz");
    let old = f.owner_of(&first, None).await;
    let a = index(&old);
    let b = (a + 1) % 3;
    let (got, _) = f.on(a, "artifact.get", json!({"url": first})).await;
    assert_eq!(got.unwrap()["meta"]["status"], "miss");

    // The owner pauses past its lease; another node takes the stream over
    // and stores through it.
    f.cluster.nodes[a].as_ref().unwrap().signal(Signal::SIGSTOP);
    let new = f.owner_of(&first, Some(&old)).await;
    let by_new = f.path_in_stream_of(&first, "by-new-owner");
    f.origin.reply(
        &by_new,
        Reply::new(200, "new").header("cache-control", "max-age=300"),
    );
    let (got, takeover_seq) = f
        .on(b, "artifact.get", json!({"url": f.url(&by_new)}))
        .await;
    assert_eq!(got.unwrap()["meta"]["status"], "miss");

    // A miss reaches the paused node; it wakes. Either it still thinks it
    // owns the stream and appends — JetStream refuses it and the client is
    // told why — or it noticed first and the record went to the new owner.
    let by_old = f.path_in_stream_of(&first, "by-old-owner");
    f.origin.reply(
        &by_old,
        Reply::new(200, "old").header("cache-control", "max-age=300"),
    );
    let client = f.cluster.clients[0].clone();
    let by_old_url = f.url(&by_old);
    let asked = tokio::spawn(async move {
        client
            .call_node(
                &format!("n{a}"),
                "artifact.get",
                json!({"url": by_old_url}),
                HeaderMap::new(),
            )
            .await
    });
    f.cluster.clients[0].flush().await;
    f.cluster.nodes[a].as_ref().unwrap().signal(Signal::SIGCONT);
    let (answer, _) = asked.await.unwrap();
    let acknowledged = acknowledged_or_fenced(&answer);
    let stream = StreamId::artifact(partition(&first)).to_string();
    f.cluster.wait_released(&old, &stream).await;
    let last = f.seq_on(index(&new)).await;
    let logs = [
        log_of(&f.cluster.clients[0], "n0", last).await,
        log_of(&f.cluster.clients[0], "n1", last).await,
        log_of(&f.cluster.clients[0], "n2", last).await,
    ];
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[0], logs[2]);
    let after: Vec<Value> = logs[0]
        .iter()
        .filter(|e| e["seq"].as_u64().unwrap() > takeover_seq)
        .cloned()
        .collect();
    assert_eq!(
        about(&after, "ArtifactStored", &f.url(&by_old)),
        acknowledged
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_are_identical_after_a_mixed_artifact_workload_through_every_node() {
    let f = fixture(&[("CAIRN_ARTIFACT__MAX_ENTRIES", "4")]).await;
    // Seven stored responses through the three nodes (the limit keeps 4,
    // least recently used first), two of them sharing a body.
    for i in 0..7 {
        let text = if i >= 5 {
            "shared".to_owned()
        } else {
            format!("body {i}")
        };
        f.origin.reply(
            &format!("/m{i}.tgz"),
            Reply::new(200, text).header("cache-control", "max-age=300"),
        );
    }
    f.origin.replies(
        "/reval.tgz",
        vec![
            Reply::new(200, "revalidated")
                .header("cache-control", "max-age=0")
                .header("etag", "\"r1\""),
            Reply::new(304, "")
                .header("cache-control", "max-age=0")
                .header("etag", "\"r1\""),
        ],
    );
    for i in 0..5 {
        let got = f.get(i % 3, &format!("/m{i}.tgz")).await;
        assert_eq!(got.cache_status, "cairn; fwd=miss; stored");
    }
    // Over the limit: the evicting node (any) takes the oldest out.
    wait_until("the limit to be applied", WAIT, || async {
        let (stats, _) = f.on(1, "artifact.stats", json!({})).await;
        let stats = stats.map_err(|e| e.to_string())?;
        match stats["entries"].as_u64() {
            Some(4) => Ok(()),
            other => Err(format!("{other:?} entries")),
        }
    })
    .await;
    // A revalidation (304) through n1, a body shared by two URLs evicted
    // by digest through n2, an invalidation through n0.
    assert_eq!(
        f.get(0, "/reval.tgz").await.cache_status,
        "cairn; fwd=miss; stored"
    );
    let revalidated = f.get(1, "/reval.tgz").await;

    assert_eq!(revalidated.cache_status, "cairn; fwd=stale; fwd-status=304");
    assert_eq!(revalidated.body, b"revalidated");
    assert_eq!(
        f.get(2, "/m5.tgz").await.cache_status,
        "cairn; fwd=miss; stored"
    );
    assert_eq!(
        f.get(0, "/m6.tgz").await.cache_status,
        "cairn; fwd=miss; stored"
    );
    let (evicted, _) = f
        .on(2, "artifact.evict", json!({"digest": sha(b"shared")}))
        .await;
    assert_eq!(evicted.unwrap(), json!({"evicted": 2}));
    f.origin.reply("/m4.tgz", Reply::new(204, ""));
    assert_eq!(
        f.send(0, reqwest::Method::DELETE, "/m4.tgz").await.status,
        204
    );

    let mut seq = 0;
    for node in 0..3 {
        seq = seq.max(f.seq_on(node).await);
    }
    let logs = [
        log_of(&f.cluster.clients[0], "n0", seq).await,
        log_of(&f.cluster.clients[0], "n1", seq).await,
        log_of(&f.cluster.clients[0], "n2", seq).await,
    ];
    let seen = kinds(&logs[0]).join(",");
    for kind in [
        "ArtifactStored",
        "ArtifactRevalidated",
        "ArtifactInvalidated",
        "ArtifactEvicted",
    ] {
        assert!(seen.contains(kind), "no {kind} event in {seen}");
    }
    let lru = logs[0]
        .iter()
        .filter(|e| e["type"] == "ArtifactEvicted" && e.to_string().contains("\"lru\""))
        .count();
    assert!(lru >= 1, "{seen}");
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[0], logs[2]);
    // And the same entries everywhere.
    let listed = [
        f.listed(0, seq).await,
        f.listed(1, seq).await,
        f.listed(2, seq).await,
    ];
    assert_eq!(listed[0], listed[1]);
    assert_eq!(listed[0], listed[2]);
    assert!(!listed[0].contains(&f.url("/m4.tgz")), "{listed:?}");
    assert!(!listed[0].contains(&f.url("/m5.tgz")), "{listed:?}");
    assert!(listed[0].contains(&f.url("/reval.tgz")), "{listed:?}");
}

/// The count of an `artifact.record` reply (a uint64: a JSON string in
/// the proto3 mapping, 0 omitted).
fn record_count(reply: &Value) -> u64 {
    match &reply["count"] {
        Value::Null => 0,
        Value::String(s) => s.parse().unwrap(),
        other => other.as_u64().unwrap(),
    }
}

/// A record whose answer was lost is sent again with its idempotency key
/// (`Cairn-Request-Id`): to the same owner, through another node, or to
/// the stream's next owner after the first one died. Each time it appends
/// nothing and answers what the first run appended, so the stream holds
/// exactly one event for it on every node; the key with another record is
/// a 409 that appends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_sent_again_with_its_key_appends_nothing_at_the_owner_or_after_a_failover() {
    let mut f = fixture(&[]).await;
    f.origin.reply(
        "/base.tgz",
        Reply::new(200, "the base body").header("cache-control", "max-age=300"),
    );
    assert_eq!(
        f.get(0, "/base.tgz").await.cache_status,
        "cairn; fwd=miss; stored"
    );
    // A record of another URL of the same stream, whose body (the base's)
    // is in CAIRN_BLOBS already: what a node sends its owner after a miss.
    let base = f.url("/base.tgz");
    let seq = f.seq_on(0).await;
    let log = log_of(&f.cluster.clients[0], "n0", seq).await;
    let stored = log
        .iter()
        .find(|e| e["type"] == "ArtifactStored" && e.to_string().contains(&base))
        .expect("the base's ArtifactStored")["event"]["artifact_stored"]
        .clone();
    assert!(stored.is_object(), "{stored}");
    let path = f.path_in_stream_of(&base, "recorded");
    let url = f.url(&path);
    let mut event = stored.clone();
    event["key"]["url"] = json!(url);
    let record = json!({"partition": partition(&url), "node": "n-test", "stored": event});
    let mut keyed = HeaderMap::new();
    keyed.insert("Cairn-Request-Id", "record-once");
    let client = f.cluster.clients[0].clone();
    let send = |node: String, record: Value| {
        let (client, keyed) = (client.clone(), keyed.clone());
        async move {
            client
                .call_node(&node, "artifact.record", record, keyed)
                .await
        }
    };
    let stored_on = |logs: &[Vec<Value>]| {
        logs.iter()
            .map(|log| about(log, "ArtifactStored", &url))
            .collect::<Vec<_>>()
    };

    // Twice to the owner, then once through a node that does not own the
    // stream (it forwards the record with its key).
    let owner = f.owner_of(&url, None).await;
    let a = index(&owner);
    let (first, _) = send(owner.clone(), record.clone()).await;
    let first = first.unwrap();
    assert_eq!(record_count(&first), 1, "{first}");
    let (again, headers) = send(owner.clone(), record.clone()).await;
    assert_eq!(again.unwrap(), first);
    let other = format!("n{}", (a + 1) % 3);
    let (through, _) = send(other, record.clone()).await;
    assert_eq!(through.unwrap(), first);
    let seq = seq_of(&headers);
    let mut logs = Vec::new();
    for node in ["n0", "n1", "n2"] {
        logs.push(log_of(&f.cluster.clients[0], node, seq).await);
    }
    assert_eq!(stored_on(&logs), [1, 1, 1], "one ArtifactStored of {url}");
    let last = f.seq_on(a).await;

    // The key names that record: with another one it is refused.
    let mut changed = record.clone();
    changed["stored"]["size"] = json!("1");
    let (refused, _) = send(owner.clone(), changed).await;
    let e = refused.unwrap_err();
    assert_eq!(e.code, 409, "{e}");
    assert!(
        e.message
            .starts_with("Cairn-Request-Id \"record-once\" was already used for another request"),
        "{e}"
    );
    assert_eq!(f.seq_on(a).await, last);

    // The owner dies; the record is sent again (same key) to the new
    // owner, and through the other survivor: still one event.
    f.cluster.kill(a).await;
    let new_owner = f.owner_of(&url, Some(&owner)).await;
    let b = index(&new_owner);
    let survivor = (0..3).find(|i| *i != a && *i != b).unwrap();
    let (after, _) = send(new_owner.clone(), record.clone()).await;
    assert_eq!(after.unwrap(), first);
    let (after, headers) = send(format!("n{survivor}"), record.clone()).await;
    assert_eq!(after.unwrap(), first);
    let seq = seq_of(&headers);
    let logs = [
        log_of(&f.cluster.clients[0], &new_owner, seq).await,
        log_of(&f.cluster.clients[0], &format!("n{survivor}"), seq).await,
    ];
    assert_eq!(logs[0], logs[1]);
    assert_eq!(stored_on(&logs), [1, 1], "one ArtifactStored of {url}");
    // The entry is served from both survivors' replicas.
    for node in [b, survivor] {
        let hit = f.get(node, &path).await;
        assert_eq!(hit.cache_status, "cairn; hit", "n{node}");
        assert_eq!(hit.body, b"the base body");
    }
}

/// The background revalidation of `stale-while-revalidate` is claimed
/// from the stream's owner like a miss: three nodes serving the same stale
/// entry at once make one conditional request to the origin; the other
/// two wait for it (a single-flight join each) and then find the entry
/// revalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serving_a_stale_entry_make_one_background_revalidation() {
    let f = fixture(&[]).await;
    let gate = Gate::new();
    f.origin.replies(
        "/swr.tgz",
        vec![
            Reply::new(200, "swr body")
                .header("cache-control", "max-age=0, stale-while-revalidate=600")
                .header("etag", "\"s1\""),
            Reply::new(304, "")
                .header("cache-control", "max-age=600")
                .header("etag", "\"s1\"")
                .after(&gate),
        ],
    );
    assert_eq!(
        f.get(0, "/swr.tgz").await.cache_status,
        "cairn; fwd=miss; stored"
    );
    let url = f.url("/swr.tgz");
    let seq = f.seq_on(0).await;
    for node in 0..3 {
        assert_eq!(f.listed(node, seq).await, vec![url.clone()], "n{node}");
    }

    // Stale on every node: each serves it at once and wants to revalidate
    // it in the background.
    let served = futures::future::join_all((0..3).map(|node| f.get(node, "/swr.tgz"))).await;
    for (node, got) in served.iter().enumerate() {
        assert_eq!(got.cache_status, "cairn; hit; detail=stale", "n{node}");
        assert_eq!(got.body, b"swr body", "n{node}");
    }
    let joins = || async {
        let mut total = 0;
        for node in 0..3 {
            let (stats, _) = f.on(node, "artifact.stats", json!({})).await;
            total += stats.unwrap()["single_flight_joins"].as_u64().unwrap_or(0);
        }
        total
    };
    // One node's conditional request reaches the origin (held there);
    // the two others wait for it — or, without a claim, ask too.
    wait_until("the revalidations to be claimed", WAIT, || async {
        let (asked, joined) = (f.origin.count("/swr.tgz"), joins().await);
        if asked > 2 || (asked == 2 && joined == 2) {
            Ok(())
        } else {
            Err(format!("{asked} origin requests, {joined} joins"))
        }
    })
    .await;
    assert_eq!(f.origin.count("/swr.tgz"), 2, "one conditional request");
    assert_eq!(joins().await, 2);
    let conditional = &f.origin.requests_for("/swr.tgz")[1];
    assert_eq!(conditional.header("if-none-match"), Some("\"s1\""));

    gate.open();
    for node in ["n0", "n1", "n2"] {
        wait_until(
            &format!("{node} to apply the revalidation"),
            WAIT,
            || async {
                let log = log_of(&f.cluster.clients[0], node, 0).await;
                match about(&log, "ArtifactRevalidated", &url) {
                    1 => Ok(()),
                    n => Err(format!("{n} ArtifactRevalidated")),
                }
            },
        )
        .await;
    }
    for node in 0..3 {
        let hit = f.get(node, "/swr.tgz").await;
        assert_eq!(hit.cache_status, "cairn; hit", "n{node}");
        assert_eq!(hit.body, b"swr body", "n{node}");
    }
    assert_eq!(f.origin.count("/swr.tgz"), 2);
    let seq = f.seq_on(0).await;
    for node in ["n0", "n1", "n2"] {
        let log = log_of(&f.cluster.clients[0], node, seq).await;
        assert_eq!(about(&log, "ArtifactRevalidated", &url), 1, "{node}");
        assert_eq!(about(&log, "ArtifactStored", &url), 1, "{node}");
    }
}
