//! `cairn bench gc`: the latency of durable appends while blob garbage
//! collection runs, beside the same appends without it.
//!
//! A store (default views, fsync on unless `--no-sync`) holds B blobs
//! (default 200,000) referenced by package revisions (20 resources each,
//! appended beforehand in chunks), plus G unreferenced ones (default
//! 20,000) for the first collection to delete. Then one thread appends one
//! small event at a time, timing each append: A times (default 2,000)
//! alone, then at least A times and on until another thread, running
//! collections back to back, finished three of them (the first deletes
//! the garbage, the next ones scan everything and find nothing). The collection reads every
//! reference and every blob each time, so it is the scan an append must
//! not wait for. Last line:
//! `gc: append_p99=<ms> append_p99_during_gc=<ms> ratio=<during/alone>`
//! (the lines before give the p50s, the collections run and their time).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cairn_events::{
    envelope::{event, Metadata},
    v1::{event::Payload, PackageRevision, PackageRevisionAdded},
    StreamId,
};
use cairn_storage::{
    sample::marker, views::default_views, BlobStore, EventLog, ExpectedVersion, Store, StoreConfig,
};

use super::cache::{ms, Latency};

/// Options of `cairn bench gc`.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Referenced blobs in the store.
    pub blobs: usize,
    /// Unreferenced blobs for the first collection to delete.
    pub garbage: usize,
    /// Timed appends of each measurement.
    pub appends: usize,
    /// fsync each commit.
    pub sync: bool,
}

/// Resources of each package revision that references the blobs.
const RESOURCES_PER_REVISION: usize = 20;
/// Revisions per append while the store is filled.
const FILL_APPEND_EVENTS: usize = 500;
/// Untimed appends before each measurement.
const WARMUP: usize = 50;
/// Collections the appends must span at least, during the second
/// measurement.
const COLLECTIONS_MIN: u64 = 3;
/// Most appends of the second measurement, whatever the collections take.
const DURING_APPENDS_MAX: usize = 2_000_000;

/// What `cairn bench gc` measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcFigures {
    /// Appends alone.
    pub alone: Latency,
    /// Appends while collections run.
    pub during: Latency,
    /// Collections run during the second measurement.
    pub collections: u64,
    /// The longest of them.
    pub longest: Duration,
}

/// Runs `cairn bench gc`.
pub fn gc(options: &GcOptions, out: &mut dyn std::io::Write) -> anyhow::Result<GcFigures> {
    let dir = tempfile::tempdir()?;
    let mut config = StoreConfig::new(dir.path().join("store"));
    config.sync = options.sync;
    let store = Store::open(config, default_views())?;
    let started = Instant::now();
    fill(&store, options)?;
    writeln!(
        out,
        "gc: {} referenced blobs ({} revisions of {RESOURCES_PER_REVISION} resources) and {} unreferenced, stored in {:.3}s; sync={}",
        options.blobs,
        options.blobs.div_ceil(RESOURCES_PER_REVISION),
        options.garbage,
        started.elapsed().as_secs_f64(),
        options.sync
    )?;
    let stream = StreamId::new("bench/appender")?;

    let alone = time_appends(&store, &stream, options.appends)?;
    writeln!(
        out,
        "gc: appends alone: p50={:.2}ms p99={:.2}ms ({} appends)",
        ms(alone.p50),
        ms(alone.p99),
        alone.samples
    )?;

    let done = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let collector = {
        let (store, done, runs) = (store.clone(), done.clone(), runs.clone());
        std::thread::spawn(move || -> anyhow::Result<(u64, Duration, u64)> {
            let (mut longest, mut removed) = (Duration::ZERO, 0u64);
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                let stats = store.collect_garbage();
                longest = longest.max(t.elapsed());
                runs.fetch_add(1, Ordering::Relaxed);
                // A failed collection ends the measurement too.
                removed += stats?.removed;
            }
            Ok((runs.load(Ordering::Relaxed), longest, removed))
        })
    };
    let during = time_appends_while(&store, &stream, options.appends, &runs);
    done.store(true, Ordering::Relaxed);
    let (collections, longest, removed) = collector
        .join()
        .map_err(|_| anyhow::anyhow!("the collector panicked"))??;
    let during = during?;
    anyhow::ensure!(
        removed == options.garbage as u64,
        "the collections removed {removed} blobs, {} were garbage",
        options.garbage
    );
    writeln!(
        out,
        "gc: appends during {collections} collections (longest {:.1}ms, {removed} blobs removed): p50={:.2}ms p99={:.2}ms ({} appends)",
        ms(longest),
        ms(during.p50),
        ms(during.p99),
        during.samples
    )?;
    writeln!(
        out,
        "gc: append_p99={:.2} append_p99_during_gc={:.2} ratio={:.2}",
        ms(alone.p99),
        ms(during.p99),
        during.p99.as_secs_f64() / alone.p99.as_secs_f64().max(1e-9)
    )?;
    Ok(GcFigures {
        alone,
        during,
        collections,
        longest,
    })
}

