//! Blobs travel beside the log: `CAIRN_BLOBS`, one subject per blob part
//! (`cairn.blob.<hex digest>.<part>`, at most one message per subject), each
//! part at most the server's `max_payload` less a margin for headers; part 0
//! says how many parts there are (`Cairn-Blob-Parts`).
//!
//! An owner ships the blobs its events reference before it publishes the
//! commit ([`Blobs::ship`]; each digest once per process, the server keeps
//! one copy per part whatever is sent again). A replica's applier fetches
//! the ones it does not hold before it applies a batch of commits
//! ([`Blobs::ensure`], several at once, with direct gets) and checks their
//! digest. A blob fetched counts as shipped (it is in the stream) for as
//! long as the fetched copy is fresh (see collection below).
//!
//! Another node may ship a blob for the owner: an artifact body is
//! downloaded by the node that received the request, which ships it
//! ([`Blobs::ship_digests`]) and sends the owner the small record; the
//! owner takes the body from the stream ([`Blobs::ensure_one`]) before it
//! appends. Blobs of several parts (large artifact bodies) are read and
//! written part by part, never held whole in memory.
//!
//! **Collection** ([`Blobs::collect`], run by the snapshotter after it
//! trimmed the log, see [`super::snapshot`]): a blob goes from the stream
//! when nothing can need it any more — no view of the snapshot references
//! it, no commit the log still holds references it, and its part 0 was
//! stored more than the grace ([`COLLECT_GRACE`]) ago. The grace covers
//! what the scan cannot see: a commit not yet published whose blob was
//! shipped (or found shipped) before. A node skips shipping a blob only
//! while the copy it knows of is younger than a third of the grace (the
//! time of the message it shipped or fetched, not of its own memory), so a
//! commit published after a collection never leans on a collected blob:
//! its blob is either young (never collected) or shipped again. A ship's
//! de-duplication id names the grace period it falls in, so a blob shipped
//! again after a collection is never dropped as a duplicate of the
//! collected copy. The purge is by subject and below a sequence read before
//! the scan, so a blob shipped again meanwhile is never touched.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_nats::jetstream::{self, message::PublishMessage as Publish, stream::StorageType};
use cairn_events::v1::Envelope;
use cairn_storage::{BlobPin, BlobStore as _, Digest, StorageError, Store};
use futures::{StreamExt as _, TryStreamExt as _};

/// Name of the JetStream stream that holds shipped blobs.
pub const BLOB_STREAM: &str = "CAIRN_BLOBS";
/// Header of part 0: how many parts the blob has.
pub const PARTS_HEADER: &str = "Cairn-Blob-Parts";
/// Room left in each message for headers.
const HEADER_ROOM_BYTES: usize = 4 * 1024;
/// Most digests remembered as shipped before the memory is cleared.
const SHIPPED_MAX: usize = 1_000_000;

/// The stream's de-duplication window: a blob shipped again within it is
/// dropped as a duplicate, and its copy is as old as the first.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// A blob no view or retained commit references goes once its copy is this
/// old (default; `cluster.blob-grace`): three times how long a copy counts
/// as shipped ([`Blobs::with_grace`]), so that the rest covers the
/// de-duplication window and the longest a commit takes from its blobs'
/// shipping to its publishing.
pub const COLLECT_GRACE: Duration = Duration::from_secs(30 * 60);
/// Most parts of blobs published and not yet confirmed by JetStream.
const SHIP_WINDOW_PARTS: usize = 16;

fn subject(digest: &Digest, part: usize) -> String {
    format!("cairn.blob.{}.{part}", hex::encode(digest.0))
}

/// Ships and fetches blobs (see the module docs).
#[derive(Debug, Clone)]
pub struct Blobs {
    js: jetstream::Context,
    part_bytes: usize,
    /// Digests known to be in the stream, with the time of that copy.
    shipped: Arc<std::sync::Mutex<HashMap<[u8; 32], SystemTime>>>,
    /// How old an unneeded blob's copy must be to be collected.
    grace: Duration,
}

