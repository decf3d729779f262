//! `cairn bench …`: each benchmark measures cairn and, in the same run, the
//! raw baseline it is built on, and ends with one line
//! `<name>: cairn=<N>/s raw=<M>/s ratio=<cairn/raw>`.
//!
//! - `append`: durable appends through [`EventLog`] vs raw RocksDB
//!   `WriteBatch` writes of the same rows (log row and stream index row, the
//!   same encoded bytes) with the same sync setting and the same number of
//!   writer threads.
//! - `publish`: events from the log through the Publisher into JetStream
//!   (acknowledged) vs raw async-nats JetStream publishes of the same
//!   payloads and headers into a fresh stream, with the same in-flight window.
//!
//! On generated repositories ([`gen`]) served by an in-process node
//! ([`cache`]), each with its own last line:
//!
//! - `list`: full and one-package `pkgrev.list` latency vs raw NATS
//!   request/reply of the same bytes in the same round trips.
//! - `sync-first`: register-with-wait (first sync) vs `git clone --mirror`.
//! - `sync-noop`: a sync of an unchanged repository vs `git ls-remote`.
//! - `memory`: the node's resident memory at its peak while first syncs
//!   of N revisions run (one repository, or several at once), and once
//!   settled after listing them.
//!
//! - `approve` ([`approve`]): approving one proposal in a repository of N
//!   published revisions, at N and N/10, vs the same commit, tag and push
//!   with the git CLI.
//!
//! On a store alone:
//!
//! - `gc` ([`gc`]): durable append latency while blob garbage collections
//!   run back to back vs the same appends alone.
//!
//! And on an in-process node, appending through its store:
//!
//! - `watch` ([`watch`]): latency from an append to a watcher's receipt
//!   over NATS vs raw NATS publish → receipt on the same server.
//!
//! And against nginx `proxy_cache` (both started on loopback ports):
//!
//! - `artifact` ([`artifact`]): hit throughput and latency of the HTTP
//!   artifact cache at concurrency 1 and 64, a 100 MiB hit, index lookups
//!   at 10 000 and 1 000 000 URLs, one revalidation, dedup.
//!
//! # Layout
//! - this module — `append` and `publish`, and the shared helpers.
//! - [`gen`] — generated Porch-shaped repositories (`git fast-import`).
//! - [`cache`] — `list`, `sync-first`, `sync-noop`, `memory` on a node in
//!   the benchmark's process.
//! - [`approve`] — `approve`.
//! - [`gc`] — `gc`.
//! - [`watch`] — `watch`.
//! - [`kv`] — `kv`: the key-value cache vs `redis-server` and a raw NATS
//!   echo.
//! - [`artifact`] — `artifact`.
//! - [`cluster`] — `cluster-append`, `failover`, `catch-up`,
//!   `cluster-read`: a three-server NATS cluster and cairn nodes as child
//!   processes.
//! - [`telemetry`] — `telemetry`: `list` and `append` with trace export
//!   on (to an OTLP receiver it starts) vs off, in alternating rounds.

pub mod approve;
pub mod artifact;
pub mod cache;
pub mod cluster;
pub mod gc;
pub mod gen;
pub mod kv;
pub mod telemetry;
pub mod watch;

pub use gc::{GcFigures, GcOptions};
pub use watch::WatchOptions;

pub use cache::{
    list, memory, sync_first, sync_noop, ListOptions, MemoryFigures, MemoryOptions,
    SyncFirstOptions, SyncNoopOptions,
};

use std::{
    future::IntoFuture,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Barrier,
    },
    time::{Duration, Instant},
};

use actix::Actor;
use anyhow::Context as _;
use cairn_actors::publisher::{self, subject_for, Publisher, PublisherConfig};
use cairn_events::{envelope, envelope::Metadata, StreamId};
use cairn_storage::{
    columns::Column, keys, sample::marker, views::default_views, EventLog, ExpectedVersion, Store,
    StoreConfig,
};
use futures::{stream::FuturesUnordered, StreamExt};

use crate::local_nats::LocalNatsServer;