/// Stores the referenced blobs (pinned until their revisions commit) and
/// the garbage.
fn fill(store: &Store, options: &GcOptions) -> anyhow::Result<()> {
    let repo = StreamId::repository("bench", "gc")?;
    let mut blob = 0usize;
    let mut revision = 0usize;
    while blob < options.blobs {
        let mut pins = Vec::new();
        let mut events = Vec::with_capacity(FILL_APPEND_EVENTS);
        while events.len() < FILL_APPEND_EVENTS && blob < options.blobs {
            let mut resources = std::collections::BTreeMap::new();
            for r in 0..RESOURCES_PER_REVISION.min(options.blobs - blob) {
                let pin = store.put(format!("kind: ConfigMap\nindex: {blob}\n").as_bytes())?;
                resources.insert(format!("cm-{r:02}.yaml"), pin.digest().to_string());
                pins.push(pin);
                blob += 1;
            }
            events.push(event(Payload::PackageRevisionAdded(PackageRevisionAdded {
                revision: Some(PackageRevision {
                    name: format!("gc.pkg-{revision:06}.v1"),
                    package: format!("pkg-{revision:06}"),
                    workspace: "v1".into(),
                    revision: 1,
                    lifecycle: "Published".into(),
                    resources,
                    ..Default::default()
                }),
            })));
            revision += 1;
        }
        store.append(
            &repo,
            ExpectedVersion::Any,
            events,
            Metadata::command("bench"),
        )?;
        drop(pins);
    }
    for g in 0..options.garbage {
        drop(store.put(format!("garbage {g}").as_bytes())?);
    }
    Ok(())
}

/// Appends as [`time_appends`] does, at least `appends` of them and on
/// until `runs` says [`COLLECTIONS_MIN`] collections finished (at most
/// [`DURING_APPENDS_MAX`]).
fn time_appends_while(
    store: &Store,
    stream: &StreamId,
    appends: usize,
    runs: &AtomicU64,
) -> anyhow::Result<Latency> {
    let mut samples = Vec::with_capacity(appends.max(1));
    for i in 0..DURING_APPENDS_MAX {
        if i >= appends.max(1) && runs.load(Ordering::Relaxed) >= COLLECTIONS_MIN {
            break;
        }
        let t = Instant::now();
        store.append(
            stream,
            ExpectedVersion::Any,
            vec![marker(format!("during {i}"))],
            Metadata::command("bench"),
        )?;
        samples.push(t.elapsed());
    }
    Ok(Latency::of(samples))
}

/// `appends` durable appends of one small event, one at a time, each timed
/// (after [`WARMUP`] untimed ones).
fn time_appends(store: &Store, stream: &StreamId, appends: usize) -> anyhow::Result<Latency> {
    let append = |i: usize| {
        store.append(
            stream,
            ExpectedVersion::Any,
            vec![marker(format!("append {i}"))],
            Metadata::command("bench"),
        )
    };
    for i in 0..WARMUP {
        append(i)?;
    }
    let mut samples = Vec::with_capacity(appends.max(1));
    for i in 0..appends.max(1) {
        let t = Instant::now();
        append(i)?;
        samples.push(t.elapsed());
    }
    Ok(Latency::of(samples))
}
