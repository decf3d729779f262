//! `cairn bench kv`: the key-value cache against Debian's `redis-server`
//! and a raw async-nats echo, with the same workload in the same run.
//!
//! A node runs in this process (local nats-server on a free port, temp
//! data directory); `redis-server` is spawned on a free loopback port
//! (`--save ""`, append-only file in a temp directory). The client side
//! runs on its own thread and tokio runtime.
//!
//! - **GET**: `kv.get` of preloaded keys (random order) vs (a) a raw
//!   async-nats request/reply to an echo responder answering the very
//!   bytes `kv.get` answers (the floor for any NATS service) and (b) Redis
//!   `GET` through the `redis` crate (one multiplexed connection); value
//!   sizes 100 B and 10 KiB, concurrency 1 and 64.
//! - **SET**: `kv.set` with `kv.durability = sync` vs Redis `appendonly
//!   yes, appendfsync always`, and `batched` vs `appendfsync everysec`;
//!   100-byte values, concurrency 1 and 64. In the same run, the SETs'
//!   **design peer** ([`SetPeer`]): a plain responder doing the NATS work
//!   the design asks of a set — the request, the reply, and the set's
//!   event published on JetStream with `Nats-Msg-Id` — and nothing else
//!   (no log, no views, no fsync): what a set answered by request and
//!   reply, its event published as one JetStream message, can at best do
//!   on this machine.
//! - **Memory**: the process's RSS growth per `--memory-entries` entries
//!   (the node at its default `kv.memory-max-bytes`: the memory tier
//!   bounded, the rest on disk; GETs and SETs run with a 1 GiB tier)
//!   of 100 bytes set through the service vs Redis `used_memory` growth for
//!   the same.
//! - **Compaction**: `--compaction-sets` sets over `--compaction-keys`
//!   keys appended to a store's `kv/` class, compacted: the events left.
//!
//! Latencies are per request, from send to reply; throughput is requests
//! over the wall time of the run. Last line:
//! `kv: get_p50=<µs> echo_p50=<µs> redis_get_p50=<µs> set_p50=<µs>
//! redis_set_p50=<µs> ratio_get_redis=<r> ratio_set_redis=<r>` for 100-byte
//! values at concurrency 1, `set` being `sync` vs `appendfsync always`.

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

use super::cache::{node_config, Latency};
use crate::{config::KvDurability, node::Node};

/// The memory tier of the GET and SET runs: every preloaded key fits, so
/// a GET measures the memory-tier path.
const GET_MEMORY_MAX_BYTES: u64 = 1 << 30;

/// Options of `cairn bench kv`.
#[derive(Debug, Clone)]
pub struct KvOptions {
    /// Keys preloaded for the GETs of 100-byte values (10 KiB values use a
    /// tenth of them).
    pub keys: usize,
    /// Timed requests per measurement.
    pub requests: usize,
    /// Entries of the memory measurement.
    pub memory_entries: usize,
    /// Sets of the compaction measurement.
    pub compaction_sets: usize,
    /// Distinct keys of the compaction measurement.
    pub compaction_keys: usize,
    /// The measurements to run.
    pub phases: Vec<KvPhase>,
    /// Requests in flight of the GET and SET measurements (1 and 64).
    pub concurrency: Vec<usize>,
}

