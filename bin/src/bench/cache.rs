//! Benchmarks of the cache itself, each on a generated repository (see
//! [`super::gen`]) served by a node started in this process (its own local
//! nats-server on a free port, data in a temp directory), driven over NATS
//! exactly as a client would:
//!
//! - `list`: latency of a full `cairn.v1.pkgrev.list` of the repository
//!   (following `continue` tokens to the end) and of a one-package filtered
//!   list, vs a raw async-nats request/reply responder that answers the very
//!   same requests with the very same reply bytes (pre-built), so both sides
//!   make the same round trips with the same payload sizes and the client does
//!   the same work per reply (extracting the `continue` token). The full
//!   list is timed twice: with every page rendered from the view (each
//!   listing's requests padded with whitespace no earlier request had, so
//!   the page cache cannot answer: what a listing after a change costs),
//!   and repeated as is (pages from the page cache) — the benchmark's last
//!   line.
//! - `sync-first`: registering the repository with `wait` (the first sync:
//!   fetch into the node's mirror, discovery, events, views) vs
//!   `git clone --mirror` of the same repository.
//! - `sync-noop`: `repo.sync` of an unchanged repository vs `git ls-remote`
//!   of it.
//! - `memory`: the process's resident memory after registering and fully
//!   listing N revisions. The node runs inside the benchmark process, so
//!   that is the node's RSS (plus the small benchmark client; nats-server is
//!   a separate process and not counted).

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use cairn_actors::publisher;
use futures::StreamExt;
use serde::de::IgnoredAny;
use serde_json::{json, Value};

use super::gen::{self, Generated, History, Shape};
use crate::{config::NodeConfig, node::Node};

/// Namespace the benchmarks register their repository in.
pub(crate) const NAMESPACE: &str = "bench";
/// Name of the registered repository.
pub(crate) const REPOSITORY: &str = "generated";
/// Longest wait for a registration (the first sync of a large repository).
pub(crate) const REGISTER_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest wait for one list page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most pages one listing may take (a bound, far above any real listing).
const MAX_PAGES: usize = 100_000;
/// Untimed rounds before each measurement.
const WARMUP: usize = 3;

/// Options of `cairn bench list`.
#[derive(Debug, Clone)]
pub struct ListOptions {
    /// Package revisions in the generated repository.
    pub revisions: u64,
    /// Timed listings of each kind at most.
    pub iterations: usize,
    /// Stop a measurement after this long even before `iterations`.
    pub budget: Duration,
    /// `limit` of each page; `None`: the server's default (500).
    pub page_size: Option<u64>,
}

/// Options of `cairn bench sync-first`.
#[derive(Debug, Clone)]
pub struct SyncFirstOptions {
    /// Packages in the generated repository.
    pub packages: usize,
    /// Revisions per package: `revisions - 1` published tags plus the `-1`
    /// placeholder on main.
    pub revisions: usize,
}

/// Options of `cairn bench sync-noop`.
#[derive(Debug, Clone)]
pub struct SyncNoopOptions {
    /// Packages in the generated repository.
    pub packages: usize,
    /// Revisions per package (as for `sync-first`).
    pub revisions: usize,
    /// Timed syncs (and `git ls-remote` runs).
    pub iterations: usize,
}

/// Options of `cairn bench memory`.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// Package revisions in each generated repository.
    pub revisions: u64,
    /// Commit layout of the generated repositories.
    pub history: History,
    /// Repositories (each its own generated upstream) registered at once.
    pub repositories: usize,
}

/// What `cairn bench memory` measured, in MiB of the node's resident
/// memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryFigures {
    /// Once the node started, before any registration.
    pub idle_mib: f64,
    /// The peak while the repositories' first syncs ran (`VmHWM`, reset
    /// just before they were registered).
    pub peak_mib: f64,
    /// After the syncs, their events published and a full list of each.
    pub settled_mib: f64,
}

/// Latency figures of a measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Samples taken.
    pub samples: usize,
}

impl Latency {
    pub(crate) fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self {
            p50: percentile(&samples, 0.50),
            p99: percentile(&samples, 0.99),
            samples: samples.len(),
        }
    }
}

