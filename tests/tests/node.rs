//! `cairn node` end to end: with no NATS configured it starts its own
//! nats-server, answers `$SRV.PING`/`INFO`/`STATS` and `cairn.v1.log.read`
//! (JSON and protobuf, with 400s that name the field), stops cleanly on
//! SIGTERM; `cairn log` and `cairn views rebuild` work on its data.

use std::{net::TcpListener, path::Path, process::Stdio};

use cairn_events::{envelope::Metadata, v1::LogReadReply, StreamId};
use cairn_storage::{views::default_views, EventLog, ExpectedVersion, Store, StoreConfig};
use cairn_tests::{
    async_lines, cairn_cli, events, next_line, process::is_running, read_line_matching,
    wait_until_blocking, ChildGuard, ChildNode, Client, NatsServer, NatsServerConfig, PidGuard,
    TestDir, TestNodeBuilder, WAIT,
};
use prost::Message as _;
use serde_json::{json, Value};

fn seed(data_dir: &Path) -> Vec<String> {
    let store = Store::open(StoreConfig::new(data_dir.join("store")), default_views()).unwrap();
    // Not repository streams: a node would sync a registered repository.
    let one = StreamId::new("test/team-a/one").unwrap();
    let two = StreamId::new("test/team-a/two").unwrap();
    let mut ids = Vec::new();
    for (s, e) in [
        (&one, events::registered("team-a", "one")),
        (&two, events::registered("team-a", "two")),
        (&one, events::spec_changed("team-a", "one", "release")),
    ] {
        let a = store
            .append(s, ExpectedVersion::Any, vec![e], Metadata::command("alice"))
            .unwrap();
        ids.push(a.envelopes[0].event_id.clone());
    }
    ids
}

async fn request(client: &Client, subject: &str, body: &[u8]) -> async_nats::Message {
    client.request(subject, body).await
}

async fn error_of(client: &Client, body: &[u8]) -> (String, Value) {
    let reply = request(client, "cairn.v1.log.read", body).await;
    let headers = reply.headers.expect("error replies carry headers");
    let code = headers
        .get("Nats-Service-Error-Code")
        .expect("error code header")
        .to_string();
    let message = headers
        .get("Nats-Service-Error")
        .expect("error header")
        .to_string();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["message"], Value::String(message));
    (code, body)
}

