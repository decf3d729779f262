//! Snapshots of a node's store, and the trimming of `CAIRN_LOG` they make
//! possible: without them the log keeps every commit ever made (every
//! key-value rewrite, every artifact record) and a node that joins replays
//! all of it.
//!
//! - **A snapshot** is a RocksDB checkpoint of one node's store
//!   ([`Store::checkpoint_async`]: the log, every view, the blob rows, the
//!   replication position `P` it holds), one object per file in the
//!   JetStream object store `CAIRN_SNAPSHOTS` (replicas as the log's),
//!   under `<id>/<file name>`, and a [`Manifest`] (object `manifest`)
//!   naming the current one. Every node's store is the same at the same
//!   position (see [`super::log`]), so one node's checkpoint is every
//!   node's. Blob *files* are not in it: they are in `CAIRN_BLOBS` already,
//!   and a node restored from a snapshot fetches those its views reference
//!   before it applies anything ([`super::Blobs::ensure_digests`]).
//! - **Who takes them**: the holder of the [`SNAPSHOTTER_ROLE`] lease, every
//!   `cluster.snapshot-interval`, when its position moved at least
//!   `cluster.snapshot-min-messages` past the last snapshot's
//!   ([`Snapshotter::round`]).
//! - **Trimming**: once a snapshot at `P` is published, the log's messages
//!   below `trimmed_below` are purged, where `trimmed_below - 1` is the
//!   lowest position among `P` and every live node's applied position (from
//!   their heartbeats): no live node ever finds a message it still needs
//!   gone. The purge is per subject ([`trim`]) and keeps each subject's last
//!   message: `Nats-Expected-Last-Subject-Sequence` (the owners' fencing)
//!   compares with a subject's last sequence, which a plain purge of the
//!   stream would reset to 0, deposing every owner whose stream was quiet.
//!   What survives below `trimmed_below` is at most one message per cairn
//!   stream.
//! - **Collecting blobs**: then `CAIRN_BLOBS` loses every blob that neither
//!   the snapshot's views nor a commit the log still holds reference, once
//!   its copy is older than `cluster.blob-grace` ([`Blobs::collect`], whose
//!   docs say why that is safe for commits not yet published).
//! - **Restoring**: a node whose position is below the manifest's
//!   `trimmed_below` (it was down while the log was trimmed), or whose store
//!   is empty while a snapshot exists, replaces its store by the snapshot
//!   before it opens it ([`restore`]; the old store's blob files are kept)
//!   and then applies the log from `P + 1`. A running node that meets a gap
//!   in the log (it was not live when the log was trimmed) stops applying
//!   ([`super::Applied::behind_trim`]); the node then stops, and started
//!   again it restores.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::{
    self,
    consumer::DeliverPolicy,
    object_store::{ObjectMetadata, ObjectStore},
    stream::StorageType,
};
use cairn_storage::{Digest, Store};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use tracing::{info, warn};

use super::{
    blobs::{Blobs, Collected},
    log::{decode_commit, log_consumer, LOG_STREAM, LOG_SUBJECT_PREFIX},
};

/// The object store bucket that holds the snapshots.
pub const SNAPSHOT_BUCKET: &str = "CAIRN_SNAPSHOTS";
/// The object naming the current snapshot.
pub const MANIFEST_OBJECT: &str = "manifest";
/// The pseudo-stream whose lease makes a node the one that takes snapshots
/// and trims the log.
pub const SNAPSHOTTER_ROLE: &str = "role/snapshotter";
/// Size of the object store's chunks (below any server's max payload).
const CHUNK_BYTES: usize = 256 * 1024;
/// Longest a manifest may be, bytes (a bound on what a node reads).
const MANIFEST_MAX_BYTES: usize = 4 << 20;
/// Longest an object's read may wait for its next chunk. An object read
/// while the snapshotter replaces it (the manifest) or deletes it (an
/// earlier round's file) loses its chunks under the reader, and
/// async-nats's reader then waits for them for ever; past this, the read
/// fails, and the reader reads the current snapshot again.
pub const OBJECT_READ_IDLE: Duration = Duration::from_secs(10);
/// Reads of the manifest [`Snapshots::latest`] makes when one loses its
/// chunks under it (replaced meanwhile).
const MANIFEST_READS_MAX: usize = 3;

