//! Snapshots and log trimming on a three-server NATS cluster with cairn
//! nodes as child processes: the snapshotter (one node, by lease) puts its
//! store in `CAIRN_SNAPSHOTS` and trims `CAIRN_LOG` below what every live
//! node applied; a node that was down meanwhile, and one that joins with an
//! empty data directory, start from the snapshot (their blob files fetched
//! from `CAIRN_BLOBS`) and end with the same log, byte for byte, and the
//! same answers as the others.

use async_nats::{jetstream, HeaderMap};
use cairn_actors::cluster::snapshot;
use cairn_tests::{
    cairn_cli,
    cluster::{log_of, min_seq, seq_of, CairnCluster},
    wait_until, GitFixture, TestDir, WAIT,
};
use serde_json::{json, Value};

const NS: &str = "snap";

/// A snapshot every second once 50 positions passed; package resources
/// over 16 bytes are blob files (not in the snapshot: fetched).
const ENV: &[(&str, &str)] = &[
    ("CAIRN_CLUSTER__SNAPSHOT_INTERVAL", "1s"),
    ("CAIRN_CLUSTER__SNAPSHOT_MIN_MESSAGES", "50"),
    ("CAIRN_STORE__BLOB_INLINE_MAX_BYTES", "16"),
    ("RUST_LOG", "warn,cairn_actors::cluster=info,cairn=info"),
];

/// The current snapshot's manifest, when there is one (none when it was
/// replaced while read, see [`snapshot::read_object`]).
async fn manifest(js: &jetstream::Context) -> Option<Value> {
    let bucket = js.get_object_store("CAIRN_SNAPSHOTS").await.ok()?;
    let mut object = bucket.get("manifest").await.ok()?;
    let mut body = Vec::new();
    snapshot::read_object(
        &mut object,
        &mut body,
        u64::MAX,
        std::time::Duration::from_secs(5),
    )
    .await
    .ok()?;
    serde_json::from_slice(&body).ok()
}

/// Three nodes with `env`, a repository `r` of `packages` packages
/// registered (its resources are blobs), and a JetStream context.
async fn start_with_repo(
    env: &[(&str, &str)],
    packages: usize,
) -> (CairnCluster, TestDir, jetstream::Context) {
    let cluster = CairnCluster::start(cairn_cli!(), 3, env).await;
    let upstreams = TestDir::new();
    let (fixture, _) = GitFixture::with_packages(&upstreams.join("r"), "r", packages, 1, 1);
    cluster.clients[0]
        .ok(
            "repo.register",
            json!({"namespace": NS, "name": "r", "git": {"url": fixture.url()}}),
        )
        .await;
    let js = jetstream::new(async_nats::connect(cluster.nats.url(0)).await.unwrap());
    (cluster, upstreams, js)
}

/// Writes key-value rewrites through n0 (20 per check; a write that
/// fails — a partition whose owner is paused — is left) until the current
/// snapshot's trim passed position `at`; answers that manifest.
async fn write_until_trimmed_past(
    cluster: &CairnCluster,
    js: &jetstream::Context,
    at: u64,
) -> Value {
    let next = std::sync::atomic::AtomicU64::new(0);
    let taken = wait_until(
        &format!("a snapshot whose trim passed {at}"),
        WAIT,
        || async {
            match manifest(js).await {
                Some(m) if m["trimmed_below"].as_u64().unwrap() > at + 1 => Ok(m),
                other => {
                    for _ in 0..20 {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = cluster.clients[0]
                            .call_node(
                                "n0",
                                "kv.set",
                                json!({"namespace": NS, "key": format!("w{}", i % 10), "value": i}),
                                HeaderMap::new(),
                            )
                            .await;
                    }
                    Err(format!("manifest {other:?}"))
                }
            }
        },
    )
    .await;
    taken
}

