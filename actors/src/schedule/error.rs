//! [`ScheduleError`]: how a SyncManager's own part of a sync can fail, and
//! its one mapping into the [`ServiceError`] a client sees. (A failure of
//! the sync itself is the repository's error, already a [`ServiceError`]
//! in [`super::RunSync`]'s answer, passed on as is.)

use crate::ServiceError;

/// Why a SyncManager could not get a sync's answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScheduleError {
    /// The repository's actor is gone (unregistered, node shutting down)
    /// or its mailbox is full: 503, the client tries again later.
    #[error("actor unavailable: {0}")]
    RepositoryUnavailable(#[from] actix::MailboxError),
}

impl From<ScheduleError> for ServiceError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::RepositoryUnavailable(_) => ServiceError::unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_repository_is_unavailable() {
        for (e, message) in [
            (
                actix::MailboxError::Closed,
                "actor unavailable: Mailbox has closed",
            ),
            (
                actix::MailboxError::Timeout,
                "actor unavailable: Message delivery timed out",
            ),
        ] {
            assert_eq!(
                ServiceError::from(ScheduleError::from(e)),
                ServiceError {
                    code: 503,
                    message: message.into()
                }
            );
        }
    }
}
