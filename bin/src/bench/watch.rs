//! `cairn bench watch`: latency from an append to a watcher's receipt over
//! NATS, and in the same run raw NATS publish → subscribe latency on the
//! same server.
//!
//! A node runs in this process (default configuration, local nats-server
//! on a free port, temp data directory). A client on another thread
//! subscribes to a deliver subject and starts a watch of one repository's
//! package revisions; once its listing's bookmark arrived, it appends one
//! `PackageRevisionModified` at a time straight through the store
//! (`append_async`, durable) and waits for the watcher's line. Each sample
//! runs from just before `append_async` to the line's receipt, so it
//! includes the group commit (fsync unless `--no-sync`), the hub's read,
//! filtering, rendering and the NATS hop. The raw baseline publishes a line
//! of the same size from one connection to a subscriber on another, one
//! at a time. Last line:
//! `watch: p50=<ms> p99=<ms> raw_p99=<ms>`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use cairn_events::{
    envelope::{event, Metadata},
    v1::{event::Payload, PackageRevision, PackageRevisionAdded, PackageRevisionModified},
    StreamId,
};
use cairn_storage::{ExpectedVersion, Store};
use futures::StreamExt;
use serde_json::{json, Value};

use super::cache::{ms, node_config, Latency};
use crate::node::Node;

/// Options of `cairn bench watch`.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Timed events (and raw messages).
    pub events: usize,
    /// fsync each commit (the node's default).
    pub sync: bool,
}

/// Untimed events before each measurement.
const WARMUP: usize = 50;
/// Longest wait for one line.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
const NAMESPACE: &str = "bench";
const REPOSITORY: &str = "watched";

fn revision(i: usize) -> PackageRevision {
    PackageRevision {
        name: format!("{REPOSITORY}.pkg.main"),
        package: "pkg".into(),
        workspace: "main".into(),
        revision: -1,
        lifecycle: "Published".into(),
        commit: format!("{i:040x}"),
        labels: [("bench".to_owned(), "watch".to_owned())].into(),
        ..Default::default()
    }
}

/// Runs `cairn bench watch`; returns (watch latency, raw latency).
pub fn watch(
    options: &WatchOptions,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(Latency, Latency)> {
    let dir = tempfile::tempdir()?;
    let mut config = node_config(&dir.path().join("data"));
    config.store.sync = options.sync;
    let events = options.events.max(1);
    let system = actix::System::new();
    let result = system.block_on(async {
        let node = Node::start(config).await?;
        let url = node.nats_url.clone();
        let store = node.store.clone();
        writeln!(
            out,
            "watch: {events} events, one at a time, appended through the store (sync={}), watched over {url}",
            options.sync
        )?;
        // The client side runs on its own thread and runtime, so its
        // timing does not share the node's arbiter.
        let (done, outcome) = tokio::sync::oneshot::channel();
        let client_side = std::thread::spawn(move || {
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(drive(url, store, events)));
            let _ = done.send(outcome);
        });
        // The node's arbiter stays free while the client side works.
        let outcome = outcome
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("benchmark client panicked")));
        let _ = client_side.join();
        node.shutdown().await;
        outcome
    });
    let Measured { watch, commit, raw } = result?;
    writeln!(
        out,
        "watch: append→commit p50={:.2}ms p99={:.2}ms (part of each sample)",
        ms(commit.p50),
        ms(commit.p99)
    )?;
    writeln!(
        out,
        "watch: append→receipt p50={:.2}ms p99={:.2}ms ({} samples); raw publish→receipt p50={:.2}ms p99={:.2}ms ({} samples)",
        ms(watch.p50),
        ms(watch.p99),
        watch.samples,
        ms(raw.p50),
        ms(raw.p99),
        raw.samples
    )?;
    writeln!(
        out,
        "watch: p50={:.2} p99={:.2} raw_p99={:.2}",
        ms(watch.p50),
        ms(watch.p99),
        ms(raw.p99)
    )?;
    Ok((watch, raw))
}

struct Measured {
    watch: Latency,
    commit: Latency,
    raw: Latency,
}

