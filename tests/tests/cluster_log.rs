//! The cluster's replicated log on a real three-server NATS cluster
//! (JetStream R3) and real RocksDB stores: every node's log and views are
//! the same byte for byte, blobs travel with the events that reference
//! them, a node that joins late catches up from the stream, and a deposed
//! owner's write is refused by JetStream (fencing) and leaves no trace.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use cairn_actors::cluster::{log, start_applier, Applied, Blobs, ClusterAppend};
use cairn_events::{
    envelope::{event, Metadata},
    v1::{event::Payload, PackageRevision, PackageRevisionAdded},
    StreamId,
};
use cairn_storage::{AsyncAppend as _, BlobStore as _, EventLog as _, Store};
use cairn_tests::{events, wait_until, NatsCluster, TempStore, WAIT};

/// One node's share of the cluster log: its store, applier and appender.
struct Member {
    store: TempStore,
    applied: Applied,
    appender: ClusterAppend,
    applier: tokio::task::JoinHandle<()>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.applier.abort();
    }
}

async fn member(name: &str, url: &str) -> Member {
    member_on(name, async_nats::connect(url).await.unwrap()).await
}

/// A member on the connection `client`.
async fn member_on(name: &str, client: async_nats::Client) -> Member {
    let js = jetstream::new(client.clone());
    let max_payload = client.server_info().max_payload;
    let blobs = wait_until("the blob stream", WAIT, || {
        let js = js.clone();
        async move { Blobs::start(js, max_payload, 3).await }
    })
    .await;
    wait_until("the log stream", WAIT, || {
        let js = js.clone();
        async move { log::ensure_stream(&js, 3).await.map(|_| ()) }
    })
    .await;
    let store = TempStore::open();
    let (applied, applier) = start_applier(js.clone(), store.store.clone(), blobs.clone())
        .await
        .unwrap();
    let appender = ClusterAppend::new(
        name,
        js,
        store.store.clone(),
        blobs,
        applied.clone(),
        max_payload,
        Duration::from_secs(30),
    );
    Member {
        store,
        applied,
        appender,
        applier,
    }
}