/// One measurement of `cairn bench kv` (`--phases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvPhase {
    /// GETs vs the echo and Redis.
    Get,
    /// SETs with `sync` durability vs `appendfsync always`.
    SetSync,
    /// SETs with `batched` durability vs `appendfsync everysec`.
    SetBatched,
    /// RSS per entry vs Redis `used_memory`.
    Memory,
    /// Rewrites compacted.
    Compaction,
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
struct Run {
    latency: Latency,
    per_sec: f64,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `p50=…µs p99=…µs …/s` of a run.
fn figures(run: &Run) -> String {
    format!(
        "p50={:.0}µs p99={:.0}µs {:.0}/s",
        us(run.latency.p50),
        us(run.latency.p99),
        run.per_sec
    )
}

/// Runs `requests` calls of `call(i)` with `concurrency` in flight.
async fn drive<F, Fut>(requests: usize, concurrency: usize, call: F) -> anyhow::Result<Run>
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let started = Instant::now();
    let per_task = requests.div_ceil(concurrency.max(1));
    let mut tasks = Vec::new();
    for t in 0..concurrency.max(1) {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let at = Instant::now();
                call(t * per_task + i).await?;
                samples.push(at.elapsed());
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Vec::with_capacity(requests);
    for task in tasks {
        samples.extend(task.await??);
    }
    let wall = started.elapsed();
    let n = samples.len();
    Ok(Run {
        latency: Latency::of(samples),
        per_sec: n as f64 / wall.as_secs_f64().max(1e-9),
    })
}

/// A `redis-server` on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "starting redis-server (install it with ./dev, Debian package redis-server)",
            )?;
        Ok(Self {
            child,
            port,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn redis_connect(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.get_multiplexed_async_connection().await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).context("connecting to redis-server"),
        }
    }
}

async fn redis_info_used_memory(
    con: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(con).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no used_memory in INFO memory")
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Whether a reply is a service error (every reply carries headers, such
/// as the node's last sequence: the error code header tells).
fn is_error(reply: &async_nats::Message) -> bool {
    reply
        .headers
        .as_ref()
        .is_some_and(|h| h.get("Nats-Service-Error-Code").is_some())
}

fn value_of(size: usize, i: usize) -> String {
    let mut v = format!("{i:08}");
    v.push_str(&"x".repeat(size.saturating_sub(v.len())));
    v
}

/// Runs `cairn bench kv`: the phases `options.phases` names, in their
/// fixed order.
pub fn kv(options: &KvOptions, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let runs = |phase| options.phases.contains(&phase);
    let redis = Redis::start()?;
    let gets_run = if runs(KvPhase::Get) {
        let (redis_url, options) = (redis.url(), options.clone());
        let (get, echo, redis_get) = with_node(
            KvDurability::Sync,
            GET_MEMORY_MAX_BYTES,
            move |url| async move { gets(&url, &redis_url, &options).await },
        )?;
        for line in &get.1 {
            writeln!(out, "{line}")?;
        }
        Some((get.0, echo, redis_get))
    } else {
        None
    };
    let mut set_sync = None;
    for (phase, durability, fsync, name) in [
        (
            KvPhase::SetSync,
            KvDurability::Sync,
            "always",
            "set sync vs appendfsync always",
        ),
        (
            KvPhase::SetBatched,
            KvDurability::Batched,
            "everysec",
            "set batched vs appendfsync everysec",
        ),
    ] {
        if !runs(phase) {
            continue;
        }
        let SetRuns { cairn, peer, redis } = {
            let (redis_url, options) = (redis.url(), options.clone());
            with_node(durability, GET_MEMORY_MAX_BYTES, move |url| async move {
                sets(&url, &redis_url, &options, fsync).await
            })?
        };
        for (c, ((a, b), p)) in options
            .concurrency
            .iter()
            .zip(cairn.iter().zip(redis.iter()).zip(peer.iter()))
        {
            writeln!(
                out,
                "kv {name}, 100 B, concurrency {c}: cairn {}; redis {}; p50 ratio {:.2}, throughput ratio {:.2}",
                figures(a),
                figures(b),
                us(a.latency.p50) / us(b.latency.p50).max(1e-9),
                a.per_sec / b.per_sec.max(1e-9),
            )?;
            writeln!(
                out,
                "kv {name}, 100 B, concurrency {c}: design peer (request/reply + the set's event published on JetStream, no storage) {}; peer/redis p50 ratio {:.2}, throughput ratio {:.2}; cairn/peer throughput {:.2}",
                figures(p),
                us(p.latency.p50) / us(b.latency.p50).max(1e-9),
                p.per_sec / b.per_sec.max(1e-9),
                a.per_sec / p.per_sec.max(1e-9),
            )?;
        }
        if phase == KvPhase::SetSync {
            set_sync = Some((cairn, redis));
        }
    }
    if runs(KvPhase::Memory) {
        // The node as configured by default: its memory tier holds at most
        // kv.memory-max-bytes, the rest is on disk (RocksDB).
        let memory_tier = crate::config::KvSection::default().memory_max_bytes;
        let (rss, used) = {
            let (redis_url, options) = (redis.url(), options.clone());
            with_node(KvDurability::Batched, memory_tier, move |url| async move {
                memory(&url, &redis_url, &options).await
            })?
        };
        writeln!(
            out,
            "kv memory: {} entries of 100 B (cairn's memory tier at its default {} MiB, the rest on disk): cairn RSS +{:.1} MiB, redis used_memory +{:.1} MiB, ratio {:.2}",
            options.memory_entries,
            memory_tier >> 20,
            rss as f64 / 1048576.0,
            used as f64 / 1048576.0,
            rss as f64 / (used as f64).max(1.0)
        )?;
    }
    if runs(KvPhase::Compaction) {
        let (sets, kept) = compaction(options)?;
        writeln!(
            out,
            "kv compaction: {sets} sets over {} keys: {kept} kv events left in the log after compaction",
            options.compaction_keys
        )?;
    }
    let (Some((get, echo, redis_get)), Some((set_sync, redis_always))) = (gets_run, set_sync)
    else {
        return Ok(());
    };
    if options.concurrency.first() != Some(&1) {
        return Ok(());
    }
    let g = &get[0];
    let e = &echo[0];
    let r = &redis_get[0];
    let s = &set_sync[0];
    let rs = &redis_always[0];
    writeln!(
        out,
        "kv: get_p50={:.0} echo_p50={:.0} redis_get_p50={:.0} set_p50={:.0} redis_set_p50={:.0} ratio_get_redis={:.2} ratio_set_redis={:.2}",
        us(g.latency.p50),
        us(e.latency.p50),
        us(r.latency.p50),
        us(s.latency.p50),
        us(rs.latency.p50),
        us(g.latency.p50) / us(r.latency.p50).max(1e-9),
        us(s.latency.p50) / us(rs.latency.p50).max(1e-9),
    )?;
    Ok(())
}

/// Starts a node with `durability`, runs `work(nats url)` on a client
/// thread, stops the node.
fn with_node<T, F, Fut>(
    durability: KvDurability,
    memory_max_bytes: u64,
    work: F,
) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let dir = tempfile::tempdir()?;
    let mut config = node_config(&dir.path().join("data"));
    config.kv.durability = durability;
    config.kv.sweep_interval = Duration::ZERO;
    config.kv.memory_max_bytes = memory_max_bytes;
    config.service.max_concurrent_requests = 1024;
    let system = actix::System::new();
    system.block_on(async {
        let node = Node::start(config).await?;
        let url = node.nats_url.clone();
        let (done, outcome) = tokio::sync::oneshot::channel();
        let client_side = std::thread::spawn(move || {
            let outcome = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(work(url)));
            let _ = done.send(outcome);
        });
        let outcome = outcome
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("benchmark client panicked")));
        let _ = client_side.join();
        node.shutdown().await;
        outcome
    })
}