/// Nearest-rank percentile of sorted `samples`.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The node configuration of a benchmark: everything default (so a first
/// sync is split into appends of `store.append-max-events`), except a temp
/// data directory and a local nats-server on any free port.
pub fn node_config(data_dir: &Path) -> NodeConfig {
    let mut config = NodeConfig {
        data_dir: data_dir.to_path_buf(),
        ..NodeConfig::default()
    };
    config.nats.listen = "127.0.0.1:0".into();
    config.http.listen = "127.0.0.1:0".into();
    config
}

/// Generates `shape` under `dir` and says so.
pub(crate) fn generate(
    dir: &Path,
    shape: &Shape,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<Generated> {
    let generated = gen::generate(&dir.join("upstream.git"), shape)?;
    writeln!(
        out,
        "generated {} revisions ({} packages, {} tags each, {} commits on main, {} history) in {:.3}s",
        generated.revisions,
        shape.packages,
        shape.tags,
        generated.commits,
        match shape.history {
            History::Porch => "Porch-shaped",
            History::Compact => "compact",
        },
        generated.elapsed.as_secs_f64()
    )?;
    Ok(generated)
}

/// A request whose error reply (`Nats-Service-Error`) becomes an error.
pub(crate) async fn call(
    client: &async_nats::Client,
    subject: &str,
    body: Bytes,
    timeout: Duration,
) -> anyhow::Result<async_nats::Message> {
    let message = client
        .send_request(
            subject.to_owned(),
            async_nats::Request::new()
                .payload(body)
                .timeout(Some(timeout)),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{subject}: {e}"))?;
    if let Some(error) = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error"))
    {
        anyhow::bail!(
            "{subject}: {error}: {}",
            String::from_utf8_lossy(&message.payload)
        );
    }
    Ok(message)
}

/// Registers the generated repository and waits for its first sync;
/// returns the reply's `sync` object.
async fn register(client: &async_nats::Client, url: &str) -> anyhow::Result<Value> {
    register_as(client, REPOSITORY, url).await
}

/// [`register`] under the name `name`.
async fn register_as(client: &async_nats::Client, name: &str, url: &str) -> anyhow::Result<Value> {
    register_on(client, "cairn.v1.repo.register", name, url).await
}

/// [`register_as`] on `subject` (the queue group's, or one node's own
/// `cairn.node.<id>.cairn.v1.repo.register`).
pub(crate) async fn register_on(
    client: &async_nats::Client,
    subject: &str,
    name: &str,
    url: &str,
) -> anyhow::Result<Value> {
    let body = json!({
        "namespace": NAMESPACE,
        "name": name,
        "git": {"url": url, "branch": "main"},
        "wait": true,
    });
    let reply = call(
        client,
        subject,
        serde_json::to_vec(&body)?.into(),
        REGISTER_TIMEOUT,
    )
    .await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    let sync = reply["sync"].clone();
    if let Some(error) = sync.get("error") {
        anyhow::bail!("first sync failed: {error}");
    }
    Ok(sync)
}

/// What a client needs from a page: the token, and how many items it held.
#[derive(serde::Deserialize)]
struct PageHead {
    #[serde(rename = "continue")]
    token: Option<String>,
    items: Vec<IgnoredAny>,
}

/// A listing's requests and replies, in order.
type Exchanges = Vec<(Bytes, Bytes)>;

/// One listing, following `continue` tokens to the end: returns the
/// requests sent and the replies received (only when `keep`; else empty),
/// the number of pages and the item count.
async fn list_all(
    client: &async_nats::Client,
    subject: &str,
    filter: &Value,
    keep: bool,
) -> anyhow::Result<(Exchanges, usize, u64)> {
    list_all_padded(client, subject, filter, keep, 0).await
}

/// [`list_all`], each request followed by `pad` spaces: the same listing
/// in bytes no earlier request had, so no page comes from the node's page
/// cache.
async fn list_all_padded(
    client: &async_nats::Client,
    subject: &str,
    filter: &Value,
    keep: bool,
    pad: usize,
) -> anyhow::Result<(Exchanges, usize, u64)> {
    let mut body = filter.clone();
    let mut exchanges = Vec::new();
    let mut items = 0u64;
    let mut pages = 0usize;
    for _ in 0..MAX_PAGES {
        let mut request = serde_json::to_vec(&body)?;
        request.resize(request.len() + pad, b' ');
        let request: Bytes = request.into();
        let reply = call(client, subject, request.clone(), PAGE_TIMEOUT).await?;
        let head: PageHead = serde_json::from_slice(&reply.payload)
            .with_context(|| format!("{subject}: reply is not a page"))?;
        items += head.items.len() as u64;
        pages += 1;
        if keep {
            exchanges.push((request, reply.payload));
        }
        match head.token {
            Some(token) => body["continue"] = token.into(),
            None => return Ok((exchanges, pages, items)),
        }
    }
    anyhow::bail!("{subject}: listing did not end within {MAX_PAGES} pages")
}

/// Times `round` up to `iterations` times (after [`WARMUP`] untimed
/// rounds), stopping early once `budget` is spent.
async fn measure<F, Fut>(
    iterations: usize,
    budget: Duration,
    mut round: F,
) -> anyhow::Result<Latency>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for _ in 0..WARMUP {
        round().await?;
    }
    let started = Instant::now();
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        let t = Instant::now();
        round().await?;
        samples.push(t.elapsed());
        if started.elapsed() > budget {
            break;
        }
    }
    Ok(Latency::of(samples))
}

