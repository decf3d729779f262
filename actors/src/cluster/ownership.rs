//! Who writes which stream: leases in a JetStream KV bucket, placement by
//! rendezvous hashing over the live nodes.
//!
//! - **Membership**: bucket `cairn_nodes` (bucket TTL = the lease time);
//!   each node puts its key every renew interval. The live nodes are the
//!   keys present: a node that stops renewing is gone a lease time later,
//!   one that leaves (SIGTERM) deletes its key at once.
//! - **Leases**: bucket `cairn_owners` (TTL = the lease time, history 1),
//!   one key per stream (base64url of the stream id), the value the owner's
//!   node id. `create` acquires (refused while another node's lease lives),
//!   `update` with the last revision renews (every renew interval, a third
//!   of the lease by default), a refused renewal means the lease is lost,
//!   `delete` with the last revision hands it over. A lease is not the
//!   fence — `CAIRN_LOG`'s per-subject sequence is (see
//!   [`super::appender`]): a node that acquires publishes a fence first.
//! - **Placement**: each stream's preferred owner is the live node with the
//!   highest rendezvous score (`sha256(node, stream)`), so streams spread
//!   evenly, a lost node's streams spread over the others, and a joining
//!   node takes about its share — each from the node that held it, which
//!   hands it over when it sees a live node rank higher.
//! - **The loop** (every renew interval): heartbeat, read the live nodes,
//!   renew held leases, then for every stream the [`Holder`] lists, acquire
//!   what this node should own and is free, hand over what another live
//!   node should own. A watch on `cairn_owners` keeps [`OwnershipView`]
//!   current between ticks, for routing commands.
//!
//! Acquiring: lease created → [`ClusterAppend::take`] (fence, catch up)
//! → [`Holder::own`] (the registry opens the stream's writer). Losing or
//! handing over: [`Holder::disown`] (the writer finishes what it runs and
//! stops) → the appender forgets the stream → the lease is deleted.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    kv::{self, Operation},
    stream::StorageType,
};
use base64::Engine as _;
use cairn_events::StreamId;
use futures::{future::BoxFuture, StreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::ClusterAppend;

/// Bucket of node heartbeats.
pub const NODES_BUCKET: &str = "cairn_nodes";
/// Bucket of stream leases.
pub const OWNERS_BUCKET: &str = "cairn_owners";
/// How long a held stream the holder does not list (yet) is kept: a
/// registration acquires its stream before the registration is applied.
const UNLISTED_GRACE: Duration = Duration::from_secs(60);
/// Most commands queued for the ownership loop.
const COMMANDS_MAX: usize = 1024;
/// The first wait before a bucket watch is made again.
const WATCH_RETRY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts at making a bucket watch.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);

/// Timing and placement of leases (`cluster.*`).
#[derive(Debug, Clone)]
pub struct OwnershipConfig {
    /// This node's id (a NATS subject token).
    pub node: String,
    /// How long a lease (and a heartbeat) lives without renewal.
    pub lease: Duration,
    /// How often leases and the heartbeat are renewed.
    pub renew_every: Duration,
    /// Replicas of the two buckets.
    pub replicas: usize,
}

/// What the node does when it gains or loses a stream, and which streams
/// exist.
pub trait Holder: Send + Sync + 'static {
    /// Every stream that should have an owner now; an error when it cannot
    /// tell (the loop then neither places nor releases anything this tick:
    /// an empty answer would release every stream).
    fn streams(&self) -> BoxFuture<'static, Result<Vec<StreamId>, String>>;
    /// This node now writes `stream` (its log is caught up to the fence).
    fn own(&self, stream: StreamId) -> BoxFuture<'static, Result<(), String>>;
    /// This node stops writing `stream`; resolves once nothing of it runs.
    fn disown(&self, stream: StreamId) -> BoxFuture<'static, ()>;
}

/// Why this node could not take a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// Another node holds its lease, or this node is giving it up or
    /// leaving: the command belongs elsewhere (route it again).
    #[error("{0}")]
    Elsewhere(String),
    /// The lease bucket or the log cannot be reached (no JetStream quorum):
    /// nothing can be written now.
    #[error("{0}")]
    Unavailable(String),
}