#[tokio::test]
async fn node_starts_its_own_nats_and_serves_the_log() {
    let dir = TestDir::new();
    let ids = seed(dir.path());
    let cli = cairn_cli!();
    // Its nats-server picks its port; the ready line says which.
    let mut node = tokio::task::spawn_blocking({
        let (cli, data) = (cli.clone(), dir.path().to_path_buf());
        move || ChildNode::start(&cli, &data)
    })
    .await
    .unwrap();
    let port: u16 = node
        .url()
        .strip_prefix("nats://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a loopback URL: {}", node.ready_line()));
    assert_eq!(node.ready_line(), format!("cairn node ready: NATS nats://127.0.0.1:{port} (service \"cairn\", events on cairn.events.>)"));
    let client = Client::connect(node.url()).await;

    // The micro protocol.
    let ping: Value =
        serde_json::from_slice(&request(&client, "$SRV.PING.cairn", b"").await.payload).unwrap();
    assert_eq!(
        (ping["name"].as_str(), ping["type"].as_str()),
        (Some("cairn"), Some("io.nats.micro.v1.ping_response"))
    );
    let info: Value =
        serde_json::from_slice(&request(&client, "$SRV.INFO.cairn", b"").await.payload).unwrap();
    let mut subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["subject"].as_str())
        .collect();
    subjects.sort_unstable();
    assert_eq!(
        subjects,
        [
            "cairn.v1.artifact.evict",
            "cairn.v1.artifact.get",
            "cairn.v1.artifact.list",
            "cairn.v1.artifact.read",
            "cairn.v1.artifact.stats",
            "cairn.v1.cluster.status",
            "cairn.v1.kv.cleanup",
            "cairn.v1.kv.clear",
            "cairn.v1.kv.configure",
            "cairn.v1.kv.delete",
            "cairn.v1.kv.delete_by_namespace",
            "cairn.v1.kv.delete_by_pattern",
            "cairn.v1.kv.delete_by_tags",
            "cairn.v1.kv.exists",
            "cairn.v1.kv.get",
            "cairn.v1.kv.get_or_compute",
            "cairn.v1.kv.key_for",
            "cairn.v1.kv.keys",
            "cairn.v1.kv.set",
            "cairn.v1.kv.stats",
            "cairn.v1.log.read",
            "cairn.v1.pkgrev.approve",
            "cairn.v1.pkgrev.create",
            "cairn.v1.pkgrev.delete",
            "cairn.v1.pkgrev.get",
            "cairn.v1.pkgrev.list",
            "cairn.v1.pkgrev.propose",
            "cairn.v1.pkgrev.propose-delete",
            "cairn.v1.pkgrev.reject",
            "cairn.v1.pkgrev.resources",
            "cairn.v1.pkgrev.update",
            "cairn.v1.pkgrev.withdraw-delete",
            "cairn.v1.repo.get",
            "cairn.v1.repo.list",
            "cairn.v1.repo.register",
            "cairn.v1.repo.sync",
            "cairn.v1.repo.unregister",
            "cairn.v1.repo.update",
            "cairn.v1.watch.start",
            "cairn.v1.watch.stop",
        ]
    );

    // log.read, JSON.
    let page: Value =
        serde_json::from_slice(&request(&client, "cairn.v1.log.read", b"{}").await.payload)
            .unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(page["next_seq"], json!(4));
    assert_eq!(
        events
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ids
    );
    assert_eq!(events[0]["type"], json!("RepositoryRegistered"));
    assert_eq!(events[0]["seq"], json!(1));
    assert_eq!(events[0]["principal"], json!("alice"));
    assert_eq!(
        events[2]["event"]["repository_spec_changed"]["spec"]["git"]["branch"],
        json!("release")
    );
    let page: Value = serde_json::from_slice(
        &request(&client, "cairn.v1.log.read", br#"{"from_seq":2,"limit":1}"#)
            .await
            .payload,
    )
    .unwrap();
    assert_eq!(
        (page["events"][0]["seq"].as_u64(), page["next_seq"].as_u64()),
        (Some(2), Some(3))
    );
    let page: Value = serde_json::from_slice(
        &request(
            &client,
            "cairn.v1.log.read",
            br#"{"stream":"test/team-a/one"}"#,
        )
        .await
        .payload,
    )
    .unwrap();
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!((seqs, page["next_seq"].as_u64()), (vec![1, 3], Some(4)));
    let page: Value = serde_json::from_slice(
        &request(&client, "cairn.v1.log.read", br#"{"from_seq":9}"#)
            .await
            .payload,
    )
    .unwrap();
    assert_eq!(page, json!({"events": [], "next_seq": 9}));

    // log.read, protobuf.
    let body = cairn_events::v1::LogReadRequest {
        from_seq: 2,
        limit: 0,
        stream: String::new(),
    }
    .encode_to_vec();
    let reply = client.call_proto("log.read", body).await;
    let page = LogReadReply::decode(reply.payload.as_ref()).unwrap();
    assert_eq!(
        (
            page.events.len(),
            page.next_seq,
            page.events[0].event_id.as_str()
        ),
        (2, 4, ids[1].as_str())
    );

    // Bad input: 400s that name the field.
    let cases: [(&[u8], &str); 6] = [
        (
            br#"{"from_seq":-1}"#,
            "from_seq: must be a non-negative integer, got -1",
        ),
        (
            br#"{"limit":1000000}"#,
            "limit: must be an integer between 1 and 1000, got 1000000",
        ),
        (
            br#"{"limit":"ten"}"#,
            "limit: must be an integer between 1 and 1000, got \"ten\"",
        ),
        (
            br#"{"from_seq":1,"sream":"x"}"#,
            "sream: unknown field, expected one of: from_seq, limit, stream",
        ),
        (br#"[1,2]"#, "request body: must be a JSON object"),
        (
            br#"{"stream":""}"#,
            "stream: invalid stream id \"\": must not be empty",
        ),
    ];
    for (body, message) in cases {
        let (code, reply) = error_of(&client, body).await;
        assert_eq!(
            (code.as_str(), reply),
            ("400", json!({"code": 400, "message": message}))
        );
    }
    let (code, reply) = error_of(&client, b"{\"from_seq\": ").await;
    assert_eq!(code, "400");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .starts_with("request body: invalid JSON: EOF while parsing"),
        "{reply}"
    );
    // A field name with CR/LF: the header is made safe, the body keeps it.
    let reply = request(&client, "cairn.v1.log.read", b"{\"a\\r\\nb\":1}").await;
    let headers = reply.headers.expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "400"
    );
    assert_eq!(
        headers.get("Nats-Service-Error").unwrap().as_str(),
        "a??b: unknown field, expected one of: from_seq, limit, stream"
    );
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        body["message"],
        json!("a\r\nb: unknown field, expected one of: from_seq, limit, stream")
    );
    let oversized = format!("{{\"stream\":\"{}\"}}", "x".repeat(70_000));
    let (code, reply) = error_of(&client, oversized.as_bytes()).await;
    assert_eq!(
        (code.as_str(), reply["message"].as_str().unwrap()),
        ("400", "payload: 70013 bytes, at most 65536 allowed")
    );

    let stats: Value =
        serde_json::from_slice(&request(&client, "$SRV.STATS.cairn", b"").await.payload).unwrap();
    let log_read = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["subject"] == "cairn.v1.log.read")
        .unwrap();
    assert_eq!(log_read["num_requests"], json!(14));

    // `cairn log` over NATS.
    let out = cli
        .run([
            "log",
            "-o",
            "json",
            "--nats-url",
            &format!("nats://127.0.0.1:{port}"),
        ])
        .await;
    assert!(out.success, "{}", out.stderr);
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ids
    );

    // While the node runs, its data directory is locked: a clear error.
    let data = dir.path().to_str().unwrap();
    let out = cli.run(["log", "--data-dir", data]).await;
    assert!(!out.success);
    let stderr = out.stderr;
    assert!(
        stderr.contains("is in use by another cairn process"),
        "{stderr}"
    );

    // SIGTERM: a clean exit, and the local nats-server is gone with it
    // (its process, rather than its port: another test's server may take
    // a freed port at any time).
    let servers = node.children();
    let names: Vec<String> = servers
        .iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect();
    assert_eq!(names, ["nats-server"], "the node's children");
    let status = tokio::task::spawn_blocking(move || node.terminate(WAIT))
        .await
        .unwrap();
    assert!(status.success(), "node exited with {status}");
    for pid in servers {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the local nats-server (pid {pid}) outlived the node"
        );
    }

    // Its JetStream data lives in the data directory and holds every event,
    // published before the node stopped.
    let js_dir = dir.path().join("nats");
    let server = NatsServer::with_config(NatsServerConfig::new().store_dir(&js_dir));
    let js = async_nats::jetstream::new(Client::connect(&server.url()).await.nats().clone());
    let mut stream = js.get_stream("CAIRN_EVENTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 3);
    let mut published = Vec::new();
    for seq in 1..=3 {
        let msg = stream.get_raw_message(seq).await.unwrap();
        published.push(msg.headers.get("Nats-Msg-Id").unwrap().to_string());
    }
    assert_eq!(published, ids);
    drop(server);

    // `cairn log` and `cairn views rebuild` on the stopped node's data.
    let out = cli.run(["log", "--data-dir", data]).await;
    assert!(out.success, "{}", out.stderr);
    let table = out.stdout;
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(rows[0].trim_start().starts_with("SEQ"), "{table}");
    assert!(
        rows[1].contains("test/team-a/one")
            && rows[1].contains("RepositoryRegistered")
            && rows[1].contains("alice"),
        "{table}"
    );
    let out = cli
        .run(["log", "-o", "json", "--from", "3", "--data-dir", data])
        .await;
    let only: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["event_id"].as_str(), Some(ids[2].as_str()));

    let out = cli.run(["views", "rebuild", "--data-dir", data]).await;
    assert!(out.success, "{}", out.stderr);
    let line = out.stdout;
    assert!(
        line.starts_with("rebuilt 6 views (repositories, package_revisions, package_revision_list, requests, kv_entries, artifacts) from 3 events in "),
        "{line}"
    );
}

