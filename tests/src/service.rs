//! Talking to a node's service in tests: JSON requests over NATS, the log
//! of a repository, and Porch fixtures unpacked into Git repositories.

use std::{path::Path, process::Command, time::Duration};

use serde_json::{json, Value};

use crate::shared_dir;

/// Unpacks the Porch fixture `fixture` (`../shared/porch-testdata/<fixture>.tar`)
/// into `into`; returns its `file://` URL.
pub fn unpack(fixture: &str, into: &Path) -> String {
    std::fs::create_dir_all(into).unwrap();
    let tar = shared_dir()
        .join("porch-testdata")
        .join(format!("{fixture}.tar"));
    let status = Command::new("tar")
        .arg("--no-same-owner")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success(), "unpacking {}", tar.display());
    format!("file://{}/.git", into.display())
}

/// Sends a JSON request to `cairn.v1.<endpoint>`; returns the error code
/// (if any) and the body.
pub async fn call(
    client: &async_nats::Client,
    endpoint: &str,
    body: Value,
) -> (Option<String>, Value) {
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        client.request(
            format!("cairn.v1.{endpoint}"),
            serde_json::to_vec(&body).unwrap().into(),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("{endpoint}: no reply in time"))
    .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
    let code = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|v| v.to_string());
    (code, serde_json::from_slice(&reply.payload).unwrap())
}

/// Like [`call`], failing the test on an error reply.
pub async fn ok(client: &async_nats::Client, endpoint: &str, body: Value) -> Value {
    let (code, reply) = call(client, endpoint, body).await;
    assert_eq!(code, None, "{endpoint} failed: {reply}");
    reply
}

/// The events of `repo/team-a/<name>` after `after`: their types, and the
/// events themselves.
pub async fn events_after(
    client: &async_nats::Client,
    name: &str,
    after: u64,
) -> (Vec<String>, Vec<Value>) {
    let page = ok(
        client,
        "log.read",
        json!({"from_seq": after + 1, "stream": format!("repo/team-a/{name}")}),
    )
    .await;
    let events = page["events"].as_array().unwrap().clone();
    let kinds = events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    (kinds, events)
}

/// Runs `git` with `args` in `dir` (a fixed author and date, no user
/// config); returns its standard output, trimmed. Fails the test when git
/// fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_AUTHOR_DATE", "2026-11-21T10:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-11-21T10:00:00Z")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