/// The key of `stream` in `cairn_owners`.
pub fn lease_key(stream: &StreamId) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(stream.as_str())
}

/// The node among `live` that should own `stream`: the highest
/// rendezvous score, ties by node id.
pub fn preferred<'a>(live: &'a [String], stream: &str) -> Option<&'a String> {
    live.iter()
        .max_by_key(|node| (score(node, stream), node.as_str()))
}

fn score(node: &str, stream: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update(node.as_bytes());
    hash.update([0]);
    hash.update(stream.as_bytes());
    let digest = hash.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// A lease as the watch last saw it.
#[derive(Debug, Clone)]
pub struct SeenLease {
    /// The owner.
    pub node: String,
    /// Its revision.
    pub revision: u64,
    /// When it was seen put (renewals refresh it).
    pub seen: Instant,
}

/// A node as its last heartbeat showed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    /// The node's id.
    pub node: String,
    /// The last seq it applied.
    pub applied_seq: u64,
    /// The last `CAIRN_LOG` position it applied.
    pub applied_position: u64,
    /// Streams it holds.
    pub owns: usize,
}

/// A member and when its heartbeat was last seen.
#[derive(Debug, Clone)]
struct Member {
    info: MemberInfo,
    seen: Instant,
}

/// A lease this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Its last revision.
    pub revision: u64,
    /// Being given up: the stream's running commands finish, new ones go
    /// elsewhere; still renewed until then (unless `lost`).
    pub releasing: bool,
    /// A renewal was refused: another node may own it now.
    pub lost: bool,
    /// Fenced, caught up and handed to the holder: it takes commands.
    pub ready: bool,
}

/// What this node knows of the cluster now: live nodes, leases, its own.
#[derive(Debug)]
pub struct OwnershipView {
    node: String,
    lease: Duration,
    /// The live nodes as last logged.
    live: RwLock<Vec<String>>,
    leases: RwLock<HashMap<String, SeenLease>>,
    /// Nodes by when their heartbeat was last seen.
    members: RwLock<HashMap<String, Member>>,
    held: RwLock<BTreeMap<StreamId, Held>>,
    /// Set when the node leaves (SIGTERM): it is no candidate any more.
    leaving: std::sync::atomic::AtomicBool,
    /// Attempts at making a bucket watch that failed.
    watch_failures: std::sync::atomic::AtomicU64,
}

impl OwnershipView {
    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The live nodes, sorted: heartbeats seen within a lease time, and
    /// this node unless it leaves.
    pub fn live(&self) -> Vec<String> {
        let mut live: Vec<String> = self
            .members
            .read()
            .expect("members lock")
            .iter()
            .filter(|(_, m)| m.seen.elapsed() < self.lease)
            .map(|(node, _)| node.clone())
            .collect();
        if !live.contains(&self.node) {
            // This node is live: its heartbeat may just not be seen yet.
            live.push(self.node.clone());
        }
        if self.is_leaving() {
            live.retain(|n| *n != self.node);
        }
        live.sort();
        live
    }

