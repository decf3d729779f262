//! Origin adapters: how cairn reads and writes upstream repositories.
//!
//! Git is the only origin so far. Everything here is blocking (libgit2 and
//! file I/O): call it from `spawn_blocking` or a `SyncArbiter`, never on an
//! arbiter thread.
//!
//! # Layout
//! - `git` — [`GitCache`]: one bare mirror per upstream URL (fetch with
//!   force and prune, remove), [`create_branch`] for registrations with
//!   "create branch", and the mapping of libgit2 errors to [`OriginError`].
//! - `file_transport` — `file://` upstreams served by `git upload-pack` /
//!   `git receive-pack` child processes, as the git CLI does (registered
//!   with libgit2 by [`GitCache::new`]).
//! - `discovery` — [`discover`]: Porch-compatible listing of the package
//!   revisions in a local repository (placeholders on the registered branch,
//!   published tags, drafts, proposals, deletion proposals), with resources,
//!   task history, publishing info and Kptfile labels.
//! - [`write`] — writing as Porch does: package trees, commits, and ref
//!   updates pushed together, never forced ([`OriginError::Moved`] when the
//!   upstream moved, [`OriginError::Rejected`] when it refused).
//! - `annotation` — parsing of the `kpt:{…}` lines Porch writes into commit
//!   messages; malformed lines are skipped, never fatal.
//! - this module — the types shared by both: [`Credentials`],
//!   [`OriginError`] and [`validate_url`].

mod annotation;
mod discovery;
mod file_transport;
mod git;
pub mod write;

use std::fmt;

pub use discovery::{
    discover, discover_packages, discover_refs, package_of_ref, package_path, DiscoveredRevision,
    Discovery, Lifecycle, Task,
};
pub use git::{create_branch, Blobs, FetchOutcome, GitCache};

/// Username and password (or token) for an upstream over http(s).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name sent to the upstream.
    pub username: String,
    /// Password or access token; never printed.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

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
    /// Any other failure from Git (corrupt repository, rejected push, local
    /// I/O). Log it and retry on the next sync.
    #[error("git: {0}")]
    Git(String),
}

impl OriginError {
    /// Short class name: `network`, `timeout`, `auth`, `missing` (branch
    /// or repository), `invalid`, `conflict` and `rejected` (pushes) or
    /// `other`.
    pub fn class(&self) -> &'static str {
        match self {
            OriginError::Unreachable(_) => "network",
            OriginError::Timeout(_) => "timeout",
            OriginError::RepositoryMissing(_) => "missing",
            OriginError::Auth(_) => "auth",
            OriginError::BranchMissing { .. } => "missing",
            OriginError::InvalidUrl(_) => "invalid",
            OriginError::Moved(_) => "conflict",
            OriginError::Rejected(_) => "rejected",
            OriginError::Git(_) => "other",
        }
    }
}

/// Sets how long libgit2 waits to connect to a network upstream and for
/// each read from it; past that a fetch fails with [`OriginError::Timeout`].
/// Process-wide: call once at start-up, before any Git work.
pub fn set_network_timeout(timeout: std::time::Duration) -> Result<(), OriginError> {
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    // SAFETY: these options write two process-global integers in libgit2;
    // they are unsafe only because a concurrent network operation could read
    // them mid-write. The node sets them while starting, before any
    // repository actor exists.
    #[allow(unsafe_code)]
    unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(ms)
            .and_then(|()| git2::opts::set_server_timeout_in_milliseconds(ms))
    }
    .map_err(|e| OriginError::Git(format!("setting the network timeout: {e}")))
}

/// Checks that `url` can be registered: scheme `file://` (with an absolute
/// path), `http://` or `https://` (with a host), and no whitespace or control
/// characters. The error message says what is wrong.
pub fn validate_url(url: &str) -> Result<(), OriginError> {
    let invalid = |msg: String| Err(OriginError::InvalidUrl(msg));
    let Some((scheme, rest)) = url.split_once("://") else {
        return invalid(format!(
            "{url:?} has no scheme (expected file://, http:// or https://)"
        ));
    };
    match scheme {
        "file" | "http" | "https" => {}
        _ => {
            return invalid(format!(
                "unsupported scheme {scheme:?} in {url:?} (expected file, http or https)"
            ))
        }
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid(format!("{url:?} contains whitespace or control characters"));
    }
    if scheme == "file" {
        if !rest.starts_with('/') {
            return invalid(format!(
                "{url:?} does not name an absolute path (expected file:///path)"
            ));
        }
    } else {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || host.starts_with(':') {
            return invalid(format!("{url:?} has no host"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_schemes() {
        for url in [
            "file:///srv/git/repo.git",
            "http://localhost:3000/nephio/blueprints.git",
            "https://user@example.com:8443/a/b.git",
        ] {
            assert!(validate_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn rejects_malformed_urls_with_a_reason() {
        let cases = [
            ("ftp://x", "unsupported scheme \"ftp\""),
            ("not a url", "has no scheme"),
            ("file://relative/path", "absolute path"),
            ("https:///path", "has no host"),
            ("https://exa mple.com/r", "whitespace"),
        ];
        for (url, want) in cases {
            let err = validate_url(url).unwrap_err();
            assert!(matches!(err, OriginError::InvalidUrl(_)), "{url}: {err:?}");
            assert!(err.to_string().contains(want), "{url}: {err}");
            assert_eq!(err.class(), "invalid");
        }
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let shown = format!("{c:?}");
        assert_eq!(
            shown,
            "Credentials { username: \"alice\", password: \"<redacted>\" }"
        );
    }
}