/// The pid in a node's `nats/nats-server.pid`.
fn nats_pid_file(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("nats").join("nats-server.pid"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// A node killed with SIGKILL takes its nats-server with it (and a node
/// finding its predecessor's server still there stops it): started again
/// at once, on the same data directory and port, it serves.
#[test]
fn a_sigkilled_node_restarts_at_once_on_its_data_dir_and_port() {
    let dir = TestDir::new();
    let cli = cairn_cli!();
    let mut first = ChildNode::start(&cli, dir.path());
    let url = first.url().to_owned();
    let port = url.rsplit(':').next().expect("a port").to_owned();
    let servers = first.children();
    assert_eq!(servers.len(), 1, "one nats-server: {servers:?}");
    let old = servers[0];
    // Left to init by the kill: a failing test must not leave it running.
    let _old = PidGuard::new(old);
    assert_eq!(nats_pid_file(dir.path()), Some(old));
    assert!(!first.kill().success());

    // At once: nothing waits for the old server to go.
    let mut second = ChildNode::start_with(
        &cli,
        dir.path(),
        &["--nats-listen", &format!("127.0.0.1:{port}")],
    );
    assert_eq!(second.url(), url, "the same port");
    assert!(!is_running(old), "the old nats-server {old} is gone");
    let servers = second.children();
    assert_eq!(servers.len(), 1, "one nats-server: {servers:?}");
    assert_ne!(servers[0], old);
    assert_eq!(nats_pid_file(dir.path()), Some(servers[0]));
    let ping = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let client = Client::connect(&url).await;
            client.srv("PING").await
        });
    assert_eq!(ping["name"], "cairn");
    assert!(second.terminate(WAIT).success());
    assert_eq!(nats_pid_file(dir.path()), None, "removed at shutdown");
    assert!(!is_running(servers[0]));
}

