//! [`AsyncAppend`]: appending from async code without naming the store.
//!
//! The stream-writer shell in `cairn-actors` (one writer per stream, any
//! domain) needs two things of the log it writes to: how many events one
//! append may carry, and a way to queue several appends of one stream back
//! to back without blocking a thread. That is this trait. [`crate::Store`]
//! implements it through its writer thread
//! ([`crate::Store::append_chunks_async`]); the cluster work plugs in a
//! JetStream-backed appender here (appends proposed to the stream's
//! replicated log instead of the local writer), and the shell does not
//! change.
//!
//! The trait is object safe: the writer shell holds a `&dyn AsyncAppend`.
//! One boxed future per call (per command's append, not per event).

use std::{future::Future, pin::Pin};

use cairn_events::{envelope::Metadata, v1::Event, StreamId};

use crate::{Appended, StorageError};

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// After its group commit is fsynced (with `store.sync`, the
    /// default): an acknowledged append survives a power loss.
    #[default]
    Sync,
    /// After its group commit reached RocksDB's write-ahead log, without
    /// waiting for an fsync (a group holding any `Sync` append is fsynced
    /// all the same): survives the process being killed, not the machine
    /// losing power before the next fsync ([`crate::Store::sync_wal`],
    /// which the owner of the buffered appends calls on its own schedule).
    Buffered,
}

/// The future [`AsyncAppend::append_chunks`] returns: the outcome of each
/// chunk up to and including the first failure.
pub type AppendChunks<'a> =
    Pin<Box<dyn Future<Output = Vec<Result<Appended, StorageError>>> + Send + 'a>>;

/// An event log that async code appends to, chunk by chunk.
pub trait AsyncAppend: Send + Sync {
    /// The most events one append may carry (`store.append-max-events`);
    /// a longer append is refused as [`StorageError::InvalidAppend`].
    fn append_max_events(&self) -> usize;

    /// Appends `chunks` to `stream` in order, the first expecting stream
    /// version `version`, each next one the version the previous leaves,
    /// queued together so they commit in as few batches as they can. A
    /// failed chunk fails every later one, so nothing after a failure is
    /// written. Resolves to the outcome of each chunk up to and including
    /// the first failure. Waits without blocking a thread.
    fn append_chunks<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
        chunks: Vec<Vec<Event>>,
        metadata: Metadata,
    ) -> AppendChunks<'a>;

    /// [`AsyncAppend::append_chunks`], acknowledged as `durability` says.
    /// A log that cannot acknowledge earlier treats every append as
    /// [`Durability::Sync`] (the default implementation).
    fn append_chunks_with<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
        chunks: Vec<Vec<Event>>,
        metadata: Metadata,
        durability: Durability,
    ) -> AppendChunks<'a> {
        let _ = durability;
        self.append_chunks(stream, version, chunks, metadata)
    }

    /// Appends of several commands of one stream, each with its own
    /// metadata (principal, correlation), queued together so they share
    /// group commits: the first expects stream version `version`, each
    /// next one the version the previous leaves; a failed append fails
    /// every later one. Resolves to the outcome of each append up to and
    /// including the first failure. The default implementation appends
    /// them one after the other (one commit round trip each); a log that
    /// can queue them overrides it ([`crate::Store`] does).
    fn append_pipelined<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
        appends: Vec<(Vec<Event>, Metadata)>,
        durability: Durability,
    ) -> AppendChunks<'a> {
        Box::pin(async move {
            let mut version = version;
            let mut out = Vec::with_capacity(appends.len());
            for (events, metadata) in appends {
                let mut outcome = self
                    .append_chunks_with(stream, version, vec![events], metadata, durability)
                    .await;
                let Some(result) = outcome.pop() else { break };
                let failed = result.is_err();
                if let Ok(appended) = &result {
                    version += appended.envelopes.len() as u64;
                }
                out.push(result);
                if failed {
                    break;
                }
            }
            out
        })
    }
}