/// What names a snapshot (the object `manifest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Its id: the prefix of its files' objects.
    pub id: String,
    /// The replication position its store holds.
    pub position: u64,
    /// The last sequence number of its log.
    pub last_seq: u64,
    /// `CAIRN_LOG` holds no message below this position but each
    /// subject's last: a node below it restores.
    pub trimmed_below: u64,
    /// The node that took it.
    pub node: String,
    /// When, Unix ms.
    pub taken_at_ms: u64,
    /// Its files: name and size in bytes.
    pub files: Vec<(String, u64)>,
}

impl Manifest {
    /// Whether a store at replication `position` must start from this
    /// snapshot: the log no longer holds what it lacks, or it is empty (a
    /// snapshot is faster than the whole log).
    pub fn needed_by(&self, position: u64) -> bool {
        position.saturating_add(1) < self.trimmed_below || (position == 0 && self.position > 0)
    }

    /// Bytes of its files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, size)| size).sum()
    }

    fn object(&self, file: &str) -> String {
        format!("{}/{file}", self.id)
    }
}

/// The snapshots bucket.
#[derive(Clone)]
pub struct Snapshots {
    bucket: ObjectStore,
    /// How long a read waits for an object's next chunk
    /// ([`OBJECT_READ_IDLE`] unless [`Snapshots::with_read_idle`]).
    read_idle: Duration,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots").finish_non_exhaustive()
    }
}

