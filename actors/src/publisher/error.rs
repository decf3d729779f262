//! Why publishing or flushing failed.

/// Why publishing or flushing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The flush did not complete in time (NATS down or slow). The events
    /// are not lost: they are published once NATS is back.
    #[error("timed out after {waited_ms} ms with events up to {cursor} of {target} published")]
    Timeout {
        /// How long the flush waited.
        waited_ms: u64,
        /// Cursor at the end of the wait.
        cursor: u64,
        /// Sequence the flush waited for.
        target: u64,
    },
    /// The publisher has stopped.
    #[error("publisher stopped")]
    Stopped,
}
