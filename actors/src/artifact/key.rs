//! URLs, Vary keys and partitions: what names a stored response.
//!
//! - A URL given to the lookup faces must be absolute `http`/`https` (or
//!   `file`, resolved locally), at most [`URL_MAX_BYTES`], without control
//!   characters (the URL parser would drop tabs and newlines silently; they
//!   are refused instead), without user info (credentials never enter the
//!   log), and its host must be allowed. It is stored normalised (the `url`
//!   crate's serialisation: lowercase scheme and host, default port
//!   dropped, dot segments resolved).
//! - A proxy path `/u/<upstream>/<rest>` is appended to the upstream's base
//!   URL as it came (still percent-encoded); a segment that decodes to `.`
//!   or `..`, or holds `/`, `\`, NUL or a control character, is refused
//!   (400), and the result must stay under the base URL.
//! - The Vary key of a response is empty without `Vary`; else the
//!   lowercase hex SHA-256 of `name: value\n` for each nominated request
//!   header (names lowercase and sorted, values of repeated fields joined
//!   with `, `; an absent header hashes as `name\n`), so a request selects
//!   its variant with one point read.

use std::path::PathBuf;

use http::HeaderMap;
use sha2::{Digest as _, Sha256};

use super::{ArtifactError, Upstream, PARTITIONS};

/// Longest URL accepted, in bytes.
pub const URL_MAX_BYTES: usize = 8192;

/// What a lookup URL resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An http(s) URL to serve through the cache.
    Remote(url::Url),
    /// A local file (a `file://` URL or a path): resolved without fetching.
    Local(PathBuf),
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// Parses a lookup URL given in `field` (see the module docs): a remote URL
/// whose host `allow` lets through, or a local file.
pub fn parse_target(
    field: &'static str,
    raw: &str,
    allow: &[String],
) -> Result<Target, ArtifactError> {
    if raw.len() > URL_MAX_BYTES {
        return Err(ArtifactError::UrlTooLong {
            field,
            bytes: raw.len(),
            max_bytes: URL_MAX_BYTES,
        });
    }
    if raw.is_empty() {
        return Err(ArtifactError::bad_url(field, "must not be empty"));
    }
    if has_control(raw) {
        return Err(ArtifactError::bad_url(
            field,
            "must not contain control characters (CR, LF, tab, NUL, …)",
        ));
    }
    if raw.starts_with('/') || raw.starts_with("./") || raw.starts_with("../") {
        return Ok(Target::Local(PathBuf::from(raw)));
    }
    let url = url::Url::parse(raw).map_err(|e| ArtifactError::bad_url(field, e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|()| ArtifactError::bad_url(field, "file URL names no local path"))?;
            return Ok(Target::Local(path));
        }
        other => {
            return Err(ArtifactError::bad_url(
                field,
                format!("scheme {other:?} is not http, https or file"),
            ))
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ArtifactError::bad_url(
            field,
            "must not carry user info (credentials)",
        ));
    }
    let Some(host) = url.host_str() else {
        return Err(ArtifactError::bad_url(field, "has no host"));
    };
    if !host_allowed(host, allow) {
        return Err(ArtifactError::HostNotAllowed {
            host: host.to_owned(),
        });
    }
    Ok(Target::Remote(url))
}

/// True when `allow` lets `host` through (exact, case-insensitive; `*`
/// for every host).
pub fn host_allowed(host: &str, allow: &[String]) -> bool {
    allow
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(host))
}

/// The origin URL of proxy path `rest` (what follows `/u/<name>/`, still
/// percent-encoded) and `query` on `upstream` (see the module docs).
pub fn proxy_target(
    upstream: &Upstream,
    rest: &str,
    query: Option<&str>,
) -> Result<url::Url, ArtifactError> {
    let bytes = upstream.url.as_str().len() + rest.len() + query.map_or(0, |q| q.len() + 1);
    if bytes > URL_MAX_BYTES {
        return Err(ArtifactError::UrlTooLong {
            field: "path",
            bytes,
            max_bytes: URL_MAX_BYTES,
        });
    }
    for segment in rest.split('/') {
        let decoded = percent_decode(segment)
            .ok_or_else(|| ArtifactError::bad_url("path", "a segment is not valid UTF-8"))?;
        if decoded == "." || decoded == ".." {
            return Err(ArtifactError::bad_url(
                "path",
                "dot segments (`.`, `..`) are not allowed",
            ));
        }
        if decoded.contains(['/', '\\']) {
            return Err(ArtifactError::bad_url(
                "path",
                "encoded `/` or `\\` in a segment is not allowed",
            ));
        }
        if has_control(&decoded) {
            return Err(ArtifactError::bad_url(
                "path",
                "must not contain control characters (CR, LF, NUL, …)",
            ));
        }
    }
    if let Some(q) = query {
        let decoded = percent_decode(q).unwrap_or_default();
        if has_control(q) || has_control(&decoded) {
            return Err(ArtifactError::bad_url(
                "query",
                "must not contain control characters (CR, LF, NUL, …)",
            ));
        }
    }
    let mut text = String::with_capacity(bytes);
    text.push_str(upstream.url.as_str());
    text.push_str(rest);
    if let Some(q) = query {
        text.push('?');
        text.push_str(q);
    }
    let url = url::Url::parse(&text).map_err(|e| ArtifactError::bad_url("path", e.to_string()))?;
    if url.host_str() != upstream.url.host_str()
        || url.port_or_known_default() != upstream.url.port_or_known_default()
        || !url.path().starts_with(upstream.url.path())
    {
        return Err(ArtifactError::bad_url(
            "path",
            "leaves the upstream's base URL",
        ));
    }
    Ok(url)
}