/// The client side: a watch and the timed appends, then the raw baseline.
async fn drive(url: String, store: Store, events: usize) -> anyhow::Result<Measured> {
    let client = async_nats::connect(url.as_str())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let stream = StreamId::repository(NAMESPACE, REPOSITORY)?;
    store
        .append_async(
            &stream,
            ExpectedVersion::Any,
            vec![event(Payload::PackageRevisionAdded(PackageRevisionAdded {
                revision: Some(revision(0)),
            }))],
            Metadata::command("bench"),
        )
        .await?;

    let subject = format!("bench.watch.{}", std::process::id());
    let mut lines = client.subscribe(subject.clone()).await?;
    client.flush().await?;
    let body = json!({
        "filter": {"namespace": NAMESPACE, "repository": REPOSITORY},
        "deliver_subject": subject,
        "heartbeat_ms": 60_000,
    });
    let reply = client
        .request("cairn.v1.watch.start", serde_json::to_vec(&body)?.into())
        .await?;
    let started: Value = serde_json::from_slice(&reply.payload)?;
    let watch_id = started["watch_id"]
        .as_str()
        .with_context(|| format!("watch.start failed: {started}"))?
        .to_owned();
    // The listing (one revision), then the bookmark.
    loop {
        let (line, _) = next_line(&mut lines, &client).await?;
        if line["type"] == "Bookmark" {
            break;
        }
    }
    let mut last_line = Bytes::new();

    let mut watch = Vec::with_capacity(events);
    let mut commit = Vec::with_capacity(events);
    for i in 1..=WARMUP + events {
        let change = vec![event(Payload::PackageRevisionModified(
            PackageRevisionModified {
                revision: Some(revision(i)),
            },
        ))];
        let started = Instant::now();
        let appended = store
            .append_async(
                &stream,
                ExpectedVersion::Any,
                change,
                Metadata::command("bench"),
            )
            .await?;
        let committed = started.elapsed();
        let seq = appended.last_seq();
        loop {
            let (line, bytes) = next_line(&mut lines, &client).await?;
            if line["seq"].as_u64() == Some(seq) {
                anyhow::ensure!(line["type"] == "Modified", "unexpected line {line}");
                last_line = bytes;
                break;
            }
        }
        if i > WARMUP {
            watch.push(started.elapsed());
            commit.push(committed);
        }
    }
    client
        .request(
            "cairn.v1.watch.stop",
            serde_json::to_vec(&json!({ "watch_id": watch_id }))?.into(),
        )
        .await?;

    // Raw: one connection publishes the last watch line again, another
    // receives it, one at a time.
    let publisher = async_nats::connect(url.as_str()).await?;
    let raw_subject = format!("bench.raw.{}", std::process::id());
    let mut raw_lines = client.subscribe(raw_subject.clone()).await?;
    client.flush().await?;
    let mut raw = Vec::with_capacity(events);
    for i in 0..WARMUP + events {
        let started = Instant::now();
        publisher
            .publish(raw_subject.clone(), last_line.clone())
            .await?;
        tokio::time::timeout(RECEIVE_TIMEOUT, raw_lines.next())
            .await
            .context("raw message not received in time")?
            .context("raw subscription closed")?;
        if i >= WARMUP {
            raw.push(started.elapsed());
        }
    }
    Ok(Measured {
        watch: Latency::of(watch),
        commit: Latency::of(commit),
        raw: Latency::of(raw),
    })
}

/// The next watch line (parsed, and as received), answering heartbeats on
/// the way.
async fn next_line(
    lines: &mut async_nats::Subscriber,
    client: &async_nats::Client,
) -> anyhow::Result<(Value, Bytes)> {
    loop {
        let message = tokio::time::timeout(RECEIVE_TIMEOUT, lines.next())
            .await
            .context("no watch line in time")?
            .context("watch subscription closed")?;
        if let Some(reply) = message.reply {
            client.publish(reply, Bytes::new()).await?;
            continue;
        }
        return Ok((serde_json::from_slice(&message.payload)?, message.payload));
    }
}