/// Options of `cairn bench append`.
#[derive(Debug, Clone)]
pub struct AppendOptions {
    /// Events to append in all (one event per append).
    pub events: u64,
    /// Concurrent appenders.
    pub writers: usize,
    /// fsync each commit (both sides).
    pub sync: bool,
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Runs `cairn bench append`; returns (cairn/s, raw/s).
pub fn append(options: &AppendOptions, out: &mut dyn std::io::Write) -> anyhow::Result<(f64, f64)> {
    let writers = options.writers.max(1);
    let per_writer = (options.events / writers as u64).max(1);
    let total = per_writer * writers as u64;
    let dir = tempfile::tempdir()?;
    writeln!(
        out,
        "append: {total} events, {writers} writers, one event per append, sync={}",
        options.sync
    )?;

    // cairn: through the EventLog (writer thread, group commit, views).
    let mut config = StoreConfig::new(dir.path().join("cairn"));
    config.sync = options.sync;
    let store = Store::open(config, default_views())?;
    let cairn_elapsed = run_writers(writers, |w| {
        let store = store.clone();
        move || -> anyhow::Result<()> {
            let stream = StreamId::new(format!("bench/w{w}"))?;
            for i in 0..per_writer {
                let reason = format!("bench event {w}-{i:08} {}", "x".repeat(96));
                store.append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![marker(reason)],
                    Metadata::command("bench"),
                )?;
            }
            Ok(())
        }
    })?;
    let cairn_rate = rate(total, cairn_elapsed);
    writeln!(
        out,
        "append: cairn {total} events in {:.3}s ({} group commits)",
        cairn_elapsed.as_secs_f64(),
        store.writer_stats().batches
    )?;

    // The same rows, encoded exactly as cairn stored them.
    let mut rows: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![Vec::new(); writers];
    for env in store.read_all(1, usize::MAX)? {
        let w: usize = env.stream.trim_start_matches("bench/w").parse()?;
        let stream_key = keys::stream_key(&StreamId::new(env.stream.clone())?, env.stream_version);
        rows[w].push((stream_key, envelope::encode(&env)));
    }
    drop(store);

    // raw: RocksDB WriteBatch of the log row and the stream index row.
    let raw_elapsed = raw_rocksdb(&dir.path().join("raw"), rows, options.sync, writers)?;
    let raw_rate = rate(total, raw_elapsed);
    writeln!(
        out,
        "append: raw rocksdb {total} events in {:.3}s",
        raw_elapsed.as_secs_f64()
    )?;
    writeln!(
        out,
        "append: cairn={:.0}/s raw={:.0}/s ratio={:.2}",
        cairn_rate,
        raw_rate,
        cairn_rate / raw_rate
    )?;
    Ok((cairn_rate, raw_rate))
}

fn run_writers<F, G>(writers: usize, mut make: G) -> anyhow::Result<Duration>
where
    G: FnMut(usize) -> F,
    F: FnOnce() -> anyhow::Result<()> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(writers + 1));
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let work = make(w);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                work()
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    Ok(started.elapsed())
}

fn raw_rocksdb(
    path: &Path,
    rows: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
    sync: bool,
    writers: usize,
) -> anyhow::Result<Duration> {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.increase_parallelism(2);
    let db = Arc::new(rocksdb::DB::open_cf(
        &options,
        path,
        [Column::Log.name(), Column::Streams.name()],
    )?);
    let seq = Arc::new(AtomicU64::new(0));
    let mut rows: Vec<Option<cairn_storage::store::Rows>> = rows.into_iter().map(Some).collect();
    run_writers(writers, |w| {
        let db = db.clone();
        let seq = seq.clone();
        let mine = rows[w].take().unwrap_or_default();
        move || -> anyhow::Result<()> {
            let log = db.cf_handle(Column::Log.name()).context("log cf")?;
            let streams = db.cf_handle(Column::Streams.name()).context("streams cf")?;
            let mut write_options = rocksdb::WriteOptions::default();
            write_options.set_sync(sync);
            for (stream_key, bytes) in mine {
                let s = seq.fetch_add(1, Ordering::Relaxed) + 1;
                let mut batch = rocksdb::WriteBatch::default();
                batch.put_cf(log, keys::seq_key(s), &bytes);
                batch.put_cf(streams, stream_key, keys::seq_key(s));
                db.write_opt(batch, &write_options)?;
            }
            Ok(())
        }
    })
}

/// Options of `cairn bench publish`.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Events to publish.
    pub events: u64,
    /// An existing NATS server; a local one is started when `None`.
    pub nats_url: Option<String>,
    /// The nats-server program for the local server.
    pub server_binary: String,
    /// In-flight window of both sides.
    pub max_in_flight: usize,
}

