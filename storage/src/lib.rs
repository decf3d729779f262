//! cairn's memory: the durable event log, the content-addressed blob store
//! and the views, all in one RocksDB database.
//!
//! # Layout
//! - [`columns`] — the column families, declared once, documented, never renamed.
//! - [`keys`] — key encodings (big-endian integers so keys sort in event order).
//! - [`error`] — [`StorageError`], one variant per failure.
//! - [`log`] — the [`EventLog`] trait and its types ([`ExpectedVersion`], [`Appended`]).
//! - [`blob`] — the [`BlobStore`] trait, digests and pins.
//! - [`view`] — the [`View`] trait, the transaction views write through, and
//!   the fold shared by live appends, catch-up and rebuild.
//! - [`views`] — cairn's views (`repositories`, …) and [`views::default_views`].
//! - [`store`] — [`Store`], the RocksDB implementation of all of the above, with
//!   its group-committing writer thread, and [`StoreSnapshot`] (reads of the
//!   views and the last seq from one RocksDB snapshot, for list-then-watch).
//! - [`conformance`] — the conformance suite every [`EventLog`] must pass.
//!
//! # How a write happens
//! Every append is sent to one writer thread. The writer drains whatever
//! appends are queued (up to a bound), checks each one's expected stream
//! version, assigns stream versions and global sequence numbers, folds the
//! new events into every view, and writes log rows, stream index rows, view
//! rows, view checkpoints and the last sequence number as **one** `WriteBatch`
//! with `sync = true` — one fsync for the whole group. Only then are the
//! appenders answered. A rejected append (conflict, bad input) contributes
//! nothing to the batch, so it writes nothing.

pub mod blob;
pub mod columns;
pub mod conformance;
pub mod error;
pub mod keys;
pub mod log;
pub mod store;
pub mod view;
pub mod views;

pub use blob::{BlobPin, BlobStore, Digest};
pub use columns::Column;
pub use error::StorageError;
pub use log::{Appended, EventLog, ExpectedVersion};
pub use store::{MemoryUsage, RebuildProgress, RebuildStats, Store, StoreConfig, StoreSnapshot};
pub use view::{View, ViewTx};
