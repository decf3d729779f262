//! The `artifacts` view: the HTTP artifact cache's URL-first index.
//!
//! One column family, five kinds of rows (the first byte says which):
//!
//! | key | row | what for |
//! |---|---|---|
//! | `e<method>\0<url>\0<vary key>` | [`ArtifactRow`] | a stored response: headers, body digest, times — the O(1) point read of a lookup |
//! | `v<method>\0<url>` | [`ArtifactVariants`] | the `Vary` names of the URL's latest response and its stored variants: a lookup reads it first to hash the request's nominated headers into the Vary key |
//! | `d<digest>\0<method>\0<url>\0<vary key>` | empty | which entries refer to a body (`artifact.evict {digest}`) |
//! | `b<digest>` | [`ArtifactBlobUse`] | how many entries refer to a body, and its size |
//! | `t` | [`ArtifactTotals`] | entries and bytes of distinct bodies (what `artifact.max-entries` / `max-bytes` bound) |
//!
//! A lookup is two point reads (`v`, then `e`), never a scan. Bodies are
//! referenced through the blob store's counts ([`ViewTx::retain_blob`]):
//! one reference per entry, so a body shared by ten URLs is stored once
//! and collected only when the last entry referring to it goes.
//!
//! The fold (events of every `artifact/<partition>` stream):
//! - `ArtifactStored` replaces the entry under its key (releasing the old
//!   body) and records the variant; when the response's `Vary` names differ
//!   from the ones recorded for the URL, the old variants are dropped (a
//!   lookup could no longer reach them);
//! - `ArtifactRevalidated` updates the entry's headers and response time;
//! - `ArtifactInvalidated` drops every variant of the URL (method `GET`,
//!   the only one the index stores: a `HEAD` is answered from it);
//! - `ArtifactEvicted` drops one entry.
//!
//! Events about entries that are not there change nothing (an eviction
//! racing an invalidation is a fact like any other).
//!
//! An `ArtifactStored` names its body among the event's blobs
//! ([`View::blobs`]): a cluster node applying another node's store fetches
//! the body from `CAIRN_BLOBS` before it folds the event.

use cairn_events::v1::{
    event::Payload, ArtifactBlobUse, ArtifactKey, ArtifactRow, ArtifactTotals, ArtifactVariants,
    Envelope,
};

use crate::{
    read::{ViewRead, ViewReadExt},
    view::decode_row,
    Digest, StorageError, Store, View, ViewTx,
};

/// The HTTP artifact cache's index.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArtifactsView;

/// The method of every entry the index stores.
pub const INDEXED_METHOD: &str = "GET";

const TOTALS_KEY: &[u8] = b"t";

impl ArtifactsView {
    /// The view's name.
    pub const NAME: &'static str = "artifacts";