/// One more write through n2, then the logs of nodes `n0..n<nodes>` once
/// each applied it (and `seq`): asserted the same, event for event;
/// answers the write's seq (or `seq`, the higher).
async fn same_logs_after_a_write(cluster: &CairnCluster, nodes: usize, seq: u64) -> u64 {
    let (reply, headers) = cluster.clients[2]
        .call_node(
            "n2",
            "kv.set",
            json!({"namespace": NS, "key": "after", "value": "restore"}),
            HeaderMap::new(),
        )
        .await;
    reply.unwrap();
    let seq = seq.max(seq_of(&headers));
    let mut logs = Vec::new();
    for i in 0..nodes {
        logs.push(log_of(&cluster.clients[0], &format!("n{i}"), seq).await);
    }
    assert!(
        logs[0].len() as u64 >= seq,
        "{} events, seq {seq}",
        logs[0].len()
    );
    for (i, log) in logs.iter().enumerate().skip(1) {
        assert_eq!(log, &logs[0], "n{i}'s log against n0's");
    }
    seq
}

/// `endpoint` on node `n<i>` once it applied `seq`.
async fn read_on(cluster: &CairnCluster, i: usize, endpoint: &str, body: Value, seq: u64) -> Value {
    let (reply, headers) = cluster.clients[0]
        .call_node(
            &format!("n{i}"),
            endpoint,
            body.clone(),
            min_seq(&seq.to_string()),
        )
        .await;
    assert_eq!(
        headers.get("Cairn-Node").map(|v| v.as_str().to_owned()),
        Some(format!("n{i}"))
    );
    reply.unwrap_or_else(|e| panic!("{endpoint} {body} on n{i}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_behind_the_trimmed_log_start_from_the_snapshot_and_converge() {
    let (mut cluster, _upstreams, js) = start_with_repo(ENV, 2).await;
    let mut log = js.get_stream("CAIRN_LOG").await.unwrap();

    // n2 stops; the log moves on without it: 200 rewrites of 10 keys.
    let mut n2 = cluster.nodes[2].take().unwrap();
    let status = tokio::task::spawn_blocking(move || n2.terminate(WAIT))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let stopped_at = log.info().await.unwrap().state.last_sequence;
    let mut seq = 0;
    for i in 0..200u64 {
        let (reply, headers) = cluster.clients[(i % 2) as usize]
            .call_node(
                &format!("n{}", i % 2),
                "kv.set",
                json!({"namespace": NS, "key": format!("k{}", i % 10), "value": i}),
                HeaderMap::new(),
            )
            .await;
        reply.unwrap();
        seq = seq.max(seq_of(&headers));
    }

    // The snapshotter takes a snapshot and trims what n2 still needed
    // (once n2's heartbeat is gone: a live node holds the trim back), the
    // writes going on meanwhile (to other keys).
    let taken = write_until_trimmed_past(&cluster, &js, stopped_at).await;
    let trimmed_below = taken["trimmed_below"].as_u64().unwrap();
    assert!(
        taken["position"].as_u64().unwrap() >= trimmed_below - 1,
        "{taken}"
    );
    assert!(!taken["files"].as_array().unwrap().is_empty(), "{taken}");
    // Below the trim, at most one message per subject (each stream's
    // last, for fencing) is left.
    let state = wait_until("the trim to show in the log", WAIT, || async {
        let state = js
            .get_stream("CAIRN_LOG")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .clone();
        let above = state.last_sequence + 1 - trimmed_below;
        if state.messages <= above + state.subjects_count {
            Ok(state)
        } else {
            Err(format!("{state:?}, trimmed below {trimmed_below}"))
        }
    })
    .await;
    assert!(
        state.messages < state.last_sequence,
        "the trim removed messages: {state:?}"
    );

    // n2 starts again: it could not apply a log with a gap; it restores
    // and catches up (else no ready line).
    cluster.start_again(2).await;
    // A node with an empty data directory starts from the snapshot too.
    let n3 = cluster.add_node().await;
    assert_eq!(n3, 3);

    // One more write, then every node's log is the same, event for event.
    let seq = same_logs_after_a_write(&cluster, 4, seq).await;

    // The bucket holds the current snapshot alone: its files and the
    // manifest naming them (the earlier rounds' files deleted).
    wait_until("the bucket to hold one snapshot", WAIT, || async {
        let Some(m) = manifest(&js).await else {
            return Err("no manifest".to_owned());
        };
        let bucket = js.get_object_store("CAIRN_SNAPSHOTS").await.unwrap();
        // A listing whose entries go meanwhile (a round replacing the
        // snapshot) waits for them: bounded, and tried again.
        let Ok(listed) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            futures::TryStreamExt::try_collect::<Vec<_>>(bucket.list().await.unwrap()),
        )
        .await
        else {
            return Err("the listing did not end (replaced meanwhile)".to_owned());
        };
        let mut names: Vec<String> = listed.unwrap().into_iter().map(|i| i.name).collect();
        names.sort();
        let id = m["id"].as_str().unwrap();
        let mut want: Vec<String> = m["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| format!("{id}/{}", f[0].as_str().unwrap()))
            .chain(["manifest".to_owned()])
            .collect();
        want.sort();
        if names == want {
            Ok(())
        } else {
            Err(format!("{names:?} against {want:?}"))
        }
    })
    .await;

    // The same answers: kv values, and package resources (blob files the
    // restored nodes fetched).
    for i in 0..4 {
        for k in 0..10 {
            let got = read_on(
                &cluster,
                i,
                "kv.get",
                json!({"namespace": NS, "key": format!("k{k}")}),
                seq,
            )
            .await;
            assert_eq!(got["value"], json!(190 + k), "k{k} on n{i}");
        }
    }
    let listed = read_on(&cluster, 0, "pkgrev.list", json!({"namespace": NS}), seq).await;
    let names: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!names.is_empty(), "{listed}");
    for name in &names {
        let key = json!({"namespace": NS, "name": name});
        let want = read_on(&cluster, 0, "pkgrev.resources", key.clone(), seq).await;
        assert!(
            want["resources"].as_object().is_some_and(|r| !r.is_empty()),
            "{name}: {want}"
        );
        for i in 1..4 {
            assert_eq!(
                read_on(&cluster, i, "pkgrev.resources", key.clone(), seq).await,
                want,
                "{name} on n{i}"
            );
        }
    }
}

/// The last position of `CAIRN_LOG`.
async fn log_end(js: &jetstream::Context) -> u64 {
    let mut log = js.get_stream("CAIRN_LOG").await.unwrap();
    log.info().await.unwrap().state.last_sequence
}

/// Whether `CAIRN_BLOBS` holds blob `content` (its part 0).
async fn blob_in_stream(js: &jetstream::Context, content: &[u8]) -> bool {
    let digest = cairn_storage::Digest::of(content);
    let stream = js.get_stream("CAIRN_BLOBS").await.unwrap();
    stream
        .get_last_raw_message_by_subject(&format!("cairn.blob.{}.0", hex::encode(digest.0)))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshotter_collects_the_blobs_nothing_needs_and_keeps_the_others() {
    let mut env = ENV.to_vec();
    env.push(("CAIRN_CLUSTER__BLOB_GRACE", "3s"));
    let (cluster, _upstreams, js) = start_with_repo(&env, 1).await;
    // Two drafts, each with a resource of its own: one is deleted (its
    // blob then needed by nothing), one stays.
    let gone = b"kind: ConfigMap\nmetadata:\n  name: gone\n".to_vec();
    let kept = b"kind: ConfigMap\nmetadata:\n  name: kept\n".to_vec();
    for (package, content) in [("gone", &gone), ("kept", &kept)] {
        cluster.clients[1]
            .ok(
                "pkgrev.create",
                json!({"namespace": NS, "repository": "r", "package": package, "workspace": "ws",
                       "resources": {"cm.yaml": String::from_utf8(content.clone()).unwrap()}}),
            )
            .await;
    }
    assert!(blob_in_stream(&js, &gone).await);
    assert!(blob_in_stream(&js, &kept).await);
    cluster.clients[2]
        .ok(
            "pkgrev.delete",
            json!({"namespace": NS, "name": "r.gone.ws"}),
        )
        .await;

    // Snapshots go on as the log moves; once the deleted draft's blob is
    // older than the grace, a round collects it.
    wait_until("the deleted draft's blob to be collected", WAIT, || async {
        if !blob_in_stream(&js, &gone).await {
            return Ok(());
        }
        // A trim moves only with the log: one more snapshot's worth.
        let at = log_end(&js).await;
        write_until_trimmed_past(&cluster, &js, at).await;
        Err("still in CAIRN_BLOBS".to_owned())
    })
    .await;
    // What a view references stays, whatever its age.
    assert!(blob_in_stream(&js, &kept).await);
    let listed = cluster.clients[0]
        .ok("pkgrev.list", json!({"namespace": NS}))
        .await;
    for item in listed["items"].as_array().unwrap() {
        let resources = cluster.clients[0]
            .ok(
                "pkgrev.resources",
                json!({"namespace": NS, "name": item["name"]}),
            )
            .await;
        for (path, text) in resources["resources"].as_object().unwrap() {
            assert!(
                blob_in_stream(&js, text.as_str().unwrap().as_bytes()).await,
                "{} {path}",
                item["name"]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_the_trim_passed_stops_and_restores_when_started_again() {
    use nix::sys::signal::Signal;
    let mut cluster = CairnCluster::start(cairn_cli!(), 3, ENV).await;
    let js = jetstream::new(async_nats::connect(cluster.nats.url(0)).await.unwrap());
    let mut log = js.get_stream("CAIRN_LOG").await.unwrap();
    cluster.clients[0]
        .ok(
            "kv.set",
            json!({"namespace": NS, "key": "first", "value": 0}),
        )
        .await;

    // n2 pauses: its heartbeat lapses, so the trim no longer waits for it.
    cluster.nodes[2].as_ref().unwrap().signal(Signal::SIGSTOP);
    let paused_at = log.info().await.unwrap().state.last_sequence;
    write_until_trimmed_past(&cluster, &js, paused_at).await;

    // It wakes: its applier meets the gap; the node hands over and exits
    // with an error rather than serve a state that no longer moves.
    let mut n2 = cluster.nodes[2].take().unwrap();
    n2.signal(Signal::SIGCONT);
    let status = tokio::task::spawn_blocking(move || n2.wait_exit(WAIT))
        .await
        .unwrap();
    assert!(!status.success(), "{status}");

    // Started again, it restores and holds the others' log.
    cluster.start_again(2).await;
    same_logs_after_a_write(&cluster, 3, 0).await;
}

/// One nats-server (JetStream) and a context on it.
async fn one_server() -> (cairn_tests::NatsServer, jetstream::Context) {
    let server = tokio::task::spawn_blocking(cairn_tests::NatsServer::start)
        .await
        .unwrap();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    (server, js)
}

/// Purges the chunks of object `name` of object store `bucket`, as the
/// snapshotter's replacing or deleting it does.
async fn purge_chunks(js: &jetstream::Context, bucket: &str, name: &str) {
    let nuid = js
        .get_object_store(bucket)
        .await
        .unwrap()
        .info(name)
        .await
        .unwrap()
        .nuid;
    js.get_stream(format!("OBJ_{bucket}"))
        .await
        .unwrap()
        .purge()
        .filter(format!("$O.{bucket}.C.{nuid}"))
        .await
        .unwrap();
}

/// An object whose chunks go while it is read — the manifest a restoring
/// node reads as the snapshotter replaces it, a file of a round the
/// snapshotter deletes — leaves async-nats's reader waiting for ever;
/// `read_object` (what restoring and the snapshotter read objects with)
/// fails after its idle bound instead, and the reader reads the current
/// snapshot again. A whole object it copies byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_that_loses_its_chunks_while_read_fails_instead_of_hanging() {
    use std::time::Duration;
    let (_server, js) = one_server().await;
    let bucket = js
        .create_object_store(jetstream::object_store::Config {
            bucket: "T".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let content: Vec<u8> = (0..600 * 1024u32).map(|i| (i % 251) as u8).collect();
    for name in ["whole", "gone", "gone-too"] {
        bucket.put(name, &mut content.as_slice()).await.unwrap();
    }
    let mut whole = bucket.get("whole").await.unwrap();
    let mut read = Vec::new();
    let copied = snapshot::read_object(&mut whole, &mut read, u64::MAX, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((copied, read == content), (content.len() as u64, true));

    // Its chunks purged after the reader found it.
    let mut lost = Vec::new();
    for name in ["gone", "gone-too"] {
        lost.push(bucket.get(name).await.unwrap());
        purge_chunks(&js, "T", name).await;
    }
    let idle = Duration::from_secs(1);
    let mut sink = Vec::new();
    let failed = cairn_tests::within(
        "the read of an object without its chunks to fail",
        Duration::from_secs(30),
        snapshot::read_object(&mut lost[0], &mut sink, u64::MAX, idle),
    )
    .await;
    assert!(
        matches!(failed, Err(snapshot::ObjectReadError::Stalled(d)) if d == idle),
        "{failed:?}"
    );
    assert!(sink.is_empty());
    // The premise (async-nats's, not cairn's): a plain copy, what restoring
    // did before, does not end. Should a later async-nats end it, this
    // check fails and the bound above is no longer needed.
    let plain = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::copy(&mut lost[1], &mut tokio::io::sink()),
    )
    .await;
    assert!(plain.is_err(), "the plain copy ended: {plain:?}");
}

/// The same hazard through `Snapshots` (a short idle bound in place of
/// the 10 s default): a download whose file lost its chunks fails the
/// restore — which a starting node tries again — leaving the store
/// directory as it was, and a manifest that lost its chunks is read three
/// times, then answered as an error, not waited on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_loses_its_chunks_fails_the_restore_and_the_manifest_read() {
    use std::time::{Duration, Instant};
    let (_server, js) = one_server().await;
    let idle = Duration::from_millis(500);
    let snapshots = snapshot::Snapshots::open(&js, 1)
        .await
        .unwrap()
        .with_read_idle(idle);
    let source = cairn_tests::TempStore::open();
    let work = TestDir::new();
    let (manifest, _) = snapshots
        .take(&source.store, &work.join("work"), "n0")
        .await
        .unwrap();
    snapshots.publish(&manifest).await.unwrap();
    assert_eq!(
        snapshots.latest().await.unwrap().map(|m| m.id),
        Some(manifest.id.clone())
    );

    let (file, _) = manifest
        .files
        .iter()
        .find(|(_, size)| *size > 0)
        .expect("a file with content");
    purge_chunks(
        &js,
        snapshot::SNAPSHOT_BUCKET,
        &format!("{}/{file}", manifest.id),
    )
    .await;
    let store_dir = work.join("store");
    let failed = cairn_tests::within(
        "the restore of a snapshot without its file's chunks to fail",
        Duration::from_secs(30),
        snapshot::restore(&snapshots, &manifest, &store_dir),
    )
    .await
    .unwrap_err();
    assert!(
        failed.starts_with(&format!(
            "downloading snapshot {} file {file}: no data for 500ms",
            manifest.id
        )) && failed.ends_with("(replaced meanwhile? retry)"),
        "{failed}"
    );
    assert!(!store_dir.exists(), "the store directory was not touched");

    purge_chunks(&js, snapshot::SNAPSHOT_BUCKET, snapshot::MANIFEST_OBJECT).await;
    let started = Instant::now();
    let failed = cairn_tests::within(
        "the read of a manifest without its chunks to fail",
        Duration::from_secs(30),
        snapshots.latest(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        failed,
        format!(
            "reading {}/{}: no data for 500ms",
            snapshot::SNAPSHOT_BUCKET,
            snapshot::MANIFEST_OBJECT
        )
    );
    // Three reads, each given up after the idle bound.
    assert!(started.elapsed() >= 3 * idle, "{:?}", started.elapsed());
}
