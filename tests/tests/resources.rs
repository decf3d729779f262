//! `pkgrev.resources` on a real node (real nats-server, RocksDB, Git
//! upstreams as `file://`): whatever can be written — or synced from Git —
//! is read back byte-equal, page by page, every reply within the server's
//! `max_payload`, in JSON and in protobuf; `continue` tokens are pinned to
//! the files they were cut from; the CLI pulls every page and refuses a
//! push larger than `max_payload` before sending it.

use std::path::Path;

use cairn_events::v1 as pb;
use cairn_storage::EventLog;
use cairn_tests::{
    cairn_cli, files_of_pages, files_of_proto_pages, Files, GitFixture, NatsServer,
    NatsServerConfig, TestDir, TestNode, TestNodeBuilder,
};
use prost::Message as _;
use serde_json::{json, Value};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// nats-server's default `max_payload`.
const DEFAULT_MAX_PAYLOAD: usize = MIB;

/// A bare upstream whose `main` holds `files`, and its `file://` URL.
fn upstream(dir: &Path, files: &Files) -> (GitFixture, String) {
    let work = GitFixture::init(&dir.join("work"), "main");
    work.write("README.md", "upstream\n");
    for (path, content) in files {
        work.write(path, content);
    }
    work.commit("first");
    let bare = work.clone_bare(&dir.join("up.git"));
    let url = bare.url();
    (bare, url)
}

async fn register(node: &TestNode, name: &str, url: &str) {
    node.client()
        .ok(
            "repo.register",
            json!({"namespace": "team-a", "name": name, "git": {"url": url}}),
        )
        .await;
}

fn kptfile(name: &str) -> Vec<u8> {
    format!("apiVersion: kpt.dev/v1\nkind: Kptfile\nmetadata:\n  name: {name}\n").into_bytes()
}

/// `len` bytes of YAML-like text, different for each `seed`.
fn yaml(seed: u32, len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len + 64);
    let mut i = 0u32;
    while out.len() < len {
        out.push_str(&format!(
            "key-{seed}-{i}: value {}\n",
            i.wrapping_mul(2_654_435_761)
        ));
        i += 1;
    }
    out.truncate(len);
    out.into_bytes()
}

/// About `len` bytes of UTF-8 text that JSON escapes heavily (quotes,
/// backslashes, tabs, control characters) with multi-byte characters.
fn escaped_text(len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len + 64);
    let mut i = 0u32;
    while out.len() < len {
        out.push_str(&format!("k{i}: \"tab\there \\ é 😀 \u{1}\u{1f}\"\n"));
        i += 1;
    }
    out.into_bytes()
}

/// `len` bytes that are not UTF-8.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    out[0] = 0xff;
    out
}

/// The files a package directory `dir` of the upstream holds, as the
/// revision lists them (relative to the package).
fn in_package(dir: &str, files: &Files) -> Files {
    files
        .iter()
        .filter_map(|(path, content)| {
            let relative = path.strip_prefix(&format!("{dir}/"))?;
            Some((relative.to_owned(), content.clone()))
        })
        .collect()
}

/// The paths each page holds.
fn paths_per_page(pages: &[cairn_tests::ResourcePage<Value>]) -> Vec<Vec<String>> {
    pages
        .iter()
        .map(|page| {
            let text = page.body["resources"].as_object().unwrap().keys();
            let binary = page.body["binary"].as_object().into_iter().flatten();
            let mut paths: Vec<String> = text.chain(binary.map(|(k, _)| k)).cloned().collect();
            paths.sort();
            paths
        })
        .collect()
}

