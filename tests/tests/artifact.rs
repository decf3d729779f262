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
    origin::Body, wait::within, Reply, ScriptedOrigin, TestNode, TestNodeBuilder,
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
        format!("http://{}", self.node.node().http_addr().expect("http listener"))
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
    assert_eq!(first.header("cache-status"), Some("cairn; fwd=miss; stored"));
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
        ("/no-store", Reply::new(200, "x").header("cache-control", "no-store, max-age=60")),
        ("/private", Reply::new(200, "x").header("cache-control", "private, max-age=60")),
        ("/server-error", Reply::new(500, "x").header("cache-control", "max-age=60")),
    ];
    for (path, reply) in cases {
        f.origin.reply(path, reply);
        f.get(path, &[]).await;
        let again = f.get(path, &[]).await;
        assert_eq!(again.header("cache-status"), Some("cairn; fwd=miss"), "{path}");
        assert_eq!(f.origin.count(path), 2, "{path}");
    }
    // Authorization: stored only with public (or s-maxage, must-revalidate).
    f.origin.reply("/auth", Reply::new(200, "x").header("cache-control", "max-age=60"));
    f.origin.reply("/auth-public", Reply::new(200, "x").header("cache-control", "public, max-age=60"));
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
    assert_eq!(f.origin.requests_for("/d")[2].header("if-none-match"), Some("\"d\""));
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
    let put = f
        .send(f.http.put(f.proxy("/x")).body("new contents"))
        .await;
    assert_eq!(put.status, 201);
    assert_eq!(put.header("location"), Some("/y"));
    let recorded = f.origin.requests_for("/x");
    assert_eq!(recorded[1].method, "PUT");
    assert_eq!(recorded[1].body, b"new contents");
    f.origin.reply("/x", Reply::new(200, "x2").header("cache-control", "max-age=100"));
    assert_eq!(f.get("/x", &[]).await.header("cache-status"), Some("cairn; fwd=miss; stored"));
    assert_eq!(f.get("/y", &[]).await.header("cache-status"), Some("cairn; fwd=miss; stored"));
    // Another origin's URL is never invalidated.
    assert_eq!(f.get("/z", &[]).await.header("cache-status"), Some("cairn; hit"));
    assert_eq!(f.origin.count("/x"), 3);
    assert_eq!(f.origin.count("/y"), 2);
    assert_eq!(f.origin.count("/z"), 1);
    // A failed unsafe request invalidates nothing.
    f.origin.reply("/z", Reply::new(500, "no"));
    assert_eq!(f.send(f.http.delete(f.proxy("/z"))).await.status, 500);
    assert_eq!(f.get("/z", &[]).await.header("cache-status"), Some("cairn; hit"));
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
        .get("/c", &[("if-modified-since", "Tue, 01 Jan 2030 00:00:00 GMT")])
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
    assert_eq!(stale.header("cache-status"), Some("cairn; hit; detail=stale"));
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
    assert_eq!(served.header("cache-status"), Some("cairn; hit; detail=stale"));
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
        Reply::new(200, "cached").header("cache-control", "max-age=1").header("etag", "\"u\""),
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
    assert_eq!(stale.header("cache-status"), Some("cairn; hit; detail=stale"));
    // must-revalidate: never stale; the origin's silence is a 504.
    let strict = f.get("/mr", &[]).await;
    assert_eq!(strict.status, 504);
    assert_eq!(f.origin.count("/u"), 2);
    assert_eq!(f.origin.count("/mr"), 2);
    f.node.shutdown().await;
}