fn revision_added(repo: &str, digest: &str) -> cairn_events::v1::Event {
    event(Payload::PackageRevisionAdded(PackageRevisionAdded {
        revision: Some(PackageRevision {
            name: format!("{repo}.pkg.v1"),
            package: "pkg".into(),
            workspace: "v1".into(),
            revision: 1,
            lifecycle: "Published".into(),
            resources: [("Kptfile".to_owned(), digest.to_owned())]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
    }))
}

/// Every column family but node-local bookkeeping (the publish cursor).
fn dump(store: &Store) -> cairn_storage::log::StateDump {
    let mut dump = store.state_dump().unwrap();
    for (family, rows) in dump.iter_mut() {
        if family == "meta" {
            rows.retain(|(key, _)| key.as_slice() != b"publish_cursor");
        }
    }
    dump
}

/// A three-server NATS cluster, ready.
async fn ready_cluster() -> NatsCluster {
    let cluster = tokio::task::spawn_blocking(NatsCluster::start)
        .await
        .unwrap();
    cluster.wait_ready(WAIT).unwrap();
    cluster
}

/// A ready cluster with members `node-a` (on server 0) and `node-b` (on
/// server 1).
async fn two_members() -> (NatsCluster, Member, Member) {
    let cluster = ready_cluster().await;
    let a = member("node-a", &cluster.url(0)).await;
    let b = member("node-b", &cluster.url(1)).await;
    (cluster, a, b)
}

/// `seq:stream@principal` of each event of `member`'s log.
fn principals(member: &Member) -> Vec<String> {
    member
        .store
        .store
        .read_all(1, 100)
        .unwrap()
        .into_iter()
        .map(|e| format!("{}:{}@{}", e.seq, e.stream, e.principal))
        .collect()
}

/// Appends `event` to `stream` at `version` through `member`'s appender,
/// as alice: one append, one commit.
async fn append_one(
    member: &Member,
    stream: &StreamId,
    version: u64,
    event: cairn_events::v1::Event,
) -> Result<cairn_storage::Appended, cairn_storage::StorageError> {
    member
        .appender
        .append_chunks(
            stream,
            version,
            vec![vec![event]],
            Metadata::command("alice"),
        )
        .await
        .pop()
        .expect("one append, one outcome")
}

async fn caught_up(member: &Member, position: u64) {
    member
        .applied
        .wait_for(position, WAIT)
        .await
        .unwrap_or_else(|e| panic!("position {position} not applied: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hold_the_same_log_and_a_deposed_owner_is_fenced() {
    let (cluster, a, b) = two_members().await;
    let stream = StreamId::repository("ns", "r").unwrap();
    let other = StreamId::repository("ns", "s").unwrap();

    // A owns both streams and writes: a registration, a revision with a
    // blob only A's store holds, and a commit of another stream.
    a.appender.take(&stream).await.unwrap();
    a.appender.take(&other).await.unwrap();
    let content = b"apiVersion: kpt.dev/v1\nkind: Kptfile\n".to_vec();
    let pin = a.store.store.put(&content).unwrap();
    let digest = pin.digest();
    let metadata = Metadata::command("alice");
    let appended = a
        .appender
        .append_chunks(
            &stream,
            0,
            vec![
                vec![events::registered("ns", "r")],
                vec![revision_added("r", &digest.to_string())],
            ],
            metadata.clone(),
        )
        .await;
    let appended: Vec<_> = appended.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        appended
            .iter()
            .map(|a| (a.first_seq(), a.stream_version()))
            .collect::<Vec<_>>(),
        [(1, 1), (2, 2)],
        "seqs from the order, versions from the owner"
    );
    drop(pin);
    let appended = a
        .appender
        .append_chunks(
            &other,
            0,
            vec![vec![events::registered("ns", "s")]],
            metadata.clone(),
        )
        .await
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!((appended.first_seq(), appended.stream_version()), (3, 1));
    // Read-your-writes: answered once applied here.
    assert_eq!(a.store.store.last_seq().unwrap(), 3);
    let position = a.applied.position();

    // B applies the same log, blob included, byte for byte.
    caught_up(&b, position).await;
    assert_eq!(b.store.store.get(&digest).unwrap(), Some(content.clone()));
    assert_eq!(dump(&b.store.store), dump(&a.store.store));

    // B takes the stream over (A paused past its lease, say) and writes.
    b.appender.take(&stream).await.unwrap();
    let taken = b
        .appender
        .append_chunks(
            &stream,
            2,
            vec![vec![events::spec_changed("ns", "r", "release")]],
            Metadata::command("bob"),
        )
        .await
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!((taken.first_seq(), taken.stream_version()), (4, 3));

    // A wakes up and writes on its old lease: JetStream refuses it, A steps
    // down and its caller learns why.
    assert!(a.appender.owns(&stream));
    let refused = a
        .appender
        .append_chunks(
            &stream,
            2,
            vec![vec![events::closed("stale")]],
            Metadata::command("alice"),
        )
        .await
        .pop()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "stream repo/ns/r was taken over by another node: this node's write was refused by the log (fenced) and it stepped down; retry"
    );
    assert!(!a.appender.owns(&stream));
    // A's other stream is still A's.
    let still = a
        .appender
        .append_chunks(&other, 1, vec![vec![events::closed("done")]], metadata)
        .await
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!((still.first_seq(), still.stream_version()), (5, 2));

    let position = a.applied.position().max(b.applied.position());
    caught_up(&a, position).await;
    caught_up(&b, position).await;
    assert_eq!(a.store.store.last_seq().unwrap(), 5);
    assert_eq!(dump(&a.store.store), dump(&b.store.store));
    assert_eq!(
        principals(&a),
        [
            "1:repo/ns/r@alice",
            "2:repo/ns/r@alice",
            "3:repo/ns/s@alice",
            "4:repo/ns/r@bob",
            "5:repo/ns/s@alice",
        ],
        "nothing of the deposed owner's write after the takeover"
    );

    // A node that joins late, through the third server, catches up from
    // the stream: the same log, views and blobs.
    let c = member("node-c", &cluster.url(2)).await;
    caught_up(&c, position).await;
    assert_eq!(dump(&c.store.store), dump(&a.store.store));
    assert_eq!(c.store.store.get(&digest).unwrap(), Some(content));
}

/// A stream the appender gave up (fenced) is given up by its take: once
/// the stream is released and taken again, a notice of the earlier take
/// read late is stale, and the stream's new take writes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_of_a_take_given_up_is_stale_once_the_stream_is_taken_again() {
    let (_cluster, a, b) = two_members().await;
    let notices = Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = notices.clone();
    a.appender.on_abandon(Box::new(move |stream, take| {
        noted.lock().unwrap().push((stream.to_string(), take));
    }));
    let s = StreamId::repository("ns", "s").unwrap();
    a.appender.take(&s).await.unwrap();
    append_one(&a, &s, 0, events::registered("ns", "s"))
        .await
        .unwrap();
    // B takes the stream over; A's next write is fenced and given up.
    b.appender.take(&s).await.unwrap();
    append_one(&a, &s, 1, events::closed("stale"))
        .await
        .unwrap_err();
    let (stream, given_up) = {
        let notices = notices.lock().unwrap();
        assert_eq!(notices.len(), 1, "{notices:?}");
        notices[0].clone()
    };
    assert_eq!(stream, "repo/ns/s");
    assert!(!a.appender.owns(&s));
    assert!(
        a.appender.is_current_take(&s, given_up),
        "not released yet: the notice is current"
    );

    // Released (the ownership loop stepped down for another reason) and
    // taken again before the notice was read.
    a.appender.release(&s);
    a.appender.take(&s).await.unwrap();
    assert!(!a.appender.is_current_take(&s, given_up), "stale");
    let next = append_one(&a, &s, 1, events::spec_changed("ns", "s", "release"))
        .await
        .unwrap();
    assert_eq!(next.stream_version(), 2);
    assert_eq!(notices.lock().unwrap().len(), 1);
}

/// Fencing is per subject: an event of stream `s` published on stream
/// `r`'s subject would pass `r`'s fencing, not `s`'s (a deposed owner of
/// `s`, or any client of the log stream). Every node refuses it whole, and
/// `s`'s owner goes on writing as if it had never been published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_on_another_streams_subject_is_refused_by_every_node() {
    use cairn_events::{envelope, v1::Envelope};
    use cairn_storage::Sequenced;
    let (cluster, a, b) = two_members().await;
    let r = StreamId::repository("ns", "r").unwrap();
    let s = StreamId::repository("ns", "s").unwrap();
    a.appender.take(&s).await.unwrap();
    let first = append_one(&a, &s, 0, events::registered("ns", "s"))
        .await
        .unwrap();
    assert_eq!((first.first_seq(), first.stream_version()), (1, 1));

    // The event that would continue `s`, on `r`'s subject.
    let stray = Envelope {
        schema_version: envelope::SCHEMA_VERSION,
        event_id: envelope::new_id(),
        stream: s.to_string(),
        stream_version: 2,
        recorded_at: Some(pbjson_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        }),
        principal: "mallory".into(),
        event: Some(events::closed("stray")),
        ..Default::default()
    };
    let js = jetstream::new(async_nats::connect(cluster.url(2)).await.unwrap());
    let stray_at = js
        .publish(log::subject_of(&r), log::encode_commit(&[stray]))
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let why = format!(
        "an event of stream \"repo/ns/s\" was published on {}, which is not that stream's subject",
        log::subject_of(&r)
    );
    for member in [&a, &b] {
        assert_eq!(
            member.applied.wait_for(stray_at, WAIT).await.unwrap(),
            Some(Sequenced::Refused(why.clone()))
        );
        assert_eq!(member.store.store.last_seq().unwrap(), 1);
        assert_eq!(member.store.store.replication_position().unwrap(), stray_at);
    }

    // The owner's next event is version 2, at seq 2.
    let next = append_one(&a, &s, 1, events::spec_changed("ns", "s", "release"))
        .await
        .unwrap();
    assert_eq!((next.first_seq(), next.stream_version()), (2, 2));
    caught_up(&b, a.applied.position()).await;
    assert_eq!(dump(&b.store.store), dump(&a.store.store));
    assert_eq!(principals(&b), ["1:repo/ns/s@alice", "2:repo/ns/s@alice"]);
}