/// A raw async-nats responder on `subject` that answers each request whose
/// body is a key of `replies` with the pre-built reply (anything else gets
/// an empty reply).
async fn raw_responder(
    client: &async_nats::Client,
    subject: String,
    replies: HashMap<Bytes, Bytes>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut subscription = client.subscribe(subject).await?;
    client.flush().await?;
    let client = client.clone();
    Ok(tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            let Some(reply_to) = message.reply else {
                continue;
            };
            let payload = replies.get(&message.payload).cloned().unwrap_or_default();
            if client.publish(reply_to, payload).await.is_err() {
                return;
            }
        }
    }))
}

/// The running node of a benchmark and a client of it.
pub(crate) struct Running {
    pub(crate) node: Node,
    pub(crate) client: async_nats::Client,
}

pub(crate) async fn start_node(data_dir: &Path) -> anyhow::Result<Running> {
    let node = Node::start(node_config(data_dir)).await?;
    let client = async_nats::ConnectOptions::new()
        .name("cairn-bench")
        .connect(node.nats_url.as_str())
        .await
        .with_context(|| format!("connecting to {}", node.nats_url))?;
    Ok(Running { node, client })
}

/// Registers `generated` on `running`, then waits until every event is in
/// JetStream, so publishing does not compete with what is measured next.
pub(crate) async fn register_and_settle(
    running: &Running,
    generated: &Generated,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let sync = register(&running.client, &generated.url).await?;
    let elapsed = started.elapsed();
    let added = sync["added"].as_u64().unwrap_or(0);
    writeln!(
        out,
        "registered (first sync) in {:.3}s: {added} revisions added",
        elapsed.as_secs_f64()
    )?;
    anyhow::ensure!(
        added == generated.revisions,
        "the first sync added {added} revisions, the repository holds {}",
        generated.revisions
    );
    let flushed = Instant::now();
    let cursor = running
        .node
        .publisher()
        .expect("a single node publishes")
        .send(publisher::Flush {
            timeout: Duration::from_secs(600),
        })
        .await??;
    writeln!(
        out,
        "events published to JetStream (cursor {cursor}) {:.3}s later",
        flushed.elapsed().as_secs_f64()
    )?;
    Ok(elapsed)
}

