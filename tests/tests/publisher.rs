//! The Publisher against a real nats-server: every event reaches the
//! `CAIRN_EVENTS` JetStream stream exactly once, on its subject, with
//! `Nats-Msg-Id` = event id — also when nats-server is stopped and restarted
//! in the middle of a burst.

use std::{collections::HashSet, time::Duration};

use actix::Actor;
use cairn_actors::publisher::{Flush, GetStatus, Publisher, PublisherConfig, Stop};
use cairn_events::{envelope, envelope::Metadata, v1::Envelope, StreamId};
use cairn_storage::{keys::meta, EventLog, ExpectedVersion, Store};
use cairn_tests::{events, within, NatsServer, TempStore, WAIT};
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

#[actix_rt::test]
async fn exactly_once_when_nats_restarts_mid_burst() {
    let mut nats = NatsServer::start();
    let ts = TempStore::open();
    let store = ts.store.clone();
    let client = connect(&nats.url()).await;
    let config = PublisherConfig {
        max_in_flight: 64,
        read_batch_events: 64,
        ack_timeout: Duration::from_secs(1),
        retry_delay: Duration::from_millis(100),
        ..PublisherConfig::default()
    };
    let publisher = Publisher::new(store.clone(), client.clone(), config)
        .unwrap()
        .start();
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
