//! The Publisher against a real nats-server: every event reaches the
//! `CAIRN_EVENTS` JetStream stream exactly once, on its subject, with
//! `Nats-Msg-Id` = event id, in log order (stream position n holds
//! `Cairn-Seq` n) — also when nats-server is stopped and restarted in the
//! middle of a burst, and when the node (`cairn node`, a child process) is
//! SIGKILLed during such an outage and started again.

use std::{collections::HashSet, path::Path, time::Duration};

use actix::Actor;
use cairn_actors::publisher::{Flush, GetStatus, Publisher, PublisherConfig, Stop};
use cairn_events::{envelope, envelope::Metadata, v1::Envelope, StreamId};
use cairn_storage::{
    keys::meta, views::default_views, EventLog, ExpectedVersion, Store, StoreConfig,
};
use cairn_tests::{
    cairn_cli, events, jetstream::cairn_seqs, wait_until, within, ChildNode, NatsServer, TempStore,
    TestDir, WAIT,
};
use futures::StreamExt;

async fn connect(url: &str) -> async_nats::Client {
    within(
        &format!("a connection to {url}"),
        WAIT,
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url),
    )
    .await
    .unwrap()
}

/// Reads the whole `CAIRN_EVENTS` stream: (subject, Nats-Msg-Id, envelope).
async fn stored_messages(client: &async_nats::Client) -> Vec<(String, String, Envelope)> {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream("CAIRN_EVENTS").await.unwrap();
    let count = stream.info().await.unwrap().state.messages;
    let mut out = Vec::new();
    for seq in 1..=count {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let id = msg.headers.get("Nats-Msg-Id").unwrap().to_string();
        out.push((
            msg.subject.to_string(),
            id,
            envelope::decode(&msg.payload).unwrap(),
        ));
    }
    out
}

fn append_burst(store: &Store, appends: usize, per_append: usize) -> Vec<Envelope> {
    let mut all = Vec::new();
    for i in 0..appends {
        let repo = format!("repo-{}", i % 3);
        let stream = StreamId::repository("team-a", &repo).unwrap();
        let batch = (0..per_append)
            .map(|k| events::closed(&format!("{i}/{k}")))
            .collect();
        all.extend(
            store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    batch,
                    Metadata::command("tester"),
                )
                .unwrap()
                .envelopes,
        );
    }
    all
}

