//! `ArtifactObserver`: the artifact cache's memory kept in step with the
//! log on every node.
//!
//! Beside the `artifacts` view the cache keeps one thing in memory: the
//! LRU order `artifact.max-bytes` / `max-entries` evict by (the totals are
//! a row of the view). On a cluster node most commits of the artifact
//! streams come from the replicated log, written by other nodes, so the
//! order cannot be kept by the code that makes the writes: the store tells
//! this observer of every commit ([`cairn_storage::CommitObserver`]) — the
//! node's own and replicated ones alike, on the store's writer thread,
//! before the commit's seq is announced — and each artifact event updates
//! the order: a store makes its entry the most recent, an invalidation or
//! an eviction takes the entries out. So every node holds the same order
//! of stores (log order); hits are the answering node's only (reads are
//! not events), which is what the evicting node's order adds.
//!
//! An invalidation names only its URL; the order is keyed by entry (URL
//! and Vary key). The entries of a URL with a non-empty Vary key are
//! remembered per URL (`ArtifactObserver::varied`), so an invalidation
//! takes them all out without a scan; a store whose `Vary` names changed
//! (the view dropped the older variants) takes out the ones the view no
//! longer lists.
//!
//! A store also wakes the evicting node's evictor (`stored`): on a
//! cluster, one node (the holder of [`super::EVICTOR_ROLE`]) applies the
//! limits after stores made anywhere.

use std::{collections::HashMap, sync::Arc};

use cairn_events::v1::{event::Payload, ArtifactKey, Envelope};
use cairn_storage::{
    views::{artifacts::INDEXED_METHOD, ArtifactsView},
    ViewRead,
};
use parking_lot::Mutex;

/// The LRU order of stored entries (entry keys of the `artifacts` view).
pub(crate) type Recency = Arc<Mutex<lru::LruCache<Vec<u8>, ()>>>;

/// The streams of the artifact partitions start with this.
pub const ARTIFACT_STREAM_PREFIX: &str = "artifact/";

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ArtifactObserver {
    /// The order, shared with the cache (which adds the hits it serves).
    pub(crate) recency: Recency,
    /// URL → the non-empty Vary keys of its entries in `recency`.
    varied: Mutex<HashMap<String, Vec<String>>>,
    /// Held while the cache seeds the order from the view at start, so a
    /// commit written meanwhile is applied after the seeding.
    pub(crate) loading: Mutex<()>,
    /// Woken by every store (the evictor waits on it).
    pub(crate) stored: tokio::sync::Notify,
}

impl ArtifactObserver {
    pub(crate) fn new(recency: Recency) -> Self {
        Self {
            recency,
            varied: Mutex::default(),
            loading: Mutex::new(()),
            stored: tokio::sync::Notify::new(),
        }
    }

    /// Adds an entry found at start-up (oldest first).
    pub(crate) fn seed(&self, key: &ArtifactKey, entry_key: Vec<u8>) {
        self.recency.lock().put(entry_key, ());
        self.track(key);
    }

    fn track(&self, key: &ArtifactKey) {
        if key.vary_key.is_empty() {
            return;
        }
        let mut varied = self.varied.lock();
        let keys = varied.entry(key.url.clone()).or_default();
        if !keys.contains(&key.vary_key) {
            keys.push(key.vary_key.clone());
        }
    }

    fn entry_key(url: &str, vary_key: &str) -> Vec<u8> {
        ArtifactsView::entry_key(&ArtifactKey {
            method: INDEXED_METHOD.to_owned(),
            url: url.to_owned(),
            vary_key: vary_key.to_owned(),
        })
    }

    /// Takes out the entries of `url` the view no longer lists (`keep`:
    /// its Vary keys now; empty when it has none).
    fn keep_only(&self, url: &str, keep: &[String]) {
        let mut recency = self.recency.lock();
        if !keep.iter().any(String::is_empty) {
            recency.pop(&Self::entry_key(url, ""));
        }
        let mut varied = self.varied.lock();
        if let Some(keys) = varied.get_mut(url) {
            keys.retain(|k| {
                let kept = keep.contains(k);
                if !kept {
                    recency.pop(&Self::entry_key(url, k));
                }
                kept
            });
            if keys.is_empty() {
                varied.remove(url);
            }
        }
    }

