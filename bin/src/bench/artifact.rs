//! `cairn bench artifact`: the HTTP artifact cache against nginx
//! `proxy_cache`, in the same run, in front of the same origin.
//!
//! The origin is Debian's nginx serving generated files
//! (`Cache-Control: max-age=3600`, with nginx's `ETag` and
//! `Last-Modified`); the peer is a second nginx configured as a caching
//! reverse proxy (`proxy_cache`, 1 h validity) of that origin; cairn runs
//! in this process (its reverse proxy `/u/origin/…`). Both caches are
//! warmed first, so every timed request is a hit. The client side runs on
//! its own thread and runtime (reqwest), the same for both sides: one
//! client per side and concurrency level, its connections opened by the
//! warm-up and reused by every timed request (neither side pays for
//! connecting), the same URLs in the same order. The hits are measured in
//! `--rounds` rounds, each running both sides, cairn first in even rounds
//! and nginx first in odd ones (ABBA), so that what drifts on a shared
//! machine falls on both; a side's requests/s is the median of its rounds,
//! its p50/p99 over every request of every round. The peer does not write
//! an access log (cairn writes none per hit either); the origin does (the
//! revalidation figure counts its requests).
//!
//! Figures:
//! - hits of 10 KiB bodies (100 distinct URLs, round-robin), at
//!   concurrency 1 and 64: requests/s, p50, p99 — cairn and nginx;
//! - a 100 MiB hit: time to last byte (median of 5, alternating sides) —
//!   cairn and nginx;
//! - index lookups in process ([`crate::node`]-less: a store alone) at
//!   10 000 and `--lookup-entries` (default 1 000 000) stored URLs: p50,
//!   p99 of one lookup (two point reads and the Vary key);
//! - revalidation of a stale entry: the origin requests it caused (exactly
//!   one, answered 304);
//! - dedup: 100 URLs with 10 distinct 64 KiB bodies, body bytes stored
//!   against bytes downloaded.
//!
//! Last line: `artifact: hit_rps=<N> nginx_rps=<M> ratio=<N/M>
//! big_ms=<a> nginx_big_ms=<b> lookup_us=<c>` (rps at concurrency 64,
//! lookup p50 at the largest index).

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use cairn_events::{
    envelope::{event, Metadata},
    v1::{event::Payload, ArtifactKey, ArtifactStored},
    StreamId,
};
use cairn_storage::{
    views::{default_views, ArtifactsView},
    BlobStore, EventLog, ExpectedVersion, Store, StoreConfig,
};
use futures::StreamExt;

use super::cache::{ms, node_config, Latency};
use crate::{config::UpstreamEntry, nginx::Nginx, node::Node};

/// Options of `cairn bench artifact`.
#[derive(Debug, Clone)]
pub struct ArtifactOptions {
    /// Timed 10 KiB hits at concurrency 64 per side, over all rounds (a
    /// quarter of them at concurrency 1).
    pub requests: usize,
    /// Rounds the hits are measured in (each runs both sides, ABBA).
    pub rounds: usize,
    /// Stored URLs of the larger lookup measurement.
    pub lookup_entries: usize,
}

/// What `cairn bench artifact` measured.
#[derive(Debug, Clone)]
pub struct ArtifactFigures {
    /// cairn's hits/s at concurrency 64.
    pub hit_rps: f64,
    /// nginx's hits/s at concurrency 64.
    pub nginx_rps: f64,
    /// cairn's 100 MiB time to last byte.
    pub big_ms: f64,
    /// nginx's.
    pub nginx_big_ms: f64,
    /// Lookup p50 at the largest index, µs.
    pub lookup_us: f64,
}

const SMALL_FILES: usize = 100;
const SMALL_BYTES: usize = 10 * 1024;
const BIG_BYTES: usize = 100 << 20;
const DEDUP_URLS: usize = 100;
const DEDUP_BODIES: usize = 10;
const DEDUP_BYTES: usize = 64 * 1024;
const BIG_RUNS: usize = 5;
/// Bound on one timed request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Lookups timed per index size.
const LOOKUPS: usize = 20_000;
/// Events per append while filling the lookup index.
const FILL_BATCH: usize = 1000;

fn files(root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("small"))?;
    std::fs::create_dir_all(root.join("dedup"))?;
    for i in 0..SMALL_FILES {
        let body: Vec<u8> = (0..SMALL_BYTES)
            .map(|j| ((i * 31 + j) % 251) as u8)
            .collect();
        std::fs::write(root.join(format!("small/{i}.bin")), body)?;
    }
    let big: Vec<u8> = (0..BIG_BYTES).map(|j| (j % 253) as u8).collect();
    std::fs::write(root.join("big.bin"), big)?;
    for i in 0..DEDUP_URLS {
        let k = i % DEDUP_BODIES;
        let body: Vec<u8> = (0..DEDUP_BYTES)
            .map(|j| ((k * 7 + j) % 241) as u8)
            .collect();
        std::fs::write(root.join(format!("dedup/{i}.bin")), body)?;
    }
    std::fs::write(root.join("stale.bin"), b"revalidate me")?;
    Ok(())
}

