//! `cairn watch`: streams a watch's events until interrupted.
//!
//! It subscribes to a fresh inbox, starts a watch delivering there
//! (`cairn.v1.watch.start`), answers the watcher's heartbeats, and prints
//! each event as one line — a table row, or with `-o json` the line exactly
//! as received. On Ctrl-C (or SIGTERM) it stops the watch
//! (`cairn.v1.watch.stop`) and exits 0. When the node says `Relist` (this
//! client fell behind its queue) it says so and exits non-zero: list again
//! and start a new watch.
//!
//! # A node that goes away
//! The node sends a line or a heartbeat at least every two heartbeat
//! intervals (see `actors/src/watch`). A watch that hears nothing for
//! [`SILENT_HEARTBEATS_MAX`] intervals (and at least [`SILENCE_MIN`]) is
//! lost — the node stopped, or lost the watch — and the CLI says so on
//! stderr and starts it again, on whichever node answers, from the last
//! sequence number it saw (the last event's, or the last heartbeat's, which
//! vouches for everything before it): `since_seq`, so nothing is skipped
//! and nothing repeated. It tries until `--reconnect-timeout` has passed
//! since the loss (attempts [`RESTART_BACKOFF_MIN`]..[`RESTART_BACKOFF_MAX`]
//! apart), then exits non-zero naming the `--since` to resume with. A watch
//! lost during its initial listing (before the bookmark, so with no
//! sequence to resume from) lists again. Whatever the old watch still
//! sends, it goes to an inbox nobody reads any more, and the CLI asks the
//! node to stop it (best effort).

use std::{
    io::Write,
    time::{Duration, Instant},
};

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
    /// The NATS of a running node.
    pub target: crate::client::NatsTarget,
    /// The filter (`pkgrev.list` fields).
    pub filter: Map<String, Value>,
    /// Kinds (empty: the node's default, package revisions).
    pub kinds: Vec<String>,
    /// Resume after this sequence number instead of listing first.
    pub since: Option<u64>,
    /// Heartbeat interval asked of the node.
    pub heartbeat: Duration,
    /// How long a lost watch is tried again before the command fails.
    pub reconnect_timeout: Duration,
    /// Output format.
    pub output: Output,
}

/// Heartbeat intervals without a line or a heartbeat after which a watch
/// is taken for lost (the node sends one at least every two intervals).
pub const SILENT_HEARTBEATS_MAX: u32 = 3;
/// The shortest silence taken for a loss, whatever the interval.
pub const SILENCE_MIN: Duration = Duration::from_secs(1);
/// First pause between two attempts to start a lost watch again.
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest pause between two attempts.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long one `watch.start` (or `watch.stop`) waits for its reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a watch may stay silent before it is taken for lost.
pub fn silence_max(heartbeat: Duration) -> Duration {
    (heartbeat * SILENT_HEARTBEATS_MAX).max(SILENCE_MIN)
}

/// The `watch.start` request body for `options`, delivering to `inbox`,
/// resuming after `since` (none: list first).
pub fn start_body(options: &WatchOptions, inbox: &str, since: Option<u64>) -> Value {
    let mut body = json!({
        "filter": Value::Object(options.filter.clone()),
        "deliver_subject": inbox,
        "heartbeat_ms": options.heartbeat.as_millis() as u64,
    });
    if !options.kinds.is_empty() {
        body["kinds"] = json!(options.kinds);
    }
    if let Some(since) = since {
        body["since_seq"] = json!(since);
    }
    body
}

/// Runs `cairn watch` until interrupted (Ok) or told to relist, or lost
/// for longer than `--reconnect-timeout` (Err).
pub fn run(options: WatchOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(watch(options, out))
}

/// Where the watch stands: what it may resume from.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    /// The last sequence number vouched for (an event's, a bookmark's or,
    /// once past the listing, a heartbeat's).
    seq: Option<u64>,
    /// Past the listing (or resuming): heartbeats' seqs count.
    positioned: bool,
}

impl Position {
    fn saw(&mut self, seq: u64) {
        self.seq = Some(self.seq.map_or(seq, |s| s.max(seq)));
    }
}

/// One started watch: its id and the inbox it delivers to.
struct Started {
    id: String,
    lines: async_nats::Subscriber,
}

async fn start(
    client: &async_nats::Client,
    options: &WatchOptions,
    position: Position,
) -> anyhow::Result<Started> {
    let inbox = client.new_inbox();
    let lines = client.subscribe(inbox.clone()).await?;
    client.flush().await?;
    let since = if position.positioned {
        position.seq
    } else {
        None
    };
    let started = request(client, "watch.start", &start_body(options, &inbox, since)).await?;
    let id = started["watch_id"]
        .as_str()
        .context("watch.start reply without watch_id")?
        .to_owned();
    Ok(Started { id, lines })
}