impl Blobs {
    /// Creates (or finds) `CAIRN_BLOBS` with `replicas`.
    pub async fn start(
        js: jetstream::Context,
        max_payload: usize,
        replicas: usize,
    ) -> Result<Self, String> {
        let config = jetstream::stream::Config {
            name: BLOB_STREAM.to_owned(),
            subjects: vec!["cairn.blob.*.*".to_owned()],
            storage: StorageType::File,
            num_replicas: replicas.max(1),
            max_messages_per_subject: 1,
            duplicate_window: DUPLICATE_WINDOW,
            // Replicas fetch with direct gets, served by any server holding
            // the stream, not queued behind the leader's API.
            allow_direct: true,
            ..Default::default()
        };
        let mut stream = js
            .get_or_create_stream(config.clone())
            .await
            .map_err(|e| format!("cannot create or find stream {BLOB_STREAM}: {e}"))?;
        let found = stream
            .info()
            .await
            .map_err(|e| format!("stream {BLOB_STREAM}: {e}"))?
            .config
            .clone();
        if !found.allow_direct {
            // Made by an earlier build: direct gets turned on in place.
            js.update_stream(jetstream::stream::Config {
                allow_direct: true,
                ..found
            })
            .await
            .map_err(|e| format!("cannot allow direct gets on stream {BLOB_STREAM}: {e}"))?;
        }
        Ok(Self {
            js,
            part_bytes: max_payload.saturating_sub(HEADER_ROOM_BYTES).max(1024),
            shipped: Arc::default(),
            grace: COLLECT_GRACE,
        })
    }

    /// Collects unneeded blobs once their copy is `grace` old, and counts
    /// a copy as shipped for a third of that (see the module docs).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long a copy of a blob in the stream counts as shipped: a node
    /// ships again a blob whose known copy is older.
    fn fresh(&self) -> Duration {
        self.grace / 3
    }

    /// Publishes every blob `envelopes` reference that this process has not
    /// shipped yet, and waits for JetStream to store them.
    pub async fn ship(&self, store: &Store, envelopes: &[Envelope]) -> Result<(), StorageError> {
        let mut digests = Vec::new();
        for env in envelopes {
            for digest in store.blobs_referenced(env) {
                if !digests.contains(&digest) {
                    digests.push(digest);
                }
            }
        }
        self.ship_digests(store, &digests).await
    }

