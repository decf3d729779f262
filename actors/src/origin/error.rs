//! [`OriginError`]: why an origin operation failed, and the sorting of
//! libgit2 errors into its classes ([`map_git_error`]).
//!
//! Nearly a leaf of the origin modules: every other one reports its
//! failures with these, and this module uses only `names` (whose
//! [`RefError`](super::names::RefError) it carries).

use git2::{ErrorClass, ErrorCode};

/// Why an origin operation failed. [`OriginError::class`] gives the short,
/// stable class name that goes into conditions and replies.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The upstream could not be reached (DNS, connection refused, TLS).
    /// Transient as far as cairn can tell: retry on the next sync.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The upstream did not connect or answer within `git.timeout`.
    #[error("upstream timed out: {0}")]
    Timeout(String),
    /// The upstream has no such repository (404, a `file://` path that is
    /// not a repository any more).
    #[error("repository not found upstream: {0}")]
    RepositoryMissing(String),
    /// The upstream rejected the credentials, or asked for credentials none of
    /// which are configured. Retrying will not help until the secret changes.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The node may not use the upstream: the files are not readable by
    /// its user, or Git refuses a repository another user owns for what
    /// it would run there (`safe.directory`; reads of `file://` upstreams
    /// are exempt, see `file_transport`). Retrying will not help until
    /// the permissions change.
    #[error("access denied: {0}")]
    Forbidden(String),
    /// The registered branch does not exist upstream. Report it on the
    /// repository; it clears once the branch appears (or is created).
    #[error("branch {branch:?} does not exist upstream")]
    BranchMissing {
        /// The registered branch name, without `refs/heads/`.
        branch: String,
    },
    /// The URL is malformed or uses a scheme cairn does not support. Reject
    /// the registration; retrying will not help.
    #[error("invalid repository url: {0}")]
    InvalidUrl(String),
    /// A push was not a fast-forward of the upstream: it moved since it
    /// was read. Fetch, apply again and retry.
    #[error("the upstream moved: {0}")]
    Moved(String),
    /// The upstream refused a pushed ref (a hook, permissions, a
    /// protected branch).
    #[error("push rejected by the upstream: {0}")]
    Rejected(String),
    /// A write needs a ref name Git (or cairn's mirror) cannot take (see
    /// [`super::names::check_ref`]); nothing was pushed. Not retried: the
    /// names must change.
    #[error(transparent)]
    InvalidRef(#[from] super::names::RefError),
    /// Any other failure from Git (corrupt repository, rejected push, local
    /// I/O). Log it and retry on the next sync.
    #[error("git: {0}")]
    Git(String),
}

impl OriginError {
    /// Short class name: `network`, `timeout`, `auth` (credentials or
    /// access), `missing` (branch
    /// or repository), `invalid` (a URL, a ref name), `conflict` and
    /// `rejected` (pushes) or `other`.
    pub fn class(&self) -> &'static str {
        match self {
            OriginError::Unreachable(_) => "network",
            OriginError::Timeout(_) => "timeout",
            OriginError::RepositoryMissing(_) => "missing",
            OriginError::Auth(_) | OriginError::Forbidden(_) => "auth",
            OriginError::BranchMissing { .. } => "missing",
            OriginError::InvalidUrl(_) => "invalid",
            OriginError::Moved(_) => "conflict",
            OriginError::Rejected(_) => "rejected",
            OriginError::InvalidRef(_) => "invalid",
            OriginError::Git(_) => "other",
        }
    }
}

/// Porch's retryable push errors (`retryableErrors` in
/// `pkg/externalrepo/git/git.go`): a push that failed with a message
/// holding one of these may succeed when tried again. `non-fast-forward
/// update` is Porch's too, but a push that was not a fast-forward is
/// [`OriginError::Moved`] here, which has its own path (fetch, re-apply).
pub(crate) const TRANSIENT_PUSH_ERRORS: &[&str] = &[
    "remote ref",
    "failed to update ref",
    "pre-receive hook declined",
    "non-fast-forward update",
    "stale file handle",
    "unable to migrate objects to permanent storage",
    "failed to lock",
    "broken pipe",
    "status code: 500",
];