/// Runs `cairn bench list`; returns (full list, raw) latencies.
pub fn list(
    options: &ListOptions,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(Latency, Latency)> {
    let dir = tempfile::tempdir()?;
    let shape = Shape::for_revisions(options.revisions, 5);
    let generated = generate(dir.path(), &shape, out)?;
    let system = actix::System::new();
    system.block_on(async {
        let running = start_node(&dir.path().join("node")).await?;
        let result = list_inner(options, &shape, &generated, &running, out).await;
        running.node.shutdown().await;
        result
    })
}

async fn list_inner(
    options: &ListOptions,
    shape: &Shape,
    generated: &Generated,
    running: &Running,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(Latency, Latency)> {
    register_and_settle(running, generated, out).await?;
    let client = &running.client;
    let subject = "cairn.v1.pkgrev.list";

    // (a) the whole repository.
    let mut full = json!({"namespace": NAMESPACE, "repository": REPOSITORY});
    if let Some(limit) = options.page_size {
        full["limit"] = limit.into();
    }
    let (exchanges, _, items) = list_all(client, subject, &full, true).await?;
    anyhow::ensure!(
        items == generated.revisions,
        "a full list returned {items} items, the repository holds {}",
        generated.revisions
    );
    let bytes: usize = exchanges.iter().map(|(_, reply)| reply.len()).sum();
    writeln!(
        out,
        "full list: {items} items in {} pages, {bytes} reply bytes",
        exchanges.len()
    )?;
    let expected_pages = exchanges.len();
    // Uncached: every listing's requests are new bytes, so every page is
    // scanned and joined again (what any listing after a change costs).
    let mut round = 0;
    let cairn = measure(options.iterations, options.budget, || {
        round += 1;
        let pad = round;
        let full = &full;
        async move {
            let (_, pages, n) = list_all_padded(client, subject, full, false, pad).await?;
            anyhow::ensure!(n == items && pages == expected_pages, "listing changed");
            Ok(())
        }
    })
    .await?;
    writeln!(
        out,
        "full list: cairn p50={:.2}ms p99={:.2}ms ({} listings, every page rendered)",
        ms(cairn.p50),
        ms(cairn.p99),
        cairn.samples
    )?;
    // Repeated: the same requests again, pages from the page cache.
    let cached = measure(options.iterations, options.budget, || async {
        let (_, pages, n) = list_all(client, subject, &full, false).await?;
        anyhow::ensure!(n == items && pages == expected_pages, "listing changed");
        Ok(())
    })
    .await?;
    writeln!(
        out,
        "full list: cairn repeated p50={:.2}ms p99={:.2}ms ({} listings, pages from the page cache)",
        ms(cached.p50),
        ms(cached.p99),
        cached.samples
    )?;

    // raw: the same requests answered with the same bytes, pre-built.
    let raw_subject = format!("bench.raw{}.list", std::process::id());
    let replies: HashMap<Bytes, Bytes> = exchanges.iter().cloned().collect();
    let responder = raw_responder(client, raw_subject.clone(), replies).await?;
    let raw = measure(options.iterations, options.budget, || async {
        let (_, pages, n) = list_all(client, &raw_subject, &full, false).await?;
        anyhow::ensure!(n == items && pages == expected_pages, "raw listing differs");
        Ok(())
    })
    .await;
    responder.abort();
    let raw = raw?;
    writeln!(
        out,
        "full list: raw request/reply p50={:.2}ms p99={:.2}ms ({} listings, {} round trips each)",
        ms(raw.p50),
        ms(raw.p99),
        raw.samples,
        expected_pages
    )?;

    // (b) one package.
    let package = gen::package_name(shape.packages / 2);
    let one = json!({"namespace": NAMESPACE, "repository": REPOSITORY, "package": package});
    let (_, pages, n) = list_all(client, subject, &one, false).await?;
    let filtered = measure(options.iterations, options.budget, || async {
        list_all(client, subject, &one, false).await.map(|_| ())
    })
    .await?;
    writeln!(
        out,
        "filtered list (package {package}: {n} items, {} pages): p50={:.2}ms p99={:.2}ms ({} listings)",
        pages,
        ms(filtered.p50),
        ms(filtered.p99),
        filtered.samples
    )?;

    writeln!(
        out,
        "full list, every page rendered: ratio={:.2}",
        cairn.p50.as_secs_f64() / raw.p50.as_secs_f64().max(1e-9)
    )?;
    // The benchmark's figure: the same full listing, repeated.
    writeln!(
        out,
        "list: p50={:.2} p99={:.2} raw_p50={:.2} ratio={:.2}",
        ms(cached.p50),
        ms(cached.p99),
        ms(raw.p50),
        cached.p50.as_secs_f64() / raw.p50.as_secs_f64().max(1e-9)
    )?;
    Ok((cached, raw))
}

/// Runs `cairn bench sync-first`; returns (cairn, git clone) durations.
pub fn sync_first(
    options: &SyncFirstOptions,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let shape = Shape::new(options.packages.max(1), options.revisions.max(2) - 1);
    let generated = generate(dir.path(), &shape, out)?;

    let system = actix::System::new();
    let cairn = system.block_on(async {
        let started = Instant::now();
        let running = start_node(&dir.path().join("node")).await?;
        writeln!(
            out,
            "node started in {:.3}s",
            started.elapsed().as_secs_f64()
        )?;
        let result = register_and_settle(&running, &generated, out).await;
        running.node.shutdown().await;
        result
    })?;

    let target = dir.path().join("clone.git");
    let started = Instant::now();
    let output = std::process::Command::new("git")
        .args(["clone", "--mirror", "--quiet", &generated.url])
        .arg(&target)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running git clone --mirror")?;
    let git = started.elapsed();
    anyhow::ensure!(
        output.status.success(),
        "git clone --mirror failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    writeln!(
        out,
        "git clone --mirror {} in {:.3}s",
        generated.url,
        git.as_secs_f64()
    )?;
    writeln!(
        out,
        "sync_first: cairn={:.3} git_clone={:.3} ratio={:.2}",
        cairn.as_secs_f64(),
        git.as_secs_f64(),
        cairn.as_secs_f64() / git.as_secs_f64().max(1e-9)
    )?;
    Ok((cairn, git))
}

/// Runs `cairn bench sync-noop`; returns (cairn, `git ls-remote`) p50s.
///
/// After the first sync, times `repo.sync` of the unchanged repository
/// (SyncStarted, a fetch that finds every ref as the last sync left it,
/// SyncSucceeded: two fsynced appends and one `upload-pack` ref
/// advertisement) against `git ls-remote` of the same URL, each
/// `iterations` times after warm-ups.
pub fn sync_noop(
    options: &SyncNoopOptions,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(Latency, Latency)> {
    let dir = tempfile::tempdir()?;
    let shape = Shape::new(options.packages.max(1), options.revisions.max(2) - 1);
    let generated = generate(dir.path(), &shape, out)?;
    let system = actix::System::new();
    let cairn = system.block_on(async {
        let running = start_node(&dir.path().join("node")).await?;
        let result = async {
            register_and_settle(&running, &generated, out).await?;
            let body: Bytes =
                serde_json::to_vec(&json!({"namespace": NAMESPACE, "name": REPOSITORY}))?.into();
            let client = &running.client;
            measure(options.iterations, Duration::from_secs(600), || {
                let body = body.clone();
                async move {
                    let reply = call(client, "cairn.v1.repo.sync", body, REGISTER_TIMEOUT).await?;
                    let reply: Value = serde_json::from_slice(&reply.payload)?;
                    let sync = &reply["sync"];
                    anyhow::ensure!(
                        sync["added"] == 0 && sync["modified"] == 0 && sync["deleted"] == 0,
                        "an unchanged repository synced changes: {sync}"
                    );
                    Ok(())
                }
            })
            .await
        }
        .await;
        running.node.shutdown().await;
        result
    })?;
    writeln!(
        out,
        "repo.sync, nothing changed: p50={:.2}ms p99={:.2}ms ({} syncs)",
        ms(cairn.p50),
        ms(cairn.p99),
        cairn.samples
    )?;

    let ls_remote = || -> anyhow::Result<Duration> {
        let started = Instant::now();
        let output = std::process::Command::new("git")
            .args(["ls-remote", &generated.url])
            .stdin(std::process::Stdio::null())
            .output()
            .context("running git ls-remote")?;
        anyhow::ensure!(
            output.status.success(),
            "git ls-remote failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(started.elapsed())
    };
    for _ in 0..WARMUP {
        ls_remote()?;
    }
    let samples = (0..options.iterations.max(1))
        .map(|_| ls_remote())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let git = Latency::of(samples);
    writeln!(
        out,
        "git ls-remote {}: p50={:.2}ms p99={:.2}ms ({} runs)",
        generated.url,
        ms(git.p50),
        ms(git.p99),
        git.samples
    )?;
    writeln!(
        out,
        "sync_noop: cairn={:.2} ls_remote={:.2} ratio={:.2}",
        ms(cairn.p50),
        ms(git.p50),
        cairn.p50.as_secs_f64() / git.p50.as_secs_f64().max(1e-9)
    )?;
    Ok((cairn, git))
}

/// Resident memory of this process from `/proc/self/status`, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the peak of `VmRSS`.
    pub peak: u64,
    /// `RssAnon`: heap and other anonymous memory.
    pub anon: u64,
    /// `RssFile`: mapped files (binary, libraries, mmapped Git packs, RocksDB files).
    pub file: u64,
}

impl std::fmt::Display for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rss {:.1} MiB (anon {:.1}, file {:.1}; peak {:.1})",
            mib(self.rss),
            mib(self.anon),
            mib(self.file),
            mib(self.peak)
        )
    }
}