/// A holder that records what it is given.
#[derive(Debug, Default)]
struct Recorder {
    streams: Vec<StreamId>,
    owned: std::sync::Mutex<Vec<String>>,
}

impl cairn_actors::cluster::Holder for Recorder {
    fn streams(&self) -> futures::future::BoxFuture<'static, Result<Vec<StreamId>, String>> {
        let streams = self.streams.clone();
        Box::pin(async move { Ok(streams) })
    }
    fn own(&self, stream: StreamId) -> futures::future::BoxFuture<'static, Result<(), String>> {
        self.owned.lock().unwrap().push(format!("+{stream}"));
        Box::pin(async { Ok(()) })
    }
    fn disown(&self, stream: StreamId) -> futures::future::BoxFuture<'static, ()> {
        self.owned.lock().unwrap().push(format!("-{stream}"));
        Box::pin(async {})
    }
}

/// Member `node`'s ownership settings: a 3 s lease renewed every second,
/// buckets with three replicas.
fn ownership_config(node: &str) -> cairn_actors::cluster::OwnershipConfig {
    cairn_actors::cluster::OwnershipConfig {
        node: node.to_owned(),
        lease: Duration::from_secs(3),
        renew_every: Duration::from_secs(1),
        replicas: 3,
    }
}

/// Starts the ownership loop of `member` (node `node`) with `holder`, on a
/// connection of its own to `url`; answers it and that connection.
async fn start_ownership(
    url: &str,
    node: &str,
    member: &Member,
    holder: Arc<dyn cairn_actors::cluster::Holder>,
) -> (cairn_actors::cluster::Ownership, jetstream::Context) {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let ownership = wait_until("the ownership buckets", WAIT, || {
        let (js, appender, holder) = (js.clone(), member.appender.clone(), holder.clone());
        async move {
            cairn_actors::cluster::Ownership::start(js, ownership_config(node), appender, holder)
                .await
        }
    })
    .await;
    (ownership, js)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_each_other_split_the_streams_and_hand_them_over_when_leaving() {
    let cluster = ready_cluster().await;
    let streams: Vec<StreamId> = (0..12)
        .map(|i| StreamId::repository("ns", &format!("r{i}")).unwrap())
        .collect();
    let mut members = Vec::new();
    for (i, name) in ["m1", "m2"].into_iter().enumerate() {
        let m = member(name, &cluster.url(i)).await;
        let holder = Arc::new(Recorder {
            streams: streams.clone(),
            ..Default::default()
        });
        let (ownership, _) = start_ownership(&cluster.url(i), name, &m, holder.clone()).await;
        members.push((ownership, holder, m));
    }
    // Both see both, and the twelve streams end up split between them.
    wait_until("both members to hold a share", WAIT, || async {
        let live: Vec<Vec<String>> = members.iter().map(|m| m.0.view().live()).collect();
        let held: Vec<usize> = members.iter().map(|m| m.0.view().held().len()).collect();
        if live.iter().all(|l| l == &["m1", "m2"])
            && held.iter().sum::<usize>() == 12
            && held.iter().all(|&h| h > 0)
        {
            Ok(())
        } else {
            Err(format!("live {live:?}, held {held:?}"))
        }
    })
    .await;
    // m1 leaves: m2 takes everything without waiting for leases to expire.
    let left_at = std::time::Instant::now();
    members[0].0.leave().await;
    assert!(members[0].0.view().held().is_empty());
    wait_until("m2 to hold all twelve", WAIT, || async {
        let held = members[1].0.view().held().len();
        if held == 12 {
            Ok(())
        } else {
            Err(format!("{held} held"))
        }
    })
    .await;
    assert!(
        left_at.elapsed() < Duration::from_secs(3),
        "took {:?}: a lease expiry, not a handover",
        left_at.elapsed()
    );
    let m1 = members[0].1.owned.lock().unwrap().clone();
    assert_eq!(
        m1.iter().filter(|e| e.starts_with('+')).count(),
        m1.iter().filter(|e| e.starts_with('-')).count(),
        "m1 gave back everything it took: {m1:?}"
    );
}

/// A holder whose `own` waits at a gate, recording what completes.
#[derive(Debug)]
struct Gated {
    streams: Vec<StreamId>,
    /// `+stream` once an `own` completed, `-stream` when `disown` is called.
    record: Arc<std::sync::Mutex<Vec<String>>>,
    /// Set when `own` is called.
    own_called: Arc<std::sync::atomic::AtomicBool>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl cairn_actors::cluster::Holder for Gated {
    fn streams(&self) -> futures::future::BoxFuture<'static, Result<Vec<StreamId>, String>> {
        let streams = self.streams.clone();
        Box::pin(async move { Ok(streams) })
    }
    fn own(&self, stream: StreamId) -> futures::future::BoxFuture<'static, Result<(), String>> {
        self.own_called
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (gate, record) = (self.gate.clone(), self.record.clone());
        Box::pin(async move {
            let _permit = gate.acquire().await.unwrap();
            record.lock().unwrap().push(format!("+{stream}"));
            Ok(())
        })
    }
    fn disown(&self, stream: StreamId) -> futures::future::BoxFuture<'static, ()> {
        self.record.lock().unwrap().push(format!("-{stream}"));
        Box::pin(async {})
    }
}

