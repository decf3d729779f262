//! The cluster benchmarks, each on a real three-server NATS cluster on
//! loopback (JetStream R3, [`NatsCluster`]) with cairn nodes as child
//! processes of this binary (`cairn node` with `cluster.enabled`), and each
//! against its raw peer in the same run:
//!
//! - `cluster-append` ([`cluster_append`]): lifecycle-sized commits (one
//!   event each) through an owner's [`ClusterAppend`](cairn_actors::cluster::ClusterAppend) — fenced with
//!   `Nats-Expected-Last-Subject-Sequence`, answered once applied on the
//!   owner — while two more nodes apply the log, vs raw async-nats
//!   publishes of the same bytes with the same header to an R3 stream on
//!   the same servers. The in-flight window is the number of streams
//!   written at once (`--window`): a stream's commits are serial on both
//!   sides (each expects the sequence the previous one left). The owner is
//!   a member in the benchmark's process, started exactly as a node starts
//!   its cluster part ([`ClusterStart::begin`]), so that the appends are
//!   timed without a client hop.
//! - `failover` ([`failover`]): kill -9 of the node owning a repository →
//!   the first successful `repo.sync` of that repository sent to another
//!   node (on that node's own subject, retried at once on every error),
//!   five times; the killed node is started again (same data directory)
//!   between rounds.
//! - `catch-up` ([`catch_up`]): a node with an empty data directory joins a
//!   cluster whose log holds `--events` events and applies them all (log
//!   and views), timed from the start of [`ClusterStart::begin`] to its
//!   return (it returns once applied through the stream's end — readiness);
//!   in the same run a raw ordered consumer reads the same messages. The
//!   events are real: a node registers a generated repository (its first
//!   sync writes the log and ships the blobs), and its commits are
//!   published again under other repository names until the log holds
//!   `--events` events. A message carries many events (a sync's commit is
//!   one append of up to `store.append-max-events`), so both rates are
//!   given in events/s — the raw consumer's as the events its messages
//!   carry; the messages/s it read is printed on the line before. The
//!   same messages are then read with the applier's own consumer
//!   (`applier_messages`, byte-bounded pulls), printed but not the
//!   ratio's peer: what reading costs cairn itself. A further
//!   peer reads the same messages and writes each commit's events to a
//!   fresh RocksDB as per-event log rows (one unsynced batch per commit,
//!   no views): the least any replica that keeps the log must do.
//! - `cluster-read` ([`cluster_read`]): `pkgrev.list` requests from the
//!   same client load — connections spread over the three servers — sent
//!   to one node (its own subject, `cairn.node.<id>.…`) and to all three
//!   (the service's queue group); the split comes from the `Cairn-Node`
//!   header of the replies. The load is spread over the three servers as
//!   the nodes are (node and client `i` on server `i`). NATS (2.9.10) hands
//!   a queue-group message a client published to a member chosen at random
//!   across the cluster, not preferably one on the publisher's server: all
//!   the load sent through one server still split 33/33/33 (measured), so
//!   about two thirds of the requests cross a route either way. The raw
//!   peer runs the same load, in the same run, on three plain async-nats
//!   responders (`cairn bench echo-responder`, child processes placed as
//!   the nodes are, one thread each as a node's service, replies of the
//!   size of cairn's): one responder's own subject, then their queue
//!   group. Its three/one is the floor of what three processes behind a
//!   queue group on these servers and cores can do, with no coordination at
//!   all; cairn ÷ raw on each side is cairn's own cost.

use std::{
    collections::BTreeMap,
    future::IntoFuture as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_nats::{
    jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy},
    HeaderMap,
};
use bytes::Bytes;
use cairn_actors::cluster::log::{
    applier_messages, decode_commit, decode_commit_rows, encode_commit, log_consumer, subject_of,
    LOG_STREAM,
};
use cairn_events::{
    envelope::{new_id, Metadata},
    v1::{event::Payload, Envelope},
    StreamId,
};
use cairn_storage::{
    sample::marker, views::default_views, AsyncAppend as _, EventLog as _, Store, StoreConfig,
};
use futures::{stream::FuturesUnordered, StreamExt as _};
use serde_json::{json, Value};

use super::{
    cache::{call, ms, percentile, register_on, NAMESPACE},
    gen::{self, Shape},
    rate,
};
use crate::{
    cluster::ClusterStart,
    config::NodeConfig,
    local_nats::Spawner,
    nats_servers::{NatsCluster, NatsServerConfig},
};

/// What a node prints once it serves.
const READY_PREFIX: &str = "cairn node ready: NATS ";
/// What cluster-read's raw responder prints once it subscribed.
const ECHO_READY: &str = "echo responder ready";
/// Subject prefix of cluster-read's raw peer: `bench.echo` is the queue
/// group's subject, `bench.echo.<id>` a responder's own.
const ECHO_SUBJECT: &str = "bench.echo";
/// Longest wait for a node's ready line (a joining node catches up first).
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest wait of one request of a benchmark.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a failover may take before the benchmark gives up.
const FAILOVER_GIVE_UP: Duration = Duration::from_secs(120);
/// Longest wait for the cluster to settle between failover rounds.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Copies of commits in flight while the catch-up log is filled (a commit
/// is up to `max_payload`, 1 MiB).
const COPY_WINDOW: usize = 16;
/// Copies in flight when they are small (`--commit-events`, a few events
/// each): one ack round trip per 16 one-event commits would make filling
/// the log the longest part of the run.
const SMALL_COPY_WINDOW: usize = 512;
/// Events per copied commit up to which a copy counts as small.
const SMALL_COPY_MAX_EVENTS: usize = 16;
/// Events publishes awaiting their ack at once in cluster-append's design
/// peer.
const DESIGN_EVENTS_WINDOW: usize = 256;
/// Pause between two polls of the cluster's status.
const POLL: Duration = Duration::from_millis(50);

/// A child process of a benchmark — a `cairn node` in the cluster, or
/// cluster-read's raw responder; SIGKILLed (and reaped) on drop, and
/// SIGTERMed by the kernel if the benchmark dies.
struct NodeProcess {
    child: Child,
    _spawner: Spawner,
}