    /// Key of the entry `key`.
    pub fn entry_key(key: &ArtifactKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + key.method.len() + key.url.len() + key.vary_key.len());
        out.push(b'e');
        out.extend_from_slice(key.method.as_bytes());
        out.push(0);
        out.extend_from_slice(key.url.as_bytes());
        out.push(0);
        out.extend_from_slice(key.vary_key.as_bytes());
        out
    }

    /// Prefix of the entries of `method` whose URL starts with `url_prefix`.
    pub fn entry_prefix(method: &str, url_prefix: &str) -> Vec<u8> {
        let mut out = vec![b'e'];
        out.extend_from_slice(method.as_bytes());
        out.push(0);
        out.extend_from_slice(url_prefix.as_bytes());
        out
    }

    fn variants_key(method: &str, url: &str) -> Vec<u8> {
        let mut out = vec![b'v'];
        out.extend_from_slice(method.as_bytes());
        out.push(0);
        out.extend_from_slice(url.as_bytes());
        out
    }

    fn digest_prefix(digest: &str) -> Vec<u8> {
        let mut out = vec![b'd'];
        out.extend_from_slice(digest.as_bytes());
        out.push(0);
        out
    }

    fn digest_key(digest: &str, key: &ArtifactKey) -> Vec<u8> {
        let mut out = Self::digest_prefix(digest);
        out.extend_from_slice(&Self::entry_key(key)[1..]);
        out
    }

    fn blob_key(digest: &str) -> Vec<u8> {
        let mut out = vec![b'b'];
        out.extend_from_slice(digest.as_bytes());
        out
    }

    /// The entry stored under `key`: one point read.
    pub fn get(
        store: &(impl ViewRead + ?Sized),
        key: &ArtifactKey,
    ) -> Result<Option<ArtifactRow>, StorageError> {
        store.view_get_message(Self::NAME, &Self::entry_key(key))
    }

    /// The variants stored for `method` and `url`: one point read.
    pub fn variants(
        store: &(impl ViewRead + ?Sized),
        method: &str,
        url: &str,
    ) -> Result<Option<ArtifactVariants>, StorageError> {
        store.view_get_message(Self::NAME, &Self::variants_key(method, url))
    }

    /// [`Self::get`] answered from memory only (see
    /// [`Store::view_get_in_memory`]): `None` when it needs a disk read.
    pub fn get_in_memory(
        store: &Store,
        key: &ArtifactKey,
    ) -> Result<Option<Option<ArtifactRow>>, StorageError> {
        let entry_key = Self::entry_key(key);
        decode_in_memory(
            store.view_get_in_memory(Self::NAME, &entry_key)?,
            &entry_key,
        )
    }

    /// [`Self::variants`] answered from memory only (see
    /// [`Store::view_get_in_memory`]): `None` when it needs a disk read.
    pub fn variants_in_memory(
        store: &Store,
        method: &str,
        url: &str,
    ) -> Result<Option<Option<ArtifactVariants>>, StorageError> {
        let key = Self::variants_key(method, url);
        decode_in_memory(store.view_get_in_memory(Self::NAME, &key)?, &key)
    }

    /// Entries and bytes of distinct bodies.
    pub fn totals(store: &(impl ViewRead + ?Sized)) -> Result<ArtifactTotals, StorageError> {
        Ok(store
            .view_get_message(Self::NAME, TOTALS_KEY)?
            .unwrap_or_default())
    }

    /// How many entries refer to body `digest`, and its size.
    pub fn blob_use(
        store: &(impl ViewRead + ?Sized),
        digest: &str,
    ) -> Result<Option<ArtifactBlobUse>, StorageError> {
        store.view_get_message(Self::NAME, &Self::blob_key(digest))
    }

    /// Up to `limit` keys of the entries referring to body `digest`.
    pub fn keys_of_digest(
        store: &(impl ViewRead + ?Sized),
        digest: &str,
        limit: usize,
    ) -> Result<Vec<ArtifactKey>, StorageError> {
        let prefix = Self::digest_prefix(digest);
        Ok(store
            .view_scan_after(Self::NAME, &prefix, None, limit)?
            .into_iter()
            .filter_map(|(key, _)| parse_entry_key(&key[prefix.len()..]))
            .collect())
    }

    /// Up to `limit` entries of `method` whose URL starts with
    /// `url_prefix`, in key order, after entry key `after` when given.
    pub fn list(
        store: &(impl ViewRead + ?Sized),
        method: &str,
        url_prefix: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, ArtifactRow)>, StorageError> {
        store.view_scan_messages(
            Self::NAME,
            &Self::entry_prefix(method, url_prefix),
            after,
            limit,
        )
    }
}

/// A row read from memory, decoded.
fn decode_in_memory<M: prost::Message + Default>(
    row: Option<Option<Vec<u8>>>,
    key: &[u8],
) -> Result<Option<Option<M>>, StorageError> {
    match row {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(bytes)) => Ok(Some(Some(decode_row(ArtifactsView::NAME, key, &bytes)?))),
    }
}

/// Parses `<method>\0<url>\0<vary key>` (an entry key without its `e`).
fn parse_entry_key(bytes: &[u8]) -> Option<ArtifactKey> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.splitn(3, '\0');
    Some(ArtifactKey {
        method: parts.next()?.to_owned(),
        url: parts.next()?.to_owned(),
        vary_key: parts.next()?.to_owned(),
    })
}