/// A node that steps down from a stream while it is still taking it (here:
/// it leaves while its writer is being opened) releases the stream only
/// once the take ended: the writer the take opens is closed again, and the
/// node has left only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_given_up_while_being_taken_is_released_after_the_take() {
    let cluster = ready_cluster().await;
    let stream = StreamId::repository("ns", "taken").unwrap();
    let m = member("m1", &cluster.url(0)).await;
    let holder = Arc::new(Gated {
        streams: vec![stream.clone()],
        record: Arc::default(),
        own_called: Arc::default(),
        gate: Arc::new(tokio::sync::Semaphore::new(0)),
    });
    let (ownership, _) = start_ownership(&cluster.url(0), "m1", &m, holder.clone()).await;
    // The only member takes the stream: fenced, and its writer opening.
    wait_until("the stream's writer to be opened", WAIT, || async {
        if holder.own_called.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;
    assert!(
        !ownership.view().holds(&stream),
        "not ready before it opened"
    );
    // It leaves meanwhile.
    let leaving = {
        let ownership = ownership.clone();
        tokio::spawn(async move { ownership.leave().await })
    };
    wait_until("the stream to be given up", WAIT, || async {
        let view = ownership.view();
        if view.releasing(&stream) || view.held().is_empty() {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;
    assert_eq!(
        *holder.record.lock().unwrap(),
        Vec::<String>::new(),
        "nothing released while the take runs"
    );
    holder.gate.add_permits(1);
    tokio::time::timeout(WAIT, leaving).await.unwrap().unwrap();
    // Opened, then closed — never closed first and left open.
    assert_eq!(
        *holder.record.lock().unwrap(),
        vec![format!("+{stream}"), format!("-{stream}")]
    );
    assert!(ownership.view().held().is_empty());
    assert!(!m.appender.owns(&stream));
}

/// A bucket watch that cannot be made is tried again until it can. Here
/// the members' bucket is deleted: the watch's consumer goes with it, the
/// watch ends (a missed heartbeat), and making it again fails while the
/// bucket is gone. Once the bucket is back, the node follows the members
/// again and sees its own next heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_watch_that_cannot_be_made_is_made_again_once_it_can() {
    use cairn_actors::cluster::{ownership, Ownership};
    let cluster = ready_cluster().await;
    let m = member("m1", &cluster.url(0)).await;
    let (ownership, js) =
        start_ownership(&cluster.url(0), "m1", &m, Arc::new(Recorder::default())).await;
    let seen = |ownership: &Ownership| -> Result<(), String> {
        let members = ownership.view().members();
        if members.contains_key("m1") {
            Ok(())
        } else {
            Err(format!("members {:?}", members.keys().collect::<Vec<_>>()))
        }
    };
    wait_until("m1 to see its own heartbeat", WAIT, || async {
        seen(&ownership)
    })
    .await;
    assert_eq!(ownership.view().watch_failures(), 0);

    js.delete_stream(format!("KV_{}", ownership::NODES_BUCKET))
        .await
        .unwrap();
    wait_until(
        "an attempt at watching the bucket to fail",
        WAIT,
        || async {
            match ownership.view().watch_failures() {
                0 => Err("none yet".to_owned()),
                _ => Ok(()),
            }
        },
    )
    .await;
    // No heartbeat of it is seen meanwhile (none can be put).
    wait_until("m1's last heartbeat to be a lease old", WAIT, || async {
        match seen(&ownership) {
            Ok(()) => Err("still seen".to_owned()),
            Err(_) => Ok(()),
        }
    })
    .await;

    ownership::bucket(&js, ownership::NODES_BUCKET, &ownership_config("m1"))
        .await
        .unwrap();
    wait_until("m1 to see its heartbeat again", WAIT, || async {
        seen(&ownership)
    })
    .await;
}

/// A bucket call that is never answered (here the members' bucket: its
/// stream deleted, and a subscriber that never acks in its place) holds
/// the lease renewals back by one bound at most, not by the client's
/// timeout: the node keeps its lease, never giving its stream up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_never_answered_does_not_cost_the_node_its_leases() {
    use cairn_actors::cluster::ownership;
    use futures::StreamExt as _;
    let cluster = ready_cluster().await;
    let s = StreamId::repository("ns", "s").unwrap();
    let m = member("m1", &cluster.url(0)).await;
    let holder = Arc::new(Recorder {
        streams: vec![s.clone()],
        ..Default::default()
    });
    let (ownership, js) = start_ownership(&cluster.url(0), "m1", &m, holder.clone()).await;
    let held =
        |ownership: &cairn_actors::cluster::Ownership| ownership.view().held().get(&s).copied();
    wait_until("m1 to hold the stream", WAIT, || async {
        match held(&ownership) {
            Some(h) if h.ready => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Heartbeats now wait for an ack that never comes.
    let silent = async_nats::connect(cluster.url(1)).await.unwrap();
    let mut puts = silent
        .subscribe(format!("$KV.{}.>", ownership::NODES_BUCKET))
        .await
        .unwrap();
    silent.flush().await.unwrap();
    js.delete_stream(format!("KV_{}", ownership::NODES_BUCKET))
        .await
        .unwrap();
    for _ in 0..2 {
        tokio::time::timeout(WAIT, puts.next())
            .await
            .expect("a heartbeat put")
            .unwrap();
    }
    // Heartbeats unanswered, one after another: the lease is renewed
    // meanwhile, three times over (more than a lease's worth), and never
    // lost or given up.
    let revisions = std::sync::Mutex::new(vec![held(&ownership).expect("held").revision]);
    wait_until("three more renewals of the lease", WAIT, || async {
        let h = held(&ownership).expect("the stream is held throughout");
        assert!(h.ready && !h.lost && !h.releasing, "{h:?}");
        let mut revisions = revisions.lock().unwrap();
        if revisions.last() != Some(&h.revision) {
            revisions.push(h.revision);
        }
        match revisions.len() {
            4.. => Ok(()),
            _ => Err(format!("revisions {revisions:?}")),
        }
    })
    .await;
    assert_eq!(*holder.owned.lock().unwrap(), ["+repo/ns/s"]);
    // The heartbeats were still hanging.
    tokio::time::timeout(WAIT, puts.next())
        .await
        .expect("a heartbeat put")
        .unwrap();
}

/// A data directory a single node wrote has sequence numbers of its own:
/// a node refuses to join a cluster with it (applying the cluster's order
/// on top would fork both logs), naming the directory, and writes nothing.
#[tokio::test]
async fn a_single_nodes_data_directory_does_not_join_a_cluster() {
    use cairn_storage::{ExpectedVersion, StoreConfig};
    let server = cairn_tests::NatsServer::start();
    let dir = cairn_tests::TestDir::new();
    {
        let store = Store::open(
            StoreConfig::new(dir.join("store")),
            cairn_storage::views::default_views(),
        )
        .unwrap();
        store
            .append(
                &StreamId::repository("ns", "r").unwrap(),
                ExpectedVersion::NoStream,
                vec![events::registered("ns", "r")],
                Metadata::command("alice"),
            )
            .unwrap();
    }
    let data = dir.path().to_str().unwrap().to_owned();
    let url = server.url();
    let out = cairn_tests::cairn_cli!()
        .run_env(
            ["node", "--data-dir", &data],
            &[
                ("CAIRN_NATS__URLS", url.as_str()),
                ("CAIRN_CLUSTER__ENABLED", "true"),
                ("CAIRN_CLUSTER__NODE_ID", "n1"),
                ("CAIRN_CLUSTER__STREAM_REPLICAS", "1"),
            ],
            &[],
        )
        .await;
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!(
            "cluster: the data directory {data} holds the log of a single node (1 events); a cluster node starts from an empty data directory, or one of the same cluster"
        )),
        "{}",
        out.stderr
    );
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client);
    assert!(
        js.get_stream(log::LOG_STREAM).await.is_err(),
        "nothing created in JetStream"
    );
}

/// A replica whose connection drops messages loses stretches of the log
/// on the way: its client's subscription buffer holds 128 messages, the
/// applier's pull brings all 400 commits, and async-nats drops what does
/// not fit while the applier fetches a batch's blobs (a slow consumer; on
/// one runtime thread the connection reads a whole burst before the
/// applier drains any). The applier sees the consumer's numbers skip, or
/// (the tail of a pull lost) nothing more arrive, ends its run, reads again
/// from the position it applied, and ends with the owner's log byte for
/// byte: no position skipped, none applied twice. Without the numbering
/// check a lost message is a gap in the positions, which the applier takes
/// for a trimmed log: it stops (seen: "the cluster's log was trimmed past
/// this node: it read position 269, the log goes on at 371"), and this
/// replica never catches up.
#[tokio::test(flavor = "current_thread")]
async fn messages_the_connection_drops_are_read_again_and_no_position_is_skipped() {
    let cluster = ready_cluster().await;
    let a = member("node-a", &cluster.url(0)).await;
    let stream = StreamId::repository("ns", "r").unwrap();
    a.appender.take(&stream).await.unwrap();
    // Each revision references a blob only A's store holds: the replica's
    // applier fetches it before applying (a round trip), and meanwhile the
    // rest of its pull arrives, more than its buffer takes.
    let commits = 400;
    let mut pins = Vec::new();
    let mut chunks = vec![vec![events::registered("ns", "r")]];
    for i in 1..commits {
        let pin = a
            .store
            .store
            .put(format!("apiVersion: kpt.dev/v1\nkind: Kptfile\n# {i}\n").as_bytes())
            .unwrap();
        chunks.push(vec![event(Payload::PackageRevisionAdded(
            PackageRevisionAdded {
                revision: Some(PackageRevision {
                    name: format!("r.pkg.w{i}"),
                    package: "pkg".into(),
                    workspace: format!("w{i}"),
                    revision: 0,
                    lifecycle: "Draft".into(),
                    resources: [("Kptfile".to_owned(), pin.digest().to_string())]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
            },
        ))]);
        pins.push(pin);
    }
    // One append each: one message each on the log.
    for (version, chunk) in chunks.into_iter().enumerate() {
        for appended in a
            .appender
            .append_chunks(
                &stream,
                version as u64,
                vec![chunk],
                Metadata::command("alice"),
            )
            .await
        {
            appended.unwrap();
        }
    }
    drop(pins);
    assert_eq!(a.store.store.last_seq().unwrap(), commits);
    let position = a.applied.position();

    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = dropped.clone();
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(128)
        .event_callback(move |event| {
            let counted = counted.clone();
            async move {
                if matches!(event, async_nats::Event::SlowConsumer(_)) {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
        .connect(cluster.url(1))
        .await
        .unwrap();
    let b = member_on("node-b", client).await;
    caught_up(&b, position).await;
    assert!(
        dropped.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the replica's connection dropped no message (its one busy subscription is the applier's consumer): the test proved nothing"
    );
    assert_eq!(b.store.store.last_seq().unwrap(), commits);
    assert_eq!(dump(&b.store.store), dump(&a.store.store));
}
