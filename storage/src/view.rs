//! Views: deterministic folds of the log into column families.
//!
//! A view sees every committed envelope in log order, exactly once, and
//! writes rows through a [`ViewTx`]. Its rows and its checkpoint (the last
//! sequence folded in) are written in the same `WriteBatch` as the events
//! that produced them, so a reply to a command — and any read after it —
//! already reflects those events (read-your-writes). `rebuild` clears a view
//! and runs the very same fold over the whole log, so a rebuilt view is
//! byte-identical to the live one.
//!
//! Rules for a view's `apply`:
//! - it depends only on the envelope and on the view's own rows;
//! - it accepts every event (events are facts): an `Err` means the store is
//!   broken, and fails the whole write;
//! - it encodes rows deterministically (prost encoding is).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
};

use cairn_events::v1::Envelope;

use crate::{keys, Digest, StorageError};

/// A projection of the log into one column family.
pub trait View: Send + Sync + fmt::Debug {
    /// Stable name: the view's column family is `view_<name>` and its
    /// checkpoint key `checkpoint/<name>`. Never rename a view.
    fn name(&self) -> &'static str;

    /// Folds one committed envelope into the view.
    fn apply(&self, tx: &mut ViewTx<'_>, envelope: &Envelope) -> Result<(), StorageError>;

    /// The blobs folding `envelope` makes this view reference. A replica
    /// (a cluster node applying another node's events) fetches the ones it
    /// does not hold before it applies the event. None by default.
    fn blobs(&self, envelope: &Envelope) -> Vec<crate::Digest> {
        let _ = envelope;
        Vec::new()
    }
}

/// Where a [`ViewTx`] reads rows the current batch has not touched.
pub(crate) trait RowSource {
    /// Reads `key` from the column family with index `cf` (see [`Overlay`]).
    fn read(&self, cf: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// The last key of the family with index `cf` in `[from, to)`.
    fn last_key(&self, cf: usize, from: &[u8], to: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Calls `f` with each key of the family with index `cf` in
    /// `[from, to)`, in key order, while it says continue.
    fn for_each_key(
        &self,
        cf: usize,
        from: &[u8],
        to: &[u8],
        f: &mut dyn FnMut(&[u8]) -> std::ops::ControlFlow<()>,
    ) -> Result<(), StorageError>;

    /// The committed number of references from `view` to blob `digest`
    /// (0 when no `blob_refs` row holds one). By default its row, read
    /// with [`RowSource::read`]; the store's writer answers from the counts
    /// it keeps in memory when it holds this one.
    fn blob_ref_count(&self, view: &'static str, digest: &Digest) -> Result<u64, StorageError> {
        match self.read(BLOB_REFS_CF, &keys::blob_ref_key(view, &digest.0))? {
            None => Ok(0),
            Some(v) => keys::decode_u64(&v).ok_or_else(|| {
                StorageError::Corrupt(format!("blob ref count of {digest} is not a u64"))
            }),
        }
    }
}

/// Index of the `blob_refs` family for a [`RowSource`]; views are `1 + i`
/// (in an [`Overlay`] too, whose blob references are
/// [`Overlay::blob_refs`]).
pub(crate) const BLOB_REFS_CF: usize = 0;

/// A `blob_refs` row's identity: the view holding the references and the
/// blob's digest. Ordered as the row keys (`view ‖ 0x00 ‖ digest`) are,
/// since view names hold no NUL.
pub(crate) type BlobRefId = (&'static str, [u8; 32]);

/// Pending row changes of one write batch, readable before they are written.
///
/// Decision: one ordered map per column family rather than one hash map
/// of `(family, key)`. The batch then carries each family's rows in key
/// order, which is what RocksDB's memtable inserts cheaply (its skip
/// list's splice stays valid from one key to the next; rows in hash order
/// made the writer spend a third of its time recomputing it while a
/// replica caught up), a row is found without copying its key, and a range
/// of pending rows ([`ViewTx::keys_in`]) is read without a pass over the
/// whole batch.
///
/// Decision: blob reference counts are kept as numbers by
/// [`BlobRefId`], not as encoded rows: a count changes at every retain and
/// release (a package revision holds a reference per resource), so a
/// change costs no key nor value allocation and no decode; the rows are
/// encoded once per batch, in key order, by the writer.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    /// Per view family (at `1 + i`; index [`BLOB_REFS_CF`] stays empty):
    /// key → new value, or `None` for a delete.
    pub(crate) rows: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Blob reference counts this batch changed: their value after it
    /// (0: the row is deleted).
    pub(crate) blob_refs: BTreeMap<BlobRefId, u64>,
    /// Per view family (as `rows`): what this batch learnt of the key
    /// groups [`ViewTx::get_in_group`] read. At most one entry per group
    /// read, so bounded by the batch's reads.
    groups: Vec<HashMap<Vec<u8>, Group>>,
}

/// What a batch knows of the stored rows of one key group.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Group {
    /// One of its keys was read (from the store): a second read looks up
    /// the group's last stored key.
    ReadOnce,
    /// The store holds no key of the group after this one (`None`: no key
    /// at all): only this batch's rows answer for those.
    Last(Option<Vec<u8>>),
}

impl Overlay {
    fn get(
        &self,
        source: &dyn RowSource,
        cf: usize,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        match self.rows.get(cf).and_then(|rows| rows.get(key)) {
            Some(pending) => Ok(pending.clone()),
            None => source.read(cf, key),
        }
    }