/// Runs `cairn bench artifact`.
pub fn artifact(
    options: &ArtifactOptions,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<ArtifactFigures> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("files");
    files(&root)?;
    let root_text = root.display().to_string();
    let origin = Nginx::start(|_| {
        format!(
            "location / {{ root {root_text}; add_header Cache-Control \"max-age=3600\"; }}\n    \
             location = /stale.bin {{ root {root_text}; add_header Cache-Control \"no-cache\"; }}"
        )
    })
    .context("the origin nginx (apt-get install nginx)")?;
    let origin_url = origin.url();
    let peer = Nginx::start_with(
        |d| {
            format!(
                "proxy_cache_path {}/cache levels=1:2 keys_zone=cairnbench:16m max_size=4g inactive=1h use_temp_path=off;",
                d.display()
            )
        },
        |_| {
            format!(
                "location / {{ proxy_pass {origin_url}; proxy_cache cairnbench; proxy_cache_valid 200 1h; \
                 proxy_http_version 1.1; proxy_set_header Connection \"\"; access_log off; }}"
            )
        },
    )
    .context("the peer nginx")?;
    writeln!(
        out,
        "artifact: origin nginx {} (files with max-age=3600), peer nginx proxy_cache {}",
        origin.url(),
        peer.url()
    )?;
    let mut config = node_config(&dir.path().join("data"));
    config.http.listen = "127.0.0.1:0".into();
    config.artifact.upstreams = vec![UpstreamEntry {
        name: "origin".into(),
        url: origin.url(),
    }];
    anyhow::ensure!(options.rounds >= 1, "--rounds: at least 1");
    let rounds = options.rounds;
    let requests = options.requests.max(4 * CONCURRENCY * rounds);
    let system = actix::System::new();
    let measured = system.block_on(async {
        let node = Node::start(config).await?;
        let cairn_base = format!(
            "http://{}/u/origin",
            node.http_addr().context("http listener")?
        );
        let peer_base = peer.url();
        let cache = node.artifacts().clone();
        let (done, outcome) = tokio::sync::oneshot::channel();
        let bases = (cairn_base.clone(), peer_base.clone());
        let client_side = std::thread::spawn(move || {
            let outcome = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(drive(bases.0, bases.1, requests, rounds)));
            let _ = done.send(outcome);
        });
        let outcome = outcome
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("benchmark client panicked")));
        let _ = client_side.join();
        let before = origin.requests().len();
        // Revalidation of a stale (no-cache) entry: one conditional request.
        let client = reqwest::Client::new();
        let url = format!("{cairn_base}/stale.bin");
        client.get(&url).send().await?.bytes().await?;
        let warm = origin.requests().len();
        let got = client.get(&url).send().await?;
        let cache_status = got
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        got.bytes().await?;
        let revalidation_requests = origin.requests().len() - warm;
        // Dedup.
        let stats_before = cache.stats().to_json();
        let bytes_before = {
            let store = node.store.clone();
            tokio::task::spawn_blocking(move || ArtifactsView::totals(&store))
                .await??
                .bytes
        };
        for i in 0..DEDUP_URLS {
            client
                .get(format!("{cairn_base}/dedup/{i}.bin"))
                .send()
                .await?
                .bytes()
                .await?;
        }
        let bytes_after = {
            let store = node.store.clone();
            tokio::task::spawn_blocking(move || ArtifactsView::totals(&store))
                .await??
                .bytes
        };
        let _ = (before, stats_before);
        drop(cache);
        node.shutdown().await;
        let measured = outcome?;
        Ok::<_, anyhow::Error>((
            measured,
            revalidation_requests,
            cache_status,
            bytes_after - bytes_before,
        ))
    });
    let (m, revalidation_requests, cache_status, dedup_stored) = measured?;
    for (label, c, n) in [
        ("c=1", &m.cairn_1, &m.nginx_1),
        ("c=64", &m.cairn_64, &m.nginx_64),
    ] {
        writeln!(
            out,
            "artifact: 10 KiB hits {label} (median of {rounds} rounds): cairn {:.0}/s p50={:.3}ms p99={:.3}ms; nginx {:.0}/s p50={:.3}ms p99={:.3}ms; ratio={:.2} p50_ratio={:.2}",
            c.rps(),
            ms(c.latency().p50),
            ms(c.latency().p99),
            n.rps(),
            ms(n.latency().p50),
            ms(n.latency().p99),
            c.rps() / n.rps(),
            ms(c.latency().p50) / ms(n.latency().p50),
        )?;
    }
    writeln!(
        out,
        "artifact: 100 MiB hit, time to last byte (median of {BIG_RUNS}): cairn {:.1}ms, nginx {:.1}ms, ratio={:.2}",
        ms(m.cairn_big),
        ms(m.nginx_big),
        ms(m.cairn_big) / ms(m.nginx_big)
    )?;
    writeln!(
        out,
        "artifact: revalidation of a stale entry: {revalidation_requests} origin request(s), served as {cache_status:?}"
    )?;
    let downloaded = (DEDUP_URLS * DEDUP_BYTES) as f64;
    writeln!(
        out,
        "artifact: dedup: {DEDUP_URLS} URLs, {DEDUP_BODIES} distinct bodies: {downloaded:.0} bytes downloaded, {dedup_stored} stored, saved {:.1}%",
        100.0 * (1.0 - dedup_stored as f64 / downloaded)
    )?;
    let mut lookup_us = 0.0;
    for entries in [10_000usize, options.lookup_entries.max(10_000)] {
        let latency = lookups(dir.path(), entries)?;
        writeln!(
            out,
            "artifact: index lookup at {entries} stored URLs: p50={:.1}us p99={:.1}us ({} lookups)",
            latency.p50.as_secs_f64() * 1e6,
            latency.p99.as_secs_f64() * 1e6,
            latency.samples
        )?;
        lookup_us = latency.p50.as_secs_f64() * 1e6;
    }
    let figures = ArtifactFigures {
        hit_rps: m.cairn_64.rps(),
        nginx_rps: m.nginx_64.rps(),
        big_ms: ms(m.cairn_big),
        nginx_big_ms: ms(m.nginx_big),
        lookup_us,
    };
    writeln!(
        out,
        "artifact: hit_rps={:.0} nginx_rps={:.0} ratio={:.2} big_ms={:.1} nginx_big_ms={:.1} lookup_us={:.1}",
        figures.hit_rps,
        figures.nginx_rps,
        figures.hit_rps / figures.nginx_rps,
        figures.big_ms,
        figures.nginx_big_ms,
        figures.lookup_us
    )?;
    Ok(figures)
}

