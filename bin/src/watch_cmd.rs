//! `cairn watch`: streams a watch's events until interrupted.
//!
//! It subscribes to a fresh inbox, starts a watch delivering there
//! (`cairn.v1.watch.start`), answers the watcher's heartbeats, and prints
//! each event as one line — a table row, or with `-o json` the line exactly
//! as received. On Ctrl-C (or SIGTERM) it stops the watch
//! (`cairn.v1.watch.stop`) and exits 0. When the node says `Relist` (this
//! client fell behind its queue) it says so and exits non-zero: list again
//! and start a new watch.

use std::{io::Write, time::Duration};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Map, Value};

/// Output of `cairn watch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One aligned line per event.
    Table,
    /// Each event's JSON line as the node sent it.
    Json,
}

/// `cairn watch` options.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// NATS URL of a running node.
    pub nats_url: String,
    /// The filter (`pkgrev.list` fields).
    pub filter: Map<String, Value>,
    /// Kinds (empty: the node's default, package revisions).
    pub kinds: Vec<String>,
    /// Resume after this sequence number instead of listing first.
    pub since: Option<u64>,
    /// Heartbeat interval asked of the node.
    pub heartbeat: Duration,
    /// Output format.
    pub output: Output,
}

/// The `watch.start` request body for `options`, delivering to `inbox`.
pub fn start_body(options: &WatchOptions, inbox: &str) -> Value {
    let mut body = json!({
        "filter": Value::Object(options.filter.clone()),
        "deliver_subject": inbox,
        "heartbeat_ms": options.heartbeat.as_millis() as u64,
    });
    if !options.kinds.is_empty() {
        body["kinds"] = json!(options.kinds);
    }
    if let Some(since) = options.since {
        body["since_seq"] = json!(since);
    }
    body
}

/// Runs `cairn watch` until interrupted (Ok) or told to relist (Err).
pub fn run(options: WatchOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(watch(options, out))
}

async fn watch(options: WatchOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let url = options.nats_url.as_str();
    let client = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url))
        .await
        .map_err(|_| {
            anyhow::anyhow!("no NATS server reachable at {url}; is a cairn node running?")
        })?
        .with_context(|| format!("connecting to {url}"))?;
    let inbox = client.new_inbox();
    let mut lines = client.subscribe(inbox.clone()).await?;
    client.flush().await?;
    // Signals are handled from here on, so an interrupt always stops the
    // watch on the node.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let started = request(&client, "watch.start", &start_body(&options, &inbox)).await?;
    let watch_id = started["watch_id"]
        .as_str()
        .context("watch.start reply without watch_id")?
        .to_owned();
    if options.output == Output::Table {
        writeln!(out, "{:<9} {:>8}  {:<48} DETAIL", "TYPE", "SEQ", "OBJECT")?;
        out.flush()?;
    }
    let outcome = loop {
        tokio::select! {
            message = lines.next() => {
                let Some(message) = message else {
                    break Err(anyhow::anyhow!("the NATS subscription ended"));
                };
                if let Some(reply) = &message.reply {
                    // A heartbeat: any answer keeps the watch alive.
                    client.publish(reply.clone(), Bytes::new()).await?;
                    continue;
                }
                let line: Value = match serde_json::from_slice(&message.payload) {
                    Ok(v) => v,
                    Err(e) => break Err(anyhow::anyhow!("unreadable watch line: {e}")),
                };
                match options.output {
                    Output::Json => out.write_all(&message.payload).and_then(|_| out.write_all(b"\n"))?,
                    Output::Table => writeln!(out, "{}", table_line(&line))?,
                }
                out.flush()?;
                match line["type"].as_str() {
                    Some("Relist") => break Err(anyhow::anyhow!(
                        "the watch fell behind (Relist): list again and start a new watch"
                    )),
                    Some("Error") => break Err(anyhow::anyhow!(
                        "the watch failed: {}", line["message"].as_str().unwrap_or_default()
                    )),
                    _ => {}
                }
            }
            _ = int.recv() => break Ok(()),
            _ = term.recv() => break Ok(()),
        }
    };
    if outcome.is_ok() {
        // Interrupted: stop the watch on the node (a watch that already
        // ended is not an error here).
        let _ = request(&client, "watch.stop", &json!({ "watch_id": watch_id })).await;
        client.flush().await?;
    }
    outcome
}