type GetRuns = (Vec<Run>, Vec<String>);

/// GETs: per (size, concurrency), cairn, echo and redis.
async fn gets(
    url: &str,
    redis_url: &str,
    options: &KvOptions,
) -> anyhow::Result<(GetRuns, Vec<Run>, Vec<Run>)> {
    let nats = async_nats::connect(url).await?;
    let mut redis = redis_connect(redis_url).await?;
    let (mut cairn_runs, mut echo_runs, mut redis_runs, mut lines) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for size in [100usize, 10 * 1024] {
        let keys = if size == 100 {
            options.keys
        } else {
            (options.keys / 10).max(1)
        };
        // Preload, 64 at a time (untimed).
        let ns = format!("get{size}");
        let preload = {
            let nats = nats.clone();
            let ns = ns.clone();
            move |i: usize| {
                let nats = nats.clone();
                let body = json!({"namespace": ns, "key": format!("k{}", i % keys), "value": value_of(size, i % keys)});
                async move {
                    let reply = nats
                        .request("cairn.v1.kv.set", serde_json::to_vec(&body)?.into())
                        .await?;
                    anyhow::ensure!(!is_error(&reply), "kv.set failed: {:?}", reply.payload);
                    Ok(())
                }
            }
        };
        drive(keys, 64, preload).await?;
        let mut pipe = redis::pipe();
        for i in 0..keys {
            pipe.set(format!("{ns}:k{i}"), value_of(size, i)).ignore();
            if i % 1000 == 999 || i + 1 == keys {
                let _: () = pipe.query_async(&mut redis).await?;
                pipe = redis::pipe();
            }
        }
        // The echo answers exactly what kv.get answers for one key: its
        // headers (`Cairn-Seq`, which every reply carries) and its body.
        let sample = nats
            .request(
                "cairn.v1.kv.get",
                serde_json::to_vec(&json!({"namespace": ns, "key": "k0"}))?.into(),
            )
            .await?;
        let reply_headers = sample.headers.clone().unwrap_or_default();
        let sample = sample.payload;
        let echo_subject = format!("bench.echo.{}", std::process::id());
        let echo_nats = async_nats::connect(url).await?;
        let mut echo_sub = echo_nats.subscribe(echo_subject.clone()).await?;
        echo_nats.flush().await?;
        let reply_bytes: Bytes = sample.clone();
        let echo_task = tokio::spawn(async move {
            while let Some(m) = echo_sub.next().await {
                if let Some(reply) = m.reply {
                    let _ = echo_nats
                        .publish_with_headers(reply, reply_headers.clone(), reply_bytes.clone())
                        .await;
                }
            }
        });
        for &concurrency in &options.concurrency {
            let requests = options.requests;
            let cairn = {
                let nats = nats.clone();
                let ns = ns.clone();
                move |i: usize| {
                    let nats = nats.clone();
                    let k = (i.wrapping_mul(2_654_435_761)) % keys;
                    let body =
                        serde_json::to_vec(&json!({"namespace": ns, "key": format!("k{k}")}));
                    async move {
                        let reply = nats.request("cairn.v1.kv.get", body?.into()).await?;
                        anyhow::ensure!(!is_error(&reply), "kv.get failed");
                        Ok(())
                    }
                }
            };
            let c = drive(requests, concurrency, cairn).await?;
            let echo = {
                let nats = nats.clone();
                let subject = echo_subject.clone();
                let ns = ns.clone();
                move |i: usize| {
                    let nats = nats.clone();
                    let subject = subject.clone();
                    let k = (i.wrapping_mul(2_654_435_761)) % keys;
                    let body =
                        serde_json::to_vec(&json!({"namespace": ns, "key": format!("k{k}")}));
                    async move {
                        nats.request(subject, body?.into()).await?;
                        Ok(())
                    }
                }
            };
            let e = drive(requests, concurrency, echo).await?;
            let rget = {
                let redis = redis.clone();
                let ns = ns.clone();
                move |i: usize| {
                    let mut redis = redis.clone();
                    let k = (i.wrapping_mul(2_654_435_761)) % keys;
                    let key = format!("{ns}:k{k}");
                    async move {
                        let v: Option<Vec<u8>> =
                            redis::cmd("GET").arg(key).query_async(&mut redis).await?;
                        anyhow::ensure!(v.is_some(), "redis GET missed");
                        Ok(())
                    }
                }
            };
            let r = drive(requests, concurrency, rget).await?;
            lines.push(format!(
                "kv get, {size} B, {keys} keys, concurrency {concurrency}: cairn {}; echo {}; redis {}; p50 cairn/echo {:.2}, cairn/redis {:.2}, echo/redis {:.2}",
                figures(&c),
                figures(&e),
                figures(&r),
                us(c.latency.p50) / us(e.latency.p50).max(1e-9),
                us(c.latency.p50) / us(r.latency.p50).max(1e-9),
                us(e.latency.p50) / us(r.latency.p50).max(1e-9),
            ));
            cairn_runs.push(c);
            echo_runs.push(e);
            redis_runs.push(r);
        }
        echo_task.abort();
    }
    Ok(((cairn_runs, lines), echo_runs, redis_runs))
}