    /// Publishes each of `digests` (held by `store`) that this process has
    /// not shipped yet, and waits for JetStream to store them. A blob of
    /// one part is read whole; a larger one part by part (memory: one part
    /// at a time, whatever the blob's size — artifact bodies can be large).
    pub async fn ship_digests(
        &self,
        store: &Store,
        digests: &[Digest],
    ) -> Result<(), StorageError> {
        let wanted: Vec<Digest> = {
            let shipped = self.shipped.lock().expect("shipped lock");
            let fresh_since = SystemTime::now() - self.fresh();
            digests
                .iter()
                .filter(|d| shipped.get(&d.0).is_none_or(|at| *at < fresh_since))
                .copied()
                .collect()
        };
        let mut acks = Vec::new();
        // The de-duplication id names the grace period the ship falls in:
        // a blob collected (its copy older than the grace) and shipped
        // again is never dropped as a duplicate of the collected copy.
        let generation = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            / self.grace.as_secs().max(1);
        for digest in &wanted {
            let part_bytes = self.part_bytes as u64;
            let read_part = move |s: &Store, d: Digest, start: u64, end: u64| {
                let mut reader = s
                    .read_range(&d, start..end)?
                    .ok_or_else(|| StorageError::Corrupt(format!("blob {d} is gone")))?;
                let mut part = Vec::with_capacity((end - start) as usize);
                std::io::Read::read_to_end(&mut reader, &mut part)
                    .map_err(|e| StorageError::io(format!("reading blob {d}"), e))?;
                Ok::<_, StorageError>(part)
            };
            // Its size and first part in one trip to the blocking pool (most
            // blobs are one part).
            let (s, d) = (store.clone(), *digest);
            let (size, first) = tokio::task::spawn_blocking(move || {
                let size = s.blob_size(&d)?.ok_or_else(|| {
                    StorageError::Corrupt(format!("blob {d} referenced but not stored"))
                })?;
                Ok::<_, StorageError>((size, read_part(&s, d, 0, size.min(part_bytes))?))
            })
            .await
            .map_err(|e| StorageError::Unavailable(format!("reading blob: {e}")))??;
            let count = usize::try_from(size.div_ceil(part_bytes).max(1)).unwrap_or(usize::MAX);
            let mut first = Some(first);
            for i in 0..count {
                let part = match first.take() {
                    Some(part) => part,
                    None => {
                        let (s, d) = (store.clone(), *digest);
                        let start = i as u64 * part_bytes;
                        let end = (start + part_bytes).min(size);
                        tokio::task::spawn_blocking(move || read_part(&s, d, start, end))
                            .await
                            .map_err(|e| {
                                StorageError::Unavailable(format!("reading blob: {e}"))
                            })??
                    }
                };
                let mut publish = Publish::build()
                    .message_id(format!("{}.{i}.{generation}", hex::encode(digest.0)))
                    .payload(bytes::Bytes::from(part));
                if i == 0 {
                    publish = publish.header(PARTS_HEADER, count.to_string().as_str());
                }
                let ack = self
                    .js
                    .send_publish(subject(digest, i), publish)
                    .await
                    .map_err(|e| unavailable(digest, e))?;
                acks.push((*digest, ack));
                // A large blob's parts are confirmed as they go, so at most
                // a window of them is in flight.
                if acks.len() >= SHIP_WINDOW_PARTS {
                    for (digest, ack) in acks.drain(..) {
                        ack.await.map_err(|e| unavailable(&digest, e))?;
                    }
                }
            }
        }
        for (digest, ack) in acks {
            ack.await.map_err(|e| unavailable(&digest, e))?;
        }
        // A copy as old as the de-duplication window at most (a blob sent
        // again within it keeps its first copy).
        let at = SystemTime::now() - DUPLICATE_WINDOW;
        self.mark_shipped(wanted.iter().map(|d| (*d, at)));
        Ok(())
    }

    /// Remembers `digests` as being in `CAIRN_BLOBS` (shipped by this
    /// process, or fetched from there), each with the time of its copy.
    fn mark_shipped(&self, digests: impl ExactSizeIterator<Item = (Digest, SystemTime)>) {
        let mut shipped = self.shipped.lock().expect("shipped lock");
        if shipped.len() + digests.len() > SHIPPED_MAX {
            shipped.clear();
        }
        shipped.extend(digests.map(|(d, at)| (d.0, at)));
    }

    /// Blob `digest`, pinned in `store`: fetched from `CAIRN_BLOBS` when
    /// `store` lacks it (digest checked). For a node about to append an
    /// event that refers to a blob another node shipped (an artifact body
    /// downloaded by the node that received the request).
    pub async fn ensure_one(&self, store: &Store, digest: Digest) -> Result<BlobPin, String> {
        let s = store.clone();
        let held = tokio::task::spawn_blocking(move || s.pin_stored(&digest))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if let Some(pin) = held {
            return Ok(pin);
        }
        let stream = self
            .js
            .get_stream(BLOB_STREAM)
            .await
            .map_err(|e| format!("stream {BLOB_STREAM}: {e}"))?;
        let fetched = fetch(&stream, store, &digest).await?;
        let copied_at = fetched.copied_at;
        let s = store.clone();
        let pin = tokio::task::spawn_blocking(move || fetched.pin(&s, &digest))
            .await
            .map_err(|e| e.to_string())??;
        self.mark_shipped([(digest, copied_at)].into_iter());
        Ok(pin)
    }

