//! [`KvError`]: why a key-value command failed.

use crate::{writer::WriterError, ServiceError};

/// Why a key-value command failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The request is invalid: answered 400 naming the field; nothing was
    /// stored.
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field at fault.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The entry does not exist (or has expired): answered 404.
    #[error("kv entry {full_key:?} not found")]
    NotFound {
        /// `namespace:key` (or `key` in the default namespace).
        full_key: String,
    },
    /// The writer could not append (409 on a stale version, 503 closed,
    /// 500 broken): nothing of the command was stored.
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// Reading the view failed: the store is broken or closed.
    #[error(transparent)]
    Storage(#[from] cairn_storage::StorageError),
    /// The partition's writer is gone (the node is stopping): retry.
    #[error("kv partition {partition} writer is not running")]
    WriterGone {
        /// The partition.
        partition: usize,
    },
    /// This cluster node does not write the partition (another node holds
    /// its lease, or it is being handed over): answered 503 "does not
    /// own", which the service routes again to the owner; nothing of the
    /// command ran.
    #[error("node {node} does not own stream {stream}")]
    NotOwner {
        /// This node.
        node: String,
        /// The partition's stream.
        stream: String,
    },
    /// The command's idempotency key (`Cairn-Request-Id`) was already
    /// used for another request: answered 409; nothing was stored.
    #[error("{message}")]
    RequestReused {
        /// What the key was used for (see
        /// [`crate::service::idempotency::reused_message`]).
        message: String,
    },
    /// The failure of a batch of sets, or of the command that ran it, as
    /// the service answers it (same code, same message): every set of the
    /// batch and every set still queued behind it is answered with it,
    /// none stored.
    #[error("{}", .0.message)]
    Shared(ServiceError),
    /// Too many sets wait for the partition's writer: answered 503, retry
    /// later; nothing was stored.
    #[error("kv partition {partition} has {queued} sets queued, the most it holds")]
    Busy {
        /// The partition.
        partition: usize,
        /// Sets queued.
        queued: usize,
    },
}

impl From<KvError> for ServiceError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Invalid { field, reason } => ServiceError::bad_field(field, reason),
            e @ KvError::NotFound { .. } => ServiceError::not_found(e.to_string()),
            KvError::RequestReused { message } => ServiceError::conflict(message),
            KvError::Writer(e) => e.into(),
            KvError::Storage(e) => e.into(),
            KvError::Shared(e) => e,
            e @ (KvError::WriterGone { .. } | KvError::Busy { .. } | KvError::NotOwner { .. }) => {
                ServiceError::unavailable(e.to_string())
            }
        }
    }
}