/// SETs of 100-byte values at concurrency 1 and 64: cairn, then redis with
/// `appendfsync` = `fsync`.
async fn sets(
    url: &str,
    redis_url: &str,
    options: &KvOptions,
    fsync: &str,
) -> anyhow::Result<SetRuns> {
    let nats = async_nats::connect(url).await?;
    let mut redis = redis_connect(redis_url).await?;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg(fsync)
        .query_async(&mut redis)
        .await?;
    let (mut c_runs, mut p_runs, mut r_runs) = (Vec::new(), Vec::new(), Vec::new());
    let keys = options.keys.max(1);
    let mut set_peer = SetPeer::new();
    for &concurrency in &options.concurrency {
        let requests = options.requests;
        let cairn = {
            let nats = nats.clone();
            move |i: usize| {
                let nats = nats.clone();
                let body = serde_json::to_vec(
                    &json!({"namespace": "set", "key": format!("k{}", i % keys), "value": value_of(100, i)}),
                );
                async move {
                    let reply = nats.request("cairn.v1.kv.set", body?.into()).await?;
                    anyhow::ensure!(!is_error(&reply), "kv.set failed");
                    Ok(())
                }
            }
        };
        c_runs.push(drive(requests, concurrency, cairn).await?);
        let peer = {
            let nats = nats.clone();
            let subject = set_peer.subject.clone();
            move |i: usize| {
                let nats = nats.clone();
                let subject = subject.clone();
                let body = serde_json::to_vec(
                    &json!({"namespace": "set", "key": format!("k{}", i % keys), "value": value_of(100, i)}),
                );
                async move {
                    nats.request(subject, body?.into()).await?;
                    Ok(())
                }
            }
        };
        if set_peer.task.is_none() {
            set_peer.start(url, &nats).await?;
        }
        p_runs.push(drive(requests, concurrency, peer).await?);
        let rset = {
            let redis = redis.clone();
            move |i: usize| {
                let mut redis = redis.clone();
                async move {
                    let _: () = redis::cmd("SET")
                        .arg(format!("set:k{}", i % keys))
                        .arg(value_of(100, i))
                        .query_async(&mut redis)
                        .await?;
                    Ok(())
                }
            }
        };
        r_runs.push(drive(requests, concurrency, rset).await?);
    }
    set_peer.stop(&nats).await?;
    Ok(SetRuns {
        cairn: c_runs,
        peer: p_runs,
        redis: r_runs,
    })
}