    /// Fetches every blob `envelopes` reference that `store` lacks, at most
    /// [`FETCH_CONCURRENCY`] at once; the pins hold them until the events
    /// that reference them are applied. One pass over a whole batch: the
    /// digests are gathered (each once), checked in one blocking call, and
    /// only the missing ones fetched — a replica catching up on events that
    /// share their blobs checks each blob once per batch, not once per
    /// event.
    pub async fn ensure(
        &self,
        store: &Store,
        envelopes: &[&Envelope],
    ) -> Result<Vec<BlobPin>, String> {
        let mut wanted: Vec<Digest> = Vec::new();
        {
            let mut seen = HashSet::new();
            for env in envelopes {
                for digest in store.blobs_referenced(env) {
                    if seen.insert(digest.0) {
                        wanted.push(digest);
                    }
                }
            }
        }
        self.ensure_digests(store, wanted).await
    }

    /// Fetches each of `wanted` that `store` lacks (see [`Blobs::ensure`]):
    /// also what a node restored from a snapshot, whose blob files are not
    /// part of it, fetches before it applies anything.
    pub async fn ensure_digests(
        &self,
        store: &Store,
        wanted: Vec<Digest>,
    ) -> Result<Vec<BlobPin>, String> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let s = store.clone();
        let missing: Vec<Digest> = tokio::task::spawn_blocking(move || s.absent_blobs(&wanted))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let stream = self
            .js
            .get_stream(BLOB_STREAM)
            .await
            .map_err(|e| format!("stream {BLOB_STREAM}: {e}"))?;
        let fetched: Vec<(Digest, Fetched)> = futures::stream::iter(missing)
            .map(|digest| {
                let stream = &stream;
                async move { Ok::<_, String>((digest, fetch(stream, store, &digest).await?)) }
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        let copies: Vec<(Digest, SystemTime)> =
            fetched.iter().map(|(d, f)| (*d, f.copied_at)).collect();
        let s = store.clone();
        // Blobs of one part are put together, in one trip to the blocking
        // pool (a replica catching up fetches many small ones).
        let pins = tokio::task::spawn_blocking(move || {
            fetched
                .into_iter()
                .map(|(digest, fetched)| fetched.pin(&s, &digest))
                .collect::<Result<Vec<BlobPin>, String>>()
        })
        .await
        .map_err(|e| e.to_string())??;
        self.mark_shipped(copies.into_iter());
        Ok(pins)
    }
}

/// What one collection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blobs the stream held (part 0 subjects).
    pub examined: u64,
    /// Blobs nothing needs, kept because their copy is younger than the
    /// grace.
    pub kept_young: u64,
    /// Blobs purged.
    pub blobs: u64,
    /// Messages (parts) purged.
    pub messages: u64,
}

impl Blobs {
    /// The sequence a collection purges below: read before what it keeps
    /// is worked out, so a blob shipped again meanwhile is never touched.
    pub async fn collection_bound(&self) -> Result<u64, String> {
        Ok(super::last_sequence(&self.js, BLOB_STREAM).await? + 1)
    }

    /// Purges, below sequence `bound` ([`Blobs::collection_bound`]), every
    /// blob not in `needed` whose copy is older than the grace (see the
    /// module docs).
    pub async fn collect(
        &self,
        bound: u64,
        needed: &HashSet<[u8; 32]>,
    ) -> Result<Collected, String> {
        let stream = self
            .js
            .get_stream(BLOB_STREAM)
            .await
            .map_err(|e| format!("stream {BLOB_STREAM}: {e}"))?;
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects("cairn.blob.*.0")
            .await
            .map_err(|e| format!("subjects of {BLOB_STREAM}: {e}"))?
            .try_collect()
            .await
            .map_err(|e| format!("subjects of {BLOB_STREAM}: {e}"))?;
        let cutoff = SystemTime::now() - self.grace;
        let mut collected = Collected::default();
        for (subject, _) in subjects {
            let Some(hex) = subject
                .strip_prefix("cairn.blob.")
                .and_then(|rest| rest.strip_suffix(".0"))
            else {
                continue;
            };
            let Some(digest) = hex::decode(hex)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            else {
                continue;
            };
            collected.examined += 1;
            if needed.contains(&digest) {
                continue;
            }
            let first = match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(first) => first,
                // Gone meanwhile (another collection).
                Err(_) => continue,
            };
            if SystemTime::from(first.time) >= cutoff {
                collected.kept_young += 1;
                continue;
            }
            let purged = stream
                .purge()
                .filter(format!("cairn.blob.{hex}.*"))
                .sequence(bound)
                .await
                .map_err(|e| format!("purging blob {hex} from {BLOB_STREAM}: {e}"))?;
            collected.blobs += 1;
            collected.messages += purged.purged;
        }
        Ok(collected)
    }
}

