//! [`ViewRead`]: reading views without naming the store that holds them.
//!
//! Components that only read views (the typed views in [`crate::views`],
//! services answering queries) take `&impl ViewRead` or `&dyn ViewRead`
//! instead of the concrete [`crate::Store`], so they can be handed a
//! [`crate::StoreSnapshot`], another backend or a test double.
//!
//! The trait itself is object safe (every method is callable through
//! `&dyn ViewRead`); the generic conveniences (protobuf decoding, scans
//! with the caller's error type) live in [`ViewReadExt`], implemented for
//! every `ViewRead`, `dyn` included. Of these names only three remain
//! inherent methods, which take precedence over the trait's: `view_get`,
//! `view_scan_after` and `view_scan_each` on [`crate::Store`], and
//! `view_get` and `view_scan_each` on [`crate::StoreSnapshot`]; every other
//! read goes through the traits (import [`ViewReadExt`]). [`Rows`], what
//! scans return, and [`ViewDump`], one view's full contents, are defined
//! here (and re-exported as `store::Rows` and `store::ViewDump`).

use std::{ops::ControlFlow, sync::Arc};

use crate::{view::decode_row, StorageError};

/// Key-value rows, in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// The full contents of one view: for comparing a rebuilt view with the
/// live one, byte for byte.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewDump {
    /// Rows of the view's column family, in key order.
    pub rows: Rows,
    /// The view's blob reference rows, in key order.
    pub blob_refs: Rows,
    /// The view's checkpoint.
    pub checkpoint: u64,
}

/// A callback over borrowed `(key, value)` rows that says whether to go on.
pub type RowVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'a;

/// Reads of view rows: point gets, prefix scans and consistent snapshots.
pub trait ViewRead: Send + Sync {
    /// The row at `key` of view `view`.
    fn view_get(&self, view: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Up to `limit` rows of view `view` whose key starts with `prefix`, in
    /// key order, starting after key `after` (exclusive) when given.
    fn view_scan_after(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StorageError>;

    /// Calls `f` with each row of view `view` whose key starts with
    /// `prefix`, in key order, starting after key `after` (exclusive), while
    /// `f` returns [`ControlFlow::Continue`]. Rows are borrowed, not copied.
    /// (The object-safe form of [`ViewReadExt::view_scan_each`].)
    fn view_for_each(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut RowVisitor<'_>,
    ) -> Result<(), StorageError>;

    /// The last committed sequence number these reads reflect: for a
    /// snapshot exactly the log position of every row read through it; for
    /// a live store the position at the time of the call.
    fn read_seq(&self) -> Result<u64, StorageError>;

    /// A consistent read-only view of everything as it is now: every read
    /// through it sees the same commits, and [`ViewRead::read_seq`] is the
    /// position they reflect.
    fn read_snapshot(&self) -> Box<dyn ViewRead + '_>;
}

/// Generic conveniences over any [`ViewRead`].
pub trait ViewReadExt: ViewRead {
    /// The protobuf row at `key` of view `view`.
    fn view_get_message<M: prost::Message + Default>(
        &self,
        view: &str,
        key: &[u8],
    ) -> Result<Option<M>, StorageError> {
        self.view_get(view, key)?
            .map(|bytes| decode_row(view, key, &bytes))
            .transpose()
    }

    /// Up to `limit` rows of view `view` whose key starts with `prefix`.
    fn view_scan(&self, view: &str, prefix: &[u8], limit: usize) -> Result<Rows, StorageError> {
        self.view_scan_after(view, prefix, None, limit)
    }

    /// [`ViewRead::view_scan_after`], each row decoded as protobuf `M`.
    fn view_scan_messages<M: prost::Message + Default>(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, M)>, StorageError> {
        self.view_scan_after(view, prefix, after, limit)?
            .into_iter()
            .map(|(key, value)| {
                let row = decode_row(view, &key, &value)?;
                Ok((key, row))
            })
            .collect()
    }

    /// [`ViewRead::view_for_each`] with a callback that may fail with the
    /// caller's own error type; the first error stops the scan and is
    /// returned.
    fn view_scan_each<E: From<StorageError>>(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, E>,
    ) -> Result<(), E> {
        let mut failed = None;
        self.view_for_each(view, prefix, after, &mut |key, value| match f(key, value) {
            Ok(flow) => flow,
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        })?;
        failed.map_or(Ok(()), Err)
    }

    /// Scans from one snapshot and returns the snapshot's sequence number:
    /// the rows reflect exactly the log up to it (list-then-watch).
    fn view_snapshot_scan_each<E: From<StorageError>>(
        &self,
        view: &str,
        prefix: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, E>,
    ) -> Result<u64, E> {
        let snapshot = self.read_snapshot();
        let seq = snapshot.read_seq()?;
        snapshot.view_scan_each(view, prefix, None, f)?;
        Ok(seq)
    }
}

impl<T: ViewRead + ?Sized> ViewReadExt for T {}

impl<T: ViewRead + ?Sized> ViewRead for &T {
    fn view_get(&self, view: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).view_get(view, key)
    }

    fn view_scan_after(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StorageError> {
        (**self).view_scan_after(view, prefix, after, limit)
    }

    fn view_for_each(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut RowVisitor<'_>,
    ) -> Result<(), StorageError> {
        (**self).view_for_each(view, prefix, after, f)
    }

    fn read_seq(&self) -> Result<u64, StorageError> {
        (**self).read_seq()
    }

    fn read_snapshot(&self) -> Box<dyn ViewRead + '_> {
        (**self).read_snapshot()
    }
}

impl<T: ViewRead + ?Sized> ViewRead for Arc<T> {
    fn view_get(&self, view: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).view_get(view, key)
    }

    fn view_scan_after(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StorageError> {
        (**self).view_scan_after(view, prefix, after, limit)
    }

    fn view_for_each(
        &self,
        view: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut RowVisitor<'_>,
    ) -> Result<(), StorageError> {
        (**self).view_for_each(view, prefix, after, f)
    }

    fn read_seq(&self) -> Result<u64, StorageError> {
        (**self).read_seq()
    }

    fn read_snapshot(&self) -> Box<dyn ViewRead + '_> {
        (**self).read_snapshot()
    }
}