async fn watch(options: WatchOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let client = crate::client::connect_async(&options.target).await?;
    // Signals are handled from here on, so an interrupt always stops the
    // watch on the node.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let mut position = Position {
        seq: options.since,
        positioned: options.since.is_some(),
    };
    let mut current = start(&client, &options, position).await?;
    if options.output == Output::Table {
        writeln!(out, "{:<9} {:>8}  {:<48} DETAIL", "TYPE", "SEQ", "OBJECT")?;
        out.flush()?;
    }
    let silence = silence_max(options.heartbeat);
    let outcome = 'watch: loop {
        let heard = tokio::time::sleep(silence);
        tokio::pin!(heard);
        let lost = loop {
            tokio::select! {
                message = current.lines.next() => {
                    let Some(message) = message else {
                        break 'watch Err(anyhow::anyhow!("the NATS subscription ended"));
                    };
                    heard.as_mut().reset(tokio::time::Instant::now() + silence);
                    let line: Value = match serde_json::from_slice(&message.payload) {
                        Ok(v) => v,
                        Err(e) => break 'watch Err(anyhow::anyhow!("unreadable watch line: {e}")),
                    };
                    if let Some(reply) = &message.reply {
                        // A heartbeat: any answer keeps the watch alive;
                        // its seq vouches for every event before it.
                        client.publish(reply.clone(), Bytes::new()).await?;
                        if let (true, Some(seq)) = (position.positioned, line["seq"].as_u64()) {
                            position.saw(seq);
                        }
                        continue;
                    }
                    match options.output {
                        Output::Json => out.write_all(&message.payload).and_then(|_| out.write_all(b"\n"))?,
                        Output::Table => writeln!(out, "{}", table_line(&line))?,
                    }
                    out.flush()?;
                    match line["type"].as_str() {
                        Some("Relist") => break 'watch Err(anyhow::anyhow!(
                            "the watch fell behind (Relist): list again and start a new watch"
                        )),
                        Some("Error") => break 'watch Err(anyhow::anyhow!(
                            "the watch failed: {}", line["message"].as_str().unwrap_or_default()
                        )),
                        Some("Bookmark") => position.positioned = true,
                        _ => {}
                    }
                    if let Some(seq) = line["seq"].as_u64() {
                        position.saw(seq);
                    }
                }
                _ = &mut heard => break Instant::now(),
                _ = int.recv() => break 'watch Ok(()),
                _ = term.recv() => break 'watch Ok(()),
            }
        };
        // Lost: start it again until a node takes it, or give up.
        let resume = match (position.positioned, position.seq) {
            (true, Some(seq)) => format!("resuming after seq {seq}"),
            _ => "listing again (it was lost before its bookmark)".to_owned(),
        };
        eprintln!(
            "watch: nothing from the node for {}; starting the watch again, {resume} (for up to {})",
            humantime::format_duration(silence),
            humantime::format_duration(options.reconnect_timeout)
        );
        let old = std::mem::take(&mut current.id);
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            request(&client, "watch.stop", &json!({ "watch_id": old })),
        )
        .await;
        let deadline = lost + options.reconnect_timeout;
        let mut backoff = RESTART_BACKOFF_MIN;
        let mut last_error = String::new();
        let restarted = loop {
            if Instant::now() >= deadline {
                break None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                started = tokio::time::timeout(left, start(&client, &options, position)) => match started {
                    Ok(Ok(started)) => break Some(started),
                    Ok(Err(e)) => last_error = format!("{e:#}"),
                    Err(_) => last_error = "no reply".to_owned(),
                },
                _ = int.recv() => break 'watch Ok(()),
                _ = term.recv() => break 'watch Ok(()),
            }
            let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = int.recv() => break 'watch Ok(()),
                _ = term.recv() => break 'watch Ok(()),
            }
            backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
        };
        let Some(started) = restarted else {
            let hint = match (position.positioned, position.seq) {
                (true, Some(seq)) => format!("; resume with --since {seq}"),
                _ => String::new(),
            };
            break Err(anyhow::anyhow!(
                "the watch was lost and no node took it back within {} (--reconnect-timeout): {last_error}{hint}",
                humantime::format_duration(options.reconnect_timeout)
            ));
        };
        current = started;
        match (position.positioned, position.seq) {
            (true, Some(seq)) => eprintln!("watch: resumed after seq {seq}"),
            _ => eprintln!("watch: started again, listing"),
        }
    };
    if outcome.is_ok() && !current.id.is_empty() {
        // Interrupted: stop the watch on the node (a watch that already
        // ended is not an error here).
        let _ = tokio::time::timeout(
            REQUEST_TIMEOUT,
            request(&client, "watch.stop", &json!({ "watch_id": current.id })),
        )
        .await;
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
    use async_nats::RequestErrorKind;
    let subject = format!("cairn.v1.{endpoint}");
    let request = async_nats::Request::new()
        .payload(serde_json::to_vec(body)?.into())
        .timeout(Some(REQUEST_TIMEOUT));
    let reply = match client.send_request(subject.clone(), request).await {
        Ok(reply) => reply,
        Err(e) if e.kind() == RequestErrorKind::NoResponders => {
            bail!("no cairn node answers on this NATS server")
        }
        Err(e) if e.kind() == RequestErrorKind::TimedOut => {
            bail!("no reply within {REQUEST_TIMEOUT:?}")
        }
        Err(e) => bail!("{e}"),
    };
    Ok(crate::client::read_reply(&subject, &reply)?)
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
            target: crate::client::NatsTarget::default(),
            filter,
            kinds: vec!["repository".into()],
            since: Some(7),
            heartbeat: Duration::from_secs(5),
            reconnect_timeout: Duration::from_secs(60),
            output: Output::Json,
        };
        assert_eq!(
            start_body(&options, "_INBOX.x", options.since),
            json!({"filter": {"repository": "r"}, "deliver_subject": "_INBOX.x",
                   "heartbeat_ms": 5000, "kinds": ["repository"], "since_seq": 7})
        );
    }

    #[test]
    fn silence_is_three_intervals_and_at_least_a_second() {
        assert_eq!(silence_max(Duration::from_secs(5)), Duration::from_secs(15));
        assert_eq!(
            silence_max(Duration::from_millis(200)),
            Duration::from_secs(1)
        );
    }
}
