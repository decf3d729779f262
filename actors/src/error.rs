//! The error every endpoint answers with.

use cairn_storage::StorageError;

/// A failed request, as the client sees it: a code with HTTP meaning and a
/// message naming what is wrong. Sent with the micro protocol's
/// `Nats-Service-Error`/`Nats-Service-Error-Code` headers and a body
/// `{"code": …, "message": …}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    /// 400 bad input, 404 not found, 409 conflict, 413 a reply too large
    /// to send,
    /// 500 internal, 503 unavailable.
    pub code: u16,
    /// Lowercase, names the field or object concerned.
    pub message: String,
}

impl ServiceError {
    /// 400 for `field`.
    pub fn bad_field(field: &str, why: impl std::fmt::Display) -> Self {
        Self {
            code: 400,
            message: format!("{field}: {why}"),
        }
    }

    /// 400 for the whole request.
    pub fn bad_request(why: impl Into<String>) -> Self {
        Self {
            code: 400,
            message: why.into(),
        }
    }

    /// 404.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self {
            code: 404,
            message: what.into(),
        }
    }

    /// 503: a dependency (the store, an upstream) is not available now.
    pub fn unavailable(what: impl Into<String>) -> Self {
        Self {
            code: 503,
            message: what.into(),
        }
    }

    /// 500: a bug or a broken store; details go to the node's log.
    pub fn internal(what: impl Into<String>) -> Self {
        Self {
            code: 500,
            message: what.into(),
        }
    }
}

impl From<StorageError> for ServiceError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Conflict { .. } => Self {
                code: 409,
                message: e.to_string(),
            },
            StorageError::InvalidAppend(m) => Self::bad_request(m),
            StorageError::Closed => Self::unavailable("node is shutting down"),
            StorageError::UnknownView(_) => Self::not_found(e.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<actix::MailboxError> for ServiceError {
    /// The actor that should answer is gone or overloaded: try again later.
    fn from(e: actix::MailboxError) -> Self {
        Self::unavailable(format!("actor unavailable: {e}"))
    }
}
