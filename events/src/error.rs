//! Errors of the events crate.

/// Failures while decoding or validating events, streams and subjects.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The bytes are not a valid protobuf envelope: the record is corrupt or
    /// was not written by cairn. Callers stop reading and report the position.
    #[error("malformed envelope: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The envelope was written by a newer cairn. Callers must upgrade before
    /// reading this log.
    #[error("unsupported schema version {found}, this build understands up to {supported}")]
    UnsupportedSchema {
        /// Version found in the record.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// The envelope carries no event payload. Treated like corruption.
    #[error("envelope at seq {seq} carries no event payload")]
    MissingPayload {
        /// Global sequence number of the record.
        seq: u64,
    },
    /// A stream id failed validation; the message names the rule.
    #[error("invalid stream id {stream:?}: {reason}")]
    InvalidStream {
        /// The offending id.
        stream: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// JSON could not be rendered or parsed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}