/// This process's resident memory.
pub fn resident() -> anyhow::Result<Resident> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("/proc/self/status has no {name}"))
    };
    Ok(Resident {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
    })
}

/// What RocksDB says it holds, for the memory figures.
fn rocksdb_usage(node: &Node) -> String {
    let usage = node.store.memory_usage();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    format!(
        "RocksDB memtables {:.1} MiB, block cache {:.1} MiB, table readers {:.1} MiB",
        mib(usage.memtables),
        mib(usage.block_cache),
        mib(usage.table_readers)
    )
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Resets this process's `VmHWM` to its current `VmRSS` (Linux: `5` into
/// `/proc/self/clear_refs`), so the next peak read is the peak from now.
fn reset_peak() -> anyhow::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5").context("resetting VmHWM (/proc/self/clear_refs)")
}

/// Runs `cairn bench memory`; returns the idle, peak and settled RSS.
pub fn memory(
    options: &MemoryOptions,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<MemoryFigures> {
    let dir = tempfile::tempdir()?;
    let mut shape = Shape::for_revisions(options.revisions, 5);
    shape.history = options.history;
    let count = options.repositories.max(1);
    let mut upstreams = Vec::with_capacity(count);
    for i in 0..count {
        let upstream = dir.path().join(format!("upstream-{i}"));
        std::fs::create_dir_all(&upstream)?;
        upstreams.push(generate(&upstream, &shape, out)?);
    }
    writeln!(out, "before the node starts: {}", resident()?)?;

    let system = actix::System::new();
    let figures = system.block_on(async {
        let running = start_node(&dir.path().join("node")).await?;
        let result = memory_inner(&upstreams, &running, out).await;
        running.node.shutdown().await;
        result
    })?;
    writeln!(
        out,
        "memory: revisions={} repositories={count} rss_mib={:.1} peak_mib={:.1} idle_mib={:.1}",
        options.revisions, figures.settled_mib, figures.peak_mib, figures.idle_mib
    )?;
    Ok(figures)
}

async fn memory_inner(
    upstreams: &[Generated],
    running: &Running,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<MemoryFigures> {
    let idle = resident()?;
    writeln!(
        out,
        "node started: {idle}; {}",
        rocksdb_usage(&running.node)
    )?;
    reset_peak()?;
    let names: Vec<String> = (0..upstreams.len())
        .map(|i| {
            if i == 0 {
                REPOSITORY.to_owned()
            } else {
                format!("{REPOSITORY}-{i}")
            }
        })
        .collect();
    let started = Instant::now();
    let syncs = names
        .iter()
        .zip(upstreams)
        .map(|(name, generated)| register_as(&running.client, name, &generated.url));
    let replies = futures::future::join_all(syncs).await;
    let elapsed = started.elapsed();
    for ((name, generated), reply) in names.iter().zip(upstreams).zip(replies) {
        let added = reply?["added"].as_u64().unwrap_or(0);
        anyhow::ensure!(
            added == generated.revisions,
            "the first sync of {name} added {added} revisions, the repository holds {}",
            generated.revisions
        );
    }
    let synced = resident()?;
    writeln!(
        out,
        "{} first syncs at once in {:.3}s: {synced}; {}",
        names.len(),
        elapsed.as_secs_f64(),
        rocksdb_usage(&running.node)
    )?;
    let cursor = running
        .node
        .publisher()
        .expect("a single node publishes")
        .send(publisher::Flush {
            timeout: Duration::from_secs(600),
        })
        .await??;
    writeln!(out, "events published to JetStream (cursor {cursor})")?;
    let started = Instant::now();
    let mut listed = 0;
    for (name, generated) in names.iter().zip(upstreams) {
        let filter = json!({"namespace": NAMESPACE, "repository": name});
        let (_, _, items) =
            list_all(&running.client, "cairn.v1.pkgrev.list", &filter, false).await?;
        anyhow::ensure!(
            items == generated.revisions,
            "a full list of {name} returned {items} items, the repository holds {}",
            generated.revisions
        );
        listed += items;
    }
    let after = resident()?;
    writeln!(
        out,
        "after a full list of each ({listed} items, {:.3}s): {after}; {}; \
         the node runs in this process, so this is the node's RSS (nats-server not included)",
        started.elapsed().as_secs_f64(),
        rocksdb_usage(&running.node)
    )?;
    Ok(MemoryFigures {
        idle_mib: mib(idle.rss),
        peak_mib: mib(synced.peak.max(after.peak)),
        settled_mib: mib(after.rss),
    })
}
