//! `cairn log`: the event log for audit and recovery.
//!
//! Against a running node it pages through `cairn.v1.log.read`; with
//! `--data-dir` it reads a stopped node's store directly. `--follow` keeps
//! reading as new events are committed: it subscribes to `cairn.events.>`
//! only as a wake-up signal and always reads through `log.read`, so it
//! prints every event exactly once and in order.
//!
//! The table fits 120 columns: SEQ, TIME (UTC, to the second), STREAM,
//! TYPE, OBJECT — the package revision the event concerns (`-` for the
//! repository's own events) — and PRINCIPAL; a cell too long for its
//! column is cut with `…` (`-o json` has everything, the stream version
//! too). A log, or a stream,
//! with no events from `--from` says so on stderr.

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use cairn_events::{envelope, json, v1::Envelope, StreamId};
use cairn_storage::EventLog;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::node::explain_open_error;

/// Output format of `cairn log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per event, aligned columns.
    Table,
    /// One JSON object per line.
    Json,
}

/// Where `cairn log` reads from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A running node, over NATS.
    Nats(crate::client::NatsTarget),
    /// A stopped node's data directory.
    DataDir(PathBuf),
}

/// `cairn log` options.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Where to read.
    pub source: Source,
    /// First sequence to print.
    pub from: u64,
    /// Only this stream.
    pub stream: Option<String>,
    /// Keep printing new events.
    pub follow: bool,
    /// Format.
    pub output: Output,
}

const PAGE: u64 = 500;

/// Runs `cairn log`, writing to `out`.
pub fn run(options: LogOptions, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(s) = &options.stream {
        StreamId::new(s.clone()).context("--stream")?;
    }
    let mut printer = Printer {
        output: options.output,
        header_done: false,
        printed: 0,
    };
    match &options.source {
        Source::DataDir(dir) => {
            if options.follow {
                bail!("--follow needs a running node: drop --data-dir (and point -s/--server at its NATS)");
            }
            let path = crate::config::store_dir(dir);
            if !path.join("CURRENT").is_file() {
                bail!(
                    "{} holds no cairn store (expected {})",
                    dir.display(),
                    path.display()
                );
            }
            let store = cairn_storage::Store::open(
                cairn_storage::StoreConfig::new(&path),
                cairn_storage::views::default_views(),
            )
            .map_err(|e| explain_open_error(e.into(), &path))?;
            let stream = options.stream.as_deref().map(StreamId::new).transpose()?;
            let mut from = options.from;
            loop {
                let page = match &stream {
                    None => store.read_all(from, PAGE as usize)?,
                    Some(s) => store.read_stream_from_seq(s, from, PAGE as usize)?,
                };
                let Some(last) = page.last().map(|e| e.seq) else {
                    break;
                };
                for env in &page {
                    printer.print(&json::to_json(env)?, out)?;
                }
                from = last + 1;
            }
            Ok(())
        }
        Source::Nats(target) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(follow_nats(target, &options, &mut printer, out))
        }
    }?;
    if printer.printed == 0 && !options.follow {
        match &options.stream {
            Some(stream) => eprintln!("no events in stream {stream} from seq {}", options.from),
            None => eprintln!("no events from seq {}", options.from),
        }
    }
    Ok(())
}