/// Percent-decodes `text`; `None` when the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The request header names `Vary` nominates in `response`, lowercase,
/// sorted, deduplicated; `None` for `Vary: *` (never served from the
/// store).
pub fn vary_names(response: &HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for value in response.get_all(http::header::VARY) {
        let Ok(text) = value.to_str() else {
            return None;
        };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            names.push(name.to_ascii_lowercase());
        }
    }
    names.sort();
    names.dedup();
    Some(names)
}

/// The Vary key of a request for a response nominating `names` (see the
/// module docs).
pub fn vary_key(names: &[String], request: &HeaderMap) -> String {
    if names.is_empty() {
        return String::new();
    }
    let mut hash = Sha256::new();
    for name in names {
        hash.update(name.as_bytes());
        let values: Vec<&[u8]> = request
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if !values.is_empty() {
            hash.update(b": ");
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    hash.update(b", ");
                }
                hash.update(v);
            }
        }
        hash.update(b"\n");
    }
    hex::encode(hash.finalize())
}

/// The artifact partition (stream `artifact/<n>`) of normalised `url`.
pub fn partition(url: &str) -> u32 {
    let hash = Sha256::digest(url.as_bytes());
    u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) % PARTITIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> Vec<String> {
        vec!["charts.example.com".to_owned()]
    }

    #[test]
    fn lookup_urls_are_checked_by_name() {
        let ok =
            parse_target("url", "https://Charts.Example.com:443/a/../b.tgz", &allow()).unwrap();
        assert_eq!(
            ok,
            Target::Remote(url::Url::parse("https://charts.example.com/b.tgz").unwrap())
        );
        let err = |raw: &str| parse_target("url", raw, &allow()).unwrap_err().to_string();
        assert_eq!(
            err("ftp://charts.example.com/x"),
            "url: scheme \"ftp\" is not http, https or file"
        );
        assert_eq!(
            err("https://other.example.com/x"),
            "url: host \"other.example.com\" is not allowed (artifact.allow)"
        );
        assert_eq!(
            err("https://charts.example.com/x\r\nX-Injected: 1"),
            "url: must not contain control characters (CR, LF, tab, NUL, …)"
        );
        assert_eq!(
            err("https://u:p@charts.example.com/x"),
            "url: must not carry user info (credentials)"
        );
        let long = format!("https://charts.example.com/{}", "a".repeat(URL_MAX_BYTES));
        assert_eq!(
            err(&long),
            format!("url: longer than 8192 bytes ({} bytes)", long.len())
        );
        assert_eq!(
            parse_target("url", "file:///tmp/x.tgz", &[]).unwrap(),
            Target::Local("/tmp/x.tgz".into())
        );
        assert_eq!(
            parse_target("url", "/tmp/x.tgz", &[]).unwrap(),
            Target::Local("/tmp/x.tgz".into())
        );
    }

    #[test]
    fn proxy_paths_stay_under_their_upstream() {
        let up = Upstream {
            name: "charts".into(),
            url: url::Url::parse("http://127.0.0.1:9/base/").unwrap(),
        };
        assert_eq!(
            proxy_target(&up, "a/b%20c.tgz", Some("v=1"))
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9/base/a/b%20c.tgz?v=1"
        );
        for bad in [
            "../etc/passwd",
            "a/%2e%2e/x",
            "a/%2E./x",
            "a%2fb",
            "a%5cb",
            "x%0d%0aHost:%20evil",
            ".",
        ] {
            let err = proxy_target(&up, bad, None).unwrap_err();
            assert!(
                matches!(err, ArtifactError::BadUrl { field: "path", .. }),
                "{bad}: {err}"
            );
        }
        assert!(proxy_target(&up, "x", Some("a=%0d%0a")).is_err());
    }

    #[test]
    fn vary_keys_select_variants() {
        let mut res = HeaderMap::new();
        assert_eq!(vary_names(&res), Some(vec![]));
        res.insert("vary", "Accept-Encoding, accept".parse().unwrap());
        let names = vary_names(&res).unwrap();
        assert_eq!(names, ["accept", "accept-encoding"]);
        let mut a = HeaderMap::new();
        a.insert("accept-encoding", "gzip".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert("accept-encoding", "br".parse().unwrap());
        assert_ne!(vary_key(&names, &a), vary_key(&names, &b));
        assert_eq!(vary_key(&names, &a), vary_key(&names, &a.clone()));
        assert_eq!(vary_key(&[], &a), "");
        res.insert("vary", "*".parse().unwrap());
        assert_eq!(vary_names(&res), None);
    }

    #[test]
    fn partitions_are_stable() {
        assert!(partition("https://charts.example.com/a") < PARTITIONS);
        assert_eq!(partition("x"), partition("x"));
    }
}