    /// How many attempts at making a bucket watch failed since the node
    /// started (each is tried again, see [`spawn_watch`]).
    pub fn watch_failures(&self) -> u64 {
        self.watch_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this node is leaving the cluster.
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The leases this node holds (those it is giving up included).
    pub fn held(&self) -> BTreeMap<StreamId, Held> {
        self.held.read().expect("held lock").clone()
    }

    /// Whether this node holds `stream` and takes its commands.
    pub fn holds(&self, stream: &StreamId) -> bool {
        self.held
            .read()
            .expect("held lock")
            .get(stream)
            .is_some_and(|h| h.ready && !h.releasing)
    }

    /// Whether this node is giving `stream` up right now.
    pub fn releasing(&self, stream: &StreamId) -> bool {
        self.held
            .read()
            .expect("held lock")
            .get(stream)
            .is_some_and(|h| h.releasing)
    }

    /// The owner of `stream` by a live lease, if any.
    pub fn owner_of(&self, stream: &StreamId) -> Option<String> {
        if self.holds(stream) {
            return Some(self.node.clone());
        }
        let leases = self.leases.read().expect("leases lock");
        leases
            .get(&lease_key(stream))
            .filter(|l| l.seen.elapsed() < self.lease)
            .map(|l| l.node.clone())
    }

    /// The revision to renew or delete `stream`'s lease at: the one the
    /// loop last recorded (`held`), or a later one the watch saw naming
    /// this node (a renewal not answered in time that took effect).
    fn lease_revision(&self, stream: &StreamId, held: u64) -> u64 {
        self.leases
            .read()
            .expect("leases lock")
            .get(&lease_key(stream))
            .filter(|l| l.node == self.node)
            .map_or(held, |l| l.revision.max(held))
    }

    /// The live members as their heartbeats last showed them, by node.
    pub fn members(&self) -> BTreeMap<String, MemberInfo> {
        self.members
            .read()
            .expect("members lock")
            .iter()
            .filter(|(_, m)| m.seen.elapsed() < self.lease)
            .map(|(node, m)| (node.clone(), m.info.clone()))
            .collect()
    }

    /// Every live lease: stream id → (owner, time left).
    pub fn lease_table(&self) -> BTreeMap<String, (String, Duration)> {
        self.leases
            .read()
            .expect("leases lock")
            .iter()
            .filter(|(_, l)| l.seen.elapsed() < self.lease)
            .map(|(key, l)| {
                let stream = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(key)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_else(|| key.clone());
                (
                    stream,
                    (l.node.clone(), self.lease.saturating_sub(l.seen.elapsed())),
                )
            })
            .collect()
    }

    /// The node that should own `stream` among the live ones.
    pub fn preferred(&self, stream: &StreamId) -> Option<String> {
        preferred(&self.live(), stream.as_str()).cloned()
    }

    /// Where a command of `stream` goes: its owner, else its preferred node.
    pub fn route(&self, stream: &StreamId) -> Option<String> {
        self.owner_of(stream).or_else(|| self.preferred(stream))
    }
}

enum Command {
    Acquire(StreamId, oneshot::Sender<Result<(), AcquireError>>),
    /// A stream's fence and catch-up finished (or failed).
    Taken {
        stream: StreamId,
        result: Result<(), String>,
    },
    Leave(oneshot::Sender<()>),
    /// A stream given up has no command running any more: its lease can go.
    Released {
        stream: StreamId,
        delete: bool,
    },
}

/// A handle on the ownership loop.
#[derive(Debug, Clone)]
pub struct Ownership {
    view: Arc<OwnershipView>,
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Acquire(s, _) => write!(f, "Acquire({s})"),
            Command::Taken { stream, .. } => write!(f, "Taken({stream})"),
            Command::Leave(_) => write!(f, "Leave"),
            Command::Released { stream, .. } => write!(f, "Released({stream})"),
        }
    }
}

