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

use std::{collections::BTreeMap, fmt};

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

    /// Calls `f` with each key of the family with index `cf` in
    /// `[from, to)`, in key order, while it says continue.
    fn for_each_key(
        &self,
        cf: usize,
        from: &[u8],
        to: &[u8],
        f: &mut dyn FnMut(&[u8]) -> std::ops::ControlFlow<()>,
    ) -> Result<(), StorageError>;
}

/// Index of the `blob_refs` family in an [`Overlay`]; views are `1 + i`.
pub(crate) const BLOB_REFS_CF: usize = 0;

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
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    /// Per family (index [`BLOB_REFS_CF`], views at `1 + i`): key → new
    /// value, or `None` for a delete.
    pub(crate) rows: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
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
        let key = keys::blob_ref_key(self.view, &digest.0);
        let current = match self.overlay.get(self.source, BLOB_REFS_CF, &key)? {
            None => 0,
            Some(v) => keys::decode_u64(&v).ok_or_else(|| {
                StorageError::Corrupt(format!("blob ref count of {digest} is not a u64"))
            })?,
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
        let value = (next > 0).then(|| next.to_be_bytes().to_vec());
        self.overlay.set(BLOB_REFS_CF, key, value);
        Ok(())
    }
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