#[actix_rt::test]
async fn every_event_reaches_jetstream_once_on_its_subject() {
    let nats = NatsServer::start();
    let ts = TempStore::open();
    let store = ts.store.clone();
    let registered = store
        .append(
            &StreamId::repository("team-a", "blueprints").unwrap(),
            ExpectedVersion::NoStream,
            vec![events::registered("team-a", "blueprints")],
            Metadata::command("alice"),
        )
        .unwrap()
        .envelopes;
    let mut appended = registered.clone();
    appended.extend(append_burst(&store, 60, 5));
    // A name that is no subject token is encoded, never passed through.
    appended.extend(
        store
            .append(
                &StreamId::repository("team-a", "odd.name").unwrap(),
                ExpectedVersion::Any,
                vec![events::closed("x")],
                Metadata::default(),
            )
            .unwrap()
            .envelopes,
    );

    let client = connect(&nats.url()).await;
    let publisher = Publisher::new(store.clone(), client.clone(), PublisherConfig::default())
        .unwrap()
        .start();
    let cursor = publisher
        .send(Flush {
            timeout: Duration::from_secs(30),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cursor, appended.len() as u64);
    let status = publisher.send(GetStatus).await.unwrap();
    assert_eq!((status.cursor, status.last_seq), (cursor, cursor));
    publisher.send(Stop).await.unwrap();
    assert_eq!(
        store.meta_u64(meta::PUBLISH_CURSOR).unwrap(),
        Some(cursor),
        "cursor persisted at stop"
    );

    let stored = stored_messages(&client).await;
    assert_eq!(stored.len(), appended.len());
    for ((subject, id, env), want) in stored.iter().zip(&appended) {
        assert_eq!(env, want);
        assert_eq!(id, &want.event_id);
        let repo = StreamId::new(want.stream.clone()).unwrap();
        let (_, name) = repo.as_repository().unwrap();
        let token = if name == "odd.name" {
            "~6f64642e6e616d65"
        } else {
            name
        };
        let kind = envelope::kind(want).unwrap().subject_suffix();
        assert_eq!(subject, &format!("cairn.events.team-a.{token}.{kind}"));
    }

    // A second publisher resumes from the persisted cursor and publishes
    // only what is new.
    let more = append_burst(&store, 2, 2);
    let publisher = Publisher::new(store.clone(), client.clone(), PublisherConfig::default())
        .unwrap()
        .start();
    let cursor = publisher
        .send(Flush {
            timeout: Duration::from_secs(30),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cursor, (appended.len() + more.len()) as u64);
    let stored = stored_messages(&client).await;
    assert_eq!(stored.len(), appended.len() + more.len());
    publisher.send(Stop).await.unwrap();
}

/// The published messages are the log's rows, byte for byte — what the
/// Publisher published when it encoded each envelope again — with the
/// same subject and headers, whether the Publisher read an event back
/// from RocksDB (a backlog committed before it started) or took it from
/// the rows the store keeps in memory (events committed while it runs,
/// which it never reads back).
#[actix_rt::test]
async fn published_payloads_are_the_stored_rows_whether_read_back_or_kept_in_memory() {
    let nats = NatsServer::start();
    let ts = TempStore::open();
    let store = ts.store.clone();
    let traced = Metadata {
        trace: Some(cairn_events::v1::TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: "vendor=x".into(),
        }),
        ..Metadata::command("alice")
    };
    let backlog_stream = StreamId::repository("team-a", "backlog").unwrap();
    let mut appended = store
        .append(
            &backlog_stream,
            ExpectedVersion::NoStream,
            vec![events::registered("team-a", "backlog")],
            traced.clone(),
        )
        .unwrap()
        .envelopes;
    appended.extend(append_burst(&store, 10, 3));
    let backlog = appended.len();

    let client = connect(&nats.url()).await;
    let publisher = Publisher::new(store.clone(), client.clone(), PublisherConfig::default())
        .unwrap()
        .start();
    let flush = Flush {
        timeout: Duration::from_secs(30),
    };
    assert_eq!(
        publisher.send(flush).await.unwrap().unwrap(),
        backlog as u64
    );
    assert_eq!(
        store.recent_log_stats().served_events,
        0,
        "the backlog was committed before the publisher started: read back"
    );
    let live_stream = StreamId::new("test/live").unwrap();
    for i in 0..20 {
        let appended_now = store
            .append(
                &live_stream,
                ExpectedVersion::Any,
                vec![events::closed(&format!("live {i}"))],
                traced.clone(),
            )
            .unwrap()
            .envelopes;
        appended.extend(appended_now);
    }
    appended.extend(append_burst(&store, 5, 4));
    let flush = Flush {
        timeout: Duration::from_secs(30),
    };
    assert_eq!(
        publisher.send(flush).await.unwrap().unwrap(),
        appended.len() as u64
    );
    assert_eq!(
        store.recent_log_stats().served_events,
        (appended.len() - backlog) as u64,
        "every event committed while the publisher ran came from memory, once"
    );
    publisher.send(Stop).await.unwrap();

    let rows = store.read_log_events(1, usize::MAX).unwrap();
    assert_eq!(rows.len(), appended.len());
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream("CAIRN_EVENTS").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        appended.len() as u64
    );
    for (position, (want, row)) in (1u64..).zip(appended.iter().zip(&rows)) {
        let msg = stream.get_raw_message(position).await.unwrap();
        let seq = want.seq;
        assert_eq!(seq, position);
        assert_eq!(
            &msg.payload[..],
            &envelope::encode(want)[..],
            "seq {seq}: the payload is the envelope's encoding"
        );
        assert_eq!(
            &msg.payload[..],
            &row.bytes[..],
            "seq {seq}: the stored row"
        );
        assert_eq!(
            msg.subject.as_str(),
            cairn_actors::publisher::subject_for(want).unwrap(),
            "seq {seq}"
        );
        let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header("Nats-Msg-Id"), Some(want.event_id.clone()));
        assert_eq!(header("Cairn-Seq"), Some(seq.to_string()));
        assert_eq!(header("Cairn-Stream"), Some(want.stream.clone()));
        assert_eq!(
            header("Content-Type").as_deref(),
            Some("application/protobuf")
        );
        let traced = want.trace.is_some();
        assert_eq!(
            header("traceparent").as_deref(),
            traced.then_some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            "seq {seq}"
        );
        assert_eq!(
            header("tracestate").as_deref(),
            traced.then_some("vendor=x"),
            "seq {seq}"
        );
    }
}