impl NodeProcess {
    /// Starts cluster node `id` on `data_dir`, connected to `nats_url`, its
    /// log appended to `<log_dir>/<id>.log`; waits for its ready line.
    fn start(id: &str, data_dir: &Path, nats_url: &str, log_dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the cairn binary")?;
        let mut command = Command::new(exe);
        command
            .args(["node", "--data-dir"])
            .arg(data_dir)
            .env("CAIRN_CLUSTER__ENABLED", "true")
            .env("CAIRN_CLUSTER__NODE_ID", id)
            // No snapshots: a joining node must apply the whole log.
            .env("CAIRN_CLUSTER__SNAPSHOT_INTERVAL", "0s")
            .env("CAIRN_NATS__URLS", nats_url)
            .env("CAIRN_HTTP__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn");
        Self::spawn(id, command, READY_PREFIX, log_dir)
    }

    /// Starts cluster-read's raw peer `id` ([`echo_responder`]) on
    /// `nats_url`, answering with `reply_bytes` bytes; waits until it
    /// subscribed.
    fn start_echo(
        id: &str,
        nats_url: &str,
        reply_bytes: usize,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the cairn binary")?;
        let mut command = Command::new(exe);
        command
            .args(["bench", "echo-responder", "--id", id, "--reply-bytes"])
            .arg(reply_bytes.to_string())
            .args(["--server", nats_url]);
        Self::spawn(&format!("echo-{id}"), command, ECHO_READY, log_dir)
    }

    /// Runs `command` as child `name`, its stderr appended to
    /// `<log_dir>/<name>.log`; waits for a stdout line starting with
    /// `ready`.
    fn spawn(
        name: &str,
        mut command: Command,
        ready: &str,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let (spawner, mut child) =
            Spawner::spawn(command).with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    // Nobody listens after start-up; keep draining the pipe.
                    let _ = tx.send(line);
                }
            })?;
        let mut node = Self {
            child,
            _spawner: spawner,
        };
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(ready) => return Ok(node),
                Ok(_) => {}
                Err(_) => {
                    node.kill();
                    anyhow::bail!(
                        "{name} did not say it was ready within {NODE_READY_TIMEOUT:?}; see {}",
                        log_path.display()
                    );
                }
            }
        }
    }

    /// SIGKILL, as `kill -9` would, and reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three NATS servers and the cairn nodes of a benchmark.
struct BenchCluster {
    nats: NatsCluster,
    dir: tempfile::TempDir,
    /// Node `i` runs as `n<i>` on server `i % 3`; `None` while killed.
    nodes: Vec<Option<NodeProcess>>,
}

impl BenchCluster {
    /// The NATS cluster, ready.
    fn nats(out: &mut dyn std::io::Write) -> anyhow::Result<(NatsCluster, tempfile::TempDir)> {
        let dir = tempfile::tempdir()?;
        let started = Instant::now();
        let nats =
            NatsCluster::try_start(NatsServerConfig::default()).map_err(anyhow::Error::msg)?;
        writeln!(
            out,
            "nats: three servers routed, JetStream R3 ready in {:.1}s ({})",
            started.elapsed().as_secs_f64(),
            nats.urls()
        )?;
        Ok((nats, dir))
    }

    /// The NATS cluster and `count` nodes `n0…`, each ready.
    fn start(count: usize, out: &mut dyn std::io::Write) -> anyhow::Result<Self> {
        let (nats, dir) = Self::nats(out)?;
        let mut cluster = Self {
            nats,
            dir,
            nodes: Vec::new(),
        };
        for i in 0..count {
            cluster.nodes.push(None);
            cluster.start_node(i)?;
        }
        writeln!(out, "nodes: {count} cairn nodes ready")?;
        Ok(cluster)
    }

    fn id(i: usize) -> String {
        format!("n{i}")
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(Self::id(i))
    }

    /// Starts node `i` (again) on its data directory.
    fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let node = NodeProcess::start(
            &Self::id(i),
            &self.data_dir(i),
            &self.nats.url(i % 3),
            self.dir.path(),
        )?;
        self.nodes[i] = Some(node);
        Ok(())
    }

    /// kill -9 of node `i`.
    fn kill_node(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.kill();
        }
    }

    /// A client connected to server `i % 3`.
    async fn client(&self, i: usize) -> anyhow::Result<async_nats::Client> {
        let url = self.nats.url(i % 3);
        async_nats::ConnectOptions::new()
            .name("cairn-bench")
            .connect(url.as_str())
            .await
            .with_context(|| format!("connecting to {url}"))
    }
}

/// The JSON reply of `endpoint` (`cairn.v1.…`) at node `node`'s own subject.
async fn call_node(
    client: &async_nats::Client,
    node: &str,
    endpoint: &str,
    body: &Value,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let subject = format!("cairn.node.{node}.{endpoint}");
    let reply = call(client, &subject, serde_json::to_vec(body)?.into(), timeout).await?;
    Ok(serde_json::from_slice(&reply.payload)?)
}

/// The owner of `stream` as node `node` knows it, if any.
async fn owner_of(
    client: &async_nats::Client,
    node: &str,
    stream: &str,
) -> anyhow::Result<Option<String>> {
    let status = call_node(
        client,
        node,
        "cairn.v1.cluster.status",
        &json!({}),
        REQUEST_TIMEOUT,
    )
    .await?;
    Ok(lease_owner(&status, stream))
}

/// The owner of `stream` in a `cluster.status` reply.
fn lease_owner(status: &Value, stream: &str) -> Option<String> {
    status["leases"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["stream"] == stream)
        .and_then(|l| l["owner"].as_str())
        .map(str::to_owned)
}

/// Registers `url` as repository `name` through node `node`, waiting for
/// its first sync; answers the number of revisions it added.
async fn register(
    client: &async_nats::Client,
    node: &str,
    name: &str,
    url: &str,
) -> anyhow::Result<u64> {
    let subject = format!("cairn.node.{node}.cairn.v1.repo.register");
    let sync = register_on(client, &subject, name, url).await?;
    Ok(sync["added"].as_u64().unwrap_or(0))
}

// ---------------------------------------------------------------- append

/// Options of `cairn bench cluster-append`.
#[derive(Debug, Clone)]
pub struct ClusterAppendOptions {
    /// Commits in all (one event each).
    pub commits: u64,
    /// Streams written at once: the in-flight window of both sides.
    pub window: usize,
    /// Size of the event's text: a lifecycle command's commit is one event
    /// of about this size (a revision with its resources' digests).
    pub event_bytes: usize,
}

