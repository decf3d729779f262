//! The HTTP artifact cache against a scripted origin on loopback: one test
//! per RFC 9111 rule, asserting the exact status, the header fields that
//! matter (`Age`, validators, `Cache-Status`) and the exact number of
//! origin requests; misbehaving origins; single flight; dedup; bad input;
//! restart.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use cairn::config::{ArtifactSection, UpstreamEntry};
use cairn_actors::schedule::ManualClock;
use cairn_storage::views::ArtifactsView;
use cairn_tests::{
    origin::Body,
    wait::{wait_until, within},
    Gate, Reply, ScriptedOrigin, TestNode, TestNodeBuilder,
};

/// Bound on one HTTP exchange in these tests.
const EXCHANGE: Duration = Duration::from_secs(30);

struct Fixture {
    node: TestNode,
    origin: ScriptedOrigin,
    clock: ManualClock,
    http: reqwest::Client,
}

async fn fixture(change: impl FnOnce(&mut ArtifactSection)) -> Fixture {
    let origin = ScriptedOrigin::start().await;
    let clock = ManualClock::new(SystemTime::now());
    let url = origin.url();
    let node = TestNodeBuilder::new()
        .configure(|c| {
            c.artifact.upstreams = vec![UpstreamEntry {
                name: "origin".into(),
                url: url.clone(),
            }];
            c.artifact.allow = vec!["127.0.0.1".into()];
            c.artifact.origin_timeout = Duration::from_secs(2);
            change(&mut c.artifact);
        })
        .clock(Arc::new(clock.clone()))
        .start()
        .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Fixture {
        node,
        origin,
        clock,
        http,
    }
}

/// What a test reads of a response.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Result<Vec<u8>, String>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone().expect("a complete body")).unwrap()
    }
}

impl Fixture {
    fn base(&self) -> String {
        format!(
            "http://{}",
            self.node.node().http_addr().expect("http listener")
        )
    }

    fn proxy(&self, path: &str) -> String {
        format!("{}/u/origin{path}", self.base())
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Got {
        within("an HTTP exchange", EXCHANGE, async {
            let response = request.send().await.expect("the node answers");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response
                .bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| format!("{e:?}"));
            Got {
                status,
                headers,
                body,
            }
        })
        .await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        let mut request = self.http.get(self.proxy(path));
        for (n, v) in headers {
            request = request.header(*n, *v);
        }
        self.send(request).await
    }
}