async fn follow_nats(
    target: &crate::client::NatsTarget,
    options: &LogOptions,
    printer: &mut Printer,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let client = crate::client::connect_async(target)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#} (or read a stopped node's --data-dir)"))?;
    // Subscribe before the first read, so no commit between the two is missed.
    let mut wakeups = if options.follow {
        Some(
            client
                .subscribe(cairn_events::subject::EVENTS_WILDCARD)
                .await?,
        )
    } else {
        None
    };
    let mut from = options.from;
    loop {
        let mut request = json!({ "from_seq": from, "limit": PAGE });
        if let Some(s) = &options.stream {
            request["stream"] = Value::String(s.clone());
        }
        let reply = client
            .request(
                cairn_events::subject::LOG_READ,
                serde_json::to_vec(&request)?.into(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("log: {e} (is a cairn node running?)"))?;
        if let Some(headers) = &reply.headers {
            if let Some(code) = headers.get("Nats-Service-Error-Code") {
                let message = headers
                    .get("Nats-Service-Error")
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                bail!("node answered {code}: {message}");
            }
        }
        let body: Value =
            serde_json::from_slice(&reply.payload).context("reply of cairn.v1.log.read")?;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        for event in &events {
            printer.print(event, out)?;
        }
        from = body["next_seq"].as_u64().unwrap_or(from);
        if !events.is_empty() {
            continue;
        }
        let Some(sub) = wakeups.as_mut() else {
            return Ok(());
        };
        out.flush()?;
        // Wait for a new event (or a periodic re-check, should the publisher lag).
        tokio::select! {
            woke = sub.next() => if woke.is_none() { bail!("NATS connection closed") },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

struct Printer {
    output: Output,
    header_done: bool,
    printed: u64,
}

/// The table's columns: header and width (the last takes what is left of
/// [`TABLE_WIDTH_MAX`]).
const COLUMNS: [(&str, usize); 6] = [
    ("SEQ", 6),
    ("TIME", 19),
    ("STREAM", 22),
    ("TYPE", 24),
    ("OBJECT", 30),
    ("PRINCIPAL", 0),
];
/// The widest a table line gets.
pub const TABLE_WIDTH_MAX: usize = 120;

impl Printer {
    fn print(&mut self, event: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
        self.printed += 1;
        match self.output {
            Output::Json => writeln!(out, "{event}")?,
            Output::Table => {
                if !self.header_done {
                    let header = COLUMNS.map(|(h, _)| h.to_owned());
                    writeln!(out, "{}", table_row(&header))?;
                    self.header_done = true;
                }
                writeln!(out, "{}", table_row(&table_cells(event)))?;
            }
        }
        Ok(())
    }
}

/// The cells of an event's row.
pub fn table_cells(event: &Value) -> [String; 6] {
    let text = |k: &str| event[k].as_str().unwrap_or("-").to_owned();
    let num = |k: &str| event[k].as_u64().map_or("-".into(), |n| n.to_string());
    // 2026-11-21T15:01:12.250+00:00 → 2026-11-21 15:01:12 (UTC).
    let time = event["recorded_at"]
        .as_str()
        .map(|t| t.get(..19).unwrap_or(t).replace('T', " "))
        .unwrap_or_else(|| "-".to_owned());
    [
        num("seq"),
        time,
        text("stream"),
        text("type"),
        object_of(event),
        text("principal"),
    ]
}

/// The package revision an event concerns (its payload's `revision.name`
/// or `name`), or `-`.
fn object_of(event: &Value) -> String {
    let payload = event["event"]
        .as_object()
        .and_then(|e| e.values().next())
        .cloned()
        .unwrap_or_default();
    payload["revision"]["name"]
        .as_str()
        .or_else(|| payload["name"].as_str())
        .unwrap_or("-")
        .to_owned()
}

/// One aligned line of [`COLUMNS`]: each cell cut with `…` to its width,
/// the last to what is left of [`TABLE_WIDTH_MAX`].
pub fn table_row(cells: &[String; 6]) -> String {
    let mut line = String::new();
    for (i, (cell, (_, width))) in cells.iter().zip(COLUMNS).enumerate() {
        let width = if i + 1 == COLUMNS.len() {
            TABLE_WIDTH_MAX.saturating_sub(line.chars().count())
        } else {
            width
        };
        let cell = fit(cell, width);
        if i == 0 {
            line.push_str(&format!("{cell:>width$}  "));
        } else if i + 1 == COLUMNS.len() {
            line.push_str(&cell);
        } else {
            line.push_str(&format!("{cell:<width$}  "));
        }
    }
    line.trim_end().to_owned()
}

/// `text` cut to `width` characters, ending in `…` when cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Decodes a JSON event line back (for tools reading `cairn log -o json`).
pub fn parse_line(line: &str) -> anyhow::Result<Envelope> {
    let value: Value = serde_json::from_str(line)?;
    let env = json::from_json(&value)?;
    envelope::kind(&env)?;
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_fit_120_columns_and_name_the_revision() {
        let event = json!({"seq": 1042, "recorded_at": "2026-11-21T15:01:12.250+00:00",
            "stream": "repo/team-a/blueprints", "stream_version": 17, "type": "PackageRevisionPublished",
            "principal": "alice@example.com",
            "event": {"package_revision_published": {"revision": {"name": "blueprints.catalog.app.v1"}}}});
        let row = table_row(&table_cells(&event));
        assert_eq!(
            row,
            "  1042  2026-11-21 15:01:12  repo/team-a/blueprints  PackageRevisionPublished  blueprints.catalog.app.v1       alice@ex…"
        );
        assert!(row.chars().count() <= TABLE_WIDTH_MAX, "{row}");
        let long = json!({"seq": 9, "stream": format!("repo/{}/{}", "n".repeat(40), "r".repeat(40)),
            "type": "RepositoryClosed", "principal": "p".repeat(200), "event": {"repository_closed": {}}});
        let row = table_row(&table_cells(&long));
        assert_eq!(row.chars().count(), TABLE_WIDTH_MAX, "{row}");
        assert!(
            row.contains("RepositoryClosed          -    "),
            "no revision: {row}"
        );
    }
}
