//! [`ArtifactError`]: why an artifact request failed, with the HTTP status
//! each face answers.

use std::time::Duration;

use cairn_storage::StorageError;

use crate::{writer::WriterError, ServiceError};

/// Why an artifact request failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The request named a bad URL (not absolute http(s)/file, no host,
    /// control characters, user info): 400; fix the request.
    #[error("{field}: {reason}")]
    BadUrl {
        /// The field or parameter holding the URL (`url`, `path`).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The URL is longer than the limit: 400.
    #[error("{field}: longer than {max_bytes} bytes ({bytes} bytes)")]
    UrlTooLong {
        /// The field or parameter holding the URL.
        field: &'static str,
        /// Its length.
        bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// The URL's host is not on `artifact.allow`: 400; nothing was fetched.
    #[error("url: host {host:?} is not allowed (artifact.allow)")]
    HostNotAllowed {
        /// The host.
        host: String,
    },
    /// A proxy path named no configured upstream: 404.
    #[error("no upstream named {name:?} (artifact.upstreams)")]
    UnknownUpstream {
        /// The name in the path.
        name: String,
    },
    /// A request header cannot be forwarded (control characters): 400.
    #[error("header {name}: {reason}")]
    BadHeader {
        /// The header's name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `only-if-cached` and nothing suitable is stored: 504 (RFC 9111
    /// §5.2.1.7).
    #[error("not in the cache and the request said only-if-cached")]
    NotCached,
    /// The origin could not be reached or broke the exchange: 502.
    #[error("origin {url}: {message}")]
    Origin {
        /// The URL requested.
        url: String,
        /// What failed.
        message: String,
    },
    /// The origin did not connect, answer or send within
    /// `artifact.origin-timeout`: 504.
    #[error("origin {url}: no answer within {after:?} (artifact.origin-timeout)")]
    OriginTimeout {
        /// The URL requested.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// Nothing is stored under this URL or digest: 404.
    #[error("{0}")]
    NotFound(String),
    /// The store failed: 500 (503 when shutting down).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The stream writer failed: see [`WriterError`].
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// This cluster node does not write the stream (its lease is elsewhere,
    /// or moving): 503; nothing ran — the command is routed again.
    #[error("node {node} does not own stream {stream}; retry")]
    NotOwner {
        /// This node.
        node: String,
        /// `artifact/<partition>`.
        stream: String,
    },
    /// The stream's owner (another cluster node) could not be reached or
    /// answered an error: its code (503 while the stream changes hands or
    /// the log is unavailable).
    #[error("{message}")]
    Cluster {
        /// HTTP-like code.
        code: u16,
        /// What failed, as the owner or the routing said.
        message: String,
    },
    /// The idempotency key of a record was already used for another
    /// record (409): nothing was appended. cairn makes a fresh key per
    /// record, so only a foreign sender can cause it.
    #[error("{message}")]
    RequestReused {
        /// What the key was used for (see
        /// [`crate::service::idempotency::reused_message`]).
        message: String,
    },
    /// A decision refused an event for another partition: a bug, 500.
    #[error("event for {url} belongs to partition {expected}, not {found}")]
    WrongPartition {
        /// The URL.
        url: String,
        /// Its partition.
        expected: u32,
        /// The writer's.
        found: u32,
    },
}

impl ArtifactError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadUrl { .. }
            | Self::UrlTooLong { .. }
            | Self::HostNotAllowed { .. }
            | Self::BadHeader { .. } => 400,
            Self::UnknownUpstream { .. } | Self::NotFound(_) => 404,
            Self::NotCached | Self::OriginTimeout { .. } => 504,
            Self::Origin { .. } => 502,
            Self::Storage(StorageError::Closed)
            | Self::Storage(StorageError::Unavailable(_))
            | Self::NotOwner { .. } => 503,
            Self::Cluster { code, .. } => *code,
            Self::RequestReused { .. } => 409,
            Self::Storage(_) | Self::WrongPartition { .. } => 500,
            Self::Writer(e) => match e {
                WriterError::Append(StorageError::Closed | StorageError::Unavailable(_)) => 503,
                _ => 500,
            },
        }
    }

    /// A 400 for `field`.
    pub fn bad_url(field: &'static str, reason: impl Into<String>) -> Self {
        Self::BadUrl {
            field,
            reason: reason.into(),
        }
    }
}

impl From<ServiceError> for ArtifactError {
    fn from(e: ServiceError) -> Self {
        Self::Cluster {
            code: e.code,
            message: e.message,
        }
    }
}

impl From<ArtifactError> for ServiceError {
    fn from(e: ArtifactError) -> Self {
        ServiceError {
            code: e.status(),
            message: e.to_string(),
        }
    }
}