/// Most blobs a replica fetches at once.
pub const FETCH_CONCURRENCY: usize = 32;

/// One part: a direct get (any server holding the stream), or from the
/// leader when the server asked does not hold it yet (a replica that is not
/// part of the quorum that stored it may lag).
async fn fetch_part(
    stream: &jetstream::stream::Stream,
    subject: String,
) -> Result<jetstream::message::StreamMessage, String> {
    match stream.direct_get_last_for_subject(subject.clone()).await {
        Ok(message) => Ok(message),
        Err(_) => stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .map_err(|e| e.to_string()),
    }
}

/// A blob fetched from `CAIRN_BLOBS`, and when its copy there was made.
struct Fetched {
    body: FetchedBody,
    copied_at: SystemTime,
}

enum FetchedBody {
    /// One part, in memory: stored by [`Fetched::pin`].
    Whole(bytes::Bytes),
    /// Several parts, written part by part to the store already.
    Stored(BlobPin),
}

impl Fetched {
    /// Stores the blob (when it is not yet) and checks its digest.
    /// Blocking I/O.
    fn pin(self, store: &Store, digest: &Digest) -> Result<BlobPin, String> {
        use FetchedBody as Fetched;
        let pin = match self.body {
            Fetched::Whole(content) => store.put(&content).map_err(|e| e.to_string())?,
            Fetched::Stored(pin) => pin,
        };
        if pin.digest() != *digest {
            return Err(format!(
                "blob {digest} fetched from {BLOB_STREAM} has digest {}",
                pin.digest()
            ));
        }
        Ok(pin)
    }
}

/// Blob `digest` from its parts: one part is answered in memory; a larger
/// blob is written part by part to a blob writer of `store` (memory: one
/// part at a time, whatever its size).
async fn fetch(
    stream: &jetstream::stream::Stream,
    store: &Store,
    digest: &Digest,
) -> Result<Fetched, String> {
    let first = fetch_part(stream, subject(digest, 0))
        .await
        .map_err(|e| format!("blob {digest} not in {BLOB_STREAM}: {e}"))?;
    let parts: usize = first
        .headers
        .get(PARTS_HEADER)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(1);
    let copied_at = SystemTime::from(first.time);
    if parts <= 1 {
        return Ok(Fetched {
            body: FetchedBody::Whole(first.payload),
            copied_at,
        });
    }
    let s = store.clone();
    let payload = first.payload;
    let mut writer = tokio::task::spawn_blocking(move || {
        let mut writer = s.blob_writer()?;
        writer.write(&payload)?;
        Ok::<_, StorageError>(writer)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    for i in 1..parts {
        let part = fetch_part(stream, subject(digest, i))
            .await
            .map_err(|e| format!("blob {digest} part {i} not in {BLOB_STREAM}: {e}"))?;
        writer = tokio::task::spawn_blocking(move || {
            writer.write(&part.payload)?;
            Ok::<_, StorageError>(writer)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    }
    let pin = tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(Fetched {
        body: FetchedBody::Stored(pin),
        copied_at,
    })
}

fn unavailable(digest: &Digest, e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(format!("shipping blob {digest} to {BLOB_STREAM}: {e}"))
}