impl OriginError {
    /// Whether a push that failed with this may succeed when tried again
    /// as it is: its message holds one of [`TRANSIENT_PUSH_ERRORS`]
    /// (matched as Porch does, on the text). Never [`OriginError::Moved`]
    /// (the upstream moved: re-apply, do not repeat) nor
    /// [`OriginError::InvalidRef`].
    pub fn is_transient(&self) -> bool {
        match self {
            OriginError::Moved(_) | OriginError::InvalidRef(_) => false,
            e => {
                let message = e.to_string();
                TRANSIENT_PUSH_ERRORS.iter().any(|p| message.contains(p))
            }
        }
    }
}

impl From<git2::Error> for OriginError {
    fn from(e: git2::Error) -> Self {
        map_git_error(e)
    }
}

/// Sorts a libgit2 error into an [`OriginError`] class.
pub(super) fn map_git_error(e: git2::Error) -> OriginError {
    let message = e.message().to_owned();
    let lower = message.to_ascii_lowercase();
    if e.code() == ErrorCode::Auth
        || lower.contains("authentication")
        || lower.contains("status code: 401")
        || lower.contains("status code: 403")
    {
        return OriginError::Auth(message);
    }
    if lower.contains("dubious ownership") || lower.contains("permission denied") {
        return OriginError::Forbidden(message);
    }
    if lower.contains("unsupported url protocol") || lower.contains("invalid url") {
        return OriginError::InvalidUrl(message);
    }
    if lower.contains("timed out") || lower.contains("timeout") {
        return OriginError::Timeout(message);
    }
    if lower.contains("could not find repository")
        || lower.contains("status code: 404")
        || lower.contains("does not appear to be a git repository")
        || lower.contains("not a git repository")
    {
        return OriginError::RepositoryMissing(message);
    }
    let unreachable = matches!(
        e.class(),
        ErrorClass::Net | ErrorClass::Ssl | ErrorClass::Ssh
    ) || e.code() == ErrorCode::Certificate
        || lower.contains("failed to connect")
        || lower.contains("failed to resolve");
    if unreachable {
        OriginError::Unreachable(message)
    } else {
        OriginError::Git(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porchs_retryable_push_errors_are_transient() {
        for transient in [
            OriginError::Rejected("refs/heads/drafts/a/w: pre-receive hook declined".into()),
            OriginError::Rejected("refs/heads/main: failed to update ref".into()),
            OriginError::Git(
                "git push to file:///x: fatal: Unable to migrate objects to permanent storage"
                    .to_ascii_lowercase(),
            ),
            OriginError::Unreachable("broken pipe".into()),
            OriginError::Git("unexpected http status code: 500".into()),
        ] {
            assert!(transient.is_transient(), "{transient}");
        }
        for permanent in [
            OriginError::Moved("refs/heads/main: non-fast-forward update".into()),
            OriginError::Rejected("refs/heads/main: protected branch".into()),
            OriginError::Auth("status code: 401".into()),
            OriginError::Git("corrupt".into()),
        ] {
            assert!(!permanent.is_transient(), "{permanent}");
        }
    }

    #[test]
    fn auth_and_network_errors_are_classified() {
        let auth = git2::Error::new(ErrorCode::Auth, ErrorClass::Http, "nope");
        assert_eq!(map_git_error(auth).class(), "auth");
        let net = git2::Error::new(ErrorCode::GenericError, ErrorClass::Net, "refused");
        assert_eq!(map_git_error(net).class(), "network");
        // What a `file://` upstream's `git upload-pack` says when Git
        // distrusts its owner, through the transport's pipe (class Net).
        let dubious = git2::Error::new(
            ErrorCode::GenericError,
            ErrorClass::Net,
            "git upload-pack failed (exit status: 128): fatal: detected dubious ownership in repository at '/srv/x.git'",
        );
        assert_eq!(map_git_error(dubious).class(), "auth");
        let unreadable = git2::Error::new(
            ErrorCode::GenericError,
            ErrorClass::Os,
            "failed to open '/srv/x.git/packed-refs': Permission denied",
        );
        assert_eq!(map_git_error(unreadable).class(), "auth");
        let other = git2::Error::new(ErrorCode::GenericError, ErrorClass::Odb, "corrupt");
        assert_eq!(map_git_error(other).class(), "other");
    }
}
