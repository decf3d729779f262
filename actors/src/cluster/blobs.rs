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
//! digest. The stream keeps every blob ever shipped (no collection yet: see
//! the README's known limitations).

use std::{collections::HashSet, sync::Arc, time::Duration};

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

fn subject(digest: &Digest, part: usize) -> String {
    format!("cairn.blob.{}.{part}", hex::encode(digest.0))
}

/// Ships and fetches blobs (see the module docs).
#[derive(Debug, Clone)]
pub struct Blobs {
    js: jetstream::Context,
    part_bytes: usize,
    shipped: Arc<std::sync::Mutex<HashSet<[u8; 32]>>>,
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
            duplicate_window: Duration::from_secs(120),
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
        })
    }

    /// Publishes every blob `envelopes` reference that this process has not
    /// shipped yet, and waits for JetStream to store them.
    pub async fn ship(&self, store: &Store, envelopes: &[Envelope]) -> Result<(), StorageError> {
        let mut wanted = Vec::new();
        {
            let shipped = self.shipped.lock().expect("shipped lock");
            for env in envelopes {
                for digest in store.blobs_referenced(env) {
                    if !shipped.contains(&digest.0) && !wanted.contains(&digest) {
                        wanted.push(digest);
                    }
                }
            }
        }
        let mut acks = Vec::new();
        for digest in &wanted {
            let store = store.clone();
            let d = *digest;
            let content = tokio::task::spawn_blocking(move || store.get(&d))
                .await
                .map_err(|e| StorageError::Unavailable(format!("reading blob: {e}")))??
                .ok_or_else(|| {
                    StorageError::Corrupt(format!("blob {digest} referenced but not stored"))
                })?;
            let parts: Vec<&[u8]> = if content.is_empty() {
                vec![&content[..]]
            } else {
                content.chunks(self.part_bytes).collect()
            };
            let count = parts.len();
            for (i, part) in parts.into_iter().enumerate() {
                let mut publish = Publish::build()
                    .message_id(format!("{}.{i}", hex::encode(digest.0)))
                    .payload(bytes::Bytes::copy_from_slice(part));
                if i == 0 {
                    publish = publish.header(PARTS_HEADER, count.to_string().as_str());
                }
                let ack = self
                    .js
                    .send_publish(subject(digest, i), publish)
                    .await
                    .map_err(|e| unavailable(digest, e))?;
                acks.push((*digest, ack));
            }
        }
        for (digest, ack) in acks {
            ack.await.map_err(|e| unavailable(&digest, e))?;
        }
        let mut shipped = self.shipped.lock().expect("shipped lock");
        if shipped.len() + wanted.len() > SHIPPED_MAX {
            shipped.clear();
        }
        shipped.extend(wanted.iter().map(|d| d.0));
        Ok(())
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
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let s = store.clone();
        let missing: Vec<Digest> = tokio::task::spawn_blocking(move || {
            let mut missing = Vec::new();
            for digest in wanted {
                if s.blob_size(&digest)?.is_none() {
                    missing.push(digest);
                }
            }
            Ok::<_, StorageError>(missing)
        })
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
        let fetched: Vec<(Digest, Vec<u8>)> = futures::stream::iter(missing)
            .map(|digest| {
                let stream = &stream;
                async move { Ok::<_, String>((digest, fetch(stream, &digest).await?)) }
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        let s = store.clone();
        tokio::task::spawn_blocking(move || {
            let mut pins = Vec::with_capacity(fetched.len());
            for (digest, content) in fetched {
                let pin = s.put(&content).map_err(|e| e.to_string())?;
                if pin.digest() != digest {
                    return Err(format!(
                        "blob {digest} fetched from {BLOB_STREAM} has digest {}",
                        pin.digest()
                    ));
                }
                pins.push(pin);
            }
            Ok(pins)
        })
        .await
        .map_err(|e| e.to_string())?
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

/// The parts of `digest`, joined.
async fn fetch(stream: &jetstream::stream::Stream, digest: &Digest) -> Result<Vec<u8>, String> {
    let first = fetch_part(stream, subject(digest, 0))
        .await
        .map_err(|e| format!("blob {digest} not in {BLOB_STREAM}: {e}"))?;
    let parts: usize = first
        .headers
        .get(PARTS_HEADER)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(1);
    let mut content = first.payload.to_vec();
    for i in 1..parts {
        let part = fetch_part(stream, subject(digest, i))
            .await
            .map_err(|e| format!("blob {digest} part {i} not in {BLOB_STREAM}: {e}"))?;
        content.extend_from_slice(&part.payload);
    }
    Ok(content)
}

fn unavailable(digest: &Digest, e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(format!("shipping blob {digest} to {BLOB_STREAM}: {e}"))
}