/// A node killed with SIGKILL runs no destructor: its nats-server stops by
/// itself (its parent-death signal), leaving only its pid file, which the
/// next start finds stale.
#[test]
fn the_nats_server_of_a_sigkilled_node_exits_with_it() {
    let dir = TestDir::new();
    let cli = cairn_cli!();
    let mut node = ChildNode::start(&cli, dir.path());
    let servers = node.children();
    assert_eq!(servers.len(), 1, "one nats-server: {servers:?}");
    let server = servers[0];
    let _server = PidGuard::new(server);
    assert!(!node.kill().success());
    let gone = wait_until_blocking(WAIT, || {
        if is_running(server) {
            Err(format!("nats-server {server} still runs"))
        } else {
            Ok(())
        }
    });
    assert_eq!(gone, Ok(()));
    assert_eq!(nats_pid_file(dir.path()), Some(server), "nobody removed it");
    let mut again = ChildNode::start(&cli, dir.path());
    let servers = again.children();
    assert_eq!(servers.len(), 1, "one nats-server: {servers:?}");
    assert_eq!(nats_pid_file(dir.path()), Some(servers[0]));
    assert!(again.terminate(WAIT).success());
}

#[test]
fn a_taken_port_and_bad_config_are_named() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TestDir::new();
    let cli = cairn_cli!();
    let listen = format!("127.0.0.1:{port}");
    let mut node = ChildGuard::spawn(&mut ChildNode::command(
        &cli,
        dir.path(),
        &["--nats-listen", &listen],
    ));
    let want = format!("nats.listen 127.0.0.1:{port} is already in use");
    let stderr = node.0.stderr.take().unwrap();
    let found = read_line_matching(stderr, WAIT, |l| l.contains(&want));
    assert!(found.is_ok(), "{found:?}");
    assert!(!node.wait_timeout(WAIT).success());

    let config = dir.join("node.toml");
    std::fs::write(&config, "[publisher]\nmax-in-flight = 0\n").unwrap();
    let out = cli.run_blocking(["node".as_ref(), "--config".as_ref(), config.as_os_str()]);
    assert!(!out.success);
    let stderr = out.stderr;
    assert_eq!(
        stderr.trim(),
        "error: configuration: publisher.max-in-flight: must be between 1 and 65536, got 0"
    );

    let out = cli.run_blocking([
        "log".as_ref(),
        "--data-dir".as_ref(),
        dir.join("nothing").as_os_str(),
    ]);
    let stderr = out.stderr;
    assert!(stderr.contains("holds no cairn store"), "{stderr}");
}

/// `cairn log --follow` prints events committed after it started, in order.
#[actix_rt::test]
async fn log_follow_prints_new_events() {
    let dir = TestDir::new();
    seed(dir.path());
    let node = TestNodeBuilder::in_dir(dir.path()).start().await;
    let mut follow = ChildGuard::spawn(
        cairn_cli!()
            .command()
            .args([
                "log",
                "--follow",
                "-o",
                "json",
                "--nats-url",
                &node.nats_url,
            ])
            .stdout(Stdio::piped()),
    );
    let mut lines = async_lines(follow.0.stdout.take().unwrap());
    let mut seen = Vec::new();
    for _ in 0..3 {
        let line = next_line(&mut lines, WAIT).await;
        seen.push(
            serde_json::from_str::<Value>(&line).unwrap()["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    // New events, appended while `--follow` waits.
    let stream = StreamId::repository("team-a", "three").unwrap();
    node.store
        .append_async(
            &stream,
            ExpectedVersion::NoStream,
            vec![events::registered("team-a", "three")],
            Metadata::default(),
        )
        .await
        .unwrap();
    node.store
        .append_async(
            &stream,
            ExpectedVersion::Exact(1),
            vec![events::closed("bye")],
            Metadata::default(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let line = next_line(&mut lines, WAIT).await;
        seen.push(
            serde_json::from_str::<Value>(&line).unwrap()["seq"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    drop(follow);
    node.shutdown().await;
}