impl View for ArtifactsView {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn apply(&self, tx: &mut ViewTx<'_>, envelope: &Envelope) -> Result<(), StorageError> {
        let Some(payload) = envelope.event.as_ref().and_then(|e| e.payload.as_ref()) else {
            return Ok(());
        };
        match payload {
            Payload::ArtifactStored(stored) => {
                let Some(key) = stored.key.clone() else {
                    return Ok(());
                };
                let variants_key = Self::variants_key(&key.method, &key.url);
                let mut variants = tx
                    .get_message::<ArtifactVariants>(&variants_key)?
                    .unwrap_or_default();
                if variants.vary != stored.vary {
                    // A lookup hashes the newest names: older variants are
                    // out of its reach.
                    for vary_key in std::mem::take(&mut variants.vary_keys) {
                        let old = ArtifactKey {
                            vary_key,
                            ..key.clone()
                        };
                        remove_entry(tx, &old)?;
                    }
                    variants.vary = stored.vary.clone();
                }
                remove_entry(tx, &key)?;
                if let Err(i) = variants.vary_keys.binary_search(&key.vary_key) {
                    variants.vary_keys.insert(i, key.vary_key.clone());
                }
                tx.put_message(variants_key, &variants);
                let row = ArtifactRow {
                    key: Some(key.clone()),
                    status: stored.status,
                    headers: stored.headers.clone(),
                    vary: stored.vary.clone(),
                    digest: stored.digest.clone(),
                    size: stored.size,
                    response_time: stored.response_time,
                    stored_at: envelope.recorded_at,
                    upstream: stored.upstream.clone(),
                    stream: envelope.stream.clone(),
                    stream_version: envelope.stream_version,
                };
                add_entry(tx, &row)?;
            }
            Payload::ArtifactRevalidated(revalidated) => {
                let Some(key) = revalidated.key.as_ref() else {
                    return Ok(());
                };
                let entry_key = Self::entry_key(key);
                let Some(mut row) = tx.get_message::<ArtifactRow>(&entry_key)? else {
                    return Ok(());
                };
                row.headers = revalidated.headers.clone();
                row.response_time = revalidated.response_time;
                row.stream_version = envelope.stream_version;
                tx.put_message(entry_key, &row);
            }
            Payload::ArtifactInvalidated(invalidated) => {
                let variants_key = Self::variants_key(INDEXED_METHOD, &invalidated.url);
                let Some(variants) = tx.get_message::<ArtifactVariants>(&variants_key)? else {
                    return Ok(());
                };
                for vary_key in variants.vary_keys {
                    let key = ArtifactKey {
                        method: INDEXED_METHOD.to_owned(),
                        url: invalidated.url.clone(),
                        vary_key,
                    };
                    remove_entry(tx, &key)?;
                }
                tx.delete(variants_key);
            }
            Payload::ArtifactEvicted(evicted) => {
                let Some(key) = evicted.key.as_ref() else {
                    return Ok(());
                };
                if remove_entry(tx, key)? {
                    let variants_key = Self::variants_key(&key.method, &key.url);
                    if let Some(mut variants) = tx.get_message::<ArtifactVariants>(&variants_key)? {
                        variants.vary_keys.retain(|k| *k != key.vary_key);
                        if variants.vary_keys.is_empty() {
                            tx.delete(variants_key);
                        } else {
                            tx.put_message(variants_key, &variants);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The body an `ArtifactStored` refers to: a cluster node applying
    /// another node's store fetches it first (`CAIRN_BLOBS`).
    fn blobs(&self, envelope: &Envelope) -> Vec<Digest> {
        match envelope.event.as_ref().and_then(|e| e.payload.as_ref()) {
            Some(Payload::ArtifactStored(stored)) => {
                Digest::parse(&stored.digest).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }
}

fn parse_digest(digest: &str) -> Result<Digest, StorageError> {
    Digest::parse(digest).ok_or_else(|| {
        StorageError::Corrupt(format!("artifact body digest {digest:?} is not sha256"))
    })
}

/// Adds `row` (whose key holds no entry): the body's use, the digest
/// index, the totals.
fn add_entry(tx: &mut ViewTx<'_>, row: &ArtifactRow) -> Result<(), StorageError> {
    let key = row.key.as_ref().expect("rows are built with their key");
    let digest = parse_digest(&row.digest)?;
    let blob_key = ArtifactsView::blob_key(&row.digest);
    let mut blob = tx
        .get_message::<ArtifactBlobUse>(&blob_key)?
        .unwrap_or_default();
    let mut totals = tx
        .get_message::<ArtifactTotals>(TOTALS_KEY)?
        .unwrap_or_default();
    if blob.refs == 0 {
        blob.size = row.size;
        totals.bytes += row.size;
    }
    blob.refs += 1;
    totals.entries += 1;
    tx.retain_blob(&digest)?;
    tx.put_message(blob_key, &blob);
    tx.put_message(TOTALS_KEY.to_vec(), &totals);
    tx.put(ArtifactsView::digest_key(&row.digest, key), Vec::new());
    tx.put_message(ArtifactsView::entry_key(key), row);
    Ok(())
}

/// Removes the entry under `key` if there is one (its body's use, its
/// digest index row, the totals); true when there was.
fn remove_entry(tx: &mut ViewTx<'_>, key: &ArtifactKey) -> Result<bool, StorageError> {
    let entry_key = ArtifactsView::entry_key(key);
    let Some(row) = tx.get_message::<ArtifactRow>(&entry_key)? else {
        return Ok(false);
    };
    let digest = parse_digest(&row.digest)?;
    let blob_key = ArtifactsView::blob_key(&row.digest);
    let mut blob = tx
        .get_message::<ArtifactBlobUse>(&blob_key)?
        .unwrap_or_default();
    let mut totals = tx
        .get_message::<ArtifactTotals>(TOTALS_KEY)?
        .unwrap_or_default();
    blob.refs = blob.refs.saturating_sub(1);
    if blob.refs == 0 {
        totals.bytes = totals.bytes.saturating_sub(blob.size);
        tx.delete(blob_key);
    } else {
        tx.put_message(blob_key, &blob);
    }
    totals.entries = totals.entries.saturating_sub(1);
    tx.put_message(TOTALS_KEY.to_vec(), &totals);
    tx.release_blob(&digest)?;
    tx.delete(ArtifactsView::digest_key(&row.digest, key));
    tx.delete(entry_key);
    Ok(true)
}