/// A Publisher for the outage tests: small windows (64 events read and in
/// flight), quick to notice NATS gone (1 s acks) and to retry (100 ms).
fn outage_config() -> PublisherConfig {
    PublisherConfig {
        max_in_flight: 64,
        read_batch_events: 64,
        ack_timeout: Duration::from_secs(1),
        retry_delay: Duration::from_millis(100),
        ..PublisherConfig::default()
    }
}

/// What the outage tests start from: nats-server, a store, a connection
/// and a Publisher with [`outage_config`] (the store is `TempStore::store`).
struct Outage {
    nats: NatsServer,
    ts: TempStore,
    client: async_nats::Client,
    publisher: actix::Addr<Publisher>,
}

async fn outage() -> Outage {
    let nats = NatsServer::start();
    let ts = TempStore::open();
    let client = connect(&nats.url()).await;
    let publisher = Publisher::new(ts.store.clone(), client.clone(), outage_config())
        .unwrap()
        .start();
    Outage {
        nats,
        ts,
        client,
        publisher,
    }
}

/// A Publisher that falls further behind than the store keeps in memory
/// (nats-server is down while more than `RECENT_LOG_MAX_EVENTS` events
/// are committed) reads the events it lacks back from RocksDB, then takes
/// the rest from memory again: every event once, in log order.
#[actix_rt::test]
async fn a_publisher_lagging_past_the_rows_kept_in_memory_reads_them_back() {
    // Through the outage it reads and sends at most 128 events past its
    // cursor (a read batch, a window), far short of the first event the
    // store still keeps in memory afterwards (seq 915 of 5,010).
    let Outage {
        mut nats,
        ts,
        client,
        publisher,
    } = outage().await;
    let store = ts.store.clone();
    let mut appended = append_burst(&store, 2, 5);
    let flush = Flush {
        timeout: Duration::from_secs(30),
    };
    assert_eq!(publisher.send(flush).await.unwrap().unwrap(), 10);
    let before = store.recent_log_stats();
    assert_eq!(before.served_events, 10, "published from memory");

    nats = tokio::task::spawn_blocking(move || {
        nats.stop();
        nats
    })
    .await
    .unwrap();
    let lag = cairn_storage::store::RECENT_LOG_MAX_EVENTS + 1000;
    let writer_store = store.clone();
    appended.extend(
        tokio::task::spawn_blocking(move || append_burst(&writer_store, lag / 100, 100))
            .await
            .unwrap(),
    );
    let total = appended.len() as u64;
    nats = tokio::task::spawn_blocking(move || {
        nats.restart();
        nats
    })
    .await
    .unwrap();
    let flush = Flush {
        timeout: Duration::from_secs(60),
    };
    assert_eq!(publisher.send(flush).await.unwrap().unwrap(), total);
    publisher.send(Stop).await.unwrap();
    assert_log_order(&client, total, "after the lag").await;
    let after = store.recent_log_stats();
    assert!(
        after.missed_reads > before.missed_reads,
        "the events pushed out of memory were read back: {after:?}"
    );
    assert!(
        after.served_events > before.served_events,
        "the tail came from memory: {after:?}"
    );
    drop(nats);
}