impl Ownership {
    /// Creates the buckets (or finds them), joins, and starts the loop.
    pub async fn start(
        js: jetstream::Context,
        config: OwnershipConfig,
        appender: ClusterAppend,
        holder: Arc<dyn Holder>,
    ) -> Result<Self, String> {
        let nodes = bucket(&js, NODES_BUCKET, &config).await?;
        let owners = bucket(&js, OWNERS_BUCKET, &config).await?;
        let view = Arc::new(OwnershipView {
            node: config.node.clone(),
            lease: config.lease,
            live: RwLock::default(),
            leases: RwLock::default(),
            members: RwLock::default(),
            held: RwLock::default(),
            leaving: Default::default(),
            watch_failures: Default::default(),
        });
        spawn_watch(owners.clone(), OWNERS_BUCKET, &view, |watched, entry| {
            let mut leases = watched.leases.write().expect("leases lock");
            match entry.operation {
                Operation::Put => {
                    leases.insert(
                        entry.key,
                        SeenLease {
                            node: String::from_utf8_lossy(&entry.value).into_owned(),
                            revision: entry.revision,
                            seen: Instant::now(),
                        },
                    );
                }
                Operation::Delete | Operation::Purge => {
                    leases.remove(&entry.key);
                }
            }
        });
        let (synced_tx, mut synced) = tokio::sync::watch::channel(false);
        spawn_watch(nodes.clone(), NODES_BUCKET, &view, move |watched, entry| {
            if entry.delta == 0 {
                // The bucket as it was when the watch began is all seen.
                synced_tx.send_replace(true);
            }
            let mut members = watched.members.write().expect("members lock");
            match entry.operation {
                Operation::Put => {
                    let info = serde_json::from_slice(&entry.value).unwrap_or(MemberInfo {
                        node: entry.key.clone(),
                        ..MemberInfo::default()
                    });
                    members.insert(
                        entry.key,
                        Member {
                            info,
                            seen: Instant::now(),
                        },
                    );
                }
                Operation::Delete | Operation::Purge => {
                    members.remove(&entry.key);
                }
            }
        });
        let (tx, rx) = mpsc::channel(COMMANDS_MAX);
        // Abandon notices have a queue of their own, unbounded: the
        // appender is never blocked and no notice is dropped (at most one
        // per held stream and failed append).
        let (abandoned, abandons) = mpsc::unbounded_channel();
        appender.on_abandon(Box::new(move |stream, take| {
            let _ = abandoned.send((stream, take));
        }));
        let mut state = Loop {
            commands: tx.clone(),
            leave_reply: None,
            config,
            nodes,
            owners,
            appender,
            holder,
            view: view.clone(),
            acquired_at: HashMap::new(),
            waiting: HashMap::new(),
            release_after_take: HashMap::new(),
        };
        state.heartbeat().await;
        // Place nothing before the other members are known (this node's
        // own heartbeat ends the initial listing at the latest).
        let _ = tokio::time::timeout(state.config.lease, synced.wait_for(|s| *s)).await;
        state.read_live();
        tokio::spawn(state.run(rx, abandons));
        Ok(Self { view, commands: tx })
    }

    /// What this node knows of the cluster.
    pub fn view(&self) -> &Arc<OwnershipView> {
        &self.view
    }