/// Sends `body` to `cairn.v1.<endpoint>`; the node's error becomes an error.
async fn request(
    client: &async_nats::Client,
    endpoint: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let subject = format!("cairn.v1.{endpoint}");
    let reply = tokio::time::timeout(
        Duration::from_secs(120),
        client.request(subject.clone(), serde_json::to_vec(body)?.into()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{subject}: no reply in time"))?
    .map_err(|e| anyhow::anyhow!("{subject}: {e} (is a cairn node running?)"))?;
    let value: Value =
        serde_json::from_slice(&reply.payload).with_context(|| format!("reply of {subject}"))?;
    if let Some(code) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
    {
        bail!("{code}: {}", value["message"].as_str().unwrap_or_default());
    }
    Ok(value)
}

/// One table row: type, seq, `<namespace>/<name>` and a detail (lifecycle
/// and revision of a package revision, the event of a repository).
pub fn table_line(line: &Value) -> String {
    let kind = line["type"].as_str().unwrap_or("?");
    let seq = line["seq"]
        .as_u64()
        .map_or_else(|| "-".to_owned(), |s| s.to_string());
    let object = &line["object"];
    let (name, detail) = match kind {
        "Bookmark" => (
            String::new(),
            "listing complete; following changes".to_owned(),
        ),
        "Relist" => (
            String::new(),
            "fell behind; list again and start a new watch".to_owned(),
        ),
        _ if object.get("event").is_some() => (
            format!(
                "{}/{}",
                object["namespace"].as_str().unwrap_or_default(),
                object["name"].as_str().unwrap_or_default()
            ),
            object["event"].as_str().unwrap_or_default().to_owned(),
        ),
        _ => (
            format!(
                "{}/{}",
                object["namespace"].as_str().unwrap_or_default(),
                object["name"].as_str().unwrap_or_default()
            ),
            match (object["lifecycle"].as_str(), object["revision"].as_i64()) {
                (Some(l), Some(r)) => format!("{l} revision={r}"),
                _ => String::new(),
            },
        ),
    };
    format!(
        "{:<9} {:>8}  {:<48} {}",
        kind.to_uppercase(),
        seq,
        name,
        detail
    )
    .trim_end()
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_render_as_rows() {
        let added = json!({"type": "Added", "seq": 12, "object": {
            "namespace": "team-a", "name": "r.basens.v1", "lifecycle": "Published", "revision": 1}});
        assert_eq!(
            table_line(&added),
            format!(
                "ADDED           12  {:<48} Published revision=1",
                "team-a/r.basens.v1"
            )
        );
        let bookmark = json!({"type": "Bookmark", "seq": 40});
        assert_eq!(
            table_line(&bookmark),
            format!(
                "BOOKMARK        40  {:<48} listing complete; following changes",
                ""
            )
        );
        let sync = json!({"type": "Modified", "seq": 41, "object": {
            "namespace": "team-a", "name": "r", "event": "SyncStarted"}});
        assert!(table_line(&sync)
            .ends_with("team-a/r                                         SyncStarted"));
    }

    #[test]
    fn the_start_body_carries_filter_kinds_and_since() {
        let mut filter = Map::new();
        filter.insert("repository".into(), json!("r"));
        let options = WatchOptions {
            nats_url: String::new(),
            filter,
            kinds: vec!["repository".into()],
            since: Some(7),
            heartbeat: Duration::from_secs(5),
            output: Output::Json,
        };
        assert_eq!(
            start_body(&options, "_INBOX.x"),
            json!({"filter": {"repository": "r"}, "deliver_subject": "_INBOX.x",
                   "heartbeat_ms": 5000, "kinds": ["repository"], "since_seq": 7})
        );
    }
}
