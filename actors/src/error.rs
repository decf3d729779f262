//! The error every endpoint answers with.
//!
//! Domain modules have their own error enums (one variant per failure, each
//! saying how to handle it): [`crate::repository::LifecycleError`],
//! [`crate::repository::RepositoryError`], [`crate::registry::RegistryError`],
//! [`crate::writer::WriterError`].
//! Each maps into [`ServiceError`] in one `From` impl beside it (the only
//! place its codes are chosen), built with the constructors here — one of
//! them, [`ServiceError::conflict_expected`], for every 409 that names
//! what was expected and what was found.

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

    /// 409: the request conflicts with the current state (`what` says how).
    pub fn conflict(what: impl Into<String>) -> Self {
        Self {
            code: 409,
            message: what.into(),
        }
    }

    /// 409 naming what was expected and what was found:
    /// `"{what}: expected {expected}, {found}"`. `found` is phrased by the
    /// caller, value included (`"got 7 (it changed since it was read)"`,
    /// `"found version 3"`), so each conflict keeps its wording. Used for
    /// `resource_version` and stream version conflicts.
    pub fn conflict_expected(
        what: impl std::fmt::Display,
        expected: impl std::fmt::Display,
        found: impl std::fmt::Display,
    ) -> Self {
        Self::conflict(expected_found(what, expected, found))
    }

    /// 500: a bug or a broken store; details go to the node's log.
    pub fn internal(what: impl Into<String>) -> Self {
        Self {
            code: 500,
            message: what.into(),
        }
    }
}

/// The text of a conflict naming what was expected and what was found:
/// `"{what}: expected {expected}, {found}"` — the one wording of
/// [`ServiceError::conflict_expected`], also used by domain errors whose
/// `Display` is that message (`LifecycleError::ResourceVersion`).
pub fn expected_found(
    what: impl std::fmt::Display,
    expected: impl std::fmt::Display,
    found: impl std::fmt::Display,
) -> String {
    format!("{what}: expected {expected}, {found}")
}

impl From<StorageError> for ServiceError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Conflict {
                stream,
                expected,
                actual,
            } => Self::conflict_expected(
                format_args!("stream {stream}"),
                expected,
                format_args!("found version {actual}"),
            ),
            StorageError::InvalidAppend(m) => Self::bad_request(m),
            StorageError::Closed => Self::unavailable("node is shutting down"),
            StorageError::Unavailable(why) => Self::unavailable(why),
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

#[cfg(test)]
mod tests {
    use cairn_storage::ExpectedVersion;

    use super::*;

    #[test]
    fn a_stream_conflict_is_409_naming_expected_and_found() {
        let e = StorageError::Conflict {
            stream: "repo/ns/r".into(),
            expected: ExpectedVersion::Exact(3),
            actual: 5,
        };
        let text = e.to_string();
        let service = ServiceError::from(e);
        assert_eq!(
            service,
            ServiceError {
                code: 409,
                message: "stream repo/ns/r: expected version 3, found version 5".into()
            }
        );
        // The wording the storage error had.
        assert_eq!(service.message, text);
    }

    #[test]
    fn conflict_expected_names_both() {
        assert_eq!(
            ServiceError::conflict_expected("resource_version of a.b.c", 4, "got 2"),
            ServiceError {
                code: 409,
                message: "resource_version of a.b.c: expected 4, got 2".into()
            }
        );
    }
}
