//! Column families. Names are part of the on-disk format: never rename one.

/// Column families with a fixed role. Each view adds one family of its own,
/// named [`view_column`]`(view.name())`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Column {
    /// The event log: `seq` (big-endian u64) → encoded `Envelope`.
    /// Append-only; keys are gap-free from 1, except for the events a
    /// compaction removed (see [`crate::compaction`]).
    Log,
    /// Stream index: `stream id ‖ 0x00 ‖ stream version (big-endian u64)` →
    /// `seq` (big-endian u64). Versions of one stream are contiguous from 1
    /// (but for compacted stream classes, whose heads are always kept).
    Streams,
    /// Small bookkeeping values; see [`crate::keys::meta`] for the keys
    /// (last sequence, schema version, view checkpoints, publish cursor).
    Meta,
    /// Content-addressed small blobs: sha256 (32 bytes) → content. Blobs
    /// larger than `StoreConfig::blob_inline_max_bytes` are files under
    /// `<store dir>/blobs/` instead (see [`crate::store`]).
    Blobs,
    /// Blob references held by views: `view name ‖ 0x00 ‖ sha256` →
    /// reference count (big-endian u64, never zero: the row is deleted).
    /// Part of each view's state, so rebuilt with it.
    BlobRefs,
}

impl Column {
    /// Every fixed column family.
    pub const ALL: [Column; 5] = [
        Column::Log,
        Column::Streams,
        Column::Meta,
        Column::Blobs,
        Column::BlobRefs,
    ];

    /// The RocksDB column family name.
    pub const fn name(self) -> &'static str {
        match self {
            Column::Log => "log",
            Column::Streams => "streams",
            Column::Meta => "meta",
            Column::Blobs => "blobs",
            Column::BlobRefs => "blob_refs",
        }
    }
}

/// Name of the column family holding view `view`'s rows.
pub fn view_column(view: &str) -> String {
    format!("view_{view}")
}