    /// The pending rows of family `cf`.
    fn family(&self, cf: usize) -> Option<&BTreeMap<Vec<u8>, Option<Vec<u8>>>> {
        self.rows.get(cf)
    }

    /// Sets (`Some`) or deletes (`None`) the row at `key` of family `cf`.
    fn set(&mut self, cf: usize, key: Vec<u8>, value: Option<Vec<u8>>) {
        if self.rows.len() <= cf {
            self.rows.resize_with(cf + 1, BTreeMap::new);
        }
        self.rows[cf].insert(key, value);
    }
}

/// The handle a view reads and writes its rows through while folding.
pub struct ViewTx<'a> {
    pub(crate) view: &'static str,
    pub(crate) cf: usize,
    pub(crate) overlay: &'a mut Overlay,
    pub(crate) source: &'a dyn RowSource,
}

impl fmt::Debug for ViewTx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ViewTx")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl ViewTx<'_> {
    /// The view's row at `key`, including changes made earlier in this batch.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.overlay.get(self.source, self.cf, key)
    }

    /// Decodes the protobuf row at `key`.
    pub fn get_message<M: prost::Message + Default>(
        &self,
        key: &[u8],
    ) -> Result<Option<M>, StorageError> {
        self.get(key)?
            .map(|bytes| decode_row(self.view, key, &bytes))
            .transpose()
    }

    /// [`ViewTx::get`] of a key whose first `group_len` bytes name a group
    /// of keys one batch may read many of (the rows of one repository),
    /// with the same answer. Once a batch read two keys of a group from
    /// the store, it looks up the group's last stored key (one seek); the
    /// group's later reads in this batch of keys after that one are
    /// answered from the batch's own rows, without a point read that would
    /// find nothing.
    ///
    /// Decision: a replica catching up, a rebuild, or a first sync folds
    /// thousands of new revisions of one repository, in name (so key)
    /// order, and each fold read its revision's rows only to find them
    /// absent: without bloom filters, each such miss searched the memtable
    /// and an index and a data block of every table file it could be in,
    /// most of the writer's read time. A batch's rows are its own (the
    /// writer is the only writer), so what the store held of a group when
    /// the batch began holds until it is written. A group read once per
    /// batch (a live command's append) costs what a plain read costs; the
    /// memory is one entry per group read, within the batch.
    pub fn get_in_group(
        &mut self,
        key: &[u8],
        group_len: usize,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(pending) = self
            .overlay
            .rows
            .get(self.cf)
            .and_then(|rows| rows.get(key))
        {
            return Ok(pending.clone());
        }
        let group = &key[..group_len.min(key.len())];
        if self.overlay.groups.len() <= self.cf {
            self.overlay.groups.resize_with(self.cf + 1, HashMap::new);
        }
        match self.overlay.groups[self.cf].get(group) {
            None => {
                self.overlay.groups[self.cf].insert(group.to_vec(), Group::ReadOnce);
                return self.source.read(self.cf, key);
            }
            Some(Group::Last(last)) => {
                return if last.as_deref().is_none_or(|last| key > last) {
                    Ok(None)
                } else {
                    self.source.read(self.cf, key)
                };
            }
            Some(Group::ReadOnce) => {}
        }
        // A group with no end (all `0xff`) is read key by key.
        let Some(end) = group_end(group) else {
            return self.source.read(self.cf, key);
        };
        let last = self.source.last_key(self.cf, group, &end)?;
        let after_last = last.as_deref().is_none_or(|last| key > last);
        self.overlay.groups[self.cf].insert(group.to_vec(), Group::Last(last));
        if after_last {
            Ok(None)
        } else {
            self.source.read(self.cf, key)
        }
    }

    /// [`ViewTx::get_in_group`], decoded as [`ViewTx::get_message`] does.
    pub fn get_message_in_group<M: prost::Message + Default>(
        &mut self,
        key: &[u8],
        group_len: usize,
    ) -> Result<Option<M>, StorageError> {
        let view = self.view;
        self.get_in_group(key, group_len)?
            .map(|bytes| decode_row(view, key, &bytes))
            .transpose()
    }

    /// The first `limit` keys of the view in `[from, to)`, in key order,
    /// including changes made earlier in this batch (so the answer does not
    /// depend on how appends were grouped into batches: a rebuild folds
    /// the same). Costs a pass over this batch's pending rows.
    pub fn keys_in(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let pending: BTreeMap<&[u8], bool> = self
            .overlay
            .family(self.cf)
            .into_iter()
            .flat_map(|rows| {
                rows.range::<[u8], _>((
                    std::ops::Bound::Included(from),
                    std::ops::Bound::Excluded(to),
                ))
            })
            .map(|(key, value)| (key.as_slice(), value.is_some()))
            .collect();
        let mut keys = std::collections::BTreeSet::new();
        self.source.for_each_key(self.cf, from, to, &mut |key| {
            // Rows deleted in this batch are skipped; keep going until
            // `limit` live keys (enough to merge with the pending ones).
            if pending.get(key) != Some(&false) {
                keys.insert(key.to_vec());
            }
            if keys.len() >= limit {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        })?;
        keys.extend(
            pending
                .iter()
                .filter(|(_, live)| **live)
                .map(|(key, _)| key.to_vec()),
        );
        Ok(keys.into_iter().take(limit).collect())
    }

    /// Sets the row at `key`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.overlay.set(self.cf, key.into(), Some(value.into()));
    }

    /// Sets the row at `key` to the encoding of `message`.
    pub fn put_message(&mut self, key: impl Into<Vec<u8>>, message: &impl prost::Message) {
        self.put(key, message.encode_to_vec());
    }

    /// Removes the row at `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.overlay.set(self.cf, key.into(), None);
    }

    /// Records one more reference from this view to blob `digest`.
    pub fn retain_blob(&mut self, digest: &Digest) -> Result<(), StorageError> {
        self.adjust_blob_ref(digest, true)
    }

    /// Drops one reference from this view to blob `digest`.
    pub fn release_blob(&mut self, digest: &Digest) -> Result<(), StorageError> {
        self.adjust_blob_ref(digest, false)
    }

    fn adjust_blob_ref(&mut self, digest: &Digest, retain: bool) -> Result<(), StorageError> {
        let id = (self.view, digest.0);
        let current = match self.overlay.blob_refs.get(&id) {
            Some(count) => *count,
            None => self.source.blob_ref_count(self.view, digest)?,
        };
        let next = if retain {
            current + 1
        } else {
            current.checked_sub(1).ok_or_else(|| {
                StorageError::Corrupt(format!(
                    "view {} released blob {digest} it did not hold",
                    self.view
                ))
            })?
        };
        self.overlay.blob_refs.insert(id, next);
        Ok(())
    }
}

/// The first key after every key starting with `group` (`None` when there
/// is none: `group` is empty or all `0xff`).
fn group_end(group: &[u8]) -> Option<Vec<u8>> {
    let mut end = group.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Decodes a protobuf row of `view`; a row that does not decode is corruption.
pub(crate) fn decode_row<M: prost::Message + Default>(
    view: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<M, StorageError> {
    M::decode(bytes).map_err(|e| {
        StorageError::Corrupt(format!(
            "view {view} row {}: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

/// Folds `envelope` into each view of `views` selected by `wanted`
/// (indexed like the overlay: view `i` has cf index `1 + i`).
pub(crate) fn fold(
    views: &[std::sync::Arc<dyn View>],
    wanted: &dyn Fn(usize) -> bool,
    overlay: &mut Overlay,
    source: &dyn RowSource,
    envelope: &Envelope,
) -> Result<(), StorageError> {
    for (i, view) in views.iter().enumerate() {
        if !wanted(i) {
            continue;
        }
        let mut tx = ViewTx {
            view: view.name(),
            cf: 1 + i,
            overlay: &mut *overlay,
            source,
        };
        view.apply(&mut tx, envelope)?;
    }
    Ok(())
}
