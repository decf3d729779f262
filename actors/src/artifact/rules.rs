//! RFC 9111 rules of a shared cache.
//!
//! `http-cache-semantics` (a port of the JavaScript library most caches on
//! npm use) decides, for a shared cache: storability (`no-store`,
//! `private`, `Authorization` only with `public`/`s-maxage`/
//! `must-revalidate`, understood status codes), freshness (`s-maxage`,
//! `max-age`, `Expires` against `Date`, received `Age`, heuristic 10 % of
//! the `Last-Modified` age), the request directives `no-cache`, `max-age`,
//! `max-stale`, `min-fresh`, `Vary` matching, the `Age` to send, the
//! conditional request (`If-None-Match` with the stored ETag,
//! `If-Modified-Since` with `Last-Modified`) and the §4.3.4 header update
//! of a 304. The policy is rebuilt from a stored row on each lookup (the
//! row holds the response's status, header fields and response time), so
//! nothing of the crate is persisted.
//!
//! Written here, because the crate does not cover it:
//! - a response with neither freshness nor a validator is not stored
//!   (the crate would store a bare `200`);
//! - `only-if-cached` (504 when nothing suitable is stored);
//! - `stale-if-error` and `stale-while-revalidate` (RFC 5861), and serving
//!   stale when the origin is unreachable (by configuration), never for
//!   `must-revalidate` / `proxy-revalidate` / `s-maxage` responses;
//! - a client's `If-None-Match` / `If-Modified-Since` answered with a 304
//!   from the store (§4.3.2); client conditionals and `Range` are not
//!   forwarded when the cache fetches or revalidates for itself;
//! - invalidation on unsafe methods (§4.4): the request URI and the
//!   same-origin `Location` / `Content-Location`;
//! - the `Cache-Status` header (RFC 9211) saying how a response was
//!   served, `stale` included (no `Warning` header).

use std::time::{Duration, SystemTime};

use cairn_events::v1::{ArtifactRow, HeaderField};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};

/// Hop-by-hop header fields: never stored, never forwarded.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request fields the cache drops when it fetches for itself: a client's
/// conditionals and ranges are answered from the store instead.
const CLIENT_CONDITIONALS: &[&str] = &[
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "if-range",
    "range",
];

/// The options of a shared cache.
pub fn options() -> CacheOptions {
    CacheOptions {
        shared: true,
        ..CacheOptions::default()
    }
}

fn is_hop_by_hop(name: &str, headers: &HeaderMap) -> bool {
    HOP_BY_HOP.contains(&name)
        || headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|n| n.trim().eq_ignore_ascii_case(name))
}

/// `headers` without hop-by-hop fields (and those `Connection` names),
/// nor `Host` (the client sets it from the URL).
pub fn forwardable(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if name == header::HOST || is_hop_by_hop(name.as_str(), headers) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// A client's request as the cache sends it for itself: forwardable
/// fields, without conditionals and ranges.
pub fn own_request(method: Method, uri: http::Uri, client: &HeaderMap) -> http::request::Parts {
    let mut headers = forwardable(client);
    for name in CLIENT_CONDITIONALS {
        headers.remove(*name);
    }
    let (mut parts, ()) = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .expect("method and uri are valid")
        .into_parts();
    parts.headers = headers;
    parts
}

/// The response fields to store, in order: lowercase names, text values;
/// hop-by-hop fields and values that are not text are left out.
pub fn fields_to_store(headers: &HeaderMap) -> Vec<HeaderField> {
    headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name.as_str(), headers))
        .filter_map(|(name, value)| {
            Some(HeaderField {
                name: name.as_str().to_owned(),
                value: value.to_str().ok()?.to_owned(),
            })
        })
        .collect()
}

/// Header map of stored `fields` (a field that no longer parses is
/// skipped).
pub fn header_map(fields: &[HeaderField]) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(fields.len());
    for f in fields {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_str(&f.value),
        ) {
            out.append(name, value);
        }
    }
    out
}