    fn apply(&self, envelope: &Envelope, views: &dyn ViewRead) {
        let Some(payload) = envelope.event.as_ref().and_then(|e| e.payload.as_ref()) else {
            return;
        };
        match payload {
            Payload::ArtifactStored(stored) => {
                let Some(key) = stored.key.as_ref() else {
                    return;
                };
                self.recency.lock().put(ArtifactsView::entry_key(key), ());
                self.track(key);
                // Older variants dropped by the view (other Vary names).
                let tracked = self.varied.lock().contains_key(&key.url);
                if tracked {
                    match ArtifactsView::variants(views, INDEXED_METHOD, &key.url) {
                        Ok(Some(variants)) => self.keep_only(&key.url, &variants.vary_keys),
                        Ok(None) => self.keep_only(&key.url, &[]),
                        Err(e) => {
                            tracing::warn!(url = %key.url, error = %e, "artifact recency: reading the variants")
                        }
                    }
                }
                self.stored.notify_one();
            }
            Payload::ArtifactInvalidated(invalidated) => self.keep_only(&invalidated.url, &[]),
            Payload::ArtifactEvicted(evicted) => {
                let Some(key) = evicted.key.as_ref() else {
                    return;
                };
                self.recency.lock().pop(&ArtifactsView::entry_key(key));
                if !key.vary_key.is_empty() {
                    let mut varied = self.varied.lock();
                    if let Some(keys) = varied.get_mut(&key.url) {
                        keys.retain(|k| *k != key.vary_key);
                        if keys.is_empty() {
                            varied.remove(&key.url);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

impl cairn_storage::CommitObserver for ArtifactObserver {
    fn committed(&self, envelopes: &[&Envelope], views: &dyn ViewRead) {
        let mut artifact = envelopes
            .iter()
            .filter(|e| e.stream.starts_with(ARTIFACT_STREAM_PREFIX))
            .peekable();
        if artifact.peek().is_none() {
            return;
        }
        let _seeded = self.loading.lock();
        for envelope in artifact {
            self.apply(envelope, views);
        }
    }
}

#[cfg(test)]
mod tests {
    use cairn_events::v1::{ArtifactEvicted, ArtifactInvalidated, ArtifactStored, Event};
    use cairn_storage::CommitObserver as _;

    use super::*;

    fn key(url: &str, vary_key: &str) -> ArtifactKey {
        ArtifactKey {
            method: INDEXED_METHOD.to_owned(),
            url: url.to_owned(),
            vary_key: vary_key.to_owned(),
        }
    }

    fn envelope(payload: Payload) -> Envelope {
        Envelope {
            stream: "artifact/03".into(),
            event: Some(Event {
                payload: Some(payload),
            }),
            ..Default::default()
        }
    }

    /// Views holding only the variants row of `https://a/v` (k1, k2).
    struct Views;

    impl ViewRead for Views {
        fn view_get(
            &self,
            _view: &str,
            key: &[u8],
        ) -> Result<Option<Vec<u8>>, cairn_storage::StorageError> {
            use prost::Message as _;
            Ok((key == b"vGET\0https://a/v").then(|| {
                cairn_events::v1::ArtifactVariants {
                    vary: vec!["accept".into()],
                    vary_keys: vec!["k1".into(), "k2".into()],
                }
                .encode_to_vec()
            }))
        }

        fn view_scan_after(
            &self,
            _view: &str,
            _prefix: &[u8],
            _after: Option<&[u8]>,
            _limit: usize,
        ) -> Result<cairn_storage::read::Rows, cairn_storage::StorageError> {
            Ok(Vec::new())
        }

        fn view_for_each(
            &self,
            _view: &str,
            _prefix: &[u8],
            _after: Option<&[u8]>,
            _f: &mut cairn_storage::read::RowVisitor<'_>,
        ) -> Result<(), cairn_storage::StorageError> {
            Ok(())
        }

        fn read_seq(&self) -> Result<u64, cairn_storage::StorageError> {
            Ok(0)
        }

        fn read_snapshot(&self) -> Box<dyn ViewRead + '_> {
            Box::new(Views)
        }
    }

    fn order(observer: &ArtifactObserver) -> Vec<Vec<u8>> {
        observer
            .recency
            .lock()
            .iter()
            .rev()
            .map(|(k, ())| k.clone())
            .collect()
    }

    #[test]
    fn given_stores_when_an_invalidation_and_an_eviction_commit_then_their_entries_leave_the_order()
    {
        let observer = ArtifactObserver::new(Arc::new(Mutex::new(lru::LruCache::unbounded())));
        let stored = |k: ArtifactKey| {
            envelope(Payload::ArtifactStored(ArtifactStored {
                key: Some(k),
                ..Default::default()
            }))
        };
        for e in [
            stored(key("https://a/x", "")),
            stored(key("https://a/v", "k1")),
            stored(key("https://a/v", "k2")),
            stored(key("https://a/y", "")),
        ] {
            observer.committed(&[&e], &Views);
        }
        assert_eq!(order(&observer).len(), 4);
        let evicted = envelope(Payload::ArtifactEvicted(ArtifactEvicted {
            key: Some(key("https://a/x", "")),
            ..Default::default()
        }));
        let invalidated = envelope(Payload::ArtifactInvalidated(ArtifactInvalidated {
            url: "https://a/v".into(),
            reason: "PUT".into(),
        }));
        observer.committed(&[&evicted, &invalidated], &Views);
        assert_eq!(
            order(&observer),
            vec![ArtifactsView::entry_key(&key("https://a/y", ""))]
        );
        assert!(observer.varied.lock().is_empty());
    }
}