/// The SET runs of one durability: cairn, the design peer, Redis.
struct SetRuns {
    cairn: Vec<Run>,
    peer: Vec<Run>,
    redis: Vec<Run>,
}

/// The design peer of the SETs: the NATS work the design asks of a set,
/// without cairn. A responder (on the client's runtime, its own
/// connection) that, for each request, publishes the event of a set of
/// cairn's — the same body and headers (taken from `CAIRN_EVENTS`), a new
/// `Nats-Msg-Id` — to a JetStream stream of its own on the node's server
/// (file storage, as `CAIRN_EVENTS`), with the acks awaited pipelined as
/// the Publisher does, and answers the bytes `kv.set` answered. It stores
/// nothing and awaits no ack before answering: an upper bound for a set
/// answered by request and reply whose event is published as one
/// JetStream message (DESIGN: every state change is an event published on
/// NATS), on the same machine as the client and the server. It starts
/// once the Publisher has published every set cairn answered (so cairn's
/// backlog does not load the server while the peer runs), and
/// [`SetPeer::stop`] fails the benchmark unless every publish of the
/// peer's was stored.
struct SetPeer {
    subject: String,
    stream: String,
    task: Option<tokio::task::JoinHandle<()>>,
    acker: Option<tokio::task::JoinHandle<()>>,
    /// The peer's connection, kept until its acks are in.
    client: Option<async_nats::Client>,
    /// Publishes sent, and publishes or acks that failed.
    sent: Arc<std::sync::atomic::AtomicU64>,
    failed: Arc<std::sync::atomic::AtomicU64>,
}

/// Longest the peer waits for the Publisher's backlog, or for its own
/// acks when it stops.
const SET_PEER_WAIT: Duration = Duration::from_secs(60);

