//! The `kv_entries` view: the key-value cache's disk tier, and
//! [`KvCompactionPolicy`], the retention of its `kv/` stream class.
//!
//! The key-value domain (`cairn_actors::kv`) partitions namespaces over a
//! fixed number of streams `kv/<partition>`; this view folds all of them.
//!
//! | key | row |
//! |---|---|
//! | `e<namespace>\0<key>` | [`KvEntryRow`] (the entry) |
//! | `t<tag>\0<namespace>\0<key>` | empty (tag index) |
//! | `x<expires_at ms, big-endian u64><namespace>\0<key>` | empty (expiry index) |
//! | `n<namespace>` | [`KvNamespaceSettings`] |
//!
//! Namespaces and tags never hold a NUL (the service refuses control
//! characters in them), so the first NUL after a namespace ends it; a key
//! may hold any byte.
//!
//! # Last writer wins per key
//! Every row an event leaves depends only on that event and on the rows
//! of the keys it names — never on counts or on an earlier event of
//! another key — so folding only the latest event of each key (what a
//! compacted log holds) gives the very rows that folding the whole history
//! gives (see `crate::compaction`). A set replaces the entry and its index
//! rows (the old row is read to drop its old tags and expiry); a delete,
//! and each entry a bulk event names, removes the entry and its index
//! rows, and nothing when the entry is absent. Bulk events
//! (`KvEntriesDeleted`, `KvEntriesExpired`, `KvEntriesEvicted`) name
//! exactly the entries they remove, so folding one never depends on what
//! else was stored.
//!
//! Expiry is not folded: an entry past its `expires_at_ms` keeps its row
//! until a `KvEntriesExpired` removes it; readers treat it as absent from
//! the instant it expires (the clock is theirs, not the fold's).

use std::time::Duration;

use cairn_events::v1::{
    event::Payload, Envelope, KvEntryRef, KvEntryRow, KvEntrySet, KvNamespaceSettings,
};

use crate::{compaction::CompactionPolicy, StorageError, View, ViewTx};

/// The stream class of the key-value cache: streams `kv/<partition>`.
pub const KV_STREAM_PREFIX: &str = "kv/";

/// The key-value cache's entries, tag and expiry indexes and namespace
/// settings (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct KvView;

impl KvView {
    /// The view's name.
    pub const NAME: &'static str = "kv_entries";

    /// Prefix of every entry row.
    pub const ENTRY_PREFIX: &'static [u8] = b"e";
    /// Prefix of every tag index row.
    pub const TAG_PREFIX: &'static [u8] = b"t";
    /// Prefix of every expiry index row.
    pub const EXPIRY_PREFIX: &'static [u8] = b"x";
    /// Prefix of every namespace settings row.
    pub const NAMESPACE_PREFIX: &'static [u8] = b"n";