impl Snapshots {
    /// Finds or creates `CAIRN_SNAPSHOTS` with `replicas`.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, String> {
        if let Ok(bucket) = js.get_object_store(SNAPSHOT_BUCKET).await {
            return Ok(Self::of(bucket));
        }
        let bucket = js
            .create_object_store(jetstream::object_store::Config {
                bucket: SNAPSHOT_BUCKET.to_owned(),
                description: Some("cairn: snapshots of a node's store".to_owned()),
                storage: StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create or find object store {SNAPSHOT_BUCKET}: {e}"))?;
        Ok(Self::of(bucket))
    }

    fn of(bucket: ObjectStore) -> Self {
        Self {
            bucket,
            read_idle: OBJECT_READ_IDLE,
        }
    }

    /// The same bucket, its reads failing after `idle` without a chunk.
    pub fn with_read_idle(self, idle: Duration) -> Self {
        Self {
            read_idle: idle,
            ..self
        }
    }

    /// The current snapshot's manifest; `None` when none was taken.
    pub async fn latest(&self) -> Result<Option<Manifest>, String> {
        let mut attempt = 0;
        let body = loop {
            attempt += 1;
            let mut object = match self.bucket.get(MANIFEST_OBJECT).await {
                Ok(object) => object,
                Err(e) if e.kind() == jetstream::object_store::GetErrorKind::NotFound => {
                    return Ok(None)
                }
                Err(e) => return Err(format!("reading {SNAPSHOT_BUCKET}/{MANIFEST_OBJECT}: {e}")),
            };
            let mut body = Vec::new();
            match read_object(
                &mut object,
                &mut body,
                MANIFEST_MAX_BYTES as u64 + 1,
                self.read_idle,
            )
            .await
            {
                Ok(_) => break body,
                // Replaced while it was read: read the new one.
                Err(ObjectReadError::Stalled(_)) if attempt < MANIFEST_READS_MAX => continue,
                Err(e) => return Err(format!("reading {SNAPSHOT_BUCKET}/{MANIFEST_OBJECT}: {e}")),
            }
        };
        if body.len() > MANIFEST_MAX_BYTES {
            return Err(format!(
                "{SNAPSHOT_BUCKET}/{MANIFEST_OBJECT} is over {MANIFEST_MAX_BYTES} bytes"
            ));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| format!("{SNAPSHOT_BUCKET}/{MANIFEST_OBJECT} is malformed: {e}"))
    }

    /// Checkpoints `store` under `work_dir` and uploads its files; answers
    /// the manifest, not yet published ([`Snapshots::publish`]), and the
    /// blobs the checkpoint's views reference.
    pub async fn take(
        &self,
        store: &Store,
        work_dir: &Path,
        node: &str,
    ) -> Result<(Manifest, Vec<Digest>), String> {
        let id = cairn_events::envelope::new_id();
        let dir = work_dir.join(format!("snapshot-{id}"));
        tokio::fs::create_dir_all(work_dir)
            .await
            .map_err(|e| format!("creating {}: {e}", work_dir.display()))?;
        let taken = store
            .checkpoint_async(dir.clone())
            .await
            .map_err(|e| e.to_string());
        let uploaded = match taken {
            Ok(at) => match self.upload(&id, &dir).await {
                Ok(files) => {
                    let d = dir.clone();
                    tokio::task::spawn_blocking(move || Store::referenced_blobs_at(&d))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                        .map(|referenced| (at, files, referenced))
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        // The checkpoint's hard links go whatever happened.
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(dir = %dir.display(), error = %e, "cannot remove a snapshot's checkpoint");
            }
        }
        let (at, files, referenced) = uploaded?;
        let manifest = Manifest {
            id,
            position: at.position,
            last_seq: at.last_seq,
            trimmed_below: 0,
            node: node.to_owned(),
            taken_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            files,
        };
        Ok((manifest, referenced))
    }

    async fn upload(&self, id: &str, dir: &Path) -> Result<Vec<(String, u64)>, String> {
        let mut files = Vec::new();
        let mut entries = tokio::fs::read_dir(dir)
            .await
            .map_err(|e| format!("reading {}: {e}", dir.display()))?;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut file = tokio::fs::File::open(entry.path())
                .await
                .map_err(|e| format!("opening {}: {e}", entry.path().display()))?;
            let info = self
                .bucket
                .put(
                    ObjectMetadata {
                        name: format!("{id}/{name}"),
                        chunk_size: Some(CHUNK_BYTES),
                        ..Default::default()
                    },
                    &mut file,
                )
                .await
                .map_err(|e| format!("uploading {name} to {SNAPSHOT_BUCKET}: {e}"))?;
            files.push((name, info.size as u64));
        }
        files.sort();
        Ok(files)
    }

    /// Makes `manifest` the current snapshot, then deletes every other
    /// object: the files of the one it replaces, and those of a snapshot
    /// whose taker died before it was published.
    pub async fn publish(&self, manifest: &Manifest) -> Result<(), String> {
        let body = serde_json::to_vec(manifest).map_err(|e| e.to_string())?;
        self.bucket
            .put(MANIFEST_OBJECT, &mut body.as_slice())
            .await
            .map_err(|e| format!("writing {SNAPSHOT_BUCKET}/{MANIFEST_OBJECT}: {e}"))?;
        let current = format!("{}/", manifest.id);
        let names: Vec<String> = match self.bucket.list().await {
            // Bounded: a listing whose entries go meanwhile waits for them
            // (as a read does, see `read_object`).
            Ok(list) => {
                match tokio::time::timeout(self.read_idle, list.try_collect::<Vec<_>>()).await {
                    Ok(Ok(infos)) => infos.into_iter().map(|i| i.name).collect(),
                    Ok(Err(e)) => {
                        warn!(error = %e, "cannot list the old snapshots' files");
                        Vec::new()
                    }
                    Err(_) => {
                        warn!(within = ?self.read_idle, "listing the old snapshots' files did not end");
                        Vec::new()
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot list the old snapshots' files");
                Vec::new()
            }
        };
        // A failure is logged: the next round deletes what is left.
        for name in names {
            if name == MANIFEST_OBJECT || name.starts_with(&current) {
                continue;
            }
            if let Err(e) = self.bucket.delete(&name).await {
                warn!(object = %name, error = %e, "cannot delete an old snapshot's file");
            }
        }
        Ok(())
    }

    /// Downloads `manifest`'s files into `dir` (created), each checked
    /// against its size, and fsynced.
    async fn download(&self, manifest: &Manifest, dir: &Path) -> Result<(), String> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for (file, size) in &manifest.files {
            let path = dir.join(file);
            let mut object = self.bucket.get(manifest.object(file)).await.map_err(|e| {
                format!(
                    "snapshot {} file {file}: {e} (replaced meanwhile? retry)",
                    manifest.id
                )
            })?;
            let mut out = tokio::fs::File::create(&path)
                .await
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            let copied = read_object(&mut object, &mut out, size + 1, self.read_idle)
                .await
                .map_err(|e| {
                    format!(
                        "downloading snapshot {} file {file}: {e} (replaced meanwhile? retry)",
                        manifest.id
                    )
                })?;
            if copied != *size {
                return Err(format!(
                    "snapshot {} file {file}: {copied} bytes downloaded, {size} expected",
                    manifest.id
                ));
            }
            out.sync_all()
                .await
                .map_err(|e| format!("syncing {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// Why [`read_object`] stopped short.
#[derive(Debug)]
pub enum ObjectReadError {
    /// No chunk came for this long: the object lost its chunks under the
    /// reader (replaced or deleted meanwhile).
    Stalled(Duration),
    /// Reading or writing failed.
    Io(std::io::Error),
}

impl std::fmt::Display for ObjectReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stalled(idle) => write!(f, "no data for {idle:?}"),
            Self::Io(e) => e.fmt(f),
        }
    }
}

/// Copies at most `limit` bytes of `object` to `out`, failing when no
/// chunk comes for `idle` ([`OBJECT_READ_IDLE`]); answers the bytes copied.
pub async fn read_object(
    object: &mut (impl tokio::io::AsyncRead + Unpin),
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
    limit: u64,
    idle: Duration,
) -> Result<u64, ObjectReadError> {
    use tokio::io::AsyncWriteExt as _;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut copied = 0u64;
    while copied < limit {
        let want = usize::try_from(limit - copied).map_or(buf.len(), |left| left.min(buf.len()));
        let n = tokio::time::timeout(idle, object.read(&mut buf[..want]))
            .await
            .map_err(|_| ObjectReadError::Stalled(idle))?
            .map_err(ObjectReadError::Io)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .await
            .map_err(ObjectReadError::Io)?;
        copied += n as u64;
    }
    out.flush().await.map_err(ObjectReadError::Io)?;
    Ok(copied)
}

/// Replaces the store directory `store_dir` by the snapshot `manifest`
/// names: downloaded beside it first (`<store_dir>.restoring`), the old
/// store's blob files moved into it, then swapped in. The store must not be
/// open. A crash midway leaves either the old store (the next start
/// restores again) or the restored one.
pub async fn restore(
    snapshots: &Snapshots,
    manifest: &Manifest,
    store_dir: &Path,
) -> Result<(), String> {
    let staging = with_suffix(store_dir, "restoring");
    if tokio::fs::try_exists(&staging).await.unwrap_or(false) {
        tokio::fs::remove_dir_all(&staging)
            .await
            .map_err(|e| format!("removing {}: {e}", staging.display()))?;
    }
    info!(
        snapshot = %manifest.id,
        position = manifest.position,
        bytes = manifest.bytes(),
        files = manifest.files.len(),
        "restoring the store from the cluster's snapshot"
    );
    snapshots.download(manifest, &staging).await?;
    // The old store's blob files stay: most are still referenced, and the
    // store's collection removes the others.
    let old_blobs = store_dir.join("blobs");
    if tokio::fs::try_exists(&old_blobs).await.unwrap_or(false) {
        tokio::fs::rename(&old_blobs, staging.join("blobs"))
            .await
            .map_err(|e| format!("keeping the blob files of {}: {e}", store_dir.display()))?;
    }
    let old = with_suffix(store_dir, "replaced");
    if tokio::fs::try_exists(store_dir).await.unwrap_or(false) {
        if tokio::fs::try_exists(&old).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(&old)
                .await
                .map_err(|e| format!("removing {}: {e}", old.display()))?;
        }
        tokio::fs::rename(store_dir, &old)
            .await
            .map_err(|e| format!("moving {} aside: {e}", store_dir.display()))?;
    }
    tokio::fs::rename(&staging, store_dir)
        .await
        .map_err(|e| format!("moving the snapshot into {}: {e}", store_dir.display()))?;
    if let Some(parent) = store_dir.parent() {
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    if tokio::fs::try_exists(&old).await.unwrap_or(false) {
        tokio::fs::remove_dir_all(&old)
            .await
            .map_err(|e| format!("removing {}: {e}", old.display()))?;
    }
    info!(snapshot = %manifest.id, position = manifest.position, "store restored from the snapshot");
    Ok(())
}

fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

/// What one trim did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Subjects (cairn streams) looked at.
    pub subjects: u64,
    /// Messages purged.
    pub purged: u64,
}

/// Purges `CAIRN_LOG`'s messages below `below`, keeping each subject's
/// last (see the module docs): per subject, everything below the lower of
/// `below` and its last sequence. A purge by sequence removes only what is
/// older than it, so a commit arriving meanwhile is never touched.
pub async fn trim(js: &jetstream::Context, below: u64) -> Result<Trimmed, String> {
    let stream = js
        .get_stream(LOG_STREAM)
        .await
        .map_err(|e| format!("stream {LOG_STREAM}: {e}"))?;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("{LOG_SUBJECT_PREFIX}*"))
        .await
        .map_err(|e| format!("subjects of {LOG_STREAM}: {e}"))?
        .try_collect()
        .await
        .map_err(|e| format!("subjects of {LOG_STREAM}: {e}"))?;
    let mut trimmed = Trimmed::default();
    for (subject, count) in subjects {
        trimmed.subjects += 1;
        if count <= 1 {
            continue;
        }
        let last = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .map_err(|e| format!("last message of {subject}: {e}"))?
            .sequence;
        let bound = below.min(last);
        if bound <= 1 {
            continue;
        }
        let purged = stream
            .purge()
            .filter(subject.clone())
            .sequence(bound)
            .await
            .map_err(|e| format!("trimming {subject} below {bound}: {e}"))?;
        trimmed.purged += purged.purged;
    }
    Ok(trimmed)
}

/// What one round of the snapshotter did.
#[derive(Debug, Clone)]
pub struct Round {
    /// The snapshot it made current.
    pub manifest: Manifest,
    /// The log's trim.
    pub trimmed: Trimmed,
    /// The blobs' collection.
    pub collected: Collected,
}

/// What the snapshotter role works with ([`Snapshotter::round`]).
#[derive(Debug, Clone)]
pub struct Snapshotter {
    /// JetStream.
    pub js: jetstream::Context,
    /// Replicas of the snapshots bucket, should a round create it.
    pub replicas: usize,
    /// `CAIRN_BLOBS`.
    pub blobs: Blobs,
    /// This node's store.
    pub store: Store,
    /// Where checkpoints are made (the node's data directory: the store's
    /// file system).
    pub work_dir: PathBuf,
    /// This node's id.
    pub node: String,
    /// Positions the store must move past the last snapshot for a new one.
    pub min_messages: u64,
}

impl Snapshotter {
    /// One round of the snapshotter role: when the store moved at least
    /// `min_messages` positions past the current snapshot, takes one, makes
    /// it current, trims the log below the lowest of its position and
    /// `live_positions` (every live node's applied position), and collects
    /// the blobs nothing needs any more ([`Blobs::collect`]: what the
    /// snapshot's views and the commits the log still holds reference is
    /// kept). Answers what it did, or `None` when there was nothing to do.
    pub async fn round(
        &self,
        live_positions: impl FnOnce() -> Vec<u64>,
    ) -> Result<Option<Round>, String> {
        let Self {
            js,
            replicas,
            blobs,
            store,
            work_dir,
            node,
            min_messages,
        } = self;
        let min_messages = *min_messages;
        let snapshots = &Snapshots::open(js, *replicas).await?;
        let previous = snapshots.latest().await?;
        let position = store.replication_position().map_err(|e| e.to_string())?;
        let since = previous.as_ref().map_or(0, |p| p.position);
        if position == 0 || position < since.saturating_add(min_messages.max(1)) {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        // Read before what the collection keeps is worked out.
        let bound = blobs.collection_bound().await?;
        let (mut manifest, referenced) = snapshots.take(store, work_dir, node).await?;
        let floor = live_positions()
            .into_iter()
            .chain([manifest.position])
            .min()
            .unwrap_or(manifest.position);
        manifest.trimmed_below = floor
            .saturating_add(1)
            .max(previous.as_ref().map_or(0, |p| p.trimmed_below));
        snapshots.publish(&manifest).await?;
        let trimmed = trim(js, manifest.trimmed_below).await?;
        let mut needed: HashSet<[u8; 32]> = referenced.into_iter().map(|d| d.0).collect();
        let scanned = referenced_in_log(js, store, manifest.trimmed_below, &mut needed).await?;
        let collected = blobs.collect(bound, &needed).await?;
        info!(
            snapshot = %manifest.id,
            position = manifest.position,
            bytes = manifest.bytes(),
            trimmed_below = manifest.trimmed_below,
            purged = trimmed.purged,
            commits_scanned = scanned,
            blobs_needed = needed.len(),
            blobs_collected = collected.blobs,
            blobs_kept_young = collected.kept_young,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot taken; log trimmed; blobs collected"
        );
        Ok(Some(Round {
            manifest,
            trimmed,
            collected,
        }))
    }
}

/// Longest wait for the next message of the log while it is scanned.
const SCAN_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds to `needed` every blob the commits of `CAIRN_LOG` from position
/// `from` to its end (as it is now) reference (what a node still applying
/// them fetches); answers how many messages it read.
async fn referenced_in_log(
    js: &jetstream::Context,
    store: &Store,
    from: u64,
    needed: &mut HashSet<[u8; 32]>,
) -> Result<u64, String> {
    let mut stream = js
        .get_stream(LOG_STREAM)
        .await
        .map_err(|e| format!("stream {LOG_STREAM}: {e}"))?;
    let last = super::last_sequence_of(&mut stream, LOG_STREAM).await?;
    if last < from {
        return Ok(0);
    }
    let consumer = stream
        .create_consumer(log_consumer(DeliverPolicy::ByStartSequence {
            start_sequence: from,
        }))
        .await
        .map_err(|e| format!("ordered consumer on {LOG_STREAM}: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("reading {LOG_STREAM}: {e}"))?;
    let mut read = 0;
    loop {
        let message = tokio::time::timeout(SCAN_MESSAGE_TIMEOUT, messages.next())
            .await
            .map_err(|_| format!("reading {LOG_STREAM}: nothing for {SCAN_MESSAGE_TIMEOUT:?}"))?
            .ok_or_else(|| format!("reading {LOG_STREAM}: the consumer ended"))?
            .map_err(|e| format!("reading {LOG_STREAM}: {e}"))?;
        read += 1;
        let position = message.info().map_err(|e| e.to_string())?.stream_sequence;
        // Fences and markers carry no envelopes; an undecodable commit
        // references nothing.
        if let Ok(envelopes) = decode_commit(&message.payload) {
            for env in &envelopes {
                needed.extend(store.blobs_referenced(env).into_iter().map(|d| d.0));
            }
        }
        if position >= last {
            return Ok(read);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(position: u64, trimmed_below: u64) -> Manifest {
        Manifest {
            id: "x".into(),
            position,
            last_seq: position,
            trimmed_below,
            node: "n".into(),
            taken_at_ms: 0,
            files: vec![("CURRENT".into(), 16), ("000009.sst".into(), 1000)],
        }
    }

    #[test]
    fn a_store_restores_when_the_log_lacks_what_it_needs_or_it_is_empty() {
        let m = manifest(100, 51);
        // Position 50 needs 51 on: still in the log.
        assert!(!m.needed_by(50));
        assert!(m.needed_by(49));
        assert!(m.needed_by(0));
        assert!(!m.needed_by(100));
        assert!(!m.needed_by(150));
        // An empty store with an empty snapshot has nothing to gain.
        assert!(!manifest(0, 0).needed_by(0));
        assert_eq!(m.bytes(), 1016);
        assert_eq!(m.object("CURRENT"), "x/CURRENT");
    }

    #[test]
    fn restore_paths_sit_beside_the_store() {
        assert_eq!(
            with_suffix(Path::new("/data/store"), "restoring"),
            PathBuf::from("/data/store.restoring")
        );
    }
}