/// Runs `cairn bench cluster-append`; returns (cairn/s, raw/s).
pub fn cluster_append(
    options: &ClusterAppendOptions,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(f64, f64)> {
    let window = options.window.max(1);
    let per_stream = (options.commits / window as u64).max(1);
    let total = per_stream * window as u64;
    // Two nodes apply the log beside the owner (server 0 is the owner's).
    let (nats, dir) = BenchCluster::nats(out)?;
    let mut cluster = BenchCluster {
        nats,
        dir,
        nodes: vec![None, None, None],
    };
    cluster.start_node(1)?;
    cluster.start_node(2)?;
    writeln!(
        out,
        "cluster-append: {total} commits of one event over {window} streams at once; nodes n1, n2 apply the log beside the owner"
    )?;
    let owner_dir = cluster.dir.path().join("owner");
    let store = Store::open(StoreConfig::new(&owner_dir), default_views())?;
    let mut config = NodeConfig {
        data_dir: owner_dir.clone(),
        ..NodeConfig::default()
    };
    config.cluster.enabled = true;
    config.cluster.snapshot_interval = Duration::ZERO;
    config.cluster.node_id = Some("bench-owner".into());
    config.nats.urls = vec![cluster.nats.url(0)];
    let text = "x".repeat(options.event_bytes);
    let system = actix::System::new();
    let result = system.block_on(async {
        let client = cluster.client(0).await?;
        let (start, _) = ClusterStart::begin(&config, &client, store.clone()).await?;
        let appender = start.appender.clone();
        let streams: Vec<StreamId> = (0..window)
            .map(|w| StreamId::new(format!("bench/append-{w}")))
            .collect::<Result<_, _>>()?;
        for stream in &streams {
            appender
                .take(stream)
                .await
                .with_context(|| format!("taking {stream}"))?;
        }

        // cairn: each stream's commits one after the other, all streams at once.
        let started = Instant::now();
        let mut writers = FuturesUnordered::new();
        for stream in &streams {
            let (appender, text) = (appender.clone(), text.clone());
            writers.push(async move {
                for version in 0..per_stream {
                    let mut outcome = appender
                        .append_chunks(
                            stream,
                            version,
                            vec![vec![marker(format!("{version:08} {text}"))]],
                            Metadata::command("bench"),
                        )
                        .await;
                    outcome
                        .pop()
                        .context("no outcome")?
                        .with_context(|| format!("appending to {stream}"))?;
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(done) = writers.next().await {
            done?;
        }
        let cairn_elapsed = started.elapsed();
        writeln!(
            out,
            "cluster-append: cairn {total} commits in {:.3}s",
            cairn_elapsed.as_secs_f64()
        )?;

        let bodies = bodies_again(&store)?;
        let size = bodies
            .values()
            .next()
            .and_then(|b| b.first())
            .map_or(0, |(_, body)| body.len());
        anyhow::ensure!(
            bodies.values().map(Vec::len).sum::<usize>() as u64 == total,
            "the owner's log holds {} of the {total} commits",
            bodies.values().map(Vec::len).sum::<usize>()
        );
        writeln!(out, "cluster-append: a commit is {size} bytes")?;

        // raw: async-nats publishes with the subject's last sequence expected.
        let js = jetstream::new(client.clone());
        let name = format!("BENCH_RAW_APPEND_{}", std::process::id());
        let root = format!("bench.rawappend{}", std::process::id());
        js.create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{root}.*")],
            storage: jetstream::stream::StorageType::File,
            num_replicas: 3,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating {name}: {e}"))?;
        let started = Instant::now();
        let mut writers = FuturesUnordered::new();
        for (w, commits) in bodies.into_values().enumerate() {
            let (js, subject) = (js.clone(), format!("{root}.s{w}"));
            writers.push(async move {
                let mut last = 0u64;
                for (id, body) in commits {
                    last = fenced_publish(&js, &subject, &id, body, last, "bench-raw").await?;
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(done) = writers.next().await {
            done?;
        }
        let raw_elapsed = started.elapsed();
        let _ = js.delete_stream(&name).await;
        writeln!(
            out,
            "cluster-append: raw async-nats {total} publishes in {:.3}s",
            raw_elapsed.as_secs_f64()
        )?;
        let design = design_peer(&cluster, &js, &bodies_again(&store)?).await?;
        writeln!(
            out,
            "cluster-append: raw with the design's NATS work (the same publishes, each answered once the publisher's ordered consumer read it back, two more consumers on servers 1 and 2 reading the stream, each message published again to an events stream as CAIRN_EVENTS gets it) {total} in {:.3}s",
            design.as_secs_f64()
        )?;
        let (c, r) = (rate(total, cairn_elapsed), rate(total, raw_elapsed));
        let d = rate(total, design);
        writeln!(
            out,
            "cluster-append: design peer {d:.0}/s = {:.2} of raw; cairn = {:.2} of the design peer",
            d / r,
            c / d
        )?;
        writeln!(
            out,
            "cluster_append: cairn={c:.0}/s raw={r:.0}/s ratio={:.2}",
            c / r
        )?;
        Ok::<_, anyhow::Error>((c, r))
    });
    drop(store);
    result
}

/// Publishes `body` (id `id`) to `subject` expecting the subject's last
/// sequence `last`, as an owner publishes a commit; answers its sequence.
async fn fenced_publish(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    body: Bytes,
    last: u64,
    node: &str,
) -> anyhow::Result<u64> {
    let publish = jetstream::message::PublishMessage::build()
        .message_id(id)
        .expected_last_subject_sequence(last)
        .header("Cairn-Node", node)
        .payload(body);
    let ack = js
        .send_publish(subject.to_owned(), publish)
        .await
        .map_err(|e| anyhow::anyhow!("{node} publish: {e}"))?
        .into_future()
        .await
        .map_err(|e| anyhow::anyhow!("{node} publish ack: {e}"))?;
    Ok(ack.sequence)
}

/// The owner's commits of the benchmark's streams, as it published them
/// (seq 0: the order assigns it), by stream: (event id, commit bytes).
type Bodies = BTreeMap<String, Vec<(String, Bytes)>>;

/// [`Bodies`] read back from the owner's store.
fn bodies_again(store: &Store) -> anyhow::Result<Bodies> {
    let mut bodies = Bodies::new();
    for mut env in store.read_all(1, usize::MAX)? {
        if !env.stream.starts_with("bench/append-") {
            continue;
        }
        env.seq = 0;
        let id = env.event_id.clone();
        bodies
            .entry(env.stream.clone())
            .or_default()
            .push((id, encode_commit(std::slice::from_ref(&env))));
    }
    Ok(bodies)
}

/// cluster-append's second peer: the NATS work of cairn's design without
/// cairn — the same fenced publishes to an R3 stream, each answered once
/// the publisher's own ordered consumer (pulling as the applier does) read
/// it back; two more ordered consumers, on servers 1 and 2 in threads of
/// their own (as nodes n1 and n2), read the stream to its end; every
/// message the publisher's consumer reads is published again, with its
/// id, to an events stream with `CAIRN_EVENTS`'s default replicas (as
/// `CAIRN_EVENTS` gets each event once).
/// No RocksDB, no views: what is left between this and cairn is cairn's.
/// Returns the time until every commit was answered (the two other
/// consumers read on meanwhile, and are waited for after).
async fn design_peer(
    cluster: &BenchCluster,
    js: &jetstream::Context,
    bodies: &Bodies,
) -> anyhow::Result<Duration> {
    let pid = std::process::id();
    let (log, log_root) = (
        format!("BENCH_DESIGN_LOG_{pid}"),
        format!("bench.designlog{pid}"),
    );
    let (events, events_root) = (
        format!("BENCH_DESIGN_EVENTS_{pid}"),
        format!("bench.designevents{pid}"),
    );
    // The events stream with `CAIRN_EVENTS`'s default replicas
    // (`publisher.stream-replicas`).
    let events_replicas = cairn_actors::publisher::PublisherConfig::default().stream_replicas;
    for (name, root, replicas) in [
        (&log, &log_root, 3),
        (&events, &events_root, events_replicas),
    ] {
        js.create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{root}.*")],
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating {name}: {e}"))?;
    }
    let total = bodies.values().map(Vec::len).sum::<usize>() as u64;
    // The replicas: their own connection and thread, as a node has.
    let mut replicas = Vec::new();
    for server in 1..3 {
        let (url, log) = (cluster.nats.url(server), log.clone());
        replicas.push(std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| {
                    runtime.block_on(async move {
                        let client = async_nats::connect(url.as_str()).await?;
                        let js = jetstream::new(client);
                        follow(&js, &log, total, |_, _| async { Ok(()) }).await
                    })
                })
        }));
    }
    let (read_tx, read_rx) = tokio::sync::watch::channel(0u64);
    let started = Instant::now();
    // The publisher's consumer: what it reads is "applied", and published
    // again as its events (acks awaited in a window, as the publisher's).
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Bytes)>();
    let own = {
        let (js, log) = (js.clone(), log.clone());
        tokio::task::spawn_local(async move {
            follow(&js, &log, total, move |position, message| {
                let _ = read_tx.send(position);
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                let _ = events_tx.send((id, message.payload.clone()));
                async { Ok(()) }
            })
            .await
        })
    };
    let republish = {
        let (js, subject) = (js.clone(), format!("{events_root}.e"));
        tokio::task::spawn_local(async move {
            let mut acks = FuturesUnordered::new();
            while let Some((id, payload)) = events_rx.recv().await {
                let publish = jetstream::message::PublishMessage::build()
                    .message_id(id.as_str())
                    .payload(payload);
                let ack = js
                    .send_publish(subject.clone(), publish)
                    .await
                    .map_err(|e| anyhow::anyhow!("events publish: {e}"))?;
                acks.push(ack.into_future());
                while acks.len() >= DESIGN_EVENTS_WINDOW {
                    if let Some(done) = acks.next().await {
                        done.map_err(|e| anyhow::anyhow!("events publish ack: {e}"))?;
                    }
                }
            }
            while let Some(done) = acks.next().await {
                done.map_err(|e| anyhow::anyhow!("events publish ack: {e}"))?;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let mut writers = FuturesUnordered::new();
    for (w, commits) in bodies.values().enumerate() {
        let (js, subject, mut read) = (js.clone(), format!("{log_root}.s{w}"), read_rx.clone());
        writers.push(async move {
            let mut last = 0u64;
            for (id, body) in commits.clone() {
                last = fenced_publish(&js, &subject, &id, body, last, "bench-design").await?;
                // Answered once read back (read-your-writes).
                tokio::time::timeout(REQUEST_TIMEOUT, read.wait_for(|p| *p >= last))
                    .await
                    .context("the publisher's consumer did not read its commit back")??;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = writers.next().await {
        done?;
    }
    // Timed as cairn's side: until every commit was answered (the
    // replicas read on meanwhile, as nodes n1 and n2 apply).
    let elapsed = started.elapsed();
    for replica in replicas {
        replica
            .join()
            .map_err(|_| anyhow::anyhow!("a replica thread panicked"))??;
    }
    own.await.context("the publisher's consumer")??;
    republish.await.context("the events publisher")??;
    for name in [&log, &events] {
        let _ = js.delete_stream(name).await;
    }
    Ok(elapsed)
}

/// Reads stream `name` from its start with an ordered consumer pulling as
/// the applier does, `each(position, message)` in order, until it read
/// `total` messages (each wait bounded).
async fn follow<F, Fut>(
    js: &jetstream::Context,
    name: &str,
    total: u64,
    mut each: F,
) -> anyhow::Result<()>
where
    F: FnMut(u64, async_nats::jetstream::Message) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let stream = js
        .get_stream(name)
        .await
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let mut messages = stream
        .create_consumer(log_consumer(DeliverPolicy::All))
        .await
        .map_err(|e| anyhow::anyhow!("ordered consumer on {name}: {e}"))?
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("reading {name}: {e}"))?;
    let mut read = 0u64;
    while read < total {
        let message = tokio::time::timeout(REQUEST_TIMEOUT, messages.next())
            .await
            .with_context(|| format!("nothing from {name} for {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("the consumer of {name} ended"))?
            .map_err(|e| anyhow::anyhow!("reading {name}: {e}"))?;
        let position = message
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        read += 1;
        each(position, message).await?;
    }
    Ok(())
}

// -------------------------------------------------------------- failover

/// Options of `cairn bench failover`.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// Owners killed, one after the other.
    pub rounds: usize,
}

/// The repository the failover rounds write.
const FAILOVER_REPOSITORY: &str = "failover";

/// Runs `cairn bench failover`; returns each round's time to the first
/// successful command.
pub fn failover(
    options: &FailoverOptions,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<Vec<Duration>> {
    let mut cluster = BenchCluster::start(3, out)?;
    let generated = gen::generate(&cluster.dir.path().join("upstream.git"), &Shape::new(10, 2))?;
    let stream = format!("repo/{NAMESPACE}/{FAILOVER_REPOSITORY}");
    let system = actix::System::new();
    let result = system.block_on(async {
        let clients = [
            cluster.client(0).await?,
            cluster.client(1).await?,
            cluster.client(2).await?,
        ];
        let added = register(&clients[0], "n0", FAILOVER_REPOSITORY, &generated.url).await?;
        writeln!(
            out,
            "failover: repository {stream} registered through n0 ({added} revisions)"
        )?;
        let sync = json!({"namespace": NAMESPACE, "name": FAILOVER_REPOSITORY, "wait": true});
        let mut times = Vec::with_capacity(options.rounds);
        for round in 1..=options.rounds.max(1) {
            // Settled: every node up, and the stream has a live owner.
            let owner = settle(&cluster, &clients, &stream).await?;
            let victim: usize = owner
                .strip_prefix('n')
                .and_then(|i| i.parse().ok())
                .with_context(|| format!("owner {owner} is not a benchmark node"))?;
            let via = (victim + 1) % 3;
            let via_id = BenchCluster::id(via);
            cluster.kill_node(victim);
            let killed = Instant::now();
            let mut attempts = 0u32;
            let mut last_error: String;
            loop {
                attempts += 1;
                match call_node(
                    &clients[via],
                    &via_id,
                    "cairn.v1.repo.sync",
                    &sync,
                    REQUEST_TIMEOUT,
                )
                .await
                {
                    Ok(reply) if reply["sync"].get("error").is_none() => break,
                    Ok(reply) => last_error = reply.to_string(),
                    Err(e) => last_error = e.to_string(),
                }
                anyhow::ensure!(
                    killed.elapsed() < FAILOVER_GIVE_UP,
                    "no successful command {FAILOVER_GIVE_UP:?} after killing {owner}: {last_error}"
                );
            }
            let took = killed.elapsed();
            let new_owner = owner_of(&clients[via], &via_id, &stream).await?;
            writeln!(
                out,
                "failover: round {round}: killed owner {owner}; first successful repo.sync through {via_id} after {:.3}s ({attempts} attempts, new owner {})",
                took.as_secs_f64(),
                new_owner.as_deref().unwrap_or("?")
            )?;
            times.push(took);
            cluster.start_node(victim)?;
        }
        let mut sorted = times.clone();
        sorted.sort();
        writeln!(
            out,
            "failover: p50={:.2} max={:.2}",
            percentile(&sorted, 0.5).as_secs_f64(),
            sorted.last().copied().unwrap_or_default().as_secs_f64()
        )?;
        Ok::<_, anyhow::Error>(times)
    });
    drop(cluster);
    result
}

/// Waits until all three nodes are members and `stream` has an owner
/// among them; answers the owner.
async fn settle(
    cluster: &BenchCluster,
    clients: &[async_nats::Client; 3],
    stream: &str,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut seen = String::new();
    while Instant::now() < deadline {
        let live: Vec<usize> = (0..3).filter(|i| cluster.nodes[*i].is_some()).collect();
        let mut agreed = None;
        let mut ok = true;
        for &i in &live {
            let id = BenchCluster::id(i);
            let status = call_node(
                &clients[i],
                &id,
                "cairn.v1.cluster.status",
                &json!({}),
                REQUEST_TIMEOUT,
            )
            .await;
            let Ok(status) = status else {
                ok = false;
                break;
            };
            let members = status["nodes"].as_array().map_or(0, Vec::len);
            let owner = lease_owner(&status, stream);
            seen = format!("{id} sees {members} nodes, owner {owner:?}");
            match (&agreed, owner) {
                _ if members != 3 => ok = false,
                (_, None) => ok = false,
                (None, Some(o)) => agreed = Some(o),
                (Some(a), Some(o)) if *a != o => ok = false,
                _ => {}
            }
        }
        if ok {
            if let Some(owner) = agreed {
                if live.contains(&owner.trim_start_matches('n').parse().unwrap_or(usize::MAX)) {
                    return Ok(owner);
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    anyhow::bail!("the cluster did not settle within {SETTLE_TIMEOUT:?}: {seen}")
}

// -------------------------------------------------------------- catch-up

/// Options of `cairn bench catch-up`.
#[derive(Debug, Clone)]
pub struct CatchUpOptions {
    /// Events the log holds when the node joins (at least).
    pub events: u64,
    /// Package revisions of the generated repository whose first sync is
    /// copied (5 per package).
    pub revisions: u64,
    /// Events per copied commit; 0 keeps the first sync's commits.
    pub commit_events: usize,
}

/// Runs `cairn bench catch-up`; returns (cairn events/s, raw events/s).
pub fn catch_up(
    options: &CatchUpOptions,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(f64, f64)> {
    let mut cluster = BenchCluster::start(1, out)?;
    let generated = gen::generate(
        &cluster.dir.path().join("upstream.git"),
        &Shape::for_revisions(options.revisions, 5),
    )?;
    let system = actix::System::new();
    let result = system.block_on(async {
        let client = cluster.client(0).await?;
        let started = Instant::now();
        let added = register(&client, "n0", "r0", &generated.url).await?;
        writeln!(
            out,
            "catch-up: n0 registered repository r0, first sync of {added} revisions in {:.3}s",
            started.elapsed().as_secs_f64()
        )?;
        // n0 leaves (kill -9): the log is all that is left of the cluster,
        // and nothing but this benchmark writes it from now on.
        cluster.kill_node(0);
        let js = jetstream::new(client.clone());

        // The commits of r0, to publish again as r1, r2, …
        let r0 = StreamId::repository(NAMESPACE, "r0")?;
        let (commits, _, _) = read_log(&js, Some(subject_of(&r0))).await?;
        let per_copy: u64 = commits.iter().map(|c| c.len() as u64).sum();
        anyhow::ensure!(per_copy > 0, "the first sync wrote nothing");
        let copies = options.events.div_ceil(per_copy).max(1) - 1;
        // The copies' commits: r0's, or its events regrouped.
        let commits: Vec<Vec<Envelope>> = match options.commit_events {
            0 => commits,
            n => commits
                .concat()
                .chunks(n)
                .map(<[Envelope]>::to_vec)
                .collect(),
        };
        let window = match options.commit_events {
            1..=SMALL_COPY_MAX_EVENTS => SMALL_COPY_WINDOW,
            _ => COPY_WINDOW,
        };
        let started = Instant::now();
        let mut acks: FuturesUnordered<
            <jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture,
        > = FuturesUnordered::new();
        for copy in 1..=copies {
            let name = format!("r{copy}");
            let stream = StreamId::repository(NAMESPACE, &name)?;
            let subject = subject_of(&stream);
            for commit in &commits {
                let envelopes: Vec<Envelope> = commit
                    .iter()
                    .map(|env| restamp(env, &stream, "r0", &name))
                    .collect();
                let mut headers = HeaderMap::new();
                headers.insert("Cairn-Node", "bench-copy");
                headers.insert("Nats-Msg-Id", envelopes[0].event_id.as_str());
                if acks.len() >= window {
                    if let Some(ack) = acks.next().await {
                        ack.map_err(|e| anyhow::anyhow!("publishing a copy: {e}"))?;
                    }
                }
                let ack = js
                    .publish_with_headers(subject.clone(), headers, encode_commit(&envelopes))
                    .await
                    .map_err(|e| anyhow::anyhow!("publishing a copy: {e}"))?;
                acks.push(ack.into_future());
            }
        }
        while let Some(ack) = acks.next().await {
            ack.map_err(|e| anyhow::anyhow!("publishing a copy: {e}"))?;
        }
        let total = per_copy * (copies + 1);
        writeln!(
            out,
            "catch-up: the log holds {total} events ({} copies of r0's {per_copy}, the copies in {} commits of {}, published in {:.1}s)",
            copies + 1,
            commits.len() as u64 * copies,
            match options.commit_events {
                0 => "the first sync's sizes".to_owned(),
                n => format!("{n} events"),
            },
            started.elapsed().as_secs_f64()
        )?;

        // raw: an ordered consumer reads the whole log, through the server
        // the joining node uses (server 1): the same way to the stream.
        let reader = jetstream::new(cluster.client(1).await?);
        let started = Instant::now();
        let (_, messages, bytes) = read_log(&reader, None).await?;
        let raw_elapsed = started.elapsed();
        writeln!(
            out,
            "catch-up: raw ordered consumer read {messages} messages ({:.1} MB) in {:.3}s: {:.0} msgs/s",
            bytes as f64 / 1e6,
            raw_elapsed.as_secs_f64(),
            rate(messages, raw_elapsed)
        )?;

        // The same read with the applier's own consumer (byte-bounded
        // pulls of up to 1,024 commits): what reading costs cairn itself.
        let started = Instant::now();
        let applier_read = {
            let stream = reader
                .get_stream(LOG_STREAM)
                .await
                .map_err(|e| anyhow::anyhow!("{LOG_STREAM}: {e}"))?;
            let mut consumer = applier_messages(&reader, &stream, 1)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut read = 0u64;
            while read < messages {
                tokio::time::timeout(REQUEST_TIMEOUT, consumer.next())
                    .await
                    .with_context(|| format!("nothing from {LOG_STREAM} for {REQUEST_TIMEOUT:?}"))?
                    .with_context(|| format!("the consumer of {LOG_STREAM} ended"))?
                    .map_err(|e| anyhow::anyhow!("reading {LOG_STREAM}: {e}"))?;
                read += 1;
            }
            started.elapsed()
        };
        writeln!(
            out,
            "catch-up: raw read with the applier's consumer (pulls of up to {} commits, byte-bounded): {messages} messages in {:.3}s: {:.0} msgs/s (not the ratio's peer)",
            cairn_actors::cluster::log::APPLY_PULL_MAX_MESSAGES,
            applier_read.as_secs_f64(),
            rate(messages, applier_read)
        )?;

        // raw + RocksDB: the same read, each commit's events written to a
        // fresh RocksDB (default options, WAL on, not synced, one batch
        // per commit) as the per-event log rows a replica keeps — no views.
        let db = rocksdb::DB::open_default(cluster.dir.path().join("raw-rocksdb"))?;
        let started = Instant::now();
        let (mut seq, mut stored) = (0u64, 0u64);
        follow(&reader, LOG_STREAM, messages, |_, message| {
            let fence = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Cairn-Fence"))
                .is_some();
            let written = (|| {
                if fence {
                    return Ok(());
                }
                // Decoded, and each row made from the bytes with its seq
                // spliced in, as the applier makes it.
                let (envelopes, encoded) = decode_commit_rows(&message.payload)?;
                let mut batch = rocksdb::WriteBatch::default();
                for (env, bytes) in envelopes.iter().zip(&encoded) {
                    seq += 1;
                    let row = cairn_events::envelope::encode_with_seq(bytes, seq)
                        .map_or_else(|| cairn_events::envelope::encode(env), |r| r.bytes);
                    batch.put(seq.to_be_bytes(), row);
                }
                stored += envelopes.len() as u64;
                db.write(batch)?;
                Ok::<_, anyhow::Error>(())
            })();
            async move { written }
        })
        .await?;
        let stored_elapsed = started.elapsed();
        drop(db);
        writeln!(
            out,
            "catch-up: raw read + RocksDB log rows: {stored} events in {:.3}s: {:.0}/s, {:.2} of the raw read",
            stored_elapsed.as_secs_f64(),
            rate(stored, stored_elapsed),
            raw_elapsed.as_secs_f64() / stored_elapsed.as_secs_f64()
        )?;

        // cairn: a node with an empty data directory joins and catches up.
        let dir = cluster.dir.path().join("joiner");
        let mut config = NodeConfig {
            data_dir: dir.clone(),
            ..NodeConfig::default()
        };
        config.cluster.enabled = true;
        config.cluster.snapshot_interval = Duration::ZERO;
        config.cluster.node_id = Some("bench-joiner".into());
        config.nats.urls = vec![cluster.nats.url(1)];
        let joiner_client = cluster.client(1).await?;
        let started = Instant::now();
        let store = Store::open(StoreConfig::new(&dir), default_views())?;
        let (joined, store) = ClusterStart::begin(&config, &joiner_client, store).await?;
        let cairn_elapsed = started.elapsed();
        let last = store.last_seq()?;
        drop(joined);
        anyhow::ensure!(
            last == total,
            "the joining node's log holds {last} events, the cluster's {total}"
        );
        writeln!(
            out,
            "catch-up: cairn applied {total} events (log and views) in {:.3}s",
            cairn_elapsed.as_secs_f64()
        )?;
        let (c, r) = (rate(total, cairn_elapsed), rate(total, raw_elapsed));
        writeln!(
            out,
            "catch-up: cairn = {:.2} of raw read + RocksDB log rows",
            c / rate(stored, stored_elapsed)
        )?;
        writeln!(out, "catch_up: cairn={c:.0}/s raw={r:.0}/s ratio={:.2}", c / r)?;
        Ok::<_, anyhow::Error>((c, r))
    });
    drop(cluster);
    result
}

/// Reads `CAIRN_LOG` (one subject of it, or all) to its current end with an
/// ordered consumer: the commits (when one subject is asked for: decoded),
/// the messages and the bytes read.
async fn read_log(
    js: &jetstream::Context,
    subject: Option<String>,
) -> anyhow::Result<(Vec<Vec<Envelope>>, u64, u64)> {
    let mut stream = js
        .get_stream(LOG_STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("{LOG_STREAM}: {e}"))?;
    let last = stream
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("{LOG_STREAM}: {e}"))?
        .state
        .last_sequence;
    let decode = subject.is_some();
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.unwrap_or_default(),
            // 32 commits a pull (`log_consumer`): asked 500 at a time (the
            // default) with no byte limit, near-1 MiB commits overflow what
            // the server keeps pending for a client, and the read stalls.
            ..log_consumer(DeliverPolicy::All)
        })
        .await
        .map_err(|e| anyhow::anyhow!("ordered consumer on {LOG_STREAM}: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("reading {LOG_STREAM}: {e}"))?;
    let (mut commits, mut count, mut bytes) = (Vec::new(), 0u64, 0u64);
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let message = match next {
            Ok(Some(message)) => message.map_err(|e| anyhow::anyhow!("reading: {e}"))?,
            // A filtered read ends when nothing more of its subject comes.
            Ok(None) | Err(_) if decode => break,
            Ok(None) => anyhow::bail!("the consumer of {LOG_STREAM} ended"),
            Err(_) => anyhow::bail!(
                "nothing from {LOG_STREAM} for 5s before its end ({count} messages read, last position {last})"
            ),
        };
        count += 1;
        bytes += message.payload.len() as u64;
        let (position, pending) = {
            let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            (info.stream_sequence, info.pending)
        };
        let fence = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Cairn-Fence"))
            .is_some();
        if decode && !fence {
            commits.push(decode_commit(&message.payload)?);
        }
        // The end of the log, or of the subject asked for (nothing more of
        // it pending).
        if position >= last || (decode && pending == 0) {
            break;
        }
    }
    Ok((commits, count, bytes))
}

/// `env` of repository `from` as an event of repository `to` (stream
/// `stream`): a new event id, and revision names on the new repository.
fn restamp(env: &Envelope, stream: &StreamId, from: &str, to: &str) -> Envelope {
    let mut env = env.clone();
    env.stream = stream.as_str().to_owned();
    env.event_id = new_id();
    env.seq = 0;
    let rename = |name: &mut String| {
        if let Some(rest) = name.strip_prefix(from) {
            *name = format!("{to}{rest}");
        }
    };
    match env.event.as_mut().and_then(|e| e.payload.as_mut()) {
        Some(Payload::RepositoryRegistered(r)) => {
            if let Some(spec) = r.spec.as_mut() {
                spec.name = to.to_owned();
            }
        }
        Some(Payload::PackageRevisionAdded(a)) => {
            if let Some(revision) = a.revision.as_mut() {
                rename(&mut revision.name);
            }
        }
        Some(Payload::PackageRevisionModified(m)) => {
            if let Some(revision) = m.revision.as_mut() {
                rename(&mut revision.name);
            }
        }
        Some(Payload::PackageRevisionDeleted(d)) => rename(&mut d.name),
        _ => {}
    }
    env
}

// ---------------------------------------------------------- cluster-read

/// Options of `cairn bench cluster-read`.
#[derive(Debug, Clone)]
pub struct ClusterReadOptions {
    /// Package revisions of the generated repository (5 per package).
    pub revisions: u64,
    /// Requests in flight at once (spread over the three servers).
    pub concurrency: usize,
    /// How long each side is measured.
    pub duration: Duration,
}

/// Runs `cairn bench cluster-read`; returns (one node/s, three nodes/s).
pub fn cluster_read(
    options: &ClusterReadOptions,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<(f64, f64)> {
    let cluster = BenchCluster::start(3, out)?;
    let generated = gen::generate(
        &cluster.dir.path().join("upstream.git"),
        &Shape::for_revisions(options.revisions, 5),
    )?;
    let packages = (generated.revisions / 5).max(1);
    let system = actix::System::new();
    let result = system.block_on(async {
        let clients = [
            cluster.client(0).await?,
            cluster.client(1).await?,
            cluster.client(2).await?,
        ];
        let added = register(&clients[0], "n0", "read", &generated.url).await?;
        // Every node has applied the registration before the load starts.
        let top = call_node(
            &clients[0],
            "n0",
            "cairn.v1.repo.get",
            &json!({"namespace": NAMESPACE, "name": "read"}),
            REQUEST_TIMEOUT,
        )
        .await?;
        anyhow::ensure!(top["name"] == "read", "repo.get answered {top}");
        for (i, client) in clients.iter().enumerate() {
            wait_caught_up(client, &BenchCluster::id(i)).await?;
        }
        writeln!(
            out,
            "cluster-read: repository with {added} revisions ({packages} packages) on every node; {} requests in flight over 3 connections, {:?} per side",
            options.concurrency, options.duration
        )?;
        let one = read_load(&clients, "cairn.node.n0.cairn.v1.pkgrev.list", packages, options).await?;
        let three = read_load(&clients, "cairn.v1.pkgrev.list", packages, options).await?;
        // The raw peer: the same load on three plain NATS responders, one
        // per server as the nodes are, answering a reply of the size of
        // cairn's.
        let reply_bytes = call(
            &clients[0],
            "cairn.node.n0.cairn.v1.pkgrev.list",
            serde_json::to_vec(&json!({
                "namespace": NAMESPACE,
                "repository": "read",
                "package": gen::package_name(0),
            }))?
            .into(),
            REQUEST_TIMEOUT,
        )
        .await?
        .payload
        .len();
        let responders = (0..3)
            .map(|i| {
                NodeProcess::start_echo(
                    &BenchCluster::id(i),
                    &cluster.nats.url(i),
                    reply_bytes,
                    cluster.dir.path(),
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let raw_one = read_load(&clients, &format!("{ECHO_SUBJECT}.n0"), packages, options).await?;
        let raw_three = read_load(&clients, ECHO_SUBJECT, packages, options).await?;
        drop(responders);
        let (one_rate, three_rate) = (
            rate(one.replies, options.duration),
            rate(three.replies, options.duration),
        );
        let (raw_one_rate, raw_three_rate) = (
            rate(raw_one.replies, options.duration),
            rate(raw_three.replies, options.duration),
        );
        writeln!(
            out,
            "cluster-read: one node {} replies (p50 {:.2} ms), three nodes {} replies (p50 {:.2} ms) by node {:?}",
            one.replies,
            ms(one.p50),
            three.replies,
            ms(three.p50),
            three.by_node
        )?;
        writeln!(
            out,
            "cluster-read raw peer ({reply_bytes}-byte replies): one responder {} replies (p50 {:.2} ms), three {} replies (p50 {:.2} ms) by responder {:?}; three/one = {:.2}",
            raw_one.replies,
            ms(raw_one.p50),
            raw_three.replies,
            ms(raw_three.p50),
            raw_three.by_node,
            raw_three_rate / raw_one_rate.max(1e-9)
        )?;
        let split: Vec<String> = ["n0", "n1", "n2"]
            .iter()
            .map(|n| {
                let share = three.by_node.get(*n).copied().unwrap_or(0) as f64 * 100.0
                    / three.replies.max(1) as f64;
                format!("{share:.0}")
            })
            .collect();
        writeln!(
            out,
            "cluster-read: three/one = {:.2} (cairn), {:.2} (raw peer); cairn ÷ raw: one {:.2}, three {:.2}",
            three_rate / one_rate,
            raw_three_rate / raw_one_rate.max(1e-9),
            one_rate / raw_one_rate.max(1e-9),
            three_rate / raw_three_rate.max(1e-9),
        )?;
        writeln!(
            out,
            "cluster_read: one={one_rate:.0}/s three={three_rate:.0}/s split={}",
            split.join("/")
        )?;
        Ok::<_, anyhow::Error>((one_rate, three_rate))
    });
    drop(cluster);
    result
}

/// `cairn bench echo-responder`: cluster-read's raw peer. Answers every
/// request on `bench.echo` (queue group `bench`) and on `bench.echo.<id>`
/// with `reply_bytes` bytes and a `Cairn-Node: <id>` header, on one
/// thread as a node's service does; runs until killed.
pub fn echo_responder(url: &str, id: &str, reply_bytes: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let group = client
            .queue_subscribe(ECHO_SUBJECT, "bench".to_owned())
            .await?;
        let own = client.subscribe(format!("{ECHO_SUBJECT}.{id}")).await?;
        client.flush().await?;
        println!("{ECHO_READY}");
        let payload = Bytes::from(vec![b'x'; reply_bytes]);
        let mut headers = HeaderMap::new();
        headers.insert("Cairn-Node", id);
        let mut requests = futures::stream::select(group, own);
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                client
                    .publish_with_headers(reply, headers.clone(), payload.clone())
                    .await?;
            }
        }
        Ok(())
    })
}

/// Waits until node `node` applied what the most advanced node did.
async fn wait_caught_up(client: &async_nats::Client, node: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let status = call_node(
            client,
            node,
            "cairn.v1.cluster.status",
            &json!({}),
            REQUEST_TIMEOUT,
        )
        .await?;
        let lagging = status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["lag"].as_u64() != Some(0));
        if !lagging {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {node} still lags after {SETTLE_TIMEOUT:?}: {status}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// What a read load measured.
#[derive(Debug, Default)]
struct Load {
    /// Replies received.
    replies: u64,
    /// Replies by the node that gave them (`Cairn-Node`).
    by_node: BTreeMap<String, u64>,
    /// Median latency.
    p50: Duration,
}

/// `options.concurrency` request loops, spread over the three connections,
/// on `subject` for `options.duration`.
async fn read_load(
    clients: &[async_nats::Client; 3],
    subject: &str,
    packages: u64,
    options: &ClusterReadOptions,
) -> anyhow::Result<Load> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = FuturesUnordered::new();
    for l in 0..options.concurrency.max(1) {
        let client = clients[l % 3].clone();
        let (subject, stop) = (subject.to_owned(), stop.clone());
        loops.push(tokio::spawn(async move {
            let mut by_node: BTreeMap<String, u64> = BTreeMap::new();
            let mut latencies = Vec::new();
            let mut i = l as u64;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({
                    "namespace": NAMESPACE,
                    "repository": "read",
                    "package": gen::package_name((i % packages) as usize),
                });
                i += 1;
                let sent = Instant::now();
                let reply = call(
                    &client,
                    &subject,
                    serde_json::to_vec(&body)?.into(),
                    REQUEST_TIMEOUT,
                )
                .await?;
                latencies.push(sent.elapsed());
                let node = reply
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Cairn-Node"))
                    .map_or_else(|| "?".to_owned(), |v| v.as_str().to_owned());
                *by_node.entry(node).or_default() += 1;
            }
            Ok::<_, anyhow::Error>((by_node, latencies))
        }));
    }
    tokio::time::sleep(options.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut load = Load::default();
    let mut latencies = Vec::new();
    while let Some(done) = loops.next().await {
        let (counts, mut lat) = done.context("request loop")??;
        for (node, n) in counts {
            *load.by_node.entry(node).or_default() += n;
        }
        latencies.append(&mut lat);
    }
    latencies.sort();
    load.replies = latencies.len() as u64;
    load.p50 = percentile(&latencies, 0.5);
    Ok(load)
}