/// The JSON `resources` field of a create or update: every file as UTF-8.
fn text_fields(files: &Files) -> Value {
    files
        .iter()
        .map(|(path, content)| {
            let text = String::from_utf8(content.clone()).expect("UTF-8 files");
            (path.clone(), Value::String(text))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Sends a protobuf `pkgrev.create`; fails the test on an error reply.
async fn create_proto(node: &TestNode, request: pb::PkgRevCreateRequest) {
    let reply = node
        .client()
        .call_proto("pkgrev.create", request.encode_to_vec())
        .await;
    if reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .is_some()
    {
        panic!(
            "pkgrev.create failed: {:?}",
            pb::ErrorReply::decode(reply.payload.as_ref())
        );
    }
}

#[actix_rt::test]
async fn a_900_kib_draft_is_read_back_byte_equal_at_the_default_max_payload() {
    let dir = TestDir::new();
    let (_bare, url) = upstream(dir.path(), &Files::new());
    let node = TestNodeBuilder::in_dir(&dir.join("node")).start().await;
    register(&node, "fresh", &url).await;
    let files: Files = [
        ("Kptfile".to_owned(), kptfile("app")),
        ("a.yaml".to_owned(), yaml(1, 450 * KIB)),
        ("b.yaml".to_owned(), yaml(2, 450 * KIB)),
    ]
    .into();
    let create = json!({"namespace": "team-a", "repository": "fresh", "package": "app",
                        "workspace": "ws", "resources": text_fields(&files)});
    // A write the server takes: one request within its max payload.
    assert!(serde_json::to_vec(&create).unwrap().len() < DEFAULT_MAX_PAYLOAD);
    node.client().ok("pkgrev.create", create).await;

    // 900 KiB of plain text fit one reply (each byte counted once).
    let pages = node.client().resource_pages("team-a", "fresh.app.ws").await;
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].body["continue"], Value::Null);
    assert!(pages[0].bytes <= DEFAULT_MAX_PAYLOAD, "{}", pages[0].bytes);
    assert_eq!(files_of_pages(&pages), files);

    let pages = node
        .client()
        .resource_pages_proto("team-a", "fresh.app.ws")
        .await;
    assert_eq!(pages.len(), 1);
    assert!(pages[0].bytes <= DEFAULT_MAX_PAYLOAD, "{}", pages[0].bytes);
    assert_eq!(files_of_proto_pages(&pages), files);
    node.shutdown().await;
}

/// Where the server takes 8 MiB messages, a 7 MiB file is written in one
/// protobuf request; its base64 in JSON (9.3 MiB) is larger than one reply,
/// so JSON reads it in two pieces, protobuf in one page.
#[actix_rt::test]
async fn a_file_larger_than_one_reply_written_where_the_server_allows_large_payloads_is_read_in_pieces(
) {
    let dir = TestDir::new();
    let max_payload = 8 * MIB;
    let server = NatsServer::with_config(NatsServerConfig::new().max_payload(max_payload));
    let (_bare, url) = upstream(dir.path(), &Files::new());
    let node = TestNodeBuilder::in_dir(&dir.join("node"))
        .configure(|c| {
            c.nats.urls = vec![server.url()];
            c.service.resource_max_bytes = max_payload;
        })
        .start()
        .await;
    register(&node, "fresh", &url).await;
    let big = noise(7, 7 * MIB);
    create_proto(
        &node,
        pb::PkgRevCreateRequest {
            namespace: "team-a".into(),
            repository: "fresh".into(),
            package: "app".into(),
            workspace: "ws".into(),
            resources: [
                (
                    "Kptfile".to_owned(),
                    String::from_utf8(kptfile("app")).unwrap(),
                ),
                (
                    "c.yaml".to_owned(),
                    String::from_utf8(yaml(3, KIB)).unwrap(),
                ),
            ]
            .into(),
            binary: [("big.bin".to_owned(), big.clone())].into(),
            ..Default::default()
        },
    )
    .await;
    let files: Files = [
        ("Kptfile".to_owned(), kptfile("app")),
        ("big.bin".to_owned(), big),
        ("c.yaml".to_owned(), yaml(3, KIB)),
    ]
    .into();

    let pages = node.client().resource_pages("team-a", "fresh.app.ws").await;
    for page in &pages {
        assert!(page.bytes <= max_payload, "{} > {max_payload}", page.bytes);
    }
    // Page one: the Kptfile, then big.bin's head fills it; page two: the
    // rest of big.bin and c.yaml.
    assert_eq!(
        paths_per_page(&pages),
        [vec!["Kptfile", "big.bin"], vec!["big.bin", "c.yaml"]]
    );
    assert_eq!(files_of_pages(&pages), files);

    let pages = node
        .client()
        .resource_pages_proto("team-a", "fresh.app.ws")
        .await;
    assert_eq!(pages.len(), 1);
    assert_eq!(files_of_proto_pages(&pages), files);
    node.shutdown().await;
    drop(server);
}

/// The files of the upstream `a_synced_file…` and the CLI test use: a
/// package `app` with a 3 MiB file of escape-heavy text (4.5 MiB as JSON),
/// a binary file and a Kptfile.
fn large_upstream_files() -> Files {
    [
        ("app/Kptfile".to_owned(), kptfile("app")),
        ("app/big.yaml".to_owned(), escaped_text(3 * MIB)),
        ("app/logo.bin".to_owned(), noise(9, 200 * KIB)),
    ]
    .into()
}

#[actix_rt::test]
async fn a_synced_file_larger_than_one_reply_is_read_in_pieces_in_json_and_protobuf() {
    let dir = TestDir::new();
    let upstream_files = large_upstream_files();
    let (_bare, url) = upstream(dir.path(), &upstream_files);
    let node = TestNodeBuilder::in_dir(&dir.join("node")).start().await;
    register(&node, "up", &url).await;
    let files = in_package("app", &upstream_files);

    let pages = node.client().resource_pages("team-a", "up.app.main").await;
    let json_bytes = serde_json::to_vec(&text_and_binary(&files)).unwrap().len();
    assert!(json_bytes > 4 * MIB, "{json_bytes}");
    // At least as many pages as the JSON needs, none over max_payload,
    // each but the last with a token.
    assert!(
        pages.len() >= json_bytes.div_ceil(DEFAULT_MAX_PAYLOAD),
        "{}",
        pages.len()
    );
    for (i, page) in pages.iter().enumerate() {
        assert!(
            page.bytes <= DEFAULT_MAX_PAYLOAD,
            "page {i}: {}",
            page.bytes
        );
        assert_eq!(
            page.body["continue"].is_string(),
            i + 1 < pages.len(),
            "page {i}"
        );
    }
    let per_page = paths_per_page(&pages);
    let holding = |path: &str| {
        per_page
            .iter()
            .filter(|p| p.iter().any(|x| x == path))
            .count()
    };
    assert!(holding("big.yaml") > 1, "{per_page:?}");
    assert_eq!((holding("Kptfile"), holding("logo.bin")), (1, 1));
    assert_eq!(files_of_pages(&pages), files);

    let pages = node
        .client()
        .resource_pages_proto("team-a", "up.app.main")
        .await;
    assert!(
        pages.len() >= 4,
        "3.2 MiB in pages of at most 1 MiB: {}",
        pages.len()
    );
    for (i, page) in pages.iter().enumerate() {
        assert!(
            page.bytes <= DEFAULT_MAX_PAYLOAD,
            "page {i}: {}",
            page.bytes
        );
    }
    assert_eq!(files_of_proto_pages(&pages), files);
    node.shutdown().await;
}

/// A JSON body with `files` as `resources` (UTF-8) and `binary` (base64):
/// what the files take in JSON.
fn text_and_binary(files: &Files) -> Value {
    use base64::Engine as _;
    let mut text = serde_json::Map::new();
    let mut binary = serde_json::Map::new();
    for (path, content) in files {
        match std::str::from_utf8(content) {
            Ok(s) => text.insert(path.clone(), s.into()),
            Err(_) => binary.insert(
                path.clone(),
                base64::engine::general_purpose::STANDARD
                    .encode(content)
                    .into(),
            ),
        };
    }
    json!({"resources": text, "binary": binary})
}

/// Two 400 KiB binary files take one protobuf request but two JSON
/// replies (base64); the token of page one is refused once the draft
/// changed, and a token that is none is 400.
#[actix_rt::test]
async fn a_continue_token_is_refused_once_the_files_changed() {
    let dir = TestDir::new();
    let (_bare, url) = upstream(dir.path(), &Files::new());
    let node = TestNodeBuilder::in_dir(&dir.join("node")).start().await;
    register(&node, "fresh", &url).await;
    let binary: std::collections::BTreeMap<String, Vec<u8>> = [
        ("a.bin".to_owned(), noise(1, 400 * KIB)),
        ("b.bin".to_owned(), noise(2, 400 * KIB)),
    ]
    .into();
    create_proto(
        &node,
        pb::PkgRevCreateRequest {
            namespace: "team-a".into(),
            repository: "fresh".into(),
            package: "app".into(),
            workspace: "ws".into(),
            resources: [(
                "Kptfile".to_owned(),
                String::from_utf8(kptfile("app")).unwrap(),
            )]
            .into(),
            binary: binary.clone(),
            ..Default::default()
        },
    )
    .await;
    let key = json!({"namespace": "team-a", "name": "fresh.app.ws"});
    let first = node.client().ok("pkgrev.resources", key.clone()).await;
    let token = first["continue"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let mut next = key.clone();
    next["continue"] = token.clone().into();
    // The same token twice gives the same page.
    let second = node.client().ok("pkgrev.resources", next.clone()).await;
    assert_eq!(
        node.client().ok("pkgrev.resources", next.clone()).await,
        second
    );

    // Update the draft: the old token no longer applies.
    let version = node.client().ok("pkgrev.get", key.clone()).await["resource_version"].clone();
    node.client()
        .ok(
            "pkgrev.update",
            json!({"namespace": "team-a", "name": "fresh.app.ws", "resource_version": version,
                   "resources": {"Kptfile": String::from_utf8(kptfile("app")).unwrap(), "c.yaml": "c: 1\n"}}),
        )
        .await;
    let error = node
        .client()
        .call("pkgrev.resources", next.clone())
        .await
        .unwrap_err();
    assert_eq!(error.code, 409, "{error}");
    let (prefix, suffix) = (
        "continue: resources of team-a/fresh.app.ws: expected fingerprint ",
        " (they changed since the previous page; read them again from the first page)",
    );
    assert!(
        error.message.starts_with(prefix) && error.message.ends_with(suffix),
        "{}",
        error.message
    );
    assert_eq!(
        &error.message[prefix.len()..prefix.len() + 16],
        &token[..16]
    );

    for bad in [json!("not-a-token"), json!(&token[..10])] {
        let mut body = key.clone();
        body["continue"] = bad;
        let error = node
            .client()
            .call("pkgrev.resources", body)
            .await
            .unwrap_err();
        assert_eq!(
            (error.code, error.message.as_str()),
            (400, "continue: not a token from a previous reply")
        );
    }
    // From the first page: the new files.
    let files: Files = [
        ("Kptfile".to_owned(), kptfile("app")),
        ("c.yaml".to_owned(), b"c: 1\n".to_vec()),
    ]
    .into();
    assert_eq!(
        node.client().resources("team-a", "fresh.app.ws").await,
        files
    );
    node.shutdown().await;
}

/// Runs the `cairn` CLI against the node at `nats_url` (off the test's
/// thread); (success, stdout, stderr).
async fn cli(nats_url: &str, args: &[&str]) -> (bool, String, String) {
    let out = cairn_cli!()
        .run(args.iter().copied().chain(["--nats-url", nats_url]))
        .await;
    (
        out.success,
        out.stdout.trim().to_owned(),
        out.stderr.trim().to_owned(),
    )
}

#[actix_rt::test]
async fn the_cli_pulls_every_page_and_refuses_a_push_over_max_payload() {
    let dir = TestDir::new();
    let upstream_files = large_upstream_files();
    let (_bare, url) = upstream(dir.path(), &upstream_files);
    let node = TestNodeBuilder::in_dir(&dir.join("node")).start().await;
    let nats = node.nats_url.clone();
    register(&node, "up", &url).await;
    assert!(
        node.client()
            .resource_pages("team-a", "up.app.main")
            .await
            .len()
            > 1
    );

    let pulled = dir.path().join("pulled");
    let (ok, out, err) = cli(
        &nats,
        &[
            "pkg",
            "pull",
            "team-a/up.app.main",
            pulled.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        out,
        format!(
            "pulled 3 files of team-a/up.app.main into {}",
            pulled.display()
        )
    );
    for (path, content) in in_package("app", &upstream_files) {
        assert!(
            std::fs::read(pulled.join(&path)).unwrap() == content,
            "{path} differs"
        );
    }

    // A directory whose files take more than one request can carry: refused
    // before sending, naming both sizes; nothing written.
    // (a new package: `app` exists, and its only revision, the
    // placeholder, cannot be copied)
    let (ok, _, err) = cli(&nats, &["pkg", "init", "team-a/up", "app2", "-w", "ws"]).await;
    assert!(ok, "{err}");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("Kptfile"), kptfile("app2")).unwrap();
    for i in 0..3 {
        std::fs::write(src.join(format!("f{i}.yaml")), yaml(i, 400 * KIB)).unwrap();
    }
    let before = node.store.last_seq().unwrap();
    let (ok, _, err) = cli(
        &nats,
        &["pkg", "push", "team-a/up.app2.ws", src.to_str().unwrap()],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains(" bytes, more than the server's max_payload of 1048576 bytes"),
        "{err}"
    );
    assert!(err.contains("pkg push: the request is "), "{err}");
    assert_eq!(node.store.last_seq().unwrap(), before);
    node.shutdown().await;
}
