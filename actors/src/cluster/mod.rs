//! The cluster: nodes joined to one NATS cluster share cairn's streams.
//! JetStream is the distributed engine; cairn builds no consensus of its
//! own.
//!
//! What exists so far (the rest of the design is in the README's cluster
//! section, and is built on these):
//! - [`log`] — the replicated log: `CAIRN_LOG` orders every commit of every
//!   cairn stream (one subject per stream); every node's applier writes it,
//!   in that order, to its own RocksDB log and views
//!   ([`cairn_storage::Store::apply_sequenced_async`]), so all logs are the
//!   same byte for byte and any node can answer reads.
//! - [`blobs`] — the blobs events reference travel beside the log in
//!   `CAIRN_BLOBS`; a replica fetches what it lacks before applying.
//! - [`appender`] — [`ClusterAppend`], the [`cairn_storage::AsyncAppend`] a
//!   stream's owner writes through: publishes fenced with
//!   `Nats-Expected-Last-Subject-Sequence`, answered after this node applied
//!   them (read-your-writes); a deposed owner is refused by JetStream and
//!   steps down. Repository writers, the key-value partition writers and
//!   the artifact stream writers append through it.
//! - [`snapshot`] — snapshots of a node's store in `CAIRN_SNAPSHOTS`, the
//!   trimming of `CAIRN_LOG` they allow, and a node's restore from one.
//! - [`ownership`] — leases and placement: which node writes which
//!   stream (repositories, the 16 key-value partitions, the 16 artifact
//!   streams, and roles).

pub mod appender;
pub mod blobs;
pub mod log;
pub mod ownership;
pub mod snapshot;

pub use appender::ClusterAppend;

/// The last sequence of JetStream stream `name` (0 when it holds none).
pub async fn last_sequence(js: &async_nats::jetstream::Context, name: &str) -> Result<u64, String> {
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    last_sequence_of(&mut stream, name).await
}

/// The last sequence of `stream` (named `name` in errors), read now.
pub async fn last_sequence_of(
    stream: &mut async_nats::jetstream::stream::Stream,
    name: &str,
) -> Result<u64, String> {
    Ok(stream
        .info()
        .await
        .map_err(|e| format!("stream {name}: {e}"))?
        .state
        .last_sequence)
}
pub use blobs::Blobs;
pub use log::{start_applier, Applied};
pub use ownership::{AcquireError, Holder, Ownership, OwnershipConfig, OwnershipView};
