//! How cairn reaches an upstream: which URLs it accepts
//! ([`validate_url`]), the [`Credentials`] it offers (through the libgit2
//! callbacks of fetches and pushes, [`callbacks`]) and how long it waits
//! ([`set_network_timeout`]).
//!
//! Used by both directions of transport, `git` (fetch) and `write` (push),
//! so neither has to import the other for it.

use std::fmt;

use git2::{Cred, CredentialType, ErrorClass, ErrorCode, RemoteCallbacks};

use super::error::OriginError;

/// How often the credentials callback may answer within one operation
/// before cairn gives up (libgit2 asks again after each rejection).
const CREDENTIAL_ATTEMPTS_MAX: u32 = 2;

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

/// libgit2 callbacks for one fetch or push: answers credential requests
/// with `credentials`, at most [`CREDENTIAL_ATTEMPTS_MAX`] times.
pub(super) fn callbacks(credentials: Option<&Credentials>) -> RemoteCallbacks<'_> {
    let mut callbacks = RemoteCallbacks::new();
    let mut attempts = 0u32;
    callbacks.credentials(move |_url, _username_from_url, allowed| {
        attempts += 1;
        match credentials {
            None => Err(git2::Error::new(
                ErrorCode::Auth,
                ErrorClass::Http,
                "the upstream asks for credentials and none are configured",
            )),
            Some(_) if attempts > CREDENTIAL_ATTEMPTS_MAX => Err(git2::Error::new(
                ErrorCode::Auth,
                ErrorClass::Http,
                "the upstream rejected the configured credentials",
            )),
            Some(c) if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) => {
                Cred::userpass_plaintext(&c.username, &c.password)
            }
            Some(_) => Err(git2::Error::new(
                ErrorCode::Auth,
                ErrorClass::Http,
                "the upstream asks for a credential type other than username/password",
            )),
        }
    });
    callbacks
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