/// One side's measurements at one concurrency: hits/s of each round and
/// every request's latency.
#[derive(Debug, Default)]
struct Throughput {
    /// Hits/s of each round.
    rounds_rps: Vec<f64>,
    /// Latency of every timed request of every round.
    samples: Vec<Duration>,
}

impl Throughput {
    /// The median of the rounds' hits/s.
    fn rps(&self) -> f64 {
        median(&self.rounds_rps)
    }

    fn latency(&self) -> Latency {
        Latency::of(self.samples.clone())
    }
}

#[derive(Debug)]
struct Measured {
    cairn_1: Throughput,
    nginx_1: Throughput,
    cairn_64: Throughput,
    nginx_64: Throughput,
    cairn_big: Duration,
    nginx_big: Duration,
}

/// The median of `values` (0 when empty).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<usize> {
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.get(url).send())
        .await
        .context("request timed out")??;
    if !response.status().is_success() {
        bail!("{url}: {}", response.status());
    }
    let mut stream = response.bytes_stream();
    let mut n = 0;
    while let Some(chunk) = tokio::time::timeout(REQUEST_TIMEOUT, stream.next())
        .await
        .context("body timed out")?
    {
        n += chunk?.len();
    }
    Ok(n)
}

/// One side (cairn or nginx) as the client sees it: its base URL and one
/// client per concurrency level, whose connections the warm-up opens and
/// every round reuses (so no round pays for connecting, on either side).
#[derive(Debug)]
struct Side {
    base: Arc<String>,
    single: reqwest::Client,
    many: reqwest::Client,
}

impl Side {
    fn new(base: String) -> anyhow::Result<Self> {
        Ok(Self {
            base: Arc::new(base),
            single: reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?,
            many: reqwest::Client::builder()
                .pool_max_idle_per_host(CONCURRENCY)
                .build()?,
        })
    }

    fn client(&self, concurrency: usize) -> &reqwest::Client {
        if concurrency == 1 {
            &self.single
        } else {
            &self.many
        }
    }
}

/// Concurrency of the many-clients measurement.
const CONCURRENCY: usize = 64;

/// `requests` hits of 10 KiB bodies by `concurrency` clients at once,
/// added to `into` as one round.
async fn hits(
    side: &Side,
    requests: usize,
    concurrency: usize,
    into: &mut Throughput,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let per = (requests / concurrency).max(1);
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let client = side.client(concurrency).clone();
        let base = side.base.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per);
            for i in 0..per {
                let url = format!("{base}/small/{}.bin", (w * per + i) % SMALL_FILES);
                let t = Instant::now();
                let n = get(&client, &url).await?;
                if n != SMALL_BYTES {
                    bail!("{url}: {n} bytes");
                }
                samples.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut n = 0;
    for t in tasks {
        let samples = t.await??;
        n += samples.len();
        into.samples.extend(samples);
    }
    into.rounds_rps
        .push(n as f64 / started.elapsed().as_secs_f64());
    Ok(())
}