impl SetPeer {
    fn new() -> Self {
        let pid = std::process::id();
        Self {
            subject: format!("bench.setpeer.{pid}"),
            stream: format!("BENCH_SET_PEER_{pid}"),
            task: None,
            acker: None,
            client: None,
            sent: Arc::default(),
            failed: Arc::default(),
        }
    }

    /// Starts the responder once cairn has answered sets: a set is sent,
    /// and its reply and its published event are what the peer answers and
    /// publishes.
    async fn start(&mut self, url: &str, nats: &async_nats::Client) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let reply = nats
            .request(
                "cairn.v1.kv.set",
                serde_json::to_vec(
                    &json!({"namespace": "set", "key": "peer-sample", "value": value_of(100, 0)}),
                )?
                .into(),
            )
            .await?;
        anyhow::ensure!(!is_error(&reply), "kv.set failed: {:?}", reply.payload);
        let version = serde_json::from_slice::<serde_json::Value>(&reply.payload)?
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .context("kv.set's reply has no version")?;
        // The Publisher publishes in log order: once the sample's event is
        // in the stream, every set before it is too.
        let js = async_nats::jetstream::new(nats.clone());
        let mut events = js
            .get_stream(cairn_actors::publisher::PublisherConfig::default().stream_name)
            .await
            .context("the CAIRN_EVENTS stream")?;
        let deadline = Instant::now() + SET_PEER_WAIT;
        let event = loop {
            let last = events.info().await?.state.last_sequence;
            if last > 0 {
                let message = events.get_raw_message(last).await?;
                let seq = message
                    .headers
                    .get("Cairn-Seq")
                    .and_then(|v| v.as_str().parse::<u64>().ok());
                if seq == Some(version) {
                    break message;
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the Publisher did not publish event {version} within {SET_PEER_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let peer_nats = async_nats::connect(url).await?;
        self.client = Some(peer_nats.clone());
        let peer_js = async_nats::jetstream::new(peer_nats.clone());
        peer_js
            .create_stream(async_nats::jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("{}.events.>", self.subject)],
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .context("creating the design peer's stream")?;
        let mut requests = peer_nats.subscribe(self.subject.clone()).await?;
        peer_nats.flush().await?;
        let event_subject = format!("{}.events.{}", self.subject, event.subject);
        let (reply_headers, reply_body) = (reply.headers.unwrap_or_default(), reply.payload);
        let max_in_flight = cairn_actors::publisher::PublisherConfig::default().max_in_flight;
        let (acks, mut due) = tokio::sync::mpsc::channel::<
            async_nats::jetstream::context::PublishAckFuture,
        >(max_in_flight);
        let failed = self.failed.clone();
        self.acker = Some(tokio::spawn(async move {
            while let Some(ack) = due.recv().await {
                if ack.await.is_err() {
                    failed.fetch_add(1, Relaxed);
                }
            }
        }));
        let (sent, failed) = (self.sent.clone(), self.failed.clone());
        self.task = Some(tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let n = sent.load(Relaxed) + 1;
                let mut publish = async_nats::jetstream::message::PublishMessage::build()
                    .message_id(format!("set-peer-{n}"))
                    .payload(event.payload.clone());
                for (name, values) in event.headers.iter() {
                    let name: &str = name.as_ref();
                    if name.starts_with("Nats-") {
                        continue;
                    }
                    for value in values {
                        publish = publish.header(name, value.as_str());
                    }
                }
                match peer_js.send_publish(event_subject.clone(), publish).await {
                    Ok(ack) => {
                        sent.store(n, Relaxed);
                        let _ = acks.send(ack).await;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Relaxed);
                    }
                }
                if let Some(reply) = request.reply {
                    let _ = peer_nats
                        .publish_with_headers(reply, reply_headers.clone(), reply_body.clone())
                        .await;
                }
            }
        }));
        Ok(())
    }

    /// Stops the responder, waits for its acks, and checks that its
    /// stream holds every publish it sent; deletes the stream.
    async fn stop(&mut self, nats: &async_nats::Client) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let started = self.task.is_some();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        if let Some(acker) = self.acker.take() {
            // The responder's end of the channel is gone: the acker ends
            // once the acks still due are in (each within its timeout).
            tokio::time::timeout(SET_PEER_WAIT, acker)
                .await
                .context("the design peer's acks did not come in")??;
        }
        self.client = None;
        if !started {
            return Ok(());
        }
        let js = async_nats::jetstream::new(nats.clone());
        let stored = async {
            let mut stream = js.get_stream(&self.stream).await?;
            anyhow::Ok(stream.info().await?.state.messages)
        }
        .await
        .context("reading the design peer's stream");
        let _ = js.delete_stream(&self.stream).await;
        let stored = stored?;
        let (sent, failed) = (self.sent.load(Relaxed), self.failed.load(Relaxed));
        anyhow::ensure!(
            failed == 0 && stored == sent,
            "the design peer's publishes were not all stored: {sent} sent, {stored} stored, {failed} failed"
        );
        Ok(())
    }
}