/// Runs `cairn bench publish`; returns (cairn/s, raw/s).
pub fn publish(
    options: &PublishOptions,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let mut local = None;
    let url = match &options.nats_url {
        Some(url) => url.clone(),
        None => {
            let listen: SocketAddr = "127.0.0.1:0".parse()?;
            let server =
                LocalNatsServer::start(&options.server_binary, listen, &dir.path().join("nats"))?;
            let url = server.url();
            local = Some(server);
            url
        }
    };
    writeln!(
        out,
        "publish: {} events via {url}{}",
        options.events,
        if local.is_some() {
            " (local nats-server)"
        } else {
            ""
        }
    )?;

    let store = Store::open(StoreConfig::new(dir.path().join("store")), default_views())?;
    let mut appended = 0u64;
    while appended < options.events {
        let n = (options.events - appended).min(1000);
        let stream = StreamId::repository("bench", &format!("r{}", appended / 1000 % 10))?;
        let events = (0..n)
            .map(|i| marker(format!("bench event {} {}", appended + i, "x".repeat(96))))
            .collect();
        store.append(
            &stream,
            ExpectedVersion::Any,
            events,
            Metadata::command("bench"),
        )?;
        appended += n;
    }
    let envelopes = store.read_all(1, usize::MAX)?;
    let max_in_flight = options.max_in_flight.max(1);

    let system = actix::System::new();
    let result = system.block_on(async {
        let client = async_nats::connect(url.as_str())
            .await
            .with_context(|| format!("connecting to {url}"))?;

        // cairn: the Publisher, from the log to acknowledged JetStream messages.
        let config = PublisherConfig {
            max_in_flight,
            ..PublisherConfig::default()
        };
        let started = Instant::now();
        let publisher = Publisher::new(store.clone(), client.clone(), config)?.start();
        let cursor = publisher
            .send(publisher::Flush {
                timeout: Duration::from_secs(600),
            })
            .await??;
        let cairn_elapsed = started.elapsed();
        anyhow::ensure!(cursor == options.events, "publisher stopped at {cursor}");
        publisher.send(publisher::Stop).await?;
        writeln!(
            out,
            "publish: cairn {} events in {:.3}s",
            options.events,
            cairn_elapsed.as_secs_f64()
        )?;

        // raw: async-nats JetStream publishes of the same payloads.
        let js = async_nats::jetstream::ContextBuilder::new()
            .max_ack_inflight(max_in_flight)
            .build(client.clone());
        let stream_name = format!("BENCH_RAW_{}", std::process::id());
        let raw_subject_root = format!("bench.raw{}", std::process::id());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{raw_subject_root}.>")],
            storage: async_nats::jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
        let messages: Vec<(String, String, u64, String, bytes::Bytes)> = envelopes
            .iter()
            .map(|e| -> anyhow::Result<_> {
                let subject = subject_for(e)?.replacen("cairn.events", &raw_subject_root, 1);
                Ok((
                    subject,
                    e.event_id.clone(),
                    e.seq,
                    e.stream.clone(),
                    envelope::encode(e).into(),
                ))
            })
            .collect::<Result<_, _>>()?;
        let started = Instant::now();
        let mut acks = FuturesUnordered::new();
        for (subject, id, seq, stream, payload) in messages {
            if acks.len() >= max_in_flight {
                acks.next().await.context("ack stream")??;
            }
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .message_id(id.as_str())
                .header("Content-Type", "application/protobuf")
                .header("Cairn-Seq", seq.to_string().as_str())
                .header("Cairn-Stream", stream.as_str())
                .payload(payload);
            acks.push(js.send_publish(subject, publish).await?.into_future());
        }
        while let Some(ack) = acks.next().await {
            ack?;
        }
        let raw_elapsed = started.elapsed();
        writeln!(
            out,
            "publish: raw async-nats {} events in {:.3}s",
            options.events,
            raw_elapsed.as_secs_f64()
        )?;
        let _ = js.delete_stream(&stream_name).await;
        let (c, r) = (
            rate(options.events, cairn_elapsed),
            rate(options.events, raw_elapsed),
        );
        writeln!(
            out,
            "publish: cairn={c:.0}/s raw={r:.0}/s ratio={:.2}",
            c / r
        )?;
        Ok::<_, anyhow::Error>((c, r))
    });
    drop(local);
    result
}