async fn big(side: &Side) -> anyhow::Result<Duration> {
    let url = format!("{}/big.bin", side.base);
    let t = Instant::now();
    let n = get(&side.single, &url).await?;
    if n != BIG_BYTES {
        bail!("{url}: {n} bytes");
    }
    Ok(t.elapsed())
}

/// Warms both caches (every timed request is a hit, every connection is
/// open), then measures in rounds: each round runs both sides, cairn first
/// in even rounds and nginx first in odd ones (ABBA), so that what drifts
/// on a shared machine during the run falls on both.
async fn drive(
    cairn: String,
    nginx: String,
    requests: usize,
    rounds: usize,
) -> anyhow::Result<Measured> {
    let sides = [Side::new(cairn)?, Side::new(nginx)?];
    for side in &sides {
        for i in 0..SMALL_FILES {
            get(&side.single, &format!("{}/small/{i}.bin", side.base)).await?;
        }
        big(side).await?;
        // Untimed runs so connections open and caches settle.
        hits(
            side,
            10 * CONCURRENCY,
            CONCURRENCY,
            &mut Throughput::default(),
        )
        .await?;
        hits(side, 100, 1, &mut Throughput::default()).await?;
    }
    let mut single = [Throughput::default(), Throughput::default()];
    let mut many = [Throughput::default(), Throughput::default()];
    let mut bigs = [Vec::new(), Vec::new()];
    let order = |round: usize| {
        if round.is_multiple_of(2) {
            [0, 1]
        } else {
            [1, 0]
        }
    };
    for round in 0..rounds {
        for s in order(round) {
            hits(&sides[s], requests / 4 / rounds, 1, &mut single[s]).await?;
        }
    }
    for round in 0..rounds {
        for s in order(round) {
            hits(&sides[s], requests / rounds, CONCURRENCY, &mut many[s]).await?;
        }
    }
    for round in 0..BIG_RUNS {
        for s in order(round) {
            bigs[s].push(big(&sides[s]).await?);
        }
    }
    let median_of = |mut runs: Vec<Duration>| {
        runs.sort();
        runs[runs.len() / 2]
    };
    let [cairn_1, nginx_1] = single;
    let [cairn_64, nginx_64] = many;
    let [cairn_big, nginx_big] = bigs;
    Ok(Measured {
        cairn_1,
        nginx_1,
        cairn_64,
        nginx_64,
        cairn_big: median_of(cairn_big),
        nginx_big: median_of(nginx_big),
    })
}

/// Fills a store alone with `entries` stored URLs (one shared body), then
/// times lookups of random ones.
fn lookups(dir: &Path, entries: usize) -> anyhow::Result<Latency> {
    let path = dir.join(format!("lookup-{entries}"));
    std::fs::create_dir_all(&path)?;
    let store = Store::open(
        StoreConfig {
            sync: false,
            ..StoreConfig::new(path.clone())
        },
        default_views(),
    )?;
    let pin = store.put(b"one shared body")?;
    let digest = pin.digest().to_string();
    let url = |i: usize| format!("https://charts.example.com/charts/chart-{i:08}.tgz");
    let stream = StreamId::artifact(0);
    let mut version = 0u64;
    let mut i = 0;
    while i < entries {
        let end = (i + FILL_BATCH).min(entries);
        let events: Vec<_> = (i..end)
            .map(|j| {
                event(Payload::ArtifactStored(ArtifactStored {
                    key: Some(ArtifactKey {
                        method: "GET".into(),
                        url: url(j),
                        vary_key: String::new(),
                    }),
                    status: 200,
                    headers: vec![],
                    vary: vec![],
                    digest: digest.clone(),
                    size: 15,
                    response_time: None,
                    upstream: String::new(),
                }))
            })
            .collect();
        let n = events.len() as u64;
        store.append(
            &stream,
            ExpectedVersion::Exact(version),
            events,
            Metadata::command("bench"),
        )?;
        version += n;
        i = end;
    }
    drop(pin);
    let headers = http::HeaderMap::new();
    let mut samples = Vec::with_capacity(LOOKUPS);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..LOOKUPS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let u = url((x % entries as u64) as usize);
        let t = Instant::now();
        let row = cairn_actors::artifact::cache::lookup_blocking(&store, &u, &headers)?;
        samples.push(t.elapsed());
        if row.is_none() {
            bail!("{u} not found in the index");
        }
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&path);
    Ok(Latency::of(samples))
}