/// `SystemTime` of a protobuf timestamp.
pub fn system_time(t: Option<&pbjson_types::Timestamp>) -> SystemTime {
    let Some(t) = t else {
        return SystemTime::UNIX_EPOCH;
    };
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(t.seconds.max(0) as u64)
        + Duration::from_nanos(t.nanos.max(0) as u64)
}

/// The policy of stored `row` for `request` (the client's request as the
/// cache sends it, [`own_request`]).
pub fn policy_of(row: &ArtifactRow, request: &http::request::Parts) -> CachePolicy {
    let (mut response, ()) = http::Response::builder()
        .status(StatusCode::from_u16(row.status as u16).unwrap_or(StatusCode::OK))
        .body(())
        .expect("status is valid")
        .into_parts();
    response.headers = header_map(&row.headers);
    // The stored request is the presented one minus its directives: the
    // Vary key matched already, and a request's `no-store` must not make
    // a stored response unusable.
    let mut stored_request = request.clone();
    stored_request.headers.remove(header::CACHE_CONTROL);
    stored_request.headers.remove(header::PRAGMA);
    CachePolicy::new_options(
        &stored_request,
        &response,
        system_time(row.response_time.as_ref()),
        options(),
    )
}

/// True when the response carries an `ETag` or a `Last-Modified`.
pub fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// True when a shared cache may store `response` to `request` (the crate's
/// rules, plus: freshness or a validator, and not `Vary: *`).
pub fn storable(
    request: &http::request::Parts,
    response: &http::response::Parts,
    now: SystemTime,
) -> bool {
    let policy = CachePolicy::new_options(request, response, now, options());
    policy.is_storable()
        && super::key::vary_names(&response.headers).is_some()
        && (has_validator(&response.headers) || policy.time_to_live(now) > Duration::ZERO)
}

/// The value of directive `name` in the `Cache-Control` fields of `headers`
/// (`Some(None)` when present without a value).
pub fn directive(headers: &HeaderMap, name: &str) -> Option<Option<String>> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|part| {
            let mut kv = part.trim().splitn(2, '=');
            let key = kv.next()?.trim();
            key.eq_ignore_ascii_case(name)
                .then(|| kv.next().map(|v| v.trim().trim_matches('"').to_owned()))
        })
}

fn seconds(headers: &HeaderMap, name: &str) -> Option<Duration> {
    directive(headers, name)?
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// True when the stored response may never be served stale:
/// `must-revalidate`, `proxy-revalidate`, or `s-maxage` (which carries
/// `proxy-revalidate`'s meaning for a shared cache, RFC 9111 §5.2.2.10).
pub fn never_stale(response: &HeaderMap) -> bool {
    [
        "must-revalidate",
        "proxy-revalidate",
        "s-maxage",
        "no-cache",
    ]
    .iter()
    .any(|d| directive(response, d).is_some())
}

/// How long past its freshness `policy`'s response is now (zero while
/// fresh).
pub fn staleness(policy: &CachePolicy, row: &ArtifactRow, now: SystemTime) -> Duration {
    let received = system_time(row.response_time.as_ref());
    let lifetime = policy.time_to_live(received) + policy.age(received);
    policy.age(now).saturating_sub(lifetime)
}

/// The `stale-if-error` window of the response or the request.
pub fn stale_if_error(response: &HeaderMap, request: &HeaderMap) -> Option<Duration> {
    seconds(response, "stale-if-error").max(seconds(request, "stale-if-error"))
}

/// The response's `stale-while-revalidate` window.
pub fn stale_while_revalidate(response: &HeaderMap) -> Option<Duration> {
    seconds(response, "stale-while-revalidate")
}

/// True when the request says `only-if-cached`.
pub fn only_if_cached(request: &HeaderMap) -> bool {
    directive(request, "only-if-cached").is_some()
}

fn weak_eq(a: &str, b: &str) -> bool {
    a.trim().trim_start_matches("W/") == b.trim().trim_start_matches("W/")
}

/// True when the client's `If-None-Match` (or, without it,
/// `If-Modified-Since`) is satisfied by a stored 200 with `stored`
/// fields: the answer is then a 304 (RFC 9111 §4.3.2, RFC 9110 §13.1).
pub fn client_not_modified(request: &HeaderMap, status: u16, stored: &HeaderMap) -> bool {
    if status != 200 {
        return false;
    }
    if let Some(inm) = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        return inm.trim() == "*" || inm.split(',').any(|t| weak_eq(t, etag));
    }
    let since = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let modified = stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

/// The fields a 304 to a client carries (RFC 9110 §15.4.5).
pub fn not_modified_fields(full: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [
        "cache-control",
        "content-location",
        "date",
        "etag",
        "expires",
        "vary",
        "last-modified",
        "age",
        "cache-status",
    ] {
        for v in full.get_all(name) {
            out.append(HeaderName::from_static(name), v.clone());
        }
    }
    out
}

/// The URLs a successful unsafe request to `url` invalidates: itself and
/// its response's same-origin `Location` / `Content-Location` (RFC 9111
/// §4.4), with the field they came from.
pub fn invalidated_urls(url: &url::Url, response: &HeaderMap) -> Vec<(url::Url, &'static str)> {
    let mut out = vec![(url.clone(), "")];
    for (name, field) in [
        (header::LOCATION, "location"),
        (header::CONTENT_LOCATION, "content-location"),
    ] {
        let Some(target) = response
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| url.join(v).ok())
        else {
            continue;
        };
        if target.origin() == url.origin() && !out.iter().any(|(u, _)| *u == target) {
            out.push((target, field));
        }
    }
    out
}