    /// Makes this node the owner of `stream` now, if its lease is free
    /// (a new stream, or this node is its preferred owner).
    pub async fn acquire(&self, stream: StreamId) -> Result<(), AcquireError> {
        // The loop ends when the node has left: the stream is elsewhere.
        let stopped =
            || AcquireError::Elsewhere(format!("node {} has left the cluster", self.view.node()));
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Acquire(stream, tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Hands every stream over and leaves the cluster (SIGTERM).
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Finds or creates bucket `name` ([`NODES_BUCKET`], [`OWNERS_BUCKET`])
/// whose entries live `config.lease`.
///
/// The bucket's stream is created as the KV convention has it (`KV_<name>`
/// on `$KV.<name>.>`, one message per key, rollups allowed, deletes
/// denied, direct gets) rather than with async-nats's `create_key_value`,
/// whose reply parsing fails against nats-server 2.9 (Debian's).
pub async fn bucket(
    js: &jetstream::Context,
    name: &str,
    config: &OwnershipConfig,
) -> Result<kv::Store, String> {
    let stream = jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age: config.lease,
        storage: StorageType::File,
        num_replicas: config.replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        duplicate_window: config.lease.min(Duration::from_secs(120)),
        ..Default::default()
    };
    js.get_or_create_stream(stream)
        .await
        .map_err(|e| format!("cannot create or find bucket {name}: {e}"))?;
    js.get_key_value(name)
        .await
        .map_err(|e| format!("cannot open bucket {name}: {e}"))
}

/// Follows every change of `kv` into `view` with `apply`, for as long as
/// the view is in use (the node runs). A watch that fails (the connection
/// closed, a reconnect) is dropped — never polled again — and made anew;
/// so is one that cannot be made (no JetStream quorum at that moment):
/// tried again after [`WATCH_RETRY`], doubling up to [`WATCH_RETRY_MAX`],
/// until it can. Meanwhile the view keeps what it last saw, and members
/// and leases not seen again within a lease time stop counting as live.
fn spawn_watch(
    kv: kv::Store,
    name: &'static str,
    view: &Arc<OwnershipView>,
    apply: impl Fn(&OwnershipView, kv::Entry) + Send + 'static,
) {
    let view = Arc::downgrade(view);
    tokio::spawn(async move {
        let mut wait = WATCH_RETRY;
        while view.strong_count() > 0 {
            // From the last entry of every key (not only new ones): a node
            // starting knows the members and leases at once.
            match kv.watch_with_history(">").await {
                Ok(mut watch) => {
                    wait = WATCH_RETRY;
                    while let Some(Ok(entry)) = watch.next().await {
                        let Some(view) = view.upgrade() else { return };
                        apply(&view, entry);
                    }
                }
                Err(e) => {
                    warn!(bucket = name, error = %e, retry_in = ?wait, "cannot watch the bucket");
                    if let Some(view) = view.upgrade() {
                        view.watch_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    wait = (wait * 2).min(WATCH_RETRY_MAX);
                }
            }
            tokio::time::sleep(wait).await;
        }
    });
}

struct Loop {
    /// The loop's own queue (release tasks report there).
    commands: mpsc::Sender<Command>,
    /// Who waits for this node to have left.
    leave_reply: Option<oneshot::Sender<()>>,
    config: OwnershipConfig,
    nodes: kv::Store,
    owners: kv::Store,
    appender: ClusterAppend,
    holder: Arc<dyn Holder>,
    view: Arc<OwnershipView>,
    /// When each held stream was acquired.
    acquired_at: HashMap<StreamId, Instant>,
    /// Who waits for a stream being taken.
    waiting: HashMap<StreamId, Vec<oneshot::Sender<Result<(), AcquireError>>>>,
    /// Streams stepped down from while being taken, with whether their
    /// lease is deleted: released once the take ends.
    release_after_take: HashMap<StreamId, bool>,
}

impl Loop {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut abandons: mpsc::UnboundedReceiver<(StreamId, u64)>,
    ) {
        let mut tick = tokio::time::interval(self.config.renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick().await,
                command = commands.recv() => match command {
                    Some(Command::Acquire(stream, reply)) => {
                        self.acquire_now(&stream, Some(reply)).await;
                    }
                    Some(Command::Taken { stream, result }) => {
                        self.taken(&stream, result);
                    }
                    Some(Command::Leave(reply)) => {
                        self.leave().await;
                        self.leave_reply = Some(reply);
                    }
                    Some(Command::Released { stream, delete }) => {
                        self.released(&stream, delete).await;
                    }
                    None => return,
                },
                Some((stream, take)) = abandons.recv() => {
                    // Read late (the loop was busy), a notice can be of a
                    // take released since: the stream taken again is not
                    // the one given up.
                    if self.appender.is_current_take(&stream, take) {
                        warn!(stream = %stream, "the appender gave the stream up; stepping down so its state is reloaded");
                        self.step_down(&stream, true);
                    } else {
                        debug!(stream = %stream, take, "a notice of a take released since; ignored");
                    }
                }
            }
            if self.view.is_leaving() && self.view.held.read().expect("held lock").is_empty() {
                if let Some(reply) = self.leave_reply.take() {
                    info!("left the cluster");
                    let _ = reply.send(());
                    return;
                }
            }
        }
    }

    /// How long a bucket call may take: past it, a lease renewed at the
    /// last tick has expired anyway. A call not answered by then is left
    /// (its outcome unknown) so that the loop goes on renewing and placing.
    fn call_bound(&self) -> Duration {
        self.config.lease.saturating_sub(self.config.renew_every)
    }

    async fn heartbeat(&self) {
        if self.view.is_leaving() {
            return;
        }
        let info = MemberInfo {
            node: self.config.node.clone(),
            applied_seq: self.appender.applied_seq(),
            applied_position: self.appender.applied().position(),
            owns: self.view.held.read().expect("held lock").len(),
        };
        let value = serde_json::to_vec(&info).unwrap_or_default();
        match tokio::time::timeout(
            self.call_bound(),
            self.nodes.put(&self.config.node, value.into()),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "cluster heartbeat failed"),
            Err(_) => warn!(bound = ?self.call_bound(), "cluster heartbeat not answered in time"),
        }
    }

    /// Logs membership changes.
    fn read_live(&mut self) {
        let live = self.view.live();
        let mut known = self.view.live.write().expect("live lock");
        if *known != live {
            info!(nodes = ?live, "cluster membership changed");
            *known = live;
        }
    }