#[actix_rt::test]
async fn exactly_once_when_nats_restarts_mid_burst() {
    let Outage {
        mut nats,
        ts,
        client,
        publisher,
    } = outage().await;
    let store = ts.store.clone();
    let mut observed = client.subscribe("cairn.events.>").await.unwrap();
    client.flush().await.unwrap();

    // The burst: 1000 events, then (once nats-server is down) 1000 more.
    let (resume, resumed) = std::sync::mpsc::channel::<()>();
    let writer_store = store.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut all = append_burst(&writer_store, 250, 4);
        resumed.recv().unwrap();
        all.extend(append_burst(&writer_store, 250, 4));
        all
    });
    // Mid-burst: once 300 events went out, stop nats-server.
    for _ in 0..300 {
        tokio::time::timeout(Duration::from_secs(30), observed.next())
            .await
            .unwrap()
            .unwrap();
    }
    let mut nats = tokio::task::spawn_blocking(move || {
        nats.stop();
        nats
    })
    .await
    .unwrap();
    resume.send(()).unwrap();
    let appended = writer.await.unwrap();
    assert_eq!(appended.len(), 2000);
    nats = tokio::task::spawn_blocking(move || {
        nats.restart();
        nats
    })
    .await
    .unwrap();

    let cursor = publisher
        .send(Flush {
            timeout: Duration::from_secs(60),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cursor, 2000);
    let stored = stored_messages(&client).await;
    let ids: Vec<&str> = stored.iter().map(|(_, id, _)| id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event was stored twice");
    let want: HashSet<&str> = appended.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(unique, want, "stored events differ from appended ones");
    for (_, id, env) in &stored {
        assert_eq!(id, &env.event_id);
    }
    publisher.send(Stop).await.unwrap();
    drop(nats);
}

/// Panics unless `CAIRN_EVENTS` holds `Cairn-Seq` 1..=`events` at
/// positions 1..=`events`: every event once, in log order. The message
/// names the first position that breaks the order and what lies around it.
async fn assert_log_order(client: &async_nats::Client, events: u64, what: &str) {
    let stored = cairn_seqs(client, "CAIRN_EVENTS").await;
    let got: Vec<(u64, Option<u64>)> = stored.iter().map(|s| (s.position, s.cairn_seq)).collect();
    let want: Vec<(u64, Option<u64>)> = (1..=events).map(|n| (n, Some(n))).collect();
    if got != want {
        let first = got
            .iter()
            .zip(&want)
            .position(|(g, w)| g != w)
            .unwrap_or(got.len().min(want.len()));
        let around = &got[first.saturating_sub(2)..(first + 8).min(got.len())];
        panic!(
            "{what}: CAIRN_EVENTS holds {} messages for {events} events; first out of order at index {first}: (position, Cairn-Seq) {around:?}",
            got.len()
        );
    }
}

/// Rounds of the in-process order test: a lost publish shows up in about
/// half of them without the fence.
const RESTART_ROUNDS: usize = 6;

/// nats-server stops and restarts while the Publisher works through a
/// backlog: publishes are lost with the connection while later ones wait in
/// the client and go out after the reconnect. The stream must still hold
/// every event once, at the position of its `Cairn-Seq`.
#[actix_rt::test]
async fn log_order_when_nats_restarts_mid_burst() {
    for round in 0..RESTART_ROUNDS {
        let nats = NatsServer::start();
        let ts = TempStore::open();
        let store = ts.store.clone();
        let client = connect(&nats.url()).await;
        let config = PublisherConfig {
            max_in_flight: 256,
            read_batch_events: 256,
            ack_timeout: Duration::from_secs(1),
            retry_delay: Duration::from_millis(100),
            ..PublisherConfig::default()
        };
        // A backlog published at full speed, so that many publishes are in
        // flight when nats-server stops.
        let appended = append_burst(&store, 20, 1000);
        let publisher = Publisher::new(store.clone(), client.clone(), config)
            .unwrap()
            .start();
        let mut observed = client.subscribe("cairn.events.>").await.unwrap();
        within("the subscription", WAIT, client.flush())
            .await
            .unwrap();
        for _ in 0..2000 {
            within("a published event", WAIT, observed.next())
                .await
                .unwrap();
        }
        let nats = tokio::task::spawn_blocking(move || {
            let mut nats = nats;
            nats.stop();
            nats.restart();
            nats
        })
        .await
        .unwrap();
        let cursor = publisher
            .send(Flush {
                timeout: Duration::from_secs(60),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cursor, appended.len() as u64, "round {round}");
        assert_log_order(&client, appended.len() as u64, &format!("round {round}")).await;
        publisher.send(Stop).await.unwrap();
        drop(nats);
    }
}

/// Events in the log of the node the order test kills: a backlog the node
/// publishes at full speed, so that many publishes are in flight when
/// nats-server stops.
const BACKLOG_EVENTS: u64 = 30_000;
/// Published messages the order test sees before it stops nats-server.
const SEEN_BEFORE_STOP: usize = 3_000;
/// Outage rounds of the order test (each one: a fresh nats-server and data
/// directory). Before the publisher fenced its publishes, this many rounds
/// showed the reorder every time (see the README's Publisher section).
const ORDER_ROUNDS: usize = 6;

/// Appends `count` events to a stream that is no repository (a node would
/// sync a registered repository), 1000 per append.
fn seed_backlog(data_dir: &Path, count: u64) {
    let store = Store::open(StoreConfig::new(data_dir.join("store")), default_views()).unwrap();
    let stream = StreamId::new("test/order/backlog").unwrap();
    let mut appended = 0;
    while appended < count {
        let n = (count - appended).min(1000);
        let batch = (appended..appended + n)
            .map(|i| events::closed(&format!("backlog {i}")))
            .collect();
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                batch,
                Metadata::command("tester"),
            )
            .unwrap();
        appended += n;
    }
}

/// `cairn node` on `data_dir`, publishing to `url` (acks time out after 2 s).
fn start_node(data_dir: &Path, url: &str) -> ChildNode {
    let mut command = ChildNode::command(&cairn_cli!(), data_dir, &["--nats-url", url]);
    command.env("CAIRN_PUBLISHER__ACK_TIMEOUT", "2s");
    ChildNode::start_command(command)
}

/// The fault: nats-server stops while the node publishes (some
/// publishes are lost with the connection, later ones wait in the client),
/// the node is SIGKILLed — during the outage in even rounds, right after it
/// reconnected (its waiting publishes sent, the lost one still unacked) in
/// odd rounds — then nats-server and the node start again. The stream must
/// hold every event once, at the position of its `Cairn-Seq`.
#[test]
fn publish_order_survives_a_kill_during_a_nats_outage() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..ORDER_ROUNDS {
        let kill_after_reconnect = round % 2 == 1;
        let mut nats = NatsServer::start();
        let url = nats.url();
        let dir = TestDir::new();
        seed_backlog(dir.path(), BACKLOG_EVENTS);
        let mut node = start_node(dir.path(), &url);
        rt.block_on(async {
            let client = connect(&url).await;
            let mut observed = client.subscribe("cairn.events.>").await.unwrap();
            for _ in 0..SEEN_BEFORE_STOP {
                within("a published event", WAIT, observed.next())
                    .await
                    .unwrap();
            }
        });
        nats.stop();
        if !kill_after_reconnect {
            node.kill();
        }
        nats.restart();
        if kill_after_reconnect {
            rt.block_on(async {
                let client = connect(&url).await;
                // The service answers once the node is reconnected; what it
                // queued during the outage went out before the reply (one
                // connection, in order).
                wait_until("the node back on NATS", WAIT, || {
                    let client = client.clone();
                    async move {
                        match tokio::time::timeout(
                            Duration::from_secs(1),
                            client.request("$SRV.PING.cairn", "".into()),
                        )
                        .await
                        {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("no reply within 1s".to_owned()),
                        }
                    }
                })
                .await;
            });
            node.kill();
        }
        let mut node = start_node(dir.path(), &url);
        rt.block_on(async {
            let client = connect(&url).await;
            let js = async_nats::jetstream::new(client.clone());
            wait_until("every event in CAIRN_EVENTS", WAIT, || {
                let js = js.clone();
                async move {
                    let mut stream = js
                        .get_stream("CAIRN_EVENTS")
                        .await
                        .map_err(|e| e.to_string())?;
                    let messages = stream
                        .info()
                        .await
                        .map_err(|e| e.to_string())?
                        .state
                        .messages;
                    if messages >= BACKLOG_EVENTS {
                        Ok(())
                    } else {
                        Err(format!("{messages} messages"))
                    }
                }
            })
            .await;
        });
        assert!(
            node.terminate(WAIT).success(),
            "round {round}: the node's exit"
        );
        rt.block_on(async {
            let client = connect(&url).await;
            let what = format!(
                "round {round} (killed {})",
                if kill_after_reconnect {
                    "after reconnecting"
                } else {
                    "during the outage"
                }
            );
            assert_log_order(&client, BACKLOG_EVENTS, &what).await;
        });
    }
}