/// RSS growth of this process over `memory_entries` sets of 100 bytes vs
/// Redis's `used_memory` growth.
async fn memory(url: &str, redis_url: &str, options: &KvOptions) -> anyhow::Result<(u64, u64)> {
    let nats = async_nats::connect(url).await?;
    let mut redis = redis_connect(redis_url).await?;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut redis).await?;
    let n = options.memory_entries;
    let before = rss_bytes();
    let set = {
        let nats = nats.clone();
        move |i: usize| {
            let nats = nats.clone();
            let body = serde_json::to_vec(
                &json!({"namespace": "mem", "key": format!("key:{i:09}"), "value": value_of(100, i)}),
            );
            async move {
                let reply = nats.request("cairn.v1.kv.set", body?.into()).await?;
                anyhow::ensure!(!is_error(&reply), "kv.set failed");
                Ok(())
            }
        }
    };
    drive(n, 64, set).await?;
    let rss = rss_bytes().saturating_sub(before);
    let used_before = redis_info_used_memory(&mut redis).await?;
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.set(format!("mem:key:{i:09}"), value_of(100, i))
            .ignore();
        if i % 1000 == 999 || i + 1 == n {
            let _: () = pipe.query_async(&mut redis).await?;
            pipe = redis::pipe();
        }
    }
    let used = redis_info_used_memory(&mut redis)
        .await?
        .saturating_sub(used_before);
    Ok((rss, used))
}

/// `compaction_sets` KvEntrySet events over `compaction_keys` keys in a
/// fresh store, compacted; answers (sets, kv events left).
fn compaction(options: &KvOptions) -> anyhow::Result<(usize, usize)> {
    use cairn_events::{envelope::Metadata, v1::event::Payload};
    use cairn_storage::{
        views::{default_views, kv::KvCompactionPolicy},
        EventLog, ExpectedVersion, Store, StoreConfig,
    };
    let dir = tempfile::tempdir()?;
    let mut config = StoreConfig::new(dir.path());
    config.sync = false;
    let store = Store::open(config, default_views())?;
    let per_append = 1000usize;
    let mut done = 0;
    while done < options.compaction_sets {
        let events = (done..(done + per_append).min(options.compaction_sets))
            .map(|i| {
                let k = i % options.compaction_keys.max(1);
                cairn_events::envelope::event(Payload::KvEntrySet(cairn_events::v1::KvEntrySet {
                    namespace: format!("ns{}", k % 16),
                    key: format!("k{k}"),
                    value: value_of(100, i).into_bytes(),
                    json: false,
                    tags: vec![],
                    created_at_ms: 1,
                    expires_at_ms: 0,
                }))
            })
            .collect::<Vec<_>>();
        done += events.len();
        let stream = cairn_actors::kv::partition_stream(done % cairn_actors::kv::KV_PARTITIONS);
        store.append(
            &stream,
            ExpectedVersion::Any,
            events,
            Metadata::command("bench"),
        )?;
    }
    store.compact(
        Arc::new(KvCompactionPolicy::default()),
        std::time::SystemTime::now(),
    )?;
    let mut kept = 0;
    let mut from = 1;
    loop {
        let page = store.read_all(from, 10_000)?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        kept += page.iter().filter(|e| e.stream.starts_with("kv/")).count();
    }
    Ok((options.compaction_sets, kept))
}
