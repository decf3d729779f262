//! `cairn log`: the event log for audit and recovery.
//!
//! Against a running node it pages through `cairn.v1.log.read`; with
//! `--data-dir` it reads a stopped node's store directly. `--follow` keeps
//! reading as new events are committed: it subscribes to `cairn.events.>`
//! only as a wake-up signal and always reads through `log.read`, so it
//! prints every event exactly once and in order.

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
    Nats(String),
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
    };
    match &options.source {
        Source::DataDir(dir) => {
            if options.follow {
                bail!("--follow needs a running node: drop --data-dir and use --nats-url");
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
        Source::Nats(url) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(follow_nats(url, &options, &mut printer, out))
        }
    }
}

async fn follow_nats(
    url: &str,
    options: &LogOptions,
    printer: &mut Printer,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let client = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no NATS server reachable at {url}; is a node running? (or use --data-dir)"
            )
        })?
        .with_context(|| format!("connecting to {url}"))?;
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
            .map_err(|e| {
                anyhow::anyhow!("cairn.v1.log.read at {url}: {e} (is a cairn node running?)")
            })?;
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
}

impl Printer {
    fn print(&mut self, event: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
        match self.output {
            Output::Json => writeln!(out, "{event}")?,
            Output::Table => {
                if !self.header_done {
                    writeln!(
                        out,
                        "{:>8}  {:<29}  {:<32}  {:>5}  {:<24}  PRINCIPAL",
                        "SEQ", "RECORDED", "STREAM", "VER", "TYPE"
                    )?;
                    self.header_done = true;
                }
                let text = |k: &str| event[k].as_str().unwrap_or("-").to_owned();
                let num = |k: &str| event[k].as_u64().map_or("-".into(), |n| n.to_string());
                writeln!(
                    out,
                    "{:>8}  {:<29}  {:<32}  {:>5}  {:<24}  {}",
                    num("seq"),
                    text("recorded_at"),
                    text("stream"),
                    num("stream_version"),
                    text("type"),
                    text("principal")
                )?;
            }
        }
        Ok(())
    }
}

/// Decodes a JSON event line back (for tools reading `cairn log -o json`).
pub fn parse_line(line: &str) -> anyhow::Result<Envelope> {
    let value: Value = serde_json::from_str(line)?;
    let env = json::from_json(&value)?;
    envelope::kind(&env)?;
    Ok(env)
}