#[actix_rt::test]
async fn a_fresh_response_is_served_from_the_store_with_its_age() {
    let f = fixture(|_| {}).await;
    f.origin.reply(
        "/a.tgz",
        Reply::new(200, "chart-a")
            .header("cache-control", "max-age=300")
            .header("etag", "\"a1\""),
    );
    let first = f.get("/a.tgz", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "chart-a");
    assert_eq!(
        first.header("cache-status"),
        Some("cairn; fwd=miss; stored")
    );
    f.clock.advance(Duration::from_secs(42));
    let second = f.get("/a.tgz", &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "chart-a");
    assert_eq!(second.header("cache-status"), Some("cairn; hit"));
    assert_eq!(second.header("age"), Some("42"));
    assert_eq!(second.header("etag"), Some("\"a1\""));
    assert_eq!(f.origin.count("/a.tgz"), 1);
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn a_received_age_counts_toward_freshness() {
    let f = fixture(|_| {}).await;
    f.origin.reply(
        "/aged",
        Reply::new(200, "x")
            .header("cache-control", "max-age=100")
            .header("age", "90")
            .header("etag", "\"e\""),
    );
    f.get("/aged", &[]).await;
    f.clock.advance(Duration::from_secs(5));
    let hit = f.get("/aged", &[]).await;
    assert_eq!(hit.header("cache-status"), Some("cairn; hit"));
    assert_eq!(hit.header("age"), Some("95"));
    // 90 + 11 > 100: stale, so revalidated (the origin answers 200 again).
    f.clock.advance(Duration::from_secs(6));
    let stale = f.get("/aged", &[]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(f.origin.count("/aged"), 2);
    assert_eq!(
        f.origin.requests_for("/aged")[1].header("if-none-match"),
        Some("\"e\"")
    );
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn a_stale_response_is_revalidated_once_and_a_304_updates_its_fields() {
    let f = fixture(|_| {}).await;
    f.origin.replies(
        "/r",
        vec![
            Reply::new(200, "body-v1")
                .header("cache-control", "max-age=10")
                .header("etag", "\"v1\"")
                .header("x-generation", "1"),
            Reply::new(304, "")
                .header("cache-control", "max-age=100")
                .header("etag", "\"v1\"")
                .header("x-generation", "2"),
        ],
    );
    assert_eq!(f.get("/r", &[]).await.text(), "body-v1");
    f.clock.advance(Duration::from_secs(20));
    let revalidated = f.get("/r", &[]).await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.text(), "body-v1");
    assert_eq!(
        revalidated.header("cache-status"),
        Some("cairn; fwd=stale; fwd-status=304")
    );
    assert_eq!(revalidated.header("x-generation"), Some("2"));
    assert_eq!(revalidated.header("age"), Some("0"));
    let requests = f.origin.requests_for("/r");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].header("if-none-match"), Some("\"v1\""));
    // The new max-age holds: fresh again, no origin request.
    f.clock.advance(Duration::from_secs(50));
    let hit = f.get("/r", &[]).await;
    assert_eq!(hit.header("cache-status"), Some("cairn; hit"));
    assert_eq!(hit.header("x-generation"), Some("2"));
    assert_eq!(hit.header("age"), Some("50"));
    assert_eq!(f.origin.count("/r"), 2);
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn a_200_on_revalidation_replaces_the_stored_response() {
    let f = fixture(|_| {}).await;
    f.origin.replies(
        "/m",
        vec![
            Reply::new(200, "old")
                .header("cache-control", "max-age=1")
                .header("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
            Reply::new(200, "new")
                .header("cache-control", "max-age=100")
                .header("last-modified", "Wed, 02 Jan 2030 00:00:00 GMT"),
        ],
    );
    assert_eq!(f.get("/m", &[]).await.text(), "old");
    f.clock.advance(Duration::from_secs(5));
    assert_eq!(f.get("/m", &[]).await.text(), "new");
    let requests = f.origin.requests_for("/m");
    assert_eq!(
        requests[1].header("if-modified-since"),
        Some("Tue, 01 Jan 2030 00:00:00 GMT")
    );
    let hit = f.get("/m", &[]).await;
    assert_eq!(hit.text(), "new");
    assert_eq!(hit.header("cache-status"), Some("cairn; hit"));
    assert_eq!(f.origin.count("/m"), 2);
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn only_what_a_shared_cache_may_store_is_stored() {
    let f = fixture(|_| {}).await;
    let cases = [
        ("/bare", Reply::new(200, "x")),
        (
            "/no-store",
            Reply::new(200, "x").header("cache-control", "no-store, max-age=60"),
        ),
        (
            "/private",
            Reply::new(200, "x").header("cache-control", "private, max-age=60"),
        ),
        (
            "/server-error",
            Reply::new(500, "x").header("cache-control", "max-age=60"),
        ),
    ];
    for (path, reply) in cases {
        f.origin.reply(path, reply);
        f.get(path, &[]).await;
        let again = f.get(path, &[]).await;
        assert_eq!(
            again.header("cache-status"),
            Some("cairn; fwd=miss"),
            "{path}"
        );
        assert_eq!(f.origin.count(path), 2, "{path}");
    }
    // Authorization: stored only with public (or s-maxage, must-revalidate).
    f.origin.reply(
        "/auth",
        Reply::new(200, "x").header("cache-control", "max-age=60"),
    );
    f.origin.reply(
        "/auth-public",
        Reply::new(200, "x").header("cache-control", "public, max-age=60"),
    );
    for path in ["/auth", "/auth-public"] {
        f.get(path, &[("authorization", "Bearer t")]).await;
        f.get(path, &[("authorization", "Bearer t")]).await;
    }
    assert_eq!(f.origin.count("/auth"), 2);
    assert_eq!(f.origin.count("/auth-public"), 1);
    let totals = ArtifactsView::totals(f.node.store()).unwrap();
    assert_eq!(totals.entries, 1);
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn request_directives_are_honoured() {
    let f = fixture(|_| {}).await;
    f.origin.reply(
        "/d",
        Reply::new(200, "d")
            .header("cache-control", "max-age=100")
            .header("etag", "\"d\""),
    );
    // only-if-cached with nothing stored: 504, the origin never asked.
    let missing = f.get("/d", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(missing.status, 504);
    assert_eq!(f.origin.count("/d"), 0);
    f.get("/d", &[]).await;
    f.clock.advance(Duration::from_secs(30));
    // max-age=10 < age 30: revalidated.
    f.get("/d", &[("cache-control", "max-age=10")]).await;
    assert_eq!(f.origin.count("/d"), 2);
    // min-fresh=90 > 100 - 0 left? The entry was refreshed (age 0, 100 left): a hit.
    let fresh = f.get("/d", &[("cache-control", "min-fresh=90")]).await;
    assert_eq!(fresh.header("cache-status"), Some("cairn; hit"));
    assert_eq!(f.origin.count("/d"), 2);
    // no-cache: always one conditional request.
    f.get("/d", &[("cache-control", "no-cache")]).await;
    assert_eq!(f.origin.count("/d"), 3);
    assert_eq!(
        f.origin.requests_for("/d")[2].header("if-none-match"),
        Some("\"d\"")
    );
    // max-stale: a stale response is acceptable to this client.
    f.clock.advance(Duration::from_secs(150));
    let stale_ok = f.get("/d", &[("cache-control", "max-stale=100")]).await;
    assert_eq!(stale_ok.header("cache-status"), Some("cairn; hit"));
    assert_eq!(stale_ok.header("age"), Some("150"));
    assert_eq!(f.origin.count("/d"), 3);
    // only-if-cached with only a stale response that the client does not accept: 504.
    let stale = f.get("/d", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(stale.status, 504);
    assert_eq!(f.origin.count("/d"), 3);
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn variants_are_keyed_by_the_headers_vary_nominates() {
    let f = fixture(|_| {}).await;
    f.origin.reply(
        "/v",
        Reply::new(200, "variant")
            .header("cache-control", "max-age=100")
            .header("vary", "Accept-Encoding"),
    );
    f.origin.reply(
        "/star",
        Reply::new(200, "star")
            .header("cache-control", "max-age=100")
            .header("vary", "*"),
    );
    f.get("/v", &[("accept-encoding", "gzip")]).await;
    f.get("/v", &[("accept-encoding", "br")]).await;
    let gzip = f.get("/v", &[("accept-encoding", "gzip")]).await;
    let br = f.get("/v", &[("accept-encoding", "br")]).await;
    assert_eq!(gzip.header("cache-status"), Some("cairn; hit"));
    assert_eq!(br.header("cache-status"), Some("cairn; hit"));
    assert_eq!(f.origin.count("/v"), 2);
    f.get("/star", &[]).await;
    f.get("/star", &[]).await;
    assert_eq!(f.origin.count("/star"), 2);
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn an_unsafe_request_invalidates_its_uri_and_same_origin_locations() {
    let f = fixture(|_| {}).await;
    for path in ["/x", "/y", "/z"] {
        f.origin.reply(
            path,
            Reply::new(200, path).header("cache-control", "max-age=100"),
        );
        f.get(path, &[]).await;
    }
    f.origin.reply(
        "/x",
        Reply::new(201, "")
            .header("location", "/y")
            .header("content-location", "http://elsewhere.example/z"),
    );
    let put = f.send(f.http.put(f.proxy("/x")).body("new contents")).await;
    assert_eq!(put.status, 201);
    assert_eq!(put.header("location"), Some("/y"));
    let recorded = f.origin.requests_for("/x");
    assert_eq!(recorded[1].method, "PUT");
    assert_eq!(recorded[1].body, b"new contents");
    f.origin.reply(
        "/x",
        Reply::new(200, "x2").header("cache-control", "max-age=100"),
    );
    assert_eq!(
        f.get("/x", &[]).await.header("cache-status"),
        Some("cairn; fwd=miss; stored")
    );
    assert_eq!(
        f.get("/y", &[]).await.header("cache-status"),
        Some("cairn; fwd=miss; stored")
    );
    // Another origin's URL is never invalidated.
    assert_eq!(
        f.get("/z", &[]).await.header("cache-status"),
        Some("cairn; hit")
    );
    assert_eq!(f.origin.count("/x"), 3);
    assert_eq!(f.origin.count("/y"), 2);
    assert_eq!(f.origin.count("/z"), 1);
    // A failed unsafe request invalidates nothing.
    f.origin.reply("/z", Reply::new(500, "no"));
    assert_eq!(f.send(f.http.delete(f.proxy("/z"))).await.status, 500);
    assert_eq!(
        f.get("/z", &[]).await.header("cache-status"),
        Some("cairn; hit")
    );
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn client_conditionals_get_a_304_from_the_store_and_head_is_served_from_get() {
    let f = fixture(|_| {}).await;
    f.origin.reply(
        "/c",
        Reply::new(200, "contents")
            .header("cache-control", "max-age=100")
            .header("etag", "\"c1\"")
            .header("last-modified", "Tue, 01 Jan 2030 00:00:00 GMT"),
    );
    f.get("/c", &[]).await;
    let inm = f.get("/c", &[("if-none-match", "\"c1\"")]).await;
    assert_eq!(inm.status, 304);
    assert_eq!(inm.header("etag"), Some("\"c1\""));
    assert_eq!(inm.body.as_deref(), Ok(&b""[..]));
    let other = f.get("/c", &[("if-none-match", "\"c0\"")]).await;
    assert_eq!(other.status, 200);
    let ims = f
        .get(
            "/c",
            &[("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT")],
        )
        .await;
    assert_eq!(ims.status, 304);
    let head = f.send(f.http.head(f.proxy("/c"))).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("8"));
    assert_eq!(head.header("cache-status"), Some("cairn; hit"));
    assert_eq!(f.origin.count("/c"), 1);
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn stale_if_error_and_stale_while_revalidate() {
    let f = fixture(|_| {}).await;
    f.origin.replies(
        "/sie",
        vec![
            Reply::new(200, "kept")
                .header("cache-control", "max-age=1, stale-if-error=600")
                .header("etag", "\"k\""),
            Reply::new(503, "down"),
        ],
    );
    f.origin.replies(
        "/plain",
        vec![
            Reply::new(200, "plain")
                .header("cache-control", "max-age=1")
                .header("etag", "\"p\""),
            Reply::new(502, "down"),
        ],
    );
    f.get("/sie", &[]).await;
    f.get("/plain", &[]).await;
    f.clock.advance(Duration::from_secs(10));
    let stale = f.get("/sie", &[]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.text(), "kept");
    assert_eq!(
        stale.header("cache-status"),
        Some("cairn; hit; detail=stale")
    );
    assert_eq!(stale.header("age"), Some("10"));
    let failed = f.get("/plain", &[]).await;
    assert_eq!(failed.status, 502);
    assert_eq!(failed.text(), "down");
    assert_eq!(f.origin.count("/sie"), 2);
    assert_eq!(f.origin.count("/plain"), 2);

    f.origin.replies(
        "/swr",
        vec![
            Reply::new(200, "first")
                .header("cache-control", "max-age=1, stale-while-revalidate=60")
                .header("etag", "\"s1\""),
            Reply::new(200, "second")
                .header("cache-control", "max-age=100")
                .header("etag", "\"s2\""),
        ],
    );
    f.get("/swr", &[]).await;
    f.clock.advance(Duration::from_secs(5));
    let served = f.get("/swr", &[]).await;
    assert_eq!(served.text(), "first");
    assert_eq!(
        served.header("cache-status"),
        Some("cairn; hit; detail=stale")
    );
    // The background revalidation replaces it.
    cairn_tests::wait::wait_until("the background revalidation", EXCHANGE, || async {
        let got = f.get("/swr", &[]).await;
        if got.text() == "second" {
            Ok(())
        } else {
            Err(format!("still {:?}", got.text()))
        }
    })
    .await;
    assert_eq!(f.origin.count("/swr"), 2);
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn stale_is_served_when_the_origin_is_unreachable_by_configuration_only() {
    let f = fixture(|a| a.serve_stale_if_unreachable = true).await;
    f.origin.reply(
        "/u",
        Reply::new(200, "cached")
            .header("cache-control", "max-age=1")
            .header("etag", "\"u\""),
    );
    f.origin.reply(
        "/mr",
        Reply::new(200, "strict")
            .header("cache-control", "max-age=1, must-revalidate")
            .header("etag", "\"m\""),
    );
    f.get("/u", &[]).await;
    f.get("/mr", &[]).await;
    f.clock.advance(Duration::from_secs(10));
    f.origin.reply("/u", Reply::new(200, "").body(Body::Hang));
    f.origin.reply("/mr", Reply::new(200, "").body(Body::Hang));
    let stale = f.get("/u", &[]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.text(), "cached");
    assert_eq!(
        stale.header("cache-status"),
        Some("cairn; hit; detail=stale")
    );
    // must-revalidate: never stale; the origin's silence is a 504.
    let strict = f.get("/mr", &[]).await;
    assert_eq!(strict.status, 504);
    assert_eq!(f.origin.count("/u"), 2);
    assert_eq!(f.origin.count("/mr"), 2);
    f.node.shutdown().await;
}

/// Writes `raw` to the node's HTTP listener and answers the status line.
async fn raw_status(f: &Fixture, raw: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within("a raw HTTP exchange", EXCHANGE, async {
        let mut socket = tokio::net::TcpStream::connect(f.node.node().http_addr().unwrap())
            .await
            .unwrap();
        socket.write_all(raw.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = socket.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        text.lines().next().unwrap_or_default().to_owned()
    })
    .await
}

fn lookup_url(f: &Fixture, url: &str) -> String {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("url", url)
        .finish();
    format!("{}/v1/artifacts?{query}", f.base())
}

fn message(got: &Got) -> String {
    let v: serde_json::Value = serde_json::from_slice(got.body.as_ref().unwrap()).unwrap();
    v["message"].as_str().unwrap().to_owned()
}

#[actix_rt::test]
async fn bad_input_is_a_400_naming_what_is_wrong_and_nothing_is_fetched_or_stored() {
    let f = fixture(|_| {}).await;
    let origin = f.origin.url();
    let cases = [
        (
            "ftp://127.0.0.1/x".to_owned(),
            "url: scheme \"ftp\" is not http, https or file".to_owned(),
        ),
        (
            "http://example.invalid/x".to_owned(),
            "url: host \"example.invalid\" is not allowed (artifact.allow)".to_owned(),
        ),
        (
            format!("{origin}/a\r\nX-Injected: 1"),
            "url: must not contain control characters (CR, LF, tab, NUL, …)".to_owned(),
        ),
        (
            format!("{origin}/{}", "a".repeat(8200)),
            format!(
                "url: longer than 8192 bytes ({} bytes)",
                origin.len() + 8201
            ),
        ),
        (
            "gopher".to_owned(),
            "url: relative URL without a base".to_owned(),
        ),
    ];
    for (url, expected) in cases {
        let got = f.send(f.http.get(lookup_url(&f, &url))).await;
        assert_eq!(got.status, 400, "{url:?}");
        assert_eq!(message(&got), expected);
    }
    let missing = f
        .send(f.http.get(format!("{}/v1/artifacts", f.base())))
        .await;
    assert_eq!(missing.status, 400);
    assert_eq!(message(&missing), "url: the query parameter is required");
    // Path traversal through the proxy, raw (clients resolve dot segments).
    for path in [
        "/u/origin/../../etc/passwd",
        "/u/origin/a/%2e%2e/%2e%2e/etc/passwd",
        "/u/origin/a%2f..%2f..%2fetc",
        "/u/origin/a%0d%0aX-Injected:%201",
    ] {
        let status = raw_status(
            &f,
            &format!("GET {path} HTTP/1.1\r\nhost: cairn\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert!(status.starts_with("HTTP/1.1 400"), "{path}: {status}");
    }
    // CR inside a header value: refused before anything is forwarded.
    let status = raw_status(
        &f,
        "GET /u/origin/a HTTP/1.1\r\nhost: cairn\r\nx-forward: a\rInjected: 1\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    let unknown = f.get_path("/u/nope/a").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        message(&unknown),
        "no upstream named \"nope\" (artifact.upstreams)"
    );
    assert_eq!(f.origin.requests().len(), 0);
    assert_eq!(ArtifactsView::totals(f.node.store()).unwrap().entries, 0);
    f.node.shutdown().await;
}

impl Fixture {
    async fn get_path(&self, path: &str) -> Got {
        self.send(self.http.get(format!("{}{path}", self.base())))
            .await
    }
}

#[actix_rt::test]
async fn the_url_lookup_serves_allowed_origins_and_bounds_redirects() {
    let f = fixture(|_| {}).await;
    f.origin.reply(
        "/chart.tgz",
        Reply::new(200, "tarball")
            .header("cache-control", "max-age=60")
            .header("etag", "\"t\""),
    );
    f.origin.reply(
        "/moved",
        Reply::new(301, "").header("location", "/chart.tgz"),
    );
    f.origin
        .reply("/loop", Reply::new(302, "").header("location", "/loop"));
    let url = format!("{}/chart.tgz", f.origin.url());
    let first = f.send(f.http.get(lookup_url(&f, &url))).await;
    assert_eq!((first.status, first.text().as_str()), (200, "tarball"));
    let second = f.send(f.http.get(lookup_url(&f, &url))).await;
    assert_eq!(second.header("cache-status"), Some("cairn; hit"));
    // A redirect is followed (to an allowed host) and its target stored
    // under the URL asked for.
    let moved = f
        .send(
            f.http
                .get(lookup_url(&f, &format!("{}/moved", f.origin.url()))),
        )
        .await;
    assert_eq!((moved.status, moved.text().as_str()), (200, "tarball"));
    let looped = f
        .send(
            f.http
                .get(lookup_url(&f, &format!("{}/loop", f.origin.url()))),
        )
        .await;
    assert_eq!(looped.status, 502);
    assert!(
        message(&looped).contains("more than 10 redirects (artifact.redirects-max)"),
        "{}",
        message(&looped)
    );
    assert_eq!(f.origin.count("/loop"), 10);
    assert_eq!(f.origin.count("/chart.tgz"), 2);
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn misbehaving_origins_store_nothing() {
    let f = fixture(|_| {}).await;
    f.origin.reply(
        "/short",
        Reply::new(200, "")
            .header("cache-control", "max-age=60")
            .body(Body::Short {
                sent: b"only part".to_vec(),
                announced: 1000,
            }),
    );
    f.origin.reply(
        "/reset",
        Reply::new(200, "")
            .header("cache-control", "max-age=60")
            .body(Body::Reset {
                sent: vec![7u8; 300_000],
                announced: 1_000_000,
            }),
    );
    f.origin.reply(
        "/error",
        Reply::new(503, "busy").header("cache-control", "max-age=60"),
    );
    f.origin
        .reply("/silent", Reply::new(200, "").body(Body::Hang));
    f.origin.replies(
        "/no-validators",
        vec![
            Reply::new(200, "v1").header("cache-control", "max-age=5"),
            Reply::new(200, "v2").header("cache-control", "max-age=5"),
        ],
    );
    for path in ["/short", "/reset"] {
        let got = f.get(path, &[]).await;
        assert_eq!(got.status, 200, "{path}");
        assert!(
            got.body.is_err(),
            "{path}: the client sees the cut, got {:?}",
            got.body
        );
        let again = f.get(path, &[]).await;
        assert!(again.body.is_err(), "{path}");
        assert_eq!(f.origin.count(path), 2, "{path}");
    }
    for _ in 0..2 {
        let error = f.get("/error", &[]).await;
        assert_eq!((error.status, error.text().as_str()), (503, "busy"));
    }
    assert_eq!(f.origin.count("/error"), 2);
    let started = std::time::Instant::now();
    let silent = f.get("/silent", &[]).await;
    assert_eq!(silent.status, 504);
    assert_eq!(
        message(&silent),
        format!(
            "origin {}/silent: no answer within 2s (artifact.origin-timeout)",
            f.origin.url()
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Freshness without validators: stored, and refetched whole once stale.
    assert_eq!(f.get("/no-validators", &[]).await.text(), "v1");
    f.clock.advance(Duration::from_secs(10));
    assert_eq!(f.get("/no-validators", &[]).await.text(), "v2");
    let second = &f.origin.requests_for("/no-validators")[1];
    assert_eq!(second.header("if-none-match"), None);
    assert_eq!(second.header("if-modified-since"), None);
    let totals = ArtifactsView::totals(f.node.store()).unwrap();
    assert_eq!(totals.entries, 1, "only /no-validators is stored");
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn fifty_concurrent_misses_make_one_origin_request() {
    let f = fixture(|_| {}).await;
    f.origin.reply(
        "/big",
        Reply::new(200, "")
            .header("cache-control", "max-age=60")
            .header("etag", "\"big\"")
            .body(Body::Repeat {
                byte: b'z',
                len: 4 << 20,
            }),
    );
    let bodies = futures::future::join_all((0..50).map(|_| f.get("/big", &[]))).await;
    assert_eq!(f.origin.count("/big"), 1);
    for got in &bodies {
        assert_eq!(got.status, 200);
        let body = got.body.as_ref().unwrap();
        assert_eq!(body.len(), 4 << 20);
        assert!(body.iter().all(|b| *b == b'z'));
    }
    let stats = f.node.node().artifacts().stats().to_json();
    assert_eq!(stats["misses"], 1);
    // Every other request is served from the one download: fed as it
    // arrives (a join) or, arriving after it was stored, a hit (a join
    // whose flight ended as it joined is both).
    let (joins, hits) = (
        stats["single_flight_joins"].as_u64().unwrap(),
        stats["hits"].as_u64().unwrap(),
    );
    assert!(joins + hits >= 49 && joins <= 49 && hits <= 49, "{stats}");
    assert_eq!(stats["stored"], 1);
    f.node.shutdown().await;
}

/// Bound on a response head, or on the part of a body the origin sent,
/// reaching a client in the single-flight tests.
const HEAD_WAIT: Duration = Duration::from_secs(10);

/// The single-flight tests hold a body mid-way for as long as they need:
/// the origin timeout is not what they test.
async fn held_fixture() -> Fixture {
    fixture(|a| a.origin_timeout = Duration::from_secs(60)).await
}

/// A response as a test reads it bit by bit.
struct Reading {
    response: reqwest::Response,
    body: Vec<u8>,
}

impl Reading {
    async fn start(f: &Fixture, url: String) -> Self {
        let response = within("a response head", HEAD_WAIT, f.http.get(url).send())
            .await
            .expect("the node answers");
        Self {
            response,
            body: Vec::new(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
    }

    /// Reads until `len` bytes came (the origin holds the rest).
    async fn read_to(&mut self, len: usize) -> &[u8] {
        within("the first part of a body", HEAD_WAIT, async {
            while self.body.len() < len {
                let chunk = self.response.chunk().await.unwrap().expect("more body");
                self.body.extend_from_slice(&chunk);
            }
        })
        .await;
        assert_eq!(self.body.len(), len);
        &self.body
    }

    /// Reads to the end: the whole body, or the error that cut it.
    async fn finish(mut self) -> Result<Vec<u8>, String> {
        within("the end of a body", EXCHANGE, async {
            loop {
                match self.response.chunk().await {
                    Ok(Some(chunk)) => self.body.extend_from_slice(&chunk),
                    Ok(None) => return Ok(self.body),
                    Err(e) => return Err(format!("{e:?}")),
                }
            }
        })
        .await
    }
}

/// The cache's counters `names` (of `artifact.stats`), in that order.
fn counters(f: &Fixture, names: &[&str]) -> Vec<u64> {
    let stats = f.node.node().artifacts().stats().to_json();
    names
        .iter()
        .map(|n| {
            stats[*n]
                .as_u64()
                .unwrap_or_else(|| panic!("{n} in {stats}"))
        })
        .collect()
}

/// Temporary blob files (downloads in progress, or left behind).
fn part_files(f: &Fixture) -> Vec<std::path::PathBuf> {
    walk(f.node.data_dir())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .collect()
}

#[actix_rt::test]
async fn followers_are_fed_the_body_as_it_arrives_from_the_origin() {
    let f = held_fixture().await;
    let gate = Gate::new();
    let first = vec![b'a'; 300_000];
    let rest = vec![b'b'; 200_000];
    f.origin.reply(
        "/held",
        Reply::new(200, "")
            .header("cache-control", "max-age=60")
            .header("etag", "\"held\"")
            .body(Body::Held {
                first: first.clone(),
                gate: gate.clone(),
                rest: rest.clone(),
                reset: false,
            }),
    );
    let url = format!("{}/held", f.origin.url());
    let mut leader = Reading::start(&f, f.proxy("/held")).await;
    assert_eq!(
        leader.header("cache-status"),
        Some("cairn; fwd=miss; stored")
    );
    assert_eq!(leader.read_to(first.len()).await, first);
    // Followers through both HTTP routes, one that goes away mid-body.
    let mut proxied = Reading::start(&f, f.proxy("/held")).await;
    let mut looked_up = Reading::start(&f, lookup_url(&f, &url)).await;
    let mut quitter = Reading::start(&f, f.proxy("/held")).await;
    for follower in [&proxied, &looked_up, &quitter] {
        assert_eq!(follower.response.status(), 200);
        assert_eq!(
            follower.header("cache-status"),
            Some("cairn; fwd=miss; collapsed")
        );
        assert_eq!(follower.header("etag"), Some("\"held\""));
        assert_eq!(follower.header("content-length"), Some("500000"));
    }
    // The first half reached every follower while the origin holds the rest.
    assert_eq!(proxied.read_to(first.len()).await, first);
    assert_eq!(looked_up.read_to(first.len()).await, first);
    assert_eq!(quitter.read_to(first.len()).await, first);
    assert_eq!(f.origin.count("/held"), 1);
    drop(quitter);
    gate.open();
    let whole = [first.clone(), rest.clone()].concat();
    assert_eq!(leader.finish().await.unwrap(), whole);
    assert_eq!(proxied.finish().await.unwrap(), whole);
    assert_eq!(looked_up.finish().await.unwrap(), whole);
    assert_eq!(f.origin.count("/held"), 1);
    assert_eq!(
        counters(&f, &["misses", "single_flight_joins", "hits", "stored"]),
        [1, 3, 0, 1]
    );
    // Stored once it was whole: the next request is a hit.
    let hit = f.get("/held", &[]).await;
    assert_eq!(hit.header("cache-status"), Some("cairn; hit"));
    assert_eq!(hit.body.unwrap(), whole);
    assert_eq!(f.origin.count("/held"), 1);
    assert_eq!(part_files(&f), Vec::<std::path::PathBuf>::new());
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn an_origin_reset_mid_body_fails_the_leader_and_every_follower_and_stores_nothing() {
    let f = held_fixture().await;
    let client = f.node.client();
    let gate = Gate::new();
    let first = vec![b'r'; 300_000];
    f.origin.reply(
        "/reset",
        Reply::new(200, "")
            .header("cache-control", "max-age=60")
            .body(Body::Held {
                first: first.clone(),
                gate: gate.clone(),
                rest: vec![b's'; 700_000],
                reset: true,
            }),
    );
    let url = format!("{}/reset", f.origin.url());
    let mut leader = Reading::start(&f, f.proxy("/reset")).await;
    assert_eq!(leader.read_to(first.len()).await, first);
    let mut proxied = Reading::start(&f, f.proxy("/reset")).await;
    let mut looked_up = Reading::start(&f, lookup_url(&f, &url)).await;
    assert_eq!(proxied.read_to(first.len()).await, first);
    assert_eq!(looked_up.read_to(first.len()).await, first);
    // A NATS follower waits for the download's end (its reply names the
    // stored digest): it gets the download's failure.
    let nats = client.call("artifact.get", serde_json::json!({"url": url}));
    let release = async {
        wait_until("the NATS request to join", HEAD_WAIT, || {
            let joins = counters(&f, &["single_flight_joins"]);
            async move {
                if joins == [3] {
                    Ok(())
                } else {
                    Err(format!("single_flight_joins {joins:?}"))
                }
            }
        })
        .await;
        gate.open();
    };
    let (nats, ()) = within("the NATS reply", EXCHANGE, async {
        futures::join!(nats, release)
    })
    .await;
    for (who, reading) in [
        ("leader", leader),
        ("proxied", proxied),
        ("looked up", looked_up),
    ] {
        let body = reading.finish().await;
        assert!(
            body.is_err(),
            "{who}: the transfer is cut, got {:?}",
            body.map(|b| b.len())
        );
    }
    let error = nats.expect_err("the NATS follower fails");
    assert_eq!(error.code, 502, "{error:?}");
    assert_eq!(
        error.message,
        format!(
            "origin {url}: error decoding response body: request or response body error: \
             error reading a body from connection: Connection reset by peer (os error 104)"
        )
    );
    assert_eq!(f.origin.count("/reset"), 1);
    assert_eq!(ArtifactsView::totals(f.node.store()).unwrap().entries, 0);
    assert_eq!(
        counters(
            &f,
            &["truncated", "stored", "misses", "single_flight_joins"]
        ),
        [1, 0, 1, 3]
    );
    assert_eq!(part_files(&f), Vec::<std::path::PathBuf>::new());
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn the_leader_going_away_leaves_the_origin_request_to_its_followers() {
    let f = held_fixture().await;
    // Before the origin answered: the request goes on for the follower.
    let head = Gate::new();
    f.origin.reply(
        "/early",
        Reply::new(200, "the early body")
            .header("cache-control", "max-age=60")
            .after(&head),
    );
    let leader = {
        let request = f.http.get(f.proxy("/early"));
        tokio::spawn(async move { request.send().await.map(|r| r.status()) })
    };
    wait_until("the leader's origin request", HEAD_WAIT, || {
        let n = f.origin.count("/early");
        async move {
            if n == 1 {
                Ok(())
            } else {
                Err(format!("{n} requests"))
            }
        }
    })
    .await;
    let follower = {
        let request = f.http.get(f.proxy("/early"));
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.headers().get("cache-status").cloned();
            (status, response.bytes().await.unwrap())
        })
    };
    wait_until("the follower to join", HEAD_WAIT, || {
        let joins = counters(&f, &["single_flight_joins"]);
        async move {
            if joins == [1] {
                Ok(())
            } else {
                Err(format!("single_flight_joins {joins:?}"))
            }
        }
    })
    .await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    head.open();
    let (status, body) = within("the follower's body", EXCHANGE, follower)
        .await
        .unwrap();
    assert_eq!(
        status.as_ref().and_then(|v| v.to_str().ok()),
        Some("cairn; fwd=miss; collapsed")
    );
    assert_eq!(&body[..], b"the early body");
    assert_eq!(f.origin.count("/early"), 1);
    // Mid-body: the download goes on for the follower and the store.
    let gate = Gate::new();
    let first = vec![b'm'; 200_000];
    let rest = vec![b'n'; 100_000];
    f.origin.reply(
        "/mid",
        Reply::new(200, "")
            .header("cache-control", "max-age=60")
            .body(Body::Held {
                first: first.clone(),
                gate: gate.clone(),
                rest: rest.clone(),
                reset: false,
            }),
    );
    let mut leader = Reading::start(&f, f.proxy("/mid")).await;
    assert_eq!(leader.read_to(first.len()).await, first);
    let mut follower = Reading::start(&f, f.proxy("/mid")).await;
    assert_eq!(follower.read_to(first.len()).await, first);
    drop(leader);
    gate.open();
    assert_eq!(follower.finish().await.unwrap(), [first, rest].concat());
    assert_eq!(f.origin.count("/mid"), 1);
    let stored = f.get("/mid", &[]).await;
    assert_eq!(stored.header("cache-status"), Some("cairn; hit"));
    assert_eq!(ArtifactsView::totals(f.node.store()).unwrap().entries, 2);
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn a_hundred_urls_with_ten_bodies_store_ten_blobs() {
    let f = fixture(|_| {}).await;
    for i in 0..100 {
        f.origin.reply(
            &format!("/d{i}"),
            Reply::new(200, format!("body number {}", i % 10))
                .header("cache-control", "max-age=600"),
        );
        assert_eq!(f.get(&format!("/d{i}"), &[]).await.status, 200);
    }
    let store = f.node.store();
    let totals = ArtifactsView::totals(store).unwrap();
    assert_eq!(totals.entries, 100);
    let distinct: u64 = (0..10)
        .map(|i| format!("body number {i}").len() as u64)
        .sum();
    assert_eq!(totals.bytes, distinct);
    let digest = cairn_storage::Digest::of(b"body number 3");
    let uses = ArtifactsView::blob_use(store, &digest.to_string())
        .unwrap()
        .unwrap();
    assert_eq!(uses.refs, 10);
    // Evicting one URL keeps the body the nine others refer to.
    let url = format!("{}/d3", f.origin.url());
    let row = f
        .node
        .node()
        .artifacts()
        .lookup(&url, &Default::default())
        .await
        .unwrap()
        .unwrap();
    f.node
        .node()
        .artifacts()
        .evict_row(&row, "request")
        .await
        .unwrap();
    cairn_storage::BlobStore::collect_garbage(store).unwrap();
    assert_eq!(
        ArtifactsView::blob_use(store, &digest.to_string())
            .unwrap()
            .unwrap()
            .refs,
        9
    );
    assert!(cairn_storage::BlobStore::open_blob(store, &digest)
        .unwrap()
        .is_some());
    assert_eq!(
        f.get("/d13", &[]).await.header("cache-status"),
        Some("cairn; hit")
    );
    assert_eq!(
        f.get("/d3", &[]).await.header("cache-status"),
        Some("cairn; fwd=miss; stored")
    );
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn least_recently_used_entries_go_first_and_max_age_bounds_any_entry() {
    let f = fixture(|a| {
        a.max_entries = 3;
        a.max_age = Duration::from_secs(3600);
    })
    .await;
    for path in ["/l1", "/l2", "/l3", "/l4"] {
        f.origin.reply(
            path,
            Reply::new(200, path).header("cache-control", "max-age=86400"),
        );
    }
    f.get("/l1", &[]).await;
    f.get("/l2", &[]).await;
    f.get("/l3", &[]).await;
    // /l1 used again: /l2 is now the least recently used.
    assert_eq!(
        f.get("/l1", &[]).await.header("cache-status"),
        Some("cairn; hit")
    );
    f.get("/l4", &[]).await;
    let store = f.node.store();
    assert_eq!(ArtifactsView::totals(store).unwrap().entries, 3);
    let stored = |path: &str| {
        cairn_actors::artifact::cache::lookup_blocking(
            store,
            &format!("{}{path}", f.origin.url()),
            &Default::default(),
        )
        .unwrap()
        .is_some()
    };
    assert!(!stored("/l2"));
    assert!(stored("/l1") && stored("/l3") && stored("/l4"));
    // Fresh for a day, but older than artifact.max-age: dropped, fetched
    // again. An entry's age counts from its `stored_at`, the time the log
    // recorded its event (the system clock), while the cache's clock is
    // this test's manual one, started with the fixture: the slack covers
    // the real time the test took so far (over a second on a loaded
    // machine, where 3,601 s once left the entry a second short of its
    // max-age).
    f.clock.advance(Duration::from_secs(3600 + 120));
    assert_eq!(
        f.get("/l3", &[]).await.header("cache-status"),
        Some("cairn; fwd=miss; stored")
    );
    assert_eq!(f.origin.count("/l3"), 2);
    f.node.shutdown().await;
}

#[actix_rt::test]
async fn the_store_survives_a_restart_and_a_lost_body_becomes_a_miss() {
    let f = fixture(|_| {}).await;
    // Above store.blob-inline-max-bytes: a file of its own.
    let big = vec![b'q'; 2 << 20];
    f.origin.reply(
        "/kept",
        Reply::new(200, "kept").header("cache-control", "max-age=86400"),
    );
    f.origin.reply(
        "/lost",
        Reply::new(200, big.clone()).header("cache-control", "max-age=86400"),
    );
    f.get("/kept", &[]).await;
    f.get("/lost", &[]).await;
    let Fixture {
        node,
        origin,
        clock,
        http,
    } = f;
    let data_dir = node.data_dir().to_path_buf();
    let builder = node.stop().await;
    let node = builder.start().await;
    let f = Fixture {
        node,
        origin,
        clock,
        http,
    };
    assert_eq!(
        f.get("/kept", &[]).await.header("cache-status"),
        Some("cairn; hit")
    );
    let lost = f.get("/lost", &[]).await;
    assert_eq!(lost.header("cache-status"), Some("cairn; hit"));
    assert_eq!(lost.body.as_ref().unwrap().len(), 2 << 20);
    // Remove the body's file, start again: the entry is cleaned up.
    let digest = cairn_storage::Digest::of(&big).to_string();
    let hex = digest.trim_start_matches("sha256:").to_owned();
    let file = walk(&data_dir)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == hex))
        .expect("the body's file");
    let Fixture {
        node,
        origin,
        clock,
        http,
    } = f;
    let builder = node.stop().await;
    std::fs::remove_file(&file).unwrap();
    let node = builder.start().await;
    let f = Fixture {
        node,
        origin,
        clock,
        http,
    };
    assert_eq!(ArtifactsView::totals(f.node.store()).unwrap().entries, 1);
    let again = f.get("/lost", &[]).await;
    assert_eq!(
        again.header("cache-status"),
        Some("cairn; fwd=miss; stored")
    );
    assert_eq!(again.body.as_ref().unwrap().len(), 2 << 20);
    assert_eq!(f.origin.count("/lost"), 2);
    assert_eq!(f.origin.count("/kept"), 1);
    f.node.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Peak resident memory of this process (`VmHWM`), in bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[actix_rt::test]
async fn a_two_gib_body_is_streamed_and_stored_with_flat_memory() {
    const LEN: u64 = 2 << 30;
    let f = fixture(|a| a.origin_timeout = Duration::from_secs(30)).await;
    f.origin.reply(
        "/huge",
        Reply::new(200, "")
            .header("cache-control", "max-age=600")
            .header("etag", "\"huge\"")
            .body(Body::Repeat {
                byte: b'h',
                len: LEN,
            }),
    );
    let before = peak_rss_bytes();
    let received = within("a 2 GiB download", Duration::from_secs(600), async {
        let mut response = f.http.get(f.proxy("/huge")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut received = 0u64;
        while let Some(chunk) = response.chunk().await.unwrap() {
            assert!(chunk.iter().all(|b| *b == b'h'));
            received += chunk.len() as u64;
        }
        received
    })
    .await;
    assert_eq!(received, LEN);
    let row = f
        .node
        .node()
        .artifacts()
        .lookup(&format!("{}/huge", f.origin.url()), &Default::default())
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(row.size, LEN);
    let grown = peak_rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "peak RSS grew by {} MiB", grown >> 20);
    f.node.shutdown().await;
}

fn b64(v: &serde_json::Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

#[actix_rt::test]
async fn the_nats_face_gets_reads_lists_evicts_and_counts() {
    let f = fixture(|_| {}).await;
    let client = f.node.client();
    let big = (0..(3u32 << 20))
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>();
    f.origin.reply(
        "/small.yaml",
        Reply::new(200, "kind: Small\n")
            .header("cache-control", "max-age=60")
            .header("content-type", "application/yaml")
            .header("etag", "\"s\""),
    );
    f.origin.reply(
        "/big.tgz",
        Reply::new(200, big.clone()).header("cache-control", "max-age=60"),
    );
    let small_url = format!("{}/small.yaml", f.origin.url());
    let miss = client
        .ok("artifact.get", serde_json::json!({"url": small_url}))
        .await;
    assert_eq!(miss["meta"]["status"], "miss");
    assert_eq!(miss["meta"]["etag"], "\"s\"");
    assert_eq!(miss["meta"]["content_type"], "application/yaml");
    assert_eq!(miss["meta"]["size"], 12);
    assert_eq!(miss["body_inline"], true);
    assert_eq!(b64(&miss["body_base64"]), b"kind: Small\n");
    let hit = client
        .ok("artifact.get", serde_json::json!({"url": small_url}))
        .await;
    assert_eq!(hit["meta"]["status"], "hit");
    let revalidated = client
        .ok(
            "artifact.get",
            serde_json::json!({"url": small_url, "no_cache": true}),
        )
        .await;
    // The origin answers 200 again (it does not script a 304): replaced.
    assert_eq!(revalidated["meta"]["status"], "miss");
    assert_eq!(f.origin.count("/small.yaml"), 2);
    // A body over 1 MiB: metadata, then read in pieces that fit.
    let big_url = format!("{}/big.tgz", f.origin.url());
    let got = client
        .ok(
            "artifact.get",
            serde_json::json!({"url": big_url, "path": true}),
        )
        .await;
    assert_eq!(got["body_inline"], false);
    assert_eq!(got["meta"]["size"], big.len());
    let path = got["meta"]["path"].as_str().expect("a file path");
    assert_eq!(std::fs::read(path).unwrap(), big);
    let digest = got["meta"]["digest"].as_str().unwrap().to_owned();
    assert_eq!(digest, cairn_storage::Digest::of(&big).to_string());
    let mut read = Vec::new();
    let mut pieces = 0;
    loop {
        let piece = client
            .ok(
                "artifact.read",
                serde_json::json!({"digest": digest, "offset": read.len()}),
            )
            .await;
        read.extend(b64(&piece["data_base64"]));
        pieces += 1;
        assert!(pieces < 100);
        if piece["eof"] == true {
            break;
        }
    }
    assert_eq!(read, big);
    assert!(pieces >= 4, "{pieces} pieces");
    // Listing by prefix, in URL order, page by page.
    let first = client
        .ok(
            "artifact.list",
            serde_json::json!({"prefix": f.origin.url(), "limit": 1}),
        )
        .await;
    assert_eq!(first["items"][0]["url"], big_url);
    let second = client
        .ok(
            "artifact.list",
            serde_json::json!({"prefix": f.origin.url(), "limit": 1, "continue": first["continue"]}),
        )
        .await;
    assert_eq!(second["items"][0]["url"], small_url);
    // Counters, also in $SRV.STATS.
    let stats = client.ok("artifact.stats", serde_json::json!({})).await;
    assert_eq!(stats["entries"], 2);
    assert_eq!(stats["hits"], 1);
    assert_eq!(stats["misses"], 2);
    assert_eq!(stats["revalidations"]["modified"], 1);
    let srv = client.srv("STATS").await;
    let endpoint = srv["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "artifact-stats")
        .unwrap()
        .clone();
    assert_eq!(endpoint["data"]["hits"], 1);
    // Evict by URL, then by digest.
    let evicted = client
        .ok("artifact.evict", serde_json::json!({"url": small_url}))
        .await;
    assert_eq!(evicted["evicted"], 1);
    let evicted = client
        .ok("artifact.evict", serde_json::json!({"digest": digest}))
        .await;
    assert_eq!(evicted["evicted"], 1);
    assert_eq!(ArtifactsView::totals(f.node.store()).unwrap().entries, 0);
    let gone = client
        .call("artifact.read", serde_json::json!({"digest": digest}))
        .await
        .unwrap_err();
    assert_eq!(gone.code, 404);
    // Bad input names the field.
    let bad = client
        .call(
            "artifact.get",
            serde_json::json!({"url": format!("{small_url}\r\nX: 1")}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (bad.code, bad.message.as_str()),
        (
            400,
            "url: must not contain control characters (CR, LF, tab, NUL, …)"
        )
    );
    let both = client
        .call(
            "artifact.evict",
            serde_json::json!({"url": small_url, "digest": digest}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (both.code, both.message.as_str()),
        (400, "give exactly one of url and digest")
    );
    // A local file resolves in place: digest and metadata, nothing fetched.
    let dir = cairn_tests::TestDir::new();
    let file = dir.join("local.txt");
    std::fs::write(&file, b"local bytes").unwrap();
    for url in [
        format!("file://{}", file.display()),
        file.display().to_string(),
    ] {
        let local = client
            .ok("artifact.get", serde_json::json!({"url": url}))
            .await;
        assert_eq!(local["meta"]["status"], "local");
        assert_eq!(local["meta"]["size"], 11);
        assert_eq!(
            local["meta"]["digest"],
            cairn_storage::Digest::of(b"local bytes").to_string()
        );
    }
    assert_eq!(ArtifactsView::totals(f.node.store()).unwrap().entries, 0);
    f.node.shutdown().await;
}

/// A node whose upstream `files` is nginx serving `root`.
async fn nginx_fixture(root: &std::path::Path) -> (TestNode, cairn_tests::Nginx, reqwest::Client) {
    let nginx = cairn_tests::Nginx::serve_files(root).expect("nginx (./dev installs it)");
    let url = nginx.url();
    let node = TestNodeBuilder::new()
        .configure(|c| {
            c.artifact.upstreams = vec![UpstreamEntry {
                name: "files".into(),
                url,
            }];
        })
        .start()
        .await;
    (node, nginx, reqwest::Client::new())
}

#[actix_rt::test]
async fn nginx_static_files_are_cached_and_revalidated_with_their_validators() {
    let dir = cairn_tests::TestDir::new();
    let old = dir.join("old.tgz");
    let new = dir.join("new.tgz");
    std::fs::write(&old, b"an old release").unwrap();
    std::fs::write(&new, b"a new release").unwrap();
    // Modified ten days ago: heuristic freshness of a day (10 %).
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(10 * 86400))
        .unwrap();
    let (node, nginx, http) = nginx_fixture(dir.path()).await;
    let base = format!("http://{}/u/files", node.node().http_addr().unwrap());
    let get = |path: &str| {
        let request = http.get(format!("{base}{path}"));
        async move {
            let r = within("a GET through nginx", EXCHANGE, request.send())
                .await
                .unwrap();
            let headers = r.headers().clone();
            let status = r.status().as_u16();
            (status, headers, r.bytes().await.unwrap().to_vec())
        }
    };
    let (status, headers, body) = get("/old.tgz").await;
    assert_eq!((status, body.as_slice()), (200, &b"an old release"[..]));
    assert!(headers.contains_key("etag") && headers.contains_key("last-modified"));
    assert_eq!(headers["cache-status"], "cairn; fwd=miss; stored");
    let (_, headers, _) = get("/old.tgz").await;
    assert_eq!(headers["cache-status"], "cairn; hit");
    assert_eq!(nginx.requests(), ["GET /old.tgz HTTP/1.1"]);
    // Modified just now: no heuristic freshness, so every use revalidates,
    // and nginx answers 304 to the stored ETag.
    let (_, headers, _) = get("/new.tgz").await;
    assert_eq!(headers["cache-status"], "cairn; fwd=miss; stored");
    let (status, headers, body) = get("/new.tgz").await;
    assert_eq!((status, body.as_slice()), (200, &b"a new release"[..]));
    assert_eq!(headers["cache-status"], "cairn; fwd=stale; fwd-status=304");
    // Changed on the origin: the conditional request gets the new body.
    std::fs::write(&new, b"a newer release!").unwrap();
    let (status, headers, body) = get("/new.tgz").await;
    assert_eq!((status, body.as_slice()), (200, &b"a newer release!"[..]));
    assert_eq!(headers["cache-status"], "cairn; fwd=miss; stored");
    assert_eq!(
        nginx.requests(),
        [
            "GET /old.tgz HTTP/1.1",
            "GET /new.tgz HTTP/1.1",
            "GET /new.tgz HTTP/1.1",
            "GET /new.tgz HTTP/1.1"
        ]
    );
    node.shutdown().await;
}

#[actix_rt::test]
async fn the_cli_gets_lists_counts_and_evicts() {
    let f = fixture(|_| {}).await;
    let big = (0..(3u32 << 20))
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>();
    f.origin.reply(
        "/release.tar",
        Reply::new(200, big.clone()).header("cache-control", "max-age=60"),
    );
    f.origin.reply(
        "/small.txt",
        Reply::new(200, "small\n").header("cache-control", "max-age=60"),
    );
    let cli = cairn_tests::cairn_cli!();
    let nats = f.node.node().nats_url.clone();
    let dir = cairn_tests::TestDir::new();
    let file = dir.join("release.tar");
    let url = format!("{}/release.tar", f.origin.url());
    let run = |args: Vec<String>| {
        let cli = cli.clone();
        let nats = nats.clone();
        async move {
            cli.run(args.into_iter().chain(["-s".to_owned(), nats]))
                .await
        }
    };
    let got = run(vec![
        "artifact".into(),
        "get".into(),
        url.clone(),
        "-o".into(),
        file.display().to_string(),
    ])
    .await;
    assert!(got.success, "{}", got.stderr);
    assert_eq!(std::fs::read(&file).unwrap(), big);
    let digest = cairn_storage::Digest::of(&big).to_string();
    assert!(
        got.stderr
            .contains(&format!("{url}: miss ({} bytes, {digest}) -> ", big.len())),
        "{}",
        got.stderr
    );
    let small = run(vec![
        "artifact".into(),
        "get".into(),
        format!("{}/small.txt", f.origin.url()),
    ])
    .await;
    assert!(small.success, "{}", small.stderr);
    assert_eq!(small.stdout, "small\n");
    let listed = run(vec![
        "artifact".into(),
        "ls".into(),
        "-o".into(),
        "json".into(),
    ])
    .await;
    assert!(listed.success, "{}", listed.stderr);
    let v: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let urls: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls, [url.clone(), format!("{}/small.txt", f.origin.url())]);
    let stats = run(vec!["artifact".into(), "stats".into()]).await;
    let v: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(
        (v["entries"].as_u64(), v["misses"].as_u64()),
        (Some(2), Some(2))
    );
    let evicted = run(vec![
        "artifact".into(),
        "evict".into(),
        "--url".into(),
        url.clone(),
    ])
    .await;
    assert_eq!(evicted.stdout, "evicted 1\n");
    let refused = run(vec![
        "artifact".into(),
        "get".into(),
        "ftp://127.0.0.1/x".into(),
    ])
    .await;
    assert!(!refused.success);
    assert!(
        refused
            .stderr
            .contains("url: scheme \"ftp\" is not http, https or file"),
        "{}",
        refused.stderr
    );
    assert_eq!(f.origin.count("/release.tar"), 1);
    f.node.shutdown().await;
}