    async fn tick(&mut self) {
        // Renew — also the leases being given up, until their commands end
        // — all at once and beside the heartbeat: a slow JetStream delays
        // them by one bound, not one per lease, and a slow heartbeat does
        // not hold them back.
        let bound = self.call_bound();
        let renewals = self
            .view
            .held()
            .into_iter()
            .filter(|(_, held)| !held.lost)
            .map(|(stream, held)| {
                let owners = self.owners.clone();
                let node = self.config.node.clone();
                // A renewal that was not answered in time may have been
                // made: the watch then shows this node's lease at a later
                // revision, which is the one to renew.
                let revision = self.view.lease_revision(&stream, held.revision);
                async move {
                    let renewed = tokio::time::timeout(
                        bound,
                        owners.update(lease_key(&stream), node.into(), revision),
                    )
                    .await;
                    (stream, renewed)
                }
            });
        let ((), renewed) =
            futures::future::join(self.heartbeat(), futures::future::join_all(renewals)).await;
        self.read_live();
        for (stream, renewed) in renewed {
            let renewed = match renewed {
                Ok(renewed) => renewed,
                Err(_) => {
                    // Unknown: renewed or not. The next tick's update tells
                    // (a stale revision is refused: the lease is lost then).
                    warn!(stream = %stream, bound = ?bound, "lease renewal not answered in time");
                    continue;
                }
            };
            match renewed {
                Ok(revision) => {
                    crate::metrics::with(|m| m.lease_renewals.add(1, &[]));
                    if let Some(h) = self.view.held.write().expect("held lock").get_mut(&stream) {
                        h.revision = revision;
                    }
                }
                Err(e) => {
                    warn!(stream = %stream, error = %e, "lease lost; stepping down");
                    crate::metrics::with(|m| m.lease_losses.add(1, &[]));
                    if let Some(h) = self.view.held.write().expect("held lock").get_mut(&stream) {
                        h.lost = true;
                    }
                    self.step_down(&stream, false);
                }
            }
        }
        if self.view.is_leaving() {
            return;
        }
        // Place.
        let streams = match self.holder.streams().await {
            Ok(streams) => streams,
            Err(e) => {
                warn!(error = %e, "cannot list the streams; placing nothing this time");
                return;
            }
        };
        let live = self.view.live();
        let wanted: std::collections::HashSet<&StreamId> = streams.iter().collect();
        // Leases are created one after another (each bounded): placing
        // takes at most a renew interval (and one create) per tick, so the
        // next renewals are not held back for long; it goes on next tick.
        let placing = Instant::now();
        for stream in &streams {
            if placing.elapsed() >= self.config.renew_every {
                debug!("placing for a renew interval already; the rest next tick");
                break;
            }
            let Some(preferred) = preferred(&live, stream.as_str()) else {
                continue;
            };
            let held = self.view.holds(stream);
            if *preferred == self.config.node && !held {
                if self.view.owner_of(stream).is_none() && !self.view.releasing(stream) {
                    self.acquire_now(stream, None).await;
                }
            } else if held && *preferred != self.config.node {
                info!(stream = %stream, to = %preferred, "handing the stream over to its preferred node");
                self.step_down(stream, true);
            }
        }
        // Held streams that no longer exist (closed) are released — not
        // one acquired moments ago for a command that creates it.
        for stream in self.view.held().into_keys() {
            let recent = self
                .acquired_at
                .get(&stream)
                .is_some_and(|at| at.elapsed() < UNLISTED_GRACE);
            if !wanted.contains(&stream) && !recent && self.view.holds(&stream) {
                info!(stream = %stream, "releasing a stream that no longer exists");
                self.step_down(&stream, true);
            }
        }
    }

