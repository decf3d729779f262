//! [`WatchError`]: every way a watch can fail to start, and its one
//! mapping into the [`ServiceError`] a client sees.

use crate::ServiceError;

/// Why a watch did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// A request field is wrong (400 naming it); the client fixes the
    /// request.
    #[error("{field}: {why}")]
    BadField {
        /// The field, as the request spells it (`kinds`, `filter.kinds`).
        field: String,
        /// What is wrong with it.
        why: String,
    },
    /// The node is shutting down (503); the client retries on another node
    /// or later, resuming from the last seq it saw.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The node holds `max` watchers already (503); the client retries
    /// later, or the operator raises `watch.max-watchers`.
    #[error("watch: {max} watchers already, the most this node takes (watch.max-watchers)")]
    TooManyWatchers {
        /// `watch.max-watchers`.
        max: usize,
    },
    /// The watcher stopped before its listing or replay began (503); the
    /// client starts the watch again.
    #[error("watch stopped while starting")]
    StoppedWhileStarting,
    /// The node's store failed while listing (500); nothing to fix on the
    /// client's side.
    #[error("watch listing: {0}")]
    Listing(String),
}

impl From<WatchError> for ServiceError {
    fn from(e: WatchError) -> Self {
        match &e {
            WatchError::BadField { field, why } => ServiceError::bad_field(field, why),
            WatchError::ShuttingDown
            | WatchError::TooManyWatchers { .. }
            | WatchError::StoppedWhileStarting => ServiceError::unavailable(e.to_string()),
            WatchError::Listing(_) => ServiceError::internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_one_code_and_message() {
        let cases = [
            (
                WatchError::BadField {
                    field: "kinds".into(),
                    why: "must name at least one of: packagerevision, repository".into(),
                },
                400,
                "kinds: must name at least one of: packagerevision, repository",
            ),
            (WatchError::ShuttingDown, 503, "node is shutting down"),
            (
                WatchError::TooManyWatchers { max: 2 },
                503,
                "watch: 2 watchers already, the most this node takes (watch.max-watchers)",
            ),
            (
                WatchError::StoppedWhileStarting,
                503,
                "watch stopped while starting",
            ),
            (
                WatchError::Listing("store closed".into()),
                500,
                "watch listing: store closed",
            ),
        ];
        for (error, code, message) in cases {
            let reply = ServiceError::from(error);
            assert_eq!((reply.code, reply.message.as_str()), (code, message));
        }
    }
}