/// The unsafe methods whose success invalidates.
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(status: u16, fields: &[(&str, &str)]) -> http::response::Parts {
        let mut b = http::Response::builder().status(status);
        for (k, v) in fields {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn req(fields: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri("http://o.example/a");
        for (k, v) in fields {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn storability_of_a_shared_cache() {
        let now = SystemTime::now();
        assert!(storable(
            &req(&[]),
            &res(200, &[("cache-control", "max-age=60")]),
            now
        ));
        assert!(storable(&req(&[]), &res(200, &[("etag", "\"a\"")]), now));
        // Neither freshness nor a validator.
        assert!(!storable(&req(&[]), &res(200, &[]), now));
        assert!(!storable(
            &req(&[]),
            &res(200, &[("cache-control", "no-store, max-age=60")]),
            now
        ));
        assert!(!storable(
            &req(&[]),
            &res(200, &[("cache-control", "private, max-age=60")]),
            now
        ));
        let auth = req(&[("authorization", "Bearer x")]);
        assert!(!storable(
            &auth,
            &res(200, &[("cache-control", "max-age=60")]),
            now
        ));
        assert!(storable(
            &auth,
            &res(200, &[("cache-control", "public, max-age=60")]),
            now
        ));
        assert!(!storable(
            &req(&[]),
            &res(200, &[("cache-control", "max-age=60"), ("vary", "*")]),
            now
        ));
    }

    #[test]
    fn client_conditionals() {
        let stored = res(
            200,
            &[
                ("etag", "\"v1\""),
                ("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
            ],
        )
        .headers;
        let r = |k: &str, v: &str| req(&[(k, v)]).headers;
        assert!(client_not_modified(
            &r("if-none-match", "W/\"v1\""),
            200,
            &stored
        ));
        assert!(!client_not_modified(
            &r("if-none-match", "\"v2\""),
            200,
            &stored
        ));
        assert!(client_not_modified(
            &r("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT"),
            200,
            &stored
        ));
        assert!(!client_not_modified(
            &r("if-modified-since", "Mon, 31 Dec 2029 00:00:00 GMT"),
            200,
            &stored
        ));
    }

    #[test]
    fn invalidation_targets_stay_on_the_origin() {
        let url = url::Url::parse("http://o.example/a").unwrap();
        let h = res(
            201,
            &[
                ("location", "/b"),
                ("content-location", "http://other.example/c"),
            ],
        )
        .headers;
        let got: Vec<String> = invalidated_urls(&url, &h)
            .into_iter()
            .map(|(u, _)| u.to_string())
            .collect();
        assert_eq!(got, ["http://o.example/a", "http://o.example/b"]);
    }
}