    /// Acquires `stream`'s lease, then — in a task of its own, so that the
    /// loop keeps renewing — fences, catches up and hands it to the holder
    /// ([`Command::Taken`]); `reply` learns the outcome. Already held and
    /// ready: answered at once.
    async fn acquire_now(
        &mut self,
        stream: &StreamId,
        reply: Option<oneshot::Sender<Result<(), AcquireError>>>,
    ) {
        let answer = |reply: Option<oneshot::Sender<Result<(), AcquireError>>>, result| {
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        };
        let state = self
            .view
            .held
            .read()
            .expect("held lock")
            .get(stream)
            .copied();
        match state {
            Some(h) if h.ready && !h.releasing => return answer(reply, Ok(())),
            Some(h) if !h.releasing => {
                // Being taken: answered with the outcome.
                if let Some(reply) = reply {
                    self.waiting.entry(stream.clone()).or_default().push(reply);
                }
                return;
            }
            Some(_) => {
                return answer(
                    reply,
                    Err(AcquireError::Elsewhere(format!(
                        "node {} is handing stream {stream} over",
                        self.config.node
                    ))),
                )
            }
            None => {}
        }
        if self.view.is_leaving() {
            return answer(
                reply,
                Err(AcquireError::Elsewhere(format!(
                    "node {} is leaving the cluster",
                    self.config.node
                ))),
            );
        }
        let key = lease_key(stream);
        let created = tokio::time::timeout(
            self.call_bound(),
            self.owners.create(&key, self.config.node.clone().into()),
        )
        .await;
        let revision = match created {
            Err(_) => {
                debug!(stream = %stream, "not acquired: the lease's create was not answered in time");
                return answer(
                    reply,
                    Err(AcquireError::Unavailable(format!(
                        "the cluster's leases ({OWNERS_BUCKET}) did not answer within {:?}",
                        self.call_bound()
                    ))),
                );
            }
            Ok(Ok(revision)) => revision,
            Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let owner = self
                    .view
                    .owner_of(stream)
                    .unwrap_or_else(|| "another node".into());
                debug!(stream = %stream, owner = %owner, "not acquired: owned");
                return answer(
                    reply,
                    Err(AcquireError::Elsewhere(format!(
                        "stream {stream} is owned by {owner}"
                    ))),
                );
            }
            Ok(Err(e)) => {
                debug!(stream = %stream, error = %e, "not acquired");
                return answer(
                    reply,
                    Err(AcquireError::Unavailable(format!(
                        "the cluster's leases ({OWNERS_BUCKET}) are unreachable: {e}"
                    ))),
                );
            }
        };
        self.view.held.write().expect("held lock").insert(
            stream.clone(),
            Held {
                revision,
                releasing: false,
                lost: false,
                ready: false,
            },
        );
        self.acquired_at.insert(stream.clone(), Instant::now());
        if let Some(reply) = reply {
            self.waiting.entry(stream.clone()).or_default().push(reply);
        }
        let (appender, holder, commands) = (
            self.appender.clone(),
            self.holder.clone(),
            self.commands.clone(),
        );
        let stream = stream.clone();
        tokio::spawn(async move {
            let taking = stream.clone();
            let take = tokio::spawn(async move {
                match appender.take(&taking).await {
                    Ok(position) => {
                        info!(stream = %taking, position, "stream acquired");
                        holder.own(taking).await
                    }
                    Err(e) => Err(e.to_string()),
                }
            });
            // The loop hears of the take whatever becomes of it (a task
            // that panicked included): a step-down waiting for it, and a
            // node leaving, would wait for ever otherwise.
            let result = take
                .await
                .unwrap_or_else(|e| Err(format!("the take failed: {e}")));
            let _ = commands.send(Command::Taken { stream, result }).await;
        });
    }

    /// The fence and catch-up of `stream` finished.
    fn taken(&mut self, stream: &StreamId, result: Result<(), String>) {
        let waiting = self.waiting.remove(stream).unwrap_or_default();
        if let Some(delete) = self.release_after_take.remove(stream) {
            // Stepped down while it was being taken: released only now.
            self.release(stream, delete);
            let outcome = Err(AcquireError::Elsewhere(format!(
                "node {} gave stream {stream} up while taking it",
                self.config.node
            )));
            for reply in waiting {
                let _ = reply.send(outcome.clone());
            }
            return;
        }
        let outcome = match result {
            Ok(()) => {
                let mut held = self.view.held.write().expect("held lock");
                match held.get_mut(stream) {
                    Some(h) if !h.releasing && !h.lost => {
                        h.ready = true;
                        Ok(())
                    }
                    _ => Err(AcquireError::Elsewhere(format!(
                        "node {} lost stream {stream} while taking it",
                        self.config.node
                    ))),
                }
            }
            Err(e) => {
                warn!(stream = %stream, error = %e, "cannot take the stream; releasing it");
                if let Some(h) = self.view.held.write().expect("held lock").get_mut(stream) {
                    h.releasing = true;
                }
                self.release(stream, true);
                Err(AcquireError::Unavailable(format!(
                    "node {} cannot take stream {stream}: {e}",
                    self.config.node
                )))
            }
        };
        for reply in waiting {
            let _ = reply.send(outcome.clone());
        }
    }

    /// Starts giving `stream` up: new commands go elsewhere at once; its
    /// running commands finish (in a task of its own, while the loop keeps
    /// renewing), then the appender forgets it and — with `delete` — the
    /// lease is deleted so another node takes it without waiting for it to
    /// expire.
    ///
    /// A stream still being taken (fenced, caught up, opened) is marked
    /// releasing at once, but its release waits for the take to end
    /// ([`Loop::taken`]): released now, it would be opened again by the
    /// take afterwards, and that writer would be left running.
    fn step_down(&mut self, stream: &StreamId, delete: bool) {
        {
            let mut held = self.view.held.write().expect("held lock");
            match held.get_mut(stream) {
                Some(h) if !h.releasing => {
                    h.releasing = true;
                    if !h.ready {
                        self.release_after_take.insert(stream.clone(), delete);
                        return;
                    }
                }
                _ => return,
            }
        }
        self.release(stream, delete);
    }

    /// Lets `stream`'s running commands finish, then makes the appender
    /// forget it and reports [`Command::Released`].
    fn release(&self, stream: &StreamId, delete: bool) {
        let (holder, appender, commands) = (
            self.holder.clone(),
            self.appender.clone(),
            self.commands.clone(),
        );
        let stream = stream.clone();
        tokio::spawn(async move {
            holder.disown(stream.clone()).await;
            appender.release(&stream);
            let _ = commands.send(Command::Released { stream, delete }).await;
        });
    }

    /// `stream` has no command running any more: its lease goes.
    async fn released(&mut self, stream: &StreamId, delete: bool) {
        let held = self.view.held.write().expect("held lock").remove(stream);
        self.acquired_at.remove(stream);
        if let (true, Some(held)) = (delete, held) {
            if held.lost {
                return;
            }
            let revision = self.view.lease_revision(stream, held.revision);
            let deleted = tokio::time::timeout(
                self.call_bound(),
                self.owners
                    .delete_expect_revision(lease_key(stream), Some(revision)),
            )
            .await;
            match deleted {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(stream = %stream, error = %e, "lease not deleted (it expires)")
                }
                Err(_) => {
                    debug!(stream = %stream, "lease delete not answered in time (it expires)")
                }
            }
        }
        info!(stream = %stream, "stream released");
    }

    async fn leave(&mut self) {
        self.view
            .leaving
            .store(true, std::sync::atomic::Ordering::SeqCst);
        info!(
            streams = self.view.held().len(),
            "leaving the cluster: handing every stream over"
        );
        match tokio::time::timeout(self.call_bound(), self.nodes.delete(&self.config.node)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot delete this node's heartbeat (it expires)"),
            Err(_) => warn!("this node's heartbeat delete was not answered in time (it expires)"),
        }
        for stream in self.view.held().into_keys() {
            self.step_down(&stream, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_streams_and_moves_only_a_lost_nodes_share() {
        let three: Vec<String> = ["n1", "n2", "n3"].map(str::to_owned).to_vec();
        let streams: Vec<String> = (0..300).map(|i| format!("repo/ns/r{i}")).collect();
        let owner = |live: &[String], s: &str| preferred(live, s).unwrap().clone();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for s in &streams {
            *counts.entry(owner(&three, s)).or_default() += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(
            counts.values().all(|&n| (70..=130).contains(&n)),
            "{counts:?}"
        );
        // n2 lost: only its streams move.
        let two: Vec<String> = ["n1", "n3"].map(str::to_owned).to_vec();
        for s in &streams {
            let before = owner(&three, s);
            let after = owner(&two, s);
            if before != "n2" {
                assert_eq!(before, after, "{s} moved though its owner lives");
            }
        }
        assert_eq!(preferred(&[], "repo/ns/r"), None);
    }
}