    /// The row key of entry `(namespace, key)`.
    pub fn entry_key(namespace: &str, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(2 + namespace.len() + key.len());
        k.extend_from_slice(Self::ENTRY_PREFIX);
        k.extend_from_slice(namespace.as_bytes());
        k.push(0);
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// The prefix of every entry row of `namespace`.
    pub fn namespace_entries(namespace: &str) -> Vec<u8> {
        Self::entry_key(namespace, "")
    }

    /// `(namespace, key)` of an entry row key (or of the tail of a tag or
    /// expiry row key: `<namespace>\0<key>`).
    pub fn split_entry(tail: &[u8]) -> Option<(String, String)> {
        let nul = tail.iter().position(|b| *b == 0)?;
        let namespace = std::str::from_utf8(&tail[..nul]).ok()?;
        let key = std::str::from_utf8(&tail[nul + 1..]).ok()?;
        Some((namespace.to_owned(), key.to_owned()))
    }

    /// The prefix of the tag index rows of `tag`.
    pub fn tag_prefix(tag: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(2 + tag.len());
        k.extend_from_slice(Self::TAG_PREFIX);
        k.extend_from_slice(tag.as_bytes());
        k.push(0);
        k
    }

    fn tag_key(tag: &str, namespace: &str, key: &str) -> Vec<u8> {
        let mut k = Self::tag_prefix(tag);
        k.extend_from_slice(&Self::entry_key(namespace, key)[1..]);
        k
    }

    /// The expiry index row of an entry expiring at `at_ms`.
    pub fn expiry_key(at_ms: u64, namespace: &str, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(10 + namespace.len() + key.len());
        k.extend_from_slice(Self::EXPIRY_PREFIX);
        k.extend_from_slice(&at_ms.to_be_bytes());
        k.extend_from_slice(&Self::entry_key(namespace, key)[1..]);
        k
    }

    /// `(expires_at_ms, namespace, key)` of an expiry row key.
    pub fn split_expiry(row_key: &[u8]) -> Option<(u64, String, String)> {
        let rest = row_key.strip_prefix(Self::EXPIRY_PREFIX)?;
        let at = crate::keys::decode_u64(rest.get(..8)?)?;
        let (namespace, key) = Self::split_entry(&rest[8..])?;
        Some((at, namespace, key))
    }

    /// The settings row key of `namespace`.
    pub fn namespace_key(namespace: &str) -> Vec<u8> {
        let mut k = Self::NAMESPACE_PREFIX.to_vec();
        k.extend_from_slice(namespace.as_bytes());
        k
    }

    fn remove(tx: &mut ViewTx<'_>, namespace: &str, key: &str) -> Result<(), StorageError> {
        let row_key = Self::entry_key(namespace, key);
        let Some(old) = tx.get_message::<KvEntryRow>(&row_key)? else {
            return Ok(());
        };
        for tag in &old.tags {
            tx.delete(Self::tag_key(tag, namespace, key));
        }
        if old.expires_at_ms != 0 {
            tx.delete(Self::expiry_key(old.expires_at_ms, namespace, key));
        }
        tx.delete(row_key);
        Ok(())
    }

    fn set(tx: &mut ViewTx<'_>, set: &KvEntrySet, seq: u64) -> Result<(), StorageError> {
        Self::remove(tx, &set.namespace, &set.key)?;
        for tag in &set.tags {
            tx.put(Self::tag_key(tag, &set.namespace, &set.key), Vec::new());
        }
        if set.expires_at_ms != 0 {
            tx.put(
                Self::expiry_key(set.expires_at_ms, &set.namespace, &set.key),
                Vec::new(),
            );
        }
        tx.put_message(
            Self::entry_key(&set.namespace, &set.key),
            &KvEntryRow {
                namespace: set.namespace.clone(),
                key: set.key.clone(),
                value: set.value.clone(),
                json: set.json,
                tags: set.tags.clone(),
                created_at_ms: set.created_at_ms,
                expires_at_ms: set.expires_at_ms,
                seq,
            },
        );
        Ok(())
    }

    fn remove_all(tx: &mut ViewTx<'_>, entries: &[KvEntryRef]) -> Result<(), StorageError> {
        for e in entries {
            Self::remove(tx, &e.namespace, &e.key)?;
        }
        Ok(())
    }
}

impl View for KvView {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn apply(&self, tx: &mut ViewTx<'_>, envelope: &Envelope) -> Result<(), StorageError> {
        let Some(payload) = envelope.event.as_ref().and_then(|e| e.payload.as_ref()) else {
            return Ok(());
        };
        match payload {
            Payload::KvEntrySet(set) => Self::set(tx, set, envelope.seq),
            Payload::KvEntryDeleted(d) => Self::remove(tx, &d.namespace, &d.key),
            Payload::KvEntriesDeleted(d) => Self::remove_all(tx, &d.entries),
            Payload::KvEntriesExpired(d) => Self::remove_all(tx, &d.entries),
            Payload::KvEntriesEvicted(d) => Self::remove_all(tx, &d.entries),
            Payload::KvNamespaceConfigured(c) => {
                tx.put_message(
                    Self::namespace_key(&c.namespace),
                    &c.settings.clone().unwrap_or_default(),
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Retention of the `kv/` class: the latest event per entry (a set or a
/// delete) and per namespace's settings; deletes kept for
/// `tombstone_retention` so followers of the log see them. Bulk events
/// (`KvEntriesDeleted`, `…Expired`, `…Evicted`) have no single key and
/// are kept: they are the audit trail of invalidations, one per command
/// and partition (see README "Key-value cache", known limitations).
#[derive(Clone, Copy, Debug)]
pub struct KvCompactionPolicy {
    /// How long a `KvEntryDeleted` stays after it was recorded.
    pub tombstone_retention: Duration,
}

impl Default for KvCompactionPolicy {
    fn default() -> Self {
        Self {
            tombstone_retention: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl CompactionPolicy for KvCompactionPolicy {
    fn stream_prefix(&self) -> &str {
        KV_STREAM_PREFIX
    }

    fn key(&self, envelope: &Envelope) -> Option<Vec<u8>> {
        match envelope.event.as_ref()?.payload.as_ref()? {
            Payload::KvEntrySet(s) => Some(KvView::entry_key(&s.namespace, &s.key)),
            Payload::KvEntryDeleted(d) => Some(KvView::entry_key(&d.namespace, &d.key)),
            Payload::KvNamespaceConfigured(c) => Some(KvView::namespace_key(&c.namespace)),
            _ => None,
        }
    }

    fn is_tombstone(&self, envelope: &Envelope) -> bool {
        matches!(
            envelope.event.as_ref().and_then(|e| e.payload.as_ref()),
            Some(Payload::KvEntryDeleted(_))
        )
    }

    fn tombstone_retention(&self) -> Duration {
        self.tombstone_retention
    }
}

/// The namespace settings row, decoded (defaults when never configured).
pub fn decode_settings(bytes: &[u8]) -> Result<KvNamespaceSettings, StorageError> {
    crate::view::decode_row(KvView::NAME, b"n", bytes)
}

/// An entry row, decoded.
pub fn decode_entry(bytes: &[u8]) -> Result<KvEntryRow, StorageError> {
    crate::view::decode_row(KvView::NAME, b"e", bytes)
}
